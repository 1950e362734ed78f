//! oncache under Docker Swarm, end to end, against real dockerds in the namespace lab: three
//! nodes (two managers), the managed plugin installed on each with `install.sh plugin` (scope
//! global), an attachable oncache network made on a manager, a global dnsrr service. Then what
//! a Swarm operator relies on: names resolve across nodes, TCP arrives intact over the fast path,
//! a plugin re-created under running containers loses no packet, a plugin killed is restarted
//! by Docker and reconciles, a node that leaves takes its endpoints away everywhere, and a
//! leader change keeps VNIs unique.

mod lab;
mod support;

use lab::{Host, Lab, IMAGE};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use support::managed::{cli_json, hits, install, lab_settings, plugin_id, plugin_log, share_bpffs_with_dockerd, PLUGIN};
use support::{fetch_checksum, serve_random_file};

const SWARM_TIMEOUT: Duration = Duration::from_secs(60);

fn node_id(h: &Host) -> String {
    h.docker(&["info", "-f", "{{.Swarm.NodeID}}"]).trim().to_string()
}

/// The VNI the leader allocated for a network, as the manager `m` stores it.
fn vni_of(m: &Host, net: &str) -> String {
    m.docker(&["network", "inspect", "-f", "{{index .Options \"oncache.vni\"}}", net]).trim().to_string()
}

/// Remote endpoints the plugin's fast path sends to VTEP `vtep` (from its egress cache), sorted.
fn egress_towards(h: &Host, id: &str, vtep: &Host) -> Vec<String> {
    let ip = vtep.underlay_ip.to_string();
    let c = cli_json(h, id, "cache list");
    let mut v: Vec<String> = c["egress"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["vtep"] == ip.as_str()).filter_map(|e| e["ip"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// IPv4 addresses busybox nslookup printed for a name (the resolver's own address excluded).
fn resolved(h: &Host, container: &str, name: &str) -> BTreeSet<String> {
    let out = h.try_docker_exec(container, &["nslookup", name]).unwrap_or_default();
    out.split("Name:")
        .skip(1)
        .flat_map(|s| s.lines().filter_map(|l| l.trim().strip_prefix("Address:")).map(|a| a.trim().to_string()).collect::<Vec<_>>())
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .collect()
}

/// The ID of the container of service `svc`'s task on node `h`.
fn task_container(h: &Host, svc: &str) -> String {
    lab::wait_for(&format!("{svc}'s task on {}", h.name), SWARM_TIMEOUT, || {
        let out = h.docker(&["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={svc}")]);
        out.lines().next().map(str::to_string)
    })
}

/// `docker run -d` of a container on a Swarm network. Right after a leader change a node's
/// agent may still be opening its session with the new leader's dispatcher, and dockerd gives
/// up waiting for the network attachment after 20 s ("attaching to network failed ... context
/// deadline exceeded"); a user runs the container again, and so does this, once per attempt
/// saying why. Any other failure, or one lasting past [`SWARM_TIMEOUT`], fails the test.
fn run_on_swarm_network(h: &Host, name: &str, args: &[&str]) {
    let mut a = vec!["run", "-d", "--pull=never", "--name", name];
    a.extend_from_slice(args);
    let started = std::time::Instant::now();
    loop {
        match h.try_docker(&a) {
            Ok(_) => return,
            Err(e) if e.contains("attaching to network failed") && started.elapsed() < SWARM_TIMEOUT => {
                eprintln!("{}: {name}: Swarm did not deliver the attachment in time, running it again: {e}", h.name);
                h.docker(&["rm", "-f", name]);
            }
            Err(e) => panic!("{}: {e}\n--- dockerd log (end) ---\n{}", h.name, lab::process::tail_file(&h.dockerd_log_path(), 60)),
        }
    }
}

#[test]
fn swarm_drives_oncache_end_to_end() {
    let mut lab = Lab::new(3);
    lab.start_dockerds();
    let suffix = lab.suffix().to_string();
    let ids: Vec<String> = std::thread::scope(|s| {
        let ts: Vec<_> = lab
            .hosts()
            .iter()
            .map(|h| {
                s.spawn(move || {
                    share_bpffs_with_dockerd(h);
                    let settings = lab_settings(h, "global");
                    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
                    let out = install(h, &settings);
                    let id = plugin_id(h);
                    assert!(out.contains("fast path ON"), "{}: install.sh plugin: {out}\n{}", h.name, plugin_log(h, &id));
                    id
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().expect("install")).collect()
    });
    for id in &ids {
        lab::cleanup::record_cgroup(&suffix, id);
    }
    let (h0, h1, h2) = (lab.host(0), lab.host(1), lab.host(2));

    // The swarm: h0 and h1 managers, h2 a worker.
    let ip = |h: &Host| h.underlay_ip.to_string();
    h0.docker(&["swarm", "init", "--advertise-addr", &ip(h0), "--listen-addr", &format!("{}:2377", ip(h0))]);
    let token = |role: &str| h0.docker(&["swarm", "join-token", "-q", role]).trim().to_string();
    let (manager, worker) = (token("manager"), token("worker"));
    for (h, t) in [(h1, &manager), (h2, &worker)] {
        h.docker(&["swarm", "join", "--token", t, "--advertise-addr", &ip(h), "--listen-addr", &format!("{}:2377", ip(h)), &format!("{}:2377", ip(h0))]);
    }
    lab::wait_for("three ready nodes", SWARM_TIMEOUT, || {
        (h0.docker(&["node", "ls", "--format", "{{.Status}}"]).lines().filter(|s| *s == "Ready").count() == 3).then_some(())
    });

    // The network, allocated by the leader; a global dnsrr service has a task on every node.
    h0.docker(&["network", "create", "-d", PLUGIN, "--attachable", "--subnet", "10.210.0.0/24", "ov"]);
    let vni = vni_of(h0, "ov");
    assert!(vni.parse::<u32>().is_ok(), "AllocateNetwork returned no oncache.vni: {}", h0.docker(&["network", "inspect", "ov"]));
    h0.docker(&[
        "service", "create", "--detach", "--name", "web", "--network", "ov", "--mode", "global", "--endpoint-mode", "dnsrr",
        "--no-resolve-image", "--init", "--stop-grace-period", "1s", IMAGE, "sleep", "1d",
    ]);
    let tasks: Vec<String> = lab.hosts().iter().map(|h| task_container(h, "web")).collect();
    let task_ips: BTreeSet<String> = lab.hosts().iter().zip(&tasks).map(|(h, t)| h.container_ip(t, "ov").to_string()).collect();
    assert_eq!(task_ips.len(), 3, "three task addresses: {task_ips:?}");

    // An attachable container on the worker: Docker's DNS answers the service's tasks on every
    // node, and each answers, by name too (`ping web`, as the README shows).
    h2.run(&["--name", "cli", "--network", "ov", "--init", IMAGE, "sleep", "1d"]);
    let names = lab::wait_for("web to resolve to its three tasks", SWARM_TIMEOUT, || {
        let r = resolved(h2, "cli", "web");
        (r == task_ips).then_some(r)
    });
    for a in &names {
        lab::wait_for(&format!("cli to reach task {a}"), Duration::from_secs(20), || {
            h2.try_docker_exec("cli", &["ping", "-c", "1", "-W", "1", a]).ok()
        });
    }
    h2.docker_exec("cli", &["ping", "-c", "3", "-W", "2", "web"]);

    // TCP from the worker to the first manager's task: intact, and on the fast path both sides.
    let srv_ip = h0.container_ip(&tasks[0], "ov").to_string();
    let sum = serve_random_file(h0, &tasks[0]);
    fetch_checksum(h2, "cli", &srv_ip); // warms the caches (the first packets take the slow path)
    let before = [hits(h0, &ids[0]), hits(h2, &ids[2])];
    assert_eq!(fetch_checksum(h2, "cli", &srv_ip), sum, "TCP payload across the swarm");
    for ((h, id), b) in [(h0, &ids[0]), (h2, &ids[2])].into_iter().zip(before) {
        let now = hits(h, id);
        assert!(now.0 > b.0 + 100 && now.1 > b.1 + 100, "{}: fast-path hits went from {b:?} to {now:?}\n{}", h.name, plugin_log(h, id));
    }

    // Plugin re-created on the worker under a running container: no ping lost, and the new
    // plugin (told by dockerd only about itself) still knows its peers and serves a new join.
    h2.docker(&["exec", "-d", "cli", "sh", "-c", &format!("ping -i 0.2 {srv_ip} > /ping.out 2>&1")]);
    std::thread::sleep(Duration::from_secs(1));
    install(h2, &[]);
    std::thread::sleep(Duration::from_secs(2));
    h2.docker(&["exec", "cli", "killall", "-INT", "ping"]);
    let ping = lab::wait_for("ping statistics", Duration::from_secs(10), || {
        let o = h2.docker(&["exec", "cli", "cat", "/ping.out"]);
        o.contains("packet loss").then_some(o)
    });
    assert!(ping.contains(" 0% packet loss"), "ping across the plugin re-create:\n{ping}");
    let id2 = plugin_id(h2);
    lab::cleanup::record_cgroup(&suffix, &id2);
    assert_ne!(id2, ids[2], "a re-created plugin has a new ID");
    h2.run(&["--name", "late", "--network", "ov", "--init", IMAGE, "sleep", "1d"]);
    lab::wait_for("a container joined after the re-create to reach the manager's task", Duration::from_secs(20), || {
        h2.try_docker_exec("late", &["ping", "-c", "1", "-W", "1", &srv_ip]).ok()
    });
    assert_eq!(fetch_checksum(h2, "late", &srv_ip), sum, "TCP after the plugin re-create");

    // The plugin on a manager crashes (SIGKILL): Docker starts it again, it reconciles what the
    // kernel and its store hold, nothing is duplicated, and its task still reaches the others.
    let links = support::oncache_links(h1);
    let remotes = cli_json(h1, &ids[1], "status")["remote_endpoints"].clone();
    let old = lab::cleanup::procs_in_cgroups_named(&ids[1]);
    assert_eq!(old.len(), 1, "one process in plugin {}'s cgroup: {old:?}", ids[1]);
    // SAFETY: a PID found in the plugin's own cgroup, signalled once.
    assert_eq!(unsafe { libc::kill(old[0] as i32, libc::SIGKILL) }, 0);
    lab::wait_for("Docker to restart the killed plugin", SWARM_TIMEOUT, || {
        let now = lab::cleanup::procs_in_cgroups_named(&ids[1]);
        (now.len() == 1 && now != old && support::managed::plugin_socket(h1, &ids[1]).exists()).then_some(())
    });
    lab::wait_for("the restarted plugin to know the others' endpoints again", SWARM_TIMEOUT, || {
        support::managed::try_cli_json(h1, &ids[1], "status").ok().filter(|st| st["remote_endpoints"] == remotes)
    });
    assert_eq!(support::oncache_links(h1), links, "links after the plugin restart");
    lab::wait_for("h1's task to reach h0's after the plugin restart", Duration::from_secs(20), || {
        h1.try_docker_exec(&tasks[1], &["ping", "-c", "1", "-W", "1", &srv_ip]).ok()
    });

    // The worker's dockerd crashes and starts again (no live-restore: its containers go, Swarm
    // starts a new task): the plugin is told about the dead endpoints or finds them itself;
    // afterwards its links, its published endpoints and the managers' entries are exactly
    // what runs, and the new task is reached.
    h2.docker(&["rm", "-f", "late"]);
    lab.host_mut(2).kill_dockerd();
    lab.host_mut(2).restart_dockerd();
    let (h0, h1, h2) = (lab.host(0), lab.host(1), lab.host(2));
    let task2 = lab::wait_for("a new web task on the restarted worker", SWARM_TIMEOUT, || {
        let t = h2.try_docker(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=web"]).ok()?;
        t.lines().next().filter(|t| !tasks[2].starts_with(*t)).map(str::to_string)
    });
    let _ = h2.try_docker(&["rm", "-f", "cli"]);
    let task2_ip = h2.container_ip(&task2, "ov").to_string();
    let settled = lab::try_wait_for(SWARM_TIMEOUT, || {
        let veths = support::oncache_links(h2).iter().filter(|l| l.starts_with("ocve")).count();
        let st = support::managed::try_cli_json(h2, &id2, "status").ok()?;
        let joined: usize = st["networks"].as_array()?.iter().map(|n| n["endpoints"].as_array().map_or(0, |e| e.iter().filter(|e| !e["sandbox"].is_null()).count())).sum();
        (veths == 1 && joined == 1).then_some(())
    });
    assert!(
        settled.is_some(),
        "the worker's links and endpoints are not what runs: links {:?}\ncontainers {}\nstatus {:#}\n{}",
        support::oncache_links(h2),
        h2.docker(&["ps", "-a"]),
        support::managed::try_cli_json(h2, &id2, "status").unwrap_or_else(|e| e.into()),
        lab::process::tail_file(&h2.dockerd_log_path(), 80)
    );
    for (h, id) in [(h0, &ids[0]), (h1, &ids[1])] {
        let held = lab::try_wait_for(SWARM_TIMEOUT, || (egress_towards(h, id, h2) == [task2_ip.clone()]).then_some(()));
        assert!(
            held.is_some(),
            "{} holds {:?} towards the worker, not [{task2_ip}]\nits status {:#}\nthe worker's status {:#}",
            h.name,
            egress_towards(h, id, h2),
            cli_json(h, id, "status"),
            cli_json(h2, &id2, "status")
        );
    }
    lab::wait_for("h0's task to reach the worker's new task", Duration::from_secs(20), || {
        h0.try_docker_exec(&tasks[0], &["ping", "-c", "1", "-W", "1", &task2_ip]).ok()
    });

    // The worker leaves: every endpoint behind it goes from the managers' kernels.
    assert!(!egress_towards(h0, &ids[0], h2).is_empty(), "h0 has no fast-path entry towards the worker");
    h2.docker(&["swarm", "leave", "--force"]);
    for (h, id) in [(h0, &ids[0]), (h1, &ids[1])] {
        lab::wait_for(&format!("{} to forget the worker's endpoints", h.name), SWARM_TIMEOUT, || {
            let left = egress_towards(h, id, h2);
            let st = cli_json(h, id, "status");
            (left.is_empty() && st["remote_endpoints"].as_u64() == Some(1)).then_some(())
        });
    }

    // Leader change: the first manager is demoted, the second leads and replays the allocation
    // of `ov`; a network it allocates next never gets `ov`'s VNI.
    let n0 = node_id(h0);
    h0.docker(&["node", "demote", &n0]);
    lab::wait_for("h1 to lead", SWARM_TIMEOUT, || {
        let me = h1.try_docker(&["node", "inspect", "self", "-f", "{{.ManagerStatus.Leader}}"]).ok()?;
        (me.trim() == "true").then_some(())
    });
    let made = lab::wait_for("the new leader to create a network", SWARM_TIMEOUT, || {
        h1.try_docker(&["network", "create", "-d", PLUGIN, "--attachable", "--subnet", "10.211.0.0/24", "ov2"]).ok()
    });
    assert!(!made.trim().is_empty());
    let vni2 = lab::wait_for("ov2's VNI", SWARM_TIMEOUT, || Some(vni_of(h1, "ov2")).filter(|v| !v.is_empty()));
    assert_eq!(vni_of(h1, "ov"), vni, "the new leader kept ov's VNI");
    assert_ne!(vni2, vni, "two Swarm networks share VNI {vni}");
    // ... and the new network carries traffic between the two remaining nodes.
    run_on_swarm_network(h0, "a2", &["--network", "ov2", "--init", IMAGE, "sleep", "1d"]);
    run_on_swarm_network(h1, "b2", &["--network", "ov2", "--init", IMAGE, "sleep", "1d"]);
    let a2 = h0.container_ip("a2", "ov2").to_string();
    lab::wait_for("b2 to reach a2 over ov2", Duration::from_secs(20), || h1.try_docker_exec("b2", &["ping", "-c", "1", "-W", "1", &a2]).ok());
    let st: Value = cli_json(h1, &ids[1], "status");
    assert!(st["networks"].as_array().is_some_and(|n| n.iter().any(|n| n["network"]["vni"].as_u64() == vni2.parse().ok())), "{st:#}");

    // Clean-up through Swarm and dockerd; the lab removes the plugins and checks for leaks.
    h0.docker(&["rm", "-f", "a2"]);
    h1.docker(&["rm", "-f", "b2"]);
    h1.docker(&["service", "rm", "web"]);
    for h in [h0, h1] {
        lab::wait_for(&format!("web's task on {} to go", h.name), SWARM_TIMEOUT, || {
            h.docker(&["ps", "-aq", "--filter", "label=com.docker.swarm.service.name=web"]).trim().is_empty().then_some(())
        });
    }
    h1.docker(&["network", "rm", "ov", "ov2"]);
    lab.finish();
}
