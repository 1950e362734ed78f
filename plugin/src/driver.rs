//! Driver logic: decides what each Docker (or oncache control) request means for the store and
//! the data plane, in that order, so that what is acknowledged is always persisted. Every
//! operation is idempotent: dockerd repeats calls after restarts and expects success for
//! things that are already done or already gone.

use crate::cidr::Cidr;
use crate::cluster::{self, Cluster, Published, Remote};
use crate::control::{NetworkStatus, Status};
use crate::dataplane::{Dataplane, NetSpec};
use crate::fastpath::{self, FastPath, VethAt};
use crate::{crashpoint, naming, options};
use anyhow::{anyhow, bail, Context, Result};
use libnetwork_api::driver as api;
use oncache_store::{CniOwner, Endpoint, Ipam, Network, PeerSource, Store};
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
    /// Docker endpoints seen not joined to a sandbox, and since when (see `reap.rs`).
    unjoined_since: std::collections::HashMap<String, std::time::Instant>,
}

/// How long a repeated DiscoverNew for a peer outweighs a DiscoverDelete for it.
const SWARM_RENEW_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A network as the core takes it, whichever front end asks: the Docker front end translates
/// libnetwork's CreateNetwork (Docker's network ID, `-o` options, the IPAM pools dockerd chose),
/// the CNI front end a conflist (its name and VNI; oncache allocating the addresses).
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    /// The store key: Docker's network ID, or [`naming::cni_network_id`].
    pub id: String,
    pub vni: Option<u32>,
    pub mtu: Option<u32>,
    pub fastpath: bool,
    pub ipv4_pools: Vec<String>,
    pub ipv6_pools: Vec<String>,
    /// What the user gave, kept for inspection; `oncache.vni` marks a VNI chosen on purpose.
    pub options: BTreeMap<String, String>,
    /// Set when oncache hands out the addresses itself.
    pub ipam: Option<Ipam>,
}

/// An endpoint whose front end moves the container end itself (Docker: dockerd), with the
/// address the front end's IPAM chose.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub id: String,
    pub network_id: String,
    /// CIDR strings, as the front end gave them (checked here).
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    /// Else derived from the IPv4 address (02:42 + address), else random.
    pub mac: Option<[u8; 6]>,
}

/// A container interface to attach, from a front end that does not move links itself (CNI):
/// the core allocates the address, makes the links and puts them in the container.
pub struct AttachSpec<'a> {
    pub network_id: &'a str,
    pub owner: CniOwner,
    /// The container's network namespace, open.
    pub netns: &'a std::fs::File,
    /// A requested address (else one is allocated) and MAC (else derived from the address).
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
}

/// What [`Driver::attach`] made.
#[derive(Debug)]
pub struct Attached {
    pub endpoint: Endpoint,
    pub host_veth: String,
    pub host_mac: [u8; 6],
    /// The container's address with the subnet's prefix length, and the gateway.
    pub ip: Cidr,
    pub gateway: Option<Ipv4Addr>,
}

/// A request that cannot be served as asked (a front end reports it as the caller's mistake).
#[derive(Debug)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

fn invalid(msg: impl Into<String>) -> anyhow::Error {
    Invalid(msg.into()).into()
}

fn v4(c: &Cidr) -> Option<Ipv4Addr> {
    match c.addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

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

/// What other hosts are told of a joined endpoint: each of its addresses in network `vni`.
fn published(ep: &Endpoint, vni: u32) -> Vec<Published> {
    let Ok(mac) = naming::parse_mac(&ep.mac) else { return Vec::new() };
    addrs_of(ep).into_iter().map(|ip| Published { vni, ip, mac, since: ep.joined_at }).collect()
}

/// An endpoint's addresses (IPv4 and IPv6), without prefix lengths.
fn addrs_of(ep: &Endpoint) -> Vec<IpAddr> {
    [&ep.ipv4, &ep.ipv6].into_iter().flatten().filter_map(|a| Cidr::parse(a).ok()).map(|c| c.addr).collect()
}

/// Takes one remote endpoint out of the kernel and the fast path. Its forwarding entries
/// stay when another address of `remaining` in its network has its MAC at the same host.
async fn unprogram_remote(
    dp: &Dataplane,
    fast: Option<&mut FastPath>,
    (vni, ip): cluster::view::Key,
    r: Remote,
    remaining: &BTreeMap<cluster::view::Key, Remote>,
) -> Result<()> {
    let in_use = remaining.range(cluster::view::in_network(vni)).any(|(_, o)| o.mac == r.mac && o.vtep == r.vtep);
    dp.unset_remote(vni, ip, r, in_use).await?;
    if let (Some(f), IpAddr::V4(v4)) = (fast, ip) {
        f.maps.forget_remote(vni, v4.octets())?;
    }
    log::debug!("remote {ip} (VNI {vni}) at {} removed", r.vtep);
    Ok(())
}

fn net_spec(n: &Network) -> NetSpec {
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
        let mut d = Driver { store, dp, fast: None, fast_off: String::new(), cluster, remotes: BTreeMap::new(), global, swarm_renewed: Default::default(), unjoined_since: Default::default() };
        d.set_fast(fast);
        d
    }

    /// The fast path, or why there is none (it is loaded after the socket is served).
    /// The store, for what the front ends keep beside the driver's records (calls in flight).
    pub fn store(&self) -> &Store {
        &self.store
    }

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
    /// sends only what changed). Of two joined endpoints with one address (a container that
    /// rejoined before its old endpoint went), the later join is published.
    async fn publish(&self) -> Result<()> {
        let Some(c) = &self.cluster else { return Ok(()) };
        let networks = self.store.networks()?;
        let mut eps = Vec::new();
        for ep in self.store.endpoints()?.iter().filter(|e| e.sandbox.is_some()) {
            let Some(n) = networks.iter().find(|n| n.id == ep.network_id) else { continue };
            eps.extend(published(ep, n.vni));
        }
        eps.sort_by_key(|e| e.since);
        log::debug!("publishing {} local endpoint addresses", eps.len());
        c.publish(&eps).await;
        Ok(())
    }

    /// Tells the other hosts that `ep` joined here, and nothing else: a Join costs the same
    /// however many endpoints there are (what goes away is published in full, so that an
    /// address another endpoint still has stays published).
    async fn publish_joined(&self, ep: &Endpoint, vni: u32) {
        if let Some(c) = &self.cluster {
            c.publish_more(&published(ep, vni)).await;
        }
    }

    /// Brings the kernel's remote endpoints in line with what the cluster says
    /// (see [`cluster::view::remotes`]); entries of peers not heard from since start are kept.
    pub async fn apply_view(&mut self, v: &cluster::View) -> Result<()> {
        let networks = self.store.networks()?;
        if v.resync_kernel {
            self.reap_dead_endpoints().await?;
            self.reap_unjoined_endpoints()?;
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
        for (k, r) in remove {
            unprogram_remote(&self.dp, self.fast.as_mut(), k, r, &want).await?;
            self.remotes.remove(&k);
        }
        let fast_vnis: HashSet<u32> = self.store.networks()?.iter().filter(|n| n.fastpath).map(|n| n.vni).collect();
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

    /// Drops what is programmed for `keys` (addresses that now live here: a local join wins at
    /// once, before the next view; a network that is gone; a peer removed), by key: a Join
    /// costs the same however many remote endpoints the cluster has.
    async fn drop_remotes(&mut self, keys: impl IntoIterator<Item = cluster::view::Key>) -> Result<()> {
        let mut gone: Vec<_> = keys.into_iter().filter_map(|k| self.remotes.remove(&k).map(|r| (k, r))).collect();
        // Judged against what stays, once all are out: a MAC only dropped keys used goes too.
        while let Some((k, r)) = gone.pop() {
            if let Err(e) = unprogram_remote(&self.dp, self.fast.as_mut(), k, r, &self.remotes).await {
                // Still programmed, as far as anyone knows: the next change or view tries again.
                self.remotes.extend(gone.into_iter().chain([(k, r)]));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes an endpoint off the data plane: fast path first (while its veth still has an
    /// ifindex), then the veth.
    async fn unplug(&mut self, endpoint_id: &str, ep: Option<&Endpoint>, vni: Option<u32>) -> Result<()> {
        let veth = naming::veth_host(endpoint_id);
        if self.fast.is_some() {
            let at = match self.dp.link_index(&veth).await? {
                Some(ifindex) => Some(VethAt::Index(ifindex)),
                // Gone with its container's namespace while joined: which index it had is not
                // known, but every entry pointing at a vanished interface can go (one dump of
                // the links, so only here: after a Leave the veth is gone and nothing is left).
                None if ep.is_some_and(|e| e.sandbox.is_some()) => Some(VethAt::Gone { links: self.dp.link_indexes().await? }),
                None => None,
            };
            if let Some(at) = at {
                let ip = ep.and_then(ipv4_of).map(|a| a.octets());
                let nl = self.dp.netlink().clone();
                self.fast()?.detach_endpoint(&nl, at, vni.unwrap_or(0), ip).await?;
            }
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

    /// Docker's CreateNetwork: libnetwork's request translated into the core's [`NetworkSpec`].
    pub async fn create_network(&mut self, req: &api::CreateNetworkRequest) -> Result<()> {
        checked("network", &req.network_id)?;
        let given = req.generic_options().map_err(|e| anyhow!(e))?;
        let opts = options::parse(&given).map_err(|e| anyhow!(e))?;
        let spec = NetworkSpec {
            id: req.network_id.clone(),
            vni: opts.vni,
            mtu: opts.mtu,
            fastpath: opts.fastpath,
            ipv4_pools: pools(&req.ipv4_data)?,
            ipv6_pools: pools(&req.ipv6_data)?,
            options: given,
            ipam: None,
        };
        self.create(spec).await.map(|_| ())
    }

    /// The core of every front end's network creation: validates a network against the others
    /// (VNI, overlapping subnets), allocates what was not given (VNI, conntrack zone), stores it
    /// and makes its bridge and VXLAN device. A network that exists already is converged, not
    /// refused (dockerd retries CreateNetwork after a failed attempt).
    pub async fn create(&mut self, spec: NetworkSpec) -> Result<Network> {
        if let Some(n) = self.store.network(&spec.id)? {
            self.dp.ensure_network(net_spec(&n)).await?;
            self.ensure_gateway(&n).await?;
            return Ok(n);
        }
        let others = self.store.networks()?;
        if let Some(v) = spec.vni {
            if let Some(o) = others.iter().find(|o| o.vni == v) {
                return Err(invalid(format!("VNI {v} is already used by network {}", o.id)));
            }
        }
        for p in spec.ipv4_pools.iter().chain(&spec.ipv6_pools) {
            let c = Cidr::parse(p).map_err(|e| anyhow!(e))?;
            // Overlapping subnets are separate segments only when both sides chose their VNI:
            // then the operator deliberately keeps them apart (tenants, test networks).
            for o in others.iter().filter(|o| spec.vni.is_none() || !o.options.contains_key(options::VNI)) {
                if let Some(q) = o.ipv4_pools.iter().chain(&o.ipv6_pools).find(|q| {
                    Cidr::parse(q).map(|q| q.overlaps(&c)).unwrap_or(false)
                }) {
                    return Err(invalid(format!(
                        "subnet {p} overlaps subnet {q} of oncache network {} (networks given explicit, different {} values may overlap)",
                        o.id,
                        options::VNI
                    )));
                }
            }
        }
        let used: Vec<u32> = others.iter().map(|o| o.vni).collect();
        let vni = match spec.vni {
            Some(v) => v,
            None => options::allocate_vni(&used).ok_or_else(|| anyhow!("no free VNI left"))?,
        };
        let mtu = options::mtu(spec.mtu, self.dp.underlay.mtu).map_err(invalid)?;
        let zones: Vec<u16> = others.iter().map(|o| o.zone).collect();
        let zone = options::allocate_zone(vni, &zones).ok_or_else(|| anyhow!("no free conntrack zone left on this host"))?;
        let n = Network {
            id: spec.id,
            vni,
            mtu,
            ipv4_pools: spec.ipv4_pools,
            ipv6_pools: spec.ipv6_pools,
            fastpath: spec.fastpath,
            options: spec.options,
            created: now(),
            zone,
            ipam: spec.ipam,
        };
        self.store.put_network(&n)?;
        crashpoint::here(crashpoint::NETWORK_STORED);
        if let Err(e) = self.dp.add_zone(vni, zone) {
            log::warn!("network {}: {e:#}; its connections share the host's conntrack zone", n.id);
        }
        let made = async {
            self.dp.ensure_network(net_spec(&n)).await?;
            self.ensure_gateway(&n).await
        };
        if let Err(e) = made.await {
            // Leave neither a record nor half-made links or rules behind a failed create.
            self.dp.remove_zone(vni, zone);
            if let (Some(_), Some(subnet)) = (&n.ipam, n.ipv4_pools.first()) {
                self.dp.remove_gateway_rules(vni, subnet);
            }
            let _ = self.dp.remove_network(vni).await;
            self.store.delete_network(&n.id)?;
            return Err(e);
        }
        self.sync_fast_networks()?;
        log::info!("network {} created: VNI {vni}, MTU {mtu}, fast path {}", n.id, if n.fastpath { "on" } else { "off" });
        Ok(n)
    }

    /// The gateway address of a network whose addresses oncache manages, on its bridge.
    async fn ensure_gateway(&self, n: &Network) -> Result<()> {
        let Some(ipam) = &n.ipam else { return Ok(()) };
        let gw = Cidr::parse(&ipam.gateway).map_err(|e| anyhow!("network {}: gateway: {e}", n.id))?;
        match gw.addr {
            IpAddr::V4(a) => self.dp.ensure_gateway(n.vni, a, gw.prefix).await?,
            IpAddr::V6(_) => bail!("network {}: only IPv4 gateways are supported", n.id),
        }
        if let Some(subnet) = n.ipv4_pools.first() {
            if let Err(e) = self.dp.add_gateway_rules(n.vni, subnet) {
                log::warn!("network {}: {e:#}; its containers may not reach the outside", n.id);
            }
        }
        Ok(())
    }

    /// A network as a front end that names networks itself (CNI: conflist name and VNI) wants
    /// it: created when missing, converged when it matches, re-made when it differs and has
    /// no endpoints; a network in use that differs is refused, naming the difference.
    pub async fn ensure_network(&mut self, spec: NetworkSpec) -> Result<Network> {
        if let Some(n) = self.store.network(&spec.id)? {
            let same = Some(n.vni) == spec.vni && n.ipv4_pools == spec.ipv4_pools && n.ipv6_pools == spec.ipv6_pools && n.ipam == spec.ipam
                && n.fastpath == spec.fastpath
                && options::mtu(spec.mtu, self.dp.underlay.mtu).ok() == Some(n.mtu);
            if !same {
                let used = self.store.endpoints_of(&n.id)?.len();
                if used > 0 {
                    return Err(invalid(format!(
                        "network {} exists here with VNI {}, subnets {:?}, {:?}, and {used} attachment(s); the configuration now asks for VNI {:?}, subnets {:?}, {:?}: remove its containers first",
                        n.id, n.vni, n.ipv4_pools, n.ipam, spec.vni, spec.ipv4_pools, spec.ipam
                    )));
                }
                log::info!("network {}: configuration changed, re-making it", n.id);
                self.drop_network(&n.id).await?;
            }
        }
        self.create(spec).await
    }

    pub async fn delete_network(&mut self, id: &str) -> Result<()> {
        self.drop_network(checked("network", id)?).await
    }

    /// Removes a network (any front end's), its endpoints' links and records with it.
    async fn drop_network(&mut self, id: &str) -> Result<()> {
        let Some(n) = self.store.network(id)? else {
            return Ok(());
        };
        // dockerd deletes endpoints first; an operator's forced removal may not have.
        for ep in self.store.endpoints_of(id)? {
            self.unplug(&ep.id, Some(&ep), Some(n.vni)).await?;
            self.store.delete_endpoint(&ep.id)?;
        }
        let theirs: Vec<_> = self.remotes.range(cluster::view::in_network(n.vni)).map(|(k, _)| *k).collect();
        self.drop_remotes(theirs).await?;
        if let Some(f) = self.fast.as_mut() {
            f.maps.remove_network(n.vni)?;
        }
        self.dp.remove_network(n.vni).await?;
        self.dp.remove_zone(n.vni, n.zone);
        if let (Some(_), Some(subnet)) = (&n.ipam, n.ipv4_pools.first()) {
            self.dp.remove_gateway_rules(n.vni, subnet);
        }
        crashpoint::here(crashpoint::NETWORK_UNLINKED);
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
        if let Some(name) = id.strip_prefix("cni:") {
            naming::check_cni_name(name).map_err(|e| anyhow!(e))?;
        } else {
            checked("network", id)?;
        }
        let n = self.network(id)?;
        let joined = self.store.endpoints_of(&n.id)?.iter().filter(|e| e.sandbox.is_some()).count();
        if joined > 0 && !force {
            bail!("network {id} still has {joined} joined endpoint(s); stop those containers first, or force it");
        }
        self.drop_network(id).await
    }

    /// Docker's CreateEndpoint: libnetwork's request translated into the core's
    /// [`EndpointSpec`] (the address dockerd's IPAM chose, the MAC it may set).
    pub async fn create_endpoint(&self, req: &api::CreateEndpointRequest) -> Result<api::CreateEndpointResponse> {
        checked("endpoint", &req.endpoint_id)?;
        checked("network", &req.network_id)?;
        let iface = req.interface.clone().unwrap_or_default();
        let given = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let mac = match given(&iface.mac_address) {
            Some(m) => Some(naming::parse_mac(&m).map_err(|e| anyhow!(e))?),
            None => None,
        };
        let spec = EndpointSpec {
            id: req.endpoint_id.clone(),
            network_id: req.network_id.clone(),
            ipv4: given(&iface.address),
            ipv6: given(&iface.address_ipv6),
            mac,
        };
        let ep = self.add_endpoint(spec)?;
        // dockerd rejects a response that repeats a field it set itself.
        let interface = iface.mac_address.is_empty().then(|| api::EndpointInterface {
            mac_address: ep.mac.clone(),
            ..Default::default()
        });
        Ok(api::CreateEndpointResponse { interface })
    }

    /// The core of an endpoint whose front end moves its links itself (Docker): checked and
    /// stored before it is acknowledged; the same request again returns what is stored.
    pub fn add_endpoint(&self, spec: EndpointSpec) -> Result<Endpoint> {
        let n = self.network(&spec.network_id)?;
        for a in spec.ipv4.iter().chain(spec.ipv6.iter()) {
            Cidr::parse(a).map_err(|e| anyhow!("endpoint address: {e}"))?;
        }
        let mac = spec.mac.unwrap_or_else(|| match spec.ipv4.as_deref().map(|a| Cidr::parse(a).map(|c| c.addr)) {
            Some(Ok(IpAddr::V4(ip))) => naming::mac_for(ip),
            _ => naming::random_mac(),
        });
        match self.store.endpoint(&spec.id)? {
            Some(e) if e.network_id == n.id => Ok(e),
            Some(e) => bail!("endpoint {} already belongs to network {}", e.id, e.network_id),
            None => {
                if let Some(other) = self.tag_owner(&spec.id)? {
                    bail!(
                        "endpoint ID {} shares its first characters ({}) with endpoint {other}: oncache names the endpoint's links by them",
                        spec.id,
                        naming::ep_tag(&spec.id)
                    );
                }
                let e = Endpoint {
                    id: spec.id,
                    network_id: n.id.clone(),
                    ipv4: spec.ipv4,
                    ipv6: spec.ipv6,
                    mac: naming::format_mac(mac),
                    sandbox: None,
                    joined_at: 0,
                    cni: None,
                };
                self.store.put_endpoint(&e)?;
                crashpoint::here(crashpoint::ENDPOINT_STORED);
                Ok(e)
            }
        }
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
        crashpoint::here(crashpoint::DELETE_UNLINKED);
        if let Some(ep) = self.store.delete_endpoint(id)? {
            if ep.sandbox.is_some() {
                self.publish().await?;
            }
            log::info!("endpoint {id} deleted");
        }
        Ok(())
    }

    /// Docker's Join: the core's [`join_endpoint`](Self::join_endpoint), answered with the
    /// container end for dockerd to move.
    pub async fn join(&mut self, req: &api::JoinRequest) -> Result<api::JoinResponse> {
        let src = self.join_endpoint(checked("endpoint", &req.endpoint_id)?, &req.sandbox_key).await?;
        Ok(api::JoinResponse {
            // No gateway: Docker connects the container to docker_gwbridge for outside traffic.
            interface_name: api::InterfaceName { src_name: src, dst_prefix: "eth".into() },
            ..Default::default()
        })
    }

    /// Joins a stored endpoint to a sandbox: its veth pair on the bridge (the front end moves
    /// the container end, named as returned), the fast path, the announcement.
    pub async fn join_endpoint(&mut self, id: &str, sandbox: &str) -> Result<String> {
        let mut ep = self.store.endpoint(id)?.ok_or_else(|| anyhow!("endpoint {id} not found (CreateEndpoint first)"))?;
        let n = self.network(&ep.network_id)?;
        self.dp.ensure_network(net_spec(&n)).await?;
        let src = naming::veth_peer(&ep.id);
        if ep.sandbox.as_deref() == Some(sandbox) && self.dp.link_index(&naming::veth_host(&ep.id)).await?.is_some() {
            // A repeated Join: the container end may already be in the sandbox; keep it.
            self.dp.reattach_veth(&ep.id, n.vni).await?;
            if let Err(e) = self.plug_fast(&ep, &n).await {
                log::warn!("endpoint {}: fast path not attached, slow path only: {e:#}", ep.id);
            }
            return Ok(src);
        }
        let mac = naming::parse_mac(&ep.mac).map_err(|e| anyhow!(e))?;
        let started = std::time::Instant::now();
        let src = self.dp.ensure_veth(&ep.id, net_spec(&n), mac).await?;
        let links = started.elapsed();
        crashpoint::here(crashpoint::JOIN_LINKED);
        ep.sandbox = Some(sandbox.to_string());
        ep.joined_at = now_ms();
        if let Err(e) = self.store.put_endpoint(&ep) {
            let _ = self.dp.remove_veth(&ep.id).await;
            return Err(e.into());
        }
        crashpoint::here(crashpoint::JOIN_STORED);
        // The address lives here now: what other hosts had of it is stale.
        let mine: Vec<_> = addrs_of(&ep).into_iter().map(|ip| (n.vni, ip)).collect();
        self.drop_remotes(mine).await?;
        let plugged = std::time::Instant::now();
        if let Err(e) = self.plug_fast(&ep, &n).await {
            log::warn!("endpoint {}: fast path not attached, slow path only: {e:#}", ep.id);
        }
        let fast = plugged.elapsed();
        crashpoint::here(crashpoint::JOIN_FAST);
        self.publish_joined(&ep, n.vni).await;
        // The steps' times tell the kernel's share from oncache's (bench control reads them).
        log::info!(
            "endpoint {} joined {sandbox} via {src} in {} µs (links {} µs, fast path {} µs)",
            ep.id,
            started.elapsed().as_micros(),
            links.as_micros(),
            fast.as_micros()
        );
        Ok(src)
    }

    /// Attaches a container interface (CNI ADD): the address (requested, the one it had, or
    /// the lowest free in this host's range), the MAC, the record, the links in the container's
    /// namespace, the fast path and the announcement to the other hosts. An attachment that
    /// exists is replaced: its links go first.
    pub async fn attach(&mut self, a: AttachSpec<'_>) -> Result<Attached> {
        let n = self.network(a.network_id)?;
        let ipam = n.ipam.clone().ok_or_else(|| anyhow!("network {} gets its addresses from Docker, not from oncache", n.id))?;
        let subnet = n.ipv4_pools.first().map(|p| Cidr::parse(p)).transpose().map_err(|e| anyhow!(e))?;
        let subnet = subnet.ok_or_else(|| anyhow!("network {} has no IPv4 subnet", n.id))?;
        let gw = Cidr::parse(&ipam.gateway).map_err(|e| anyhow!(e))?;
        let gateway = v4(&gw);
        let id = naming::cni_endpoint_id(&a.owner.container_id, &a.owner.ifname);
        if let Some(other) = self.tag_owner(&id)? {
            bail!("attachment {id} shares its link names ({}) with endpoint {other}", naming::veth_host(&id));
        }
        let old = self.store.endpoint(&id)?;
        let kept = old.as_ref().filter(|o| o.network_id == n.id).and_then(ipv4_of);
        if old.is_some() {
            log::info!("attachment {id} ({} {}) exists: replacing it", a.owner.container_id, a.owner.ifname);
            self.delete_endpoint(&id).await?;
        }
        let others: Vec<Endpoint> = self.store.endpoints_of(&n.id)?;
        let taken = |ip: Ipv4Addr| {
            others.iter().any(|e| ipv4_of(e) == Some(ip)) || self.remotes.contains_key(&(n.vni, IpAddr::V4(ip))) || Some(ip) == gateway
        };
        let ip = match a.ip {
            Some(ip) => {
                if !subnet.overlaps(&Cidr { addr: IpAddr::V4(ip), prefix: 32 }) {
                    return Err(invalid(format!("requested address {ip} is outside the subnet {subnet} of network {}", n.id)));
                }
                if taken(ip) {
                    return Err(invalid(format!("requested address {ip} is already in use on network {}", n.id)));
                }
                ip
            }
            None => match kept.filter(|ip| !taken(*ip)) {
                Some(ip) => ip,
                None => {
                    let range = Cidr::parse(&ipam.range).map_err(|e| anyhow!(e))?;
                    free_address(&subnet, &range, &taken)
                        .ok_or_else(|| anyhow!("no free address left in {} (network {})", ipam.range, n.id))?
                }
            },
        };
        let mac = a.mac.unwrap_or_else(|| naming::mac_for(ip));
        let cidr = Cidr { addr: IpAddr::V4(ip), prefix: subnet.prefix };
        let ep = Endpoint {
            id: id.clone(),
            network_id: n.id.clone(),
            ipv4: Some(cidr.to_string()),
            ipv6: None,
            mac: naming::format_mac(mac),
            sandbox: Some(a.owner.netns.clone()),
            joined_at: now_ms(),
            cni: Some(a.owner.clone()),
        };
        self.dp.ensure_network(net_spec(&n)).await?;
        self.ensure_gateway(&n).await?;
        // Stored before the links exist: after a crash, a record without links is repaired or
        // removed (DEL, GC); links without a record would be nobody's.
        self.store.put_endpoint(&ep)?;
        let side = crate::dataplane::ContainerSide {
            netns: a.netns,
            netns_path: &a.owner.netns,
            ifname: &a.owner.ifname,
            mac,
            ip,
            prefix: subnet.prefix,
            gateway,
        };
        let (host_veth, host_mac) = match self.dp.plug_container(&id, net_spec(&n), &side).await {
            Ok(h) => h,
            Err(e) => {
                self.store.delete_endpoint(&id)?;
                return Err(e);
            }
        };
        let mine: Vec<_> = addrs_of(&ep).into_iter().map(|ip| (n.vni, ip)).collect();
        self.drop_remotes(mine).await?;
        if let Err(e) = self.plug_fast(&ep, &n).await {
            log::warn!("attachment {id}: fast path not attached, slow path only: {e:#}");
        }
        self.publish().await?;
        log::info!("attachment {id} ({} {} in {}): {cidr} {} via {host_veth}", a.owner.container_id, a.owner.ifname, a.owner.netns, ep.mac);
        Ok(Attached { endpoint: ep, host_veth, host_mac, ip: cidr, gateway })
    }

    /// Detaches a container interface (CNI DEL): links, fast path, record; nothing there is
    /// fine. A DEL that was queued at `queued_at` (ms) while the daemon was down spares an
    /// attachment made again after it.
    pub async fn detach(&mut self, id: &str, queued_at: Option<u64>) -> Result<()> {
        if let (Some(at), Some(ep)) = (queued_at, self.attachment(id)?) {
            if ep.joined_at > at {
                log::info!("queued DEL of {id} skipped: attached again after it was queued");
                return Ok(());
            }
        }
        self.delete_endpoint(id).await
    }

    /// The attachment with this endpoint ID, if stored (and made through CNI).
    pub fn attachment(&self, id: &str) -> Result<Option<Endpoint>> {
        Ok(self.store.endpoint(id)?.filter(|e| e.cni.is_some()))
    }

    /// Checks an attachment (CNI CHECK): its record, its host end, and its interface in the
    /// container's namespace with its address.
    pub async fn check_attachment(&self, id: &str, network_id: &str, netns: &std::fs::File) -> Result<()> {
        let ep = self.attachment(id)?.ok_or_else(|| anyhow!("no attachment {id} on this host"))?;
        if ep.network_id != network_id {
            bail!("attachment {id} belongs to network {}, not {network_id}", ep.network_id);
        }
        let veth = naming::veth_host(id);
        if self.dp.link_index(&veth).await?.is_none() {
            bail!("the host end {veth} of attachment {id} is missing");
        }
        let owner = ep.cni.as_ref().expect("filtered");
        let ip = ipv4_of(&ep).ok_or_else(|| anyhow!("attachment {id} has no IPv4 address"))?;
        self.dp.check_container(netns, &owner.ifname, ip).await
    }

    /// Removes the CNI attachments of a network that are not in `keep` (endpoint IDs): CNI GC.
    /// Returns the IDs removed.
    pub async fn retain_attachments(&mut self, network_id: &str, keep: &HashSet<String>) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for ep in self.store.endpoints_of(network_id)?.into_iter().filter(|e| e.cni.is_some()) {
            if !keep.contains(&ep.id) {
                self.delete_endpoint(&ep.id).await?;
                gone.push(ep.id);
            }
        }
        if !gone.is_empty() {
            log::info!("network {network_id}: garbage-collected attachments {gone:?}");
        }
        Ok(gone)
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
        let nl = self.dp.netlink().clone();
        self.fast()?.attach_endpoint(&nl, ifindex, info).await
    }

    /// Docker's Leave.
    pub async fn leave(&mut self, req: &api::LeaveRequest) -> Result<()> {
        self.leave_endpoint(checked("endpoint", &req.endpoint_id)?).await
    }

    /// Takes an endpoint out of its sandbox (links and fast path gone, record kept).
    pub async fn leave_endpoint(&mut self, id: &str) -> Result<()> {
        let ep = self.store.endpoint(id)?;
        if ep.is_none() && self.tag_owner(id)?.is_some() {
            return Ok(()); // not ours to touch: those links belong to another endpoint
        }
        let vni = self.vni_of(ep.as_ref())?;
        self.unplug(id, ep.as_ref(), vni).await?;
        crashpoint::here(crashpoint::LEAVE_UNLINKED);
        if let Some(mut ep) = ep {
            if ep.sandbox.take().is_some() {
                self.store.put_endpoint(&ep)?;
                crashpoint::here(crashpoint::LEAVE_STORED);
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
        self.drop_remotes(gone).await?;
        if let (Some(f), IpAddr::V4(v4)) = (self.fast.as_mut(), ip) {
            f.maps.forget_peer(v4.octets())?;
        }
        Ok(())
    }

    pub fn fast_stats(&mut self) -> Result<fastpath::maps::Stats> {
        self.fast()?.stats()
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

    /// The host's ruleset changed (an nftables commit): admitted flows go back to the slow
    /// path, to be judged by the new rules (a new firewall epoch: no walk of the flows).
    pub fn firewall_changed(&mut self) -> Result<()> {
        let Some(f) = self.fast.as_mut() else { return Ok(()) };
        f.maps.withdraw_flows()?;
        log::debug!("firewall changed: admitted flows back to the slow path");
        Ok(())
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
                Some(f) => format!("on ({})", f.attachment()),
                None => format!("off: {}", self.fast_off),
            },
            container_link: crate::dataplane::CONTAINER_LINK.into(),
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
        // After a reboot (or in a new namespace) what was learned from the old one's packets
        // (outer headers: next-hop MACs and interfaces; admitted flows) describes links that
        // are gone: drop it before anything is attached.
        let boot = crate::dataplane::boot_identity();
        let last = self.store.boot()?;
        if last.as_deref().is_some_and(|b| b != boot) {
            let dropped = match self.fast.as_mut() {
                Some(f) => f.maps.flush()?,
                None => 0,
            };
            log::info!("a new boot or network namespace since the last start: {dropped} learned fast-path entries dropped");
        }
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
            self.dp.ensure_network(net_spec(n)).await.with_context(|| format!("restoring network {}", n.id))?;
            if let Err(e) = self.dp.settle_bridge(n.vni).await {
                log::warn!("network {}: {e:#}; its bridge keeps the settings it has", n.id);
            }
            self.ensure_gateway(n).await.with_context(|| format!("restoring network {}", n.id))?;
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
        self.store.set_boot(&boot)?;
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
        for ep in endpoints.iter().filter(|e| e.sandbox.is_some()) {
            let Some(n) = networks.iter().find(|n| n.id == ep.network_id) else { continue };
            let veth = naming::veth_host(&ep.id);
            let Some(ifindex) = self.dp.link_index(&veth).await? else { continue };
            if let Err(e) = self.plug_fast(ep, n).await {
                log::warn!("endpoint {}: fast path not re-attached: {e:#}", ep.id);
                continue;
            }
            live.push(ifindex);
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
        let links = f.prune_links(&underlay)?;
        log::info!("fast path: {} endpoints attached, {stale} stale endpoints and links {links:?} removed", live.len());
        Ok(())
    }
}

/// The lowest address of `range` that is a host address of `subnet` (neither its network nor
/// its broadcast address) and not `taken`.
fn free_address(subnet: &Cidr, range: &Cidr, taken: &dyn Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let (IpAddr::V4(s), IpAddr::V4(r)) = (subnet.addr, range.addr) else { return None };
    let span = |a: Ipv4Addr, p: u8| {
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - u32::from(p)) };
        let base = u32::from(a) & mask;
        (base, base | !mask)
    };
    let (s_lo, s_hi) = span(s, subnet.prefix);
    let (r_lo, r_hi) = span(r, range.prefix);
    let (lo, hi) = (r_lo.max(s_lo), r_hi.min(s_hi));
    (lo..=hi)
        .filter(|a| subnet.prefix >= 31 || (*a != s_lo && *a != s_hi))
        .map(Ipv4Addr::from)
        .find(|a| !taken(*a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_range_and_skip_what_is_taken() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        let none = |_: Ipv4Addr| false;
        assert_eq!(free_address(&c("10.1.0.0/24"), &c("10.1.0.0/24"), &none), Some(Ipv4Addr::new(10, 1, 0, 1)));
        let gw = |a: Ipv4Addr| a == Ipv4Addr::new(10, 1, 0, 1);
        assert_eq!(free_address(&c("10.1.0.0/24"), &c("10.1.0.0/24"), &gw), Some(Ipv4Addr::new(10, 1, 0, 2)));
        assert_eq!(free_address(&c("10.1.0.0/24"), &c("10.1.0.128/25"), &none), Some(Ipv4Addr::new(10, 1, 0, 128)));
        // The broadcast address is never handed out.
        let all_but_last = |a: Ipv4Addr| a.octets()[3] < 255 && a.octets()[3] >= 128;
        assert_eq!(free_address(&c("10.1.0.0/24"), &c("10.1.0.128/25"), &all_but_last), None);
        // A range wider than the subnet is cut to it.
        assert_eq!(free_address(&c("10.1.0.0/30"), &c("10.1.0.0/16"), &gw), Some(Ipv4Addr::new(10, 1, 0, 2)));
    }
}
