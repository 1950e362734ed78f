//! `oncache cni add-network` / `rm-network`: the conflist files runtimes read. Written to a
//! temporary file in the same folder and renamed over the target, so that a reader never sees
//! half a file (nerdctl refuses every network command while one conflist is unparsable).

use super::spec::NetConf;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// What `add-network` was given.
#[derive(Debug, Clone, Default)]
pub struct NewNetwork {
    pub name: String,
    pub subnet: String,
    pub vni: Option<u32>,
    pub ip_range: Option<String>,
    pub gateway: Option<String>,
    pub mtu: Option<u32>,
    /// The daemon's socket and state dir, written only when not the defaults.
    pub socket: Option<String>,
    pub state_dir: Option<String>,
}

pub fn path(conf_dir: &Path, name: &str) -> PathBuf {
    conf_dir.join(format!("{name}.conflist"))
}

/// The conflist of a network: the oncache plugin, then portmap for `-p` port mappings.
pub fn render(n: &NewNetwork) -> Result<Value> {
    let vni = n.vni.unwrap_or_else(|| super::spec::default_vni(&n.name));
    let mut plugin = json!({
        "type": "oncache",
        "vni": vni,
        "subnet": n.subnet,
        "capabilities": {"ips": true, "mac": true},
    });
    for (k, v) in [("ipRange", &n.ip_range), ("gateway", &n.gateway), ("socket", &n.socket), ("stateDir", &n.state_dir)] {
        if let Some(v) = v {
            plugin[k] = json!(v);
        }
    }
    if let Some(m) = n.mtu {
        plugin["mtu"] = json!(m);
    }
    // The same checks the daemon makes at ADD, now rather than at the first container.
    let mut check = plugin.clone();
    check["name"] = json!(n.name);
    check["cniVersion"] = json!("1.0.0");
    let conf: NetConf = serde_json::from_value(check).context("network configuration")?;
    conf.network().map_err(|e| anyhow::anyhow!(e))?;
    Ok(json!({
        "cniVersion": "1.0.0",
        "name": n.name,
        "plugins": [plugin, {"type": "portmap", "capabilities": {"portMappings": true}}],
    }))
}

/// Writes `<conf_dir>/<name>.conflist` atomically; returns its path.
pub fn add(conf_dir: &Path, n: &NewNetwork) -> Result<PathBuf> {
    let v = render(n)?;
    std::fs::create_dir_all(conf_dir).with_context(|| format!("creating {}", conf_dir.display()))?;
    let target = path(conf_dir, &n.name);
    // Not a name runtimes load (.conf, .conflist, .json), and unique to this process.
    let tmp = conf_dir.join(format!(".{}.conflist.{}.tmp", n.name, std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&v).expect("serializes").as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // The rename itself is durable once the folder is.
        std::fs::File::open(conf_dir)?.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", target.display()));
    }
    Ok(target)
}

/// Removes `<conf_dir>/<name>.conflist`.
pub fn remove(conf_dir: &Path, name: &str) -> Result<PathBuf> {
    crate::naming::check_cni_name(name).map_err(|e| anyhow::anyhow!(e))?;
    let target = path(conf_dir, name);
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(target),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("no conflist {}", target.display()),
        Err(e) => Err(e).with_context(|| format!("removing {}", target.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflists_are_written_whole_and_checked_first() {
        let d = tempfile::tempdir().unwrap();
        let n = NewNetwork { name: "oc1".into(), subnet: "10.220.0.0/24".into(), vni: Some(77), ip_range: Some("10.220.0.0/25".into()), ..Default::default() };
        let p = add(d.path(), &n).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "oncache");
        assert_eq!(v["plugins"][0]["vni"], 77);
        assert!(v["plugins"][0].get("socket").is_none(), "defaults are not written");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
        let bad = NewNetwork { name: "oc2".into(), subnet: "10.0.0.0/24".into(), ip_range: Some("10.1.0.0/25".into()), ..Default::default() };
        assert!(add(d.path(), &bad).unwrap_err().to_string().contains("not inside the subnet"));
        assert!(!path(d.path(), "oc2").exists());
        remove(d.path(), "oc1").unwrap();
        assert!(remove(d.path(), "oc1").unwrap_err().to_string().contains("no conflist"));
    }
}
