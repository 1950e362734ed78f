//! Packet layouts, bounds-checked parsing and the outer header oncache writes.
//!
//! Headers are byte arrays (alignment 1, exact sizes), read straight from the packet when they
//! sit in the linear part of the skb (as the headers of locally built and of veth-forwarded
//! packets do), else copied with `bpf_skb_load_bytes`, which works wherever the bytes are.

use aya_ebpf::programs::TcContext;
use oncache_common::{wire, ENCAP_LEN, VXLAN_PORT};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
/// Where the inner Ethernet header of a VXLAN packet starts (outer Ethernet + IPv4 + UDP + VXLAN).
pub const INNER_OFF: usize = ENCAP_LEN as usize;

const ETH_P_IP: [u8; 2] = [0x08, 0x00];
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Don't fragment, set on the outer header as the VXLAN device sets it.
const IPV4_DF: u16 = 0x4000;
/// TCP data offset (high nibble) and flags: bytes 12 and 13 of the header.
const TCP_DOFF_FLAGS_OFF: usize = 12;
const UDP_HDR_LEN: u8 = 8;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

impl EthHdr {
    #[inline(always)]
    pub fn to_bytes(self) -> [u8; ETH_LEN] {
        let ([d0, d1, d2, d3, d4, d5], [s0, s1, s2, s3, s4, s5]) = (self.dst, self.src);
        [
            d0,
            d1,
            d2,
            d3,
            d4,
            d5,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            self.proto[0],
            self.proto[1],
        ]
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    /// The header as it is on the wire.
    #[inline(always)]
    pub fn to_bytes(self) -> [u8; IPV4_LEN] {
        // SAFETY: repr(C), byte arrays and bytes only: 20 bytes, no padding.
        unsafe { core::mem::transmute::<Ipv4Hdr, [u8; IPV4_LEN]>(self) }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct EthIpv4 {
    eth: EthHdr,
    ip: Ipv4Hdr,
}

/// Outer headers of a VXLAN packet: Ethernet, IPv4, UDP, VXLAN.
#[repr(C)]
#[derive(Clone, Copy)]
struct VxlanHdrs {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: [u8; UDP_LEN],
    vxlan: [u8; 8],
}

/// An IPv4 TCP or UDP frame: a fast-path candidate.
pub struct Flow {
    pub eth: EthHdr,
    pub ip: Ipv4Hdr,
    /// Host order.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// TCP or UDP header length.
    pub l4_len: u8,
}

impl Flow {
    /// Ethernet + IPv4 + L4 header bytes: what each GSO segment carries besides its payload.
    #[inline(always)]
    pub fn headers_len(&self) -> u32 {
        (ETH_LEN + IPV4_LEN) as u32 + self.l4_len as u32
    }

    /// Only unicast frames are cached (a flooded copy names no single container or host).
    #[inline(always)]
    pub fn unicast(&self) -> bool {
        self.eth.dst[0] & 0x01 == 0
    }

    /// FIN or RST: the connection is ending; nothing is learned from it.
    #[inline(always)]
    pub fn ends(&self) -> bool {
        self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }

    /// SYN, FIN or RST: the slow path (conntrack, firewall) must see it, and the flow's filter
    /// entry goes. SYN too, so that a new connection reusing a 5-tuple must be admitted anew
    /// (the last ACKs of the old one may have re-learned both directions).
    #[inline(always)]
    pub fn starts_or_ends(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
    }
}

/// A VXLAN packet (IPv4, UDP port 4789, I flag set).
pub struct Vxlan {
    pub eth: EthHdr,
    pub ip: Ipv4Hdr,
    /// Outer UDP source port, host order.
    pub sport: u16,
    pub vni: u32,
}

/// The `T` at `off`: direct packet access when it lies in the linear data (no helper call, no
/// copy through the helper), `bpf_skb_load_bytes` otherwise.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above (the verifier checks it too); T is
        // a plain byte layout, read without alignment.
        Some(unsafe { ((start + off) as *const T).read_unaligned() })
    } else {
        ctx.load(off).ok()
    }
}

/// Parses an Ethernet + IPv4 + TCP/UDP frame at `off` that the slow path would accept too
/// (`oncache_common::wire`: no options, not a fragment, valid checksum and lengths).
#[inline(always)]
pub fn parse_flow(ctx: &TcContext, off: usize) -> Option<Flow> {
    let h: EthIpv4 = read(ctx, off)?;
    if h.eth.proto != ETH_P_IP {
        return None;
    }
    let l4_min = match h.ip.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return None,
    };
    let raw = h.ip.to_bytes();
    let available = ctx.len().checked_sub((off + ETH_LEN) as u32)?;
    if !wire::ipv4_ok(&raw, l4_min, available) {
        return None;
    }
    let tot_len = wire::ipv4_tot_len(&raw);
    let l4 = off + ETH_LEN + IPV4_LEN;
    let (tcp_flags, l4_len) = match h.ip.proto {
        IPPROTO_TCP => {
            let [doff, flags]: [u8; 2] = read(ctx, l4 + TCP_DOFF_FLAGS_OFF)?;
            if !wire::tcp_len_ok(doff, tot_len) {
                return None;
            }
            (flags, (doff >> 4) * 4)
        }
        _ => {
            let udp: [u8; UDP_LEN] = read(ctx, l4)?;
            if !wire::udp_len_ok(&udp, tot_len) {
                return None;
            }
            (0, UDP_HDR_LEN)
        }
    };
    let ports: [u8; 4] = read(ctx, l4)?;
    Some(Flow {
        eth: h.eth,
        ip: h.ip,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        tcp_flags,
        l4_len,
    })
}

/// Parses the outer headers of a VXLAN packet at offset 0, as the kernel's VXLAN device would
/// accept it: a valid IPv4 header, UDP to the VXLAN port with a matching length and no
/// checksum (oncache's hosts send none; one with a checksum takes the slow path, which checks
/// it), and VXLAN flags "VNI present" only.
#[inline(always)]
pub fn parse_vxlan(ctx: &TcContext) -> Option<Vxlan> {
    let h: VxlanHdrs = read(ctx, 0)?;
    if h.eth.proto != ETH_P_IP || h.ip.proto != IPPROTO_UDP {
        return None;
    }
    let raw = h.ip.to_bytes();
    let available = ctx.len().checked_sub(ETH_LEN as u32)?;
    // UDP, VXLAN and at least the inner Ethernet header.
    if !wire::ipv4_ok(&raw, (UDP_LEN + 8 + ETH_LEN) as u32, available)
        || u16::from_be_bytes([h.udp[2], h.udp[3]]) != VXLAN_PORT
        || !wire::udp_len_ok(&h.udp, wire::ipv4_tot_len(&raw))
        || h.udp[6] != 0
        || h.udp[7] != 0
    {
        return None;
    }
    let vni = wire::vxlan_vni(&h.vxlan)?;
    Some(Vxlan {
        eth: h.eth,
        ip: h.ip,
        sport: u16::from_be_bytes([h.udp[0], h.udp[1]]),
        vni,
    })
}


/// Everything in front of the inner IP header of an encapsulated frame, written in one store.
#[repr(C)]
pub struct Encap {
    pub outer_eth: [u8; ETH_LEN],
    pub ip: [u8; IPV4_LEN],
    pub udp: [u8; UDP_LEN],
    pub vxlan: [u8; 8],
    pub inner_eth: EthHdr,
}

/// What the outer header is built from.
pub struct EncapParams {
    pub outer_eth: [u8; ETH_LEN],
    pub tos: u8,
    pub ttl: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub vni: u32,
    /// Length of the whole frame after the room was added (outer Ethernet included).
    pub frame_len: u32,
}

impl Encap {
    #[inline(always)]
    pub fn new(p: &EncapParams, inner_eth: EthHdr) -> Self {
        let ip_len = (p.frame_len - ETH_LEN as u32) as u16;
        let udp_len = ip_len - IPV4_LEN as u16;
        let [s0, s1] = p.sport.to_be_bytes();
        let [d0, d1] = VXLAN_PORT.to_be_bytes();
        let [u0, u1] = udp_len.to_be_bytes();
        let [_, v0, v1, v2] = p.vni.to_be_bytes();
        Encap {
            outer_eth: p.outer_eth,
            ip: outer_ipv4(p, ip_len),
            // Checksum 0: allowed for UDP over IPv4 and what VXLAN sends by default.
            udp: [s0, s1, d0, d1, u0, u1, 0, 0],
            vxlan: [wire::VXLAN_FLAGS_I, 0, 0, 0, v0, v1, v2, 0],
            inner_eth,
        }
    }
}

/// The outer IPv4 header: ID 0 with DF (RFC 6864 atomic datagram), protocol UDP.
#[inline(always)]
fn outer_ipv4(p: &EncapParams, tot_len: u16) -> [u8; IPV4_LEN] {
    let [l0, l1] = tot_len.to_be_bytes();
    let [f0, f1] = IPV4_DF.to_be_bytes();
    let [s0, s1, s2, s3] = p.src;
    let [d0, d1, d2, d3] = p.dst;
    let mut h = [
        wire::IPV4_VER_IHL,
        p.tos,
        l0,
        l1,
        0,
        0,
        f0,
        f1,
        p.ttl,
        IPPROTO_UDP,
        0,
        0,
        s0,
        s1,
        s2,
        s3,
        d0,
        d1,
        d2,
        d3,
    ];
    let [c0, c1] = ipv4_checksum(&h).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
    h
}

/// Internet checksum of a 20-byte header whose checksum field is zero.
#[inline(always)]
fn ipv4_checksum(h: &[u8; IPV4_LEN]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IPV4_LEN {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    // Ten 16-bit words sum to less than 2^20: two folds always reach 16 bits.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
