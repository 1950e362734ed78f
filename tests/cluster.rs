//! Three hosts and more: remote endpoints come from the control plane (gossip), never from
//! flooded packets. Containers are network namespaces plugged in through the plugin API (what
//! dockerd adds, names and gateways, is beside the point here).

mod lab;
mod support;

use lab::{Host, Lab};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use support::traffic::{exchange, send_blocks, recv_blocks, tcp_connect, Echo};
use support::*;

const NET: &str = "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c";
const VNI: u32 = 110;

/// `n` hosts, every one peered with every other, each with network `NET` (VNI 110,
/// 10.208.0.0/16).
fn cluster(n: usize) -> Lab {
    let mut lab = Lab::new(n);
    let ips: Vec<String> = lab.hosts().iter().map(|h| h.underlay_ip.to_string()).collect();
    let results = std::thread::scope(|s| {
        let hs: Vec<_> = lab
            .hosts_mut()
            .iter_mut()
            .enumerate()
            .map(|(i, h)| {
                let ips = &ips;
                s.spawn(move || {
                    let mut args = vec![];
                    for (j, ip) in ips.iter().enumerate() {
                        if j != i {
                            args.extend(["--peer", ip.as_str()]);
                        }
                    }
                    h.start_oncache(&args);
                    create_network_api(h, NET, VNI, "10.208.0.0/16");
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    for r in results {
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
    lab
}

fn ep_id(host: usize, i: usize) -> String {
    format!("{host:02x}{i:04x}{:0>58}", 0)
}

fn egress_vtep(h: &Host, ip: &str) -> Option<String> {
    cache(h)["egress"].as_array().unwrap().iter().find(|e| e["ip"] == ip && e["vni"] == VNI).map(|e| e["vtep"].as_str().unwrap().to_string())
}

fn hits(h: &Host) -> u64 {
    counter(&stats(h), "egress_fast", "hits")
}

/// A TCP connection between hosts 0 and 1 keeps delivering on the fast path after its VXLAN
/// forwarding and neighbour entries are removed by hand (the fast path needs none of them;
/// the daemon puts them back) and after `oncache cache flush` (re-admitted by the slow path).
#[test]
fn a_long_flow_survives_lost_forwarding_entries_and_a_cache_flush() {
    let lab = cluster(3);
    let (h0, h1) = (lab.host(0), lab.host(1));
    let mut boxes = Sandboxes::default();
    let a = boxes.plug(h0, &format!("oc{}a", lab.suffix()), NET, &ep_id(0, 1), "10.208.0.10");
    let b = boxes.plug(h1, &format!("oc{}b", lab.suffix()), NET, &ep_id(1, 1), "10.208.0.20");
    for h in [h0, h1] {
        wait_remotes(h, 1, Duration::from_secs(20));
    }
    let (mut server, mut client) = tcp_connect(&b, "10.208.0.20".parse().unwrap(), &a, 5301).expect("connect");
    let mut next = 0u64;
    let mut push = |what: &str, blocks: u64| {
        let before = (hits(h0), hits(h1));
        let range = next..next + blocks;
        next += blocks;
        let t = std::thread::scope(|s| {
            let r = s.spawn(|| recv_blocks(&mut server, range.clone()));
            send_blocks(&mut client, range.clone()).unwrap_or_else(|e| panic!("{what}: sending: {e}"));
            r.join().unwrap()
        });
        t.unwrap_or_else(|e| panic!("{what}: {e}"));
        let after = (hits(h0), hits(h1));
        assert!(after.0 > before.0 + 10 && after.1 > before.1 + 10, "{what}: not on the fast path: hits {before:?} -> {after:?}");
    };
    push("first", 64);
    let mac_b = h0.sh("bridge fdb show dev ocvx110 | awk '/self permanent/ {print $1}'").trim().to_string();
    h0.sh(&format!(
        "bridge fdb del {mac_b} dev ocvx110 dst {} self; bridge fdb del {mac_b} dev ocvx110 master; ip neigh del 10.208.0.20 dev ocvx110",
        h1.underlay_ip
    ));
    assert!(!h0.sh("bridge fdb show dev ocvx110").contains(&mac_b), "entries not removed");
    push("without forwarding entries", 64);
    // The daemon compares what it programmed with the kernel and puts them back.
    let back = lab::try_wait_for(Duration::from_secs(15), || h0.sh("ip neigh show dev ocvx110").contains("10.208.0.20").then_some(()));
    assert!(back.is_some(), "the neighbour entry never came back");
    cli(h0, &["cache", "flush"]).unwrap();
    cli(h1, &["cache", "flush"]).unwrap();
    push("after cache flush", 128);
    drop((server, client));
    drop(boxes);
    lab.finish();
}

/// An address moved from host 1 to host 2 is reached on host 2 by an already open socket on
/// host 0, once host 0 has heard of the move, and none of its packets reach host 1 then.
#[test]
fn a_moved_address_is_reached_where_it_lives_now_and_only_there() {
    let lab = cluster(3);
    let (h0, h1, h2) = (lab.host(0), lab.host(1), lab.host(2));
    let mut boxes = Sandboxes::default();
    let a = boxes.plug(h0, &format!("oc{}a", lab.suffix()), NET, &ep_id(0, 1), "10.208.0.10");
    let old = format!("oc{}x1", lab.suffix());
    let x1 = boxes.plug(h1, &old, NET, &ep_id(1, 1), "10.208.0.30");
    wait_remotes(h0, 1, Duration::from_secs(20));
    let x: Ipv4Addr = "10.208.0.30".parse().unwrap();
    let sock = support::traffic::udp_client(&a, 0);
    {
        let _e = Echo::start(&x1, 7301, "B:");
        let tags = exchange(&sock, x, 7301, 20, 200).expect("before the move");
        assert!(tags.iter().all(|t| t == "B:"), "{tags:?}");
    }
    let before = hits(h0);
    assert!(before > 0, "not on the fast path before the move");
    boxes.unplug(h1, &old, NET, &ep_id(1, 1));
    let moved = Instant::now();
    let x2 = boxes.plug(h2, &format!("oc{}x2", lab.suffix()), NET, &ep_id(2, 1), "10.208.0.30");
    let _e = Echo::start(&x2, 7301, "C:");
    let heard = lab::try_wait_for(Duration::from_secs(20), || (egress_vtep(h0, "10.208.0.30") == Some(h2.underlay_ip.to_string())).then_some(()));
    assert!(heard.is_some(), "host 0 never heard of the move: {}", cache(h0));
    eprintln!("host 0 heard of the move after {:?}", moved.elapsed());
    let file = h1.dir.join("old-host.pcap");
    let cap = support::traffic::capture(h1, &h1.netns_path(), lab::UNDERLAY_IF, &file, "udp dst port 4789");
    let tags = exchange(&sock, x, 7301, 50, 200).expect("after the move, the same socket");
    assert!(tags.iter().all(|t| t == "C:"), "answers from the wrong host: {tags:?}");
    let stray = cap.finish();
    assert!(stray.is_empty(), "{} VXLAN packets reached the old host after the move", stray.len());
    assert!(hits(h0) >= before + 40, "the moved address is not on the fast path");
    drop(boxes);
    lab.finish();
}

/// A host that goes away (its daemon stops for good) has its containers removed everywhere:
/// forwarding, neighbour and fast-path entries, within a bounded time.
#[test]
fn a_host_that_leaves_is_forgotten_everywhere() {
    let mut lab = cluster(3);
    let mut boxes = Sandboxes::default();
    for (i, h) in lab.hosts().iter().enumerate() {
        boxes.plug(h, &format!("oc{}e{i}", lab.suffix()), NET, &ep_id(i, 1), &format!("10.208.0.{}", 40 + i));
    }
    for h in lab.hosts() {
        wait_remotes(h, 2, Duration::from_secs(20));
    }
    let gone = lab.host(2).underlay_ip.to_string();
    lab.host_mut(2).stop_oncache();
    let start = Instant::now();
    for h in &lab.hosts()[..2] {
        let took = wait_remotes(h, 1, Duration::from_secs(90));
        eprintln!("{}: host 2's container forgotten {:?} after its daemon stopped", h.name, start.elapsed().max(took));
        let fdb = h.sh("bridge fdb show dev ocvx110");
        assert!(!fdb.contains(&gone), "{}: forwarding entries to {gone} remain:\n{fdb}", h.name);
        assert!(!h.sh("ip neigh show dev ocvx110").contains("10.208.0.42"), "{}: neighbour entry remains", h.name);
        assert_eq!(egress_vtep(h, "10.208.0.42"), None, "{}: fast-path entry remains", h.name);
    }
    drop(boxes);
    lab.finish();
}

/// Ten hosts with endpoints on each: every host learns all the others' endpoints from the
/// control plane within a bounded time, and unicast between two containers reaches no third
/// host (no flooding). The suite runs 10 x 20 endpoints; the full size (10 x 100,
/// about 7 minutes on 2 cores, most of it creating the 1,000 veth pairs) is
/// `ONCACHE_SCALE_ENDPOINTS=100 cargo test -p oncache --test cluster ten_hosts -- --nocapture`.
#[test]
fn ten_hosts_with_a_hundred_endpoints_each_converge_without_flooding() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (hosts, per_host) = (env("ONCACHE_SCALE_HOSTS", 10), env("ONCACHE_SCALE_ENDPOINTS", 20));
    let lab = cluster(hosts);
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, h) in lab.hosts().iter().enumerate() {
            s.spawn(move || {
                for e in 0..per_host {
                    let ep = ep_id(i, e + 100);
                    let addr = format!("10.208.{}.{}/16", 10 + i, e + 1);
                    let (code, v) = call(h, "NetworkDriver.CreateEndpoint", serde_json::json!({"NetworkID": NET, "EndpointID": ep, "Interface": {"Address": addr}}));
                    assert_eq!(code, 200, "{v}");
                    let (code, v) = call(h, "NetworkDriver.Join", serde_json::json!({"NetworkID": NET, "EndpointID": ep, "SandboxKey": "/x"}));
                    assert_eq!(code, 200, "{v}");
                }
            });
        }
    });
    let joined = start.elapsed();
    let mut worst = Duration::ZERO;
    for h in lab.hosts() {
        worst = worst.max(wait_remotes(h, ((hosts - 1) * per_host) as u64, Duration::from_secs(120)));
    }
    eprintln!("{hosts} hosts x {per_host} endpoints: joined in {joined:?}, every host had all remote endpoints {worst:?} after that");
    let fdb = lab.host(0).sh("bridge fdb show dev ocvx110");
    assert!(!fdb.contains("00:00:00:00:00:00"), "a flood entry");
    assert_eq!(fdb.lines().filter(|l| l.contains("self permanent")).count(), (hosts - 1) * per_host, "one static entry per remote endpoint");

    // Unicast between hosts 0 and 1: nothing reaches host 2.
    let (h0, h1, h2) = (lab.host(0), lab.host(1), lab.host(2));
    let mut boxes = Sandboxes::default();
    let a = boxes.plug(h0, &format!("oc{}a", lab.suffix()), NET, &ep_id(0, 1), "10.208.0.10");
    let b = boxes.plug(h1, &format!("oc{}b", lab.suffix()), NET, &ep_id(1, 1), "10.208.0.20");
    wait_remotes(h0, ((hosts - 1) * per_host + 1) as u64, Duration::from_secs(30));
    let file = h2.dir.join("third.pcap");
    let cap = support::traffic::capture(h2, &h2.netns_path(), lab::UNDERLAY_IF, &file, "udp dst port 4789");
    let _e = Echo::start(&b, 7302, "");
    // Not resolved yet: the first packet's ARP is answered on host 0 itself (proxy).
    exchange(&support::traffic::udp_client(&a, 0), "10.208.0.20".parse().unwrap(), 7302, 20, 100).expect("0 to 1");
    let seen = cap.finish();
    assert!(seen.is_empty(), "{} VXLAN packets reached a third host", seen.len());
    let _: Value = status(h0);
    drop(boxes);
    lab.finish();
}

/// A host that reboots (a power cut: its daemon killed, its namespace and every link in it
/// gone, the state dir kept, and here even its pins) comes back knowing it: the container that
/// died with the boot is forgotten on every host, nothing learned before the boot is used, and
/// a container started afterwards with the same address is reached at once, then on the fast
/// path again.
#[test]
fn a_rebooted_host_rebuilds_and_delivers_nothing_stale() {
    let mut lab = cluster(2);
    let mut boxes = Sandboxes::default();
    let s = lab.suffix().to_string();
    let a: Ipv4Addr = "10.208.0.60".parse().unwrap();
    let pa = boxes.plug(lab.host(0), &format!("oc{s}ra"), NET, &ep_id(0, 1), "10.208.0.60");
    let pb = boxes.plug(lab.host(1), &format!("oc{s}rb"), NET, &ep_id(1, 1), "10.208.0.61");
    for h in lab.hosts() {
        wait_remotes(h, 1, Duration::from_secs(20));
    }
    let echo = Echo::start(&pa, 7060, "a:");
    let client = support::traffic::udp_client(&pb, 0);
    exchange(&client, a, 7060, 50, 100).unwrap();
    let before = hits(lab.host(1));
    exchange(&client, a, 7060, 50, 100).unwrap();
    assert!(hits(lab.host(1)) >= before + 40, "not on the fast path before the reboot: {}", stats(lab.host(1)));
    drop(echo);

    lab.reboot_host(0);
    let (h0, h1) = (lab.host(0), lab.host(1));
    assert!(h0.oncache_log().contains("a new boot or network namespace"), "the daemon did not notice the new boot:\n{}", h0.oncache_log());
    let took = wait_remotes(h1, 0, Duration::from_secs(60));
    eprintln!("host 1 forgot the container that died with host 0's boot after {took:?}");
    let st = status(h0);
    assert!(st["networks"][0]["endpoints"].as_array().unwrap().iter().all(|e| e["sandbox"].is_null()), "an endpoint still joined after the boot: {st:#}");
    let c0 = cache(h0);
    for t in ["outer", "filter", "ingress"] {
        assert_eq!(c0[t].as_array().map(Vec::len), Some(0), "{t} entries from before the boot: {c0:#}");
    }

    // A container after the boot, with the same address: reached at once, answers are its own.
    let pc = boxes.plug(h0, &format!("oc{s}rc"), NET, &ep_id(0, 2), "10.208.0.60");
    let _echo = Echo::start(&pc, 7060, "c:");
    wait_remotes(h1, 1, Duration::from_secs(20));
    let tags = exchange(&client, a, 7060, 50, 100).expect("the new container answers");
    assert!(tags.iter().all(|t| t == "c:"), "answers from before the boot: {tags:?}");
    let before = [hits(h0), hits(h1)];
    exchange(&client, a, 7060, 100, 100).unwrap();
    assert!(hits(h0) >= before[0] + 90 && hits(h1) >= before[1] + 90, "not on the fast path again: {} {}", stats(h0), stats(h1));
    drop(boxes);
    lab.finish();
}
