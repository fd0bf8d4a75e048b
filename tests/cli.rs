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

/// Kills the child it holds (by PID, through `Child`) when dropped.
struct Running(std::process::Child);

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
