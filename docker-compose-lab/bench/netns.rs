//! The namespace lab (tests/lab) as a testbed: two hosts are network namespaces joined by a veth
//! switch, each with its own dockerd and oncache daemon. Hosts are not cgroups here, so only the
//! machine's CPU time is reported.

use crate::lab::{self, Bg, Lab};
use crate::Testbed;
use serde_json::Value;
use std::time::Duration;

pub struct Netns {
    lab: Lab,
    servers: Vec<Bg>,
}

impl Netns {
    pub fn start() -> Netns {
        let mut lab = Lab::new(2);
        lab.start_dockerds();
        let (ip0, ip1) = (lab.host(0).underlay_ip.to_string(), lab.host(1).underlay_ip.to_string());
        lab.host_mut(0).start_oncache(&["--peer", &ip1]);
        lab.host_mut(1).start_oncache(&["--peer", &ip0]);
        // Docker's overlay needs a Swarm.
        let (h0, h1) = (lab.host(0), lab.host(1));
        h0.docker(&["swarm", "init", "--advertise-addr", &ip0, "--listen-addr", &format!("{ip0}:2377")]);
        let token = h0.docker(&["swarm", "join-token", "-q", "worker"]);
        h1.docker(&["swarm", "join", "--token", token.trim(), "--advertise-addr", &ip1, &format!("{ip0}:2377")]);
        Netns { lab, servers: Vec::new() }
    }
}

impl Testbed for Netns {
    fn title(&self) -> String {
        "Namespace lab (tests/lab), 2 hosts".into()
    }
    fn underlay_ip(&self, node: usize) -> String {
        self.lab.host(node).underlay_ip.to_string()
    }
    fn docker(&self, node: usize, args: &[&str]) -> String {
        self.lab.host(node).docker(args)
    }
    fn host_exec(&self, node: usize, cmd: &[&str]) -> String {
        let out = self.lab.host(node).exec_timeout(cmd, Duration::from_secs(120));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn host_serve(&mut self, node: usize, cmd: &[&str]) {
        self.servers.push(self.lab.host(node).spawn(cmd));
    }
    /// oncache runs as a service here (local scope): the same network on each host, each
    /// allocating from its own half of the /24.
    fn oncache_network(&self, name: &str, vni: u32, subnet: &str, opts: &[&str]) {
        let prefix = subnet.strip_suffix("0/24").unwrap_or_else(|| panic!("{subnet}: a.b.c.0/24 expected"));
        let vni = format!("oncache.vni={vni}");
        for node in 0..2 {
            let range = format!("{prefix}{}/25", node * 128);
            let mut a = vec!["network", "create", "-d", "oncache", "-o", &vni, "--subnet", subnet, "--ip-range", &range];
            for o in opts {
                a.extend(["-o", o]);
            }
            a.push(name);
            self.docker(node, &a);
        }
    }
    fn oncache_stats(&self, node: usize) -> Value {
        let (code, v) = lab::post_json(&self.lab.host(node).oncache_socket(), "/Oncache.Stats", &serde_json::json!({}));
        assert_eq!(code, 200, "{v}");
        v
    }
    fn node_cpu_us(&self, _node: usize) -> Option<f64> {
        None
    }
    fn finish(self: Box<Self>) {
        let Netns { lab, servers } = *self;
        drop(servers);
        lab.finish();
    }
}
