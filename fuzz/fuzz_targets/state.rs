//! The connection table's state file as a restarted bulwarkd finds it (`conntrack::Table::open`,
//! `Table::recover`; layout at the top of conntrack/src/state.rs and in conntrack/DESIGN.md):
//! a file the fuzzer builds, either through the table itself (a valid header with the input's
//! seed, then connections inserted, removed, cut, touched and updated as a switch would, and
//! the process "killed" or stopped cleanly) or from raw words, then damaged (header words,
//! with or without a valid checksum; slot words, whole slots, slots copied over others; tag
//! bytes; the file's length), then opened with the same or another capacity.
//!
//! `Table::open` must return a table or an error, never panic. A table it returns must be
//! consistent, and stay so through what a switch then does with it (inserts, lookups, TCP
//! updates, removals, sweeps, records moved to another table and back, vNIC flushes and
//! hand-overs): `len()` is the number of connections listed, every listed connection that is
//! not expired is found by `lookup` in both directions (at a slot holding its key), each
//! vNIC's count is the capacity units of the connections it owns, and right after opening,
//! every listed connection can be exported as a record.
//!
//! The file lives in a directory of this process's own under /dev/shm (tmpfs, as bulwarkd's
//! run directory), emptied for every input and removed at exit. Capacities are 64 to 1024
//! (small, so that buckets fill and chains grow), so a file is 16 to 96 KiB.
#![no_main]

mod util;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use conntrack::state::{fuzz_layout, fuzz_valid_header};
use conntrack::{Config, Key, NewConn, Opened, Segment, Table, TcpConn, Timeouts};
use libfuzzer_sys::fuzz_target;
use util::Input;

const CAPACITIES: [usize; 3] = [64, 256, 1024];
/// vNIC ids are 0..VNICS; owners and peers go a little past that.
const VNICS: usize = 8;

fn cfg(capacity: usize) -> Config {
    Config {
        capacity,
        vnics: VNICS,
        workers: 1,
        timeouts: Timeouts::default(),
    }
}

fn dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| util::scratch_dir(Path::new("/dev/shm"), "state"))
}

/// FNV-1a over the words' bytes: the header's checksum (conntrack/src/state.rs).
fn checksum(words: &[u64]) -> u64 {
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// A connection key from the input: IPv4 or IPv6 (rarely mixed), a protocol, a zone, ports.
fn key(inp: &mut Input) -> Key {
    let b = inp.u8();
    let v6 = b & 1 != 0;
    let addr = |inp: &mut Input, v6: bool| -> IpAddr {
        let small = inp.u8();
        if v6 {
            if small & 0x80 != 0 {
                IpAddr::V6(Ipv6Addr::from(
                    u128::from(inp.u64()) << 64 | u128::from(inp.u64()),
                ))
            } else {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(small)))
            }
        } else if small & 0x80 != 0 {
            IpAddr::V4(Ipv4Addr::from(inp.u32()))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, small))
        }
    };
    let src = addr(inp, v6);
    let dst = addr(inp, v6 ^ (b & 0x80 != 0));
    let proto = match b >> 1 & 7 {
        0 | 1 => 6,
        2 | 3 => 17,
        4 => 1,
        5 => 58,
        6 => 47,
        _ => inp.u8(),
    };
    Key {
        zone: u16::from(inp.u8() % 4),
        proto,
        src,
        dst,
        sport: inp.u16(),
        dport: inp.u16(),
    }
}

fn segment(inp: &mut Input) -> Segment {
    let b = inp.u8();
    Segment {
        seq: inp.u32(),
        ack: inp.u32(),
        flags: inp.u8(),
        win: inp.u16(),
        len: u32::from(inp.u16()),
        wscale: (b & 1 != 0).then_some(b >> 1),
    }
}

fn new_conn(inp: &mut Input, k: &Key) -> NewConn {
    let owner = u16::from(inp.u8() % (VNICS as u8 + 2));
    let peer = u16::from(inp.u8() % (VNICS as u8 + 2));
    let b = inp.u8();
    let tcp = (k.proto == 6).then(|| {
        if b & 1 != 0 {
            TcpConn::from_words([inp.u64(), inp.u64(), inp.u64()])
        } else {
            let seg = segment(inp);
            TcpConn::new(&seg, b & 2 != 0).unwrap_or_default()
        }
    });
    NewConn {
        owner,
        peer,
        tcp,
        epoch: inp.u16(),
        rules: (inp.u16(), inp.u16()),
    }
}

/// The invariants a table must keep (see the module docs). Returns the connections listed.
fn check(t: &Table, now: u32) -> Vec<conntrack::ConnInfo> {
    let conns = t.connections(None, now);
    assert_eq!(t.len(), conns.len(), "len() is not the connections listed");
    let mut units: HashMap<u16, u32> = HashMap::new();
    for c in &conns {
        *units.entry(c.owner).or_default() += if c.key.src.is_ipv6() { 2 } else { 1 };
        if c.expired {
            continue;
        }
        for k in [c.key, c.key.reversed()] {
            let f = t
                .lookup(&k, t.hash(&k))
                .unwrap_or_else(|| panic!("listed, not found: {k:?}"));
            let there = t.key_at(f.slot).expect("found at a live slot");
            assert!(
                there == c.key || there == c.key.reversed(),
                "{k:?} found at a slot holding {there:?}"
            );
        }
    }
    for v in 0..VNICS as u16 {
        assert_eq!(
            t.vnic_count(v),
            units.get(&v).copied().unwrap_or(0),
            "vNIC {v}'s count is not the units it owns"
        );
    }
    conns
}

/// What a switch does with a table: the input's operations, each followed by the checks.
fn exercise(t: &Table, inp: &mut Input, mut now: u32) {
    let mut other: Option<Table> = None;
    for _ in 0..24 {
        if inp.done() {
            break;
        }
        let conns = check(t, now);
        let pick = |inp: &mut Input| -> Option<usize> {
            let i = usize::from(inp.u16());
            let c = conns.get(i % conns.len().max(1))?;
            t.lookup(&c.key, t.hash(&c.key)).map(|f| f.slot)
        };
        match inp.u8() % 14 {
            0 | 1 => {
                let k = key(inp);
                let n = new_conn(inp, &k);
                if let Ok((f, created)) = t.insert(&k, t.hash(&k), &n, now, now.wrapping_mul(1000))
                {
                    let there = t.key_at(f.slot).expect("inserted at a live slot");
                    assert!(there == k || there == k.reversed());
                    if created {
                        assert_eq!(f.dir, 0);
                    }
                }
            }
            2 => {
                if let Some(s) = pick(inp) {
                    assert!(t.remove(s), "a found connection could not be removed");
                    assert!(!t.remove(s));
                }
            }
            3 => {
                if let Some(s) = pick(inp) {
                    t.expire_now(s);
                    assert!(t.expired(s, now));
                }
            }
            4 => {
                if let Some(s) = pick(inp) {
                    let dir = usize::from(inp.u8() & 1);
                    t.touch(s, dir, now);
                }
            }
            5 => {
                if let Some(s) = pick(inp) {
                    let seg = segment(inp);
                    let dir = usize::from(inp.u8() & 1);
                    t.with_tcp(s, |c| {
                        let u = c.update(&seg, dir);
                        let _ = c.quoted_seq_in_window(dir, seg.seq);
                        (u == conntrack::tcp::Update::Valid, ())
                    });
                }
            }
            6 => {
                now = now.wrapping_add(u32::from(inp.u16()));
                let _ = t.sweep(now);
                let _ = t.sweep(now);
            }
            7 => {
                // Records out and back in: the table has them all.
                for r in t.records(None, now) {
                    let a = t.adopt(&r, now, false, None);
                    assert!(
                        matches!(a, Ok(conntrack::Adopted::Existing)),
                        "a record of its own adopted as {a:?}"
                    );
                }
            }
            8 => {
                // Moved to another table (a conversion, a migration) with limits.
                let o = other.get_or_insert_with(|| Table::new(&cfg(1024)));
                let limits = inp.bool();
                for r in t.records(None, now) {
                    let _ = o.adopt(&r, now, limits, None);
                }
                check(o, now);
            }
            9 => {
                let v = u16::from(inp.u8() % (VNICS as u8 + 2));
                t.flush_vnic(v);
                assert!(
                    t.connections(Some(v), now).is_empty(),
                    "flushed vNIC {v} keeps connections"
                );
            }
            10 => {
                let (v, via) = (u16::from(inp.u8() % 10), u16::from(inp.u8() % 10));
                let local = inp.u8();
                let _ = t.handover(v, via, |id| local & (1 << (id % 8)) != 0);
            }
            11 => {
                // The current epoch is never below a connection's stamp (stamps are epochs
                // already published; recovered and adopted connections are stale, which
                // `restamp` skips): past 2^16 that holds whatever the 16-bit stamps read.
                let epoch = inp.u64().max(1 << 16);
                let changed = inp.u64();
                let _ = t.restamp(epoch, |_| changed.min(epoch));
            }
            12 => {
                // Records adopted back with a rejoin (a guest coming home).
                let (via, vnic) = (u16::from(inp.u8() % 10), u16::from(inp.u8() % 10));
                for r in t.records(None, now) {
                    let _ = t.adopt(&r, now, true, Some((via, vnic)));
                }
            }
            _ => {
                let keep = inp.u8();
                let _ = t.retain(|o, p| keep & (1 << ((o ^ p) % 8)) != 0);
            }
        }
    }
    check(t, now);
    if let Some(o) = &other {
        check(o, now);
    }
}

/// Damage done to a file before it is opened: header words (checksum fixed up or not), slot
/// words, whole slots, slots copied over others, tag bytes, the length.
/// A slot is named by index, or (top bit set) as the k-th slot in use when the damage starts.
fn damage(f: &File, inp: &mut Input, nslots: u64, slots_at: u64, tags_at: u64) {
    let count = inp.u8() % 16;
    if count == 0 {
        return;
    }
    let mut area = vec![0u8; 64 * nslots as usize];
    let _ = f.read_exact_at(&mut area, slots_at);
    let used: Vec<u64> = (0..nslots)
        .filter(|&s| area[64 * s as usize..][..8] != [0; 8])
        .collect();
    let slot = |inp: &mut Input| -> u64 {
        let v = inp.u16();
        if v & 0x8000 != 0 && !used.is_empty() {
            used[usize::from(v & 0x7fff) % used.len()]
        } else {
            u64::from(v) % nslots
        }
    };
    for _ in 0..count {
        let b = inp.u8();
        match (b & 7) % 6 {
            0 => {
                let mut h = [0u8; 72];
                let _ = f.read_exact_at(&mut h, 0);
                let mut w: Vec<u64> = h
                    .chunks(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                let i = usize::from(inp.u8()) % 12;
                let v = inp.u64();
                if i < 9 {
                    w[i] = v;
                    if b & 0x80 != 0 {
                        w[8] = checksum(&w[..8]);
                    }
                    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let _ = f.write_all_at(&bytes, 0);
                } else {
                    // The state, pid and open-count words.
                    let _ = f.write_all_at(&v.to_le_bytes(), 8 * i as u64);
                }
            }
            1 => {
                let s = slot(inp);
                let word = u64::from(inp.u8() % 8);
                let v = if b & 0x80 != 0 {
                    // Flip bits of what is there.
                    let mut cur = [0u8; 8];
                    let _ = f.read_exact_at(&mut cur, slots_at + 64 * s + 8 * word);
                    u64::from_le_bytes(cur) ^ inp.u64()
                } else {
                    inp.u64()
                };
                let _ = f.write_all_at(&v.to_le_bytes(), slots_at + 64 * s + 8 * word);
            }
            2 => {
                let s = slot(inp);
                let bytes: [u8; 64] = inp.array();
                let _ = f.write_all_at(&bytes, slots_at + 64 * s);
            }
            3 => {
                let (from, to) = (slot(inp), slot(inp));
                let mut bytes = [0u8; 64];
                let _ = f.read_exact_at(&mut bytes, slots_at + 64 * from);
                let _ = f.write_all_at(&bytes, slots_at + 64 * to);
            }
            4 => {
                let s = slot(inp);
                let _ = f.write_all_at(&[inp.u8()], tags_at + s);
            }
            _ => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let new = match inp.u8() % 4 {
                    0 => 0,
                    1 => u64::from(inp.u16()),
                    2 => len.saturating_sub(4096),
                    _ => len + 4096,
                };
                let _ = f.set_len(new);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    util::empty_dir(dir);
    let path = dir.join("conntrack.table");
    let mut inp = Input::new(data);
    let m = inp.u8();
    let theirs = CAPACITIES[usize::from(m) % 3];
    let ours = if m & 0x04 != 0 {
        CAPACITIES[usize::from(m >> 3) % 3]
    } else {
        theirs
    };
    let seed = if m & 0x20 != 0 {
        inp.u64()
    } else {
        0x5eed_0001
    };
    let mut now = 1000 + u32::from(inp.u16());
    let header = fuzz_valid_header(theirs, seed);
    let (nbuckets, size) = (header[3], header[7]);
    let nslots = nbuckets * 16;
    let (slots_at, tags_at, _) = fuzz_layout(theirs);
    {
        let f = File::create(&path).expect("create the state file");
        let bytes: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
        f.write_all_at(&bytes, 0).expect("write the header");
        f.set_len(size).expect("size the state file");
    }
    if m & 0x40 == 0 {
        // Filled by a table, as a switch would, then left (killed, or stopped cleanly).
        let (t, opened) = Table::open(&cfg(theirs), &path, now).expect("open a valid file");
        assert!(
            matches!(&opened, Opened::Restored { recovery, .. } if recovery.kept == 0),
            "a valid empty file opened as {opened:?}"
        );
        let n = inp.u8() % 48;
        let mut slots = Vec::new();
        for _ in 0..n {
            let k = key(&mut inp);
            let c = new_conn(&mut inp, &k);
            let b = inp.u8();
            let at = now.wrapping_sub(u32::from(b & 0x3f) * 100);
            if let Ok((f, _)) = t.insert(&k, t.hash(&k), &c, at, at.wrapping_mul(1000)) {
                slots.push(f.slot);
                match b >> 6 {
                    1 => t.touch(f.slot, 1, now),
                    2 if b & 1 != 0 => t.expire_now(f.slot),
                    2 => {
                        t.remove(f.slot);
                    }
                    _ => {}
                }
            }
        }
        check(&t, now);
        if inp.bool() {
            t.mark_closed();
        }
        drop(t);
    }
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("reopen the state file");
        damage(&f, &mut inp, nslots, slots_at, tags_at);
    }
    now = now.wrapping_add(u32::from(inp.u16() % 4096));
    match Table::open(&cfg(ours), &path, now) {
        Err(_) => {}
        Ok((t, opened)) => {
            let conns = check(&t, now);
            let records = t.records(None, now);
            assert_eq!(records.len(), conns.len(), "{opened:?}");
            if let Opened::Restored { recovery, .. } = &opened {
                assert_eq!(recovery.kept, conns.len());
            }
            exercise(&t, &mut inp, now);
            t.mark_closed();
        }
    }
});
