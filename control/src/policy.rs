//! The rule format operators write (TOML in the config file, JSON in the API); `compile`
//! turns it into a vNIC's `dataplane::filter::Policy`.
//!
//! ```toml
//! [ports.policy]
//! egress_default = "drop"        # what the VM sends when no rule matches (default: the
//!                                # policy document's default, "allow" without a document)
//! ingress_default = "drop"       # what is delivered to the VM when no rule matches
//! non_ip = "allow"               # ARP and other non-IP frames (default "allow")
//! nd = "allow"                   # ICMPv6 neighbour and multicast listener discovery (default "allow")
//! tcp_pickup = false             # accept mid-stream TCP as new connections (default false)
//! max_connections = 10000        # most open connections the VM may own (default: no limit)
//! new_connections_per_sec = 2000 # new connections per second (default 0: unlimited)
//! egress = [
//!   { action = "allow", proto = "tcp", dst = "10.10.1.0/24", dst_ports = [80, "8000-8080"] },
//!   { action = "allow", proto = "icmp", icmp_type = 8 },
//! ]
//! ingress = [ { action = "reject", proto = "udp", src = ["10.0.0.0/8", "fd00::/8"] } ]
//! ```
//!
//! Rules are matched first to last; `id` (default: position, from 1) names a rule in counters.
//! Errors name the offending field, e.g. `ports[0].policy.egress[1].dst_ports[0]`.
//!
//! A port without a policy has no firewall (`dataplane::filter::Policy::none`): its traffic
//! with other unfiltered ports is switched at L2 only. An empty policy (`{}`) allows
//! everything and tracks it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// "allow", "drop" or "reject".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    /// Let it through (and track it).
    #[default]
    Allow,
    /// Drop silently.
    Drop,
    /// Drop and answer (TCP RST, ICMP administratively prohibited).
    Reject,
}

/// A string or a number (protocols and ports may be written either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StrOrNum {
    /// A number.
    Num(u64),
    /// A string.
    Str(String),
}

/// One value or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    /// The values, one or many.
    pub fn items(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name in counters (default: the rule's position, from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Int64, minimum = 0, maximum = 4294967295_u64)]
    pub id: Option<u32>,
    /// What to do on a match.
    pub action: ActionName,
    /// "tcp", "udp", "icmp", "icmpv6", "any", or a protocol number (default any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<StrOrNum>,
    /// Source CIDRs (one or a list; default any).
    #[serde(default)]
    pub src: OneOrMany<String>,
    /// Destination CIDRs.
    #[serde(default)]
    pub dst: OneOrMany<String>,
    /// Source ports: numbers or "low-high" ranges (TCP/UDP only).
    #[serde(default)]
    pub src_ports: OneOrMany<StrOrNum>,
    /// Destination ports.
    #[serde(default)]
    pub dst_ports: OneOrMany<StrOrNum>,
    /// ICMP type (ICMP/ICMPv6 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 255)]
    pub icmp_type: Option<u8>,
    /// ICMP code (ICMP/ICMPv6 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 255)]
    pub icmp_code: Option<u8>,
}

/// A vNIC's policy as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Rules for what the VM sends.
    #[serde(default)]
    pub egress: Vec<RuleConfig>,
    /// Rules for what is delivered to the VM.
    #[serde(default)]
    pub ingress: Vec<RuleConfig>,
    /// Action when no egress rule matches (default: the policy document's default, or allow
    /// when no document is applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_default: Option<ActionName>,
    /// Action when no ingress rule matches (default as for `egress_default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_default: Option<ActionName>,
    /// Non-IP frames.
    #[serde(default)]
    pub non_ip: ActionName,
    /// ICMPv6 neighbour and multicast listener discovery (types 130-137, 143).
    #[serde(default)]
    pub nd: ActionName,
    /// Accept mid-stream TCP as a new connection.
    #[serde(default)]
    pub tcp_pickup: bool,
    /// Most connections the VM may have open at once (default: no limit but the table's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Int64, minimum = 0, maximum = 4294967295_u64)]
    pub max_connections: Option<u32>,
    /// New connections per second the VM may open (default 0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Int64, minimum = 0, maximum = 4294967295_u64)]
    pub new_connections_per_sec: Option<u32>,
}
