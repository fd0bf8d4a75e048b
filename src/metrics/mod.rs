//! What the proxy reports to Prometheus, as one struct of handles.
//!
//! Handles are registered against a [`Registry`] passed in (the process registry in
//! production, a fresh one per server in tests), never as statics, so two proxies in one
//! test binary do not share counters. [`MetricsApp`] serves the registry as Prometheus
//! text on the metrics listener.

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::manifest::Kind;
use crate::proxy::manifests::Outcome;
use crate::routing::Route;
use crate::store::{CutReason, LeaseCounters};

mod labels;
mod serve;
#[cfg(test)]
mod tests;

pub use self::labels::{Decision, StoreOp, DEFAULT_PLAN};
use self::labels::{DECISIONS, MANIFEST_KINDS, ROUTES, STATUS_CLASSES};
pub use self::serve::MetricsApp;

/// Label lookups hash and lock; the hot path uses handles resolved once, here.
#[derive(Clone)]
struct Handles {
    decisions: Vec<IntCounter>,
    requests: Vec<Vec<IntCounter>>,
    durations: Vec<prometheus::Histogram>,
    store_ops: Vec<prometheus::Histogram>,
    /// By kind, then outcome.
    manifests: Vec<Vec<IntCounter>>,
}

#[derive(Clone)]
pub struct Metrics {
    /// Live stream leases in the store (this instance's view).
    active_streams: IntGauge,
    /// Requests of a stream currently in flight through this instance.
    inflight_requests: IntGauge,
    /// Stream decisions by outcome (`admitted`, `renewed`, `rejected`, `ended`, `expired`, `fail_open`).
    decisions: IntCounterVec,
    /// Leases that ended by expiry (also counted as `decisions{outcome="expired"}`).
    expired: IntCounter,
    /// Requests by route (`watch`, `health`, `ready`, `other`) and status class (`2xx`...).
    requests: IntCounterVec,
    /// Request duration from request header to the end of the response, by route.
    request_duration: HistogramVec,
    /// Failures talking to the upstream, by kind (`connect`, `timeout`, `closed`, `status_5xx`...).
    upstream_errors: IntCounterVec,
    /// Store operation latency, by operation.
    store_latency: HistogramVec,
    /// Store failures, by kind (`timeout`, `unavailable`, `full`, `protocol`).
    store_errors: IntCounterVec,
    /// Opens refused from this instance's memory of a shared store's recent refusal
    /// (`store.refusal_cache`), without asking the store.
    cached_refusals: IntCounter,
    /// 1 while the store answered its last background health check (always 1 for the
    /// memory store).
    store_up: IntGauge,
    /// Access lines dropped because the writer fell behind (its queue was full).
    access_log_dropped: IntCounter,
    /// Request heads answered before any request was read, by reason (`too_large`,
    /// `timeout`, `malformed`, `connect`).
    refused_heads: IntCounterVec,
    /// Plan headers sent by clients outside `identity.trusted_proxies` (ignored, removed).
    untrusted_plan_headers: IntCounter,
    /// Responses cut mid-flight because their stream ended, by reason (`ended`, `evicted`).
    streams_cut: IntCounterVec,
    /// Opens `streams.shadow_limit` would have refused.
    shadow_refusals: IntCounter,
    /// Tokens by result (`verified`, `cached`, `refused`) and reason (`none`, `expired`...).
    auth: IntCounterVec,
    /// Admin API requests by action (`list`, `end`, `end_all`, `stats`, `other`) and status.
    admin: IntCounterVec,
    /// Manifests by kind (`hls`, `dash`) and outcome (`rewritten`, `too_large`, `unchanged`).
    manifests: IntCounterVec,
    handles: Handles,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let decisions = IntCounterVec::new(
            Opts::new(
                "streamgate_stream_decisions_total",
                "Stream decisions by outcome and the user's plan (configured names, default, \
                 unknown; none for expiries).",
            ),
            &["outcome", "plan"],
        )?;
        // The store that expires a lease does not know its user's plan: an empty label,
        // which Prometheus reads as none.
        let expired = decisions.with_label_values(&["expired", ""]);
        let m = Metrics {
            active_streams: IntGauge::new(
                "streamgate_active_streams",
                "Live stream leases in the store, as seen by this instance.",
            )?,
            inflight_requests: IntGauge::new(
                "streamgate_inflight_requests",
                "Stream requests in flight through this instance.",
            )?,
            decisions,
            expired,
            requests: IntCounterVec::new(
                Opts::new(
                    "streamgate_requests_total",
                    "Requests by route and status class.",
                ),
                &["route", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "streamgate_request_duration_seconds",
                    "Time from request to end of response, by route.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ]),
                &["route"],
            )?,
            upstream_errors: IntCounterVec::new(
                Opts::new(
                    "streamgate_upstream_errors_total",
                    "Upstream failures by kind.",
                ),
                &["kind"],
            )?,
            store_latency: HistogramVec::new(
                HistogramOpts::new(
                    "streamgate_store_operation_duration_seconds",
                    "Store operation latency, by operation.",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25,
                ]),
                &["op"],
            )?,
            store_errors: IntCounterVec::new(
                Opts::new("streamgate_store_errors_total", "Store failures by kind."),
                &["kind"],
            )?,
            refused_heads: IntCounterVec::new(
                Opts::new(
                    "streamgate_refused_request_heads_total",
                    "Request heads answered before a request was read (too large, too slow, unparsable, CONNECT).",
                ),
                &["reason"],
            )?,
            streams_cut: IntCounterVec::new(
                Opts::new(
                    "streamgate_streams_cut_total",
                    "Responses cut mid-flight because their stream was ended or evicted, by reason.",
                ),
                &["reason"],
            )?,
            shadow_refusals: IntCounter::new(
                "streamgate_shadow_refusals_total",
                "Opens streams.shadow_limit would have refused (only counted).",
            )?,
            untrusted_plan_headers: IntCounter::new(
                "streamgate_untrusted_plan_headers_total",
                "Plan headers from clients outside identity.trusted_proxies, ignored and removed.",
            )?,
            auth: IntCounterVec::new(
                Opts::new(
                    "streamgate_auth_total",
                    "Identity tokens by result (verified, cached, refused) and reason.",
                ),
                &["result", "reason"],
            )?,
            access_log_dropped: IntCounter::new(
                "streamgate_access_log_dropped_total",
                "Access lines dropped because the log writer's queue was full.",
            )?,
            store_up: IntGauge::new(
                "streamgate_store_up",
                "1 while the store answered its last background health check.",
            )?,
            cached_refusals: IntCounter::new(
                "streamgate_store_cached_refusals_total",
                "Opens refused from this instance's memory of a recent store refusal.",
            )?,
            admin: IntCounterVec::new(
                Opts::new(
                    "streamgate_admin_requests_total",
                    "Admin API requests by action and status.",
                ),
                &["action", "status"],
            )?,
            manifests: IntCounterVec::new(
                Opts::new(
                    "streamgate_manifests_total",
                    "Watch manifests by kind and what became of them.",
                ),
                &["kind", "outcome"],
            )?,
            handles: Handles {
                manifests: Vec::new(),
                decisions: Vec::new(),
                requests: Vec::new(),
                durations: Vec::new(),
                store_ops: Vec::new(),
            },
        };
        let mut m = m;
        m.handles = Handles {
            decisions: DECISIONS
                .iter()
                .map(|d| m.decisions.with_label_values(&[d.label(), DEFAULT_PLAN]))
                .collect(),
            requests: ROUTES
                .iter()
                .map(|r| {
                    STATUS_CLASSES
                        .iter()
                        .map(|c| m.requests.with_label_values(&[r.label(), c]))
                        .collect()
                })
                .collect(),
            durations: ROUTES
                .iter()
                .map(|r| m.request_duration.with_label_values(&[r.label()]))
                .collect(),
            store_ops: StoreOp::ALL
                .iter()
                .map(|o| m.store_latency.with_label_values(&[o.label()]))
                .collect(),
            manifests: MANIFEST_KINDS
                .iter()
                .map(|k| {
                    Outcome::ALL
                        .iter()
                        .map(|o| m.manifests.with_label_values(&[k.label(), o.label()]))
                        .collect()
                })
                .collect(),
        };
        registry.register(Box::new(m.active_streams.clone()))?;
        registry.register(Box::new(m.inflight_requests.clone()))?;
        registry.register(Box::new(m.decisions.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.store_latency.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.cached_refusals.clone()))?;
        registry.register(Box::new(m.store_up.clone()))?;
        registry.register(Box::new(m.access_log_dropped.clone()))?;
        registry.register(Box::new(m.refused_heads.clone()))?;
        registry.register(Box::new(m.auth.clone()))?;
        registry.register(Box::new(m.untrusted_plan_headers.clone()))?;
        registry.register(Box::new(m.streams_cut.clone()))?;
        registry.register(Box::new(m.shadow_refusals.clone()))?;
        registry.register(Box::new(m.manifests.clone()))?;
        registry.register(Box::new(m.admin.clone()))?;
        // Every series an alert or a dashboard rates exists from the start, at 0: a
        // series that appears with its first error hides that error from `rate()`.
        for kind in ["full", "timeout", "unavailable", "protocol", "auth"] {
            m.store_errors.with_label_values(&[kind]);
        }
        for kind in [
            "connect",
            "connect_timeout",
            "timeout",
            "closed",
            "other",
            "status_5xx",
        ] {
            m.upstream_errors.with_label_values(&[kind]);
        }
        for reason in ["too_large", "timeout", "malformed", "connect"] {
            m.refused_heads.with_label_values(&[reason]);
        }
        for why in [CutReason::Ended, CutReason::Evicted, CutReason::Replaced] {
            m.streams_cut.with_label_values(&[why.label()]);
        }
        Ok(m)
    }

    /// The gauge of requests in flight, which each lease hold moves.
    pub fn inflight_gauge(&self) -> IntGauge {
        self.inflight_requests.clone()
    }

    /// The counter the refusal cache moves (`streamgate_cached_refusals_total`).
    pub fn cached_refusals_counter(&self) -> IntCounter {
        self.cached_refusals.clone()
    }

    /// The gauge the store's health check sets (`streamgate_store_up`).
    pub fn store_up_gauge(&self) -> IntGauge {
        self.store_up.clone()
    }

    /// The counter the access log's writer moves when it drops a line.
    pub fn access_log_dropped_counter(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// The counters the request-head guard moves, by reason.
    pub fn refused_heads_counter(&self) -> IntCounterVec {
        self.refused_heads.clone()
    }

    /// The counters token verification moves (`streamgate_auth_total`).
    pub fn auth_counter(&self) -> IntCounterVec {
        self.auth.clone()
    }

    /// The admin API's request counters, and the gauges its stats read.
    pub fn admin_handles(&self) -> (IntCounterVec, crate::admin::Stats) {
        (
            self.admin.clone(),
            crate::admin::Stats {
                active_streams: self.active_streams.clone(),
                inflight_requests: self.inflight_requests.clone(),
            },
        )
    }

    /// A store failure, by its kind.
    pub fn store_error(&self, e: &crate::store::StoreError) {
        self.store_errors.with_label_values(&[e.kind()]).inc();
    }

    /// A failure talking to the upstream, by kind (`connect`, `timeout`, `status_5xx`...).
    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors.with_label_values(&[kind]).inc();
    }

    /// A plan header from a client outside `identity.trusted_proxies`.
    pub fn stream_cut(&self, why: crate::store::CutReason) {
        self.streams_cut.with_label_values(&[why.label()]).inc();
    }

    pub fn shadow_refusal(&self) {
        self.shadow_refusals.inc();
    }

    pub fn untrusted_plan_header(&self) {
        self.untrusted_plan_headers.inc();
    }

    /// The handles a store updates itself.
    pub fn lease_counters(&self) -> LeaseCounters {
        LeaseCounters {
            active: self.active_streams.clone(),
            expired: self.expired.clone(),
        }
    }

    /// Count a decision under the user's plan label (`None`: `default`, from a handle).
    pub fn decision(&self, d: Decision, plan: Option<&str>) {
        match plan {
            // Indexed by the variant itself: `DECISIONS` lists them in declaration order.
            None => self.handles.decisions[d as usize].inc(),
            Some(p) => self.decisions.with_label_values(&[d.label(), p]).inc(),
        }
    }

    pub fn request_done(&self, route: Route, status: u16, elapsed: Duration) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        let r = route as usize;
        self.handles.requests[r][class].inc();
        self.handles.durations[r].observe(elapsed.as_secs_f64());
    }

    pub fn manifest(&self, kind: Kind, outcome: Outcome) {
        let k = kind as usize;
        let o = outcome as usize;
        self.handles.manifests[k][o].inc();
    }

    pub fn store_op(&self, op: StoreOp, elapsed: Duration) {
        let i = op as usize;
        self.handles.store_ops[i].observe(elapsed.as_secs_f64());
    }
}
