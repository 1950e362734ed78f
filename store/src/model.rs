//! The records the store keeps. Addresses stay in Docker's own notation (CIDR strings) so that
//! what is stored is exactly what dockerd sent and what `oncache` reports back.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An oncache network on this host: one VXLAN segment (VNI) with a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Docker's network ID.
    pub id: String,
    pub vni: u32,
    /// MTU of the bridge, the VXLAN device and every container interface.
    pub mtu: u32,
    /// IPv4 pools (CIDR), as Docker's IPAM gave them.
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
    /// Whether the eBPF fast path serves this network (`-o oncache.fastpath`).
    #[serde(default = "yes")]
    pub fastpath: bool,
    /// The user's `-o` options as given, kept for inspection.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// When the network was created (seconds since the Unix epoch; 0 if unknown): with no
    /// endpoint ever joined, an old network is likely one dockerd never kept (a ghost).
    #[serde(default)]
    pub created: u64,
    /// This host's conntrack zone for the network's bridged traffic (1–65535; 0: not yet
    /// given, as in records of an older oncache).
    #[serde(default)]
    pub zone: u16,
    /// Set when oncache itself hands out the network's addresses (CNI networks): the range it
    /// allocates from and the gateway address it puts on the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
}

/// Address management oncache does itself (CNI networks; Docker's IPAM serves Docker's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    /// The range this host allocates from (CIDR, inside the subnet).
    pub range: String,
    /// The gateway address with the subnet's prefix length (CIDR), on the bridge.
    pub gateway: String,
}

/// Who a CNI attachment belongs to: the runtime's container ID and interface name (what the
/// endpoint ID is derived from), and the network namespace it was put in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniOwner {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
}

/// A container's attachment to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Docker's endpoint ID.
    pub id: String,
    pub network_id: String,
    /// IPv4 address with prefix length (CIDR), if any.
    #[serde(default)]
    pub ipv4: Option<String>,
    #[serde(default)]
    pub ipv6: Option<String>,
    /// MAC of the container-side interface, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Set between Join and Leave: the sandbox (network namespace path) it joined.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// When it last joined (ms since the Unix epoch): published to the other hosts, where the
    /// later of two claims on an address wins.
    #[serde(default)]
    pub joined_at: u64,
    /// Set for an attachment made through the CNI front end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniOwner>,
}

fn yes() -> bool {
    true
}
