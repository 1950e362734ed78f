//! The slow-path data plane: carries out what the driver decided, in the kernel. Every
//! operation is idempotent ("ensure"/"remove"), so a repeated request or a restart that finds
//! half-done work converges instead of failing.

pub mod firewall;
pub mod netlink;
pub mod underlay;

use crate::naming::{self, Owned};
use anyhow::{anyhow, Result};
use netlink::{Netlink, VxlanSpec};
use rtnetlink::packet_route::link::InfoKind;
use std::collections::HashSet;
use std::net::IpAddr;
pub use underlay::Underlay;

/// The all-zeros MAC: the VXLAN flood entry that replicates broadcast and unknown-unicast
/// frames to every listed peer (head-end replication).
const FLOOD: [u8; 6] = [0; 6];

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

    /// Bridge + VXLAN device for a network, flooding to exactly `peers` (a peer the kernel
    /// refuses is logged and left out: it never stops a network from being served).
    pub async fn ensure_network(&self, n: NetSpec, peers: &[IpAddr]) -> Result<()> {
        let br = naming::bridge(n.vni);
        let bridge = match self.nl.link(&br).await? {
            Some(l) => l,
            None => {
                self.nl.add_bridge(&br, n.mtu).await?;
                self.nl.link(&br).await?.ok_or_else(|| anyhow!("bridge {br} vanished after creation"))?
            }
        };
        let vx = naming::vxlan(n.vni);
        let vxlan = match self.nl.link(&vx).await? {
            Some(l) => {
                if l.controller != Some(bridge.index) {
                    self.nl.set_controller(l.index, bridge.index).await?;
                }
                l
            }
            None => {
                let spec = VxlanSpec {
                    name: &vx,
                    vni: n.vni,
                    underlay_index: self.underlay.index,
                    local: self.underlay.ip,
                    mtu: n.mtu,
                    controller: bridge.index,
                };
                self.nl.add_vxlan(&spec).await?;
                self.nl.link(&vx).await?.ok_or_else(|| anyhow!("{vx} vanished after creation"))?
            }
        };
        for (p, e) in self.sync_flood(vxlan.index, peers).await? {
            log::warn!("{vx}: peer {p} refused by the kernel, left out: {e:#}");
        }
        Ok(())
    }

    /// Makes the flood list of one VXLAN device equal to `peers`; returns the peers the
    /// kernel refused, with why.
    async fn sync_flood(&self, vxlan: u32, peers: &[IpAddr]) -> Result<Vec<(IpAddr, anyhow::Error)>> {
        let present: HashSet<IpAddr> =
            self.nl.fdb(vxlan).await?.into_iter().filter(|e| e.mac == FLOOD).filter_map(|e| e.dst).collect();
        let mut refused = Vec::new();
        for p in peers.iter().filter(|p| !present.contains(p)) {
            if let Err(e) = self.nl.fdb_append(vxlan, FLOOD, *p).await {
                refused.push((*p, e));
            }
        }
        for stale in present.iter().filter(|p| !peers.contains(p)) {
            self.forget_peer_on(vxlan, *stale).await?;
        }
        Ok(refused)
    }

    /// Drops every entry (flood and learned) that sends to `peer` on one VXLAN device.
    async fn forget_peer_on(&self, vxlan: u32, peer: IpAddr) -> Result<()> {
        for e in self.nl.fdb(vxlan).await?.into_iter().filter(|e| e.dst == Some(peer)) {
            self.nl.fdb_del(vxlan, e.mac, peer).await?;
        }
        Ok(())
    }

    pub async fn remove_network(&self, vni: u32) -> Result<()> {
        for name in [naming::vxlan(vni), naming::bridge(vni)] {
            if let Some(l) = self.nl.link(&name).await? {
                self.nl.del_link(l.index).await?;
            }
        }
        Ok(())
    }

    /// Sets the peer list of every oncache VXLAN device; fails naming the first peer the
    /// kernel refused (the others are applied).
    pub async fn sync_peers(&self, vnis: &[u32], peers: &[IpAddr]) -> Result<()> {
        let mut first = None;
        for vni in vnis {
            if let Some(l) = self.nl.link(&naming::vxlan(*vni)).await? {
                for (p, e) in self.sync_flood(l.index, peers).await? {
                    first.get_or_insert(e.context(format!("adding peer {p} to {}", naming::vxlan(*vni))));
                }
            }
        }
        first.map_or(Ok(()), Err)
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
        self.nl.add_veth(&host, &peer, n.mtu, mac, bridge.index).await?;
        Ok(peer)
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

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.nl.link(name).await?.map(|l| l.index))
    }

    /// Deletes the VXLAN forwarding entries for `mac` in network `vni` whose VTEP `stale`
    /// selects (learned or static alike).
    pub async fn forget_mac(&self, vni: u32, mac: [u8; 6], stale: impl Fn(IpAddr) -> bool) -> Result<()> {
        let Some(vx) = self.nl.link(&naming::vxlan(vni)).await? else { return Ok(()) };
        for e in self.nl.fdb(vx.index).await? {
            if let (true, Some(dst)) = (e.mac == mac, e.dst) {
                if stale(dst) {
                    self.nl.fdb_del(vx.index, mac, dst).await?;
                }
            }
        }
        Ok(())
    }
}
