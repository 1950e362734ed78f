//! The options a user can give `docker network create -d oncache -o KEY=VALUE`.

use std::collections::BTreeMap;

/// VXLAN network identifier; the same on every host that shares the network.
pub const VNI: &str = "oncache.vni";
/// Docker's standard MTU option, honoured as its bridge driver does.
pub const MTU: &str = "com.docker.network.driver.mtu";
/// `false` keeps the network on the slow path only (for comparison and troubleshooting).
pub const FASTPATH: &str = "oncache.fastpath";
const KNOWN: &[&str] = &[VNI, MTU, FASTPATH];

/// Bytes VXLAN adds over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// Allocated VNIs start here: far above the low range operators pick by hand, and above the
/// VNIs Docker's overlay allocates lowest-first from 4096 (Swarm's ingress network has one on
/// every node, and the kernel refuses a second device with that VNI on the shared UDP port).
pub const VNI_AUTO_FIRST: u32 = 1 << 20;
const MTU_MIN: u32 = 1280;

#[derive(Debug, PartialEq, Eq)]
pub struct NetworkOptions {
    pub vni: Option<u32>,
    pub mtu: Option<u32>,
    pub fastpath: bool,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions { vni: None, mtu: None, fastpath: true }
    }
}

pub fn parse(opts: &BTreeMap<String, String>) -> Result<NetworkOptions, String> {
    let mut out = NetworkOptions::default();
    for (k, v) in opts {
        match k.as_str() {
            VNI => {
                let n: u32 = v.trim().parse().map_err(|_| format!("option {VNI}={v:?}: not a number"))?;
                if !(1..=VNI_MAX).contains(&n) {
                    return Err(format!("option {VNI}={n}: must be between 1 and {VNI_MAX}"));
                }
                out.vni = Some(n);
            }
            MTU => {
                let n: u32 = v.trim().parse().map_err(|_| format!("option {MTU}={v:?}: not a number"))?;
                if n < MTU_MIN {
                    return Err(format!("option {MTU}={n}: must be at least {MTU_MIN}"));
                }
                out.mtu = Some(n);
            }
            FASTPATH => {
                out.fastpath = match v.trim() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    _ => return Err(format!("option {FASTPATH}={v:?}: expected true or false")),
                };
            }
            _ => {
                return Err(format!("unknown option {k:?} (oncache accepts: {})", KNOWN.join(", ")));
            }
        }
    }
    Ok(out)
}

/// The MTU of a network's links: what the user asked for, else the underlay's less VXLAN's
/// overhead. A larger MTU than the underlay can carry would silently drop large packets.
pub fn mtu(requested: Option<u32>, underlay_mtu: u32) -> Result<u32, String> {
    let max = underlay_mtu.saturating_sub(VXLAN_OVERHEAD);
    match requested {
        Some(m) if m > max => Err(format!(
            "option {MTU}={m}: larger than the underlay MTU {underlay_mtu} less {VXLAN_OVERHEAD} bytes of VXLAN overhead ({max})"
        )),
        Some(m) => Ok(m),
        None => Ok(max),
    }
}

/// The lowest free VNI from [`VNI_AUTO_FIRST`] up.
pub fn allocate_vni(used: &[u32]) -> Option<u32> {
    (VNI_AUTO_FIRST..=VNI_MAX).find(|v| !used.contains(v))
}

/// This host's conntrack zone for a network: its VNI when that fits a zone ID and is free
/// (easy to read in `conntrack -L`), else the lowest free one. Zone 0 is the host's own.
pub fn allocate_zone(vni: u32, used: &[u16]) -> Option<u16> {
    let free = |z: &u16| *z != 0 && !used.contains(z);
    u16::try_from(vni).ok().filter(free).or_else(|| (1..=u16::MAX).find(free))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_follow_the_vni_when_they_can() {
        assert_eq!(allocate_zone(300, &[]), Some(300));
        assert_eq!(allocate_zone(300, &[300]), Some(1));
        assert_eq!(allocate_zone(70000, &[1, 2]), Some(3));
        assert_eq!(allocate_zone(0x10000, &[]), Some(1), "65536 does not fit");
        let all: Vec<u16> = (1..=u16::MAX).collect();
        assert_eq!(allocate_zone(5, &all), None);
    }

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn known_options_parse() {
        let o = parse(&opts(&[(VNI, "42"), (MTU, "1400")])).unwrap();
        assert_eq!(o, NetworkOptions { vni: Some(42), mtu: Some(1400), fastpath: true });
        assert!(!parse(&opts(&[(FASTPATH, "false")])).unwrap().fastpath);
        assert_eq!(parse(&opts(&[])).unwrap(), NetworkOptions::default());
    }

    #[test]
    fn bad_options_are_named() {
        assert!(parse(&opts(&[("oncache.vnii", "1")])).unwrap_err().contains("unknown option \"oncache.vnii\""));
        assert!(parse(&opts(&[("mtu", "1")])).unwrap_err().contains("unknown option \"mtu\""));
        assert!(parse(&opts(&[(VNI, "0")])).unwrap_err().contains("between 1 and 16777215"));
        assert!(parse(&opts(&[(VNI, "16777216")])).is_err());
        assert!(parse(&opts(&[(VNI, "abc")])).unwrap_err().contains("not a number"));
        assert!(parse(&opts(&[(MTU, "500")])).unwrap_err().contains("at least 1280"));
        assert!(parse(&opts(&[(FASTPATH, "maybe")])).unwrap_err().contains("expected true or false"));
    }

    #[test]
    fn mtu_defaults_to_underlay_less_overhead() {
        assert_eq!(mtu(None, 1500), Ok(1450));
        assert_eq!(mtu(Some(1400), 1500), Ok(1400));
        assert!(mtu(Some(1460), 1500).unwrap_err().contains("(1450)"));
    }

    #[test]
    fn vni_allocation_skips_used() {
        assert_eq!(allocate_vni(&[]), Some(VNI_AUTO_FIRST));
        assert_eq!(allocate_vni(&[VNI_AUTO_FIRST, VNI_AUTO_FIRST + 1, 5]), Some(VNI_AUTO_FIRST + 2));
    }
}
