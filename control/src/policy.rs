//! The rule format operators write (TOML in the config file, JSON in the API) and its
//! compilation into a vNIC's `dataplane::filter::Policy`.
//!
//! ```toml
//! [ports.policy]
//! egress_default = "drop"        # what the VM sends when no rule matches (default "allow")
//! ingress_default = "drop"       # what is delivered to the VM when no rule matches
//! non_ip = "allow"               # ARP and other non-IP frames (default "allow")
//! nd = "allow"                   # ICMPv6 neighbour discovery (default "allow")
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

use std::ops::RangeInclusive;
use std::sync::Arc;

use dataplane::filter::Policy;
use dataplane::ruleset::{Action, Cidr, Rule, Ruleset};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// "allow", "drop" or "reject".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl From<Action> for ActionName {
    fn from(a: Action) -> ActionName {
        match a {
            Action::Allow => ActionName::Allow,
            Action::Drop => ActionName::Drop,
            Action::Reject => ActionName::Reject,
        }
    }
}

impl From<ActionName> for Action {
    fn from(a: ActionName) -> Action {
        match a {
            ActionName::Allow => Action::Allow,
            ActionName::Drop => Action::Drop,
            ActionName::Reject => Action::Reject,
        }
    }
}

/// A string or a number (protocols and ports may be written either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StrOrNum {
    /// A number.
    Num(u64),
    /// A string.
    Str(String),
}

/// One value or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    fn items(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name in counters (default: the rule's position, from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    pub icmp_type: Option<u8>,
    /// ICMP code (ICMP/ICMPv6 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
}

/// A vNIC's policy as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Rules for what the VM sends.
    #[serde(default)]
    pub egress: Vec<RuleConfig>,
    /// Rules for what is delivered to the VM.
    #[serde(default)]
    pub ingress: Vec<RuleConfig>,
    /// Action when no egress rule matches.
    #[serde(default)]
    pub egress_default: ActionName,
    /// Action when no ingress rule matches.
    #[serde(default)]
    pub ingress_default: ActionName,
    /// Non-IP frames.
    #[serde(default)]
    pub non_ip: ActionName,
    /// ICMPv6 neighbour discovery.
    #[serde(default)]
    pub nd: ActionName,
    /// Accept mid-stream TCP as a new connection.
    #[serde(default)]
    pub tcp_pickup: bool,
    /// Most connections the VM may have open at once (default: no limit but the table's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// New connections per second the VM may open (default 0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_connections_per_sec: Option<u32>,
}

fn proto(v: &StrOrNum, at: &str) -> Result<Option<u8>, ConfigError> {
    let bad = || {
        ConfigError::new(
            at,
            "expected tcp, udp, icmp, icmpv6, any, or a number 0-255",
        )
    };
    Ok(match v {
        StrOrNum::Num(n) => Some(u8::try_from(*n).map_err(|_| bad())?),
        StrOrNum::Str(s) => match s.to_ascii_lowercase().as_str() {
            "any" => None,
            "tcp" => Some(6),
            "udp" => Some(17),
            "icmp" => Some(1),
            "icmpv6" | "ipv6-icmp" => Some(58),
            "sctp" => Some(132),
            other => Some(other.parse().map_err(|_| bad())?),
        },
    })
}

fn port_range(v: &StrOrNum, at: &str) -> Result<RangeInclusive<u16>, ConfigError> {
    let bad = || ConfigError::new(at, "expected a port 0-65535 or a range \"low-high\"");
    match v {
        StrOrNum::Num(n) => {
            let p = u16::try_from(*n).map_err(|_| bad())?;
            Ok(p..=p)
        }
        StrOrNum::Str(s) => {
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            let (lo, hi): (u16, u16) = (
                lo.trim().parse().map_err(|_| bad())?,
                hi.trim().parse().map_err(|_| bad())?,
            );
            if lo > hi {
                return Err(ConfigError::new(
                    at,
                    format!("range {lo}-{hi} is empty (low > high)"),
                ));
            }
            Ok(lo..=hi)
        }
    }
}

impl RuleConfig {
    fn compile(&self, index: usize, at: &str) -> Result<Rule, ConfigError> {
        let cidrs = |list: &OneOrMany<String>, name: &str| -> Result<Vec<Cidr>, ConfigError> {
            list.items()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    c.parse::<Cidr>().map_err(|e| {
                        ConfigError::new(format!("{at}.{name}[{i}]"), format!("{c:?}: {e}"))
                    })
                })
                .collect()
        };
        let ports = |list: &OneOrMany<StrOrNum>,
                     name: &str|
         -> Result<Vec<RangeInclusive<u16>>, ConfigError> {
            list.items()
                .iter()
                .enumerate()
                .map(|(i, p)| port_range(p, &format!("{at}.{name}[{i}]")))
                .collect()
        };
        let proto = match &self.proto {
            Some(p) => proto(p, &format!("{at}.proto"))?,
            None => None,
        };
        let rule = Rule {
            id: self
                .id
                .unwrap_or(u32::try_from(index + 1).unwrap_or(u32::MAX)),
            src: cidrs(&self.src, "src")?,
            dst: cidrs(&self.dst, "dst")?,
            proto,
            src_ports: ports(&self.src_ports, "src_ports")?,
            dst_ports: ports(&self.dst_ports, "dst_ports")?,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            action: self.action.into(),
        };
        let has_ports = !rule.src_ports.is_empty() || !rule.dst_ports.is_empty();
        if has_ports && !matches!(proto, Some(6 | 17)) {
            let field = if rule.src_ports.is_empty() {
                "dst_ports"
            } else {
                "src_ports"
            };
            return Err(ConfigError::new(
                format!("{at}.{field}"),
                "ports need proto tcp or udp",
            ));
        }
        if (rule.icmp_type.is_some() || rule.icmp_code.is_some()) && !matches!(proto, Some(1 | 58))
        {
            let field = if rule.icmp_type.is_some() {
                "icmp_type"
            } else {
                "icmp_code"
            };
            return Err(ConfigError::new(
                format!("{at}.{field}"),
                "ICMP type/code need proto icmp or icmpv6",
            ));
        }
        Ok(rule)
    }
}

impl PolicyConfig {
    /// Compiles into a vNIC policy; `at` prefixes field names in errors (e.g. `ports[0].policy`).
    pub fn compile(&self, at: &str) -> Result<Policy, ConfigError> {
        let rules = |list: &[RuleConfig], name: &str| -> Result<Vec<Rule>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, r)| r.compile(i, &format!("{at}.{name}[{i}]")))
                .collect()
        };
        let (eg, ing) = (
            rules(&self.egress, "egress")?,
            rules(&self.ingress, "ingress")?,
        );
        let build = |rs: &[Rule], default: ActionName, name: &str| {
            Ruleset::compile(rs, default.into())
                .map(Arc::new)
                .map_err(|e| ConfigError::new(format!("{at}.{name}"), e.to_string()))
        };
        Ok(Policy {
            egress: build(&eg, self.egress_default, "egress")?,
            ingress: build(&ing, self.ingress_default, "ingress")?,
            non_ip: self.non_ip.into(),
            nd: self.nd.into(),
            tcp_pickup: self.tcp_pickup,
            max_connections: self.max_connections.unwrap_or(u32::MAX),
            new_connections_per_sec: self.new_connections_per_sec.unwrap_or(0),
            filtered: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::ruleset::Tuple;
    use std::net::IpAddr;

    #[derive(Deserialize)]
    struct Doc {
        policy: PolicyConfig,
    }

    fn compile(toml_text: &str) -> Result<Policy, ConfigError> {
        let d: Doc = toml::from_str(toml_text).map_err(|e| ConfigError::new("", e.to_string()))?;
        d.policy.compile("ports[0].policy")
    }

    fn t(src: &str, dst: &str, proto: u8, dport: u16, icmp_type: u8) -> Tuple {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        Tuple {
            src: a(src),
            dst: a(dst),
            proto,
            sport: 40000,
            dport,
            icmp_type,
            icmp_code: 0,
        }
    }

    #[test]
    fn compiles_the_documented_example() {
        let p = compile(
            r#"
[policy]
egress_default = "drop"
ingress_default = "drop"
egress = [
  { action = "allow", proto = "tcp", dst = "10.10.1.0/24", dst_ports = [80, "8000-8080"] },
  { action = "allow", proto = "icmp", icmp_type = 8 },
]
ingress = [ { id = 70, action = "reject", proto = "udp", src = ["10.0.0.0/8", "fd00::/8"] } ]
"#,
        )
        .unwrap();
        let e = &p.egress;
        assert_eq!(
            e.lookup(&t("10.10.1.5", "10.10.1.9", 6, 80, 0)).action,
            Action::Allow
        );
        assert_eq!(
            e.lookup(&t("10.10.1.5", "10.10.1.9", 6, 8080, 0)).action,
            Action::Allow
        );
        assert_eq!(
            e.lookup(&t("10.10.1.5", "10.10.1.9", 6, 8081, 0)).action,
            Action::Drop
        );
        assert_eq!(
            e.lookup(&t("10.10.1.5", "10.10.2.9", 6, 80, 0)).action,
            Action::Drop
        );
        assert_eq!(
            e.lookup(&t("10.10.1.5", "10.10.2.9", 1, 0, 8)).action,
            Action::Allow
        );
        assert_eq!(
            e.lookup(&t("10.10.1.5", "10.10.2.9", 1, 0, 0)).action,
            Action::Drop
        );
        let v = p.ingress.lookup(&t("fd00::1", "fd00::2", 17, 53, 0));
        assert_eq!(v.action, Action::Reject);
        assert_eq!(p.ingress.verdict_rule(&v).map(|r| r.id), Some(70));
        assert_eq!(
            p.egress.rules()[1].id,
            2,
            "default ids are positions from 1"
        );
        assert_eq!(
            (p.non_ip, p.nd, p.tcp_pickup),
            (Action::Allow, Action::Allow, false)
        );
    }

    #[test]
    fn an_empty_policy_allows_everything() {
        let p = PolicyConfig::default().compile("p").unwrap();
        assert_eq!(
            p.egress.lookup(&t("1.2.3.4", "5.6.7.8", 6, 22, 0)).action,
            Action::Allow
        );
        assert_eq!(
            p.ingress.lookup(&t("1.2.3.4", "5.6.7.8", 17, 53, 0)).action,
            Action::Allow
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"egress = [{ action = "allow", proto = "tcp", dst_ports = ["80-70"] }]"#,
                "ports[0].policy.egress[0].dst_ports[0]",
            ),
            (
                r#"egress = [{ action = "allow", proto = "tcp", dst_ports = [70000] }]"#,
                "ports[0].policy.egress[0].dst_ports[0]",
            ),
            (
                r#"egress = [{ action = "allow", proto = "tcp", dst_ports = ["http"] }]"#,
                "ports[0].policy.egress[0].dst_ports[0]",
            ),
            (
                r#"egress = [{ action = "allow", dst_ports = [80] }]"#,
                "ports[0].policy.egress[0].dst_ports",
            ),
            (
                r#"ingress = [{ action = "allow" }, { action = "drop", src = ["10.0.0.0/33"] }]"#,
                "ports[0].policy.ingress[1].src[0]",
            ),
            (
                r#"ingress = [{ action = "allow", dst = "not-an-address" }]"#,
                "ports[0].policy.ingress[0].dst[0]",
            ),
            (
                r#"egress = [{ action = "allow", proto = "bogus" }]"#,
                "ports[0].policy.egress[0].proto",
            ),
            (
                r#"egress = [{ action = "allow", proto = 300 }]"#,
                "ports[0].policy.egress[0].proto",
            ),
            (
                r#"egress = [{ action = "allow", proto = "udp", icmp_type = 3 }]"#,
                "ports[0].policy.egress[0].icmp_type",
            ),
        ];
        for (body, field) in cases {
            let e = compile(&format!("[policy]\n{body}\n")).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
        }
        // Unknown fields and bad actions come from the parser, with the key named.
        let e = compile("[policy]\negress = [{ action = \"allow\", colour = 1 }]\n").unwrap_err();
        assert!(e.reason.contains("colour"), "{e}");
        let e = compile("[policy]\negress = [{ action = \"permit\" }]\n").unwrap_err();
        assert!(e.reason.contains("permit"), "{e}");
    }

    #[test]
    fn json_form_for_the_api() {
        let p: PolicyConfig = serde_json::from_str(
            r#"{"egress_default":"drop","egress":[{"action":"allow","proto":"tcp","dst_ports":"22"}]}"#,
        )
        .unwrap();
        let c = p.compile("policy").unwrap();
        assert_eq!(
            c.egress.lookup(&t("10.0.0.1", "10.0.0.2", 6, 22, 0)).action,
            Action::Allow
        );
        assert_eq!(
            c.egress.lookup(&t("10.0.0.1", "10.0.0.2", 6, 23, 0)).action,
            Action::Drop
        );
        // Round trip through JSON keeps it.
        let again: PolicyConfig =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }
}
