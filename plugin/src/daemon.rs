//! `oncache daemon`: opens the store, brings the kernel in line with it, serves the socket.

use crate::cluster::{self, Cluster};
use crate::dataplane::Dataplane;
use crate::driver::Driver;
use crate::fastpath::{features, AttachMode, FastPath};
use crate::server;
use anyhow::{bail, Context, Result};
use oncache_store::Store;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

/// Every flag can also come from the environment (`ONCACHE_*`, shown in `--help`): that is how
/// `docker plugin set` configures the managed plugin.
#[derive(clap::Args, Debug)]
pub struct Config {
    /// Unix socket to serve; dockerd discovers plugins by the socket files in
    /// /run/docker/plugins, and the file name (oncache) is the driver name.
    #[arg(long, env = "ONCACHE_SOCKET", default_value = crate::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the persistent state (networks, endpoints, peers) lives.
    #[arg(long, env = "ONCACHE_STATE_DIR", default_value = "/var/lib/oncache")]
    pub state_dir: PathBuf,
    /// Interface VXLAN traffic leaves by [default: the interface of the default route].
    #[arg(long, env = "ONCACHE_UNDERLAY", value_name = "IFACE")]
    pub underlay: Option<String>,
    /// A peer host's underlay address (repeatable; in the environment, comma-separated); added
    /// to the stored peer set.
    #[arg(long = "peer", env = "ONCACHE_PEERS", value_delimiter = ',', value_name = "ADDR")]
    pub peers: Vec<IpAddr>,
    /// bpffs folder for the fast path's pinned programs, maps and links.
    #[arg(long, env = "ONCACHE_BPF_DIR", default_value = crate::DEFAULT_BPF_DIR)]
    pub bpf_dir: PathBuf,
    /// UDP port on the underlay where the hosts gossip which containers each has (the same on
    /// every host; 0: this host runs alone and tells no one).
    #[arg(long, alias = "announce-port", env = "ONCACHE_GOSSIP_PORT", default_value_t = cluster::DEFAULT_PORT)]
    pub gossip_port: u16,
    /// How to attach the fast path's programs to the underlay [default: tcx where the kernel
    /// has it (6.6+), otherwise clsact]. Endpoint veths always get a clsact qdisc bound to two
    /// tc blocks they all share, holding the programs: no RCU grace period per container, as
    /// TCX would cost, and no search of the kernel's list of every bound block.
    #[arg(long, env = "ONCACHE_TC_ATTACH", value_enum)]
    pub tc_attach: Option<AttachMode>,
    /// The scope the driver declares to dockerd: `local` (each dockerd keeps its own network
    /// records; hosts share a network by the same VNI and subnet) or `global` (Docker Swarm:
    /// the leader allocates networks, nodes get them from Swarm; needs the managed plugin).
    #[arg(long, env = "ONCACHE_SCOPE", value_enum, default_value_t = Scope::Local)]
    pub scope: Scope,
    /// Seconds between withdrawals of every admitted fast-path flow, so that the slow path
    /// judges each against the firewall again (a few slow-path packets per flow each time).
    /// For hosts whose firewall changes go unannounced: iptables-legacy, or no nftables
    /// notifications [default: 0 (off) when `iptables` is the nf_tables backend and its
    /// changes are followed, otherwise 5].
    #[arg(long, env = "ONCACHE_REJUDGE_SECS", value_name = "SECS")]
    pub rejudge_secs: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    Local,
    Global,
}

/// Starts the fast path, or says why it cannot run. A kernel without what it needs leaves the
/// slow path serving; a program the verifier rejects is a bug and stops the daemon.
fn start_fast_path(bpf_dir: &Path, attach: Option<AttachMode>, u: &crate::dataplane::Underlay) -> Result<std::result::Result<FastPath, String>> {
    // Fix what can be fixed before judging what is missing.
    if let Err(e) = features::ensure_bpffs(bpf_dir) {
        let why = format!("missing bpffs ({e:#})");
        log::warn!("fast path off, serving the slow path only: {why}");
        return Ok(Err(why));
    }
    let missing = features::missing(bpf_dir);
    if !missing.is_empty() {
        let why: Vec<String> = missing.iter().map(|c| format!("{} ({}; {})", c.name, c.detail, c.fix)).collect();
        let why = format!("missing {}", why.join(", "));
        log::warn!("fast path off, serving the slow path only: {why}");
        return Ok(Err(why));
    }
    let conf = oncache_common::Config {
        underlay_ifindex: u.index,
        underlay_mtu: u.mtu,
        underlay_ip: u.ip.octets(),
        admit_mark: oncache_common::ADMIT_MARK,
        // Kept from the pinned configuration, or a new one (Maps::set_config).
        epoch: 0,
    };
    let mode = attach.unwrap_or_else(AttachMode::detect);
    let fp = FastPath::start(bpf_dir, conf, &u.name, mode)?;
    log::info!("fast path on ({mode:?}): programs and maps pinned in {}", bpf_dir.display());
    Ok(Ok(fp))
}

pub async fn run(cfg: Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))?;
    let store = Store::open(&cfg.state_dir.join("db")).with_context(|| {
        format!("opening the state in {} (is another oncache daemon using it?)", cfg.state_dir.display())
    })?;
    let dp = Dataplane::new(cfg.underlay.as_deref()).await?;
    log::info!("underlay {} ({}, MTU {})", dp.underlay.name, dp.underlay.ip, dp.underlay.mtu);
    let peers: Vec<IpAddr> = store.peers()?.into_iter().chain(cfg.peers.iter().copied()).collect();
    let cluster = match cfg.gossip_port {
        0 => None,
        port => Some(Arc::new(Cluster::start(dp.underlay.ip.into(), port, &peers).await?)),
    };
    let underlay = dp.underlay.clone();
    let underlay_index = underlay.index;
    let driver = Driver::new(store, dp, Err("the daemon is starting".into()), cluster.clone(), cfg.scope == Scope::Global);
    let plugin = server::Plugin::new(driver);

    // dockerd gives a plugin a few seconds to answer its handshake (a managed plugin that is
    // slow to listen is disabled): serve at once, and let driver calls wait for the start-up
    // work (eBPF load, reconciling) that holds the driver until it is done.
    let (held, holding) = tokio::sync::oneshot::channel();
    let start = {
        let plugin = plugin.clone();
        let state_dir = cfg.state_dir.clone();
        tokio::spawn(async move {
            let mut d = plugin.driver.lock().await;
            let _ = held.send(());
            d.set_fast(start_fast_path(&cfg.bpf_dir, cfg.tc_attach, &underlay)?);
            for p in &cfg.peers {
                d.add_peer(*p).await.with_context(|| format!("--peer {p}"))?;
            }
            d.reconcile().await.context("reconciling the kernel with the stored state")?;
            // DELs a CNI runtime made while the daemon was down (before any new call).
            let applied = crate::cni::serve::apply_queue(&mut d, &state_dir).await;
            if applied > 0 {
                log::info!("applied {applied} queued CNI DELs");
            }
            anyhow::Ok(())
        })
    };
    let _ = holding.await;
    let listener = bind(&cfg.socket).await?;
    log::info!("serving the oncache network driver on {} (scope {:?})", cfg.socket.display(), cfg.scope);
    notify_ready();
    if let Some(c) = cluster {
        tokio::spawn(follow_cluster(c, plugin.clone()));
    }
    tokio::spawn(follow_next_hops(underlay_index, plugin.clone()));
    tokio::spawn(follow_firewall(plugin.clone(), cfg.rejudge_secs));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = match start.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("start-up task: {e}")),
        };
        match r {
            Ok(()) => log::info!("started"),
            Err(e) => {
                let _ = failed_tx.send(e);
            }
        }
    });
    let mut failure = None;
    let stop = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            Ok(e) = failed_rx => failure = Some(e),
        }
    };
    server::serve(listener, plugin.clone(), stop).await;
    let _ = std::fs::remove_file(&cfg.socket);
    if let Some(e) = failure {
        return Err(e);
    }
    // Wait for a call in progress to finish; links stay up so containers keep their traffic.
    let _idle = plugin.driver.lock().await;
    log::info!("stopped; the data plane stays in place");
    Ok(())
}

/// Binds the socket, replacing a stale file but never a live daemon's socket.
async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("{} is served by a running process (another oncache daemon?)", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // Root only: the driver creates and deletes network devices on request.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Tells systemd (Type=notify) that the socket is being served, so docker.service starts after.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(Path::new(&path)),
    };
    let sent = addr.and_then(|a| {
        let s = std::os::unix::net::UnixDatagram::unbound()?;
        s.send_to_addr(b"READY=1", &a)
    });
    if let Err(e) = sent {
        log::warn!("notifying systemd: {e}");
    }
}

/// Applies what the cluster says to the kernel, every gossip interval: other hosts'
/// containers joining, leaving, moving; hosts going away.
async fn follow_cluster(cluster: Arc<Cluster>, plugin: server::Shared) {
    let mut tick = tokio::time::interval(cluster::GOSSIP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let view = cluster.view().await;
        if let Err(e) = plugin.driver.lock().await.apply_view(&view).await {
            log::warn!("applying the cluster's view: {e:#}");
        }
    }
}

/// The re-judging interval where firewall changes go unannounced: the bound on how long a
/// new rule may miss an admitted flow there.
const DEFAULT_REJUDGE_SECS: u64 = 5;

async fn rejudge_every(plugin: server::Shared, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = plugin.driver.lock().await.firewall_changed() {
            log::warn!("withdrawing admitted flows to judge them again: {e:#}");
        }
    }
}

/// How long the ruleset must stay unchanged before admitted flows are withdrawn, and the
/// longest a burst of changes may delay that.
const FIREWALL_QUIET: std::time::Duration = std::time::Duration::from_millis(50);
const FIREWALL_BURST_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// Withdraws admitted flows whenever the ruleset changes, so that a new rule (a DROP in
/// DOCKER-USER, say) applies to flows already on the fast path too, within moments; and, where
/// changes go unannounced, every `rejudge_secs`.
async fn follow_firewall(plugin: server::Shared, rejudge_secs: Option<u64>) {
    let watch = crate::dataplane::nftables::RulesetWatch::open();
    let unannounced = match &watch {
        Err(e) => Some(format!("{e:#}")),
        Ok(_) if crate::dataplane::firewall::iptables_is_legacy() => {
            Some("`iptables` is iptables-legacy, whose changes the kernel does not announce".into())
        }
        Ok(_) => None,
    };
    let secs = rejudge_secs.unwrap_or(if unannounced.is_some() { DEFAULT_REJUDGE_SECS } else { 0 });
    match (&unannounced, secs) {
        (Some(why), 0) => log::warn!("{why}: admitted flows keep the fast path after a firewall change until `oncache cache flush`"),
        (Some(why), s) => log::warn!("{why}: admitted flows are judged by the firewall again every {s} s"),
        (None, 0) => {}
        (None, s) => log::info!("admitted flows are judged by the firewall again every {s} s, and on every change"),
    }
    if secs > 0 {
        tokio::spawn(rejudge_every(plugin.clone(), std::time::Duration::from_secs(secs)));
    }
    let Ok(mut watch) = watch else { return };
    loop {
        if let Err(e) = watch.changed().await {
            log::warn!("{e:#}; no longer following firewall changes");
            return;
        }
        // A rule change is often a burst of transactions (each iptables command is one; Docker
        // creating docker_gwbridge is some 40 in 150 ms): absorb it until 50 ms pass quietly,
        // and withdraw once. Taken one by one they would withdraw again and again, for seconds
        // after the burst. A ruleset that never stops changing still withdraws twice a second.
        let deadline = tokio::time::Instant::now() + FIREWALL_BURST_MAX;
        loop {
            let quiet = (tokio::time::Instant::now() + FIREWALL_QUIET).min(deadline);
            match tokio::time::timeout_at(quiet, watch.changed()).await {
                Ok(Ok(())) if tokio::time::Instant::now() < deadline => continue,
                Ok(Ok(())) | Err(_) => break,
                Ok(Err(e)) => {
                    log::warn!("{e:#}; no longer following firewall changes");
                    return;
                }
            }
        }
        let mut d = plugin.driver.lock().await;
        if let Err(e) = d.firewall_changed() {
            log::warn!("withdrawing admitted flows after a firewall change: {e:#}");
        }
    }
}

/// Outer headers the fast path learned name the underlay's next hop (its MAC, the interface):
/// those a neighbour or route change makes stale go, and the next slow-path packet to that host
/// teaches the new one. A neighbour merely ageing (same MAC) changes nothing.
async fn follow_next_hops(underlay: u32, plugin: server::Shared) {
    use futures_util::StreamExt;
    let events = match crate::dataplane::netlink::Netlink::watch_next_hops(underlay) {
        Ok(e) => e,
        Err(e) => {
            log::warn!("not following neighbour and route changes (outer headers only refresh on restart): {e:#}");
            return;
        }
    };
    tokio::pin!(events);
    // The last MAC of each neighbour: a gateway's change must reach headers keyed by the hosts
    // behind it.
    let mut known = std::collections::HashMap::new();
    while let Some(ev) = events.next().await {
        let old = match ev {
            crate::dataplane::netlink::NextHop::Neighbour { ip, mac: Some(m) } => known.insert(ip, m).filter(|o| *o != m),
            crate::dataplane::netlink::NextHop::Neighbour { ip, mac: None } => known.remove(&ip),
            crate::dataplane::netlink::NextHop::Route => None,
        };
        match plugin.driver.lock().await.next_hop_changed(ev, old) {
            Ok(0) => {}
            Ok(n) => log::info!("underlay {ev:?}: {n} outer headers dropped, to be learned again"),
            Err(e) => log::warn!("dropping outer headers: {e:#}"),
        }
    }
}
