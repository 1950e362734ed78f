//! What a new user's host looks like: no bpffs mounted, or a `--bpf-dir` that cannot hold
//! pins. The daemon fixes what it can (mounting bpffs), says what it cannot, and the slow path
//! serves either way.

mod lab;
mod support;

use lab::Lab;
use support::traffic::{netns_of, tcp_stream};
use support::*;

/// Two hosts with the network `ov` (VNI 100); host 0's daemon runs in a mount namespace with
/// nothing on /sys/fs/bpf (a fresh host), host 1's as usual.
#[test]
fn daemon_mounts_bpffs_itself_and_runs_the_fast_path() {
    let mut lab = Lab::new(2);
    lab.start_dockerds();
    let ips: Vec<String> = lab.hosts().iter().map(|h| h.underlay_ip.to_string()).collect();
    lab.host_mut(0).set_oncache_without_bpffs();
    lab.host_mut(0).start_oncache(&["--peer", &ips[1]]);
    lab.host_mut(1).start_oncache(&["--peer", &ips[0]]);
    let (h0, h1) = (lab.host(0), lab.host(1));
    let log = h0.oncache_log();
    assert!(log.contains("mounted bpffs on /sys/fs/bpf"), "the daemon did not mount bpffs:\n{log}");
    assert!(status(h0)["fastpath"].as_str().unwrap().starts_with("on"), "{}", status(h0));
    for (i, h) in [h0, h1].iter().enumerate() {
        let range = format!("10.202.0.{}/26", i * 64);
        h.docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=100", "--subnet", "10.202.0.0/24", "--ip-range", &range, "ov"]);
        h.run(&["--name", &format!("c{i}"), "--network", "ov", lab::IMAGE, "sleep", "1d"]);
    }
    let b = h1.container_ip("c1", "ov");
    wait_ping(h0, "c0", &b.to_string());
    let (pa, pb) = (netns_of(h0.container_pid("c0")), netns_of(h1.container_pid("c1")));
    tcp_stream(&pb, b, &pa, 5201, 64).expect("TCP across the overlay");
    let s = stats(h0);
    assert!(counter(&s, "egress_fast", "hits") > 0 && counter(&s, "ingress_fast", "hits") > 0, "no fast-path hits on the fresh host: {s}");
    lab.finish();
}

/// A `--bpf-dir` on a filesystem that is not bpffs: `oncache doctor` says so, the daemon serves
/// the slow path only and says why, and containers still talk.
#[test]
fn bpf_dir_off_bpffs_means_slow_path_only() {
    let mut lab = Lab::new(1);
    lab.start_dockerds();
    let dir = lab.dir().join("not-bpffs");
    let dir_s = dir.display().to_string();
    let out = lab.host(0).exec(&[BIN, "doctor", "--bpf-dir", &dir_s]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "doctor passed a non-bpffs --bpf-dir:\n{text}");
    assert!(text.lines().any(|l| l.starts_with("MISSING") && l.contains("bpffs")), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the slow path still works"));

    let h = lab.host(0);
    let (sock, state) = (h.oncache_socket().display().to_string(), h.state_dir.display().to_string());
    let args = ["daemon", "--socket", &sock, "--state-dir", &state, "--underlay", lab::UNDERLAY_IF, "--bpf-dir", &dir_s];
    lab.host_mut(0).start_oncache_cmd(std::path::Path::new(BIN), &args, &[]);
    let h = lab.host(0);
    let fp = status(h)["fastpath"].as_str().unwrap().to_string();
    assert!(fp.starts_with("off: missing bpffs") && fp.contains("not on a bpf filesystem"), "{fp}");
    let e = cli(h, &["stats"]).unwrap_err();
    assert!(e.contains("fast path is not running"), "{e}");
    h.docker(&["network", "create", "-d", "oncache", "--subnet", "10.201.0.0/24", "n1"]);
    h.run(&["--name", "ca", "--network", "n1", lab::IMAGE, "sleep", "1d"]);
    h.run(&["--name", "cb", "--network", "n1", lab::IMAGE, "sleep", "1d"]);
    ping(h, "cb", "ca").expect("the slow path serves without the fast path");
    assert!(!dir.join("maps").exists(), "pins were attempted off bpffs");
    lab.finish();
}

/// The socket is served before the slow start-up work (eBPF load, reconciling): dockerd, and
/// above all a managed plugin's dockerd, gets its handshake at once; driver calls wait for the
/// start-up to finish instead of failing.
#[test]
fn the_socket_is_served_before_the_fast_path_loads() {
    let mut lab = Lab::new(1);
    lab.start_oncaches(&[]);
    let h = lab.host(0);
    // A driver call waits for the start-up: after it, the whole story is in the log.
    assert!(status(h)["fastpath"].as_str().unwrap().starts_with("on"));
    let log = lab::try_wait_for(std::time::Duration::from_secs(10), || Some(h.oncache_log()).filter(|l| l.contains("] started") || l.contains(" started\n")))
        .unwrap_or_else(|| h.oncache_log());
    let served = log.find("serving the oncache network driver").expect("never served");
    let loaded = log.find("fast path on").expect("fast path never on");
    let started = log.find("] started").or_else(|| log.find(" started")).expect("start-up never finished");
    assert!(served < loaded && loaded < started, "order in the log: served {served}, fast path {loaded}, started {started}:\n{log}");
    lab.finish();
}
