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
// Clippy's cast lints on the shipped code (tests cast freely): each exception is an `#[expect]`
// on its item, with the reason the cast cannot lose anything that matters.
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod backend;
pub mod conn;
pub mod guest_mem;
pub mod ring;
pub mod sync;

pub use backend::{LinkState, NetDevice, Queue, QueuePair, MAX_QUEUE_PAIRS};
pub use conn::{PortConn, SocketMode};
pub use ring::{Chain, ChainError, Pop, RxError, SplitRing};
