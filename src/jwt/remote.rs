//! Keys served by the login service (`identity.jwt.jwks_url`), kept fresh while tokens
//! are verified with them.
//!
//! Login services publish their public keys as a JSON Web Key Set and rotate them: a new
//! `kid` appears in the set before the first token signed with it, the old one leaves
//! later. The set is fetched at start and every `jwks_refresh`; a token naming a `kid` the
//! set lacks (or arriving before any set) asks for one fetch at once and waits for it, so
//! the first token of a new key is not refused; such demands fetch at most once per 30 s
//! (or per `jwks_refresh`, if shorter), so tokens with made-up `kid`s cannot turn the proxy
//! into a load generator against the login service. A failed fetch keeps the last good set
//! (retried after 1, 2, 4... up to 30 s) for up to `jwks_max_stale`; with no usable set,
//! tokens are answered `503 auth_unavailable`, never `401`: the token may be fine.
//!
//! Keys a signature cannot come from are skipped, not fatal: encryption keys (`use:
//! "enc"`), key types jsonwebtoken does not know, and symmetric (`oct`) keys, because a
//! secret published at a URL is no secret. A change of the set (by a fingerprint of its
//! usable keys) makes cached tokens verify again once, so a key removed from the set stops
//! its tokens at their next request. Fetch errors are logged without the URL, which may
//! carry credentials.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::DecodingKey;
use log::{info, warn};
use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounter, IntCounterVec, Opts, Registry};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use super::Key;
use crate::config::{JwtSection, KeyError};

/// Demanded fetches (unknown `kid`, no set yet) happen at most this often.
const DEMAND_GAP: Duration = Duration::from_secs(30);
/// The longest wait between retries of a failing fetch.
const MOST_BACKOFF: Duration = Duration::from_secs(30);
/// A key set larger than this is refused (real ones are a few KiB).
const MOST_BODY: usize = 1 << 20;

/// `identity.jwt.jwks_url`, which must be an `http://` or `https://` URL.
pub fn parse_url(url: &str) -> Result<reqwest::Url, KeyError> {
    let key = "identity.jwt.jwks_url";
    let parsed = reqwest::Url::parse(url).map_err(|e| KeyError::new(key, format!("{e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(KeyError::new(key, "must be an http:// or https:// URL"));
    }
    Ok(parsed)
}

/// One fetched set: its usable keys, when it arrived, and which set it is.
pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
    fetched: Instant,
    /// Counts the distinct sets seen; cached tokens carry the one they were verified under.
    pub(super) generation: u64,
    fingerprint: [u8; 32],
}

/// The remote key set, its refresh and its metrics. One per process (kept across
/// `SIGHUP`, which rebuilds the [`super::Verifier`] around it).
pub struct RemoteKeys {
    url: reqwest::Url,
    client: reqwest::Client,
    refresh: Duration,
    max_stale: Duration,
    timeout: Duration,
    set: Arc<ArcSwapOption<KeySet>>,
    /// When a token last asked for a fetch.
    demanded: Mutex<Option<Instant>>,
    fetching: AtomicBool,
    /// Counts finished fetches (good or not): what a demanding token waits for.
    done: watch::Sender<u64>,
    wake: Notify,
    ok: IntCounter,
    failed: IntCounter,
}

impl RemoteKeys {
    /// `None` unless `[identity.jwt] jwks_url` is set. Registers
    /// `streamgate_jwks_refresh_total` and `streamgate_jwks_age_seconds`.
    pub fn from_config(
        c: &JwtSection,
        registry: &Registry,
    ) -> Result<Option<Arc<Self>>, RemoteError> {
        let Some(url) = &c.jwks_url else {
            return Ok(None);
        };
        let url = parse_url(url)?;
        let client = reqwest::Client::builder()
            .timeout(c.jwks_timeout)
            .connect_timeout(c.jwks_timeout)
            .user_agent(concat!("streamgate/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| KeyError::new("identity.jwt.jwks_url", describe(e)))?;
        let refreshes = IntCounterVec::new(
            Opts::new(
                "streamgate_jwks_refresh_total",
                "Fetches of identity.jwt.jwks_url, by result (ok, failed).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(refreshes.clone()))?;
        let set = Arc::new(ArcSwapOption::empty());
        registry.register(Box::new(AgeGauge {
            set: set.clone(),
            gauge: Gauge::new(
                "streamgate_jwks_age_seconds",
                "Seconds since the key set in use was fetched (+Inf: none yet).",
            )?,
        }))?;
        Ok(Some(Arc::new(Self {
            url,
            client,
            refresh: c.jwks_refresh,
            max_stale: c.jwks_max_stale,
            timeout: c.jwks_timeout,
            set,
            demanded: Mutex::new(None),
            fetching: AtomicBool::new(false),
            done: watch::channel(0).0,
            wake: Notify::new(),
            ok: refreshes.with_label_values(&["ok"]),
            failed: refreshes.with_label_values(&["failed"]),
        })))
    }

    /// The set to verify with: `None` before the first good fetch, and once the last good
    /// one is older than `jwks_max_stale`.
    pub(super) fn current(&self) -> Option<Arc<KeySet>> {
        self.set
            .load_full()
            .filter(|s| s.fetched.elapsed() <= self.max_stale)
    }

    /// Which set is in use (`None`: none is), for the token cache.
    pub(super) fn generation(&self) -> Option<u64> {
        self.set
            .load()
            .as_ref()
            .filter(|s| s.fetched.elapsed() <= self.max_stale)
            .map(|s| s.generation)
    }

    /// A token named a `kid` the set lacks, or came before any set: fetch now (unless a
    /// token asked within the last 30 s) and wait for the fetch, at most `jwks_timeout`.
    /// True when a fetch finished meanwhile, so that verifying again may succeed.
    pub(super) async fn refetch(&self) -> bool {
        let mut done = self.done.subscribe();
        let seen = *done.borrow_and_update();
        if !self.fetching.load(Ordering::Acquire) {
            let gap = DEMAND_GAP.min(self.refresh);
            let mut last = self.demanded.lock();
            if last.is_some_and(|t| t.elapsed() < gap) {
                return false;
            }
            *last = Some(Instant::now());
            drop(last);
            self.wake.notify_one();
        }
        let wait = self.timeout + Duration::from_millis(250);
        let finished = tokio::time::timeout(wait, done.wait_for(|n| *n > seen))
            .await
            .is_ok_and(|r| r.is_ok());
        finished
    }

    /// Fetch at start, then every `jwks_refresh` (sooner after a failure, or when a token
    /// asks). Never returns; the caller drops it at shutdown.
    pub async fn keep_fresh(&self) {
        let mut failures = 0u32;
        loop {
            self.fetching.store(true, Ordering::Release);
            let fetched = self.fetch().await;
            match fetched {
                Ok((keys, fingerprint)) => {
                    self.ok.inc();
                    if failures > 0 {
                        info!("identity.jwt.jwks_url: fetched again after {failures} failures");
                    }
                    failures = 0;
                    self.install(keys, fingerprint);
                }
                Err(why) => {
                    self.failed.inc();
                    failures = failures.saturating_add(1);
                    warn!(
                        "identity.jwt.jwks_url: fetch failed: {why}; {}",
                        self.state()
                    );
                }
            }
            self.fetching.store(false, Ordering::Release);
            self.done.send_modify(|n| *n += 1);
            let wait = match failures {
                0 => self.refresh,
                n => Duration::from_secs(1 << (n - 1).min(5))
                    .min(MOST_BACKOFF)
                    .min(self.refresh),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// What tokens are verified with after a failed fetch, for its log line.
    fn state(&self) -> String {
        match self.set.load().as_ref() {
            None => "no key set yet: tokens are answered 503 auth_unavailable".into(),
            Some(s) if s.fetched.elapsed() > self.max_stale => format!(
                "the last good set is older than jwks_max_stale ({}): tokens are answered \
                 503 auth_unavailable",
                humantime::format_duration(self.max_stale)
            ),
            Some(s) => format!(
                "keeping the set fetched {} ago",
                humantime::format_duration(Duration::from_secs(s.fetched.elapsed().as_secs()))
            ),
        }
    }

    fn install(&self, keys: Vec<Key>, fingerprint: [u8; 32]) {
        let old = self.set.load_full();
        let generation = match &old {
            Some(o) if o.fingerprint == fingerprint => o.generation,
            Some(o) => {
                info!(
                    "identity.jwt.jwks_url: the key set changed ({} keys)",
                    keys.len()
                );
                o.generation + 1
            }
            None => 1,
        };
        self.set.store(Some(Arc::new(KeySet {
            keys,
            fetched: Instant::now(),
            generation,
            fingerprint,
        })));
    }

    async fn fetch(&self) -> Result<(Vec<Key>, [u8; 32]), String> {
        let mut answer = self
            .client
            .get(self.url.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(describe)?;
        if answer.status() != http::StatusCode::OK {
            return Err(format!("answered HTTP {}", answer.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MOST_BODY {
                return Err("the key set is larger than 1 MiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        parse_set(&body)
    }
}

/// The keys of a fetched set that can verify a signature, and the set's fingerprint.
pub(super) fn parse_set(body: &[u8]) -> Result<(Vec<Key>, [u8; 32]), String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<Value>,
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = Vec::new();
    let mut usable = Vec::new();
    for v in raw.keys {
        if v.get("use").and_then(Value::as_str) == Some("enc")
            || v.get("kty").and_then(Value::as_str) == Some("oct")
        {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(v.clone()) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            key,
        });
        usable.push(v);
    }
    if keys.is_empty() {
        return Err("no key in the set can verify a signature".into());
    }
    let canonical = serde_json::to_vec(&usable).map_err(|e| e.to_string())?;
    Ok((keys, Sha256::digest(canonical).into()))
}

/// A fetch error and its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Why the remote key set could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Config(#[from] KeyError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// `streamgate_jwks_age_seconds`, computed when scraped.
struct AgeGauge {
    set: Arc<ArcSwapOption<KeySet>>,
    gauge: Gauge,
}

impl Collector for AgeGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let age = self
            .set
            .load()
            .as_ref()
            .map_or(f64::INFINITY, |s| s.fetched.elapsed().as_secs_f64());
        self.gauge.set(age);
        self.gauge.collect()
    }
}
