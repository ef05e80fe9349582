//! bulwarkd driven by pktgen frontends: forwarding volume, byte-exactness, L2 behaviour.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 1,000,000 frames from A to B through the switch, none lost, every byte checked, in order.
#[test]
fn million_frames_byte_exact() {
    const N: u64 = 1_000_000;
    const WINDOW: u64 = 192; // below B's 256 posted receive buffers: the switch never lacks room
    let sw = Bulwarkd::start(&[("a", 7), ("b", 7)]);
    let (ma, mb) = (mac(0xa), mac(0xb));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);

    // B announces itself (broadcast), so the switch learns its MAC; A receives the flood.
    send_all(&mut b, &[frame([0xff; 6], mb, u64::MAX)]);
    assert_eq!(
        recv_n(&mut a, 1, Duration::from_secs(5)).len(),
        1,
        "flood did not reach A"
    );

    let start = Instant::now();
    let (mut sent, mut received, mut corrupt) = (0u64, 0u64, 0u64);
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(32);
    let mut last_progress = Instant::now();
    while received < N {
        let room = (WINDOW - (sent - received)).min(32).min(N - sent);
        if room > 0 {
            batch.clear();
            batch.extend((sent..sent + room).map(|s| frame(mb, ma, s)));
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            // Half the frames go out with header and frame in separate descriptors.
            sent += if (sent / 32) % 2 == 0 {
                a.send(&refs)
            } else {
                a.send_chained(&refs)
            } as u64;
        }
        let got = b
            .recv(|f| {
                let expect = frame(mb, ma, received);
                if f != expect.as_slice() {
                    corrupt += 1;
                }
                received += 1;
            })
            .expect("device-side ring violation");
        if got > 0 {
            last_progress = Instant::now();
        }
        assert!(
            last_progress.elapsed() < Duration::from_secs(10),
            "stalled: sent {sent}, received {received}; bulwarkd log:\n{}",
            sw.log()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{N} frames in {secs:.2} s ({:.3} Mpps, debug-profile test driver)",
        N as f64 / secs / 1e6
    );
    assert_eq!(
        corrupt, 0,
        "frames differed from what A sent (or arrived out of order)"
    );
    assert_eq!(received, N);

    let (pa, pb) = (sw.port("a"), sw.port("b"));
    assert_eq!(pa["rx_packets"], N, "A's rx counter: {pa}");
    assert_eq!(pb["tx_packets"], N, "B's tx counter: {pb}");
    let drops: u64 = total_drops(&pb);
    assert_eq!(drops, 0, "B dropped frames: {pb}");
    // Nothing extra arrives.
    assert!(recv_n(&mut b, 1, Duration::from_millis(200)).is_empty());
}

/// Flooding, learning, the no-hairpin rule and segment isolation.
#[test]
fn segments_flooding_and_learning() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10), ("c", 10), ("d", 20)]);
    let (ma, mb, mc, md) = (mac(1), mac(2), mac(3), mac(4));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    let mut c = sw.attach("c", mc);
    let mut d = sw.attach("d", md);
    let short = Duration::from_millis(300);

    // Broadcast from A reaches B and C, not D (other segment), not A (ingress).
    let bc = frame([0xff; 6], ma, 1);
    send_all(&mut a, std::slice::from_ref(&bc));
    assert_frames(
        &recv_n(&mut b, 1, Duration::from_secs(5)),
        std::slice::from_ref(&bc),
        "bc at b",
    );
    assert_frames(
        &recv_n(&mut c, 1, Duration::from_secs(5)),
        std::slice::from_ref(&bc),
        "bc at c",
    );
    assert!(
        recv_n(&mut d, 1, short).is_empty(),
        "broadcast leaked into segment 20"
    );
    assert!(
        recv_n(&mut a, 1, short).is_empty(),
        "broadcast came back out of its ingress port"
    );

    // Unknown unicast floods within the segment; once B has spoken, A->B goes to B only.
    let uu = frame(mb, ma, 2);
    send_all(&mut a, std::slice::from_ref(&uu));
    assert_frames(
        &recv_n(&mut b, 1, Duration::from_secs(5)),
        std::slice::from_ref(&uu),
        "uu at b",
    );
    assert_frames(
        &recv_n(&mut c, 1, Duration::from_secs(5)),
        std::slice::from_ref(&uu),
        "uu at c",
    );
    let hello = frame(ma, mb, 3);
    send_all(&mut b, std::slice::from_ref(&hello));
    assert_frames(
        &recv_n(&mut a, 1, Duration::from_secs(5)),
        std::slice::from_ref(&hello),
        "hello at a",
    );
    let uni = frame(mb, ma, 4);
    send_all(&mut a, std::slice::from_ref(&uni));
    assert_frames(
        &recv_n(&mut b, 1, Duration::from_secs(5)),
        std::slice::from_ref(&uni),
        "uni at b",
    );
    assert!(
        recv_n(&mut c, 1, short).is_empty(),
        "known unicast was flooded"
    );

    // D cannot reach segment 10 even by addressing A's MAC directly.
    send_all(&mut d, &[frame(ma, md, 5), frame([0xff; 6], md, 6)]);
    std::thread::sleep(short);
    for (n, dev) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        assert!(
            recv_n(dev, 1, short).is_empty(),
            "segment 20 reached port {n}"
        );
    }
    // D alone in its segment: its frames have nowhere to go, and that is counted.
    assert_eq!(sw.drops("d", "no_destination"), 2);

    // A frame to a MAC learned on the ingress port is not sent back out of it.
    send_all(&mut a, &[frame(ma, ma, 7)]);
    sw.wait_for(|| sw.drops("a", "same_port") == 1, "same_port drop on a");

    // The MAC table shows what was learned, per segment.
    let (_, macs) = sw.api("GET", "/v1/macs", None);
    let macs = macs.as_array().unwrap();
    let has = |seg: u64, m: &str, p: &str| {
        macs.iter()
            .any(|e| e["segment"] == seg && e["mac"] == m && e["port"] == p)
    };
    assert!(has(10, "02:00:00:00:00:01", "a"), "{macs:?}");
    assert!(has(10, "02:00:00:00:00:02", "b"), "{macs:?}");
    assert!(has(20, "02:00:00:00:00:04", "d"), "{macs:?}");
    assert!(
        !macs.iter().any(|e| e["segment"] == 20 && e["port"] != "d"),
        "{macs:?}"
    );
}

/// Ports come and go at run time through the API without disturbing the others.
#[test]
fn runtime_port_add_remove() {
    let sw = Bulwarkd::start(&[("a", 3), ("b", 3)]);
    let (ma, mb, mc) = (mac(1), mac(2), mac(3));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    send_all(&mut b, &[frame([0xff; 6], mb, 0)]);
    assert_eq!(recv_n(&mut a, 1, Duration::from_secs(5)).len(), 1);

    // Add c through the API while a->b traffic is flowing.
    let body = format!(
        r#"{{"name":"c","socket":"{}","mode":"server","segment":3}}"#,
        path_str(&sw.sock("c"))
    );
    let (status, v) = sw.api("POST", "/v1/ports", Some(&body));
    assert_eq!(status, 201, "{v}");
    let mut c = sw.attach("c", mc);
    let frames: Vec<Vec<u8>> = (1..=500).map(|s| frame(mb, ma, s)).collect();
    assert_frames(
        &transfer(&mut a, &mut b, &frames, 128),
        &frames,
        "a->b while c is added",
    );
    // Persisted for the next start.
    let state = std::fs::read_to_string(sw.run.join("ports.json")).unwrap();
    assert!(state.contains("\"c\""), "{state}");

    // Bad requests name the field.
    let (status, v) = sw.api("POST", "/v1/ports", Some(&body));
    assert_eq!((status, v["field"].as_str()), (409, Some("name")), "{v}");
    let (status, v) = sw.api(
        "POST",
        "/v1/ports",
        Some(r#"{"name":"x","socket":"rel/path","segment":1}"#),
    );
    assert_eq!((status, v["field"].as_str()), (400, Some("socket")), "{v}");
    let (status, v) = sw.api(
        "POST",
        "/v1/ports",
        Some(r#"{"name":"x","socket":"/tmp/x.sock","segment":0}"#),
    );
    assert_eq!((status, v["field"].as_str()), (400, Some("segment")), "{v}");
    let (status, v) = sw.api(
        "POST",
        "/v1/ports",
        Some(r#"{"name":"x","socket":"/tmp/x.sock","segmnt":4}"#),
    );
    assert_eq!((status, v["field"].as_str()), (400, Some("segmnt")), "{v}");
    let (status, _) = sw.api("DELETE", "/v1/ports/nope", None);
    assert_eq!(status, 404);

    // Remove c: a->b is unaffected, c's MACs are gone, the state file forgets it.
    send_all(&mut c, &[frame([0xff; 6], mc, 0)]);
    assert_eq!(
        recv_n(&mut a, 1, Duration::from_secs(5)).len(),
        1,
        "c's broadcast at a"
    );
    assert_eq!(
        recv_n(&mut b, 1, Duration::from_secs(5)).len(),
        1,
        "c's broadcast at b"
    );
    let (status, v) = sw.api("DELETE", "/v1/ports/c", None);
    assert_eq!(status, 200, "{v}");
    let (_, macs) = sw.api("GET", "/v1/macs", None);
    assert!(
        !macs.as_array().unwrap().iter().any(|e| e["port"] == "c"),
        "{macs}"
    );
    let frames: Vec<Vec<u8>> = (501..=1000).map(|s| frame(mb, ma, s)).collect();
    assert_frames(
        &transfer(&mut a, &mut b, &frames, 128),
        &frames,
        "a->b after c is removed",
    );
    let state = std::fs::read_to_string(sw.run.join("ports.json")).unwrap();
    assert!(!state.contains("\"c\""), "{state}");
    drop(c);
}

/// A frontend that disconnects and reconnects gets a working port again (server mode).
#[test]
fn frontend_reconnects() {
    let sw = Bulwarkd::start(&[("a", 1), ("b", 1)]);
    let (ma, mb) = (mac(1), mac(2));
    let mut a = sw.attach("a", ma);
    for round in 0..3u64 {
        let mut b = sw.attach("b", mb);
        send_all(&mut b, &[frame([0xff; 6], mb, round)]);
        assert_eq!(
            recv_n(&mut a, 1, Duration::from_secs(5)).len(),
            1,
            "round {round}"
        );
        let frames: Vec<Vec<u8>> = (0..100).map(|s| frame(mb, ma, round * 1000 + s)).collect();
        assert_frames(
            &transfer(&mut a, &mut b, &frames, 128),
            &frames,
            &format!("round {round}"),
        );
        drop(b);
        sw.wait_for(|| sw.port("b")["state"] == "listening", "b listening again");
    }
    assert_eq!(sw.port("b")["vhost_connections"], 3);
}

/// Client mode: bulwarkd dials a frontend that listens (as QEMU with `server=on`), keeps
/// re-dialing while it is absent, and reconnects when it comes back.
#[test]
fn client_mode_redials() {
    let sw = Bulwarkd::start_with(&[("a", 1, "client"), ("b", 1, "client")], &[worker_cpu()]);
    let (ma, mb) = (mac(1), mac(2));
    // Nobody listens yet: the ports keep trying.
    sw.wait_for(|| sw.port("a")["state"] == "connecting", "a connecting");
    let mut a = sw.attach_listening("a", ma);
    for round in 0..2u64 {
        let mut b = sw.attach_listening("b", mb);
        send_all(&mut b, &[frame([0xff; 6], mb, round)]);
        assert_eq!(
            recv_n(&mut a, 1, Duration::from_secs(5)).len(),
            1,
            "round {round}"
        );
        let frames: Vec<Vec<u8>> = (0..200).map(|s| frame(mb, ma, round * 1000 + s)).collect();
        assert_frames(
            &transfer(&mut a, &mut b, &frames, 128),
            &frames,
            &format!("round {round}"),
        );
        drop(b);
        sw.wait_for(|| sw.port("b")["state"] == "connecting", "b re-dialing");
    }
    assert_eq!(sw.port("b")["vhost_connections"], 2);
}

/// Two workers, each polling one port and delivering into the other's guest at the same time:
/// both directions stay byte-exact and lossless.
#[test]
#[allow(clippy::needless_range_loop)] // `dir` picks the devices as well as the counters
fn two_workers_cross_delivery() {
    const N: u64 = 100_000;
    const WINDOW: u64 = 96;
    let ncpu = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let cpus: Vec<usize> = (0..ncpu).collect();
    let sw = Bulwarkd::start_with(&[("a", 5, "server"), ("b", 5, "server")], &cpus);
    let (_, stats) = sw.api("GET", "/v1/stats", None);
    assert_eq!(stats["workers"].as_array().unwrap().len(), cpus.len());
    let (ma, mb) = (mac(1), mac(2));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    send_all(&mut a, &[frame([0xff; 6], ma, u64::MAX)]);
    send_all(&mut b, &[frame([0xff; 6], mb, u64::MAX)]);
    assert_eq!(recv_n(&mut a, 1, Duration::from_secs(5)).len(), 1);
    assert_eq!(recv_n(&mut b, 1, Duration::from_secs(5)).len(), 1);

    // Both directions at once: a->b carries even sequence numbers, b->a odd ones.
    // Per direction: (sent, received, corrupt).
    let mut st = [(0u64, 0u64, 0u64); 2];
    let mut last = std::time::Instant::now();
    while st[0].1 < N || st[1].1 < N {
        for dir in 0..2usize {
            let (tx, rx, src, dst) = if dir == 0 {
                (&mut a, &mut b, ma, mb)
            } else {
                (&mut b, &mut a, mb, ma)
            };
            let d = dir as u64;
            let (sent, recvd, _) = st[dir];
            let room = (WINDOW - (sent - recvd)).min(32).min(N - sent);
            if room > 0 {
                let batch: Vec<Vec<u8>> = (sent..sent + room)
                    .map(|s| frame(dst, src, 2 * s + d))
                    .collect();
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                st[dir].0 += tx.send(&refs) as u64;
            }
            let s = &mut st[dir];
            let n = rx
                .recv(|f| {
                    if f != frame(dst, src, 2 * s.1 + d).as_slice() {
                        s.2 += 1;
                    }
                    s.1 += 1;
                })
                .expect("device-side ring violation");
            if n > 0 {
                last = std::time::Instant::now();
            }
        }
        assert!(
            last.elapsed() < Duration::from_secs(10),
            "stalled at {st:?}; log:\n{}",
            sw.log()
        );
    }
    assert_eq!((st[0].2, st[1].2), (0, 0), "corrupt or reordered frames");
    for p in ["a", "b"] {
        let v = sw.port(p);
        assert_eq!(v["tx_packets"], N + 1, "{v}");
        let drops: u64 = total_drops(&v);
        assert_eq!(drops, 0, "{v}");
    }
}
