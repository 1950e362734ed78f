//! Lets bridged overlay traffic through the host firewall's FORWARD chain.
//!
//! With br_netfilter on (Docker turns it on for its own bridges), frames crossing an oncache
//! bridge traverse iptables FORWARD, whose policy Docker sets to DROP. oncache appends one jump
//! to its own chain, after Docker's DOCKER-USER jump, so operators keep filtering overlay
//! traffic in DOCKER-USER while the overlay itself is not dropped by the default policy.

use anyhow::{bail, Context, Result};
use std::process::Command;

const CHAIN: &str = "ONCACHE-FORWARD";
const BRIDGES: &str = "ocbr+";

fn run(tool: &str, args: &[&str]) -> Result<bool> {
    let out = Command::new(tool).args(args).output().with_context(|| format!("running {tool}"))?;
    Ok(out.status.success())
}

fn ensure_for(tool: &str) -> Result<()> {
    // -N creates the chain; it fails harmlessly when the chain exists.
    run(tool, &["-w", "-N", CHAIN])?;
    let accept = ["-i", BRIDGES, "-o", BRIDGES, "-j", "ACCEPT"];
    if !run(tool, &[&["-w", "-C", CHAIN][..], &accept].concat())? {
        if !run(tool, &[&["-w", "-A", CHAIN][..], &accept].concat())? {
            bail!("{tool}: cannot add the accept rule to {CHAIN}");
        }
    }
    let jump = ["-j", CHAIN];
    if !run(tool, &[&["-w", "-C", "FORWARD"][..], &jump].concat())?
        && !run(tool, &[&["-w", "-A", "FORWARD"][..], &jump].concat())?
    {
        bail!("{tool}: cannot add the jump to {CHAIN} in FORWARD");
    }
    Ok(())
}

/// Installs the chain and jump (idempotent). Without iptables there is nothing to open.
pub fn ensure() {
    for tool in ["iptables", "ip6tables"] {
        match ensure_for(tool) {
            Ok(()) => log::debug!("{tool}: {CHAIN} in place"),
            Err(e) => log::warn!("{e:#}; bridged overlay traffic may be dropped by the FORWARD policy"),
        }
    }
}

/// Removes the jump and the chain (used by `oncache uninstall`).
pub fn remove() {
    for tool in ["iptables", "ip6tables"] {
        let _ = run(tool, &["-w", "-D", "FORWARD", "-j", CHAIN]);
        let _ = run(tool, &["-w", "-F", CHAIN]);
        let _ = run(tool, &["-w", "-X", CHAIN]);
    }
}
