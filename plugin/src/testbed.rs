//! The driver core on the real kernel, in a network namespace of its own: for the fuzz targets
//! (`fuzz/`) and the crate's tests. Not a mock: links, FDB entries, iptables rules and the
//! store are real. The calling thread moves into a new network namespace whose only interfaces
//! are `lo` and an underlay (one end of a veth pair whose other end has no address: this kernel
//! has no dummy driver) with an address that exists nowhere else, so nothing the driver sends
//! can leave it, and everything it creates goes when the namespace does (when the
//! thread and the testbed are gone). The fast path is off: pins are machine-wide.
//!
//! Network namespaces are per thread: create, use and drop a testbed on one thread.

use crate::dataplane::Dataplane;
use crate::driver::Driver;
use crate::server::{self, Shared};
use anyhow::{bail, Context, Result};
use oncache_store::Store;
use std::path::PathBuf;
use std::process::Command;

/// The underlay of every testbed, with this address.
pub const UNDERLAY: &str = "ul0";
pub const UNDERLAY_IP: &str = "10.255.0.1/24";

pub struct Testbed {
    pub plugin: Shared,
    pub rt: tokio::runtime::Runtime,
    /// Last: removed after the store in `plugin` is closed.
    _state: StateDir,
}

struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Testbed {
    /// Moves this thread into a new network namespace and starts a driver there (needs root).
    pub fn new() -> Result<Testbed> {
        Testbed::with_state(|_| Ok(()))
    }

    /// The same, with `seed` writing to the store first (state left by an earlier run or an
    /// older oncache); the driver then reconciles, as the daemon does at start.
    pub fn with_state(seed: impl FnOnce(&Store) -> Result<()>) -> Result<Testbed> {
        Testbed::build(false, seed)
    }

    /// A driver with scope global, as the managed plugin runs under Swarm.
    pub fn swarm() -> Result<Testbed> {
        Testbed::build(true, |_| Ok(()))
    }

    fn build(global: bool, seed: impl FnOnce(&Store) -> Result<()>) -> Result<Testbed> {
        // SAFETY: unshare only changes this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET) (run as root)");
        }
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", UNDERLAY, "type", "veth", "peer", "name", "ul0end"])?;
        ip(&["addr", "add", UNDERLAY_IP, "dev", UNDERLAY])?;
        ip(&["link", "set", "ul0end", "up"])?;
        ip(&["link", "set", UNDERLAY, "up"])?;
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = std::env::temp_dir().join(format!("oncache-testbed-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let guard = StateDir(state.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let store = Store::open(&state.join("db"))?;
        seed(&store)?;
        let plugin = rt.block_on(async {
            let dp = Dataplane::new(Some(UNDERLAY)).await?;
            let mut driver = Driver::new(store, dp, Err("off in the testbed".into()), None, global);
            driver.reconcile().await?;
            anyhow::Ok(server::Plugin::new(driver))
        })?;
        Ok(Testbed { plugin, rt, _state: guard })
    }

    /// One call as dockerd makes it; returns the HTTP status and the JSON answer.
    pub fn call(&self, method: &str, body: &[u8]) -> (u16, serde_json::Value) {
        self.rt.block_on(async {
            let r = server::answer(&self.plugin, method, body).await;
            let status = r.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(r.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
        })
    }

    /// Removes every network (forced) and peer, then returns the names of oncache links that
    /// are still there: anything listed is a leak.
    pub fn reset(&self) -> Result<Vec<String>> {
        self.rt.block_on(async {
            let mut d = self.plugin.driver.lock().await;
            for n in d.status().await?.networks {
                d.remove_network(&n.network.id, true).await?;
            }
            for p in d.peers()? {
                d.remove_peer(p).await?;
            }
            let left = crate::dataplane::interface_names().await?;
            Ok(left.into_iter().filter(|l| crate::naming::owned(l).is_some()).collect())
        })
    }
}
