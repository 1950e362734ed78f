//! CNI protocol types (spec 1.1.0, with what 0.4.0 and 1.0.0 clients need), no I/O.

use crate::cidr::Cidr;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};

/// The versions this plugin speaks. Debian's libcni 1.1.2 speaks 1.0.0 at most.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

// Error codes of the spec.
pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const UNSUPPORTED_FIELD: u32 = 2;
pub const UNKNOWN_CONTAINER: u32 = 3;
pub const INVALID_ENV: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE_FAILURE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const NOT_AVAILABLE: u32 = 50;
/// oncache's own (the spec leaves 100 and up to plugins): the daemon could not do it.
pub const FAILED: u32 = 100;

/// A CNI error, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>) -> Error {
        Error { cni_version: String::new(), code, msg: msg.into(), details: String::new() }
    }
    pub fn details(mut self, d: impl Into<String>) -> Error {
        self.details = d.into();
        self
    }
    /// For printing: the version of the request, else the newest.
    pub fn versioned(mut self, v: &str) -> Error {
        self.cni_version = if SUPPORTED.contains(&v) { v.to_string() } else { SUPPORTED[SUPPORTED.len() - 1].to_string() };
        self
    }
}

/// VERSION's answer.
pub fn version_info(requested: Option<&str>) -> Value {
    let v = requested.filter(|v| !v.is_empty()).unwrap_or("1.0.0");
    json!({"cniVersion": v, "supportedVersions": SUPPORTED})
}

/// The oncache plugin's entry of a conflist, as runtimes pass it (with `name` and
/// `cniVersion` of the list, and `runtimeConfig` for the capabilities it declares).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The VXLAN network identifier: the same on every host sharing the network.
    #[serde(default)]
    pub vni: Option<u32>,
    /// The network's IPv4 subnet (the same on every host).
    #[serde(default)]
    pub subnet: String,
    /// The part of the subnet this host allocates from (disjoint across hosts).
    #[serde(default)]
    pub ip_range: Option<String>,
    /// The gateway address on every host's bridge [default: the subnet's first address].
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `false` keeps the network on the slow path.
    #[serde(default)]
    pub fastpath: Option<bool>,
    /// The daemon's socket [default: /run/docker/plugins/oncache.sock].
    #[serde(default)]
    pub socket: Option<String>,
    /// The daemon's --state-dir, where a DEL is queued while it is down [default: /var/lib/oncache].
    #[serde(default)]
    pub state_dir: Option<String>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// GC: the attachments still valid.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<AttachmentRef>>,
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<AttachmentRef>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// The `ips` capability: requested addresses (CIDR or plain).
    #[serde(default)]
    pub ips: Vec<String>,
    /// The `mac` capability.
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AttachmentRef {
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Cidr,
    pub range: Cidr,
    pub gateway: Ipv4Addr,
    pub mtu: Option<u32>,
    pub fastpath: bool,
}

fn ipv4_net(what: &str, s: &str) -> Result<Cidr, String> {
    let c = Cidr::parse(s).map_err(|e| format!("{what}: {e}"))?;
    if !c.addr.is_ipv4() {
        return Err(format!("{what} {s}: only IPv4 is supported"));
    }
    Ok(c)
}

fn contains(net: &Cidr, ip: Ipv4Addr) -> bool {
    net.overlaps(&Cidr { addr: IpAddr::V4(ip), prefix: 32 })
}

/// The first host address of a subnet.
fn first_host(subnet: &Cidr) -> Ipv4Addr {
    let IpAddr::V4(a) = subnet.addr else { unreachable!("checked IPv4") };
    let mask = if subnet.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(subnet.prefix)) };
    Ipv4Addr::from((u32::from(a) & mask) + u32::from(subnet.prefix < 31))
}

/// The VNI of a network whose configuration names none: derived from its name, so every host
/// with the same conflist agrees (in the range oncache allocates from, above Docker's).
pub fn default_vni(name: &str) -> u32 {
    let span = crate::options::VNI_MAX - crate::options::VNI_AUTO_FIRST + 1;
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    crate::options::VNI_AUTO_FIRST + (h % u64::from(span)) as u32
}

impl NetConf {
    /// Checks the configuration; the error names what is wrong (code 7).
    pub fn network(&self) -> Result<Network, String> {
        crate::naming::check_cni_name(&self.name)?;
        let vni = self.vni.unwrap_or_else(|| default_vni(&self.name));
        if !(1..=crate::options::VNI_MAX).contains(&vni) {
            return Err(format!("vni {vni}: must be between 1 and {}", crate::options::VNI_MAX));
        }
        if self.subnet.is_empty() {
            return Err(format!("network {}: \"subnet\" is missing (an IPv4 CIDR such as 10.220.0.0/24)", self.name));
        }
        let subnet = ipv4_net("subnet", &self.subnet)?;
        if subnet.prefix > 30 {
            return Err(format!("subnet {subnet}: too small (at most /30)"));
        }
        let range = match &self.ip_range {
            Some(r) => {
                let r = ipv4_net("ipRange", r)?;
                if r.prefix < subnet.prefix || !subnet.overlaps(&r) {
                    return Err(format!("ipRange {r} is not inside the subnet {subnet}"));
                }
                r
            }
            None => subnet,
        };
        let gateway = match &self.gateway {
            Some(g) => {
                let g: Ipv4Addr = g.parse().map_err(|_| format!("gateway {g:?}: not an IPv4 address"))?;
                if !contains(&subnet, g) {
                    return Err(format!("gateway {g} is not inside the subnet {subnet}"));
                }
                let host = !u32::MAX.checked_shl(32 - u32::from(subnet.prefix)).unwrap_or(0);
                if u32::from(g) & host == 0 || u32::from(g) & host == host {
                    return Err(format!("gateway {g} is the network or broadcast address of {subnet}"));
                }
                g
            }
            None => first_host(&subnet),
        };
        if let Some(m) = self.mtu {
            if m < 1280 {
                return Err(format!("mtu {m}: must be at least 1280"));
            }
        }
        // Normalised to the network address, as Docker's IPAM stores subnets.
        let norm = |c: Cidr| {
            let IpAddr::V4(a) = c.addr else { unreachable!("checked IPv4") };
            let mask = if c.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(c.prefix)) };
            Cidr { addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)), prefix: c.prefix }
        };
        Ok(Network {
            name: self.name.clone(),
            vni,
            subnet: norm(subnet),
            range: norm(range),
            gateway,
            mtu: self.mtu,
            fastpath: self.fastpath.unwrap_or(true),
        })
    }

    /// GC's list of valid attachments (either key), if given.
    pub fn valid(&self) -> Option<&[AttachmentRef]> {
        self.valid_attachments.as_deref().or(self.attachments.as_deref())
    }
}

/// What `CNI_ARGS` and the runtime config ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
}

/// Reads `IP=` and `MAC=` from `CNI_ARGS` (`K=V;K=V`; other keys are the runtime's business),
/// and the `ips`/`mac` capabilities (which win, as the conventions say).
pub fn wanted(args: &str, rc: &RuntimeConfig) -> Result<Wanted, String> {
    let mut w = Wanted::default();
    let ip = |s: &str| -> Result<Ipv4Addr, String> {
        let a = s.split('/').next().unwrap_or_default();
        a.parse().map_err(|_| format!("requested address {s:?}: not an IPv4 address"))
    };
    for kv in args.split(';').filter(|kv| !kv.is_empty()) {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(format!("CNI_ARGS: {kv:?} is not KEY=VALUE"));
        };
        match k {
            "IP" => w.ip = Some(ip(v)?),
            "MAC" => w.mac = Some(crate::naming::parse_mac(v).map_err(|e| format!("CNI_ARGS MAC: {e}"))?),
            _ => {}
        }
    }
    if let Some(a) = rc.ips.first() {
        w.ip = Some(ip(a)?);
    }
    if let Some(m) = &rc.mac {
        w.mac = Some(crate::naming::parse_mac(m).map_err(|e| format!("runtimeConfig mac: {e}"))?);
    }
    if let Some(m) = w.mac {
        if m[0] & 1 == 1 {
            return Err(format!("MAC {}: a multicast address", crate::naming::format_mac(m)));
        }
    }
    Ok(w)
}

/// An ADD's result in the configuration's version.
pub struct AddResult<'a> {
    pub version: &'a str,
    pub host_veth: &'a str,
    pub host_mac: [u8; 6],
    pub ifname: &'a str,
    pub mac: &'a str,
    pub netns: &'a str,
    pub ip: Cidr,
    pub gateway: Option<Ipv4Addr>,
}

impl AddResult<'_> {
    pub fn to_json(&self) -> Value {
        let mut ip = json!({"address": self.ip.to_string(), "interface": 1});
        if let Some(g) = self.gateway {
            ip["gateway"] = json!(g.to_string());
        }
        if self.version == "0.4.0" {
            ip["version"] = json!("4");
        }
        let routes: Vec<Value> = self.gateway.iter().map(|g| json!({"dst": "0.0.0.0/0", "gw": g.to_string()})).collect();
        json!({
            "cniVersion": self.version,
            "interfaces": [
                {"name": self.host_veth, "mac": crate::naming::format_mac(self.host_mac)},
                {"name": self.ifname, "mac": self.mac, "sandbox": self.netns},
            ],
            "ips": [ip],
            "routes": routes,
            "dns": {},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(v: Value) -> NetConf {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn configurations_are_checked_and_named() {
        let n = conf(json!({"cniVersion": "1.0.0", "name": "oc1", "type": "oncache", "vni": 300, "subnet": "10.220.0.0/24", "ipRange": "10.220.0.128/25"}))
            .network()
            .unwrap();
        assert_eq!(n.vni, 300);
        assert_eq!(n.gateway, Ipv4Addr::new(10, 220, 0, 1));
        assert_eq!(n.range.to_string(), "10.220.0.128/25");
        let bad = |v: Value| conf(v).network().unwrap_err();
        assert!(bad(json!({"name": "oc1"})).contains("\"subnet\" is missing"));
        assert!(bad(json!({"name": "oc1", "subnet": "10.0.0.0"})).contains("missing /prefix"));
        assert!(bad(json!({"name": "oc1", "subnet": "fd00::/64"})).contains("only IPv4"));
        assert!(bad(json!({"name": "oc1", "subnet": "10.0.0.0/24", "ipRange": "10.0.1.0/25"})).contains("not inside the subnet"));
        assert!(bad(json!({"name": "oc1", "subnet": "10.0.0.0/24", "gateway": "10.0.1.1"})).contains("not inside the subnet"));
        assert!(bad(json!({"name": "oc1", "subnet": "10.0.0.0/24", "vni": 0})).contains("between 1 and"));
        assert!(bad(json!({"name": "oc1", "subnet": "10.0.0.0/24", "gateway": "10.0.0.255"})).contains("broadcast"));
        assert!(bad(json!({"name": "oc1", "subnet": "10.0.0.0/24", "gateway": "10.0.0.0"})).contains("network or broadcast"));
        // Never a panic, whatever the prefix.
        assert!(conf(json!({"name": "oc1", "subnet": "0.0.0.0/0", "gateway": "10.0.0.1"})).network().is_ok());
        assert!(conf(json!({"name": "oc1", "subnet": "0.0.0.0/0"})).network().is_ok());
        assert!(bad(json!({"name": "o/c", "subnet": "10.0.0.0/24"})).contains("invalid network name"));
        let d = conf(json!({"name": "abc", "subnet": "10.0.0.5/24"})).network().unwrap();
        assert_eq!(d.vni, default_vni("abc"), "no VNI: derived from the name");
        assert_eq!(d.subnet.to_string(), "10.0.0.0/24", "normalised");
        assert!(d.vni >= crate::options::VNI_AUTO_FIRST);
        assert_eq!(conf(json!({"cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]})).valid().unwrap()[0].container_id, "a");
    }

    #[test]
    fn args_and_capabilities() {
        let rc = RuntimeConfig::default();
        assert_eq!(wanted("IgnoreUnknown=1;IP=10.1.0.9;MAC=02:00:00:00:00:09", &rc).unwrap(), Wanted {
            ip: Some(Ipv4Addr::new(10, 1, 0, 9)),
            mac: Some([2, 0, 0, 0, 0, 9])
        });
        let rc = RuntimeConfig { ips: vec!["10.1.0.7/24".into()], mac: None };
        assert_eq!(wanted("IP=10.1.0.9", &rc).unwrap().ip, Some(Ipv4Addr::new(10, 1, 0, 7)));
        assert!(wanted("IP=x", &RuntimeConfig::default()).unwrap_err().contains("not an IPv4"));
        assert!(wanted("MAC=01:00:00:00:00:01", &RuntimeConfig::default()).unwrap_err().contains("multicast"));
        assert!(wanted("junk", &RuntimeConfig::default()).unwrap_err().contains("KEY=VALUE"));
    }

    #[test]
    fn results_follow_the_version() {
        let r = AddResult {
            version: "1.0.0",
            host_veth: "ocvecn1",
            host_mac: [2, 0, 0, 0, 0, 1],
            ifname: "eth0",
            mac: "02:42:0a:00:00:02",
            netns: "/run/netns/x",
            ip: Cidr::parse("10.0.0.2/24").unwrap(),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
        };
        let v = r.to_json();
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/x");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0]["gw"], "10.0.0.1");
        let v = AddResult { version: "0.4.0", ..r }.to_json();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(Error::new(7, "x").versioned("2.0.0").cni_version, "1.1.0");
    }
}
