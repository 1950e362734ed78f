//! Driver calls in flight, kept so that dockerd's retry of a call cut off by a crash can be
//! served. dockerd retries a call whose connection failed (the plugin died or restarted
//! mid-call) for 30 s, but its client reuses the request's body, which the first attempt
//! drained: the retry arrives with an empty body (moby `pkg/plugins`, `callWithRetry`).
//!
//! Every mutating driver call is recorded in the store before it runs and removed once
//! answered. The calls recorded when the daemon starts are the ones a crash cut off; calls
//! this process is running are never what a retry is about.
//!
//! A retry cannot say which call it repeats, and not every cut-off call was recorded: one
//! whose request was still in the socket, or half read, when the daemon died comes back as a
//! body-less retry too. So body-less retries of a method are gathered for `GATHER` (calls
//! cut off together fail together, and dockerd's back-off brings their retries back together)
//! and served only when they match the recorded calls one for one:
//! - M answers `{}` (network create and delete, endpoint delete, Leave, discovery, external
//!   connectivity): as many retries as recorded calls; each retry is served one of them;
//! - M's answer is particular to its call (CreateEndpoint, Join, AllocateNetwork): one retry
//!   and one recorded call.
//!
//! Anything else is refused, every retry of the gathering: handing one container's interface
//! to another is worse than a refused start (dockerd then undoes that start with calls of its
//! own, which carry their bodies).

use oncache_store::{Call, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// dockerd gives up retrying 30 s after the first attempt; a record older than this (and a
/// margin for its back-off) is never what a retry is about.
const RETRY_WINDOW_MS: u64 = 45_000;

/// How long body-less retries of one method are gathered before any is served.
const GATHER: Duration = Duration::from_secs(1);

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
    /// Calls a crash cut off (recorded before this process started), not yet handed to a
    /// retry, oldest first.
    cut_off: Mutex<Vec<(u64, Call)>>,
    /// The open gathering of body-less retries of each method.
    gatherings: Mutex<HashMap<String, Arc<Gathering>>>,
}

/// Body-less retries of one method that arrived within `GATHER` of the first.
struct Gathering {
    until: Instant,
    state: Mutex<GatheringState>,
}

#[derive(Default)]
struct GatheringState {
    arrived: usize,
    /// Taken by the first retry to wake: the records to serve, in arrival order, or why not.
    decision: Option<Result<Vec<(u64, Call)>, String>>,
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
    /// Takes the calls a crash cut off; records older than the retry window (a crash long ago)
    /// are dropped here.
    pub fn new(store: Store) -> Calls {
        let now = now_ms();
        let mut cut_off = Vec::new();
        for (id, c) in store.calls().unwrap_or_default() {
            if now.saturating_sub(c.at_ms) >= RETRY_WINDOW_MS {
                let _ = store.end_call(id);
            } else {
                cut_off.push((id, c));
            }
        }
        if !cut_off.is_empty() {
            log::info!("{} calls were cut off by the last stop; dockerd's retries of them are served when they match", cut_off.len());
        }
        Calls { store, cut_off: Mutex::new(cut_off), gatherings: Mutex::new(HashMap::new()) }
    }

    /// Decides how to serve `method` with `body`, recording it if it mutates. A body-less retry
    /// waits up to `GATHER` for the retries cut off with it.
    pub async fn plan(&self, method: &str, body: &[u8]) -> Plan {
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
        if self.cut_off_calls(method, false).is_empty() {
            return Plan::Refuse(format!(
                "{method}: empty request body (dockerd resends a call cut off by a plugin restart without its body, and no {method} was cut off)"
            ));
        }
        let (gathering, ticket) = self.join_gathering(method);
        tokio::time::sleep_until(gathering.until).await;
        let mut st = gathering.state.lock().unwrap_or_else(|p| p.into_inner());
        let arrived = st.arrived;
        let decision = st.decision.get_or_insert_with(|| self.decide(method, plain, arrived));
        match decision {
            Ok(served) => {
                let (id, call) = served[ticket].clone();
                log::info!("{method}: dockerd's body-less retry served with the call cut off at {} ms: {}", call.at_ms, call.body);
                Plan::Replay(id, call.body)
            }
            Err(why) => Plan::Refuse(why.clone()),
        }
    }

    /// Fresh cut-off calls of `method` not handed to a retry yet (stale ones are dropped);
    /// `take` removes them from the cut-off set.
    fn cut_off_calls(&self, method: &str, take: bool) -> Vec<(u64, Call)> {
        let now = now_ms();
        let mut mine = Vec::new();
        self.cut_off.lock().unwrap_or_else(|p| p.into_inner()).retain(|(id, c)| {
            if now.saturating_sub(c.at_ms) >= RETRY_WINDOW_MS {
                let _ = self.store.end_call(*id);
                return false;
            }
            if c.method != method {
                return true;
            }
            mine.push((*id, c.clone()));
            !take
        });
        mine
    }

    /// The open gathering of `method`'s retries (a new one if none is open), and this
    /// retry's place in it.
    fn join_gathering(&self, method: &str) -> (Arc<Gathering>, usize) {
        let now = Instant::now();
        let mut open = self.gatherings.lock().unwrap_or_else(|p| p.into_inner());
        let g = match open.get(method) {
            Some(g) if g.until > now => g.clone(),
            _ => {
                let g = Arc::new(Gathering { until: now + GATHER, state: Mutex::default() });
                open.insert(method.to_string(), g.clone());
                g
            }
        };
        let mut st = g.state.lock().unwrap_or_else(|p| p.into_inner());
        st.arrived += 1;
        let ticket = st.arrived - 1;
        drop(st);
        (g, ticket)
    }

    /// Matches `arrived` body-less retries of `method` with its cut-off calls. Either way the
    /// calls are taken: the retries of a refused gathering will not come again.
    fn decide(&self, method: &str, plain: bool, arrived: usize) -> Result<Vec<(u64, Call)>, String> {
        let calls = self.cut_off_calls(method, true);
        let n = calls.len();
        if arrived == n && (plain || n == 1) {
            return Ok(calls);
        }
        for (id, _) in &calls {
            let _ = self.store.end_call(*id);
        }
        let why = if plain || arrived != n {
            format!("dockerd resent {arrived} {method} calls cut off by a plugin restart without their bodies, and {n} were recorded: which is which cannot be told")
        } else {
            format!("dockerd resent {n} {method} calls cut off by a plugin restart without their bodies, and their answers differ")
        };
        log::warn!("{method}: empty request body: {why}; every such retry refused");
        Err(format!("{method}: empty request body: {why}; run the command again"))
    }

    /// The call recorded as `id` was answered.
    pub fn done(&self, id: u64) {
        if let Err(e) = self.store.end_call(id) {
            log::warn!("call {id}: not cleared from the calls in flight: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOIN: &str = "NetworkDriver.Join";
    const LEAVE: &str = "NetworkDriver.Leave";

    /// A store with `calls` recorded and never answered, as a killed daemon leaves it, and
    /// the restarted daemon's view of it.
    fn after_crash(dir: &std::path::Path, calls: &[(&str, &str)]) -> Calls {
        let store = Store::open(dir).unwrap();
        let before = Calls::new(store.clone());
        for (m, b) in calls {
            assert!(matches!(futures_util::FutureExt::now_or_never(before.plan(m, b.as_bytes())), Some(Plan::Run(Some(_)))));
        }
        Calls::new(store)
    }

    async fn retries(calls: &Calls, method: &str, n: usize) -> Vec<Plan> {
        futures_util::future::join_all((0..n).map(|_| calls.plan(method, b""))).await
    }

    fn replayed(p: &Plan) -> Option<&str> {
        match p {
            Plan::Replay(_, b) => Some(b),
            _ => None,
        }
    }

    #[tokio::test]
    async fn one_join_cut_off_and_one_retry_is_served_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let calls = after_crash(dir.path(), &[(JOIN, r#"{"EndpointID":"x"}"#)]);
        let got = retries(&calls, JOIN, 1).await;
        assert_eq!(replayed(&got[0]), Some(r#"{"EndpointID":"x"}"#));
        // Served once: a second retry later finds nothing.
        assert!(matches!(&retries(&calls, JOIN, 1).await[0], Plan::Refuse(m) if m.contains("no NetworkDriver.Join was cut off")));
    }

    /// A second Join was cut off before it was recorded (in the socket, or half read): its
    /// body-less retry must not be handed the recorded one's interface. Both are refused.
    #[tokio::test]
    async fn more_retries_than_recorded_joins_are_all_refused() {
        let dir = tempfile::tempdir().unwrap();
        let calls = after_crash(dir.path(), &[(JOIN, r#"{"EndpointID":"x"}"#)]);
        let got = retries(&calls, JOIN, 2).await;
        for p in &got {
            assert!(matches!(p, Plan::Refuse(m) if m.contains("resent 2") && m.contains("cut off by a plugin restart")), "{:?}", replayed(p));
        }
    }

    #[tokio::test]
    async fn two_joins_cut_off_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let calls = after_crash(dir.path(), &[(JOIN, r#"{"EndpointID":"x"}"#), (JOIN, r#"{"EndpointID":"y"}"#)]);
        assert!(retries(&calls, JOIN, 2).await.iter().all(|p| matches!(p, Plan::Refuse(m) if m.contains("answers differ"))));
    }

    #[tokio::test]
    async fn plain_calls_are_served_one_each_when_the_counts_match() {
        let dir = tempfile::tempdir().unwrap();
        let calls = after_crash(dir.path(), &[(LEAVE, r#"{"EndpointID":"x"}"#), (LEAVE, r#"{"EndpointID":"y"}"#)]);
        let got = retries(&calls, LEAVE, 2).await;
        let mut bodies: Vec<&str> = got.iter().filter_map(replayed).collect();
        bodies.sort();
        assert_eq!(bodies, [r#"{"EndpointID":"x"}"#, r#"{"EndpointID":"y"}"#]);
    }

    /// A call this process is running is not a cut-off one, whatever its method.
    #[tokio::test]
    async fn a_call_in_flight_now_is_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let calls = after_crash(dir.path(), &[]);
        assert!(matches!(calls.plan(JOIN, br#"{"EndpointID":"z"}"#).await, Plan::Run(Some(_))));
        assert!(matches!(&retries(&calls, JOIN, 1).await[0], Plan::Refuse(_)));
    }
}
