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

use anyhow::{bail, Context, Result};
use std::process::Command;

const FORWARD_CHAIN: &str = "ONCACHE-FORWARD";
const ADMIT_CHAIN: &str = "ONCACHE-ADMIT";
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

/// Installs the chains and jumps (idempotent). Without iptables there is nothing to open,
/// and nothing is admitted to the fast path.
pub fn ensure() {
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

/// Removes the jumps and the chains (`oncache uninstall`).
pub fn remove() {
    for (tool, table, from, chain) in [
        ("iptables", "filter", "FORWARD", FORWARD_CHAIN),
        ("ip6tables", "filter", "FORWARD", FORWARD_CHAIN),
        ("iptables", "mangle", "POSTROUTING", ADMIT_CHAIN),
    ] {
        let _ = run(tool, &["-t", table, "-D", from, "-j", chain]);
        let _ = run(tool, &["-t", table, "-F", chain]);
        let _ = run(tool, &["-t", table, "-X", chain]);
    }
}
