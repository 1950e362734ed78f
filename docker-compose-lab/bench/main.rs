//! Multi-host benchmark: two Docker hosts, each with its own dockerd and oncache daemon, in one
//! Swarm, measured in one run with the configurations interleaved round by round: bare host to
//! host, bare host to host at the overlay's MTU (a route MTU: what the overlay's 50 bytes cost
//! TCP by themselves), bare host to host from containers on the host network (what running in a
//! container costs by itself: Docker's seccomp filter on every system call, the cgroups),
//! Docker's overlay (attachable swarm overlay), oncache slow path (`-o oncache.fastpath=false`),
//! oncache fast path.
//!
//!     cargo bench -p oncache --bench lab -- [--lab compose|netns] [--rounds N] [--seconds S]
//!                                           [--short] [--out DIR] [--only CONFIG] [--targets] [--poll-idle] [--pin]
//!
//! `--lab compose` (the default) runs between node1 and node2 of the docker-compose lab (node
//! containers on the machine's dockerd, see docker-compose-lab/README.md); `--lab netns` between
//! two hosts of the namespace lab of tests/lab (network namespaces joined by a veth switch).
//!
//! Prints a markdown table of medians (min–max) with ratios, and writes it with an SVG/PNG chart
//! to docker-compose-lab/results/<lab>-latest.*. It asserts nothing about speed; it does check
//! that the fast path was taken in the fast configuration and nowhere else, so the figures mean
//! what they say. `--short` (1 round of 1 s, no files unless --out is given) is what CI runs so
//! this cannot rot.
//!
//! `--targets` measures only the configurations the targets are judged against (bare host, bare
//! host in containers, fast path), in half the time a round of all six takes: what decides a 3 %
//! target is the number of rounds. It writes `<lab>[-poll|-pin]-targets-latest.*`.
//!
//! `--pin` runs the ends pinned, the server node's on CPU 0 and the client node's on CPU 1
//! (taskset for processes on a host, `--cpuset-cpus` for containers), as if each host had a CPU
//! of its own, and writes `<lab>-pin-latest.*`. It did not make runs steadier on this 2-CPU VM
//! (a pinned end cannot move off a CPU that the daemons are using); it shows which CPU a
//! configuration saturates (perf per CPU).
//!
//! `--poll-idle` keeps the CPUs from sleeping while measuring (PM QoS: /dev/cpu_dma_latency
//! held at 0, as tuned's latency profiles do) and writes `<lab>-poll-latest.*`. On a VM most
//! of a ping-pong transaction is the idle vCPU's wake-up; without it, what is left is each
//! configuration's own per-packet work, the overlay's included.

#[path = "../../tests/lab/mod.rs"]
mod lab;

mod compose;
mod netns;
mod programs;
mod report;

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Two Docker hosts with oncache and a Swarm between them. Node 0 serves, node 1 is the client.
pub trait Testbed {
    /// One line for the report heading: what the hosts are.
    fn title(&self) -> String;
    fn underlay_ip(&self, node: usize) -> String;
    /// `docker ARGS` against the node's dockerd; stdout; panics on failure.
    fn docker(&self, node: usize, args: &[&str]) -> String;
    /// Runs CMD on the node itself (its network namespace); stdout; panics on failure.
    fn host_exec(&self, node: usize, cmd: &[&str]) -> String;
    /// Starts CMD in the background on the node itself, until the testbed is finished.
    fn host_serve(&mut self, node: usize, cmd: &[&str]);
    /// Makes an oncache network that both nodes can use: VNI, subnet, extra `-o` options.
    fn oncache_network(&self, name: &str, vni: u32, subnet: &str, opts: &[&str]);
    /// The node's oncache statistics (`oncache stats --json`).
    fn oncache_stats(&self, node: usize) -> Value;
    /// CPU time used so far by everything the node runs, in µs, where the node is a cgroup.
    fn node_cpu_us(&self, node: usize) -> Option<f64>;
    /// Removes everything the testbed created.
    fn finish(self: Box<Self>);
}

#[derive(Clone, Copy, PartialEq)]
pub enum LabKind {
    Compose,
    Netns,
}

impl LabKind {
    fn stem(self) -> &'static str {
        match self {
            LabKind::Compose => "compose",
            LabKind::Netns => "netns",
        }
    }
}

pub struct Opts {
    pub lab: LabKind,
    pub rounds: usize,
    pub seconds: u32,
    out: Option<PathBuf>,
    /// Measure one configuration only (for profiling it); prints its figures, writes nothing.
    only: Option<String>,
    /// Keep the CPUs out of idle sleep while measuring.
    poll_idle: bool,
    /// Each node's measured processes on a CPU of their own (NODE_CPUS).
    pin: bool,
    /// Only the configurations in TARGET_CONFIGS.
    targets: bool,
}

/// What the data-plane targets compare: the fast path over the bare host and over the bare host
/// in containers.
const TARGET_CONFIGS: [Config; 3] = [Config::Bare, Config::BareCtr, Config::Fast];

impl Opts {
    /// Whether this run measures configuration C.
    pub fn measures(&self, c: Config) -> bool {
        match &self.only {
            Some(only) => only == c.short(),
            None => !self.targets || TARGET_CONFIGS.contains(&c),
        }
    }
}

const USAGE: &str = "usage: cargo bench -p oncache --bench lab -- [--lab compose|netns] [--rounds N] [--seconds S] [--short] [--out DIR] [--only bare|bare-mtu|bare-ctr|overlay|slow|fast] [--targets] [--poll-idle] [--pin]";

fn opts() -> Opts {
    let default_out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose-lab/results"));
    let mut o = Opts { lab: LabKind::Compose, rounds: 3, seconds: 5, out: Some(default_out), only: None, poll_idle: false, pin: false, targets: false };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let bad = |what: &str| -> ! {
        eprintln!("{what}\n{USAGE}");
        std::process::exit(2)
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--lab" => {
                o.lab = match it.next().map(String::as_str) {
                    Some("compose") => LabKind::Compose,
                    Some("netns") => LabKind::Netns,
                    _ => bad("--lab takes compose or netns"),
                }
            }
            "--rounds" => o.rounds = it.next().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or_else(|| bad("--rounds takes a count above 0")),
            "--seconds" => o.seconds = it.next().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or_else(|| bad("--seconds takes a count above 0")),
            "--out" => o.out = Some(PathBuf::from(it.next().unwrap_or_else(|| bad("--out takes a folder")))),
            "--only" => {
                let c = it.next().unwrap_or_else(|| bad("--only takes a configuration"));
                if !CONFIGS.iter().any(|k| k.short() == c) {
                    bad(&format!("--only {c}: no such configuration"));
                }
                o.only = Some(c.clone());
                o.out = None;
            }
            "--short" => {
                o.rounds = 1;
                o.seconds = 1;
                o.out = None;
            }
            "--targets" => o.targets = true,
            "--poll-idle" => o.poll_idle = true,
            "--pin" => o.pin = true,
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}\n\nMeasures bare host (also at the overlay's MTU, and from containers on the host network), Docker overlay, oncache slow path and oncache fast path between two hosts,\ninterleaved round by round; prints a markdown table and writes it with a chart to --out\n(default docker-compose-lab/results). --short: 1 round of 1 s, nothing written (CI).\n--poll-idle: the CPUs kept out of idle sleep while measuring (/dev/cpu_dma_latency held at 0),\nso that a transaction's time is the configurations' own work and not a vCPU's wake-up; writes <lab>-poll-latest.*\n--pin: the server node's ends on CPU 0 and the client node's on CPU 1, as if each host had a CPU of\nits own (taskset, --cpuset-cpus); writes <lab>-pin-latest.*\n--targets: only bare host, bare host in containers and fast path, the configurations the targets compare,\nso that a run of many rounds (what decides a 3 % target on a noisy machine) takes half the time; writes <lab>-targets-latest.*");
                std::process::exit(0)
            }
            other => bad(&format!("unknown argument {other}")),
        }
    }
    if o.targets && o.only.is_some() {
        bad("--targets and --only each choose the configurations: give one of them");
    }
    o
}

#[derive(Clone, Copy, PartialEq)]
pub enum Config {
    Bare,
    /// Bare host to host, the client's route to the server limited to the containers' MTU.
    BareMtu,
    /// Bare host to host, both ends in containers on the host network (`--network host`): the
    /// same container runtime as the overlays' ends, so that their ratio to it is the network's
    /// alone.
    BareCtr,
    Overlay,
    Slow,
    Fast,
}

pub const CONFIGS: [Config; 6] = [Config::Bare, Config::BareMtu, Config::BareCtr, Config::Overlay, Config::Slow, Config::Fast];

/// Where C's results are (its place in CONFIGS).
pub fn at(c: Config) -> usize {
    CONFIGS.iter().position(|k| *k == c).expect("every configuration is in CONFIGS")
}

impl Config {
    pub fn short(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::BareMtu => "bare-mtu",
            Config::BareCtr => "bare-ctr",
            Config::Overlay => "overlay",
            Config::Slow => "slow",
            Config::Fast => "fast",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare host",
            Config::BareMtu => "bare host, overlay MTU",
            Config::BareCtr => "bare host, in containers",
            Config::Overlay => "Docker overlay",
            Config::Slow => "oncache slow path",
            Config::Fast => "oncache fast path",
        }
    }
    /// What is added to the servers' ports: containers on the host network share the host's
    /// ports with the bare host's own servers.
    fn port_offset(self) -> u16 {
        if self == Config::BareCtr {
            10
        } else {
            0
        }
    }
    /// Server and client containers (None: the hosts themselves), and their network.
    fn containers(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Config::Bare | Config::BareMtu => None,
            Config::BareCtr => Some(("bench-hs", "bench-hc", "host")),
            Config::Overlay => Some(("bench-os", "bench-oc", "bench-ov")),
            Config::Slow => Some(("bench-ss", "bench-sc", "bench-slow")),
            Config::Fast => Some(("bench-fs", "bench-fc", "bench-fast")),
        }
    }
}

/// The workload image both labs import: busybox, iperf3, sockperf.
const IMAGE: &str = "oncache-test:latest";

/// (name, unit)
pub const METRICS: [(&str, &str); 15] = [
    ("TCP throughput, 1 flow", "Gbit/s"),
    // Received by the server's underlay: whether GSO packets cross whole (tens of KB) or cut to the MTU.
    ("TCP 1 flow, bytes per underlay packet", "B"),
    ("TCP throughput, 4 flows", "Gbit/s"),
    ("TCP RR rate", "trans/s"),
    ("TCP RR latency p50", "µs"),
    ("TCP RR latency p99", "µs"),
    ("TCP RR CPU per transaction, machine", "µs"),
    ("TCP RR CPU per transaction, server node", "µs"),
    ("TCP RR CPU per transaction, client node", "µs"),
    ("UDP RR rate", "trans/s"),
    ("UDP RR latency p50", "µs"),
    ("UDP RR latency p99", "µs"),
    ("UDP RR CPU per transaction, machine", "µs"),
    ("UDP RR CPU per transaction, server node", "µs"),
    ("UDP RR CPU per transaction, client node", "µs"),
];

/// With `--pin`, the CPU each node's measured processes run on: server node 0 on CPU 0, client
/// node 1 on CPU 1, as if each host had a CPU of its own (the kernel's receive work still runs
/// on the sender's CPU: a veth hands its packets to the local CPU's backlog).
const NODE_CPUS: [&str; 2] = ["0", "1"];

/// `cmd` run on `cpu` (taskset), or as it is.
fn on_cpu<'a>(cpu: Option<&'a str>, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut v = match cpu {
        Some(c) => vec!["taskset", "-c", c],
        None => Vec::new(),
    };
    v.extend_from_slice(cmd);
    v
}

/// Where a measurement's client runs and what it talks to.
struct Ends {
    client: Option<&'static str>,
    /// The CPU the client is pinned to when it runs on the host itself (containers are pinned
    /// whole, by their cpuset).
    client_cpu: Option<&'static str>,
    server_ip: String,
    /// Added to the servers' ports ([`PORTS`]).
    port_offset: u16,
}

/// Runs CMD on the client node, in the client container if there is one.
fn client_exec(tb: &dyn Testbed, e: &Ends, cmd: &[&str]) -> String {
    match e.client {
        Some(c) => {
            let mut a = vec!["exec", c];
            a.extend_from_slice(cmd);
            tb.docker(1, &a)
        }
        None => tb.host_exec(1, &on_cpu(e.client_cpu, cmd)),
    }
}

/// Busy CPU time of the whole machine so far, in µs, from a fixed origin: online CPUs times
/// monotonic time minus idle and iowait time (/proc/stat, USER_HZ = 100). The kernel measures
/// idle time exactly; its user/system figures are tick samples that miss most of the short bursts
/// of a request/response load (half the busy time on this machine), so they are not used.
fn machine_busy_us() -> f64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e6;
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpus = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count() as f64;
    let f: Vec<f64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    cpus * now - (f[3] + f[4]) * 10_000.0
}

/// CPU counters at one instant: the machine's, then the server and client nodes' (NaN if the
/// testbed cannot tell a node's CPU apart).
fn cpu_now(tb: &dyn Testbed) -> [f64; 3] {
    [machine_busy_us(), tb.node_cpu_us(0).unwrap_or(f64::NAN), tb.node_cpu_us(1).unwrap_or(f64::NAN)]
}

fn iperf(tb: &dyn Testbed, e: &Ends, secs: u32, streams: u32) -> f64 {
    let port = (PORTS[0] + e.port_offset).to_string();
    let out = client_exec(tb, e, &["iperf3", "-c", &e.server_ip, "-p", &port, "-t", &secs.to_string(), "-P", &streams.to_string(), "-J"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("iperf3: {out}"));
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("iperf3 result") / 1e9
}

/// What one sockperf ping-pong measured.
struct PingPong {
    /// Transactions/s, p50 µs, p99 µs, then CPU µs per transaction of the machine, the server
    /// node and the client node: the ping-pong rows of [`METRICS`], in order.
    figures: [f64; 6],
    /// Transactions of the whole run, warm-up included.
    transactions: f64,
}

fn sockperf(tb: &dyn Testbed, e: &Ends, secs: u32, tcp: bool) -> PingPong {
    let port = (PORTS[if tcp { 2 } else { 1 }] + e.port_offset).to_string();
    let s = secs.to_string();
    let mut cmd = vec!["sockperf", "ping-pong", "-i", &e.server_ip, "-p", &port, "-t", &s];
    if tcp {
        cmd.push("--tcp");
    }
    let cpu0 = cpu_now(tb);
    let out = client_exec(tb, e, &cmd);
    let cpu1 = cpu_now(tb);
    let field = |key: &str| -> f64 {
        let i = out.find(key).unwrap_or_else(|| panic!("sockperf output lacks {key}: {out}"));
        out[i + key.len()..].trim_start().split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
    };
    let runtime = field("RunTime=");
    let received = field("ReceivedMessages=");
    // CPU over the whole run (warm-up included) per transaction of the whole run.
    let sent = field("SentMessages=").max(1.0);
    let per = |k: usize| (cpu1[k] - cpu0[k]) / sent;
    PingPong { figures: [received / runtime, field("percentile 50.000 ="), field("percentile 99.000 ="), per(0), per(1), per(2)], transactions: sent }
}

fn fast_hits(tb: &dyn Testbed, node: usize) -> u64 {
    let v = tb.oncache_stats(node);
    let hits = |k: &str| v[k]["hits"].as_u64().unwrap_or_else(|| panic!("oncache stats lacks {k}.hits: {v}"));
    hits("egress_fast") + hits("ingress_fast")
}

/// Networks and containers of every configuration, and the servers in them.
fn prepare(tb: &mut dyn Testbed, pin: bool) {
    let cpu = |node: usize| pin.then_some(NODE_CPUS[node]);
    tb.docker(0, &["network", "create", "-d", "overlay", "--attachable", "--subnet", "10.212.0.0/24", "bench-ov"]);
    tb.oncache_network("bench-fast", 10, "10.210.0.0/24", &[]);
    tb.oncache_network("bench-slow", 11, "10.211.0.0/24", &["oncache.fastpath=false"]);
    for c in CONFIGS {
        if let Some((server, client, net)) = c.containers() {
            for (node, name) in [(0, server), (1, client)] {
                let mut a = vec!["run", "-d", "--pull=never", "--name", name, "--network", net];
                if let Some(c) = cpu(node) {
                    a.extend(["--cpuset-cpus", c]);
                }
                a.extend([IMAGE, "sleep", "1d"]);
                tb.docker(node, &a);
            }
        }
    }
    for s in servers(0) {
        tb.host_serve(0, &on_cpu(cpu(0), &s.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    for c in CONFIGS {
        let Some((server, _, _)) = c.containers() else { continue };
        for s in servers(c.port_offset()) {
            let mut cmd = vec!["exec", "-d", server];
            cmd.extend(s.iter().map(String::as_str));
            tb.docker(0, &cmd);
        }
    }
    std::thread::sleep(Duration::from_millis(800));
}

/// The server host's second address, for the bare host at the overlay's MTU (inside the lab's
/// own namespaces, beside the benchmark's container subnets 10.210-212.0.0/24).
const BARE_MTU_IP: &str = "10.213.0.1";

/// The name of the node's interface that holds its underlay address.
fn underlay_dev(tb: &dyn Testbed, node: usize) -> String {
    let ip = tb.underlay_ip(node);
    let addrs = tb.host_exec(node, &["ip", "-o", "-4", "addr", "show"]);
    let line = addrs.lines().find(|l| l.contains(&format!(" inet {ip}/"))).unwrap_or_else(|| panic!("no interface of node {node} has {ip}: {addrs}"));
    let name = line.split_whitespace().nth(1).expect("ip -o addr: interface name");
    name.split('@').next().unwrap().to_string()
}

/// Packets and bytes the server node's underlay interface has received so far (from netlink:
/// the namespace lab's hosts see the machine's /sys).
fn underlay_rx(tb: &dyn Testbed, dev: &str) -> (u64, u64) {
    let out = tb.host_exec(0, &["ip", "-j", "-s", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j -s link: {e}: {out}"));
    let rx = &v[0]["stats64"]["rx"];
    let n = |k: &str| rx[k].as_u64().unwrap_or_else(|| panic!("ip -j -s link lacks rx {k}: {out}"));
    (n("packets"), n("bytes"))
}

/// Gives the server host (its underlay is `server_dev`) BARE_MTU_IP and the client host a route
/// to it with the containers' MTU, so that TCP between the hosts uses the overlay's segment
/// size and nothing else of it.
fn limit_route_mtu(tb: &dyn Testbed, server_dev: &str) {
    let (_, client, _) = Config::Fast.containers().unwrap();
    let mtu = tb.docker(1, &["exec", client, "cat", "/sys/class/net/eth0/mtu"]).trim().to_string();
    let addr = format!("{BARE_MTU_IP}/32");
    tb.host_exec(0, &["ip", "addr", "add", &addr, "dev", server_dev]);
    tb.host_exec(1, &["ip", "route", "add", &addr, "dev", &underlay_dev(tb, 1), "mtu", &mtu]);
    eprintln!("bare host, overlay MTU: node 1 reaches {BARE_MTU_IP} on node 0 with MTU {mtu}");
}

fn ends(tb: &dyn Testbed, c: Config, pin: bool) -> Ends {
    let (client, server_ip) = match (c, c.containers()) {
        (Config::BareMtu, _) => (None, BARE_MTU_IP.to_string()),
        (_, None) => (None, tb.underlay_ip(0)),
        (Config::BareCtr, Some((_, client, _))) => (Some(client), tb.underlay_ip(0)),
        (_, Some((server, client, net))) => {
            let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
            let ip = tb.docker(0, &["inspect", "-f", &f, server]).trim().to_string();
            assert!(!ip.is_empty(), "{server} has no address on {net}");
            (Some(client), ip)
        }
    };
    let client_cpu = (pin && client.is_none()).then_some(NODE_CPUS[1]);
    Ends { client, client_cpu, server_ip, port_offset: c.port_offset() }
}

/// The servers' ports: iperf3, sockperf over UDP, sockperf over TCP.
const PORTS: [u16; 3] = [5201, 11111, 11112];

/// The servers, on [`PORTS`] plus `offset`.
fn servers(offset: u16) -> [Vec<String>; 3] {
    let [iperf, udp, tcp] = PORTS.map(|p| (p + offset).to_string());
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        v(&["iperf3", "-s", "-p", &iperf]),
        v(&["sockperf", "server", "-i", "0.0.0.0", "-p", &udp]),
        v(&["sockperf", "server", "-i", "0.0.0.0", "-p", &tcp, "--tcp"]),
    ]
}

/// Holds `kernel.bpf_stats_enabled` at a value for its lifetime, then puts back what was there
/// (guards nest: the programs' pass turns it on inside the rounds' "off").
struct BpfStats {
    before: bool,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn set(on: bool) -> BpfStats {
        let before = std::fs::read_to_string(BPF_STATS).is_ok_and(|v| v.trim() == "1");
        if before != on {
            std::fs::write(BPF_STATS, if on { "1" } else { "0" }).expect("setting kernel.bpf_stats_enabled");
        }
        BpfStats { before }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, if self.before { "1" } else { "0" });
    }
}

/// Holds /dev/cpu_dma_latency at 0 for its lifetime: the kernel keeps every CPU out of idle
/// states with an exit latency (it polls instead), until the file is closed.
struct IdlePolling(#[allow(dead_code)] std::fs::File);

impl IdlePolling {
    fn new() -> IdlePolling {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open("/dev/cpu_dma_latency").expect("opening /dev/cpu_dma_latency (--poll-idle)");
        f.write_all(&0i32.to_ne_bytes()).expect("setting cpu_dma_latency to 0");
        IdlePolling(f)
    }
}

fn main() {
    let o = opts();
    if o.pin {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < NODE_CPUS.len() {
            eprintln!("--pin needs {} CPUs, this machine has {cpus}", NODE_CPUS.len());
            std::process::exit(2)
        }
    }
    let mut tb: Box<dyn Testbed> = match o.lab {
        LabKind::Compose => Box::new(compose::Compose::start()),
        LabKind::Netns => Box::new(netns::Netns::start()),
    };
    prepare(tb.as_mut(), o.pin);
    let tb_ref: &dyn Testbed = tb.as_ref();
    let server_dev = underlay_dev(tb_ref, 0);
    limit_route_mtu(tb_ref, &server_dev);

    // results[config][metric]: one value per round
    let mut results = vec![vec![Vec::new(); METRICS.len()]; CONFIGS.len()];
    let mut hits = [0u64; CONFIGS.len()];
    // Addresses do not change between rounds: look them up once.
    let all_ends: Vec<Ends> = CONFIGS.iter().map(|c| ends(tb_ref, *c, o.pin)).collect();
    // Every program run is timed while bpf_stats is on (two clock reads each): off while measuring.
    let stats_off = BpfStats::set(false);
    if stats_off.before {
        eprintln!("kernel.bpf_stats_enabled is on: off while measuring (it times every program run)");
    }
    let _polling = o.poll_idle.then(IdlePolling::new);
    for round in 0..o.rounds {
        // Forward, then backward: a machine drifting through a round weighs on no configuration
        // more than on another.
        let order: Vec<usize> = if round % 2 == 0 { (0..CONFIGS.len()).collect() } else { (0..CONFIGS.len()).rev().collect() };
        for ci in order {
            let c = &CONFIGS[ci];
            if !o.measures(*c) {
                continue;
            }
            let e = &all_ends[ci];
            let before = fast_hits(tb_ref, 0) + fast_hits(tb_ref, 1);
            let r = &mut results[ci];
            let rx = underlay_rx(tb_ref, &server_dev);
            r[0].push(iperf(tb_ref, e, o.seconds, 1));
            let (packets, bytes) = underlay_rx(tb_ref, &server_dev);
            r[1].push((bytes - rx.1) as f64 / (packets - rx.0).max(1) as f64);
            r[2].push(iperf(tb_ref, e, o.seconds, 4));
            for (base, tcp) in [(3, true), (9, false)] {
                for (k, v) in sockperf(tb_ref, e, o.seconds, tcp).figures.into_iter().enumerate() {
                    r[base + k].push(v);
                }
            }
            hits[ci] += fast_hits(tb_ref, 0) + fast_hits(tb_ref, 1) - before;
            eprintln!("round {} of {}: {} done", round + 1, o.rounds, c.name());
        }
    }

    // What the programs cost by themselves: timed by the kernel in a pass of its own.
    let fast = at(Config::Fast);
    let program_cost = if o.measures(Config::Fast) { programs::section(tb_ref, &all_ends[fast], o.seconds) } else { String::new() };

    if let Some(only) = &o.only {
        let ci = CONFIGS.iter().position(|c| c.short() == only).unwrap();
        for (mi, (name, unit)) in METRICS.iter().enumerate() {
            println!("{name} ({unit}): {:.2}", report::median(&results[ci][mi]).0);
        }
        println!("{program_cost}");
        tb.finish();
        return;
    }
    let (mut title, mut stem) = (tb.title(), o.lab.stem().to_string());
    if o.pin {
        title += ", each node's ends on a CPU of its own (--pin: server CPU 0, client CPU 1)";
        stem += "-pin";
    }
    if o.poll_idle {
        title += ", CPUs kept out of idle sleep (--poll-idle: cpu_dma_latency 0)";
        stem += "-poll";
    }
    if o.targets {
        title += ", only the configurations the targets compare (--targets)";
        stem += "-targets";
    }
    let table = report::table(&o, &title, &results, &hits) + &program_cost;
    println!("\n{table}");
    if let Some(dir) = &o.out {
        report::write(dir, &stem, &table, &results);
    }
    tb.finish();
    assert!(hits.iter().enumerate().all(|(ci, h)| ci == fast || *h == 0), "the fast path was used outside the fast configuration: {hits:?}");
    assert!(hits[fast] > 0, "the fast configuration never took the fast path");
    println!("fast path checked: {} hits in the fast configuration, none in the others", hits[fast]);
}
