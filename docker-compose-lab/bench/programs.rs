//! What the fast path's eBPF programs cost by themselves: a pass of its own after the rounds,
//! on the fast configuration, with the kernel timing every program run
//! (`kernel.bpf_stats_enabled`, two clock reads per run: never on while the rounds measure).
//! The run counts and times are the daemons' own (`oncache stats`), summed over both nodes;
//! a run's time includes the helpers it calls (map lookups, adjust_room, redirect).

use super::{iperf, sockperf, BpfStats, Ends, Testbed};
use serde_json::Value;

/// The programs, as `oncache stats` names them.
const PROGRAMS: [&str; 4] = ["egress_fast", "ingress_fast", "egress_learn", "ingress_learn"];

/// Runs and run time (ns) of each program, summed over both nodes.
fn snapshot(tb: &dyn Testbed) -> [(u64, u64); 4] {
    let nodes: [Value; 2] = [tb.oncache_stats(0), tb.oncache_stats(1)];
    PROGRAMS.map(|p| {
        let field = |v: &Value, k: &str| v[p][k].as_u64().unwrap_or_else(|| panic!("oncache stats lacks {p}.{k}: {v}"));
        nodes.iter().fold((0, 0), |(r, t), v| (r + field(v, "runs"), t + field(v, "run_time_ns")))
    })
}

/// Measures TCP RR, UDP RR (per transaction) and one TCP flow (per second) on the fast
/// configuration's ends, and returns a markdown section. Panics when the fast path's programs
/// did not run: the figures would not be about them.
pub fn section(tb: &dyn Testbed, e: &Ends, secs: u32) -> String {
    let _on = BpfStats::set(true);
    let mut rows = Vec::new();
    for (test, tcp) in [("TCP RR", true), ("UDP RR", false)] {
        let before = snapshot(tb);
        let transactions = sockperf(tb, e, secs, tcp).transactions;
        let after = snapshot(tb);
        rows.push(row(test, &before, &after, Per::Transaction(transactions)));
    }
    let before = snapshot(tb);
    let gbits = iperf(tb, e, secs, 1);
    let after = snapshot(tb);
    rows.push(row(&format!("TCP 1 flow ({gbits:.1} Gbit/s)"), &before, &after, Per::Second(f64::from(secs))));

    let mut s = String::from("\n| fast path, programs timed by the kernel | ");
    s += &PROGRAMS.join(" | ");
    s += " | all programs |\n|---|---|---|---|---|---|\n";
    for r in rows {
        s += &r;
    }
    s += "\nA separate pass after the rounds, on the fast configuration, with kernel.bpf_stats_enabled on \
          (each run then costs two clock reads more, so these are upper bounds: egress_learn returns at once for \
          fast-path packets, and its time per run is about what the timing adds). Each cell: mean time per run \
          (helpers included: map lookups, adjust_room, redirect) x runs per transaction (RR) or per second (1 flow); \
          \"all programs\": their total time per transaction, or the share of one CPU for the flow.\n";
    s
}

/// What a row's runs are counted against: the transactions of a ping-pong, or the seconds of a flow.
enum Per {
    Transaction(f64),
    Second(f64),
}

fn row(test: &str, before: &[(u64, u64); 4], after: &[(u64, u64); 4], per: Per) -> String {
    let n = match per {
        Per::Transaction(n) | Per::Second(n) => n,
    };
    let delta: Vec<(u64, u64)> = before.iter().zip(after).map(|(b, a)| (a.0 - b.0, a.1 - b.1)).collect();
    assert!(delta[0].0 > 0 && delta[1].0 > 0, "{test}: the fast path's programs did not run while timed: {delta:?}");
    let mut s = format!("| {test} |");
    for (runs, ns) in &delta {
        if *runs == 0 {
            s += " - |";
        } else {
            s += &format!(" {} ns x {:.2} |", ns / runs, *runs as f64 / n);
        }
    }
    let total_ns: u64 = delta.iter().map(|d| d.1).sum();
    s += &match per {
        Per::Transaction(_) => format!(" {:.2} µs per transaction |\n", total_ns as f64 / n / 1e3),
        Per::Second(_) => format!(" {:.1} % of a CPU |\n", total_ns as f64 / n / 1e7),
    };
    s
}
