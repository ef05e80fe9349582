//! `pktgen bench --mode tcp`: N TCP flows, each a real connection.
//!
//! First every flow is opened with a three-way handshake (SYN and SYN-ACK carry a window
//! scale of 14, so a window never stalls a flow), on pair 0, 2048 at a time, with lost frames
//! sent again as TCP would, until every handshake is done. Then both ports send data segments of `--size` bytes:
//! flow i is 10.254.0.1:1000 <-> (10.253.0.0+i):1001, the same addresses as the UDP mode.
//! Each segment's sequence number follows the bytes its port sent on that flow, and its
//! acknowledgement number is what the port received from the other end, so a tracker that
//! checks sequence windows (as bulwark's, pf's and Linux's do) accepts every segment.
//! Checksums are patched incrementally from a template per port. At the end port 0 closes
//! every flow with a RST, so the switch's connection table is left with no open connection.

use std::time::{Duration, Instant};

use crate::frame::{fold, sum16};
use serde::Serialize;

use crate::VirtioNet;

use super::conn::{client_isn, frame, frame_ws, parse, server_isn, Seg, ACK, RST, SYN};
use super::{
    burst_stamp, is_stamped, next_flow, write_template, Args, Cursors, Latency, Template, Traffic,
    BURST, DPORT, IP_DST_BASE, IP_SRC, SPORT,
};

/// Where a TCP data segment's payload (and its timestamp) starts.
const PAYLOAD_OFF: usize = 54;
/// Window scale advertised in the SYNs.
const WSCALE: u8 = 14;
/// How long the handshakes may go on without one completing.
const HANDSHAKE_STALL: Duration = Duration::from_secs(10);
/// Handshakes under way at once.
const HANDSHAKE_WINDOW: usize = 2048;
/// How long the closing RSTs may take to go out.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence after which lost handshake frames are sent again.
const RETRY_AFTER: Duration = Duration::from_millis(300);
const PSH: u8 = 0x08;

/// A data segment template for one port and the sums of its fixed parts.
struct DataTemplate {
    frame: Vec<u8>,
    /// Offset of the address that varies per flow (dst for port 0, src for port 1).
    addr_off: usize,
    /// IPv4 header sum without the varying address and the checksum.
    ip_sum: u32,
    /// TCP sum (pseudo-header, header, zero payload) without the varying address, sequence
    /// and acknowledgement numbers, and the checksum.
    tcp_sum: u32,
    /// The payload holds a timestamp (at least 8 bytes).
    stamped: bool,
}

impl DataTemplate {
    fn new(port: usize, size: usize, macs: &[[u8; 6]; 2]) -> DataTemplate {
        // The UDP template has the Ethernet and IPv4 headers right but for the protocol.
        let mut f = Template::new(port, size, macs).frame;
        f[23] = 6;
        f[24..26].fill(0);
        let (sport, dport) = if port == 0 {
            (SPORT, DPORT)
        } else {
            (DPORT, SPORT)
        };
        f[34..PAYLOAD_OFF].fill(0);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = ACK | PSH;
        f[48..50].copy_from_slice(&u16::MAX.to_be_bytes());
        f[PAYLOAD_OFF..].fill(0);
        let addr_off = if port == 0 { 30 } else { 26 };
        let fixed_off = if port == 0 { 26 } else { 30 };
        let mut ip = f[14..34].to_vec();
        ip[addr_off - 14..addr_off - 10].fill(0);
        let tcp_len = (size - 34) as u32;
        let tcp_sum =
            sum16(&f[fixed_off..fixed_off + 4]) + 6 + tcp_len + sum16(&f[34..PAYLOAD_OFF]);
        DataTemplate {
            ip_sum: sum16(&ip),
            tcp_sum,
            addr_off,
            stamped: size >= PAYLOAD_OFF + 8,
            frame: f,
        }
    }
}

/// Per-flow sequence state of one port.
struct Side {
    /// The next sequence number this port sends on each flow.
    seq: Vec<u32>,
    /// What this port acknowledges on each flow: the end of what it received.
    ack: Vec<u32>,
}

/// TCP flows (see the module docs).
pub(super) struct Tcp {
    macs: [[u8; 6]; 2],
    tmpl: [DataTemplate; 2],
    side: [Side; 2],
    payload: u32,
    cur: Cursors,
    /// Segments received that belong to no flow (counted, ignored).
    unexpected: u64,
}

fn add32(v: u32) -> u32 {
    (v >> 16) + (v & 0xffff)
}

fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Tcp {
    pub(super) fn new(a: &Args, slots: usize) -> Tcp {
        let n = a.flows as usize;
        Tcp {
            macs: a.macs,
            tmpl: [
                DataTemplate::new(0, a.size, &a.macs),
                DataTemplate::new(1, a.size, &a.macs),
            ],
            side: [
                Side {
                    seq: (0..a.flows)
                        .map(|f| client_isn(f).wrapping_add(1))
                        .collect(),
                    ack: vec![0; n],
                },
                Side {
                    seq: (0..a.flows)
                        .map(|f| server_isn(client_isn(f)).wrapping_add(1))
                        .collect(),
                    ack: vec![0; n],
                },
            ],
            payload: (a.size - PAYLOAD_OFF) as u32,
            cur: Cursors::new(a, slots),
            unexpected: 0,
        }
    }

    fn handshake_frame(&self, port: usize, f: u32, flags: u8) -> [u8; 60] {
        let (peer, cisn) = (IP_DST_BASE.wrapping_add(f), client_isn(f));
        let sisn = server_isn(cisn);
        let s = if port == 0 {
            Seg {
                src_mac: self.macs[0],
                dst_mac: self.macs[1],
                src: IP_SRC,
                dst: peer,
                sport: SPORT,
                dport: DPORT,
                seq: if flags == SYN {
                    cisn
                } else {
                    cisn.wrapping_add(1)
                },
                ack: if flags == SYN {
                    0
                } else {
                    sisn.wrapping_add(1)
                },
                flags,
            }
        } else {
            Seg {
                src_mac: self.macs[1],
                dst_mac: self.macs[0],
                src: peer,
                dst: IP_SRC,
                sport: DPORT,
                dport: SPORT,
                seq: sisn,
                ack: cisn.wrapping_add(1),
                flags,
            }
        };
        frame_ws(&s, (flags & SYN != 0).then_some(WSCALE))
    }

    /// Opens every flow: SYN, SYN-ACK, ACK, at most `HANDSHAKE_WINDOW` at a time. When nothing
    /// has come back for `RETRY_AFTER`, frames were lost (a generator can fall behind on its
    /// own receive rings): flows waiting for a SYN-ACK send their SYN again, flows whose ACK
    /// the server has not seen send the ACK again, as TCP would.
    pub(super) fn handshake(&mut self, devs: &mut [VirtioNet]) -> Result<(), String> {
        let n = self.cur.flows as usize;
        // 0: nothing yet, 1: SYN sent, 2: ACK sent, 3: port 1 saw the ACK.
        let mut state = vec![0u8; n];
        let mut owed: [Vec<(u32, u8)>; 2] = [Vec::new(), Vec::new()];
        let (mut cursor, mut done) = (0usize, 0usize);
        let start = Instant::now();
        let mut last_progress = start;
        let (mut last_done, mut last_done_at) = (0, start);
        while done < n {
            if done != last_done {
                (last_done, last_done_at) = (done, Instant::now());
            } else if last_done_at.elapsed() > HANDSHAKE_STALL {
                return Err(format!(
                    "tcp: no handshake completed for {} s ({done} of {n} done): does the \
switch pass TCP between 10.254.0.1:{SPORT} and 10.253.x.y:{DPORT} both ways?",
                    HANDSHAKE_STALL.as_secs()
                ));
            }
            if last_progress.elapsed() > RETRY_AFTER && owed.iter().all(Vec::is_empty) {
                for (f, s) in state.iter().enumerate() {
                    match s {
                        1 => owed[0].push((f as u32, SYN)),
                        2 => owed[0].push((f as u32, ACK)),
                        _ => {}
                    }
                }
                last_progress = Instant::now();
            }
            for port in 0..2 {
                let dev = &mut devs[port];
                dev.select_queue_pair(0);
                let mut batch: Vec<[u8; 60]> = Vec::with_capacity(BURST);
                while batch.len() < BURST {
                    let Some((f, flags)) = owed[port].pop() else {
                        break;
                    };
                    batch.push(self.handshake_frame(port, f, flags));
                }
                if port == 0 {
                    while batch.len() < BURST && cursor < n && cursor - done < HANDSHAKE_WINDOW {
                        batch.push(self.handshake_frame(0, cursor as u32, SYN));
                        state[cursor] = 1;
                        cursor += 1;
                    }
                }
                let mut i = 0;
                let sent = dev.send_in_place(60, batch.len(), |_, slot| {
                    slot.write(0, &batch[i]);
                    i += 1;
                });
                for f in &batch[sent..] {
                    // No room in the ring: send it on a later pass.
                    let s = parse(f).expect("our own frame");
                    let flow = if port == 0 { s.dst } else { s.src }.wrapping_sub(IP_DST_BASE);
                    owed[port].push((flow, s.flags));
                }
                for q in 0..dev.queue_pairs() {
                    dev.select_queue_pair(q);
                    let got = dev
                        .recv_prefix(PAYLOAD_OFF, |fr| {
                            let Some(s) = parse(fr) else { return };
                            let flow =
                                if port == 0 { s.src } else { s.dst }.wrapping_sub(IP_DST_BASE);
                            let Some(st) = state.get_mut(flow as usize) else {
                                return;
                            };
                            match (port, s.flags) {
                                // The server answers every SYN (a retransmitted one too).
                                (1, SYN) => owed[1].push((flow, SYN | ACK)),
                                // The client acknowledges every SYN-ACK of a flow it opened.
                                (0, fl) if fl == SYN | ACK && (*st == 1 || *st == 2) => {
                                    *st = 2;
                                    owed[0].push((flow, ACK));
                                }
                                (1, ACK) if *st == 2 => {
                                    *st = 3;
                                    done += 1;
                                }
                                _ => {}
                            }
                        })
                        .map_err(|e| format!("tcp handshake: port {port}: {e}"))?;
                    if got > 0 {
                        last_progress = Instant::now();
                    }
                }
                dev.select_queue_pair(0);
            }
        }
        eprintln!(
            "pktgen: tcp: {n} connections open in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        for side in &mut self.side[..] {
            side.ack.fill(0);
        }
        for f in 0..self.cur.flows {
            let cisn = client_isn(f);
            self.side[0].ack[f as usize] = server_isn(cisn).wrapping_add(1);
            self.side[1].ack[f as usize] = cisn.wrapping_add(1);
        }
        Ok(())
    }
}

impl Tcp {
    /// Closes every flow with a RST from port 0 at its current sequence number, as a client
    /// closing with `SO_LINGER 0` does, so that a stateful switch does not keep the connections
    /// established (and a later run with the same addresses can open them again).
    pub(super) fn teardown(&mut self, devs: &mut [VirtioNet]) -> Result<(), String> {
        let [client, server] = devs else {
            return Err("tcp: two ports expected".into());
        };
        client.select_queue_pair(0);
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        let mut f = 0u32;
        while f < self.cur.flows {
            if Instant::now() > deadline {
                return Err(format!("tcp: only {f} of {} flows closed", self.cur.flows));
            }
            let first = f;
            let max = BURST.min((self.cur.flows - f) as usize);
            let n = client.send_in_place(60, max, |_, slot| {
                let i = f as usize;
                let rst = frame(&Seg {
                    src_mac: self.macs[0],
                    dst_mac: self.macs[1],
                    src: IP_SRC,
                    dst: IP_DST_BASE.wrapping_add(f),
                    sport: SPORT,
                    dport: DPORT,
                    seq: self.side[0].seq[i],
                    ack: self.side[0].ack[i],
                    flags: RST | ACK,
                });
                slot.write(0, &rst);
                f += 1;
            });
            debug_assert_eq!(f - first, n as u32);
            if f < self.cur.flows && n < max {
                std::thread::yield_now();
            }
            // Drain port 1 so the switch has room to deliver the RSTs.
            for q in 0..server.queue_pairs() {
                server.select_queue_pair(q);
                let _ = server.recv_count();
            }
        }
        // Give the switch a moment to take the last ones before the devices disconnect.
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            for q in 0..server.queue_pairs() {
                server.select_queue_pair(q);
                let _ = server.recv_count();
            }
            if client.poll_tx() == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// `--mode tcp`'s members of the JSON result.
#[derive(Debug, Serialize)]
pub(super) struct TcpExtra {
    /// Segments received that belong to no flow.
    pub(super) tcp_unexpected: u64,
}

impl Traffic for Tcp {
    fn send(
        &mut self,
        port: usize,
        q: usize,
        dev: &mut VirtioNet,
        max: usize,
        lat: &Latency,
    ) -> usize {
        let tmpl = &self.tmpl[port];
        let stamp = if tmpl.stamped {
            burst_stamp(self.cur.count[port], max, lat)
        } else {
            0
        };
        let written = &mut self.cur.written[port][q];
        let next = &mut self.cur.next_flow[port][q];
        let count = &mut self.cur.count[port];
        let side = &mut self.side[port];
        let (flows, pairs, first, payload) =
            (self.cur.flows, self.cur.pairs, q as u32, self.payload);
        dev.send_in_place(tmpl.frame.len(), max, |id, slot| {
            write_template(written, id, slot, &tmpl.frame);
            let f = *next as usize;
            let addr = IP_DST_BASE.wrapping_add(*next);
            let (seq, ack) = (side.seq[f], side.ack[f]);
            side.seq[f] = seq.wrapping_add(payload);
            let ts = if tmpl.stamped && is_stamped(*count) {
                stamp
            } else {
                0
            };
            let a = add32(addr);
            let ip = fold(tmpl.ip_sum + a);
            let ts_sum = add32(ts as u32) + add32((ts >> 32) as u32);
            let tcp = fold(tmpl.tcp_sum + a + add32(seq) + add32(ack) + ts_sum);
            slot.write(tmpl.addr_off, &addr.to_be_bytes());
            slot.write(24, &ip.to_be_bytes());
            slot.write(38, &seq.to_be_bytes());
            slot.write(42, &ack.to_be_bytes());
            slot.write(50, &tcp.to_be_bytes());
            if tmpl.stamped {
                slot.write(PAYLOAD_OFF, &ts.to_be_bytes());
            }
            *count += 1;
            next_flow(next, first, pairs, flows);
        })
    }

    fn recv(
        &mut self,
        port: usize,
        _q: usize,
        dev: &mut VirtioNet,
        lat: &mut Latency,
    ) -> Result<usize, crate::Error> {
        let (side, unexpected) = (&mut self.side[port], &mut self.unexpected);
        let (payload, stamped) = (self.payload, self.tmpl[port].stamped);
        let flows = self.cur.flows;
        dev.recv_prefix(PAYLOAD_OFF + 8, |f| {
            if f.len() < PAYLOAD_OFF || f[23] != 6 {
                *unexpected += 1;
                return;
            }
            // Port 0 hears from (10.253.0.0+i), port 1 is spoken to at it.
            let off = if port == 0 { 26 } else { 30 };
            let addr = u32::from_be_bytes(f[off..off + 4].try_into().expect("4 bytes"));
            let flow = addr.wrapping_sub(IP_DST_BASE);
            if flow >= flows {
                *unexpected += 1;
                return;
            }
            let seq = u32::from_be_bytes(f[38..42].try_into().expect("4 bytes"));
            let end = seq.wrapping_add(payload);
            let ack = &mut side.ack[flow as usize];
            if seq_gt(end, *ack) {
                *ack = end;
            }
            if stamped {
                if let Some(b) = f.get(PAYLOAD_OFF..PAYLOAD_OFF + 8) {
                    let ts = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                    lat.take_stamp(ts);
                }
            }
        })
    }

    type Extra = TcpExtra;

    fn extra(&self) -> TcpExtra {
        TcpExtra {
            tcp_unexpected: self.unexpected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Incrementally patched data segments carry the checksums a full computation gives.
    #[test]
    fn data_segments_have_valid_checksums() {
        for size in [60usize, 64, 1514] {
            let a = Args {
                size,
                flows: 70_000,
                ..Args::for_test()
            };
            let t = Tcp::new(&a, 4);
            for port in 0..2 {
                for (flow, ts) in [(0u32, 0u64), (1, 77), (65_536, u64::MAX - 5), (69_999, 1)] {
                    let tm = &t.tmpl[port];
                    let mut f = tm.frame.clone();
                    let addr = IP_DST_BASE + flow;
                    let (seq, ack) = (t.side[port].seq[flow as usize], 0xdead_beef);
                    let ts = if tm.stamped { ts } else { 0 };
                    let a = add32(addr);
                    let ts_sum = add32(ts as u32) + add32((ts >> 32) as u32);
                    f[tm.addr_off..tm.addr_off + 4].copy_from_slice(&addr.to_be_bytes());
                    f[24..26].copy_from_slice(&fold(tm.ip_sum + a).to_be_bytes());
                    f[38..42].copy_from_slice(&seq.to_be_bytes());
                    f[42..46].copy_from_slice(&u32::to_be_bytes(ack));
                    let c = fold(tm.tcp_sum + a + add32(seq) + add32(ack) + ts_sum);
                    f[50..52].copy_from_slice(&c.to_be_bytes());
                    if tm.stamped {
                        f[54..62].copy_from_slice(&ts.to_be_bytes());
                    }
                    assert_eq!(crate::ipv4_checksum(&f[14..34]), 0, "ip, size {size}");
                    let mut pseudo = f[26..34].to_vec();
                    pseudo.extend_from_slice(&[0, 6]);
                    pseudo.extend_from_slice(&((size - 34) as u16).to_be_bytes());
                    pseudo.extend_from_slice(&f[34..]);
                    assert_eq!(crate::ipv4_checksum(&pseudo), 0, "tcp, size {size}");
                    assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, size - 14);
                }
            }
            // SYNs carry the window scale and valid checksums too.
            let syn = t.handshake_frame(0, 5, SYN);
            assert_eq!(syn[46] >> 4, 6);
            assert_eq!(&syn[54..58], &[1, 3, 3, WSCALE]);
            let mut pseudo = syn[26..34].to_vec();
            pseudo.extend_from_slice(&[0, 6, 0, 24]);
            pseudo.extend_from_slice(&syn[34..58]);
            assert_eq!(crate::ipv4_checksum(&pseudo), 0);
        }
    }
}
