//! What the fuzz targets share: one real-kernel testbed per process, and the checks that turn
//! a hidden failure into a crash libFuzzer records.
//!
//! Findings (each aborts the process, so libFuzzer saves the input):
//! - a panic anywhere (libfuzzer-sys's panic hook aborts even when `server::answer` would catch
//!   it; the answer "internal error in oncache" and its error log are checked as well);
//! - an answer that breaks the protocol: a failure without `{"Err": "..."}`, a success that is
//!   not a JSON object;
//! - after an input, an oncache link left behind once every network and peer is removed, or a
//!   removal that fails (`Testbed::reset`), or an iptables rule naming one oncache link.

pub mod calls;

use oncache::testbed::Testbed;
use serde_json::Value;
use std::io::Write;

/// What `server::answer` says when it caught a panic.
pub const PANIC_ANSWER: &str = "internal error in oncache";

thread_local! {
    // Network namespaces are per thread: the testbed lives and is used on libFuzzer's thread.
    static TESTBED: Testbed = start();
}

fn start() -> Testbed {
    init_logger();
    match Testbed::new() {
        Ok(t) => t,
        Err(e) => {
            // Not a finding: the fuzzer cannot run here (needs root, ip, a kernel with
            // network namespaces).
            eprintln!("oncache-fuzz: cannot start the testbed: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs `f` with this thread's testbed (created on first use).
pub fn with_testbed<R>(f: impl FnOnce(&Testbed) -> R) -> R {
    TESTBED.with(f)
}

/// `ONCACHE_FUZZ_TRACE=1`: the targets print every call or connection with its answers (to
/// replay an input and read what it did).
pub fn trace() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("ONCACHE_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

/// Prints the finding and aborts (libFuzzer writes the input to `artifacts/<target>/crash-*`).
pub fn finding(what: &str, context: &str) -> ! {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "\n==== oncache-fuzz finding: {what}\n{context}\n====");
    let _ = e.flush();
    std::process::abort();
}

/// Checks one answer of the driver; `context` describes the input for the report.
pub fn check_answer(method: &str, status: u16, answer: &Value, context: impl Fn() -> String) {
    let err = answer.get("Err").and_then(Value::as_str);
    if err.is_some_and(|e| e.contains(PANIC_ANSWER)) {
        finding(&format!("{method} panicked (caught by server::answer): {answer}"), &context());
    }
    if status == 200 {
        if !answer.is_object() || answer.get("Err").is_some() {
            finding(&format!("{method} answered 200 with {answer}: not a success object"), &context());
        }
    } else if err.is_none() || answer.as_object().map_or(true, |o| o.len() != 1) {
        finding(&format!("{method} answered {status} with {answer}: a failure must be {{\"Err\": \"...\"}}"), &context());
    }
}

/// Removes everything the input made and checks that nothing is left: no oncache link, no
/// firewall rule of one network.
pub fn reset_and_check(tb: &Testbed, context: impl Fn() -> String) {
    match tb.reset() {
        Ok(left) if left.is_empty() => {}
        Ok(left) => finding(&format!("links left after removing every network and peer: {left:?}"), &context()),
        Err(e) => finding(&format!("removing every network and peer failed: {e:#}"), &context()),
    }
    let rules = firewall_leaks();
    if !rules.is_empty() {
        finding(&format!("firewall rules left after removing every network: {rules:#?}"), &context());
    }
}

/// Rules of this network namespace that name one oncache link (`ocbr4096`, `ocve<tag>`...;
/// the shared rules name them all, `ocbr+`). A tool that is missing checks nothing.
fn firewall_leaks() -> Vec<String> {
    let mut out = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let Ok(o) = std::process::Command::new(tool).output() else { continue };
        for line in String::from_utf8_lossy(&o.stdout).lines().filter(|l| names_one_link(l)) {
            out.push(format!("{tool}: {line}"));
        }
    }
    out
}

fn names_one_link(rule: &str) -> bool {
    ["ocbr", "ocvx", "ocve", "ocvp"].iter().any(|p| {
        rule.match_indices(p).any(|(i, _)| rule[i + p.len()..].bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()))
    })
}

/// Logs errors to stderr and turns a caught panic's log line into a finding. Set
/// `ONCACHE_FUZZ_LOG=warn|info|debug` to see more (slow: every call logs).
struct Watch;

impl log::Log for Watch {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let msg = r.args().to_string();
        eprintln!("[{} {}] {msg}", r.level(), r.target());
        if r.level() == log::Level::Error && msg.contains("internal error") {
            finding("a panic was caught and logged", &msg);
        }
    }
    fn flush(&self) {}
}

fn init_logger() {
    static WATCH: Watch = Watch;
    let level = match std::env::var("ONCACHE_FUZZ_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Error,
    };
    if log::set_logger(&WATCH).is_ok() {
        log::set_max_level(level);
    }
}
