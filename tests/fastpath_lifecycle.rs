//! The fast path's life cycle: restarts that never stop traffic (TCX and clsact attachment),
//! outer headers on the wire, `oncache doctor`, and `oncache uninstall` leaving nothing behind.

mod lab;
mod support;

use lab::{Host, Lab};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::net::{Ipv4Addr, SocketAddrV4};
use support::traffic::{capture, capture_sent, describe, exchange, inet_checksum, ipv4_flow, netns_of, tcp_stream, udp_client, Echo, Frame};
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

/// The firewall epoch in `h`'s pinned configuration (ONC_CONFIG[0], its fifth word).
fn firewall_epoch(h: &Host) -> u32 {
    let e = map_entries(h, oncache_common::MAP_CONFIG).unwrap_or_else(|e| panic!("{}: {e}", h.name));
    let (_, v) = e.first().unwrap_or_else(|| panic!("{}: no configuration", h.name));
    u32::from_le_bytes(v[16..20].try_into().unwrap())
}

/// An endpoint veth's clsact is bound to the shared blocks, and each hook runs exactly one
/// oncache filter: this daemon's program.
fn assert_endpoint_programs(h: &Host, veth: &str) {
    let q = h.sh(&format!("tc qdisc show dev {veth} clsact"));
    assert!(q.contains("ingress_block") && q.contains("egress_block"), "{veth}'s clsact is not bound to the shared blocks: {q}");
    for (hook, prog) in [("ingress", "oncache_egress_fast"), ("egress", "oncache_ingress_learn")] {
        let f = h.sh(&format!("tc filter show dev {veth} {hook}"));
        assert_eq!(f.matches("direct-action").count(), 1, "exactly one oncache filter on {veth} {hook}:\n{f}");
        let id = prog_id(h, prog);
        assert!(f.contains(&format!(" id {id} ")), "{veth} {hook} does not run this daemon's {prog} (id {id}):\n{f}");
    }
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
    let epochs = [firewall_epoch(lab.host(0)), firewall_epoch(lab.host(1))];

    // The flow runs, one exchange after another, until both restarts are over and it has gone on
    // a while after them; a datagram lost on the way fails it.
    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let runner = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                exchange(&client, a, 7100, 50, 200)?;
                done.fetch_add(50, Ordering::Relaxed);
            }
            Ok::<_, String>(client)
        })
    };
    let flowing = |from: usize| lab::try_wait_for(Duration::from_secs(10), || (done.load(Ordering::Relaxed) >= from + 500).then_some(()));
    if flowing(0).is_none() {
        stop.store(true, Ordering::Relaxed);
        panic!("the flow did not get going: {:?}", runner.join().unwrap().err());
    }
    let at_restart = done.load(Ordering::Relaxed);
    lab.host_mut(1).restart_oncache();
    lab.host_mut(0).kill_oncache();
    let ip1 = lab.host(1).underlay_ip.to_string();
    lab.host_mut(0).start_oncache(&[&["--peer", ip1.as_str()][..], mode].concat());
    let restarted = done.load(Ordering::Relaxed);
    let after = flowing(restarted);
    stop.store(true, Ordering::Relaxed);
    let client = runner.join().unwrap().expect("datagrams lost while the daemons restarted");
    assert!(after.is_some(), "the flow stalled after the restarts");
    assert!(restarted - at_restart >= 500, "only {} exchanges while the daemons restarted: the flow did not cross the restarts", restarted - at_restart);

    let (h0, h1) = (lab.host(0), lab.host(1));
    assert_ne!(prog_id(h0, "oncache_ingress_fast"), ids[0], "program not replaced on restart");
    assert_ne!(prog_id(h1, "oncache_egress_fast"), ids[1], "program not replaced on restart");
    // The restarted daemons' programs carry the flow at once (learned state survived).
    let mid = fast_hits(h0) + fast_hits(h1);
    assert!(mid > before, "no fast-path traffic across the restart");
    exchange(&client, a, 7100, 200, 200).unwrap();
    assert!(fast_hits(h0) + fast_hits(h1) >= mid + 400, "new programs not on the fast path");
    // A restart keeps the firewall epoch: it withdraws no admitted flow by itself.
    assert_eq!([firewall_epoch(h0), firewall_epoch(h1)], epochs, "a restart changed the firewall epoch");
    lab
}

#[test]
fn restart_keeps_fast_traffic_with_tcx() {
    let lab = restart_keeps_fast_traffic(&[]);
    let h0 = lab.host(0);
    assert!(status(h0)["fastpath"].as_str().unwrap().starts_with("on (tcx on the underlay"), "{}", status(h0));
    assert_eq!(status(h0)["container_link"], "veth", "{}", status(h0));
    let links = h0.sh(&format!("ls {}/links", h0.bpf_dir.display()));
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["ul0:egress", "ul0:ingress"], "TCX links are the underlay's only");
    // Endpoints: one cls_bpf filter per hook, in the shared blocks, replaced in place across
    // the restarts by the new daemon's programs.
    let veth = h0.sh("ip -o link | grep -o 'ocve[0-9a-f]*' | head -1");
    assert_endpoint_programs(h0, veth.trim());
    // `oncache stats` as a person reads it: a row for each program, the fast ones counting hits.
    let text = cli(h0, &["stats"]).unwrap();
    for prog in ["egress_fast", "ingress_fast", "egress_learn", "ingress_learn"] {
        let row = text.lines().find(|l| l.split_whitespace().next() == Some(prog)).unwrap_or_else(|| panic!("no {prog} row in:\n{text}"));
        if prog.ends_with("_fast") {
            let hits: u64 = row.split_whitespace().nth(1).and_then(|h| h.parse().ok()).unwrap_or_else(|| panic!("{prog}: no hits in {row:?}"));
            assert!(hits > 0, "{prog} counted no hits:\n{text}");
        }
    }
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

/// A daemon killed between the two writes of a rewritten remote entry (its new generation into
/// ONC_GENS, then the entry) leaves them apart, and no flow to that container can be admitted
/// while they are: the learners admit under the entry's generation. The next start puts them
/// together again and the flow returns to the fast path.
#[test]
fn a_restart_repairs_generations_a_crash_left_apart() {
    let mut lab = overlay(&[]);
    let (pa, a) = (netns_of(lab.host(0).container_pid("ca")), lab.host(0).container_ip("ca", "ov"));
    let b = lab.host(1).container_ip("cb", "ov");
    let pb = netns_of(lab.host(1).container_pid("cb"));
    let _echo = Echo::start(&pa, 7100, "");
    let client = udp_client(&pb, 0);
    exchange(&client, a, 7100, 50, 200).unwrap();
    // Host 0's programs carry both directions: ingress_fast the requests, egress_fast the replies.
    let on_fast_path = |h: &Host, client: &std::net::UdpSocket| {
        let before = fast_hits(h);
        exchange(client, a, 7100, 100, 200).unwrap();
        fast_hits(h) - before
    };
    assert!(on_fast_path(lab.host(0), &client) >= 180, "the flow is not on host 0's fast path");

    let (slot, gen) = egress_slot_and_gen(lab.host(0), 7, b);
    set_gen_in_slot(lab.host(0), slot, gen ^ 0x5a5a_5a5a);
    assert_eq!(on_fast_path(lab.host(0), &client), 0, "a flow took the fast path under a generation its entry does not have");
    lab.host_mut(0).kill_oncache();
    let ip1 = lab.host(1).underlay_ip.to_string();
    lab.host_mut(0).start_oncache(&["--peer", ip1.as_str()]);

    let h0 = lab.host(0);
    assert_eq!(egress_slot_and_gen(h0, 7, b), (slot, gen), "the restart rewrote an unchanged remote entry");
    assert_eq!(gen_in_slot(h0, slot), gen, "the restart left ONC_GENS apart from the entry");
    let back = lab::try_wait_for(Duration::from_secs(10), || (on_fast_path(h0, &client) >= 180).then_some(()));
    assert!(back.is_some(), "the flow did not return to the fast path after the restart");
    lab.finish();
}

/// On the wire, captured on the underlay from the first packet of each flow: every outer
/// header has IP total length = frame length - 14, UDP length = IP length - 20, a valid IP
/// header checksum, destination port 4789, VXLAN flags I and VNI 7, DF and UDP checksum 0 (the
/// VXLAN devices are made so, as the fast path builds them). Each flow's first packets go
/// through the kernel's VXLAN device (slow path: told apart by a capture of what each host's
/// VXLAN device sent), the later ones through the fast path (IP ID 0), and the fast path
/// reuses what the kernel chose: the
/// same UDP source port for the flow (within the device's `srcport` range), TTL, ToS, MACs
/// and addresses. Ports differ between flows. Both hosts' outer headers are checked (the
/// capture sees both directions), for UDP flows and a bulk TCP flow (GSO super-packets).
#[test]
fn outer_headers_on_the_wire_are_correct() {
    let lab = overlay(&[]);
    let (h0, h1) = (lab.host(0), lab.host(1));
    let (pa, a) = (netns_of(h0.container_pid("ca")), h0.container_ip("ca", "ov"));
    let pb = netns_of(h1.container_pid("cb"));
    let _echo = Echo::start(&pa, 7101, "");
    let range = src_port_range(h1);
    assert_eq!(src_port_range(h0), range);

    let file = h1.dir.join("underlay.pcap");
    let cap = capture(h1, &h1.netns_path(), lab::UNDERLAY_IF, &file, "udp dst port 4789");
    let sent: Vec<_> = [h0, h1].iter().map(|h| capture_sent(h, &h.netns_path(), "ocvx7", &h.dir.join("vxlan-sent.pcap"), "ip")).collect();
    let before = [stats(h0), stats(h1)];
    // Eight UDP flows (one with DSCP EF and ECT(1)), then 4 MiB of TCP: all new flows.
    let flows: Vec<_> = (0..8).map(|i| udp_client(&pb, if i == 0 { 0xb9 } else { 0 })).collect();
    for f in &flows {
        exchange(f, a, 7101, 30, 300).unwrap();
    }
    tcp_stream(&pa, a, &pb, 5101, 4).unwrap();
    let frames = cap.finish();
    let after = [stats(h0), stats(h1)];
    // What a VXLAN device sent (the inner frame, by its headers): the slow path's packets.
    let identity = |inner: &[u8]| inner[..inner.len().min(54)].to_vec();
    let slow: std::collections::HashSet<Vec<u8>> = sent.into_iter().flat_map(|c| c.finish()).map(|f| identity(&f.data)).collect();

    // Each packet, grouped by sending host and inner flow, in capture order.
    let mut by_flow: std::collections::BTreeMap<(std::net::Ipv4Addr, u8, SocketAddrV4, SocketAddrV4), Vec<Outer>> = Default::default();
    for f in &frames {
        let mut o = Outer::parse(f);
        o.1 = !slow.contains(&identity(&f.data[50..]));
        assert!(o.df(), "DF not set: {o:?}");
        assert_eq!(o.udp_checksum(), 0, "UDP checksum: {o:?}");
        if o.fast() {
            assert_eq!(o.id(), 0, "fast-path packet with IP ID {}: {o:?}", o.id());
        }
        assert_eq!(o.ip_len(), f.len - 14, "IP total length of a {}-byte frame: {o:?}", f.len);
        assert_eq!(o.udp_len(), o.ip_len() - 20, "UDP length: {o:?}");
        assert_eq!(inet_checksum(o.ip()), 0, "IP header checksum: {o:?}");
        assert_eq!((o.dport(), o.vxlan()), (4789, [0x08, 0, 0, 0, 0, 0, 7, 0]), "{o:?}");
        assert!((range.0..range.1).contains(&o.sport()), "source port {} outside [{}, {}): {o:?}", o.sport(), range.0, range.1);
        if let Some((proto, s, d)) = ipv4_flow(&f.data[50..]) {
            by_flow.entry((o.src(), proto, s, d)).or_default().push(o);
        }
    }
    // Fast-path packets are those the egress fast paths counted, no more, no fewer.
    for (i, h) in [h0, h1].iter().enumerate() {
        let hits = counter(&after[i], "egress_fast", "hits") - counter(&before[i], "egress_fast", "hits");
        let fast = by_flow.iter().filter(|(k, _)| k.0 == h.underlay_ip).flat_map(|(_, v)| v).filter(|o| o.fast()).count() as u64;
        assert_eq!(fast, hits, "{}: {fast} captured packets not sent by the VXLAN device, {hits} fast-path hits", h.name);
    }
    let mut udp_ports = std::collections::BTreeSet::new();
    let mut n_flows = 0;
    for ((host, proto, s, d), v) in &by_flow {
        let what = format!("{} {s} > {d} from {host}", if *proto == 6 { "TCP" } else { "UDP" });
        let seen: Vec<(bool, u16)> = v.iter().map(|o| (o.fast(), o.sport())).collect();
        let slow = &v[0];
        assert!(!slow.fast(), "{what}: its first packet was not built by the kernel: {seen:?}");
        assert!(v.iter().any(|o| o.fast()), "{what}: never on the fast path: {seen:?}");
        assert!(v.iter().all(|o| o.sport() == slow.sport()), "{what}: the source port changed (false = kernel VXLAN device, true = fast path): {seen:?}");
        for o in v.iter().filter(|o| o.fast()) {
            assert_eq!(o.header_but_id_df_len(), slow.header_but_id_df_len(), "{what}: the fast path's outer header differs from the kernel's:\n{o:?}\n{slow:?}");
        }
        if *proto == 17 && *host == h1.underlay_ip {
            udp_ports.insert(slow.sport());
        }
        n_flows += 1;
    }
    // 8 UDP flows and 1 TCP connection, each direction.
    assert_eq!(n_flows, 18, "{:?}", by_flow.keys().collect::<Vec<_>>());
    // Eight flows hashed into ~16k ports: a collision is possible but rare.
    assert!(udp_ports.len() >= 7, "the source port barely depends on the flow: {udp_ports:?}");
    lab.finish();
}

/// The `srcport MIN MAX` of a host's VXLAN device: ports in [MIN, MAX).
fn src_port_range(h: &Host) -> (u16, u16) {
    let out = h.sh("ip -d link show ocvx7");
    let w: Vec<&str> = out.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "srcport").unwrap_or_else(|| panic!("no srcport in {out}"));
    (w[i + 1].parse().unwrap(), w[i + 2].parse().unwrap())
}

/// A VXLAN packet as captured: outer Ethernet, IPv4, UDP, VXLAN, then the inner frame; and
/// whether the fast path built it.
struct Outer<'a>(&'a [u8], bool);

impl<'a> Outer<'a> {
    fn parse(f: &'a Frame) -> Outer<'a> {
        let d = &f.data[..];
        assert!(d.len() >= 50 + 14 && d[12..14] == [8, 0] && d[14] == 0x45 && d[23] == 17, "not a plain IPv4/UDP/VXLAN frame: {:02x?}", &d[..d.len().min(64)]);
        Outer(d, false)
    }
    fn ip(&self) -> &[u8] {
        &self.0[14..34]
    }
    fn be16(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }
    fn fast(&self) -> bool {
        self.1
    }
    fn df(&self) -> bool {
        self.0[20] & 0x40 != 0
    }
    fn id(&self) -> u16 {
        self.be16(18)
    }
    fn ip_len(&self) -> usize {
        self.be16(16).into()
    }
    fn src(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(self.0[26], self.0[27], self.0[28], self.0[29])
    }
    fn sport(&self) -> u16 {
        self.be16(34)
    }
    fn dport(&self) -> u16 {
        self.be16(36)
    }
    fn udp_len(&self) -> usize {
        self.be16(38).into()
    }
    fn udp_checksum(&self) -> u16 {
        self.be16(40)
    }
    fn vxlan(&self) -> [u8; 8] {
        self.0[42..50].try_into().unwrap()
    }
    /// MACs, and the IP header without length, ID, flags and checksum: ToS, TTL, protocol,
    /// addresses.
    fn header_but_id_df_len(&self) -> Vec<u8> {
        [&self.0[..14], &self.0[15..16], &self.0[22..24], &self.0[26..34]].concat()
    }
}

impl std::fmt::Debug for Outer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "outer {:02x?} > {:02x?} {} > {} tos {:#04x} ttl {} id {} {} len {} udp {} > {} len {} csum {:#06x} vxlan {:02x?}, inner {}",
            &self.0[6..12],
            &self.0[..6],
            self.src(),
            std::net::Ipv4Addr::new(self.0[30], self.0[31], self.0[32], self.0[33]),
            self.0[15],
            self.0[22],
            self.id(),
            match (self.df(), self.fast()) {
                (true, true) => "DF fast",
                (true, false) => "DF slow",
                (false, true) => "- fast",
                (false, false) => "- slow",
            },
            self.ip_len(),
            self.sport(),
            self.dport(),
            self.udp_len(),
            self.udp_checksum(),
            self.vxlan(),
            describe(&self.0[50..])
        )
    }
}

#[test]
fn doctor_reports_every_feature_present() {
    let out = std::process::Command::new(BIN).args(["doctor", "--json"]).output().unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = checks.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in ["bpf", "btf", "bpffs", "tcx", "netkit", "redirect_peer", "vxlan", "br_netfilter", "iptables"] {
        assert!(names.contains(&n), "doctor lacks {n}: {checks}");
    }
    assert!(out.status.success(), "this machine has everything the fast path needs: {checks}");
    // netkit is optional (oncache links containers with veth): a kernel without it (this
    // machine's has no CONFIG_NETKIT) gets a note, not a failure.
    let text = String::from_utf8_lossy(&std::process::Command::new(BIN).arg("doctor").output().unwrap().stdout).into_owned();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.starts_with("absent  netkit") {
            assert!(lines.next().is_some_and(|n| n.trim_start().starts_with("note: nothing required")), "{text}");
        } else {
            assert!(l.starts_with("ok"), "{text}");
        }
    }
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

/// Endpoints an older oncache attached with filters of their own (a clsact per veth) are
/// bound to the shared blocks by a new daemon and stay on the fast path; blocks that went with
/// their last endpoint get the programs again with the next one.
#[test]
fn endpoints_with_filters_of_their_own_move_to_the_shared_blocks() {
    let mut lab = overlay(&[]);
    let (pa, a) = (netns_of(lab.host(0).container_pid("ca")), lab.host(0).container_ip("ca", "ov"));
    let pb = netns_of(lab.host(1).container_pid("cb"));
    let _echo = Echo::start(&pa, 7103, "");
    let client = udp_client(&pb, 0);
    exchange(&client, a, 7103, 50, 200).unwrap();

    // As oncache attached endpoints before: its two programs as filters of the veth's own.
    lab.host_mut(0).stop_oncache();
    let h0 = lab.host(0);
    let veth = h0.sh("ip -o link | grep -o 'ocve[0-9a-f]*' | head -1").trim().to_string();
    let progs = h0.bpf_dir.join("progs");
    h0.sh(&format!(
        "tc qdisc del dev {veth} clsact && tc qdisc add dev {veth} clsact && \
         tc filter add dev {veth} ingress pref 20291 handle 0x4f43 bpf object-pinned {}/oncache_egress_fast da && \
         tc filter add dev {veth} egress pref 20291 handle 0x4f43 bpf object-pinned {}/oncache_ingress_learn da",
        progs.display(),
        progs.display()
    ));
    assert!(!h0.sh(&format!("tc qdisc show dev {veth} clsact")).contains("ingress_block"));
    let ip1 = lab.host(1).underlay_ip.to_string();
    lab.host_mut(0).start_oncache(&["--peer", &ip1]);
    let h0 = lab.host(0);
    assert_endpoint_programs(h0, &veth);
    let before = counter(&stats(h0), "egress_fast", "hits");
    exchange(&client, a, 7103, 200, 200).unwrap();
    assert!(counter(&stats(h0), "egress_fast", "hits") >= before + 150, "the rebound endpoint left the fast path: {}", stats(h0));

    // The last endpoint goes, and its blocks with it; the next one fills them again.
    h0.docker(&["rm", "-f", "ca"]);
    // ca2 may get ca's address: host 1 forgets ca first, then learns ca2 (below).
    let knows = |ip: Ipv4Addr| {
        let (ip, vtep) = (ip.to_string(), lab.host(0).underlay_ip.to_string());
        cache(lab.host(1))["egress"].as_array().is_some_and(|es| es.iter().any(|e| e["ip"] == ip.as_str() && e["vtep"] == vtep.as_str()))
    };
    lab::wait_for("host 1 to forget ca", Duration::from_secs(10), || (!knows(a)).then_some(()));
    h0.run(&["--name", "ca2", "--network", "ov", lab::IMAGE, "sleep", "1d"]);
    let (pa2, a2) = (netns_of(h0.container_pid("ca2")), h0.container_ip("ca2", "ov"));
    let veth2 = h0.sh("ip -o link | grep -o 'ocve[0-9a-f]*' | head -1").trim().to_string();
    assert_endpoint_programs(h0, &veth2);
    let _echo2 = Echo::start(&pa2, 7104, "");
    // Nothing is flooded: host 1 reaches ca2 once the control plane has told it where ca2 is
    // (an exchange started before that lost its first datagram, 1 run in 3 under load).
    lab::wait_for("host 1 to learn ca2", Duration::from_secs(10), || knows(a2).then_some(()));
    exchange(&client, a2, 7104, 50, 200).unwrap();
    let before = counter(&stats(h0), "egress_fast", "hits");
    exchange(&client, a2, 7104, 200, 200).unwrap();
    assert!(counter(&stats(h0), "egress_fast", "hits") >= before + 150, "a new endpoint after the blocks went is not on the fast path: {}", stats(h0));
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
