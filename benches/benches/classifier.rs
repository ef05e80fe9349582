//! Micro-benchmarks of the per-vNIC ruleset classifier (`dataplane::ruleset`).
//!
//! Cases (group `classifier`):
//! - `lookup/10`, `lookup/1000`, `lookup/10000`: one `Ruleset::lookup` per iteration, cycling
//!   through a pre-generated batch of 4,096 IPv4 tuples, half inside some rule (they may still
//!   hit an earlier one) and half matching no rule (they fall to the default action, which
//!   visits every tree: the slow case).
//! - `linear/1000`: the same with `lookup_linear`, the reference scan, as the baseline.
//! - `compile/10000`: `Ruleset::compile` of 10,000 rules (`iter_batched`, so building the input
//!   is not timed).
//!
//! Rules come from a seeded ClassBench-like generator (`gen_rules`): addresses clustered in 64
//! sites with mixed prefix lengths (/0 to /32, mostly /24 and /32), 60% TCP, 25% UDP, 5% ICMP,
//! 8% any protocol; destination ports mostly exact, some ranges, some any; source ports mostly
//! any. Deterministic: xorshift, fixed seeds, no clock.
//!
//! Run: `cargo bench -p bulwark-benches --bench classifier`. The shape of each compiled ruleset
//! (trees, nodes, leaf copies, memory) is printed to stderr before the timings.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dataplane::ruleset::{Action, Cidr, Rule, Ruleset, Tuple};

/// Tuples per lookup batch.
const BATCH: usize = 4096;

/// Xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
    /// Index into `weights`, chosen with probability proportional to each weight.
    fn weighted(&mut self, weights: &[u64]) -> usize {
        let mut x = self.below(weights.iter().sum());
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

const WELL_KNOWN: [u16; 20] = [
    20, 21, 22, 23, 25, 53, 80, 110, 123, 143, 161, 389, 443, 445, 993, 1433, 3306, 5432, 6379,
    8080,
];

fn prefix(g: &mut Rng, sites: &[u32], lens: &[(u8, u64)]) -> Cidr {
    let i = g.weighted(&lens.iter().map(|l| l.1).collect::<Vec<_>>());
    let len = match lens[i].0 {
        // 255 stands for "any length from 8 to 32".
        255 => 8 + g.below(25) as u8,
        l => l,
    };
    let site = sites[g.below(sites.len() as u64) as usize];
    let addr = site | (g.u32() & 0xFFFF);
    Cidr::new(IpAddr::V4(Ipv4Addr::from(addr)), len).unwrap()
}

fn dst_ports(g: &mut Rng) -> Vec<RangeInclusive<u16>> {
    match g.weighted(&[10, 50, 15, 25]) {
        0 => vec![],
        1 => {
            let p = WELL_KNOWN[g.below(WELL_KNOWN.len() as u64) as usize];
            vec![p..=p]
        }
        2 => {
            let p = 1024 + g.below(64000) as u16;
            vec![p..=p]
        }
        _ => match g.below(4) {
            0 => vec![1024..=65535],
            1 => vec![0..=1023],
            _ => {
                let a = g.below(60000) as u16;
                let w = 1 + g.below(1024) as u16;
                vec![a..=a + w]
            }
        },
    }
}

/// `n` ClassBench-like IPv4 rules.
fn gen_rules(n: usize, seed: u64) -> Vec<Rule> {
    let mut g = Rng::new(seed);
    let sites: Vec<u32> = (0..64).map(|_| g.u32() & 0xFFFF_0000).collect();
    (0..n)
        .map(|i| {
            let action = [Action::Allow, Action::Drop, Action::Reject][g.weighted(&[70, 25, 5])];
            let mut r = Rule::any(i as u32, action);
            if g.below(100) >= 25 {
                let lens = [(16, 10), (20, 5), (24, 35), (28, 10), (32, 30), (255, 10)];
                r.src = vec![prefix(&mut g, &sites, &lens)];
            }
            if g.below(100) >= 5 {
                let lens = [(16, 10), (24, 25), (28, 5), (32, 50), (255, 10)];
                r.dst = vec![prefix(&mut g, &sites, &lens)];
            }
            r.proto = [Some(6), Some(17), Some(1), None, Some(47)][g.weighted(&[60, 25, 5, 8, 2])];
            // As in ClassBench's ACL seeds, a rule open on both addresses names a service.
            let open = r.src.is_empty() && r.dst.is_empty();
            if open {
                r.proto = Some([6, 17][g.below(2) as usize]);
            }
            match r.proto {
                Some(6 | 17) => {
                    r.src_ports = match g.weighted(&[85, 10, 5]) {
                        0 => vec![],
                        1 => vec![1024..=65535],
                        _ => {
                            let p = g.below(65536) as u16;
                            vec![p..=p]
                        }
                    };
                    r.dst_ports = dst_ports(&mut g);
                    if open {
                        let p = WELL_KNOWN[g.below(WELL_KNOWN.len() as u64) as usize];
                        r.dst_ports = vec![p..=p];
                    }
                }
                Some(1) if g.below(100) < 60 => {
                    r.icmp_type = Some([0, 3, 8, 11][g.below(4) as usize]);
                    if g.below(100) < 30 {
                        r.icmp_code = Some(g.below(4) as u8);
                    }
                }
                _ => {}
            }
            r
        })
        .collect()
}

fn random_in(g: &mut Rng, list: &[Cidr]) -> IpAddr {
    match list.first() {
        Some(Cidr {
            addr: IpAddr::V4(a),
            prefix,
        }) => {
            let host = u32::MAX.checked_shr(u32::from(*prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(*a) | (g.u32() & host)))
        }
        _ => IpAddr::V4(Ipv4Addr::from(g.u32())),
    }
}

fn random_port(g: &mut Rng, list: &[RangeInclusive<u16>]) -> u16 {
    match list.first() {
        Some(r) => *r.start() + g.below(u64::from(*r.end() - *r.start()) + 1) as u16,
        None => g.below(65536) as u16,
    }
}

/// `BATCH` tuples: even positions inside a random rule, odd positions matching no rule.
fn gen_tuples(rs: &Ruleset, seed: u64) -> Vec<Tuple> {
    let mut g = Rng::new(seed);
    let rules = rs.rules();
    let sites: Vec<u32> = rules
        .iter()
        .filter_map(|r| match r.dst.first() {
            Some(Cidr {
                addr: IpAddr::V4(a),
                ..
            }) => Some(u32::from(*a)),
            _ => None,
        })
        .take(64)
        .collect();
    let mut out = Vec::with_capacity(BATCH);
    while out.len() < BATCH {
        let t = if out.len() % 2 == 0 && !rules.is_empty() {
            let r = &rules[g.below(rules.len() as u64) as usize];
            let proto = r.proto.unwrap_or(6);
            let icmp = proto == 1;
            Tuple {
                src: random_in(&mut g, &r.src),
                dst: random_in(&mut g, &r.dst),
                proto,
                sport: if icmp {
                    0
                } else {
                    random_port(&mut g, &r.src_ports)
                },
                dport: if icmp {
                    0
                } else {
                    random_port(&mut g, &r.dst_ports)
                },
                icmp_type: if icmp { r.icmp_type.unwrap_or(8) } else { 0 },
                icmp_code: if icmp { r.icmp_code.unwrap_or(0) } else { 0 },
            }
        } else {
            // Near the rules' sites (so the trees are walked deep), retried until no rule
            // matches.
            let near = |g: &mut Rng| {
                if sites.is_empty() || g.below(2) == 0 {
                    IpAddr::V4(Ipv4Addr::from(g.u32()))
                } else {
                    let s = sites[g.below(sites.len() as u64) as usize];
                    IpAddr::V4(Ipv4Addr::from(s ^ (g.u32() & 0xFFFF)))
                }
            };
            let t = Tuple {
                src: near(&mut g),
                dst: near(&mut g),
                proto: [6, 17][g.below(2) as usize],
                sport: g.below(65536) as u16,
                dport: g.below(65536) as u16,
                icmp_type: 0,
                icmp_code: 0,
            };
            // `lookup` is fast; the reference scan confirms (they are tested to agree).
            if rs.lookup(&t).rule.is_some() || rs.lookup_linear(&t).rule.is_some() {
                continue;
            }
            t
        };
        out.push(t);
    }
    out
}

fn report(rs: &Ruleset) {
    let s = rs.stats().v4;
    eprintln!(
        "{} rules: {} trees, {} nodes, {} leaf copies ({:.2}/rule), max leaf {}, max depth {}, \
         {} KiB",
        rs.len(),
        s.trees,
        s.nodes,
        s.leaf_entries,
        s.leaf_entries as f64 / rs.len().max(1) as f64,
        s.max_leaf,
        s.max_depth,
        rs.memory_bytes() / 1024
    );
}

fn classifier(c: &mut Criterion) {
    let mut grp = c.benchmark_group("classifier");
    for n in [10, 1000, 10_000] {
        let rules = gen_rules(n, 42);
        let rs = Ruleset::compile(&rules, Action::Drop).unwrap();
        report(&rs);
        let tuples = gen_tuples(&rs, 7);
        let mut i = 0;
        grp.bench_function(format!("lookup/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % BATCH;
                black_box(rs.lookup(black_box(&tuples[i])))
            })
        });
        if n == 1000 {
            let mut i = 0;
            grp.bench_function("linear/1000", |b| {
                b.iter(|| {
                    i = (i + 1) % BATCH;
                    black_box(rs.lookup_linear(black_box(&tuples[i])))
                })
            });
        }
    }
    let rules = gen_rules(10_000, 42);
    grp.sample_size(10);
    grp.bench_function("compile/10000", |b| {
        b.iter_batched(
            || rules.clone(),
            |r| Ruleset::compile(&r, Action::Drop).unwrap(),
            BatchSize::LargeInput,
        )
    });
    grp.finish();
}

criterion_group!(benches, classifier);
criterion_main!(benches);
