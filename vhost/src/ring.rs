//! The device side of a virtio split virtqueue, for poll-mode cores.
//!
//! Unlike `virtio-queue`, this ring is built for bursts: ring addresses are translated to host
//! pointers once when the ring starts, a burst reads `avail.idx` once, used elements are written
//! one by one but `used.idx` is published once per burst, and the guest is notified (an eventfd
//! write) at most once per burst and only when it asked (EVENT_IDX `used_event`, or the
//! `VRING_AVAIL_F_NO_INTERRUPT` flag).
//!
//! Guest input is hostile. Every descriptor is copied out of guest memory once and validated
//! from the copy (no double fetch): its address range must lie inside one memory region, its
//! direction must match the queue, INDIRECT is refused (not negotiated), chains are bounded by
//! `MAX_CHAIN` descriptors (which also ends loops), and total lengths cannot overflow. A bad
//! chain is returned to the guest with length 0 and reported to the caller, which counts it. An
//! `avail.idx` that runs more than the ring size ahead, or an avail entry naming a descriptor
//! outside the table, leaves the ring in a state no device can interpret: the ring is marked
//! broken and is not touched again until the frontend sets it up anew.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use virtio_bindings::{virtio_net, virtio_ring};

use crate::guest_mem::GuestMemory;

/// The virtio-net header with `num_buffers` (VERSION_1 or MRG_RXBUF negotiated): 12 bytes.
pub const NET_HDR_LEN: usize = std::mem::size_of::<virtio_net::virtio_net_hdr_v1>();
/// The legacy virtio-net header, without `num_buffers`: 10 bytes.
pub const NET_HDR_LEN_LEGACY: usize = std::mem::size_of::<virtio_net::virtio_net_hdr>();
/// Where `num_buffers` sits in the header.
const NUM_BUFFERS_OFF: usize = std::mem::offset_of!(virtio_net::virtio_net_hdr_v1, num_buffers);

/// Most descriptors accepted in one chain. Linux's virtio-net uses at most 19 (header, linear
/// part, 17 fragments); anything longer, or a loop, is refused.
pub const MAX_CHAIN: usize = 32;
/// Largest queue size accepted (the virtio limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// A ring flag of virtio-bindings (a u32 there) as the 16-bit flags field holds it; a flag
/// that did not fit would stop the build (the constants below are evaluated at compile time).
#[expect(
    clippy::cast_possible_truncation,
    reason = "checked just above: the value is below 2^16"
)]
const fn flag16(f: u32) -> u16 {
    assert!(f <= u16::MAX as u32, "a ring flag wider than 16 bits");
    f as u16
}

const VRING_DESC_F_NEXT: u16 = flag16(virtio_ring::VRING_DESC_F_NEXT);
const VRING_DESC_F_WRITE: u16 = flag16(virtio_ring::VRING_DESC_F_WRITE);
const VRING_DESC_F_INDIRECT: u16 = flag16(virtio_ring::VRING_DESC_F_INDIRECT);
const VRING_USED_F_NO_NOTIFY: u16 = flag16(virtio_ring::VRING_USED_F_NO_NOTIFY);
const VRING_AVAIL_F_NO_INTERRUPT: u16 = flag16(virtio_ring::VRING_AVAIL_F_NO_INTERRUPT);

/// Why a descriptor chain was refused. Each maps to a named drop reason in the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// a descriptor points outside guest memory
    OutOfBounds,
    /// a chain is longer than MAX_CHAIN descriptors or loops
    TooLong,
    /// descriptor lengths overflow
    LenOverflow,
    /// a descriptor has the wrong direction or the (not negotiated) INDIRECT flag
    BadFlags,
    /// a descriptor's `next` lies outside the descriptor table
    NextOutOfRange,
}

/// Why a ring could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// queue size is zero, not a power of two, or too large
    BadSize,
    /// a ring address is not inside guest memory
    AddrNotMapped,
    /// a ring address is misaligned
    Misaligned,
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RingError::BadSize => "queue size is zero, not a power of two, or too large",
            RingError::AddrNotMapped => "a ring address is not inside guest memory",
            RingError::Misaligned => "a ring address is misaligned",
        })
    }
}

/// One host-mapped buffer of a chain.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seg {
    /// Host address (inside a `GuestMemory` mapping kept alive by the ring's `Arc`).
    pub addr: usize,
    /// Length in bytes.
    pub len: u32,
}

/// A validated descriptor chain: where its bytes are in host memory.
#[derive(Debug, Clone, Copy)]
pub struct Chain {
    /// Head descriptor index (returned in the used ring).
    pub head: u16,
    /// Number of valid entries in `segs`.
    pub nsegs: u8,
    /// Total bytes over all segments.
    pub total: u32,
    /// The segments, in chain order.
    pub segs: [Seg; MAX_CHAIN],
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            head: 0,
            nsegs: 0,
            total: 0,
            segs: [Seg::default(); MAX_CHAIN],
        }
    }
}

/// Asks the CPU to bring the cache line at `addr` in (a hint: never faults, no visible effect).
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 never faults whatever the address and has no architectural effect;
    // SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Like `prefetch`, announcing a write: PREFETCHW brings the line in exclusive, so the store
/// that follows does not wait for the guest's core to give it up. Guest buffers and used rings
/// were last touched by the guest's vCPU, and those transfers, not instructions, are what a
/// switch core mostly waits for (perf shows the stores stalling). LLVM emits PREFETCHW only
/// when compiling for `prfchw`, which the x86-64 baseline lacks, hence the asm and the
/// (cached) run-time check; without the feature it is a plain prefetch.
#[inline(always)]
fn prefetch_write(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if *HAS_PREFETCHW {
            // SAFETY: PREFETCHW exists on this CPU (checked above); like every prefetch it
            // never faults, whatever the address, and has no architectural effect.
            unsafe {
                std::arch::asm!(
                    "prefetchw byte ptr [{0}]",
                    in(reg) addr,
                    options(nostack, readonly, preserves_flags)
                );
            }
        } else {
            prefetch(addr);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// CPUID 8000_0001h ECX bit 8: PREFETCHW (AMD's 3DNowPrefetch; Intel since Broadwell).
#[cfg(target_arch = "x86_64")]
static HAS_PREFETCHW: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    use std::arch::x86_64::__cpuid;
    // Leaf 8000_0001h only if the extended range reaches it.
    __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
});

impl Chain {
    /// Prefetches the first cache line of the chain's data (its headers), so that reading them
    /// a little later does not wait for memory.
    #[inline]
    pub fn prefetch(&self, skip: u32) {
        let mut skip = skip as usize;
        for s in &self.segs[..self.nsegs as usize] {
            if skip < s.len as usize {
                prefetch(s.addr + skip);
                return;
            }
            skip -= s.len as usize;
        }
    }

    /// Copies up to `out.len()` bytes starting at byte `skip` of the chain; returns the count.
    ///
    /// The chain's segments must come from a ring whose memory is still mapped: callers hold the
    /// ring (and so its `Arc<GuestMemory>`) for as long as they hold the chain.
    pub fn read_at(&self, skip: u32, out: &mut [u8]) -> usize {
        let mut skip = skip as usize;
        let mut done = 0;
        for s in &self.segs[..self.nsegs as usize] {
            let len = s.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(out.len() - done);
            // SAFETY: `s.addr..s.addr+len` was bounds-checked against a live mapping when the
            // chain was read (see `SplitRing::read_chain`), `skip + n <= len`, and `out` has room
            // for `n` more bytes. Guest memory may change under us; we copy bytes, never trust
            // them as Rust values.
            unsafe {
                std::ptr::copy((s.addr + skip) as *const u8, out.as_mut_ptr().add(done), n);
            }
            done += n;
            skip = 0;
            if done == out.len() {
                break;
            }
        }
        done
    }
}

/// What `SplitRing::pop` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pop {
    /// No chain available.
    Empty,
    /// `out` holds a valid chain.
    Chain,
    /// The chain at `out.head` is invalid; it was consumed and must be returned with `push_used`.
    Bad(ChainError),
    /// The ring is broken (see module docs).
    Broken,
}

/// Why a frame could not be written into a guest's receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxError {
    /// the guest posted no (or not enough) receive buffers
    NoBuffers,
    /// the guest's receive buffer is too small (MRG_RXBUF not negotiated)
    BufferTooSmall,
    /// the guest's receive descriptor chain is invalid
    BadChain(ChainError),
    /// the guest's receive ring is broken
    Broken,
}

/// Everything needed to start a ring, as collected from SET_VRING_* messages.
#[derive(Debug, Clone, Default)]
pub struct RingConfig {
    /// Queue size (SET_VRING_NUM).
    pub size: u16,
    /// Frontend-virtual addresses (SET_VRING_ADDR).
    pub desc_uva: u64,
    /// Frontend-virtual address of the available ring.
    pub avail_uva: u64,
    /// Frontend-virtual address of the used ring.
    pub used_uva: u64,
    /// Next available index to process (SET_VRING_BASE).
    pub base: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// The call eventfd (SET_VRING_CALL), if any.
    pub call: Option<Arc<File>>,
    /// Dirty logging (live migration): set while the frontend asks for it.
    pub log: Option<RingLog>,
}

/// What a ring needs to log the guest pages it writes while the frontend migrates the guest.
#[derive(Debug, Clone)]
pub struct RingLog {
    /// The frontend's dirty-page bitmap.
    pub log: Arc<crate::guest_mem::DirtyLog>,
    /// Guest-physical address of the used ring (SET_VRING_ADDR's `log_guest_addr`).
    pub used_gpa: u64,
}

/// The device side of one split virtqueue.
#[derive(Debug)]
pub struct SplitRing {
    mem: Arc<GuestMemory>,
    size: u16,
    mask: u16,
    desc: usize,
    avail: usize,
    used: usize,
    /// Next avail entry to consume.
    last_avail: u16,
    /// `avail.idx` as last read.
    avail_idx: u16,
    /// Next used entry to write.
    used_shadow: u16,
    /// `used.idx` as last published.
    used_published: u16,
    event_idx: bool,
    call: Option<Arc<File>>,
    broken: bool,
    /// Dirty logging, while the guest migrates: every guest page written is marked.
    log: Option<RingLog>,
}

impl SplitRing {
    /// Translates and validates a ring; takes its position from `cfg.base`, resynchronised with
    /// the guest's `used.idx` when the two differ (as DPDK does after a backend restart).
    pub fn new(mem: Arc<GuestMemory>, cfg: &RingConfig) -> Result<Self, RingError> {
        let size = cfg.size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(RingError::BadSize);
        }
        let n = u64::from(size);
        // desc: 16 bytes each; avail: flags, idx, ring[n], used_event; used: flags, idx,
        // ring[n] of 8 bytes, avail_event.
        let desc = mem
            .translate_uva(cfg.desc_uva, 16 * n)
            .ok_or(RingError::AddrNotMapped)?;
        let avail = mem
            .translate_uva(cfg.avail_uva, 6 + 2 * n)
            .ok_or(RingError::AddrNotMapped)?;
        let used = mem
            .translate_uva(cfg.used_uva, 6 + 8 * n)
            .ok_or(RingError::AddrNotMapped)?;
        if desc % 16 != 0 || avail % 2 != 0 || used % 4 != 0 {
            return Err(RingError::Misaligned);
        }
        let mut ring = SplitRing {
            mem,
            size,
            mask: size - 1,
            desc,
            avail,
            used,
            last_avail: cfg.base,
            avail_idx: cfg.base,
            used_shadow: cfg.base,
            used_published: cfg.base,
            event_idx: cfg.event_idx,
            call: cfg.call.clone(),
            broken: false,
            log: cfg.log.clone(),
        };
        let used_idx = ring.u16_at(ring.used + 2).load(Ordering::Acquire);
        if used_idx != cfg.base {
            log::warn!(
                "vring base {} differs from the guest's used.idx {used_idx}; resyncing to used.idx",
                cfg.base
            );
            ring.last_avail = used_idx;
            ring.avail_idx = used_idx;
            ring.used_shadow = used_idx;
            ring.used_published = used_idx;
        }
        // We poll: ask the guest not to kick us. With EVENT_IDX the guest kicks only when
        // avail.idx crosses avail_event, which we never advance, so kicks all but stop too.
        if !ring.event_idx {
            ring.u16_at(ring.used)
                .store(VRING_USED_F_NO_NOTIFY, Ordering::Relaxed);
        }
        ring.log_used();
        Ok(ring)
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Next available index the device will process (GET_VRING_BASE answers this).
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// Whether the ring was found broken.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The memory table this ring translates through.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    #[inline]
    fn u16_at(&self, addr: usize) -> &AtomicU16 {
        // SAFETY: every address passed here lies inside the avail or used ring, which `new`
        // bounds-checked against the mapping held alive by `self.mem`, and is 2-byte aligned
        // (ring bases are checked for alignment and all offsets used are even).
        unsafe { &*(addr as *const AtomicU16) }
    }

    /// Reads `avail.idx` and returns how many chains are waiting. Marks the ring broken (and
    /// returns 0) if the guest has more than a ring's worth of buffers out: made available and
    /// not yet returned in a published `used.idx`.
    ///
    /// Measured from the published `used.idx`, not from the next chain to consume: a driver
    /// owns at most `size` descriptors, so no correct one can be further ahead of what it was
    /// given back, and one that is (it made a descriptor available again while the device
    /// still had it) would have the device write more used elements before a publication than
    /// the used ring holds, each over the one a ring before it (the fuzz target `ring` found a
    /// mergeable frame's two buffers completed into the one slot of a 1-entry ring).
    #[inline]
    pub fn refresh_avail(&mut self) -> u16 {
        if self.broken {
            return 0;
        }
        // Acquire: pairs with the driver's write barrier before it stores avail.idx, so the
        // ring entries and descriptors it published are visible to the reads that follow.
        let idx = self.u16_at(self.avail + 2).load(Ordering::Acquire);
        let out = idx.wrapping_sub(self.used_published);
        let pending = idx.wrapping_sub(self.last_avail);
        // `pending > size` too: an index moved back behind what was consumed.
        if out > self.size || pending > self.size {
            log::warn!(
                "guest avail.idx {idx} is {out} ahead of the published used.idx {} and {pending} \
                 of the next chain {} (ring size {}): ring broken",
                self.used_published,
                self.last_avail,
                self.size
            );
            self.broken = true;
            return 0;
        }
        self.avail_idx = idx;
        pending
    }

    /// Chains known to be waiting since the last `refresh_avail`.
    #[inline]
    pub fn pending(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_avail)
    }

    /// Consumes the next available chain into `out`. `writable` is the direction the queue's
    /// buffers must have: true for a receive queue (device writes), false for transmit.
    #[inline]
    pub fn pop(&mut self, out: &mut Chain, writable: bool) -> Pop {
        if self.broken {
            return Pop::Broken;
        }
        if self.pending() == 0 {
            return Pop::Empty;
        }
        let head = self.avail_head(0);
        if head >= self.size {
            log::warn!(
                "guest avail entry names descriptor {head} >= ring size {}: ring broken",
                self.size
            );
            self.broken = true;
            return Pop::Broken;
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        match self.read_chain(head, out, writable) {
            Ok(()) => Pop::Chain,
            Err(e) => {
                out.head = head;
                out.nsegs = 0;
                out.total = 0;
                Pop::Bad(e)
            }
        }
    }

    /// The head the guest put in the avail ring `k` places after the next one `pop` takes, as
    /// written (not validated). The entry is ordered after the Acquire load of avail.idx in
    /// `refresh_avail`; callers stay below `pending()`.
    #[inline]
    fn avail_head(&self, k: u16) -> u16 {
        let slot = self.avail + 4 + 2 * usize::from(self.last_avail.wrapping_add(k) & self.mask);
        self.u16_at(slot).load(Ordering::Relaxed)
    }

    /// Prefetches the descriptors of the next `n` available chains (their heads; reading the
    /// avail entries brings those in too), so that a burst of `pop`s does not wait for each
    /// descriptor line the guest wrote in turn. Call after `refresh_avail`.
    #[inline]
    pub fn prefetch_avail(&self, n: u16) {
        if self.broken {
            return;
        }
        for k in 0..n.min(self.pending()) {
            prefetch(self.desc + 16 * usize::from(self.avail_head(k) & self.mask));
        }
    }

    /// Prefetches, for writing, the first line of the buffer of the `k`-th available chain
    /// (0: the next one `pop` takes) of a receive queue, so an enqueue a few frames later finds
    /// it in cache. A hint: the descriptor is read but not validated (only translated, with
    /// bounds checks); `pop` validates it when the chain is taken. Call after `refresh_avail`.
    #[inline]
    pub fn prefetch_rx(&self, k: u16) {
        if self.broken || k >= self.pending() {
            return;
        }
        let (addr, _, _, _) = self.read_desc(self.avail_head(k));
        if let Some(host) = self.mem.translate(addr, 1) {
            prefetch_write(host);
        }
    }

    /// Prefetches, for writing, the used-ring lines the next `n` `push_used` calls write (the
    /// guest reads them, so each line is otherwise a stalled store every 8 entries).
    #[inline]
    pub fn prefetch_used(&self, n: u16) {
        let first = self.used + 4 + 8 * usize::from(self.used_shadow & self.mask);
        let end = self.used + 4 + 8 * usize::from(self.size);
        let last = (first + 8 * usize::from(n.min(self.size))).min(end);
        let mut line = first & !63;
        while line < last {
            prefetch_write(line.max(first));
            line += 64;
        }
    }

    /// Gives back the last `n` chains popped (they were not used).
    #[inline]
    pub fn unpop(&mut self, n: u16) {
        self.last_avail = self.last_avail.wrapping_sub(n);
        // `refresh_avail` keeps `avail.idx` within a ring of the published `used.idx`, and
        // chains given back were never used, so `pending()` stays within a ring here. (Before
        // it measured from the next chain, a refresh between the pops and this could accept
        // an index a ring ahead of the later position, and the fuzz target `ring` found
        // `pending()` above the ring size.) Kept as a guard for an `n` beyond the chains
        // popped: such a ring is broken, as `refresh_avail` would say.
        if !self.broken && self.pending() > self.size {
            log::warn!(
                "guest avail.idx {} is more than a ring ahead of {} (ring size {}): ring broken",
                self.avail_idx,
                self.last_avail,
                self.size
            );
            self.broken = true;
        }
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "a chain has at most MAX_CHAIN (32) segments"
    )]
    fn read_chain(&self, head: u16, out: &mut Chain, writable: bool) -> Result<(), ChainError> {
        out.head = head;
        out.nsegs = 0;
        out.total = 0;
        let mut idx = head;
        let limit = MAX_CHAIN.min(usize::from(self.size));
        let mut n = 0;
        loop {
            if n == limit {
                return Err(ChainError::TooLong);
            }
            let (addr, len, flags, next) = self.read_desc(idx);
            if flags & VRING_DESC_F_INDIRECT != 0 || (flags & VRING_DESC_F_WRITE != 0) != writable {
                return Err(ChainError::BadFlags);
            }
            let host = self
                .mem
                .translate(addr, u64::from(len))
                .ok_or(ChainError::OutOfBounds)?;
            out.total = out.total.checked_add(len).ok_or(ChainError::LenOverflow)?;
            out.segs[n] = Seg { addr: host, len };
            n += 1;
            out.nsegs = n as u8; // n <= MAX_CHAIN = 32
            if flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if next >= self.size {
                return Err(ChainError::NextOutOfRange);
            }
            idx = next;
        }
    }

    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the length, flags and next fields unpacked from a descriptor's second 64-bit word"
    )]
    fn read_desc(&self, idx: u16) -> (u64, u32, u16, u16) {
        let p = self.desc + 16 * usize::from(idx & self.mask);
        // SAFETY: `p..p+16` lies inside the descriptor table, bounds-checked in `new` against the
        // mapping `self.mem` keeps alive, and is 16-byte aligned. A volatile read copies the
        // descriptor once; all validation happens on the copy.
        let raw = unsafe { std::ptr::read_volatile(p as *const [u64; 2]) };
        let (addr, w) = (u64::from_le(raw[0]), u64::from_le(raw[1]));
        (addr, w as u32, (w >> 32) as u16, (w >> 48) as u16)
    }

    /// Writes a used element (not yet visible to the guest: see `publish_used`).
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        let e = self.used + 4 + 8 * usize::from(self.used_shadow & self.mask);
        // SAFETY: the used element lies inside the used ring (bounds-checked in `new`, kept
        // mapped by `self.mem`) and is 4-byte aligned.
        unsafe {
            std::ptr::write_volatile(e as *mut u32, u32::from(head).to_le());
            std::ptr::write_volatile((e + 4) as *mut u32, len.to_le());
        }
        self.used_shadow = self.used_shadow.wrapping_add(1);
    }

    /// Publishes the used elements written since the last call, then notifies the guest if it
    /// asked to be. Returns whether it notified.
    #[inline]
    pub fn publish_used(&mut self) -> bool {
        if self.used_shadow == self.used_published {
            return false;
        }
        let old = self.used_published;
        let new = self.used_shadow;
        // Release: the used elements written by push_used become visible before the index the
        // driver reads them by (pairs with the driver's read barrier after reading used.idx).
        self.u16_at(self.used + 2).store(new, Ordering::Release);
        self.used_published = new;
        self.log_used();
        // SeqCst fence: order the used.idx store before reading the guest's notification
        // request, or we could miss a guest that just re-enabled interrupts and went to sleep
        // (the store-load race that Linux vhost closes with smp_mb()).
        fence(Ordering::SeqCst);
        let notify = if self.event_idx {
            let used_event = self
                .u16_at(self.avail + 4 + 2 * usize::from(self.size))
                .load(Ordering::Relaxed);
            need_event(used_event, new, old)
        } else {
            self.u16_at(self.avail).load(Ordering::Relaxed) & VRING_AVAIL_F_NO_INTERRUPT == 0
        };
        if notify {
            self.signal();
        }
        notify
    }

    /// Logs the used ring's pages (its flags, index and elements), while migrating. The whole
    /// ring is one or two pages: marking all of it costs two atomic ORs, less than working out
    /// which elements moved.
    #[inline]
    fn log_used(&self) {
        if let Some(l) = &self.log {
            l.log.mark(l.used_gpa, 6 + 8 * u64::from(self.size));
        }
    }

    /// Logs the guest pages of the buffers of `chains` (receive buffers just written), while
    /// migrating. Whole buffers are marked: over-marking costs the frontend a page copy, never
    /// correctness.
    #[cold]
    fn log_buffers(&self, log: &RingLog, chains: &[Chain]) {
        for c in chains {
            for s in &c.segs[..usize::from(c.nsegs)] {
                if let Some(gpa) = self.mem.gpa_of(s.addr) {
                    log.log.mark(gpa, u64::from(s.len));
                }
            }
        }
    }

    /// Whether this ring logs the pages it writes (the frontend is migrating the guest).
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// Replaces the call eventfd (SET_VRING_CALL on a running ring).
    pub fn set_call(&mut self, call: Option<Arc<File>>) {
        self.call = call;
    }

    /// Interrupts the guest through its call eventfd.
    pub fn signal(&self) {
        if let Some(call) = &self.call {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an fd owned by `call`. An error (EAGAIN
            // when the counter is saturated) means an interrupt is already pending: ignored.
            unsafe {
                libc::write(call.as_raw_fd(), (&one as *const u64).cast(), 8);
            }
        }
    }

    /// Writes one frame into this (receive) queue: a virtio-net header of `hdr_len` bytes, then
    /// `len` bytes of `src` starting at byte `skip`. With `mrg` the frame may span several
    /// chains (VIRTIO_NET_F_MRG_RXBUF) and `num_buffers` says how many. Nothing is consumed when
    /// there is no room.
    pub fn enqueue_frame(
        &mut self,
        src: &Chain,
        skip: u32,
        len: u32,
        hdr_len: u32,
        mrg: bool,
        scratch: &mut [Chain],
    ) -> Result<(), RxError> {
        self.enqueue(Source::Chain(src, skip), len, hdr_len, mrg, scratch)
    }

    /// Delivers a frame the switch built itself (a reject answer) into the guest, as
    /// `enqueue_frame` does.
    pub fn enqueue_bytes(
        &mut self,
        frame: &[u8],
        hdr_len: u32,
        mrg: bool,
        scratch: &mut [Chain],
    ) -> Result<(), RxError> {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.enqueue(Source::Bytes(frame), len, hdr_len, mrg, scratch)
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "buffer counts are at most MAX_CHAIN (32)"
    )]
    fn enqueue(
        &mut self,
        src: Source<'_>,
        len: u32,
        hdr_len: u32,
        mrg: bool,
        scratch: &mut [Chain],
    ) -> Result<(), RxError> {
        let need = len.saturating_add(hdr_len);
        // A frame spans at most 8 buffers (the Writer's bookkeeping); Linux posts >= 1.5 KiB
        // mergeable buffers, so a 64 KiB frame is the most this could ever need.
        let scratch_len = scratch.len().min(8);
        let scratch = &mut scratch[..scratch_len];
        if self.pending() == 0 && self.refresh_avail() == 0 {
            return Err(if self.broken {
                RxError::Broken
            } else {
                RxError::NoBuffers
            });
        }
        // Reserve chains until the frame fits.
        let mut nbufs = 0usize;
        let mut room = 0u32;
        while room < need {
            if nbufs == scratch.len() || (nbufs > 0 && !mrg) {
                self.unpop(nbufs as u16);
                return Err(if mrg {
                    RxError::NoBuffers
                } else {
                    RxError::BufferTooSmall
                });
            }
            if self.pending() == 0 && self.refresh_avail() == 0 {
                self.unpop(nbufs as u16);
                return Err(if self.broken {
                    RxError::Broken
                } else {
                    RxError::NoBuffers
                });
            }
            match self.pop(&mut scratch[nbufs], true) {
                Pop::Chain => {
                    room = room.saturating_add(scratch[nbufs].total);
                    nbufs += 1;
                }
                Pop::Bad(e) => {
                    // The bad chain was consumed and cannot be un-popped past, so the chains
                    // reserved before it are completed too, all with length 0 (a driver drops
                    // a buffer shorter than the header), and the frame is dropped.
                    for c in &scratch[..nbufs] {
                        self.push_used(c.head, 0);
                    }
                    self.push_used(scratch[nbufs].head, 0);
                    return Err(RxError::BadChain(e));
                }
                Pop::Empty => {
                    self.unpop(nbufs as u16);
                    return Err(RxError::NoBuffers);
                }
                Pop::Broken => return Err(RxError::Broken),
            }
        }
        // Header: all zero (no offloads negotiated), and num_buffers when present.
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[NUM_BUFFERS_OFF..NUM_BUFFERS_OFF + 2].copy_from_slice(&(nbufs as u16).to_le_bytes());
        let mut w = Writer::new(&scratch[..nbufs]);
        w.write(&hdr[..hdr_len as usize]);
        match src {
            Source::Chain(c, skip) => w.copy_from(c, skip, len),
            Source::Bytes(b) => w.write(b),
        }
        for (i, c) in scratch[..nbufs].iter().enumerate() {
            self.push_used(c.head, w.written_in(i));
        }
        if let Some(l) = &self.log {
            self.log_buffers(l, &scratch[..nbufs]);
        }
        Ok(())
    }
}

/// Where an enqueued frame's bytes come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A guest's transmit chain, from byte `skip` on.
    Chain(&'a Chain, u32),
    /// A frame in host memory.
    Bytes(&'a [u8]),
}

/// The EVENT_IDX rule (virtio spec 2.7.10, Linux `vring_need_event`): notify if `event` lies in
/// `[old, new)`, in wrapping arithmetic.
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A cursor that scatters bytes over the segments of one or more chains.
struct Writer<'a> {
    chains: &'a [Chain],
    chain: usize,
    seg: usize,
    off: u32,
    written: [u32; 8],
}

impl<'a> Writer<'a> {
    fn new(chains: &'a [Chain]) -> Self {
        Writer {
            chains,
            chain: 0,
            seg: 0,
            off: 0,
            written: [0; 8],
        }
    }

    fn written_in(&self, chain: usize) -> u32 {
        self.written.get(chain).copied().unwrap_or(0)
    }

    /// The next writable span, advancing past exhausted segments.
    fn span(&mut self) -> Option<(usize, u32)> {
        loop {
            let c = self.chains.get(self.chain)?;
            if self.seg >= c.nsegs as usize {
                self.chain += 1;
                self.seg = 0;
                self.off = 0;
                continue;
            }
            let s = c.segs[self.seg];
            if self.off >= s.len {
                self.seg += 1;
                self.off = 0;
                continue;
            }
            return Some((s.addr + self.off as usize, s.len - self.off));
        }
    }

    fn advance(&mut self, n: u32) {
        self.off += n;
        if let Some(w) = self.written.get_mut(self.chain) {
            *w += n;
        }
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "the bytes written to one buffer are below its 32-bit length"
    )]
    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let Some((dst, room)) = self.span() else {
                return;
            };
            let n = (room as usize).min(data.len());
            // SAFETY: `dst..dst+n` lies inside a bounds-checked segment of a chain whose ring
            // (and memory) the caller holds; `data` has at least `n` bytes.
            unsafe { std::ptr::copy(data.as_ptr(), dst as *mut u8, n) };
            self.advance(n as u32);
            data = &data[n..];
        }
    }

    /// Copies `len` bytes of `src` from byte `skip` on: one copy, guest to guest.
    fn copy_from(&mut self, src: &Chain, mut skip: u32, mut len: u32) {
        for s in &src.segs[..src.nsegs as usize] {
            if len == 0 {
                return;
            }
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            let mut from = s.addr + skip as usize;
            let mut left = (s.len - skip).min(len);
            skip = 0;
            len -= left;
            while left > 0 {
                let Some((dst, room)) = self.span() else {
                    return;
                };
                let n = room.min(left);
                // SAFETY: both ranges lie inside bounds-checked segments of chains whose rings
                // the caller holds (so both mappings are alive). `ptr::copy` tolerates overlap,
                // which a hostile guest could arrange between two of its own NICs.
                unsafe { std::ptr::copy(from as *const u8, dst as *mut u8, n as usize) };
                self.advance(n);
                from += n as usize;
                left -= n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::RegionDesc;
    use std::os::unix::io::FromRawFd;

    const GPA: u64 = 0x1_0000;
    const UVA: u64 = 0x7f00_0000_0000;

    /// A minimal driver: one memfd region, rings at fixed offsets, raw writes.
    struct Fake {
        mem: Arc<GuestMemory>,
        size: u16,
        avail_idx: u16,
    }

    const DESC: u64 = 0;
    const AVAIL: u64 = 0x4000;
    const USED: u64 = 0x8000;
    const BUFS: u64 = 0x10000;

    impl Fake {
        fn new(mem_size: u64, size: u16) -> Self {
            let name = std::ffi::CString::new("ring-test").unwrap();
            // SAFETY: valid C string; the fd is owned by the File.
            let f = unsafe { File::from_raw_fd(libc::memfd_create(name.as_ptr(), 0)) };
            f.set_len(mem_size).unwrap();
            let d = RegionDesc {
                gpa: GPA,
                size: mem_size,
                uva: UVA,
                offset: 0,
            };
            Fake {
                mem: Arc::new(GuestMemory::map(&[d], &[f]).unwrap()),
                size,
                avail_idx: 0,
            }
        }
        fn write<T: Copy>(&self, off: u64, v: T) {
            let p = self
                .mem
                .translate(GPA + off, std::mem::size_of::<T>() as u64)
                .unwrap();
            // SAFETY: in bounds of the mapping (translate checked), test-only plain write.
            unsafe { std::ptr::write_unaligned(p as *mut T, v) };
        }
        fn read<T: Copy>(&self, off: u64) -> T {
            let p = self
                .mem
                .translate(GPA + off, std::mem::size_of::<T>() as u64)
                .unwrap();
            // SAFETY: as in write.
            unsafe { std::ptr::read_unaligned(p as *const T) }
        }
        fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let o = DESC + 16 * u64::from(i);
            self.write(o, addr);
            self.write(o + 8, len);
            self.write(o + 12, flags);
            self.write(o + 14, next);
        }
        fn push(&mut self, head: u16) {
            self.write(AVAIL + 4 + 2 * u64::from(self.avail_idx % self.size), head);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.write(AVAIL + 2, self.avail_idx);
        }
        fn ring(&self, event_idx: bool, call: Option<Arc<File>>) -> SplitRing {
            let cfg = RingConfig {
                size: self.size,
                desc_uva: UVA + DESC,
                avail_uva: UVA + AVAIL,
                used_uva: UVA + USED,
                base: 0,
                event_idx,
                call,
                log: None,
            };
            SplitRing::new(self.mem.clone(), &cfg).unwrap()
        }
        fn used(&self, i: u16) -> (u32, u32) {
            let o = USED + 4 + 8 * u64::from(i % self.size);
            (self.read(o), self.read(o + 4))
        }
    }

    #[test]
    fn pops_chains_and_reads_across_segments() {
        let mut f = Fake::new(1 << 20, 16);
        f.write(BUFS, [1u8, 2, 3, 4]);
        f.write(BUFS + 100, [5u8, 6, 7, 8]);
        f.desc(3, GPA + BUFS, 4, VRING_DESC_F_NEXT, 9);
        f.desc(9, GPA + BUFS + 100, 4, 0, 0);
        f.push(3);
        let mut r = f.ring(false, None);
        assert_eq!(r.refresh_avail(), 1);
        let mut c = Chain::default();
        assert_eq!(r.pop(&mut c, false), Pop::Chain);
        assert_eq!((c.head, c.nsegs, c.total), (3, 2, 8));
        let mut out = [0u8; 6];
        assert_eq!(c.read_at(2, &mut out), 6);
        assert_eq!(out, [3, 4, 5, 6, 7, 8]);
        assert_eq!(r.pop(&mut c, false), Pop::Empty);
        r.push_used(3, 0);
        assert!(
            r.publish_used(),
            "avail.flags lacks NO_INTERRUPT: the guest wants an interrupt"
        );
        assert_eq!(f.read::<u16>(USED + 2), 1);
        assert_eq!(f.used(0), (3, 0));
        // Without EVENT_IDX the device asked not to be kicked.
        assert_eq!(f.read::<u16>(USED), VRING_USED_F_NO_NOTIFY);
    }

    #[test]
    fn refuses_bad_chains() {
        // 5 GiB of sparse memory, so two in-bounds 3 GiB descriptors overflow a u32 total.
        let mut f = Fake::new(5 << 30, 64);
        type Desc = (u16, u64, u32, u16, u16);
        let cases: &[(&[Desc], ChainError, bool)] = &[
            (
                &[(0, GPA + (6 << 30), 8, 0, 0)],
                ChainError::OutOfBounds,
                false,
            ),
            (&[(1, GPA - 8, 8, 0, 0)], ChainError::OutOfBounds, false),
            (
                &[(2, u64::MAX - 3, 8, 0, 0)],
                ChainError::OutOfBounds,
                false,
            ),
            (
                &[
                    (3, GPA, 3 << 30, VRING_DESC_F_NEXT, 4),
                    (4, GPA, 3 << 30, 0, 0),
                ],
                ChainError::LenOverflow,
                false,
            ),
            (
                &[(5, GPA + BUFS, 8, VRING_DESC_F_NEXT, 5)],
                ChainError::TooLong,
                false,
            ),
            (
                &[(6, GPA + BUFS, 8, VRING_DESC_F_NEXT, 64)],
                ChainError::NextOutOfRange,
                false,
            ),
            (
                &[(7, GPA + BUFS, 8, VRING_DESC_F_WRITE, 0)],
                ChainError::BadFlags,
                false,
            ),
            (&[(8, GPA + BUFS, 8, 0, 0)], ChainError::BadFlags, true),
            (
                &[(
                    9,
                    GPA + BUFS,
                    8,
                    VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE,
                    0,
                )],
                ChainError::BadFlags,
                true,
            ),
        ];
        let mut r = f.ring(true, None);
        let mut c = Chain::default();
        for (descs, want, writable) in cases {
            for &(i, a, l, fl, n) in *descs {
                f.desc(i, a, l, fl, n);
            }
            f.push(descs[0].0);
            r.refresh_avail();
            assert_eq!(r.pop(&mut c, *writable), Pop::Bad(*want), "{descs:?}");
            assert_eq!(c.head, descs[0].0);
        }
        // A head index outside the table breaks the ring for good.
        f.push(64);
        r.refresh_avail();
        assert_eq!(r.pop(&mut c, false), Pop::Broken);
        assert!(r.is_broken());
        assert_eq!(r.refresh_avail(), 0);
    }

    /// `prefetch_rx` reads guest-written descriptors as a hint only: garbage addresses, heads
    /// past the table and positions past what is available neither fault nor change what
    /// `pop` then finds and refuses.
    #[test]
    fn prefetch_rx_is_only_a_hint() {
        let mut f = Fake::new(1 << 20, 16);
        f.desc(0, u64::MAX - 8, 4096, VRING_DESC_F_WRITE, 0);
        f.desc(1, GPA + BUFS, 2048, VRING_DESC_F_WRITE, 0);
        f.push(0);
        f.push(1);
        let mut r = f.ring(false, None);
        r.refresh_avail();
        for k in 0..20 {
            r.prefetch_rx(k);
        }
        let mut c = Chain::default();
        assert_eq!(r.pop(&mut c, true), Pop::Bad(ChainError::OutOfBounds));
        assert_eq!(r.pop(&mut c, true), Pop::Chain);
        assert_eq!(c.total, 2048);
        f.push(64);
        r.refresh_avail();
        r.prefetch_rx(0);
        assert_eq!(r.pop(&mut c, true), Pop::Broken);
    }

    /// A driver that makes a buffer available again while the device still has it (here the
    /// one descriptor of a 1-entry ring, offered twice while a mergeable frame needs two
    /// buffers) has more out than the ring holds: the ring breaks instead of writing two used
    /// elements into the one slot, and nothing is published.
    #[test]
    fn more_buffers_out_than_the_ring_holds_breaks_it() {
        let mut f = Fake::new(1 << 20, 1);
        f.desc(0, GPA + BUFS, 248, VRING_DESC_F_WRITE, 0);
        f.push(0);
        let mut r = f.ring(false, None);
        let mut scratch = vec![Chain::default(); 8];
        // One buffer, one frame that fits: fine.
        assert_eq!(r.enqueue_bytes(&[7u8; 100], 12, true, &mut scratch), Ok(()));
        assert!(r.publish_used());
        assert_eq!(f.used(0), (0, 112));
        // Given back and offered again (seen by a refresh); then offered once more, while the
        // device has it: a frame of 266 bytes takes the buffer, needs a second one, and the
        // refresh for it finds two out in a 1-entry ring.
        f.push(0);
        assert_eq!(r.refresh_avail(), 1);
        f.push(0);
        assert_eq!(
            r.enqueue_bytes(&[7u8; 254], 12, true, &mut scratch),
            Err(RxError::Broken)
        );
        assert!(r.is_broken());
        assert!(!r.publish_used());
        assert_eq!(f.read::<u16>(USED + 2), 1, "nothing more published");
        assert_eq!(
            f.used(0),
            (0, 112),
            "the one used element was not written over"
        );
    }

    #[test]
    fn avail_index_jump_breaks_the_ring() {
        let f = Fake::new(1 << 20, 16);
        f.write(AVAIL + 2, 17u16);
        let mut r = f.ring(false, None);
        assert_eq!(r.refresh_avail(), 0);
        assert!(r.is_broken());
        let mut c = Chain::default();
        assert_eq!(r.pop(&mut c, false), Pop::Broken);
    }

    #[test]
    fn resyncs_to_used_idx_on_start() {
        let f = Fake::new(1 << 20, 16);
        f.write(USED + 2, 7u16);
        f.write(AVAIL + 2, 9u16);
        let mut r = f.ring(false, None);
        assert_eq!(r.last_avail(), 7);
        assert_eq!(r.refresh_avail(), 2);
    }

    #[test]
    fn mergeable_rx_spans_buffers_and_sets_num_buffers() {
        let mut f = Fake::new(1 << 20, 16);
        // Source: a 300-byte frame behind a 12-byte header, one descriptor.
        let src_gpa = GPA + BUFS;
        let data: Vec<u8> = (0..312u32).map(|i| i as u8).collect();
        for (i, b) in data.iter().enumerate() {
            f.write(BUFS + i as u64, *b);
        }
        let src = Chain {
            head: 0,
            nsegs: 1,
            total: 312,
            segs: {
                let mut s = [Seg::default(); MAX_CHAIN];
                s[0] = Seg {
                    addr: f.mem.translate(src_gpa, 312).unwrap(),
                    len: 312,
                };
                s
            },
        };
        // Guest RX buffers of 128 bytes each.
        for i in 0..4u16 {
            f.desc(
                i,
                GPA + 0x20000 + 0x1000 * u64::from(i),
                128,
                VRING_DESC_F_WRITE,
                0,
            );
            f.push(i);
        }
        let mut r = f.ring(true, None);
        let mut scratch = vec![Chain::default(); 8];
        r.enqueue_frame(&src, 12, 300, 12, true, &mut scratch)
            .unwrap();
        r.publish_used();
        assert_eq!(
            f.read::<u16>(USED + 2),
            3,
            "312 bytes need three 128-byte buffers"
        );
        assert_eq!(f.used(0), (0, 128));
        assert_eq!(f.used(1), (1, 128));
        assert_eq!(f.used(2), (2, 56));
        assert_eq!(f.read::<u16>(0x20000 + 10), 3, "num_buffers");
        assert_eq!(
            f.read::<u8>(0x20000 + 12),
            12,
            "first frame byte after the header"
        );
        assert_eq!(
            f.read::<u8>(0x21000),
            128,
            "frame continues in the second buffer"
        );
        // Without MRG a buffer too small is left in place, and the frame refused.
        let mut r2 = f.ring(true, None);
        let before = r2.last_avail();
        assert_eq!(
            r2.enqueue_frame(&src, 12, 300, 12, false, &mut scratch),
            Err(RxError::BufferTooSmall)
        );
        assert_eq!(r2.last_avail(), before);
    }

    /// While logging, every page written is marked in the frontend's log at its
    /// guest-physical address: the receive buffers a frame went into and the used ring; pages
    /// only read (the avail ring, buffers not used) are not.
    #[test]
    fn logs_the_guest_pages_it_writes() {
        use crate::guest_mem::DirtyLog;
        let mut f = Fake::new(1 << 20, 16);
        let name = std::ffi::CString::new("log-test").unwrap();
        // SAFETY: valid C string; the fd is owned by the File.
        let lf = unsafe { File::from_raw_fd(libc::memfd_create(name.as_ptr(), 0)) };
        // Pages up to GPA + 1 MiB: 0x110 pages, 34 bytes of log; at offset 64 in the file.
        lf.set_len(64 + 64).unwrap();
        let log = Arc::new(DirtyLog::map(&lf, 64, 64).unwrap());
        assert!(
            DirtyLog::map(&lf, 100, 64).is_err(),
            "past the end of the file"
        );
        for i in 0..4u16 {
            f.desc(
                i,
                GPA + 0x20000 + 0x1000 * u64::from(i),
                128,
                VRING_DESC_F_WRITE,
                0,
            );
            f.push(i);
        }
        let cfg = RingConfig {
            size: f.size,
            desc_uva: UVA + DESC,
            avail_uva: UVA + AVAIL,
            used_uva: UVA + USED,
            base: 0,
            event_idx: true,
            call: None,
            log: Some(RingLog {
                log: log.clone(),
                used_gpa: GPA + USED,
            }),
        };
        let mut r = SplitRing::new(f.mem.clone(), &cfg).unwrap();
        let frame = [7u8; 200];
        let mut scratch = vec![Chain::default(); 8];
        r.enqueue_bytes(&frame, 12, true, &mut scratch).unwrap();
        r.publish_used();
        for (gpa, marked) in [
            (GPA + 0x20000, true),
            (GPA + 0x21000, true),
            (GPA + 0x22000, false),
            (GPA + USED, true),
            (GPA + AVAIL, false),
            (GPA + DESC, false),
            (0, false),
        ] {
            assert_eq!(log.is_marked(gpa), marked, "page {gpa:#x}");
        }
        // Pages past the log's end are not marked (and nothing is written past it).
        log.mark(1 << 30, 4096);
        assert!(!log.is_marked(1 << 30));
    }

    #[test]
    fn notifies_per_event_idx_once_per_burst() {
        let mut f = Fake::new(1 << 20, 16);
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // SAFETY: dup gives an fd owned by the File.
        let call = Arc::new(unsafe {
            File::from_raw_fd(libc::dup(std::os::unix::io::AsRawFd::as_raw_fd(&efd)))
        });
        for i in 0..8u16 {
            f.desc(i, GPA + BUFS, 64, 0, 0);
            f.push(i);
        }
        let mut r = f.ring(true, Some(call));
        let mut c = Chain::default();
        r.refresh_avail();
        // used_event = 2: the guest wants an interrupt once used.idx passes 2.
        f.write(AVAIL + 4 + 2 * 16, 2u16);
        for _ in 0..2 {
            r.pop(&mut c, false);
            r.push_used(c.head, 0);
        }
        assert!(
            !r.publish_used(),
            "used.idx 0 -> 2 does not cross used_event 2"
        );
        for _ in 0..3 {
            r.pop(&mut c, false);
            r.push_used(c.head, 0);
        }
        assert!(r.publish_used(), "used.idx 2 -> 5 crosses used_event 2");
        assert_eq!(
            efd.read().unwrap(),
            1,
            "one eventfd write for the whole burst"
        );
        assert!(!r.publish_used(), "nothing new: no notification");
    }

    #[test]
    fn need_event_matches_spec() {
        // event in [old, new) -> notify
        assert!(need_event(5, 6, 5));
        assert!(!need_event(6, 6, 5));
        assert!(need_event(0, 1, 65535)); // wraparound
        assert!(!need_event(10, 8, 4));
        assert!(need_event(4, 8, 4));
        assert!(need_event(7, 8, 4));
    }
}
