//! Memory: the table's mappings (anonymous, or a shared file that outlives the process) and
//! prefetch hints; the one place in this crate with `unsafe`.
//!
//! Lookups in a table much larger than the caches are bound by memory latency and TLB misses
//! (see `DESIGN.md`). The data path hides the latency by asking for the cache lines of a whole
//! burst first (`Table::prefetch_buckets`, then `Table::prefetch_slots`) and looking up
//! afterwards; the table asks for transparent huge pages so that a lookup does not also walk
//! the page tables.
#![allow(unsafe_code)]

/// Asks the CPU to bring the cache line holding `p` into all cache levels. A hint only: it
/// changes no state a program can observe.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 never faults, whatever the address (it is dropped for an unmapped or
    // invalid one), and has no architectural effect; callers pass addresses inside live
    // allocations anyway. SSE, which provides it, is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Types that may live in shared or file-backed memory: every bit pattern (all zeros
/// included) is a valid value, they hold no pointers and have no drop glue, and all their
/// access is atomic, so another process (or an earlier one) writing the same memory cannot
/// make a value invalid, only surprising.
///
/// # Safety
/// Implement only for types made of atomics of plain integers, `#[repr(C)]` or transparent.
pub unsafe trait Plain: Sized + Sync + Send {}

// SAFETY: an AtomicU64 is a u64 in an UnsafeCell: any 8 bytes are a valid value.
unsafe impl Plain for std::sync::atomic::AtomicU64 {}
// SAFETY: a slot is `#[repr(C)]` eight AtomicU64s.
unsafe impl Plain for crate::table::Slot {}

/// Memory for the connection table: anonymous (private to the process, gone with it) or a
/// shared mapping of a file (on tmpfs it outlives the process: a restarted bulwarkd maps it
/// again). Unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; what is stored in it is accessed only through `Plain`
// (atomic) types, which synchronise themselves.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` bytes of zeroed anonymous memory, with the huge-page hint.
    pub fn anonymous(len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a fresh private anonymous mapping: no file, no address hint, nothing
        // aliases it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        Self::made(p, len.max(1))
    }

    /// The first `len` bytes of `file`, shared: stores reach the file (its page cache) at once,
    /// and survive the process. The caller sized the file (`allocate`). The pages are mapped
    /// now (MAP_POPULATE), so no worker takes a page fault on its first touch of one.
    pub fn shared(file: &std::fs::File, len: usize) -> std::io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: a new shared mapping of a file the caller opened read-write; the kernel
        // checks the descriptor and the length. Accesses beyond the file's end would fault, so
        // the caller sizes the file to `len` first and never shrinks it while mapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        Self::made(p, len.max(1))
    }

    /// Sizes `file` to `len` bytes with every block allocated now (posix_fallocate), zeroed:
    /// on tmpfs a sparse file would allocate a page at a worker's first store into it, and,
    /// with the filesystem full, kill the process with SIGBUS there instead of failing here.
    pub fn allocate(file: &std::fs::File, len: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: posix_fallocate on a descriptor we own; it only changes the file's size and
        // allocation, nothing in our memory.
        match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
            0 => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        }
    }

    fn made(p: *mut libc::c_void, len: usize) -> std::io::Result<Mapping> {
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `p..p+len` is the mapping just made; the advice changes how it is backed,
        // never its contents. A failure (no THP for this kind of memory) is harmless.
        unsafe {
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
        }
        Ok(Mapping {
            base: p.cast(),
            len,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: a mapping has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `n` values of `T` at byte `offset`, which must be aligned for `T` and inside the
    /// mapping.
    ///
    /// # Panics
    /// When the range is outside the mapping or misaligned.
    pub fn slice<T: Plain>(&self, offset: usize, n: usize) -> &[T] {
        let bytes = n.checked_mul(std::mem::size_of::<T>()).expect("size");
        assert!(
            offset.checked_add(bytes).is_some_and(|e| e <= self.len),
            "range outside the mapping"
        );
        assert_eq!(
            (self.base as usize + offset) % std::mem::align_of::<T>(),
            0,
            "misaligned"
        );
        // SAFETY: the range lies inside the mapping (checked above) and is aligned for `T`;
        // the mapping lives as long as `&self`; `T: Plain` makes any contents a valid value
        // and all access atomic, so shared references are sound even while other threads (or
        // processes) write the memory.
        unsafe { std::slice::from_raw_parts(self.base.add(offset).cast::<T>(), n) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `made`, unmapped once; no slice of it outlives `self`
        // (they borrow it).
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// A slice of `T` kept alive by the mapping that holds it: dereferences to `&[T]` with no
/// branch (a pointer and a length, as a `Box<[T]>`).
#[derive(Debug)]
pub struct Region<T: Plain> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    map: std::sync::Arc<Mapping>,
}

// SAFETY: `T: Plain` is Send + Sync and the mapping is too; the region only hands out shared
// references.
unsafe impl<T: Plain> Send for Region<T> {}
// SAFETY: as above.
unsafe impl<T: Plain> Sync for Region<T> {}

impl<T: Plain> Region<T> {
    /// `n` values of `T` at byte `offset` of `map` (checked as `Mapping::slice` checks).
    pub fn new(map: &std::sync::Arc<Mapping>, offset: usize, n: usize) -> Self {
        let s = map.slice::<T>(offset, n);
        Region {
            ptr: std::ptr::NonNull::from(s).cast(),
            len: n,
            map: map.clone(),
        }
    }

    /// The mapping it lives in.
    pub fn mapping(&self) -> &std::sync::Arc<Mapping> {
        &self.map
    }
}

impl<T: Plain> std::ops::Deref for Region<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: made from a checked slice of `map`, which this region keeps alive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}
