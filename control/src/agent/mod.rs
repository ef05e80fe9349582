//! The agent: the one owner of the port registry (names, ids, sockets), of what is persisted
//! in the run directory, and of publication to the data plane. It takes the configuration and
//! API types (`config`, `policy`), compiles them (`compile`) and publishes the result through
//! `dataplane::Switch::set_ports`; it answers in the API's types (`model`). Its methods block
//! (a publication waits for the workers to move to the new port table, at most 5 s): the API
//! server calls them off its async threads.
//!
//! Ports come from the config file and from the API. Ports added through the API are written
//! to `<run-dir>/ports.json` (atomically: a temporary file, then rename), so a restarted
//! bulwarkd brings them back; removing one through the API removes it from that file. A port
//! from the config file that is removed through the API comes back at the next start.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bulwark_vhost::{NetDevice, PortConn, SocketMode};
use dataplane::filter::Policy;
use dataplane::switch::{L2Decision, PuntItem, RuleStat, TraceEvent, TraceRecord, Verdict};
use dataplane::{DropReason, PortSpec, PortStats, Switch, MAX_PORTS};
use uuid::Uuid;

use crate::compiler::{Names, RuleName};
use crate::config::{check_ports, ConfigError, Mode, PortConfig};
use crate::identity::{write_atomically, Identities, Identity, IdentityError};
use crate::model::{
    ApiError, ConnView, ConntrackInfo, MacInfo, PolicyInfo, PortInfo, ReasonInfo, RuleHit,
    RuleInfo, RuleTables, StatsInfo, TraceInfo, TraceStarted, TraceView, WorkerInfo,
};
use crate::policy::PolicyConfig;
use dataplane::ruleset::Peer;

mod addresses;
mod migrate;
mod policy;

pub use addresses::Source as AddressSource;

struct PortRecord {
    cfg: PortConfig,
    /// The vNIC's policy: the document's rules in its scope and `cfg.policy`, compiled.
    policy: Arc<Policy>,
    /// The names of `policy`'s rules.
    names: Arc<Names>,
    /// Time its last compilation took.
    compile_time: std::time::Duration,
    /// Its bound (or, spoof guard off, discovered) addresses.
    bindings: BTreeMap<std::net::IpAddr, addresses::Binding>,
    /// What the data plane checks: `cfg`'s spoof guard mode and `bindings`.
    guard: Arc<dataplane::guard::Guard>,
    /// Addresses it claimed that another vNIC of its segment had bound.
    conflicts: u64,
    id: u16,
    /// The vNIC's durable identity (`identity`).
    uuid: Uuid,
    dev: Arc<NetDevice>,
    conn: Option<PortConn>,
    base: PortStats,
    /// `base`, per worker.
    base_workers: Vec<PortStats>,
    persisted: bool,
}

/// The agent: the switch plus its ports.
pub struct Agent {
    switch: Arc<Switch>,
    ports: Mutex<BTreeMap<String, PortRecord>>,
    /// Locked only while `ports` is held.
    identities: Mutex<Identities>,
    state_file: Option<PathBuf>,
    /// Trace records drained from the punt rings, per port id, until the API reads them.
    traces: Mutex<Traces>,
    /// The policy document and its compiler. Locked only while `ports` is held.
    doc: Mutex<policy::DocState>,
    /// This host's name (the `host` attribute of selectors).
    host: String,
    /// Claims and leases the workers punted, until the punt thread settles them.
    pending: Mutex<addresses::Pending>,
    /// Learned bindings of an earlier run, per port name, until the port comes back.
    saved_addresses: Mutex<BTreeMap<String, BTreeMap<std::net::IpAddr, addresses::Binding>>>,
}

/// Trace records kept per port.
#[derive(Debug, Default)]
struct Traces {
    records: BTreeMap<u16, VecDeque<TraceRecord>>,
    lost: BTreeMap<u16, u64>,
}

/// Trace records kept per port until read.
const TRACE_BUFFER: usize = 10_000;

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent over `switch`; API-added ports persist to `state_file` when given; vNICs get
    /// their UUIDs and port ids from `identities`.
    pub fn new(switch: Arc<Switch>, state_file: Option<PathBuf>, identities: Identities) -> Self {
        Agent {
            switch,
            ports: Mutex::new(BTreeMap::new()),
            identities: Mutex::new(identities),
            doc: Mutex::new(policy::DocState::new(
                state_file
                    .as_deref()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf),
            )),
            state_file,
            traces: Mutex::new(Traces::default()),
            host: crate::sys::host_name(),
            pending: Mutex::new(addresses::Pending::default()),
            saved_addresses: Mutex::new(BTreeMap::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, addresses::Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn doc(&self) -> std::sync::MutexGuard<'_, policy::DocState> {
        self.doc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn identities(&self) -> std::sync::MutexGuard<'_, Identities> {
        self.identities.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The switch.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PortRecord>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ports persisted by an earlier run (empty if none).
    pub fn load_state(path: &Path) -> Result<Vec<PortConfig>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let ports: Vec<PortConfig> = serde_json::from_str(&text)
                    .map_err(|e| ConfigError::new("", format!("{}: {e}", path.display())))?;
                check_ports(&ports, &path.display().to_string())?;
                Ok(ports)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }

    /// Adds a port and starts its socket; `persist` records it in the state file.
    pub fn add_port(&self, cfg: PortConfig, persist: bool) -> Result<PortInfo, ApiError> {
        let segment = cfg.validate("")?;
        let mut ports = self.lock();
        if let Some(other) = ports
            .values()
            .find(|p| p.cfg.segment_id() == segment && p.cfg.tenant_name() != cfg.tenant_name())
        {
            return Err(ApiError::conflict(
                "tenant",
                format!(
                    "segment {segment} belongs to tenant {:?} (port {:?}); a segment holds one tenant's vNICs",
                    other.cfg.tenant_name(),
                    other.cfg.name
                ),
            ));
        }
        let compiled = self.compile_vnic(&mut self.doc(), &cfg)?;
        if ports.contains_key(&cfg.name) {
            return Err(ApiError::conflict(
                "name",
                format!("port {:?} already exists", cfg.name),
            ));
        }
        if let Some(other) = ports.values().find(|p| p.cfg.socket == cfg.socket) {
            return Err(ApiError::conflict(
                "socket",
                format!(
                    "{} is already used by port {:?}",
                    cfg.socket.display(),
                    other.cfg.name
                ),
            ));
        }
        let bindings = self.initial_bindings(&ports, &cfg)?;
        let guard = addresses::guard(&cfg, &bindings);
        let uuid = cfg.uuid("")?;
        let live: Vec<(&str, Identity)> = ports
            .values()
            .map(|p| {
                (
                    p.cfg.name.as_str(),
                    Identity {
                        uuid: p.uuid,
                        id: p.id,
                    },
                )
            })
            .collect();
        let saved = self.identities().get(&cfg.name);
        let ident = self
            .identities()
            .assign(&cfg.name, uuid, &live)
            .map_err(|e| match e {
                IdentityError::UuidInUse(u, other) => {
                    ApiError::conflict("uuid", format!("{u} is already port {other:?}'s"))
                }
                IdentityError::NoFreeId => ApiError::conflict(
                    "name",
                    format!("the switch holds at most {MAX_PORTS} ports"),
                ),
            })?;
        let id = ident.id;
        let mut cfg = cfg;
        // Persisted with an API-added port, so that ports.json alone also names it.
        cfg.uuid = Some(ident.uuid.to_string());
        let dev = Arc::new(NetDevice::new(cfg.queue_pairs()));
        let mode = match cfg.mode {
            Mode::Client => SocketMode::Client,
            Mode::Server => SocketMode::Server,
        };
        let conn = PortConn::start(&cfg.name, &cfg.socket, mode, dev.clone()).map_err(|e| {
            ApiError::bad(
                "socket",
                format!("cannot open {}: {e}", cfg.socket.display()),
            )
        })?;
        tracing::info!(
            "port {} (id {id}, segment {segment}): {}",
            cfg.name,
            bulwark_vhost::conn::describe(mode, &cfg.socket)
        );
        // A new vNIC starts with no connections: drop any a former holder of the id left. The
        // same vNIC coming back (its saved identity: a restart) keeps those the state file
        // kept.
        if saved != Some(ident) {
            self.switch.flush_connections(id);
        }
        let rec = PortRecord {
            base: self.switch.port_stats(id),
            base_workers: self.switch.port_stats_per_worker(id),
            cfg,
            policy: compiled.policy,
            names: compiled.names,
            compile_time: compiled.time,
            bindings,
            guard,
            conflicts: 0,
            id,
            uuid: ident.uuid,
            dev,
            conn: Some(conn),
            persisted: persist,
        };
        let name = rec.cfg.name.clone();
        ports.insert(name.clone(), rec);
        self.publish(&ports);
        if persist {
            self.save(&ports);
        }
        Ok(self.info(&ports[&name]))
    }

    /// Removes a port: the workers stop using it, then its socket closes and its memory unmaps.
    pub fn remove_port(&self, name: &str) -> Result<(), ApiError> {
        self.detach(name, true)
    }

    /// Removes every port (shutdown). The state file is left as it is, so the ports added
    /// through the API come back at the next start.
    pub fn remove_all(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for n in names {
            let _ = self.detach(&n, false);
        }
    }

    /// After a restart, once the ports are back: drops the restored connections one of whose
    /// vNICs did not come back. Returns how many.
    pub fn drop_orphan_connections(&self) -> usize {
        let ids: std::collections::HashSet<u16> = self.lock().values().map(|p| p.id).collect();
        self.switch.retain_connections(|id| ids.contains(&id))
    }

    /// Takes a port out of the switch; `persist` records the removal in the state file
    /// (shutdown: not; its connections then stay in the connection table's file too).
    fn detach(&self, name: &str, persist: bool) -> Result<(), ApiError> {
        let mut ports = self.lock();
        let Some(mut rec) = ports.remove(name) else {
            return Err(ApiError::not_found(format!("no port named {name:?}")));
        };
        // After publish returns no worker polls or delivers to the port any more.
        self.publish(&ports);
        if let Some(c) = rec.conn.take() {
            c.stop();
        }
        self.switch.trace(rec.id, 0);
        self.traces().records.remove(&rec.id);
        let n = self.switch.flush_macs(rec.id);
        // At shutdown the connections stay in the table's state file for the next process.
        if persist {
            let c = self.switch.flush_connections(rec.id);
            tracing::info!("port {name} removed ({n} MAC entries, {c} connections flushed)");
        } else {
            tracing::info!("port {name} stopped ({n} MAC entries flushed)");
        }
        if persist {
            self.identities().forget(name);
            if rec.persisted {
                self.save(&ports);
            }
            self.saved_addresses().remove(name);
            self.save_addresses(&ports);
        }
        Ok(())
    }

    fn publish(&self, ports: &BTreeMap<String, PortRecord>) {
        let specs: Vec<PortSpec> = ports
            .values()
            .map(|p| PortSpec {
                id: p.id,
                segment: p.cfg.segment_id(),
                dev: p.dev.clone(),
                policy: p.policy.clone(),
                // Validated when the port was added.
                mac: p.cfg.bound_mac("").ok().flatten(),
                guard: p.guard.clone(),
            })
            .collect();
        if let Err(e) = self.switch.set_ports(&specs) {
            // Ids and segments were validated on the way in; this would be a bug.
            tracing::error!("port table refused: {e}");
        }
    }

    fn save(&self, ports: &BTreeMap<String, PortRecord>) {
        let Some(path) = &self.state_file else { return };
        let list: Vec<&PortConfig> = ports
            .values()
            .filter(|p| p.persisted)
            .map(|p| &p.cfg)
            .collect();
        if let Err(e) = write_atomically(path, &list) {
            tracing::error!("cannot save port state to {}: {e}", path.display());
        }
    }

    fn info(&self, p: &PortRecord) -> PortInfo {
        let s = self.switch.port_stats(p.id).since(&p.base);
        PortInfo {
            name: p.cfg.name.clone(),
            uuid: p.uuid,
            id: p.id,
            socket: p.cfg.socket.clone(),
            mode: p.cfg.mode,
            segment: p.cfg.segment_id(),
            tenant: p.cfg.tenant_name().to_string(),
            tags: p.cfg.tags.clone(),
            spoof_guard: p.cfg.spoof_guard.unwrap_or_default(),
            addresses: addresses::address_infos(&p.bindings),
            address_conflicts: p.conflicts,
            state: p.dev.state().as_str().to_string(),
            mac: p.cfg.mac.clone(),
            vhost_connections: p.dev.connections(),
            features: format!("{:#x}", p.dev.features()),
            queues: p.dev.queue_pairs(),
            queues_running: p.dev.rx_queues_running(),
            rx_packets_per_worker: self
                .switch
                .port_stats_per_worker(p.id)
                .iter()
                .zip(&p.base_workers)
                .map(|(s, b)| s.rx_packets.wrapping_sub(b.rx_packets))
                .collect(),
            persisted: p.persisted,
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r.name().to_string(), s.drops[r as usize]))
                .collect(),
        }
    }

    /// All ports.
    pub fn ports(&self) -> Vec<PortInfo> {
        let ports = self.lock();
        ports.values().map(|p| self.info(p)).collect()
    }

    /// One port.
    pub fn port(&self, name: &str) -> Result<PortInfo, ApiError> {
        let ports = self.lock();
        ports
            .get(name)
            .map(|p| self.info(p))
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))
    }

    /// The MAC table with port names.
    pub fn macs(&self) -> Vec<MacInfo> {
        let ports = self.lock();
        let name_of = |id: u16| {
            ports
                .values()
                .find(|p| p.id == id)
                .map(|p| p.cfg.name.clone())
        };
        self.switch
            .mac_entries()
            .into_iter()
            .filter_map(|e| {
                Some(MacInfo {
                    segment: e.segment,
                    mac: e.mac.to_string(),
                    port: name_of(e.port)?,
                    age_secs: e.age_secs,
                })
            })
            .collect()
    }
}

impl Agent {
    /// Replaces a port's own rules (the last tier of its policy, after the document's) and
    /// its defaults. Connections it no longer allows are cut on their next
    /// packet; the others continue. Persisted for ports added through the API; a port from
    /// the config file gets the file's policy back at the next start.
    pub fn set_policy(&self, name: &str, policy: PolicyConfig) -> Result<PolicyInfo, ApiError> {
        crate::compile::policy(&policy, "policy")?;
        let mut ports = self.lock();
        let rec = ports
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        let mut cfg = rec.cfg.clone();
        cfg.policy = Some(policy);
        let compiled = self.compile_vnic(&mut self.doc(), &cfg)?;
        let (egress, ingress) = (compiled.policy.egress.len(), compiled.policy.ingress.len());
        rec.cfg = cfg;
        rec.install(compiled);
        let persisted = rec.persisted;
        self.publish(&ports);
        if persisted {
            self.save(&ports);
        }
        tracing::info!(
            "port {name}: new policy ({egress} egress, {ingress} ingress rules), epoch {}",
            self.switch.policy_epoch()
        );
        self.policy_of(&ports, name)
    }

    /// Replaces a vNIC's tags (validated as a whole: nothing changes on an error). Saved with
    /// an API-added port; a config-file port's tags come from the file again after a restart.
    /// The data plane does not see tags: the vNIC's groups are worked out again, and where
    /// they change, its policy is published with its new groups (its connections that its
    /// new groups do not allow, at either end, are cut on their next packet).
    pub fn set_tags(
        &self,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<PortInfo, ApiError> {
        crate::config::validate_tags(&tags, "tags")?;
        let mut ports = self.lock();
        let rec = ports
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        let mut cfg = rec.cfg.clone();
        cfg.tags = tags;
        let compiled = self.compile_vnic(&mut self.doc(), &cfg)?;
        rec.cfg = cfg;
        if rec.install(compiled) {
            self.publish(&ports);
        }
        let persisted = ports[name].persisted;
        if persisted {
            self.save(&ports);
        }
        tracing::info!("port {name}: tags {:?}", ports[name].cfg.tags);
        Ok(self.info(&ports[name]))
    }

    /// A port's policy with its per-rule counters.
    pub fn policy(&self, name: &str) -> Result<PolicyInfo, ApiError> {
        let ports = self.lock();
        self.policy_of(&ports, name)
    }

    fn policy_of(
        &self,
        ports: &BTreeMap<String, PortRecord>,
        name: &str,
    ) -> Result<PolicyInfo, ApiError> {
        let rec = ports
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        let stats = self.switch.rule_stats(rec.id).unwrap_or_default();
        let doc = self.doc();
        let rows = |rules: &[dataplane::ruleset::Rule],
                    st: &[RuleStat],
                    names: &[RuleName],
                    peer: Peer| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let s = st.get(i).copied().unwrap_or_default();
                    RuleInfo {
                        index: i,
                        id: r.id,
                        name: names.get(i).map(ToString::to_string),
                        matches: policy::describe(&doc, r, peer),
                        action: r.action.into(),
                        packets: s.packets,
                        bytes: s.bytes,
                        connections: s.connections,
                    }
                })
                .collect()
        };
        Ok(PolicyInfo {
            port: name.to_string(),
            epoch: self.switch.port_policy_epoch(rec.id).unwrap_or(0),
            policy: rec.cfg.policy.clone(),
            filtered: rec.policy.filtered,
            egress_default: rec.policy.egress.default_action().into(),
            ingress_default: rec.policy.ingress.default_action().into(),
            groups: rec
                .policy
                .groups
                .iter()
                .filter_map(|&g| doc.group_name(g))
                .collect(),
            rules: RuleTables {
                egress: rows(
                    rec.policy.egress.rules(),
                    &stats.egress,
                    &rec.names.egress,
                    Peer::Dst,
                ),
                ingress: rows(
                    rec.policy.ingress.rules(),
                    &stats.ingress,
                    &rec.names.ingress,
                    Peer::Src,
                ),
            },
        })
    }

    /// Tracked connections of one port (either end), or of all ports.
    pub fn conns(&self, name: Option<&str>) -> Result<Vec<ConnView>, ApiError> {
        let ports = self.lock();
        let id = match name {
            Some(n) => Some(
                ports
                    .get(n)
                    .ok_or_else(|| ApiError::not_found(format!("no port named {n:?}")))?
                    .id,
            ),
            None => None,
        };
        let name_of = |id: u16| {
            ports
                .values()
                .find(|p| p.id == id)
                .map(|p| p.cfg.name.clone())
        };
        let ids = |r: u16, rules: Option<&dataplane::ruleset::Ruleset>| {
            (r != u16::MAX)
                .then(|| {
                    rules
                        .and_then(|rs| rs.rules().get(usize::from(r)))
                        .map(|x| x.id)
                })
                .flatten()
        };
        let now_epoch = self.switch.policy_epoch();
        let mut out: Vec<ConnView> = self
            .switch
            .connections(id)
            .into_iter()
            .map(|c| {
                // The recorded rule positions name rules of the rulesets the connection was
                // validated under; they are shown (as rule ids) only while those are the
                // current ones, never as whatever rule moved into the old position.
                let at = conntrack::full_epoch(now_epoch, c.epoch);
                let current = |vnic: u16| {
                    !c.stale && self.switch.port_policy_epoch(vnic).is_some_and(|e| at >= e)
                };
                let (fresh_owner, fresh_peer) = (current(c.owner), current(c.peer));
                let owner = ports.values().find(|p| p.id == c.owner);
                let peer = (c.peer != c.owner)
                    .then(|| ports.values().find(|p| p.id == c.peer))
                    .flatten();
                ConnView {
                    zone: c.key.zone,
                    proto: c.key.proto,
                    src: c.key.src.to_string(),
                    sport: c.key.sport,
                    dst: c.key.dst.to_string(),
                    // An echo connection is keyed (id, id + 1): both "ports" show the id.
                    dport: if matches!(c.key.proto, 1 | 58) {
                        c.key.sport
                    } else {
                        c.key.dport
                    },
                    owner: name_of(c.owner),
                    peer: if c.peer == c.owner {
                        None
                    } else {
                        name_of(c.peer)
                    },
                    state: match &c.tcp {
                        Some(t) => t.timeout_class().name(),
                        None if c.replied => "replied",
                        None => "unreplied",
                    }
                    .to_string(),
                    age_secs: c.age_secs,
                    idle_secs: c.idle_secs,
                    packets: c.packets,
                    rule_egress: ids(c.rule_egress, owner.map(|p| &*p.policy.egress))
                        .filter(|_| fresh_owner),
                    rule_ingress: ids(c.rule_ingress, peer.map(|p| &*p.policy.ingress))
                        .filter(|_| fresh_peer),
                    replied: c.replied,
                    epoch: at,
                    revalidate: !(fresh_owner && fresh_peer),
                }
            })
            .collect();
        out.sort_by(|a, b| (a.zone, &a.src, a.sport).cmp(&(b.zone, &b.src, b.sport)));
        Ok(out)
    }

    /// Removes a port's connections; returns how many.
    pub fn flush(&self, name: &str) -> Result<usize, ApiError> {
        let ports = self.lock();
        let rec = ports
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        let n = self.switch.flush_connections(rec.id);
        tracing::info!("port {name}: {n} connections flushed");
        Ok(n)
    }
}

impl Agent {
    /// The connection table's size and use.
    pub fn conntrack(&self) -> ConntrackInfo {
        let ct = self.switch.conntrack();
        let backing = crate::sys::huge_backing(ct.slots_range());
        ConntrackInfo {
            capacity: self.switch.config().ct_capacity,
            live: ct.len(),
            bytes_per_connection: ct.bytes_per_connection(),
            epoch: self.switch.policy_epoch(),
            state_file: ct.state_file().map(|p| p.display().to_string()),
            opened: self.switch.conntrack_opened().map(ToString::to_string),
            mapped_bytes: backing.map(|b| b.0),
            huge_page_bytes: backing.map(|b| b.1),
        }
    }

    /// Workers, drop reasons and ports.
    pub fn stats(&self) -> StatsInfo {
        StatsInfo {
            workers: self
                .switch
                .worker_stats()
                .iter()
                .map(|w| WorkerInfo {
                    cpu: w.cpu,
                    busy_polls: w.busy_polls,
                    idle_polls: w.idle_polls,
                    punt_dropped: w.punt_dropped,
                    deferred_polls: w.deferred_polls,
                })
                .collect(),
            drop_reasons: DropReason::ALL
                .iter()
                .map(|r| ReasonInfo {
                    name: r.name().to_string(),
                    description: r.description().to_string(),
                })
                .collect(),
            ports: self.ports(),
        }
    }
}

impl Agent {
    /// Starts the control thread that drains the workers' punt rings (every 10 ms) while the
    /// agent lives.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("punt".into())
            .spawn(move || {
                while let Some(agent) = weak.upgrade() {
                    agent.drain_punts();
                    agent.settle();
                    drop(agent);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            })
            .map(|_| ())
    }

    fn traces(&self) -> std::sync::MutexGuard<'_, Traces> {
        self.traces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves what the workers punted into the per-port buffers.
    pub fn drain_punts(&self) {
        let mut t = self.traces();
        let Traces { records, lost } = &mut *t;
        let mut pending = self.pending();
        self.switch.drain_punts(|item| match item {
            PuntItem::Claim { port, zone, claim } => pending.claim(port, zone, claim),
            PuntItem::Dhcp { port, zone, reply } => pending.lease(port, zone, reply),
            PuntItem::Trace(r) => {
                let buf = records.entry(r.port).or_default();
                if buf.len() >= TRACE_BUFFER {
                    *lost.entry(r.port).or_default() += 1;
                } else {
                    buf.push_back(r);
                }
            }
        });
    }

    /// Starts tracing the next `count` frames of a port (0 stops); earlier records are
    /// discarded.
    pub fn start_trace(&self, name: &str, count: u32) -> Result<TraceStarted, ApiError> {
        if count > 10_000 {
            return Err(ApiError::bad("count", format!("{count} is over 10000")));
        }
        let ports = self.lock();
        let rec = ports
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        self.switch.trace(rec.id, 0);
        self.drain_punts();
        let mut t = self.traces();
        t.records.remove(&rec.id);
        t.lost.remove(&rec.id);
        self.switch.trace(rec.id, count);
        tracing::info!("port {name}: tracing the next {count} frames");
        Ok(TraceStarted {
            port: name.to_string(),
            count,
        })
    }

    /// The trace records of a port collected since the last call (they are handed out once).
    pub fn trace(&self, name: &str) -> Result<TraceInfo, ApiError> {
        let ports = self.lock();
        let rec = ports
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        self.drain_punts();
        let (records, lost) = {
            let mut t = self.traces();
            let r: Vec<TraceRecord> = t.records.remove(&rec.id).unwrap_or_default().into();
            (r, t.lost.remove(&rec.id).unwrap_or(0))
        };
        let name_of = |id: u16| {
            ports
                .values()
                .find(|p| p.id == id)
                .map_or_else(|| format!("#{id}"), |p| p.cfg.name.clone())
        };
        let rule_of = |r: &dataplane::filter::RuleRef| {
            let (vnic, ingress, i) = (r.vnic(), r.is_ingress(), r.index());
            let id = ports.values().find(|p| p.id == vnic).and_then(|p| {
                let rs = if ingress {
                    &p.policy.ingress
                } else {
                    &p.policy.egress
                };
                usize::try_from(i)
                    .ok()
                    .and_then(|i| rs.rules().get(i))
                    .map(|x| x.id)
            });
            RuleHit {
                port: name_of(vnic),
                direction: if ingress { "ingress" } else { "egress" }.into(),
                rule: id,
            }
        };
        let l2_name = |d: L2Decision| match d {
            L2Decision::Port(p) => format!("port {}", name_of(p)),
            L2Decision::Flood => "flood".to_string(),
            L2Decision::Drop(r) => format!("drop {}", r.name()),
        };
        let views = records
            .iter()
            .map(|r| {
                let (verdict, to, reason, counted_on) = match r.verdict {
                    Verdict::Forwarded(d) => (
                        "forwarded",
                        Some(match d {
                            L2Decision::Port(p) => name_of(p),
                            _ => "flood".to_string(),
                        }),
                        None,
                        None,
                    ),
                    Verdict::Dropped(reason, on) => (
                        "dropped",
                        None,
                        Some(reason.name().to_string()),
                        Some(name_of(on)),
                    ),
                };
                TraceView {
                    worker: r.worker,
                    queue: r.queue,
                    len: r.len,
                    head: r.head[..usize::from(r.head_len)]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                    packet: match &r.parsed {
                        Some(Ok(p)) => Some(p.to_string()),
                        _ => None,
                    },
                    parse_error: match &r.parsed {
                        Some(Err(e)) => Some(DropReason::from(*e).name().to_string()),
                        _ => None,
                    },
                    l2: r.l2.map(l2_name),
                    firewall: match r.firewall {
                        TraceEvent::NotJudged => "not_judged",
                        TraceEvent::Found => "found",
                        TraceEvent::Created => "created",
                        TraceEvent::Passed => "passed",
                        TraceEvent::Refused => "refused",
                    }
                    .to_string(),
                    rules: r.rules.iter().flatten().map(rule_of).collect(),
                    verdict: verdict.to_string(),
                    to,
                    reason,
                    counted_on,
                    delivered: r.delivered,
                    delivery_drop: r.delivery_drop.map(|d| d.name().to_string()),
                }
            })
            .collect();
        Ok(TraceInfo {
            port: name.to_string(),
            remaining: self.switch.trace_remaining(rec.id),
            lost,
            records: views,
        })
    }
}
