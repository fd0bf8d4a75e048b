use super::*;
use std::time::Duration;

fn config(extra_streams: &str, extra_server: &str) -> Config {
    Config::from_toml(&format!(
        "[server]\nlisten = [\"127.0.0.1:3001\"]\n{extra_server}\n\
         [upstream]\naddrs = [\"127.0.0.1:8080\"]\n[streams]\n{extra_streams}\n"
    ))
    .unwrap()
}

#[test]
fn every_live_key_is_seen_changed_and_taken() {
    let a = config("", "");
    let mut b = config(
        "limit = 7\nroutes = [\"/live\"]\ncase_sensitive_routes = true\nlease_ttl = \"9s\"",
        "",
    );
    b.store.timeout = Duration::from_millis(1234);
    b.store.on_store_error = crate::config::OnStoreError::Allow;
    b.log.level = LogLevel::Debug;
    b.streams.default_plan = Some("basic".into());
    b.streams.unknown_plan = crate::config::UnknownPlan::Reject;
    b.streams.on_limit = crate::config::OnLimit::EvictOldest;
    b.streams.mode = crate::config::Mode::DryRun;
    b.streams.shadow_limit = Some(2);
    b.streams.evict_cooldown = Duration::from_secs(5);
    b.streams.tombstone_ttl = Duration::from_secs(60);
    b.plans.insert(
        "basic".into(),
        crate::config::PlanSection {
            limit: Some(1),
            unlimited: false,
            on_limit: None,
            mode: None,
        },
    );
    b.identity.jwt.max_limit = 4;
    let changed = changed_keys(&a, &b);
    assert!(changed.iter().all(|k| is_live(k)), "{changed:?}");
    for k in LIVE_KEYS {
        assert!(
            changed
                .iter()
                .any(|c| c == k || c.starts_with(&format!("{k}."))),
            "{k}"
        );
    }
    let mut running = a.clone();
    take_live(&mut running, &b);
    assert!(changed_keys(&running, &b).is_empty());
}

#[test]
fn other_keys_are_named_not_valued() {
    let a = config("", "");
    let b = config("", "threads = 2");
    assert_eq!(changed_keys(&a, &b), vec!["server.threads".to_string()]);
    let mut c = a.clone();
    c.server.listen = vec!["127.0.0.1:3002".parse().unwrap()];
    assert_eq!(changed_keys(&a, &c), vec!["server.listen".to_string()]);
    assert!(changed_keys(&a, &a.clone()).is_empty());
    assert!(!is_live("identity.mode"));
    assert!(!is_live("plansx"));
    assert!(is_live("plans.basic.limit"));
}

#[test]
fn the_jwks_url_and_its_timings_need_a_restart() {
    let a = config("", "");
    let mut b = a.clone();
    b.identity.jwt.jwks_url = Some("https://login.example/jwks".into());
    b.identity.jwt.jwks_refresh = Duration::from_secs(60);
    b.identity.jwt.leeway = Duration::from_secs(5);
    let changed = changed_keys(&a, &b);
    let (live, restart): (Vec<String>, Vec<String>) = changed.into_iter().partition(|k| is_live(k));
    assert_eq!(live, ["identity.jwt.leeway"]);
    assert_eq!(
        restart,
        ["identity.jwt.jwks_refresh", "identity.jwt.jwks_url"]
    );
    let mut running = a.clone();
    take_live(&mut running, &b);
    assert_eq!(running.identity.jwt.leeway, Duration::from_secs(5));
    assert_eq!(
        changed_keys(&running, &b),
        restart,
        "kept as running: still named at the next reload"
    );
}
