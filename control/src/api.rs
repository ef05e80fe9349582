//! The management API: HTTP + JSON over a Unix socket.
//!
//! | method | path                 | what                                         |
//! |--------|----------------------|----------------------------------------------|
//! | GET    | /v1/health           | `{"status":"ok"}`                            |
//! | GET    | /v1/ports            | all ports with counters                      |
//! | GET    | /v1/ports/NAME       | one port                                     |
//! | POST   | /v1/ports            | add a port (body: a port object as in config)|
//! | DELETE | /v1/ports/NAME       | remove a port                                |
//! | GET    | /v1/ports/NAME/policy| its policy and per-rule counters             |
//! | PUT    | /v1/ports/NAME/policy| replace its policy (body: a policy object)   |
//! | GET    | /v1/ports/NAME/conns | its tracked connections                      |
//! | DELETE | /v1/ports/NAME/conns | flush its tracked connections                |
//! | GET    | /v1/conns            | all tracked connections                      |
//! | GET    | /v1/conntrack        | connection table size and use                |
//! | GET    | /v1/macs             | the MAC table                                |
//! | GET    | /v1/stats            | workers and drop reasons                     |
//!
//! Errors are `{"error": "...", "field": "..."}` with a 4xx/5xx status.

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use dataplane::DropReason;
use serde_json::json;

use crate::config::PortConfig;
use crate::daemon::{ApiError, Daemon};
use crate::http;
use crate::policy::PolicyConfig;

/// Parses a JSON request body, naming the field serde complains about.
fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde names unknown and missing fields in its message; surface the name.
        let field = msg.split('`').nth(1).unwrap_or("").to_string();
        ApiError::bad(field, msg)
    })
}

/// Serves the API on `listener` until the process exits.
pub fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    for conn in listener.incoming() {
        let s = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("api: accept failed: {e}");
                continue;
            }
        };
        let (status, body) = match http::read_request(&s) {
            Ok(req) => match route(&daemon, &req.method, &req.path, &req.body) {
                Ok((status, v)) => (status, v.to_string()),
                Err(e) => (e.status, serde_json::to_string(&e).unwrap_or_default()),
            },
            Err(e) => (400, json!({ "error": e }).to_string()),
        };
        if let Err(e) = http::write_response(&s, status, &body) {
            log::debug!("api: writing response: {e}");
        }
    }
}

/// Handles one request; public so tests can drive the API without a socket.
pub fn route(
    d: &Daemon,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, serde_json::Value), ApiError> {
    let path = path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ok = |v: serde_json::Value| Ok((200, v));
    match (method, segs.as_slice()) {
        ("GET", ["v1", "health"]) => ok(json!({ "status": "ok" })),
        ("GET", ["v1", "ports"]) => ok(json!(d.ports())),
        ("GET", ["v1", "ports", name]) => ok(json!(d.port(name)?)),
        ("POST", ["v1", "ports"]) => {
            let cfg: PortConfig = body_json(body)?;
            Ok((201, json!(d.add_port(cfg, true)?)))
        }
        ("GET", ["v1", "ports", name, "policy"]) => ok(json!(d.policy(name)?)),
        ("PUT", ["v1", "ports", name, "policy"]) => {
            let p: PolicyConfig = body_json(body)?;
            ok(json!(d.set_policy(name, p)?))
        }
        ("GET", ["v1", "ports", name, "conns"]) => ok(json!(d.conns(Some(name))?)),
        ("DELETE", ["v1", "ports", name, "conns"]) => ok(json!({ "flushed": d.flush(name)? })),
        ("GET", ["v1", "conns"]) => ok(json!(d.conns(None)?)),
        ("GET", ["v1", "conntrack"]) => {
            let sw = d.switch();
            let ct = sw.conntrack();
            ok(json!({
                "capacity": sw.config().ct_capacity,
                "live": ct.len(),
                "bytes_per_connection": ct.bytes_per_connection(),
                "epoch": sw.policy_epoch(),
            }))
        }
        ("DELETE", ["v1", "ports", name]) => {
            d.remove_port(name)?;
            ok(json!({ "removed": name }))
        }
        ("GET", ["v1", "macs"]) => ok(json!(d.macs())),
        ("GET", ["v1", "stats"]) => {
            let workers: Vec<_> = d
                .switch()
                .worker_stats()
                .iter()
                .map(|w| json!({ "cpu": w.cpu, "busy_polls": w.busy_polls, "idle_polls": w.idle_polls }))
                .collect();
            let reasons: Vec<_> = DropReason::ALL
                .iter()
                .map(|r| json!({ "name": r.name(), "description": r.description() }))
                .collect();
            ok(json!({ "workers": workers, "drop_reasons": reasons, "ports": d.ports() }))
        }
        (_, ["v1", "health" | "ports" | "macs" | "stats" | "conns" | "conntrack", ..]) => {
            Err(ApiError {
                status: 405,
                field: String::new(),
                error: format!("{method} not allowed on {path}"),
            })
        }
        _ => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
    }
}
