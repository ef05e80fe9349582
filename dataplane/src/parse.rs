//! One-pass L3/L4 parsing for the firewall.
//!
//! The worker copies the first bytes of a frame (at most [`HEADROOM`], starting at the Ethernet
//! header) into a stack buffer and calls [`parse`], which walks Ethernet → (up to two VLAN tags)
//! → IPv4/IPv6 (+ IPv6 extension headers) → TCP/UDP/UDP-Lite/SCTP/ICMP/ICMPv6 once and returns a
//! `Copy` summary, [`Packet`] (124 bytes), with every field in host byte order. Conntrack and the
//! ruleset read only that summary.
//!
//! # Contract
//!
//! - [`parse`] never panics, never allocates and never reads past `hdr`.
//! - Unknown EtherTypes and unknown IP protocols are data, not errors (STYLE rule 4): a frame that
//!   is neither IPv4 nor IPv6 is [`L3::NonIp`]; an IP protocol without ports is reported in
//!   [`Packet::proto`] with `sport == dport == 0`.
//! - A frame whose IP or transport header is malformed is a [`ParseError`], which the caller turns
//!   into a counted drop ([`ParseError::name`] is the counter name).
//! - Lengths come from the IP header, not from the frame, so Ethernet padding is ignored.
//!
//! # Design notes
//!
//! Every header is read through one bounds check that yields a fixed-size array reference
//! (`first_chunk`), after which the field reads are fixed offsets the compiler does not re-check.
//! This is the "hand-written, one length check per header" shape measured at 2–3 ns per 5-tuple in
//! `shared/reference/rust-ecosystem.md` §5. smoltcp's views (a bounds check per field) and
//! etherparse's `SlicedPacket` (about 10× the work we need) were rejected for the hot path;
//! etherparse is the test oracle instead.
//!
//! Only the first [`HEADROOM`] bytes are available. IPv4 headers always fit (Ethernet, two tags,
//! a 60-byte IPv4 header and a 60-byte TCP header end at byte 142), so only a long IPv6 extension
//! chain can push a header we must read past the headroom; that is
//! [`ParseError::ExtHeaderBeyondHeadroom`], and TCP options past the headroom are ignored.
//!
//! Deliberate choices the firewall should know about:
//!
//! - VLAN (0x8100) and QinQ (0x88a8) tags are skipped, at most two; `l3_off` is then 18 or 22 and
//!   `ethertype` is the inner one. A third tag makes the frame `NonIp` with that TPID as
//!   `ethertype`.
//! - IPv4 AH (51) is not walked (it is reported as the protocol); in IPv6 it is.
//! - An IPv6 fragment header with offset 0 and M clear (an RFC 6946 "atomic fragment") is
//!   [`Frag::None`].
//! - For a first fragment, `l4_len` and `Tcp::data_len` describe this fragment only. A first
//!   fragment too short to hold its whole transport header (RFC 1858 tiny fragments) is
//!   [`ParseError::Truncated`].
//! - TCP `wscale` is the raw option value; clamping it to 14 is conntrack's job.
//! - Only 0x8100 and 0x88a8 are tags (as in `wire::EthernetFrame::is_tagged`); a legacy 0x9100
//!   TPID makes the frame `NonIp`.
//! - ICMP redirects (v4 type 5, v6 137) are not errors here, so their quote is not parsed.
//! - Checksums are not verified.
//!
//! # Cost
//!
//! `benches/benches/parse.rs` on a shared 2.45 GHz EPYC VM (medians over three runs): 20-25 ns
//! for IPv4/TCP, 17-20 ns for IPv4/UDP, 19-26 ns for IPv6/TCP, about 40 ns for a SYN with options
//! or an ICMP error with its quote, against 3 ns for the bare 5-tuple read of §5 on the same
//! machine. Callgrind counts about 150 instructions per IPv4/TCP call at an IPC near
//! 3.5, so the time is work, not stalls: most of it is filling the 124-byte `Packet` (about 30
//! stores) and the IPv4/TCP validity checks the 5-tuple read skips. Shrinking `Packet` (packed
//! addresses instead of `IpAddr`, no inline ICMP quote) is the lever if this ever matters; the
//! untagged-IP fast path, out-of-line VLAN and ICMP code and by-value `Packet` building already
//! took it from about 205 instructions to about 150.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::counters::DropReason;
use crate::wire::{ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETH_HEADER_LEN};

/// How many bytes of each frame the worker copies for parsing.
pub const HEADROOM: usize = 256;

pub use crate::wire::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};

/// The longest IPv6 extension-header chain [`parse`] walks before giving up.
pub const MAX_EXT_HEADERS: usize = 8;

/// Most VLAN tags skipped in front of the L3 header.
const MAX_VLAN_TAGS: usize = 2;

/// IP protocol numbers (defined in `conntrack::ip_proto`, shared by every crate).
pub use conntrack::ip_proto;

/// The network layer of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L3 {
    /// Not IPv4 or IPv6 (ARP, LLDP, unknown EtherTypes...). Not an error.
    NonIp,
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// Where a packet sits in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frag {
    /// Not a fragment.
    None,
    /// The first fragment (offset 0, more fragments follow); it carries the transport header.
    First,
    /// A later fragment (offset > 0); no transport fields are parsed.
    Later,
}

/// TCP header fields conntrack needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tcp {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// The flag byte (`Tcp::FIN` ... `Tcp::CWR`).
    pub flags: u8,
    /// Window, unscaled.
    pub window: u16,
    /// Payload bytes: `l4_len` minus the data offset.
    pub data_len: u32,
    /// Window-scale option (raw shift count). Options are read only on SYN segments.
    pub wscale: Option<u8>,
    /// SACK-permitted option present (SYN segments only).
    pub sack_permitted: bool,
    /// Maximum segment size option (SYN segments only).
    pub mss: Option<u16>,
}

impl Tcp {
    /// FIN flag.
    pub const FIN: u8 = 0x01;
    /// SYN flag.
    pub const SYN: u8 = 0x02;
    /// RST flag.
    pub const RST: u8 = 0x04;
    /// PSH flag.
    pub const PSH: u8 = 0x08;
    /// ACK flag.
    pub const ACK: u8 = 0x10;
    /// URG flag.
    pub const URG: u8 = 0x20;
    /// ECE flag.
    pub const ECE: u8 = 0x40;
    /// CWR flag.
    pub const CWR: u8 = 0x80;
}

/// ICMP or ICMPv6 header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Icmp {
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// Identifier of an echo request/reply, 0 for other types.
    pub id: u16,
    /// An error that quotes the packet that caused it (v4: 3, 4, 11, 12; v6: 1, 2, 3, 4).
    pub is_error: bool,
    /// ICMPv6 link control: neighbour discovery (133..=137: RS, RA, NS, NA, redirect) and
    /// multicast listener discovery (130..=132, 143: MLD queries, reports, done; every IPv6
    /// host sends MLDv2 reports for its solicited-node groups). Judged by a vNIC's `nd` rule.
    pub is_nd: bool,
    /// For errors, the quoted packet; `None` if the quote is too short or malformed.
    pub inner: Option<Inner>,
}

/// The packet quoted by an ICMP error (as the erroring host saw it, so `src` is our side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Inner {
    /// Quoted source address.
    pub src: IpAddr,
    /// Quoted destination address.
    pub dst: IpAddr,
    /// Quoted transport protocol (after the quoted IPv6 extension headers).
    pub proto: u8,
    /// Quoted source port (TCP/UDP/UDP-Lite/SCTP), else 0.
    pub sport: u16,
    /// Quoted destination port, else 0.
    pub dport: u16,
    /// Identifier of a quoted ICMP echo request/reply, else 0.
    pub icmp_id: u16,
    /// Type of a quoted ICMP/ICMPv6 message, else 0.
    pub icmp_ty: u8,
    /// Sequence number of a quoted TCP segment as it is on the wire (big-endian), else 0;
    /// `Inner::tcp_seq` reads it. Bytes, not a `u32`, so that `Packet` stays within 128
    /// bytes (a 4-byte alignment would pad it past that).
    pub seq: [u8; 4],
}

impl Inner {
    /// The quoted TCP sequence number (checked against the connection's window, so that a
    /// forged error cannot pass by naming a connection alone).
    pub fn tcp_seq(&self) -> u32 {
        u32::from_be_bytes(self.seq)
    }
}

/// The one-pass summary of a frame, in host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// EtherType after any VLAN tags.
    pub ethertype: u16,
    /// Network layer.
    pub l3: L3,
    /// Source address (`0.0.0.0` for `NonIp`).
    pub src: IpAddr,
    /// Destination address (`0.0.0.0` for `NonIp`).
    pub dst: IpAddr,
    /// Transport protocol, after the IPv6 extension headers (0 for `NonIp`).
    pub proto: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl_hop: u8,
    /// Offset of the L3 header in the frame: 14, or 18/22 behind VLAN tags.
    pub l3_off: u16,
    /// Offset of the transport header (`l3_off` for `NonIp`).
    pub l4_off: u16,
    /// Transport bytes per the IP length field (IP payload minus extension headers).
    pub l4_len: u16,
    /// Fragment position.
    pub frag: Frag,
    /// Source port (TCP/UDP/UDP-Lite/SCTP), else 0.
    pub sport: u16,
    /// Destination port (TCP/UDP/UDP-Lite/SCTP), else 0.
    pub dport: u16,
    /// TCP fields, for TCP that is not a later fragment.
    pub tcp: Option<Tcp>,
    /// ICMP/ICMPv6 fields, for ICMP that is not a later fragment.
    pub icmp: Option<Icmp>,
}

// The summary is copied per packet; notice if it grows.
const _: () = assert!(std::mem::size_of::<Packet>() <= 128);

/// Why a frame could not be parsed. Each variant is a drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::VariantArray)]
#[repr(u8)]
pub enum ParseError {
    /// A header does not fit in the frame or in its IP packet.
    Truncated,
    /// The IP version field disagrees with the EtherType.
    BadIpVersion,
    /// The IPv4 header length field is below 5 words.
    BadIhl,
    /// The IP length field is larger than the frame or smaller than the header.
    BadIpLength,
    /// A transport header is malformed (TCP data offset below 5 words or beyond the segment).
    BadL4Header,
    /// The IPv6 extension-header chain is longer than the parser walks.
    TooManyExtHeaders,
    /// The IPv6 extension-header chain runs past the parsing headroom.
    ExtHeaderBeyondHeadroom,
}

impl ParseError {
    /// Every variant, in discriminant order (for counter tables).
    pub const ALL: &'static [ParseError] = <ParseError as strum::VariantArray>::VARIANTS;

    /// A snake_case name: its drop reason's name without the `parse_` prefix.
    pub fn name(&self) -> &'static str {
        let n = DropReason::from(*self).name();
        n.strip_prefix("parse_").unwrap_or(n)
    }

    /// A one-line description (its drop reason's: one definition, in `counters`).
    pub fn description(&self) -> &'static str {
        DropReason::from(*self).description()
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for ParseError {}

const UNSPECIFIED: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Parses one frame.
///
/// `hdr` holds the first `min(frame_len, HEADROOM)` bytes of the frame, starting at the Ethernet
/// header; `frame_len` is the whole frame's length without FCS. Bytes of `hdr` past `frame_len`
/// or past `HEADROOM` are ignored. If `hdr` is shorter than promised, the frame is taken to end
/// where `hdr` does.
#[inline]
pub fn parse(hdr: &[u8], frame_len: usize) -> Result<Packet, ParseError> {
    let mut out = Err(ParseError::Truncated);
    parse_into(hdr, frame_len, &mut out);
    out
}

/// [`parse`], writing the result into `out` (the worker's burst array). Each branch stores its
/// `Packet` there directly: returned by value, the result was built on the stack and then
/// copied, and the copy's 16-byte loads of fields just written by narrower stores stalled on
/// store forwarding (5 % of the worker's samples).
// Always inlined: called for every frame from one stage, and LLVM's heuristics stopped inlining
// it once the stage loops grew (about 10 instructions a frame each; scripts/framecost).
#[inline(always)]
pub fn parse_into(hdr: &[u8], frame_len: usize, out: &mut Result<Packet, ParseError>) {
    let have = hdr.len().min(frame_len).min(HEADROOM);
    let frame_len = if have < frame_len.min(HEADROOM) {
        have
    } else {
        frame_len
    };
    // From here on `hdr.len() == min(frame_len, HEADROOM)`, which is what lets `take` tell a
    // truncated frame from a header past the headroom.
    let hdr = &hdr[..have];

    let Some(eth) = hdr.first_chunk::<ETH_HEADER_LEN>() else {
        *out = Err(ParseError::Truncated);
        return;
    };
    // Untagged IP first, with a constant L3 offset; tags take the out-of-line path.
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETHERTYPE_IPV4 => *out = ipv4(hdr, frame_len, ETH_HEADER_LEN),
        ETHERTYPE_IPV6 => *out = ipv6(hdr, frame_len, ETH_HEADER_LEN),
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => *out = tagged(hdr, frame_len),
        ethertype => *out = Ok(non_ip(ethertype, ETH_HEADER_LEN)),
    }
}

/// A frame with VLAN tags: skips up to `MAX_VLAN_TAGS` of them.
#[cold]
#[inline(never)]
fn tagged(hdr: &[u8], frame_len: usize) -> Result<Packet, ParseError> {
    let mut ethertype = ETHERTYPE_VLAN;
    let mut l3_off = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        let tag: &[u8; 4] = take(hdr, l3_off, frame_len)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3_off += 4;
    }
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(hdr, frame_len, l3_off),
        ETHERTYPE_IPV6 => ipv6(hdr, frame_len, l3_off),
        _ => Ok(non_ip(ethertype, l3_off)),
    }
}

#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the L3 offset is at most 22 (two VLAN tags)"
)]
fn non_ip(ethertype: u16, l3_off: usize) -> Packet {
    Packet {
        ethertype,
        l3: L3::NonIp,
        src: UNSPECIFIED,
        dst: UNSPECIFIED,
        proto: 0,
        ttl_hop: 0,
        // Cannot truncate: at most 14 + 2 * 4.
        l3_off: l3_off as u16,
        l4_off: l3_off as u16,
        l4_len: 0,
        frag: Frag::None,
        sport: 0,
        dport: 0,
        tcp: None,
        icmp: None,
    }
}

/// The `N` bytes at `at`, which must end within `end` (the end of the enclosing frame or packet,
/// `<= frame_len`). Relies on `hdr.len() == min(frame_len, HEADROOM)`: a header inside `end` but
/// not inside `hdr` lies past the headroom.
#[inline(always)]
fn take<const N: usize>(hdr: &[u8], at: usize, end: usize) -> Result<&[u8; N], ParseError> {
    if at + N > end {
        return Err(ParseError::Truncated);
    }
    hdr.get(at..)
        .and_then(|s| s.first_chunk::<N>())
        .ok_or(ParseError::ExtHeaderBeyondHeadroom)
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "offsets within the 256-byte headroom; the L4 length is below the 16-bit IP total length"
)]
fn ipv4(hdr: &[u8], frame_len: usize, l3_off: usize) -> Result<Packet, ParseError> {
    let h: &[u8; 20] = take(hdr, l3_off, frame_len)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::BadIpVersion);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(ParseError::BadIhl);
    }
    let total = usize::from(be16([h[2], h[3]]));
    if total < ihl || l3_off + total > frame_len {
        return Err(ParseError::BadIpLength);
    }
    let frag_field = be16([h[6], h[7]]);
    let frag = if frag_field & 0x1fff != 0 {
        Frag::Later
    } else if frag_field & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    let proto = h[9];
    let l4_off = l3_off + ihl;
    let l4_len = total - ihl;
    let p = Packet {
        ethertype: ETHERTYPE_IPV4,
        l3: L3::Ipv4,
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        proto,
        ttl_hop: h[8],
        // Cannot truncate: l3_off <= 22 and l4_off <= 22 + 60; l4_len < total <= u16::MAX.
        l3_off: l3_off as u16,
        l4_off: l4_off as u16,
        l4_len: l4_len as u16,
        frag,
        sport: 0,
        dport: 0,
        tcp: None,
        icmp: None,
    };
    if frag == Frag::Later {
        return Ok(p);
    }
    l4(p, hdr, l4_off, l4_off + l4_len, false)
}

#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "offsets within the 256-byte headroom; the L4 length is below the 16-bit payload length"
)]
fn ipv6(hdr: &[u8], frame_len: usize, l3_off: usize) -> Result<Packet, ParseError> {
    let h: &[u8; 40] = take(hdr, l3_off, frame_len)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::BadIpVersion);
    }
    let payload = usize::from(be16([h[4], h[5]]));
    let start = l3_off + 40;
    let end = start + payload;
    if end > frame_len {
        return Err(ParseError::BadIpLength);
    }
    let (l4_off, proto, frag) = walk_v6_exts(hdr, start, end, h[6])?;
    let p = Packet {
        ethertype: ETHERTYPE_IPV6,
        l3: L3::Ipv6,
        src: IpAddr::V6(Ipv6Addr::from(v6_addr(h, 8))),
        dst: IpAddr::V6(Ipv6Addr::from(v6_addr(h, 24))),
        proto,
        ttl_hop: h[7],
        // Cannot truncate: l3_off <= 22; l4_off <= 62 + MAX_EXT_HEADERS * 2048 (the longest
        // extension header); l4_len <= payload <= u16::MAX.
        l3_off: l3_off as u16,
        l4_off: l4_off as u16,
        l4_len: (end - l4_off) as u16,
        frag,
        sport: 0,
        dport: 0,
        tcp: None,
        icmp: None,
    };
    if frag == Frag::Later {
        return Ok(p);
    }
    l4(p, hdr, l4_off, end, true)
}

#[inline(always)]
fn v6_addr(h: &[u8; 40], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&h[at..at + 16]);
    a
}

/// Walks the IPv6 extension headers starting at `pos` with next header `nh`, inside a packet that
/// ends at `end`. Returns the transport offset, the transport protocol and the fragment position.
/// A later fragment stops the walk at its fragment header (what follows is not a header).
#[inline(always)]
fn walk_v6_exts(
    buf: &[u8],
    mut pos: usize,
    end: usize,
    mut nh: u8,
) -> Result<(usize, u8, Frag), ParseError> {
    let mut frag = Frag::None;
    let mut n = 0;
    loop {
        let len = match nh {
            ip_proto::HOPOPT | ip_proto::IPV6_ROUTE | ip_proto::IPV6_OPTS => {
                let e: &[u8; 8] = take(buf, pos, end)?;
                nh = e[0];
                (usize::from(e[1]) + 1) * 8
            }
            ip_proto::AH => {
                let e: &[u8; 8] = take(buf, pos, end)?;
                nh = e[0];
                (usize::from(e[1]) + 2) * 4
            }
            ip_proto::IPV6_FRAG => {
                let e: &[u8; 8] = take(buf, pos, end)?;
                nh = e[0];
                let off_m = be16([e[2], e[3]]);
                if off_m & 0xfff8 != 0 {
                    frag = Frag::Later;
                } else if off_m & 1 != 0 {
                    frag = Frag::First;
                }
                8
            }
            _ => break,
        };
        n += 1;
        if n > MAX_EXT_HEADERS {
            return Err(ParseError::TooManyExtHeaders);
        }
        pos += len;
        if pos > end {
            return Err(ParseError::Truncated);
        }
        if frag == Frag::Later {
            break;
        }
    }
    Ok((pos, nh, frag))
}

/// Adds the transport header at `off` of a packet ending at `end` to `p`.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the TCP payload length is below the 16-bit IP length"
)]
fn l4(p: Packet, hdr: &[u8], off: usize, end: usize, v6: bool) -> Result<Packet, ParseError> {
    match p.proto {
        ip_proto::TCP => {
            let t: &[u8; 20] = take(hdr, off, end)?;
            let doff = usize::from(t[12] >> 4) * 4;
            let l4_len = end - off;
            if doff < 20 || doff > l4_len {
                return Err(ParseError::BadL4Header);
            }
            let flags = t[13];
            let (mss, wscale, sack_permitted) = if flags & Tcp::SYN != 0 && doff > 20 {
                // Options past the headroom are ignored: the slice stops at `hdr`'s end.
                let opt_end = (off + doff).min(hdr.len());
                hdr.get(off + 20..opt_end)
                    .map_or((None, None, false), tcp_options)
            } else {
                (None, None, false)
            };
            Ok(Packet {
                sport: be16([t[0], t[1]]),
                dport: be16([t[2], t[3]]),
                tcp: Some(Tcp {
                    seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                    ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                    flags,
                    window: be16([t[14], t[15]]),
                    // Cannot truncate: l4_len <= u16::MAX.
                    data_len: (l4_len - doff) as u32,
                    wscale,
                    sack_permitted,
                    mss,
                }),
                ..p
            })
        }
        ip_proto::UDP | ip_proto::UDPLITE => {
            let u: &[u8; 8] = take(hdr, off, end)?;
            Ok(Packet {
                sport: be16([u[0], u[1]]),
                dport: be16([u[2], u[3]]),
                ..p
            })
        }
        ip_proto::SCTP => {
            // The whole 12-byte common header (ports, verification tag, checksum).
            let s: &[u8; 12] = take(hdr, off, end)?;
            Ok(Packet {
                sport: be16([s[0], s[1]]),
                dport: be16([s[2], s[3]]),
                ..p
            })
        }
        ip_proto::ICMP if !v6 => Ok(Packet {
            icmp: Some(icmp(hdr, off, end, false)?),
            ..p
        }),
        ip_proto::ICMPV6 if v6 => Ok(Packet {
            icmp: Some(icmp(hdr, off, end, true)?),
            ..p
        }),
        _ => Ok(p),
    }
}

/// The ICMP or ICMPv6 header at `off` of a packet ending at `end`, and its quote.
#[inline(never)]
fn icmp(hdr: &[u8], off: usize, end: usize, v6: bool) -> Result<Icmp, ParseError> {
    let c: &[u8; 8] = take(hdr, off, end)?;
    let (ty, code) = (c[0], c[1]);
    let (is_error, is_echo) = if v6 {
        (matches!(ty, 1..=4), matches!(ty, 128 | 129))
    } else {
        (matches!(ty, 3 | 4 | 11 | 12), matches!(ty, 0 | 8))
    };
    let inner = if !is_error {
        None
    } else if v6 {
        quote(hdr, off + 8, end).and_then(inner_v6)
    } else {
        quote(hdr, off + 8, end).and_then(inner_v4)
    };
    Ok(Icmp {
        ty,
        code,
        id: if is_echo { be16([c[4], c[5]]) } else { 0 },
        is_error,
        is_nd: v6 && matches!(ty, 130..=137 | 143),
        inner,
    })
}

/// The bytes of an ICMP error's quote that we have: from `start` to the end of the packet or of
/// the headroom, whichever comes first.
#[inline(always)]
fn quote(hdr: &[u8], start: usize, end: usize) -> Option<&[u8]> {
    hdr.get(start..end.min(hdr.len()))
}

/// Reads the MSS, window-scale and SACK-permitted TCP options, stopping quietly at End-of-List
/// or at a malformed or cut-off option. (Returned by value, not written through `&mut Tcp`, so
/// the caller's `Tcp` can stay in registers.)
#[inline(never)]
fn tcp_options(mut o: &[u8]) -> (Option<u16>, Option<u8>, bool) {
    let (mut mss, mut wscale, mut sack_permitted) = (None, None, false);
    while let Some((&kind, rest)) = o.split_first() {
        match kind {
            0 => break,
            1 => {
                o = rest;
                continue;
            }
            _ => {}
        }
        let Some(&len) = rest.first() else { break };
        let len = usize::from(len);
        if len < 2 || len > o.len() {
            break;
        }
        match (kind, &o[2..len]) {
            (2, &[a, b]) => mss = Some(be16([a, b])),
            (3, &[s]) => wscale = Some(s),
            (4, &[]) => sack_permitted = true,
            _ => {}
        }
        o = &o[len..];
    }
    (mss, wscale, sack_permitted)
}

/// The quoted IPv4 packet of an ICMP error.
fn inner_v4(q: &[u8]) -> Option<Inner> {
    let h: &[u8; 20] = q.first_chunk()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let proto = h[9];
    let later = be16([h[6], h[7]]) & 0x1fff != 0;
    let l4 = if later {
        L4Quote::default()
    } else {
        inner_l4(proto, q.get(ihl..)?, false)?
    };
    Some(Inner {
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        proto,
        sport: l4.sport,
        dport: l4.dport,
        icmp_id: l4.icmp_id,
        icmp_ty: l4.icmp_ty,
        seq: l4.seq,
    })
}

/// The quoted IPv6 packet of an ICMPv6 error; its extension headers are walked within the quote.
fn inner_v6(q: &[u8]) -> Option<Inner> {
    let h: &[u8; 40] = q.first_chunk()?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let (off, proto, frag) = walk_v6_exts(q, 40, q.len(), h[6]).ok()?;
    let l4 = if frag == Frag::Later {
        L4Quote::default()
    } else {
        inner_l4(proto, q.get(off..)?, true)?
    };
    Some(Inner {
        src: IpAddr::V6(Ipv6Addr::from(v6_addr(h, 8))),
        dst: IpAddr::V6(Ipv6Addr::from(v6_addr(h, 24))),
        proto,
        sport: l4.sport,
        dport: l4.dport,
        icmp_id: l4.icmp_id,
        icmp_ty: l4.icmp_ty,
        seq: l4.seq,
    })
}

/// What the first 8 quoted transport bytes tell.
#[derive(Default)]
struct L4Quote {
    sport: u16,
    dport: u16,
    icmp_id: u16,
    icmp_ty: u8,
    seq: [u8; 4],
}

/// Ports, TCP sequence number, ICMP type and echo identifier from the first 8 quoted
/// transport bytes; `None` if a protocol we read has fewer than 8 bytes quoted.
fn inner_l4(proto: u8, t: &[u8], v6: bool) -> Option<L4Quote> {
    let ports = |b: &[u8; 8]| (be16([b[0], b[1]]), be16([b[2], b[3]]));
    match proto {
        ip_proto::TCP => {
            let b: &[u8; 8] = t.first_chunk()?;
            let (sport, dport) = ports(b);
            Some(L4Quote {
                sport,
                dport,
                seq: [b[4], b[5], b[6], b[7]],
                ..L4Quote::default()
            })
        }
        ip_proto::UDP | ip_proto::UDPLITE | ip_proto::SCTP => {
            let (sport, dport) = ports(t.first_chunk()?);
            Some(L4Quote {
                sport,
                dport,
                ..L4Quote::default()
            })
        }
        ip_proto::ICMP | ip_proto::ICMPV6 if (proto == ip_proto::ICMPV6) == v6 => {
            let b: &[u8; 8] = t.first_chunk()?;
            let echo = if v6 {
                matches!(b[0], 128 | 129)
            } else {
                matches!(b[0], 0 | 8)
            };
            Some(L4Quote {
                icmp_ty: b[0],
                icmp_id: if echo { be16([b[4], b[5]]) } else { 0 },
                ..L4Quote::default()
            })
        }
        _ => Some(L4Quote::default()),
    }
}

/// One line for people (`bulwarkctl trace`): protocol, addresses, ports, TCP flags, ICMP
/// type. Slow path only.
impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.l3 == L3::NonIp {
            return write!(f, "non-IP, ethertype {:#06x}", self.ethertype);
        }
        let frag = match self.frag {
            Frag::None => "",
            Frag::First => " (first fragment)",
            Frag::Later => " (later fragment)",
        };
        if let Some(t) = &self.tcp {
            let names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
            let flags: Vec<&str> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| t.flags & (1 << i) != 0)
                .map(|(_, n)| *n)
                .collect();
            return write!(
                f,
                "tcp {} -> {} [{}] seq {} ack {} win {} len {}{frag}",
                endpoint(self.src, self.sport),
                endpoint(self.dst, self.dport),
                flags.join(","),
                t.seq,
                t.ack,
                t.window,
                t.data_len
            );
        }
        if let Some(i) = &self.icmp {
            let name = if self.proto == ip_proto::ICMPV6 {
                "icmpv6"
            } else {
                "icmp"
            };
            write!(
                f,
                "{name} {} -> {} type {} code {}",
                self.src, self.dst, i.ty, i.code
            )?;
            if let Some(inner) = &i.inner {
                write!(
                    f,
                    ", quoting proto {} {} -> {}",
                    inner.proto,
                    endpoint(inner.src, inner.sport),
                    endpoint(inner.dst, inner.dport)
                )?;
            } else if !i.is_error {
                write!(f, " id {}", i.id)?;
            }
            return f.write_str(frag);
        }
        match self.proto {
            ip_proto::UDP => write!(
                f,
                "udp {} -> {}{frag}",
                endpoint(self.src, self.sport),
                endpoint(self.dst, self.dport)
            ),
            p => write!(f, "proto {p} {} -> {}{frag}", self.src, self.dst),
        }
    }
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        IpAuthHeader, IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6Extensions,
        Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, NetSlice,
        PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice,
    };

    // ---------------------------------------------------------------------------------------
    // Literal frames. Each has a `construct` twin built with etherparse's PacketBuilder, and
    // `construct_matches_literals` checks they agree byte for byte (checksums included), so
    // the literals are known-good packets rather than hand-typed guesses.
    // ---------------------------------------------------------------------------------------

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const V4_A: [u8; 4] = [10, 0, 0, 1];
    const V4_B: [u8; 4] = [10, 0, 0, 2];
    const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const V6_R: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
    ];

    /// 10.0.0.1:40000 → 10.0.0.2:80 SYN, seq 0x01020304, window 64240, MSS 1460, WS 7, SACK-perm.
    #[rustfmt::skip]
    const TCP_SYN: [u8; 66] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
        // IPv4: IHL 5, total 52, DF, TTL 64, TCP.
        0x45, 0x00, 0x00, 0x34, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x26, 0xc2,
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02,
        // TCP: ports, seq, ack, data offset 8, SYN, window, checksum, urgent.
        0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00,
        0x80, 0x02, 0xfa, 0xf0, 0xbf, 0x87, 0x00, 0x00,
        // MSS 1460, NOP, WS 7, SACK-permitted, NOP, NOP.
        0x02, 0x04, 0x05, 0xb4, 0x01, 0x03, 0x03, 0x07, 0x04, 0x02, 0x01, 0x01,
    ];

    /// 10.0.0.1:5353 → 224.0.0.251:5353 UDP with 4 payload bytes (46 bytes: unpadded).
    #[rustfmt::skip]
    const UDP: [u8; 46] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0xff, 0x11, 0x90, 0xd0,
        0x0a, 0x00, 0x00, 0x01, 0xe0, 0x00, 0x00, 0xfb,
        0x14, 0xe9, 0x14, 0xe9, 0x00, 0x0c, 0xe7, 0x01,
        0x01, 0x02, 0x03, 0x04,
    ];

    /// 10.0.0.1 → 10.0.0.2 echo request, id 0x1234, seq 1, 8 payload bytes.
    #[rustfmt::skip]
    const ICMP_ECHO: [u8; 50] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x24, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0x26, 0xd7,
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02,
        0x08, 0x00, 0x3b, 0x20, 0x12, 0x34, 0x00, 0x01,
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa,
    ];

    /// 10.0.0.2 → 10.0.0.1 port unreachable, quoting UDP 10.0.0.1:33000 → 10.0.0.2:53.
    #[rustfmt::skip]
    const ICMP_UNREACH: [u8; 74] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x3c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0x26, 0xbf,
        0x0a, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x01,
        // ICMP type 3 code 3, checksum, unused.
        0x03, 0x03, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00,
        // Quoted IPv4 header.
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x26, 0xc3,
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02,
        // Quoted UDP header and 4 bytes of its payload.
        0x80, 0xe8, 0x00, 0x35, 0x00, 0x14, 0x04, 0x40,
        0xbb, 0xbb, 0xbb, 0xbb,
    ];

    /// First fragment (MF, offset 0, id 0x4242) of UDP 10.0.0.1:4386 → 10.0.0.2:53.
    #[rustfmt::skip]
    const V4_FRAG_FIRST: [u8; 50] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x24, 0x42, 0x42, 0x20, 0x00, 0x40, 0x11, 0x04, 0x85,
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02,
        0x11, 0x22, 0x00, 0x35, 0x00, 0x10, 0x00, 0x00,
        0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09,
    ];

    /// A later fragment (offset 185 × 8 = 1480, last) of the same datagram: its first bytes
    /// look like a UDP header but are payload.
    #[rustfmt::skip]
    const V4_FRAG_LATER: [u8; 50] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x24, 0x42, 0x42, 0x00, 0xb9, 0x40, 0x11, 0x23, 0xcc,
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02,
        0x11, 0x22, 0x00, 0x35, 0x00, 0x10, 0x00, 0x00,
        0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09,
    ];

    /// [2001:db8::1]:50000 → [2001:db8::2]:443 PSH|ACK, seq 1000, ack 2000, window 501, "hello".
    #[rustfmt::skip]
    const V6_TCP: [u8; 79] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd,
        // IPv6: payload 25, next header TCP, hop limit 64.
        0x60, 0x00, 0x00, 0x00, 0x00, 0x19, 0x06, 0x40,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
        0xc3, 0x50, 0x01, 0xbb, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x07, 0xd0,
        0x50, 0x18, 0x01, 0xf5, 0x3d, 0xc8, 0x00, 0x00,
        0x68, 0x65, 0x6c, 0x6c, 0x6f,
    ];

    /// IPv6 → hop-by-hop (8) → destination options (16) → fragment (first, M=1) → UDP 1234 → 5678.
    #[rustfmt::skip]
    const V6_EXT_CHAIN: [u8; 98] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd,
        // IPv6: payload 44, next header 0 (hop-by-hop).
        0x60, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x40,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
        // Hop-by-hop: next 60, length 0 (8 bytes), PadN.
        0x3c, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00,
        // Destination options: next 44, length 1 (16 bytes), PadN.
        0x2c, 0x01, 0x01, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // Fragment: next 17, offset 0, M=1, id 0xdeadbeef.
        0x11, 0x00, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef,
        0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0c, 0x00, 0x00,
        0x07, 0x07, 0x07, 0x07,
    ];

    /// 2001:db8::fe → 2001:db8::1 packet too big (MTU 1280) quoting the TCP segment
    /// [2001:db8::1]:50000 → [2001:db8::2]:443.
    #[rustfmt::skip]
    const ICMPV6_PTB: [u8; 134] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x86, 0xdd,
        0x60, 0x00, 0x00, 0x00, 0x00, 0x50, 0x3a, 0x40,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfe,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        // ICMPv6 type 2 code 0, checksum, MTU 1280.
        0x02, 0x00, 0x68, 0xfd, 0x00, 0x00, 0x05, 0x00,
        // Quoted IPv6 header (payload 1420, TCP).
        0x60, 0x00, 0x00, 0x00, 0x05, 0x8c, 0x06, 0x40,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
        // Quoted TCP header and 12 payload bytes.
        0xc3, 0x50, 0x01, 0xbb, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x07, 0xd0,
        0x50, 0x10, 0x01, 0xf5, 0x7c, 0x2f, 0x00, 0x00,
        0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
    ];

    /// 2001:db8::1 → ff02::1:ff00:2 neighbour solicitation for 2001:db8::2, with a source
    /// link-layer address option.
    #[rustfmt::skip]
    const ICMPV6_NS: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd,
        0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x02,
        0x87, 0x00, 0x1c, 0x27, 0x00, 0x00, 0x00, 0x00,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
        0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
    ];

    /// Who has 10.0.0.2? Tell 10.0.0.1 (padded to the 60-byte minimum).
    #[rustfmt::skip]
    const ARP: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn construct_tcp_syn() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .tcp(40000, 80, 0x0102_0304, 64240)
            .syn()
            .options(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(7),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
            ])
            .unwrap()
            .write(&mut v, &[])
            .unwrap();
        v
    }

    fn construct_udp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, [224, 0, 0, 251], 255)
            .udp(5353, 5353)
            .write(&mut v, &[1, 2, 3, 4])
            .unwrap();
        v
    }

    fn construct_icmp_echo() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .icmpv4_echo_request(0x1234, 1)
            .write(&mut v, &[0xaa; 8])
            .unwrap();
        v
    }

    fn construct_icmp_unreach() -> Vec<u8> {
        let mut inner = Vec::new();
        PacketBuilder::ipv4(V4_A, V4_B, 64)
            .udp(33000, 53)
            .write(&mut inner, &[0xbb; 12])
            .unwrap();
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv4(V4_B, V4_A, 64)
            .icmpv4_raw(3, 3, [0; 4])
            .write(&mut v, &inner[..32])
            .unwrap();
        v
    }

    fn construct_v4_frag(more: bool, offset: u16) -> Vec<u8> {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, V4_A, V4_B).unwrap();
        ip.dont_fragment = false;
        ip.more_fragments = more;
        ip.identification = 0x4242;
        ip.fragment_offset = IpFragOffset::try_new(offset).unwrap();
        let payload = [0x11, 0x22, 0x00, 0x35, 0, 16, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9];
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .write(&mut v, IpNumber::UDP, &payload)
            .unwrap();
        v
    }

    fn construct_v6_tcp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 64)
            .tcp(50000, 443, 1000, 501)
            .ack(2000)
            .psh()
            .write(&mut v, b"hello")
            .unwrap();
        v
    }

    fn construct_v6_ext_chain() -> Vec<u8> {
        let ip = Ipv6Header {
            hop_limit: 64,
            source: V6_A,
            destination: V6_B,
            ..Default::default()
        };
        let pad14 = [1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let exts = Ipv6Extensions {
            hop_by_hop_options: Some(
                Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 4, 0, 0, 0, 0]).unwrap(),
            ),
            destination_options: Some(Ipv6RawExtHeader::new_raw(IpNumber(0), &pad14).unwrap()),
            fragment: Some(Ipv6FragmentHeader::new(
                IpNumber(0),
                IpFragOffset::ZERO,
                true,
                0xdead_beef,
            )),
            ..Default::default()
        };
        let payload = [0x04, 0xd2, 0x16, 0x2e, 0, 12, 0, 0, 7, 7, 7, 7];
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(IpHeaders::Ipv6(ip, exts))
            .write(&mut v, IpNumber::UDP, &payload)
            .unwrap();
        v
    }

    fn construct_icmpv6_ptb() -> Vec<u8> {
        let mut inner = Vec::new();
        PacketBuilder::ipv6(V6_A, V6_B, 64)
            .tcp(50000, 443, 1000, 501)
            .ack(2000)
            .write(&mut inner, &[0xcc; 1400])
            .unwrap();
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv6(V6_R, V6_A, 64)
            .icmpv6_raw(2, 0, 1280u32.to_be_bytes())
            .write(&mut v, &inner[..72])
            .unwrap();
        v
    }

    fn construct_icmpv6_ns() -> Vec<u8> {
        let sol = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2];
        let mut body = V6_B.to_vec();
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&MAC_A);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, [0x33, 0x33, 0xff, 0, 0, 2])
            .ipv6(V6_A, sol, 255)
            .icmpv6_raw(135, 0, [0; 4])
            .write(&mut v, &body)
            .unwrap();
        v
    }

    #[test]
    fn parse_construct_matches_literals() {
        assert_eq!(construct_tcp_syn(), TCP_SYN);
        assert_eq!(construct_udp(), UDP);
        assert_eq!(construct_icmp_echo(), ICMP_ECHO);
        assert_eq!(construct_icmp_unreach(), ICMP_UNREACH);
        assert_eq!(construct_v4_frag(true, 0), V4_FRAG_FIRST);
        assert_eq!(construct_v4_frag(false, 185), V4_FRAG_LATER);
        assert_eq!(construct_v6_tcp(), V6_TCP);
        assert_eq!(construct_v6_ext_chain(), V6_EXT_CHAIN);
        assert_eq!(construct_icmpv6_ptb(), ICMPV6_PTB);
        assert_eq!(construct_icmpv6_ns(), ICMPV6_NS);
    }

    // ---------------------------------------------------------------------------------------
    // Deconstruct: literal frames → expected `Packet`s.
    // ---------------------------------------------------------------------------------------

    /// Parses a whole frame the way the worker does: the first `HEADROOM` bytes plus the length.
    fn frame(f: &[u8]) -> Result<Packet, ParseError> {
        parse(&f[..f.len().min(HEADROOM)], f.len())
    }

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn v6(a: [u8; 16]) -> IpAddr {
        IpAddr::from(a)
    }

    /// A `Packet` with the fields most cases share; tests override the rest.
    fn base(l3: L3, src: IpAddr, dst: IpAddr, proto: u8) -> Packet {
        Packet {
            ethertype: match l3 {
                L3::Ipv4 => ETHERTYPE_IPV4,
                L3::Ipv6 => ETHERTYPE_IPV6,
                L3::NonIp => 0,
            },
            l3,
            src,
            dst,
            proto,
            ttl_hop: 64,
            l3_off: 14,
            l4_off: if l3 == L3::Ipv6 { 54 } else { 34 },
            l4_len: 0,
            frag: Frag::None,
            sport: 0,
            dport: 0,
            tcp: None,
            icmp: None,
        }
    }

    #[test]
    fn parse_deconstruct_table() {
        let cases: Vec<(&str, &[u8], Packet)> = vec![
            (
                "ipv4 tcp syn with options",
                &TCP_SYN,
                Packet {
                    l4_len: 32,
                    sport: 40000,
                    dport: 80,
                    tcp: Some(Tcp {
                        seq: 0x0102_0304,
                        ack: 0,
                        flags: Tcp::SYN,
                        window: 64240,
                        data_len: 0,
                        wscale: Some(7),
                        sack_permitted: true,
                        mss: Some(1460),
                    }),
                    ..base(L3::Ipv4, v4(V4_A), v4(V4_B), ip_proto::TCP)
                },
            ),
            (
                "ipv4 udp",
                &UDP,
                Packet {
                    ttl_hop: 255,
                    l4_len: 12,
                    sport: 5353,
                    dport: 5353,
                    ..base(L3::Ipv4, v4(V4_A), v4([224, 0, 0, 251]), ip_proto::UDP)
                },
            ),
            (
                "icmp echo request",
                &ICMP_ECHO,
                Packet {
                    l4_len: 16,
                    icmp: Some(Icmp {
                        ty: 8,
                        code: 0,
                        id: 0x1234,
                        is_error: false,
                        is_nd: false,
                        inner: None,
                    }),
                    ..base(L3::Ipv4, v4(V4_A), v4(V4_B), ip_proto::ICMP)
                },
            ),
            (
                "icmp port unreachable quoting udp",
                &ICMP_UNREACH,
                Packet {
                    l4_len: 40,
                    icmp: Some(Icmp {
                        ty: 3,
                        code: 3,
                        id: 0,
                        is_error: true,
                        is_nd: false,
                        inner: Some(Inner {
                            src: v4(V4_A),
                            dst: v4(V4_B),
                            proto: ip_proto::UDP,
                            sport: 33000,
                            dport: 53,
                            icmp_id: 0,
                            icmp_ty: 0,
                            seq: [0; 4],
                        }),
                    }),
                    ..base(L3::Ipv4, v4(V4_B), v4(V4_A), ip_proto::ICMP)
                },
            ),
            (
                "ipv4 first fragment",
                &V4_FRAG_FIRST,
                Packet {
                    l4_len: 16,
                    frag: Frag::First,
                    sport: 0x1122,
                    dport: 53,
                    ..base(L3::Ipv4, v4(V4_A), v4(V4_B), ip_proto::UDP)
                },
            ),
            (
                "ipv4 later fragment: no ports",
                &V4_FRAG_LATER,
                Packet {
                    l4_len: 16,
                    frag: Frag::Later,
                    ..base(L3::Ipv4, v4(V4_A), v4(V4_B), ip_proto::UDP)
                },
            ),
            (
                "ipv6 tcp",
                &V6_TCP,
                Packet {
                    l4_len: 25,
                    sport: 50000,
                    dport: 443,
                    tcp: Some(Tcp {
                        seq: 1000,
                        ack: 2000,
                        flags: Tcp::PSH | Tcp::ACK,
                        window: 501,
                        data_len: 5,
                        wscale: None,
                        sack_permitted: false,
                        mss: None,
                    }),
                    ..base(L3::Ipv6, v6(V6_A), v6(V6_B), ip_proto::TCP)
                },
            ),
            (
                "ipv6 hop-by-hop + destination options + fragment",
                &V6_EXT_CHAIN,
                Packet {
                    l4_off: 54 + 8 + 16 + 8,
                    l4_len: 12,
                    frag: Frag::First,
                    sport: 1234,
                    dport: 5678,
                    ..base(L3::Ipv6, v6(V6_A), v6(V6_B), ip_proto::UDP)
                },
            ),
            (
                "icmpv6 packet too big quoting tcp",
                &ICMPV6_PTB,
                Packet {
                    l4_len: 80,
                    icmp: Some(Icmp {
                        ty: 2,
                        code: 0,
                        id: 0,
                        is_error: true,
                        is_nd: false,
                        inner: Some(Inner {
                            src: v6(V6_A),
                            dst: v6(V6_B),
                            proto: ip_proto::TCP,
                            sport: 50000,
                            dport: 443,
                            icmp_id: 0,
                            icmp_ty: 0,
                            seq: 1000u32.to_be_bytes(),
                        }),
                    }),
                    ..base(L3::Ipv6, v6(V6_R), v6(V6_A), ip_proto::ICMPV6)
                },
            ),
            (
                "icmpv6 neighbour solicitation",
                &ICMPV6_NS,
                Packet {
                    ttl_hop: 255,
                    l4_len: 32,
                    icmp: Some(Icmp {
                        ty: 135,
                        code: 0,
                        id: 0,
                        is_error: false,
                        is_nd: true,
                        inner: None,
                    }),
                    ..base(
                        L3::Ipv6,
                        v6(V6_A),
                        v6([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2]),
                        ip_proto::ICMPV6,
                    )
                },
            ),
            (
                "arp is not ip and not an error",
                &ARP,
                Packet {
                    ethertype: ETHERTYPE_ARP,
                    ttl_hop: 0,
                    l4_off: 14,
                    ..base(L3::NonIp, UNSPECIFIED, UNSPECIFIED, 0)
                },
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(frame(bytes), Ok(want), "{name}");
        }
    }

    #[test]
    fn parse_ethernet_padding_is_ignored() {
        for f in [&UDP[..], &ICMP_ECHO[..], &V4_FRAG_LATER[..]] {
            let mut padded = f.to_vec();
            padded.resize(60, 0);
            assert_eq!(frame(&padded), frame(f));
        }
        // A 60-byte frame carrying a 40-byte IPv4 packet (bare TCP header).
        let mut syn = TCP_SYN[..54].to_vec();
        syn[17] = 40; // total length
        syn[14 + 20 + 12] = 0x50; // data offset 5
        syn.resize(60, 0xee);
        let p = frame(&syn).unwrap();
        assert_eq!((p.l4_len, p.tcp.unwrap().data_len), (20, 0));
    }

    /// Rewrites the IPv4 total length of an untagged frame to cover the rest of it.
    fn fix_len4(f: &mut [u8]) {
        let len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&len.to_be_bytes());
    }

    /// Rewrites the IPv6 payload length of an untagged frame to cover the rest of it.
    fn fix_len6(f: &mut [u8]) {
        let len = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
    }

    fn with_tags(f: &[u8], tpids: &[u16]) -> Vec<u8> {
        let mut v = f[..12].to_vec();
        for (i, t) in tpids.iter().enumerate() {
            v.extend_from_slice(&t.to_be_bytes());
            v.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        v.extend_from_slice(&f[12..]);
        v
    }

    #[test]
    fn parse_vlan_tags_are_skipped() {
        let plain = frame(&V6_TCP).unwrap();
        for (tpids, l3_off) in [
            (&[ETHERTYPE_VLAN][..], 18u16),
            (&[ETHERTYPE_QINQ, ETHERTYPE_VLAN][..], 22),
        ] {
            let p = frame(&with_tags(&V6_TCP, tpids)).unwrap();
            assert_eq!(p.l3_off, l3_off);
            assert_eq!(p.l4_off, plain.l4_off + l3_off - 14);
            assert_eq!(
                Packet {
                    l3_off: 14,
                    l4_off: plain.l4_off,
                    ..p
                },
                plain
            );
        }
        // A third tag is not looked through: the frame is NonIp with that TPID.
        let three = [ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETHERTYPE_VLAN];
        let p = frame(&with_tags(&V6_TCP, &three)).unwrap();
        assert_eq!(
            (p.l3, p.ethertype, p.l3_off),
            (L3::NonIp, ETHERTYPE_VLAN, 22)
        );
        // A cut-off tag.
        assert_eq!(
            frame(&with_tags(&V6_TCP, &[ETHERTYPE_VLAN])[..16]),
            Err(ParseError::Truncated)
        );
    }

    /// IPv6 frame `V6_TCP`-like, with `exts` (already chained, first next-header `first_nh`)
    /// inserted in front of the TCP header.
    fn v6_with_exts(first_nh: u8, exts: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut v = V6_TCP[..54].to_vec();
        v[20] = first_nh;
        v.extend_from_slice(exts);
        v.extend_from_slice(l4);
        let payload = (exts.len() + l4.len()) as u16;
        v[18..20].copy_from_slice(&payload.to_be_bytes());
        v
    }

    /// A chain of `n` 8-byte destination-options headers ending in next header `last`.
    fn dest_opts_chain(n: usize, last: u8) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            let nh = if i + 1 == n {
                last
            } else {
                ip_proto::IPV6_OPTS
            };
            v.extend_from_slice(&[nh, 0, 1, 4, 0, 0, 0, 0]);
        }
        v
    }

    #[test]
    fn parse_ipv6_ext_walk() {
        let tcp = &V6_TCP[54..];
        // Exactly MAX_EXT_HEADERS is fine.
        let f = v6_with_exts(60, &dest_opts_chain(MAX_EXT_HEADERS, 6), tcp);
        let p = frame(&f).unwrap();
        assert_eq!((p.proto, p.sport, p.dport), (6, 50000, 443));
        assert_eq!(p.l4_off as usize, 54 + 8 * MAX_EXT_HEADERS);
        assert_eq!(p.l4_len as usize, tcp.len());
        // ESP and no-next-header stop the walk and are the protocol.
        for stop in [ip_proto::ESP, ip_proto::IPV6_NONXT, 253] {
            let p = frame(&v6_with_exts(60, &dest_opts_chain(2, stop), tcp)).unwrap();
            assert_eq!((p.proto, p.sport, p.l4_off), (stop, 0, 54 + 16));
        }
        // AH is walked: next 6, payload length 1 → (1 + 2) * 4 = 12 bytes.
        let ah = [6, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9];
        let p = frame(&v6_with_exts(ip_proto::AH, &ah, tcp)).unwrap();
        assert_eq!((p.proto, p.dport, p.l4_off), (6, 443, 54 + 12));
        // Routing header (type 4, 24 bytes) then UDP.
        let mut rh = vec![17, 2, 4, 0, 0, 0, 0, 0];
        rh.extend_from_slice(&[0; 16]);
        let udp = [0, 53, 0, 54, 0, 8, 0, 0];
        let p = frame(&v6_with_exts(ip_proto::IPV6_ROUTE, &rh, &udp)).unwrap();
        assert_eq!((p.proto, p.sport, p.dport, p.l4_len), (17, 53, 54, 8));
        // Later fragment: the walk stops at the fragment header; no ports.
        let frag_later = [6, 0, 0x05, 0xc8, 0, 0, 0, 1];
        let p = frame(&v6_with_exts(ip_proto::IPV6_FRAG, &frag_later, tcp)).unwrap();
        assert_eq!((p.frag, p.proto, p.sport, p.tcp), (Frag::Later, 6, 0, None));
        assert_eq!((p.l4_off, p.l4_len as usize), (62, tcp.len()));
        // Atomic fragment (offset 0, M clear) is not a fragment.
        let atomic = [6, 0, 0, 0, 0, 0, 0, 1];
        let p = frame(&v6_with_exts(ip_proto::IPV6_FRAG, &atomic, tcp)).unwrap();
        assert_eq!((p.frag, p.dport), (Frag::None, 443));
        // Later fragment of the literal chain.
        let mut later = V6_EXT_CHAIN;
        later[14 + 40 + 8 + 16 + 2] = 0x01; // offset 32 × 8
        later[14 + 40 + 8 + 16 + 3] = 0x00; // M clear: the last fragment
        let p = frame(&later).unwrap();
        assert_eq!((p.frag, p.sport, p.l4_len), (Frag::Later, 0, 12));
    }

    #[test]
    fn parse_tcp_options() {
        let opts = |opts: &[u8], flags: u8| {
            let mut f = TCP_SYN[..54].to_vec();
            f.extend_from_slice(opts);
            let doff = (20 + opts.len()) / 4;
            f[14 + 20 + 12] = (doff as u8) << 4;
            f[14 + 20 + 13] = flags;
            f[16..18].copy_from_slice(&((40 + opts.len()) as u16).to_be_bytes());
            frame(&f).unwrap().tcp.unwrap()
        };
        let t = opts(
            &[2, 4, 0x23, 0x28, 3, 3, 14, 4, 2, 0, 0, 0],
            Tcp::SYN | Tcp::ACK,
        );
        assert_eq!(
            (t.mss, t.wscale, t.sack_permitted),
            (Some(9000), Some(14), true)
        );
        // Not a SYN: options are not read.
        let t = opts(&[2, 4, 0x23, 0x28], Tcp::ACK);
        assert_eq!((t.mss, t.wscale), (None, None));
        // End-of-list stops; so do a length below 2 and an option running past the header.
        assert_eq!(opts(&[0, 0, 0, 0, 3, 3, 7, 0], Tcp::SYN).wscale, None);
        assert_eq!(opts(&[8, 0, 3, 3, 7, 0, 0, 0], Tcp::SYN).wscale, None);
        // An option with a wrong length is skipped by its length byte.
        let t = opts(&[2, 3, 1, 3, 3, 7, 0, 0], Tcp::SYN);
        assert_eq!((t.mss, t.wscale), (None, Some(7)));
        assert_eq!(opts(&[1, 1, 1, 3, 3, 7, 1, 1], Tcp::SYN).wscale, Some(7));
        assert_eq!(opts(&[1, 1, 1, 1, 1, 1, 2, 4], Tcp::SYN).mss, None);
        // Timestamps (kind 8, length 10) are skipped over.
        let t = opts(&[8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 3, 3, 2, 0, 0, 0], Tcp::SYN);
        assert_eq!(t.wscale, Some(2));
    }

    #[test]
    fn parse_tcp_options_past_headroom_are_ignored() {
        // 176 bytes of destination options put the TCP header at 230..250 and its 40 bytes of
        // options at 250..290: four NOPs, then a window-scale option straddling byte 256.
        let mut d = vec![6, 21, 1, 172];
        d.resize(176, 0);
        let mut tcp = TCP_SYN[34..54].to_vec();
        tcp[12] = 0xf0;
        tcp.extend_from_slice(&[1, 1, 1, 1, 3, 3, 9]);
        tcp.resize(60, 1);
        let f = v6_with_exts(ip_proto::IPV6_OPTS, &d, &tcp);
        let p = frame(&f).unwrap();
        let t = p.tcp.unwrap();
        assert_eq!((p.l4_off, t.flags, t.wscale), (230, Tcp::SYN, None));
        // The same options inside the headroom are read.
        let mut f2 = TCP_SYN[..34].to_vec();
        f2.extend_from_slice(&tcp);
        f2[16..18].copy_from_slice(&80u16.to_be_bytes());
        assert_eq!(frame(&f2).unwrap().tcp.unwrap().wscale, Some(9));
    }

    #[test]
    fn parse_icmp_quotes() {
        // Truncated quote (IP header only, no transport bytes): inner is None, not an error.
        let mut f = ICMP_UNREACH[..14 + 20 + 8 + 20].to_vec();
        f[17] = 48;
        let p = frame(&f).unwrap();
        assert!(p.icmp.unwrap().is_error);
        assert_eq!(p.icmp.unwrap().inner, None);
        // Quote with an IHL-6 inner header: the ports come from after the option word.
        let mut inner = ICMP_UNREACH[42..62].to_vec();
        inner[0] = 0x46;
        inner.extend_from_slice(&[1, 1, 1, 1]);
        inner.extend_from_slice(&ICMP_UNREACH[62..70]);
        let mut f = ICMP_UNREACH[..42].to_vec();
        f.extend_from_slice(&inner);
        fix_len4(&mut f);
        let i = frame(&f).unwrap().icmp.unwrap().inner.unwrap();
        assert_eq!((i.sport, i.dport), (33000, 53));
        // Time exceeded quoting an echo request: the echo id is reported.
        let mut f = ICMP_UNREACH[..42].to_vec();
        f[34] = 11;
        f[35] = 0;
        f.extend_from_slice(&ICMP_ECHO[14..42]);
        fix_len4(&mut f);
        let i = frame(&f).unwrap().icmp.unwrap().inner.unwrap();
        assert_eq!((i.proto, i.icmp_id, i.sport), (ip_proto::ICMP, 0x1234, 0));
        assert_eq!((i.icmp_ty, i.tcp_seq()), (8, 0), "the quoted echo's type");
        // A quoted IPv6 packet with a destination-options header is walked.
        let mut f = ICMPV6_PTB[..62].to_vec();
        let mut q = ICMPV6_PTB[62..102].to_vec();
        q[6] = ip_proto::IPV6_OPTS;
        q.extend_from_slice(&[ip_proto::TCP, 0, 1, 4, 0, 0, 0, 0]);
        q.extend_from_slice(&ICMPV6_PTB[102..110]);
        f.extend_from_slice(&q);
        fix_len6(&mut f);
        let i = frame(&f).unwrap().icmp.unwrap().inner.unwrap();
        assert_eq!((i.proto, i.sport, i.dport), (ip_proto::TCP, 50000, 443));
        assert_eq!(
            (i.tcp_seq(), i.icmp_ty),
            (1000, 0),
            "the quoted TCP sequence number"
        );
        // ... and a quote cut inside the extension header is None.
        let cut = &f[..f.len() - 12];
        let mut cut = cut.to_vec();
        fix_len6(&mut cut);
        assert_eq!(frame(&cut).unwrap().icmp.unwrap().inner, None);
        // ICMPv6 echo reply: id, not an error, not ND.
        let mut f = ICMPV6_NS.to_vec();
        f[54] = 129;
        f[58..60].copy_from_slice(&[0xab, 0xcd]);
        let c = frame(&f).unwrap().icmp.unwrap();
        assert_eq!((c.id, c.is_error, c.is_nd), (0xabcd, false, false));
        // ICMP over the wrong IP version is just a protocol number.
        let mut f = V6_TCP.to_vec();
        f[20] = ip_proto::ICMP;
        assert_eq!(frame(&f).unwrap().icmp, None);
    }

    #[test]
    fn parse_sctp_and_udplite_ports() {
        for (proto, min) in [(ip_proto::SCTP, 12), (ip_proto::UDPLITE, 8)] {
            let mut f = UDP.to_vec();
            f[14 + 9] = proto;
            f.extend_from_slice(&[0; 4]);
            fix_len4(&mut f);
            let p = frame(&f).unwrap();
            assert_eq!((p.proto, p.sport, p.dport), (proto, 5353, 5353));
            // Shorter than the header: truncated.
            let mut f = f[..34 + min - 1].to_vec();
            fix_len4(&mut f);
            assert_eq!(frame(&f), Err(ParseError::Truncated), "{proto}");
        }
    }

    #[test]
    fn parse_errors_table() {
        let set = |f: &[u8], at: usize, bytes: &[u8]| {
            let mut v = f.to_vec();
            v[at..at + bytes.len()].copy_from_slice(bytes);
            v
        };
        let too_many = v6_with_exts(60, &dest_opts_chain(MAX_EXT_HEADERS + 1, 6), &V6_TCP[54..]);
        let mut long_opts = vec![6, 29, 1, 230];
        long_opts.resize(240, 0);
        let beyond = v6_with_exts(60, &long_opts, &V6_TCP[54..]);
        let mut second_beyond = vec![60, 25, 1, 206];
        second_beyond.resize(208, 0); // next header at 54 + 208 = 262
        second_beyond.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        let second_beyond = v6_with_exts(60, &second_beyond, &V6_TCP[54..]);
        let cases: Vec<(&str, Vec<u8>, ParseError)> = vec![
            ("runt", vec![0; 13], ParseError::Truncated),
            (
                "ipv4 header cut",
                TCP_SYN[..33].to_vec(),
                ParseError::Truncated,
            ),
            (
                "ipv6 header cut",
                V6_TCP[..53].to_vec(),
                ParseError::Truncated,
            ),
            (
                "tcp header longer than the ip payload",
                set(&TCP_SYN[..54], 16, &[0, 39]),
                ParseError::Truncated,
            ),
            (
                "icmp header cut",
                set(&ICMP_ECHO[..41], 16, &[0, 27]),
                ParseError::Truncated,
            ),
            (
                "ipv6 ext header past the payload",
                set(&V6_EXT_CHAIN, 14 + 40 + 8 + 1, &[9]),
                ParseError::Truncated,
            ),
            (
                "ipv4 version 6",
                set(&TCP_SYN, 14, &[0x65]),
                ParseError::BadIpVersion,
            ),
            (
                "ipv6 version 4",
                set(&V6_TCP, 14, &[0x40]),
                ParseError::BadIpVersion,
            ),
            ("ihl 4", set(&TCP_SYN, 14, &[0x44]), ParseError::BadIhl),
            ("ihl 0", set(&TCP_SYN, 14, &[0x40]), ParseError::BadIhl),
            (
                "ipv4 total > frame",
                set(&TCP_SYN, 16, &[0, 53]),
                ParseError::BadIpLength,
            ),
            (
                "ipv4 total < ihl",
                set(&TCP_SYN, 16, &[0, 19]),
                ParseError::BadIpLength,
            ),
            (
                "ipv4 options longer than total",
                set(&TCP_SYN, 14, &[0x4f]),
                ParseError::BadIpLength,
            ),
            (
                "ipv6 payload > frame",
                set(&V6_TCP, 18, &[0, 26]),
                ParseError::BadIpLength,
            ),
            (
                "tcp data offset 4",
                set(&TCP_SYN, 46, &[0x40]),
                ParseError::BadL4Header,
            ),
            (
                "tcp data offset past the segment",
                set(&TCP_SYN, 46, &[0x90]),
                ParseError::BadL4Header,
            ),
            ("nine ext headers", too_many, ParseError::TooManyExtHeaders),
            (
                "tcp past the headroom",
                beyond,
                ParseError::ExtHeaderBeyondHeadroom,
            ),
            (
                "second ext header past the headroom",
                second_beyond,
                ParseError::ExtHeaderBeyondHeadroom,
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (name, f, want) in cases {
            assert_eq!(frame(&f), Err(want), "{name}");
            seen.insert(want);
        }
        assert_eq!(
            seen.len(),
            ParseError::ALL.len(),
            "every variant is exercised"
        );
    }

    #[test]
    fn parse_headroom_contract() {
        // No-next-header past the headroom needs no bytes from there: fine.
        let mut long_opts = vec![59, 29, 1, 230];
        long_opts.resize(240, 0);
        let f = v6_with_exts(60, &long_opts, &[0; 20]);
        let p = frame(&f).unwrap();
        assert_eq!((p.proto, p.l4_off, p.l4_len), (59, 294, 20));
        // Bytes past HEADROOM or past frame_len are ignored.
        let mut beyond = long_opts.clone();
        beyond[0] = 6;
        let f = v6_with_exts(60, &beyond, &V6_TCP[54..]);
        assert_eq!(parse(&f, f.len()), frame(&f));
        let mut padded = UDP.to_vec();
        padded.extend_from_slice(&[0xff; 20]);
        assert_eq!(parse(&padded, UDP.len()), frame(&UDP));
        // A `hdr` shorter than promised: the frame ends where `hdr` does.
        assert_eq!(parse(&TCP_SYN[..40], 66), frame(&TCP_SYN[..40]));
        assert_eq!(parse(&TCP_SYN[..40], 66), Err(ParseError::BadIpLength));
        assert_eq!(parse(&TCP_SYN[..30], 66), Err(ParseError::Truncated));
        assert_eq!(parse(&[], 0), Err(ParseError::Truncated));
        assert_eq!(parse(&TCP_SYN, usize::MAX), parse(&TCP_SYN, 66));
    }

    #[test]
    fn parse_error_names() {
        let mut names = std::collections::HashSet::new();
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
            assert!(e
                .name()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            assert!(names.insert(e.name()));
            assert_eq!(e.to_string(), e.description());
        }
        assert_eq!(ParseError::Truncated.name(), "truncated");
    }

    // ---------------------------------------------------------------------------------------
    // Generated packets: differential against etherparse, and no-panic fuzzing.
    // ---------------------------------------------------------------------------------------

    /// xorshift64: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
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
            let mut b = [0; N];
            b.iter_mut().for_each(|x| *x = self.u8());
            b
        }
        fn vec(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.u8()).collect()
        }
    }

    /// What the generator put in, for fields etherparse does not decode.
    #[derive(Debug)]
    struct Truth {
        proto: u8,
        sport: u16,
        dport: u16,
        frag: Frag,
        inner: Option<Inner>,
        /// Bytes of the ICMP quote `inner` needs (we only see the quote up to `HEADROOM`).
        inner_need: usize,
    }

    fn gen_ip(rng: &mut Rng, v6: bool, allow_frag: bool) -> (IpHeaders, Frag) {
        let mut frag = Frag::None;
        if !v6 {
            let mut ip =
                Ipv4Header::new(0, rng.u8(), IpNumber(0), rng.bytes(), rng.bytes()).unwrap();
            ip.identification = rng.u16();
            ip.dont_fragment = rng.one_in(2);
            if rng.one_in(3) {
                let words = rng.below(11) * 4;
                ip.options = Ipv4Options::try_from(&rng.vec(words)[..]).unwrap();
            }
            if allow_frag && rng.one_in(8) {
                ip.dont_fragment = false;
                if rng.one_in(2) {
                    ip.more_fragments = true;
                    frag = Frag::First;
                } else {
                    ip.more_fragments = rng.one_in(2);
                    ip.fragment_offset = IpFragOffset::try_new(1 + rng.u16() % 8000).unwrap();
                    frag = Frag::Later;
                }
            }
            return (IpHeaders::Ipv4(ip, Default::default()), frag);
        }
        let ip = Ipv6Header {
            traffic_class: rng.u8(),
            hop_limit: rng.u8(),
            source: rng.bytes(),
            destination: rng.bytes(),
            ..Default::default()
        };
        let raw = |rng: &mut Rng, max_words: usize| {
            let len = 6 + 8 * rng.below(max_words + 1);
            Ipv6RawExtHeader::new_raw(IpNumber(0), &rng.vec(len)).unwrap()
        };
        let mut exts = Ipv6Extensions::default();
        if rng.one_in(4) {
            exts.hop_by_hop_options = Some(raw(rng, 24));
        }
        if rng.one_in(4) {
            exts.destination_options = Some(raw(rng, 3));
        }
        // Decide the fragment header first: in a later fragment nothing may follow it (what
        // follows is payload), and etherparse puts AH and final destination options after it.
        let frag_hdr = if rng.one_in(4) {
            Some(if allow_frag && rng.one_in(2) {
                if rng.one_in(2) {
                    frag = Frag::First;
                    (0, true)
                } else {
                    frag = Frag::Later;
                    (1 + rng.u16() % 8000, rng.one_in(2))
                }
            } else {
                (0, false) // an atomic fragment
            })
        } else {
            None
        };
        if rng.one_in(5) {
            let final_destination_options =
                (frag != Frag::Later && rng.one_in(2)).then(|| raw(rng, 2));
            exts.routing = Some(Ipv6RoutingExtensions {
                routing: raw(rng, 3),
                final_destination_options,
            });
        }
        if let Some((offset, more)) = frag_hdr {
            exts.fragment = Some(Ipv6FragmentHeader::new(
                IpNumber(0),
                IpFragOffset::try_new(offset).unwrap(),
                more,
                rng.u32(),
            ));
        }
        // AH after a later fragment's fragment header would be payload, not a header.
        if frag != Frag::Later && rng.one_in(5) {
            let words = rng.below(4);
            let icv = rng.vec(4 * words);
            exts.auth = Some(IpAuthHeader::new(IpNumber(0), rng.u32(), rng.u32(), &icv).unwrap());
        }
        (IpHeaders::Ipv6(ip, exts), frag)
    }

    /// A random frame (VLAN tags, IPv4 options or IPv6 extension headers, TCP with options,
    /// UDP, ICMP echo, ICMP errors, SCTP/UDP-Lite/unknown protocols, fragments, padding).
    fn gen_frame(rng: &mut Rng) -> (Vec<u8>, Truth) {
        let is_v6 = rng.one_in(2);
        let (ip, frag) = gen_ip(rng, is_v6, true);
        let b = PacketBuilder::ethernet2(rng.bytes(), rng.bytes()).ip(ip);
        let payload_len = rng.below(3) * rng.below(40);
        let payload = rng.vec(payload_len);
        let (sport, dport) = (rng.u16(), rng.u16());
        let mut v = Vec::new();
        let mut t = Truth {
            proto: 0,
            sport: 0,
            dport: 0,
            frag,
            inner: None,
            inner_need: 0,
        };
        match rng.below(6) {
            0 | 1 => {
                let mut b = b.tcp(sport, dport, rng.u32(), rng.u16());
                let flags = rng.u8();
                for (bit, f) in [
                    (Tcp::FIN, 0),
                    (Tcp::SYN, 1),
                    (Tcp::RST, 2),
                    (Tcp::PSH, 3),
                    (Tcp::ECE, 4),
                    (Tcp::CWR, 5),
                ] {
                    if flags & bit != 0 {
                        b = match f {
                            0 => b.fin(),
                            1 => b.syn(),
                            2 => b.rst(),
                            3 => b.psh(),
                            4 => b.ece(),
                            _ => b.cwr(),
                        };
                    }
                }
                if flags & Tcp::ACK != 0 {
                    b = b.ack(rng.u32());
                }
                if flags & Tcp::URG != 0 {
                    b = b.urg(rng.u16());
                }
                if rng.one_in(2) {
                    let mut o = Vec::new();
                    let mut room = 40;
                    for _ in 0..rng.below(7) {
                        let (len, opt) = match rng.below(5) {
                            0 => (4, TcpOptionElement::MaximumSegmentSize(rng.u16())),
                            1 => (3, TcpOptionElement::WindowScale(rng.u8())),
                            2 => (2, TcpOptionElement::SelectiveAcknowledgementPermitted),
                            3 => (10, TcpOptionElement::Timestamp(rng.u32(), rng.u32())),
                            _ => (1, TcpOptionElement::Noop),
                        };
                        if len <= room {
                            room -= len;
                            o.push(opt);
                        }
                    }
                    b = b.options(&o).unwrap();
                }
                b.write(&mut v, &payload).unwrap();
                (t.proto, t.sport, t.dport) = (6, sport, dport);
            }
            2 => {
                b.udp(sport, dport).write(&mut v, &payload).unwrap();
                (t.proto, t.sport, t.dport) = (17, sport, dport);
            }
            3 => {
                let (id, seq) = (rng.u16(), rng.u16());
                match (is_v6, rng.one_in(2)) {
                    (false, true) => b.icmpv4_echo_request(id, seq).write(&mut v, &payload),
                    (false, false) => b.icmpv4_echo_reply(id, seq).write(&mut v, &payload),
                    (true, true) => b.icmpv6_echo_request(id, seq).write(&mut v, &payload),
                    (true, false) => b.icmpv6_echo_reply(id, seq).write(&mut v, &payload),
                }
                .unwrap();
                t.proto = if is_v6 { 58 } else { 1 };
            }
            4 => {
                // An ICMP error quoting a random inner packet, cut at a random length.
                let (inner_ip, _) = gen_ip(rng, is_v6, false);
                let mut q = Vec::new();
                let ib = PacketBuilder::ip(inner_ip);
                let inner_proto = match rng.below(3) {
                    0 => {
                        ib.tcp(sport, dport, 1, 2).write(&mut q, &payload).unwrap();
                        6
                    }
                    1 => {
                        ib.udp(sport, dport).write(&mut q, &payload).unwrap();
                        17
                    }
                    _ => {
                        ib.write(&mut q, IpNumber(253), &payload).unwrap();
                        253
                    }
                };
                let s = SlicedPacket::from_ip(&q).unwrap();
                let (src, dst, l4_at) = match &s.net {
                    Some(NetSlice::Ipv4(i)) => (
                        v4(i.header().source()),
                        v4(i.header().destination()),
                        i.header().slice().len(),
                    ),
                    Some(NetSlice::Ipv6(i)) => (
                        v6(i.header().source()),
                        v6(i.header().destination()),
                        q.len() - i.payload().payload.len(),
                    ),
                    _ => unreachable!(),
                };
                let cut = rng.below(q.len() + 1);
                let has_ports = inner_proto != 253;
                t.inner_need = l4_at + if has_ports { 8 } else { 0 };
                if cut >= t.inner_need {
                    t.inner = Some(Inner {
                        src,
                        dst,
                        proto: inner_proto,
                        sport: if has_ports { sport } else { 0 },
                        dport: if has_ports { dport } else { 0 },
                        icmp_id: 0,
                        icmp_ty: 0,
                        seq: if inner_proto == 6 {
                            [0, 0, 0, 1]
                        } else {
                            [0; 4]
                        },
                    });
                }
                let (ty, code) = if is_v6 {
                    ([1, 2, 3, 4][rng.below(4)], rng.u8())
                } else {
                    ([3, 4, 11, 12][rng.below(4)], rng.u8())
                };
                if is_v6 {
                    b.icmpv6_raw(ty, code, rng.bytes()).write(&mut v, &q[..cut])
                } else {
                    b.icmpv4_raw(ty, code, rng.bytes()).write(&mut v, &q[..cut])
                }
                .unwrap();
                t.proto = if is_v6 { 58 } else { 1 };
            }
            _ => {
                let proto = [ip_proto::SCTP, ip_proto::UDPLITE, 253, 47][rng.below(4)];
                let mut l4 = sport.to_be_bytes().to_vec();
                l4.extend_from_slice(&dport.to_be_bytes());
                let extra = 8 + rng.below(20);
                l4.extend_from_slice(&rng.vec(extra));
                b.write(&mut v, IpNumber(proto), &l4).unwrap();
                t.proto = proto;
                if proto == ip_proto::SCTP || proto == ip_proto::UDPLITE {
                    (t.sport, t.dport) = (sport, dport);
                }
            }
        }
        if t.frag == Frag::Later {
            (t.sport, t.dport, t.inner) = (0, 0, None);
        }
        // VLAN tags.
        let tags: &[u16] = match rng.below(6) {
            0 => &[ETHERTYPE_VLAN],
            1 => &[ETHERTYPE_QINQ, ETHERTYPE_VLAN],
            _ => &[],
        };
        let mut v = with_tags(&v, tags);
        if rng.one_in(2) && v.len() < 60 {
            v.resize(60, 0);
        } else if rng.one_in(8) {
            let n = rng.below(16);
            v.extend_from_slice(&rng.vec(n));
        }
        (v, t)
    }

    fn expect_inner(t: &Truth, l4_off: usize) -> Option<Inner> {
        t.inner.filter(|_| l4_off + 8 + t.inner_need <= HEADROOM)
    }

    /// Compares our parse of `f` with etherparse's and with the generator's truth.
    fn compare(f: &[u8], t: &Truth) -> usize {
        let p = frame(f);
        let e = SlicedPacket::from_ethernet(f).unwrap_or_else(|e| panic!("{e:?} {f:02x?}"));
        let (src, dst, ttl, payload) = match &e.net {
            Some(NetSlice::Ipv4(i)) => (
                v4(i.header().source()),
                v4(i.header().destination()),
                i.header().ttl(),
                i.payload(),
            ),
            Some(NetSlice::Ipv6(i)) => (
                v6(i.header().source()),
                v6(i.header().destination()),
                i.header().hop_limit(),
                i.payload(),
            ),
            _ => panic!("not ip: {f:02x?}"),
        };
        let l4_off = payload.payload.as_ptr() as usize - f.as_ptr() as usize;
        let p = match p {
            Err(ParseError::ExtHeaderBeyondHeadroom) => {
                let need = match t.proto {
                    ip_proto::TCP => 20,
                    ip_proto::SCTP => 12,
                    _ => 8,
                };
                assert!(l4_off + need > HEADROOM, "{f:02x?}");
                return 0;
            }
            Err(err) => panic!("{err:?} on {f:02x?}"),
            Ok(p) => p,
        };
        assert_eq!((p.src, p.dst, p.ttl_hop), (src, dst, ttl));
        assert_eq!(p.proto, payload.ip_number.0);
        assert_eq!(p.proto, t.proto);
        assert_eq!(p.frag, t.frag);
        assert_eq!(payload.fragmented, t.frag != Frag::None);
        assert_eq!(p.l4_off as usize, l4_off);
        assert_eq!(p.l4_len as usize, payload.payload.len());
        assert_eq!(usize::from(p.l3_off), 14 + 4 * e.link_exts.len());
        match &e.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                let pt = p.tcp.expect("tcp");
                assert_eq!(
                    (p.sport, p.dport),
                    (tcp.source_port(), tcp.destination_port())
                );
                assert_eq!(pt.seq, tcp.sequence_number());
                assert_eq!(pt.ack, tcp.acknowledgment_number());
                assert_eq!(pt.flags, tcp.header_slice()[13]);
                assert_eq!(pt.window, tcp.window_size());
                assert_eq!(pt.data_len as usize, tcp.payload().len());
                let (mut mss, mut ws, mut sack) = (None, None, false);
                let opts_in_headroom = l4_off + tcp.header_slice().len() <= HEADROOM;
                if tcp.syn() && opts_in_headroom {
                    for o in tcp.options_iterator() {
                        match o.unwrap() {
                            TcpOptionElement::MaximumSegmentSize(m) => mss = Some(m),
                            TcpOptionElement::WindowScale(w) => ws = Some(w),
                            TcpOptionElement::SelectiveAcknowledgementPermitted => sack = true,
                            _ => {}
                        }
                    }
                    assert_eq!((pt.mss, pt.wscale, pt.sack_permitted), (mss, ws, sack));
                }
                1
            }
            Some(TransportSlice::Udp(u)) => {
                assert_eq!((p.sport, p.dport), (u.source_port(), u.destination_port()));
                assert_eq!(p.tcp, None);
                2
            }
            Some(TransportSlice::Icmpv4(i)) => {
                let c = p.icmp.expect("icmp");
                let h = i.slice();
                assert_eq!((c.ty, c.code), (h[0], h[1]));
                if let etherparse::Icmpv4Type::EchoRequest(e)
                | etherparse::Icmpv4Type::EchoReply(e) = i.icmp_type()
                {
                    assert_eq!(c.id, e.id);
                }
                assert_eq!(c.inner, expect_inner(t, l4_off));
                3 + usize::from(c.inner.is_some())
            }
            Some(TransportSlice::Icmpv6(i)) => {
                let c = p.icmp.expect("icmpv6");
                let h = i.slice();
                assert_eq!((c.ty, c.code), (h[0], h[1]));
                if let etherparse::Icmpv6Type::EchoRequest(e)
                | etherparse::Icmpv6Type::EchoReply(e) = i.icmp_type()
                {
                    assert_eq!(c.id, e.id);
                }
                assert_eq!(c.inner, expect_inner(t, l4_off));
                3 + usize::from(c.inner.is_some())
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                // etherparse stops at fragments and at protocols it does not decode.
                assert_eq!((p.sport, p.dport), (t.sport, t.dport));
                assert_eq!(p.tcp.is_some(), t.proto == 6 && t.frag == Frag::First);
                5 + usize::from(t.frag != Frag::None)
            }
        }
    }

    #[test]
    fn parse_differential_vs_etherparse() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Outcomes: past the headroom, TCP, UDP, ICMP without/with a parsed quote, other
        // protocols, fragments.
        let mut seen = [0u32; 7];
        for _ in 0..30_000 {
            let (f, t) = gen_frame(&mut rng);
            seen[compare(&f, &t)] += 1;
        }
        // Every outcome is reached, the headroom limit only now and then.
        assert!(seen.iter().all(|&n| n >= 100), "{seen:?}");
        assert!(seen[0] < 1_000, "{seen:?}");
    }

    /// Properties every successful parse satisfies.
    fn check(p: &Packet, frame_len: usize) {
        assert!(usize::from(p.l4_off) + usize::from(p.l4_len) <= frame_len);
        assert!(p.l3_off <= p.l4_off);
        match p.l3 {
            L3::NonIp => {
                assert_eq!((p.proto, p.l4_len, p.sport, p.dport), (0, 0, 0, 0));
                assert!(p.tcp.is_none() && p.icmp.is_none());
            }
            L3::Ipv4 => assert!(p.src.is_ipv4() && p.ethertype == ETHERTYPE_IPV4),
            L3::Ipv6 => assert!(p.src.is_ipv6() && p.ethertype == ETHERTYPE_IPV6),
        }
        if p.frag == Frag::Later {
            assert!(p.sport == 0 && p.dport == 0 && p.tcp.is_none() && p.icmp.is_none());
        }
        if let Some(t) = p.tcp {
            assert_eq!(p.proto, ip_proto::TCP);
            assert!(t.data_len + 20 <= u32::from(p.l4_len));
        }
        if let Some(c) = p.icmp {
            assert!(c.inner.is_none() || c.is_error);
            assert!(!(c.is_nd && p.l3 == L3::Ipv4));
        }
    }

    /// On a mangled frame that both parsers accept, addresses and ports agree.
    fn cross_check(p: &Packet, f: &[u8]) {
        // etherparse also looks through 0x9100 tags; we do not (as `wire::EthernetFrame`).
        let Ok(e) = SlicedPacket::from_ethernet(f) else {
            return;
        };
        if p.l3 == L3::NonIp {
            return;
        }
        let (src, dst) = match &e.net {
            Some(NetSlice::Ipv4(i)) => (v4(i.header().source()), v4(i.header().destination())),
            Some(NetSlice::Ipv6(i)) => (v6(i.header().source()), v6(i.header().destination())),
            _ => return,
        };
        assert_eq!((p.src, p.dst), (src, dst), "{f:02x?}");
        match &e.transport {
            Some(TransportSlice::Tcp(t)) => {
                assert_eq!((p.sport, p.dport), (t.source_port(), t.destination_port()));
                assert_eq!(p.tcp.map(|t| t.seq), Some(t.sequence_number()));
            }
            Some(TransportSlice::Udp(u)) => {
                assert_eq!((p.sport, p.dport), (u.source_port(), u.destination_port()));
            }
            _ => {}
        }
    }

    #[test]
    fn parse_fuzz_never_panics() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut corpus: Vec<Vec<u8>> = [
            &TCP_SYN[..],
            &UDP,
            &ICMP_ECHO,
            &ICMP_UNREACH,
            &V4_FRAG_FIRST,
            &V4_FRAG_LATER,
            &V6_TCP,
            &V6_EXT_CHAIN,
            &ICMPV6_PTB,
            &ICMPV6_NS,
            &ARP,
        ]
        .iter()
        .map(|f| f.to_vec())
        .collect();
        corpus.extend((0..300).map(|_| gen_frame(&mut rng).0));
        let mut buf = [0u8; 512];
        let (mut ok, mut err) = (0u32, 0u32);
        for i in 0..400_000 {
            let (len, frame_len) = if i % 4 == 0 {
                // Random bytes behind a plausible EtherType and version nibble.
                let len = rng.below(300);
                buf[..len].iter_mut().for_each(|b| *b = rng.u8());
                let et: u16 = [0x0800, 0x86dd, 0x8100, 0x88a8, rng.u16()][rng.below(5)];
                if len >= 15 {
                    buf[12..14].copy_from_slice(&et.to_be_bytes());
                    buf[14] = (buf[14] & 0x0f) | if rng.one_in(2) { 0x40 } else { 0x60 };
                }
                (len, len)
            } else {
                let f = &corpus[rng.below(corpus.len())];
                buf[..f.len()].copy_from_slice(f);
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(f.len().min(140));
                    buf[at] = match rng.below(4) {
                        0 => rng.u8(),
                        1 => buf[at] ^ (1 << rng.below(8)),
                        2 => 0,
                        _ => 0xff,
                    };
                }
                let len = if rng.one_in(4) {
                    rng.below(f.len() + 1)
                } else {
                    f.len()
                };
                (len, len)
            };
            // Sometimes lie about frame_len (the caller copies at most HEADROOM bytes).
            let frame_len = match rng.below(8) {
                0 => frame_len + rng.below(2000),
                1 => rng.below(frame_len + 1),
                _ => frame_len,
            };
            let hdr = &buf[..len.min(HEADROOM)];
            match parse(hdr, frame_len) {
                Ok(p) => {
                    // The frame length `parse` assumes (see its contract).
                    let have = hdr.len().min(frame_len);
                    let eff = if have < frame_len.min(HEADROOM) {
                        have
                    } else {
                        frame_len
                    };
                    check(&p, eff);
                    if eff == len && len <= HEADROOM {
                        cross_check(&p, &buf[..len]);
                    }
                    ok += 1;
                }
                Err(_) => err += 1,
            }
        }
        // Both outcomes are common, so the mutations explore the interesting space.
        assert!(ok > 50_000 && err > 50_000, "ok {ok} err {err}");
    }
}
