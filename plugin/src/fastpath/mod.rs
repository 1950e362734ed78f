//! The ONCache fast path in user space: loads the eBPF object, pins programs, maps and links
//! under `--bpf-dir`, attaches the programs, and keeps the maps the programs cannot learn
//! (configuration, endpoints, networks) in line with the driver's state. Invalidation lives
//! in [`maps`]; the driver decides when, this module only executes.
//!
//! Pins: `<bpf-dir>/maps/<MAP>`, `<bpf-dir>/progs/<program>`, `<bpf-dir>/links/<ifname>:<hook>`.
//! A restarted daemon loads the new object against the pinned maps (so learned state survives)
//! and swaps each pinned TCX link to the new program atomically: traffic never stops.

pub mod features;
pub mod maps;
pub mod sweep;

use anyhow::{anyhow, Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{qdisc_add_clsact, NlOptions, SchedClassifierLink, TcAttachOptions};
use aya::programs::{Link, LinkOrder, SchedClassifier, TcAttachType, TcHandle};
use aya::{Ebpf, EbpfLoader};
use oncache_common as c;
use crate::dataplane::netlink::Netlink;
use crate::dataplane::tc::{BlockSlot, Blocks};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oncache.bpf.o"));

pub use maps::Maps;

/// Where the two hooks of an interface are; also the pin-name suffix.
#[derive(Clone, Copy)]
enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn tc(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// How programs are attached: TCX links (kernel 6.6+, pinned, replaced atomically) or, on
/// older kernels, cls_bpf filters on a clsact qdisc (replaced in place by priority/handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Tcx,
    Clsact,
}

impl AttachMode {
    /// TCX where the kernel has it.
    pub fn detect() -> AttachMode {
        if features::kernel_at_least(6, 6) {
            AttachMode::Tcx
        } else {
            AttachMode::Clsact
        }
    }
}

/// oncache's cls_bpf filter slot on each hook (clsact mode): one fixed priority and handle,
/// so a restart finds and replaces its own filter instead of stacking a second one.
const CLSACT_PRIORITY: u16 = 0x4f43;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0x4f43);

/// The shared tc blocks (ingress hook, egress hook) every endpoint veth's clsact qdisc is
/// bound to; each holds one oncache filter, in the clsact slot.
const ENDPOINT_BLOCKS: Blocks = (0x4f43_0001, 0x4f43_0002);

fn endpoint_slot(hook: Hook) -> BlockSlot {
    let block = match hook {
        Hook::Ingress => ENDPOINT_BLOCKS.0,
        Hook::Egress => ENDPOINT_BLOCKS.1,
    };
    BlockSlot { block, priority: CLSACT_PRIORITY, handle: CLSACT_HANDLE.into() }
}

/// Where an endpoint's host veth is, as its fast-path entries are keyed.
pub enum VethAt {
    Index(u32),
    /// Gone; `links` is every interface index that still exists.
    Gone { links: Vec<u32> },
}

pub struct FastPath {
    ebpf: Ebpf,
    pub maps: Maps,
    dir: PathBuf,
    pub mode: AttachMode,
    /// The kernel's IDs of the programs loaded for endpoint hooks, to tell whether a shared
    /// block already holds them.
    endpoint_prog_ids: [u32; 2],
}

/// The programs of an endpoint veth's hooks, in `endpoint_prog_ids` order.
const ENDPOINT_PROGRAMS: [(&str, Hook); 2] = [(c::PROG_EGRESS_FAST, Hook::Ingress), (c::PROG_INGRESS_LEARN, Hook::Egress)];

/// Where the maps are pinned under the bpf dir; renamed whenever a map's key or value layout
/// changes, so that a new daemon never loads against maps of an older layout (their programs
/// keep them alive until they are replaced; then the old folder is removed).
/// v3: ONC_FILTER values carry the flow's outer source port, host and header.
/// v4: ONC_EGRESS entries hold a slot in the new ONC_GENS; flows carry it and the remote MAC.
/// v5: ONC_CONFIG holds the firewall epoch, and flows the epoch they were admitted in.
pub const MAPS_DIR: &str = "maps-v5";

fn pin_dirs(dir: &Path) -> [PathBuf; 3] {
    [dir.join(MAPS_DIR), dir.join("progs"), dir.join("links")]
}

impl FastPath {
    /// Loads (or adopts) the fast path and attaches the underlay programs.
    pub fn start(dir: &Path, cfg: c::Config, underlay: &str, mode: AttachMode) -> Result<FastPath> {
        features::ensure_bpffs(dir)?;
        for d in pin_dirs(dir) {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let map_paths: Vec<(&str, PathBuf)> = c::MAPS.iter().map(|m| (*m, dir.join(MAPS_DIR).join(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).context("loading the oncache eBPF object")?;
        for name in c::Program::ALL.map(c::Program::name) {
            let prog = classifier(&mut ebpf, name)?;
            prog.load().map_err(|e| verifier_error(name, e))?;
            let pin = dir.join("progs").join(name);
            remove_pin(&pin)?;
            prog.pin(&pin).with_context(|| format!("pinning {name} at {}", pin.display()))?;
        }
        let mut maps = Maps::take(&mut ebpf, sweep::spawn(dir.join(MAPS_DIR)))?;
        maps.set_config(cfg)?;
        let mut endpoint_prog_ids = [0; 2];
        for (id, (name, _)) in endpoint_prog_ids.iter_mut().zip(ENDPOINT_PROGRAMS) {
            *id = classifier(&mut ebpf, name)?.info().map_err(|e| anyhow!("{name}: {e}"))?.id();
        }
        let mut fp = FastPath { ebpf, maps, dir: dir.to_path_buf(), mode, endpoint_prog_ids };
        fp.attach(c::PROG_INGRESS_FAST, underlay, Hook::Ingress)?;
        fp.attach(c::PROG_EGRESS_LEARN, underlay, Hook::Egress)?;
        for old in std::fs::read_dir(dir)?.flatten() {
            let name = old.file_name().to_string_lossy().into_owned();
            if name.starts_with("maps") && name != MAPS_DIR {
                log::info!("removing map pins of an older layout: {name}");
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        Ok(fp)
    }

    /// The map counters with the kernel's run count and run time of each program.
    pub fn stats(&mut self) -> Result<maps::Stats> {
        let mut s = self.maps.stats()?;
        for p in c::Program::ALL {
            let (name, counters) = (p.name(), s.of_mut(p));
            let info = classifier(&mut self.ebpf, name)?.info().map_err(|e| anyhow!("{name}: {e}"))?;
            counters.runs = info.run_count();
            counters.run_time_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
        }
        Ok(s)
    }

    /// How the programs are attached, as `oncache status` says it.
    pub fn attachment(&self) -> &'static str {
        match self.mode {
            AttachMode::Tcx => "tcx on the underlay, clsact on endpoints",
            AttachMode::Clsact => "clsact",
        }
    }

    /// bpffs refuses names with a dot, which interface names may have; ':' never appears in
    /// an interface name, so it stands in for the dot and separates the hook.
    fn link_pin(&self, ifname: &str, hook: Hook) -> PathBuf {
        self.dir.join("links").join(format!("{}:{}", ifname.replace('.', ":"), hook.name()))
    }

    /// Attaches `prog` to a hook of `ifname`, replacing an earlier oncache program there in
    /// place: there is never a window without a program.
    fn attach(&mut self, prog: &str, ifname: &str, hook: Hook) -> Result<()> {
        match self.mode {
            AttachMode::Tcx => self.attach_tcx(prog, ifname, hook),
            AttachMode::Clsact => self.attach_clsact(prog, ifname, hook),
        }
    }

    /// Through a pinned TCX link; an existing pinned link gets the new program atomically.
    fn attach_tcx(&mut self, prog: &str, ifname: &str, hook: Hook) -> Result<()> {
        let pin = self.link_pin(ifname, hook);
        let p = classifier(&mut self.ebpf, prog)?;
        let fresh = |p: &mut SchedClassifier| {
            p.attach_with_options(ifname, hook.tc(), TcAttachOptions::TcxOrder(LinkOrder::default()))
                .with_context(|| format!("attaching {prog} to {ifname} {}", hook.name()))
        };
        let id = if !pin.exists() {
            fresh(p)?
        } else {
            let old = PinnedLink::from_pin(&pin).map_err(|e| anyhow!("opening pinned link {}: {e}", pin.display()))?;
            match FdLink::from(old).try_into().map_err(|e| anyhow!("{e}")).and_then(|l| p.attach_to_link(l).map_err(anyhow::Error::from)) {
                Ok(id) => id,
                // The link's interface is gone (a recreated veth): start afresh.
                Err(e) => {
                    log::debug!("replacing stale link {}: {e:#}", pin.display());
                    remove_pin(&pin)?;
                    fresh(p)?
                }
            }
        };
        let link: FdLink = p.take_link(id)?.try_into().map_err(|e| anyhow!("{prog}: not a TCX link: {e}"))?;
        remove_pin(&pin)?;
        link.pin(&pin).with_context(|| format!("pinning link {}", pin.display()))?;
        Ok(())
    }

    /// Through oncache's cls_bpf filter slot: replaced when present, created otherwise. The
    /// filter belongs to the interface, so the link object is let go without detaching.
    fn attach_clsact(&mut self, prog: &str, ifname: &str, hook: Hook) -> Result<()> {
        // Fails harmlessly when the qdisc exists.
        let _ = qdisc_add_clsact(ifname);
        let p = classifier(&mut self.ebpf, prog)?;
        let existing = SchedClassifierLink::attached(ifname, hook.tc(), CLSACT_PRIORITY, CLSACT_HANDLE, None)?;
        let id = match p.attach_to_link(existing) {
            Ok(id) => id,
            Err(_) => {
                let opts = NlOptions { priority: CLSACT_PRIORITY, handle: CLSACT_HANDLE, ..Default::default() };
                p.attach_with_options(ifname, hook.tc(), TcAttachOptions::Netlink(opts))
                    .with_context(|| format!("attaching {prog} to {ifname} {} (clsact)", hook.name()))?
            }
        };
        std::mem::forget(p.take_link(id)?);
        Ok(())
    }

    /// Puts the fast path on a joined endpoint's host-side veth: a clsact qdisc bound to the
    /// two shared endpoint blocks, whatever the mode, then the programs in the blocks unless
    /// they are there. Not TCX: the first TCX attachment to a device waits for an RCU grace
    /// period (`tcx_entry_sync`: 14 ms per attachment measured on the 6.18 lab, two per
    /// endpoint). Not a block of each veth's own: the kernel keeps every tc block bound on the
    /// machine on one list (`flow_indr_dev_setup_offload`) and searches it for each new one,
    /// so creating a veth's clsact grew from 81 to 378 µs over 1,000 endpoints; binding a
    /// shared block finds it near the head. Replacing a block's program (a new daemon)
    /// changes it for every endpoint at once, in place.
    pub async fn attach_endpoint(&mut self, nl: &Netlink, ifindex: u32, ep: c::EndpointInfo) -> Result<()> {
        self.maps.set_endpoint(ifindex, ep)?;
        if !nl.add_clsact_on_blocks(ifindex, ENDPOINT_BLOCKS).await? && nl.clsact_blocks(ifindex).await? != Some(ENDPOINT_BLOCKS) {
            // Filters of its own (an older oncache's): rebound; until the programs are in the
            // blocks again, the veth's packets take the slow path.
            nl.del_clsact(ifindex).await?;
            nl.add_clsact_on_blocks(ifindex, ENDPOINT_BLOCKS).await?;
        }
        for ((prog, hook), id) in ENDPOINT_PROGRAMS.into_iter().zip(self.endpoint_prog_ids) {
            let slot = endpoint_slot(hook);
            if nl.block_filter_program(slot).await? != Some(id) {
                let fd = classifier(&mut self.ebpf, prog)?.fd().map_err(|e| anyhow!("{prog}: {e}"))?.as_fd().as_raw_fd();
                nl.set_block_filter(slot, fd as u32, prog).await?;
            }
        }
        Ok(())
    }

    /// Takes the fast path off an endpoint and forgets everything learned about it, and
    /// nothing of another endpoint that has its address now (a container restarted by a
    /// dockerd that lost its old endpoint joins with the same address before the old one goes).
    pub async fn detach_endpoint(&mut self, nl: &Netlink, at: VethAt, vni: u32, ip: Option<[u8; 4]>) -> Result<()> {
        match at {
            VethAt::Index(i) => {
                nl.del_clsact(i).await?;
                self.maps.remove_endpoint(i)?;
                if let Some(ip) = ip {
                    self.maps.forget_local(vni, ip, i)?;
                }
            }
            VethAt::Gone { links } => {
                self.maps.retain_endpoints(&links)?;
            }
        }
        Ok(())
    }

    /// Removes link pins of every interface but the underlay: endpoints have none (an older
    /// oncache pinned TCX links for them, and removing the pin detaches such a link).
    pub fn prune_links(&self, underlay: &str) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for e in std::fs::read_dir(self.dir.join("links"))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            let ifname = name.rsplit_once(':').map(|(i, _)| i.replace(':', ".")).unwrap_or_else(|| name.clone());
            if ifname != underlay {
                remove_pin(&self.dir.join("links").join(&name))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

/// Removes oncache's cls_bpf filter from a hook, if there is one.
fn detach_clsact(ifname: &str, hook: Hook) {
    if let Ok(l) = SchedClassifierLink::attached(ifname, hook.tc(), CLSACT_PRIORITY, CLSACT_HANDLE, None) {
        let _ = l.detach();
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let p = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(p.try_into()?)
}

/// The verifier's own words, not just "permission denied".
fn verifier_error(name: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            anyhow!("the kernel's verifier rejected {name}: {io_error}\n{verifier_log}")
        }
        e => anyhow!("loading {name}: {e}"),
    }
}

fn remove_pin(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow!("removing pin {}: {e}", p.display())),
        _ => Ok(()),
    }
}

/// Removes every pin under `dir` (links first, which detaches TCX programs), then the folder;
/// and oncache's clsact filters from the given interfaces.
pub fn uninstall(dir: &Path, interfaces: &[String]) -> Result<usize> {
    for i in interfaces {
        for hook in [Hook::Ingress, Hook::Egress] {
            detach_clsact(i, hook);
        }
    }
    let mut n = 0;
    for d in pin_dirs(dir).iter().rev() {
        let Ok(entries) = std::fs::read_dir(d) else { continue };
        for e in entries {
            remove_pin(&e?.path())?;
            n += 1;
        }
        let _ = std::fs::remove_dir(d);
    }
    let _ = std::fs::remove_dir(dir);
    Ok(n)
}
