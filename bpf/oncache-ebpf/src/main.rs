//! The ONCache fast path: four tc classifiers sharing the maps defined here.
//!
//! | program                | hook                     | job                                  |
//! |------------------------|--------------------------|--------------------------------------|
//! | `oncache_egress_fast`  | host-side veth, ingress  | encapsulate and redirect to the NIC  |
//! | `oncache_ingress_fast` | underlay NIC, ingress    | decapsulate and redirect into the pod|
//! | `oncache_egress_learn` | underlay NIC, egress     | learn what the slow path encapsulated|
//! | `oncache_ingress_learn`| host-side veth, egress   | learn what the slow path delivered   |
//!
//! Every program returns `TC_ACT_OK` with the packet untouched whenever something is not as
//! expected: the slow path (bridge + VXLAN device) is always complete on its own.
//! No global variables: all configuration comes from `ONC_CONFIG`, so that user space can pin
//! every map the programs use.
#![no_std]
#![no_main]

mod packet;

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_EXIST, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
    },
    bpf_f_adj_room_encap_l2,
    helpers::{bpf_check_mtu, bpf_redirect, bpf_redirect_peer},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use oncache_common::{
    stat_index, Config, Counter, EgressEntry, EndpointInfo, FlowKey, FlowState, IngressEntry,
    OuterHeader, Program, VniIp, ENCAP_LEN, FLOW_BOTH, FLOW_EGRESS, FLOW_INGRESS, MAX_EGRESS,
    MAX_ENDPOINTS, MAX_FLOWS, MAX_GEN_SLOTS, MAX_INGRESS, MAX_NETWORKS, MAX_OUTER, OUTER_L3_OVERHEAD,
    STATS_LEN,
};
use packet::{parse_flow, parse_vxlan, Encap, EncapParams, Flow, ETH_LEN, INNER_OFF};

// The static names are the map names user space uses (oncache_common::MAP_*).
#[map]
static ONC_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static ONC_ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);
#[map]
static ONC_NETWORKS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_NETWORKS, 0);
#[map]
static ONC_EGRESS: HashMap<VniIp, EgressEntry> = HashMap::with_max_entries(MAX_EGRESS, 0);
#[map]
static ONC_OUTER: HashMap<[u8; 4], OuterHeader> = HashMap::with_max_entries(MAX_OUTER, 0);
#[map]
static ONC_INGRESS: HashMap<VniIp, IngressEntry> = HashMap::with_max_entries(MAX_INGRESS, 0);
#[map]
static ONC_FILTER: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static ONC_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);
#[map]
static ONC_GENS: Array<u32> = Array::with_max_entries(MAX_GEN_SLOTS, 0);

// The type of the TC_ACT_* bindings differs between architectures.
#[allow(clippy::unnecessary_cast)]
const PASS: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
const DROP: i32 = TC_ACT_SHOT as i32;

/// Push outer Ethernet/IPv4/UDP/VXLAN after the first 14 bytes. FIXED_GSO keeps gso_size (the
/// inner MSS); the ENCAP flags set the inner header offsets, inner protocol ETH_P_TEB,
/// skb->encapsulation and SKB_GSO_UDP_TUNNEL, so GSO packets are segmented as VXLAN later.
const ENCAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | bpf_f_adj_room_encap_l2(ETH_LEN as u64);

/// Remove the 50 bytes after the first 14. FIXED_GSO is required: a GRO'd VXLAN skb already
/// carries the inner MSS as gso_size (and UDP GSO is refused without it).
const DECAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64;

#[classifier]
pub fn oncache_egress_fast(ctx: TcContext) -> i32 {
    egress_fast(&ctx)
}

#[classifier]
pub fn oncache_ingress_fast(ctx: TcContext) -> i32 {
    ingress_fast(&ctx)
}

#[classifier]
pub fn oncache_egress_learn(ctx: TcContext) -> i32 {
    egress_learn(&ctx);
    PASS
}

#[classifier]
pub fn oncache_ingress_learn(ctx: TcContext) -> i32 {
    ingress_learn(&ctx);
    PASS
}

/// Host-side veth, tc ingress: a packet leaving a container.
#[inline(always)]
fn egress_fast(ctx: &TcContext) -> i32 {
    const P: Program = Program::EgressFast;
    let Some(cfg) = config() else { return PASS };
    let Some(ep) = (unsafe { ONC_ENDPOINTS.get(skb_ifindex(ctx)) }) else {
        return PASS;
    };
    // A tag the NIC would insert (offloaded VLAN) would end up on the outer frame.
    if skb_vlan_present(ctx) {
        return count(P, Counter::Miss);
    }
    // No ONC_NETWORKS lookup here: user space enters only endpoints of fast-path networks in
    // ONC_ENDPOINTS (driver::plug_fast), and removes them with their network.
    let Some(flow) = parse_flow(ctx, 0) else {
        return PASS;
    };
    // Only what this endpoint may send goes through the cache.
    if !same(&flow.eth.src, &ep.mac) || !same(&flow.ip.src, &ep.ip) {
        return count(P, Counter::Rejected);
    }
    let key = outgoing_flow_key(ep.vni, &flow);
    if flow.starts_or_ends() {
        return invalidate(P, &key);
    }
    // The flow's entry carries the remote container's MAC and host, the outer header and the
    // port it was admitted with, all current while its generations are: no ONC_EGRESS or
    // ONC_OUTER lookup here.
    let Some(admission) = admitted(&key, ep.gen, cfg.epoch) else {
        return count(P, Counter::Miss);
    };
    if !same(&flow.eth.dst, &admission.remote_mac) {
        return count(P, Counter::Miss);
    }
    let outer = &admission.outer;

    let len = ctx.len();
    let outer_ip_len = len + OUTER_L3_OVERHEAD;
    // Every frame that leaves must fit the underlay: the whole frame without GSO, each segment
    // (headers + gso_size) with it. The outer IPv4 total length must be expressible too.
    // The MTU is the device's as it is now (ONC_CONFIG holds the one at daemon start; an
    // operator may lower it since), and never more than that one.
    let mtu = min(cfg.underlay_mtu, device_mtu(ctx, outer.ifindex));
    let gso = skb_gso_size(ctx);
    let wire_ip_len = if gso == 0 { outer_ip_len } else { OUTER_L3_OVERHEAD + flow.headers_len() + gso };
    if wire_ip_len > mtu || outer_ip_len > 0xffff {
        return count(P, Counter::Rejected);
    }
    let params = EncapParams {
        outer_eth: outer.eth,
        tos: outer.tos | (flow.ip.tos & 0x3), // RFC 6040: copy ECN outwards
        ttl: outer.ttl,
        src: outer.src,
        dst: admission.vtep,
        sport: admission.sport,
        vni: ep.vni,
        frame_len: len + ENCAP_LEN,
    };
    let ifindex = outer.ifindex;
    if ctx
        .adjust_room(ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .is_err()
    {
        return count(P, Counter::Miss);
    }
    // The room sits after the original Ethernet header: rewrite bytes 0..64 in one store.
    let hdr = Encap::new(&params, flow.eth);
    if ctx.store(0, &hdr, 0).is_err() {
        return DROP; // already grown: never hand a half-built frame on
    }
    count(P, Counter::Hit);
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Underlay NIC, tc ingress: a VXLAN packet, perhaps for a local container.
#[inline(always)]
fn ingress_fast(ctx: &TcContext) -> i32 {
    const P: Program = Program::IngressFast;
    let Some(cfg) = config() else { return PASS };
    // Only frames addressed to this host's MAC: the kernel drops the others (OTHERHOST).
    if skb_pkt_type(ctx) != PACKET_HOST {
        return PASS;
    }
    let Some(outer) = parse_vxlan(ctx) else {
        return PASS;
    };
    if !same(&outer.ip.dst, &cfg.underlay_ip) {
        return PASS;
    }
    let vni = outer.vni;
    let Some(inner) = parse_flow(ctx, INNER_OFF) else {
        return count(P, Counter::Miss);
    };
    // No ONC_NETWORKS lookup: user space writes delivery entries only for endpoints of
    // fast-path networks (driver::plug_fast) and removes them with their network.
    let Some(ing) = (unsafe {
        ONC_INGRESS.get(VniIp {
            vni,
            ip: inner.ip.dst,
        })
    }) else {
        return count(P, Counter::Miss);
    };
    if !same(&inner.eth.dst, &ing.mac) {
        return count(P, Counter::Miss);
    }
    let key = incoming_flow_key(vni, &inner);
    if inner.starts_or_ends() {
        // Only the host the control plane names for the sender may end its flows.
        if !sent_from_its_host(vni, &inner, &outer) {
            return count(P, Counter::Rejected);
        }
        return invalidate(P, &key);
    }
    let Some(admission) = admitted(&key, ing.gen, cfg.epoch) else {
        return count(P, Counter::Miss);
    };
    // A host may only deliver for the containers it hosts (as the control plane says): the
    // flow was admitted under the remote container's current egress entry, whose host and MAC
    // it carries.
    if !same(&admission.vtep, &outer.ip.src) || !same(&admission.remote_mac, &inner.eth.src) {
        return count(P, Counter::Rejected);
    }
    // RFC 6040: congestion marked on the underlay (outer CE) must reach the receiver. A
    // Not-ECT inner packet with outer CE is the kernel's to drop: slow path.
    let ce = outer.ip.tos & 0x3 == 0x3;
    if ce && inner.ip.tos & 0x3 == 0 {
        return count(P, Counter::Miss);
    }
    if ce && inner.ip.tos & 0x3 != 0x3 && mark_ce(ctx, &inner).is_err() {
        return count(P, Counter::Miss);
    }
    let ifindex = ing.ifindex;
    if ctx
        .adjust_room(-(ENCAP_LEN as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
        .is_err()
    {
        return count(P, Counter::Miss);
    }
    // The first 14 bytes (the outer Ethernet header) were kept: put the inner one there.
    if ctx.store(0, &inner.eth, 0).is_err() {
        return DROP; // already shrunk: never hand a half-built frame on
    }
    count(P, Counter::Hit);
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

/// Underlay NIC, tc egress: learn from a VXLAN packet the slow path built for an admitted flow.
#[inline(always)]
fn egress_learn(ctx: &TcContext) {
    let Some(cfg) = config() else { return };
    if skb_mark(ctx) & cfg.admit_mark == 0 {
        return;
    }
    let Some(outer) = parse_vxlan(ctx) else {
        return;
    };
    if !same(&outer.ip.src, &cfg.underlay_ip) || !fast_path_network(outer.vni) {
        return;
    }
    let Some(inner) = parse_flow(ctx, INNER_OFF) else {
        return;
    };
    if inner.ends() || !inner.unicast() {
        return;
    }
    let vni = outer.vni;
    // Only towards where the control plane says the container lives, and only its MAC: the
    // packet tells how the kernel reaches that host, and that the slow path admitted the flow.
    let Some(eg) = (unsafe {
        ONC_EGRESS.get(VniIp {
            vni,
            ip: inner.ip.dst,
        })
    }) else {
        return;
    };
    if !same(&eg.vtep, &outer.ip.dst) || !same(&eg.mac, &inner.eth.dst) {
        return;
    }
    let header = OuterHeader {
        eth: outer.eth.to_bytes(),
        tos: outer.ip.tos & !0x3, // ECN is copied per packet, not cached
        ttl: outer.ip.ttl,
        src: outer.ip.src,
        ifindex: skb_ifindex(ctx),
    };
    let key = outgoing_flow_key(vni, &inner);
    // ONC_OUTER keeps the host's header for `oncache cache` and for invalidation by next hop;
    // the flow's entry gets its own copy, which the egress program uses.
    let mut changed = put_if_changed(&ONC_OUTER, &outer.ip.dst, &header);
    changed |= admit_egress(&key, eg, outer.sport, &header, cfg.epoch);
    if changed {
        count(Program::EgressLearn, Counter::Learned);
    }
}

/// Host-side veth, tc egress: learn how the slow path delivered to this container.
#[inline(always)]
fn ingress_learn(ctx: &TcContext) {
    let ifindex = skb_ifindex(ctx);
    let Some(ep) = (unsafe { ONC_ENDPOINTS.get(ifindex) }) else {
        return;
    };
    let Some(cfg) = config() else { return };
    if skb_mark(ctx) & cfg.admit_mark == 0 || !fast_path_network(ep.vni) {
        return;
    }
    let Some(flow) = parse_flow(ctx, 0) else {
        return;
    };
    if !same(&flow.ip.dst, &ep.ip) || flow.ends() || !flow.unicast() {
        return;
    }
    // Only while the daemon's delivery entry names this veth and this MAC.
    let Some(ing) = (unsafe {
        ONC_INGRESS.get(VniIp {
            vni: ep.vni,
            ip: flow.ip.dst,
        })
    }) else {
        return;
    };
    if ing.ifindex != ifindex || !same(&ing.mac, &flow.eth.dst) {
        return;
    }
    if admit_ingress(&incoming_flow_key(ep.vni, &flow), ing.gen, cfg.epoch) {
        count(Program::IngressLearn, Counter::Learned);
    }
}

/// The filter key of a packet a local container sends (local = source).
#[inline(always)]
fn outgoing_flow_key(vni: u32, flow: &Flow) -> FlowKey {
    flow_key(
        vni,
        flow.ip.src,
        flow.ip.dst,
        flow.sport,
        flow.dport,
        flow.ip.proto,
    )
}

/// The filter key of a packet arriving for a local container (local = destination).
#[inline(always)]
fn incoming_flow_key(vni: u32, flow: &Flow) -> FlowKey {
    flow_key(
        vni,
        flow.ip.dst,
        flow.ip.src,
        flow.dport,
        flow.sport,
        flow.ip.proto,
    )
}

#[inline(always)]
fn flow_key(
    vni: u32,
    local: [u8; 4],
    remote: [u8; 4],
    lport: u16,
    rport: u16,
    proto: u8,
) -> FlowKey {
    // Start from all zeroes: an aligned fill the compiler turns into plain stores (a literal
    // `_pad: [0; 3]` became a call to memset), and the padding must be zero for the hash key.
    let mut key: FlowKey = unsafe { core::mem::zeroed() };
    key.vni = vni;
    key.local_ip = local;
    key.remote_ip = remote;
    key.local_port = lport;
    key.remote_port = rport;
    key.proto = proto;
    key
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    ONC_CONFIG.get(0)
}

#[inline(always)]
fn fast_path_network(vni: u32) -> bool {
    unsafe { ONC_NETWORKS.get(vni) }.is_some()
}

/// The flow's state if the slow path admitted it in both directions, in the current firewall
/// epoch, under the current generations of the local container's delivery entry
/// (`ingress_gen`, from the entry the caller holds) and of the remote container's egress entry
/// (in ONC_GENS, by the slot the flow names).
#[inline(always)]
fn admitted(key: &FlowKey, ingress_gen: u32, epoch: u32) -> Option<&'static FlowState> {
    let f = unsafe { ONC_FILTER.get(key) }?;
    if f.bits & FLOW_BOTH != FLOW_BOTH || f.ingress_gen != ingress_gen || f.epoch != epoch {
        return None;
    }
    let current = ONC_GENS.get(f.egress_slot)?;
    if *current == f.egress_gen { Some(f) } else { None }
}

/// Whether the control plane names the outer source as the host of the inner source, with
/// its MAC: checked by lookup for the packets that end a flow's admission (rare), where no
/// admitted flow vouches for the sender.
#[inline(always)]
fn sent_from_its_host(vni: u32, inner: &Flow, outer: &packet::Vxlan) -> bool {
    match unsafe { ONC_EGRESS.get(VniIp { vni, ip: inner.ip.src }) } {
        Some(eg) => same(&eg.vtep, &outer.ip.src) && same(&eg.mac, &inner.eth.src),
        None => false,
    }
}

/// Records that the slow path admitted the flow outwards under the remote container's egress
/// entry `eg` as it is now, with the outer header and source port it built (the kernel may
/// pick another port for a flow later, e.g. a TCP socket's rehash after a timeout). The entry
/// is replaced whole, never written in place, so the egress program never reads a half-written
/// header. Returns whether anything changed.
///
/// Not atomic with the ingress learner (the BPF target has no atomics in core): when both race
/// on one entry a bit can be lost, and the next admitted packet of that direction sets it again,
/// only delaying the fast path by a packet. Correctness never depends on it: a stale generation
/// never admits.
///
/// An entry of an older firewall epoch is started afresh: its other direction must be admitted
/// again under the current rules too.
#[inline(always)]
fn admit_egress(key: &FlowKey, eg: &EgressEntry, sport: u16, header: &OuterHeader, epoch: u32) -> bool {
    let mut st: FlowState = match unsafe { ONC_FILTER.get(key) } {
        Some(cur) if cur.epoch == epoch => *cur,
        // All zeroes: an aligned fill, as in flow_key.
        _ => unsafe { core::mem::zeroed() },
    };
    st.epoch = epoch;
    if st.bits & FLOW_EGRESS != 0
        && st.egress_gen == eg.gen
        && st.egress_slot == eg.slot
        && st.sport == sport
        && same(&st.vtep, &eg.vtep)
        && same(&st.remote_mac, &eg.mac)
        && same(&st.outer, header)
    {
        return false;
    }
    st.bits |= FLOW_EGRESS;
    st.egress_gen = eg.gen;
    st.egress_slot = eg.slot;
    st.sport = sport;
    st.vtep = eg.vtep;
    st.remote_mac = eg.mac;
    st.outer = *header;
    ONC_FILTER.insert(key, &st, 0).is_ok()
}

/// Records that the slow path delivered the flow inwards under generation `gen` of the local
/// container's delivery entry. An entry of the current firewall epoch gets only the generation
/// and the bit, in place: the outer header the egress program may be reading at that moment is
/// left alone. An entry of an older epoch is replaced whole by one with this direction only (its
/// other direction must be admitted again under the current rules).
#[inline(always)]
fn admit_ingress(key: &FlowKey, gen: u32, epoch: u32) -> bool {
    let mut replace = false;
    if let Some(v) = ONC_FILTER.get_ptr_mut(key) {
        unsafe {
            if core::ptr::addr_of!((*v).epoch).read_volatile() == epoch {
                let bits = core::ptr::addr_of_mut!((*v).bits);
                let have = core::ptr::addr_of_mut!((*v).ingress_gen);
                if bits.read_volatile() & FLOW_INGRESS != 0 && have.read_volatile() == gen {
                    return false;
                }
                have.write_volatile(gen);
                bits.write_volatile(bits.read_volatile() | FLOW_INGRESS);
                return true;
            }
        }
        replace = true;
    }
    let mut st: FlowState = unsafe { core::mem::zeroed() };
    st.bits = FLOW_INGRESS;
    st.ingress_gen = gen;
    st.epoch = epoch;
    let flags = if replace { BPF_EXIST } else { BPF_NOEXIST };
    ONC_FILTER.insert(key, &st, flags as u64).is_ok()
}

/// Sets CE in the inner IPv4 header (still encapsulated), keeping its checksum right.
#[inline(always)]
fn mark_ce(ctx: &TcContext, inner: &Flow) -> Result<(), ()> {
    let off = INNER_OFF + ETH_LEN;
    let old = u16::from_be_bytes([inner.ip.ver_ihl, inner.ip.tos]);
    let new = u16::from_be_bytes([inner.ip.ver_ihl, inner.ip.tos | 0x3]);
    ctx.l3_csum_replace(off + 10, old.to_be() as u64, new.to_be() as u64, 2).map_err(|_| ())?;
    ctx.store(off + 1, &(inner.ip.tos | 0x3), 0).map_err(|_| ())
}

/// Removes the flow's filter entry (TCP SYN/FIN/RST) and passes the packet.
#[inline(always)]
fn invalidate(p: Program, key: &FlowKey) -> i32 {
    if ONC_FILTER.remove(key).is_ok() {
        count(p, Counter::Invalidated);
    }
    PASS
}

/// Writes `map[key] = value` unless it already holds exactly that (no per-packet writes).
#[inline(always)]
fn put_if_changed<K, V>(map: &HashMap<K, V>, key: &K, value: &V) -> bool {
    if let Some(cur) = unsafe { map.get(key) } {
        if same(cur, value) {
            return false;
        }
    }
    map.insert(key, value, 0).is_ok()
}

/// Byte-wise equality of two plain values. Written out rather than `==` on arrays, which may
/// become a call to `memcmp`/`bcmp` that BPF does not have.
#[inline(always)]
fn same<T>(a: &T, b: &T) -> bool {
    let (a, b) = (a as *const T as *const u8, b as *const T as *const u8);
    let mut diff = 0u8;
    let mut i = 0;
    while i < core::mem::size_of::<T>() {
        diff |= unsafe { a.add(i).read() ^ b.add(i).read() };
        i += 1;
    }
    diff == 0
}

/// Adds one to a per-CPU counter and passes the packet.
#[inline(always)]
fn count(p: Program, c: Counter) -> i32 {
    if let Some(v) = ONC_STATS.get_ptr_mut(stat_index(p, c)) {
        unsafe { *v += 1 };
    }
    PASS
}

/// The MTU of device `ifindex` now; 0 (nothing fits) when there is no such device.
/// `bpf_check_mtu` reports it whatever its verdict, which is not used: that verdict is about the
/// skb as it is, not after encapsulation or per GSO segment.
#[inline(always)]
fn device_mtu(ctx: &TcContext, ifindex: u32) -> u32 {
    let mut mtu: u32 = 0;
    unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, ifindex, &mut mtu, 0, 0) };
    mtu
}

#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    if a < b { a } else { b }
}

#[inline(always)]
fn skb_ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn skb_mark(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).mark }
}

#[inline(always)]
fn skb_gso_size(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).gso_size }
}

/// `skb->pkt_type` of a frame addressed to this host (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

#[inline(always)]
fn skb_pkt_type(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).pkt_type }
}

#[inline(always)]
fn skb_vlan_present(ctx: &TcContext) -> bool {
    unsafe { (*ctx.skb.skb).vlan_present != 0 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
