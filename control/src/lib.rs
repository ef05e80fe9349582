//! The control plane, in layers (each depends only on the ones above it):
//!
//! 1. `config`, `policy`, `model`: the configuration and API types. serde, validation, no I/O.
//! 2. `compile`: those types into the data plane's (`dataplane::filter::Policy`,
//!    `dataplane::SwitchConfig`). Pure. (`config`'s validation of a port list runs it.)
//! 3. `agent` (with `identity`): the port registry, what persists in the run directory, and
//!    publication to the data plane. The only owner of mutable control state.
//! 4. `server`: the HTTP API over the agent (axum on tokio); `client`: the same API from the
//!    caller's side, in the same types (bulwarkctl and the tests use it).
//!
//! The entry points are `src/bin/bulwarkd.rs` and `src/bin/bulwarkctl.rs`. This is the only
//! crate that parses configuration or API input.
#![deny(unsafe_code)]

pub mod agent;
pub mod client;
pub mod compile;
pub mod compiler;
pub mod config;
pub mod document;
pub mod identity;
pub mod logger;
pub mod model;
pub mod policy;
pub mod server;
pub mod sys;
