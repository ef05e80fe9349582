//! The vhost-user protocol for one virtio-net device, on the slow path.
//!
//! `NetBackend` answers the frontend's messages (through rust-vmm's `BackendReqHandler`) and
//! collects what each virtqueue needs. When a queue is complete (memory table, size, addresses,
//! kick fd, and enabled), it builds a `SplitRing` and installs it into the shared `NetDevice`,
//! where the worker cores find it. Stopping a queue (GET_VRING_BASE, disable, a new memory
//! table, disconnect) takes the ring back out under the same lock, so a worker never sees memory
//! being unmapped under it: a worker uses a ring only while it holds that queue's lock.

use std::fs::File;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::GpuBackend;
use vhost::vhost_user::{
    Backend, Error as VuError, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_bindings::{virtio_config, virtio_net, virtio_ring};

use crate::guest_mem::{DirtyLog, GuestMemory, RegionDesc};
use crate::ring::{RingConfig, RingLog, SplitRing, NET_HDR_LEN, NET_HDR_LEN_LEGACY};
use crate::sync::SpinLock;

// Feature masks, from the bit numbers of virtio-bindings (the kernel's uapi headers) and the
// vhost-user flag of rust-vmm's `vhost`: defined nowhere else.

/// virtio-net: the device can merge receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF;
/// virtio-net: several queue pairs (offered only by ports configured with more than one).
pub const VIRTIO_NET_F_MQ: u64 = 1 << virtio_net::VIRTIO_NET_F_MQ;
/// The used_event / avail_event notification scheme.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// vhost-user: protocol features are negotiated.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// virtio 1.0 (little-endian, 12-byte net header).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
/// vhost: log every guest page the device writes (set by the frontend while it migrates the
/// guest; the log comes with SET_LOG_BASE).
pub const VHOST_F_LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
/// virtio-net: the guest announces itself (gratuitous ARP, unsolicited NA) when the frontend
/// asks, after a migration; the frontend (QEMU) handles the control queue that carries it, so
/// the switch learns where the guest went from the guest itself.
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_ANNOUNCE;

/// The virtio features this device offers.
pub const OFFERED_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_NET_F_GUEST_ANNOUNCE
    | VHOST_F_LOG_ALL
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// Virtqueue 0: the device writes frames into guest buffers (guest receive).
pub const RX_QUEUE: usize = 0;
/// Virtqueue 1: the guest hands frames to the device (guest transmit).
pub const TX_QUEUE: usize = 1;
/// Most queue pairs a port can have (virtqueues `2q` receive and `2q + 1` transmit).
pub const MAX_QUEUE_PAIRS: usize = 16;

/// A running virtqueue, as the workers see it.
#[derive(Debug)]
pub struct Queue {
    /// The ring.
    pub ring: SplitRing,
    /// virtio-net header length: 12 with VERSION_1 or MRG_RXBUF, else 10.
    pub hdr_len: u32,
    /// MRG_RXBUF negotiated.
    pub mrg: bool,
    /// The worker has counted this ring's breakage (counted once per ring).
    pub broken_reported: bool,
}

/// Connection state of a port, as the API reports it (the variant's name in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::FromRepr)]
#[strum(serialize_all = "lowercase")]
#[repr(u8)]
pub enum LinkState {
    /// Not started, or stopped.
    Stopped = 0,
    /// Client mode: dialing the frontend's socket (retrying with backoff).
    Connecting = 1,
    /// Server mode: waiting for the frontend to connect.
    Listening = 2,
    /// Connected; queues not all running yet.
    Negotiating = 3,
    /// Connected with both queues running.
    Running = 4,
}

impl LinkState {
    /// The name shown by the API.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    fn from_u8(v: u8) -> Self {
        LinkState::from_repr(v).unwrap_or(LinkState::Stopped)
    }
}

/// One receive and one transmit virtqueue (virtqueues `2q` and `2q + 1`).
#[derive(Debug, Default)]
pub struct QueuePair {
    /// Guest receive: frames switched to this port are written here.
    pub rxq: SpinLock<Option<Queue>>,
    /// Guest transmit: frames this port's guest sends are read from here.
    pub txq: SpinLock<Option<Queue>>,
}

/// The part of a virtio-net device shared between the control thread and the worker cores.
#[derive(Debug)]
pub struct NetDevice {
    pairs: Box<[QueuePair]>,
    /// Bit `q` is set while pair `q`'s receive ring is running (a hint for choosing a receive
    /// queue; the queue's lock and `Option` are the truth).
    rx_running: AtomicU32,
    state: AtomicU8,
    features: AtomicU64,
    connections: AtomicU64,
}

impl Default for NetDevice {
    fn default() -> Self {
        NetDevice::new(1)
    }
}

impl NetDevice {
    /// A device with `pairs` queue pairs (clamped to `1..=MAX_QUEUE_PAIRS`). With more than
    /// one, VIRTIO_NET_F_MQ and the MQ protocol feature are offered to the frontend.
    pub fn new(pairs: usize) -> Self {
        let n = pairs.clamp(1, MAX_QUEUE_PAIRS);
        NetDevice {
            pairs: (0..n).map(|_| QueuePair::default()).collect(),
            rx_running: AtomicU32::new(0),
            state: AtomicU8::new(LinkState::Stopped as u8),
            features: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    /// The number of queue pairs this device offers.
    pub fn queue_pairs(&self) -> usize {
        self.pairs.len()
    }

    /// Queue pair `q`.
    ///
    /// # Panics
    /// If `q >= queue_pairs()`.
    pub fn pair(&self, q: usize) -> &QueuePair {
        &self.pairs[q]
    }

    /// The receive queue a sender numbered `k` (a worker) should fill: the `k % n`-th of the
    /// `n` running receive queues, so each worker keeps to one queue (no reordering within a
    /// flow, no lock contention when there are at least as many queues as workers). Pair 0 when
    /// none is running (its `Option` is then `None`).
    pub fn rx_for(&self, k: usize) -> &SpinLock<Option<Queue>> {
        let mut mask = self.rx_running.load(Ordering::Relaxed);
        let n = mask.count_ones() as usize;
        if n > 1 {
            for _ in 0..k % n {
                mask &= mask - 1;
            }
        }
        let q = if mask == 0 {
            0
        } else {
            mask.trailing_zeros() as usize
        };
        &self.pairs[q.min(self.pairs.len() - 1)].rxq
    }

    /// Queue pairs whose receive ring is running now.
    pub fn rx_queues_running(&self) -> usize {
        self.rx_running.load(Ordering::Relaxed).count_ones() as usize
    }

    /// Current link state.
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Sets the link state (connection manager and protocol handler).
    pub fn set_state(&self, s: LinkState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Virtio features acked by the frontend on the current connection.
    pub fn features(&self) -> u64 {
        self.features.load(Ordering::Relaxed)
    }

    /// Number of frontend connections accepted or made so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn count_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Virtqueue `index`: even ones receive, odd ones transmit.
    fn slot(&self, index: usize) -> &SpinLock<Option<Queue>> {
        let p = &self.pairs[index / 2];
        if index % 2 == RX_QUEUE {
            &p.rxq
        } else {
            &p.txq
        }
    }

    fn set_rx_running(&self, index: usize, running: bool) {
        if index % 2 == RX_QUEUE {
            let bit = 1u32 << (index / 2);
            if running {
                self.rx_running.fetch_or(bit, Ordering::Relaxed);
            } else {
                self.rx_running.fetch_and(!bit, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Debug)]
struct VringSetup {
    cfg: RingConfig,
    num_set: bool,
    addr_set: bool,
    kick: Option<File>,
    /// Guest-physical address of the used ring for the dirty log (SET_VRING_ADDR with
    /// VHOST_VRING_F_LOG).
    log_used_gpa: Option<u64>,
    /// Rings start enabled, although the vhost-user spec says a ring starts disabled once
    /// PROTOCOL_FEATURES is negotiated. QEMU 7.2 sends its SET_VRING_ENABLE(1) messages while
    /// the guest negotiates features, *before* SET_FEATURES, and rust-vmm's `vhost` crate
    /// refuses them ("inactive feature") before they reach us: honouring the spec would leave
    /// every ring disabled for ever. DPDK accepts those early enables, so its behaviour with
    /// QEMU is the same as ours. A SET_VRING_ENABLE(0) that reaches us is honoured.
    enabled: bool,
    running: bool,
}

impl Default for VringSetup {
    fn default() -> Self {
        VringSetup {
            cfg: RingConfig::default(),
            num_set: false,
            addr_set: false,
            kick: None,
            log_used_gpa: None,
            enabled: true,
            running: false,
        }
    }
}

/// The protocol handler for one connection.
#[derive(Debug)]
pub struct NetBackend {
    dev: Arc<NetDevice>,
    name: String,
    features: u64,
    protocol_features: u64,
    mem: Option<Arc<GuestMemory>>,
    /// The frontend's dirty-page log (SET_LOG_BASE), used while VHOST_F_LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
    /// Two per queue pair: receive at even indexes, transmit at odd ones.
    vrings: Vec<VringSetup>,
}

fn invalid(what: &'static str) -> VuError {
    VuError::InvalidOperation(what)
}

impl NetBackend {
    /// A handler for a fresh connection of the device `dev` (named `name` in logs).
    pub fn new(dev: Arc<NetDevice>, name: &str) -> Self {
        dev.features.store(0, Ordering::Relaxed);
        NetBackend {
            name: name.to_string(),
            features: 0,
            protocol_features: 0,
            mem: None,
            log: None,
            vrings: Self::fresh_vrings(&dev),
            dev,
        }
    }

    fn fresh_vrings(dev: &NetDevice) -> Vec<VringSetup> {
        (0..2 * dev.queue_pairs())
            .map(|_| VringSetup::default())
            .collect()
    }

    /// The virtio features this port offers: MQ only with more than one queue pair.
    fn offered(&self) -> u64 {
        if self.dev.queue_pairs() > 1 {
            OFFERED_FEATURES | VIRTIO_NET_F_MQ
        } else {
            OFFERED_FEATURES
        }
    }

    /// The setup of virtqueue `index`, for `request`; a frontend naming a queue the port does
    /// not have (more queue pairs than it offers) is refused with a log line that says so.
    fn queue(&mut self, request: &str, index: u32) -> VuResult<(usize, &mut VringSetup)> {
        let i = index as usize;
        let n = self.vrings.len();
        if i >= n {
            return Err(self.refuse(
                request,
                index,
                format_args!(
                    "the port has {} queue pairs (virtqueues 0-{}); set `queues` on the port \
                     to offer more",
                    n / 2,
                    n.saturating_sub(1)
                ),
            ));
        }
        Ok((i, &mut self.vrings[i]))
    }

    /// Logs a refused request with its queue and what was wrong; the answer (with REPLY_ACK)
    /// is a failure, and the connection goes on.
    fn refuse(&self, request: &str, queue: u32, why: std::fmt::Arguments<'_>) -> VuError {
        log::warn!(
            "{}: {request} for virtqueue {queue} refused: {why}",
            self.name
        );
        VuError::InvalidParam
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "a virtio-net header is 10 or 12 bytes"
    )]
    fn hdr_len(&self) -> u32 {
        let len = if self.features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
            NET_HDR_LEN
        } else {
            NET_HDR_LEN_LEGACY
        };
        len as u32
    }

    /// What queue `i` logs while the frontend migrates the guest: the log, once SET_LOG_BASE
    /// gave one and VHOST_F_LOG_ALL is acked, with the used ring's guest-physical address
    /// (from SET_VRING_ADDR's log address, or translated from its frontend address).
    fn ring_log(&self, i: usize) -> Option<RingLog> {
        if self.features & VHOST_F_LOG_ALL == 0 {
            return None;
        }
        let log = self.log.clone()?;
        let v = &self.vrings[i];
        let used_gpa = v
            .log_used_gpa
            .or_else(|| self.mem.as_ref()?.uva_to_gpa(v.cfg.used_uva))?;
        Some(RingLog { log, used_gpa })
    }

    /// Restarts the running queues (to take new features, memory or log).
    fn restart_running(&mut self) {
        for i in 0..self.vrings.len() {
            if self.vrings[i].running {
                self.stop(i);
                self.try_start(i);
            }
        }
    }

    /// Starts queue `i` if everything it needs has arrived.
    fn try_start(&mut self, i: usize) {
        let hdr_len = self.hdr_len();
        let mrg = self.features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        let Some(mem) = self.mem.clone() else { return };
        let v = &mut self.vrings[i];
        if v.running || !v.num_set || !v.addr_set || v.kick.is_none() || !v.enabled {
            return;
        }
        v.cfg.event_idx = event_idx;
        let log = self.ring_log(i);
        let v = &mut self.vrings[i];
        v.cfg.log = log;
        match SplitRing::new(mem, &v.cfg) {
            Ok(ring) => {
                *self.dev.slot(i).lock() = Some(Queue {
                    ring,
                    hdr_len,
                    mrg,
                    broken_reported: false,
                });
                self.dev.set_rx_running(i, true);
                v.running = true;
                log::info!(
                    "{}: queue {i} running (size {}, base {}{})",
                    self.name,
                    v.cfg.size,
                    v.cfg.base,
                    if v.cfg.log.is_some() {
                        ", logging dirty pages"
                    } else {
                        ""
                    }
                );
            }
            Err(e) => log::warn!("{}: queue {i} cannot start: {e}", self.name),
        }
        self.update_state();
    }

    /// Stops queue `i`, remembering where it was.
    fn stop(&mut self, i: usize) {
        let v = &mut self.vrings[i];
        if !v.running {
            return;
        }
        self.dev.set_rx_running(i, false);
        if let Some(q) = self.dev.slot(i).lock().take() {
            v.cfg.base = q.ring.last_avail();
        }
        v.running = false;
        self.update_state();
    }

    /// Running once queue pair 0 runs: a guest may leave its other pairs unused (Linux enables
    /// as many as it has CPUs).
    fn update_state(&self) {
        let all = self.vrings[..2].iter().all(|v| v.running);
        self.dev.set_state(if all {
            LinkState::Running
        } else {
            LinkState::Negotiating
        });
    }
}

impl NetBackend {
    fn stop_all(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop(i);
        }
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        self.stop_all();
        self.dev.features.store(0, Ordering::Relaxed);
    }
}

impl VhostUserBackendReqHandlerMut for NetBackend {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.stop_all();
        self.vrings = Self::fresh_vrings(&self.dev);
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.reset_owner()
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.offered())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.offered() != 0 {
            log::warn!(
                "{}: frontend acked features {features:#x} we did not offer",
                self.name
            );
            return Err(VuError::InvalidParam);
        }
        let changed = features != self.features;
        if (features ^ self.features) & VHOST_F_LOG_ALL != 0 {
            log::info!(
                "{}: dirty-page logging {} (the frontend {} migrating the guest)",
                self.name,
                if features & VHOST_F_LOG_ALL != 0 {
                    "on"
                } else {
                    "off"
                },
                if features & VHOST_F_LOG_ALL != 0 {
                    "is"
                } else {
                    "stopped"
                }
            );
        }
        self.features = features;
        self.dev.features.store(features, Ordering::Relaxed);
        if changed {
            // Header length, notification scheme and logging may change: restart running
            // queues (each resumes where it stopped).
            self.restart_running();
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let descs: Vec<RegionDesc> = ctx
            .iter()
            .map(|r| RegionDesc {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                uva: r.user_addr,
                offset: r.mmap_offset,
            })
            .collect();
        let mem = GuestMemory::map(&descs, &files).map_err(|e| {
            log::warn!("{}: memory table refused: {e}", self.name);
            VuError::InvalidParam
        })?;
        log::info!(
            "{}: memory table with {} region(s) mapped",
            self.name,
            descs.len()
        );
        let running: Vec<usize> = (0..self.vrings.len())
            .filter(|&i| self.vrings[i].running)
            .collect();
        for &i in &running {
            self.stop(i);
        }
        self.mem = Some(Arc::new(mem));
        for i in running {
            self.try_start(i);
        }
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let (i, _) = self.queue("SET_VRING_NUM", index)?;
        self.stop(i);
        let Some(size) = u16::try_from(num).ok().filter(|n| n.is_power_of_two()) else {
            return Err(self.refuse(
                "SET_VRING_NUM",
                index,
                format_args!("size {num} is not a power of two up to 32768"),
            ));
        };
        let v = &mut self.vrings[i];
        v.cfg.size = size;
        v.num_set = true;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> VuResult<()> {
        let (i, _) = self.queue("SET_VRING_ADDR", index)?;
        self.stop(i);
        let v = &mut self.vrings[i];
        v.log_used_gpa = flags
            .contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG)
            .then_some(log);
        v.cfg.desc_uva = descriptor;
        v.cfg.used_uva = used;
        v.cfg.avail_uva = available;
        v.addr_set = true;
        self.try_start(i);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let (i, _) = self.queue("SET_VRING_BASE", index)?;
        self.stop(i);
        let Ok(base) = u16::try_from(base) else {
            return Err(self.refuse(
                "SET_VRING_BASE",
                index,
                format_args!("base {base} does not fit a 16-bit ring index"),
            ));
        };
        self.vrings[i].cfg.base = base;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        // A reply is owed even for a bad index, or the frontend would wait for ever.
        let Ok((i, _)) = self.queue("GET_VRING_BASE", index) else {
            return Ok(VhostUserVringState::new(index, 0));
        };
        self.stop(i);
        // The ring is now stopped until the next SET_VRING_KICK (vhost-user spec).
        let v = &mut self.vrings[i];
        v.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(v.cfg.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let (i, _) = self.queue("SET_VRING_KICK", u32::from(index))?;
        // We poll and never read the kick fd, but its arrival is what starts a ring. A missing fd
        // (the "polling" flag) starts it too.
        let fd = match fd {
            Some(f) => f,
            None => File::open("/dev/null").map_err(|_| invalid("no kick fd"))?,
        };
        self.vrings[i].kick = Some(fd);
        self.try_start(i);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let (i, _) = self.queue("SET_VRING_CALL", u32::from(index))?;
        let call = fd.map(Arc::new);
        self.vrings[i].cfg.call = call.clone();
        if let Some(q) = self.dev.slot(i).lock().as_mut() {
            q.ring.set_call(call);
        }
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        self.queue("SET_VRING_ERR", u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        // REPLY_ACK is added by the vhost crate, which implements it. MQ lets the frontend
        // ask how many queue pairs we have (GET_QUEUE_NUM); QEMU needs it for `queues=N`.
        // LOG_SHMFD: the dirty log of a live migration comes as a shared-memory fd
        // (SET_LOG_BASE); QEMU will not migrate a vhost-user device without it.
        Ok(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::LOG_SHMFD)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.dev.queue_pairs() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let (i, _) = self.queue("SET_VRING_ENABLE", index)?;
        self.vrings[i].enabled = enable;
        if enable {
            self.try_start(i);
        } else {
            self.stop(i);
        }
        Ok(())
    }

    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        Err(invalid("CONFIG not offered"))
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VuResult<()> {
        Err(invalid("CONFIG not offered"))
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(invalid("not a GPU"))
    }

    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> VuResult<File> {
        Err(invalid("SHARED_OBJECT not offered"))
    }

    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        Err(invalid("INFLIGHT_SHMFD not offered"))
    }

    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> VuResult<()> {
        Err(invalid("INFLIGHT_SHMFD not offered"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(invalid("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(invalid("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(invalid("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> VuResult<Option<File>> {
        Err(invalid("DEVICE_STATE not offered"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(invalid("DEVICE_STATE not offered"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(invalid("SHMEM not offered"))
    }

    /// The dirty log for a migration. rust-vmm's handler answers it with a reply carrying the
    /// message back, which QEMU waits for once LOG_SHMFD is negotiated (and only then: it is
    /// never sent without it). A new log (QEMU resizes it when memory changes) replaces the
    /// old one in every running queue.
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VuResult<()> {
        let (size, offset) = (log.mmap_size, log.mmap_offset);
        let map = DirtyLog::map(&file, size, offset).map_err(|e| {
            log::warn!(
                "{}: dirty log ({size} bytes at {offset}) refused: {e}",
                self.name
            );
            VuError::InvalidParam
        })?;
        log::info!(
            "{}: dirty log of {size} bytes ({} MiB of guest memory)",
            self.name,
            (size * 8 * crate::guest_mem::LOG_PAGE) >> 20
        );
        self.log = Some(Arc::new(map));
        self.restart_running();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests for queues the port does not have, ring sizes that are not powers of two and
    /// bases beyond 16 bits are refused (and logged with the request, queue and value); valid
    /// ones are taken.
    #[test]
    fn bad_ring_requests_are_refused() {
        let dev = Arc::new(NetDevice::new(1));
        let mut b = NetBackend::new(dev, "t");
        assert!(
            b.set_vring_num(7, 256).is_err(),
            "queue 7 of a one-pair port"
        );
        assert!(b.set_vring_enable(2, true).is_err());
        assert!(
            b.set_vring_num(0, 300).is_err(),
            "300 is not a power of two"
        );
        assert!(b.set_vring_num(0, 0).is_err());
        assert!(b.set_vring_base(1, 70_000).is_err());
        assert!(b.set_vring_num(0, 256).is_ok());
        assert!(b.set_vring_base(1, 5).is_ok());
        assert_eq!(b.vrings[0].cfg.size, 256);
        assert_eq!(b.vrings[1].cfg.base, 5);
        // GET_VRING_BASE owes a reply even for a queue it does not have.
        assert!(b.get_vring_base(9).is_ok());
    }
}
