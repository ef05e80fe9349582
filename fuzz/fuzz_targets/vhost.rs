//! The vhost-user protocol as a frontend (QEMU, or a hostile process on the socket) drives it:
//! messages written on one end of a socket pair, served on the other by the switch's own
//! `NetBackend` behind rust-vmm's `BackendReqHandler` (as `bulwark_vhost::conn` serves a port),
//! with real file descriptors where a request carries them (memfd memory tables and dirty logs,
//! eventfd kicks and calls). Between messages a fake guest driver writes its rings and buffers
//! into that memory, and a fake worker takes frames from the transmit ring and copies them into
//! the receive ring as the data path does (`dataplane::switch::{take, deliver}`), dirty logging
//! included. A connection that ends (an error `conn::serve` closes on, or the input asks) is
//! followed by a new one on the same device, as after a frontend's reconnect; when a connection
//! ends, every ring must have been taken back from the workers, and once the input is over
//! nothing of the memory tables and logs it sent may stay mapped. No panic, no out-of-bounds
//! access, no hang (a request the backend waits on for ever would time the run out).
//!
//! Input: a configuration byte (bit 0: two queue pairs), then operations, each an opcode byte
//! (`OP_*`, modulo their number) and its arguments (see `run_op`); `fuzz/make_seeds.py` writes
//! the seeds in this format.
#![no_main]

mod util;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_vhost::backend::{
    NetBackend, NetDevice, VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
};
use bulwark_vhost::ring::MAX_CHAIN;
use bulwark_vhost::{Chain, Pop};
use libfuzzer_sys::fuzz_target;
use util::{chain_flags, descriptor, memfd, Input};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{BackendReqHandler, Error as VuError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

// Frontend request codes (vhost-user spec).
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const RESET_OWNER: u32 = 4;
const SET_MEM_TABLE: u32 = 5;
const SET_LOG_BASE: u32 = 6;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const SET_VRING_ERR: u32 = 14;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;

// Header flags: version 1, NEED_REPLY.
const VERSION: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;

/// The largest message body rust-vmm accepts.
const MAX_MSG: usize = 0x1000;

// Operations.
const OP_GET_FEATURES: u8 = 0;
const OP_SET_FEATURES: u8 = 1;
const OP_GET_PROTOCOL_FEATURES: u8 = 2;
const OP_SET_PROTOCOL_FEATURES: u8 = 3;
const OP_SET_OWNER: u8 = 4;
const OP_RESET_OWNER: u8 = 5;
const OP_GET_QUEUE_NUM: u8 = 6;
const OP_SET_MEM_TABLE: u8 = 7;
const OP_SET_VRING_NUM: u8 = 8;
const OP_SET_VRING_ADDR: u8 = 9;
const OP_SET_VRING_BASE: u8 = 10;
const OP_GET_VRING_BASE: u8 = 11;
const OP_SET_VRING_KICK: u8 = 12;
const OP_SET_VRING_CALL: u8 = 13;
const OP_SET_VRING_ERR: u8 = 14;
const OP_SET_VRING_ENABLE: u8 = 15;
const OP_SET_LOG_BASE: u8 = 16;
const OP_RAW: u8 = 17;
const OP_GUEST_WRITE: u8 = 18;
const OP_POST_TX: u8 = 19;
const OP_POST_RX: u8 = 20;
const OP_WORKER: u8 = 21;
const OP_RECONNECT: u8 = 22;
const NOPS: u8 = 23;

/// Most operations taken from one input (each message costs a few system calls).
const MAX_OPS: usize = 96;

/// Where the regions of the seeds' memory tables sit in the frontend's address space.
const UVA_BASE: u64 = 0x7f00_0000_0000;

/// The virtio features a frontend picks from (one bit of the selector each).
const FEATURES: [u64; 7] = [
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_NET_F_GUEST_ANNOUNCE,
    VHOST_F_LOG_ALL,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VIRTIO_NET_F_MQ,
];

/// One memory region as the driver last sent it (it writes its rings and buffers through it).
struct Region {
    gpa: u64,
    size: u64,
    uva: u64,
    offset: u64,
    file: File,
}

/// A virtqueue as the driver last configured it.
#[derive(Clone, Copy, Default)]
struct Vring {
    num: u32,
    desc: u64,
    avail: u64,
    used: u64,
    /// The next descriptor the driver fills.
    next: u16,
}

/// The guest side: its memory (the last table it sent) and its rings.
#[derive(Default)]
struct Driver {
    regions: Vec<Region>,
    vrings: [Vring; 4],
}

impl Driver {
    /// The file and file offset of `[addr, addr + len)`, in guest-physical (`gpa`) or frontend
    /// virtual addresses, when it lies inside one region.
    fn locate(&self, addr: u64, len: u64, gpa: bool) -> Option<(&File, u64)> {
        self.regions.iter().find_map(|r| {
            let base = if gpa { r.gpa } else { r.uva };
            let off = addr.checked_sub(base)?;
            (off < r.size && len <= r.size - off).then_some((&r.file, r.offset.wrapping_add(off)))
        })
    }

    fn write(&self, addr: u64, bytes: &[u8], gpa: bool) {
        if let Some((f, off)) = self.locate(addr, bytes.len() as u64, gpa) {
            let _ = f.write_all_at(bytes, off);
        }
    }

    fn read_u16(&self, uva: u64) -> u16 {
        let mut b = [0u8; 2];
        if let Some((f, off)) = self.locate(uva, 2, false) {
            let _ = f.read_exact_at(&mut b, off);
        }
        u16::from_le_bytes(b)
    }

    /// A frontend-virtual address inside a region (the offset in 64-byte steps, so ring
    /// alignment holds), or any 64-bit value.
    fn uva(&self, inp: &mut Input) -> u64 {
        let sel = inp.u8();
        if sel & 0x80 != 0 || self.regions.is_empty() {
            return inp.u64();
        }
        let r = &self.regions[usize::from(sel) % self.regions.len()];
        r.uva.wrapping_add((u64::from(inp.u16()) * 64) % r.size)
    }

    /// A guest-physical address inside a region (in 8-byte steps), or any 64-bit value.
    fn gpa(&self, inp: &mut Input) -> u64 {
        let sel = inp.u8();
        if sel & 0x80 != 0 || self.regions.is_empty() {
            return inp.u64();
        }
        let r = &self.regions[usize::from(sel) % self.regions.len()];
        r.gpa.wrapping_add((u64::from(inp.u16()) * 8) % r.size)
    }

    /// Makes a descriptor chain available on virtqueue `q`, as a driver does: descriptors
    /// from `next` on (or a head the input names), each with an address, a length, the flags
    /// a driver sets (or any), data written into transmit buffers, then the avail entry and
    /// `avail.idx` (or any index).
    fn post(&mut self, q: usize, rx: bool, inp: &mut Input) {
        let v = self.vrings[q];
        let size = v.num;
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return;
        }
        let mask = (size - 1) as u16;
        let shape = inp.u8();
        // The driver fills descriptors from `next` on; the chain's head is the first of them,
        // or (rarely) any index, possibly outside the table.
        let first = v.next & mask;
        let head = if shape & 0x80 != 0 { inp.u16() } else { first };
        let ndesc =
            1 + u16::from(shape & 3) + u16::from(shape >> 4 & 7) * u16::from(shape & 0x40 != 0);
        for k in 0..ndesc {
            let idx = first.wrapping_add(k) & mask;
            let addr = self.gpa(inp);
            let len = u32::from(inp.u16() % 4096);
            let last = k + 1 == ndesc;
            let fl = inp.u8();
            let (flags, next) = if fl & 0x80 != 0 {
                (inp.u16(), inp.u16())
            } else {
                (chain_flags(last, rx), idx.wrapping_add(1) & mask)
            };
            let d = descriptor(addr, len, flags, next);
            self.write(v.desc.wrapping_add(16 * u64::from(idx)), &d, false);
            if !rx {
                // The frame (after a virtio-net header the guest leaves zero).
                let data = inp.blob(2048);
                let skip = if k == 0 { 12 } else { 0 };
                if !data.is_empty() && len as usize > skip {
                    let n = data.len().min(len as usize - skip);
                    self.write(addr.wrapping_add(skip as u64), &data[..n], true);
                }
            }
        }
        self.vrings[q].next = first.wrapping_add(ndesc);
        let avail_idx = self.read_u16(v.avail.wrapping_add(2));
        let slot = v.avail.wrapping_add(4 + 2 * u64::from(avail_idx & mask));
        self.write(slot, &head.to_le_bytes(), false);
        let new = if shape & 0x08 != 0 {
            inp.u16()
        } else {
            avail_idx.wrapping_add(1)
        };
        self.write(v.avail.wrapping_add(2), &new.to_le_bytes(), false);
    }
}

/// One frontend connection: our end, and the backend's handler on the other.
struct Session {
    front: UnixStream,
    handler: BackendReqHandler<Mutex<NetBackend>>,
}

impl Session {
    fn new(dev: &Arc<NetDevice>) -> Session {
        let (front, back) = UnixStream::pair().expect("socketpair");
        front.set_nonblocking(true).expect("nonblocking");
        // A safety net only: every message is written whole before the backend reads it, so
        // it never waits; were it to, the read fails instead of hanging the run.
        back.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let backend = Arc::new(Mutex::new(NetBackend::new(dev.clone(), "fuzz")));
        Session {
            front,
            handler: BackendReqHandler::from_stream(back, backend),
        }
    }

    /// Sends one message and has the backend serve it. False when the connection is over
    /// (what `conn::serve` would close it for).
    fn send(&mut self, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) -> bool {
        let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
        self.send_sized(request, flags, size, body, fds)
    }

    fn send_sized(
        &mut self,
        request: u32,
        flags: u32,
        size: u32,
        body: &[u8],
        fds: &[RawFd],
    ) -> bool {
        let mut msg = Vec::with_capacity(12 + body.len());
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&size.to_le_bytes());
        msg.extend_from_slice(body);
        match self.front.send_with_fds(&[&msg[..]], fds) {
            Ok(n) if n == msg.len() => {}
            _ => return false,
        }
        let alive = match self.handler.handle_request() {
            Ok(()) => true,
            // What `conn::serve` answers and goes on from.
            Err(
                VuError::InactiveFeature(_)
                | VuError::InvalidParam
                | VuError::InvalidOperation(_)
                | VuError::InactiveOperation(_)
                | VuError::ReqHandlerError(_),
            ) => true,
            Err(_) => false,
        };
        self.drain();
        alive
    }

    /// Reads and discards whatever the backend answered (never waits).
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.front.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

/// The worker's burst storage.
struct Burst {
    chains: Vec<Chain>,
    scratch: Vec<Chain>,
}

/// One burst of a worker on queue pair `pair`: take chains from its transmit ring as `take`
/// does, read their headers, copy them into a receive ring of the device as `deliver` does
/// (and one answer the switch built itself), complete them, publish both used rings.
fn worker(dev: &NetDevice, pair: usize, k: usize, answer: &[u8], b: &mut Burst) {
    let mut txg = dev.pair(pair).txq.lock();
    let Some(tq) = txg.as_mut() else { return };
    if tq.ring.pending() == 0 && tq.ring.refresh_avail() == 0 {
        if tq.ring.is_broken() {
            // A broken ring stays broken until the frontend sets it up again.
            let mut c = Chain::default();
            assert_eq!(tq.ring.pop(&mut c, false), Pop::Broken);
        }
        return;
    }
    assert!(tq.ring.pending() <= tq.ring.size());
    tq.ring.prefetch_avail(32);
    let (mut n, mut taken) = (0usize, 0usize);
    while n < 32 && taken < 64 {
        taken += 1;
        match tq.ring.pop(&mut b.chains[n], false) {
            Pop::Chain => {
                let c = &b.chains[n];
                assert!(c.head < tq.ring.size());
                assert!((1..=MAX_CHAIN).contains(&usize::from(c.nsegs)));
                let sum: u64 = c.segs[..usize::from(c.nsegs)]
                    .iter()
                    .map(|s| u64::from(s.len))
                    .sum();
                assert_eq!(sum, u64::from(c.total));
            }
            Pop::Bad(_) => {
                tq.ring.push_used(b.chains[n].head, 0);
                continue;
            }
            Pop::Empty | Pop::Broken => break,
        }
        b.chains[n].prefetch(tq.hdr_len);
        n += 1;
    }
    tq.ring.prefetch_used(taken as u16);
    let hdr = tq.hdr_len;
    for c in &b.chains[..n] {
        let mut head = [0u8; 256];
        let got = c.read_at(hdr, &mut head);
        assert!(got as u64 <= u64::from(c.total.saturating_sub(hdr)));
    }
    {
        let mut rxg = dev.rx_for(k).lock();
        if let Some(rq) = rxg.as_mut() {
            if rq.ring.pending() < n as u16 {
                rq.ring.refresh_avail();
            }
            rq.ring.prefetch_avail(n as u16);
            rq.ring.prefetch_used(n as u16);
            for j in 0..4 {
                rq.ring.prefetch_rx(j);
            }
            for c in &b.chains[..n] {
                rq.ring.prefetch_rx(4);
                let len = c.total.saturating_sub(hdr);
                if rq
                    .ring
                    .enqueue_frame(c, hdr, len, rq.hdr_len, rq.mrg, &mut b.scratch)
                    .is_err()
                    && rq.ring.is_broken()
                {
                    break;
                }
            }
            if !answer.is_empty() && !rq.ring.is_broken() {
                let _ = rq
                    .ring
                    .enqueue_bytes(answer, rq.hdr_len, rq.mrg, &mut b.scratch);
            }
            rq.ring.publish_used();
        }
    }
    for c in &b.chains[..n] {
        tq.ring.push_used(c.head, 0);
    }
    tq.ring.publish_used();
}

/// Message flags: version 1, NEED_REPLY from the input, or (rarely) any.
fn flags(inp: &mut Input) -> u32 {
    let f = inp.u8();
    if f & 0x80 != 0 {
        inp.u32()
    } else {
        VERSION | if f & 1 != 0 { NEED_REPLY } else { 0 }
    }
}

/// A virtqueue index: mostly one the device has (0-3 with two pairs), sometimes not.
fn vq(inp: &mut Input) -> u32 {
    let b = inp.u8();
    if b & 0x80 != 0 {
        inp.u32()
    } else {
        u32::from(b % 5)
    }
}

fn state_body(index: u32, num: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&index.to_le_bytes());
    b[4..].copy_from_slice(&num.to_le_bytes());
    b
}

struct World {
    dev: Arc<NetDevice>,
    driver: Driver,
    session: Option<Session>,
    burst: Burst,
    /// Kick and call eventfds (the backend gets duplicates; ours are never read).
    events: EventFd,
}

impl World {
    fn session(&mut self) -> &mut Session {
        let dev = &self.dev;
        self.session.get_or_insert_with(|| Session::new(dev))
    }

    fn end_session(&mut self) {
        if let Some(s) = self.session.take() {
            drop(s);
            // Dropping the handler drops the NetBackend, which takes every ring back.
            for q in 0..self.dev.queue_pairs() {
                assert!(
                    self.dev.pair(q).rxq.lock().is_none(),
                    "rx ring {q} left running"
                );
                assert!(
                    self.dev.pair(q).txq.lock().is_none(),
                    "tx ring {q} left running"
                );
            }
        }
    }

    fn send(&mut self, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) {
        if !self.session().send(request, flags, body, fds) {
            self.end_session();
        }
    }

    fn run_op(&mut self, op: u8, inp: &mut Input) {
        match op {
            OP_GET_FEATURES
            | OP_GET_PROTOCOL_FEATURES
            | OP_SET_OWNER
            | OP_RESET_OWNER
            | OP_GET_QUEUE_NUM => {
                let req = match op {
                    OP_GET_FEATURES => GET_FEATURES,
                    OP_GET_PROTOCOL_FEATURES => GET_PROTOCOL_FEATURES,
                    OP_SET_OWNER => SET_OWNER,
                    OP_RESET_OWNER => RESET_OWNER,
                    _ => GET_QUEUE_NUM,
                };
                let f = flags(inp);
                self.send(req, f, &[], &[]);
            }
            OP_SET_FEATURES => {
                let f = flags(inp);
                let sel = inp.u8();
                let v = if sel & 0x80 != 0 {
                    inp.u64()
                } else {
                    FEATURES
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| sel & (1 << i) != 0)
                        .fold(0, |acc, (_, b)| acc | b)
                };
                self.send(SET_FEATURES, f, &v.to_le_bytes(), &[]);
            }
            OP_SET_PROTOCOL_FEATURES => {
                let f = flags(inp);
                let sel = inp.u8();
                let v = if sel & 0x80 != 0 {
                    inp.u64()
                } else {
                    let mut v = 0;
                    for (i, p) in [
                        VhostUserProtocolFeatures::MQ,
                        VhostUserProtocolFeatures::LOG_SHMFD,
                        VhostUserProtocolFeatures::REPLY_ACK,
                    ]
                    .iter()
                    .enumerate()
                    {
                        if sel & (1 << i) != 0 {
                            v |= p.bits();
                        }
                    }
                    v
                };
                self.send(SET_PROTOCOL_FEATURES, f, &v.to_le_bytes(), &[]);
            }
            OP_SET_MEM_TABLE => {
                let f = flags(inp);
                let shape = inp.u8();
                // One or two regions; rarely none or up to nine (over the switch's eight).
                let n = if shape & 0x80 != 0 {
                    usize::from(shape & 0x0f) % 10
                } else {
                    1 + usize::from(shape & 1)
                };
                let mut body = Vec::new();
                body.extend_from_slice(&(n as u32).to_le_bytes());
                body.extend_from_slice(&0u32.to_le_bytes());
                let mut regions = Vec::new();
                for i in 0..n {
                    let rs = inp.u8();
                    let size = 4096 * (1 + u64::from(inp.u8() % 64));
                    if let Some(prev) = self.driver.regions.get(i).filter(|_| rs & 0x20 != 0) {
                        // The same region again (same memory, as QEMU sends it when the
                        // table changes elsewhere).
                        for w in [prev.gpa, prev.size, prev.uva, prev.offset] {
                            body.extend_from_slice(&w.to_le_bytes());
                        }
                        regions.push(Region {
                            file: prev.file.try_clone().expect("dup a memfd"),
                            ..*prev
                        });
                        continue;
                    }
                    let (gpa, uva, offset) = if rs & 0x80 != 0 {
                        (inp.u64(), inp.u64(), inp.u64() % (1 << 20))
                    } else {
                        (
                            (i as u64) << 24,
                            UVA_BASE + ((i as u64) << 28),
                            4096 * u64::from(rs & 3),
                        )
                    };
                    // The file: as large as the region needs, or (rarely) shorter.
                    let file_len = if rs & 0x40 != 0 {
                        u64::from(inp.u16()) * 16
                    } else {
                        offset.saturating_add(size).min(1 << 21)
                    };
                    for w in [gpa, size, uva, offset] {
                        body.extend_from_slice(&w.to_le_bytes());
                    }
                    regions.push(Region {
                        gpa,
                        size,
                        uva,
                        offset,
                        file: memfd("fuzz-guest", file_len),
                    });
                }
                // Usually one descriptor per region, as the protocol wants.
                let nfds = if shape & 0x40 != 0 { n ^ 1 } else { n };
                let fds: Vec<RawFd> = regions
                    .iter()
                    .map(|r| r.file.as_raw_fd())
                    .cycle()
                    .take(if regions.is_empty() { 0 } else { nfds })
                    .collect();
                self.send(SET_MEM_TABLE, f, &body, &fds);
                // The driver goes on with the table it sent (accepted or not).
                if !regions.is_empty() {
                    self.driver.regions = regions;
                }
            }
            OP_SET_VRING_NUM => {
                let f = flags(inp);
                let q = vq(inp);
                let b = inp.u8();
                let num = if b & 0x80 != 0 {
                    inp.u32()
                } else {
                    1 << (b % 10)
                };
                if let Some(v) = self.driver.vrings.get_mut(q as usize) {
                    v.num = num;
                }
                self.send(SET_VRING_NUM, f, &state_body(q, num), &[]);
            }
            OP_SET_VRING_ADDR => {
                let f = flags(inp);
                let q = vq(inp);
                let log = inp.u8();
                let desc = self.driver.uva(inp);
                let used = self.driver.uva(inp);
                let avail = self.driver.uva(inp);
                let log_addr = if log & 1 != 0 {
                    // Its guest-physical address, as QEMU sends it, or another.
                    if log & 2 != 0 {
                        inp.u64()
                    } else {
                        self.driver
                            .regions
                            .iter()
                            .find_map(|r| {
                                used.checked_sub(r.uva)
                                    .filter(|&o| o < r.size)
                                    .map(|o| r.gpa.wrapping_add(o))
                            })
                            .unwrap_or(0)
                    }
                } else {
                    0
                };
                if let Some(v) = self.driver.vrings.get_mut(q as usize) {
                    v.desc = desc;
                    v.used = used;
                    v.avail = avail;
                }
                let mut body = Vec::with_capacity(40);
                body.extend_from_slice(&q.to_le_bytes());
                body.extend_from_slice(&u32::from(log & 1).to_le_bytes());
                for w in [desc, used, avail, log_addr] {
                    body.extend_from_slice(&w.to_le_bytes());
                }
                self.send(SET_VRING_ADDR, f, &body, &[]);
            }
            OP_SET_VRING_BASE => {
                let f = flags(inp);
                let q = vq(inp);
                let b = inp.u8();
                let num = if b & 0x80 != 0 {
                    inp.u32()
                } else {
                    u32::from(inp.u16())
                };
                if let Some(v) = self.driver.vrings.get_mut(q as usize) {
                    v.next = num as u16;
                }
                self.send(SET_VRING_BASE, f, &state_body(q, num), &[]);
            }
            OP_GET_VRING_BASE => {
                let f = flags(inp);
                let q = vq(inp);
                self.send(GET_VRING_BASE, f, &state_body(q, 0), &[]);
            }
            OP_SET_VRING_KICK | OP_SET_VRING_CALL | OP_SET_VRING_ERR => {
                let req = match op {
                    OP_SET_VRING_KICK => SET_VRING_KICK,
                    OP_SET_VRING_CALL => SET_VRING_CALL,
                    _ => SET_VRING_ERR,
                };
                let f = flags(inp);
                let b = inp.u8();
                let q = u64::from(b & 7) % 5;
                // Bit 8: no descriptor (polling). Usually consistent with what is attached.
                let nofd = b & 0x10 != 0;
                let value = q | if nofd { 0x100 } else { 0 };
                let attach = if b & 0x20 != 0 { nofd } else { !nofd };
                let fds = [self.events.as_raw_fd()];
                let fds: &[RawFd] = if attach { &fds } else { &[] };
                self.send(req, f, &value.to_le_bytes(), fds);
            }
            OP_SET_VRING_ENABLE => {
                let f = flags(inp);
                let q = vq(inp);
                let num = u32::from(inp.u8() % 3);
                self.send(SET_VRING_ENABLE, f, &state_body(q, num), &[]);
            }
            OP_SET_LOG_BASE => {
                let f = flags(inp);
                let b = inp.u8();
                let file_len = 4096 * (1 + u64::from(b & 3));
                let (size, offset) = if b & 0x80 != 0 {
                    (inp.u64(), inp.u64())
                } else {
                    (u64::from(inp.u16() % 8192) + 1, u64::from(inp.u8()) * 8)
                };
                let log = memfd("fuzz-log", file_len);
                let mut body = [0u8; 16];
                body[..8].copy_from_slice(&size.to_le_bytes());
                body[8..].copy_from_slice(&offset.to_le_bytes());
                let fds = [log.as_raw_fd()];
                let fds: &[RawFd] = if b & 0x40 != 0 { &[] } else { &fds };
                self.send(SET_LOG_BASE, f, &body, fds);
            }
            OP_RAW => {
                // Any request, flags and size; the body padded to the size (up to the
                // largest message), with zero to two memfds attached.
                let request = u32::from(inp.u8() % 48);
                let f = inp.u32();
                let b = inp.u8();
                let size = if b & 0x80 != 0 {
                    inp.u32()
                } else {
                    u32::from(inp.u16()) % (MAX_MSG as u32 + 1)
                };
                let mut body = inp.bytes((size as usize).min(MAX_MSG)).to_vec();
                if (size as usize) <= MAX_MSG {
                    body.resize(size as usize, 0);
                } else {
                    body.clear();
                }
                let files: Vec<File> = (0..b % 3).map(|_| memfd("fuzz-raw", 4096)).collect();
                let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
                let ok = self.session().send_sized(request, f, size, &body, &fds);
                if !ok {
                    self.end_session();
                }
            }
            OP_GUEST_WRITE => {
                let gpa = self.driver.gpa(inp);
                let data = inp.blob(512);
                self.driver.write(gpa, data, true);
            }
            OP_POST_TX | OP_POST_RX => {
                let rx = op == OP_POST_RX;
                let pair = usize::from(inp.u8() & 1);
                let count = 1 + inp.u8() % 8;
                for _ in 0..count {
                    self.driver.post(2 * pair + usize::from(!rx), rx, inp);
                }
            }
            OP_WORKER => {
                let b = inp.u8();
                let pair = usize::from(b & 1) % self.dev.queue_pairs();
                let k = usize::from(b >> 1 & 3);
                let answer = if b & 0x10 != 0 { inp.blob(128) } else { &[] };
                worker(&self.dev, pair, k, answer, &mut self.burst);
            }
            OP_RECONNECT => self.end_session(),
            _ => unreachable!(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let cfg = inp.u8();
    let mut w = World {
        dev: Arc::new(NetDevice::new(1 + usize::from(cfg & 1))),
        driver: Driver::default(),
        session: None,
        burst: Burst {
            chains: vec![Chain::default(); 32],
            scratch: vec![Chain::default(); 8],
        },
        events: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    };
    for _ in 0..MAX_OPS {
        if inp.done() {
            break;
        }
        let op = inp.u8() % NOPS;
        w.run_op(op, &mut inp);
    }
    // What the queues hold at the end goes through the worker once more, then the frontend
    // goes away.
    for pair in 0..w.dev.queue_pairs() {
        worker(&w.dev, pair, pair, &[], &mut w.burst);
    }
    w.end_session();
    drop(w);
    // Nothing of the frontend's memory tables and logs stays mapped once it is gone.
    assert_eq!(
        bulwark_vhost::guest_mem::live_mappings(),
        0,
        "guest memory or a dirty log left mapped"
    );
});
