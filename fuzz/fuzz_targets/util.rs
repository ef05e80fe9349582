//! What the targets share: reading structured values out of the fuzzer's bytes, memfds, and a
//! per-process scratch directory that is removed when the process exits.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};

/// The fuzzer's bytes, read front to back. Past the end every read is zero (and `done` is
/// true), so any prefix of an input is an input too.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn done(&self) -> bool {
        self.data.is_empty()
    }

    pub fn left(&self) -> usize {
        self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in &mut a {
            *b = self.u8();
        }
        a
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (b, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        b
    }

    /// Bytes preceded by their length (`u16`, at most `max`).
    pub fn blob(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u16()) % (max + 1);
        self.bytes(n)
    }

    /// One of `items` (the first past the end of the input).
    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[usize::from(self.u8()) % items.len()]
    }
}

/// A split-ring descriptor as a driver writes it: address, length, flags, next.
pub fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// The flags a correct driver gives a chain's descriptor: NEXT unless it is the `last`,
/// WRITE in a receive (`writable`) chain.
pub fn chain_flags(last: bool, writable: bool) -> u16 {
    u16::from(!last) | if writable { 2 } else { 0 }
}

/// A new memfd of `len` bytes (sparse).
pub fn memfd(name: &str, len: u64) -> File {
    let name = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: a valid C string; the returned descriptor is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).expect("size a memfd");
    f
}

/// A directory of this process's own under `parent` (`<parent>/bulwark-fuzz-<what>-<pid>`),
/// created now and removed when the process exits normally (libFuzzer's -max_total_time and
/// -runs end that way); a crashed run leaves it behind, and the next run of the same target
/// removes those of processes that are gone.
pub fn scratch_dir(parent: &Path, what: &str) -> PathBuf {
    let prefix = format!("bulwark-fuzz-{what}-");
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: kill with signal 0 only asks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    SCRATCH.with_dir(dir.clone());
    dir
}

/// Removes everything inside `dir` (it stays).
pub fn empty_dir(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

struct Scratch(std::sync::Mutex<Vec<PathBuf>>);

static SCRATCH: Scratch = Scratch(std::sync::Mutex::new(Vec::new()));

impl Scratch {
    fn with_dir(&self, dir: PathBuf) {
        let mut dirs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if dirs.is_empty() {
            // SAFETY: registers a plain extern "C" function with no arguments.
            unsafe { libc::atexit(remove_scratch) };
        }
        dirs.push(dir);
    }
}

extern "C" fn remove_scratch() {
    if let Ok(dirs) = SCRATCH.0.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
