//! Raw bytes as one client connection's byte stream into `server::serve_connection` (requests,
//! pipelining, garbage), served by the real driver. After each input every network and peer is
//! removed, and no oncache link may be left.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oncache::server::{serve_connection, Shared};
use oncache_fuzz::{finding, reset_and_check, trace, with_testbed, PANIC_ANSWER};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// Per input; inputs normally take milliseconds. Hitting it is reported, not a finding.
const BOUND: Duration = Duration::from_secs(10);

/// The server's end of the connection. The client writes its bytes and closes its write half
/// at once; hyper, on reading EOF while a request is in flight, drops that request's handler
/// (the last request of every input would never reach the driver). So EOF reaches the server
/// only once it is idle: no driver call holds the lock, nothing was written since the last
/// look, and two looks in a row agree. That is a client that half-closes and waits for its
/// answers, as dockerd waits for each of its calls.
struct Server {
    io: DuplexStream,
    plugin: Shared,
    wrote: bool,
    quiet: u32,
}

impl AsyncRead for Server {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if !matches!(r, Poll::Ready(Ok(()))) || buf.filled().len() > before || buf.remaining() == 0 {
            return r;
        }
        let busy = self.plugin.driver.try_lock().is_err();
        if busy || std::mem::take(&mut self.wrote) {
            self.quiet = 0;
        } else {
            self.quiet += 1;
        }
        if self.quiet >= 2 {
            return Poll::Ready(Ok(()));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl AsyncWrite for Server {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, b);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        r
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, b);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fuzz_target!(|data: &[u8]| {
    with_testbed(|tb| {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let server = Server { io: server, plugin: tb.plugin.clone(), wrote: false, quiet: 0 };
        let out = tb.rt.block_on(async {
            let talk = async {
                let mut out = Vec::new();
                // The server may close early (a malformed request): then writing fails, fine.
                if client.write_all(data).await.is_ok() {
                    let _ = client.shutdown().await;
                }
                let _ = client.read_to_end(&mut out).await;
                out
            };
            let run = async { tokio::join!(serve_connection(server, tb.plugin.clone()), talk).1 };
            tokio::time::timeout(BOUND, run).await
        });
        let input = || format!("input ({} bytes): {:?}", data.len(), String::from_utf8_lossy(data));
        match out {
            Ok(out) => {
                if trace() {
                    eprintln!("{}\nanswers: {}", input(), String::from_utf8_lossy(&out));
                }
                let needle = PANIC_ANSWER.as_bytes();
                if out.windows(needle.len()).any(|w| w == needle) {
                    finding("a request panicked (caught by server::answer)", &format!("{}\nanswers: {}", input(), String::from_utf8_lossy(&out)));
                }
            }
            Err(_) => eprintln!("oncache-fuzz: connection not done within {BOUND:?}, dropped (not a finding): {}", input()),
        }
        reset_and_check(tb, input);
    })
});
