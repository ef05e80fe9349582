//! A vNIC's tracked connections following its guest to another switch (live migration):
//! exported on the source (`export_conns`, or `hand_over`, which also repoints what stays),
//! imported on the destination (`import_conns`), with the owner and peer references mapped to
//! the destination's ports. The orchestrator (a libvirt hook, `docs/MIGRATION.md`) calls them
//! when the migration completes.

use std::collections::HashMap;
use std::net::IpAddr;

use conntrack::{Key, Record};

use super::Agent;
use crate::model::{
    ApiError, ConnExport, ConnRecord, HandedOver, Imported, VnicRef, CONN_EXPORT_FORMAT,
};

const REPLIED: u8 = 1;
const PICKUP: u8 = 2;

impl Agent {
    /// Port `name`'s connections, as the destination's import takes them. The table is not
    /// changed.
    pub fn export_conns(&self, name: &str) -> Result<ConnExport, ApiError> {
        let ports = self.lock();
        let rec = ports
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        let by_id: HashMap<u16, VnicRef> = ports
            .values()
            .map(|p| {
                (
                    p.id,
                    VnicRef {
                        name: p.cfg.name.clone(),
                        uuid: p.uuid.to_string(),
                    },
                )
            })
            .collect();
        let records = self.switch.connection_records(rec.id);
        let mut vnics: Vec<VnicRef> = Vec::new();
        let mut index: HashMap<u16, u32> = HashMap::new();
        let mut slot = |id: u16| -> Option<u32> {
            if let Some(i) = index.get(&id) {
                return Some(*i);
            }
            let v = by_id.get(&id)?.clone();
            let i = u32::try_from(vnics.len()).ok()?;
            vnics.push(v);
            index.insert(id, i);
            Some(i)
        };
        let mut connections = Vec::with_capacity(records.len());
        for r in &records {
            // An end that is no port any more cannot be named: such a connection is going.
            let (Some(owner), Some(peer)) = (slot(r.owner), slot(r.peer)) else {
                continue;
            };
            connections.push(ConnRecord(
                r.key.zone,
                r.key.proto,
                r.key.src,
                r.key.sport,
                r.key.dst,
                r.key.dport,
                owner,
                peer,
                r.class,
                (u8::from(r.replied) * REPLIED) | (u8::from(r.pickup) * PICKUP),
                r.tcp[0],
                r.tcp[1],
                r.tcp[2],
                r.idle_secs,
                r.age_secs,
                r.packets,
            ));
        }
        Ok(ConnExport {
            format: CONN_EXPORT_FORMAT,
            port: name.to_string(),
            uuid: rec.uuid.to_string(),
            host: crate::sys::host_name(),
            vnics,
            connections,
        })
    }

    /// The source's side of a migration: exports port `name`'s connections, then hands them
    /// over: those with a vNIC that stays on this switch go through `via` (the port that
    /// reaches the guest's new switch) from now on, the others are removed. The addresses the
    /// port had learned are unbound (they left with the guest, and now arrive through `via`);
    /// its static ones stay.
    pub fn hand_over(&self, name: &str, via: &str) -> Result<HandedOver, ApiError> {
        let export = self.export_conns(name)?;
        let mut ports = self.lock();
        let (Some(rec), Some(v)) = (ports.get(name), ports.get(via)) else {
            return Err(if ports.contains_key(name) {
                ApiError::bad("via", format!("no port named {via:?}"))
            } else {
                ApiError::not_found(format!("no port named {name:?}"))
            });
        };
        if v.id == rec.id {
            return Err(ApiError::bad(
                "via",
                "must be the port that reaches the guest's new switch, not its own port",
            ));
        }
        let ids: std::collections::HashSet<u16> = ports.values().map(|p| p.id).collect();
        let (kept, removed) = self
            .switch
            .hand_over_connections(rec.id, v.id, |id| ids.contains(&id));
        let released = self.unbind_learned(&mut ports, name);
        tracing::info!(
            "port {name}: {} connections exported; {kept} with vNICs that stay now go through \
             {via}, {removed} removed; learned addresses unbound: {}",
            export.connections.len(),
            if released.is_empty() {
                "none".to_string()
            } else {
                released.join(", ")
            }
        );
        Ok(HandedOver {
            export,
            kept,
            removed,
            released,
        })
    }

    /// The destination's side: takes the connections `export` carries into port `name`. The
    /// exported vNIC becomes `name`; a vNIC of this switch (same UUID) stays itself; any other
    /// end becomes the port `remote` (the uplink towards the switch it is on), which is then
    /// required. Each connection is charged to its owner's limit and judged by this switch's
    /// rules on its next packet. A connection this switch kept through `remote` (the guest
    /// was here before, and its peer stayed) is the imported vNIC's again.
    pub fn import_conns(
        &self,
        name: &str,
        export: &ConnExport,
        remote: Option<&str>,
    ) -> Result<Imported, ApiError> {
        let t = std::time::Instant::now();
        if export.format != CONN_EXPORT_FORMAT {
            return Err(ApiError::bad(
                "format",
                format!(
                    "format {} is not this switch's ({CONN_EXPORT_FORMAT})",
                    export.format
                ),
            ));
        }
        let ports = self.lock();
        let rec = ports
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no port named {name:?}")))?;
        let remote_id = match remote {
            Some(r) => Some(
                ports
                    .get(r)
                    .filter(|p| p.id != rec.id)
                    .map(|p| p.id)
                    .ok_or_else(|| {
                        ApiError::bad("remote", format!("{r:?} is not another port here"))
                    })?,
            ),
            None => None,
        };
        let by_uuid: HashMap<String, u16> =
            ports.values().map(|p| (p.uuid.to_string(), p.id)).collect();
        // Each listed vNIC: the imported one, one of ours, or remote.
        let mut unknown = Vec::new();
        let map: Vec<Option<u16>> = export
            .vnics
            .iter()
            .map(|v| {
                if v.uuid == export.uuid {
                    Some(rec.id)
                } else if let Some(id) = by_uuid.get(&v.uuid) {
                    Some(*id)
                } else {
                    unknown.push(v.name.as_str());
                    remote_id
                }
            })
            .collect();
        if remote_id.is_none() && !unknown.is_empty() {
            return Err(ApiError::bad(
                "remote",
                format!(
                    "the connections name vNICs that are not on this switch ({}): give the port \
                     that reaches them",
                    unknown.join(", ")
                ),
            ));
        }
        let zone = rec.cfg.segment_id();
        let mut records = Vec::with_capacity(export.connections.len());
        let mut remote_ends = 0;
        for (i, c) in export.connections.iter().enumerate() {
            let end = |ix: u32, what: &str| {
                map.get(ix as usize).copied().flatten().ok_or_else(|| {
                    ApiError::bad(
                        format!("connections[{i}]"),
                        format!("its {what} {ix} is not an index into vnics"),
                    )
                })
            };
            let (owner, peer) = (end(c.6, "owner")?, end(c.7, "peer")?);
            if matches!(
                (c.2, c.4),
                (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_))
            ) {
                return Err(ApiError::bad(
                    format!("connections[{i}]"),
                    "its addresses are of two families",
                ));
            }
            if c.8 > 5 || c.9 & !(REPLIED | PICKUP) != 0 {
                return Err(ApiError::bad(
                    format!("connections[{i}]"),
                    "its class (0-5) or flags (1 replied, 2 pickup) are out of range",
                ));
            }
            remote_ends += usize::from(Some(owner) == remote_id && owner != rec.id)
                + usize::from(Some(peer) == remote_id && peer != rec.id);
            records.push(Record {
                // The zone is the segment, which may be another number here.
                key: Key {
                    zone,
                    proto: c.1,
                    src: c.2,
                    sport: c.3,
                    dst: c.4,
                    dport: c.5,
                },
                owner,
                peer,
                class: c.8,
                replied: c.9 & REPLIED != 0,
                pickup: c.9 & PICKUP != 0,
                tcp: [c.10, c.11, c.12],
                idle_secs: c.13,
                age_secs: c.14,
                packets: c.15,
            });
        }
        let rejoin = remote_id.map(|r| (r, rec.id));
        drop(ports);
        let [imported, already, rejoined, refused] =
            self.switch.adopt_connections(&records, rejoin);
        let millis = t.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            "port {name}: {imported} connections imported from {} on {} ({rejoined} rejoined \
             from {}, {already} already here, {refused} refused) in {millis:.1} ms",
            export.port,
            export.host,
            remote.unwrap_or("-")
        );
        Ok(Imported {
            imported,
            already,
            rejoined,
            refused,
            remote_ends,
            millis,
        })
    }
}
