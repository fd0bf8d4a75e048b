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

use pingora::protocols::{Stream, ALPN};
use pingora::proxy::Session;
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

mod head_end;
mod stream;
#[cfg(test)]
mod tests;

use self::head_end::HeadEnd;
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
