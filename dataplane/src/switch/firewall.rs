//! Stage `firewall`: the vNICs' policies and the connection table, for one frame.
//!
//! Called by `decide` for each frame on a filtered segment whose L2 decision is a port or a
//! flood.
//! - Takes: `pkts[i]` and `hash[i]` (from `headers`), the L2 destination, both ports' sides
//!   (policy, policy epoch) from the port table.
//! - Does: `filter::Filter::decide_hashed` (the connection first, both vNICs' rulesets on a
//!   miss; see `filter.rs`); counts the deciding rules; builds a reject's answer.
//! - Passes on: the destination (a flooded frame of a connection whose far end is known goes
//!   to that end only), `flood_check[i]` for a flood each member judges as it is copied, and
//!   reject answers in `replies[..nreplies]`.
//! - Drops: a parse error under its own reason (`parse_*`, on the sender); every filter
//!   reason (`tcp_out_of_window`, `icmp_unrelated`, `ct_table_full`, ...), a policy's drop or
//!   reject counted on the vNIC whose policy made it, with its direction
//!   (`policy_drop_egress` on the sender, `policy_drop_ingress` on the receiver, ...).
//! - Counters: per rule, packets, bytes and connections admitted (`RuleCounters`).

use super::l2::{Classified, Dest};
use super::punt::{PuntItem, TraceEvent, TraceRecord, Verdict};
use super::worker::{Now, Worker};
use super::{PortEntry, PortTable};
use crate::counters::DropReason;
use crate::filter::{Decision, Filter, Policy, RuleRef};
use crate::guard::{announces, dhcp_reply, Check, DHCP_READ};
use crate::parse::{Packet, HEADROOM, L3};
use crate::reply::reject;
use crate::ruleset::{Action, Tuple};
use crate::wire::Mac;

/// How a flooded frame is judged at each member it is copied to.
#[derive(Debug, Clone, Copy)]
pub(super) enum FloodCheck {
    /// The member's non-IP rule.
    NonIp,
    /// The member's neighbour-discovery rule.
    Nd,
    /// The member's ingress ruleset.
    Ingress(Tuple),
}

impl FloodCheck {
    pub(super) fn of(p: &Packet) -> FloodCheck {
        if p.l3 == L3::NonIp {
            return FloodCheck::NonIp;
        }
        if p.icmp.is_some_and(|i| i.is_nd) {
            return FloodCheck::Nd;
        }
        FloodCheck::Ingress(crate::filter::tuple(p))
    }

    /// Whether the member with `policy` accepts it from a sender in the groups `sender`, or
    /// the reason it does not.
    pub(super) fn admits(&self, policy: &Policy, sender: &[u32]) -> Result<(), DropReason> {
        if !policy.filtered {
            return Ok(());
        }
        match self {
            FloodCheck::NonIp if policy.non_ip != Action::Allow => {
                Err(DropReason::NonIpDeniedIngress)
            }
            FloodCheck::Nd if policy.nd != Action::Allow => Err(DropReason::NdDeniedIngress),
            FloodCheck::Ingress(t)
                if policy.ingress.lookup_peer(t, sender).action != Action::Allow =>
            {
                Err(DropReason::PolicyDropIngress)
            }
            _ => Ok(()),
        }
    }
}

impl Worker<'_> {
    /// The filter stage for frame `n` (headers in `self.hdrs[n]`, parsed into `self.pkts[n]`;
    /// a frame that did not parse is dropped under its `ParseError`'s reason), whose L2 destination is `d`.
    #[inline]
    pub(super) fn filter<const TRACE: bool>(
        &mut self,
        table: &PortTable,
        src: &PortEntry,
        n: usize,
        d: Dest,
        now: Now,
        nreplies: &mut usize,
    ) -> Classified {
        let p = match &self.pkts[n] {
            Ok(p) => p,
            Err(e) => return DropReason::from(*e).into(),
        };
        let len = self.len[n];
        let hl = (len as usize).min(HEADROOM);
        // The spoof guard first: what it drops never reaches the rules or the table.
        // An unguarded port's frames that can announce an address (ARP, ICMPv6) are still
        // checked, for discovery; the rest skip the guard without touching it.
        if (src.guard_all || announces(p)) && src.guard.wants(p) {
            let h = &self.hdrs[n][..hl];
            let smac = Mac(h[6..12].try_into().expect("an Ethernet header"));
            match src
                .guard
                .check(p, h, smac, src.segment, src.id, &table.owners)
            {
                Check::Pass => {}
                Check::Drop(r) => return r.into(),
                Check::Claim(claim) => self.punt(PuntItem::Claim {
                    port: src.id,
                    zone: src.segment,
                    claim,
                }),
                Check::Snoop => {
                    let mut buf = [0u8; DHCP_READ];
                    let off = self.vhdr + u32::from(p.l4_off) + 8;
                    let got = self.chains[n].read_at(off, &mut buf);
                    let udp = usize::from(p.l4_len).saturating_sub(8);
                    if let Some(reply) = dhcp_reply(&buf[..got.min(udp)]) {
                        self.punt(PuntItem::Dhcp {
                            port: src.id,
                            zone: src.segment,
                            reply,
                        });
                    }
                }
            }
        }
        let f = Filter {
            table: &self.sw.ct,
            epoch: table.epoch,
        };
        let to = match d {
            Dest::Port(m) => table.port(m),
            _ => None,
        };
        if !src.policy.filtered {
            match (d, to) {
                // Neither end has a firewall.
                (Dest::Port(_), Some(t)) if !t.policy.filtered => {
                    return Classified::Dest(d);
                }
                // A flood from an unfiltered port: each filtered member judges it.
                (Dest::Flood, _) => {
                    self.flood_check[n] = Some(FloodCheck::of(p));
                    return Classified::Dest(d);
                }
                _ => {}
            }
        }
        // Stage 1 hashed the connection key already.
        let decision = f.decide_hashed(
            p,
            src.segment,
            src.side(),
            to.map(PortEntry::side),
            now.secs,
            now.ms,
            self.hash[n],
        );
        if TRACE && n < self.traced {
            trace_decision(&mut self.traces[n], &decision);
        }
        match decision {
            Decision::Pass {
                conn,
                created,
                rules,
            } => {
                self.count_rules(table, &rules, len, created);
                if d != Dest::Flood {
                    return Classified::Dest(d);
                }
                // A flooded frame of a connection whose far end is known goes there only.
                if let (Some(slot), false) = (conn, created) {
                    let (owner, peer) = self.sw.ct.endpoints(slot);
                    let other = if src.id == owner { peer } else { owner };
                    if other != src.id
                        && table.port(other).is_some_and(|o| o.segment == src.segment)
                    {
                        return Classified::Dest(Dest::Port(other));
                    }
                }
                self.flood_check[n] = Some(FloodCheck::of(p));
                Classified::Dest(Dest::Flood)
            }
            Decision::Drop(r, rule) => {
                self.count_rules(table, &[rule, None], len, false);
                self.refused::<TRACE>(n, src, r, rule)
            }
            Decision::Reject(rule) => {
                self.count_rules(table, &[rule, None], len, false);
                if let Some(l) = reject(&self.hdrs[n][..hl], p, &mut self.replies[*nreplies]) {
                    self.reply_len[*nreplies] = l;
                    *nreplies += 1;
                }
                self.refused::<TRACE>(n, src, DropReason::PolicyReject, rule)
            }
        }
    }

    /// A drop decided by a policy is counted on the vNIC whose rule (or default) made it, in
    /// its direction: a frame the receiver's ingress policy refuses counts on the receiver,
    /// as `*_ingress`. Other drops count on the sender (by the caller).
    #[inline]
    fn refused<const TRACE: bool>(
        &mut self,
        n: usize,
        src: &PortEntry,
        r: DropReason,
        by: Option<RuleRef>,
    ) -> Classified {
        match by {
            Some(rr) if rr.vnic() != src.id || rr.is_ingress() => {
                let r = if rr.is_ingress() { r.ingress() } else { r };
                self.sw.workers[self.me].counters.port(rr.vnic()).drop(r);
                if TRACE && n < self.traced {
                    self.traces[n].verdict = Verdict::Dropped(r, rr.vnic());
                }
                Classified::Counted
            }
            _ => r.into(),
        }
    }

    // Always inlined: called for every frame from one stage, and LLVM's heuristics stopped inlining
    // it once the stage loops grew (about 10 instructions a frame each; scripts/framecost).
    #[inline(always)]
    fn count_rules(&self, table: &PortTable, rules: &[Option<RuleRef>; 2], len: u32, new: bool) {
        for r in rules.iter().flatten() {
            if let Some(p) = table.port(r.vnic()) {
                p.rules.count(self.me, r.is_ingress(), r.index(), len, new);
            }
        }
    }
}

/// Records the firewall's decision in a frame's trace.
#[cold]
fn trace_decision(t: &mut TraceRecord, d: &Decision) {
    match *d {
        Decision::Pass {
            conn,
            created,
            rules,
        } => {
            t.firewall = match (conn, created) {
                (_, true) => TraceEvent::Created,
                (Some(_), false) => TraceEvent::Found,
                (None, false) => TraceEvent::Passed,
            };
            t.rules = rules;
        }
        Decision::Drop(_, rule) | Decision::Reject(rule) => {
            t.firewall = TraceEvent::Refused;
            t.rules = [rule, None];
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::parse::parse;
    use crate::ruleset::{Rule, Ruleset};

    fn member(ingress: Action, non_ip: Action, nd: Action) -> Policy {
        let rules = [Rule {
            id: 1,
            src: Vec::new(),
            dst: Vec::new(),
            proto: Some(17),
            src_ports: Vec::new(),
            dst_ports: vec![53..=53],
            icmp_type: None,
            icmp_code: None,
            peer_groups: Vec::new(),
            action: Action::Allow,
        }];
        Policy {
            ingress: Arc::new(Ruleset::compile(&rules, ingress).unwrap()),
            non_ip,
            nd,
            ..Policy::allow_all()
        }
    }

    fn udp_to(port: u16) -> Packet {
        let f = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 255], 64)
            .udp(1000, port);
        let mut v = Vec::new();
        f.write(&mut v, &[0; 8]).unwrap();
        parse(&v, v.len()).unwrap()
    }

    #[test]
    fn each_member_judges_a_flood() {
        let strict = member(Action::Drop, Action::Drop, Action::Drop);
        let open = member(Action::Allow, Action::Allow, Action::Allow);
        let dns = FloodCheck::of(&udp_to(53));
        let other = FloodCheck::of(&udp_to(54));
        assert_eq!(dns.admits(&strict, &[]), Ok(()));
        assert_eq!(
            other.admits(&strict, &[]),
            Err(DropReason::PolicyDropIngress)
        );
        assert_eq!(other.admits(&open, &[]), Ok(()));
        assert_eq!(
            FloodCheck::NonIp.admits(&strict, &[]),
            Err(DropReason::NonIpDeniedIngress)
        );
        assert_eq!(
            FloodCheck::Nd.admits(&strict, &[]),
            Err(DropReason::NdDeniedIngress)
        );
        // A member without a firewall takes everything.
        assert_eq!(other.admits(&Policy::none(), &[]), Ok(()));
        assert_eq!(FloodCheck::NonIp.admits(&Policy::none(), &[]), Ok(()));
    }
}
