//! oncache as a managed Docker plugin (`docker plugin create`, what Swarm requires), installed
//! the way an operator does it: `packaging/install.sh plugin SETTINGS...` against a lab host's
//! dockerd (DOCKER_HOST), with this build's binary (ONCACHE_BIN) and no registry.
//!
//! The lab-specific settings (per-host state and pin folders) are in `support::managed`.

mod lab;
mod support;

use lab::{Lab, IMAGE};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::managed::{install, plugin_id, plugin_log, settings_env, share_bpffs_with_dockerd, status, PLUGIN};
use support::{fetch_checksum, serve_random_file, wait_ping};

/// Addresses of the network's joined endpoints in a status, sorted.
fn joined_endpoints(st: &Value, network: &str) -> Vec<String> {
    let net = st["networks"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["network"]["id"] == network))
        .unwrap_or_else(|| panic!("network {network} not in the plugin's status: {st:#}"));
    let mut v: Vec<String> = net["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter(|e| !e["sandbox"].is_null())
        .map(|e| e["ipv4"].as_str().unwrap_or("-").to_string())
        .collect();
    v.sort();
    v
}

fn pin_inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).ino()
}

/// Install through `install.sh plugin`, a network, two containers, DNS, ping and TCP, status
/// through the plugin's socket; then the offline upgrade (`install.sh plugin` again: disable -f,
/// rm -f, create, set, enable) while the containers run: no ping lost, the settings, the network
/// and its endpoints (bind-mounted state) and the pins (bind-mounted bpffs) all kept, and the new
/// plugin serves dockerd (a container joins); then everything removed.
#[test]
fn install_use_and_upgrade_the_managed_plugin() {
    let mut lab = Lab::new(1);
    lab.start_dockerds();
    let suffix = lab.suffix().to_string();
    let h = lab.host(0);
    share_bpffs_with_dockerd(h);
    let state = h.dir.join("plugin-state");
    let bpf_dir = h.bpf_dir.to_string_lossy().into_owned();
    let settings = support::managed::lab_settings(h, "local");
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();

    // The plugin must set liberal TCP tracking itself (through the host's sysctl folder that
    // config.json mounts: /proc/sys is read-only inside a plugin).
    let liberal = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";
    h.sh(&format!("modprobe nf_conntrack 2>/dev/null; echo 0 > {liberal}"));
    let out = install(h, &settings);
    let id1 = plugin_id(h);
    lab::cleanup::record_cgroup(&suffix, &id1);
    assert!(out.contains("fast path ON"), "install.sh plugin: {out}\n--- plugin log ---\n{}", plugin_log(h, &id1));
    assert!(!lab::cleanup::procs_in_cgroups_named(&id1).is_empty(), "no process in the cgroups of plugin {id1}");
    let env = settings_env(h);
    for s in settings.iter().filter(|s| !s.starts_with("state.")) {
        assert!(env.iter().any(|e| e == s), "{s} not in the plugin's settings {env:?}");
    }

    assert_eq!(h.sh(&format!("cat {liberal}")).trim(), "1", "the plugin did not set {liberal}");
    let net = h.docker(&["network", "create", "-d", PLUGIN, "--subnet", "10.201.0.0/24", "n1"]).trim().to_string();
    assert_eq!(h.inspect("n1")["Driver"], PLUGIN);
    h.run(&["--name", "srv", "--network", "n1", IMAGE, "sleep", "600"]);
    h.run(&["--name", "cli", "--network", "n1", IMAGE, "sleep", "600"]);
    wait_ping(h, "cli", "srv");
    let sum = serve_random_file(h, "srv");
    assert_eq!(fetch_checksum(h, "cli", "srv"), sum, "TCP transfer through the overlay");

    let st = status(h, &id1);
    assert!(st["fastpath"].as_str().is_some_and(|f| f.starts_with("on")), "fast path: {st:#}\n{}", plugin_log(h, &id1));
    assert_eq!(st["underlay"], lab::UNDERLAY_IF);
    let eps = joined_endpoints(&st, &net);
    assert_eq!(eps.len(), 2, "{st:#}");
    assert!(state.join("db").is_dir(), "no store in the state.source folder {}", state.display());
    // Pinned under the host's own folder of the machine's bpffs; the underlay's TCX links are
    // pinned there too, the veths carry cls_bpf filters (bpftool lists both).
    let pin = h.bpf_dir.join(oncache::fastpath::MAPS_DIR).join(oncache_common::MAP_INGRESS);
    let ino = pin_inode(&pin);
    let veth_filters = || h.sh("bpftool net show").lines().filter(|l| l.starts_with("ocve") && l.contains("oncache_")).count();
    assert_eq!(veth_filters(), 4, "two veths x (ingress, egress) with oncache's programs:\n{}", h.sh("bpftool net show"));
    let links = std::fs::read_dir(h.bpf_dir.join("links")).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>());
    assert!(links.as_ref().is_ok_and(|l| l.len() == 2 && l.iter().all(|n| n.starts_with(&format!("{}:", lab::UNDERLAY_IF)))), "{bpf_dir}/links: {links:?}");

    // The upgrade, with a ping in flight the whole time (SIGINT makes it print its statistics);
    // the settings come from the old plugin.
    h.docker(&["exec", "-d", "cli", "sh", "-c", "ping -i 0.2 srv > /ping.out 2>&1"]);
    std::thread::sleep(Duration::from_secs(1));
    let out = install(h, &[]);
    std::thread::sleep(Duration::from_secs(1));
    h.docker(&["exec", "cli", "killall", "-INT", "ping"]);
    let ping = lab::wait_for("ping statistics", Duration::from_secs(10), || {
        let o = h.docker(&["exec", "cli", "cat", "/ping.out"]);
        o.contains("packet loss").then_some(o)
    });
    let id2 = plugin_id(h);
    lab::cleanup::record_cgroup(&suffix, &id2);
    assert_ne!(id1, id2, "a re-created plugin has a new ID");
    assert!(out.contains("fast path ON"), "install.sh plugin (upgrade): {out}\n--- plugin log ---\n{}", plugin_log(h, &id2));
    assert!(lab::cleanup::procs_in_cgroups_named(&id1).is_empty(), "the old plugin {id1} still runs");
    assert!(ping.contains(" 0% packet loss"), "ping across the upgrade:\n{ping}");
    assert_eq!(settings_env(h), env, "settings kept across the upgrade");

    let st = status(h, &id2);
    assert!(st["fastpath"].as_str().is_some_and(|f| f.starts_with("on")), "fast path after the upgrade: {st:#}\n{}", plugin_log(h, &id2));
    assert_eq!(joined_endpoints(&st, &net), eps, "network and endpoints kept (state in {})", state.display());
    assert_eq!(pin_inode(&pin), ino, "the pinned maps outlived the plugin");
    assert_eq!(veth_filters(), 4);
    support::ping(h, "cli", "srv").unwrap_or_else(|e| panic!("ping after the upgrade: {e}"));
    assert_eq!(fetch_checksum(h, "cli", "srv"), sum, "TCP after the upgrade");
    // dockerd talks to the new plugin: a container joins.
    h.run(&["--name", "late", "--network", "n1", IMAGE, "sleep", "600"]);
    wait_ping(h, "late", "srv");
    assert_eq!(joined_endpoints(&status(h, &id2), &net).len(), 3);

    // Clean-up through dockerd and the plugin, then the plugin itself.
    h.docker(&["rm", "-f", "srv", "cli", "late"]);
    h.docker(&["network", "rm", "n1"]);
    let st = status(h, &id2);
    assert_eq!(st["networks"], serde_json::json!([]), "{st:#}");
    assert_eq!(veth_filters(), 0, "veth filters gone with the veths");
    h.docker(&["plugin", "disable", "-f", PLUGIN]);
    h.docker(&["plugin", "rm", "-f", PLUGIN]);
    assert_eq!(h.docker(&["plugin", "ls", "-q"]).trim(), "");
    for id in [&id1, &id2] {
        assert!(lab::cleanup::procs_in_cgroups_named(id).is_empty(), "plugin {id} still runs");
    }
    // The lab removes the pin folder (a bpffs folder of the machine) and checks nothing is left.
    lab.finish();
}
