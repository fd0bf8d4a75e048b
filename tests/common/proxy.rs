//! The proxy under test: a config file written from [`TestConfig`], and the server built
//! from it by the library's own `server::build`, on free loopback ports.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use super::*;

/// Knobs for a test proxy's config file.
#[derive(Clone)]
pub struct TestConfig {
    pub upstreams: Vec<String>,
    pub limit: u32,
    pub lease_ttl: &'static str,
    pub read_timeout: &'static str,
    pub connect_timeout: &'static str,
    pub other_paths: &'static str,
    /// Extra lines for the `[store]` table.
    pub store: String,
    pub max_users: u64,
    pub pipelining: bool,
    pub forwarded_for: bool,
    /// An HTTPS listener too, with these certificate chain and key files.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Extra lines for the `[streams]` table.
    pub streams: String,
    /// Extra lines for the `[identity]` table.
    pub identity: String,
    /// Extra lines for the `[server]` table.
    pub server: String,
    /// Whole extra tables (`[plans.basic]` ...), appended as they are.
    pub tables: String,
}

impl TestConfig {
    pub fn new(origin: &Origin) -> Self {
        Self::new_for(origin.addr)
    }

    fn new_unbound() -> Self {
        Self {
            upstreams: Vec::new(),
            limit: 3,
            lease_ttl: "60s",
            read_timeout: "5s",
            // Generous: a loaded test machine can be slow to accept, and a connect timeout
            // here would show up as a 504 the test did not ask for.
            connect_timeout: "5s",
            other_paths: "forward",
            store: "kind = \"memory\"".into(),
            max_users: 100_000,
            pipelining: true,
            forwarded_for: true,
            tls: None,
            streams: String::new(),
            identity: String::new(),
            server: String::new(),
            tables: String::new(),
        }
    }

    /// Whole extra tables, appended to the file as they are.
    pub fn table(mut self, text: &str) -> Self {
        self.tables.push_str(text);
        self.tables.push('\n');
        self
    }

    /// One more line in the `[server]` table (`key = value`).
    pub fn server(mut self, line: &str) -> Self {
        self.server.push_str(line);
        self.server.push('\n');
        self
    }

    /// One more line in the `[identity]` table (`key = value`).
    pub fn identity(mut self, line: &str) -> Self {
        self.identity.push_str(line);
        self.identity.push('\n');
        self
    }

    /// One more line in the `[streams]` table (`key = value`).
    pub fn streams(mut self, line: &str) -> Self {
        self.streams.push_str(line);
        self.streams.push('\n');
        self
    }

    /// A config for a proxy in front of the origin at `addr` (one of the harness's other
    /// origins).
    pub fn new_for(addr: SocketAddr) -> Self {
        let mut c = Self::new_unbound();
        c.upstreams = vec![addr.to_string()];
        c
    }

    /// Serve HTTPS too ([`Proxy::tls_addr`]), with `server.crt`/`server.key` from `dir`
    /// (see [`certs::make_certs`]).
    pub fn https(mut self, dir: &std::path::Path) -> Self {
        self.tls = Some((dir.join("server.crt"), dir.join("server.key")));
        self
    }

    pub fn forwarded_for(mut self, on: bool) -> Self {
        self.forwarded_for = on;
        self
    }

    pub fn pipelining(mut self, on: bool) -> Self {
        self.pipelining = on;
        self
    }

    pub fn limit(mut self, n: u32) -> Self {
        self.limit = n;
        self
    }

    pub fn ttl(mut self, t: &'static str) -> Self {
        self.lease_ttl = t;
        self
    }

    /// Use a shared Redis store at `url` with this key prefix. The store timeout is a
    /// generous 2 s: these tests judge exactness, and a debug build sharing two cores with
    /// other tests can queue 500 contended scripts past a production-sized timeout (a CI
    /// run saw `503 store_unavailable` at 200 ms). An outage is still seen at once, since a
    /// stopped server refuses the connection.
    pub fn redis(mut self, url: &str, prefix: &str, on_error: &str) -> Self {
        self.store = format!(
            "kind = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\non_store_error = \"{on_error}\"\ntimeout = \"2s\"\nhealth_interval = \"100ms\""
        );
        self
    }

    /// The store's timeout instead of the harness's generous one, for a test that bounds
    /// how long an outage takes to answer.
    pub fn store_timeout(mut self, t: &str) -> Self {
        let lines: Vec<String> = self
            .store
            .lines()
            .map(|l| {
                if l.starts_with("timeout =") {
                    format!("timeout = \"{t}\"")
                } else {
                    l.to_string()
                }
            })
            .collect();
        self.store = lines.join("\n");
        self
    }

    /// Use a Redis Cluster through these seed nodes.
    pub fn redis_cluster(mut self, nodes: &[String], prefix: &str) -> Self {
        let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
        self.store = format!(
            "kind = \"redis-cluster\"\nnodes = [{}]\nprefix = \"{prefix}\"\ntimeout = \"2s\"\nhealth_interval = \"100ms\"",
            nodes.join(", ")
        );
        self
    }

    /// The config file text; `tls_listen` is used only when [`Self::https`] was asked for.
    pub fn toml(&self, listen: &str, metrics: &str, tls_listen: Option<&str>) -> String {
        let ups: Vec<String> = self.upstreams.iter().map(|u| format!("\"{u}\"")).collect();
        let tls = match (&self.tls, tls_listen) {
            (Some((cert, key)), Some(tls_listen)) => format!(
                "[tls]\nlisten = [\"{tls_listen}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            _ => String::new(),
        };
        format!(
            r#"
[server]
listen = ["{listen}"]
threads = 2
other_paths = "{other}"
pipelining = {pipelining}
grace_period = "0s"
graceful_shutdown_timeout = "1s"
{server}
[upstream]
addrs = [{ups}]
connect_timeout = "{connect}"
read_timeout = "{read}"
forwarded_for = {forwarded_for}

[identity]
{identity}

[streams]
limit = {limit}
lease_ttl = "{ttl}"
{streams}

[store]
{store}
max_users = {max_users}

[metrics]
listen = "{metrics}"

[log]
access = "off"

{tls}
{tables}"#,
            other = self.other_paths,
            ups = ups.join(", "),
            connect = self.connect_timeout,
            read = self.read_timeout,
            limit = self.limit,
            ttl = self.lease_ttl,
            store = self.store,
            max_users = self.max_users,
            pipelining = self.pipelining,
            forwarded_for = self.forwarded_for,
            streams = self.streams,
            identity = self.identity,
            server = self.server,
            tables = self.tables,
        )
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
        let text = cfg.toml(
            &addr.to_string(),
            &metrics_addr.to_string(),
            tls_addr.map(|a| a.to_string()).as_deref(),
        );
        let config = streamgate::config::Config::from_toml(&text).expect("test config is valid");
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
