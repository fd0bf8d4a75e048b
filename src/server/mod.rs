//! Assembling the Pingora server from a validated [`Config`]: the one function that both
//! `main` and the integration tests use, so tests run exactly what ships.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use prometheus::Registry;

mod background;

use self::background::{FetchKeys, FollowEnds, Housekeeping, WatchKeys, HOUSEKEEPING_TICK};
use crate::access_log::AccessLog;
use crate::config::{Backend, Config, Overrides};
use crate::demo::DemoOrigin;
use crate::drain::{Drain, Draining, Signals};
use crate::head_limits::HeadLimits;
use crate::jwt::remote::{RemoteError, RemoteKeys};
use crate::metrics::{Metrics, MetricsApp};
use crate::proxy::StreamGate;
use crate::reload::{self, Reloader};
use crate::store::{MemoryStore, RedisStore, RefusalCache, StreamStore, Target};
use crate::upstream::{HealthChecks, Upstreams};

/// Why a server could not be assembled from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("upstream.addrs: {0}")]
    Upstream(crate::upstream::UpstreamError),
    #[error("store.tls_ca_file: {0}")]
    TlsCa(std::io::Error),
    #[cfg(feature = "tls")]
    #[error("tls: {0}")]
    Tls(Box<pingora::Error>),
    #[error("log.access: cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// A JWT key file that cannot be read or used (`KeyError` names the key).
    #[error("{0}")]
    Identity(crate::config::KeyError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Listen {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// What `--check` tries beyond the file itself: that the JWT keys and the admin tokens it
/// names load.
pub fn check_identity(config: &Config) -> Result<(), crate::config::KeyError> {
    if config.identity.mode == crate::config::IdentityMode::Jwt {
        crate::jwt::Verifier::new(&config.identity.jwt, None)?;
    }
    if config.admin.listen.is_some() {
        crate::admin::Tokens::load(&config.admin)?;
    }
    Ok(())
}

/// Try every address the server will listen on, so that one already taken (or not this
/// host's) is one clear error before anything starts; Pingora itself would panic in the
/// service's thread and leave the other services running. Not on `--upgrade`: the old
/// process holds them.
fn check_listeners(config: &Config, launch: &Launch) -> Result<(), BuildError> {
    let keyed = [
        ("server.listen", config.server.listen.as_slice()),
        ("tls.listen", config.tls.listen.as_slice()),
        ("metrics.listen", config.metrics.listen.as_slice()),
        ("admin.listen", config.admin.listen.as_slice()),
    ];
    let demo = launch.demo_origin.map(|a| ("demo origin", a));
    let all = keyed
        .iter()
        .flat_map(|(key, addrs)| addrs.iter().map(move |a| (*key, a.to_string())))
        .chain(demo.map(|(key, a)| (key, a.to_string())));
    for (key, addr) in all {
        std::net::TcpListener::bind(addr.as_str()).map_err(|source| BuildError::Listen {
            key,
            addr,
            source,
        })?;
    }
    Ok(())
}

/// This instance's name in the admin listing: the host name and the process id.
fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "streamgate".into());
    format!("{host}:{}", std::process::id())
}

/// Build the store the config asks for.
pub fn build_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn StreamStore>, BuildError> {
    let st = &config.store;
    let redis = |target| {
        let store = RedisStore::new(
            target,
            &st.prefix,
            config.streams.lease_ttl,
            st.timeout,
            metrics.lease_counters(),
        )
        .with_idle_window(config.streams.evict_idle_after)
        .with_instance(
            &config
                .server
                .instance_name
                .clone()
                .unwrap_or_else(instance_name),
        );
        let store: Arc<dyn StreamStore> = match &st.tls_ca_file {
            Some(file) => {
                Arc::new(store.with_tls_ca(std::fs::read(file).map_err(BuildError::TlsCa)?))
            }
            None => Arc::new(store),
        };
        if st.refusal_cache.is_zero() {
            return Ok(store);
        }
        let cached = RefusalCache::new(store, st.refusal_cache, metrics.cached_refusals_counter());
        Ok(Arc::new(cached) as Arc<dyn StreamStore>)
    };
    match &st.backend {
        Backend::Memory { max_users } => Ok(Arc::new(MemoryStore::new(
            config.streams.lease_ttl,
            *max_users,
            metrics.lease_counters(),
        ))),
        Backend::Redis { url } => redis(Target::Single(url.clone())),
        Backend::Cluster { nodes } => redis(Target::Cluster(nodes.clone())),
    }
}

/// How this process starts, beside what its config file says.
#[derive(Debug, Default, Clone)]
pub struct Launch<'a> {
    /// Also run the built-in demo origin at this address.
    pub demo_origin: Option<&'a str>,
    /// Take the listening sockets over from a running instance, which hands them over on
    /// `SIGQUIT` through `server.upgrade_sock` (Pingora's zero-downtime upgrade). Waits up
    /// to 5 s for them, then exits with an error.
    pub upgrade: bool,
    /// The config file and command-line overrides a `SIGHUP` reloads (`None`: nothing to
    /// reload, as for the demo).
    pub reload_from: Option<(PathBuf, Overrides)>,
}

/// The assembled server, and the count of its requests in flight that decides when a stop
/// may exit.
pub struct Built {
    pub server: Server,
    drain: Arc<Drain>,
    access_log: AccessLog,
    reloader: Arc<Reloader>,
}

impl Built {
    /// Run until a signal stops it, as the binary does: streamgate's own signal handling
    /// and the exit once a graceful stop has drained (src/drain.rs).
    pub fn run_forever(self) -> ! {
        crate::drain::exit_when_drained(
            self.drain.clone(),
            self.server.watch_execution_phase(),
            self.access_log.clone(),
        );
        self.server.run(RunArgs {
            shutdown_signal: Box::new(Signals::new(
                self.drain,
                self.access_log.clone(),
                self.reloader,
            )),
        });
        self.access_log.flush(LAST_LINES);
        std::process::exit(0)
    }
}

/// Build the whole server: the proxy on `server.listen`, metrics on `metrics.listen`, and
/// store housekeeping; see [`Launch`] for the demo origin and upgrades.
pub fn build(config: &Config, registry: &Registry, launch: &Launch) -> Result<Built, BuildError> {
    if !launch.upgrade {
        check_listeners(config, launch)?;
    }
    let metrics = Metrics::new(registry)?;
    let metrics_up = metrics.store_up_gauge();
    let store = build_store(config, &metrics)?;

    let opt = Opt {
        upgrade: launch.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), config.pingora_server_conf());
    server.bootstrap();

    let drain = Drain::new(
        config.server.grace_period,
        config.server.graceful_shutdown_timeout,
    );
    let access_log = AccessLog::start(&config.log, metrics.access_log_dropped_counter())
        .map_err(BuildError::AccessLog)?;
    let heads = HeadLimits::new(config, metrics.refused_heads_counter());
    let remote = match config.identity.mode {
        crate::config::IdentityMode::Jwt => RemoteKeys::from_config(&config.identity.jwt, registry)
            .map_err(|e| match e {
                RemoteError::Config(e) => BuildError::Identity(e),
                RemoteError::Metrics(e) => BuildError::Metrics(e),
            })?,
        crate::config::IdentityMode::Header => None,
    };
    let keys = crate::jwt::Runtime {
        auth: Some(metrics.auth_counter()),
        remote: remote.clone(),
    };
    let live = reload::shared(config, &keys).map_err(BuildError::Identity)?;
    let reloader = Arc::new(Reloader::new(
        launch.reload_from.clone(),
        config.clone(),
        live.clone(),
        store.clone(),
        keys,
    ));
    let admin = match config.admin.listen {
        Some(addr) => {
            let tokens = crate::admin::Tokens::load(&config.admin).map_err(BuildError::Identity)?;
            Some((addr, tokens, metrics.admin_handles()))
        }
        None => None,
    };
    let upstreams = Upstreams::new(&config.upstream, registry).map_err(BuildError::Upstream)?;
    let gate = StreamGate::new(
        config,
        store.clone(),
        metrics,
        drain.clone(),
        access_log.clone(),
        live,
        upstreams.clone(),
    );
    let inflight = gate.inflight();
    if let Some((addr, tokens, (requests, stats))) = admin {
        let app = crate::admin::AdminApp::new(
            store.clone(),
            inflight.clone(),
            tokens,
            gate.user_tags(),
            config.identity.max_len,
            requests,
            stats,
        )
        .with_tombstone_ttl(config.streams.tombstone_ttl);
        let mut svc = Service::new("admin".into(), app);
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    let app = Draining::new(
        pingora::proxy::http_proxy(&server.configuration, gate),
        drain.clone(),
        heads,
    );
    let mut proxy = Service::new("streamgate".into(), app);
    let buffers = L4BufferSettings::default().read(config.server.read_buffer);
    for addr in &config.server.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
    // Without the `tls` feature, validation refused a config with `tls.listen`.
    #[cfg(feature = "tls")]
    for addr in &config.tls.listen {
        let tls = crate::tls::listener_settings(&config.tls).map_err(BuildError::Tls)?;
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .tls(tls)
                .l4_buffer(buffers),
        );
    }
    server.add_service(proxy);

    if let Some(addr) = &config.metrics.listen {
        let mut svc = Service::new("metrics".into(), MetricsApp::new(registry.clone()));
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }

    // Expired users are evicted lazily by moka; a tick keeps gauges and memory settled, and
    // keeps the memory store's users with a request in flight alive (it must come at least
    // every TTL/4, and `lease_ttl` is at least 100 ms). A short tick also means moka's
    // maintenance mostly runs here rather than inline on a request's thread, which keeps
    // tail latency down while many leases expire (docs/tuning.md#housekeeping).
    let every = HOUSEKEEPING_TICK.min(config.streams.lease_ttl / 4);
    server.add_service(background_service(
        "store housekeeping",
        Housekeeping {
            store: store.clone(),
            every,
            health: (config.store.backend.is_shared()).then_some(config.store.health_interval),
            up: metrics_up,
        },
    ));

    server.add_service(background_service(
        "stream ends",
        FollowEnds { store, inflight },
    ));

    if config.identity.mode == crate::config::IdentityMode::Jwt {
        server.add_service(background_service(
            "identity keys",
            WatchKeys {
                reloader: reloader.clone(),
            },
        ));
    }

    if let Some(checks) = HealthChecks::new(&upstreams) {
        server.add_service(background_service("upstream health checks", checks));
    }

    if let Some(remote) = remote {
        server.add_service(background_service("identity key set", FetchKeys { remote }));
    }

    if let Some(addr) = launch.demo_origin {
        let mut svc = Service::new("demo origin".into(), DemoOrigin);
        svc.add_tcp(addr);
        server.add_service(svc);
    }
    Ok(Built {
        server,
        drain,
        access_log,
        reloader,
    })
}

/// How long an exiting process waits for its last access lines to be written.
const LAST_LINES: Duration = Duration::from_secs(1);
