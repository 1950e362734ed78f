//! Two hosts (network namespaces, each with its own dockerd and oncache daemon) sharing one
//! oncache network over the VXLAN underlay, without Swarm.

mod lab;
mod support;

use lab::Lab;
use support::*;

fn create_shared_network(h: &lab::Host, range: &str) {
    h.docker(&[
        "network", "create", "-d", "oncache", "-o", "oncache.vni=100", "--subnet", "10.202.0.0/24", "--ip-range", range, "ov",
    ]);
}

#[test]
fn containers_on_two_hosts_talk_over_the_vxlan_overlay() {
    let mut lab = Lab::new(2);
    lab.start_dockerds();
    let (ip0, ip1) = (lab.host(0).underlay_ip.to_string(), lab.host(1).underlay_ip.to_string());
    // Host 0 learns its peer from the command line, host 1 from the CLI at run time.
    lab.host_mut(0).start_oncache(&["--peer", &ip1]);
    lab.host_mut(1).start_oncache(&[]);
    let (h0, h1) = (lab.host(0), lab.host(1));
    cli(h1, &["peer", "add", &ip0]).expect("peer add");
    assert_eq!(cli(h1, &["peer", "list"]).unwrap().trim(), ip0);

    create_shared_network(h0, "10.202.0.0/25");
    create_shared_network(h1, "10.202.0.128/25");
    h0.run(&["--name", "ca", "--network", "ov", lab::IMAGE, "sleep", "1d"]);
    h1.run(&["--name", "cb", "--network", "ov", lab::IMAGE, "sleep", "1d"]);
    let a = h0.container_ip("ca", "ov").to_string();
    let b = h1.container_ip("cb", "ov").to_string();
    assert!(b.starts_with("10.202.0.1"), "host 1 allocates from its own range: {b}");

    wait_ping(h1, "cb", &a);
    ping(h0, "ca", &b).expect("reverse direction");
    let sum = serve_random_file(h0, "ca");
    assert_eq!(fetch_checksum(h1, "cb", &a), sum, "TCP transfer across hosts corrupted");

    // The path really is VXLAN: host 1 learned ca's MAC behind host 0's VTEP.
    let mac = h0.docker_exec("ca", &["cat", "/sys/class/net/eth0/address"]);
    let fdb = h1.sh("bridge fdb show dev ocvx100");
    assert!(fdb.contains(&format!("{} dst {ip0}", mac.trim())), "no learned entry for {mac} via {ip0}:\n{fdb}");

    // Removing the peer cuts the overlay to it; adding it back restores it.
    cli(h1, &["peer", "rm", &ip0]).unwrap();
    assert!(!h1.sh("bridge fdb show dev ocvx100").contains(&ip0), "entries to a removed peer remain");
    assert!(ping(h1, "cb", &a).is_err(), "still reachable after peer rm");
    cli(h1, &["peer", "add", &ip0]).unwrap();
    wait_ping(h1, "cb", &a);

    // A restart of either daemon keeps the cross-host path.
    lab.host_mut(1).restart_oncache();
    let (h0, h1) = (lab.host(0), lab.host(1));
    assert_eq!(cli(h1, &["peer", "list"]).unwrap().trim(), ip0, "peer not persisted");
    ping(h1, "cb", &a).expect("after plugin restart");
    h0.docker(&["rm", "-f", "ca"]);
    h1.docker(&["rm", "-f", "cb"]);
    for h in [h0, h1] {
        h.docker(&["network", "rm", "ov"]);
        assert!(oncache_links(h).is_empty(), "{:?}", oncache_links(h));
    }
    lab.finish();
}

/// A peer flooding the announcement port (valid datagrams, each one work for the driver)
/// delays dockerd's calls by at most one announcement each: containers still start and leave.
#[test]
fn announcement_flood_does_not_starve_dockerd() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut lab = Lab::new(2);
    lab.start_dockerds();
    let (ip0, ip1) = (lab.host(0).underlay_ip, lab.host(1).underlay_ip);
    lab.host_mut(0).start_oncache(&["--peer", &ip1.to_string()]);
    lab.host_mut(1).start_oncache(&["--peer", &ip0.to_string()]);
    let (h0, h1) = (lab.host(0), lab.host(1));
    create_shared_network(h0, "10.202.0.0/25");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // From host 1's namespace (a peer), as fast as one thread sends, for at most 60 s.
    let flood = support::traffic::in_netns(&h1.netns_path(), move || {
        let s = std::net::UdpSocket::bind((ip1, 0)).unwrap();
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        while !flag.load(Ordering::Relaxed) && start.elapsed() < std::time::Duration::from_secs(60) {
            let msg = format!(r#"{{"event":"leave","vni":100,"ip":"10.202.0.{}","mac":"02:42:0a:ca:00:{:02x}"}}"#, 130 + sent % 100, sent % 100);
            if s.send_to(msg.as_bytes(), (ip0, 4788)).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    for i in 0..3 {
        h0.docker(&["run", "--rm", "--pull=never", "--network", "ov", lab::IMAGE, "true"]);
        eprintln!("container {i} started and removed during the flood");
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert!(sent > 1000, "the flood sent only {sent} datagrams");
    assert!(h0.oncache_log().contains("announced Leave"), "the daemon never processed the flood");
    h0.docker(&["network", "rm", "ov"]);
    lab.finish();
}
