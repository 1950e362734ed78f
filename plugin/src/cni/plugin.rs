//! The CNI plugin binary: `oncache` run by a runtime with `CNI_COMMAND` set. Thin: VERSION is
//! answered here (runtimes call it for every plugin when they load a network; no daemon
//! needed), everything else goes to the daemon (`Oncache.Cni`) which owns state and links.
//! Results and errors go to stdout as the spec says; DEL always exits 0 (a DEL the daemon does
//! not take is queued in `<stateDir>/cni-queue/` for its next start).

use super::spec::{self, Error as CniError};
use crate::control::{self, CniReply, CniRequest};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Larger configurations are refused unread (a conflist entry is a few hundred bytes).
const MAX_CONFIG: u64 = 1 << 20;
/// How long a call may take (the daemon may be finishing its start-up).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

/// Runs one CNI command from the environment and stdin; returns the exit code.
pub fn run() -> i32 {
    let command = env("CNI_COMMAND");
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_CONFIG + 1).read_to_end(&mut stdin) {
        return fail(&command, "", CniError::new(spec::IO_FAILURE, format!("reading the network configuration from stdin: {e}")));
    }
    if stdin.len() as u64 > MAX_CONFIG {
        return fail(&command, "", CniError::new(spec::DECODE_FAILURE, format!("network configuration larger than {MAX_CONFIG} bytes")));
    }
    let config: Result<serde_json::Value, _> = serde_json::from_slice(&stdin);
    let version = config.as_ref().ok().and_then(|c| c.get("cniVersion")?.as_str().map(String::from)).unwrap_or_default();
    match command.as_str() {
        "VERSION" => {
            println!("{}", spec::version_info(Some(&version)));
            0
        }
        "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" => {
            let config = match config {
                Ok(c) if c.is_object() => c,
                Ok(_) => return fail(&command, &version, CniError::new(spec::DECODE_FAILURE, "the network configuration on stdin is not a JSON object")),
                Err(e) if command == "DEL" => {
                    // Still enough to find the links: the container ID and interface name.
                    eprintln!("oncache: DEL: the network configuration on stdin is not JSON ({e}); using the default socket and state dir");
                    serde_json::json!({})
                }
                Err(e) => return fail(&command, &version, CniError::new(spec::DECODE_FAILURE, format!("decoding the network configuration on stdin: {e}"))),
            };
            if command != "DEL" && !spec::SUPPORTED.contains(&version.as_str()) {
                let e = CniError::new(
                    spec::INCOMPATIBLE_VERSION,
                    format!("cniVersion {version:?} is not supported (oncache speaks {})", spec::SUPPORTED.join(", ")),
                );
                return fail(&command, &version, e);
            }
            forward(&command, &version, config)
        }
        "" => fail(&command, &version, CniError::new(spec::INVALID_ENV, "CNI_COMMAND is not set")),
        other => fail(&command, &version, CniError::new(spec::INVALID_ENV, format!("unknown CNI_COMMAND {other:?} (ADD, DEL, CHECK, STATUS, GC, VERSION)"))),
    }
}

/// Prints a CNI error on stdout; DEL still exits 0.
fn fail(command: &str, version: &str, e: CniError) -> i32 {
    if command == "DEL" {
        eprintln!("oncache: DEL: {} (code {}); exiting 0 as DEL must", e.msg, e.code);
        return 0;
    }
    println!("{}", serde_json::to_string(&e.versioned(version)).expect("serializes"));
    1
}

fn forward(command: &str, version: &str, config: serde_json::Value) -> i32 {
    let str_of = |k: &str| config.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(String::from);
    let socket = crate::client::daemon_socket(Path::new(&str_of("socket").unwrap_or_else(|| crate::DEFAULT_SOCKET.into())));
    let state_dir = PathBuf::from(str_of("stateDir").unwrap_or_else(|| super::DEFAULT_STATE_DIR.into()));
    let mut req = CniRequest {
        command: command.to_string(),
        container_id: env("CNI_CONTAINERID"),
        netns: env("CNI_NETNS"),
        netns_fd: None,
        ifname: env("CNI_IFNAME"),
        args: env("CNI_ARGS"),
        config,
        queued_at: None,
    };
    if command == "DEL" && (req.container_id.is_empty() || req.ifname.is_empty()) {
        return fail(command, version, CniError::new(spec::INVALID_ENV, "CNI_CONTAINERID and CNI_IFNAME must be set: nothing to delete"));
    }
    // Held open until the daemon has answered: it enters the namespace through this descriptor.
    let mut _netns = None;
    if matches!(command, "ADD" | "CHECK") {
        if req.netns.is_empty() {
            return fail(command, version, CniError::new(spec::INVALID_ENV, "CNI_NETNS is not set"));
        }
        match std::fs::File::open(&req.netns) {
            Ok(f) => {
                req.netns_fd = Some(f.as_raw_fd());
                _netns = Some(f);
            }
            Err(e) => return fail(command, version, CniError::new(spec::INVALID_ENV, format!("CNI_NETNS {}: {e}", req.netns))),
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(command, version, CniError::new(spec::IO_FAILURE, format!("starting: {e}"))),
    };
    let body = serde_json::to_vec(&req).expect("serializes");
    let outcome = rt.block_on(async {
        let stream = match tokio::net::UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(e) => return Err(format!("the oncache daemon does not answer at {}: {e}", socket.display())),
        };
        match tokio::time::timeout(CALL_TIMEOUT, crate::client::post_on(stream, control::CNI, body)).await {
            // A daemon without the CNI front end (older) or one that could not decode the call
            // answers {"Err"} with a failure status.
            Ok(Ok((status, bytes))) if !status.is_success() => {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let err = v.get("Err").and_then(|e| e.as_str()).map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), String::from);
                Ok(Err(format!("the oncache daemon at {} refused the call ({status}): {err}", socket.display())))
            }
            Ok(Ok((_, bytes))) => Ok(serde_json::from_slice::<CniReply>(&bytes)
                .map_err(|e| format!("unreadable answer from the daemon: {e}: {}", String::from_utf8_lossy(&bytes)))),
            Ok(Err(e)) => Ok(Err(format!("calling the oncache daemon at {}: {e:#}", socket.display()))),
            Err(_) => Ok(Err(format!("the oncache daemon at {} did not answer within {CALL_TIMEOUT:?}", socket.display()))),
        }
    });
    let reply = match outcome {
        Err(down) => {
            return match command {
                "DEL" => queue(&state_dir, &req, &down),
                "STATUS" => fail(command, version, CniError::new(spec::NOT_AVAILABLE, down)),
                _ => fail(command, version, CniError::new(spec::TRY_AGAIN_LATER, down).details("start the oncache daemon (systemctl start oncache)")),
            };
        }
        Ok(Err(why)) if command == "DEL" => return queue(&state_dir, &req, &why),
        Ok(Err(why)) => return fail(command, version, CniError::new(spec::FAILED, why)),
        Ok(Ok(r)) => r,
    };
    match (reply.error, reply.result) {
        (Some(e), _) if command == "DEL" => queue(&state_dir, &req, &e.msg),
        (Some(e), _) => fail(command, version, e),
        (None, Some(result)) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{result}");
            0
        }
        (None, None) if command == "ADD" => fail(command, version, CniError::new(spec::FAILED, "the oncache daemon answered ADD without a result")),
        (None, None) => 0,
    }
}

/// Queues a DEL the daemon did not take, for its next start; exits 0 either way.
fn queue(state_dir: &Path, req: &CniRequest, why: &str) -> i32 {
    let dir = super::queue_dir(state_dir);
    let id = crate::naming::cni_endpoint_id(&req.container_id, &req.ifname);
    let mut q = req.clone();
    q.netns_fd = None;
    q.queued_at = Some(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    let write = || -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{id}.json"));
        let tmp = dir.join(format!(".{id}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&q).expect("serializes"))?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    };
    match write() {
        Ok(path) => eprintln!("oncache: DEL: {why}; queued as {} for the daemon's next start", path.display()),
        Err(e) => eprintln!("oncache: DEL: {why}; and it could not be queued in {}: {e}", dir.display()),
    }
    0
}
