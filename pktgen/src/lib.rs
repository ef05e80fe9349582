//! `pktgen`: a vhost-user *frontend* that behaves like a VM's virtio-net driver.
//!
//! It allocates memfd-backed "guest memory", performs the vhost-user handshake with
//! `vhost::vhost_user::Frontend`, and drives its own driver-side split virtqueues (queue 0 = rx,
//! queue 1 = tx). It is used by integration tests (bulk traffic, byte-exact checks), by
//! hostile-guest tests ([`RawAccess`]) and by the `pktgen` binary.
//!
//! ```text
//!   pktgen process                                    vhost-user backend (the switch)
//!   +--------------------------------------+  unix   +-------------------------------+
//!   | VirtioNet --- Frontend (vhost crate) |<------->| SET_MEM_TABLE(memfd), rings   |
//!   |    |                                 |  socket |                               |
//!   |    +-- GuestMemory (memfd, MAP_SHARED)  <======== mmap of the same memfd        |
//!   |    +-- SplitQueue rx (0), tx (1)     |  kick/call eventfds                     |
//!   +--------------------------------------+         +-------------------------------+
//! ```
//!
//! Handshake performed by [`VirtioNet::connect`] (QEMU's order):
//!
//! ```text
//!   GET_FEATURES -> GET_PROTOCOL_FEATURES -> SET_PROTOCOL_FEATURES (REPLY_ACK only; from here on
//!   every request carries NEED_REPLY if REPLY_ACK was acked) -> SET_OWNER
//!   -> SET_FEATURES (offered & cfg.features) -> SET_MEM_TABLE (one memfd region)
//!   -> per queue 0 (rx), 1 (tx): SET_VRING_NUM, SET_VRING_ADDR (our virtual addresses),
//!      SET_VRING_BASE 0, SET_VRING_CALL, SET_VRING_KICK
//!   -> SET_VRING_ENABLE 1 for both (only with VHOST_USER_F_PROTOCOL_FEATURES)
//! ```
//!
//! The rx ring is filled before any of the ring messages are sent. Notifications: we poll, so
//! avail.flags = NO_INTERRUPT and `used_event` is kept just behind our consumer index; kicks
//! follow the device's `avail_event` (EVENT_IDX) or `VIRTQ_USED_F_NO_NOTIFY`.
//!
//! Guest memory layout (guest-physical base [`GUEST_PHYS_BASE`], deliberately not 0 so that a
//! backend confusing guest-physical and virtual addresses fails loudly):
//!
//! ```text
//!   [rx desc|rx avail|rx used][tx desc|tx avail|tx used]  each area page aligned
//!   [rx buffers: queue_size * rx_buf_len (64-B stride)]
//!   [tx slots:   queue_size * TX_SLOT_LEN]                one fixed slot per descriptor id
//!   [bump area for RawAccess::alloc_buf ... end]
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod flood;
mod frame;
mod mem;
mod net;
mod ring;
pub mod wire;

use std::path::PathBuf;

pub use frame::{build_udp_frame, ipv4_checksum};
pub use mem::pin_to_cpu;
pub use net::{RawAccess, TxSlot, VirtioNet, MAX_TX_FRAME, TX_SLOT_LEN};
pub use ring::{
    vring_need_event, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
};

// Feature masks, from the bit numbers of virtio-bindings (the kernel's uapi headers) and the
// vhost-user flag of rust-vmm's `vhost`.

/// virtio-net: the device has a MAC address in config space (not used: we pick our own).
pub const VIRTIO_NET_F_MAC: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
/// virtio-net: the driver can merge receive buffers (`num_buffers` in the header).
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
/// virtio-net: several queue pairs (acked when `DeviceConfig::queue_pairs > 1`).
pub const VIRTIO_NET_F_MQ: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MQ;
/// virtio: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// vhost-user: protocol features negotiation (and `SET_VRING_ENABLE`) are supported.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 =
    vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// virtio 1.x (modern, little-endian, 12-byte net header).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Guest-physical address of the start of guest memory.
pub const GUEST_PHYS_BASE: u64 = 0x4000_0000;

/// Queue index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Queue index of the transmit queue.
pub const TX_QUEUE: usize = 1;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O error
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// vhost-user protocol error
    #[error("vhost-user protocol error")]
    Vhost(#[from] vhost::Error),
    /// timed out connecting to (or waiting for a connection on) the vhost-user socket {path}
    #[error(
        "timed out connecting to (or waiting for a connection on) the vhost-user socket {path}"
    )]
    ConnectTimeout {
        /// Socket path.
        path: PathBuf,
        /// Last connect error.
        #[source]
        source: std::io::Error,
    },
    /// invalid device configuration: {0}
    #[error("invalid device configuration: {0}")]
    InvalidConfig(&'static str),
    /// asked for {asked} queue pairs, the backend offers {backend}
    #[error("asked for {asked} queue pairs, the backend offers {backend}")]
    QueuePairs {
        /// `DeviceConfig::queue_pairs`.
        asked: usize,
        /// What the backend offers (1 without VIRTIO_NET_F_MQ).
        backend: usize,
    },
    /// guest memory too small: layout needs {need} bytes, have {have}
    #[error("guest memory too small: layout needs {need} bytes, have {have}")]
    MemTooSmall {
        /// Bytes needed by the rings and buffers.
        need: usize,
        /// Configured guest memory size.
        have: usize,
    },
    /// device moved used.idx of queue {queue} from {last_used} to {used_idx}, more than the ring size
    #[error("device moved used.idx of queue {queue} from {last_used} to {used_idx}, more than the ring size")]
    UsedIdxJump {
        /// Queue index.
        queue: usize,
        /// Our next used index.
        last_used: u16,
        /// used.idx as published by the device.
        used_idx: u16,
    },
    /// device returned out-of-range descriptor id {id} on queue {queue}
    #[error("device returned out-of-range descriptor id {id} on queue {queue}")]
    UsedIdOutOfRange {
        /// Queue index.
        queue: usize,
        /// The id from the used element.
        id: u32,
    },
    /// device returned descriptor id {id} on queue {queue}, which is not in flight
    #[error("device returned descriptor id {id} on queue {queue}, which is not in flight")]
    UsedIdNotInFlight {
        /// Queue index.
        queue: usize,
        /// The id from the used element.
        id: u32,
    },
    /// device wrote {len} bytes into rx buffer {id} of {max} bytes
    #[error("device wrote {len} bytes into rx buffer {id} of {max} bytes")]
    UsedLenTooLong {
        /// Descriptor id.
        id: u32,
        /// Length from the used element.
        len: u32,
        /// Buffer size.
        max: u32,
    },
    /// device wrote {len} bytes into rx buffer {id}, less than the virtio-net header
    #[error("device wrote {len} bytes into rx buffer {id}, less than the virtio-net header")]
    UsedLenTooShort {
        /// Descriptor id.
        id: u32,
        /// Length from the used element.
        len: u32,
    },
    /// device set num_buffers = {num_buffers} in rx buffer {id}
    #[error("device set num_buffers = {num_buffers} in rx buffer {id}")]
    BadNumBuffers {
        /// Descriptor id of the first buffer.
        id: u32,
        /// Value from the header.
        num_buffers: u16,
    },
}

/// Configuration of one virtio-net device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Size of guest memory in bytes (rounded up to the page size). Default 16 MiB.
    pub mem_size: usize,
    /// Entries per virtqueue; a power of two, at most 32768. Default 256.
    pub queue_size: u16,
    /// Our MAC address (frames are not filtered by it; it is informational).
    pub mac: [u8; 6],
    /// Size of each posted receive buffer, including the virtio-net header. Default 2048.
    pub rx_buf_len: u32,
    /// Virtio/vhost-user feature bits the driver is willing to acknowledge; the negotiated set
    /// is `offered & features`.
    pub features: u64,
    /// Queue pairs to set up, 1-16 (default 1); more than one needs a backend offering
    /// VIRTIO_NET_F_MQ and at least this many pairs.
    pub queue_pairs: u16,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            mem_size: 16 << 20,
            queue_size: 256,
            mac: [0x02, 0, 0, 0, 0, 0x0a],
            rx_buf_len: 2048,
            features: VIRTIO_F_VERSION_1
                | VIRTIO_NET_F_MRG_RXBUF
                | VIRTIO_RING_F_EVENT_IDX
                | VHOST_USER_F_PROTOCOL_FEATURES,
            queue_pairs: 1,
        }
    }
}

/// How to reach the vhost-user backend.
#[derive(Debug, Clone)]
pub enum Connect {
    /// The backend listens on this path (its server mode); connect, retrying for up to 10 s.
    Dial(PathBuf),
    /// Bind and listen on this path (removing a stale socket file first) and accept one
    /// connection within 30 s: the backend dials us (its client mode, like QEMU
    /// `-chardev server=on`).
    Listen(PathBuf),
}

/// Parses a MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("bad MAC {s}"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s}"))?;
    }
    Ok(mac)
}
