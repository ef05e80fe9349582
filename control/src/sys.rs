//! Signal handling for the daemon: block SIGINT/SIGTERM in every thread, wait for them in one.
//! And for the CLI: die quietly on a closed pipe, as command-line tools do. (CPU affinity is
//! `dataplane::pin_to_cpus`, shared with the workers.)
#![allow(unsafe_code)]

/// Restores SIGPIPE's default action (Rust ignores it), so `bulwarkctl conns | head` ends
/// quietly instead of panicking on a write to a closed pipe.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and the threads it spawns later.
pub fn block_signals() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for one of the blocked signals and returns its number.
pub fn wait_signal() -> i32 {
    // SAFETY: as above; sigwait writes the signal number into a live i32.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// This host's name (the kernel's), or "localhost" if it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Whether `path`'s directory is on a memory filesystem (tmpfs, ramfs or hugetlbfs), where a
/// shared mapping is never written back to a disk.
pub fn on_tmpfs(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs reads a NUL-terminated path and writes a struct statfs we own, zeroed.
    let (rc, st) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(c.as_ptr(), &mut st), st)
    };
    const RAMFS_MAGIC: libc::__fsword_t = 0x8584_58f6;
    rc == 0
        && matches!(
            st.f_type,
            libc::TMPFS_MAGIC | libc::HUGETLBFS_MAGIC | RAMFS_MAGIC
        )
}

/// How much of the memory at `range` (this process's addresses) is backed by huge pages:
/// (bytes of the mappings that overlap it, bytes of those in huge pages), from
/// `/proc/self/smaps` (`AnonHugePages`, `ShmemPmdMapped`, `FilePmdMapped`; a hugetlbfs
/// mapping counts whole). None when smaps cannot be read or no mapping overlaps.
pub fn huge_backing(range: std::ops::Range<usize>) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    parse_huge_backing(&smaps, range)
}

fn parse_huge_backing(smaps: &str, range: std::ops::Range<usize>) -> Option<(u64, u64)> {
    let (mut total, mut huge, mut found) = (0u64, 0u64, false);
    let (mut inside, mut size) = (false, 0u64);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            // A mapping's header line: "start-end perms offset dev inode [path]".
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < range.end && range.start < b;
                size = b.saturating_sub(a) as u64;
                if inside {
                    found = true;
                    total += size;
                }
                continue;
            }
        }
        if !inside {
            continue;
        }
        let kb = || -> u64 {
            words
                .clone()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "AnonHugePages:" | "ShmemPmdMapped:" | "FilePmdMapped:" => huge += kb() * 1024,
            "KernelPageSize:" if kb() >= 2048 => huge += size,
            _ => {}
        }
    }
    found.then_some((total, huge.min(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_huge_backing_from_smaps() {
        let smaps = "\
7f0000000000-7f0000400000 rw-s 00000000 00:2d 12 /run/bulwark/conntrack.table
Size:               4096 kB
KernelPageSize:        4 kB
AnonHugePages:         0 kB
ShmemPmdMapped:     2048 kB
FilePmdMapped:         0 kB
7f0000400000-7f0000401000 rw-p 00000000 00:00 0
Size:                  4 kB
AnonHugePages:      2048 kB
";
        let r = 0x7f00_0000_1000..0x7f00_0020_0000;
        assert_eq!(parse_huge_backing(smaps, r), Some((4 << 20, 2 << 20)));
        assert_eq!(parse_huge_backing(smaps, 0x1000..0x2000), None);
        let hugetlb = smaps.replace("KernelPageSize:        4 kB", "KernelPageSize:     2048 kB");
        assert_eq!(
            parse_huge_backing(&hugetlb, 0x7f00_0000_0000..0x7f00_0000_1000),
            Some((4 << 20, 4 << 20))
        );
        // The real thing: this test's own heap, in 4 KiB or huge pages, is found.
        let v = vec![1u8; 1 << 20];
        let at = v.as_ptr() as usize;
        let (total, huge) = huge_backing(at..at + v.len()).expect("the heap is mapped");
        assert!(total >= 1 << 20 && huge <= total, "{total} {huge}");
    }
}
