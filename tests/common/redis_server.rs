//! Real `redis-server` processes for the shared-store tests: each on a free loopback port,
//! no persistence, stopped (by its own PID, through `Child`) when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::make_certs;
use super::free_port;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cluster: bool,
    /// With TLS: the password and the CA that signed the server's certificate.
    tls: Option<Tls>,
}

#[derive(Clone)]
pub struct Tls {
    pub password: String,
    pub ca_pem: Vec<u8>,
    pub ca_file: std::path::PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::spawn(None, false)
    }

    /// A server that speaks only TLS (certificate signed by a throwaway CA) and wants a
    /// password.
    pub fn start_tls(password: &str) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        make_certs(dir.path());
        Self::spawn_in(None, false, Some(password), dir)
    }

    /// On `port`, or on a free one when `None`.
    fn spawn(port: Option<u16>, cluster: bool) -> RedisServer {
        Self::spawn_in(port, cluster, None, tempfile::tempdir().expect("tempdir"))
    }

    /// Start redis-server in `dir`. A port picked here gets a few tries: between
    /// `free_port` and redis-server's own bind, another test (the soak tests open thousands
    /// of connections) may take it as a client port, and redis-server then exits.
    fn spawn_in(
        port: Option<u16>,
        cluster: bool,
        password: Option<&str>,
        dir: tempfile::TempDir,
    ) -> RedisServer {
        let tls = password.map(|pw| Tls {
            password: pw.to_string(),
            ca_pem: std::fs::read(dir.path().join("ca.crt")).unwrap(),
            ca_file: dir.path().join("ca.crt"),
        });
        let tries = if port.is_some() { 1 } else { 5 };
        let mut failures = Vec::new();
        for _ in 0..tries {
            let port = port.unwrap_or_else(free_port);
            let mut child = Self::command(port, cluster, password, dir.path())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            match wait_ping(port, tls.as_ref(), &mut child) {
                Ok(()) => {
                    return RedisServer {
                        port,
                        child: Some(child),
                        dir,
                        cluster,
                        tls,
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(e);
                }
            }
        }
        panic!("redis-server did not start: {failures:?}")
    }

    fn command(port: u16, cluster: bool, password: Option<&str>, dir: &std::path::Path) -> Command {
        let mut cmd = Command::new("redis-server");
        if let Some(pw) = password {
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
                .args(["--requirepass", pw]);
        } else {
            cmd.args(["--port", &port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .current_dir(dir)
            .arg("--dir")
            .arg(dir);
        if cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// The URL for one database (TLS servers: `rediss://` with the password).
    pub fn url_db(&self, db: u8) -> String {
        url_for(self.port, self.tls.as_ref(), db)
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub fn connection(&self) -> redis::Connection {
        self.connection_db(0)
    }

    pub fn connection_db(&self, db: u8) -> redis::Connection {
        client_for(self.url_db(db), self.tls.as_ref())
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to test redis")
    }

    /// Kill the server (as if it crashed).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a fresh server on the same port (its data is gone: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        let again = Self::spawn(Some(self.port), self.cluster);
        *self = again;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = &self.dir;
    }
}

/// A three-primary Redis Cluster created with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::spawn(None, true)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(out.status.success(), "cluster create failed: {out:?}");
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &self.nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut n.connection())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster did not become ok in 20 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

fn url_for(port: u16, tls: Option<&Tls>, db: u8) -> String {
    match tls {
        Some(t) => format!("rediss://:{}@127.0.0.1:{port}/{db}", t.password),
        None => format!("redis://127.0.0.1:{port}/{db}"),
    }
}

fn client_for(url: String, tls: Option<&Tls>) -> redis::Client {
    // rustls needs a process-wide crypto provider (the proxy installs the same one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tls {
        Some(t) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(t.ca_pem.clone()),
            },
        )
        .unwrap(),
        None => redis::Client::open(url).unwrap(),
    }
}

/// Wait (up to 10 s) until the server on `port` answers `PING`; an error at once if it
/// exited (its port was taken).
fn wait_ping(port: u16, tls: Option<&Tls>, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = client_for(url_for(port, tls, 0), tls);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("port {port}: redis-server exited ({status})"));
        }
        let attempt = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("port {port}: no answer in 10 s: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
