//! The switch's answer to a rejected frame.
//!
//! When a firewall rule says "reject", the switch drops the frame and answers its sender on behalf
//! of the destination: a TCP RST for TCP (RFC 9293 §3.10.7.1, "reset generation" for a closed
//! port), an ICMP "administratively prohibited" destination-unreachable error for everything else
//! (RFC 1812 §5.2.7.1 type 3 code 13; RFC 4443 §3.1 ICMPv6 type 1 code 1).
//!
//! [`reject`] works from the bytes the worker already copied for [`parse`](crate::parse::parse)
//! (at most [`HEADROOM`]) and the resulting [`Packet`], so the ICMP quote is what the headroom
//! holds: the IP header, the transport header and as many payload bytes as fit.
//!
//! # Contract
//!
//! - [`reject`] never panics, never allocates and never reads past `hdr`, even when `hdr` and `p`
//!   disagree (an inconsistent pair gets no answer or a nonsense one, never a crash).
//! - No answer is built for anything that must not get one (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7,
//!   RFC 4443 §2.4 (e)): non-IP frames, group (multicast/broadcast) MACs on either side,
//!   multicast/broadcast/unspecified IP destinations, unspecified/multicast (and, for IPv4,
//!   limited-broadcast) IP sources, later fragments, TCP RSTs, ICMP errors (including IPv4
//!   redirects, which RFC 1122 counts as errors although the parser does not) and ICMPv6 neighbour
//!   discovery.
//! - The answer is untagged (VLAN tags the parser skipped are not copied) and is not padded to
//!   the 60-byte Ethernet minimum: the guests are virtio-net devices, which take short frames.
//!
//! # Design notes
//!
//! This is the slow path (one answer per rejected frame), so it writes fixed offsets into the
//! caller's buffer rather than going through `wire` views; the checksums are the plain RFC 1071
//! one's-complement sum. IPv4 answers carry DF, ID 0 and TTL 64; IPv6 answers hop limit 64.
//!
//! For a TCP first fragment (rare: TCP avoids fragmentation) `data_len` counts only this
//! fragment's payload, so a RST|ACK answering a fragmented segment without ACK acknowledges less
//! than the whole segment; the sender still accepts it in SYN-SENT as long as it acknowledges the
//! SYN.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::parse::{ip_proto, Frag, Packet, Tcp, ETHERTYPE_IPV4, ETHERTYPE_IPV6, HEADROOM, L3};
use crate::wire::ETH_HEADER_LEN;

/// Longest answer we build (Ethernet + IPv6 + ICMPv6 header + quote).
pub const MAX_REPLY: usize = 14 + 40 + 8 + crate::parse::HEADROOM;

/// TTL / hop limit of every answer.
const TTL: u8 = 64;
/// IPv4 header length (no options).
const IPV4_LEN: usize = 20;
/// IPv6 header length.
const IPV6_LEN: usize = 40;
/// TCP header length (no options).
const TCP_LEN: usize = 20;
/// ICMP / ICMPv6 header length, including the 4 unused bytes of a destination-unreachable.
const ICMP_LEN: usize = 8;
/// Longest IPv4 ICMP error (RFC 1812 §4.3.2.3).
const V4_ERROR_MAX: usize = 576;
/// Longest ICMPv6 error (RFC 4443 §2.4 (c): the IPv6 minimum MTU).
const V6_ERROR_MAX: usize = 1280;

/// ICMP destination unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP redirect: an error per RFC 1122 §3.2.2, though `parse` does not flag it.
const ICMP_REDIRECT: u8 = 5;
/// Code 13: communication administratively prohibited (RFC 1812 §5.2.7.1).
const ICMP_ADMIN_PROHIBITED: u8 = 13;
/// ICMPv6 destination unreachable.
const ICMPV6_DEST_UNREACH: u8 = 1;
/// Code 1: communication with destination administratively prohibited.
const ICMPV6_ADMIN_PROHIBITED: u8 = 1;

/// Offset of the answer's IP header.
const L3_OFF: usize = ETH_HEADER_LEN;
/// Offset of the answer's transport header behind an IPv4 header.
const V4_L4_OFF: usize = L3_OFF + IPV4_LEN;
/// Offset of the answer's transport header behind an IPv6 header.
const V6_L4_OFF: usize = L3_OFF + IPV6_LEN;

// The longest answer, an ICMPv6 error quoting the whole headroom, fits the buffer.
const _: () = assert!(V6_L4_OFF + ICMP_LEN + HEADROOM <= MAX_REPLY);

/// Builds the answer to the rejected frame whose first bytes are `hdr` (from the Ethernet header
/// on, at most [`HEADROOM`] bytes; the same slice given to `parse`) and whose parse result is `p`.
/// Writes it into `out` and returns its length, or `None` when no answer is due.
///
/// On `None`, `out` may have been partly written.
pub fn reject(hdr: &[u8], p: &Packet, out: &mut [u8; MAX_REPLY]) -> Option<usize> {
    let eth: &[u8; ETH_HEADER_LEN] = hdr.first_chunk()?;
    // The I/G bit of the destination (byte 0) or source (byte 6) MAC: group addresses.
    if eth[0] & 1 != 0 || eth[6] & 1 != 0 {
        return None;
    }
    if p.frag == Frag::Later {
        return None;
    }
    if p.tcp.is_some_and(|t| t.flags & Tcp::RST != 0) {
        return None;
    }
    if let Some(i) = p.icmp {
        let redirect = p.l3 == L3::Ipv4 && i.ty == ICMP_REDIRECT;
        if i.is_error || i.is_nd || redirect {
            return None;
        }
    }

    let len = match (p.l3, p.src, p.dst) {
        (L3::Ipv4, IpAddr::V4(src), IpAddr::V4(dst)) => {
            if !v4_answerable(src, dst) {
                return None;
            }
            out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            v4(hdr, p, src, dst, out)?
        }
        (L3::Ipv6, IpAddr::V6(src), IpAddr::V6(dst)) => {
            if !v6_answerable(src, dst) {
                return None;
            }
            out[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            v6(hdr, p, src, dst, out)?
        }
        _ => return None,
    };
    // Back to the sender, from the MAC it sent to.
    out[0..6].copy_from_slice(&eth[6..12]);
    out[6..12].copy_from_slice(&eth[0..6]);
    Some(len)
}

/// The IPv4 addresses of the rejected packet allow an answer.
fn v4_answerable(src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let group = |a: Ipv4Addr| a.is_multicast() || a.is_broadcast() || a.is_unspecified();
    !group(src) && !group(dst)
}

/// The IPv6 addresses of the rejected packet allow an answer.
fn v6_answerable(src: Ipv6Addr, dst: Ipv6Addr) -> bool {
    let group = |a: Ipv6Addr| a.is_multicast() || a.is_unspecified();
    !group(src) && !group(dst)
}

/// The IPv4 answer from `dst` to `src`, behind the Ethernet header. Returns the frame length.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the lengths of an answer are under MAX_REPLY bytes"
)]
fn v4(
    hdr: &[u8],
    p: &Packet,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    out: &mut [u8; MAX_REPLY],
) -> Option<usize> {
    let (me, peer) = (dst.octets(), src.octets());
    let (proto, l4_len) = match p.tcp {
        Some(t) => {
            let pseudo = sum(sum(0, &me), &peer) + u32::from(ip_proto::TCP) + TCP_LEN as u32;
            rst(p, t, pseudo, &mut out[V4_L4_OFF..V4_L4_OFF + TCP_LEN]);
            (ip_proto::TCP, TCP_LEN)
        }
        None => {
            let q = quote(hdr, p, V4_ERROR_MAX - IPV4_LEN - ICMP_LEN)?;
            // ICMPv4 has no pseudo-header.
            let len = icmp_error(
                &mut out[V4_L4_OFF..],
                ICMP_DEST_UNREACH,
                ICMP_ADMIN_PROHIBITED,
                q,
                0,
            );
            (ip_proto::ICMP, len)
        }
    };
    let total = IPV4_LEN + l4_len;
    let ip = &mut out[L3_OFF..V4_L4_OFF];
    // Cannot truncate: total <= 576.
    let total16 = (total as u16).to_be_bytes();
    ip[..12].copy_from_slice(&[
        0x45, 0, total16[0], total16[1], 0, 0, 0x40, 0, TTL, proto, 0, 0,
    ]);
    ip[12..16].copy_from_slice(&me);
    ip[16..20].copy_from_slice(&peer);
    let c = finish(sum(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    Some(L3_OFF + total)
}

/// The IPv6 answer from `dst` to `src`, behind the Ethernet header. Returns the frame length.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the lengths of an answer are under MAX_REPLY bytes"
)]
fn v6(
    hdr: &[u8],
    p: &Packet,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    out: &mut [u8; MAX_REPLY],
) -> Option<usize> {
    let (me, peer) = (dst.octets(), src.octets());
    let pseudo = |proto: u8, len: usize| {
        // Cannot truncate: len <= 1280 - 40.
        sum(sum(0, &me), &peer) + u32::from(proto) + len as u32
    };
    let (proto, l4_len) = match p.tcp {
        Some(t) => {
            rst(
                p,
                t,
                pseudo(ip_proto::TCP, TCP_LEN),
                &mut out[V6_L4_OFF..V6_L4_OFF + TCP_LEN],
            );
            (ip_proto::TCP, TCP_LEN)
        }
        None => {
            let q = quote(hdr, p, V6_ERROR_MAX - IPV6_LEN - ICMP_LEN)?;
            let pseudo = pseudo(ip_proto::ICMPV6, ICMP_LEN + q.len());
            let len = icmp_error(
                &mut out[V6_L4_OFF..],
                ICMPV6_DEST_UNREACH,
                ICMPV6_ADMIN_PROHIBITED,
                q,
                pseudo,
            );
            (ip_proto::ICMPV6, len)
        }
    };
    let ip = &mut out[L3_OFF..V6_L4_OFF];
    // Cannot truncate: l4_len <= 1280 - 40.
    let plen = (l4_len as u16).to_be_bytes();
    ip[..8].copy_from_slice(&[0x60, 0, 0, 0, plen[0], plen[1], proto, TTL]);
    ip[8..24].copy_from_slice(&me);
    ip[24..40].copy_from_slice(&peer);
    Some(V6_L4_OFF + l4_len)
}

/// Writes an ICMP or ICMPv6 error (type, code, four unused bytes, then the quote `q`) at the
/// start of `out` with its checksum over `pseudo` (the unfolded pseudo-header sum; 0 for
/// ICMPv4) and the message. Returns its length.
fn icmp_error(out: &mut [u8], ty: u8, code: u8, q: &[u8], pseudo: u32) -> usize {
    let len = ICMP_LEN + q.len();
    let icmp = &mut out[..len];
    icmp[..ICMP_LEN].copy_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]);
    icmp[ICMP_LEN..].copy_from_slice(q);
    let c = finish(sum(pseudo, icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

/// Writes the RST answering the segment `t` of `p` into `out` (20 bytes); `pseudo` is the
/// unfolded sum of the pseudo-header.
fn rst(p: &Packet, t: Tcp, pseudo: u32, out: &mut [u8]) {
    let (seq, ack, flags) = if t.flags & Tcp::ACK != 0 {
        (t.ack, 0, Tcp::RST)
    } else {
        let syn = u32::from(t.flags & Tcp::SYN != 0);
        let fin = u32::from(t.flags & Tcp::FIN != 0);
        let ack = t
            .seq
            .wrapping_add(t.data_len)
            .wrapping_add(syn)
            .wrapping_add(fin);
        (0, ack, Tcp::RST | Tcp::ACK)
    };
    out[0..2].copy_from_slice(&p.dport.to_be_bytes());
    out[2..4].copy_from_slice(&p.sport.to_be_bytes());
    out[4..8].copy_from_slice(&seq.to_be_bytes());
    out[8..12].copy_from_slice(&ack.to_be_bytes());
    // Data offset 5, flags, window 0, checksum 0 for now, urgent pointer 0.
    out[12..20].copy_from_slice(&[5 << 4, flags, 0, 0, 0, 0, 0, 0]);
    let c = finish(sum(pseudo, out));
    out[16..18].copy_from_slice(&c.to_be_bytes());
}

/// The quote of an ICMP error: the rejected packet from its IP header on, as far as `hdr` holds
/// it (never past the IP packet's end, so Ethernet padding is not quoted), at most `max` bytes.
/// `None` if `hdr` does not even hold the start of the IP header (an inconsistent `p`).
fn quote<'a>(hdr: &'a [u8], p: &Packet, max: usize) -> Option<&'a [u8]> {
    let start = usize::from(p.l3_off);
    let end = (usize::from(p.l4_off) + usize::from(p.l4_len))
        .min(hdr.len())
        .min(HEADROOM)
        .min(start + max);
    hdr.get(start..end).filter(|q| !q.is_empty())
}

/// Adds `data` as big-endian 16-bit words (odd tail padded with zero) to `acc` (RFC 1071).
/// Cannot overflow for the lengths used here: under 700 bytes, so under 350 × 0xffff, plus a
/// pseudo-header sum.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// Folds a sum to 16 bits and complements it: the checksum field's value.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the one's-complement sum, folded to 16 bits before the cast"
)]
fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // Cannot truncate: folded to 16 bits above.
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, Inner};
    use etherparse::{
        IpNumber, Ipv4Header, Ipv6FragmentHeader, NetSlice, PacketBuilder, SlicedPacket,
        TransportSlice,
    };

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const V4_A: [u8; 4] = [10, 0, 0, 1];
    const V4_B: [u8; 4] = [10, 0, 0, 2];
    const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn parsed(f: &[u8]) -> Packet {
        parse(&f[..f.len().min(HEADROOM)], f.len()).expect("test frame parses")
    }

    /// The answer to `f`, or `None`.
    fn answer(f: &[u8]) -> Option<Vec<u8>> {
        let hdr = &f[..f.len().min(HEADROOM)];
        let p = parse(hdr, f.len()).expect("test frame parses");
        let mut out = [0u8; MAX_REPLY];
        reject(hdr, &p, &mut out).map(|n| out[..n].to_vec())
    }

    /// Checks the answer `r` to `f` with etherparse: Ethernet addresses swapped, IP addresses
    /// swapped, TTL/hop limit 64, every checksum valid. Returns the etherparse view.
    fn verify<'a>(f: &[u8], r: &'a [u8]) -> SlicedPacket<'a> {
        let s = SlicedPacket::from_ethernet(r).expect("answer parses with etherparse");
        assert_eq!(r[0..6], f[6..12], "dst MAC is the rejected frame's src");
        assert_eq!(r[6..12], f[0..6], "src MAC is the rejected frame's dst");
        let p = parsed(f);
        let net = s.net.as_ref().expect("answer has an IP header");
        let (src, dst) = match net {
            NetSlice::Ipv4(ip) => {
                let h = ip.header();
                assert_eq!(h.ttl(), TTL);
                assert!(h.dont_fragment());
                assert_eq!(h.identification(), 0);
                assert_eq!(h.ihl(), 5);
                assert_eq!(h.dcp().value(), 0);
                assert_eq!(usize::from(h.total_len()) + 14, r.len());
                assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                let ts = s.transport.as_ref().expect("transport");
                match ts {
                    TransportSlice::Tcp(t) => {
                        assert_eq!(
                            t.calc_checksum_ipv4(h.source(), h.destination()).unwrap(),
                            t.checksum()
                        );
                    }
                    TransportSlice::Icmpv4(i) => {
                        assert_eq!(i.icmp_type().calc_checksum(i.payload()), i.checksum());
                    }
                    other => panic!("unexpected transport {other:?}"),
                }
                (IpAddr::from(h.source()), IpAddr::from(h.destination()))
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header();
                assert_eq!(h.hop_limit(), TTL);
                assert_eq!(h.traffic_class(), 0);
                assert_eq!(h.flow_label().value(), 0);
                assert_eq!(usize::from(h.payload_length()) + 54, r.len());
                let ts = s.transport.as_ref().expect("transport");
                match ts {
                    TransportSlice::Tcp(t) => {
                        assert_eq!(
                            t.calc_checksum_ipv6(h.source(), h.destination()).unwrap(),
                            t.checksum()
                        );
                    }
                    TransportSlice::Icmpv6(i) => {
                        let c =
                            i.icmp_type()
                                .calc_checksum(h.source(), h.destination(), i.payload());
                        assert_eq!(c.unwrap(), i.checksum());
                    }
                    other => panic!("unexpected transport {other:?}"),
                }
                (IpAddr::from(h.source()), IpAddr::from(h.destination()))
            }
            NetSlice::Arp(_) => panic!("ARP answer"),
        };
        assert_eq!(
            (src, dst),
            (p.dst, p.src),
            "answer goes from the destination to the source"
        );
        s
    }

    fn tcp_v4(
        flags: impl FnOnce(
            etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .tcp(40000, 80, 0x0102_0304, 64240);
        let b = flags(b);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn tcp_v6(
        flags: impl FnOnce(
            etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 64)
            .tcp(40000, 443, 0xfffffffe, 64240);
        let b = flags(b);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn udp_v4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(src, dst, 64)
            .udp(5353, 53)
            .write(&mut v, payload)
            .unwrap();
        v
    }

    fn udp_v6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(src, dst, 64)
            .udp(5353, 53)
            .write(&mut v, payload)
            .unwrap();
        v
    }

    fn tcp_of(s: &SlicedPacket<'_>) -> etherparse::TcpHeader {
        match s.transport.as_ref() {
            Some(TransportSlice::Tcp(t)) => t.to_header(),
            other => panic!("expected TCP, got {other:?}"),
        }
    }

    fn check_syn(f: &[u8], sport: u16, dport: u16, seq: u32) {
        let r = answer(f).expect("a SYN gets a RST");
        let s = verify(f, &r);
        let t = tcp_of(&s);
        assert!(t.rst && t.ack && !t.syn && !t.fin && !t.psh);
        assert_eq!(t.acknowledgment_number, seq.wrapping_add(1));
        assert_eq!(t.sequence_number, 0);
        assert_eq!((t.source_port, t.destination_port), (dport, sport));
        assert_eq!(t.window_size, 0);
        assert_eq!(t.data_offset(), 5);
        assert!(s.transport.is_some());
        // Our parser agrees it is a RST for the reversed flow.
        let q = parsed(&r);
        assert_eq!(q.tcp.unwrap().flags, Tcp::RST | Tcp::ACK);
        assert_eq!((q.sport, q.dport), (dport, sport));
    }

    #[test]
    fn syn_v4_gets_rst_ack() {
        check_syn(&tcp_v4(|b| b.syn(), &[]), 40000, 80, 0x0102_0304);
    }

    #[test]
    fn syn_v6_gets_rst_ack_wrapping() {
        // seq + 1 wraps past 2^32 - 1.
        let f = tcp_v6(|b| b.syn(), &[]);
        check_syn(&f, 40000, 443, 0xffff_fffe);
        let f = tcp_v6(|b| b.syn().fin(), &[]);
        let r = answer(&f).unwrap();
        assert_eq!(tcp_of(&verify(&f, &r)).acknowledgment_number, 0);
    }

    #[test]
    fn syn_with_options_is_answered_without_options() {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .tcp(40000, 80, 7, 64240)
            .syn()
            .options(&[
                etherparse::TcpOptionElement::MaximumSegmentSize(1460),
                etherparse::TcpOptionElement::WindowScale(7),
            ])
            .unwrap()
            .write(&mut v, &[])
            .unwrap();
        let r = answer(&v).unwrap();
        assert_eq!(r.len(), 14 + 20 + 20);
        let t = tcp_of(&verify(&v, &r));
        assert_eq!(t.acknowledgment_number, 8);
        assert!(t.options.is_empty());
    }

    #[test]
    fn segment_with_ack_gets_plain_rst() {
        for f in [
            tcp_v4(|b| b.ack(0xdead_beef).psh(), b"hello world"),
            tcp_v6(|b| b.ack(0xdead_beef).psh(), b"hello world"),
        ] {
            let r = answer(&f).unwrap();
            let t = tcp_of(&verify(&f, &r));
            assert!(t.rst && !t.ack && !t.psh && !t.syn);
            assert_eq!(t.sequence_number, 0xdead_beef);
            assert_eq!(t.acknowledgment_number, 0);
            assert_eq!(t.window_size, 0);
        }
    }

    #[test]
    fn data_without_ack_is_acknowledged_past_its_data_and_fin() {
        let f = tcp_v4(|b| b.fin(), b"12345");
        let r = answer(&f).unwrap();
        let t = tcp_of(&verify(&f, &r));
        assert!(t.rst && t.ack);
        assert_eq!(t.acknowledgment_number, 0x0102_0304 + 5 + 1);
    }

    /// Checks an ICMP admin-prohibited answer to the UDP frame `f`: the quote is the rejected IP
    /// packet as far as the headroom holds it, and our parser reads it back as an error whose
    /// quoted tuple is the original one.
    fn check_unreachable(f: &[u8]) {
        let p = parsed(f);
        let r = answer(f).expect("UDP gets an ICMP error");
        let s = verify(f, &r);
        let (ty, code, quoted) = match s.transport.as_ref().unwrap() {
            TransportSlice::Icmpv4(i) => {
                let b = i.slice();
                (b[0], b[1], i.payload())
            }
            TransportSlice::Icmpv6(i) => {
                let b = i.slice();
                (b[0], b[1], i.payload())
            }
            other => panic!("expected ICMP, got {other:?}"),
        };
        let ip_end = (usize::from(p.l4_off) + usize::from(p.l4_len)).min(HEADROOM);
        assert_eq!(
            quoted,
            &f[usize::from(p.l3_off)..ip_end],
            "quote is the IP packet in the headroom"
        );
        let unused = &r[r.len() - quoted.len() - 4..r.len() - quoted.len()];
        assert_eq!(unused, [0; 4]);
        let q = parsed(&r);
        let icmp = q.icmp.expect("our parser sees ICMP");
        match p.l3 {
            L3::Ipv4 => assert_eq!((ty, code), (3, 13)),
            _ => assert_eq!((ty, code), (1, 1)),
        }
        assert!(icmp.is_error);
        assert_eq!((icmp.ty, icmp.code), (ty, code));
        let inner: Inner = icmp.inner.expect("quote parses");
        assert_eq!(
            (inner.src, inner.dst, inner.proto, inner.sport, inner.dport),
            (p.src, p.dst, p.proto, p.sport, p.dport)
        );
    }

    #[test]
    fn udp_v4_gets_admin_prohibited() {
        check_unreachable(&udp_v4(V4_A, V4_B, b"query"));
        check_unreachable(&udp_v4(V4_A, V4_B, &[]));
        // Longer than the headroom: the quote stops at the headroom.
        check_unreachable(&udp_v4(V4_A, V4_B, &[0x5a; 1000]));
    }

    #[test]
    fn udp_v6_gets_admin_prohibited() {
        check_unreachable(&udp_v6(V6_A, V6_B, b"query"));
        check_unreachable(&udp_v6(V6_A, V6_B, &[0x5a; 1000]));
    }

    #[test]
    fn ethernet_padding_is_not_quoted() {
        let mut f = udp_v4(V4_A, V4_B, b"x");
        f.resize(60, 0xee);
        let r = answer(&f).unwrap();
        assert_eq!(r.len(), 14 + 20 + 8 + 20 + 8 + 1);
        check_unreachable(&f);
    }

    #[test]
    fn vlan_tagged_frame_gets_untagged_answer() {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv4(V4_A, V4_B, 64)
            .udp(1, 2)
            .write(&mut v, b"abc")
            .unwrap();
        assert_eq!(parsed(&v).l3_off, 18);
        let r = answer(&v).unwrap();
        assert_eq!(r[12..14], [0x08, 0x00]);
        check_unreachable(&v);
    }

    #[test]
    fn icmp_echo_gets_admin_prohibited() {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .icmpv4_echo_request(77, 1)
            .write(&mut v, b"ping")
            .unwrap();
        let r = answer(&v).unwrap();
        verify(&v, &r);
        let inner = parsed(&r).icmp.unwrap().inner.unwrap();
        assert_eq!((inner.proto, inner.icmp_id), (ip_proto::ICMP, 77));
    }

    #[test]
    fn no_answer_to_rst() {
        assert_eq!(answer(&tcp_v4(|b| b.rst(), &[])), None);
        assert_eq!(answer(&tcp_v6(|b| b.rst().ack(5), &[])), None);
    }

    #[test]
    fn no_answer_to_icmp_errors_redirects_and_nd() {
        // Our own answer is an error: answering it must yield nothing.
        let r4 = answer(&udp_v4(V4_A, V4_B, b"q")).unwrap();
        assert_eq!(answer(&r4), None);
        let r6 = answer(&udp_v6(V6_A, V6_B, b"q")).unwrap();
        assert_eq!(answer(&r6), None);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .icmpv4_raw(ICMP_REDIRECT, 1, [10, 0, 0, 9])
            .write(&mut v, &[])
            .unwrap();
        assert_eq!(answer(&v), None);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 255)
            .icmpv6_raw(135, 0, [0; 4])
            .write(&mut v, &V6_B)
            .unwrap();
        assert!(parsed(&v).icmp.unwrap().is_nd);
        assert_eq!(answer(&v), None);
    }

    #[test]
    fn no_answer_to_group_macs() {
        let mut f = udp_v4(V4_A, V4_B, b"q");
        f[0..6].copy_from_slice(&[0xff; 6]);
        assert_eq!(answer(&f), None, "broadcast destination MAC");
        let mut f = udp_v4(V4_A, V4_B, b"q");
        f[0..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]);
        assert_eq!(answer(&f), None, "multicast destination MAC");
        let mut f = udp_v4(V4_A, V4_B, b"q");
        f[6] |= 1;
        assert_eq!(answer(&f), None, "group source MAC");
    }

    #[test]
    fn no_answer_to_group_ip() {
        assert_eq!(answer(&udp_v4(V4_A, [224, 0, 0, 251], b"q")), None);
        assert_eq!(answer(&udp_v4(V4_A, [239, 1, 2, 3], b"q")), None);
        assert_eq!(answer(&udp_v4(V4_A, [255; 4], b"q")), None);
        assert_eq!(
            answer(&udp_v4([0; 4], [255; 4], b"q")),
            None,
            "DHCP discover"
        );
        assert_eq!(answer(&udp_v4([0; 4], V4_B, b"q")), None);
        assert_eq!(answer(&udp_v4([224, 0, 0, 1], V4_B, b"q")), None);
        let mut ff02 = [0u8; 16];
        ff02[0] = 0xff;
        ff02[1] = 0x02;
        ff02[15] = 0xfb;
        assert_eq!(answer(&udp_v6(V6_A, ff02, b"q")), None);
        assert_eq!(answer(&udp_v6([0; 16], V6_B, b"q")), None);
        assert_eq!(answer(&udp_v6(ff02, V6_B, b"q")), None);
    }

    #[test]
    fn no_answer_to_later_fragment() {
        let mut h = Ipv4Header::new(16, 64, IpNumber::UDP, V4_A, V4_B).unwrap();
        h.fragment_offset = etherparse::IpFragOffset::try_new(100).unwrap();
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
            .write(&mut v, IpNumber::UDP, &[0; 16])
            .unwrap();
        assert_eq!(parsed(&v).frag, Frag::Later);
        assert_eq!(answer(&v), None);

        let ext = etherparse::Ipv6Extensions {
            fragment: Some(Ipv6FragmentHeader::new(
                IpNumber::UDP,
                etherparse::IpFragOffset::try_new(100).unwrap(),
                true,
                7,
            )),
            ..Default::default()
        };
        let h6 = etherparse::Ipv6Header {
            source: V6_A,
            destination: V6_B,
            hop_limit: 64,
            ..Default::default()
        };
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(etherparse::IpHeaders::Ipv6(h6, ext))
            .write(&mut v, IpNumber::UDP, &[0; 16])
            .unwrap();
        assert_eq!(parsed(&v).frag, Frag::Later);
        assert_eq!(answer(&v), None);
    }

    #[test]
    fn no_answer_to_arp() {
        let mut f = vec![0u8; 42];
        f[0..6].copy_from_slice(&MAC_B);
        f[6..12].copy_from_slice(&MAC_A);
        f[12..14].copy_from_slice(&crate::parse::ETHERTYPE_ARP.to_be_bytes());
        f[14..16].copy_from_slice(&[0, 1]);
        assert_eq!(parsed(&f).l3, L3::NonIp);
        assert_eq!(answer(&f), None);
    }

    #[test]
    fn inconsistent_packet_does_not_panic() {
        let f = udp_v6(V6_A, V6_B, b"q");
        let mut p = parsed(&f);
        let mut out = [0u8; MAX_REPLY];
        for (l3_off, l4_off, l4_len) in [
            (0, 0, 0),
            (200, 10, 0),
            (u16::MAX, u16::MAX, u16::MAX),
            (14, 54, u16::MAX),
        ] {
            p.l3_off = l3_off;
            p.l4_off = l4_off;
            p.l4_len = l4_len;
            let _ = reject(&f, &p, &mut out);
            let _ = reject(&f[..10], &p, &mut out);
        }
        p.l3 = L3::Ipv4;
        assert_eq!(reject(&f, &p, &mut out), None, "IPv4 with IPv6 addresses");
    }

    // ---------------------------------------------------------------------------------------
    // Random frames.
    // ---------------------------------------------------------------------------------------

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn one_in(&mut self, n: usize) -> bool {
            self.below(n) == 0
        }
        fn u8(&mut self) -> u8 {
            self.next() as u8
        }
        fn u16(&mut self) -> u16 {
            self.next() as u16
        }
        fn u32(&mut self) -> u32 {
            self.next() as u32
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut b = [0u8; N];
            b.iter_mut().for_each(|x| *x = self.u8());
            b
        }
    }

    /// A random frame: mostly well-formed IPv4/IPv6 with a random transport, sometimes tagged,
    /// sometimes with group addresses, sometimes with a few bytes flipped afterwards.
    fn gen_frame(rng: &mut Rng) -> Vec<u8> {
        let mac = |rng: &mut Rng| {
            let mut m: [u8; 6] = rng.bytes();
            if !rng.one_in(8) {
                m[0] &= !1;
            }
            m
        };
        let b = PacketBuilder::ethernet2(mac(rng), mac(rng));
        let v6 = rng.one_in(2);
        let payload: Vec<u8> = (0..rng.below(400)).map(|_| rng.u8()).collect();
        let mut v = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {{
                let ip = $ip;
                match rng.below(6) {
                    0 | 1 => {
                        let mut t = ip.tcp(rng.u16(), rng.u16(), rng.u32(), rng.u16());
                        let flags = rng.u8();
                        if flags & 1 != 0 {
                            t = t.fin();
                        }
                        if flags & 2 != 0 {
                            t = t.syn();
                        }
                        if flags & 4 != 0 && rng.one_in(2) {
                            t = t.rst();
                        }
                        if flags & 8 != 0 {
                            t = t.psh();
                        }
                        if flags & 16 != 0 {
                            t = t.ack(rng.u32());
                        }
                        t.write(&mut v, &payload).unwrap();
                    }
                    2 | 3 => ip
                        .udp(rng.u16(), rng.u16())
                        .write(&mut v, &payload)
                        .unwrap(),
                    4 => {
                        if v6 {
                            ip.icmpv6_raw(rng.u8(), rng.u8(), rng.bytes())
                                .write(&mut v, &payload)
                                .unwrap()
                        } else {
                            ip.icmpv4_raw(rng.u8(), rng.u8(), rng.bytes())
                                .write(&mut v, &payload)
                                .unwrap()
                        }
                    }
                    _ => {
                        // etherparse's builder cannot write an IPv6 extension-header number as
                        // the last header (it expects the header itself).
                        let n = IpNumber(rng.u8());
                        let n = if v6 && n.is_ipv6_ext_header_value() {
                            IpNumber(99)
                        } else {
                            n
                        };
                        ip.write(&mut v, n, &payload).unwrap()
                    }
                }
            }};
        }
        let tagged = rng.one_in(4);
        if v6 {
            let addr = |rng: &mut Rng| {
                let mut a: [u8; 16] = rng.bytes();
                if !rng.one_in(8) {
                    a[0] = 0x20;
                }
                a
            };
            let (s, d) = (addr(rng), addr(rng));
            if tagged {
                finish!(b
                    .single_vlan(etherparse::VlanId::try_new(5).unwrap())
                    .ipv6(s, d, rng.u8()))
            } else {
                finish!(b.ipv6(s, d, rng.u8()))
            }
        } else {
            let addr = |rng: &mut Rng| {
                let mut a: [u8; 4] = rng.bytes();
                if !rng.one_in(8) {
                    a[0] = 10;
                }
                a
            };
            let (s, d) = (addr(rng), addr(rng));
            if tagged {
                finish!(b
                    .single_vlan(etherparse::VlanId::try_new(5).unwrap())
                    .ipv4(s, d, rng.u8()))
            } else {
                finish!(b.ipv4(s, d, rng.u8()))
            }
        }
        // Flip a few bytes past the MACs: fragment fields, flags, lengths, quotes...
        if rng.one_in(3) {
            for _ in 0..1 + rng.below(4) {
                let i = 12 + rng.below(v.len().min(HEADROOM) - 12);
                v[i] = rng.u8();
            }
        }
        v
    }

    #[test]
    fn random_frames_never_panic_and_answers_parse() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut answered, mut quoted) = (0, 0, 0);
        let mut out = [0u8; MAX_REPLY];
        for _ in 0..20_000 {
            let f = gen_frame(&mut rng);
            let hdr = &f[..f.len().min(HEADROOM)];
            let Ok(p) = parse(hdr, f.len()) else { continue };
            accepted += 1;
            let Some(n) = reject(hdr, &p, &mut out) else {
                continue;
            };
            answered += 1;
            assert!(n <= MAX_REPLY);
            let r = &out[..n];
            let q = parse(&r[..n.min(HEADROOM)], n)
                .unwrap_or_else(|e| panic!("answer {r:02x?} to {f:02x?} does not parse: {e}"));
            assert_eq!((q.src, q.dst), (p.dst, p.src));
            match p.tcp {
                Some(_) => assert_eq!(q.tcp.expect("RST").flags & Tcp::RST, Tcp::RST),
                None => {
                    let i = q.icmp.expect("ICMP error");
                    assert!(i.is_error);
                    // The quote identifies the rejected flow, so conntrack can relate the error.
                    // Behind IPv6 extension headers the quoted transport header may lie past the
                    // answer's own headroom; then the quote is unreadable, never wrong.
                    let plain = p.l3 == L3::Ipv4 || p.l4_off - p.l3_off == 40;
                    if plain || i.inner.is_some() {
                        let inner = i.inner.expect("quote parses");
                        assert_eq!(
                            (inner.src, inner.dst, inner.proto, inner.sport, inner.dport),
                            (p.src, p.dst, p.proto, p.sport, p.dport)
                        );
                        quoted += 1;
                    }
                    // Answering our answer would be an error storm.
                    assert_eq!(
                        reject(&r[..n.min(HEADROOM)], &q, &mut [0u8; MAX_REPLY]),
                        None
                    );
                }
            }
            // Flipped bytes may have broken the rejected frame's own checksums, never ours.
            verify(&f, r);
        }
        assert!(accepted > 10_000, "only {accepted} frames parsed");
        assert!(answered > 10_000, "only {answered} answers");
        assert!(quoted > 5_000, "only {quoted} readable quotes");
    }
}
