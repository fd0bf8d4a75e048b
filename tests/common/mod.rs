//! Test harness: the real proxy (built by the library's own `server::build`) on free
//! loopback ports, in front of a real HTTP/1.1 origin written here on raw tokio sockets so
//! that tests can make it slow, gated, failing, resetting or hanging.
#![allow(dead_code)]

pub mod certs;
pub mod media;
pub mod redis_server;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// A port that was free a moment ago (Pingora binds by address, so we must pick one), and
/// never one this test process was given before: the kernel may hand the same free port to
/// two calls in a row, and a proxy's listener and metrics port must differ.
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`): a port
/// from inside it can be taken, between this call and the server's bind, as the source
/// port of any outgoing connection the tests make, and Pingora then retries its bind while
/// the service does not listen (a CI run failed so: its metrics were refused mid-test).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.saturating_sub(1));
    if hi > lo + 1000 {
        for _ in 0..1000 {
            let span = u128::from(hi - lo);
            let port = lo + (uuid::Uuid::new_v4().as_u128() % span) as u16;
            if given.contains(&port) {
                continue;
            }
            if StdListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no port not given out before in 1000 tries")
}

// ---------------------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------------------

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

struct OriginState {
    seen: Mutex<Vec<Seen>>,
    /// Gated requests wait for a permit here before finishing their body.
    gate: Semaphore,
    /// Gated requests that have sent their first chunk and are waiting.
    gated: watch::Sender<usize>,
    /// Per user, stream ids whose request is being served right now, and the most ever.
    live: Mutex<HashMap<String, HashMap<String, usize>>>,
    max_live_per_user: Mutex<HashMap<String, usize>>,
    served: AtomicUsize,
}

/// The content server behind the proxy. Paths choose behaviour:
/// - `.../fail`: `500`;
/// - `.../status?code=N`: `N` with a short body;
/// - `.../gate`: `200` chunked, sends `first`, waits for [`Origin::open_gate`], sends `last`;
/// - `.../slow?chunks=N&ms=M`: `200` chunked, N chunks M ms apart;
/// - `.../reset`: promises 100000 bytes, sends 10, closes;
/// - `.../hang`: reads the request and never answers;
/// - `.../big?bytes=N`: `200` with an N-byte body;
/// - anything else: `200` `ok <path>`.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(OriginState {
            seen: Mutex::default(),
            gate: Semaphore::new(0),
            gated: watch::channel(0).0,
            live: Mutex::default(),
            max_live_per_user: Mutex::default(),
            served: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve_conn(sock, st).await;
                });
            }
        });
        Origin { addr, state, task }
    }

    /// Every request the origin has received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Let `n` gated requests finish.
    pub fn open_gate(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// Wait until `n` gated requests are waiting at the gate (bounded: 10 s).
    pub async fn wait_gated(&self, n: usize) {
        let mut rx = self.state.gated.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v >= n))
            .await
            .expect("gated requests did not arrive in 10 s")
            .expect("origin gone");
    }

    /// The most streams of one user the origin ever served at the same moment.
    pub fn max_concurrent(&self, user: &str) -> usize {
        self.state
            .max_live_per_user
            .lock()
            .unwrap()
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    pub fn max_concurrent_any(&self) -> usize {
        self.state
            .max_live_per_user
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }

    /// How many of `user`'s streams the origin is serving right now.
    pub fn live_streams(&self, user: &str) -> usize {
        self.state
            .live
            .lock()
            .unwrap()
            .get(user)
            .map_or(0, |streams| streams.values().filter(|&&n| n > 0).count())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Marks one request of (user, stream) as being served, for the concurrency view.
struct LiveMark {
    state: Arc<OriginState>,
    user: String,
    stream: String,
}

impl LiveMark {
    fn new(state: &Arc<OriginState>, seen: &Seen) -> Option<LiveMark> {
        let user = seen.headers.get("session-id")?.clone();
        let stream = seen.headers.get("stream-id")?.clone();
        let mut live = state.live.lock().unwrap();
        let streams = live.entry(user.clone()).or_default();
        *streams.entry(stream.clone()).or_default() += 1;
        let n = streams.len();
        let mut max = state.max_live_per_user.lock().unwrap();
        let m = max.entry(user.clone()).or_default();
        *m = (*m).max(n);
        Some(LiveMark {
            state: state.clone(),
            user,
            stream,
        })
    }
}

impl Drop for LiveMark {
    fn drop(&mut self) {
        let mut live = self.state.live.lock().unwrap();
        if let Some(streams) = live.get_mut(&self.user) {
            if let Some(c) = streams.get_mut(&self.stream) {
                *c -= 1;
                if *c == 0 {
                    streams.remove(&self.stream);
                }
            }
        }
    }
}

fn query(path: &str, key: &str) -> Option<u64> {
    let q = path.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// One request head read off a connection, for the harness's origins: method, target,
/// and headers (names lowercased). `None` when the client closed the connection.
pub async fn read_head(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<(String, String, HashMap<String, String>)>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some((method, target, headers)))
}

async fn serve_conn(sock: TcpStream, st: Arc<OriginState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(sock);
    loop {
        let Some((method, path, headers)) = read_head(&mut reader).await? else {
            return Ok(());
        };
        if let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let mut body = vec![0u8; len as usize];
            reader.read_exact(&mut body).await?;
        }
        let seen = Seen {
            method,
            path: path.clone(),
            headers,
        };
        st.seen.lock().unwrap().push(seen.clone());
        st.served.fetch_add(1, Ordering::SeqCst);
        let _mark = LiveMark::new(&st, &seen);
        let sock = reader.get_mut();
        let bare = path.split('?').next().unwrap_or("");
        if bare.ends_with("/fail") || bare.ends_with("/status") {
            let code = query(&path, "code").unwrap_or(500);
            let body = "origin failure";
            let resp = format!(
                "HTTP/1.1 {code} Origin Says\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await?;
        } else if bare.ends_with("/gate") {
            sock.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await?;
            sock.flush().await?;
            st.gated.send_modify(|v| *v += 1);
            let permit = st.gate.acquire().await.map_err(std::io::Error::other)?;
            permit.forget();
            sock.write_all(b"4\r\nlast\r\n0\r\n\r\n").await?;
        } else if bare.ends_with("/slow") {
            let chunks = query(&path, "chunks").unwrap_or(5);
            let ms = query(&path, "ms").unwrap_or(50);
            sock.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            for i in 0..chunks {
                let c = format!("chunk{i};");
                sock.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
                    .await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            sock.write_all(b"0\r\n\r\n").await?;
        } else if bare.ends_with("/reset") {
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")
                .await?;
            sock.flush().await?;
            return Ok(());
        } else if bare.ends_with("/hang") {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Ok(());
        } else if bare.ends_with("/big") {
            let n = query(&path, "bytes").unwrap_or(1 << 20) as usize;
            sock.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())
                .await?;
            let chunk = vec![b'v'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                sock.write_all(&chunk[..k]).await?;
                left -= k;
            }
        } else {
            let body = format!("ok {bare}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Origin: test\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await?;
        }
        sock.flush().await?;
    }
}

// ---------------------------------------------------------------------------------------
// Proxy
// ---------------------------------------------------------------------------------------

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

/// 200 concurrent opens for one user, alternating between the proxies: (admitted, refused).
pub async fn crowd(proxies: &[&Proxy], user: &str) -> (usize, usize) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let p = proxies[i % proxies.len()];
            let client = p.client.clone();
            let url = p.url("/watch/slow?chunks=2&ms=10");
            let user = user.to_string();
            tokio::spawn(async move {
                let r = client
                    .get(url)
                    .header("Session-Id", user)
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                s
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            401 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, refused)
}

/// The `Stream-Id` a response carries.
pub fn stream_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("stream-id")
        .expect("response has a Stream-Id")
        .to_str()
        .unwrap()
        .to_string()
}

/// The `Retry-After` of a refusal, in seconds.
pub fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .expect("ASCII Retry-After")
        .parse()
        .expect("whole seconds")
}

/// The JSON body of a response the proxy answered itself, checking its content type.
pub async fn json_body(r: reqwest::Response) -> serde_json::Value {
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(ct, "application/json", "proxy answers are JSON");
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Issue #16 item 1, on any store: three rounds of "open three streams on a slow 10 s body
/// through `open_on`, `DELETE` each through `delete_on`". Each ended stream's response is
/// cut (the client's body ends in an error long before 10 s), the origin stops serving it,
/// and the origin never serves the user more than the limit (3) at once.
pub async fn ending_streams_cuts_their_responses(
    origin: &Origin,
    open_on: &Proxy,
    delete_on: &Proxy,
) {
    let user = "cut-me";
    for round in 0..3 {
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let r = open_on
                .watch("/watch/slow?chunks=100&ms=100", user, None)
                .await;
            assert_eq!(r.status(), 200, "round {round}: the slot was free again");
            bodies.push(r);
        }
        let started = std::time::Instant::now();
        for r in &bodies {
            let d = delete_on.delete(user, &stream_id(r)).await;
            let st = d.status();
            assert_eq!(st, 204, "{}", d.text().await.unwrap());
        }
        for mut r in bodies {
            let mut read = 0;
            let cut = loop {
                match r.chunk().await {
                    Ok(Some(c)) => read += c.len(),
                    Ok(None) => break false,
                    Err(_) => break true,
                }
            };
            assert!(
                cut,
                "round {round}: the whole body was served ({read} bytes)"
            );
        }
        // Within seconds, not the body's 10 (generous for a loaded debug build; the cut
        // itself comes at the next 100 ms chunk).
        let deadline = started + Duration::from_secs(5);
        while origin.live_streams(user) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the origin still serves an ended stream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        origin.max_concurrent(user) <= 3,
        "the origin served {} bodies to one user at once",
        origin.max_concurrent(user)
    );
}

/// Send raw bytes and read whatever comes back until the peer closes or `within` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// See [`Proxy::metric`]: `text` is a Prometheus text exposition.
pub fn sum_series(text: &str, series: &str) -> f64 {
    fn split(s: &str) -> (&str, Vec<&str>) {
        match s.split_once('{') {
            Some((name, labels)) => (
                name,
                labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .collect(),
            ),
            None => (s, Vec::new()),
        }
    }
    let (name, want) = split(series);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (s, value) = l.rsplit_once(' ')?;
            let (n, labels) = split(s);
            (n == name && want.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
