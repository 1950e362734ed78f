//! oncache-specific helpers for the integration tests (the generic lab lives in `lab/`).

#![allow(dead_code)]

pub mod managed;
pub mod traffic;

use crate::lab::{self, Host};
use serde_json::{json, Value};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_oncache");

/// Runs the `oncache` CLI against a host's daemon; Ok(stdout) or Err(stderr).
pub fn cli(h: &Host, args: &[&str]) -> Result<String, String> {
    let sock = h.oncache_socket().to_string_lossy().into_owned();
    let mut a = vec![BIN];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--socket", &sock]);
    let out = h.exec(&a);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A call to the daemon's socket: (HTTP status, JSON body).
pub fn call(h: &Host, method: &str, body: Value) -> (u16, Value) {
    lab::post_json(&h.oncache_socket(), &format!("/{method}"), &body)
}

pub fn status(h: &Host) -> Value {
    let (code, v) = call(h, "Oncache.Status", json!({}));
    assert_eq!(code, 200, "status: {v}");
    v
}

/// Names of the host's links that oncache owns (ocbr*, ocvx*, ocve*, ocvp*).
pub fn oncache_links(h: &Host) -> Vec<String> {
    let mut v: Vec<String> = h
        .sh("ip -o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| ["ocbr", "ocvx", "ocve", "ocvp"].iter().any(|p| n.starts_with(p)))
        .collect();
    v.sort();
    v
}

/// The controller (bridge) a link is enslaved to, if any.
pub fn master_of(h: &Host, link: &str) -> Option<String> {
    let out = h.sh(&format!("ip -o link show dev {link}"));
    let f: Vec<&str> = out.split_whitespace().collect();
    f.iter().position(|w| *w == "master").map(|i| f[i + 1].to_string())
}

/// Starts busybox httpd in `server` serving 24 MiB of random data; returns its sha256.
pub fn serve_random_file(h: &Host, server: &str) -> String {
    let out = h.docker_exec(
        server,
        &["sh", "-c", "mkdir -p /www && dd if=/dev/urandom of=/www/data bs=1M count=24 2>/dev/null && httpd -p 8080 -h /www && sha256sum /www/data"],
    );
    out.split_whitespace().next().expect("sha256sum output").to_string()
}

/// Fetches the served file over TCP from `client`; returns the sha256 of what arrived.
pub fn fetch_checksum(h: &Host, client: &str, server_addr: &str) -> String {
    let out = h.docker_exec(client, &["sh", "-c", &format!("wget -q -O - http://{server_addr}:8080/data | sha256sum")]);
    out.split_whitespace().next().expect("sha256sum output").to_string()
}

pub fn ping(h: &Host, from: &str, to: &str) -> Result<String, String> {
    h.try_docker_exec(from, &["ping", "-c", "3", "-W", "2", to])
}

/// Waits until `from` can ping `to` (ARP and FDB learning take a moment after changes).
pub fn wait_ping(h: &Host, from: &str, to: &str) {
    let ok = lab::try_wait_for(Duration::from_secs(20), || {
        h.try_docker_exec(from, &["ping", "-c", "1", "-W", "1", to]).ok()
    });
    assert!(ok.is_some(), "{from} cannot reach {to}; oncache log:\n{}", h.oncache_log());
}

pub fn mtu_in(h: &Host, container: &str, dev: &str) -> u32 {
    let out = h.docker_exec(container, &["cat", &format!("/sys/class/net/{dev}/mtu")]);
    out.trim().parse().unwrap_or_else(|_| panic!("mtu of {dev} in {container}: {out}"))
}

/// POSTs a body of `len` bytes the way a misbehaving client would, writing from a thread so
/// that a server which answers early (and stops reading) does not block the test.
pub fn post_oversized(sock: &std::path::Path, method: &str, len: usize) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let head = format!("POST /{method} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes()).and_then(|_| w.write_all(&vec![b'x'; len]));
    });
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    drop(s);
    let _ = writer.join();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or_else(|_| panic!("oversized POST: unexpected answer {text:?}")))
}

/// The daemon's fast-path counters.
pub fn stats(h: &Host) -> Value {
    let (code, v) = call(h, "Oncache.Stats", json!({}));
    assert_eq!(code, 200, "stats: {v}");
    v
}

pub fn counter(v: &Value, program: &str, counter: &str) -> u64 {
    v[program][counter].as_u64().unwrap_or_else(|| panic!("no {program}.{counter} in {v}"))
}

pub fn cache(h: &Host) -> Value {
    let (code, v) = call(h, "Oncache.CacheList", json!({}));
    assert_eq!(code, 200, "cache list: {v}");
    v
}

/// A key or value as bpftool prints it in JSON: `["0x07", "0x00", ...]`.
fn bpftool_bytes(a: &Value) -> Vec<u8> {
    let byte = |b: &Value| b.as_str().and_then(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok());
    a.as_array().and_then(|a| a.iter().map(byte).collect()).unwrap_or_else(|| panic!("not bpftool's bytes: {a}"))
}

fn hex_bytes(b: [u8; 4]) -> String {
    b.iter().map(|x| format!("0x{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// A map's entries as raw bytes: (key, value).
pub type RawEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of one of `h`'s pinned fast-path maps, as bpftool dumps them.
pub fn map_entries(h: &Host, map: &str) -> Result<RawEntries, String> {
    let pin = h.bpf_dir.join(oncache::fastpath::MAPS_DIR).join(map);
    let out = h.try_sh(&format!("bpftool -j map dump pinned {}", pin.display()))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("bpftool {map}: {e}"))?;
    Ok(v.as_array().map_or(Vec::new(), |a| a.iter().map(|e| (bpftool_bytes(&e["key"]), bpftool_bytes(&e["value"]))).collect()))
}

/// The ONC_GENS slot and the generation of `h`'s ONC_EGRESS entry for `ip` in network `vni`.
pub fn egress_slot_and_gen(h: &Host, vni: u32, ip: std::net::Ipv4Addr) -> (u32, u32) {
    let key: Vec<u8> = vni.to_le_bytes().into_iter().chain(ip.octets()).collect();
    let (_, v) = map_entries(h, oncache_common::MAP_EGRESS)
        .unwrap_or_else(|e| panic!("{}: {e}", h.name))
        .into_iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("{}: no egress entry for {ip} (VNI {vni})", h.name));
    let word = |at: usize| u32::from_le_bytes(v[at..at + 4].try_into().unwrap());
    (word(16), word(12))
}

/// ONC_GENS[slot] on `h`.
pub fn gen_in_slot(h: &Host, slot: u32) -> u32 {
    let pin = h.bpf_dir.join(oncache::fastpath::MAPS_DIR).join(oncache_common::MAP_GENS);
    let v: Value = serde_json::from_str(&h.sh(&format!("bpftool -j map lookup pinned {} key {}", pin.display(), hex_bytes(slot.to_le_bytes())))).unwrap();
    u32::from_le_bytes(bpftool_bytes(&v["value"])[..4].try_into().unwrap())
}

/// Writes ONC_GENS[slot] = gen on `h`, behind the daemon's back.
pub fn set_gen_in_slot(h: &Host, slot: u32, gen: u32) {
    let pin = h.bpf_dir.join(oncache::fastpath::MAPS_DIR).join(oncache_common::MAP_GENS);
    h.sh(&format!("bpftool map update pinned {} key {} value {}", pin.display(), hex_bytes(slot.to_le_bytes()), hex_bytes(gen.to_le_bytes())));
}

/// Creates network `net` (64 hex) with VNI `vni` and IPv4 pool `pool` through the plugin API.
pub fn create_network_api(h: &Host, net: &str, vni: u32, pool: &str) {
    let body = json!({"NetworkID": net, "Options": {"com.docker.network.generic": {"oncache.vni": vni.to_string()}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool}]});
    let (code, v) = call(h, "NetworkDriver.CreateNetwork", body);
    assert_eq!(code, 200, "{}: CreateNetwork: {v}", h.name);
}

/// Network namespaces standing in for containers, for tests that drive the plugin API without
/// dockerd; removed on drop (their veths go with them).
#[derive(Default)]
pub struct Sandboxes(pub Vec<String>);

impl Sandboxes {
    /// Endpoint `ep` with `addr`/24 on network `net` of host `h`, joined, its container end
    /// moved into a new namespace `name` as eth0 (up, with the address). Returns the
    /// namespace's path.
    pub fn plug(&mut self, h: &Host, name: &str, net: &str, ep: &str, addr: &str) -> String {
        let (code, v) = call(h, "NetworkDriver.CreateEndpoint", json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": format!("{addr}/24")}}));
        assert_eq!(code, 200, "{}: CreateEndpoint: {v}", h.name);
        let (code, v) = call(h, "NetworkDriver.Join", json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": format!("/run/netns/{name}")}));
        assert_eq!(code, 200, "{}: Join: {v}", h.name);
        let src = v["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
        self.0.push(name.to_string());
        lab::wait_for("netns add", Duration::from_secs(5), || {
            std::process::Command::new("ip").args(["netns", "add", name]).status().ok().filter(|s| s.success())
        });
        h.sh(&format!(
            "ip link set {src} netns {name} && ip -n {name} link set {src} name eth0 && ip -n {name} addr add {addr}/24 dev eth0 && ip -n {name} link set eth0 up && ip -n {name} link set lo up"
        ));
        format!("/run/netns/{name}")
    }

    /// Leave and DeleteEndpoint for `ep`, then its namespace goes.
    pub fn unplug(&mut self, h: &Host, name: &str, net: &str, ep: &str) {
        for m in ["NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"] {
            let (code, v) = call(h, m, json!({"NetworkID": net, "EndpointID": ep}));
            assert_eq!(code, 200, "{}: {m}: {v}", h.name);
        }
        let _ = std::process::Command::new("ip").args(["netns", "del", name]).status();
        self.0.retain(|n| n != name);
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = std::process::Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Waits until `h` has exactly `n` remote endpoints from the control plane; returns how long
/// that took.
pub fn wait_remotes(h: &Host, n: u64, timeout: Duration) -> Duration {
    let start = std::time::Instant::now();
    let ok = lab::try_wait_for(timeout, || (status(h)["remote_endpoints"].as_u64() == Some(n)).then_some(()));
    assert!(ok.is_some(), "{}: not {n} remote endpoints within {timeout:?}: {}", h.name, status(h));
    start.elapsed()
}
