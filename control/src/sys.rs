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
