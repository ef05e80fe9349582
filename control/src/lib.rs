//! The control plane: configuration, the port registry, the management API, and the daemon
//! and CLI entry points (`src/bin/bulwarkd.rs`, `src/bin/bulwarkctl.rs`). This is the only
//! crate that parses configuration or API input.
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod daemon;
pub mod http;
pub mod identity;
pub mod logger;
pub mod policy;
pub mod sys;
