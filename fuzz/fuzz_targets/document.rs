//! A policy document as an operator (or an attacker with API access) might send it: parsed as
//! JSON and as YAML, checked, compiled for a few vNICs, then as the next document of a running
//! compiler. Errors are fine; panics, hangs and unbounded memory are not.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use control::compiler::{Compiler, VnicIn};
use control::document::{Document, Format, VnicAttrs};
use libfuzzer_sys::fuzz_target;

fn vnics() -> Vec<(String, &'static str, BTreeMap<String, String>)> {
    let t = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
    vec![
        ("web".into(), "default", t("tier", "web")),
        ("app".into(), "default", t("tier", "app")),
        ("db".into(), "shop", t("tier", "db")),
        ("x".into(), "default", BTreeMap::new()),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Json, Format::Yaml] {
        let Ok(doc) = Document::parse(text, format) else {
            continue;
        };
        let doc = Arc::new(doc);
        let Ok(mut c) = Compiler::new(doc.clone()) else {
            continue;
        };
        let vs = vnics();
        for (name, tenant, tags) in &vs {
            let input = VnicIn {
                attrs: VnicAttrs {
                    name,
                    segment: 10,
                    tenant,
                    host: "h",
                    tags,
                },
                own: None,
            };
            let _ = c.vnic(&input, "");
        }
        if let Ok(mut next) = Compiler::next(&mut c, doc) {
            for (name, tenant, tags) in &vs {
                let input = VnicIn {
                    attrs: VnicAttrs {
                        name,
                        segment: 10,
                        tenant,
                        host: "h",
                        tags,
                    },
                    own: None,
                };
                let _ = next.vnic(&input, "");
            }
        }
        for app in ["a", "shop"] {
            let _ = c.document().without_app(app);
        }
    }
});
