//! A tiny HTTP/1.1 client over a unix socket, written by hand so tests can also send requests
//! that a real client library would refuse to produce (malformed-request tests).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Default time a request may take (dockerd gives managed plugins 30 s).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(35);

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names as sent (compare case-insensitively, see [`HttpResponse::header`]).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.body_str()
            )
        })
    }
}

/// Send one request and read the response. `Host` and `Content-Length` are added unless given in
/// `headers`; `Connection: close` is always asked for.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        req.push_str("Host: plugin\r\n");
    }
    if !has("content-length") && !has("transfer-encoding") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);

    let deadline = Instant::now() + timeout;
    let mut s = connect(socket, timeout)?;
    s.write_all(&bytes)?;
    read_response(&mut s, deadline)
}

/// POST like dockerd does (no Content-Type, plugin Accept header). Returns (status, body).
pub fn try_post(socket: &Path, path: &str, body: &str) -> io::Result<(u16, String)> {
    let r = request(
        socket,
        "POST",
        path,
        &[("Accept", "application/vnd.docker.plugins.v1.2+json")],
        body.as_bytes(),
        HTTP_TIMEOUT,
    )?;
    Ok((r.status, r.body_str()))
}

/// [`try_post`] that panics on I/O errors (not on HTTP error statuses).
pub fn post(socket: &Path, path: &str, body: &str) -> (u16, String) {
    try_post(socket, path, body)
        .unwrap_or_else(|e| panic!("POST {path} to {}: {e}", socket.display()))
}

/// POST a JSON value, parse the JSON answer (panics if it is not JSON).
pub fn post_json(socket: &Path, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = post(socket, path, &body.to_string());
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("POST {path}: answer is not JSON ({e}): status {status} body {text:?}")
    });
    (status, v)
}

/// What came back for raw bytes.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub data: Vec<u8>,
    /// The server closed the connection (EOF) before the timeout.
    pub closed: bool,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
    /// Status code of the first response line, if the data starts with one.
    pub fn status(&self) -> Option<u16> {
        let t = self.text();
        let line = t.lines().next()?;
        let mut it = line.split_whitespace();
        if !it.next()?.starts_with("HTTP/") {
            return None;
        }
        it.next()?.parse().ok()
    }
}

/// Send arbitrary bytes; if `half_close`, shut down the write side afterwards. Read until EOF
/// or until `timeout`, whichever comes first.
pub fn raw_exchange(
    socket: &Path,
    bytes: &[u8],
    half_close: bool,
    timeout: Duration,
) -> io::Result<RawReply> {
    let deadline = Instant::now() + timeout;
    let mut s = connect(socket, timeout)?;
    s.write_all(bytes)?;
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(RawReply {
                data,
                closed: false,
            });
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(RawReply { data, closed: true }),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(RawReply {
                    data,
                    closed: false,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok(RawReply { data, closed: true })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn connect(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

fn read_some(s: &mut UnixStream, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "HTTP response timed out",
        ));
    }
    s.set_read_timeout(Some(left))?;
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP response timed out",
                ))
            }
            Err(e) => return Err(e),
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn read_response(s: &mut UnixStream, deadline: Instant) -> io::Result<HttpResponse> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if read_some(s, &mut buf, deadline)? == 0 {
            return Err(bad(format!(
                "connection closed before the end of the response head: {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let mut rest = buf[head_end + 4..].to_vec();

    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length: Option<usize> = resp.header("content-length").and_then(|v| v.parse().ok());
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    if chunked {
        // Decode chunks: SIZE[;ext]\r\nDATA\r\n ... 0\r\n[trailers]\r\n
        let mut body = Vec::new();
        let mut pos = 0usize;
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest[pos..], b"\r\n") {
                    break pos + i;
                }
                if read_some(s, &mut rest, deadline)? == 0 {
                    return Err(bad("connection closed inside a chunked body"));
                }
            };
            let size_txt = String::from_utf8_lossy(&rest[pos..line_end]).into_owned();
            let size_txt = size_txt.split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_txt, 16)
                .map_err(|_| bad(format!("bad chunk size {size_txt:?}")))?;
            pos = line_end + 2;
            if size == 0 {
                break;
            }
            while rest.len() < pos + size + 2 {
                if read_some(s, &mut rest, deadline)? == 0 {
                    return Err(bad("connection closed inside a chunk"));
                }
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        resp.body = body;
    } else if let Some(n) = length {
        while rest.len() < n {
            if read_some(s, &mut rest, deadline)? == 0 {
                return Err(bad(format!(
                    "connection closed after {} of {n} body bytes",
                    rest.len()
                )));
            }
        }
        rest.truncate(n);
        resp.body = rest;
    } else {
        // No length: the body runs to EOF (we asked for Connection: close).
        while read_some(s, &mut rest, deadline)? != 0 {}
        resp.body = rest;
    }
    Ok(resp)
}
