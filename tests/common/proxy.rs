//! The proxy under test: a typed config from [`TestConfig`], and the server built from it
//! by the library's own `server::build`, on free loopback ports.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use streamgate::config::{Config, OnStoreError, StoreKind};

use super::*;

/// A test proxy's config: a typed [`Config`] (set its fields directly, or through the
/// builders below), plus TOML for what a test states as the file would (`[plans.*]`
/// tables, `key = value` lines), merged over it key by key at start. The listen addresses
/// are free loopback ports, chosen by [`Proxy::start`].
#[derive(Clone)]
pub struct TestConfig {
    pub config: Config,
    /// Merged over `config` at start: tables are merged key by key, values replaced.
    overlay: toml::Table,
    /// An HTTPS listener too, with these certificate chain and key files.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A duration as the config file writes it (`"300ms"`, `"2s"`).
pub fn duration(text: &str) -> Duration {
    humantime_serde::re::humantime::parse_duration(text).expect("a duration")
}

/// `over` merged into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl TestConfig {
    pub fn new(origin: &Origin) -> Self {
        Self::new_for(origin.addr)
    }

    /// A config for a proxy in front of the origin at `addr` (one of the harness's other
    /// origins).
    pub fn new_for(addr: SocketAddr) -> Self {
        let mut c = Config::default();
        c.server.threads = 2;
        c.server.grace_period = Duration::ZERO;
        c.server.graceful_shutdown_timeout = Duration::from_secs(1);
        c.upstream.addrs = vec![addr.to_string().into()];
        // Generous: a loaded test machine can be slow to accept, and a connect timeout
        // here would show up as a 504 the test did not ask for.
        c.upstream.connect_timeout = Duration::from_secs(5);
        c.upstream.read_timeout = Duration::from_secs(5);
        c.streams.limit = 3;
        c.streams.lease_ttl = Duration::from_secs(60);
        c.store.max_users = 100_000;
        c.log.access = "off".into();
        Self {
            config: c,
            overlay: toml::Table::new(),
            tls: None,
        }
    }

    /// TOML merged over the config at start (whole tables, or `[table]` and its lines).
    pub fn table(mut self, text: &str) -> Self {
        let over: toml::Table = text.parse().expect("test TOML parses");
        merge(&mut self.overlay, over);
        self
    }

    fn line(self, table: &str, line: &str) -> Self {
        self.table(&format!("[{table}]\n{line}"))
    }

    /// One more `key = value` for the `[server]` table.
    pub fn server(self, line: &str) -> Self {
        self.line("server", line)
    }

    /// One more `key = value` for the `[identity]` table.
    pub fn identity(self, line: &str) -> Self {
        self.line("identity", line)
    }

    /// One more `key = value` for the `[streams]` table.
    pub fn streams(self, line: &str) -> Self {
        self.line("streams", line)
    }

    /// Serve HTTPS too ([`Proxy::tls_addr`]), with `server.crt`/`server.key` from `dir`
    /// (see [`certs::make_certs`]).
    pub fn https(mut self, dir: &std::path::Path) -> Self {
        self.tls = Some((dir.join("server.crt"), dir.join("server.key")));
        self
    }

    pub fn forwarded_for(mut self, on: bool) -> Self {
        self.config.upstream.forwarded_for = on;
        self
    }

    pub fn pipelining(mut self, on: bool) -> Self {
        self.config.server.pipelining = on;
        self
    }

    pub fn limit(mut self, n: u32) -> Self {
        self.config.streams.limit = n;
        self
    }

    pub fn ttl(mut self, t: &str) -> Self {
        self.config.streams.lease_ttl = duration(t);
        self
    }

    /// Use a shared Redis store at `url` with this key prefix. The store timeout is a
    /// generous 2 s: these tests judge exactness, and a debug build sharing two cores with
    /// other tests can queue 500 contended scripts past a production-sized timeout (a CI
    /// run saw `503 store_unavailable` at 200 ms). An outage is still seen at once, since a
    /// stopped server refuses the connection.
    pub fn redis(mut self, url: &str, prefix: &str, on_error: &str) -> Self {
        let st = &mut self.config.store;
        st.kind = StoreKind::Redis;
        st.url = Some(url.into());
        st.prefix = prefix.into();
        st.on_store_error = match on_error {
            "allow" => OnStoreError::Allow,
            "deny" => OnStoreError::Deny,
            other => panic!("on_store_error {other:?}"),
        };
        st.timeout = Duration::from_secs(2);
        st.health_interval = Duration::from_millis(100);
        self
    }

    /// The store's timeout instead of the harness's generous one, for a test that bounds
    /// how long an outage takes to answer.
    pub fn store_timeout(mut self, t: &str) -> Self {
        self.config.store.timeout = duration(t);
        self
    }

    /// Use a Redis Cluster through these seed nodes.
    pub fn redis_cluster(mut self, nodes: &[String], prefix: &str) -> Self {
        let st = &mut self.config.store;
        st.kind = StoreKind::RedisCluster;
        st.nodes = nodes.to_vec();
        st.prefix = prefix.into();
        st.timeout = Duration::from_secs(2);
        st.health_interval = Duration::from_millis(100);
        self
    }

    /// The validated config on these listen addresses (`tls_listen` is used only when
    /// [`Self::https`] was asked for).
    pub fn build(
        &self,
        listen: SocketAddr,
        metrics: SocketAddr,
        tls_listen: Option<SocketAddr>,
    ) -> Config {
        let mut c = self.config.clone();
        c.server.listen = vec![listen];
        c.metrics.listen = Some(metrics);
        if let (Some((cert, key)), Some(tls_listen)) = (&self.tls, tls_listen) {
            c.tls.listen = vec![tls_listen];
            c.tls.cert_file = Some(cert.clone());
            c.tls.key_file = Some(key.clone());
        }
        let mut table = toml::Table::try_from(&c).expect("the config serializes");
        merge(&mut table, self.overlay.clone());
        let text = toml::to_string(&table).expect("the config serializes");
        Config::from_toml(&text).unwrap_or_else(|e| panic!("test config is invalid: {e}"))
    }
}

struct TestSignal(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for TestSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::FastShutdown
    }
}

/// A running streamgate, stopped (by its own shutdown signal) when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The HTTPS listener, when the config asked for one.
    pub tls_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    pub client: reqwest::Client,
}

impl Proxy {
    pub async fn start(cfg: &TestConfig) -> Proxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls_addr: Option<SocketAddr> = cfg
            .tls
            .as_ref()
            .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        let config = cfg.build(addr, metrics_addr, tls_addr);
        let registry = prometheus::Registry::new();
        let server = streamgate::server::build(&config, &registry, &Default::default())
            .map(|built| built.server)
            .expect("server builds");
        let (stop, rx) = watch::channel(false);
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(TestSignal(rx)),
            });
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let proxy = Proxy {
            addr,
            tls_addr,
            metrics_addr,
            stop,
            thread: Some(thread),
            client,
        };
        proxy.wait_ready().await;
        proxy
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = self.client.get(self.url("/health")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "proxy did not come up in 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET `path` as `user`, optionally continuing `stream`.
    pub async fn watch(&self, path: &str, user: &str, stream: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(self.url(path)).header("Session-Id", user);
        if let Some(s) = stream {
            req = req.header("Stream-Id", s);
        }
        req.send().await.expect("request failed")
    }

    pub async fn delete(&self, user: &str, stream: &str) -> reqwest::Response {
        self.client
            .delete(self.url("/watch"))
            .header("Session-Id", user)
            .header("Stream-Id", stream)
            .send()
            .await
            .expect("request failed")
    }

    /// The status of a plain GET of `path`.
    pub async fn status(&self, path: &str) -> u16 {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request failed")
            .status()
            .as_u16()
    }

    /// Wait until `/ready` answers 200 (the store is reachable again).
    pub async fn until_ready(&self, within: Duration) {
        self.eventually(within, "the proxy is ready", || async {
            self.status("/ready").await == 200
        })
        .await;
    }

    /// The metrics page.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// One sample's value from the metrics page (exact series text, e.g. `a{b="c"}`).
    /// The value of `series` (`name` or `name{label="v",...}`), summed over every series
    /// of that name whose labels include the ones given, as PromQL's `sum(...)` would; 0
    /// when none is exported.
    pub async fn metric(&self, series: &str) -> f64 {
        sum_series(&self.metrics().await, series)
    }

    /// Poll until `check` holds, bounded by `within`.
    /// Wait (up to 5 s) until the counter `series` reaches `at_least`: counters kept in
    /// Pingora's logging phase may move just after the answer is out.
    pub async fn counted(&self, series: &str, at_least: f64) {
        let what = format!("{series} >= {at_least}");
        self.eventually(Duration::from_secs(5), &what, || async {
            self.metric(series).await >= at_least
        })
        .await;
    }

    /// The value of `series` once it equals `expect` (waited for up to 5 s, as
    /// [`Self::counted`]), or the last value read when it never did: for `assert_eq!` on a
    /// counter kept in the logging phase.
    pub async fn settled(&self, series: &str, expect: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(series).await;
            if v == expect || Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn eventually<F, Fut>(&self, within: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
