//! Driver side of a virtio 1.x split virtqueue (spec §2.7).
//!
//! ```text
//!   descriptor table (16 B * N)      avail ring (driver -> device)     used ring (device -> driver)
//!   +------+-----+-------+------+    +-------+-----+---------+-----+    +-------+-----+-----------+-----+
//!   | addr | len | flags | next |    | flags | idx | ring[N] | u_e |    | flags | idx | ring[N]   | a_e |
//!   +------+-----+-------+------+    +-------+-----+---------+-----+    +-------+-----+-----------+-----+
//!                                                     u16                           {id u32, len u32}
//! ```
//! `u_e` is `used_event` (written by us), `a_e` is `avail_event` (written by the device); both
//! only matter with `VIRTIO_F_EVENT_IDX`.
//!
//! The ring keeps a private shadow of everything it needs (free descriptor ids, the chains in
//! flight, the avail and used indexes), so nothing the device writes is trusted: every used
//! element is checked against the shadow before it frees anything.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mem::GuestMemory;
use crate::Error;

// Ring flags from virtio-bindings (u32 there; each fits the 16-bit flags fields).

/// Descriptor continues via `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
/// Buffer is device write-only.
pub const VIRTQ_DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
/// Buffer holds an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;
/// avail.flags: the driver does not want interrupts (ignored by the device under EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;
/// used.flags: the device does not want kicks (ignored by the driver under EVENT_IDX).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = virtio_ring::VRING_USED_F_NO_NOTIFY as u16;

/// `vring_need_event()` from the virtio spec §2.7.10 / Linux `virtio_ring.h`: with EVENT_IDX,
/// the other side asked to be notified when the index moves past `event`; we moved it from
/// `old` to `new`. Notify iff `event` lies in `[old, new)` (mod 2^16).
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Byte sizes of the three ring areas for a queue of `n` entries (including the event fields).
pub(crate) const fn ring_sizes(n: usize) -> (usize, usize, usize) {
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

/// One split virtqueue as seen by the driver.
#[derive(Debug)]
pub(crate) struct SplitQueue {
    /// Queue size (power of two).
    size: u16,
    /// Offsets of the three areas inside guest memory.
    pub(crate) desc_off: usize,
    pub(crate) avail_off: usize,
    pub(crate) used_off: usize,
    /// Next avail index we will fill (may be ahead of the published `avail.idx`).
    avail_shadow: u16,
    /// The `avail.idx` value we last published (the `old` of `vring_need_event`).
    published: u16,
    /// Next used index we will consume.
    last_used: u16,
    /// Whether VIRTIO_F_EVENT_IDX was negotiated.
    event_idx: bool,
    /// Free descriptor ids (a stack).
    free: Vec<u16>,
    /// Per head id: number of descriptors of the chain in flight, 0 if not in flight.
    chain_len: Vec<u16>,
    /// Shadow of the `next` fields we wrote, to free chains without trusting guest memory.
    chain_next: Vec<u16>,
    /// Descriptors currently owned by the device.
    in_flight: usize,
    /// Set once a hostile test pushed entries behind our back (`RawAccess`): used elements for
    /// ids we did not post are then expected and silently skipped by `reclaim`.
    raw: bool,
    /// Eventfd we write to notify the device (SET_VRING_KICK).
    pub(crate) kick: EventFd,
    /// Eventfd the device writes to notify us (SET_VRING_CALL). We poll, so it is never read.
    pub(crate) call: EventFd,
}

impl SplitQueue {
    /// A queue of `size` entries whose areas live at the given offsets (already zeroed).
    pub(crate) fn new(
        size: u16,
        desc_off: usize,
        avail_off: usize,
        used_off: usize,
    ) -> std::io::Result<Self> {
        debug_assert!(size.is_power_of_two());
        Ok(Self {
            size,
            desc_off,
            avail_off,
            used_off,
            avail_shadow: 0,
            published: 0,
            last_used: 0,
            event_idx: false,
            // Reversed so that ids are handed out 0, 1, 2, ... (nicer to read in traces).
            free: (0..size).rev().collect(),
            chain_len: vec![0; usize::from(size)],
            chain_next: vec![0; usize::from(size)],
            in_flight: 0,
            raw: false,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    pub(crate) fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// See the `raw` field.
    pub(crate) fn set_raw(&mut self) {
        self.raw = true;
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    #[cfg(test)]
    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    pub(crate) fn avail_shadow(&self) -> u16 {
        self.avail_shadow
    }

    #[cfg(test)]
    pub(crate) fn last_used(&self) -> u16 {
        self.last_used
    }

    fn slot(&self, idx: u16) -> usize {
        usize::from(idx & (self.size - 1))
    }

    /// Offset of `used_event` (avail.ring[size]).
    fn used_event_off(&self) -> usize {
        self.avail_off + 4 + 2 * usize::from(self.size)
    }

    /// Offset of `avail_event` (used.ring[size]).
    fn avail_event_off(&self) -> usize {
        self.used_off + 4 + 8 * usize::from(self.size)
    }

    /// Writes descriptor `index` verbatim (no validation of the values).
    ///
    /// # Panics
    /// If `index >= size`.
    pub(crate) fn write_desc(
        &self,
        mem: &GuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        assert!(index < self.size, "descriptor index {index} >= queue size");
        let off = self.desc_off + 16 * usize::from(index);
        // Relaxed: the device may only read descriptors reachable from a published avail
        // entry; the Release store of avail.idx in `publish` orders these stores before it.
        mem.store_u64(off, addr, Ordering::Relaxed);
        mem.store_u32(off + 8, len, Ordering::Relaxed);
        mem.store_u16(off + 12, flags, Ordering::Relaxed);
        mem.store_u16(off + 14, next, Ordering::Relaxed);
    }

    /// Writes `avail.ring[avail_shadow % size] = head` and advances the shadow index. The new
    /// entry is not visible to the device until `publish`.
    pub(crate) fn push_avail(&mut self, mem: &GuestMemory, head: u16) {
        let off = self.avail_off + 4 + 2 * self.slot(self.avail_shadow);
        // Relaxed: ordered before the device's view by the Release store in `publish`.
        mem.store_u16(off, head, Ordering::Relaxed);
        self.avail_shadow = self.avail_shadow.wrapping_add(1);
    }

    /// The id that `add_chain` would use as head for a chain of `n` descriptors.
    pub(crate) fn next_head(&self, n: usize) -> Option<u16> {
        (n > 0 && n <= self.free.len()).then(|| self.free[self.free.len() - n])
    }

    /// Builds a chain of `bufs` (`(gpa, len, write)`) from free descriptors and queues its head
    /// on the avail ring (unpublished). Returns the head id (the one `next_head` predicted), or
    /// `None` if too few descriptors are free.
    pub(crate) fn add_chain(
        &mut self,
        mem: &GuestMemory,
        bufs: &[(u64, u32, bool)],
    ) -> Option<u16> {
        let n = bufs.len();
        let head = self.next_head(n)?;
        // The chain uses the top `n` ids of the free stack, in stack order.
        let base = self.free.len() - n;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let id = self.free[base + k];
            let mut flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = if k + 1 < n {
                flags |= VIRTQ_DESC_F_NEXT;
                self.free[base + k + 1]
            } else {
                0
            };
            self.chain_next[usize::from(id)] = next;
            self.write_desc(mem, id, addr, len, flags, next);
        }
        self.free.truncate(base);
        // Cannot truncate: n <= free.len() <= size <= u16::MAX.
        self.chain_len[usize::from(head)] = u16::try_from(n).unwrap_or(u16::MAX);
        self.in_flight += n;
        self.push_avail(mem, head);
        Some(head)
    }

    /// Turns this queue into a fixed-id queue (rx): descriptor `i` always describes buffer `i`
    /// and is posted with `post_fixed`, so the free stack is not used.
    pub(crate) fn use_fixed_ids(&mut self) {
        self.free.clear();
    }

    /// Posts the single, fixed descriptor `id` (after `use_fixed_ids`; rx buffers, whose id is
    /// their slot). Returns false if `id` is out of range or already in flight.
    pub(crate) fn post_fixed(
        &mut self,
        mem: &GuestMemory,
        id: u16,
        addr: u64,
        len: u32,
        write: bool,
    ) -> bool {
        if id >= self.size || self.chain_len[usize::from(id)] != 0 {
            return false;
        }
        let flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
        self.write_desc(mem, id, addr, len, flags, 0);
        self.chain_len[usize::from(id)] = 1;
        self.in_flight += 1;
        self.push_avail(mem, id);
        true
    }

    /// Posts fixed descriptor `id` again without rewriting it: its contents are still what
    /// `post_fixed` wrote (a device never writes descriptors). Saves the cache-line transfer
    /// of the descriptor table on every buffer; for generators. False as for `post_fixed`.
    pub(crate) fn repost_fixed(&mut self, mem: &GuestMemory, id: u16) -> bool {
        if id >= self.size || self.chain_len[usize::from(id)] != 0 {
            return false;
        }
        self.chain_len[usize::from(id)] = 1;
        self.in_flight += 1;
        self.push_avail(mem, id);
        true
    }

    /// Queues a single-descriptor chain `(addr, len)` (device-readable) like `add_chain`, but
    /// skips writing the descriptor when `cached[id]` says it already holds `len` (the caller
    /// keeps `addr` a function of the id). Returns the id.
    pub(crate) fn add_single_cached(
        &mut self,
        mem: &GuestMemory,
        cached: &mut [u32],
        addr: impl Fn(u16) -> u64,
        len: u32,
    ) -> Option<u16> {
        let id = self.free.pop()?;
        if cached[usize::from(id)] != len {
            self.write_desc(mem, id, addr(id), len, 0, 0);
            cached[usize::from(id)] = len;
        }
        self.chain_next[usize::from(id)] = 0;
        self.chain_len[usize::from(id)] = 1;
        self.in_flight += 1;
        self.push_avail(mem, id);
        Some(id)
    }

    /// Makes every entry pushed so far visible to the device and returns whether the device
    /// must be kicked (EVENT_IDX `avail_event` rule, else `VIRTQ_USED_F_NO_NOTIFY`).
    pub(crate) fn publish(&mut self, mem: &GuestMemory) -> bool {
        let old = self.published;
        let new = self.avail_shadow;
        if old == new {
            return false;
        }
        // Release: synchronises with the device's Acquire load of avail.idx, so the descriptor
        // and avail-ring stores above are visible before it reads them (virtio_wmb in Linux).
        mem.store_u16(self.avail_off + 2, new, Ordering::Release);
        self.published = new;
        self.need_kick(mem, old, new)
    }

    /// Decides whether moving avail.idx from `old` to `new` needs a kick.
    fn need_kick(&self, mem: &GuestMemory, old: u16, new: u16) -> bool {
        // SeqCst fence: pairs with the device's full barrier between writing avail_event (or
        // clearing NO_NOTIFY) and re-reading avail.idx. Without it our load of avail_event below
        // could be satisfied before our avail.idx store is visible, and both sides could decide
        // not to act (Linux virtqueue_kick_prepare_split: virtio_mb).
        fence(Ordering::SeqCst);
        if self.event_idx {
            // Relaxed: the fence above provides the ordering.
            let event = mem.load_u16(self.avail_event_off(), Ordering::Relaxed);
            vring_need_event(event, new, old)
        } else {
            // Relaxed: the fence above provides the ordering.
            let flags = mem.load_u16(self.used_off, Ordering::Relaxed);
            flags & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    /// Stores avail.idx verbatim (hostile tests). The shadow index is left untouched.
    pub(crate) fn set_avail_idx_raw(&mut self, mem: &GuestMemory, idx: u16) {
        // Release: same pairing as in `publish`.
        mem.store_u16(self.avail_off + 2, idx, Ordering::Release);
    }

    /// Publishes the shadow avail index unconditionally (hostile tests), without kicking.
    pub(crate) fn publish_raw(&mut self, mem: &GuestMemory) {
        // Release: same pairing as in `publish`.
        mem.store_u16(self.avail_off + 2, self.avail_shadow, Ordering::Release);
        self.published = self.avail_shadow;
    }

    /// Sets avail.flags (e.g. `VIRTQ_AVAIL_F_NO_INTERRUPT`).
    pub(crate) fn set_avail_flags(&self, mem: &GuestMemory, flags: u16) {
        // Relaxed: a hint to the device; no data depends on it.
        mem.store_u16(self.avail_off, flags, Ordering::Relaxed);
    }

    /// Writes `used_event` so that, with EVENT_IDX, the device does not interrupt us (we poll):
    /// an event index just behind what we have consumed is only reached after a full 2^16 wrap.
    pub(crate) fn suppress_interrupts(&self, mem: &GuestMemory) {
        // Relaxed: a hint to the device; a stale value only costs an extra eventfd write.
        mem.store_u16(
            self.used_event_off(),
            self.last_used.wrapping_sub(1),
            Ordering::Relaxed,
        );
    }

    /// Current used.idx (Acquire).
    pub(crate) fn used_idx(&self, mem: &GuestMemory) -> u16 {
        // Acquire: synchronises with the device's Release store of used.idx, so the used
        // elements it wrote before are visible to our subsequent loads.
        mem.load_u16(self.used_off + 2, Ordering::Acquire)
    }

    /// Number of used elements published and not yet consumed. Fails if the device moved
    /// used.idx further than the ring can hold.
    pub(crate) fn used_pending(&self, mem: &GuestMemory, queue: usize) -> Result<u16, Error> {
        let used_idx = self.used_idx(mem);
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending > self.size {
            return Err(Error::UsedIdxJump {
                queue,
                last_used: self.last_used,
                used_idx,
            });
        }
        Ok(pending)
    }

    /// The `k`-th unconsumed used element `(id, len)`. Only call for `k < used_pending()`.
    pub(crate) fn used_elem(&self, mem: &GuestMemory, k: u16) -> (u32, u32) {
        let off = self.used_off + 4 + 8 * self.slot(self.last_used.wrapping_add(k));
        // Relaxed: ordered after the Acquire load of used.idx in `used_pending`.
        let id = mem.load_u32(off, Ordering::Relaxed);
        let len = mem.load_u32(off + 4, Ordering::Relaxed);
        (id, len)
    }

    /// Marks `n` used elements as consumed.
    pub(crate) fn advance_used(&mut self, n: u16) {
        self.last_used = self.last_used.wrapping_add(n);
    }

    /// Checks that `id` (from a used element) is the head of a chain in flight.
    pub(crate) fn check_head(&self, queue: usize, id: u32) -> Result<u16, Error> {
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.size)
            .ok_or(Error::UsedIdOutOfRange { queue, id })?;
        if self.chain_len[usize::from(head)] == 0 {
            return Err(Error::UsedIdNotInFlight { queue, id });
        }
        Ok(head)
    }

    /// Returns the chain headed by `head` to the free list (after `check_head`). Returns the
    /// number of descriptors freed.
    pub(crate) fn free_chain(&mut self, head: u16) -> u16 {
        let n = std::mem::replace(&mut self.chain_len[usize::from(head)], 0);
        let mut id = head;
        for k in 0..n {
            self.free.push(id);
            if k + 1 < n {
                id = self.chain_next[usize::from(id)];
            }
        }
        self.in_flight -= usize::from(n);
        n
    }

    /// Marks a fixed descriptor (see `post_fixed`) as returned, without putting it on the
    /// free list. Returns the number of descriptors (1) released.
    pub(crate) fn complete_fixed(&mut self, id: u16) {
        let n = std::mem::replace(&mut self.chain_len[usize::from(id)], 0);
        self.in_flight -= usize::from(n);
    }

    /// Reclaims every completed chain; returns (chains, descriptors) reclaimed. Bad used
    /// elements are skipped and the first such error is returned along with the counts.
    pub(crate) fn reclaim(
        &mut self,
        mem: &GuestMemory,
        queue: usize,
    ) -> (usize, usize, Option<Error>) {
        let pending = match self.used_pending(mem, queue) {
            Ok(p) => p,
            Err(e) => return (0, 0, Some(e)),
        };
        let (mut chains, mut descs, mut err) = (0, 0, None);
        for k in 0..pending {
            let (id, _len) = self.used_elem(mem, k);
            match self.check_head(queue, id) {
                Ok(head) => {
                    descs += usize::from(self.free_chain(head));
                    chains += 1;
                }
                Err(_) if self.raw => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        if pending > 0 {
            self.advance_used(pending);
            self.suppress_interrupts(mem);
        }
        (chains, descs, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy device: consumes avail entries and returns them on the used ring.
    struct FakeDevice {
        last_avail: u16,
        used_idx: u16,
    }

    impl FakeDevice {
        fn complete_all(&mut self, q: &SplitQueue, mem: &GuestMemory, len: u32) -> usize {
            let avail = mem.load_u16(q.avail_off + 2, Ordering::Acquire);
            let mut n = 0;
            while self.last_avail != avail {
                let slot = usize::from(self.last_avail % q.size());
                let head = mem.load_u16(q.avail_off + 4 + 2 * slot, Ordering::Relaxed);
                let uslot = usize::from(self.used_idx % q.size());
                mem.store_u32(q.used_off + 4 + 8 * uslot, head.into(), Ordering::Relaxed);
                mem.store_u32(q.used_off + 8 + 8 * uslot, len, Ordering::Relaxed);
                self.used_idx = self.used_idx.wrapping_add(1);
                self.last_avail = self.last_avail.wrapping_add(1);
                n += 1;
            }
            mem.store_u16(q.used_off + 2, self.used_idx, Ordering::Release);
            n
        }
    }

    fn setup(size: u16) -> (GuestMemory, SplitQueue) {
        let mem = GuestMemory::new(64 * 1024, 0x4000_0000).unwrap();
        let q = SplitQueue::new(size, 0, 8192, 16384).unwrap();
        (mem, q)
    }

    #[test]
    fn need_event_matches_spec() {
        // Device wants a kick once index 5 is passed.
        assert!(vring_need_event(5, 6, 5));
        assert!(vring_need_event(5, 10, 3));
        assert!(!vring_need_event(5, 5, 3));
        assert!(!vring_need_event(5, 8, 6));
        // Wraparound: event just below 0, we moved from 0xfffe to 2.
        assert!(vring_need_event(0xffff, 2, 0xfffe));
        assert!(vring_need_event(0, 2, 0xfffe));
        assert!(!vring_need_event(3, 2, 0xfffe));
        // No movement never needs a kick.
        assert!(!vring_need_event(7, 7, 7));
    }

    #[test]
    fn kick_decision_event_idx() {
        let (mem, mut q) = setup(8);
        q.set_event_idx(true);
        // avail_event = 0: the device wants to hear about entry 0.
        q.add_chain(&mem, &[(0x4000_1000, 60, false)]).unwrap();
        assert!(q.publish(&mem));
        // Device has not moved avail_event (still 0) -> no kick for 1 -> 2.
        q.add_chain(&mem, &[(0x4000_1000, 60, false)]).unwrap();
        assert!(!q.publish(&mem));
        // Device asks for a kick after index 2.
        mem.store_u16(q.avail_event_off(), 2, Ordering::Relaxed);
        q.add_chain(&mem, &[(0x4000_1000, 60, false)]).unwrap();
        assert!(q.publish(&mem));
        // Nothing new published: never kick.
        assert!(!q.publish(&mem));
    }

    #[test]
    fn kick_decision_no_notify_flag() {
        let (mem, mut q) = setup(8);
        q.add_chain(&mem, &[(0x4000_1000, 60, false)]).unwrap();
        assert!(q.publish(&mem));
        mem.store_u16(q.used_off, VIRTQ_USED_F_NO_NOTIFY, Ordering::Relaxed);
        q.add_chain(&mem, &[(0x4000_1000, 60, false)]).unwrap();
        assert!(!q.publish(&mem));
    }

    #[test]
    fn index_wraparound_and_reclaim() {
        let (mem, mut q) = setup(4);
        let mut dev = FakeDevice {
            last_avail: 0,
            used_idx: 0,
        };
        // Push far more than 2^16 entries through a 4-entry ring, in mixed chain lengths.
        let mut total = 0usize;
        for round in 0..40_000u32 {
            let chain = if round % 3 == 0 { 2 } else { 1 };
            let mut added = 0;
            while let Some(_h) = q.add_chain(&mem, &vec![(0x4000_2000, 64, false); chain]) {
                added += 1;
            }
            assert!(added >= 1);
            assert_eq!(q.free_count(), 4 - added * chain);
            q.publish(&mem);
            assert_eq!(
                mem.load_u16(q.avail_off + 2, Ordering::Relaxed),
                q.avail_shadow()
            );
            assert_eq!(dev.complete_all(&q, &mem, 0), added);
            let (chains, descs, err) = q.reclaim(&mem, 1);
            assert!(err.is_none());
            assert_eq!((chains, descs), (added, added * chain));
            assert_eq!(q.in_flight(), 0);
            assert_eq!(q.free_count(), 4);
            total += added;
        }
        assert!(total > 65_536);
        assert_eq!(q.last_used(), dev.used_idx);
    }

    #[test]
    fn chain_layout() {
        let (mem, mut q) = setup(8);
        let head = q
            .add_chain(&mem, &[(0x4000_0100, 12, false), (0x4000_0200, 60, false)])
            .unwrap();
        let d0 = q.desc_off + 16 * usize::from(head);
        assert_eq!(mem.load_u64(d0, Ordering::Relaxed), 0x4000_0100);
        assert_eq!(mem.load_u32(d0 + 8, Ordering::Relaxed), 12);
        assert_eq!(mem.load_u16(d0 + 12, Ordering::Relaxed), VIRTQ_DESC_F_NEXT);
        let next = mem.load_u16(d0 + 14, Ordering::Relaxed);
        let d1 = q.desc_off + 16 * usize::from(next);
        assert_eq!(mem.load_u64(d1, Ordering::Relaxed), 0x4000_0200);
        assert_eq!(mem.load_u16(d1 + 12, Ordering::Relaxed), 0);
        assert_eq!(q.in_flight(), 2);
    }

    #[test]
    fn bad_used_elements_are_rejected() {
        let (mem, mut q) = setup(4);
        let head = q.add_chain(&mem, &[(0x4000_0100, 12, false)]).unwrap();
        q.publish(&mem);
        // Device returns an out-of-range id, a not-in-flight id, then the real one.
        for (k, id) in [99u32, u32::from(head) + 1, u32::from(head)]
            .iter()
            .enumerate()
        {
            mem.store_u32(q.used_off + 4 + 8 * k, *id, Ordering::Relaxed);
        }
        mem.store_u16(q.used_off + 2, 3, Ordering::Release);
        let (chains, descs, err) = q.reclaim(&mem, 1);
        assert_eq!((chains, descs), (1, 1));
        assert!(matches!(err, Some(Error::UsedIdOutOfRange { id: 99, .. })));
        // A used.idx jump beyond the ring size is refused outright.
        mem.store_u16(q.used_off + 2, 100, Ordering::Release);
        let (_, _, err) = q.reclaim(&mem, 1);
        assert!(matches!(err, Some(Error::UsedIdxJump { .. })));
    }
}
