//! A worker: its loop, its burst storage, and the frame path as a sequence of stages.
//!
//! ```text
//!  poll_port(port, queue pair):
//!    take      (take.rs)      pop <= 32 chains from the guest's transmit ring
//!    headers   (headers.rs)   length checks, copy headers, parse, hash, prefetch the table
//!    decide    (l2.rs, firewall.rs), per frame: L2 decision, then the filter, then learn
//!    deliver   (deliver.rs)   per destination: lock its receive ring once, copy the frames;
//!                             reject answers to the sender
//!    trace     (punt.rs)      only while the port is traced: one record per frame, punted
//!    complete  (deliver.rs)   give the guest its transmit buffers back, publish once
//! ```
//!
//! Each stage's file says what it takes, what it passes on, its drop reasons and its
//! counters. The stages pass frames on through the worker's burst arrays (`Worker`'s fields,
//! indexed by the frame's position in the burst), never by copying them, so the burst-wise,
//! prefetching shape of the loop is kept: each stage runs over the whole burst before the next
//! starts, which is what lets one stage's prefetches land before the next stage's reads.
//!
//! Ports: the worker reaches a port's frames only through `PortEntry::backend` (see
//! `port.rs`), so a port need not be a vhost-user device.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use bulwark_vhost::Chain;

use super::firewall::FloodCheck;
use super::l2::Dest;
use super::punt::{PuntItem, TraceRecord};
use super::{PortEntry, PortTable, Switch, BURST, IDLE_SPINS};
use crate::counters::{bump, DropReason, PortCounters};
use crate::parse::{Packet, ParseError, HEADROOM};
use crate::reply::MAX_REPLY;

/// One worker's private state: all burst storage is allocated here, once.
pub(super) struct Worker<'a> {
    pub(super) sw: &'a Switch,
    pub(super) me: usize,
    pub(super) chains: Box<[Chain]>,
    pub(super) scratch: Box<[Chain]>,
    pub(super) dest: [Dest; BURST],
    pub(super) len: [u32; BURST],
    /// Per flooded frame: how members judge it.
    pub(super) flood_check: [Option<FloodCheck>; BURST],
    /// Each frame's headers (the first `HEADROOM` bytes), parsed packet, connection hash, and
    /// a drop decided before the L2 stage.
    pub(super) hdrs: Box<[[u8; HEADROOM]]>,
    pub(super) pkts: Box<[Result<Packet, ParseError>]>,
    pub(super) hash: [Option<u64>; BURST],
    pub(super) early: [Option<DropReason>; BURST],
    /// Reject answers built during the burst, for the sender.
    pub(super) replies: Box<[[u8; MAX_REPLY]]>,
    pub(super) reply_len: [usize; BURST],
    /// Frames of this burst that are traced (the first `traced`; 0 when the port is not).
    pub(super) traced: usize,
    pub(super) traces: Box<[TraceRecord]>,
    /// The virtio-net header length of the burst's port (where a frame starts in its chain).
    pub(super) vhdr: u32,
    /// Per port id: how long its polls are deferred (`Backoff`).
    backoff: Box<[Backoff]>,
    /// Frames of the current burst the decide stage dropped (for `Backoff`).
    pub(super) dropped: usize,
}

/// A port whose bursts are mostly dropped on the way in (a guest flooding new connections
/// past its limits, or traffic its policy denies) is polled less: after such a burst its next
/// `2^level - 1` polls are skipped, `level` growing by one per such burst up to
/// `BACKOFF_MAX`, and back to 0 after a burst that mostly passes. Its frames wait in its own
/// transmit ring, so the flood costs the worker one burst in `2^BACKOFF_MAX` passes instead of
/// its share of every pass; other ports keep theirs (`scripts/flood-bench`). A busy worker's
/// pass takes microseconds, so even the longest deferral is short for a guest that recovers.
#[derive(Clone, Copy, Default)]
struct Backoff {
    level: u8,
    skip: u16,
}

/// The longest deferral: 2^7 - 1 = 127 passes.
const BACKOFF_MAX: u8 = 7;
/// A burst this size or larger with at least three quarters of its frames dropped raises the
/// level; one with less than a quarter dropped resets it.
const BACKOFF_MIN_BURST: usize = 8;

/// Switch-clock seconds for `elapsed` since boot, never 0 (0 marks "never seen").
pub(super) fn secs(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX - 1) + 1
}

/// A worker's cached view of the published port table (one pointer compare per pass).
pub(super) type TableCache<'a> = Cache<&'a ArcSwap<PortTable>, Arc<PortTable>>;

/// What one poll loop iteration sees: the clock.
#[derive(Clone, Copy)]
pub(super) struct Now {
    pub(super) secs: u32,
    pub(super) ms: u32,
}

impl<'a> Worker<'a> {
    pub(super) fn new(sw: &'a Switch, me: usize) -> Self {
        Worker {
            sw,
            me,
            chains: vec![Chain::default(); BURST].into_boxed_slice(),
            scratch: vec![Chain::default(); 8].into_boxed_slice(),
            dest: [Dest::Drop; BURST],
            len: [0; BURST],
            flood_check: [None; BURST],
            hdrs: vec![[0; HEADROOM]; BURST].into_boxed_slice(),
            pkts: vec![Err(ParseError::Truncated); BURST].into_boxed_slice(),
            hash: [None; BURST],
            early: [None; BURST],
            replies: vec![[0u8; MAX_REPLY]; BURST].into_boxed_slice(),
            reply_len: [0; BURST],
            traced: 0,
            traces: vec![TraceRecord::EMPTY; BURST].into_boxed_slice(),
            vhdr: 0,
            backoff: vec![Backoff::default(); crate::MAX_PORTS].into_boxed_slice(),
            dropped: 0,
        }
    }

    pub(super) fn run(mut self) {
        let slot = &self.sw.workers[self.me];
        if let Some(&cpu) = self.sw.cfg.workers.get(self.me) {
            if let Err(e) = crate::sys::pin_to_cpu(cpu) {
                log::warn!("worker {}: cannot pin to CPU {cpu}: {e}", self.me);
            }
        }
        let mut cache = Cache::new(&self.sw.table);
        let mut idle = 0u32;
        while !self.sw.stop.load(Ordering::Relaxed) {
            if self.pass(&mut cache) > 0 {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
                if self.sw.cfg.idle_sleep_us > 0 && idle >= IDLE_SPINS {
                    std::thread::sleep(Duration::from_micros(self.sw.cfg.idle_sleep_us));
                }
            }
        }
        self.sw.ct.qsbr().offline(self.me);
        slot.running.store(false, Ordering::Release);
    }

    /// One pass of the loop: a quiescent point, the port table, the clock, then one burst from
    /// each queue this worker polls. Returns frames taken.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "milliseconds wrap after 49 days; the rate limits compare them wrapping"
    )]
    pub(super) fn pass(&mut self, cache: &mut TableCache<'a>) -> usize {
        let slot = &self.sw.workers[self.me];
        // No connection slot is held across passes.
        self.sw.ct.qsbr().quiescent(self.me);
        let table = cache.load();
        if slot.seen.load(Ordering::Relaxed) != table.generation {
            // Release: everything this worker did with older tables happens-before the
            // control thread's Acquire load in `wait_quiescent`.
            slot.seen.store(table.generation, Ordering::Release);
        }
        // One clock read per pass: seconds for timeouts and aging, milliseconds (wrapping
        // after 49 days) for the connection rate limits.
        let elapsed = crate::sys::boot_clock();
        let now = Now {
            secs: secs(elapsed),
            ms: elapsed.as_millis() as u32,
        };
        let mut work = 0;
        if let Some(queues) = table.polled.get(self.me) {
            for &(id, q) in queues {
                if let Some(b) = self.backoff.get_mut(usize::from(id)) {
                    if b.skip > 0 {
                        b.skip -= 1;
                        bump(&slot.deferred_polls, 1);
                        continue;
                    }
                }
                if let Some(p) = table.port(id) {
                    work += self.poll_port(table, p, usize::from(q), now);
                }
            }
        }
        bump(
            if work > 0 {
                &slot.busy_polls
            } else {
                &slot.idle_polls
            },
            1,
        );
        work
    }

    /// Moves up to one burst from queue pair `qp` of port `src`'s guest to its destinations,
    /// stage by stage. Returns frames taken.
    fn poll_port(&mut self, table: &PortTable, src: &PortEntry, qp: usize, now: Now) -> usize {
        let sc = self.sw.workers[self.me].counters.port(src.id);
        let Some(mut guard) = src.backend.tx_queue(qp).try_lock() else {
            return 0;
        };
        let Some(q) = guard.as_mut() else { return 0 };
        if !super::take::has_work(q, sc) {
            return 0;
        }
        let hdr = q.hdr_len;
        let filtering = table.filtered[src.group];
        let (n, taken) = self.take(q, sc);
        self.traced = 0;
        if self.sw.traced(src.id) {
            self.trace_begin(src, qp, n, hdr, now);
        }
        // The stages are compiled twice: without the trace (whose per-frame checks then vanish)
        // and with it, for bursts of a traced port.
        let nreplies = if self.traced > 0 {
            self.stages_traced(table, src, hdr, n, filtering, now, sc)
        } else {
            self.stages::<false>(table, src, hdr, n, filtering, now, sc)
        };
        if nreplies > 0 {
            self.answer(src, nreplies);
        }
        if self.traced > 0 {
            self.trace_end();
        }
        self.complete(q, n);
        self.back_off(src.id, n);
        taken
    }

    /// Updates port `id`'s `Backoff` after a burst of `n` frames.
    #[inline]
    fn back_off(&mut self, id: u16, n: usize) {
        let dropped = std::mem::take(&mut self.dropped);
        if n < BACKOFF_MIN_BURST {
            return;
        }
        let Some(b) = self.backoff.get_mut(usize::from(id)) else {
            return;
        };
        if 4 * dropped >= 3 * n {
            b.level = (b.level + 1).min(BACKOFF_MAX);
            b.skip = (1u16 << b.level) - 1;
        } else if 4 * dropped < n {
            b.level = 0;
        }
    }

    /// The middle stages over one taken burst: headers, decide, deliver. Returns the reject
    /// answers built. With `TRACE`, each stage also fills the records of the burst's first
    /// `traced` frames.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn stages<const TRACE: bool>(
        &mut self,
        table: &PortTable,
        src: &PortEntry,
        hdr: u32,
        n: usize,
        filtering: bool,
        now: Now,
        sc: &PortCounters,
    ) -> usize {
        self.headers::<TRACE>(table, src, hdr, n, filtering, sc);
        let mut nreplies = 0;
        let flood = self.decide::<TRACE>(table, src, n, filtering, now, &mut nreplies, sc);
        self.deliver_burst::<TRACE>(table, src, hdr, n, flood, sc);
        nreplies
    }

    /// `stages` with the trace, out of line so that the untraced loop keeps its inlining.
    #[allow(clippy::too_many_arguments)]
    #[cold]
    #[inline(never)]
    fn stages_traced(
        &mut self,
        table: &PortTable,
        src: &PortEntry,
        hdr: u32,
        n: usize,
        filtering: bool,
        now: Now,
        sc: &PortCounters,
    ) -> usize {
        self.stages::<true>(table, src, hdr, n, filtering, now, sc)
    }

    /// Claims trace budget for the burst's frames and starts their records.
    #[cold]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "queue pairs (<= 16) and workers (<= CPUs) fit in 16 bits, the trace head length (<= 64) in 8"
    )]
    fn trace_begin(&mut self, src: &PortEntry, qp: usize, n: usize, hdr: u32, now: Now) {
        let k = self.sw.claim_trace(src.id, n);
        for i in 0..k {
            let c = &self.chains[i];
            let len = c.total.saturating_sub(hdr);
            let mut r = TraceRecord::EMPTY;
            r.port = src.id;
            r.queue = qp as u16;
            r.worker = self.me as u16;
            r.secs = now.secs;
            r.len = len;
            let hl = (len as usize).min(r.head.len());
            if c.total >= hdr {
                c.read_at(hdr, &mut r.head[..hl]);
                r.head_len = hl as u8;
            }
            self.traces[i] = r;
        }
        self.traced = k;
    }

    /// Punts the burst's trace records (dropped and counted when the ring is full).
    #[cold]
    fn trace_end(&mut self) {
        for i in 0..self.traced {
            self.punt(PuntItem::Trace(self.traces[i]));
        }
    }

    /// Hands an item to the control threads; a full ring drops it (counted).
    #[cold]
    pub(super) fn punt(&self, item: PuntItem) {
        if !self.sw.punts.push(self.me, item) {
            bump(&self.sw.workers[self.me].punt_dropped, 1);
        }
    }
}
