//! Named points between a store write and the kernel change that goes with it, where a test
//! can have the daemon die as `kill -9` would (SIGKILL to itself: no unwinding, no flush, no
//! clean-up), to prove that a restart recovers from an interruption at each of them.
//!
//! `ONCACHE_CRASH_AT=<point>[,<point>...]` arms them; unset (always, outside tests) a point
//! costs one comparison against an empty list.

use std::sync::OnceLock;

/// Every point, in the order a container's life reaches them (networks first).
pub const POINTS: &[&str] = &[
    NETWORK_STORED,
    NETWORK_UNLINKED,
    ENDPOINT_STORED,
    JOIN_LINKED,
    JOIN_STORED,
    JOIN_FAST,
    LEAVE_UNLINKED,
    LEAVE_STORED,
    DELETE_UNLINKED,
];

/// CreateNetwork: the record is stored, its bridge and VXLAN device not made yet.
pub const NETWORK_STORED: &str = "network-stored";
/// DeleteNetwork: the links and fast-path entries are gone, the record not yet.
pub const NETWORK_UNLINKED: &str = "network-unlinked";
/// CreateEndpoint: the record is stored, the answer not sent.
pub const ENDPOINT_STORED: &str = "endpoint-stored";
/// Join: the veth pair exists, the record does not say joined yet.
pub const JOIN_LINKED: &str = "join-linked";
/// Join: the record says joined, the fast path is not attached yet.
pub const JOIN_STORED: &str = "join-stored";
/// Join: the fast path is attached, the other hosts not told yet.
pub const JOIN_FAST: &str = "join-fast";
/// Leave: the links and fast-path entries are gone, the record still says joined.
pub const LEAVE_UNLINKED: &str = "leave-unlinked";
/// Leave: the record says left, the other hosts not told yet.
pub const LEAVE_STORED: &str = "leave-stored";
/// DeleteEndpoint: the links are gone, the record not yet.
pub const DELETE_UNLINKED: &str = "delete-unlinked";

/// Dies here if `ONCACHE_CRASH_AT` names this point.
pub fn here(point: &'static str) {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("ONCACHE_CRASH_AT")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
            .unwrap_or_default()
    });
    if armed.iter().any(|p| p == point) {
        log::warn!("crash point {point} (ONCACHE_CRASH_AT): killing myself with SIGKILL");
        // SAFETY: kill(2) on our own PID; no memory is touched.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
