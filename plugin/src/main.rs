//! `oncache`: the daemon that serves the Docker network driver, and the operator's CLI.

mod cidr;
mod client;
mod control;
mod daemon;
mod dataplane;
mod driver;
mod naming;
mod options;
mod server;

use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/oncache.sock";

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
    /// Remove oncache's data plane from this host: every oncache link and the firewall chain.
    /// Stop the daemon first; its stored state is kept (delete --state-dir to forget it).
    Uninstall,
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
            Command::Uninstall => dataplane::uninstall().await,
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
    println!("oncache {}  underlay {} ({}, MTU {})", s.version, s.underlay, s.underlay_ip, s.underlay_mtu);
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
