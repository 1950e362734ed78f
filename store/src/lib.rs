//! Persistent oncache state on sled: networks, endpoints and peer hosts, with a schema version.
//!
//! One process owns the store (sled takes an exclusive lock on the folder). Values are JSON so
//! that an operator can read them with any tool and so that adding a field stays compatible.

mod model;

pub use model::{CniOwner, Endpoint, Ipam, Network};

use serde::{de::DeserializeOwned, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// Bumped whenever a stored value changes meaning; an older oncache refuses a newer store.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";
const BOOT_KEY: &[u8] = b"boot";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store: corrupt record {key}: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("state store: schema version {found} is newer than this oncache understands ({SCHEMA_VERSION}); upgrade oncache or move the state dir away")]
    NewerSchema { found: u32 },
}

pub type Result<T> = std::result::Result<T, Error>;

fn corrupt<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| Error::Corrupt { key: key.into(), source })
}

/// The handle to the state; cheap to clone (sled trees are reference counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    networks: sled::Tree,
    endpoints: sled::Tree,
    peers: sled::Tree,
    /// Swarm networks this host allocated as the leader: network ID → VNI.
    allocations: sled::Tree,
    /// Calls in flight (see [`Store::begin_call`]): sequence number → [`Call`].
    calls: sled::Tree,
}

/// A driver call received and not yet answered, kept so that a restarted daemon can serve
/// dockerd's retry of it: dockerd resends a call cut off by a crash without its body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Call {
    pub method: String,
    pub body: String,
    /// When it was received, ms since the epoch.
    pub at_ms: u64,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and checks its schema version.
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::Config::new().path(dir).open()?;
        let meta = db.open_tree("meta")?;
        match meta.get(SCHEMA_KEY)? {
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0xff; 4]));
                if found > SCHEMA_VERSION {
                    return Err(Error::NewerSchema { found });
                }
            }
        }
        Ok(Store {
            networks: db.open_tree("networks")?,
            endpoints: db.open_tree("endpoints")?,
            peers: db.open_tree("peers")?,
            allocations: db.open_tree("allocations")?,
            calls: db.open_tree("calls")?,
            db,
        })
    }

    pub fn schema_version(&self) -> Result<u32> {
        let meta = self.db.open_tree("meta")?;
        Ok(meta
            .get(SCHEMA_KEY)?
            .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes))
            .unwrap_or(0))
    }

    /// Makes every write so far durable; called after each change the daemon acknowledges.
    /// What identified the kernel and network namespace the daemon last started in.
    pub fn boot(&self) -> Result<Option<String>> {
        let meta = self.db.open_tree("meta")?;
        Ok(meta.get(BOOT_KEY)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_boot(&self, boot: &str) -> Result<()> {
        self.db.open_tree("meta")?.insert(BOOT_KEY, boot.as_bytes())?;
        self.flush()
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    // Calls in flight.

    /// Records a call before it runs (durable: it must outlive a crash during the call);
    /// returns its sequence number for [`Store::end_call`].
    pub fn begin_call(&self, call: &Call) -> Result<u64> {
        let id = self.db.generate_id()?;
        self.calls.insert(id.to_be_bytes(), serde_json::to_vec(call).expect("serializes"))?;
        self.flush()?;
        Ok(id)
    }

    /// The call was answered. Durable too: a completed call found again after a crash would
    /// be served to the retry of another.
    pub fn end_call(&self, id: u64) -> Result<Option<Call>> {
        let old = self.calls.remove(id.to_be_bytes())?;
        self.flush()?;
        old.map(|v| corrupt("call", &v)).transpose()
    }

    /// Calls recorded and not answered, oldest first.
    pub fn calls(&self) -> Result<Vec<(u64, Call)>> {
        self.calls
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
                Ok((id, corrupt("call", &v)?))
            })
            .collect()
    }

    // Networks, keyed by Docker's network ID.

    pub fn network(&self, id: &str) -> Result<Option<Network>> {
        get(&self.networks, id)
    }

    pub fn networks(&self) -> Result<Vec<Network>> {
        all(&self.networks)
    }

    pub fn put_network(&self, n: &Network) -> Result<()> {
        put(&self.networks, &n.id, n)?;
        self.flush()
    }

    /// Removes a network and every endpoint stored under it, atomically enough for a restart:
    /// endpoints go first, so a crash in between leaves a network without endpoints, never
    /// endpoints without a network.
    pub fn delete_network(&self, id: &str) -> Result<Option<Network>> {
        for ep in self.endpoints_of(id)? {
            self.endpoints.remove(ep.id.as_bytes())?;
        }
        let old = self.networks.remove(id.as_bytes())?;
        self.flush()?;
        old.map(|v| decode(id, &v)).transpose()
    }

    // Endpoints, keyed by Docker's endpoint ID.

    pub fn endpoint(&self, id: &str) -> Result<Option<Endpoint>> {
        get(&self.endpoints, id)
    }

    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        all(&self.endpoints)
    }

    /// Endpoints whose ID starts with `prefix` (a key-range scan, not a table dump).
    pub fn endpoints_with_prefix(&self, prefix: &str) -> Result<Vec<Endpoint>> {
        let mut out = Vec::new();
        for kv in self.endpoints.scan_prefix(prefix.as_bytes()) {
            let (k, v) = kv?;
            out.push(decode(&String::from_utf8_lossy(&k), &v)?);
        }
        Ok(out)
    }

    pub fn endpoints_of(&self, network_id: &str) -> Result<Vec<Endpoint>> {
        Ok(self.endpoints()?.into_iter().filter(|e| e.network_id == network_id).collect())
    }

    pub fn put_endpoint(&self, e: &Endpoint) -> Result<()> {
        put(&self.endpoints, &e.id, e)?;
        self.flush()
    }

    pub fn delete_endpoint(&self, id: &str) -> Result<Option<Endpoint>> {
        let old = self.endpoints.remove(id.as_bytes())?;
        self.flush()?;
        old.map(|v| decode(id, &v)).transpose()
    }

    // Swarm allocations (this host as the leader): network ID → VNI.

    pub fn allocations(&self) -> Result<Vec<(String, u32)>> {
        all::<(String, u32)>(&self.allocations)
    }

    pub fn put_allocation(&self, network_id: &str, vni: u32) -> Result<()> {
        put(&self.allocations, network_id, &(network_id, vni))?;
        self.flush()
    }

    pub fn delete_allocation(&self, network_id: &str) -> Result<()> {
        self.allocations.remove(network_id.as_bytes())?;
        self.flush()
    }

    // Peer hosts (VTEP addresses), a set.

    pub fn peers(&self) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for kv in self.peers.iter() {
            let (k, _) = kv?;
            let s = String::from_utf8_lossy(&k).into_owned();
            match s.parse() {
                Ok(ip) => out.push(ip),
                Err(_) => log::warn!("ignoring unparsable peer record {s:?}"),
            }
        }
        Ok(out)
    }

    /// Returns true when the peer was not there before (from any source).
    pub fn add_peer(&self, ip: IpAddr, source: PeerSource) -> Result<bool> {
        let key = ip.to_string();
        let had = self.peers.get(key.as_bytes())?;
        let mut sources = had.as_deref().map(sources_of).unwrap_or_default();
        if !sources.contains(&source) {
            sources.push(source);
            self.peers.insert(key.as_bytes(), serde_json::to_vec(&sources).expect("serializes"))?;
            self.flush()?;
        }
        Ok(had.is_none())
    }

    /// Withdraws `source`'s claim on a peer (`None`: every claim, as the operator's `peer rm`
    /// does). Returns true when the peer is gone now, having been there.
    pub fn remove_peer(&self, ip: IpAddr, source: Option<PeerSource>) -> Result<bool> {
        let key = ip.to_string();
        let Some(had) = self.peers.get(key.as_bytes())? else { return Ok(false) };
        let mut sources = sources_of(&had);
        sources.retain(|s| source.is_some_and(|only| *s != only));
        if sources.is_empty() {
            self.peers.remove(key.as_bytes())?;
        } else {
            self.peers.insert(key.as_bytes(), serde_json::to_vec(&sources).expect("serializes"))?;
        }
        self.flush()?;
        Ok(sources.is_empty())
    }
}

/// Who named a peer: an operator (`--peer`, `oncache peer add`) or Docker Swarm's discovery. A
/// Swarm event never removes an operator's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    Operator,
    Swarm,
}

/// A peer record's sources; records of an older oncache (empty) were the operator's.
fn sources_of(v: &[u8]) -> Vec<PeerSource> {
    serde_json::from_slice(v).unwrap_or_else(|_| vec![PeerSource::Operator])
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt { key: key.to_string(), source })
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>> {
    tree.get(key.as_bytes())?.map(|v| decode(key, &v)).transpose()
}

fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        out.push(decode(&String::from_utf8_lossy(&k), &v)?);
    }
    Ok(out)
}

fn put<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).expect("store records always serialize");
    tree.insert(key.as_bytes(), bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests;
