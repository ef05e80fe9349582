//! The switch: a published port table, the shared MAC table, and the poll-mode workers.
//!
//! ```text
//!  control thread                       worker i (pinned to its core, never blocks)
//!  set_ports(specs) --ArcSwap<PortTable>-->  loop {
//!     builds a new immutable table           table = cache.load()        (pointer compare)
//!     publishes it (generation g)            seen[i] = table.generation
//!     waits until every seen[i] >= g         for port in table.polled[i]:
//!     (afterwards no worker touches a           try_lock port.txq; pop <= 32 chains
//!      removed port: its MACs can be            parse, learn src, look up dst
//!      flushed, its id reused)                  per destination: lock rxq once, copy frames
//!                                               complete the tx chains, publish used once
//!                                         }
//! ```
//! Per burst a worker takes the ingress port's txq lock (try-lock: skipped while control holds
//! it) and each destination's rxq lock once; it never holds two rxq locks, and control never
//! holds two queue locks, so there is no lock-order cycle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use vhost::{Chain, NetDevice, Pop};

use crate::counters::{bump, Counters, DropReason, PortStats, MAX_PORTS};
use crate::mac_table::{MacEntry, MacTable};
use crate::wire::{EthernetFrame, ETH_HEADER_LEN};

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
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            workers: vec![0],
            idle_sleep_us: 0,
            mac_aging_secs: 300,
            mac_table_size: 65536,
            max_frame: 9216,
        }
    }
}

/// Empty polls in a row before an idle worker naps (when `idle_sleep_us` > 0).
const IDLE_SPINS: u32 = 1024;

/// What the control plane says about one port.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Port id, `< MAX_PORTS`, unique.
    pub id: u16,
    /// Segment id (an access VLAN or a logical segment), `>= 1`.
    pub segment: u16,
    /// The vhost-user device.
    pub dev: Arc<NetDevice>,
}

#[derive(Debug)]
struct PortEntry {
    id: u16,
    segment: u16,
    dev: Arc<NetDevice>,
    /// Index into `PortTable::members`.
    group: usize,
}

/// An immutable snapshot of the ports, published to workers.
#[derive(Debug, Default)]
struct PortTable {
    generation: u64,
    /// Indexed by port id.
    ports: Vec<Option<PortEntry>>,
    /// Port ids per segment (flood lists).
    members: Vec<Vec<u16>>,
    /// Port ids each worker polls.
    polled: Vec<Vec<u16>>,
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

/// The switch data plane.
#[derive(Debug)]
pub struct Switch {
    cfg: SwitchConfig,
    table: ArcSwap<PortTable>,
    publish: Mutex<u64>,
    macs: MacTable,
    workers: Vec<WorkerSlot>,
    epoch: Instant,
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
            publish: Mutex::new(0),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SwitchConfig {
        &self.cfg
    }

    /// The switch clock in seconds, never 0 (0 marks "never seen" in the MAC table).
    pub fn now_secs(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX - 1) + 1
    }

    /// Starts the workers, one per configured CPU.
    pub fn spawn_workers(self: &Arc<Self>) -> std::io::Result<Vec<JoinHandle<()>>> {
        let mut hs = Vec::new();
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

    /// Asks the workers to exit (join their handles afterwards).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Replaces the set of ports. Returns once no worker can still be using a port that is not
    /// in `ports` (so its MACs can be flushed and its device dropped).
    pub fn set_ports(&self, ports: &[PortSpec]) -> Result<(), Error> {
        let nworkers = self.workers.len();
        let mut table = PortTable {
            polled: vec![Vec::new(); nworkers],
            ..Default::default()
        };
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
                    segs.len() - 1
                }
            };
            table.members[group].push(p.id);
            // Ports are spread over workers by id; multiqueue will spread queues instead.
            table.polled[idx % nworkers].push(p.id);
            table.ports[idx] = Some(PortEntry {
                id: p.id,
                segment: p.segment,
                dev: p.dev.clone(),
                group,
            });
        }
        let mut gen = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        *gen += 1;
        table.generation = *gen;
        self.table.store(Arc::new(table));
        self.wait_quiescent(*gen);
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Drop,
    Port(u16),
    Flood,
}

/// One worker's private state: all burst storage is allocated here, once.
struct Worker<'a> {
    sw: &'a Switch,
    me: usize,
    chains: Box<[Chain]>,
    scratch: Box<[Chain]>,
    dest: [Dest; BURST],
    len: [u32; BURST],
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
        }
    }

    fn run(mut self) {
        let slot = &self.sw.workers[self.me];
        if let Some(&cpu) = self.sw.cfg.workers.get(self.me) {
            if let Err(e) = crate::sys::pin_to_cpu(cpu) {
                log::warn!("worker {}: cannot pin to CPU {cpu}: {e}", self.me);
            }
        }
        let mut cache = Cache::new(&self.sw.table);
        let mut idle = 0u32;
        while !self.sw.stop.load(Ordering::Relaxed) {
            let table = cache.load();
            if slot.seen.load(Ordering::Relaxed) != table.generation {
                // Release: everything this worker did with older tables happens-before the
                // control thread's Acquire load in `wait_quiescent`.
                slot.seen.store(table.generation, Ordering::Release);
            }
            let now = self.sw.now_secs();
            let mut work = 0;
            if let Some(ids) = table.polled.get(self.me) {
                for &id in ids {
                    if let Some(p) = table.port(id) {
                        work += self.poll_port(table, p, now);
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
        slot.running.store(false, Ordering::Release);
    }

    /// Moves up to one burst from port `src`'s guest to its destinations. Returns frames taken.
    fn poll_port(&mut self, table: &PortTable, src: &PortEntry, now: u32) -> usize {
        let sw = self.sw;
        let counters = &sw.workers[self.me].counters;
        let sc = counters.port(src.id);
        let Some(mut guard) = src.dev.txq.try_lock() else {
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
        let mut n = 0;
        let mut flood = false;
        let mut taken = 0;
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
            let c = &self.chains[n];
            let dest = if c.total < hdr + ETH_HEADER_LEN as u32 {
                DropReason::FrameTooShort.into()
            } else if c.total - hdr > sw.cfg.max_frame {
                DropReason::FrameTooLong.into()
            } else {
                let mut h = [0u8; ETH_HEADER_LEN];
                c.read_at(hdr, &mut h);
                self.len[n] = c.total - hdr;
                bump(&sc.rx_packets, 1);
                bump(&sc.rx_bytes, u64::from(self.len[n]));
                classify(sw, table, src, &h, now)
            };
            self.dest[n] = match dest {
                Classified::Drop(r) => {
                    sc.drop(r);
                    Dest::Drop
                }
                Classified::Dest(d) => {
                    flood |= d == Dest::Flood;
                    d
                }
            };
            n += 1;
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

        // Give the guest its transmit buffers back (used length 0: we wrote nothing).
        for c in &self.chains[..n] {
            q.ring.push_used(c.head, 0);
        }
        q.ring.publish_used();
        taken
    }

    /// Copies the burst's frames bound for port `m` (and floods, when `flood`) into its guest.
    fn deliver(&mut self, table: &PortTable, m: u16, src: u16, hdr: u32, n: usize, flood: bool) {
        let counters = &self.sw.workers[self.me].counters;
        let dc = counters.port(m);
        let Some(dst) = table.port(m) else { return };
        debug_assert_ne!(m, src);
        let wanted = |d: Dest| d == Dest::Port(m) || (flood && d == Dest::Flood);
        let mut guard = dst.dev.rxq.lock();
        let Some(q) = guard.as_mut() else {
            for i in 0..n {
                if wanted(self.dest[i]) {
                    dc.drop(DropReason::PortDown);
                }
            }
            return;
        };
        for i in 0..n {
            if !wanted(self.dest[i]) {
                continue;
            }
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
    Dest(Dest),
}

impl From<DropReason> for Classified {
    fn from(r: DropReason) -> Self {
        Classified::Drop(r)
    }
}

/// L2 decision for one frame from `src`: learn its source, find its destination.
#[inline]
fn classify(
    sw: &Switch,
    table: &PortTable,
    src: &PortEntry,
    h: &[u8; ETH_HEADER_LEN],
    now: u32,
) -> Classified {
    let Some(eth) = EthernetFrame::new_checked(&h[..]) else {
        return DropReason::FrameTooShort.into();
    };
    if eth.is_tagged() {
        return DropReason::VlanTagged.into();
    }
    let (smac, dmac) = (eth.src(), eth.dst());
    if smac.is_group() || smac.is_zero() {
        return DropReason::BadSourceMac.into();
    }
    sw.macs.learn(src.segment, smac, src.id, now);
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
