//! Managed-plugin helpers: install oncache as `oncache:latest` into a lab host's dockerd with
//! `packaging/install.sh plugin`, and reach the plugin's daemon through its socket.
//!
//! A lab host is not the machine: the plugin's bind mounts name paths in dockerd's mount
//! namespace, so tests point them at per-host places with `docker plugin set` settings
//! (`state.source`, `ONCACHE_BPF_DIR`), and give the host's dockerd the machine's bpffs on
//! /sys/fs/bpf (the lab's dockerd sees a fresh sysfs there, a real host sees the bpffs systemd
//! mounted) so that pins made through the plugin land in the machine's bpffs, under the host's
//! own folder `/sys/fs/bpf/oncache-<host>`, which the lab removes.

use super::BIN;
use crate::lab::{self, Host};
use serde_json::Value;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const PLUGIN: &str = "oncache:latest";
/// install.sh builds the rootfs and copies it into dockerd (the debug binary is large).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The settings a lab host's plugin needs: its underlay, its own pin folder and state folder,
/// and the log level of the lab's daemons ([`lab::rust_log`]).
pub fn lab_settings(h: &Host, scope: &str) -> Vec<String> {
    vec![
        format!("RUST_LOG={}", lab::rust_log()),
        format!("ONCACHE_SCOPE={scope}"),
        format!("ONCACHE_UNDERLAY={}", lab::UNDERLAY_IF),
        format!("ONCACHE_BPF_DIR={}", h.bpf_dir.display()),
        format!("state.source={}", h.dir.join("plugin-state").display()),
    ]
}

/// Mounts the machine's bpffs on /sys/fs/bpf in the mount namespace of the host's dockerd (and
/// so of its containerd and runc, which resolve the plugin's bind mounts), as a real host has it.
/// A bind mount cannot cross mount namespaces; a detached clone (`open_tree`) can be attached in
/// another one (`move_mount`), from a thread that left the process's shared fs state
/// (`unshare(CLONE_FS)`) so that it may `setns` alone. The mount goes with that namespace.
pub fn share_bpffs_with_dockerd(h: &Host) {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    lab::ensure_bpffs();
    let pid = h.dockerd_pid().expect("dockerd runs");
    // SAFETY: open_tree with a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c"/sys/fs/bpf".as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint)
    };
    assert!(fd >= 0, "open_tree /sys/fs/bpf: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just returned by the kernel and is owned here only.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let r = std::thread::spawn(move || -> Result<(), String> {
        let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // SAFETY: affects only this thread, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(err("unshare(CLONE_FS)"));
        }
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| format!("dockerd's mount namespace: {e}"))?;
        // SAFETY: valid namespace fd; this thread has its own fs state.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            return Err(err("setns"));
        }
        // SAFETY: valid fds and NUL-terminated paths.
        let r = unsafe {
            libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, c"/sys/fs/bpf".as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
        };
        if r != 0 {
            return Err(err("move_mount onto /sys/fs/bpf"));
        }
        Ok(())
    })
    .join()
    .expect("bpffs thread");
    r.unwrap_or_else(|e| panic!("{}: giving dockerd the machine's bpffs: {e}", h.name));
}

/// `packaging/install.sh plugin SETTINGS...` in the host's network namespace against its
/// dockerd, with this build's binary; its output, or panic with it.
pub fn install(h: &Host, settings: &[&str]) -> String {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", h.netns_path()))
        .arg("--")
        .arg(checkout().join("packaging/install.sh"))
        .arg("plugin")
        .args(settings)
        .env("DOCKER_HOST", format!("unix://{}", h.docker_sock().display()))
        .env("DOCKER_CONFIG", h.dir.join("docker-cli"))
        .env("ONCACHE_BIN", BIN)
        .env("DOCKER_PLUGINS_DIR", &h.plugins_dir)
        .env("TMPDIR", &h.dir);
    let out = lab::process::run(&mut c, INSTALL_TIMEOUT).unwrap_or_else(|e| panic!("install.sh plugin: {e}"));
    let text = lab::describe_output(&out);
    assert!(out.status.success(), "install.sh plugin failed:\n{text}\n--- dockerd log (end) ---\n{}", lab::process::tail_file(&h.dockerd_log_path(), 40));
    eprintln!("---- install.sh plugin {} ----\n{text}", settings.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn plugin_id(h: &Host) -> String {
    h.docker(&["plugin", "inspect", "-f", "{{.Id}}", PLUGIN]).trim().to_string()
}

/// The plugin's socket as the machine sees it: dockerd's /run/docker/plugins/<id>/ is the
/// host's plugins folder.
pub fn plugin_socket(h: &Host, id: &str) -> PathBuf {
    h.plugins_dir.join(id).join("oncache.sock")
}

/// `oncache status --json` through the plugin's socket, from its folder (the full path is
/// longer than a unix socket address may be).
pub fn status(h: &Host, id: &str) -> Value {
    let dir = plugin_socket(h, id).parent().unwrap().to_string_lossy().into_owned();
    let out = h.sh(&format!("cd {dir} && {BIN} status --json --socket oncache.sock"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON ({e}): {out}"))
}

/// The plugin's output (dockerd logs it as the plugin's stdout/stderr), for failure messages.
pub fn plugin_log(h: &Host, id: &str) -> String {
    h.dockerd_log().lines().filter(|l| l.contains(id)).collect::<Vec<_>>().join("\n")
}

pub fn settings_env(h: &Host) -> Vec<String> {
    let out = h.docker(&["plugin", "inspect", "-f", "{{json .Settings.Env}}", PLUGIN]);
    serde_json::from_str(&out).expect("Settings.Env JSON")
}


/// Any `oncache` CLI command with `--json` through the plugin's socket, parsed.
pub fn cli_json(h: &Host, id: &str, args: &str) -> Value {
    try_cli_json(h, id, args).unwrap_or_else(|e| panic!("oncache {args} through plugin {id}: {e}"))
}

/// [`cli_json`], or why it failed (the plugin may be restarting).
pub fn try_cli_json(h: &Host, id: &str, args: &str) -> Result<Value, String> {
    let dir = plugin_socket(h, id).parent().unwrap().to_string_lossy().into_owned();
    let out = h.try_sh(&format!("cd {dir} && {BIN} {args} --json --socket oncache.sock"))?;
    serde_json::from_str(&out).map_err(|e| format!("{args} JSON ({e}): {out}"))
}

/// (egress_fast hits, ingress_fast hits) of the plugin's fast path.
pub fn hits(h: &Host, id: &str) -> (u64, u64) {
    let s = cli_json(h, id, "stats");
    (super::counter(&s, "egress_fast", "hits"), super::counter(&s, "ingress_fast", "hits"))
}
