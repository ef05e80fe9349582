//! The policy document end to end: bulwarkd with pktgen guests in three tiers (web, app, db)
//! under a group policy applied through the API. Group rules match the peer vNIC's identity,
//! so forged addresses gain nothing; a re-tag moves a guest between groups with no rule
//! change and cuts what its new groups do not allow; an apply is all or nothing, refused on a
//! stale base revision, previewed by a dry run, kept across a restart with its history;
//! reach questions are answered from the compiled rules.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

const IP_WEB: [u8; 4] = [10, 0, 0, 1];
const IP_APP: [u8; 4] = [10, 0, 0, 2];
const IP_DB: [u8; 4] = [10, 0, 0, 3];
const IP_EVIL: [u8; 4] = [10, 0, 0, 4];

fn three_tier() -> Value {
    json!({
        "services": [
            { "name": "http-alt", "proto": "tcp", "ports": [8080] },
            { "name": "pg", "proto": "tcp", "ports": 5432 },
        ],
        "groups": [
            { "name": "web", "select": { "tag": "tier", "eq": "web" } },
            { "name": "app", "select": { "tag": "tier", "eq": "app" } },
            { "name": "db", "select": { "tag": "tier", "eq": "db" } },
        ],
        "policies": [{
            "name": "three-tier",
            "tier": "application",
            "rules": [
                { "name": "web-to-app", "src": "web", "dst": "app", "services": "http-alt", "action": "allow" },
                { "name": "app-to-db", "src": "app", "dst": "db", "services": "pg", "action": "allow" },
            ],
        }],
    })
}

fn apply(sw: &Bulwarkd, doc: &Value, query: &str) -> (u16, Value) {
    sw.api("PUT", &format!("/v1/policy{query}"), Some(&doc.to_string()))
}

fn syn(src: ([u8; 6], [u8; 4]), dst: ([u8; 6], [u8; 4]), sport: u16, dport: u16) -> Vec<u8> {
    tcp(
        (src.0, src.1, sport),
        (dst.0, dst.1, dport),
        1000,
        0,
        "S",
        b"",
    )
}

fn revision(sw: &Bulwarkd) -> u64 {
    sw.api("GET", "/v1/policy", None).1["revision"]
        .as_u64()
        .unwrap()
}

#[test]
fn three_tiers_under_a_group_policy() {
    let mut sw = Bulwarkd::start_extra(
        &[
            ("web", 10, "server", "tags = { tier = \"web\" }"),
            ("app", 10, "server", "tags = { tier = \"app\" }"),
            ("db", 10, "server", "tags = { tier = \"db\" }"),
            ("evil", 10, "server", ""),
        ],
        &[worker_cpu()],
    );
    let (mw, ma, md, me) = (mac(1), mac(2), mac(3), mac(4));
    let mut web = sw.attach("web", mw);
    let mut app = sw.attach("app", ma);
    let mut db = sw.attach("db", md);
    let mut evil = sw.attach("evil", me);
    // Each guest announces itself (a broadcast, flooded to the other three).
    for (d, m) in [
        (&mut web, mw),
        (&mut app, ma),
        (&mut db, md),
        (&mut evil, me),
    ] {
        send_all(d, &[frame([0xff; 6], m, 1)]);
    }
    for d in [&mut web, &mut app, &mut db, &mut evil] {
        assert_eq!(recv_n(d, 3, LONG).len(), 3);
    }
    assert_eq!(revision(&sw), 0);
    assert_eq!(sw.port("web")["tags"], json!({"tier": "web"}));

    // A dry run changes nothing and says what would change.
    let (status, v) = apply(&sw, &three_tier(), "?dry_run=true");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["revision"], 1);
    assert_eq!(revision(&sw), 0);
    let web_change = v["vnics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["port"] == "web")
        .unwrap()
        .clone();
    assert_eq!(
        web_change["added"],
        json!(["egress application/three-tier/web-to-app"]),
        "{v}"
    );
    // Before the apply nothing is filtered: db takes anything.
    let f = syn((mw, IP_WEB), (md, IP_DB), 40000, 5432);
    assert_eq!(exchange(&mut web, &mut db, &f, LONG), vec![f.clone()]);

    let mut first = three_tier();
    first["base_revision"] = json!(0);
    let (status, v) = apply(&sw, &first, "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revision"], 1);
    assert_eq!(revision(&sw), 1);
    // web and app and db got their rules; evil is in no group: no rule, only the default.
    let counts: Vec<(String, u64, u64)> = v["vnics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["port"].as_str().unwrap().to_string(),
                x["egress_rules"].as_u64().unwrap(),
                x["ingress_rules"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("app".to_string(), 1, 1),
            ("db".to_string(), 0, 1),
            ("evil".to_string(), 0, 0),
            ("web".to_string(), 1, 0)
        ]
    );

    // web reaches app on 8080; app reaches db on 5432; the replies flow.
    let f = syn((mw, IP_WEB), (ma, IP_APP), 40001, 8080);
    assert_eq!(exchange(&mut web, &mut app, &f, LONG), vec![f.clone()]);
    let r = tcp(
        (ma, IP_APP, 8080),
        (mw, IP_WEB, 40001),
        5000,
        1001,
        "SA",
        b"",
    );
    assert_eq!(exchange(&mut app, &mut web, &r, LONG), vec![r.clone()]);
    let f = syn((ma, IP_APP), (md, IP_DB), 40002, 5432);
    assert_eq!(exchange(&mut app, &mut db, &f, LONG), vec![f.clone()]);
    // web never reaches db, not even on db's port; app is not reached on another port.
    let f = syn((mw, IP_WEB), (md, IP_DB), 40003, 5432);
    assert!(exchange(&mut web, &mut db, &f, SHORT).is_empty());
    assert_eq!(sw.drops("web", "policy_drop_egress"), 1);
    let f = syn((mw, IP_WEB), (ma, IP_APP), 40004, 8081);
    assert!(exchange(&mut web, &mut app, &f, SHORT).is_empty());
    // app never opens a connection to web (the rule has a direction).
    let f = syn((ma, IP_APP), (mw, IP_WEB), 40005, 8080);
    assert!(exchange(&mut app, &mut web, &f, SHORT).is_empty());

    // Forged addresses gain nothing: web claiming app's source address is still web to db,
    // and evil claiming web's address is still nobody to app.
    let f = syn((mw, IP_APP), (md, IP_DB), 40006, 5432);
    assert!(exchange(&mut web, &mut db, &f, SHORT).is_empty());
    let f = syn((me, IP_WEB), (ma, IP_APP), 40007, 8080);
    assert!(exchange(&mut evil, &mut app, &f, SHORT).is_empty());
    assert!(sw.drops("evil", "policy_drop_egress") >= 1);
    let f = syn((me, IP_EVIL), (md, IP_DB), 40008, 5432);
    assert!(exchange(&mut evil, &mut db, &f, SHORT).is_empty());

    // The operator's view: groups with members, effective rules with names, reach answers.
    let (_, g) = sw.api("GET", "/v1/groups", None);
    let members: Vec<(Value, Value)> = g
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["name"].clone(), x["vnics"].clone()))
        .collect();
    assert_eq!(
        members,
        [
            (json!("web"), json!(["web"])),
            (json!("app"), json!(["app"])),
            (json!("db"), json!(["db"]))
        ]
    );
    let (_, p) = sw.api("GET", "/v1/ports/app/policy", None);
    assert_eq!(p["groups"], json!(["app"]), "{p}");
    assert_eq!(
        p["rules"]["ingress"][0]["name"], "application/three-tier/web-to-app",
        "{p}"
    );
    assert_eq!(
        p["rules"]["ingress"][0]["matches"], "from group web, tcp, dport 8080",
        "{p}"
    );
    assert_eq!(p["rules"]["ingress"][0]["connections"], 1, "{p}");
    let reach = |from: &str, to: &str, proto: &str, port: u16| {
        let (s, v) = sw.api(
            "POST",
            "/v1/reach",
            Some(&json!({"from": from, "to": to, "proto": proto, "port": port}).to_string()),
        );
        assert_eq!(s, 200, "{v}");
        v
    };
    let v = reach("web", "app", "tcp", 8080);
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(v["egress"]["rule"], "application/three-tier/web-to-app");
    assert_eq!(v["ingress"]["rule"], "application/three-tier/web-to-app");
    let v = reach("web", "db", "tcp", 5432);
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(v["egress"]["action"], "drop");
    assert!(
        v["egress"].get("rule").is_none(),
        "the default decided: {v}"
    );
    let (s, v) = sw.api(
        "POST",
        "/v1/reach",
        Some(r#"{"from": "web", "to": "nope", "proto": "tcp"}"#),
    );
    assert_eq!((s, v["field"].clone()), (400, json!("to")), "{v}");
    let (s, v) = sw.api(
        "POST",
        "/v1/reach",
        Some(r#"{"from": "web", "to": "app", "proto": "tcp", "src_ip": "10.0.0.1", "dst_ip": "fd00::2"}"#),
    );
    assert_eq!((s, v["field"].clone()), (400, json!("dst_ip")), "{v}");
    let (s, v) = sw.api(
        "POST",
        "/v1/reach",
        Some(r#"{"from": "web", "to": "app", "proto": "icmp"}"#),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tuple"], "icmp 0.0.0.0 -> 0.0.0.0 type 8", "{v}");
    assert_eq!(v["allowed"], false, "no rule allows ping: {v}");

    // Re-tag app as db: with no rule change, web loses it (its open connection is cut on
    // its next packet) and app's former peer db is now a peer group of the same tier.
    let (s, v) = sw.api(
        "PUT",
        "/v1/ports/app/tags",
        Some(r#"{"tags": {"tier": "db"}}"#),
    );
    assert_eq!(s, 200, "{v}");
    let data = tcp(
        (mw, IP_WEB, 40001),
        (ma, IP_APP, 8080),
        1001,
        5001,
        "A",
        b"hi",
    );
    assert!(exchange(&mut web, &mut app, &data, SHORT).is_empty());
    assert!(
        sw.drops("web", "policy_revoked_egress") + sw.drops("app", "policy_revoked_ingress") >= 1,
        "{}",
        sw.port("web")
    );
    let f = syn((mw, IP_WEB), (ma, IP_APP), 40009, 8080);
    assert!(exchange(&mut web, &mut app, &f, SHORT).is_empty());
    assert_eq!(revision(&sw), 1, "a re-tag is not a new revision");
    // Back: the access comes back, without a new rule.
    let (s, _) = sw.api(
        "PUT",
        "/v1/ports/app/tags",
        Some(r#"{"tags": {"tier": "app"}}"#),
    );
    assert_eq!(s, 200);
    let f = syn((mw, IP_WEB), (ma, IP_APP), 40010, 8080);
    assert_eq!(exchange(&mut web, &mut app, &f, LONG), vec![f.clone()]);

    // A stale base revision is refused and nothing changes.
    let mut stale = three_tier();
    stale["base_revision"] = json!(0);
    stale["policies"][0]["rules"][0]["action"] = json!("drop");
    let (s, v) = apply(&sw, &stale, "");
    assert_eq!(
        (s, v["field"].clone()),
        (409, json!("base_revision")),
        "{v}"
    );
    // Bad documents: refused naming the field, the running policy untouched.
    for (doc, field) in [
        (
            json!({"groups": [{"name": "g", "select": {"tag": "x"}}]}),
            "groups[0].select",
        ),
        (
            json!({"policies": [{"name": "p", "tier": "application", "rules": [
            {"name": "r", "src": "nope", "action": "allow"}]}]}),
            "policies[0].rules[0].src[0]",
        ),
        (
            json!({"policies": [{"name": "p", "tier": "galactic"}]}),
            "policies[0].tier",
        ),
        (
            json!({"groups": [{"name": "g", "tenant": "green", "vnics": ["web"]}]}),
            "groups[0].vnics[0]",
        ),
        (json!({"servics": []}), "servics"),
    ] {
        let (s, v) = apply(&sw, &doc, "");
        assert_eq!((s, v["field"].clone()), (400, json!(field)), "{doc}: {v}");
    }
    assert_eq!(revision(&sw), 1);
    let f = syn((mw, IP_WEB), (ma, IP_APP), 40011, 8080);
    assert_eq!(exchange(&mut web, &mut app, &f, LONG), vec![f.clone()]);

    // A dry run of a change that cuts web-to-app reports the connections it would cut.
    let mut cut = three_tier();
    cut["policies"][0]["rules"][0]["action"] = json!("drop");
    let (_, v) = apply(&sw, &cut, "?dry_run=true");
    let web_change = v["vnics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["port"] == "web")
        .unwrap();
    assert!(web_change["conns_cut"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(revision(&sw), 1);

    // Restart: the revision, its history and the rules come back before any port.
    sw.restart();
    assert_eq!(revision(&sw), 1);
    let (_, h) = sw.api("GET", "/v1/policy/history", None);
    assert_eq!(h[0]["revision"], 1, "{h}");
    assert_eq!(h[0]["base"], 0, "{h}");
    assert!(
        h[0]["changes"]
            .as_array()
            .unwrap()
            .contains(&json!("+policy three-tier")),
        "{h}"
    );
    let v = {
        let (_, p) = sw.api("GET", "/v1/ports/db/policy", None);
        p
    };
    assert_eq!(v["filtered"], true, "{v}");
    assert_eq!(
        v["rules"]["ingress"][0]["name"],
        "application/three-tier/app-to-db"
    );

    // Removing an application takes its objects; a document with an owner shows it.
    let mut owned = three_tier();
    owned["base_revision"] = json!(1);
    owned["services"][1]["app"] = json!("billing");
    owned["policies"][0]["rules"][1]["services"] = json!("http-alt");
    owned["policies"].as_array_mut().unwrap().push(json!({
        "name": "billing", "tier": "application", "app": "billing",
        "rules": [{ "name": "db", "src": "app", "dst": "db", "services": "pg", "action": "allow" }],
    }));
    let (s, v) = apply(&sw, &owned, "");
    assert_eq!(s, 200, "{v}");
    let (s, v) = sw.api("DELETE", "/v1/policy/apps/billing", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(revision(&sw), 3);
    let (_, d) = sw.api("GET", "/v1/policy", None);
    assert_eq!(
        d["document"]["services"].as_array().unwrap().len(),
        1,
        "{d}"
    );
    assert_eq!(
        d["document"]["policies"].as_array().unwrap().len(),
        1,
        "{d}"
    );
    let (s, v) = sw.api("DELETE", "/v1/policy/apps/billing", None);
    assert_eq!(s, 404, "{v}");
}

/// Fail closed: once a document is applied, a vNIC added later is filtered from its first
/// frame (its default action when no rule is in its scope), and the exclusion list is the
/// only way to leave a vNIC unfiltered.
#[test]
fn a_new_vnic_is_filtered_from_its_first_frame() {
    let sw = Bulwarkd::start_extra(
        &[("a", 10, "server", "tags = { tier = \"web\" }")],
        &[worker_cpu()],
    );
    let mut doc = three_tier();
    doc["exclude"] = json!(["free"]);
    let (s, v) = apply(&sw, &doc, "");
    assert_eq!(s, 200, "{v}");
    for name in ["b", "free"] {
        let (s, v) = sw.api(
            "POST",
            "/v1/ports",
            Some(
                &json!({"name": name, "socket": path_str(&sw.sock(name)), "segment": 10,
                         "mode": "server"})
                .to_string(),
            ),
        );
        assert_eq!(s, 201, "{v}");
    }
    let (_, p) = sw.api("GET", "/v1/ports/b/policy", None);
    assert_eq!(p["filtered"], true, "{p}");
    assert_eq!(p["ingress_default"], "drop", "{p}");
    let (_, p) = sw.api("GET", "/v1/ports/free/policy", None);
    assert_eq!(p["filtered"], false, "{p}");
    let (ma, mb, mf) = (mac(1), mac(2), mac(3));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    let mut free = sw.attach("free", mf);
    learn(&mut a, &mut b, ma, mb);
    recv_n(&mut free, 4, SHORT);
    send_all(&mut free, &[frame([0xff; 6], mf, 1)]);
    recv_n(&mut a, 4, SHORT);
    recv_n(&mut b, 4, SHORT);
    let f = syn((ma, IP_WEB), (mb, IP_APP), 40000, 8080);
    assert!(exchange(&mut a, &mut b, &f, SHORT).is_empty());
    // The excluded vNIC is not filtered, but its peer is: a's egress still decides.
    let f = syn((mf, IP_DB), (mb, IP_APP), 40001, 80);
    assert!(exchange(&mut free, &mut b, &f, SHORT).is_empty());
    assert!(sw.drops("b", "policy_drop_ingress") >= 1);
    // A port of another tenant cannot join a segment: its traffic would mix with theirs.
    let (s, v) = sw.api(
        "POST",
        "/v1/ports",
        Some(
            &json!({"name": "other", "socket": path_str(&sw.sock("other")), "segment": 10,
                     "tenant": "green", "mode": "server"})
            .to_string(),
        ),
    );
    assert_eq!((s, v["field"].clone()), (409, json!("tenant")), "{v}");
}

/// A config file's `policy_file` is applied at the first start; after that the run
/// directory's revisions are kept (an apply through the API survives a restart).
#[test]
fn the_config_file_names_the_first_policy() {
    let doc = std::env::temp_dir().join(format!("bulwark-policy-{}.yaml", std::process::id()));
    std::fs::write(
        &doc,
        "groups:\n  - { name: web, select: { tag: tier, eq: web } }\n\
         policies:\n  - name: p\n    tier: application\n    rules:\n      \
         - { name: r, src: web, dst: any, action: allow }\n",
    )
    .unwrap();
    let mut sw = Bulwarkd::start_top(
        &format!("policy_file = \"{}\"", doc.display()),
        &[("a", 10, "server", "tags = { tier = \"web\" }")],
        &[worker_cpu()],
        &[],
    );
    let _ = std::fs::remove_file(&doc);
    assert_eq!(revision(&sw), 1);
    let (_, p) = sw.api("GET", "/v1/ports/a/policy", None);
    assert_eq!(p["rules"]["egress"][0]["name"], "application/p/r", "{p}");
    let mut next = three_tier();
    next["base_revision"] = json!(1);
    let (s, v) = apply(&sw, &next, "");
    assert_eq!(s, 200, "{v}");
    // The file is gone and revision 2 is in the run directory: a restart keeps revision 2.
    sw.restart();
    assert_eq!(revision(&sw), 2);
    assert!(
        sw.log()
            .contains("policy revision 2 of the run directory kept"),
        "{}",
        sw.log()
    );
}

/// Two tenants on their own segments use the same addresses: each tenant's policy decides for
/// its own vNICs only, their connections are two entries (one per zone), and a forged frame of
/// one tenant never touches the other's connection.
#[test]
fn tenants_reuse_addresses_without_mixing() {
    let sw = Bulwarkd::start_extra(
        &[
            (
                "a1",
                10,
                "server",
                "tenant = \"shop\"\ntags = { tier = \"web\" }",
            ),
            (
                "a2",
                10,
                "server",
                "tenant = \"shop\"\ntags = { tier = \"app\" }",
            ),
            (
                "b1",
                20,
                "server",
                "tenant = \"bank\"\ntags = { tier = \"web\" }",
            ),
            (
                "b2",
                20,
                "server",
                "tenant = \"bank\"\ntags = { tier = \"app\" }",
            ),
        ],
        &[worker_cpu()],
    );
    // Each tenant's own groups and policy: the shop lets web reach app on 8080, the bank on
    // 9090 only. Same tags, same addresses, different answers.
    let doc = json!({
        "services": [
            { "name": "shop-port", "proto": "tcp", "ports": 8080 },
            { "name": "bank-port", "proto": "tcp", "ports": 9090 },
        ],
        "groups": [
            { "name": "shop-web", "tenant": "shop", "select": { "tag": "tier", "eq": "web" } },
            { "name": "shop-app", "tenant": "shop", "select": { "tag": "tier", "eq": "app" } },
            { "name": "bank-web", "tenant": "bank", "select": { "tag": "tier", "eq": "web" } },
            { "name": "bank-app", "tenant": "bank", "select": { "tag": "tier", "eq": "app" } },
        ],
        "policies": [
            { "name": "shop", "tier": "application", "tenant": "shop", "rules": [
                { "name": "in", "src": "shop-web", "dst": "shop-app", "services": "shop-port", "action": "allow" } ] },
            { "name": "bank", "tier": "application", "tenant": "bank", "rules": [
                { "name": "in", "src": "bank-web", "dst": "bank-app", "services": "bank-port", "action": "allow" } ] },
        ],
    });
    let (s, v) = apply(&sw, &doc, "");
    assert_eq!(s, 200, "{v}");
    let (_, g) = sw.api("GET", "/v1/groups", None);
    let members: Vec<Value> = g
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["vnics"].clone())
        .collect();
    assert_eq!(
        members,
        [json!(["a1"]), json!(["a2"]), json!(["b1"]), json!(["b2"])]
    );
    // A tenant's policy may not name the other tenant's group.
    let mut bad = doc.clone();
    bad["policies"][0]["rules"][0]["dst"] = json!("bank-app");
    let (s, v) = apply(&sw, &bad, "");
    assert_eq!(
        (s, v["field"].clone()),
        (400, json!("policies[0].rules[0].dst[0]")),
        "{v}"
    );

    let (m1, m2) = (mac(1), mac(2));
    let mut a1 = sw.attach("a1", m1);
    let mut a2 = sw.attach("a2", m2);
    let mut b1 = sw.attach("b1", m1);
    let mut b2 = sw.attach("b2", m2);
    learn(&mut a1, &mut a2, m1, m2);
    learn(&mut b1, &mut b2, m1, m2);
    // The same addresses, ports and MACs in both tenants.
    let shop = syn((m1, IP_WEB), (m2, IP_APP), 40000, 8080);
    assert_eq!(exchange(&mut a1, &mut a2, &shop, LONG), vec![shop.clone()]);
    assert!(
        recv_n(&mut b2, 1, SHORT).is_empty(),
        "nothing crosses into the bank"
    );
    assert!(
        exchange(&mut b1, &mut b2, &shop, SHORT).is_empty(),
        "8080 is the shop's rule"
    );
    let bank = syn((m1, IP_WEB), (m2, IP_APP), 40000, 9090);
    assert_eq!(exchange(&mut b1, &mut b2, &bank, LONG), vec![bank.clone()]);
    assert!(
        exchange(&mut a1, &mut a2, &bank, SHORT).is_empty(),
        "9090 is the bank's rule"
    );
    // Two connections with equal addresses, one per tenant's zone (segment).
    let (_, conns) = sw.api("GET", "/v1/conns", None);
    let zones: Vec<(u64, String)> = conns
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["zone"].as_u64().unwrap(),
                c["owner"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(zones.contains(&(10, "a1".into())), "{conns}");
    assert!(zones.contains(&(20, "b1".into())), "{conns}");
    // The shop's established connection answers; a reset forged in the bank with the shop's
    // addresses and ports does not touch it.
    let rst = tcp(
        (m2, IP_APP, 8080),
        (m1, IP_WEB, 40000),
        5000,
        1001,
        "R",
        b"",
    );
    send_all(&mut b2, &[rst]);
    recv_n(&mut b1, 1, SHORT);
    let synack = tcp(
        (m2, IP_APP, 8080),
        (m1, IP_WEB, 40000),
        5000,
        1001,
        "SA",
        b"",
    );
    assert_eq!(
        exchange(&mut a2, &mut a1, &synack, LONG),
        vec![synack.clone()]
    );
}

/// A document with fewer groups than the running one applies (the fuzz target `api` found the
/// compiler indexing the old classes' group slots out of the new document's bounds: a 500).
#[test]
fn a_document_with_fewer_groups_applies() {
    let sw = Bulwarkd::start_extra(
        &[
            ("a", 10, "server", "tags = { tier = \"web\" }\n"),
            ("b", 10, "server", "tags = { tier = \"db\" }\n"),
        ],
        &[worker_cpu()],
    );
    let two = json!({
        "groups": [
            {"name": "web", "select": {"tag": "tier", "eq": "web"}},
            {"name": "db", "select": {"tag": "tier", "eq": "db"}},
        ],
        "policies": [{"name": "p", "tier": "application",
            "rules": [{"name": "r", "src": "web", "dst": "db", "action": "allow"}]}],
    });
    let (s, v) = apply(&sw, &two, "");
    assert_eq!(s, 200, "{v}");
    for doc in [
        json!({}),
        json!({"groups": [{"name": "web", "select": {"tag": "tier", "eq": "web"}}]}),
        two,
    ] {
        let (s, v) = apply(&sw, &doc, "");
        assert_eq!(s, 200, "{doc}: {v}");
    }
    assert_eq!(revision(&sw), 4);
}
