//! `pktgen flood`: one port floods the switch with new connections, as a hostile VM would: TCP
//! SYNs or UDP datagrams to one destination, each from a new source port (and, with
//! `--spoof`, a new source address in 10.200.0.0/16), never answering anything.
//!
//! ```text
//! pktgen flood (--dial PATH | --listen PATH) --kind syn|udp --dst-mac MAC --dst-ip IP
//!              [--src-mac MAC] [--src-ip IP] [--dport N] [--spoof] [--rate MPPS]
//!              [--duration SECS] [--cpu CPU]
//! ```
//!
//! Receives and discards whatever comes back (RSTs, rejects). Prints one JSON line at the end:
//! `{"sent": N, "seconds": S, "mpps": R}`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser, ValueEnum};

use crate::frame::{fold, sum16};
use crate::{parse_mac, Connect, DeviceConfig, VirtioNet};

/// What the flood sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// TCP SYNs, each from a new source port
    Syn,
    /// UDP datagrams, each from a new source port
    Udp,
}

/// Command-line options of `pktgen flood`.
#[derive(Debug, Parser)]
#[command(
    name = "pktgen flood",
    about = "Flood a switch with new connections from one port"
)]
#[command(group(ArgGroup::new("port").required(true).args(["dial", "listen"])))]
struct Args {
    /// Connect to the switch's socket (the switch listens).
    #[arg(long, value_name = "PATH")]
    dial: Option<PathBuf>,
    /// Listen for the switch (it dials).
    #[arg(long, value_name = "PATH")]
    listen: Option<PathBuf>,
    /// What to send.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Destination MAC.
    #[arg(long, value_parser = parse_mac)]
    dst_mac: [u8; 6],
    /// Destination IPv4 address.
    #[arg(long)]
    dst_ip: Ipv4Addr,
    /// Our MAC.
    #[arg(long, value_parser = parse_mac, default_value = "02:00:00:00:00:66")]
    src_mac: [u8; 6],
    /// Our IPv4 address.
    #[arg(long, default_value = "10.0.0.66")]
    src_ip: Ipv4Addr,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    dport: u16,
    /// A new source address (10.200.x.y) for every 60,000 frames as well.
    #[arg(long)]
    spoof: bool,
    /// Frames per second in millions (0: as fast as the switch takes them).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to flood.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Pin to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

/// A 60-byte frame of `kind` from `sport` (and `src_ip`).
fn frame(a: &Args, src_ip: [u8; 4], sport: u16) -> Vec<u8> {
    let (proto, l4): (u8, Vec<u8>) = match a.kind {
        Kind::Syn => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&a.dport.to_be_bytes());
            t[4..8].copy_from_slice(&u32::from(sport).wrapping_mul(2_654_435_761).to_be_bytes());
            t[12] = 5 << 4;
            t[13] = 0x02; // SYN
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (6, t)
        }
        Kind::Udp => {
            let mut u = vec![0u8; 8 + 18];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&a.dport.to_be_bytes());
            u[4..6].copy_from_slice(&26u16.to_be_bytes());
            (17, u)
        }
    };
    let dst_ip = a.dst_ip.octets();
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&a.dst_mac);
    f.extend_from_slice(&a.src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&dst_ip);
    let c = fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut l4 = l4;
    if proto == 6 {
        // TCP checksum over the pseudo-header.
        let mut pseudo = Vec::with_capacity(12 + l4.len());
        pseudo.extend_from_slice(&src_ip);
        pseudo.extend_from_slice(&dst_ip);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&u16::try_from(l4.len()).unwrap_or(0).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let c = fold(sum16(&pseudo));
        l4[16..18].copy_from_slice(&c.to_be_bytes());
    }
    f.extend_from_slice(&l4);
    f.resize(60, 0);
    f
}

/// `pktgen flood ARGS`; returns the exit status (0 done, 1 device error, 2 usage).
pub fn main(argv: &[String]) -> u8 {
    let a = match Args::try_parse_from(
        std::iter::once("pktgen flood".to_string()).chain(argv.iter().cloned()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if let Some(cpu) = a.cpu {
        if let Err(e) = crate::pin_to_cpu(cpu) {
            eprintln!("pktgen flood: --cpu {cpu}: {e}");
            return 2;
        }
    }
    let how = match (&a.dial, &a.listen) {
        (Some(p), _) => Connect::Dial(p.clone()),
        (None, Some(p)) => Connect::Listen(p.clone()),
        (None, None) => return 2,
    };
    let mut dev = match VirtioNet::connect(
        how,
        DeviceConfig {
            mac: a.src_mac,
            ..DeviceConfig::default()
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pktgen flood: {e}");
            return 1;
        }
    };
    // 60,000 source ports per address; 256 addresses with --spoof.
    let addrs: Vec<[u8; 4]> = if a.spoof {
        (0..=255u8).map(|i| [10, 200, i, 1]).collect()
    } else {
        vec![a.src_ip.octets()]
    };
    let frames: Vec<Vec<u8>> = addrs
        .iter()
        .flat_map(|ip| (1024..61024u16).map(move |p| (*ip, p)))
        .map(|(ip, p)| frame(&a, ip, p))
        .collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration.max(1));
    let mut sent: u64 = 0;
    let mut next = 0usize;
    while Instant::now() < end {
        if a.rate > 0.0 {
            let due = (start.elapsed().as_secs_f64() * a.rate * 1e6) as u64;
            if sent >= due {
                std::hint::spin_loop();
                let _ = dev.recv_count();
                continue;
            }
        }
        let batch: Vec<&[u8]> = (0..32)
            .map(|k| frames[(next + k) % frames.len()].as_slice())
            .collect();
        let n = dev.send(&batch);
        next = (next + n) % frames.len();
        sent += n as u64;
        let _ = dev.recv_count();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\": {sent}, \"seconds\": {secs:.3}, \"mpps\": {:.4}}}",
        sent as f64 / secs / 1e6
    );
    0
}
