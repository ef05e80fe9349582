//! The policy document and its compiler, without a running switch: selectors, group
//! resolution, tier order with `pass`, applied-to scoping, tenants, shared rulesets, and
//! documents that must be refused with the field named.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use control::compiler::{Compiler, Level, VnicIn};
use control::document::{Document, Format, VnicAttrs};
use control::policy::PolicyConfig;
use dataplane::ruleset::{Action, Tuple};

/// A vNIC of the tests' inventory.
struct V {
    name: &'static str,
    tenant: &'static str,
    segment: u16,
    tags: BTreeMap<String, String>,
    own: Option<PolicyConfig>,
}

fn v(name: &'static str, tags: &[(&str, &str)]) -> V {
    V {
        name,
        tenant: "default",
        segment: 10,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        own: None,
    }
}

impl V {
    fn input(&self) -> VnicIn<'_> {
        VnicIn {
            attrs: VnicAttrs {
                name: self.name,
                segment: self.segment,
                tenant: self.tenant,
                host: "h1",
                tags: &self.tags,
            },
            own: self.own.as_ref(),
        }
    }
}

fn yaml(text: &str) -> Document {
    Document::parse(text, Format::Yaml).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn compiler(text: &str) -> Compiler {
    Compiler::new(Arc::new(yaml(text))).unwrap_or_else(|e| panic!("{e}"))
}

fn tcp(dport: u16) -> Tuple {
    Tuple {
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        proto: 6,
        sport: 40000,
        dport,
        icmp_type: 0,
        icmp_code: 0,
    }
}

fn with_addrs(mut t: Tuple, src: &str, dst: &str) -> Tuple {
    t.src = src.parse::<IpAddr>().unwrap();
    t.dst = dst.parse::<IpAddr>().unwrap();
    t
}

/// What the switch decides for a new connection from `a` to `b` on `t`: `a`'s egress with
/// `b`'s groups as the peer, then `b`'s ingress with `a`'s groups, as `filter::judge` does.
fn reach(c: &mut Compiler, a: &V, b: &V, t: &Tuple) -> (Action, Action) {
    let (pa, pb) = (
        c.vnic(&a.input(), "a.").unwrap().policy,
        c.vnic(&b.input(), "b.").unwrap().policy,
    );
    (
        pa.egress.lookup_peer(t, &pb.groups).action,
        pb.ingress.lookup_peer(t, &pa.groups).action,
    )
}

const THREE_TIER: &str = r#"
services:
  - { name: http-alt, proto: tcp, ports: [8080] }
  - { name: pg, proto: tcp, ports: 5432 }
groups:
  - { name: web, select: { tag: tier, eq: web } }
  - { name: app, select: { tag: tier, eq: app } }
  - { name: db, select: { tag: tier, eq: db } }
policies:
  - name: three-tier
    tier: application
    rules:
      - { name: web-to-app, src: web, dst: app, services: http-alt, action: allow }
      - { name: app-to-db, src: app, dst: db, services: [pg], action: allow }
"#;

#[test]
fn three_tiers_by_group() {
    let mut c = compiler(THREE_TIER);
    let (web, app, db) = (
        v("web1", &[("tier", "web")]),
        v("app1", &[("tier", "app")]),
        v("db1", &[("tier", "db")]),
    );
    let allow = (Action::Allow, Action::Allow);
    assert_eq!(reach(&mut c, &web, &app, &tcp(8080)), allow);
    assert_eq!(reach(&mut c, &app, &db, &tcp(5432)), allow);
    // Not the allowed port; not the allowed pair; not the reverse direction.
    assert_ne!(reach(&mut c, &web, &app, &tcp(8081)), allow);
    assert_eq!(reach(&mut c, &web, &db, &tcp(5432)).0, Action::Drop);
    assert_eq!(reach(&mut c, &web, &db, &tcp(5432)).1, Action::Drop);
    assert_ne!(reach(&mut c, &app, &web, &tcp(8080)), allow);
    // Addresses play no part: any source and destination address gets the same answer.
    let t = with_addrs(tcp(8080), "192.0.2.77", "198.51.100.3");
    assert_eq!(reach(&mut c, &web, &app, &t), allow);
    // A re-tagged vNIC moves between groups; the rules stay the same objects.
    let before = c.vnic(&web.input(), "").unwrap();
    let moved = v("web1", &[("tier", "db")]);
    assert_eq!(reach(&mut c, &app, &moved, &tcp(5432)), allow);
    assert_eq!(reach(&mut c, &moved, &app, &tcp(8080)).0, Action::Drop);
    let back = c.vnic(&web.input(), "").unwrap();
    assert!(Arc::ptr_eq(&before.policy.egress, &back.policy.egress));
    assert_eq!(back.compiled, 0, "its class was compiled already");
}

#[test]
fn vnics_with_the_same_groups_share_rulesets() {
    let mut c = compiler(THREE_TIER);
    let a = c.vnic(&v("web1", &[("tier", "web")]).input(), "").unwrap();
    let b = c.vnic(&v("web2", &[("tier", "web")]).input(), "").unwrap();
    assert!(Arc::ptr_eq(&a.policy.egress, &b.policy.egress));
    assert!(Arc::ptr_eq(&a.policy.ingress, &b.policy.ingress));
    assert_eq!(a.compiled, 2);
    assert_eq!(b.compiled, 0);
    // Only the rules in scope: web carries web-to-app (egress) and nothing of app-to-db.
    assert_eq!(a.names.egress.len(), 1);
    assert_eq!(&*a.names.egress[0].rule, "web-to-app");
    assert!(a.names.ingress.is_empty());
    // A new document that changes only app-to-db leaves web's rulesets as they were.
    let d = c.vnic(&v("db1", &[("tier", "db")]).input(), "").unwrap();
    let cache = c.into_cache();
    let mut c2 = Compiler::new(Arc::new(yaml(
        &THREE_TIER.replace("ports: 5432", "ports: 5433"),
    )))
    .unwrap();
    c2.put_cache(cache);
    let a2 = c2.vnic(&v("web1", &[("tier", "web")]).input(), "").unwrap();
    assert!(Arc::ptr_eq(&a.policy.egress, &a2.policy.egress));
    assert_eq!(a2.compiled, 0);
    let d2 = c2.vnic(&v("db1", &[("tier", "db")]).input(), "").unwrap();
    assert_eq!(d2.compiled, 1, "db's ingress changed, its egress did not");
    assert!(Arc::ptr_eq(&d.policy.egress, &d2.policy.egress));
}

#[test]
fn selectors() {
    let c = compiler(
        r#"
groups:
  - { name: prod-web, select: { and: [ { tag: tier, eq: web }, { tag: env, eq: prod } ] } }
  - { name: web-or-app, select: { or: [ { tag: tier, eq: web }, { tag: tier, eq: app } ] } }
  - { name: not-linux, select: { not: { tag: os, eq: linux } } }
  - { name: some, select: { tag: tier, in: [db, cache] } }
  - { name: by-name, select: { attr: name, eq: vm7 } }
  - { name: seg, select: { attr: segment, in: ["10", "30"] } }
  - { name: tenant, select: { attr: tenant, eq: shop } }
  - { name: host, select: { attr: host, eq: h1 } }
"#,
    );
    let names = |x: &V| -> Vec<String> {
        c.slots(&x.input().attrs)
            .iter()
            .map(|&s| c.group_name(s).unwrap().to_string())
            .collect()
    };
    let mut a = v("vm7", &[("tier", "web"), ("env", "prod"), ("os", "linux")]);
    assert_eq!(
        names(&a),
        ["prod-web", "web-or-app", "by-name", "seg", "host"]
    );
    a.tags.insert("env".into(), "dev".into());
    a.tags.remove("os");
    a.segment = 20;
    a.tenant = "shop";
    assert_eq!(
        names(&a),
        ["web-or-app", "not-linux", "by-name", "tenant", "host"]
    );
    let b = v("vm8", &[("tier", "cache")]);
    // A vNIC without the tag matches neither eq nor in; `not` of that does match.
    assert_eq!(names(&b), ["not-linux", "some", "seg", "host"]);
}

#[test]
fn groups_resolve_static_nested_and_tenant_members() {
    let c = compiler(
        r#"
groups:
  - { name: a, vnics: [vm1] }
  - { name: b, select: { tag: role, eq: b } }
  - { name: ab, groups: [a, b] }
  - { name: all, groups: [ab], vnics: [vm9] }
  - { name: shop-only, tenant: shop, vnics: [vm1, vm2], select: { tag: role, eq: b } }
"#,
    );
    let names = |x: &V| -> Vec<&str> {
        c.slots(&x.input().attrs)
            .iter()
            .map(|&s| c.group_name(s).unwrap())
            .collect()
    };
    assert_eq!(names(&v("vm1", &[])), ["a", "ab", "all"]);
    assert_eq!(names(&v("vm3", &[("role", "b")])), ["b", "ab", "all"]);
    assert_eq!(names(&v("vm9", &[])), ["all"]);
    // A tenant's group never holds another tenant's vNIC, whatever it names or selects.
    let mut s = v("vm2", &[("role", "b")]);
    s.tenant = "shop";
    assert_eq!(names(&s), ["b", "ab", "all", "shop-only"]);
    let mut other = v("vm2", &[("role", "b")]);
    other.tenant = "bank";
    assert_eq!(names(&other), ["b", "ab", "all"]);
}

#[test]
fn tiers_decide_in_order_and_pass_skips_to_the_next() {
    let doc = r#"
services:
  - { name: ssh, proto: tcp, ports: 22 }
  - { name: web, proto: tcp, ports: [80, 443] }
groups:
  - { name: all, select: { tag: managed, eq: "yes" } }
  - { name: quarantine, select: { tag: state, eq: quarantine } }
  - { name: admin, vnics: [admin] }
policies:
  - name: tenant-open
    tier: application
    applied_to: [all]
    rules:
      - { name: open, src: all, dst: all, action: allow }
  - name: incident
    tier: emergency
    rules:
      - { name: isolate-out, src: quarantine, dst: any, action: drop }
      - { name: isolate-in, src: any, dst: quarantine, action: drop }
  - name: ops
    tier: infrastructure
    priority: 10
    applied_to: [all]
    rules:
      - { name: admin-ssh, src: admin, dst: all, services: ssh, action: allow }
      - { name: no-ssh, src: any, dst: all, services: ssh, action: drop }
      - { name: web-to-app-tier, src: all, dst: all, services: web, action: pass }
      - { name: rest, src: all, dst: all, action: reject }
"#;
    let mut c = compiler(doc);
    let (a, b) = (v("a", &[("managed", "yes")]), v("b", &[("managed", "yes")]));
    let admin = v("admin", &[("managed", "yes")]);
    // infrastructure decides ssh before the application tier's allow.
    assert_eq!(reach(&mut c, &a, &b, &tcp(22)).1, Action::Drop);
    assert_eq!(
        reach(&mut c, &admin, &b, &tcp(22)),
        (Action::Allow, Action::Allow)
    );
    // pass: the application tier decides web traffic (allow), reject everything else.
    assert_eq!(
        reach(&mut c, &a, &b, &tcp(443)),
        (Action::Allow, Action::Allow)
    );
    assert_eq!(reach(&mut c, &a, &b, &tcp(8080)).0, Action::Reject);
    // emergency beats everything, including admin ssh.
    let q = v("b", &[("managed", "yes"), ("state", "quarantine")]);
    assert_eq!(reach(&mut c, &admin, &q, &tcp(22)).1, Action::Drop);
    assert_eq!(reach(&mut c, &q, &a, &tcp(443)).0, Action::Drop);
    // The names come in the order of decision.
    let n = c.vnic(&a.input(), "").unwrap();
    let levels: Vec<Level> = n.names.ingress.iter().map(|r| r.level).collect();
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{levels:?}");
    // A document without pass compiles to one data-plane tier; with pass, to two here.
    assert_eq!(n.policy.ingress.tiers(), 2);
    let mut c1 = compiler(THREE_TIER);
    assert_eq!(
        c1.vnic(&v("x", &[("tier", "app")]).input(), "")
            .unwrap()
            .policy
            .ingress
            .tiers(),
        1
    );
}

#[test]
fn priorities_and_names_order_policies_within_a_tier() {
    let doc = r#"
groups:
  - { name: g, vnics: [a, b] }
policies:
  - { name: zz, tier: application, priority: 5, rules: [ { name: r, src: g, dst: g, action: allow } ] }
  - { name: aa, tier: application, priority: 5, rules: [ { name: r, src: g, dst: g, action: reject } ] }
  - { name: late, tier: application, priority: 4000000000, rules: [ { name: r, src: g, dst: g, action: drop } ] }
"#;
    let mut c = compiler(doc);
    // Same priority: by name, so "aa" (reject) decides before "zz" (allow).
    assert_eq!(
        reach(&mut c, &v("a", &[]), &v("b", &[]), &tcp(1)).0,
        Action::Reject
    );
    let n = c.vnic(&v("a", &[]).input(), "").unwrap();
    let order: Vec<&str> = n.names.egress.iter().map(|r| &*r.policy).collect();
    assert_eq!(order, ["aa", "zz", "late"]);
}

#[test]
fn applied_to_scopes_rules_and_others_get_the_default() {
    let doc = r#"
groups:
  - { name: web, select: { tag: tier, eq: web } }
  - { name: app, select: { tag: tier, eq: app } }
  - { name: mon, vnics: [mon1] }
defaults: { egress: allow, ingress: drop }
policies:
  - name: p
    tier: application
    rules:
      - { name: web-to-app, src: web, dst: app, action: allow }
      - { name: monitor, src: mon, dst: any, action: allow, applied_to: [mon] }
      - { name: from-net, src: "192.0.2.0/24", dst: app, action: allow }
"#;
    let mut c = compiler(doc);
    let other = v("db1", &[("tier", "db")]);
    let app = v("app1", &[("tier", "app")]);
    let mon = v("mon1", &[]);
    let o = c.vnic(&other.input(), "").unwrap();
    // A vNIC in no rule's scope carries no rule, only the defaults.
    assert!(o.names.egress.is_empty() && o.names.ingress.is_empty());
    assert_eq!(o.policy.egress.lookup(&tcp(1)).action, Action::Allow);
    assert_eq!(o.policy.ingress.lookup(&tcp(1)).action, Action::Drop);
    // "monitor" is applied to mon only: app's ingress does not carry it, so mon's traffic
    // passes mon's egress and meets app's default.
    assert_eq!(
        reach(&mut c, &mon, &app, &tcp(1)),
        (Action::Allow, Action::Drop)
    );
    // A CIDR source: app's ingress matches it by address (the far end is not a vNIC here).
    let a = c.vnic(&app.input(), "").unwrap();
    let t = with_addrs(tcp(1), "192.0.2.9", "10.0.0.2");
    assert_eq!(a.policy.ingress.lookup(&t).action, Action::Allow);
    let t = with_addrs(tcp(1), "192.0.3.9", "10.0.0.2");
    assert_eq!(a.policy.ingress.lookup(&t).action, Action::Drop);
}

#[test]
fn tenants_policies_stay_within_their_tenant() {
    let doc = r#"
groups:
  - { name: shop-web, tenant: shop, select: { tag: tier, eq: web } }
  - { name: bank-web, tenant: bank, select: { tag: tier, eq: web } }
  - { name: everyone, select: { tag: tier, eq: web } }
policies:
  - name: shop-open
    tier: application
    tenant: shop
    rules: [ { name: web, src: shop-web, dst: shop-web, action: allow } ]
  - name: provider-ping
    tier: infrastructure
    rules: [ { name: all, src: everyone, dst: everyone, action: allow } ]
"#;
    let mut c = compiler(doc);
    let mut s1 = v("s1", &[("tier", "web")]);
    s1.tenant = "shop";
    let mut s2 = v("s2", &[("tier", "web")]);
    s2.tenant = "shop";
    let mut b1 = v("b1", &[("tier", "web")]);
    b1.tenant = "bank";
    let n = c.vnic(&b1.input(), "").unwrap();
    // The bank's vNIC carries the provider's rule only, never the shop's.
    assert!(n.names.egress.iter().all(|r| &*r.policy == "provider-ping"));
    let s = c.vnic(&s1.input(), "").unwrap();
    assert_eq!(s.names.egress.len(), 2);
    assert_eq!(s.names.egress[1].level, Level::Tenant);
    assert_eq!(
        reach(&mut c, &s1, &s2, &tcp(1)),
        (Action::Allow, Action::Allow)
    );
}

#[test]
fn own_rules_are_the_last_tier_and_set_the_defaults() {
    let mut own: PolicyConfig = serde_json::from_str(
        r#"{"egress_default":"reject","ingress_default":"allow",
            "egress":[{"action":"allow","proto":"udp","dst_ports":53}]}"#,
    )
    .unwrap();
    let mut c = compiler(THREE_TIER);
    let mut web = v("web1", &[("tier", "web")]);
    web.own = Some(own.clone());
    let n = c.vnic(&web.input(), "ports[0].").unwrap();
    assert_eq!(n.names.egress.len(), 2);
    assert_eq!(n.names.egress[1].level, Level::Vnic);
    let mut dns = tcp(53);
    dns.proto = 17;
    assert_eq!(n.policy.egress.lookup(&dns).action, Action::Allow);
    assert_eq!(n.policy.egress.lookup(&tcp(1)).action, Action::Reject);
    assert_eq!(n.policy.ingress.lookup(&tcp(1)).action, Action::Allow);
    // A bad own rule is named under the vNIC's field path.
    own.egress[0].dst_ports =
        control::policy::OneOrMany::One(control::policy::StrOrNum::Num(70000));
    web.own = Some(own);
    let e = c.vnic(&web.input(), "ports[0].").unwrap_err();
    assert_eq!(e.field, "ports[0].policy.egress[0].dst_ports[0]");
}

#[test]
fn the_exclusion_list_is_not_filtered() {
    let mut c = compiler(&format!("{THREE_TIER}\nexclude: [web1]\n"));
    let n = c.vnic(&v("web1", &[("tier", "web")]).input(), "").unwrap();
    assert!(!n.policy.filtered);
    let n = c.vnic(&v("web2", &[("tier", "web")]).input(), "").unwrap();
    assert!(n.policy.filtered);
}

#[test]
fn ten_thousand_rules_on_one_vnic() {
    let mut doc = String::from("groups:\n  - { name: me, vnics: [big] }\n");
    for i in 0..100 {
        doc += &format!("  - {{ name: g{i}, select: {{ tag: app, eq: a{i} }} }}\n");
    }
    doc += "policies:\n  - name: big\n    tier: application\n    rules:\n";
    for i in 0..10_000 {
        doc += &format!(
            "      - {{ name: r{i}, src: me, dst: g{}, action: allow, services: s{} }}\n",
            i % 100,
            i % 100
        );
    }
    doc += "services:\n";
    for i in 0..100 {
        doc += &format!("  - {{ name: s{i}, proto: tcp, ports: [{}] }}\n", 1000 + i);
    }
    let mut c = compiler(&doc);
    let n = c.vnic(&v("big", &[]).input(), "").unwrap();
    assert_eq!(n.policy.egress.len(), 10_000);
    let peer = v("p", &[("app", "a7")]);
    let pp = c.vnic(&peer.input(), "").unwrap();
    assert_eq!(
        n.policy.egress.lookup_peer(&tcp(1007), &pp.slots).action,
        Action::Allow
    );
    assert_eq!(
        n.policy.egress.lookup_peer(&tcp(1008), &pp.slots).action,
        Action::Drop
    );
}

/// Bad documents: each error names the field, and says why.
#[test]
fn bad_documents_name_the_field() {
    let base = |extra: &str| format!("{THREE_TIER}{extra}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            THREE_TIER.replace("dst: app, services: http-alt", "dst: ap, services: http-alt"),
            "policies[0].rules[0].dst[0]",
            "no group named \"ap\"",
        ),
        (
            THREE_TIER.replace("services: http-alt", "services: htp"),
            "policies[0].rules[0].services[0]",
            "no service named",
        ),
        (
            THREE_TIER.replace("ports: [8080]", "ports: [80800]"),
            "services[0].ports[0]",
            "0-65535",
        ),
        (
            THREE_TIER.replace("proto: tcp, ports: 5432", "proto: icmp, ports: 5432"),
            "services[1].ports",
            "ports need proto tcp or udp",
        ),
        (
            THREE_TIER.replace("action: allow }\n      - { name: app-to-db", "action: permit }\n      - { name: app-to-db"),
            "policies[0].rules[0].action",
            "permit",
        ),
        (
            THREE_TIER.replace("tier: application", "tier: app"),
            "policies[0].tier",
            "app",
        ),
        (
            THREE_TIER.replace("name: app-to-db", "name: web-to-app"),
            "policies[0].rules[1].name",
            "a second rule",
        ),
        (
            THREE_TIER.replace("- { name: db,", "- { name: web,"),
            "groups[2].name",
            "a second group",
        ),
        (
            THREE_TIER.replace("{ tag: tier, eq: db }", "{ tag: tier, eq: db, in: [x] }"),
            "groups[2].select.in",
            "not both",
        ),
        (
            THREE_TIER.replace("{ tag: tier, eq: db }", "{ attr: colour, eq: db }"),
            "groups[2].select.attr",
            "colour",
        ),
        (
            THREE_TIER.replace("{ tag: tier, eq: db }", "{ and: [] }"),
            "groups[2].select.and",
            "empty",
        ),
        (
            THREE_TIER.replace("{ tag: tier, eq: db }", "{ tag: tier, eq: db, colour: 1 }"),
            "groups[2].select.colour",
            "unknown field `colour`",
        ),
        (
            THREE_TIER.replace("src: web, dst: app", "src: \"10.0.0.0/33\", dst: app"),
            "policies[0].rules[0].src[0]",
            "10.0.0.0/33",
        ),
        (
            base("  - name: lost\n    tier: application\n    rules: [ { name: r, src: \"10.0.0.0/8\", action: allow } ]\n"),
            "policies[1].rules[0].applied_to",
            "names no group",
        ),
        (
            base("  - name: t\n    tier: emergency\n    tenant: shop\n    rules: []\n"),
            "policies[1].tier",
            "application tier",
        ),
        (
            base("  - name: t\n    tier: application\n    tenant: shop\n    rules: [ { name: r, src: web, dst: app, action: allow } ]\n"),
            "policies[1].rules[0].src[0]",
            "provider's",
        ),
        (
            base("exclude: [\"bad name!\"]\n"),
            "exclude[0]",
            "a name is",
        ),
        (
            THREE_TIER.replace("name: three-tier", "name: three-tier\n    priority: -1"),
            "policies[0].priority",
            "",
        ),
    ];
    for (text, field, why) in cases {
        let e = Document::parse(&text, Format::Yaml)
            .and_then(|d| Compiler::new(Arc::new(d)).map(|_| ()))
            .expect_err(&text);
        assert_eq!(e.field, field, "{e}\n{text}");
        assert!(e.reason.contains(why), "{e}: wanted {why:?}");
    }
    // A cycle of groups is refused at the group that closes it.
    let cyc = "groups:\n  - { name: a, groups: [b] }\n  - { name: b, groups: [a] }\n";
    let e = Compiler::new(Arc::new(yaml(cyc))).unwrap_err();
    assert_eq!(e.field, "groups[1].groups[0]", "{e}");
    assert!(e.reason.contains("includes itself"), "{e}");
    // JSON errors are named the same way.
    let e = Document::parse(r#"{"policies":[{"name":"p","tier":"application","rules":[{"name":"r","action":"allow","src":7}]}]}"#, Format::Json).unwrap_err();
    assert_eq!(e.field, "policies[0].rules[0].src", "{e}");
    let e = Document::parse("{\"groups\": [", Format::Json).unwrap_err();
    assert!(!e.reason.is_empty());
}

#[test]
fn removing_an_application_takes_its_objects_and_leaves_nothing_dangling() {
    let doc = yaml(
        r#"
services:
  - { name: shop-http, proto: tcp, ports: 80, app: shop }
  - { name: ssh, proto: tcp, ports: 22 }
groups:
  - { name: shop-web, select: { tag: app, eq: shop }, app: shop }
  - { name: admins, vnics: [adm] }
policies:
  - { name: shop, tier: application, app: shop, rules: [ { name: in, src: any, dst: shop-web, services: shop-http, action: allow } ] }
  - { name: admin, tier: infrastructure, rules: [ { name: ssh, src: admins, dst: any, services: ssh, action: allow } ] }
"#,
    );
    let after = doc.without_app("shop").unwrap().expect("shop owns objects");
    assert_eq!(after.services.len(), 1);
    assert_eq!(after.groups.len(), 1);
    assert_eq!(after.policies.len(), 1);
    assert!(doc.without_app("nobody").unwrap().is_none());
    // An object that stays but refers to one that goes: refused, naming the referrer.
    let mut tangled = doc.clone();
    tangled.policies[1].rules[0].dst = control::policy::OneOrMany::One("shop-web".into());
    let e = tangled.without_app("shop").unwrap_err();
    assert_eq!(e.field, "policies[0].rules[0].dst[0]", "{e}");
    assert!(e.reason.contains("application \"shop\""), "{e}");
}

/// A next document's compiler takes over what did not change, and only that.
#[test]
fn the_next_document_keeps_what_did_not_change() {
    let mut c = compiler(THREE_TIER);
    let (web, app, db) = (
        v("web1", &[("tier", "web")]),
        v("app1", &[("tier", "app")]),
        v("db1", &[("tier", "db")]),
    );
    let before: Vec<_> = [&web, &app, &db]
        .iter()
        .map(|x| c.vnic(&x.input(), "").unwrap())
        .collect();
    // One rule changes (app-to-db now drops): web is untouched, app's egress and db's
    // ingress change.
    let mut c2 = Compiler::next(
        &mut c,
        Arc::new(yaml(&THREE_TIER.replace(
            "services: [pg], action: allow",
            "services: [pg], action: drop",
        ))),
    )
    .unwrap();
    c2.put_cache(c.take_cache());
    let after: Vec<_> = [&web, &app, &db]
        .iter()
        .map(|x| c2.vnic(&x.input(), "").unwrap())
        .collect();
    assert!(Arc::ptr_eq(
        &before[0].policy.egress,
        &after[0].policy.egress
    ));
    assert!(Arc::ptr_eq(
        &before[1].policy.ingress,
        &after[1].policy.ingress
    ));
    assert!(!Arc::ptr_eq(
        &before[1].policy.egress,
        &after[1].policy.egress
    ));
    assert!(!Arc::ptr_eq(
        &before[2].policy.ingress,
        &after[2].policy.ingress
    ));
    assert_eq!(reach(&mut c2, &app, &db, &tcp(5432)).0, Action::Drop);
    assert_eq!(
        reach(&mut c2, &web, &app, &tcp(8080)),
        (Action::Allow, Action::Allow)
    );
    // A group changes: memberships are worked out again (web1 is now in "app").
    let regrouped = THREE_TIER.replace("{ tag: tier, eq: app }", "{ tag: tier, in: [app, web] }");
    let mut c3 = Compiler::next(&mut c2, Arc::new(yaml(&regrouped))).unwrap();
    let w = c3.vnic(&web.input(), "").unwrap();
    assert_eq!(w.slots.len(), 2);
    assert_eq!(
        reach(&mut c3, &web, &web, &tcp(8080)),
        (Action::Allow, Action::Allow)
    );
    // Priorities reorder two policies: the order of decision changes, so do the rulesets.
    let two = r#"
groups:
  - { name: g, vnics: [a, b] }
policies:
  - { name: p1, tier: application, priority: 1, rules: [ { name: r, src: g, dst: g, action: allow } ] }
  - { name: p2, tier: application, priority: 2, rules: [ { name: r, src: g, dst: g, action: drop } ] }
"#;
    let mut d = compiler(two);
    assert_eq!(
        reach(&mut d, &v("a", &[]), &v("b", &[]), &tcp(1)).0,
        Action::Allow
    );
    let mut d2 = Compiler::next(
        &mut d,
        Arc::new(yaml(&two.replace("priority: 2", "priority: 0"))),
    )
    .unwrap();
    assert_eq!(
        reach(&mut d2, &v("a", &[]), &v("b", &[]), &tcp(1)).0,
        Action::Drop
    );
    // A vNIC's tags change under the same document: its memo is not used.
    let mut moved = v("web1", &[("tier", "db")]);
    assert_eq!(reach(&mut c3, &moved, &app, &tcp(8080)).0, Action::Drop);
    assert_eq!(
        reach(&mut c3, &app, &moved, &tcp(5432)),
        (Action::Allow, Action::Allow)
    );
    moved.tags.insert("tier".into(), "web".into());
    assert_eq!(
        reach(&mut c3, &moved, &app, &tcp(8080)),
        (Action::Allow, Action::Allow)
    );
}

/// The documents the README and docs/examples show are valid and mean what they say.
#[test]
fn the_documented_examples_compile() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```yaml\n")
        .expect("a yaml block in the README")
        + 8;
    let text = &readme[start..start + readme[start..].find("```").unwrap()];
    let mut c = compiler(text);
    let mut web = v("web1", &[("tier", "web")]);
    web.tenant = "shop";
    let mut db = v("db1", &[("tier", "db")]);
    db.tenant = "shop";
    let app = v("app1", &[("tier", "app")]);
    assert_eq!(
        reach(&mut c, &web, &app, &tcp(8080)),
        (Action::Allow, Action::Allow)
    );
    assert_eq!(
        reach(&mut c, &app, &db, &tcp(5432)),
        (Action::Allow, Action::Allow)
    );
    assert_eq!(reach(&mut c, &web, &db, &tcp(5432)).0, Action::Drop);
    // db's selector needs the tenant too.
    let other = v("db2", &[("tier", "db")]);
    assert_eq!(reach(&mut c, &app, &other, &tcp(5432)).0, Action::Drop);
    let smtp = with_addrs(tcp(25), "10.0.0.1", "192.0.2.5");
    let w = c.vnic(&web.input(), "").unwrap();
    assert_eq!(w.policy.egress.lookup(&smtp).action, Action::Reject);

    let three = include_str!("../../docs/examples/three-tier.yaml");
    let mut c = compiler(three);
    let (web, app, db) = (
        v("web", &[("tier", "web")]),
        v("app", &[("tier", "app")]),
        v("db", &[("tier", "db")]),
    );
    assert_eq!(
        reach(&mut c, &web, &app, &tcp(5201)),
        (Action::Allow, Action::Allow)
    );
    assert_eq!(
        reach(&mut c, &app, &db, &tcp(5201)),
        (Action::Allow, Action::Allow)
    );
    assert_eq!(reach(&mut c, &web, &db, &tcp(5201)).0, Action::Drop);
}
