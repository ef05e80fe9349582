//! The connection table in a file that outlives the process (`Table::open`).
//!
//! A state file (on tmpfs: `/dev/shm` or a run directory there) holds a header page, then the
//! table's slots and tags exactly as the workers use them: the table *is* the mapped file, so
//! keeping it costs the data path nothing and a `kill -9` loses nothing a worker had stored. A
//! restarted bulwarkd maps it again, checks the header, and `Table::recover`s the slots.
//!
//! The header (64-bit words, little-endian as the machine's):
//!
//! | word | content |
//! |---|---|
//! | 0 | magic `MAGIC` |
//! | 1 | layout version (`LAYOUT_VERSION`) |
//! | 2 | checksum of the layout description (`LAYOUT`): a binary whose slot words or bits differ has another |
//! | 3 | buckets |
//! | 4 | capacity (IPv4 connections) |
//! | 5 | hash seed (the file is the process's secret: mode 0600) |
//! | 6 | boot id checksum (`/proc/sys/kernel/random/boot_id`): times are seconds since boot |
//! | 7 | file size |
//! | 8 | checksum of words 0-7 |
//! | 9 | `OPEN` while a process has the file, `CLOSED` after a clean stop |
//! | 10 | pid of the last process that opened it |
//! | 11 | how many processes opened it |
//!
//! A file whose words 0-8 do not match this binary and configuration is not read: it is
//! renamed aside (`<file>.refused`, so an operator can go back to the binary that wrote it)
//! and the table starts empty, or, when only the capacity differs, its connections are moved
//! into a new table of the configured size ("converted"). An exclusive `flock` on the file
//! keeps a second process from mapping a table that is in use.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::mem::{Mapping, Region};
use crate::table::{geometry, memory_layout, Config, Recovery, Table};

/// "BWCTABLE".
const MAGIC: u64 = u64::from_le_bytes(*b"BWCTABLE");
/// The state file's layout version: change it (or `LAYOUT`) with any change to what the
/// slots, tags or header hold.
pub const LAYOUT_VERSION: u64 = 1;
/// What the slot words hold, as `DESIGN.md` describes them; its checksum is in the header,
/// so a binary that packs them otherwise refuses the file even if nobody bumped the version.
/// (`@2MiB`: the tags of a table with 2 MiB of slots or more; where the regions of a smaller
/// one are is checked through the file size, see `memory_layout`.)
const LAYOUT: &str = "slot=64B:8xu64 bucket=16 tags=u8/slot@2MiB \
    meta=status:0-1,lock:2,cont:3,wide:4,replied:5,pickup:6,doomed:7,class:8-14,stale:15,epoch:16-31,owner:32-47,peer:48-63 \
    addr4=src:0-31,dst:32-63|cont-index \
    ports=sport:0-15,dport:16-31,zone:32-47,proto:48-55,family:56-63 \
    tcp=3w(TcpConn::to_words) time=seen:0-31,rule-eg:32-47,rule-in:48-63 pkts=count:0-39,born:40-63 \
    cont=addr6:w1-4 hash=mix-v1 buckets=mulshift2+next";
const HEADER_WORDS: usize = 512;
/// The largest capacity a state file may claim (bulwarkd's config allows 2^28).
const MAX_CAPACITY: usize = 1 << 30;
const H_CHECKSUM: usize = 8;
const H_STATE: usize = 9;
const H_PID: usize = 10;
const H_OPENS: usize = 11;
const OPEN: u64 = 1;
const CLOSED: u64 = 2;

/// The open state file behind a table: its header, and the locked file.
#[derive(Debug)]
pub struct Backing {
    header: Region<AtomicU64>,
    path: PathBuf,
    // Held for the exclusive lock (released when the table drops).
    _file: File,
}

/// How `Table::open` found the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// No state file existed; a new one was made.
    Created,
    /// The table another process left, recovered. `crashed`: that process did not stop
    /// cleanly.
    Restored {
        /// What recovery found.
        recovery: Recovery,
        /// The last process did not close the file (killed, crashed).
        crashed: bool,
        /// Its pid.
        pid: u64,
    },
    /// The file was for another capacity: its connections were moved into a new table.
    Converted {
        /// The capacity it had.
        from_capacity: u64,
        /// What recovery found in it.
        recovery: Recovery,
        /// Connections that did not fit the new table.
        lost: usize,
    },
    /// The file could not be used (the reason says why); it was renamed to `aside` and the
    /// table starts empty.
    Refused {
        /// Why.
        reason: String,
        /// Where the file is now.
        aside: PathBuf,
    },
}

impl std::fmt::Display for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::Created => write!(f, "new, empty"),
            Opened::Restored {
                recovery: r,
                crashed,
                pid,
            } => write!(
                f,
                "restored from the {} of pid {pid}: {} connections kept (each judged again by \
                 the current policy on its next packet); cleared {} unpublished, {} removed, \
                 {} expired, {} invalid; {} were mid-update",
                if *crashed { "crash" } else { "clean stop" },
                r.kept,
                r.unpublished,
                r.removed,
                r.expired,
                r.invalid,
                r.mid_update
            ),
            Opened::Converted {
                from_capacity,
                recovery,
                lost,
            } => write!(
                f,
                "converted from capacity {from_capacity}: {} connections moved, {lost} did not \
                 fit",
                recovery.kept - lost
            ),
            Opened::Refused { reason, aside } => write!(
                f,
                "REFUSED ({reason}); moved to {} and started empty",
                aside.display()
            ),
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn boot_id() -> u64 {
    std::fs::read("/proc/sys/kernel/random/boot_id").map_or(0, |b| fnv(b.trim_ascii()))
}

/// Header words 0-7 for a table of `capacity` with `nbuckets` and `seed`.
fn header_words(capacity: usize, nbuckets: usize, seed: u64, size: usize) -> [u64; 8] {
    [
        MAGIC,
        LAYOUT_VERSION,
        fnv(LAYOUT.as_bytes()),
        nbuckets as u64,
        capacity as u64,
        seed,
        boot_id(),
        size as u64,
    ]
}

fn checksum(words: &[u64]) -> u64 {
    fnv(&words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect::<Vec<_>>())
}

/// Header words 0-8 (checksum last) of a state file that `Table::open` on this machine accepts
/// for a table of `capacity` with the hash `seed`; word 7 is the file's size. For the `state`
/// fuzz target, which writes state files of its own; not an API.
#[doc(hidden)]
pub fn fuzz_valid_header(capacity: usize, seed: u64) -> [u64; 9] {
    let (nbuckets, n) = geometry(capacity);
    let (_, _, size) = memory_layout(n);
    let w = header_words(capacity, nbuckets, seed, size);
    let mut out = [0; 9];
    out[..8].copy_from_slice(&w);
    out[H_CHECKSUM] = checksum(&w);
    out
}

/// Where a state file for `capacity` has its slots and tags, and its size: (slots offset, tags
/// offset, bytes). For the `state` fuzz target; not an API.
#[doc(hidden)]
pub fn fuzz_layout(capacity: usize) -> (u64, u64, u64) {
    let (_, n) = geometry(capacity);
    let (slots_at, tags_at, size) = memory_layout(n);
    (slots_at as u64, tags_at as u64, size as u64)
}

fn open_file(path: &Path, create: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .open(path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is in use by another process (another bulwarkd with the same \
                 conntrack.state_file?)",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

impl Table {
    /// The table kept in the state file at `path`: the one a previous process left there
    /// (recovered, converted to `cfg.capacity`, or refused and set aside when its layout
    /// differs), or a new one. Errors are the file's (cannot create, map, or lock it: in use
    /// by another process), never its contents'.
    pub fn open(cfg: &Config, path: &Path, now: u32) -> io::Result<(Table, Opened)> {
        let (nbuckets, n) = geometry(cfg.capacity);
        let (_, _, size) = memory_layout(n);
        match File::open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((Self::create(cfg, path)?, Opened::Created));
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let file = open_file(path, false)?;
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        let refuse = |reason: String| -> io::Result<(Table, Opened)> {
            let aside = path.with_extension("refused");
            std::fs::rename(path, &aside)?;
            Ok((Self::create(cfg, path)?, Opened::Refused { reason, aside }))
        };
        if len < HEADER_WORDS * 8 {
            return refuse(format!("{len} bytes: shorter than a header"));
        }
        let map = Arc::new(Mapping::shared(&file, len)?);
        let header: Region<AtomicU64> = Region::new(&map, 0, HEADER_WORDS);
        let h: Vec<u64> = header[..9]
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect();
        let theirs = |i: usize| h[i];
        if theirs(0) != MAGIC {
            return refuse("not a bulwark connection table".into());
        }
        if checksum(&h[..8]) != theirs(H_CHECKSUM) {
            return refuse("its header's checksum is wrong".into());
        }
        if theirs(1) != LAYOUT_VERSION {
            return refuse(format!(
                "layout version {}, this bulwarkd has {LAYOUT_VERSION}",
                theirs(1)
            ));
        }
        if theirs(2) != fnv(LAYOUT.as_bytes()) {
            return refuse(format!(
                "layout version {LAYOUT_VERSION} but another slot layout (checksum {:#x}, this \
                 bulwarkd's {:#x})",
                theirs(2),
                fnv(LAYOUT.as_bytes())
            ));
        }
        if theirs(6) != boot_id() {
            return refuse("written before the machine restarted (its times are stale)".into());
        }
        let (their_buckets, their_cap) = (
            usize::try_from(theirs(3)).unwrap_or(0),
            usize::try_from(theirs(4)).unwrap_or(0),
        );
        // Bounded before any arithmetic on them (the fuzz target `state` found the overflow):
        // no table this binary makes is bigger.
        if their_cap == 0 || their_cap > MAX_CAPACITY || their_buckets > MAX_CAPACITY {
            return refuse(format!(
                "its header's capacity {their_cap} or buckets {their_buckets} is out of range"
            ));
        }
        if geometry(their_cap).0 != their_buckets
            || memory_layout(their_buckets * 16).2 != usize::try_from(theirs(7)).unwrap_or(0)
            || usize::try_from(theirs(7)).unwrap_or(0) != len
        {
            return refuse(format!(
                "its size ({len} bytes) does not match its header ({} buckets, capacity \
                 {their_cap})",
                theirs(3)
            ));
        }
        let crashed = header[H_STATE].load(Ordering::Acquire) != CLOSED;
        let pid = header[H_PID].load(Ordering::Acquire);
        if their_cap == cfg.capacity && len == size {
            let backing = Backing {
                header,
                path: path.to_path_buf(),
                _file: file,
            };
            let t = Table::over(cfg, map, nbuckets, theirs(5), Some(backing));
            let recovery = t.recover(now);
            t.mark_open();
            return Ok((
                t,
                Opened::Restored {
                    recovery,
                    crashed,
                    pid,
                },
            ));
        }
        // Another capacity: recover the old table where it is, then move its connections
        // into a new file of the configured size, which replaces it.
        let old = Table::over(
            &Config {
                capacity: their_cap,
                ..cfg.clone()
            },
            map,
            their_buckets,
            theirs(5),
            None,
        );
        let recovery = old.recover(now);
        let tmp = path.with_extension("converting");
        let _ = std::fs::remove_file(&tmp);
        let mut new = Self::create(cfg, &tmp)?;
        let mut lost = 0;
        for r in old.records(None, now) {
            if new.adopt(&r, now, false, None).is_err() {
                lost += 1;
            }
        }
        std::fs::rename(&tmp, path)?;
        if let Some(b) = new.file.as_mut() {
            b.path = path.to_path_buf();
        }
        drop(old);
        drop(file);
        Ok((
            new,
            Opened::Converted {
                from_capacity: their_cap as u64,
                recovery,
                lost,
            },
        ))
    }

    /// A new, empty table in a new state file at `path` (replacing any).
    fn create(cfg: &Config, path: &Path) -> io::Result<Table> {
        let (nbuckets, n) = geometry(cfg.capacity);
        let (_, _, size) = memory_layout(n);
        let _ = std::fs::remove_file(path);
        let file = open_file(path, true)?;
        // Allocated now: no page is allocated under a worker, and a full tmpfs is an error
        // here rather than a SIGBUS later.
        if let Err(e) = Mapping::allocate(&file, size) {
            let _ = std::fs::remove_file(path);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot allocate {size} bytes for {}: {e}", path.display()),
            ));
        }
        let map = Arc::new(Mapping::shared(&file, size)?);
        let header: Region<AtomicU64> = Region::new(&map, 0, HEADER_WORDS);
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x6374_u64) | 1;
        let words = header_words(cfg.capacity, nbuckets, seed, size);
        for (i, w) in words.iter().enumerate() {
            header[i].store(*w, Ordering::Relaxed);
        }
        header[H_CHECKSUM].store(checksum(&words), Ordering::Release);
        let backing = Backing {
            header,
            path: path.to_path_buf(),
            _file: file,
        };
        let t = Table::over(cfg, map, nbuckets, seed, Some(backing));
        t.mark_open();
        Ok(t)
    }

    fn mark_open(&self) {
        if let Some(b) = &self.file {
            b.header[H_STATE].store(OPEN, Ordering::Release);
            b.header[H_PID].store(u64::from(std::process::id()), Ordering::Relaxed);
            b.header[H_OPENS].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a clean stop in the state file (the next process reports a restart, not a
    /// crash). The table stays usable; call it when the workers have stopped.
    pub fn mark_closed(&self) {
        if let Some(b) = &self.file {
            b.header[H_STATE].store(CLOSED, Ordering::Release);
        }
    }

    /// The state file the table lives in, if any.
    pub fn state_file(&self) -> Option<&Path> {
        self.file.as_ref().map(|b| b.path.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Slot;
    use crate::{Key, NewConn, TcpConn, Timeouts};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const NOW: u32 = 1000;

    fn cfg(capacity: usize) -> Config {
        Config {
            capacity,
            vnics: 8,
            workers: 1,
            timeouts: Timeouts::default(),
        }
    }

    /// A fresh path under the temp dir (removed by `Tmp`'s drop with what grew beside it).
    struct Tmp(PathBuf);
    impl Tmp {
        fn new(name: &str) -> Tmp {
            let d = std::env::temp_dir().join(format!(
                "bwct-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Tmp(d)
        }
        fn file(&self) -> PathBuf {
            self.0.join("conntrack.table")
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key(i: u32, v6: bool) -> Key {
        let (src, dst) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i as u16)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, (i >> 16) as u16)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)),
            )
        };
        Key {
            zone: 1,
            proto: crate::ip_proto::TCP,
            src,
            dst,
            sport: 1024 + (i % 50_000) as u16,
            dport: 80,
        }
    }

    fn fill(t: &Table, n: u32) -> Vec<Key> {
        let tcp = TcpConn::new(
            &crate::Segment {
                seq: 7,
                flags: crate::tcp::flags::SYN,
                win: 1000,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        (0..n)
            .map(|i| {
                let k = key(i, i % 5 == 0);
                let new = NewConn {
                    owner: (i % 3) as u16,
                    peer: 3,
                    tcp: Some(tcp),
                    epoch: 9,
                    rules: (1, 2),
                };
                let (_, created) = t.insert(&k, t.hash(&k), &new, NOW, NOW * 1000).unwrap();
                assert!(created);
                k
            })
            .collect()
    }

    fn found(t: &Table, keys: &[Key]) -> usize {
        keys.iter()
            .filter(|k| {
                t.lookup(k, t.hash(k)).is_some() && t.lookup(&k.reversed(), t.hash(k)).is_some()
            })
            .count()
    }

    /// Killed without a clean stop: the next open finds every connection, marked stale, with
    /// its owner's count; a clean stop reads as one.
    #[test]
    fn reopened_after_a_crash_keeps_every_connection() {
        let tmp = Tmp::new("crash");
        let (t, opened) = Table::open(&cfg(1000), &tmp.file(), NOW).unwrap();
        assert_eq!(opened, Opened::Created);
        let keys = fill(&t, 600);
        let counts: Vec<u32> = (0..4).map(|v| t.vnic_count(v)).collect();
        drop(t); // no mark_closed: as after kill -9
        let (t, opened) = Table::open(&cfg(1000), &tmp.file(), NOW + 5).unwrap();
        let Opened::Restored {
            recovery, crashed, ..
        } = opened
        else {
            panic!("{opened:?}")
        };
        assert!(crashed);
        assert_eq!(recovery.kept, 600);
        assert_eq!(t.len(), 600);
        assert_eq!(found(&t, &keys), 600);
        assert_eq!((0..4).map(|v| t.vnic_count(v)).collect::<Vec<_>>(), counts);
        let f = t.lookup(&keys[3], t.hash(&keys[3])).unwrap();
        assert_eq!(
            t.validated_at(f.slot, 1),
            None,
            "kept connections are stale"
        );
        assert_eq!(t.endpoints(f.slot), (0, 3));
        // The table goes on: new connections, removals, a sweep.
        assert_eq!(fill_more(&t), 100);
        assert!(t.remove(f.slot));
        t.mark_closed();
        drop(t);
        let (t, opened) = Table::open(&cfg(1000), &tmp.file(), NOW + 6).unwrap();
        assert!(
            matches!(opened, Opened::Restored { crashed: false, recovery, .. } if recovery.kept == 699),
            "{opened:?}"
        );
        assert_eq!(t.len(), 699);
    }

    fn fill_more(t: &Table) -> usize {
        (10_000..10_100)
            .filter(|&i| {
                let k = key(i, false);
                t.insert(&k, t.hash(&k), &NewConn::default(), NOW, NOW * 1000)
                    .is_ok_and(|(_, c)| c)
            })
            .count()
    }

    fn slot(t: &Table, k: &Key) -> usize {
        t.lookup(k, t.hash(k)).unwrap().slot
    }

    fn words(t: &Table, s: usize) -> &Slot {
        &t.slots[s]
    }

    /// Every half-done write a process can die in is cleared, and nothing a lookup could
    /// misread is left: an unpublished entry, a tombstone, a cut connection, a head whose
    /// IPv6 half is gone, a key in the wrong bucket, an update bit left set, a creator's
    /// insert flag.
    #[test]
    fn recovery_clears_what_a_crash_left_half_done() {
        let tmp = Tmp::new("half");
        let (t, _) = Table::open(&cfg(1000), &tmp.file(), NOW).unwrap();
        let keys = fill(&t, 200);
        let w = |k: usize| &words(&t, slot(&t, &keys[k])).w;
        // 1: the update bit held (mid TCP update).
        w(1)[0].fetch_or(1 << 2, Ordering::Relaxed);
        // 2: tombstoned by the sweeper, not yet reclaimed.
        let s2 = slot(&t, &keys[2]);
        assert!(t.remove(s2));
        // 3: cut by a worker.
        t.expire_now(slot(&t, &keys[3]));
        // 4: its key changed under it (a torn write): no longer in its buckets. The zone bits
        // of the ports word flip by a pattern whose key has none of its buckets at the slot
        // (the seed is random: a fixed pattern kept the slot in the new key's buckets in about
        // one run in twenty).
        let s4 = slot(&t, &keys[4]);
        let flip = (1u16..)
            .find(|&d| {
                let k = Key {
                    zone: keys[4].zone ^ d,
                    ..keys[4]
                };
                !t.buckets(t.hash(&k)).contains(&(s4 / crate::table::BUCKET))
            })
            .unwrap();
        w(4)[2].fetch_xor(u64::from(flip) << 32, Ordering::Relaxed);
        // 5 (IPv6): its continuation lost.
        let c5 = w(5)[1].load(Ordering::Relaxed) as usize;
        words(&t, c5).w[0].store(0, Ordering::Relaxed);
        // 7: published but not yet tagged is fine; an unpublished (BUSY) slot with a key.
        let free = (0..t.slots.len())
            .find(|&s| words(&t, s).w[0].load(Ordering::Relaxed) == 0)
            .unwrap();
        words(&t, free).w[0].store(1, Ordering::Relaxed);
        words(&t, free).w[2].store(u64::MAX, Ordering::Relaxed);
        // An insert flag left held.
        t.inserting[0].store(true, Ordering::Relaxed);
        drop(t);

        let (t, opened) = Table::open(&cfg(1000), &tmp.file(), NOW).unwrap();
        let Opened::Restored { recovery: r, .. } = opened else {
            panic!("{opened:?}")
        };
        assert_eq!(r.mid_update, 1);
        assert_eq!(r.unpublished, 1);
        assert_eq!(r.removed, 2, "the tombstone and the cut one");
        assert_eq!(r.invalid, 2, "the moved key and the broken IPv6 pair");
        assert_eq!(r.kept, 196);
        assert_eq!(t.len(), 196);
        let gone = [2, 3, 4, 5];
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                t.lookup(k, t.hash(k)).is_some(),
                !gone.contains(&i),
                "connection {i}"
            );
        }
        // The cleared slots are free again and every flag is down: the table fills to its
        // capacity.
        assert!(!t.inserting.iter().any(|f| f.load(Ordering::Relaxed)));
        let mut n = 0;
        for i in 20_000..21_000 {
            let k = key(i, false);
            if t.insert(&k, t.hash(&k), &NewConn::default(), NOW, NOW * 1000)
                .is_ok()
            {
                n += 1;
            }
        }
        let units: usize = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| !gone.contains(i))
            .map(|(_, k)| if k.src.is_ipv6() { 2 } else { 1 })
            .sum();
        assert_eq!(n, 1000 - units, "fills to its capacity again");
    }

    /// A connection whose last-seen time is in the future (a damaged file) is kept, starts
    /// ageing at the reopening, and moves through a conversion as a live connection.
    #[test]
    fn a_last_seen_time_in_the_future_starts_ageing_at_recovery() {
        let tmp = Tmp::new("future");
        let (t, _) = Table::open(&cfg(1000), &tmp.file(), NOW).unwrap();
        let keys = fill(&t, 2);
        words(&t, slot(&t, &keys[0])).w[6].store(u64::from(NOW + 1_000_000), Ordering::Relaxed);
        drop(t);
        // Another capacity: converted through records, the connection live in the new table.
        let (t, opened) = Table::open(&cfg(2000), &tmp.file(), NOW).unwrap();
        assert!(
            matches!(opened, Opened::Converted { lost: 0, .. }),
            "{opened:?}"
        );
        assert_eq!(t.records(None, NOW).len(), 2);
        let s = slot(&t, &keys[0]);
        assert!(!t.expired(s, NOW));
        assert_eq!(words(&t, s).w[6].load(Ordering::Relaxed) as u32, NOW);
        drop(t);
        // The same capacity: recovered in place, its time now.
        let (t, _) = Table::open(&cfg(2000), &tmp.file(), NOW + 5).unwrap();
        let s = slot(&t, &keys[0]);
        assert!(!t.expired(s, NOW + 5));
        assert_eq!(words(&t, s).w[6].load(Ordering::Relaxed) as u32, NOW);
    }

    /// `len` bytes of state file, zero but for the header words `h`.
    fn file_with_header(h: &[u64], len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        for (i, w) in h.iter().enumerate() {
            bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        bytes
    }

    /// A header that does not match is refused (set aside, the table starts empty); another
    /// capacity is converted; a file in use is an error.
    #[test]
    fn mismatched_files_are_refused_or_converted() {
        let tmp = Tmp::new("mismatch");
        let (t, _) = Table::open(&cfg(1000), &tmp.file(), NOW).unwrap();
        let keys = fill(&t, 300);
        let e = Table::open(&cfg(1000), &tmp.file(), NOW).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(t);

        // Another capacity: converted, every connection moved.
        let (t, opened) = Table::open(&cfg(5000), &tmp.file(), NOW).unwrap();
        assert!(
            matches!(
                opened,
                Opened::Converted {
                    from_capacity: 1000,
                    lost: 0,
                    ..
                }
            ),
            "{opened:?}"
        );
        assert_eq!(found(&t, &keys), 300);
        drop(t);
        // Smaller than what it holds: what does not fit is counted.
        let (t, opened) = Table::open(&cfg(200), &tmp.file(), NOW).unwrap();
        let Opened::Converted { lost, .. } = opened else {
            panic!("{opened:?}")
        };
        assert_eq!(found(&t, &keys) + lost, 300);
        assert!(lost > 0);
        drop(t);

        // Another layout version: refused and set aside, the new table empty.
        {
            let f = OpenOptions::new().write(true).open(tmp.file()).unwrap();
            use std::os::unix::fs::FileExt;
            f.write_at(&99u64.to_le_bytes(), 8).unwrap();
        }
        let (t, opened) = Table::open(&cfg(200), &tmp.file(), NOW).unwrap();
        let Opened::Refused { reason, aside } = opened else {
            panic!("{opened:?}")
        };
        assert!(reason.contains("checksum"), "{reason}");
        assert!(aside.exists());
        assert!(t.is_empty());
        drop(t);
        // Garbage and a short file.
        std::fs::write(tmp.file(), b"not a table").unwrap();
        let (t, opened) = Table::open(&cfg(200), &tmp.file(), NOW).unwrap();
        assert!(matches!(opened, Opened::Refused { .. }), "{opened:?}");
        assert!(t.is_empty());
        drop(t);
        let mut bytes = std::fs::read(tmp.file()).unwrap();
        bytes[8] = 2; // version 2, checksum fixed up: refused by version
        let mut h: Vec<u64> = bytes[..64]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        h[1] = 2;
        bytes[64..72].copy_from_slice(&checksum(&h).to_le_bytes());
        std::fs::write(tmp.file(), &bytes).unwrap();
        let (_, opened) = Table::open(&cfg(200), &tmp.file(), NOW).unwrap();
        assert!(
            matches!(&opened, Opened::Refused { reason, .. } if reason.contains("layout version 2")),
            "{opened:?}"
        );
        // A header whose checksum holds but whose capacity no table has is refused before any
        // arithmetic on it overflows.
        let mut h = fuzz_valid_header(1000, 7);
        h[4] = u64::MAX / 3;
        h[H_CHECKSUM] = checksum(&h[..8]);
        std::fs::write(tmp.file(), file_with_header(&h, HEADER_WORDS * 8)).unwrap();
        let (_, opened) = Table::open(&cfg(200), &tmp.file(), NOW).unwrap();
        assert!(
            matches!(&opened, Opened::Refused { reason, .. } if reason.contains("out of range")),
            "{opened:?}"
        );
    }

    /// A small table's file is laid out on 4 KiB pages, a large one's on 2 MiB boundaries; a
    /// small table's file laid out on 2 MiB boundaries (the one rule before), its header
    /// otherwise valid and naming its size, is refused whatever capacity opens it: it is never
    /// read with this rule's offsets.
    #[test]
    fn files_laid_out_by_another_rule_are_refused() {
        let tmp = Tmp::new("rule");
        let (t, _) = Table::open(&cfg(1000), &tmp.file(), NOW).unwrap();
        fill(&t, 100);
        drop(t);
        let small = std::fs::metadata(tmp.file()).unwrap().len();
        assert_eq!(small, fuzz_layout(1000).2);
        assert!(small < 256 << 10, "{small} bytes for 1,000 connections");
        let big = fuzz_layout(30_000);
        assert_eq!((big.0, big.2 % (2 << 20)), (2 << 20, 0), "{big:?}");

        for capacity in [1000, 2000] {
            let mut h = fuzz_valid_header(1000, 7);
            h[7] = 6 << 20;
            h[H_CHECKSUM] = checksum(&h[..8]);
            let mut bytes = file_with_header(&h, 6 << 20);
            bytes[(2 << 20)..(2 << 20) + 64].fill(0xa5);
            std::fs::write(tmp.file(), &bytes).unwrap();
            let (t, opened) = Table::open(&cfg(capacity), &tmp.file(), NOW).unwrap();
            assert!(
                matches!(&opened, Opened::Refused { reason, .. } if reason.contains("size")),
                "capacity {capacity}: {opened:?}"
            );
            assert!(t.is_empty());
        }
    }
}
