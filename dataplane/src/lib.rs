//! The per-core data path: burst polling, Ethernet parsing, L2 switching, counters.
//!
//! See `switch` for the threading model. Unsafe code is confined to `sys` (CPU pinning); guest
//! memory is only touched through the `vhost` crate's ring and chain types.
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

pub mod counters;
pub mod filter;
pub mod guard;
pub mod mac_table;
pub mod parse;
pub mod reply;
pub mod ruleset;
pub mod switch;
mod sys;
pub mod wire;

pub use counters::{DropReason, PortStats, MAX_PORTS, N_REASONS};
pub use mac_table::MacEntry;
pub use switch::{PortSpec, Stepper, Switch, SwitchConfig, WorkerStats, BURST};
pub use sys::{online_cpus, pin_to_cpus};
pub use wire::Mac;
