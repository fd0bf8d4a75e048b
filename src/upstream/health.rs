//! Active health checks: Pingora's TCP and HTTP probes, each bounded by
//! `health_check.timeout`, run every `interval` by a background service. The first round
//! decides on one probe per server (a server down at start is never sent a viewer), later
//! rounds need `healthy_after` / `unhealthy_after` in a row to change a server's state.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::prelude::*;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Upstreams;
use crate::config::{CheckKind, HealthCheckSection, UpstreamSection};

/// A probe, with the thresholds of the first round and the later ones.
struct Probe {
    inner: Box<dyn HealthCheck + Send + Sync>,
    timeout: Duration,
    healthy_after: usize,
    unhealthy_after: usize,
    /// The first round is over: the configured thresholds apply.
    settled: Arc<AtomicBool>,
}

/// The probe for `hc`; `settled` is [`Upstreams`]' first-round flag, which
/// [`HealthChecks`] sets after the first round.
pub(super) fn probe(
    c: &UpstreamSection,
    hc: &HealthCheckSection,
    settled: Arc<AtomicBool>,
) -> Box<dyn HealthCheck + Send + Sync> {
    let sni = c.tls_name();
    let inner: Box<dyn HealthCheck + Send + Sync> = match hc.kind {
        CheckKind::Tcp => {
            let mut t = match (&sni, c.tls) {
                (Some(name), true) => TcpHealthCheck::new_tls(name),
                _ => TcpHealthCheck::new(),
            };
            t.peer_template.options.connection_timeout = Some(hc.timeout);
            t.peer_template.options.verify_cert = c.verify;
            t.peer_template.options.verify_hostname = c.verify;
            if let Some(ca) = &c.ca_file {
                t.set_connector(pingora::connectors::TransportConnector::new(Some(
                    connector_options(ca),
                )));
            }
            t
        }
        CheckKind::Http => {
            let host = c
                .host
                .clone()
                .or_else(|| sni.clone())
                .unwrap_or_else(|| "localhost".into());
            let mut h = HttpHealthCheck::new(&host, c.tls);
            if let Some(name) = &sni {
                h.peer_template.sni = name.clone();
            }
            h.peer_template.options.connection_timeout = Some(hc.timeout);
            h.peer_template.options.read_timeout = Some(hc.timeout);
            h.peer_template.options.write_timeout = Some(hc.timeout);
            h.peer_template.options.verify_cert = c.verify;
            h.peer_template.options.verify_hostname = c.verify;
            if let Ok(mut req) = RequestHeader::build("GET", hc.path.as_bytes(), None) {
                let _ = req.append_header("Host", &host);
                let _ = req.append_header("User-Agent", "streamgate-health-check");
                h.req = req;
            }
            let expect = hc.expect_status;
            h.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expect {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected status", resp.status.as_u16()),
                        "health check",
                    )
                }
            }));
            if let Some(ca) = &c.ca_file {
                h.set_connector(pingora::connectors::http::Connector::new(Some(
                    connector_options(ca),
                )));
            }
            Box::new(h)
        }
    };
    Box::new(Probe {
        inner,
        timeout: hc.timeout,
        healthy_after: hc.healthy_after as usize,
        unhealthy_after: hc.unhealthy_after as usize,
        settled,
    })
}

fn connector_options(ca: &std::path::Path) -> pingora::connectors::ConnectorOptions {
    let mut o = pingora::connectors::ConnectorOptions::new(1);
    o.ca_file = Some(ca.display().to_string());
    o
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.inner.check(target)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(ErrorType::ConnectTimedout, "health check timed out"),
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("upstream {}", target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if !self.settled.load(Relaxed) {
            1
        } else if success {
            self.healthy_after
        } else {
            self.unhealthy_after
        }
    }
}

/// The background service that runs the checks.
pub struct HealthChecks {
    upstreams: Arc<Upstreams>,
}

impl HealthChecks {
    /// `None` without `[upstream.health_check]`.
    pub fn new(upstreams: &Arc<Upstreams>) -> Option<Self> {
        upstreams.check.as_ref()?;
        Some(Self {
            upstreams: upstreams.clone(),
        })
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let u = &self.upstreams;
        let Some(hc) = &u.check else { return };
        let mut tick = tokio::time::interval(hc.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_healthy: Vec<bool> = (0..u.servers.len()).map(|i| u.healthy(i)).collect();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = u.pick.backends().run_health_check(true) => {}
            }
            // A server the checks see come back is let in at once, even if it was ejected
            // while it was down (as Envoy's outlier detection does by default).
            for (i, was) in was_healthy.iter_mut().enumerate() {
                let now = u.healthy(i);
                if now && !*was {
                    u.servers[i].ejected_until.store(0, Relaxed);
                    u.servers[i].failures.store(0, Relaxed);
                }
                *was = now;
            }
            if !u.checked.swap(true, Relaxed) {
                let now = u.now_ms();
                let up = (0..u.servers.len()).filter(|&i| u.usable(i, now)).count();
                log::info!(
                    "upstream health checks: first round done, {up} of {} servers healthy",
                    u.servers.len()
                );
            }
        }
    }
}
