//! The device side of split virtqueues over guest memory the fuzzer writes: a transmit and a
//! receive `SplitRing` over one memfd region (queue sizes, ring addresses and base from the
//! input: aligned or not, inside memory or not), with dirty logging sometimes on; descriptor
//! tables, avail rings and buffers written by a fake driver or as raw bytes, at any time.
//! Chains are popped as a transmit and as a receive queue, read, completed, given back
//! (`unpop`); frames are copied from transmit chains into the receive ring (`enqueue_frame`,
//! mergeable buffers or not, 10- or 12-byte headers) and built frames too (`enqueue_bytes`).
//!
//! Checked: no panic, no access outside the mapping; a ring starts exactly when its size is a
//! power of two up to 32768 and its three parts lie aligned inside memory; every chain popped
//! has 1 to `MAX_CHAIN` segments inside the region, summing to its total; `pending` never
//! exceeds the ring size; a broken ring stays broken; `used.idx`, once published, is where it
//! was plus the used elements pushed since (and nothing is published when nothing was pushed);
//! a frame enqueued takes one buffer without mergeable buffers, and its used lengths add up to
//! the header and the frame; a frame refused for want of buffers consumes nothing; a bad chain
//! met while enqueueing is completed with its reserved buffers, with length 0; while logging,
//! the used ring's page is marked after each publication.
//!
//! Input: a header (memory size, each ring's configuration, the log), then operations, an
//! opcode byte (`OP_*`, modulo their number) and its arguments each; `fuzz/make_seeds.py`
//! writes the seeds in this format.
#![no_main]

mod util;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::FromRawFd;
use std::sync::Arc;

use bulwark_vhost::guest_mem::{DirtyLog, GuestMemory, RegionDesc, LOG_PAGE};
use bulwark_vhost::ring::{RingConfig, RingLog, RxError, MAX_CHAIN};
use bulwark_vhost::{Chain, Pop, SplitRing};
use libfuzzer_sys::fuzz_target;
use util::{chain_flags, descriptor, memfd, Input};

const GPA: u64 = 0x1_0000;
const UVA: u64 = 0x7f00_0000_0000;

// Default layout (offsets in the region): the transmit ring, the receive ring, buffers.
const TX_DESC: u64 = 0x0000;
const TX_AVAIL: u64 = 0x1000;
const TX_USED: u64 = 0x2000;
const RX_DESC: u64 = 0x3000;
const RX_AVAIL: u64 = 0x4000;
const RX_USED: u64 = 0x5000;
const BUFS: u64 = 0x8000;

const OP_WRITE: u8 = 0;
const OP_POST: u8 = 1;
const OP_AVAIL_IDX: u8 = 2;
const OP_EVENT: u8 = 3;
const OP_POP: u8 = 4;
const OP_READ: u8 = 5;
const OP_PUSH: u8 = 6;
const OP_PUBLISH: u8 = 7;
const OP_ENQUEUE_FRAME: u8 = 8;
const OP_ENQUEUE_BYTES: u8 = 9;
const OP_UNPOP: u8 = 10;
const OP_PREFETCH: u8 = 11;
const OP_RESTART: u8 = 12;
const OP_CALL: u8 = 13;
const NOPS: u8 = 14;

const MAX_OPS: usize = 256;

/// One ring and what the test knows about it.
struct Ring {
    ring: Option<SplitRing>,
    cfg: RingConfig,
    /// `used.idx` the guest should see after the next publication.
    used: u16,
    /// Used elements pushed since the last publication.
    unpublished: u32,
    /// Chains popped and not yet completed, in order.
    out: Vec<Chain>,
    /// How many of the last of `out` may still be given back (`unpop`).
    unpoppable: usize,
    broken: bool,
    /// The driver's next descriptor.
    next: u16,
}

struct World {
    file: File,
    mem: Arc<GuestMemory>,
    size: u64,
    /// Host address of the region's first byte.
    host: usize,
    log: Option<Arc<DirtyLog>>,
    /// The log covers guest pages `0..log_pages`.
    log_pages: u64,
    rings: [Ring; 2],
    call: Arc<File>,
    scratch: Vec<Chain>,
}

const TX: usize = 0;
const RX: usize = 1;

impl World {
    fn write(&self, off: u64, bytes: &[u8]) {
        if off
            .checked_add(bytes.len() as u64)
            .is_some_and(|e| e <= self.size)
        {
            let _ = self.file.write_all_at(bytes, off);
        }
    }

    fn read_u16(&self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        if off + 2 <= self.size {
            let _ = self.file.read_exact_at(&mut b, off);
        }
        u16::from_le_bytes(b)
    }

    fn read_u32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        if off + 4 <= self.size {
            let _ = self.file.read_exact_at(&mut b, off);
        }
        u32::from_le_bytes(b)
    }

    /// Region offset of a ring part given by its frontend address, when inside.
    fn off(&self, uva: u64) -> Option<u64> {
        uva.checked_sub(UVA).filter(|&o| o < self.size)
    }

    /// (Re)starts ring `r` from its configuration; checks it starts exactly when it should.
    fn start(&mut self, r: usize) {
        let cfg = self.rings[r].cfg.clone();
        let n = u64::from(cfg.size);
        let inside = |uva: u64, len: u64| {
            uva.checked_sub(UVA)
                .is_some_and(|o| o < self.size && len <= self.size - o)
        };
        let valid = cfg.size != 0
            && cfg.size.is_power_of_two()
            && cfg.size <= 32768
            && inside(cfg.desc_uva, 16 * n)
            && inside(cfg.avail_uva, 6 + 2 * n)
            && inside(cfg.used_uva, 6 + 8 * n)
            && cfg.desc_uva.is_multiple_of(16)
            && cfg.avail_uva.is_multiple_of(2)
            && cfg.used_uva.is_multiple_of(4);
        let before = self.off(cfg.used_uva).map(|o| self.read_u16(o + 2));
        let ring = SplitRing::new(self.mem.clone(), &cfg);
        assert_eq!(ring.is_ok(), valid, "ring start: {:?}", ring.as_ref().err());
        let rg = &mut self.rings[r];
        rg.ring = ring.ok();
        rg.out.clear();
        rg.unpoppable = 0;
        rg.unpublished = 0;
        rg.broken = false;
        if let Some(ring) = &rg.ring {
            // It starts at the guest's used.idx (resynchronised when the base differs).
            let u = before.expect("a started ring's used ring is inside memory");
            assert_eq!(ring.last_avail(), u);
            rg.used = u;
            rg.next = u;
        }
        self.check_log(r);
    }

    /// While logging, the used ring's page is marked (at start and after a publication).
    fn check_log(&self, r: usize) {
        let rg = &self.rings[r];
        if let (Some(ring), Some(log), Some(l)) = (&rg.ring, &self.log, &rg.cfg.log) {
            assert!(ring.logging());
            if l.used_gpa / LOG_PAGE < self.log_pages {
                assert!(log.is_marked(l.used_gpa), "used ring page not logged");
            }
        }
    }

    /// Checks a chain popped from a ring: its head, its segments inside the region, its total.
    fn check_chain(&self, size: u16, c: &Chain) {
        assert!(c.head < size);
        let nsegs = usize::from(c.nsegs);
        assert!((1..=MAX_CHAIN.min(usize::from(size))).contains(&nsegs));
        let mut sum = 0u64;
        for s in &c.segs[..nsegs] {
            assert!(s.addr >= self.host, "segment below the region");
            assert!(
                (s.addr - self.host) as u64 + u64::from(s.len) <= self.size,
                "segment past the region"
            );
            sum += u64::from(s.len);
        }
        assert_eq!(sum, u64::from(c.total));
    }

    fn after(&mut self, r: usize) {
        let rg = &mut self.rings[r];
        if let Some(ring) = &rg.ring {
            if rg.broken {
                assert!(ring.is_broken(), "a broken ring mended itself");
            }
            rg.broken = ring.is_broken();
        }
    }

    fn ring_part(&self, r: usize, part: u8) -> u64 {
        let c = &self.rings[r].cfg;
        let uva = match part % 3 {
            0 => c.desc_uva,
            1 => c.avail_uva,
            _ => c.used_uva,
        };
        uva.wrapping_sub(UVA)
    }

    /// A driver's post: descriptors from `next` (or a named head), buffers in the region (or
    /// anywhere), the flags a driver sets for this queue (or any), data for transmit buffers,
    /// then the avail entry and avail.idx + 1 (or any index).
    fn post(&mut self, r: usize, inp: &mut Input) {
        let size = self.rings[r].cfg.size;
        if size == 0 || !size.is_power_of_two() {
            return;
        }
        let mask = size - 1;
        let desc = self.ring_part(r, 0);
        let avail = self.ring_part(r, 1);
        let shape = inp.u8();
        // Descriptors from the driver's `next` on; the head is the first, or any index.
        let first = self.rings[r].next & mask;
        let head = if shape & 0x80 != 0 { inp.u16() } else { first };
        let ndesc = 1 + u16::from(shape & 3) + 8 * u16::from(shape & 0x40 != 0);
        for k in 0..ndesc {
            let idx = first.wrapping_add(k) & mask;
            let a = inp.u8();
            let addr = if a & 0x80 != 0 {
                inp.u64()
            } else {
                GPA + BUFS + (u64::from(inp.u16()) * 4) % self.size.saturating_sub(BUFS).max(1)
            };
            let len = if a & 0x40 != 0 {
                inp.u32()
            } else {
                u32::from(inp.u16() % 4096)
            };
            let last = k + 1 == ndesc;
            let (flags, next) = if a & 0x20 != 0 {
                (inp.u16(), inp.u16())
            } else {
                (chain_flags(last, r == RX), idx.wrapping_add(1) & mask)
            };
            let d = descriptor(addr, len, flags, next);
            self.write(desc.wrapping_add(16 * u64::from(idx)), &d);
            if r == TX && a & 0x10 != 0 {
                let data = inp.blob(256);
                let n = data.len().min(len as usize);
                self.write(addr.wrapping_sub(GPA), &data[..n]);
            }
        }
        self.rings[r].next = first.wrapping_add(ndesc);
        let ai = self.read_u16(avail.wrapping_add(2));
        self.write(
            avail.wrapping_add(4 + 2 * u64::from(ai & mask)),
            &head.to_le_bytes(),
        );
        let new = if shape & 0x08 != 0 {
            inp.u16()
        } else {
            ai.wrapping_add(1)
        };
        self.write(avail.wrapping_add(2), &new.to_le_bytes());
    }

    fn run_op(&mut self, op: u8, inp: &mut Input) {
        let sel = inp.u8();
        let r = usize::from(sel & 1);
        match op {
            OP_WRITE => {
                let off = if sel & 2 != 0 {
                    // Into a ring part.
                    self.ring_part(r, sel >> 2)
                        .wrapping_add(u64::from(inp.u16() % 4096))
                } else {
                    u64::from(inp.u32()) % self.size
                };
                let data = inp.blob(256);
                self.write(off, data);
            }
            OP_POST => {
                let count = 1 + (sel >> 1) % 8;
                for _ in 0..count {
                    self.post(r, inp);
                }
            }
            OP_AVAIL_IDX => {
                let avail = self.ring_part(r, 1);
                let v = inp.u16();
                self.write(avail.wrapping_add(2), &v.to_le_bytes());
            }
            OP_EVENT => {
                // used_event (the last avail slot) or avail.flags.
                let avail = self.ring_part(r, 1);
                let v = inp.u16();
                let at = if sel & 2 != 0 {
                    avail.wrapping_add(4 + 2 * u64::from(self.rings[r].cfg.size))
                } else {
                    avail
                };
                self.write(at, &v.to_le_bytes());
            }
            OP_POP => {
                let count = 1 + usize::from(sel >> 1) % 40;
                let Some(ring) = self.rings[r].ring.as_mut() else {
                    return;
                };
                let waiting = ring.refresh_avail();
                assert!(waiting <= ring.size());
                // A ring is consistent or broken: never more than a ring pending.
                assert!(ring.is_broken() || ring.pending() <= ring.size());
                if waiting > 0 {
                    assert!(!ring.is_broken());
                }
                let size = ring.size();
                for _ in 0..count {
                    let mut c = Chain::default();
                    let ring = self.rings[r].ring.as_mut().expect("running");
                    match ring.pop(&mut c, r == RX) {
                        Pop::Chain => {
                            self.check_chain(size, &c);
                            self.rings[r].out.push(c);
                            self.rings[r].unpoppable += 1;
                        }
                        Pop::Bad(_) => {
                            assert!(c.head < size);
                            assert_eq!((c.nsegs, c.total), (0, 0));
                            // Completed at once, as `take` does.
                            ring.push_used(c.head, 0);
                            let rg = &mut self.rings[r];
                            rg.used = rg.used.wrapping_add(1);
                            rg.unpublished += 1;
                            rg.unpoppable = 0;
                        }
                        Pop::Empty => {
                            assert_eq!(ring.pending(), 0);
                            break;
                        }
                        Pop::Broken => {
                            assert!(ring.is_broken());
                            break;
                        }
                    }
                }
            }
            OP_READ => {
                let out = &self.rings[TX].out;
                if out.is_empty() {
                    return;
                }
                let c = out[usize::from(sel >> 1) % out.len()];
                let skip = u32::from(inp.u16());
                let mut buf = vec![0u8; usize::from(inp.u16() % 2048)];
                let got = c.read_at(skip, &mut buf);
                assert_eq!(got, buf.len().min(c.total.saturating_sub(skip) as usize));
            }
            OP_PUSH => {
                let count = 1 + usize::from(sel >> 1) % 40;
                let rg = &mut self.rings[r];
                let Some(ring) = rg.ring.as_mut() else { return };
                for c in rg.out.drain(..count.min(rg.out.len())) {
                    let len = if r == RX { inp.u32() } else { 0 };
                    ring.push_used(c.head, len);
                    rg.used = rg.used.wrapping_add(1);
                    rg.unpublished += 1;
                }
                rg.unpoppable = 0;
            }
            OP_PUBLISH => self.publish(r),
            OP_ENQUEUE_FRAME | OP_ENQUEUE_BYTES => {
                let hdr_len = if sel & 2 != 0 { 12 } else { 10 };
                let mrg = sel & 4 != 0;
                let src;
                let bytes;
                let (skip, len) = if op == OP_ENQUEUE_FRAME {
                    let out = &self.rings[TX].out;
                    if out.is_empty() {
                        return;
                    }
                    src = Some(out[usize::from(inp.u8()) % out.len()]);
                    bytes = &[][..];
                    let c = src.as_ref().expect("set");
                    let skip = u32::from(inp.u16()) % (c.total + 1);
                    let len = u32::from(inp.u16()) % (c.total - skip + 1);
                    (skip, len)
                } else {
                    src = None;
                    bytes = inp.blob(9000);
                    (0, bytes.len() as u32)
                };
                self.enqueue(src.as_ref(), bytes, skip, len, hdr_len, mrg);
            }
            OP_UNPOP => {
                let rg = &mut self.rings[r];
                let Some(ring) = rg.ring.as_mut() else { return };
                let n = usize::from(sel >> 1) % (rg.unpoppable + 1);
                ring.unpop(n as u16);
                let keep = rg.out.len() - n;
                rg.out.truncate(keep);
                rg.unpoppable -= n;
            }
            OP_PREFETCH => {
                let Some(ring) = self.rings[r].ring.as_ref() else {
                    return;
                };
                let n = inp.u16();
                match sel >> 1 & 3 {
                    0 => ring.prefetch_avail(n),
                    1 => ring.prefetch_rx(n),
                    _ => ring.prefetch_used(n),
                }
            }
            OP_RESTART => {
                // As after GET_VRING_BASE and a new start: from where it stopped, or another
                // base, with or without EVENT_IDX.
                let base = match &self.rings[r].ring {
                    Some(ring) if sel & 2 == 0 => ring.last_avail(),
                    _ => inp.u16(),
                };
                self.rings[r].cfg.base = base;
                self.rings[r].cfg.event_idx = sel & 4 != 0;
                self.start(r);
            }
            OP_CALL => {
                let call = (sel & 2 != 0).then(|| self.call.clone());
                if let Some(ring) = self.rings[r].ring.as_mut() {
                    ring.set_call(call.clone());
                    ring.signal();
                }
                self.rings[r].cfg.call = call;
            }
            _ => unreachable!(),
        }
        self.after(r);
    }

    fn publish(&mut self, r: usize) {
        let used = self.off(self.rings[r].cfg.used_uva);
        let rg = &mut self.rings[r];
        let Some(ring) = rg.ring.as_mut() else { return };
        let notified = ring.publish_used();
        if rg.unpublished == 0 {
            assert!(!notified, "notified with nothing published");
            return;
        }
        rg.unpublished = 0;
        if rg.broken || ring.is_broken() {
            return;
        }
        let used = used.expect("a running ring's used ring is inside memory");
        let expect = rg.used;
        assert_eq!(
            self.read_u16(used + 2),
            expect,
            "used.idx is not what was pushed"
        );
        self.check_log(r);
    }

    fn enqueue(
        &mut self,
        src: Option<&Chain>,
        bytes: &[u8],
        skip: u32,
        len: u32,
        hdr: u32,
        mrg: bool,
    ) {
        let rg = &mut self.rings[RX];
        let Some(ring) = rg.ring.as_mut() else { return };
        let was_broken = ring.is_broken();
        let before = ring.last_avail();
        let res = match src {
            Some(c) => ring.enqueue_frame(c, skip, len, hdr, mrg, &mut self.scratch),
            None => ring.enqueue_bytes(bytes, hdr, mrg, &mut self.scratch),
        };
        let consumed = ring.last_avail().wrapping_sub(before);
        let size = ring.size();
        rg.unpoppable = 0;
        if was_broken {
            assert_eq!(res, Err(RxError::Broken));
            return;
        }
        let first = rg.used;
        match res {
            Ok(()) => {
                assert!((1..=8).contains(&consumed));
                if !mrg {
                    assert_eq!(consumed, 1, "one buffer without MRG_RXBUF");
                }
                rg.used = rg.used.wrapping_add(consumed);
                rg.unpublished += u32::from(consumed);
            }
            Err(RxError::NoBuffers | RxError::BufferTooSmall) => {
                assert_eq!(consumed, 0, "a refused frame consumed buffers");
                return;
            }
            Err(RxError::BadChain(_)) => {
                assert!(consumed >= 1);
                rg.used = rg.used.wrapping_add(consumed);
                rg.unpublished += u32::from(consumed);
            }
            Err(RxError::Broken) => {
                assert!(ring.is_broken());
                return;
            }
        }
        // The used elements just written (before publication): their lengths.
        let used = self.off(self.rings[RX].cfg.used_uva).expect("inside");
        let total: u64 = (0..consumed)
            .map(|i| {
                let e = used + 4 + 8 * u64::from(first.wrapping_add(i) & (size - 1));
                u64::from(self.read_u32(e + 4))
            })
            .sum();
        if res.is_ok() {
            assert_eq!(
                total,
                u64::from(hdr) + u64::from(len),
                "frame not written whole"
            );
        } else {
            assert_eq!(total, 0, "a bad chain's buffers completed with data");
        }
    }
}

/// A ring's configuration from the input: size, addresses (default layout, an offset in the
/// region, or anything), base, EVENT_IDX.
fn ring_cfg(inp: &mut Input, r: usize, mem: u64) -> RingConfig {
    let b = inp.u8();
    let size = if b & 0x80 != 0 {
        inp.u16()
    } else {
        1 << (b % 9)
    };
    let defaults = if r == TX {
        [TX_DESC, TX_AVAIL, TX_USED]
    } else {
        [RX_DESC, RX_AVAIL, RX_USED]
    };
    let a = inp.u8();
    let mut addrs = [0u64; 3];
    for (i, d) in defaults.iter().enumerate() {
        addrs[i] = match a >> (2 * i) & 3 {
            0 | 1 => UVA + d,
            2 => UVA + u64::from(inp.u32()) % (mem + 0x100),
            _ => inp.u64(),
        };
    }
    RingConfig {
        size,
        desc_uva: addrs[0],
        avail_uva: addrs[1],
        used_uva: addrs[2],
        base: if a & 0x40 != 0 { inp.u16() } else { 0 },
        event_idx: a & 0x80 != 0,
        call: None,
        log: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let m = inp.u8();
    let size = 0x10000u64 << (m % 3);
    let file = memfd("fuzz-ring", size);
    let mem = Arc::new(
        GuestMemory::map(
            &[RegionDesc {
                gpa: GPA,
                size,
                uva: UVA,
                offset: 0,
            }],
            &[file.try_clone().expect("dup")],
        )
        .expect("map"),
    );
    let host = mem.translate(GPA, size).expect("the region");
    let mut cfgs = [ring_cfg(&mut inp, TX, size), ring_cfg(&mut inp, RX, size)];
    // The dirty log: covering the region (or less), at an offset in its file.
    let (log, log_pages) = if m & 0x10 != 0 {
        let l = inp.u8();
        let bytes = if l & 0x80 != 0 {
            u64::from(inp.u16() % 64) + 1
        } else {
            (GPA + size) / LOG_PAGE / 8 + 1
        };
        let offset = u64::from(l & 0x3f) * 8;
        let lf = memfd("fuzz-log", offset + bytes + u64::from(l & 0x40 != 0));
        let log = Arc::new(DirtyLog::map(&lf, bytes, offset).expect("log map"));
        for (r, c) in cfgs.iter_mut().enumerate() {
            if m & (0x20 << r) != 0 {
                // The used ring's guest-physical address, or another.
                let used_gpa = if l & 0x40 != 0 {
                    inp.u64()
                } else {
                    c.used_uva.wrapping_sub(UVA).wrapping_add(GPA)
                };
                c.log = Some(RingLog {
                    log: log.clone(),
                    used_gpa,
                });
            }
        }
        (Some(log), bytes * 8)
    } else {
        (None, 0)
    };
    let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    // SAFETY: dup gives a descriptor the File owns.
    let call = Arc::new(unsafe {
        File::from_raw_fd(libc::dup(std::os::unix::io::AsRawFd::as_raw_fd(&efd)))
    });
    let ring = |cfg: RingConfig| Ring {
        ring: None,
        cfg,
        used: 0,
        unpublished: 0,
        out: Vec::new(),
        unpoppable: 0,
        broken: false,
        next: 0,
    };
    let [c0, c1] = cfgs;
    let mut w = World {
        file,
        mem,
        size,
        host,
        log,
        log_pages,
        rings: [ring(c0), ring(c1)],
        call,
        scratch: vec![Chain::default(); 8],
    };
    // The driver's first posts go in before the rings start (as a guest fills its receive
    // ring before the device runs); the rest of the input runs against started rings.
    let pre = inp.u8() % 4;
    for _ in 0..pre {
        let r = usize::from(inp.u8() & 1);
        w.post(r, &mut inp);
    }
    w.start(TX);
    w.start(RX);
    for _ in 0..MAX_OPS {
        if inp.done() {
            break;
        }
        let op = inp.u8() % NOPS;
        w.run_op(op, &mut inp);
    }
    w.publish(TX);
    w.publish(RX);
});
