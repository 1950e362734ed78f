//! Calls the daemon's socket, for the CLI (and anything else that speaks the control API).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

pub async fn call<Req: Serialize, Resp: DeserializeOwned>(socket: &Path, method: &str, body: &Req) -> Result<Resp> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the oncache daemon at {} (is it running?)", socket.display()))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post(format!("/{method}"))
        .header("Host", "oncache")
        .body(Full::new(Bytes::from(match serde_json::to_value(body)? {
            // Argument-less calls carry an empty body, as dockerd's do.
            serde_json::Value::Null => Vec::new(),
            v => serde_json::to_vec(&v)?,
        })))?;
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
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
