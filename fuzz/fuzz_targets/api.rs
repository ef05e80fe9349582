//! The HTTP API as a client hits it, in process: the router `bulwarkd` serves (`server::router`
//! over an `Agent` and a `Switch`, no workers, no run directory: nothing is persisted), with
//! three ports (server sockets in a scratch directory of this process) and a few tracked
//! connections between them, then requests: a method and path from the API's routes (or, now
//! and then, another method or an unknown path), path parameters and query strings from the
//! input, and the input's bytes as the body (the seeds hold a valid body for each route).
//! `POST /v1/ports` adds a port at a socket path the target chooses inside its scratch
//! directory (the body's `socket` is rewritten), so no request creates a file elsewhere.
//!
//! One switch, agent and router serve the inputs of a process for as long as no input applies
//! a policy document (building the router builds the OpenAPI document, a fifth of a second
//! under the sanitizer). After an input that changed something (a request other than GET,
//! HEAD or OPTIONS answered with a 2xx, but for the dry runs below), every port is removed
//! (its connections, MAC entries, identity and addresses with it) and the three ports added
//! again; after one that applied a document, all three are built anew, so that no input meets another's policy. Otherwise the
//! ports stay (removing and adding them, each with its socket thread, was a third of the time
//! per input) and only the connections are put back. What carries over is counters and epochs.
//!
//! Checked for every response: a status below 500 (bad input is the client's fault; a 500 is a
//! finding), a JSON body, and for a 4xx an object `{"error": "...", "field": "..."}` (`field`
//! absent when no field is at fault). After an input whose every request was refused, only
//! read, or a dry run (`?dry_run=true` on a document or an application's removal, `POST
//! /v1/reach`), the ports, their addresses, tags and policies, the connection count and the
//! policy revision and history must be as the reset left them: a refused request or a dry run
//! changes nothing. No panic, no hang.
//!
//! Input: requests, each a route byte (modulo the routes, plus unknown ones), a variant byte
//! (path parameters, query, method), then the parameters and a length-prefixed body; see
//! `request`. `fuzz/make_seeds.py` writes the seeds in this format.
#![no_main]

mod util;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::{header, Method, Request};
use conntrack::{Key, NewConn, Segment, TcpConn};
use control::agent::Agent;
use control::config::PortConfig;
use control::identity::Identities;
use control::server::{router, Limits};
use dataplane::switch::{Switch, SwitchConfig};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tower::ServiceExt;
use util::Input;

/// The API's routes (`control::server::routes`, docs/openapi.json); `{n}` is a port or
/// application name, `{a}` an address.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/v1/ports"),
    ("POST", "/v1/ports"),
    ("GET", "/v1/ports/{n}"),
    ("DELETE", "/v1/ports/{n}"),
    ("GET", "/v1/ports/{n}/policy"),
    ("PUT", "/v1/ports/{n}/policy"),
    ("PUT", "/v1/ports/{n}/tags"),
    ("DELETE", "/v1/ports/{n}/addresses/{a}"),
    ("GET", "/v1/ports/{n}/conns"),
    ("DELETE", "/v1/ports/{n}/conns"),
    ("GET", "/v1/ports/{n}/conns/export"),
    ("POST", "/v1/ports/{n}/conns/handover"),
    ("POST", "/v1/ports/{n}/conns/import"),
    ("POST", "/v1/ports/{n}/trace"),
    ("GET", "/v1/ports/{n}/trace"),
    ("GET", "/v1/conns"),
    ("GET", "/v1/conntrack"),
    ("GET", "/v1/macs"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/policy"),
    ("PUT", "/v1/policy"),
    ("GET", "/v1/policy/history"),
    ("DELETE", "/v1/policy/apps/{n}"),
    ("GET", "/v1/groups"),
    ("POST", "/v1/reach"),
    ("GET", "/v1/openapi.json"),
    // Not routes: JSON 404s.
    ("GET", "/v1/nothing"),
    ("GET", "/{n}"),
];

const NAMES: &[&str] = &["a", "b", "up", "nope", "", "three-tier", "a.b_c-d"];
const ADDRESSES: &[&str] = &[
    "10.0.0.2",
    "10.0.0.9",
    "fd00::2",
    "not-an-address",
    "",
    "::",
];
const QUERIES: &[&str] = &[
    "",
    "?dry_run=true",
    "?dry_run=false",
    "?dry_run=1",
    "?remote=up",
    "?remote=a",
    "?remote=",
    "?remote=nope&dry_run=true",
];
const METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
];

/// Most requests taken from one input.
const MAX_REQUESTS: usize = 12;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| util::scratch_dir(&std::env::temp_dir(), "api"))
}

/// Percent-encodes all but unreserved characters (a path segment or a query value).
fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A name from the list, or any bytes (percent-encoded, or raw when they are valid in a URI).
fn param(inp: &mut Input, list: &[&str]) -> String {
    let b = inp.u8();
    if b & 0x80 == 0 {
        return list[usize::from(b) % list.len()].to_string();
    }
    let raw = inp.blob(48);
    if b & 0x40 != 0
        && raw
            .iter()
            .all(|&c| c.is_ascii_graphic() && c != b'/' && c != b'?' && c != b'#')
    {
        String::from_utf8_lossy(raw).into_owned()
    } else {
        encode(raw)
    }
}

/// A port config's socket, moved into the scratch directory (named from the port's name, or
/// from what the body said), so that adding a port never binds or dials outside it.
fn confine(body: &[u8], dir: &Path) -> Vec<u8> {
    let Ok(mut cfg) = serde_json::from_slice::<PortConfig>(body) else {
        // The server's parser (the same) refuses it too: nothing is opened.
        return body.to_vec();
    };
    let base: String = cfg
        .socket
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(40)
        .collect();
    let base = if base.is_empty() || base.starts_with('.') {
        format!("p{base}")
    } else {
        base
    };
    cfg.socket = dir.join(base);
    serde_json::to_vec(&cfg).expect("a port config serializes")
}

/// Decodes and sends one request; checks the response. Returns whether the request may have
/// changed something: a method other than GET, HEAD or OPTIONS, answered with a 2xx, save the
/// two that say they change nothing (`POST /v1/reach`, and a document applied or an
/// application removed with `?dry_run=true`: the world is then checked to be as it was).
fn request(app: &axum::Router, inp: &mut Input) -> bool {
    let r = usize::from(inp.u8()) % ROUTES.len();
    let v = inp.u8();
    let (method, template) = ROUTES[r];
    let mut method: Method = method.parse().expect("a method");
    if v & 0x80 != 0 {
        method = inp.pick(METHODS).clone();
    }
    let mut path = template.to_string();
    if path.contains("{n}") {
        let n = param(inp, NAMES);
        path = path.replace("{n}", &n);
    }
    if path.contains("{a}") {
        let a = param(inp, ADDRESSES);
        path = path.replace("{a}", &a);
    }
    let query = if v & 0x40 != 0 {
        format!(
            "?{}",
            encode(inp.blob(64)).replace("%3D", "=").replace("%26", "&")
        )
    } else {
        QUERIES[usize::from(v & 7) % QUERIES.len()].to_string()
    };
    let mut body = inp.blob(16 << 10).to_vec();
    if template == "/v1/ports" && method == Method::POST {
        body = confine(&body, dir());
    }
    let uri = format!("{path}{query}");
    let Ok(req) = Request::builder()
        .method(method.clone())
        .uri(&uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.clone()))
    else {
        return false; // not a URI a client could send
    };
    let rt = runtime();
    let resp = rt
        .block_on(app.clone().oneshot(req))
        .expect("the router is infallible");
    let status = resp.status();
    let bytes = rt
        .block_on(resp.into_body().collect())
        .expect("a response body")
        .to_bytes();
    let what = || {
        format!(
            "{method} {uri} with body {:?} -> {status}: {}",
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&bytes)
        )
    };
    assert!(!status.is_server_error(), "server error: {}", what());
    let read_only = (method == Method::POST && template == "/v1/reach")
        || (query == "?dry_run=true"
            && ((method == Method::PUT && template == "/v1/policy")
                || (method == Method::DELETE && template == "/v1/policy/apps/{n}")));
    // `is_safe`: GET, HEAD, OPTIONS (and TRACE and QUERY, which no input sends).
    let changed = status.is_success() && !read_only && !method.is_safe();
    if method == Method::HEAD {
        return changed; // no body
    }
    let json: Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", what()));
    if status.is_client_error() {
        let ok = json.as_object().is_some_and(|o| {
            o.get("error").is_some_and(Value::is_string)
                && o.get("field").is_none_or(Value::is_string)
                && o.keys().all(|k| k == "error" || k == "field")
        });
        assert!(ok, "not an API error: {}", what());
    } else {
        assert!(
            status.is_success(),
            "neither a success nor a client error: {}",
            what()
        );
    }
    changed
}

/// The switch, its agent and router.
struct World {
    switch: Arc<Switch>,
    agent: Arc<Agent>,
    app: axum::Router,
    /// The last input may have changed something: `reset` rebuilds the ports.
    dirty: bool,
    /// What `fingerprint` said after the ports were last rebuilt.
    pristine: String,
    /// The port ids of a, b and up.
    ids: [u16; 3],
}

impl World {
    fn new() -> World {
        let switch = Switch::new(SwitchConfig {
            ct_capacity: 1024,
            // Removing a port scans the MAC table; at the default 65,536 entries that was a
            // fifth of the time per input.
            mac_table_size: 1024,
            workers: vec![0],
            ..Default::default()
        });
        let agent = Arc::new(Agent::new(switch.clone(), None, Identities::default()));
        let app = router(agent.clone(), &Limits::default());
        World {
            switch,
            agent,
            app,
            dirty: true,
            pristine: String::new(),
            ids: [0; 3],
        }
    }

    /// What a request could change that the world must keep while no request succeeds in
    /// changing it: each port's identity, socket, tags, guard, addresses (with their times),
    /// MAC, policy (its rules, defaults, groups and epoch); the number of connections; the
    /// policy document's revision and history. Counters and link states are left out.
    fn fingerprint(&self) -> String {
        let ports: Vec<Value> = self
            .agent
            .ports()
            .into_iter()
            .map(|p| {
                let mut policy = self
                    .agent
                    .policy(&p.name)
                    .ok()
                    .and_then(|i| serde_json::to_value(i).ok());
                if let Some(Value::Object(o)) = &mut policy {
                    o.remove("rules"); // per-rule counters
                }
                json!([
                    p.name,
                    p.uuid,
                    p.id,
                    p.socket,
                    p.segment,
                    p.tags,
                    p.spoof_guard,
                    p.addresses,
                    p.mac,
                    policy
                ])
            })
            .collect();
        json!({
            "ports": ports,
            "conns": self.switch.conntrack().len(),
            "revision": self.agent.policy_doc().revision,
            "history": self.agent.policy_history().len(),
        })
        .to_string()
    }
}

fn world() -> &'static Mutex<World> {
    static W: OnceLock<Mutex<World>> = OnceLock::new();
    W.get_or_init(|| Mutex::new(World::new()))
}

/// Puts the world back as it starts: ports a (web), b (db, bound MAC, learning spoof guard,
/// one static address, its own rules) and up (an uplink), no policy document, and four
/// connections between them. After an input that changed nothing, only the connections are
/// tracked again, with fresh times (left alone, they would expire in a long run); otherwise
/// every port is removed and added again.
fn reset(w: &mut World, dir: &Path) {
    if !w.dirty {
        w.switch.retain_connections(|_| false);
        track(w);
        return;
    }
    for p in w.agent.ports() {
        w.agent.remove_port(&p.name).expect("remove a port");
    }
    util::empty_dir(dir);
    w.switch.retain_connections(|_| false);
    if w.agent.policy_doc().revision != 0 {
        *w = World::new();
    }
    let ports = [
        json!({"name": "a", "socket": dir.join("a.sock"), "mode": "server", "segment": 10,
               "tags": {"tier": "web"}}),
        json!({"name": "b", "socket": dir.join("b.sock"), "mode": "server", "segment": 10,
               "tags": {"tier": "db"}, "mac": "02:00:00:00:00:02", "spoof_guard": "learn",
               "addresses": ["10.0.0.2"],
               "policy": {"egress_default": "allow", "ingress_default": "drop",
                          "ingress": [{"action": "allow", "proto": "tcp", "dst_ports": 80}]}}),
        json!({"name": "up", "socket": dir.join("up.sock"), "mode": "server", "segment": 10}),
    ];
    for (i, p) in ports.into_iter().enumerate() {
        let cfg: PortConfig = serde_json::from_value(p).expect("a port config");
        w.ids[i] = w.agent.add_port(cfg, false).expect("add a port").id;
    }
    track(w);
    w.pristine = w.fingerprint();
    w.dirty = false;
}

/// Tracks connections between the ports a, b and up.
fn track(w: &World) {
    let ids = w.ids;
    let ct = w.switch.conntrack();
    let now = w.switch.now_secs();
    // Removed connections leave tombstones that only the sweeper (bulwarkd's control thread,
    // not running here) frees: the first pass starts their grace period, the second (no worker
    // to wait for) ends it.
    ct.sweep(now);
    ct.sweep(now);
    let syn = TcpConn::new(
        &Segment {
            seq: 1,
            flags: conntrack::tcp::flags::SYN,
            win: 1000,
            ..Default::default()
        },
        false,
    )
    .ok();
    for (i, (proto, owner, peer)) in [(6, 0, 1), (17, 0, 1), (6, 1, 2), (1, 2, 0)]
        .into_iter()
        .enumerate()
    {
        let k = Key {
            zone: 10,
            proto,
            src: [10, 0, 0, 1 + owner as u8].into(),
            dst: [10, 0, 0, 1 + peer as u8].into(),
            sport: 1000 + i as u16,
            dport: 80,
        };
        let n = NewConn {
            owner: ids[owner],
            peer: ids[peer],
            tcp: if proto == 6 { syn } else { None },
            ..Default::default()
        };
        ct.insert(&k, ct.hash(&k), &n, now, now.wrapping_mul(1000))
            .expect("the reset's connections are tracked");
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let mut w = world().lock().unwrap_or_else(|e| e.into_inner());
    reset(&mut w, dir);
    let mut inp = Input::new(data);
    for _ in 0..MAX_REQUESTS {
        if inp.done() {
            break;
        }
        if request(&w.app, &mut inp) {
            w.dirty = true;
        }
    }
    if !w.dirty {
        assert_eq!(
            w.fingerprint(),
            w.pristine,
            "requests that were refused, only read or dry runs changed the world"
        );
    }
});
