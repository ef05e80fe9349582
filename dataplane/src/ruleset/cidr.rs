//! `Cidr`: an IPv4 or IPv6 prefix, the address part of a rule.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address prefix such as `10.0.0.0/8` or `fd00::/8`.
///
/// Values made by [`Cidr::new`] or parsed with [`FromStr`] are normalised: host bits are masked
/// off, so `10.1.2.3/8` becomes `10.0.0.0/8`. The fields are public, so a caller can also build
/// a value that is not normalised; [`Ruleset::compile`](super::Ruleset::compile) masks host bits
/// itself and rejects a prefix longer than the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix: u8,
}

/// Errors from [`Cidr::new`] and from parsing a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// the address part is not an IPv4 or IPv6 address
    Address(String),
    /// the prefix length is not a number
    PrefixSyntax(String),
    /// the prefix length is longer than the address
    PrefixTooLong {
        /// The prefix length given (`u32::MAX` if it did not fit).
        prefix: u32,
        /// 32 or 128.
        max: u8,
    },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::Address(s) => write!(f, "{s:?} is not an IPv4 or IPv6 address"),
            CidrError::PrefixSyntax(s) => write!(f, "prefix length {s:?} is not a number"),
            CidrError::PrefixTooLong { prefix, max } => {
                write!(
                    f,
                    "prefix length {prefix} is longer than the address (max {max})"
                )
            }
        }
    }
}

impl std::error::Error for CidrError {}

/// Bits in an address of the family of `addr`.
pub(crate) fn addr_bits(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The first and last address of an IPv4 prefix, as integers; host bits of `addr` are ignored.
/// `prefix` must be at most 32.
pub(crate) fn v4_range(addr: Ipv4Addr, prefix: u8) -> (u32, u32) {
    let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    let net = u32::from(addr) & !host;
    (net, net | host)
}

/// The first and last address of an IPv6 prefix, as integers; host bits of `addr` are ignored.
/// `prefix` must be at most 128.
pub(crate) fn v6_range(addr: Ipv6Addr, prefix: u8) -> (u128, u128) {
    let host = u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    let net = u128::from(addr) & !host;
    (net, net | host)
}

impl Cidr {
    /// A prefix of `prefix` bits of `addr`, with host bits masked off.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = addr_bits(addr);
        if prefix > max {
            return Err(CidrError::PrefixTooLong {
                prefix: u32::from(prefix),
                max,
            });
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(v4_range(a, prefix).0)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(v6_range(a, prefix).0)),
        };
        Ok(Cidr { addr, prefix })
    }

    /// The prefix that holds exactly `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: addr_bits(addr),
        }
    }

    /// True for an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// True if `addr` is of this prefix's family and inside it. A prefix longer than its
    /// address contains nothing.
    pub fn contains(&self, addr: IpAddr) -> bool {
        if self.prefix > addr_bits(self.addr) {
            return false;
        }
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let (lo, hi) = v4_range(net, self.prefix);
                (lo..=hi).contains(&u32::from(a))
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let (lo, hi) = v6_range(net, self.prefix);
                (lo..=hi).contains(&u128::from(a))
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `addr/prefix`, or a bare address as a host prefix (/32 or /128).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Address(a.to_string()))?;
        let prefix = match p {
            None => addr_bits(addr),
            // u8::from_str accepts a leading '+'; prefix lengths are plain digits.
            Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(CidrError::PrefixSyntax(p.to_string()))
            }
            Some(p) => {
                let max = addr_bits(addr);
                let n: u32 = p.parse().unwrap_or(u32::MAX);
                match u8::try_from(n) {
                    Ok(n) if n <= max => n,
                    _ => return Err(CidrError::PrefixTooLong { prefix: n, max }),
                }
            }
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
