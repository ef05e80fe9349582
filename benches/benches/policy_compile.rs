//! The policy compiler at the scale of issue 10's targets, in one process, as the agent runs
//! it (`control::agent`'s apply: `Compiler::new`, `Compiler::vnic` for every vNIC, then
//! `Switch::set_ports` with one worker polling):
//!
//! - `full`: 10,000 rules over 1,000 vNICs, compiled and published from nothing.
//! - `one-rule`: the same document with one rule's service changed (a new revision).
//! - `join`: one vNIC re-tagged into another group (what `PUT /v1/ports/NAME/tags` does).
//! - `big-vnic`: one vNIC carrying 10,000 rules.
//!
//! The document: 100 applications of 10 vNICs each (selected by the tag `app`), one policy per
//! application with 100 rules, each allowing another application in on its own TCP port. So
//! each vNIC carries about 100 ingress and 100 egress rules; vNICs of one application share
//! their rulesets (100 classes, 200 rulesets).
//!
//! Prints the median of `RUNS` runs of each case (the machines are shared and noisy).
//! Run: `cargo bench -p bulwark-benches --bench policy_compile`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_vhost::NetDevice;
use control::compiler::{Compiled, Compiler, VnicIn};
use control::document::{Document, Format, VnicAttrs};
use dataplane::{PortSpec, Switch, SwitchConfig};

const APPS: usize = 100;
const PER_APP: usize = 10;
const RULES_PER_APP: usize = 100;
const RUNS: usize = 7;

/// The document; `changed`: application 0's first rule allows another service.
fn document(changed: bool) -> Document {
    let mut services = Vec::new();
    let mut groups = Vec::new();
    let mut policies = Vec::new();
    for k in 0..RULES_PER_APP {
        services.push(serde_json::json!({"name": format!("s{k}"), "proto": "tcp",
            "ports": [1000 + k]}));
    }
    for a in 0..APPS {
        groups.push(serde_json::json!({"name": format!("app{a}"),
            "select": {"tag": "app", "eq": format!("a{a}")}}));
        let rules: Vec<_> = (0..RULES_PER_APP)
            .map(|k| {
                serde_json::json!({"name": format!("r{k}"),
                    "src": format!("app{}", (a + k + 1) % APPS), "dst": format!("app{a}"),
                    "services": format!("s{}", if changed && a == 0 && k == 0 { 1 } else { k }),
                    "action": "allow"})
            })
            .collect();
        policies.push(
            serde_json::json!({"name": format!("p{a}"), "tier": "application",
            "rules": rules}),
        );
    }
    let text = serde_json::json!({"services": services, "groups": groups, "policies": policies})
        .to_string();
    Document::parse(&text, Format::Json).expect("the bench document")
}

struct Vnic {
    name: String,
    tags: BTreeMap<String, String>,
    dev: Arc<NetDevice>,
}

fn vnics() -> Vec<Vnic> {
    (0..APPS * PER_APP)
        .map(|i| Vnic {
            name: format!("vm{i}"),
            tags: [("app".to_string(), format!("a{}", i / PER_APP))].into(),
            dev: Arc::new(NetDevice::new(1)),
        })
        .collect()
}

fn compile_all(c: &mut Compiler, vs: &[Vnic]) -> Vec<Compiled> {
    vs.iter()
        .map(|v| {
            c.vnic(
                &VnicIn {
                    attrs: VnicAttrs {
                        name: &v.name,
                        segment: 10,
                        tenant: "default",
                        host: "h",
                        tags: &v.tags,
                    },
                    own: None,
                },
                "",
            )
            .expect("compiles")
        })
        .collect()
}

fn publish(sw: &Switch, vs: &[Vnic], compiled: &[Compiled]) {
    let specs: Vec<PortSpec> = vs
        .iter()
        .zip(compiled)
        .enumerate()
        .map(|(i, (v, c))| PortSpec {
            id: u16::try_from(i).expect("1000 ports"),
            segment: 10,
            dev: v.dev.clone(),
            policy: c.policy.clone(),
            mac: None,
            guard: Default::default(),
        })
        .collect();
    sw.set_ports(&specs).expect("port table");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let last = dataplane::online_cpus().saturating_sub(1);
    let sw = Switch::new(SwitchConfig {
        workers: vec![last],
        ..SwitchConfig::default()
    });
    let workers = sw.spawn_workers().expect("a worker");
    let vs = vnics();
    let doc = Arc::new(document(false));
    let changed = Arc::new(document(true));
    let rules: usize = doc.policies.iter().map(|p| p.rules.len()).sum();
    println!(
        "{rules} rules, {} groups, {} vNICs; median of {RUNS} runs",
        doc.groups.len(),
        vs.len()
    );

    let (mut full, mut full_compile, mut one, mut join) = (vec![], vec![], vec![], vec![]);
    let mut one_parts = Vec::new();
    let mut stats = (0u32, 0u32, 0usize);
    for _ in 0..RUNS {
        // From nothing: an empty switch, an empty cache.
        sw.set_ports(&[]).expect("empty");
        let t = Instant::now();
        let mut c = Compiler::new(doc.clone()).expect("document");
        let compiled = compile_all(&mut c, &vs);
        let tc = t.elapsed();
        publish(&sw, &vs, &compiled);
        full.push(t.elapsed());
        full_compile.push(tc);
        stats.0 = compiled.iter().map(|c| c.compiled).sum();
        stats.2 = compiled
            .iter()
            .map(|c| c.policy.ingress.len())
            .max()
            .unwrap_or(0);

        // One rule changed: a new document, the rulesets kept by content.
        let t = Instant::now();
        let mut c2 = Compiler::next(&mut c, changed.clone()).expect("document");
        let t_new = t.elapsed();
        c2.put_cache(c.take_cache());
        let compiled2 = compile_all(&mut c2, &vs);
        let t_vnics = t.elapsed();
        publish(&sw, &vs, &compiled2);
        one.push(t.elapsed());
        one_parts.push((t_new, t_vnics - t_new));
        stats.1 = compiled2.iter().map(|c| c.compiled).sum();

        // A vNIC joins another group (re-tagged): its groups, its class's rulesets, publish.
        let mut moved = compiled2;
        let t = Instant::now();
        let tags: BTreeMap<String, String> = [("app".to_string(), "a1".to_string())].into();
        let c = c2
            .vnic(
                &VnicIn {
                    attrs: VnicAttrs {
                        name: &vs[0].name,
                        segment: 10,
                        tenant: "default",
                        host: "h",
                        tags: &tags,
                    },
                    own: None,
                },
                "",
            )
            .expect("compiles");
        moved[0] = c;
        publish(&sw, &vs, &moved);
        join.push(t.elapsed());
    }
    println!(
        "full: {} (compile {}, {} rulesets compiled, up to {} ingress rules per vNIC)",
        ms(median(full)),
        ms(median(full_compile)),
        stats.0,
        stats.2
    );
    println!(
        "one-rule: {} ({} rulesets compiled; document checked in {}, vNICs compiled in {})",
        ms(median(one)),
        stats.1,
        ms(median(one_parts.iter().map(|p| p.0).collect())),
        ms(median(one_parts.iter().map(|p| p.1).collect())),
    );
    println!("join: {}", ms(median(join)));

    // One vNIC with 10,000 rules: every application's rules applied to it.
    let mut big = Vec::new();
    for _ in 0..3 {
        let mut d = (*doc).clone();
        d.groups
            .push(serde_json::from_str(r#"{"name": "big", "vnics": ["big"]}"#).unwrap());
        for p in &mut d.policies {
            p.applied_to = Some(vec!["big".to_string()]);
            for r in &mut p.rules {
                r.dst = control::policy::OneOrMany::One("big".into());
            }
        }
        let t = Instant::now();
        let mut c = Compiler::new(Arc::new(d)).expect("document");
        let tags = BTreeMap::new();
        let v = c
            .vnic(
                &VnicIn {
                    attrs: VnicAttrs {
                        name: "big",
                        segment: 10,
                        tenant: "default",
                        host: "h",
                        tags: &tags,
                    },
                    own: None,
                },
                "",
            )
            .expect("compiles");
        big.push(t.elapsed());
        assert_eq!(v.policy.ingress.len(), APPS * RULES_PER_APP);
    }
    println!("big-vnic (10000 ingress rules): {}", ms(median(big)));
    sw.shutdown();
    for w in workers {
        let _ = w.join();
    }
}
