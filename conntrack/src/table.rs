//! The connection table: fixed size, shared by all workers, lock-free lookups.
//!
//! See `DESIGN.md` for the reasoning. In short:
//! - Slots are 64-byte cache lines, stored in place (no pointer chasing). An IPv4 connection
//!   takes one slot; an IPv6 connection takes two slots of one bucket (the second holds the
//!   addresses; the first records where it is).
//! - One key per connection, hashed symmetrically, so both directions find the same slot; the
//!   stored orientation tells which direction a packet goes.
//! - Buckets of 16 slots; a key may live in either of two buckets chosen by its hash ("two
//!   choices": inserts go to the emptier one), or, when both are full, in the bucket after
//!   either. A one-byte tag per slot (hash bits) lets a lookup skip non-matching slots without
//!   touching them: a miss reads the tags of four buckets (two pairs of adjacent 16-byte
//!   groups), not 64 cache lines. Entries never move once inserted.
//! - Lookups take no lock. Inserts of keys with the same first bucket are serialized by that
//!   bucket's insert flag (so two cores never create the same connection twice: the second
//!   finds the first's entry). Claiming a free slot is a CAS on its status.
//! - Per-connection mutable state: last-seen time and packet count are atomics; the TCP window
//!   state (three words) is updated under a per-slot spin bit, as pf, OVS and Linux serialize
//!   one connection's updates. Lookups never take it.
//! - Slots are freed in two phases by the sweeper (one thread): expired -> tombstone; after a
//!   QSBR grace period -> empty. A worker can therefore use a slot for the whole processing of
//!   a packet without re-validating it.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::ip_proto;
use crate::mem::{prefetch, Mapping, Region};
use crate::qsbr::{Qsbr, Snapshot};
use crate::tcp::{TcpConn, TimeoutClass};

pub(crate) const BUCKET: usize = 16;

// Word indexes in a slot.
const W_META: usize = 0;
const W_ADDR4: usize = 1;
const W_PORTS: usize = 2;
const W_TCP: usize = 3; // three words
const W_TIME: usize = 6;
const W_PKTS: usize = 7;

// W_PKTS: packets in the low 40 bits, the creation second (mod 2^24, 194 days) above.
const PKTS_MASK: u64 = (1 << 40) - 1;
const BORN_SHIFT: u32 = 40;
const BORN_MASK: u32 = (1 << 24) - 1;

// W_META bits.
const STATUS_MASK: u64 = 0b11;
const EMPTY: u64 = 0;
const BUSY: u64 = 1;
const LIVE: u64 = 2;
const TOMB: u64 = 3;
const LOCK: u64 = 1 << 2;
/// Flag: this slot holds the IPv6 addresses of the slot before it.
const F_CONT: u64 = 1 << 3;
/// Flag: IPv6 entry (its addresses are in the next slot).
const F_WIDE: u64 = 1 << 4;
/// Flag: the reply direction has been seen.
pub const F_REPLIED: u64 = 1 << 5;
/// Flag: picked up mid-stream (TCP).
pub const F_PICKUP: u64 = 1 << 6;
/// Flag: expired by a worker (`expire_now`); the next sweep removes it.
const F_DOOMED: u64 = 1 << 7;
const CLASS_SHIFT: u32 = 8;
/// The timeout class takes bits 8-14 (values 0-5 today).
const CLASS_MASK: u64 = 0x7f;
/// Flag (bit 15): the connection must be re-validated whatever its epoch says (`restamp`
/// found it validated before a policy change, too long ago for its 16-bit stamp to tell).
const F_STALE: u64 = 1 << 15;
const EPOCH_SHIFT: u32 = 16;
/// How far behind the current epoch a stamp may fall before `restamp` renews it or marks it
/// stale: half the 16-bit range, so with `RESTAMP_EVERY` more epochs between passes no stamp
/// is ever 2^16 old (where it would read as new again).
pub const RESTAMP_AGE: u64 = 1 << 15;
/// Epochs between two `restamp` passes, at most (the publisher's side of the bound).
pub const RESTAMP_EVERY: u64 = 1 << 14;
const OWNER_SHIFT: u32 = 32;
const PEER_SHIFT: u32 = 48;
/// The meta bits that describe the connection (flags, class, stale, epoch, owner, peer), as
/// against those that describe the slot (status, update bit, continuation, wide, doomed).
const KEPT_META: u64 = !(STATUS_MASK | LOCK | F_CONT | F_WIDE | F_DOOMED);

/// A connection's words but its key, for `Table::place`.
struct Words {
    meta: u64,
    tcp: [u64; 3],
    time: u64,
    pkts: u64,
}

const TAG_NONE: u8 = 0;
const TAG_CONT: u8 = 1;
/// Tags per tag word: a bucket's 16 tags are two words.
const TAGS_PER_WORD: usize = 8;
const LOW_BYTES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The full epoch whose low 16 bits are `low`, at most `current` and less than 2^16 before it
/// (what a connection's stamp means, given the current epoch).
#[inline]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the low 16 bits of the current epoch, to compare with a stored stamp"
)]
pub fn full_epoch(current: u64, low: u16) -> u64 {
    current.wrapping_sub(u64::from((current as u16).wrapping_sub(low)))
}

/// Bit 8i+7 set for every byte i of `x` that is zero (exact: no borrow crosses bytes).
#[inline]
fn zero_bytes(x: u64) -> u64 {
    !(((x & !HIGH_BITS) + !HIGH_BITS) | x) & HIGH_BITS
}

/// The identity of a connection, in the direction of its first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Isolation domain (the segment): equal addresses in two zones are two connections.
    pub zone: u16,
    /// IP protocol.
    pub proto: u8,
    /// Source address (same family as `dst`).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (ICMP echo: the identifier).
    pub sport: u16,
    /// Destination port (ICMP echo: the identifier again, so the key is symmetric).
    pub dport: u16,
}

impl Key {
    /// The same connection seen from the other end.
    pub fn reversed(&self) -> Key {
        Key {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    fn is_v6(&self) -> bool {
        matches!(self.src, IpAddr::V6(_))
    }

    fn ports_word(&self) -> u64 {
        u64::from(self.sport)
            | u64::from(self.dport) << 16
            | u64::from(self.zone) << 32
            | u64::from(self.proto) << 48
            | u64::from(if self.is_v6() { 6u8 } else { 4u8 }) << 56
    }

    fn addr4_word(&self) -> u64 {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                u64::from(u32::from(s)) | u64::from(u32::from(d)) << 32
            }
            _ => 0,
        }
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "a u128 address split into its two 64-bit halves"
    )]
    fn addr6_words(&self) -> [u64; 4] {
        let w = |a: IpAddr| match a {
            IpAddr::V6(a) => {
                let v = u128::from(a);
                [v as u64, (v >> 64) as u64]
            }
            IpAddr::V4(_) => [0, 0],
        };
        let (s, d) = (w(self.src), w(self.dst));
        [s[0], s[1], d[0], d[1]]
    }
}

/// Why a connection could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// the table holds its configured maximum of connections, or the key's buckets are full
    TableFull,
    /// the vNIC holds its configured maximum of connections
    VnicLimit,
    /// the vNIC opened connections faster than its configured rate
    VnicRate,
    /// the two addresses are of different families
    MixedFamilies,
}

/// Per-class idle timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, indexed by `TimeoutClass`.
    pub tcp: [u32; 6],
    /// UDP before a reply was seen.
    pub udp_first: u32,
    /// UDP after a reply.
    pub udp_replied: u32,
    /// ICMP echo.
    pub icmp: u32,
    /// Other protocols.
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            // first packet, opening, established, closing, fin-wait, closed (TIME_WAIT)
            tcp: [30, 30, 86_400, 900, 45, 30],
            udp_first: 30,
            udp_replied: 120,
            icmp: 30,
            other: 60,
        }
    }
}

/// Table configuration (fixed at start).
#[derive(Debug, Clone)]
pub struct Config {
    /// Most live connections, in IPv4 units: an IPv6 connection counts as two.
    pub capacity: usize,
    /// vNIC ids are `0..vnics`.
    pub vnics: usize,
    /// Worker threads that will call `quiescent`.
    pub workers: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
}

/// Limits of one vNIC.
#[derive(Debug, Default)]
struct Vnic {
    count: AtomicU32,
    max: AtomicU32,
    /// New connections per second (0: unlimited).
    rate: AtomicU32,
    /// Token bucket: tokens (low 32 bits, in 1/1000 connection) and last refill ms (high 32).
    bucket: AtomicU64,
}

/// One 64-byte entry (eight words). All zeros is an empty slot.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub(crate) struct Slot {
    pub(crate) w: [AtomicU64; 8],
}

/// What a new connection starts with.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewConn {
    /// vNIC whose guest opened it (charged against its limits).
    pub owner: u16,
    /// vNIC on the other end (the owner again when it leaves the host).
    pub peer: u16,
    /// Initial TCP state, for TCP.
    pub tcp: Option<TcpConn>,
    /// Policy epoch it was validated under.
    pub epoch: u16,
    /// Rules that admitted it: (owner's egress, peer's ingress).
    pub rules: (u16, u16),
}

/// A found connection: its slot and which way this packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Slot index (valid until the caller's next quiescent state).
    pub slot: usize,
    /// 0: same direction as the first packet; 1: reply direction.
    pub dir: usize,
}

/// A connection as the operator view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Key in the opening direction.
    pub key: Key,
    /// vNIC that opened it.
    pub owner: u16,
    /// vNIC on the other end (same as owner when it leaves the host).
    pub peer: u16,
    /// Timeout class.
    pub class: TimeoutClass,
    /// Seconds since the last packet.
    pub idle_secs: u32,
    /// Seconds since it was created (modulo 2^24, about 194 days).
    pub age_secs: u32,
    /// Packets seen, both directions (modulo 2^40).
    pub packets: u64,
    /// Rule that admitted it on the owner's egress side.
    pub rule_egress: u16,
    /// Rule that admitted it on the peer's ingress side.
    pub rule_ingress: u16,
    /// Policy epoch it was last validated under (low 16 bits; `full_epoch` widens it).
    pub epoch: u16,
    /// Marked for re-validation by `Table::restamp`, whatever `epoch` says.
    pub stale: bool,
    /// The reply direction has been seen.
    pub replied: bool,
    /// TCP window state, for TCP.
    pub tcp: Option<TcpConn>,
    /// Idle past its timeout or cut (`expire_now`): the sweeper removes it soon, packets
    /// treat it as gone.
    pub expired: bool,
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Connections found expired and removed.
    pub expired: usize,
    /// Slots returned to the free pool after their grace period.
    pub reclaimed: usize,
}

/// A connection as it moves between tables: to a table of another size (a state file
/// converted at start) or to another switch (its vNIC migrated). Times are relative (idle and
/// age seconds), so a switch with another clock can take it; the rules that admitted it are
/// not carried: the receiving table marks it stale, so its next packet is judged by the
/// receiver's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Key in the opening direction.
    pub key: Key,
    /// vNIC that opened it (the receiver's id for it).
    pub owner: u16,
    /// vNIC on the other end (the owner again when it leaves the host).
    pub peer: u16,
    /// Timeout class (`TimeoutClass` as a number).
    pub class: u8,
    /// The reply direction has been seen.
    pub replied: bool,
    /// Picked up mid-stream (TCP).
    pub pickup: bool,
    /// TCP window state, `TcpConn::to_words` (zeros for other protocols).
    pub tcp: [u64; 3],
    /// Seconds since its last packet.
    pub idle_secs: u32,
    /// Seconds since it was created (modulo 2^24).
    pub age_secs: u32,
    /// Packets seen (modulo 2^40).
    pub packets: u64,
}

/// What `Table::adopt` did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// A new connection.
    New,
    /// The table had it: left as it was.
    Existing,
    /// The table had it through the rejoin port: its end is the vNIC again.
    Rejoined,
}

/// What `Table::recover` found in a table another process left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Connections kept (marked stale: each is judged again by its next packet).
    pub kept: usize,
    /// Half-written entries (a creator died before publishing them), cleared.
    pub unpublished: usize,
    /// Entries that were being removed or were cut, cleared.
    pub removed: usize,
    /// Connections idle past their timeout, cleared.
    pub expired: usize,
    /// Entries that do not read as a connection (bad family, a key in the wrong bucket, a
    /// broken IPv6 pair), cleared.
    pub invalid: usize,
    /// Connections whose TCP state was being updated when the process died (kept: each of
    /// the three words is whole).
    pub mid_update: usize,
}

/// Tombstoned slots on their way back to the free pool.
#[derive(Debug, Default)]
struct Reclaim {
    /// Tombstoned since the last snapshot.
    waiting: Vec<usize>,
    /// Tombstoned before `snapshot`; free once every worker passed a quiescent state since.
    grace: Vec<usize>,
    snapshot: Option<Snapshot>,
}

/// The shared connection table.
#[derive(Debug)]
pub struct Table {
    pub(crate) slots: Region<Slot>,
    /// One byte per slot, eight to a word (so a bucket's tags are compared two words at a
    /// time): 0 empty (or being claimed, or awaiting reclamation), 1 an IPv6 continuation,
    /// else hash bits of the connection's key.
    tags: Region<AtomicU64>,
    pub(crate) inserting: Box<[AtomicBool]>,
    nbuckets: usize,
    seed: u64,
    live: AtomicU32,
    /// Slot units in use (IPv4: 1, IPv6: 2), against `capacity`.
    used: AtomicU32,
    capacity: u32,
    vnics: Box<[Vnic]>,
    timeouts: Timeouts,
    qsbr: Qsbr,
    /// Reclamation state (control thread only; the mutex is never taken on a worker).
    reclaim: std::sync::Mutex<Reclaim>,
    /// The state file the slots and tags live in, when they outlive the process.
    pub(crate) file: Option<crate::state::Backing>,
}

/// Slots and buckets of a table for `capacity` connections: sized so that at most 75 % of
/// the slots are used at full capacity.
pub(crate) fn geometry(capacity: usize) -> (usize, usize) {
    let slots_needed = (capacity.max(1) * 4).div_ceil(3).max(BUCKET * 2);
    let nbuckets = slots_needed.div_ceil(BUCKET);
    (nbuckets, nbuckets * BUCKET)
}

/// Where a table's memory is: the slots, then the tags (a byte per slot), after a header
/// page. Returns (slots offset, tags offset, total bytes).
///
/// With 2 MiB of slots or more (32,768 slots: a capacity of about 24,500), each region starts
/// at a 2 MiB boundary and the whole is a multiple of 2 MiB, so huge pages can back them. A
/// smaller table is laid out on 4 KiB pages: aligning it to 2 MiB would make its state file
/// 6 MiB of mostly padding, allocated and zeroed at every start. A state file records its
/// size (header word 7), which `Table::open` checks against this layout for the geometry the
/// header names, so a file laid out by another rule is refused or converted, never misread.
pub(crate) fn memory_layout(slots: usize) -> (usize, usize, usize) {
    const HUGE: usize = 2 << 20;
    const PAGE: usize = 4 << 10;
    let bytes = slots * std::mem::size_of::<Slot>();
    let align = if bytes >= HUGE { HUGE } else { PAGE };
    let slots_at = align;
    let tags_at = (slots_at + bytes).next_multiple_of(align);
    let end = (tags_at + slots).next_multiple_of(align);
    (slots_at, tags_at, end)
}

impl Table {
    /// A table for `cfg.capacity` connections (at most 75 % of its slots are used), in the
    /// process's own memory (gone with it; `Table::open` makes one that outlives it).
    ///
    /// # Panics
    /// When the kernel refuses the (lazily backed, unreserved) anonymous mapping.
    pub fn new(cfg: &Config) -> Self {
        let (nbuckets, n) = geometry(cfg.capacity);
        let (_, _, len) = memory_layout(n);
        let map = Mapping::anonymous(len).unwrap_or_else(|e| {
            panic!("conntrack: cannot map {len} bytes for the connection table: {e}")
        });
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x6374_u64) | 1;
        Self::over(cfg, std::sync::Arc::new(map), nbuckets, seed, None)
    }

    /// A table whose slots and tags are in `map` (laid out by `memory_layout`), as they are.
    pub(crate) fn over(
        cfg: &Config,
        map: std::sync::Arc<Mapping>,
        nbuckets: usize,
        seed: u64,
        file: Option<crate::state::Backing>,
    ) -> Self {
        let n = nbuckets * BUCKET;
        let (slots_at, tags_at, _) = memory_layout(n);
        Table {
            // Huge pages (the mapping's hint): a lookup touches random lines of a table far
            // larger than the TLB's reach with 4 KiB pages.
            slots: Region::new(&map, slots_at, n),
            tags: Region::new(&map, tags_at, n / TAGS_PER_WORD),
            inserting: (0..nbuckets).map(|_| AtomicBool::new(false)).collect(),
            nbuckets,
            seed,
            live: AtomicU32::new(0),
            used: AtomicU32::new(0),
            capacity: u32::try_from(cfg.capacity).unwrap_or(u32::MAX),
            vnics: (0..cfg.vnics)
                .map(|_| Vnic {
                    max: AtomicU32::new(u32::MAX),
                    ..Default::default()
                })
                .collect(),
            timeouts: cfg.timeouts,
            qsbr: Qsbr::new(cfg.workers),
            reclaim: Default::default(),
            file,
        }
    }

    /// Where the slots are in this process's memory (addresses), to ask the kernel how they
    /// are backed (`/proc/self/smaps`: huge pages or not).
    pub fn slots_range(&self) -> std::ops::Range<usize> {
        let start = self.slots.as_ptr() as usize;
        start..start + self.slots.len() * std::mem::size_of::<Slot>()
    }

    /// Bytes of table memory per connection at full capacity (slots, tags and insert flags,
    /// divided by the capacity).
    pub fn bytes_per_connection(&self) -> f64 {
        let bytes = self.slots.len() * (std::mem::size_of::<Slot>() + 1) + self.nbuckets;
        bytes as f64 / f64::from(self.capacity.max(1))
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed) as usize
    }

    /// Whether the table holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The workers' quiescence counters.
    pub fn qsbr(&self) -> &Qsbr {
        &self.qsbr
    }

    /// Sets a vNIC's limits: most connections it may own (in capacity units: an IPv6
    /// connection counts twice, as against the table's capacity), and new connections per
    /// second (0: unlimited).
    pub fn set_vnic_limits(&self, vnic: u16, max: u32, rate: u32) {
        if let Some(v) = self.vnics.get(usize::from(vnic)) {
            v.max.store(max, Ordering::Relaxed);
            v.rate.store(rate, Ordering::Relaxed);
        }
    }

    /// Capacity units a vNIC's connections take now (IPv4: one per connection, IPv6: two).
    pub fn vnic_count(&self, vnic: u16) -> u32 {
        self.vnics
            .get(usize::from(vnic))
            .map_or(0, |v| v.count.load(Ordering::Relaxed))
    }

    /// The symmetric hash: both orientations of a key hash alike.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the 128-bit address folded into the hash by halves"
    )]
    pub fn hash(&self, k: &Key) -> u64 {
        let ep = |a: IpAddr, p: u16| -> u64 {
            let v: u128 = match a {
                IpAddr::V4(a) => u128::from(u32::from(a)),
                IpAddr::V6(a) => u128::from(a),
            };
            mix(mix(self.seed ^ v as u64, (v >> 64) as u64), u64::from(p))
        };
        let (a, b) = (ep(k.src, k.sport), ep(k.dst, k.dport));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        mix(mix(lo, hi), u64::from(k.zone) << 8 | u64::from(k.proto))
    }

    /// The key's candidate buckets: two choices, then the neighbour of each (whose tags share
    /// a cache line with the first two's). Multiply-shift range reduction, so the bucket count
    /// need not be a power of two and the table is sized to its capacity.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the multiply-shift reduction is below the bucket count, a usize"
    )]
    pub(crate) fn buckets(&self, hash: u64) -> [usize; 4] {
        let n = self.nbuckets as u64;
        let reduce = |h: u64| ((u128::from(h) * u128::from(n)) >> 64) as usize;
        let b1 = reduce(hash);
        let b2 = reduce(hash.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15);
        // A compare, not `% nbuckets`: a 64-bit division per neighbour was a tenth of `lookup`.
        let next = |b: usize| if b + 1 == self.nbuckets { 0 } else { b + 1 };
        [b1, b2, next(b1), next(b2)]
    }

    #[inline]
    fn tag(hash: u64) -> u8 {
        ((hash >> 56) as u8).max(2)
    }

    /// Slot `s`'s tag.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "one 8-bit tag taken out of a packed 64-bit tag word"
    )]
    fn tag_at(&self, s: usize, order: Ordering) -> u8 {
        (self.tags[s / TAGS_PER_WORD].load(order) >> (8 * (s % TAGS_PER_WORD))) as u8
    }

    /// Tags slot `s` (untagged until now). Release: whoever sees the tag sees the slot.
    #[inline]
    fn set_tag(&self, s: usize, tag: u8) {
        let shift = 8 * (s % TAGS_PER_WORD);
        self.tags[s / TAGS_PER_WORD].fetch_or(u64::from(tag) << shift, Ordering::Release);
    }

    /// Untags slot `s`.
    #[inline]
    fn clear_tag(&self, s: usize) {
        let shift = 8 * (s % TAGS_PER_WORD);
        self.tags[s / TAGS_PER_WORD].fetch_and(!(0xff << shift), Ordering::Release);
    }

    /// The slots of bucket `b` whose tag is `tag`, as a mask over its 16 slots (bit i: slot
    /// `b * BUCKET + i`), from two word loads and compares instead of 16 byte compares.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a bucket half (0 or 1) as a bit offset"
    )]
    fn bucket_matches(&self, b: usize, tag: u8, order: Ordering) -> u32 {
        let w = b * BUCKET / TAGS_PER_WORD;
        let pattern = u64::from(tag) * LOW_BYTES;
        let mut mask = 0u32;
        for half in 0..2 {
            let mut z = zero_bytes(self.tags[w + half].load(order) ^ pattern);
            while z != 0 {
                mask |= 1 << (z.trailing_zeros() / 8 + 8 * half as u32);
                z &= z - 1;
            }
        }
        mask
    }

    /// The continuation slot of the IPv6 entry in `slot` (recorded in its address word).
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the address word records the index of the continuation slot, below the capacity (a usize)"
    )]
    fn cont(&self, slot: usize) -> usize {
        self.slots[slot].w[W_ADDR4].load(Ordering::Relaxed) as usize
    }

    /// The key stored in `slot` (opening direction), if it holds a live connection.
    pub fn key_at(&self, slot: usize) -> Option<Key> {
        self.connections_in(slot..slot + 1, None, 0)
            .pop()
            .map(|c| c.key)
    }

    /// Compares slot `s` (LIVE, not a continuation) with `k` in both orientations; returns
    /// the direction. Both are checked in full: with equal ports (ICMP echo keys, or any flow
    /// with sport == dport) the ports alone cannot tell the orientation.
    #[inline]
    fn matches(&self, s: usize, k: &Key, meta: u64) -> Option<usize> {
        let w = &self.slots[s].w;
        let ports = w[W_PORTS].load(Ordering::Relaxed);
        let same = |key: &Key| {
            ports == key.ports_word()
                && if meta & F_WIDE != 0 {
                    let c = &self.slots[self.cont(s)].w;
                    key.addr6_words()
                        .iter()
                        .enumerate()
                        .all(|(i, &v)| c[1 + i].load(Ordering::Relaxed) == v)
                } else {
                    w[W_ADDR4].load(Ordering::Relaxed) == key.addr4_word()
                }
        };
        // A key equal to its own reverse (same endpoints) is direction 0.
        if same(k) {
            Some(0)
        } else if same(&k.reversed()) {
            Some(1)
        } else {
            None
        }
    }

    /// First stage of a burst lookup: prefetches the tag groups of the key's two buckets.
    #[inline]
    pub fn prefetch_buckets(&self, hash: u64) {
        let [b1, b2, ..] = self.buckets(hash);
        prefetch(&self.tags[b1 * BUCKET / TAGS_PER_WORD]);
        prefetch(&self.tags[b2 * BUCKET / TAGS_PER_WORD]);
    }

    /// Second stage: prefetches the slots of those buckets whose tag matches (after
    /// `prefetch_buckets` had time to bring the tags in). Then `lookup` finds them in cache.
    // Always inlined: called for every frame from one stage, and LLVM's heuristics stopped inlining
    // it once the stage loops grew (about 10 instructions a frame each; scripts/framecost).
    #[inline(always)]
    pub fn prefetch_slots(&self, hash: u64) {
        let tag = Self::tag(hash);
        let [b1, b2, ..] = self.buckets(hash);
        for b in [b1, b2] {
            let mut m = self.bucket_matches(b, tag, Ordering::Relaxed);
            while m != 0 {
                prefetch(&self.slots[b * BUCKET + m.trailing_zeros() as usize]);
                m &= m - 1;
            }
        }
    }

    /// Finds the connection `k` belongs to, in either direction. Takes no lock.
    #[inline]
    pub fn lookup(&self, k: &Key, hash: u64) -> Option<Found> {
        let tag = Self::tag(hash);
        for b in self.buckets(hash) {
            // Acquire on the tags pairs with their Release store after the slot went LIVE.
            let mut m = self.bucket_matches(b, tag, Ordering::Acquire);
            while m != 0 {
                let s = b * BUCKET + m.trailing_zeros() as usize;
                m &= m - 1;
                let meta = self.slots[s].w[W_META].load(Ordering::Acquire);
                // Doomed connections are gone for lookups (a new one may take their key).
                if meta & STATUS_MASK != LIVE || meta & (F_CONT | F_DOOMED) != 0 {
                    continue;
                }
                if let Some(dir) = self.matches(s, k, meta) {
                    return Some(Found { slot: s, dir });
                }
            }
        }
        None
    }

    /// Charges a new connection of `units` capacity units to `vnic`.
    fn admit(&self, vnic: u16, units: u32, now_ms: u32) -> Result<(), InsertError> {
        let Some(v) = self.vnics.get(usize::from(vnic)) else {
            return Ok(());
        };
        // Reserve, then check (as Linux does): the reservation itself cannot race.
        if v.count.fetch_add(units, Ordering::Relaxed) + units > v.max.load(Ordering::Relaxed) {
            v.count.fetch_sub(units, Ordering::Relaxed);
            return Err(InsertError::VnicLimit);
        }
        let rate = v.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Ok(());
        }
        // Token bucket in milli-connections, burst = one second's worth.
        let cap = u64::from(rate) * 1000;
        let res = v
            .bucket
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                let (tokens, last) = (b & 0xffff_ffff, (b >> 32) as u32);
                let elapsed = u64::from(now_ms.wrapping_sub(last).min(1000));
                let tokens = if last == 0 {
                    cap
                } else {
                    (tokens + elapsed * u64::from(rate)).min(cap)
                };
                (tokens >= 1000).then(|| (tokens - 1000) | u64::from(now_ms.max(1)) << 32)
            });
        if res.is_err() {
            v.count.fetch_sub(units, Ordering::Relaxed);
            return Err(InsertError::VnicRate);
        }
        Ok(())
    }

    fn release(&self, vnic: u16, units: u32) {
        if let Some(v) = self.vnics.get(usize::from(vnic)) {
            v.count.fetch_sub(units, Ordering::Relaxed);
        }
    }

    /// Creates the connection `k` (or finds it, if another core created it meanwhile:
    /// `Ok((found, false))`). `n.owner` is charged against its limits. `now` is in seconds,
    /// `now_ms` in milliseconds (for rate limits).
    pub fn insert(
        &self,
        k: &Key,
        hash: u64,
        n: &NewConn,
        now: u32,
        now_ms: u32,
    ) -> Result<(Found, bool), InsertError> {
        if k.src.is_ipv6() != k.dst.is_ipv6() {
            return Err(InsertError::MixedFamilies);
        }
        let flag = &self.inserting[self.buckets(hash)[0]];
        // Serialize creators of keys with this first bucket (both orientations of a key hash
        // alike, so they share it). Held for a few hundred ns; a creator never waits for
        // anything else while holding it.
        while flag
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let r = self.insert_locked(k, hash, n, now, now_ms);
        // Release: pairs with the next creator's Acquire, which then sees our slot.
        flag.store(false, Ordering::Release);
        r
    }

    // Always inlined into `insert`, with the `lookup` and `claim` it makes: once `adopt` (a
    // second caller) appeared, LLVM stopped inlining them here (+55 instructions per new
    // connection, scripts/framecost rules1k-new).
    #[inline(always)]
    fn insert_locked(
        &self,
        k: &Key,
        hash: u64,
        n: &NewConn,
        now: u32,
        now_ms: u32,
    ) -> Result<(Found, bool), InsertError> {
        let (owner, peer, tcp, epoch, rules) = (n.owner, n.peer, n.tcp.as_ref(), n.epoch, n.rules);
        if let Some(f) = self.lookup(k, hash) {
            return Ok((f, false));
        }
        let wide = k.is_v6();
        // Capacity is in slot units: an IPv6 connection takes two.
        let units = 1 + u32::from(wide);
        if self.used.fetch_add(units, Ordering::Relaxed) + units > self.capacity {
            self.used.fetch_sub(units, Ordering::Relaxed);
            return Err(InsertError::TableFull);
        }
        if let Err(e) = self.admit(owner, units, now_ms) {
            self.used.fetch_sub(units, Ordering::Relaxed);
            return Err(e);
        }
        let Some((s, cont)) = self.claim(hash, wide) else {
            self.used.fetch_sub(units, Ordering::Relaxed);
            self.release(owner, units);
            return Err(InsertError::TableFull);
        };
        self.live.fetch_add(1, Ordering::Relaxed);
        let class = tcp.map_or(TimeoutClass::FirstPacket, TcpConn::timeout_class) as u64;
        let meta = class << CLASS_SHIFT
            | u64::from(epoch) << EPOCH_SHIFT
            | u64::from(owner) << OWNER_SHIFT
            | u64::from(peer) << PEER_SHIFT;
        let words = Words {
            meta,
            tcp: tcp.map_or([0; 3], TcpConn::to_words),
            time: u64::from(now) | u64::from(rules.0) << 32 | u64::from(rules.1) << 48,
            pkts: u64::from(now & BORN_MASK) << BORN_SHIFT,
        };
        self.place(s, cont, k, hash, &words);
        Ok((Found { slot: s, dir: 0 }, true))
    }

    /// Writes a connection into the claimed (BUSY) slot `s` (and `cont`, for IPv6), then
    /// publishes it: LIVE, then its tag. Always inlined: it is the new-connection path's tail
    /// (scripts/framecost: rules1k-new).
    #[inline(always)]
    fn place(&self, s: usize, cont: usize, k: &Key, hash: u64, words: &Words) {
        let wide = k.is_v6();
        let w = &self.slots[s].w;
        w[W_ADDR4].store(
            if wide { cont as u64 } else { k.addr4_word() },
            Ordering::Relaxed,
        );
        w[W_PORTS].store(k.ports_word(), Ordering::Relaxed);
        for (i, v) in words.tcp.iter().enumerate() {
            w[W_TCP + i].store(*v, Ordering::Relaxed);
        }
        w[W_TIME].store(words.time, Ordering::Relaxed);
        w[W_PKTS].store(words.pkts, Ordering::Relaxed);
        let mut meta = words.meta & KEPT_META | LIVE;
        if wide {
            meta |= F_WIDE;
            let c = &self.slots[cont].w;
            for (i, v) in k.addr6_words().iter().enumerate() {
                c[1 + i].store(*v, Ordering::Relaxed);
            }
            // Release: the continuation's words are visible to whoever sees it LIVE.
            c[W_META].store(LIVE | F_CONT, Ordering::Release);
            self.set_tag(cont, TAG_CONT);
        }
        // Release: all the words above happen-before a reader's Acquire load of LIVE.
        w[W_META].store(meta, Ordering::Release);
        self.set_tag(s, Self::tag(hash));
    }

    /// Claims one free slot (two in one bucket for `wide`: the entry and its continuation),
    /// in the emptier of the key's buckets, falling back to the other. Returns (slot, cont).
    #[inline(always)]
    fn claim(&self, hash: u64, wide: bool) -> Option<(usize, usize)> {
        // Counted from the tags (a bucket's 16 are one cache line): an untagged slot is empty,
        // being claimed, or waiting for reclamation. Reading the slots' own words instead
        // took 32 cache misses per new connection.
        let free = |b: usize| {
            self.bucket_matches(b, TAG_NONE, Ordering::Relaxed)
                .count_ones()
        };
        let [b1, b2, n1, n2] = self.buckets(hash);
        let order = if free(b2) > free(b1) {
            [b2, b1, n2, n1]
        } else {
            [b1, b2, n1, n2]
        };
        let take = |s: usize| {
            self.tag_at(s, Ordering::Relaxed) == TAG_NONE
                && self.slots[s].w[W_META].load(Ordering::Relaxed) & STATUS_MASK == EMPTY
                && self.slots[s].w[W_META]
                    .compare_exchange(EMPTY, BUSY, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        };
        for b in order {
            let mut got: Option<usize> = None;
            for s in b * BUCKET..(b + 1) * BUCKET {
                if !take(s) {
                    continue;
                }
                match got {
                    None if wide => got = Some(s),
                    None => return Some((s, s)),
                    Some(first) => return Some((first, s)),
                }
            }
            // Only one free slot here for a wide entry: give it back.
            if let Some(first) = got {
                self.slots[first].w[W_META].store(EMPTY, Ordering::Release);
            }
        }
        None
    }

    /// Updates a connection's TCP state under its spin bit. `f` sees a copy and returns what
    /// to store (None: leave it) and a result for the caller.
    pub fn with_tcp<R>(&self, slot: usize, f: impl FnOnce(&mut TcpConn) -> (bool, R)) -> R {
        let w = &self.slots[slot].w;
        // Acquire: pairs with the previous holder's Release in fetch_and below.
        while w[W_META].fetch_or(LOCK, Ordering::Acquire) & LOCK != 0 {
            std::hint::spin_loop();
        }
        let mut c = TcpConn::from_words([
            w[W_TCP].load(Ordering::Relaxed),
            w[W_TCP + 1].load(Ordering::Relaxed),
            w[W_TCP + 2].load(Ordering::Relaxed),
        ]);
        let (store, r) = f(&mut c);
        if store {
            for (i, v) in c.to_words().iter().enumerate() {
                w[W_TCP + i].store(*v, Ordering::Relaxed);
            }
            let class = c.timeout_class() as u64;
            let _ = w[W_META].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some(m & !(CLASS_MASK << CLASS_SHIFT) | class << CLASS_SHIFT)
            });
        }
        // Release: our TCP words happen-before the next holder's Acquire.
        w[W_META].fetch_and(!LOCK, Ordering::Release);
        r
    }

    /// Records a packet: last-seen time (written at most once a second) and the packet count;
    /// `dir` 1 marks the connection as replied.
    ///
    /// The count is a plain load and store, not a locked add: it is a statistic (nothing
    /// decides on it), and a locked instruction per packet cost about 6 % of the full
    /// pipeline's rate (`docs/PERFORMANCE.md`). Two workers counting packets of one connection
    /// at the same instant may lose one of the two increments; the creation time that shares
    /// the word never changes while the connection is live, so it cannot be lost.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the clock is the low 32 bits of the time word"
    )]
    pub fn touch(&self, slot: usize, dir: usize, now: u32) {
        let w = &self.slots[slot].w;
        // 2^40 packets: the count wraps to 0 instead of carrying into the creation time.
        let p = w[W_PKTS].load(Ordering::Relaxed);
        w[W_PKTS].store(
            p & !PKTS_MASK | p.wrapping_add(1) & PKTS_MASK,
            Ordering::Relaxed,
        );
        let t = w[W_TIME].load(Ordering::Relaxed);
        if t as u32 != now {
            let _ = w[W_TIME].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t & !0xffff_ffff | u64::from(now))
            });
        }
        if dir == 1 {
            let m = w[W_META].load(Ordering::Relaxed);
            if m & F_REPLIED == 0 {
                w[W_META].fetch_or(F_REPLIED, Ordering::Relaxed);
            }
        }
    }

    /// The policy epoch a connection was last validated under (its low 16 bits).
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the epoch field of the meta word is 16 bits"
    )]
    pub fn epoch(&self, slot: usize) -> u16 {
        (self.slots[slot].w[W_META].load(Ordering::Relaxed) >> EPOCH_SHIFT) as u16
    }

    /// The full epoch the connection was last validated under, given the `current` one, or
    /// `None` when it must be re-validated regardless (`restamp` marked it stale). Exact as
    /// long as `restamp` runs at least every `RESTAMP_EVERY` epochs (the switch's publisher
    /// does): no live stamp is then 2^16 epochs old.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the epoch field of the meta word is 16 bits"
    )]
    pub fn validated_at(&self, slot: usize, current: u64) -> Option<u64> {
        let m = self.slots[slot].w[W_META].load(Ordering::Relaxed);
        if m & F_STALE != 0 {
            return None;
        }
        Some(full_epoch(current, (m >> EPOCH_SHIFT) as u16))
    }

    /// Keeps every connection's 16-bit epoch stamp meaningful across wrap-around. For each
    /// connection validated `RESTAMP_AGE` or more epochs before `current`: if neither of its
    /// vNICs' policies changed since (`changed_at(vnic)`: the epoch of the vNIC's last policy
    /// change), its stamp is renewed to `current` (it is as valid now as it was); otherwise it
    /// is marked stale, so that its next packet re-validates it whatever the stamp reads.
    /// Returns (renewed, marked stale). A full pass over the table, on the control thread;
    /// racing workers' re-validations win (the update is a CAS that re-checks the stamp).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the epoch, owner and peer fields of the meta word are 16 bits each"
    )]
    pub fn restamp(&self, current: u64, changed_at: impl Fn(u16) -> u64) -> (usize, usize) {
        let (mut renewed, mut marked) = (0, 0);
        for s in self.tagged(0..self.slots.len()) {
            let mut stale = false;
            let r =
                self.slots[s].w[W_META].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                    if m & STATUS_MASK != LIVE || m & F_CONT != 0 || m & F_STALE != 0 {
                        return None;
                    }
                    let at = full_epoch(current, (m >> EPOCH_SHIFT) as u16);
                    if current - at < RESTAMP_AGE {
                        return None;
                    }
                    let (owner, peer) = ((m >> OWNER_SHIFT) as u16, (m >> PEER_SHIFT) as u16);
                    stale = changed_at(owner).max(changed_at(peer)) > at;
                    Some(if stale {
                        m | F_STALE
                    } else {
                        m & !(0xffff << EPOCH_SHIFT) | (current & 0xffff) << EPOCH_SHIFT
                    })
                });
            match (r, stale) {
                (Err(_), _) => {}
                (Ok(_), false) => renewed += 1,
                (Ok(_), true) => marked += 1,
            }
        }
        (renewed, marked)
    }

    /// Records a re-validation under `epoch` with the rules that now admit the connection,
    /// and the vNIC now on its far end (`peer`: `None` leaves it as it is). The owner never
    /// changes: it is the vNIC charged for the connection.
    pub fn revalidated(&self, slot: usize, epoch: u16, rules: (u16, u16), peer: Option<u16>) {
        let w = &self.slots[slot].w;
        let _ = w[W_META].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
            let m = m & !(0xffff << EPOCH_SHIFT | F_STALE) | u64::from(epoch) << EPOCH_SHIFT;
            Some(match peer {
                Some(p) => m & !(0xffff << PEER_SHIFT) | u64::from(p) << PEER_SHIFT,
                None => m,
            })
        });
        let _ = w[W_TIME].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            Some(t & 0xffff_ffff | u64::from(rules.0) << 32 | u64::from(rules.1) << 48)
        });
    }

    /// The connection's (owner, peer) vNICs: the opener, and the far end (the owner again
    /// while the far end is unknown).
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the owner and peer fields of the meta word are 16 bits each"
    )]
    pub fn endpoints(&self, slot: usize) -> (u16, u16) {
        let m = self.slots[slot].w[W_META].load(Ordering::Relaxed);
        ((m >> OWNER_SHIFT) as u16, (m >> PEER_SHIFT) as u16)
    }

    /// The rules that admitted the connection: (owner's egress, peer's ingress) indexes,
    /// `u16::MAX` for none.
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the two rule ids are 16-bit fields of the time word"
    )]
    pub fn rules(&self, slot: usize) -> (u16, u16) {
        let t = self.slots[slot].w[W_TIME].load(Ordering::Relaxed);
        ((t >> 32) as u16, (t >> 48) as u16)
    }

    /// Whether the reply direction was seen.
    #[inline]
    pub fn replied(&self, slot: usize) -> bool {
        self.slots[slot].w[W_META].load(Ordering::Relaxed) & F_REPLIED != 0
    }

    fn timeout(&self, meta: u64, proto: u8) -> u32 {
        let t = &self.timeouts;
        match proto {
            ip_proto::TCP => t.tcp[((meta >> CLASS_SHIFT) & CLASS_MASK).min(5) as usize],
            ip_proto::UDP if meta & F_REPLIED != 0 => t.udp_replied,
            ip_proto::UDP => t.udp_first,
            ip_proto::ICMP | ip_proto::ICMPV6 => t.icmp,
            _ => t.other,
        }
    }

    /// Whether the connection in `slot` has been idle longer than its timeout.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the protocol is the top byte of the ports word, the clock the low 32 bits of the time word"
    )]
    pub fn expired(&self, slot: usize, now: u32) -> bool {
        let w = &self.slots[slot].w;
        let meta = w[W_META].load(Ordering::Relaxed);
        let proto = (w[W_PORTS].load(Ordering::Relaxed) >> 48) as u8;
        let seen = w[W_TIME].load(Ordering::Relaxed) as u32;
        // A last-seen time in the future is idle 0: never expired. (Not through `idle_secs`:
        // its select cost the frame path 2-3 instructions a frame where this `&&` is a branch.)
        meta & F_DOOMED != 0
            || (!is_future(now, seen) && now.wrapping_sub(seen) > self.timeout(meta, proto))
    }

    /// Makes the connection in `slot` expire now: lookups still find it until the next sweep
    /// removes it, and callers treat it as gone (`expired`). For workers (a policy cut it, a
    /// RST closed it): it takes no lock.
    pub fn expire_now(&self, slot: usize) {
        self.slots[slot].w[W_META].fetch_or(F_DOOMED, Ordering::Relaxed);
    }

    /// Removes the connection in `slot` now. Returns false if it was already gone. Control
    /// thread only (it queues the slot for reclamation).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the owner field of the meta word is 16 bits"
    )]
    pub fn remove(&self, slot: usize) -> bool {
        let w = &self.slots[slot].w;
        let mut meta = w[W_META].load(Ordering::Relaxed);
        loop {
            if meta & STATUS_MASK != LIVE || meta & F_CONT != 0 {
                return false;
            }
            if meta & LOCK != 0 {
                std::hint::spin_loop();
                meta = w[W_META].load(Ordering::Relaxed);
                continue;
            }
            match w[W_META].compare_exchange_weak(
                meta,
                meta & !STATUS_MASK | TOMB,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(m) => meta = m,
            }
        }
        self.clear_tag(slot);
        if meta & F_WIDE != 0 {
            let c = self.cont(slot);
            self.slots[c].w[W_META].store(TOMB | F_CONT, Ordering::Release);
            self.clear_tag(c);
        }
        let units = 1 + u32::from(meta & F_WIDE != 0);
        self.release((meta >> OWNER_SHIFT) as u16, units);
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.used.fetch_sub(units, Ordering::Relaxed);
        self.lock_reclaim().waiting.push(slot);
        true
    }

    /// The slots of `range` that may hold a connection's first slot: those with a key tag.
    /// Scanning the tags (one byte a slot) instead of the slots (64 bytes) keeps a pass over a
    /// mostly empty table from reading it all and flushing the workers' caches.
    fn tagged(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = usize> + '_ {
        range.filter(|&s| self.tag_at(s, Ordering::Relaxed) > TAG_CONT)
    }

    fn lock_reclaim(&self) -> std::sync::MutexGuard<'_, Reclaim> {
        self.reclaim.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ages the table: removes expired connections and returns slots whose grace period has
    /// passed to the free pool. Call from one thread (the control thread), periodically.
    pub fn sweep(&self, now: u32) -> SweepStats {
        let mut st = SweepStats::default();
        // Slots tombstoned before the last snapshot can be reused once every worker passed a
        // quiescent state since it was taken.
        {
            let mut r = self.lock_reclaim();
            if r.snapshot.as_ref().is_some_and(|s| self.qsbr.passed(s)) {
                for slot in std::mem::take(&mut r.grace) {
                    self.free(slot);
                    st.reclaimed += 1;
                }
                r.snapshot = None;
            }
        }
        for s in self.tagged(0..self.slots.len()) {
            let meta = self.slots[s].w[W_META].load(Ordering::Acquire);
            if meta & STATUS_MASK == LIVE
                && meta & F_CONT == 0
                && self.expired(s, now)
                && self.remove(s)
            {
                st.expired += 1;
            }
        }
        // Start the grace period of everything tombstoned so far (the snapshot is taken after
        // the tombstones were written, so a worker that still saw one LIVE has not yet passed
        // a quiescent state).
        let mut r = self.lock_reclaim();
        if r.snapshot.is_none() && !r.waiting.is_empty() {
            r.grace = std::mem::take(&mut r.waiting);
            r.snapshot = Some(self.qsbr.snapshot());
        }
        st
    }

    fn free(&self, slot: usize) {
        let w = &self.slots[slot].w;
        let wide = w[W_META].load(Ordering::Relaxed) & F_WIDE != 0;
        if wide {
            self.slots[self.cont(slot)].w[W_META].store(EMPTY, Ordering::Release);
        }
        w[W_META].store(EMPTY, Ordering::Release);
    }

    /// Removes every connection `vnic` owns or is the peer of; returns how many.
    pub fn flush_vnic(&self, vnic: u16) -> usize {
        self.retain(|owner, peer| owner != vnic && peer != vnic)
    }

    /// The live connections of `vnic` (owner or peer), or all with `None` (slow path).
    pub fn connections(&self, vnic: Option<u16>, now: u32) -> Vec<ConnInfo> {
        self.connections_in(0..self.slots.len(), vnic, now)
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "every field read back from its packed word has exactly the bits cast to"
    )]
    fn connections_in(
        &self,
        range: std::ops::Range<usize>,
        vnic: Option<u16>,
        now: u32,
    ) -> Vec<ConnInfo> {
        let mut out = Vec::new();
        for s in self.tagged(range) {
            let w = &self.slots[s].w;
            let meta = w[W_META].load(Ordering::Acquire);
            if meta & STATUS_MASK != LIVE || meta & F_CONT != 0 {
                continue;
            }
            let (owner, peer) = ((meta >> OWNER_SHIFT) as u16, (meta >> PEER_SHIFT) as u16);
            if vnic.is_some_and(|v| v != owner && v != peer) {
                continue;
            }
            let key = self.key_of(s, meta);
            let proto = key.proto;
            let time = w[W_TIME].load(Ordering::Relaxed);
            let pkts = w[W_PKTS].load(Ordering::Relaxed);
            // CLASS_MASK keeps three bits: the cast cannot truncate.
            let class = TimeoutClass::from_repr(((meta >> CLASS_SHIFT) & CLASS_MASK) as u8)
                .unwrap_or(TimeoutClass::Closed);
            out.push(ConnInfo {
                key,
                owner,
                peer,
                class,
                // A worker may have touched it after `now` was read: idle 0, not 2^32 - 1.
                idle_secs: idle_secs(now, time as u32),
                packets: pkts & PKTS_MASK,
                age_secs: age_secs(now, (pkts >> BORN_SHIFT) as u32),
                rule_egress: (time >> 32) as u16,
                rule_ingress: (time >> 48) as u16,
                epoch: (meta >> EPOCH_SHIFT) as u16,
                stale: meta & F_STALE != 0,
                replied: meta & F_REPLIED != 0,
                expired: self.expired(s, now),
                tcp: (proto == ip_proto::TCP).then(|| {
                    TcpConn::from_words([
                        w[W_TCP].load(Ordering::Relaxed),
                        w[W_TCP + 1].load(Ordering::Relaxed),
                        w[W_TCP + 2].load(Ordering::Relaxed),
                    ])
                }),
            });
        }
        out
    }

    /// The key of the connection whose head is slot `s` (with `meta`, its meta word).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "every field read back from its packed word has exactly the bits cast to"
    )]
    fn key_of(&self, s: usize, meta: u64) -> Key {
        let w = &self.slots[s].w;
        let ports = w[W_PORTS].load(Ordering::Relaxed);
        let (src, dst) = if meta & F_WIDE != 0 {
            let c = &self.slots[self.cont(s)].w;
            let a = |i: usize| {
                let lo = u128::from(c[1 + i].load(Ordering::Relaxed));
                let hi = u128::from(c[2 + i].load(Ordering::Relaxed));
                IpAddr::V6((lo | hi << 64).into())
            };
            (a(0), a(2))
        } else {
            let a = w[W_ADDR4].load(Ordering::Relaxed);
            (
                IpAddr::V4((a as u32).into()),
                IpAddr::V4(((a >> 32) as u32).into()),
            )
        };
        Key {
            zone: (ports >> 32) as u16,
            proto: (ports >> 48) as u8,
            src,
            dst,
            sport: ports as u16,
            dport: (ports >> 16) as u16,
        }
    }

    /// The live connections of `vnic` (owner or peer), or all with `None`, as records to move
    /// to another table (`adopt`). Slow path: scans the table.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "every field read back from its packed word has exactly the bits cast to"
    )]
    pub fn records(&self, vnic: Option<u16>, now: u32) -> Vec<Record> {
        let mut out = Vec::new();
        for s in self.tagged(0..self.slots.len()) {
            let w = &self.slots[s].w;
            let meta = w[W_META].load(Ordering::Acquire);
            if meta & STATUS_MASK != LIVE || meta & F_CONT != 0 || self.expired(s, now) {
                continue;
            }
            let (owner, peer) = ((meta >> OWNER_SHIFT) as u16, (meta >> PEER_SHIFT) as u16);
            if vnic.is_some_and(|v| v != owner && v != peer) {
                continue;
            }
            let time = w[W_TIME].load(Ordering::Relaxed);
            let pkts = w[W_PKTS].load(Ordering::Relaxed);
            let tcp = self.with_tcp(s, |c| (false, c.to_words()));
            out.push(Record {
                key: self.key_of(s, meta),
                owner,
                peer,
                class: ((meta >> CLASS_SHIFT) & CLASS_MASK) as u8,
                replied: meta & F_REPLIED != 0,
                pickup: meta & F_PICKUP != 0,
                tcp,
                idle_secs: idle_secs(now, time as u32).min(1 << 30),
                age_secs: age_secs(now, (pkts >> BORN_SHIFT) as u32),
                packets: pkts & PKTS_MASK,
            });
        }
        out
    }

    /// Takes a connection moved from another table. It is marked stale: its next packet is
    /// judged by this switch's rules, which record the admitting rules again. `limits`:
    /// charge the owner against its maximum (a migrated vNIC's connections), or not (a
    /// converted state file's, which were admitted already).
    ///
    /// When the table already has the connection: with `rejoin = Some((via, vnic))` (a guest
    /// coming back to a switch that kept its peers' connections through the port `via`), an
    /// end that is `via` becomes `vnic` again, and the TCP state is the record's (the one the
    /// traffic last moved); otherwise the entry is left as it was.
    pub fn adopt(
        &self,
        r: &Record,
        now: u32,
        limits: bool,
        rejoin: Option<(u16, u16)>,
    ) -> Result<Adopted, InsertError> {
        let k = &r.key;
        if k.src.is_ipv6() != k.dst.is_ipv6() {
            return Err(InsertError::MixedFamilies);
        }
        let hash = self.hash(k);
        let flag = &self.inserting[self.buckets(hash)[0]];
        while flag
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let res = (|| {
            if let Some(f) = self.lookup(k, hash) {
                return Ok(match rejoin {
                    Some((via, vnic)) if self.rejoin(f.slot, via, vnic, r) => Adopted::Rejoined,
                    _ => Adopted::Existing,
                });
            }
            let wide = k.is_v6();
            let units = 1 + u32::from(wide);
            if self.used.fetch_add(units, Ordering::Relaxed) + units > self.capacity {
                self.used.fetch_sub(units, Ordering::Relaxed);
                return Err(InsertError::TableFull);
            }
            if let Some(v) = self.vnics.get(usize::from(r.owner)) {
                let before = v.count.fetch_add(units, Ordering::Relaxed);
                if limits && before + units > v.max.load(Ordering::Relaxed) {
                    v.count.fetch_sub(units, Ordering::Relaxed);
                    self.used.fetch_sub(units, Ordering::Relaxed);
                    return Err(InsertError::VnicLimit);
                }
            }
            let Some((s, cont)) = self.claim(hash, wide) else {
                self.used.fetch_sub(units, Ordering::Relaxed);
                self.release(r.owner, units);
                return Err(InsertError::TableFull);
            };
            self.live.fetch_add(1, Ordering::Relaxed);
            let mut meta = (u64::from(r.class) & CLASS_MASK) << CLASS_SHIFT
                | F_STALE
                | u64::from(r.owner) << OWNER_SHIFT
                | u64::from(r.peer) << PEER_SHIFT;
            if r.replied {
                meta |= F_REPLIED;
            }
            if r.pickup {
                meta |= F_PICKUP;
            }
            let words = Words {
                meta,
                tcp: r.tcp,
                time: u64::from(now.wrapping_sub(r.idle_secs))
                    | u64::from(u16::MAX) << 32
                    | u64::from(u16::MAX) << 48,
                pkts: r.packets & PKTS_MASK
                    | u64::from(now.wrapping_sub(r.age_secs) & BORN_MASK) << BORN_SHIFT,
            };
            self.place(s, cont, k, hash, &words);
            Ok(Adopted::New)
        })();
        flag.store(false, Ordering::Release);
        res
    }

    /// `adopt`'s rejoin: in `slot`, ends that are `via` become `vnic`, the TCP state becomes
    /// the record's, and the connection is stale. False when no end was `via`.
    fn rejoin(&self, slot: usize, via: u16, vnic: u16, r: &Record) -> bool {
        if !self.repoint(slot, via, vnic) {
            return false;
        }
        if r.key.proto == ip_proto::TCP {
            self.with_tcp(slot, |c| {
                *c = TcpConn::from_words(r.tcp);
                (true, ())
            });
        }
        true
    }

    /// In `slot`, makes the ends that are `from` into `to` and the connection stale (judged
    /// again, between its new ends, on its next packet); when `from` owned it, the charge for
    /// it moves to `to`. False when the slot holds no live connection with an end `from`.
    /// Control thread only (`handover`, `rejoin`).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the owner and peer fields of the meta word are 16 bits each"
    )]
    fn repoint(&self, slot: usize, from: u16, to: u16) -> bool {
        let swap = |id: u16| if id == from { to } else { id };
        let r = self.slots[slot].w[W_META].fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
            let (owner, peer) = ((m >> OWNER_SHIFT) as u16, (m >> PEER_SHIFT) as u16);
            (m & STATUS_MASK == LIVE && (owner == from || peer == from)).then(|| {
                m & !(0xffff << OWNER_SHIFT | 0xffff << PEER_SHIFT)
                    | F_STALE
                    | u64::from(swap(owner)) << OWNER_SHIFT
                    | u64::from(swap(peer)) << PEER_SHIFT
            })
        });
        let Ok(meta) = r else {
            return false;
        };
        if (meta >> OWNER_SHIFT) as u16 == from {
            let units = 1 + u32::from(meta & F_WIDE != 0);
            self.release(from, units);
            if let Some(v) = self.vnics.get(usize::from(to)) {
                v.count.fetch_add(units, Ordering::Relaxed);
            }
        }
        true
    }

    /// Makes a table another process left consistent before anyone uses it (no other thread
    /// may touch the table meanwhile): clears what a process that died mid-write left
    /// half-done (unpublished entries, tombstones, cut connections, half-removed IPv6 pairs),
    /// clears update bits, drops expired connections and entries that do not read as a
    /// connection, marks every kept connection stale (the new process's policy judges it
    /// again on its next packet), and rebuilds the tags and the counts from the slots.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the owner field of the meta word is 16 bits, the family its top byte"
    )]
    pub fn recover(&self, now: u32) -> Recovery {
        let mut r = Recovery::default();
        for t in self.tags.iter() {
            t.store(0, Ordering::Relaxed);
        }
        self.live.store(0, Ordering::Relaxed);
        self.used.store(0, Ordering::Relaxed);
        for v in self.vnics.iter() {
            v.count.store(0, Ordering::Relaxed);
            v.bucket.store(0, Ordering::Relaxed);
        }
        let n = self.slots.len();
        // Continuation slots a kept head points to.
        let mut kept_cont = vec![false; n];
        for s in 0..n {
            let w = &self.slots[s].w;
            let meta = w[W_META].load(Ordering::Relaxed);
            match meta & STATUS_MASK {
                EMPTY => {
                    if meta != 0 {
                        w[W_META].store(EMPTY, Ordering::Relaxed);
                    }
                    continue;
                }
                BUSY => {
                    r.unpublished += 1;
                    w[W_META].store(EMPTY, Ordering::Relaxed);
                    continue;
                }
                TOMB => {
                    r.removed += usize::from(meta & F_CONT == 0);
                    w[W_META].store(EMPTY, Ordering::Relaxed);
                    continue;
                }
                _ => {}
            }
            if meta & F_CONT != 0 {
                continue; // judged with its head, below
            }
            let wide = meta & F_WIDE != 0;
            let cont = self.cont(s);
            let family = (w[W_PORTS].load(Ordering::Relaxed) >> 56) as u8;
            let pair_ok = !wide
                || (cont != s
                    && cont / BUCKET == s / BUCKET
                    && self.slots[cont].w[W_META].load(Ordering::Relaxed) == LIVE | F_CONT
                    && !kept_cont[cont]);
            // The key's hash, once it can be read (an IPv6 key only through a sound pair).
            let hash = (family == if wide { 6 } else { 4 } && pair_ok)
                .then(|| self.hash(&self.key_of(s, meta)));
            let verdict = if meta & F_DOOMED != 0 {
                Some(&mut r.removed)
            } else if !hash.is_some_and(|h| self.buckets(h).contains(&(s / BUCKET))) {
                // Not a key, or one in a bucket its hash does not lead to (torn).
                Some(&mut r.invalid)
            } else if self.expired(s, now) {
                Some(&mut r.expired)
            } else {
                None
            };
            if let Some(count) = verdict {
                *count += 1;
                w[W_META].store(EMPTY, Ordering::Relaxed);
                continue;
            }
            if meta & LOCK != 0 {
                r.mid_update += 1;
            }
            // A last-seen time in the future (only a damaged file has one: the times are the
            // boot's clock, and the header names the boot) reads as idle 0 until the clock
            // gets there, decades for the worst: it starts ageing now.
            let time = w[W_TIME].load(Ordering::Relaxed);
            if is_future(now, time as u32) {
                w[W_TIME].store(time & !0xffff_ffff | u64::from(now), Ordering::Relaxed);
            }
            w[W_META].store(meta & !LOCK | F_STALE, Ordering::Relaxed);
            let units = 1 + u32::from(wide);
            if wide {
                kept_cont[cont] = true;
                self.set_tag(cont, TAG_CONT);
            }
            // Kept, so its hash was read above.
            if let Some(h) = hash {
                self.set_tag(s, Self::tag(h));
            }
            if let Some(v) = self.vnics.get(usize::from((meta >> OWNER_SHIFT) as u16)) {
                v.count.fetch_add(units, Ordering::Relaxed);
            }
            self.live.fetch_add(1, Ordering::Relaxed);
            self.used.fetch_add(units, Ordering::Relaxed);
            r.kept += 1;
        }
        // Continuations no kept head points to: their head was cleared or never published.
        for (s, kept) in kept_cont.iter().enumerate() {
            let w = &self.slots[s].w;
            if !kept && w[W_META].load(Ordering::Relaxed) & F_CONT != 0 {
                w[W_META].store(EMPTY, Ordering::Relaxed);
            }
        }
        for f in self.inserting.iter() {
            f.store(false, Ordering::Relaxed);
        }
        *self.lock_reclaim() = Reclaim::default();
        r
    }

    /// Hands the connections of `vnic` over after its guest moved to another switch: a
    /// connection whose other end stays on this switch (`local(other)`, and not `via`) now
    /// goes through `via` (the port that reaches the other switch) in place of `vnic`, so it
    /// goes on for the end that stayed; the others leave with the guest and are removed.
    /// Returns (kept through `via`, removed). Control thread only.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the owner and peer fields of the meta word are 16 bits each"
    )]
    pub fn handover(&self, vnic: u16, via: u16, local: impl Fn(u16) -> bool) -> (usize, usize) {
        let (mut kept, mut removed) = (0, 0);
        for s in self.tagged(0..self.slots.len()) {
            let w = &self.slots[s].w;
            let meta = w[W_META].load(Ordering::Acquire);
            let (owner, peer) = ((meta >> OWNER_SHIFT) as u16, (meta >> PEER_SHIFT) as u16);
            if meta & STATUS_MASK != LIVE || meta & F_CONT != 0 || (owner != vnic && peer != vnic) {
                continue;
            }
            let other = if owner == vnic { peer } else { owner };
            if other == vnic || other == via || !local(other) {
                removed += usize::from(self.remove(s));
                continue;
            }
            // Stale: judged again, between the vNIC that stayed and `via`.
            if self.repoint(s, vnic, via) {
                kept += 1;
            }
        }
        (kept, removed)
    }

    /// Removes every connection for which `keep(owner, peer)` is false; returns how many
    /// (a restarted switch drops those of vNICs it no longer has). Control thread only.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the owner and peer fields of the meta word are 16 bits each"
    )]
    pub fn retain(&self, keep: impl Fn(u16, u16) -> bool) -> usize {
        let mut n = 0;
        for s in self.tagged(0..self.slots.len()) {
            let meta = self.slots[s].w[W_META].load(Ordering::Acquire);
            let (owner, peer) = ((meta >> OWNER_SHIFT) as u16, (meta >> PEER_SHIFT) as u16);
            if meta & STATUS_MASK == LIVE
                && meta & F_CONT == 0
                && !keep(owner, peer)
                && self.remove(s)
            {
                n += 1;
            }
        }
        n
    }
}

/// Whether the clock reading `t` is after `now` (the difference, wrapped, is over 2^31): a
/// worker may touch a connection after `now` was read (the sweeper reads the clock once for a
/// whole pass).
#[inline]
fn is_future(now: u32, t: u32) -> bool {
    now.wrapping_sub(t) >= 1 << 31
}

/// Seconds since a connection was last seen at `seen`: 0 for a time in the future, not four
/// billion, as `expired` reads it (`records`, and `connections`: a worker may touch one after
/// the operator view read the clock).
#[inline]
fn idle_secs(now: u32, seen: u32) -> u32 {
    if is_future(now, seen) {
        0
    } else {
        now.wrapping_sub(seen)
    }
}

/// Seconds since a connection's birth, kept as the low 24 bits of the clock (`BORN_MASK`: ages
/// wrap after 194 days): 0 for a birth up to a minute after `now` (a worker may create one
/// after the operator view read the clock), not 16,777,215.
#[inline]
fn age_secs(now: u32, born: u32) -> u32 {
    let age = now.wrapping_sub(born) & BORN_MASK;
    if BORN_MASK - age < 60 {
        0
    } else {
        age
    }
}

#[inline]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the 128-bit product folded to 64 bits by halves (truncation is the intent)"
)]
fn mix(a: u64, b: u64) -> u64 {
    // A 64-bit multiply-xorshift mixer (as in wyhash/foldhash): not cryptographic, but seeded
    // per process, so a guest cannot aim its flows at one bucket without knowing the seed.
    let m = u128::from(a ^ 0x2d35_8dcc_aa6c_78a5) * u128::from(b ^ 0x8bb8_4b93_962e_acc9);
    (m as u64) ^ (m >> 64) as u64
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    /// `zero_bytes` flags exactly the zero bytes, whatever the neighbouring bytes hold.
    #[test]
    fn zero_bytes_is_exact() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Zero some bytes, and put 0x01 / 0x80 / 0xff (borrow and carry bait) in others.
            let mut v = x;
            for i in 0..8 {
                match (x >> (i * 3)) & 7 {
                    0 | 1 => v &= !(0xff << (8 * i)),
                    2 => v = v & !(0xff << (8 * i)) | 1 << (8 * i),
                    3 => v = v & !(0xff << (8 * i)) | 0x80 << (8 * i),
                    4 => v |= 0xff << (8 * i),
                    _ => {}
                }
            }
            let want = (0..8)
                .filter(|i| (v >> (8 * i)) & 0xff == 0)
                .fold(0u64, |m, i| m | 0x80 << (8 * i));
            assert_eq!(zero_bytes(v), want, "{v:#018x}");
        }
    }

    /// Tags set and cleared one byte at a time are found by the word-wise bucket match, and
    /// leave their neighbours alone.
    #[test]
    fn bucket_matches_sees_single_tags() {
        let t = Table::new(&Config {
            capacity: 1000,
            vnics: 1,
            workers: 1,
            timeouts: Timeouts::default(),
        });
        let b = 3;
        for i in [0usize, 1, 7, 8, 9, 15] {
            t.set_tag(b * BUCKET + i, 0x42);
        }
        t.set_tag(b * BUCKET + 5, TAG_CONT);
        assert_eq!(
            t.bucket_matches(b, 0x42, Ordering::Relaxed),
            0b1000_0011_1000_0011
        );
        assert_eq!(t.bucket_matches(b, TAG_CONT, Ordering::Relaxed), 1 << 5);
        assert_eq!(
            t.bucket_matches(b, TAG_NONE, Ordering::Relaxed)
                .count_ones(),
            9
        );
        t.clear_tag(b * BUCKET + 8);
        assert_eq!(
            t.bucket_matches(b, 0x42, Ordering::Relaxed),
            0b1000_0010_1000_0011
        );
        assert_eq!(t.tag_at(b * BUCKET + 9, Ordering::Relaxed), 0x42);
        assert_eq!(t.bucket_matches(b + 1, 0x42, Ordering::Relaxed), 0);
    }

    /// The operator view reads a connection a worker touched (or created) after it read the
    /// clock as idle 0 (it showed 4294967295) and age 0, and one seen before as idle for the
    /// seconds since.
    #[test]
    fn connections_read_a_later_touch_as_idle_zero() {
        let t = Table::new(&Config {
            capacity: 1000,
            vnics: 1,
            workers: 1,
            timeouts: Timeouts::default(),
        });
        let k = Key {
            zone: 1,
            proto: ip_proto::UDP,
            src: [10, 0, 0, 1].into(),
            dst: [10, 0, 0, 2].into(),
            sport: 1000,
            dport: 53,
        };
        t.insert(&k, t.hash(&k), &NewConn::default(), 100, 100_000)
            .expect("inserted");
        let idle = |now| t.connections(None, now)[0].idle_secs;
        assert_eq!(idle(99), 0);
        assert_eq!(idle(100), 0);
        assert_eq!(idle(107), 7);
        // Its birth too: age 0, not 16,777,215.
        let age = |now| t.connections(None, now)[0].age_secs;
        assert_eq!(age(99), 0);
        assert_eq!(age(100), 0);
        assert_eq!(age(107), 7);
    }
}
