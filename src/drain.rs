//! Stopping without cutting a stream: when a stopping process may exit.
//!
//! Pingora, told to stop, closes its listeners, sleeps a fixed `grace_period_seconds`, then
//! shuts its runtimes down, and tokio drops every task still running at its next `.await`:
//! a segment half sent is cut, however long `graceful_shutdown_timeout_seconds` says. So
//! streamgate counts the requests it is serving ([`Drain::enter`], held by each request's
//! context), hands Pingora `graceful_shutdown_timeout` as its sleep, and a watcher thread
//! ([`exit_when_drained`]) ends the process as soon as nothing is in flight. On `SIGTERM`
//! the listeners first keep accepting for `grace_period` while `/ready` answers `503
//! draining` and answers close their connections, as HAProxy's `grace` does, so a load
//! balancer takes the instance out before it stops accepting (docs/reliability.md#stopping).
//!
//! A connection accepted just before the listeners close may not have sent its request
//! head yet; Pingora drops such connections when the service's `cleanup` runs, so
//! [`Draining`] holds `cleanup` back for [`FIRST_REQUEST_WAIT`] and they are served too.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{info, warn};
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

use crate::access_log::AccessLog;
use crate::head_limits::HeadLimits;
use crate::reload::Reloader;

/// How long a connection accepted just before the listeners closed gets to send its
/// request head (at most half the drain time).
pub const FIRST_REQUEST_WAIT: Duration = Duration::from_millis(500);

/// How often the watcher looks at the count while draining.
const POLL: Duration = Duration::from_millis(5);

/// The proxy's requests in flight, and whether a stop has begun.
#[derive(Debug)]
pub struct Drain {
    in_flight: AtomicUsize,
    draining: AtomicBool,
    /// `server.grace_period`: accepting on after `SIGTERM`.
    grace: Duration,
    /// `server.graceful_shutdown_timeout`: the longest wait for requests in flight.
    timeout: Duration,
}

/// One request in flight; dropping it (with the request's context) counts it out.
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    pub fn new(grace: Duration, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            grace,
            timeout,
        })
    }

    /// Count a request in until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A `SIGTERM` came: `/ready` fails and answers close their connections.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The wait for late first requests, within the drain time.
    fn first_request_wait(&self) -> Duration {
        FIRST_REQUEST_WAIT.min(self.timeout / 2)
    }

    /// Wait until nothing is in flight or `until` passes; whether it drained.
    fn wait_drained(&self, until: Instant) -> bool {
        loop {
            if self.in_flight() == 0 {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The proxy service's app, with Pingora's `cleanup` (which drops connections that have
/// not sent a request head yet) held back for [`FIRST_REQUEST_WAIT`].
///
/// It is also where each connection's stream gets its [`HeadLimits`] guard, the one place
/// a connection passes through before Pingora reads from it.
pub struct Draining<A> {
    inner: Arc<A>,
    drain: Arc<Drain>,
    heads: Arc<HeadLimits>,
}

impl<A> Draining<A> {
    pub fn new(inner: A, drain: Arc<Drain>, heads: Arc<HeadLimits>) -> Self {
        Self {
            inner: Arc::new(inner),
            drain,
            heads,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Draining<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .process_new(self.heads.guard(session), shutdown)
            .await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.drain.first_request_wait()).await;
        self.inner.cleanup().await;
    }
}

/// The signals streamgate acts on, in place of Pingora's own watcher (which lets every
/// other signal kill the process with its default action).
///
/// - `SIGINT`: stop at once.
/// - `SIGTERM`: drain, then stop: accept for `grace_period` while `/ready` fails, then
///   close the listeners and serve what is in flight.
/// - `SIGQUIT`: hand the listeners to a new process (`--upgrade`), then drain.
/// - `SIGHUP`: reload the config file (what can change live; see [`crate::reload`]).
/// - `SIGUSR1`: reopen the access log file (after logrotate moved it).
/// - `SIGUSR2`: logged and ignored.
pub struct Signals {
    drain: Arc<Drain>,
    access_log: AccessLog,
    reloader: Arc<Reloader>,
}

impl Signals {
    pub fn new(drain: Arc<Drain>, access_log: AccessLog, reloader: Arc<Reloader>) -> Self {
        Self {
            drain,
            access_log,
            reloader,
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let listen = |kind| signal(kind).map_err(|e| warn!("cannot watch a signal: {e}"));
        let (Ok(mut int), Ok(mut term), Ok(mut quit), Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) = (
            listen(SignalKind::interrupt()),
            listen(SignalKind::terminate()),
            listen(SignalKind::quit()),
            listen(SignalKind::hangup()),
            listen(SignalKind::user_defined1()),
            listen(SignalKind::user_defined2()),
        ) else {
            // Without handlers the default actions stay: still a working server.
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {
                    info!("SIGINT: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = quit.recv() => {
                    info!("SIGQUIT: handing the listeners over, then draining");
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = term.recv() => break,
                _ = hup.recv() => {
                    self.reloader.reload();
                }
                _ = usr1.recv() => {
                    info!("SIGUSR1: reopening the access log");
                    self.access_log.reopen();
                }
                _ = usr2.recv() => info!("SIGUSR2 ignored"),
            }
        }
        self.drain.draining.store(true, Ordering::Relaxed);
        info!(
            "SIGTERM: draining; accepting for {:?} more, then serving what is in flight for up to {:?}",
            self.drain.grace, self.drain.timeout
        );
        tokio::select! {
            _ = tokio::time::sleep(self.drain.grace) => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => {
                info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// Start the thread that ends the process once a graceful stop has drained: after the
/// listeners closed, nothing in flight. Past `graceful_shutdown_timeout` Pingora cuts what
/// is left, and this thread says how much.
pub fn exit_when_drained(
    drain: Arc<Drain>,
    mut phases: broadcast::Receiver<ExecutionPhase>,
    access_log: AccessLog,
) {
    let watch = move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        let closed = Instant::now();
        // Requests whose head comes within the wait are counted before the count is read.
        std::thread::sleep(drain.first_request_wait() + POLL);
        if drain.wait_drained(closed + drain.timeout) {
            info!(
                "drained in {:?}: nothing in flight, exiting",
                closed.elapsed()
            );
            access_log.flush(Duration::from_secs(1));
            std::process::exit(0);
        }
        warn!(
            "{} requests still in flight after graceful_shutdown_timeout ({:?}): they are cut",
            drain.in_flight(),
            drain.timeout
        );
    };
    if let Err(e) = std::thread::Builder::new()
        .name("drain".into())
        .spawn(watch)
    {
        warn!(
            "cannot start the drain watcher ({e}): stops wait the whole graceful_shutdown_timeout"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_until_their_guard_drops() {
        let drain = Drain::new(Duration::ZERO, Duration::from_secs(1));
        let a = drain.enter();
        let b = drain.enter();
        assert_eq!(drain.in_flight(), 2);
        drop(a);
        assert_eq!(drain.in_flight(), 1);
        assert!(!drain.wait_drained(Instant::now()));
        drop(b);
        assert!(drain.wait_drained(Instant::now()));
    }

    #[test]
    fn the_first_request_wait_fits_in_the_drain_time() {
        let short = Drain::new(Duration::ZERO, Duration::from_millis(200));
        assert_eq!(short.first_request_wait(), Duration::from_millis(100));
        let long = Drain::new(Duration::ZERO, Duration::from_secs(30));
        assert_eq!(long.first_request_wait(), FIRST_REQUEST_WAIT);
    }
}
