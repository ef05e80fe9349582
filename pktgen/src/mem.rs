//! Guest memory: one memfd mapped `MAP_SHARED` into this process and shared with the
//! vhost-user backend through `SET_MEM_TABLE`.
//!
//! This is the only module of the crate that may use `unsafe`. Everything else reaches guest
//! memory through the offset-based accessors below, which bounds-check every access.
//!
//! Concurrency model: the backend (another process, or another thread in tests) reads and
//! writes this memory concurrently. Ring fields are therefore only ever accessed through
//! atomics (`AtomicU16`/`AtomicU32`/`AtomicU64` views of naturally aligned fields), so the
//! orderings chosen by the ring code (see `ring.rs`) are meaningful. Bulk packet data is copied
//! with raw pointer copies into or out of private buffers; no Rust reference to guest memory
//! other than the atomic views is ever created, so a misbehaving peer can at worst make us read
//! torn bytes, never break memory safety of this process.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

/// A memfd-backed, `MAP_SHARED` mapping used as the guest's physical memory.
#[derive(Debug)]
pub(crate) struct GuestMemory {
    /// Start of our mapping (the "host virtual address" the backend is told about).
    ptr: NonNull<u8>,
    /// Length of the mapping in bytes (a multiple of the page size).
    len: usize,
    /// Guest-physical address of offset 0.
    gpa_base: u64,
    /// The memfd; passed to the backend with `SET_MEM_TABLE`.
    fd: OwnedFd,
}

// SAFETY: `GuestMemory` owns its mapping exclusively (nothing else in this process aliases it)
// and every access goes through bounds-checked atomic or raw-copy accessors that never hand out
// plain references, so moving it to another thread is sound.
unsafe impl Send for GuestMemory {}
// SAFETY: as for `Send`; `&GuestMemory` only allows atomic accesses and raw copies, which are
// sound to perform from several threads at once.
unsafe impl Sync for GuestMemory {}

fn page_size() -> usize {
    // SAFETY: `sysconf` has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub(crate) const fn align_up(v: usize, align: usize) -> usize {
    (v + align - 1) & !(align - 1)
}

impl GuestMemory {
    /// Creates a memfd of `len` bytes (rounded up to the page size), maps it shared, and
    /// zero-fills it (a fresh memfd is zero already).
    pub(crate) fn new(len: usize, gpa_base: u64) -> io::Result<Self> {
        let len = align_up(len.max(1), page_size());
        let name = c"bulwark-pktgen-guest";
        // SAFETY:
        // - `name` is a valid NUL-terminated C string that outlives the call.
        // - `MFD_CLOEXEC` is a valid flag; the return value is checked below.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created, valid file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let off_len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "guest memory too large"))?;
        // SAFETY: `fd` is a valid memfd owned by us; ftruncate has no memory preconditions.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), off_len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY:
        // - A null hint lets the kernel choose the address, so no existing mapping is replaced.
        // - `len` is non-zero and page aligned; `fd` is valid and at least `len` bytes long.
        // - The result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Self {
            ptr,
            len,
            gpa_base,
            fd,
        })
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Guest-physical address of offset 0.
    pub(crate) fn gpa_base(&self) -> u64 {
        self.gpa_base
    }

    /// Our virtual address of offset 0, as sent in `SET_MEM_TABLE` and `SET_VRING_ADDR`.
    pub(crate) fn hva_base(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The memfd.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Guest-physical address of `off`.
    pub(crate) fn gpa(&self, off: usize) -> u64 {
        self.gpa_base + off as u64
    }

    /// Offset of guest-physical range `[gpa, gpa+len)`, if it lies entirely inside memory.
    pub(crate) fn gpa_to_off(&self, gpa: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(gpa.checked_sub(self.gpa_base)?).ok()?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }

    /// Panics unless `[off, off+size)` is inside the mapping and `off` is `align`-aligned.
    /// Offsets are computed by this crate (never taken unvalidated from the device), so a
    /// failure here is a bug in the crate or a misuse of the documented raw API.
    #[inline]
    fn check(&self, off: usize, size: usize, align: usize) {
        assert!(
            off.checked_add(size).is_some_and(|end| end <= self.len) && off & (align - 1) == 0,
            "guest memory access out of range or misaligned: off={off:#x} size={size} len={:#x}",
            self.len
        );
    }

    #[inline]
    fn at(&self, off: usize) -> *mut u8 {
        // SAFETY: callers have run `check(off, ..)`, so `off <= len` and the result stays
        // inside (or one past the end of) the mapping.
        unsafe { self.ptr.as_ptr().add(off) }
    }

    #[inline]
    fn a16(&self, off: usize) -> &AtomicU16 {
        self.check(off, 2, 2);
        // SAFETY:
        // - `check` proved the 2 bytes are inside the live mapping and 2-byte aligned.
        // - The mapping lives as long as `self`, which bounds the returned lifetime.
        // - All accesses to ring fields in this process are atomic, so no non-atomic access
        //   races with this view.
        unsafe { AtomicU16::from_ptr(self.at(off).cast::<u16>()) }
    }

    #[inline]
    fn a32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: as in `a16`, for 4 bytes with 4-byte alignment.
        unsafe { AtomicU32::from_ptr(self.at(off).cast::<u32>()) }
    }

    #[inline]
    fn a64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: as in `a16`, for 8 bytes with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(self.at(off).cast::<u64>()) }
    }

    // The ring fields are little-endian in virtio 1.x; `to_le`/`from_le` make that explicit
    // (no-ops on x86-64 and aarch64-le).

    /// Atomic load of a little-endian u16 field.
    #[inline]
    pub(crate) fn load_u16(&self, off: usize, order: Ordering) -> u16 {
        u16::from_le(self.a16(off).load(order))
    }

    /// Atomic store of a little-endian u16 field.
    #[inline]
    pub(crate) fn store_u16(&self, off: usize, v: u16, order: Ordering) {
        self.a16(off).store(v.to_le(), order);
    }

    /// Atomic load of a little-endian u32 field.
    #[inline]
    pub(crate) fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        u32::from_le(self.a32(off).load(order))
    }

    /// Atomic store of a little-endian u32 field.
    #[inline]
    pub(crate) fn store_u32(&self, off: usize, v: u32, order: Ordering) {
        self.a32(off).store(v.to_le(), order);
    }

    /// Atomic load of a little-endian u64 field.
    #[cfg(test)]
    #[inline]
    pub(crate) fn load_u64(&self, off: usize, order: Ordering) -> u64 {
        u64::from_le(self.a64(off).load(order))
    }

    /// Atomic store of a little-endian u64 field.
    #[inline]
    pub(crate) fn store_u64(&self, off: usize, v: u64, order: Ordering) {
        self.a64(off).store(v.to_le(), order);
    }

    /// Copies `data` into guest memory at `off`.
    #[inline]
    pub(crate) fn write_bytes(&self, off: usize, data: &[u8]) {
        self.check(off, data.len(), 1);
        // SAFETY:
        // - `check` proved the destination range is inside the live mapping.
        // - `data` is a private Rust slice and cannot overlap the mapping, because this module
        //   never creates non-atomic references into it.
        // - A concurrent access by the peer to the same bytes is a peer bug; it can only
        //   produce garbage packet bytes on its side, no Rust-visible aliasing exists here.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.at(off), data.len()) };
    }

    /// Sets `len` bytes at `off` to `byte`.
    #[inline]
    pub(crate) fn fill(&self, off: usize, len: usize, byte: u8) {
        self.check(off, len, 1);
        // SAFETY: `check` proved `[off, off+len)` is inside the live mapping; no Rust
        // reference into that range exists (see `write_bytes`).
        unsafe { std::ptr::write_bytes(self.at(off), byte, len) };
    }

    /// Appends `len` bytes of guest memory at `off` to `out`.
    #[inline]
    pub(crate) fn read_into(&self, off: usize, len: usize, out: &mut Vec<u8>) {
        self.check(off, len, 1);
        out.reserve(len);
        let old = out.len();
        // SAFETY:
        // - `check` proved the source range is inside the live mapping.
        // - `reserve` guarantees `len` bytes of spare capacity after `old`; the destination is
        //   private heap memory that cannot overlap the mapping.
        // - After the copy those `len` bytes are initialised, so `set_len` is valid.
        unsafe {
            std::ptr::copy_nonoverlapping(self.at(off), out.as_mut_ptr().add(old), len);
            out.set_len(old + len);
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `new`, which is unmapped
        // only here; no references into it can outlive `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast::<libc::c_void>(), self.len) };
    }
}

/// Pins the calling thread to `cpu` (traffic generators keep off the switch's core).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "CPU id too large",
        ));
    }
    // SAFETY: `set` is a plain bitmask owned by this frame; CPU_ZERO/CPU_SET write inside it
    // (cpu < CPU_SETSIZE checked above), and sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_translation() {
        let m = GuestMemory::new(10_000, 0x4000_0000).unwrap();
        assert_eq!(m.len() % 4096, 0);
        m.store_u16(2, 0xbeef, Ordering::Relaxed);
        m.store_u32(4, 0xdead_beef, Ordering::Relaxed);
        m.store_u64(8, 0x0123_4567_89ab_cdef, Ordering::Relaxed);
        assert_eq!(m.load_u16(2, Ordering::Relaxed), 0xbeef);
        assert_eq!(m.load_u32(4, Ordering::Relaxed), 0xdead_beef);
        assert_eq!(m.load_u64(8, Ordering::Relaxed), 0x0123_4567_89ab_cdef);
        m.write_bytes(100, b"hello");
        let mut v = vec![1];
        m.read_into(100, 5, &mut v);
        assert_eq!(v, b"\x01hello");
        assert_eq!(m.gpa_to_off(0x4000_0064, 5), Some(100));
        assert_eq!(m.gpa_to_off(0x3fff_ffff, 1), None);
        assert_eq!(m.gpa_to_off(0x4000_0000 + m.len() as u64, 1), None);
        assert_eq!(m.gpa_to_off(u64::MAX, 2), None);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_panics() {
        let m = GuestMemory::new(4096, 0).unwrap();
        m.write_bytes(4095, b"ab");
    }
}
