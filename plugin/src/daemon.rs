//! `oncache daemon`: opens the store, brings the kernel in line with it, serves the socket.

use crate::dataplane::Dataplane;
use crate::driver::Driver;
use crate::server;
use anyhow::{bail, Context, Result};
use oncache_store::Store;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Args, Debug)]
pub struct Config {
    /// Unix socket to serve; dockerd discovers plugins by the socket files in
    /// /run/docker/plugins, and the file name (oncache) is the driver name.
    #[arg(long, default_value = crate::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the persistent state (networks, endpoints, peers) lives.
    #[arg(long, default_value = "/var/lib/oncache")]
    pub state_dir: PathBuf,
    /// Interface VXLAN traffic leaves by [default: the interface of the default route].
    #[arg(long, value_name = "IFACE")]
    pub underlay: Option<String>,
    /// A peer host's underlay address (repeatable); added to the stored peer set.
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<IpAddr>,
    /// bpffs folder for the fast path's pinned programs and maps.
    #[arg(long, default_value = "/sys/fs/bpf/oncache")]
    pub bpf_dir: PathBuf,
}

pub async fn run(cfg: Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))?;
    let store = Store::open(&cfg.state_dir.join("db")).with_context(|| {
        format!("opening the state in {} (is another oncache daemon using it?)", cfg.state_dir.display())
    })?;
    let dp = Dataplane::new(cfg.underlay.as_deref()).await?;
    log::info!(
        "underlay {} ({}, MTU {}); fast path pins will live in {}",
        dp.underlay.name,
        dp.underlay.ip,
        dp.underlay.mtu,
        cfg.bpf_dir.display()
    );
    let driver = Driver::new(store, dp);
    for p in &cfg.peers {
        driver.add_peer(*p).await.with_context(|| format!("--peer {p}"))?;
    }
    driver.reconcile().await.context("reconciling the kernel with the stored state")?;

    let listener = bind(&cfg.socket).await?;
    log::info!("serving the oncache network driver on {}", cfg.socket.display());
    notify_ready();
    let driver = Arc::new(tokio::sync::Mutex::new(driver));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    server::serve(listener, driver.clone(), stop).await;
    // Wait for a call in progress to finish; links stay up so containers keep their traffic.
    let _idle = driver.lock().await;
    let _ = std::fs::remove_file(&cfg.socket);
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
