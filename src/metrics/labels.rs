//! The label values the metrics are kept under: one enum per label, each listing its
//! variants in declaration order so handles can be indexed by the variant itself.

use crate::manifest::Kind;
use crate::routing::Route;

/// Store operations, the label values of the store-latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Open,
    Renew,
    End,
    Ping,
}

impl StoreOp {
    pub(super) const ALL: [StoreOp; 4] =
        [StoreOp::Open, StoreOp::Renew, StoreOp::End, StoreOp::Ping];

    pub fn label(self) -> &'static str {
        match self {
            StoreOp::Open => "open",
            StoreOp::Renew => "renew",
            StoreOp::End => "end",
            StoreOp::Ping => "ping",
        }
    }
}

pub(super) const ROUTES: [Route; 4] = [Route::Health, Route::Ready, Route::Watch, Route::Other];
pub(super) const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
pub(super) const DECISIONS: [Decision; 14] = [
    Decision::Admitted,
    Decision::Renewed,
    Decision::Rejected,
    Decision::Ended,
    Decision::FailOpen,
    Decision::Resumed,
    Decision::Busy,
    Decision::Evicted,
    Decision::CooldownRefused,
    Decision::Gone,
    Decision::WouldRefuse,
    Decision::WouldEvict,
    Decision::Blocked,
    Decision::Replaced,
];
pub(super) const MANIFEST_KINDS: [Kind; 2] = [Kind::Hls, Kind::Dash];

/// The `plan` label of users under no configured plan.
pub const DEFAULT_PLAN: &str = "default";

/// Stream decisions, the label values of `streamgate_stream_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admitted,
    Renewed,
    Rejected,
    Ended,
    /// Admitted although the store failed (`on_store_error = "allow"`).
    FailOpen,
    /// A stream whose lease had run out, opened again under its own id.
    Resumed,
    /// Refused `429 stream_busy`: the stream had the most requests in flight allowed.
    Busy,
    /// Admitted in the place of another of the user's streams (`streams.on_limit`).
    Evicted,
    /// Refused at the limit during the cooldown after an eviction.
    CooldownRefused,
    /// Refused `410`: the stream was evicted or ended for good.
    Gone,
    /// Dry run: admitted, though the limit would have refused it.
    WouldRefuse,
    /// Dry run: admitted, though the limit would have evicted another stream for it.
    WouldEvict,
    /// Refused `403 user_blocked` (the admin API's block).
    Blocked,
    /// Admitted in the place of the stream its device held (`streams.device_header`).
    Replaced,
}

impl Decision {
    pub fn label(self) -> &'static str {
        match self {
            Decision::Admitted => "admitted",
            Decision::Renewed => "renewed",
            Decision::Rejected => "rejected",
            Decision::Ended => "ended",
            Decision::FailOpen => "fail_open",
            Decision::Resumed => "resumed",
            Decision::Busy => "busy",
            Decision::Evicted => "evicted",
            Decision::CooldownRefused => "cooldown_refused",
            Decision::Gone => "gone",
            Decision::WouldRefuse => "would_refuse",
            Decision::WouldEvict => "would_evict",
            Decision::Blocked => "blocked",
            Decision::Replaced => "replaced",
        }
    }
}
