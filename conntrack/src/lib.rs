//! Connection tracking for the per-vNIC firewall.
//!
//! - `tcp`: pf-style TCP state machine with sequence-window checks, a pure function over a
//!   24-byte state (tested table-style).
//!
//! See `DESIGN.md` in this crate for the table layout, concurrency and aging.
#![deny(unsafe_code)]

pub mod tcp;
