//! The CNI front end (containerd/nerdctl, podman, anything that drives CNI plugins).
//!
//! - [`plugin`]: the thin plugin binary side. The `oncache` binary run with `CNI_COMMAND` in its
//!   environment (and no arguments) is a CNI plugin: VERSION is answered at once, everything
//!   else is forwarded to the daemon over its socket (`Oncache.Cni`), and a DEL the daemon
//!   cannot take is queued under the state dir for the daemon's next start.
//! - [`serve`]: the daemon side: decodes a CNI call into the driver core's own types (network =
//!   conflist name + VNI) and encodes the core's answer as a CNI result or error.
//! - [`spec`]: the CNI protocol types (configuration, result, error, codes, versions): no I/O.
//! - [`conflist`]: `oncache cni add-network|rm-network` (conflist files, written atomically).

pub mod conflist;
pub mod plugin;
pub mod serve;
pub mod spec;

/// Where the daemon finds DELs queued while it was down: `<state dir>/cni-queue/`.
pub fn queue_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("cni-queue")
}

/// The daemon's default state dir (as `oncache daemon --state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/oncache";
