//! The file's parsing and validation, key by key.

use std::time::Duration;

use super::*;

const MINIMAL: &str = "[upstream]\naddrs = [\"127.0.0.1:8080\"]\n";

fn err(text: &str) -> KeyError {
    Config::from_toml(text).expect_err("config should be refused")
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let c = Config::from_toml(MINIMAL).expect("valid");
    assert_eq!(c.server.listen, vec![addr("0.0.0.0:3001")]);
    assert_eq!(c.identity.header, "Session-Id");
    assert_eq!(c.streams.routes, vec!["/watch"]);
    assert_eq!(c.streams.limit, 3);
    assert_eq!(c.streams.lease_ttl, Duration::from_secs(60));
    assert_eq!(c.streams.stream_id_header, "Stream-Id");
    assert_eq!(c.store.kind, StoreKind::Memory);
    assert_eq!(
        c.store.backend,
        Backend::Memory {
            max_users: 1_000_000
        }
    );
    assert_eq!(c.metrics.listen, Some(addr("127.0.0.1:9091")));
    assert_eq!(c.server.read_buffer, 0);
    assert!(c.server.pipelining);
    assert!(c.upstream.forwarded_for);
}

#[test]
fn one_worker_runs_without_work_stealing() {
    let conf = |threads: usize| {
        let text = format!("[server]\nthreads = {threads}\nwork_stealing = true\n{MINIMAL}");
        Config::from_toml(&text)
            .expect("valid")
            .pingora_server_conf()
    };
    assert!(!conf(1).work_stealing);
    assert!(conf(2).work_stealing);
    assert_eq!(conf(2).threads, 2);
}

#[test]
fn shipped_config_is_valid() {
    let text = include_str!("../../conf/streamgate.toml");
    Config::from_toml(text).expect("conf/streamgate.toml must validate");
}

#[test]
fn unknown_key_is_named() {
    let e = err("[upstream]\naddrs = [\"127.0.0.1:1\"]\n[streams]\nlimt = 3\n");
    assert_eq!(e.key, "streams.limt");
    assert!(e.message.contains("unknown field"), "{}", e.message);
}

#[test]
fn bad_duration_is_named() {
    let e = err(&format!("{MINIMAL}[streams]\nlease_ttl = \"soon\"\n"));
    assert_eq!(e.key, "streams.lease_ttl");
}

#[test]
fn zero_limit_is_refused() {
    assert_eq!(
        err(&format!("{MINIMAL}[streams]\nlimit = 0\n")).key,
        "streams.limit"
    );
}

#[test]
fn wrong_type_is_named() {
    let e = err(&format!("{MINIMAL}[streams]\nlimit = \"three\"\n"));
    assert_eq!(e.key, "streams.limit");
}

#[test]
fn syntax_error_names_the_line() {
    let e = err("[upstream]\naddrs = [\"127.0.0.1:8080\"\n");
    assert!(e.key.starts_with("line "), "{e:?}");
}

#[test]
fn missing_upstream_is_refused() {
    assert_eq!(err("[streams]\nlimit = 2\n").key, "upstream");
}

#[test]
fn bad_values_are_named() {
    for (text, key) in [
        ("[server]\nlisten = [\"nowhere\"]\n", "server.listen"),
        ("[server]\nthreads = 0\n", "server.threads"),
        ("[server]\nread_buffer = 16777216\n", "server.read_buffer"),
        ("[server]\nupgrade_sock = \"\"\n", "server.upgrade_sock"),
        ("[identity]\nheader = \"bad header\"\n", "identity.header"),
        ("[streams]\nroutes = [\"watch\"]\n", "streams.routes"),
        ("[streams]\nroutes = [\"/\"]\n", "streams.routes"),
        ("[streams]\nlease_ttl = \"1ms\"\n", "streams.lease_ttl"),
        (
            "[streams]\nstream_id_header = \"session-id\"\n",
            "streams.stream_id_header",
        ),
        ("[store]\nkind = \"disk\"\n", "store.kind"),
        ("[store]\nkind = \"redis\"\n", "store.url"),
        (
            "[store]\nkind = \"redis\"\nurl = \"http://x\"\n",
            "store.url",
        ),
        ("[store]\nkind = \"redis-cluster\"\n", "store.nodes"),
        ("[store]\nprefix = \"a{b\"\n", "store.prefix"),
        ("[store]\ntimeout = \"0s\"\n", "store.timeout"),
        ("[store]\nrefusal_cache = \"11s\"\n", "store.refusal_cache"),
        ("[store]\nrefusal_cache = \"soon\"\n", "store.refusal_cache"),
        (
            "[store]\non_store_error = \"maybe\"\n",
            "store.on_store_error",
        ),
        ("[metrics]\nlisten = \"0.0.0.0:3001\"\n", "metrics.listen"),
        (
            "[upstream]\nconnect_timeout = \"0s\"\n",
            "upstream.connect_timeout",
        ),
    ] {
        let full = if text.starts_with("[upstream]") {
            format!("{text}addrs = [\"127.0.0.1:8080\"]\n")
        } else {
            format!("{MINIMAL}{text}")
        };
        assert_eq!(err(&full).key, key, "for {text:?}");
    }
}

/// Validation turns `kind` and the keys only that kind reads into one typed backend.
#[test]
fn the_store_kind_becomes_a_typed_backend() {
    let c = Config::from_toml(&format!("{MINIMAL}[store]\nmax_users = 7\n")).unwrap();
    assert_eq!(c.store.backend, Backend::Memory { max_users: 7 });
    let c = Config::from_toml(&format!(
        "{MINIMAL}[store]\nkind = \"redis-cluster\"\nnodes = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n"
    ))
    .unwrap();
    assert_eq!(
        c.store.backend,
        Backend::Cluster {
            nodes: vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ]
        }
    );
    assert!(c.store.backend.is_shared());
}

#[test]
fn redis_store_parses_and_never_prints_its_url() {
    let c = Config::from_toml(&format!(
        "{MINIMAL}[store]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379/0\"\ntimeout = \"50ms\"\non_store_error = \"allow\"\n"
    ))
    .unwrap();
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(
        c.store.backend,
        Backend::Redis {
            url: "redis://:hunter2@127.0.0.1:6379/0".into()
        }
    );
    assert_eq!(c.store.timeout, Duration::from_millis(50));
    assert_eq!(c.store.on_store_error, OnStoreError::Allow);
    assert!(!format!("{c:?}").contains("hunter2"));
    let e = err(&format!(
        "{MINIMAL}[store]\nkind = \"redis\"\nurl = \"redis://:hunter2@[bad\"\n"
    ));
    assert!(!e.message.contains("hunter2"));
}

#[test]
fn upstream_addresses_are_checked_without_dns() {
    for ok in [
        "origin.internal:8080",
        "127.0.0.1:80",
        "[::1]:8080",
        "localhost:1",
    ] {
        let text = format!("[upstream]\naddrs = [\"{ok}\"]\n");
        assert!(Config::from_toml(&text).is_ok(), "{ok}");
    }
    for bad in ["host:99999", "a b:80", ":80", "host", "host:", "[::1]"] {
        let text = format!("[upstream]\naddrs = [\"{bad}\"]\n");
        assert_eq!(err(&text).key, "upstream.addrs", "{bad}");
    }
}

#[test]
fn overrides_win_over_the_file() {
    let o = Overrides {
        listen: vec![addr("127.0.0.1:4000")],
        upstream: vec!["127.0.0.1:9000".into()],
        limit: Some(5),
        metrics: Some(addr("127.0.0.1:9999")),
    };
    let c = Config::parse(MINIMAL)
        .unwrap()
        .with_overrides(&o)
        .validate()
        .unwrap();
    assert_eq!(c.server.listen, vec![addr("127.0.0.1:4000")]);
    assert_eq!(c.upstream.addrs, vec![UpstreamAddr::from("127.0.0.1:9000")]);
    assert_eq!(c.streams.limit, 5);
    assert_eq!(c.metrics.listen, Some(addr("127.0.0.1:9999")));
}

#[test]
fn error_display_is_one_line_with_file_and_key() {
    let e = KeyError::new("streams.limit", "must be at least 1").in_file(Path::new("x.toml"));
    let s = e.to_string();
    assert_eq!(s, "x.toml: streams.limit: must be at least 1");
    assert!(!s.contains('\n'));
}

/// The shipped file shows the defaults it claims to: parsed, it is exactly
/// `Config::default()` plus its upstream (as Pingora pins its own in `test_default`).
#[test]
fn shipped_config_is_the_defaults_plus_its_upstream() {
    let shipped = Config::from_toml(include_str!("../../conf/streamgate.toml")).unwrap();
    let mut want = Config::default();
    want.upstream.addrs = vec!["127.0.0.1:8080".into()];
    assert_eq!(format!("{shipped:?}"), format!("{want:?}"));
}

fn addr(a: &str) -> std::net::SocketAddr {
    a.parse().unwrap()
}

#[test]
fn upstream_selection_weights_checks_and_tls_are_read_and_checked() {
    let c = Config::from_toml(
        "[upstream]\naddrs = [\"a.internal:80\", { addr = \"b.internal:80\", weight = 2 }]\n\
         selection = \"consistent\"\nhash_key = \"stream\"\nhost = \"media.example.com\"\n\
         [upstream.health_check]\nkind = \"http\"\npath = \"/healthz\"\n",
    )
    .expect("valid");
    let u = &c.upstream;
    assert_eq!(u.selection, Selection::Consistent);
    assert_eq!(u.hash_key, HashKey::Stream);
    assert_eq!(u.addrs[1].weight(), 2);
    let hc = u.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.kind, hc.path.as_str(), hc.expect_status),
        (CheckKind::Http, "/healthz", 200)
    );
    assert_eq!(
        (hc.interval, hc.healthy_after, hc.unhealthy_after),
        (Duration::from_secs(5), 2, 3)
    );
    assert_eq!(
        (u.unhealthy_after, u.eject_for),
        (3, Duration::from_secs(10))
    );
    assert_eq!(u.connect_tries(2), 2);
    for (text, key) in [
        (
            "addrs = [{ addr = \"a:80\", weight = 0 }]",
            "upstream.addrs",
        ),
        ("addrs = [\"a:80\", \"a:80\"]", "upstream.addrs"),
        (
            "addrs = [\"a:80\"]\nmax_connect_tries = 0",
            "upstream.max_connect_tries",
        ),
        ("addrs = [\"a:80\"]\nhost = \"a b\"", "upstream.host"),
        ("addrs = [\"a:80\"]\nca_file = \"/x\"", "upstream.ca_file"),
        (
            "addrs = [\"a:80\"]\n[upstream.health_check]\npath = \"x\"",
            "upstream.health_check.path",
        ),
        (
            "addrs = [\"a:80\"]\n[upstream.health_check]\nexpect_status = 42",
            "upstream.health_check.expect_status",
        ),
        (
            "addrs = [\"a:80\"]\n[upstream.health_check]\nhealthy_after = 0",
            "upstream.health_check.healthy_after",
        ),
        (
            "addrs = [\"a:80\"]\n[upstream.health_check]\ninterval = \"0s\"",
            "upstream.health_check.interval",
        ),
    ] {
        assert_eq!(err(&format!("[upstream]\n{text}\n")).key, key, "{text}");
    }
    let tls = "[upstream]\naddrs = [\"10.0.0.1:443\"]\ntls = true\n";
    if cfg!(feature = "tls") {
        // An address gives no name to verify: asked for, not connected to unverified.
        assert_eq!(err(tls).key, "upstream.sni");
        assert!(Config::from_toml(&format!("{tls}sni = \"origin.example.com\"\n")).is_ok());
        assert!(Config::from_toml(&format!("{tls}verify = false\n")).is_ok());
    } else {
        assert_eq!(err(tls).key, "upstream.tls");
    }
}
