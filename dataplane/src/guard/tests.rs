//! The guard against frames an attacker on the segment would send: other vNICs' addresses as
//! source, ARP and ND claims for them, ARP and ND with another MAC inside, DHCP replies from a
//! port that is no DHCP server, addresses beyond the limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;

use super::*;
use crate::parse::parse;

const ME: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
const OTHER: Mac = Mac([0x52, 0x54, 0, 0, 0, 2]);
const MY_IP: [u8; 4] = [10, 0, 0, 1];
const THEIR_IP: [u8; 4] = [10, 0, 0, 2];
const NEW_IP: [u8; 4] = [10, 0, 0, 9];
const MY_V6: &str = "fd00::1";
const THEIR_V6: &str = "fd00::2";

fn guard(mode: Mode) -> Guard {
    Guard {
        mode,
        v4: Box::new([Ipv4Addr::from(MY_IP)]),
        v6: Box::new([MY_V6.parse().unwrap()]),
        max: 4,
        dhcp_server: false,
    }
}

/// Port 1 owns our addresses; port 2 owns theirs; zone 10.
fn owners() -> Owners {
    let mut o = Owners::new();
    o.insert((10, IpAddr::from(MY_IP)), 1);
    o.insert((10, IpAddr::V6(MY_V6.parse().unwrap())), 1);
    o.insert((10, IpAddr::from(THEIR_IP)), 2);
    o.insert((10, IpAddr::V6(THEIR_V6.parse().unwrap())), 2);
    o
}

fn check(g: &Guard, frame: &[u8]) -> Check {
    let p = parse(frame, frame.len()).expect("parses");
    g.check(&p, frame, ME, 10, 1, &owners())
}

fn udp_from(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(ME.0, [0xff; 6])
        .ipv4(src, [255; 4], 64)
        .udp(sport, dport)
        .write(&mut out, &[0; 8])
        .unwrap();
    out
}

fn arp(sha: Mac, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&ME.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

/// A neighbour advertisement (or, `ns`, a solicitation) from `src` about `target`, with a
/// link-layer option carrying `ll`.
fn nd(src: &str, target: &str, ll: Mac, ns: bool) -> Vec<u8> {
    let (ty, opt) = if ns { (135u8, 1u8) } else { (136, 2) };
    let mut body = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&target.parse::<Ipv6Addr>().unwrap().octets());
    body.extend_from_slice(&[opt, 1]);
    body.extend_from_slice(&ll.0);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(ME.0, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(
            src.parse::<Ipv6Addr>().unwrap().octets(),
            "ff02::1".parse::<Ipv6Addr>().unwrap().octets(),
            255,
        )
        .write(&mut out, etherparse::IpNumber(58), &body)
        .unwrap();
    out
}

#[test]
fn strict_passes_bound_addresses_only() {
    let g = guard(Mode::Strict);
    assert_eq!(check(&g, &udp_from(MY_IP, 5000, 53)), Check::Pass);
    assert_eq!(
        check(&g, &udp_from(THEIR_IP, 5000, 53)),
        Check::Drop(DropReason::IpSpoofed)
    );
    assert_eq!(
        check(&g, &udp_from(NEW_IP, 5000, 53)),
        Check::Drop(DropReason::IpSpoofed)
    );
    // No address: a DHCP client only.
    assert_eq!(check(&g, &udp_from([0; 4], 68, 67)), Check::Pass);
    assert_eq!(
        check(&g, &udp_from([0; 4], 5000, 53)),
        Check::Drop(DropReason::IpSpoofed)
    );
    // ARP: our own claim passes; a claim for theirs or a new one does not; a probe asks only.
    assert_eq!(check(&g, &arp(ME, MY_IP, THEIR_IP)), Check::Pass);
    assert_eq!(
        check(&g, &arp(ME, THEIR_IP, MY_IP)),
        Check::Drop(DropReason::ArpSpoofed)
    );
    assert_eq!(
        check(&g, &arp(ME, NEW_IP, MY_IP)),
        Check::Drop(DropReason::ArpSpoofed)
    );
    assert_eq!(check(&g, &arp(ME, [0; 4], THEIR_IP)), Check::Pass);
    // ARP that names another MAC inside than the frame's own.
    assert_eq!(
        check(&g, &arp(OTHER, MY_IP, THEIR_IP)),
        Check::Drop(DropReason::ArpSpoofed)
    );
    // ND: advertising our address passes; theirs does not; nor with another MAC inside.
    assert_eq!(check(&g, &nd(MY_V6, MY_V6, ME, false)), Check::Pass);
    assert_eq!(
        check(&g, &nd(MY_V6, THEIR_V6, ME, false)),
        Check::Drop(DropReason::NdSpoofed)
    );
    assert_eq!(
        check(&g, &nd(MY_V6, MY_V6, OTHER, false)),
        Check::Drop(DropReason::NdSpoofed)
    );
    // A solicitation for their address asks; it claims nothing.
    assert_eq!(check(&g, &nd(MY_V6, THEIR_V6, ME, true)), Check::Pass);
    // A duplicate-address probe (from ::) claims its target.
    assert_eq!(
        check(&g, &nd("::", THEIR_V6, ME, true)),
        Check::Drop(DropReason::NdSpoofed)
    );
    assert_eq!(check(&g, &nd("::", MY_V6, ME, true)), Check::Pass);
    // An advertisement from a source that is not ours.
    assert_eq!(
        check(&g, &nd(THEIR_V6, MY_V6, ME, false)),
        Check::Drop(DropReason::IpSpoofed)
    );
}

#[test]
fn learn_binds_on_first_use_what_nobody_owns() {
    let g = guard(Mode::Learn);
    let new = IpAddr::from(NEW_IP);
    assert_eq!(
        check(&g, &udp_from(NEW_IP, 5000, 53)),
        Check::Claim(Claim {
            addr: new,
            how: How::Ip
        })
    );
    assert_eq!(
        check(&g, &arp(ME, NEW_IP, THEIR_IP)),
        Check::Claim(Claim {
            addr: new,
            how: How::Arp
        })
    );
    // Another vNIC's address is never taken over, whichever way it is claimed.
    assert_eq!(
        check(&g, &udp_from(THEIR_IP, 5000, 53)),
        Check::Drop(DropReason::IpSpoofed)
    );
    assert_eq!(
        check(&g, &arp(ME, THEIR_IP, MY_IP)),
        Check::Drop(DropReason::ArpSpoofed)
    );
    assert_eq!(
        check(&g, &nd(MY_V6, THEIR_V6, ME, false)),
        Check::Drop(DropReason::NdSpoofed)
    );
    assert_eq!(
        check(&g, &nd("fd00::9", "fd00::9", ME, false)),
        Check::Claim(Claim {
            addr: "fd00::9".parse().unwrap(),
            how: How::Nd
        })
    );
    // At the limit, a new address is refused.
    let full = Guard {
        v4: Box::new([
            Ipv4Addr::from(MY_IP),
            Ipv4Addr::new(10, 0, 0, 5),
            Ipv4Addr::new(10, 0, 0, 6),
        ]),
        ..guard(Mode::Learn)
    };
    assert_eq!(
        check(&full, &udp_from(NEW_IP, 5000, 53)),
        Check::Drop(DropReason::AddressLimit)
    );
    assert_eq!(check(&full, &udp_from(MY_IP, 5000, 53)), Check::Pass);
}

#[test]
fn off_drops_nothing_and_still_discovers() {
    let g = guard(Mode::Off);
    assert_eq!(check(&g, &udp_from(THEIR_IP, 5000, 53)), Check::Pass);
    assert_eq!(check(&g, &arp(OTHER, MY_IP, THEIR_IP)), Check::Pass);
    assert_eq!(
        check(&g, &arp(ME, NEW_IP, THEIR_IP)),
        Check::Claim(Claim {
            addr: IpAddr::from(NEW_IP),
            how: How::Arp
        })
    );
    assert_eq!(check(&g, &udp_from(MY_IP, 67, 68)), Check::Pass);
    let p = parse(&udp_from(MY_IP, 5000, 53), 60).unwrap();
    assert!(!g.wants(&p), "off mode skips plain IP data");
}

#[test]
fn dhcp_replies_come_from_dhcp_servers_only() {
    let g = guard(Mode::Learn);
    assert_eq!(
        check(&g, &udp_from(MY_IP, 67, 68)),
        Check::Drop(DropReason::DhcpServerUntrusted)
    );
    let server = Guard {
        dhcp_server: true,
        ..guard(Mode::Strict)
    };
    assert_eq!(check(&server, &udp_from(MY_IP, 67, 68)), Check::Snoop);
    // A DHCP server whose guard is off is snooped all the same (its leases are discovery).
    let off_server = Guard {
        dhcp_server: true,
        ..guard(Mode::Off)
    };
    let reply = udp_from(MY_IP, 67, 68);
    let p = parse(&reply, reply.len()).unwrap();
    assert!(off_server.wants(&p));
    assert_eq!(check(&off_server, &reply), Check::Snoop);
}

#[test]
fn malformed_arp_is_dropped_where_enforced() {
    let mut f = arp(ME, MY_IP, THEIR_IP);
    f[16] = 0x86; // ptype 0x86dd
    assert_eq!(
        check(&guard(Mode::Strict), &f),
        Check::Drop(DropReason::ArpMalformed)
    );
    assert_eq!(check(&guard(Mode::Off), &f), Check::Pass);
    let short = &arp(ME, MY_IP, THEIR_IP)[..30];
    let p = parse(short, short.len()).unwrap();
    assert_eq!(
        guard(Mode::Learn).check(&p, short, ME, 10, 1, &owners()),
        Check::Drop(DropReason::ArpMalformed)
    );
}

fn bootp(op: u8, msg_type: Option<u8>, lease: Option<u32>) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = op;
    b[1] = 1;
    b[2] = 6;
    b[16..20].copy_from_slice(&[10, 0, 0, 50]);
    b[28..34].copy_from_slice(&OTHER.0);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    if let Some(t) = msg_type {
        b.extend_from_slice(&[53, 1, t]);
    }
    if let Some(l) = lease {
        b.extend_from_slice(&[51, 4]);
        b.extend_from_slice(&l.to_be_bytes());
    }
    b.push(255);
    b
}

#[test]
fn dhcp_replies_are_read_and_hostile_ones_refused() {
    assert_eq!(
        dhcp_reply(&bootp(2, Some(5), Some(3600))),
        Some(DhcpReply {
            msg_type: 5,
            client: OTHER,
            yiaddr: Ipv4Addr::new(10, 0, 0, 50),
            lease_secs: 3600
        })
    );
    assert_eq!(dhcp_reply(&bootp(1, Some(5), None)), None, "a request");
    assert_eq!(dhcp_reply(&bootp(2, None, None)), None, "no message type");
    let mut cut = bootp(2, Some(5), Some(3600));
    cut.truncate(245);
    assert_eq!(dhcp_reply(&cut), None, "an option cut short");
    assert_eq!(dhcp_reply(&[2; 100]), None, "shorter than BOOTP");
    // Every prefix and garbage: never a panic.
    let full = bootp(2, Some(5), Some(7));
    for n in 0..full.len() {
        let _ = dhcp_reply(&full[..n]);
    }
    let mut junk = full.clone();
    junk.extend(std::iter::repeat_n(7u8, 300));
    let _ = dhcp_reply(&junk);
}
