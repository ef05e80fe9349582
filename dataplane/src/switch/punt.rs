//! The punt path: how a stage of the frame path hands something to the control threads.
//!
//! Each worker owns one bounded ring (`PUNT_RING` items, allocated at start). A stage pushes a
//! `PuntItem` (plain data, copied into the ring: no allocation, no lock, no syscall); a control
//! thread drains every ring with `Switch::drain_punts`. A full ring never blocks a worker: the
//! item is dropped and counted (`WorkerStats::punt_dropped`).
//!
//! Today the items are packet traces (`bulwarkctl trace`): while a port's trace budget
//! (`Switch::trace`) is above zero, the worker that polls it records what every stage did
//! with each of the next frames (parse result, L2 decision, connection found or created, rule
//! on each side, verdict, delivery) and punts one `TraceRecord` per frame at the end of the
//! burst. Off, it costs one load of the port's budget per burst. The IP discovery and flow
//! logs of later issues add their items (ARP/ND/DHCP frames, connection events) here.

use crossbeam_queue::ArrayQueue;

use crate::counters::DropReason;
use crate::filter::RuleRef;
use crate::guard::{Claim, DhcpReply};
use crate::parse::{Packet, ParseError};

/// Items each worker's punt ring holds.
pub const PUNT_RING: usize = 1024;

/// Bytes of a traced frame's head kept in its record.
pub const TRACE_HEAD: usize = 64;

/// What a stage hands to the control threads.
#[derive(Debug, Clone, Copy)]
#[expect(
    clippy::large_enum_variant,
    reason = "items are copied into rings allocated at start; a Box would allocate per item on a worker"
)]
pub enum PuntItem {
    /// One traced frame.
    Trace(TraceRecord),
    /// A port used or announced an address it has not bound (spoof guard and discovery).
    Claim {
        /// The port.
        port: u16,
        /// Its segment.
        zone: u16,
        /// The address, and how.
        claim: Claim,
    },
    /// A trusted DHCP server's reply (punted whatever its type; the agent binds ACKs).
    Dhcp {
        /// The server's port.
        port: u16,
        /// Its segment.
        zone: u16,
        /// What it said.
        reply: DhcpReply,
    },
}

/// The L2 stage's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Decision {
    /// To this port.
    Port(u16),
    /// To every other member of the segment.
    Flood,
    /// Dropped by the L2 stage.
    Drop(DropReason),
}

/// What the firewall stage found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceEvent {
    /// Not judged: neither end has a firewall, or the frame was dropped before.
    NotJudged,
    /// Passed on a tracked connection.
    Found,
    /// Passed by the rules; a connection was created.
    Created,
    /// Passed by the rules without a connection (a flood judged per member, non-IP).
    Passed,
    /// Refused (the verdict says why and by whom).
    Refused,
}

/// What became of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handed to delivery (`to`: the L2 destination after the firewall).
    Forwarded(L2Decision),
    /// Dropped: the reason, and the port it is counted on.
    Dropped(DropReason, u16),
}

/// One frame through every stage.
#[derive(Debug, Clone, Copy)]
pub struct TraceRecord {
    /// The port it came from.
    pub port: u16,
    /// Its queue pair.
    pub queue: u16,
    /// The worker that handled it.
    pub worker: u16,
    /// Switch clock, seconds.
    pub secs: u32,
    /// Frame length (without the virtio-net header).
    pub len: u32,
    /// The frame's first bytes.
    pub head: [u8; TRACE_HEAD],
    /// How many of `head` are the frame's.
    pub head_len: u8,
    /// The parse result (`None`: not parsed, an L2-only segment or an early drop).
    pub parsed: Option<Result<Packet, ParseError>>,
    /// The L2 decision (`None`: dropped before it).
    pub l2: Option<L2Decision>,
    /// What the firewall found.
    pub firewall: TraceEvent,
    /// The rules that decided: the sender's egress side, the receiver's ingress side.
    pub rules: [Option<RuleRef>; 2],
    /// The verdict.
    pub verdict: Verdict,
    /// Copies delivered (a flood has several), and the first delivery drop if any.
    pub delivered: u16,
    /// The first delivery drop (`port_down`, `rx_no_buffers`, a member's ingress policy...).
    pub delivery_drop: Option<DropReason>,
}

impl TraceRecord {
    pub(super) const EMPTY: TraceRecord = TraceRecord {
        port: 0,
        queue: 0,
        worker: 0,
        secs: 0,
        len: 0,
        head: [0; TRACE_HEAD],
        head_len: 0,
        parsed: None,
        l2: None,
        firewall: TraceEvent::NotJudged,
        rules: [None, None],
        verdict: Verdict::Dropped(DropReason::FrameTooShort, 0),
        delivered: 0,
        delivery_drop: None,
    };
}

/// The per-worker rings.
#[derive(Debug)]
pub(super) struct PuntRings {
    rings: Vec<ArrayQueue<PuntItem>>,
}

impl PuntRings {
    pub(super) fn new(workers: usize) -> Self {
        PuntRings {
            rings: (0..workers).map(|_| ArrayQueue::new(PUNT_RING)).collect(),
        }
    }

    /// Pushes from worker `me`; false (the item is dropped) when its ring is full.
    #[inline]
    pub(super) fn push(&self, me: usize, item: PuntItem) -> bool {
        self.rings[me].push(item).is_ok()
    }

    /// Takes everything queued, ring by ring; returns how many items.
    pub(super) fn drain(&self, mut f: impl FnMut(PuntItem)) -> usize {
        let mut n = 0;
        for r in &self.rings {
            while let Some(item) = r.pop() {
                f(item);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_refuses_instead_of_waiting() {
        let r = PuntRings::new(2);
        let item = PuntItem::Trace(TraceRecord::EMPTY);
        for _ in 0..PUNT_RING {
            assert!(r.push(1, item));
        }
        assert!(!r.push(1, item), "a full ring must refuse");
        assert!(r.push(0, item), "another worker's ring is its own");
        assert_eq!(r.drain(|_| ()), PUNT_RING + 1);
        assert_eq!(r.drain(|_| ()), 0);
        assert!(r.push(1, item));
    }

    #[test]
    fn a_record_stays_small_enough_to_copy() {
        // Copied into the ring by value: keep it within a few cache lines.
        assert!(
            std::mem::size_of::<PuntItem>() <= 320,
            "{}",
            std::mem::size_of::<PuntItem>()
        );
    }
}
