//! The plugin socket without dockerd: bad input, idempotency, and restart reconciliation
//! against the real kernel in a namespace.

mod lab;
mod support;

use lab::Lab;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const NET: &str = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";
const EP: &str = "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1";

fn create_network(vni: u32, pool: &str) -> Value {
    json!({
        "NetworkID": NET,
        "Options": {"com.docker.network.enable_ipv6": false,
                    "com.docker.network.generic": {"oncache.vni": vni.to_string()}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "10.230.0.1/24", "Pool": pool}],
        "IPv6Data": []
    })
}

fn err_of(v: &Value) -> String {
    v["Err"].as_str().unwrap_or_else(|| panic!("no Err in {v}")).to_string()
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let mut lab = Lab::new(1);
    lab.start_oncaches(&[]);
    let h = lab.host(0);
    let sock = h.oncache_socket();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o600), "socket must be root's only");
    let (code, v) = call(h, "NetworkDriver.CreateNetwork", create_network(500, "10.230.0.0/24"));
    assert_eq!((code, &v), (200, &json!({})));
    let snapshot = (status(h), oncache_links(h));

    // Argument-less calls come with an empty body and no Content-Type.
    let (code, body) = lab::post(&sock, "/NetworkDriver.GetCapabilities", "");
    assert_eq!(code, 200);
    let caps: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(caps["Scope"], "local");
    let (code, body) = lab::post(&sock, "/Plugin.Activate", "");
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"Implements": ["NetworkDriver"]})));

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("NetworkDriver.CreateNetwork", "{\"NetworkID\": \"ab".into(), 400, "malformed JSON"),
        ("NetworkDriver.CreateNetwork", "not json".into(), 400, "malformed JSON"),
        ("NetworkDriver.CreateNetwork", "[]".into(), 400, "JSON object"),
        ("NetworkDriver.CreateNetwork", "{\"NetworkID\": 5}".into(), 400, "NetworkID"),
        ("NetworkDriver.CreateNetwork", format!("{{\"NetworkID\": \"{}\", \"Options\": {{\"com.docker.network.generic\": {{\"oncache.vni\": [1]}}}}}}", "ab12"), 500, "oncache.vni"),
        ("NetworkDriver.CreateNetwork", "{}".into(), 500, "missing network ID"),
        ("NetworkDriver.CreateNetwork", "{\"NetworkID\": \"../../etc\"}".into(), 500, "invalid network ID"),
        ("NetworkDriver.CreateNetwork", json!({"NetworkID": "ab12", "IPv4Data": [{"Pool": "10.230.0.0/16"}]}).to_string(), 500, "overlaps subnet 10.230.0.0/24"),
        ("NetworkDriver.CreateNetwork", create_network(500, "10.231.0.0/24").to_string().replace(NET, "ab12"), 500, "VNI 500 is already used"),
        ("NetworkDriver.CreateNetwork", create_network(502, "10.232.0.0/33").to_string().replace(NET, "ab12"), 500, "invalid CIDR"),
        ("NetworkDriver.CreateEndpoint", json!({"NetworkID": "ab12", "EndpointID": EP}).to_string(), 500, "not an oncache network"),
        ("NetworkDriver.CreateEndpoint", json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.230.0.300/24"}}).to_string(), 500, "invalid CIDR"),
        ("NetworkDriver.CreateEndpoint", json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"MacAddress": "zz"}}).to_string(), 500, "invalid MAC"),
        ("NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x"}).to_string(), 500, "not found"),
        ("NetworkDriver.AllocateNetwork", json!({"NetworkID": "ab12"}).to_string(), 500, "scope local"),
        ("NetworkDriver.Frobnicate", "{}".into(), 404, "unknown method"),
        ("Oncache.PeerAdd", json!({"Address": "nope"}).to_string(), 400, "invalid peer address"),
        ("Oncache.PeerAdd", json!({"Address": h.underlay_ip.to_string()}).to_string(), 500, "own underlay address"),
        ("Oncache.PeerAdd", json!({"Address": "fd00::5"}).to_string(), 500, "IPv6, but the underlay ul0 is IPv4"),
        // Every ID is checked before use: never a panic, never an empty or foreign link name.
        ("NetworkDriver.Leave", json!({"NetworkID": NET, "EndpointID": "ééééééééééé"}).to_string(), 500, "invalid endpoint ID"),
        ("NetworkDriver.DeleteEndpoint", json!({"NetworkID": NET, "EndpointID": "ééééééééééé"}).to_string(), 500, "invalid endpoint ID"),
        ("NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": "ééééééééééé", "SandboxKey": "/x"}).to_string(), 500, "invalid endpoint ID"),
        ("NetworkDriver.EndpointOperInfo", json!({"NetworkID": NET, "EndpointID": "é"}).to_string(), 500, "invalid endpoint ID"),
        ("NetworkDriver.Leave", json!({"NetworkID": NET, "EndpointID": ""}).to_string(), 500, "missing endpoint ID"),
        ("NetworkDriver.DeleteEndpoint", json!({"NetworkID": NET}).to_string(), 500, "missing endpoint ID"),
        // A body-less mutating call is what dockerd sends when it retries a call cut off by a
        // restart (oncache::inflight); with nothing cut off, it is refused as such.
        ("NetworkDriver.Join", "".into(), 400, "empty request body"),
        ("NetworkDriver.EndpointOperInfo", "".into(), 500, "missing endpoint ID"),
        ("NetworkDriver.DeleteNetwork", "".into(), 400, "no NetworkDriver.DeleteNetwork was cut off"),
        ("NetworkDriver.DeleteNetwork", json!({"NetworkID": "x/y"}).to_string(), 500, "invalid network ID"),
        ("NetworkDriver.CreateEndpoint", json!({"NetworkID": "é", "EndpointID": EP}).to_string(), 500, "invalid network ID"),
    ];
    for (method, body, want_code, want) in &cases {
        let (code, text) = lab::post(&sock, &format!("/{method}"), body);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method}: not JSON: {text}"));
        let e = err_of(&v);
        assert_eq!(code, *want_code, "{method} {:.80}: {e}", body);
        assert!(e.contains(want), "{method} {:.80}: error {e:?} should mention {want:?}", body);
    }
    let (code, v) = post_oversized(&sock, "NetworkDriver.CreateNetwork", 2 << 20);
    assert_eq!(code, 413);
    assert!(err_of(&v).contains("exceeds 1048576 bytes"), "{v}");
    let r = lab::request(&sock, "GET", "/Plugin.Activate", &[], b"", Duration::from_secs(10)).expect("GET answered");
    assert_eq!(r.status, 405);
    assert!(err_of(&r.json()).contains("only POST"));
    // A request cut off mid-body: the daemon must neither hang nor die.
    let _ = lab::raw_exchange(
        &sock,
        b"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"Netw",
        true,
        Duration::from_secs(15),
    );

    // Calls for things already gone succeed and change nothing.
    for (method, body) in [
        ("NetworkDriver.DeleteEndpoint", json!({"NetworkID": NET, "EndpointID": EP})),
        ("NetworkDriver.Leave", json!({"NetworkID": NET, "EndpointID": EP})),
        ("NetworkDriver.DeleteNetwork", json!({"NetworkID": "ab12"})),
        ("NetworkDriver.CreateNetwork", create_network(500, "10.230.0.0/24")),
    ] {
        let (code, v) = call(h, method, body);
        assert_eq!((code, &v), (200, &json!({})), "{method}");
    }
    assert!(lab.host_mut(0).oncache_exited().is_none(), "daemon died:\n{}", lab.host(0).oncache_log());
    let h = lab.host(0);
    assert_eq!((status(h), oncache_links(h)), snapshot, "bad requests changed state");
    lab.finish();
}

#[test]
fn endpoint_calls_are_idempotent_and_restart_reconciles_the_kernel() {
    let mut lab = Lab::new(1);
    let stray_peer = "10.99.250.9";
    lab.start_oncaches(&["--peer", stray_peer]);
    let h = lab.host(0);
    call(h, "NetworkDriver.CreateNetwork", create_network(600, "10.230.0.0/24"));
    let ep = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.230.0.5/24", "AddressIPv6": "", "MacAddress": ""}});
    let (code, v) = call(h, "NetworkDriver.CreateEndpoint", ep.clone());
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, json!({"Interface": {"MacAddress": "02:42:0a:e6:00:05"}}));
    assert_eq!(call(h, "NetworkDriver.CreateEndpoint", ep).1, v, "repeat answers the same");
    let join = json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/0123", "Options": {}});
    let (code, v) = call(h, "NetworkDriver.Join", join);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["InterfaceName"], json!({"SrcName": "ocvpe1e1e1e1e1e", "DstPrefix": "eth"}));
    assert!(v.get("Gateway").is_none(), "no gateway: Docker's gwbridge provides it");
    assert_eq!(master_of(h, "ocvee1e1e1e1e1e").as_deref(), Some("ocbr600"));
    // Peers feed the control plane; nothing is flooded to them.
    assert!(!h.sh("bridge fdb show dev ocvx600").contains(stray_peer), "a flood entry to a peer");
    assert_eq!(status(h)["peers"], json!([stray_peer]));

    // Damage the kernel state while the daemon is down, then start it again.
    lab.host_mut(0).stop_oncache();
    let h = lab.host(0);
    h.sh("ip link del ocvx600");
    h.sh("ip link add ocbr4242 type bridge && ip link add ocvedeadbeef type veth peer name ocvpdeadbeef && ip link add ocvx9 type vxlan id 9 dstport 4789");
    h.sh("ip link set ocvee1e1e1e1e1e nomaster");
    lab.host_mut(0).start_oncache(&[]);
    let h = lab.host(0);
    assert_eq!(oncache_links(h), ["ocbr600", "ocvee1e1e1e1e1e", "ocvpe1e1e1e1e1e", "ocvx600"], "orphans must go, missing links come back");
    assert_eq!(master_of(h, "ocvx600").as_deref(), Some("ocbr600"));
    assert_eq!(master_of(h, "ocvee1e1e1e1e1e").as_deref(), Some("ocbr600"));
    assert_eq!(cli(h, &["peer", "list"]).unwrap().trim(), stray_peer, "stored peer not restored");
    cli(h, &["peer", "rm", stray_peer]).unwrap();
    assert_eq!(cli(h, &["peer", "list"]).unwrap().trim(), "");

    // Leave, then DeleteEndpoint, each twice; then the network.
    for m in ["NetworkDriver.Leave", "NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint", "NetworkDriver.DeleteEndpoint"] {
        assert_eq!(call(h, m, json!({"NetworkID": NET, "EndpointID": EP})).0, 200, "{m}");
    }
    assert_eq!(oncache_links(h), ["ocbr600", "ocvx600"]);
    assert_eq!(call(h, "NetworkDriver.DeleteNetwork", json!({"NetworkID": NET})).0, 200);
    assert!(oncache_links(h).is_empty());
    assert!(status(h)["networks"].as_array().unwrap().is_empty());
    lab.finish();
}

/// Every NetworkDriver call twice in a row answers the same and changes nothing the second
/// time; an ID that is a prefix of a live endpoint's never touches that endpoint's links.
#[test]
fn every_call_repeats_and_no_id_stands_for_another() {
    let mut lab = Lab::new(1);
    lab.start_oncaches(&[]);
    let h = lab.host(0);
    let twice = |method: &str, body: Value| {
        let first = call(h, method, body.clone());
        assert_eq!(first.0, 200, "{method}: {}", first.1);
        assert_eq!(call(h, method, body), first, "{method} repeated answers differently");
        first.1
    };
    twice("NetworkDriver.CreateNetwork", create_network(610, "10.230.0.0/24"));
    let ep = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.230.0.5/24", "AddressIPv6": "", "MacAddress": ""}});
    twice("NetworkDriver.CreateEndpoint", ep);
    let join = json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/0123", "Options": {}});
    let first = call(h, "NetworkDriver.Join", join.clone());
    assert_eq!(first.0, 200, "{}", first.1);
    // dockerd moves the container end away (and renames it) after Join; a repeated Join must
    // keep that interface, not make a new pair.
    h.sh("ip link set ocvpe1e1e1e1e1e name ctr0eth");
    let index = |l: &str| h.sh(&format!("ip -o link show dev {l} | cut -d: -f1")).trim().to_string();
    let (host_end, ctr_end) = (index("ocvee1e1e1e1e1e"), index("ctr0eth"));
    assert_eq!(call(h, "NetworkDriver.Join", join), first, "repeated Join answers differently");
    assert_eq!((index("ocvee1e1e1e1e1e"), index("ctr0eth")), (host_end, ctr_end), "repeated Join replaced the veth pair");
    assert_eq!(master_of(h, "ocvee1e1e1e1e1e").as_deref(), Some("ocbr610"));
    let info = twice("NetworkDriver.EndpointOperInfo", json!({"NetworkID": NET, "EndpointID": EP}));
    assert_eq!(info["Value"]["attached"], true, "{info}");
    let conn = json!({"NetworkID": NET, "EndpointID": EP, "Options": {}});
    twice("NetworkDriver.ProgramExternalConnectivity", conn.clone());
    twice("NetworkDriver.RevokeExternalConnectivity", conn);
    let node = json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.99.251.7", "BindAddress": "10.99.251.7", "Self": false}});
    twice("NetworkDriver.DiscoverNew", node.clone());
    assert_eq!(cli(h, &["peer", "list"]).unwrap().trim(), "10.99.251.7");
    twice("NetworkDriver.DiscoverDelete", node);
    assert_eq!(cli(h, &["peer", "list"]).unwrap().trim(), "");

    // Another endpoint's ID prefix: refused where it would share links, harmless elsewhere.
    let prefix = &EP[..11];
    let links = oncache_links(h);
    for m in ["NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"] {
        assert_eq!(call(h, m, json!({"NetworkID": NET, "EndpointID": prefix})).0, 200, "{m}");
        assert_eq!(oncache_links(h), links, "{m} of {prefix} touched endpoint {EP}'s links");
    }
    let twin = format!("{prefix}ff");
    let (code, v) = call(h, "NetworkDriver.CreateEndpoint", json!({"NetworkID": NET, "EndpointID": twin, "Interface": {"Address": "10.230.0.6/24"}}));
    assert_eq!(code, 500);
    assert!(err_of(&v).contains("shares its first characters"), "{v}");
    assert_eq!(status(h)["networks"][0]["endpoints"].as_array().unwrap().len(), 1);

    twice("NetworkDriver.Leave", json!({"NetworkID": NET, "EndpointID": EP}));
    assert_eq!(oncache_links(h), ["ocbr610", "ocvx610"], "Leave removes the pair wherever its ends are");
    twice("NetworkDriver.DeleteEndpoint", json!({"NetworkID": NET, "EndpointID": EP}));
    twice("NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    assert!(oncache_links(h).is_empty());
    lab.finish();
}

/// A peer the underlay cannot reach is refused and never stored; nothing else is disturbed.
#[test]
fn wrong_family_peer_is_refused_and_never_bricks() {
    let mut lab = Lab::new(1);
    lab.start_oncaches(&[]);
    let h = lab.host(0);
    let e = cli(h, &["peer", "add", "fd00::5"]).unwrap_err();
    assert!(e.contains("fd00::5 is IPv6, but the underlay ul0 is IPv4"), "{e}");
    assert_eq!(cli(h, &["peer", "list"]).unwrap().trim(), "");
    cli(h, &["peer", "add", "10.99.252.3"]).unwrap();
    let (code, v) = call(h, "NetworkDriver.CreateNetwork", create_network(620, "10.230.0.0/24"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(status(h)["peers"], json!(["10.99.252.3"]));
    lab.host_mut(0).restart_oncache();
    let h = lab.host(0);
    assert_eq!(oncache_links(h), ["ocbr620", "ocvx620"]);
    assert_eq!(call(h, "NetworkDriver.DeleteNetwork", json!({"NetworkID": NET})).0, 200);
    lab.finish();
}

/// A CreateNetwork that dockerd never followed up leaves a network only oncache has: `oncache
/// network ls` shows it as a ghost and `prune` removes it, VNI, subnet and links.
#[test]
fn ghost_networks_are_listed_and_pruned() {
    let mut lab = Lab::new(1);
    lab.start_dockerds();
    lab.start_oncaches(&[]);
    let h = lab.host(0);
    h.docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=630", "--subnet", "10.231.0.0/24", "real"]);
    let real = h.docker(&["network", "inspect", "-f", "{{.Id}}", "real"]).trim().to_string();
    assert_eq!(call(h, "NetworkDriver.CreateNetwork", create_network(631, "10.230.0.0/24")).0, 200);
    let docker_host = format!("DOCKER_HOST=unix://{}", h.docker_sock().display());
    let sock = h.oncache_socket().display().to_string();
    let oncache = |args: &str| h.try_sh(&format!("{docker_host} {BIN} network {args} --socket {sock}"));
    let ls: Value = serde_json::from_str(&oncache("ls --json").unwrap()).unwrap();
    let in_docker = |id: &str| ls.as_array().unwrap().iter().find(|n| n["id"] == id).map(|n| n["in_docker"].clone());
    assert_eq!(in_docker(&real), Some(json!(true)), "{ls}");
    assert_eq!(in_docker(NET), Some(json!(false)), "{ls}");
    assert!(oncache("ls").unwrap().contains("no (ghost)"));
    assert!(oncache("prune --dry-run").unwrap().contains(NET));
    assert_eq!(oncache_links(h), ["ocbr630", "ocbr631", "ocvx630", "ocvx631"]);
    assert!(oncache("prune").unwrap().contains(&format!("removed {NET}")));
    assert_eq!(oncache_links(h), ["ocbr630", "ocvx630"]);
    // Its VNI and subnet are free again.
    assert_eq!(call(h, "NetworkDriver.CreateNetwork", create_network(631, "10.230.0.0/24")).0, 200);
    assert!(oncache(&format!("rm {}", &NET[..6])).unwrap().contains("removed"));
    // A network with a running container is kept unless forced.
    h.run(&["--name", "c1", "--network", "real", lab::IMAGE, "sleep", "1d"]);
    let e = oncache(&format!("rm {}", &real[..12])).unwrap_err();
    assert!(e.contains("joined endpoint"), "{e}");
    assert!(oncache("prune").unwrap().is_empty());
    assert_eq!(oncache_links(h).iter().filter(|l| l.starts_with("ocbr")).count(), 1);
    h.docker(&["rm", "-f", "c1"]);
    h.docker(&["network", "rm", "real"]);
    lab.finish();
}

#[test]
fn cli_explains_itself() {
    let out = std::process::Command::new(BIN).args(["daemon", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--socket", "--state-dir", "--underlay", "--peer", "--bpf-dir", "/run/docker/plugins/oncache.sock"] {
        assert!(text.contains(flag), "daemon --help lacks {flag}:\n{text}");
    }
    let out = std::process::Command::new(BIN).args(["peer", "list", "--socket", "/nonexistent/oncache.sock"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is it running?"));
}
