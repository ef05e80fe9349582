//! What a worker sees of a port: its queues, behind one type for every kind of port.
//!
//! Today every port is a vhost-user device (`bulwark_vhost::NetDevice`: guest rings in guest
//! memory). The worker reaches a port's frames only through `Backend` (its transmit queue for `take`,
//! a receive queue for `deliver`), never through the device type, so another kind of port
//! (the overlay uplink of a later issue) is a new variant with its own arms here. Dispatch is
//! a `match` on a one-byte tag per burst, not a virtual call per frame.

use std::sync::Arc;

use bulwark_vhost::sync::SpinLock;
use bulwark_vhost::{NetDevice, Queue};

/// A port's frame source and sink.
#[derive(Debug, Clone)]
pub(super) enum Backend {
    /// A vhost-user virtio-net device.
    Vhost(Arc<NetDevice>),
}

impl Backend {
    /// The queue the worker takes queue pair `qp`'s frames from.
    #[inline]
    pub(super) fn tx_queue(&self, qp: usize) -> &SpinLock<Option<Queue>> {
        match self {
            Backend::Vhost(d) => &d.pair(qp).txq,
        }
    }

    /// The queue worker `me` delivers into.
    #[inline]
    pub(super) fn rx_queue(&self, me: usize) -> &SpinLock<Option<Queue>> {
        match self {
            Backend::Vhost(d) => d.rx_for(me),
        }
    }
}
