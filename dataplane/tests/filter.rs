//! Fixture tests of the filter stage: frame sequences, rulesets, verdicts.
//!
//! Frames are built with etherparse, parsed by `dataplane::parse`, judged by
//! `dataplane::filter` against real compiled rulesets and a real connection table.

use std::sync::Arc;

use conntrack::{Config, Table, Timeouts};
use dataplane::counters::DropReason;
use dataplane::filter::{Decision, Filter, Policy, RuleRef, Side};
use dataplane::parse::{parse, Packet, HEADROOM};
use dataplane::ruleset::{Action, Cidr, Rule, Ruleset};
use etherparse::PacketBuilder;

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const ZONE: u16 = 10;

fn pkt(frame: &[u8]) -> Packet {
    parse(&frame[..frame.len().min(HEADROOM)], frame.len()).expect("fixture frames parse")
}

#[allow(clippy::too_many_arguments)] // a fixture builder: one argument per header field
fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sp: u16,
    dp: u16,
    seq: u32,
    ack: u32,
    flags: &str,
    len: usize,
) -> Packet {
    let (sm, dm) = if src == A {
        (MAC_A, MAC_B)
    } else {
        (MAC_B, MAC_A)
    };
    let mut b = PacketBuilder::ethernet2(sm, dm)
        .ipv4(src, dst, 64)
        .tcp(sp, dp, seq, 1000);
    for c in flags.chars() {
        b = match c {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => panic!("flag {c}"),
        };
    }
    let payload = vec![0x5a; len];
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    pkt(&out)
}

fn udp(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Packet {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sp, dp)
        .write(&mut out, b"hello")
        .unwrap();
    pkt(&out)
}

fn echo(src: [u8; 4], dst: [u8; 4], id: u16, request: bool) -> Packet {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src, dst, 64);
    let b = if request {
        b.icmpv4_echo_request(id, 1)
    } else {
        b.icmpv4_echo_reply(id, 1)
    };
    b.write(&mut out, b"ping").unwrap();
    pkt(&out)
}

/// An ICMP port unreachable from `from` to `to`, quoting a UDP packet `to` -> `from`.
fn unreachable(from: [u8; 4], to: [u8; 4], quoted_sp: u16, quoted_dp: u16) -> Packet {
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(to, from, 64)
        .udp(quoted_sp, quoted_dp)
        .write(&mut quoted, b"hello")
        .unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(from, to, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut out, &quoted)
        .unwrap();
    pkt(&out)
}

fn arp() -> Packet {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0u8; 28]);
    pkt(&f)
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn rule(
    id: u32,
    proto: Option<u8>,
    dst: &str,
    dports: Vec<std::ops::RangeInclusive<u16>>,
    action: Action,
) -> Rule {
    Rule {
        id,
        src: vec![],
        dst: if dst.is_empty() {
            vec![]
        } else {
            vec![cidr(dst)]
        },
        proto,
        src_ports: vec![],
        dst_ports: dports,
        icmp_type: None,
        icmp_code: None,
        peer_groups: vec![],
        action,
    }
}

fn policy(egress: &[Rule], ingress: &[Rule], default: Action) -> Policy {
    Policy {
        egress: Arc::new(Ruleset::compile(egress, default).unwrap()),
        ingress: Arc::new(Ruleset::compile(ingress, default).unwrap()),
        non_ip: Action::Allow,
        nd: Action::Allow,
        tcp_pickup: false,
        max_connections: u32::MAX,
        new_connections_per_sec: 0,
        filtered: true,
        groups: Arc::new([]),
    }
}

fn table() -> Table {
    Table::new(&Config {
        capacity: 1000,
        vnics: 8,
        workers: 1,
        timeouts: Timeouts::default(),
    })
}

fn passes(d: Decision) -> bool {
    matches!(d, Decision::Pass { .. })
}

/// A (vNIC 1) may open TCP 80 to B (vNIC 2); B's replies flow; B may not open to A; A may
/// not open port 81.
#[test]
fn tcp_allowed_one_way() {
    let t = table();
    // A: egress allows tcp/80 to B, default drop. B: egress default drop, ingress allows tcp/80.
    let pa = policy(
        &[rule(
            1,
            Some(6),
            "10.0.0.2/32",
            vec![80..=80],
            Action::Allow,
        )],
        &[],
        Action::Drop,
    );
    let pb = policy(
        &[],
        &[rule(7, Some(6), "", vec![80..=80], Action::Allow)],
        Action::Drop,
    );
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &pa,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &pb,
            epoch: 0,
        },
    );
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    let go = |p: &Packet, from_a: bool| {
        if from_a {
            f.decide(p, ZONE, a, Some(b), 1, 1000)
        } else {
            f.decide(p, ZONE, b, Some(a), 1, 1000)
        }
    };

    let d = go(&tcp(A, B, 40000, 80, 100, 0, "S", 0), true);
    assert_eq!(
        d,
        Decision::Pass {
            conn: d.conn(),
            created: true,
            rules: [Some(RuleRef::Egress(1, 0)), Some(RuleRef::Ingress(2, 0))]
        }
    );
    assert!(
        passes(go(&tcp(B, A, 80, 40000, 900, 101, "SA", 0), false)),
        "SYN-ACK reply"
    );
    assert!(passes(go(&tcp(A, B, 40000, 80, 101, 901, "A", 0), true)));
    assert!(passes(go(&tcp(A, B, 40000, 80, 101, 901, "PA", 100), true)));
    assert!(
        passes(go(&tcp(B, A, 80, 40000, 901, 201, "PA", 50), false)),
        "reply data"
    );
    assert_eq!(
        t.len(),
        1,
        "one connection for both directions and both vNICs"
    );

    // B opening a connection to A is refused by B's egress default.
    assert_eq!(
        go(&tcp(B, A, 5555, 22, 1, 0, "S", 0), false),
        Decision::Drop(
            DropReason::PolicyDrop,
            Some(RuleRef::Egress(2, RuleRef::DEFAULT))
        )
    );
    // A to port 81: no rule, default drop.
    assert_eq!(
        go(&tcp(A, B, 40001, 81, 1, 0, "S", 0), true),
        Decision::Drop(
            DropReason::PolicyDrop,
            Some(RuleRef::Egress(1, RuleRef::DEFAULT))
        )
    );
    // Out of window, bad flags, and a stray ACK with no connection.
    assert_eq!(
        go(&tcp(A, B, 40000, 80, 1_000_000, 901, "PA", 10), true),
        Decision::Drop(DropReason::TcpOutOfWindow, None)
    );
    assert_eq!(
        go(&tcp(A, B, 40000, 80, 201, 951, "SR", 0), true),
        Decision::Drop(DropReason::TcpBadFlags, None)
    );
    assert_eq!(
        go(&tcp(A, B, 40002, 80, 5, 5, "A", 0), true),
        Decision::Drop(DropReason::TcpNoConnection, None)
    );
}

/// The receiver's ingress policy counts too, and reject is reported as such.
#[test]
fn ingress_side_and_reject() {
    let t = table();
    let pa = policy(&[], &[], Action::Allow);
    let pb = policy(
        &[],
        &[rule(3, Some(17), "", vec![53..=53], Action::Reject)],
        Action::Allow,
    );
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &pa,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &pb,
            epoch: 0,
        },
    );
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    assert_eq!(
        f.decide(&udp(A, B, 1000, 53), ZONE, a, Some(b), 1, 1000),
        Decision::Reject(Some(RuleRef::Ingress(2, 0)))
    );
    assert!(passes(f.decide(
        &udp(A, B, 1000, 54),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    assert_eq!(t.len(), 1);
}

/// UDP replies and ICMP echo replies flow back; an unsolicited reply does not; ICMP errors
/// pass only when they quote a tracked connection and go back to its sender.
#[test]
fn udp_icmp_and_related_errors() {
    let t = table();
    let pa = policy(&[], &[], Action::Allow);
    let pb = policy(&[], &[], Action::Drop); // B may not originate anything
    let pb = Policy {
        ingress: pa.ingress.clone(),
        ..pb
    };
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &pa,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &pb,
            epoch: 0,
        },
    );
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    assert!(passes(f.decide(
        &udp(A, B, 1000, 53),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    assert!(
        passes(f.decide(&udp(B, A, 53, 1000), ZONE, b, Some(a), 1, 1000)),
        "UDP reply"
    );
    assert_eq!(
        f.decide(&udp(B, A, 53, 1001), ZONE, b, Some(a), 1, 1000),
        Decision::Drop(
            DropReason::PolicyDrop,
            Some(RuleRef::Egress(2, RuleRef::DEFAULT))
        )
    );
    assert!(passes(f.decide(
        &echo(A, B, 77, true),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    let r = f.decide(&echo(B, A, 77, false), ZONE, b, Some(a), 1, 1000);
    assert!(
        passes(r),
        "echo reply: {r:?} {:?}",
        echo(B, A, 77, false).icmp
    );
    assert_eq!(
        f.decide(&echo(B, A, 78, false), ZONE, b, Some(a), 1, 1000),
        Decision::Drop(DropReason::IcmpNoConnection, None)
    );
    // B answers A's UDP packet 1000->53 with port unreachable: related.
    assert!(
        passes(f.decide(&unreachable(B, A, 1000, 53), ZONE, b, Some(a), 1, 1000)),
        "related error"
    );
    // An error quoting a flow that does not exist is not.
    assert_eq!(
        f.decide(&unreachable(B, A, 999, 53), ZONE, b, Some(a), 1, 1000),
        Decision::Drop(DropReason::IcmpUnrelated, None)
    );
    // The error must go back to the quoted packet's sender.
    let c = [10, 0, 0, 3];
    assert_eq!(
        f.decide(&unreachable(B, c, 1000, 53), ZONE, b, Some(a), 1, 1000),
        Decision::Drop(DropReason::IcmpUnrelated, None)
    );
    // Zones are separate: the same flow in another segment is unknown.
    assert_eq!(
        f.decide(&udp(B, A, 53, 1000), ZONE + 1, b, Some(a), 1, 1000),
        Decision::Drop(
            DropReason::PolicyDrop,
            Some(RuleRef::Egress(2, RuleRef::DEFAULT))
        )
    );
}

/// A policy change re-validates connections on their next packet: an unrelated change keeps
/// them, removing their rule cuts them (and the cut connection is gone for later packets).
#[test]
fn policy_epochs() {
    let t = table();
    let allow80 = rule(1, Some(6), "", vec![80..=80], Action::Allow);
    let allow22 = rule(2, Some(6), "", vec![22..=22], Action::Allow);
    let pa = policy(&[allow80.clone(), allow22.clone()], &[], Action::Drop);
    let pb = policy(&[], &[], Action::Allow);
    let f1 = Filter {
        table: &t,
        epoch: 1,
    };
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &pa,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &pb,
            epoch: 0,
        },
    );
    for (sp, dp) in [(40000, 80), (40001, 22)] {
        assert!(passes(f1.decide(
            &tcp(A, B, sp, dp, 100, 0, "S", 0),
            ZONE,
            a,
            Some(b),
            1,
            1000
        )));
        assert!(passes(f1.decide(
            &tcp(B, A, dp, sp, 900, 101, "SA", 0),
            ZONE,
            b,
            Some(a),
            1,
            1000
        )));
        assert!(passes(f1.decide(
            &tcp(A, B, sp, dp, 101, 901, "A", 0),
            ZONE,
            a,
            Some(b),
            1,
            1000
        )));
    }
    // Epoch 2: an unrelated rule is added; both connections continue.
    let pa2 = policy(
        &[
            allow80.clone(),
            allow22.clone(),
            rule(3, Some(17), "", vec![], Action::Allow),
        ],
        &[],
        Action::Drop,
    );
    let f2 = Filter {
        table: &t,
        epoch: 2,
    };
    let a2 = Side {
        vnic: 1,
        policy: &pa2,
        epoch: 2,
    };
    assert!(passes(f2.decide(
        &tcp(A, B, 40000, 80, 101, 901, "PA", 10),
        ZONE,
        a2,
        Some(b),
        2,
        2000
    )));
    assert!(
        passes(f2.decide(
            &tcp(B, A, 22, 40001, 901, 101, "PA", 10),
            ZONE,
            b,
            Some(a2),
            2,
            2000
        )),
        "reply re-validated against the opener's egress"
    );
    // Epoch 3: the port-22 rule is removed. Its connection is cut on its next packet, in
    // either direction; port 80 continues.
    let pa3 = policy(&[allow80], &[], Action::Drop);
    let f3 = Filter {
        table: &t,
        epoch: 3,
    };
    let a3 = Side {
        vnic: 1,
        policy: &pa3,
        epoch: 3,
    };
    assert_eq!(
        f3.decide(
            &tcp(B, A, 22, 40001, 911, 101, "PA", 10),
            ZONE,
            b,
            Some(a3),
            3,
            3000
        ),
        Decision::Drop(
            DropReason::PolicyRevoked,
            Some(RuleRef::Egress(1, RuleRef::DEFAULT))
        )
    );
    assert_eq!(
        f3.decide(
            &tcp(A, B, 40001, 22, 101, 921, "A", 0),
            ZONE,
            a3,
            Some(b),
            3,
            3000
        ),
        Decision::Drop(DropReason::TcpNoConnection, None),
        "the cut connection is gone"
    );
    assert!(passes(f3.decide(
        &tcp(A, B, 40000, 80, 111, 901, "PA", 10),
        ZONE,
        a3,
        Some(b),
        3,
        3000
    )));
}

/// Non-IP frames follow each side's non-IP rule; limits are enforced per vNIC.
#[test]
fn non_ip_and_limits() {
    let t = table();
    let open = policy(&[], &[], Action::Allow);
    let closed = Policy {
        non_ip: Action::Drop,
        ..open.clone()
    };
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &open,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &open,
            epoch: 0,
        },
    );
    assert!(passes(f.decide(&arp(), ZONE, a, Some(b), 1, 1000)));
    let bc = Side {
        vnic: 2,
        policy: &closed,
        epoch: 0,
    };
    assert_eq!(
        f.decide(&arp(), ZONE, a, Some(bc), 1, 1000),
        Decision::Drop(
            DropReason::NonIpDenied,
            Some(RuleRef::Ingress(2, RuleRef::DEFAULT))
        )
    );
    assert_eq!(t.len(), 0, "non-IP is not tracked");

    t.set_vnic_limits(1, 2, 0);
    assert!(passes(f.decide(
        &udp(A, B, 1, 9),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    assert!(passes(f.decide(
        &udp(A, B, 2, 9),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    assert_eq!(
        f.decide(&udp(A, B, 3, 9), ZONE, a, Some(b), 1, 1000),
        Decision::Drop(DropReason::CtVnicLimit, None)
    );
    // vNIC 2 is not affected.
    assert!(passes(f.decide(
        &udp(B, A, 3, 9),
        ZONE,
        b,
        Some(a),
        1,
        1000
    )));
}

/// Later fragments are dropped; first fragments are tracked by their ports.
#[test]
fn fragments() {
    let t = table();
    let open = policy(&[], &[], Action::Allow);
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &open,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &open,
            epoch: 0,
        },
    );
    // A later fragment: IPv4 header with offset 8 (64 bytes) and proto UDP.
    let mut later = Vec::new();
    later.extend_from_slice(&MAC_B);
    later.extend_from_slice(&MAC_A);
    later.extend_from_slice(&[0x08, 0x00]);
    let mut ip = etherparse::Ipv4Header::new(8, 64, etherparse::IpNumber::UDP, A, B).unwrap();
    ip.fragment_offset = etherparse::IpFragOffset::try_new(8).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    ip.write(&mut later).unwrap();
    later.extend_from_slice(&[0u8; 8]);
    let p = pkt(&later);
    assert_eq!(
        f.decide(&p, ZONE, a, Some(b), 1, 1000),
        Decision::Drop(DropReason::IpFragment, None)
    );
}

/// Echo connections are re-validated as their request, even from a reply; a SYN reusing the
/// addresses of a closed TCP connection opens a new one at once.
#[test]
fn echo_revalidation_and_tcp_restart() {
    let t = table();
    let ping = Rule {
        icmp_type: Some(8),
        ..rule(1, Some(1), "", vec![], Action::Allow)
    };
    let pa = policy(
        &[ping, rule(2, Some(6), "", vec![], Action::Allow)],
        &[],
        Action::Drop,
    );
    let pb = policy(&[], &[], Action::Allow);
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &pa,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &pb,
            epoch: 0,
        },
    );
    let f1 = Filter {
        table: &t,
        epoch: 1,
    };
    assert!(passes(f1.decide(
        &echo(A, B, 9, true),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    // New epoch, same rules: the reply re-validates against A's egress as a request.
    let f2 = Filter {
        table: &t,
        epoch: 2,
    };
    let a_new = Side { epoch: 2, ..a };
    let r = f2.decide(&echo(B, A, 9, false), ZONE, b, Some(a_new), 1, 1000);
    assert!(passes(r), "{r:?}");
    assert_eq!(t.epoch(r.conn().unwrap()), 2, "re-validated");

    // A full TCP connection, closed with FINs both ways, then the same 4-tuple again.
    let go = |p: &Packet, from_a: bool| {
        if from_a {
            f2.decide(p, ZONE, a, Some(b), 1, 1000)
        } else {
            f2.decide(p, ZONE, b, Some(a), 1, 1000)
        }
    };
    for (p, from_a) in [
        (tcp(A, B, 4000, 80, 10, 0, "S", 0), true),
        (tcp(B, A, 80, 4000, 50, 11, "SA", 0), false),
        (tcp(A, B, 4000, 80, 11, 51, "A", 0), true),
        (tcp(A, B, 4000, 80, 11, 51, "FA", 0), true),
        (tcp(B, A, 80, 4000, 51, 12, "FA", 0), false),
        (tcp(A, B, 4000, 80, 12, 52, "A", 0), true),
    ] {
        let d = go(&p, from_a);
        assert!(passes(d), "{d:?} for {:?}", p.tcp);
    }
    let d = go(&tcp(A, B, 4000, 80, 90_000, 0, "S", 0), true);
    assert!(matches!(d, Decision::Pass { created: true, .. }), "{d:?}");
    assert!(
        passes(go(&tcp(B, A, 80, 4000, 70_000, 90_001, "SA", 0), false)),
        "the new connection works"
    );
}

/// A connection belongs to its pair of vNICs. One first seen by a flood (no receiver known)
/// learns its far end from the reply, judged by that end's ingress rules; a packet of it sent
/// by a third vNIC (a spoofer, or an address that moved) is judged by that vNIC's rules, and
/// the recorded rules count every packet of the connection.
#[test]
fn connections_belong_to_their_vnic_pair() {
    let t = table();
    let open = policy(&[], &[], Action::Allow);
    // C may send nothing.
    let closed = policy(&[], &[], Action::Drop);
    // B accepts only UDP/53.
    let pb = policy(
        &[],
        &[rule(5, Some(17), "", vec![53..=53], Action::Allow)],
        Action::Drop,
    );
    let a = Side {
        vnic: 1,
        policy: &open,
        epoch: 0,
    };
    let b = Side {
        vnic: 2,
        policy: &pb,
        epoch: 0,
    };
    let c = Side {
        vnic: 3,
        policy: &closed,
        epoch: 0,
    };
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    // A's query floods (B's MAC unknown): only A's egress is judged; the far end is unknown.
    let d = f.decide(&udp(A, B, 1000, 53), ZONE, a, None, 1, 1000);
    let slot = d.conn().expect("tracked");
    assert_eq!(t.endpoints(slot), (1, 1));
    // B's reply: B's ingress is asked about the opening direction, and B becomes the peer.
    let d = f.decide(&udp(B, A, 53, 1000), ZONE, b, Some(a), 1, 1000);
    assert_eq!(
        d,
        Decision::Pass {
            conn: Some(slot),
            created: false,
            rules: [None, Some(RuleRef::Ingress(2, 0))]
        }
    );
    assert_eq!(t.endpoints(slot), (1, 2));
    // Later packets are plain hits that still name the admitting rules (for counters).
    let d = f.decide(&udp(A, B, 1000, 53), ZONE, a, Some(b), 1, 1000);
    assert_eq!(
        d,
        Decision::Pass {
            conn: Some(slot),
            created: false,
            rules: [None, Some(RuleRef::Ingress(2, 0))]
        }
    );
    // C sends B's reply with B's addresses: C's egress refuses it. The connection is not
    // touched: B's next reply passes as before.
    assert_eq!(
        f.decide(&udp(B, A, 53, 1000), ZONE, c, Some(a), 1, 1000),
        Decision::Drop(
            DropReason::PolicyDrop,
            Some(RuleRef::Ingress(3, RuleRef::DEFAULT))
        )
    );
    assert_eq!(t.endpoints(slot), (1, 2));
    assert!(passes(f.decide(
        &udp(B, A, 53, 1000),
        ZONE,
        b,
        Some(a),
        1,
        1000
    )));
    // A spoofer whose rules allow it gets its packet judged, not the connection re-pointed.
    let d4 = Side {
        vnic: 4,
        policy: &open,
        epoch: 0,
    };
    let d = f.decide(&udp(B, A, 53, 1000), ZONE, d4, Some(a), 1, 1000);
    assert!(passes(d), "{d:?}");
    assert_eq!(t.endpoints(slot), (1, 2));

    // A flood-opened connection to a port B does not accept: B's answer is refused, and the
    // connection waits (unpeered) for its real far end.
    let d = f.decide(&udp(A, B, 1001, 54), ZONE, a, None, 1, 1000);
    let s54 = d.conn().expect("tracked");
    assert_eq!(
        f.decide(&udp(B, A, 54, 1001), ZONE, b, Some(a), 1, 1000),
        Decision::Drop(
            DropReason::PolicyDrop,
            Some(RuleRef::Ingress(2, RuleRef::DEFAULT))
        )
    );
    assert_eq!(t.endpoints(s54), (1, 1));

    // A policy change while the far end's MAC is unknown: the flooded packet passes on A's
    // verdict, but the connection is re-validated only by a packet that shows B, whose new
    // ingress rules refuse it.
    let pb2 = policy(&[], &[], Action::Drop);
    let b2 = Side {
        vnic: 2,
        policy: &pb2,
        epoch: 2,
    };
    let f2 = Filter {
        table: &t,
        epoch: 2,
    };
    let d = f2.decide(&udp(A, B, 1000, 53), ZONE, a, None, 1, 1000);
    assert!(passes(d), "{d:?}");
    assert_eq!(t.epoch(slot), 1);
    assert_eq!(
        f2.decide(&udp(A, B, 1000, 53), ZONE, a, Some(b2), 1, 1000),
        Decision::Drop(
            DropReason::PolicyRevoked,
            Some(RuleRef::Ingress(2, RuleRef::DEFAULT))
        )
    );
}

const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn echo6(src: [u8; 16], dst: [u8; 16], id: u16, request: bool) -> Packet {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(src, dst, 64);
    let b = if request {
        b.icmpv6_echo_request(id, 1)
    } else {
        b.icmpv6_echo_reply(id, 1)
    };
    b.write(&mut out, b"ping").unwrap();
    pkt(&out)
}

/// ICMP "fragmentation needed, MTU 576" from `from` to `to`, quoting a TCP segment `to` ->
/// `quoted_dst` with sequence number `seq`.
fn frag_needed(
    from: [u8; 4],
    to: [u8; 4],
    quoted_dst: [u8; 4],
    ports: (u16, u16),
    seq: u32,
) -> Packet {
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(to, quoted_dst, 64)
        .tcp(ports.0, ports.1, seq, 1000)
        .ack(1)
        .write(&mut quoted, b"")
        .unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(from, to, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 576 },
        ))
        .write(&mut out, &quoted)
        .unwrap();
    pkt(&out)
}

/// An echo connection is keyed with its direction, as Linux conntrack's tuple has it: a
/// request from the peer that carries the identifier of the opener's running ping is a new
/// connection, judged by the opener's ingress rules (identical guests often pick the same
/// identifier); an echo reply sent in the opener's direction belongs to no connection.
#[test]
fn echo_identifiers_do_not_cross_directions() {
    let t = table();
    // A accepts nothing; B accepts echo requests.
    let pa = policy(&[], &[], Action::Drop);
    let pa = Policy {
        egress: policy(&[], &[], Action::Allow).egress,
        ..pa
    };
    let mut req = rule(1, Some(1), "", vec![], Action::Allow);
    req.icmp_type = Some(8);
    let mut req6 = rule(2, Some(58), "", vec![], Action::Allow);
    req6.icmp_type = Some(128);
    let pb = policy(&[], &[req, req6], Action::Drop);
    let pb = Policy {
        egress: pa.egress.clone(),
        ..pb
    };
    let a = Side {
        vnic: 1,
        policy: &pa,
        epoch: 0,
    };
    let b = Side {
        vnic: 2,
        policy: &pb,
        epoch: 0,
    };
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    for v6 in [false, true] {
        let ping = |src_a: bool, id: u16, request: bool| {
            if v6 {
                let (s, d) = if src_a { (A6, B6) } else { (B6, A6) };
                echo6(s, d, id, request)
            } else {
                let (s, d) = if src_a { (A, B) } else { (B, A) };
                echo(s, d, id, request)
            }
        };
        let id = if v6 { 0x4242 } else { 0x1234 };
        // A pings B: B's ingress allows the request, the reply flows back.
        let d = f.decide(&ping(true, id, true), ZONE, a, Some(b), 1, 1000);
        assert!(passes(d), "v6 {v6}: {d:?}");
        let d = f.decide(&ping(false, id, false), ZONE, b, Some(a), 1, 1000);
        assert!(passes(d), "v6 {v6}: the reply: {d:?}");
        // B pings A with A's identifier: a new connection, refused by A's ingress.
        assert_eq!(
            f.decide(&ping(false, id, true), ZONE, b, Some(a), 1, 1000),
            Decision::Drop(
                DropReason::PolicyDrop,
                Some(RuleRef::Ingress(1, RuleRef::DEFAULT))
            ),
            "v6 {v6}: a request from the peer is not a reply"
        );
        // Nor with the identifier next to it (the key's other port).
        assert_eq!(
            f.decide(
                &ping(false, id.wrapping_add(1), true),
                ZONE,
                b,
                Some(a),
                1,
                1000
            ),
            Decision::Drop(
                DropReason::PolicyDrop,
                Some(RuleRef::Ingress(1, RuleRef::DEFAULT))
            ),
            "v6 {v6}: id + 1"
        );
        assert_eq!(
            f.decide(
                &ping(false, id.wrapping_sub(1), true),
                ZONE,
                b,
                Some(a),
                1,
                1000
            ),
            Decision::Drop(
                DropReason::PolicyDrop,
                Some(RuleRef::Ingress(1, RuleRef::DEFAULT))
            ),
            "v6 {v6}: id - 1"
        );
        // A sends a reply in its own request's direction: no connection has it.
        assert_eq!(
            f.decide(&ping(true, id, false), ZONE, a, Some(b), 1, 1000),
            Decision::Drop(DropReason::IcmpNoConnection, None),
            "v6 {v6}: a reply in the opener's direction"
        );
        // The real ping still works.
        assert!(passes(f.decide(
            &ping(true, id, true),
            ZONE,
            a,
            Some(b),
            1,
            1000
        )));
        assert!(passes(f.decide(
            &ping(false, id, false),
            ZONE,
            b,
            Some(a),
            1,
            1000
        )));
    }
    // The identifiers 0 and 0xffff wrap like any other.
    for id in [0, 0xffff] {
        assert!(passes(f.decide(
            &echo(A, B, id, true),
            ZONE,
            a,
            Some(b),
            1,
            1000
        )));
        assert!(passes(f.decide(
            &echo(B, A, id, false),
            ZONE,
            b,
            Some(a),
            1,
            1000
        )));
        assert_eq!(
            f.decide(&echo(B, A, id, true), ZONE, b, Some(a), 1, 1000),
            Decision::Drop(
                DropReason::PolicyDrop,
                Some(RuleRef::Ingress(1, RuleRef::DEFAULT))
            )
        );
    }
}

/// A third vNIC's segments on a connection between two others (here a RST with the right
/// sequence number and the opener's addresses) are judged, never applied: the connection
/// stays established and outlives the closed-state timeout.
#[test]
fn a_third_vnic_cannot_reset_a_connection() {
    let t = table();
    let open = policy(&[], &[], Action::Allow);
    let [a, b, c] = [1, 2, 3].map(|vnic| Side {
        vnic,
        policy: &open,
        epoch: 0,
    });
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    // B opens to A's port 22.
    let d = f.decide(
        &tcp(B, A, 40000, 22, 500, 0, "S", 0),
        ZONE,
        b,
        Some(a),
        1,
        1000,
    );
    let slot = d.conn().expect("tracked");
    assert!(passes(f.decide(
        &tcp(A, B, 22, 40000, 7000, 501, "SA", 0),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    assert!(passes(f.decide(
        &tcp(B, A, 40000, 22, 501, 7001, "A", 0),
        ZONE,
        b,
        Some(a),
        1,
        1000
    )));
    let state = |now| t.connections(None, now)[0].class.name();
    assert_eq!(state(1), "established");
    // B sends 10 bytes; A acknowledges them (its rcv_nxt is 511).
    for (p, from_b) in [
        (tcp(B, A, 40000, 22, 501, 7001, "PA", 10), true),
        (tcp(A, B, 22, 40000, 7001, 511, "A", 0), false),
    ] {
        let d = if from_b {
            f.decide(&p, ZONE, b, Some(a), 1, 1000)
        } else {
            f.decide(&p, ZONE, a, Some(b), 1, 1000)
        };
        assert!(passes(d), "{d:?}");
    }
    // C forges B's RST at rcv_nxt + 1 and at rcv_nxt (both inside what the RST check
    // accepts), a FIN, and data that would move the window.
    for (seq, flags, len) in [
        (512, "R", 0),
        (511, "R", 0),
        (511, "FA", 0),
        (511, "PA", 100),
    ] {
        let d = f.decide(
            &tcp(B, A, 40000, 22, seq, 7001, flags, len),
            ZONE,
            c,
            Some(a),
            1,
            1000,
        );
        // Judged by C's and A's rules (both open here) and by the window, but not applied.
        assert!(passes(d), "{flags}: {d:?}");
        assert_eq!(state(1), "established", "after C's {flags}");
    }
    // C's RST in the reply direction (A's addresses, to B) changes nothing either.
    let _ = f.decide(
        &tcp(A, B, 22, 40000, 7001, 501, "R", 0),
        ZONE,
        c,
        Some(b),
        1,
        1000,
    );
    assert_eq!(state(1), "established");
    // Past the closed-state timeout both ends still talk: B's data and A's answer pass.
    let later = 1 + Timeouts::default().tcp[5] + 10;
    let d = f.decide(
        &tcp(B, A, 40000, 22, 511, 7001, "PA", 10),
        ZONE,
        b,
        Some(a),
        later,
        1000,
    );
    assert_eq!(d.conn(), Some(slot), "{d:?}");
    let d = f.decide(
        &tcp(A, B, 22, 40000, 7001, 521, "A", 0),
        ZONE,
        a,
        Some(b),
        later,
        1000,
    );
    assert_eq!(d.conn(), Some(slot), "{d:?}");
    // The connection's own RST still closes it.
    assert!(passes(f.decide(
        &tcp(B, A, 40000, 22, 521, 7001, "R", 0),
        ZONE,
        b,
        Some(a),
        later,
        1000
    )));
    assert_eq!(state(later), "closed");
}

/// ICMP errors that quote a connection pass only towards the quoted packet's sender and, for
/// TCP, only with a quoted sequence number in that sender's window (pf's check): a third VM
/// cannot lower a connection's path MTU by naming its addresses and ports.
#[test]
fn icmp_errors_must_quote_the_window() {
    let t = table();
    let open = policy(&[], &[], Action::Allow);
    let [a, b, c] = [1, 2, 3].map(|vnic| Side {
        vnic,
        policy: &open,
        epoch: 0,
    });
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    let slot = f
        .decide(
            &tcp(A, B, 40000, 80, 100, 0, "S", 0),
            ZONE,
            a,
            Some(b),
            1,
            1000,
        )
        .conn()
        .expect("tracked");
    assert!(passes(f.decide(
        &tcp(B, A, 80, 40000, 900, 101, "SA", 0),
        ZONE,
        b,
        Some(a),
        1,
        1000
    )));
    assert!(passes(f.decide(
        &tcp(A, B, 40000, 80, 101, 901, "A", 0),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    const C: [u8; 4] = [10, 0, 0, 3];
    let ports = (40000, 80);
    // In window: a router (here C) may tell A about the path.
    assert_eq!(
        f.decide(&frag_needed(C, A, B, ports, 101), ZONE, c, Some(a), 1, 1000),
        Decision::Pass {
            conn: Some(slot),
            created: false,
            rules: [None, None]
        }
    );
    // Far outside A's window, ahead or behind.
    for seq in [5_000_000, 101u32.wrapping_sub(50_000), 101 + 0x8000_0000] {
        assert_eq!(
            f.decide(&frag_needed(C, A, B, ports, seq), ZONE, c, Some(a), 1, 1000),
            Decision::Drop(DropReason::IcmpQuoteOutOfWindow, None),
            "seq {seq}"
        );
    }
    // Addressed to A, but delivered to B's vNIC: not the quoted packet's sender.
    assert_eq!(
        f.decide(&frag_needed(C, A, B, ports, 101), ZONE, c, Some(b), 1, 1000),
        Decision::Drop(DropReason::IcmpUnrelated, None)
    );
    // Quoting ports no connection has.
    assert_eq!(
        f.decide(
            &frag_needed(C, A, B, (40001, 80), 101),
            ZONE,
            c,
            Some(a),
            1,
            1000
        ),
        Decision::Drop(DropReason::IcmpUnrelated, None)
    );
    // The connection is untouched.
    assert!(passes(f.decide(
        &tcp(A, B, 40000, 80, 101, 901, "PA", 10),
        ZONE,
        a,
        Some(b),
        1,
        1000
    )));
    assert_eq!(t.connections(None, 1)[0].class.name(), "established");
}

/// Each vNIC has its own policy epoch: after A's policy changes, A's connections are
/// re-validated on their next packet, while a connection between C and D (whose policies did
/// not change) is not judged again.
#[test]
fn a_policy_change_revalidates_only_that_vnics_connections() {
    let t = table();
    let open = policy(&[], &[], Action::Allow);
    let side = |vnic, epoch| Side {
        vnic,
        policy: &open,
        epoch,
    };
    const C: [u8; 4] = [10, 0, 0, 3];
    const D: [u8; 4] = [10, 0, 0, 4];
    let f1 = Filter {
        table: &t,
        epoch: 1,
    };
    let ab = f1
        .decide(
            &udp(A, B, 1000, 53),
            ZONE,
            side(1, 1),
            Some(side(2, 1)),
            1,
            1000,
        )
        .conn()
        .unwrap();
    let cd = f1
        .decide(
            &udp(C, D, 1000, 53),
            ZONE,
            side(3, 1),
            Some(side(4, 1)),
            1,
            1000,
        )
        .conn()
        .unwrap();
    // Epoch 2 changes A's policy only (here to the same rules: a re-validation passes).
    let f2 = Filter {
        table: &t,
        epoch: 2,
    };
    let d = f2.decide(
        &udp(C, D, 1000, 53),
        ZONE,
        side(3, 1),
        Some(side(4, 1)),
        1,
        1000,
    );
    assert!(passes(d));
    assert_eq!(t.epoch(cd), 1, "C-D was judged again");
    let d = f2.decide(
        &udp(B, A, 53, 1000),
        ZONE,
        side(2, 1),
        Some(side(1, 2)),
        1,
        1000,
    );
    assert!(passes(d));
    assert_eq!(t.epoch(ab), 2, "A-B was not re-validated");
    // A revoking change (epoch 3, A's egress now drops everything) cuts A-B only.
    let closed = policy(&[], &[], Action::Drop);
    let a3 = Side {
        vnic: 1,
        policy: &closed,
        epoch: 3,
    };
    let f3 = Filter {
        table: &t,
        epoch: 3,
    };
    assert_eq!(
        f3.decide(&udp(A, B, 1000, 53), ZONE, a3, Some(side(2, 1)), 1, 1000),
        Decision::Drop(
            DropReason::PolicyRevoked,
            Some(RuleRef::Egress(1, RuleRef::DEFAULT))
        )
    );
    assert!(passes(f3.decide(
        &udp(C, D, 1000, 53),
        ZONE,
        side(3, 1),
        Some(side(4, 1)),
        1,
        1000
    )));
    assert_eq!(t.epoch(cd), 1);
}

/// Group rules match the other vNIC's identity (its group slots), not the addresses in the
/// packet: a third vNIC that forges an app server's address is still not in "app"; and when a
/// vNIC leaves the group (a new `Policy` with other groups, its epoch bumped), its connections
/// are judged again and cut.
#[test]
fn group_rules_follow_identity_and_membership() {
    const APP: u32 = 5;
    let t = table();
    let to_app = Rule {
        peer_groups: vec![APP],
        ..rule(1, Some(6), "", vec![8080..=8080], Action::Allow)
    };
    let from_web = Rule {
        peer_groups: vec![2],
        ..rule(1, Some(6), "", vec![8080..=8080], Action::Allow)
    };
    let mut web = policy(&[to_app], &[], Action::Drop);
    web.groups = Arc::new([2]);
    let mut app = Policy {
        ingress: Arc::new(
            Ruleset::compile_tiers(&[&[from_web]], Action::Drop, dataplane::ruleset::Peer::Src)
                .unwrap(),
        ),
        ..policy(&[], &[], Action::Allow)
    };
    app.groups = Arc::new([APP]);
    let intruder = policy(&[], &[], Action::Allow); // in no group
    let side = |vnic, policy, epoch| Side {
        vnic,
        policy,
        epoch,
    };
    let f = Filter {
        table: &t,
        epoch: 1,
    };
    // web -> app on 8080: both rulesets allow by group.
    let d = f.decide(
        &tcp(A, B, 4000, 8080, 10, 0, "S", 0),
        ZONE,
        side(1, &web, 0),
        Some(side(2, &app, 0)),
        1,
        1000,
    );
    assert!(matches!(d, Decision::Pass { created: true, .. }), "{d:?}");
    // web -> a vNIC in no group, with app's address: web's egress refuses.
    let d = f.decide(
        &tcp(A, B, 4001, 8080, 10, 0, "S", 0),
        ZONE,
        side(1, &web, 0),
        Some(side(3, &intruder, 0)),
        1,
        1000,
    );
    assert_eq!(
        d,
        Decision::Drop(
            DropReason::PolicyDrop,
            Some(RuleRef::Egress(1, RuleRef::DEFAULT))
        )
    );
    // The intruder forges web's address towards app: app's ingress sees no group "web".
    let d = f.decide(
        &tcp(A, B, 4002, 8080, 10, 0, "S", 0),
        ZONE,
        side(3, &intruder, 0),
        Some(side(2, &app, 0)),
        1,
        1000,
    );
    assert_eq!(
        d,
        Decision::Drop(
            DropReason::PolicyDrop,
            Some(RuleRef::Ingress(2, RuleRef::DEFAULT))
        )
    );
    // app leaves the group: same rulesets, other groups, a new epoch for app only.
    let mut moved = app.clone();
    moved.groups = Arc::new([]);
    let f2 = Filter {
        table: &t,
        epoch: 2,
    };
    let d = f2.decide(
        &tcp(B, A, 8080, 4000, 50, 11, "SA", 0),
        ZONE,
        side(2, &moved, 2),
        Some(side(1, &web, 0)),
        1,
        1000,
    );
    assert_eq!(
        d,
        Decision::Drop(
            DropReason::PolicyRevoked,
            Some(RuleRef::Egress(1, RuleRef::DEFAULT))
        ),
        "the connection is cut: web may no longer reach it"
    );
}
