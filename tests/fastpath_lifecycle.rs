//! The fast path's life cycle: restarts that never stop traffic (TCX and clsact attachment),
//! outer headers on the wire, `oncache doctor`, and `oncache uninstall` leaving nothing behind.

mod lab;
mod support;

use lab::{Host, Lab};

use std::time::Duration;
use support::traffic::{exchange, netns_of, udp_client, Echo};
use support::*;

fn overlay(extra: &[&str]) -> Lab {
    let mut lab = Lab::new(2);
    lab.start_dockerds();
    let (ip0, ip1) = (lab.host(0).underlay_ip.to_string(), lab.host(1).underlay_ip.to_string());
    let mut a0 = vec!["--peer", ip1.as_str()];
    a0.extend_from_slice(extra);
    let mut a1 = vec!["--peer", ip0.as_str()];
    a1.extend_from_slice(extra);
    lab.host_mut(0).start_oncache(&a0);
    lab.host_mut(1).start_oncache(&a1);
    for (i, h) in lab.hosts().iter().enumerate() {
        let range = format!("10.207.0.{}/25", i * 128);
        h.docker(&["network", "create", "-d", "oncache", "-o", "oncache.vni=7", "--subnet", "10.207.0.0/24", "--ip-range", &range, "ov"]);
    }
    lab.host(0).run(&["--name", "ca", "--network", "ov", lab::IMAGE, "sleep", "1d"]);
    lab.host(1).run(&["--name", "cb", "--network", "ov", lab::IMAGE, "sleep", "1d"]);
    lab
}

fn fast_hits(h: &Host) -> u64 {
    let s = stats(h);
    counter(&s, "egress_fast", "hits") + counter(&s, "ingress_fast", "hits")
}

fn prog_id(h: &Host, prog: &str) -> u64 {
    let out = h.sh(&format!("bpftool -j prog show pinned {}/progs/{prog}", h.bpf_dir.display()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("bpftool: {out}"));
    v["id"].as_u64().unwrap_or_else(|| panic!("no prog id: {v}"))
}

/// Restarting (and crashing) both daemons while a flow runs on the fast path loses nothing;
/// the new programs take over the same links and the learned state.
fn restart_keeps_fast_traffic(mode: &[&str]) -> Lab {
    let mut lab = overlay(mode);
    let (pa, a) = (netns_of(lab.host(0).container_pid("ca")), lab.host(0).container_ip("ca", "ov"));
    let pb = netns_of(lab.host(1).container_pid("cb"));
    let _echo = Echo::start(&pa, 7100, "");
    let client = udp_client(&pb, 0);
    exchange(&client, a, 7100, 50, 200).unwrap();
    let ids = [prog_id(lab.host(0), "oncache_ingress_fast"), prog_id(lab.host(1), "oncache_egress_fast")];
    let before = fast_hits(lab.host(0)) + fast_hits(lab.host(1));

    let runner = std::thread::spawn(move || exchange(&client, a, 7100, 6000, 200).map(|_| client));
    std::thread::sleep(Duration::from_millis(200));
    lab.host_mut(1).restart_oncache();
    lab.host_mut(0).kill_oncache();
    let ip1 = lab.host(1).underlay_ip.to_string();
    lab.host_mut(0).start_oncache(&[&["--peer", ip1.as_str()][..], mode].concat());
    let client = runner.join().unwrap().expect("datagrams lost while the daemons restarted");

    let (h0, h1) = (lab.host(0), lab.host(1));
    assert_ne!(prog_id(h0, "oncache_ingress_fast"), ids[0], "program not replaced on restart");
    assert_ne!(prog_id(h1, "oncache_egress_fast"), ids[1], "program not replaced on restart");
    // The restarted daemons' programs carry the flow at once (learned state survived).
    let mid = fast_hits(h0) + fast_hits(h1);
    assert!(mid > before, "no fast-path traffic across the restart");
    exchange(&client, a, 7100, 200, 200).unwrap();
    assert!(fast_hits(h0) + fast_hits(h1) >= mid + 400, "new programs not on the fast path");
    lab
}

#[test]
fn restart_keeps_fast_traffic_with_tcx() {
    let lab = restart_keeps_fast_traffic(&[]);
    let h0 = lab.host(0);
    assert!(status(h0)["fastpath"].as_str().unwrap().starts_with("on (tcx)"), "{}", status(h0));
    let links = h0.sh(&format!("ls {}/links", h0.bpf_dir.display()));
    assert!(links.contains("ul0:ingress") && links.contains("ul0:egress"), "{links}");
    assert_eq!(links.lines().filter(|l| l.starts_with("ocve")).count(), 2, "one ingress and one egress link per veth: {links}");
    lab.finish();
}

#[test]
fn restart_keeps_fast_traffic_with_clsact() {
    let lab = restart_keeps_fast_traffic(&["--tc-attach", "clsact"]);
    let h0 = lab.host(0);
    assert!(status(h0)["fastpath"].as_str().unwrap().starts_with("on (clsact)"), "{}", status(h0));
    for hook in ["ingress", "egress"] {
        let f = h0.sh(&format!("tc filter show dev ul0 {hook}"));
        assert_eq!(f.matches("direct-action").count(), 1, "exactly one oncache filter on ul0 {hook} after restarts:\n{f}");
    }
    lab.finish();
}

/// On the wire: outer IPv4 with DF and ID 0, a correct header checksum (tcpdump checks it),
/// UDP to 4789 from a port in 49152-65535 that is stable per flow and differs between flows.
#[test]
fn outer_headers_on_the_wire_are_correct() {
    let lab = overlay(&[]);
    let (h0, h1) = (lab.host(0), lab.host(1));
    let (pa, a) = (netns_of(h0.container_pid("ca")), h0.container_ip("ca", "ov"));
    let pb = netns_of(h1.container_pid("cb"));
    let _echo = Echo::start(&pa, 7101, "");
    let flows = [udp_client(&pb, 0), udp_client(&pb, 0)];
    for f in &flows {
        exchange(f, a, 7101, 30, 300).unwrap();
    }
    let file = h1.dir.join("underlay.pcap");
    let mut cap = h1.spawn(&["tcpdump", "-i", "ul0", "--immediate-mode", "-U", "-n", "-w", &file.to_string_lossy(), "udp dst port 4789"]);
    lab::wait_for("tcpdump", Duration::from_secs(10), || std::fs::metadata(&file).ok().filter(|m| m.len() > 0).map(|_| ()));
    let before = fast_hits(h1);
    for f in &flows {
        exchange(f, a, 7101, 40, 300).unwrap();
    }
    assert!(fast_hits(h1) >= before + 80, "not on the fast path: {}", stats(h1));
    std::thread::sleep(Duration::from_millis(300));
    cap.stop();
    let text = h1.sh(&format!("tcpdump -r {} -nn -v -t", file.display()));
    let outer: Vec<&str> = text.lines().filter(|l| l.starts_with("IP (") && l.contains("proto UDP")).collect();
    let summaries: Vec<&str> = text.lines().filter(|l| l.contains(".4789: VXLAN")).collect();
    assert!(outer.len() >= 80, "{text}");
    assert!(!text.contains("bad cksum"), "bad outer checksum:\n{text}");
    // Outer headers of the fast path: DF, ID 0 (the slow path's are not, so count them).
    let fast = outer.iter().filter(|l| l.contains("id 0,") && l.contains("flags [DF]")).count();
    assert!(fast >= 80, "{fast} fast-path outer headers (DF, id 0) of {}:\n{text}", outer.len());
    let mut ports = std::collections::BTreeSet::new();
    for s in &summaries {
        // "10.99.L.2.PORT > 10.99.L.1.4789: VXLAN, flags [I] (0x08), vni 7"
        let src = s.trim().split_whitespace().next().unwrap();
        let port: u16 = src.rsplit('.').next().unwrap().parse().unwrap();
        assert!(port >= 49152, "source port {port} outside 49152-65535: {s}");
        assert!(s.contains("vni 7"), "{s}");
        ports.insert(port);
    }
    assert!(ports.len() >= 2, "one source port for two flows: {ports:?}");
    lab.finish();
}

#[test]
fn doctor_reports_every_feature_present() {
    let out = std::process::Command::new(BIN).args(["doctor", "--json"]).output().unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = checks.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in ["bpf", "btf", "bpffs", "tcx", "redirect_peer", "vxlan", "br_netfilter", "iptables"] {
        assert!(names.contains(&n), "doctor lacks {n}: {checks}");
    }
    assert!(out.status.success(), "this machine has everything: {checks}");
    let text = String::from_utf8_lossy(&std::process::Command::new(BIN).arg("doctor").output().unwrap().stdout).into_owned();
    assert!(text.lines().all(|l| l.starts_with("ok")), "{text}");
}

/// `oncache uninstall` removes pins, programs' attachments, links and firewall chains.
#[test]
fn uninstall_leaves_nothing() {
    let mut lab = overlay(&[]);
    lab.host(0).docker(&["rm", "-f", "ca"]);
    lab.host_mut(0).stop_oncache();
    let h0 = lab.host(0);
    assert!(h0.bpf_dir.exists(), "a stopped daemon leaves the data plane in place");
    let out = h0.exec(&[BIN, "uninstall", "--bpf-dir", &h0.bpf_dir.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!h0.bpf_dir.exists(), "pins left in {}", h0.bpf_dir.display());
    assert!(oncache_links(h0).is_empty(), "{:?}", oncache_links(h0));
    let rules = h0.sh("iptables -S; iptables -t mangle -S");
    assert!(!rules.contains("ONCACHE"), "{rules}");
    let ingress = h0.sh("tc filter show dev ul0 ingress; bpftool net show dev ul0");
    assert!(!ingress.contains("oncache"), "{ingress}");
    lab.finish();
}

/// A container whose veth vanished while the daemon was down (no Leave reached oncache) leaves
/// no delivery entry or flow behind once the daemon is back.
#[test]
fn restart_purges_entries_of_vanished_endpoints() {
    let mut lab = overlay(&[]);
    let (pa, a) = (netns_of(lab.host(0).container_pid("ca")), lab.host(0).container_ip("ca", "ov"));
    let (pb, b) = (netns_of(lab.host(1).container_pid("cb")), lab.host(1).container_ip("cb", "ov"));
    let _echo = Echo::start(&pa, 7102, "");
    let client = udp_client(&pb, 0);
    exchange(&client, a, 7102, 100, 100).unwrap();
    let bs = b.to_string();
    let mentions_b = |c: &serde_json::Value| c.to_string().contains(&format!("\"{bs}\"")) || c.to_string().contains(&format!("{bs}:"));
    assert!(mentions_b(&cache(lab.host(1))), "{}", cache(lab.host(1)));

    lab.host_mut(1).stop_oncache();
    let veth = lab.host(1).sh("ip -o link | grep -o 'ocve[0-9a-f]*' | head -1");
    lab.host(1).sh(&format!("ip link del {}", veth.trim()));
    let ip0 = lab.host(0).underlay_ip.to_string();
    lab.host_mut(1).start_oncache(&["--peer", &ip0]);
    let c = cache(lab.host(1));
    assert!(!mentions_b(&c), "entries of a vanished endpoint survived the restart: {c}");
    let links = lab.host(1).sh(&format!("ls {}/links", lab.host(1).bpf_dir.display()));
    assert!(!links.contains(veth.trim()), "link pins of a vanished veth: {links}");
    lab.finish();
}
