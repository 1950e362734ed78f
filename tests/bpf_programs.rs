//! The fast-path programs themselves against crafted and malformed frames. BPF_PROG_TEST_RUN
//! runs a pinned program on a frame without sending it anywhere and returns its verdict and
//! the frame as the program left it. Two lab hosts with a fast network and an admitted UDP flow
//! and TCP connection between two namespaces standing in for containers, so that the caches
//! hold what real traffic put there; then each program gets the flows' own frames (the fast
//! programs must redirect them, rewritten exactly as the slow path would have) and thousands of
//! truncated, bit-flipped, restructured and random ones: never redirected, and handed on
//! untouched. A TCP SYN, FIN or RST is never redirected and ends the connection's admission.
//!
//! A frame counts as malformed when the kernel's slow path would drop it (bad IPv4 checksum or
//! lengths, options, fragments, a VXLAN header with flags other than "VNI present", an outer
//! UDP checksum, a frame not addressed to the host) or when it is simply not this flow's.
//! Bit flips in fields the slow path does not check (the outer source MAC and UDP source port,
//! the inner UDP checksum, the payload) are allowed either verdict.

mod lab;
mod support;

use lab::Lab;
use oncache_common::{ADMIT_MARK, PROG_EGRESS_FAST, PROG_EGRESS_LEARN, PROG_INGRESS_FAST, PROG_INGRESS_LEARN, VXLAN_PORT};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;
use support::traffic::{exchange, in_netns, inet_checksum, mac_in, tcp_connect, tcp_frame, udp_frame, Echo, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use support::{counter, create_network_api, egress_slot_and_gen, gen_in_slot, set_gen_in_slot, stats, wait_remotes, Sandboxes};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const VNI: u32 = 320;
const CLIENT_PORT: u16 = 40320;
const ECHO_PORT: u16 = 7320;
const TCP_PORT: u16 = 7321;

/// A pinned program, opened with BPF_OBJ_GET.
struct Prog {
    fd: OwnedFd,
    name: String,
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(cmd: i64, attr: &mut T) -> Result<i64, std::io::Error> {
    // SAFETY: the bpf syscall with an attribute struct of the command's layout and its size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Prog {
    fn open(bpf_dir: &Path, name: &str) -> Prog {
        const BPF_OBJ_GET: i64 = 7;
        let path = std::ffi::CString::new(bpf_dir.join("progs").join(name).to_string_lossy().as_bytes()).unwrap();
        let mut a = ObjGetAttr { pathname: path.as_ptr() as u64, ..Default::default() };
        let fd = bpf(BPF_OBJ_GET, &mut a).unwrap_or_else(|e| panic!("BPF_OBJ_GET {path:?}: {e}"));
        // SAFETY: a new descriptor the kernel just returned, owned here only.
        Prog { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) }, name: name.into() }
    }

    /// Runs the program once on `frame` as if it arrived on `ifindex` with `mark`; its verdict
    /// and the frame as it left it. Must run in the namespace `ifindex` belongs to.
    fn run(&self, frame: &[u8], ifindex: u32, mark: u32) -> (u32, Vec<u8>) {
        self.try_run(frame, ifindex, mark).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {} on {} bytes: {e}", self.name, frame.len()))
    }

    fn try_run(&self, frame: &[u8], ifindex: u32, mark: u32) -> Result<(u32, Vec<u8>), std::io::Error> {
        const BPF_PROG_TEST_RUN: i64 = 10;
        // struct __sk_buff up to ifindex: mark is word 2, ifindex word 10; the rest zero.
        let mut ctx = [0u32; 11];
        ctx[2] = mark;
        ctx[10] = ifindex;
        let mut out = vec![0u8; frame.len() + 256];
        let mut a = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ctx_size_in: std::mem::size_of_val(&ctx) as u32,
            ctx_in: ctx.as_ptr() as u64,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut a)?;
        out.truncate(a.data_size_out as usize);
        Ok((a.retval, out))
    }
}

fn ifindex(ns: &str, name: &str) -> u32 {
    let out = std::process::Command::new("nsenter").arg(format!("--net={ns}")).args(["ip", "-j", "link", "show", "dev", name]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("ip -j link {name} in {ns}: {out:?}"));
    v[0]["ifindex"].as_u64().unwrap_or_else(|| panic!("no ifindex for {name}: {v}")) as u32
}

/// Sets a 20-byte IPv4 header's checksum.
fn fix_ipv4_checksum(h: &mut [u8]) {
    h[10..12].copy_from_slice(&[0, 0]);
    let c = inet_checksum(&h[..20]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The VXLAN frame host `from` would send host `to` for `inner`.
fn vxlan_frame(to_mac: [u8; 6], from_mac: [u8; 6], from: Ipv4Addr, to: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(50 + inner.len());
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&from_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + 8 + inner.len()) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&to.octets());
    fix_ipv4_checksum(&mut ip);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&50_000u16.to_be_bytes());
    f.extend_from_slice(&VXLAN_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + 8 + inner.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    let v = VNI.to_be_bytes();
    f.extend_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
    f.extend_from_slice(inner);
    f
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Malformed versions of `frame` whose IPv4 header starts at `ip`: every truncation, the IPv4
/// header with options, as a fragment, VLAN-tagged, as IPv6; each named.
fn restructured(frame: &[u8], ip: usize) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    // BPF_PROG_TEST_RUN wants more than an Ethernet header.
    for len in 15..frame.len() {
        v.push((format!("truncated to {len} bytes"), frame[..len].to_vec()));
    }
    // Options: a 24-byte header (4 NOPs), lengths and checksum right.
    let mut o = frame[..ip].to_vec();
    let mut hdr = frame[ip..ip + 20].to_vec();
    hdr[0] = 0x46;
    let tot = u16::from_be_bytes([hdr[2], hdr[3]]) + 4;
    hdr[2..4].copy_from_slice(&tot.to_be_bytes());
    hdr.extend_from_slice(&[1, 1, 1, 1]);
    hdr[10..12].copy_from_slice(&[0, 0]);
    let c = inet_checksum(&hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
    o.extend_from_slice(&hdr);
    o.extend_from_slice(&frame[ip + 20..]);
    v.push(("IPv4 options".into(), o));
    for (what, frag) in [("first fragment (MF)", [0x20u8, 0x00]), ("later fragment", [0x00, 0x10])] {
        let mut f = frame.to_vec();
        f[ip + 6..ip + 8].copy_from_slice(&frag);
        fix_ipv4_checksum(&mut f[ip..]);
        v.push((what.into(), f));
    }
    let mut vlan = frame[..ip - 2].to_vec();
    vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    vlan.extend_from_slice(&frame[ip - 2..]);
    v.push(("VLAN tag".into(), vlan));
    let mut v6 = frame.to_vec();
    v6[ip - 2..ip].copy_from_slice(&[0x86, 0xdd]);
    v.push(("IPv6 ethertype".into(), v6));
    v
}

/// Runs `p` on every frame; returns the verdicts (None: BPF_PROG_TEST_RUN itself refuses the
/// frame, which it does for an IPv4 ethertype with less than a whole IPv4 header after the
/// Ethernet header, 34 bytes). A frame the program passes must come back exactly as it went in.
fn run_all(p: &Prog, frames: &[(String, Vec<u8>)], ifindex: u32, mark: u32) -> Vec<Option<u32>> {
    frames
        .iter()
        .map(|(what, f)| {
            let (ret, out) = match p.try_run(f, ifindex, mark) {
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && f.len() < 34 => return None,
                Err(e) => panic!("BPF_PROG_TEST_RUN {}: {what}: {e}", p.name),
            };
            if ret != TC_ACT_REDIRECT {
                assert_eq!(ret, TC_ACT_OK, "{}: {what}: verdict {ret}", p.name);
                assert!(&out == f, "{}: {what}: passed, but changed", p.name);
            }
            Some(ret)
        })
        .collect()
}

/// Every single-bit flip of bytes `range` of `frame`, except in `allowed` (fields the slow path
/// does not check either).
fn flips(frame: &[u8], range: std::ops::Range<usize>, allowed: &[std::ops::Range<usize>]) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for i in range.filter(|i| !allowed.iter().any(|r| r.contains(i))) {
        for bit in 0..8 {
            let mut f = frame.to_vec();
            f[i] ^= 1 << bit;
            v.push((format!("byte {i} bit {bit} flipped"), f));
        }
    }
    v
}

/// `n` random frames; half begin with up to `max_keep` bytes of `like` (so that parsing gets
/// further in), always short of its ports: what follows is random, so the frame is not the
/// flow's (a random IPv4 checksum or 32 random port bits matching is far beyond a test's odds).
fn random_frames(rng: &mut Rng, n: usize, like: &[u8], max_keep: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|k| {
            let len = 15 + (rng.next() % 180) as usize;
            let keep = if k % 2 == 0 { (rng.next() as usize) % (max_keep + 1).min(len) } else { 0 };
            let f: Vec<u8> = (0..len).map(|i| if i < keep { like[i] } else { rng.next() as u8 }).collect();
            (format!("random frame {k} ({len} bytes, {keep} kept)"), f)
        })
        .collect()
}

/// `n` 64-byte round trips over a connection (client writes, server echoes).
fn round_trips(c: &mut std::net::TcpStream, s: &mut std::net::TcpStream, n: usize) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 64];
    for i in 0..n {
        c.write_all(&[i as u8; 64]).unwrap();
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        c.read_exact(&mut buf).unwrap();
    }
}

#[test]
fn programs_redirect_only_the_flows_own_well_formed_frames() {
    let mut lab = Lab::new(2);
    let (ip0, ip1) = (lab.host(0).underlay_ip, lab.host(1).underlay_ip);
    lab.host_mut(0).start_oncache(&["--peer", &ip1.to_string()]);
    lab.host_mut(1).start_oncache(&["--peer", &ip0.to_string()]);
    let (h0, h1) = (lab.host(0), lab.host(1));
    let net = format!("{VNI:0>64}");
    let mut boxes = Sandboxes::default();
    let (a, b) = (Ipv4Addr::new(10, 209, 0, 2), Ipv4Addr::new(10, 209, 0, 3));
    let (ep0, ep1) = (format!("a{:0>63}", 1), format!("b{:0>63}", 2));
    create_network_api(h0, &net, VNI, "10.209.0.0/24");
    create_network_api(h1, &net, VNI, "10.209.0.0/24");
    let ns0 = boxes.plug(h0, &format!("oc{}pa", lab.suffix()), &net, &ep0, &a.to_string());
    let ns1 = boxes.plug(h1, &format!("oc{}pb", lab.suffix()), &net, &ep1, &b.to_string());
    for h in [h0, h1] {
        wait_remotes(h, 1, Duration::from_secs(20));
    }

    // The flow a:CLIENT_PORT <-> b:ECHO_PORT, admitted both ways and on the fast path.
    let _echo = Echo::start(&ns1, ECHO_PORT, "");
    let client = in_netns(&ns0, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, CLIENT_PORT)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
    .join()
    .unwrap();
    exchange(&client, b, ECHO_PORT, 50, 64).expect("the flow over the slow path");
    let hits = |h| counter(&stats(h), "egress_fast", "hits");
    let before = hits(h0);
    exchange(&client, b, ECHO_PORT, 50, 64).expect("the flow over the fast path");
    assert!(hits(h0) >= before + 40, "the flow is not on the fast path: {}", stats(h0));

    // A TCP connection a -> b:TCP_PORT, on the fast path after a few round trips.
    let (mut tc, mut ts) = tcp_connect(&ns1, b, &ns0, TCP_PORT).expect("TCP connection");
    let tcp_a = tc.local_addr().unwrap().port();
    let before = hits(h0);
    round_trips(&mut tc, &mut ts, 50);
    assert!(hits(h0) >= before + 40, "the TCP connection is not on the fast path: {}", stats(h0));

    let (mac_a, mac_b) = (mac_in(&ns0, "eth0"), mac_in(&ns1, "eth0"));
    let payload: Vec<u8> = (0..64u8).collect();
    let out_frame = udp_frame(mac_a, mac_b, SocketAddrV4::new(a, CLIENT_PORT), SocketAddrV4::new(b, ECHO_PORT), &payload);
    let in_inner = udp_frame(mac_b, mac_a, SocketAddrV4::new(b, ECHO_PORT), SocketAddrV4::new(a, CLIENT_PORT), &payload);
    let ul_mac0 = mac_in(&h0.netns_path(), lab::UNDERLAY_IF);
    let ul_mac1 = mac_in(&h1.netns_path(), lab::UNDERLAY_IF);
    let in_frame = vxlan_frame(ul_mac0, ul_mac1, ip1, ip0, &in_inner);
    let (tcp_src, tcp_dst) = (SocketAddrV4::new(a, tcp_a), SocketAddrV4::new(b, TCP_PORT));
    let segment = move |flags: u8| tcp_frame(mac_a, mac_b, tcp_src, tcp_dst, flags, 1000, &[9; 64]);
    let tcp_out = segment(TCP_ACK | TCP_PSH);
    let tcp_in_inner = tcp_frame(mac_b, mac_a, tcp_dst, tcp_src, TCP_ACK | TCP_PSH, 2000, &[9; 64]);
    let tcp_in = vxlan_frame(ul_mac0, ul_mac1, ip1, ip0, &tcp_in_inner);
    let veth0 = ifindex(&h0.netns_path(), &format!("ocve{}", &ep0[..11]));
    let ul0 = ifindex(&h0.netns_path(), lab::UNDERLAY_IF);
    let bpf_dir = h0.bpf_dir.clone();
    let (stale_out, stale_in, stale_dir) = (out_frame.clone(), in_frame.clone(), bpf_dir.clone());

    let report = in_netns(&h0.netns_path(), move || {
        let egress = Prog::open(&bpf_dir, PROG_EGRESS_FAST);
        let ingress = Prog::open(&bpf_dir, PROG_INGRESS_FAST);
        let learners = [Prog::open(&bpf_dir, PROG_EGRESS_LEARN), Prog::open(&bpf_dir, PROG_INGRESS_LEARN)];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

        // The real frames: redirected, and rewritten exactly.
        let (ret, out) = egress.run(&out_frame, veth0, 0);
        assert_eq!(ret, TC_ACT_REDIRECT, "egress_fast did not redirect the flow's own frame");
        assert_eq!(out.len(), out_frame.len() + 50);
        assert_eq!(&out[50..], &out_frame[..], "the inner frame changed");
        assert_eq!(&out[0..6], &ul_mac1, "outer destination MAC: the next hop towards host 1");
        assert_eq!(&out[26..30], &ip0.octets());
        assert_eq!(&out[30..34], &ip1.octets());
        assert_eq!(u16::from_be_bytes([out[36], out[37]]), VXLAN_PORT);
        assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 1, 0x40, 0], "VXLAN header with VNI {VNI}");
        assert_eq!(inet_checksum(&out[14..34]), 0, "outer IPv4 checksum");
        let (ret, out) = ingress.run(&in_frame, ul0, 0);
        assert_eq!(ret, TC_ACT_REDIRECT, "ingress_fast did not redirect the flow's own frame");
        assert_eq!(out, in_inner, "decapsulation is not exactly the inner frame");

        // Malformed and foreign frames: never redirected, passed untouched.
        let mut egress_bad = restructured(&out_frame, 14);
        // Everything up to the UDP checksum (the receiver checks that one, as on the slow path).
        egress_bad.extend(flips(&out_frame, 0..40, &[]));
        let mut ingress_bad = restructured(&in_frame, 14);
        ingress_bad.extend(restructured(&in_frame, 64).into_iter().map(|(w, f)| (format!("inner {w}"), f)));
        // Outer source MAC and UDP source port, and the inner UDP checksum, are not checked.
        ingress_bad.extend(flips(&in_frame, 0..90, &[6..12, 34..36]));
        let random = random_frames(&mut rng, 3000, &out_frame, 34);
        let random_in = random_frames(&mut rng, 3000, &in_frame, 84);
        for (p, frames, ifindex) in [(&egress, &egress_bad, veth0), (&ingress, &ingress_bad, ul0), (&egress, &random, veth0), (&ingress, &random_in, ul0)] {
            let verdicts = run_all(p, frames, ifindex, 0);
            let wrong: Vec<&String> = frames.iter().zip(&verdicts).filter(|(_, r)| **r == Some(TC_ACT_REDIRECT)).map(|((w, _), _)| w).collect();
            assert!(wrong.is_empty(), "{} redirected {} malformed frames: {wrong:?}", p.name, wrong.len());
        }
        // Allowed changes still take the fast path: the payload and the fields nobody checks.
        let mut fine = out_frame.clone();
        *fine.last_mut().unwrap() ^= 0xff;
        assert_eq!(egress.run(&fine, veth0, 0).0, TC_ACT_REDIRECT, "a payload change is still the flow");

        // TCP: the connection's own segments take the fast path, rewritten exactly; malformed
        // ones never, and they change nothing; a SYN, FIN or RST is the slow path's and ends
        // the connection's admission until the slow path admits it again.
        let (ret, out) = egress.run(&tcp_out, veth0, 0);
        assert_eq!(ret, TC_ACT_REDIRECT, "egress_fast did not redirect the TCP connection's segment");
        assert_eq!(&out[50..], &tcp_out[..], "the inner TCP frame changed");
        let (ret, out) = ingress.run(&tcp_in, ul0, 0);
        assert_eq!(ret, TC_ACT_REDIRECT, "ingress_fast did not redirect the TCP connection's segment");
        assert_eq!(out, tcp_in_inner, "TCP decapsulation is not exactly the inner frame");
        let mut tcp_bad = restructured(&tcp_out, 14);
        // Everything up to the ports; sequence numbers, window and checksum are the receiver's.
        tcp_bad.extend(flips(&tcp_out, 0..38, &[]));
        let mut tcp_in_bad: Vec<(String, Vec<u8>)> = restructured(&tcp_in, 64).into_iter().map(|(w, f)| (format!("inner {w}"), f)).collect();
        tcp_in_bad.extend(flips(&tcp_in, 0..88, &[6..12, 34..36]));
        for (p, frames, ifindex) in [(&egress, &tcp_bad, veth0), (&ingress, &tcp_in_bad, ul0)] {
            let verdicts = run_all(p, frames, ifindex, 0);
            let wrong: Vec<&String> = frames.iter().zip(&verdicts).filter(|(_, r)| **r == Some(TC_ACT_REDIRECT)).map(|((w, _), _)| w).collect();
            assert!(wrong.is_empty(), "{} redirected {} malformed TCP frames: {wrong:?}", p.name, wrong.len());
        }
        assert_eq!(egress.run(&tcp_out, veth0, 0).0, TC_ACT_REDIRECT, "malformed frames ended the connection's admission");
        for (what, flags) in [("SYN", TCP_SYN), ("FIN", TCP_FIN | TCP_ACK), ("RST", TCP_RST | TCP_ACK)] {
            let verdicts = run_all(&egress, &[(what.to_string(), segment(flags))], veth0, 0);
            assert_eq!(verdicts, [Some(TC_ACT_OK)], "egress_fast redirected a {what}");
            assert_eq!(egress.run(&tcp_out, veth0, 0).0, TC_ACT_OK, "after a {what} the connection stayed admitted");
            let back = lab::try_wait_for(Duration::from_secs(5), || {
                round_trips(&mut tc, &mut ts, 3);
                (egress.run(&tcp_out, veth0, 0).0 == TC_ACT_REDIRECT).then_some(())
            });
            assert!(back.is_some(), "after a {what} the slow path never admitted the connection again");
        }

        // The learners only ever look: every frame passes, untouched, marked or not.
        let mut all: Vec<(String, Vec<u8>)> = vec![
            ("flow frame".into(), out_frame.clone()),
            ("vxlan frame".into(), in_frame.clone()),
            ("TCP segment".into(), tcp_out.clone()),
            ("TCP in VXLAN".into(), tcp_in.clone()),
        ];
        all.extend(egress_bad.iter().chain(&ingress_bad).chain(&random).chain(&tcp_bad).chain(&tcp_in_bad).cloned());
        for p in &learners {
            for (mark, ifindex) in [(0, ul0), (ADMIT_MARK, ul0), (ADMIT_MARK, veth0)] {
                let verdicts = run_all(p, &all, ifindex, mark);
                assert!(verdicts.iter().all(|r| r.is_none_or(|r| r == TC_ACT_OK)), "{} redirected a frame", p.name);
            }
        }
        (egress_bad.len() + random.len() + tcp_bad.len() + 3, ingress_bad.len() + random_in.len() + tcp_in_bad.len(), all.len() * 6)
    })
    .join()
    .expect("test runs");
    eprintln!("frames: egress_fast {} malformed, ingress_fast {}, learners {} runs", report.0, report.1, report.2);

    // The remote container's egress entry rewritten (its generation in ONC_GENS changed): the
    // flow admitted under the old one takes the fast path in neither direction, and does again
    // once the generation is the one it was admitted under.
    let (slot, gen) = egress_slot_and_gen(h0, VNI, b);
    assert_eq!(gen_in_slot(h0, slot), gen, "ONC_GENS does not hold the egress entry's generation");
    let host_ns = h0.netns_path();
    let verdicts = move || {
        let dir = stale_dir.clone();
        let (out, inn) = (stale_out.clone(), stale_in.clone());
        in_netns(&host_ns, move || {
            let (egress, ingress) = (Prog::open(&dir, PROG_EGRESS_FAST), Prog::open(&dir, PROG_INGRESS_FAST));
            (egress.run(&out, veth0, 0).0, ingress.run(&inn, ul0, 0).0)
        })
        .join()
        .expect("programs run")
    };
    set_gen_in_slot(h0, slot, gen ^ 0x5a5a_5a5a);
    assert_eq!(verdicts(), (TC_ACT_OK, TC_ACT_OK), "a flow admitted under an older generation took the fast path");
    set_gen_in_slot(h0, slot, gen);
    assert_eq!(verdicts(), (TC_ACT_REDIRECT, TC_ACT_REDIRECT), "the flow did not return with its generation");
    drop(boxes);
    lab.finish();
}
