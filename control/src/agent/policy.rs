//! The agent's policy document: apply (validated as a whole, all or nothing, refused when its
//! base revision is not the running one), dry runs with the change per vNIC, the revision
//! history in the run directory and its restoration at start, applications' objects removed
//! together, the groups with their members, and "may A reach B" answered from the compiled
//! rules.
//!
//! Files (in the run directory): `policy.json` (the running document, its revision and when it
//! was applied) and `policy-history.json` (the last `HISTORY` revisions: when, what made them,
//! what changed). Both are written atomically (a temporary file, then rename).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dataplane::filter::Policy;
use dataplane::ruleset::{Action, Peer, Rule, Tuple};
use serde::{Deserialize, Serialize};

use super::{Agent, PortRecord};
use crate::compiler::{self, Cache, Compiled, Compiler, Names, VnicIn};
use crate::config::PortConfig;
use crate::document::{Document, VnicAttrs};
use crate::identity::write_atomically;
use crate::model::{
    ApiError, GroupInfo, PolicyApplied, PolicyDoc, ReachInfo, ReachRequest, ReachStep,
    RevisionInfo, VnicChange,
};

/// Revisions kept in the history file.
pub const HISTORY: usize = 1000;

/// The running document, its compiler and its history.
pub(crate) struct DocState {
    dir: Option<PathBuf>,
    compiler: Option<Compiler>,
    /// Compiled rulesets by content while no compiler holds them.
    spare: Cache,
    revision: u64,
    applied_at: u64,
    history: Vec<RevisionInfo>,
}

/// `policy.json`.
#[derive(Serialize, Deserialize)]
struct Saved {
    revision: u64,
    applied_at: u64,
    document: Document,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DocState {
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        DocState {
            dir,
            compiler: None,
            spare: Cache::default(),
            revision: 0,
            applied_at: 0,
            history: Vec::new(),
        }
    }

    fn take_cache(&mut self) -> Cache {
        match &mut self.compiler {
            Some(c) => c.take_cache(),
            None => std::mem::take(&mut self.spare),
        }
    }

    fn put_cache(&mut self, mut cache: Cache) {
        cache.sweep();
        match &mut self.compiler {
            Some(c) => c.put_cache(cache),
            None => self.spare = cache,
        }
    }

    fn document(&self) -> Option<&Arc<Document>> {
        self.compiler.as_ref().map(Compiler::document)
    }

    fn save(&self) {
        let Some(dir) = &self.dir else { return };
        if let Some(doc) = self.document() {
            let saved = Saved {
                revision: self.revision,
                applied_at: self.applied_at,
                document: (**doc).clone(),
            };
            let path = dir.join("policy.json");
            if let Err(e) = write_atomically(&path, &saved) {
                tracing::error!("cannot save the policy to {}: {e}", path.display());
            }
        }
        let path = dir.join("policy-history.json");
        if let Err(e) = write_atomically(&path, &self.history) {
            tracing::error!("cannot save the policy history to {}: {e}", path.display());
        }
    }
}

impl PortRecord {
    /// Takes a new compilation; true if the data plane must see it (the policy differs).
    pub(super) fn install(&mut self, c: Compiled) -> bool {
        let changed = !same_policy(&self.policy, &c.policy);
        if changed {
            self.policy = c.policy;
        }
        self.names = c.names;
        self.compile_time = c.time;
        changed
    }

    fn attrs<'a>(&'a self, host: &'a str) -> VnicAttrs<'a> {
        attrs(&self.cfg, host)
    }
}

fn attrs<'a>(cfg: &'a PortConfig, host: &'a str) -> VnicAttrs<'a> {
    VnicAttrs {
        name: &cfg.name,
        segment: cfg.segment_id(),
        tenant: cfg.tenant_name(),
        host,
        tags: &cfg.tags,
    }
}

/// Equal for the data plane: the same rulesets, groups and settings (a policy kept this way
/// keeps its epoch, so its connections are not judged again for nothing).
fn same_policy(a: &Arc<Policy>, b: &Arc<Policy>) -> bool {
    Arc::ptr_eq(a, b)
        || (Arc::ptr_eq(&a.egress, &b.egress)
            && Arc::ptr_eq(&a.ingress, &b.ingress)
            && a.groups == b.groups
            && a.non_ip == b.non_ip
            && a.nd == b.nd
            && a.tcp_pickup == b.tcp_pickup
            && a.max_connections == b.max_connections
            && a.new_connections_per_sec == b.new_connections_per_sec
            && a.filtered == b.filtered)
}

impl Agent {
    /// Compiles one vNIC under the running document (without one: its own rules only, and no
    /// firewall when it has none).
    pub(super) fn compile_vnic(
        &self,
        doc: &mut DocState,
        cfg: &PortConfig,
    ) -> Result<Compiled, ApiError> {
        match &mut doc.compiler {
            Some(c) => Ok(c.vnic(
                &VnicIn {
                    attrs: attrs(cfg, &self.host),
                    own: cfg.policy.as_ref(),
                },
                "",
            )?),
            None => Ok(compiler::own_only(cfg.policy.as_ref(), "")?),
        }
    }

    /// Restores the document saved by an earlier run (before any port is added, so that no
    /// vNIC is ever published without it). Returns its revision (0: none saved).
    pub fn restore_policy(&self) -> Result<u64, String> {
        let mut st = self.doc();
        let Some(dir) = st.dir.clone() else {
            return Ok(0);
        };
        let path = dir.join("policy.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let saved: Saved = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: {e} (move it away to start without a policy)",
                path.display()
            )
        })?;
        let c = Compiler::new(Arc::new(saved.document))
            .map_err(|e| format!("{}: document: {e}", path.display()))?;
        let hpath = dir.join("policy-history.json");
        st.history = match std::fs::read_to_string(&hpath) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| format!("{}: {e}", hpath.display()))?,
            Err(_) => Vec::new(),
        };
        st.compiler = Some(c);
        st.revision = saved.revision;
        st.applied_at = saved.applied_at;
        tracing::info!(
            "policy revision {} restored from {}",
            saved.revision,
            path.display()
        );
        Ok(saved.revision)
    }

    /// Applies a policy document as a whole: nothing changes on an error (which names the
    /// object and field), or when `base_revision` is given and is not the running revision.
    /// With `dry_run`, reports what would change and changes nothing.
    pub fn apply_policy(&self, doc: Document, dry_run: bool) -> Result<PolicyApplied, ApiError> {
        let base = doc.base_revision;
        self.apply_with(dry_run, "apply".into(), base, |_| Ok(doc))
    }

    /// Removes every object that application `app` owns (its services, groups and
    /// policies), as a new revision. Refused, naming the referrer, if an object that stays
    /// refers to one of them.
    pub fn remove_app(&self, app: &str, dry_run: bool) -> Result<PolicyApplied, ApiError> {
        crate::document::check_name(app, "app")?;
        self.apply_with(dry_run, format!("remove-app {app}"), None, |cur| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(format!(
                    "no policy document is applied, so application {app:?} owns nothing"
                )));
            };
            cur.without_app(app)?
                .ok_or_else(|| ApiError::not_found(format!("application {app:?} owns no object")))
        })
    }

    fn apply_with(
        &self,
        dry_run: bool,
        source: String,
        base: Option<u64>,
        make: impl FnOnce(Option<&Document>) -> Result<Document, ApiError>,
    ) -> Result<PolicyApplied, ApiError> {
        let mut ports = self.lock();
        let mut st = self.doc();
        if let Some(b) = base {
            if b != st.revision {
                return Err(ApiError::conflict(
                    "base_revision",
                    format!(
                        "the document is based on revision {b}, but revision {} is running: \
                         read it (bulwarkctl policy get), merge, and apply again",
                        st.revision
                    ),
                ));
            }
        }
        let mut doc = make(st.document().map(|d| &**d))?;
        doc.base_revision = None;
        check_inventory(&doc, &ports)?;
        let start = Instant::now();
        let doc = Arc::new(doc);
        let mut comp = match st.compiler.as_mut() {
            Some(old) => Compiler::next(old, doc)?,
            None => Compiler::new(doc)?,
        };
        comp.put_cache(st.take_cache());
        let mut results: Vec<(String, Compiled)> = Vec::with_capacity(ports.len());
        for (name, rec) in ports.iter() {
            let input = VnicIn {
                attrs: rec.attrs(&self.host),
                own: rec.cfg.policy.as_ref(),
            };
            match comp.vnic(&input, &format!("ports[{name}].")) {
                Ok(c) => results.push((name.clone(), c)),
                Err(e) => {
                    st.put_cache(comp.take_cache());
                    return Err(e.into());
                }
            }
        }
        let compile_time = start.elapsed();
        let compiled: u32 = results.iter().map(|(_, c)| c.compiled).sum();
        let mut distinct = HashSet::new();
        for (_, c) in &results {
            distinct.insert(Arc::as_ptr(&c.policy.egress) as usize);
            distinct.insert(Arc::as_ptr(&c.policy.ingress) as usize);
        }
        // The connections the new rules refuse: a dry run's answer is computed here; a real
        // apply counts them after publishing (a walk of the whole table must not delay it).
        let cut = if dry_run {
            self.conns_cut(&ports, &results)
        } else {
            HashMap::new()
        };
        let mut vnics: Vec<VnicChange> = results
            .iter()
            .map(|(name, c)| {
                let (added, removed) = name_diff(&ports[name].names, &c.names);
                VnicChange {
                    port: name.clone(),
                    filtered: c.policy.filtered,
                    egress_rules: c.policy.egress.len(),
                    ingress_rules: c.policy.ingress.len(),
                    added,
                    removed,
                    conns_cut: cut.get(&ports[name].id).copied().unwrap_or(0),
                    compile_us: u64::try_from(c.time.as_micros()).unwrap_or(u64::MAX),
                }
            })
            .collect();
        vnics.sort_by(|a, b| a.port.cmp(&b.port));
        let revision = st.revision + 1;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        if dry_run {
            st.put_cache(comp.take_cache());
            return Ok(PolicyApplied {
                revision,
                dry_run,
                compile_ms: ms(compile_time),
                publish_ms: 0.0,
                rulesets_compiled: compiled,
                rulesets: distinct.len(),
                vnics,
            });
        }
        let mut changed = 0;
        for (name, c) in results.iter().cloned() {
            if let Some(rec) = ports.get_mut(&name) {
                changed += usize::from(rec.install(c));
            }
        }
        let t = Instant::now();
        self.publish(&ports);
        let publish_time = t.elapsed();
        // Marked for revalidation, not gone yet: each is cut on its next packet.
        let cut = self.conns_cut(&ports, &results);
        for v in &mut vnics {
            v.conns_cut = ports
                .get(&v.port)
                .and_then(|r| cut.get(&r.id))
                .copied()
                .unwrap_or(0);
        }
        let changes = object_diff(st.document().map(|d| &**d), comp.document());
        comp.sweep();
        st.compiler = Some(comp);
        st.revision = revision;
        let at = now_secs();
        st.applied_at = at;
        st.history.push(RevisionInfo {
            revision,
            at,
            source: source.clone(),
            base,
            changes,
            vnics_changed: vnics
                .iter()
                .filter(|v| !v.added.is_empty() || !v.removed.is_empty())
                .count()
                .max(changed),
        });
        if st.history.len() > HISTORY {
            let extra = st.history.len() - HISTORY;
            st.history.drain(..extra);
        }
        st.save();
        tracing::info!(
            "policy revision {revision} ({source}): {} vNICs, {compiled} rulesets compiled, \
             {} in use; compiled in {:.1} ms, published in {:.1} ms, epoch {}",
            vnics.len(),
            distinct.len(),
            ms(compile_time),
            ms(publish_time),
            self.switch.policy_epoch()
        );
        Ok(PolicyApplied {
            revision,
            dry_run,
            compile_ms: ms(compile_time),
            publish_ms: ms(publish_time),
            rulesets_compiled: compiled,
            rulesets: distinct.len(),
            vnics,
        })
    }

    /// Per vNIC id: its tracked connections that the new policies would refuse.
    fn conns_cut(
        &self,
        ports: &BTreeMap<String, PortRecord>,
        new: &[(String, Compiled)],
    ) -> HashMap<u16, usize> {
        let by_id: HashMap<u16, &Policy> = new
            .iter()
            .filter_map(|(n, c)| ports.get(n).map(|r| (r.id, &*c.policy)))
            .collect();
        let mut out = HashMap::new();
        for c in self.switch.connections(None) {
            let owner = by_id.get(&c.owner).copied();
            let peer = (c.peer != c.owner)
                .then(|| by_id.get(&c.peer).copied())
                .flatten();
            let t = key_tuple(&c.key);
            if !judge(&t, owner, peer).0.allowed() {
                *out.entry(c.owner).or_default() += 1;
                if c.peer != c.owner {
                    *out.entry(c.peer).or_default() += 1;
                }
            }
        }
        out
    }

    /// The running document.
    pub fn policy_doc(&self) -> PolicyDoc {
        let st = self.doc();
        PolicyDoc {
            revision: st.revision,
            applied_at: st.applied_at,
            document: st.document().map(|d| (**d).clone()),
        }
    }

    /// The revision history, oldest first.
    pub fn policy_history(&self) -> Vec<RevisionInfo> {
        self.doc().history.clone()
    }

    /// Every group of the running document with the vNICs in it now.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let ports = self.lock();
        let st = self.doc();
        let Some(c) = &st.compiler else {
            return Vec::new();
        };
        let n = c.document().groups.len();
        let mut members: Vec<Vec<String>> = vec![Vec::new(); n];
        let mut addrs: Vec<Vec<String>> = vec![Vec::new(); n];
        for (name, rec) in ports.iter() {
            for s in c.slots(&rec.attrs(&self.host)) {
                members[s as usize].push(name.clone());
                addrs[s as usize].extend(rec.bindings.keys().map(ToString::to_string));
            }
        }
        c.document()
            .groups
            .iter()
            .zip(members.into_iter().zip(addrs))
            .enumerate()
            .map(|(i, (g, (vnics, addresses)))| {
                let slot = u32::try_from(i).unwrap_or(u32::MAX);
                GroupInfo {
                    name: g.name.clone(),
                    tenant: g.tenant.clone(),
                    app: g.app.clone(),
                    slot,
                    vnics,
                    cidrs: c
                        .group_cidrs(slot)
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    addresses,
                }
            })
            .collect()
    }

    /// May `from` open a connection to `to`? Judged as the switch would judge its first
    /// packet: `from`'s egress rules with `to`'s groups, then `to`'s ingress rules with
    /// `from`'s groups. No packet is sent.
    pub fn reach(&self, req: &ReachRequest) -> Result<ReachInfo, ApiError> {
        let ports = self.lock();
        let get = |n: &str, field: &str| {
            ports
                .get(n)
                .ok_or_else(|| ApiError::bad(field, format!("no port named {n:?}")))
        };
        let (a, b) = (get(&req.from, "from")?, get(&req.to, "to")?);
        let proto = crate::compile::proto(&req.proto, "proto")?
            .ok_or_else(|| ApiError::bad("proto", "a connection has one protocol, not any"))?;
        let ip = |v: &Option<String>, field: &str| -> Result<Option<IpAddr>, ApiError> {
            v.as_deref()
                .map(|s| {
                    s.parse::<IpAddr>()
                        .map_err(|e| ApiError::bad(field, format!("{s:?}: {e}")))
                })
                .transpose()
        };
        let (s, d) = (ip(&req.src_ip, "src_ip")?, ip(&req.dst_ip, "dst_ip")?);
        // Unnamed addresses: the vNICs' own (bound or learned), of one family; IPv4 first.
        let bound =
            |rec: &PortRecord, v6: bool| rec.bindings.keys().find(|x| x.is_ipv6() == v6).copied();
        let v6 = match s.or(d) {
            Some(x) => x.is_ipv6(),
            None => bound(a, false).is_none() && bound(a, true).is_some(),
        };
        let (s, d) = (s.or_else(|| bound(a, v6)), d.or_else(|| bound(b, v6)));
        let unspecified = if v6 {
            IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
        };
        let (src, dst) = (s.unwrap_or(unspecified), d.unwrap_or(unspecified));
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(ApiError::bad(
                "dst_ip",
                "src_ip and dst_ip are of different families",
            ));
        }
        let icmp = matches!(proto, 1 | 58);
        let t = Tuple {
            src,
            dst,
            proto,
            sport: if icmp { 0 } else { 49152 },
            dport: if icmp { 0 } else { req.port.unwrap_or(0) },
            icmp_type: if icmp {
                req.port.map_or(if proto == 1 { 8 } else { 128 }, |p| {
                    u8::try_from(p).unwrap_or(u8::MAX)
                })
            } else {
                0
            },
            icmp_code: 0,
        };
        let (verdicts, [e, i]) = judge(&t, Some(&a.policy), Some(&b.policy));
        let step = |rec: &PortRecord,
                    v: Option<(Action, Option<usize>)>,
                    names: &[crate::compiler::RuleName]| ReachStep {
            port: rec.cfg.name.clone(),
            action: v.map_or(Action::Allow, |(a, _)| a).to_string(),
            rule: v
                .and_then(|(_, r)| r)
                .and_then(|r| names.get(r))
                .map(ToString::to_string),
        };
        Ok(ReachInfo {
            allowed: verdicts.allowed(),
            egress: step(a, e, &a.names.egress),
            ingress: step(b, i, &b.names.ingress),
            tuple: if icmp {
                format!(
                    "{} {} -> {} type {}",
                    conntrack::ip_proto::name(proto).unwrap_or("icmp"),
                    t.src,
                    t.dst,
                    t.icmp_type
                )
            } else {
                format!(
                    "{} {}:{} -> {}:{}",
                    conntrack::ip_proto::name(proto)
                        .map_or_else(|| format!("proto {proto}"), str::to_string),
                    t.src,
                    t.sport,
                    t.dst,
                    t.dport
                )
            },
        })
    }
}

/// Both verdicts, each `(action, rule index)`; `None` where that vNIC has no firewall.
type Sides = [Option<(Action, Option<usize>)>; 2];

/// The result of judging a first packet.
struct Judged(bool);

impl Judged {
    fn allowed(&self) -> bool {
        self.0
    }
}

/// Judges a connection's first packet as `filter::judge` does: the opener's egress rules
/// with the receiver's groups, then the receiver's ingress rules with the opener's.
fn judge(t: &Tuple, from: Option<&Policy>, to: Option<&Policy>) -> (Judged, Sides) {
    let (from, to) = (from.filter(|p| p.filtered), to.filter(|p| p.filtered));
    fn groups(p: Option<&Policy>) -> &[u32] {
        p.map_or(&[][..], |p| &p.groups[..])
    }
    let e = from.map(|p| {
        let v = p.egress.lookup_peer(t, groups(to));
        (v.action, v.rule.map(|r| r as usize))
    });
    let i = to.map(|p| {
        let v = p.ingress.lookup_peer(t, groups(from));
        (v.action, v.rule.map(|r| r as usize))
    });
    let ok = |s: &Option<(Action, Option<usize>)>| s.is_none_or(|(a, _)| a == Action::Allow);
    (Judged(ok(&e) && ok(&i)), [e, i])
}

/// The tuple of a tracked connection's first packet.
fn key_tuple(k: &conntrack::Key) -> Tuple {
    let icmp = matches!(k.proto, 1 | 58);
    Tuple {
        src: k.src,
        dst: k.dst,
        proto: k.proto,
        sport: if icmp { 0 } else { k.sport },
        dport: if icmp { 0 } else { k.dport },
        icmp_type: match k.proto {
            1 => 8,
            58 => 128,
            _ => 0,
        },
        icmp_code: 0,
    }
}

/// Rules a vNIC gains and loses, by name and direction.
fn name_diff(old: &Names, new: &Names) -> (Vec<String>, Vec<String>) {
    let set = |n: &Names| -> BTreeSet<String> {
        n.egress
            .iter()
            .map(|r| format!("egress {r}"))
            .chain(n.ingress.iter().map(|r| format!("ingress {r}")))
            .collect()
    };
    let (a, b) = (set(old), set(new));
    (
        b.difference(&a).cloned().collect(),
        a.difference(&b).cloned().collect(),
    )
}

/// What changed between two documents, object by object: `+group web`, `-policy old`,
/// `~service http`.
fn object_diff(old: Option<&Document>, new: &Document) -> Vec<String> {
    let empty = Document::default();
    let old = old.unwrap_or(&empty);
    let mut out = Vec::new();
    fn by_name<'a, T: PartialEq>(
        kind: &str,
        a: &'a [T],
        b: &'a [T],
        name: impl Fn(&T) -> &str,
        out: &mut Vec<String>,
    ) {
        let ma: BTreeMap<&str, &T> = a.iter().map(|x| (name(x), x)).collect();
        let mb: BTreeMap<&str, &T> = b.iter().map(|x| (name(x), x)).collect();
        for (n, x) in &mb {
            match ma.get(n) {
                None => out.push(format!("+{kind} {n}")),
                Some(y) if y != x => out.push(format!("~{kind} {n}")),
                _ => {}
            }
        }
        for n in ma.keys() {
            if !mb.contains_key(n) {
                out.push(format!("-{kind} {n}"));
            }
        }
    }
    by_name(
        "service",
        &old.services,
        &new.services,
        |s| &s.name,
        &mut out,
    );
    by_name("group", &old.groups, &new.groups, |g| &g.name, &mut out);
    by_name(
        "policy",
        &old.policies,
        &new.policies,
        |p| &p.name,
        &mut out,
    );
    if old.exclude != new.exclude {
        out.push("~exclude".into());
    }
    if old.defaults != new.defaults {
        out.push("~defaults".into());
    }
    out
}

/// Checks a document against the inventory: a tenant's group names only its tenant's vNICs.
fn check_inventory(doc: &Document, ports: &BTreeMap<String, PortRecord>) -> Result<(), ApiError> {
    for (i, g) in doc.groups.iter().enumerate() {
        let Some(t) = &g.tenant else { continue };
        for (j, v) in g.vnics.iter().enumerate() {
            if let Some(rec) = ports.get(v) {
                if rec.cfg.tenant_name() != t {
                    return Err(ApiError::bad(
                        format!("groups[{i}].vnics[{j}]"),
                        format!(
                            "vNIC {v:?} is tenant {:?}'s; group {:?} of tenant {t:?} holds only its tenant's vNICs",
                            rec.cfg.tenant_name(),
                            g.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A compiled rule in words: `to group app, tcp dport 8080`.
pub(super) fn describe(doc: &DocState, r: &Rule, peer: Peer) -> String {
    let mut parts = Vec::new();
    let cidrs = |l: &[dataplane::ruleset::Cidr]| {
        l.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !r.src.is_empty() {
        parts.push(format!("from {}", cidrs(&r.src)));
    }
    if !r.dst.is_empty() {
        parts.push(format!("to {}", cidrs(&r.dst)));
    }
    if !r.peer_groups.is_empty() {
        let names: Vec<String> = r
            .peer_groups
            .iter()
            .map(|&g| {
                doc.compiler
                    .as_ref()
                    .and_then(|c| c.group_name(g))
                    .map_or_else(|| format!("#{g}"), str::to_string)
            })
            .collect();
        let dir = if peer == Peer::Dst { "to" } else { "from" };
        parts.push(format!("{dir} group {}", names.join("|")));
    }
    if let Some(p) = r.proto {
        parts.push(
            conntrack::ip_proto::name(p).map_or_else(|| format!("proto {p}"), str::to_string),
        );
    }
    let ports = |l: &[std::ops::RangeInclusive<u16>]| {
        l.iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    if !r.src_ports.is_empty() {
        parts.push(format!("sport {}", ports(&r.src_ports)));
    }
    if !r.dst_ports.is_empty() {
        parts.push(format!("dport {}", ports(&r.dst_ports)));
    }
    if let Some(t) = r.icmp_type {
        parts.push(format!("type {t}"));
    }
    if let Some(c) = r.icmp_code {
        parts.push(format!("code {c}"));
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(", ")
    }
}

impl DocState {
    /// The name of group `slot` in the running document.
    pub(super) fn group_name(&self, slot: u32) -> Option<String> {
        self.compiler
            .as_ref()
            .and_then(|c| c.group_name(slot))
            .map(str::to_string)
    }
}
