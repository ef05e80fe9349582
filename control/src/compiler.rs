//! The policy compiler: a checked policy [`Document`] and the inventory in, each vNIC's
//! data-plane [`Policy`] out. Pure: no I/O, no locks; the agent keeps one [`Compiler`] per
//! applied document and asks it for a vNIC whenever the vNIC, its tags or the document change.
//! `docs/POLICY.md` is the model and why; in short:
//!
//! - A vNIC's **group slots** (its identity) are the groups it is in: a group's slot is its
//!   index in the document. They depend on the vNIC's own attributes only, so one vNIC's tag
//!   change computes one vNIC's slots.
//! - A rule is **in scope** of a vNIC when the vNIC is in one of the rule's applied-to groups
//!   (by default the groups the rule names). For a vNIC in scope, the rule becomes egress
//!   entries if the vNIC is a source of the rule (in a source group, or the source is `any`; or,
//!   where the source names addresses only, with those as the packet's source), and ingress
//!   entries if it is a destination. The far end is tested by group slot (the peer vNIC's
//!   identity, known to the switch) and by the CIDRs the rule names (literal, or a group's
//!   `cidrs`).
//! - Every vNIC with the same slots gets the same rules: they are worked out once per set of
//!   slots (a **class**), and compiled once per class and default action. Rulesets are kept by
//!   content, so a new document recompiles only the rulesets whose rules changed, and a vNIC
//!   joining a group takes the ruleset its new class already has.
//! - Tiers in order: emergency, infrastructure, environment, the provider's application tier,
//!   the tenants' application tier, then the vNIC's own rules (a port's `policy` section) and
//!   its default action. Tiers are merged into one data-plane tier unless a `pass` rule needs
//!   the boundary (a first match over two tiers without `pass` is a first match over their
//!   concatenation), so a document without `pass` costs one tree walk per lookup.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::filter::Policy;
use dataplane::ruleset::{Action, Cidr, Peer, Rule, Ruleset};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::ConfigError;
use crate::document::{
    endpoint, DocAction, DocRule, Document, Endpoint, PolicyDef, Selector, Tier, VnicAttrs,
};
use crate::policy::{ActionName, PolicyConfig};

/// Where a compiled rule stands in the order of decision.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The emergency tier.
    Emergency,
    /// The infrastructure tier.
    Infrastructure,
    /// The environment tier.
    Environment,
    /// The provider's policies of the application tier.
    Application,
    /// The tenants' policies of the application tier.
    Tenant,
    /// The vNIC's own rules (its port's `policy` section).
    Vnic,
}

impl Level {
    /// Its name as shown.
    pub fn name(self) -> &'static str {
        match self {
            Level::Emergency => "emergency",
            Level::Infrastructure => "infrastructure",
            Level::Environment => "environment",
            Level::Application => "application",
            Level::Tenant => "tenant",
            Level::Vnic => "vnic",
        }
    }

    fn of(tier: Tier, tenant: bool) -> Level {
        match (tier, tenant) {
            (Tier::Emergency, _) => Level::Emergency,
            (Tier::Infrastructure, _) => Level::Infrastructure,
            (Tier::Environment, _) => Level::Environment,
            (Tier::Application, false) => Level::Application,
            (Tier::Application, true) => Level::Tenant,
        }
    }
}

/// Where a compiled rule came from, for people: its level, policy and rule name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleName {
    /// Its level.
    pub level: Level,
    /// The policy's name (`own` for a vNIC's own rules).
    pub policy: Arc<str>,
    /// The rule's name (a vNIC's own rule: its id).
    pub rule: Arc<str>,
}

impl fmt::Display for RuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.level.name(), self.policy, self.rule)
    }
}

/// The names of a vNIC's compiled rules, index by index with its rulesets' rules.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Egress rules.
    pub egress: Vec<RuleName>,
    /// Ingress rules.
    pub ingress: Vec<RuleName>,
}

/// A vNIC as the compiler sees it.
#[derive(Debug, Clone, Copy)]
pub struct VnicIn<'a> {
    /// What selectors read.
    pub attrs: VnicAttrs<'a>,
    /// Its own rules and defaults (a port's `policy` section), if it has any.
    pub own: Option<&'a PolicyConfig>,
}

/// One vNIC, compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// What the data plane gets.
    pub policy: Arc<Policy>,
    /// Its rules' names.
    pub names: Arc<Names>,
    /// Its group slots (also in `policy.groups`).
    pub slots: Arc<[u32]>,
    /// Time spent on this vNIC (near zero when its rulesets were already compiled).
    pub time: Duration,
    /// Rulesets compiled for it (0, 1 or 2; 0 when shared with another vNIC or kept).
    pub compiled: u32,
}

/// A side of a rule (`src` or `dst`) resolved: any, or groups and addresses.
#[derive(Debug, Clone, Default)]
struct Side {
    any: bool,
    /// Group slots named.
    groups: Vec<u32>,
    /// Addresses named: literal CIDRs and the named groups' `cidrs`.
    cidrs: Vec<Cidr>,
}

impl Side {
    /// True if a vNIC in `slots` is on this side (by identity).
    fn holds(&self, slots: &[u32]) -> bool {
        self.any || self.groups.iter().any(|g| slots.binary_search(g).is_ok())
    }
}

/// A document rule, resolved.
#[derive(Debug)]
struct DRule {
    name: RuleName,
    action: Action,
    src: Side,
    dst: Side,
    /// One template per service (protocol, ports); empty = any traffic.
    services: Vec<Rule>,
    /// The group slots whose members carry it.
    applied: Vec<u32>,
}

/// A group, resolved for membership tests.
#[derive(Debug)]
struct DGroup {
    tenant: Option<String>,
    vnics: HashSet<String>,
    select: Option<Selector>,
    nested: Vec<usize>,
}

/// The rules of every vNIC that has one set of slots (and no own rules).
#[derive(Debug)]
struct Class {
    /// The document rules in its scope, in the order of decision (what it was made from: a
    /// next document's compiler keeps the class if these are the same rules).
    scoped: Vec<Arc<DRule>>,
    egress: Vec<(RuleName, Rule)>,
    ingress: Vec<(RuleName, Rule)>,
    /// Compiled, per default action: (egress default, ingress default) -> rulesets.
    compiled: HashMap<(Action, Action), (Arc<Ruleset>, Arc<Ruleset>)>,
    names: Arc<Names>,
}

/// A ruleset's content: what it is keyed by in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tiers: Vec<Vec<Rule>>,
    default: Action,
    peer: Peer,
}

/// Compiled rulesets by content, kept from one document to the next.
#[derive(Debug, Default)]
pub struct Cache {
    rulesets: HashMap<Key, Arc<Ruleset>>,
}

impl Cache {
    /// Forgets the rulesets no vNIC uses any more (only the cache holds them).
    pub fn sweep(&mut self) {
        self.rulesets.retain(|_, r| Arc::strong_count(r) > 1);
    }

    /// Rulesets held.
    pub fn len(&self) -> usize {
        self.rulesets.len()
    }

    /// True if it holds none.
    pub fn is_empty(&self) -> bool {
        self.rulesets.is_empty()
    }
}

/// A document, ready to compile vNICs.
#[derive(Debug)]
pub struct Compiler {
    doc: Arc<Document>,
    groups: Vec<DGroup>,
    /// Group indices, each after the groups it includes.
    order: Vec<usize>,
    /// Rules in the order of decision.
    rules: Vec<Arc<DRule>>,
    /// Per policy (by name): its rules as written, in written order.
    by_policy: HashMap<String, Vec<Arc<DRule>>>,
    /// Per vNIC name: what its slots were computed from, and its slots.
    memo: HashMap<String, (VnicKey, Arc<[u32]>)>,
    /// Per group slot: the rules applied to its members (indices into `rules`, ascending).
    by_slot: Vec<Vec<u32>>,
    exclude: HashSet<String>,
    defaults: (Action, Action),
    classes: HashMap<Arc<[u32]>, Class>,
    cache: Cache,
    /// Per group: its addresses, with those of the groups it includes.
    cidrs: Vec<Vec<Cidr>>,
}

/// What a vNIC's group slots depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VnicKey {
    segment: u16,
    tenant: String,
    host: String,
    tags: std::collections::BTreeMap<String, String>,
}

impl VnicKey {
    fn is(&self, v: &VnicAttrs<'_>) -> bool {
        self.segment == v.segment
            && self.tenant == v.tenant
            && self.host == v.host
            && self.tags == *v.tags
    }
}

fn action(a: DocAction) -> Action {
    match a {
        DocAction::Allow => Action::Allow,
        DocAction::Drop => Action::Drop,
        DocAction::Reject => Action::Reject,
        DocAction::Pass => Action::Pass,
    }
}

impl Compiler {
    /// Checks `doc` as a whole and prepares it. Every error names the object and field. Give
    /// it the previous compiler's rulesets ([`Compiler::put_cache`]) to keep those that do
    /// not change.
    pub fn new(doc: Arc<Document>) -> Result<Compiler, ConfigError> {
        Compiler::build(doc, None)
    }

    /// The compiler of a document that follows `old`'s: rules, group memberships and classes
    /// of vNICs that did not change are taken over from `old` (which keeps working, only
    /// slower), so a one-rule change costs about what that rule touches. The ruleset cache is
    /// not taken (see [`Compiler::take_cache`]).
    pub fn next(old: &mut Compiler, doc: Arc<Document>) -> Result<Compiler, ConfigError> {
        Compiler::build(doc, Some(old))
    }

    fn build(doc: Arc<Document>, old: Option<&mut Compiler>) -> Result<Compiler, ConfigError> {
        let refs = doc.check()?;
        // Rules resolve the same way when the groups and services are the same.
        let same_sets = old
            .as_ref()
            .is_some_and(|o| o.doc.groups == doc.groups && o.doc.services == doc.services);
        let mut groups = Vec::with_capacity(doc.groups.len());
        for g in &doc.groups {
            groups.push(DGroup {
                tenant: g.tenant.clone(),
                vnics: g.vnics.iter().cloned().collect(),
                select: g.select.clone(),
                nested: g.groups.iter().map(|n| refs.groups[n]).collect(),
            });
        }
        // Each group's addresses, with those of the groups it includes.
        let mut cidrs: Vec<Vec<Cidr>> = vec![Vec::new(); doc.groups.len()];
        for &g in &refs.group_order {
            let mut own: Vec<Cidr> = doc.groups[g]
                .cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect();
            for &n in &groups[g].nested {
                own.extend(cidrs[n].iter().copied());
            }
            own.sort_by_key(|c| (c.is_ipv4(), c.to_string()));
            own.dedup();
            cidrs[g] = own;
        }
        let slot = |g: usize| u32::try_from(g).expect("at most MAX_OBJECTS groups");
        // Policies in the order of decision: (level, priority, name); rules in written order.
        let mut pols: Vec<usize> = (0..doc.policies.len()).collect();
        pols.sort_by(|&a, &b| {
            let (p, q) = (&doc.policies[a], &doc.policies[b]);
            (Level::of(p.tier, p.tenant.is_some()), p.priority, &p.name).cmp(&(
                Level::of(q.tier, q.tenant.is_some()),
                q.priority,
                &q.name,
            ))
        });
        let mut rules = Vec::new();
        let mut by_policy: HashMap<String, Vec<Arc<DRule>>> = HashMap::new();
        let mut by_slot: Vec<Vec<u32>> = vec![Vec::new(); doc.groups.len()];
        let lookup = |n: &str, _: &dyn Fn() -> String| Ok(refs.groups[n]);
        // The rules of `old` that are written the same, in a policy of the same tier, tenant
        // and scope: taken over as they are.
        let kept = |p: &PolicyDef| -> Option<(&[DocRule], &[Arc<DRule>])> {
            let o = old.as_ref().filter(|_| same_sets)?;
            let op = o.doc.policies.iter().find(|q| q.name == p.name)?;
            (op.tier == p.tier && op.tenant == p.tenant && op.applied_to == p.applied_to)
                .then(|| Some((&op.rules[..], &o.by_policy.get(&p.name)?[..])))
                .flatten()
        };
        for &pi in &pols {
            let p = &doc.policies[pi];
            let level = Level::of(p.tier, p.tenant.is_some());
            let policy: Arc<str> = Arc::from(p.name.as_str());
            let before = kept(p);
            let mut mine = Vec::with_capacity(p.rules.len());
            for (ri, r) in p.rules.iter().enumerate() {
                let index = u32::try_from(rules.len()).expect("at most MAX_RULES rules");
                if let Some((written, resolved)) = before {
                    if let (Some(w), Some(d)) = (written.get(ri), resolved.get(ri)) {
                        if w == r {
                            for &g in &d.applied {
                                by_slot[g as usize].push(index);
                            }
                            mine.push(d.clone());
                            rules.push(d.clone());
                            continue;
                        }
                    }
                }
                let at = || format!("policies[{pi}].rules[{ri}]");
                let side = |list: &[String], name: &str| -> Result<Side, ConfigError> {
                    let mut s = Side {
                        any: list.is_empty(),
                        ..Side::default()
                    };
                    for (j, e) in list.iter().enumerate() {
                        match endpoint(e, &|| format!("{}.{name}[{j}]", at()), &lookup)? {
                            Endpoint::Any => s.any = true,
                            Endpoint::Cidr(c) => s.cidrs.push(c),
                            Endpoint::Group(g) => {
                                s.groups.push(slot(g));
                                s.cidrs.extend(cidrs[g].iter().copied());
                            }
                        }
                    }
                    s.groups.sort_unstable();
                    s.groups.dedup();
                    Ok(s)
                };
                let (src, dst) = (side(r.src.items(), "src")?, side(r.dst.items(), "dst")?);
                let applied: BTreeSet<u32> = match r.applied_to.as_ref().or(p.applied_to.as_ref()) {
                    Some(list) if !list.is_empty() => {
                        list.iter().map(|n| slot(refs.groups[n])).collect()
                    }
                    _ => src.groups.iter().chain(&dst.groups).copied().collect(),
                };
                for &g in &applied {
                    by_slot[g as usize].push(index);
                }
                let d = Arc::new(DRule {
                    name: RuleName {
                        level,
                        policy: policy.clone(),
                        rule: Arc::from(r.name.as_str()),
                    },
                    action: action(r.action),
                    src,
                    dst,
                    services: r
                        .services
                        .items()
                        .iter()
                        .map(|s| refs.service_rules[refs.services[s]].clone())
                        .collect(),
                    applied: applied.into_iter().collect(),
                });
                mine.push(d.clone());
                rules.push(d);
            }
            by_policy.insert(p.name.clone(), mine);
        }
        let (mut classes, mut memo) = (HashMap::new(), HashMap::new());
        if let Some(o) = old {
            if o.doc.groups == doc.groups {
                memo = std::mem::take(&mut o.memo);
            }
            // A class whose rules are the same rules (the same objects, in the same order)
            // is the same class.
            for (slots, c) in std::mem::take(&mut o.classes) {
                // A slot the new document does not have (it has fewer groups): no vNIC can be
                // in this class any more (the fuzz target `api` found this out of bounds).
                if slots.iter().any(|&g| g as usize >= by_slot.len()) {
                    continue;
                }
                let now: Vec<u32> = scoped(&by_slot, &slots).collect();
                let same = now.len() == c.scoped.len()
                    && now
                        .iter()
                        .zip(&c.scoped)
                        .all(|(&i, b)| Arc::ptr_eq(&rules[i as usize], b));
                if same {
                    classes.insert(slots, c);
                }
            }
        }
        Ok(Compiler {
            groups,
            order: refs.group_order,
            rules,
            by_slot,
            exclude: doc.exclude.iter().cloned().collect(),
            defaults: (doc.defaults.egress.into(), doc.defaults.ingress.into()),
            classes,
            memo,
            by_policy,
            cache: Cache::default(),
            cidrs,
            doc,
        })
    }

    /// The document.
    pub fn document(&self) -> &Arc<Document> {
        &self.doc
    }

    /// Gives back the ruleset cache (for the next document's compiler).
    pub fn into_cache(mut self) -> Cache {
        self.cache.sweep();
        self.cache
    }

    /// Takes the ruleset cache out (the compiler goes on with an empty one).
    pub fn take_cache(&mut self) -> Cache {
        std::mem::take(&mut self.cache)
    }

    /// Adds compiled rulesets (a former compiler's) to the cache.
    pub fn put_cache(&mut self, cache: Cache) {
        if self.cache.is_empty() {
            self.cache = cache;
        } else {
            self.cache.rulesets.extend(cache.rulesets);
        }
    }

    /// A group's addresses (its `cidrs` and those of the groups it includes).
    pub fn group_cidrs(&self, slot: u32) -> &[Cidr] {
        self.cidrs.get(slot as usize).map_or(&[], Vec::as_slice)
    }

    /// Rulesets in the cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Forgets rulesets no vNIC uses any more.
    pub fn sweep(&mut self) {
        self.cache.sweep();
        self.classes.retain(|_, c| {
            c.compiled
                .values()
                .any(|(e, i)| Arc::strong_count(e) > 2 || Arc::strong_count(i) > 2)
        });
    }

    /// True if `name` is on the exclusion list (not filtered at all).
    pub fn excluded(&self, name: &str) -> bool {
        self.exclude.contains(name)
    }

    /// The group slots of a vNIC: every group it is in, ascending (directly, by its selector,
    /// or through an included group). A tenant's group holds only its tenant's vNICs.
    pub fn slots(&self, v: &VnicAttrs<'_>) -> Vec<u32> {
        let mut member = vec![false; self.groups.len()];
        for &g in &self.order {
            let grp = &self.groups[g];
            if grp.tenant.as_deref().is_some_and(|t| t != v.tenant) {
                continue;
            }
            member[g] = grp.vnics.contains(v.name)
                || grp.select.as_ref().is_some_and(|s| s.matches(v))
                || grp.nested.iter().any(|&n| member[n]);
        }
        member
            .iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(g, _)| u32::try_from(g).expect("at most MAX_OBJECTS groups"))
            .collect()
    }

    /// The rules of a vNIC in `slots` (egress and ingress, each in the order of decision).
    fn class(&self, slots: &[u32]) -> Class {
        let scoped: Vec<Arc<DRule>> = scoped(&self.by_slot, slots)
            .map(|i| self.rules[i as usize].clone())
            .collect();
        let (mut egress, mut ingress) = (Vec::new(), Vec::new());
        for r in &scoped {
            // Egress: this vNIC sends, the peer is the destination.
            if let Some(me) = own_side(&r.src, slots) {
                entries(r, &me, &r.dst, Peer::Dst, &mut egress);
            }
            if let Some(me) = own_side(&r.dst, slots) {
                entries(r, &me, &r.src, Peer::Src, &mut ingress);
            }
        }
        let names = Arc::new(Names {
            egress: egress.iter().map(|(n, _)| n.clone()).collect(),
            ingress: ingress.iter().map(|(n, _)| n.clone()).collect(),
        });
        Class {
            scoped,
            egress,
            ingress,
            compiled: HashMap::new(),
            names,
        }
    }

    /// Compiles one vNIC. `at` names the vNIC in errors (its own rules were checked when its
    /// port was added, so an error here is about them).
    pub fn vnic(&mut self, v: &VnicIn<'_>, at: &str) -> Result<Compiled, ConfigError> {
        let start = Instant::now();
        if self.excluded(v.attrs.name) {
            return Ok(Compiled {
                policy: Arc::new(Policy::none()),
                names: Arc::new(Names::default()),
                slots: Arc::new([]),
                time: start.elapsed(),
                compiled: 0,
            });
        }
        let slots = match self.memo.get(v.attrs.name) {
            Some((k, s)) if k.is(&v.attrs) => s.clone(),
            _ => {
                let s: Arc<[u32]> = self.slots(&v.attrs).into();
                let key = VnicKey {
                    segment: v.attrs.segment,
                    tenant: v.attrs.tenant.to_string(),
                    host: v.attrs.host.to_string(),
                    tags: v.attrs.tags.clone(),
                };
                self.memo.insert(v.attrs.name.to_string(), (key, s.clone()));
                s
            }
        };
        if !self.classes.contains_key(&slots) {
            let c = self.class(&slots);
            self.classes.insert(slots.clone(), c);
        }
        // A vNIC's own defaults, where it states them; the document's otherwise.
        let defaults = match v.own {
            Some(p) => (
                p.egress_default.map_or(self.defaults.0, Into::into),
                p.ingress_default.map_or(self.defaults.1, Into::into),
            ),
            None => self.defaults,
        };
        let mut compiled = 0;
        let (egress, ingress, names) = match v.own {
            // Own rules: this vNIC's lists are its own (cached by content all the same).
            Some(own) if !own.egress.is_empty() || !own.ingress.is_empty() => {
                let class = &self.classes[&slots];
                let mine = |list, dir: &str| -> Result<Vec<(RuleName, Rule)>, ConfigError> {
                    let rules = crate::compile::rules(list, &format!("{at}policy.{dir}"))?;
                    Ok(own_names(&rules).into_iter().zip(rules).collect())
                };
                let mut e = class.egress.clone();
                e.extend(mine(&own.egress, "egress")?);
                let mut i = class.ingress.clone();
                i.extend(mine(&own.ingress, "ingress")?);
                let names = Arc::new(Names {
                    egress: e.iter().map(|(n, _)| n.clone()).collect(),
                    ingress: i.iter().map(|(n, _)| n.clone()).collect(),
                });
                let (eg, c1) = build(
                    &mut self.cache,
                    &e,
                    defaults.0,
                    Peer::Dst,
                    &format!("{at}egress"),
                )?;
                let (ig, c2) = build(
                    &mut self.cache,
                    &i,
                    defaults.1,
                    Peer::Src,
                    &format!("{at}ingress"),
                )?;
                compiled = c1 + c2;
                (eg, ig, names)
            }
            _ => {
                let class = self.classes.get_mut(&slots).expect("inserted above");
                if let Some((e, i)) = class.compiled.get(&defaults) {
                    (e.clone(), i.clone(), class.names.clone())
                } else {
                    let (eg, c1) = build(
                        &mut self.cache,
                        &class.egress,
                        defaults.0,
                        Peer::Dst,
                        &format!("{at}egress"),
                    )?;
                    let (ig, c2) = build(
                        &mut self.cache,
                        &class.ingress,
                        defaults.1,
                        Peer::Src,
                        &format!("{at}ingress"),
                    )?;
                    compiled = c1 + c2;
                    class.compiled.insert(defaults, (eg.clone(), ig.clone()));
                    (eg, ig, class.names.clone())
                }
            }
        };
        let own = v.own.cloned().unwrap_or_default();
        let policy = Policy {
            egress,
            ingress,
            non_ip: own.non_ip.into(),
            nd: own.nd.into(),
            tcp_pickup: own.tcp_pickup,
            max_connections: own.max_connections.unwrap_or(u32::MAX),
            new_connections_per_sec: own.new_connections_per_sec.unwrap_or(0),
            filtered: true,
            groups: slots.clone(),
        };
        Ok(Compiled {
            policy: Arc::new(policy),
            names,
            slots,
            time: start.elapsed(),
            compiled,
        })
    }

    /// Group names by slot.
    pub fn group_name(&self, slot: u32) -> Option<&str> {
        self.doc.groups.get(slot as usize).map(|g| g.name.as_str())
    }

    /// Rules in the document.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// The rules applied to a vNIC in `slots` (indices, ascending, each once).
fn scoped(by_slot: &[Vec<u32>], slots: &[u32]) -> impl Iterator<Item = u32> {
    let mut all: Vec<u32> = slots
        .iter()
        .flat_map(|&g| by_slot[g as usize].iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter()
}

/// How a vNIC in `slots` stands on `side` of a rule: `Some([])` if it is there by identity (or
/// the side is `any`), `Some(cidrs)` if only the side's addresses can make its packets match,
/// `None` if it is not on that side at all.
fn own_side(side: &Side, slots: &[u32]) -> Option<Vec<Cidr>> {
    if side.holds(slots) {
        Some(Vec::new())
    } else if !side.cidrs.is_empty() {
        Some(side.cidrs.clone())
    } else {
        None
    }
}

/// The data-plane rules of document rule `r` for a vNIC whose side's addresses are `me` (empty:
/// any), with the far end on `peer_side` (the packet's destination for `Peer::Dst`).
fn entries(r: &DRule, me: &[Cidr], far: &Side, peer: Peer, out: &mut Vec<(RuleName, Rule)>) {
    // The far end's alternatives: anything, or its groups (by identity), or its addresses.
    let mut fars: Vec<(Vec<u32>, Vec<Cidr>)> = Vec::new();
    if far.any {
        fars.push((Vec::new(), Vec::new()));
    } else {
        if !far.groups.is_empty() {
            fars.push((far.groups.clone(), Vec::new()));
        }
        if !far.cidrs.is_empty() {
            fars.push((Vec::new(), far.cidrs.clone()));
        }
    }
    let any = [Rule::any(0, Action::Allow)];
    let services = if r.services.is_empty() {
        &any[..]
    } else {
        &r.services[..]
    };
    for (groups, cidrs) in &fars {
        // A rule with addresses on both sides needs a family in common, or it matches nothing.
        if !me.is_empty() && !cidrs.is_empty() {
            let has = |l: &[Cidr], v4: bool| l.iter().any(|c| c.is_ipv4() == v4);
            if !(has(me, true) && has(cidrs, true) || has(me, false) && has(cidrs, false)) {
                continue;
            }
        }
        for s in services {
            let mut rule = s.clone();
            rule.action = r.action;
            rule.peer_groups = groups.clone();
            let (src, dst) = match peer {
                Peer::Dst => (me.to_vec(), cidrs.clone()),
                Peer::Src => (cidrs.clone(), me.to_vec()),
            };
            rule.src = src;
            rule.dst = dst;
            out.push((r.name.clone(), rule));
        }
    }
}

/// The data-plane tiers of `list` (in the order of decision): a new tier starts after each
/// level that has a `pass` rule; rule ids are positions from 1.
fn tiers(list: &[(RuleName, Rule)]) -> Vec<Vec<Rule>> {
    let mut out: Vec<Vec<Rule>> = vec![Vec::new()];
    let mut i = 0;
    while i < list.len() {
        let level = list[i].0.level;
        let mut pass = false;
        while i < list.len() && list[i].0.level == level {
            let mut r = list[i].1.clone();
            r.id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            pass |= r.action == Action::Pass;
            out.last_mut().expect("never empty").push(r);
            i += 1;
        }
        if pass && i < list.len() {
            out.push(Vec::new());
        }
    }
    out
}

/// The ruleset of `list`, from the cache or compiled (then the second value is 1).
fn build(
    cache: &mut Cache,
    list: &[(RuleName, Rule)],
    default: Action,
    peer: Peer,
    at: &str,
) -> Result<(Arc<Ruleset>, u32), ConfigError> {
    let key = Key {
        tiers: tiers(list),
        default,
        peer,
    };
    if let Some(r) = cache.rulesets.get(&key) {
        return Ok((r.clone(), 0));
    }
    let refs: Vec<&[Rule]> = key.tiers.iter().map(Vec::as_slice).collect();
    let rs = Ruleset::compile_tiers(&refs, default, peer)
        .map_err(|e| ConfigError::new(at, e.to_string()))?;
    let rs = Arc::new(rs);
    cache.rulesets.insert(key, rs.clone());
    Ok((rs, 1))
}

/// The names of a vNIC's own rules: `vnic/own/ID`.
fn own_names(rules: &[Rule]) -> Vec<RuleName> {
    let policy: Arc<str> = Arc::from("own");
    rules
        .iter()
        .map(|r| RuleName {
            level: Level::Vnic,
            policy: policy.clone(),
            rule: Arc::from(r.id.to_string().as_str()),
        })
        .collect()
}

/// A vNIC without a document: its own rules as one tier, or no firewall when it has none.
pub fn own_only(own: Option<&PolicyConfig>, at: &str) -> Result<Compiled, ConfigError> {
    let start = Instant::now();
    let (policy, compiled) = match own {
        Some(p) => (crate::compile::policy(p, &format!("{at}policy"))?, 2),
        None => (Policy::none(), 0),
    };
    let names = Names {
        egress: own_names(policy.egress.rules()),
        ingress: own_names(policy.ingress.rules()),
    };
    Ok(Compiled {
        slots: policy.groups.clone(),
        policy: Arc::new(policy),
        names: Arc::new(names),
        time: start.elapsed(),
        compiled,
    })
}

impl From<Action> for DocAction {
    fn from(a: Action) -> DocAction {
        match a {
            Action::Allow => DocAction::Allow,
            Action::Drop => DocAction::Drop,
            Action::Reject => DocAction::Reject,
            Action::Pass => DocAction::Pass,
        }
    }
}

impl From<ActionName> for DocAction {
    fn from(a: ActionName) -> DocAction {
        match a {
            ActionName::Allow => DocAction::Allow,
            ActionName::Drop => DocAction::Drop,
            ActionName::Reject => DocAction::Reject,
        }
    }
}
