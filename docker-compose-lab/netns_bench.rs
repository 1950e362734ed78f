//! Namespace-lab benchmark: two hosts (network namespaces joined by a veth underlay, each with
//! its own dockerd and oncache daemon) measured in one run, configurations interleaved round by
//! round: bare host to host, oncache slow path (`-o oncache.fastpath=false`), oncache fast path.
//! Prints a markdown table of medians (min–max) and ratios to bare. It asserts nothing about
//! speed; it does check that the fast path was taken in the fast configuration and not in the
//! slow one, so the figures mean what they say.
//!
//!     cargo bench -p oncache --bench netns -- [--rounds N] [--seconds S]

#[path = "../tests/lab/mod.rs"]
#[allow(dead_code)]
mod lab;

use lab::{Host, Lab};
use serde_json::Value;
use std::time::Duration;

struct Opts {
    rounds: usize,
    seconds: u32,
}

fn opts() -> Opts {
    let mut o = Opts { rounds: 3, seconds: 5 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => o.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--seconds" => o.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S"),
            "--bench" => {}
            other => panic!("unknown argument {other}; use --rounds N --seconds S"),
        }
    }
    o
}

#[derive(Clone, Copy, PartialEq)]
enum Config {
    Bare,
    Slow,
    Fast,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare host",
            Config::Slow => "oncache slow path",
            Config::Fast => "oncache fast path",
        }
    }
}

/// Where a measurement runs: host namespaces, or containers (by name) on a network.
struct Ends {
    server: (usize, Option<&'static str>),
    client: (usize, Option<&'static str>),
    server_ip: String,
}

fn run_in(lab: &Lab, (host, container): (usize, Option<&str>), cmd: &[&str]) -> String {
    let h = lab.host(host);
    match container {
        Some(c) => h.docker_exec(c, cmd),
        None => {
            let out = h.exec_timeout(cmd, Duration::from_secs(120));
            assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }
}

fn iperf(lab: &Lab, e: &Ends, secs: u32, streams: u32) -> f64 {
    let out = run_in(lab, e.client, &["iperf3", "-c", &e.server_ip, "-t", &secs.to_string(), "-P", &streams.to_string(), "-J"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("iperf3: {out}"));
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("iperf3 result") / 1e9
}

/// sockperf ping-pong: (transactions per second, average half round trip in µs).
fn sockperf(lab: &Lab, e: &Ends, secs: u32, tcp: bool) -> (f64, f64) {
    let port = if tcp { "11112" } else { "11111" };
    let mut cmd = vec!["sockperf", "ping-pong", "-i", &e.server_ip, "-p", port, "-t"];
    let s = secs.to_string();
    cmd.push(&s);
    if tcp {
        cmd.push("--tcp");
    }
    let out = run_in(lab, e.client, &cmd);
    let field = |key: &str| -> f64 {
        let i = out.find(key).unwrap_or_else(|| panic!("sockperf output lacks {key}: {out}"));
        out[i + key.len()..].trim_start().split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
    };
    let runtime = field("RunTime=");
    let received = field("ReceivedMessages=");
    (received / runtime, field("avg-latency="))
}

fn start_servers(lab: &Lab, e: &Ends) {
    for cmd in [
        &["iperf3", "-s", "-D"][..],
        &["sockperf", "server", "-i", "0.0.0.0", "-p", "11111", "--daemonize"][..],
        &["sockperf", "server", "-i", "0.0.0.0", "-p", "11112", "--tcp", "--daemonize"][..],
    ] {
        run_in(lab, e.server, cmd);
    }
    std::thread::sleep(Duration::from_millis(500));
}

fn fast_hits(h: &Host) -> u64 {
    let (code, v) = lab::post_json(&h.oncache_socket(), "/Oncache.Stats", &serde_json::json!({}));
    assert_eq!(code, 200, "{v}");
    v["egress_fast"]["hits"].as_u64().unwrap() + v["ingress_fast"]["hits"].as_u64().unwrap()
}

const METRICS: [&str; 6] = [
    "TCP throughput 1 flow (Gbit/s)",
    "TCP throughput 4 flows (Gbit/s)",
    "TCP RR (trans/s)",
    "TCP half RTT (µs)",
    "UDP RR (trans/s)",
    "UDP half RTT (µs)",
];

fn main() {
    let o = opts();
    let mut lab = Lab::new(2);
    lab.start_dockerds();
    let (ip0, ip1) = (lab.host(0).underlay_ip.to_string(), lab.host(1).underlay_ip.to_string());
    lab.host_mut(0).start_oncache(&["--peer", &ip1]);
    lab.host_mut(1).start_oncache(&["--peer", &ip0]);
    for (i, h) in lab.hosts().iter().enumerate() {
        let range = |base: u32| format!("10.{base}.0.{}/25", i * 128);
        h.docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=10", "--subnet", "10.210.0.0/24", "--ip-range", &range(210), "fast"]);
        h.docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=11", "-o", "oncache.fastpath=false", "--subnet", "10.211.0.0/24", "--ip-range", &range(211), "slow"]);
    }
    for (host, name, net) in [(0, "fs", "fast"), (1, "fc", "fast"), (0, "ss", "slow"), (1, "sc", "slow")] {
        lab.host(host).run(&["--name", name, "--network", net, lab::IMAGE, "sleep", "1d"]);
    }
    let ends = |c: Config| match c {
        Config::Bare => Ends { server: (0, None), client: (1, None), server_ip: ip0.clone() },
        Config::Slow => Ends { server: (0, Some("ss")), client: (1, Some("sc")), server_ip: lab.host(0).container_ip("ss", "slow").to_string() },
        Config::Fast => Ends { server: (0, Some("fs")), client: (1, Some("fc")), server_ip: lab.host(0).container_ip("fs", "fast").to_string() },
    };
    let configs = [Config::Bare, Config::Slow, Config::Fast];
    let bare_servers = lab.host(0).spawn(&["iperf3", "-s"]);
    let bare_udp = lab.host(0).spawn(&["sockperf", "server", "-i", "0.0.0.0", "-p", "11111"]);
    let bare_tcp = lab.host(0).spawn(&["sockperf", "server", "-i", "0.0.0.0", "-p", "11112", "--tcp"]);
    for c in [Config::Slow, Config::Fast] {
        start_servers(&lab, &ends(c));
    }
    std::thread::sleep(Duration::from_millis(500));

    // results[config][metric] = one value per round
    let mut results = vec![vec![Vec::new(); METRICS.len()]; configs.len()];
    let mut hits = [0u64; 3];
    for round in 0..o.rounds {
        for (ci, c) in configs.iter().enumerate() {
            let e = ends(*c);
            let before = fast_hits(lab.host(0)) + fast_hits(lab.host(1));
            let r = &mut results[ci];
            r[0].push(iperf(&lab, &e, o.seconds, 1));
            r[1].push(iperf(&lab, &e, o.seconds, 4));
            let (tps, lat) = sockperf(&lab, &e, o.seconds, true);
            r[2].push(tps);
            r[3].push(lat);
            let (tps, lat) = sockperf(&lab, &e, o.seconds, false);
            r[4].push(tps);
            r[5].push(lat);
            hits[ci] += fast_hits(lab.host(0)) + fast_hits(lab.host(1)) - before;
            eprintln!("round {} {}: done", round + 1, c.name());
        }
    }
    drop((bare_servers, bare_udp, bare_tcp));

    let med = |v: &Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (s[s.len() / 2], s[0], s[s.len() - 1])
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("\nNamespace lab, 2 hosts, {} rounds x {} s, kernel {}, {} CPUs\n", o.rounds, o.seconds, kernel.trim(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("| metric | {} | {} | {} | fast/bare | fast/slow |", configs[0].name(), configs[1].name(), configs[2].name());
    println!("|---|---|---|---|---|---|");
    for (mi, m) in METRICS.iter().enumerate() {
        let cells: Vec<(f64, f64, f64)> = (0..configs.len()).map(|ci| med(&results[ci][mi])).collect();
        let fmt = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2} ({lo:.2}–{hi:.2})");
        println!(
            "| {m} | {} | {} | {} | {:.2} | {:.2} |",
            fmt(cells[0]),
            fmt(cells[1]),
            fmt(cells[2]),
            cells[2].0 / cells[0].0,
            cells[2].0 / cells[1].0
        );
    }
    println!("\nfast-path hits during each configuration: bare {}, slow {}, fast {}", hits[0], hits[1], hits[2]);
    assert!(hits[1] == 0 && hits[0] == 0, "the fast path was used outside the fast configuration");
    assert!(hits[2] > 0, "the fast configuration never took the fast path");
    lab.finish();
}
