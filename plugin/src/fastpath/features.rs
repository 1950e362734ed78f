//! What the fast path needs from the kernel, checked rather than assumed: the daemon refuses
//! the fast path (and keeps serving the slow path) when something is missing, and
//! `oncache doctor` shows each check with what to do.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::path::Path;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `dir` lies on a bpffs, mounting one on /sys/fs/bpf if nothing is mounted there
/// (as systemd and other BPF users do).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    if is_bpffs(probe) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        bail!("--bpf-dir {} is not on a bpf filesystem", dir.display());
    }
    if !is_bpffs(root) {
        let (src, fstype, target) = (CString::new("bpf")?, CString::new("bpf")?, CString::new("/sys/fs/bpf")?);
        // SAFETY: valid C strings; no data argument.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
        }
        log::info!("mounted bpffs on /sys/fs/bpf");
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
    let root = bpf_dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    out.push(check(
        "bpffs",
        is_bpffs(root) || is_bpffs(Path::new("/sys/fs/bpf")),
        format!("{} on a bpf filesystem", root.display()),
        "mount -t bpf bpf /sys/fs/bpf (the daemon does this itself when it can)",
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
        "vxlan",
        vxlan_works(),
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

/// Creates a VXLAN device in a throwaway network namespace: the only reliable test (the
/// driver may be built in without a /sys/module entry). Namespaces are per thread, and the
/// `ip` child inherits the thread's.
fn vxlan_works() -> bool {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this short-lived thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return false;
        }
        std::process::Command::new("ip")
            .args(["link", "add", "probe0", "type", "vxlan", "id", "1", "dstport", &oncache_common::VXLAN_PORT.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .join()
    .unwrap_or(false)
}

/// The checks whose failure rules the fast path out; empty when it can run (TCX is optional:
/// clsact stands in for it).
pub fn missing(bpf_dir: &Path) -> Vec<Check> {
    checks(bpf_dir).into_iter().filter(|c| !c.ok && c.name != "tcx").collect()
}
