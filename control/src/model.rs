//! The API's types: what bulwarkd answers and what bulwarkctl reads, one definition for both
//! (serde both ways, an OpenAPI schema each). No I/O and no data-plane state here: the agent
//! fills these in, the server sends them, the client parses them.
//!
//! The request bodies are the configuration types themselves (`config::PortConfig`,
//! `policy::PolicyConfig`): a port added through the API is written exactly as in the config
//! file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::{ConfigError, Mode};
use crate::policy::PolicyConfig;

/// An error: its HTTP status, the field at fault when there is one, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// HTTP status code (sent as the response's status, not in the body).
    #[serde(skip)]
    pub status: u16,
    /// The field at fault, e.g. `policy.egress[1].dst_ports[0]`; absent when none is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// What went wrong.
    pub error: String,
}

impl ApiError {
    /// A 400 for a bad field.
    pub fn bad(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self::with(400, field, error)
    }
    /// A 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::with(404, "", what)
    }
    /// A 409 conflict on a field.
    pub fn conflict(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self::with(409, field, error)
    }
    /// A 500.
    pub fn internal(error: impl Into<String>) -> Self {
        Self::with(500, "", error)
    }
    /// Any status.
    pub fn with(status: u16, field: impl Into<String>, error: impl Into<String>) -> Self {
        ApiError {
            status,
            field: field.into(),
            error: error.into(),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        ApiError::bad(e.field, e.reason)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.error)
        } else {
            write!(f, "{}: {}", self.field, self.error)
        }
    }
}

impl std::error::Error for ApiError {}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always "ok" when bulwarkd answers.
    pub status: String,
}

/// A port as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PortInfo {
    /// Port name.
    pub name: String,
    /// The vNIC's UUID: its durable name (kept across restarts, with its port id).
    pub uuid: Uuid,
    /// Internal port id (the data plane's index; kept across restarts too).
    pub id: u16,
    /// vhost-user socket path.
    #[schema(value_type = String)]
    pub socket: PathBuf,
    /// "client" or "server".
    pub mode: Mode,
    /// Segment id.
    pub segment: u16,
    /// The tenant the vNIC belongs to.
    pub tenant: String,
    /// The vNIC's tags.
    pub tags: BTreeMap<String, String>,
    /// Its spoof guard mode.
    #[serde(default)]
    pub spoof_guard: crate::config::GuardMode,
    /// Its bound addresses (spoof guard off: the addresses it was seen to use), with where
    /// each comes from.
    #[serde(default)]
    pub addresses: Vec<AddressInfo>,
    /// Addresses it claimed that another vNIC of its segment had bound (not bound to it).
    #[serde(default)]
    pub address_conflicts: u64,
    /// Link state: stopped, connecting, listening, negotiating, running.
    pub state: String,
    /// The MAC the port is bound to (frames from other source MACs are dropped), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// vhost-user frontend connections so far (QEMU connecting, or reconnecting after
    /// either side restarted); not tracked firewall connections (`GET /v1/ports/NAME/conns`).
    pub vhost_connections: u64,
    /// Negotiated virtio features, hex.
    pub features: String,
    /// Queue pairs offered (the port's `queues`).
    pub queues: usize,
    /// Queue pairs whose receive ring the guest runs now.
    pub queues_running: usize,
    /// Frames received from the guest, per worker (which cores serve this port's queues).
    pub rx_packets_per_worker: Vec<u64>,
    /// Added through the API (and persisted) rather than the config file.
    pub persisted: bool,
    /// Frames received from the guest.
    pub rx_packets: u64,
    /// Bytes received from the guest.
    pub rx_bytes: u64,
    /// Frames delivered to the guest.
    pub tx_packets: u64,
    /// Bytes delivered to the guest.
    pub tx_bytes: u64,
    /// Drops by reason (every reason, zero or not; `GET /v1/stats` describes each).
    pub drops: BTreeMap<String, u64>,
}

impl PortInfo {
    /// All drops, whatever the reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// `PUT /v1/ports/NAME/tags`: the vNIC's tags, all of them (what is not named is removed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tags {
    /// The tags (as `PortConfig::tags`: at most 32; keys 1-63 characters from
    /// `[A-Za-z0-9_.-/]`, values 0-63 from `[A-Za-z0-9_.-]`).
    pub tags: BTreeMap<String, String>,
}

/// `DELETE /v1/ports/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    /// The port's name.
    pub removed: String,
}

/// `DELETE /v1/ports/NAME/conns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Flushed {
    /// Connections removed.
    pub flushed: usize,
}

/// A port's policy and per-rule counters, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyInfo {
    /// Port name.
    pub port: String,
    /// The port's policy epoch (it grows with every change of this vNIC's rules).
    pub epoch: u64,
    /// The port's own rules and defaults as written (`null`: none; without a policy
    /// document, no firewall on this port).
    pub policy: Option<PolicyConfig>,
    /// The port is filtered (false: no document and no rules of its own, or on the document's
    /// exclusion list).
    #[serde(default)]
    pub filtered: bool,
    /// What its egress rules do with what no rule decides.
    #[serde(default = "default_allow")]
    pub egress_default: crate::document::DocAction,
    /// What its ingress rules do with what no rule decides.
    #[serde(default = "default_allow")]
    pub ingress_default: crate::document::DocAction,
    /// The groups of the policy document it is in now.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Counters per rule (they restart when the policy is replaced).
    pub rules: RuleTables,
}

fn default_allow() -> crate::document::DocAction {
    crate::document::DocAction::Allow
}

/// Per-rule counters of both rulesets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleTables {
    /// Egress rules, in order.
    pub egress: Vec<RuleInfo>,
    /// Ingress rules, in order.
    pub ingress: Vec<RuleInfo>,
}

/// One rule's counters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleInfo {
    /// Position in its list, from 0.
    pub index: usize,
    /// Operator id (default: position from 1).
    pub id: u32,
    /// Where it comes from: `tier/policy/rule` (`application/three-tier/web-to-app`), or
    /// `vnic/own/ID` for the vNIC's own rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it matches, in words (`to group app, tcp dport 8080`).
    #[serde(default)]
    pub matches: String,
    /// Its action.
    pub action: crate::document::DocAction,
    /// Packets it decided (including every packet of the connections it admitted).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Connections it admitted.
    pub connections: u64,
}

/// A tracked connection as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnView {
    /// Zone (segment).
    pub zone: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Opener's address.
    pub src: String,
    /// Opener's port (ICMP echo: the identifier).
    pub sport: u16,
    /// Responder's address.
    pub dst: String,
    /// Responder's port (ICMP echo: the identifier).
    pub dport: u16,
    /// Port whose VM opened it.
    pub owner: Option<String>,
    /// Port on the far end (`null`: not yet known, or the owner itself).
    pub peer: Option<String>,
    /// TCP state, or "unreplied"/"replied".
    pub state: String,
    /// Seconds since it was created.
    pub age_secs: u32,
    /// Seconds since its last packet.
    pub idle_secs: u32,
    /// Packets seen.
    pub packets: u64,
    /// Id of the owner's egress rule that admitted it.
    pub rule_egress: Option<u32>,
    /// Id of the peer's ingress rule that admitted it.
    pub rule_ingress: Option<u32>,
    /// A reply was seen.
    pub replied: bool,
    /// Policy epoch it was last validated under.
    pub epoch: u64,
    /// Validated before the latest policy change of one of its vNICs: its next packet is
    /// judged by the current rules (and `rule_egress`/`rule_ingress` are unknown until then).
    pub revalidate: bool,
}

/// A MAC table entry as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MacInfo {
    /// Segment id.
    pub segment: u16,
    /// The address.
    pub mac: String,
    /// Port name.
    pub port: String,
    /// Seconds since last seen.
    pub age_secs: u32,
}

/// `GET /v1/conntrack`: the connection table.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConntrackInfo {
    /// Slots (an IPv4 connection takes one, an IPv6 one two).
    pub capacity: usize,
    /// Connections tracked now.
    pub live: usize,
    /// Memory per connection (table and index, averaged).
    pub bytes_per_connection: f64,
    /// The switch's latest policy epoch.
    pub epoch: u64,
    /// The file the table lives in, which a restarted bulwarkd takes over (none: the
    /// process's memory).
    pub state_file: Option<String>,
    /// How that file was found at start: new, restored (after a crash or a clean stop, with
    /// what recovery kept and cleared), converted, or refused.
    pub opened: Option<String>,
    /// Bytes mapped for the table (its header, slots and tags; none: unknown).
    #[serde(default)]
    pub mapped_bytes: Option<u64>,
    /// Of those, the bytes in huge pages (2 MiB): all of a table of 2 MiB or more whose state
    /// file is on a tmpfs mounted with `huge=within_size` (or hugetlbfs), or that is in
    /// memory with transparent huge pages; none on a tmpfs without huge pages, where a large
    /// table costs a TLB miss on most lookups.
    #[serde(default)]
    pub huge_page_bytes: Option<u64>,
}

/// One worker's poll counters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerInfo {
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// Polls that found work.
    pub busy_polls: u64,
    /// Polls that found none.
    pub idle_polls: u64,
    /// Punted items (trace records) dropped because its punt ring was full.
    pub punt_dropped: u64,
    /// Polls of a port it skipped because the port's last bursts were mostly dropped (a
    /// flooding guest is polled less; its frames wait in its own ring).
    pub deferred_polls: u64,
}

/// A drop reason: the name counters use, and what it means.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReasonInfo {
    /// Counter name.
    pub name: String,
    /// What it counts.
    pub description: String,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatsInfo {
    /// Each worker.
    pub workers: Vec<WorkerInfo>,
    /// Every drop reason, described.
    pub drop_reasons: Vec<ReasonInfo>,
    /// Every port, with its counters.
    pub ports: Vec<PortInfo>,
}

/// `POST /v1/ports/NAME/trace`: what to trace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Frames to record (the next ones the port's guest sends), 1-10000; 0 stops a trace.
    #[schema(maximum = 10000)]
    pub count: u32,
}

/// `POST /v1/ports/NAME/trace`: the trace started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TraceStarted {
    /// The port.
    pub port: String,
    /// Frames it will record.
    pub count: u32,
}

/// A rule that decided, by the vNIC it belongs to and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuleHit {
    /// The vNIC whose policy it is.
    pub port: String,
    /// "egress" or "ingress".
    pub direction: String,
    /// The rule's id, or `null` for the ruleset's default action (or the non-IP / ND rule).
    pub rule: Option<u32>,
}

/// One traced frame, through every stage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TraceView {
    /// The worker that handled it.
    pub worker: u16,
    /// Its queue pair.
    pub queue: u16,
    /// Frame length, bytes.
    pub len: u32,
    /// The frame's first bytes, hex.
    pub head: String,
    /// The parse result, for people (`null`: not parsed: an L2-only segment, or dropped
    /// before).
    pub packet: Option<String>,
    /// Why it did not parse (a drop reason name), if it did not.
    pub parse_error: Option<String>,
    /// The L2 decision: "port NAME", "flood", or "drop REASON"; `null`: dropped before.
    pub l2: Option<String>,
    /// What the firewall found: "not_judged", "found" (a tracked connection), "created",
    /// "passed" (allowed without a connection), "refused".
    pub firewall: String,
    /// The rules that decided, sender's egress side first.
    pub rules: Vec<RuleHit>,
    /// "forwarded" or "dropped".
    pub verdict: String,
    /// Where it was forwarded: a port name or "flood".
    pub to: Option<String>,
    /// Why it was dropped.
    pub reason: Option<String>,
    /// The port the drop is counted on.
    pub counted_on: Option<String>,
    /// Copies delivered (a flood has several).
    pub delivered: u16,
    /// The first delivery drop, if any.
    pub delivery_drop: Option<String>,
}

/// `GET /v1/ports/NAME/trace`: the records collected since the last call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TraceInfo {
    /// The port.
    pub port: String,
    /// Frames still to record.
    pub remaining: u32,
    /// Records dropped because this port's buffer (10,000 records) was full; a full punt ring
    /// drops them earlier, counted as `punt_dropped` in `GET /v1/stats`.
    pub lost: u64,
    /// The records, oldest first.
    pub records: Vec<TraceView>,
}

/// What an apply of a policy document did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyApplied {
    /// The revision the document got (dry run: the one it would get).
    pub revision: u64,
    /// Nothing was changed: this is what the apply would do.
    pub dry_run: bool,
    /// Time to check and compile the document for every vNIC, milliseconds.
    pub compile_ms: f64,
    /// Time to publish the result to the workers, milliseconds (0 in a dry run).
    pub publish_ms: f64,
    /// Rulesets compiled (the others were kept, or shared between vNICs).
    pub rulesets_compiled: u32,
    /// Rulesets in use after the apply (vNICs with equal rules share one).
    pub rulesets: usize,
    /// Every vNIC: its rule counts, compile time and what changed.
    pub vnics: Vec<VnicChange>,
}

/// One vNIC in an apply.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VnicChange {
    /// Port name.
    pub port: String,
    /// Filtered at all (false: on the exclusion list, or no document and no rules of its own).
    pub filtered: bool,
    /// Its egress rules after the apply.
    pub egress_rules: usize,
    /// Its ingress rules after the apply.
    pub ingress_rules: usize,
    /// Rules it gains: `egress application/three-tier/web-to-app`.
    pub added: Vec<String>,
    /// Rules it loses.
    pub removed: Vec<String>,
    /// Its tracked connections that the new rules do not allow (cut on their next packet).
    pub conns_cut: usize,
    /// Time spent compiling it, microseconds (about 0 when its rulesets were shared or kept).
    pub compile_us: u64,
}

/// The running policy document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyDoc {
    /// Its revision (0: none applied yet; ports carry only their own rules).
    pub revision: u64,
    /// When it was applied, seconds since the Unix epoch (0: never).
    pub applied_at: u64,
    /// The document (absent before the first apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<crate::document::Document>,
}

/// One entry of the policy's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevisionInfo {
    /// The revision.
    pub revision: u64,
    /// When, seconds since the Unix epoch.
    pub at: u64,
    /// What made it: `apply`, `remove-app NAME`.
    pub source: String,
    /// The revision the apply named as its base (absent: it named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// What changed: objects added, removed and changed, by kind and name.
    pub changes: Vec<String>,
    /// vNICs whose rules changed.
    pub vnics_changed: usize,
}

/// A group with its resolved members.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupInfo {
    /// Name.
    pub name: String,
    /// Its tenant (absent: the provider's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The application that owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Its slot: the number its members carry and group rules test.
    pub slot: u32,
    /// The vNICs in it now, by name.
    pub vnics: Vec<String>,
    /// The addresses in it (its `cidrs` and those of the groups it includes).
    pub cidrs: Vec<String>,
    /// Its vNICs' addresses (bound, or learned), by which a remote peer would know them.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// `POST /v1/reach`: may one vNIC reach another?
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReachRequest {
    /// The vNIC that opens the connection.
    pub from: String,
    /// The vNIC it connects to.
    pub to: String,
    /// "tcp", "udp", "icmp", "icmpv6", or a protocol number.
    pub proto: crate::policy::StrOrNum,
    /// Destination port (TCP, UDP; default 0), or ICMP type (default echo request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Source address (default: an address `from` has bound or learned, else 0.0.0.0; group
    /// rules do not read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<String>,
    /// Destination address (default: an address `to` has, of the same family, else 0.0.0.0 or
    /// ::).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<String>,
}

/// The answer to a reach question, without a packet sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReachInfo {
    /// The connection would be opened.
    pub allowed: bool,
    /// The sender's egress decision.
    pub egress: ReachStep,
    /// The receiver's ingress decision.
    pub ingress: ReachStep,
    /// The tuple judged.
    pub tuple: String,
}

/// One side's decision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReachStep {
    /// The vNIC.
    pub port: String,
    /// allow, drop or reject (the vNIC has no firewall: allow).
    pub action: String,
    /// The rule that decided (`application/three-tier/web-to-app`); absent: the default action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// One of a vNIC's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddressInfo {
    /// The address.
    pub address: String,
    /// Where it comes from.
    pub source: crate::agent::AddressSource,
    /// Since when, seconds since the Unix epoch.
    pub since: u64,
    /// A DHCP lease's end, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// The format version of `ConnExport`: an importer refuses another.
pub const CONN_EXPORT_FORMAT: u32 = 1;

/// A vNIC's tracked connections as they leave one switch for another (its guest live-migrated):
/// `GET /v1/ports/NAME/conns/export` or `POST /v1/ports/NAME/conns/handover` on the source,
/// `POST /v1/ports/NAME/conns/import` on the destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnExport {
    /// Format version (`1`); an importer refuses another.
    pub format: u32,
    /// The port on the exporting switch.
    pub port: String,
    /// Its vNIC's UUID (the importer maps it to the port it imports into).
    pub uuid: String,
    /// The exporting host.
    pub host: String,
    /// The vNICs the connections name (their owner and peer are indexes into this list).
    pub vnics: Vec<VnicRef>,
    /// One array per connection: `[zone, proto, src, sport, dst, dport, owner, peer, class,
    /// flags, tcp0, tcp1, tcp2, idle_secs, age_secs, packets]`: the key in the opening
    /// direction, the indexes of the opener and the far end in `vnics`, the timeout class,
    /// flags (1 replied, 2 picked up mid-stream), the TCP window state (three words), seconds
    /// since the last packet and since creation, and the packet count.
    #[schema(value_type = Vec<Vec<serde_json::Value>>)]
    pub connections: Vec<ConnRecord>,
}

/// A vNIC an exported connection names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VnicRef {
    /// Its port's name on the exporting switch.
    pub name: String,
    /// Its UUID.
    pub uuid: String,
}

/// One exported connection (see `ConnExport::connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord(
    pub u16,
    pub u8,
    pub std::net::IpAddr,
    pub u16,
    pub std::net::IpAddr,
    pub u16,
    pub u32,
    pub u32,
    pub u8,
    pub u8,
    pub u64,
    pub u64,
    pub u64,
    pub u32,
    pub u32,
    pub u64,
);

/// `POST /v1/ports/NAME/conns/handover`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// The port that now reaches the guest (the uplink to its new switch): connections with a
    /// vNIC that stays here go through it from now on; the others are removed.
    pub via: String,
}

/// What a handover did on the source switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HandedOver {
    /// The connections, for the destination's import.
    pub export: ConnExport,
    /// Connections with a vNIC that stays here, now through `via`.
    pub kept: usize,
    /// Connections that left with the guest, removed here.
    pub removed: usize,
    /// The addresses the port had learned (DHCP, ARP, neighbour discovery), unbound: they
    /// left with the guest. Its static addresses stay.
    pub released: Vec<String>,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Imported {
    /// Connections added (stale: each is judged by this switch's rules on its next packet).
    pub imported: usize,
    /// Connections this switch already tracked (left as they were).
    pub already: usize,
    /// Connections this switch kept through `remote` while the guest was away (its peer
    /// stayed here): the imported vNIC's again.
    pub rejoined: usize,
    /// Connections refused: the table or the owner's limit is full.
    pub refused: usize,
    /// Ends of connections that were not the imported vNIC nor a vNIC of this switch, mapped
    /// to the `remote` port.
    pub remote_ends: usize,
    /// Milliseconds the import took in the switch.
    pub millis: f64,
}
