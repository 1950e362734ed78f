//! Map keys, values and constants shared by the oncache eBPF programs and user space.
//!
//! Layout rules: `#[repr(C)]`, explicit padding, no implicit holes (the kernel hashes keys byte
//! by byte). IPv4 addresses are `[u8; 4]` in wire order, exactly as they sit in packets; VNIs
//! and ports are host-order integers.
#![no_std]

pub mod wire;

/// The standard VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;
/// What encapsulation adds in front of the inner frame: outer Ethernet 14 + IPv4 20 + UDP 8 +
/// VXLAN 8. The inner Ethernet header (14) is carried, so the room inserted is 50 bytes.
pub const ENCAP_LEN: u32 = 50;
/// Outer IPv4 + UDP + VXLAN: how much larger than the inner frame the outer IP packet is.
pub const OUTER_L3_OVERHEAD: u32 = 36;

/// `skb->mark` bit the host firewall sets (mangle POSTROUTING, `ctstate ESTABLISHED`) on
/// packets of oncache bridges: the packet passed the firewall and its flow was seen both ways.
/// The learning programs learn only from packets carrying it; it never leaves the host.
pub const ADMIT_MARK: u32 = 0x0010_0000;

// Map names: one place for the names both sides use.
pub const MAP_CONFIG: &str = "ONC_CONFIG";
pub const MAP_ENDPOINTS: &str = "ONC_ENDPOINTS";
pub const MAP_NETWORKS: &str = "ONC_NETWORKS";
pub const MAP_EGRESS: &str = "ONC_EGRESS";
pub const MAP_OUTER: &str = "ONC_OUTER";
pub const MAP_INGRESS: &str = "ONC_INGRESS";
pub const MAP_FILTER: &str = "ONC_FILTER";
pub const MAP_STATS: &str = "ONC_STATS";
pub const MAP_GENS: &str = "ONC_GENS";
pub const MAPS: [&str; 9] =
    [MAP_CONFIG, MAP_ENDPOINTS, MAP_NETWORKS, MAP_EGRESS, MAP_OUTER, MAP_INGRESS, MAP_FILTER, MAP_STATS, MAP_GENS];

// Program names (the functions' names in the object) and where each attaches.
/// Host-side veth, tc ingress: packets leaving a container.
pub const PROG_EGRESS_FAST: &str = "oncache_egress_fast";
/// Underlay NIC, tc ingress: VXLAN packets arriving for local containers.
pub const PROG_INGRESS_FAST: &str = "oncache_ingress_fast";
/// Underlay NIC, tc egress: VXLAN packets the slow path built.
pub const PROG_EGRESS_LEARN: &str = "oncache_egress_learn";
/// Host-side veth, tc egress: packets the slow path delivers to a container.
pub const PROG_INGRESS_LEARN: &str = "oncache_ingress_learn";

pub const MAX_ENDPOINTS: u32 = 4096;
pub const MAX_NETWORKS: u32 = 1024;
pub const MAX_EGRESS: u32 = 65536;
pub const MAX_OUTER: u32 = 4096;
pub const MAX_INGRESS: u32 = 16384;
/// LRU: the least recently used flows are evicted first when full.
pub const MAX_FLOWS: u32 = 262144;

/// ONC_CONFIG[0]: what the programs need to know about this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub underlay_ifindex: u32,
    pub underlay_mtu: u32,
    pub underlay_ip: [u8; 4],
    pub admit_mark: u32,
    /// The firewall epoch: a flow is admitted only under the current one. The daemon writes a
    /// new one when the host's ruleset changes, which withdraws every admitted flow at once
    /// (each is judged by the new rules before it returns), without walking ONC_FILTER.
    pub epoch: u32,
}

/// ONC_ENDPOINTS: host-side veth ifindex (u32) → the endpoint behind it. Written by the daemon
/// at Join; the egress fast path forwards only packets with exactly this source IP and MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub vni: u32,
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The generation of this endpoint's ONC_INGRESS entry (see [`FlowState`]).
    pub gen: u32,
}

/// ONC_NETWORKS: VNI (u32) → flags. Only VNIs present take part in the fast path.
pub const NET_FASTPATH: u32 = 1;

/// Key of ONC_EGRESS and ONC_INGRESS: a container address within one network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VniIp {
    pub vni: u32,
    pub ip: [u8; 4],
}

/// ONC_EGRESS: (VNI, remote container IP) → where it lives. Written by the daemon from the
/// control plane (what the remote host publishes), never learned from packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressEntry {
    /// Remote host's underlay address (VTEP): the key of ONC_OUTER.
    pub vtep: [u8; 4],
    /// Remote container's MAC; a frame to another MAC misses.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Changes whenever the entry is written anew: flows admitted under another generation
    /// are not admitted under this one (see [`FlowState`]).
    pub gen: u32,
    /// This entry's index in ONC_GENS, which holds `gen` while the entry exists (0 once it is
    /// gone): the fast path checks a flow's egress generation there, an array read the
    /// verifier inlines, instead of looking this entry up by hash.
    pub slot: u32,
}

/// ONC_GENS: slot (u32, [`EgressEntry::slot`]) → the current generation of the ONC_EGRESS
/// entry holding that slot, or 0 when no entry holds it.
pub const MAX_GEN_SLOTS: u32 = MAX_EGRESS;

/// ONC_OUTER: remote VTEP ([u8; 4]) → the outer header the slow path built towards it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OuterHeader {
    /// Outer Ethernet: destination MAC, source MAC, EtherType (0x0800).
    pub eth: [u8; 14],
    /// Outer TOS with the ECN bits cleared (ECN is copied from the inner packet, RFC 6040).
    pub tos: u8,
    pub ttl: u8,
    /// Local underlay address the slow path used as source.
    pub src: [u8; 4],
    /// Interface the slow path sent it out of.
    pub ifindex: u32,
}

/// ONC_INGRESS: (VNI, local container IP) → how to deliver to it. Written by the daemon at
/// Join.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressEntry {
    /// Host-side veth; `bpf_redirect_peer` delivers into the container behind it.
    pub ifindex: u32,
    /// The container's MAC: the inner destination MAC must be this.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// As [`EgressEntry::gen`]; equal to the endpoint's [`EndpointInfo::gen`].
    pub gen: u32,
}

/// ONC_FILTER key: one flow seen from the local container's side, so that both directions of
/// a flow share one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub vni: u32,
    pub local_ip: [u8; 4],
    pub remote_ip: [u8; 4],
    pub local_port: u16,
    pub remote_port: u16,
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// ONC_FILTER value: which directions the slow path admitted on this host, and under which
/// generations of the flow's two entries (the remote container's ONC_EGRESS entry, the local
/// one's ONC_INGRESS entry). A flow is admitted only while both bits are set and both
/// generations are the entries' current ones: rewriting or deleting an entry withdraws every
/// flow admitted under it at once, however the learning programs race with the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub bits: u32,
    pub egress_gen: u32,
    pub ingress_gen: u32,
    /// Outer UDP source port (host order) the slow path's VXLAN device gave this flow, learned
    /// with [`FLOW_EGRESS`]: the fast path sends with the very same port, and need not hash the
    /// inner flow per packet (the flow dissector is the costliest step for UDP).
    pub sport: u16,
    pub _pad: u16,
    /// The remote host the outer header below leads to, learned with [`FLOW_EGRESS`].
    pub vtep: [u8; 4],
    /// The outer header the slow path built for this flow (as ONC_OUTER holds it for `vtep`),
    /// learned with [`FLOW_EGRESS`]: the egress program finds everything it sends with in the
    /// entry that admits the flow, one map lookup fewer per packet.
    pub outer: OuterHeader,
    /// The remote container's ONC_EGRESS entry as the flow was admitted under it (its
    /// ONC_GENS slot and MAC; `egress_gen` and `vtep` are its generation and host), learned
    /// with [`FLOW_EGRESS`]. While ONC_GENS[slot] is `egress_gen` the entry is unchanged, so
    /// the fast path checks MAC and host here, without looking the entry up.
    pub egress_slot: u32,
    pub remote_mac: [u8; 6],
    pub _pad2: [u8; 2],
    /// The firewall epoch ([`Config::epoch`]) both directions were admitted in: a learner
    /// that finds an entry of an older epoch starts it afresh, with its own direction only.
    pub epoch: u32,
}

pub const FLOW_EGRESS: u32 = 1;
pub const FLOW_INGRESS: u32 = 2;
pub const FLOW_BOTH: u32 = FLOW_EGRESS | FLOW_INGRESS;

/// ONC_STATS: a per-CPU u64 array indexed by [`stat_index`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    EgressFast = 0,
    IngressFast = 1,
    EgressLearn = 2,
    IngressLearn = 3,
}

impl Program {
    /// Every program, in ONC_STATS order.
    pub const ALL: [Program; 4] = [Program::EgressFast, Program::IngressFast, Program::EgressLearn, Program::IngressLearn];

    /// The program's function name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Program::EgressFast => PROG_EGRESS_FAST,
            Program::IngressFast => PROG_INGRESS_FAST,
            Program::EgressLearn => PROG_EGRESS_LEARN,
            Program::IngressLearn => PROG_INGRESS_LEARN,
        }
    }
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Forwarded on the fast path.
    Hit = 0,
    /// A candidate packet that went to the slow path (no entry, not admitted yet).
    Miss = 1,
    /// A cache or filter entry written (learning programs).
    Learned = 2,
    /// An entry removed by the data path (TCP FIN/RST).
    Invalidated = 3,
    /// Refused by a rule: spoofed source, oversize without GSO, MAC mismatch.
    Rejected = 4,
}

/// In [`Counter`] order.
pub const ALL_COUNTERS: [Counter; COUNTERS] =
    [Counter::Hit, Counter::Miss, Counter::Learned, Counter::Invalidated, Counter::Rejected];

pub const PROGRAMS: usize = 4;
pub const COUNTERS: usize = 5;
pub const STATS_LEN: u32 = (PROGRAMS * COUNTERS) as u32;

#[inline(always)]
pub const fn stat_index(p: Program, c: Counter) -> u32 {
    p as u32 * COUNTERS as u32 + c as u32
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for VniIp {}
    unsafe impl aya::Pod for EgressEntry {}
    unsafe impl aya::Pod for OuterHeader {}
    unsafe impl aya::Pod for IngressEntry {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Config>(), 20);
        assert_eq!(size_of::<EndpointInfo>(), 20);
        assert_eq!(size_of::<VniIp>(), 8);
        assert_eq!(size_of::<EgressEntry>(), 20);
        assert_eq!(size_of::<OuterHeader>(), 24);
        assert_eq!(size_of::<IngressEntry>(), 16);
        assert_eq!(size_of::<FlowState>(), 60);
        assert_eq!(size_of::<FlowKey>(), 20);
        assert_eq!(stat_index(Program::IngressLearn, Counter::Rejected), STATS_LEN - 1);
    }
}
