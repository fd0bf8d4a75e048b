//! What a `SIGHUP` may change while streams play, and what it may not.
//!
//! nginx and HAProxy users reload a changed config with `SIGHUP`. streamgate re-reads its
//! file (with the command line's overrides applied again, as at start) and validates it
//! whole; a file that does not load is one log line and changes nothing. Of a valid file,
//! the settings a request reads ([`LIVE_KEYS`]: the limit, the routes, the lease TTL, the
//! store timeout and failure mode, the log level) are swapped in at once: each request
//! reads one [`Live`] snapshot, so it sees the old settings or the new, never half of each.
//! Everything else (listen addresses, the store's kind and address, TLS, threads...) is
//! bound into sockets, connections and threads at start: a change there is kept as it was
//! and named in one log line saying that a restart or `--upgrade` applies it.
//!
//! Leases already open are kept: a lowered limit refuses the next opens until the user is
//! below it (nothing playing is cut), and a changed TTL applies from each lease's next
//! renewal. The moves are the same on the memory and the Redis store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use log::{info, warn};
use parking_lot::Mutex;

use crate::config::{Config, IdentityMode, KeyError, LogLevel, Overrides};
use crate::jwt::{self, Verifier};
use crate::policy::Policy;
use crate::routing::Routes;
use crate::store::StreamStore;

/// The keys a reload applies while running, and the tables all of whose keys it applies
/// (every other key needs a restart).
pub const LIVE_KEYS: &[&str] = &[
    "streams.limit",
    "streams.routes",
    "streams.case_sensitive_routes",
    "streams.lease_ttl",
    "streams.default_plan",
    "streams.unknown_plan",
    "streams.on_limit",
    "streams.mode",
    "streams.shadow_limit",
    "streams.evict_cooldown",
    "streams.tombstone_ttl",
    "store.timeout",
    "store.on_store_error",
    "log.level",
    "plans",
    "identity.jwt",
];

/// Keys inside a [`LIVE_KEYS`] table that still need a restart: the `jwks_url` key set is
/// fetched by one task started with the process.
const RESTART_KEYS: &[&str] = &[
    "identity.jwt.jwks_url",
    "identity.jwt.jwks_refresh",
    "identity.jwt.jwks_max_stale",
    "identity.jwt.jwks_timeout",
];

fn is_live(key: &str) -> bool {
    !RESTART_KEYS.contains(&key)
        && LIVE_KEYS.iter().any(|k| {
            key == *k
                || key
                    .strip_prefix(k)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
}

/// The settings each request reads, swapped whole by a reload.
pub struct Live {
    pub routes: Routes,
    pub policy: Policy,
    /// `identity.mode = "jwt"`: the keys and rules tokens are verified with.
    pub jwt: Option<Verifier>,
}

impl Live {
    /// Fails when a JWT key file cannot be read or used (naming the key).
    pub fn new(config: &Config, keys: &jwt::Runtime) -> Result<Self, KeyError> {
        let jwt = match config.identity.mode {
            IdentityMode::Jwt => Some(Verifier::new(&config.identity.jwt, Some(keys))?),
            IdentityMode::Header => None,
        };
        Ok(Self {
            routes: Routes::new(&config.streams.routes, config.streams.case_sensitive_routes),
            policy: Policy::new(config),
            jwt,
        })
    }
}

/// The live settings, shared by the proxy (which reads them) and the [`Reloader`].
pub type Shared = Arc<ArcSwap<Live>>;

pub fn shared(config: &Config, keys: &jwt::Runtime) -> Result<Shared, KeyError> {
    Ok(Arc::new(ArcSwap::from_pointee(Live::new(config, keys)?)))
}

/// Set the process log's level from `log.level`, unless `RUST_LOG` decides it.
pub fn apply_log_level(level: LogLevel) {
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(level.filter());
    }
}

/// What a reload did (also written as one log line).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file did not load: the message (file, key, why); nothing changed.
    Refused(String),
    /// The file loaded: the live keys applied, and the changed keys kept as they were.
    Loaded {
        applied: Vec<String>,
        kept: Vec<String>,
    },
}

/// Re-reads the config file on `SIGHUP` and applies what can change live.
pub struct Reloader {
    /// The file and the command line's overrides; `None` (the demo) has no file.
    source: Option<(PathBuf, Overrides)>,
    /// What runs now: the start config with every reload's live keys applied.
    running: Mutex<Config>,
    live: Shared,
    store: Arc<dyn StreamStore>,
    keys: jwt::Runtime,
}

impl Reloader {
    pub fn new(
        source: Option<(PathBuf, Overrides)>,
        running: Config,
        live: Shared,
        store: Arc<dyn StreamStore>,
        keys: jwt::Runtime,
    ) -> Self {
        Self {
            source,
            running: Mutex::new(running),
            live,
            store,
            keys,
        }
    }

    /// Load the file again and apply it; says what it did in one log line.
    pub fn reload(&self) -> Outcome {
        let Some((path, overrides)) = &self.source else {
            let why = "no config file to reload (the demo runs on defaults)".to_string();
            warn!("SIGHUP: {why}");
            return Outcome::Refused(why);
        };
        match Config::load(path, overrides) {
            Ok(next) => self.apply(next),
            Err(e) => {
                warn!("SIGHUP: {e}; the running config is kept");
                Outcome::Refused(e.to_string())
            }
        }
    }

    /// The JWT key files of the running config (PEM keys, JWKS, HMAC secret), and what
    /// they look like now (length and modification time; `None`: unreadable).
    pub fn key_files(&self) -> Vec<(PathBuf, Option<(u64, std::time::SystemTime)>)> {
        let running = self.running.lock();
        if running.identity.mode != IdentityMode::Jwt {
            return Vec::new();
        }
        let jwt = &running.identity.jwt;
        jwt.keys
            .iter()
            .map(|k| k.file.clone())
            .chain(jwt.jwks_file.clone())
            .chain(jwt.hmac_secret_file.clone())
            .map(|p| {
                let seen = std::fs::metadata(&p)
                    .ok()
                    .and_then(|m| Some((m.len(), m.modified().ok()?)));
                (p, seen)
            })
            .collect()
    }

    /// The key files changed (a rotated JWKS): verify with what they hold now, the rest
    /// of the running config as it is. A file that does not load keeps the old keys.
    pub fn reload_keys(&self) -> bool {
        let running = self.running.lock();
        match Live::new(&running, &self.keys) {
            Ok(live) => {
                self.live.store(Arc::new(live));
                info!("identity keys reloaded: a key file changed");
                true
            }
            Err(e) => {
                warn!("identity keys: {e}; the keys in use are kept");
                false
            }
        }
    }

    /// Apply a valid config: its live keys now, the others named and kept.
    pub fn apply(&self, next: Config) -> Outcome {
        let mut running = self.running.lock();
        let changed = changed_keys(&running, &next);
        let (applied, kept): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|k| is_live(k));
        if !applied.is_empty() {
            let mut candidate = running.clone();
            take_live(&mut candidate, &next);
            let live = match Live::new(&candidate, &self.keys) {
                Ok(live) => live,
                Err(e) => {
                    warn!("SIGHUP: {e}; the running config is kept");
                    return Outcome::Refused(e.to_string());
                }
            };
            *running = candidate;
            self.live.store(Arc::new(live));
            self.store
                .retune(running.streams.lease_ttl, running.store.timeout);
            apply_log_level(running.log.level);
        }
        match (applied.is_empty(), kept.is_empty()) {
            (true, true) => info!("SIGHUP: the config file is unchanged"),
            (false, _) => info!("SIGHUP: applied {}", applied.join(", ")),
            (true, false) => {}
        }
        if !kept.is_empty() {
            warn!(
                "SIGHUP: {} changed but apply only at a restart or --upgrade; kept as running",
                kept.join(", ")
            );
        }
        Outcome::Loaded { applied, kept }
    }
}

/// Copy the live keys' values from `next` (see [`LIVE_KEYS`]).
fn take_live(running: &mut Config, next: &Config) {
    running.streams.limit = next.streams.limit;
    running.streams.routes = next.streams.routes.clone();
    running.streams.case_sensitive_routes = next.streams.case_sensitive_routes;
    running.streams.lease_ttl = next.streams.lease_ttl;
    running.store.timeout = next.store.timeout;
    running.store.on_store_error = next.store.on_store_error;
    running.log.level = next.log.level;
    running.streams.default_plan = next.streams.default_plan.clone();
    running.streams.unknown_plan = next.streams.unknown_plan;
    running.streams.on_limit = next.streams.on_limit;
    running.streams.mode = next.streams.mode;
    running.streams.shadow_limit = next.streams.shadow_limit;
    running.streams.evict_cooldown = next.streams.evict_cooldown;
    running.streams.tombstone_ttl = next.streams.tombstone_ttl;
    running.plans = next.plans.clone();
    let (url, refresh, stale, timeout) = {
        let j = &running.identity.jwt;
        (
            j.jwks_url.clone(),
            j.jwks_refresh,
            j.jwks_max_stale,
            j.jwks_timeout,
        )
    };
    running.identity.jwt = next.identity.jwt.clone();
    let j = &mut running.identity.jwt;
    (j.jwks_url, j.jwks_refresh, j.jwks_max_stale, j.jwks_timeout) = (url, refresh, stale, timeout);
}

/// The dotted keys (`section.key`) whose values differ. Only names: values may be
/// credentials (a Redis URL with its password).
fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (a, b) = (flatten(a), flatten(b));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(c: &Config) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, v: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            v => {
                out.insert(prefix.to_string(), v);
            }
        }
    }
    let mut out = BTreeMap::new();
    match toml::Value::try_from(c) {
        Ok(v) => walk("", v, &mut out),
        // Every config type serializes; were one not to, no key would look changed.
        Err(e) => warn!("cannot compare configs: {e}"),
    }
    out
}

#[cfg(test)]
mod tests;
