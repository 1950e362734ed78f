//! Control-plane benchmark: what oncache adds to a container's start, and what each driver call
//! costs as endpoints accumulate. One host of the namespace lab (tests/lab) with its dockerd and
//! oncache daemon.
//!
//!     cargo bench -p oncache --bench control -- [--runs R] [--endpoints N] [--flows F] [--remotes R] [--short] [--out DIR]
//!
//! 1. `docker run --rm --network NET IMAGE true`, the networks interleaved run by run (R runs,
//!    default 20): `none`, a Docker bridge network, an oncache network with
//!    `oncache.fastpath=false`, an oncache network, an `--internal` oncache network. Medians and
//!    p90. An oncache container also gets an endpoint on `docker_gwbridge` (as with Docker's
//!    overlay) unless its network is internal: that part is (oncache - internal), and oncache's
//!    own cost (internal - bridge).
//! 2. Driver calls through the plugin socket, as dockerd makes them: N endpoints (default
//!    1000) created and joined on one network (each container end then moved into a namespace
//!    of its own, as dockerd does), then left and deleted. p50/p99 of each call, and
//!    Join's median per tenth of N: flat means no call does work in proportion to the endpoints
//!    there are. Then Join's steps per tenth as the daemon timed them (its log): creating the
//!    veth pair as a bridge port (the kernel's request), the fast path, the rest; and next to
//!    them the same kernel requests without oncache (`ip link add … master`, both ends up, as
//!    many times, in a namespace of the bench's own).
//! 3. Leave and DeleteEndpoint on a host with many admitted flows: F flows (default 100,000)
//!    of K endpoints (default 50) entered in ONC_FILTER as the ingress learner records them,
//!    then the endpoints left and deleted. p50/p99 of each call, and how many of the flows are
//!    left as the last call returns and once the daemon has removed those of the endpoints that
//!    went (it does so in the background; at most 5 s is waited): no call should cost in
//!    proportion to the host's flows, and none of the flows should stay.
//!
//! 4. Join on a host that programs the remote endpoints of a cluster: R of them (default
//!    10,000) on 10 other hosts, applied as a cluster view to the driver core in-process
//!    (`oncache::testbed`: the real kernel, in a namespace of the bench's own), then 200
//!    endpoints created and joined; the same with none. p50/p90 of Join: the same in both means
//!    no Join does work in proportion to the cluster's endpoints.
//!
//! Prints markdown and writes it to docker-compose-lab/results/control-latest.md. Asserts no
//! speed. `--short` (3 runs, 50 endpoints, 1,000 flows, 500 remote endpoints and 20 Joins,
//! nothing written) is what the test command runs.

#[path = "../../tests/lab/mod.rs"]
mod lab;

use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Opts {
    runs: usize,
    endpoints: usize,
    flows: usize,
    remotes: usize,
    remote_joins: usize,
    out: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo bench -p oncache --bench control -- [--runs R] [--endpoints N] [--flows F] [--remotes R] [--short] [--out DIR]";

/// Endpoints whose flows fill ONC_FILTER in part 3.
const FLOW_ENDPOINTS: usize = 50;

fn opts() -> Opts {
    let mut o = Opts { runs: 20, endpoints: 1000, flows: 100_000, remotes: 10_000, remote_joins: 200, out: Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose-lab/results"))) };
    let mut args = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> usize {
        v.and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or_else(|| panic!("{what} wants a positive number\n{USAGE}"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => o.runs = num(args.next(), "--runs"),
            "--endpoints" => o.endpoints = num(args.next(), "--endpoints"),
            "--flows" => o.flows = num(args.next(), "--flows"),
            "--remotes" => o.remotes = num(args.next(), "--remotes"),
            "--short" => {
                o.runs = 3;
                o.endpoints = 50;
                o.flows = 1000;
                o.remotes = 500;
                o.remote_joins = 20;
                o.out = None;
            }
            "--out" => o.out = Some(PathBuf::from(args.next().unwrap_or_else(|| panic!("--out wants a folder\n{USAGE}")))),
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    o
}

/// [links, fast path, rest] of each Join of the bench's endpoints (IDs ending in `zeros`),
/// from the daemon's "endpoint ID joined ... in T µs (links L µs, fast path F µs)".
fn join_steps(log: &str, zeros: &str) -> Vec<[Duration; 3]> {
    log.lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once("endpoint ")?.1.split_once(' ')?;
            if !id.ends_with(zeros) || !rest.starts_with("joined ") {
                return None;
            }
            let nums: Vec<u64> = rest.split(" in ").nth(1)?.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
            let [total, links, fast] = nums[..] else { return None };
            let us = Duration::from_micros;
            Some([us(links), us(fast), us(total.saturating_sub(links + fast))])
        })
        .collect()
}

/// The `q`-quantile of `v` (nearest rank), in ms.
fn quantile(v: &[Duration], q: f64) -> f64 {
    let mut s: Vec<Duration> = v.to_vec();
    s.sort();
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i].as_secs_f64() * 1000.0
}

/// Namespaces standing in for containers, removed on drop.
struct Sandboxes(Vec<String>);

impl Drop for Sandboxes {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = std::process::Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `ip ARGS`; panics unless it succeeds.
fn ip(args: &[&str]) {
    let ok = std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success());
    assert!(ok, "ip {}", args.join(" "));
}

/// What the kernel takes, without oncache, to add `n` veth pairs one after another as ports of a
/// bridge and bring both ends up, as oncache's Join does (bridge with forward delay 0, an
/// address of its own and no multicast snooping, ports without IPv6), in a namespace of the bench's own: the mean per pair
/// (ms) in each tenth, one `ip -batch` per tenth. What it leaves out: the container end keeps no
/// IPv6 either (oncache's has it until dockerd moves it), and stays where it is.
fn kernel_alone(suffix: &str, n: usize, tenth: usize) -> Vec<String> {
    let ns = format!("oc{suffix}kern");
    ip(&["netns", "add", &ns]);
    let _gone = Sandboxes(vec![ns.clone()]);
    // New devices of the namespace come without IPv6 (oncache disables it on each host end).
    ip(&["netns", "exec", &ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    ip(&["-n", &ns, "link", "add", "br0", "address", "02:42:0c:00:00:01", "type", "bridge", "forward_delay", "0", "mcast_snooping", "0"]);
    ip(&["-n", &ns, "link", "set", "br0", "up"]);
    (0..n)
        .collect::<Vec<_>>()
        .chunks(tenth)
        .map(|ks| {
            let batch: String = ks.iter().map(|k| format!("link add h{k} mtu 1450 master br0 type veth peer name p{k}\nlink set p{k} up\nlink set h{k} up\n")).collect();
            let file = std::env::temp_dir().join(format!("{ns}.batch"));
            std::fs::write(&file, batch).unwrap();
            let t = Instant::now();
            ip(&["-n", &ns, "-batch", file.to_str().unwrap()]);
            let mean = t.elapsed().as_secs_f64() * 1000.0 / ks.len() as f64;
            let _ = std::fs::remove_file(&file);
            format!("{mean:.2}")
        })
        .collect()
}

fn main() {
    let o = opts();
    let mut lab = lab::Lab::new(1);
    lab.start_dockerds();
    // Gossip on (no peers): each Join publishes, as on a cluster host.
    lab.host_mut(0).start_oncache(&[]);
    let h = lab.host(0);
    h.load_image();
    let mut md = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(md, "Control plane, one namespace-lab host; kernel {}; {cpus} CPUs\n", kernel.trim()).unwrap();

    // 1. Container starts.
    h.docker(&["network", "create", "-d", "bridge", "--subnet", "10.230.0.0/16", "cbr"]);
    h.docker(&["network", "create", "-d", "oncache", "--subnet", "10.231.0.0/16", "-o", "oncache.fastpath=false", "cslow"]);
    h.docker(&["network", "create", "-d", "oncache", "--subnet", "10.232.0.0/16", "cfast"]);
    // --internal: dockerd attaches no docker_gwbridge endpoint.
    h.docker(&["network", "create", "-d", "oncache", "--internal", "--subnet", "10.234.0.0/16", "cint"]);
    let nets = ["none", "cbr", "cslow", "cfast", "cint"];
    let mut took: Vec<Vec<Duration>> = vec![Vec::new(); nets.len()];
    // One unmeasured run each: docker_gwbridge is made by the first oncache container.
    for run in 0..=o.runs {
        for (i, n) in nets.iter().enumerate() {
            let t = Instant::now();
            h.docker(&["run", "--rm", "--pull=never", "--network", n, lab::IMAGE, "true"]);
            if run > 0 {
                took[i].push(t.elapsed());
            }
        }
    }
    let med: Vec<f64> = took.iter().map(|t| quantile(t, 0.5)).collect();
    writeln!(md, "`docker run --rm --network NET IMAGE true`, {} runs each, interleaved:\n", o.runs).unwrap();
    writeln!(md, "| network | median (ms) | p90 (ms) |\n|---|---|---|").unwrap();
    for (i, what) in ["none", "Docker bridge", "oncache, fastpath=false", "oncache", "oncache, --internal (no docker_gwbridge)"].iter().enumerate() {
        writeln!(md, "| {what} | {:.1} | {:.1} |", med[i], quantile(&took[i], 0.9)).unwrap();
    }
    let (none, bridge, slow, fast, internal) = (med[0], med[1], med[2], med[3], med[4]);
    writeln!(
        md,
        "\noncache over Docker's bridge: {:+.1} ms; of that, docker_gwbridge's endpoint (oncache - oncache --internal): {:+.1} ms; oncache's own (oncache --internal - bridge): {:+.1} ms; the fast path's part (oncache - fastpath=false): {:+.1} ms. A bridge endpoint over none: {:+.1} ms.\n",
        fast - bridge,
        fast - internal,
        internal - bridge,
        fast - slow,
        bridge - none
    )
    .unwrap();
    for n in ["cbr", "cslow", "cfast", "cint"] {
        h.docker(&["network", "rm", n]);
    }

    // 2. Driver calls as endpoints accumulate.
    let sock = h.oncache_socket();
    let call = |method: &str, body: serde_json::Value| -> (Duration, serde_json::Value) {
        let t = Instant::now();
        let (code, v) = lab::post_json(&sock, &format!("/NetworkDriver.{method}"), &body);
        let d = t.elapsed();
        assert_eq!(code, 200, "{method}: {v}");
        (d, v)
    };
    let create_network = |id: &str, pool: &str| -> String {
        let net = format!("{id:0>64}");
        call(
            "CreateNetwork",
            json!({"NetworkID": net, "Options": {"com.docker.network.generic": {}}, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool}]}),
        );
        net
    };
    // Creates and joins an endpoint, then moves its container end into a namespace of its own
    // (`sandbox`), as dockerd does (not timed). Returns how long CreateEndpoint and Join took.
    let attach = |net: &str, ep: &str, addr: &str, sandbox: String, sandboxes: &mut Sandboxes| -> (Duration, Duration) {
        let (created, _) = call("CreateEndpoint", json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": addr}}));
        let (joined, v) = call("Join", json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": format!("/run/netns/{sandbox}")}));
        let src = v["InterfaceName"]["SrcName"].as_str().expect("Join names the interface").to_string();
        ip(&["netns", "add", &sandbox]);
        h.sh(&format!("ip link set {src} netns {sandbox}"));
        sandboxes.0.push(sandbox);
        (created, joined)
    };
    // Leaves and deletes an endpoint; returns how long each call took.
    let detach = |net: &str, ep: &str| -> (Duration, Duration) {
        (call("Leave", json!({"NetworkID": net, "EndpointID": ep})).0, call("DeleteEndpoint", json!({"NetworkID": net, "EndpointID": ep})).0)
    };
    let net = create_network("c0", "10.233.0.0/16");
    // Distinct in their first 11 characters, which name the endpoint's links.
    let ep = |k: usize| format!("{k:0>11x}{:0>53}", 0);
    let mut lat: [Vec<Duration>; 4] = Default::default();
    let mut sandboxes = Sandboxes(Vec::new());
    for k in 0..o.endpoints {
        let addr = format!("10.233.{}.{}/16", (k + 2) / 256, (k + 2) % 256);
        let (created, joined) = attach(&net, &ep(k), &addr, format!("oc{}b{k}", lab.suffix()), &mut sandboxes);
        lat[0].push(created);
        lat[1].push(joined);
    }
    for k in 0..o.endpoints {
        let (left, deleted) = detach(&net, &ep(k));
        lat[2].push(left);
        lat[3].push(deleted);
    }
    drop(sandboxes);
    call("DeleteNetwork", json!({"NetworkID": net}));
    writeln!(md, "Driver calls through the plugin socket, {} endpoints joined one after another on one network, then left and deleted:\n", o.endpoints).unwrap();
    writeln!(md, "| call | p50 (ms) | p99 (ms) |\n|---|---|---|").unwrap();
    for (i, m) in ["CreateEndpoint", "Join", "Leave", "DeleteEndpoint"].iter().enumerate() {
        writeln!(md, "| {m} | {:.2} | {:.2} |", quantile(&lat[i], 0.5), quantile(&lat[i], 0.99)).unwrap();
    }
    let tenth = o.endpoints.div_ceil(10);
    let by_tenth: Vec<String> = lat[1].chunks(tenth).map(|c| format!("{:.2}", quantile(c, 0.5))).collect();
    writeln!(md, "\nJoin's median (ms) per tenth of the endpoints, in the order they joined: {}", by_tenth.join(", ")).unwrap();
    // The daemon's own account of each Join (its log): the kernel's request for the veth pair
    // as a bridge port apart from the rest, which is oncache's.
    let steps = join_steps(&std::fs::read_to_string(h.oncache_log_path()).unwrap_or_default(), &ep(0)[11..]);
    if steps.len() == o.endpoints {
        writeln!(md, "\nJoin's steps, median (ms) per tenth, as the daemon timed them:\n").unwrap();
        writeln!(md, "| step | {} |\n|---|{}", (1..=10).map(|i| i.to_string()).collect::<Vec<_>>().join(" | "), "---|".repeat(10)).unwrap();
        for (i, what) in ["the veth pair as a bridge port (links)", "the fast path", "the rest (store, gossip, lookups)"].iter().enumerate() {
            let v: Vec<Duration> = steps.iter().map(|s| s[i]).collect();
            let t: Vec<String> = v.chunks(tenth).map(|c| format!("{:.2}", quantile(c, 0.5))).collect();
            writeln!(md, "| {what} | {} |", t.join(" | ")).unwrap();
        }
        let alone = kernel_alone(lab.suffix(), o.endpoints, tenth);
        writeln!(md, "| the kernel alone: `ip link add … master BRIDGE type veth`, both ends up, mean per tenth | {} |", alone.join(" | ")).unwrap();
        writeln!(md, "\nThe last row is the same requests without oncache: as many veth pairs added one after another as ports of a bridge of their own, both ends then up, in a namespace of the bench's own (`ip -batch`, one batch per tenth; IPv6 off on both ends, the bridge with an address of its own and no multicast snooping, as oncache makes it).").unwrap();
    } else {
        writeln!(md, "\n(The daemon's log timed {} of the {} Joins: no step breakdown.)", steps.len(), o.endpoints).unwrap();
    }

    // 3. Leave and DeleteEndpoint with many admitted flows on the host.
    let net = create_network("c1", "10.235.0.0/16");
    let ep = |k: usize| format!("{k:0>11x}{:0>52}1", 0);
    let mut sandboxes = Sandboxes(Vec::new());
    for k in 0..FLOW_ENDPOINTS {
        attach(&net, &ep(k), &format!("10.235.0.{}/16", k + 2), format!("oc{}f{k}", lab.suffix()), &mut sandboxes);
    }
    let maps = h.bpf_dir.join(oncache::fastpath::MAPS_DIR);
    let filter_pin = maps.join(oncache_common::MAP_FILTER);
    let entered = flows::fill(&maps, "10.235.", o.flows);
    let mut lat: [Vec<Duration>; 2] = Default::default();
    for k in 0..FLOW_ENDPOINTS {
        let (left, deleted) = detach(&net, &ep(k));
        lat[0].push(left);
        lat[1].push(deleted);
    }
    // The daemon removes the flows of the endpoints that went in the background.
    let left_at = Instant::now();
    let left = flows::count(&filter_pin);
    let mut now = left;
    while now > 0 && left_at.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        now = flows::count(&filter_pin);
    }
    let gone_in = left_at.elapsed();
    drop(sandboxes);
    call("DeleteNetwork", json!({"NetworkID": net}));
    writeln!(
        md,
        "\n{entered} admitted flows of {FLOW_ENDPOINTS} endpoints in ONC_FILTER (as the ingress learner records them), then the endpoints left and deleted:\n"
    )
    .unwrap();
    writeln!(md, "| call | p50 (ms) | p99 (ms) |\n|---|---|---|").unwrap();
    for (i, m) in ["Leave", "DeleteEndpoint"].iter().enumerate() {
        writeln!(md, "| {m} | {:.2} | {:.2} |", quantile(&lat[i], 0.5), quantile(&lat[i], 0.99)).unwrap();
    }
    writeln!(md, "\nFlows in ONC_FILTER as the last DeleteEndpoint returned: {left}; {now} {:.0} ms later.", gone_in.as_secs_f64() * 1e3).unwrap();

    // 4. Join with the remote endpoints of a cluster programmed.
    let [none, many] = [0, o.remotes].map(|r| remotes::joins(r, o.remote_joins));
    writeln!(md, "\n{} endpoints joined on a host that programs the remote endpoints of {} other hosts (the driver core in-process, the remote endpoints applied as a cluster view):\n", o.remote_joins, remotes::HOSTS).unwrap();
    writeln!(md, "| remote endpoints | Join p50 (ms) | Join p90 (ms) |\n|---|---|---|").unwrap();
    for (r, t) in [(0, none), (o.remotes, many)] {
        writeln!(md, "| {r} | {:.2} | {:.2} |", quantile(&t, 0.5), quantile(&t, 0.9)).unwrap();
    }

    print!("{md}");
    lab.finish();
    if let Some(dir) = o.out {
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control-latest.md");
        std::fs::write(&path, &md).unwrap();
        println!("\nwritten to {}", path.display());
    }
}

/// ONC_FILTER as a host with many admitted flows has it, entered from outside the daemon.
mod flows {
    use aya::maps::{HashMap, Map, MapData};
    use oncache_common as c;
    use std::path::Path;

    fn open(path: &Path) -> Map {
        let data = MapData::from_pin(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        Map::from_map_data(data).expect("a pinned map")
    }

    /// Enters `n` flows, spread over the delivery entries whose address starts with `prefix`
    /// (local containers), each as the ingress learner records a flow delivered to its
    /// container under its current generation, in the current firewall epoch. Returns how many
    /// went in.
    pub fn fill(maps: &Path, prefix: &str, n: usize) -> usize {
        let mut ingress = open(&maps.join(c::MAP_INGRESS));
        let locals: Vec<(c::VniIp, u32)> = HashMap::<_, c::VniIp, c::IngressEntry>::try_from(&mut ingress)
            .expect("ONC_INGRESS")
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(k, _)| std::net::Ipv4Addr::from(k.ip).to_string().starts_with(prefix))
            .map(|(k, v)| (k, v.gen))
            .collect();
        assert!(!locals.is_empty(), "no delivery entries for {prefix}*");
        let mut config = open(&maps.join(c::MAP_CONFIG));
        let epoch = aya::maps::Array::<_, c::Config>::try_from(&mut config).expect("ONC_CONFIG").get(&0, 0).expect("the configuration").epoch;
        let mut filter = open(&maps.join(c::MAP_FILTER));
        let mut filter = HashMap::<_, c::FlowKey, c::FlowState>::try_from(&mut filter).expect("ONC_FILTER");
        let mut entered = 0;
        for i in 0..n {
            let (local, gen) = locals[i % locals.len()];
            let j = i / locals.len();
            let k = c::FlowKey {
                vni: local.vni,
                local_ip: local.ip,
                remote_ip: [10, 236, (j >> 8) as u8, j as u8],
                local_port: 5201,
                remote_port: 40000 + (j % 20000) as u16,
                proto: 6,
                _pad: [0; 3],
            };
            // SAFETY: plain integers and byte arrays; all zeroes is a valid value.
            let mut v: c::FlowState = unsafe { std::mem::zeroed() };
            v.bits = c::FLOW_INGRESS;
            v.ingress_gen = gen;
            v.epoch = epoch;
            entered += usize::from(filter.insert(k, v, 0).is_ok());
        }
        entered
    }

    pub fn count(filter: &Path) -> usize {
        let mut m = open(filter);
        HashMap::<_, c::FlowKey, c::FlowState>::try_from(&mut m).expect("ONC_FILTER").keys().filter_map(|k| k.ok()).count()
    }
}

/// Part 4: the driver core in-process with `remotes` remote endpoints programmed.
mod remotes {
    use oncache::cluster::{Published, View};
    use oncache::testbed::Testbed;
    use serde_json::json;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    const NET: &str = "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c";
    pub const HOSTS: usize = 10;

    /// Address `n` of 10.236.0.0/16: locals from 2, remotes from 1,000 up.
    fn addr(n: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 236, (n >> 8) as u8, n as u8)
    }

    /// Each Join's time, after `remotes` remote endpoints were programmed. On a thread of its
    /// own, which the testbed moves into a namespace of its own.
    pub fn joins(remotes: usize, joins: usize) -> Vec<Duration> {
        std::thread::spawn(move || {
            let tb = Testbed::new().expect("testbed");
            // The container ends stay in the testbed's namespace: without IPv6 there, as moved
            // into a container they would have none of the host's.
            std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1").expect("disabling IPv6 for new links");
            let call = |path: &str, body: serde_json::Value| {
                let (code, v) = tb.call(path, body.to_string().as_bytes());
                assert_eq!(code, 200, "{path}: {v}");
            };
            let options = json!({"com.docker.network.generic": {"oncache.vni": "736"}});
            let pool = json!([{"AddressSpace": "LocalDefault", "Gateway": "10.236.0.1/16", "Pool": "10.236.0.0/16"}]);
            call("NetworkDriver.CreateNetwork", json!({"NetworkID": NET, "Options": options, "IPv4Data": pool}));
            let hosts = (0..HOSTS)
                .map(|h| {
                    let eps = (0..remotes / HOSTS)
                        .map(|i| {
                            let n = 1000 + h * (remotes / HOSTS) + i;
                            Published { vni: 736, ip: IpAddr::V4(addr(n)), mac: [2, 0x42, 0x0c, h as u8, (n >> 8) as u8, n as u8], since: 1 }
                        })
                        .collect();
                    (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + h as u8)), eps)
                })
                .collect();
            let view = View { hosts, pending: Default::default(), resync_kernel: false };
            tb.rt.block_on(async { tb.plugin.driver.lock().await.apply_view(&view).await }).expect("applying the view");
            let took = (0..joins)
                .map(|k| {
                    let ep = json!({"NetworkID": NET, "EndpointID": format!("{k:0>11x}{:0>53}", 0)});
                    let mut create = ep.clone();
                    create["Interface"] = json!({"Address": format!("{}/16", addr(k + 2))});
                    call("NetworkDriver.CreateEndpoint", create);
                    let mut join = ep.clone();
                    join["SandboxKey"] = json!("/run/netns/oncache-bench");
                    let t = Instant::now();
                    call("NetworkDriver.Join", join);
                    t.elapsed()
                })
                .collect();
            tb.reset().expect("removing what the bench made");
            took
        })
        .join()
        .expect("part 4")
    }
}
