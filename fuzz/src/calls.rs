//! The driver target's input: a sequence of at most [`MAX_CALLS`] calls, each one record
//!
//! ```text
//! [method][kind][len: u16 LE][len bytes of payload]
//! ```
//!
//! `method` picks a line of `methods.txt` (modulo their count); an even `kind` sends the
//! payload as the body byte for byte, an odd one renders the method's JSON template with field
//! values drawn from the payload (`arbitrary::Unstructured`; an empty or all-zero payload
//! gives the first value of every choice, which is a valid call, so `CreateNetwork`,
//! `CreateEndpoint`, `Join` ... with empty templates refer to each other and succeed). A short
//! last record takes what is left. The format is simple on purpose: `seeds.py` writes dockerd's
//! captured bodies as raw records, and a finding's input can be read by eye.
//!
//! Template values come from small pools (so that calls refer to each other: IDs that are a
//! prefix of another, share the 11 characters that name links, are not ASCII, are too long;
//! CIDRs, MACs, VNIs, MTUs, peer addresses of both families, valid and not) or, now and then,
//! are any string or any JSON value; any field can be left out, `null`, or of another type.

use arbitrary::{Arbitrary, Result, Unstructured};
use serde_json::{json, Map, Value};
use std::fmt;
use std::sync::OnceLock;

pub const MAX_CALLS: usize = 16;

/// The method table (`methods.txt`).
pub fn methods() -> &'static [&'static str] {
    static M: OnceLock<Vec<&'static str>> = OnceLock::new();
    M.get_or_init(|| {
        let m: Vec<&str> = include_str!("../methods.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        // The control API's methods must all be here (a renamed one breaks this build).
        use oncache::control::*;
        for c in [PEER_ADD, PEER_REMOVE, PEER_LIST, STATUS, STATS, CACHE_LIST, CACHE_FLUSH, NETWORK_REMOVE] {
            assert!(m.contains(&c), "methods.txt lacks {c}");
        }
        m
    })
}

pub struct Call {
    pub method: &'static str,
    /// Rendered from the template (else raw payload).
    pub template: bool,
    pub body: Vec<u8>,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.template { "template" } else { "raw" };
        write!(f, "POST /{} ({kind}) {:?}", self.method, String::from_utf8_lossy(&self.body))
    }
}

#[derive(Debug)]
pub struct Calls(pub Vec<Call>);

impl<'a> Arbitrary<'a> for Calls {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let methods = methods();
        let mut calls = Vec::new();
        while calls.len() < MAX_CALLS && u.len() >= 4 {
            let h = u.bytes(4)?;
            let method = methods[h[0] as usize % methods.len()];
            let template = h[1] & 1 == 1;
            let len = u16::from_le_bytes([h[2], h[3]]) as usize;
            let payload = u.bytes(len.min(u.len()))?;
            let body = if template { render(method, &mut Unstructured::new(payload)) } else { payload.to_vec() };
            calls.push(Call { method, template, body });
        }
        Ok(Calls(calls))
    }
}

/// Any string now and then, else one of `pool` (the first when the data is used up).
fn pick(u: &mut Unstructured, pool: &[&str]) -> String {
    let i = u.int_in_range(0..=pool.len()).unwrap_or(0);
    match pool.get(i) {
        Some(s) => s.to_string(),
        None => String::arbitrary(u).unwrap_or_default(),
    }
}

/// Like [`pick`], for JSON values.
fn pick_value(u: &mut Unstructured, pool: &[Value]) -> Value {
    let i = u.int_in_range(0..=pool.len()).unwrap_or(0);
    match pool.get(i) {
        Some(v) => v.clone(),
        None => any_value(u, 0),
    }
}

fn any_value(u: &mut Unstructured, depth: u32) -> Value {
    let kinds = if depth >= 2 { 5 } else { 7 };
    match u.int_in_range(0..=kinds - 1).unwrap_or(0) {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u).unwrap_or(false)),
        2 => json!(i64::arbitrary(u).unwrap_or(0)),
        3 => serde_json::Number::from_f64(f64::arbitrary(u).unwrap_or(0.0)).map_or(Value::Null, Value::Number),
        4 => Value::String(pick(u, STRINGS)),
        5 => {
            let n = u.int_in_range(0..=3).unwrap_or(0);
            Value::Array((0..n).map(|_| any_value(u, depth + 1)).collect())
        }
        _ => {
            let n = u.int_in_range(0..=3).unwrap_or(0);
            Value::Object((0..n).map(|_| (pick(u, STRINGS), any_value(u, depth + 1))).collect())
        }
    }
}

/// Sets `key` to `v` usually; sometimes leaves it out, sets `null` or any other value.
fn field(u: &mut Unstructured, m: &mut Map<String, Value>, key: &str, v: impl FnOnce(&mut Unstructured) -> Value) {
    match u8::arbitrary(u).unwrap_or(0) {
        0..=219 => {
            let v = v(u);
            m.insert(key.into(), v);
        }
        220..=231 => {}
        232..=243 => {
            m.insert(key.into(), Value::Null);
        }
        _ => {
            m.insert(key.into(), any_value(u, 0));
        }
    }
}

const STRINGS: &[&str] = &["", "x", "é", "true", "1400", "4096", "10.213.0.0/24", "\u{0}", "%n%s"];

const NETS: &[&str] = &[
    "f2fe6f8c27236d1f063c120f79d992493000cca7cca793b4b0853222ed8b03bf",
    "530844729eec64f8045ab75e38f733d11fc4fb1c3999bc678aba64c74c51c91b",
    "f2fe6f8c272",
    "f2fe6f8c27236d1f063c120f79d992493000cca7cca793b4b0853222ed8b03bf0",
    "d2r5t0036y7dh0he57kymmkxv",
    "n1",
    "F2FE6F8C27236D1F",
    "ééé",
    "",
    "../etc",
    "n 1",
    "n1\u{0}",
    // MAX_ID (128) and one more.
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

const EPS: &[&str] = &[
    "c75a308e15d653e98e42577d3ca392efab348cd9a86743c9b126bb66185bd9a4",
    "51fb632b062431f4f51fe0009d2f7fa476298e30e34319d6d1fc945d30f23956",
    // Same first 11 characters (the link tag) as the first.
    "c75a308e15d653e98e42577d3ca392efab348cd9a86743c9b126bb66185bd9a5",
    "c75a308e15d",
    "c75a308e15",
    "c75a308e15dX",
    "e1",
    "ééééééééééééé",
    "éééééééééééé1",
    // A network's ID.
    "f2fe6f8c27236d1f063c120f79d992493000cca7cca793b4b0853222ed8b03bf",
    "",
    "ep-1",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

const V4_POOLS: &[&str] = &[
    "10.213.0.0/24",
    "10.213.1.0/24",
    "10.213.0.0/16",
    "10.213.0.128/25",
    "10.213.0.1/24",
    "0.0.0.0/0",
    "10.255.0.0/24",
    "255.255.255.255/32",
    "10.213.0.0/32",
    "10.213.0.0/33",
    "10.213.0.0/-1",
    "10.213.0.0/024",
    "10.213.0.0",
    "fd00:213::/64",
    "::ffff:10.213.0.0/120",
    "",
    "x/24",
];

const V6_POOLS: &[&str] = &["fd00:213::/64", "fd00:213::/48", "fd00:214::/64", "::/0", "fd00:213::/128", "fd00:213::/129", "fe80::/64", "10.213.0.0/24", ""];

const V4_GATEWAYS: &[&str] = &["10.213.0.1/24", "", "10.213.0.254/24", "10.213.0.1", "10.213.9.1/24", "fd00:213::1/64", "junk"];

const V4_ADDRS: &[&str] = &[
    "10.213.0.2/24",
    "10.213.0.3/24",
    "10.213.1.2/24",
    "10.213.0.7/16",
    "10.213.0.0/24",
    "10.213.0.255/24",
    "10.213.0.2",
    "10.213.0.2/40",
    "10.255.0.1/24",
    "0.0.0.0/0",
    "224.0.0.1/4",
    "fd00:213::2/64",
    "",
];

const V6_ADDRS: &[&str] = &["", "fd00:213::2/64", "fd00:213::3/64", "fe80::1/64", "::1/128", "::/0", "fd00:213::2", "10.213.0.2/24"];

const MACS: &[&str] = &[
    "",
    "02:42:0a:d5:00:02",
    "02:42:0a:d5:00:03",
    "02:42:0A:D5:00:02",
    "ff:ff:ff:ff:ff:ff",
    "01:00:5e:00:00:01",
    "00:00:00:00:00:00",
    "2:42:a:d5:0:2",
    "+2:42:0a:d5:00:02",
    "02-42-0a-d5-00-02",
    "02:42:0a:d5:00:02:03",
    "02:42:0a:d5:00:zz",
    "02:42:0a:d5:00:é",
];

const SANDBOXES: &[&str] = &["/var/run/docker/netns/fdb557fae463", "/run/docker/netns/1a2b3c4d5e6f", "", "/proc/1/ns/net", "/nonexistent"];

/// Peer hosts: the underlay is 10.255.0.1/24 on a dummy device, so nothing reaches any of them.
const PEERS: &[&str] = &[
    "10.255.0.2",
    "10.255.0.3",
    "10.255.0.1",
    "10.255.0.255",
    "1.2.3.4",
    "0.0.0.0",
    "127.0.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "fd00::1",
    "::",
    "::1",
    "::ffff:10.255.0.2",
    "fe80::1%ul0",
    "10.255.0.2 ",
    "10.255.0.2/24",
    "010.255.000.002",
    "",
];

const GENERIC_KEYS: &[&str] = &["oncache.vni", "com.docker.network.driver.mtu", "oncache.fastpath", "foo", "capture.vni"];

fn vni_values() -> Vec<Value> {
    vec![
        json!("4097"),
        json!("4096"),
        json!("1"),
        json!("16777215"),
        json!("0"),
        json!("16777216"),
        json!("4294967296"),
        json!("-1"),
        json!(" 4096 "),
        json!("+4096"),
        json!("0x1000"),
        json!(""),
        json!(4096),
        json!(4096.0),
        json!(-1),
        json!(true),
        json!(null),
        json!({"a": 1}),
        json!(["4096"]),
    ]
}

fn mtu_values() -> Vec<Value> {
    vec![
        json!("1400"),
        json!("1450"),
        json!("1280"),
        json!("1279"),
        json!("1500"),
        json!("9000"),
        json!("65535"),
        json!("4294967295"),
        json!("0"),
        json!("-1"),
        json!("1e3"),
        json!(1400),
        json!(1400.5),
        json!(false),
    ]
}

fn bool_values() -> Vec<Value> {
    vec![json!(false), json!(true), json!("true"), json!("false"), json!("1"), json!("yes"), json!("off"), json!(""), json!(0), json!(null)]
}

fn generic_value(u: &mut Unstructured, key: &str) -> Value {
    match key {
        "oncache.vni" => pick_value(u, &vni_values()),
        "com.docker.network.driver.mtu" => pick_value(u, &mtu_values()),
        "oncache.fastpath" => pick_value(u, &bool_values()),
        _ => pick_value(u, &[json!("bar"), json!(1)]),
    }
}

fn ipam_data(u: &mut Unstructured, pools: &[&str], gateways: &[&str]) -> Value {
    let mut m = Map::new();
    field(u, &mut m, "AddressSpace", |u| Value::String(pick(u, &["LocalDefault", "", "GlobalDefault"])));
    field(u, &mut m, "Pool", |u| Value::String(pick(u, pools)));
    field(u, &mut m, "Gateway", |u| Value::String(pick(u, gateways)));
    if bool::arbitrary(u).unwrap_or(false) {
        let aux: Map<String, Value> = (0..u.int_in_range(0..=2).unwrap_or(0))
            .map(|_| (pick(u, &["host1", "", "é"]), Value::String(pick(u, &["10.213.0.200/24", "10.213.0.1", "x"]))))
            .collect();
        field(u, &mut m, "AuxAddresses", |_| Value::Object(aux));
    }
    Value::Object(m)
}

/// `IPv4Data`/`IPv6Data`: usually `first` pools (one for IPv4, none for IPv6), else 0 to 2.
fn ipam_list(u: &mut Unstructured, first: usize, pools: &[&str], gateways: &[&str]) -> Value {
    let n = match u.int_in_range(0..=2).unwrap_or(0) {
        0 => first,
        1 => 1 - first,
        _ => 2,
    };
    Value::Array((0..n).map(|_| ipam_data(u, pools, gateways)).collect())
}

fn endpoint_options(u: &mut Unstructured) -> Value {
    match u.int_in_range(0..=3).unwrap_or(0) {
        0 => json!({"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}),
        1 => json!({
            "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 90}, {"Proto": 6, "Port": 80}],
            "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "127.0.0.1", "HostPort": 18080, "HostPortEnd": 18080}],
        }),
        2 => json!({}),
        _ => any_value(u, 0),
    }
}

fn ids(u: &mut Unstructured, m: &mut Map<String, Value>) {
    field(u, m, "NetworkID", |u| Value::String(pick(u, NETS)));
    field(u, m, "EndpointID", |u| Value::String(pick(u, EPS)));
}

/// The JSON body of `method` as dockerd (or the oncache CLI) would send it, with fuzzed values.
pub fn render(method: &str, u: &mut Unstructured) -> Vec<u8> {
    let mut m = Map::new();
    let short = method.strip_prefix("NetworkDriver.").or_else(|| method.strip_prefix("Oncache.")).unwrap_or(method);
    match short {
        "CreateNetwork" => {
            field(u, &mut m, "NetworkID", |u| Value::String(pick(u, NETS)));
            let mut generic = Map::new();
            for _ in 0..u.int_in_range(0..=4).unwrap_or(0) {
                let k = pick(u, GENERIC_KEYS);
                let v = generic_value(u, &k);
                generic.insert(k, v);
            }
            let mut options = Map::new();
            field(u, &mut options, "com.docker.network.enable_ipv6", |u| pick_value(u, &bool_values()));
            field(u, &mut options, "com.docker.network.generic", |_| Value::Object(generic));
            if bool::arbitrary(u).unwrap_or(false) {
                let k = pick(u, &["com.docker.network.internal", "com.docker.network.ipv6", "x"]);
                let v = pick_value(u, &bool_values());
                options.insert(k, v);
            }
            field(u, &mut m, "Options", |_| Value::Object(options));
            field(u, &mut m, "IPv4Data", |u| ipam_list(u, 1, V4_POOLS, V4_GATEWAYS));
            field(u, &mut m, "IPv6Data", |u| ipam_list(u, 0, V6_POOLS, &["fd00:213::1/64", "", "10.213.0.1/24"]));
        }
        "AllocateNetwork" => {
            field(u, &mut m, "NetworkID", |u| Value::String(pick(u, NETS)));
            let options: Map<String, Value> = (0..u.int_in_range(0..=3).unwrap_or(0))
                .map(|_| {
                    let k = pick(u, GENERIC_KEYS);
                    let v = generic_value(u, &k);
                    (k, v)
                })
                .collect();
            field(u, &mut m, "Options", |_| Value::Object(options));
            field(u, &mut m, "IPv4Data", |u| ipam_list(u, 1, V4_POOLS, V4_GATEWAYS));
            field(u, &mut m, "IPv6Data", |_| Value::Null);
        }
        "DeleteNetwork" | "FreeNetwork" => field(u, &mut m, "NetworkID", |u| Value::String(pick(u, NETS))),
        "CreateEndpoint" => {
            ids(u, &mut m);
            let mut iface = Map::new();
            field(u, &mut iface, "Address", |u| Value::String(pick(u, V4_ADDRS)));
            field(u, &mut iface, "AddressIPv6", |u| Value::String(pick(u, V6_ADDRS)));
            field(u, &mut iface, "MacAddress", |u| Value::String(pick(u, MACS)));
            field(u, &mut m, "Interface", |_| Value::Object(iface));
            field(u, &mut m, "Options", endpoint_options);
        }
        "EndpointOperInfo" | "DeleteEndpoint" | "Leave" | "RevokeExternalConnectivity" => ids(u, &mut m),
        "Join" => {
            ids(u, &mut m);
            field(u, &mut m, "SandboxKey", |u| Value::String(pick(u, SANDBOXES)));
            field(u, &mut m, "Options", endpoint_options);
        }
        "ProgramExternalConnectivity" => {
            ids(u, &mut m);
            field(u, &mut m, "Options", endpoint_options);
        }
        "DiscoverNew" | "DiscoverDelete" => {
            field(u, &mut m, "DiscoveryType", |u| pick_value(u, &[json!(1), json!(0), json!(2), json!(-1), json!("1"), json!(1.0), json!(2147483648u64)]));
            let mut data = Map::new();
            field(u, &mut data, "Address", |u| Value::String(pick(u, PEERS)));
            field(u, &mut data, "BindAddress", |u| Value::String(pick(u, PEERS)));
            field(u, &mut data, "Self", |u| pick_value(u, &bool_values()));
            field(u, &mut m, "DiscoveryData", |_| Value::Object(data));
        }
        "PeerAdd" | "PeerRemove" => field(u, &mut m, "Address", |u| Value::String(pick(u, PEERS))),
        "NetworkRemove" => {
            field(u, &mut m, "ID", |u| Value::String(pick(u, NETS)));
            field(u, &mut m, "Force", |u| pick_value(u, &bool_values()));
        }
        // Argument-less calls (dockerd sends an empty body) and methods oncache does not serve.
        _ => {
            return match u.int_in_range(0..=4).unwrap_or(0) {
                0 => Vec::new(),
                1 => b"{}\n".to_vec(),
                2 => b" \r\n\t".to_vec(),
                3 => b"null".to_vec(),
                _ => serde_json::to_vec(&any_value(u, 0)).unwrap_or_default(),
            };
        }
    }
    let mut body = serde_json::to_vec(&Value::Object(m)).expect("JSON values serialize");
    body.push(b'\n');
    body
}
