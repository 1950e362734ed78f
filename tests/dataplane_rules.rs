//! Rules of the data plane, between two lab hosts (network namespaces, no dockerd), with
//! namespaces standing in for containers plugged in through the plugin API: VLAN-tagged frames
//! and oversize GSO segments take the slow path, outer CE reaches the receiver (RFC 6040), an
//! underlay neighbour change reaches the cached outer headers, and replacing a remote endpoint
//! withdraws its admitted flows at once. Traffic only between addresses in the lab's own
//! namespaces. Container A (10.210.0.10) lives on host 0, container B (10.210.0.20) on host 1.

mod lab;
mod support;

use lab::{Host, Lab};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;
use support::traffic::{
    capture, capture_sent, describe, exchange, in_netns, inet_checksum, ipv4_flow, mac_in, pattern, recv_blocks, send_blocks, send_frames,
    tcp_connect, udp_client, udp_frame, Echo, Frame,
};
use support::*;

const NET: &str = "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d";
const VNI: u32 = 130;
const VXLAN_DEV: &str = "ocvx130";
const A: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 10);
const B: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 20);

fn ep_id(host: usize, i: usize) -> String {
    format!("d{host}{i:02}{:0>60}", 0)
}

/// Two peered hosts with network `NET`, A plugged on host 0 and B on host 1, each host knowing
/// the other's endpoint from the control plane.
struct Pair {
    lab: Lab,
    boxes: Sandboxes,
    /// Namespace paths of A and B.
    a: String,
    b: String,
}

fn pair() -> Pair {
    let mut lab = Lab::new(2);
    let (ip0, ip1) = (lab.host(0).underlay_ip.to_string(), lab.host(1).underlay_ip.to_string());
    lab.host_mut(0).start_oncache(&["--peer", &ip1]);
    lab.host_mut(1).start_oncache(&["--peer", &ip0]);
    for h in lab.hosts() {
        create_network_api(h, NET, VNI, "10.210.0.0/24");
    }
    let mut boxes = Sandboxes::default();
    let a = boxes.plug(lab.host(0), &format!("oc{}a", lab.suffix()), NET, &ep_id(0, 1), &A.to_string());
    let b = boxes.plug(lab.host(1), &format!("oc{}b", lab.suffix()), NET, &ep_id(1, 1), &B.to_string());
    for h in lab.hosts() {
        wait_remotes(h, 1, Duration::from_secs(20));
    }
    Pair { lab, boxes, a, b }
}

impl Pair {
    fn finish(self) {
        drop(self.boxes);
        self.lab.finish();
    }
}

/// How much `program.counter` grew from `before` to `after`.
fn grew(before: &Value, after: &Value, program: &str, c: &str) -> u64 {
    counter(after, program, c) - counter(before, program, c)
}

/// Admits the UDP flow of `sock` to `dst:port` (the slow path sees it both ways), then checks
/// that it runs on the fast path: host 0 sends and host 1 delivers at least 50 packets each.
fn admit_udp(p: &Pair, sock: &UdpSocket, dst: Ipv4Addr, port: u16) {
    exchange(sock, dst, port, 30, 100).expect("admitting the flow");
    let (h0, h1) = (p.lab.host(0), p.lab.host(1));
    let before = [stats(h0), stats(h1)];
    exchange(sock, dst, port, 50, 100).expect("the admitted flow");
    let after = [stats(h0), stats(h1)];
    let (out, delivered) = (grew(&before[0], &after[0], "egress_fast", "hits"), grew(&before[1], &after[1], "ingress_fast", "hits"));
    assert!(out >= 50 && delivered >= 50, "the flow is not on the fast path: {out} egress hits on host 0, {delivered} ingress hits on host 1\n{}\n{}", after[0], after[1]);
}

fn pcap_dir(h: &Host) -> PathBuf {
    let dir = h.dir.join("pcap");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The outer header host `h` cached towards `vtep`, if any.
fn outer_towards(h: &Host, vtep: Ipv4Addr) -> Option<Value> {
    cache(h)["outer"].as_array().unwrap().iter().find(|o| o["vtep"] == vtep.to_string().as_str()).cloned()
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// An outer frame as the fast path writes its IPv4 header: DF set and ID 0. (The kernel's
/// VXLAN devices set DF too, but pick an ID per packet.)
fn fast_path_header(f: &[u8]) -> bool {
    f.len() > 50 && f[14 + 6] & 0x40 != 0 && f[18..20] == [0, 0]
}

// ---- 1. VLAN tags -----------------------------------------------------------------------------

/// 802.1Q / 802.1ad TPIDs.
fn is_tpid(b: &[u8]) -> bool {
    matches!(b, [0x81, 0x00] | [0x88, 0xa8])
}

/// A frame of this file's VLAN test: (case, sequence, the VLAN tags in front of its IPv4
/// header), from the payload text `oncache-vlan<case>-<seq>`.
fn vlan_marker(f: &[u8]) -> Option<(usize, usize, Vec<[u8; 4]>)> {
    let mut off = 12;
    let mut tags = Vec::new();
    while f.len() >= off + 4 && is_tpid(&f[off..off + 2]) {
        tags.push(f[off..off + 4].try_into().unwrap());
        off += 4;
    }
    if f.get(off..off + 2)? != [0x08, 0x00] || *f.get(off + 2 + 9)? != 17 {
        return None;
    }
    let text = std::str::from_utf8(f.get(off + 2 + 20 + 8..)?).ok()?.strip_prefix("oncache-vlan")?;
    let (i, k) = text.split_once('-')?;
    Some((i.parse().ok()?, k.parse().ok()?, tags))
}

/// The frame with `tags` inserted after its MAC addresses (in-band tags, outermost first).
fn with_tags(f: &[u8], tags: &[[u8; 4]]) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    for t in tags {
        out.extend_from_slice(t);
    }
    out.extend_from_slice(&f[12..]);
    out
}

/// A container sends VLAN-tagged frames on an admitted flow (its own source MAC and IP, the
/// remote container's MAC): an 802.1Q tag, a priority tag (VID 0) and 802.1ad + 802.1Q (QinQ),
/// all in-band through a packet socket. The receive path of the host-side veth moves the
/// outermost tag into skb->vlan_tci before tc ingress runs (skb_vlan_untag), so egress_fast sees
/// an offloaded tag (`vlan_present`) for each; with QinQ the 802.1Q tag also stays in-band.
/// (This kernel has no 8021q module, so a VLAN subinterface in the container cannot be made;
/// the untagging on receive yields the same skb state.) None may take the fast path: egress_fast
/// hits stay unchanged for them (its misses count them), every one that leaves host 0 is what the
/// kernel's VXLAN device sent (byte for byte: its own capture), and no outer frame carries a tag
/// (a tag left in skb->vlan_tci by a redirect would be inserted on the outer frame). The same
/// frames untagged (control) do take the fast path, so the method can tell.
#[test]
fn vlan_tagged_frames_take_the_slow_path() {
    let p = pair();
    let (h0, _) = (p.lab.host(0), p.lab.host(1));
    let _echo = Echo::start(&p.b, 7101, "");
    let sock = udp_client(&p.a, 0);
    admit_udp(&p, &sock, B, 7101);
    let src = SocketAddrV4::new(A, sock.local_addr().unwrap().port());
    let dst = SocketAddrV4::new(B, 7101);
    let (mac_a, mac_b) = (mac_in(&p.a, "eth0"), mac_in(&p.b, "eth0"));

    let dir = pcap_dir(h0);
    let cap_ul = capture_sent(h0, &h0.netns_path(), lab::UNDERLAY_IF, &dir.join("underlay.pcap"), "udp dst port 4789 or (vlan and udp dst port 4789)");
    let cap_vx = capture_sent(h0, &h0.netns_path(), VXLAN_DEV, &dir.join("vxlan.pcap"), "udp or vlan");
    let cases: [(&str, Vec<[u8; 4]>); 4] = [
        ("untagged (control)", vec![]),
        ("802.1Q VID 5", vec![[0x81, 0x00, 0x00, 0x05]]),
        ("802.1Q priority tag (PCP 5, VID 0)", vec![[0x81, 0x00, 0xa0, 0x00]]),
        ("802.1ad VID 7 + 802.1Q VID 5 (QinQ)", vec![[0x88, 0xa8, 0x00, 0x07], [0x81, 0x00, 0x00, 0x05]]),
    ];
    const N: usize = 50;
    let mut sent: Vec<Vec<Vec<u8>>> = Vec::new();
    for (i, (what, tags)) in cases.iter().enumerate() {
        let frames: Vec<Vec<u8>> = (0..N).map(|k| with_tags(&udp_frame(mac_a, mac_b, src, dst, format!("oncache-vlan{i}-{k:03}").as_bytes()), tags)).collect();
        let before = stats(h0);
        assert_eq!(send_frames(&p.a, "eth0", frames.clone()), N, "{what}");
        std::thread::sleep(Duration::from_millis(200));
        let after = stats(h0);
        let (hits, misses) = (grew(&before, &after, "egress_fast", "hits"), grew(&before, &after, "egress_fast", "misses"));
        if tags.is_empty() {
            assert!(hits >= N as u64, "{what}: the control frames did not take the fast path ({hits} hits): {after}");
        } else {
            assert_eq!(hits, 0, "{what}: tagged frames took the fast path: {after}");
            // The skb->vlan_present rule saw them (not an unparsed EtherType): the premise holds.
            assert!(misses >= N as u64, "{what}: only {misses} of {N} counted as misses by the VLAN rule: {after}");
        }
        sent.push(frames);
    }
    let (on_wire, via_vxlan) = (cap_ul.finish(), cap_vx.finish());

    let outer_tagged: Vec<String> = on_wire.iter().filter(|f| is_tpid(&f.data[12..14])).map(|f| format!("{:02x?}", &f.data[..f.data.len().min(22)])).collect();
    assert!(outer_tagged.is_empty(), "VLAN tags on outer frames: {outer_tagged:#?}");
    let kernel_sent: HashSet<&[u8]> = via_vxlan.iter().map(|f| &f.data[..]).collect();
    for (i, (what, tags)) in cases.iter().enumerate() {
        let left: Vec<&Frame> = on_wire.iter().filter(|f| f.data.len() > 50 && vlan_marker(&f.data[50..]).is_some_and(|m| m.0 == i)).collect();
        let seqs: HashSet<usize> = left.iter().map(|f| vlan_marker(&f.data[50..]).unwrap().1).collect();
        assert_eq!((left.len(), seqs.len()), (N, N), "{what}: frames that left host 0 (each once)");
        for f in &left {
            let inner = &f.data[50..];
            let from_vxlan_device = kernel_sent.contains(inner);
            if tags.is_empty() {
                assert!(!from_vxlan_device && fast_path_header(&f.data), "{what}: a control frame not from the fast path: {}", describe(inner));
            } else {
                assert!(from_vxlan_device, "{what}: a frame left host 0 that the VXLAN device did not send (outer IP ID {}): {:02x?}", u16::from_be_bytes([f.data[18], f.data[19]]), &inner[..inner.len().min(26)]);
                // The slow path carries the frame as the container sent it, tags inside the tunnel.
                let k = vlan_marker(inner).unwrap().1;
                assert_eq!(inner, &sent[i][k][..], "{what}: frame {k} changed on the slow path");
            }
        }
    }
    p.finish();
}

// ---- 2. ECN -----------------------------------------------------------------------------------

/// `ip -s -s` RX frame errors of `dev` on host `h` (where the VXLAN device counts RFC 6040
/// drops).
fn rx_frame_errors(h: &Host, dev: &str) -> u64 {
    let v: Value = serde_json::from_str(&h.sh(&format!("ip -j -s -s link show dev {dev}"))).unwrap();
    v[0]["stats64"]["rx"]["frame_errors"].as_u64().unwrap_or_else(|| panic!("no rx frame_errors for {dev}: {v}"))
}

/// Frames of an inner UDP flow from source port `sport` in a capture of outer VXLAN frames.
fn outer_frames_of(frames: &[Frame], sport: u16) -> Vec<&Frame> {
    frames.iter().filter(|f| f.data.len() > 50 && matches!(ipv4_flow(&f.data[50..]), Some((17, s, _)) if s.port() == sport)).collect()
}

/// Congestion marked on the underlay: the switch between the hosts sets CE in the outer header
/// of every VXLAN packet to host 1 (iptables TOS `--or-tos 0x03` on the bridged traffic of the
/// lab's switch; tc pedit is not in this kernel, and fast-path packets cross no netfilter hook
/// on host 0). An admitted ECT(0) flow A → B keeps its fast path and B receives CE (0x03) with a
/// valid IP checksum; an admitted Not-ECT flow under outer CE is not delivered by the fast path
/// (host 1's ingress_fast hits unchanged) and the kernel's VXLAN device drops it, as RFC 6040
/// says (its RX frame errors count them); without the marking it flows again.
#[test]
fn outer_ce_reaches_ect_packets_and_not_ect_goes_to_the_kernel() {
    let p = pair();
    let h1 = p.lab.host(1);
    let _echo = Echo::start(&p.b, 7201, "");
    let (ect, not_ect) = (udp_client(&p.a, 0x02), udp_client(&p.a, 0x00));
    admit_udp(&p, &ect, B, 7201);
    admit_udp(&p, &not_ect, B, 7201);
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();

    let rule = format!("FORWARD -d {} -p udp --dport 4789 -j TOS --or-tos 0x03", h1.underlay_ip);
    p.lab.switch_sh(&format!("echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables && iptables -w -t mangle -A {rule}"));
    let dir = pcap_dir(h1);

    // ECT(0): CE reaches B, on the fast path.
    let cap_b = capture(h1, &p.b, "eth0", &dir.join("at-b.pcap"), "udp dst port 7201");
    let cap_ul = capture(h1, &h1.netns_path(), lab::UNDERLAY_IF, &dir.join("ect-underlay.pcap"), "udp dst port 4789");
    let before = stats(h1);
    exchange(&ect, B, 7201, 50, 200).expect("ECT(0) flow under outer CE");
    let after = stats(h1);
    let (at_b, on_ul) = (cap_b.finish(), cap_ul.finish());
    let outer = outer_frames_of(&on_ul, port(&ect));
    assert_eq!(outer.len(), 50, "ECT(0) packets arriving at host 1");
    assert!(outer.iter().all(|f| f.data[15] & 3 == 3), "the switch did not mark CE: outer ToS {:?}", outer.iter().map(|f| f.data[15]).collect::<Vec<_>>());
    let hits = grew(&before, &after, "ingress_fast", "hits");
    assert!(hits >= 50, "host 1 delivered only {hits} of 50 CE-marked ECT(0) packets on the fast path: {after}");
    let got: Vec<&Frame> = at_b.iter().filter(|f| matches!(ipv4_flow(&f.data), Some((17, s, _)) if s.port() == port(&ect))).collect();
    assert_eq!(got.len(), 50, "ECT(0) datagrams seen by B");
    for f in &got {
        assert_eq!(f.data[15], 0x03, "B received ToS {:#04x}, not CE: {}", f.data[15], describe(&f.data));
        assert_eq!(inet_checksum(&f.data[14..34]), 0, "IP checksum wrong after CE was set: {}", describe(&f.data));
    }

    // Not-ECT under outer CE: not delivered by the fast path; the kernel drops it.
    let cap_ul = capture(h1, &h1.netns_path(), lab::UNDERLAY_IF, &dir.join("not-ect-underlay.pcap"), "udp dst port 4789");
    let (before, errors_before) = (stats(h1), rx_frame_errors(h1, VXLAN_DEV));
    const M: usize = 20;
    for k in 0..M {
        not_ect.send_to(&pattern(k as u64, 200), (B, 7201)).unwrap();
    }
    not_ect.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 2048];
    let mut answered = 0;
    while not_ect.recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    let (after, errors_after) = (stats(h1), rx_frame_errors(h1, VXLAN_DEV));
    let on_ul = cap_ul.finish();
    let outer = outer_frames_of(&on_ul, port(&not_ect));
    assert_eq!(outer.len(), M, "Not-ECT packets arriving at host 1");
    assert!(outer.iter().all(|f| f.data[15] & 3 == 3), "the switch did not mark CE: outer ToS {:?}", outer.iter().map(|f| f.data[15]).collect::<Vec<_>>());
    assert_eq!(grew(&before, &after, "ingress_fast", "hits"), 0, "the fast path delivered Not-ECT packets that arrived with outer CE: {after}");
    assert!(grew(&before, &after, "ingress_fast", "misses") >= M as u64, "Not-ECT + outer CE not handed to the slow path as misses: {after}");
    assert_eq!(answered, 0, "the kernel delivered Not-ECT packets that arrived with outer CE (RFC 6040 says drop)");
    assert!(errors_after - errors_before >= M as u64, "{VXLAN_DEV} on host 1 counted {} RFC 6040 drops (rx frame errors) of {M}", errors_after - errors_before);

    p.lab.switch_sh(&format!("iptables -w -t mangle -D {rule} && echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables"));
    not_ect.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    exchange(&not_ect, B, 7201, 20, 100).expect("the Not-ECT flow once the underlay stops marking CE");
    p.finish();
}

// ---- 3. Oversize GSO ----------------------------------------------------------------------------


/// Turns TCP segmentation offload of `ifname` in the namespace at `ns` on or off (the legacy
/// ethtool ioctls: the machine has no ethtool), and checks that it took.
fn set_tso(ns: &str, ifname: &str, on: bool) {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GTSO: u32 = 0x1e;
    const ETHTOOL_STSO: u32 = 0x1f;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let name = ifname.to_string();
    in_netns(ns, move || {
        let call = |cmd: u32, data: u32| -> u32 {
            let mut v = EthtoolValue { cmd, data };
            let mut r = IfReq { name: [0; libc::IFNAMSIZ], data: &mut v, _pad: [0; 16] };
            r.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: an ethtool ioctl on a socket of our own, with a valid ifreq and value.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
                let rc = libc::ioctl(fd, SIOCETHTOOL, &mut r as *mut IfReq);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                assert_eq!(rc, 0, "ethtool command {cmd:#x} on {name}: {err}");
            }
            v.data
        };
        call(ETHTOOL_STSO, on as u32);
        assert_eq!(call(ETHTOOL_GTSO, 0), on as u32, "TSO of {name} not {}", if on { "on" } else { "off" });
    })
    .join()
    .unwrap();
}

/// The underlay MTU of host 0 drops below what the network was made for (ul0 1500 → 1400
/// while the VXLAN device and A keep 1450): A's TCP segments (MSS 1398, 1500-byte outer
/// packets) no longer fit. TSO goes off on ul0, so every GSO packet is segmented before it
/// reaches ul0 and the capture there shows frames as a NIC would send them. A 16 MiB
/// transfer A → B still arrives intact (every byte checked), egress_fast rejects the oversize
/// GSO packets (to the slow path, whose VXLAN device tells A the path MTU), no frame larger than
/// the underlay MTU leaves host 0, and once A's segments fit the flow is on the fast path again.
#[test]
fn oversize_gso_segments_take_the_slow_path() {
    let p = pair();
    let h0 = p.lab.host(0);
    // A connects to a listener in B: (A's end, B's end).
    let (mut at_a, mut at_b) = tcp_connect(&p.b, B, &p.a, 5301).expect("connect");
    let mut push = |blocks: std::ops::Range<u64>| {
        std::thread::scope(|s| {
            let r = s.spawn(|| recv_blocks(&mut at_b, blocks.clone()));
            send_blocks(&mut at_a, blocks.clone()).expect("sending");
            r.join().unwrap()
        })
        .expect("the transfer arrives intact")
    };
    let before = stats(h0);
    push(0..8);
    let after = stats(h0);
    assert!(grew(&before, &after, "egress_fast", "hits") >= 20, "the transfer is not on the fast path before the MTU change: {after}");

    const MTU: usize = 1400;
    h0.sh(&format!("ip link set dev {} mtu {MTU}", lab::UNDERLAY_IF));
    set_tso(&h0.netns_path(), lab::UNDERLAY_IF, false);
    let cap = support::traffic::capture_with(h0, &h0.netns_path(), lab::UNDERLAY_IF, &pcap_dir(h0).join("underlay.pcap"), "udp dst port 4789", "out", 128);
    let before = stats(h0);
    push(8..24);
    let after = stats(h0);
    let frames = cap.finish();
    let big: Vec<String> = frames.iter().filter(|f| f.len > MTU + 14).take(5).map(|f| format!("{} bytes, outer IP ID {}, fast-path header {}", f.len, u16::from_be_bytes([f.data[18], f.data[19]]), fast_path_header(&f.data))).collect();
    let n_big = frames.iter().filter(|f| f.len > MTU + 14).count();
    assert!(big.is_empty(), "{n_big} of {} frames larger than the underlay MTU {MTU} left host 0, e.g. {big:#?}\n{after}", frames.len());
    let rejected = grew(&before, &after, "egress_fast", "rejected");
    assert!(rejected >= 1, "no oversize GSO packet was rejected by egress_fast: {after}");
    let hits = grew(&before, &after, "egress_fast", "hits");
    assert!(hits >= 20, "the flow did not return to the fast path with segments that fit ({hits} hits, {rejected} rejected): {after}");
    eprintln!("16 MiB at underlay MTU {MTU}: {rejected} GSO packets rejected, {hits} fast-path hits, {} frames on ul0", frames.len());
    drop((at_a, at_b));
    p.finish();
}

// ---- 4. Neighbour change ------------------------------------------------------------------------

/// Host 1's underlay MAC changes while an admitted UDP flow A ↔ B runs on the fast path: host 1
/// sets `ul0` to a new address with `arp_notify` on, so its kernel flushes its own neighbour
/// entries and sends a gratuitous ARP, and host 0's neighbour entry takes the new MAC. Each
/// daemon drops its cached outer headers; the next slow-path packet teaches the new ones: the
/// flow keeps delivering and returns to the fast path, every VXLAN frame host 0 sends to host 1
/// from then on carries the new MAC, `cache list` on host 0 shows it as the outer entry's
/// dst_mac, and host 1's outer header towards host 0 carries it as src_mac.
#[test]
fn an_underlay_neighbour_change_reaches_the_outer_headers() {
    neighbour_change(false);
}

/// The same after both daemons restarted with the flow in place (as an upgrade does): the
/// neighbour entries and the cached outer headers outlive the daemons, what a daemon noted of
/// the neighbours before does not.
#[test]
fn an_underlay_neighbour_change_after_a_daemon_restart_reaches_the_outer_headers() {
    neighbour_change(true);
}

fn neighbour_change(restart: bool) {
    let mut p = pair();
    let _echo = Echo::start(&p.b, 7401, "");
    let sock = udp_client(&p.a, 0);
    admit_udp(&p, &sock, B, 7401);
    if restart {
        for i in 0..2 {
            p.lab.host_mut(i).restart_oncache();
        }
        for h in p.lab.hosts() {
            wait_remotes(h, 1, Duration::from_secs(20));
        }
        // A peer seen mid-restart can withdraw the flow for a moment (its remote entries go
        // and come back, within a few gossip rounds): admitted again if so.
        std::thread::sleep(Duration::from_secs(2));
        admit_udp(&p, &sock, B, 7401);
    }
    let (h0, h1) = (p.lab.host(0), p.lab.host(1));
    let old = fmt_mac(mac_in(&h1.netns_path(), lab::UNDERLAY_IF));
    let o = outer_towards(h0, h1.underlay_ip).expect("an outer header towards host 1");
    assert_eq!(o["dst_mac"], old.as_str(), "{o}");

    const NEW: &str = "02:00:5e:10:00:02";
    h1.sh(&format!("echo 1 > /proc/sys/net/ipv4/conf/{0}/arp_notify && ip link set dev {0} address {NEW}", lab::UNDERLAY_IF));
    lab::wait_for("host 0's neighbour entry for host 1 to take the new MAC (gratuitous ARP)", Duration::from_secs(5), || {
        h0.sh(&format!("ip neigh show {} dev {}", h1.underlay_ip, lab::UNDERLAY_IF)).contains(NEW).then_some(())
    });
    let dropped = lab::try_wait_for(Duration::from_secs(5), || outer_towards(h0, h1.underlay_ip).is_none_or(|o| o["dst_mac"] == NEW).then_some(()));
    assert!(dropped.is_some(), "host 0 kept its outer header to host 1's old MAC after the neighbour changed: {:?}", outer_towards(h0, h1.underlay_ip));

    let cap = capture_sent(h0, &h0.netns_path(), lab::UNDERLAY_IF, &pcap_dir(h0).join("underlay.pcap"), &format!("udp dst port 4789 and dst host {}", h1.underlay_ip));
    exchange(&sock, B, 7401, 20, 100).expect("the flow keeps delivering after the change");
    let before = stats(h0);
    exchange(&sock, B, 7401, 50, 100).unwrap();
    let after = stats(h0);
    let frames = cap.finish();
    let hits = grew(&before, &after, "egress_fast", "hits");
    assert!(hits >= 50, "the flow did not return to the fast path ({hits} hits): {after}\n{}", cache(h0));
    let o = outer_towards(h0, h1.underlay_ip).expect("an outer header towards host 1");
    assert_eq!(o["dst_mac"], NEW, "{o}");
    let mac = |f: &Frame| fmt_mac(f.data[..6].try_into().unwrap());
    let stale: Vec<String> = frames.iter().filter(|f| mac(f) != NEW).take(5).map(|f| format!("to {} fast-path header {}", mac(f), fast_path_header(&f.data))).collect();
    assert!(frames.len() >= 70 && stale.is_empty(), "{} frames to host 1 after the change, some not to its new MAC: {stale:#?}", frames.len());
    assert!(frames.iter().filter(|f| fast_path_header(&f.data)).count() >= 50, "fast-path frames to host 1 after the change");
    let o1 = outer_towards(h1, h0.underlay_ip).expect("host 1's outer header towards host 0");
    assert_eq!(o1["src_mac"], NEW, "host 1 still sends from its old MAC: {o1}");
    p.finish();
}

// ---- 5. Entry generations -------------------------------------------------------------------------

/// Like [`Sandboxes::plug`], with the MAC given in `Interface.MacAddress` (as dockerd does for
/// `--mac-address`).
fn plug_with_mac(boxes: &mut Sandboxes, h: &Host, name: &str, ep: &str, addr: &str, mac: &str) -> String {
    let (code, v) = call(h, "NetworkDriver.CreateEndpoint", json!({"NetworkID": NET, "EndpointID": ep, "Interface": {"Address": format!("{addr}/24"), "MacAddress": mac}}));
    assert_eq!(code, 200, "{}: CreateEndpoint: {v}", h.name);
    let (code, v) = call(h, "NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": ep, "SandboxKey": format!("/run/netns/{name}")}));
    assert_eq!(code, 200, "{}: Join: {v}", h.name);
    let src = v["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
    boxes.0.push(name.to_string());
    lab::wait_for("netns add", Duration::from_secs(5), || std::process::Command::new("ip").args(["netns", "add", name]).status().ok().filter(|s| s.success()));
    h.sh(&format!(
        "ip link set {src} netns {name} && ip -n {name} link set {src} name eth0 && ip -n {name} addr add {addr}/24 dev eth0 && ip -n {name} link set eth0 up && ip -n {name} link set lo up"
    ));
    format!("/run/netns/{name}")
}

/// B is replaced on host 1 by an endpoint with the same address and another MAC (Leave +
/// DeleteEndpoint, then CreateEndpoint with `MacAddress` + Join) while A's admitted UDP flow to
/// it runs on the fast path. Once host 0 has heard (its egress entry names the new MAC), the
/// flow is withdrawn at once: A, still addressing the old MAC, gets nothing onto the underlay
/// by either path (no fast-path hit, no VXLAN frame to the old MAC); and when A addresses the new
/// MAC, its first packet is not a fast-path hit either (the flow must be admitted anew, under
/// the new entry's generation). After that the flow is admitted again and answered by the new
/// endpoint on the fast path.
#[test]
fn a_replaced_remote_endpoint_withdraws_its_flows_at_once() {
    let mut p = pair();
    let (h0, h1) = (p.lab.host(0), p.lab.host(1));
    let sock = udp_client(&p.a, 0);
    let old_mac = mac_in(&p.b, "eth0");
    {
        let _old = Echo::start(&p.b, 7501, "old:");
        admit_udp(&p, &sock, B, 7501);
    }
    for m in ["NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"] {
        let (code, v) = call(h1, m, json!({"NetworkID": NET, "EndpointID": ep_id(1, 1)}));
        assert_eq!(code, 200, "{m}: {v}");
    }
    const NEW: &str = "02:00:5e:10:00:20";
    let name = format!("oc{}b2", p.lab.suffix());
    let b2 = plug_with_mac(&mut p.boxes, h1, &name, &ep_id(1, 2), &B.to_string(), NEW);
    assert_eq!(fmt_mac(mac_in(&b2, "eth0")), NEW);
    let _new = Echo::start(&b2, 7501, "new:");
    lab::wait_for("host 0 to hear of the new endpoint", Duration::from_secs(20), || {
        cache(h0)["egress"].as_array().unwrap().iter().any(|e| e["ip"] == B.to_string().as_str() && e["mac"] == NEW).then_some(())
    });

    // A still addresses the old MAC (its ARP entry): nothing of it leaves host 0.
    let cap = capture_sent(h0, &h0.netns_path(), lab::UNDERLAY_IF, &pcap_dir(h0).join("underlay.pcap"), "udp dst port 4789");
    let before = stats(h0);
    for k in 0..20u64 {
        sock.send_to(&pattern(k, 100), (B, 7501)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = stats(h0);
    let frames = cap.finish();
    assert_eq!(grew(&before, &after, "egress_fast", "hits"), 0, "packets to the replaced endpoint's old MAC took the fast path: {after}");
    let to_old: Vec<String> = frames.iter().filter(|f| f.data.len() > 56 && f.data[50..56] == old_mac).map(|f| describe(&f.data[50..])).collect();
    assert!(to_old.is_empty(), "frames to the old MAC left host 0: {to_old:#?}");

    // A's ARP entry is replaced (as its expiry would): the first packet to the new MAC is not
    // on the fast path; then the flow is admitted under the new generation.
    std::process::Command::new("ip").args(["-n", &format!("oc{}a", p.lab.suffix()), "neigh", "flush", "dev", "eth0"]).status().unwrap();
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while sock.recv_from(&mut buf).is_ok() {} // nothing should be queued; drain to be sure
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let before = stats(h0);
    let tags = exchange(&sock, B, 7501, 1, 100).expect("the new endpoint answers");
    let after = stats(h0);
    assert_eq!(tags, ["new:"]);
    assert_eq!(grew(&before, &after, "egress_fast", "hits"), 0, "the first packet to the new endpoint took the fast path under the old admission: {after}");
    let tags = exchange(&sock, B, 7501, 30, 100).unwrap();
    assert!(tags.iter().all(|t| t == "new:"), "{tags:?}");
    let before = [stats(h0), stats(h1)];
    exchange(&sock, B, 7501, 50, 100).unwrap();
    let after = [stats(h0), stats(h1)];
    let (out, delivered) = (grew(&before[0], &after[0], "egress_fast", "hits"), grew(&before[1], &after[1], "ingress_fast", "hits"));
    assert!(out >= 50 && delivered >= 50, "not admitted again: {out} egress hits on host 0, {delivered} ingress hits on host 1\n{}", cache(h0));
    p.finish();
}
