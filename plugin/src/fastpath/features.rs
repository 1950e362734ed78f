//! What the fast path needs from the kernel, checked rather than assumed: the daemon refuses
//! the fast path (and keeps serving the slow path) when something is missing, and
//! `oncache doctor` shows each check with what to do.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The bpffs every pin of oncache lives on, unless `--bpf-dir` points at another one.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|st| st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// The nearest folder at or above `p` that exists: where `p` would be created.
fn existing_ancestor(mut p: &Path) -> &Path {
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    p
}

/// Makes sure `dir` lies on a bpffs, mounting one on /sys/fs/bpf if nothing is mounted there
/// (as systemd does at boot; minimal hosts and containers often lack it). A `dir` elsewhere
/// must already be on a bpffs. Concurrent callers mount once: the check and the mount happen
/// under a lock on the mount point.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    if is_bpffs(existing_ancestor(dir)) {
        return Ok(());
    }
    let root = Path::new(BPFFS_ROOT);
    if !dir.starts_with(root) {
        bail!("--bpf-dir {} is not on a bpf filesystem (mount one there, or use a folder under {BPFFS_ROOT})", dir.display());
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {BPFFS_ROOT}"))?;
    let guard = std::fs::File::open(root).with_context(|| format!("opening {BPFFS_ROOT}"))?;
    let _lock = nix::fcntl::Flock::lock(guard, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {BPFFS_ROOT}"))?;
    if !is_bpffs(root) {
        use nix::mount::{mount, MsFlags};
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("bpf"), root, Some("bpf"), flags, None::<&str>).with_context(|| format!("mounting bpffs on {BPFFS_ROOT}"))?;
        log::info!("mounted bpffs on {BPFFS_ROOT}");
    }
    if !is_bpffs(existing_ancestor(dir)) {
        bail!("{} is not on the bpf filesystem mounted on {BPFFS_ROOT} (another filesystem is mounted in between)", dir.display());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when it is missing.
    pub fix: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>, fix: &str) -> Check {
    Check { name: name.into(), ok, detail: detail.into(), fix: if ok { String::new() } else { fix.into() } }
}

pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    kernel().is_some_and(|v| v >= (major, minor))
}

fn kernel() -> Option<(u32, u32)> {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = r.trim().split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Can this process create a BPF map? (BPF syscall, privileges, memlock.)
fn bpf_syscall() -> std::result::Result<(), String> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    let attr = MapCreate { map_type: 2 /* BPF_MAP_TYPE_ARRAY */, key_size: 4, value_size: 4, max_entries: 1 };
    // SAFETY: BPF_MAP_CREATE (0) with a valid attribute block of the given size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &attr as *const _, std::mem::size_of::<MapCreate>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd was just returned by the kernel.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Everything the fast path depends on, in the current network namespace.
pub fn checks(bpf_dir: &Path) -> Vec<Check> {
    let k = kernel();
    let ver = k.map(|(a, b)| format!("kernel {a}.{b}")).unwrap_or_else(|| "kernel version unknown".into());
    let at_least = |a, b| k.is_some_and(|v| v >= (a, b));
    let sys = |p: &str| Path::new(p).exists();
    let mut out = vec![];
    let bpf = bpf_syscall();
    out.push(check(
        "bpf",
        bpf.is_ok(),
        bpf.err().unwrap_or_else(|| "BPF syscall works".into()),
        "run as root on a kernel built with CONFIG_BPF_SYSCALL",
    ));
    out.push(check("btf", sys("/sys/kernel/btf/vmlinux"), "/sys/kernel/btf/vmlinux", "use a kernel built with CONFIG_DEBUG_INFO_BTF"));
    let under_root = bpf_dir.starts_with(BPFFS_ROOT);
    out.push(check(
        "bpffs",
        is_bpffs(existing_ancestor(bpf_dir)),
        format!("{} on a bpf filesystem", bpf_dir.display()),
        if under_root {
            "the daemon mounts bpffs on /sys/fs/bpf at start (or: mount -t bpf bpf /sys/fs/bpf)"
        } else {
            "mount a bpffs there, or use a --bpf-dir under /sys/fs/bpf"
        },
    ));
    out.push(check(
        "tcx",
        at_least(6, 6),
        format!("{ver}; TCX links need 6.6 (without them oncache attaches through clsact)"),
        "nothing required: clsact is used; 6.6+ gives atomic, pinned TCX links",
    ));
    out.push(check(
        "redirect_peer",
        at_least(5, 10),
        format!("{ver}; bpf_redirect_peer needs 5.10"),
        "upgrade the kernel to 5.10 or later",
    ));
    out.push(check(
        "netkit",
        link_kind_works(&["netkit"]),
        "netkit devices (6.8+, CONFIG_NETKIT): a container link that runs the egress program in its own transmit, without the per-packet backlog hop of veth",
        "nothing required: oncache links containers with veth (netkit is not used yet)",
    ));
    out.push(check(
        "vxlan",
        link_kind_works(&["vxlan", "id", "1", "dstport", &oncache_common::VXLAN_PORT.to_string()]),
        "VXLAN driver",
        "load the vxlan module (modprobe vxlan) or use a kernel with CONFIG_VXLAN",
    ));
    out.push(check(
        "br_netfilter",
        sys("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        "bridged traffic reaches iptables and conntrack (admission)",
        "modprobe br_netfilter",
    ));
    let ipt = std::process::Command::new("iptables").args(["-w", "-t", "mangle", "-S", "POSTROUTING"]).output();
    out.push(check(
        "iptables",
        ipt.as_ref().is_ok_and(|o| o.status.success()),
        "iptables with the mangle table (marks admitted flows)",
        "apt-get install iptables",
    ));
    out
}

/// Creates a device of kind `type_args[0]` (with the rest as its `ip link` arguments) in a
/// throwaway network namespace: the only reliable test (a driver may be built in without a
/// /sys/module entry, or be a module the kernel loads on demand). Namespaces are per thread,
/// and the `ip` child inherits the thread's.
fn link_kind_works(type_args: &[&str]) -> bool {
    let args: Vec<String> = ["link", "add", "probe0", "type"].iter().chain(type_args).map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this short-lived thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return false;
        }
        std::process::Command::new("ip").args(&args).output().is_ok_and(|o| o.status.success())
    })
    .join()
    .unwrap_or(false)
}

/// Checks whose absence costs only speed or convenience: TCX (clsact stands in for it) and
/// netkit (veth is what oncache uses).
pub const OPTIONAL: [&str; 2] = ["tcx", "netkit"];

/// The checks whose failure rules the fast path out; empty when it can run.
pub fn missing(bpf_dir: &Path) -> Vec<Check> {
    checks(bpf_dir).into_iter().filter(|c| !c.ok && !OPTIONAL.contains(&c.name.as_str())).collect()
}
