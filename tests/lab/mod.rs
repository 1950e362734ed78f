//! Integration-test harness: "hosts" as network namespaces on one machine, each with its own
//! dockerd (and oncache daemon), joined by an underlay switch namespace.
//!
//! ```text
//!   oc<suffix>h0 (ul0 10.99.L.1/24) ──veth── p0 ┐
//!   oc<suffix>h1 (ul0 10.99.L.2/24) ──veth── p1 ├ br0   in namespace oc<suffix>sw
//!   ...                                         ┘
//! ```
//!
//! `<suffix>` is `<pid>-<counter>`: unique per lab, across threads and test binaries. Everything
//! else a lab creates carries it too: its folder `/tmp/oncache-lab-<suffix>/`, the hosts' cgroups
//! `lab-oc<suffix>h<i>` (also dockerd's relative `--cgroup-parent`), bpf pin folders
//! `/sys/fs/bpf/oncache-oc<suffix>h<i>`. No link is ever created in the machine's own namespace:
//! veth pairs are created directly between the switch and the host namespaces, and all traffic
//! stays between addresses that exist only inside the lab's namespaces.
//!
//! Clean-up runs in `Drop` (also when a test panics): containers removed, dockerd / plugin /
//! background processes terminated by PID (SIGTERM, wait, SIGKILL) and reaped, whatever is left
//! in the hosts' cgroups (containerd, shims, container processes) killed PID by PID, cgroups and
//! namespaces deleted, folders removed. `Lab::finish(self)` drops the lab and then runs
//! [`assert_no_leaks`]. A test binary that was killed before its `Drop` ran leaves state behind;
//! the first `Lab::new` of a later run removes what belongs to dead PIDs ([`cleanup::sweep_stale`]).
//! With `ONCACHE_LAB_KEEP_LOGS=<folder>` set, each host's dockerd.log and oncache.log are copied
//! there (as `<host>-dockerd.log`, `<host>-oncache.log`) before the lab folder is removed.
//!
//! ## Running dockerd in a namespace (what was found to work on this machine)
//! - A "namespace holder" per host: `nsenter --net=<netns> unshare --mount --uts --propagation
//!   private sh hold-namespaces.sh` (script written to the host's folder). It joins the tracker
//!   cgroup, sets the hostname, drops mounts copied from the machine's namespace that would pin
//!   other labs' namespaces (`/run/netns/*`, another dockerd's `/run/docker/netns/*`), mounts a
//!   sysfs of the host's netns over /sys (dockerd reads /sys/class/net) after binding the cgroup
//!   v1 tree away and rbinds it back (a fresh sysfs hides it: "Devices cgroup isn't mounted"),
//!   mounts private tmpfs on /run/docker, /run/containerd (else all dockerds share one
//!   containerd) and /etc/docker (else they share one engine ID), binds the host's plugins folder
//!   on /run/docker/plugins, then `exec sleep`.
//! - dockerd: `nsenter --net=<netns> --mount=/proc/<holder>/ns/mnt --uts=/proc/<holder>/ns/uts
//!   sh start-dockerd.sh`, which `exec`s dockerd: the PID we spawned IS dockerd (nsenter and
//!   unshare without --fork exec too). Because the namespaces outlive dockerd, a restart finds
//!   /run/docker and /run/containerd as on a real machine: `--live-restore` keeps containers,
//!   and after a crash ([`Host::kill_dockerd`]) the new dockerd's containerd re-attaches to the
//!   running shims and containers.
//! - dockerd gives its containerd Pdeathsig=SIGKILL; PID 1 of this VM reaps orphans only about
//!   once a second, so a crashed dockerd's containerd lingers as a zombie and the next dockerd,
//!   seeing its PID in containerd.pid, waits for it until "timeout waiting for containerd to
//!   start". The start script removes a pidfile that names a zombie or nothing.
//! - Containers get the RELATIVE `--cgroup-parent=lab-<host>` (see cleanup.rs). Managed plugins
//!   ignore it and get `/<plugin id>` at the hierarchy roots; clean-up finds them by their IDs.
//! - A container whose PID 1 ignores SIGTERM (`sleep` in the test image) makes every clean dockerd
//!   stop wait 10 s for it: use `docker run --init` or `--stop-timeout 1` for containers that
//!   must survive into a dockerd restart. `Drop` removes containers with `docker rm -f` first.
//! - The machine has no iputils `ping`: in host namespaces use `busybox ping`.
//! - The docker CLI on PATH is 28.x, dockerd is 20.10: the CLI negotiates API 1.41 and works.

#![allow(dead_code, unused_imports)]

pub mod cleanup;
pub mod http;
pub mod image;
pub mod process;

use std::ffi::OsStr;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

pub use cleanup::{assert_no_leaks, leaks};
pub use http::{post, post_json, raw_exchange, request, try_post, HttpResponse, RawReply};
pub use image::{rootfs_tar, IMAGE};
pub use process::{try_wait_for, wait_for};

use process::{describe_status, fmt_output, run, run_ok, tail_file, terminate};

/// Opens a log file for appending (several starts of a process share one log).
fn append_log(path: &Path) -> fs::File {
    fs::OpenOptions::new().create(true).append(true).open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How long dockerd may take to answer `/_ping` after start (2 cores, several labs at once).
pub const DOCKERD_START_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the plugin may take to answer `Plugin.Activate` after start.
pub const ONCACHE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit for one command (`exec`, `sh`, `docker`).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// SIGTERM-to-SIGKILL grace for dockerd (it stops its containers and containerd first).
pub const DOCKERD_STOP_GRACE: Duration = Duration::from_secs(20);
/// SIGTERM-to-SIGKILL grace for the plugin and background processes.
pub const PROCESS_STOP_GRACE: Duration = Duration::from_secs(10);

/// Name of the underlay interface in every host.
pub const UNDERLAY_IF: &str = "ul0";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The docker client binary: `$ONCACHE_LAB_DOCKER` or `docker` from PATH.
pub fn docker_bin() -> String {
    std::env::var("ONCACHE_LAB_DOCKER").unwrap_or_else(|_| "docker".to_string())
}

fn ip(args: &[&str]) {
    if let Err(e) = run_ok(Command::new("ip").args(args), Duration::from_secs(30)) {
        panic!("{e}");
    }
}

/// Mount bpffs on /sys/fs/bpf in the machine's mount namespace if nothing is mounted there yet
/// (systemd normally does this; this VM does not). It is left mounted: it is machine-wide,
/// shared with every other user, and holds only what is pinned in it.
pub fn ensure_bpffs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounted = mi.lines().any(|l| {
            let mp = l.split_whitespace().nth(4);
            let fstype = l
                .split_once(" - ")
                .and_then(|(_, p)| p.split_whitespace().next());
            mp == Some("/sys/fs/bpf") && fstype == Some("bpf")
        });
        if !mounted {
            if let Err(e) = run_ok(
                Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
                Duration::from_secs(10),
            ) {
                eprintln!("lab: cannot mount bpffs on /sys/fs/bpf: {e}");
            }
        }
    });
}

fn first_panic(results: Vec<thread::Result<()>>) {
    for r in results {
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}

// =============================================================================================

pub struct Lab {
    suffix: String,
    labid: u8,
    dir: PathBuf,
    switch_netns: String,
    hosts: Vec<Host>,
}

impl Lab {
    /// Create `n_hosts` hosts `oc<suffix>h0..` on one underlay switch. Host i has `ul0` with
    /// 10.99.<labid>.<i+1>/24.
    pub fn new(n_hosts: usize) -> Lab {
        assert!(
            (1..=200).contains(&n_hosts),
            "Lab::new: 1..=200 hosts, not {n_hosts}"
        );
        cleanup::sweep_stale();
        let pid = std::process::id();
        let (n, suffix) = loop {
            let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
            let s = format!("{pid}-{n}");
            // A PID reused from a killed run whose state the sweep could not remove: skip.
            if !Path::new(&format!("/tmp/oncache-lab-{s}")).exists()
                && !Path::new(&format!("/run/netns/oc{s}sw")).exists()
            {
                break (n, s);
            }
        };
        let dir = PathBuf::from(format!("/tmp/oncache-lab-{suffix}"));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut lab = Lab {
            labid: (n % 256) as u8,
            switch_netns: format!("oc{suffix}sw"),
            suffix,
            dir,
            hosts: Vec::new(),
        };
        // From here on a panic drops `lab`, which removes what was made so far.
        fs::create_dir(lab.dir.join("docker-config")).expect("mkdir docker-config");
        let sw = lab.switch_netns.clone();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        // A switch, not a host: its frames must not cross netfilter and conntrack (they would
        // if br_netfilter's default applied to it), or every configuration pays for them.
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        for t in ["iptables", "ip6tables", "arptables"] {
            let path = format!("/proc/sys/net/bridge/bridge-nf-call-{t}");
            run_ok(Command::new("nsenter").arg(format!("--net=/run/netns/{sw}")).args(["sh", "-c", &format!("echo 0 > {path}")]), CMD_TIMEOUT)
                .unwrap_or_else(|e| panic!("{sw}: {path}: {e}"));
        }
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..n_hosts {
            lab.add_host(i);
        }
        lab
    }

    fn add_host(&mut self, i: usize) {
        let name = format!("oc{}h{i}", self.suffix);
        let dir = self.dir.join(format!("h{i}"));
        let plugins_dir = dir.join("plugins");
        fs::create_dir_all(&plugins_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", plugins_dir.display()));
        ip(&["netns", "add", &name]);
        let underlay_ip = Ipv4Addr::new(10, 99, self.labid, (i + 1) as u8);
        self.hosts.push(Host {
            index: i,
            netns: name.clone(),
            underlay_ip,
            state_dir: dir.join("oncache-state"),
            bpf_dir: PathBuf::from(format!("/sys/fs/bpf/oncache-{name}")),
            docker_sock: dir.join("docker.sock"),
            docker_config: self.dir.join("docker-config"),
            plugins_dir,
            dir,
            suffix: self.suffix.clone(),
            name: name.clone(),
            dockerd: None,
            dockerd_extra: Vec::new(),
            ns_holder: None,
            oncache: None,
            oncache_cmd: None,
            oncache_private_sysfs: false,
            oncache_bpffs: true,
            bg_counter: AtomicUsize::new(0),
        });
        self.plumb_host(i);
    }

    /// The host's namespace gets lo up and its underlay: a veth to the switch, with its address.
    fn plumb_host(&self, i: usize) {
        let (name, underlay_ip) = (self.hosts[i].netns.clone(), self.hosts[i].underlay_ip);
        let sw = self.switch_netns.clone();
        let port = self.switch_port(i);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_IF,
            "netns",
            &name,
        ]);
        ip(&[
            "-n", &sw, "link", "set", "dev", &port, "master", "br0", "up",
        ]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{underlay_ip}/24"),
            "dev",
            UNDERLAY_IF,
        ]);
        ip(&["-n", &name, "link", "set", UNDERLAY_IF, "up"]);
    }

    /// `<pid>-<counter>`, the part every name of this lab carries.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }
    /// Third octet of the underlay addresses (10.99.<labid>.0/24).
    pub fn labid(&self) -> u8 {
        self.labid
    }
    /// The lab's folder `/tmp/oncache-lab-<suffix>/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
    pub fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
    pub fn hosts_mut(&mut self) -> &mut [Host] {
        &mut self.hosts
    }
    /// Name of the switch namespace (bridge `br0`, ports `p<i>`).
    pub fn switch_netns(&self) -> &str {
        &self.switch_netns
    }
    /// Switch-side name of host i's underlay link (`ip -n <switch> link set p<i> down` cuts it).
    pub fn switch_port(&self, i: usize) -> String {
        format!("p{i}")
    }
    /// Run a shell script in the switch namespace; panics on failure.
    pub fn switch_sh(&self, script: &str) -> String {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.switch_netns))
            .args(["--", "sh", "-c", script]);
        run_ok(&mut c, CMD_TIMEOUT).unwrap_or_else(|e| panic!("switch: {e}"))
    }

    /// Start dockerd on every host (in parallel) and load the test image into each.
    pub fn start_dockerds(&mut self) {
        let results = thread::scope(|s| {
            let hs: Vec<_> = self
                .hosts
                .iter_mut()
                .map(|h| {
                    s.spawn(move || {
                        h.start_dockerd();
                        h.load_image();
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join()).collect::<Vec<_>>()
        });
        first_panic(results);
    }

    /// Start oncache on every host (in parallel) with the same extra arguments.
    pub fn start_oncaches(&mut self, extra_args: &[&str]) {
        let results = thread::scope(|s| {
            let hs: Vec<_> = self
                .hosts
                .iter_mut()
                .map(|h| s.spawn(move || h.start_oncache(extra_args)))
                .collect();
            hs.into_iter().map(|h| h.join()).collect::<Vec<_>>()
        });
        first_panic(results);
    }

    /// "Reboots" host `i`, which runs oncache but no dockerd: the daemon is killed (a power
    /// cut), the network namespace goes with every link in it (veths of its containers too), a
    /// new one is made with the same underlay address, and the daemon starts again with the same
    /// arguments and state dir. Its pins in the machine's bpffs stay, which a real reboot would
    /// empty: harsher than a real one.
    pub fn reboot_host(&mut self, i: usize) {
        assert!(self.hosts[i].dockerd.is_none(), "reboot_host: {} runs dockerd", self.hosts[i].name);
        self.hosts[i].kill_oncache();
        let name = self.hosts[i].netns.clone();
        // The switch's end of the old underlay first: a deleted namespace's links go
        // asynchronously, and the new veth takes the same name.
        ip(&["-n", &self.switch_netns, "link", "del", &self.switch_port(i)]);
        cleanup::delete_netns(&name).unwrap_or_else(|e| panic!("rebooting {name}: {e}"));
        ip(&["netns", "add", &name]);
        self.plumb_host(i);
        self.hosts[i].spawn_oncache();
    }

    /// Drop the lab (full clean-up), then [`assert_no_leaks`].
    pub fn finish(self) {
        let suffix = self.suffix.clone();
        drop(self);
        assert_no_leaks(&suffix);
    }

    /// The clean-up; returns what went wrong. Idempotent.
    fn cleanup(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        let results = thread::scope(|s| {
            let hs: Vec<_> = self
                .hosts
                .iter_mut()
                .map(|h| s.spawn(move || h.shutdown()))
                .collect();
            hs.into_iter().map(|h| h.join()).collect::<Vec<_>>()
        });
        for r in results {
            match r {
                Ok(e) => errs.extend(e),
                Err(_) => errs.push("a host's shutdown panicked".into()),
            }
        }
        // Keep the logs if asked to (the lab folder is about to go).
        if let Some(keep) = std::env::var_os("ONCACHE_LAB_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = fs::create_dir_all(&keep);
            for h in &self.hosts {
                for (src, what) in [
                    (h.dockerd_log_path(), "dockerd"),
                    (h.oncache_log_path(), "oncache"),
                ] {
                    if src.exists() {
                        let _ = fs::copy(&src, keep.join(format!("{}-{what}.log", h.name)));
                    }
                }
            }
        }
        for h in &self.hosts {
            if let Err(e) = cleanup::delete_netns(&h.netns) {
                errs.push(e);
            }
            if h.bpf_dir.exists() {
                if let Err(e) = cleanup::remove_tree(&h.bpf_dir, Duration::from_secs(5)) {
                    errs.push(e);
                }
            }
        }
        if let Err(e) = cleanup::delete_netns(&self.switch_netns) {
            errs.push(e);
        }
        if let Err(e) = cleanup::remove_tree(&self.dir, Duration::from_secs(10)) {
            errs.push(e);
        }
        errs
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let errs = self.cleanup();
        if !errs.is_empty() {
            let msg = format!(
                "lab {} clean-up problems:\n  {}",
                self.suffix,
                errs.join("\n  ")
            );
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

// =============================================================================================

/// Spec of the plugin process, kept for restarts.
#[derive(Clone, Debug)]
struct PluginCmd {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

pub struct Host {
    /// Host (and netns, and hostname) name `oc<suffix>h<i>`.
    pub name: String,
    /// Network namespace name (`/run/netns/<netns>`); same as `name`.
    pub netns: String,
    pub index: usize,
    /// Address of `ul0`, 10.99.<labid>.<index+1> (prefix length 24).
    pub underlay_ip: Ipv4Addr,
    /// The host's folder `/tmp/oncache-lab-<suffix>/h<i>/`.
    pub dir: PathBuf,
    /// Bind-mounted on /run/docker/plugins in the host's dockerd mount namespace.
    pub plugins_dir: PathBuf,
    /// `--state-dir` given to oncache.
    pub state_dir: PathBuf,
    /// `--bpf-dir` given to oncache: `/sys/fs/bpf/oncache-<name>` (removed on clean-up).
    pub bpf_dir: PathBuf,
    docker_sock: PathBuf,
    docker_config: PathBuf,
    suffix: String,
    dockerd: Option<Child>,
    dockerd_extra: Vec<String>,
    ns_holder: Option<Child>,
    oncache: Option<Child>,
    oncache_cmd: Option<PluginCmd>,
    oncache_private_sysfs: bool,
    /// With a private sysfs: bind the machine's bpffs back on /sys/fs/bpf (a fresh sysfs has
    /// none mounted, as on a host where nothing mounted it).
    oncache_bpffs: bool,
    bg_counter: AtomicUsize,
}

impl Host {
    // ---- commands in the host's network namespace -------------------------------------------

    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path())).arg("--");
        c
    }

    /// Run a command in the host's network namespace (the machine's mount namespace: /sys there
    /// is NOT the host's sysfs; use `ip`, not /sys/class/net). Panics only if it cannot run or
    /// times out ([`CMD_TIMEOUT`]).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.exec_timeout(cmd, CMD_TIMEOUT)
    }

    pub fn exec_timeout(&self, cmd: &[&str], timeout: Duration) -> Output {
        let mut c = self.nsenter();
        c.args(cmd);
        run(&mut c, timeout).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// `sh -c script` in the host's network namespace; stdout, or panic with stderr.
    pub fn sh(&self, script: &str) -> String {
        self.try_sh(script)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    pub fn try_sh(&self, script: &str) -> Result<String, String> {
        self.try_sh_timeout(script, CMD_TIMEOUT)
    }

    pub fn try_sh_timeout(&self, script: &str, timeout: Duration) -> Result<String, String> {
        let mut c = self.nsenter();
        c.args(["sh", "-c", script]);
        run_ok(&mut c, timeout)
    }

    /// Start a long-running command in the host's network namespace (e.g. an iperf3 server).
    /// Output goes to a log file; the process is killed when the [`Bg`] is dropped, and in any
    /// case when the lab is dropped.
    pub fn spawn(&self, cmd: &[&str]) -> Bg {
        let k = self.bg_counter.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.join(format!("bg-{k}.log"));
        let procs = cleanup::tracker_procs(&self.name, "bg").unwrap_or_else(|e| panic!("{e}"));
        let f = fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut c = self.nsenter();
        c.args(["sh", "-c", "echo $$ > \"$0\" && exec \"$@\""])
            .arg(&procs)
            .args(cmd);
        c.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        let what = format!("{}: {}", self.name, cmd.join(" "));
        let child = c.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        cleanup::record_spawn(&self.suffix, child.id(), &what);
        Bg {
            child: Some(child),
            log,
            what,
        }
    }

    // ---- dockerd -----------------------------------------------------------------------------

    pub fn docker_sock(&self) -> &Path {
        &self.docker_sock
    }
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(|c| c.id())
    }
    pub fn dockerd_log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }
    /// The whole dockerd log (all starts of this host).
    pub fn dockerd_log(&self) -> String {
        fs::read_to_string(self.dockerd_log_path()).unwrap_or_default()
    }

    /// Start this host's dockerd (see the module docs) and wait until it answers.
    pub fn start_dockerd(&mut self) {
        self.start_dockerd_with(&[]);
    }

    /// [`Host::start_dockerd`] with extra dockerd arguments (kept for restarts).
    pub fn start_dockerd_with(&mut self, extra_args: &[&str]) {
        assert!(
            self.dockerd.is_none(),
            "{}: dockerd already running",
            self.name
        );
        self.dockerd_extra = extra_args.iter().map(|s| s.to_string()).collect();
        self.spawn_dockerd();
    }

    /// Start the process that holds this host's mount and UTS namespaces (once per lab host),
    /// so that dockerd restarts keep /run/docker, /run/containerd and a still-running containerd,
    /// as on a real machine.
    fn ensure_ns_holder(&mut self) {
        if let Some(h) = self.ns_holder.as_mut() {
            match h.try_wait() {
                Ok(None) => return,
                _ => {
                    self.ns_holder = None;
                }
            }
        }
        let procs = cleanup::tracker_procs(&self.name, "holder").unwrap_or_else(|e| panic!("{e}"));
        let d = &self.dir;
        let q = |p: &Path| shell_quote(&p.to_string_lossy());
        let ready = d.join(".ns-ready");
        let _ = fs::remove_file(&ready);
        let script = format!(
            r#"set -eu
# Written by the lab harness (tests/lab/mod.rs); runs as
#   nsenter --net=/run/netns/{netns} unshare --mount --uts --propagation private sh THIS
# and then only holds the namespaces; dockerd joins them with nsenter.
echo $$ > {procs}
hostname {name}
# The new mount namespace starts as a copy of the machine's. Copies of /run/netns/* would keep
# other labs' namespaces alive as long as this one lives, copies of another dockerd's
# /run/docker/netns/* its containers' namespaces: drop them (lazily; this namespace is private).
for m in $(awk '{{print $5}}' /proc/self/mountinfo | grep -E '^/(run/netns|run/docker|run/containerd|var/run/docker|var/lib/docker)(/|$)' | sort -r); do
    umount -l "$m" 2>/dev/null || true
done
# sysfs of this network namespace over /sys (dockerd reads /sys/class/net). A fresh sysfs hides
# the cgroup v1 mounts under /sys/fs/cgroup ("Devices cgroup isn't mounted"): bind the cgroup tree
# away first and rbind it back on top of the new sysfs.
stash={stash}
mkdir -p "$stash"
mount --rbind /sys/fs/cgroup "$stash"
mount -t sysfs sysfs /sys
mount --rbind "$stash" /sys/fs/cgroup
umount -l "$stash"
rmdir "$stash"
# libnetwork keeps load-balancer sandbox files (lb_<network>) under the fixed path
# /var/lib/docker/network/files whatever --data-root says: give this host an empty private one,
# so nothing of the lab is left in the machine's /var/lib/docker.
mkdir -p /var/lib/docker
mount -t tmpfs -o mode=0710 tmpfs /var/lib/docker
# Private runtime state: own containerd (not a shared one), own engine ID (key.json), own plugins.
mkdir -p /run/docker /run/containerd /etc/docker
mount -t tmpfs -o mode=0711 tmpfs /run/docker
mount -t tmpfs -o mode=0711 tmpfs /run/containerd
mount -t tmpfs -o mode=0755 tmpfs /etc/docker
mkdir -p /run/docker/plugins
mount --bind {plugins} /run/docker/plugins
echo "lab: namespaces of {name} held by pid $$"
echo $$ > {ready}
exec sleep 2147483647
"#,
            netns = self.netns,
            procs = q(&procs),
            name = shell_quote(&self.name),
            stash = q(&d.join(".cgroup-stash")),
            plugins = q(&self.plugins_dir),
            ready = q(&ready),
        );
        let script_path = d.join("hold-namespaces.sh");
        fs::write(&script_path, script).expect("write hold-namespaces.sh");
        let log_path = self.dockerd_log_path();
        let log = append_log(&log_path);
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path()))
            .args([
                "--",
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "sh",
            ])
            .arg(&script_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn namespace holder: {e}", self.name));
        let pid = child.id();
        cleanup::record_spawn(
            &self.suffix,
            pid,
            &format!("namespace holder of {}", self.name),
        );
        self.ns_holder = Some(child);
        let mut died = None;
        let ok = try_wait_for(Duration::from_secs(20), || {
            if let Some(st) = self
                .ns_holder
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                died = Some(st);
                return Some(false);
            }
            fs::read_to_string(&ready)
                .ok()
                .filter(|s| s.trim() == pid.to_string())
                .map(|_| true)
        });
        if ok != Some(true) {
            if died.is_some() {
                self.ns_holder = None;
            }
            panic!(
                "{}: the namespace holder (pid {pid}) {}\n--- log ---\n{}",
                self.name,
                died.map(|st| format!("exited with {}", describe_status(&st)))
                    .unwrap_or_else(|| "was not ready within 20 s".into()),
                tail_file(&log_path, 40)
            );
        }
    }

    fn spawn_dockerd(&mut self) {
        self.ensure_ns_holder();
        let holder = self.ns_holder.as_ref().map(|c| c.id()).expect("holder");
        let procs = cleanup::tracker_procs(&self.name, "dockerd").unwrap_or_else(|e| panic!("{e}"));
        let d = &self.dir;
        let q = |p: &Path| shell_quote(&p.to_string_lossy());
        let mut dockerd = vec![
            "dockerd".to_string(),
            "--data-root".into(),
            q(&d.join("data")),
            "--exec-root".into(),
            "/run/docker".into(),
            "--pidfile".into(),
            q(&d.join("docker.pid")),
            "-H".into(),
            shell_quote(&format!("unix://{}", self.docker_sock.display())),
            "--bridge=none".into(),
            // Relative on purpose, see cleanup.rs.
            format!("--cgroup-parent={}", cleanup::host_cgroup(&self.name)),
        ];
        dockerd.extend(self.dockerd_extra.iter().map(|a| shell_quote(a)));
        let script = format!(
            r#"set -eu
# Written by the lab harness (tests/lab/mod.rs); runs as
#   nsenter --net=/run/netns/{netns} --mount=/proc/HOLDER/ns/mnt --uts=/proc/HOLDER/ns/uts sh THIS
# Track this process (and so dockerd, containerd, the shims) in the host's cgroup.
echo $$ > {procs}
rm -f {pidfile}
# dockerd starts containerd with Pdeathsig=SIGKILL, so after a crash of dockerd its containerd
# dies too, but stays a zombie until PID 1 reaps it, which is slow here; dockerd takes the zombie
# for a running containerd and times out waiting for it. Drop a pidfile naming a dead process.
pf=/run/docker/containerd/containerd.pid
if [ -f "$pf" ]; then
    p=$(cat "$pf")
    st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1 || true)
    case "$st" in
        ""|Z|X) echo "lab: removing stale $pf (pid $p: ${{st:-gone}})"; rm -f "$pf" ;;
    esac
fi
echo "lab: exec dockerd as pid $$ in netns {netns}, hostname $(hostname)"
exec {dockerd}
"#,
            netns = self.netns,
            procs = q(&procs),
            pidfile = q(&d.join("docker.pid")),
            dockerd = dockerd.join(" "),
        );
        let script_path = d.join("start-dockerd.sh");
        fs::write(&script_path, script).expect("write start-dockerd.sh");

        let log_path = self.dockerd_log_path();
        let log = append_log(&log_path);
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path()))
            .arg(format!("--mount=/proc/{holder}/ns/mnt"))
            .arg(format!("--uts=/proc/{holder}/ns/uts"))
            .args(["--", "sh"])
            .arg(&script_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn dockerd: {e}", self.name));
        let pid = child.id();
        cleanup::record_spawn(&self.suffix, pid, &format!("dockerd of {}", self.name));
        self.dockerd = Some(child);

        // Ready when /_ping answers on our socket; give up early if the process died.
        let sock = self.docker_sock.clone();
        let start = Instant::now();
        let mut died: Option<ExitStatus> = None;
        let ok = try_wait_for(DOCKERD_START_TIMEOUT, || {
            if let Some(st) = self
                .dockerd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                died = Some(st);
                return Some(false);
            }
            let r = request(&sock, "GET", "/_ping", &[], b"", Duration::from_secs(5)).ok()?;
            (r.status == 200).then_some(true)
        });
        match (ok, died) {
            (Some(true), _) => {}
            (_, Some(st)) => {
                self.dockerd = None;
                panic!(
                    "{}: dockerd (pid {pid}) exited with {} during start-up\n--- dockerd log ---\n{}",
                    self.name,
                    describe_status(&st),
                    tail_file(&log_path, 60)
                );
            }
            _ => panic!(
                "{}: dockerd (pid {pid}) did not answer on {} within {:?}\n--- dockerd log ---\n{}",
                self.name,
                sock.display(),
                start.elapsed(),
                tail_file(&log_path, 60)
            ),
        }
    }

    /// Stop dockerd (SIGTERM by PID, wait, SIGKILL after [`DOCKERD_STOP_GRACE`]) and reap it.
    /// Returns its exit status, None if it was not running.
    ///
    /// Only dockerd is signalled. On a clean exit dockerd itself stops the containers (unless
    /// `--live-restore`), its managed plugins and its containerd, as on a real machine. The host's
    /// mount namespace (/run/docker, /run/containerd) stays, held by a separate process, so a
    /// following start finds what a real restart would find.
    pub fn stop_dockerd(&mut self) -> Option<ExitStatus> {
        let mut child = self.dockerd.take()?;
        terminate(&mut child, DOCKERD_STOP_GRACE)
    }

    /// Crash dockerd: SIGKILL by PID and reap. containerd, the shims, containers and managed
    /// plugins keep running (as after a real crash); a later start reconnects to that containerd.
    pub fn kill_dockerd(&mut self) -> Option<ExitStatus> {
        let mut child = self.dockerd.take()?;
        let children = process::children_of(child.id());
        let st = process::kill_and_reap(&mut child);
        // Its children with a parent-death signal (containerd, docker-proxy) die with it: wait for
        // that, as a crash would be over by the time anyone looks.
        let _ = try_wait_for(Duration::from_secs(5), || {
            children
                .iter()
                .all(|p| process::proc_state(*p).is_none_or(|s| s == 'Z' || s == 'X'))
                .then_some(())
        });
        st
    }

    /// Stop dockerd (if it runs) and start it again with the same folders and arguments.
    pub fn restart_dockerd(&mut self) {
        self.stop_dockerd();
        self.spawn_dockerd();
    }

    /// The docker CLI command for this host's dockerd, to run where `&self` cannot go (other
    /// threads, while the host is being changed).
    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(docker_bin());
        c.env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env("DOCKER_CONFIG", &self.docker_config)
            .arg("-H")
            .arg(format!("unix://{}", self.docker_sock.display()))
            .args(args);
        c
    }

    /// docker CLI against this host's dockerd; stdout, or Err with the exit status, stdout and
    /// stderr. Times out after `timeout`.
    pub fn docker_timeout(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        run_ok(&mut self.docker_cmd(args), timeout)
    }

    pub fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        self.docker_timeout(args, CMD_TIMEOUT)
    }

    /// docker CLI; stdout, or panic with stderr and the end of the dockerd log.
    pub fn docker(&self, args: &[&str]) -> String {
        self.try_docker(args).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\n--- dockerd log (end) ---\n{}",
                self.name,
                tail_file(&self.dockerd_log_path(), 30)
            )
        })
    }

    /// Import the test image as `oncache-test:latest` (built once per test binary).
    pub fn load_image(&self) {
        let tar = rootfs_tar().to_string_lossy().into_owned();
        self.docker(&[
            "import",
            "-c",
            "CMD [\"/bin/sh\"]",
            "-c",
            "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            &tar,
            IMAGE,
        ]);
    }

    /// `docker run -d --pull=never ARGS...`; returns the container ID.
    pub fn run(&self, args: &[&str]) -> String {
        let mut a = vec!["run", "-d", "--pull=never"];
        a.extend_from_slice(args);
        self.docker(&a).trim().to_string()
    }

    /// `docker exec CONTAINER CMD...`, stdout or Err.
    pub fn try_docker_exec(&self, container: &str, cmd: &[&str]) -> Result<String, String> {
        let mut a = vec!["exec", container];
        a.extend_from_slice(cmd);
        self.try_docker(&a)
    }

    pub fn docker_exec(&self, container: &str, cmd: &[&str]) -> String {
        let mut a = vec!["exec", container];
        a.extend_from_slice(cmd);
        self.docker(&a)
    }

    /// `docker inspect` of one object, as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.docker(&["inspect", name]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("docker inspect {name}: not JSON ({e}): {out}"));
        v.get(0)
            .cloned()
            .unwrap_or_else(|| panic!("docker inspect {name}: empty answer"))
    }

    /// IPv4 address of a container on a network.
    pub fn container_ip(&self, name: &str, network: &str) -> Ipv4Addr {
        let v = self.inspect(name);
        let ip = v["NetworkSettings"]["Networks"][network]["IPAddress"]
            .as_str()
            .unwrap_or("");
        ip.parse().unwrap_or_else(|_| {
            panic!(
                "{}: container {name} has no IPv4 address on network {network}: {}",
                self.name, v["NetworkSettings"]["Networks"]
            )
        })
    }

    /// PID (in the machine's PID namespace) of a running container's init process; e.g. for
    /// `nsenter --net=/proc/PID/ns/net`.
    pub fn container_pid(&self, name: &str) -> u32 {
        let v = self.inspect(name);
        v["State"]["Pid"]
            .as_u64()
            .filter(|p| *p != 0)
            .unwrap_or_else(|| {
                panic!(
                    "{}: container {name} is not running: {}",
                    self.name, v["State"]
                )
            }) as u32
    }

    // ---- oncache -----------------------------------------------------------------------------

    /// Where the plugin listens: `<plugins_dir>/oncache.sock` (dockerd sees it as the driver
    /// `oncache`).
    pub fn oncache_socket(&self) -> PathBuf {
        self.plugins_dir.join("oncache.sock")
    }
    pub fn oncache_log_path(&self) -> PathBuf {
        self.dir.join("oncache.log")
    }
    /// The whole plugin log (all starts of this host).
    pub fn oncache_log(&self) -> String {
        fs::read_to_string(self.oncache_log_path()).unwrap_or_default()
    }
    pub fn oncache_pid(&self) -> Option<u32> {
        self.oncache.as_ref().map(|c| c.id())
    }

    /// Start the oncache daemon in the host's network namespace:
    /// `oncache daemon --socket <plugins_dir>/oncache.sock --state-dir <dir>/oncache-state
    /// --underlay ul0 --bpf-dir /sys/fs/bpf/oncache-<name> EXTRA...`, RUST_LOG=debug, output
    /// appended to `<dir>/oncache.log`; waits until it answers `POST /Plugin.Activate`.
    pub fn start_oncache(&mut self, extra_args: &[&str]) {
        self.start_oncache_env(extra_args, &[]);
    }

    /// [`Host::start_oncache`] with extra environment variables (kept for restarts).
    pub fn start_oncache_env(&mut self, extra_args: &[&str], env: &[(&str, &str)]) {
        // Without a private sysfs the daemon mounts bpffs itself where it is missing (the
        // machine's own, as on a fresh host); a private sysfs gets the machine's bound back.
        if self.oncache_private_sysfs && self.oncache_bpffs {
            ensure_bpffs();
        }
        let mut args: Vec<String> = vec![
            "daemon".into(),
            "--socket".into(),
            self.oncache_socket().to_string_lossy().into_owned(),
            "--state-dir".into(),
            self.state_dir.to_string_lossy().into_owned(),
            "--underlay".into(),
            UNDERLAY_IF.into(),
            "--bpf-dir".into(),
            self.bpf_dir.to_string_lossy().into_owned(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        self.start_oncache_cmd(Path::new(env!("CARGO_BIN_EXE_oncache")), &args, env);
    }

    /// By default the plugin runs with `nsenter --net` only, i.e. in the machine's mount
    /// namespace, where /sys/class/net shows the machine's links, not the host's (netlink,
    /// /proc/net and /proc/sys/net are right). With `true`, later starts put it in a private mount
    /// namespace with a sysfs of the host's netns on /sys (cgroup and bpffs bound back, so pins
    /// under /sys/fs/bpf are the machine's), as a real host would have.
    pub fn set_oncache_private_sysfs(&mut self, on: bool) {
        self.oncache_private_sysfs = on;
    }

    /// Later starts run the plugin in a private mount namespace with a fresh sysfs and NO
    /// bpffs on /sys/fs/bpf, as on a fresh host where nothing mounted it: whatever the plugin
    /// mounts and pins there is private to it and goes when it exits.
    pub fn set_oncache_without_bpffs(&mut self) {
        self.oncache_private_sysfs = true;
        self.oncache_bpffs = false;
    }

    /// Start any program as "the plugin" of this host (same socket, log, process tracking and
    /// readiness check as [`Host::start_oncache`]): for stand-ins and wrappers. The program must
    /// listen on [`Host::oncache_socket`].
    pub fn start_oncache_cmd<S: AsRef<OsStr>>(
        &mut self,
        program: &Path,
        args: &[S],
        env: &[(&str, &str)],
    ) {
        let spec = PluginCmd {
            program: program.to_path_buf(),
            args: args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.oncache_cmd = Some(spec);
        self.spawn_oncache();
    }

    fn spawn_oncache(&mut self) {
        assert!(
            self.oncache.is_none(),
            "{}: oncache already running",
            self.name
        );
        let spec = self.oncache_cmd.clone().expect("no plugin command");
        let procs = cleanup::tracker_procs(&self.name, "oncache").unwrap_or_else(|e| panic!("{e}"));
        let log_path = self.oncache_log_path();
        let mut log = append_log(&log_path);
        {
            use std::io::Write;
            let _ = writeln!(
                log,
                "==== lab: starting {} {} ====",
                spec.program.display(),
                spec.args.join(" ")
            );
        }
        let mut c = self.nsenter();
        if self.oncache_private_sysfs {
            c.args(["unshare", "--mount", "--propagation", "private"])
                .args(["sh", "-c", PRIVATE_SYSFS_EXEC])
                .arg(&procs)
                .arg(self.dir.join(".sysfs-stash"))
                .arg(if self.oncache_bpffs { "bpffs" } else { "no-bpffs" });
        } else {
            c.args(["sh", "-c", "echo $$ > \"$0\" && exec \"$@\""])
                .arg(&procs);
        }
        c.arg(&spec.program)
            .args(&spec.args)
            .env("RUST_LOG", rust_log())
            .env("RUST_BACKTRACE", "1")
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn plugin: {e}", self.name));
        let pid = child.id();
        cleanup::record_spawn(&self.suffix, pid, &format!("plugin of {}", self.name));
        self.oncache = Some(child);

        let sock = self.oncache_socket();
        let mut died: Option<ExitStatus> = None;
        let mut last_err = String::from("socket not there yet");
        let ok = try_wait_for(ONCACHE_START_TIMEOUT, || {
            if let Some(st) = self
                .oncache
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                died = Some(st);
                return Some(false);
            }
            if !sock.exists() {
                return None;
            }
            match request(
                &sock,
                "POST",
                "/Plugin.Activate",
                &[],
                b"",
                Duration::from_secs(5),
            ) {
                Ok(r) if r.status == 200 => Some(true),
                Ok(r) => {
                    last_err = format!("status {} body {:?}", r.status, r.body_str());
                    None
                }
                Err(e) => {
                    last_err = e.to_string();
                    None
                }
            }
        });
        // oncache answers the handshake before its start-up work (eBPF load, reconciling) is
        // done; a driver call waits for it. Any answer counts (a stand-in answers 404).
        let ok = ok.filter(|ok| *ok).and_then(|_| {
            try_wait_for(ONCACHE_START_TIMEOUT, || {
                if let Some(st) = self.oncache.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    died = Some(st);
                    return Some(false);
                }
                match request(&sock, "POST", "/Oncache.Status", &[], b"", ONCACHE_START_TIMEOUT) {
                    Ok(_) => Some(true),
                    Err(e) => {
                        last_err = format!("after the handshake: {e}");
                        None
                    }
                }
            })
        });
        match (ok, died) {
            (Some(true), _) => {}
            (_, Some(st)) => {
                self.oncache = None;
                panic!(
                    "{}: plugin (pid {pid}) exited with {} during start-up\n--- plugin log ---\n{}",
                    self.name,
                    describe_status(&st),
                    tail_file(&log_path, 60)
                );
            }
            _ => panic!(
                "{}: plugin (pid {pid}) did not answer POST /Plugin.Activate on {} within {:?} \
                 (last: {last_err})\n--- plugin log ---\n{}",
                self.name,
                sock.display(),
                ONCACHE_START_TIMEOUT,
                tail_file(&log_path, 60)
            ),
        }
    }

    fn note_in_oncache_log(&self, what: &str) {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new()
            .append(true)
            .open(self.oncache_log_path())
        {
            let _ = writeln!(f, "==== lab: {what} ====");
        }
    }

    /// SIGTERM the plugin by PID, wait (SIGKILL after [`PROCESS_STOP_GRACE`]); returns its exit
    /// status (None if it was not running).
    pub fn stop_oncache(&mut self) -> Option<ExitStatus> {
        let mut child = self.oncache.take()?;
        let st = terminate(&mut child, PROCESS_STOP_GRACE);
        self.note_in_oncache_log(&format!(
            "plugin stopped: {}",
            st.as_ref()
                .map(describe_status)
                .unwrap_or_else(|| "not reaped".into())
        ));
        st
    }

    /// SIGKILL the plugin (a crash), reap it.
    pub fn kill_oncache(&mut self) -> Option<ExitStatus> {
        let mut child = self.oncache.take()?;
        let st = process::kill_and_reap(&mut child);
        self.note_in_oncache_log("plugin killed (SIGKILL)");
        st
    }

    /// Start the plugin again (after it exited or was killed) with its last command, `env`
    /// set on top of that command's environment from now on (an empty value unsets nothing:
    /// it is passed as empty).
    pub fn respawn_oncache(&mut self, env: &[(&str, &str)]) {
        let cmd = self.oncache_cmd.as_mut().expect("the plugin was never started");
        for (k, v) in env {
            cmd.env.retain(|(e, _)| e != k);
            cmd.env.push((k.to_string(), v.to_string()));
        }
        self.spawn_oncache();
    }

    /// Stop the plugin and start it again with the same command.
    pub fn restart_oncache(&mut self) {
        self.stop_oncache();
        self.spawn_oncache();
    }

    /// Has the plugin exited on its own? Returns its status then (and forgets the process).
    pub fn oncache_exited(&mut self) -> Option<ExitStatus> {
        let st = self.oncache.as_mut()?.try_wait().ok().flatten()?;
        self.oncache = None;
        Some(st)
    }

    // ---- clean-up ----------------------------------------------------------------------------

    /// Remove containers, stop dockerd and the plugin, kill what is left in the host's cgroups,
    /// remove the cgroups. Never panics; returns what went wrong.
    fn shutdown(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        let running = self
            .dockerd
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if running {
            // Containers first, with SIGKILL (dockerd's shutdown would give each 10 s), while the
            // plugin still answers Leave / DeleteEndpoint.
            match self.docker_timeout(&["ps", "-aq"], Duration::from_secs(30)) {
                Ok(ids) => {
                    let ids: Vec<&str> = ids.split_whitespace().collect();
                    if !ids.is_empty() {
                        let mut a = vec!["rm", "-f"];
                        a.extend(ids);
                        if let Err(e) = self.docker_timeout(&a, Duration::from_secs(60)) {
                            errs.push(format!("{}: removing containers: {e}", self.name));
                        }
                    }
                }
                Err(e) => errs.push(format!("{}: listing containers: {e}", self.name)),
            }
        }
        for (what, slot, grace) in [
            ("dockerd", &mut self.dockerd, DOCKERD_STOP_GRACE),
            ("plugin", &mut self.oncache, PROCESS_STOP_GRACE),
            ("namespace holder", &mut self.ns_holder, PROCESS_STOP_GRACE),
        ] {
            if let Some(mut c) = slot.take() {
                if terminate(&mut c, grace).is_none() {
                    errs.push(format!("{}: {what} {} could not be reaped", self.name, c.id()));
                }
            }
        }
        // Managed plugins (cgroups outside the host's, see cleanup::plugin_ids).
        errs.extend(
            cleanup::kill_managed_plugins(&self.dir.join("data"), Some(&self.suffix))
                .into_iter()
                .map(|e| format!("{}: {e}", self.name)),
        );
        // containerd after a killed dockerd, shims, container processes, background commands.
        let left = cleanup::kill_host_procs(&self.name, Duration::from_secs(15));
        if !left.is_empty() {
            errs.push(format!(
                "{}: processes survive SIGKILL: {left:?}",
                self.name
            ));
        }
        let left = cleanup::remove_host_cgroups(&self.name, Duration::from_secs(10));
        if !left.is_empty() {
            errs.push(format!("{}: cgroups not removable: {left:?}", self.name));
        }
        errs
    }
}

/// `sh -c` script: `$0` = cgroup.procs to join, `$1` = stash folder, `$2` = `bpffs` or
/// `no-bpffs`, then the command. Run in a new private mount namespace of the host's netns:
/// sysfs of that netns on /sys, the machine's /sys/fs/cgroup (and /sys/fs/bpf with `bpffs`)
/// bound back on top, copies of /run/netns/* dropped (they would keep other labs' namespaces
/// alive).
const PRIVATE_SYSFS_EXEC: &str = r#"set -eu
echo $$ > "$0"
stash=$1; bpf=$2; shift 2
for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E '^/run/netns(/|$)' | sort -r); do
    umount -l "$m" 2>/dev/null || true
done
mkdir -p "$stash"
mount --rbind /sys "$stash"
mount -t sysfs sysfs /sys
mount --rbind "$stash/fs/cgroup" /sys/fs/cgroup
if [ "$bpf" = bpffs ] && awk '$5 == "/sys/fs/bpf"' /proc/self/mountinfo | grep -q .; then
    mount --rbind "$stash/fs/bpf" /sys/fs/bpf
fi
umount -l "$stash"
rmdir "$stash" 2>/dev/null || true
exec "$@""#;

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

// =============================================================================================

/// A background process in a host's network namespace (see [`Host::spawn`]). Killed (SIGTERM,
/// then SIGKILL) and reaped on drop.
pub struct Bg {
    child: Option<Child>,
    log: PathBuf,
    what: String,
}

impl Bg {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    /// stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
    /// Wait for the process to exit by itself; panics with its output after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let c = self.child.as_mut().expect("already reaped");
        match try_wait_for(timeout, || c.try_wait().ok().flatten()) {
            Some(st) => st,
            None => panic!(
                "`{}` still running after {timeout:?}; output:\n{}",
                self.what,
                self.log()
            ),
        }
    }
    /// SIGTERM, wait, SIGKILL; returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        terminate(&mut c, PROCESS_STOP_GRACE)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Format an [`Output`] for messages.
pub fn describe_output(out: &Output) -> String {
    fmt_output(out)
}

/// The log filter of the lab's daemons: `ONCACHE_LAB_RUST_LOG`, or debug without the store's
/// page-cache chatter (sled logs every disk write at debug).
pub fn rust_log() -> String {
    std::env::var("ONCACHE_LAB_RUST_LOG").unwrap_or_else(|_| "debug,sled=info".into())
}
