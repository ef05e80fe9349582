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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use conntrack::{ConnInfo, Table, Timeouts};
use vhost::{Chain, NetDevice, Pop};

use crate::counters::{bump, Counters, DropReason, PortStats, MAX_PORTS};
use crate::filter::{Decision, Filter, Policy, RuleRef, Side};
use crate::mac_table::{MacEntry, MacTable};
use crate::parse::{parse_into, Packet, ParseError, HEADROOM, L3};
use crate::reply::{reject, MAX_REPLY};
use crate::ruleset::{Action, Tuple};
use crate::wire::{EthernetFrame, Mac, ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETH_HEADER_LEN};

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
}

#[derive(Debug)]
struct PortEntry {
    id: u16,
    segment: u16,
    mac: Option<Mac>,
    dev: Arc<NetDevice>,
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
    stop: AtomicBool,
}

impl Switch {
    /// A switch with no ports; call `spawn_workers` to start forwarding.
    pub fn new(cfg: SwitchConfig) -> Arc<Self> {
        let n = cfg.workers.len().max(1);
        Arc::new(Switch {
            macs: MacTable::new(cfg.mac_table_size, cfg.mac_aging_secs.max(1)),
            workers: (0..n).map(|_| WorkerSlot::default()).collect(),
            table: ArcSwap::from_pointee(PortTable {
                polled: vec![Vec::new(); n],
                ..Default::default()
            }),
            publish: Mutex::new(Publish::default()),
            ct: Table::new(&conntrack::Config {
                capacity: cfg.ct_capacity,
                vnics: MAX_PORTS,
                workers: n,
                timeouts: cfg.ct_timeouts,
            }),
            stop: AtomicBool::new(false),
            cfg,
        })
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
            table.filtered[group] |= p.policy.filtered;
            // Queue pairs are spread over workers; a port's first pair goes to worker id % n.
            for q in 0..p.dev.queue_pairs() {
                table.polled[(idx + q) % nworkers].push((p.id, q as u16));
            }
            // A new policy's epoch is set below, once the table's epoch is known.
            let (rules, policy_epoch) = match old.port(p.id) {
                Some(o) if Arc::ptr_eq(&o.policy, &p.policy) => (o.rules.clone(), o.policy_epoch),
                o => {
                    policy_changed |= o.is_some();
                    (Arc::new(RuleCounters::new(&p.policy, nworkers)), u64::MAX)
                }
            };
            table.ports[idx] = Some(PortEntry {
                id: p.id,
                segment: p.segment,
                mac: p.mac,
                dev: p.dev.clone(),
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
            })
            .collect()
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

    /// Removes the connections of port `id` (either end); returns how many. Their next
    /// packets are judged by the rules again as new connections (TCP mid-stream only with
    /// pickup).
    pub fn flush_connections(&self, id: u16) -> usize {
        self.ct.flush_vnic(id)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Drop,
    Port(u16),
    Flood,
}

/// How a flooded frame is judged at each member it is copied to.
#[derive(Debug, Clone, Copy)]
enum FloodCheck {
    /// The member's non-IP rule.
    NonIp,
    /// The member's neighbour-discovery rule.
    Nd,
    /// The member's ingress ruleset.
    Ingress(Tuple),
}

impl FloodCheck {
    fn of(p: &Packet) -> FloodCheck {
        if p.l3 == L3::NonIp {
            return FloodCheck::NonIp;
        }
        if p.icmp.is_some_and(|i| i.is_nd) {
            return FloodCheck::Nd;
        }
        FloodCheck::Ingress(crate::filter::tuple(p))
    }

    /// Whether the member with `policy` accepts it, or the reason it does not.
    fn admits(&self, policy: &Policy) -> Result<(), DropReason> {
        if !policy.filtered {
            return Ok(());
        }
        match self {
            FloodCheck::NonIp if policy.non_ip != Action::Allow => {
                Err(DropReason::NonIpDeniedIngress)
            }
            FloodCheck::Nd if policy.nd != Action::Allow => Err(DropReason::NdDeniedIngress),
            FloodCheck::Ingress(t) if policy.ingress.lookup(t).action != Action::Allow => {
                Err(DropReason::PolicyDropIngress)
            }
            _ => Ok(()),
        }
    }
}

/// One worker's private state: all burst storage is allocated here, once.
struct Worker<'a> {
    sw: &'a Switch,
    me: usize,
    chains: Box<[Chain]>,
    scratch: Box<[Chain]>,
    dest: [Dest; BURST],
    len: [u32; BURST],
    /// Per flooded frame: how members judge it.
    flood_check: [Option<FloodCheck>; BURST],
    /// Each frame's headers (the first `HEADROOM` bytes), parsed packet, connection hash, and
    /// a drop decided before the L2 stage.
    hdrs: Box<[[u8; HEADROOM]]>,
    pkts: Box<[Result<Packet, ParseError>]>,
    hash: [Option<u64>; BURST],
    early: [Option<DropReason>; BURST],
    /// Reject answers built during the burst, for the sender.
    replies: Box<[[u8; MAX_REPLY]]>,
    reply_len: [usize; BURST],
}

/// Switch-clock seconds for `elapsed` since boot, never 0 (0 marks "never seen").
fn secs(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX - 1) + 1
}

/// What one poll loop iteration sees: the clock.
#[derive(Clone, Copy)]
struct Now {
    secs: u32,
    ms: u32,
}

impl<'a> Worker<'a> {
    fn new(sw: &'a Switch, me: usize) -> Self {
        Worker {
            sw,
            me,
            chains: vec![Chain::default(); BURST].into_boxed_slice(),
            scratch: vec![Chain::default(); 8].into_boxed_slice(),
            dest: [Dest::Drop; BURST],
            len: [0; BURST],
            flood_check: [None; BURST],
            hdrs: vec![[0; HEADROOM]; BURST].into_boxed_slice(),
            pkts: vec![Err(ParseError::Truncated); BURST].into_boxed_slice(),
            hash: [None; BURST],
            early: [None; BURST],
            replies: vec![[0u8; MAX_REPLY]; BURST].into_boxed_slice(),
            reply_len: [0; BURST],
        }
    }

    fn run(mut self) {
        let slot = &self.sw.workers[self.me];
        if let Some(&cpu) = self.sw.cfg.workers.get(self.me) {
            if let Err(e) = crate::sys::pin_to_cpu(cpu) {
                log::warn!("worker {}: cannot pin to CPU {cpu}: {e}", self.me);
            }
        }
        let qsbr = self.sw.ct.qsbr();
        let mut cache = Cache::new(&self.sw.table);
        let mut idle = 0u32;
        while !self.sw.stop.load(Ordering::Relaxed) {
            // No connection slot is held across iterations.
            qsbr.quiescent(self.me);
            let table = cache.load();
            if slot.seen.load(Ordering::Relaxed) != table.generation {
                // Release: everything this worker did with older tables happens-before the
                // control thread's Acquire load in `wait_quiescent`.
                slot.seen.store(table.generation, Ordering::Release);
            }
            // One clock read per loop: seconds for timeouts and aging, milliseconds (wrapping
            // after 49 days) for the connection rate limits.
            let elapsed = crate::sys::boot_clock();
            let now = Now {
                secs: secs(elapsed),
                ms: elapsed.as_millis() as u32,
            };
            let mut work = 0;
            if let Some(queues) = table.polled.get(self.me) {
                for &(id, q) in queues {
                    if let Some(p) = table.port(id) {
                        work += self.poll_port(table, p, usize::from(q), now);
                    }
                }
            }
            if work > 0 {
                bump(&slot.busy_polls, 1);
                idle = 0;
            } else {
                bump(&slot.idle_polls, 1);
                idle = idle.saturating_add(1);
                if self.sw.cfg.idle_sleep_us > 0 && idle >= IDLE_SPINS {
                    std::thread::sleep(Duration::from_micros(self.sw.cfg.idle_sleep_us));
                }
            }
        }
        qsbr.offline(self.me);
        slot.running.store(false, Ordering::Release);
    }

    /// Moves up to one burst from queue pair `qp` of port `src`'s guest to its destinations.
    /// Returns frames taken.
    fn poll_port(&mut self, table: &PortTable, src: &PortEntry, qp: usize, now: Now) -> usize {
        let sw = self.sw;
        let counters = &sw.workers[self.me].counters;
        let sc = counters.port(src.id);
        let Some(mut guard) = src.dev.pair(qp).txq.try_lock() else {
            return 0;
        };
        let Some(q) = guard.as_mut() else { return 0 };
        if q.ring.pending() == 0 && q.ring.refresh_avail() == 0 {
            if q.ring.is_broken() && !q.broken_reported {
                q.broken_reported = true;
                sc.drop(DropReason::RingBroken);
            }
            return 0;
        }
        let hdr = q.hdr_len;
        let filtering = table.filtered[src.group];
        let filter = Filter {
            table: &sw.ct,
            epoch: table.epoch,
        };
        let mut n = 0;
        let mut nreplies = 0;
        let mut flood = false;
        let mut taken = 0;
        // Stage 0: take the burst. The descriptors are prefetched first, then each chain's
        // first data line as soon as the chain is known, so that the guest's lines arrive in
        // parallel rather than one miss after another.
        q.ring.prefetch_avail(BURST as u16);
        // Bad chains do not count towards n, so bound the loop by the ring's worth as well.
        while n < BURST && taken < 2 * BURST {
            taken += 1;
            match q.ring.pop(&mut self.chains[n], false) {
                Pop::Chain => {}
                Pop::Bad(e) => {
                    sc.drop(e.into());
                    q.ring.push_used(self.chains[n].head, 0);
                    continue;
                }
                Pop::Empty => break,
                Pop::Broken => {
                    if !q.broken_reported {
                        q.broken_reported = true;
                        sc.drop(DropReason::RingBroken);
                    }
                    break;
                }
            }
            self.chains[n].prefetch(hdr);
            n += 1;
        }
        // The used entries that will complete these chains: the guest reads them, so their
        // lines are fetched for writing now rather than stalled on at the end of the burst.
        q.ring.prefetch_used(taken as u16);
        // Stage 1, per frame: copy the headers out of guest memory (only the Ethernet header
        // when the segment has no firewall), parse them, and start fetching the connection's
        // table lines, so that the lookups of stage 3 find them in cache instead of waiting
        // for memory one frame at a time.
        for i in 0..n {
            let c = &self.chains[i];
            self.flood_check[i] = None;
            self.hash[i] = None;
            self.early[i] = if c.total < hdr + ETH_HEADER_LEN as u32 {
                Some(DropReason::FrameTooShort)
            } else if c.total - hdr > sw.cfg.max_frame {
                Some(DropReason::FrameTooLong)
            } else {
                let len = c.total - hdr;
                self.len[i] = len;
                bump(&sc.rx_packets, 1);
                bump(&sc.rx_bytes, u64::from(len));
                if !filtering {
                    // L2 only: the Ethernet header (and a priority tag's four bytes) is all
                    // the switch reads.
                    let hl = (len as usize).min(L2_HEADER_LEN);
                    c.read_at(hdr, &mut self.hdrs[i][..hl]);
                } else {
                    let hl = (len as usize).min(HEADROOM);
                    c.read_at(hdr, &mut self.hdrs[i][..hl]);
                    // Parsed straight into the slot the filter reads: returning it, wrapping
                    // it in an Option and the filter's own copy were three 124-byte copies per
                    // frame, each stalling on store forwarding (~12 % for the last two).
                    parse_into(&self.hdrs[i][..hl], len as usize, &mut self.pkts[i]);
                    if let Ok(p) = &self.pkts[i] {
                        self.hash[i] = filter.hash_of(p, src.segment);
                        if let Some(h) = self.hash[i] {
                            sw.ct.prefetch_buckets(h);
                        }
                    }
                }
                None
            };
        }
        // Stage 2: the buckets' tags are (mostly) in by now; fetch the matching slots.
        for h in self.hash[..n].iter().flatten() {
            sw.ct.prefetch_slots(*h);
        }
        // Stage 3: L2 decision, then the filter, frame by frame. The source MAC is learned
        // only from a frame that passed both: a frame the sender's policy (or the port's MAC
        // binding) drops must not teach the table that another VM's MAC lives here.
        for i in 0..n {
            let dest = match self.early[i] {
                Some(r) => r.into(),
                None => {
                    let h: &[u8; L2_HEADER_LEN] = self.hdrs[i].first_chunk().expect("headroom");
                    match classify(sw, table, src, h, self.len[i], now.secs) {
                        Classified::Dest(d) if !filtering => Classified::Dest(d),
                        Classified::Dest(d) => self.filter(table, src, i, d, now, &mut nreplies),
                        drop => drop,
                    }
                }
            };
            self.dest[i] = match dest {
                Classified::Drop(r) => {
                    sc.drop(r);
                    Dest::Drop
                }
                Classified::Counted => Dest::Drop,
                Classified::Dest(d) => {
                    let smac = EthernetFrame::new_checked(&self.hdrs[i][..]).map(|e| e.src());
                    if let Some(m) = smac {
                        sw.macs.learn(src.segment, m, src.id, now.secs);
                    }
                    flood |= d == Dest::Flood;
                    d
                }
            };
        }

        // Deliver: each destination's receive queue is locked once for the whole burst.
        let members = &table.members[src.group];
        if flood && members.len() <= 1 {
            for d in &mut self.dest[..n] {
                if *d == Dest::Flood {
                    sc.drop(DropReason::NoDestination);
                    *d = Dest::Drop;
                }
            }
            flood = false;
        }
        if flood {
            for &m in members {
                if m != src.id {
                    self.deliver(table, m, src.id, hdr, n, true);
                }
            }
        } else {
            let mut done = [0u16; BURST];
            let mut ndone = 0;
            for i in 0..n {
                if let Dest::Port(m) = self.dest[i] {
                    if !done[..ndone].contains(&m) {
                        done[ndone] = m;
                        ndone += 1;
                        self.deliver(table, m, src.id, hdr, n, false);
                    }
                }
            }
        }
        if nreplies > 0 {
            self.answer(src, nreplies);
        }

        // Give the guest its transmit buffers back (used length 0: we wrote nothing).
        for c in &self.chains[..n] {
            q.ring.push_used(c.head, 0);
        }
        q.ring.publish_used();
        taken
    }

    /// The filter stage for frame `n` (headers in `self.hdrs[n]`, parsed into `self.pkts[n]`;
    /// a frame that did not parse is dropped under its `ParseError`'s reason), whose L2 destination is `d`.
    fn filter(
        &mut self,
        table: &PortTable,
        src: &PortEntry,
        n: usize,
        d: Dest,
        now: Now,
        nreplies: &mut usize,
    ) -> Classified {
        let p = match &self.pkts[n] {
            Ok(p) => p,
            Err(e) => return DropReason::from(*e).into(),
        };
        let len = self.len[n];
        let hl = (len as usize).min(HEADROOM);
        let f = Filter {
            table: &self.sw.ct,
            epoch: table.epoch,
        };
        let to = match d {
            Dest::Port(m) => table.port(m),
            _ => None,
        };
        if !src.policy.filtered {
            match (d, to) {
                // Neither end has a firewall.
                (Dest::Port(_), Some(t)) if !t.policy.filtered => return Classified::Dest(d),
                // A flood from an unfiltered port: each filtered member judges it.
                (Dest::Flood, _) => {
                    self.flood_check[n] = Some(FloodCheck::of(p));
                    return Classified::Dest(d);
                }
                _ => {}
            }
        }
        // Stage 1 hashed the connection key already.
        let decision = f.decide_hashed(
            p,
            src.segment,
            src.side(),
            to.map(PortEntry::side),
            now.secs,
            now.ms,
            self.hash[n],
        );
        match decision {
            Decision::Pass {
                conn,
                created,
                rules,
            } => {
                self.count_rules(table, &rules, len, created);
                if d != Dest::Flood {
                    return Classified::Dest(d);
                }
                // A flooded frame of a connection whose far end is known goes there only.
                if let (Some(slot), false) = (conn, created) {
                    let (owner, peer) = self.sw.ct.endpoints(slot);
                    let other = if src.id == owner { peer } else { owner };
                    if other != src.id
                        && table.port(other).is_some_and(|o| o.segment == src.segment)
                    {
                        return Classified::Dest(Dest::Port(other));
                    }
                }
                self.flood_check[n] = Some(FloodCheck::of(p));
                Classified::Dest(Dest::Flood)
            }
            Decision::Drop(r, rule) => {
                self.count_rules(table, &[rule, None], len, false);
                self.refused(src, r, rule)
            }
            Decision::Reject(rule) => {
                self.count_rules(table, &[rule, None], len, false);
                if let Some(l) = reject(&self.hdrs[n][..hl], p, &mut self.replies[*nreplies]) {
                    self.reply_len[*nreplies] = l;
                    *nreplies += 1;
                }
                self.refused(src, DropReason::PolicyReject, rule)
            }
        }
    }

    /// A drop decided by a policy is counted on the vNIC whose rule (or default) made it, in
    /// its direction: a frame the receiver's ingress policy refuses counts on the receiver,
    /// as `*_ingress`. Other drops count on the sender (by the caller).
    #[inline]
    fn refused(&self, src: &PortEntry, r: DropReason, by: Option<RuleRef>) -> Classified {
        match by {
            Some(rr) if rr.vnic() != src.id || rr.is_ingress() => {
                let r = if rr.is_ingress() { r.ingress() } else { r };
                self.sw.workers[self.me].counters.port(rr.vnic()).drop(r);
                Classified::Counted
            }
            _ => r.into(),
        }
    }

    #[inline]
    fn count_rules(&self, table: &PortTable, rules: &[Option<RuleRef>; 2], len: u32, new: bool) {
        for r in rules.iter().flatten() {
            let (vnic, ingress, i) = match *r {
                RuleRef::Egress(v, i) => (v, false, i),
                RuleRef::Ingress(v, i) => (v, true, i),
            };
            if let Some(p) = table.port(vnic) {
                p.rules.count(self.me, ingress, i, len, new);
            }
        }
    }

    /// Delivers the burst's reject answers to the sender's guest.
    fn answer(&mut self, src: &PortEntry, nreplies: usize) {
        let sc = self.sw.workers[self.me].counters.port(src.id);
        let mut guard = src.dev.rx_for(self.me).lock();
        let Some(q) = guard.as_mut() else { return };
        for i in 0..nreplies {
            let frame = &self.replies[i][..self.reply_len[i]];
            match q
                .ring
                .enqueue_bytes(frame, q.hdr_len, q.mrg, &mut self.scratch)
            {
                Ok(()) => {
                    bump(&sc.tx_packets, 1);
                    bump(&sc.tx_bytes, frame.len() as u64);
                }
                Err(e) => {
                    sc.drop(e.into());
                    if q.ring.is_broken() {
                        q.broken_reported = true;
                        break;
                    }
                }
            }
        }
        q.ring.publish_used();
    }

    /// Copies the burst's frames bound for port `m` (and floods, when `flood`) into its guest.
    fn deliver(&mut self, table: &PortTable, m: u16, src: u16, hdr: u32, n: usize, flood: bool) {
        let counters = &self.sw.workers[self.me].counters;
        let dc = counters.port(m);
        let Some(dst) = table.port(m) else { return };
        debug_assert_ne!(m, src);
        let mut guard = dst.dev.rx_for(self.me).lock();
        let Some(q) = guard.as_mut() else {
            for i in 0..n {
                if self.dest[i] == Dest::Port(m) || (flood && self.dest[i] == Dest::Flood) {
                    dc.drop(DropReason::PortDown);
                }
            }
            return;
        };
        // The guest's buffers for the next frames: their descriptors now, their first lines
        // PREFETCH_RX frames ahead of the copy (each frame of a burst takes one buffer unless it
        // is larger than the guest's buffers).
        if q.ring.pending() < n as u16 {
            q.ring.refresh_avail();
        }
        q.ring.prefetch_avail(n as u16);
        q.ring.prefetch_used(n as u16);
        for k in 0..PREFETCH_RX {
            q.ring.prefetch_rx(k);
        }
        for i in 0..n {
            match self.dest[i] {
                Dest::Port(p) if p == m => {}
                Dest::Flood if flood => {
                    if let Some(Err(r)) = self.flood_check[i].map(|c| c.admits(&dst.policy)) {
                        dc.drop(r);
                        continue;
                    }
                }
                _ => continue,
            }
            q.ring.prefetch_rx(PREFETCH_RX);
            match q.ring.enqueue_frame(
                &self.chains[i],
                hdr,
                self.len[i],
                q.hdr_len,
                q.mrg,
                &mut self.scratch,
            ) {
                Ok(()) => {
                    bump(&dc.tx_packets, 1);
                    bump(&dc.tx_bytes, u64::from(self.len[i]));
                }
                Err(e) => {
                    dc.drop(e.into());
                    if q.ring.is_broken() {
                        q.broken_reported = true;
                        break;
                    }
                }
            }
        }
        q.ring.publish_used();
    }
}

enum Classified {
    Drop(DropReason),
    /// Dropped, and already counted (on the vNIC whose policy refused it).
    Counted,
    Dest(Dest),
}

impl From<DropReason> for Classified {
    fn from(r: DropReason) -> Self {
        Classified::Drop(r)
    }
}

/// What the L2 stage reads of a frame: the Ethernet header and one 802.1Q tag.
const L2_HEADER_LEN: usize = ETH_HEADER_LEN + 4;

/// L2 decision for one frame of `len` bytes from `src`: check its source, find its
/// destination. (Its source is learned once the frame has passed the filter too.)
#[inline]
fn classify(
    sw: &Switch,
    table: &PortTable,
    src: &PortEntry,
    h: &[u8; L2_HEADER_LEN],
    len: u32,
    now: u32,
) -> Classified {
    let Some(eth) = EthernetFrame::new_checked(&h[..]) else {
        return DropReason::FrameTooShort.into();
    };
    if eth.is_tagged() && !priority_tagged(h, len) {
        return DropReason::VlanTagged.into();
    }
    let (smac, dmac) = (eth.src(), eth.dst());
    if smac.is_group() || smac.is_zero() {
        return DropReason::BadSourceMac.into();
    }
    if src.mac.is_some_and(|m| m != smac) {
        return DropReason::SrcMacSpoofed.into();
    }
    if dmac.is_group() {
        return Classified::Dest(Dest::Flood);
    }
    match sw.macs.lookup(src.segment, dmac, now) {
        Some(p) if p == src.id => DropReason::SamePort.into(),
        // The table is keyed by segment, but check the port too: a port id may have been
        // re-used on another segment since the entry was learned.
        Some(p) if table.port(p).is_some_and(|d| d.segment == src.segment) => {
            Classified::Dest(Dest::Port(p))
        }
        _ => Classified::Dest(Dest::Flood),
    }
}

/// A priority-tagged frame: one 802.1Q tag with VLAN id 0 (only a priority), which 802.1Q
/// treats as untagged. It is switched as it is; the parser looks past the tag, so the
/// firewall judges what it carries.
#[inline]
fn priority_tagged(h: &[u8; L2_HEADER_LEN], len: u32) -> bool {
    let ethertype = u16::from_be_bytes([h[12], h[13]]);
    let tci = u16::from_be_bytes([h[14], h[15]]);
    let inner = u16::from_be_bytes([h[16], h[17]]);
    len as usize >= L2_HEADER_LEN
        && ethertype == ETHERTYPE_VLAN
        && tci & 0x0fff == 0
        && inner != ETHERTYPE_VLAN
        && inner != ETHERTYPE_QINQ
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u16, max: Option<u32>) -> PortSpec {
        PortSpec {
            id,
            segment: 1,
            dev: Arc::new(NetDevice::default()),
            mac: None,
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
