//! The docker-compose lab as a testbed: node1 (server) and node2 (client) are containers on the
//! machine's dockerd, each running its own dockerd with oncache as its managed plugin, joined by the compose
//! network as underlay; `lab.sh up` forms the Swarm. The node image is rebuilt first with the
//! oncache binary cargo just built, so the lab runs this checkout. Everything the benchmark brings
//! up it takes down (`lab.sh down`), also when it fails; a dockerd it had to start it stops.

use crate::lab::process::{run, run_ok, terminate};
use crate::lab::{docker_bin, wait_for};
use crate::Testbed;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NODES: [&str; 2] = ["node1", "node2"];

pub struct Compose {
    dir: PathBuf,
    /// Container IDs of node1 and node2.
    ids: Vec<String>,
    /// Each node's CPU usage counter file, and whether it counts ns (v1) or is a cpu.stat (v2).
    cpu_files: Vec<Option<(PathBuf, bool)>>,
    /// Whether `lab.sh down` is owed.
    up: bool,
    /// The machine's dockerd, when the benchmark had to start it.
    dockerd: Option<Child>,
}

fn ok(cmd: &mut Command, timeout: Duration) -> String {
    run_ok(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

impl Compose {
    pub fn start() -> Compose {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose-lab"));
        let mut c = Compose { dir, ids: Vec::new(), cpu_files: Vec::new(), up: false, dockerd: None };
        c.ensure_dockerd();
        let running = ok(&mut c.compose(&["ps", "-q"]), Duration::from_secs(60));
        assert!(
            running.trim().is_empty(),
            "the compose lab is already up; take it down first (docker-compose-lab/lab.sh down) or use --lab netns"
        );
        eprintln!("building the lab node image with {}", env!("CARGO_BIN_EXE_oncache"));
        ok(
            Command::new(c.dir.join("node/build-image.sh")).env("ONCACHE_BIN", env!("CARGO_BIN_EXE_oncache")),
            Duration::from_secs(1200),
        );
        c.up = true;
        eprintln!("starting the compose lab");
        ok(Command::new(c.dir.join("lab.sh")).arg("up"), Duration::from_secs(300));
        for n in NODES {
            let id = ok(&mut c.compose(&["ps", "-q", n]), Duration::from_secs(60)).trim().to_string();
            assert!(!id.is_empty(), "{n} is not running");
            c.ids.push(id);
        }
        c.cpu_files = c.ids.iter().map(|id| cpu_file(id)).collect();
        c
    }

    fn compose(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.dir).args(args);
        cmd
    }

    /// Starts the machine's dockerd if nothing answers on its socket (nothing starts it here).
    fn ensure_dockerd(&mut self) {
        let answers = || run_ok(Command::new(docker_bin()).args(["version", "-f", "{{.Server.Version}}"]), Duration::from_secs(20)).is_ok();
        if answers() {
            return;
        }
        let log = std::env::temp_dir().join("oncache-bench-dockerd.log");
        eprintln!("the machine's dockerd is not running: starting it (log {})", log.display());
        let f = std::fs::File::create(&log).expect("dockerd log");
        let child = Command::new("dockerd")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd: {e}"));
        self.dockerd = Some(child);
        wait_for("the machine's dockerd", Duration::from_secs(60), || answers().then_some(()));
    }

    fn exec(&self, node: usize, detach: bool, cmd: &[&str]) -> String {
        let mut c = Command::new(docker_bin());
        c.arg("exec");
        if detach {
            c.arg("-d");
        }
        c.arg(&self.ids[node]).args(cmd);
        ok(&mut c, Duration::from_secs(180))
    }
}

/// The node container's CPU accounting file, from its PID 1's cgroup (v1 cpuacct or v2).
fn cpu_file(id: &str) -> Option<(PathBuf, bool)> {
    let pid = run_ok(Command::new(docker_bin()).args(["inspect", "-f", "{{.State.Pid}}", id]), Duration::from_secs(30)).ok()?;
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).ok()?;
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let path = path.trim_start_matches('/');
        let file = if controllers.split(',').any(|c| c == "cpuacct") {
            ["cpuacct", "cpu,cpuacct"].iter().map(|m| Path::new("/sys/fs/cgroup").join(m).join(path).join("cpuacct.usage")).find(|p| p.exists()).map(|p| (p, true))
        } else if controllers.is_empty() {
            Some(Path::new("/sys/fs/cgroup").join(path).join("cpu.stat")).filter(|p| p.exists()).map(|p| (p, false))
        } else {
            None
        };
        if file.is_some() {
            return file;
        }
    }
    None
}

impl Testbed for Compose {
    fn title(&self) -> String {
        "docker-compose lab, node1 (server) and node2 (client)".into()
    }
    fn underlay_ip(&self, node: usize) -> String {
        let f = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
        ok(Command::new(docker_bin()).args(["inspect", "-f", f, &self.ids[node]]), Duration::from_secs(30)).trim().to_string()
    }
    fn docker(&self, node: usize, args: &[&str]) -> String {
        let mut cmd = vec!["docker"];
        cmd.extend_from_slice(args);
        self.exec(node, false, &cmd)
    }
    fn host_exec(&self, node: usize, cmd: &[&str]) -> String {
        self.exec(node, false, cmd)
    }
    fn host_serve(&mut self, node: usize, cmd: &[&str]) {
        // Ends with the node (`lab.sh down`).
        self.exec(node, true, cmd);
    }
    /// Through Swarm, as its users do: made once on node1 (the manager) with the managed plugin.
    fn oncache_network(&self, name: &str, vni: u32, subnet: &str, opts: &[&str]) {
        let vni = format!("oncache.vni={vni}");
        let mut a = vec!["network", "create", "-d", "oncache:latest", "--attachable", "-o", &vni, "--subnet", subnet];
        for o in opts {
            a.extend(["-o", o]);
        }
        a.push(name);
        self.docker(0, &a);
    }
    fn oncache_stats(&self, node: usize) -> Value {
        let out = self.exec(node, false, &["oncache", "stats", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("oncache stats --json on {}: {e}: {out}", NODES[node]))
    }
    fn node_cpu_us(&self, node: usize) -> Option<f64> {
        let (file, v1) = self.cpu_files[node].as_ref()?;
        let s = std::fs::read_to_string(file).ok()?;
        if *v1 {
            s.trim().parse::<f64>().ok().map(|ns| ns / 1000.0)
        } else {
            s.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())
        }
    }
    fn finish(self: Box<Self>) {}
}

impl Drop for Compose {
    fn drop(&mut self) {
        if self.up {
            eprintln!("taking the compose lab down");
            match run(Command::new(self.dir.join("lab.sh")).arg("down"), Duration::from_secs(300)) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("lab.sh down failed: {}", String::from_utf8_lossy(&out.stderr)),
                Err(e) => eprintln!("lab.sh down: {e}"),
            }
        }
        if let Some(mut d) = self.dockerd.take() {
            eprintln!("stopping the dockerd the benchmark started (PID {})", d.id());
            terminate(&mut d, Duration::from_secs(30));
        }
    }
}
