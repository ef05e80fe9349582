//! Test harness: runs the real `bulwarkd` binary with a generated config, talks to its API,
//! and always stops it (by PID, in `Drop`, so also when a test fails).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use pktgen::{Connect, DeviceConfig, VirtioNet};
use serde_json::Value;

/// bulwarkd instances in one test binary run one at a time: each pins a busy worker.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Bulwarkd {
    child: Child,
    pub dir: PathBuf,
    pub run: PathBuf,
    /// Extra arguments bulwarkd was started with (kept for `restart`).
    args: Vec<String>,
    _serial: Option<MutexGuard<'static, ()>>,
}

pub fn worker_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

impl Bulwarkd {
    /// Starts bulwarkd with server-mode ports `(name, segment)` at `<dir>/<name>.sock`.
    pub fn start(ports: &[(&str, u16)]) -> Self {
        let ports: Vec<(&str, u16, &str)> = ports.iter().map(|&(n, s)| (n, s, "server")).collect();
        Self::start_with(&ports, &[worker_cpu()])
    }

    /// Starts bulwarkd with ports `(name, segment, mode)` and workers on `cpus`.
    pub fn start_with(ports: &[(&str, u16, &str)], cpus: &[usize]) -> Self {
        let ports: Vec<(&str, u16, &str, &str)> =
            ports.iter().map(|&(n, s, m)| (n, s, m, "")).collect();
        Self::start_extra(&ports, cpus)
    }

    /// Like `start_with`, with extra TOML lines per port: `(name, segment, mode, extra)`.
    pub fn start_extra(ports: &[(&str, u16, &str, &str)], cpus: &[usize]) -> Self {
        Self::start_args(ports, cpus, &[])
    }

    /// Like `start_extra`, with extra command-line arguments for bulwarkd.
    pub fn start_args(ports: &[(&str, u16, &str, &str)], cpus: &[usize], args: &[String]) -> Self {
        Self::start_top("", ports, cpus, args)
    }

    /// `start_args` with `top` (top-level keys, e.g. `policy_file = "..."`) at the head of the
    /// config file; files the test writes into `dir()` before may be named relative to it.
    pub fn start_top(
        top: &str,
        ports: &[(&str, u16, &str, &str)],
        cpus: &[usize],
        args: &[String],
    ) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Self::start_unserialized(top, ports, cpus, args, Some(serial))
    }

    /// A second bulwarkd beside `self` (another "host"), with its own directory: not
    /// serialized with it.
    pub fn start_beside(
        &self,
        ports: &[(&str, u16, &str, &str)],
        cpus: &[usize],
        args: &[String],
    ) -> Self {
        Self::start_unserialized("", ports, cpus, args, None)
    }

    fn start_unserialized(
        top: &str,
        ports: &[(&str, u16, &str, &str)],
        cpus: &[usize],
        args: &[String],
        serial: Option<MutexGuard<'static, ()>>,
    ) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bulwark-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cpus: Vec<String> = cpus.iter().map(usize::to_string).collect();
        let mut cfg = format!(
            "{top}\n[switch]\nworkers = [{}]\nmac_aging_secs = 300\n",
            cpus.join(", ")
        );
        for (name, seg, mode, extra) in ports {
            cfg += &format!(
                "\n[[ports]]\nname = \"{name}\"\nsocket = \"{}\"\nmode = \"{mode}\"\nsegment = {seg}\n{extra}\n",
                dir.join(format!("{name}.sock")).display()
            );
        }
        std::fs::write(dir.join("bulwark.toml"), cfg).unwrap();
        let run = dir.join("run");
        let child = Self::spawn(&dir, &run, args);
        let d = Bulwarkd {
            child,
            dir,
            run,
            args: args.to_vec(),
            _serial: serial,
        };
        d.wait_for(
            || d.try_api("GET", "/v1/health", None).is_some(),
            "API to come up",
        );
        d
    }

    fn spawn(dir: &Path, run: &Path, args: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("bulwarkd.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_bulwarkd"))
            .arg("--run-dir")
            .arg(run)
            .arg("--config")
            .arg(dir.join("bulwark.toml"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bulwarkd")
    }

    /// Stops bulwarkd (SIGTERM, a graceful stop) and starts it again on the same config and
    /// run directory.
    pub fn restart(&mut self) {
        // std's Child::kill is SIGKILL only: ask for the graceful stop with kill(1).
        self.stop();
        self.start_again();
    }

    /// Kills bulwarkd with SIGKILL (nothing runs at exit) and starts it again on the same
    /// config and run directory.
    pub fn kill_and_start(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.start_again();
    }

    /// Stops bulwarkd gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Starts bulwarkd again (after `stop`) and waits for its API.
    pub fn start_again(&mut self) {
        self.child = Self::spawn(&self.dir, &self.run, &self.args);
        self.wait_for(
            || self.try_api("GET", "/v1/health", None).is_some(),
            "API to come up again",
        );
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    pub fn try_api(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, Value)> {
        let (status, text) =
            control::client::call(&self.run.join("api.sock"), method, path, body).ok()?;
        Some((status, serde_json::from_str(&text).ok()?))
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_api(method, path, body)
            .unwrap_or_else(|| panic!("API call {method} {path} failed; log:\n{}", self.log()))
    }

    pub fn port(&self, name: &str) -> Value {
        let (status, v) = self.api("GET", &format!("/v1/ports/{name}"), None);
        assert_eq!(status, 200, "{v}");
        v
    }

    pub fn drops(&self, name: &str, reason: &str) -> u64 {
        self.port(name)["drops"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop reason {reason}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bulwarkd.log")).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Polls `cond` for up to 10 s.
    pub fn wait_for(&self, mut cond: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; bulwarkd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connects a pktgen device to port `name` and waits until the switch runs both queues.
    pub fn attach(&self, name: &str, mac: [u8; 6]) -> VirtioNet {
        self.attach_via(name, mac, Connect::Dial(self.sock(name)))
    }

    /// Like `attach`, for a client-mode port: pktgen listens, bulwarkd dials.
    pub fn attach_listening(&self, name: &str, mac: [u8; 6]) -> VirtioNet {
        self.attach_via(name, mac, Connect::Listen(self.sock(name)))
    }

    /// Like `attach`, with `pairs` queue pairs.
    pub fn attach_pairs(&self, name: &str, mac: [u8; 6], pairs: u16) -> VirtioNet {
        self.attach_cfg(
            name,
            Connect::Dial(self.sock(name)),
            DeviceConfig {
                mac,
                queue_pairs: pairs,
                ..Default::default()
            },
        )
    }

    fn attach_via(&self, name: &str, mac: [u8; 6], how: Connect) -> VirtioNet {
        self.attach_cfg(
            name,
            how,
            DeviceConfig {
                mac,
                ..Default::default()
            },
        )
    }

    fn attach_cfg(&self, name: &str, how: Connect, cfg: DeviceConfig) -> VirtioNet {
        let dev = VirtioNet::connect(how, cfg).unwrap_or_else(|e| panic!("attach {name}: {e:?}"));
        self.wait_for(
            || self.port(name)["state"] == "running",
            &format!("port {name} running"),
        );
        dev
    }
}

impl Drop for Bulwarkd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("bulwarkd log kept in {}", self.dir.display());
        }
    }
}

/// All drops of a port (`GET /v1/ports/NAME`), over every reason.
pub fn total_drops(port: &Value) -> u64 {
    port["drops"]
        .as_object()
        .expect("a drops map")
        .values()
        .map(|d| d.as_u64().expect("a count"))
        .sum()
}

pub fn mac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, last]
}

/// A test frame: Ethernet header (EtherType 0x88b5, local experimental), an 8-byte sequence
/// number, then a pattern derived from it; length 60..=1514 varies with `seq`.
pub fn frame(dst: [u8; 6], src: [u8; 6], seq: u64) -> Vec<u8> {
    let len = 60 + (seq.wrapping_mul(7919) % 1455) as usize;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.push(x as u8);
    }
    f
}

/// Receives on `dev` until `n` frames arrived or `timeout` passed; returns them.
pub fn recv_n(dev: &mut VirtioNet, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    while got.len() < n && Instant::now() < deadline {
        if dev
            .recv(|f| got.push(f.to_vec()))
            .expect("device-side ring violation")
            == 0
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    got
}

/// Sends all frames, retrying while the ring is full.
pub fn send_all(dev: &mut VirtioNet, frames: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut off = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while off < refs.len() {
        off += dev.send(&refs[off..]);
        assert!(
            Instant::now() < deadline,
            "send stalled at {off}/{}",
            refs.len()
        );
        if off < refs.len() {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Sends `frames` from `tx` and receives them on `rx`, keeping at most `window` in flight;
/// returns what `rx` got.
pub fn transfer(
    tx: &mut VirtioNet,
    rx: &mut VirtioNet,
    frames: &[Vec<u8>],
    window: usize,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut sent = 0;
    let mut last = Instant::now();
    while got.len() < frames.len() && last.elapsed() < Duration::from_secs(5) {
        let room = window
            .saturating_sub(sent - got.len())
            .min(frames.len() - sent);
        if room > 0 {
            let refs: Vec<&[u8]> = frames[sent..sent + room]
                .iter()
                .map(Vec::as_slice)
                .collect();
            sent += tx.send(&refs);
        }
        if rx
            .recv(|f| got.push(f.to_vec()))
            .expect("device-side ring violation")
            > 0
        {
            last = Instant::now();
        }
    }
    got
}

/// Asserts two frame lists are equal, reporting the first difference briefly.
pub fn assert_frames(got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
    if got.len() != want.len() {
        panic!("{what}: got {} frames, want {}", got.len(), want.len());
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: frame {i} differs (len {} vs {})",
            got[i].len(),
            want[i].len()
        );
    }
}

// Frames and policies for the firewall tests.

pub const IP_A: [u8; 4] = [10, 0, 0, 1];
pub const IP_B: [u8; 4] = [10, 0, 0, 2];
pub const IP_C: [u8; 4] = [10, 0, 0, 3];

pub fn udp(src: ([u8; 6], [u8; 4], u16), dst: ([u8; 6], [u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src.1, dst.1, 64)
        .udp(src.2, dst.2)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// A TCP segment; `flags` from "S", "A", "F", "R", "P".
pub fn tcp(
    src: ([u8; 6], [u8; 4], u16),
    dst: ([u8; 6], [u8; 4], u16),
    seq: u32,
    ack: u32,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src.1, dst.1, 64)
        .tcp(src.2, dst.2, seq, 64000);
    for c in flags.chars() {
        b = match c {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => panic!("flag {c}"),
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// Sends one frame and returns what `to` receives within `wait`.
pub fn exchange(
    from: &mut pktgen::VirtioNet,
    to: &mut pktgen::VirtioNet,
    f: &[u8],
    wait: Duration,
) -> Vec<Vec<u8>> {
    send_all(from, &[f.to_vec()]);
    recv_n(to, 1, wait)
}

pub fn set_policy(sw: &Bulwarkd, port: &str, p: &Value) {
    let (status, v) = sw.api(
        "PUT",
        &format!("/v1/ports/{port}/policy"),
        Some(&p.to_string()),
    );
    assert_eq!(status, 200, "{v}");
}

/// Both guests announce themselves so the switch knows their MACs (non-IP frames pass).
pub fn learn(a: &mut pktgen::VirtioNet, b: &mut pktgen::VirtioNet, ma: [u8; 6], mb: [u8; 6]) {
    send_all(a, &[frame([0xff; 6], ma, 1)]);
    assert_eq!(recv_n(b, 1, Duration::from_secs(5)).len(), 1, "flood");
    send_all(b, &[frame([0xff; 6], mb, 1)]);
    assert_eq!(recv_n(a, 1, Duration::from_secs(5)).len(), 1, "flood");
}
