//! Stage `decide`, and in it the L2 decision: per frame, where it goes.
//!
//! - Takes, per frame i: `early[i]` and `hdrs[i]` (from `headers`), the port table, the MAC
//!   table.
//! - Per frame, in order: the L2 decision (`classify`: check the source, find the
//!   destination); then, on a filtered segment, the firewall stage (`firewall.rs`); then, for
//!   a frame that passed both, learning its source MAC. A frame the sender's policy (or the
//!   port's MAC binding) drops never teaches the table that another VM's MAC lives here.
//! - Passes on: `dest[i]` (a port, a flood, or nowhere), `flood_check[i]` for flooded frames
//!   that members must judge, and reject answers in `replies`.
//! - Drops (on the sending port): `vlan_tagged` (a tag other than a priority tag),
//!   `bad_source_mac` (group or zero), `src_mac_spoofed` (a bound port's frame from another
//!   source MAC), `same_port` (the destination is the sender), and what `headers` decided.
//! - Counters: none besides the drops.

use super::punt::{L2Decision, Verdict};
use super::worker::{Now, Worker};
use super::{PortEntry, PortTable};
use crate::counters::{DropReason, PortCounters};
use crate::mac_table::MacTable;
use crate::wire::{EthernetFrame, ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETH_HEADER_LEN};

impl Dest {
    fn traced(self) -> L2Decision {
        match self {
            Dest::Drop => L2Decision::Drop(DropReason::NoDestination),
            Dest::Port(p) => L2Decision::Port(p),
            Dest::Flood => L2Decision::Flood,
        }
    }
}

impl Worker<'_> {
    /// Decides every frame of the burst; returns whether any is flooded.
    #[allow(clippy::too_many_arguments)]
    // Inlined into the worker loop: out of line (one call per burst) the same instructions ran
    // 3.5 % slower in `scripts/bench --ab` (docs/PERFORMANCE.md, "Instructions per frame").
    #[inline(always)]
    pub(super) fn decide<const TRACE: bool>(
        &mut self,
        table: &PortTable,
        src: &PortEntry,
        n: usize,
        filtering: bool,
        now: Now,
        nreplies: &mut usize,
        sc: &PortCounters,
    ) -> bool {
        let sw = self.sw;
        let mut flood = false;
        for i in 0..n {
            let dest = match self.early[i] {
                Some(r) => r.into(),
                None => {
                    let h: &[u8; L2_HEADER_LEN] = self.hdrs[i].first_chunk().expect("headroom");
                    let l2 = classify(&sw.macs, table, src, h, self.len[i], now.secs);
                    if TRACE && i < self.traced {
                        self.traces[i].l2 = Some(match l2 {
                            Classified::Dest(d) => d.traced(),
                            Classified::Drop(r) => L2Decision::Drop(r),
                            Classified::Counted => L2Decision::Drop(DropReason::NoDestination),
                        });
                    }
                    match l2 {
                        Classified::Dest(d) if !filtering => Classified::Dest(d),
                        Classified::Dest(d) => {
                            self.filter::<TRACE>(table, src, i, d, now, nreplies)
                        }
                        drop => drop,
                    }
                }
            };
            self.dest[i] = match dest {
                Classified::Drop(r) => {
                    self.dropped += 1;
                    sc.drop(r);
                    if TRACE && i < self.traced {
                        self.traces[i].verdict = Verdict::Dropped(r, src.id);
                    }
                    Dest::Drop
                }
                // Counted by the firewall stage, which traced it too.
                Classified::Counted => {
                    self.dropped += 1;
                    Dest::Drop
                }
                Classified::Dest(d) => {
                    let smac = EthernetFrame::new_checked(&self.hdrs[i][..]).map(|e| e.src());
                    if let Some(m) = smac {
                        sw.macs.learn(src.segment, m, src.id, now.secs);
                    }
                    flood |= d == Dest::Flood;
                    if TRACE && i < self.traced {
                        self.traces[i].verdict = Verdict::Forwarded(d.traced());
                    }
                    d
                }
            };
        }
        flood
    }
}

/// Where the L2 stage sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dest {
    /// Nowhere (dropped).
    Drop,
    /// To this port.
    Port(u16),
    /// To the other members of the segment.
    Flood,
}

/// A stage's verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Classified {
    Drop(DropReason),
    /// Dropped, and already counted (on the vNIC whose policy refused it).
    Counted,
    Dest(Dest),
}

impl From<DropReason> for Classified {
    fn from(r: DropReason) -> Self {
        Classified::Drop(r)
    }
}

/// What the L2 stage reads of a frame: the Ethernet header and one 802.1Q tag.
pub(super) const L2_HEADER_LEN: usize = ETH_HEADER_LEN + 4;

/// L2 decision for one frame of `len` bytes from `src`: check its source, find its
/// destination. (Its source is learned once the frame has passed the filter too.)
// Always inlined: called for every frame from one stage, and LLVM's heuristics stopped inlining
// it once the stage loops grew (about 10 instructions a frame each; scripts/framecost).
#[inline(always)]
pub(super) fn classify(
    macs: &MacTable,
    table: &PortTable,
    src: &PortEntry,
    h: &[u8; L2_HEADER_LEN],
    len: u32,
    now: u32,
) -> Classified {
    let Some(eth) = EthernetFrame::new_checked(&h[..]) else {
        return DropReason::FrameTooShort.into();
    };
    if eth.is_tagged() && !priority_tagged(h, len) {
        return DropReason::VlanTagged.into();
    }
    let (smac, dmac) = (eth.src(), eth.dst());
    if smac.is_group() || smac.is_zero() {
        return DropReason::BadSourceMac.into();
    }
    if src.mac.is_some_and(|m| m != smac) {
        return DropReason::SrcMacSpoofed.into();
    }
    if dmac.is_group() {
        return Classified::Dest(Dest::Flood);
    }
    match macs.lookup(src.segment, dmac, now) {
        Some(p) if p == src.id => DropReason::SamePort.into(),
        // The table is keyed by segment, but check the port too: a port id may have been
        // re-used on another segment since the entry was learned.
        Some(p) if table.port(p).is_some_and(|d| d.segment == src.segment) => {
            Classified::Dest(Dest::Port(p))
        }
        // Not learned (yet): a port bound to that MAC is its destination all the same, so its
        // frames are unicast, and judged with the receiver known (its group rules apply).
        _ => match table.bound.get(&(src.segment, dmac)) {
            Some(&p) if p == src.id => DropReason::SamePort.into(),
            Some(&p) => Classified::Dest(Dest::Port(p)),
            None => Classified::Dest(Dest::Flood),
        },
    }
}

/// A priority-tagged frame: one 802.1Q tag with VLAN id 0 (only a priority), which 802.1Q
/// treats as untagged. It is switched as it is; the parser looks past the tag, so the
/// firewall judges what it carries.
#[inline]
pub(super) fn priority_tagged(h: &[u8; L2_HEADER_LEN], len: u32) -> bool {
    let ethertype = u16::from_be_bytes([h[12], h[13]]);
    let tci = u16::from_be_bytes([h[14], h[15]]);
    let inner = u16::from_be_bytes([h[16], h[17]]);
    len as usize >= L2_HEADER_LEN
        && ethertype == ETHERTYPE_VLAN
        && tci & 0x0fff == 0
        && inner != ETHERTYPE_VLAN
        && inner != ETHERTYPE_QINQ
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::filter::Policy;
    use crate::switch::port::Backend;
    use crate::switch::{PortEntry, PortTable, RuleCounters};
    use crate::wire::Mac;

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];

    fn entry(id: u16, segment: u16, mac: Option<[u8; 6]>) -> PortEntry {
        let policy = Arc::new(Policy::none());
        PortEntry {
            id,
            segment,
            mac: mac.map(Mac),
            guard: Arc::default(),
            guard_all: false,
            backend: Backend::Vhost(Arc::new(bulwark_vhost::NetDevice::default())),
            rules: Arc::new(RuleCounters::new(&policy, 1)),
            policy,
            policy_epoch: 0,
            group: 0,
        }
    }

    /// Ports 0 (A, bound to its MAC) and 1 (B) on segment 10, port 2 on segment 20.
    fn table() -> PortTable {
        PortTable {
            ports: vec![
                Some(entry(0, 10, Some(A))),
                Some(entry(1, 10, None)),
                Some(entry(2, 20, None)),
            ],
            ..Default::default()
        }
    }

    fn header(dst: [u8; 6], src: [u8; 6], ethertype: u16, tci: Option<u16>) -> [u8; L2_HEADER_LEN] {
        let mut h = [0u8; L2_HEADER_LEN];
        h[..6].copy_from_slice(&dst);
        h[6..12].copy_from_slice(&src);
        match tci {
            Some(t) => {
                h[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
                h[14..16].copy_from_slice(&t.to_be_bytes());
                h[16..18].copy_from_slice(&ethertype.to_be_bytes());
            }
            None => h[12..14].copy_from_slice(&ethertype.to_be_bytes()),
        }
        h
    }

    #[test]
    fn the_l2_decision_frame_by_frame() {
        let t = table();
        let macs = MacTable::new(1024, 300);
        let (a, b) = (t.port(0).unwrap(), t.port(1).unwrap());
        let ip = 0x0800;
        let go = |src: &PortEntry, h: [u8; L2_HEADER_LEN]| classify(&macs, &t, src, &h, 60, 5);
        // Unknown unicast floods; broadcast floods.
        assert_eq!(go(a, header(B, A, ip, None)), Classified::Dest(Dest::Flood));
        assert_eq!(
            go(a, header([0xff; 6], A, ip, None)),
            Classified::Dest(Dest::Flood)
        );
        // Learned: to the port, on the same segment only.
        macs.learn(10, Mac(B), 1, 5);
        assert_eq!(
            go(a, header(B, A, ip, None)),
            Classified::Dest(Dest::Port(1))
        );
        macs.learn(10, Mac(A), 0, 5);
        assert_eq!(
            go(a, header(A, A, ip, None)),
            Classified::Drop(DropReason::SamePort)
        );
        // A MAC learned on a port that has since moved to another segment is not trusted.
        macs.learn(10, Mac([2, 0, 0, 0, 0, 2]), 2, 5);
        assert_eq!(
            go(a, header([2, 0, 0, 0, 0, 2], A, ip, None)),
            Classified::Dest(Dest::Flood)
        );
        // Bad and spoofed sources.
        assert_eq!(
            go(b, header(A, [0; 6], ip, None)),
            Classified::Drop(DropReason::BadSourceMac)
        );
        assert_eq!(
            go(b, header(A, [0x01, 0, 0x5e, 0, 0, 1], ip, None)),
            Classified::Drop(DropReason::BadSourceMac)
        );
        assert_eq!(
            go(a, header(B, B, ip, None)),
            Classified::Drop(DropReason::SrcMacSpoofed)
        );
        // An unbound port may send from any unicast MAC (the policy issue's spoof guard binds
        // addresses).
        assert_eq!(
            go(b, header(A, [2, 0, 0, 0, 0, 9], ip, None)),
            Classified::Dest(Dest::Port(0))
        );
        // Tags: a priority tag is untagged, any other VLAN id is refused, QinQ too.
        assert_eq!(
            go(a, header(B, A, ip, Some(0x6000))),
            Classified::Dest(Dest::Port(1))
        );
        assert_eq!(
            go(a, header(B, A, ip, Some(0x0005))),
            Classified::Drop(DropReason::VlanTagged)
        );
        assert_eq!(
            go(a, header(B, A, ETHERTYPE_VLAN, Some(0))),
            Classified::Drop(DropReason::VlanTagged)
        );
    }

    #[test]
    fn a_bound_mac_is_a_destination_before_it_is_learned() {
        let mut t = table();
        t.bound.insert((10, Mac(A)), 0);
        let macs = MacTable::new(1024, 300);
        let (a, b, c) = (t.port(0).unwrap(), t.port(1).unwrap(), t.port(2).unwrap());
        let go = |src: &PortEntry, h| classify(&macs, &t, src, &h, 60, 5);
        assert_eq!(
            go(b, header(A, B, 0x0800, None)),
            Classified::Dest(Dest::Port(0))
        );
        assert_eq!(
            go(a, header(A, A, 0x0800, None)),
            Classified::Drop(DropReason::SamePort)
        );
        // Only on its own segment.
        assert_eq!(
            go(c, header(A, [2, 0, 0, 0, 0, 3], 0x0800, None)),
            Classified::Dest(Dest::Flood)
        );
    }

    #[test]
    fn a_priority_tag_needs_the_whole_tag() {
        let h = header(B, A, 0x0800, Some(0));
        assert!(priority_tagged(&h, 60));
        assert!(!priority_tagged(&h, 17), "a frame that ends inside the tag");
        assert!(!priority_tagged(&header(B, A, ETHERTYPE_QINQ, Some(0)), 60));
    }
}
