//! bulwarkctl: the command-line client of bulwarkd's API. It reads the API's own types
//! (`control::model`), so a field bulwarkd stops sending is an error here, not a blank column.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use control::client::{Client, ClientError, Endpoint};
use control::config::{GuardMode, Mode, PortConfig, DEFAULT_RUN_DIR};
use control::document::{Document, Format};
use control::model::{
    ConnView, GroupInfo, MacInfo, PolicyApplied, PolicyInfo, PortInfo, ReachInfo, ReachRequest,
    RevisionInfo, StatsInfo, Tags, TraceInfo, TraceView,
};
use control::policy::{PolicyConfig, StrOrNum};

/// Connections per import request: an export of 50,000 is about 6 MB of JSON, well inside the
/// API's 16 MiB body limit.
const IMPORT_PART: usize = 50_000;

/// The command-line client of bulwarkd's API.
#[derive(Debug, Parser)]
#[command(name = "bulwarkctl", version)]
struct Cli {
    /// bulwarkd's run directory; the API is DIR/api.sock.
    #[arg(long, value_name = "DIR", global = true)]
    run_dir: Option<PathBuf>,
    /// The API socket itself.
    #[arg(long, value_name = "SOCKET", global = true, conflicts_with = "run_dir")]
    api: Option<PathBuf>,
    /// bulwarkd's TCP listener (its --api-listen), instead of the Unix socket.
    #[arg(long, value_name = "ADDR:PORT", global = true, requires = "token_file")]
    url: Option<String>,
    /// File holding the bearer token for --url.
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ports, state and counters.
    Ports,
    /// One port: show, add or delete.
    #[command(subcommand)]
    Port(PortCmd),
    /// A port's effective rules in the order of decision, with per-rule counters (`policy
    /// NAME`); the policy document (`policy apply -f FILE`, `policy get`, `policy history`,
    /// `policy remove-app APP`); a port's own rules (`policy set NAME FILE`).
    Policy(PolicyArgs),
    /// The policy document's groups with the vNICs in them now.
    Groups,
    /// May one vNIC open a connection to another, and by which rules? No packet is sent.
    Reach {
        /// The vNIC that opens the connection.
        from: String,
        /// The vNIC it connects to.
        to: String,
        /// What: tcp/PORT, udp/PORT, icmp, icmpv6, or PROTO[/PORT] (icmp/TYPE for ICMP).
        service: String,
        /// Source address (default: one FROM has bound or learned; only CIDR rules read it).
        #[arg(long)]
        src_ip: Option<String>,
        /// Destination address.
        #[arg(long)]
        dst_ip: Option<String>,
    },
    /// Tracked connections (of one port, or all).
    Conns {
        /// Only this port's (it is either end).
        name: Option<String>,
    },
    /// Drop a port's tracked connections.
    Flush {
        /// The port.
        name: String,
    },
    /// Record the next frames a port's guest sends through every stage of the frame path
    /// (parse, L2, connection, rules, verdict, delivery) and print them.
    Trace {
        /// The port.
        name: String,
        /// Frames to record, 1-10000.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10000))]
        count: u32,
        /// Give up after this many seconds (the trace is stopped; what was recorded is shown).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
    /// The MAC learning table.
    Macs,
    /// The connection table's size and use.
    Conntrack,
    /// Workers, and every non-zero drop counter.
    Stats,
}

#[derive(Debug, Subcommand)]
enum PortCmd {
    /// One port, with its drop counters.
    Show {
        /// The port.
        name: String,
    },
    /// Add a port (persisted in bulwarkd's run directory).
    Add(AddPort),
    /// Remove a port.
    Del {
        /// The port.
        name: String,
    },
    /// Export a port's tracked connections as JSON (for another switch's `port import`).
    /// With --handover VIA, the guest has moved: connections with a vNIC that stays here go
    /// through port VIA from now on, the others are removed (docs/MIGRATION.md).
    Export {
        /// The port.
        name: String,
        /// The port towards the guest's new switch.
        #[arg(long, value_name = "VIA")]
        handover: Option<String>,
        /// Write the export to this file instead of standard output.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Import another switch's export of a vNIC's connections into a port (its guest migrated
    /// here). Ends that are neither that vNIC nor a vNIC of this switch become --remote.
    Import {
        /// The port.
        name: String,
        /// The export (`port export` on the other switch; `-` for standard input).
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        /// The port that reaches the vNICs that are not on this switch.
        #[arg(long, value_name = "PORT")]
        remote: Option<String>,
    },
    /// Unbind an address the vNIC learned (ARP, ND, first use, DHCP).
    Forget {
        /// The port.
        name: String,
        /// The address.
        address: String,
    },
    /// Set a vNIC's tags to exactly these (none: remove them all).
    Tags {
        /// The port.
        name: String,
        /// Tags, KEY=VALUE (e.g. tier=web env=prod).
        #[arg(value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
}

/// `KEY=VALUE` (bulwarkd checks the characters and lengths, and names the tag it refuses).
fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: a tag is KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, Args)]
struct AddPort {
    /// Port name: 1-32 characters from A-Z a-z 0-9 _ . -
    name: String,
    /// Absolute path of the vhost-user socket.
    #[arg(long)]
    socket: PathBuf,
    /// Segment id, 1-65535.
    #[arg(long, conflicts_with = "vlan", required_unless_present = "vlan")]
    segment: Option<u32>,
    /// Access VLAN, 1-4094 (the same id space as --segment).
    #[arg(long)]
    vlan: Option<u32>,
    /// Who opens the socket: client (QEMU listens) or server (bulwarkd listens).
    #[arg(long, value_enum, default_value = "client")]
    mode: ModeArg,
    /// Queue pairs offered to the guest, 1-16.
    #[arg(long)]
    queues: Option<u32>,
    /// Bind the port to the guest's MAC: frames from other source MACs are dropped.
    #[arg(long)]
    mac: Option<String>,
    /// The vNIC's UUID (default: generated and kept).
    #[arg(long)]
    uuid: Option<String>,
    /// The tenant the vNIC belongs to (default: default).
    #[arg(long)]
    tenant: Option<String>,
    /// A tag, KEY=VALUE; repeat for more.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Spoof guard: off (default), learn (trust on first use) or strict (bound addresses
    /// only); learn and strict need --mac.
    #[arg(long, value_enum)]
    spoof_guard: Option<GuardArg>,
    /// An address bound to the vNIC from the start (IPv4 or IPv6); repeat for more.
    #[arg(long = "address")]
    addresses: Vec<String>,
    /// Most addresses the vNIC may bind, 1-256 (default 16).
    #[arg(long)]
    max_addresses: Option<u32>,
    /// The guest serves DHCP (its replies pass and its leases are bound to the clients).
    #[arg(long)]
    dhcp_server: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GuardArg {
    Off,
    Learn,
    Strict,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Client,
    Server,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct PolicyArgs {
    /// Show this port's policy.
    name: Option<String>,
    #[command(subcommand)]
    cmd: Option<PolicyCmd>,
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Show a port's policy with per-rule counters.
    Show {
        /// The port.
        name: String,
    },
    /// Apply a policy document (YAML or JSON) as a whole: all or nothing. Every error names
    /// the object and field.
    Apply {
        /// The document: YAML (.yaml, .yml) or JSON; '-' reads YAML or JSON from stdin.
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Print what would change per vNIC (rules added and removed, connections that would
        /// be cut), and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse the apply if the running revision is not this one (overrides the document's
        /// base_revision).
        #[arg(long, value_name = "REVISION")]
        base: Option<u64>,
    },
    /// Print the running policy document (YAML; --json for JSON) and its revision.
    Get,
    /// The revisions applied: when, what made them, what changed.
    History,
    /// Remove every service, group and policy an application owns.
    RemoveApp {
        /// The application.
        app: String,
        /// Print what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Replace a port's own rules and defaults (the last tier of its policy). FILE: JSON, or
    /// TOML if it ends in .toml; '-' reads JSON from stdin; '{}' allows everything (and tracks
    /// it).
    Set {
        /// The port.
        name: String,
        /// The policy file.
        file: String,
    },
}

fn main() -> ExitCode {
    control::sys::default_sigpipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwarkctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn endpoint(cli: &Cli) -> Result<Endpoint, String> {
    if let Some(url) = &cli.url {
        let addr = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/');
        let file = cli.token_file.as_ref().ok_or("--url needs --token-file")?;
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("--token-file: cannot read {}: {e}", file.display()))?;
        return Ok(Endpoint::Tcp {
            addr: addr.to_string(),
            token: token.trim().to_string(),
        });
    }
    Ok(Endpoint::Unix(match (&cli.api, &cli.run_dir) {
        (Some(sock), _) => sock.clone(),
        (None, Some(dir)) => dir.join("api.sock"),
        (None, None) => PathBuf::from(DEFAULT_RUN_DIR).join("api.sock"),
    }))
}

fn run(cli: Cli) -> Result<(), String> {
    let c = Client::new(endpoint(&cli)?, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let err = |e: ClientError| e.to_string();
    let out = match &cli.cmd {
        Cmd::Ports => show(cli.json, &c.ports().map_err(err)?, |p| render_ports(p)),
        Cmd::Port(PortCmd::Show { name }) => {
            show(cli.json, &c.port(name).map_err(err)?, render_port)
        }
        Cmd::Port(PortCmd::Add(a)) => {
            let cfg = PortConfig {
                name: a.name.clone(),
                socket: a.socket.clone(),
                mode: match a.mode {
                    ModeArg::Client => Mode::Client,
                    ModeArg::Server => Mode::Server,
                },
                segment: a.segment,
                vlan: a.vlan,
                queues: a.queues,
                uuid: a.uuid.clone(),
                mac: a.mac.clone(),
                tenant: a.tenant.clone(),
                tags: a.tags.iter().cloned().collect(),
                policy: None,
                spoof_guard: a.spoof_guard.map(|g| match g {
                    GuardArg::Off => GuardMode::Off,
                    GuardArg::Learn => GuardMode::Learn,
                    GuardArg::Strict => GuardMode::Strict,
                }),
                addresses: a.addresses.clone(),
                max_addresses: a.max_addresses,
                dhcp_server: a.dhcp_server,
            };
            show(cli.json, &c.add_port(&cfg).map_err(err)?, render_port)
        }
        Cmd::Port(PortCmd::Tags { name, tags }) => {
            let t = Tags {
                tags: tags.iter().cloned().collect(),
            };
            show(cli.json, &c.set_tags(name, &t).map_err(err)?, render_port)
        }
        Cmd::Port(PortCmd::Export {
            name,
            handover,
            output,
        }) => {
            let (export, note) = match handover {
                Some(via) => {
                    let h = c.hand_over(name, via).map_err(err)?;
                    let mut note = format!(
                        "port {name}: {} connections exported; {} with vNICs that stay now go \
                         through {via}, {} removed\n",
                        h.export.connections.len(),
                        h.kept,
                        h.removed
                    );
                    if !h.released.is_empty() {
                        note += &format!(
                            "port {name}: learned addresses unbound (they left with the \
                             guest): {}\n",
                            h.released.join(", ")
                        );
                    }
                    (h.export, note)
                }
                None => {
                    let e = c.export_conns(name).map_err(err)?;
                    let note = format!(
                        "port {name}: {} connections exported\n",
                        e.connections.len()
                    );
                    (e, note)
                }
            };
            let text = serde_json::to_string(&export).map_err(|e| e.to_string())? + "\n";
            match output {
                Some(f) => {
                    std::fs::write(f, &text)
                        .map_err(|e| format!("cannot write {}: {e}", f.display()))?;
                    eprint!("{note}");
                    String::new()
                }
                None => {
                    eprint!("{note}");
                    text
                }
            }
        }
        Cmd::Port(PortCmd::Import { name, file, remote }) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| e.to_string())?
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?
            };
            let export: control::model::ConnExport = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a connection export: {e}", file.display()))?;
            // In parts that fit the API's body limit.
            let mut total = control::model::Imported {
                imported: 0,
                already: 0,
                rejoined: 0,
                refused: 0,
                remote_ends: 0,
                millis: 0.0,
            };
            let parts =
                export
                    .connections
                    .chunks(IMPORT_PART)
                    .map(|part| control::model::ConnExport {
                        connections: part.to_vec(),
                        ..export.clone()
                    });
            for part in parts {
                let r = c
                    .import_conns(name, &part, remote.as_deref())
                    .map_err(err)?;
                total.imported += r.imported;
                total.already += r.already;
                total.rejoined += r.rejoined;
                total.refused += r.refused;
                total.remote_ends += r.remote_ends;
                total.millis += r.millis;
            }
            show(cli.json, &total, |t| {
                format!(
                    "port {name}: {} connections imported from {} on {} ({} rejoined, {} \
                     already here, {} refused; {} ends through {}) in {:.1} ms\n",
                    t.imported,
                    export.port,
                    export.host,
                    t.rejoined,
                    t.already,
                    t.refused,
                    t.remote_ends,
                    remote.as_deref().unwrap_or("-"),
                    t.millis
                )
            })
        }
        Cmd::Port(PortCmd::Forget { name, address }) => {
            let left = c.forget_address(name, address).map_err(err)?;
            show(cli.json, &left, |l| {
                let mut s = format!("port {name}: {address} unbound; it keeps");
                if l.is_empty() {
                    s.push_str(" no address");
                }
                for a in l {
                    s.push(' ');
                    s.push_str(&a.address);
                }
                s.push('\n');
                s
            })
        }
        Cmd::Port(PortCmd::Del { name }) => {
            show(cli.json, &c.remove_port(name).map_err(err)?, |r| {
                format!("removed port {}\n", r.removed)
            })
        }
        Cmd::Policy(p) => match (&p.cmd, &p.name) {
            (Some(PolicyCmd::Set { name, file }), _) => {
                let pol = read_policy(file)?;
                show(
                    cli.json,
                    &c.set_policy(name, &pol).map_err(err)?,
                    render_policy,
                )
            }
            (Some(PolicyCmd::Show { name }), _) | (None, Some(name)) => {
                show(cli.json, &c.policy(name).map_err(err)?, render_policy)
            }
            (
                Some(PolicyCmd::Apply {
                    file,
                    dry_run,
                    base,
                }),
                _,
            ) => {
                let mut doc = read_document(file)?;
                if base.is_some() {
                    doc.base_revision = *base;
                }
                let r = c.apply_policy(&doc, *dry_run).map_err(err)?;
                show(cli.json, &r, render_applied)
            }
            (Some(PolicyCmd::Get), _) => {
                let d = c.policy_doc().map_err(err)?;
                if cli.json {
                    show(true, &d, |_| String::new())
                } else {
                    match &d.document {
                        None => "no policy document applied (revision 0)\n".to_string(),
                        Some(doc) => {
                            let mut doc = doc.clone();
                            doc.base_revision = Some(d.revision);
                            format!(
                                "# revision {} (base_revision set: edit and apply this file)\n{}",
                                d.revision,
                                serde_norway::to_string(&doc).map_err(|e| e.to_string())?
                            )
                        }
                    }
                }
            }
            (Some(PolicyCmd::History), _) => {
                show(cli.json, &c.policy_history().map_err(err)?, |h| {
                    render_history(h)
                })
            }
            (Some(PolicyCmd::RemoveApp { app, dry_run }), _) => {
                let r = c.remove_app(app, *dry_run).map_err(err)?;
                show(cli.json, &r, render_applied)
            }
            (None, None) => {
                return Err(
                    "policy: name a port (policy NAME), or: policy apply -f FILE, policy get, \
                     policy history, policy remove-app APP, policy set NAME FILE"
                        .into(),
                )
            }
        },
        Cmd::Groups => show(cli.json, &c.groups().map_err(err)?, |g| render_groups(g)),
        Cmd::Reach {
            from,
            to,
            service,
            src_ip,
            dst_ip,
        } => {
            let (proto, port) = match service.split_once('/') {
                Some((p, n)) => (
                    p.to_string(),
                    Some(n.parse::<u16>().map_err(|_| {
                        format!("{service:?}: expected PROTO/PORT with a port 0-65535")
                    })?),
                ),
                None => (service.clone(), None),
            };
            let req = ReachRequest {
                from: from.clone(),
                to: to.clone(),
                proto: match proto.parse::<u64>() {
                    Ok(n) => StrOrNum::Num(n),
                    Err(_) => StrOrNum::Str(proto),
                },
                port,
                src_ip: src_ip.clone(),
                dst_ip: dst_ip.clone(),
            };
            show(cli.json, &c.reach(&req).map_err(err)?, render_reach)
        }
        Cmd::Conns { name } => show(cli.json, &c.conns(name.as_deref()).map_err(err)?, |v| {
            render_conns(v)
        }),
        Cmd::Flush { name } => show(cli.json, &c.flush(name).map_err(err)?, |f| {
            format!("flushed {} connections of port {name}\n", f.flushed)
        }),
        Cmd::Trace {
            name,
            count,
            timeout,
        } => {
            let info = run_trace(&c, name, *count, Duration::from_secs(*timeout), cli.json)?;
            if cli.json {
                show(true, &info, |_| String::new())
            } else {
                let mut s = String::new();
                if info.records.len() < *count as usize {
                    s.push_str(&format!(
                        "{} of {count} frames traced within {timeout} s (the guest sent no more)\n",
                        info.records.len()
                    ));
                }
                if info.lost > 0 {
                    s.push_str(&format!("{} records lost (buffer full)\n", info.lost));
                }
                s
            }
        }
        Cmd::Macs => show(cli.json, &c.macs().map_err(err)?, |m| render_macs(m)),
        Cmd::Conntrack => show(cli.json, &c.conntrack().map_err(err)?, |t| {
            let mut s = format!(
                "{} of {} connection slots in use ({} bytes each), policy epoch {}\n",
                t.live, t.capacity, t.bytes_per_connection, t.epoch
            );
            match (&t.state_file, &t.opened) {
                (Some(f), Some(o)) => s += &format!("state file {f}: at start {o}\n"),
                _ => s += "in the process's memory: a restart empties it\n",
            }
            if let (Some(m), Some(h)) = (t.mapped_bytes, t.huge_page_bytes) {
                s += &format!(
                    "{:.1} MiB mapped, {:.1} MiB of it in huge pages\n",
                    m as f64 / f64::from(1 << 20),
                    h as f64 / f64::from(1 << 20)
                );
            }
            s
        }),
        Cmd::Stats => show(cli.json, &c.stats().map_err(err)?, render_stats),
    };
    print!("{out}");
    Ok(())
}

/// Arms a trace of `count` frames, prints each record as it comes (unless `json`), and
/// returns them all once `count` arrived or `timeout` passed (the trace is then stopped).
fn run_trace(
    c: &Client,
    name: &str,
    count: u32,
    timeout: Duration,
    json: bool,
) -> Result<TraceInfo, String> {
    let err = |e: ClientError| e.to_string();
    c.start_trace(name, count).map_err(err)?;
    if !json {
        println!("tracing the next {count} frames of port {name} (at most {timeout:?})");
    }
    let start = std::time::Instant::now();
    let mut all = TraceInfo {
        port: name.to_string(),
        remaining: count,
        lost: 0,
        records: Vec::new(),
    };
    loop {
        let got = c.trace(name).map_err(err)?;
        for r in &got.records {
            if !json {
                print!("{}", render_trace(all.records.len() + 1, r));
            }
            all.records.push(r.clone());
        }
        all.lost += got.lost;
        all.remaining = got.remaining;
        if all.records.len() >= count as usize || start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if all.records.len() < count as usize {
        c.start_trace(name, 0).map_err(err)?;
        all.remaining = 0;
    }
    Ok(all)
}

fn render_trace(n: usize, r: &TraceView) -> String {
    let what = match (&r.packet, &r.parse_error) {
        (Some(p), _) => p.clone(),
        (None, Some(e)) => format!("does not parse: {e}"),
        (None, None) => "not parsed (L2 only)".to_string(),
    };
    let rules: Vec<String> = r
        .rules
        .iter()
        .map(|h| {
            format!(
                "{} {} {}",
                h.port,
                h.direction,
                h.rule
                    .map_or_else(|| "default".to_string(), |id| format!("rule {id}"))
            )
        })
        .collect();
    let verdict = match (r.verdict.as_str(), &r.to, &r.reason) {
        ("forwarded", Some(to), _) => {
            let mut v = format!("forwarded to {to}, {} delivered", r.delivered);
            if let Some(d) = &r.delivery_drop {
                v.push_str(&format!(", delivery drop {d}"));
            }
            v
        }
        (_, _, Some(reason)) => format!(
            "dropped: {reason} (counted on {})",
            r.counted_on.as_deref().unwrap_or("-")
        ),
        (v, _, _) => v.to_string(),
    };
    format!(
        "#{n} worker {} queue {}, {} bytes: {what}\n   l2 {}; firewall {}{}; {verdict}\n   head {}\n",
        r.worker,
        r.queue,
        r.len,
        r.l2.as_deref().unwrap_or("-"),
        r.firewall,
        if rules.is_empty() {
            String::new()
        } else {
            format!(" ({})", rules.join(", "))
        },
        r.head
    )
}

/// The value as pretty JSON, or through `table`.
fn show<T: serde::Serialize>(json: bool, v: &T, table: impl Fn(&T) -> String) -> String {
    if json {
        let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
        s.push('\n');
        s
    } else {
        table(v)
    }
}

/// A policy file in the API's type: JSON, TOML (`*.toml`), `-` for JSON on stdin, or `{}`.
fn read_policy(file: &str) -> Result<PolicyConfig, String> {
    if file == "{}" {
        return Ok(PolicyConfig::default());
    }
    let text = if file == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| format!("reading stdin: {e}"))?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?
    };
    if file.ends_with(".toml") {
        toml::from_str(&text).map_err(|e| format!("{file}: {e}"))
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

fn render_port(p: &PortInfo) -> String {
    let mut s = render_ports(std::slice::from_ref(p));
    let tags: Vec<String> = p.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    s.push_str(&format!(
        "uuid {}  tenant {}  tags {}\n",
        p.uuid,
        p.tenant,
        if tags.is_empty() {
            "-".to_string()
        } else {
            tags.join(" ")
        }
    ));
    let guard = serde_json::to_value(p.spoof_guard)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    s.push_str(&format!("spoof guard {guard}"));
    if p.address_conflicts > 0 {
        s.push_str(&format!(
            ", {} claims of other vNICs' addresses refused",
            p.address_conflicts
        ));
    }
    s.push('\n');
    for a in &p.addresses {
        let source = serde_json::to_value(a.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        s.push_str(&format!("  address {} ({source}", a.address));
        if let Some(e) = a.expires {
            s.push_str(&format!(", lease ends {}", utc(e)));
        }
        s.push_str(")\n");
    }
    s.push_str(&render_drops(std::slice::from_ref(p)));
    s
}

fn render_ports(ports: &[PortInfo]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.segment.to_string(),
                match p.mode {
                    Mode::Client => "client".into(),
                    Mode::Server => "server".into(),
                },
                p.state.clone(),
                format!("{}/{}", p.queues_running, p.queues),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
                p.total_drops().to_string(),
                p.socket.display().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "SEGMENT", "MODE", "STATE", "QUEUES", "RX PKTS", "RX BYTES", "TX PKTS",
            "TX BYTES", "DROPS", "SOCKET",
        ],
        &rows,
    )
}

fn render_drops(ports: &[PortInfo]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .flat_map(|p| {
            p.drops
                .iter()
                .filter(|(_, &n)| n > 0)
                .map(|(reason, n)| vec![p.name.clone(), reason.clone(), n.to_string()])
        })
        .collect();
    if rows.is_empty() {
        "no drops\n".into()
    } else {
        table(&["PORT", "DROP REASON", "COUNT"], &rows)
    }
}

fn render_policy(v: &PolicyInfo) -> String {
    let mut s = format!("port {}  (policy epoch {})\n", v.port, v.epoch);
    if !v.filtered {
        s.push_str(
            "not filtered: no policy document and no rules of its own, or on the document's \
             exclusion list (plain L2 between unfiltered ports)\n",
        );
        return s;
    }
    let name = |a: control::document::DocAction| {
        serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    s.push_str(&format!(
        "groups {}\negress default {}, ingress default {}",
        if v.groups.is_empty() {
            "-".to_string()
        } else {
            v.groups.join(" ")
        },
        name(v.egress_default),
        name(v.ingress_default),
    ));
    if let Some(p) = &v.policy {
        s.push_str(&format!(
            ", non-IP {}, ND {}, TCP pickup {}",
            name(p.non_ip.into()),
            name(p.nd.into()),
            p.tcp_pickup
        ));
    }
    s.push('\n');
    for (dir, counted) in [("egress", &v.rules.egress), ("ingress", &v.rules.ingress)] {
        let rows: Vec<Vec<String>> = counted
            .iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.name.clone().unwrap_or_default(),
                    name(r.action),
                    r.matches.clone(),
                    r.packets.to_string(),
                    r.bytes.to_string(),
                    r.connections.to_string(),
                ]
            })
            .collect();
        s.push_str(&format!("\n{dir} rules, in the order of decision:\n"));
        s.push_str(&table(
            &["ID", "RULE", "ACTION", "MATCH", "PACKETS", "BYTES", "CONNS"],
            &rows,
        ));
    }
    s
}

/// A policy document from a file: YAML or JSON (by extension; '-': stdin, YAML, which also
/// reads JSON). Errors name the field by its path.
fn read_document(file: &str) -> Result<Document, String> {
    let text = if file == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| format!("reading stdin: {e}"))?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?
    };
    let format = if file.ends_with(".json") {
        Format::Json
    } else {
        Format::Yaml
    };
    Document::parse(&text, format).map_err(|e| format!("{file}: {e}"))
}

fn render_applied(r: &PolicyApplied) -> String {
    let mut s = if r.dry_run {
        format!(
            "dry run: nothing changed; as revision {} this would compile {} rulesets ({} in use) in {:.1} ms\n",
            r.revision, r.rulesets_compiled, r.rulesets, r.compile_ms
        )
    } else {
        format!(
            "revision {} applied: {} rulesets compiled ({} in use) in {:.1} ms, published in {:.1} ms\n",
            r.revision, r.rulesets_compiled, r.rulesets, r.compile_ms, r.publish_ms
        )
    };
    let rows: Vec<Vec<String>> = r
        .vnics
        .iter()
        .map(|v| {
            vec![
                v.port.clone(),
                if v.filtered { "yes" } else { "no" }.to_string(),
                v.egress_rules.to_string(),
                v.ingress_rules.to_string(),
                format!("+{} -{}", v.added.len(), v.removed.len()),
                v.conns_cut.to_string(),
                v.compile_us.to_string(),
            ]
        })
        .collect();
    s.push_str(&table(
        &[
            "PORT",
            "FILTERED",
            "EGRESS",
            "INGRESS",
            "RULES",
            "CONNS CUT",
            "COMPILE US",
        ],
        &rows,
    ));
    for v in &r.vnics {
        for a in &v.added {
            s.push_str(&format!("  {}: + {a}\n", v.port));
        }
        for a in &v.removed {
            s.push_str(&format!("  {}: - {a}\n", v.port));
        }
    }
    s
}

/// Unix seconds as a UTC date and time, `2026-12-07 11:00:08Z` (the civil-from-days
/// conversion of Howard Hinnant's date algorithms).
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn render_history(h: &[RevisionInfo]) -> String {
    if h.is_empty() {
        return "no revisions yet\n".into();
    }
    let rows: Vec<Vec<String>> = h
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                utc(r.at),
                r.source.clone(),
                opt(&r.base),
                r.vnics_changed.to_string(),
                if r.changes.is_empty() {
                    "-".into()
                } else {
                    r.changes.join(" ")
                },
            ]
        })
        .collect();
    table(
        &["REVISION", "AT (UTC)", "SOURCE", "BASE", "VNICS", "CHANGES"],
        &rows,
    )
}

fn render_groups(g: &[GroupInfo]) -> String {
    if g.is_empty() {
        return "no groups (no policy document applied, or it has none)\n".into();
    }
    let rows: Vec<Vec<String>> = g
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                opt(&g.tenant),
                opt(&g.app),
                if g.vnics.is_empty() {
                    "-".into()
                } else {
                    g.vnics.join(" ")
                },
                if g.cidrs.is_empty() {
                    "-".into()
                } else {
                    g.cidrs.join(" ")
                },
                if g.addresses.is_empty() {
                    "-".into()
                } else {
                    g.addresses.join(" ")
                },
            ]
        })
        .collect();
    table(
        &["GROUP", "TENANT", "APP", "VNICS", "CIDRS", "VNIC ADDRESSES"],
        &rows,
    )
}

fn render_reach(r: &ReachInfo) -> String {
    let step = |s: &control::model::ReachStep, dir: &str| {
        format!(
            "  {} {dir}: {} by {}\n",
            s.port,
            s.action,
            s.rule.as_deref().unwrap_or("the default action")
        )
    };
    format!(
        "{}: {}\n{}{}",
        r.tuple,
        if r.allowed { "ALLOWED" } else { "DENIED" },
        step(&r.egress, "egress"),
        step(&r.ingress, "ingress")
    )
}

fn proto_name(p: u8) -> String {
    conntrack::ip_proto::name(p).map_or_else(|| p.to_string(), str::to_string)
}

fn render_conns(conns: &[ConnView]) -> String {
    let ep = |addr: &str, port: u16| {
        if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
    };
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            vec![
                c.zone.to_string(),
                proto_name(c.proto),
                ep(&c.src, c.sport),
                ep(&c.dst, c.dport),
                c.state.clone(),
                opt(&c.owner),
                opt(&c.peer),
                c.age_secs.to_string(),
                c.idle_secs.to_string(),
                c.packets.to_string(),
                if c.revalidate {
                    "(revalidate)".to_string()
                } else {
                    format!("{}/{}", opt(&c.rule_egress), opt(&c.rule_ingress))
                },
            ]
        })
        .collect();
    let mut s = table(
        &[
            "ZONE",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "STATE",
            "OWNER",
            "PEER",
            "AGE(s)",
            "IDLE(s)",
            "PACKETS",
            "RULES(eg/in)",
        ],
        &rows,
    );
    s.push_str(&format!("{} connections\n", conns.len()));
    s
}

fn render_macs(macs: &[MacInfo]) -> String {
    let rows: Vec<Vec<String>> = macs
        .iter()
        .map(|m| {
            vec![
                m.segment.to_string(),
                m.mac.clone(),
                m.port.clone(),
                m.age_secs.to_string(),
            ]
        })
        .collect();
    table(&["SEGMENT", "MAC", "PORT", "AGE(s)"], &rows)
}

fn render_stats(v: &StatsInfo) -> String {
    let rows: Vec<Vec<String>> = v
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            vec![
                i.to_string(),
                w.cpu.to_string(),
                w.busy_polls.to_string(),
                w.idle_polls.to_string(),
                w.deferred_polls.to_string(),
            ]
        })
        .collect();
    let mut s = table(
        &[
            "WORKER",
            "CPU",
            "BUSY POLLS",
            "IDLE POLLS",
            "DEFERRED POLLS",
        ],
        &rows,
    );
    s.push('\n');
    s.push_str(&render_drops(&v.ports));
    s
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        format!("{}\n", out.join("  ").trim_end())
    };
    let mut s = line(head.to_vec());
    for r in rows {
        s.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn port(name: &str, drops: &[(&str, u64)]) -> PortInfo {
        serde_json::from_value(serde_json::json!({
            "name": name, "uuid": "6f0b7d0e-8a8f-4d35-9d0b-0d7c4f3a9a11", "id": 3,
            "socket": "/tmp/vm1.sock", "mode": "client", "segment": 10, "state": "running",
            "tenant": "default", "tags": {"tier": "web"},
            "vhost_connections": 1, "features": "0x0", "queues": 2, "queues_running": 1,
            "rx_packets_per_worker": [5], "persisted": true, "rx_packets": 5, "rx_bytes": 300,
            "tx_packets": 4, "tx_bytes": 240,
            "drops": drops.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_641_208), "2026-12-07 11:00:08Z");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59Z");
    }

    #[test]
    fn the_argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_old_policy_forms_still_parse() {
        let c = Cli::try_parse_from(["bulwarkctl", "policy", "vm1"]).unwrap();
        assert!(
            matches!(c.cmd, Cmd::Policy(PolicyArgs { name: Some(ref n), cmd: None }) if n == "vm1")
        );
        let c = Cli::try_parse_from(["bulwarkctl", "--json", "policy", "set", "vm1", "p.toml"])
            .unwrap();
        assert!(c.json);
        assert!(matches!(
            c.cmd,
            Cmd::Policy(PolicyArgs { cmd: Some(PolicyCmd::Set { ref name, ref file }), .. })
                if name == "vm1" && file == "p.toml"
        ));
        // Global options may also come after the command, as scripts write them.
        let c = Cli::try_parse_from(["bulwarkctl", "ports", "--run-dir", "/tmp/r"]).unwrap();
        assert_eq!(c.run_dir.as_deref(), Some(std::path::Path::new("/tmp/r")));
    }

    #[test]
    fn tags_parse_as_key_value_pairs() {
        let c =
            Cli::try_parse_from(["bulwarkctl", "port", "tags", "vm1", "tier=web", "env="]).unwrap();
        let Cmd::Port(PortCmd::Tags { name, tags }) = c.cmd else {
            panic!("not port tags")
        };
        assert_eq!(name, "vm1");
        assert_eq!(
            tags,
            [("tier".into(), "web".into()), ("env".into(), String::new())]
        );
        let e = Cli::try_parse_from(["bulwarkctl", "port", "tags", "vm1", "tier"]).unwrap_err();
        assert!(e.to_string().contains("a tag is KEY=VALUE"), "{e}");
        let c = Cli::try_parse_from([
            "bulwarkctl",
            "port",
            "add",
            "p",
            "--socket",
            "/tmp/p.sock",
            "--segment",
            "1",
            "--tenant",
            "blue",
            "--tag",
            "tier=db",
        ])
        .unwrap();
        let Cmd::Port(PortCmd::Add(a)) = c.cmd else {
            panic!("not port add")
        };
        assert_eq!(a.tenant.as_deref(), Some("blue"));
        assert_eq!(a.tags, [("tier".into(), "db".into())]);
        assert!(render_port(&port("vm1", &[])).contains("tenant default  tags tier=web"));
    }

    #[test]
    fn port_add_needs_a_segment_or_a_vlan_but_not_both() {
        let base = ["bulwarkctl", "port", "add", "p", "--socket", "/tmp/p.sock"];
        assert!(Cli::try_parse_from(base).is_err());
        let with = |extra: &[&'static str]| {
            Cli::try_parse_from(base.iter().copied().chain(extra.iter().copied()))
        };
        assert!(with(&["--segment", "10", "--vlan", "10"]).is_err());
        assert!(with(&["--segment", "x"]).is_err());
        assert!(with(&["--segment", "10", "--mode", "sideways"]).is_err());
        let c = with(&[
            "--vlan",
            "7",
            "--mode",
            "server",
            "--mac",
            "52:54:00:00:00:01",
        ])
        .unwrap();
        let Cmd::Port(PortCmd::Add(a)) = c.cmd else {
            panic!("{c:?}")
        };
        assert_eq!((a.vlan, a.segment), (Some(7), None));
        assert!(matches!(a.mode, ModeArg::Server));
    }

    #[test]
    fn url_needs_a_token_file() {
        assert!(Cli::try_parse_from(["bulwarkctl", "--url", "127.0.0.1:9", "ports"]).is_err());
    }

    #[test]
    fn tables_show_the_typed_fields() {
        let p = port("vm1", &[("policy_drop_egress", 2), ("parse_truncated", 0)]);
        let s = render_port(&p);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{s}");
        assert!(lines[1].starts_with("vm1"), "{s}");
        for cell in [
            "10",
            "client",
            "running",
            "1/2",
            "300",
            "240",
            "/tmp/vm1.sock",
        ] {
            assert!(
                lines[1].split_whitespace().any(|c| c == cell),
                "{cell} missing: {s}"
            );
        }
        // The drop total, and only the non-zero reasons.
        assert!(lines[1].split_whitespace().nth(9) == Some("2"), "{s}");
        assert!(s.contains("policy_drop_egress  2"), "{s}");
        assert!(!s.contains("parse_truncated"), "{s}");
        assert_eq!(render_drops(&[port("vm2", &[])]), "no drops\n");
    }

    #[test]
    fn a_response_missing_a_field_is_refused() {
        // What `Client::call` does with a body: a field bulwarkd no longer sends is an error.
        let mut v = serde_json::to_value(port("vm1", &[])).unwrap();
        v.as_object_mut().unwrap().remove("rx_packets");
        let e = serde_json::from_value::<PortInfo>(v).unwrap_err();
        assert!(e.to_string().contains("rx_packets"), "{e}");
    }

    #[test]
    fn connections_show_rules_or_revalidation() {
        let mut c: ConnView = serde_json::from_value(serde_json::json!({
            "zone": 10, "proto": 6, "src": "10.0.0.1", "sport": 40000, "dst": "fd00::2",
            "dport": 80, "owner": "vm1", "peer": null, "state": "established", "age_secs": 3,
            "idle_secs": 1, "packets": 9, "rule_egress": 7, "rule_ingress": null,
            "replied": true, "epoch": 4, "revalidate": false
        }))
        .unwrap();
        let s = render_conns(std::slice::from_ref(&c));
        assert!(s.contains("10.0.0.1:40000"), "{s}");
        assert!(s.contains("[fd00::2]:80"), "{s}");
        assert!(s.contains("7/-"), "{s}");
        assert!(s.ends_with("1 connections\n"), "{s}");
        c.revalidate = true;
        assert!(render_conns(&[c]).contains("(revalidate)"));
    }

    #[test]
    fn policy_files_are_read_as_the_api_type() {
        let dir = std::env::temp_dir().join(format!("bulwarkctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_file = dir.join("p.toml");
        std::fs::write(
            &toml_file,
            "ingress_default = \"drop\"\ningress = [{ action = \"allow\", proto = \"tcp\", dst_ports = 22 }]\n",
        )
        .unwrap();
        let p = read_policy(toml_file.to_str().unwrap()).unwrap();
        assert_eq!(p.ingress.len(), 1);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"ingress_default": "drop", "colour": 1}"#).unwrap();
        let e = read_policy(bad.to_str().unwrap()).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        assert_eq!(read_policy("{}").unwrap(), PolicyConfig::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
