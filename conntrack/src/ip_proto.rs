//! IP protocol numbers, defined once for every crate (the parser, the classifier, the
//! connection table, the control plane's policy and its CLI), and the names operators write.

/// IPv6 hop-by-hop options.
pub const HOPOPT: u8 = 0;
/// ICMP for IPv4.
pub const ICMP: u8 = 1;
/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// IPv6 routing header.
pub const IPV6_ROUTE: u8 = 43;
/// IPv6 fragment header.
pub const IPV6_FRAG: u8 = 44;
/// Encapsulating security payload.
pub const ESP: u8 = 50;
/// Authentication header.
pub const AH: u8 = 51;
/// ICMP for IPv6.
pub const ICMPV6: u8 = 58;
/// IPv6 "no next header".
pub const IPV6_NONXT: u8 = 59;
/// IPv6 destination options.
pub const IPV6_OPTS: u8 = 60;
/// SCTP.
pub const SCTP: u8 = 132;
/// UDP-Lite.
pub const UDPLITE: u8 = 136;

/// The names operators write for protocols (in policies, the API and the CLI), with their
/// numbers. `name` and `by_name` read this table.
pub const NAMES: &[(&str, u8)] = &[
    ("tcp", TCP),
    ("udp", UDP),
    ("icmp", ICMP),
    ("icmpv6", ICMPV6),
    ("sctp", SCTP),
];

/// The name of protocol `p`, if it has one.
pub fn name(p: u8) -> Option<&'static str> {
    NAMES.iter().find(|&&(_, n)| n == p).map(|&(s, _)| s)
}

/// The protocol named `s` (any case; `ipv6-icmp`, the IANA keyword, is `icmpv6`).
pub fn by_name(s: &str) -> Option<u8> {
    if s.eq_ignore_ascii_case("ipv6-icmp") {
        return Some(ICMPV6);
    }
    NAMES
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(s))
        .map(|&(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &(s, n) in NAMES {
            assert_eq!(name(n), Some(s));
            assert_eq!(by_name(s), Some(n));
            assert_eq!(by_name(&s.to_ascii_uppercase()), Some(n));
        }
        assert_eq!(by_name("ipv6-icmp"), Some(ICMPV6));
        assert_eq!(by_name("gre"), None);
        assert_eq!(name(47), None);
    }
}
