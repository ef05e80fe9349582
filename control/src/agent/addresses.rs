//! The agent's address bindings: each vNIC's static addresses (its config), those learned from
//! ARP, neighbour discovery and first use (claims the workers punt), and DHCP leases snooped
//! from trusted servers; duplicate detection across the vNICs of a segment (the first binding
//! keeps the address); the `dataplane::guard::Guard` published for each port; persistence of
//! learned bindings in `<run-dir>/addresses.json`, so a restart does not hand a vNIC's address
//! to the first guest that claims it.
//!
//! Claims are punted by the workers and drained by the `punt` thread into `Pending`; the same
//! thread settles them (`Agent::settle`) without holding any other lock, binds what may be
//! bound, and publishes once per batch.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use dataplane::guard::{Claim, DhcpReply, Guard, How, Mode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Agent, PortRecord};
use crate::config::{GuardMode, PortConfig, DEFAULT_MAX_ADDRESSES};
use crate::identity::write_atomically;
use crate::model::{AddressInfo, ApiError};

/// Where a binding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The port's config (`addresses`).
    Static,
    /// An ARP packet's sender address.
    Arp,
    /// A neighbour advertisement or duplicate-address probe.
    Nd,
    /// The source of an IP packet (learn mode's first use).
    Ip,
    /// A DHCP lease, snooped from a trusted server's ACK.
    Dhcp,
}

impl From<How> for Source {
    fn from(h: How) -> Source {
        match h {
            How::Arp => Source::Arp,
            How::Nd => Source::Nd,
            How::Ip => Source::Ip,
        }
    }
}

/// One bound (or, spoof guard off, discovered) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Binding {
    pub(crate) source: Source,
    /// Unix seconds.
    pub(crate) since: u64,
    /// Unix seconds; a DHCP lease's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires: Option<u64>,
}

/// Claims punted: (port, segment, claim).
type Claims = Vec<(u16, u16, Claim)>;
/// DHCP replies punted: (server port, segment, reply).
type Leases = Vec<(u16, u16, DhcpReply)>;

/// What the workers punted, waiting for the punt thread to settle it.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    claims: Claims,
    leases: Leases,
    /// When leases were last checked for their end (Unix seconds).
    checked: u64,
}

impl Pending {
    pub(crate) fn claim(&mut self, port: u16, zone: u16, c: Claim) {
        // A burst of frames from a new address punts it many times: keep one.
        if !self
            .claims
            .iter()
            .any(|&(p, _, x)| p == port && x.addr == c.addr)
        {
            self.claims.push((port, zone, c));
        }
    }

    pub(crate) fn lease(&mut self, port: u16, zone: u16, r: DhcpReply) {
        self.leases.push((port, zone, r));
    }

    fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.leases.is_empty()
    }

    /// What to settle now: the claims and leases, and whether leases are due a check (once
    /// a second).
    fn take(&mut self, now: u64) -> (Claims, Leases, bool) {
        let due = self.checked != now;
        self.checked = now;
        (
            std::mem::take(&mut self.claims),
            std::mem::take(&mut self.leases),
            due,
        )
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The guard a port's config and bindings make.
pub(super) fn guard(cfg: &PortConfig, b: &BTreeMap<IpAddr, Binding>) -> Arc<Guard> {
    let v4: Vec<Ipv4Addr> = b
        .keys()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Addr> = b
        .keys()
        .filter_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
        .collect();
    Arc::new(Guard {
        mode: match cfg.spoof_guard.unwrap_or_default() {
            GuardMode::Off => Mode::Off,
            GuardMode::Learn => Mode::Learn,
            GuardMode::Strict => Mode::Strict,
        },
        v4: v4.into(),
        v6: v6.into(),
        max: cfg.max_addresses.unwrap_or(DEFAULT_MAX_ADDRESSES) as usize,
        dhcp_server: cfg.dhcp_server,
    })
}

/// The vNIC of `ports` in segment `zone` other than `except` that has bound `addr`.
fn owner(
    ports: &BTreeMap<String, PortRecord>,
    zone: u16,
    addr: IpAddr,
    except: u16,
) -> Option<&PortRecord> {
    ports
        .values()
        .find(|p| p.id != except && p.cfg.segment_id() == zone && p.bindings.contains_key(&addr))
}

impl Agent {
    /// A new port's bindings: its static addresses (refused, naming the field, when another
    /// vNIC of the segment has bound one) and what an earlier run learned for it.
    pub(super) fn initial_bindings(
        &self,
        ports: &BTreeMap<String, PortRecord>,
        cfg: &PortConfig,
    ) -> Result<BTreeMap<IpAddr, Binding>, ApiError> {
        let zone = cfg.segment_id();
        let now = now_secs();
        let mut b = BTreeMap::new();
        for (i, a) in cfg.addresses("")?.into_iter().enumerate() {
            if let Some(o) = owner(ports, zone, a, u16::MAX) {
                return Err(ApiError::conflict(
                    format!("addresses[{i}]"),
                    format!(
                        "{a} is bound to port {:?} on segment {zone}; an address belongs to one vNIC",
                        o.cfg.name
                    ),
                ));
            }
            b.insert(
                a,
                Binding {
                    source: Source::Static,
                    since: now,
                    expires: None,
                },
            );
        }
        let max = cfg.max_addresses.unwrap_or(DEFAULT_MAX_ADDRESSES) as usize;
        let strict = cfg.spoof_guard == Some(GuardMode::Strict);
        if let Some(saved) = self.saved_addresses().remove(&cfg.name) {
            for (a, s) in saved {
                let live = s.expires.is_none_or(|e| e > now);
                // Strict mode binds only what it was given: static addresses and leases.
                let allowed = !strict || s.source == Source::Dhcp;
                if b.len() < max
                    && live
                    && allowed
                    && s.source != Source::Static
                    && owner(ports, zone, a, u16::MAX).is_none()
                {
                    b.entry(a).or_insert(s);
                }
            }
        }
        Ok(b)
    }

    pub(super) fn saved_addresses(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<IpAddr, Binding>>> {
        self.saved_addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn addresses_file(&self) -> Option<PathBuf> {
        self.state_file
            .as_deref()
            .and_then(std::path::Path::parent)
            .map(|d| d.join("addresses.json"))
    }

    /// Reads the bindings an earlier run learned (before any port is added).
    pub fn restore_addresses(&self) -> Result<usize, String> {
        let Some(path) = self.addresses_file() else {
            return Ok(0);
        };
        let saved: BTreeMap<String, BTreeMap<IpAddr, Binding>> =
            match std::fs::read_to_string(&path) {
                Ok(t) => serde_json::from_str(&t).map_err(|e| {
                    format!(
                        "{}: {e} (move it away to start without learned addresses)",
                        path.display()
                    )
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
        let n = saved.values().map(BTreeMap::len).sum();
        *self.saved_addresses() = saved;
        Ok(n)
    }

    /// Writes every port's learned bindings (static ones come from the config).
    pub(super) fn save_addresses(&self, ports: &BTreeMap<String, PortRecord>) {
        let Some(path) = self.addresses_file() else {
            return;
        };
        let mut all: BTreeMap<String, BTreeMap<IpAddr, Binding>> = self.saved_addresses().clone();
        for (name, p) in ports {
            let learned: BTreeMap<IpAddr, Binding> = p
                .bindings
                .iter()
                .filter(|(_, b)| b.source != Source::Static)
                .map(|(a, b)| (*a, *b))
                .collect();
            if learned.is_empty() {
                all.remove(name);
            } else {
                all.insert(name.clone(), learned);
            }
        }
        if let Err(e) = write_atomically(&path, &all) {
            tracing::error!("cannot save learned addresses to {}: {e}", path.display());
        }
    }

    /// Binds (or records) what the workers punted since the last call, and lets DHCP leases
    /// that ran out go; publishes once if any guard changed. Called by the punt thread.
    pub fn settle(&self) {
        let now = now_secs();
        let (claims, leases, due) = {
            let mut p = self.pending();
            if p.is_empty() && p.checked == now {
                return;
            }
            p.take(now)
        };
        let mut ports = self.lock();
        let mut changed: Vec<String> = Vec::new();
        for (id, zone, c) in claims {
            let Some(name) = ports
                .iter()
                .find(|(_, p)| p.id == id && p.cfg.segment_id() == zone)
                .map(|(n, _)| n.clone())
            else {
                continue;
            };
            if self.bind(&mut ports, &name, c.addr, c.how.into(), None, now) {
                changed.push(name);
            }
        }
        for (id, zone, r) in leases {
            // An ACK with an address: bound to the vNIC whose MAC is the client's.
            if r.msg_type != 5 || r.yiaddr.is_unspecified() {
                continue;
            }
            let server = ports
                .values()
                .find(|p| p.id == id)
                .map(|p| p.cfg.name.clone());
            let client = ports
                .iter()
                .find(|(_, p)| {
                    p.cfg.segment_id() == zone
                        && p.cfg.bound_mac("").ok().flatten() == Some(r.client)
                })
                .map(|(n, _)| n.clone());
            let Some(client) = client else {
                tracing::debug!(
                    "DHCP lease {} for {} from {server:?}: no vNIC with that MAC on segment {zone}",
                    r.yiaddr,
                    r.client
                );
                continue;
            };
            let expires = match r.lease_secs {
                u32::MAX => None,
                s => Some(now + u64::from(s)),
            };
            if self.bind(
                &mut ports,
                &client,
                IpAddr::V4(r.yiaddr),
                Source::Dhcp,
                expires,
                now,
            ) {
                changed.push(client);
            }
        }
        for (name, p) in ports.iter_mut().filter(|_| due) {
            let before = p.bindings.len();
            p.bindings
                .retain(|_, b| b.source != Source::Dhcp || b.expires.is_none_or(|e| e > now));
            if p.bindings.len() != before {
                tracing::info!(
                    "port {name}: {} DHCP lease(s) ended",
                    before - p.bindings.len()
                );
                changed.push(name.clone());
            }
        }
        if changed.is_empty() {
            return;
        }
        for name in &changed {
            if let Some(p) = ports.get_mut(name) {
                p.guard = guard(&p.cfg, &p.bindings);
            }
        }
        self.publish(&ports);
        self.save_addresses(&ports);
    }

    /// Binds `addr` to port `name` unless another vNIC of its segment has (counted as a
    /// conflict) or the port is at its limit; true if the bindings changed.
    fn bind(
        &self,
        ports: &mut BTreeMap<String, PortRecord>,
        name: &str,
        addr: IpAddr,
        source: Source,
        expires: Option<u64>,
        now: u64,
    ) -> bool {
        let (id, zone) = match ports.get(name) {
            Some(p) => (p.id, p.cfg.segment_id()),
            None => return false,
        };
        if let Some(o) = owner(ports, zone, addr, id) {
            let other = o.cfg.name.clone();
            tracing::warn!(
                "port {name}: {addr} ({source:?}) is already bound to port {other}: not bound (duplicate address)"
            );
            if let Some(p) = ports.get_mut(name) {
                p.conflicts += 1;
            }
            return false;
        }
        let Some(p) = ports.get_mut(name) else {
            return false;
        };
        let max = p.cfg.max_addresses.unwrap_or(DEFAULT_MAX_ADDRESSES) as usize;
        if let Some(b) = p.bindings.get_mut(&addr) {
            // A lease renewed, or a learned address confirmed by DHCP.
            if source == Source::Dhcp && b.source != Source::Static {
                let renewed = b.expires != expires || b.source != Source::Dhcp;
                b.source = Source::Dhcp;
                b.expires = expires;
                return renewed;
            }
            return false;
        }
        if p.bindings.len() >= max {
            tracing::warn!("port {name}: {addr} not bound: at its limit of {max} addresses");
            return false;
        }
        tracing::info!("port {name}: {addr} bound ({source:?})");
        p.bindings.insert(
            addr,
            Binding {
                source,
                since: now,
                expires,
            },
        );
        true
    }

    /// Unbinds a learned address (a static one is the config's: change the port instead).
    pub fn forget_address(&self, name: &str, addr: &str) -> Result<Vec<AddressInfo>, ApiError> {
        let a: IpAddr = addr
            .parse()
            .map_err(|_| ApiError::bad("address", format!("{addr:?} is not an IP address")))?;
        let mut ports = self.lock();
        let p = ports
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        match p.bindings.get(&a) {
            None => {
                return Err(ApiError::not_found(format!(
                    "port {name:?} has no address {a}"
                )))
            }
            Some(b) if b.source == Source::Static => {
                return Err(ApiError::conflict(
                    "address",
                    format!("{a} is one of port {name:?}'s static addresses (its config)"),
                ))
            }
            Some(_) => {}
        }
        p.bindings.remove(&a);
        p.guard = guard(&p.cfg, &p.bindings);
        let out = address_infos(&p.bindings);
        tracing::info!("port {name}: {a} unbound");
        self.publish(&ports);
        self.save_addresses(&ports);
        Ok(out)
    }

    /// Unbinds every address port `name` learned (its static ones stay), publishing the
    /// guard and saving the bindings when any went; returns them.
    pub(super) fn unbind_learned(
        &self,
        ports: &mut BTreeMap<String, PortRecord>,
        name: &str,
    ) -> Vec<String> {
        let Some(p) = ports.get_mut(name) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        p.bindings.retain(|a, b| {
            let keep = b.source == Source::Static;
            if !keep {
                gone.push(a.to_string());
            }
            keep
        });
        if !gone.is_empty() {
            p.guard = guard(&p.cfg, &p.bindings);
            self.publish(ports);
            self.save_addresses(ports);
        }
        gone
    }
}

/// A port's bindings as the API shows them.
pub(super) fn address_infos(b: &BTreeMap<IpAddr, Binding>) -> Vec<AddressInfo> {
    b.iter()
        .map(|(a, b)| AddressInfo {
            address: a.to_string(),
            source: b.source,
            since: b.since,
            expires: b.expires,
        })
        .collect()
}
