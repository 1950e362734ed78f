//! Names and addresses oncache gives kernel objects. Links carry the VNI or the endpoint ID in
//! their name, so that after a restart every oncache link can be matched to (or found missing
//! from) the store without any other bookkeeping. Linux allows 15 bytes per interface name.

use std::net::Ipv4Addr;

const BRIDGE: &str = "ocbr";
const VXLAN: &str = "ocvx";
const VETH_HOST: &str = "ocve";
const VETH_PEER: &str = "ocvp";
/// Endpoint-ID characters kept in a veth name: 4 + 11 = 15 bytes.
const EP_CHARS: usize = 11;

pub fn bridge(vni: u32) -> String {
    format!("{BRIDGE}{vni}")
}

pub fn vxlan(vni: u32) -> String {
    format!("{VXLAN}{vni}")
}

pub fn veth_host(endpoint_id: &str) -> String {
    format!("{VETH_HOST}{}", ep_tag(endpoint_id))
}

/// The container end, named so until dockerd moves it into the sandbox and renames it.
pub fn veth_peer(endpoint_id: &str) -> String {
    format!("{VETH_PEER}{}", ep_tag(endpoint_id))
}

/// The part of an endpoint ID that names its links. IDs are checked ([`check_id`]) before
/// they get here; cutting at a character boundary keeps this total for any string anyway.
pub fn ep_tag(endpoint_id: &str) -> &str {
    let end = endpoint_id.char_indices().nth(EP_CHARS).map_or(endpoint_id.len(), |(i, _)| i);
    &endpoint_id[..end]
}

/// A link oncache made, recognised by its name.
#[derive(Debug, PartialEq, Eq)]
pub enum Owned<'a> {
    Bridge(u32),
    Vxlan(u32),
    /// Either end of an endpoint's veth pair, by endpoint tag.
    Veth(&'a str),
}

pub fn owned(name: &str) -> Option<Owned<'_>> {
    let vni = |s: &str| s.parse().ok().filter(|_| s.bytes().all(|b| b.is_ascii_digit()));
    if let Some(rest) = name.strip_prefix(BRIDGE) {
        vni(rest).map(Owned::Bridge)
    } else if let Some(rest) = name.strip_prefix(VXLAN) {
        vni(rest).map(Owned::Vxlan)
    } else if let Some(rest) = name.strip_prefix(VETH_HOST).or_else(|| name.strip_prefix(VETH_PEER)) {
        (!rest.is_empty()).then_some(Owned::Veth(rest))
    } else {
        None
    }
}

/// Longest ID accepted (Docker's are 64 hex digits).
pub const MAX_ID: usize = 128;

/// Docker's IDs are hex; anything else would make link names ambiguous or invalid. (That two
/// endpoints never share a tag is the driver's check: it needs the store.)
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("missing {kind} ID"));
    }
    if id.len() > MAX_ID || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let shown: String = id.chars().take(MAX_ID).collect();
        return Err(format!("invalid {kind} ID {shown:?}: expected 1 to {MAX_ID} ASCII letters and digits"));
    }
    Ok(())
}

/// The store key of a CNI network: its conflist name, which is not a Docker ID (those are hex
/// and never contain `:`), so the two front ends' networks never share a key.
pub fn cni_network_id(name: &str) -> String {
    format!("cni:{name}")
}

/// A CNI network name as the spec allows it: `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$` (at most 128 here).
pub fn check_cni_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ID
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(MAX_ID).collect();
        Err(format!("invalid network name {shown:?}: expected a letter or digit, then letters, digits, '_', '.' or '-' (at most {MAX_ID})"))
    }
}

/// FNV-1a, 64 bits: a fixed, documented hash (link names derived from it must not change
/// between oncache versions, or a DEL after an upgrade would miss the links).
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // A separator (0xff: in no container ID or interface name), so ("ab", "c") is not ("a", "bc").
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The endpoint ID of a CNI attachment, derived from (container ID, interface name) alone, so
/// that a DEL finds the links without the network namespace: `cn` + 16 hex digits. Docker's IDs
/// are hex, so `n` keeps the two apart, and the veth tag (`cn` + 9 hex digits) too.
pub fn cni_endpoint_id(container_id: &str, ifname: &str) -> String {
    format!("cn{:016x}", fnv1a64(&[container_id.as_bytes(), ifname.as_bytes()]))
}

/// A locally administered MAC derived from the IPv4 address, as Docker's own drivers do
/// (02:42:a.b.c.d): unique within a subnet and stable across restarts.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A random locally administered unicast MAC (endpoints without an IPv4 address, bridges).
pub fn random_mac() -> [u8; 6] {
    let mut m = [0u8; 6];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut m))
        .is_err()
    {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        m.copy_from_slice(&t.as_nanos().to_le_bytes()[..6]);
    }
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

pub fn format_mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<_> = s.split(':').collect();
    let bad = || format!("invalid MAC address {s:?}");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_ifnamsiz_and_round_trip() {
        let ep = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for n in [bridge(16_777_215), vxlan(16_777_215), veth_host(ep), veth_peer(ep)] {
            assert!(n.len() <= 15, "{n}");
        }
        assert_eq!(owned(&bridge(42)), Some(Owned::Bridge(42)));
        assert_eq!(owned(&vxlan(7)), Some(Owned::Vxlan(7)));
        assert_eq!(owned(&veth_host(ep)), Some(Owned::Veth("0123456789a")));
        assert_eq!(owned(&veth_peer(ep)), Some(Owned::Veth(ep_tag(ep))));
        assert_eq!(owned("eth0"), None);
        assert_eq!(owned("ocbr12x"), None);
        assert_eq!(owned("ocbr+1"), None);
        assert_eq!(owned("ocve"), None);
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("endpoint", "abc123").is_ok());
        assert!(check_id("endpoint", "").unwrap_err().contains("missing endpoint ID"));
        assert!(check_id("network", "../x").unwrap_err().contains("invalid network ID"));
        assert!(check_id("endpoint", "ééééééééééé").unwrap_err().contains("invalid endpoint ID"));
        assert!(check_id("endpoint", &"a".repeat(MAX_ID + 1)).is_err());
        // Never a panic, whatever the string.
        assert_eq!(ep_tag("ééééééééééééé"), "ééééééééééé");
        assert_eq!(ep_tag("abc"), "abc");
    }

    #[test]
    fn cni_names_and_ids() {
        let id = cni_endpoint_id("abc", "eth0");
        assert_eq!(id, cni_endpoint_id("abc", "eth0"), "stable");
        assert_ne!(id, cni_endpoint_id("abc", "eth1"));
        assert_ne!(cni_endpoint_id("ab", "ceth0"), cni_endpoint_id("abc", "eth0"));
        assert!(check_id("endpoint", &id).is_ok());
        assert!(veth_host(&id).len() <= 15 && veth_host(&id).starts_with("ocvecn"));
        // FNV-1a of a known input (the link names depend on it staying the same).
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert!(check_cni_name("oc1").is_ok());
        assert!(check_cni_name("my_net-1.x").is_ok());
        assert!(check_cni_name("-x").is_err());
        assert!(check_cni_name("a/b").is_err());
        assert!(check_cni_name("").is_err());
        assert_eq!(cni_network_id("oc1"), "cni:oc1");
    }

    #[test]
    fn mac_from_ip_and_back() {
        let m = mac_for(Ipv4Addr::new(10, 201, 0, 2));
        assert_eq!(format_mac(m), "02:42:0a:c9:00:02");
        assert_eq!(parse_mac("02:42:0a:c9:00:02"), Ok(m));
        assert!(parse_mac("02:42:0a:c9:00").is_err());
        assert!(parse_mac("02:42:0a:c9:00:zz").is_err());
    }
}
