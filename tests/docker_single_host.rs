//! oncache under a real dockerd on one host: networks, endpoints, DNS, TCP, options, restarts.

mod lab;
mod support;

use lab::Lab;
use std::time::Duration;
use support::*;

fn one_host() -> Lab {
    let mut lab = Lab::new(1);
    lab.start_dockerds();
    lab.start_oncaches(&[]);
    lab
}

#[test]
fn network_lifecycle_dns_ping_and_tcp_transfer() {
    let lab = one_host();
    let h = lab.host(0);
    let id = h.docker(&["network", "create", "-d", "oncache", "--subnet", "10.201.0.0/24", "n1"]);
    assert_eq!(h.inspect("n1")["Driver"], "oncache");

    let st = status(h);
    let net = &st["networks"][0];
    assert_eq!(net["network"]["id"], id.trim());
    assert_eq!(net["network"]["vni"], 1 << 20, "first allocated VNI");
    assert_eq!(net["network"]["mtu"], 1450, "underlay 1500 less VXLAN's 50");
    assert_eq!(oncache_links(h), ["ocbr1048576", "ocvx1048576"]);
    assert_eq!(master_of(h, "ocvx1048576").as_deref(), Some("ocbr1048576"));

    h.run(&["--name", "ca", "--network", "n1", lab::IMAGE, "sleep", "1d"]);
    h.run(&["--name", "cb", "--network", "n1", lab::IMAGE, "sleep", "1d"]);
    ping(h, "cb", "ca").expect("ping by name through Docker's embedded DNS");
    assert_eq!(mtu_in(h, "ca", "eth0"), 1450);
    let mac = h.docker_exec("ca", &["cat", "/sys/class/net/eth0/address"]);
    let ip = h.container_ip("ca", "n1");
    let o = ip.octets();
    assert_eq!(mac.trim(), format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]));
    // Outside traffic goes through Docker's gateway bridge: a second interface.
    assert!(h.docker_exec("ca", &["ip", "-o", "link"]).contains("eth1"), "no docker_gwbridge interface");

    let sum = serve_random_file(h, "ca");
    assert_eq!(fetch_checksum(h, "cb", "ca"), sum, "TCP transfer corrupted");
    assert_eq!(status(h)["networks"][0]["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(oncache_links(h).iter().filter(|l| l.starts_with("ocve")).count(), 2);

    h.docker(&["rm", "-f", "ca", "cb"]);
    assert_eq!(oncache_links(h), ["ocbr1048576", "ocvx1048576"], "veths of removed containers remain");
    assert!(status(h)["networks"][0]["endpoints"].as_array().unwrap().is_empty());
    h.docker(&["network", "rm", "n1"]);
    assert!(oncache_links(h).is_empty(), "links remain after network rm: {:?}", oncache_links(h));
    assert!(status(h)["networks"].as_array().unwrap().is_empty());
    lab.finish();
}

#[test]
fn options_vni_mtu_and_clashes_are_checked() {
    let lab = one_host();
    let h = lab.host(0);
    h.docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=77", "--subnet", "10.210.0.0/24", "a1"]);
    let err = h
        .try_docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=77", "--subnet", "10.211.0.0/24", "a2"])
        .unwrap_err();
    assert!(err.contains("VNI 77 is already used"), "{err}");
    let err = h.try_docker(&["network", "create", "-d", "oncache", "-o", "oncache.bogus=1", "a3"]).unwrap_err();
    assert!(err.contains("unknown option \"oncache.bogus\""), "{err}");
    let err = h.try_docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=0", "a4"]).unwrap_err();
    assert!(err.contains("between 1 and 16777215"), "{err}");
    let err = h
        .try_docker(&["network", "create", "-d", "oncache", "-o", "com.docker.network.driver.mtu=9000", "a5"])
        .unwrap_err();
    assert!(err.contains("larger than the underlay MTU"), "{err}");

    h.docker(&["network", "create", "-d", "oncache", "-o", "com.docker.network.driver.mtu=1400", "--subnet", "10.212.0.0/24", "m1"]);
    h.run(&["--name", "cm", "--network", "m1", lab::IMAGE, "sleep", "1d"]);
    assert_eq!(mtu_in(h, "cm", "eth0"), 1400);

    // Failed creates left nothing behind: two networks, their links, nothing else.
    let st = status(h);
    let vnis: Vec<u64> = st["networks"].as_array().unwrap().iter().map(|n| n["network"]["vni"].as_u64().unwrap()).collect();
    assert_eq!(vnis.len(), 2, "{st}");
    assert!(vnis.contains(&77));
    let links = oncache_links(h);
    assert_eq!(links.iter().filter(|l| l.starts_with("ocbr")).count(), 2, "{links:?}");
    lab.finish();
}

#[test]
fn oncache_restart_keeps_traffic_and_state() {
    let mut lab = one_host();
    lab.host(0).docker(&["network", "create", "-d", "oncache", "--subnet", "10.203.0.0/24", "n"]);
    lab.host(0).run(&["--name", "ra", "--network", "n", lab::IMAGE, "sleep", "1d"]);
    lab.host(0).run(&["--name", "rb", "--network", "n", lab::IMAGE, "sleep", "1d"]);
    wait_ping(lab.host(0), "rb", "ra");
    let before = status(lab.host(0));

    // Pings run across a clean restart and a crash of the daemon: none may be lost.
    let docker_sock = lab.host(0).docker_sock().to_path_buf();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new(lab::docker_bin())
            .args(["-H", &format!("unix://{}", docker_sock.display()), "exec", "rb", "ping", "-c", "40", "-i", "0.1", "ra"])
            .output()
            .expect("docker exec ping")
    });
    std::thread::sleep(Duration::from_millis(500));
    lab.host_mut(0).restart_oncache();
    lab.host_mut(0).kill_oncache();
    lab.host_mut(0).start_oncache(&[]);
    let out = pinger.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "traffic interrupted by plugin restart:\n{text}");

    let h = lab.host(0);
    assert_eq!(status(h)["networks"], before["networks"], "state changed across restarts");
    assert_eq!(oncache_links(h).iter().filter(|l| l.starts_with("ocbr")).count(), 1, "duplicated bridge");
    // The restarted daemon serves new containers and removals.
    h.run(&["--name", "rc", "--network", "n", lab::IMAGE, "sleep", "1d"]);
    ping(h, "rc", "ra").expect("new container after restart");
    h.docker(&["rm", "-f", "ra", "rb", "rc"]);
    h.docker(&["network", "rm", "n"]);
    assert!(oncache_links(h).is_empty(), "{:?}", oncache_links(h));
    lab.finish();
}

#[test]
fn dockerd_restart_brings_back_restart_always_containers() {
    let mut lab = one_host();
    lab.host(0).docker(&["network", "create", "-d", "oncache", "--subnet", "10.204.0.0/24", "n"]);
    lab.host(0).run(&["--name", "da", "--restart", "always", "--network", "n", lab::IMAGE, "sleep", "1d"]);
    lab.host(0).run(&["--name", "db", "--restart", "always", "--network", "n", lab::IMAGE, "sleep", "1d"]);
    wait_ping(lab.host(0), "db", "da");
    let started = lab.host(0).inspect("da")["State"]["StartedAt"].clone();

    lab.host_mut(0).restart_dockerd();
    let h = lab.host(0);
    for c in ["da", "db"] {
        lab::wait_for(&format!("{c} running again"), Duration::from_secs(60), || {
            (h.inspect(c)["State"]["Running"] == true).then_some(())
        });
    }
    assert_ne!(h.inspect("da")["State"]["StartedAt"], started, "the container was not restarted");
    wait_ping(h, "db", "da");
    // Exactly the two live endpoints remain: stale ones were deleted, nothing duplicated.
    let eps = status(h)["networks"][0]["endpoints"].as_array().unwrap().len();
    assert_eq!(eps, 2, "{}", status(h));
    assert_eq!(oncache_links(h).iter().filter(|l| l.starts_with("ocve")).count(), 2, "{:?}", oncache_links(h));
    lab.finish();
}

/// README's "Use" example, line by line as a user types it (without `sudo`: we are root),
/// against this host's dockerd and daemon.
#[test]
fn readme_example_runs_as_written() {
    let lab = one_host();
    let h = lab.host(0);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("\n## Use\n")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|s| s.split("\n```").next())
        .expect("README has a sh block under ## Use");
    let bin_dir = std::path::Path::new(BIN).parent().unwrap().display().to_string();
    let env = format!(
        "cd {} && export DOCKER_HOST=unix://{} ONCACHE_SOCKET={} PATH={bin_dir}:$PATH IMAGE=oncache-demo:latest",
        root.display(),
        h.docker_sock().display(),
        h.oncache_socket().display()
    );
    let mut out = String::new();
    for line in block.lines() {
        let cmd = line.split("  #").next().unwrap().trim();
        let cmd = cmd.strip_prefix("sudo ").unwrap_or(cmd);
        if cmd.is_empty() {
            continue;
        }
        let o = h.try_sh_timeout(&format!("{env} && {cmd}"), Duration::from_secs(120)).unwrap_or_else(|e| panic!("README line `{line}` failed:\n{e}"));
        out.push_str(&o);
    }
    assert!(out.contains("3 packets received"), "ping by name:\n{out}");
    assert!(out.contains("receiver"), "iperf3:\n{out}");
    assert!(out.contains("fast path on"), "status:\n{out}");
    h.docker(&["rm", "-f", "web"]);
    h.docker(&["network", "rm", "n1"]);
    h.docker(&["rmi", "oncache-demo:latest"]);
    lab.finish();
}
