//! The binary as an operator meets it: `--check`, bad config files, and the demo.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

fn streamgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_streamgate"))
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// Run `--check` on `text`: (exit code, stdout, stderr).
fn check(text: &str, extra: &[&str]) -> (i32, String, String, String) {
    let f = write_config(text);
    let out = streamgate()
        .arg("--check")
        .arg("--config")
        .arg(f.path())
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        f.path().display().to_string(),
    )
}

const VALID: &str = "[upstream]\naddrs = [\"127.0.0.1:8080\"]\n";

#[test]
fn check_accepts_the_shipped_config() {
    let out = streamgate()
        .args(["--check", "--config", "conf/streamgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn bad_files_give_one_line_naming_file_and_key_and_exit_2() {
    for (text, key) in [
        (format!("{VALID}[streams]\nlimt = 3\n"), "streams.limt"),
        (
            format!("{VALID}[streams]\nlease_ttl = \"forever\"\n"),
            "streams.lease_ttl",
        ),
        (format!("{VALID}[streams]\nlimit = 0\n"), "streams.limit"),
        (format!("{VALID}[streams]\nlimit = -1\n"), "streams.limit"),
        ("[streams]\nlimit = 2\n".to_string(), "upstream"),
        (format!("{VALID}[store]\nkind = \"disk\"\n"), "store.kind"),
        ("this is not toml".to_string(), "line 1"),
        // Issue #16 item 11: configs that pass a form check but cannot work.
        ("[upstream]\naddrs = [\"127.0.0.1:0\"]\n".to_string(), "upstream.addrs"),
        ("[upstream]\naddrs = [\"origin.internal:0\"]\n".to_string(), "upstream.addrs"),
        (format!("{VALID}[streams]\nroutes = [\"/wa\\u0000tch\"]\n"), "streams.routes"),
        (format!("{VALID}[streams]\nroutes = [\"/watch;x\"]\n"), "streams.routes"),
        (format!("{VALID}[streams]\nstream_id_header = \"Host\"\n"), "streams.stream_id_header"),
        (format!("{VALID}[identity]\nheader = \"transfer-encoding\"\n"), "identity.header"),
        (format!("{VALID}[identity]\nheader = \"Connection\"\n"), "identity.header"),
        (format!("{VALID}[server]\nthreads = 100000\n"), "server.threads"),
        // Item 10: an address listened on twice.
        (format!("{VALID}[server]\nlisten = [\"127.0.0.1:8000\", \"127.0.0.1:8000\"]\n"), "server.listen"),
        (format!("{VALID}[server]\nlisten = [\"0.0.0.0:8000\"]\n[metrics]\nlisten = \"127.0.0.1:8000\"\n"), "metrics.listen"),
        (format!("{VALID}[server]\nlisten = [\"[::]:8000\"]\n[metrics]\nlisten = \"127.0.0.1:8000\"\n"), "metrics.listen"),
        (format!("{VALID}[server]\nlisten = [\"127.0.0.1:0\"]\n"), "server.listen"),
        // Issue #12: JWT identity without keys, with a key file that is none, with `none`.
        (format!("{VALID}[identity]\nmode = \"jwt\"\n"), "identity.jwt"),
        (format!("{VALID}[identity]\nmode = \"jwt\"\njwt.keys = [{{ kid = \"a\", file = \"/etc/hostname\" }}]\n"), "identity.jwt.keys[0].file"),
        (format!("{VALID}[identity]\nmode = \"jwt\"\njwt.jwks_file = \"/nonexistent\"\n"), "identity.jwt.jwks_file"),
        (format!("{VALID}[identity]\nmode = \"jwt\"\njwt.jwks_file = \"/x\"\njwt.algorithms = [\"none\"]\n"), "identity.jwt.algorithms"),
        (format!("{VALID}[identity]\nmode = \"jwt\"\njwt.jwks_url = \"ftp://login/keys\"\n"), "identity.jwt.jwks_url"),
        (format!("{VALID}[identity]\nmode = \"jwt\"\njwt.jwks_url = \"not a url\"\n"), "identity.jwt.jwks_url"),
        (format!("{VALID}[identity]\nmode = \"jwt\"\njwt.jwks_url = \"https://login/keys\"\njwt.jwks_refresh = \"1h\"\njwt.jwks_max_stale = \"10m\"\n"), "identity.jwt.jwks_max_stale"),
        (format!("{VALID}[identity]\nmode = \"jwt\"\njwt.jwks_url = \"https://login/keys\"\njwt.jwks_refresh = \"100ms\"\n"), "identity.jwt.jwks_refresh"),
        (format!("{VALID}[streams]\ndefault_plan = \"gold\"\n"), "streams.default_plan"),
        // Issue #13: the admin API needs a write token, its own address, and tokens that load.
        (format!("{VALID}[admin]\nlisten = \"127.0.0.1:9092\"\n"), "admin.write_token_file"),
        (format!("{VALID}[admin]\nlisten = \"127.0.0.1:9091\"\nwrite_token_env = \"SG_NOPE\"\n"), "admin.listen"),
        (format!("{VALID}[admin]\nlisten = \"127.0.0.1:9092\"\nwrite_token_env = \"SG_TEST_ADMIN_UNSET\"\n"), "admin.write_token_env"),
        (format!("{VALID}[admin]\nlisten = \"127.0.0.1:9092\"\nwrite_token_file = \"/nonexistent\"\n"), "admin.write_token_file"),
        (format!("{VALID}[plans.gold]\n"), "plans.gold"),
    ] {
        let (code, stdout, stderr, file) = check(&text, &[]);
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.contains(&file), "names the file: {stderr}");
        assert!(stderr.contains(key), "names {key}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

/// Issue #12: with JWT identity a `401` at the limit reads as "refresh your token" to OAuth
/// clients; `--check` says so (and still passes).
#[test]
fn check_warns_about_401_at_the_limit_with_jwt_identity() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, [b'k'; 32]).unwrap();
    let jwt = format!(
        "{VALID}[identity]\nmode = \"jwt\"\njwt.algorithms = [\"HS256\"]\njwt.hmac_secret_file = \"{}\"\n",
        secret.display()
    );
    let (code, _, stderr, _) = check(&jwt, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: streams.limit_status = 401"),
        "{stderr}"
    );
    let (code, _, stderr, _) = check(&format!("{jwt}[streams]\nlimit_status = 429\n"), &[]);
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn bad_values_are_not_echoed() {
    let (code, _, stderr, _) = check("[upstream]\naddrs = [\"s3cret-host-name:notaport\"]\n", &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("upstream.addrs"));
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn unreadable_file_exits_2() {
    let out = streamgate()
        .args(["--check", "--config", "/nonexistent/streamgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1);
    assert!(stderr.contains("/nonexistent/streamgate.toml"));
}

/// Item 11: a FIFO given as the config file used to block `--check` forever.
#[test]
fn a_config_that_is_not_a_regular_file_exits_2_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("streamgate.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path in our own temporary directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut child = streamgate()
        .arg("--check")
        .arg("--config")
        .arg(&fifo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr) = finished(&mut child, "--check on a FIFO still running after 10 s");
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

/// Item 10: a listen address already taken is one line naming the key and the address,
/// and exit code 2, instead of a panicking proxy thread beside a live metrics listener.
#[test]
fn a_taken_listen_address_exits_2_naming_key_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = write_config(&format!(
        "[server]\nlisten = [\"{addr}\"]\n[upstream]\naddrs = [\"127.0.0.1:9\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    ));
    let mut child = serve(config.path(), "warn", Stdio::piped());
    let (status, stderr) = finished(
        &mut child,
        "still running after 10 s with its address taken",
    );
    assert_eq!(status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.listen"), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    drop(taken);
}

#[test]
fn flags_override_the_file_and_are_validated_too() {
    let (code, _, stderr, _) = check(VALID, &["--limit", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("streams.limit"), "{stderr}");
    let (code, _, stderr, _) = check(VALID, &["--listen", "nowhere"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("server.listen"), "{stderr}");
    let (code, _, _, _) = check(VALID, &["--limit", "5", "--upstream", "127.0.0.1:9"]);
    assert_eq!(code, 0);
}

/// Start the binary on `config` with this `RUST_LOG`, stdout discarded.
fn serve(config: &std::path::Path, rust_log: &str, stderr: Stdio) -> std::process::Child {
    streamgate()
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Wait until `/health` answers 200 on a fresh connection (15 s at most).
async fn until_healthy(listen: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while health_on_a_new_connection(listen).await != 200 {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait (10 s at most, then kill it and fail with `what`) for `child` to exit: its status
/// and what it wrote to stderr (piped).
fn finished(child: &mut std::process::Child, what: &str) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// Kills the child it holds (by PID, through `Child`) when dropped.
struct Running(std::process::Child);

impl Running {
    /// Send `sig` to our own child.
    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.0.id()).unwrap();
        // SAFETY: signals our own child process, which is still running (not yet waited for).
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Wait (bounded) for the child to exit.
    async fn exited_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_readme_sequence() {
    let listen = format!("127.0.0.1:{}", free_port());
    let origin = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let _child = Running(
        streamgate()
            .args([
                "demo",
                "--listen",
                &listen,
                "--origin",
                &origin,
                "--metrics",
                &metrics,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/watch");
    let deadline = Instant::now() + Duration::from_secs(15);
    while client
        .get(format!("http://{listen}/health"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "demo did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = client
            .get(&url)
            .header("Session-Id", "abc")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 401]);
    let m = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("streamgate_active_streams 3"), "{m}");
}

/// `GET /health` on a fresh connection: the status, or 0 when no answer came.
async fn health_on_a_new_connection(listen: &str) -> u16 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match client.get(format!("http://{listen}/health")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_takes_the_sockets_over_without_refusing_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = write_config(&format!(
        "[server]\nlisten = [\"{listen}\"]\nupgrade_sock = \"{}\"\ngrace_period = \"0s\"\n\
         graceful_shutdown_timeout = \"1s\"\n[upstream]\naddrs = [\"127.0.0.1:9\"]\n\
         [metrics]\nlisten = \"{metrics}\"\n",
        sock.display()
    ));
    let start = |extra: &[&str]| {
        streamgate()
            .arg("--config")
            .arg(config.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut old = Running(start(&[]));
    until_healthy(&listen, "the first instance did not start").await;

    // Health checks on fresh connections run through the whole handover.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let checker = tokio::spawn({
        let listen = listen.clone();
        async move {
            let mut answers = Vec::new();
            while !*stopped.borrow() && answers.len() < 20_000 {
                answers.push(health_on_a_new_connection(&listen).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        }
    });

    let _new = Running(start(&["--upgrade"]));
    // The new process binds the upgrade socket and waits there for the listeners.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new instance never waited for the sockets"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    old.signal(libc::SIGQUIT);

    // The old process hands its sockets over, drains, and exits cleanly.
    let status = old.exited_within(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    // Only the new process is left to answer, on the same sockets.
    assert_eq!(health_on_a_new_connection(&listen).await, 200);
    let m = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(m.status(), 200, "the metrics listener moved over too");

    stop.send(true).unwrap();
    let answers = checker.await.unwrap();
    assert!(answers.len() > 10, "too few checks ran: {}", answers.len());
    assert!(
        answers.iter().all(|&s| s == 200),
        "a health check failed during the handover: {:?}",
        answers.iter().filter(|&&s| s != 200).count()
    );
}

/// Issue #16 item 8 (and 9): a `SIGTERM` keeps accepting for `grace_period` with `/ready`
/// failing, then serves the stream in flight to its end and exits as soon as it has, well
/// before `graceful_shutdown_timeout`. `SIGHUP` and `SIGUSR1/2` no longer kill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_stream_in_flight_and_exits_once_it_ends() {
    let origin = common::Origin::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(&format!(
        "[server]\nlisten = [\"{listen}\"]\ngrace_period = \"2s\"\n\
         graceful_shutdown_timeout = \"20s\"\n[upstream]\naddrs = [\"{}\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n",
        origin.addr,
        free_port()
    ));
    let mut proxy = Running(serve(config.path(), "warn", Stdio::null()));
    until_healthy(&listen, "the proxy did not start").await;
    for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        proxy.signal(sig);
        assert_eq!(
            health_on_a_new_connection(&listen).await,
            200,
            "signal {sig} stopped the proxy"
        );
    }
    assert!(proxy.0.try_wait().unwrap().is_none());

    // A 4 s stream (40 chunks, 100 ms apart) is under way when the SIGTERM comes.
    let client = reqwest::Client::new();
    let mut stream = client
        .get(format!("http://{listen}/watch/slow?chunks=40&ms=100"))
        .header("Session-Id", "drain-user")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().expect("a first chunk");
    proxy.signal(libc::SIGTERM);
    let stopping = Instant::now();

    // During grace_period new connections are still served, and /ready sends load
    // balancers elsewhere.
    let ready = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let r = ready
            .get(format!("http://{listen}/ready"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "/ready never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        answer.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "draining");

    // The stream in flight is served to its end.
    let mut body = first.to_vec();
    while let Some(c) = stream.chunk().await.unwrap() {
        body.extend_from_slice(&c);
    }
    let body = String::from_utf8(body).unwrap();
    assert_eq!(body.matches("chunk").count(), 40, "{body}");

    // And the process exits once it is, not at graceful_shutdown_timeout.
    let status = proxy.exited_within(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    eprintln!("exited {:?} after the SIGTERM", stopping.elapsed());
}

/// Issue #16 item 12: a session id is a bearer credential. Access lines carry a keyed hash
/// of it (the same for one user's lines), never the id itself; answers do not echo it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_answers_never_show_the_session_id() {
    let origin = common::Origin::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(&format!(
        "[server]\nlisten = [\"{listen}\"]\n[upstream]\naddrs = [\"{}\"]\n[streams]\nlimit = 1\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n",
        origin.addr,
        free_port()
    ));
    let mut proxy = Running(serve(config.path(), "info", Stdio::piped()));
    until_healthy(&listen, "the proxy did not start").await;
    const SECRET: &str = "secret-session-4f1d";
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("http://{listen}{path}"))
            .header("Session-Id", SECRET)
            .send()
    };
    let admitted = get("/watch/a.ts").await.unwrap();
    assert_eq!(admitted.status(), 200);
    assert!(admitted.headers().get("session-id").is_none());
    let refused = get("/watch/b.ts?other").await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(!refused.text().await.unwrap().contains(SECRET));
    // Item 13: a signed-URL token in the query of a request whose proxying fails (the
    // origin dies mid-body) stays out of the error line, and a player that hangs up
    // mid-body is not an ERROR.
    let other = |path: &str, user: &str| {
        client
            .get(format!("http://{listen}{path}"))
            .header("Session-Id", user)
            .send()
    };
    let broken = other("/watch/reset?token=SIGNED-URL-TOKEN", "u2")
        .await
        .unwrap();
    assert!(broken.bytes().await.is_err(), "the body was cut");
    let mut hung_up = other("/watch/slow?chunks=50&ms=20", "u3").await.unwrap();
    assert!(hung_up.chunk().await.unwrap().is_some());
    drop(hung_up);
    // The origin learns the client left once the proxy stops writing; its live count of
    // requests for u3 then drops to zero.
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.live_streams("u3") > 0 {
        assert!(
            Instant::now() < deadline,
            "the abort never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.signal(libc::SIGINT);
    proxy.exited_within(Duration::from_secs(10)).await;
    let mut log = String::new();
    std::io::Read::read_to_string(&mut proxy.0.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        !log.contains(SECRET),
        "the session id reached the log:\n{log}"
    );
    assert!(
        !log.contains("SIGNED-URL-TOKEN"),
        "a query reached the log:\n{log}"
    );
    assert!(
        log.contains("proxy failed: ") && log.contains("path=/watch/reset"),
        "the failure has its own line:\n{log}"
    );
    assert!(!log.contains("ERROR"), "nothing here is an ERROR:\n{log}");
    let users: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("path=/watch/a.ts") || l.contains("path=/watch/b.ts"))
        .filter_map(|l| l.split(" user=").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(users.len(), 2, "{log}");
    assert_eq!(users[0], users[1], "one user, one tag: {log}");
    assert_eq!(users[0].len(), 12, "{log}");
}

/// Issue #16 item 7: a wrong Redis password is said as such, once at start and in
/// `/ready`'s body, and the password itself appears nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_is_reported_as_authentication_failed() {
    let redis = common::redis_server::RedisServer::start();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("the-right-one")
        .query(&mut redis.connection())
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(&format!(
        "[server]\nlisten = [\"{listen}\"]\n[upstream]\naddrs = [\"127.0.0.1:9\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n[store]\nkind = \"redis\"\n\
         url = \"redis://:Wr0ng-Passw0rd@127.0.0.1:{}\"\n",
        free_port(),
        redis.port
    ));
    let mut proxy = Running(serve(config.path(), "warn", Stdio::piped()));
    until_healthy(&listen, "the proxy did not start").await;
    let ready = reqwest::get(format!("http://{listen}/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("authentication failed"), "{body}");
    assert!(!body.contains("Wr0ng"), "{body}");

    proxy.signal(libc::SIGINT);
    proxy.exited_within(Duration::from_secs(10)).await;
    let mut log = String::new();
    std::io::Read::read_to_string(&mut proxy.0.stderr.take().unwrap(), &mut log).unwrap();
    assert!(!log.contains("Wr0ng"), "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("health check") && l.contains("authentication failed"))
        .collect();
    assert_eq!(lines.len(), 1, "one line at start: {log}");
}

/// Issue #16 items 14 and 9: the access log to a file, as JSON; `SIGUSR1` reopens it after
/// a rotation (the old file keeps what was written before, the new one gets the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_to_a_file_in_json_reopens_on_sigusr1() {
    let origin = common::Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(&format!(
        "[server]\nlisten = [\"{listen}\"]\n[upstream]\naddrs = [\"{}\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n[log]\naccess = \"{}\"\nformat = \"json\"\n",
        origin.addr,
        free_port(),
        file.display()
    ));
    let mut proxy = Running(serve(config.path(), "warn", Stdio::null()));
    until_healthy(&listen, "the proxy did not start").await;
    let lines_of = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let watched = |path: &'static str| {
        let listen = listen.clone();
        async move {
            reqwest::Client::new()
                .get(format!("http://{listen}{path}"))
                .header("Session-Id", "json-user")
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(watched("/watch/before.ts").await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines_of(&file)
        .iter()
        .any(|l| l["path"] == "/watch/before.ts")
    {
        assert!(Instant::now() < deadline, "the line never reached the file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = lines_of(&file)
        .into_iter()
        .find(|l| l["path"] == "/watch/before.ts")
        .unwrap();
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "watch");
    assert_eq!(line["decision"], "admitted");
    assert_eq!(line["user"].as_str().map(str::len), Some(12));

    // logrotate: move the file away, then SIGUSR1.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    proxy.signal(libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(Instant::now() < deadline, "SIGUSR1 did not reopen the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(watched("/watch/after.ts").await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines_of(&file)
        .iter()
        .any(|l| l["path"] == "/watch/after.ts")
    {
        assert!(Instant::now() < deadline, "no line in the reopened file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!lines_of(&rotated)
        .iter()
        .any(|l| l["path"] == "/watch/after.ts"));
    assert!(
        proxy.0.try_wait().unwrap().is_none(),
        "SIGUSR1 did not stop it"
    );
}

#[cfg(not(feature = "tls"))]
#[test]
fn https_listeners_need_the_tls_feature() {
    let text = format!("{VALID}[tls]\nlisten = [\"127.0.0.1:8443\"]\n");
    let (code, _, stderr, _) = check(&text, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("tls.listen"), "{stderr}");
    assert!(stderr.contains("--features tls"), "{stderr}");
}

#[cfg(feature = "tls")]
#[test]
fn bad_tls_files_are_config_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    common::certs::make_certs(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    let tls = |cert: &str, key: &str| {
        format!("{VALID}[tls]\nlisten = [\"127.0.0.1:8443\"]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n")
    };
    let (code, _, stderr, _) = check(&tls(&file("server.crt"), &file("server.key")), &[]);
    assert_eq!(code, 0, "a good pair is accepted: {stderr}");
    let https_only = format!(
        "[server]\nlisten = []\n{}",
        tls(&file("server.crt"), &file("server.key"))
    );
    let (code, _, stderr, _) = check(&https_only, &[]);
    assert_eq!(code, 0, "HTTPS alone is enough: {stderr}");
    let (code, _, stderr, _) = check(&format!("[server]\nlisten = []\n{VALID}"), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("server.listen"), "{stderr}");
    for (text, key) in [
        (
            format!("{VALID}[tls]\nlisten = [\"127.0.0.1:8443\"]\n"),
            "tls.cert_file",
        ),
        (
            tls(&file("missing.crt"), &file("server.key")),
            "tls.cert_file",
        ),
        (
            tls(&file("garbage.pem"), &file("server.key")),
            "tls.cert_file",
        ),
        (
            tls(&file("server.crt"), &file("garbage.pem")),
            "tls.key_file",
        ),
        // A real key, but the CA's, not the certificate's.
        (tls(&file("server.crt"), &file("ca.key")), "tls.key_file"),
        (
            format!("{VALID}[tls]\nlisten = [\"nowhere\"]\n"),
            "tls.listen",
        ),
    ] {
        let (code, stdout, stderr, _) = check(&text, &[]);
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.contains(key), "names {key}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A child's stderr, read line by line on a thread (so the child never blocks on a full
/// pipe), and awaited for a line.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut std::process::Child) -> Lines {
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line containing every one of `words` (10 s at most).
    async fn until(&self, words: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.0.try_recv() {
                Ok(line) if words.iter().all(|w| line.contains(w)) => return line,
                Ok(_) => continue,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "no log line with {words:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("the log ended before a line with {words:?}: {e}"),
            }
        }
    }
}

/// Issue #16 item 9: `SIGHUP` re-reads the config file. The limit, the routes, the lease
/// TTL and the log level change at once, while a stream plays on uncut; a changed setting
/// that cannot change live (`server.threads`) is named in one line and kept; a bad file
/// is one line naming file and key, and the running config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_what_can_change_live_and_names_what_cannot() {
    let origin = common::Origin::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let head = format!(
        "[upstream]\naddrs = [\"{}\"]\n[log]\naccess = \"off\"\n{{log}}\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n\
         [server]\nlisten = [\"{listen}\"]\ngrace_period = \"0s\"\n{{server}}\n",
        origin.addr,
        free_port()
    );
    let file = |log: &str, server: &str, streams: &str| {
        head.replace("{log}", log).replace("{server}", server) + "[streams]\n" + streams
    };
    let config = write_config(&file("", "", "limit = 1\nlease_ttl = \"60s\"\n"));
    let mut child = streamgate()
        .arg("--config")
        .arg(config.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(&mut child);
    let proxy = Running(child);
    until_healthy(&listen, "the proxy did not start").await;

    let client = reqwest::Client::new();
    let open = |path: &str, user: &str| {
        client
            .get(format!("http://{listen}{path}"))
            .header("Session-Id", user)
            .send()
    };
    // A 3 s stream plays through every reload below.
    let mut slow = open("/watch/slow?chunks=30&ms=100", "slow").await.unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(open("/watch/a", "u").await.unwrap().status(), 200);
    assert_eq!(
        open("/watch/b", "u").await.unwrap().status(),
        401,
        "limit 1"
    );
    assert_eq!(
        open("/live/a", "u").await.unwrap().status(),
        200,
        "not a route yet"
    );

    let write = |text: String| std::fs::write(config.path(), text).unwrap();
    write(file(
        "level = \"debug\"",
        "threads = 2",
        "limit = 2\nroutes = [\"/watch\", \"/live\"]\nlease_ttl = \"1s\"\n",
    ));
    proxy.signal(libc::SIGHUP);
    let applied = lines.until(&["SIGHUP: applied"]).await;
    for key in [
        "streams.limit",
        "streams.routes",
        "streams.lease_ttl",
        "log.level",
    ] {
        assert!(applied.contains(key), "{applied}");
    }
    let kept = lines.until(&["server.threads", "--upgrade"]).await;
    assert!(!kept.contains("streams."), "{kept}");

    // The new limit and route: a second stream now, and /live is counted.
    assert_eq!(
        open("/watch/b", "u").await.unwrap().status(),
        200,
        "limit 2"
    );
    assert_eq!(
        open("/live/b", "u").await.unwrap().status(),
        401,
        "/live counted"
    );
    // The new TTL: the stream opened under it ends a second after its request (the
    // one opened before the reload keeps its 60 s).
    let deadline = Instant::now() + Duration::from_secs(8);
    while open("/live/b", "u").await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the 1 s lease did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new level: debug lines now appear.
    lines.until(&[" DEBUG "]).await;

    // A bad file changes nothing, in one line naming file and key.
    write(file("", "", "limit = \"many\"\n"));
    proxy.signal(libc::SIGHUP);
    let refused = lines.until(&["SIGHUP:", "streams.limit"]).await;
    assert!(
        refused.contains(&config.path().display().to_string()),
        "{refused}"
    );
    assert!(refused.contains("the running config is kept"), "{refused}");
    assert_eq!(open("/watch/1", "v").await.unwrap().status(), 200);
    assert_eq!(open("/watch/2", "v").await.unwrap().status(), 200);
    assert_eq!(
        open("/watch/3", "v").await.unwrap().status(),
        401,
        "still 2"
    );

    // The stream that played through it all was never cut.
    let mut body = Vec::new();
    while let Some(c) = slow.chunk().await.unwrap() {
        body.extend_from_slice(&c);
    }
    assert_eq!(
        String::from_utf8(body).unwrap().matches("chunk").count(),
        30
    );
    assert!(health_on_a_new_connection(&listen).await == 200);
}
