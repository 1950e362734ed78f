//! Removes dead admitted flows from ONC_FILTER, in the background.
//!
//! A flow is withdrawn the moment one of its entries changes generation or goes (the delivery
//! entry of its local container, the egress entry of its remote one), or the firewall epoch
//! changes: the programs compare generations and epoch on every packet, so a withdrawn flow is
//! never used again. Its ONC_FILTER entry is then dead weight. The programs write that table's
//! keys, so finding a container's flows means walking the whole table: two system calls per
//! flow, up to `MAX_FLOWS` of them. Done on each Leave or each remote container's departure,
//! that walk made every such call cost as much as the host's whole flow table, under the
//! driver's lock. Requests therefore only [`raise`] a flag, and this thread walks the table
//! afterwards, once for a whole burst of departures, with handles of its own on the pinned maps
//! (no lock shared with requests).
//!
//! [`raise`]: Signal::raise

use anyhow::{anyhow, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use oncache_common as c;
use std::collections::{HashMap as Index, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long after the first departure of a burst the sweep starts: the rest of the burst
/// (a `docker compose down`, a host leaving) is swept with it.
const GATHER: Duration = Duration::from_millis(200);

/// After a sweep that took T, the next starts no sooner than this many T later: under constant
/// churn the sweeper keeps to a fifth of one CPU, however large the table.
const REST_FACTOR: u32 = 4;

/// Set when some flows may have died since the last sweep.
#[derive(Default)]
pub struct Signal {
    dirty: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    /// Some flows may be dead now: sweep soon.
    pub fn raise(&self) {
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Blocks until a flag is raised (true) or `timeout` passes (false); lowers it.
    fn wait(&self, timeout: Duration) -> bool {
        let g = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self.cv.wait_timeout_while(g, timeout, |d| !*d).unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *g, false)
    }
}

/// Starts the sweeper on the maps pinned in `maps_dir`. It stops when the returned signal's
/// last other holder drops it (the fast path went).
pub fn spawn(maps_dir: PathBuf) -> Arc<Signal> {
    let signal = Arc::new(Signal::default());
    let s = Arc::downgrade(&signal);
    let spawned = std::thread::Builder::new().name("oncache-sweep".into()).spawn(move || loop {
        let Some(sig) = s.upgrade() else { return };
        if !sig.wait(Duration::from_secs(5)) {
            continue;
        }
        drop(sig);
        std::thread::sleep(GATHER);
        if let Some(sig) = s.upgrade() {
            // Departures during the gathering are in this sweep.
            sig.wait(Duration::ZERO);
        }
        let t = Instant::now();
        match sweep(&maps_dir) {
            Ok((gone, walked)) => log::debug!("swept {gone} dead flows of {walked} in {:?}", t.elapsed()),
            Err(e) => log::warn!("sweeping dead flows: {e:#}"),
        }
        std::thread::sleep(t.elapsed() * REST_FACTOR);
    });
    if let Err(e) = spawned {
        log::warn!("no sweeper thread ({e}): dead flows stay until the LRU evicts them");
    }
    signal
}

fn open(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    Map::from_map_data(data).map_err(|e| anyhow!("{name}: {e}"))
}

/// One walk of ONC_FILTER: removes the flows [`dead`] selects. Returns (removed, walked).
fn sweep(dir: &Path) -> Result<(usize, usize)> {
    let (mut config, mut networks, mut ingress, mut gens, mut filter) = (
        open(dir, c::MAP_CONFIG)?,
        open(dir, c::MAP_NETWORKS)?,
        open(dir, c::MAP_INGRESS)?,
        open(dir, c::MAP_GENS)?,
        open(dir, c::MAP_FILTER)?,
    );
    let epoch = Array::<_, c::Config>::try_from(&mut config)?.get(&0, 0)?.epoch;
    let networks: HashSet<u32> =
        HashMap::<_, u32, u32>::try_from(&mut networks)?.keys().filter_map(|k| k.ok()).collect();
    let delivery: Index<(u32, [u8; 4]), u32> = HashMap::<_, c::VniIp, c::IngressEntry>::try_from(&mut ingress)?
        .iter()
        .filter_map(|kv| kv.ok())
        .map(|(k, v)| ((k.vni, k.ip), v.gen))
        .collect();
    let gens: Array<_, u32> = Array::try_from(&mut gens)?;
    let mut slot_gens: Index<u32, Option<u32>> = Index::new();
    let mut slot_gen = |slot: u32| *slot_gens.entry(slot).or_insert_with(|| gens.get(&slot, 0).ok());
    let judge = |k: &c::FlowKey, v: &c::FlowState, slot_gen: Option<u32>| {
        dead(k, v, epoch, &networks, delivery.get(&(k.vni, k.local_ip)).copied(), slot_gen)
    };
    let mut filter = HashMap::<_, c::FlowKey, c::FlowState>::try_from(&mut filter)?;
    // A key the programs delete meanwhile restarts the kernel's walk from the first key: the
    // cap keeps a walk of a table in constant change finite.
    let cap = 2 * c::MAX_FLOWS as usize;
    let mut walked = 0;
    let mut doomed = Vec::new();
    for (k, v) in filter.iter().take(cap).filter_map(|kv| kv.ok()) {
        walked += 1;
        if judge(&k, &v, slot_gen(v.egress_slot)) {
            doomed.push(k);
        }
    }
    let mut gone = 0;
    for k in doomed {
        // Judged again as it is now: a learner may have admitted the flow anew meanwhile.
        let Ok(v) = filter.get(&k, 0) else { continue };
        if judge(&k, &v, gens.get(&v.egress_slot, 0).ok()) {
            gone += usize::from(filter.remove(&k).is_ok());
        }
    }
    Ok((gone, walked))
}

/// Whether flow `k` can never be admitted again, given the firewall epoch, the fast-path
/// networks, the generation of its local container's delivery entry (None: no such entry) and
/// the generation in the ONC_GENS slot it names.
pub fn dead(k: &c::FlowKey, v: &c::FlowState, epoch: u32, networks: &HashSet<u32>, delivery_gen: Option<u32>, slot_gen: Option<u32>) -> bool {
    let local_gone = delivery_gen.is_none() || (v.bits & c::FLOW_INGRESS != 0 && delivery_gen != Some(v.ingress_gen));
    let remote_gone = v.bits & c::FLOW_EGRESS != 0 && slot_gen != Some(v.egress_gen);
    v.epoch != epoch || !networks.contains(&k.vni) || local_gone || remote_gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(bits: u32) -> (c::FlowKey, c::FlowState) {
        let k = c::FlowKey { vni: 7, local_ip: [10, 0, 0, 2], remote_ip: [10, 0, 0, 3], local_port: 1, remote_port: 2, proto: 17, _pad: [0; 3] };
        // SAFETY: plain integers and byte arrays; all zeroes is a valid value.
        let mut v: c::FlowState = unsafe { std::mem::zeroed() };
        v.bits = bits;
        v.ingress_gen = 11;
        v.egress_gen = 22;
        v.egress_slot = 3;
        v.epoch = 5;
        (k, v)
    }

    #[test]
    fn a_flow_lives_while_both_its_entries_keep_their_generations() {
        let nets = HashSet::from([7]);
        let (k, v) = flow(c::FLOW_BOTH);
        assert!(!dead(&k, &v, 5, &nets, Some(11), Some(22)));
        assert!(dead(&k, &v, 5, &nets, Some(12), Some(22)), "local container re-joined");
        assert!(dead(&k, &v, 5, &nets, None, Some(22)), "local container left");
        assert!(dead(&k, &v, 5, &nets, Some(11), Some(0)), "remote container left (slot cleared)");
        assert!(dead(&k, &v, 5, &nets, Some(11), Some(23)), "remote container moved");
        assert!(dead(&k, &v, 5, &HashSet::new(), Some(11), Some(22)), "network gone");
        assert!(dead(&k, &v, 6, &nets, Some(11), Some(22)), "the firewall changed");
    }

    #[test]
    fn a_half_admitted_flow_is_judged_by_its_own_half() {
        let nets = HashSet::from([7]);
        let (k, v) = flow(c::FLOW_INGRESS);
        assert!(!dead(&k, &v, 5, &nets, Some(11), Some(0)), "the egress half is not learned yet");
        let (k, v) = flow(c::FLOW_EGRESS);
        assert!(!dead(&k, &v, 5, &nets, Some(99), Some(22)), "the ingress half is not learned yet");
        assert!(dead(&k, &v, 5, &nets, None, Some(22)), "but its local container must still be there");
    }
}
