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
