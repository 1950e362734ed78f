//! Namespace-lab benchmark: two hosts (network namespaces joined by a veth underlay, each with
//! its own dockerd and oncache daemon, in one Swarm) measured in one run, configurations
//! interleaved round by round: bare host to host, Docker's overlay (attachable swarm overlay),
//! oncache slow path (`-o oncache.fastpath=false`), oncache fast path.
//!
//! Prints a markdown table of medians (min–max) with ratios, and writes it with an SVG/PNG chart
//! to docker-compose-lab/results/. It asserts nothing about speed; it does check that the fast
//! path was taken in the fast configuration and nowhere else, so the figures mean what they say.
//!
//!     cargo bench -p oncache --bench netns -- [--rounds N] [--seconds S] [--short] [--out DIR]
//!
//! `--short` (1 round of 1 s, no files unless --out is given) is what CI runs so this cannot rot.
//! On the namespace lab both "hosts" share the machine's CPUs: CPU time per transaction is the
//! whole machine's busy time divided by the transactions.

#[path = "../tests/lab/mod.rs"]
#[allow(dead_code)]
mod lab;

use lab::{Host, Lab};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

struct Opts {
    rounds: usize,
    seconds: u32,
    out: Option<PathBuf>,
    /// Measure one configuration only (for profiling it); prints its figures, writes nothing.
    only: Option<String>,
}

fn opts() -> Opts {
    let default_out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose-lab/results"));
    let mut o = Opts { rounds: 3, seconds: 5, out: Some(default_out), only: None };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => o.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--seconds" => o.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S"),
            "--out" => o.out = Some(PathBuf::from(it.next().expect("--out DIR"))),
            "--only" => {
                o.only = Some(it.next().expect("--only bare|overlay|slow|fast").clone());
                o.out = None;
            }
            "--short" => {
                o.rounds = 1;
                o.seconds = 1;
                o.out = None;
            }
            "--bench" => {}
            other => panic!("unknown argument {other}; use --rounds N --seconds S --short --out DIR --only CONFIG"),
        }
    }
    o
}

#[derive(Clone, Copy, PartialEq)]
enum Config {
    Bare,
    Overlay,
    Slow,
    Fast,
}

const CONFIGS: [Config; 4] = [Config::Bare, Config::Overlay, Config::Slow, Config::Fast];

impl Config {
    fn short(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::Overlay => "overlay",
            Config::Slow => "slow",
            Config::Fast => "fast",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare host",
            Config::Overlay => "Docker overlay",
            Config::Slow => "oncache slow path",
            Config::Fast => "oncache fast path",
        }
    }
    /// Server and client containers (None: the hosts themselves), and their network.
    fn containers(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Config::Bare => None,
            Config::Overlay => Some(("os", "oc", "dov")),
            Config::Slow => Some(("ss", "sc", "slow")),
            Config::Fast => Some(("fs", "fc", "fast")),
        }
    }
}

struct Ends {
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

/// Busy CPU time of the whole machine so far, in µs (from /proc/stat, USER_HZ = 100).
fn busy_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let f: Vec<f64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    let total: f64 = f.iter().take(8).sum();
    (total - f[3] - f[4]) * 10_000.0
}

fn iperf(lab: &Lab, e: &Ends, secs: u32, streams: u32) -> f64 {
    let out = run_in(lab, e.client, &["iperf3", "-c", &e.server_ip, "-t", &secs.to_string(), "-P", &streams.to_string(), "-J"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("iperf3: {out}"));
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("iperf3 result") / 1e9
}

/// sockperf ping-pong: [transactions/s, p50 µs, p99 µs, CPU µs per transaction].
fn sockperf(lab: &Lab, e: &Ends, secs: u32, tcp: bool) -> [f64; 4] {
    let port = if tcp { "11112" } else { "11111" };
    let s = secs.to_string();
    let mut cmd = vec!["sockperf", "ping-pong", "-i", &e.server_ip, "-p", port, "-t", &s];
    if tcp {
        cmd.push("--tcp");
    }
    let cpu0 = busy_us();
    let out = run_in(lab, e.client, &cmd);
    let cpu = busy_us() - cpu0;
    let field = |key: &str| -> f64 {
        let i = out.find(key).unwrap_or_else(|| panic!("sockperf output lacks {key}: {out}"));
        out[i + key.len()..].trim_start().split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
    };
    let runtime = field("RunTime=");
    let received = field("ReceivedMessages=");
    // CPU over the whole run (warm-up included) per transaction of the whole run.
    let sent = field("SentMessages=");
    [received / runtime, field("percentile 50.000 ="), field("percentile 99.000 ="), cpu / sent.max(1.0)]
}

fn fast_hits(h: &Host) -> u64 {
    let (code, v) = lab::post_json(&h.oncache_socket(), "/Oncache.Stats", &serde_json::json!({}));
    assert_eq!(code, 200, "{v}");
    v["egress_fast"]["hits"].as_u64().unwrap() + v["ingress_fast"]["hits"].as_u64().unwrap()
}

/// (name, unit, higher is better)
const METRICS: [(&str, &str, bool); 10] = [
    ("TCP throughput, 1 flow", "Gbit/s", true),
    ("TCP throughput, 4 flows", "Gbit/s", true),
    ("TCP RR rate", "trans/s", true),
    ("TCP RR latency p50", "µs", false),
    ("TCP RR latency p99", "µs", false),
    ("TCP RR CPU per transaction", "µs", false),
    ("UDP RR rate", "trans/s", true),
    ("UDP RR latency p50", "µs", false),
    ("UDP RR latency p99", "µs", false),
    ("UDP RR CPU per transaction", "µs", false),
];

fn setup() -> Lab {
    let mut lab = Lab::new(2);
    lab.start_dockerds();
    let (ip0, ip1) = (lab.host(0).underlay_ip.to_string(), lab.host(1).underlay_ip.to_string());
    lab.host_mut(0).start_oncache(&["--peer", &ip1]);
    lab.host_mut(1).start_oncache(&["--peer", &ip0]);
    // Docker's overlay needs a Swarm.
    let (h0, h1) = (lab.host(0), lab.host(1));
    h0.docker(&["swarm", "init", "--advertise-addr", &ip0, "--listen-addr", &format!("{ip0}:2377")]);
    let token = h0.docker(&["swarm", "join-token", "-q", "worker"]);
    h1.docker(&["swarm", "join", "--token", token.trim(), "--advertise-addr", &ip1, &format!("{ip0}:2377")]);
    h0.docker(&["network", "create", "-d", "overlay", "--attachable", "--subnet", "10.212.0.0/24", "dov"]);
    for (i, h) in lab.hosts().iter().enumerate() {
        let range = |base: u32| format!("10.{base}.0.{}/25", i * 128);
        h.docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=10", "--subnet", "10.210.0.0/24", "--ip-range", &range(210), "fast"]);
        h.docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=11", "-o", "oncache.fastpath=false", "--subnet", "10.211.0.0/24", "--ip-range", &range(211), "slow"]);
    }
    for c in CONFIGS {
        if let Some((server, client, net)) = c.containers() {
            lab.host(0).run(&["--name", server, "--network", net, lab::IMAGE, "sleep", "1d"]);
            lab.host(1).run(&["--name", client, "--network", net, lab::IMAGE, "sleep", "1d"]);
        }
    }
    lab
}

fn ends(lab: &Lab, c: Config) -> Ends {
    match c.containers() {
        None => Ends { client: (1, None), server_ip: lab.host(0).underlay_ip.to_string() },
        Some((server, client, net)) => Ends {
            client: (1, Some(client)),
            server_ip: lab.host(0).container_ip(server, net).to_string(),
        },
    }
}

const SERVERS: [&[&str]; 3] = [
    &["iperf3", "-s"],
    &["sockperf", "server", "-i", "0.0.0.0", "-p", "11111"],
    &["sockperf", "server", "-i", "0.0.0.0", "-p", "11112", "--tcp"],
];

fn main() {
    let o = opts();
    let lab = setup();
    let bare_servers: Vec<_> = SERVERS.iter().map(|s| lab.host(0).spawn(s)).collect();
    for c in &CONFIGS[1..] {
        let (server, _, _) = c.containers().unwrap();
        for s in SERVERS {
            let mut cmd = vec!["exec", "-d", server];
            cmd.extend_from_slice(s);
            lab.host(0).docker(&cmd);
        }
    }
    std::thread::sleep(Duration::from_millis(800));

    // results[config][metric]: one value per round
    let mut results = vec![vec![Vec::new(); METRICS.len()]; CONFIGS.len()];
    let mut hits = [0u64; CONFIGS.len()];
    for round in 0..o.rounds {
        for (ci, c) in CONFIGS.iter().enumerate() {
            if o.only.as_deref().is_some_and(|only| only != c.short()) {
                continue;
            }
            let e = ends(&lab, *c);
            let before = fast_hits(lab.host(0)) + fast_hits(lab.host(1));
            let r = &mut results[ci];
            r[0].push(iperf(&lab, &e, o.seconds, 1));
            r[1].push(iperf(&lab, &e, o.seconds, 4));
            for (base, tcp) in [(2, true), (6, false)] {
                for (k, v) in sockperf(&lab, &e, o.seconds, tcp).into_iter().enumerate() {
                    r[base + k].push(v);
                }
            }
            hits[ci] += fast_hits(lab.host(0)) + fast_hits(lab.host(1)) - before;
            eprintln!("round {} of {}: {} done", round + 1, o.rounds, c.name());
        }
    }

    drop(bare_servers);
    if let Some(only) = &o.only {
        let ci = CONFIGS.iter().position(|c| c.short() == only).unwrap_or_else(|| panic!("--only {only}: no such configuration"));
        for (mi, (name, unit, _)) in METRICS.iter().enumerate() {
            println!("{name} ({unit}): {:.2}", median(&results[ci][mi]).0);
        }
        lab.finish();
        return;
    }
    let table = report(&o, &results, &hits);
    println!("\n{table}");
    if let Some(dir) = &o.out {
        std::fs::create_dir_all(dir).expect("results folder");
        std::fs::write(dir.join("netns-latest.md"), &table).expect("write results");
        let svg = chart(&results);
        std::fs::write(dir.join("netns-latest.svg"), &svg).expect("write chart");
        let png = dir.join("netns-latest.png");
        match std::process::Command::new("rsvg-convert").arg("-o").arg(&png).arg(dir.join("netns-latest.svg")).status() {
            Ok(s) if s.success() => eprintln!("wrote {} and its chart", dir.join("netns-latest.md").display()),
            _ => eprintln!("rsvg-convert (Debian librsvg2-bin) missing or failed: only the SVG chart was written"),
        }
    }
    assert!(hits[0] == 0 && hits[1] == 0 && hits[2] == 0, "the fast path was used outside the fast configuration: {hits:?}");
    assert!(hits[3] > 0, "the fast configuration never took the fast path");
    lab.finish();
}

fn median(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn report(o: &Opts, results: &[Vec<Vec<f64>>], hits: &[u64]) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = String::from_utf8_lossy(&std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().unwrap().stdout).trim().to_string();
    let mut t = String::new();
    writeln!(t, "Namespace lab, 2 hosts; {} rounds x {} s, interleaved; kernel {}; {cpus} CPUs; {date}\n", o.rounds, o.seconds, kernel.trim()).unwrap();
    write!(t, "| metric |").unwrap();
    for c in CONFIGS {
        write!(t, " {} |", c.name()).unwrap();
    }
    writeln!(t, " fast/bare | fast/overlay | fast/slow |").unwrap();
    writeln!(t, "|---|---|---|---|---|---|---|---|").unwrap();
    for (mi, (name, unit, _)) in METRICS.iter().enumerate() {
        let cells: Vec<_> = (0..CONFIGS.len()).map(|ci| median(&results[ci][mi])).collect();
        write!(t, "| {name} ({unit}) |").unwrap();
        for (m, lo, hi) in &cells {
            write!(t, " {m:.2} ({lo:.2}–{hi:.2}) |").unwrap();
        }
        let f = cells[3].0;
        writeln!(t, " {:.2} | {:.2} | {:.2} |", f / cells[0].0, f / cells[1].0, f / cells[2].0).unwrap();
    }
    writeln!(t, "\nMedians (min–max). Ratios: fast path over the other configuration (above 1 is more for rates, slower for latency and CPU).").unwrap();
    writeln!(t, "Fast-path hits during each configuration: {}", CONFIGS.iter().zip(hits).map(|(c, h)| format!("{} {h}", c.name())).collect::<Vec<_>>().join(", ")).unwrap();
    t
}

/// Grouped bars: each metric's medians relative to bare host (bare = 1).
fn chart(results: &[Vec<Vec<f64>>]) -> String {
    let (w, row, left) = (900.0, 34.0, 260.0);
    let h = 60.0 + row * METRICS.len() as f64 + 40.0;
    let colors = ["#888888", "#d9822b", "#4a90d9", "#2ca02c"];
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'><rect width='100%' height='100%' fill='white'/>");
    write!(s, "<text x='10' y='20' font-size='14'>Relative to bare host (1.0 = bare); rates: higher is better, latency and CPU: lower is better</text>").unwrap();
    let scale = (w - left - 60.0) / 2.0;
    let x1 = left + scale;
    write!(s, "<line x1='{x1}' y1='30' x2='{x1}' y2='{}' stroke='black' stroke-dasharray='4'/>", h - 40.0).unwrap();
    for (mi, (name, _, _)) in METRICS.iter().enumerate() {
        let y = 40.0 + row * mi as f64;
        write!(s, "<text x='10' y='{}'>{name}</text>", y + row / 2.0).unwrap();
        let bare = median(&results[0][mi]).0.max(1e-9);
        for (ci, color) in colors.iter().enumerate() {
            let r = (median(&results[ci][mi]).0 / bare).min(2.0);
            write!(s, "<rect x='{left}' y='{}' width='{:.1}' height='{:.1}' fill='{color}'/>", y + ci as f64 * row / 5.0, r * scale, row / 5.0 - 1.0).unwrap();
        }
    }
    for (ci, (c, color)) in CONFIGS.iter().zip(colors).enumerate() {
        let x = 10.0 + ci as f64 * 200.0;
        write!(s, "<rect x='{x}' y='{}' width='12' height='12' fill='{color}'/><text x='{}' y='{}'>{}</text>", h - 25.0, x + 16.0, h - 14.0, c.name()).unwrap();
    }
    s.push_str("</svg>");
    s
}
