//! `[store]`: where leases live (memory, Redis, Redis Cluster) and what a decision does
//! when the store fails.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where active streams live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// In this process, in a moka cache: one instance, nothing to set up.
    Memory,
    /// One Redis or Valkey server (or a primary behind a proxy), shared by all instances.
    Redis,
    /// A Redis Cluster, reached through its seed nodes.
    RedisCluster,
}

/// What a decision does when the store fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Refuse with `503 store_unavailable` (fail closed).
    Deny,
    /// Admit without a lease, and count it as `fail_open` (fail open).
    Allow,
}

/// Where leases live, as validation leaves it: each kind with what only that kind needs,
/// so nothing after loading looks at `kind`, `url` or `nodes` again.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    Memory { max_users: u64 },
    Redis { url: String },
    Cluster { nodes: Vec<String> },
}

impl Backend {
    /// The shared stores (Redis, Redis Cluster): reached over the network.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Backend::Memory { .. })
    }
}

/// Never print a URL: it may carry a password.
impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Memory { max_users } => f
                .debug_struct("Memory")
                .field("max_users", max_users)
                .finish(),
            Backend::Redis { .. } => f.debug_struct("Redis").finish_non_exhaustive(),
            Backend::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field("nodes", &nodes.len())
                .finish_non_exhaustive(),
        }
    }
}

/// `[store]` as the file has it. [`Config::validate`](super::Config::validate) turns
/// `kind`, `max_users`, `url` and `nodes` into [`StoreSection::backend`], which is what
/// the server is built from.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// The backend the file's `kind` (and its keys) name; set by validation.
    #[serde(skip)]
    pub backend: Backend,
    pub kind: StoreKind,
    /// Memory store: most users with live streams at once. A new user past it gets `503`;
    /// no live lease is ever evicted to make room.
    pub max_users: u64,
    /// `kind = "redis"`: `redis://[[user]:password@]host:port[/db]`, `rediss://` for TLS.
    pub url: Option<String>,
    /// `kind = "redis-cluster"`: seed node URLs.
    pub nodes: Vec<String>,
    /// Key prefix, so several deployments can share one Redis: keys are
    /// `<prefix>:{<user>}:streams`.
    pub prefix: String,
    /// Longest wait for any one store call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_store_error: OnStoreError,
    /// Redis stores: how long this instance answers a refused user's further opens itself,
    /// without asking the store (`0s`: never). See `store::refusals`.
    #[serde(with = "humantime_serde")]
    pub refusal_cache: Duration,
    /// `rediss://` only: a PEM file of the CA(s) to trust instead of the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Redis stores: how often the connection is checked (`PING`) in the background, so
    /// a connection Redis closed (restart, `CLIENT KILL`, its idle `timeout`) is
    /// replaced before a request needs it.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
}

/// Never print the store section: its URLs may carry a password.
impl std::fmt::Debug for StoreSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSection")
            .field("backend", &self.backend)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_store_error", &self.on_store_error)
            .field("refusal_cache", &self.refusal_cache)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("health_interval", &self.health_interval)
            .finish_non_exhaustive()
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        const MAX_USERS: u64 = 1_000_000;
        Self {
            backend: Backend::Memory {
                max_users: MAX_USERS,
            },
            kind: StoreKind::Memory,
            max_users: MAX_USERS,
            url: None,
            nodes: Vec::new(),
            prefix: "sg".into(),
            timeout: Duration::from_millis(100),
            on_store_error: OnStoreError::Deny,
            refusal_cache: Duration::ZERO,
            tls_ca_file: None,
            health_interval: Duration::from_secs(1),
        }
    }
}
