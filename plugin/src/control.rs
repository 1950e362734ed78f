//! oncache's own control API, served on the plugin socket beside Docker's protocol as
//! `POST /Oncache.<Method>`. The `oncache` CLI uses it, and so can a CNI entry point.

use oncache_store::{Endpoint, Network};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

pub const PEER_ADD: &str = "Oncache.PeerAdd";
pub const PEER_REMOVE: &str = "Oncache.PeerRemove";
pub const PEER_LIST: &str = "Oncache.PeerList";
pub const STATUS: &str = "Oncache.Status";
pub const STATS: &str = "Oncache.Stats";
pub const CACHE_LIST: &str = "Oncache.CacheList";
pub const CACHE_FLUSH: &str = "Oncache.CacheFlush";
pub const NETWORK_REMOVE: &str = "Oncache.NetworkRemove";

pub use crate::fastpath::maps::{CacheList, Stats};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Flushed {
    #[serde(rename = "Removed")]
    pub removed: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PeerRequest {
    #[serde(rename = "Address")]
    pub address: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PeerList {
    #[serde(rename = "Peers")]
    pub peers: Vec<IpAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub network: Network,
    pub bridge: String,
    pub vxlan: String,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub underlay: String,
    pub underlay_ip: String,
    pub underlay_mtu: u32,
    /// "on (<how programs attach>)", or "off: <why>".
    pub fastpath: String,
    /// The kind of link between a container and its bridge: `veth` (see `oncache doctor` for
    /// netkit, which oncache does not use yet).
    #[serde(default)]
    pub container_link: String,
    pub peers: Vec<IpAddr>,
    /// Peers the gossip hears from now.
    #[serde(default)]
    pub live_peers: Vec<IpAddr>,
    /// Other hosts' containers programmed here (forwarding, neighbour and fast-path entries).
    #[serde(default)]
    pub remote_endpoints: usize,
    pub networks: Vec<NetworkStatus>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NetworkRemove {
    #[serde(rename = "ID")]
    pub id: String,
    /// Also when containers are still joined (their links go with it).
    #[serde(rename = "Force", default)]
    pub force: bool,
}

/// A CNI call, forwarded by the `oncache` CNI plugin binary: `CNI_COMMAND` and the rest of its
/// environment, and the network configuration it read on stdin.
pub const CNI: &str = "Oncache.Cni";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniRequest {
    /// ADD, DEL, CHECK, STATUS or GC.
    pub command: String,
    #[serde(default)]
    pub container_id: String,
    /// `CNI_NETNS` as the runtime gave it (may be empty for DEL).
    #[serde(default)]
    pub netns: String,
    /// The plugin process holds `CNI_NETNS` open as this descriptor while it waits: the daemon
    /// opens it through /proc/<the caller's pid>/fd/, which works whatever mount namespace the
    /// runtime put the path in.
    #[serde(default)]
    pub netns_fd: Option<i32>,
    #[serde(default)]
    pub ifname: String,
    /// `CNI_ARGS`: `KEY=VALUE;...`.
    #[serde(default)]
    pub args: String,
    /// The network configuration (one plugin's entry of the conflist, with `name`,
    /// `cniVersion`, `runtimeConfig`, `prevResult`), as received.
    #[serde(default)]
    pub config: serde_json::Value,
    /// When a DEL was queued because the daemon did not answer (ms since the Unix epoch).
    #[serde(default)]
    pub queued_at: Option<u64>,
}

/// The daemon's answer to a CNI call: the result to print, or a CNI error.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniReply {
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<crate::cni::spec::Error>,
}
