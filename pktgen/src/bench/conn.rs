//! `pktgen bench --mode conn`: TCP connection setup, as many per second as the switch allows.
//!
//! Port 0 is the client and port 1 the server. Connection c goes from 10.254.0.1, port
//! 1024 + c % 64000, to (10.253.0.0 + c / 64000):80, so every connection has its own
//! addresses for 4 billion connections. Per connection four frames cross the switch: the SYN,
//! the server's SYN-ACK, the client's ACK (the connection counts when the server receives
//! it), and a RST from the client that closes it, as a load tester's `SO_LINGER 0` close does,
//! so a tracker can forget it. Both ends are stateless: the client's initial sequence number
//! is a hash of c, the server's a hash of the client's, and every SYN-ACK and ACK is checked
//! against them. Replies go out before new SYNs, so handshakes finish under load.

use std::collections::VecDeque;

use crate::frame::{fold, sum16};
use serde::Serialize;

use crate::VirtioNet;

use super::{Args, Latency, Traffic, BURST, IP_DST_BASE, IP_SRC};

/// TCP flags.
const FIN: u8 = 0x01;
pub(super) const SYN: u8 = 0x02;
pub(super) const RST: u8 = 0x04;
pub(super) const ACK: u8 = 0x10;
/// A frame: Ethernet, IPv4 and TCP headers without options, padded to the 60-byte minimum.
const LEN: usize = 60;
const SERVER_PORT: u16 = 80;
const PORTS: u32 = 64_000;
/// Replies waiting for room in a tx ring, per port; more are counted and dropped.
const PENDING_MAX: usize = 1 << 16;

/// The client's initial sequence number for connection `c`.
pub(super) fn client_isn(c: u32) -> u32 {
    c.wrapping_mul(0x9e37_79b1).rotate_left(7) ^ 0x5bd1_e995
}

/// The server's initial sequence number, from the client's.
pub(super) fn server_isn(client: u32) -> u32 {
    client.wrapping_mul(0x85eb_ca6b).rotate_left(13) ^ 0xc2b2_ae35
}

/// One TCP segment's header fields.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seg {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

/// A 60-byte frame holding `s`, with valid IPv4 and TCP checksums.
pub(super) fn frame(s: &Seg) -> [u8; LEN] {
    frame_ws(s, None)
}

/// Like `frame`, with a window-scale option (for SYNs) when `ws` is given.
pub(super) fn frame_ws(s: &Seg, ws: Option<u8>) -> [u8; LEN] {
    let tcp_len: u16 = if ws.is_some() { 24 } else { 20 };
    let mut f = [0u8; LEN];
    f[0..6].copy_from_slice(&s.dst_mac);
    f[6..12].copy_from_slice(&s.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&(20 + tcp_len).to_be_bytes());
    f[20] = 0x40; // DF
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&s.src.to_be_bytes());
    f[30..34].copy_from_slice(&s.dst.to_be_bytes());
    let c = fold(sum16(&f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&s.sport.to_be_bytes());
    f[36..38].copy_from_slice(&s.dport.to_be_bytes());
    f[38..42].copy_from_slice(&s.seq.to_be_bytes());
    f[42..46].copy_from_slice(&s.ack.to_be_bytes());
    f[46] = ((tcp_len / 4) as u8) << 4;
    f[47] = s.flags;
    f[48..50].copy_from_slice(&65_535u16.to_be_bytes());
    if let Some(shift) = ws {
        // NOP, window scale (kind 3, length 3).
        f[54..58].copy_from_slice(&[1, 3, 3, shift]);
    }
    let end = 34 + usize::from(tcp_len);
    // Pseudo-header: addresses, protocol, TCP length.
    let pseudo = sum16(&f[26..34]) + 6 + u32::from(tcp_len);
    let c = fold(pseudo + sum16(&f[34..end]));
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

/// A received segment's fields (`None` if the frame is not IPv4/TCP without options).
pub(super) fn parse(f: &[u8]) -> Option<Seg> {
    if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 6 {
        return None;
    }
    let u32_at = |o: usize| u32::from_be_bytes(f[o..o + 4].try_into().expect("4 bytes"));
    let u16_at = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    Some(Seg {
        dst_mac: f[0..6].try_into().expect("6 bytes"),
        src_mac: f[6..12].try_into().expect("6 bytes"),
        src: u32_at(26),
        dst: u32_at(30),
        sport: u16_at(34),
        dport: u16_at(36),
        seq: u32_at(38),
        ack: u32_at(42),
        flags: f[47] & (FIN | SYN | RST | ACK),
    })
}

/// Connection-setup traffic (see the module docs).
pub(super) struct Conn {
    macs: [[u8; 6]; 2],
    /// The next connection to open.
    next: u32,
    hs: Handshakes,
}

/// Both ends' handshake state: the replies they owe and what they counted.
#[derive(Default)]
struct Handshakes {
    /// Frames to send before anything new, per port.
    pending: [VecDeque<[u8; LEN]>; 2],
    completed: u64,
    /// Frames that were not what the handshake expected (counted, ignored).
    unexpected: u64,
    /// Replies dropped because `pending` was full.
    overflow: u64,
}

impl Conn {
    pub(super) fn new(a: &Args) -> Conn {
        Conn {
            macs: a.macs,
            next: 0,
            hs: Handshakes::default(),
        }
    }

    fn syn(&self, c: u32) -> [u8; LEN] {
        frame(&Seg {
            src_mac: self.macs[0],
            dst_mac: self.macs[1],
            src: IP_SRC,
            dst: IP_DST_BASE.wrapping_add(c / PORTS),
            sport: 1024 + (c % PORTS) as u16,
            dport: SERVER_PORT,
            seq: client_isn(c),
            ack: 0,
            flags: SYN,
        })
    }

    /// Frames that broke the handshake, and replies lost to a full queue.
    pub(super) fn anomalies(&self) -> (u64, u64) {
        (self.hs.unexpected, self.hs.overflow)
    }
}

impl Handshakes {
    fn push(&mut self, port: usize, f: [u8; LEN]) {
        if self.pending[port].len() < PENDING_MAX {
            self.pending[port].push_back(f);
        } else {
            self.overflow += 1;
        }
    }

    /// Port `port` received frame `f` (its first 54 bytes at least).
    fn on_frame(&mut self, port: usize, f: &[u8]) {
        let Some(s) = parse(f) else {
            self.unexpected += 1;
            return;
        };
        let reply = |flags, seq, ack| Seg {
            src_mac: s.dst_mac,
            dst_mac: s.src_mac,
            src: s.dst,
            dst: s.src,
            sport: s.dport,
            dport: s.sport,
            seq,
            ack,
            flags,
        };
        match (port, s.flags) {
            // Server: a SYN gets its SYN-ACK.
            (1, SYN) => {
                let isn = server_isn(s.seq);
                self.push(1, frame(&reply(SYN | ACK, isn, s.seq.wrapping_add(1))));
            }
            // Server: the ACK that completes a handshake.
            (1, ACK) if s.ack == server_isn(s.seq.wrapping_sub(1)).wrapping_add(1) => {
                self.completed += 1;
            }
            (1, RST) => {}
            // Client: a SYN-ACK for one of ours gets the ACK, then the RST.
            (0, f)
                if f == SYN | ACK
                    && s.ack == client_isn(conn_of(s.dport, s.src)).wrapping_add(1) =>
            {
                let (seq, ack) = (s.ack, s.seq.wrapping_add(1));
                self.push(0, frame(&reply(ACK, seq, ack)));
                self.push(0, frame(&reply(RST, seq, 0)));
            }
            _ => self.unexpected += 1,
        }
    }
}

/// The connection number of a segment the client sends or receives.
fn conn_of(client_port: u16, server_ip: u32) -> u32 {
    server_ip.wrapping_sub(IP_DST_BASE) * PORTS + u32::from(client_port.wrapping_sub(1024))
}

/// `--mode conn`'s members of the JSON result.
#[derive(Debug, Serialize)]
pub(super) struct ConnExtra {
    /// Frames that were not what the handshake expected.
    pub(super) handshake_unexpected: u64,
    /// Replies dropped because a port's queue of pending replies was full.
    pub(super) reply_overflow: u64,
}

impl Traffic for Conn {
    fn send(
        &mut self,
        port: usize,
        _q: usize,
        dev: &mut VirtioNet,
        max: usize,
        _lat: &Latency,
    ) -> usize {
        let max = max.min(BURST);
        let mut batch = [[0u8; LEN]; BURST];
        let mut n = 0;
        while n < max {
            let Some(f) = self.hs.pending[port].pop_front() else {
                break;
            };
            batch[n] = f;
            n += 1;
        }
        if port == 0 {
            while n < max {
                batch[n] = self.syn(self.next);
                self.next = self.next.wrapping_add(1);
                n += 1;
            }
        }
        let mut i = 0;
        let sent = dev.send_in_place(LEN, n, |_, slot| {
            slot.write(0, &batch[i]);
            i += 1;
        });
        // Frames the ring had no room for wait for the next pass; SYNs not sent are simply
        // opened later (their numbers are taken back).
        for f in batch[sent..n].iter().rev() {
            let s = parse(f).expect("our own frame");
            if s.flags == SYN {
                self.next = self.next.wrapping_sub(1);
            } else {
                self.hs.pending[port].push_front(*f);
            }
        }
        sent
    }

    fn recv(
        &mut self,
        port: usize,
        _q: usize,
        dev: &mut VirtioNet,
        _lat: &mut Latency,
    ) -> Result<usize, crate::Error> {
        let hs = &mut self.hs;
        dev.recv_prefix(54, |f| hs.on_frame(port, f))
    }

    fn events(&self) -> Option<u64> {
        Some(self.hs.completed)
    }

    type Extra = ConnExtra;

    fn extra(&self) -> ConnExtra {
        let (handshake_unexpected, reply_overflow) = self.anomalies();
        ConnExtra {
            handshake_unexpected,
            reply_overflow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames carry valid checksums and parse back; connection numbers round-trip.
    #[test]
    fn segments_are_valid_tcp() {
        for c in [0u32, 1, 63_999, 64_000, 12_345_678] {
            let conn = Conn::new(&Args::for_test());
            let f = conn.syn(c);
            assert_eq!(crate::ipv4_checksum(&f[14..34]), 0, "ip checksum");
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&f[26..34]);
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            pseudo.extend_from_slice(&f[34..54]);
            assert_eq!(crate::ipv4_checksum(&pseudo), 0, "tcp checksum");
            let s = parse(&f).unwrap();
            assert_eq!(s.flags, SYN);
            assert_eq!(s.seq, client_isn(c));
            assert_eq!(conn_of(s.sport, s.dst), c);
        }
    }

    /// A whole handshake between the two ends, frames handed over by hand: one completed
    /// connection; a SYN-ACK for a connection never opened is refused.
    #[test]
    fn handshake_completes() {
        let mut t = Conn::new(&Args::for_test());
        let syn = t.syn(77);
        t.hs.on_frame(1, &syn);
        let synack = t.hs.pending[1].pop_front().expect("a SYN-ACK");
        let sa = parse(&synack).unwrap();
        assert_eq!(sa.flags, SYN | ACK);
        t.hs.on_frame(0, &synack);
        let ack = t.hs.pending[0].pop_front().expect("an ACK");
        let rst = t.hs.pending[0].pop_front().expect("a RST");
        assert_eq!(
            (parse(&ack).unwrap().flags, parse(&rst).unwrap().flags),
            (ACK, RST)
        );
        assert_eq!(t.hs.completed, 0);
        t.hs.on_frame(1, &ack);
        t.hs.on_frame(1, &rst);
        assert_eq!(t.hs.completed, 1);
        assert_eq!(t.anomalies(), (0, 0));
        // The same SYN-ACK with a wrong acknowledgement number.
        let mut bad = synack;
        bad[45] ^= 1;
        t.hs.on_frame(0, &bad);
        assert!(t.hs.pending[0].is_empty());
        assert_eq!(t.anomalies(), (1, 0));
    }
}
