//! Building test frames.

/// Ethernet header length.
const ETH_LEN: usize = 14;
/// IPv4 header length without options.
const IPV4_LEN: usize = 20;
/// UDP header length.
const UDP_LEN: usize = 8;

/// The Internet checksum (RFC 1071) of `data`, as stored in a header.
pub fn ipv4_checksum(data: &[u8]) -> u16 {
    fold(sum16(data))
}

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last byte is the high
/// half of a word), not yet folded: partial sums of a header add up before `fold`.
#[inline]
pub(crate) fn sum16(data: &[u8]) -> u32 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a one's-complement sum into 16 bits and complements it: the checksum field's value.
#[inline]
pub(crate) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Cannot truncate: the loop above folded `sum` into 16 bits.
    !(sum as u16)
}

/// Builds an Ethernet II / IPv4 / UDP frame (no VLAN tag, no FCS) with a valid IPv4 header
/// checksum and a zero (absent) UDP checksum. The frame is not padded to 60 bytes.
///
/// # Panics
/// If the payload does not fit in an IPv4 datagram (more than 65507 bytes).
pub fn build_udp_frame(
    dst: [u8; 6],
    src: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = u16::try_from(UDP_LEN + payload.len()).expect("UDP payload too large");
    let ip_len = u16::try_from(IPV4_LEN + UDP_LEN + payload.len()).expect("UDP payload too large");
    let mut f = Vec::with_capacity(ETH_LEN + usize::from(ip_len));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4: version 4, IHL 5, DSCP/ECN 0, total length, id 0, flags DF, TTL 64, proto UDP.
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&dst_ip);
    let csum = ipv4_checksum(&f[ip_start..ip_start + IPV4_LEN]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The classic example header from Wikipedia's "IPv4 header checksum" article.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&hdr), 0xb861);
        // Odd length: trailing byte is padded with zero.
        assert_eq!(ipv4_checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn udp_frame_bytes() {
        let f = build_udp_frame(
            [0x02, 0, 0, 0, 0, 0x0b],
            [0x02, 0, 0, 0, 0, 0x0a],
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            1234,
            5678,
            b"abcd",
        );
        #[rustfmt::skip]
        let expect: &[u8] = &[
            0x02, 0, 0, 0, 0, 0x0b,  0x02, 0, 0, 0, 0, 0x0a,  0x08, 0x00,
            0x45, 0x00, 0x00, 32,  0x00, 0x00, 0x40, 0x00,  64, 17,  0x26, 0xcb,
            10, 0, 0, 1,  10, 0, 0, 2,
            0x04, 0xd2,  0x16, 0x2e,  0x00, 12,  0x00, 0x00,
            b'a', b'b', b'c', b'd',
        ];
        assert_eq!(f, expect);
        // A header with a correct checksum sums to zero.
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
    }
}
