//! The inventory: a vNIC's tenant and tags, from the config file and the API, changed at run
//! time through `PUT /v1/ports/NAME/tags` (all or nothing, errors naming the tag), kept across
//! a restart for an API-added port, and never a change to the policy or the traffic.

mod common;

use common::*;
use serde_json::json;

#[test]
fn tenant_and_tags_come_from_the_config_and_the_api_and_change_at_run_time() {
    let mut sw = Bulwarkd::start_extra(
        &[
            (
                "a",
                10,
                "server",
                "tenant = \"blue\"\ntags = { tier = \"web\", env = \"prod\" }",
            ),
            ("b", 10, "server", "tenant = \"blue\""),
            ("z", 30, "server", ""),
        ],
        &[worker_cpu()],
    );
    let a = sw.port("a");
    assert_eq!(a["tenant"], "blue", "{a}");
    assert_eq!(a["tags"], json!({"tier": "web", "env": "prod"}));
    let z = sw.port("z");
    assert_eq!(
        z["tenant"], "default",
        "a port that names no tenant is in `default`"
    );
    assert_eq!(z["tags"], json!({}));

    // Replace a's tags: exactly the new set.
    let (status, v) = sw.api(
        "PUT",
        "/v1/ports/a/tags",
        Some(&json!({"tags": {"tier": "db", "os": "linux"}}).to_string()),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tags"], json!({"tier": "db", "os": "linux"}));
    assert_eq!(sw.port("a")["tags"], json!({"tier": "db", "os": "linux"}));

    // A bad tag is refused by name and nothing changes (all or nothing).
    for (body, field) in [
        (json!({"tags": {"ok": "1", "bad key": "x"}}), "tags.bad key"),
        (json!({"tags": {"tier": "a/b"}}), "tags.tier"),
    ] {
        let (status, v) = sw.api("PUT", "/v1/ports/a/tags", Some(&body.to_string()));
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["field"], field, "{v}");
        assert_eq!(sw.port("a")["tags"], json!({"tier": "db", "os": "linux"}));
    }
    let many: serde_json::Map<String, serde_json::Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, v) = sw.api(
        "PUT",
        "/v1/ports/a/tags",
        Some(&json!({ "tags": many }).to_string()),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "tags", "{v}");
    let (status, v) = sw.api("PUT", "/v1/ports/a/tags", Some(r#"{"tag": {}}"#));
    assert_eq!(status, 400, "an unknown field is refused: {v}");
    let (status, v) = sw.api("PUT", "/v1/ports/nope/tags", Some(r#"{"tags": {}}"#));
    assert_eq!(status, 404, "{v}");

    // An API-added port keeps its tenant and tags across a restart, and so do its changes.
    let sock = path_str(&sw.dir.join("c.sock"));
    let (status, v) = sw.api(
        "POST",
        "/v1/ports",
        Some(
            &json!({"name": "c", "socket": sock, "segment": 20, "mode": "server",
                    "tenant": "green", "tags": {"tier": "app"}})
            .to_string(),
        ),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["tenant"].clone(), v["tags"].clone()),
        (json!("green"), json!({"tier": "app"}))
    );
    let (status, v) = sw.api(
        "PUT",
        "/v1/ports/c/tags",
        Some(&json!({"tags": {"tier": "app", "canary": "yes"}}).to_string()),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = sw.api(
        "POST",
        "/v1/ports",
        Some(
            &json!({"name": "d", "socket": path_str(&sw.dir.join("d.sock")), "segment": 10,
                     "tenant": "no tenant"})
            .to_string(),
        ),
    );
    assert_eq!((status, v["field"].clone()), (400, json!("tenant")), "{v}");

    sw.restart();
    let c = sw.port("c");
    assert_eq!(c["tenant"], "green", "{c}");
    assert_eq!(c["tags"], json!({"tier": "app", "canary": "yes"}));
    // A config-file port's tags come from the file again.
    assert_eq!(sw.port("a")["tags"], json!({"tier": "web", "env": "prod"}));

    // Tags do not touch the traffic: a and b still switch frames both ways.
    let mut da = sw.attach("a", mac(1));
    let mut db = sw.attach("b", mac(2));
    let (status, v) = sw.api("PUT", "/v1/ports/a/tags", Some(r#"{"tags": {"x": "y"}}"#));
    assert_eq!(status, 200, "{v}");
    let wait = std::time::Duration::from_secs(5);
    let f = frame(mac(2), mac(1), 1);
    assert_frames(
        &exchange(&mut da, &mut db, &f, wait),
        &[f],
        "a to b after a tag change",
    );
    let f = frame(mac(1), mac(2), 2);
    assert_frames(
        &exchange(&mut db, &mut da, &f, wait),
        &[f],
        "b to a after a tag change",
    );
}
