//! The MAC learning table: (segment, MAC) -> port, shared by all workers without locks.
//!
//! Layout: a fixed array of slots (size from config, a power of two), each a pair of atomics:
//! `key = segment << 48 | mac` (segment ids start at 1, so 0 means "empty") and
//! `val = last_seen_secs << 32 | port`. A key hashes (seeded, so a guest cannot aim its MACs
//! at one bucket) to a window of `PROBE` consecutive slots; lookups scan the whole window.
//!
//! Writers are the workers that receive frames (learning) and the control thread (flushing a
//! removed port). A new entry is written as: `val = 0` (reads as "miss"), CAS the key in, then
//! store the real `val`. A reader loads key, then val, then the key again, and trusts `val` only
//! if the key did not change, so it never pairs a key with another key's port. Two workers
//! learning the same new MAC at the same instant may both insert it; lookups take the first, and
//! the spare copy ages out. Aging is lazy: an entry older than the aging time reads as a miss and
//! its slot may be reused; nothing scans the table on the fast path.
//!
//! Learning writes only when the port changes or the entry is more than a second old, so a busy
//! flow does not bounce the slot's cache line between cores.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::Mac;

/// Slots scanned per key.
const PROBE: usize = 8;

#[derive(Debug, Default)]
#[repr(C, align(16))]
struct Slot {
    key: AtomicU64,
    val: AtomicU64,
}

/// One learned address, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacEntry {
    /// Segment id.
    pub segment: u16,
    /// The address.
    pub mac: Mac,
    /// Port id it was learned on.
    pub port: u16,
    /// Seconds since it was last seen.
    pub age_secs: u32,
}

/// The shared MAC table.
#[derive(Debug)]
pub struct MacTable {
    slots: Box<[Slot]>,
    mask: usize,
    seed: u64,
    aging_secs: u32,
}

#[inline]
fn key_of(segment: u16, mac: Mac) -> u64 {
    (u64::from(segment) << 48) | mac.to_u64()
}

impl MacTable {
    /// A table of at least `size` slots (rounded up to a power of two, at least `PROBE`).
    pub fn new(size: usize, aging_secs: u32) -> Self {
        let size = size.max(PROBE).next_power_of_two();
        let seed =
            std::collections::hash_map::RandomState::new().hash_one(0x0062_756c_7761_726b_u64);
        MacTable {
            slots: (0..size + PROBE).map(|_| Slot::default()).collect(),
            mask: size - 1,
            seed: seed | 1,
            aging_secs,
        }
    }

    #[inline]
    fn window(&self, key: u64) -> &[Slot] {
        let h = (key ^ (self.seed >> 7)).wrapping_mul(self.seed);
        let i = ((h >> 32) as usize) & self.mask;
        &self.slots[i..i + PROBE]
    }

    #[inline]
    fn fresh(&self, val: u64, now: u32) -> bool {
        let seen = (val >> 32) as u32;
        seen != 0 && now.wrapping_sub(seen) < self.aging_secs
    }

    /// The port `mac` was last seen on in `segment`, unless unknown or aged out. `now` is the
    /// worker's clock in seconds (never 0).
    #[inline]
    pub fn lookup(&self, segment: u16, mac: Mac, now: u32) -> Option<u16> {
        let key = key_of(segment, mac);
        for s in self.window(key) {
            // Acquire on both: a val stored after a key CAS is only seen with that key (see the
            // module docs for the key/val/key protocol).
            if s.key.load(Ordering::Acquire) != key {
                continue;
            }
            let val = s.val.load(Ordering::Acquire);
            if s.key.load(Ordering::Acquire) != key {
                continue;
            }
            if self.fresh(val, now) {
                return Some(val as u16);
            }
        }
        None
    }

    /// Records that `mac` was seen on `port` in `segment`.
    #[inline]
    pub fn learn(&self, segment: u16, mac: Mac, port: u16, now: u32) {
        let key = key_of(segment, mac);
        let val = (u64::from(now) << 32) | u64::from(port);
        let window = self.window(key);
        for s in window {
            if s.key.load(Ordering::Acquire) == key {
                let old = s.val.load(Ordering::Relaxed);
                // val == 0: the slot is mid-change by another writer; leave it alone.
                if old != 0 && (old as u16 != port || now.wrapping_sub((old >> 32) as u32) >= 1) {
                    // CAS, not store: if another writer evicted this key meanwhile (val went to
                    // 0 and on to the new key's value), our update must not land on its key.
                    // Release: pairs with the readers' Acquire load of val.
                    let _ = s
                        .val
                        .compare_exchange(old, val, Ordering::Release, Ordering::Relaxed);
                }
                return;
            }
        }
        // New entry: take an empty or aged slot, else evict the stalest.
        let mut victim = None;
        let mut oldest = u32::MAX;
        for s in window {
            let k = s.key.load(Ordering::Acquire);
            let v = s.val.load(Ordering::Relaxed);
            if k == 0 || !self.fresh(v, now) {
                victim = Some((s, k));
                break;
            }
            let seen = (v >> 32) as u32;
            if seen < oldest {
                oldest = seen;
                victim = Some((s, k));
            }
        }
        let Some((s, k)) = victim else { return };
        // val = 0 first, so a reader racing with the key change sees a miss, not a stale port.
        s.val.store(0, Ordering::Release);
        // AcqRel: the new key is published after val = 0; losing the race means another
        // writer took the slot, and this frame's learning is simply skipped.
        if s.key
            .compare_exchange(k, key, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            s.val.store(val, Ordering::Release);
        }
    }

    /// Forgets everything learned on `port` (control thread, after the port left the workers).
    pub fn flush_port(&self, port: u16) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            let k = s.key.load(Ordering::Acquire);
            let v = s.val.load(Ordering::Acquire);
            if k != 0 && v != 0 && v as u16 == port {
                s.val.store(0, Ordering::Release);
                if s.key
                    .compare_exchange(k, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// The live entries (slow path; for the API).
    pub fn entries(&self, now: u32) -> Vec<MacEntry> {
        let mut out = Vec::new();
        for s in self.slots.iter() {
            let k = s.key.load(Ordering::Acquire);
            let v = s.val.load(Ordering::Acquire);
            if k == 0 || !self.fresh(v, now) || s.key.load(Ordering::Acquire) != k {
                continue;
            }
            out.push(MacEntry {
                segment: (k >> 48) as u16,
                mac: Mac::from_u64(k & 0xffff_ffff_ffff),
                port: v as u16,
                age_secs: now.wrapping_sub((v >> 32) as u32),
            });
        }
        out.sort_by_key(|e| (e.segment, e.mac));
        out.dedup_by_key(|e| (e.segment, e.mac));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        Mac([2, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learns_moves_and_ages() {
        let t = MacTable::new(64, 300);
        assert_eq!(t.lookup(10, mac(1), 1), None);
        t.learn(10, mac(1), 3, 1);
        assert_eq!(t.lookup(10, mac(1), 1), Some(3));
        // Segments are separate tables.
        assert_eq!(t.lookup(20, mac(1), 1), None);
        // A MAC that moves is re-learned.
        t.learn(10, mac(1), 4, 2);
        assert_eq!(t.lookup(10, mac(1), 2), Some(4));
        // Aging.
        assert_eq!(t.lookup(10, mac(1), 2 + 299), Some(4));
        assert_eq!(t.lookup(10, mac(1), 2 + 300), None);
        assert!(t.entries(2 + 300).is_empty());
    }

    #[test]
    fn full_window_evicts_stalest_and_flush_works() {
        let t = MacTable::new(8, 300);
        for i in 0..100 {
            t.learn(1, mac(i), (i % 5) as u16, 1 + i);
        }
        // The newest entry is always found.
        assert_eq!(t.lookup(1, mac(99), 100), Some(4));
        let before = t.entries(100).len();
        assert!(before > 0 && before <= 16);
        let flushed = t.flush_port(4);
        assert!(flushed >= 1);
        assert_eq!(t.lookup(1, mac(99), 100), None);
        assert!(t.entries(100).iter().all(|e| e.port != 4));
    }

    #[test]
    fn concurrent_learning_never_returns_a_foreign_port() {
        // Each thread owns a disjoint MAC range and a port; lookups must only ever return the
        // owner's port (or miss), whatever eviction does.
        let t = std::sync::Arc::new(MacTable::new(256, 1000));
        let hs: Vec<_> = (0..4u32)
            .map(|p| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for round in 1..200u32 {
                        for i in 0..200 {
                            let m = mac(p * 1000 + i);
                            t.learn(7, m, p as u16, round);
                            if let Some(got) = t.lookup(7, m, round) {
                                assert_eq!(got, p as u16);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}
