//! The switch: a published port table, the shared MAC table, and the poll-mode workers.
//!
//! ```text
//!  control thread                       worker i (pinned to its core, never blocks)
//!  set_ports(specs) --ArcSwap<PortTable>-->  loop {
//!     builds a new immutable table           table = cache.load()        (pointer compare)
//!     (ports, their policies, the policy     seen[i] = table.generation; qsbr.quiescent(i)
//!      epoch), publishes it (generation g)   for (port, q) in table.polled[i]:
//!     waits until every seen[i] >= g            try_lock port.txq[q]; pop <= 32 chains
//!     (afterwards no worker touches a           per frame: copy the headers, learn src MAC,
//!      removed port: its MACs can be              look up dst, parse, filter (conntrack,
//!      flushed, its id reused)                    then the rulesets on a miss)
//!                                               per destination: lock its rxq once, copy
//!  sweeper thread: conntrack aging,             rejects: answers into the sender's rxq
//!  once a second                                complete the tx chains, publish used once
//!                                         }
//! ```
//!
//! The filter stage (see `filter`) judges each IP frame against the sender's egress policy
//! and, for a unicast frame to a known port, the receiver's ingress policy, with one tracked
//! connection serving both. A flooded frame (broadcast, multicast, unknown unicast) is judged
//! by the sender's egress policy, then by each member's ingress policy (or non-IP / ND rule)
//! as it is copied to that member; a flooded frame of a connection whose far end is known
//! goes to that end only. Every frame is judged against one port-table snapshot: its
//! policies and its epoch, so a policy swap never splits a decision.
//! Per burst a worker takes the ingress queue's txq lock (try-lock: skipped while control holds
//! it) and each destination's rxq lock once; it never holds two rxq locks, and control never
//! holds two queue locks, so there is no lock-order cycle.
//!
//! Multiqueue: queue pair `q` of port `id` is polled by worker `(id + q) % workers`, so one
//! busy guest's transmit queues spread over the cores. A worker fills destination receive
//! queue `me % running` (`NetDevice::rx_for`): with as many receive queues as workers no two
//! workers share one, and a flow, polled by one worker, always lands on one queue (no
//! reordering).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bulwark_vhost::NetDevice;
use conntrack::{ConnInfo, Table, Timeouts};

use crate::counters::{bump, Counters, PortStats, MAX_PORTS};
use crate::filter::{Policy, Side};
use crate::guard::{Guard, Mode as GuardMode, Owners};
use crate::mac_table::{MacEntry, MacTable};
use crate::wire::Mac;

mod deliver;
mod firewall;
mod headers;
mod l2;
mod port;
mod punt;
mod take;
mod worker;

pub use punt::{L2Decision, PuntItem, TraceEvent, TraceRecord, Verdict, PUNT_RING, TRACE_HEAD};

use l2::L2_HEADER_LEN;
use port::Backend;
use punt::PuntRings;
use worker::{secs, Worker};

/// Most frames taken from one queue per poll.
pub const BURST: usize = 32;

/// Switch-wide settings.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// CPU ids, one poll-mode worker thread pinned to each.
    pub workers: Vec<usize>,
    /// Microseconds an idle worker sleeps after `IDLE_SPINS` empty polls (0: never sleeps).
    pub idle_sleep_us: u64,
    /// Seconds after which a MAC entry that was not seen expires.
    pub mac_aging_secs: u32,
    /// Slots in the MAC table.
    pub mac_table_size: usize,
    /// Largest Ethernet frame (without FCS) accepted from a guest.
    pub max_frame: u32,
    /// Connection table capacity (IPv4 connections; an IPv6 one counts twice). Fixed at start.
    pub ct_capacity: usize,
    /// Connection idle timeouts.
    pub ct_timeouts: Timeouts,
    /// The file the connection table lives in, so that it outlives the process
    /// (`Switch::open`; `conntrack::state`); `None`: the process's own memory.
    pub ct_state_file: Option<std::path::PathBuf>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            workers: vec![0],
            idle_sleep_us: 0,
            mac_aging_secs: 300,
            mac_table_size: 65536,
            max_frame: 9216,
            ct_capacity: 1 << 20,
            ct_timeouts: Timeouts::default(),
            ct_state_file: None,
        }
    }
}

/// Empty polls in a row before an idle worker naps (when `idle_sleep_us` > 0).
const IDLE_SPINS: u32 = 1024;
/// How many frames ahead of the copy `deliver` prefetches the destination guest's buffer.
const PREFETCH_RX: u16 = 4;

/// What the control plane says about one port.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Port id, `< MAX_PORTS`, unique.
    pub id: u16,
    /// Segment id (an access VLAN or a logical segment), `>= 1`.
    pub segment: u16,
    /// The vhost-user device.
    pub dev: Arc<NetDevice>,
    /// Its firewall policy. Publishing a different `Arc` starts a new policy epoch.
    pub policy: Arc<Policy>,
    /// The guest's MAC, when the port is bound to it: frames from any other source MAC are
    /// dropped (`src_mac_spoofed`).
    pub mac: Option<Mac>,
    /// Its spoof guard: mode and bound addresses (`guard`). Publishing another `Arc` binds or
    /// unbinds addresses; it never touches the port's connections.
    pub guard: Arc<Guard>,
}

#[derive(Debug)]
struct PortEntry {
    id: u16,
    segment: u16,
    mac: Option<Mac>,
    guard: Arc<Guard>,
    /// `guard` checks every frame (a mode other than off, or a DHCP server): read from the
    /// entry, so that an unguarded port's frames skip the load through the `Arc`.
    guard_all: bool,
    /// Its queues (the worker's only way to its frames).
    backend: Backend,
    policy: Arc<Policy>,
    /// Counters of the rules of `policy` (kept while the policy stays the same `Arc`).
    rules: Arc<RuleCounters>,
    /// The epoch at which `policy` was published (kept while it stays the same `Arc`).
    policy_epoch: u64,
    /// Index into `PortTable::members`.
    group: usize,
}

impl PortEntry {
    fn side(&self) -> Side<'_> {
        Side {
            vnic: self.id,
            policy: &self.policy,
            epoch: self.policy_epoch,
        }
    }
}

/// Per-rule counters of one port's policy: per worker (each writes only its own rows),
/// per rule, packets, bytes and connections. Egress rules first, then ingress rules.
#[derive(Debug)]
struct RuleCounters {
    egress: usize,
    ingress: usize,
    c: Box<[AtomicU64]>,
}

/// Counters of one rule, summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStat {
    /// Packets it decided: the first packet of each connection it admitted and every later
    /// packet of those connections, or each packet it dropped or rejected.
    pub packets: u64,
    /// Bytes of those packets (Ethernet frames).
    pub bytes: u64,
    /// Connections it admitted (for a drop or reject rule: always 0).
    pub connections: u64,
}

/// Per-rule counters of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// One per egress rule, in rule order.
    pub egress: Vec<RuleStat>,
    /// One per ingress rule, in rule order.
    pub ingress: Vec<RuleStat>,
}

impl RuleCounters {
    fn new(p: &Policy, workers: usize) -> Self {
        let (egress, ingress) = (p.egress.len(), p.ingress.len());
        let n = workers * (egress + ingress) * 3;
        RuleCounters {
            egress,
            ingress,
            c: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[inline]
    fn count(&self, worker: usize, ingress: bool, rule: u32, bytes: u32, created: bool) {
        let (r, len) = if ingress {
            (self.egress + rule as usize, self.ingress)
        } else {
            (rule as usize, self.egress)
        };
        if rule as usize >= len {
            return;
        }
        let base = (worker * (self.egress + self.ingress) + r) * 3;
        if let Some(c) = self.c.get(base..base + 3) {
            bump(&c[0], 1);
            bump(&c[1], u64::from(bytes));
            if created {
                bump(&c[2], 1);
            }
        }
    }

    fn stats(&self) -> RuleStats {
        let per = self.egress + self.ingress;
        let mut all = vec![RuleStat::default(); per];
        if per > 0 {
            for w in self.c.chunks(per * 3) {
                for (r, c) in w.chunks(3).enumerate() {
                    all[r].packets += c[0].load(Ordering::Relaxed);
                    all[r].bytes += c[1].load(Ordering::Relaxed);
                    all[r].connections += c[2].load(Ordering::Relaxed);
                }
            }
        }
        let ingress = all.split_off(self.egress);
        RuleStats {
            egress: all,
            ingress,
        }
    }
}

/// An immutable snapshot of the ports, published to workers.
#[derive(Debug, Default)]
struct PortTable {
    generation: u64,
    /// Policy epoch: bumped whenever a port's policy changes (64 bits: never wraps).
    epoch: u64,
    /// Indexed by port id.
    ports: Vec<Option<PortEntry>>,
    /// Port ids per segment (flood lists).
    members: Vec<Vec<u16>>,
    /// Per segment (as `members`): some port in it has a firewall. Without one the segment is
    /// switched at L2 only (no parsing, no tracking).
    filtered: Vec<bool>,
    /// (port id, queue pair) each worker polls.
    polled: Vec<Vec<(u16, u16)>>,
    /// Every port's bound addresses: (segment, address) -> port.
    owners: Owners,
    /// Ports bound to their guest's MAC: (segment, MAC) -> port. A unicast frame to such a MAC
    /// goes to its port before the MAC is learned (the L2 stage asks on a table miss).
    bound: std::collections::HashMap<(u16, Mac), u16>,
}

impl PortTable {
    #[inline]
    fn port(&self, id: u16) -> Option<&PortEntry> {
        self.ports.get(usize::from(id)).and_then(Option::as_ref)
    }
}

#[derive(Debug, Default)]
struct WorkerSlot {
    counters: Counters,
    /// Generation of the last port table this worker loaded.
    seen: AtomicU64,
    running: AtomicBool,
    busy_polls: AtomicU64,
    idle_polls: AtomicU64,
    /// Punt items dropped because this worker's ring was full.
    punt_dropped: AtomicU64,
    /// Polls of a port skipped because its last bursts were mostly dropped (`worker::Backoff`).
    deferred_polls: AtomicU64,
}

/// One worker's loop driven by hand (`Switch::stepper`).
pub struct Stepper<'a> {
    worker: Worker<'a>,
    cache: worker::TableCache<'a>,
}

impl Stepper<'_> {
    /// One pass of the worker's loop: one burst from each queue it polls, through every
    /// stage. Returns the pops made: 0 when nothing was waiting, and one more than the chains
    /// taken from a ring that ran empty.
    pub fn step(&mut self) -> usize {
        self.worker.pass(&mut self.cache)
    }
}

impl Drop for Stepper<'_> {
    fn drop(&mut self) {
        self.worker.sw.ct.qsbr().offline(self.worker.me);
    }
}

impl std::fmt::Debug for Stepper<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stepper")
            .field("worker", &self.worker.me)
            .finish_non_exhaustive()
    }
}

/// Per-worker statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// CPU the worker is pinned to.
    pub cpu: usize,
    /// Loop iterations that moved at least one frame.
    pub busy_polls: u64,
    /// Loop iterations that found nothing.
    pub idle_polls: u64,
    /// Punt items (trace records) dropped because its punt ring was full.
    pub punt_dropped: u64,
    /// Polls of a port it skipped because the port's last bursts were mostly dropped (a
    /// flooding guest waits, its frames left in its own ring, instead of taking the worker).
    pub deferred_polls: u64,
}

/// Errors from the switch's control interface.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// port id out of range
    PortId(u16),
    /// segment id 0 is reserved
    Segment,
    /// two ports share an id
    DuplicateId(u16),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::PortId(id) => write!(f, "port id {id} is out of range (max {})", MAX_PORTS - 1),
            Error::Segment => write!(f, "segment id 0 is reserved"),
            Error::DuplicateId(id) => write!(f, "port id {id} used twice"),
        }
    }
}

impl std::error::Error for Error {}

/// The publisher's state (`set_ports` calls are serialized by its mutex).
#[derive(Debug, Default)]
struct Publish {
    /// Generation of the last published port table.
    generation: u64,
    /// Policy epoch of the last `conntrack::Table::restamp` pass.
    restamped: u64,
}

/// The switch data plane.
#[derive(Debug)]
pub struct Switch {
    cfg: SwitchConfig,
    table: ArcSwap<PortTable>,
    publish: Mutex<Publish>,
    macs: MacTable,
    workers: Vec<WorkerSlot>,
    ct: Table,
    /// How the connection table's state file was found at start (`open`).
    ct_opened: Option<conntrack::Opened>,
    stop: AtomicBool,
    /// Per port id: frames still to trace (`trace`).
    trace: Box<[AtomicU32]>,
    punts: PuntRings,
}

impl Switch {
    /// A switch with no ports, its connection table in the process's memory (the state file
    /// is not used: `open` uses it); call `spawn_workers` to start forwarding.
    pub fn new(cfg: SwitchConfig) -> Arc<Self> {
        let ct = Table::new(&Self::ct_config(&cfg));
        Self::with_table(cfg, ct, None)
    }

    /// A switch with no ports whose connection table lives in `cfg.ct_state_file` (when set):
    /// the table an earlier process left there is taken over, its connections stale until
    /// their next packet re-validates them (`conntrack::Table::open`). Returns how the file
    /// was found, for the log.
    pub fn open(cfg: SwitchConfig) -> std::io::Result<(Arc<Self>, Option<conntrack::Opened>)> {
        let Some(path) = cfg.ct_state_file.clone() else {
            return Ok((Self::new(cfg), None));
        };
        let now = secs(crate::sys::boot_clock());
        let (ct, opened) = Table::open(&Self::ct_config(&cfg), &path, now)?;
        Ok((
            Self::with_table(cfg, ct, Some(opened.clone())),
            Some(opened),
        ))
    }

    fn ct_config(cfg: &SwitchConfig) -> conntrack::Config {
        conntrack::Config {
            capacity: cfg.ct_capacity,
            vnics: MAX_PORTS,
            workers: cfg.workers.len().max(1),
            timeouts: cfg.ct_timeouts,
        }
    }

    fn with_table(cfg: SwitchConfig, ct: Table, ct_opened: Option<conntrack::Opened>) -> Arc<Self> {
        let n = cfg.workers.len().max(1);
        Arc::new(Switch {
            macs: MacTable::new(cfg.mac_table_size, cfg.mac_aging_secs.max(1)),
            workers: (0..n).map(|_| WorkerSlot::default()).collect(),
            table: ArcSwap::from_pointee(PortTable {
                polled: vec![Vec::new(); n],
                ..Default::default()
            }),
            publish: Mutex::new(Publish::default()),
            ct,
            ct_opened,
            stop: AtomicBool::new(false),
            trace: (0..MAX_PORTS).map(|_| AtomicU32::new(0)).collect(),
            punts: PuntRings::new(n),
            cfg,
        })
    }

    /// How the connection table's state file was found at start (None: no state file).
    pub fn conntrack_opened(&self) -> Option<&conntrack::Opened> {
        self.ct_opened.as_ref()
    }

    /// Records a clean stop in the connection table's state file (after the workers
    /// stopped): the next process reports a restart rather than a crash.
    pub fn close(&self) {
        self.ct.mark_closed();
    }

    /// The configuration.
    pub fn config(&self) -> &SwitchConfig {
        &self.cfg
    }

    /// The switch clock in seconds, never 0 (0 marks "never seen" in the MAC table): seconds
    /// since boot (`sys::boot_clock`), a time base a later process continues.
    pub fn now_secs(&self) -> u32 {
        secs(crate::sys::boot_clock())
    }

    /// Starts the workers, one per configured CPU, and the connection sweeper.
    pub fn spawn_workers(self: &Arc<Self>) -> std::io::Result<Vec<JoinHandle<()>>> {
        let mut hs = Vec::new();
        let sw = self.clone();
        hs.push(
            std::thread::Builder::new()
                .name("ct-sweep".into())
                .spawn(move || sw.sweeper())?,
        );
        for i in 0..self.workers.len() {
            let sw = self.clone();
            self.workers[i].running.store(true, Ordering::Release);
            hs.push(
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || Worker::new(&sw, i).run())?,
            );
        }
        Ok(hs)
    }

    /// Worker `me`'s loop, run by hand on the caller's thread: one pass per
    /// [`Stepper::step`]. For tests and the instruction-count benchmark
    /// (`benches/benches/frame_cost.rs`), which need the whole frame path without a polling
    /// thread beside it. The caller becomes worker `me` for the connection table's reclamation
    /// (it is offline again when the stepper drops).
    ///
    /// # Panics
    /// If `me` is not a worker index, or the workers were spawned.
    pub fn stepper(&self, me: usize) -> Stepper<'_> {
        assert!(me < self.workers.len(), "worker {me} out of range");
        assert!(
            !self
                .workers
                .iter()
                .any(|w| w.running.load(Ordering::Acquire)),
            "a stepper on a switch whose workers run"
        );
        Stepper {
            worker: Worker::new(self, me),
            cache: arc_swap::Cache::new(&self.table),
        }
    }

    /// Ages the connection table once a second until shutdown. A full pass over a 1M-entry
    /// table reads 64 MB; it runs on the control core, never on a worker.
    fn sweeper(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            for _ in 0..10 {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let st = self.ct.sweep(self.now_secs());
            if st.expired > 0 {
                log::debug!(
                    "conntrack: {} expired, {} reclaimed",
                    st.expired,
                    st.reclaimed
                );
            }
        }
    }

    /// Asks the workers to exit (join their handles afterwards).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Replaces the set of ports. Returns once no worker can still be using a port that is not
    /// in `ports` (so its MACs can be flushed and its device dropped).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "queue pairs are at most bulwark_vhost::MAX_QUEUE_PAIRS (16)"
    )]
    pub fn set_ports(&self, ports: &[PortSpec]) -> Result<(), Error> {
        let nworkers = self.workers.len();
        let old = self.table.load_full();
        let mut table = PortTable {
            polled: vec![Vec::new(); nworkers],
            ..Default::default()
        };
        let mut policy_changed = false;
        let mut segs: Vec<u16> = Vec::new();
        for p in ports {
            if usize::from(p.id) >= MAX_PORTS {
                return Err(Error::PortId(p.id));
            }
            if p.segment == 0 {
                return Err(Error::Segment);
            }
            let idx = usize::from(p.id);
            if table.ports.len() <= idx {
                table.ports.resize_with(idx + 1, || None);
            }
            if table.ports[idx].is_some() {
                return Err(Error::DuplicateId(p.id));
            }
            let group = match segs.iter().position(|&s| s == p.segment) {
                Some(g) => g,
                None => {
                    segs.push(p.segment);
                    table.members.push(Vec::new());
                    table.filtered.push(false);
                    segs.len() - 1
                }
            };
            table.members[group].push(p.id);
            if let Some(m) = p.mac {
                table.bound.entry((p.segment, m)).or_insert(p.id);
            }
            // A guarded port's frames are parsed, so its segment is too.
            table.filtered[group] |= p.policy.filtered || p.guard.mode != GuardMode::Off;
            for a in p
                .guard
                .v4
                .iter()
                .map(|&a| IpAddr::V4(a))
                .chain(p.guard.v6.iter().map(|&a| IpAddr::V6(a)))
            {
                table.owners.entry((p.segment, a)).or_insert(p.id);
            }
            // Queue pairs are spread over workers; a port's first pair goes to worker id % n.
            for q in 0..p.dev.queue_pairs() {
                table.polled[(idx + q) % nworkers].push((p.id, q as u16));
            }
            // A new policy's epoch is set below, once the table's epoch is known.
            let (rules, policy_epoch) = match old.port(p.id) {
                Some(o) if Arc::ptr_eq(&o.policy, &p.policy) => (o.rules.clone(), o.policy_epoch),
                // Same rulesets, other groups (a membership change): a new epoch, the
                // rules' counters kept.
                Some(o)
                    if Arc::ptr_eq(&o.policy.egress, &p.policy.egress)
                        && Arc::ptr_eq(&o.policy.ingress, &p.policy.ingress) =>
                {
                    policy_changed = true;
                    (o.rules.clone(), u64::MAX)
                }
                o => {
                    policy_changed |= o.is_some();
                    (Arc::new(RuleCounters::new(&p.policy, nworkers)), u64::MAX)
                }
            };
            table.ports[idx] = Some(PortEntry {
                id: p.id,
                segment: p.segment,
                mac: p.mac,
                guard: p.guard.clone(),
                guard_all: p.guard.mode != GuardMode::Off || p.guard.dhcp_server,
                backend: Backend::Vhost(p.dev.clone()),
                policy: p.policy.clone(),
                rules,
                policy_epoch,
                group,
            });
        }
        let mut publish = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        // Re-read under the lock: set_ports calls are serialized from here on.
        let cur_epoch = self.table.load().epoch;
        table.epoch = cur_epoch + u64::from(policy_changed);
        for e in table.ports.iter_mut().flatten() {
            if e.policy_epoch == u64::MAX {
                e.policy_epoch = table.epoch;
            }
        }
        // Connections keep 16 bits of their epoch: renew (or mark stale) the old stamps before
        // they could wrap (`conntrack::RESTAMP_EVERY`).
        if table.epoch - publish.restamped >= conntrack::RESTAMP_EVERY {
            let t0 = Instant::now();
            let (renewed, stale) = self.ct.restamp(table.epoch, |v| {
                table.port(v).map_or(table.epoch, |p| p.policy_epoch)
            });
            publish.restamped = table.epoch;
            log::info!(
                "policy epoch {}: {renewed} connection stamps renewed, {stale} marked stale ({:?})",
                table.epoch,
                t0.elapsed()
            );
        }
        for (id, max, rate) in vnic_limits(self.cfg.ct_capacity, ports) {
            self.ct.set_vnic_limits(id, max, rate);
        }
        publish.generation += 1;
        let gen = publish.generation;
        table.generation = gen;
        self.table.store(Arc::new(table));
        self.wait_quiescent(gen);
        Ok(())
    }

    /// Waits (bounded) until every running worker has loaded generation `gen`.
    fn wait_quiescent(&self, gen: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for (i, w) in self.workers.iter().enumerate() {
            // Acquire: pairs with the worker's Release store of `seen`, which it makes only
            // after finishing every burst that used an older table.
            while w.running.load(Ordering::Acquire) && w.seen.load(Ordering::Acquire) < gen {
                if Instant::now() > deadline {
                    log::error!("worker {i} did not pick up port table {gen} within 5 s");
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Counters of port `id` summed over all workers (since the switch started).
    pub fn port_stats(&self, id: u16) -> PortStats {
        let mut s = PortStats::default();
        for w in &self.workers {
            s.add(w.counters.port(id));
        }
        s
    }

    /// Counters of port `id`, one entry per worker (since the switch started).
    pub fn port_stats_per_worker(&self, id: u16) -> Vec<PortStats> {
        self.workers
            .iter()
            .map(|w| {
                let mut s = PortStats::default();
                s.add(w.counters.port(id));
                s
            })
            .collect()
    }

    /// Per-worker loop statistics.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| WorkerStats {
                cpu: self.cfg.workers.get(i).copied().unwrap_or(0),
                busy_polls: w.busy_polls.load(Ordering::Relaxed),
                idle_polls: w.idle_polls.load(Ordering::Relaxed),
                punt_dropped: w.punt_dropped.load(Ordering::Relaxed),
                deferred_polls: w.deferred_polls.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Traces the next `frames` frames from port `id` (0 stops a trace): the worker that polls
    /// it punts one `TraceRecord` per frame, through every stage (`drain_punts`).
    pub fn trace(&self, id: u16, frames: u32) {
        if let Some(t) = self.trace.get(usize::from(id)) {
            t.store(frames, Ordering::Relaxed);
        }
    }

    /// Frames of port `id` still to trace.
    pub fn trace_remaining(&self, id: u16) -> u32 {
        self.trace
            .get(usize::from(id))
            .map_or(0, |t| t.load(Ordering::Relaxed))
    }

    /// Whether port `id` is traced: the one load per burst that tracing costs when off.
    #[inline(always)]
    fn traced(&self, id: u16) -> bool {
        self.trace[usize::from(id)].load(Ordering::Relaxed) > 0
    }

    /// Takes up to `n` frames of port `id`'s trace budget; returns how many.
    #[cold]
    fn claim_trace(&self, id: u16, n: usize) -> usize {
        let want = u32::try_from(n).unwrap_or(u32::MAX);
        let t = &self.trace[usize::from(id)];
        match t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            (left > 0).then(|| left - left.min(want))
        }) {
            Ok(left) => left.min(want) as usize,
            Err(_) => 0,
        }
    }

    /// Hands every punted item to `f` (the control threads' side of the punt rings); returns
    /// how many there were.
    pub fn drain_punts(&self, f: impl FnMut(PuntItem)) -> usize {
        self.punts.drain(f)
    }

    /// The live MAC table entries.
    pub fn mac_entries(&self) -> Vec<MacEntry> {
        self.macs.entries(self.now_secs())
    }

    /// Forgets the MACs learned on a port (call after `set_ports` removed it).
    pub fn flush_macs(&self, id: u16) -> usize {
        self.macs.flush_port(id)
    }

    /// The connection table.
    pub fn conntrack(&self) -> &Table {
        &self.ct
    }

    /// The current policy epoch.
    pub fn policy_epoch(&self) -> u64 {
        self.table.load().epoch
    }

    /// The epoch at which port `id`'s current policy was published.
    pub fn port_policy_epoch(&self, id: u16) -> Option<u64> {
        self.table.load().port(id).map(|p| p.policy_epoch)
    }

    /// Live connections of port `id` (either end), or all of them (slow path: scans the
    /// table).
    pub fn connections(&self, id: Option<u16>) -> Vec<ConnInfo> {
        let now = self.now_secs();
        let mut v = self.ct.connections(id, now);
        v.retain(|c| !c.expired);
        v
    }

    /// Port `id`'s connections (either end) as records to move to another switch
    /// (`conntrack::Table::records`).
    pub fn connection_records(&self, id: u16) -> Vec<conntrack::Record> {
        self.ct.records(Some(id), self.now_secs())
    }

    /// Takes connections moved from another switch (their owner and peer already this
    /// switch's port ids), each charged to its owner's limit; stale until their next packet
    /// re-validates them. `rejoin` (`conntrack::Table::adopt`): a connection already here
    /// through port `.0` is the vNIC `.1`'s again. Returns how many were new, already here,
    /// rejoined, and refused (table or owner full).
    pub fn adopt_connections(
        &self,
        records: &[conntrack::Record],
        rejoin: Option<(u16, u16)>,
    ) -> [usize; 4] {
        let now = self.now_secs();
        let mut n = [0; 4];
        for r in records {
            n[match self.ct.adopt(r, now, true, rejoin) {
                Ok(conntrack::Adopted::New) => 0,
                Ok(conntrack::Adopted::Existing) => 1,
                Ok(conntrack::Adopted::Rejoined) => 2,
                Err(_) => 3,
            }] += 1;
        }
        n
    }

    /// After port `id`'s guest moved to another switch reached through port `via`: its
    /// connections with a vNIC that stays (`local`) go through `via` from now on, the others
    /// are removed (`conntrack::Table::handover`). Returns (kept, removed).
    pub fn hand_over_connections(
        &self,
        id: u16,
        via: u16,
        local: impl Fn(u16) -> bool,
    ) -> (usize, usize) {
        self.ct.handover(id, via, local)
    }

    /// Removes the connections of port `id` (either end); returns how many. Their next
    /// packets are judged by the rules again as new connections (TCP mid-stream only with
    /// pickup).
    pub fn flush_connections(&self, id: u16) -> usize {
        self.ct.flush_vnic(id)
    }

    /// Removes the connections with an end that `live` says is no port any more (a restarted
    /// switch, after its ports came back); returns how many.
    pub fn retain_connections(&self, live: impl Fn(u16) -> bool) -> usize {
        self.ct.retain(|owner, peer| live(owner) && live(peer))
    }

    /// Per-rule counters of port `id`'s current policy (reset when its policy is replaced).
    pub fn rule_stats(&self, id: u16) -> Option<RuleStats> {
        self.table.load().port(id).map(|p| p.rules.stats())
    }
}

/// Each port's connection limits: its policy's `max_connections` when set, otherwise a fair
/// share of what the explicit limits leave of the table, so that the limits add up to no more
/// than the capacity and no VM can take another's share (a SYN flood fills only the flooder's
/// quota). Shares are recomputed whenever the ports change.
fn vnic_limits(capacity: usize, ports: &[PortSpec]) -> Vec<(u16, u32, u32)> {
    let cap = u64::try_from(capacity).unwrap_or(u64::MAX);
    let unset = |p: &&PortSpec| p.policy.max_connections == u32::MAX;
    let explicit: u64 = ports
        .iter()
        .filter(|p| !unset(p))
        .map(|p| u64::from(p.policy.max_connections))
        .sum();
    let sharers = ports.iter().filter(unset).count() as u64;
    if explicit > cap {
        log::warn!(
            "per-port max_connections add up to {explicit}, more than the table's {cap}: \
             one VM can keep another from opening connections"
        );
    }
    let share = (cap.saturating_sub(explicit) / sharers.max(1)).max(1);
    let share = u32::try_from(share).unwrap_or(u32::MAX - 1);
    ports
        .iter()
        .map(|p| {
            let max = if unset(&p) {
                share
            } else {
                p.policy.max_connections
            };
            (p.id, max, p.policy.new_connections_per_sec)
        })
        .collect()
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::DropReason;
    use crate::filter::{Decision, Filter, RuleRef};
    use crate::parse::Packet;
    use crate::ruleset::Action;

    fn spec(id: u16, max: Option<u32>) -> PortSpec {
        PortSpec {
            id,
            segment: 1,
            dev: Arc::new(NetDevice::default()),
            mac: None,
            guard: Arc::default(),
            policy: Arc::new(Policy {
                max_connections: max.unwrap_or(u32::MAX),
                new_connections_per_sec: 7,
                ..Policy::allow_all()
            }),
        }
    }

    fn udp(src: [u8; 4], dst: [u8; 4]) -> Packet {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .udp(1000, 53)
            .write(&mut f, b"q")
            .unwrap();
        crate::parse::parse(&f, f.len()).unwrap()
    }

    /// A connection validated before its vNIC's policy changed stays stale however many
    /// epochs later its next packet comes, even when the epoch's low 16 bits (all a
    /// connection stores) have come round to its stamp again: the publisher's restamp pass
    /// marks it. Connections of vNICs whose policies did not change are renewed, not cut.
    #[test]
    fn epochs_cannot_wrap_around_a_revoked_rule() {
        let sw = Switch::new(SwitchConfig {
            ct_capacity: 1024,
            ..SwitchConfig::default()
        });
        let mut specs: Vec<PortSpec> = (0..4).map(|i| spec(i, None)).collect();
        sw.set_ports(&specs).unwrap();
        let (a, b, d) = ([10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 4]);
        let decide = |p: &Packet, from: u16, to: u16| {
            let t = sw.table.load();
            let f = Filter {
                table: &sw.ct,
                epoch: t.epoch,
            };
            let side = |i: u16| t.port(i).unwrap().side();
            f.decide(p, 1, side(from), Some(side(to)), 1, 1)
        };
        assert!(decide(&udp(a, b), 0, 1).conn().is_some());
        assert!(decide(&udp(b, d), 1, 3).conn().is_some());
        // A's policy now drops everything it sends.
        specs[0].policy = Arc::new(Policy {
            egress: Arc::new(crate::ruleset::Ruleset::compile(&[], Action::Drop).unwrap()),
            ..Policy::allow_all()
        });
        sw.set_ports(&specs).unwrap();
        let changed = sw.policy_epoch();
        // 2^16 - 1 more policy changes, on port 2 only: the epoch's low 16 bits read as
        // they did when A's connection was validated.
        for _ in 0..u16::MAX {
            specs[2].policy = Arc::new(Policy::allow_all());
            sw.set_ports(&specs).unwrap();
        }
        assert_eq!(sw.policy_epoch() - changed, u64::from(u16::MAX));
        assert_eq!(sw.policy_epoch() as u16, (changed - 1) as u16);
        assert_eq!(
            decide(&udp(a, b), 0, 1),
            Decision::Drop(
                DropReason::PolicyRevoked,
                Some(RuleRef::Egress(0, RuleRef::DEFAULT))
            ),
            "A's connection outlived its rule"
        );
        // B-D's connection was validated under rules that did not change: it continues.
        assert!(matches!(
            decide(&udp(b, d), 1, 3),
            Decision::Pass { created: false, .. }
        ));
    }

    #[test]
    fn connection_limits_share_the_table() {
        // Unset limits split what the explicit ones leave, so the sum never exceeds capacity.
        let l = vnic_limits(1000, &[spec(0, None), spec(1, Some(400)), spec(2, None)]);
        assert_eq!(l, vec![(0, 300, 7), (1, 400, 7), (2, 300, 7)]);
        let l = vnic_limits(1000, &[spec(0, None)]);
        assert_eq!(l, vec![(0, 1000, 7)]);
        // Overcommitted explicit limits: the others still get at least one.
        let l = vnic_limits(1000, &[spec(0, Some(2000)), spec(1, None)]);
        assert_eq!(l, vec![(0, 2000, 7), (1, 1, 7)]);
    }
}
