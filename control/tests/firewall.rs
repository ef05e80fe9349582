//! The firewall in the fast path, end to end: bulwarkd with pktgen frontends, policies set
//! through the API, frames built with etherparse and checked on arrival.

mod common;

use std::time::Duration;

use common::*;
use etherparse::{SlicedPacket, TransportSlice};
use serde_json::json;

/// A may open UDP/53 and TCP/80 to B, not UDP/54; TCP/23 is rejected with a RST; B's replies
/// flow; B cannot open anything to A; counters, connection list and flush work.
#[test]
fn allow_drop_reject_replies_and_operator_view() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10)]);
    let (ma, mb) = (mac(1), mac(2));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    learn(&mut a, &mut b, ma, mb);
    set_policy(
        &sw,
        "a",
        &json!({
            "egress_default": "drop", "ingress_default": "drop",
            "egress": [
                { "action": "allow", "proto": "udp", "dst_ports": 53 },
                { "action": "reject", "proto": "tcp", "dst_ports": 23 },
                { "id": 30, "action": "allow", "proto": "tcp", "dst": "10.0.0.0/24", "dst_ports": [80] },
            ],
        }),
    );
    set_policy(
        &sw,
        "b",
        &json!({
            "ingress_default": "drop",
            "ingress": [
                { "action": "allow", "proto": "udp", "dst_ports": [53, 54] },
                { "action": "allow", "proto": "tcp", "dst_ports": "80-80" },
            ],
        }),
    );
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(5);
    let (ea, eb) = ((ma, IP_A), (mb, IP_B));

    // UDP: allowed request, its reply, a denied port, a connection B opens.
    let q = udp((ma, IP_A, 4000), (mb, IP_B, 53), b"query");
    assert_eq!(exchange(&mut a, &mut b, &q, long), vec![q.clone()]);
    let r = udp((mb, IP_B, 53), (ma, IP_A, 4000), b"answer");
    assert_eq!(exchange(&mut b, &mut a, &r, long), vec![r.clone()]);
    let denied = udp((ma, IP_A, 4000), (mb, IP_B, 54), b"x");
    assert!(exchange(&mut a, &mut b, &denied, short).is_empty());
    assert_eq!(sw.drops("a", "policy_drop_egress"), 1);
    let from_b = udp((mb, IP_B, 5000), (ma, IP_A, 53), b"x");
    assert!(exchange(&mut b, &mut a, &from_b, short).is_empty());
    // Refused by A's ingress default: counted on A, as an ingress drop.
    assert_eq!(sw.drops("a", "policy_drop_ingress"), 1);
    assert_eq!(sw.drops("b", "policy_drop_egress"), 0);

    // TCP/23: rejected, A gets a RST for its SYN.
    let syn23 = tcp((ea.0, ea.1, 40023), (eb.0, eb.1, 23), 1000, 0, "S", b"");
    send_all(&mut a, &[syn23]);
    let rst = recv_n(&mut a, 1, long);
    assert_eq!(rst.len(), 1, "no RST for the rejected SYN");
    let p = SlicedPacket::from_ethernet(&rst[0]).expect("RST parses");
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("reject answer is not TCP: {:?}", rst[0]);
    };
    assert!(t.rst() && t.ack(), "flags of {t:?}");
    assert_eq!((t.source_port(), t.destination_port()), (23, 40023));
    assert_eq!(t.acknowledgment_number(), 1001);
    assert!(
        recv_n(&mut b, 1, short).is_empty(),
        "B saw the rejected SYN"
    );
    assert_eq!(sw.drops("a", "policy_reject_egress"), 1);

    // TCP/80: handshake and data both ways.
    let (sa, sb) = (7000u32, 90000u32);
    let pa = (ma, IP_A, 40080);
    let pb = (mb, IP_B, 80);
    let steps: Vec<(bool, Vec<u8>)> = vec![
        (true, tcp(pa, pb, sa, 0, "S", b"")),
        (false, tcp(pb, pa, sb, sa + 1, "SA", b"")),
        (true, tcp(pa, pb, sa + 1, sb + 1, "A", b"")),
        (true, tcp(pa, pb, sa + 1, sb + 1, "PA", b"GET /")),
        (false, tcp(pb, pa, sb + 1, sa + 6, "PA", b"200 OK")),
    ];
    for (i, (from_a, f)) in steps.iter().enumerate() {
        let got = if *from_a {
            exchange(&mut a, &mut b, f, long)
        } else {
            exchange(&mut b, &mut a, f, long)
        };
        assert_eq!(got, vec![f.clone()], "TCP step {i}");
    }
    // B may not open a connection to A (A's ingress default drop).
    let syn_b = tcp(pb, (ma, IP_A, 22), 5, 0, "S", b"");
    assert!(exchange(&mut b, &mut a, &syn_b, short).is_empty());

    // Operator view: the connection, the rule counters.
    let (_, conns) = sw.api("GET", "/v1/ports/a/conns", None);
    let c = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["proto"] == 6 && c["dport"] == 80)
        .unwrap_or_else(|| panic!("no TCP/80 connection in {conns}"));
    assert_eq!(c["state"], "established", "{c}");
    assert_eq!(
        (c["owner"].as_str(), c["peer"].as_str()),
        (Some("a"), Some("b"))
    );
    assert_eq!(c["packets"], 5, "{c}");
    assert!(c["age_secs"].as_u64().unwrap() < 60, "{c}");
    assert_eq!(
        (c["rule_egress"].as_u64(), c["rule_ingress"].as_u64()),
        (Some(30), Some(2))
    );
    let (_, pol) = sw.api("GET", "/v1/ports/a/policy", None);
    let rule = &pol["rules"]["egress"][2];
    assert_eq!(rule["id"], 30, "{pol}");
    assert_eq!(rule["connections"], 1, "{pol}");
    assert_eq!(rule["packets"], 5, "{pol}");
    assert_eq!(
        pol["rules"]["egress"][1]["packets"], 1,
        "the reject rule: {pol}"
    );
    let (_, polb) = sw.api("GET", "/v1/ports/b/policy", None);
    assert_eq!(polb["rules"]["ingress"][1]["packets"], 5, "{polb}");
    assert_eq!(polb["rules"]["ingress"][0]["connections"], 1, "{polb}");

    // Flush: the established connection is forgotten; its next segment (no pickup) is refused.
    let (status, v) = sw.api("DELETE", "/v1/ports/a/conns", None);
    assert_eq!(status, 200);
    assert!(v["flushed"].as_u64().unwrap() >= 2, "{v}");
    let more = tcp(pa, pb, sa + 6, sb + 7, "PA", b"more");
    assert!(exchange(&mut a, &mut b, &more, short).is_empty());
    assert_eq!(sw.drops("a", "tcp_no_connection"), 1);

    // Bad policies are refused with the field named, and the old one stays.
    let (status, v) = sw.api(
        "PUT",
        "/v1/ports/a/policy",
        Some(r#"{"egress": [{"action": "allow", "dst_ports": "99999"}]}"#),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "policy.egress[0].dst_ports[0]", "{v}");
    let (status, _) = sw.api("PUT", "/v1/ports/nope/policy", Some("{}"));
    assert_eq!(status, 404);
}

/// Policy swaps under load: 100 swaps between two policies that both allow the traffic lose
/// and misjudge nothing; a swap to one that denies it cuts every flow on its next packet.
#[test]
fn policy_swaps_under_load() {
    const FLOWS: u16 = 64;
    const N: usize = 100_000;
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10)]);
    let (ma, mb) = (mac(1), mac(2));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    learn(&mut a, &mut b, ma, mb);
    let allow = |extra: bool| {
        let mut ingress =
            vec![json!({ "action": "allow", "proto": "udp", "dst_ports": "5000-5999" })];
        if extra {
            ingress.insert(
                0,
                json!({ "action": "drop", "proto": "tcp", "dst_ports": 22 }),
            );
        }
        json!({ "ingress_default": "drop", "ingress": ingress })
    };
    set_policy(&sw, "b", &allow(false));
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let sport = 1000 + (i as u16 % FLOWS);
            udp(
                (ma, IP_A, sport),
                (mb, IP_B, 5000),
                &(i as u64).to_le_bytes(),
            )
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let swaps = std::thread::scope(|s| {
        let swapper = s.spawn(|| {
            let mut n = 0;
            while n < 100 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                set_policy(&sw, "b", &allow(n % 2 == 0));
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        });
        // Traffic flows until the swapper is done (on a loaded machine a swap takes longer
        // than a round of traffic), every round checked whole.
        for round in 0..50 {
            let got = transfer(&mut a, &mut b, &frames, 128);
            assert_frames(
                &got,
                &frames,
                &format!("UDP flows across policy swaps, round {round}"),
            );
            if swapper.is_finished() {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap()
    });
    assert!(
        swaps >= 10,
        "only {swaps} policy swaps happened during the transfer"
    );
    let port_a = sw.port("a");
    let total: u64 = total_drops(&port_a);
    assert_eq!(total, 0, "drops on a: {port_a}");

    // Now deny: each flow's next packet finds its connection revoked, later ones are new
    // connections that the rules drop.
    set_policy(
        &sw,
        "b",
        &json!({ "ingress_default": "drop", "ingress": [{ "action": "drop", "proto": "udp" }] }),
    );
    let after: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let sport = 1000 + (i as u16 % FLOWS);
            udp((ma, IP_A, sport), (mb, IP_B, 5000), b"late")
        })
        .collect();
    send_all(&mut a, &after);
    assert!(recv_n(&mut b, 1, Duration::from_millis(500)).is_empty());
    sw.wait_for(
        || sw.drops("b", "policy_revoked_ingress") + sw.drops("b", "policy_drop_ingress") == 1000,
        "all 1000 counted",
    );
    // B's ingress rules made the drops: they count on B.
    assert_eq!(sw.drops("b", "policy_revoked_ingress"), u64::from(FLOWS));
    assert_eq!(
        sw.drops("b", "policy_drop_ingress"),
        1000 - u64::from(FLOWS)
    );
    assert_eq!(total_drops(&sw.port("a")), 0);
}

/// Per-vNIC connection limits: A's flood of SYNs stops at its maximum, and C can still open
/// connections to B while A is at its limit.
#[test]
fn syn_flood_is_contained_per_vnic() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10), ("c", 10)]);
    let (ma, mb, mc) = (mac(1), mac(2), mac(3));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    let mut c = sw.attach("c", mc);
    send_all(&mut b, &[frame([0xff; 6], mb, 1)]);
    recv_n(&mut a, 1, Duration::from_secs(5));
    recv_n(&mut c, 1, Duration::from_secs(5));
    set_policy(&sw, "a", &json!({ "max_connections": 100 }));
    set_policy(&sw, "b", &json!({}));
    let flood: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| tcp((ma, IP_A, 10000 + i as u16), (mb, IP_B, 80), i, 0, "S", b""))
        .collect();
    for chunk in flood.chunks(100) {
        send_all(&mut a, chunk);
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = recv_n(&mut b, 1000, Duration::from_secs(2));
    assert_eq!(got.len(), 100, "SYNs through");
    sw.wait_for(|| sw.drops("a", "ct_vnic_limit") == 900, "900 SYNs refused");
    let syn = tcp((mc, IP_C, 2000), (mb, IP_B, 80), 1, 0, "S", b"");
    assert_eq!(
        exchange(&mut c, &mut b, &syn, Duration::from_secs(5)),
        vec![syn]
    );
    let (_, v) = sw.api("GET", "/v1/conntrack", None);
    assert_eq!(v["live"], 101, "{v}");
}

/// Flooded frames (broadcast, unknown unicast) are judged by each member's ingress policy and
/// non-IP rule; a flooded frame of a connection with a known far end goes to that end only.
#[test]
fn floods_are_judged_per_member() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10), ("c", 10)]);
    let (ma, mb, mc) = (mac(1), mac(2), mac(3));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    let mut c = sw.attach("c", mc);
    set_policy(
        &sw,
        "b",
        &json!({ "ingress_default": "drop", "ingress": [{ "action": "allow", "proto": "udp", "dst_ports": 53 }] }),
    );
    set_policy(
        &sw,
        "c",
        &json!({ "ingress_default": "drop", "non_ip": "drop" }),
    );
    // A has a firewall too (an empty policy: allow and track everything).
    set_policy(&sw, "a", &json!({}));
    let short = Duration::from_millis(300);

    // Broadcast non-IP: b gets it, c's non-IP rule refuses it.
    let bcast = frame([0xff; 6], ma, 7);
    send_all(&mut a, std::slice::from_ref(&bcast));
    assert_eq!(recv_n(&mut b, 1, Duration::from_secs(5)), vec![bcast]);
    assert!(recv_n(&mut c, 1, short).is_empty());
    assert_eq!(sw.drops("c", "non_ip_denied_ingress"), 1);

    // Unknown unicast UDP/53 (B's MAC is not learned yet): only B's ingress allows it.
    let q = udp((ma, IP_A, 4000), (mb, IP_B, 53), b"query");
    send_all(&mut a, std::slice::from_ref(&q));
    assert_eq!(recv_n(&mut b, 1, Duration::from_secs(5)), vec![q]);
    assert!(recv_n(&mut c, 1, short).is_empty());
    assert_eq!(sw.drops("c", "policy_drop_ingress"), 1);

    // B answers (now A's and B's MACs are known); the connection learns B as its far end.
    let r = udp((mb, IP_B, 53), (ma, IP_A, 4000), b"answer");
    assert_eq!(
        exchange(&mut b, &mut a, &r, Duration::from_secs(5)),
        vec![r]
    );
    let (_, conns) = sw.api("GET", "/v1/ports/a/conns", None);
    assert_eq!(conns[0]["peer"], "b", "{conns}");
    // A frame of that connection to an unknown MAC goes to B only (not flooded to C).
    let q2 = udp((mac(0x99), IP_A, 4000), (mac(0x98), IP_B, 53), b"again");
    let q2 = {
        let mut f = q2;
        f[6..12].copy_from_slice(&ma);
        f
    };
    send_all(&mut a, std::slice::from_ref(&q2));
    assert_eq!(recv_n(&mut b, 1, Duration::from_secs(5)), vec![q2]);
    assert!(recv_n(&mut c, 1, short).is_empty());
    assert_eq!(
        sw.drops("c", "policy_drop_ingress"),
        1,
        "C was not even asked"
    );
}

/// Ports without a policy have no firewall: between them frames are switched at L2 only
/// (nothing tracked); towards a filtered port, its rules apply.
#[test]
fn ports_without_policy_are_not_filtered() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10), ("c", 10)]);
    let (ma, mb, mc) = (mac(1), mac(2), mac(3));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    let mut c = sw.attach("c", mc);
    learn(&mut a, &mut b, ma, mb);
    assert_eq!(
        recv_n(&mut c, 2, Duration::from_secs(5)).len(),
        2,
        "C saw both floods"
    );
    send_all(&mut c, &[frame([0xff; 6], mc, 1)]);
    recv_n(&mut a, 1, Duration::from_secs(5));
    recv_n(&mut b, 1, Duration::from_secs(5));
    // A mid-stream TCP segment between unfiltered ports passes (a firewall would refuse it).
    let seg = tcp((ma, IP_A, 1234), (mb, IP_B, 80), 5, 5, "PA", b"data");
    assert_eq!(
        exchange(&mut a, &mut b, &seg, Duration::from_secs(5)),
        vec![seg]
    );
    let (_, conns) = sw.api("GET", "/v1/conns", None);
    assert_eq!(conns.as_array().unwrap().len(), 0, "{conns}");
    // C gets a firewall that accepts nothing: A's frames to C are dropped, A's to B still pass.
    set_policy(&sw, "c", &json!({ "ingress_default": "drop" }));
    let to_c = udp((ma, IP_A, 1000), (mc, IP_C, 53), b"x");
    assert!(exchange(&mut a, &mut c, &to_c, Duration::from_millis(300)).is_empty());
    assert_eq!(sw.drops("c", "policy_drop_ingress"), 1);
    let to_b = udp((ma, IP_A, 1000), (mb, IP_B, 53), b"x");
    assert_eq!(
        exchange(&mut a, &mut b, &to_b, Duration::from_secs(5)),
        vec![to_b]
    );
}
