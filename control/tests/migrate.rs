//! A vNIC's tracked connections move with its guest from one bulwarkd to another (two
//! instances on one machine stand for two hosts, joined by an "uplink" port each): 100,000
//! connections are handed over by the source and imported by the destination, every one is
//! checked there, and the end that stayed on the source keeps its connections through the
//! uplink.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// a may open UDP and TCP to anything; nothing may open a connection to a.
const POLICY_A: &str = r#"
[ports.policy]
egress_default = "allow"
ingress_default = "drop"
max_connections = 200000
"#;
/// On the source, a's guard learns its address (and unbinds it when a leaves).
const GUARDED_A: &str = r#"
mac = "02:00:00:00:00:01"
spoof_guard = "learn"
[ports.policy]
egress_default = "allow"
ingress_default = "drop"
max_connections = 200000
"#;
const POLICY_B: &str = r#"
[ports.policy]
egress_default = "drop"
ingress_default = "allow"
"#;

const N: u32 = 100_000;
const WAIT: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);

const A: ([u8; 6], [u8; 4]) = ([2, 0, 0, 0, 0, 1], IP_A);
const B: ([u8; 6], [u8; 4]) = ([2, 0, 0, 0, 0, 2], IP_B);

/// Flow `i`'s ports: 10,000 TCP flows (a SYN each), the rest UDP.
fn flow(i: u32) -> (bool, u16, u16) {
    (
        i < 10_000,
        1024 + (i % 60_000) as u16,
        5000 + (i / 60_000) as u16,
    )
}

fn key_of(c: &Value) -> (u64, String, u64, String, u64) {
    (
        c["proto"].as_u64().unwrap(),
        c["src"].as_str().unwrap().to_string(),
        c["sport"].as_u64().unwrap(),
        c["dst"].as_str().unwrap().to_string(),
        c["dport"].as_u64().unwrap(),
    )
}

fn ctl(sw: &Bulwarkd, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
        .arg("--run-dir")
        .arg(&sw.run)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn connections_follow_a_migrating_vnic() {
    let src = Bulwarkd::start_extra(
        &[
            ("a", 10, "server", GUARDED_A),
            ("b", 10, "server", POLICY_B),
            ("uplink", 10, "server", ""),
        ],
        &[worker_cpu()],
    );
    let mut a = src.attach("a", A.0);
    let mut b = src.attach("b", B.0);
    learn(&mut a, &mut b, A.0, B.0);

    // 100,000 connections a -> b.
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let (is_tcp, sport, dport) = flow(i);
            if is_tcp {
                tcp((A.0, A.1, sport), (B.0, B.1, dport), 1000 + i, 0, "S", b"")
            } else {
                udp((A.0, A.1, sport), (B.0, B.1, dport), b"q")
            }
        })
        .collect();
    for part in frames.chunks(4096) {
        send_all(&mut a, part);
        let _ = recv_n(&mut b, part.len(), Duration::from_millis(1));
        // b's ring is small: drain what arrived so it keeps taking frames.
        while !recv_n(&mut b, 256, Duration::from_millis(2)).is_empty() {}
    }
    src.wait_for(
        || src.api("GET", "/v1/conntrack", None).1["live"] == json!(N),
        "100,000 connections on the source",
    );
    let want: BTreeSet<_> = src
        .api("GET", "/v1/ports/a/conns", None)
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(key_of)
        .collect();
    assert_eq!(want.len(), N as usize);
    let port_a = src.api("GET", "/v1/ports/a", None).1;
    assert_eq!(
        port_a["addresses"][0]["address"], "10.0.0.1",
        "a's guard learned its address: {port_a}"
    );

    // The destination: a (the guest's new port, another segment number) and its uplink.
    let dst = src.start_beside(
        &[("a", 20, "server", POLICY_A), ("uplink", 20, "server", "")],
        &[0],
        &[],
    );
    // An export names b, which the destination does not have: refused without --remote.
    let file = dst.dir.join("conns.json");
    let t = Instant::now();
    let (ok, _, err) = ctl(
        &src,
        &[
            "port",
            "export",
            "a",
            "--handover",
            "uplink",
            "-o",
            file.to_str().unwrap(),
        ],
    );
    let export_time = t.elapsed();
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "100000 connections exported; 100000 with vNICs that stay now go through uplink"
        ),
        "{err}"
    );
    // The address a's guard had learned left with it: unbound on the source.
    assert!(
        err.contains("learned addresses unbound (they left with the guest): 10.0.0.1"),
        "{err}"
    );
    let port_a = src.api("GET", "/v1/ports/a", None).1;
    assert_eq!(port_a["addresses"], json!([]), "{port_a}");
    let (ok, _, err) = ctl(&dst, &["port", "import", "a", "-f", file.to_str().unwrap()]);
    assert!(!ok && err.contains("remote") && err.contains('b'), "{err}");
    let t = Instant::now();
    let (ok, out, err) = ctl(
        &dst,
        &[
            "--json",
            "port",
            "import",
            "a",
            "-f",
            file.to_str().unwrap(),
            "--remote",
            "uplink",
        ],
    );
    let import_time = t.elapsed();
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["imported"], N, "{r}");
    assert_eq!(r["refused"], 0, "{r}");
    assert_eq!(
        r["remote_ends"], N,
        "every far end is b, through the uplink: {r}"
    );
    eprintln!(
        "100,000 connections: handover + export {} ms (bulwarkctl, {} bytes of JSON), import {} ms \
         (bulwarkctl; {:.1} ms of it in the switch)",
        export_time.as_millis(),
        std::fs::metadata(&file).unwrap().len(),
        import_time.as_millis(),
        r["millis"].as_f64().unwrap()
    );

    // Every one is on the destination, in a's segment there, between a and the uplink, and
    // judged again by the destination's rules on its next packet.
    let conns = dst.api("GET", "/v1/ports/a/conns", None).1;
    let conns = conns.as_array().unwrap();
    let got: BTreeSet<_> = conns.iter().map(key_of).collect();
    assert_eq!(got, want, "the same connections");
    for c in conns {
        assert_eq!(c["zone"], 20, "{c}");
        assert_eq!(
            (c["owner"].as_str(), c["peer"].as_str()),
            (Some("a"), Some("uplink")),
            "{c}"
        );
        assert_eq!(c["revalidate"], true, "{c}");
    }
    let tcp_states: BTreeSet<&str> = conns
        .iter()
        .filter(|c| c["proto"] == 6)
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(tcp_states.len(), 1, "{tcp_states:?}");

    // Replies from the far end (through the uplink) reach a on the destination: only as
    // part of a tracked connection, a's ingress allows nothing.
    let mut a2 = dst.attach("a", A.0);
    let mut up = dst.attach("uplink", [2, 0, 0, 0, 0, 0x99]);
    learn(&mut a2, &mut up, A.0, [2, 0, 0, 0, 0, 0x99]);
    let (_, sport, dport) = flow(50_000);
    let reply = udp((B.0, B.1, dport), (A.0, A.1, sport), b"a");
    assert_eq!(
        exchange(&mut up, &mut a2, &reply, WAIT),
        vec![reply.clone()],
        "UDP reply"
    );
    let (_, sport, dport) = flow(7);
    let synack = tcp(
        (B.0, B.1, dport),
        (A.0, A.1, sport),
        555,
        1000 + 7 + 1,
        "SA",
        b"",
    );
    assert_eq!(
        exchange(&mut up, &mut a2, &synack, WAIT),
        vec![synack.clone()],
        "SYN+ACK"
    );
    // What is not tracked is still refused: a new connection to a, a reply of a flow that
    // never was.
    let other = udp((B.0, B.1, 9), (A.0, A.1, 9), b"x");
    assert!(exchange(&mut up, &mut a2, &other, SHORT).is_empty());
    let syn = tcp((B.0, B.1, 4000), (A.0, A.1, 22), 1, 0, "S", b"");
    assert!(exchange(&mut up, &mut a2, &syn, SHORT).is_empty());

    // On the source, b keeps its connections, now through the uplink: its answers go out
    // there (as to a remote a), and nothing of them is left on a's port.
    let left = src.api("GET", "/v1/ports/b/conns", None).1;
    let left = left.as_array().unwrap();
    assert_eq!(left.len(), N as usize);
    assert!(
        left.iter()
            .all(|c| c["peer"] == "uplink" || c["owner"] == "uplink"),
        "{}",
        left[0]
    );
    assert_eq!(src.api("GET", "/v1/ports/a/conns", None).1, json!([]));

    // And back: the destination hands them over, the source takes them; it had kept them
    // for b through the uplink, so they are a's again (rejoined), not new.
    drop(a2);
    let back = src.dir.join("back.json");
    let (ok, _, err) = ctl(
        &dst,
        &[
            "port",
            "export",
            "a",
            "--handover",
            "uplink",
            "-o",
            back.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("0 with vNICs that stay"),
        "the far end was remote: {err}"
    );
    assert_eq!(dst.api("GET", "/v1/conntrack", None).1["live"], 0);
    let (ok, out, err) = ctl(
        &src,
        &[
            "--json",
            "port",
            "import",
            "a",
            "-f",
            back.to_str().unwrap(),
            "--remote",
            "uplink",
        ],
    );
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["rejoined"].as_u64(), r["imported"].as_u64()),
        (Some(N.into()), Some(0)),
        "{r}"
    );
    let conns = src.api("GET", "/v1/ports/a/conns", None).1;
    let conns = conns.as_array().unwrap();
    assert_eq!(conns.len(), N as usize);
    assert!(
        conns
            .iter()
            .all(|c| c["owner"] == "a" && c["peer"] == "b" && c["zone"] == 10),
        "{}",
        conns[0]
    );
    // b's answer reaches a again on the source.
    let (_, sport, dport) = flow(60_001);
    let reply = udp((B.0, B.1, dport), (A.0, A.1, sport), b"a");
    while !recv_n(&mut a, 256, Duration::from_millis(20)).is_empty() {}
    assert_eq!(
        exchange(&mut b, &mut a, &reply, WAIT),
        vec![reply.clone()],
        "UDP reply at home"
    );

    // Bad imports name the field.
    let (s, v) = dst.api(
        "POST",
        "/v1/ports/a/conns/import?remote=uplink",
        Some(&json!({"format": 9, "port": "a", "uuid": "x", "host": "h", "vnics": [], "connections": []}).to_string()),
    );
    assert_eq!((s, v["field"].as_str()), (400, Some("format")), "{v}");
    let (s, v) = dst.api(
        "POST",
        "/v1/ports/a/conns/import?remote=uplink",
        Some(
            &json!({"format": 1, "port": "a", "uuid": "x", "host": "h",
            "vnics": [{"name": "a", "uuid": "x"}],
            "connections": [[20, 17, "10.0.0.1", 1, "10.0.0.2", 2, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]]})
            .to_string(),
        ),
    );
    assert_eq!(
        (s, v["field"].as_str()),
        (400, Some("connections[0]")),
        "{v}"
    );
    let (s, v) = dst.api(
        "POST",
        "/v1/ports/a/conns/import?remote=a",
        Some(&json!({"format": 1, "port": "a", "uuid": "x", "host": "h", "vnics": [], "connections": []}).to_string()),
    );
    assert_eq!((s, v["field"].as_str()), (400, Some("remote")), "{v}");
    let (s, v) = src.api(
        "POST",
        "/v1/ports/b/conns/handover",
        Some(&json!({"via": "b"}).to_string()),
    );
    assert_eq!((s, v["field"].as_str()), (400, Some("via")), "{v}");
}
