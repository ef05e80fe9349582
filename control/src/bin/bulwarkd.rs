//! bulwarkd: the switch daemon.
//!
//! Starts with an embedded default (no ports, one worker on the last CPU, API socket and state
//! in /run/bulwark), reads ports from `--config`, brings back ports added through the API in an
//! earlier run, and serves the API until SIGINT/SIGTERM.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use control::config::{Config, DEFAULT_RUN_DIR};
use control::daemon::Daemon;

const USAGE: &str = "usage: bulwarkd [--run-dir DIR] [--config FILE] [--workers CPU[,CPU...]]

  --run-dir DIR   API socket (DIR/api.sock) and state (DIR/ports.json, DIR/vnics.json); default /run/bulwark
  --config FILE   TOML configuration: [switch] settings and [[ports]]; see README
  --workers LIST  CPU ids for poll-mode workers (overrides [switch] workers)
Environment: BULWARK_LOG=error|warn|info|debug|trace (default info)";

fn main() -> ExitCode {
    control::logger::init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwarkd: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut run_dir = PathBuf::from(DEFAULT_RUN_DIR);
    let mut config = None;
    let mut workers = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--run-dir" => run_dir = PathBuf::from(val("--run-dir")?),
            "--config" => config = Some(PathBuf::from(val("--config")?)),
            "--workers" => {
                let v = val("--workers")?;
                let list: Result<Vec<usize>, _> = v.split(',').map(str::parse).collect();
                workers =
                    Some(list.map_err(|_| format!("--workers: {v:?} is not a list of CPU ids"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    let mut cfg = match &config {
        Some(p) => Config::load(p).map_err(|e| format!("config: {e}"))?,
        None => Config::default(),
    };
    if workers.is_some() {
        cfg.switch.workers = workers;
        cfg.validate().map_err(|e| format!("--workers: {e}"))?;
    }

    std::fs::create_dir_all(&run_dir)
        .map_err(|e| format!("cannot create run dir {}: {e}", run_dir.display()))?;
    let api_path = run_dir.join("api.sock");
    if std::os::unix::net::UnixStream::connect(&api_path).is_ok() {
        return Err(format!(
            "another bulwarkd is serving {}",
            api_path.display()
        ));
    }
    let _ = std::fs::remove_file(&api_path);
    let state_path = run_dir.join("ports.json");
    let saved = Daemon::load_state(&state_path).map_err(|e| format!("state: {e}"))?;

    // Block termination signals before any thread starts, so only `wait_signal` sees them.
    control::sys::block_signals();
    let scfg = cfg.switch_config();
    log::info!(
        "bulwarkd starting: workers on CPUs {:?}, idle_sleep_us {}",
        scfg.workers,
        scfg.idle_sleep_us
    );
    let switch = dataplane::Switch::new(scfg);
    let workers = switch
        .spawn_workers()
        .map_err(|e| format!("cannot start workers: {e}"))?;
    let identities = control::identity::Identities::load(Some(run_dir.join("vnics.json")))
        .map_err(|e| format!("state: {e} (move it away to start with new vNIC identities)"))?;
    let daemon = Arc::new(Daemon::new(switch.clone(), Some(state_path), identities));

    for p in cfg.ports {
        let name = p.name.clone();
        daemon
            .add_port(p, false)
            .map_err(|e| format!("config: port {name}: {e}"))?;
    }
    for p in saved {
        if daemon.port(&p.name).is_ok() {
            log::warn!(
                "saved port {} is also in the config file; the config file's wins",
                p.name
            );
            continue;
        }
        let name = p.name.clone();
        if let Err(e) = daemon.add_port(p, true) {
            log::error!("saved port {name} could not be restored: {e}");
        }
    }

    let listener = UnixListener::bind(&api_path)
        .map_err(|e| format!("cannot bind {}: {e}", api_path.display()))?;
    let d2 = daemon.clone();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || control::api::serve(listener, d2))
        .map_err(|e| format!("cannot start API thread: {e}"))?;
    log::info!("API listening on {}", api_path.display());

    let sig = control::sys::wait_signal();
    log::info!("signal {sig}: shutting down");
    let _ = std::fs::remove_file(&api_path);
    daemon.remove_all();
    switch.shutdown();
    for w in workers {
        let _ = w.join();
    }
    log::info!("bulwarkd stopped");
    Ok(())
}
