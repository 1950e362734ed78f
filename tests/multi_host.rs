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

    // The path really is VXLAN, programmed from the control plane: host 1 has ca's MAC behind
    // host 0's VTEP as a static entry, its address in the neighbour table the VXLAN device's
    // proxy answers ARP from, and no flood entry.
    let mac = h0.docker_exec("ca", &["cat", "/sys/class/net/eth0/address"]);
    let mac = mac.trim();
    let fdb = h1.sh("bridge fdb show dev ocvx100");
    assert!(fdb.contains(&format!("{mac} dst {ip0} self permanent")), "no entry for {mac} via {ip0}:\n{fdb}");
    assert!(!fdb.contains("00:00:00:00:00:00"), "a flood entry:\n{fdb}");
    let neigh = h1.sh("ip neigh show dev ocvx100");
    assert!(neigh.contains(&format!("{a} lladdr {mac} PERMANENT")), "{neigh}");

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

/// A peer flooding the gossip port with datagrams (garbage to chitchat, each one decoded and
/// dropped) neither holds up dockerd's calls nor stops the cluster from converging.
#[test]
fn gossip_flood_starves_neither_dockerd_nor_the_cluster() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut lab = Lab::new(2);
    lab.start_dockerds();
    let (ip0, ip1) = (lab.host(0).underlay_ip, lab.host(1).underlay_ip);
    lab.host_mut(0).start_oncache(&["--peer", &ip1.to_string()]);
    lab.host_mut(1).start_oncache(&["--peer", &ip0.to_string()]);
    let (h0, h1) = (lab.host(0), lab.host(1));
    create_shared_network(h0, "10.202.0.0/25");
    create_shared_network(h1, "10.202.0.128/25");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // From host 1's namespace (a peer: its datagrams are decoded), as fast as one thread
    // sends, for at most 60 s.
    let flood = support::traffic::in_netns(&h1.netns_path(), move || {
        let s = std::net::UdpSocket::bind((ip1, 0)).unwrap();
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        while !flag.load(Ordering::Relaxed) && start.elapsed() < std::time::Duration::from_secs(60) {
            let junk = support::traffic::pattern(sent, 64 + (sent % 900) as usize);
            if s.send_to(&junk, (ip0, 4788)).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    for i in 0..3 {
        h0.docker(&["run", "--rm", "--pull=never", "--network", "ov", lab::IMAGE, "true"]);
        eprintln!("container {i} started and removed during the flood");
    }
    h1.run(&["--name", "cb", "--network", "ov", lab::IMAGE, "sleep", "1d"]);
    let b = h1.container_ip("cb", "ov").to_string();
    let seen = lab::try_wait_for(std::time::Duration::from_secs(30), || (status(h0)["remote_endpoints"].as_u64() == Some(1)).then_some(()));
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert!(seen.is_some(), "host 0 never learned host 1's container during the flood: {}", status(h0));
    assert!(sent > 1000, "the flood sent only {sent} datagrams");
    h0.run(&["--name", "ca", "--network", "ov", lab::IMAGE, "sleep", "1d"]);
    wait_ping(h0, "ca", &b);
    h0.docker(&["rm", "-f", "ca"]);
    h1.docker(&["rm", "-f", "cb"]);
    for h in [h0, h1] {
        h.docker(&["network", "rm", "ov"]);
    }
    lab.finish();
}
