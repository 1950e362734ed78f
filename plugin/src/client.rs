//! HTTP over unix sockets for the CLI: the daemon's control API (and anything else that speaks
//! it), and the few Docker Engine API reads the CLI needs.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};

/// One request on a fresh connection; returns the status and the body.
async fn exchange(socket: &Path, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    exchange_on(stream, req).await
}

/// `POST /<method>` with a JSON body on a connection the caller made (so that it can tell a
/// daemon that is not there from one that failed); returns the status and the body.
pub async fn post_on(stream: tokio::net::UnixStream, method: &str, body: Vec<u8>) -> Result<(StatusCode, Bytes)> {
    let req = Request::post(format!("/{method}")).header("Host", "oncache").body(Full::new(Bytes::from(body)))?;
    exchange_on(stream, req).await
}

async fn exchange_on(stream: tokio::net::UnixStream, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// The daemon's socket: `socket` itself, except that when that is the default and nothing is
/// there, the managed plugin's (Docker serves it at /run/docker/plugins/<plugin id>/).
pub fn daemon_socket(socket: &Path) -> PathBuf {
    resolve(socket, Path::new(crate::DEFAULT_SOCKET))
}

fn resolve(socket: &Path, default: &Path) -> PathBuf {
    if socket != default || socket.exists() {
        return socket.to_path_buf();
    }
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let name = socket.file_name().unwrap_or_default();
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(name))
        .filter(|p| p.exists())
        .collect();
    match &found[..] {
        [one] => one.clone(),
        _ => socket.to_path_buf(),
    }
}

/// Calls the oncache daemon: `POST /<method>` with `body` as JSON.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(socket: &Path, method: &str, body: &Req) -> Result<Resp> {
    let socket = &daemon_socket(socket);
    let req = Request::post(format!("/{method}"))
        .header("Host", "oncache")
        .body(Full::new(Bytes::from(match serde_json::to_value(body)? {
            // Argument-less calls carry an empty body, as dockerd's do.
            serde_json::Value::Null => Vec::new(),
            v => serde_json::to_vec(&v)?,
        })))?;
    let (status, bytes) = exchange(socket, req)
        .await
        .with_context(|| format!("connecting to the oncache daemon at {} (is it running?)", socket.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("{method}: unreadable answer ({status}): {e}"))?;
    if let Some(err) = v.get("Err").and_then(|e| e.as_str()).filter(|e| !e.is_empty()) {
        bail!("{err}");
    }
    if !status.is_success() {
        bail!("{method}: HTTP {status}");
    }
    Ok(serde_json::from_value(v)?)
}

/// The Docker Engine socket named by `DOCKER_HOST` (`unix://PATH`), else the default one.
pub fn docker_socket() -> Result<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => match h.strip_prefix("unix://") {
            Some(p) => Ok(PathBuf::from(p)),
            None => bail!("DOCKER_HOST={h}: only unix:// sockets are supported"),
        },
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

/// `GET path` on the Docker Engine API.
pub async fn docker_get<Resp: DeserializeOwned>(socket: &Path, path: &str) -> Result<Resp> {
    let req = Request::get(path).header("Host", "docker").body(Full::new(Bytes::new()))?;
    let (status, bytes) = exchange(socket, req)
        .await
        .with_context(|| format!("connecting to dockerd at {} (is it running? set DOCKER_HOST)", socket.display()))?;
    if !status.is_success() {
        bail!("dockerd: GET {path}: HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim());
    }
    serde_json::from_slice(&bytes).with_context(|| format!("dockerd: GET {path}: unreadable answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_managed_plugins_socket_is_found_when_the_default_is_absent() {
        let d = tempfile::tempdir().unwrap();
        let default = d.path().join("oncache.sock");
        assert_eq!(resolve(&default, &default), default, "nothing anywhere: the default");
        std::fs::create_dir(d.path().join("0123abcd")).unwrap();
        let managed = d.path().join("0123abcd/oncache.sock");
        std::fs::write(&managed, "").unwrap();
        assert_eq!(resolve(&default, &default), managed);
        let other = d.path().join("elsewhere.sock");
        assert_eq!(resolve(&other, &default), other, "an explicit --socket is kept");
        std::fs::write(&default, "").unwrap();
        assert_eq!(resolve(&default, &default), default, "the service's socket first");
    }
}
