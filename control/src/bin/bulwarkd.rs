//! bulwarkd: the switch daemon.
//!
//! Starts with an embedded default (no ports, one worker on the last CPU, API socket and state
//! in /run/bulwark), reads ports from `--config`, brings back ports added through the API in an
//! earlier run, and serves the API until SIGINT, SIGTERM or SIGHUP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use control::agent::Agent;
use control::config::{Config, DEFAULT_RUN_DIR};
use control::server::Limits;

/// The bulwark virtual switch: vhost-user ports, a stateful firewall on every vNIC.
#[derive(Debug, Parser)]
#[command(
    name = "bulwarkd",
    version,
    after_help = "Environment: BULWARK_LOG=error|warn|info|debug|trace, or directives such as \
                  info,vhost=debug (default info).\nSIGINT, SIGTERM and SIGHUP stop the daemon."
)]
struct Args {
    /// API socket (DIR/api.sock) and state (DIR/ports.json, DIR/vnics.json).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// TOML configuration: [switch] settings and [[ports]]; see README.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// CPU ids for the poll-mode workers (overrides [switch] workers).
    #[arg(long, value_name = "CPU[,CPU...]", value_delimiter = ',')]
    workers: Option<Vec<usize>>,
    /// Also serve the API on TCP at ADDR:PORT (every request needs the bearer token).
    #[arg(long, value_name = "ADDR:PORT", requires = "api_token_file")]
    api_listen: Option<SocketAddr>,
    /// File holding the bearer token for --api-listen (one line, at least 16 characters).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Longest an API request may take, from accept to the end of the response (its head
    /// must arrive within 5 s, or this if shorter).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    api_timeout: u64,
    /// Print the API's OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.openapi {
        print!("{}", control::server::openapi_json());
        return ExitCode::SUCCESS;
    }
    control::logger::init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwarkd: {e}");
            ExitCode::from(2)
        }
    }
}

fn read_token(path: &PathBuf) -> Result<Arc<str>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--api-token-file: cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "--api-token-file: {} must hold one token of at least 16 printable characters",
            path.display()
        ));
    }
    Ok(token.into())
}

fn run(args: Args) -> Result<(), String> {
    let run_dir = args.run_dir;
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).map_err(|e| format!("config: {e}"))?,
        None => Config::default(),
    };
    if args.workers.is_some() {
        cfg.switch.workers = args.workers;
        cfg.validate().map_err(|e| format!("--workers: {e}"))?;
    }
    let token = args.api_token_file.as_ref().map(read_token).transpose()?;

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
    let saved = Agent::load_state(&state_path).map_err(|e| format!("state: {e}"))?;

    // Block termination signals before any thread starts, so only `wait_signal` sees them.
    control::sys::block_signals();
    let mut scfg = control::compile::switch_config(&cfg);
    scfg.ct_state_file = cfg.conntrack.state_file_in(&run_dir);
    tracing::info!(
        "bulwarkd starting: workers on CPUs {:?}, idle_sleep_us {}",
        scfg.workers,
        scfg.idle_sleep_us
    );
    // The API's threads run on every CPU but the workers' (on all of them when none is left).
    let control_cpus: Vec<usize> = (0..dataplane::online_cpus())
        .filter(|c| !scfg.workers.contains(c))
        .collect();
    let t_open = std::time::Instant::now();
    let (switch, opened) = dataplane::Switch::open(scfg).map_err(|e| {
        format!(
            "conntrack.state_file: {e} (set conntrack.persistent = false to keep the table in \
             memory)"
        )
    })?;
    match (&opened, &switch.config().ct_state_file) {
        (Some(o), Some(f)) => {
            tracing::info!(
                "connection table {}: {o} ({:.1} ms)",
                f.display(),
                t_open.elapsed().as_secs_f64() * 1e3
            );
            if matches!(o, conntrack::Opened::Refused { .. }) {
                tracing::warn!("connection table {}: {o}", f.display());
            }
            if !control::sys::on_tmpfs(f) {
                tracing::warn!(
                    "connection table {}: not on tmpfs, so the kernel writes it back to disk; \
                     set conntrack.state_file to a path under /dev/shm or /run",
                    f.display()
                );
            }
        }
        _ => tracing::info!("connection table in memory (conntrack.persistent = false)"),
    }
    // A large table in 4 KiB pages costs a TLB miss on most lookups.
    let slots = switch.conntrack().slots_range();
    match control::sys::huge_backing(slots.clone()) {
        Some((mapped, 0)) if slots.len() >= 2 << 20 => tracing::warn!(
            "connection table: its {} MiB are in 4 KiB pages, not huge pages, so most lookups \
             in it also miss the TLB (with a million connections, 12-15 % fewer frames and \
             connections a second: docs/PERFORMANCE.md). {}",
            mapped >> 20,
            match &switch.config().ct_state_file {
                Some(f) => format!(
                    "Its state file {} is on a file system without them: put \
                     conntrack.state_file on a tmpfs mounted with huge=within_size (e.g. `mount \
                     -t tmpfs -o huge=within_size,mode=0700 bulwark-state /run/bulwark/state`) \
                     or on hugetlbfs",
                    f.display()
                ),
                None => "Transparent huge pages are off \
                         (/sys/kernel/mm/transparent_hugepage/enabled)"
                    .to_string(),
            }
        ),
        Some((mapped, huge)) => tracing::info!(
            "connection table: {} of its {} MiB in huge pages",
            huge >> 20,
            mapped >> 20
        ),
        None => {}
    }
    let workers = switch
        .spawn_workers()
        .map_err(|e| format!("cannot start workers: {e}"))?;
    let identities = control::identity::Identities::load(Some(run_dir.join("vnics.json")))
        .map_err(|e| format!("state: {e} (move it away to start with new vNIC identities)"))?;
    let agent = Arc::new(Agent::new(switch.clone(), Some(state_path), identities));
    agent
        .start()
        .map_err(|e| format!("cannot start the punt thread: {e}"))?;
    // The policy document before any port: no vNIC is ever published without it.
    let revision = agent.restore_policy().map_err(|e| format!("state: {e}"))?;
    if let Some(file) = &cfg.policy_file {
        if revision == 0 {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("config: policy_file: cannot read {}: {e}", file.display()))?;
            let format = if file.extension().is_some_and(|e| e == "json") {
                control::document::Format::Json
            } else {
                control::document::Format::Yaml
            };
            let doc = control::document::Document::parse(&text, format)
                .map_err(|e| format!("config: policy_file {}: {e}", file.display()))?;
            let r = agent
                .apply_policy(doc, false)
                .map_err(|e| format!("config: policy_file {}: {e}", file.display()))?;
            tracing::info!(
                "policy_file {} applied as revision {}",
                file.display(),
                r.revision
            );
        } else {
            tracing::info!(
                "policy revision {revision} of the run directory kept; policy_file {} is applied \
                 only to a run directory without one (bulwarkctl policy apply -f applies it now)",
                file.display()
            );
        }
    }
    // And the addresses the vNICs had learned, so no guest can claim them first.
    agent
        .restore_addresses()
        .map_err(|e| format!("state: {e}"))?;

    for p in cfg.ports {
        let name = p.name.clone();
        agent
            .add_port(p, false)
            .map_err(|e| format!("config: port {name}: {e}"))?;
    }
    for p in saved {
        if agent.port(&p.name).is_ok() {
            tracing::warn!(
                "saved port {} is also in the config file; the config file's wins",
                p.name
            );
            continue;
        }
        let name = p.name.clone();
        if let Err(e) = agent.add_port(p, true) {
            tracing::error!("saved port {name} could not be restored: {e}");
        }
    }
    // Connections of vNICs that did not come back have no end to go to.
    let gone = agent.drop_orphan_connections();
    if gone > 0 {
        tracing::info!("{gone} restored connections dropped: their vNICs are gone");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("api")
        .on_thread_start(move || {
            if let Err(e) = dataplane::pin_to_cpus(&control_cpus) {
                tracing::warn!("api thread: cannot pin to CPUs {control_cpus:?}: {e}");
            }
        })
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the API runtime: {e}"))?;
    let limits = {
        let d = Limits::default();
        let whole = std::time::Duration::from_secs(args.api_timeout);
        Limits {
            request_timeout: whole,
            head_timeout: d.head_timeout.min(whole),
            ..d
        }
    };
    let app = control::server::router(agent.clone(), &limits);
    let listener = {
        let _guard = rt.enter();
        tokio::net::UnixListener::bind(&api_path)
            .map_err(|e| format!("cannot bind {}: {e}", api_path.display()))?
    };
    rt.spawn(control::server::serve_unix(listener, app.clone(), limits));
    tracing::info!("API listening on {}", api_path.display());
    if let (Some(addr), Some(token)) = (args.api_listen, token) {
        let tcp = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| format!("--api-listen: cannot bind {addr}: {e}"))?;
        let local = tcp.local_addr().map_or(addr, |a| a);
        rt.spawn(control::server::serve_tcp(tcp, app, token, limits));
        tracing::info!("API listening on http://{local} (bearer token required)");
    }

    let sig = control::sys::wait_signal();
    tracing::info!("signal {sig}: shutting down");
    let _ = std::fs::remove_file(&api_path);
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    agent.remove_all();
    switch.shutdown();
    for w in workers {
        let _ = w.join();
    }
    switch.close();
    tracing::info!("bulwarkd stopped");
    Ok(())
}
