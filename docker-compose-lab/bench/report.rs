//! The benchmark's outputs: a markdown table of medians (min–max) with ratios, the fast path
//! against the performance targets with a confidence interval, a chart of each metric relative
//! to bare host (SVG, turned into PNG by rsvg-convert), and every round's figures (JSON).

use crate::{at, Config, Opts, CONFIGS, METRICS};
use std::fmt::Write as _;
use std::path::Path;

/// Median, min and max of one cell's rounds.
pub fn median(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// The data-plane targets: metric, bound on the fast path's ratio to a baseline, and whether
/// the ratio must be at least the bound (rates) or at most (CPU).
const TARGETS: [(&str, f64, bool); 5] = [
    ("TCP RR rate", 0.97, true),
    ("UDP RR rate", 0.97, true),
    ("TCP throughput, 1 flow", 0.95, true),
    ("TCP RR CPU per transaction, machine", 1.05, false),
    ("UDP RR CPU per transaction, machine", 1.05, false),
];

/// A distribution-free confidence interval for the median of `v`: its k-th smallest and k-th
/// largest values, for the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is at
/// least 95 % (k = 1, all of `v`, when none reaches it). Returns (lo, hi, coverage).
fn median_ci(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    // P(B < k) for k = 0..=n, from the binomial probabilities C(n, i) / 2^n.
    let mut below = vec![0.0; n + 1];
    let mut p = 0.5f64.powi(n as i32);
    for i in 0..n {
        below[i + 1] = below[i] + p;
        p *= (n - i) as f64 / (i + 1) as f64;
    }
    let k = (1..=n.div_ceil(2)).rev().find(|&k| 1.0 - 2.0 * below[k] >= 0.95).unwrap_or(1);
    (s[k - 1], s[n - k], 1.0 - 2.0 * below[k])
}

/// Each round's own fast/`ci` ratio of metric `mi` (the rounds are paired: one round runs every
/// configuration back to back).
fn per_round(results: &[Vec<Vec<f64>>], ci: usize, mi: usize) -> Vec<f64> {
    results[at(Config::Fast)][mi].iter().zip(&results[ci][mi]).map(|(f, b)| f / b).collect()
}

/// Below this coverage (fewer than 5 rounds) no verdict is given.
const MIN_COVERAGE: f64 = 0.9;

/// The fast path against each target, over the bare host and over the bare host in containers:
/// the median of the per-round ratios, its confidence interval, and a verdict that is "met" or
/// "not met" only when the whole interval lies on one side of the bound.
fn verdicts(t: &mut String, results: &[Vec<Vec<f64>>]) {
    let baselines = [Config::Bare, Config::BareCtr].map(at);
    writeln!(t, "\n| target (fast / baseline, per round) | over {} | over {} |", CONFIGS[baselines[0]].name(), CONFIGS[baselines[1]].name()).unwrap();
    writeln!(t, "|---|---|---|").unwrap();
    for (name, bound, at_least) in TARGETS {
        let mi = METRICS.iter().position(|(m, _)| *m == name).expect("every target is a metric");
        write!(t, "| {name} {} {bound:.2} |", if at_least { "≥" } else { "≤" }).unwrap();
        for ci in baselines {
            let r = per_round(results, ci, mi);
            let (lo, hi, cover) = median_ci(&r);
            let (good, bad) = if at_least { (lo >= bound, hi < bound) } else { (hi <= bound, lo > bound) };
            let verdict = if cover < MIN_COVERAGE {
                "too few rounds"
            } else if good {
                "met"
            } else if bad {
                "not met"
            } else {
                "not decided"
            };
            write!(t, " {:.2} ({lo:.2}–{hi:.2} at {:.1} %): {verdict} |", median(&r).0, cover * 100.0).unwrap();
        }
        writeln!(t).unwrap();
    }
    writeln!(t, "\nPer target: the median of the rounds' own ratios, in brackets its confidence interval (order statistics of the rounds, distribution-free; its coverage after \"at\"). \"met\" and \"not met\" need the whole interval on one side of the bound and a coverage of at least 90 % (5 rounds); more rounds narrow it.").unwrap();
}

/// Metrics the testbed could measure (per-node CPU is NaN where hosts are not cgroups).
fn measured(results: &[Vec<Vec<f64>>]) -> impl Iterator<Item = usize> + '_ {
    (0..METRICS.len()).filter(|&mi| results.iter().all(|r| r[mi].iter().all(|v| v.is_finite())))
}

pub fn table(o: &Opts, testbed: &str, results: &[Vec<Vec<f64>>], hits: &[u64]) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string()))
        .unwrap_or_default();
    let date = String::from_utf8_lossy(&std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().unwrap().stdout).trim().to_string();
    let mut t = String::new();
    writeln!(t, "{testbed}; {} rounds x {} s, interleaved; kernel {}; {cpus} CPUs ({cpu_model}); {date}\n", o.rounds, o.seconds, kernel.trim()).unwrap();
    write!(t, "| metric |").unwrap();
    for c in CONFIGS {
        write!(t, " {} |", c.name()).unwrap();
    }
    writeln!(t, " fast/bare | fast/bare per round | fast/bare at overlay MTU | fast/bare in containers | fast/bare in containers per round | fast/overlay | fast/slow |").unwrap();
    writeln!(t, "|---|{}", "---|".repeat(CONFIGS.len() + 7)).unwrap();
    let [bare, bare_mtu, bare_ctr, overlay, slow, fast] = [Config::Bare, Config::BareMtu, Config::BareCtr, Config::Overlay, Config::Slow, Config::Fast].map(at);
    for mi in measured(results) {
        let (name, unit) = METRICS[mi];
        // A configuration this run did not measure (--targets) has no rounds: "–".
        let cells: Vec<_> = (0..CONFIGS.len()).map(|ci| (!results[ci][mi].is_empty()).then(|| median(&results[ci][mi]))).collect();
        write!(t, "| {name} ({unit}) |").unwrap();
        for cell in &cells {
            match cell {
                Some((m, lo, hi)) => write!(t, " {m:.2} ({lo:.2}–{hi:.2}) |").unwrap(),
                None => write!(t, " – |").unwrap(),
            }
        }
        let f = cells[fast].map_or(f64::NAN, |c| c.0);
        let per_round_cell = |ci: usize| match cells[ci] {
            Some(_) => {
                let (m, lo, hi) = median(&per_round(results, ci, mi));
                format!("{m:.2} ({lo:.2}–{hi:.2})")
            }
            None => "–".to_string(),
        };
        let over = |ci: usize| cells[ci].map_or("–".to_string(), |c| format!("{:.2}", f / c.0));
        writeln!(
            t,
            " {} | {} | {} | {} | {} | {} | {} |",
            over(bare),
            per_round_cell(bare),
            over(bare_mtu),
            over(bare_ctr),
            per_round_cell(bare_ctr),
            over(overlay),
            over(slow)
        )
        .unwrap();
    }
    writeln!(t, "\nMedians (min–max). Ratios: fast path over the other configuration (above 1 is more for rates, slower for latency and CPU); \"per round\": the median (min–max) of each round's own fast/bare ratio, which a machine whose speed drifts between rounds disturbs less; \"at overlay MTU\": over the bare host whose route to the server has the containers' MTU, so that the ratio leaves out what the overlay's 50 bytes per packet cost TCP by themselves; \"in containers\": over the bare host with both ends in containers on the host network, so that the ratio leaves out what being in a container costs by itself (Docker's seccomp filter on every system call, the cgroups). Configurations run in reverse order every other round.").unwrap();
    writeln!(t, "CPU per transaction: busy CPU time over the sockperf run divided by its transactions; \"machine\" is the whole machine's (both hosts share its CPUs; CPUs x elapsed time - idle time), a node's is its cgroup's CPU time (softirq work is charged to whatever task it interrupted, so the split between nodes is approximate).").unwrap();
    writeln!(t, "Fast-path hits during each configuration: {}", CONFIGS.iter().zip(hits).map(|(c, h)| format!("{} {h}", c.name())).collect::<Vec<_>>().join(", ")).unwrap();
    verdicts(&mut t, results);
    t
}

/// Writes `<stem>-latest.md`, `.svg` and (with rsvg-convert) `.png` into DIR.
pub fn write(dir: &Path, stem: &str, table: &str, results: &[Vec<Vec<f64>>]) {
    std::fs::create_dir_all(dir).expect("results folder");
    let file = |ext: &str| dir.join(format!("{stem}-latest.{ext}"));
    std::fs::write(file("md"), table).expect("write results");
    let heading = table.lines().next().unwrap_or_default();
    std::fs::write(file("json"), rounds_json(heading, results)).expect("write rounds");
    std::fs::write(file("svg"), chart(heading, results)).expect("write chart");
    match std::process::Command::new("rsvg-convert").arg("-o").arg(file("png")).arg(file("svg")).status() {
        Ok(s) if s.success() => eprintln!("wrote {} and its chart", file("md").display()),
        _ => eprintln!("rsvg-convert (Debian librsvg2-bin) missing or failed: only the SVG chart was written"),
    }
}

/// Every round's figures, `{"heading": ..., "rounds": {configuration: {metric: [per round]}}}`,
/// for analyses the table does not make.
fn rounds_json(heading: &str, results: &[Vec<Vec<f64>>]) -> String {
    let rounds: serde_json::Map<String, serde_json::Value> = CONFIGS
        .iter()
        .zip(results)
        .map(|(c, r)| {
            let metrics = METRICS.iter().zip(r).map(|((m, u), v)| (format!("{m} ({u})"), serde_json::json!(v))).collect::<serde_json::Map<_, _>>();
            (c.short().to_string(), serde_json::Value::Object(metrics))
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "heading": heading, "rounds": rounds })).unwrap()
}

/// Grouped bars: each metric's medians relative to bare host (bare = 1), under the table's
/// heading (lab, rounds, kernel, CPUs, date).
fn chart(heading: &str, results: &[Vec<Vec<f64>>]) -> String {
    let rows: Vec<usize> = measured(results).collect();
    let (w, row, left) = (960.0, 34.0, 320.0);
    let h = 80.0 + row * rows.len() as f64 + 40.0;
    let colors = ["#888888", "#c8c8c8", "#8c6bb1", "#d9822b", "#4a90d9", "#2ca02c"];
    let bar = row / (colors.len() + 1) as f64;
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'><rect width='100%' height='100%' fill='white'/>");
    let heading = heading.replace('&', "&amp;").replace('<', "&lt;");
    write!(s, "<text x='10' y='20' font-size='11'>{heading}</text>").unwrap();
    write!(s, "<text x='10' y='40' font-size='14'>Relative to bare host (1.0 = bare); rates: higher is better, latency and CPU: lower is better</text>").unwrap();
    let scale = (w - left - 60.0) / 2.0;
    let x1 = left + scale;
    write!(s, "<line x1='{x1}' y1='50' x2='{x1}' y2='{}' stroke='black' stroke-dasharray='4'/>", h - 40.0).unwrap();
    for (ri, &mi) in rows.iter().enumerate() {
        let y = 60.0 + row * ri as f64;
        write!(s, "<text x='10' y='{}'>{}</text>", y + row / 2.0, METRICS[mi].0).unwrap();
        let bare = median(&results[at(Config::Bare)][mi]).0.max(1e-9);
        for (ci, color) in colors.iter().enumerate().filter(|(ci, _)| !results[*ci][mi].is_empty()) {
            let r = (median(&results[ci][mi]).0 / bare).min(2.0);
            write!(s, "<rect x='{left}' y='{}' width='{:.1}' height='{:.1}' fill='{color}'/>", y + ci as f64 * bar, r * scale, bar - 1.0).unwrap();
        }
    }
    // The legend in one row, each entry as wide as its name (about 6.5 px a character at 12 px).
    let mut x = 10.0;
    for (c, color) in CONFIGS.iter().zip(colors) {
        write!(s, "<rect x='{x}' y='{}' width='12' height='12' fill='{color}'/><text x='{}' y='{}'>{}</text>", h - 25.0, x + 16.0, h - 14.0, c.name()).unwrap();
        x += 16.0 + 6.5 * c.name().len() as f64 + 14.0;
    }
    s.push_str("</svg>");
    s
}
