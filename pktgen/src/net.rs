//! The virtio-net device (driver side): handshake, transmit, receive, and raw access.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_net::{virtio_net_hdr, virtio_net_hdr_v1};

use crate::mem::{align_up, GuestMemory};
use crate::ring::{ring_sizes, SplitQueue, VIRTQ_AVAIL_F_NO_INTERRUPT};
use crate::{
    Connect, DeviceConfig, Error, GUEST_PHYS_BASE, RX_QUEUE, TX_QUEUE,
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Bytes reserved per tx descriptor id. A frame goes at offset `hdr_len` for `send`, or at
/// offset 64 (separate descriptor, deliberately not adjacent to the header) for
/// `send_chained`.
pub const TX_SLOT_LEN: usize = 64 + MAX_TX_FRAME;
/// Largest frame (without virtio-net header) `send`/`send_chained` accept: a 9216-byte jumbo.
pub const MAX_TX_FRAME: usize = 9216;
/// Offset of the frame inside a tx slot for `send_chained`.
const CHAINED_FRAME_OFF: usize = 64;
/// How long `Connect::Dial` keeps retrying.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Connect::Listen` waits for the backend to dial in.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Offset of `num_buffers` in the virtio-net header.
const NUM_BUFFERS_OFF: usize = std::mem::offset_of!(virtio_net_hdr_v1, num_buffers);

/// Where everything lives inside guest memory (byte offsets).
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// (desc, avail, used) per queue.
    rings: [(usize, usize, usize); 2],
    rx_off: usize,
    rx_stride: usize,
    tx_off: usize,
    /// Start of the bump area (= bytes needed by the fixed part of the layout).
    bump_off: usize,
}

impl Layout {
    /// The layout of one queue pair starting at byte `base` (page-aligned).
    fn new(queue_size: u16, rx_buf_len: u32, base: usize) -> Self {
        const PAGE: usize = 4096;
        let n = usize::from(queue_size);
        let (d, a, u) = ring_sizes(n);
        let mut off = base;
        let mut rings = [(0, 0, 0); 2];
        for r in &mut rings {
            // Page-aligning each area satisfies the spec's 16/2/4-byte alignment rules.
            r.0 = off;
            off += align_up(d, PAGE);
            r.1 = off;
            off += align_up(a, PAGE);
            r.2 = off;
            off += align_up(u, PAGE);
        }
        let rx_off = off;
        // Cannot truncate: u32 -> usize on the 64-bit targets this crate supports.
        let rx_stride = align_up(rx_buf_len as usize, 64);
        off = align_up(off + n * rx_stride, PAGE);
        let tx_off = off;
        off = align_up(off + n * TX_SLOT_LEN, PAGE);
        Self {
            rings,
            rx_off,
            rx_stride,
            tx_off,
            bump_off: off,
        }
    }
}

/// A queue pair that is not the selected one (see [`VirtioNet::select_queue_pair`]).
#[derive(Debug)]
struct Parked {
    layout: Layout,
    rx: SplitQueue,
    tx: SplitQueue,
    tx_desc_len: Vec<u32>,
}

/// A virtio-net device driven through a vhost-user backend.
///
/// With several queue pairs, `send*`, `recv*` and `raw` act on the selected pair
/// ([`select_queue_pair`](Self::select_queue_pair); pair 0 at first).
pub struct VirtioNet {
    /// The vhost-user connection; dropping it disconnects from the backend.
    frontend: Frontend,
    mem: GuestMemory,
    layout: Layout,
    rx: SplitQueue,
    tx: SplitQueue,
    features: u64,
    mac: [u8; 6],
    rx_buf_len: u32,
    /// virtio-net header length: 12 with VERSION_1 or MRG_RXBUF, else 10.
    hdr_len: usize,
    mrg_rxbuf: bool,
    /// Next free byte of the bump area.
    bump_next: usize,
    /// Reassembly buffer for `recv`.
    scratch: Vec<u8>,
    /// `send_in_place`: the length each tx descriptor holds (u32::MAX: unknown).
    tx_desc_len: Vec<u32>,
    /// First device misbehaviour seen while reclaiming tx buffers (`send` cannot fail).
    tx_error: Option<Error>,
    /// Every queue pair; `None` at `cur`, whose state is in `layout`, `rx`, `tx` and
    /// `tx_desc_len`.
    pairs: Vec<Option<Parked>>,
    cur: usize,
}

impl std::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Frontend` is not `Debug`; show the socket fd instead.
        f.debug_struct("VirtioNet")
            .field(
                "socket_fd",
                &std::os::fd::AsRawFd::as_raw_fd(&self.frontend),
            )
            .field("mem", &self.mem)
            .field("layout", &self.layout)
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("features", &format_args!("{:#x}", self.features))
            .field("mac", &self.mac)
            .field("hdr_len", &self.hdr_len)
            .field("tx_error", &self.tx_error)
            .finish_non_exhaustive()
    }
}

fn dial(path: &Path) -> Result<UnixStream, Error> {
    let deadline = Instant::now() + DIAL_TIMEOUT;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            // The backend may not have created or started listening on the socket yet.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                if Instant::now() >= deadline {
                    return Err(Error::ConnectTimeout {
                        path: path.to_owned(),
                        source: e,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn listen(path: &Path) -> Result<UnixStream, Error> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = UnixListener::bind(path)?;
    // Poll a non-blocking accept so a backend that never dials fails the caller instead of
    // hanging it.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(Error::ConnectTimeout {
                        path: path.to_owned(),
                        source: io::Error::from(io::ErrorKind::TimedOut),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl VirtioNet {
    /// Connects to a vhost-user backend and brings the device up (see the crate docs for the
    /// message sequence). The rx ring is filled with `queue_size` buffers before the rings are
    /// enabled.
    pub fn connect(how: Connect, cfg: DeviceConfig) -> Result<Self, Error> {
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size > 32768 {
            return Err(Error::InvalidConfig(
                "queue_size must be a power of two <= 32768",
            ));
        }
        if cfg.rx_buf_len < 64 {
            return Err(Error::InvalidConfig("rx_buf_len must be at least 64"));
        }
        let npairs = usize::from(cfg.queue_pairs);
        if npairs == 0 || npairs > 16 {
            return Err(Error::InvalidConfig("queue_pairs must be 1-16"));
        }
        let mut layouts = Vec::with_capacity(npairs);
        let mut end = 0;
        for _ in 0..npairs {
            let l = Layout::new(cfg.queue_size, cfg.rx_buf_len, end);
            end = l.bump_off;
            layouts.push(l);
        }
        let mem = GuestMemory::new(cfg.mem_size, GUEST_PHYS_BASE)?;
        if end > mem.len() {
            return Err(Error::MemTooSmall {
                need: end,
                have: mem.len(),
            });
        }
        let mut queues = Vec::with_capacity(npairs);
        for l in &layouts {
            let mk = |q: usize| {
                let (d, a, u) = l.rings[q];
                SplitQueue::new(cfg.queue_size, d, a, u)
            };
            let mut rx = mk(RX_QUEUE)?;
            rx.use_fixed_ids();
            queues.push((rx, mk(TX_QUEUE)?));
        }

        let stream = match &how {
            Connect::Dial(p) => dial(p)?,
            Connect::Listen(p) => listen(p)?,
        };
        let mut fe = Frontend::from_stream(stream, 2 * npairs as u64);

        // Feature negotiation, in QEMU's order: GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
        // SET_OWNER, then SET_FEATURES once the device is being started.
        let offered = fe.get_features()?;
        let mut wanted = cfg.features;
        if npairs > 1 {
            wanted |= VIRTIO_NET_F_MQ;
            if offered & VIRTIO_NET_F_MQ == 0 {
                return Err(Error::QueuePairs {
                    asked: npairs,
                    backend: 1,
                });
            }
        }
        let features = offered & wanted;
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let proto = fe.get_protocol_features()?;
            // REPLY_ACK makes backend failures surface at the request that caused them; MQ is
            // acked, as QEMU does, when several pairs are used.
            let mut ack = proto & VhostUserProtocolFeatures::REPLY_ACK;
            if npairs > 1 {
                ack |= proto & VhostUserProtocolFeatures::MQ;
            }
            fe.set_protocol_features(ack)?;
            if ack.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // From now on every request asks for an ack, so backend failures surface at
                // the request that caused them.
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            // GET_QUEUE_NUM is not asked: for virtio-net it counts queue pairs (QEMU, DPDK),
            // but the vhost crate's frontend takes the answer as its limit on ring indexes.
            // A backend with fewer pairs refuses the first ring message of the first pair it
            // lacks (below).
        } else if npairs > 1 {
            return Err(Error::QueuePairs {
                asked: npairs,
                backend: 1,
            });
        }
        fe.set_owner()?;
        fe.set_features(features)?;

        let mut queues = queues.into_iter();
        let (rx, tx) = queues.next().expect("at least one pair");
        let mut dev = Self {
            frontend: fe,
            mem,
            layout: layouts[0],
            rx,
            tx,
            features,
            mac: cfg.mac,
            rx_buf_len: cfg.rx_buf_len,
            hdr_len: if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
                size_of::<virtio_net_hdr_v1>()
            } else {
                size_of::<virtio_net_hdr>()
            },
            mrg_rxbuf: features & VIRTIO_NET_F_MRG_RXBUF != 0,
            bump_next: end,
            scratch: Vec::with_capacity(65536),
            tx_desc_len: Vec::new(),
            tx_error: None,
            pairs: std::iter::once(None)
                .chain(layouts[1..].iter().zip(queues).map(|(l, (rx, tx))| {
                    Some(Parked {
                        layout: *l,
                        rx,
                        tx,
                        tx_desc_len: Vec::new(),
                    })
                }))
                .collect(),
            cur: 0,
        };
        for p in 0..npairs {
            dev.select_queue_pair(p);
            if p > 0 {
                dev.frontend
                    .set_vring_num(2 * p, cfg.queue_size)
                    .map_err(|_| Error::QueuePairs {
                        asked: npairs,
                        backend: p,
                    })?;
            }
            dev.setup_pair(p, cfg.queue_size, cfg.rx_buf_len)?;
        }
        dev.select_queue_pair(0);
        Ok(dev)
    }

    /// Sets up the selected pair's rings (number `p`) in the backend: fills the rx ring, then
    /// sends the ring messages and enables both rings.
    fn setup_pair(&mut self, p: usize, queue_size: u16, rx_buf_len: u32) -> Result<(), Error> {
        let features = self.features;
        let dev = self;
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        dev.rx.set_event_idx(event_idx);
        dev.tx.set_event_idx(event_idx);
        for q in [&dev.rx, &dev.tx] {
            // We poll; ask the device not to signal the call eventfd.
            q.set_avail_flags(&dev.mem, VIRTQ_AVAIL_F_NO_INTERRUPT);
            q.suppress_interrupts(&dev.mem);
        }
        // Fill the rx ring: descriptor i always describes rx buffer i.
        for id in 0..queue_size {
            let gpa = dev.rx_buf_gpa(id);
            dev.rx.post_fixed(&dev.mem, id, gpa, rx_buf_len, true);
        }
        // No kick: the device has no kick fd yet and will read avail.idx when it starts.
        dev.rx.publish(&dev.mem);

        // `needless_update`: the update is needed when the vhost crate's `xen` feature adds
        // fields (feature unification could turn it on for the whole workspace).
        #[allow(clippy::needless_update)]
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: dev.mem.gpa_base(),
            memory_size: dev.mem.len() as u64,
            userspace_addr: dev.mem.hva_base(),
            mmap_offset: 0,
            mmap_handle: dev.mem.raw_fd(),
            ..Default::default()
        };
        if p == 0 {
            dev.frontend.set_mem_table(&[region])?;
        }
        for q in [RX_QUEUE, TX_QUEUE] {
            let ring = if q == RX_QUEUE { &dev.rx } else { &dev.tx };
            let index = 2 * p + q;
            let hva = dev.mem.hva_base() as usize;
            // Ring addresses are our virtual addresses, as QEMU sends them.
            let addrs = VringConfigData {
                queue_max_size: queue_size,
                queue_size,
                flags: 0,
                desc_table_addr: (hva + ring.desc_off) as u64,
                used_ring_addr: (hva + ring.used_off) as u64,
                avail_ring_addr: (hva + ring.avail_off) as u64,
                log_addr: None,
            };
            dev.frontend.set_vring_num(index, queue_size)?;
            dev.frontend.set_vring_addr(index, &addrs)?;
            dev.frontend.set_vring_base(index, 0)?;
            dev.frontend.set_vring_call(index, &ring.call)?;
            dev.frontend.set_vring_kick(index, &ring.kick)?;
        }
        // Without VHOST_USER_F_PROTOCOL_FEATURES rings start enabled (vhost-user spec), and
        // the vhost crate refuses SET_VRING_ENABLE.
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for q in [RX_QUEUE, TX_QUEUE] {
                dev.frontend.set_vring_enable(2 * p + q, true)?;
            }
        }
        Ok(())
    }

    /// The number of queue pairs (`DeviceConfig::queue_pairs`).
    pub fn queue_pairs(&self) -> usize {
        self.pairs.len()
    }

    /// The queue pair `send*`, `recv*` and `raw` act on.
    pub fn queue_pair(&self) -> usize {
        self.cur
    }

    /// Makes pair `q` the one `send*`, `recv*` and `raw` act on (cheap: a few moves).
    ///
    /// # Panics
    /// If `q >= queue_pairs()`.
    pub fn select_queue_pair(&mut self, q: usize) {
        if q == self.cur {
            return;
        }
        let next = self.pairs[q].take().expect("a parked pair");
        let old = Parked {
            layout: std::mem::replace(&mut self.layout, next.layout),
            rx: std::mem::replace(&mut self.rx, next.rx),
            tx: std::mem::replace(&mut self.tx, next.tx),
            tx_desc_len: std::mem::replace(&mut self.tx_desc_len, next.tx_desc_len),
        };
        self.pairs[self.cur] = Some(old);
        self.cur = q;
    }

    fn rx_buf_off(&self, id: u16) -> usize {
        self.layout.rx_off + usize::from(id) * self.layout.rx_stride
    }

    fn rx_buf_gpa(&self, id: u16) -> u64 {
        self.mem.gpa(self.rx_buf_off(id))
    }

    fn tx_slot_off(&self, id: u16) -> usize {
        self.layout.tx_off + usize::from(id) * TX_SLOT_LEN
    }

    /// The negotiated virtio feature bits (`offered & cfg.features`).
    pub fn negotiated_features(&self) -> u64 {
        self.features
    }

    /// Entries per queue (tx slot ids are `0..queue_size`).
    pub fn queue_size(&self) -> u16 {
        self.tx.size()
    }

    /// Our MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Length of the virtio-net header in front of every frame (12 unless neither VERSION_1
    /// nor MRG_RXBUF was negotiated).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Reclaims completed tx chains; remembers the first device misbehaviour.
    fn reclaim_tx(&mut self) {
        let (_, _, err) = self.tx.reclaim(&self.mem, TX_QUEUE);
        if let Some(e) = err {
            log::warn!("tx used ring: {e}");
            self.tx_error.get_or_insert(e);
        }
    }

    /// Takes the first device misbehaviour seen on the tx used ring, if any (`send` cannot
    /// report it; bad used elements are skipped).
    pub fn take_tx_error(&mut self) -> Option<Error> {
        self.tx_error.take()
    }

    fn kick(&self, q: usize) {
        let ring = if q == RX_QUEUE { &self.rx } else { &self.tx };
        if let Err(e) = ring.kick.write(1) {
            log::warn!("kick of queue {q} failed: {e}");
        }
    }

    /// Queues `frames` (Ethernet frames without virtio-net header; an all-zero header is
    /// prepended) for transmission, one descriptor each. Returns how many were queued, limited
    /// by free tx descriptors (completed ones are reclaimed first). Publishes avail.idx once and
    /// kicks only if the device asks for it.
    ///
    /// # Panics
    /// If a frame is longer than [`MAX_TX_FRAME`].
    pub fn send(&mut self, frames: &[&[u8]]) -> usize {
        self.send_inner(frames, false)
    }

    /// Like [`send`](Self::send), but header and frame are two descriptors chained with NEXT.
    ///
    /// # Panics
    /// If a frame is longer than [`MAX_TX_FRAME`].
    pub fn send_chained(&mut self, frames: &[&[u8]]) -> usize {
        self.send_inner(frames, true)
    }

    fn send_inner(&mut self, frames: &[&[u8]], chained: bool) -> usize {
        self.reclaim_tx();
        // Descriptors written here invalidate what `send_in_place` remembers of them.
        self.tx_desc_len.clear();
        let per = if chained { 2 } else { 1 };
        let hdr_len = self.hdr_len;
        let mut queued = 0;
        for frame in frames {
            assert!(
                frame.len() <= MAX_TX_FRAME,
                "frame of {} bytes exceeds MAX_TX_FRAME",
                frame.len()
            );
            let Some(head) = self.tx.next_head(per) else {
                break;
            };
            let slot = self.tx_slot_off(head);
            // Cannot truncate: MAX_TX_FRAME + 12 fits in u32.
            let (flen, hlen) = (frame.len() as u32, hdr_len as u32);
            self.mem.fill(slot, hdr_len, 0);
            if chained {
                self.mem.write_bytes(slot + CHAINED_FRAME_OFF, frame);
                let bufs = [
                    (self.mem.gpa(slot), hlen, false),
                    (self.mem.gpa(slot + CHAINED_FRAME_OFF), flen, false),
                ];
                self.tx.add_chain(&self.mem, &bufs);
            } else {
                self.mem.write_bytes(slot + hdr_len, frame);
                self.tx
                    .add_chain(&self.mem, &[(self.mem.gpa(slot), hlen + flen, false)]);
            }
            queued += 1;
        }
        if self.tx.publish(&self.mem) {
            self.kick(TX_QUEUE);
        }
        queued
    }

    /// The generator's transmit path: queues up to `max` frames of `frame_len` bytes, each
    /// written in place by `fill(id, slot)` into tx slot `id` (which keeps what was written
    /// there before, so a generator rewrites only the bytes that change; the virtio-net header
    /// stays zero). Descriptors are rewritten only when the length changes. Returns how many
    /// were queued; publishes once and kicks only when asked.
    ///
    /// # Panics
    /// If `frame_len` exceeds [`MAX_TX_FRAME`].
    pub fn send_in_place(
        &mut self,
        frame_len: usize,
        max: usize,
        mut fill: impl FnMut(u16, &mut TxSlot<'_>),
    ) -> usize {
        assert!(frame_len <= MAX_TX_FRAME, "frame of {frame_len} bytes");
        self.reclaim_tx();
        if self.tx_desc_len.is_empty() {
            self.tx_desc_len = vec![u32::MAX; usize::from(self.tx.size())];
        }
        let len = (self.hdr_len + frame_len) as u32;
        let mut queued = 0;
        while queued < max {
            let (tx_off, mem) = (self.layout.tx_off, &self.mem);
            let Some(id) = self.tx.add_single_cached(
                mem,
                &mut self.tx_desc_len,
                |id| mem.gpa(tx_off + usize::from(id) * TX_SLOT_LEN),
                len,
            ) else {
                break;
            };
            let off = self.tx_slot_off(id);
            let mut slot = TxSlot {
                mem: &self.mem,
                off: off + self.hdr_len,
                len: frame_len,
            };
            fill(id, &mut slot);
            queued += 1;
        }
        if self.tx.publish(&self.mem) {
            self.kick(TX_QUEUE);
        }
        queued
    }

    /// Descriptors posted on the tx queue and not yet returned by the device (as of the last
    /// reclaim, which every `send` performs first).
    pub fn tx_in_flight(&self) -> usize {
        self.tx.in_flight()
    }

    /// Reclaims completed tx buffers without sending; returns `tx_in_flight()`.
    pub fn poll_tx(&mut self) -> usize {
        self.reclaim_tx();
        self.tx.in_flight()
    }

    /// Drains received frames, calling `f` with each frame (virtio-net header stripped,
    /// `MRG_RXBUF` buffers reassembled), re-posts the buffers, and returns the number of
    /// frames. A packet whose buffers are not all published yet is left for the next call.
    ///
    /// Everything the device wrote is validated; on the first violation the frames before it
    /// have been delivered, the offending buffers are re-posted, and the error is returned.
    pub fn recv(&mut self, f: impl FnMut(&[u8])) -> Result<usize, Error> {
        self.recv_inner(usize::MAX, f)
    }

    /// Like [`recv`](Self::recv), but `f` sees only the first `n` bytes of each frame (fewer
    /// if it is shorter): generators read their headers and timestamps without copying whole
    /// frames.
    pub fn recv_prefix(&mut self, n: usize, f: impl FnMut(&[u8])) -> Result<usize, Error> {
        self.recv_inner(n.max(1), f)
    }

    /// Like [`recv`](Self::recv), but only counts the frames: nothing is copied out of the
    /// buffers (everything the device wrote is still validated). For traffic generators.
    pub fn recv_count(&mut self) -> Result<usize, Error> {
        self.recv_inner(0, |_| {})
    }

    /// `copy`: bytes of each frame to hand to `f` (0: none, `usize::MAX`: all).
    fn recv_inner(&mut self, copy: usize, mut f: impl FnMut(&[u8])) -> Result<usize, Error> {
        let pending = self.rx.used_pending(&self.mem, RX_QUEUE)?;
        let mut k: u16 = 0;
        let mut count = 0;
        let mut err = None;
        while k < pending {
            self.scratch.clear();
            match self.take_packet(k, pending, copy) {
                Ok(Some(nb)) => {
                    k += nb;
                    count += 1;
                    f(&self.scratch);
                }
                Ok(None) => break,
                Err((consumed, e)) => {
                    k += consumed;
                    err = Some(e);
                    break;
                }
            }
        }
        if k > 0 {
            self.rx.advance_used(k);
            self.rx.suppress_interrupts(&self.mem);
        }
        if self.rx.publish(&self.mem) {
            self.kick(RX_QUEUE);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    /// Validates one rx buffer (used element `k`); returns its head id and length. A buffer
    /// that was in flight but carries a bad length is re-posted before the error is returned.
    fn check_rx_elem(&mut self, k: u16, first: bool) -> Result<(u16, usize), Error> {
        let (id, len) = self.rx.used_elem(&self.mem, k);
        let head = self.rx.check_head(RX_QUEUE, id)?;
        let err = if len > self.rx_buf_len {
            Error::UsedLenTooLong {
                id,
                len,
                max: self.rx_buf_len,
            }
        } else if first && (len as usize) < self.hdr_len {
            Error::UsedLenTooShort { id, len }
        } else {
            // Cannot truncate: len <= rx_buf_len (u32) on 64-bit targets.
            return Ok((head, len as usize));
        };
        self.repost_rx(head);
        Err(err)
    }

    /// Re-posts rx buffer `id` without rewriting its descriptor (generator path).
    fn repost_rx_fast(&mut self, id: u16) {
        self.rx.complete_fixed(id);
        self.rx.repost_fixed(&self.mem, id);
    }

    /// Re-posts rx buffer `id` (its descriptor is rewritten, so device scribbles are undone).
    fn repost_rx(&mut self, id: u16) {
        self.rx.complete_fixed(id);
        let gpa = self.rx_buf_gpa(id);
        self.rx
            .post_fixed(&self.mem, id, gpa, self.rx_buf_len, true);
    }

    /// Takes the packet starting at used element `k` into `scratch`. `Ok(Some(n))`: `n` used
    /// elements consumed; `Ok(None)`: the packet is incomplete; `Err((n, e))`: `n` elements
    /// consumed (and re-posted where valid) before violation `e`.
    fn take_packet(
        &mut self,
        k: u16,
        pending: u16,
        copy: usize,
    ) -> Result<Option<u16>, (u16, Error)> {
        let (head, len) = self.check_rx_elem(k, true).map_err(|e| (1, e))?;
        let off = self.rx_buf_off(head);
        let nb = if self.mrg_rxbuf {
            // Relaxed: ordered after the Acquire load of used.idx in `used_pending`.
            self.mem.load_u16(off + NUM_BUFFERS_OFF, Ordering::Relaxed)
        } else {
            1
        };
        if nb == 0 || nb > self.rx.size() {
            self.repost_rx(head);
            return Err((
                1,
                Error::BadNumBuffers {
                    id: u32::from(head),
                    num_buffers: nb,
                },
            ));
        }
        if u32::from(k) + u32::from(nb) > u32::from(pending) {
            // The device publishes all buffers of a packet at once; wait for the rest.
            return Ok(None);
        }
        // A full copy re-posts with rewritten descriptors (undoing device scribbles); the
        // generator paths re-post without touching them.
        let full = copy == usize::MAX;
        if copy > 0 {
            let n = (len - self.hdr_len).min(copy);
            self.mem.read_into(off + self.hdr_len, n, &mut self.scratch);
        }
        if full {
            self.repost_rx(head);
        } else {
            self.repost_rx_fast(head);
        }
        for j in 1..nb {
            match self.check_rx_elem(k + j, false) {
                Ok((id, len)) => {
                    let want = copy.saturating_sub(self.scratch.len()).min(len);
                    if want > 0 {
                        self.mem
                            .read_into(self.rx_buf_off(id), want, &mut self.scratch);
                    }
                    if full {
                        self.repost_rx(id);
                    } else {
                        self.repost_rx_fast(id);
                    }
                }
                Err(e) => return Err((j + 1, e)),
            }
        }
        Ok(Some(nb))
    }

    /// Raw access to rings and guest memory for hostile-guest tests.
    pub fn raw(&mut self) -> RawAccess<'_> {
        RawAccess { dev: self }
    }
}

/// One transmit slot's frame area, for [`VirtioNet::send_in_place`].
#[allow(missing_debug_implementations)] // a short-lived view into guest memory
pub struct TxSlot<'a> {
    mem: &'a GuestMemory,
    off: usize,
    len: usize,
}

impl TxSlot<'_> {
    /// Writes `data` at byte `at` of the frame.
    ///
    /// # Panics
    /// If it would write past the frame's length.
    pub fn write(&mut self, at: usize, data: &[u8]) {
        assert!(
            at.checked_add(data.len()).is_some_and(|e| e <= self.len),
            "write past the frame"
        );
        self.mem.write_bytes(self.off + at, data);
    }
}

/// Unchecked access to the rings and guest memory, for hostile-guest tests.
///
/// Methods taking `q` act on queue `q` (0 = rx, 1 = tx). These bypass the driver's
/// bookkeeping: after `push_avail`/`publish_avail`/`set_avail_idx` on a queue, used elements
/// for ids the driver did not post are silently skipped by `send`'s reclaim, and normal
/// `send`/`recv` on that queue may reuse descriptors the test wrote.
///
/// # Panics
/// Methods panic if `q > 1`, if a descriptor index is `>= queue_size`, or if a guest range is
/// outside guest memory (test bugs, not device behaviour).
#[derive(Debug)]
pub struct RawAccess<'a> {
    dev: &'a mut VirtioNet,
}

impl RawAccess<'_> {
    /// Queue `q` and guest memory, borrowed disjointly.
    fn parts(&mut self, q: usize) -> (&mut SplitQueue, &GuestMemory) {
        let dev = &mut *self.dev;
        let ring = match q {
            RX_QUEUE => &mut dev.rx,
            TX_QUEUE => &mut dev.tx,
            _ => panic!("queue index {q} out of range (0 = rx, 1 = tx)"),
        };
        (ring, &dev.mem)
    }

    fn q_ref(&self, q: usize) -> &SplitQueue {
        match q {
            RX_QUEUE => &self.dev.rx,
            TX_QUEUE => &self.dev.tx,
            _ => panic!("queue index {q} out of range (0 = rx, 1 = tx)"),
        }
    }

    /// Entries per queue.
    pub fn queue_size(&self) -> u16 {
        self.dev.tx.size()
    }

    /// Writes descriptor `index` of queue `q` with arbitrary values.
    pub fn write_desc(&mut self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let (ring, mem) = self.parts(q);
        ring.write_desc(mem, index, addr, len, flags, next);
    }

    /// Writes `avail.ring[shadow_idx % size] = head` and increments the shadow avail index
    /// (not published).
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let (ring, mem) = self.parts(q);
        ring.set_raw();
        ring.push_avail(mem, head);
    }

    /// Stores the shadow avail index to avail.idx (Release), without kicking.
    pub fn publish_avail(&mut self, q: usize) {
        let (ring, mem) = self.parts(q);
        ring.set_raw();
        ring.publish_raw(mem);
    }

    /// Stores `idx` to avail.idx verbatim (Release); the shadow index is not changed.
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let (ring, mem) = self.parts(q);
        ring.set_raw();
        ring.set_avail_idx_raw(mem, idx);
    }

    /// The shadow avail index of queue `q` (next slot `push_avail` writes).
    pub fn avail_shadow(&self, q: usize) -> u16 {
        self.q_ref(q).avail_shadow()
    }

    /// used.idx of queue `q` as currently published by the device (Acquire).
    pub fn used_idx(&self, q: usize) -> u16 {
        self.q_ref(q).used_idx(&self.dev.mem)
    }

    /// Used element `used.ring[i % size]` of queue `q` as `(id, len)`. Call after `used_idx`
    /// (whose Acquire load orders this read).
    pub fn used_elem(&self, q: usize, i: u16) -> (u32, u32) {
        let ring = self.q_ref(q);
        let off = ring.used_off + 4 + 8 * usize::from(i & (ring.size() - 1));
        // Relaxed: ordered by the caller's preceding Acquire load of used.idx.
        let id = self.dev.mem.load_u32(off, Ordering::Relaxed);
        let len = self.dev.mem.load_u32(off + 4, Ordering::Relaxed);
        (id, len)
    }

    /// Guest-physical addresses of queue `q`'s descriptor table, avail ring and used ring.
    pub fn ring_gpas(&self, q: usize) -> (u64, u64, u64) {
        let ring = self.q_ref(q);
        let m = &self.dev.mem;
        (
            m.gpa(ring.desc_off),
            m.gpa(ring.avail_off),
            m.gpa(ring.used_off),
        )
    }

    /// Allocates `len` bytes (64-byte aligned, zeroed on first use) from the bump area and
    /// returns their guest-physical address.
    ///
    /// # Panics
    /// If the bump area is exhausted.
    pub fn alloc_buf(&mut self, len: usize) -> u64 {
        let start = align_up(self.dev.bump_next, 64);
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.dev.mem.len())
            .unwrap_or_else(|| panic!("RawAccess::alloc_buf({len}): bump area exhausted"));
        self.dev.bump_next = end;
        self.dev.mem.gpa(start)
    }

    /// Copies `data` into guest memory at guest-physical address `gpa`.
    pub fn write_guest(&mut self, gpa: u64, data: &[u8]) {
        let off = self.dev.mem.gpa_to_off(gpa, data.len()).unwrap_or_else(|| {
            panic!(
                "write_guest: [{gpa:#x}, +{}) outside guest memory",
                data.len()
            )
        });
        self.dev.mem.write_bytes(off, data);
    }

    /// Reads `len` bytes of guest memory at guest-physical address `gpa`.
    pub fn read_guest(&self, gpa: u64, len: usize) -> Vec<u8> {
        let off = self
            .dev
            .mem
            .gpa_to_off(gpa, len)
            .unwrap_or_else(|| panic!("read_guest: [{gpa:#x}, +{len}) outside guest memory"));
        let mut v = Vec::with_capacity(len);
        self.dev.mem.read_into(off, len, &mut v);
        v
    }

    /// `(guest-physical base, size)` of guest memory.
    pub fn mem_range(&self) -> (u64, u64) {
        (self.dev.mem.gpa_base(), self.dev.mem.len() as u64)
    }

    /// Writes the kick eventfd of queue `q` unconditionally.
    pub fn kick(&mut self, q: usize) {
        let _ = self.parts(q);
        self.dev.kick(q);
    }
}
