//! Stages `deliver` and `complete`: the burst into its destinations' guests, then the
//! sender's buffers back.
//!
//! - Takes: `dest[..n]`, `flood_check[..n]`, `chains[..n]` and `len[..n]`; reject answers in
//!   `replies[..nreplies]`.
//! - Does: per destination, its receive queue locked once for the burst, its buffers
//!   prefetched ahead of the copy, each frame copied once from the sender's guest memory into
//!   the receiver's; a flood is copied to every other member of the segment that admits it
//!   (`FloodCheck`); reject answers go into the sender's own receive queue. `complete` gives
//!   the sender's transmit buffers back and publishes the used ring once.
//! - Drops (on the receiving port): `port_down` (its receive ring is not running),
//!   `rx_no_buffers` and the other `bulwark_vhost::RxError`s, a member's refusal of a flood
//!   (`policy_drop_ingress`, `non_ip_denied_ingress`, `nd_denied_ingress`); on the sender,
//!   `no_destination` (a flood on a segment with no other member).
//! - Counters: `tx_packets`, `tx_bytes` of each receiving port (the sender's, for answers).

use bulwark_vhost::Queue;

use super::l2::Dest;
use super::worker::Worker;
use super::{PortEntry, PortTable, BURST, PREFETCH_RX};
use crate::counters::{bump, DropReason, PortCounters};

impl Worker<'_> {
    /// Delivers every frame of the burst that `decide` gave a destination: each destination's
    /// receive queue is locked once for the whole burst.
    // Inlined into the worker loop: out of line (one call per burst) the same instructions ran
    // 3.5 % slower in `scripts/bench --ab` (docs/PERFORMANCE.md, "Instructions per frame").
    #[inline(always)]
    pub(super) fn deliver_burst<const TRACE: bool>(
        &mut self,
        table: &PortTable,
        src: &PortEntry,
        hdr: u32,
        n: usize,
        mut flood: bool,
        sc: &PortCounters,
    ) {
        let members = &table.members[src.group];
        if flood && members.len() <= 1 {
            for d in &mut self.dest[..n] {
                if *d == Dest::Flood {
                    sc.drop(DropReason::NoDestination);
                    *d = Dest::Drop;
                }
            }
            flood = false;
        }
        if flood {
            for &m in members {
                if m != src.id {
                    self.deliver::<TRACE>(table, m, src.id, hdr, n, true);
                }
            }
        } else {
            let mut done = [0u16; BURST];
            let mut ndone = 0;
            for i in 0..n {
                if let Dest::Port(m) = self.dest[i] {
                    if !done[..ndone].contains(&m) {
                        done[ndone] = m;
                        ndone += 1;
                        self.deliver::<TRACE>(table, m, src.id, hdr, n, false);
                    }
                }
            }
        }
    }

    /// Gives the guest its transmit buffers back (used length 0: nothing was written) and
    /// publishes the used ring once.
    #[inline(always)]
    pub(super) fn complete(&mut self, q: &mut Queue, n: usize) {
        for c in &self.chains[..n] {
            q.ring.push_used(c.head, 0);
        }
        q.ring.publish_used();
    }

    /// Delivers the burst's reject answers to the sender's guest.
    #[inline]
    pub(super) fn answer(&mut self, src: &PortEntry, nreplies: usize) {
        let sc = self.sw.workers[self.me].counters.port(src.id);
        let mut guard = src.backend.rx_queue(self.me).lock();
        let Some(q) = guard.as_mut() else { return };
        for i in 0..nreplies {
            let frame = &self.replies[i][..self.reply_len[i]];
            match q
                .ring
                .enqueue_bytes(frame, q.hdr_len, q.mrg, &mut self.scratch)
            {
                Ok(()) => {
                    bump(&sc.tx_packets, 1);
                    bump(&sc.tx_bytes, frame.len() as u64);
                }
                Err(e) => {
                    sc.drop(e.into());
                    if q.ring.is_broken() {
                        q.broken_reported = true;
                        break;
                    }
                }
            }
        }
        q.ring.publish_used();
    }

    /// Copies the burst's frames bound for port `m` (and floods, when `flood`) into its guest.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "n is a burst count, at most BURST (32)"
    )]
    fn deliver<const TRACE: bool>(
        &mut self,
        table: &PortTable,
        m: u16,
        src: u16,
        hdr: u32,
        n: usize,
        flood: bool,
    ) {
        let counters = &self.sw.workers[self.me].counters;
        let dc = counters.port(m);
        let Some(dst) = table.port(m) else { return };
        debug_assert_ne!(m, src);
        let mut guard = dst.backend.rx_queue(self.me).lock();
        let Some(q) = guard.as_mut() else {
            for i in 0..n {
                if self.dest[i] == Dest::Port(m) || (flood && self.dest[i] == Dest::Flood) {
                    dc.drop(DropReason::PortDown);
                    if TRACE && i < self.traced {
                        self.traces[i]
                            .delivery_drop
                            .get_or_insert(DropReason::PortDown);
                    }
                }
            }
            return;
        };
        // The guest's buffers for the next frames: their descriptors now, their first lines
        // PREFETCH_RX frames ahead of the copy (each frame of a burst takes one buffer unless it
        // is larger than the guest's buffers).
        if q.ring.pending() < n as u16 {
            q.ring.refresh_avail();
        }
        q.ring.prefetch_avail(n as u16);
        q.ring.prefetch_used(n as u16);
        for k in 0..PREFETCH_RX {
            q.ring.prefetch_rx(k);
        }
        for i in 0..n {
            match self.dest[i] {
                Dest::Port(p) if p == m => {}
                Dest::Flood if flood => {
                    let groups = table.port(src).map_or(&[][..], |s| &s.policy.groups[..]);
                    if let Some(Err(r)) = self.flood_check[i].map(|c| c.admits(&dst.policy, groups))
                    {
                        dc.drop(r);
                        if TRACE && i < self.traced {
                            self.traces[i].delivery_drop.get_or_insert(r);
                        }
                        continue;
                    }
                }
                _ => continue,
            }
            q.ring.prefetch_rx(PREFETCH_RX);
            match q.ring.enqueue_frame(
                &self.chains[i],
                hdr,
                self.len[i],
                q.hdr_len,
                q.mrg,
                &mut self.scratch,
            ) {
                Ok(()) => {
                    bump(&dc.tx_packets, 1);
                    bump(&dc.tx_bytes, u64::from(self.len[i]));
                    if TRACE && i < self.traced {
                        self.traces[i].delivered += 1;
                    }
                }
                Err(e) => {
                    let r = DropReason::from(e);
                    dc.drop(r);
                    if TRACE && i < self.traced {
                        self.traces[i].delivery_drop.get_or_insert(r);
                    }
                    if q.ring.is_broken() {
                        q.broken_reported = true;
                        break;
                    }
                }
            }
        }
        q.ring.publish_used();
    }
}
