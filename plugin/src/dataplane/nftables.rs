//! Ruleset changes, as the kernel announces them: every nftables transaction (what Debian's
//! `iptables`, the nft backend, and `nft` itself commit) is multicast on the NFNLGRP_NFTABLES
//! group of NETLINK_NETFILTER. iptables-legacy announces nothing (see README).

use anyhow::{Context, Result};
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

/// nfnetlink multicast group of nf_tables (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// nfnetlink subsystem of nf_tables, and its "transaction committed" message
/// (linux/netfilter/nf_tables.h): one per transaction, after its changes.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;

/// A socket that hears every committed nftables transaction.
pub struct RulesetWatch(TokioSocket);

impl RulesetWatch {
    pub fn open() -> Result<RulesetWatch> {
        let mut s = TokioSocket::new(NETLINK_NETFILTER).context("opening a netfilter netlink socket")?;
        s.socket_mut().bind(&SocketAddr::new(0, 0)).context("binding the netfilter netlink socket")?;
        s.socket_mut().add_membership(NFNLGRP_NFTABLES).context("subscribing to nftables changes")?;
        Ok(RulesetWatch(s))
    }

    /// Waits for the next committed transaction (a lost notification, when the socket's
    /// buffer overflowed, counts as one: something changed). Cancel-safe: a wait given up
    /// consumes nothing.
    pub async fn changed(&mut self) -> Result<()> {
        loop {
            match self.0.recv_from_full().await {
                Ok((buf, _)) if commits(&buf) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
                Err(e) => return Err(e).context("reading nftables notifications"),
            }
        }
    }
}

/// Whether a datagram of netlink messages holds an nf_tables commit.
fn commits(mut buf: &[u8]) -> bool {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind >> 8 == NFNL_SUBSYS_NFTABLES && kind & 0xff == NFT_MSG_NEWGEN {
            return true;
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        if len < 16 || step > buf.len() {
            break;
        }
        buf = &buf[step..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16) -> Vec<u8> {
        let mut m = vec![0u8; 20];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        m
    }

    #[test]
    fn a_commit_is_found_among_other_messages() {
        let newrule = (NFNL_SUBSYS_NFTABLES << 8) | 6;
        let newgen = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;
        assert!(!commits(&msg(newrule)));
        assert!(commits(&[msg(newrule), msg(newgen)].concat()));
        assert!(!commits(&msg((11 << 8) | NFT_MSG_NEWGEN)), "another subsystem");
        assert!(!commits(&[1, 2, 3]), "short garbage");
    }
}
