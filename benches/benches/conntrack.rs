//! Connection-table benchmarks.
//!
//! Cases (table of 1,000,000 connections capacity, 500,000 live IPv4 TCP connections):
//! - `conntrack/hit`: lookup of an existing connection (random order, both directions), then
//!   `touch` (last-seen + packet count): what every packet of a known connection costs.
//! - `conntrack/hit_tcp_update`: the same plus the TCP window update under the entry bit.
//! - `conntrack/miss`: lookup of a connection that does not exist.
//! - `conntrack/miss_insert`: lookup miss, then creation of the connection (a new flow).
//!   Slots come back through the sweeper outside the timed loop.
//!
//! Run: `cargo bench -p bulwark-benches --bench conntrack`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use conntrack::tcp::{flags, Update};
use conntrack::{Config, Key, NewConn, Segment, Table, TcpConn, Timeouts};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const CAPACITY: usize = 1_000_000;
const LIVE: u32 = 500_000;

fn key(i: u32) -> Key {
    Key {
        zone: 1,
        proto: 6,
        src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0xffff))),
        dst: IpAddr::V4(Ipv4Addr::from(0x0b00_0000 | (i >> 16))),
        sport: 1024 + (i % 50_000) as u16,
        dport: 443,
    }
}

fn syn(i: u32) -> Segment {
    Segment {
        seq: i,
        ack: 0,
        flags: flags::SYN,
        win: 65535,
        len: 0,
        wscale: None,
    }
}

/// A pseudo-random permutation walk over 0..n (odd multiplier modulo a power of two).
struct Walk(u32);

impl Walk {
    fn next(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_mul(2_654_435_761).wrapping_add(1);
        self.0 % n
    }
}

fn filled() -> Table {
    let t = Table::new(&Config {
        capacity: CAPACITY,
        vnics: 16,
        workers: 1,
        timeouts: Timeouts::default(),
    });
    for i in 0..LIVE {
        let k = key(i);
        let c = TcpConn::new(&syn(i), false).expect("a SYN opens");
        t.insert(
            &k,
            t.hash(&k),
            &NewConn {
                owner: (i % 16) as u16,
                tcp: Some(c),
                epoch: 1,
                ..Default::default()
            },
            1,
            1000,
        )
        .expect("room");
    }
    t
}

fn bench(c: &mut Criterion) {
    let t = filled();
    let mut g = c.benchmark_group("conntrack");
    let mut w = Walk(7);
    g.bench_function("hit", |b| {
        b.iter(|| {
            let i = w.next(LIVE);
            let k = if i & 1 == 0 {
                key(i)
            } else {
                key(i).reversed()
            };
            let f = t.lookup(black_box(&k), t.hash(&k)).expect("live");
            t.touch(f.slot, f.dir, 2);
            black_box(f)
        })
    });
    g.bench_function("hit_tcp_update", |b| {
        b.iter(|| {
            let i = w.next(LIVE);
            let k = key(i);
            let f = t.lookup(black_box(&k), t.hash(&k)).expect("live");
            t.touch(f.slot, f.dir, 2);
            // A retransmitted SYN: in window, exercises the whole update.
            black_box(t.with_tcp(f.slot, |c| {
                let u = c.update(&syn(i), 0);
                (u == Update::Valid, u)
            }))
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            let k = key(LIVE + w.next(LIVE));
            black_box(t.lookup(black_box(&k), t.hash(&k)))
        })
    });
    // Creations: each batch inserts 1,000 fresh keys into the half-full table; the setup of the
    // next batch (not timed) expires and reclaims them, so the load stays at half.
    let mut next = LIVE;
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    g.bench_function("miss_insert", |b| {
        b.iter_batched(
            || {
                for i in next - 1000..next {
                    let k = key(i);
                    if i >= LIVE {
                        if let Some(f) = t.lookup(&k, t.hash(&k)) {
                            t.expire_now(f.slot);
                        }
                    }
                }
                t.qsbr().quiescent(0);
                t.sweep(3);
                t.qsbr().quiescent(0);
                t.sweep(3);
                let first = next;
                next += 1000;
                first
            },
            |first| {
                for i in first..first + 1000 {
                    let k = key(i);
                    let h = t.hash(&k);
                    if t.lookup(&k, h).is_none() {
                        let c = TcpConn::new(&syn(i), false).expect("a SYN opens");
                        black_box(
                            t.insert(
                                &k,
                                h,
                                &NewConn {
                                    owner: 3,
                                    peer: 4,
                                    tcp: Some(c),
                                    epoch: 1,
                                    ..Default::default()
                                },
                                3,
                                3000,
                            )
                            .ok(),
                        );
                    }
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    eprintln!(
        "conntrack: {:.1} bytes per IPv4 connection at capacity",
        t.bytes_per_connection()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
