//! The HTTP layer: decodes a request, calls the driver, encodes the answer. Nothing else.
//!
//! dockerd POSTs `/Plugin.Activate`, `/NetworkDriver.<Call>` with a JSON body (empty for
//! argument-less calls) and no Content-Type. Every failure is answered with `{"Err": "..."}`,
//! a panic included (caught per request: a last resort, never the way errors are reported).

use crate::control;
use crate::driver::Driver;
use crate::inflight::{Calls, Plan};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use libnetwork_api::{activate, decode, driver as api, NETWORK_DRIVER};
use serde::Serialize;
use serde_json::Value;
use futures_util::FutureExt;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Mutex;

/// No legitimate request comes near this; anything larger is refused before parsing.
pub const MAX_BODY: usize = 1 << 20;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// What the server serves: the driver, whose calls are serialised (each one's store and
/// kernel changes finish before the next; tokio's lock is first come, first served), and the
/// answers that need no driver state, so that dockerd's handshake never waits behind a slow
/// call.
pub struct Plugin {
    pub driver: Mutex<Driver>,
    capabilities: api::CapabilitiesResponse,
    calls: Calls,
}

impl Plugin {
    pub fn new(driver: Driver) -> Shared {
        Arc::new(Plugin { capabilities: driver.capabilities(), calls: Calls::new(driver.store().clone()), driver: Mutex::new(driver) })
    }
}

pub type Shared = Arc<Plugin>;

struct Fault {
    status: StatusCode,
    msg: String,
}

impl Fault {
    fn bad(msg: impl Into<String>) -> Fault {
        Fault { status: StatusCode::BAD_REQUEST, msg: msg.into() }
    }
    fn failed(e: anyhow::Error) -> Fault {
        Fault { status: StatusCode::INTERNAL_SERVER_ERROR, msg: format!("{e:#}") }
    }
}

type Answer = Result<Value, Fault>;

fn json<T: Serialize>(v: T) -> Answer {
    Ok(serde_json::to_value(v).expect("responses always serialize"))
}

fn empty() -> Answer {
    Ok(Value::Object(Default::default()))
}

fn req<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Fault> {
    decode(body).map_err(Fault::bad)
}

/// Runs one call. `method` is the path without its leading slash; `peer` is the calling
/// process, when the connection tells (CNI calls pass a descriptor of theirs).
async fn dispatch(plugin: &Shared, method: &str, body: &[u8], peer: Option<u32>) -> Answer {
    match method {
        "Plugin.Activate" => return json(activate::ActivateResponse { implements: vec![NETWORK_DRIVER.into()] }),
        "NetworkDriver.GetCapabilities" => return json(&plugin.capabilities),
        _ => {}
    }
    let mut d = plugin.driver.lock().await;
    let failed = Fault::failed;
    match method {
        "NetworkDriver.CreateNetwork" => {
            d.create_network(&req::<api::CreateNetworkRequest>(body)?).await.map_err(failed)?;
            empty()
        }
        "NetworkDriver.DeleteNetwork" => {
            d.delete_network(&req::<api::DeleteNetworkRequest>(body)?.network_id).await.map_err(failed)?;
            empty()
        }
        "NetworkDriver.AllocateNetwork" => json(d.allocate_network(&req(body)?).map_err(failed)?),
        "NetworkDriver.FreeNetwork" => {
            d.free_network(&req::<api::FreeNetworkRequest>(body)?.network_id).map_err(failed)?;
            empty()
        }
        "NetworkDriver.CreateEndpoint" => json(d.create_endpoint(&req(body)?).await.map_err(failed)?),
        "NetworkDriver.EndpointOperInfo" => json(d.endpoint_oper_info(&req(body)?).await.map_err(failed)?),
        "NetworkDriver.DeleteEndpoint" => {
            d.delete_endpoint(&req::<api::DeleteEndpointRequest>(body)?.endpoint_id).await.map_err(failed)?;
            empty()
        }
        "NetworkDriver.Join" => json(d.join(&req(body)?).await.map_err(failed)?),
        "NetworkDriver.Leave" => {
            d.leave(&req(body)?).await.map_err(failed)?;
            empty()
        }
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            let new = method.ends_with("New");
            d.discover(&req(body)?, new).await.map_err(failed)?;
            empty()
        }
        // External connectivity is Docker's docker_gwbridge; port mappings live there too.
        "NetworkDriver.ProgramExternalConnectivity" => {
            req::<api::ProgramExternalConnectivityRequest>(body)?;
            empty()
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            req::<api::RevokeExternalConnectivityRequest>(body)?;
            empty()
        }
        control::PEER_ADD | control::PEER_REMOVE => {
            let r: control::PeerRequest = req(body)?;
            let ip = r.address.parse().map_err(|_| Fault::bad(format!("invalid peer address {:?}", r.address)))?;
            if method == control::PEER_ADD {
                d.add_peer(ip).await.map_err(failed)?;
            } else {
                d.remove_peer(ip).await.map_err(failed)?;
            }
            empty()
        }
        control::NETWORK_REMOVE => {
            let r: control::NetworkRemove = req(body)?;
            d.remove_network(&r.id, r.force).await.map_err(failed)?;
            empty()
        }
        // The CNI front end decodes and encodes CNI's own way (results, error codes).
        control::CNI => json(crate::cni::serve::handle(&mut d, &req(body)?, peer).await),
        control::PEER_LIST => json(control::PeerList { peers: d.peers().map_err(failed)? }),
        control::STATUS => json(d.status().await.map_err(failed)?),
        control::STATS => json(d.fast_stats().map_err(failed)?),
        control::CACHE_LIST => json(d.cache_list().map_err(failed)?),
        control::CACHE_FLUSH => json(control::Flushed { removed: d.cache_flush().map_err(failed)? }),
        _ => Err(Fault { status: StatusCode::NOT_FOUND, msg: format!("unknown method {method:?}") }),
    }
}

fn respond(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, CONTENT_TYPE.parse().expect("static header"));
    r
}

fn error(f: &Fault) -> Response<Full<Bytes>> {
    respond(f.status, &serde_json::to_value(api::ErrorResponse::new(f.msg.clone())).expect("serializes"))
}

fn too_large(method: &str) -> Fault {
    Fault { status: StatusCode::PAYLOAD_TOO_LARGE, msg: format!("{method}: request body exceeds {MAX_BODY} bytes") }
}

async fn handle(driver: Shared, r: Request<Incoming>, peer: Option<u32>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = r.uri().path().trim_start_matches('/').to_string();
    if r.method() != Method::POST {
        let f = Fault { status: StatusCode::METHOD_NOT_ALLOWED, msg: format!("{} {method}: only POST is served", r.method()) };
        return Ok(error(&f));
    }
    let declared = r.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Ok(error(&too_large(&method)));
    }
    let body = match tokio::time::timeout(READ_TIMEOUT, Limited::new(r.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let f = if e.is::<http_body_util::LengthLimitError>() {
                too_large(&method)
            } else {
                Fault::bad(format!("{method}: reading request body: {e}"))
            };
            return Ok(error(&f));
        }
        Err(_) => return Ok(error(&Fault::bad(format!("{method}: request body not received within {READ_TIMEOUT:?}")))),
    };
    log::debug!("{method} {}", String::from_utf8_lossy(&body));
    let (body, record) = match driver.calls.plan(&method, &body).await {
        Plan::Run(record) => (body, record),
        Plan::Replay(record, body) => (Bytes::from(body), Some(record)),
        Plan::Refuse(msg) => {
            log::warn!("{msg}");
            return Ok(error(&Fault::bad(msg)));
        }
    };
    // On a task of its own: a client that hangs up (dockerd gives up after its time-out) must
    // not cancel a call halfway between its store and kernel changes.
    let call = tokio::spawn(async move {
        let answer = answer_from(&driver, &method, &body, peer).await;
        if let Some(id) = record {
            driver.calls.done(id);
        }
        answer
    });
    Ok(call.await.unwrap_or_else(|e| error(&Fault::failed(anyhow::anyhow!("the call did not complete: {e}")))))
}

/// Dispatches one call and encodes its answer, whatever happens inside.
pub async fn answer(plugin: &Shared, method: &str, body: &[u8]) -> Response<Full<Bytes>> {
    answer_from(plugin, method, body, None).await
}

/// [`answer`] for a caller whose process is known (`peer`: its PID, from the socket).
pub async fn answer_from(plugin: &Shared, method: &str, body: &[u8], peer: Option<u32>) -> Response<Full<Bytes>> {
    let outcome = AssertUnwindSafe(dispatch(plugin, method, body, peer)).catch_unwind().await;
    match outcome {
        Ok(Ok(v)) => respond(StatusCode::OK, &v),
        Ok(Err(f)) => {
            log::warn!("{method} failed: {}", f.msg);
            error(&f)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("{method}: internal error (a bug in oncache, please report it): {what}");
            error(&Fault {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                msg: format!("{method}: internal error in oncache: {what}"),
            })
        }
    }
}

/// Serves HTTP/1.1 on one connection (any byte stream: the fuzz target feeds raw bytes).
pub async fn serve_connection<S>(stream: S, plugin: Shared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_from(stream, plugin, None).await
}

/// [`serve_connection`] for a connection whose peer process is known.
async fn serve_connection_from<S>(stream: S, plugin: Shared, peer: Option<u32>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |r| handle(plugin.clone(), r, peer));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        log::debug!("connection: {e}");
    }
}

/// Accepts connections until `shutdown` resolves.
pub async fn serve(listener: UnixListener, driver: Shared, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("accept: {e}");
                        continue;
                    }
                };
                // The kernel's word for who called (SO_PEERCRED), in this PID namespace.
                let peer = stream.peer_cred().ok().and_then(|c| c.pid()).and_then(|p| u32::try_from(p).ok());
                tokio::spawn(serve_connection_from(stream, driver.clone(), peer));
            }
        }
    }
}
