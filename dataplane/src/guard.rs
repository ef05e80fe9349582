//! Spoof guard and address discovery: which source addresses a vNIC may use, checked on every
//! frame it sends (on a parsed segment), and the claims (ARP, neighbour discovery, DHCP, first
//! use) from which the control plane learns each vNIC's addresses.
//!
//! A port's [`Guard`] is published with the port table and never changes: the agent binds
//! an address by publishing a new one. Per frame the check reads the parsed [`Packet`] and the
//! frame's first bytes; it never allocates, locks or calls the kernel. Its answer:
//!
//! - [`Check::Pass`]: the frame goes on to the firewall.
//! - [`Check::Drop`]: a spoofing attempt, with its reason (`ip_spoofed`, `arp_spoofed`,
//!   `nd_spoofed`, `arp_malformed`, `address_limit`, `dhcp_server_untrusted`), counted on the
//!   sending port.
//! - [`Check::Claim`]: the frame uses (or announces) an address the port has not bound. The
//!   frame passes (learn mode: no other vNIC of the zone owns the address, and the port is
//!   under its limit; off mode: always) and the claim is punted, so the agent binds or records
//!   it.
//! - [`Check::Snoop`]: a DHCP server reply from a port trusted to serve DHCP: the worker reads
//!   the reply ([`dhcp_reply`]) and punts the lease it grants.
//!
//! Modes: `strict` (only bound addresses: static ones and DHCP leases; a claim for any other
//! is dropped), `learn` (trust on first use: the first use of an address no other vNIC of the
//! zone owns binds it, up to the port's limit), `off` (nothing is dropped; ARP and ND claims
//! are still punted, so the addresses are known). The MAC half of the guard is the port's MAC
//! binding (`src_mac_spoofed`, in the L2 stage); ARP and ND must carry the frame's own MAC.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::counters::DropReason;
use crate::parse::{ip_proto, Packet, ETHERTYPE_ARP, L3};
use crate::wire::Mac;

/// How a port's source addresses are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Nothing is dropped; ARP and ND claims are punted for discovery.
    #[default]
    Off,
    /// Trust on first use: an address no other vNIC of the zone owns is bound when first used.
    Learn,
    /// Only bound addresses (static, DHCP) may be used as a source or claimed.
    Strict,
}

/// A port's spoof guard as published: its mode and its bound addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    /// How it checks.
    pub mode: Mode,
    /// Bound IPv4 addresses.
    pub v4: Box<[Ipv4Addr]>,
    /// Bound IPv6 addresses.
    pub v6: Box<[Ipv6Addr]>,
    /// Most addresses the port may bind (learn mode: a claim beyond is `address_limit`).
    pub max: usize,
    /// The port may answer DHCP (its server replies pass and are snooped); from any other
    /// port, in learn or strict mode, a DHCP server reply is `dhcp_server_untrusted`.
    pub dhcp_server: bool,
}

/// Every bound address of the switch: (zone, address) -> the port that owns it. A learn-mode
/// claim for an address another port owns is refused.
pub type Owners = HashMap<(u16, IpAddr), u16>;

/// How a claim was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum How {
    /// An ARP packet's sender address.
    Arp,
    /// A neighbour advertisement's target, or a duplicate-address probe's.
    Nd,
    /// An IP packet's source address.
    Ip,
}

impl How {
    /// Its name as shown.
    pub fn name(self) -> &'static str {
        match self {
            How::Arp => "arp",
            How::Nd => "nd",
            How::Ip => "ip",
        }
    }
}

/// True if `p` can announce an address (ARP, ICMPv6 neighbour discovery): checked on every
/// port, guarded or not, for discovery.
#[inline(always)]
pub fn announces(p: &Packet) -> bool {
    p.ethertype == ETHERTYPE_ARP || p.proto == ip_proto::ICMPV6
}

/// A port uses an address it has not bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The address.
    pub addr: IpAddr,
    /// How.
    pub how: How,
}

/// The guard's answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Go on.
    Pass,
    /// Go on, and punt the claim.
    Claim(Claim),
    /// Drop it.
    Drop(DropReason),
    /// Go on; it is a trusted DHCP server's reply: read it and punt the lease.
    Snoop,
}

const DHCP_SERVER: u16 = 67;
const DHCP_CLIENT: u16 = 68;
const ND_NS: u8 = 135;
const ND_NA: u8 = 136;
const MLD2_REPORT: u8 = 143;

impl Guard {
    /// True if the check must run on this port's frames (anything but off mode, or a frame
    /// that can announce an address: ARP, ICMPv6, and a DHCP server's UDP).
    #[inline(always)]
    pub fn wants(&self, p: &Packet) -> bool {
        self.mode != Mode::Off || announces(p) || (self.dhcp_server && p.proto == ip_proto::UDP)
    }

    fn bound(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.v4.contains(&a),
            IpAddr::V6(a) => self.v6.contains(&a),
        }
    }

    /// The answer for a use of `addr` by port `port` of zone `zone`.
    fn claim(
        &self,
        addr: IpAddr,
        how: How,
        zone: u16,
        port: u16,
        owners: &Owners,
        spoofed: DropReason,
    ) -> Check {
        if self.bound(addr) {
            return Check::Pass;
        }
        let claim = Check::Claim(Claim { addr, how });
        match self.mode {
            Mode::Off => claim,
            Mode::Strict => Check::Drop(spoofed),
            Mode::Learn => match owners.get(&(zone, addr)) {
                Some(&o) if o != port => Check::Drop(spoofed),
                // Ours already (published before this guard was): nothing to claim.
                Some(_) => Check::Pass,
                None if self.v4.len() + self.v6.len() >= self.max => {
                    Check::Drop(DropReason::AddressLimit)
                }
                None => claim,
            },
        }
    }

    /// Checks one frame that port `port` (zone `zone`, source MAC `smac`) sends: `p` is its
    /// parse, `h` its first bytes (from the Ethernet header).
    pub fn check(
        &self,
        p: &Packet,
        h: &[u8],
        smac: Mac,
        zone: u16,
        port: u16,
        owners: &Owners,
    ) -> Check {
        let enforce = self.mode != Mode::Off;
        match p.l3 {
            L3::NonIp if p.ethertype == ETHERTYPE_ARP => {
                self.arp(h, usize::from(p.l3_off), smac, zone, port, owners)
            }
            L3::NonIp => Check::Pass,
            L3::Ipv4 => {
                if p.proto == ip_proto::UDP && p.sport == DHCP_SERVER && p.dport == DHCP_CLIENT {
                    if self.dhcp_server {
                        return Check::Snoop;
                    }
                    if enforce {
                        return Check::Drop(DropReason::DhcpServerUntrusted);
                    }
                }
                if !enforce {
                    return Check::Pass;
                }
                if p.src == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
                    // Only a DHCP client has no address yet.
                    return if p.proto == ip_proto::UDP
                        && p.sport == DHCP_CLIENT
                        && p.dport == DHCP_SERVER
                    {
                        Check::Pass
                    } else {
                        Check::Drop(DropReason::IpSpoofed)
                    };
                }
                self.claim(p.src, How::Ip, zone, port, owners, DropReason::IpSpoofed)
            }
            L3::Ipv6 => self.v6(p, h, smac, zone, port, owners, enforce),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn v6(
        &self,
        p: &Packet,
        h: &[u8],
        smac: Mac,
        zone: u16,
        port: u16,
        owners: &Owners,
        enforce: bool,
    ) -> Check {
        let icmp = (p.proto == ip_proto::ICMPV6)
            .then_some(p.icmp)
            .flatten()
            .map(|i| i.ty);
        let unspecified = p.src == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        // The claim a neighbour message makes: an advertisement's target, or the target of a
        // duplicate-address probe (a solicitation from ::).
        let mut nd = Check::Pass;
        if let Some(ty @ (ND_NS | ND_NA)) = icmp {
            let off = usize::from(p.l4_off);
            let Some(body) = h.get(off..off + 24) else {
                return if enforce {
                    Check::Drop(DropReason::NdSpoofed)
                } else {
                    Check::Pass
                };
            };
            if enforce && !nd_lladdr_is(h, off + 24, usize::from(p.l4_len), smac) {
                return Check::Drop(DropReason::NdSpoofed);
            }
            let mut t = [0u8; 16];
            t.copy_from_slice(&body[8..24]);
            let target = IpAddr::V6(Ipv6Addr::from(t));
            if ty == ND_NA || unspecified {
                nd = self.claim(target, How::Nd, zone, port, owners, DropReason::NdSpoofed);
                if let Check::Drop(_) = nd {
                    return nd;
                }
            }
        }
        if !enforce {
            return nd;
        }
        if unspecified {
            // Only a probe or a multicast listener report comes from no address.
            return match icmp {
                Some(ND_NS | MLD2_REPORT) => nd,
                _ => Check::Drop(DropReason::IpSpoofed),
            };
        }
        match self.claim(p.src, How::Ip, zone, port, owners, DropReason::IpSpoofed) {
            Check::Pass => nd,
            Check::Claim(c) if nd == Check::Pass => Check::Claim(c),
            Check::Claim(_) => nd,
            other => other,
        }
    }

    fn arp(&self, h: &[u8], off: usize, smac: Mac, zone: u16, port: u16, owners: &Owners) -> Check {
        let enforce = self.mode != Mode::Off;
        let bad = if enforce {
            Check::Drop(DropReason::ArpMalformed)
        } else {
            Check::Pass
        };
        // Ethernet/IPv4 ARP: htype 1, ptype 0x0800, hlen 6, plen 4, then op, sha, spa, tha, tpa.
        let Some(a) = h.get(off..off + 28) else {
            return bad;
        };
        if a[..6] != [0, 1, 8, 0, 6, 4] {
            return bad;
        }
        if enforce && a[8..14] != smac.0 {
            return Check::Drop(DropReason::ArpSpoofed);
        }
        let spa = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
        if spa.is_unspecified() {
            // A probe (RFC 5227): it asks, it claims nothing.
            return Check::Pass;
        }
        self.claim(
            IpAddr::V4(spa),
            How::Arp,
            zone,
            port,
            owners,
            DropReason::ArpSpoofed,
        )
    }
}

/// True unless a neighbour message's link-layer address option (source or target) names
/// another MAC than `smac`. Options start at `start` in `h`; `end` bounds them (the ICMPv6
/// length); what lies past the copied bytes is not read.
fn nd_lladdr_is(h: &[u8], start: usize, l4_len: usize, smac: Mac) -> bool {
    let end = (start - 24 + l4_len).min(h.len());
    let mut at = start;
    // Each option is at least 8 bytes; a zero length ends the walk (RFC 4861: invalid).
    while at + 8 <= end {
        let (ty, len) = (h[at], usize::from(h[at + 1]) * 8);
        if len == 0 {
            return false;
        }
        if (ty == 1 || ty == 2) && h[at + 2..at + 8] != smac.0 {
            return false;
        }
        at += len;
    }
    true
}

/// A DHCP server's reply as the snooping reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpReply {
    /// The DHCP message type (option 53): 5 is an ACK, 6 a NAK.
    pub msg_type: u8,
    /// The client's hardware address.
    pub client: Mac,
    /// The address granted.
    pub yiaddr: Ipv4Addr,
    /// Lease time in seconds (option 51; `u32::MAX`: infinite, absent: 0).
    pub lease_secs: u32,
}

/// Bytes of a BOOTP message the worker reads for snooping (header, cookie and 336 bytes of
/// options: the message type and lease time come first in every server we know).
pub const DHCP_READ: usize = 576;

/// Reads a BOOTP reply (the UDP payload, possibly cut short): `None` unless it is a well-formed
/// Ethernet DHCP reply with a message type.
pub fn dhcp_reply(b: &[u8]) -> Option<DhcpReply> {
    let head = b.get(..240)?;
    // op 2 (reply), htype 1 (Ethernet), hlen 6; the magic cookie.
    if head[0] != 2 || head[1] != 1 || head[2] != 6 || head[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let yiaddr = Ipv4Addr::new(head[16], head[17], head[18], head[19]);
    let mut client = [0u8; 6];
    client.copy_from_slice(&head[28..34]);
    let (mut msg_type, mut lease) = (None, 0u32);
    let mut at = 240;
    while at < b.len() {
        match b[at] {
            0 => at += 1,
            255 => break,
            code => {
                let len = usize::from(*b.get(at + 1)?);
                let v = b.get(at + 2..at + 2 + len)?;
                match (code, len) {
                    (53, 1) => msg_type = Some(v[0]),
                    (51, 4) => lease = u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                    _ => {}
                }
                at += 2 + len;
            }
        }
    }
    Some(DhcpReply {
        msg_type: msg_type?,
        client: Mac(client),
        yiaddr,
        lease_secs: lease,
    })
}

#[cfg(test)]
mod tests;
