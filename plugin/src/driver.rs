//! Driver logic: decides what each Docker (or oncache control) request means for the store and
//! the data plane, in that order, so that what is acknowledged is always persisted. Every
//! operation is idempotent: dockerd repeats calls after restarts and expects success for
//! things that are already done or already gone.

use crate::cidr::Cidr;
use crate::control::{NetworkStatus, Status};
use crate::dataplane::{Dataplane, NetSpec};
use crate::{naming, options};
use anyhow::{anyhow, bail, Context, Result};
use libnetwork_api::driver as api;
use oncache_store::{Endpoint, Network, Store};
use std::net::IpAddr;

pub struct Driver {
    store: Store,
    dp: Dataplane,
}

fn spec(n: &Network) -> NetSpec {
    NetSpec { vni: n.vni, mtu: n.mtu }
}

fn pools(data: &[api::IpamData]) -> Result<Vec<String>> {
    data.iter()
        .filter(|d| !d.pool.is_empty())
        .map(|d| Cidr::parse(&d.pool).map(|c| c.to_string()).map_err(|e| anyhow!("IPAM pool: {e}")))
        .collect()
}

impl Driver {
    pub fn new(store: Store, dp: Dataplane) -> Driver {
        Driver { store, dp }
    }

    fn network(&self, id: &str) -> Result<Network> {
        self.store.network(id)?.ok_or_else(|| anyhow!("network {id} is not an oncache network on this host"))
    }

    fn vnis(&self) -> Result<Vec<u32>> {
        Ok(self.store.networks()?.iter().map(|n| n.vni).collect())
    }

    pub fn capabilities(&self) -> api::CapabilitiesResponse {
        // Local scope: each dockerd owns its network records. Multi-host comes from the same
        // VNI and subnet on every host (and, under Swarm, from the managed plugin).
        api::CapabilitiesResponse {
            scope: api::SCOPE_LOCAL.into(),
            connectivity_scope: api::SCOPE_GLOBAL.into(),
        }
    }

    pub async fn create_network(&self, req: &api::CreateNetworkRequest) -> Result<()> {
        naming::check_id("network", &req.network_id).map_err(|e| anyhow!(e))?;
        let given = req.generic_options().map_err(|e| anyhow!(e))?;
        let opts = options::parse(&given).map_err(|e| anyhow!(e))?;
        let ipv4_pools = pools(&req.ipv4_data)?;
        let ipv6_pools = pools(&req.ipv6_data)?;

        if let Some(n) = self.store.network(&req.network_id)? {
            // dockerd retries CreateNetwork after a failed attempt; converge, don't fail.
            self.dp.ensure_network(spec(&n), &self.store.peers()?).await?;
            return Ok(());
        }
        let others = self.store.networks()?;
        if let Some(v) = opts.vni {
            if let Some(o) = others.iter().find(|o| o.vni == v) {
                bail!("VNI {v} is already used by network {}", o.id);
            }
        }
        for p in ipv4_pools.iter().chain(&ipv6_pools) {
            let c = Cidr::parse(p).map_err(|e| anyhow!(e))?;
            for o in &others {
                if let Some(q) = o.ipv4_pools.iter().chain(&o.ipv6_pools).find(|q| {
                    Cidr::parse(q).map(|q| q.overlaps(&c)).unwrap_or(false)
                }) {
                    bail!("subnet {p} overlaps subnet {q} of oncache network {}", o.id);
                }
            }
        }
        let used: Vec<u32> = others.iter().map(|o| o.vni).collect();
        let vni = match opts.vni {
            Some(v) => v,
            None => options::allocate_vni(&used).ok_or_else(|| anyhow!("no free VNI left"))?,
        };
        let mtu = options::mtu(opts.mtu, self.dp.underlay.mtu).map_err(|e| anyhow!(e))?;
        let n = Network { id: req.network_id.clone(), vni, mtu, ipv4_pools, ipv6_pools, options: given };
        self.store.put_network(&n)?;
        if let Err(e) = self.dp.ensure_network(spec(&n), &self.store.peers()?).await {
            // Leave neither a record nor half-made links behind a failed create.
            let _ = self.dp.remove_network(vni).await;
            self.store.delete_network(&n.id)?;
            return Err(e);
        }
        log::info!("network {} created: VNI {vni}, MTU {mtu}", n.id);
        Ok(())
    }

    pub async fn delete_network(&self, id: &str) -> Result<()> {
        let Some(n) = self.store.network(id)? else {
            return Ok(());
        };
        for ep in self.store.endpoints_of(id)? {
            self.dp.remove_veth(&ep.id).await?;
        }
        self.dp.remove_network(n.vni).await?;
        self.store.delete_network(id)?;
        log::info!("network {id} deleted (VNI {})", n.vni);
        Ok(())
    }

    pub async fn create_endpoint(&self, req: &api::CreateEndpointRequest) -> Result<api::CreateEndpointResponse> {
        naming::check_id("endpoint", &req.endpoint_id).map_err(|e| anyhow!(e))?;
        let n = self.network(&req.network_id)?;
        let iface = req.interface.clone().unwrap_or_default();
        let ipv4 = (!iface.address.is_empty()).then_some(iface.address.as_str());
        let ipv6 = (!iface.address_ipv6.is_empty()).then_some(iface.address_ipv6.as_str());
        for a in ipv4.iter().chain(ipv6.iter()) {
            Cidr::parse(a).map_err(|e| anyhow!("endpoint address: {e}"))?;
        }
        let mac = if iface.mac_address.is_empty() {
            match ipv4.map(|a| Cidr::parse(a).map(|c| c.addr)) {
                Some(Ok(IpAddr::V4(ip))) => naming::mac_for(ip),
                _ => random_mac(),
            }
        } else {
            naming::parse_mac(&iface.mac_address).map_err(|e| anyhow!(e))?
        };
        let existing = self.store.endpoint(&req.endpoint_id)?;
        let ep = match existing {
            Some(e) if e.network_id == n.id => e,
            Some(e) => bail!("endpoint {} already belongs to network {}", e.id, e.network_id),
            None => {
                let e = Endpoint {
                    id: req.endpoint_id.clone(),
                    network_id: n.id.clone(),
                    ipv4: ipv4.map(String::from),
                    ipv6: ipv6.map(String::from),
                    mac: naming::format_mac(mac),
                    sandbox: None,
                };
                self.store.put_endpoint(&e)?;
                e
            }
        };
        // dockerd rejects a response that repeats a field it set itself.
        let interface = iface.mac_address.is_empty().then(|| api::EndpointInterface {
            mac_address: ep.mac.clone(),
            ..Default::default()
        });
        Ok(api::CreateEndpointResponse { interface })
    }

    pub async fn endpoint_oper_info(&self, req: &api::EndpointOperInfoRequest) -> Result<api::EndpointOperInfoResponse> {
        let ep = self
            .store
            .endpoint(&req.endpoint_id)?
            .ok_or_else(|| anyhow!("endpoint {} not found", req.endpoint_id))?;
        let mut value = std::collections::BTreeMap::new();
        value.insert("mac".into(), ep.mac.clone().into());
        if let Some(a) = &ep.ipv4 {
            value.insert("ipv4".into(), a.clone().into());
        }
        value.insert("veth".into(), naming::veth_host(&ep.id).into());
        value.insert("attached".into(), self.dp.veth_present(&ep.id).await?.into());
        Ok(api::EndpointOperInfoResponse { value })
    }

    pub async fn delete_endpoint(&self, id: &str) -> Result<()> {
        self.dp.remove_veth(id).await?;
        if self.store.delete_endpoint(id)?.is_some() {
            log::info!("endpoint {id} deleted");
        }
        Ok(())
    }

    pub async fn join(&self, req: &api::JoinRequest) -> Result<api::JoinResponse> {
        let mut ep = self
            .store
            .endpoint(&req.endpoint_id)?
            .ok_or_else(|| anyhow!("endpoint {} not found (CreateEndpoint first)", req.endpoint_id))?;
        let n = self.network(&ep.network_id)?;
        self.dp.ensure_network(spec(&n), &self.store.peers()?).await?;
        let mac = naming::parse_mac(&ep.mac).map_err(|e| anyhow!(e))?;
        let src = self.dp.ensure_veth(&ep.id, spec(&n), mac).await?;
        ep.sandbox = Some(req.sandbox_key.clone());
        if let Err(e) = self.store.put_endpoint(&ep) {
            let _ = self.dp.remove_veth(&ep.id).await;
            return Err(e.into());
        }
        log::info!("endpoint {} joined {} via {src}", ep.id, req.sandbox_key);
        // No gateway: Docker connects the container to docker_gwbridge for outside traffic.
        Ok(api::JoinResponse {
            interface_name: api::InterfaceName { src_name: src, dst_prefix: "eth".into() },
            ..Default::default()
        })
    }

    pub async fn leave(&self, req: &api::LeaveRequest) -> Result<()> {
        self.dp.remove_veth(&req.endpoint_id).await?;
        if let Some(mut ep) = self.store.endpoint(&req.endpoint_id)? {
            ep.sandbox = None;
            self.store.put_endpoint(&ep)?;
            log::info!("endpoint {} left", ep.id);
        }
        Ok(())
    }

    /// Swarm announces peer hosts to global-scope drivers; they feed the same peer set.
    pub async fn discover(&self, req: &api::DiscoveryNotification, new: bool) -> Result<()> {
        let Some(node) = req.node() else {
            return Ok(());
        };
        let node = node.map_err(|e| anyhow!(e))?;
        if node.self_node {
            return Ok(());
        }
        let ip: IpAddr = node.address.parse().with_context(|| format!("discovered node address {:?}", node.address))?;
        if new {
            self.add_peer(ip).await
        } else {
            self.remove_peer(ip).await
        }
    }

    pub async fn add_peer(&self, ip: IpAddr) -> Result<()> {
        if ip == IpAddr::V4(self.dp.underlay.ip) {
            bail!("{ip} is this host's own underlay address, not a peer");
        }
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            bail!("{ip} cannot be a VXLAN peer (unspecified, multicast or loopback)");
        }
        if self.store.add_peer(ip)? {
            log::info!("peer {ip} added");
        }
        self.dp.sync_peers(&self.vnis()?, &self.store.peers()?).await
    }

    pub async fn remove_peer(&self, ip: IpAddr) -> Result<()> {
        if self.store.remove_peer(ip)? {
            log::info!("peer {ip} removed");
        }
        self.dp.sync_peers(&self.vnis()?, &self.store.peers()?).await
    }

    pub fn peers(&self) -> Result<Vec<IpAddr>> {
        Ok(self.store.peers()?)
    }

    pub fn status(&self) -> Result<Status> {
        let endpoints = self.store.endpoints()?;
        let networks = self
            .store
            .networks()?
            .into_iter()
            .map(|n| NetworkStatus {
                endpoints: endpoints.iter().filter(|e| e.network_id == n.id).cloned().collect(),
                bridge: naming::bridge(n.vni),
                vxlan: naming::vxlan(n.vni),
                network: n,
            })
            .collect();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").into(),
            underlay: self.dp.underlay.name.clone(),
            underlay_ip: self.dp.underlay.ip.to_string(),
            underlay_mtu: self.dp.underlay.mtu,
            peers: self.store.peers()?,
            networks,
        })
    }

    /// Brings the kernel in line with the store after a start: recreate what stored networks
    /// need, re-attach surviving veths, remove oncache links nothing owns.
    pub async fn reconcile(&self) -> Result<()> {
        let peers = self.store.peers()?;
        let networks = self.store.networks()?;
        for n in &networks {
            self.dp.ensure_network(spec(n), &peers).await.with_context(|| format!("restoring network {}", n.id))?;
        }
        let endpoints = self.store.endpoints()?;
        for ep in &endpoints {
            if let Some(n) = networks.iter().find(|n| n.id == ep.network_id) {
                self.dp.reattach_veth(&ep.id, n.vni).await?;
            }
        }
        let vnis: Vec<u32> = networks.iter().map(|n| n.vni).collect();
        let tags: Vec<&str> = endpoints.iter().map(|e| naming::ep_tag(&e.id)).collect();
        let removed = self.dp.remove_orphans(&vnis, &tags).await?;
        log::info!(
            "reconciled {} networks, {} endpoints, {} peers; removed orphans: {:?}",
            networks.len(),
            endpoints.len(),
            peers.len(),
            removed
        );
        Ok(())
    }
}

/// A random locally administered unicast MAC, for endpoints without an IPv4 address.
fn random_mac() -> [u8; 6] {
    let mut m = [0u8; 6];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut m))
        .is_err()
    {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        m.copy_from_slice(&t.as_nanos().to_le_bytes()[..6]);
    }
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}
