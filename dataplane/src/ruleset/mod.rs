//! The compiled per-vNIC ruleset classifier.
//!
//! On a connection-tracking miss the switch asks the vNIC's [`Ruleset`] for a [`Verdict`]: the
//! first rule, in list order, that matches the packet's [`Tuple`] decides; if none does, the
//! ruleset's default action applies. The control thread builds a `Ruleset` with
//! [`Ruleset::compile`] and publishes it (an `Arc<Ruleset>` swapped by others); it is immutable
//! afterwards, and [`Ruleset::lookup`] takes `&self`, never allocates and never locks.
//!
//! # What is compiled
//!
//! Each address family gets its own structure (a rule with no addresses goes into both; a
//! rule listing only IPv4 prefixes only into the IPv4 one). A rule becomes a box in a
//! four-dimensional key space: source address, destination address, `proto << 16 | L4 field
//! one`, L4 field two, where the L4 fields are the ports for most protocols and the ICMP type
//! and code for ICMP/ICMPv6. Folding the protocol into the first L4 field keeps every rule
//! exact: a rule names one protocol, so its port ranges sit under it, or names none, and then
//! it cannot constrain ports. CIDR and port-range lists become sorted interval lists; the box
//! is their bounding box, and the few rules that are not exactly their box are re-checked
//! against their lists after the box matched (no cross product of lists).
//!
//! # Algorithm: decision trees (HyperSplit-style), partitioned as in EffiCuts
//!
//! Rules go into up to four decision trees: one for rules narrow in both addresses, one for
//! those wide (at least half the space) in the source, one wide in the destination, one wide
//! in both. A single tree copies every wide rule into most leaves of the subtree that splits
//! the dimension it is wide in (the classic decision-tree memory blow-up); separate trees avoid
//! that. The partition is only used when it is needed: the compiler first tries one tree
//! within 2 copies per rule, which small or benign rulesets meet.
//!
//! A node holds up to three split points on one dimension (the best balanced split, then the
//! best split of each side on the same dimension) and four children; a leaf holds at most 8
//! rules (`binth`). Split points are chosen by sweeping the rules' clipped interval ends per
//! dimension and taking the point that minimises the larger side, then the number of copies.
//! Below a node's first rule that covers the node's whole box nothing can win, so the rules
//! after it are dropped. Rules that all overlap cannot be split apart (every point cuts through
//! all of them); then the node cuts off the part of its box that none of them reaches (below
//! their lowest start or above their highest end in some dimension), so that packets there
//! find an empty leaf rather than scan a long one: 10,000 such rules took ~8 us per
//! non-matching lookup without this and ~140 ns with it. If a tree would exceed 64 copies per rule (plus 4096), it is rebuilt
//! with larger leaves: lookups get slower, memory stays bounded, compile always succeeds.
//!
//! A lookup walks all trees in lockstep for a fixed number of steps, without a
//! data-dependent branch: a node's three compares are summed into the child index (a load,
//! not a branch), leaves point to themselves, and each child word carries the dimension its
//! node tests, so the key value is fetched while the node loads. It then tests the first chunk
//! of every reached leaf: 8 rules stored by dimension, checked with one vector compare per
//! dimension (SSE2 `pcmpgtd` after flipping sign bits, about 11 instructions per rule).
//! Finally it takes the lowest matching rule index over the trees, in order of each tree's
//! best rule, stopping as soon as no later tree can win.
//!
//! # Measurements (and what was rejected)
//!
//! `cargo bench -p bulwark-benches --bench classifier` on the 2-core AMD EPYC (Zen 3) KVM
//! guest, ClassBench-like IPv4 rules, 4,096 tuples cycled, half matching a rule and half
//! falling to the default (the slow case). This guest is noisy: the same binary varies by
//! ±20% between runs, so differences below that were re-measured before being believed.
//!
//! | median, three runs | 10 rules | 1,000 | 10,000 |
//! |---|---|---|---|
//! | `lookup` (final) | 36-41 ns | 130-158 ns | 183-225 ns |
//! | `lookup_linear` (reference scan) | | 8.1-9.1 µs | |
//!
//! The 10,000-rule lookup misses the ~150 ns aim by 20-50%; see "Not done yet". Compile of
//! 10,000 rules: 32-36 ms (`compile/10000`). Memory at 10,000 rules: 2.2 MiB by
//! `memory_bytes`, which includes the retained copy of the source rules; 4 trees, 2,782 nodes,
//! 12,534 rule copies (1.25 per rule), depth 6.
//!
//! How the lookup got there (10,000 rules, each step measured against the previous one):
//! - Binary HyperSplit tree, 5 dimensions, leaves of rule indices checked one by one, branchy
//!   descent: 318 ns. Profiling showed mispredicted branches on the way down and a cache miss
//!   per leaf rule through the index.
//! - Child chosen by indexing a two-element array with the comparison: 238 ns. (A mask select,
//!   `(a & m) | (b & !m)`, was turned back into a branch by LLVM.)
//! - Leaves as 8-lane chunks, protocol folded into a port dimension (4 dimensions), one tree
//!   when the partition is not needed: 206 ns. A 4-lane chunk or the unsigned compare did not
//!   vectorise (scalar `setbe` per lane); the sign-flip form does.
//! - Four-way nodes (depth 11 -> 6): 197 -> 183 ns.
//!
//! Rejected after measuring, at 10,000 rules:
//! - No partition (one tree): 212 to 232 ns, no faster, but 35 copies per rule and 16.6 MiB.
//! - Leaf size 4 or 16 instead of 8: 287 ns and 240 ns against 233 ns in the same run.
//! - Walking each tree to its own depth, one after the other (fewer steps): 243 ns against
//!   197 ns in lockstep, which keeps four independent chains in flight.
//! - Inlining the chunk check into `lookup`: 262 ns (LLVM vectorised it worse in context).
//! - Linear scan: 8.1 µs at 1,000 rules, so about 80 µs at 10,000.
//!
//! Rejected without implementing (reasoned, not measured):
//! - Tuple space search (OVS) and TupleMerge (VPP's default): a packet that matches no rule
//!   must probe every table, and this rule mix has dozens of distinct (source length,
//!   destination length, port exactness, protocol) masks even after TupleMerge-style
//!   loosening; at one hash probe per table that is far above the budget for the default
//!   half of the traffic. Their strength is cheap incremental update, which an immutable
//!   ruleset rebuilt off the data path does not need.
//! - Bit vectors per field (Lakshman-Stiliadis, ABV): a 10,000-rule bit vector is 1.25 KiB,
//!   and each address dimension has thousands of elementary intervals, so tens of MiB, and
//!   every lookup ANDs several 1.25 KiB vectors.
//! - rte_acl-style multi-bit tries: fast with AVX2/AVX-512 across packets, but memory depends
//!   heavily on the ruleset, and this crate uses no `unsafe` and no target features.
//!
//! Not done yet: a burst lookup (several tuples walked together would hide more latency, and
//! the switch processes bursts anyway); a `target-feature` (AVX2) build would test 8 rules per
//! instruction instead of 4; the profile says the descent is now instruction-bound (about 25
//! instructions per tree and step), so packing leaves and nodes tighter is the next lever.
//!
//! # Testing
//!
//! [`Ruleset::lookup_linear`] checks every rule with [`Rule::matches`], a direct reading of the
//! field definitions; the tests compare `lookup` with it on hundreds of seeded random rulesets
//! (overlapping, shadowed and duplicated rules, port ranges and lists, /0 to /32 and /128
//! prefixes, ICMP type/code, any-protocol rules, both families, mixed-family lists) built with
//! several tree shapes (leaves of 1 to 8 rules, forced partition or none, budgets so small
//! that trees fall back to large leaves).

mod cidr;
mod error;
mod tree;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

pub use cidr::{Cidr, CidrError};
pub use error::{CompileError, Field};
pub use tree::FamilyStats;

use tree::{Family, Iv, Params, DIMS};

use crate::parse::ip_proto::{
    ICMP as PROTO_ICMP, ICMPV6 as PROTO_ICMPV6, TCP as PROTO_TCP, UDP as PROTO_UDP,
};

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let it through (and, on a conntrack miss, create the connection).
    Allow,
    /// Drop it silently.
    Drop,
    /// Drop it and tell the sender (TCP RST or ICMP unreachable).
    Reject,
    /// Leave this tier: the rest of its rules are skipped and the next tier decides (as
    /// Kubernetes' ClusterNetworkPolicy and OVN have it). Never a verdict: a packet that
    /// passes every tier gets the default action.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Drop => "drop",
            Action::Reject => "reject",
            Action::Pass => "pass",
        })
    }
}

/// One rule. A packet matches when every field matches; an empty list or `None` matches
/// anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Operator-visible id; not interpreted (duplicates are allowed).
    pub id: u32,
    /// Source prefixes, any of which matches. Empty = any address of either family.
    pub src: Vec<Cidr>,
    /// Destination prefixes, any of which matches. Empty = any address of either family.
    pub dst: Vec<Cidr>,
    /// IP protocol (next header for IPv6). None = any.
    pub proto: Option<u8>,
    /// Source port ranges, any of which matches. Empty = any; non-empty needs `proto` TCP or UDP.
    pub src_ports: Vec<RangeInclusive<u16>>,
    /// Destination port ranges, any of which matches. Empty = any; non-empty needs `proto` TCP
    /// or UDP.
    pub dst_ports: Vec<RangeInclusive<u16>>,
    /// ICMP type. None = any; `Some` needs `proto` ICMP or ICMPv6.
    pub icmp_type: Option<u8>,
    /// ICMP code. None = any; `Some` needs `proto` ICMP or ICMPv6.
    pub icmp_code: Option<u8>,
    /// Group slots the peer (the ruleset's [`Peer`] side) must be in, any of them; empty = no
    /// group condition. A rule with groups names no addresses on the peer's side: the group
    /// replaces them. The peer's groups come from the switch (the vNIC's identity), never from
    /// the packet.
    pub peer_groups: Vec<u32>,
    /// What a matching packet gets.
    pub action: Action,
}

/// Which end of a packet is the "peer" whose groups a ruleset's group rules test: the
/// destination for a vNIC's egress rules, the source for its ingress rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The packet's source (ingress rulesets).
    Src,
    /// The packet's destination (egress rulesets).
    Dst,
}

impl Rule {
    /// A rule that matches every packet; set fields to narrow it.
    pub fn any(id: u32, action: Action) -> Rule {
        Rule {
            id,
            src: Vec::new(),
            dst: Vec::new(),
            proto: None,
            src_ports: Vec::new(),
            dst_ports: Vec::new(),
            icmp_type: None,
            icmp_code: None,
            peer_groups: Vec::new(),
            action,
        }
    }

    /// True if this rule matches `t` when the peer is in no group.
    pub fn matches(&self, t: &Tuple) -> bool {
        self.matches_peer(t, &[])
    }

    /// True if this rule matches `t` when the peer is in the groups `peer`, evaluated field by
    /// field from the definition. This is the semantics the compiled lookup must reproduce.
    pub fn matches_peer(&self, t: &Tuple, peer: &[u32]) -> bool {
        let addr = |list: &[Cidr], a: IpAddr| list.is_empty() || list.iter().any(|c| c.contains(a));
        let port = |list: &[RangeInclusive<u16>], p: u16| {
            list.is_empty() || list.iter().any(|r| r.contains(&p))
        };
        t.src.is_ipv4() == t.dst.is_ipv4()
            && addr(&self.src, t.src)
            && addr(&self.dst, t.dst)
            && self.proto.is_none_or(|p| p == t.proto)
            && port(&self.src_ports, t.sport)
            && port(&self.dst_ports, t.dport)
            && self.icmp_type.is_none_or(|v| v == t.icmp_type)
            && self.icmp_code.is_none_or(|v| v == t.icmp_code)
            && (self.peer_groups.is_empty() || self.peer_groups.iter().any(|g| peer.contains(g)))
    }
}

/// The fields of a packet that rules look at.
///
/// For ICMP and ICMPv6 packets the ports are 0; for all others the ICMP fields are 0. A tuple
/// whose source and destination are of different families cannot come from a packet; it
/// matches no rule and gets the default action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (for IPv6, the upper-layer protocol after extension headers).
    pub proto: u8,
    /// TCP or UDP source port.
    pub sport: u16,
    /// TCP or UDP destination port.
    pub dport: u16,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// What to do with the packet.
    pub action: Action,
    /// Index, in the list given to [`Ruleset::compile`], of the rule that decided; None when the
    /// default action applied. The rule's operator id is `ruleset.rules()[i].id`.
    pub rule: Option<u32>,
}

/// Shape of a compiled ruleset, for tuning and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// The IPv4 part.
    pub v4: FamilyStats,
    /// The IPv6 part.
    pub v6: FamilyStats,
}

/// An immutable compiled ruleset: rules in ordered **tiers**. Within a tier the first rule (in
/// list order) that matches a packet decides, unless its action is [`Action::Pass`] (or no rule
/// of the tier matches): then the next tier decides. The default action applies when no tier
/// decides. A ruleset of one tier is the classic first-match list.
pub struct Ruleset {
    rules: Vec<Rule>,
    /// `rules[i].action`, packed so that a verdict reads one small array.
    actions: Vec<Action>,
    default: Action,
    peer: Peer,
    tiers: Box<[Tier]>,
}

/// The compiled rules of one tier (indices into `Ruleset::rules`).
struct Tier {
    /// Rules without groups.
    v4: Family<u32>,
    v6: Family<u128>,
    /// Rules with peer groups: the peer's address dimension holds group slots instead.
    g4: Family<u32>,
    g6: Family<u128>,
    /// Bit `k` set if some rule of this tier names group slot `k` (so a peer's other groups
    /// are skipped without a walk).
    groups: Box<[u64]>,
    /// Number of rules in the tier.
    rules: usize,
}

impl Tier {
    #[inline]
    fn names_group(&self, g: u32) -> bool {
        self.groups
            .get((g / 64) as usize)
            .is_some_and(|w| w >> (g % 64) & 1 == 1)
    }
}

impl fmt::Debug for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ruleset")
            .field("rules", &self.rules.len())
            .field("default", &self.default)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The addresses a rule names on the peer's side.
fn peer_side(r: &Rule, peer: Peer) -> &[Cidr] {
    match peer {
        Peer::Src => &r.src,
        Peer::Dst => &r.dst,
    }
}

/// Checks the fields of rule `i` that the compiled form cannot express.
fn validate(i: usize, r: &Rule, peer: Peer) -> Result<(), CompileError> {
    let tcp_udp = matches!(r.proto, Some(PROTO_TCP | PROTO_UDP));
    let icmp = matches!(r.proto, Some(PROTO_ICMP | PROTO_ICMPV6));
    for (field, list) in [(Field::Src, &r.src), (Field::Dst, &r.dst)] {
        for c in list {
            let max = cidr::addr_bits(c.addr);
            if c.prefix > max {
                return Err(CompileError::PrefixTooLong {
                    rule: i,
                    field,
                    prefix: c.prefix,
                    max,
                });
            }
        }
    }
    if !r.peer_groups.is_empty() && !peer_side(r, peer).is_empty() {
        return Err(CompileError::GroupsWithPeerAddresses { rule: i });
    }
    if !r.src.is_empty() && !r.dst.is_empty() {
        let has = |l: &[Cidr], v4: bool| l.iter().any(|c| c.is_ipv4() == v4);
        if !(has(&r.src, true) && has(&r.dst, true) || has(&r.src, false) && has(&r.dst, false)) {
            return Err(CompileError::NoCommonFamily { rule: i });
        }
    }
    for (field, list) in [
        (Field::SrcPorts, &r.src_ports),
        (Field::DstPorts, &r.dst_ports),
    ] {
        if !list.is_empty() && !tcp_udp {
            return Err(CompileError::PortsNeedTcpUdp {
                rule: i,
                field,
                proto: r.proto,
            });
        }
        if let Some(e) = list.iter().find(|e| e.start() > e.end()) {
            return Err(CompileError::EmptyPortRange {
                rule: i,
                field,
                start: *e.start(),
                end: *e.end(),
            });
        }
    }
    for (field, v) in [
        (Field::IcmpType, r.icmp_type),
        (Field::IcmpCode, r.icmp_code),
    ] {
        if v.is_some() && !icmp {
            return Err(CompileError::IcmpNeedsIcmpProto {
                rule: i,
                field,
                proto: r.proto,
            });
        }
    }
    Ok(())
}

/// Sorts `ivs` and merges overlapping or adjacent intervals.
fn merge<K: tree::Key>(mut ivs: Vec<Iv<K>>) -> Vec<Iv<K>> {
    ivs.sort_unstable();
    let mut out: Vec<Iv<K>> = Vec::with_capacity(ivs.len());
    for iv in ivs {
        match out.last_mut() {
            Some(last) if last.1 == K::MAX || iv.0 <= last.1.inc() => last.1 = last.1.max(iv.1),
            _ => out.push(iv),
        }
    }
    out
}

/// The interval lists of rule `r` for one family, or None if the rule does not apply to it.
/// `range` turns a CIDR of the family into its interval and returns None for the other family.
///
/// Dimensions: source, destination, `proto << 16 | first L4 field`, second L4 field (see
/// `l4_key`). Folding the protocol into the first L4 dimension keeps every rule exact: a rule
/// either names one protocol (and then any first-field ranges sit under that protocol) or
/// matches any protocol, and then it cannot constrain L4 fields at all.
fn dims<K: tree::Key>(
    r: &Rule,
    range: impl Fn(&Cidr) -> Option<Iv<K>>,
) -> Option<[Vec<Iv<K>>; DIMS]> {
    let addrs = |list: &[Cidr]| -> Option<Vec<Iv<K>>> {
        if list.is_empty() {
            return Some(vec![(K::ZERO, K::MAX)]);
        }
        let l: Vec<Iv<K>> = list.iter().filter_map(&range).collect();
        (!l.is_empty()).then(|| merge(l))
    };
    // The ranges of one L4 field: ports, or a single ICMP value, or everything.
    let l4 = |ports: &[RangeInclusive<u16>], icmp: Option<u8>| -> Vec<(u32, u32)> {
        if !ports.is_empty() {
            ports
                .iter()
                .map(|p| (u32::from(*p.start()), u32::from(*p.end())))
                .collect()
        } else if let Some(v) = icmp {
            vec![(u32::from(v), u32::from(v))]
        } else {
            vec![(0, tree::L4_MAX)]
        }
    };
    let proto_l4 = match r.proto {
        None => vec![(K::ZERO, K::from_u32(tree::PROTO_L4_MAX))],
        Some(p) => {
            let base = u32::from(p) << 16;
            merge(
                l4(&r.src_ports, r.icmp_type)
                    .into_iter()
                    .map(|(lo, hi)| (K::from_u32(base | lo), K::from_u32(base | hi)))
                    .collect(),
            )
        }
    };
    let second = merge(
        l4(&r.dst_ports, r.icmp_code)
            .into_iter()
            .map(|(lo, hi)| (K::from_u32(lo), K::from_u32(hi)))
            .collect(),
    );
    Some([addrs(&r.src)?, addrs(&r.dst)?, proto_l4, second])
}

/// The lower of two rule indices, if any.
#[inline(always)]
fn best(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Group slots as the intervals of the peer's key dimension in a group family.
fn slots<K: tree::Key>(groups: &[u32]) -> Vec<Iv<K>> {
    merge(
        groups
            .iter()
            .map(|&g| (K::from_u32(g), K::from_u32(g)))
            .collect(),
    )
}

/// The two L4 key values of `t`: ICMP type and code for ICMP and ICMPv6, ports otherwise.
#[inline]
fn l4_key(t: &Tuple) -> (u16, u16) {
    if t.proto == PROTO_ICMP || t.proto == PROTO_ICMPV6 {
        (u16::from(t.icmp_type), u16::from(t.icmp_code))
    } else {
        (t.sport, t.dport)
    }
}

impl Ruleset {
    /// Compiles `rules` (one tier, first match wins) with `default` for packets no rule
    /// matches. Group rules, if any, test the destination's groups.
    pub fn compile(rules: &[Rule], default: Action) -> Result<Ruleset, CompileError> {
        Ruleset::compile_tiers(&[rules], default, Peer::Dst)
    }

    /// Compiles tiers of rules, in order, with `default` for packets no tier decides; group
    /// rules test the groups of `peer`. Rule indices (in errors and verdicts) count through
    /// the tiers: the second tier's first rule follows the first tier's last.
    pub fn compile_tiers(
        tiers: &[&[Rule]],
        default: Action,
        peer: Peer,
    ) -> Result<Ruleset, CompileError> {
        Ruleset::compile_with(tiers, default, peer, Params::DEFAULT)
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "rule indices: compile_with refuses more than u32::MAX rules just above"
    )]
    pub(crate) fn compile_with(
        tiers: &[&[Rule]],
        default: Action,
        peer: Peer,
        p: Params,
    ) -> Result<Ruleset, CompileError> {
        let count: usize = tiers.iter().map(|t| t.len()).sum();
        if u32::try_from(count).is_err() {
            return Err(CompileError::TooManyRules { count });
        }
        if default == Action::Pass {
            return Err(CompileError::PassAsDefault);
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(count);
        let mut compiled = Vec::with_capacity(tiers.len());
        let pd = match peer {
            Peer::Src => tree::D_SRC,
            Peer::Dst => tree::D_DST,
        };
        for tier_rules in tiers {
            let mut t = Tier {
                v4: Family::new(),
                v6: Family::new(),
                g4: Family::new(),
                g6: Family::new(),
                groups: Box::new([]),
                rules: tier_rules.len(),
            };
            let mut groups: Vec<u64> = Vec::new();
            for r in tier_rules.iter() {
                let i = rules.len();
                validate(i, r, peer)?;
                // Cannot truncate: checked against u32 above.
                let idx = i as u32;
                let d4 = dims(r, |c| match c.addr {
                    IpAddr::V4(a) => Some(cidr::v4_range(a, c.prefix)),
                    IpAddr::V6(_) => None,
                });
                let d6 = dims(r, |c| match c.addr {
                    IpAddr::V6(a) => Some(cidr::v6_range(a, c.prefix)),
                    IpAddr::V4(_) => None,
                });
                if r.peer_groups.is_empty() {
                    if let Some(d) = d4 {
                        t.v4.push(idx, &d);
                    }
                    if let Some(d) = d6 {
                        t.v6.push(idx, &d);
                    }
                } else {
                    for &g in &r.peer_groups {
                        let w = (g / 64) as usize;
                        if groups.len() <= w {
                            groups.resize(w + 1, 0);
                        }
                        groups[w] |= 1 << (g % 64);
                    }
                    if let Some(mut d) = d4 {
                        d[pd] = slots(&r.peer_groups);
                        t.g4.push(idx, &d);
                    }
                    if let Some(mut d) = d6 {
                        d[pd] = slots(&r.peer_groups);
                        t.g6.push(idx, &d);
                    }
                }
                rules.push(r.clone());
            }
            for f in [&mut t.v4, &mut t.g4] {
                f.build(p);
            }
            for f in [&mut t.v6, &mut t.g6] {
                f.build(p);
            }
            t.groups = groups.into_boxed_slice();
            compiled.push(t);
        }
        Ok(Ruleset {
            actions: rules.iter().map(|r| r.action).collect(),
            rules,
            default,
            peer,
            tiers: compiled.into_boxed_slice(),
        })
    }

    /// The verdict for `t` when the peer is in no group (only rules without groups can match).
    ///
    /// Does not allocate or lock; walks a few short decision trees (see the module docs).
    #[inline]
    pub fn lookup(&self, t: &Tuple) -> Verdict {
        self.lookup_peer(t, &[])
    }

    /// The verdict for `t` when the peer (the ruleset's [`Peer`] side) is in the group slots
    /// `peer`: per tier, the address trees, and for each of the peer's groups that the tier
    /// names, the group trees with that slot as the peer's key.
    #[inline]
    pub fn lookup_peer(&self, t: &Tuple, peer: &[u32]) -> Verdict {
        let (a, b) = l4_key(t);
        let proto_l4 = u32::from(t.proto) << 16 | u32::from(a);
        let hit = match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.first(
                [u32::from(s), u32::from(d), proto_l4, u32::from(b)],
                peer,
                |t| (&t.v4, &t.g4),
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.first(
                [
                    u128::from(s),
                    u128::from(d),
                    u128::from(proto_l4),
                    u128::from(b),
                ],
                peer,
                |t| (&t.v6, &t.g6),
            ),
            _ => None,
        };
        self.verdict(hit)
    }

    /// The first rule, tier by tier, that decides `key` (of the family `fam` picks).
    #[inline(always)]
    fn first<K: tree::Key>(
        &self,
        mut key: [K; DIMS],
        peer: &[u32],
        fam: impl Fn(&Tier) -> (&Family<K>, &Family<K>),
    ) -> Option<u32> {
        let pd = match self.peer {
            Peer::Src => tree::D_SRC,
            Peer::Dst => tree::D_DST,
        };
        for tier in self.tiers.iter() {
            let (addrs, groups) = fam(tier);
            let mut hit = addrs.lookup(&key);
            if !peer.is_empty() {
                let addr = key[pd];
                for &g in peer {
                    if tier.names_group(g) {
                        key[pd] = K::from_u32(g);
                        hit = best(hit, groups.lookup(&key));
                    }
                }
                key[pd] = addr;
            }
            if let Some(i) = hit {
                if self.actions[i as usize] != Action::Pass {
                    return Some(i);
                }
            }
        }
        None
    }

    /// The verdict for `t` (peer in no group) by checking every rule in order.
    pub fn lookup_linear(&self, t: &Tuple) -> Verdict {
        self.lookup_linear_peer(t, &[])
    }

    /// The verdict for `t` with the peer in `peer`, by checking every rule in order with
    /// [`Rule::matches_peer`], tier by tier. Slow (linear in the number of rules); it is the
    /// reference `lookup_peer` is tested against, and a baseline for benchmarks. Not for the
    /// data path.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "rule indices: compile refuses more than u32::MAX rules"
    )]
    pub fn lookup_linear_peer(&self, t: &Tuple, peer: &[u32]) -> Verdict {
        let mut start = 0;
        for tier in self.tiers.iter() {
            let end = start + tier.rules;
            let hit = self.rules[start..end]
                .iter()
                .position(|r| r.matches_peer(t, peer));
            if let Some(i) = hit {
                if self.actions[start + i] != Action::Pass {
                    // Cannot truncate: `compile` rejects more than u32::MAX rules.
                    return self.verdict(Some((start + i) as u32));
                }
            }
            start = end;
        }
        self.verdict(None)
    }

    #[inline]
    fn verdict(&self, hit: Option<u32>) -> Verdict {
        match hit {
            Some(i) => Verdict {
                action: self.actions[i as usize],
                rule: Some(i),
            },
            None => Verdict {
                action: self.default,
                rule: None,
            },
        }
    }

    /// Number of tiers.
    pub fn tiers(&self) -> usize {
        self.tiers.len()
    }

    /// Which side's groups the group rules test.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The rules given to `compile`, in order; `Verdict::rule` indexes this.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule that decided `v`, or None for the default action.
    pub fn verdict_rule(&self, v: &Verdict) -> Option<&Rule> {
        v.rule.and_then(|i| self.rules.get(i as usize))
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if there are no rules (every packet gets the default action).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The action for packets no rule matches.
    pub fn default_action(&self) -> Action {
        self.default
    }

    /// Approximate heap and inline size of the ruleset: the compiled trees and rule boxes of
    /// every tier, plus the copy of the source rules kept for `rules()`.
    pub fn memory_bytes(&self) -> usize {
        let source: usize = self
            .rules
            .iter()
            .map(|r| {
                (r.src.capacity() + r.dst.capacity()) * std::mem::size_of::<Cidr>()
                    + (r.src_ports.capacity() + r.dst_ports.capacity())
                        * std::mem::size_of::<RangeInclusive<u16>>()
                    + r.peer_groups.capacity() * 4
            })
            .sum();
        let tiers: usize = self
            .tiers
            .iter()
            .map(|t| {
                std::mem::size_of::<Tier>()
                    + t.groups.len() * 8
                    + t.v4.memory_bytes()
                    + t.v6.memory_bytes()
                    + t.g4.memory_bytes()
                    + t.g6.memory_bytes()
            })
            .sum();
        std::mem::size_of::<Ruleset>()
            + self.rules.capacity() * std::mem::size_of::<Rule>()
            + self.actions.capacity()
            + source
            + tiers
    }

    /// Shape of the compiled trees, summed over the tiers (group rules counted with their
    /// address family).
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for t in self.tiers.iter() {
            s.v4.add(&t.v4.stats());
            s.v4.add(&t.g4.stats());
            s.v6.add(&t.v6.stats());
            s.v6.add(&t.g6.stats());
        }
        s
    }
}
