//! Stage `take`: the burst, out of the sending guest's transmit ring.
//!
//! - Takes: the port's transmit queue (its lock held by the caller).
//! - Passes on: `chains[..n]`, each a validated descriptor chain (ranges inside guest memory,
//!   direction, length bounded), with the descriptors and each chain's first data line
//!   prefetched; and the used-ring lines the burst will complete, prefetched for writing.
//! - Drops (on the sending port): every `bulwark_vhost::ChainError` as its reason (`desc_*`,
//!   `desc_chain_too_long`, ...; the bad chain is completed with length 0 at once) and
//!   `ring_broken` (counted once per ring: the ring is unusable until the frontend sets it up
//!   again).
//! - Counters: none of its own besides the drops (`rx_packets` is counted by `headers`).

use bulwark_vhost::{Pop, Queue};

use super::worker::Worker;
use super::BURST;
use crate::counters::{DropReason, PortCounters};

/// Whether the queue has frames to take (false also counts a broken ring, once).
#[inline(always)]
pub(super) fn has_work(q: &mut Queue, sc: &PortCounters) -> bool {
    if q.ring.pending() == 0 && q.ring.refresh_avail() == 0 {
        if q.ring.is_broken() && !q.broken_reported {
            q.broken_reported = true;
            sc.drop(DropReason::RingBroken);
        }
        return false;
    }
    true
}

impl Worker<'_> {
    /// Pops up to `BURST` good chains into `chains`; returns (good chains, entries taken).
    #[inline(always)]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "burst counts, at most 2 * BURST (64)"
    )]
    pub(super) fn take(&mut self, q: &mut Queue, sc: &PortCounters) -> (usize, usize) {
        let hdr = q.hdr_len;
        let mut n = 0;
        let mut taken = 0;
        // The descriptors are prefetched first, then each chain's first data line as soon as
        // the chain is known, so that the guest's lines arrive in parallel rather than one
        // miss after another.
        q.ring.prefetch_avail(BURST as u16);
        // Bad chains do not count towards n, so bound the loop by the ring's worth as well.
        while n < BURST && taken < 2 * BURST {
            taken += 1;
            match q.ring.pop(&mut self.chains[n], false) {
                Pop::Chain => {}
                Pop::Bad(e) => {
                    sc.drop(e.into());
                    q.ring.push_used(self.chains[n].head, 0);
                    continue;
                }
                Pop::Empty => break,
                Pop::Broken => {
                    if !q.broken_reported {
                        q.broken_reported = true;
                        sc.drop(DropReason::RingBroken);
                    }
                    break;
                }
            }
            self.chains[n].prefetch(hdr);
            n += 1;
        }
        // The used entries that will complete these chains: the guest reads them, so their
        // lines are fetched for writing now rather than stalled on at the end of the burst.
        q.ring.prefetch_used(taken as u16);
        (n, taken)
    }
}
