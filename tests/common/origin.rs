//! The content server behind the test proxy: a real HTTP/1.1 origin on raw tokio
//! sockets, so that tests can make it slow, gated, failing, resetting or hanging.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

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
        Self::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    /// An origin on `addr`: the address of one that was stopped, to bring it back.
    /// Dropping an origin stops it whole: its listener and every connection it holds.
    pub async fn start_at(addr: SocketAddr) -> Origin {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
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
            // Owned here, so aborting this task closes every connection too.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                conns.spawn(async move {
                    let _ = serve_conn(sock, st).await;
                });
                while conns.try_join_next().is_some() {}
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
