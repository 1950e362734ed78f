//! oncache's place in the host firewall.
//!
//! - filter/FORWARD: with br_netfilter on (Docker turns it on for its own bridges), frames
//!   crossing an oncache bridge traverse iptables FORWARD, whose policy Docker sets to DROP.
//!   oncache appends one jump to its chain ONCACHE-FORWARD, after Docker's DOCKER-USER jump, so
//!   operators keep filtering overlay traffic in DOCKER-USER while the overlay itself is not
//!   dropped by the default policy.
//! - mangle/POSTROUTING: packets that got this far passed the filter table. ONCACHE-ADMIT marks
//!   those of flows conntrack has seen in both directions (ESTABLISHED) with
//!   [`oncache_common::ADMIT_MARK`]; the fast path learns only from marked packets. The mark is
//!   skb metadata: it never appears on the wire and is cleared when a packet enters a container.
//! - raw/PREROUTING: ONCACHE-ZONES puts each network's bridged traffic in a conntrack zone of
//!   its own (`-i ocbr<VNI> -j CT --zone <zone>`), so that two networks with the same subnet
//!   never share a connection: a packet of one is never ESTABLISHED by a flow of the other, in
//!   the filter table and for admission alike.

use anyhow::{bail, Context, Result};
use std::process::Command;

const FORWARD_CHAIN: &str = "ONCACHE-FORWARD";
const ADMIT_CHAIN: &str = "ONCACHE-ADMIT";
const ZONES_CHAIN: &str = "ONCACHE-ZONES";
const NAT_CHAIN: &str = "ONCACHE-NAT";
const TOOLS: [&str; 2] = ["iptables", "ip6tables"];
const BRIDGES: &str = "ocbr+";

fn run(tool: &str, args: &[&str]) -> Result<bool> {
    let out = Command::new(tool).arg("-w").args(args).output().with_context(|| format!("running {tool}"))?;
    Ok(out.status.success())
}

/// Creates `chain` in `table` (if missing), makes it hold exactly `rule`, and jumps to it from
/// the end of `from`. Idempotent.
fn ensure_chain(tool: &str, table: &str, from: &str, chain: &str, rule: &[&str]) -> Result<()> {
    let t = ["-t", table];
    // -N fails harmlessly when the chain exists.
    run(tool, &[&t[..], &["-N", chain]].concat())?;
    if !run(tool, &[&t[..], &["-C", chain], rule].concat())? {
        run(tool, &[&t[..], &["-F", chain]].concat())?;
        if !run(tool, &[&t[..], &["-A", chain], rule].concat())? {
            bail!("{tool}: cannot add the rule of {table}/{chain}");
        }
    }
    let jump = ["-j", chain];
    if !run(tool, &[&t[..], &["-C", from], &jump].concat())? && !run(tool, &[&t[..], &["-A", from], &jump].concat())? {
        bail!("{tool}: cannot add the jump to {chain} in {table}/{from}");
    }
    Ok(())
}

/// Whether the `iptables` in PATH is iptables-legacy (`iptables -V`: "(legacy)"), which writes
/// x_tables, whose changes the kernel does not announce (the nf_tables backend's are).
pub fn iptables_is_legacy() -> bool {
    Command::new("iptables").arg("-V").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("(legacy)"))
}

/// conntrack's TCP window tracking only sees the packets of a flow that take the slow path:
/// once a flow has run on the fast path, its next slow-path packets lie beyond the window
/// conntrack last saw and would be INVALID, so the flow could never be admitted again (after a
/// cache flush, an eviction, a restart). Liberal window tracking (as kube-proxy sets for the
/// same reason) keeps such packets ESTABLISHED; SYN, RST and FIN handling stay strict.
/// Inside a managed plugin /proc/sys is read-only, and Docker mounts the host's netfilter
/// sysctls elsewhere (packaging/plugin/config.json names the folder).
fn tcp_be_liberal() -> std::path::PathBuf {
    let dir = std::env::var_os("ONCACHE_NETFILTER_SYSCTL_DIR").unwrap_or_else(|| "/proc/sys/net/netfilter".into());
    std::path::Path::new(&dir).join("nf_conntrack_tcp_be_liberal")
}

fn ensure_liberal_tcp() {
    let path = tcp_be_liberal();
    let shown = path.display();
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(&path, "1") {
            Ok(()) => log::info!("set net.netfilter.nf_conntrack_tcp_be_liberal=1 (flows return from the fast path within conntrack's window)"),
            Err(e) => log::warn!("cannot set {shown}: {e}; a TCP flow that leaves the fast path stays on the slow path"),
        },
        Err(e) => log::warn!("cannot read {shown}: {e}"),
    }
}

/// Installs the chains and jumps (idempotent). Without iptables there is nothing to open,
/// and nothing is admitted to the fast path.
pub fn ensure() {
    ensure_liberal_tcp();
    let accept = ["-i", BRIDGES, "-o", BRIDGES, "-j", "ACCEPT"];
    let mark = format!("{:#x}", oncache_common::ADMIT_MARK);
    let admit = ["-o", BRIDGES, "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "MARK", "--or-mark", &mark];
    for (tool, table, from, chain, rule) in [
        ("iptables", "filter", "FORWARD", FORWARD_CHAIN, &accept[..]),
        ("ip6tables", "filter", "FORWARD", FORWARD_CHAIN, &accept[..]),
        ("iptables", "mangle", "POSTROUTING", ADMIT_CHAIN, &admit[..]),
    ] {
        match ensure_chain(tool, table, from, chain, rule) {
            Ok(()) => log::debug!("{tool}: {table}/{chain} in place"),
            Err(e) => log::warn!("{e:#}; {}", if chain == ADMIT_CHAIN {
                "no flow will be admitted to the fast path"
            } else {
                "bridged overlay traffic may be dropped by the FORWARD policy"
            }),
        }
    }
}

fn zone_rule(vni: u32, zone: u16) -> Vec<String> {
    ["-i", &crate::naming::bridge(vni), "-j", "CT", "--zone", &zone.to_string()].map(String::from).to_vec()
}

/// Runs `tool -t raw OP ONCACHE-ZONES RULE...`.
fn zones_op(tool: &str, op: &str, rule: &[String]) -> Result<bool> {
    let args: Vec<&str> = ["-t", "raw", op, ZONES_CHAIN].into_iter().chain(rule.iter().map(String::as_str)).collect();
    run(tool, &args)
}

/// ONCACHE-ZONES exists and raw/PREROUTING jumps to it first.
fn ensure_zones_chain(tool: &str) -> Result<()> {
    run(tool, &["-t", "raw", "-N", ZONES_CHAIN])?;
    let jump = ["-t", "raw", "-C", "PREROUTING", "-j", ZONES_CHAIN];
    if !run(tool, &jump)? && !run(tool, &["-t", "raw", "-I", "PREROUTING", "-j", ZONES_CHAIN])? {
        bail!("{tool}: cannot add the jump to {ZONES_CHAIN} in raw/PREROUTING");
    }
    Ok(())
}

/// Makes ONCACHE-ZONES hold exactly one zone rule per network in `zones` (VNI, zone), for IPv4
/// and IPv6 (at start). A chain that holds them already is left alone: every change to the
/// ruleset withdraws the admitted flows, which a restart must not do.
pub fn set_zones(zones: &[(u32, u16)]) -> Result<()> {
    for tool in TOOLS {
        ensure_zones_chain(tool)?;
        if holds_exactly(tool, zones)? {
            continue;
        }
        zones_op(tool, "-F", &[])?;
        for (vni, zone) in zones {
            if !zones_op(tool, "-A", &zone_rule(*vni, *zone))? {
                bail!("{tool}: cannot add the conntrack zone rule of VNI {vni}");
            }
        }
    }
    Ok(())
}

/// Whether ONCACHE-ZONES holds the zone rules of `zones` and nothing else (checked with `-C`,
/// which changes nothing, and counted in `-S`).
fn holds_exactly(tool: &str, zones: &[(u32, u16)]) -> Result<bool> {
    let out = Command::new(tool).args(["-w", "-t", "raw", "-S", ZONES_CHAIN]).output().with_context(|| format!("running {tool}"))?;
    let rules = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-A ")).count();
    if !out.status.success() || rules != zones.len() {
        return Ok(false);
    }
    for (vni, zone) in zones {
        if !zones_op(tool, "-C", &zone_rule(*vni, *zone))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Adds one network's zone rule (idempotent).
pub fn add_zone(vni: u32, zone: u16) -> Result<()> {
    let rule = zone_rule(vni, zone);
    for tool in TOOLS {
        ensure_zones_chain(tool)?;
        if !zones_op(tool, "-C", &rule)? && !zones_op(tool, "-A", &rule)? {
            bail!("{tool}: cannot add the conntrack zone rule of VNI {vni}");
        }
    }
    Ok(())
}

/// Removes one network's zone rule; absent is fine.
pub fn remove_zone(vni: u32, zone: u16) {
    for tool in TOOLS {
        let _ = zones_op(tool, "-D", &zone_rule(vni, zone));
    }
}

/// The rules that give a network with a gateway address on its bridge (CNI networks) the way
/// out, and port mappings (portmap's DNAT) the way in, as tool, table, chain, rule.
fn gateway_rules(vni: u32, subnet: &str) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let br = crate::naming::bridge(vni);
    let r = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        // Leaving the segment through the gateway, a packet stays in the host's conntrack zone,
        // where its replies arrive (and NAT can be undone); only the segment's own traffic gets
        // the network's zone.
        ("raw", ZONES_CHAIN, r(&["-i", &br, "!", "-d", subnet, "-j", "RETURN"])),
        ("nat", NAT_CHAIN, r(&["-s", subnet, "!", "-d", subnet, "-j", "MASQUERADE"])),
        ("filter", FORWARD_CHAIN, r(&["-i", &br, "!", "-o", &br, "-j", "ACCEPT"])),
        ("filter", FORWARD_CHAIN, r(&["-o", &br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "ACCEPT"])),
    ]
}

/// Outside access for a network whose gateway is on its bridge: masquerade to the host's
/// address, forwarding both ways, IPv4 forwarding on (idempotent). The zone exemption goes
/// first in ONCACHE-ZONES; call it after [`set_zones`] / [`add_zone`].
pub fn add_gateway(vni: u32, subnet: &str) -> Result<()> {
    ensure_zones_chain("iptables")?;
    run("iptables", &["-t", "nat", "-N", NAT_CHAIN])?;
    if !run("iptables", &["-t", "nat", "-C", "POSTROUTING", "-j", NAT_CHAIN])? && !run("iptables", &["-t", "nat", "-A", "POSTROUTING", "-j", NAT_CHAIN])? {
        bail!("iptables: cannot add the jump to {NAT_CHAIN} in nat/POSTROUTING");
    }
    for (table, chain, rule) in gateway_rules(vni, subnet) {
        let args = |op: &str| -> Vec<String> {
            let mut a = vec!["-t".to_string(), table.into(), op.into(), chain.into()];
            if op == "-I" {
                a.push("1".into());
            }
            a.extend(rule.iter().cloned());
            a
        };
        let call = |op: &str| {
            let a = args(op);
            run("iptables", &a.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let add = if table == "raw" { "-I" } else { "-A" };
        if !call("-C")? && !call(add)? {
            bail!("iptables: cannot add {table}/{chain} {}", rule.join(" "));
        }
    }
    let fwd = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(fwd).map(|v| v.trim() != "1").unwrap_or(true) {
        std::fs::write(fwd, "1").with_context(|| format!("enabling IPv4 forwarding ({fwd})"))?;
        log::info!("set net.ipv4.ip_forward=1 (containers reach the outside through the gateway)");
    }
    Ok(())
}

/// Removes what [`add_gateway`] added for one network; absent is fine.
pub fn remove_gateway(vni: u32, subnet: &str) {
    for (table, chain, rule) in gateway_rules(vni, subnet) {
        let mut a = vec!["-t", table, "-D", chain];
        a.extend(rule.iter().map(String::as_str));
        while run("iptables", &a).unwrap_or(false) {}
    }
}

/// Removes the jumps and the chains (`oncache uninstall`).
pub fn remove() {
    for (tool, table, from, chain) in [
        ("iptables", "filter", "FORWARD", FORWARD_CHAIN),
        ("ip6tables", "filter", "FORWARD", FORWARD_CHAIN),
        ("iptables", "mangle", "POSTROUTING", ADMIT_CHAIN),
        ("iptables", "raw", "PREROUTING", ZONES_CHAIN),
        ("ip6tables", "raw", "PREROUTING", ZONES_CHAIN),
        ("iptables", "nat", "POSTROUTING", NAT_CHAIN),
    ] {
        let _ = run(tool, &["-t", table, "-D", from, "-j", chain]);
        let _ = run(tool, &["-t", table, "-F", chain]);
        let _ = run(tool, &["-t", table, "-X", chain]);
    }
}
