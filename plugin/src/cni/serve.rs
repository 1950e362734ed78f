//! The daemon side of the CNI front end: decodes a forwarded CNI call into the driver core's
//! types (a network named by its conflist name and VNI; an attachment keyed by container ID and
//! interface name), calls the core, and encodes its answer as a CNI result or error. Nothing
//! here touches the store or the kernel.

use super::spec::{self, Error as CniError, NetConf};
use crate::control::{CniReply, CniRequest};
use crate::driver::{AttachSpec, Driver, Invalid, NetworkSpec};
use crate::naming;
use oncache_store::{CniOwner, Ipam};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::Path;

type Answer = Result<Option<serde_json::Value>, CniError>;

/// Serves one forwarded CNI call. `peer` is the calling process (its PID as the kernel gave it
/// for the socket), whose descriptor `netns_fd` holds the container's network namespace.
pub async fn handle(d: &mut Driver, req: &CniRequest, peer: Option<u32>) -> CniReply {
    let conf: Result<NetConf, _> = serde_json::from_value(req.config.clone());
    let version = conf.as_ref().map(|c| c.cni_version.clone()).unwrap_or_default();
    let answer = match conf {
        Err(e) => Err(CniError::new(spec::DECODE_FAILURE, format!("decoding the network configuration: {e}"))),
        Ok(c) => call(d, req, &c, peer).await,
    };
    match answer {
        Ok(result) => CniReply { result, error: None },
        Err(e) => {
            log::warn!("CNI {} {} {}: {} (code {})", req.command, req.container_id, req.ifname, e.msg, e.code);
            CniReply { result: None, error: Some(e.versioned(&version)) }
        }
    }
}

fn need<'a>(what: &str, v: &'a str) -> Result<&'a str, CniError> {
    if v.is_empty() {
        return Err(CniError::new(spec::INVALID_ENV, format!("{what} is not set")));
    }
    Ok(v)
}

fn config_error(msg: String) -> CniError {
    CniError::new(spec::INVALID_CONFIG, msg)
}

/// The core's failure: the caller's mistake (7) or the daemon's (100).
fn failed(e: anyhow::Error) -> CniError {
    let code = if e.downcast_ref::<Invalid>().is_some() { spec::INVALID_CONFIG } else { spec::FAILED };
    CniError::new(code, format!("{e:#}"))
}

/// The network the configuration names, as the core takes it.
fn network_spec(n: &spec::Network) -> NetworkSpec {
    let mut options = BTreeMap::new();
    options.insert(crate::options::VNI.to_string(), n.vni.to_string());
    options.insert("cni.name".into(), n.name.clone());
    NetworkSpec {
        id: naming::cni_network_id(&n.name),
        vni: Some(n.vni),
        mtu: n.mtu,
        fastpath: n.fastpath,
        ipv4_pools: vec![n.subnet.to_string()],
        ipv6_pools: Vec::new(),
        options,
        ipam: Some(Ipam {
            range: n.range.to_string(),
            gateway: format!("{}/{}", n.gateway, n.subnet.prefix),
        }),
    }
}

/// Opens the container's network namespace: through the caller's descriptor when it passed
/// one (the path may exist only in the runtime's mount namespace), else by its path.
fn open_netns(req: &CniRequest, peer: Option<u32>) -> Result<File, CniError> {
    let netns = need("CNI_NETNS", &req.netns)?;
    let held = match (req.netns_fd, peer) {
        (Some(fd), Some(pid)) if pid > 0 => File::open(format!("/proc/{pid}/fd/{fd}")).map_err(|e| format!("/proc/{pid}/fd/{fd}: {e}")),
        _ => Err("no descriptor from the caller".to_string()),
    };
    // The path itself when the caller's descriptor is out of reach (another PID namespace).
    held.or_else(|why| {
        File::open(Path::new(netns)).map_err(|e| {
            CniError::new(spec::INVALID_ENV, format!("opening the network namespace {netns}: {e} (and through the caller: {why})"))
        })
    })
}

async fn call(d: &mut Driver, req: &CniRequest, c: &NetConf, peer: Option<u32>) -> Answer {
    if !spec::SUPPORTED.contains(&c.cni_version.as_str()) && req.command != "DEL" {
        return Err(CniError::new(
            spec::INCOMPATIBLE_VERSION,
            format!("cniVersion {:?} is not supported (oncache speaks {})", c.cni_version, spec::SUPPORTED.join(", ")),
        ));
    }
    match req.command.as_str() {
        "ADD" => add(d, req, c, peer).await.map(Some),
        "DEL" => {
            let id = naming::cni_endpoint_id(need("CNI_CONTAINERID", &req.container_id)?, need("CNI_IFNAME", &req.ifname)?);
            d.detach(&id, req.queued_at).await.map_err(failed)?;
            Ok(None)
        }
        "CHECK" => {
            let n = c.network().map_err(config_error)?;
            let id = naming::cni_endpoint_id(need("CNI_CONTAINERID", &req.container_id)?, need("CNI_IFNAME", &req.ifname)?);
            let netns = open_netns(req, peer)?;
            d.check_attachment(&id, &naming::cni_network_id(&n.name), &netns).await.map_err(failed)?;
            Ok(None)
        }
        "STATUS" => {
            c.network().map_err(config_error)?;
            Ok(None)
        }
        "GC" => {
            let n = c.network().map_err(config_error)?;
            let keep: HashSet<String> =
                c.valid().unwrap_or_default().iter().map(|a| naming::cni_endpoint_id(&a.container_id, &a.ifname)).collect();
            if c.valid().is_none() {
                return Err(config_error("GC without cni.dev/valid-attachments: refusing to remove every attachment".into()));
            }
            d.retain_attachments(&naming::cni_network_id(&n.name), &keep).await.map_err(failed)?;
            Ok(None)
        }
        other => Err(CniError::new(spec::INVALID_ENV, format!("unknown CNI_COMMAND {other:?} (ADD, DEL, CHECK, STATUS, GC, VERSION)"))),
    }
}

async fn add(d: &mut Driver, req: &CniRequest, c: &NetConf, peer: Option<u32>) -> Result<serde_json::Value, CniError> {
    let n = c.network().map_err(config_error)?;
    let container_id = need("CNI_CONTAINERID", &req.container_id)?;
    let ifname = need("CNI_IFNAME", &req.ifname)?;
    if ifname.len() > 15 || ifname.contains(['/', ' ']) || ifname == "." || ifname == ".." {
        return Err(CniError::new(spec::INVALID_ENV, format!("CNI_IFNAME {ifname:?}: not a valid interface name")));
    }
    let want = spec::wanted(&req.args, &c.runtime_config).map_err(config_error)?;
    let netns = open_netns(req, peer)?;
    let network = d.ensure_network(network_spec(&n)).await.map_err(failed)?;
    let owner = CniOwner { container_id: container_id.to_string(), ifname: ifname.to_string(), netns: req.netns.clone() };
    let a = d
        .attach(AttachSpec { network_id: &network.id, owner, netns: &netns, ip: want.ip, mac: want.mac })
        .await
        .map_err(failed)?;
    Ok(spec::AddResult {
        version: &c.cni_version,
        host_veth: &a.host_veth,
        host_mac: a.host_mac,
        ifname,
        mac: &a.endpoint.mac,
        netns: &req.netns,
        ip: a.ip,
        gateway: a.gateway,
    }
    .to_json())
}

/// Applies the DELs queued while the daemon was down (at start, holding the driver), and
/// removes their files. A file that cannot be read is set aside as `.bad`, never retried forever.
pub async fn apply_queue(d: &mut Driver, state_dir: &Path) -> usize {
    let dir = super::queue_dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut done = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let req: Result<CniRequest, String> =
            std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
        match req {
            Ok(req) => {
                let reply = handle(d, &CniRequest { command: "DEL".into(), ..req.clone() }, None).await;
                match reply.error {
                    None => {
                        log::info!("queued CNI DEL applied: {} {}", req.container_id, req.ifname);
                        let _ = std::fs::remove_file(&path);
                        done += 1;
                    }
                    Some(err) if matches!(err.code, spec::INVALID_ENV | spec::DECODE_FAILURE) => {
                        log::warn!("queued CNI DEL {}: {}; dropped (it can never succeed)", path.display(), err.msg);
                        let _ = std::fs::remove_file(&path);
                    }
                    Some(err) => log::warn!("queued CNI DEL {}: {} (kept for the next start)", path.display(), err.msg),
                }
            }
            Err(why) => {
                log::warn!("unreadable queued CNI DEL {}: {why}; set aside", path.display());
                let _ = std::fs::rename(&path, path.with_extension("bad"));
            }
        }
    }
    done
}
