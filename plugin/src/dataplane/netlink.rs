//! The rtnetlink operations the slow path needs: bridges, VXLAN devices, veth pairs and the
//! VXLAN forwarding database. Each call does one kernel operation and reports the kernel's error
//! with the object it was about; deciding what to do is the driver's business.

use anyhow::{anyhow, Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, VxlanDf};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};
use std::net::{IpAddr, Ipv4Addr};

use oncache_common::VXLAN_PORT;
/// Outer UDP source ports (the IANA dynamic range), hashed from the inner flow.
const SRC_PORT_MIN: u16 = 49152;
const SRC_PORT_MAX: u16 = 65535;

/// What oncache needs to know about a link.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub controller: Option<u32>,
    pub kind: Option<InfoKind>,
    /// For a VXLAN device: whether it is configured as [`Netlink::add_vxlan`] makes it (an older
    /// oncache made learning devices that flood).
    pub vxlan_current: bool,
    /// The link-layer address, when it is an Ethernet one.
    pub mac: Option<[u8; 6]>,
}

/// One VXLAN forwarding entry: a MAC (all zeros for the flood list) and the VTEP it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Option<IpAddr>,
    /// The bridge's (master) entry is a static one, as an older oncache made them.
    pub static_in_bridge: bool,
}

/// A change that may move the underlay's next hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// A neighbour on the underlay now has this MAC (None: it failed or went away).
    Neighbour { ip: IpAddr, mac: Option<[u8; 6]> },
    /// An IPv4 route changed.
    Route,
}

/// A VXLAN device to create.
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub underlay_index: u32,
    pub local: Ipv4Addr,
    pub mtu: u32,
    pub controller: u32,
}

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

pub(super) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc::ENODEV) | Some(libc::ENOENT))
}

impl Netlink {
    /// Opens a netlink route socket in the current network namespace; must run inside tokio.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Opens a netlink route socket in the network namespace `netns` (an open nsfs file): the
    /// socket is made on a short-lived thread that enters the namespace, and stays bound to it.
    /// Must run inside tokio.
    pub fn connect_in(netns: &std::fs::File) -> Result<Netlink> {
        use std::os::fd::AsRawFd;
        let fd = netns.as_raw_fd();
        let rt = tokio::runtime::Handle::current();
        let made = std::thread::scope(|s| {
            s.spawn(|| {
                let _entered = rt.enter();
                // SAFETY: setns changes only this (scoped, about to end) thread's namespace.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow!("entering the network namespace: {}", std::io::Error::last_os_error()));
                }
                let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket in the namespace")?;
                Ok((conn, handle))
            })
            .join()
            .map_err(|_| anyhow!("the thread entering the network namespace failed"))?
        })?;
        let (conn, handle) = made;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Moves a link into the network namespace `netns` (an open nsfs file).
    pub async fn move_to_netns(&self, index: u32, netns: &std::fs::File) -> Result<()> {
        use std::os::fd::AsRawFd;
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(netns.as_raw_fd()).build();
        self.handle.link().set(msg).execute().await.context("moving the container end into its network namespace")
    }

    /// Renames a (down) link and brings it up.
    pub async fn rename_up(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).name(name.to_string()).up().build();
        self.handle.link().set(msg).execute().await.with_context(|| format!("naming the container interface {name}"))
    }

    /// Adds an address to a link; one it already has is not an error.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        match self.handle.address().add(index, ip, prefix).execute().await {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.with_context(|| format!("adding address {ip}/{prefix}")),
        }
    }

    /// `ip route replace default via GW dev INDEX`.
    pub async fn set_default_route(&self, gateway: Ipv4Addr, index: u32) -> Result<()> {
        let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(index).build();
        self.handle.route().add(msg).replace().execute().await.with_context(|| format!("adding the default route via {gateway}"))
    }

    /// What may move the underlay's next hops, as it happens in this network namespace: each
    /// neighbour entry of interface `underlay` as it changes (RTMGRP_NEIGH), and any IPv4 route
    /// change (RTMGRP_IPV4_ROUTE). Must run inside tokio.
    pub fn watch_next_hops(underlay: u32) -> Result<impl futures_util::Stream<Item = NextHop>> {
        use futures_util::StreamExt;
        use rtnetlink::sys::AsyncSocket;
        let (mut conn, _handle, messages) = rtnetlink::new_connection().context("opening a netlink socket")?;
        let groups = rtnetlink::constants::RTMGRP_NEIGH | rtnetlink::constants::RTMGRP_IPV4_ROUTE;
        conn.socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, groups))
            .context("subscribing to neighbour and route changes")?;
        tokio::spawn(conn);
        Ok(messages.filter_map(move |(m, _)| async move {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) if n.header.ifindex == underlay => {
                    let (ip, lladdr) = neigh_fields(&n);
                    let dead = matches!(n.header.state, NeighbourState::Failed | NeighbourState::Incomplete);
                    let mac = lladdr.and_then(|l| <[u8; 6]>::try_from(&l[..]).ok()).filter(|_| !dead);
                    Some(NextHop::Neighbour { ip: ip?, mac })
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) if n.header.ifindex == underlay => {
                    Some(NextHop::Neighbour { ip: neigh_fields(&n).0?, mac: None })
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_)) => Some(NextHop::Route),
                _ => None,
            }
        }))
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.context("listing links")?;
        Ok(msgs.iter().map(link_of).collect())
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let res: Result<Vec<LinkMessage>, _> =
            self.handle.link().get().match_name(name.to_string()).execute().try_collect().await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(link_of)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(anyhow!("looking up link {name}: {e}")),
        }
    }

    pub async fn add_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<()> {
        // Forward delay 0: ports must forward as soon as a container's veth is attached.
        // nf_call_iptables: bridged traffic crosses the host firewall and conntrack, which
        // judge the slow path and admit flows to the fast path, whatever the global sysctl.
        // An address of its own and no multicast snooping (see `Dataplane::settle_bridge`).
        let msg = LinkBridge::new(name)
            .forward_delay(0)
            .nf_call_iptables(true)
            .mcast_snooping(false)
            .mtu(mtu)
            .address(mac.to_vec())
            .up()
            .build();
        self.handle.link().add(msg).execute().await.with_context(|| format!("creating bridge {name}"))
    }

    pub async fn add_vxlan(&self, s: &VxlanSpec<'_>) -> Result<()> {
        let msg = LinkVxlan::new(s.name, s.vni)
            .dev(s.underlay_index)
            .local(s.local)
            .port(VXLAN_PORT)
            // The fast path hashes the inner flow into this range the kernel's way, so a flow
            // keeps its outer source port when it moves from the slow path to the fast path.
            .port_range(SRC_PORT_MIN, SRC_PORT_MAX)
            // Remote endpoints come from the control plane as static entries: nothing is
            // learned from packets, and ARP/ND for remote containers is answered here from the
            // neighbour table (proxy) instead of being flooded to every host.
            .learning(false)
            .proxy(true)
            // As the fast path builds its headers: DF set, UDP checksum 0 (valid for IPv4).
            .df(VxlanDf::Set)
            .udp_csum(false)
            .mtu(s.mtu)
            .controller(s.controller)
            .up()
            .build();
        match self.handle.link().add(msg).execute().await {
            // The kernel allows one device per VNI on a UDP port in a namespace, whoever made it.
            Err(e) if errno(&e) == Some(libc::EEXIST) => Err(anyhow!(
                "creating VXLAN device {} (VNI {}): another VXLAN device on UDP port {VXLAN_PORT} here already has VNI {} \
                 (Docker's overlay, Swarm's ingress network included, takes VNIs from 4096 up): choose another with -o oncache.vni=N",
                s.name,
                s.vni,
                s.vni
            )),
            r => r.with_context(|| format!("creating VXLAN device {} (VNI {})", s.name, s.vni)),
        }
    }

    /// Creates a veth pair with `host` on `bridge` and `peer` carrying `peer_mac`; `peer` up,
    /// `host` down (for [`Netlink::set_up`] once configured). Returns `host`'s index.
    pub async fn add_veth(&self, host: &str, peer: &str, mtu: u32, peer_mac: [u8; 6], bridge: u32) -> Result<u32> {
        let msg = LinkVeth::new(host, peer).mtu(mtu).controller(bridge).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| format!("creating veth pair {host}/{peer}"))?;
        let p = self.link(peer).await?.ok_or_else(|| anyhow!("veth peer {peer} vanished after creation"))?;
        let set = LinkUnspec::new_with_index(p.index).mtu(mtu).address(peer_mac.to_vec()).up().build();
        self.handle.link().set(set).execute().await.with_context(|| format!("configuring {peer}"))?;
        Ok(self.link(host).await?.ok_or_else(|| anyhow!("veth {host} vanished after creation"))?.index)
    }

    /// Gives an existing bridge what [`Netlink::add_bridge`] gives a new one: `mac` as its own
    /// address and multicast snooping off (see `Dataplane::settle_bridge`).
    pub async fn settle_bridge(&self, name: &str, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkBridge>::new(name).index(index).address(mac.to_vec()).mcast_snooping(false).build();
        self.handle.link().change(msg).execute().await.with_context(|| format!("settling bridge {name}"))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle.link().set(msg).execute().await.context("setting a link up")
    }

    pub async fn set_controller(&self, index: u32, controller: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(controller).up().build();
        self.handle.link().set(msg).execute().await.context("attaching link to bridge")
    }

    /// Deletes a link; one that is already gone is not an error.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(e) if !is_missing(&e) => Err(anyhow!("deleting link {index}: {e}")),
            _ => Ok(()),
        }
    }

    /// IPv4 addresses on a link, primary first.
    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .context("listing addresses")?;
        Ok(msgs
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
            .collect())
    }

    /// `bridge fdb append MAC dev VXLAN dst DST`: adds DST to the entry's remote list. The
    /// kernel treats an existing remote as success, so this is idempotent.
    pub async fn fdb_append(&self, vxlan: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        let msg = fdb_message(vxlan, mac, dst);
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        self.ack(req).await.with_context(|| format!("adding forwarding entry to {dst}"))
    }

    /// Removes the remote DST from the entry for MAC; absent is not an error.
    pub async fn fdb_del(&self, vxlan: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        match self.handle.neighbours().del(fdb_message(vxlan, mac, dst)).execute().await {
            Err(e) if !is_missing(&e) => Err(anyhow!("removing forwarding entry to {dst}: {e}")),
            _ => Ok(()),
        }
    }

    /// The forwarding entries of one VXLAN device (static and learned).
    pub async fn fdb(&self, vxlan: u32) -> Result<Vec<FdbEntry>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .context("listing forwarding entries")?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == vxlan)
            .filter_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            mac = Some(<[u8; 6]>::try_from(&l[..]).ok()?)
                        }
                        NeighbourAttribute::Destination(a) => dst = ip_of(a),
                        _ => {}
                    }
                }
                // The bridge reports a static entry as NOARP (whatever else marks it); the
                // VXLAN device's own entries come with NTF_SELF.
                let static_in_bridge = m.header.state == NeighbourState::Noarp && !m.header.flags.contains(NeighbourFlags::Own);
                Some(FdbEntry { mac: mac?, dst, static_in_bridge })
            })
            .collect())
    }

    /// `bridge fdb replace MAC dev VXLAN dst DST self permanent` and `bridge fdb replace MAC dev
    /// VXLAN master extern_learn`: the VXLAN device sends MAC's frames to DST only, and the
    /// bridge sends them to the VXLAN device without flooding its own ports.
    pub async fn fdb_set(&self, vxlan: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(fdb_message(vxlan, mac, dst)));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.ack(req).await.with_context(|| format!("setting forwarding entry {} to {dst}", crate::naming::format_mac(mac)))?;
        self.bridge_entry_set(vxlan, mac).await
    }

    /// Makes the bridge's entry for `mac` the kind [`fdb_set`](Self::fdb_set) makes (an entry
    /// keeps its static mark when it is replaced, so it goes first).
    pub async fn remake_bridge_entry(&self, vxlan: u32, mac: [u8; 6]) -> Result<()> {
        let _ = self.handle.neighbours().del(bridge_fdb_message(vxlan, mac)).execute().await;
        self.bridge_entry_set(vxlan, mac).await
    }

    async fn bridge_entry_set(&self, vxlan: u32, mac: [u8; 6]) -> Result<()> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(bridge_fdb_message(vxlan, mac)));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.ack(req).await.with_context(|| format!("setting bridge entry {} to the VXLAN port", crate::naming::format_mac(mac)))
    }

    /// Removes both entries of [`fdb_set`](Self::fdb_set); absent is not an error.
    pub async fn fdb_unset(&self, vxlan: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.fdb_del(vxlan, mac, dst).await?;
        match self.handle.neighbours().del(bridge_fdb_message(vxlan, mac)).execute().await {
            Err(e) if !is_missing(&e) => Err(anyhow!("removing bridge entry {}: {e}", crate::naming::format_mac(mac))),
            _ => Ok(()),
        }
    }

    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`: the answer the VXLAN device's
    /// ARP/ND proxy gives for a remote container.
    pub async fn neigh_set(&self, dev: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(dev, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("setting neighbour {ip}"))
    }

    /// Removes a neighbour entry; absent is not an error.
    pub async fn neigh_del(&self, dev: u32, ip: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        m.header.ifindex = dev;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        match self.handle.neighbours().del(m).execute().await {
            Err(e) if !is_missing(&e) => Err(anyhow!("removing neighbour {ip}: {e}")),
            _ => Ok(()),
        }
    }

    /// The permanent neighbour entries (IPv4 and IPv6) of one device: what oncache set.
    pub async fn neighbours(&self, dev: u32) -> Result<Vec<(IpAddr, [u8; 6])>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let msgs: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .context("listing neighbours")?;
            for m in msgs.iter().filter(|m| m.header.ifindex == dev && m.header.state == NeighbourState::Permanent) {
                let (mut ip, mut mac) = (None, None);
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(d) => ip = ip_of(d),
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => mac = <[u8; 6]>::try_from(&l[..]).ok(),
                        _ => {}
                    }
                }
                if let (Some(ip), Some(mac)) = (ip, mac) {
                    out.push((ip, mac));
                }
            }
        }
        Ok(out)
    }

    /// Sends one request (its flags set by the caller) and collects the kernel's answers; an
    /// error answer fails it.
    pub(super) async fn request(&self, req: NetlinkMessage<RouteNetlinkMessage>) -> Result<Vec<RouteNetlinkMessage>> {
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req)?;
        use futures_util::StreamExt;
        let mut out = Vec::new();
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(i) => out.push(i),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(rtnetlink::Error::NetlinkError(e).into()),
                _ => {}
            }
        }
        Ok(out)
    }

    pub(super) async fn ack(&self, req: NetlinkMessage<RouteNetlinkMessage>) -> Result<()> {
        self.request(req).await.map(drop)
    }
}

/// A bridge-family entry for `mac` on the VXLAN device.
fn bridge_family_entry(vxlan: u32, mac: [u8; 6], state: NeighbourState, flags: NeighbourFlags) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = vxlan;
    m.header.state = state;
    m.header.flags = flags;
    m.header.kind = RouteType::Unspec;
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// The VXLAN device's own (self) entry: frames to `mac` go to `dst`.
fn fdb_message(vxlan: u32, mac: [u8; 6], dst: IpAddr) -> NeighbourMessage {
    let mut m = bridge_family_entry(vxlan, mac, NeighbourState::Permanent, NeighbourFlags::Own);
    m.attributes.push(NeighbourAttribute::Destination(match dst {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }));
    m
}

/// A neighbour message's address and link-layer address.
fn neigh_fields(m: &NeighbourMessage) -> (Option<IpAddr>, Option<Vec<u8>>) {
    let (mut dst, mut ll) = (None, None);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => dst = ip_of(d),
            NeighbourAttribute::LinkLayerAddress(l) => ll = Some(l.clone()),
            _ => {}
        }
    }
    (dst, ll)
}

/// The bridge's own (master) entry for a MAC behind the VXLAN port: externally learned, which
/// never ages, like a static one. Not static: the bridge walks every static entry for each port
/// it gains (`br_fdb_unsync_static`), so each Join would cost time in proportion to the remote
/// endpoints. NOARP, not PERMANENT, which would mean an address of the bridge itself.
fn bridge_fdb_message(vxlan: u32, mac: [u8; 6]) -> NeighbourMessage {
    bridge_family_entry(vxlan, mac, NeighbourState::Noarp, NeighbourFlags::Controller | NeighbourFlags::ExtLearned)
}

/// Bridge-family entries carry NDA_DST as raw bytes; their length tells the IP version.
fn ip_of(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(&b[..]).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(&b[..]).ok()?)),
            _ => None,
        },
        _ => None,
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut l = Link { index: m.header.index, name: String::new(), mtu: 0, controller: None, kind: None, vxlan_current: false, mac: None };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::Address(a) => l.mac = <[u8; 6]>::try_from(&a[..]).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan_current = vxlan_current(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Is a VXLAN device configured as oncache makes them now?
fn vxlan_current(v: &[InfoVxlan]) -> bool {
    let (mut learning, mut proxy, mut df) = (true, false, false);
    for a in v {
        match a {
            InfoVxlan::Learning(b) => learning = *b,
            InfoVxlan::Proxy(b) => proxy = *b,
            InfoVxlan::Df(d) => df = *d == VxlanDf::Set,
            _ => {}
        }
    }
    !learning && proxy && df
}
