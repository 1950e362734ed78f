//! `oncache`: the daemon that serves the Docker network driver, and the operator's CLI.

use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

use oncache::{client, control, daemon, dataplane, fastpath, DEFAULT_BPF_DIR, DEFAULT_SOCKET};

/// oncache: a VXLAN container overlay for Docker and containerd, with an eBPF fast path.
///
/// Start the daemon (normally by systemd), then use `docker network create -d oncache NAME`,
/// or `oncache cni add-network NAME --subnet CIDR` for containerd, nerdctl and podman.
/// Logging follows RUST_LOG (e.g. RUST_LOG=debug); the default is info.
///
/// Run without arguments and with CNI_COMMAND in its environment (as CNI runtimes run plugins),
/// the binary is the oncache CNI plugin: install it as `oncache` in the runtimes' CNI plugin
/// folder (Debian: /usr/lib/cni).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Docker network driver on a unix socket (runs in the foreground).
    Daemon(daemon::Config),
    /// Manage the peer hosts (VTEPs) that this host's overlay networks reach.
    Peer {
        #[command(subcommand)]
        action: PeerAction,
        /// The daemon's socket.
        #[arg(long, global = true, env = "ONCACHE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove oncache's data plane from this host: pinned eBPF programs, maps and links, every
    /// oncache link and the firewall chains. Stop the daemon first; its stored state is kept
    /// (delete --state-dir to forget it).
    Uninstall {
        #[arg(long, default_value = DEFAULT_BPF_DIR)]
        bpf_dir: PathBuf,
    },
    /// Fast-path counters per program: hits, misses, learned, invalidated, rejected; with
    /// `sysctl kernel.bpf_stats_enabled=1`, also each program's runs and mean run time (its
    /// helpers included) since it was loaded.
    Stats {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "ONCACHE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Inspect or flush the fast path's caches.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        #[arg(long, global = true, env = "ONCACHE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Check what the fast path needs from this kernel and host, with what to do when missing.
    Doctor {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_BPF_DIR)]
        bpf_dir: PathBuf,
    },
    /// List oncache's networks, and remove those dockerd no longer has ("ghosts": a
    /// CreateNetwork that dockerd never followed up keeps its VNI and subnet until removed).
    Network {
        #[command(subcommand)]
        action: NetworkAction,
        #[arg(long, global = true, env = "ONCACHE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// CNI networks for containerd/nerdctl and podman: conflists in the runtimes' folder.
    ///
    /// The runtimes run the plugin binary `oncache` from their CNI folder (Debian:
    /// /usr/lib/cni; packaging/install.sh puts it there); it forwards every call to this
    /// daemon. A network is a VXLAN segment like a Docker oncache network: the same name, VNI and
    /// subnet on every host, a disjoint --ip-range per host. The daemon allocates addresses
    /// from the range, puts the gateway address on the bridge, and hosts learn each other's
    /// containers over the same control plane as Docker's networks.
    Cni {
        #[command(subcommand)]
        action: CniAction,
    },
    /// Show the daemon's networks, endpoints, peers and underlay.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's socket.
        #[arg(long, env = "ONCACHE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Show the egress, outer-header, ingress and flow (filter) entries.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Drop everything learned, so that every flow is judged by the slow path and the host
    /// firewall again. Needed after a firewall change only with iptables-legacy: nftables
    /// changes (Debian's iptables, nft) withdraw admitted flows by themselves.
    Flush,
}

#[derive(Subcommand)]
enum NetworkAction {
    /// Every oncache network with its VNI, subnets, endpoints, and whether dockerd (at
    /// DOCKER_HOST, default /var/run/docker.sock) still has it.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove networks by ID (a unique prefix will do): links, fast-path state and record.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Also when containers are still joined to it.
        #[arg(long)]
        force: bool,
    },
    /// Remove every oncache network that dockerd does not have and no container is joined to
    /// (CNI networks are left alone: they go with `oncache cni rm-network`).
    Prune {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum CniAction {
    /// Write the conflist DIR/NAME.conflist of a network.
    ///
    /// Written atomically (a temporary file renamed over it: runtimes never see half a file),
    /// with `"cniVersion": "1.0.0"`, the oncache plugin first and portmap chained for port
    /// mappings. Run it on every host with the same NAME, --subnet and --vni, and a disjoint
    /// --ip-range. Then: `nerdctl run --net NAME ...` or `podman run --network NAME ...` (CNI
    /// backend).
    AddNetwork {
        /// The network's name (letters, digits, `_`, `.`, `-`): the runtimes' `--net` value.
        name: String,
        /// The IPv4 subnet, the same on every host, e.g. 10.220.0.0/24.
        #[arg(long)]
        subnet: String,
        /// The VXLAN network identifier, the same on every host [default: derived from NAME].
        #[arg(long)]
        vni: Option<u32>,
        /// The part of the subnet this host hands out (disjoint on each host) [default: all].
        #[arg(long, value_name = "CIDR")]
        ip_range: Option<String>,
        /// The gateway address on each host's bridge [default: the subnet's first address].
        #[arg(long)]
        gateway: Option<String>,
        /// The MTU of the network's links [default: the underlay's less 50].
        #[arg(long)]
        mtu: Option<u32>,
        /// The conflist folder.
        #[arg(long, value_name = "DIR", default_value = oncache::cni::conflist::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
        /// The daemon's socket, written into the conflist when not the default.
        #[arg(long, env = "ONCACHE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The daemon's --state-dir (where a DEL waits while the daemon is down), written into
        /// the conflist when not the default.
        #[arg(long, env = "ONCACHE_STATE_DIR", default_value = oncache::cni::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Remove the conflist DIR/NAME.conflist, and the network from the daemon.
    ///
    /// When the daemon answers, the network's bridge, VXLAN device and record on this host go
    /// too (refused while containers are attached, unless --force).
    RmNetwork {
        name: String,
        #[arg(long, value_name = "DIR", default_value = oncache::cni::conflist::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
        #[arg(long, env = "ONCACHE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Also when containers are still attached (their links go with it).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PeerAction {
    /// Add a peer host by its underlay IP address; every network floods to it. Persistent.
    Add { address: IpAddr },
    /// Remove a peer host and every forwarding entry that points at it.
    Rm { address: IpAddr },
    /// List the peer hosts.
    List,
}

fn main() {
    // A CNI runtime runs its plugins without arguments, the call in the environment.
    if std::env::var_os("CNI_COMMAND").is_some() && std::env::args_os().len() == 1 {
        std::process::exit(oncache::cni::plugin::run());
    }
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // The daemon runs on two worker threads, so that a call blocked in the kernel or on disk
    // never holds up dockerd's handshake; the CLI needs one.
    let rt = match cli.command {
        Command::Daemon(_) => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .expect("tokio runtime");
    let res = rt.block_on(async {
        match cli.command {
            Command::Daemon(cfg) => daemon::run(cfg).await,
            Command::Peer { action, socket } => peer(action, &socket).await,
            Command::Status { json, socket } => status(json, &socket).await,
            Command::Uninstall { bpf_dir } => uninstall(&bpf_dir).await,
            Command::Stats { json, socket } => stats(json, &socket).await,
            Command::Cache { action, socket } => cache(action, &socket).await,
            Command::Doctor { json, bpf_dir } => doctor(json, &bpf_dir),
            Command::Network { action, socket } => network(action, &socket).await,
            Command::Cni { action } => cni(action).await,
        }
    });
    if let Err(e) = res {
        eprintln!("oncache: {e:#}");
        std::process::exit(1);
    }
}

async fn cni(action: CniAction) -> anyhow::Result<()> {
    use oncache::cni::conflist;
    match action {
        CniAction::AddNetwork { name, subnet, vni, ip_range, gateway, mtu, conf_dir, socket, state_dir } => {
            let non_default = |p: &std::path::Path, d: &str| (p != std::path::Path::new(d)).then(|| p.to_string_lossy().into_owned());
            let n = conflist::NewNetwork {
                name,
                subnet,
                vni,
                ip_range,
                gateway,
                mtu,
                socket: non_default(&socket, DEFAULT_SOCKET),
                state_dir: non_default(&state_dir, oncache::cni::DEFAULT_STATE_DIR),
            };
            let path = conflist::add(&conf_dir, &n)?;
            println!("wrote {}", path.display());
        }
        CniAction::RmNetwork { name, conf_dir, socket, force } => {
            let removed = conflist::remove(&conf_dir, &name);
            let id = oncache::naming::cni_network_id(&name);
            let r: anyhow::Result<serde_json::Value> =
                client::call(&socket, control::NETWORK_REMOVE, &control::NetworkRemove { id: id.clone(), force }).await;
            match (&removed, r) {
                (_, Ok(_)) => println!("network {name} removed from the daemon"),
                (Ok(_), Err(e)) if format!("{e:#}").contains("is not an oncache network") => {}
                (Ok(_), Err(e)) => eprintln!("oncache: the daemon kept network {name}: {e:#}"),
                (Err(_), Err(e)) => return Err(removed.unwrap_err().context(format!("{e:#}"))),
            }
            if let Ok(p) = removed {
                println!("removed {}", p.display());
            }
        }
    }
    Ok(())
}

async fn peer(action: PeerAction, socket: &std::path::Path) -> anyhow::Result<()> {
    let (method, address) = match action {
        PeerAction::Add { address } => (control::PEER_ADD, address),
        PeerAction::Rm { address } => (control::PEER_REMOVE, address),
        PeerAction::List => {
            let l: control::PeerList = client::call(socket, control::PEER_LIST, &()).await?;
            for p in l.peers {
                println!("{p}");
            }
            return Ok(());
        }
    };
    let _: serde_json::Value =
        client::call(socket, method, &control::PeerRequest { address: address.to_string() }).await?;
    Ok(())
}

async fn status(json: bool, socket: &std::path::Path) -> anyhow::Result<()> {
    let s: control::Status = client::call(socket, control::STATUS, &()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "oncache {}  underlay {} ({}, MTU {})  fast path {}  container links {}",
        s.version, s.underlay, s.underlay_ip, s.underlay_mtu, s.fastpath, s.container_link
    );
    let peers: Vec<String> =
        s.peers.iter().map(|p| format!("{p}{}", if s.live_peers.contains(p) { "" } else { " (not heard from)" })).collect();
    println!("peers: {}", if peers.is_empty() { "none".into() } else { peers.join(", ") });
    println!("remote endpoints: {}", s.remote_endpoints);
    for n in &s.networks {
        let id = &n.network.id[..n.network.id.len().min(12)];
        println!(
            "network {id}  VNI {}  MTU {}  {} + {}  subnets {}",
            n.network.vni,
            n.network.mtu,
            n.bridge,
            n.vxlan,
            n.network.ipv4_pools.iter().chain(&n.network.ipv6_pools).cloned().collect::<Vec<_>>().join(" ")
        );
        for e in &n.endpoints {
            let joined = if e.sandbox.is_some() { "joined" } else { "created" };
            println!(
                "  endpoint {}  {}  {}  {joined}",
                &e.id[..e.id.len().min(12)],
                e.ipv4.as_deref().unwrap_or("-"),
                e.mac
            );
        }
    }
    Ok(())
}

async fn uninstall(bpf_dir: &std::path::Path) -> anyhow::Result<()> {
    let interfaces = dataplane::interface_names().await?;
    let pins = fastpath::uninstall(bpf_dir, &interfaces)?;
    println!("removed {pins} pinned eBPF objects from {}", bpf_dir.display());
    dataplane::uninstall().await
}

async fn stats(json: bool, socket: &std::path::Path) -> anyhow::Result<()> {
    let s: control::Stats = client::call(socket, control::STATS, &()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("{:<14} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>8}", "program", "hits", "misses", "learned", "invalidated", "rejected", "runs", "ns/run");
    let all = oncache_common::Program::ALL.map(|p| (p.name().trim_start_matches("oncache_"), s.of(p)));
    for (name, c) in all {
        let per_run = c.run_time_ns.checked_div(c.runs).map_or("-".to_string(), |ns| ns.to_string());
        println!("{name:<14} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {per_run:>8}", c.hits, c.misses, c.learned, c.invalidated, c.rejected, c.runs);
    }
    if all.iter().all(|(_, c)| c.runs == 0) {
        println!("runs and ns/run are counted only while kernel.bpf_stats_enabled is 1 (each run then costs two clock reads)");
    }
    Ok(())
}

async fn cache(action: CacheAction, socket: &std::path::Path) -> anyhow::Result<()> {
    match action {
        CacheAction::Flush => {
            let f: control::Flushed = client::call(socket, control::CACHE_FLUSH, &()).await?;
            println!("flushed {} entries", f.removed);
        }
        CacheAction::List { json } => {
            let l: control::CacheList = client::call(socket, control::CACHE_LIST, &()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(());
            }
            println!("egress (VNI, remote container -> host):");
            for e in &l.egress {
                println!("  {:>8} {:<15} -> {:<15} mac {}", e.vni, e.ip, e.vtep, e.mac);
            }
            println!("outer headers (host -> header):");
            for o in &l.outer {
                println!("  {:<15} src {} {} -> {} ttl {} tos {} ifindex {}", o.vtep, o.src, o.src_mac, o.dst_mac, o.ttl, o.tos, o.ifindex);
            }
            println!("ingress (VNI, local container -> veth):");
            for i in &l.ingress {
                println!("  {:>8} {:<15} -> ifindex {} mac {}", i.vni, i.ip, i.ifindex, i.mac);
            }
            println!("flows (VNI, proto, local <-> remote: admitted directions):");
            for f in &l.filter {
                let dirs = match (f.egress, f.ingress) {
                    (true, true) => "both",
                    (true, false) => "egress",
                    (false, true) => "ingress",
                    _ => "none",
                };
                println!("  {:>8} {} {} <-> {}: {dirs}", f.vni, f.proto, f.local, f.remote);
            }
        }
    }
    Ok(())
}

fn doctor(json: bool, bpf_dir: &std::path::Path) -> anyhow::Result<()> {
    use fastpath::features::OPTIONAL;
    let checks = fastpath::features::checks(bpf_dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let optional = OPTIONAL.contains(&c.name.as_str());
            let verdict = match (c.ok, optional) {
                (true, _) => "ok     ",
                (false, true) => "absent ",
                (false, false) => "MISSING",
            };
            println!("{verdict} {:<14} {}", c.name, c.detail);
            if !c.ok {
                println!("        {:<14} {}: {}", "", if optional { "note" } else { "fix" }, c.fix);
            }
        }
    }
    if checks.iter().any(|c| !c.ok && !OPTIONAL.contains(&c.name.as_str())) {
        anyhow::bail!("the fast path cannot run here; the slow path still works");
    }
    Ok(())
}

/// dockerd's network IDs, or why they are unknown.
async fn docker_networks() -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Net {
        #[serde(rename = "Id")]
        id: String,
    }
    let nets: Vec<Net> = client::docker_get(&client::docker_socket()?, "/networks").await?;
    Ok(nets.into_iter().map(|n| n.id).collect())
}

async fn network(action: NetworkAction, socket: &std::path::Path) -> anyhow::Result<()> {
    let s: control::Status = client::call(socket, control::STATUS, &()).await?;
    let remove = |id: String, force: bool| async move {
        let _: serde_json::Value = client::call(socket, control::NETWORK_REMOVE, &control::NetworkRemove { id: id.clone(), force }).await?;
        println!("removed {id}");
        anyhow::Ok(())
    };
    match action {
        NetworkAction::Ls { json } => {
            let docker = docker_networks().await;
            if let Err(e) = &docker {
                eprintln!("oncache: not checked against dockerd: {e:#}");
            }
            let rows: Vec<serde_json::Value> = s
                .networks
                .iter()
                .map(|n| {
                    // A CNI network is the runtimes' (its conflist), never dockerd's.
                    let cni = n.network.id.starts_with("cni:");
                    let known = if cni { None } else { docker.as_ref().ok().map(|d| d.contains(&n.network.id)) };
                    serde_json::json!({
                        "id": n.network.id,
                        "vni": n.network.vni,
                        "subnets": n.network.ipv4_pools.iter().chain(&n.network.ipv6_pools).collect::<Vec<_>>(),
                        "endpoints": n.endpoints.len(),
                        "joined": n.endpoints.iter().filter(|e| e.sandbox.is_some()).count(),
                        "created": n.network.created,
                        "in_docker": known,
                        "cni": cni,
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!("{:<12}  {:>8}  {:<20}  {:>9}  {:<6}", "NETWORK ID", "VNI", "SUBNETS", "ENDPOINTS", "DOCKER");
            for r in &rows {
                let id = r["id"].as_str().unwrap_or_default();
                let subnets: Vec<&str> = r["subnets"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
                let docker = match r["in_docker"].as_bool() {
                    _ if r["cni"].as_bool() == Some(true) => "- (CNI)",
                    Some(true) => "yes",
                    Some(false) => "no (ghost)",
                    None => "?",
                };
                println!(
                    "{:<12}  {:>8}  {:<20}  {:>9}  {docker}",
                    &id[..id.len().min(12)],
                    r["vni"],
                    subnets.join(","),
                    format!("{}/{}", r["joined"], r["endpoints"]),
                );
            }
        }
        NetworkAction::Rm { ids, force } => {
            for want in ids {
                let matches: Vec<&str> =
                    s.networks.iter().map(|n| n.network.id.as_str()).filter(|id| id.starts_with(want.as_str())).collect();
                let id = match matches[..] {
                    [one] => one.to_string(),
                    [] => anyhow::bail!("no oncache network {want:?}"),
                    _ => anyhow::bail!("{want:?} names {} networks; give more of the ID", matches.len()),
                };
                remove(id, force).await?;
            }
        }
        NetworkAction::Prune { dry_run } => {
            let docker = docker_networks().await.map_err(|e| e.context("prune needs dockerd's network list"))?;
            for n in &s.networks {
                let joined = n.endpoints.iter().any(|e| e.sandbox.is_some());
                // CNI networks live as long as their conflist (`oncache cni rm-network`).
                if docker.contains(&n.network.id) || joined || n.network.id.starts_with("cni:") {
                    continue;
                }
                if dry_run {
                    println!("would remove {} (VNI {})", n.network.id, n.network.vni);
                } else {
                    remove(n.network.id.clone(), false).await?;
                }
            }
        }
    }
    Ok(())
}
