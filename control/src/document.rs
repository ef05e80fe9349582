//! The policy document: groups, services and tiered policies, as operators write them (YAML or
//! JSON; `bulwarkctl policy apply -f FILE`, `PUT /v1/policy`). Layer 1: serde types and their
//! checks, no state. `compiler` turns a checked document and the inventory into per-vNIC
//! policies; `docs/POLICY.md` is the model and why.
//!
//! ```yaml
//! services:
//!   - { name: http-alt, proto: tcp, ports: [8080] }
//! groups:
//!   - { name: web, select: { tag: tier, eq: web } }
//!   - { name: app, select: { tag: tier, eq: app } }
//! policies:
//!   - name: three-tier
//!     tier: application
//!     rules:
//!       - { name: web-to-app, src: web, dst: app, services: http-alt, action: allow }
//! ```
//!
//! Every error names the object, the field and the reason: `policies[0].rules[0].dst[0]: no
//! group named "ap"`. Errors the parser finds (an unknown field, a wrong type) are named by the
//! same path, with indices.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::ConfigError;
use crate::policy::{ActionName, OneOrMany, StrOrNum};

/// The whole policy: applied as one, all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The revision this document replaces: the apply is refused if another revision landed
    /// since (0: the switch has no document yet). Absent: apply whatever is running (not
    /// safe when several writers apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub base_revision: Option<u64>,
    /// Named services (protocol and ports) that rules refer to.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Groups of vNICs (and addresses).
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Policies: rules in tiers.
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    /// vNICs (by name) that are not filtered at all, whatever the rules say.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// What a vNIC that some rule applies to, and that has no policy section of its own,
    /// does with traffic no rule decides (default: drop, both ways).
    #[serde(default)]
    pub defaults: Defaults,
}

/// Default actions of vNICs without a policy section of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// What the VM sends (default drop).
    #[serde(default = "drop")]
    pub egress: ActionName,
    /// What is delivered to the VM (default drop).
    #[serde(default = "drop")]
    pub ingress: ActionName,
}

fn drop() -> ActionName {
    ActionName::Drop
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            egress: ActionName::Drop,
            ingress: ActionName::Drop,
        }
    }
}

/// A named protocol and ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique among services: 1-64 characters from `[A-Za-z0-9_.-]`.
    pub name: String,
    /// "tcp", "udp", "icmp", "icmpv6", "any", or a protocol number.
    pub proto: StrOrNum,
    /// Destination ports: numbers or "low-high" ranges (TCP/UDP only; default any).
    #[serde(default)]
    pub ports: OneOrMany<StrOrNum>,
    /// Source ports (TCP/UDP only; default any).
    #[serde(default)]
    pub src_ports: OneOrMany<StrOrNum>,
    /// ICMP type (ICMP/ICMPv6 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 255)]
    pub icmp_type: Option<u8>,
    /// ICMP code (ICMP/ICMPv6 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 255)]
    pub icmp_code: Option<u8>,
    /// The application that owns it (removed with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// A group: static members and a selector, together (a vNIC is a member if any of them
/// includes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Unique among groups: 1-64 characters from `[A-Za-z0-9_.-]`.
    pub name: String,
    /// The tenant it belongs to; absent: the provider's (its members may be any tenant's).
    /// A tenant's group holds only that tenant's vNICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// vNICs by name.
    #[serde(default)]
    pub vnics: Vec<String>,
    /// Addresses (CIDRs): matched by address where the far end is not a vNIC of this host.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Other groups whose members are members of this one.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Dynamic members: the vNICs this selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Selector>,
    /// The application that owns it (removed with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// A condition on a vNIC. Exactly one of: `and`, `or`, `not`, or a test (`tag` or `attr`,
/// with `eq` or `in`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// All of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub and: Option<Vec<Selector>>,
    /// Any of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub or: Option<Vec<Selector>>,
    /// Not this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub not: Option<Box<Selector>>,
    /// A tag's key: the test reads the vNIC's tag (a vNIC without the tag matches neither
    /// `eq` nor `in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A built-in attribute: `name`, `segment`, `tenant` or `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr: Option<String>,
    /// Equal to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<String>,
    /// Equal to one of these values.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
}

/// The tiers, in the order they decide.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// First: the provider's emergency rules (quarantine, incident response).
    Emergency,
    /// The provider's infrastructure services (DNS, NTP, monitoring).
    Infrastructure,
    /// Between environments (prod and dev apart).
    Environment,
    /// Applications: the provider's policies, then the tenants'.
    Application,
}

impl Tier {
    /// Its name as written.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Emergency => "emergency",
            Tier::Infrastructure => "infrastructure",
            Tier::Environment => "environment",
            Tier::Application => "application",
        }
    }
}

/// A named list of rules in one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDef {
    /// Unique among policies: 1-64 characters from `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// The tenant whose policy it is (only in the `application` tier; it may name and apply
    /// to that tenant's groups only); absent: the provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Order within the tier: lower first (default 1000); equal priorities go by name.
    #[serde(default = "default_priority")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub priority: u32,
    /// The groups whose vNICs carry its rules (default, per rule: the groups the rule names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_to: Option<Vec<String>>,
    /// Rules, first match wins within the tier.
    #[serde(default)]
    pub rules: Vec<DocRule>,
    /// The application that owns it (removed with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

fn default_priority() -> u32 {
    1000
}

/// What a rule does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DocAction {
    /// Let it through (and track it).
    Allow,
    /// Drop silently.
    Drop,
    /// Drop and answer (TCP RST, ICMP administratively prohibited).
    Reject,
    /// Skip the rest of this tier: the next tier decides.
    Pass,
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocRule {
    /// Unique within the policy: 1-64 characters from `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Where it comes from: group names, CIDRs, or "any" (default any).
    #[serde(default)]
    pub src: OneOrMany<String>,
    /// Where it goes: group names, CIDRs, or "any" (default any).
    #[serde(default)]
    pub dst: OneOrMany<String>,
    /// Service names (any of them; default any traffic).
    #[serde(default)]
    pub services: OneOrMany<String>,
    /// What to do.
    pub action: DocAction,
    /// Groups whose vNICs carry this rule (default: the policy's `applied_to`, else the groups
    /// the rule names in `src` and `dst`). A rule that names no group needs one: a rule is
    /// never applied to every vNIC by accident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_to: Option<Vec<String>>,
}

/// Most objects of each kind in a document.
pub const MAX_OBJECTS: usize = 100_000;
/// Most rules in a document.
pub const MAX_RULES: usize = 1_000_000;
/// Deepest selector nesting.
pub const MAX_SELECTOR_DEPTH: usize = 16;

/// The format of a document's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML (a superset of JSON).
    Yaml,
}

impl Document {
    /// Parses a document; errors name the field by its path (`policies[1].rules[0].action`).
    pub fn parse(text: &str, format: Format) -> Result<Document, ConfigError> {
        let path_err = |path: String, msg: String| {
            let path = if path == "." { String::new() } else { path };
            ConfigError::new(path, msg)
        };
        match format {
            Format::Json => {
                let de = &mut serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de)
                    .map_err(|e| path_err(e.path().to_string(), e.inner().to_string()))
            }
            Format::Yaml => {
                let de = serde_norway::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(|e| {
                    // serde_norway puts the path it knows before its message: the field is
                    // named once, by the fuller path.
                    let msg = e.inner().to_string();
                    let msg = match msg.split_once(": ") {
                        Some((head, rest)) if !head.contains(' ') => rest.to_string(),
                        _ => msg,
                    };
                    path_err(e.path().to_string(), msg)
                })
            }
        }
    }

    /// The document without the objects `app` owns (`None` if it owns none). Fails, naming the
    /// referrer, if an object that stays refers to one that goes: nothing dangles.
    pub fn without_app(&self, app: &str) -> Result<Option<Document>, ConfigError> {
        let owned = |a: &Option<String>| a.as_deref() == Some(app);
        if !self.services.iter().any(|s| owned(&s.app))
            && !self.groups.iter().any(|g| owned(&g.app))
            && !self.policies.iter().any(|p| owned(&p.app))
        {
            return Ok(None);
        }
        let doc = Document {
            base_revision: None,
            services: self
                .services
                .iter()
                .filter(|s| !owned(&s.app))
                .cloned()
                .collect(),
            groups: self
                .groups
                .iter()
                .filter(|g| !owned(&g.app))
                .cloned()
                .collect(),
            policies: self
                .policies
                .iter()
                .filter(|p| !owned(&p.app))
                .cloned()
                .collect(),
            exclude: self.exclude.clone(),
            defaults: self.defaults,
        };
        doc.check().map_err(|e| {
            ConfigError::new(
                e.field,
                format!(
                    "{} (it refers to an object of application {app:?}; remove or change it first)",
                    e.reason
                ),
            )
        })?;
        Ok(Some(doc))
    }
}

/// What a rule's `src` or `dst` entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Anything.
    Any,
    /// An address range.
    Cidr(dataplane::ruleset::Cidr),
    /// A group, by its index in `Document::groups`.
    Group(usize),
}

/// A vNIC as selectors see it.
#[derive(Debug, Clone, Copy)]
pub struct VnicAttrs<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its segment.
    pub segment: u16,
    /// Its tenant.
    pub tenant: &'a str,
    /// The host it runs on (this bulwarkd's host name).
    pub host: &'a str,
    /// Its tags.
    pub tags: &'a BTreeMap<String, String>,
}

impl Selector {
    /// True if the vNIC matches (the selector was checked).
    pub fn matches(&self, v: &VnicAttrs<'_>) -> bool {
        if let Some(all) = &self.and {
            return all.iter().all(|s| s.matches(v));
        }
        if let Some(any) = &self.or {
            return any.iter().any(|s| s.matches(v));
        }
        if let Some(n) = &self.not {
            return !n.matches(v);
        }
        let seg;
        let value: Option<&str> = match (&self.tag, self.attr.as_deref()) {
            (Some(k), _) => v.tags.get(k).map(String::as_str),
            (None, Some("name")) => Some(v.name),
            (None, Some("tenant")) => Some(v.tenant),
            (None, Some("host")) => Some(v.host),
            (None, Some("segment")) => {
                seg = v.segment.to_string();
                Some(&seg)
            }
            _ => None,
        };
        let Some(value) = value else { return false };
        match (&self.eq, &self.one_of) {
            (Some(e), _) => e == value,
            (None, Some(list)) => list.iter().any(|e| e == value),
            (None, None) => false,
        }
    }

    fn check(&self, at: &str, depth: usize) -> Result<(), ConfigError> {
        if depth > MAX_SELECTOR_DEPTH {
            return Err(ConfigError::new(
                at,
                format!("selectors nest at most {MAX_SELECTOR_DEPTH} deep"),
            ));
        }
        let test = self.tag.is_some() || self.attr.is_some();
        let kinds = usize::from(self.and.is_some())
            + usize::from(self.or.is_some())
            + usize::from(self.not.is_some())
            + usize::from(test);
        if kinds != 1 {
            return Err(ConfigError::new(
                at,
                "a selector is exactly one of: and, or, not, or a test (tag or attr, with eq or in)",
            ));
        }
        for (name, list) in [("and", &self.and), ("or", &self.or)] {
            if let Some(list) = list {
                if list.is_empty() {
                    return Err(ConfigError::new(format!("{at}.{name}"), "an empty list"));
                }
                for (i, s) in list.iter().enumerate() {
                    s.check(&format!("{at}.{name}[{i}]"), depth + 1)?;
                }
            }
        }
        if let Some(n) = &self.not {
            n.check(&format!("{at}.not"), depth + 1)?;
        }
        if !test {
            if self.eq.is_some() || self.one_of.is_some() {
                return Err(ConfigError::new(
                    at,
                    "eq and in go with tag or attr, not with and/or/not",
                ));
            }
            return Ok(());
        }
        if self.tag.is_some() && self.attr.is_some() {
            return Err(ConfigError::new(
                format!("{at}.attr"),
                "a test reads a tag or an attribute, not both",
            ));
        }
        if let Some(a) = &self.attr {
            if !matches!(a.as_str(), "name" | "segment" | "tenant" | "host") {
                return Err(ConfigError::new(
                    format!("{at}.attr"),
                    format!("{a:?}: expected name, segment, tenant or host"),
                ));
            }
        }
        match (&self.eq, &self.one_of) {
            (Some(_), None) => Ok(()),
            (None, Some(l)) if !l.is_empty() => Ok(()),
            (None, Some(_)) => Err(ConfigError::new(format!("{at}.in"), "an empty list")),
            (Some(_), Some(_)) => Err(ConfigError::new(
                format!("{at}.in"),
                "a test has eq or in, not both",
            )),
            (None, None) => Err(ConfigError::new(at, "a test needs eq or in")),
        }
    }
}

/// Checks an object's name: 1-64 characters from `[A-Za-z0-9_.-]`.
pub fn check_name(name: &str, at: &str) -> Result<(), ConfigError> {
    check_name_at(name, &|| at.to_string())
}

/// `check_name`, the path made only for an error.
fn check_name_at(name: &str, at: &dyn Fn() -> String) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            at(),
            format!("{name:?}: a name is 1-64 characters from [A-Za-z0-9_.-]"),
        ))
    }
}

/// A checked document's cross references, by index.
#[derive(Debug, Clone)]
pub struct Refs {
    /// Group name -> index.
    pub groups: HashMap<String, usize>,
    /// Service name -> index.
    pub services: HashMap<String, usize>,
    /// Per service (by index): the rule that matches it (`compile::service_rule`).
    pub service_rules: Vec<dataplane::ruleset::Rule>,
    /// Per group: its nested groups (indices), in a topological order of the nesting (every
    /// group after those it includes).
    pub group_order: Vec<usize>,
}

impl Document {
    /// Checks the document as a whole: names, references, tenants, selectors, services.
    /// Checks against the inventory (tenants of named vNICs) are the compiler's.
    pub fn check(&self) -> Result<Refs, ConfigError> {
        for (what, n) in [
            ("services", self.services.len()),
            ("groups", self.groups.len()),
            ("policies", self.policies.len()),
            ("exclude", self.exclude.len()),
        ] {
            if n > MAX_OBJECTS {
                return Err(ConfigError::new(
                    what,
                    format!("{n} entries; at most {MAX_OBJECTS}"),
                ));
            }
        }
        let rules: usize = self.policies.iter().map(|p| p.rules.len()).sum();
        if rules > MAX_RULES {
            return Err(ConfigError::new(
                "policies",
                format!("{rules} rules; at most {MAX_RULES}"),
            ));
        }
        let mut services = HashMap::new();
        let mut service_rules = Vec::with_capacity(self.services.len());
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            check_name(&s.name, &format!("{at}.name"))?;
            if services.insert(s.name.clone(), i).is_some() {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("a second service named {:?}", s.name),
                ));
            }
            service_rules.push(crate::compile::service_rule(s, &at)?);
            check_app(&s.app, &at)?;
        }
        let mut groups = HashMap::new();
        for (i, g) in self.groups.iter().enumerate() {
            let at = format!("groups[{i}]");
            check_name(&g.name, &format!("{at}.name"))?;
            if groups.insert(g.name.clone(), i).is_some() {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("a second group named {:?}", g.name),
                ));
            }
            if let Some(t) = &g.tenant {
                check_name(t, &format!("{at}.tenant"))?;
            }
            check_app(&g.app, &at)?;
        }
        for (i, g) in self.groups.iter().enumerate() {
            let at = format!("groups[{i}]");
            for (j, c) in g.cidrs.iter().enumerate() {
                c.parse::<dataplane::ruleset::Cidr>().map_err(|e| {
                    ConfigError::new(format!("{at}.cidrs[{j}]"), format!("{c:?}: {e}"))
                })?;
            }
            for (j, v) in g.vnics.iter().enumerate() {
                check_name(v, &format!("{at}.vnics[{j}]"))?;
            }
            for (j, n) in g.groups.iter().enumerate() {
                let f = format!("{at}.groups[{j}]");
                let Some(&k) = groups.get(n) else {
                    return Err(ConfigError::new(f, format!("no group named {n:?}")));
                };
                let inner = &self.groups[k];
                if g.tenant.is_some() && inner.tenant != g.tenant {
                    return Err(ConfigError::new(
                        f,
                        format!(
                            "group {n:?} is {}; a group of tenant {:?} includes only its tenant's groups",
                            owner(&inner.tenant),
                            g.tenant.as_deref().unwrap_or_default()
                        ),
                    ));
                }
            }
            if let Some(s) = &g.select {
                s.check(&format!("{at}.select"), 0)?;
            }
        }
        let group_order = self.nesting_order(&groups)?;
        let mut names = BTreeSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            let at = format!("policies[{i}]");
            check_name(&p.name, &format!("{at}.name"))?;
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("a second policy named {:?}", p.name),
                ));
            }
            check_app(&p.app, &at)?;
            if let Some(t) = &p.tenant {
                check_name(t, &format!("{at}.tenant"))?;
                if p.tier != Tier::Application {
                    return Err(ConfigError::new(
                        format!("{at}.tier"),
                        format!(
                            "a tenant's policy is in the application tier, not {}",
                            p.tier.name()
                        ),
                    ));
                }
            }
            let group_ref = |n: &str, f: &dyn Fn() -> String| -> Result<usize, ConfigError> {
                let Some(&k) = groups.get(n) else {
                    return Err(ConfigError::new(f(), format!("no group named {n:?}")));
                };
                if p.tenant.is_some() && self.groups[k].tenant != p.tenant {
                    return Err(ConfigError::new(
                        f(),
                        format!(
                            "group {n:?} is {}; tenant {:?}'s policy names only its own groups",
                            owner(&self.groups[k].tenant),
                            p.tenant.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                Ok(k)
            };
            if let Some(a) = &p.applied_to {
                for (j, n) in a.iter().enumerate() {
                    group_ref(n, &|| format!("{at}.applied_to[{j}]"))?;
                }
            }
            let mut rule_names = HashSet::with_capacity(p.rules.len());
            for (r, rule) in p.rules.iter().enumerate() {
                // Paths are made only for an error: a document may have a million rules.
                let at = || format!("{at}.rules[{r}]");
                check_name_at(&rule.name, &|| format!("{}.name", at()))?;
                if !rule_names.insert(rule.name.as_str()) {
                    return Err(ConfigError::new(
                        format!("{}.name", at()),
                        format!("a second rule named {:?} in policy {:?}", rule.name, p.name),
                    ));
                }
                let mut named = 0;
                for (side, list) in [("src", &rule.src), ("dst", &rule.dst)] {
                    for (j, e) in list.items().iter().enumerate() {
                        let f = || format!("{}.{side}[{j}]", at());
                        if let Endpoint::Group(_) = endpoint(e, &f, &group_ref)? {
                            named += 1;
                        }
                    }
                }
                for (j, s) in rule.services.items().iter().enumerate() {
                    if !services.contains_key(s) {
                        return Err(ConfigError::new(
                            format!("{}.services[{j}]", at()),
                            format!("no service named {s:?}"),
                        ));
                    }
                }
                if let Some(a) = &rule.applied_to {
                    for (j, n) in a.iter().enumerate() {
                        group_ref(n, &|| format!("{}.applied_to[{j}]", at()))?;
                    }
                }
                let scoped = rule.applied_to.as_ref().or(p.applied_to.as_ref());
                if scoped.is_none_or(|a| a.is_empty()) && named == 0 {
                    return Err(ConfigError::new(
                        format!("{}.applied_to", at()),
                        "the rule names no group, so it needs applied_to (a rule never applies to every vNIC by default)",
                    ));
                }
            }
        }
        for (i, v) in self.exclude.iter().enumerate() {
            check_name(v, &format!("exclude[{i}]"))?;
        }
        Ok(Refs {
            groups,
            services,
            service_rules,
            group_order,
        })
    }

    /// Groups in an order where each comes after the groups it includes; a cycle is an error.
    fn nesting_order(&self, index: &HashMap<String, usize>) -> Result<Vec<usize>, ConfigError> {
        // 0 = not seen, 1 = on the current path, 2 = done.
        let mut state = vec![0u8; self.groups.len()];
        let mut order = Vec::with_capacity(self.groups.len());
        for start in 0..self.groups.len() {
            if state[start] != 0 {
                continue;
            }
            // Iterative depth-first search: (group, next include to visit).
            let mut stack = vec![(start, 0usize)];
            state[start] = 1;
            while let Some(&mut (g, ref mut next)) = stack.last_mut() {
                let inc = &self.groups[g].groups;
                if *next < inc.len() {
                    let j = *next;
                    *next += 1;
                    let k = index[&inc[j]];
                    match state[k] {
                        0 => {
                            state[k] = 1;
                            stack.push((k, 0));
                        }
                        1 => {
                            return Err(ConfigError::new(
                                format!("groups[{g}].groups[{j}]"),
                                format!(
                                    "group {:?} includes itself through {:?}",
                                    self.groups[k].name, self.groups[g].name
                                ),
                            ))
                        }
                        _ => {}
                    }
                } else {
                    state[g] = 2;
                    order.push(g);
                    stack.pop();
                }
            }
        }
        Ok(order)
    }
}

fn owner(tenant: &Option<String>) -> String {
    match tenant {
        Some(t) => format!("tenant {t:?}'s"),
        None => "the provider's".to_string(),
    }
}

fn check_app(app: &Option<String>, at: &str) -> Result<(), ConfigError> {
    match app {
        Some(a) => check_name(a, &format!("{at}.app")),
        None => Ok(()),
    }
}

/// Resolves a group name (the second argument makes the path, for an error).
pub type GroupRef<'a> = dyn Fn(&str, &dyn Fn() -> String) -> Result<usize, ConfigError> + 'a;

/// Reads a `src`/`dst` entry: "any", a CIDR, or a group name (resolved by `group`); `at` makes
/// the entry's path, for an error (only then: a document has many rules).
pub fn endpoint(
    e: &str,
    at: &dyn Fn() -> String,
    group: &GroupRef<'_>,
) -> Result<Endpoint, ConfigError> {
    if e == "any" {
        return Ok(Endpoint::Any);
    }
    // A CIDR starts with a hex digit and has '.', ':' or '/'; a group name may look like
    // anything else.
    if e.contains(['/', ':']) || e.parse::<std::net::IpAddr>().is_ok() {
        return e
            .parse::<dataplane::ruleset::Cidr>()
            .map(Endpoint::Cidr)
            .map_err(|err| ConfigError::new(at(), format!("{e:?}: {err}")));
    }
    group(e, at).map(Endpoint::Group)
}
