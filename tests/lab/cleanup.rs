//! Process tracking through cgroups, clean-up of what a lab leaves, leak checks, and the sweep
//! of labs left behind by a test binary that was killed before its Drop ran.
//!
//! Every process a host starts (dockerd and through it containerd, shims and the containers;
//! the plugin; background commands) lives in the cgroup subtree `lab-<host name>` of one
//! "tracker" hierarchy (the v1 `pids` hierarchy here; the cgroup2 root on a pure v2 machine):
//! `lab-<host>/dockerd`, `lab-<host>/oncache`, `lab-<host>/bg`. dockerd gets the RELATIVE
//! `--cgroup-parent=lab-<host name>`: runc resolves it below the cgroups of dockerd itself, so
//! containers land in `pids:/lab-<host>/dockerd/lab-<host>/<id>` (inside the tracker subtree) and,
//! in the other hierarchies, below the test's own cgroups, e.g.
//! `memory:/process_api/<id>/lab-<host>/<id>`: they stay inside the cgroups the sandbox gave
//! the session (an absolute `/lab-<host>` would put them at the hierarchy roots, outside).
//! "Which processes belong to this host" is thus an exact, name-based question that never
//! involves process names, and leftovers can be killed one PID at a time.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::process::{proc_state, run, signal, start_time, try_wait_for};

/// Mount points of all cgroup hierarchies (v1 controllers, name=systemd, cgroup2).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut roots = Vec::new();
    for line in mi.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = post.split_whitespace().next().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                roots.push(PathBuf::from(unescape_mount(mp)));
            }
        }
    }
    roots
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The hierarchy used to track a host's processes: v1 `pids` if mounted, else the cgroup2 mount,
/// else any hierarchy.
pub fn tracker_root() -> PathBuf {
    let roots = cgroup_roots();
    for want in ["pids", "unified", "systemd"] {
        if let Some(r) = roots
            .iter()
            .find(|r| r.file_name().is_some_and(|n| n == want))
        {
            return r.clone();
        }
    }
    roots
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// Cgroup name (in every hierarchy) of a host: also dockerd's `--cgroup-parent`.
pub fn host_cgroup(host_name: &str) -> String {
    format!("lab-{host_name}")
}

/// Create the tracker cgroup `lab-<host>/<role>` and return the path of its cgroup.procs.
pub fn tracker_procs(host_name: &str, role: &str) -> Result<PathBuf, String> {
    let dir = tracker_root().join(host_cgroup(host_name)).join(role);
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    Ok(dir.join("cgroup.procs"))
}

/// Directories in any cgroup hierarchy (up to `max_depth` below its root) whose name satisfies
/// `pred`; matches are not searched further.
pub fn find_cgroup_dirs(pred: impl Fn(&str) -> bool, max_depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in cgroup_roots() {
        let mut stack = vec![(root, 0usize)];
        while let Some((d, depth)) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if pred(&name) {
                    found.push(e.path());
                } else if depth + 1 < max_depth {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    found
}

/// The cgroup directories of a host in every hierarchy: `lab-<host>` at the root (tracker) and
/// below the caller's own cgroups (dockerd's relative `--cgroup-parent`), e.g.
/// memory:/process_api/<id>/lab-<host>.
pub fn host_cgroup_dirs(host_name: &str) -> Vec<PathBuf> {
    let name = host_cgroup(host_name);
    find_cgroup_dirs(|n| n == name, 6)
}

/// All PIDs in a cgroup directory and below.
pub fn procs_below(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// PIDs of every live (non-zombie) process in cgroups named `name` (any hierarchy, any depth
/// up to 6) and below.
pub fn procs_in_cgroups_named(name: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = find_cgroup_dirs(|n| n == name, 6)
        .iter()
        .flat_map(|d| procs_below(d))
        .filter(|p| proc_state(*p).is_some_and(|s| s != 'Z'))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// PIDs of every live (non-zombie) process of a host, found through its cgroups.
pub fn host_procs(host_name: &str) -> Vec<u32> {
    procs_in_cgroups_named(&host_cgroup(host_name))
}

/// SIGKILL, one PID at a time, every process in cgroups named `name` (see
/// [`procs_in_cgroups_named`]) until none are left. Returns the PIDs still there after `timeout`
/// (empty on success).
pub fn kill_cgroups_named(name: &str, timeout: Duration) -> Vec<u32> {
    let me = std::process::id();
    let mut left = Vec::new();
    let done = try_wait_for(timeout, || {
        left = procs_in_cgroups_named(name);
        left.retain(|p| *p != me);
        if left.is_empty() {
            return Some(());
        }
        for p in &left {
            signal(*p, libc::SIGKILL);
        }
        None
    });
    if done.is_some() {
        Vec::new()
    } else {
        left
    }
}

/// [`kill_cgroups_named`] for a host's cgroups.
pub fn kill_host_procs(host_name: &str, timeout: Duration) -> Vec<u32> {
    kill_cgroups_named(&host_cgroup(host_name), timeout)
}

/// Remove cgroup directories named `name` (deepest first) in every hierarchy. Returns what could
/// not be removed.
pub fn remove_cgroups_named(name: &str, timeout: Duration) -> Vec<PathBuf> {
    let tops = find_cgroup_dirs(|n| n == name, 6);
    let mut left = Vec::new();
    let _ = try_wait_for(timeout, || {
        left.clear();
        for top in &tops {
            let mut dirs = Vec::new();
            let mut stack = vec![top.clone()];
            while let Some(d) = stack.pop() {
                if let Ok(rd) = fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
                dirs.push(d);
            }
            // Children were pushed after their parents: remove in reverse order.
            for d in dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
            if top.exists() {
                left.push(top.clone());
            }
        }
        left.is_empty().then_some(())
    });
    left
}

/// [`remove_cgroups_named`] for a host's cgroups.
pub fn remove_host_cgroups(host_name: &str, timeout: Duration) -> Vec<PathBuf> {
    remove_cgroups_named(&host_cgroup(host_name), timeout)
}

/// IDs of the managed plugins (`docker plugin create/install`) in a dockerd data root.
///
/// dockerd runs managed plugins through containerd like containers, but NOT under
/// `--cgroup-parent`: each gets the cgroup `/<plugin id>` at the root of every hierarchy, outside
/// the host's cgroups. Their IDs (random, 64 hex digits) are the names of the folders in
/// `<data-root>/plugins/`, readable even after dockerd is gone; that is how the clean-up finds
/// them.
pub fn plugin_ids(data_root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(data_root.join("plugins"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Kill what is left of the managed plugins of a data root and remove their cgroups. Returns
/// problems.
pub fn kill_managed_plugins(data_root: &Path, suffix: Option<&str>) -> Vec<String> {
    let mut errs = Vec::new();
    for id in plugin_ids(data_root) {
        if let Some(s) = suffix {
            record_cgroup(s, &id);
        }
        let left = kill_cgroups_named(&id, Duration::from_secs(10));
        if !left.is_empty() {
            errs.push(format!(
                "managed plugin {id}: processes survive SIGKILL: {left:?}"
            ));
        }
        let left = remove_cgroups_named(&id, Duration::from_secs(5));
        if !left.is_empty() {
            errs.push(format!(
                "managed plugin {id}: cgroups not removable: {left:?}"
            ));
        }
    }
    errs
}

/// Names of network namespaces in /run/netns.
pub fn netns_names() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Does a namespace / host name belong to the lab with this suffix ("oc<suffix>sw",
/// "oc<suffix>h<digits>")?
pub fn belongs(name: &str, suffix: &str) -> bool {
    let Some(rest) = name.strip_prefix(&format!("oc{suffix}")) else {
        return false;
    };
    rest == "sw"
        || rest
            .strip_prefix('h')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

pub fn delete_netns(name: &str) -> Result<(), String> {
    if !Path::new("/run/netns").join(name).exists() {
        return Ok(());
    }
    let out = run(
        Command::new("ip").args(["netns", "del", name]),
        Duration::from_secs(30),
    )?;
    if out.status.success() || !Path::new("/run/netns").join(name).exists() {
        Ok(())
    } else {
        Err(format!(
            "ip netns del {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `rm -rf`, retried for a while (a dying process may still hold a file in it).
pub fn remove_tree(path: &Path, timeout: Duration) -> Result<(), String> {
    let mut last = String::new();
    let ok = try_wait_for(timeout, || match fs::remove_dir_all(path) {
        Ok(()) => Some(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
        Err(e) => {
            last = e.to_string();
            None
        }
    });
    ok.ok_or_else(|| format!("rm -rf {}: {last}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Registry of long-lived processes a lab started, by suffix: the leak check verifies that each
// of them is gone (neither running nor a zombie).

/// pid, start time (to tell a reused pid), what it is.
type Spawned = Vec<(u32, u64, String)>;

static SPAWNED: Mutex<Option<HashMap<String, Spawned>>> = Mutex::new(None);

pub fn record_spawn(suffix: &str, pid: u32, what: &str) {
    let st = start_time(pid).unwrap_or(0);
    let mut g = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(HashMap::new)
        .entry(suffix.to_string())
        .or_default()
        .push((pid, st, what.to_string()));
}

static CGROUPS: Mutex<Option<HashMap<String, Vec<String>>>> = Mutex::new(None);

/// Remember a cgroup name outside the lab's naming scheme (a managed plugin's ID) for the leak
/// check.
pub fn record_cgroup(suffix: &str, name: &str) {
    let mut g = CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
    let v = g
        .get_or_insert_with(HashMap::new)
        .entry(suffix.to_string())
        .or_default();
    if !v.iter().any(|n| n == name) {
        v.push(name.to_string());
    }
}

fn recorded_cgroups(suffix: &str) -> Vec<String> {
    let g = CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref()
        .and_then(|m| m.get(suffix).cloned())
        .unwrap_or_default()
}

fn recorded(suffix: &str) -> Vec<(u32, u64, String)> {
    let g = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref()
        .and_then(|m| m.get(suffix).cloned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------

/// Everything the lab with `suffix` may have left behind; empty when clean.
pub fn leaks(suffix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id();
    let lab_dir = format!("/tmp/oncache-lab-{suffix}");
    let lab_dir_slash = format!("{lab_dir}/");

    for n in netns_names() {
        if belongs(&n, suffix) {
            found.push(format!("network namespace {n}"));
        }
    }
    // Links in the machine's own namespace (the lab makes none there; this catches mistakes).
    if let Ok(out) = run(
        Command::new("ip").args(["-o", "link", "show"]),
        Duration::from_secs(10),
    ) {
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.contains(&format!("oc{suffix}h")) || l.contains(&format!("oc{suffix}sw")) {
                found.push(format!("link: {l}"));
            }
        }
    }
    // Processes: recorded PIDs (same start time => same process, running or zombie), and
    // anything in the lab's cgroups or mentioning its folder on its command line.
    for (pid, st, what) in recorded(suffix) {
        if pid != me && start_time(pid).is_some_and(|s| s == st) {
            found.push(format!(
                "process {pid} ({what}) still exists, state {:?}",
                proc_state(pid)
            ));
        }
    }
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // Zombies are dead already; those of ours are caught above by PID, the others
            // (shims re-parented to PID 1) are PID 1's to reap.
            if pid == me || proc_state(pid).is_none_or(|s| s == 'Z') {
                continue;
            }
            let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let in_cg = cg.lines().any(|l| {
                l.rsplit(':').next().is_some_and(|p| {
                    p.split('/')
                        .any(|c| c.strip_prefix("lab-").is_some_and(|n| belongs(n, suffix)))
                })
            });
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if in_cg || cmd.contains(&lab_dir_slash) || cmd.trim_end().ends_with(&lab_dir) {
                found.push(format!(
                    "process {pid} ({}) {cmd}",
                    if in_cg { "in lab cgroup" } else { "cmdline" }
                ));
            }
        }
    }
    // Mounts visible in the machine's mount namespace.
    if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
        for l in mi.lines() {
            let mp = l.split_whitespace().nth(4).unwrap_or("");
            let last = mp.rsplit('/').next().unwrap_or("");
            if mp.starts_with(&lab_dir_slash) || mp == lab_dir || belongs(last, suffix) {
                found.push(format!("mount: {l}"));
            }
        }
    }
    if Path::new(&lab_dir).exists() {
        found.push(format!("folder {lab_dir}"));
    }
    for d in find_cgroup_dirs(
        |n| n.strip_prefix("lab-").is_some_and(|h| belongs(h, suffix)),
        6,
    ) {
        found.push(format!("cgroup {}", d.display()));
    }
    for id in recorded_cgroups(suffix) {
        for p in procs_in_cgroups_named(&id) {
            found.push(format!("process {p} of managed plugin {id}"));
        }
        for d in find_cgroup_dirs(|n| n == id, 6) {
            found.push(format!("cgroup of managed plugin {}", d.display()));
        }
    }
    if let Ok(rd) = fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.strip_prefix("oncache-")
                .is_some_and(|h| belongs(h, suffix))
            {
                found.push(format!("bpf pin folder {}", e.path().display()));
            }
        }
    }
    found
}

/// Panic listing everything the lab with `suffix` left behind (network namespaces, links,
/// processes, mounts, folders, cgroups, bpf pin folders).
pub fn assert_no_leaks(suffix: &str) {
    let l = leaks(suffix);
    assert!(
        l.is_empty(),
        "lab {suffix} left things behind:\n  {}",
        l.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Parse "<pid>-<n>" at the start of a lab suffix-bearing name such as "oc123-4h0".
fn owner_pid(name_after_oc: &str) -> Option<u32> {
    let (pid, rest) = name_after_oc.split_once('-')?;
    let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if n.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Remove what labs of test binaries that no longer run left behind (their Drop never ran,
/// e.g. SIGKILL or Ctrl-C). Only names of this harness's own patterns, whose owning PID is dead,
/// are touched. Runs once per process.
pub fn sweep_stale() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let me = std::process::id();
        let dead = |pid: u32| pid != me && !pid_alive(pid);
        // Hosts' processes, then their cgroups (in every hierarchy).
        let stale = |n: &str| {
            n.strip_prefix("lab-oc")
                .and_then(owner_pid)
                .is_some_and(dead)
        };
        let mut hosts: Vec<String> = find_cgroup_dirs(stale, 6)
            .iter()
            .filter_map(|d| {
                d.file_name()?
                    .to_str()?
                    .strip_prefix("lab-")
                    .map(String::from)
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        for host in hosts {
            let left = kill_host_procs(&host, Duration::from_secs(10));
            if !left.is_empty() {
                eprintln!("lab sweep: processes of {host} survive SIGKILL: {left:?}");
            }
            remove_host_cgroups(&host, Duration::from_secs(5));
        }
        for n in netns_names() {
            if let Some(after) = n.strip_prefix("oc") {
                if owner_pid(after).is_some_and(dead) && (n.ends_with("sw") || n.contains('h')) {
                    if let Err(e) = delete_netns(&n) {
                        eprintln!("lab sweep: {e}");
                    }
                }
            }
        }
        if let Ok(rd) = fs::read_dir("/sys/fs/bpf") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(after) = n.strip_prefix("oncache-oc") {
                    if owner_pid(after).is_some_and(dead) {
                        let _ = remove_tree(&e.path(), Duration::from_secs(2));
                    }
                }
            }
        }
        if let Ok(rd) = fs::read_dir("/tmp") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let pid = if let Some(p) = n.strip_prefix("oncache-lab-image-") {
                    p.parse::<u32>().ok()
                } else if let Some(after) = n.strip_prefix("oncache-lab-") {
                    owner_pid(after)
                } else {
                    None
                };
                if pid.is_some_and(dead) {
                    // Managed plugins of the stale lab's dockerds live outside its cgroups.
                    if let Ok(hosts) = fs::read_dir(e.path()) {
                        for h in hosts.flatten() {
                            for err in kill_managed_plugins(&h.path().join("data"), None) {
                                eprintln!("lab sweep: {err}");
                            }
                        }
                    }
                    if let Err(e) = remove_tree(&e.path(), Duration::from_secs(5)) {
                        eprintln!("lab sweep: {e}");
                    }
                }
            }
        }
    });
}
