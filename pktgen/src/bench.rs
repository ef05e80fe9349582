//! `pktgen bench`: a bidirectional load generator for switch benchmarks.
//!
//! ```text
//! pktgen bench (--dial SOCK0 --dial SOCK1 | --listen SOCK0 --listen SOCK1)
//!              [--flows N] [--size BYTES] [--duration SECS] [--warmup SECS] [--cpu CPU]
//!              [--mac0 MAC] [--mac1 MAC] [--queue-size N]
//! ```
//!
//! Port 0 sends flow i (i = 0..N-1, round robin) as UDP 10.254.0.1:1000 -> (10.253.0.0+i):1001,
//! MAC mac0 -> mac1; port 1 sends the replies of the same flows (addresses, ports and MACs
//! swapped). So a stateful firewall sees N two-way connections, and a learning switch sees two
//! MACs, one per port. Both ports transmit as fast as the switch takes frames and count what
//! comes back (received frames are validated, not copied). One thread does everything; pin it
//! away from the switch's core.
//!
//! Progress once a second on stderr; at the end one JSON object on stdout. `rx_mpps` (frames the
//! switch delivered, both ports, per second: the median over the measured seconds) is the
//! figure to compare.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pktgen::{Connect, DeviceConfig, VirtioNet};

use crate::parse_mac;

const USAGE: &str =
    "usage: pktgen bench (--dial SOCK0 --dial SOCK1 | --listen SOCK0 --listen SOCK1) \
[--flows N (1)] [--size BYTES (60..1514; 60)] [--duration SECS (10)] [--warmup SECS (2)] \
[--cpu CPU] [--mac0 MAC] [--mac1 MAC] [--queue-size N (256)]";

/// Frames queued per `send` call.
const BURST: usize = 32;
const IP_SRC: u32 = 0x0afe_0001; // 10.254.0.1
const IP_DST_BASE: u32 = 0x0afd_0000; // 10.253.0.0
const SPORT: u16 = 1000;
const DPORT: u16 = 1001;

struct Args {
    socks: Vec<Connect>,
    flows: u32,
    size: usize,
    duration: u32,
    warmup: u32,
    cpu: Option<usize>,
    macs: [[u8; 6]; 2],
    queue_size: u16,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        socks: Vec::new(),
        flows: 1,
        size: 60,
        duration: 10,
        warmup: 2,
        cpu: None,
        macs: [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]],
        queue_size: 256,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--dial" => a.socks.push(Connect::Dial(PathBuf::from(val))),
            "--listen" => a.socks.push(Connect::Listen(PathBuf::from(val))),
            "--flows" => {
                a.flows = u32::try_from(num(val)?)
                    .ok()
                    .filter(|&n| (1..=1 << 24).contains(&n))
                    .ok_or("--flows must be 1..=16777216")?
            }
            "--size" => {
                a.size = usize::try_from(num(val)?)
                    .ok()
                    .filter(|n| (60..=1514).contains(n))
                    .ok_or("--size must be 60..=1514")?
            }
            "--duration" => a.duration = num(val)?.clamp(1, 3600) as u32,
            "--warmup" => a.warmup = num(val)?.min(600) as u32,
            "--cpu" => a.cpu = Some(num(val)? as usize),
            "--mac0" => a.macs[0] = parse_mac(val)?,
            "--mac1" => a.macs[1] = parse_mac(val)?,
            "--queue-size" => {
                a.queue_size = u16::try_from(num(val)?)
                    .ok()
                    .filter(|n| n.is_power_of_two() && (64..=4096).contains(n))
                    .ok_or("--queue-size must be a power of two in 64..=4096")?
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.socks.len() != 2 {
        return Err("give exactly two sockets (--dial or --listen, twice)".into());
    }
    Ok(a)
}

/// One direction's frame template and how to patch it per flow.
struct Template {
    frame: Vec<u8>,
    /// Offset of the address that varies per flow (dst for port 0, src for port 1).
    addr_off: usize,
    /// One's-complement sum of the IPv4 header without the varying address and checksum.
    base_sum: u32,
}

impl Template {
    fn new(port: usize, size: usize, macs: &[[u8; 6]; 2]) -> Template {
        let (src_mac, dst_mac) = if port == 0 {
            (macs[0], macs[1])
        } else {
            (macs[1], macs[0])
        };
        let mut f = vec![0u8; size];
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (size - 14) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[20] = 0x40; // DF
        f[22] = 64;
        f[23] = 17;
        let (sport, dport) = if port == 0 {
            (SPORT, DPORT)
        } else {
            (DPORT, SPORT)
        };
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        let (fixed_off, addr_off) = if port == 0 { (26, 30) } else { (30, 26) };
        f[fixed_off..fixed_off + 4].copy_from_slice(&IP_SRC.to_be_bytes());
        let base_sum = f[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let mut t = Template {
            frame: f,
            addr_off,
            base_sum,
        };
        let (a, c) = t.flow(0);
        t.frame[addr_off..addr_off + 4].copy_from_slice(&a);
        t.frame[24..26].copy_from_slice(&c);
        t
    }

    /// The varying address and the header checksum of flow `flow`.
    #[inline]
    fn flow(&self, flow: u32) -> ([u8; 4], [u8; 2]) {
        let a = IP_DST_BASE.wrapping_add(flow);
        let mut sum = self.base_sum + (a >> 16) + (a & 0xffff);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (a.to_be_bytes(), (!(sum as u16)).to_be_bytes())
    }
}

struct Port {
    dev: VirtioNet,
    tmpl: Template,
    /// Per tx slot: it holds the template already (only the flow fields change).
    written: Vec<bool>,
    next_flow: u32,
    sent: u64,
    received: u64,
}

impl Port {
    /// Queues up to one burst of the next flows' frames; returns how many were taken.
    fn send(&mut self, flows: u32) -> usize {
        let (tmpl, written, next) = (&self.tmpl, &mut self.written, &mut self.next_flow);
        let n = self.dev.send_in_place(tmpl.frame.len(), BURST, |id, slot| {
            let w = &mut written[usize::from(id)];
            if !*w {
                slot.write(0, &tmpl.frame);
                *w = true;
            }
            let (a, c) = tmpl.flow(*next);
            slot.write(tmpl.addr_off, &a);
            slot.write(24, &c);
            *next = if *next + 1 == flows { 0 } else { *next + 1 };
        });
        self.sent += n as u64;
        n
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Runs `pktgen bench ARGS`; returns the exit status.
pub fn main(argv: &[String]) -> u8 {
    let a = match parse(argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("pktgen bench: {e}");
            }
            eprintln!("{USAGE}");
            return 2;
        }
    };
    match run(&a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pktgen bench: {e}");
            2
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    if let Some(cpu) = a.cpu {
        pktgen::pin_to_cpu(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
    }
    let mut ports = Vec::new();
    for (i, how) in a.socks.iter().enumerate() {
        let dev = VirtioNet::connect(
            how.clone(),
            DeviceConfig {
                mac: a.macs[i],
                queue_size: a.queue_size,
                // Rings, rx buffers (2 KiB each) and tx slots for `queue_size` entries.
                mem_size: (16 << 20).max(usize::from(a.queue_size) * 12 * 1024),
                ..Default::default()
            },
        )
        .map_err(|e| format!("port {i}: {e}"))?;
        let slots = usize::from(dev.queue_size());
        ports.push(Port {
            dev,
            tmpl: Template::new(i, a.size, &a.macs),
            written: vec![false; slots],
            next_flow: 0,
            sent: 0,
            received: 0,
        });
    }
    let total = a.warmup + a.duration;
    eprintln!(
        "pktgen: bench: 2 ports, {} flows, {} B frames, {} s warm-up + {} s",
        a.flows, a.size, a.warmup, a.duration
    );
    let start = Instant::now();
    let mut tick = start + Duration::from_secs(1);
    let mut second = 0u32;
    let (mut last_tx, mut last_rx) = (0u64, 0u64);
    let (mut tx_ps, mut rx_ps) = (Vec::new(), Vec::new());
    let mut rx_err = None;
    let mut spins = 0u32;
    while second < total {
        for p in ports.iter_mut() {
            p.send(a.flows);
            match p.dev.recv_count() {
                Ok(n) => p.received += n as u64,
                Err(e) => {
                    rx_err.get_or_insert(e.to_string());
                }
            }
        }
        // Reading the clock on every pass cost a fifth of the generator's time when the
        // switch kept it waiting; a pass is well under a microsecond, so every 64th will do.
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            continue;
        }
        let now = Instant::now();
        if now >= tick {
            second += 1;
            let secs = (now - (tick - Duration::from_secs(1))).as_secs_f64();
            let tx: u64 = ports.iter().map(|p| p.sent).sum();
            let rx: u64 = ports.iter().map(|p| p.received).sum();
            let (txr, rxr) = (
                (tx - last_tx) as f64 / secs / 1e6,
                (rx - last_rx) as f64 / secs / 1e6,
            );
            (last_tx, last_rx) = (tx, rx);
            let phase = if second <= a.warmup { " (warm-up)" } else { "" };
            eprintln!("pktgen: t={second} tx={txr:.3} rx={rxr:.3} Mpps{phase}");
            if second > a.warmup {
                tx_ps.push(txr);
                rx_ps.push(rxr);
            }
            tick = now + Duration::from_secs(1);
        }
    }
    let sent: u64 = ports.iter().map(|p| p.sent).sum();
    let received: u64 = ports.iter().map(|p| p.received).sum();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let rx_mpps = median(&rx_ps);
    println!(
        "{{\"rx_mpps\":{rx_mpps:.4},\"tx_mpps\":{:.4},\"rx_gbps\":{:.3},\"rx_mpps_per_second\":[{}],\
\"tx_mpps_per_second\":[{}],\"frames_sent\":{sent},\"frames_received\":{received},\
\"size\":{},\"flows\":{},\"duration\":{},\"warmup\":{},\"rx_error\":{}}}",
        median(&tx_ps),
        // L2 bits per second (the frame, no FCS or preamble).
        rx_mpps * 1e6 * a.size as f64 * 8.0 / 1e9,
        list(&rx_ps),
        list(&tx_ps),
        a.size,
        a.flows,
        a.duration,
        a.warmup,
        rx_err.map_or("null".to_string(), |e| format!("{e:?}")),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Patched frames are valid IPv4/UDP for every flow, and port 1 sends port 0's replies.
    #[test]
    fn templates_patch_valid_headers() {
        let macs = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
        let (mut t0, mut t1) = (Template::new(0, 60, &macs), Template::new(1, 60, &macs));
        for flow in [0u32, 1, 255, 65_535, 65_536, 999_999] {
            for t in [&mut t0, &mut t1] {
                let (a, c) = t.flow(flow);
                t.frame[t.addr_off..t.addr_off + 4].copy_from_slice(&a);
                t.frame[24..26].copy_from_slice(&c);
                let mut h = t.frame[14..34].to_vec();
                h[10..12].fill(0);
                assert_eq!(pktgen::ipv4_checksum(&h).to_be_bytes(), c, "flow {flow}");
            }
            // Port 1's frame is port 0's with addresses, ports and MACs swapped.
            assert_eq!(t0.frame[26..30], t1.frame[30..34]);
            assert_eq!(t0.frame[30..34], t1.frame[26..30]);
            assert_eq!(t0.frame[34..36], t1.frame[36..38]);
            assert_eq!(t0.frame[0..6], t1.frame[6..12]);
            let dst = u32::from_be_bytes(t0.frame[30..34].try_into().unwrap());
            assert_eq!(dst, IP_DST_BASE + flow);
        }
    }
}
