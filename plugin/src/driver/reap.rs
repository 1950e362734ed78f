//! Endpoints whose container vanished without anyone saying so.

use super::Driver;
use crate::naming;
use anyhow::Result;

impl Driver {
    /// Joined endpoints whose host veth is gone: the pair goes with the container's network
    /// namespace, so their container is gone (killed while dockerd was down or crashed, a
    /// reboot), and a Leave may never come: under Swarm dockerd keeps no record of endpoints
    /// across its restarts. They leave: unpublished, nothing cached for them. Under Swarm
    /// (global scope) their records go too, since no DeleteEndpoint will ever name them; a
    /// local dockerd still sends its DeleteEndpoint. Returns how many left.
    pub async fn reap_dead_endpoints(&mut self) -> Result<usize> {
        let mut reaped = 0;
        for mut ep in self.store.endpoints()?.into_iter().filter(|e| e.sandbox.is_some()) {
            if self.dp.link_index(&naming::veth_host(&ep.id)).await?.is_some() {
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
}
