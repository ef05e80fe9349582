//! Zero-copy views of the headers the switch reads.

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit is set.
    #[inline]
    pub fn is_group(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// All zero.
    #[inline]
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    /// The address as the low 48 bits of a u64.
    #[inline]
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The inverse of `to_u64`.
    pub fn from_u64(v: u64) -> Mac {
        let b = v.to_be_bytes();
        Mac([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts
                .next()
                .ok_or("expected six hex bytes separated by ':'")?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err("expected six hex bytes separated by ':'");
            }
            *b =
                u8::from_str_radix(p, 16).map_err(|_| "expected six hex bytes separated by ':'")?;
        }
        if parts.next().is_some() {
            return Err("expected six hex bytes separated by ':'");
        }
        Ok(Mac(out))
    }
}

// EtherTypes: defined here only (`parse` re-exports the ones it dispatches on).

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of 802.1Q VLAN tags.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType of 802.1ad (QinQ) service tags.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Length of an untagged Ethernet header.
pub const ETH_HEADER_LEN: usize = 14;

/// A view of an Ethernet header. After `new_checked` succeeds no accessor panics.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` if it holds at least an Ethernet header.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= ETH_HEADER_LEN).then_some(EthernetFrame { buffer })
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> Mac {
        let b = self.buffer.as_ref();
        Mac([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> Mac {
        let b = self.buffer.as_ref();
        Mac([b[6], b[7], b[8], b[9], b[10], b[11]])
    }

    /// EtherType (or TPID, for a tagged frame).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[12], b[13]])
    }

    /// Whether the frame carries an 802.1Q or 802.1ad tag.
    #[inline]
    pub fn is_tagged(&self) -> bool {
        matches!(self.ethertype(), ETHERTYPE_VLAN | ETHERTYPE_QINQ)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header() {
        let f = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x06, 0, 1,
        ];
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(e.dst(), Mac::BROADCAST);
        assert!(e.dst().is_group());
        assert_eq!(e.src().to_string(), "52:54:00:00:00:01");
        assert!(!e.src().is_group());
        assert_eq!(e.ethertype(), 0x0806);
        assert!(!e.is_tagged());
        assert!(EthernetFrame::new_checked(&f[..13]).is_none());
    }

    #[test]
    fn mac_round_trips() {
        let m: Mac = "02:00:00:ab:cd:ef".parse().unwrap();
        assert_eq!(Mac::from_u64(m.to_u64()), m);
        assert!("02:00:00:ab:cd".parse::<Mac>().is_err());
        assert!("02:00:00:ab:cd:ef:01".parse::<Mac>().is_err());
        assert!("zz:00:00:ab:cd:ef".parse::<Mac>().is_err());
    }
}
