//! Per-port counters and named drop reasons.
//!
//! Each worker owns one `Counters` block and is its only writer: an increment is a relaxed load
//! and a relaxed store (plain `mov`s, no `lock` prefix), never a shared atomic read-modify-write.
//! The control thread sums the blocks of all workers when asked.

use std::sync::atomic::{AtomicU64, Ordering};

use bulwark_vhost::{ChainError, RxError};

use crate::parse::ParseError;

/// Most ports a switch holds (port ids are `0..MAX_PORTS`).
pub const MAX_PORTS: usize = 1024;

macro_rules! drop_reasons {
    ($($variant:ident = $name:literal : $doc:literal,)*) => {
        /// Why a frame was dropped. Every drop in the data path has one, and a counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum DropReason { $(#[doc = $doc] $variant,)* }

        impl DropReason {
            /// All reasons, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// The name used by the API and the CLI.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
            /// A one-line description.
            pub fn description(self) -> &'static str {
                match self { $(DropReason::$variant => $doc,)* }
            }
        }
    };
}

drop_reasons! {
    DescOutOfBounds = "desc_out_of_bounds": "guest descriptor points outside guest memory",
    DescChainTooLong = "desc_chain_too_long": "guest descriptor chain too long or looping",
    DescLenOverflow = "desc_len_overflow": "guest descriptor lengths overflow",
    DescBadFlags = "desc_bad_flags": "guest descriptor has the wrong direction or INDIRECT flag",
    DescNextOutOfRange = "desc_next_out_of_range": "guest descriptor's next index is outside the table",
    RingBroken = "ring_broken": "guest ring indexes are inconsistent; ring stopped until reset",
    FrameTooShort = "frame_too_short": "frame shorter than an Ethernet header",
    FrameTooLong = "frame_too_long": "frame longer than the switch's maximum frame size",
    VlanTagged = "vlan_tagged": "802.1Q-tagged frame (VLAN id other than 0) on an access port",
    BadSourceMac = "bad_source_mac": "multicast or zero source MAC address",
    SrcMacSpoofed = "src_mac_spoofed": "source MAC is not the MAC the port is bound to",
    SamePort = "same_port": "destination MAC was learned on the ingress port",
    NoDestination = "no_destination": "no other port in the segment to flood to",
    PortDown = "port_down": "destination port's receive queue is not running",
    RxNoBuffers = "rx_no_buffers": "destination guest posted no receive buffers",
    RxBufferTooSmall = "rx_buffer_too_small": "destination guest's receive buffer too small",
    RxBadDesc = "rx_bad_desc": "destination guest's receive descriptor is invalid",
    RxRingBroken = "rx_ring_broken": "destination guest's receive ring is broken",
    ParseTruncated = "parse_truncated": "a header does not fit in the frame or in its IP packet",
    ParseBadIpVersion = "parse_bad_ip_version": "the IP version field disagrees with the EtherType",
    ParseBadIhl = "parse_bad_ihl": "the IPv4 header length field is below 5 words",
    ParseBadIpLength = "parse_bad_ip_length": "the IP length field is larger than the frame or smaller than the header",
    ParseBadL4Header = "parse_bad_l4_header": "a transport header is malformed (TCP data offset below 5 words or beyond the segment)",
    ParseTooManyExtHeaders = "parse_too_many_ext_headers": "the IPv6 extension-header chain is longer than the parser walks",
    ParseExtHeaderBeyondHeadroom = "parse_ext_header_beyond_headroom": "the IPv6 extension-header chain runs past the parsing headroom",
    NonIpDenied = "non_ip_denied_egress": "non-IP frame the vNIC sent, refused by its non-IP rule",
    NonIpDeniedIngress = "non_ip_denied_ingress": "non-IP frame for the vNIC, refused by its non-IP rule",
    NdDenied = "nd_denied_egress": "ICMPv6 neighbour discovery the vNIC sent, refused by its ND rule",
    NdDeniedIngress = "nd_denied_ingress": "ICMPv6 neighbour discovery for the vNIC, refused by its ND rule",
    IpFragment = "ip_fragment": "non-first IP fragment (fragments after the first are not tracked)",
    PolicyDrop = "policy_drop_egress": "the vNIC's egress rule (or default) drops what it sent",
    PolicyDropIngress = "policy_drop_ingress": "the vNIC's ingress rule (or default) drops what was sent to it",
    PolicyReject = "policy_reject_egress": "the vNIC's egress rule rejects what it sent (the sender is answered)",
    PolicyRejectIngress = "policy_reject_ingress": "the vNIC's ingress rule rejects what was sent to it (the sender is answered)",
    PolicyRevoked = "policy_revoked_egress": "the vNIC's egress rules no longer allow the connection",
    PolicyRevokedIngress = "policy_revoked_ingress": "the vNIC's ingress rules no longer allow the connection",
    TcpBadFlags = "tcp_bad_flags": "impossible TCP flag combination",
    TcpOutOfWindow = "tcp_out_of_window": "TCP segment outside the connection's window",
    TcpNoConnection = "tcp_no_connection": "TCP segment that cannot open a connection (not a SYN)",
    IcmpUnrelated = "icmp_unrelated": "ICMP error that quotes no tracked connection, or goes to another vNIC than the quoted packet's sender",
    IcmpQuoteOutOfWindow = "icmp_quote_out_of_window": "ICMP error quoting a TCP sequence number outside its connection's window",
    IcmpNoConnection = "icmp_no_connection": "ICMP echo reply without a request",
    CtTableFull = "ct_table_full": "connection table full",
    CtVnicLimit = "ct_vnic_limit": "vNIC at its maximum number of connections",
    CtVnicRate = "ct_vnic_rate": "vNIC opening connections faster than its limit",
    IpSpoofed = "ip_spoofed": "source IP address the vNIC may not use (spoof guard)",
    ArpSpoofed = "arp_spoofed": "ARP that claims an address the vNIC may not use, or names another MAC (spoof guard)",
    NdSpoofed = "nd_spoofed": "neighbour discovery that claims an address the vNIC may not use, or names another MAC (spoof guard)",
    ArpMalformed = "arp_malformed": "ARP frame that is not Ethernet/IPv4 ARP or is cut short (spoof guard)",
    AddressLimit = "address_limit": "new source address beyond the vNIC's address limit (spoof guard, learn mode)",
    DhcpServerUntrusted = "dhcp_server_untrusted": "DHCP server reply from a vNIC that is not a DHCP server (spoof guard)",
}

impl DropReason {
    /// The reason as counted on a vNIC whose *ingress* policy made the drop. The filter
    /// reports policy drops in their egress form, with the rule (and so the vNIC and
    /// direction) that refused; the switch counts them on that vNIC, in this form for an
    /// ingress rule. Reasons that have no direction are returned as they are.
    pub fn ingress(self) -> DropReason {
        match self {
            DropReason::NonIpDenied => DropReason::NonIpDeniedIngress,
            DropReason::NdDenied => DropReason::NdDeniedIngress,
            DropReason::PolicyDrop => DropReason::PolicyDropIngress,
            DropReason::PolicyReject => DropReason::PolicyRejectIngress,
            DropReason::PolicyRevoked => DropReason::PolicyRevokedIngress,
            r => r,
        }
    }
}

/// Number of drop reasons.
pub const N_REASONS: usize = DropReason::ALL.len();

impl From<ChainError> for DropReason {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::OutOfBounds => DropReason::DescOutOfBounds,
            ChainError::TooLong => DropReason::DescChainTooLong,
            ChainError::LenOverflow => DropReason::DescLenOverflow,
            ChainError::BadFlags => DropReason::DescBadFlags,
            ChainError::NextOutOfRange => DropReason::DescNextOutOfRange,
        }
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Truncated => DropReason::ParseTruncated,
            ParseError::BadIpVersion => DropReason::ParseBadIpVersion,
            ParseError::BadIhl => DropReason::ParseBadIhl,
            ParseError::BadIpLength => DropReason::ParseBadIpLength,
            ParseError::BadL4Header => DropReason::ParseBadL4Header,
            ParseError::TooManyExtHeaders => DropReason::ParseTooManyExtHeaders,
            ParseError::ExtHeaderBeyondHeadroom => DropReason::ParseExtHeaderBeyondHeadroom,
        }
    }
}

impl From<RxError> for DropReason {
    fn from(e: RxError) -> Self {
        match e {
            RxError::NoBuffers => DropReason::RxNoBuffers,
            RxError::BufferTooSmall => DropReason::RxBufferTooSmall,
            RxError::BadChain(_) => DropReason::RxBadDesc,
            RxError::Broken => DropReason::RxRingBroken,
        }
    }
}

/// One worker's counters for one port.
#[derive(Debug)]
pub struct PortCounters {
    /// Frames received from the port's guest.
    pub rx_packets: AtomicU64,
    /// Bytes (Ethernet frame, no virtio header) received from the port's guest.
    pub rx_bytes: AtomicU64,
    /// Frames delivered to the port's guest.
    pub tx_packets: AtomicU64,
    /// Bytes delivered to the port's guest.
    pub tx_bytes: AtomicU64,
    /// Drops by reason, indexed by `DropReason as usize`.
    pub drops: [AtomicU64; N_REASONS],
}

/// Adds `v` to a counter that only the calling worker writes.
#[inline]
pub fn bump(c: &AtomicU64, v: u64) {
    // Single writer: load + store is exact and avoids a locked read-modify-write. Relaxed: the
    // readers (control) only need an eventually consistent value.
    c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}

impl Default for PortCounters {
    fn default() -> Self {
        PortCounters {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl PortCounters {
    /// Counts a drop.
    #[inline]
    pub fn drop(&self, r: DropReason) {
        bump(&self.drops[r as usize], 1);
    }
}

/// A worker's counter block: one `PortCounters` per port id.
#[derive(Debug)]
pub struct Counters {
    ports: Box<[PortCounters]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            ports: (0..MAX_PORTS).map(|_| PortCounters::default()).collect(),
        }
    }
}

impl Counters {
    /// The counters of port `id`.
    #[inline]
    pub fn port(&self, id: u16) -> &PortCounters {
        &self.ports[usize::from(id) % MAX_PORTS]
    }
}

/// A plain copy of a port's counters, summed over workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received from the guest.
    pub rx_packets: u64,
    /// Bytes received from the guest.
    pub rx_bytes: u64,
    /// Frames delivered to the guest.
    pub tx_packets: u64,
    /// Bytes delivered to the guest.
    pub tx_bytes: u64,
    /// Drops by reason.
    pub drops: [u64; N_REASONS],
}

impl Default for PortStats {
    fn default() -> Self {
        PortStats {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            drops: [0; N_REASONS],
        }
    }
}

impl PortStats {
    /// Adds a worker's counters.
    pub fn add(&mut self, c: &PortCounters) {
        self.rx_packets += c.rx_packets.load(Ordering::Relaxed);
        self.rx_bytes += c.rx_bytes.load(Ordering::Relaxed);
        self.tx_packets += c.tx_packets.load(Ordering::Relaxed);
        self.tx_bytes += c.tx_bytes.load(Ordering::Relaxed);
        for (d, s) in self.drops.iter_mut().zip(&c.drops) {
            *d += s.load(Ordering::Relaxed);
        }
    }

    /// `self - base`, for counters since a port was (re)added under a reused id.
    pub fn since(&self, base: &PortStats) -> PortStats {
        let mut out = PortStats {
            rx_packets: self.rx_packets.wrapping_sub(base.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_sub(base.rx_bytes),
            tx_packets: self.tx_packets.wrapping_sub(base.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_sub(base.tx_bytes),
            drops: [0; N_REASONS],
        };
        for i in 0..N_REASONS {
            out.drops[i] = self.drops[i].wrapping_sub(base.drops[i]);
        }
        out
    }

    /// Total drops over all reasons.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parse_error_has_its_own_reason() {
        let mut seen = Vec::new();
        for &e in ParseError::ALL {
            let r = DropReason::from(e);
            assert!(r.name().starts_with("parse_"), "{e:?} counts as {r:?}");
            assert!(!seen.contains(&r), "{e:?} shares {r:?}");
            seen.push(r);
        }
    }

    #[test]
    fn reason_names_are_unique() {
        for (i, a) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i, "ALL is in discriminant order");
            for b in &DropReason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
