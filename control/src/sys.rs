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
