//! vhost-user backend for virtio-net devices, built for poll-mode worker cores.
//!
//! ```text
//!  QEMU (frontend) --unix socket--> conn (one slow-path thread per port)
//!                                     -> backend::NetBackend (protocol, via rust-vmm `vhost`)
//!                                          -> builds ring::SplitRing over guest_mem::GuestMemory
//!                                          -> installs it in backend::NetDevice { rxq, txq }
//!  worker cores <---- take NetDevice queue locks once per burst, pop/push descriptors ----
//! ```
//!
//! Unsafe code lives only in `guest_mem` (mmap), `ring` (guest ring and buffer access) and
//! `sync` (the queue spinlock).
#![deny(unsafe_code)]

pub mod backend;
pub mod conn;
pub mod guest_mem;
pub mod ring;
pub mod sync;

pub use backend::{LinkState, NetDevice, Queue, QueuePair, MAX_QUEUE_PAIRS};
pub use conn::{PortConn, SocketMode};
pub use ring::{Chain, ChainError, Pop, RxError, SplitRing};
