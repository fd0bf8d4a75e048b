//! `[streams]`: what a stream is (routes, ids, leases, manifests) and what the limit does
//! (the limit, the policy at it, dry run, devices).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::header::Header;
use super::identity::{Mode, OnLimit, UnknownPlan};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    /// Path prefixes that are watch routes: `/watch` covers `/watch` and `/watch/...`.
    pub routes: Vec<String>,
    /// Match the routes byte for byte. Off: `/WATCH` and `/Watch` are watch requests too,
    /// as origins that route without regard to case (Express, IIS, ASP.NET) read them.
    pub case_sensitive_routes: bool,
    /// Concurrent streams per user.
    pub limit: u32,
    /// How long a stream outlives its last request.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The header that carries the stream id, both ways.
    pub stream_id_header: Header,
    /// The query parameter that carries the stream id in URLs (players cannot echo a
    /// header); removed before the request goes upstream.
    pub stream_id_param: String,
    /// Hosts of absolute manifest URIs that point back through this proxy (relative URIs
    /// always do); their URIs get the stream id too.
    pub rewrite_hosts: Vec<String>,
    /// Largest manifest rewritten; a bigger one goes through unchanged (and is counted).
    pub max_manifest_size: usize,
    /// Origins whose browser players may read the proxy's own answers (`"*"`: any).
    pub cors_origins: Vec<String>,
    /// Most requests of one stream in flight at once through this instance; one more is
    /// `429 stream_busy`. Real players keep at most a handful (docs/players.md).
    pub max_inflight_per_stream: u32,
    /// A manifest request (`.m3u8`, `.mpd`) that opens a stream without naming one is
    /// redirected (`302`) to its URL with the stream parameter, so a player reloading a live
    /// playlist reloads it as this stream.
    pub redirect_manifests: bool,
    /// The plan of users whose token names none (else `limit` applies).
    pub default_plan: Option<String>,
    /// A plan name that no `[plans]` table has.
    pub unknown_plan: UnknownPlan,
    /// The status of a refusal at the limit: `401` (the original contract), `403`, `409`
    /// or `429`. With JWT identity a `401` tells OAuth clients to refresh their token.
    pub limit_status: u16,
    /// What an open at the limit does: `reject`, `evict_oldest`, `evict_idle`.
    pub on_limit: OnLimit,
    /// `enforce`, or `dry_run`: lease and count, refuse and evict nothing, and report what
    /// would have been (before switching a limit on).
    pub mode: Mode,
    /// The header naming the player's device (e.g. `Device-Id`): a second open from a
    /// device that holds a lease of the user replaces that lease instead of counting again.
    /// Unset: devices are not told apart.
    pub device_header: Option<Header>,
    /// The query parameter that names the device where the header cannot be sent;
    /// removed before the request goes upstream.
    pub device_param: String,
    /// A second, lower limit evaluated in each decision and only counted
    /// (`streamgate_shadow_refusals_total`): "what if we lowered it to 2?".
    pub shadow_limit: Option<u32>,
    /// `evict_idle`: how long a stream must have had no request for to be evicted.
    #[serde(with = "humantime_serde")]
    pub evict_idle_after: Duration,
    /// After an eviction, the user's next limit hit within this is refused, so two
    /// auto-reconnecting devices cannot evict each other for ever (`0s`: no cooldown).
    #[serde(with = "humantime_serde")]
    pub evict_cooldown: Duration,
    /// How long an evicted stream's id (or one ended through the admin API) is
    /// remembered: its requests get `410`, never a new stream under that id.
    #[serde(with = "humantime_serde")]
    pub tombstone_ttl: Duration,
}

impl Default for StreamsSection {
    fn default() -> Self {
        Self {
            routes: vec!["/watch".into()],
            case_sensitive_routes: false,
            limit: 3,
            lease_ttl: Duration::from_secs(60),
            stream_id_header: Header::fixed("stream-id", "Stream-Id"),
            stream_id_param: "sg_stream".into(),
            rewrite_hosts: Vec::new(),
            max_manifest_size: 4 << 20,
            cors_origins: Vec::new(),
            max_inflight_per_stream: 8,
            redirect_manifests: true,
            default_plan: None,
            unknown_plan: UnknownPlan::Default,
            limit_status: 401,
            on_limit: OnLimit::Reject,
            mode: Mode::Enforce,
            device_header: None,
            device_param: "sg_device".into(),
            shadow_limit: None,
            evict_idle_after: Duration::from_secs(20),
            evict_cooldown: Duration::from_secs(120),
            tombstone_ttl: Duration::from_secs(600),
        }
    }
}
