//! The traffic-control requests the fast path makes for endpoint veths: a clsact qdisc whose
//! two hooks are bound to shared filter blocks, and one cls_bpf filter in each block. Each call
//! is one kernel request about one object (never a dump); which blocks, programs and slots is
//! the fast path's business.

use super::netlink::{errno, Netlink};
use anyhow::Result;
use rtnetlink::packet_core::{DefaultNla, Nla, NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption};
use rtnetlink::packet_route::RouteNetlinkMessage;

/// `TCA_INGRESS_BLOCK` / `TCA_EGRESS_BLOCK` (linux/rtnetlink.h), which netlink-packet-route
/// does not name yet.
const TCA_INGRESS_BLOCK: u16 = 13;
const TCA_EGRESS_BLOCK: u16 = 14;
/// `ETH_P_ALL`, in network order as tcm_info carries it.
const ALL_PROTOCOLS: u16 = 0x0003u16.to_be();

/// The blocks a clsact qdisc's two hooks are bound to: (ingress, egress) block indexes.
pub type Blocks = (u32, u32);

/// A cls_bpf filter slot in a shared block.
#[derive(Clone, Copy)]
pub struct BlockSlot {
    pub block: u32,
    pub priority: u16,
    pub handle: u32,
}

fn clsact_message(ifindex: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = TcHandle::CLSACT;
    m.header.handle = TcHandle { major: 0xffff, minor: 0 };
    m
}

fn filter_message(s: BlockSlot) -> TcMessage {
    let mut m = TcMessage::with_index(TcHeader::TCM_IFINDEX_MAGIC_BLOCK as i32);
    // With the magic index, tcm_parent carries the block's index.
    m.header.parent = TcHandle::from(s.block);
    m.header.handle = TcHandle::from(s.handle);
    m.header.info = ((s.priority as u32) << 16) | ALL_PROTOCOLS as u32;
    m
}

fn u32_nla(kind: u16, v: u32) -> TcAttribute {
    TcAttribute::Other(DefaultNla::new(kind, v.to_ne_bytes().to_vec()))
}

impl Netlink {
    /// Creates a clsact qdisc on `ifindex` with its hooks bound to `blocks`. False when the
    /// interface has a clsact qdisc already (bound to whatever it is bound to).
    pub async fn add_clsact_on_blocks(&self, ifindex: u32, blocks: Blocks) -> Result<bool> {
        let mut m = clsact_message(ifindex);
        m.attributes.push(TcAttribute::Kind("clsact".into()));
        m.attributes.push(u32_nla(TCA_INGRESS_BLOCK, blocks.0));
        m.attributes.push(u32_nla(TCA_EGRESS_BLOCK, blocks.1));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(m));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        match self.ack(req).await {
            Ok(()) => Ok(true),
            Err(e) if e.downcast_ref().and_then(errno) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e.context(format!("creating a clsact qdisc on interface {ifindex}"))),
        }
    }

    /// The blocks the clsact qdisc of `ifindex` is bound to: `None` without a clsact qdisc,
    /// (0, 0) for blocks of its own.
    pub async fn clsact_blocks(&self, ifindex: u32) -> Result<Option<Blocks>> {
        let req = NetlinkMessage::from(RouteNetlinkMessage::GetQueueDiscipline(clsact_message(ifindex)));
        let mut blocks = None;
        for m in self.get(req).await.map_err(|e| e.context(format!("reading the clsact qdisc of interface {ifindex}")))? {
            let RouteNetlinkMessage::NewQueueDiscipline(q) = m else { continue };
            if !q.attributes.contains(&TcAttribute::Kind("clsact".into())) {
                continue;
            }
            let block = |kind| {
                q.attributes.iter().find_map(|a| match a {
                    TcAttribute::Other(n) if n.kind() == kind && n.value_len() == 4 => {
                        let mut b = [0; 4];
                        n.emit_value(&mut b);
                        Some(u32::from_ne_bytes(b))
                    }
                    _ => None,
                })
            };
            blocks = Some((block(TCA_INGRESS_BLOCK).unwrap_or(0), block(TCA_EGRESS_BLOCK).unwrap_or(0)));
        }
        Ok(blocks)
    }

    /// Deletes the clsact qdisc of `ifindex` (and so its filters, or its hold on shared blocks).
    pub async fn del_clsact(&self, ifindex: u32) -> Result<()> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelQueueDiscipline(clsact_message(ifindex)));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        match self.ack(req).await {
            Err(e) if !matches!(e.downcast_ref().and_then(errno), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => {
                Err(e.context(format!("deleting the clsact qdisc of interface {ifindex}")))
            }
            _ => Ok(()),
        }
    }

    /// The ID of the program in a block's filter slot; `None` when the slot or the block (it
    /// goes with the last qdisc bound to it) does not exist.
    pub async fn block_filter_program(&self, s: BlockSlot) -> Result<Option<u32>> {
        let mut m = filter_message(s);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        let req = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(m));
        let msgs = match self.get(req).await {
            Ok(m) => m,
            Err(e) if matches!(e.downcast_ref().and_then(errno), Some(libc::ENOENT | libc::EINVAL)) => return Ok(None),
            Err(e) => return Err(e.context(format!("reading filter {}:{} of tc block {}", s.priority, s.handle, s.block))),
        };
        Ok(msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => f.attributes.into_iter().find_map(|a| match a {
                TcAttribute::Options(o) => o.into_iter().find_map(|o| match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(id),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Puts a program (direct action) in a block's filter slot, replacing what is there in
    /// one step: the block is never without a program once it had one.
    pub async fn set_block_filter(&self, s: BlockSlot, prog_fd: u32, name: &str) -> Result<()> {
        let mut m = filter_message(s);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewTrafficFilter(m));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.ack(req).await.map_err(|e| e.context(format!("putting {name} in tc block {}", s.block)))
    }

    /// One request and its answer (no dump). The kernel answers a qdisc request only to its
    /// multicast group, save to a requester asking for the echo.
    async fn get(&self, mut req: NetlinkMessage<RouteNetlinkMessage>) -> Result<Vec<RouteNetlinkMessage>> {
        req.header.flags = NLM_F_REQUEST | NLM_F_ECHO | NLM_F_ACK;
        self.request(req).await
    }
}
