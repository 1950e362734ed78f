//! Driver logic: decides what each Docker (or oncache control) request means for the store and
//! the data plane, in that order, so that what is acknowledged is always persisted. Every
//! operation is idempotent: dockerd repeats calls after restarts and expects success for
//! things that are already done or already gone.

use crate::cidr::Cidr;
use crate::cluster::{self, Cluster, Published, Remote};
use crate::control::{NetworkStatus, Status};
use crate::dataplane::{Dataplane, NetSpec};
use crate::fastpath::{self, FastPath};
use crate::{naming, options};
use anyhow::{anyhow, bail, Context, Result};
use libnetwork_api::driver as api;
use oncache_store::{Endpoint, Network, PeerSource, Store};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

mod reap;

pub struct Driver {
    store: Store,
    dp: Dataplane,
    /// None when the kernel lacks something the fast path needs; `fast_off` says what.
    fast: Option<FastPath>,
    fast_off: String,
    /// The control plane; None when this host runs alone (`--gossip-port 0`).
    cluster: Option<Arc<Cluster>>,
    /// The remote endpoints programmed into the kernel (and the fast path), as last applied.
    remotes: BTreeMap<cluster::view::Key, Remote>,
    /// Scope `global` (Docker Swarm) rather than `local`.
    global: bool,
    /// Swarm peers announced again while already peers, and when (see `discover`).
    swarm_renewed: std::collections::HashMap<IpAddr, std::time::Instant>,
}

/// How long a repeated DiscoverNew for a peer outweighs a DiscoverDelete for it.
const SWARM_RENEW_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// An endpoint's IPv4 address, if it has one (the fast path is IPv4).
fn ipv4_of(ep: &Endpoint) -> Option<Ipv4Addr> {
    match Cidr::parse(ep.ipv4.as_deref()?).ok()?.addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// Checks an ID from a request before anything uses it.
fn checked<'a>(kind: &str, id: &'a str) -> Result<&'a str> {
    naming::check_id(kind, id).map_err(|e| anyhow!(e))?;
    Ok(id)
}

fn now() -> u64 {
    now_ms() / 1000
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An endpoint's addresses (IPv4 and IPv6), without prefix lengths.
fn addrs_of(ep: &Endpoint) -> Vec<IpAddr> {
    [&ep.ipv4, &ep.ipv6].into_iter().flatten().filter_map(|a| Cidr::parse(a).ok()).map(|c| c.addr).collect()
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
    pub fn new(store: Store, dp: Dataplane, fast: Result<FastPath, String>, cluster: Option<Arc<Cluster>>, global: bool) -> Driver {
        let mut d = Driver { store, dp, fast: None, fast_off: String::new(), cluster, remotes: BTreeMap::new(), global, swarm_renewed: Default::default() };
        d.set_fast(fast);
        d
    }

    /// The fast path, or why there is none (it is loaded after the socket is served).
    pub fn set_fast(&mut self, fast: Result<FastPath, String>) {
        (self.fast, self.fast_off) = match fast {
            Ok(f) => (Some(f), String::new()),
            Err(why) => (None, why),
        };
    }

    fn fast(&mut self) -> Result<&mut FastPath> {
        let why = &self.fast_off;
        self.fast.as_mut().ok_or_else(|| anyhow!("the fast path is not running on this host: {why}"))
    }

    /// Makes the fast path's network set match the stored networks that want it.
    fn sync_fast_networks(&mut self) -> Result<()> {
        let vnis: Vec<u32> = self.store.networks()?.iter().filter(|n| n.fastpath).map(|n| n.vni).collect();
        if let Some(f) = self.fast.as_mut() {
            f.maps.set_networks(&vnis)?;
        }
        Ok(())
    }

    /// Tells the other hosts which endpoints are joined here now (all of them: the gossip
    /// sends only what changed).
    async fn publish(&self) -> Result<()> {
        let Some(c) = &self.cluster else { return Ok(()) };
        let networks = self.store.networks()?;
        let mut eps = Vec::new();
        for ep in self.store.endpoints()?.iter().filter(|e| e.sandbox.is_some()) {
            let (Some(n), Ok(mac)) = (networks.iter().find(|n| n.id == ep.network_id), naming::parse_mac(&ep.mac)) else { continue };
            for ip in addrs_of(ep) {
                eps.push(Published { vni: n.vni, ip, mac, since: ep.joined_at });
            }
        }
        log::debug!("publishing {} local endpoint addresses", eps.len());
        c.publish(&eps).await;
        Ok(())
    }

    /// Brings the kernel's remote endpoints in line with what the cluster says
    /// (see [`cluster::view::remotes`]); entries of peers not heard from since start are kept.
    pub async fn apply_view(&mut self, v: &cluster::View) -> Result<()> {
        let networks = self.store.networks()?;
        if v.resync_kernel {
            self.reap_dead_endpoints().await?;
            // Anti-entropy with the kernel too: entries someone removed or changed by hand come
            // back, and stray ones go.
            let vnis: Vec<u32> = networks.iter().map(|n| n.vni).collect();
            self.remotes = self.dp.remotes_in_kernel(&vnis).await?;
        }
        let vnis: HashSet<u32> = networks.iter().map(|n| n.vni).collect();
        let mut local = HashSet::new();
        for ep in self.store.endpoints()?.iter().filter(|e| e.sandbox.is_some()) {
            if let Some(n) = networks.iter().find(|n| n.id == ep.network_id) {
                local.extend(addrs_of(ep).into_iter().map(|ip| (n.vni, ip)));
            }
        }
        let mut want = cluster::view::remotes(&local, &vnis, v.hosts.iter().map(|(ip, eps)| (*ip, &eps[..])));
        if want.len() < self.remotes.len() {
            let hosts: Vec<String> = v.hosts.iter().map(|(ip, eps)| format!("{ip}: {}", eps.len())).collect();
            log::debug!("cluster view: hosts {hosts:?}, pending {:?}", v.pending);
        }
        for (k, r) in &self.remotes {
            if v.pending.contains(&r.vtep) && !local.contains(k) && vnis.contains(&k.0) {
                want.entry(*k).or_insert(*r);
            }
        }
        self.set_remotes(want).await
    }

    /// Makes the programmed remote endpoints exactly `want`.
    async fn set_remotes(&mut self, want: BTreeMap<cluster::view::Key, Remote>) -> Result<()> {
        let (add, remove) = cluster::view::diff(&self.remotes, &want);
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let fast_vnis: HashSet<u32> = self.store.networks()?.iter().filter(|n| n.fastpath).map(|n| n.vni).collect();
        for ((vni, ip), r) in remove {
            let in_use = want.iter().any(|((v, _), o)| *v == vni && o.mac == r.mac && o.vtep == r.vtep);
            self.dp.unset_remote(vni, ip, r, in_use).await?;
            if let (Some(f), IpAddr::V4(v4)) = (self.fast.as_mut(), ip) {
                f.maps.forget_remote(vni, v4.octets())?;
            }
            self.remotes.remove(&(vni, ip));
            log::debug!("remote {ip} (VNI {vni}) at {} removed", r.vtep);
        }
        for ((vni, ip), r) in add {
            self.dp.set_remote(vni, ip, r).await?;
            if let (Some(f), IpAddr::V4(v4), IpAddr::V4(vtep)) = (self.fast.as_mut(), ip, r.vtep) {
                if fast_vnis.contains(&vni) {
                    f.maps.set_remote(vni, v4.octets(), vtep.octets(), r.mac)?;
                }
            }
            self.remotes.insert((vni, ip), r);
            log::debug!("remote {ip} (VNI {vni}) at {}", r.vtep);
        }
        Ok(())
    }

    /// Drops what is programmed for addresses that now live here (a local join wins at once,
    /// before the next view) or for a network that is gone.
    async fn drop_remotes(&mut self, gone: impl Fn(&cluster::view::Key) -> bool) -> Result<()> {
        let want = self.remotes.iter().filter(|(k, _)| !gone(k)).map(|(k, r)| (*k, *r)).collect();
        self.set_remotes(want).await
    }

    /// Takes an endpoint off the data plane: fast path first (while its veth still has an
    /// ifindex), then the veth.
    async fn unplug(&mut self, endpoint_id: &str, ep: Option<&Endpoint>, vni: Option<u32>) -> Result<()> {
        let veth = naming::veth_host(endpoint_id);
        if let Some(f) = self.fast.as_mut() {
            let ifindex = self.dp.link_index(&veth).await?;
            let ip = ep.and_then(ipv4_of).map(|a| a.octets());
            f.detach_endpoint(&veth, ifindex, vni.unwrap_or(0), ip)?;
        }
        self.dp.remove_veth(endpoint_id).await
    }

    /// The VNI of an endpoint's network, if both are known.
    fn vni_of(&self, ep: Option<&Endpoint>) -> Result<Option<u32>> {
        Ok(match ep {
            Some(e) => self.store.network(&e.network_id)?.map(|n| n.vni),
            None => None,
        })
    }

    fn network(&self, id: &str) -> Result<Network> {
        self.store.network(id)?.ok_or_else(|| anyhow!("network {id} is not an oncache network on this host"))
    }


    pub fn capabilities(&self) -> api::CapabilitiesResponse {
        // Local scope: each dockerd owns its network records, and hosts share a network by the
        // same VNI and subnet. Global: Swarm's leader allocates networks (AllocateNetwork) and
        // hands them to the nodes.
        api::CapabilitiesResponse {
            scope: if self.global { api::SCOPE_GLOBAL } else { api::SCOPE_LOCAL }.into(),
            connectivity_scope: api::SCOPE_GLOBAL.into(),
        }
    }

    pub async fn create_network(&mut self, req: &api::CreateNetworkRequest) -> Result<()> {
        checked("network", &req.network_id)?;
        let given = req.generic_options().map_err(|e| anyhow!(e))?;
        let opts = options::parse(&given).map_err(|e| anyhow!(e))?;
        let ipv4_pools = pools(&req.ipv4_data)?;
        let ipv6_pools = pools(&req.ipv6_data)?;

        if let Some(n) = self.store.network(&req.network_id)? {
            // dockerd retries CreateNetwork after a failed attempt; converge, don't fail.
            self.dp.ensure_network(spec(&n)).await?;
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
            // Overlapping subnets are separate segments only when both sides chose their VNI:
            // then the operator deliberately keeps them apart (tenants, test networks).
            for o in others.iter().filter(|o| opts.vni.is_none() || !o.options.contains_key(options::VNI)) {
                if let Some(q) = o.ipv4_pools.iter().chain(&o.ipv6_pools).find(|q| {
                    Cidr::parse(q).map(|q| q.overlaps(&c)).unwrap_or(false)
                }) {
                    bail!(
                        "subnet {p} overlaps subnet {q} of oncache network {} (networks given explicit, different {} values may overlap)",
                        o.id,
                        options::VNI
                    );
                }
            }
        }
        let used: Vec<u32> = others.iter().map(|o| o.vni).collect();
        let vni = match opts.vni {
            Some(v) => v,
            None => options::allocate_vni(&used).ok_or_else(|| anyhow!("no free VNI left"))?,
        };
        let mtu = options::mtu(opts.mtu, self.dp.underlay.mtu).map_err(|e| anyhow!(e))?;
        let zones: Vec<u16> = others.iter().map(|o| o.zone).collect();
        let zone = options::allocate_zone(vni, &zones).ok_or_else(|| anyhow!("no free conntrack zone left on this host"))?;
        let n = Network {
            id: req.network_id.clone(),
            vni,
            mtu,
            ipv4_pools,
            ipv6_pools,
            fastpath: opts.fastpath,
            options: given,
            created: now(),
            zone,
        };
        self.store.put_network(&n)?;
        if let Err(e) = self.dp.add_zone(vni, zone) {
            log::warn!("network {}: {e:#}; its connections share the host's conntrack zone", n.id);
        }
        if let Err(e) = self.dp.ensure_network(spec(&n)).await {
            // Leave neither a record nor half-made links or rules behind a failed create.
            self.dp.remove_zone(vni, zone);
            let _ = self.dp.remove_network(vni).await;
            self.store.delete_network(&n.id)?;
            return Err(e);
        }
        self.sync_fast_networks()?;
        log::info!("network {} created: VNI {vni}, MTU {mtu}, fast path {}", n.id, if n.fastpath { "on" } else { "off" });
        Ok(())
    }

    pub async fn delete_network(&mut self, id: &str) -> Result<()> {
        let Some(n) = self.store.network(checked("network", id)?)? else {
            return Ok(());
        };
        // dockerd deletes endpoints first; an operator's forced removal may not have.
        for ep in self.store.endpoints_of(id)? {
            self.unplug(&ep.id, Some(&ep), Some(n.vni)).await?;
            self.store.delete_endpoint(&ep.id)?;
        }
        self.drop_remotes(|(vni, _)| *vni == n.vni).await?;
        if let Some(f) = self.fast.as_mut() {
            f.maps.remove_network(n.vni)?;
        }
        self.dp.remove_network(n.vni).await?;
        self.dp.remove_zone(n.vni, n.zone);
        self.store.delete_network(id)?;
        self.publish().await?;
        log::info!("network {id} deleted (VNI {})", n.vni);
        Ok(())
    }

    /// Swarm's leader allocates a network (scope global): its VNI, returned with the user's
    /// options, because those returned options are all that the nodes' CreateNetwork gets.
    /// Idempotent and faithful to its own keys: a newly elected leader replays it for every
    /// network with the options returned before, and learns their VNIs from them.
    pub fn allocate_network(&mut self, req: &api::AllocateNetworkRequest) -> Result<api::AllocateNetworkResponse> {
        let id = checked("network", &req.network_id)?;
        if !self.global {
            bail!("oncache runs with scope local here, and Swarm allocates only global-scope networks: run the managed plugin with ONCACHE_SCOPE=global (see README, Swarm)");
        }
        let opts = options::parse(&req.options).map_err(|e| anyhow!(e))?;
        let allocated = self.store.allocations()?;
        let vni = match (opts.vni, allocated.iter().find(|(n, _)| n == id)) {
            (Some(v), _) => {
                if let Some((other, _)) = allocated.iter().find(|(n, x)| *x == v && n != id) {
                    bail!("VNI {v} is already allocated to Swarm network {other}");
                }
                v
            }
            (None, Some((_, v))) => *v,
            (None, None) => {
                let used: Vec<u32> = allocated.iter().map(|(_, v)| *v).chain(self.store.networks()?.iter().map(|n| n.vni)).collect();
                options::allocate_vni(&used).ok_or_else(|| anyhow!("no free VNI left"))?
            }
        };
        self.store.put_allocation(id, vni)?;
        let mut options = req.options.clone();
        options.insert(options::VNI.into(), vni.to_string());
        log::info!("Swarm network {id} allocated: VNI {vni}");
        Ok(api::AllocateNetworkResponse { options })
    }

    /// Swarm's leader frees a network. Always succeeds (Swarm only logs a failure).
    pub fn free_network(&mut self, id: &str) -> Result<()> {
        if naming::check_id("network", id).is_ok() {
            self.store.delete_allocation(id)?;
        }
        Ok(())
    }

    /// An operator removes a network that dockerd no longer has (`oncache network rm`).
    pub async fn remove_network(&mut self, id: &str, force: bool) -> Result<()> {
        let n = self.network(checked("network", id)?)?;
        let joined = self.store.endpoints_of(&n.id)?.iter().filter(|e| e.sandbox.is_some()).count();
        if joined > 0 && !force {
            bail!("network {id} still has {joined} joined endpoint(s); stop those containers first, or force it");
        }
        self.delete_network(id).await
    }

    pub async fn create_endpoint(&self, req: &api::CreateEndpointRequest) -> Result<api::CreateEndpointResponse> {
        checked("endpoint", &req.endpoint_id)?;
        let n = self.network(checked("network", &req.network_id)?)?;
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
                if let Some(other) = self.tag_owner(&req.endpoint_id)? {
                    bail!(
                        "endpoint ID {} shares its first characters ({}) with endpoint {other}: oncache names the endpoint's links by them",
                        req.endpoint_id,
                        naming::ep_tag(&req.endpoint_id)
                    );
                }
                let e = Endpoint {
                    id: req.endpoint_id.clone(),
                    network_id: n.id.clone(),
                    ipv4: ipv4.map(String::from),
                    ipv6: ipv6.map(String::from),
                    mac: naming::format_mac(mac),
                    sandbox: None,
                    joined_at: 0,
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
            .endpoint(checked("endpoint", &req.endpoint_id)?)?
            .ok_or_else(|| anyhow!("endpoint {} not found", req.endpoint_id))?;
        let mut value = std::collections::BTreeMap::new();
        value.insert("mac".into(), ep.mac.clone().into());
        if let Some(a) = &ep.ipv4 {
            value.insert("ipv4".into(), a.clone().into());
        }
        value.insert("veth".into(), naming::veth_host(&ep.id).into());
        value.insert("attached".into(), self.dp.link_index(&naming::veth_host(&ep.id)).await?.is_some().into());
        Ok(api::EndpointOperInfoResponse { value })
    }

    pub async fn delete_endpoint(&mut self, id: &str) -> Result<()> {
        let ep = self.store.endpoint(checked("endpoint", id)?)?;
        if ep.is_none() && self.tag_owner(id)?.is_some() {
            return Ok(()); // not ours to touch: those links belong to another endpoint
        }
        let vni = self.vni_of(ep.as_ref())?;
        self.unplug(id, ep.as_ref(), vni).await?;
        if let Some(ep) = self.store.delete_endpoint(id)? {
            if ep.sandbox.is_some() {
                self.publish().await?;
            }
            log::info!("endpoint {id} deleted");
        }
        Ok(())
    }

    pub async fn join(&mut self, req: &api::JoinRequest) -> Result<api::JoinResponse> {
        let mut ep = self
            .store
            .endpoint(checked("endpoint", &req.endpoint_id)?)?
            .ok_or_else(|| anyhow!("endpoint {} not found (CreateEndpoint first)", req.endpoint_id))?;
        let n = self.network(&ep.network_id)?;
        self.dp.ensure_network(spec(&n)).await?;
        let answer = |src: String| api::JoinResponse {
            // No gateway: Docker connects the container to docker_gwbridge for outside traffic.
            interface_name: api::InterfaceName { src_name: src, dst_prefix: "eth".into() },
            ..Default::default()
        };
        let src = naming::veth_peer(&ep.id);
        if ep.sandbox.as_deref() == Some(req.sandbox_key.as_str()) && self.dp.link_index(&naming::veth_host(&ep.id)).await?.is_some() {
            // A repeated Join: the container end may already be in the sandbox; keep it.
            self.dp.reattach_veth(&ep.id, n.vni).await?;
            if let Err(e) = self.plug_fast(&ep, &n).await {
                log::warn!("endpoint {}: fast path not attached, slow path only: {e:#}", ep.id);
            }
            return Ok(answer(src));
        }
        let mac = naming::parse_mac(&ep.mac).map_err(|e| anyhow!(e))?;
        let src = self.dp.ensure_veth(&ep.id, spec(&n), mac).await?;
        ep.sandbox = Some(req.sandbox_key.clone());
        ep.joined_at = now_ms();
        if let Err(e) = self.store.put_endpoint(&ep) {
            let _ = self.dp.remove_veth(&ep.id).await;
            return Err(e.into());
        }
        // The address lives here now: what other hosts had of it is stale.
        let mine: Vec<_> = addrs_of(&ep).into_iter().map(|ip| (n.vni, ip)).collect();
        self.drop_remotes(|k| mine.contains(k)).await?;
        if let Err(e) = self.plug_fast(&ep, &n).await {
            log::warn!("endpoint {}: fast path not attached, slow path only: {e:#}", ep.id);
        }
        self.publish().await?;
        log::info!("endpoint {} joined {} via {src}", ep.id, req.sandbox_key);
        Ok(answer(src))
    }

    /// Puts a joined endpoint on the fast path, if its network and address allow it.
    async fn plug_fast(&mut self, ep: &Endpoint, n: &Network) -> Result<()> {
        let (Some(ip), true, true) = (ipv4_of(ep), n.fastpath, self.fast.is_some()) else {
            return Ok(());
        };
        let veth = naming::veth_host(&ep.id);
        let ifindex = self.dp.link_index(&veth).await?.ok_or_else(|| anyhow!("{veth} is missing"))?;
        let mac = naming::parse_mac(&ep.mac).map_err(|e| anyhow!(e))?;
        let info = oncache_common::EndpointInfo { vni: n.vni, ip: ip.octets(), mac, _pad: [0; 2], gen: 0 };
        self.fast()?.attach_endpoint(&veth, ifindex, info)
    }

    pub async fn leave(&mut self, req: &api::LeaveRequest) -> Result<()> {
        let ep = self.store.endpoint(checked("endpoint", &req.endpoint_id)?)?;
        if ep.is_none() && self.tag_owner(&req.endpoint_id)?.is_some() {
            return Ok(()); // not ours to touch: those links belong to another endpoint
        }
        let vni = self.vni_of(ep.as_ref())?;
        self.unplug(&req.endpoint_id, ep.as_ref(), vni).await?;
        if let Some(mut ep) = ep {
            if ep.sandbox.take().is_some() {
                self.store.put_endpoint(&ep)?;
                self.publish().await?;
                log::info!("endpoint {} left", ep.id);
            }
        }
        Ok(())
    }

    /// Swarm announces peer hosts to global-scope drivers; they feed the same peer set.
    pub async fn discover(&mut self, req: &api::DiscoveryNotification, new: bool) -> Result<()> {
        let Some(node) = req.node() else {
            return Ok(());
        };
        let node = node.map_err(|e| anyhow!(e))?;
        if node.self_node {
            return Ok(());
        }
        let ip: IpAddr = node.address.parse().with_context(|| format!("discovered node address {:?}", node.address))?;
        // Swarm speaks of node incarnations, we of addresses: a node whose dockerd restarts
        // joins again (DiscoverNew) and only then is its old incarnation declared failed
        // (DiscoverDelete), seconds later. A Delete soon after such a renewal is the old
        // incarnation's, and the node stays.
        if new {
            if self.store.peers()?.contains(&ip) {
                self.swarm_renewed.insert(ip, std::time::Instant::now());
            }
            self.add_peer_from(ip, PeerSource::Swarm).await
        } else if self.swarm_renewed.remove(&ip).is_some_and(|t| t.elapsed() < SWARM_RENEW_WINDOW) {
            log::info!("peer {ip} stays: Swarm announced a new incarnation of it before this DiscoverDelete");
            Ok(())
        } else {
            self.withdraw_peer(ip, Some(PeerSource::Swarm)).await
        }
    }

    /// Why `ip` cannot be a peer of this host, if it cannot.
    fn peer_problem(&self, ip: IpAddr) -> Option<String> {
        let u = &self.dp.underlay;
        if ip == IpAddr::V4(u.ip) {
            return Some(format!("{ip} is this host's own underlay address, not a peer"));
        }
        if !ip.is_ipv4() {
            return Some(format!("peer {ip} is IPv6, but the underlay {} is IPv4 ({}): VXLAN peers must be of the underlay's family", u.name, u.ip));
        }
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Some(format!("{ip} cannot be a VXLAN peer (unspecified, multicast, broadcast or loopback)"));
        }
        None
    }

    /// The stored peers this host gossips with: one stored by an older oncache that this host
    /// cannot use is skipped (and said), never fatal.
    fn usable_peers(&self) -> Result<Vec<IpAddr>> {
        let mut out = self.store.peers()?;
        out.retain(|p| match self.peer_problem(*p) {
            None => true,
            Some(why) => {
                log::warn!("stored peer skipped: {why} (remove it with `oncache peer rm {p}`)");
                false
            }
        });
        Ok(out)
    }

    /// An operator adds a peer host (`--peer`, `oncache peer add`).
    pub async fn add_peer(&mut self, ip: IpAddr) -> Result<()> {
        self.add_peer_from(ip, PeerSource::Operator).await
    }

    /// Adds a peer host: checked, stored with its source, and gossiped with from now on.
    async fn add_peer_from(&mut self, ip: IpAddr, source: PeerSource) -> Result<()> {
        if let Some(why) = self.peer_problem(ip) {
            bail!(why);
        }
        if self.store.add_peer(ip, source)? {
            log::info!("peer {ip} added");
        }
        if let Some(c) = &self.cluster {
            c.set_peers(&self.usable_peers()?);
        }
        Ok(())
    }

    /// An operator removes a peer host (`oncache peer rm`), whoever named it.
    pub async fn remove_peer(&mut self, ip: IpAddr) -> Result<()> {
        self.withdraw_peer(ip, None).await
    }

    /// Withdraws `source`'s claim on a peer (None: all); once no source names it, it and
    /// everything programmed for its containers go at once.
    async fn withdraw_peer(&mut self, ip: IpAddr, source: Option<PeerSource>) -> Result<()> {
        if !self.store.remove_peer(ip, source)? {
            if self.store.peers()?.contains(&ip) {
                log::info!("peer {ip} stays: the operator named it");
            }
            return Ok(());
        }
        log::info!("peer {ip} removed");
        if let Some(c) = &self.cluster {
            c.set_peers(&self.usable_peers()?);
        }
        let gone: Vec<_> = self.remotes.iter().filter(|(_, r)| r.vtep == ip).map(|(k, _)| *k).collect();
        self.drop_remotes(|k| gone.contains(k)).await?;
        if let (Some(f), IpAddr::V4(v4)) = (self.fast.as_mut(), ip) {
            f.maps.forget_peer(v4.octets())?;
        }
        Ok(())
    }

    pub fn fast_stats(&mut self) -> Result<fastpath::maps::Stats> {
        self.fast()?.maps.stats()
    }

    pub fn cache_list(&mut self) -> Result<fastpath::maps::CacheList> {
        self.fast()?.maps.list()
    }

    /// An underlay neighbour or route changed (`old`: the neighbour's MAC before): drops the
    /// learned outer headers it makes stale.
    pub fn next_hop_changed(&mut self, ev: crate::dataplane::netlink::NextHop, old: Option<[u8; 6]>) -> Result<usize> {
        use crate::dataplane::netlink::NextHop;
        let Some(f) = self.fast.as_mut() else { return Ok(0) };
        let v4 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        };
        match ev {
            NextHop::Route => f.maps.forget_outer(|_, _| true),
            // Headers to that host with another MAC, and headers through its old MAC.
            NextHop::Neighbour { ip, mac } => {
                let ip = v4(ip);
                f.maps.forget_outer(|vtep, dst| (Some(vtep) == ip && Some(dst) != mac) || Some(dst) == old)
            }
        }
    }

    pub fn cache_flush(&mut self) -> Result<usize> {
        let n = self.fast()?.maps.flush()?;
        log::info!("fast-path caches flushed: {n} entries");
        Ok(n)
    }

    pub fn peers(&self) -> Result<Vec<IpAddr>> {
        Ok(self.store.peers()?)
    }

    /// The stored endpoint, other than `id` itself, whose links carry the same tag as `id`'s.
    fn tag_owner(&self, id: &str) -> Result<Option<String>> {
        let tag = naming::ep_tag(id);
        Ok(self.store.endpoints_with_prefix(tag)?.into_iter().map(|e| e.id).find(|o| o != id && naming::ep_tag(o) == tag))
    }

    pub async fn status(&self) -> Result<Status> {
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
            fastpath: match &self.fast {
                Some(f) => format!("on ({:?})", f.mode).to_lowercase(),
                None => format!("off: {}", self.fast_off),
            },
            peers: self.store.peers()?,
            live_peers: match &self.cluster {
                Some(c) => c.live_peers().await,
                None => Vec::new(),
            },
            remote_endpoints: self.remotes.len(),
            networks,
        })
    }

    /// Brings the kernel in line with the store after a start: recreate what stored networks
    /// need, re-attach surviving veths, remove oncache links nothing owns.
    pub async fn reconcile(&mut self) -> Result<()> {
        let peers = self.usable_peers()?;
        let mut networks = self.store.networks()?;
        // Records of an older oncache have no zone yet.
        let mut used: Vec<u16> = networks.iter().map(|n| n.zone).filter(|z| *z != 0).collect();
        for n in networks.iter_mut().filter(|n| n.zone == 0) {
            n.zone = options::allocate_zone(n.vni, &used).ok_or_else(|| anyhow!("no free conntrack zone left on this host"))?;
            used.push(n.zone);
            self.store.put_network(n)?;
        }
        if let Err(e) = self.dp.set_zones(&networks.iter().map(|n| (n.vni, n.zone)).collect::<Vec<_>>()) {
            log::warn!("{e:#}; networks' connections share the host's conntrack zone");
        }
        for n in &networks {
            self.dp.ensure_network(spec(n)).await.with_context(|| format!("restoring network {}", n.id))?;
        }
        let mut endpoints = self.store.endpoints()?;
        for ep in &mut endpoints {
            if let Some(n) = networks.iter().find(|n| n.id == ep.network_id) {
                let attached = self.dp.reattach_veth(&ep.id, n.vni).await?;
                if !attached && ep.sandbox.take().is_some() {
                    // Its container went away while the daemon was down (the pair goes with
                    // the container's namespace): it is no longer here to be reached.
                    self.store.put_endpoint(ep)?;
                    log::info!("endpoint {} left while oncache was down", ep.id);
                }
            }
        }
        let vnis: Vec<u32> = networks.iter().map(|n| n.vni).collect();
        // What the kernel was told of other hosts' containers stays until the cluster says
        // otherwise: a restart interrupts no traffic.
        self.remotes = self.dp.remotes_in_kernel(&vnis).await?;
        let tags: Vec<&str> = endpoints.iter().map(|e| naming::ep_tag(&e.id)).collect();
        let removed = self.dp.remove_orphans(&vnis, &tags).await?;
        if self.fast.is_some() {
            self.reconcile_fast(&networks, &endpoints).await?;
        }
        if let Some(c) = &self.cluster {
            c.set_peers(&peers);
        }
        self.publish().await?;
        log::info!(
            "reconciled {} networks, {} endpoints, {} remote endpoints, {} peers; removed orphans: {:?}",
            networks.len(),
            endpoints.len(),
            self.remotes.len(),
            peers.len(),
            removed
        );
        Ok(())
    }
}

impl Driver {
    /// Re-attaches the (possibly new) programs to every live endpoint, and drops fast-path
    /// state for endpoints and links that are gone.
    async fn reconcile_fast(&mut self, networks: &[Network], endpoints: &[Endpoint]) -> Result<()> {
        self.sync_fast_networks()?;
        let mut live = Vec::new();
        let mut veths = Vec::new();
        for ep in endpoints.iter().filter(|e| e.sandbox.is_some()) {
            let Some(n) = networks.iter().find(|n| n.id == ep.network_id) else { continue };
            let veth = naming::veth_host(&ep.id);
            let Some(ifindex) = self.dp.link_index(&veth).await? else { continue };
            if let Err(e) = self.plug_fast(ep, n).await {
                log::warn!("endpoint {}: fast path not re-attached: {e:#}", ep.id);
                continue;
            }
            live.push(ifindex);
            veths.push(veth);
        }
        let underlay = self.dp.underlay.name.clone();
        let fast_vnis: HashSet<u32> = networks.iter().filter(|n| n.fastpath).map(|n| n.vni).collect();
        let remotes = self.remotes.clone();
        let f = self.fast()?;
        for ((vni, ip), r) in remotes {
            if let (true, IpAddr::V4(ip), IpAddr::V4(vtep)) = (fast_vnis.contains(&vni), ip, r.vtep) {
                f.maps.set_remote(vni, ip.octets(), vtep.octets(), r.mac)?;
            }
        }
        let stale = f.maps.retain_endpoints(&live)?;
        let links = f.prune_links(&veths, &underlay)?;
        log::info!("fast path: {} endpoints attached, {stale} stale endpoints and links {links:?} removed", live.len());
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
