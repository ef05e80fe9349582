//! The vhost-user rings, device side: one burst of 32 frames of 60 bytes.
//!
//! Cases (a 256-entry transmit ring and a 256-entry receive ring in one shared-memory file,
//! as a guest would set them up; the driver's part is done between timed sections):
//! - `ring/tx_burst_32`: pop 32 one-descriptor chains, read each frame's Ethernet header,
//!   complete them (used ring) and publish the used index once.
//! - `ring/rx_burst_32`: copy 32 frames from those chains into 32 posted receive buffers
//!   (virtio-net header + frame, mergeable-buffer layout) and publish once.
//!
//! Both rings live in one core's cache here, so these are the CPU costs of the ring code; in
//! the switch, the lines also travel between the guest's core and the worker's.
//!
//! Run: `cargo bench -p bulwark-benches --bench ring`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_vhost::guest_mem::{GuestMemory, RegionDesc};
use bulwark_vhost::ring::RingConfig;
use bulwark_vhost::{Chain, Pop, SplitRing};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const GPA: u64 = 0x1_0000;
const UVA: u64 = 0x7f00_0000_0000;
const SIZE: u16 = 256;
const BURST: usize = 32;
const FRAME: u32 = 60;
const HDR: u32 = 12;
// Layout (offsets in the file): tx ring, rx ring, tx buffers, rx buffers.
const TX_DESC: u64 = 0;
const TX_AVAIL: u64 = 0x1000;
const TX_USED: u64 = 0x2000;
const RX_DESC: u64 = 0x4000;
const RX_AVAIL: u64 = 0x5000;
const RX_USED: u64 = 0x6000;
const TX_BUFS: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x2_0000;
const BUF: u64 = 2048;
const MEM: u64 = RX_BUFS + BUF * SIZE as u64;

/// The guest's side, written through the file (the mapping is shared with it).
struct Driver {
    f: File,
    tx_avail: u16,
    rx_avail: u16,
}

impl Driver {
    fn put<const N: usize>(&self, off: u64, b: [u8; N]) {
        self.f
            .write_all_at(&b, off)
            .expect("write to the shared file");
    }
    fn desc(&self, base: u64, i: u16, addr: u64, len: u32, flags: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        self.put(base + 16 * u64::from(i), d);
    }
    /// Makes `n` more chains available on the receive or transmit ring (ids in order).
    fn post(&mut self, rx: bool, n: usize) {
        let (avail, start) = if rx {
            (RX_AVAIL, self.rx_avail)
        } else {
            (TX_AVAIL, self.tx_avail)
        };
        for k in 0..n as u16 {
            let id = start.wrapping_add(k) % SIZE;
            self.put(avail + 4 + 2 * u64::from(id), id.to_le_bytes());
        }
        let idx = start.wrapping_add(n as u16);
        self.put(avail + 2, idx.to_le_bytes());
        if rx {
            self.rx_avail = idx;
        } else {
            self.tx_avail = idx;
        }
    }
}

fn setup() -> (Driver, SplitRing, SplitRing) {
    let path = std::env::temp_dir().join(format!("bulwark-ring-bench-{}", std::process::id()));
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    f.set_len(MEM).unwrap();
    let mem = Arc::new(
        GuestMemory::map(
            &[RegionDesc {
                gpa: GPA,
                size: MEM,
                uva: UVA,
                offset: 0,
            }],
            &[f.try_clone().unwrap()],
        )
        .unwrap(),
    );
    let d = Driver {
        f,
        tx_avail: 0,
        rx_avail: 0,
    };
    let frame: Vec<u8> = (0..FRAME as u8).collect();
    for i in 0..SIZE {
        let tx = TX_BUFS + BUF * u64::from(i) / 8; // 256-byte tx buffers
        d.f.write_all_at(&[0u8; HDR as usize], tx).unwrap();
        d.f.write_all_at(&frame, tx + u64::from(HDR)).unwrap();
        d.desc(TX_DESC, i, GPA + tx, HDR + FRAME, 0);
        d.desc(
            RX_DESC,
            i,
            GPA + RX_BUFS + BUF * u64::from(i),
            BUF as u32,
            2,
        );
    }
    let ring = |desc: u64, avail: u64, used: u64| {
        SplitRing::new(
            mem.clone(),
            &RingConfig {
                size: SIZE,
                desc_uva: UVA + desc,
                avail_uva: UVA + avail,
                used_uva: UVA + used,
                base: 0,
                event_idx: true,
                call: None,
                log: None,
            },
        )
        .unwrap()
    };
    let tx = ring(TX_DESC, TX_AVAIL, TX_USED);
    let rx = ring(RX_DESC, RX_AVAIL, RX_USED);
    (d, tx, rx)
}

fn bench(c: &mut Criterion) {
    let (mut d, mut tx, mut rx) = setup();
    let mut chains = vec![Chain::default(); BURST];
    let mut scratch = vec![Chain::default(); 8];
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function("tx_burst_32", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                d.post(false, BURST);
                let start = Instant::now();
                tx.refresh_avail();
                let mut eth = [0u8; 14];
                for ch in chains.iter_mut() {
                    assert!(matches!(tx.pop(ch, false), Pop::Chain));
                    ch.read_at(HDR, &mut eth);
                }
                for ch in &chains {
                    tx.push_used(ch.head, 0);
                }
                tx.publish_used();
                t += start.elapsed();
                std::hint::black_box(eth);
            }
            t
        })
    });
    g.bench_function("rx_burst_32", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                // Source frames: the tx chains.
                d.post(false, BURST);
                tx.refresh_avail();
                for ch in chains.iter_mut() {
                    assert!(matches!(tx.pop(ch, false), Pop::Chain));
                }
                d.post(true, BURST);
                let start = Instant::now();
                for ch in &chains {
                    rx.enqueue_frame(ch, HDR, FRAME, HDR, true, &mut scratch)
                        .expect("room");
                }
                rx.publish_used();
                t += start.elapsed();
                for ch in &chains {
                    tx.push_used(ch.head, 0);
                }
                tx.publish_used();
            }
            t
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
