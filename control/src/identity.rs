//! Durable vNIC identities: each vNIC (by name) has a UUID and a port id that survive restarts.
//!
//! Anything persisted or handed to another process names a vNIC by its UUID; the port id is
//! the data plane's compact index (connection entries, MAC entries and counters use it). Both
//! are kept in `<run-dir>/vnics.json` (written atomically), so a restarted bulwarkd gives each
//! vNIC the id it had before: state that outlives the process (the connection table, in a
//! later issue) then still points at the right vNIC. A config port may name its UUID
//! (`uuid = "..."`); otherwise one is generated when the vNIC is first seen. A port removed
//! through the API forgets its identity; one stopped by a shutdown keeps it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One vNIC's durable identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The vNIC's UUID.
    pub uuid: Uuid,
    /// Its port id in the data plane.
    pub id: u16,
}

/// The identities of all vNICs this daemon has seen, by port name.
#[derive(Debug, Default)]
pub struct Identities {
    path: Option<PathBuf>,
    by_name: BTreeMap<String, Identity>,
}

/// Why an identity could not be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// Another live port has this UUID.
    UuidInUse(Uuid, String),
    /// Every port id is taken by a live port.
    NoFreeId,
}

impl Identities {
    /// The identities saved at `path` (none if the file does not exist). A file that cannot be
    /// read as identities is an error that names it: starting over would silently renumber
    /// the vNICs.
    pub fn load(path: Option<PathBuf>) -> Result<Self, String> {
        let by_name = match &path {
            None => BTreeMap::new(),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| format!("{}: not a vNIC identity file: {e}", p.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
            },
        };
        let ids = Identities { path, by_name };
        ids.check()?;
        Ok(ids)
    }

    fn check(&self) -> Result<(), String> {
        let mut uuids = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for (name, i) in &self.by_name {
            if usize::from(i.id) >= dataplane::MAX_PORTS {
                return Err(format!("vNIC {name:?}: port id {} is out of range", i.id));
            }
            if !uuids.insert(i.uuid) || !ids.insert(i.id) {
                return Err(format!(
                    "vNIC {name:?}: its UUID or port id is also another vNIC's"
                ));
            }
        }
        Ok(())
    }

    /// The identity of the vNIC `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<Identity> {
        self.by_name.get(name).copied()
    }

    /// Gives `name` its identity: the saved one (with `uuid` replacing its UUID when given),
    /// or a new one. `live` are the (name, identity) pairs of the ports running now; a saved
    /// id that a live port holds is not reused. A new id is the lowest one neither live nor
    /// saved for another vNIC (when all are saved, the lowest one not live).
    pub fn assign(
        &mut self,
        name: &str,
        uuid: Option<Uuid>,
        live: &[(&str, Identity)],
    ) -> Result<Identity, IdentityError> {
        let saved = self.get(name);
        let uuid = uuid.or(saved.map(|s| s.uuid)).unwrap_or_else(Uuid::new_v4);
        if let Some((other, _)) = live.iter().find(|(n, i)| i.uuid == uuid && *n != name) {
            return Err(IdentityError::UuidInUse(uuid, (*other).to_string()));
        }
        let live_id = |id: u16| live.iter().any(|(n, i)| i.id == id && *n != name);
        let id = match saved {
            Some(s) if !live_id(s.id) => s.id,
            _ => {
                let reserved = |id: u16| self.by_name.iter().any(|(n, i)| i.id == id && n != name);
                let all = 0..dataplane::MAX_PORTS as u16;
                all.clone()
                    .find(|&id| !live_id(id) && !reserved(id))
                    .or_else(|| all.clone().find(|&id| !live_id(id)))
                    .ok_or(IdentityError::NoFreeId)?
            }
        };
        // The id may have been saved for a vNIC that is not running: that one gives it up.
        self.by_name.retain(|n, i| n == name || i.id != id);
        let ident = Identity { uuid, id };
        self.by_name.insert(name.to_string(), ident);
        self.save();
        Ok(ident)
    }

    /// Forgets `name` (a port removed through the API).
    pub fn forget(&mut self, name: &str) {
        if self.by_name.remove(name).is_some() {
            self.save();
        }
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        if let Err(e) = write_atomically(path, &self.by_name) {
            log::error!("cannot save vNIC identities to {}: {e}", path.display());
        }
    }
}

/// Writes `value` as JSON to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "bulwark-ident-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn identities_survive_a_restart_and_ids_stay_put() {
        let d = dir();
        let path = d.join("vnics.json");
        let mut ids = Identities::load(Some(path.clone())).unwrap();
        let a = ids.assign("a", None, &[]).unwrap();
        let b = ids.assign("b", None, &[("a", a)]).unwrap();
        assert_eq!((a.id, b.id), (0, 1));
        assert_ne!(a.uuid, b.uuid);
        // A restart that brings b up first: b keeps id 1, a keeps id 0; a new vNIC does not
        // take an id saved for another.
        let mut again = Identities::load(Some(path.clone())).unwrap();
        assert_eq!(again.assign("b", None, &[]).unwrap(), b);
        let c = again.assign("c", None, &[("b", b)]).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(again.assign("a", None, &[("b", b), ("c", c)]).unwrap(), a);
        // A named UUID replaces the saved one; another live port's UUID is refused.
        let u = Uuid::new_v4();
        assert_eq!(again.assign("a", Some(u), &[]).unwrap().uuid, u);
        assert_eq!(
            again.assign("d", Some(b.uuid), &[("b", b)]),
            Err(IdentityError::UuidInUse(b.uuid, "b".into()))
        );
        // Forgotten (removed through the API): its id is free again.
        again.forget("c");
        let e = again.assign("e", None, &[("b", b)]).unwrap();
        assert_eq!(e.id, 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_identity_file_is_refused_by_name() {
        let d = dir();
        let path = d.join("vnics.json");
        std::fs::write(&path, "{ not json").unwrap();
        let e = Identities::load(Some(path.clone())).unwrap_err();
        assert!(e.contains("vnics.json"), "{e}");
        let u = Uuid::new_v4();
        std::fs::write(
            &path,
            serde_json::json!({ "a": { "uuid": u, "id": 1 }, "b": { "uuid": u, "id": 2 } })
                .to_string(),
        )
        .unwrap();
        let e = Identities::load(Some(path)).unwrap_err();
        assert!(e.contains("also another vNIC's"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
