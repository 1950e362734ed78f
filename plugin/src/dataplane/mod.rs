//! The slow-path data plane: carries out what the driver decided, in the kernel. Every
//! operation is idempotent ("ensure"/"remove"), so a repeated request or a restart that finds
//! half-done work converges instead of failing. Remote containers are static entries written
//! from the control plane (`crate::cluster`): VXLAN devices learn nothing and flood nothing.

pub mod firewall;
pub mod netlink;
pub mod nftables;
pub mod tc;
pub mod underlay;

use crate::naming::{self, Owned};
use anyhow::{anyhow, Context, Result};
use netlink::{Netlink, VxlanSpec};
use rtnetlink::packet_route::link::InfoKind;
use crate::cluster::Remote;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
pub use underlay::Underlay;

/// The kind of link between a container and its network's bridge. netkit (6.8+) would spare
/// the fast path veth's per-packet backlog hop on send, but the kernels oncache is built and
/// tested on lack it (CONFIG_NETKIT unset), so nothing here uses it yet.
pub const CONTAINER_LINK: &str = "veth";

/// The container side of a CNI attachment, as [`Dataplane::plug_container`] makes it.
pub struct ContainerSide<'a> {
    /// The container's network namespace (an open nsfs file) and its path, for messages.
    pub netns: &'a std::fs::File,
    pub netns_path: &'a str,
    pub ifname: &'a str,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// A network as the data plane sees it.
#[derive(Debug, Clone, Copy)]
pub struct NetSpec {
    pub vni: u32,
    pub mtu: u32,
}

/// Every interface of this network namespace, by name.
pub async fn interface_names() -> Result<Vec<String>> {
    Ok(Netlink::connect()?.links().await?.into_iter().map(|l| l.name).collect())
}

/// Removes every oncache link and the firewall chain of this network namespace.
pub async fn uninstall() -> Result<()> {
    let nl = Netlink::connect()?;
    let removed = remove_orphans(&nl, &[], &[]).await?;
    firewall::remove();
    println!("removed {} links{}", removed.len(), if removed.is_empty() { String::new() } else { format!(": {}", removed.join(" ")) });
    Ok(())
}

/// Removes oncache links the store does not own: bridges/VXLAN devices of VNIs not in
/// `vnis`, veths of endpoints whose tag is not in `endpoint_tags`. Returns what it removed.
async fn remove_orphans(nl: &Netlink, vnis: &[u32], endpoint_tags: &[&str]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for l in nl.links().await? {
        let orphan = match naming::owned(&l.name) {
            Some(Owned::Bridge(v)) => l.kind == Some(InfoKind::Bridge) && !vnis.contains(&v),
            Some(Owned::Vxlan(v)) => l.kind == Some(InfoKind::Vxlan) && !vnis.contains(&v),
            Some(Owned::Veth(tag)) => l.kind == Some(InfoKind::Veth) && !endpoint_tags.contains(&tag),
            None => false,
        };
        if orphan {
            nl.del_link(l.index).await?;
            removed.push(l.name);
        }
    }
    Ok(removed)
}

#[derive(Clone)]
pub struct Dataplane {
    nl: Netlink,
    pub underlay: Underlay,
}

impl Dataplane {
    pub async fn new(underlay: Option<&str>) -> Result<Dataplane> {
        let nl = Netlink::connect()?;
        let name = match underlay {
            Some(n) => n.to_string(),
            None => underlay::default_route_interface()?,
        };
        let underlay = underlay::resolve(&nl, &name).await?;
        firewall::ensure();
        Ok(Dataplane { nl, underlay })
    }

    /// Bridge + VXLAN device for a network. A VXLAN device an older oncache configured
    /// otherwise (learning, flooding) is replaced.
    pub async fn ensure_network(&self, n: NetSpec) -> Result<()> {
        let br = naming::bridge(n.vni);
        let bridge = match self.nl.link(&br).await? {
            Some(l) => l,
            None => {
                self.nl.add_bridge(&br, n.mtu, naming::random_mac()).await?;
                self.nl.link(&br).await?.ok_or_else(|| anyhow!("bridge {br} vanished after creation"))?
            }
        };
        let vx = naming::vxlan(n.vni);
        match self.nl.link(&vx).await? {
            Some(l) if l.vxlan_current => {
                if l.controller != Some(bridge.index) {
                    self.nl.set_controller(l.index, bridge.index).await?;
                }
            }
            old => {
                if let Some(l) = old {
                    log::info!("{vx}: replacing a VXLAN device configured by an older oncache (learning, flooding)");
                    self.nl.del_link(l.index).await?;
                }
                let spec = VxlanSpec {
                    name: &vx,
                    vni: n.vni,
                    underlay_index: self.underlay.index,
                    local: self.underlay.ip,
                    mtu: n.mtu,
                    controller: bridge.index,
                };
                self.nl.add_vxlan(&spec).await?;
            }
        }
        Ok(())
    }

    /// Tells the kernel where a remote container lives: the VXLAN device's forwarding entry (and
    /// the bridge's), and the neighbour entry its ARP/ND proxy answers with.
    pub async fn set_remote(&self, vni: u32, ip: IpAddr, r: Remote) -> Result<()> {
        let Some(vx) = self.nl.link(&naming::vxlan(vni)).await? else {
            return Ok(()); // the network is not (or no longer) here
        };
        self.nl.fdb_set(vx.index, r.mac, r.vtep).await?;
        self.nl.neigh_set(vx.index, ip, r.mac).await
    }

    /// Undoes [`set_remote`](Self::set_remote). The forwarding entries stay when another
    /// remote address still uses the MAC (`mac_in_use`).
    pub async fn unset_remote(&self, vni: u32, ip: IpAddr, r: Remote, mac_in_use: bool) -> Result<()> {
        let Some(vx) = self.nl.link(&naming::vxlan(vni)).await? else { return Ok(()) };
        self.nl.neigh_del(vx.index, ip).await?;
        if !mac_in_use {
            self.nl.fdb_unset(vx.index, r.mac, r.vtep).await?;
        }
        Ok(())
    }

    /// The remote endpoints the kernel knows, from the neighbour and forwarding entries of
    /// the networks' VXLAN devices: what a restarted daemon adopts.
    pub async fn remotes_in_kernel(&self, vnis: &[u32]) -> Result<BTreeMap<(u32, IpAddr), Remote>> {
        let mut out = BTreeMap::new();
        for vni in vnis {
            let Some(vx) = self.nl.link(&naming::vxlan(*vni)).await? else { continue };
            let fdb: Vec<_> = self.nl.fdb(vx.index).await?;
            for (ip, mac) in self.nl.neighbours(vx.index).await? {
                // The VXLAN device's own entry (with a destination), not the bridge's.
                if let Some(vtep) = fdb.iter().find_map(|e| if e.mac == mac { e.dst } else { None }) {
                    out.insert((*vni, ip), Remote { mac, vtep });
                }
            }
        }
        Ok(out)
    }

    pub async fn remove_network(&self, vni: u32) -> Result<()> {
        for name in [naming::vxlan(vni), naming::bridge(vni)] {
            if let Some(l) = self.nl.link(&name).await? {
                self.nl.del_link(l.index).await?;
            }
        }
        Ok(())
    }

    /// Gives a network's bridge the settings [`Netlink::add_bridge`] makes a new one with; one an
    /// older oncache made gets them at start, keeping the address it has now:
    /// - Its present address as its own. A bridge whose address was never set takes the lowest
    ///   of its ports' and changes as ports come and go: when the container whose veth lent it
    ///   leaves, the gateway address on the bridge answers from a new MAC and every other
    ///   container's neighbour entry for it points nowhere (no gratuitous ARP by default) until
    ///   it expires; and each new port walks every port to recompute it.
    /// - Multicast snooping off. With it on, each port that comes up re-arms every port's
    ///   multicast query timers (`br_port_state_selection`), so attaching a container costs
    ///   time in proportion to the containers already there. Off, the bridge floods multicast
    ///   to every port, as it does anyway for groups no port has joined with IGMP/MLD.
    /// - Its entries for remote containers externally learned, not static (see
    ///   `netlink::bridge_fdb_message`).
    pub async fn settle_bridge(&self, vni: u32) -> Result<()> {
        let br = naming::bridge(vni);
        if let Some(netlink::Link { index, mac: Some(mac), .. }) = self.nl.link(&br).await? {
            self.nl.settle_bridge(&br, index, mac).await?;
        }
        let Some(vx) = self.nl.link(&naming::vxlan(vni)).await? else { return Ok(()) };
        for e in self.nl.fdb(vx.index).await?.into_iter().filter(|e| e.static_in_bridge) {
            self.nl.remake_bridge_entry(vx.index, e.mac).await?;
        }
        Ok(())
    }

    /// Creates the endpoint's veth pair on the network's bridge; returns the container-end name
    /// for dockerd to move. A pair left from an earlier attempt is replaced.
    pub async fn ensure_veth(&self, endpoint_id: &str, n: NetSpec, mac: [u8; 6]) -> Result<String> {
        let (host, peer) = (naming::veth_host(endpoint_id), naming::veth_peer(endpoint_id));
        let bridge = self
            .nl
            .link(&naming::bridge(n.vni))
            .await?
            .ok_or_else(|| anyhow!("bridge of VNI {} is missing", n.vni))?;
        for name in [&host, &peer] {
            if let Some(l) = self.nl.link(name).await? {
                self.nl.del_link(l.index).await?;
            }
        }
        let index = self.nl.add_veth(&host, &peer, n.mtu, mac, bridge.index).await?;
        // A bridge port needs no IPv6 of its own. With it, each port adds a link-local address
        // and routes (fe80::/64, ff00::/8) to the host's table, whose IPv6 lookups walk one
        // route per port (`__find_rr_leaf`), so Join slowed a little as endpoints accumulated
        // (bench control: last hundred of 1,000 at 38 ms, not 35). Set before the port is up.
        let sysctl = format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6");
        if let Err(e) = std::fs::write(&sysctl, "1") {
            // No IPv6 in this kernel: nothing to disable.
            if std::path::Path::new("/proc/sys/net/ipv6").exists() {
                log::warn!("{sysctl}: {e}");
            }
        }
        self.nl.set_up(index).await?;
        Ok(peer)
    }

    /// A CNI attachment's links: the endpoint's veth pair on the network's bridge (a pair left
    /// from an earlier attempt is replaced), the container end moved into `netns`, named
    /// `c.ifname`, up, with its address and (given a gateway) the default route. Returns the
    /// host end's name and MAC.
    pub async fn plug_container(&self, endpoint_id: &str, n: NetSpec, c: &ContainerSide<'_>) -> Result<(String, [u8; 6])> {
        let peer = self.ensure_veth(endpoint_id, n, c.mac).await?;
        let host = naming::veth_host(endpoint_id);
        let made = async {
            let p = self.nl.link(&peer).await?.ok_or_else(|| anyhow!("veth end {peer} vanished after creation"))?;
            let h = self.nl.link(&host).await?.ok_or_else(|| anyhow!("veth end {host} vanished after creation"))?;
            let inside = Netlink::connect_in(c.netns)?;
            if inside.link(c.ifname).await?.is_some() {
                anyhow::bail!("the network namespace {} already has an interface {}", c.netns_path, c.ifname);
            }
            self.nl.move_to_netns(p.index, c.netns).await?;
            let p = inside.link(&peer).await?.ok_or_else(|| anyhow!("{peer} did not arrive in {}", c.netns_path))?;
            inside.rename_up(p.index, c.ifname).await?;
            inside.add_address(p.index, IpAddr::V4(c.ip), c.prefix).await?;
            if let Some(gw) = c.gateway {
                inside.set_default_route(gw, p.index).await?;
            }
            anyhow::Ok(h.mac.unwrap_or_default())
        };
        match made.await {
            Ok(mac) => Ok((host, mac)),
            Err(e) => {
                let _ = self.remove_veth(endpoint_id).await;
                Err(e)
            }
        }
    }

    /// Whether a CNI attachment's container interface is in place: `ifname` in `netns`, up,
    /// with the address.
    pub async fn check_container(&self, netns: &std::fs::File, ifname: &str, ip: Ipv4Addr) -> Result<()> {
        let inside = Netlink::connect_in(netns)?;
        let l = inside.link(ifname).await?.ok_or_else(|| anyhow!("no interface {ifname} in the container's network namespace"))?;
        if !inside.ipv4_addrs(l.index).await?.contains(&ip) {
            anyhow::bail!("interface {ifname} in the container's network namespace lacks its address {ip}");
        }
        Ok(())
    }

    /// Puts the gateway address on a network's bridge (idempotent).
    pub async fn ensure_gateway(&self, vni: u32, gateway: Ipv4Addr, prefix: u8) -> Result<()> {
        let br = naming::bridge(vni);
        let l = self.nl.link(&br).await?.ok_or_else(|| anyhow!("bridge {br} is missing"))?;
        if !self.nl.ipv4_addrs(l.index).await?.contains(&gateway) {
            self.nl.add_address(l.index, IpAddr::V4(gateway), prefix).await.with_context(|| format!("on bridge {br}"))?;
        }
        Ok(())
    }

    /// The MAC of a link, if it exists.
    pub async fn link_mac(&self, name: &str) -> Result<Option<[u8; 6]>> {
        Ok(self.nl.link(name).await?.and_then(|l| l.mac))
    }

    /// Deletes the endpoint's veth pair (both ends go with either).
    pub async fn remove_veth(&self, endpoint_id: &str) -> Result<()> {
        for name in [naming::veth_host(endpoint_id), naming::veth_peer(endpoint_id)] {
            if let Some(l) = self.nl.link(&name).await? {
                self.nl.del_link(l.index).await?;
            }
        }
        Ok(())
    }

    /// See [`remove_orphans`].
    pub async fn remove_orphans(&self, vnis: &[u32], endpoint_tags: &[&str]) -> Result<Vec<String>> {
        remove_orphans(&self.nl, vnis, endpoint_tags).await
    }

    /// Re-attaches a surviving host-side veth to its bridge (after the bridge was recreated).
    pub async fn reattach_veth(&self, endpoint_id: &str, vni: u32) -> Result<bool> {
        let (Some(veth), Some(bridge)) = (
            self.nl.link(&naming::veth_host(endpoint_id)).await?,
            self.nl.link(&naming::bridge(vni)).await?,
        ) else {
            return Ok(false);
        };
        if veth.controller != Some(bridge.index) {
            self.nl.set_controller(veth.index, bridge.index).await?;
        }
        Ok(true)
    }

    /// A network's conntrack zone in the host firewall (see [`firewall`]).
    pub fn add_zone(&self, vni: u32, zone: u16) -> Result<()> {
        firewall::add_zone(vni, zone)
    }

    pub fn remove_zone(&self, vni: u32, zone: u16) {
        firewall::remove_zone(vni, zone)
    }

    /// Outside access and port mappings for a network with a gateway (see [`firewall::add_gateway`]).
    pub fn add_gateway_rules(&self, vni: u32, subnet: &str) -> Result<()> {
        firewall::add_gateway(vni, subnet)
    }

    pub fn remove_gateway_rules(&self, vni: u32, subnet: &str) {
        firewall::remove_gateway(vni, subnet)
    }

    /// Exactly these networks' zones (at start).
    pub fn set_zones(&self, zones: &[(u32, u16)]) -> Result<()> {
        firewall::set_zones(zones)
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.nl.link(name).await?.map(|l| l.index))
    }

    /// The netlink connection, for the fast path's tc requests.
    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// The index of every interface in the namespace.
    pub async fn link_indexes(&self) -> Result<Vec<u32>> {
        Ok(self.nl.links().await?.into_iter().map(|l| l.index).collect())
    }

    /// The name of every interface in the namespace (one dump, however many there are).
    pub async fn link_names(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self.nl.links().await?.into_iter().map(|l| l.name).collect())
    }
}

/// What tells this boot of this host from another: the kernel's boot ID and the network
/// namespace's inode. A change means that every link, neighbour and route is new.
pub fn boot_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let netns = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
    format!("{} {netns}", boot.trim())
}
