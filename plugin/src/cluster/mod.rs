//! The control plane between hosts: each host publishes its local endpoints (VNI, IP, MAC)
//! through chitchat — scuttlebutt anti-entropy gossip with a phi-accrual failure detector, over
//! UDP on the underlay — and every host derives the remote endpoints it programs into its
//! kernel from what the live peer hosts publish ([`view`]). Anti-entropy means a host that
//! restarts, lost datagrams or rejoins converges to the truth by itself; a host that stops
//! gossiping is declared dead and its endpoints drop out everywhere.
//!
//! Only peers count: datagrams from any other address are dropped before chitchat sees them,
//! and state is read only for hosts whose gossip address is a peer's underlay address.

pub mod view;

use anyhow::{Context, Result};
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
pub use view::{Published, Remote};

/// UDP port of the gossip on the underlay.
pub const DEFAULT_PORT: u16 = 4788;
const CLUSTER_ID: &str = "oncache";
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// A host the failure detector calls dead keeps its endpoints this much longer, so that a
/// daemon that restarts never takes its containers' routes away from its peers: a service
/// restart is a second or two, but a managed-plugin re-create (disable, rm, create, enable) or
/// a dockerd restart under Swarm keeps it silent for about ten. Keeping a dead host's entries
/// longer costs little: its containers are unreachable anyway, and an address reused elsewhere
/// is taken over at once (the later join wins).
pub const DOWN_GRACE: Duration = Duration::from_secs(30);
/// After a start, entries of peers not heard from yet are kept this long (their hosts may
/// simply not have gossiped with us yet); after it, silence counts as absence.
pub const START_GRACE: Duration = Duration::from_secs(15);

/// How many endpoint keys a daemon's last publication holds, set with them: a generation
/// without it (a daemon that has just restarted) has not told its endpoints yet, and one whose
/// keys we hold fewer or more of is still arriving; either way its state means nothing yet.
const READY_KEY: &str = "ready";

/// The peer addresses whose datagrams and state count; shared with the transport.
type Allowed = Arc<RwLock<HashSet<IpAddr>>>;

pub struct Cluster {
    handle: ChitchatHandle,
    allowed: Allowed,
    port: u16,
    self_ip: IpAddr,
    started: Instant,
    /// When each peer was first seen without a live generation.
    down_since: std::sync::Mutex<HashMap<IpAddr, Instant>>,
    last_resync: std::sync::Mutex<Instant>,
}

/// What the cluster says now.
pub struct View {
    /// Each counted peer host with the endpoints it publishes.
    pub hosts: Vec<(IpAddr, Vec<Published>)>,
    /// Peers whose entries must be kept as they are: not heard from yet during [`START_GRACE`].
    pub pending: HashSet<IpAddr>,
    /// Whether to read back what the kernel holds before applying (every [`KERNEL_RESYNC`]).
    pub resync_kernel: bool,
}

/// How often the programmed entries are compared with what the kernel really holds.
pub const KERNEL_RESYNC: Duration = Duration::from_secs(5);

/// Sets `k` to `v` in this host's state unless it holds that already (a set is a new version,
/// gossiped to every peer).
fn put(me: &mut NodeState, k: &str, v: &str) {
    if me.get(k) != Some(v) {
        me.set(k, v);
    }
}

impl Cluster {
    /// Joins the cluster: gossips on `self_ip:port` with `peers` as seeds.
    pub async fn start(self_ip: IpAddr, port: u16, peers: &[IpAddr]) -> Result<Cluster> {
        let addr = SocketAddr::new(self_ip, port);
        let generation = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let allowed: Allowed = Arc::new(RwLock::new(peers.iter().copied().collect()));
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(format!("oncache-{self_ip}"), generation, addr),
            cluster_id: CLUSTER_ID.into(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: addr,
            seed_nodes: peers.iter().map(|p| SocketAddr::new(*p, port).to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                initial_interval: GOSSIP_INTERVAL * 2,
                // Dead hosts' state is forgotten after this (it is no longer counted long before).
                dead_node_grace_period: Duration::from_secs(600),
                ..Default::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let transport = PeersOnly { allowed: allowed.clone() };
        let handle = spawn_chitchat(config, Vec::new(), &transport)
            .await
            .with_context(|| format!("starting the gossip on {addr}/udp"))?;
        let now = Instant::now();
        Ok(Cluster { handle, allowed, port, self_ip, started: now, down_since: Default::default(), last_resync: std::sync::Mutex::new(now) })
    }

    /// Sets the peer hosts; new ones are contacted at once.
    pub fn set_peers(&self, peers: &[IpAddr]) {
        let new: Vec<IpAddr> = {
            let mut a = self.allowed.write().unwrap_or_else(|e| e.into_inner());
            let new = peers.iter().copied().filter(|p| !a.contains(p)).collect();
            *a = peers.iter().copied().collect();
            new
        };
        for p in new {
            let _ = self.handle.gossip(SocketAddr::new(p, self.port));
        }
    }

    /// Publishes exactly `eps` as this host's endpoints.
    pub async fn publish(&self, eps: &[Published]) {
        let want: BTreeMap<String, String> = eps.iter().map(|e| (e.key(), e.value())).collect();
        self.handle
            .with_chitchat(|c| {
                let me = c.self_node_state();
                let stale: Vec<String> = me
                    .key_values()
                    .filter(|(k, v)| k.starts_with(view::KEY_PREFIX) && want.get(*k).map(String::as_str) != Some(*v))
                    .map(|(k, _)| k.to_string())
                    .collect();
                for k in stale {
                    me.delete(&k);
                }
                for (k, v) in &want {
                    put(me, k, v);
                }
                put(me, READY_KEY, &want.len().to_string());
            })
            .await;
    }

    /// Adds (or replaces) this host's entries for `eps` and leaves the others: what a Join
    /// changes, without [`publish`](Self::publish)'s look at every endpoint there is.
    pub async fn publish_more(&self, eps: &[Published]) {
        self.handle
            .with_chitchat(|c| {
                let me = c.self_node_state();
                // The ready count is the number of endpoint keys: it grows by the keys that are
                // new (counted in full only before the first publish set it).
                let ready = me.get(READY_KEY).and_then(|n| n.parse::<usize>().ok());
                let mut added = 0;
                for e in eps {
                    let k = e.key();
                    added += usize::from(me.get(&k).is_none());
                    put(me, &k, &e.value());
                }
                let count = ready.map_or_else(|| me.key_values().filter(|(k, _)| k.starts_with(view::KEY_PREFIX)).count(), |n| n + added);
                put(me, READY_KEY, &count.to_string());
            })
            .await;
    }

    /// The endpoints each counted peer publishes: its newest live generation that has
    /// published (a live one that has not yet makes the peer pending: what is programmed for it
    /// stays); a peer with no live generation for less than [`DOWN_GRACE`], its last state.
    pub async fn view(&self) -> View {
        let allowed = self.allowed.read().unwrap_or_else(|e| e.into_inner()).clone();
        // Per peer: (live and ready, generation) → its endpoints; and whether any is live.
        type Best = BTreeMap<IpAddr, ((bool, u64), Vec<Published>)>;
        let (best, live): (Best, HashSet<IpAddr>) = self
            .handle
            .with_chitchat(|c| {
                let live_ids: HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                let mut best: Best = BTreeMap::new();
                let mut live = HashSet::new();
                for (id, state) in c.node_states() {
                    let ip = id.gossip_advertise_addr.ip();
                    if ip == self.self_ip || !allowed.contains(&ip) {
                        continue;
                    }
                    let is_live = live_ids.contains(id);
                    if is_live {
                        live.insert(ip);
                    }
                    let eps: Vec<Published> = state.key_values().filter_map(|(k, v)| Published::parse(k, v)).collect();
                    let keys = state.key_values().filter(|(k, _)| k.starts_with(view::KEY_PREFIX)).count();
                    let complete = state.get(READY_KEY).and_then(|n| n.parse::<usize>().ok()) == Some(keys);
                    log::trace!("gossip state of {ip} generation {} (live {is_live}): {:?}", id.generation_id, state.key_values().collect::<Vec<_>>());
                    if !complete {
                        continue; // restarted and not told its endpoints yet, or still arriving
                    }
                    let rank = (is_live, id.generation_id);
                    if best.get(&ip).is_some_and(|(r, _)| *r >= rank) {
                        continue;
                    }
                    best.insert(ip, (rank, eps));
                }
                (best, live)
            })
            .await;
        let now = Instant::now();
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        down.retain(|ip, _| !live.contains(ip));
        let mut hosts = Vec::new();
        let mut pending = HashSet::new();
        for (ip, ((ready_live, _), eps)) in best {
            if !ready_live && live.contains(&ip) {
                pending.insert(ip); // a new generation is on its way: keep what it had
                continue;
            }
            let gone_for = if ready_live { Duration::ZERO } else { now - *down.entry(ip).or_insert(now) };
            if gone_for < DOWN_GRACE {
                hosts.push((ip, eps));
            }
        }
        // Live but with no ready generation at all (we have never seen it ready).
        pending.extend(live.iter().filter(|ip| !hosts.iter().any(|(h, _)| h == *ip)).copied());
        let heard: HashSet<IpAddr> = hosts.iter().map(|(ip, _)| *ip).chain(down.keys().copied()).chain(pending.iter().copied()).collect();
        if self.started.elapsed() < START_GRACE {
            pending.extend(allowed.iter().filter(|p| !heard.contains(p)).copied());
        }
        let resync_kernel = {
            let mut last = self.last_resync.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.elapsed() >= KERNEL_RESYNC;
            if due {
                *last = now;
            }
            due
        };
        View { hosts, pending, resync_kernel }
    }

    /// Peers with a live generation, for `oncache status`.
    pub async fn live_peers(&self) -> Vec<IpAddr> {
        let me = self.self_ip;
        self.handle
            .with_chitchat(|c| c.live_nodes().map(|id| id.gossip_advertise_addr.ip()).filter(|ip| *ip != me).collect())
            .await
    }
}

/// chitchat's UDP transport, keeping to the peers: nothing is sent to, or accepted from, any
/// other address (chitchat's own socket decodes a datagram before its source can be judged;
/// its encoding is private to the crate).
struct PeersOnly {
    allowed: Allowed,
}

#[async_trait]
impl Transport for PeersOnly {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        Ok(Box::new(PeersOnlySocket { inner, allowed: self.allowed.clone(), dropped: HashMap::new() }))
    }
}

/// A dropped sender is logged once in this long: a host that left keeps gossiping to its old
/// peers, and a line per datagram would bury the rest of the log.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

struct PeersOnlySocket {
    inner: Box<dyn Socket>,
    allowed: Allowed,
    /// When a datagram from each dropped sender was last logged, and how many came since.
    dropped: HashMap<IpAddr, (Option<Instant>, u64)>,
}

impl PeersOnlySocket {
    fn allowed(&self, a: &SocketAddr) -> bool {
        self.allowed.read().unwrap_or_else(|e| e.into_inner()).contains(&a.ip())
    }
}

#[async_trait]
impl Socket for PeersOnlySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(&mut self, to: SocketAddr, envelope: chitchat::ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        if !self.allowed(&to) {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let r = self.inner.recv().await?;
            if self.allowed(&r.from_addr) {
                return Ok(r);
            }
            if self.dropped.len() >= 1024 {
                self.dropped.clear(); // many senders: forget them rather than grow
            }
            let (logged, since) = self.dropped.entry(r.from_addr.ip()).or_insert((None, 0));
            *since += 1;
            if logged.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
                log::debug!("gossip: dropped {since} datagram(s) from {}, not a peer (logged once a minute)", r.from_addr);
                (*logged, *since) = (Some(Instant::now()), 0);
            }
        }
    }
}
