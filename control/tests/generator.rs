//! The benchmark generator's modes (`pktgen bench`) through bulwarkd with stateful policies:
//! UDP and TCP flows become tracked two-way connections and none of their frames is refused;
//! connection setup completes real handshakes; two queue pairs per port spread over two
//! workers. What `scripts/bench` measures is traffic the firewall accepts.

mod common;

use common::{worker_cpu, Bulwarkd};
use serde_json::{json, Value};

fn bench(sw: &Bulwarkd, extra: &[&str]) -> Value {
    let mut argv: Vec<String> = vec![
        "--dial".into(),
        common::path_str(&sw.sock("p0")),
        "--dial".into(),
        common::path_str(&sw.sock("p1")),
        "--duration".into(),
        "2".into(),
        "--warmup".into(),
        "0".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let out = pktgen::bench::run_args(&argv)
        .unwrap_or_else(|e| panic!("pktgen bench {extra:?}: {e}; log:\n{}", sw.log()));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["rx_error"].is_null(), "{v}");
    assert!(v["frames_received"].as_u64().unwrap() > 0, "{v}");
    v
}

fn set_policies(sw: &Bulwarkd) {
    // p0 may open UDP and TCP to port 1001 and TCP to port 80; p1 accepts them. Everything
    // else is dropped, so replies pass only as part of tracked connections.
    let allow = json!([
        { "action": "allow", "proto": "udp", "dst_ports": 1001 },
        { "action": "allow", "proto": "tcp", "dst_ports": [80, 1001] },
    ]);
    for (port, dir) in [("p0", "egress"), ("p1", "ingress")] {
        let pol = json!({ "egress_default": "drop", "ingress_default": "drop", dir: allow });
        let (status, v) = sw.api(
            "PUT",
            &format!("/v1/ports/{port}/policy"),
            Some(&pol.to_string()),
        );
        assert_eq!(status, 200, "{v}");
    }
}

/// Drops other than the generator being too slow to repost its receive buffers.
fn refused(sw: &Bulwarkd) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for p in ["p0", "p1"] {
        for (reason, n) in sw.port(p)["drops"].as_object().unwrap() {
            let n = n.as_u64().unwrap();
            if n > 0 && reason != "rx_no_buffers" {
                out.push((p.to_string(), reason.clone(), n));
            }
        }
    }
    out
}

/// p0's connections of IP protocol `proto` in `state`.
fn conns(sw: &Bulwarkd, proto: u8, state: &str) -> usize {
    let (_, v) = sw.api("GET", "/v1/ports/p0/conns", None);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|c| c["proto"] == proto && c["state"] == state)
        .count()
}

#[test]
fn udp_tcp_and_connection_setup_through_the_firewall() {
    let sw = Bulwarkd::start(&[("p0", 10), ("p1", 10)]);
    set_policies(&sw);

    let v = bench(&sw, &["--flows", "100", "--size", "64"]);
    assert!(v["latency_us"]["samples"].as_u64().unwrap() > 0, "{v}");
    assert!(v["latency_us"]["p99"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(refused(&sw), vec![]);
    assert_eq!(conns(&sw, 17, "replied"), 100);

    let v = bench(&sw, &["--mode", "tcp", "--flows", "100", "--size", "64"]);
    assert_eq!(v["tcp_unexpected"], 0, "{v}");
    assert!(v["latency_us"]["samples"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(refused(&sw), vec![]);
    // Every flow was established (its data passed the window checks above), then closed by
    // the generator's closing RSTs.
    assert_eq!(conns(&sw, 6, "closed"), 100);

    // The same addresses again (flows 0-9): their closed connections give way to new ones.
    let v = bench(&sw, &["--mode", "tcp", "--flows", "10", "--size", "1500"]);
    assert_eq!(v["tcp_unexpected"], 0, "{v}");
    assert_eq!(refused(&sw), vec![]);

    // Paced: closed connections stay 30 s (the default tcp_closed), and an unpaced run would
    // fill p0's share of the table, which is not what this test is about.
    let v = bench(&sw, &["--mode", "conn", "--rate", "0.1"]);
    assert!(v["conns_completed"].as_u64().unwrap() >= 1000, "{v}");
    assert_eq!(v["handshake_unexpected"], 0, "{v}");
    assert_eq!(v["reply_overflow"], 0, "{v}");
    assert_eq!(refused(&sw), vec![]);
}

/// With `queues = 2` on both ports and two workers, `--queues 2` traffic is received by both
/// workers from each port.
#[test]
fn two_queue_pairs_use_both_workers() {
    let cpus: Vec<usize> = if worker_cpu() >= 1 {
        vec![0, 1]
    } else {
        vec![0]
    };
    let q2 = "queues = 2";
    let sw = Bulwarkd::start_extra(&[("p0", 10, "server", q2), ("p1", 10, "server", q2)], &cpus);
    set_policies(&sw);
    let v = bench(&sw, &["--mode", "tcp", "--flows", "64", "--queues", "2"]);
    assert_eq!(v["tcp_unexpected"], 0, "{v}");
    assert_eq!(refused(&sw), vec![]);
    for p in ["p0", "p1"] {
        let port = sw.port(p);
        assert_eq!(port["queues"], 2, "{port}");
        let per: Vec<u64> = port["rx_packets_per_worker"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        assert_eq!(per.len(), cpus.len());
        assert!(per.iter().all(|&n| n > 1000), "{p}: {per:?}");
    }
}
