//! Decode request bodies captured from a real dockerd 20.10 (see tests/fixtures/README.md).

use std::path::{Path, PathBuf};

use libnetwork_api::driver::*;
use libnetwork_api::ipam::{
    ReleaseAddressRequest, ReleasePoolRequest, RequestAddressRequest, RequestPoolRequest,
};
use libnetwork_api::{decode, ipam};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn body(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Decodes a fixture and checks nothing dockerd sent was lost: re-serialized, the value still
/// has every non-empty member of the original (catches misspelt field names).
fn load<T: DeserializeOwned + Default + Serialize>(name: &str) -> T {
    let raw = body(name);
    let t: T = decode(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
    if !raw.trim_ascii().is_empty() {
        let original: Value = serde_json::from_slice(&raw).unwrap();
        covers(&original, &serde_json::to_value(&t).unwrap(), name);
    }
    t
}

fn covers(original: &Value, ours: &Value, at: &str) {
    match (original, ours) {
        // "" and null are what Go sends for unset; we may omit or default them.
        (Value::Null, _) => {}
        (Value::String(s), _) if s.is_empty() => {}
        (Value::Object(o), Value::Object(m)) => {
            for (k, v) in o {
                let at = format!("{at}.{k}");
                match m.get(k) {
                    Some(w) => covers(v, w, &at),
                    None => assert!(v.is_null() || v == "", "{at} dropped"),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}");
            a.iter()
                .zip(b)
                .enumerate()
                .for_each(|(i, (v, w))| covers(v, w, &format!("{at}[{i}]")));
        }
        _ => assert_eq!(original, ours, "{at}"),
    }
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every captured body decodes into the type for its method, losslessly; no fixture is unknown.
#[test]
fn every_fixture_decodes() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".json") {
            continue;
        }
        n += 1;
        let method: String = name.split('.').take(2).collect::<Vec<_>>().join(".");
        match method.as_str() {
            "Plugin.Activate"
            | "NetworkDriver.GetCapabilities"
            | "IpamDriver.GetCapabilities"
            | "IpamDriver.GetDefaultAddressSpaces" => {
                assert!(body(&name).is_empty(), "{name} has a body")
            }
            "NetworkDriver.CreateNetwork" => drop(load::<CreateNetworkRequest>(&name)),
            "NetworkDriver.AllocateNetwork" => drop(load::<AllocateNetworkRequest>(&name)),
            "NetworkDriver.DeleteNetwork" => drop(load::<DeleteNetworkRequest>(&name)),
            "NetworkDriver.FreeNetwork" => drop(load::<FreeNetworkRequest>(&name)),
            "NetworkDriver.CreateEndpoint" => drop(load::<CreateEndpointRequest>(&name)),
            "NetworkDriver.EndpointOperInfo" => drop(load::<EndpointOperInfoRequest>(&name)),
            "NetworkDriver.DeleteEndpoint" => drop(load::<DeleteEndpointRequest>(&name)),
            "NetworkDriver.Join" => drop(load::<JoinRequest>(&name)),
            "NetworkDriver.Leave" => drop(load::<LeaveRequest>(&name)),
            "NetworkDriver.ProgramExternalConnectivity" => {
                drop(load::<ProgramExternalConnectivityRequest>(&name))
            }
            "NetworkDriver.RevokeExternalConnectivity" => {
                drop(load::<RevokeExternalConnectivityRequest>(&name))
            }
            "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
                drop(load::<DiscoveryNotification>(&name))
            }
            "IpamDriver.RequestPool" => drop(load::<RequestPoolRequest>(&name)),
            "IpamDriver.ReleasePool" => drop(load::<ReleasePoolRequest>(&name)),
            "IpamDriver.RequestAddress" => drop(load::<RequestAddressRequest>(&name)),
            "IpamDriver.ReleaseAddress" => drop(load::<ReleaseAddressRequest>(&name)),
            _ => panic!("fixture {name}: no type for method {method}"),
        }
    }
    assert!(n >= 70, "only {n} fixtures");
}

#[test]
fn create_network_basic() {
    let r: CreateNetworkRequest = load("NetworkDriver.CreateNetwork.json");
    assert!(is_hex_id(&r.network_id, 64), "{}", r.network_id);
    let g = r.generic_options().unwrap();
    assert_eq!(g.get("foo").map(String::as_str), Some("bar"));
    assert_eq!(g.get(OPT_MTU).map(String::as_str), Some("1400"));
    assert!(!r.flag(OPT_ENABLE_IPV6) && !r.flag(OPT_INTERNAL));
    assert_eq!(
        r.ipv4_data,
        vec![IpamData {
            address_space: "LocalDefault".into(),
            pool: "10.213.0.0/24".into(),
            gateway: "10.213.0.1/24".into(), // a CIDR, unlike Join's Gateway
            aux_addresses: Default::default(),
        }]
    );
    assert!(r.ipv6_data.is_empty());
}

#[test]
fn create_network_aux_internal_ipv6() {
    let r: CreateNetworkRequest = load("NetworkDriver.CreateNetwork.ports.json");
    assert_eq!(r.ipv4_data[0].gateway, "10.213.0.254/24");
    assert_eq!(r.ipv4_data[0].aux_addresses["host1"], "10.213.0.200/24");
    assert_eq!(r.generic_options().unwrap()["num"], "1"); // -o values arrive as strings

    let r: CreateNetworkRequest = load("NetworkDriver.CreateNetwork.ports.2.json");
    assert!(r.flag(OPT_INTERNAL));
    assert!(r.generic_options().unwrap().is_empty());

    let r: CreateNetworkRequest = load("NetworkDriver.CreateNetwork.ipv6.json");
    assert!(r.flag(OPT_ENABLE_IPV6));
    assert_eq!(r.ipv6_data[0].pool, "fd00:213::/64");
    assert_eq!(r.ipv6_data[0].gateway, "fd00:213::1/64");
    assert_eq!(r.ipv4_data[0].pool, "10.213.1.0/24");

    let r: CreateNetworkRequest = load("NetworkDriver.CreateNetwork.ipam.json");
    assert_eq!(r.ipv4_data[0].address_space, "CaptureLocal");
}

/// Swarm: the manager's AllocateNetwork gets the user's options flat; the node's CreateNetwork
/// gets what AllocateNetwork answered, nested under the generic key.
#[test]
fn swarm_allocate_then_create() {
    let a: AllocateNetworkRequest = load("NetworkDriver.AllocateNetwork.managed.json");
    assert_eq!(a.network_id.len(), 25); // swarm IDs are not 64-hex
    assert_eq!(a.options["foo"], "bar");
    assert_eq!(a.options[OPT_MTU], "1400");
    assert_eq!(a.ipv4_data[0].address_space, "");
    assert_eq!(a.ipv4_data[0].gateway, "10.213.7.1/24");
    assert!(a.ipv6_data.is_empty()); // sent as null

    let c: CreateNetworkRequest = load("NetworkDriver.CreateNetwork.managed.json");
    assert_eq!(c.network_id, a.network_id);
    let g = c.generic_options().unwrap();
    assert_eq!(
        (g["foo"].as_str(), g["capture.vni"].as_str()),
        ("bar", "4242")
    );

    let f: FreeNetworkRequest = load("NetworkDriver.FreeNetwork.managed.json");
    assert_eq!(f.network_id, a.network_id);
}

#[test]
fn discover_new_self() {
    let n: DiscoveryNotification = load("NetworkDriver.DiscoverNew.managed.json");
    assert_eq!(n.discovery_type, DISCOVERY_NODE);
    let d = n.node().unwrap().unwrap();
    assert_eq!(
        d,
        NodeDiscoveryData {
            address: "10.98.0.1".into(),
            bind_address: "10.98.0.1".into(),
            self_node: true
        }
    );
}

#[test]
fn endpoint_lifecycle() {
    let net: CreateNetworkRequest = load("NetworkDriver.CreateNetwork.json");
    let c: CreateEndpointRequest = load("NetworkDriver.CreateEndpoint.json");
    assert_eq!(c.network_id, net.network_id);
    assert!(is_hex_id(&c.endpoint_id, 64));
    let i = c.interface.as_ref().unwrap();
    assert_eq!(i.address, "10.213.0.2/24"); // CIDR
    assert_eq!((i.address_ipv6.as_str(), i.mac_address.as_str()), ("", ""));
    assert_eq!(c.options["com.docker.network.portmap"], json!([]));

    let j: JoinRequest = load("NetworkDriver.Join.json");
    assert_eq!(
        (&j.network_id, &j.endpoint_id),
        (&c.network_id, &c.endpoint_id)
    );
    let key = j
        .sandbox_key
        .strip_prefix("/var/run/docker/netns/")
        .unwrap();
    assert!(is_hex_id(key, 12), "{}", j.sandbox_key);

    let l: LeaveRequest = load("NetworkDriver.Leave.json");
    let d: DeleteEndpointRequest = load("NetworkDriver.DeleteEndpoint.json");
    assert_eq!(
        (&l.endpoint_id, &d.endpoint_id),
        (&c.endpoint_id, &c.endpoint_id)
    );
    let dn: DeleteNetworkRequest = load("NetworkDriver.DeleteNetwork.json");
    assert_eq!(dn.network_id, net.network_id);

    // Under a managed plugin / custom exec-root the netns path differs.
    let j: JoinRequest = load("NetworkDriver.Join.managed.json");
    assert!(
        j.sandbox_key.starts_with("/run/docker/netns/"),
        "{}",
        j.sandbox_key
    );
}

#[test]
fn endpoint_ports_and_ipv6() {
    let c: CreateEndpointRequest = load("NetworkDriver.CreateEndpoint.ports.json");
    assert_eq!(c.interface.unwrap().address, "10.213.0.7/24"); // --ip
    assert_eq!(
        c.options["com.docker.network.portmap"],
        json!([{"Proto":6,"IP":"","Port":80,"HostIP":"127.0.0.1","HostPort":18080,"HostPortEnd":18080}])
    );
    assert_eq!(
        c.options["com.docker.network.endpoint.exposedports"],
        json!([{"Proto":6,"Port":90},{"Proto":6,"Port":80}])
    );

    // Connecting to a second network: that endpoint's CreateEndpoint has no options.
    let c2: CreateEndpointRequest = load("NetworkDriver.CreateEndpoint.ports.2.json");
    assert!(c2.options.is_empty());

    let p: ProgramExternalConnectivityRequest =
        load("NetworkDriver.ProgramExternalConnectivity.ports.json");
    assert_eq!(p.endpoint_id, c.endpoint_id);
    assert_eq!(
        p.options["com.docker.network.portmap"][0]["HostPort"],
        json!(18080)
    );
    let r: RevokeExternalConnectivityRequest =
        load("NetworkDriver.RevokeExternalConnectivity.ports.json");
    assert_eq!(r.endpoint_id, c.endpoint_id);
    let o: EndpointOperInfoRequest = load("NetworkDriver.EndpointOperInfo.ports.json");
    assert_eq!(o.endpoint_id, c.endpoint_id);

    let c: CreateEndpointRequest = load("NetworkDriver.CreateEndpoint.ipv6.json");
    let i = c.interface.unwrap();
    assert_eq!(
        (i.address.as_str(), i.address_ipv6.as_str()),
        ("10.213.1.2/24", "fd00:213::2/64")
    );
}

#[test]
fn ipam_requests() {
    let p: RequestPoolRequest = load("IpamDriver.RequestPool.ipam.json");
    assert_eq!(
        (p.address_space.as_str(), p.pool.as_str(), p.v6),
        ("CaptureLocal", "", false)
    );
    assert_eq!(p.options["bar"], "baz"); // --ipam-opt
    let p6: RequestPoolRequest = load("IpamDriver.RequestPool.ipam.3.json");
    assert_eq!((p6.pool.as_str(), p6.v6), ("fd00:215::/64", true));

    let gw: RequestAddressRequest = load("IpamDriver.RequestAddress.ipam.json");
    assert_eq!(gw.address, "");
    assert_eq!(
        gw.options[ipam::OPT_ADDRESS_TYPE],
        ipam::ADDRESS_TYPE_GATEWAY
    );
    let any: RequestAddressRequest = load("IpamDriver.RequestAddress.ipam.2.json");
    assert!(any.options.is_empty()); // sent as null
    let fixed: RequestAddressRequest = load("IpamDriver.RequestAddress.ipam.5.json");
    assert_eq!(fixed.address, "10.215.0.9"); // plain IP, no prefix length

    let ra: ReleaseAddressRequest = load("IpamDriver.ReleaseAddress.ipam.json");
    assert_eq!(
        (ra.pool_id.as_str(), ra.address.as_str()),
        ("capture/CaptureLocal/10.215.0.0/24", "10.215.0.9")
    );
    let rp: ReleasePoolRequest = load("IpamDriver.ReleasePool.ipam.json");
    assert_eq!(rp.pool_id, "capture/CaptureLocal/10.214.0.0/24");
}
