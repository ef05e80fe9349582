//! Connection tracking for the per-vNIC firewall.
//!
//! - `tcp`: pf-style TCP state machine with sequence-window checks, a pure function over a
//!   24-byte state (tested table-style).
//! - `table`: the shared, fixed-size connection table: 64-byte in-place entries, lock-free
//!   lookups from any worker, per-vNIC limits, lazy aging with QSBR-deferred reuse.
//! - `ip_proto`: IP protocol numbers and their names, for every crate.
//! - `qsbr`: the workers' quiescence counters used for reclamation.
//! - `state`: the table in a state file that outlives the process (`Table::open`: its header,
//!   recovery, conversion to another capacity).
//! - `mem`: the table's memory mappings and prefetch hints (the crate's only `unsafe`).
//!
//! See `DESIGN.md` in this crate for the table layout, concurrency, memory ordering and aging.
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

pub mod ip_proto;
pub mod mem;
pub mod qsbr;
pub mod state;
pub mod table;
pub mod tcp;

pub use state::Opened;
pub use table::{
    full_epoch, Adopted, Config, ConnInfo, Found, InsertError, Key, NewConn, Record, Recovery,
    SweepStats, Table, Timeouts, RESTAMP_AGE, RESTAMP_EVERY,
};
pub use tcp::{Segment, TcpConn, TimeoutClass};
