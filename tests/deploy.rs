//! The deploy kit against the proxy it deploys: every metric the Grafana dashboard and the
//! alert rules query is one the proxy exports, and the config files the kit ships
//! (compose, Kubernetes ConfigMap) are valid streamgate configs. The files' own formats are
//! checked by their tools in `deploy/check.sh`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use common::*;

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `streamgate_*` metric names a text mentions, histogram series folded into their
/// family (`_bucket`, `_sum`, `_count`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("streamgate_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        i = end;
    }
    names
}

/// The metric families a scrape shows (`# TYPE` lines).
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    let dashboard = repo("deploy/grafana/streamgate.json");
    let alerts = repo("deploy/prometheus/alerts.yaml");
    let wanted: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&alerts))
        .collect();
    assert!(wanted.len() >= 20, "the dashboard queries {wanted:?}");

    // A header-identity proxy with the admin API and a health-checked upstream, after a
    // few of each kind of request...
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("read"), "read-token-0123456789abcdef\n").unwrap();
    std::fs::write(dir.path().join("write"), "write-token-0123456789abcdef\n").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = TestConfig::new(&origin).limit(1).table(&format!(
        "[admin]\nlisten = \"{admin}\"\nread_token_file = \"{}\"\nwrite_token_file = \"{}\"\n\
         [upstream.health_check]\ninterval = \"1s\"\n",
        dir.path().join("read").display(),
        dir.path().join("write").display()
    ));
    let proxy = Proxy::start(&cfg).await;
    proxy.until_ready(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        proxy.watch("/watch/a.m3u8", "alice", None).await.status(),
        200
    );
    assert_eq!(
        proxy.watch("/watch/a.ts", "alice", None).await.status(),
        401
    );
    let r = proxy
        .client
        .get(format!("http://{admin}/admin/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    proxy.counted("streamgate_admin_requests_total", 1.0).await;
    let mut have = exported(&proxy.metrics().await);

    // ...and a JWT proxy whose key set URL does not answer.
    let jwks: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = TestConfig::new(&origin)
        .identity("mode = \"jwt\"")
        .identity(&format!("jwt.jwks_url = \"http://{jwks}/jwks.json\""));
    let jwt = Proxy::start(&cfg).await;
    assert_eq!(jwt.watch("/watch/a", "x", None).await.status(), 401);
    jwt.counted("streamgate_auth_total", 1.0).await;
    have.extend(exported(&jwt.metrics().await));

    let missing: Vec<_> = wanted.difference(&have).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}

/// The config inside a YAML block scalar (`streamgate.toml: |`), unindented.
fn embedded_toml(yaml: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("streamgate.toml: |"));
    lines.next().expect("a streamgate.toml block");
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    body.iter()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kits_config_files_are_valid_streamgate_configs() {
    for (name, text) in [
        ("deploy/streamgate.toml", repo("deploy/streamgate.toml")),
        (
            "deploy/kubernetes/configmap.yaml",
            embedded_toml(&repo("deploy/kubernetes/configmap.yaml")),
        ),
    ] {
        let c = streamgate::config::Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("{name}: {}: {}", e.key, e.message));
        // Both run several instances on one Redis, with health-checked content servers.
        assert_eq!(c.store.kind, streamgate::config::StoreKind::Redis, "{name}");
        assert!(c.upstream.health_check.is_some(), "{name}");
        assert_eq!(
            c.metrics.listen.map(|a| a.ip().is_unspecified()),
            Some(true),
            "{name}: metrics must be reachable by Prometheus"
        );
    }
}
