//! Logging: `tracing` to stderr, filtered by `BULWARK_LOG` (default `info`; a level such as
//! `debug`, or directives such as `info,vhost=debug`). The `log` calls of the data plane and
//! vhost crates reach the same output through tracing's `log` bridge.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber (once; later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_env("BULWARK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
