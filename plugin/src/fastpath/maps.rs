//! Typed access to the fast path's pinned maps: what the daemon writes (configuration,
//! endpoints, networks), invalidation of what the programs learned, and the operator's view.

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::Ebpf;
use oncache_common as c;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::sweep;

pub struct Maps {
    config: Map,
    endpoints: Map,
    networks: Map,
    egress: Map,
    outer: Map,
    ingress: Map,
    filter: Map,
    stats: Map,
    gens: Map,
    /// ONC_GENS slots no ONC_EGRESS entry holds, lowest last (taken first).
    free_slots: Vec<u32>,
    /// Raised whenever a change leaves admitted flows dead (withdrawn by generation): the
    /// sweeper then removes their ONC_FILTER entries, off the request path.
    dead_flows: Arc<sweep::Signal>,
}

fn hash<K: aya::Pod, V: aya::Pod>(m: &mut Map) -> Result<HashMap<&mut MapData, K, V>> {
    HashMap::try_from(m).map_err(|e| anyhow!("{e}"))
}

/// Removes every key of a hash map that `doomed` selects; returns how many went.
fn remove_where<K: aya::Pod, V: aya::Pod>(m: &mut Map, doomed: impl Fn(&K, &V) -> bool) -> Result<usize> {
    let mut h = hash::<K, V>(m)?;
    let keys: Vec<K> = h.iter().filter_map(|kv| kv.ok()).filter(|(k, v)| doomed(k, v)).map(|(k, _)| k).collect();
    for k in &keys {
        // Gone already (the LRU evicted it, a program deleted it): fine.
        let _ = h.remove(k);
    }
    Ok(keys.len())
}

fn entries<K: aya::Pod, V: aya::Pod>(m: &mut Map) -> Result<Vec<(K, V)>> {
    Ok(hash::<K, V>(m)?.iter().filter_map(|kv| kv.ok()).collect())
}

fn ip(b: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(b)
}

/// A new entry generation: random, so that no generation a flow was admitted under before a
/// restart comes back (0 is never used: it is what an unset field reads as).
pub fn new_gen() -> u32 {
    let mut b = [0u8; 4];
    loop {
        if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            b = (t.subsec_nanos() ^ t.as_secs() as u32).to_le_bytes();
        }
        let g = u32::from_le_bytes(b);
        if g != 0 {
            return g;
        }
    }
}

impl Maps {
    /// Takes the object's maps (pinned ones are whatever an earlier daemon left) and makes
    /// ONC_GENS agree with ONC_EGRESS, which a daemon killed between the two writes of
    /// [`Maps::set_remote`] or [`Maps::drop_egress`] leaves apart.
    pub fn take(ebpf: &mut Ebpf, dead_flows: Arc<sweep::Signal>) -> Result<Maps> {
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"));
        let mut m = Maps {
            config: take(c::MAP_CONFIG)?,
            endpoints: take(c::MAP_ENDPOINTS)?,
            networks: take(c::MAP_NETWORKS)?,
            egress: take(c::MAP_EGRESS)?,
            outer: take(c::MAP_OUTER)?,
            ingress: take(c::MAP_INGRESS)?,
            filter: take(c::MAP_FILTER)?,
            stats: take(c::MAP_STATS)?,
            gens: take(c::MAP_GENS)?,
            free_slots: Vec::new(),
            dead_flows,
        };
        m.reconcile_slots()?;
        Ok(m)
    }

    fn gens(&mut self) -> Result<Array<&mut MapData, u32>> {
        Array::try_from(&mut self.gens).map_err(|e| anyhow!("{e}"))
    }

    /// Every ONC_EGRESS entry gets a slot of its own whose ONC_GENS value is its generation;
    /// an entry without one (out of range, or another's) is written anew with a new slot and
    /// generation. Slots no entry holds become free. A free slot may still hold a generation
    /// (the daemon died after writing it, before the entry): no flow names it, since flows
    /// learn slot and generation from an entry, and a new entry there gets a new generation.
    fn reconcile_slots(&mut self) -> Result<()> {
        let mut held = vec![false; c::MAX_GEN_SLOTS as usize];
        let mut homeless = Vec::new();
        for (k, v) in entries::<c::VniIp, c::EgressEntry>(&mut self.egress)? {
            match held.get_mut(v.slot as usize) {
                Some(h) if !*h => {
                    *h = true;
                    let mut g = self.gens()?;
                    if g.get(&v.slot, 0)? != v.gen {
                        g.set(v.slot, v.gen, 0).context("writing ONC_GENS")?;
                    }
                }
                _ => homeless.push((k, v)),
            }
        }
        self.free_slots = (0..c::MAX_GEN_SLOTS).rev().filter(|s| !held[*s as usize]).collect();
        for (k, v) in homeless {
            log::warn!("egress entry for {} had no slot of its own; giving it one", ip(k.ip));
            self.write_egress(k, v.vtep, v.mac, None)?;
        }
        Ok(())
    }

    /// Writes ONC_EGRESS[key] with a new generation, in its slot `slot` or a free one. The
    /// generation goes into ONC_GENS first: from then on no flow admitted under the entry's
    /// old generation is, and a learner that read the old entry can only admit under that.
    fn write_egress(&mut self, key: c::VniIp, vtep: [u8; 4], mac: [u8; 6], slot: Option<u32>) -> Result<()> {
        // An entry written anew in its slot withdraws the flows admitted under the old one.
        if slot.is_some() {
            self.dead_flows.raise();
        }
        let slot = match slot {
            Some(s) => s,
            None => self.free_slots.pop().ok_or_else(|| anyhow!("no free ONC_GENS slot for {} (ONC_EGRESS full)", ip(key.ip)))?,
        };
        let e = c::EgressEntry { vtep, mac, _pad: [0; 2], gen: new_gen(), slot };
        let written = self.gens()?.set(slot, e.gen, 0).context("writing ONC_GENS").and_then(|()| {
            hash::<c::VniIp, c::EgressEntry>(&mut self.egress)?
                .insert(key, e, 0)
                .with_context(|| format!("adding egress entry for {} (ONC_EGRESS full?)", ip(key.ip)))
        });
        if written.is_err() {
            // No entry for the key then, rather than one whose generation the slot lacks.
            let _ = hash::<c::VniIp, c::EgressEntry>(&mut self.egress)?.remove(&key);
            let _ = self.gens()?.set(slot, 0, 0);
            self.free_slots.push(slot);
        }
        written
    }

    /// Removes the ONC_EGRESS entries `doomed` selects (a walk of the table).
    fn drop_egress(&mut self, doomed: impl Fn(&c::VniIp, &c::EgressEntry) -> bool) -> Result<usize> {
        let gone: Vec<(c::VniIp, c::EgressEntry)> =
            entries::<c::VniIp, c::EgressEntry>(&mut self.egress)?.into_iter().filter(|(k, v)| doomed(k, v)).collect();
        for (k, v) in &gone {
            self.drop_egress_entry(k, v)?;
        }
        Ok(gone.len())
    }

    /// Removes ONC_EGRESS entry `k`, which holds `v`: its slot is cleared first (withdrawing its
    /// flows at once, whatever a learner does meanwhile), then the entry goes and the slot is freed.
    fn drop_egress_entry(&mut self, k: &c::VniIp, v: &c::EgressEntry) -> Result<()> {
        self.gens()?.set(v.slot, 0, 0).context("clearing ONC_GENS")?;
        self.dead_flows.raise();
        // Gone already: fine.
        let _ = hash::<c::VniIp, c::EgressEntry>(&mut self.egress)?.remove(k);
        // Each entry holds a slot of its own (reconcile_slots, write_egress).
        if v.slot < c::MAX_GEN_SLOTS {
            self.free_slots.push(v.slot);
        }
        Ok(())
    }

    /// Writes the configuration, keeping the firewall epoch a daemon before wrote (a restart
    /// withdraws no flow); the first gets a new one.
    pub fn set_config(&mut self, mut cfg: c::Config) -> Result<()> {
        let mut a: Array<&mut MapData, c::Config> = Array::try_from(&mut self.config)?;
        cfg.epoch = match a.get(&0, 0) {
            Ok(cur) if cur.epoch != 0 => cur.epoch,
            _ => new_gen(),
        };
        a.set(0, cfg, 0).context("writing the fast-path configuration")
    }

    /// A new firewall epoch: every admitted flow goes back to the slow path at once, to be
    /// admitted again under the rules as they are now. The sweeper removes the old entries.
    pub fn withdraw_flows(&mut self) -> Result<()> {
        let mut a: Array<&mut MapData, c::Config> = Array::try_from(&mut self.config)?;
        let mut cfg = a.get(&0, 0).context("reading the fast-path configuration")?;
        let old = cfg.epoch;
        while cfg.epoch == old {
            cfg.epoch = new_gen();
        }
        a.set(0, cfg, 0).context("writing a new firewall epoch")?;
        self.dead_flows.raise();
        Ok(())
    }

    /// A local endpoint on the fast path: what its veth may send (ONC_ENDPOINTS) and how to
    /// deliver to it (ONC_INGRESS), under one new generation.
    /// An endpoint already entered exactly so keeps its generation (a daemon restart or a
    /// repeated Join withdraws no flow).
    pub fn set_endpoint(&mut self, ifindex: u32, mut ep: c::EndpointInfo) -> Result<()> {
        let key = c::VniIp { vni: ep.vni, ip: ep.ip };
        let had = hash::<u32, c::EndpointInfo>(&mut self.endpoints)?.get(&ifindex, 0).ok();
        let delivered = hash::<c::VniIp, c::IngressEntry>(&mut self.ingress)?.get(&key, 0).ok();
        ep.gen = match (had, delivered) {
            (Some(h), Some(d)) if (h.vni, h.ip, h.mac) == (ep.vni, ep.ip, ep.mac) && (d.ifindex, d.mac, d.gen) == (ifindex, ep.mac, h.gen) => h.gen,
            _ => new_gen(),
        };
        let deliver = c::IngressEntry { ifindex, mac: ep.mac, _pad: [0; 2], gen: ep.gen };
        hash::<c::VniIp, c::IngressEntry>(&mut self.ingress)?
            .insert(key, deliver, 0)
            .context("adding the endpoint's delivery entry (ONC_INGRESS full?)")?;
        // Flows admitted under a generation this endpoint or address had before are dead now.
        if had.is_some_and(|h| h.gen != ep.gen) || delivered.is_some_and(|d| d.gen != ep.gen) {
            self.dead_flows.raise();
        }
        hash::<u32, c::EndpointInfo>(&mut self.endpoints)?.insert(ifindex, ep, 0).context("adding endpoint")
    }

    /// Where a remote container lives, from the control plane. A changed entry gets a new
    /// generation (its flows must be admitted anew); an unchanged one is left alone.
    pub fn set_remote(&mut self, vni: u32, addr: [u8; 4], vtep: [u8; 4], mac: [u8; 6]) -> Result<()> {
        let key = c::VniIp { vni, ip: addr };
        let slot = match hash::<c::VniIp, c::EgressEntry>(&mut self.egress)?.get(&key, 0) {
            Ok(cur) if cur.vtep == vtep && cur.mac == mac => return Ok(()),
            Ok(cur) => Some(cur.slot),
            Err(_) => None,
        };
        self.write_egress(key, vtep, mac, slot)
    }

    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        // Gone already: fine.
        let _ = hash::<u32, c::EndpointInfo>(&mut self.endpoints)?.remove(&ifindex);
        Ok(())
    }

    /// Endpoints whose veth is not in `live` (ifindexes) go, with the delivery entries that
    /// point at such veths and the flows of addresses no live endpoint has: what a container
    /// that left while the daemon was down leaves behind.
    pub fn retain_endpoints(&mut self, live: &[u32]) -> Result<usize> {
        let n = remove_where::<u32, c::EndpointInfo>(&mut self.endpoints, |k, _| !live.contains(k))?
            + remove_where::<c::VniIp, c::IngressEntry>(&mut self.ingress, |_, v| !live.contains(&v.ifindex))?;
        let local: Vec<(u32, [u8; 4])> =
            entries::<u32, c::EndpointInfo>(&mut self.endpoints)?.into_iter().map(|(_, e)| (e.vni, e.ip)).collect();
        Ok(n + remove_where::<c::FlowKey, c::FlowState>(&mut self.filter, |k, _| !local.contains(&(k.vni, k.local_ip)))?)
    }

    /// Makes the fast-path network set exactly `vnis`, purging what was learned in others.
    pub fn set_networks(&mut self, vnis: &[u32]) -> Result<()> {
        let stale: Vec<u32> = entries::<u32, u32>(&mut self.networks)?.into_iter().map(|(k, _)| k).filter(|v| !vnis.contains(v)).collect();
        for v in stale {
            self.remove_network(v)?;
        }
        let mut h = hash::<u32, u32>(&mut self.networks)?;
        for v in vnis {
            h.insert(*v, c::NET_FASTPATH, 0)?;
        }
        Ok(())
    }

    /// A network is gone: nothing learned in it may be used again.
    pub fn remove_network(&mut self, vni: u32) -> Result<usize> {
        remove_where::<u32, u32>(&mut self.networks, |k, _| *k == vni)?;
        Ok(self.drop_egress(|k, _| k.vni == vni)?
            + remove_where::<c::VniIp, c::IngressEntry>(&mut self.ingress, |k, _| k.vni == vni)?
            + remove_where::<c::FlowKey, c::FlowState>(&mut self.filter, |k, _| k.vni == vni)?
            + remove_where::<u32, c::EndpointInfo>(&mut self.endpoints, |_, v| v.vni == vni)?)
    }

    /// A local container left from the veth at `ifindex`: its delivery entry goes (unless the
    /// address is delivered to another veth by now), which withdraws its flows; the sweeper
    /// removes them. By key: no walk of a table.
    pub fn forget_local(&mut self, vni: u32, addr: [u8; 4], ifindex: u32) -> Result<()> {
        let key = c::VniIp { vni, ip: addr };
        let mut h = hash::<c::VniIp, c::IngressEntry>(&mut self.ingress)?;
        if h.get(&key, 0).is_ok_and(|v| v.ifindex == ifindex) {
            let _ = h.remove(&key);
            self.dead_flows.raise();
        }
        Ok(())
    }

    /// A remote container left or moved: where it was goes, which withdraws the flows with it;
    /// the sweeper removes them. By key: no walk of a table.
    pub fn forget_remote(&mut self, vni: u32, addr: [u8; 4]) -> Result<()> {
        let key = c::VniIp { vni, ip: addr };
        if let Ok(v) = hash::<c::VniIp, c::EgressEntry>(&mut self.egress)?.get(&key, 0) {
            self.drop_egress_entry(&key, &v)?;
        }
        Ok(())
    }

    /// A peer host is gone: its outer header and every container learned behind it.
    pub fn forget_peer(&mut self, vtep: [u8; 4]) -> Result<usize> {
        let gone: Vec<c::VniIp> = entries::<c::VniIp, c::EgressEntry>(&mut self.egress)?
            .into_iter()
            .filter(|(_, v)| v.vtep == vtep)
            .map(|(k, _)| k)
            .collect();
        let n = remove_where::<[u8; 4], c::OuterHeader>(&mut self.outer, |k, _| *k == vtep)?;
        for k in &gone {
            self.forget_remote(k.vni, k.ip)?;
        }
        Ok(n + gone.len())
    }

    /// `oncache cache flush`: drops everything learned (admitted flows, outer headers), so
    /// every flow is judged by the slow path (and the firewall) again. What the daemon wrote
    /// from its own facts (configuration, endpoints, networks, where containers live) stays.
    pub fn flush(&mut self) -> Result<usize> {
        Ok(remove_where::<c::FlowKey, c::FlowState>(&mut self.filter, |_, _| true)?
            + remove_where::<[u8; 4], c::OuterHeader>(&mut self.outer, |_, _| true)?)
    }

    /// Outer headers that `stale(host, next-hop MAC)` selects go (they are learned again from
    /// the next slow-path packet to that host): after a neighbour or route change.
    /// Admitted flows carry their own copy of the header (the egress program reads it there):
    /// a flow whose copy is stale goes too, and is admitted again with the new one.
    pub fn forget_outer(&mut self, stale: impl Fn([u8; 4], [u8; 6]) -> bool) -> Result<usize> {
        let next_hop = |h: &c::OuterHeader| -> [u8; 6] { h.eth[..6].try_into().expect("6 bytes") };
        Ok(remove_where::<[u8; 4], c::OuterHeader>(&mut self.outer, |k, v| stale(*k, next_hop(v)))?
            + remove_where::<c::FlowKey, c::FlowState>(&mut self.filter, |_, v| v.bits & c::FLOW_EGRESS != 0 && stale(v.vtep, next_hop(&v.outer)))?)
    }

    pub fn stats(&mut self) -> Result<Stats> {
        let a: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(&mut self.stats)?;
        let get = |p: c::Program| -> Result<Counters> {
            let mut v = [0u64; c::COUNTERS];
            for (slot, counter) in v.iter_mut().zip(c::ALL_COUNTERS) {
                *slot = a.get(&c::stat_index(p, counter), 0)?.iter().sum();
            }
            Ok(Counters { hits: v[0], misses: v[1], learned: v[2], invalidated: v[3], rejected: v[4], ..Counters::default() })
        };
        let mut s = Stats::default();
        for p in c::Program::ALL {
            *s.of_mut(p) = get(p)?;
        }
        Ok(s)
    }

    pub fn list(&mut self) -> Result<CacheList> {
        let fmt_mac = |m: [u8; 6]| crate::naming::format_mac(m);
        Ok(CacheList {
            egress: entries::<c::VniIp, c::EgressEntry>(&mut self.egress)?
                .into_iter()
                .map(|(k, v)| EgressView { vni: k.vni, ip: ip(k.ip), vtep: ip(v.vtep), mac: fmt_mac(v.mac) })
                .collect(),
            outer: entries::<[u8; 4], c::OuterHeader>(&mut self.outer)?
                .into_iter()
                .map(|(k, v)| OuterView {
                    vtep: ip(k),
                    src: ip(v.src),
                    dst_mac: fmt_mac(v.eth[..6].try_into().expect("6 bytes")),
                    src_mac: fmt_mac(v.eth[6..12].try_into().expect("6 bytes")),
                    tos: v.tos,
                    ttl: v.ttl,
                    ifindex: v.ifindex,
                })
                .collect(),
            ingress: entries::<c::VniIp, c::IngressEntry>(&mut self.ingress)?
                .into_iter()
                .map(|(k, v)| IngressView { vni: k.vni, ip: ip(k.ip), ifindex: v.ifindex, mac: fmt_mac(v.mac) })
                .collect(),
            filter: entries::<c::FlowKey, c::FlowState>(&mut self.filter)?
                .into_iter()
                .map(|(k, v)| FlowView {
                    vni: k.vni,
                    proto: match k.proto {
                        6 => "tcp".into(),
                        17 => "udp".into(),
                        p => p.to_string(),
                    },
                    local: format!("{}:{}", ip(k.local_ip), k.local_port),
                    remote: format!("{}:{}", ip(k.remote_ip), k.remote_port),
                    egress: v.bits & c::FLOW_EGRESS != 0,
                    ingress: v.bits & c::FLOW_INGRESS != 0,
                })
                .collect(),
        })
    }
}

#[derive(Debug, Default, Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub learned: u64,
    pub invalidated: u64,
    pub rejected: u64,
    /// The kernel's count of the program's runs and their total time (helpers included),
    /// kept only while `kernel.bpf_stats_enabled` is 1: each run then costs two clock reads.
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub run_time_ns: u64,
}

#[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub egress_fast: Counters,
    pub ingress_fast: Counters,
    pub egress_learn: Counters,
    pub ingress_learn: Counters,
}

impl Stats {
    pub fn of(&self, p: c::Program) -> &Counters {
        match p {
            c::Program::EgressFast => &self.egress_fast,
            c::Program::IngressFast => &self.ingress_fast,
            c::Program::EgressLearn => &self.egress_learn,
            c::Program::IngressLearn => &self.ingress_learn,
        }
    }

    pub fn of_mut(&mut self, p: c::Program) -> &mut Counters {
        match p {
            c::Program::EgressFast => &mut self.egress_fast,
            c::Program::IngressFast => &mut self.ingress_fast,
            c::Program::EgressLearn => &mut self.egress_learn,
            c::Program::IngressLearn => &mut self.ingress_learn,
        }
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct EgressView {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub vtep: Ipv4Addr,
    pub mac: String,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct OuterView {
    pub vtep: Ipv4Addr,
    pub src: Ipv4Addr,
    pub dst_mac: String,
    pub src_mac: String,
    pub tos: u8,
    pub ttl: u8,
    pub ifindex: u32,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct IngressView {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub mac: String,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct FlowView {
    pub vni: u32,
    pub proto: String,
    pub local: String,
    pub remote: String,
    pub egress: bool,
    pub ingress: bool,
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct CacheList {
    pub egress: Vec<EgressView>,
    pub outer: Vec<OuterView>,
    pub ingress: Vec<IngressView>,
    pub filter: Vec<FlowView>,
}
