//! Guest memory: the regions of a SET_MEM_TABLE, mapped once into the switch.
//!
//! Every address a guest gives us (descriptor addresses, ring addresses) is translated here,
//! and every translation is bounds-checked against one region: `[addr, addr + len)` must lie
//! inside a single region or the translation fails. A buffer that straddles two regions is
//! refused (QEMU's regions for one VM are contiguous RAM blocks, and the Linux virtio-net driver
//! never places one buffer across them; DPDK splits such buffers, we count them as a drop).
//!
//! The mapping lives until the last `Arc<GuestMemory>` is dropped: rings hold an `Arc`, so memory
//! cannot be unmapped while a worker holds a ring (see `sync::SpinLock` and `backend`).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::io::AsRawFd;

/// Most regions accepted in one memory table (the vhost-user limit without CONFIGURE_MEM_SLOTS).
pub const MAX_REGIONS: usize = 8;

/// Why a memory table was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum MemError {
    /// too many memory regions
    TooManyRegions,
    /// memory region has zero size or its end overflows
    BadRegion,
    /// memory regions overlap in guest-physical or frontend-virtual space
    Overlap,
    /// memory region extends past the end of its file
    PastEndOfFile,
    /// mmap of a memory region failed
    Mmap(i32),
    /// fstat of a memory region's file failed
    Stat(i32),
}

impl std::fmt::Display for MemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemError::TooManyRegions => write!(f, "too many memory regions (max {MAX_REGIONS})"),
            MemError::BadRegion => write!(f, "memory region has zero size or overflows"),
            MemError::Overlap => write!(f, "memory regions overlap"),
            MemError::PastEndOfFile => write!(f, "memory region extends past the end of its file"),
            MemError::Mmap(e) => write!(f, "mmap of a memory region failed: errno {e}"),
            MemError::Stat(e) => write!(f, "fstat of a memory region failed: errno {e}"),
        }
    }
}

impl std::error::Error for MemError {}

/// One region of a memory table as the frontend described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Address of the first byte in the frontend's (QEMU's) virtual address space.
    pub uva: u64,
    /// Offset of the first byte in the file.
    pub offset: u64,
}

#[derive(Debug)]
struct Region {
    desc: RegionDesc,
    /// Host address of the region's first byte (inside `map_base`).
    host: usize,
    map_base: usize,
    map_len: usize,
}

/// A mapped memory table.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Region>,
}

// SAFETY: the raw addresses are plain integers into MAP_SHARED mappings owned by this value; they
// are valid from any thread until `Drop`, which runs only when no reference remains.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; `GuestMemory` exposes no interior mutability of its own (guest bytes are
// accessed through raw pointers whose users document their own synchronisation).
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// An empty table: every translation fails.
    pub fn empty() -> Self {
        GuestMemory {
            regions: Vec::new(),
        }
    }

    /// Validates and maps a memory table. `files[i]` backs `descs[i]`.
    pub fn map(descs: &[RegionDesc], files: &[File]) -> Result<Self, MemError> {
        if descs.len() > MAX_REGIONS || descs.len() != files.len() {
            return Err(MemError::TooManyRegions);
        }
        for (i, a) in descs.iter().enumerate() {
            let gpa_end = a.gpa.checked_add(a.size);
            let uva_end = a.uva.checked_add(a.size);
            let off_end = a.offset.checked_add(a.size);
            if a.size == 0 || gpa_end.is_none() || uva_end.is_none() || off_end.is_none() {
                return Err(MemError::BadRegion);
            }
            for b in &descs[..i] {
                let overlap = |x: u64, y: u64| x < y + b.size && y < x + a.size;
                if overlap(a.gpa, b.gpa) || overlap(a.uva, b.uva) {
                    return Err(MemError::Overlap);
                }
            }
        }
        // The table grows as regions are mapped, so that a refusal of a later region (each
        // `return` below) unmaps the earlier ones as it drops. (It once kept them in a bare
        // Vec: a frontend could leak a mapping per SET_MEM_TABLE whose second region was past
        // the end of its file, until mmap failed process-wide; found by the fuzz target
        // `vhost`.)
        let mut mem = GuestMemory {
            regions: Vec::with_capacity(descs.len()),
        };
        for (d, file) in descs.iter().zip(files) {
            // SAFETY: `st` is a plain C struct for fstat to fill; zeroed is a valid value.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: the fd is open (owned by `file`) and `st` is a valid out pointer.
            if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
                return Err(MemError::Stat(errno()));
            }
            let end = d.offset + d.size; // checked above
                                         // A region past the end of its file would SIGBUS on access: refuse it up front.
                                         // (A frontend may still truncate the file later; DPDK and OVS share that exposure.)
            let file_len = u64::try_from(st.st_size).unwrap_or(0);
            if end > file_len {
                return Err(MemError::PastEndOfFile);
            }
            // hugetlbfs needs the length to be a multiple of the page size (st_blksize).
            let blk = u64::try_from(st.st_blksize).unwrap_or(4096).max(4096);
            let map_len = end.div_ceil(blk) * blk;
            let map_len = map_len.min(file_len.div_ceil(4096) * 4096);
            let (Ok(map_len), Ok(offset)) = (usize::try_from(map_len), usize::try_from(d.offset))
            else {
                return Err(MemError::BadRegion);
            };
            // SAFETY: a fresh shared mapping of a file we hold; no existing memory is affected.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_NORESERVE,
                    file.as_raw_fd(),
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(MemError::Mmap(errno()));
            }
            LIVE_MAPPINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let base = base as usize;
            mem.regions.push(Region {
                desc: *d,
                host: base + offset,
                map_base: base,
                map_len,
            });
        }
        Ok(mem)
    }

    /// The region descriptions, in table order.
    pub fn regions(&self) -> impl Iterator<Item = RegionDesc> + '_ {
        self.regions.iter().map(|r| r.desc)
    }

    /// Host address of guest-physical `[gpa, gpa + len)`, if it lies inside one region.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an offset within a mapped region fits the address space"
    )]
    pub fn translate(&self, gpa: u64, len: u64) -> Option<usize> {
        for r in &self.regions {
            let off = gpa.wrapping_sub(r.desc.gpa);
            // `off < size` rules out gpa below the region (wrapping makes it huge); the second
            // test is written so that it cannot overflow.
            if gpa >= r.desc.gpa && off < r.desc.size && len <= r.desc.size - off {
                return Some(r.host + off as usize);
            }
        }
        None
    }

    /// Host address of frontend-virtual `[uva, uva + len)` (SET_VRING_ADDR carries these).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an offset within a mapped region fits the address space"
    )]
    pub fn translate_uva(&self, uva: u64, len: u64) -> Option<usize> {
        for r in &self.regions {
            let off = uva.wrapping_sub(r.desc.uva);
            if uva >= r.desc.uva && off < r.desc.size && len <= r.desc.size - off {
                return Some(r.host + off as usize);
            }
        }
        None
    }

    /// Guest-physical address of the host address `host` (inside one of our mappings), for the
    /// dirty log.
    #[inline]
    pub fn gpa_of(&self, host: usize) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = host.wrapping_sub(r.host) as u64;
            // Lazily: for another region `off` has wrapped and the sum would overflow (a
            // region's gpa + size is checked when it is mapped).
            (host >= r.host && off < r.desc.size).then(|| r.desc.gpa + off)
        })
    }

    /// Guest-physical address of frontend-virtual `uva` (for logging and GET_VRING_BASE checks).
    pub fn uva_to_gpa(&self, uva: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = uva.wrapping_sub(r.desc.uva);
            // Lazily, as in `gpa_of` (the fuzz target `vhost` found the eager sum overflow).
            (uva >= r.desc.uva && off < r.desc.size).then(|| r.desc.gpa + off)
        })
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: `map_base`/`map_len` are exactly what mmap returned; the last reference to
            // this table is gone, so no ring or worker can still use the mapping.
            unsafe { libc::munmap(r.map_base as *mut libc::c_void, r.map_len) };
            LIVE_MAPPINGS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Guest memory regions and dirty logs this process has mapped now. A frontend's messages
/// must leave none behind once its connection is gone (the fuzz target `vhost` checks it after
/// every input).
static LIVE_MAPPINGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many guest memory regions and dirty logs are mapped now (`LIVE_MAPPINGS`).
pub fn live_mappings() -> usize {
    LIVE_MAPPINGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Guest pages are logged in units of 4 KiB (the vhost log's page, `VHOST_LOG_PAGE`).
pub const LOG_PAGE: u64 = 0x1000;

/// The frontend's dirty-page log (SET_LOG_BASE, during live migration): one bit per 4 KiB
/// guest-physical page, set by the device for every page it writes, so that the frontend sends
/// those pages again. Bits are set with an atomic OR after a release fence (as DPDK's
/// `vhost_log_page`), so the frontend that sees a bit also sees the data written before it.
#[derive(Debug)]
pub struct DirtyLog {
    map_base: usize,
    map_len: usize,
    /// The log's first byte (at the message's offset in the mapping).
    base: usize,
    /// Bytes of log: pages `0..8 * size` are covered.
    size: u64,
}

// SAFETY: the mapping is owned by this value and only ever accessed through atomic bytes.
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    /// Maps `size` bytes of log at `offset` in `file` (the SET_LOG_BASE message).
    pub fn map(file: &File, size: u64, offset: u64) -> Result<DirtyLog, MemError> {
        let len = size.checked_add(offset).ok_or(MemError::BadRegion)?;
        if size == 0 || len > 1 << 40 {
            return Err(MemError::BadRegion);
        }
        let file_len = file.metadata().map_err(|_| MemError::Stat(errno()))?.len();
        if len > file_len {
            return Err(MemError::PastEndOfFile);
        }
        let map_len = usize::try_from(len).map_err(|_| MemError::BadRegion)?;
        let offset = usize::try_from(offset).map_err(|_| MemError::BadRegion)?;
        // SAFETY: a new shared mapping of a descriptor the frontend sent; length checked
        // against the file above. We only ever touch it as atomic bytes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemError::Mmap(errno()));
        }
        LIVE_MAPPINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = p as usize + offset;
        Ok(DirtyLog {
            map_base: p as usize,
            map_len,
            base,
            size,
        })
    }

    /// Marks the pages of guest-physical `[gpa, gpa + len)` dirty. Pages beyond the log are
    /// not marked (a log smaller than the memory is the frontend's choice).
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        // Release: the data written to these pages happens-before the bits that announce it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        for page in first..=last.min(self.size.saturating_mul(8).saturating_sub(1)) {
            let byte = usize::try_from(page / 8).unwrap_or(usize::MAX);
            // SAFETY: `page / 8 < size`, so the byte lies inside the mapped log; an AtomicU8 is
            // a u8 with no alignment needs, and the log is only accessed atomically (the
            // frontend reads and clears it with atomics too).
            let b = unsafe { &*((self.base + byte) as *const std::sync::atomic::AtomicU8) };
            b.fetch_or(1 << (page % 8), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether the page holding guest-physical `gpa` is marked (tests, and the fuzz target).
    pub fn is_marked(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        if page / 8 >= self.size {
            return false;
        }
        let byte = usize::try_from(page / 8).unwrap_or(usize::MAX);
        // SAFETY: as in `mark`.
        let b = unsafe { &*((self.base + byte) as *const std::sync::atomic::AtomicU8) };
        b.load(std::sync::atomic::Ordering::Relaxed) & (1 << (page % 8)) != 0
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `map` made; nothing refers to it once the last `Arc` of
        // this log is gone (rings hold one).
        unsafe { libc::munmap(self.map_base as *mut libc::c_void, self.map_len) };
        LIVE_MAPPINGS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn memfd(size: u64) -> File {
        let name = std::ffi::CString::new("bulwark-test").unwrap();
        // SAFETY: valid C string; the returned fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        use std::os::unix::io::FromRawFd;
        // SAFETY: fd is a fresh, owned descriptor.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn translate_checks_bounds() {
        let f = memfd(1 << 20);
        let d = RegionDesc {
            gpa: 0x1000_0000,
            size: 1 << 20,
            uva: 0x7f00_0000_0000,
            offset: 0,
        };
        let m = GuestMemory::map(&[d], &[f]).unwrap();
        assert!(m.translate(0x1000_0000, 1 << 20).is_some());
        assert!(m.translate(0x1000_0000 + (1 << 20) - 1, 1).is_some());
        assert!(m.translate(0x1000_0000 + (1 << 20) - 1, 2).is_none());
        assert!(m.translate(0x0fff_ffff, 1).is_none());
        assert!(m.translate(0x1000_0000, u64::MAX).is_none());
        assert!(m.translate(u64::MAX, 2).is_none());
        assert!(m.translate_uva(0x7f00_0000_0010, 16).is_some());
        assert!(m.translate_uva(0x1000_0000, 16).is_none());
    }

    /// A table refused at its second region leaves nothing of the first mapped, however
    /// often a frontend sends it (the fuzz target `vhost` found each one leaking a mapping).
    #[test]
    fn a_refused_table_unmaps_what_it_mapped() {
        let ok = RegionDesc {
            gpa: 0,
            size: 4096,
            uva: 0,
            offset: 0,
        };
        let past_end = RegionDesc {
            gpa: 1 << 20,
            size: 2 << 20,
            uva: 1 << 30,
            offset: 0,
        };
        let before = live_mappings();
        for _ in 0..100 {
            assert_eq!(
                GuestMemory::map(&[ok, past_end], &[memfd(4096), memfd(1 << 20)]).unwrap_err(),
                MemError::PastEndOfFile
            );
        }
        // Other tests of this binary may map guest memory meanwhile: far fewer than 100.
        assert!(
            live_mappings() < before + 10,
            "{before} -> {}",
            live_mappings()
        );
    }

    #[test]
    fn refuses_bad_tables() {
        let d = RegionDesc {
            gpa: 0,
            size: 2 << 20,
            uva: 0,
            offset: 0,
        };
        assert_eq!(
            GuestMemory::map(&[d], &[memfd(1 << 20)]).unwrap_err(),
            MemError::PastEndOfFile
        );
        let a = RegionDesc {
            gpa: 0,
            size: 4096,
            uva: 0,
            offset: 0,
        };
        let b = RegionDesc {
            gpa: 2048,
            size: 4096,
            uva: 1 << 30,
            offset: 0,
        };
        assert_eq!(
            GuestMemory::map(&[a, b], &[memfd(8192), memfd(8192)]).unwrap_err(),
            MemError::Overlap
        );
        let z = RegionDesc {
            gpa: 0,
            size: 0,
            uva: 0,
            offset: 0,
        };
        assert_eq!(
            GuestMemory::map(&[z], &[memfd(4096)]).unwrap_err(),
            MemError::BadRegion
        );
        let o = RegionDesc {
            gpa: u64::MAX - 10,
            size: 4096,
            uva: 0,
            offset: 0,
        };
        assert_eq!(
            GuestMemory::map(&[o], &[memfd(4096)]).unwrap_err(),
            MemError::BadRegion
        );
    }
}
