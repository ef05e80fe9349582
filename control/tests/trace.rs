//! The packet trace (`POST/GET /v1/ports/NAME/trace`, `bulwarkctl trace`): what every stage
//! did with each of the next N frames, and nothing once the budget is spent.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn records(sw: &Bulwarkd, port: &str, want: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let t = std::time::Instant::now();
    while got.len() < want && t.elapsed() < Duration::from_secs(5) {
        let (status, v) = sw.api("GET", &format!("/v1/ports/{port}/trace"), None);
        assert_eq!(status, 200, "{v}");
        got.extend(v["records"].as_array().unwrap().iter().cloned());
        std::thread::sleep(Duration::from_millis(50));
    }
    got
}

#[test]
fn a_trace_shows_every_stage_of_the_next_frames() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10)]);
    let (ma, mb) = (mac(1), mac(2));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    set_policy(
        &sw,
        "b",
        &json!({ "ingress_default": "drop",
                 "ingress": [{ "id": 7, "action": "allow", "proto": "tcp", "dst_ports": 22 }] }),
    );
    learn(&mut a, &mut b, ma, mb);
    // Nothing is recorded before a trace is asked for.
    send_all(&mut a, &[udp((ma, IP_A, 1), (mb, IP_B, 9), b"x")]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(records(&sw, "a", 0).is_empty());
    let (status, v) = sw.api("POST", "/v1/ports/a/trace", Some(r#"{"count": 4}"#));
    assert_eq!((status, v["count"].as_u64()), (200, Some(4)), "{v}");

    let syn22 = tcp((ma, IP_A, 40000), (mb, IP_B, 22), 1000, 0, "S", b"");
    assert_eq!(
        exchange(&mut a, &mut b, &syn22, Duration::from_secs(2)).len(),
        1
    );
    let syn23 = tcp((ma, IP_A, 40001), (mb, IP_B, 23), 1000, 0, "S", b"");
    assert!(exchange(&mut a, &mut b, &syn23, Duration::from_millis(300)).is_empty());
    // An IPv4 header with IHL 4: does not parse.
    let mut bad = udp((ma, IP_A, 1), (mb, IP_B, 9), b"x");
    bad[14] = 0x44;
    assert!(exchange(&mut a, &mut b, &bad, Duration::from_millis(300)).is_empty());
    // A broadcast that is not IP: flooded, b's policy lets non-IP in.
    let bcast = frame([0xff; 6], ma, 9);
    assert_eq!(
        exchange(&mut a, &mut b, &bcast, Duration::from_secs(2)).len(),
        1
    );
    // The budget is spent: a fifth frame is not recorded.
    assert_eq!(
        exchange(&mut a, &mut b, &syn22, Duration::from_secs(2)).len(),
        1
    );

    let r = records(&sw, "a", 4);
    assert_eq!(r.len(), 4, "{r:#?}");
    // 1: a new connection admitted by b's rule 7, forwarded and delivered.
    assert!(
        r[0]["packet"]
            .as_str()
            .unwrap()
            .starts_with("tcp 10.0.0.1:40000 -> 10.0.0.2:22 [SYN]"),
        "{}",
        r[0]
    );
    assert_eq!(r[0]["l2"], "port b");
    assert_eq!(r[0]["firewall"], "created");
    assert!(
        r[0]["rules"]
            .as_array()
            .unwrap()
            .contains(&json!({"port": "b", "direction": "ingress", "rule": 7})),
        "{}",
        r[0]
    );
    assert_eq!(
        (r[0]["verdict"].as_str(), r[0]["to"].as_str()),
        (Some("forwarded"), Some("b"))
    );
    assert_eq!(r[0]["delivered"], 1);
    assert!(
        r[0]["head"]
            .as_str()
            .unwrap()
            .starts_with("020000000002020000000001"),
        "{}",
        r[0]
    );
    // 2: refused by b's ingress default, counted on b.
    assert_eq!(r[1]["firewall"], "refused");
    assert_eq!(r[1]["reason"], "policy_drop_ingress");
    assert_eq!(r[1]["counted_on"], "b");
    assert!(
        r[1]["rules"]
            .as_array()
            .unwrap()
            .contains(&json!({"port": "b", "direction": "ingress", "rule": null})),
        "{}",
        r[1]
    );
    // 3: a parse error, dropped under its own reason on the sender.
    assert_eq!(r[2]["parse_error"], "parse_bad_ihl", "{}", r[2]);
    assert_eq!(
        (r[2]["reason"].as_str(), r[2]["counted_on"].as_str()),
        (Some("parse_bad_ihl"), Some("a"))
    );
    // 4: a non-IP broadcast: flooded, and delivered to b.
    assert_eq!(r[3]["l2"], "flood", "{}", r[3]);
    assert_eq!(
        (r[3]["verdict"].as_str(), r[3]["to"].as_str()),
        (Some("forwarded"), Some("flood"))
    );
    assert_eq!(r[3]["delivered"], 1);
    // Nothing more: the fifth frame was not traced, and the budget is spent.
    std::thread::sleep(Duration::from_millis(200));
    let (_, v) = sw.api("GET", "/v1/ports/a/trace", None);
    assert_eq!(v["records"], json!([]), "{v}");
    assert_eq!(v["remaining"], 0);
    // Bad requests name the field.
    let (status, v) = sw.api("POST", "/v1/ports/a/trace", Some(r#"{"count": 20000}"#));
    assert_eq!((status, v["field"].as_str()), (400, Some("count")), "{v}");
    let (status, _) = sw.api("POST", "/v1/ports/zz/trace", Some(r#"{"count": 1}"#));
    assert_eq!(status, 404);
}

#[test]
fn bulwarkctl_trace_prints_the_frames_and_stops_at_its_timeout() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10)]);
    let (ma, mb) = (mac(1), mac(2));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    learn(&mut a, &mut b, ma, mb);
    let run = path_str(&sw.run);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
        .args([
            "--run-dir",
            &run,
            "trace",
            "a",
            "--count",
            "3",
            "--timeout",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    for i in 0..2u16 {
        let f = udp((ma, IP_A, 5000 + i), (mb, IP_B, 9), b"hello");
        assert_eq!(
            exchange(&mut a, &mut b, &f, Duration::from_secs(2)).len(),
            1
        );
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("#1 worker 0 queue 0, 47 bytes"), "{text}");
    assert!(
        text.contains("l2 port b; firewall not_judged; forwarded to b, 1 delivered"),
        "{text}"
    );
    assert!(text.contains("2 of 3 frames traced within 4 s"), "{text}");
    // The timeout stopped the trace: nothing is recorded afterwards.
    let (_, v) = sw.api("GET", "/v1/ports/a/trace", None);
    assert_eq!(v["remaining"], 0, "{v}");
}
