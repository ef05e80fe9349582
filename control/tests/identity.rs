//! Durable vNIC identities: UUIDs and port ids survive a restart of bulwarkd, for ports from
//! the config file and ports added through the API; removing a port through the API forgets
//! its identity; a bad or duplicate UUID is refused by field.

mod common;

use common::*;
use serde_json::{json, Value};

fn ident(sw: &Bulwarkd, name: &str) -> (String, u64) {
    let p = sw.port(name);
    (
        p["uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("{p}"))
            .to_string(),
        p["id"].as_u64().unwrap(),
    )
}

fn add(sw: &Bulwarkd, body: Value) -> (u16, Value) {
    sw.api("POST", "/v1/ports", Some(&body.to_string()))
}

#[test]
fn vnic_identities_survive_restarts() {
    const NAMED: &str = "6b1f2c4e-8d3a-4f5b-9c7e-1a2b3c4d5e6f";
    let mut sw = Bulwarkd::start_extra(
        &[
            ("a", 10, "server", ""),
            ("b", 10, "server", &format!("uuid = \"{NAMED}\"")),
        ],
        &[worker_cpu()],
    );
    let dir = sw.dir.clone();
    let sock = |n: &str| path_str(&dir.join(format!("{n}.sock")));
    let (status, v) = add(
        &sw,
        json!({ "name": "c", "socket": sock("c"), "segment": 10, "mode": "server" }),
    );
    assert_eq!(status, 201, "{v}");
    let (a, b, c) = (ident(&sw, "a"), ident(&sw, "b"), ident(&sw, "c"));
    assert_eq!(b.0, NAMED);
    assert!(a.0.parse::<uuid_like::Uuid>().is_ok(), "{a:?}");
    assert_ne!(a.0, c.0);

    sw.restart();
    assert_eq!(ident(&sw, "a"), a, "a config port keeps its identity");
    assert_eq!(ident(&sw, "b"), b);
    assert_eq!(
        ident(&sw, "c"),
        c,
        "an API port comes back with its identity"
    );

    // Removing c through the API forgets it; a new port does not take a or b's ids.
    let (status, v) = sw.api("DELETE", "/v1/ports/c", None);
    assert_eq!(status, 200, "{v}");
    let (status, v) = add(
        &sw,
        json!({ "name": "d", "socket": sock("d"), "segment": 10, "mode": "server" }),
    );
    assert_eq!(status, 201, "{v}");
    let d = ident(&sw, "d");
    assert!(d.1 != a.1 && d.1 != b.1, "{d:?}");
    assert_ne!(d.0, c.0, "c's UUID was forgotten");
    sw.restart();
    assert_eq!(ident(&sw, "d"), d);
    assert_eq!(
        sw.try_api("GET", "/v1/ports/c", None).map(|r| r.0),
        Some(404)
    );

    // Bad and duplicate UUIDs name the field.
    let (status, v) = add(
        &sw,
        json!({ "name": "e", "socket": sock("e"), "segment": 10, "uuid": "nope" }),
    );
    assert_eq!((status, v["field"].as_str()), (400, Some("uuid")), "{v}");
    let (status, v) = add(
        &sw,
        json!({ "name": "e", "socket": sock("e"), "segment": 10, "uuid": NAMED }),
    );
    assert_eq!((status, v["field"].as_str()), (409, Some("uuid")), "{v}");
}

/// A tiny UUID syntax check (the tests do not depend on the uuid crate).
mod uuid_like {
    pub struct Uuid;
    impl std::str::FromStr for Uuid {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let groups: Vec<usize> = s.split('-').map(str::len).collect();
            let hex = s.chars().all(|c| c == '-' || c.is_ascii_hexdigit());
            (groups == [8, 4, 4, 4, 12] && hex)
                .then_some(Uuid)
                .ok_or(())
        }
    }
}
