//! `pktgen`: sends N UDP frames from device A to device B through a vhost-user switch and
//! verifies every frame byte-exact at B.
//!
//! ```text
//! pktgen (--dial PATH | --listen PATH) (--peer-dial PATH | --peer-listen PATH)
//!        [--frames N] [--size BYTES] [--window W] [--mac-a MAC] [--mac-b MAC] [--chained]
//!        [--features HEX]
//! ```
//!
//! Sequence: connect A, connect B; warm-up (B -> A until A hears it, so a learning switch knows
//! B's MAC and both ports are up; then A -> B probes until B hears one); then A sends N frames
//! to B keeping at most W frames in flight (sent - received at B). Progress goes to stderr once
//! a second, the result as one JSON line to stdout. Exit status 0 iff nothing was lost or
//! corrupted; 1 if something was; 2 on usage or connection errors.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

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

const USAGE: &str =
    "usage: pktgen (--dial PATH | --listen PATH) (--peer-dial PATH | --peer-listen PATH) \
[--frames N (1000000)] [--size BYTES (60..1514, jumbo up to 9216; 60)] [--window W (rx ring capacity in frames)] \
[--mac-a MAC] [--mac-b MAC] [--chained] [--features HEX (virtio features to accept)]";

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

fn parse_args() -> Result<Args, String> {
    let mut a = None;
    let mut b = None;
    let mut args = Args {
        a: Connect::Dial(PathBuf::new()),
        b: Connect::Dial(PathBuf::new()),
        frames: 1_000_000,
        size: 60,
        window: None,
        mac_a: [0x02, 0, 0, 0, 0, 0x0a],
        mac_b: [0x02, 0, 0, 0, 0, 0x0b],
        chained: false,
        features: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--chained" {
            args.chained = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("bad number for {flag}: {v}"))
        };
        match flag.as_str() {
            "--dial" => a = Some(Connect::Dial(val.into())),
            "--listen" => a = Some(Connect::Listen(val.into())),
            "--peer-dial" => b = Some(Connect::Dial(val.into())),
            "--peer-listen" => b = Some(Connect::Listen(val.into())),
            "--frames" => args.frames = num(&val)?,
            "--size" => {
                args.size = usize::try_from(num(&val)?).map_err(|e| e.to_string())?;
                // 60..=1514 is a normal Ethernet frame; up to MAX_TX_FRAME (jumbo) is accepted
                // to exercise MRG_RXBUF (frames larger than one 2048-byte rx buffer).
                if !(60..=MAX_TX_FRAME).contains(&args.size) {
                    return Err(format!("--size must be in 60..={MAX_TX_FRAME}"));
                }
            }
            "--window" => {
                let w = usize::try_from(num(&val)?).map_err(|e| e.to_string())?;
                if w == 0 {
                    return Err("--window must be > 0".into());
                }
                args.window = Some(w);
            }
            "--features" => {
                let hex = val.trim_start_matches("0x");
                args.features = Some(
                    u64::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad hex for {flag}: {val}"))?,
                );
            }
            "--mac-a" => args.mac_a = parse_mac(&val)?,
            "--mac-b" => args.mac_b = parse_mac(&val)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    args.a = a.ok_or("one of --dial/--listen is required")?;
    args.b = b.ok_or("one of --peer-dial/--peer-listen is required")?;
    Ok(args)
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
    println!(
        "{{\"sent\":{sent},\"received\":{},\"lost\":{lost},\"corrupt\":{},\"seconds\":{seconds:.6},\"mpps\":{mpps:.6}}}",
        s.received, s.corrupt
    );
    Ok(!aborted && lost == 0 && s.corrupt == 0 && sent == args.frames)
}

use pktgen::bench;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().is_some_and(|a| a == "bench") {
        return ExitCode::from(bench::main(&argv[1..]));
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("pktgen: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pktgen: {e}");
            ExitCode::from(2)
        }
    }
}
