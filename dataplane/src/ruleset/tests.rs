//! Tests: literal cases for parsing, validation and family rules, then differential tests of
//! the compiled lookup against `lookup_linear` on seeded random rulesets and packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::tree::{Params, Partition};
use super::*;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple {
    Tuple {
        src: ip(src),
        dst: ip(dst),
        proto: PROTO_TCP,
        sport,
        dport,
        icmp_type: 0,
        icmp_code: 0,
    }
}

fn icmp(src: &str, dst: &str, ty: u8, code: u8) -> Tuple {
    let proto = if ip(src).is_ipv4() {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    };
    Tuple {
        src: ip(src),
        dst: ip(dst),
        proto,
        sport: 0,
        dport: 0,
        icmp_type: ty,
        icmp_code: code,
    }
}

/// Looks `t` up both ways, asserts they agree, and returns the verdict.
fn check(rs: &Ruleset, t: &Tuple) -> Verdict {
    let v = rs.lookup(t);
    assert_eq!(v, rs.lookup_linear(t), "tuple {t:?}");
    v
}

#[test]
fn cidr_parse_display_normalise() {
    assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
    assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
    assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
    assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
    assert_eq!(cidr("fdff:1::5/8").to_string(), "fd00::/8");
    assert_eq!(cidr("::1").to_string(), "::1/128");
    assert_eq!(cidr("::/0").prefix, 0);
    assert_eq!(
        "10.0.0.0/33".parse::<Cidr>(),
        Err(CidrError::PrefixTooLong {
            prefix: 33,
            max: 32
        })
    );
    assert_eq!(
        "fd00::/999999999999".parse::<Cidr>(),
        Err(CidrError::PrefixTooLong {
            prefix: u32::MAX,
            max: 128
        })
    );
    assert!(matches!(
        "10.0.0.0/".parse::<Cidr>(),
        Err(CidrError::PrefixSyntax(_))
    ));
    assert!(matches!(
        "10.0.0.0/+8".parse::<Cidr>(),
        Err(CidrError::PrefixSyntax(_))
    ));
    assert!(matches!(
        "10.0.0/8".parse::<Cidr>(),
        Err(CidrError::Address(_))
    ));
    assert!(cidr("10.0.0.0/8").contains(ip("10.255.0.1")));
    assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.0")));
    assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
    assert!(cidr("::/0").contains(ip("::ffff:10.0.0.1")));
    // An unnormalised value built through the public fields behaves like its normal form.
    let raw = Cidr {
        addr: ip("10.1.2.3"),
        prefix: 8,
    };
    assert!(raw.contains(ip("10.200.0.0")));
    assert_eq!(Cidr::new(ip("10.1.2.3"), 8), Ok(cidr("10.0.0.0/8")));
    assert_eq!(Cidr::host(ip("fd00::1")), cidr("fd00::1/128"));
}

#[test]
fn compile_errors_name_rule_and_field() {
    let ok = Rule::any(1, Action::Allow);
    let compile = |bad: Rule| Ruleset::compile(&[ok.clone(), bad], Action::Drop).unwrap_err();

    let mut r = Rule::any(2, Action::Allow);
    r.dst_ports = vec![80..=80];
    let e = compile(r.clone());
    assert_eq!(
        e,
        CompileError::PortsNeedTcpUdp {
            rule: 1,
            field: Field::DstPorts,
            proto: None
        }
    );
    assert_eq!(
        e.to_string(),
        "rule 1: dst_ports: port ranges need proto 6 (TCP) or 17 (UDP), not any"
    );
    r.proto = Some(PROTO_ICMP);
    assert!(matches!(
        compile(r.clone()),
        CompileError::PortsNeedTcpUdp { rule: 1, .. }
    ));
    r.proto = Some(PROTO_UDP);
    r.src_ports = vec![
        #[allow(clippy::reversed_empty_ranges)]
        (90..=80),
    ];
    let e = compile(r);
    assert_eq!(
        e,
        CompileError::EmptyPortRange {
            rule: 1,
            field: Field::SrcPorts,
            start: 90,
            end: 80
        }
    );
    assert!(e.to_string().starts_with("rule 1: src_ports: "), "{e}");

    let mut r = Rule::any(2, Action::Allow);
    r.proto = Some(PROTO_TCP);
    r.icmp_code = Some(0);
    let e = compile(r);
    assert_eq!(
        e,
        CompileError::IcmpNeedsIcmpProto {
            rule: 1,
            field: Field::IcmpCode,
            proto: Some(PROTO_TCP)
        }
    );
    assert!(e.to_string().starts_with("rule 1: icmp_code: "), "{e}");

    let mut r = Rule::any(2, Action::Allow);
    r.dst = vec![Cidr {
        addr: ip("fd00::"),
        prefix: 129,
    }];
    let e = compile(r);
    assert_eq!(
        e,
        CompileError::PrefixTooLong {
            rule: 1,
            field: Field::Dst,
            prefix: 129,
            max: 128
        }
    );
    assert!(e.to_string().starts_with("rule 1: dst: "), "{e}");

    let mut r = Rule::any(2, Action::Allow);
    r.src = vec![cidr("10.0.0.0/8")];
    r.dst = vec![cidr("fd00::/8")];
    let e = compile(r.clone());
    assert_eq!(e, CompileError::NoCommonFamily { rule: 1 });
    assert!(e.to_string().starts_with("rule 1: src and dst: "), "{e}");
    // Mixed lists with a family in common are fine.
    r.src.push(cidr("fd00::/16"));
    Ruleset::compile(&[r], Action::Drop).unwrap();
}

#[test]
fn empty_ruleset_gives_default() {
    let rs = Ruleset::compile(&[], Action::Reject).unwrap();
    assert!(rs.is_empty());
    assert_eq!(rs.len(), 0);
    assert_eq!(rs.default_action(), Action::Reject);
    let v = check(&rs, &tcp("10.0.0.1", "10.0.0.2", 1, 2));
    assert_eq!(
        v,
        Verdict {
            action: Action::Reject,
            rule: None
        }
    );
    assert_eq!(rs.verdict_rule(&v), None);
    assert!(rs.memory_bytes() > 0);
}

#[test]
fn first_match_wins_and_families_stay_apart() {
    let mut web = Rule::any(100, Action::Allow);
    web.dst = vec![cidr("10.0.0.0/24"), cidr("fd00::/64")];
    web.proto = Some(PROTO_TCP);
    web.dst_ports = vec![80..=80, 443..=443];
    let mut block_host = Rule::any(101, Action::Reject);
    block_host.src = vec![cidr("192.168.1.66")];
    let mut ping = Rule::any(102, Action::Allow);
    ping.proto = Some(PROTO_ICMPV6);
    ping.icmp_type = Some(128);
    let mut v6_only = Rule::any(103, Action::Drop);
    v6_only.src = vec![cidr("::/0")];
    let any_allow = Rule::any(104, Action::Allow);
    let rules = vec![web, block_host, ping, v6_only, any_allow];
    let rs = Ruleset::compile(&rules, Action::Drop).unwrap();
    assert_eq!(rs.len(), 5);
    assert_eq!(rs.rules()[1].id, 101);

    let v = check(&rs, &tcp("192.168.1.66", "10.0.0.9", 5000, 443));
    assert_eq!((v.action, v.rule), (Action::Allow, Some(0)));
    assert_eq!(rs.verdict_rule(&v).map(|r| r.id), Some(100));
    let v = check(&rs, &tcp("192.168.1.66", "10.0.0.9", 5000, 22));
    assert_eq!((v.action, v.rule), (Action::Reject, Some(1)));
    // A v4 packet never matches the v6-only rule 3; it falls to the any-any rule 4.
    let v = check(&rs, &tcp("192.168.1.1", "10.0.0.9", 5000, 22));
    assert_eq!((v.action, v.rule), (Action::Allow, Some(4)));
    let v = check(&rs, &tcp("fd00::1", "fd00::2", 5000, 80));
    assert_eq!(v.rule, Some(0));
    let v = check(&rs, &icmp("fd01::1", "fd00::2", 128, 0));
    assert_eq!(v.rule, Some(2));
    let v = check(&rs, &icmp("fd01::1", "fd00::2", 129, 0));
    assert_eq!((v.action, v.rule), (Action::Drop, Some(3)));
    // ICMP (v4) type 128 is not ICMPv6.
    let v = check(&rs, &icmp("10.0.0.1", "10.0.0.2", 128, 0));
    assert_eq!(v.rule, Some(4));
    // A tuple mixing families matches nothing.
    let v = check(&rs, &tcp("10.0.0.1", "fd00::1", 1, 80));
    assert_eq!((v.action, v.rule), (Action::Drop, None));
}

#[test]
fn ruleset_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ruleset>();
}

/// Xorshift64*: deterministic, seedable, good enough to generate test cases.
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
    /// Uniform in 0..n (n > 0; the tiny modulo bias does not matter here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// A small universe of addresses so that random rules overlap, nest and shadow each other.
fn rand_v4(g: &mut Rng) -> Ipv4Addr {
    let base = g.pick(&[0x0A00_0000u32, 0x0A00_0100, 0x0A01_0000, 0xC0A8_0000, 0]);
    let low = match g.below(4) {
        0 => 0,
        1 => g.below(4) as u32,
        2 => g.below(256) as u32,
        _ => g.next() as u32,
    };
    Ipv4Addr::from(base ^ low)
}

fn rand_v6(g: &mut Rng) -> Ipv6Addr {
    let base = g.pick(&[
        0xfd00_0000_0000_0000_0000_0000_0000_0000u128,
        0xfd00_0000_0000_0000_0000_0000_0001_0000,
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        0,
    ]);
    let low = match g.below(4) {
        0 => 0,
        1 => u128::from(g.below(4)),
        2 => u128::from(g.next()),
        _ => u128::from(g.next()) << 64 | u128::from(g.next()),
    };
    Ipv6Addr::from(base ^ low)
}

fn rand_cidr(g: &mut Rng, v4: bool) -> Cidr {
    if v4 {
        let p = g.pick(&[0u8, 1, 7, 8, 16, 23, 24, 30, 31, 32, 32, 255]);
        let p = if p == 255 { g.below(33) as u8 } else { p };
        Cidr::new(IpAddr::V4(rand_v4(g)), p).unwrap()
    } else {
        let p = g.pick(&[0u8, 1, 8, 48, 64, 112, 127, 128, 128, 255]);
        let p = if p == 255 { g.below(129) as u8 } else { p };
        Cidr::new(IpAddr::V6(rand_v6(g)), p).unwrap()
    }
}

fn rand_port(g: &mut Rng) -> u16 {
    match g.below(3) {
        0 => g.pick(&[0, 1, 22, 53, 80, 443, 1023, 1024, 8080, 65534, 65535]),
        1 => g.below(2048) as u16,
        _ => g.next() as u16,
    }
}

fn rand_ports(g: &mut Rng) -> Vec<RangeInclusive<u16>> {
    let n = g.pick(&[0, 0, 1, 1, 1, 2, 3]);
    (0..n)
        .map(|_| {
            let a = rand_port(g);
            match g.below(4) {
                0 => a..=a,
                1 => 0..=a,
                2 => a..=u16::MAX,
                _ => {
                    let b = rand_port(g);
                    a.min(b)..=a.max(b)
                }
            }
        })
        .collect()
}

fn rand_addrs(g: &mut Rng, fam: u64) -> Vec<Cidr> {
    // fam: 0 = either family per entry, 1 = v4 only, 2 = v6 only.
    let n = g.pick(&[0, 0, 1, 1, 1, 1, 2, 3]);
    (0..n)
        .map(|_| {
            let v4 = match fam {
                1 => true,
                2 => false,
                _ => g.chance(50),
            };
            rand_cidr(g, v4)
        })
        .collect()
}

fn rand_rule(g: &mut Rng, id: u32) -> Rule {
    let mut r = Rule::any(id, g.pick(&[Action::Allow, Action::Drop, Action::Reject]));
    // Mostly single-family rules, some mixed, so both families and the mixing path are used.
    let fam = g.pick(&[0, 1, 1, 1, 2, 2]);
    r.src = rand_addrs(g, fam);
    r.dst = rand_addrs(g, fam);
    if validate(0, &r, Peer::Dst).is_err() {
        // Mixed lists without a family in common: drop one side.
        r.dst.clear();
    }
    r.proto = g.pick(&[
        None,
        None,
        Some(PROTO_TCP),
        Some(PROTO_TCP),
        Some(PROTO_UDP),
        Some(PROTO_ICMP),
        Some(PROTO_ICMPV6),
        Some(47),
    ]);
    match r.proto {
        Some(PROTO_TCP | PROTO_UDP) => {
            r.src_ports = if g.chance(30) { rand_ports(g) } else { vec![] };
            r.dst_ports = rand_ports(g);
        }
        Some(PROTO_ICMP | PROTO_ICMPV6) => {
            if g.chance(60) {
                r.icmp_type = Some(g.pick(&[0, 3, 8, 11, 128, 129]));
            }
            if g.chance(40) {
                r.icmp_code = Some(g.pick(&[0, 1, 3]));
            }
        }
        _ => {}
    }
    r
}

/// True if `r` matches a large share (1/256 or more) of all packets of some family.
fn is_broad(r: &Rule) -> bool {
    let wide = |l: &[Cidr]| l.is_empty() || l.iter().any(|c| c.prefix < 8);
    wide(&r.src)
        && wide(&r.dst)
        && (r.proto.is_none()
            || r.src_ports.is_empty() && r.dst_ports.is_empty() && r.icmp_type.is_none())
}

/// A random ruleset with duplicates and narrowed copies of earlier rules mixed in, so that
/// shadowed and partly shadowed rules are common.
fn rand_rules(g: &mut Rng, n: usize) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::with_capacity(n);
    for i in 0..n {
        let id = 1000 + i as u32;
        let r = if !rules.is_empty() && g.chance(15) {
            let mut r = rules[g.below(rules.len() as u64) as usize].clone();
            r.id = id;
            r.action = g.pick(&[Action::Allow, Action::Drop, Action::Reject]);
            if g.chance(50) && !r.dst_ports.is_empty() {
                r.dst_ports.truncate(1);
            }
            r
        } else {
            // Rules that match nearly everything are kept rare (about three per ruleset), or
            // no packet of a large ruleset would ever reach the default action.
            let mut r = rand_rule(g, id);
            while is_broad(&r) && g.below(n as u64) >= 3 {
                r = rand_rule(g, id);
            }
            r
        };
        rules.push(r);
    }
    rules
}

/// A packet inside a random point of `r` (it may still match an earlier rule).
fn tuple_in(g: &mut Rng, r: &Rule) -> Tuple {
    let mut t = rand_tuple(g);
    let v4 = match (r.src.first(), r.dst.first()) {
        (Some(c), _) | (None, Some(c)) => c.is_ipv4(),
        (None, None) => g.chance(50),
    };
    let inside = |g: &mut Rng, list: &[Cidr]| -> IpAddr {
        let fam: Vec<&Cidr> = list.iter().filter(|c| c.is_ipv4() == v4).collect();
        if fam.is_empty() {
            return if v4 {
                IpAddr::V4(rand_v4(g))
            } else {
                IpAddr::V6(rand_v6(g))
            };
        }
        let c = fam[g.below(fam.len() as u64) as usize];
        match c.addr {
            IpAddr::V4(a) => {
                let (lo, hi) = cidr::v4_range(a, c.prefix);
                IpAddr::V4(Ipv4Addr::from(lo | (g.next() as u32 & (hi - lo))))
            }
            IpAddr::V6(a) => {
                let (lo, hi) = cidr::v6_range(a, c.prefix);
                let x = u128::from(g.next()) << 64 | u128::from(g.next());
                IpAddr::V6(Ipv6Addr::from(lo | (x & (hi - lo))))
            }
        }
    };
    t.src = inside(g, &r.src);
    t.dst = inside(g, &r.dst);
    // If the rule's src list lacked this family the rule can't match via dst either; fine.
    if let Some(p) = r.proto {
        t.proto = p;
    }
    let in_ports = |g: &mut Rng, l: &[RangeInclusive<u16>]| -> Option<u16> {
        if l.is_empty() {
            return None;
        }
        let e = &l[g.below(l.len() as u64) as usize];
        let span = u64::from(*e.end() - *e.start()) + 1;
        Some(*e.start() + g.below(span) as u16)
    };
    if t.proto == PROTO_ICMP || t.proto == PROTO_ICMPV6 {
        t.sport = 0;
        t.dport = 0;
        t.icmp_type = r.icmp_type.unwrap_or(t.icmp_type);
        t.icmp_code = r.icmp_code.unwrap_or(t.icmp_code);
    } else {
        t.icmp_type = 0;
        t.icmp_code = 0;
        t.sport = in_ports(g, &r.src_ports).unwrap_or(t.sport);
        t.dport = in_ports(g, &r.dst_ports).unwrap_or(t.dport);
    }
    // Occasionally push a port just past a range edge.
    if g.chance(10) {
        t.dport = t.dport.wrapping_add(1);
    }
    t
}

fn rand_tuple(g: &mut Rng) -> Tuple {
    let v4 = g.chance(50);
    // Some packets come from anywhere, so that large rulesets still leave gaps for the default.
    let anywhere = g.chance(30);
    let addr = |g: &mut Rng| match (v4, anywhere) {
        (true, false) => IpAddr::V4(rand_v4(g)),
        (false, false) => IpAddr::V6(rand_v6(g)),
        (true, true) => IpAddr::V4(Ipv4Addr::from(g.next() as u32)),
        (false, true) => IpAddr::V6(Ipv6Addr::from(
            u128::from(g.next()) << 64 | u128::from(g.next()),
        )),
    };
    let src = addr(g);
    let dst = addr(g);
    let proto = g.pick(&[
        PROTO_TCP,
        PROTO_TCP,
        PROTO_UDP,
        PROTO_ICMP,
        PROTO_ICMPV6,
        47,
        0,
        255,
    ]);
    let icmp = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
    Tuple {
        src,
        dst,
        proto,
        sport: if icmp { 0 } else { rand_port(g) },
        dport: if icmp { 0 } else { rand_port(g) },
        icmp_type: if icmp {
            g.pick(&[0, 3, 8, 11, 128, 129, 200])
        } else {
            0
        },
        icmp_code: if icmp { g.pick(&[0, 1, 3, 9]) } else { 0 },
    }
}

/// Every build shape the tests exercise: the default, tiny leaves (deep trees), no partition,
/// and a budget so small that trees must fall back to larger leaves.
const SHAPES: [Params; 5] = [
    Params::DEFAULT,
    Params {
        binth: 1,
        partition: Partition::Always,
        budget_factor: 64,
    },
    Params {
        binth: 2,
        partition: Partition::Never,
        budget_factor: 64,
    },
    Params {
        binth: 1,
        partition: Partition::Never,
        budget_factor: 0,
    },
    Params {
        binth: 3,
        partition: Partition::Always,
        budget_factor: 1,
    },
];

/// Checks `lookup` against `lookup_linear` for every build shape on one random ruleset;
/// returns how many of the packets matched a rule.
fn differential(seed: u64, n_rules: usize, n_packets: usize) -> usize {
    let mut g = Rng::new(seed);
    let rules = rand_rules(&mut g, n_rules);
    let default = g.pick(&[Action::Allow, Action::Drop]);
    let sets: Vec<Ruleset> = SHAPES
        .iter()
        .map(|&p| Ruleset::compile_with(&[&rules], default, Peer::Dst, p).unwrap())
        .collect();
    let mut hits = 0;
    for k in 0..n_packets {
        let t = if !rules.is_empty() && k % 2 == 0 {
            let i = g.below(rules.len() as u64) as usize;
            tuple_in(&mut g, &rules[i])
        } else {
            rand_tuple(&mut g)
        };
        let want = sets[0].lookup_linear(&t);
        hits += usize::from(want.rule.is_some());
        for (rs, p) in sets.iter().zip(SHAPES) {
            assert_eq!(
                rs.lookup(&t),
                want,
                "seed {seed}, {n_rules} rules, {p:?}, tuple {t:?}"
            );
        }
    }
    hits
}

/// The generator must produce both outcomes (a rule, the default) for at least 2% of the
/// packets each, or the differential tests prove little.
fn assert_mixed(hits: usize, total: usize) {
    assert!(
        hits * 50 > total && (total - hits) * 50 > total,
        "{hits} of {total} packets matched a rule"
    );
}

#[test]
fn differential_small_rulesets() {
    let (mut hits, mut total) = (0, 0);
    for seed in 0..300 {
        hits += differential(seed, (seed % 40) as usize, 300);
        total += 300;
    }
    assert_mixed(hits, total);
}

#[test]
fn differential_large_rulesets() {
    let (mut hits, mut total) = (0, 0);
    for seed in 1000..1006 {
        hits += differential(seed, 1500, 3000);
        total += 3000;
    }
    assert_mixed(hits, total);
}

/// Rules wide in src and narrow in dst crossed with the opposite: a decision tree without the
/// partition copies every rule of one kind into every leaf of the other (n²/4 copies).
#[test]
fn crossed_wildcards_stay_small() {
    let n = 2000;
    let mut rules = Vec::new();
    for i in 0..n {
        let a = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i * 7));
        let mut r = Rule::any(i, Action::Allow);
        if i % 2 == 0 {
            r.src = vec![Cidr::host(a)];
        } else {
            r.dst = vec![Cidr::host(a)];
        }
        rules.push(r);
    }
    let rs = Ruleset::compile(&rules, Action::Drop).unwrap();
    let s = rs.stats().v4;
    assert!(s.leaf_entries < 8 * n as usize, "{s:?}");
    assert_eq!(s.max_binth, Params::DEFAULT.binth, "{s:?}");
    let mut g = Rng::new(7);
    for _ in 0..2000 {
        let mut t = rand_tuple(&mut g);
        t.src = IpAddr::V4(Ipv4Addr::from(
            0x0A00_0000 + g.below(u64::from(n) * 7) as u32,
        ));
        t.dst = IpAddr::V4(Ipv4Addr::from(
            0x0A00_0000 + g.below(u64::from(n) * 7) as u32,
        ));
        check(&rs, &t);
    }
}

/// Rules that all overlap (no split point separates them) are kept in one big leaf; the tree
/// cuts off the parts of the key space none of them reaches, so packets there find an empty
/// leaf (the case of `scripts/bench`'s filler rules: 10,000 rules scanned took ~8 us per
/// lookup before, ~140 ns after). Verdicts stay those of the linear scan, inside and outside.
#[test]
fn overlapping_rules_leave_uncovered_space_empty() {
    let n = 2000u32;
    let rules: Vec<Rule> = (0..n)
        .map(|k| {
            let mut r = Rule::any(k, Action::Reject);
            r.proto = Some(PROTO_UDP);
            r.dst = vec![cidr("10.253.0.0/16")];
            let p = 2000 + k as u16;
            r.src_ports = vec![p..=p, p + 20000..=p + 20010];
            r
        })
        .collect();
    let rs = Ruleset::compile(&rules, Action::Allow).unwrap();
    let s = rs.stats().v4;
    assert!(s.max_leaf >= 1000, "the rules cannot be split: {s:?}");
    let mut g = Rng::new(11);
    for i in 0..4000u32 {
        let sport = match i % 4 {
            0 => 1000,                         // below every rule
            1 => 40000,                        // above every rule
            2 => 2000 + g.below(2000) as u16,  // on a rule
            _ => 4500 + g.below(15000) as u16, // in the hull, between rules
        };
        let mut t = tcp("10.254.0.1", "10.253.1.2", sport, 1001);
        t.proto = PROTO_UDP;
        let v = check(&rs, &t);
        assert_eq!(v.action == Action::Reject, i % 4 == 2, "{t:?} {v:?}");
    }
}

/// A random ruleset in tiers: some rules `pass`, some name peer groups (slots 0..12, on the
/// side `peer`; their peer-side addresses removed), each packet looked up with a random set of
/// peer groups. Compiled against the linear reference for every build shape.
fn differential_tiers(seed: u64, n_rules: usize, n_packets: usize, peer: Peer) -> usize {
    let mut g = Rng::new(seed ^ 0x7165_7273);
    let mut rules = rand_rules(&mut g, n_rules);
    for r in &mut rules {
        if g.chance(10) {
            r.action = Action::Pass;
        }
        if g.chance(40) {
            let n = 1 + g.below(3) as usize;
            r.peer_groups = (0..n).map(|_| g.below(12) as u32).collect();
            match peer {
                Peer::Src => r.src.clear(),
                Peer::Dst => r.dst.clear(),
            }
        }
    }
    // Cut into 1 to 4 tiers.
    let ntiers = 1 + g.below(4) as usize;
    let mut cuts: Vec<usize> = (0..ntiers - 1)
        .map(|_| g.below(rules.len() as u64 + 1) as usize)
        .collect();
    cuts.sort_unstable();
    let mut tiers: Vec<&[Rule]> = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().chain([rules.len()]) {
        tiers.push(&rules[at..c]);
        at = c;
    }
    let default = g.pick(&[Action::Allow, Action::Drop]);
    let sets: Vec<Ruleset> = SHAPES
        .iter()
        .map(|&p| Ruleset::compile_with(&tiers, default, peer, p).unwrap())
        .collect();
    let mut hits = 0;
    for k in 0..n_packets {
        let t = if !rules.is_empty() && k % 2 == 0 {
            let i = g.below(rules.len() as u64) as usize;
            tuple_in(&mut g, &rules[i])
        } else {
            rand_tuple(&mut g)
        };
        let mut groups: Vec<u32> = (0..g.below(4)).map(|_| g.below(14) as u32).collect();
        groups.sort_unstable();
        groups.dedup();
        let want = sets[0].lookup_linear_peer(&t, &groups);
        assert_ne!(want.action, Action::Pass, "pass is never a verdict");
        hits += usize::from(want.rule.is_some());
        for (rs, p) in sets.iter().zip(SHAPES) {
            assert_eq!(
                rs.lookup_peer(&t, &groups),
                want,
                "seed {seed}, {n_rules} rules, {p:?}, tuple {t:?}, groups {groups:?}"
            );
        }
    }
    hits
}

#[test]
fn differential_tiers_pass_and_groups() {
    let (mut hits, mut total) = (0, 0);
    for seed in 0..200 {
        let peer = if seed % 2 == 0 { Peer::Dst } else { Peer::Src };
        hits += differential_tiers(seed, (seed % 60) as usize, 200, peer);
        total += 200;
    }
    assert_mixed(hits, total);
}

#[test]
fn pass_skips_the_rest_of_its_tier_only() {
    let allow_ssh = Rule {
        proto: Some(PROTO_TCP),
        dst_ports: vec![22..=22],
        ..Rule::any(1, Action::Allow)
    };
    let pass_ssh = Rule {
        action: Action::Pass,
        id: 2,
        ..allow_ssh.clone()
    };
    let drop_all = Rule::any(3, Action::Drop);
    let allow_all = Rule::any(4, Action::Allow);
    // Tier 1: pass ssh, drop everything else. Tier 2: allow all.
    let rs = Ruleset::compile_tiers(
        &[&[pass_ssh, drop_all], &[allow_all]],
        Action::Drop,
        Peer::Dst,
    )
    .unwrap();
    let ssh = tcp("10.0.0.1", "10.0.0.2", 40000, 22);
    let web = tcp("10.0.0.1", "10.0.0.2", 40000, 80);
    assert_eq!(
        check(&rs, &ssh),
        Verdict {
            action: Action::Allow,
            rule: Some(2)
        }
    );
    assert_eq!(
        check(&rs, &web),
        Verdict {
            action: Action::Drop,
            rule: Some(1)
        }
    );
    // A pass in the last tier falls to the default.
    let rs = Ruleset::compile_tiers(&[&[Rule::any(9, Action::Pass)]], Action::Reject, Peer::Dst)
        .unwrap();
    assert_eq!(
        check(&rs, &web),
        Verdict {
            action: Action::Reject,
            rule: None
        }
    );
    assert!(matches!(
        Ruleset::compile(&[], Action::Pass),
        Err(CompileError::PassAsDefault)
    ));
}

#[test]
fn group_rules_match_the_peer_identity_not_its_address() {
    // Egress of a web vNIC: tcp/8080 to group 3 (app) allowed, the rest dropped.
    let to_app = Rule {
        proto: Some(PROTO_TCP),
        dst_ports: vec![8080..=8080],
        peer_groups: vec![3],
        ..Rule::any(1, Action::Allow)
    };
    let rs = Ruleset::compile_tiers(&[&[to_app]], Action::Drop, Peer::Dst).unwrap();
    let t = tcp("10.0.0.1", "10.0.0.9", 40000, 8080);
    let t6 = tcp("fd00::1", "fd00::9", 40000, 8080);
    for t in [t, t6] {
        assert_eq!(rs.lookup_peer(&t, &[3]).action, Action::Allow);
        assert_eq!(rs.lookup_peer(&t, &[1, 3, 7]).action, Action::Allow);
        // The same addresses, a peer in other groups (or none): dropped.
        assert_eq!(rs.lookup_peer(&t, &[1, 2, 700]).action, Action::Drop);
        assert_eq!(rs.lookup(&t).action, Action::Drop);
        assert_eq!(rs.lookup_peer(&t, &[3]), rs.lookup_linear_peer(&t, &[3]));
    }
    // Groups and peer addresses together do not compile.
    let bad = Rule {
        dst: vec![cidr("10.0.0.0/8")],
        peer_groups: vec![1],
        ..Rule::any(1, Action::Allow)
    };
    assert!(matches!(
        Ruleset::compile_tiers(&[std::slice::from_ref(&bad)], Action::Drop, Peer::Dst),
        Err(CompileError::GroupsWithPeerAddresses { rule: 0 })
    ));
    // On the other side (an ingress ruleset, peer = source) the destination may be named.
    assert!(Ruleset::compile_tiers(&[&[bad]], Action::Drop, Peer::Src).is_ok());
}
