//! The driver core in-process (`oncache::testbed`: the real kernel, in a network namespace of
//! the test's own thread), for what needs a hand on the daemon's insides: a call that holds the
//! driver, and state written by an older oncache.

use oncache::testbed::Testbed;
use serde_json::{json, Value};
use std::time::Duration;

const NET: &str = "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e";

fn create_network(vni: u32, pool: &str) -> Vec<u8> {
    json!({
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"oncache.vni": vni.to_string()}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "10.240.0.1/24", "Pool": pool}],
    })
    .to_string()
    .into_bytes()
}

/// A request body naming endpoint `ep` of [`NET`], with `extra`'s fields.
fn endpoint_body(ep: &str, extra: Value) -> Vec<u8> {
    let mut b = json!({"NetworkID": NET, "EndpointID": ep});
    b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    b.to_string().into_bytes()
}

/// Runs `f` on a thread of its own (a testbed moves its thread into a new network namespace),
/// failing if it does not finish in time.
fn on_own_thread(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => t.join().unwrap(),
        Err(_) if t.is_finished() => std::panic::resume_unwind(t.join().unwrap_err()),
        Err(_) => panic!("test thread still running after 60 s (a call waited on the driver?)"),
    }
}

#[test]
fn handshake_never_waits_behind_a_call_in_progress() {
    on_own_thread(|| {
        let tb = Testbed::new().unwrap();
        // A call in progress holds the driver for as long as it takes.
        let busy = tb.rt.block_on(tb.plugin.driver.lock());
        let (code, v) = tb.call("Plugin.Activate", b"");
        assert_eq!((code, v), (200, json!({"Implements": ["NetworkDriver"]})));
        let (code, v) = tb.call("NetworkDriver.GetCapabilities", b"");
        assert_eq!((code, &v["Scope"]), (200, &json!("local")), "{v}");
        drop(busy);
        assert_eq!(tb.call("NetworkDriver.CreateNetwork", &create_network(700, "10.240.0.0/24")).0, 200);
        assert!(tb.reset().unwrap().is_empty());
    });
}

#[test]
fn a_stored_peer_the_kernel_refuses_never_stops_start_or_create() {
    on_own_thread(|| {
        // As an older oncache could have stored it.
        let tb = Testbed::with_state(|s| {
            s.add_peer("fd00::5".parse().unwrap(), oncache_store::PeerSource::Operator)?;
            s.add_peer("10.255.0.9".parse().unwrap(), oncache_store::PeerSource::Operator)?;
            Ok(())
        })
        .unwrap();
        let (code, v) = tb.call("NetworkDriver.CreateNetwork", &create_network(701, "10.240.0.0/24"));
        assert_eq!(code, 200, "{v}");
        let links = std::process::Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(links.contains("ocbr701") && links.contains("ocvx701"), "{links}");
        // The operator can still see and remove it.
        let (_, peers) = tb.call("Oncache.PeerList", b"");
        assert_eq!(peers["Peers"].as_array().unwrap().len(), 2, "{peers}");
        assert_eq!(tb.call("Oncache.PeerRemove", br#"{"Address": "fd00::5"}"#).0, 200);
        let (_, peers) = tb.call("Oncache.PeerList", b"");
        assert_eq!(peers["Peers"], json!(["10.255.0.9"]));
        assert!(tb.reset().unwrap().is_empty());
    });
}

#[test]
fn forced_network_removal_takes_its_endpoints_along() {
    on_own_thread(|| {
        let tb = Testbed::new().unwrap();
        assert_eq!(tb.call("NetworkDriver.CreateNetwork", &create_network(702, "10.240.0.0/24")).0, 200);
        let ep = "e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2";
        let body = |extra: Value| endpoint_body(ep, extra);
        assert_eq!(tb.call("NetworkDriver.CreateEndpoint", &body(json!({"Interface": {"Address": "10.240.0.7/24"}}))).0, 200);
        assert_eq!(tb.call("NetworkDriver.Join", &body(json!({"SandboxKey": "/run/netns/x"}))).0, 200);
        let (code, v) = tb.call("Oncache.NetworkRemove", json!({"ID": NET}).to_string().as_bytes());
        assert_eq!(code, 500);
        assert!(v["Err"].as_str().unwrap().contains("1 joined endpoint"), "{v}");
        assert_eq!(tb.call("Oncache.NetworkRemove", json!({"ID": NET, "Force": true}).to_string().as_bytes()).0, 200);
        let (_, st) = tb.call("Oncache.Status", b"");
        assert_eq!(st["networks"], json!([]));
        // Nothing of it is left: no links, and no endpoint record to be found.
        assert!(tb.reset().unwrap().is_empty());
        let (code, v) = tb.call("NetworkDriver.EndpointOperInfo", &body(json!({})));
        assert_eq!(code, 500, "{v}");
    });
}

/// Swarm's leader allocates: a VNI per network, returned with every user option; a replay (a
/// new leader) with the returned options keeps it; two networks never share one; FreeNetwork
/// always succeeds and frees the VNI.
#[test]
fn swarm_allocation_is_idempotent_and_unique() {
    on_own_thread(|| {
        let tb = Testbed::swarm().unwrap();
        let (code, caps) = tb.call("NetworkDriver.GetCapabilities", b"");
        assert_eq!((code, &caps["Scope"]), (200, &json!("global")));
        let alloc = |id: &str, opts: Value| {
            let body = json!({"NetworkID": id, "Options": opts, "IPv4Data": [{"AddressSpace": "", "Pool": "10.241.0.0/24", "Gateway": "10.241.0.1/24"}], "IPv6Data": null});
            tb.call("NetworkDriver.AllocateNetwork", body.to_string().as_bytes())
        };
        let (n1, n2) = ("a1".repeat(32), "b2".repeat(32));
        let (code, r1) = alloc(&n1, json!({"com.docker.network.driver.mtu": "1400"}));
        assert_eq!(code, 200, "{r1}");
        assert_eq!(r1["Options"]["com.docker.network.driver.mtu"], "1400", "user options echoed: {r1}");
        let vni1 = r1["Options"]["oncache.vni"].as_str().unwrap().to_string();
        // A new leader replays with what was returned; and a plain repeat answers the same.
        assert_eq!(alloc(&n1, r1["Options"].clone()), (200, r1.clone()));
        assert_eq!(alloc(&n1, json!({"com.docker.network.driver.mtu": "1400"})), (200, r1.clone()));
        let (_, r2) = alloc(&n2, json!({}));
        assert_ne!(r2["Options"]["oncache.vni"].as_str().unwrap(), vni1, "two networks, one VNI: {r2}");
        let (code, v) = alloc(&"c3".repeat(32), json!({"oncache.vni": vni1}));
        assert_eq!(code, 500);
        assert!(v["Err"].as_str().unwrap().contains("already allocated"), "{v}");
        let (code, v) = alloc(&"d4".repeat(32), json!({"oncache.frobnicate": "1"}));
        assert_eq!(code, 500, "{v}");
        for id in [n1.as_str(), "", "é"] {
            assert_eq!(tb.call("NetworkDriver.FreeNetwork", json!({"NetworkID": id}).to_string().as_bytes()), (200, json!({})));
        }
        // Freed: a new network may get that VNI again.
        let (_, r4) = alloc(&"e5".repeat(32), json!({}));
        assert_eq!(r4["Options"]["oncache.vni"].as_str().unwrap(), vni1);
    });
}

/// Swarm's discovery feeds the peer set, tagged: a DiscoverDelete takes away a peer only Swarm
/// named, never one the operator added.
#[test]
fn swarm_discovery_never_removes_an_operators_peer() {
    on_own_thread(|| {
        let tb = Testbed::swarm().unwrap();
        let node = |ip: &str| json!({"DiscoveryType": 1, "DiscoveryData": {"Address": ip, "BindAddress": ip, "Self": false}}).to_string();
        assert_eq!(tb.call("Oncache.PeerAdd", br#"{"Address": "10.255.0.7"}"#).0, 200);
        for ip in ["10.255.0.7", "10.255.0.8"] {
            assert_eq!(tb.call("NetworkDriver.DiscoverNew", node(ip).as_bytes()), (200, json!({})));
        }
        let peers = || tb.call("Oncache.PeerList", b"").1["Peers"].clone();
        assert_eq!(peers(), json!(["10.255.0.7", "10.255.0.8"]));
        for ip in ["10.255.0.7", "10.255.0.8"] {
            assert_eq!(tb.call("NetworkDriver.DiscoverDelete", node(ip).as_bytes()), (200, json!({})));
        }
        assert_eq!(peers(), json!(["10.255.0.7"]), "the operator's peer must stay");
        // The operator's own removal removes it, whoever else named it.
        tb.call("NetworkDriver.DiscoverNew", node("10.255.0.7").as_bytes());
        assert_eq!(tb.call("Oncache.PeerRemove", br#"{"Address": "10.255.0.7"}"#).0, 200);
        assert_eq!(peers(), json!([]));
    });
}

/// A Swarm node whose dockerd restarts joins again as a new incarnation and only then is its
/// old incarnation declared failed (seen in tests/swarm.rs: DiscoverNew, DiscoverNew,
/// DiscoverDelete for one address): it stays a peer; its next DiscoverDelete (it leaves) takes
/// it away.
#[test]
fn a_restarted_swarm_node_stays_a_peer() {
    on_own_thread(|| {
        let tb = Testbed::swarm().unwrap();
        let node = json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.255.0.9", "BindAddress": "", "Self": false}}).to_string();
        let peers = || tb.call("Oncache.PeerList", b"").1["Peers"].clone();
        for call in ["NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete"] {
            assert_eq!(tb.call(call, node.as_bytes()), (200, json!({})));
        }
        assert_eq!(peers(), json!(["10.255.0.9"]), "the old incarnation's failure removed the node");
        assert_eq!(tb.call("NetworkDriver.DiscoverDelete", node.as_bytes()), (200, json!({})));
        assert_eq!(peers(), json!([]), "the node left");
    });
}

/// The address a link has now (`ip -j link show`).
fn link_mac(name: &str) -> String {
    let out = std::process::Command::new("ip").args(["-j", "link", "show", name]).output().unwrap();
    assert!(out.status.success(), "ip link show {name}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

fn ip(args: &str) {
    let out = std::process::Command::new("ip").args(args.split_whitespace()).output().unwrap();
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A port with the lowest address there is joins the bridge and leaves it: the bridge keeps
/// its address. A bridge takes its lowest port's address unless it has its own, so without it
/// the gateway on the bridge would change MAC under the containers that cached the old one.
fn assert_bridge_keeps_its_address(bridge: &str) {
    let before = link_mac(bridge);
    ip("link add ocdoc0 type veth peer name ocdoc1");
    ip("link set ocdoc0 address 00:00:5e:00:53:01");
    ip(&format!("link set ocdoc0 master {bridge} up"));
    assert_eq!(link_mac(bridge), before, "{bridge} took its new port's address");
    ip("link del ocdoc0");
    assert_eq!(link_mac(bridge), before, "{bridge}'s address changed when a port left");
}

/// The bridge's multicast snooping (`ip -d`'s `mcast_snooping`, 0 or 1).
fn mcast_snooping(bridge: &str) -> u64 {
    let out = std::process::Command::new("ip").args(["-j", "-d", "link", "show", bridge]).output().unwrap();
    assert!(out.status.success(), "ip -d link show {bridge}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["linkinfo"]["info_data"]["mcast_snooping"].as_u64().unwrap_or_else(|| panic!("{bridge}: no mcast_snooping in {v}"))
}

/// Snooping re-arms every port's query timers whenever a port comes up, which makes a
/// container's Join cost time in proportion to the containers already on the bridge.
#[test]
fn a_bridge_has_an_address_of_its_own_and_no_multicast_snooping_whoever_made_it() {
    on_own_thread(|| {
        let tb = Testbed::new().unwrap();
        assert_eq!(tb.call("NetworkDriver.CreateNetwork", &create_network(703, "10.240.0.0/24")).0, 200);
        assert_bridge_keeps_its_address("ocbr703");
        assert_eq!(mcast_snooping("ocbr703"), 0, "a new bridge snoops multicast");
        // As an older oncache left it: a bridge that takes its ports' addresses, with the
        // network's VXLAN device on it. The next start adopts it and keeps its address as is.
        ip("link del ocbr703");
        ip("link add ocbr703 type bridge");
        ip("link set ocvx703 master ocbr703");
        ip("link set ocbr703 up");
        assert_eq!(mcast_snooping("ocbr703"), 1, "the kernel's default changed: this no longer tests adoption");
        let lent = link_mac("ocbr703");
        assert_eq!(lent, link_mac("ocvx703"), "the hand-made bridge did not take its port's address");
        tb.rt.block_on(async { tb.plugin.driver.lock().await.reconcile().await }).unwrap();
        assert_eq!(link_mac("ocbr703"), lent, "adopting the bridge changed its address");
        assert_bridge_keeps_its_address("ocbr703");
        assert_eq!(mcast_snooping("ocbr703"), 0, "adopting the bridge left multicast snooping on");
        assert!(tb.reset().unwrap().is_empty());
    });
}

/// What `cmd` prints as JSON in the test thread's namespace (`ip -j …`, `bridge -j …`).
fn json_of(cmd: &str) -> Value {
    let mut args = cmd.split_whitespace();
    let out = std::process::Command::new(args.next().unwrap()).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(json!([]))
}

/// The addresses the VXLAN device's neighbour table answers for, and the MACs of its
/// forwarding entries with a destination.
fn remotes_in_kernel(vxlan: &str) -> (Vec<String>, Vec<String>) {
    let mut ips: Vec<String> = json_of(&format!("ip -j neigh show dev {vxlan}")).as_array().unwrap().iter().map(|n| n["dst"].as_str().unwrap().to_string()).collect();
    let mut macs: Vec<String> = json_of(&format!("bridge -j fdb show dev {vxlan}"))
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("dst").is_some())
        .map(|e| e["mac"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    macs.sort();
    macs.dedup();
    (ips, macs)
}

/// The bridge's own entries behind the VXLAN port: each MAC, with "static" or "extern_learn".
fn bridge_entries(vxlan: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = json_of(&format!("bridge -j fdb show dev {vxlan}"))
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("master").is_some() && e["mac"].as_str().is_some_and(|m| m.starts_with("02:42:0a")))
        .map(|e| {
            let kind = if e["state"] == "static" { "static" } else if e["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "extern_learn")) { "extern_learn" } else { "dynamic" };
            (e["mac"].as_str().unwrap().to_string(), kind.to_string())
        })
        .collect();
    out.sort();
    out
}

/// Remote endpoints leave the kernel by key. An address that joins here drops its own remote
/// entry at once and no other; the forwarding entry of its MAC stays while another address of
/// the network has that MAC at that host, and goes with the last one; removing the network
/// drops the rest.
#[test]
fn a_local_join_drops_its_remote_entry_and_keeps_a_forwarding_entry_still_in_use() {
    use oncache::cluster::{Published, View};
    on_own_thread(|| {
        let tb = Testbed::new().unwrap();
        assert_eq!(tb.call("NetworkDriver.CreateNetwork", &create_network(705, "10.240.0.0/24")).0, 200);
        let (a, b) = ([2, 0x42, 10, 240, 0, 5], [2, 0x42, 10, 240, 0, 6]);
        let p = |ip: &str, mac: [u8; 6]| Published { vni: 705, ip: ip.parse().unwrap(), mac, since: 1 };
        let view = |eps: Vec<Published>| View { hosts: vec![("192.0.2.9".parse().unwrap(), eps)], pending: Default::default(), resync_kernel: false };
        let apply = |v: View| tb.rt.block_on(async { tb.plugin.driver.lock().await.apply_view(&v).await }).unwrap();
        let all = || vec![p("10.240.0.5", a), p("fd00::5", a), p("10.240.0.6", b)];
        apply(view(all()));
        let (ma, mb) = ("02:42:0a:f0:00:05".to_string(), "02:42:0a:f0:00:06".to_string());
        assert_eq!(remotes_in_kernel("ocvx705"), (vec!["10.240.0.5".into(), "10.240.0.6".into(), "fd00::5".into()], vec![ma.clone(), mb.clone()]));
        assert_eq!(bridge_entries("ocvx705"), vec![(ma.clone(), "extern_learn".to_string()), (mb.clone(), "extern_learn".to_string())]);
        // As an older oncache left them: static entries in the bridge, which the bridge walks
        // for every port it gains. The next start makes them externally learned.
        let made = std::process::Command::new("bridge").args(["fdb", "replace", &mb, "dev", "ocvx705", "master", "static"]).status().unwrap();
        assert!(made.success(), "bridge fdb replace … static");
        assert_eq!(bridge_entries("ocvx705")[1], (mb.clone(), "static".to_string()));
        tb.rt.block_on(async { tb.plugin.driver.lock().await.reconcile().await }).unwrap();
        assert_eq!(bridge_entries("ocvx705"), vec![(ma.clone(), "extern_learn".to_string()), (mb.clone(), "extern_learn".to_string())], "the start left a static entry");

        // 10.240.0.5 joins here: its remote entry goes, fd00::5 keeps the MAC's forwarding entry.
        let ep = "e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5";
        let body = |extra: Value| endpoint_body(ep, extra);
        assert_eq!(tb.call("NetworkDriver.CreateEndpoint", &body(json!({"Interface": {"Address": "10.240.0.5/24"}}))).0, 200);
        assert_eq!(tb.call("NetworkDriver.Join", &body(json!({"SandboxKey": "/run/netns/x"}))).0, 200);
        let kept = (vec!["10.240.0.6".to_string(), "fd00::5".to_string()], vec![ma.clone(), mb.clone()]);
        assert_eq!(remotes_in_kernel("ocvx705"), kept, "after the local join");
        apply(view(all()));
        assert_eq!(remotes_in_kernel("ocvx705"), kept, "the other host's claim came back over the local join");

        // The last address with MAC a goes: so does its forwarding entry.
        apply(view(vec![p("10.240.0.5", a), p("10.240.0.6", b)]));
        assert_eq!(remotes_in_kernel("ocvx705"), (vec!["10.240.0.6".into()], vec![mb]));

        assert_eq!(tb.call("NetworkDriver.Leave", &body(json!({}))).0, 200);
        assert_eq!(tb.call("NetworkDriver.DeleteEndpoint", &body(json!({}))).0, 200);
        assert_eq!(tb.call("Oncache.Status", b"").1["remote_endpoints"], 1);
        assert_eq!(tb.call("NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}).to_string().as_bytes()).0, 200);
        assert_eq!(tb.call("Oncache.Status", b"").1["remote_endpoints"], 0, "the network's remote endpoints outlived it");
        assert!(tb.reset().unwrap().is_empty());
    });
}
