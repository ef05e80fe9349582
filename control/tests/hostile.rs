//! Hostile guest input: a guest whose rings lie. The switch must survive, count each drop under
//! its reason, and keep forwarding for the other ports.

mod common;

use std::time::Duration;

use common::*;
use pktgen::{
    VirtioNet, RX_QUEUE, TX_QUEUE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

/// x -> y traffic still flows, byte-exact.
fn still_forwards(x: &mut VirtioNet, y: &mut VirtioNet, round: u64) {
    let (mx, my) = (x.mac(), y.mac());
    let frames: Vec<Vec<u8>> = (0..64).map(|s| frame(my, mx, round * 100 + s)).collect();
    assert_frames(
        &transfer(x, y, &frames, 64),
        &frames,
        &format!("x->y after attack {round}"),
    );
}

/// Puts one chain on the hostile guest's TX queue and waits until the switch returns it.
fn inject(sw: &Bulwarkd, h: &mut VirtioNet, head: u16) {
    let mut raw = h.raw();
    let before = raw.used_idx(TX_QUEUE);
    raw.push_avail(TX_QUEUE, head);
    raw.publish_avail(TX_QUEUE);
    sw.wait_for(
        || h.raw().used_idx(TX_QUEUE) == before.wrapping_add(1),
        "the bad chain to be returned",
    );
    let (id, len) = h.raw().used_elem(TX_QUEUE, before);
    assert_eq!(
        (id, len),
        (u32::from(head), 0),
        "bad chain returned with the wrong id/len"
    );
}

#[test]
fn hostile_guest_is_contained() {
    let sw = Bulwarkd::start(&[("h", 1), ("x", 1), ("y", 1)]);
    let mut h = sw.attach("h", mac(0x66));
    let mut x = sw.attach("x", mac(0x01));
    let mut y = sw.attach("y", mac(0x02));
    // y announces itself so x->y is switched, not flooded.
    send_all(&mut y, &[frame([0xff; 6], mac(0x02), 0)]);
    assert_eq!(recv_n(&mut x, 1, Duration::from_secs(5)).len(), 1);
    assert_eq!(recv_n(&mut h, 1, Duration::from_secs(5)).len(), 1);
    still_forwards(&mut x, &mut y, 0);

    let (base, size) = h.raw().mem_range();
    let good = h.raw().alloc_buf(2048);
    let hdr = h.hdr_len() as u32;
    let mut f = vec![0u8; hdr as usize];
    f.extend(frame([0xff; 6], mac(0x66), 1));
    h.raw().write_guest(good, &f);

    // Each case: (descriptors to write as (index, addr, len, flags, next), head, drop reason).
    type Desc = (u16, u64, u32, u16, u16);
    let cases: Vec<(&str, Vec<Desc>, u16, &str)> = vec![
        (
            "address past the end of guest memory",
            vec![(0, base + size + 4096, 64, 0, 0)],
            0,
            "desc_out_of_bounds",
        ),
        (
            "address below guest memory",
            vec![(1, base - 4096, 64, 0, 0)],
            1,
            "desc_out_of_bounds",
        ),
        (
            "buffer straddling the end of memory",
            vec![(2, base + size - 10, 64, 0, 0)],
            2,
            "desc_out_of_bounds",
        ),
        (
            "address + length wraps past 2^64",
            vec![(3, u64::MAX - 15, 64, 0, 0)],
            3,
            "desc_out_of_bounds",
        ),
        (
            "length of 4 GiB - 1",
            vec![(4, good, u32::MAX, 0, 0)],
            4,
            "desc_out_of_bounds",
        ),
        (
            "chain looping on itself",
            vec![(5, good, 64, VIRTQ_DESC_F_NEXT, 5)],
            5,
            "desc_chain_too_long",
        ),
        (
            "two-descriptor loop",
            vec![
                (6, good, 64, VIRTQ_DESC_F_NEXT, 7),
                (7, good, 64, VIRTQ_DESC_F_NEXT, 6),
            ],
            6,
            "desc_chain_too_long",
        ),
        (
            "next index beyond the table",
            vec![(8, good, 64, VIRTQ_DESC_F_NEXT, 60000)],
            8,
            "desc_next_out_of_range",
        ),
        (
            "device-writable buffer on the TX queue",
            vec![(9, good, 64, VIRTQ_DESC_F_WRITE, 0)],
            9,
            "desc_bad_flags",
        ),
        (
            "INDIRECT without negotiation",
            vec![(10, good, 64, VIRTQ_DESC_F_INDIRECT, 0)],
            10,
            "desc_bad_flags",
        ),
        (
            "frame shorter than an Ethernet header",
            vec![(11, good, hdr + 5, 0, 0)],
            11,
            "frame_too_short",
        ),
    ];
    for (round, (what, descs, head, reason)) in cases.into_iter().enumerate() {
        let before = sw.drops("h", reason);
        for (i, addr, len, flags, next) in descs {
            h.raw().write_desc(TX_QUEUE, i, addr, len, flags, next);
        }
        inject(&sw, &mut h, head);
        sw.wait_for(
            || sw.drops("h", reason) == before + 1,
            &format!("{reason} after {what}"),
        );
        still_forwards(&mut x, &mut y, round as u64 + 1);
    }

    // A well-formed frame from h still goes through after all that (its port is not punished
    // for bad chains; they were dropped one by one).
    h.raw().write_desc(TX_QUEUE, 12, good, f.len() as u32, 0, 0);
    inject(&sw, &mut h, 12);
    assert_eq!(
        recv_n(&mut x, 1, Duration::from_secs(5)).len(),
        1,
        "h's good broadcast at x"
    );
    assert_eq!(
        recv_n(&mut y, 1, Duration::from_secs(5)).len(),
        1,
        "h's good broadcast at y"
    );

    // Receive side: h's posted receive buffers now point outside its memory. Frames flooded to
    // h are dropped as rx_bad_desc; x and y are unaffected.
    let q = h.raw().queue_size();
    for i in 0..q {
        h.raw()
            .write_desc(RX_QUEUE, i, base + size + 8192, 2048, VIRTQ_DESC_F_WRITE, 0);
    }
    send_all(&mut x, &[frame([0xff; 6], mac(0x01), 7)]);
    assert_eq!(recv_n(&mut y, 1, Duration::from_secs(5)).len(), 1);
    sw.wait_for(|| sw.drops("h", "rx_bad_desc") >= 1, "rx_bad_desc on h");
    still_forwards(&mut x, &mut y, 50);

    // The avail index jumps past the ring size, on both of h's queues: the rings are declared
    // broken (counted once each) and left alone.
    let shadow = h.raw().avail_shadow(TX_QUEUE);
    h.raw()
        .set_avail_idx(TX_QUEUE, shadow.wrapping_add(q + 1000));
    sw.wait_for(|| sw.drops("h", "ring_broken") == 1, "ring_broken on h");
    let rx_avail = h.raw().avail_shadow(RX_QUEUE);
    h.raw()
        .set_avail_idx(RX_QUEUE, rx_avail.wrapping_add(q + 1000));
    // The switch reads h's avail.idx again once the entries it already knew of are used up:
    // flood until then (at most a ring's worth).
    for i in 0..=u64::from(q) {
        send_all(&mut x, &[frame([0xff; 6], mac(0x01), 1000 + i)]);
        assert_eq!(recv_n(&mut y, 1, Duration::from_secs(5)).len(), 1);
        if sw.drops("h", "rx_ring_broken") >= 1 {
            break;
        }
    }
    sw.wait_for(
        || sw.drops("h", "rx_ring_broken") >= 1,
        "rx_ring_broken on h",
    );
    still_forwards(&mut x, &mut y, 51);
    assert_eq!(
        sw.drops("h", "ring_broken"),
        1,
        "a broken ring is counted once"
    );

    // x and y saw no drops at all; the switch is alive and its API answers.
    for p in ["x", "y"] {
        let v = sw.port(p);
        let total: u64 = total_drops(&v);
        assert_eq!(total, 0, "port {p} dropped frames: {v}");
    }
    let mut sw = sw;
    assert!(sw.alive(), "bulwarkd died; log:\n{}", sw.log());

    // h reconnecting gets fresh, working rings.
    drop(h);
    sw.wait_for(|| sw.port("h")["state"] == "listening", "h listening again");
    let mut h = sw.attach("h", mac(0x66));
    send_all(&mut h, &[frame([0xff; 6], mac(0x66), 9)]);
    assert_eq!(
        recv_n(&mut x, 1, Duration::from_secs(5)).len(),
        1,
        "reconnected h reaches x"
    );
}

/// A frontend that sends garbage on the vhost-user socket is disconnected; the port recovers.
#[test]
fn garbage_on_the_control_socket() {
    use std::io::Write;
    let sw = Bulwarkd::start(&[("g", 1), ("x", 1), ("y", 1)]);
    let mut x = sw.attach("x", mac(1));
    let mut y = sw.attach("y", mac(2));
    for junk in [
        &b"\xff\xff\xff\xff\x01\x00\x00\x00\xff\xff\xff\x7f"[..],
        &[0u8; 3][..],
        &[0x41; 4096][..],
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(sw.sock("g")).unwrap();
        let _ = s.write_all(junk);
        drop(s);
        sw.wait_for(
            || sw.port("g")["state"] == "listening",
            "g listening after garbage",
        );
    }
    still_forwards(&mut x, &mut y, 0);
    let mut g = sw.attach("g", mac(3));
    send_all(&mut g, &[frame([0xff; 6], mac(3), 1)]);
    assert_eq!(recv_n(&mut x, 1, Duration::from_secs(5)).len(), 1);
}

/// A frontend that stops in the middle of a message only stalls its own port: other ports
/// forward, and removing the stalled port through the API completes at once.
#[test]
fn stalled_frontend_does_not_block_port_removal() {
    use std::io::Write;
    let sw = Bulwarkd::start(&[("s", 1), ("x", 1), ("y", 1)]);
    let mut x = sw.attach("x", mac(1));
    let mut y = sw.attach("y", mac(2));
    let mut s = std::os::unix::net::UnixStream::connect(sw.sock("s")).unwrap();
    // First 4 bytes of a 12-byte header (GET_FEATURES), then nothing.
    s.write_all(&[1, 0, 0, 0]).unwrap();
    sw.wait_for(|| sw.port("s")["state"] == "negotiating", "s negotiating");
    std::thread::sleep(Duration::from_millis(200));
    still_forwards(&mut x, &mut y, 0);
    let t = std::time::Instant::now();
    let (status, v) = sw.api("DELETE", "/v1/ports/s", None);
    assert_eq!(status, 200, "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "port removal took {:?}",
        t.elapsed()
    );
    still_forwards(&mut x, &mut y, 1);
    drop(s);
}
