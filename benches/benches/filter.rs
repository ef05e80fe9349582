//! The filter stage as a worker runs it: parse a frame's headers, then judge it.
//!
//! Setup: a 1M-connection table holding 100,000 UDP connections between vNIC 1 and vNIC 2 on
//! one host, both vNICs with 1,000-rule egress and ingress rulesets (the traffic matches the
//! last rule).
//!
//! Cases:
//! - `filter/hit_shared`: what bulwark does for a VM-to-VM packet: one connection serves the
//!   sender's egress side and the receiver's ingress side (one lookup, one touch).
//! - `filter/hit_per_side`: the design it replaces, for comparison: each vNIC tracks its own
//!   side (two connection tables, modelled as two zones): two lookups, two touches.
//! - `filter/parse_hit_shared`: `hit_shared` plus parsing the frame (the whole stage).
//! - `filter/revalidate`: a packet of a connection created under an older policy epoch: both
//!   rulesets are consulted again, then the connection continues (once per connection per
//!   policy change).
//!
//! Run: `cargo bench -p bulwark-benches --bench filter`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use conntrack::{Config, Table, Timeouts};
use criterion::{criterion_group, criterion_main, Criterion};
use dataplane::filter::{Decision, Filter, Policy, Side};
use dataplane::parse::{parse, Packet, HEADROOM};
use dataplane::ruleset::{Action, Cidr, Rule, Ruleset};

const FLOWS: u32 = 100_000;
const RULES: u32 = 1000;

fn frame(i: u32) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let src = 0x0a00_0000u32 | (i & 0xffff);
    let dst = 0x0a01_0000u32 | (i >> 16);
    let mut ip = [0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&dst.to_be_bytes());
    f.extend_from_slice(&(1024 + (i % 50_000) as u16).to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&26u16.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(64, 0);
    f
}

/// `RULES` rules that do not match the benchmark's traffic, then one that allows it.
fn ruleset() -> Arc<Ruleset> {
    let mut rules: Vec<Rule> = (0..RULES - 1)
        .map(|i| {
            let mut r = Rule::any(i, Action::Drop);
            r.dst = vec![Cidr::new(IpAddr::V4(Ipv4Addr::from(0xc000_0000 | i << 8)), 24).unwrap()];
            r.proto = Some(6);
            r.dst_ports = vec![(i % 60_000) as u16..=(i % 60_000) as u16];
            r
        })
        .collect();
    let mut last = Rule::any(RULES - 1, Action::Allow);
    last.proto = Some(17);
    rules.push(last);
    Arc::new(Ruleset::compile(&rules, Action::Drop).expect("compiles"))
}

fn bench(c: &mut Criterion) {
    let rs = ruleset();
    let policy = Policy {
        egress: rs.clone(),
        ingress: rs,
        ..Policy::allow_all()
    };
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &policy,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &policy,
            epoch: 0,
        },
    );
    let table = Table::new(&Config {
        capacity: 1 << 20,
        vnics: 8,
        workers: 1,
        timeouts: Timeouts::default(),
    });
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(frame).collect();
    let pkts: Vec<Packet> = frames
        .iter()
        .map(|f| parse(&f[..f.len().min(HEADROOM)], f.len()).expect("parses"))
        .collect();
    let f = Filter {
        table: &table,
        epoch: 1,
    };
    for p in &pkts {
        // The shared connection (zone 10), and the two per-side ones (zones 11 and 12).
        assert!(matches!(
            f.decide(p, 10, a, Some(b), 1, 1),
            Decision::Pass { .. }
        ));
        assert!(matches!(
            f.decide(p, 11, a, None, 1, 1),
            Decision::Pass { .. }
        ));
        assert!(matches!(
            f.decide(p, 12, b, None, 1, 1),
            Decision::Pass { .. }
        ));
    }

    let mut g = c.benchmark_group("filter");
    let mut i = 0usize;
    let mut next = || {
        i = (i.wrapping_mul(2_654_435_761).wrapping_add(1)) % FLOWS as usize;
        i
    };
    g.bench_function("hit_shared", |bn| {
        bn.iter(|| black_box(f.decide(&pkts[next()], 10, a, Some(b), 1, 1)))
    });
    g.bench_function("hit_per_side", |bn| {
        bn.iter(|| {
            let p = &pkts[next()];
            black_box(f.decide(p, 11, a, None, 1, 1));
            black_box(f.decide(p, 12, b, None, 1, 1))
        })
    });
    g.bench_function("parse_hit_shared", |bn| {
        bn.iter(|| {
            let fr = &frames[next()];
            let p = parse(black_box(&fr[..]), fr.len()).expect("parses");
            black_box(f.decide(&p, 10, a, Some(b), 1, 1))
        })
    });
    // Each iteration sees a new epoch in which A's policy changed, so every packet
    // re-validates.
    let mut epoch = 1u64;
    g.bench_function("revalidate", |bn| {
        bn.iter(|| {
            epoch += 1;
            let fe = Filter {
                table: &table,
                epoch,
            };
            let a = Side { epoch, ..a };
            black_box(fe.decide(&pkts[next()], 10, a, Some(b), 1, 1))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
