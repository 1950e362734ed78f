//! `oncache`: the daemon that serves the Docker network driver, and the operator's CLI.

mod announce;
mod cidr;
mod client;
mod control;
mod daemon;
mod dataplane;
mod driver;
mod fastpath;
mod naming;
mod options;
mod server;

use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/oncache.sock";
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/oncache";

/// oncache: a VXLAN container overlay for Docker and containerd, with an eBPF fast path.
///
/// Start the daemon (normally by systemd), then use `docker network create -d oncache NAME`.
/// Logging follows RUST_LOG (e.g. RUST_LOG=debug); the default is info.
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
        #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove oncache's data plane from this host: pinned eBPF programs, maps and links, every
    /// oncache link and the firewall chains. Stop the daemon first; its stored state is kept
    /// (delete --state-dir to forget it).
    Uninstall {
        #[arg(long, default_value = DEFAULT_BPF_DIR)]
        bpf_dir: PathBuf,
    },
    /// Fast-path counters per program: hits, misses, learned, invalidated, rejected.
    Stats {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Inspect or flush the fast path's caches.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Check what the fast path needs from this kernel and host, with what to do when missing.
    Doctor {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_BPF_DIR)]
        bpf_dir: PathBuf,
    },
    /// Show the daemon's networks, endpoints, peers and underlay.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
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
    /// firewall again. Run it after changing firewall rules.
    Flush,
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
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let res = rt.block_on(async {
        match cli.command {
            Command::Daemon(cfg) => daemon::run(cfg).await,
            Command::Peer { action, socket } => peer(action, &socket).await,
            Command::Status { json, socket } => status(json, &socket).await,
            Command::Uninstall { bpf_dir } => uninstall(&bpf_dir).await,
            Command::Stats { json, socket } => stats(json, &socket).await,
            Command::Cache { action, socket } => cache(action, &socket).await,
            Command::Doctor { json, bpf_dir } => doctor(json, &bpf_dir),
        }
    });
    if let Err(e) = res {
        eprintln!("oncache: {e:#}");
        std::process::exit(1);
    }
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
    println!("oncache {}  underlay {} ({}, MTU {})  fast path {}", s.version, s.underlay, s.underlay_ip, s.underlay_mtu, s.fastpath);
    let peers: Vec<String> = s.peers.iter().map(|p| p.to_string()).collect();
    println!("peers: {}", if peers.is_empty() { "none".into() } else { peers.join(", ") });
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
    println!("{:<14} {:>12} {:>12} {:>12} {:>12} {:>12}", "program", "hits", "misses", "learned", "invalidated", "rejected");
    for (name, c) in [
        ("egress_fast", s.egress_fast),
        ("ingress_fast", s.ingress_fast),
        ("egress_learn", s.egress_learn),
        ("ingress_learn", s.ingress_learn),
    ] {
        println!("{name:<14} {:>12} {:>12} {:>12} {:>12} {:>12}", c.hits, c.misses, c.learned, c.invalidated, c.rejected);
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
    let checks = fastpath::features::checks(bpf_dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!("{} {:<14} {}", if c.ok { "ok     " } else { "MISSING" }, c.name, c.detail);
            if !c.ok {
                println!("        {:<14} fix: {}", "", c.fix);
            }
        }
    }
    if checks.iter().any(|c| !c.ok) {
        anyhow::bail!("the fast path cannot run here; the slow path still works");
    }
    Ok(())
}
