//! TCP connection tracking with sequence-window checks.
//!
//! The algorithm is the one OpenBSD pf uses (Guido van Rooij's "Real stateful TCP packet
//! filtering"), as Open vSwitch's userspace conntrack also does: each peer keeps the highest
//! sequence number it sent (`seqlo`), the highest it may send (`seqhi`: what the other end acked
//! plus its window), its largest window and its window scale. A segment is in-window when its
//! last byte fits the other end's window, it is at most one window behind, and its ack is
//! within one (scaled) window of what the other end sent. RSTs must sit at (or next to) the
//! expected sequence number.
//!
//! This module is pure: `TcpConn` is a 24-byte value, `update` maps (state, segment) to a new
//! state and a verdict. The table (`crate::table`) stores the value and serializes updates of
//! one connection; the logic here is tested table-style on its own.

/// TCP flag bits.
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer significant.
    pub const URG: u8 = 0x20;
}
use flags::*;

/// Largest window scale shift (RFC 7323).
const MAX_WSCALE: u8 = 14;
/// Window-scale byte: the option was seen on this peer's SYN.
const WSCALE_SEEN: u8 = 0x80;
/// Window-scale byte: unknown (connection picked up mid-stream): be liberal.
const WSCALE_UNKNOWN: u8 = 0x40;
const WSCALE_MASK: u8 = 0x0f;
/// How far an ack may lag or lead (pf: one 64 KiB window plus a 1500-byte fudge).
const MAX_ACK_WINDOW: i64 = 0xffff + 1500;

/// One end's view of the connection (pf's `tcp_peer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    /// Highest sequence number sent, plus one.
    pub seqlo: u32,
    /// Highest sequence number this peer may send (the other end's ack + window).
    pub seqhi: u32,
    /// Largest window advertised, before scaling.
    pub max_win: u16,
    /// Window scale, with `WSCALE_SEEN` / `WSCALE_UNKNOWN` flags.
    pub wscale: u8,
    /// This peer's state.
    pub state: PeerState,
}

/// A peer's state, ordered: comparisons (`>=`) are meaningful, as in pf.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, strum::FromRepr)]
#[repr(u8)]
pub enum PeerState {
    /// Nothing seen from this peer.
    #[default]
    Closed = 0,
    /// It sent its first segment (a SYN, or anything when picked up).
    SynSent = 1,
    /// Its first segment was acknowledged.
    Established = 2,
    /// It sent a FIN.
    Closing = 3,
    /// Its FIN was acknowledged.
    FinWait2 = 4,
    /// Reset, or both FINs acknowledged.
    TimeWait = 5,
}

impl PeerState {
    /// From the stored byte (unknown values read as `TimeWait`, the most restrictive).
    pub fn from_u8(v: u8) -> Self {
        PeerState::from_repr(v).unwrap_or(PeerState::TimeWait)
    }
}

/// Both ends: `peer[0]` opened the connection, `peer[1]` is the other end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpConn {
    /// The two peers.
    pub peer: [Peer; 2],
}

/// What the tracker needs from one TCP segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags (see `flags`).
    pub flags: u8,
    /// Advertised window, unscaled.
    pub win: u16,
    /// Payload bytes.
    pub len: u32,
    /// Window-scale option, if present (SYN segments only).
    pub wscale: Option<u8>,
}

/// Why a TCP segment is not accepted. Each is a named drop reason in the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// an impossible flag combination (e.g. SYN+RST, no ACK on data)
    BadFlags,
    /// sequence or acknowledgment outside the window
    OutOfWindow,
    /// a SYN+ACK (or other non-SYN) cannot open a connection
    NotSyn,
}

/// Outcome of a segment on an existing connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Accepted; the state was updated.
    Valid,
    /// A new SYN on a closed connection with the same addresses: start over.
    Restart,
    /// Refused; the state is unchanged.
    Invalid(Invalid),
}

/// Timeout class of a connection, from its peers' states (as OVS derives it). Its name is the
/// variant's in snake_case, but for `FirstPacket`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::IntoStaticStr, strum::FromRepr,
)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum TimeoutClass {
    /// One SYN seen, nothing back.
    #[strum(serialize = "syn_sent")]
    FirstPacket = 0,
    /// Handshake in progress.
    Opening = 1,
    /// Both ends established.
    Established = 2,
    /// One end sent a FIN.
    Closing = 3,
    /// Both ends sent a FIN.
    FinWait = 4,
    /// Both FINs acknowledged, or reset (TIME_WAIT).
    Closed = 5,
}

impl TimeoutClass {
    /// A short name for operators ("syn_sent", "opening", "established", "closing",
    /// "fin_wait", "closed").
    pub fn name(self) -> &'static str {
        self.into()
    }
}

#[inline]
#[expect(
    clippy::cast_possible_wrap,
    reason = "sequence numbers are modulo 2^32: the difference read as i32 is the comparison (RFC 1982)"
)]
fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[inline]
#[expect(
    clippy::cast_possible_wrap,
    reason = "sequence numbers are modulo 2^32: the difference read as i32 is the comparison (RFC 1982)"
)]
fn seq_geq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// Flag combinations no TCP stack sends.
pub fn invalid_flags(f: u8) -> bool {
    if f & SYN != 0 {
        if f & (RST | FIN) != 0 {
            return true;
        }
    } else if f & (ACK | RST) == 0 {
        return true;
    }
    f & ACK == 0 && f & (FIN | PSH | URG) != 0
}

fn wscale_option(seg: &Segment) -> u8 {
    match seg.wscale {
        Some(s) => s.min(MAX_WSCALE) | WSCALE_SEEN,
        None => 0,
    }
}

impl TcpConn {
    /// State for the first segment of a connection. A pure SYN opens one; with `pickup`, a
    /// mid-stream segment (ACK, no SYN) does too, with liberal window checks until both ends
    /// were seen (the state table was flushed, the switch restarted, a VM migrated).
    pub fn new(seg: &Segment, pickup: bool) -> Result<TcpConn, Invalid> {
        if invalid_flags(seg.flags) {
            return Err(Invalid::BadFlags);
        }
        let syn = seg.flags & SYN != 0;
        if (syn && seg.flags & ACK != 0) || (!syn && !pickup) {
            return Err(Invalid::NotSyn);
        }
        let mut c = TcpConn::default();
        let (src, dst) = c.peer.split_at_mut(1);
        let (src, dst) = (&mut src[0], &mut dst[0]);
        src.seqlo = seg.seq;
        src.seqhi = seg.seq.wrapping_add(seg.len).wrapping_add(1);
        if syn {
            src.seqhi = src.seqhi.wrapping_add(1);
            src.wscale = wscale_option(seg);
        } else {
            src.wscale = WSCALE_UNKNOWN;
            dst.wscale = WSCALE_UNKNOWN;
        }
        src.max_win = seg.win.max(1);
        if src.wscale & WSCALE_MASK != 0 {
            // Remove the scale factor from the initial window.
            let s = src.wscale & WSCALE_MASK;
            src.max_win =
                u16::try_from(u32::from(src.max_win).div_ceil(1 << s)).unwrap_or(u16::MAX);
        }
        if seg.flags & FIN != 0 {
            src.seqhi = src.seqhi.wrapping_add(1);
        }
        dst.seqhi = 1;
        dst.max_win = 1;
        src.state = PeerState::SynSent;
        dst.state = PeerState::Closed;
        Ok(c)
    }

    /// Applies a segment sent by `peer[dir]` (0: the opener, 1: the other end).
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "sequence differences read as i32 (modulo 2^32); MAX_ACK_WINDOW is 65,535 + 1,500"
    )]
    pub fn update(&mut self, seg: &Segment, dir: usize) -> Update {
        let f = seg.flags;
        if invalid_flags(f) {
            return Update::Invalid(Invalid::BadFlags);
        }
        let mut next = *self;
        let [p0, p1] = &mut next.peer;
        let (src, dst) = if dir & 1 == 0 { (p0, p1) } else { (p1, p0) };

        if f & (SYN | ACK) == SYN
            && dst.state >= PeerState::FinWait2
            && src.state >= PeerState::FinWait2
        {
            // A new connection reusing the addresses of a closed one.
            return Update::Restart;
        }

        let (mut sws, mut dws) = (0u8, 0u8);
        if f & SYN == 0 {
            if src.wscale & WSCALE_SEEN != 0 && dst.wscale & WSCALE_SEEN != 0 {
                sws = src.wscale & WSCALE_MASK;
                dws = dst.wscale & WSCALE_MASK;
            } else if src.wscale & WSCALE_UNKNOWN != 0 && dst.wscale & WSCALE_UNKNOWN != 0 {
                sws = MAX_WSCALE;
                dws = MAX_WSCALE;
            }
        }

        let mut win = u32::from(seg.win);
        let orig_seq = seg.seq;
        let mut seq = seg.seq;
        let mut ack = seg.ack;
        let mut end = seq.wrapping_add(seg.len);
        if f & SYN != 0 {
            end = end.wrapping_add(1);
        }
        if f & FIN != 0 {
            end = end.wrapping_add(1);
        }
        let mut check_ackskew = true;
        if src.state < PeerState::SynSent {
            // First segment from this end.
            if f & SYN != 0 && dst.wscale & WSCALE_SEEN != 0 {
                src.wscale = wscale_option(seg);
                if src.wscale & WSCALE_SEEN != 0 {
                    sws = src.wscale & WSCALE_MASK;
                    win = win.div_ceil(1 << sws);
                    dws = dst.wscale & WSCALE_MASK;
                } else {
                    // The other end offered scaling, this one did not: neither scales.
                    let shifted = u32::from(dst.max_win) << (dst.wscale & WSCALE_MASK);
                    dst.max_win = u16::try_from(shifted).unwrap_or(u16::MAX);
                    dst.wscale = 0;
                }
            }
            src.seqlo = seq;
            src.state = PeerState::SynSent;
            let room = (u32::from(dst.max_win) << dws).max(1);
            if src.seqhi == 1 || seq_geq(end.wrapping_add(room), src.seqhi) {
                src.seqhi = end.wrapping_add(room);
                // Picking up a new (or already running) connection: lenient on ack skew.
                check_ackskew = false;
            }
            if win > u32::from(src.max_win) {
                src.max_win = u16::try_from(win).unwrap_or(u16::MAX);
            }
        }

        if f & ACK == 0 || (ack == 0 && f & (ACK | RST) == ACK | RST) {
            // No ack to check (or a stack that sends RST|ACK with ack 0).
            ack = dst.seqlo;
        }
        if seq == end {
            // No data: ease the sequence checks.
            seq = src.seqlo;
            end = seq;
        }

        let ackskew = if check_ackskew {
            i64::from(dst.seqlo.wrapping_sub(ack) as i32)
        } else {
            0
        };
        let back = u32::from(dst.max_win) << dws;
        let in_window = seq_geq(src.seqhi, end)
            && seq_geq(seq, src.seqlo.wrapping_sub(back))
            && ackskew >= -MAX_ACK_WINDOW
            && ackskew <= MAX_ACK_WINDOW << sws
            && (f & RST == 0
                || orig_seq == src.seqlo
                || orig_seq == src.seqlo.wrapping_add(1)
                || orig_seq.wrapping_add(1) == src.seqlo);

        let scaled = (win << sws).max(1);
        if in_window {
            if win > u32::from(src.max_win) {
                src.max_win = u16::try_from(win).unwrap_or(u16::MAX);
            }
            if seq_gt(end, src.seqlo) {
                src.seqlo = end;
            }
            if seq_geq(ack.wrapping_add(win << sws), dst.seqhi) {
                dst.seqhi = ack.wrapping_add(scaled);
            }
            if f & SYN != 0 && src.state < PeerState::SynSent {
                src.state = PeerState::SynSent;
            }
            if f & FIN != 0 && src.state < PeerState::Closing {
                src.state = PeerState::Closing;
            }
            if f & ACK != 0 {
                if dst.state == PeerState::SynSent {
                    dst.state = PeerState::Established;
                } else if dst.state == PeerState::Closing {
                    dst.state = PeerState::FinWait2;
                }
            }
            if f & RST != 0 {
                src.state = PeerState::TimeWait;
                dst.state = PeerState::TimeWait;
            }
        } else if (dst.state < PeerState::SynSent
            || dst.state >= PeerState::FinWait2
            || src.state >= PeerState::FinWait2)
            && seq_geq(src.seqhi.wrapping_add(MAX_ACK_WINDOW as u32), end)
            && seq_geq(seq, src.seqlo.wrapping_sub(MAX_ACK_WINDOW as u32))
        {
            // pf's loose case: shotgunned SYNs before the peer answered, a stream picked up
            // after establishment, stray packets right after a close. State advances only
            // where a flood cannot abuse it.
            if win > u32::from(src.max_win) {
                src.max_win = u16::try_from(win).unwrap_or(u16::MAX);
            }
            if seq_gt(end, src.seqlo) {
                src.seqlo = end;
            }
            if seq_geq(ack.wrapping_add(win << sws), dst.seqhi) {
                dst.seqhi = ack.wrapping_add(scaled);
            }
            if f & FIN != 0 && src.state < PeerState::Closing {
                src.state = PeerState::Closing;
            }
            if f & RST != 0 {
                src.state = PeerState::TimeWait;
                dst.state = PeerState::TimeWait;
            }
        } else {
            return Update::Invalid(Invalid::OutOfWindow);
        }
        *self = next;
        Update::Valid
    }

    /// Whether `seq`, the sequence number of a segment from `peer[dir]` quoted by an ICMP
    /// error, can be one that peer sent: at most its highest allowed sequence number, at
    /// least one of the other end's (scaled) windows behind the highest it sent (pf's check of
    /// quoted TCP headers).
    pub fn quoted_seq_in_window(&self, dir: usize, seq: u32) -> bool {
        let (src, dst) = if dir & 1 == 0 {
            (&self.peer[0], &self.peer[1])
        } else {
            (&self.peer[1], &self.peer[0])
        };
        let dws = if src.wscale & WSCALE_SEEN != 0 && dst.wscale & WSCALE_SEEN != 0 {
            dst.wscale & WSCALE_MASK
        } else if src.wscale & WSCALE_UNKNOWN != 0 && dst.wscale & WSCALE_UNKNOWN != 0 {
            MAX_WSCALE
        } else {
            0
        };
        let back = (u32::from(dst.max_win) << dws).max(1);
        seq_geq(src.seqhi, seq) && seq_geq(seq, src.seqlo.wrapping_sub(back))
    }

    /// Which timeout applies now.
    pub fn timeout_class(&self) -> TimeoutClass {
        let (a, b) = (self.peer[0].state, self.peer[1].state);
        if a >= PeerState::FinWait2 && b >= PeerState::FinWait2 {
            TimeoutClass::Closed
        } else if a >= PeerState::Closing && b >= PeerState::Closing {
            TimeoutClass::FinWait
        } else if b == PeerState::Closed {
            TimeoutClass::FirstPacket
        } else if a < PeerState::Established || b < PeerState::Established {
            TimeoutClass::Opening
        } else if a >= PeerState::Closing || b >= PeerState::Closing {
            TimeoutClass::Closing
        } else {
            TimeoutClass::Established
        }
    }

    /// Packs into three words for the table (`seqlo|seqhi` per peer, then the small fields).
    pub fn to_words(&self) -> [u64; 3] {
        let p = &self.peer;
        let small =
            |q: &Peer| u64::from(q.max_win) | u64::from(q.wscale) << 16 | (q.state as u64) << 24;
        [
            u64::from(p[0].seqlo) | u64::from(p[0].seqhi) << 32,
            u64::from(p[1].seqlo) | u64::from(p[1].seqhi) << 32,
            small(&p[0]) | small(&p[1]) << 32,
        ]
    }

    /// The inverse of `to_words`.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "each field unpacked from the packed state words has exactly the bits cast to"
    )]
    pub fn from_words(w: [u64; 3]) -> TcpConn {
        let peer = |lohi: u64, small: u64| Peer {
            seqlo: lohi as u32,
            seqhi: (lohi >> 32) as u32,
            max_win: small as u16,
            wscale: (small >> 16) as u8,
            state: PeerState::from_u8((small >> 24) as u8),
        };
        TcpConn {
            peer: [peer(w[0], w[2] & 0xffff_ffff), peer(w[1], w[2] >> 32)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> Segment {
        Segment {
            seq,
            ack,
            flags,
            win: 65535,
            len,
            wscale: None,
        }
    }

    /// A full handshake, data both ways, and a clean close, with the state after each step.
    #[test]
    fn walks_a_connection_lifecycle() {
        use PeerState::*;
        let (a, b) = (1000u32, 5000u32);
        let mut c = TcpConn::new(&seg(SYN, a, 0, 0), false).unwrap();
        assert_eq!((c.peer[0].state, c.peer[1].state), (SynSent, Closed));
        assert_eq!(c.timeout_class(), TimeoutClass::FirstPacket);
        // Each step: (dir, segment, expected peer states, timeout class).
        let steps: &[(usize, Segment, (PeerState, PeerState), TimeoutClass)] = &[
            (
                1,
                seg(SYN | ACK, b, a + 1, 0),
                (Established, SynSent),
                TimeoutClass::Opening,
            ),
            (
                0,
                seg(ACK, a + 1, b + 1, 0),
                (Established, Established),
                TimeoutClass::Established,
            ),
            (
                0,
                seg(ACK | PSH, a + 1, b + 1, 100),
                (Established, Established),
                TimeoutClass::Established,
            ),
            (
                1,
                seg(ACK, b + 1, a + 101, 0),
                (Established, Established),
                TimeoutClass::Established,
            ),
            (
                1,
                seg(ACK | PSH, b + 1, a + 101, 50),
                (Established, Established),
                TimeoutClass::Established,
            ),
            (
                0,
                seg(ACK | FIN, a + 101, b + 51, 0),
                (Closing, Established),
                TimeoutClass::Closing,
            ),
            (
                1,
                seg(ACK, b + 51, a + 102, 0),
                (FinWait2, Established),
                TimeoutClass::Closing,
            ),
            (
                1,
                seg(ACK | FIN, b + 51, a + 102, 0),
                (FinWait2, Closing),
                TimeoutClass::FinWait,
            ),
            (
                0,
                seg(ACK, a + 102, b + 52, 0),
                (FinWait2, FinWait2),
                TimeoutClass::Closed,
            ),
        ];
        for (i, (dir, s, (sa, sb), class)) in steps.iter().enumerate() {
            assert_eq!(c.update(s, *dir), Update::Valid, "step {i}: {s:?}");
            assert_eq!((c.peer[0].state, c.peer[1].state), (*sa, *sb), "step {i}");
            assert_eq!(c.timeout_class(), *class, "step {i}");
        }
        // TIME_WAIT: a fresh SYN on the same tuple starts a new connection.
        assert_eq!(c.update(&seg(SYN, 90_000, 0, 0), 0), Update::Restart);
    }

    #[test]
    fn refuses_bad_flags_and_non_syn_openers() {
        for f in [SYN | RST, SYN | FIN, 0, FIN, PSH, URG, FIN | PSH] {
            assert_eq!(
                TcpConn::new(&seg(f, 1, 0, 0), true),
                Err(Invalid::BadFlags),
                "{f:#x}"
            );
        }
        assert_eq!(
            TcpConn::new(&seg(SYN | ACK, 1, 2, 0), true),
            Err(Invalid::NotSyn)
        );
        assert_eq!(
            TcpConn::new(&seg(ACK, 1, 2, 0), false),
            Err(Invalid::NotSyn)
        );
        assert!(
            TcpConn::new(&seg(ACK, 1, 2, 0), true).is_ok(),
            "mid-stream pickup when allowed"
        );
        let mut c = TcpConn::new(&seg(SYN, 1, 0, 0), false).unwrap();
        assert_eq!(
            c.update(&seg(SYN | FIN, 1, 0, 0), 0),
            Update::Invalid(Invalid::BadFlags)
        );
    }

    /// Established connection, then segments at the edges of the window.
    #[test]
    fn window_checks() {
        let (a, b) = (1_000_000u32, 7_000_000u32);
        let established = || {
            let mut c = TcpConn::new(
                &Segment {
                    win: 1000,
                    ..seg(SYN, a, 0, 0)
                },
                false,
            )
            .unwrap();
            assert_eq!(
                c.update(
                    &Segment {
                        win: 1000,
                        ..seg(SYN | ACK, b, a + 1, 0)
                    },
                    1
                ),
                Update::Valid
            );
            assert_eq!(
                c.update(
                    &Segment {
                        win: 1000,
                        ..seg(ACK, a + 1, b + 1, 0)
                    },
                    0
                ),
                Update::Valid
            );
            c
        };
        // (dir, segment, accepted?) with windows of 1000 bytes each way.
        let w = |s: Segment| Segment { win: 1000, ..s };
        let cases: &[(&str, usize, Segment, bool)] = &[
            (
                "data filling the window",
                0,
                w(seg(ACK, a + 1, b + 1, 1000)),
                true,
            ),
            (
                "data one byte past the window",
                0,
                w(seg(ACK, a + 1, b + 1, 1001)),
                false,
            ),
            (
                "retransmission one window back",
                0,
                w(seg(ACK, a + 1 - 1000, b + 1, 10)),
                true,
            ),
            (
                "more than a window back",
                0,
                w(seg(ACK, a - 2000, b + 1, 10)),
                false,
            ),
            (
                "ack of data never sent (far ahead)",
                0,
                w(seg(ACK, a + 1, b + 200_000, 0)),
                false,
            ),
            (
                "ack far behind",
                0,
                w(seg(ACK, a + 1, b - 100_000, 0)),
                false,
            ),
            (
                "RST at the expected sequence",
                1,
                w(seg(RST, b + 1, 0, 0)),
                true,
            ),
            ("RST off by one", 1, w(seg(RST, b + 2, 0, 0)), true),
            (
                "RST elsewhere in the window",
                1,
                w(seg(RST, b + 500, 0, 0)),
                false,
            ),
            (
                "reply data in window",
                1,
                w(seg(ACK, b + 1, a + 1, 500)),
                true,
            ),
        ];
        for (what, dir, s, ok) in cases {
            let mut c = established();
            let before = c;
            let r = c.update(s, *dir);
            assert_eq!(r == Update::Valid, *ok, "{what}: {r:?}");
            if !ok {
                assert_eq!(c, before, "{what}: a refused segment must not change state");
            }
        }
        let mut c = established();
        assert_eq!(c.update(&w(seg(RST, b + 1, 0, 0)), 1), Update::Valid);
        assert_eq!(
            c.timeout_class(),
            TimeoutClass::Closed,
            "RST goes to TIME_WAIT"
        );
    }

    #[test]
    fn window_scaling_is_negotiated_by_both_syns() {
        let a = 10u32;
        let b = 20_000u32;
        let s = |f, seq, ack, win, ws| Segment {
            seq,
            ack,
            flags: f,
            win,
            len: 0,
            wscale: ws,
        };
        let mut c = TcpConn::new(&s(SYN, a, 0, 64_000, Some(7)), false).unwrap();
        assert_eq!(
            c.update(&s(SYN | ACK, b, a + 1, 64_000, Some(7)), 1),
            Update::Valid
        );
        assert_eq!(
            c.update(&s(ACK, a + 1, b + 1, 1000, None), 0),
            Update::Valid
        );
        // The reply end advertised 64000 << 7 bytes of window (scaled on non-SYN segments):
        // the opener may send far more than 64 KiB ahead once the window is opened.
        assert_eq!(
            c.update(&s(ACK, b + 1, a + 1, 20_000, None), 1),
            Update::Valid
        );
        let big = Segment {
            len: 1_000_000,
            ..s(ACK, a + 1, b + 1, 1000, None)
        };
        assert_eq!(c.update(&big, 0), Update::Valid, "within 20000 << 7");
        // Without scaling on one side, neither scales.
        let mut d = TcpConn::new(&s(SYN, a, 0, 64_000, Some(7)), false).unwrap();
        assert_eq!(
            d.update(&s(SYN | ACK, b, a + 1, 60_000, None), 1),
            Update::Valid
        );
        assert_eq!(
            d.update(&s(ACK, a + 1, b + 1, 1000, None), 0),
            Update::Valid
        );
        assert_eq!(
            d.update(&s(ACK, b + 1, a + 1, 60_000, None), 1),
            Update::Valid
        );
        let too_big = Segment {
            len: 70_000,
            ..s(ACK, a + 1, b + 1, 1000, None)
        };
        assert_eq!(d.update(&too_big, 0), Update::Invalid(Invalid::OutOfWindow));
    }

    #[test]
    fn half_open_and_picked_up_connections() {
        // A SYN with no answer stays in the first-packet class; retransmitted SYNs are fine.
        let mut c = TcpConn::new(&seg(SYN, 100, 0, 0), false).unwrap();
        assert_eq!(c.update(&seg(SYN, 100, 0, 0), 0), Update::Valid);
        assert_eq!(c.timeout_class(), TimeoutClass::FirstPacket);
        // Mid-stream pickup: liberal windows until the other end is seen, then tracked.
        let mut p = TcpConn::new(&seg(ACK, 5_000_000, 9_000_000, 1000), true).unwrap();
        assert_eq!(
            p.update(&seg(ACK, 9_000_000, 5_001_000, 0), 1),
            Update::Valid
        );
        assert_eq!(
            p.update(&seg(ACK, 5_001_000, 9_000_000, 1400), 0),
            Update::Valid
        );
        assert_eq!(p.timeout_class(), TimeoutClass::Established);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let a = u32::MAX - 10;
        let b = 1234u32;
        let mut c = TcpConn::new(&seg(SYN, a, 0, 0), false).unwrap();
        assert_eq!(
            c.update(&seg(SYN | ACK, b, a.wrapping_add(1), 0), 1),
            Update::Valid
        );
        assert_eq!(
            c.update(&seg(ACK, a.wrapping_add(1), b + 1, 0), 0),
            Update::Valid
        );
        for i in 0..10u32 {
            let s = seg(
                ACK | PSH,
                a.wrapping_add(1).wrapping_add(i * 100),
                b + 1,
                100,
            );
            assert_eq!(
                c.update(&s, 0),
                Update::Valid,
                "segment {i} across the wrap"
            );
        }
    }

    #[test]
    fn words_round_trip() {
        let mut c = TcpConn::new(
            &Segment {
                wscale: Some(5),
                ..seg(SYN, 77, 0, 0)
            },
            false,
        )
        .unwrap();
        c.update(
            &Segment {
                wscale: Some(9),
                ..seg(SYN | ACK, 99, 78, 0)
            },
            1,
        );
        assert_eq!(TcpConn::from_words(c.to_words()), c);
    }
}
