//! The MAC learning table: (segment, MAC) -> port, shared by all workers without locks.
//!
//! Layout: a fixed array of slots (size from config, a power of two). A slot holds
//! `key = segment << 48 | mac` (segment ids start at 1, so 0 means "empty"),
//! `val = last_seen_secs << 32 | port`, and a sequence number `seq`. A key hashes (seeded, so a
//! guest cannot aim its MACs at one bucket) to a window of `PROBE` consecutive slots; lookups
//! scan the window.
//!
//! Each slot is a seqlock. A writer (a worker learning, or the control thread flushing a
//! removed port) takes the slot by moving `seq` from even to odd with a CAS, writes key and val,
//! and releases it by storing the next even value; if the slot is already taken, the writer
//! skips this update (learning happens again on the next frame), so no one ever waits. A reader
//! loads `seq`, key and val, then `seq` again, and trusts the pair only if `seq` was even and
//! unchanged: it can never pair a key with another key's port. An inconsistent read is a miss,
//! and a miss floods within the segment, which is always safe.
//!
//! Two workers learning the same new MAC at the same instant may both insert it; lookups and
//! learning scan in the same order and use the first copy, and the spare copy ages out. Aging is
//! lazy: an entry older than the aging time reads as a miss and its slot may be reused; nothing
//! scans the table on the fast path. Learning writes only when the port changes or the entry is
//! more than a second old, so a busy flow does not bounce the slot's cache line between cores.

use std::hash::BuildHasher;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crate::wire::Mac;

/// Slots scanned per key.
const PROBE: usize = 8;

#[derive(Debug, Default)]
struct Slot {
    seq: AtomicU32,
    key: AtomicU64,
    val: AtomicU64,
}

impl Slot {
    /// A consistent (key, val) snapshot, or None while a writer holds the slot.
    #[inline]
    fn read(&self) -> Option<(u64, u64)> {
        // Acquire: pairs with the writer's Release store of the even seq that ended its write,
        // so the key and val read below are at least that new.
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let k = self.key.load(Ordering::Relaxed);
        let v = self.val.load(Ordering::Relaxed);
        // Acquire fence: the key/val loads above complete before the seq re-check below; if a
        // writer's stores were seen, its odd seq (made visible before them by its Release
        // fence) is seen too, and the snapshot is rejected.
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == s1).then_some((k, v))
    }

    /// Takes the slot for writing if no one holds it; returns the seq to pass to `unlock`.
    #[inline]
    fn try_lock(&self) -> Option<u32> {
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 != 0 {
            return None;
        }
        // Acquire: we see the previous writer's key/val. The Release fence then orders our odd
        // seq before the key/val stores that follow (the seqlock writer protocol).
        self.seq
            .compare_exchange(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        fence(Ordering::Release);
        Some(s)
    }

    #[inline]
    fn unlock(&self, s: u32) {
        // Release: the key/val stores happen-before a reader's Acquire load of this seq.
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
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
    // Always inlined: called for every frame from one stage, and LLVM's heuristics stopped inlining
    // it once the stage loops grew (about 10 instructions a frame each; scripts/framecost).
    #[inline(always)]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits of a slot's packed value"
    )]
    pub fn lookup(&self, segment: u16, mac: Mac, now: u32) -> Option<u16> {
        let key = key_of(segment, mac);
        for s in self.window(key) {
            if s.key.load(Ordering::Relaxed) != key {
                continue;
            }
            return match s.read() {
                Some((k, v)) if k == key && self.fresh(v, now) => Some(v as u16),
                _ => None,
            };
        }
        None
    }

    /// Records that `mac` was seen on `port` in `segment`.
    // Always inlined: called for every frame from one stage, and LLVM's heuristics stopped inlining
    // it once the stage loops grew (about 10 instructions a frame each; scripts/framecost).
    #[inline(always)]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits, and the time the high 32, of a slot's packed value"
    )]
    pub fn learn(&self, segment: u16, mac: Mac, port: u16, now: u32) {
        let key = key_of(segment, mac);
        let val = (u64::from(now) << 32) | u64::from(port);
        let window = self.window(key);
        for s in window {
            if s.key.load(Ordering::Relaxed) != key {
                continue;
            }
            let Some((k, old)) = s.read() else { return };
            if k != key {
                break; // replaced under us: insert below
            }
            if old as u16 == port && now.wrapping_sub((old >> 32) as u32) < 1 {
                return;
            }
            if let Some(q) = s.try_lock() {
                // Re-check under the lock: the slot may have changed hands since the read.
                if s.key.load(Ordering::Relaxed) == key {
                    s.val.store(val, Ordering::Relaxed);
                }
                s.unlock(q);
            }
            return;
        }
        // New entry: take an empty or aged slot, else evict the stalest.
        let mut victim: Option<(&Slot, u64, u64)> = None;
        let mut oldest = u32::MAX;
        for s in window {
            let Some((k, v)) = s.read() else { continue };
            if k == 0 || !self.fresh(v, now) {
                victim = Some((s, k, v));
                break;
            }
            let seen = (v >> 32) as u32;
            if seen < oldest {
                oldest = seen;
                victim = Some((s, k, v));
            }
        }
        let Some((s, k, v)) = victim else { return };
        if let Some(q) = s.try_lock() {
            // Only if the slot still holds what we chose to evict.
            if s.key.load(Ordering::Relaxed) == k && s.val.load(Ordering::Relaxed) == v {
                s.key.store(key, Ordering::Relaxed);
                s.val.store(val, Ordering::Relaxed);
            }
            s.unlock(q);
        }
    }

    /// Forgets everything learned on `port` (control thread, after the port left the workers).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits of a slot's packed value"
    )]
    pub fn flush_port(&self, port: u16) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            match s.read() {
                Some((k, v)) if k != 0 && v as u16 == port => {}
                _ => continue,
            }
            // The port is gone from the workers, so nothing re-learns it; a busy slot belongs
            // to a worker learning another key, so waiting for it is short.
            let q = loop {
                if let Some(q) = s.try_lock() {
                    break q;
                }
                std::hint::spin_loop();
            };
            if s.key.load(Ordering::Relaxed) != 0 && s.val.load(Ordering::Relaxed) as u16 == port {
                s.key.store(0, Ordering::Relaxed);
                s.val.store(0, Ordering::Relaxed);
                n += 1;
            }
            s.unlock(q);
        }
        n
    }

    /// The live entries (slow path; for the API).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits of a slot's packed value"
    )]
    pub fn entries(&self, now: u32) -> Vec<MacEntry> {
        let mut out = Vec::new();
        for s in self.slots.iter() {
            let Some((k, v)) = s.read() else { continue };
            if k == 0 || !self.fresh(v, now) {
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
                    let other = (p + 1) % 4;
                    for round in 1..2000u32 {
                        for i in 0..200 {
                            let m = mac(p * 1000 + i);
                            t.learn(7, m, p as u16, round);
                            if let Some(got) = t.lookup(7, m, round) {
                                assert_eq!(got, p as u16);
                            }
                            // Another thread's MAC: its owner's port, or a miss.
                            if let Some(got) = t.lookup(7, mac(other * 1000 + i), round) {
                                assert_eq!(got, other as u16);
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
