//! Micro-benchmarks of the data path's per-frame pieces.
//!
//! Cases:
//! - `mac_table/lookup_hit`: find a learned (segment, MAC) among 1,000 entries.
//! - `mac_table/lookup_miss`: a MAC that was never learned (a flood decision).
//! - `mac_table/learn_refresh`: re-learning a known MAC on the same port within a second (the
//!   common case on every frame: must not write).
//! - `wire/ethernet_parse`: header view, source/destination, tag check.
//!
//! Run: `cargo bench -p bulwark-benches`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dataplane::mac_table::MacTable;
use dataplane::wire::{EthernetFrame, Mac};

fn mac(i: u32) -> Mac {
    let b = i.to_be_bytes();
    Mac([2, 0, b[0], b[1], b[2], b[3]])
}

fn mac_table(c: &mut Criterion) {
    let t = MacTable::new(65536, 300);
    for i in 0..1000 {
        t.learn(10, mac(i), (i % 64) as u16, 1);
    }
    let mut g = c.benchmark_group("mac_table");
    let mut i = 0u32;
    g.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            black_box(t.lookup(10, black_box(mac(i)), 2))
        })
    });
    g.bench_function("lookup_miss", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(t.lookup(10, black_box(mac(1_000_000 + i % 1000)), 2))
        })
    });
    g.bench_function("learn_refresh", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            t.learn(10, black_box(mac(i)), (i % 64) as u16, 1)
        })
    });
    g.finish();
}

fn wire(c: &mut Criterion) {
    let frame: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x00,
    ];
    c.bench_function("wire/ethernet_parse", |b| {
        b.iter(|| {
            let e = EthernetFrame::new_checked(black_box(&frame[..])).unwrap();
            black_box((e.dst().is_group(), e.src().to_u64(), e.is_tagged()))
        })
    });
}

criterion_group!(benches, mac_table, wire);
criterion_main!(benches);
