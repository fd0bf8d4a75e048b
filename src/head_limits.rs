//! How big and how slow a request head may be, and what a client gets before any request.
//!
//! Pingora reads a request head into a buffer that may grow to 1 MiB, with only a per-read
//! timeout, and no `ProxyHttp` hook runs before the head is complete: 150 connections each
//! sending one never-ending header held ~1.1 MiB apiece for a minute (issue #16, item 15).
//! So every HTTP/1 connection's stream is wrapped in a [`HeadGuard`] (by
//! [`crate::drain::Draining`], the proxy service's app). While a request head is arriving,
//! the guard holds its bytes back from Pingora until the head's end (its blank line) has
//! come: past `server.max_request_head` bytes it answers `431`, and past
//! `server.request_head_timeout` (from the connection's opening for its first head, from a
//! head's first byte on a reused connection) `408`, then closes, as nginx does with
//! `large_client_header_buffers` and `client_header_timeout`. Pingora has then seen no byte
//! of the head, so it lets the connection go without an error line. A head that arrives
//! whole in one read (every player's) is handed on in place, without a copy.
//!
//! The guard also replaces the two answers Pingora writes before any hook runs, an empty
//! `400` for a head it cannot parse and `405` for `CONNECT`, both with `Server: Pingora`,
//! by the JSON [`Answer`]s. It tells them from the proxy's own answers by the marks the
//! proxy leaves on the connection ([`serving`] when a request reaches its hooks, [`idle`]
//! when it is logged): whatever is written while no request is being served is Pingora's.
//!
//! HTTP/2 connections are not wrapped: their frames are the `h2` crate's business, which
//! bounds a header block by its own settings.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::Session;
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::config::Config;
use crate::proxy::answer::Answer;

/// How long a refused connection keeps reading (and dropping) what the client still sends
/// after the answer, so the close does not reset the answer away before the client reads it
/// (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(1);
/// The most bytes read and dropped while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// The bounds on request heads, shared by every connection.
#[derive(Debug, Clone)]
pub struct HeadLimits {
    max_bytes: usize,
    timeout: Duration,
    refused: IntCounterVec,
}

impl HeadLimits {
    pub fn new(config: &Config, refused: IntCounterVec) -> Arc<Self> {
        Arc::new(Self {
            max_bytes: config.server.max_request_head,
            timeout: config.server.request_head_timeout,
            refused,
        })
    }

    /// The stream Pingora will serve: guarded, unless it speaks HTTP/2.
    pub fn guard(self: &Arc<Self>, stream: Stream) -> Stream {
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            return stream;
        }
        Box::new(HeadGuard::new(stream, self.clone()))
    }
}

/// The proxy's hooks reached a request on this connection: what is written now is theirs.
pub fn serving(session: &Session) {
    if let Some(g) = guard_of(session) {
        g.serving.store(true, Ordering::Release);
    }
}

/// The connection's request is done (logged): what comes next is a new head.
pub fn idle(session: &Session) {
    if let Some(g) = guard_of(session) {
        g.serving.store(false, Ordering::Release);
    }
}

fn guard_of(session: &Session) -> Option<&HeadGuard> {
    let stream = session.as_downstream().stream()?;
    (**stream).as_any().downcast_ref::<HeadGuard>()
}

/// Where the guard is in a connection's life.
#[derive(Debug)]
enum Phase {
    /// A request head is arriving: its bytes are held back until its end.
    Head,
    /// A whole head went to Pingora; the proxy's hooks have not marked it yet.
    Parsing,
    /// A request is being served, or its response finished: everything passes.
    Serving,
    /// Answering a head that broke a bound, then closing.
    Refusing(Refusal),
    /// Pingora's own answer is replaced by ours: its bytes are dropped.
    Replaced { wire: Vec<u8>, sent: usize },
}

/// Answering and closing a connection whose head broke a bound.
#[derive(Debug)]
struct Refusal {
    wire: Vec<u8>,
    sent: usize,
    step: Step,
    dropped: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Write,
    Flush,
    Close,
    Linger,
    Done,
}

/// Finds the end of a request head (the first empty line after a non-empty one; empty
/// lines before the request line are skipped, as `httparse` skips them), across reads.
#[derive(Debug, Default)]
struct HeadEnd {
    /// A non-empty line was seen.
    started: bool,
    /// Bytes since the last `\n`.
    line: usize,
    /// The last byte seen.
    last: u8,
}

impl HeadEnd {
    /// Feed the next bytes; where in them the head ends, if it does.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut from = 0;
        for i in memchr::memchr_iter(b'\n', bytes) {
            let len = self.line + (i - from);
            let before = if i > from { bytes[i - 1] } else { self.last };
            let empty = len == 0 || (len == 1 && before == b'\r');
            if !empty {
                self.started = true;
            } else if self.started {
                return Some(i + 1);
            }
            self.line = 0;
            from = i + 1;
        }
        self.line += bytes.len() - from;
        if let Some(&b) = bytes.last() {
            self.last = b;
        }
        None
    }
}

/// A client connection's stream, bounding its request heads (see the module docs).
pub struct HeadGuard {
    inner: Stream,
    limits: Arc<HeadLimits>,
    /// Set while the proxy's hooks serve a request of this connection.
    serving: AtomicBool,
    phase: Phase,
    /// The current head's end, as far as it has arrived.
    end: HeadEnd,
    /// Bytes of the current head seen so far.
    seen: usize,
    /// Bytes held back from Pingora, and how many of them it has been handed since.
    held: Vec<u8>,
    handed: usize,
    /// The connection has served no request yet (its first head's clock started at accept).
    first: bool,
    /// When the current head must be complete; armed once a read of it would wait.
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for HeadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadGuard")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .field("seen", &self.seen)
            .finish()
    }
}

impl HeadGuard {
    fn new(inner: Stream, limits: Arc<HeadLimits>) -> Self {
        let deadline = Some(Instant::now() + limits.timeout);
        Self {
            inner,
            limits,
            serving: AtomicBool::new(false),
            phase: Phase::Head,
            end: HeadEnd::default(),
            seen: 0,
            held: Vec::new(),
            handed: 0,
            first: true,
            deadline,
            timer: None,
        }
    }

    /// Follow the proxy's marks: a request reached the hooks, or the last one is done.
    fn sync(&mut self) {
        let serving = self.serving.load(Ordering::Acquire);
        match self.phase {
            Phase::Head | Phase::Parsing if serving => self.phase = Phase::Serving,
            _ => {}
        }
    }

    /// A new head begins (a reused connection's next request).
    fn next_head(&mut self) {
        self.phase = Phase::Head;
        self.end = HeadEnd::default();
        self.seen = 0;
        self.first = false;
        self.deadline = None;
    }

    fn refuse(&mut self, answer: Answer, reason: &str) {
        self.limits.refused.with_label_values(&[reason]).inc();
        self.held = Vec::new();
        self.handed = 0;
        self.phase = Phase::Refusing(Refusal {
            wire: answer.to_wire(),
            sent: 0,
            step: Step::Write,
            dropped: 0,
        });
    }

    /// Hand Pingora bytes held back, as many as fit.
    fn hand(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.held.len() - self.handed);
        out.put_slice(&self.held[self.handed..self.handed + n]);
        self.handed += n;
        if self.handed == self.held.len() {
            self.held = Vec::new();
            self.handed = 0;
        }
    }

    /// Whether the head's deadline passed (registering a wake-up for it if not).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// Read while a head is arriving.
    fn poll_head(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.seen == 0 && !out.filled().is_empty() {
            // Bytes Pingora kept from the last request (pipelined) begin this head.
            let kept = out.filled().len();
            if let Some(at) = self.end.feed(out.filled()) {
                self.phase = Phase::Parsing;
                self.seen = at;
                return Pin::new(&mut self.inner).poll_read(cx, out);
            }
            self.seen = kept;
        }
        loop {
            let before = out.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, out) {
                Poll::Pending => {
                    if self.deadline.is_none() && self.seen > 0 {
                        self.deadline = Some(Instant::now() + self.limits.timeout);
                    }
                    if self.timed_out(cx) {
                        self.refuse(Answer::HeadTimeout, "timeout");
                        return self.poll_refuse(cx, out);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let new = &out.filled()[before..];
            if new.is_empty() {
                // The client left mid-head (or before one): nothing for Pingora to parse.
                self.held = Vec::new();
                return Poll::Ready(Ok(()));
            }
            let ended = self.end.feed(new);
            let at = self.seen + ended.unwrap_or(new.len());
            if at > self.limits.max_bytes {
                out.set_filled(before);
                self.refuse(Answer::HeadTooLarge, "too_large");
                return self.poll_refuse(cx, out);
            }
            self.seen = at;
            if ended.is_some() {
                self.phase = Phase::Parsing;
                if self.held.is_empty() {
                    // The whole head came in this read: Pingora has it in place.
                    return Poll::Ready(Ok(()));
                }
                self.held.extend_from_slice(&out.filled()[before..]);
                out.set_filled(before);
                self.hand(out);
                return Poll::Ready(Ok(()));
            }
            // Unfinished: hold the bytes back, and read on.
            self.held.extend_from_slice(&out.filled()[before..]);
            out.set_filled(before);
            if self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.limits.timeout);
            }
        }
    }

    /// Answer, close, linger, then fail the read (quietly: Pingora saw no byte).
    fn poll_refuse(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let Phase::Refusing(r) = &mut self.phase else {
            return Poll::Ready(Err(io::ErrorKind::InvalidData.into()));
        };
        loop {
            match r.step {
                Step::Write => {
                    match ready!(Pin::new(&mut self.inner).poll_write(cx, &r.wire[r.sent..])) {
                        Ok(n) if n > 0 => {
                            r.sent += n;
                            if r.sent == r.wire.len() {
                                r.step = Step::Flush;
                            }
                        }
                        _ => r.step = Step::Done,
                    }
                }
                Step::Flush => {
                    let done = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                    r.step = if done.is_ok() {
                        Step::Close
                    } else {
                        Step::Done
                    };
                }
                Step::Close => {
                    let done = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
                    r.step = if done.is_ok() {
                        Step::Linger
                    } else {
                        Step::Done
                    };
                    self.deadline = Some(Instant::now() + LINGER);
                }
                Step::Linger => {
                    let before = out.filled().len();
                    let read = Pin::new(&mut self.inner).poll_read(cx, out);
                    let n = out.filled().len() - before;
                    out.set_filled(before);
                    match read {
                        Poll::Ready(Ok(())) if n > 0 && r.dropped + n <= LINGER_BYTES => {
                            r.dropped += n;
                        }
                        Poll::Pending => {
                            let Some(deadline) = self.deadline else {
                                return Poll::Pending;
                            };
                            let timer = self
                                .timer
                                .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
                            if timer.deadline() != deadline {
                                timer.as_mut().reset(deadline);
                            }
                            if timer.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            r.step = Step::Done;
                        }
                        _ => r.step = Step::Done,
                    }
                }
                Step::Done => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "request head refused",
                    )))
                }
            }
        }
    }

    /// Pingora writes before any hook ran: its own `400` or `405`. Send ours instead.
    fn replace(&mut self, buf: &[u8]) {
        let status = buf.get(9..12).unwrap_or_default();
        let (answer, reason) = if status == b"405" {
            (Answer::Connect, "connect")
        } else {
            (Answer::MalformedHead, "malformed")
        };
        self.limits.refused.with_label_values(&[reason]).inc();
        self.phase = Phase::Replaced {
            wire: answer.to_wire(),
            sent: 0,
        };
    }

    /// Write what is left of our replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Phase::Replaced { wire, sent } = &mut self.phase else {
            return Poll::Ready(Ok(()));
        };
        while *sent < wire.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &wire[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether a write is Pingora's own answer to a head no hook saw.
    fn is_pingoras(&self, buf: &[u8]) -> bool {
        matches!(self.phase, Phase::Head | Phase::Parsing) && buf.starts_with(b"HTTP/1.")
    }
}

impl AsyncRead for HeadGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.sync();
        if this.handed < this.held.len() {
            this.hand(out);
            return Poll::Ready(Ok(()));
        }
        if matches!(this.phase, Phase::Serving) && !this.serving.load(Ordering::Acquire) {
            // The last request is done and Pingora reads again: the next head.
            this.next_head();
        }
        match this.phase {
            Phase::Head => this.poll_head(cx, out),
            Phase::Refusing(_) => this.poll_refuse(cx, out),
            Phase::Parsing | Phase::Serving | Phase::Replaced { .. } => {
                Pin::new(&mut this.inner).poll_read(cx, out)
            }
        }
    }
}

impl AsyncWrite for HeadGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync();
        if this.is_pingoras(buf) {
            this.replace(buf);
        }
        if let Phase::Replaced { .. } = this.phase {
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync();
        let first = bufs.iter().find(|b| !b.is_empty());
        if first.is_some_and(|b| this.is_pingoras(b)) {
            this.replace(first.map(|b| &b[..]).unwrap_or_default());
        }
        if let Phase::Replaced { .. } = this.phase {
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadGuard {
    async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for HeadGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadGuard {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadGuard {
    /// Not offered: a peek would see bytes the guard holds back.
    async fn try_peek(&mut self, _buf: &mut [u8]) -> io::Result<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(chunks: &[&[u8]]) -> Option<(usize, usize)> {
        let mut e = HeadEnd::default();
        for (i, c) in chunks.iter().enumerate() {
            if let Some(at) = e.feed(c) {
                return Some((i, at));
            }
        }
        None
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line_in_any_spelling() {
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"]),
            Some((0, 27))
        );
        assert_eq!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some((0, 24)));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r"]), None);
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r", b"\n"]),
            Some((2, 1))
        );
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r\n"]),
            Some((1, 3))
        );
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\nX: a", b"b\r\n", b"\r\n"]),
            Some((2, 2))
        );
    }

    #[test]
    fn empty_lines_before_the_request_line_do_not_end_it() {
        assert_eq!(ends(&[b"\r\n\r\n\n"]), None);
        assert_eq!(ends(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]), Some((0, 22)));
        assert_eq!(
            ends(&[b"\r\n", b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]),
            Some((2, 18))
        );
    }

    #[test]
    fn a_lone_carriage_return_is_not_an_empty_line() {
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nX: \r\r\n"]), None);
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\n\r\r\n"]), None);
    }
}
