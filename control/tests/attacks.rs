//! The firewall tried as an attacker on the same segment would: a third pktgen port forges
//! echo identifiers, resets, ICMP errors and source MACs against two victims, and each test
//! checks both the verdict (what was dropped, under which reason) and that the victims'
//! own traffic is untouched.

mod common;

use std::time::Duration;

use common::*;
use etherparse::PacketBuilder;
use serde_json::json;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

const IP6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const IP6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// An ICMP (or, with `v6`, ICMPv6) echo request or reply.
fn echo(src: [u8; 6], dst: [u8; 6], v6: bool, a_to_b: bool, id: u16, request: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src, dst);
    let mut out = Vec::new();
    if v6 {
        let (s, d) = if a_to_b {
            (IP6_A, IP6_B)
        } else {
            (IP6_B, IP6_A)
        };
        let b = b.ipv6(s, d, 64);
        let b = if request {
            b.icmpv6_echo_request(id, 1)
        } else {
            b.icmpv6_echo_reply(id, 1)
        };
        b.write(&mut out, b"ping").unwrap();
    } else {
        let (s, d) = if a_to_b { (IP_A, IP_B) } else { (IP_B, IP_A) };
        let b = b.ipv4(s, d, 64);
        let b = if request {
            b.icmpv4_echo_request(id, 1)
        } else {
            b.icmpv4_echo_reply(id, 1)
        };
        b.write(&mut out, b"ping").unwrap();
    }
    out
}

/// ICMP "fragmentation needed, MTU 576" from `src` to A, quoting A's segment to B's port 80
/// with sequence number `seq`.
fn frag_needed(src: [u8; 6], dst: [u8; 6], seq: u32) -> Vec<u8> {
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(IP_A, IP_B, 64)
        .tcp(40000, 80, seq, 64000)
        .ack(1)
        .write(&mut quoted, b"")
        .unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4(IP_C, IP_A, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 576 },
        ))
        .write(&mut out, &quoted)
        .unwrap();
    out
}

/// `f` with an 802.1Q tag (priority 1) of VLAN id `vid` after the MAC addresses.
fn tagged(f: &[u8], vid: u16) -> Vec<u8> {
    let tci = 0x2000 | vid;
    let mut out = f[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00, (tci >> 8) as u8, tci as u8]);
    out.extend_from_slice(&f[12..]);
    out
}

/// Attaches pktgen devices to ports a, b and c (MACs `mac(1..=3)`) and lets the switch learn
/// all three.
fn attach_three(sw: &Bulwarkd) -> [pktgen::VirtioNet; 3] {
    let (ma, mb, mc) = (mac(1), mac(2), mac(3));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    let mut c = sw.attach("c", mc);
    learn(&mut a, &mut b, ma, mb);
    send_all(&mut c, &[frame([0xff; 6], mc, 1)]);
    assert_eq!(recv_n(&mut a, 1, LONG).len(), 1);
    assert_eq!(recv_n(&mut b, 1, LONG).len(), 1);
    [a, b, c]
}

/// A ping from A to B with an identifier B reuses: B's request to A is a new connection,
/// refused by A's ingress (which lets nothing in), not a reply of A's; A's echo *reply* sent
/// towards B (whose ingress allows only requests) belongs to no connection. IPv4 and IPv6.
#[test]
fn echo_identifiers_cannot_be_borrowed() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10)]);
    let (ma, mb) = (mac(1), mac(2));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    learn(&mut a, &mut b, ma, mb);
    set_policy(&sw, "a", &json!({ "ingress_default": "drop" }));
    set_policy(
        &sw,
        "b",
        &json!({ "ingress_default": "drop", "ingress": [
            { "action": "allow", "proto": "icmp", "icmp_type": 8 },
            { "action": "allow", "proto": "icmpv6", "icmp_type": 128 },
        ]}),
    );
    for v6 in [false, true] {
        let id = 0x0101;
        // A's ping and its reply.
        let req = echo(ma, mb, v6, true, id, true);
        assert_eq!(
            exchange(&mut a, &mut b, &req, LONG),
            vec![req.clone()],
            "v6 {v6}"
        );
        let rep = echo(mb, ma, v6, false, id, false);
        assert_eq!(
            exchange(&mut b, &mut a, &rep, LONG),
            vec![rep.clone()],
            "v6 {v6}"
        );
        // B pings A with the same identifier: refused by A's ingress policy.
        let before = sw.drops("a", "policy_drop_ingress");
        let borrowed = echo(mb, ma, v6, false, id, true);
        assert!(
            exchange(&mut b, &mut a, &borrowed, SHORT).is_empty(),
            "v6 {v6}: B's request reached A"
        );
        assert_eq!(sw.drops("a", "policy_drop_ingress"), before + 1, "v6 {v6}");
        // A sends a reply in its request's direction: no connection has it.
        let before = sw.drops("a", "icmp_no_connection");
        let wrong_way = echo(ma, mb, v6, true, id, false);
        assert!(
            exchange(&mut a, &mut b, &wrong_way, SHORT).is_empty(),
            "v6 {v6}: A's reply reached B"
        );
        assert_eq!(sw.drops("a", "icmp_no_connection"), before + 1, "v6 {v6}");
        // A's own ping is untouched.
        assert_eq!(
            exchange(&mut a, &mut b, &req, LONG),
            vec![req.clone()],
            "v6 {v6}"
        );
        assert_eq!(
            exchange(&mut b, &mut a, &rep, LONG),
            vec![rep.clone()],
            "v6 {v6}"
        );
    }
}

/// With B -> A TCP established, C forges B's RST (B's addresses, the right sequence number)
/// and a FIN: A receives them (it is A's kernel that ignores them), but the connection stays
/// established and outlives the closed-state timeout; B and A keep talking.
#[test]
fn a_third_port_cannot_cut_a_connection() {
    let sw = Bulwarkd::start_extra(
        &[
            ("a", 10, "server", ""),
            ("b", 10, "server", ""),
            (
                "c",
                10,
                "server",
                "\n[conntrack.timeouts]\ntcp_closed = 1\n",
            ),
        ],
        &[worker_cpu()],
    );
    let (ma, mb, mc) = (mac(1), mac(2), mac(3));
    let [mut a, mut b, mut c] = attach_three(&sw);
    set_policy(
        &sw,
        "a",
        &json!({ "ingress_default": "drop", "ingress": [
            { "action": "allow", "proto": "tcp", "dst_ports": 22 } ] }),
    );
    set_policy(&sw, "b", &json!({}));
    set_policy(&sw, "c", &json!({}));
    let (ea, eb) = ((ma, IP_A, 22), (mb, IP_B, 40000));
    let steps = [
        (true, tcp(eb, ea, 500, 0, "S", b"")),
        (false, tcp(ea, eb, 7000, 501, "SA", b"")),
        (true, tcp(eb, ea, 501, 7001, "A", b"")),
        (true, tcp(eb, ea, 501, 7001, "PA", b"0123456789")),
        (false, tcp(ea, eb, 7001, 511, "A", b"")),
    ];
    for (from_b, f) in &steps {
        let got = if *from_b {
            exchange(&mut b, &mut a, f, LONG)
        } else {
            exchange(&mut a, &mut b, f, LONG)
        };
        assert_eq!(got, vec![f.clone()]);
    }
    let state = || {
        let (_, v) = sw.api("GET", "/v1/ports/a/conns", None);
        v.as_array().expect("a list")[0]["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state(), "established");
    // C, with B's addresses (its own MAC), at A's rcv_nxt + 1 and rcv_nxt, and a FIN.
    for f in [
        tcp((mc, IP_B, 40000), ea, 512, 7001, "R", b""),
        tcp((mc, IP_B, 40000), ea, 511, 7001, "R", b""),
        tcp((mc, IP_B, 40000), ea, 511, 7001, "FA", b""),
    ] {
        assert_eq!(
            exchange(&mut c, &mut a, &f, LONG),
            vec![f.clone()],
            "C's forgery is judged by the rules and delivered"
        );
        assert_eq!(state(), "established");
    }
    // Past the closed timeout (1 s) and a sweep, both ends still talk.
    std::thread::sleep(Duration::from_millis(2500));
    let data = tcp(eb, ea, 511, 7001, "PA", b"still here");
    assert_eq!(exchange(&mut b, &mut a, &data, LONG), vec![data.clone()]);
    let ack = tcp(ea, eb, 7001, 521, "A", b"");
    assert_eq!(exchange(&mut a, &mut b, &ack, LONG), vec![ack.clone()]);
    assert_eq!(sw.drops("b", "tcp_no_connection"), 0);
}

/// C forges "fragmentation needed, MTU 576" for A's connection to B: with a sequence number
/// outside A's window it is dropped and counted; addressed to A but sent to B's MAC, it is
/// unrelated; an error that quotes the window passes (a router may send it). The
/// connection carries on.
#[test]
fn forged_icmp_errors_are_dropped() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10), ("c", 10)]);
    let (ma, mb, mc) = (mac(1), mac(2), mac(3));
    let [mut a, mut b, mut c] = attach_three(&sw);
    for p in ["a", "b", "c"] {
        set_policy(&sw, p, &json!({}));
    }
    let (ea, eb) = ((ma, IP_A, 40000), (mb, IP_B, 80));
    let syn = tcp(ea, eb, 100, 0, "S", b"");
    assert_eq!(exchange(&mut a, &mut b, &syn, LONG), vec![syn.clone()]);
    let syn_ack = tcp(eb, ea, 900, 101, "SA", b"");
    assert_eq!(
        exchange(&mut b, &mut a, &syn_ack, LONG),
        vec![syn_ack.clone()]
    );
    let ack = tcp(ea, eb, 101, 901, "A", b"");
    assert_eq!(exchange(&mut a, &mut b, &ack, LONG), vec![ack.clone()]);

    for seq in [5_000_000u32, 101u32.wrapping_sub(100_000)] {
        let f = frag_needed(mc, ma, seq);
        assert!(
            exchange(&mut c, &mut a, &f, SHORT).is_empty(),
            "seq {seq} reached A"
        );
    }
    assert_eq!(sw.drops("c", "icmp_quote_out_of_window"), 2);
    let misdirected = frag_needed(mc, mb, 101);
    assert!(exchange(&mut c, &mut b, &misdirected, SHORT).is_empty());
    assert_eq!(sw.drops("c", "icmp_unrelated"), 1);
    let good = frag_needed(mc, ma, 101);
    assert_eq!(exchange(&mut c, &mut a, &good, LONG), vec![good.clone()]);
    let data = tcp(ea, eb, 101, 901, "PA", b"data");
    assert_eq!(exchange(&mut a, &mut b, &data, LONG), vec![data.clone()]);
}

/// C sends a frame with B's source MAC that C's own egress policy drops: the MAC table does
/// not learn B on C's port, and A's unicast to B still reaches B. Port d is bound to its
/// guest's MAC: a frame from d with B's MAC is dropped (`src_mac_spoofed`) and teaches
/// nothing either, while d's own frames pass.
#[test]
fn a_spoofed_source_mac_does_not_divert_traffic() {
    let sw = Bulwarkd::start_extra(
        &[
            ("a", 10, "server", ""),
            ("b", 10, "server", ""),
            ("c", 10, "server", ""),
            ("d", 10, "server", "mac = \"02:00:00:00:00:04\""),
        ],
        &[worker_cpu()],
    );
    let (ma, mb, mc, md) = (mac(1), mac(2), mac(3), mac(4));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    let mut c = sw.attach("c", mc);
    let mut d = sw.attach("d", md);
    assert_eq!(sw.port("d")["mac"], "02:00:00:00:00:04");
    learn(&mut a, &mut b, ma, mb);
    let _ = recv_n(&mut c, 2, SHORT);
    let _ = recv_n(&mut d, 2, SHORT);
    set_policy(&sw, "c", &json!({ "egress_default": "drop" }));
    let to_b = udp((ma, IP_A, 1000), (mb, IP_B, 53), b"for b");
    assert_eq!(exchange(&mut a, &mut b, &to_b, LONG), vec![to_b.clone()]);

    // C claims B's MAC with an IP frame its egress policy drops.
    let claim = udp((mb, IP_B, 53), (ma, IP_A, 1000), b"i am b");
    assert!(exchange(&mut c, &mut a, &claim, SHORT).is_empty());
    assert_eq!(sw.drops("c", "policy_drop_egress"), 1);
    assert_eq!(
        exchange(&mut a, &mut b, &to_b, LONG),
        vec![to_b.clone()],
        "A's unicast to B went elsewhere"
    );
    assert!(recv_n(&mut c, 1, SHORT).is_empty(), "C got B's traffic");

    // D is bound to its MAC: with B's it is dropped, and A's traffic still goes to B.
    let claim = frame(ma, mb, 7);
    assert!(exchange(&mut d, &mut a, &claim, SHORT).is_empty());
    assert_eq!(sw.drops("d", "src_mac_spoofed"), 1);
    assert_eq!(exchange(&mut a, &mut b, &to_b, LONG), vec![to_b.clone()]);
    assert!(recv_n(&mut d, 1, SHORT).is_empty(), "D got B's traffic");
    // D's own frames pass.
    let own = frame(ma, md, 8);
    assert_eq!(exchange(&mut d, &mut a, &own, LONG), vec![own.clone()]);
    let macs = sw.api("GET", "/v1/macs", None).1;
    let on = |m: &str| {
        macs.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["mac"] == m)
            .map(|e| e["port"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(on("02:00:00:00:00:02"), vec!["b"], "{macs}");
    assert_eq!(on("02:00:00:00:00:04"), vec!["d"], "{macs}");
}

/// Priority-tagged frames (VLAN id 0) are untagged frames to 802.1Q: they are switched, and the
/// firewall judges what they carry. A frame tagged with another VLAN id is dropped. The
/// port view counts vhost-user connections under their own name.
#[test]
fn priority_tagged_frames_are_untagged() {
    let sw = Bulwarkd::start(&[("a", 10), ("b", 10)]);
    let (ma, mb) = (mac(1), mac(2));
    let mut a = sw.attach("a", ma);
    let mut b = sw.attach("b", mb);
    learn(&mut a, &mut b, ma, mb);
    let port = sw.port("a");
    assert_eq!(port["vhost_connections"], 1, "{port}");
    assert!(port.get("connections").is_none(), "{port}");

    let plain = tagged(&frame(mb, ma, 3), 0);
    assert_eq!(exchange(&mut a, &mut b, &plain, LONG), vec![plain.clone()]);
    set_policy(
        &sw,
        "b",
        &json!({ "ingress": [ { "action": "drop", "proto": "udp", "dst_ports": 54 } ] }),
    );
    let ok = tagged(&udp((ma, IP_A, 1000), (mb, IP_B, 53), b"x"), 0);
    assert_eq!(exchange(&mut a, &mut b, &ok, LONG), vec![ok.clone()]);
    let denied = tagged(&udp((ma, IP_A, 1000), (mb, IP_B, 54), b"x"), 0);
    assert!(exchange(&mut a, &mut b, &denied, SHORT).is_empty());
    assert_eq!(sw.drops("b", "policy_drop_ingress"), 1);
    let vlan5 = tagged(&frame(mb, ma, 4), 5);
    assert!(exchange(&mut a, &mut b, &vlan5, SHORT).is_empty());
    assert_eq!(sw.drops("a", "vlan_tagged"), 1);
}
