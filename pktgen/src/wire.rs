//! `pktgen wire`: a cable between two vhost-user switch ports. It forwards every frame one
//! port's switch sends it to the other port, both ways, unchanged, so two switches on one
//! machine (standing for two hosts) reach each other's guests: an uplink for tests of live
//! migration between two bulwarkd instances.
//!
//! ```text
//! pktgen wire (--dial PATH | --listen PATH) (--peer-dial PATH | --peer-listen PATH)
//!             [--nap-us N] [--mac-a MAC] [--mac-b MAC]
//! ```
//!
//! Runs until it is killed, or a side fails; its counters (frames each way, dropped) go to
//! stderr every 5 s. Frames that find the other side's ring full are dropped (counted), as a
//! cable under overload would.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};

use crate::{parse_mac, Connect, DeviceConfig, VirtioNet};

/// Command-line options of `pktgen wire`.
#[derive(Debug, Parser)]
#[command(
    name = "pktgen wire",
    about = "Forward frames between two vhost-user ports, both ways"
)]
#[command(group(ArgGroup::new("a").required(true).args(["dial", "listen"])))]
#[command(group(ArgGroup::new("b").required(true).args(["peer_dial", "peer_listen"])))]
struct Args {
    /// Connect to the switch's socket for side A (the switch listens).
    #[arg(long, value_name = "PATH")]
    dial: Option<PathBuf>,
    /// Listen for side A's switch (it dials).
    #[arg(long, value_name = "PATH")]
    listen: Option<PathBuf>,
    /// Connect to the switch's socket for side B.
    #[arg(long, value_name = "PATH")]
    peer_dial: Option<PathBuf>,
    /// Listen for side B's switch.
    #[arg(long, value_name = "PATH")]
    peer_listen: Option<PathBuf>,
    /// Microseconds to sleep when neither side had a frame (0: spin).
    #[arg(long, default_value_t = 50)]
    nap_us: u64,
    /// Side A's MAC (only its virtio config; frames keep their own addresses).
    #[arg(long, value_parser = parse_mac, default_value = "02:00:00:00:ff:0a")]
    mac_a: [u8; 6],
    /// Side B's MAC.
    #[arg(long, value_parser = parse_mac, default_value = "02:00:00:00:ff:0b")]
    mac_b: [u8; 6],
}

fn connect(
    dial: Option<PathBuf>,
    listen: Option<PathBuf>,
    mac: [u8; 6],
) -> Result<VirtioNet, String> {
    let how = match (dial, listen) {
        (Some(p), _) => Connect::Dial(p),
        (None, Some(p)) => Connect::Listen(p),
        (None, None) => return Err("no socket".into()),
    };
    VirtioNet::connect(
        how.clone(),
        DeviceConfig {
            mac,
            mem_size: 64 << 20,
            queue_size: 1024,
            rx_buf_len: 2048,
            ..DeviceConfig::default()
        },
    )
    .map_err(|e| format!("{how:?}: {e}"))
}

/// Moves what `from` received into `to`; returns (frames forwarded, dropped).
fn pass(
    from: &mut VirtioNet,
    to: &mut VirtioNet,
    buf: &mut Vec<Vec<u8>>,
) -> Result<(u64, u64), String> {
    buf.clear();
    from.recv(|f| {
        if f.len() <= crate::MAX_TX_FRAME {
            buf.push(f.to_vec());
        }
    })
    .map_err(|e| e.to_string())?;
    if buf.is_empty() {
        return Ok((0, 0));
    }
    let frames: Vec<&[u8]> = buf.iter().map(Vec::as_slice).collect();
    let mut sent = 0;
    // A moment for the other side to free its ring before counting a drop.
    for _ in 0..100 {
        sent += to.send(&frames[sent..]);
        if sent == frames.len() {
            break;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    Ok((sent as u64, (frames.len() - sent) as u64))
}

/// `pktgen wire ARGS`; returns the exit status (1 when a side cannot be reached or fails, 2
/// on usage errors; otherwise it runs until killed).
pub fn main(argv: &[String]) -> u8 {
    let args = match Args::try_parse_from(
        std::iter::once("pktgen wire".to_string()).chain(argv.iter().cloned()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let mut a = match connect(args.dial, args.listen, args.mac_a) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pktgen wire: side A: {e}");
            return 1;
        }
    };
    let mut b = match connect(args.peer_dial, args.peer_listen, args.mac_b) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pktgen wire: side B: {e}");
            return 1;
        }
    };
    eprintln!("pktgen wire: both sides up");
    let (mut ab, mut ba, mut dropped) = (0u64, 0u64, 0u64);
    let mut buf = Vec::new();
    let mut report = std::time::Instant::now();
    loop {
        if report.elapsed() >= Duration::from_secs(5) {
            report = std::time::Instant::now();
            eprintln!("pktgen wire: a_to_b {ab} b_to_a {ba} dropped {dropped}");
        }
        let r =
            pass(&mut a, &mut b, &mut buf).and_then(|x| Ok((x, pass(&mut b, &mut a, &mut buf)?)));
        match r {
            Ok(((n1, d1), (n2, d2))) => {
                ab += n1;
                ba += n2;
                dropped += d1 + d2;
                if n1 + n2 + d1 + d2 == 0 && args.nap_us > 0 {
                    std::thread::sleep(Duration::from_micros(args.nap_us));
                }
            }
            Err(e) => {
                eprintln!("pktgen wire: {e} (a_to_b {ab} b_to_a {ba} dropped {dropped})");
                return 1;
            }
        }
    }
}
