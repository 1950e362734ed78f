//! Tests of the lab harness itself (tests/lab/). They need root, iproute2, util-linux, dockerd
//! and containerd, busybox-static, iperf3 and sockperf; they do not need oncache (a stand-in
//! plugin, this very test binary, plays the plugin).

mod lab;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use lab::{assert_no_leaks, post, raw_exchange, Lab, IMAGE};

/// Two hosts reach each other over the underlay, only inside their namespaces.
#[test]
fn underlay_ping_between_two_hosts() {
    let lab = Lab::new(2);
    let (h0, h1) = (lab.host(0), lab.host(1));
    assert_eq!(h0.underlay_ip.octets()[..3], h1.underlay_ip.octets()[..3]);
    let addrs = h0.sh("ip -o -4 addr show dev ul0");
    assert!(addrs.contains(&format!("{}/24", h0.underlay_ip)), "{addrs}");
    let out = h0.sh(&format!("busybox ping -c 2 -i 0.2 -W 5 {}", h1.underlay_ip));
    assert!(out.contains("2 packets received"), "{out}");
    // The other way round, and the host names are what Lab::new says.
    h1.sh(&format!("busybox ping -c 1 -W 5 {}", h0.underlay_ip));
    assert_eq!(h0.name, format!("oc{}h0", lab.suffix()));
    assert!(std::path::Path::new(&h1.netns_path()).exists());
    // The leak check sees a live lab (it is not vacuous).
    let live = lab::leaks(lab.suffix());
    assert!(
        live.iter().any(|l| l.contains("network namespace")),
        "{live:?}"
    );
    assert!(live.iter().any(|l| l.starts_with("folder")), "{live:?}");
    // A background process in a host netns.
    let mut bg = h1.spawn(&["sleep", "600"]);
    assert!(bg.is_running());
    drop(lab.host(0).spawn(&["sleep", "600"])); // killed and reaped at once
    bg.stop();
    lab.finish();
}

/// One host with its own dockerd: the image has what tests need, a user-defined bridge network
/// with embedded DNS works (iptables and the resolver inside the namespace).
#[test]
fn dockerd_in_a_host_runs_containers() {
    let mut lab = Lab::new(1);
    lab.start_dockerds();
    let h = lab.host(0);
    let out = h.docker(&[
        "run",
        "--rm",
        "--pull=never",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "iperf3 --version && sockperf --version && echo ok",
    ]);
    assert!(out.lines().any(|l| l.trim() == "ok"), "{out}");
    // The hostname is the host's name; its sysfs shows its own links.
    let info = h.docker(&["info", "-f", "{{.Name}}"]);
    assert_eq!(info.trim(), h.name);

    h.docker(&["network", "create", "-d", "bridge", "smoke"]);
    h.run(&["--name", "c1", "--network", "smoke", IMAGE, "sleep", "600"]);
    h.run(&["--name", "c2", "--network", "smoke", IMAGE, "sleep", "600"]);
    let out = h.docker_exec("c1", &["ping", "-c", "2", "-i", "0.2", "-W", "5", "c2"]);
    assert!(out.contains("2 packets received"), "{out}");
    let ip2 = h.container_ip("c2", "smoke");
    let out = h.docker_exec("c1", &["ping", "-c", "1", "-W", "5", &ip2.to_string()]);
    assert!(out.contains("1 packets received"), "{out}");
    // The bridge and docker's iptables rules are in the host's namespace.
    let links = h.sh("ip -o link show type bridge");
    assert!(links.contains("br-"), "{links}");
    let rules = h.sh("iptables -S FORWARD");
    assert!(rules.contains("DOCKER-USER"), "{rules}");
    // The container's PID is usable for nsenter.
    let pid = h.container_pid("c1");
    assert!(std::path::Path::new(&format!("/proc/{pid}/ns/net")).exists());
    lab.finish();
}

/// Two labs in parallel threads: same container names, their own engines, no interference.
#[test]
fn parallel_labs_do_not_collide() {
    let run_one = || {
        let mut lab = Lab::new(2);
        let (a, b) = (lab.host(0).underlay_ip, lab.host(1).underlay_ip);
        lab.host(0).sh(&format!("busybox ping -c 1 -W 5 {b}"));
        lab.host(1).sh(&format!("busybox ping -c 1 -W 5 {a}"));
        let h = lab.host_mut(0);
        h.start_dockerd();
        h.load_image();
        h.run(&["--name", "same", "--network", "none", IMAGE, "sleep", "600"]);
        let ps = h.docker(&["ps", "-q"]);
        assert_eq!(ps.lines().count(), 1, "{ps}");
        let id = h.docker(&["info", "-f", "{{.ID}}"]).trim().to_string();
        let suffix = lab.suffix().to_string();
        lab.finish();
        (suffix, id)
    };
    let t1 = thread::spawn(run_one);
    let t2 = thread::spawn(run_one);
    let (s1, id1) = t1.join().expect("lab 1");
    let (s2, id2) = t2.join().expect("lab 2");
    assert_ne!(s1, s2);
    assert_ne!(id1, id2, "both dockerds report the same engine ID");
    assert_no_leaks(&s1);
    assert_no_leaks(&s2);
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Start-up failures of dockerd and of the plugin panic at once, with the log in the message.
#[test]
fn startup_failures_are_reported() {
    let mut lab = Lab::new(1);
    let h = lab.host_mut(0);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.start_dockerd_with(&["--no-such-flag"]);
    }))
    .expect_err("dockerd with a bad flag must not start");
    let msg = panic_text(err);
    assert!(
        msg.contains("exited with") && msg.contains("no-such-flag"),
        "{msg}"
    );
    assert!(h.dockerd_pid().is_none());

    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.start_oncache_cmd(
            std::path::Path::new("/bin/sh"),
            &["-c", "echo plugin-says-bye; exit 3"],
            &[],
        );
    }))
    .expect_err("a plugin that exits must be reported");
    let msg = panic_text(err);
    assert!(
        msg.contains("exit 3") && msg.contains("plugin-says-bye"),
        "{msg}"
    );
    assert!(h.oncache_pid().is_none());
    // The harness is still usable after such a failure.
    h.start_dockerd();
    h.docker(&["info", "-f", "{{.ID}}"]);
    lab.finish();
}

/// A panic in a test still cleans up everything (containers, dockerd, background processes).
#[test]
fn cleanup_runs_when_a_test_panics() {
    let (tx, rx) = mpsc::channel();
    let r = thread::spawn(move || {
        let mut lab = Lab::new(2);
        tx.send(lab.suffix().to_string()).unwrap();
        let h = lab.host_mut(1);
        h.start_dockerd();
        h.load_image();
        h.run(&["--name", "left", "--network", "none", IMAGE, "sleep", "600"]);
        let _bg = lab.host(0).spawn(&["sleep", "600"]);
        panic!("deliberate panic inside a lab");
    })
    .join();
    assert!(r.is_err(), "the thread should have panicked");
    let suffix = rx.recv().unwrap();
    assert_no_leaks(&suffix);
}

/// The plugin slot with a stand-in: dockerd discovers the socket in the bind-mounted plugins
/// folder, the HTTP helper talks to it, restarts of plugin and dockerd work.
#[test]
fn plugin_slot_with_a_standin() {
    let mut lab = Lab::new(1);
    let h = lab.host_mut(0);
    h.start_dockerd();
    let exe = std::env::current_exe().unwrap();
    let sock = h.oncache_socket().to_string_lossy().into_owned();
    h.start_oncache_cmd(
        &exe,
        &[
            "standin_plugin",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
        &[("ONCACHE_LAB_STANDIN_SOCKET", &sock)],
    );
    // Default: the plugin sees the machine's sysfs (no ul0 there).
    let (_, sys) = post(&h.oncache_socket(), "/Lab.SysClassNet", "");
    assert!(!sys.split_whitespace().any(|n| n == "ul0"), "{sys}");
    let (status, body) = post(&h.oncache_socket(), "/Plugin.Activate", "");
    assert_eq!(status, 200);
    assert!(body.contains("NetworkDriver"), "{body}");

    h.docker(&["network", "create", "-d", "oncache", "viaplugin"]);
    let log = h.oncache_log();
    assert!(log.contains("/NetworkDriver.CreateNetwork"), "{log}");
    assert!(log.contains("RUST_LOG=debug"), "{log}");

    // Raw bytes: the stand-in answers 400 to garbage.
    let r = raw_exchange(
        &h.oncache_socket(),
        b"NOT HTTP\r\n\r\n",
        true,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status(), Some(400), "{}", r.text());

    let pid = h.oncache_pid().unwrap();
    h.set_oncache_private_sysfs(true);
    h.restart_oncache();
    assert_ne!(h.oncache_pid().unwrap(), pid);
    // Now it has a sysfs of the host's netns.
    let (_, sys) = post(&h.oncache_socket(), "/Lab.SysClassNet", "");
    assert!(sys.split_whitespace().any(|n| n == "ul0"), "{sys}");
    let old = h.dockerd_pid().unwrap();
    h.restart_dockerd();
    assert_ne!(h.dockerd_pid().unwrap(), old);
    let nets = h.docker(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(nets.contains("viaplugin oncache"), "{nets}");
    h.docker(&["network", "rm", "viaplugin"]);
    assert!(h.oncache_log().contains("/NetworkDriver.DeleteNetwork"));
    h.stop_oncache().expect("the stand-in is reaped");
    assert!(h.oncache_pid().is_none());
    lab.finish();
}

/// Not a test: the stand-in plugin process that `plugin_slot_with_a_standin` starts (this test
/// binary, run with `--ignored --exact standin_plugin` and ONCACHE_LAB_STANDIN_SOCKET set).
/// Answers every NetworkDriver call with `{}` and logs requests to stdout.
#[test]
#[ignore = "helper process for plugin_slot_with_a_standin"]
fn standin_plugin() {
    let Ok(sock) = std::env::var("ONCACHE_LAB_STANDIN_SOCKET") else {
        return;
    };
    // As a managed plugin this runs as PID 1 of its PID namespace, where SIGTERM without a
    // handler is ignored (dockerd would wait 10 s, then SIGKILL).
    extern "C" fn on_term(_: libc::c_int) {
        unsafe { libc::_exit(0) }
    }
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_term as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    println!(
        "standin: RUST_LOG={}",
        std::env::var("RUST_LOG").unwrap_or_default()
    );
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).expect("bind");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i);
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = head_end.map(|i| String::from_utf8_lossy(&buf[..i]).into_owned());
        let req_line = head
            .as_deref()
            .and_then(|h| h.lines().next())
            .unwrap_or("")
            .to_string();
        let mut parts = req_line.split_whitespace();
        let (method, path, version) = (parts.next(), parts.next(), parts.next());
        let (status, body) = match (method, path, version) {
            (Some("POST"), Some(path), Some(v)) if v.starts_with("HTTP/1.") => {
                let len: usize = head
                    .as_deref()
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                let start = head_end.unwrap() + 4;
                while buf.len() < start + len {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req_body =
                    String::from_utf8_lossy(&buf[start..buf.len().min(start + len)]).into_owned();
                println!("standin: {path} {req_body}");
                match path {
                    "/Plugin.Activate" => {
                        ("200 OK", r#"{"Implements":["NetworkDriver"]}"#.to_string())
                    }
                    "/NetworkDriver.GetCapabilities" => (
                        "200 OK",
                        r#"{"Scope":"local","ConnectivityScope":"local"}"#.to_string(),
                    ),
                    "/Lab.SysClassNet" => {
                        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
                            .map(|rd| {
                                rd.flatten()
                                    .map(|e| e.file_name().to_string_lossy().into_owned())
                                    .collect()
                            })
                            .unwrap_or_default();
                        names.sort();
                        ("200 OK", names.join(" "))
                    }
                    _ => ("200 OK", "{}".to_string()),
                }
            }
            _ => {
                println!("standin: bad request {req_line:?}");
                ("400 Bad Request", r#"{"Err":"bad request"}"#.to_string())
            }
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(resp.as_bytes());
        let _ = std::io::stdout().flush();
    }
}

/// A managed plugin (`docker plugin create/enable`, as Swarm needs) made of the stand-in: it runs
/// under the host's dockerd and is cleaned up with the lab.
#[test]
fn managed_plugin_standin() {
    let mut lab = Lab::new(1);
    let h = lab.host_mut(0);
    h.start_dockerd();
    let pdir = h.dir.join("managed-plugin");
    let rootfs = pdir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    h.sh(&format!(
        "tar -xf {} -C {} && cp {} {}/standin",
        lab::rootfs_tar().display(),
        rootfs.display(),
        std::env::current_exe().unwrap().display(),
        rootfs.display()
    ));
    let config = serde_json::json!({
        "description": "lab stand-in",
        "documentation": "tests/lab_smoke.rs",
        "entrypoint": ["/standin", "standin_plugin", "--exact", "--ignored", "--nocapture", "--test-threads=1"],
        "env": [{"name": "ONCACHE_LAB_STANDIN_SOCKET", "value": "/run/docker/plugins/standin.sock"}],
        "interface": {"types": ["docker.networkdriver/1.0"], "socket": "standin.sock"},
        "network": {"type": "host"},
        "linux": {"capabilities": ["CAP_NET_ADMIN"]}
    });
    std::fs::write(pdir.join("config.json"), config.to_string()).unwrap();
    let h = lab.host(0);
    h.docker(&[
        "plugin",
        "create",
        "standin:latest",
        &pdir.to_string_lossy(),
    ]);
    h.docker(&["plugin", "enable", "standin:latest"]);
    h.docker(&["network", "create", "-d", "standin:latest", "managed"]);
    // dockerd runs the plugin in the cgroup /<plugin id>, outside the host's cgroups.
    let id = h
        .docker(&["plugin", "inspect", "-f", "{{.Id}}", "standin:latest"])
        .trim()
        .to_string();
    let pids = lab::cleanup::procs_in_cgroups_named(&id);
    assert!(!pids.is_empty(), "no process in the cgroups of plugin {id}");
    // After a dockerd crash the plugin keeps running; the clean-up still finds and ends it.
    lab.host_mut(0).kill_dockerd();
    assert!(!lab::cleanup::procs_in_cgroups_named(&id).is_empty());
    lab.finish();
    assert!(lab::cleanup::procs_in_cgroups_named(&id).is_empty());
}

/// dockerd restarts keep the host's runtime state: after a crash (SIGKILL) the new dockerd finds
/// the running containerd and container; `--live-restore` keeps containers across a clean restart.
#[test]
fn dockerd_crash_and_restart() {
    let mut lab = Lab::new(1);
    let h = lab.host_mut(0);
    h.start_dockerd_with(&["--live-restore"]);
    h.load_image();
    h.run(&["--name", "keep", "--network", "none", IMAGE, "sleep", "600"]);
    let pid = h.container_pid("keep");
    h.kill_dockerd();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    h.start_dockerd_with(&["--live-restore"]);
    assert_eq!(h.container_pid("keep"), pid, "{}", h.dockerd_log());
    h.restart_dockerd();
    assert_eq!(h.container_pid("keep"), pid, "{}", h.dockerd_log());
    lab.finish();
}
