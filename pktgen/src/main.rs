//! `pktgen`: sends N UDP frames from device A to device B through a vhost-user switch and
//! verifies every frame byte-exact at B.
//!
//! ```text
//! pktgen (--dial PATH | --listen PATH) (--peer-dial PATH | --peer-listen PATH)
//!        [--frames N] [--size BYTES] [--window W] [--mac-a MAC] [--mac-b MAC] [--chained]
//!        [--features HEX]
//! pktgen bench ...    (see `pktgen::bench`)
//! pktgen wire ...     (see `pktgen::wire`: a cable between two switches' ports)
//! pktgen flood ...    (see `pktgen::flood`: SYN or UDP flood from one port)
//! ```
//!
//! `pktgen --help` lists every option with its default and range (the parser is clap's,
//! `Cli`); given twice, a flag's last value counts, and so does the last of `--dial` and
//! `--listen` (or of `--peer-dial` and `--peer-listen`).
//!
//! Sequence: connect A, connect B; warm-up (B -> A until A hears it, so a learning switch knows
//! B's MAC and both ports are up; then A -> B probes until B hears one); then A sends N frames
//! to B keeping at most W frames in flight (sent - received at B). Progress goes to stderr once
//! a second, the result as one JSON line to stdout (`Summary`, serialized by serde_json). Exit
//! status 0 iff nothing was lost or corrupted; 1 if something was; 2 on usage or connection
//! errors.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser};
use serde::Serialize;

use pktgen::{build_udp_frame, parse_mac, Connect, DeviceConfig, VirtioNet, MAX_TX_FRAME};

/// UDP ports of data frames.
const DATA_SPORT: u16 = 5001;
const DATA_DPORT: u16 = 5002;
/// UDP port of warm-up probes (discard).
const PROBE_PORT: u16 = 9;
const IP_A: [u8; 4] = [10, 0, 0, 10];
const IP_B: [u8; 4] = [10, 0, 0, 11];
/// Ethernet + IPv4 + UDP header bytes in front of the payload.
const HDRS: usize = 14 + 20 + 8;
/// Frames built per `send` call.
const BURST: usize = 32;
/// With the window full and nothing received for this long, the outstanding frames are
/// written off as lost so the run can continue.
const STALL_WRITE_OFF: Duration = Duration::from_millis(500);
/// After the last frame was sent, wait at most this long (without progress) for the rest.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Give up if the tx ring makes no progress for this long.
const TX_STALL_ABORT: Duration = Duration::from_secs(5);
const WARMUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends N UDP frames from device A to device B through a vhost-user switch and checks every
/// frame byte-exact at B.
///
/// Progress goes to stderr once a second, the result as one JSON line to stdout:
/// {"sent","received","lost","corrupt","seconds","mpps"}. Exit status 0 iff nothing was lost
/// or corrupted, 1 if something was, 2 on usage or connection errors.
#[derive(Debug, Parser)]
#[command(
    name = "pktgen",
    // A flag given twice: the last one counts.
    args_override_self = true,
    after_help = "The benchmark load generator: pktgen bench --help"
)]
#[command(group(ArgGroup::new("device_a").required(true).args(["dial", "listen"])))]
#[command(group(ArgGroup::new("device_b").required(true).args(["peer_dial", "peer_listen"])))]
struct Cli {
    /// Device A connects to the switch's socket PATH (the switch listens)
    #[arg(long, value_name = "PATH", overrides_with = "listen")]
    dial: Option<PathBuf>,
    /// Device A listens on PATH and the switch connects to it
    #[arg(long, value_name = "PATH", overrides_with = "dial")]
    listen: Option<PathBuf>,
    /// Device B connects to the switch's socket PATH (the switch listens)
    #[arg(long, value_name = "PATH", overrides_with = "peer_listen")]
    peer_dial: Option<PathBuf>,
    /// Device B listens on PATH and the switch connects to it
    #[arg(long, value_name = "PATH", overrides_with = "peer_dial")]
    peer_listen: Option<PathBuf>,
    /// Frames A sends to B
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1_000_000,
        allow_negative_numbers = true
    )]
    frames: u64,
    /// Frame size in bytes: 60..=1514, or jumbo up to 9216 (frames larger than one rx
    /// buffer exercise MRG_RXBUF)
    #[arg(long, value_name = "BYTES", default_value_t = 60, value_parser = parse_size,
          allow_negative_numbers = true)]
    size: usize,
    /// Frames in flight at most (sent, not yet received at B), > 0 [default: as many as B's
    /// rx ring holds]
    #[arg(long, value_name = "W", value_parser = parse_window, allow_negative_numbers = true)]
    window: Option<usize>,
    /// Device A's MAC address
    #[arg(long, value_name = "MAC", default_value = "02:00:00:00:00:0a", value_parser = parse_mac)]
    mac_a: [u8; 6],
    /// Device B's MAC address
    #[arg(long, value_name = "MAC", default_value = "02:00:00:00:00:0b", value_parser = parse_mac)]
    mac_b: [u8; 6],
    /// A sends each frame as a descriptor chain (header and frame in separate buffers)
    #[arg(long)]
    chained: bool,
    /// Virtio feature bits the devices accept, hex with or without 0x [default: VERSION_1 |
    /// MRG_RXBUF | EVENT_IDX | PROTOCOL_FEATURES, 0x160008000]
    #[arg(long, value_name = "HEX", value_parser = parse_hex, allow_hyphen_values = true)]
    features: Option<u64>,
}

fn parse_size(v: &str) -> Result<usize, String> {
    // 60..=1514 is a normal Ethernet frame; up to MAX_TX_FRAME (jumbo) is accepted to
    // exercise MRG_RXBUF (frames larger than one 2048-byte rx buffer).
    v.parse::<usize>()
        .ok()
        .filter(|n| (60..=MAX_TX_FRAME).contains(n))
        .ok_or_else(|| format!("must be a number in 60..={MAX_TX_FRAME}"))
}

fn parse_window(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| "must be a number > 0".to_string())
}

/// Hex with an optional `0x` prefix.
fn parse_hex(v: &str) -> Result<u64, String> {
    u64::from_str_radix(v.trim_start_matches("0x"), 16)
        .map_err(|_| "not a hex number (0x optional)".to_string())
}

#[derive(Debug)]
struct Args {
    a: Connect,
    b: Connect,
    frames: u64,
    size: usize,
    window: Option<usize>,
    mac_a: [u8; 6],
    mac_b: [u8; 6],
    chained: bool,
    features: Option<u64>,
}

impl From<Cli> for Args {
    fn from(c: Cli) -> Args {
        // The groups make exactly one of each pair present.
        let side = |dial: Option<PathBuf>, listen: Option<PathBuf>| match (dial, listen) {
            (Some(p), _) => Connect::Dial(p),
            (None, Some(p)) => Connect::Listen(p),
            (None, None) => unreachable!("clap requires one of the group"),
        };
        Args {
            a: side(c.dial, c.listen),
            b: side(c.peer_dial, c.peer_listen),
            frames: c.frames,
            size: c.size,
            window: c.window,
            mac_a: c.mac_a,
            mac_b: c.mac_b,
            chained: c.chained,
            features: c.features,
        }
    }
}

/// Parses `argv` (program name first).
fn parse_args<I, T>(argv: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(argv).map(Args::from)
}

/// The result line on stdout.
#[derive(Debug, Serialize)]
struct Summary {
    sent: u64,
    received: u64,
    lost: u64,
    corrupt: u64,
    seconds: f64,
    mpps: f64,
}

/// Deterministic payload byte `i` of frame `seq` (after the 8-byte sequence number).
fn pattern(seq: u64, i: usize) -> u8 {
    // Cannot truncate meaningfully: only the low bits matter for a byte pattern.
    (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (i as u8).wrapping_mul(7)
}

/// Frames of one run: a template plus per-sequence payload.
struct FrameGen {
    template: Vec<u8>,
}

impl FrameGen {
    fn new(args: &Args) -> Self {
        let payload = vec![0u8; args.size - HDRS];
        let template = build_udp_frame(
            args.mac_b, args.mac_a, IP_A, IP_B, DATA_SPORT, DATA_DPORT, &payload,
        );
        Self { template }
    }

    /// Writes frame `seq` into `out`.
    fn build(&self, seq: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.template);
        out[HDRS..HDRS + 8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in out[HDRS + 8..].iter_mut().enumerate() {
            *b = pattern(seq, i);
        }
    }

    /// Sequence number of a received frame that looks like one of ours (right MACs), or
    /// `None` for foreign traffic.
    fn classify(&self, f: &[u8]) -> Option<Option<u64>> {
        if f.len() < 12 || f[..12] != self.template[..12] {
            return None;
        }
        if f.len() != self.template.len() {
            return Some(None);
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&f[HDRS..HDRS + 8]);
        Some(Some(u64::from_be_bytes(seq)))
    }
}

#[derive(Debug, Default)]
struct RxStats {
    received: u64,
    corrupt: u64,
    other: u64,
}

/// Verifies frames arriving at B.
struct Checker {
    gen: FrameGen,
    seen: Vec<u64>,
    frames: u64,
    expect: Vec<u8>,
    stats: RxStats,
}

impl Checker {
    fn check(&mut self, f: &[u8]) {
        match self.gen.classify(f) {
            None => self.stats.other += 1,
            Some(None) => self.stats.corrupt += 1,
            Some(Some(seq)) => {
                if seq >= self.frames {
                    self.stats.corrupt += 1;
                    return;
                }
                // Cannot truncate: seq < frames, and the bitmap was allocated for `frames`.
                let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                self.gen.build(seq, &mut self.expect);
                if f != self.expect.as_slice() || self.seen[w] & bit != 0 {
                    self.stats.corrupt += 1;
                } else {
                    self.seen[w] |= bit;
                    self.stats.received += 1;
                }
            }
        }
    }
}

fn probe(dst: [u8; 6], src: [u8; 6], sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    let mut f = build_udp_frame(
        dst,
        src,
        sip,
        dip,
        PROBE_PORT,
        PROBE_PORT,
        b"bulwark-pktgen probe",
    );
    f.resize(60, 0);
    f
}

/// Sends `frame` from `from` every 100 ms until `to` receives a frame from `from`'s MAC.
fn warmup_leg(
    from: &mut VirtioNet,
    to: &mut VirtioNet,
    frame: &[u8],
    what: &str,
) -> Result<(), String> {
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let src = from.mac();
    loop {
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
            from.send(&[frame]);
            last_send = Some(Instant::now());
        }
        let mut heard = false;
        to.recv(|f| heard |= f.len() >= 12 && f[6..12] == src)
            .map_err(|e| format!("{what}: {e}"))?;
        // Keep the sender's own rx ring drained too.
        from.recv(|_| ()).map_err(|e| format!("{what}: {e}"))?;
        if heard {
            return Ok(());
        }
        if start.elapsed() > WARMUP_TIMEOUT {
            return Err(format!(
                "{what}: no frame arrived within {WARMUP_TIMEOUT:?}"
            ));
        }
        std::hint::spin_loop();
    }
}

fn run(args: Args) -> Result<bool, String> {
    let cfg = |mac| {
        let d = DeviceConfig::default();
        DeviceConfig {
            mac,
            features: args.features.unwrap_or(d.features),
            ..d
        }
    };
    let mut a = VirtioNet::connect(args.a.clone(), cfg(args.mac_a))
        .map_err(|e| format!("device A: {e} ({e:?})"))?;
    eprintln!(
        "pktgen: A connected, features {:#x}",
        a.negotiated_features()
    );
    let mut b = VirtioNet::connect(args.b.clone(), cfg(args.mac_b))
        .map_err(|e| format!("device B: {e} ({e:?})"))?;
    eprintln!(
        "pktgen: B connected, features {:#x}",
        b.negotiated_features()
    );
    // Default window: as many frames as B's rx ring can hold, so a lossless switch never finds
    // B's ring full (a frame larger than one rx buffer takes several with MRG_RXBUF).
    let dcfg = DeviceConfig::default();
    let bufs_per_frame = (args.size + b.hdr_len()).div_ceil(dcfg.rx_buf_len as usize);
    let window = args
        .window
        .unwrap_or((usize::from(dcfg.queue_size) / bufs_per_frame).max(1));

    warmup_leg(
        &mut b,
        &mut a,
        &probe(args.mac_a, args.mac_b, IP_B, IP_A),
        "warm-up B->A",
    )?;
    warmup_leg(
        &mut a,
        &mut b,
        &probe(args.mac_b, args.mac_a, IP_A, IP_B),
        "warm-up A->B",
    )?;
    // Let stray probes drain so they are not mistaken for data.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(50) {
        let _ = a.recv(|_| ());
        let _ = b.recv(|_| ());
    }
    eprintln!(
        "pktgen: warm-up done, sending {} frames of {} bytes, window {window}",
        args.frames, args.size
    );

    let gen = FrameGen::new(&args);
    let mut checker = Checker {
        gen: FrameGen::new(&args),
        // Cannot truncate: a bitmap for more than usize::MAX*64 frames could not be allocated anyway.
        seen: vec![0; (args.frames as usize).div_ceil(64)],
        frames: args.frames,
        expect: Vec::with_capacity(args.size),
        stats: RxStats::default(),
    };
    let mut bufs: Vec<Vec<u8>> = (0..BURST).map(|_| Vec::with_capacity(args.size)).collect();

    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut written_off: u64 = 0;
    let mut last_rx = Instant::now();
    let mut last_tx = Instant::now();
    let mut last_report = Instant::now();
    let mut last_report_rx = 0;
    let mut end = start;
    let mut aborted = false;
    loop {
        let received = checker.stats.received + checker.stats.corrupt;
        // Cannot truncate: the difference is bounded by the window.
        let in_flight = sent.saturating_sub(received + written_off) as usize;
        if sent < args.frames && in_flight < window {
            let n = (window - in_flight)
                .min(BURST)
                .min(usize::try_from(args.frames - sent).unwrap_or(BURST));
            for (k, buf) in bufs.iter_mut().take(n).enumerate() {
                gen.build(sent + k as u64, buf);
            }
            let refs: Vec<&[u8]> = bufs[..n].iter().map(Vec::as_slice).collect();
            let q = if args.chained {
                a.send_chained(&refs)
            } else {
                a.send(&refs)
            };
            if q > 0 {
                sent += q as u64;
                last_tx = Instant::now();
            } else if last_tx.elapsed() > TX_STALL_ABORT {
                eprintln!(
                    "pktgen: tx ring of A stalled ({} descriptors in flight); aborting",
                    a.tx_in_flight()
                );
                aborted = true;
                break;
            }
        } else if sent < args.frames && last_rx.elapsed() > STALL_WRITE_OFF {
            // Window full and nothing arriving: count the outstanding frames as lost.
            written_off = sent - received;
            last_rx = Instant::now();
        }

        let got = b
            .recv(|f| checker.check(f))
            .map_err(|e| format!("device B rx: {e}"))?;
        if got > 0 {
            last_rx = Instant::now();
            end = last_rx;
        }
        // Drain A's rx ring (a learning switch may flood to A) and reclaim its tx buffers.
        a.recv(|_| ()).map_err(|e| format!("device A rx: {e}"))?;
        if let Some(e) = a.take_tx_error().or_else(|| b.take_tx_error()) {
            return Err(format!("device misbehaved on a tx ring: {e}"));
        }

        let done = checker.stats.received + checker.stats.corrupt;
        if sent == args.frames && (done == sent || last_rx.elapsed() > DRAIN_TIMEOUT) {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let dt = last_report.elapsed().as_secs_f64();
            eprintln!(
                "pktgen: {:.0}s sent={sent} received={} corrupt={} rate={:.3} Mpps",
                start.elapsed().as_secs_f64(),
                checker.stats.received,
                checker.stats.corrupt,
                (checker.stats.received - last_report_rx) as f64 / dt / 1e6
            );
            last_report = Instant::now();
            last_report_rx = checker.stats.received;
        }
    }
    if end == start {
        end = Instant::now();
    }
    let s = &checker.stats;
    let seconds = (end - start).as_secs_f64();
    let lost = sent - s.received.min(sent);
    let mpps = if seconds > 0.0 {
        s.received as f64 / seconds / 1e6
    } else {
        0.0
    };
    if s.other > 0 {
        eprintln!("pktgen: {} foreign frames received at B (ignored)", s.other);
    }
    let summary = Summary {
        sent,
        received: s.received,
        lost,
        corrupt: s.corrupt,
        seconds,
        mpps,
    };
    println!(
        "{}",
        serde_json::to_string(&summary).expect("plain numbers serialize")
    );
    Ok(!aborted && lost == 0 && s.corrupt == 0 && sent == args.frames)
}

use pktgen::bench;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).is_some_and(|a| a == "bench") {
        return ExitCode::from(bench::main(&argv[2..]));
    }
    if argv.get(1).is_some_and(|a| a == "flood") {
        return ExitCode::from(pktgen::flood::main(&argv[2..]));
    }
    if argv.get(1).is_some_and(|a| a == "wire") {
        return ExitCode::from(pktgen::wire::main(&argv[2..]));
    }
    // Exits with 2 on usage errors (0 for --help).
    let args = parse_args(argv).unwrap_or_else(|e| e.exit());
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pktgen: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn args(v: &[&str]) -> Result<Args, clap::Error> {
        parse_args(std::iter::once("pktgen").chain(v.iter().copied()))
    }

    /// `args` with both devices dialling and `extra`.
    fn with(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut v = vec!["--dial", "/a", "--peer-dial", "/b"];
        v.extend_from_slice(extra);
        args(&v)
    }

    fn path(c: &Connect) -> (&'static str, &str) {
        match c {
            Connect::Dial(p) => ("dial", p.to_str().unwrap()),
            Connect::Listen(p) => ("listen", p.to_str().unwrap()),
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let a = with(&[]).unwrap();
        assert_eq!((path(&a.a), path(&a.b)), (("dial", "/a"), ("dial", "/b")));
        assert_eq!((a.frames, a.size, a.window), (1_000_000, 60, None));
        assert_eq!(a.mac_a, [2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(a.mac_b, [2, 0, 0, 0, 0, 0x0b]);
        assert!(!a.chained);
        assert_eq!(a.features, None);
    }

    #[test]
    fn every_option() {
        let a = args(&[
            "--listen",
            "/l",
            "--peer-listen",
            "/pl",
            "--frames",
            "5",
            "--size",
            "9216",
            "--window",
            "1",
            "--mac-a",
            "02:00:00:00:01:0a",
            "--mac-b",
            "02:00:00:00:01:0b",
            "--chained",
            "--features",
            "0x100008000",
        ])
        .unwrap();
        assert_eq!(
            (path(&a.a), path(&a.b)),
            (("listen", "/l"), ("listen", "/pl"))
        );
        assert_eq!((a.frames, a.size, a.window), (5, 9216, Some(1)));
        assert_eq!(a.mac_a, [2, 0, 0, 0, 1, 0x0a]);
        assert_eq!(a.mac_b, [2, 0, 0, 0, 1, 0x0b]);
        assert!(a.chained);
        assert_eq!(a.features, Some(0x1_0000_8000));
    }

    /// As before clap: the last of --dial/--listen (and of --peer-*) counts, and so does the
    /// last of a flag given twice.
    #[test]
    fn last_one_counts() {
        let a = args(&[
            "--dial",
            "/a",
            "--listen",
            "/l",
            "--peer-listen",
            "/x",
            "--peer-dial",
            "/b",
        ])
        .unwrap();
        assert_eq!((path(&a.a), path(&a.b)), (("listen", "/l"), ("dial", "/b")));
        let a = with(&["--size", "100", "--size", "200", "--chained", "--chained"]).unwrap();
        assert_eq!(a.size, 200);
        assert!(a.chained);
    }

    #[test]
    fn features_are_hex_with_optional_0x() {
        for (v, want) in [("ff", 0xff), ("0xff", 0xff), ("FF", 0xff), ("0", 0)] {
            assert_eq!(
                with(&["--features", v]).unwrap().features,
                Some(want),
                "{v}"
            );
        }
        for bad in ["0xg", "", "0x", "-1", "10000000000000000"] {
            let e = with(&["--features", bad]).expect_err(bad).to_string();
            assert!(e.contains("'--features <HEX>'"), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_their_flag() {
        for (flag, bad) in [
            ("--size", "59"),
            ("--size", "9217"),
            ("--size", "-60"),
            ("--size", "x"),
            ("--window", "0"),
            ("--window", "-1"),
            ("--frames", "x"),
            ("--frames", "-1"),
            ("--mac-a", "02:00:00:00:00"),
            ("--mac-b", "02:00:00:00:00:zz"),
        ] {
            let e = with(&[flag, bad]).expect_err("invalid");
            assert_eq!(e.exit_code(), 2);
            let msg = e.to_string();
            assert!(msg.contains(&format!("'{flag} ")), "{flag} {bad}: {msg}");
        }
        assert!(with(&["--size", "59"])
            .unwrap_err()
            .to_string()
            .contains(&format!("60..={MAX_TX_FRAME}")));
        // Both devices are required.
        for (v, missing) in [
            (&["--peer-dial", "/b"][..], "--dial"),
            (&["--dial", "/a"], "--peer-dial"),
        ] {
            let e = args(v).expect_err("missing device").to_string();
            assert!(e.contains("required") && e.contains(missing), "{e}");
        }
        assert!(with(&["--bogus"])
            .unwrap_err()
            .to_string()
            .contains("'--bogus'"));
        let e = with(&["--help"]).unwrap_err();
        assert_eq!(e.exit_code(), 0);
        assert!(e.to_string().contains("--peer-listen"));
    }

    /// The result line keeps its members and order.
    #[test]
    fn summary_json() {
        let s = Summary {
            sent: 10,
            received: 9,
            lost: 1,
            corrupt: 0,
            seconds: 0.5,
            mpps: 1.8e-5,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"sent":10,"received":9,"lost":1,"corrupt":0,"seconds":0.5,"mpps":0.000018}"#
        );
    }
}
