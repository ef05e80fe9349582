//! The compiler: configuration and API types (`config`, `policy`) in, data-plane types out.
//! Pure: no I/O, no locks, no state; the agent calls it and publishes what it returns.

use std::ops::RangeInclusive;
use std::sync::Arc;

use conntrack::{ip_proto, Timeouts};
use dataplane::filter::Policy;
use dataplane::ruleset::{Action, Cidr, Rule, Ruleset};

use crate::config::{Config, ConfigError, PortConfig, TimeoutsSection};
use crate::document::Service;
use crate::policy::{ActionName, OneOrMany, PolicyConfig, RuleConfig, StrOrNum};

/// Compiles a port's policy (no firewall without one); `at` prefixes field names.
pub fn port_policy(p: &PortConfig, at: &str) -> Result<Arc<Policy>, ConfigError> {
    match &p.policy {
        Some(pol) => policy(pol, &format!("{at}policy")).map(Arc::new),
        None => Ok(Arc::new(Policy::none())),
    }
}

/// Compiles a policy for one vNIC; `at` prefixes field names in errors (e.g. `ports[0].policy`).
pub fn policy(p: &PolicyConfig, at: &str) -> Result<Policy, ConfigError> {
    let (eg, ing) = (
        rules(&p.egress, &format!("{at}.egress"))?,
        rules(&p.ingress, &format!("{at}.ingress"))?,
    );
    let build = |rs: &[Rule], default: ActionName, name: &str| {
        Ruleset::compile(rs, default.into())
            .map(Arc::new)
            .map_err(|e| ConfigError::new(format!("{at}.{name}"), e.to_string()))
    };
    Ok(Policy {
        egress: build(&eg, p.egress_default.unwrap_or_default(), "egress")?,
        ingress: build(&ing, p.ingress_default.unwrap_or_default(), "ingress")?,
        non_ip: p.non_ip.into(),
        nd: p.nd.into(),
        tcp_pickup: p.tcp_pickup,
        max_connections: p.max_connections.unwrap_or(u32::MAX),
        new_connections_per_sec: p.new_connections_per_sec.unwrap_or(0),
        filtered: true,
        groups: Arc::new([]),
    })
}

pub(crate) fn proto(v: &StrOrNum, at: &str) -> Result<Option<u8>, ConfigError> {
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
            other => match ip_proto::by_name(other) {
                Some(n) => Some(n),
                None => Some(other.parse().map_err(|_| bad())?),
            },
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

fn cidr_list(list: &OneOrMany<String>, at: &str) -> Result<Vec<Cidr>, ConfigError> {
    list.items()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse::<Cidr>()
                .map_err(|e| ConfigError::new(format!("{at}[{i}]"), format!("{c:?}: {e}")))
        })
        .collect()
}

/// The protocol, port and ICMP fields of a rule or a service, checked together; each field is
/// named `at.<name>` with the name the caller's format uses.
struct L4<'a> {
    proto: Option<&'a StrOrNum>,
    src_ports: (&'a OneOrMany<StrOrNum>, &'static str),
    dst_ports: (&'a OneOrMany<StrOrNum>, &'static str),
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
}

impl L4<'_> {
    /// `Rule::any(id, action)` with these fields set.
    fn rule(&self, id: u32, action: Action, at: &str) -> Result<Rule, ConfigError> {
        let ports = |(list, name): (&OneOrMany<StrOrNum>, &str)| {
            list.items()
                .iter()
                .enumerate()
                .map(|(i, p)| port_range(p, &format!("{at}.{name}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        let proto = match self.proto {
            Some(p) => proto(p, &format!("{at}.proto"))?,
            None => None,
        };
        let mut rule = Rule::any(id, action);
        rule.proto = proto;
        rule.src_ports = ports(self.src_ports)?;
        rule.dst_ports = ports(self.dst_ports)?;
        rule.icmp_type = self.icmp_type;
        rule.icmp_code = self.icmp_code;
        let has_ports = !rule.src_ports.is_empty() || !rule.dst_ports.is_empty();
        if has_ports && !matches!(proto, Some(ip_proto::TCP | ip_proto::UDP)) {
            let field = if rule.src_ports.is_empty() {
                self.dst_ports.1
            } else {
                self.src_ports.1
            };
            return Err(ConfigError::new(
                format!("{at}.{field}"),
                "ports need proto tcp or udp",
            ));
        }
        if (rule.icmp_type.is_some() || rule.icmp_code.is_some())
            && !matches!(proto, Some(ip_proto::ICMP | ip_proto::ICMPV6))
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

fn rule(r: &RuleConfig, index: usize, at: &str) -> Result<Rule, ConfigError> {
    let id = r.id.unwrap_or(u32::try_from(index + 1).unwrap_or(u32::MAX));
    let mut rule = L4 {
        proto: r.proto.as_ref(),
        src_ports: (&r.src_ports, "src_ports"),
        dst_ports: (&r.dst_ports, "dst_ports"),
        icmp_type: r.icmp_type,
        icmp_code: r.icmp_code,
    }
    .rule(id, r.action.into(), at)?;
    rule.src = cidr_list(&r.src, &format!("{at}.src"))?;
    rule.dst = cidr_list(&r.dst, &format!("{at}.dst"))?;
    Ok(rule)
}

/// A vNIC's own rules (a port's `policy.egress` or `.ingress`), compiled; `at` names the list.
pub fn rules(list: &[RuleConfig], at: &str) -> Result<Vec<Rule>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, r)| rule(r, i, &format!("{at}[{i}]")))
        .collect()
}

/// A policy document's service as the rule that matches it (any addresses, action allow,
/// id 0); `at` names the service (`services[2]`).
pub fn service_rule(s: &Service, at: &str) -> Result<Rule, ConfigError> {
    L4 {
        proto: Some(&s.proto),
        src_ports: (&s.src_ports, "src_ports"),
        dst_ports: (&s.ports, "ports"),
        icmp_type: s.icmp_type,
        icmp_code: s.icmp_code,
    }
    .rule(0, Action::Allow, at)
}

impl From<Action> for ActionName {
    fn from(a: Action) -> ActionName {
        match a {
            Action::Allow => ActionName::Allow,
            Action::Drop => ActionName::Drop,
            Action::Reject => ActionName::Reject,
            // Not in a vNIC's own rules (the policy document's actions have `pass`).
            Action::Pass => ActionName::Drop,
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

/// A `[conntrack.timeouts]` section, defaults filled in.
pub fn timeouts(t: &TimeoutsSection) -> Timeouts {
    let d = Timeouts::default();
    let mut tcp = d.tcp;
    for (i, (_, v)) in t.fields()[..6].iter().enumerate() {
        if let Some(v) = v {
            tcp[i] = *v;
        }
    }
    Timeouts {
        tcp,
        udp_first: t.udp_first.unwrap_or(d.udp_first),
        udp_replied: t.udp_replied.unwrap_or(d.udp_replied),
        icmp: t.icmp.unwrap_or(d.icmp),
        other: t.other.unwrap_or(d.other),
    }
}

/// The data-plane settings a config asks for.
pub fn switch_config(c: &Config) -> dataplane::SwitchConfig {
    let d = dataplane::SwitchConfig::default();
    let last = dataplane::online_cpus().saturating_sub(1);
    dataplane::SwitchConfig {
        workers: c.switch.workers.clone().unwrap_or_else(|| vec![last]),
        idle_sleep_us: c.switch.idle_sleep_us.unwrap_or(d.idle_sleep_us),
        mac_aging_secs: c.switch.mac_aging_secs.unwrap_or(d.mac_aging_secs),
        mac_table_size: c.switch.mac_table_size.unwrap_or(d.mac_table_size),
        max_frame: c.switch.max_frame.unwrap_or(d.max_frame),
        ct_capacity: c.conntrack.capacity.unwrap_or(d.ct_capacity),
        ct_timeouts: timeouts(&c.conntrack.timeouts),
        // Depends on the run directory too: `ConntrackSection::state_file_in`.
        ct_state_file: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::ruleset::Tuple;
    use serde::Deserialize;
    use std::net::IpAddr;

    #[derive(Deserialize)]
    struct Doc {
        policy: PolicyConfig,
    }

    fn compile(toml_text: &str) -> Result<Policy, ConfigError> {
        let d: Doc = toml::from_str(toml_text).map_err(|e| ConfigError::new("", e.to_string()))?;
        policy(&d.policy, "ports[0].policy")
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
        let p = policy(&PolicyConfig::default(), "p").unwrap();
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
        let c = policy(&p, "policy").unwrap();
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
