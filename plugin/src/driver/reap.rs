//! Endpoints whose container vanished without anyone saying so.

use super::Driver;
use crate::naming;
use anyhow::Result;
use std::time::{Duration, Instant};

/// dockerd joins an endpoint right after creating it and deletes it right after it leaves;
/// one that stays unjoined this long is one whose DeleteEndpoint was lost.
pub const UNJOINED_GRACE: Duration = Duration::from_secs(30);

impl Driver {
    /// Joined endpoints whose host veth is gone: the pair goes with the container's network
    /// namespace, so their container is gone (killed while dockerd was down or crashed, a
    /// reboot), and a Leave may never come: under Swarm dockerd keeps no record of endpoints
    /// across its restarts. They leave: unpublished, nothing cached for them. Under Swarm
    /// (global scope) their records go too, since no DeleteEndpoint will ever name them; a
    /// local dockerd still sends its DeleteEndpoint. Returns how many left.
    pub async fn reap_dead_endpoints(&mut self) -> Result<usize> {
        let mut reaped = 0;
        // One dump of the links, not a lookup per endpoint: this runs every 5 s, holding the
        // driver, however many endpoints there are.
        let links = self.dp.link_names().await?;
        for mut ep in self.store.endpoints()?.into_iter().filter(|e| e.sandbox.is_some()) {
            if links.contains(&naming::veth_host(&ep.id)) {
                continue;
            }
            let vni = self.vni_of(Some(&ep))?;
            self.unplug(&ep.id, Some(&ep), vni).await?;
            if self.global {
                self.store.delete_endpoint(&ep.id)?;
            } else {
                ep.sandbox = None;
                self.store.put_endpoint(&ep)?;
            }
            log::info!("endpoint {} left: its container's interface is gone", ep.id);
            reaped += 1;
        }
        if reaped > 0 {
            self.publish().await?;
        }
        Ok(reaped)
    }

    /// Docker endpoints that stay unjoined past [`UNJOINED_GRACE`]: their DeleteEndpoint was
    /// cut off by a crash before it was recorded (dockerd's retry then carries no body and
    /// names nothing, and dockerd forgets the endpoint whatever the answer). Their records go;
    /// they have no links or fast-path state (Leave, or the dead-endpoint reaper, took them).
    /// Returns how many went.
    pub fn reap_unjoined_endpoints(&mut self) -> Result<usize> {
        let now = Instant::now();
        let unjoined: Vec<String> =
            self.store.endpoints()?.into_iter().filter(|e| e.sandbox.is_none() && e.cni.is_none()).map(|e| e.id).collect();
        self.unjoined_since.retain(|id, _| unjoined.contains(id));
        let mut reaped = 0;
        for id in unjoined {
            let since = *self.unjoined_since.entry(id.clone()).or_insert(now);
            if now.duration_since(since) >= UNJOINED_GRACE {
                self.store.delete_endpoint(&id)?;
                self.unjoined_since.remove(&id);
                log::info!("endpoint {id} deleted: unjoined for {UNJOINED_GRACE:?}, its DeleteEndpoint was lost");
                reaped += 1;
            }
        }
        Ok(reaped)
    }
}
