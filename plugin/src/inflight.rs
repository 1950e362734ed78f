//! Driver calls in flight, kept so that dockerd's retry of a call cut off by a crash can be
//! served. dockerd retries a call whose connection failed (the plugin died or restarted
//! mid-call) for 30 s, but its client reuses the request's body, which the first attempt
//! drained: the retry arrives with an empty body (moby `pkg/plugins`, `callWithRetry`).
//!
//! Every mutating driver call is recorded in the store before it runs and removed once
//! answered. A body-less retry of method M is served with the body of a recorded,
//! unanswered call of M:
//! - M answers `{}` (network create and delete, endpoint delete, Leave, discovery, external
//!   connectivity): the oldest such call; which retry gets which does not matter, each is
//!   served once;
//! - M's answer is particular to its call (CreateEndpoint, Join, AllocateNetwork): only if
//!   exactly one was cut off; else the retry is refused (dockerd then undoes that container's
//!   start with calls of its own, which carry their bodies).

use oncache_store::{Call, Store};
use std::collections::HashSet;
use std::sync::Mutex;

/// dockerd gives up retrying 30 s after the first attempt; a record older than this (and a
/// margin for its back-off) is never what a retry is about.
const RETRY_WINDOW_MS: u64 = 45_000;

/// Mutating calls whose answer is `{}`.
const PLAIN: &[&str] = &[
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.FreeNetwork",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.Leave",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.DiscoverDelete",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
];
/// Mutating calls whose answer belongs to one caller.
const PARTICULAR: &[&str] = &["NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "NetworkDriver.AllocateNetwork"];

pub struct Calls {
    store: Store,
    /// Records being replayed right now: not to be handed to a second retry.
    claimed: Mutex<HashSet<u64>>,
}

/// What to run for a request.
pub enum Plan {
    /// As received (and recorded under this number, if it mutates).
    Run(Option<u64>),
    /// A body-less retry, served with a recorded call's body.
    Replay(u64, String),
    /// A body-less retry that cannot be matched: refuse it, saying why.
    Refuse(String),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Calls {
    /// Records older than the retry window (a crash long ago) are dropped here.
    pub fn new(store: Store) -> Calls {
        let now = now_ms();
        for (id, c) in store.calls().unwrap_or_default() {
            if now.saturating_sub(c.at_ms) >= RETRY_WINDOW_MS {
                let _ = store.end_call(id);
            }
        }
        Calls { store, claimed: Mutex::new(HashSet::new()) }
    }

    /// Decides how to serve `method` with `body`, recording it if it mutates.
    pub fn plan(&self, method: &str, body: &[u8]) -> Plan {
        let plain = PLAIN.contains(&method);
        if !plain && !PARTICULAR.contains(&method) {
            return Plan::Run(None);
        }
        if !body.iter().all(u8::is_ascii_whitespace) {
            let call = Call { method: method.into(), body: String::from_utf8_lossy(body).into_owned(), at_ms: now_ms() };
            return match self.store.begin_call(&call) {
                Ok(id) => Plan::Run(Some(id)),
                Err(e) => {
                    log::warn!("{method}: not recorded as in flight ({e}); a retry after a crash could not be served");
                    Plan::Run(None)
                }
            };
        }
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let cut_off: Vec<(u64, Call)> = match self.store.calls() {
            Ok(c) => c,
            Err(e) => return Plan::Refuse(format!("{method}: empty request body, and the calls in flight cannot be read: {e}")),
        };
        let now = now_ms();
        let (fresh, stale): (Vec<_>, Vec<_>) = cut_off.into_iter().partition(|(_, c)| now.saturating_sub(c.at_ms) < RETRY_WINDOW_MS);
        for (id, _) in stale {
            let _ = self.store.end_call(id);
        }
        let mine: Vec<(u64, Call)> = fresh.into_iter().filter(|(id, c)| c.method == method && !claimed.contains(id)).collect();
        let pick = match (plain, mine.len()) {
            (_, 0) => {
                return Plan::Refuse(format!(
                    "{method}: empty request body (dockerd resends a call cut off by a plugin restart without its body, and no {method} was cut off)"
                ))
            }
            (true, _) | (false, 1) => mine.into_iter().next().expect("one at least"),
            (false, n) => {
                return Plan::Refuse(format!(
                    "{method}: empty request body: dockerd resent one of {n} {method} calls cut off by a plugin restart without its body, and their answers differ; start the container again"
                ))
            }
        };
        claimed.insert(pick.0);
        log::info!("{method}: dockerd's body-less retry served with the call cut off at {} ms: {}", pick.1.at_ms, pick.1.body);
        Plan::Replay(pick.0, pick.1.body)
    }

    /// The call recorded as `id` was answered.
    pub fn done(&self, id: u64) {
        if let Err(e) = self.store.end_call(id) {
            log::warn!("call {id}: not cleared from the calls in flight: {e}");
        }
        self.claimed.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}
