//! Stage `headers`: from chains to parsed packets, with the connection table's lines on
//! their way.
//!
//! - Takes: `chains[..n]` (from `take`).
//! - Passes on, per frame i: `len[i]` (without the virtio-net header); `early[i]`, a drop
//!   decided here, or `None`; `hdrs[i]`, the frame's first bytes (the Ethernet header and a
//!   tag's four bytes on a segment without a firewall, `HEADROOM` bytes on one with); on a
//!   filtered segment `pkts[i]`, the parse result, and `hash[i]`, its connection key's hash,
//!   whose table buckets, then slots, are prefetched for `decide`.
//! - Drops (on the sending port): `frame_too_short` (less than an Ethernet header),
//!   `frame_too_long` (over `max_frame`). A parse error is passed on in `pkts[i]` and dropped
//!   under its own reason by the firewall stage (a frame the firewall never judges, between
//!   two unfiltered ports, is switched whatever its L3).
//! - Counters: `rx_packets`, `rx_bytes` of the sending port (every frame of acceptable length).

use super::worker::Worker;
use super::{PortEntry, PortTable, L2_HEADER_LEN};
use crate::counters::{bump, DropReason, PortCounters};
use crate::filter::Filter;
use crate::parse::{parse_into, HEADROOM};
use crate::wire::ETH_HEADER_LEN;

/// The length check: the frame's length without the virtio-net header, or why it is dropped.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "ETH_HEADER_LEN is 14")]
pub(super) fn frame_len(total: u32, hdr: u32, max_frame: u32) -> Result<u32, DropReason> {
    if total < hdr + ETH_HEADER_LEN as u32 {
        Err(DropReason::FrameTooShort)
    } else if total - hdr > max_frame {
        Err(DropReason::FrameTooLong)
    } else {
        Ok(total - hdr)
    }
}

impl Worker<'_> {
    // Inlined into the worker loop: out of line (one call per burst) the same instructions ran
    // 3.5 % slower in `scripts/bench --ab` (docs/PERFORMANCE.md, "Instructions per frame").
    #[inline(always)]
    pub(super) fn headers<const TRACE: bool>(
        &mut self,
        table: &PortTable,
        src: &PortEntry,
        hdr: u32,
        n: usize,
        filtering: bool,
        sc: &PortCounters,
    ) {
        let sw = self.sw;
        self.vhdr = hdr;
        let filter = Filter {
            table: &sw.ct,
            epoch: table.epoch,
        };
        // Per frame: copy the headers out of guest memory, parse them, and start fetching the
        // connection's table lines, so that the lookups of `decide` find them in cache instead
        // of waiting for memory one frame at a time.
        for i in 0..n {
            let c = &self.chains[i];
            self.flood_check[i] = None;
            self.hash[i] = None;
            self.early[i] = match frame_len(c.total, hdr, sw.cfg.max_frame) {
                Err(r) => Some(r),
                Ok(len) => {
                    self.len[i] = len;
                    bump(&sc.rx_packets, 1);
                    bump(&sc.rx_bytes, u64::from(len));
                    if !filtering {
                        // L2 only: the Ethernet header (and a priority tag's four bytes) is
                        // all the switch reads.
                        let hl = (len as usize).min(L2_HEADER_LEN);
                        c.read_at(hdr, &mut self.hdrs[i][..hl]);
                    } else {
                        let hl = (len as usize).min(HEADROOM);
                        c.read_at(hdr, &mut self.hdrs[i][..hl]);
                        // Parsed straight into the slot the filter reads: returning it,
                        // wrapping it in an Option and the filter's own copy were three
                        // 124-byte copies per frame, each stalling on store forwarding.
                        parse_into(&self.hdrs[i][..hl], len as usize, &mut self.pkts[i]);
                        if let Ok(p) = &self.pkts[i] {
                            self.hash[i] = filter.hash_of(p, src.segment);
                            if let Some(h) = self.hash[i] {
                                sw.ct.prefetch_buckets(h);
                            }
                        }
                        if TRACE && i < self.traced {
                            self.traces[i].parsed = Some(self.pkts[i]);
                        }
                    }
                    None
                }
            };
        }
        // The buckets' tags are (mostly) in by now; fetch the matching slots.
        for h in self.hash[..n].iter().flatten() {
            sw.ct.prefetch_slots(*h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked_after_the_virtio_header() {
        // 12-byte virtio-net header, 9216-byte limit.
        assert_eq!(frame_len(0, 12, 9216), Err(DropReason::FrameTooShort));
        assert_eq!(frame_len(12 + 13, 12, 9216), Err(DropReason::FrameTooShort));
        assert_eq!(frame_len(12 + 14, 12, 9216), Ok(14));
        assert_eq!(frame_len(12 + 9216, 12, 9216), Ok(9216));
        assert_eq!(
            frame_len(12 + 9217, 12, 9216),
            Err(DropReason::FrameTooLong)
        );
        // A header longer than the chain: never an underflow.
        assert_eq!(frame_len(5, 12, 9216), Err(DropReason::FrameTooShort));
    }
}
