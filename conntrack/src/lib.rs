//! Connection tracking for the per-vNIC firewall.
//!
//! Empty for now: the TCP/UDP/ICMP state machines, the lockless table and per-vNIC limits
//! arrive with the firewall issue (see ARCHITECTURE.md). The crate exists so the workspace
//! layout and dependency direction are fixed from the start.
#![deny(unsafe_code)]
