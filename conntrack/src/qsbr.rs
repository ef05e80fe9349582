//! Quiescent-state-based reclamation for table slots.
//!
//! Workers announce a quiescent state once per poll loop (they hold no reference to any table
//! slot between loop iterations). The reclaimer takes a snapshot of the counters after it
//! tombstones slots, and reuses those slots only once every worker has announced a later
//! quiescent state (or is offline). A worker therefore never sees a slot it is using change to
//! another connection under it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Marks a worker that holds no references (stopped, or not started).
const OFFLINE: u64 = u64::MAX;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Counter(AtomicU64);

/// Per-worker quiescence counters.
#[derive(Debug)]
pub struct Qsbr {
    workers: Box<[Counter]>,
}

/// The counters at one point in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Vec<u64>);

impl Qsbr {
    /// Counters for `n` workers, all offline.
    pub fn new(n: usize) -> Self {
        Qsbr {
            workers: (0..n).map(|_| Counter(AtomicU64::new(OFFLINE))).collect(),
        }
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are no workers.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Worker `w` holds no slot references right now (call once per poll loop).
    #[inline]
    pub fn quiescent(&self, w: usize) {
        let c = &self.workers[w].0;
        let v = c.load(Ordering::Relaxed);
        let next = if v == OFFLINE {
            0
        } else {
            v.wrapping_add(1) % OFFLINE
        };
        // Release: every slot access this worker made before this point happens-before the
        // reclaimer's Acquire load that sees the new value.
        c.store(next, Ordering::Release);
    }

    /// Worker `w` stops using the table (it exits or sleeps for long).
    pub fn offline(&self, w: usize) {
        self.workers[w].0.store(OFFLINE, Ordering::Release);
    }

    /// The current counters.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.workers
                .iter()
                .map(|c| c.0.load(Ordering::Acquire))
                .collect(),
        )
    }

    /// Whether every worker passed a quiescent state since `s` was taken.
    pub fn passed(&self, s: &Snapshot) -> bool {
        self.workers.iter().zip(&s.0).all(|(c, &then)| {
            let now = c.0.load(Ordering::Acquire);
            then == OFFLINE || now == OFFLINE || now != then
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_period_needs_every_worker() {
        let q = Qsbr::new(2);
        let s0 = q.snapshot();
        assert!(q.passed(&s0), "offline workers hold nothing");
        q.quiescent(0);
        q.quiescent(1);
        let s = q.snapshot();
        assert!(!q.passed(&s));
        q.quiescent(0);
        assert!(!q.passed(&s), "worker 1 has not moved");
        q.quiescent(1);
        assert!(q.passed(&s));
        let s = q.snapshot();
        q.offline(1);
        q.quiescent(0);
        assert!(q.passed(&s));
    }
}
