use super::*;

fn net(id: &str, vni: u32) -> Network {
    Network {
        id: id.into(),
        vni,
        mtu: 1450,
        ipv4_pools: vec!["10.1.0.0/24".into()],
        ipv6_pools: vec![],
        fastpath: true,
        options: Default::default(),
        created: 0,
        zone: 0,
        ipam: None,
    }
}

fn ep(id: &str, network: &str) -> Endpoint {
    Endpoint {
        id: id.into(),
        network_id: network.into(),
        ipv4: Some("10.1.0.2/24".into()),
        ipv6: None,
        mac: "02:42:0a:01:00:02".into(),
        sandbox: None,
        joined_at: 0,
        cni: None,
    }
}

/// sled's flusher thread may hold the folder lock for a moment after the last handle drops.
fn reopen_result(dir: &std::path::Path) -> Result<Store> {
    for _ in 0..50 {
        match Store::open(dir) {
            Err(Error::Sled(sled::Error::Io(_))) => std::thread::sleep(std::time::Duration::from_millis(20)),
            other => return other,
        }
    }
    Store::open(dir)
}

fn reopen(dir: &std::path::Path) -> Store {
    reopen_result(dir).unwrap()
}

#[test]
fn records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.put_network(&net("n1", 4096)).unwrap();
        s.put_endpoint(&ep("e1", "n1")).unwrap();
        assert!(s.add_peer("10.99.0.2".parse().unwrap(), PeerSource::Operator).unwrap());
        assert!(!s.add_peer("10.99.0.2".parse().unwrap(), PeerSource::Operator).unwrap(), "a peer is a set member");
    }
    let s = reopen(dir.path());
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(s.network("n1").unwrap(), Some(net("n1", 4096)));
    assert_eq!(s.endpoint("e1").unwrap(), Some(ep("e1", "n1")));
    assert_eq!(s.peers().unwrap(), vec!["10.99.0.2".parse::<IpAddr>().unwrap()]);
}

#[test]
fn deleting_a_network_deletes_its_endpoints_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.put_network(&net("n1", 1)).unwrap();
    s.put_network(&net("n2", 2)).unwrap();
    s.put_endpoint(&ep("e1", "n1")).unwrap();
    s.put_endpoint(&ep("e2", "n2")).unwrap();
    assert_eq!(s.delete_network("n1").unwrap().map(|n| n.vni), Some(1));
    assert_eq!(s.delete_network("n1").unwrap(), None, "second delete finds nothing");
    assert_eq!(s.endpoint("e1").unwrap(), None);
    assert_eq!(s.endpoints_of("n2").unwrap(), vec![ep("e2", "n2")]);
    assert_eq!(s.networks().unwrap().len(), 1);
}

#[test]
fn remove_peer_reports_presence() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let p: IpAddr = "10.99.0.3".parse().unwrap();
    assert!(!s.remove_peer(p, None).unwrap());
    s.add_peer(p, PeerSource::Operator).unwrap();
    assert!(s.remove_peer(p, None).unwrap());
    assert!(s.peers().unwrap().is_empty());
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.db.open_tree("meta").unwrap().insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
        s.flush().unwrap();
    }
    let _ = reopen_result(dir.path());
    match Store::open(dir.path()) {
        Err(Error::NewerSchema { found }) => assert_eq!(found, SCHEMA_VERSION + 1),
        other => panic!("expected NewerSchema, got {:?}", other.err()),
    }
}

#[test]
fn corrupt_record_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.networks.insert("bad", &b"{not json"[..]).unwrap();
    let err = s.network("bad").unwrap_err().to_string();
    assert!(err.contains("bad"), "{err}");
}

#[test]
fn second_owner_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Store::open(dir.path()).unwrap();
    assert!(Store::open(dir.path()).is_err(), "sled must lock the folder for one owner");
}

#[test]
fn records_from_before_the_fastpath_field_default_to_on() {
    let n: Network = serde_json::from_str(r#"{"id":"n","vni":5,"mtu":1450}"#).unwrap();
    assert!(n.fastpath);
}

#[test]
fn endpoints_by_prefix_are_a_range_not_a_dump() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    for id in ["0123456789a", "0123456789abcdef", "0123456789b", "ff"] {
        s.put_endpoint(&ep(id, "n")).unwrap();
    }
    let ids = |p: &str| s.endpoints_with_prefix(p).unwrap().into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids("0123456789a"), ["0123456789a", "0123456789abcdef"]);
    assert_eq!(ids("f"), ["ff"]);
    assert!(ids("x").is_empty());
}

#[test]
fn allocations_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.put_allocation("n1", 4096).unwrap();
        s.put_allocation("n2", 4097).unwrap();
        s.put_allocation("n1", 4096).unwrap();
        s.delete_allocation("n2").unwrap();
    }
    let s = reopen(dir.path());
    assert_eq!(s.allocations().unwrap(), [("n1".to_string(), 4096)]);
}

#[test]
fn a_swarm_event_never_removes_an_operators_peer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let (a, b): (IpAddr, IpAddr) = ("10.99.0.2".parse().unwrap(), "10.99.0.3".parse().unwrap());
    s.add_peer(a, PeerSource::Operator).unwrap();
    assert!(!s.add_peer(a, PeerSource::Swarm).unwrap(), "already a peer");
    assert!(!s.remove_peer(a, Some(PeerSource::Swarm)).unwrap(), "the operator's claim stays");
    assert_eq!(s.peers().unwrap(), [a]);
    s.add_peer(b, PeerSource::Swarm).unwrap();
    assert!(s.remove_peer(b, Some(PeerSource::Swarm)).unwrap());
    // A record of an older oncache (no sources) was the operator's.
    s.peers.insert(b.to_string().as_bytes(), &[]).unwrap();
    assert!(!s.remove_peer(b, Some(PeerSource::Swarm)).unwrap());
    assert!(s.remove_peer(b, None).unwrap());
    assert_eq!(s.peers().unwrap(), [a]);
}

#[test]
fn cni_records_round_trip_and_older_records_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let mut n = net("cni:oc1", 300);
    n.ipam = Some(Ipam { range: "10.1.0.0/25".into(), gateway: "10.1.0.1/24".into() });
    s.put_network(&n).unwrap();
    let mut e = ep("cn0123456789abcdef", "cni:oc1");
    e.cni = Some(CniOwner { container_id: "c1".into(), ifname: "eth0".into(), netns: "/run/netns/x".into() });
    s.put_endpoint(&e).unwrap();
    assert_eq!(s.network("cni:oc1").unwrap(), Some(n));
    assert_eq!(s.endpoint("cn0123456789abcdef").unwrap(), Some(e));
    // Records written before these fields existed.
    let old_net: Network = serde_json::from_str(r#"{"id":"n1","vni":5,"mtu":1450}"#).unwrap();
    assert_eq!(old_net.ipam, None);
    let old_ep: Endpoint = serde_json::from_str(r#"{"id":"e1","network_id":"n1","mac":"02:42:0a:01:00:02"}"#).unwrap();
    assert_eq!(old_ep.cni, None);
    // And a Docker record does not grow the new keys.
    assert!(!serde_json::to_string(&ep("e1", "n1")).unwrap().contains("cni"));
}

#[test]
fn calls_in_flight_survive_a_reopen_until_ended_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let call = |m: &str, at| Call { method: m.into(), body: format!("{{\"at\":{at}}}"), at_ms: at };
    let (a, b, c) = {
        let s = Store::open(dir.path()).unwrap();
        let a = s.begin_call(&call("NetworkDriver.Join", 1)).unwrap();
        let b = s.begin_call(&call("NetworkDriver.Leave", 2)).unwrap();
        let c = s.begin_call(&call("NetworkDriver.Join", 3)).unwrap();
        assert_eq!(s.end_call(b).unwrap(), Some(call("NetworkDriver.Leave", 2)));
        assert_eq!(s.end_call(b).unwrap(), None, "ended twice");
        (a, b, c)
    };
    let s = reopen_result(dir.path()).unwrap();
    assert_eq!(s.calls().unwrap(), vec![(a, call("NetworkDriver.Join", 1)), (c, call("NetworkDriver.Join", 3))]);
    assert!(a < c && b < c, "sequence numbers grow");
}
