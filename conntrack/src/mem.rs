//! Memory hints: the one place in this crate with `unsafe`.
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

/// A vector of `n` elements made by `init`, whose memory the kernel is asked to back with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)` before the first touch). Only a hint:
/// without THP it is an ordinary vector.
pub fn huge_vec<T>(n: usize, init: impl FnMut() -> T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n * std::mem::size_of::<T>();
    let page = 4096usize;
    let start = (v.as_ptr() as usize).next_multiple_of(page);
    let end = (v.as_ptr() as usize + bytes) & !(page - 1);
    if end > start + (2 << 20) {
        // SAFETY: `[start, end)` lies inside the allocation `v` owns (rounded inwards to page
        // boundaries) and nothing references it yet; MADV_HUGEPAGE changes how the kernel backs
        // it, never its contents or validity. A failure (no THP support) is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
    v.resize_with(n, init);
    v
}
