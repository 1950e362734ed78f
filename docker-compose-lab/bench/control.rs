//! Control-plane benchmark: what oncache adds to a container's start, and what each driver call
//! costs as endpoints accumulate. One host of the namespace lab (tests/lab) with its dockerd and
//! oncache daemon.
//!
//!     cargo bench -p oncache --bench control -- [--runs R] [--endpoints N] [--short] [--out DIR]
//!
//! 1. `docker run --rm --network NET IMAGE true`, the networks interleaved run by run (R runs,
//!    default 20): `none`, a Docker bridge network, an oncache network with
//!    `oncache.fastpath=false`, an oncache network. Medians and p90. An oncache container also
//!    gets an endpoint on `docker_gwbridge` (a bridge endpoint, as with Docker's overlay); that
//!    part is estimated as (bridge - none), and oncache's own cost as
//!    (oncache - bridge) - (bridge - none).
//! 2. Driver calls through the plugin socket, as dockerd makes them: N endpoints (default
//!    1000) created and joined on one network, then left and deleted. p50/p99 of each call, and
//!    Join's median per tenth of N: flat means no call does work in proportion to the endpoints
//!    there are.
//!
//! Prints markdown and writes it to docker-compose-lab/results/control-latest.md. Asserts no
//! speed. `--short` (3 runs, 50 endpoints, nothing written) is what the test command runs.

#[path = "../../tests/lab/mod.rs"]
#[allow(dead_code)]
mod lab;

use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Opts {
    runs: usize,
    endpoints: usize,
    out: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo bench -p oncache --bench control -- [--runs R] [--endpoints N] [--short] [--out DIR]";

fn opts() -> Opts {
    let mut o = Opts { runs: 20, endpoints: 1000, out: Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose-lab/results"))) };
    let mut args = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> usize {
        v.and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or_else(|| panic!("{what} wants a positive number\n{USAGE}"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => o.runs = num(args.next(), "--runs"),
            "--endpoints" => o.endpoints = num(args.next(), "--endpoints"),
            "--short" => {
                o.runs = 3;
                o.endpoints = 50;
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

/// The `q`-quantile of `v` (nearest rank), in ms.
fn quantile(v: &[Duration], q: f64) -> f64 {
    let mut s: Vec<Duration> = v.to_vec();
    s.sort();
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i].as_secs_f64() * 1000.0
}

fn main() {
    let o = opts();
    let mut lab = lab::Lab::new(1);
    lab.start_dockerds();
    lab.host_mut(0).start_oncache(&["--gossip-port", "0"]);
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
    let nets = ["none", "cbr", "cslow", "cfast"];
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
    for (i, what) in ["none", "Docker bridge", "oncache, fastpath=false", "oncache"].iter().enumerate() {
        writeln!(md, "| {what} | {:.1} | {:.1} |", med[i], quantile(&took[i], 0.9)).unwrap();
    }
    let (none, bridge, slow, fast) = (med[0], med[1], med[2], med[3]);
    let gw = bridge - none;
    writeln!(
        md,
        "\noncache over Docker's bridge: {:+.1} ms; of that, docker_gwbridge's endpoint (estimated as bridge - none): {gw:.1} ms; oncache's own: {:+.1} ms (the fast path's part, oncache - fastpath=false: {:+.1} ms).\n",
        fast - bridge,
        fast - bridge - gw,
        fast - slow
    )
    .unwrap();
    for n in ["cbr", "cslow", "cfast"] {
        h.docker(&["network", "rm", n]);
    }

    // 2. Driver calls as endpoints accumulate.
    let sock = h.oncache_socket();
    let call = |method: &str, body: serde_json::Value| -> Duration {
        let t = Instant::now();
        let (code, v) = lab::post_json(&sock, &format!("/NetworkDriver.{method}"), &body);
        let d = t.elapsed();
        assert_eq!(code, 200, "{method}: {v}");
        d
    };
    let net = format!("{:0>64}", "c0");
    call(
        "CreateNetwork",
        json!({"NetworkID": net, "Options": {"com.docker.network.generic": {}}, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.233.0.0/16"}]}),
    );
    // Distinct in their first 11 characters, which name the endpoint's links.
    let ep = |k: usize| format!("{k:0>11x}{:0>53}", 0);
    let mut lat: [Vec<Duration>; 4] = Default::default();
    for k in 0..o.endpoints {
        let addr = format!("10.233.{}.{}/16", (k + 2) / 256, (k + 2) % 256);
        lat[0].push(call("CreateEndpoint", json!({"NetworkID": net, "EndpointID": ep(k), "Interface": {"Address": addr}})));
        lat[1].push(call("Join", json!({"NetworkID": net, "EndpointID": ep(k), "SandboxKey": format!("/run/netns/bench{k}")})));
    }
    for k in 0..o.endpoints {
        lat[2].push(call("Leave", json!({"NetworkID": net, "EndpointID": ep(k)})));
        lat[3].push(call("DeleteEndpoint", json!({"NetworkID": net, "EndpointID": ep(k)})));
    }
    call("DeleteNetwork", json!({"NetworkID": net}));
    writeln!(md, "Driver calls through the plugin socket, {} endpoints joined one after another on one network, then left and deleted:\n", o.endpoints).unwrap();
    writeln!(md, "| call | p50 (ms) | p99 (ms) |\n|---|---|---|").unwrap();
    for (i, m) in ["CreateEndpoint", "Join", "Leave", "DeleteEndpoint"].iter().enumerate() {
        writeln!(md, "| {m} | {:.2} | {:.2} |", quantile(&lat[i], 0.5), quantile(&lat[i], 0.99)).unwrap();
    }
    let tenth = o.endpoints.div_ceil(10);
    let by_tenth: Vec<String> = lat[1].chunks(tenth).map(|c| format!("{:.2}", quantile(c, 0.5))).collect();
    writeln!(md, "\nJoin's median (ms) per tenth of the endpoints, in the order they joined: {}", by_tenth.join(", ")).unwrap();

    print!("{md}");
    lab.finish();
    if let Some(dir) = o.out {
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control-latest.md");
        std::fs::write(&path, &md).unwrap();
        println!("\nwritten to {}", path.display());
    }
}
