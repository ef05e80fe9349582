//! Multiqueue ports (VIRTIO_NET_F_MQ): queue pairs spread over the workers, frames of one
//! queue stay in order, and guests using fewer pairs than offered still work.

mod common;

use std::time::{Duration, Instant};

use common::{frame, mac, send_all, total_drops, Bulwarkd};
use pktgen::{Connect, DeviceConfig, VirtioNet};

/// Receives on every queue pair of `dev` until `n` frames arrived or 10 s passed; returns
/// `(pair, frame)` in arrival order per pair.
fn recv_pairs(dev: &mut VirtioNet, n: usize) -> Vec<(usize, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < n && Instant::now() < deadline {
        let mut any = 0;
        for q in 0..dev.queue_pairs() {
            dev.select_queue_pair(q);
            any += dev
                .recv(|f| got.push((q, f.to_vec())))
                .expect("device-side ring violation");
        }
        if any == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    dev.select_queue_pair(0);
    got
}

fn seq_of(f: &[u8]) -> u64 {
    u64::from_le_bytes(f[14..22].try_into().unwrap())
}

#[test]
fn queue_pairs_spread_over_workers() {
    let ncpu = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let cpus: Vec<usize> = (0..ncpu).collect();
    let q2 = "queues = 2";
    let sw = Bulwarkd::start_extra(
        &[
            ("a", 5, "server", q2),
            ("b", 5, "server", q2),
            ("c", 5, "server", q2),
        ],
        &cpus,
    );

    // A frontend asking for more pairs than the port offers is told how many there are.
    let err = VirtioNet::connect(
        Connect::Dial(sw.sock("c")),
        DeviceConfig {
            queue_pairs: 4,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            pktgen::Error::QueuePairs {
                asked: 4,
                backend: 2
            }
        ),
        "{err}"
    );

    let (ma, mb, mc) = (mac(1), mac(2), mac(3));
    let mut a = sw.attach_pairs("a", ma, 2);
    let mut b = sw.attach_pairs("b", mb, 2);
    // A guest that uses one pair of the two offered (Linux with one CPU does).
    let mut c = sw.attach_pairs("c", mc, 1);
    for (name, want) in [("a", 2), ("b", 2), ("c", 1)] {
        sw.wait_for(
            || sw.port(name)["queues_running"] == want,
            &format!("{name}: {want} queue pairs running"),
        );
        assert_eq!(sw.port(name)["queues"], 2);
    }
    assert_ne!(a.negotiated_features() & pktgen::VIRTIO_NET_F_MQ, 0);

    // Everyone learns everyone: one broadcast each, flooded to the two others.
    for (dev, m) in [(&mut a, ma), (&mut b, mb), (&mut c, mc)] {
        send_all(dev, &[frame([0xff; 6], m, u64::MAX)]);
    }
    for dev in [&mut a, &mut b, &mut c] {
        assert_eq!(recv_pairs(dev, 2).len(), 2);
    }

    // a sends on both its pairs to b: pair q carries sequence numbers with q = seq % 2.
    const N: u64 = 20_000;
    const WINDOW: u64 = 128;
    let (mut sent, mut got) = ([0u64; 2], Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while (got.len() as u64) < 2 * N {
        assert!(
            Instant::now() < deadline,
            "stalled: sent {sent:?}, got {}",
            got.len()
        );
        for q in 0..2 {
            let in_flight = sent[0] + sent[1] - got.len() as u64;
            let room = (WINDOW.saturating_sub(in_flight)).min(16).min(N - sent[q]);
            if room == 0 {
                continue;
            }
            a.select_queue_pair(q);
            let batch: Vec<Vec<u8>> = (sent[q]..sent[q] + room)
                .map(|i| frame(mb, ma, 2 * i + q as u64))
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            sent[q] += a.send(&refs) as u64;
        }
        for q in 0..2 {
            b.select_queue_pair(q);
            b.recv(|f| got.push((q, f.to_vec())))
                .expect("device-side ring violation");
        }
    }
    // Every frame arrived intact; each sending queue's frames came in order, all on one
    // receive queue.
    let mut next = [0u64; 2];
    let mut landed: [Option<usize>; 2] = [None; 2];
    for (rq, f) in &got {
        let s = seq_of(f);
        let q = (s % 2) as usize;
        assert_eq!(f, &frame(mb, ma, s), "frame {s} corrupted");
        assert_eq!(s / 2, next[q], "queue {q}: frame {s} out of order");
        next[q] += 1;
        assert_eq!(
            *landed[q].get_or_insert(*rq),
            *rq,
            "queue {q} split over rx queues"
        );
    }

    let per_worker: Vec<u64> = sw.port("a")["rx_packets_per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(per_worker.len(), ncpu);
    assert_eq!(per_worker.iter().sum::<u64>(), 2 * N + 1);
    if ncpu == 2 {
        // Two workers, one queue pair each: both cores carried a's traffic, and each filled
        // its own receive queue of b.
        assert!(per_worker.iter().all(|&n| n >= N), "{per_worker:?}");
        assert_ne!(landed[0], landed[1], "both workers filled one rx queue");
    }

    // c runs one pair: whatever worker delivers, frames land on that pair, and c's frames
    // reach the others.
    let mut want = Vec::new();
    for q in 0..2 {
        a.select_queue_pair(q);
        let batch: Vec<Vec<u8>> = (0..50)
            .map(|i| frame(mc, ma, 1000 * q as u64 + i))
            .collect();
        send_all(&mut a, &batch);
        want.extend(batch);
    }
    let mut at_c = recv_pairs(&mut c, want.len());
    assert!(at_c.iter().all(|(rq, _)| *rq == 0));
    at_c.sort_by_key(|(_, f)| seq_of(f));
    let at_c: Vec<Vec<u8>> = at_c.into_iter().map(|(_, f)| f).collect();
    assert_eq!(at_c, want);
    let back: Vec<Vec<u8>> = (0..50).map(|i| frame(mb, mc, i)).collect();
    send_all(&mut c, &back);
    let mut at_b: Vec<Vec<u8>> = recv_pairs(&mut b, 50).into_iter().map(|(_, f)| f).collect();
    at_b.sort_by_key(|f| seq_of(f));
    assert_eq!(at_b, back);
    for p in ["a", "b", "c"] {
        let v = sw.port(p);
        let drops: u64 = total_drops(&v);
        assert_eq!(drops, 0, "{v}");
    }
}
