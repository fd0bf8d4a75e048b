//! The `streamgate_upstream_*` metrics: per server, labelled `ip:port`.

use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use super::Upstreams;

pub(super) struct Families {
    pub(super) requests: IntCounterVec,
    pub(super) failures: IntCounterVec,
    pub(super) ejections: IntCounterVec,
    pub(super) moves: IntCounter,
    healthy: GaugeVec,
}

impl Families {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let f = Families {
            requests: IntCounterVec::new(
                Opts::new(
                    "streamgate_upstream_requests_total",
                    "Attempts sent to each content server (a retried request counts once per server).",
                ),
                &["upstream"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "streamgate_upstream_failures_total",
                    "Connect failures and 5xx answers, per content server (what passive ejection counts).",
                ),
                &["upstream", "kind"],
            )?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "streamgate_upstream_ejections_total",
                    "Times a content server was taken out for upstream.eject_for.",
                ),
                &["upstream"],
            )?,
            moves: IntCounter::new(
                "streamgate_upstream_selection_moves_total",
                "Requests sent to a server other than their first choice, because it was out.",
            )?,
            healthy: GaugeVec::new(
                Opts::new(
                    "streamgate_upstream_healthy",
                    "1 while a content server is usable (its health check passes and it is not ejected).",
                ),
                &["upstream"],
            )?,
        };
        registry.register(Box::new(f.requests.clone()))?;
        registry.register(Box::new(f.failures.clone()))?;
        registry.register(Box::new(f.ejections.clone()))?;
        registry.register(Box::new(f.moves.clone()))?;
        Ok(f)
    }
}

/// `streamgate_upstream_healthy`, computed when scraped (an ejection ends by time, not by
/// an event that could set a gauge).
struct Healthy {
    upstreams: Weak<Upstreams>,
    gauge: GaugeVec,
}

pub(super) fn register_health(
    registry: &Registry,
    upstreams: &Arc<Upstreams>,
    f: &Families,
) -> prometheus::Result<()> {
    registry.register(Box::new(Healthy {
        upstreams: Arc::downgrade(upstreams),
        gauge: f.healthy.clone(),
    }))
}

impl Collector for Healthy {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(u) = self.upstreams.upgrade() {
            let now = u.now_ms();
            for (i, s) in u.servers.iter().enumerate() {
                let v = if u.usable(i, now) { 1.0 } else { 0.0 };
                self.gauge.with_label_values(&[&s.label]).set(v);
            }
        }
        self.gauge.collect()
    }
}
