//! The configuration file (TOML) and its validation. Every error names the field and the reason.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use dataplane::wire::Mac;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::policy::PolicyConfig;

/// Where bulwarkd keeps its API socket and state when no `--run-dir` is given.
pub const DEFAULT_RUN_DIR: &str = "/run/bulwark";

/// A configuration error: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// Path of the offending field, e.g. `ports[1].segment`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Who opens a port's vhost-user socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// QEMU listens (`-chardev socket,server=on`); bulwarkd dials and re-dials.
    #[default]
    Client,
    /// bulwarkd listens; QEMU dials (use QEMU's `reconnect=` to survive bulwarkd restarts).
    Server,
}

/// One port, as written in the config file or an API request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Unique name: 1-32 characters from `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,32}$")]
    pub name: String,
    /// Absolute path of the vhost-user socket.
    #[schema(value_type = String, pattern = "^/", max_length = 107)]
    pub socket: PathBuf,
    /// Socket mode (default client).
    #[serde(default)]
    pub mode: Mode,
    /// Logical segment id, 1-65535. Exactly one of `segment` and `vlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 65535)]
    pub segment: Option<u32>,
    /// Access VLAN, 1-4094 (the same id space as `segment`: `vlan = 10` is segment 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4094)]
    pub vlan: Option<u32>,
    /// Queue pairs offered to the guest (virtio-net multiqueue), 1-16 (default 1). QEMU must
    /// ask for the same number or fewer: `-netdev vhost-user,queues=N` with
    /// `-device virtio-net-pci,mq=on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 16)]
    pub queues: Option<u32>,
    /// The vNIC's UUID, its durable name (default: generated when the vNIC is first seen and
    /// kept in `<run-dir>/vnics.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid)]
    pub uuid: Option<String>,
    /// The guest's MAC address (QEMU's `-device virtio-net-pci,mac=...`). When set, the port
    /// is bound to it: frames with any other source MAC are dropped (`src_mac_spoofed`), so a
    /// guest cannot claim another VM's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")]
    pub mac: Option<String>,
    /// The tenant the vNIC belongs to: 1-32 characters from `[A-Za-z0-9_.-]` (default
    /// `default`). Fixed for the port's life: to move a vNIC to another tenant, remove the port
    /// and add it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,32}$")]
    pub tenant: Option<String>,
    /// Tags, `key = "value"` (`tier = "web"`, `env = "prod"`): at most 32; a key is 1-63
    /// characters from `[A-Za-z0-9_.-/]`, a value 0-63 characters from `[A-Za-z0-9_.-]`. Keys
    /// and values are case-sensitive. Changeable at run time (`PUT /v1/ports/NAME/tags`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// The vNIC's own rules and defaults: the last tier of its firewall, after the policy
    /// document's (default: none; with no document either, the port is switched at L2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// Spoof guard: `off` (default: nothing is dropped; addresses are still learned from ARP
    /// and ND), `learn` (the first use of an address no other vNIC of the segment owns binds
    /// it, up to `max_addresses`), `strict` (only `addresses` and DHCP leases). `learn` and
    /// `strict` need `mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoof_guard: Option<GuardMode>,
    /// Addresses bound to the vNIC from the start (IPv4 or IPv6, no prefix length).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Most addresses the vNIC may have bound, 1-256 (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 256)]
    pub max_addresses: Option<u32>,
    /// The guest serves DHCP: its DHCP replies pass and the leases they grant are bound to
    /// the clients' vNICs. From any other guarded vNIC a DHCP server reply is dropped
    /// (`dhcp_server_untrusted`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp_server: bool,
}

/// A vNIC's spoof guard mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Nothing is dropped; addresses are learned from ARP, ND and DHCP.
    #[default]
    Off,
    /// Trust on first use.
    Learn,
    /// Bound addresses only.
    Strict,
}

/// Addresses a vNIC may bind when the config does not say.
pub const DEFAULT_MAX_ADDRESSES: u32 = 16;

/// The tenant of a port that names none.
pub const DEFAULT_TENANT: &str = "default";
/// Most tags a vNIC may carry.
pub const MAX_TAGS: usize = 32;

/// A name of up to `max` characters from `[A-Za-z0-9_.-]` and `extra`, at least `min` long.
fn is_name(s: &str, min: usize, max: usize, extra: &str) -> bool {
    (min..=max).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c) || extra.contains(c))
}

/// Checks a vNIC's tags; `at` is the field path of the map (e.g. `ports[2].tags`).
pub fn validate_tags(tags: &BTreeMap<String, String>, at: &str) -> Result<(), ConfigError> {
    if tags.len() > MAX_TAGS {
        return Err(ConfigError::new(
            at,
            format!("{} tags; a vNIC may have at most {MAX_TAGS}", tags.len()),
        ));
    }
    for (k, v) in tags {
        if !is_name(k, 1, 63, "/") {
            return Err(ConfigError::new(
                format!("{at}.{k}"),
                "a tag key must be 1-63 characters from A-Z a-z 0-9 _ . - /",
            ));
        }
        if !is_name(v, 0, 63, "") {
            return Err(ConfigError::new(
                format!("{at}.{k}"),
                format!("{v:?}: a tag value must be 0-63 characters from A-Z a-z 0-9 _ . -"),
            ));
        }
    }
    Ok(())
}

impl PortConfig {
    /// Checks the port on its own; `at` prefixes field names (e.g. `ports[2].`).
    pub fn validate(&self, at: &str) -> Result<u16, ConfigError> {
        let f = |name: &str| format!("{at}{name}");
        let n = &self.name;
        if n.is_empty()
            || n.len() > 32
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(ConfigError::new(
                f("name"),
                "must be 1-32 characters from A-Z a-z 0-9 _ . -",
            ));
        }
        if !self.socket.is_absolute() {
            return Err(ConfigError::new(f("socket"), "must be an absolute path"));
        }
        if self.socket.as_os_str().len() > 107 {
            return Err(ConfigError::new(
                f("socket"),
                "is longer than a Unix socket path may be (107 bytes)",
            ));
        }
        if let Some(q) = self.queues {
            if q == 0 || q as usize > bulwark_vhost::MAX_QUEUE_PAIRS {
                return Err(ConfigError::new(
                    f("queues"),
                    format!("{q} is out of range 1-{}", bulwark_vhost::MAX_QUEUE_PAIRS),
                ));
            }
        }
        self.bound_mac(at)?;
        self.uuid(at)?;
        if let Some(t) = &self.tenant {
            if !is_name(t, 1, 32, "") {
                return Err(ConfigError::new(
                    f("tenant"),
                    format!("{t:?}: must be 1-32 characters from A-Z a-z 0-9 _ . -"),
                ));
            }
        }
        validate_tags(&self.tags, &f("tags"))?;
        self.addresses(at)?;
        if self.spoof_guard.unwrap_or_default() != GuardMode::Off && self.mac.is_none() {
            return Err(ConfigError::new(
                f("mac"),
                "spoof_guard learn and strict need the guest's MAC (mac = \"52:54:00:...\")",
            ));
        }
        match (self.segment, self.vlan) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                f("vlan"),
                "give either segment or vlan, not both",
            )),
            (None, None) => Err(ConfigError::new(
                f("segment"),
                "missing: give segment (1-65535) or vlan (1-4094)",
            )),
            (Some(s), None) => u16::try_from(s).ok().filter(|&s| s >= 1).ok_or_else(|| {
                ConfigError::new(f("segment"), format!("{s} is out of range 1-65535"))
            }),
            (None, Some(v)) => u16::try_from(v)
                .ok()
                .filter(|&v| (1..=4094).contains(&v))
                .ok_or_else(|| ConfigError::new(f("vlan"), format!("{v} is out of range 1-4094"))),
        }
    }

    /// The UUID the port names, if any; `at` prefixes field names.
    pub fn uuid(&self, at: &str) -> Result<Option<uuid::Uuid>, ConfigError> {
        self.uuid
            .as_deref()
            .map(|u| {
                u.parse().map_err(|_| {
                    ConfigError::new(format!("{at}uuid"), format!("{u:?} is not a UUID"))
                })
            })
            .transpose()
    }

    /// The MAC the port is bound to, if any; `at` prefixes field names.
    pub fn bound_mac(&self, at: &str) -> Result<Option<Mac>, ConfigError> {
        let Some(m) = &self.mac else { return Ok(None) };
        let mac: Mac = m.parse().map_err(|_| {
            ConfigError::new(
                format!("{at}mac"),
                format!("{m:?} is not a MAC address (like 52:54:00:12:34:56)"),
            )
        })?;
        if mac.is_group() || mac.is_zero() {
            return Err(ConfigError::new(
                format!("{at}mac"),
                format!("{m} is a multicast or zero address; a guest's MAC is unicast"),
            ));
        }
        Ok(Some(mac))
    }

    /// The static addresses, checked (`at` prefixes field names).
    pub fn addresses(&self, at: &str) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        let max = self.max_addresses.unwrap_or(DEFAULT_MAX_ADDRESSES);
        if !(1..=256).contains(&max) {
            return Err(ConfigError::new(
                format!("{at}max_addresses"),
                format!("{max} is out of range 1-256"),
            ));
        }
        if self.addresses.len() > max as usize {
            return Err(ConfigError::new(
                format!("{at}addresses"),
                format!("{} addresses; max_addresses is {max}", self.addresses.len()),
            ));
        }
        let mut out = Vec::with_capacity(self.addresses.len());
        for (i, a) in self.addresses.iter().enumerate() {
            let ip: std::net::IpAddr = a.parse().map_err(|_| {
                ConfigError::new(
                    format!("{at}addresses[{i}]"),
                    format!("{a:?} is not an IP address (no prefix length: 10.0.0.5, fd00::5)"),
                )
            })?;
            if ip.is_unspecified() || ip.is_multicast() || ip == std::net::IpAddr::from([255u8; 4])
            {
                return Err(ConfigError::new(
                    format!("{at}addresses[{i}]"),
                    format!("{a}: a vNIC's address is a unicast address"),
                ));
            }
            if out.contains(&ip) {
                return Err(ConfigError::new(
                    format!("{at}addresses[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
            out.push(ip);
        }
        Ok(out)
    }

    /// The tenant (`DEFAULT_TENANT` when none is named).
    pub fn tenant_name(&self) -> &str {
        self.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }

    /// Queue pairs (after `validate` succeeded).
    pub fn queue_pairs(&self) -> usize {
        self.queues.unwrap_or(1) as usize
    }

    /// The segment id (after `validate` succeeded).
    pub fn segment_id(&self) -> u16 {
        self.segment
            .or(self.vlan)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0)
    }
}

/// The `[switch]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSection {
    /// CPU ids for the poll-mode workers (default: the last CPU).
    pub workers: Option<Vec<usize>>,
    /// Microseconds an idle worker sleeps between polls after a run of empty ones (default 0:
    /// pure polling, one core at 100 %).
    pub idle_sleep_us: Option<u64>,
    /// MAC aging time in seconds (default 300).
    pub mac_aging_secs: Option<u32>,
    /// MAC table slots (default 65536).
    pub mac_table_size: Option<usize>,
    /// Largest frame accepted from a guest, bytes without FCS (default 9216).
    pub max_frame: Option<u32>,
}

/// The `[conntrack]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackSection {
    /// Most tracked connections (IPv4; an IPv6 one counts twice), fixed at start (default
    /// 1048576, about 87 MiB).
    pub capacity: Option<usize>,
    /// Whether the table outlives the process (default true): it lives in `state_file`, which
    /// a restarted bulwarkd (after a crash, `kill -9` or an upgrade) maps again, so the
    /// guests' connections go on. `false`: the process's own memory, emptied by a restart.
    pub persistent: Option<bool>,
    /// The file the table lives in (default `<run-dir>/conntrack.table`). Put it on tmpfs
    /// (`/run`, `/dev/shm`): on a disk the kernel writes the table back to it.
    pub state_file: Option<PathBuf>,
    /// Idle timeouts in seconds.
    #[serde(default)]
    pub timeouts: TimeoutsSection,
}

impl ConntrackSection {
    /// The state file the table lives in, given the run directory (None: not persistent).
    pub fn state_file_in(&self, run_dir: &Path) -> Option<PathBuf> {
        self.persistent.unwrap_or(true).then(|| {
            self.state_file
                .clone()
                .unwrap_or_else(|| run_dir.join("conntrack.table"))
        })
    }
}

/// `[conntrack.timeouts]`: idle timeouts per state, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// TCP after the first SYN (default 30).
    pub tcp_syn_sent: Option<u32>,
    /// TCP while the handshake completes (default 30).
    pub tcp_opening: Option<u32>,
    /// TCP established (default 86400).
    pub tcp_established: Option<u32>,
    /// TCP after a FIN from one side (default 900).
    pub tcp_closing: Option<u32>,
    /// TCP after FINs from both sides (default 45).
    pub tcp_fin_wait: Option<u32>,
    /// TCP closed, TIME_WAIT, or after a RST (default 30).
    pub tcp_closed: Option<u32>,
    /// UDP before a reply (default 30).
    pub udp_first: Option<u32>,
    /// UDP after a reply (default 120).
    pub udp_replied: Option<u32>,
    /// ICMP echo (default 30).
    pub icmp: Option<u32>,
    /// Other protocols (default 60).
    pub other: Option<u32>,
}

impl TimeoutsSection {
    /// Each timeout by name.
    pub fn fields(&self) -> [(&'static str, Option<u32>); 10] {
        [
            ("tcp_syn_sent", self.tcp_syn_sent),
            ("tcp_opening", self.tcp_opening),
            ("tcp_established", self.tcp_established),
            ("tcp_closing", self.tcp_closing),
            ("tcp_fin_wait", self.tcp_fin_wait),
            ("tcp_closed", self.tcp_closed),
            ("udp_first", self.udp_first),
            ("udp_replied", self.udp_replied),
            ("icmp", self.icmp),
            ("other", self.other),
        ]
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Switch-wide settings.
    #[serde(default)]
    pub switch: SwitchSection,
    /// Connection tracking.
    #[serde(default)]
    pub conntrack: ConntrackSection,
    /// Ports to attach at start.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// A policy document (YAML, or JSON if it ends in .json) applied at start when the run
    /// directory holds no policy revision yet; a relative path is read from the config file's
    /// directory. Once a revision exists, the run directory's is kept (apply a new one with
    /// `bulwarkctl policy apply -f FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<std::path::PathBuf>,
}

impl Config {
    /// Parses and validates a config file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let field = e.span().map(|s| locate(text, s.start)).unwrap_or_default();
            ConfigError::new(field, msg)
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
        let mut cfg = Config::parse(&text).map_err(|e| {
            ConfigError::new(e.field, format!("{} (in {})", e.reason, path.display()))
        })?;
        if let (Some(p), Some(dir)) = (&cfg.policy_file, path.parent()) {
            if p.is_relative() {
                cfg.policy_file = Some(dir.join(p));
            }
        }
        Ok(cfg)
    }

    /// Checks everything that does not need the machine.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cpus = dataplane::online_cpus();
        if let Some(w) = &self.switch.workers {
            if w.is_empty() {
                return Err(ConfigError::new(
                    "switch.workers",
                    "must name at least one CPU",
                ));
            }
            let mut seen = HashSet::new();
            for (i, &c) in w.iter().enumerate() {
                if c >= cpus {
                    return Err(ConfigError::new(
                        format!("switch.workers[{i}]"),
                        format!("CPU {c} does not exist (this machine has {cpus})"),
                    ));
                }
                if !seen.insert(c) {
                    return Err(ConfigError::new(
                        format!("switch.workers[{i}]"),
                        format!("CPU {c} listed twice"),
                    ));
                }
            }
        }
        if self.switch.mac_aging_secs == Some(0) {
            return Err(ConfigError::new(
                "switch.mac_aging_secs",
                "must be at least 1",
            ));
        }
        if let Some(s) = self.switch.mac_table_size {
            if !(64..=1 << 24).contains(&s) {
                return Err(ConfigError::new(
                    "switch.mac_table_size",
                    "must be between 64 and 16777216",
                ));
            }
        }
        if let Some(m) = self.switch.max_frame {
            if !(64..=65535).contains(&m) {
                return Err(ConfigError::new(
                    "switch.max_frame",
                    "must be between 64 and 65535",
                ));
            }
        }
        if let Some(c) = self.conntrack.capacity {
            if !(1024..=1 << 28).contains(&c) {
                return Err(ConfigError::new(
                    "conntrack.capacity",
                    "must be between 1024 and 268435456",
                ));
            }
        }
        if let Some(f) = &self.conntrack.state_file {
            if self.conntrack.persistent == Some(false) {
                return Err(ConfigError::new(
                    "conntrack.state_file",
                    "is set, but conntrack.persistent is false: remove one of them",
                ));
            }
            if f.as_os_str().is_empty() || f.file_name().is_none() || f.is_dir() {
                return Err(ConfigError::new(
                    "conntrack.state_file",
                    "must name a file (it is created when missing)",
                ));
            }
        }
        for (name, v) in self.conntrack.timeouts.fields() {
            if v == Some(0) {
                return Err(ConfigError::new(
                    format!("conntrack.timeouts.{name}"),
                    "must be at least 1 second",
                ));
            }
        }
        check_ports(&self.ports, "ports")
    }
}

/// Validates a list of ports: each on its own, then names and sockets unique.
pub fn check_ports(ports: &[PortConfig], list: &str) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    let mut socks = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("{list}[{i}].");
        p.validate(&at)?;
        crate::compile::port_policy(p, &at)?;
        if !names.insert(&p.name) {
            return Err(ConfigError::new(
                format!("{at}name"),
                format!("port name {:?} is used twice", p.name),
            ));
        }
        if !socks.insert(&p.socket) {
            return Err(ConfigError::new(
                format!("{at}socket"),
                format!("socket {} is used twice", p.socket.display()),
            ));
        }
    }
    Ok(())
}

/// Names the TOML table/key around byte `pos`, as well as a line number, for parse errors.
fn locate(text: &str, pos: usize) -> String {
    let upto = &text[..pos.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let mut table = String::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for l in upto.lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let c = index.entry(name.to_string()).or_insert(0);
            table = format!("{name}[{c}]");
            *c += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = name.to_string();
        }
    }
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let key = text[line_start..]
        .lines()
        .next()
        .and_then(|l| l.split('=').next())
        .map(str::trim)
        .unwrap_or("");
    match (table.is_empty(), key.is_empty() || key.starts_with('[')) {
        (true, true) => format!("line {line}"),
        (true, false) => format!("{key} (line {line})"),
        (false, true) => format!("{table} (line {line})"),
        (false, false) => format!("{table}.{key} (line {line})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conntrack::Timeouts;

    fn err(text: &str) -> ConfigError {
        Config::parse(text).unwrap_err()
    }

    #[test]
    fn tenant_and_tags_are_checked_by_field() {
        let port = |extra: &str| {
            format!(
                "[[ports]]\nname = \"vm1\"\nsocket = \"/tmp/vm1.sock\"\nsegment = 10\n{extra}\n"
            )
        };
        let c = Config::parse(&port(
            "tenant = \"blue\"\ntags = { tier = \"web\", \"k8s.io/app\" = \"shop\", empty = \"\" }",
        ))
        .unwrap();
        assert_eq!(c.ports[0].tenant_name(), "blue");
        assert_eq!(c.ports[0].tags["tier"], "web");
        assert_eq!(c.ports[0].tags["k8s.io/app"], "shop");
        assert_eq!(
            Config::parse(&port("")).unwrap().ports[0].tenant_name(),
            DEFAULT_TENANT
        );

        let e = err(&port("tenant = \"\""));
        assert_eq!(e.field, "ports[0].tenant");
        let e = err(&port("tenant = \"a b\""));
        assert_eq!(e.field, "ports[0].tenant");
        let e = err(&port("tags = { \"bad key\" = \"x\" }"));
        assert_eq!(e.field, "ports[0].tags.bad key");
        assert!(e.reason.contains("tag key"), "{e}");
        let e = err(&port("tags = { tier = \"we b\" }"));
        assert_eq!(e.field, "ports[0].tags.tier");
        assert!(e.reason.contains("tag value"), "{e}");
        let long = "x".repeat(64);
        let e = err(&port(&format!("tags = {{ tier = \"{long}\" }}")));
        assert_eq!(e.field, "ports[0].tags.tier");
        let many: Vec<String> = (0..33).map(|i| format!("k{i} = \"v\"")).collect();
        let e = err(&port(&format!("tags = {{ {} }}", many.join(", "))));
        assert_eq!(e.field, "ports[0].tags");
        assert!(e.reason.contains("at most 32"), "{e}");
    }

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(
            r#"
[switch]
workers = [0]
idle_sleep_us = 100

[[ports]]
name = "vm1"
socket = "/tmp/vm1.sock"
segment = 10

[[ports]]
name = "vm2"
socket = "/tmp/vm2.sock"
mode = "server"
vlan = 20
"#,
        )
        .unwrap();
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].mode, Mode::Client);
        assert_eq!(c.ports[1].mode, Mode::Server);
        assert_eq!(c.ports[1].segment_id(), 20);
        assert_eq!(crate::compile::switch_config(&c).idle_sleep_us, 100);
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    /// The example in the README is a valid config and means what it says.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\n")
            .expect("a toml block in the README")
            + 8;
        let text = &readme[start..start + readme[start..].find("```").unwrap()];
        // The example pins a worker to CPU 1; keep the test independent of the machine.
        let text = text.replace("workers = [1]", "workers = [0]");
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("README example: {e}"));
        let p = crate::compile::port_policy(&c.ports[0], "").unwrap();
        assert_eq!(p.egress.len(), 2);
        assert_eq!(
            p.egress.rules()[1].action,
            dataplane::ruleset::Action::Reject
        );
        assert_eq!(p.max_connections, 10000);
        assert!(!p.tcp_pickup);
        let port = &c.ports[0];
        assert_eq!(port.tags["tier"], "web");
        assert_eq!(port.spoof_guard, Some(GuardMode::Learn));
        assert_eq!(port.addresses("").unwrap().len(), 2);
        assert_eq!(c.policy_file.as_deref(), Some(Path::new("policy.yaml")));
        let sc = crate::compile::switch_config(&c);
        assert_eq!(sc.ct_capacity, 1 << 20);
        assert_eq!(sc.ct_timeouts, Timeouts::default());
    }

    #[test]
    fn conntrack_section_errors_name_the_field() {
        let e = err("[conntrack]\ncapacity = 10\n");
        assert_eq!(e.field, "conntrack.capacity");
        let e = err("[conntrack]\npersistent = false\nstate_file = \"/dev/shm/x\"\n");
        assert_eq!(e.field, "conntrack.state_file");
        let e = err("[conntrack]\nstate_file = \"/\"\n");
        assert_eq!(e.field, "conntrack.state_file");
        let e = err("[conntrack]\nstate_file = 3\n");
        assert!(e.field.starts_with("conntrack.state_file"), "{e:?}");
        let e = err("[conntrack.timeouts]\nudp_first = 0\n");
        assert_eq!(e.field, "conntrack.timeouts.udp_first");
        let c = Config::parse("[conntrack.timeouts]\ntcp_established = 7200\n").unwrap();
        assert_eq!(crate::compile::switch_config(&c).ct_timeouts.tcp[2], 7200);
        let e = err(
            "[[ports]]\nname = \"a\"\nsocket = \"/tmp/a.sock\"\nsegment = 1\n\
             [ports.policy]\negress = [{ action = \"allow\", src = \"10.0.0.0/33\" }]\n",
        );
        assert_eq!(e.field, "ports[0].policy.egress[0].src[0]");
    }

    #[test]
    fn errors_name_the_field() {
        let base = "[[ports]]\nname = \"a\"\nsocket = \"/tmp/a\"\n";
        let e = err(&format!("{base}segment = 0\n"));
        assert_eq!(e.field, "ports[0].segment");
        let e = err(&format!("{base}segment = 70000\n"));
        assert_eq!(e.field, "ports[0].segment");
        let e = err(&format!("{base}vlan = 4095\n"));
        assert_eq!(e.field, "ports[0].vlan");
        let e = err(&format!("{base}vlan = 3\nsegment = 3\n"));
        assert_eq!(e.field, "ports[0].vlan");
        let e = err(base);
        assert_eq!(e.field, "ports[0].segment");
        let e = err("[[ports]]\nname = \"a b\"\nsocket = \"/tmp/a\"\nsegment = 1\n");
        assert_eq!(e.field, "ports[0].name");
        let e = err("[[ports]]\nname = \"a\"\nsocket = \"rel\"\nsegment = 1\n");
        assert_eq!(e.field, "ports[0].socket");
        let e = err(&format!("{base}segment = 1\n{base}segment = 2\n"));
        assert_eq!(e.field, "ports[1].name");
        assert!(e.reason.contains("twice"));
        let e = err(&format!("{base}segment = 1\ncolour = \"red\"\n"));
        assert!(e.reason.contains("unknown field"), "{e}");
        assert!(e.field.starts_with("ports[0].colour"), "{e}");
        let e = err("[switch]\nworkers = [4096]\n");
        assert_eq!(e.field, "switch.workers[0]");
        let e = err("[switch]\nmac_aging_secs = \"x\"\n");
        assert!(e.field.starts_with("switch.mac_aging_secs"), "{e}");
        let e = err(&format!("{base}mode = \"sideways\"\nsegment = 1\n"));
        assert!(e.field.starts_with("ports[0].mode"), "{e}");
    }
}
