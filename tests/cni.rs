//! The CNI front end: the `oncache` binary as a CNI plugin, driven by real podman 4.3 (rootful,
//! CNI backend) on two namespace-lab hosts, and by hand for what the protocol says about
//! VERSION, errors and DEL.
//!
//! Podman runs in each lab host's network namespace and in a private mount namespace held by a
//! background process of that host (as the lab does for dockerd), with its own storage, run
//! and network-config folders under the host's lab folder, private tmpfs on the machine's
//! folders it would write to otherwise (/run: /run/netns for its container namespaces,
//! /run/runc; /var/lib: libcni's cache, its blob cache; /var/tmp; /dev/shm: its locks), and
//! `cni_plugin_dirs` naming a folder with the built `oncache` binary and Debian's `portmap`. Containers get
//! `--cgroup-parent /lab-<host>/podman`, so the lab's clean-up finds and ends what is left.

mod lab;
mod support;

use lab::{Bg, Host, Lab};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::*;

const NET: &str = "oc1";
const VNI: &str = "300";
const SUBNET: &str = "10.220.0.0/24";
const IMAGE: &str = "localhost/oncache-test:latest";

/// Runs the binary as a CNI plugin: `env` (CNI_*), `stdin`; in `netns` (a path) if given.
fn cni_call(netns: Option<&str>, env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write;
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg("--").arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(env.iter().copied());
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn the plugin");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "CNI {:?}: {} stdout {} stderr {}",
        env.iter().find(|(k, _)| *k == "CNI_COMMAND").map(|(_, v)| *v),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// An error as the spec wants it: non-zero exit, `{cniVersion, code, msg}` on stdout.
fn assert_cni_error(out: &Output, code: u64, msg_has: &str) {
    assert!(!out.status.success(), "an error must exit non-zero");
    let v = stdout_json(out);
    assert_eq!(v["code"].as_u64(), Some(code), "{v}");
    assert!(v["msg"].as_str().unwrap_or_default().contains(msg_has), "{v}");
    assert!(v["cniVersion"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
}

/// The network configuration a runtime hands the plugin (its conflist entry, with name and
/// version).
fn net_conf(socket: &Path, state_dir: &Path, range: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": NET, "type": "oncache", "vni": 300, "subnet": SUBNET, "ipRange": range,
        "socket": socket, "stateDir": state_dir})
}

#[test]
fn the_binary_speaks_cni_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("no-daemon.sock");
    let state = dir.path().join("state");
    let conf = net_conf(&gone, &state, SUBNET).to_string();

    // VERSION needs no daemon and no configuration beyond the version.
    let out = cni_call(None, &[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));

    let add = |stdin: &str, extra: &[(&str, &str)]| {
        let mut env = vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/proc/self/ns/net"), ("CNI_IFNAME", "eth0")];
        env.extend_from_slice(extra);
        cni_call(None, &env, stdin)
    };
    assert_cni_error(&add("{not json", &[]), 6, "decoding the network configuration");
    assert_cni_error(&add(&net_conf(&gone, &state, SUBNET).to_string().replace("1.0.0", "9.9.9"), &[]), 1, "not supported");
    // The daemon is not there: try again later, and nothing is left behind.
    assert_cni_error(&add(&conf, &[]), 11, "does not answer");
    let out = add(&conf, &[("CNI_NETNS", "/nonexistent/netns")]);
    assert_cni_error(&out, 4, "/nonexistent/netns");
    let out = cni_call(None, &[("CNI_COMMAND", "FROB")], &conf);
    assert_cni_error(&out, 4, "unknown CNI_COMMAND \"FROB\"");
    assert!(!state.exists(), "a failed ADD wrote state: {:?}", std::fs::read_dir(&state).map(|d| d.count()));

    // DEL always exits 0: nerdctl's DEL with no netns, the daemon down: queued for its start.
    let del = |stdin: &str| cni_call(None, &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", ""), ("CNI_IFNAME", "eth0")], stdin);
    for _ in 0..2 {
        let out = del(&conf);
        assert!(out.status.success() && out.stdout.is_empty(), "DEL: {out:?}");
    }
    let queued: Vec<_> = std::fs::read_dir(state.join("cni-queue")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(queued.len(), 1, "a repeated DEL is one queued DEL: {queued:?}");
    let q: Value = serde_json::from_slice(&std::fs::read(state.join("cni-queue").join(&queued[0])).unwrap()).unwrap();
    assert_eq!((q["command"].as_str(), q["container_id"].as_str(), q["ifname"].as_str()), (Some("DEL"), Some("c1"), Some("eth0")));
    // STATUS with the daemon down: "plugin not available".
    assert_cni_error(&cni_call(None, &[("CNI_COMMAND", "STATUS")], &conf), 50, "does not answer");
}

/// Podman on one lab host: its private mount namespace and folders.
struct Podman {
    holder: Bg,
    dir: PathBuf,
    host: String,
}

impl Podman {
    fn new(h: &Host) -> Podman {
        let dir = h.dir.join("podman");
        let bin = dir.join("cni-bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("oncache")).unwrap();
        std::fs::copy("/usr/lib/cni/portmap", bin.join("portmap")).expect("Debian's portmap (containernetworking-plugins)");
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{d}/events.log\"\n\
                 tmp_dir = \"{d}/tmp\"\nruntime = \"runc\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/cni-bin\"]\nnetwork_config_dir = \"{d}/net.d\"\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("storage.conf"), format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/runroot\"\ngraphroot = \"{d}/root\"\n")).unwrap();
        let ready = dir.join("ready");
        let script = format!(
            "set -eu\n\
             for m in $(awk '{{print $5}}' /proc/self/mountinfo | grep -E '^/run/(netns|docker)(/|$)' | sort -r); do umount -l \"$m\" 2>/dev/null || true; done\n\
             for d in /run /var/lib /var/tmp; do mount -t tmpfs -o mode=0755 tmpfs $d; done\n\
             mount -t tmpfs -o mode=1777 tmpfs /dev/shm\n\
             mkdir -p /run/netns /run/lock\n\
             echo $$ > {ready}\n\
             exec sleep 2147483647\n",
            ready = ready.display()
        );
        std::fs::write(dir.join("hold.sh"), script).unwrap();
        let hold = dir.join("hold.sh");
        let holder = h.spawn(&["unshare", "--mount", "--propagation", "private", "sh", hold.to_str().unwrap()]);
        lab::wait_for("podman's mount namespace", Duration::from_secs(10), || std::fs::read_to_string(&ready).ok().filter(|s| !s.trim().is_empty()));
        let p = Podman { holder, dir, host: h.name.clone() };
        p.ok(h, &["import", lab::rootfs_tar().to_str().unwrap(), IMAGE]);
        p
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    fn try_run(&self, h: &Host, args: &[&str]) -> Result<String, String> {
        let d = self.dir.display().to_string();
        let mnt = format!("--mount=/proc/{}/ns/mnt", self.holder.pid());
        let (conf, storage) = (format!("CONTAINERS_CONF={d}/containers.conf"), format!("CONTAINERS_STORAGE_CONF={d}/storage.conf"));
        let mut a = vec!["nsenter", &mnt, "--", "env", &conf, &storage, "podman"];
        a.extend_from_slice(args);
        let out = h.exec(&a);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("podman {}: {}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr)))
        }
    }

    fn ok(&self, h: &Host, args: &[&str]) -> String {
        self.try_run(h, args).unwrap_or_else(|e| panic!("{}: {e}\n--- oncache log (end) ---\n{}", self.host, tail(&h.oncache_log(), 30)))
    }

    /// `podman run -d [EXTRA...]` on the oncache network; the container's address.
    fn start(&self, h: &Host, name: &str, extra: &[&str]) -> String {
        let parent = format!("/lab-{}/podman", h.name);
        self.ok(h, &self.run_args(name, &parent, extra));
        self.ip(h, name)
    }

    fn run_args<'a>(&self, name: &'a str, parent: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        // This sandbox's hard limits are below podman's defaults for root.
        let mut a = vec!["run", "-d", "--pull", "never", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--cgroup-parent", parent,
            "--name", name, "--network", NET];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[IMAGE, "sleep", "1d"]);
        a
    }

    fn ip(&self, h: &Host, name: &str) -> String {
        self.ok(h, &["inspect", "-f", "{{.NetworkSettings.Networks.oc1.IPAddress}}", name]).trim().to_string()
    }

    fn exec(&self, h: &Host, name: &str, cmd: &[&str]) -> Result<String, String> {
        let mut a = vec!["exec", name];
        a.extend_from_slice(cmd);
        self.try_run(h, &a)
    }

    fn rm(&self, h: &Host, name: &str) {
        self.ok(h, &["rm", "-f", "-t", "0", name]);
    }
}

/// A network namespace the test made; deleted on drop.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn add_network(h: &Host, p: &Podman, range: &str) {
    let (sock, state, conf) = (h.oncache_socket(), h.state_dir.clone(), p.conf_dir());
    let out = h.exec(&[BIN, "cni", "add-network", NET, "--subnet", SUBNET, "--vni", VNI, "--ip-range", range,
        "--conf-dir", conf.to_str().unwrap(), "--socket", sock.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]);
    assert!(out.status.success(), "add-network: {}", lab::describe_output(&out));
}

fn attachments(h: &Host) -> Vec<Value> {
    status(h)["networks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e.get("cni").is_some())
        .collect()
}

fn queue_len(h: &Host) -> usize {
    std::fs::read_dir(h.state_dir.join("cni-queue")).map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count()).unwrap_or(0)
}

fn wait_ping(p: &Podman, h: &Host, from: &str, to: &str) {
    let ok = lab::try_wait_for(Duration::from_secs(20), || p.exec(h, from, &["ping", "-c", "1", "-W", "1", to]).ok());
    assert!(ok.is_some(), "{from} cannot reach {to}; status {}\noncache log:\n{}", status(h), tail(&h.oncache_log(), 30));
}

fn egress_hits(h: &Host) -> u64 {
    counter(&stats(h), "egress_fast", "hits")
}

#[test]
fn podman_containers_on_two_hosts_share_an_oncache_cni_network() {
    let mut lab = Lab::new(2);
    let (ip0, ip1) = (lab.host(0).underlay_ip.to_string(), lab.host(1).underlay_ip.to_string());
    let args0 = ["--peer", ip1.as_str()];
    lab.host_mut(0).start_oncache(&args0);
    lab.host_mut(1).start_oncache(&["--peer", &ip0]);
    let (p0, p1) = std::thread::scope(|s| {
        let a = s.spawn(|| Podman::new(lab.host(0)));
        let b = s.spawn(|| Podman::new(lab.host(1)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (h0, h1) = (lab.host(0), lab.host(1));
    add_network(h0, &p0, "10.220.0.0/25");
    add_network(h1, &p1, "10.220.0.128/25");
    let listed = p0.ok(h0, &["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(listed.contains("oc1 oncache"), "podman does not list the conflist network: {listed}");

    let a = p0.start(h0, "ca", &[]);
    // Port 18080 of host 1 goes to cb's 8080 (portmap, chained after oncache in the conflist).
    let b = p1.start(h1, "cb", &["-p", "18080:8080"]);
    assert!(a.starts_with("10.220.0.") && a != "10.220.0.1", "host 0 allocates from its range, not the gateway: {a}");
    assert!(b.starts_with("10.220.0.1") && b.split('.').nth(3).unwrap().parse::<u8>().unwrap() >= 128, "host 1 from its own range: {b}");
    // The container side as the result described it: MAC from the address, default route via
    // the gateway on the bridge.
    let link = p0.exec(h0, "ca", &["ip", "-o", "link", "show", "eth0"]).unwrap();
    let octets: Vec<u8> = a.split('.').map(|o| o.parse().unwrap()).collect();
    let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", octets[0], octets[1], octets[2], octets[3]);
    assert!(link.contains(&mac), "{link}");
    assert!(p0.exec(h0, "ca", &["ip", "route"]).unwrap().contains("default via 10.220.0.1"));
    p0.exec(h0, "ca", &["ping", "-c", "1", "-W", "2", "10.220.0.1"]).expect("the gateway on the bridge answers");
    assert!(h0.sh("ip -o addr show dev ocbr300").contains("10.220.0.1/24"));

    // STATUS (spec 1.1): ready while the daemon answers.
    let conf = net_conf(&h0.oncache_socket(), &h0.state_dir, "10.220.0.0/25").to_string();
    let out = cni_call(Some(&h0.netns_path()), &[("CNI_COMMAND", "STATUS")], &conf);
    assert!(out.status.success() && out.stdout.is_empty(), "STATUS: {out:?}");

    // The CLI lists the network as the runtimes' (prune, which asks dockerd, leaves it alone).
    let ls: Value = serde_json::from_str(&cli(h0, &["network", "ls", "--json"]).unwrap()).unwrap();
    assert_eq!(ls[0]["id"], "cni:oc1");
    assert_eq!((ls[0]["cni"].as_bool(), ls[0]["in_docker"].is_null(), ls[0]["vni"].as_u64()), (Some(true), true, Some(300)), "{ls}");

    // Across hosts over the overlay, programmed by the same control plane as Docker networks.
    wait_remotes(h0, 1, Duration::from_secs(20));
    wait_remotes(h1, 1, Duration::from_secs(20));
    wait_ping(&p0, h0, "ca", &b);
    wait_ping(&p1, h1, "cb", &a);
    let before = (egress_hits(h0), egress_hits(h1));
    let sum = p1
        .exec(h1, "cb", &["sh", "-c", "mkdir -p /www && dd if=/dev/urandom of=/www/data bs=1M count=16 2>/dev/null && httpd -p 8080 -h /www && sha256sum /www/data"])
        .unwrap();
    let sum = sum.split_whitespace().next().unwrap().to_string();
    for round in 0..2 {
        let got = p0.exec(h0, "ca", &["sh", "-c", &format!("wget -q -O - http://{b}:8080/data | sha256sum")]).unwrap();
        assert_eq!(got.split_whitespace().next(), Some(sum.as_str()), "TCP transfer {round} across hosts corrupted");
    }
    let after = (egress_hits(h0), egress_hits(h1));
    eprintln!("fast-path egress hits (host 0, host 1): {before:?} -> {after:?}");
    assert!(after.0 > before.0 + 50 && after.1 > before.1 + 50, "fast-path egress hits {before:?} -> {after:?}; stats {}", stats(h0));

    // The outside: host 1's underlay address (not on the overlay) through host 0's gateway,
    // masqueraded; and the way in through a port mapping on host 1.
    p0.exec(h0, "ca", &["ping", "-c", "1", "-W", "2", &ip1]).expect("outside access through the gateway");
    let got = h0.sh(&format!("busybox wget -q -O - http://{ip1}:18080/data | sha256sum"));
    assert_eq!(got.split_whitespace().next(), Some(sum.as_str()), "through the port mapping");

    // Restarting a daemon interrupts nothing: it adopts cb's links, gateway and rules.
    lab.host_mut(1).restart_oncache();
    let (h0, h1) = (lab.host(0), lab.host(1));
    assert!(h1.oncache_log().contains("reconciled 1 networks, 1 endpoints"), "{}", tail(&h1.oncache_log(), 20));
    wait_ping(&p0, h0, "ca", &b);
    p1.exec(h1, "cb", &["ping", "-c", "1", "-W", "2", &ip0]).expect("outside access after the restart");

    // Direct calls as go-cni makes them: two ADDs for one container at once (eth0 asking for
    // an address and a MAC through CNI_ARGS, eth1 not), CHECK, a repeated ADD, then DELs.
    let ns = format!("oc{}c0", lab.suffix());
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    let nsg = NetnsGuard(ns.clone());
    let nspath = format!("/run/netns/{ns}");
    let conf0 = net_conf(&h0.oncache_socket(), &h0.state_dir, "10.220.0.0/25").to_string();
    let direct = |cmd: &str, ifname: &str, args: &str| {
        let env = [("CNI_COMMAND", cmd), ("CNI_CONTAINERID", "direct1"), ("CNI_NETNS", nspath.as_str()), ("CNI_IFNAME", ifname), ("CNI_ARGS", args)];
        cni_call(Some(&h0.netns_path()), &env, &conf0)
    };
    let before = attachments(h0).len();
    let (r0, r1) = std::thread::scope(|s| {
        let x = s.spawn(|| direct("ADD", "eth0", "IgnoreUnknown=1;IP=10.220.0.77;MAC=02:00:00:00:00:77"));
        let y = s.spawn(|| direct("ADD", "eth1", ""));
        (x.join().unwrap(), y.join().unwrap())
    });
    assert!(r0.status.success() && r1.status.success(), "{r0:?} {r1:?}");
    let (v0, v1) = (stdout_json(&r0), stdout_json(&r1));
    assert_eq!(v0["cniVersion"], "1.0.0");
    assert_eq!(v0["ips"][0]["address"], "10.220.0.77/24");
    assert_eq!(v0["ips"][0]["interface"], 1);
    assert_eq!(v0["interfaces"][1], json!({"name": "eth0", "mac": "02:00:00:00:00:77", "sandbox": nspath}));
    assert!(v0["interfaces"][0].get("sandbox").is_none() && v0["interfaces"][0]["mac"].is_string(), "{v0}");
    assert_eq!(v0["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "10.220.0.1"}));
    assert_ne!(v1["ips"][0]["address"], v0["ips"][0]["address"]);
    let inside = h0.sh(&format!("ip -n {ns} -o addr show"));
    assert!(inside.lines().any(|l| l.contains(" eth0 ") && l.contains("inet 10.220.0.77/24")), "{inside}");
    assert!(inside.contains("eth1"), "{inside}");
    assert_eq!(attachments(h0).len(), before + 2);
    let out = direct("CHECK", "eth0", "");
    assert!(out.status.success() && out.stdout.is_empty(), "CHECK: {out:?}");
    // A repeated ADD replaces the attachment: one record, the same address, a new pair.
    let again = direct("ADD", "eth0", "");
    assert!(again.status.success(), "{again:?}");
    assert_eq!(stdout_json(&again)["ips"][0]["address"], "10.220.0.77/24");
    assert_eq!(attachments(h0).len(), before + 2);
    // An address another attachment holds is refused by name.
    let dup = cni_call(Some(&h0.netns_path()), &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "direct2"), ("CNI_NETNS", &nspath), ("CNI_IFNAME", "eth2"), ("CNI_ARGS", "IP=10.220.0.77")], &conf0);
    assert_cni_error(&dup, 7, "already in use");
    for ifname in ["eth0", "eth1"] {
        let out = direct("DEL", ifname, "");
        assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    }
    assert_eq!(attachments(h0).len(), before);
    assert!(!h0.sh(&format!("ip -n {ns} -o link show")).contains("eth"), "container interfaces left");
    assert!(direct("CHECK", "eth0", "").status.code() != Some(0), "CHECK of a deleted attachment passes");
    drop(nsg);

    // GC: only what the runtime lists stays. An attachment not listed goes, links and record.
    let c2 = p0.start(h0, "cc", &[]);
    assert_eq!(attachments(h0).len(), 2);
    let ca_id = p0.ok(h0, &["inspect", "-f", "{{.Id}}", "ca"]).trim().to_string();
    let mut gc = net_conf(&h0.oncache_socket(), &h0.state_dir, "10.220.0.0/25");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": ca_id, "ifname": "eth0"}]);
    for _ in 0..2 {
        let out = cni_call(Some(&h0.netns_path()), &[("CNI_COMMAND", "GC")], &gc.to_string());
        assert!(out.status.success(), "GC: {out:?}");
        let left = attachments(h0);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0]["cni"]["container_id"], ca_id.as_str());
    }
    assert!(p0.exec(h0, "cc", &["ip", "link", "show", "eth0"]).is_err(), "cc ({c2}) still has its interface after GC");
    // The older key works too, and podman's own DEL for what GC removed succeeds.
    gc.as_object_mut().unwrap().remove("cni.dev/valid-attachments");
    gc["cni.dev/attachments"] = json!([{"containerID": ca_id, "ifname": "eth0"}]);
    assert!(cni_call(Some(&h0.netns_path()), &[("CNI_COMMAND", "GC")], &gc.to_string()).status.success());
    p0.rm(h0, "cc");
    assert_eq!(attachments(h0).len(), 1);

    // DEL is idempotent: a repeat of podman's DEL (with and without the netns) changes nothing.
    let cb_id = p1.ok(h1, &["inspect", "-f", "{{.Id}}", "cb"]).trim().to_string();
    p1.rm(h1, "cb");
    let conf1 = net_conf(&h1.oncache_socket(), &h1.state_dir, "10.220.0.128/25").to_string();
    for netns in ["", "/run/netns/gone"] {
        let out = cni_call(Some(&h1.netns_path()), &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", &cb_id), ("CNI_NETNS", netns), ("CNI_IFNAME", "eth0")], &conf1);
        assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    }
    assert!(attachments(h1).is_empty() && queue_len(h1) == 0, "{:?}", attachments(h1));
    wait_remotes(h0, 0, Duration::from_secs(20));

    // The daemon down during ADD: podman's run fails with CNI's "try again later", and its
    // clean-up DEL is queued and applied when the daemon starts.
    lab.host_mut(0).stop_oncache();
    let h0 = lab.host(0);
    let parent = format!("/lab-{}/podman", h0.name);
    let err = p0.try_run(h0, &p0.run_args("cd", &parent, &[])).expect_err("podman run without the daemon");
    assert!(err.contains("oncache daemon does not answer"), "{err}");
    let _ = p0.try_run(h0, &["rm", "-f", "-t", "0", "cd"]);
    // ... and during DEL: podman's rm succeeds, the DEL waits in the queue.
    p0.rm(h0, "ca");
    assert!(queue_len(h0) >= 1, "no queued DEL");
    lab.host_mut(0).start_oncache(&args0);
    let h0 = lab.host(0);
    assert_eq!(queue_len(h0), 0, "queued DELs not applied at start");
    assert!(attachments(h0).is_empty(), "{:?}", attachments(h0));
    assert!(h0.oncache_log().contains("queued CNI DEL applied"));

    // Nothing is left: no oncache veth, no records; rm-network takes the conflist, the
    // network's record and links.
    let h1 = lab.host(1);
    for (h, p) in [(h0, &p0), (h1, &p1)] {
        assert!(oncache_links(h).iter().all(|l| l.starts_with("ocbr") || l.starts_with("ocvx")), "{:?}", oncache_links(h));
        let out = h.exec(&[BIN, "cni", "rm-network", NET, "--conf-dir", p.conf_dir().to_str().unwrap(), "--socket", h.oncache_socket().to_str().unwrap()]);
        assert!(out.status.success(), "rm-network: {}", lab::describe_output(&out));
        assert!(oncache_links(h).is_empty(), "{:?}", oncache_links(h));
        assert!(status(h)["networks"].as_array().unwrap().is_empty());
        assert!(!p.conf_dir().join("oc1.conflist").exists());
        // cni.lock is podman's own lock file.
        let left: Vec<String> = std::fs::read_dir(p.conf_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "cni.lock")
            .collect();
        assert!(left.is_empty(), "files left in the conflist folder: {left:?}");
    }
    drop((p0, p1));
    lab.finish();
}
