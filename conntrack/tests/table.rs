//! The connection table: functional cases, then concurrency stress.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use conntrack::tcp::{flags, Update};
use conntrack::{
    Config, InsertError, Key, NewConn, Segment, Table, TcpConn, TimeoutClass, Timeouts,
};

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000_u32.wrapping_add(i)))
}

fn v6(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0,
        0,
        0,
        0,
        0,
        (i >> 16) as u16,
        i as u16,
    ))
}

fn key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> Key {
    Key {
        zone: 1,
        proto,
        src,
        dst,
        sport,
        dport,
    }
}

fn table(capacity: usize, workers: usize) -> Table {
    Table::new(&Config {
        capacity,
        vnics: 8,
        workers,
        timeouts: Timeouts::default(),
    })
}

fn insert(
    t: &Table,
    k: &Key,
    owner: u16,
    now: u32,
) -> Result<(conntrack::Found, bool), InsertError> {
    t.insert(
        k,
        t.hash(k),
        &NewConn {
            owner,
            peer: owner,
            epoch: 1,
            ..Default::default()
        },
        now,
        now * 1000,
    )
}

#[test]
fn both_directions_find_one_entry_v4_and_v6() {
    let t = table(1000, 0);
    for (src, dst) in [(v4(1), v4(2)), (v6(1), v6(2))] {
        let k = key(src, dst, 40000, 80, 6);
        assert_eq!(t.lookup(&k, t.hash(&k)), None);
        let (f, created) = insert(&t, &k, 0, 10).unwrap();
        assert!(created);
        assert_eq!(f.dir, 0);
        let r = k.reversed();
        assert_eq!(t.hash(&r), t.hash(&k), "symmetric hash");
        assert_eq!(
            t.lookup(&r, t.hash(&r)).map(|f| (f.slot, f.dir)),
            Some((f.slot, 1))
        );
        assert_eq!(t.lookup(&k, t.hash(&k)).map(|f| f.dir), Some(0));
        assert_eq!(t.key_at(f.slot), Some(k));
        // A second insert (another core lost the race) finds the first one.
        let (again, created) = insert(&t, &r, 0, 10).unwrap();
        assert!(!created);
        assert_eq!(again.slot, f.slot);
        // Neighbours are different connections.
        for other in [
            key(src, dst, 40001, 80, 6),
            key(src, dst, 40000, 80, 17),
            Key { zone: 2, ..k },
        ] {
            assert_eq!(t.lookup(&other, t.hash(&other)), None, "{other:?}");
        }
    }
    assert_eq!(t.len(), 2);
    // Symmetric ports (ICMP echo keys use the identifier twice): the addresses decide.
    for (src, dst) in [(v4(5), v4(6)), (v6(5), v6(6))] {
        let k = key(src, dst, 77, 77, 1);
        let (f, _) = insert(&t, &k, 0, 10).unwrap();
        let r = k.reversed();
        assert_eq!(
            t.lookup(&r, t.hash(&r)).map(|f| (f.slot, f.dir)),
            Some((f.slot, 1)),
            "{r:?}"
        );
        assert_eq!(t.lookup(&k, t.hash(&k)).map(|f| f.dir), Some(0));
    }
    assert_eq!(
        insert(&t, &key(v4(1), v6(2), 1, 2, 6), 0, 10).unwrap_err(),
        InsertError::MixedFamilies
    );
}

#[test]
fn entry_is_one_cache_line_and_memory_is_reported() {
    for cap in [1 << 16, 1_000_000] {
        let t = table(cap, 0);
        let b = t.bytes_per_connection();
        eprintln!(
            "capacity {cap}: {b:.1} bytes per IPv4 connection (64-byte entry + slack + tags)"
        );
        // 64-byte slots at 75 % load plus a tag byte per slot and an insert flag per bucket.
        assert!((86.0..=88.0).contains(&b), "{b} bytes per connection");
    }
}

#[test]
fn limits_capacity_per_vnic_and_rate() {
    let t = table(10, 0);
    for i in 0..10 {
        insert(&t, &key(v4(i), v4(100), 1, 2, 17), 0, 1).unwrap();
    }
    assert_eq!(
        insert(&t, &key(v4(50), v4(100), 1, 2, 17), 0, 1).unwrap_err(),
        InsertError::TableFull
    );

    let t = table(1000, 0);
    t.set_vnic_limits(3, 5, 0);
    for i in 0..5 {
        insert(&t, &key(v4(i), v4(100), 1, 2, 17), 3, 1).unwrap();
    }
    assert_eq!(
        insert(&t, &key(v4(9), v4(100), 1, 2, 17), 3, 1).unwrap_err(),
        InsertError::VnicLimit
    );
    // Another vNIC is not affected by vNIC 3 being at its limit.
    insert(&t, &key(v4(9), v4(100), 1, 2, 17), 4, 1).unwrap();
    assert_eq!(t.vnic_count(3), 5);

    // 100 new connections per second, burst of one second's worth.
    t.set_vnic_limits(5, u32::MAX, 100);
    let ok = (0..150)
        .filter(|&i| insert(&t, &key(v4(1000 + i), v4(1), 1, 2, 17), 5, 2).is_ok())
        .count();
    assert_eq!(ok, 100, "the burst is one second of the rate");
    let err = insert(&t, &key(v4(2000), v4(1), 1, 2, 17), 5, 2).unwrap_err();
    assert_eq!(err, InsertError::VnicRate);
    // Half a second later, 50 more.
    let later = (0..80)
        .filter(|&i| {
            let k = key(v4(3000 + i), v4(1), 1, 2, 17);
            t.insert(
                &k,
                t.hash(&k),
                &NewConn {
                    owner: 5,
                    peer: 5,
                    epoch: 1,
                    ..Default::default()
                },
                2,
                2500,
            )
            .is_ok()
        })
        .count();
    assert_eq!(later, 50);
}

#[test]
fn aging_sweeps_and_reclaims_after_grace() {
    let t = table(100, 1);
    let q = t.qsbr();
    q.quiescent(0);
    let udp = key(v4(1), v4(2), 1000, 53, 17);
    let (f, _) = insert(&t, &udp, 0, 100).unwrap();
    // UDP, no reply: the first-packet timeout (30 s).
    assert!(!t.expired(f.slot, 130));
    assert!(t.expired(f.slot, 131));
    // A reply moves it to the longer timeout.
    t.touch(f.slot, 1, 120);
    assert!(t.replied(f.slot));
    assert!(!t.expired(f.slot, 200));
    assert!(t.expired(f.slot, 241));
    assert_eq!(t.sweep(200).expired, 0);
    assert_eq!(t.sweep(241).expired, 1);
    assert_eq!(t.lookup(&udp, t.hash(&udp)), None);
    assert_eq!(t.len(), 0);
    // The slot is not reused until the worker passed a quiescent state.
    assert_eq!(t.sweep(242).reclaimed, 0);
    q.quiescent(0);
    assert_eq!(t.sweep(243).reclaimed, 1);
    // Workers can make a connection expire at once (no lock): the sweeper removes it, even
    // when the clock is younger than the timeout.
    let young = key(v4(9), v4(2), 1000, 53, 17);
    let (g, _) = insert(&t, &young, 0, 2).unwrap();
    assert!(!t.expired(g.slot, 2));
    t.expire_now(g.slot);
    assert!(t.expired(g.slot, 2));
    assert_eq!(t.sweep(2).expired, 1);
}

#[test]
fn tcp_state_through_the_table_and_flush() {
    let t = table(100, 0);
    let k = key(v4(1), v4(2), 33000, 22, 6);
    let syn = Segment {
        seq: 100,
        ack: 0,
        flags: flags::SYN,
        win: 1000,
        len: 0,
        wscale: None,
    };
    let c = TcpConn::new(&syn, false).unwrap();
    let (f, _) = t
        .insert(
            &k,
            t.hash(&k),
            &NewConn {
                owner: 2,
                peer: 3,
                tcp: Some(c),
                epoch: 1,
                rules: (4, 5),
            },
            10,
            10_000,
        )
        .unwrap();
    let synack = Segment {
        seq: 900,
        ack: 101,
        flags: flags::SYN | flags::ACK,
        ..syn
    };
    let r = t.with_tcp(f.slot, |c| {
        let u = c.update(&synack, 1);
        (u == Update::Valid, u)
    });
    assert_eq!(r, Update::Valid);
    let ack = Segment {
        seq: 101,
        ack: 901,
        flags: flags::ACK,
        ..syn
    };
    t.with_tcp(f.slot, |c| (c.update(&ack, 0) == Update::Valid, ()));
    let info = t.connections(Some(3), 12);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].class, TimeoutClass::Established);
    assert_eq!(
        (
            info[0].owner,
            info[0].peer,
            info[0].rule_egress,
            info[0].rule_ingress
        ),
        (2, 3, 4, 5)
    );
    assert_eq!(info[0].idle_secs, 2);
    assert!(t.connections(Some(7), 12).is_empty());
    assert_eq!(t.flush_vnic(3), 1);
    assert!(t.connections(None, 12).is_empty());
}

/// Many threads: each flow has an "opener" thread and a "replier" thread that process its two
/// directions at the same time, several creators race for the same flows, TCP updates run
/// under the per-entry bit, and a sweeper expires and reclaims underneath. Invariants: a
/// lookup never returns a slot holding another key; no flow ever has two entries; TCP state
/// is never torn (seqlo/seqhi pairs written together are read together).
#[test]
fn concurrent_directions_creators_and_sweeper() {
    const WORKERS: usize = 4;
    const FLOWS: u32 = 2000;
    let t = Arc::new(table(4096, WORKERS));
    let stop = Arc::new(AtomicBool::new(false));
    let now = Arc::new(AtomicU64::new(1));
    let mut hs = Vec::new();
    for w in 0..WORKERS {
        let (t, stop, now) = (t.clone(), stop.clone(), now.clone());
        hs.push(std::thread::spawn(move || {
            let mut x = 0x9e37_79b9_u64 ^ w as u64;
            let mut ops = 0u64;
            while !stop.load(Ordering::Relaxed) && ops < 400_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % u64::from(FLOWS)) as u32;
                let fam6 = i.is_multiple_of(3);
                let (a, b) = if fam6 {
                    (v6(i), v6(i + 50_000))
                } else {
                    (v4(i), v4(i + 50_000))
                };
                let k = key(a, b, (i % 60_000) as u16 + 1, 443, 6);
                // Even workers send as the opener, odd ones as the replier.
                let pk = if w % 2 == 0 { k } else { k.reversed() };
                let h = t.hash(&pk);
                let secs = now.load(Ordering::Relaxed) as u32;
                let found = match t.lookup(&pk, h) {
                    Some(f) => Some(f),
                    None if w % 2 == 0 => {
                        let c = TcpConn::new(
                            &Segment {
                                seq: i,
                                ack: 0,
                                flags: flags::SYN,
                                win: 1000,
                                len: 0,
                                wscale: None,
                            },
                            false,
                        )
                        .unwrap();
                        t.insert(
                            &pk,
                            h,
                            &NewConn {
                                owner: w as u16,
                                tcp: Some(c),
                                epoch: 1,
                                ..Default::default()
                            },
                            secs,
                            secs * 1000,
                        )
                        .ok()
                        .map(|r| r.0)
                    }
                    None => None,
                };
                if let Some(f) = found {
                    let stored = t.key_at(f.slot);
                    // The slot may have been swept since (it is still ours to read until our
                    // quiescent state), but it never holds another flow's key.
                    if let Some(s) = stored {
                        assert!(
                            s == pk || s == pk.reversed(),
                            "lookup returned a foreign slot: {s:?} for {pk:?}"
                        );
                        assert_eq!(f.dir, usize::from(s != pk), "direction");
                    }
                    t.touch(f.slot, f.dir, secs);
                    t.with_tcp(f.slot, |c| {
                        // Write a recognisable pair and check we never see a torn one.
                        // Pairs this test wrote carry the marker 0x3f in `wscale`.
                        let p = &mut c.peer[f.dir];
                        if p.wscale == 0x3f {
                            assert_eq!(
                                p.seqhi,
                                p.seqlo.wrapping_mul(3).wrapping_add(7),
                                "torn TCP state"
                            );
                        }
                        p.seqlo = p.seqlo.wrapping_add(1);
                        p.seqhi = p.seqlo.wrapping_mul(3).wrapping_add(7);
                        p.wscale = 0x3f;
                        (true, ())
                    });
                }
                t.qsbr().quiescent(w);
                ops += 1;
            }
            t.qsbr().offline(w);
        }));
    }
    // The sweeper: time runs fast, so connections keep expiring and slots get reused.
    let sweeper = {
        let (t, stop, now) = (t.clone(), stop.clone(), now.clone());
        std::thread::spawn(move || {
            let (mut expired, mut reclaimed) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let n = now.fetch_add(7, Ordering::Relaxed) as u32;
                let s = t.sweep(n);
                expired += s.expired;
                reclaimed += s.reclaimed;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            (expired, reclaimed)
        })
    };
    for h in hs {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (expired, reclaimed) = sweeper.join().unwrap();
    assert!(
        expired > 0 && reclaimed > 0,
        "the sweeper did work: {expired} expired, {reclaimed} reclaimed"
    );
    // No flow has two entries.
    let all = t.connections(None, 0);
    let mut keys: Vec<Key> = all.iter().map(|c| c.key).collect();
    let n = keys.len();
    keys.sort_by_key(|k| format!("{k:?}"));
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicate entries");
    assert_eq!(t.len(), n, "live count matches the entries");
}

/// The first packets of one flow arriving on several cores at once (both directions, as with
/// DNS A and AAAA over one socket) create exactly one entry, and every creator gets it. Threads
/// start each round together on the same keys, so they race on every key.
#[test]
fn racing_creators_make_one_entry() {
    const THREADS: usize = 2;
    const ROUNDS: u32 = 400;
    const KEYS: u32 = 64;
    let t = Arc::new(table((ROUNDS * KEYS) as usize, 0));
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let hs: Vec<_> = (0..THREADS)
        .map(|w| {
            let (t, barrier) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut slots = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait();
                    for i in round * KEYS..(round + 1) * KEYS {
                        let k = key(v4(i), v4(i + 1_000_000), 5353, 53, 17);
                        let k = if w % 2 == 0 { k } else { k.reversed() };
                        let (f, _) = t
                            .insert(
                                &k,
                                t.hash(&k),
                                &NewConn {
                                    epoch: 1,
                                    ..Default::default()
                                },
                                1,
                                1000,
                            )
                            .unwrap();
                        slots.push(f.slot);
                    }
                }
                slots
            })
        })
        .collect();
    let results: Vec<Vec<usize>> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(t.len(), (ROUNDS * KEYS) as usize, "one entry per flow");
    for r in &results[1..] {
        assert_eq!(r, &results[0], "every creator got the same slot");
    }
}

/// The table takes its full capacity of random flows: two-choice buckets do not overflow
/// before the configured capacity is reached; one more is refused.
#[test]
fn fills_to_capacity() {
    for cap in [1000usize, 100_000] {
        let t = table(cap, 0);
        let mut x = 0x1234_5678_u64;
        let mut units = 0;
        let mut i = 0u32;
        while units < cap {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let six = x.is_multiple_of(5) && units + 2 <= cap;
            let (a, b) = if six {
                (v6(x as u32), v6((x >> 32) as u32))
            } else {
                (v4(x as u32), v4((x >> 32) as u32))
            };
            let k = key(a, b, i as u16, (i >> 16) as u16, 17);
            i += 1;
            match insert(&t, &k, 0, 1) {
                Ok((_, true)) => units += 1 + usize::from(six),
                Ok((_, false)) => {}
                Err(e) => panic!("capacity {cap}: insert failed at {units} units: {e:?}"),
            }
        }
        let k = key(v4(7), v4(8), 1, 1, 6);
        assert_eq!(insert(&t, &k, 0, 1).unwrap_err(), InsertError::TableFull);
    }
}

/// The operator view: age from creation, idle from the last packet, packets both ways, the
/// endpoints and the rules recorded, IPv6 charged twice against a vNIC's limit.
#[test]
fn operator_view_and_limits_in_units() {
    let t = table(1000, 0);
    let k = key(v4(1), v4(2), 1000, 53, 17);
    let (f, _) = insert(&t, &k, 3, 100).unwrap();
    t.touch(f.slot, 0, 110);
    t.touch(f.slot, 1, 120);
    t.revalidated(f.slot, 2, (4, 9), Some(5));
    let c = &t.connections(Some(3), 130)[0];
    assert_eq!((c.age_secs, c.idle_secs, c.packets), (30, 10, 2));
    assert_eq!((c.owner, c.peer, c.epoch), (3, 5, 2));
    assert_eq!((c.rule_egress, c.rule_ingress), (4, 9));
    assert!(c.replied && !c.expired);
    assert_eq!(t.endpoints(f.slot), (3, 5));
    assert_eq!(t.rules(f.slot), (4, 9));
    // Limit 3 units: one IPv4 (1) and one IPv6 (2) connection fit, nothing more.
    t.set_vnic_limits(6, 3, 0);
    insert(&t, &key(v4(7), v4(8), 1, 1, 17), 6, 100).unwrap();
    insert(&t, &key(v6(7), v6(8), 1, 1, 17), 6, 100).unwrap();
    assert_eq!(t.vnic_count(6), 3);
    assert_eq!(
        insert(&t, &key(v4(9), v4(8), 1, 1, 17), 6, 100).unwrap_err(),
        InsertError::VnicLimit
    );
}

/// The sweeper reads the clock once per pass; a connection a worker touched after that (its
/// last-seen second is ahead of the sweeper's) is busy, not idle for 2^32 seconds.
#[test]
fn touched_after_the_sweepers_clock_is_not_expired() {
    let t = table(1000, 1);
    let k = key(v4(1), v4(2), 1000, 53, 17);
    let (f, _) = insert(&t, &k, 0, 100).unwrap();
    t.touch(f.slot, 0, 101);
    assert!(!t.expired(f.slot, 100));
    assert_eq!(t.sweep(100).expired, 0);
    assert_eq!(t.len(), 1);
    // Really idle past the UDP timeout (30 s): it goes.
    assert!(t.expired(f.slot, 140));
    assert_eq!(t.sweep(140).expired, 1);
}
