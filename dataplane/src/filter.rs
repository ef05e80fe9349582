//! The per-vNIC filter stage: connection tracking first, the rulesets on a miss.
//!
//! A frame from vNIC A to vNIC B passes A's egress policy and B's ingress policy. One tracked
//! connection serves both: it is created when both rulesets allow its first packet, records
//! the two rules that admitted it, and from then on every packet of it (either direction) is
//! judged by the connection alone, so the per-packet work does not double for a VM-to-VM
//! connection on one host.
//!
//! - Non-IP frames (ARP and the like): each side's `non_ip` action. ICMPv6 neighbour
//!   discovery (RS, RA, NS, NA, redirect): each side's `nd` action. Neither is tracked.
//! - IP fragments: the first fragment is tracked like any packet (it carries the ports); later
//!   fragments carry no ports and are dropped (`ip_fragment`). Guests that do path-MTU
//!   discovery (TCP, and UDP by default on Linux) do not fragment.
//! - TCP, UDP, SCTP, UDP-Lite and other protocols: a connection keyed by the 5-tuple (ports 0
//!   for protocols without ports). TCP is tracked with window checks (`conntrack::tcp`); a
//!   mid-stream segment opens a connection only where the policy allows pickup.
//! - ICMP / ICMPv6 echo: a pseudo-connection keyed by the echo identifier. Other informational
//!   ICMP messages are judged by the rulesets each time, untracked.
//! - ICMP errors (unreachable, packet too big, time exceeded, parameter problem) pass only as
//!   *related* to the connection they quote, and only towards that connection's endpoint.
//! - A connection validated before the latest policy change of one of its vNICs is re-checked
//!   on its next packet: still allowed, it continues (the rules it now matches are recorded);
//!   denied, it is cut (`policy_revoked`) and removed. A change of another vNIC's policy does
//!   not touch it. Epochs are 64-bit; the table keeps 16 bits of each, made exact by its
//!   restamp pass (`conntrack::Table::restamp`).
//! - A connection belongs to its pair of vNICs (owner and peer). A packet of it between other
//!   vNICs (a spoofer, an address that moved) is judged by those vNICs' rules and never changes
//!   or cuts the connection. One opened by a flood (receiver unknown) records its far end when
//!   that end first shows itself and its ingress rules allow the connection.
//!
//! The stage is pure: it reads the packet, the policies and the table, and returns a
//! decision; the caller counts it and forwards, drops, or answers a reject.

use std::sync::Arc;

use conntrack::tcp::{Invalid, Segment, TcpConn, Update};
use conntrack::{InsertError, Key, NewConn, Table};

use crate::counters::DropReason;
use crate::parse::{ip_proto, Frag, Packet, L3};
use crate::ruleset::{Action, Ruleset, Tuple, Verdict};

/// One vNIC's compiled policy. Immutable once published.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Rules for what this vNIC's guest sends.
    pub egress: Arc<Ruleset>,
    /// Rules for what is delivered to this vNIC's guest.
    pub ingress: Arc<Ruleset>,
    /// Non-IP frames (ARP, LLDP, ...).
    pub non_ip: Action,
    /// ICMPv6 neighbour discovery, router and multicast listener messages (`Icmp::is_nd`).
    pub nd: Action,
    /// Accept a mid-stream TCP segment as a new connection (after a flush or a restart).
    pub tcp_pickup: bool,
    /// Most connections this vNIC's guest may have open at once (IPv6 ones count twice);
    /// `u32::MAX`: a fair share of the table (see `switch`).
    pub max_connections: u32,
    /// New connections per second this vNIC's guest may open (0: unlimited).
    pub new_connections_per_sec: u32,
    /// The vNIC has a firewall. A frame between two unfiltered vNICs (and every frame of a
    /// segment without a filtered vNIC) is switched at L2 only: not parsed, not tracked.
    pub filtered: bool,
    /// The group slots this vNIC is in, ascending: its identity, which the group rules of
    /// the other end's rulesets test (`Ruleset::lookup_peer`). A membership change publishes a
    /// new `Policy` with the same rulesets: a new epoch for this vNIC, no recompilation.
    pub groups: Arc<[u32]>,
}

impl Policy {
    /// A policy that allows everything (and tracks it).
    pub fn allow_all() -> Policy {
        let any =
            Arc::new(Ruleset::compile(&[], Action::Allow).expect("an empty ruleset compiles"));
        Policy {
            egress: any.clone(),
            ingress: any,
            non_ip: Action::Allow,
            nd: Action::Allow,
            tcp_pickup: true,
            max_connections: u32::MAX,
            new_connections_per_sec: 0,
            filtered: true,
            groups: Arc::new([]),
        }
    }

    /// No firewall on this vNIC (a port configured without a policy). Where the other end of a
    /// frame is filtered, this side judges like `allow_all`.
    pub fn none() -> Policy {
        Policy {
            tcp_pickup: true,
            filtered: false,
            ..Policy::allow_all()
        }
    }
}

/// One end of the frame's path through the switch.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// vNIC (port) id.
    pub vnic: u16,
    /// Its policy.
    pub policy: &'a Policy,
    /// The policy epoch at which this vNIC's policy last changed: a connection of this vNIC
    /// validated before it is re-validated on its next packet; the connections of vNICs
    /// whose policies did not change are not.
    pub epoch: u64,
}

/// Which rule decided, for per-rule counters: the vNIC, which of its rulesets, and the index
/// into that ruleset's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleRef {
    /// A rule of this vNIC's egress ruleset.
    Egress(u16, u32),
    /// A rule of this vNIC's ingress ruleset.
    Ingress(u16, u32),
}

impl RuleRef {
    /// The index that names no rule of the ruleset: its default action (or, for a non-IP or
    /// ND frame, the vNIC's `non_ip` / `nd` action). A refusal always names the vNIC and the
    /// direction that refused, so the drop is counted on that vNIC.
    pub const DEFAULT: u32 = u32::MAX;

    /// The vNIC whose policy the rule belongs to.
    pub fn vnic(self) -> u16 {
        match self {
            RuleRef::Egress(v, _) | RuleRef::Ingress(v, _) => v,
        }
    }

    /// Whether it is an ingress rule (of what the vNIC receives).
    pub fn is_ingress(self) -> bool {
        matches!(self, RuleRef::Ingress(..))
    }

    /// The rule's index in its ruleset (`DEFAULT`: the default action).
    pub fn index(self) -> u32 {
        match self {
            RuleRef::Egress(_, i) | RuleRef::Ingress(_, i) => i,
        }
    }
}

/// What to do with the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Pass {
        /// The packet belongs to (or created) this connection slot, if tracked.
        conn: Option<usize>,
        /// It created the connection (the rules below admitted it).
        created: bool,
        /// Rules that admitted it or its connection (the opener's egress rule, the far
        /// end's ingress rule), for per-rule counters.
        rules: [Option<RuleRef>; 2],
    },
    /// Drop it, for this reason. A drop by a policy names the vNIC, direction and rule (or
    /// `RuleRef::DEFAULT`) that refused it; other drops name none.
    Drop(DropReason, Option<RuleRef>),
    /// Drop it and answer the sender (TCP RST, or ICMP unreachable), by this rule.
    Reject(Option<RuleRef>),
}

impl Decision {
    /// The connection slot the packet belongs to, if it passed as part of one.
    pub fn conn(&self) -> Option<usize> {
        match self {
            Decision::Pass { conn, .. } => *conn,
            _ => None,
        }
    }
}

/// The outcome of a packet on an existing connection.
enum Hit {
    Done(Decision),
    /// A SYN restarted a closed connection: the old entry is gone, create a new one.
    Restart,
}

/// The filter stage, for one worker.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    /// The shared connection table.
    pub table: &'a Table,
    /// The current policy epoch (bumped on every publish that changes some vNIC's policy;
    /// 64 bits, never wraps). Connections record its low 16 bits; see
    /// `conntrack::Table::validated_at` for why that is exact.
    pub epoch: u64,
}

/// The classifier's view of a packet.
pub fn tuple(p: &Packet) -> Tuple {
    let (icmp_type, icmp_code) = p.icmp.map_or((0, 0), |i| (i.ty, i.code));
    Tuple {
        src: p.src,
        dst: p.dst,
        proto: p.proto,
        sport: p.sport,
        dport: p.dport,
        icmp_type,
        icmp_code,
    }
}

fn reversed(t: &Tuple) -> Tuple {
    Tuple {
        src: t.dst,
        dst: t.src,
        sport: t.dport,
        dport: t.sport,
        ..*t
    }
}

fn is_echo(proto: u8, ty: u8) -> bool {
    matches!(
        (proto, ty),
        (ip_proto::ICMP, 0 | 8) | (ip_proto::ICMPV6, 128 | 129)
    )
}

fn is_echo_request(proto: u8, ty: u8) -> bool {
    matches!((proto, ty), (ip_proto::ICMP, 8) | (ip_proto::ICMPV6, 128))
}

/// The key ports of an ICMP echo packet. A request is keyed `(id, id + 1)` and a reply `(id +
/// 1, id)`, so a reply is exactly the reversed key of its request (it finds the request's
/// connection in direction 1), while a request from the other end is never the reverse of any
/// request's key (`(x, x + 1)` reversed is `(x + 1, x)`, which no request has) and opens a
/// connection of its own, judged by the rules; and a reply sent in its request's direction
/// matches nothing. Linux conntrack gets the same from the echo type in its tuple. With the
/// identifier alone on both ports, a request carrying the identifier of the other end's ping
/// was taken for that ping's reply and passed the receiver's ingress policy unjudged.
#[inline]
fn echo_ports(id: u16, request: bool) -> (u16, u16) {
    let next = id.wrapping_add(1);
    if request {
        (id, next)
    } else {
        (next, id)
    }
}

fn from_insert(e: InsertError) -> DropReason {
    match e {
        InsertError::TableFull | InsertError::MixedFamilies => DropReason::CtTableFull,
        InsertError::VnicLimit => DropReason::CtVnicLimit,
        InsertError::VnicRate => DropReason::CtVnicRate,
    }
}

fn from_tcp(e: Invalid) -> DropReason {
    match e {
        Invalid::BadFlags => DropReason::TcpBadFlags,
        Invalid::OutOfWindow => DropReason::TcpOutOfWindow,
        Invalid::NotSyn => DropReason::TcpNoConnection,
    }
}

/// Both sides' verdicts on a tuple: the first that does not allow decides.
// Always inlined: once the lookups took the peer's groups, LLVM kept it out of line, which cost
// about 45 instructions per new connection (scripts/framecost, rules1k-new: 4600 -> 4554).
#[inline(always)]
fn judge(
    t: &Tuple,
    sender: Side<'_>,
    receiver: Option<Side<'_>>,
) -> Result<[Option<RuleRef>; 2], Decision> {
    let peer = receiver.map_or(&[][..], |r| &r.policy.groups[..]);
    let e = sender.policy.egress.lookup_peer(t, peer);
    refuse(
        e,
        RuleRef::Egress(sender.vnic, e.rule.unwrap_or(RuleRef::DEFAULT)),
    )?;
    let er = e.rule.map(|i| RuleRef::Egress(sender.vnic, i));
    let ir = match receiver {
        Some(r) => {
            let i = r.policy.ingress.lookup_peer(t, &sender.policy.groups);
            refuse(
                i,
                RuleRef::Ingress(r.vnic, i.rule.unwrap_or(RuleRef::DEFAULT)),
            )?;
            i.rule.map(|i| RuleRef::Ingress(r.vnic, i))
        }
        None => None,
    };
    Ok([er, ir])
}

/// `Err` with the decision when `v` does not allow; `by` names who decided.
fn refuse(v: Verdict, by: RuleRef) -> Result<(), Decision> {
    match v.action {
        Action::Allow => Ok(()),
        // `Pass` is never a verdict (a ruleset resolves it to the next tier); were it one, the
        // frame is dropped: fail closed.
        Action::Drop | Action::Pass => Err(Decision::Drop(DropReason::PolicyDrop, Some(by))),
        Action::Reject => Err(Decision::Reject(Some(by))),
    }
}

/// A non-IP or ND frame: each side's action for that kind of frame.
fn special(
    src: Side<'_>,
    dst: Option<Side<'_>>,
    action: fn(&Policy) -> Action,
    reason: DropReason,
) -> Decision {
    if action(src.policy) != Action::Allow {
        return Decision::Drop(reason, Some(RuleRef::Egress(src.vnic, RuleRef::DEFAULT)));
    }
    match dst {
        Some(d) if action(d.policy) != Action::Allow => {
            Decision::Drop(reason, Some(RuleRef::Ingress(d.vnic, RuleRef::DEFAULT)))
        }
        _ => Decision::Pass {
            conn: None,
            created: false,
            rules: [None, None],
        },
    }
}

fn rule_id(r: Option<RuleRef>) -> u16 {
    match r {
        Some(RuleRef::Egress(_, i) | RuleRef::Ingress(_, i)) => {
            u16::try_from(i).unwrap_or(u16::MAX)
        }
        None => u16::MAX,
    }
}

impl Filter<'_> {
    /// Judges one frame from `src` to `dst` (`None`: it leaves through no vNIC of this host,
    /// so only the sender's egress policy applies). `zone` is the segment.
    pub fn decide(
        &self,
        p: &Packet,
        zone: u16,
        src: Side<'_>,
        dst: Option<Side<'_>>,
        now: u32,
        now_ms: u32,
    ) -> Decision {
        self.decide_hashed(p, zone, src, dst, now, now_ms, None)
    }

    /// `decide`, given the packet's connection hash when the caller already has it (from
    /// `hash_of` with the same packet and zone, as the worker's burst stages do).
    #[allow(clippy::too_many_arguments)]
    pub fn decide_hashed(
        &self,
        p: &Packet,
        zone: u16,
        src: Side<'_>,
        dst: Option<Side<'_>>,
        now: u32,
        now_ms: u32,
        hash: Option<u64>,
    ) -> Decision {
        if p.l3 == L3::NonIp {
            return special(src, dst, |p| p.non_ip, DropReason::NonIpDenied);
        }
        if p.frag == Frag::Later {
            return Decision::Drop(DropReason::IpFragment, None);
        }
        if let Some(icmp) = p.icmp {
            if icmp.is_nd {
                return special(src, dst, |p| p.nd, DropReason::NdDenied);
            }
            if icmp.is_error {
                return self.related(p, zone, dst, now);
            }
            if !is_echo(p.proto, icmp.ty) {
                // Informational ICMP other than echo: judged each time, not tracked.
                return match judge(&tuple(p), src, dst) {
                    Ok(rules) => Decision::Pass {
                        conn: None,
                        created: false,
                        rules,
                    },
                    Err(d) => d,
                };
            }
        }
        let key = self.key(p, zone);
        let hash = hash.unwrap_or_else(|| self.table.hash(&key));
        debug_assert_eq!(hash, self.table.hash(&key), "a hash of another packet");
        if let Some(f) = self.table.lookup(&key, hash) {
            if self.table.expired(f.slot, now) {
                // Idle past its timeout: gone; this packet may start a new one.
                self.table.expire_now(f.slot);
            } else {
                match self.established(p, f, src, dst, now) {
                    Hit::Done(d) => return d,
                    // A SYN reusing the addresses of a closed connection: the old one is
                    // removed and this SYN opens the new one, judged by the rules again.
                    Hit::Restart => {}
                }
            }
        }
        self.create(p, &key, hash, src, dst, now, now_ms)
    }

    /// The connection-table hash of the packet's connection, if it is one `decide` looks up
    /// (for prefetching a burst's table lines before deciding).
    // Always inlined: called for every frame from one stage, and LLVM's heuristics stopped inlining
    // it once the stage loops grew (about 10 instructions a frame each; scripts/framecost).
    #[inline(always)]
    pub fn hash_of(&self, p: &Packet, zone: u16) -> Option<u64> {
        if p.l3 == L3::NonIp || p.frag == Frag::Later {
            return None;
        }
        if let Some(i) = p.icmp {
            if i.is_nd || i.is_error || !is_echo(p.proto, i.ty) {
                return None;
            }
        }
        Some(self.table.hash(&self.key(p, zone)))
    }

    fn key(&self, p: &Packet, zone: u16) -> Key {
        let (sport, dport) = match p.icmp {
            Some(i) if is_echo(p.proto, i.ty) => echo_ports(i.id, is_echo_request(p.proto, i.ty)),
            _ => (p.sport, p.dport),
        };
        Key {
            zone,
            proto: p.proto,
            src: p.src,
            dst: p.dst,
            sport,
            dport,
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "connections keep the epoch's low 16 bits; conntrack::RESTAMP_EVERY renews them before they could wrap"
    )]
    fn create(
        &self,
        p: &Packet,
        key: &Key,
        hash: u64,
        src: Side<'_>,
        dst: Option<Side<'_>>,
        now: u32,
        now_ms: u32,
    ) -> Decision {
        // An echo reply or a TCP segment other than a SYN never opens a connection by itself
        // (TCP mid-stream only with pickup).
        if let Some(i) = p.icmp {
            if !is_echo_request(p.proto, i.ty) {
                return Decision::Drop(DropReason::IcmpNoConnection, None);
            }
        }
        let tcp = match p
            .tcp
            .map(|_| TcpConn::new(&segment(p), src.policy.tcp_pickup))
        {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return Decision::Drop(from_tcp(e), None),
            None => None,
        };
        let rules = match judge(&tuple(p), src, dst) {
            Ok(r) => r,
            Err(d) => return d,
        };
        let peer = dst.map_or(src.vnic, |d| d.vnic);
        let ids = (rule_id(rules[0]), rule_id(rules[1]));
        let n = NewConn {
            owner: src.vnic,
            peer,
            tcp,
            epoch: self.epoch as u16,
            rules: ids,
        };
        match self.table.insert(key, hash, &n, now, now_ms) {
            Ok((f, true)) => {
                self.table.touch(f.slot, 0, now);
                Decision::Pass {
                    conn: Some(f.slot),
                    created: true,
                    rules,
                }
            }
            // Another core created it between our lookup and our insert: it is established.
            Ok((f, false)) => match self.established(p, f, src, dst, now) {
                Hit::Done(d) => d,
                // It closed again in between: let the sender retry.
                Hit::Restart => Decision::Drop(DropReason::TcpNoConnection, None),
            },
            Err(e) => Decision::Drop(from_insert(e), None),
        }
    }

    // Inlined: returned through memory, its `Hit` (a `Decision` inside) was copied again into
    // `decide`'s result, and reading it back stalled on store forwarding (perf: a third of
    // `decide_hashed`'s samples on that copy).
    #[inline(always)]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "connections keep the epoch's low 16 bits; conntrack::RESTAMP_EVERY renews them before they could wrap"
    )]
    fn established(
        &self,
        p: &Packet,
        f: conntrack::Found,
        src: Side<'_>,
        dst: Option<Side<'_>>,
        now: u32,
    ) -> Hit {
        let (owner, peer) = self.table.endpoints(f.slot);
        let known = peer != owner;
        // A connection belongs to its pair of vNICs: the owner (opener) and the peer. The
        // packet's vNIC on the owner's side, and on the far side (None: a flood, not known).
        let (owner_side, far_side) = if f.dir == 0 {
            (Some(src.vnic), dst.map(|d| d.vnic))
        } else {
            (dst.map(|d| d.vnic), Some(src.vnic))
        };
        let owner_ok = owner_side.is_none_or(|v| v == owner);
        // Stale: validated before the last policy change of either vNIC the packet passes
        // (or marked stale by the table's restamp pass).
        let changed = dst.map_or(src.epoch, |d| d.epoch.max(src.epoch));
        let stale = self
            .table
            .validated_at(f.slot, self.epoch)
            .is_none_or(|at| at < changed);
        // A packet between other vNICs than the recorded pair (a spoofer, an address that
        // moved) is judged by the rules of the vNICs it really passes. It never changes or cuts
        // the connection, so a VM cannot break others' connections by spoofing their packets.
        let stranger = !owner_ok || (known && far_side.is_some_and(|v| v != peer));
        let rules = match far_side {
            _ if stranger => match self.judge_tracked(p, f, src, dst) {
                Ok(r) => r,
                Err(r) => return Hit::Done(Decision::Drop(DropReason::PolicyDrop, r)),
            },
            // The far end shows itself for the first time (the connection began as a flood):
            // its ingress rules are asked now; refused, the packet is dropped and the
            // connection waits for its real far end.
            Some(v) if !known => match self.judge_tracked(p, f, src, dst) {
                Ok(r) => {
                    // Both ends were judged by the current rules: a full re-validation.
                    let ids = (rule_id(r[0]), rule_id(r[1]));
                    self.table
                        .revalidated(f.slot, self.epoch as u16, ids, Some(v));
                    r
                }
                Err(r) => return Hit::Done(Decision::Drop(DropReason::PolicyDrop, r)),
            },
            // The connection's own pair, validated under an older policy: judged again; still
            // allowed, it continues; denied, it is cut. A flooded packet shows only one end,
            // so it passes on that end's verdict and the re-validation waits for a packet
            // that shows both.
            _ if stale => match self.judge_tracked(p, f, src, dst) {
                Ok(r) => {
                    if owner_side.is_some() && far_side.is_some() {
                        let ids = (rule_id(r[0]), rule_id(r[1]));
                        self.table.revalidated(f.slot, self.epoch as u16, ids, None);
                    }
                    r
                }
                Err(r) => {
                    self.table.expire_now(f.slot);
                    return Hit::Done(Decision::Drop(DropReason::PolicyRevoked, r));
                }
            },
            _ => {
                let (e, i) = self.table.rules(f.slot);
                [
                    (e != u16::MAX).then(|| RuleRef::Egress(owner, u32::from(e))),
                    (i != u16::MAX && known).then(|| RuleRef::Ingress(peer, u32::from(i))),
                ]
            }
        };
        if p.tcp.is_some() {
            let seg = segment(p);
            // A stranger's segment is checked against the window like any other, but the
            // result is never stored: a RST or FIN forged by a third vNIC cannot close the
            // connection, nor can its segments move the window.
            match self.table.with_tcp(f.slot, |c| {
                if stranger {
                    (false, { *c }.update(&seg, f.dir))
                } else {
                    let u = c.update(&seg, f.dir);
                    (u == Update::Valid, u)
                }
            }) {
                Update::Valid => {}
                Update::Invalid(e) => return Hit::Done(Decision::Drop(from_tcp(e), None)),
                // Only the connection's own pair may start it over.
                Update::Restart if stranger => {
                    return Hit::Done(Decision::Drop(DropReason::TcpNoConnection, None))
                }
                Update::Restart => {
                    self.table.expire_now(f.slot);
                    return Hit::Restart;
                }
            }
        }
        // Nor does a stranger's packet keep the connection alive or mark it replied.
        if !stranger {
            self.table.touch(f.slot, f.dir, now);
        }
        Hit::Done(Decision::Pass {
            conn: Some(f.slot),
            created: false,
            rules,
        })
    }

    /// Judges a tracked packet by the current rules, in its connection's opening direction:
    /// the opener's egress and the other end's ingress. For a reply, the opener is this
    /// packet's receiver. Err: the rule (if any) that refused it.
    fn judge_tracked(
        &self,
        p: &Packet,
        f: conntrack::Found,
        src: Side<'_>,
        dst: Option<Side<'_>>,
    ) -> Result<[Option<RuleRef>; 2], Option<RuleRef>> {
        let mut t = if f.dir == 0 {
            tuple(p)
        } else {
            reversed(&tuple(p))
        };
        if let Some(i) = p.icmp {
            // An echo connection is judged as its request, whichever way this packet goes.
            if is_echo(p.proto, i.ty) {
                t.icmp_type = if p.proto == ip_proto::ICMP { 8 } else { 128 };
            }
        }
        let (opener, other) = match (f.dir, dst) {
            (0, _) => (Some(src), dst),
            (_, Some(d)) => (Some(d), Some(src)),
            // A reply that leaves the host: the opener's policy is not ours to judge.
            (_, None) => (None, Some(src)),
        };
        let verdict = match opener {
            Some(o) => judge(&t, o, other),
            None => match other {
                Some(o) => {
                    // The opener is not on this host: it is in no group.
                    let i = o.policy.ingress.lookup(&t);
                    refuse(
                        i,
                        RuleRef::Ingress(o.vnic, i.rule.unwrap_or(RuleRef::DEFAULT)),
                    )
                    .map(|()| [None, i.rule.map(|i| RuleRef::Ingress(o.vnic, i))])
                }
                None => Ok([None, None]),
            },
        };
        verdict.map_err(|d| match d {
            Decision::Drop(_, r) | Decision::Reject(r) => r,
            Decision::Pass { .. } => None,
        })
    }

    /// An ICMP error passes only if the packet it quotes belongs to a tracked connection, the
    /// error goes back to that packet's sender (its address, and its vNIC where the receiver
    /// is known), and, for TCP, the quoted sequence number lies in the sender's window (pf's
    /// check), so that a third VM cannot forge "fragmentation needed" or "unreachable" errors
    /// for a connection by naming its addresses and ports alone. An error never changes the
    /// connection's state.
    fn related(&self, p: &Packet, zone: u16, dst: Option<Side<'_>>, now: u32) -> Decision {
        let Some(inner) = p.icmp.and_then(|i| i.inner) else {
            return Decision::Drop(DropReason::IcmpUnrelated, None);
        };
        if inner.src != p.dst {
            return Decision::Drop(DropReason::IcmpUnrelated, None);
        }
        // A quoted echo is keyed as the echo connection itself is.
        let (sport, dport) = if matches!(inner.proto, ip_proto::ICMP | ip_proto::ICMPV6) {
            if !is_echo(inner.proto, inner.icmp_ty) {
                return Decision::Drop(DropReason::IcmpUnrelated, None);
            }
            echo_ports(inner.icmp_id, is_echo_request(inner.proto, inner.icmp_ty))
        } else {
            (inner.sport, inner.dport)
        };
        let key = Key {
            zone,
            proto: inner.proto,
            src: inner.src,
            dst: inner.dst,
            sport,
            dport,
        };
        let Some(f) = self.table.lookup(&key, self.table.hash(&key)) else {
            return Decision::Drop(DropReason::IcmpUnrelated, None);
        };
        if self.table.expired(f.slot, now) {
            return Decision::Drop(DropReason::IcmpUnrelated, None);
        }
        // The quoted packet went in direction `f.dir`: its sender is the owner (0) or the
        // peer (1); the error must be delivered to that vNIC.
        let (owner, peer) = self.table.endpoints(f.slot);
        let sender = if f.dir == 0 { owner } else { peer };
        if dst.is_some_and(|d| d.vnic != sender) && owner != peer {
            return Decision::Drop(DropReason::IcmpUnrelated, None);
        }
        if inner.proto == ip_proto::TCP
            && !self.table.with_tcp(f.slot, |c| {
                (false, c.quoted_seq_in_window(f.dir, inner.tcp_seq()))
            })
        {
            return Decision::Drop(DropReason::IcmpQuoteOutOfWindow, None);
        }
        Decision::Pass {
            conn: Some(f.slot),
            created: false,
            rules: [None, None],
        }
    }
}

fn segment(p: &Packet) -> Segment {
    match p.tcp {
        Some(t) => Segment {
            seq: t.seq,
            ack: t.ack,
            flags: t.flags,
            win: t.window,
            len: t.data_len,
            wscale: t.wscale,
        },
        None => Segment::default(),
    }
}
