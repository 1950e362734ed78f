//! The underlay: the host interface VXLAN packets leave by.

use super::netlink::Netlink;
use anyhow::{anyhow, bail, Context, Result};
use std::net::Ipv4Addr;

#[derive(Debug, Clone)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub ip: Ipv4Addr,
    pub mtu: u32,
}

/// The interface of the IPv4 default route, from /proc/net/route (of this network namespace).
pub fn default_route_interface() -> Result<String> {
    let table = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    parse_default_route(&table)
        .ok_or_else(|| anyhow!("no IPv4 default route to pick the underlay from; pass --underlay IFACE"))
}

fn parse_default_route(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<_> = l.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

pub async fn resolve(nl: &Netlink, name: &str) -> Result<Underlay> {
    let link = nl.link(name).await?.ok_or_else(|| anyhow!("underlay interface {name} does not exist"))?;
    let Some(ip) = nl.ipv4_addrs(link.index).await?.into_iter().next() else {
        bail!("underlay interface {name} has no IPv4 address for VXLAN to use");
    };
    Ok(Underlay { name: name.to_string(), index: link.index, ip, mtu: link.mtu })
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_route_is_found() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 ul0\t0063000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(super::parse_default_route(t).as_deref(), Some("eth0"));
        assert_eq!(super::parse_default_route("Iface\tDestination\n"), None);
    }
}
