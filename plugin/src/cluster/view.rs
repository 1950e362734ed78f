//! What a host's kernel should know about other hosts' containers, derived from what the hosts
//! publish: pure, so that every rule (who wins a contested address, whose facts count) is
//! tested without a network.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One endpoint as its host publishes it: gossip key `ep/<vni>/<ip>`, value `<mac> <since>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub vni: u32,
    pub ip: IpAddr,
    pub mac: [u8; 6],
    /// When it joined (ms since the Unix epoch, the host's clock): of two hosts claiming an
    /// address, the later join is the truth (the address moved).
    pub since: u64,
}

pub const KEY_PREFIX: &str = "ep/";

impl Published {
    pub fn key(&self) -> String {
        format!("{KEY_PREFIX}{}/{}", self.vni, self.ip)
    }

    pub fn value(&self) -> String {
        format!("{} {}", crate::naming::format_mac(self.mac), self.since)
    }

    /// The inverse of [`key`](Self::key) and [`value`](Self::value); None for anything else
    /// (a newer oncache's keys, garbage).
    pub fn parse(key: &str, value: &str) -> Option<Published> {
        let (vni, ip) = key.strip_prefix(KEY_PREFIX)?.split_once('/')?;
        let (mac, since) = value.split_once(' ')?;
        Some(Published {
            vni: vni.parse().ok().filter(|v| (1..=0xff_ffff).contains(v))?,
            ip: ip.parse().ok()?,
            mac: crate::naming::parse_mac(mac).ok()?,
            since: since.parse().ok()?,
        })
    }
}

/// A remote endpoint as the kernel is told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Remote {
    pub mac: [u8; 6],
    /// The underlay address of the host it lives on (its VTEP).
    pub vtep: IpAddr,
}

/// (VNI, container address).
pub type Key = (u32, IpAddr);

/// Every key of network `vni`, as a range of the ordered keys (IPv4 before IPv6).
pub fn in_network(vni: u32) -> std::ops::RangeInclusive<Key> {
    (vni, IpAddr::V4(Ipv4Addr::UNSPECIFIED))..=(vni, IpAddr::V6(Ipv6Addr::from(u128::MAX)))
}

/// The remote endpoints this host should program: every endpoint that a counted host publishes,
/// except addresses that live here (`local` wins: a container that joined here is here), for
/// networks this host has (`vnis`). Of two hosts publishing one address, the later join wins;
/// on a tie, the higher VTEP (any fixed rule does: every host decides the same).
pub fn remotes<'a>(
    local: &HashSet<Key>,
    vnis: &HashSet<u32>,
    hosts: impl IntoIterator<Item = (IpAddr, &'a [Published])>,
) -> BTreeMap<Key, Remote> {
    let mut best: BTreeMap<Key, (u64, Remote)> = BTreeMap::new();
    for (vtep, eps) in hosts {
        for p in eps {
            let key = (p.vni, p.ip);
            if local.contains(&key) || !vnis.contains(&p.vni) {
                continue;
            }
            let cand = (p.since, Remote { mac: p.mac, vtep });
            match best.get(&key) {
                Some(cur) if (cur.0, cur.1.vtep) >= (cand.0, cand.1.vtep) => {}
                _ => {
                    best.insert(key, cand);
                }
            }
        }
    }
    best.into_iter().map(|(k, (_, r))| (k, r)).collect()
}

/// Remote endpoints with their keys, in key order.
pub type Entries = Vec<(Key, Remote)>;

/// What changes from `applied` to `want`: entries to add or replace, and the entries to remove
/// (as programmed, so that their kernel state can be found).
pub fn diff(applied: &BTreeMap<Key, Remote>, want: &BTreeMap<Key, Remote>) -> (Entries, Entries) {
    let add = want.iter().filter(|(k, r)| applied.get(k) != Some(r)).map(|(k, r)| (*k, *r)).collect();
    let remove = applied.iter().filter(|(k, r)| want.get(k) != Some(r)).map(|(k, r)| (*k, *r)).collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_network_is_every_key_of_that_network_and_no_other() {
        let r = Remote { mac: [2, 0x42, 0, 0, 0, 1], vtep: "192.0.2.1".parse().unwrap() };
        let keys = ["0.0.0.0", "10.0.0.1", "255.255.255.255", "::", "fd00::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"];
        let mut m = BTreeMap::new();
        for vni in [6, 7, 8] {
            for k in keys {
                m.insert((vni, k.parse().unwrap()), r);
            }
        }
        let got: Vec<Key> = m.range(in_network(7)).map(|(k, _)| *k).collect();
        let want: Vec<Key> = keys.iter().map(|k| (7, k.parse().unwrap())).collect();
        assert_eq!(got, want);
    }

    fn p(vni: u32, ip: &str, last: u8, since: u64) -> Published {
        Published { vni, ip: ip.parse().unwrap(), mac: [2, 0x42, 0, 0, 0, last], since }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_round_trip_and_garbage_is_ignored() {
        let e = p(100, "10.1.0.5", 5, 1234);
        assert_eq!(e.key(), "ep/100/10.1.0.5");
        assert_eq!(Published::parse(&e.key(), &e.value()), Some(e));
        let v6 = p(7, "fd00::5", 9, 1);
        assert_eq!(Published::parse(&v6.key(), &v6.value()), Some(v6));
        for (k, v) in [
            ("ep/100/10.1.0.5", "02:42:00:00:00:05"),
            ("ep/0/10.1.0.5", "02:42:00:00:00:05 1"),
            ("ep/16777216/10.1.0.5", "02:42:00:00:00:05 1"),
            ("ep/100/10.1.0.300", "02:42:00:00:00:05 1"),
            ("ep/100/10.1.0.5", "zz 1"),
            ("node/x", "y"),
        ] {
            assert_eq!(Published::parse(k, v), None, "{k} {v}");
        }
    }

    #[test]
    fn later_join_wins_local_wins_and_foreign_networks_are_skipped() {
        let (b, c) = (ip("10.99.0.2"), ip("10.99.0.3"));
        let hb = [p(100, "10.1.0.5", 5, 10), p(100, "10.1.0.6", 6, 10), p(200, "10.1.0.7", 7, 10)];
        let hc = [p(100, "10.1.0.5", 0x55, 20), p(100, "10.1.0.8", 8, 5)];
        let local: HashSet<Key> = [(100, ip("10.1.0.8"))].into();
        let vnis: HashSet<u32> = [100].into();
        let r = remotes(&local, &vnis, [(b, &hb[..]), (c, &hc[..])]);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[&(100, ip("10.1.0.5"))], Remote { mac: [2, 0x42, 0, 0, 0, 0x55], vtep: c }, "moved to C later");
        assert_eq!(r[&(100, ip("10.1.0.6"))].vtep, b);
        // The same facts in another order decide the same.
        assert_eq!(remotes(&local, &vnis, [(c, &hc[..]), (b, &hb[..])]), r);
        // A tie goes to the higher VTEP, whatever the order.
        let tie = [p(100, "10.1.0.5", 1, 20)];
        let r1 = remotes(&local, &vnis, [(b, &tie[..]), (c, &hc[..])]);
        let r2 = remotes(&local, &vnis, [(c, &hc[..]), (b, &tie[..])]);
        assert_eq!(r1, r2);
        assert_eq!(r1[&(100, ip("10.1.0.5"))].vtep, c);
    }

    #[test]
    fn diff_adds_replaces_and_removes() {
        let (b, c) = (ip("10.99.0.2"), ip("10.99.0.3"));
        let k = |s: &str| (100, ip(s));
        let r = |vtep| Remote { mac: [2, 0, 0, 0, 0, 1], vtep };
        let applied: BTreeMap<_, _> = [(k("10.1.0.1"), r(b)), (k("10.1.0.2"), r(b))].into();
        let want: BTreeMap<_, _> = [(k("10.1.0.1"), r(c)), (k("10.1.0.3"), r(b))].into();
        let (add, remove) = diff(&applied, &want);
        assert_eq!(add, [(k("10.1.0.1"), r(c)), (k("10.1.0.3"), r(b))]);
        assert_eq!(remove, [(k("10.1.0.1"), r(b)), (k("10.1.0.2"), r(b))]);
        assert_eq!(diff(&want, &want), (vec![], vec![]));
    }
}
