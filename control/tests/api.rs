//! The management API as clients meet it: the OpenAPI document matches the code, and hostile
//! clients (slow ones, huge heads and bodies, garbage, crowds, no token) never stop bulwarkd
//! from serving the others.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

#[test]
fn the_openapi_document_is_current() {
    let committed = std::fs::read_to_string(DOC).expect("docs/openapi.json");
    let code = control::server::openapi_json();
    assert!(
        committed == code,
        "docs/openapi.json differs from what the code documents; regenerate it with\n  \
         cargo run -p bulwark-control --bin bulwarkd -- --openapi > docs/openapi.json"
    );
}

/// Sends raw bytes as one request and reads what comes back until the server closes.
fn raw(sw: &Bulwarkd, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sw.run.join("api.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn json_body(resp: &str) -> Value {
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp:?}"))
}

/// A health call must answer promptly while whatever else goes on.
fn healthy_within(sw: &Bulwarkd, limit: Duration, what: &str) {
    let t = Instant::now();
    let (status, v) = sw.api("GET", "/v1/health", None);
    assert_eq!(status, 200, "{v}");
    assert!(
        t.elapsed() < limit,
        "health took {:?} {what} (limit {limit:?})",
        t.elapsed()
    );
}

#[test]
fn the_running_daemon_serves_its_document_and_every_route_answers_as_documented() {
    let sw = Bulwarkd::start(&[("a", 10)]);
    let (status, served) = sw.api("GET", "/v1/openapi.json", None);
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&control::server::openapi_json()).unwrap();
    assert_eq!(served, doc, "GET /v1/openapi.json is not the document");
    // Every documented operation, with a port that exists and one that does not: the status
    // is one the document lists for it, and the body is JSON.
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if method == "post" || method == "put" {
                // Bodies: a bad one must be refused as documented (400), naming the field.
                let p = path.replace("{name}", "a");
                let (status, v) = sw.api(&method.to_uppercase(), &p, Some(r#"{"colour": 1}"#));
                assert_eq!(status, 400, "{method} {p}: {v}");
                assert!(v["error"].as_str().unwrap().contains("colour"), "{v}");
                assert!(
                    op["responses"]["400"].is_object(),
                    "{method} {path}: 400 undocumented"
                );
                checked += 1;
                continue;
            }
            if method == "delete" && !path.ends_with("/conns") {
                continue; // removing the port would spoil the other checks; tested below
            }
            for name in ["a", "no-such-port"] {
                let p = path.replace("{name}", name);
                let (status, v) = sw.api(&method.to_uppercase(), &p, None);
                let documented = op["responses"].as_object().unwrap();
                assert!(
                    documented.contains_key(&status.to_string()),
                    "{method} {p}: status {status} is not documented ({:?}): {v}",
                    documented.keys().collect::<Vec<_>>()
                );
                if !path.contains("{name}") && name != "a" {
                    break;
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} operations checked");
    let (status, v) = sw.api("DELETE", "/v1/ports/a", None);
    assert_eq!((status, v["removed"].as_str()), (200, Some("a")), "{v}");
    // Unknown paths and methods get JSON errors too.
    let (status, v) = sw.api("GET", "/v1/nothing", None);
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("/v1/nothing"), "{v}");
    let (status, v) = sw.api("PATCH", "/v1/ports", None);
    assert_eq!(status, 405, "{v}");
    assert!(v["error"].as_str().unwrap().contains("PATCH"), "{v}");
}

#[test]
fn slow_clients_do_not_hold_the_api() {
    let sw = Bulwarkd::start(&[]);
    // Twenty clients that send their request head a byte at a time, slower than any limit.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let mut s = UnixStream::connect(sw.run.join("api.sock")).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                for b in b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: "
                    .iter()
                    .cycle()
                {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || s.write_all(&[*b]).is_err()
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
                t.elapsed()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        healthy_within(&sw, Duration::from_secs(2), "beside 20 slow clients");
    }
    // The server cuts each of them once its head has taken 5 s.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) && !slow.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in slow {
        let held = h.join().unwrap();
        assert!(
            held < Duration::from_secs(12),
            "a slow client held its connection {held:?}"
        );
    }
}

#[test]
fn a_slow_body_is_cut_at_the_request_timeout() {
    let ports: [(&str, u16, &str, &str); 0] = [];
    let sw = Bulwarkd::start_args(
        &ports,
        &[worker_cpu()],
        &["--api-timeout".into(), "3".into()],
    );
    let mut s = UnixStream::connect(sw.run.join("api.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"PUT /v1/ports/x/policy HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    let t = Instant::now();
    // Trickle the body; the server must close the connection at about 3 s.
    let mut closed = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(200));
        if s.write_all(b" ").is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        s.set_nonblocking(true).unwrap();
        let r = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        if matches!(r, Ok(0)) || matches!(r, Ok(n) if n > 0) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a trickled body held the connection for {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the whole-request limit (3 s) did not hold: {:?}",
        t.elapsed()
    );
    healthy_within(&sw, Duration::from_secs(2), "after the slow body");
}

#[test]
fn huge_heads_and_bodies_are_refused() {
    let sw = Bulwarkd::start(&[]);
    // A request line longer than the head limit (16 KiB).
    let long_path = format!(
        "GET /v1/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let r = raw(&sw, long_path.as_bytes());
    assert!(
        r.is_empty() || matches!(status_of(&r), 414 | 431 | 400),
        "a 64 KiB request line got {r:.200}"
    );
    healthy_within(&sw, Duration::from_secs(2), "after a huge request line");
    // Endless headers.
    let mut many = String::from("GET /v1/health HTTP/1.1\r\n");
    for i in 0..2000 {
        many += &format!("X-Header-{i}: {}\r\n", "v".repeat(64));
    }
    many += "\r\n";
    let r = raw(&sw, many.as_bytes());
    assert!(
        r.is_empty() || matches!(status_of(&r), 431 | 400),
        "130 KiB of headers got {r:.200}"
    );
    healthy_within(&sw, Duration::from_secs(2), "after endless headers");
    // A body over 16 MiB is refused from its Content-Length, before it is read.
    let r = raw(
        &sw,
        b"PUT /v1/ports/x/policy HTTP/1.1\r\nHost: x\r\nContent-Length: 17000000\r\n\r\n{}",
    );
    assert_eq!(status_of(&r), 413, "{r:.300}");
    assert!(json_body(&r)["error"].is_string(), "{r}");
    // And one that is sent without a length (chunked) is cut at the limit.
    let mut s = UnixStream::connect(sw.run.join("api.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        b"PUT /v1/ports/x/policy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let chunk = format!("100000\r\n{}\r\n", " ".repeat(0x100000));
    let mut sent = 0;
    while sent < 40 && s.write_all(chunk.as_bytes()).is_ok() {
        sent += 1;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        sent < 40 || status_of(&out) == 413,
        "40 MiB chunked: sent {sent} MiB, got {out:.200}"
    );
    if !out.is_empty() {
        assert_eq!(status_of(&out), 413, "{out:.300}");
    }
    healthy_within(&sw, Duration::from_secs(2), "after huge bodies");
}

#[test]
fn malformed_requests_get_errors_and_the_api_goes_on() {
    let sw = Bulwarkd::start(&[("a", 10)]);
    for garbage in [
        &b"HELLO\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /v1/health HTTP/9.9\r\n\r\n",
        b"PUT /v1/ports/a/policy HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    ] {
        let r = raw(&sw, garbage);
        assert!(
            r.is_empty() || (400..500).contains(&status_of(&r)),
            "{garbage:?} got {r:.200}"
        );
    }
    // Bodies that are not the document: each error names what is wrong.
    let cases = [
        ("PUT", "/v1/ports/a/policy", "{not json", ""),
        (
            "PUT",
            "/v1/ports/a/policy",
            r#"{"egress_default": "maybe"}"#,
            "maybe",
        ),
        (
            "PUT",
            "/v1/ports/a/policy",
            r#"{"egress": [{"action": "allow", "dst_ports": 80}]}"#,
            "policy.egress[0].dst_ports",
        ),
        ("POST", "/v1/ports", r#"{"name": "b"}"#, "socket"),
        (
            "POST",
            "/v1/ports",
            r#"{"name": "b", "socket": "rel.sock", "segment": 1}"#,
            "socket",
        ),
        (
            "POST",
            "/v1/ports",
            r#"{"name": "b/c", "socket": "/tmp/x.sock", "segment": 1}"#,
            "name",
        ),
    ];
    for (method, path, body, names) in cases {
        let (status, v) = sw.api(method, path, Some(body));
        assert_eq!(status, 400, "{method} {path} {body}: {v}");
        let text = format!(
            "{} {}",
            v["field"].as_str().unwrap_or(""),
            v["error"].as_str().unwrap()
        );
        assert!(
            text.contains(names),
            "{body}: the error does not name {names:?}: {v}"
        );
    }
    // A live socket (here: the API's own) is never taken over by a server-mode port.
    let api = path_str(&sw.run.join("api.sock"));
    let (status, v) = sw.api(
        "POST",
        "/v1/ports",
        Some(&format!(
            r#"{{"name": "b", "socket": "{api}", "mode": "server", "segment": 1}}"#
        )),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "socket", "{v}");
    healthy_within(&sw, Duration::from_secs(2), "after malformed requests");
    assert_eq!(sw.port("a")["name"], "a");
}

#[test]
fn many_clients_at_once_are_all_served() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10)]);
    let sock = sw.run.join("api.sock");
    let t = Instant::now();
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let path = if i % 2 == 0 {
                    "/v1/ports"
                } else {
                    "/v1/ports/a/policy"
                };
                let (status, body) = control::client::call(&sock, "GET", path, None)
                    .unwrap_or_else(|e| panic!("client {i}: {e}"));
                assert_eq!(status, 200, "client {i}: {body}");
                serde_json::from_str::<Value>(&body).unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "200 clients took {:?}",
        t.elapsed()
    );
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_needs_the_bearer_token() {
    let dir = std::env::temp_dir().join(format!("bulwark-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let port = free_tcp_port();
    let addr = format!("127.0.0.1:{port}");
    let ports: [(&str, u16, &str, &str); 0] = [];
    let sw = Bulwarkd::start_args(
        &ports,
        &[worker_cpu()],
        &[
            "--api-listen".into(),
            addr.clone(),
            "--api-token-file".into(),
            path_str(&token_file),
        ],
    );
    let tcp = |req: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let r = tcp("GET /v1/ports HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&r), 401, "{r}");
    assert!(
        r.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{r}"
    );
    assert_eq!(json_body(&r)["field"], "Authorization", "{r}");
    let r = tcp(
        "GET /v1/ports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token-012345678\r\n\r\n",
    );
    assert_eq!(status_of(&r), 401, "a token one character short: {r}");
    let c = control::client::Client::new(
        control::client::Endpoint::Tcp {
            addr: addr.clone(),
            token: "s3cret-token-0123456789".into(),
        },
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(c.health().unwrap().status, "ok");
    assert!(c.ports().unwrap().is_empty());
    // The Unix socket needs no token.
    assert_eq!(sw.api("GET", "/v1/ports", None).0, 200);
    drop(sw);
    // A token too short to be one is refused at start, naming the option.
    std::fs::write(&token_file, "short\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwarkd"))
        .args([
            "--run-dir",
            &path_str(&dir.join("run")),
            "--api-listen",
            &addr,
        ])
        .arg("--api-token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-token-file"), "{err}");
    // And TCP without a token file is refused by the argument parser.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwarkd"))
        .args([
            "--run-dir",
            &path_str(&dir.join("run")),
            "--api-listen",
            &addr,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-token-file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
