//! What the proxy knows about one request, from `new_ctx` to `logging`: who, which stream,
//! what was decided, and what the response must carry.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue};

use super::manifests;
use crate::drain::InFlight;
use crate::identity::{StreamId, Via};
use crate::inflight::Slot;
use crate::lease::LeaseHold;
use crate::manifest::Kind;
use crate::metrics::Decision;
use crate::routing::Route;
use crate::store::CutReason;

/// Per-request state, from `new_ctx` to `logging`.
pub struct RequestCtx {
    pub(super) start: Instant,
    pub(super) route: Route,
    /// Shared with the request's lease hold.
    pub(super) user: Option<Arc<str>>,
    pub(super) stream_id: Option<StreamId>,
    pub(super) decision: Option<Decision>,
    /// The `plan` label of the decision (`None`: `default`).
    pub(super) plan: Option<Arc<str>>,
    pub(super) hold: Option<LeaseHold>,
    pub(super) upstream_status: Option<u16>,
    /// The content server of the current attempt (held: `least_conn` counts it).
    pub(super) chosen: Option<crate::upstream::Chosen>,
    /// Servers whose connection failed, never tried again by this request.
    pub(super) tried: Vec<usize>,
    /// Which way the request named its stream.
    pub(super) via: Via,
    /// The query carries the stream parameter: remove it before going upstream.
    pub(super) strip_param: bool,
    /// JWT identity: the token is removed (header, parameter, cookie) before going upstream.
    pub(super) strip_token: bool,
    /// The client is one of `identity.trusted_proxies` (its plan header is believed).
    pub(super) trusted_client: bool,
    /// Claims forwarded upstream as headers (`identity.jwt.claim_to_headers`).
    pub(super) forward: Option<Arc<[(HeaderName, HeaderValue)]>>,
    /// This request's place among its stream's requests in flight.
    pub(super) slot: Option<Slot>,
    /// Its stream was ended or evicted while the response was being served.
    pub(super) cut: Option<CutReason>,
    /// The stream this open evicted (`Stream-Evicted` on the response).
    pub(super) evicted: Option<StreamId>,
    /// This open took the place of its device's previous stream.
    pub(super) replaced: bool,
    /// The opening device (`streams.device_header`), hashed.
    pub(super) device: Option<crate::store::DeviceKey>,
    /// The user's limit is in dry run: store failures fail open.
    pub(super) dry_run: bool,
    /// Dry run: what the limit would have done with this open (admitted all the same).
    pub(super) would: Option<Decision>,
    /// Dry run: `Stream-Limit-Status`, sent to the client and the upstream.
    pub(super) limit_status: Option<HeaderValue>,
    /// `streams.shadow_limit` would have refused this open.
    pub(super) shadow_refused: bool,
    /// A manifest being buffered for rewriting.
    pub(super) manifest: Option<manifests::ManifestBody>,
    /// A manifest left unchanged at its header (too large, unknown encoding).
    pub(super) manifest_skipped: Option<(Kind, manifests::Outcome)>,
    /// Counts the request in while it is served, so a stop waits for it.
    pub(super) _in_flight: InFlight,
}

impl RequestCtx {
    pub(super) fn new(in_flight: InFlight) -> Self {
        RequestCtx {
            start: Instant::now(),
            route: Route::Other,
            user: None,
            stream_id: None,
            decision: None,
            plan: None,
            hold: None,
            upstream_status: None,
            chosen: None,
            tried: Vec::new(),
            via: Via::None,
            strip_param: false,
            strip_token: false,
            trusted_client: false,
            forward: None,
            cut: None,
            evicted: None,
            replaced: false,
            device: None,
            dry_run: false,
            would: None,
            limit_status: None,
            shadow_refused: false,
            slot: None,
            manifest: None,
            manifest_skipped: None,
            _in_flight: in_flight,
        }
    }
}
