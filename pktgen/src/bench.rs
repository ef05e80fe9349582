//! `pktgen bench`: a bidirectional load generator for switch benchmarks.
//!
//! ```text
//! pktgen bench (--dial SOCK | --listen SOCK) (--dial SOCK | --listen SOCK)
//!              [--mode udp|tcp|conn] [--flows N] [--size BYTES] [--duration SECS]
//!              [--warmup SECS] [--rate MPPS] [--queues N] [--cpu CPU] [--mac0 MAC]
//!              [--mac1 MAC] [--queue-size N]
//! ```
//!
//! Exactly two sockets, each given with `--dial` (the switch listens) or `--listen` (the switch
//! dials); the first on the command line is port 0. `pktgen bench --help` lists every option
//! with its default and range; the parser is clap's (`Cli`), and usage errors exit with 2.
//!
//! `--mode udp` (the default): port 0 sends flow i (i = 0..N-1, round robin) as UDP
//! 10.254.0.1:1000 -> (10.253.0.0+i):1001, MAC mac0 -> mac1; port 1 sends the replies of the
//! same flows (addresses, ports and MACs swapped), each flow's only once it has received one
//! of its requests (until then it skips that flow). So a stateful firewall sees N two-way
//! connections, and a learning switch sees two MACs, one per port. `--mode tcp` does the same
//! with TCP (see `tcp.rs`): first a real three-way handshake per flow, then segments whose
//! sequence and acknowledgement numbers advance as a TCP stream's do, so a tracker that checks
//! windows keeps them (frames of 62 bytes or more carry timestamps). Both ports transmit as fast as the
//! switch takes frames (or at `--rate` Mpps each) and count what comes back (received frames
//! are validated, not copied). Every 128th frame carries a send timestamp; their one-way
//! latencies give the percentiles. After the run the ports stop sending and drain for 300 ms;
//! what never came back is the loss.
//!
//! `--mode conn` measures connection setup instead (see `conn.rs`): port 0 opens TCP
//! connections to port 1 as fast as it can (SYN, SYN-ACK, ACK, then a RST that closes it), and
//! a connection counts when port 1 receives its ACK.
//!
//! With `--queues N` each port sets up N queue pairs (the switch port needs `queues >= N`)
//! and flow i always travels on pair i % N.
//!
//! One thread does everything; pin it away from the switch's core. Progress once a second on
//! stderr; at the end one JSON object on stdout (`Report`, serialized by serde_json).
//! `rx_mpps` (frames the switch delivered, both ports, per second: the median over the
//! measured seconds) is the figure to compare; in conn mode it is `conns_per_sec`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::Serialize;

use crate::{Connect, DeviceConfig, TxSlot, VirtioNet};

use crate::frame::{fold, sum16};
use crate::parse_mac;

mod conn;
mod tcp;

/// Frames queued per `send` call.
const BURST: usize = 32;
const IP_SRC: u32 = 0x0afe_0001; // 10.254.0.1
const IP_DST_BASE: u32 = 0x0afd_0000; // 10.253.0.0
const SPORT: u16 = 1000;
const DPORT: u16 = 1001;
/// Every 2^STAMP_SHIFT-th frame carries a send timestamp.
const STAMP_SHIFT: u32 = 7;
/// Where the timestamp goes: the first payload bytes after the UDP header (a frame's first
/// cache line).
const STAMP_OFF: usize = 42;
/// How long the ports keep receiving after they stop sending.
const DRAIN: Duration = Duration::from_millis(300);

/// What the ports send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// N two-way UDP flows
    Udp,
    /// N TCP connections: a handshake per flow, then data segments both ways
    Tcp,
    /// TCP connection setup per second (SYN, SYN-ACK, ACK, RST)
    Conn,
}

/// `pktgen bench`: a bidirectional load generator for switch benchmarks.
///
/// Port 0 and port 1 attach to two switch ports and both send as fast as the switch takes
/// frames (or at --rate); at the end one JSON object goes to stdout, progress once a second
/// to stderr.
#[derive(Debug, Parser)]
#[command(
    name = "pktgen bench",
    bin_name = "pktgen bench",
    override_usage = "pktgen bench <--dial SOCK|--listen SOCK> <--dial SOCK|--listen SOCK> [OPTIONS]",
    // A flag given twice (other than --dial/--listen): the last one counts.
    args_override_self = true,
    after_help = "Give exactly two sockets with --dial and --listen (twice one of them, or one \
of each); the first on the command line is port 0, the second port 1."
)]
struct Cli {
    /// Attach a port to the switch's socket SOCK (the switch listens)
    #[arg(long, value_name = "SOCK")]
    dial: Vec<PathBuf>,
    /// Listen on SOCK for the switch to attach a port (the switch dials)
    #[arg(long, value_name = "SOCK")]
    listen: Vec<PathBuf>,
    /// What the ports send
    #[arg(long, value_enum, default_value_t = Mode::Udp)]
    mode: Mode,
    /// Flows, 1..=16777216, at least --queues (not used by --mode conn)
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    flows: u32,
    /// Frame size in bytes, 60..=1514 (--mode conn sends 60-byte frames)
    #[arg(long, value_name = "BYTES", default_value_t = 60, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u16).range(60..=1514))]
    size: u16,
    /// Measured seconds (after the warm-up), clamped to 1..=3600
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        allow_negative_numbers = true
    )]
    duration: u64,
    /// Warm-up seconds before the measured ones, at most 600 (more is taken as 600)
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 2,
        allow_negative_numbers = true
    )]
    warmup: u64,
    /// Frames per second per port in millions, >= 0; 0: as fast as the switch takes them
    #[arg(long, value_name = "MPPS", default_value_t = 0.0, value_parser = parse_rate,
          allow_negative_numbers = true)]
    rate: f64,
    /// Queue pairs per port, 1..=16 (flow i travels on pair i % N)
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    queues: u16,
    /// Pin the generator's thread to CPU [default: not pinned]
    #[arg(long, value_name = "CPU", allow_negative_numbers = true)]
    cpu: Option<usize>,
    /// Port 0's MAC address
    #[arg(long, value_name = "MAC", default_value = "02:00:00:00:00:01", value_parser = parse_mac)]
    mac0: [u8; 6],
    /// Port 1's MAC address
    #[arg(long, value_name = "MAC", default_value = "02:00:00:00:00:02", value_parser = parse_mac)]
    mac1: [u8; 6],
    /// Entries per virtqueue, a power of two in 64..=4096
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = parse_queue_size,
          allow_negative_numbers = true)]
    queue_size: u16,
}

fn parse_rate(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .ok_or_else(|| "must be a number of Mpps >= 0".to_string())
}

fn parse_queue_size(v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|n| n.is_power_of_two() && (64..=4096).contains(n))
        .ok_or_else(|| "must be a power of two in 64..=4096".to_string())
}

/// A run's settings, from the command line.
#[derive(Debug)]
struct Args {
    /// Port 0's socket, then port 1's.
    socks: Vec<Connect>,
    mode: Mode,
    flows: u32,
    size: usize,
    duration: u32,
    warmup: u32,
    /// Frames per second per port, in millions; 0: as fast as the switch takes them.
    rate_mpps: f64,
    queues: u16,
    cpu: Option<usize>,
    macs: [[u8; 6]; 2],
    queue_size: u16,
}

/// Parses `pktgen bench` arguments (`argv` without the program name and `bench`).
fn parse(argv: &[String]) -> Result<Args, clap::Error> {
    let mut cmd = Cli::command();
    let m = cmd.try_get_matches_from_mut(
        std::iter::once("pktgen bench".to_string()).chain(argv.iter().cloned()),
    )?;
    // --dial and --listen may be mixed; port 0 is the first socket on the command line.
    let mut socks: Vec<(usize, Connect)> = Vec::new();
    for (id, how) in [
        ("dial", Connect::Dial as fn(PathBuf) -> Connect),
        ("listen", Connect::Listen),
    ] {
        if let (Some(at), Some(paths)) = (m.indices_of(id), m.get_many::<PathBuf>(id)) {
            socks.extend(at.zip(paths.map(|p| how(p.clone()))));
        }
    }
    socks.sort_by_key(|&(at, _)| at);
    if socks.len() != 2 {
        return Err(cmd.error(
            ErrorKind::WrongNumberOfValues,
            "give exactly two sockets (--dial or --listen, twice)",
        ));
    }
    let c = Cli::from_arg_matches(&m)?;
    if c.flows < u32::from(c.queues) && c.mode != Mode::Conn {
        return Err(cmd.error(
            ErrorKind::ArgumentConflict,
            "--flows must be at least --queues (each pair carries its own flows)",
        ));
    }
    Ok(Args {
        socks: socks.into_iter().map(|(_, s)| s).collect(),
        mode: c.mode,
        flows: c.flows,
        size: usize::from(c.size),
        // Cannot truncate: clamped first.
        duration: c.duration.clamp(1, 3600) as u32,
        warmup: c.warmup.min(600) as u32,
        rate_mpps: c.rate,
        queues: c.queues,
        cpu: c.cpu,
        macs: [c.mac0, c.mac1],
        queue_size: c.queue_size,
    })
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
        let base_sum = sum16(&f[14..34]);
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
        let sum = fold(self.base_sum + (a >> 16) + (a & 0xffff));
        (a.to_be_bytes(), sum.to_be_bytes())
    }
}

/// One traffic mode: what the ports send and how they read what comes back.
trait Traffic {
    /// Queues up to `max` frames on `dev` (port `port`, its selected pair `q`); every
    /// 2^STAMP_SHIFT-th frame carries `lat.stamp()`. Returns how many.
    fn send(
        &mut self,
        port: usize,
        q: usize,
        dev: &mut VirtioNet,
        max: usize,
        lat: &Latency,
    ) -> usize;
    /// Takes what arrived on `dev`'s selected pair; stamped frames go to `lat`. Returns how
    /// many frames.
    fn recv(
        &mut self,
        port: usize,
        q: usize,
        dev: &mut VirtioNet,
        lat: &mut Latency,
    ) -> Result<usize, crate::Error>;
    /// A count reported per second besides frames (completed connections), if any.
    fn events(&self) -> Option<u64> {
        None
    }

    /// Mode-specific members of the JSON result (a struct, flattened into it).
    type Extra: Serialize;

    /// The mode-specific members at the end of a run.
    fn extra(&self) -> Self::Extra;
}

/// One-way latency samples (nanoseconds), from stamped frames.
struct Latency {
    start: Instant,
    recording: bool,
    samples: Vec<u32>,
}

impl Latency {
    /// The stamp for a frame sent now (never 0).
    fn stamp(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    /// Reads the stamp at `STAMP_OFF` of a received frame's first bytes.
    #[inline]
    fn take(&mut self, frame: &[u8]) {
        let Some(b) = frame.get(STAMP_OFF..STAMP_OFF + 8) else {
            return;
        };
        self.take_stamp(u64::from_le_bytes(b.try_into().expect("8 bytes")));
    }

    /// Records the latency of a frame stamped `ts` (0: not stamped).
    #[inline]
    fn take_stamp(&mut self, ts: u64) {
        if ts != 0 && self.recording {
            let d = self.stamp().saturating_sub(ts);
            self.samples.push(u32::try_from(d).unwrap_or(u32::MAX));
        }
    }

    /// p50, p90, p99, p99.9 and max of the samples (`None` without samples).
    fn summary(&mut self) -> Option<LatencySummary> {
        if self.samples.is_empty() {
            return None;
        }
        self.samples.sort_unstable();
        let n = self.samples.len();
        let pct = |p: f64| {
            let i = ((p / 100.0) * n as f64).ceil() as usize;
            f64::from(self.samples[i.clamp(1, n) - 1]) / 1e3
        };
        Some(LatencySummary {
            samples: n,
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            p99_9: pct(99.9),
            max: f64::from(self.samples[n - 1]) / 1e3,
        })
    }
}

/// One-way latency percentiles in microseconds (`latency_us` of the result).
#[derive(Debug, Serialize)]
struct LatencySummary {
    samples: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

/// Connection setup figures (modes that count connections).
#[derive(Debug, Serialize)]
struct ConnRates {
    /// Median over the measured seconds.
    conns_per_sec: u64,
    conns_per_sec_per_second: Vec<u64>,
    conns_completed: u64,
}

/// The JSON result of a run: one object on stdout. Rates in Mpps are medians over the
/// measured seconds.
#[derive(Debug, Serialize)]
struct Report<E> {
    mode: Mode,
    #[serde(flatten)]
    conns: Option<ConnRates>,
    #[serde(flatten)]
    extra: E,
    rx_mpps: f64,
    tx_mpps: f64,
    /// L2 bits per second (the frame, no FCS or preamble), in billions.
    rx_gbps: f64,
    rx_mpps_per_second: Vec<f64>,
    tx_mpps_per_second: Vec<f64>,
    frames_sent: u64,
    frames_received: u64,
    frames_lost: u64,
    loss_pct: f64,
    latency_us: Option<LatencySummary>,
    size: usize,
    flows: u32,
    queues: u16,
    rate_mpps: f64,
    duration: u32,
    warmup: u32,
    /// The first receive error (the device misbehaved), if any.
    rx_error: Option<String>,
}

impl<E: Serialize> Report<E> {
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }
}

/// Where each port's sending stands, for the modes that walk the flows (UDP and TCP).
struct Cursors {
    /// Per port and pair, per tx slot: it holds the template already.
    written: [Vec<Vec<bool>>; 2],
    /// Per port and pair: the next flow (pair q carries flows q, q + pairs, ...).
    next_flow: [Vec<u32>; 2],
    /// Frames queued per port (for the stamping cadence).
    count: [u64; 2],
    flows: u32,
    pairs: u32,
}

impl Cursors {
    /// For `a.flows` flows on `a.queues` pairs whose tx rings have `slots` slots.
    fn new(a: &Args, slots: usize) -> Cursors {
        let pairs = usize::from(a.queues);
        let fresh = || vec![vec![false; slots]; pairs];
        let firsts = || (0..a.queues.into()).collect();
        Cursors {
            written: [fresh(), fresh()],
            next_flow: [firsts(), firsts()],
            count: [0; 2],
            flows: a.flows,
            pairs: a.queues.into(),
        }
    }
}

/// UDP flows (see the module docs).
struct Udp {
    tmpl: [Template; 2],
    cur: Cursors,
    /// Port 1 answers a flow only once it has received one of port 0's frames of it, as a
    /// UDP server does: a reply that overtook its request would rightly be refused by a
    /// stateful firewall. One bit per flow, until every flow has been heard.
    heard: Vec<u64>,
    /// Flows not heard yet (0: every flow is answered and `heard` is no longer read).
    unheard: u32,
    /// The flows `pick_heard` chose for port 1's next burst.
    picks: [u32; BURST],
}

impl Udp {
    fn new(a: &Args, slots: usize) -> Udp {
        Udp {
            tmpl: [
                Template::new(0, a.size, &a.macs),
                Template::new(1, a.size, &a.macs),
            ],
            cur: Cursors::new(a, slots),
            heard: vec![0; (a.flows as usize).div_ceil(64)],
            unheard: a.flows,
            picks: [0; BURST],
        }
    }

    fn is_heard(&self, flow: u32) -> bool {
        self.heard[flow as usize / 64] & (1 << (flow % 64)) != 0
    }

    /// Port 1 received a frame of `flow` (ignored past the flow count).
    fn hear(&mut self, flow: u32) {
        if flow < self.cur.flows && !self.is_heard(flow) {
            self.heard[flow as usize / 64] |= 1 << (flow % 64);
            self.unheard -= 1;
        }
    }

    /// Picks up to `max` heard flows for port 1's pair `q` from its cursor on, skipping the
    /// unheard ones (a flow the switch never delivers must not stop the others' replies), and
    /// looking at no more than four bursts' worth of flows per call. Returns how many, in
    /// `self.picks`.
    fn pick_heard(&mut self, q: usize, max: usize) -> usize {
        let (pairs, flows) = (self.cur.pairs, self.cur.flows);
        let mut next = self.cur.next_flow[1][q];
        let mut n = 0;
        for _ in 0..4 * BURST {
            if n == max.min(BURST) {
                break;
            }
            if self.is_heard(next) {
                self.picks[n] = next;
                n += 1;
            }
            next_flow(&mut next, q as u32, pairs, flows);
        }
        self.cur.next_flow[1][q] = next;
        n
    }
}

/// Port 0's flow number of a frame it sent (destination address `IP_DST_BASE + flow`).
fn flow_of(frame: &[u8]) -> Option<u32> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let dst = u32::from_be_bytes(frame.get(30..34)?.try_into().ok()?);
    Some(dst.wrapping_sub(IP_DST_BASE))
}

impl Traffic for Udp {
    type Extra = ();

    fn extra(&self) {}

    fn send(
        &mut self,
        port: usize,
        q: usize,
        dev: &mut VirtioNet,
        max: usize,
        lat: &Latency,
    ) -> usize {
        // Until port 1 has heard every flow, it answers the heard ones only (picked here; a
        // pick that finds no room in the ring waits for the flow's next turn).
        let picked = port == 1 && self.unheard > 0;
        let max = if picked { self.pick_heard(q, max) } else { max };
        if max == 0 {
            return 0;
        }
        // One clock read per burst that holds a stamped frame.
        let stamp = burst_stamp(self.cur.count[port], max, lat);
        let (tmpl, written) = (&self.tmpl[port], &mut self.cur.written[port][q]);
        let next = &mut self.cur.next_flow[port][q];
        let count = &mut self.cur.count[port];
        let (flows, pairs, first) = (self.cur.flows, self.cur.pairs, q as u32);
        let picks = &self.picks;
        let mut j = 0;
        dev.send_in_place(tmpl.frame.len(), max, |id, slot| {
            write_template(written, id, slot, &tmpl.frame);
            let flow = if picked {
                j += 1;
                picks[j - 1]
            } else {
                let f = *next;
                next_flow(next, first, pairs, flows);
                f
            };
            let (a, c) = tmpl.flow(flow);
            slot.write(tmpl.addr_off, &a);
            slot.write(24, &c);
            let ts = if is_stamped(*count) { stamp } else { 0 };
            slot.write(STAMP_OFF, &ts.to_le_bytes());
            *count += 1;
        })
    }

    fn recv(
        &mut self,
        port: usize,
        _q: usize,
        dev: &mut VirtioNet,
        lat: &mut Latency,
    ) -> Result<usize, crate::Error> {
        if port == 0 || self.unheard == 0 {
            return dev.recv_prefix(STAMP_OFF + 8, |f| lat.take(f));
        }
        dev.recv_prefix(STAMP_OFF + 8, |f| {
            lat.take(f);
            if let Some(flow) = flow_of(f) {
                self.hear(flow);
            }
        })
    }
}

/// Frame number `n` of a port carries a timestamp.
#[inline]
fn is_stamped(n: u64) -> bool {
    n & ((1 << STAMP_SHIFT) - 1) == 0
}

/// The stamp for a burst of up to `max` frames numbered from `n`: the clock is read only if
/// one of them is stamped (0 otherwise).
#[inline]
fn burst_stamp(n: u64, max: usize, lat: &Latency) -> u64 {
    let last = n + max.max(1) as u64 - 1;
    if last >> STAMP_SHIFT != n >> STAMP_SHIFT || is_stamped(n) {
        lat.stamp()
    } else {
        0
    }
}

/// Writes the whole template into tx slot `id` the first time the slot is used (`written`
/// remembers), so that later frames rewrite only the bytes that change.
#[inline]
fn write_template(written: &mut [bool], id: u16, slot: &mut TxSlot<'_>, frame: &[u8]) {
    let w = &mut written[usize::from(id)];
    if !*w {
        slot.write(0, frame);
        *w = true;
    }
}

/// Moves a pair's flow cursor on: pair `first` of `pairs` carries flows `first`,
/// `first + pairs`, ... below `flows`.
#[inline]
fn next_flow(next: &mut u32, first: u32, pairs: u32, flows: u32) {
    *next += pairs;
    if *next >= flows {
        *next = first;
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
            // Help on stdout (status 0), errors on stderr (status 2).
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    match run(&a) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprintln!("pktgen bench: {e}");
            2
        }
    }
}

/// Runs `pktgen bench ARGS` and returns the JSON result instead of printing it (progress
/// still goes to stderr): for tests that drive a switch with the generator. `argv` holds the
/// arguments after `bench`; a usage error is returned as clap's message.
pub fn run_args(argv: &[String]) -> Result<String, String> {
    run(&parse(argv).map_err(|e| e.to_string())?)
}

fn run(a: &Args) -> Result<String, String> {
    if let Some(cpu) = a.cpu {
        crate::pin_to_cpu(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
    }
    let mut devs = Vec::new();
    for (i, how) in a.socks.iter().enumerate() {
        let pairs = usize::from(a.queues);
        let dev = VirtioNet::connect(
            how.clone(),
            DeviceConfig {
                mac: a.macs[i],
                queue_size: a.queue_size,
                queue_pairs: a.queues,
                // Per pair: rings, rx buffers (2 KiB each) and tx slots (9 KiB each).
                mem_size: (16 << 20).max(pairs * usize::from(a.queue_size) * 12 * 1024),
                ..Default::default()
            },
        )
        .map_err(|e| format!("port {i}: {e}"))?;
        devs.push(dev);
    }
    let slots = usize::from(devs[0].queue_size());
    eprintln!(
        "pktgen: bench: 2 ports x {} queue pair(s), mode {:?}, {} flows, {} B frames, {} s warm-up + {} s",
        a.queues, a.mode, a.flows, a.size, a.warmup, a.duration
    );
    match a.mode {
        Mode::Udp => Ok(drive(a, &mut devs, &mut Udp::new(a, slots)).to_json()),
        Mode::Tcp => {
            let mut t = tcp::Tcp::new(a, slots);
            t.handshake(&mut devs)?;
            let report = drive(a, &mut devs, &mut t);
            t.teardown(&mut devs)?;
            Ok(report.to_json())
        }
        Mode::Conn => Ok(drive(a, &mut devs, &mut conn::Conn::new(a)).to_json()),
    }
}

/// The measurement loop shared by the modes: send and receive on every port and pair, once a
/// second a progress line, then a drain and the result.
fn drive<T: Traffic>(a: &Args, devs: &mut [VirtioNet], t: &mut T) -> Report<T::Extra> {
    let total = a.warmup + a.duration;
    let start = Instant::now();
    let mut lat = Latency {
        start,
        recording: a.warmup == 0,
        samples: Vec::new(),
    };
    let mut tick = start + Duration::from_secs(1);
    let mut second = 0u32;
    let (mut sent, mut received) = ([0u64; 2], [0u64; 2]);
    let (mut last_tx, mut last_rx, mut last_ev) = (0u64, 0u64, 0u64);
    let (mut tx_ps, mut rx_ps, mut ev_ps) = (Vec::new(), Vec::new(), Vec::new());
    let mut rx_err = None;
    let mut spins = 0u32;
    // Frames per second per port.
    let rate = a.rate_mpps * 1e6;
    let paced = rate > 0.0;
    let mut sending = true;
    let mut drain_end = None;
    loop {
        // Pacing needs the clock on every pass.
        let elapsed = if paced {
            start.elapsed().as_secs_f64()
        } else {
            0.0
        };
        for (port, dev) in devs.iter_mut().enumerate() {
            for q in 0..dev.queue_pairs() {
                dev.select_queue_pair(q);
                if sending {
                    let max = if paced {
                        let allowed = (rate * elapsed) as u64;
                        allowed.saturating_sub(sent[port]).min(BURST as u64) as usize
                    } else {
                        BURST
                    };
                    if max > 0 {
                        sent[port] += t.send(port, q, dev, max, &lat) as u64;
                    }
                }
                match t.recv(port, q, dev, &mut lat) {
                    Ok(n) => received[port] += n as u64,
                    Err(e) => {
                        rx_err.get_or_insert(e.to_string());
                    }
                }
            }
        }
        if let Some(end) = drain_end {
            if Instant::now() >= end {
                break;
            }
            continue;
        }
        // Reading the clock on every pass cost a fifth of the generator's time when the
        // switch kept it waiting; a pass is well under a microsecond, so every 64th will do.
        spins = spins.wrapping_add(1);
        if !paced && !spins.is_multiple_of(64) {
            continue;
        }
        let now = Instant::now();
        if now < tick {
            continue;
        }
        second += 1;
        let secs = (now - (tick - Duration::from_secs(1))).as_secs_f64();
        let (tx, rx, ev) = (
            sent.iter().sum::<u64>(),
            received.iter().sum::<u64>(),
            t.events().unwrap_or(0),
        );
        let (txr, rxr, evr) = (
            (tx - last_tx) as f64 / secs / 1e6,
            (rx - last_rx) as f64 / secs / 1e6,
            (ev - last_ev) as f64 / secs,
        );
        (last_tx, last_rx, last_ev) = (tx, rx, ev);
        let phase = if second <= a.warmup { " (warm-up)" } else { "" };
        let conns = t
            .events()
            .map_or(String::new(), |_| format!(" conns={evr:.0}/s"));
        eprintln!("pktgen: t={second} tx={txr:.3} rx={rxr:.3} Mpps{conns}{phase}");
        if second > a.warmup {
            tx_ps.push(txr);
            rx_ps.push(rxr);
            ev_ps.push(evr);
        }
        lat.recording = second >= a.warmup && second < total;
        tick = now + Duration::from_secs(1);
        if second >= total {
            // Stop sending; what is still in the rings has DRAIN to come back.
            sending = false;
            drain_end = Some(now + DRAIN);
        }
    }
    let (sent_all, received_all) = (sent.iter().sum::<u64>(), received.iter().sum::<u64>());
    let lost = sent_all.saturating_sub(received_all);
    let rx_mpps = median(&rx_ps);
    let conns = t.events().map(|n| ConnRates {
        // Whole connections per second, as the progress lines print them.
        conns_per_sec: median(&ev_ps).round() as u64,
        conns_per_sec_per_second: ev_ps.iter().map(|x| x.round() as u64).collect(),
        conns_completed: n,
    });
    Report {
        mode: a.mode,
        conns,
        extra: t.extra(),
        rx_mpps,
        tx_mpps: median(&tx_ps),
        rx_gbps: rx_mpps * 1e6 * a.size as f64 * 8.0 / 1e9,
        rx_mpps_per_second: rx_ps,
        tx_mpps_per_second: tx_ps,
        frames_sent: sent_all,
        frames_received: received_all,
        frames_lost: lost,
        loss_pct: if sent_all == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / sent_all as f64
        },
        latency_us: lat.summary(),
        size: a.size,
        flows: a.flows,
        queues: a.queues,
        rate_mpps: a.rate_mpps,
        duration: a.duration,
        warmup: a.warmup,
        rx_error: rx_err,
    }
}

#[cfg(test)]
impl Args {
    pub(super) fn for_test() -> Args {
        parse(&["--dial", "/a", "--dial", "/b"].map(String::from)).expect("valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, clap::Error> {
        parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// `args` with two dialled sockets and `extra`.
    fn with(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut v = vec!["--dial", "/a", "--dial", "/b"];
        v.extend_from_slice(extra);
        args(&v)
    }

    fn err(extra: &[&str]) -> String {
        with(extra).expect_err("invalid").to_string()
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let a = with(&[]).unwrap();
        assert!(
            matches!(&a.socks[..], [Connect::Dial(p0), Connect::Dial(p1)]
            if p0.as_os_str() == "/a" && p1.as_os_str() == "/b")
        );
        assert_eq!(a.mode, Mode::Udp);
        assert_eq!((a.flows, a.size, a.duration, a.warmup), (1, 60, 10, 2));
        assert_eq!(a.rate_mpps, 0.0);
        assert_eq!((a.queues, a.cpu, a.queue_size), (1, None, 256));
        assert_eq!(a.macs, [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]);
    }

    #[test]
    fn every_option() {
        let a = with(&[
            "--mode",
            "tcp",
            "--flows",
            "16777216",
            "--size",
            "1514",
            "--duration",
            "5",
            "--warmup",
            "0",
            "--rate",
            "0.25",
            "--queues",
            "16",
            "--cpu",
            "3",
            "--mac0",
            "02:00:00:00:aa:01",
            "--mac1",
            "02:00:00:00:aa:02",
            "--queue-size",
            "4096",
        ])
        .unwrap();
        assert_eq!(a.mode, Mode::Tcp);
        assert_eq!(
            (a.flows, a.size, a.duration, a.warmup),
            (1 << 24, 1514, 5, 0)
        );
        assert_eq!(a.rate_mpps, 0.25);
        assert_eq!((a.queues, a.cpu, a.queue_size), (16, Some(3), 4096));
        assert_eq!(a.macs[0], [2, 0, 0, 0, 0xaa, 1]);
        assert_eq!(a.macs[1], [2, 0, 0, 0, 0xaa, 2]);
        assert_eq!(with(&["--mode", "conn"]).unwrap().mode, Mode::Conn);
        // Given twice, the last counts (as before clap).
        assert_eq!(with(&["--flows", "5", "--flows", "7"]).unwrap().flows, 7);
    }

    /// Exactly two sockets, --dial and --listen mixed as given, port 0 first on the line.
    #[test]
    fn two_sockets_in_command_line_order() {
        let a = args(&["--listen", "/l", "--dial", "/d"]).unwrap();
        assert!(
            matches!(&a.socks[..], [Connect::Listen(p0), Connect::Dial(p1)]
            if p0.as_os_str() == "/l" && p1.as_os_str() == "/d")
        );
        let a = args(&["--dial", "/d", "--mode", "tcp", "--listen", "/l"]).unwrap();
        assert!(matches!(
            &a.socks[..],
            [Connect::Dial(_), Connect::Listen(_)]
        ));
        let a = args(&["--listen", "/0", "--listen", "/1"]).unwrap();
        assert!(
            matches!(&a.socks[..], [Connect::Listen(p0), Connect::Listen(p1)]
            if p0.as_os_str() == "/0" && p1.as_os_str() == "/1")
        );
        for bad in [
            &[][..],
            &["--dial", "/a"],
            &["--listen", "/a"],
            &["--dial", "/a", "--dial", "/b", "--listen", "/c"],
            &["--listen", "/a", "--listen", "/b", "--listen", "/c"],
        ] {
            let e = args(bad).expect_err("not two sockets");
            assert_eq!(e.kind(), ErrorKind::WrongNumberOfValues, "{bad:?}");
            assert!(e.to_string().contains("exactly two sockets"), "{e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    /// Each value out of its range is refused with an error naming the flag.
    #[test]
    fn range_errors_name_their_flag() {
        for (flag, bad) in [
            ("--flows", "0"),
            ("--flows", "16777217"),
            ("--flows", "x"),
            ("--flows", "-1"),
            ("--size", "59"),
            ("--size", "1515"),
            ("--duration", "x"),
            ("--duration", "-1"),
            ("--warmup", "-5"),
            ("--size", "-60"),
            ("--queues", "-1"),
            ("--cpu", "-1"),
            ("--queue-size", "-256"),
            ("--warmup", "1.5"),
            ("--rate", "-1"),
            ("--rate", "nan"),
            ("--rate", "inf"),
            ("--rate", "fast"),
            ("--queues", "0"),
            ("--queues", "17"),
            ("--cpu", "x"),
            ("--mac0", "02:00:00:00:00"),
            ("--mac1", "zz:00:00:00:00:00"),
            ("--queue-size", "32"),
            ("--queue-size", "100"),
            ("--queue-size", "8192"),
            ("--mode", "icmp"),
        ] {
            let e = with(&[flag, bad]).expect_err("out of range");
            assert_eq!(e.exit_code(), 2);
            let msg = e.to_string();
            assert!(msg.contains(&format!("'{flag} ")), "{flag} {bad}: {msg}");
        }
        assert!(err(&["--queue-size", "100"]).contains("power of two in 64..=4096"));
        assert!(err(&["--rate", "-1"]).contains("Mpps >= 0"));
        assert!(err(&["--bogus", "1"]).contains("'--bogus'"));
        assert!(err(&["--flows"]).contains("'--flows <N>'"));
    }

    /// --duration and --warmup are clamped, not refused.
    #[test]
    fn duration_and_warmup_clamp() {
        let a = with(&["--duration", "0", "--warmup", "601"]).unwrap();
        assert_eq!((a.duration, a.warmup), (1, 600));
        let a = with(&["--duration", "99999999999", "--warmup", "0"]).unwrap();
        assert_eq!((a.duration, a.warmup), (3600, 0));
        assert_eq!(with(&["--queue-size", "64"]).unwrap().queue_size, 64);
        assert_eq!(with(&["--rate", "0"]).unwrap().rate_mpps, 0.0);
        assert_eq!(with(&["--rate", "1e-1"]).unwrap().rate_mpps, 0.1);
    }

    /// Fewer flows than queue pairs is refused, except in conn mode (which has no flows).
    #[test]
    fn flows_at_least_queues() {
        let e = with(&["--queues", "4", "--flows", "3"]).expect_err("too few flows");
        assert!(
            e.to_string().contains("--flows must be at least --queues"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
        assert!(with(&["--queues", "4", "--flows", "4"]).is_ok());
        assert!(with(&["--queues", "4", "--mode", "conn"]).is_ok());
    }

    /// --help is clap's help (exit status 0), naming every option; run_args hands a usage
    /// error back as clap's message without touching a socket.
    #[test]
    fn help_and_run_args_errors() {
        let e = with(&["--help"]).expect_err("help");
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        assert_eq!(e.exit_code(), 0);
        let help = e.to_string();
        for flag in [
            "--dial",
            "--listen",
            "--mode",
            "--flows",
            "--size",
            "--duration",
            "--warmup",
            "--rate",
            "--queues",
            "--cpu",
            "--mac0",
            "--mac1",
            "--queue-size",
        ] {
            assert!(help.contains(flag), "{flag} missing from help:\n{help}");
        }
        let e = run_args(&["--dial", "/a", "--dial", "/b", "--size", "10"].map(String::from))
            .expect_err("usage error");
        assert!(e.contains("'--size <BYTES>'"), "{e}");
    }

    fn report<E>(extra: E, conns: Option<ConnRates>, lat: Option<LatencySummary>) -> Report<E> {
        Report {
            mode: Mode::Udp,
            conns,
            extra,
            rx_mpps: 1.5,
            tx_mpps: 1.75,
            rx_gbps: 0.72,
            rx_mpps_per_second: vec![1.5, 1.25],
            tx_mpps_per_second: vec![1.75, 2.0],
            frames_sent: 100,
            frames_received: 90,
            frames_lost: 10,
            loss_pct: 10.0,
            latency_us: lat,
            size: 60,
            flows: 4,
            queues: 1,
            rate_mpps: 0.0,
            duration: 2,
            warmup: 0,
            rx_error: None,
        }
    }

    /// The members of object `v`, in the order they appear in `json` (`Value` sorts them).
    fn keys(json: &str, v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<(usize, String)> = v
            .as_object()
            .unwrap()
            .keys()
            .map(|k| {
                let tag = format!("\"{k}\":");
                assert_eq!(json.matches(&tag).count(), 1, "{tag} in {json}");
                (json.find(&tag).unwrap(), k.clone())
            })
            .collect();
        k.sort();
        k.into_iter().map(|(_, k)| k).collect()
    }

    const COMMON: [&str; 17] = [
        "rx_mpps",
        "tx_mpps",
        "rx_gbps",
        "rx_mpps_per_second",
        "tx_mpps_per_second",
        "frames_sent",
        "frames_received",
        "frames_lost",
        "loss_pct",
        "latency_us",
        "size",
        "flows",
        "queues",
        "rate_mpps",
        "duration",
        "warmup",
        "rx_error",
    ];

    fn expect(front: &[&str]) -> Vec<String> {
        front.iter().chain(&COMMON).map(|s| s.to_string()).collect()
    }

    /// The JSON result has the members (in order) and values that scripts/bench.d and
    /// control/tests/generator.rs read, per mode.
    #[test]
    fn report_json() {
        // UDP, no latency samples, no error: both null.
        let json = report((), None, None).to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(keys(&json, &v), expect(&["mode"]));
        assert_eq!(v["mode"], "udp");
        assert!(
            v["latency_us"].is_null() && v["rx_error"].is_null(),
            "{json}"
        );
        assert_eq!(v["rx_mpps"], 1.5);
        assert_eq!(v["frames_received"], 90);
        assert_eq!(v["rx_mpps_per_second"], serde_json::json!([1.5, 1.25]));
        assert_eq!(v["rate_mpps"], 0.0);

        // TCP: its counter after the mode; latency percentiles and an rx error.
        let mut lat = Latency {
            start: Instant::now(),
            recording: true,
            samples: (1..=1000).rev().map(|i| i * 1000).collect(),
        };
        let mut r = report(tcp::TcpExtra { tcp_unexpected: 3 }, None, lat.summary());
        r.mode = Mode::Tcp;
        r.rx_error = Some("device wrote \"x\"".into());
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(keys(&json, &v), expect(&["mode", "tcp_unexpected"]));
        assert_eq!(
            (v["mode"].as_str(), v["tcp_unexpected"].as_u64()),
            (Some("tcp"), Some(3))
        );
        assert_eq!(v["rx_error"], "device wrote \"x\"");
        let l = &v["latency_us"];
        assert_eq!(
            keys(&json, l),
            ["samples", "p50", "p90", "p99", "p99_9", "max"]
        );
        assert_eq!(l["samples"], 1000);
        assert_eq!(l["p50"], 500.0);
        assert_eq!(l["p90"], 900.0);
        assert_eq!(l["p99"], 990.0);
        // ceil(0.999 * 1000) is 1000 in floating point.
        assert!(
            [999.0, 1000.0].contains(&l["p99_9"].as_f64().unwrap()),
            "{l}"
        );
        assert_eq!(l["max"], 1000.0);

        // Conn: the connection figures, then its counters.
        let mut r = report(
            conn::ConnExtra {
                handshake_unexpected: 1,
                reply_overflow: 2,
            },
            Some(ConnRates {
                conns_per_sec: 12_345,
                conns_per_sec_per_second: vec![12_000, 12_345, 13_000],
                conns_completed: 37_345,
            }),
            None,
        );
        r.mode = Mode::Conn;
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            keys(&json, &v),
            expect(&[
                "mode",
                "conns_per_sec",
                "conns_per_sec_per_second",
                "conns_completed",
                "handshake_unexpected",
                "reply_overflow",
            ])
        );
        assert_eq!(v["mode"], "conn");
        assert_eq!(v["conns_per_sec"], 12_345);
        assert_eq!(
            v["conns_per_sec_per_second"],
            serde_json::json!([12_000, 12_345, 13_000])
        );
        assert_eq!(v["conns_completed"], 37_345);
        assert_eq!(
            (
                v["handshake_unexpected"].as_u64(),
                v["reply_overflow"].as_u64()
            ),
            (Some(1), Some(2))
        );
    }

    /// A burst reads the clock exactly when one of its frames is stamped, and each pair's
    /// cursor walks its own flows.
    #[test]
    fn stamps_and_flow_cursors() {
        let lat = Latency {
            start: Instant::now(),
            recording: false,
            samples: Vec::new(),
        };
        for n in [0u64, 1, 95, 96, 97, 127, 128, 129, 1000, 1023, 1024] {
            for max in [1usize, 5, 32] {
                let any = (n..n + max as u64).any(is_stamped);
                assert_eq!(burst_stamp(n, max, &lat) != 0, any, "n {n} max {max}");
            }
        }
        let (flows, pairs) = (10, 3);
        for first in 0..pairs {
            let mut next = first;
            let mut seen = Vec::new();
            for _ in 0..8 {
                seen.push(next);
                next_flow(&mut next, first, pairs, flows);
            }
            let want: Vec<u32> = (first..flows)
                .step_by(pairs as usize)
                .cycle()
                .take(8)
                .collect();
            assert_eq!(seen, want, "pair {first}");
        }
    }

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
                assert_eq!(crate::ipv4_checksum(&h).to_be_bytes(), c, "flow {flow}");
            }
            // Port 1's frame is port 0's with addresses, ports and MACs swapped.
            assert_eq!(t0.frame[26..30], t1.frame[30..34]);
            assert_eq!(t0.frame[30..34], t1.frame[26..30]);
            assert_eq!(t0.frame[34..36], t1.frame[36..38]);
            assert_eq!(t0.frame[0..6], t1.frame[6..12]);
            let dst = u32::from_be_bytes(t0.frame[30..34].try_into().unwrap());
            assert_eq!(dst, IP_DST_BASE + flow);
            assert_eq!(flow_of(&t0.frame), Some(flow));
        }
    }

    /// Port 1 answers only flows it has heard, skips the others without stalling on them, and
    /// stops checking once every flow was heard.
    #[test]
    fn port1_answers_heard_flows_only() {
        let mut a = Args::for_test();
        a.flows = 300;
        a.queues = 2;
        let mut u = Udp::new(&a, 256);
        assert_eq!(u.pick_heard(0, BURST), 0);
        // Pair 1 carries the odd flows; 3 and 297 are heard, 5 is not: 5 is skipped.
        for f in [3, 297, 4] {
            u.hear(f);
        }
        u.cur.next_flow[1][1] = 1;
        let n = u.pick_heard(1, BURST);
        assert_eq!(&u.picks[..n], &[3]);
        // The cursor moved on by four bursts' worth (odd flows 1..255), so 297 comes next.
        assert_eq!(u.cur.next_flow[1][1], 257);
        // From 257 the scan wraps to the pair's first flow again: 297, then 3 once more.
        let n = u.pick_heard(1, BURST);
        assert_eq!(&u.picks[..n], &[297, 3]);
        // At most `max` picks, in cursor order.
        for f in (0..300).filter(|f| f % 2 == 1) {
            u.hear(f);
        }
        u.cur.next_flow[1][1] = 1;
        let n = u.pick_heard(1, 5);
        assert_eq!(&u.picks[..n], &[1, 3, 5, 7, 9]);
        assert_eq!(u.cur.next_flow[1][1], 11);
        assert!(u.unheard > 0);
        // A frame past the flow count (not ours) is no flow heard.
        let before = u.unheard;
        u.hear(300);
        assert_eq!(u.unheard, before);
        for f in 0..300 {
            u.hear(f);
        }
        assert_eq!(u.unheard, 0);
    }
}
