//! oncache as a library: the driver core and its front ends, used by the `oncache` binary
//! (daemon and CLI) and by the fuzz targets in `fuzz/`.

pub mod cidr;
pub mod cluster;
pub mod client;
pub mod cni;
pub mod control;
pub mod crashpoint;
pub mod daemon;
pub mod dataplane;
pub mod driver;
pub mod fastpath;
pub mod inflight;
pub mod naming;
pub mod options;
pub mod server;
pub mod testbed;

/// Where dockerd discovers the plugin (the file name is the driver name).
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/oncache.sock";
/// bpffs folder of the fast path's pins.
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/oncache";
