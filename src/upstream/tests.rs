use super::*;
use crate::config::Config;

fn upstreams(extra: &str, servers: usize) -> Arc<Upstreams> {
    let addrs: Vec<String> = (0..servers)
        .map(|i| format!("\"127.0.0.1:{}\"", 10_001 + i))
        .collect();
    let config = Config::from_toml(&format!(
        "[upstream]\naddrs = [{}]\n{extra}",
        addrs.join(", ")
    ))
    .unwrap();
    Upstreams::new(&config.upstream, &Registry::new()).unwrap()
}

fn pick(u: &Arc<Upstreams>, key: &str) -> usize {
    u.select(key.as_bytes(), &[]).unwrap().index()
}

#[test]
fn consistent_hashing_spreads_users_evenly_and_moves_only_a_dead_servers_users() {
    let u = upstreams("selection = \"consistent\"", 3);
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let before: Vec<usize> = users.iter().map(|k| pick(&u, k)).collect();
    for s in 0..3 {
        let n = before.iter().filter(|&&i| i == s).count();
        assert!(n.abs_diff(333) * 5 <= 333, "server {s}: {n} users");
    }
    // Each user always lands on the same server.
    assert!(users.iter().zip(&before).all(|(k, &i)| pick(&u, k) == i));
    // Server 2 out: only its users move, onto the other two.
    u.servers[2].ejected_until.store(u64::MAX, Relaxed);
    let moved = users
        .iter()
        .zip(&before)
        .filter(|(k, &i)| {
            let now = pick(&u, k);
            assert_ne!(now, 2);
            if i != 2 {
                assert_eq!(now, i, "{k} moved off a live server");
            }
            now != i
        })
        .count();
    assert_eq!(moved, before.iter().filter(|&&i| i == 2).count());
}

#[test]
fn a_request_never_tries_a_server_twice_and_stops_when_all_are_tried() {
    let u = upstreams("", 3);
    let mut tried = Vec::new();
    while let Some(c) = u.select(b"", &tried) {
        assert!(!tried.contains(&c.index()));
        tried.push(c.index());
    }
    tried.sort();
    assert_eq!(tried, vec![0, 1, 2]);
    assert_eq!(u.tries(), 3);
    assert_eq!(upstreams("", 5).tries(), 3, "at most 3 by default");
    assert_eq!(upstreams("max_connect_tries = 5", 5).tries(), 5);
}

#[test]
fn least_conn_follows_requests_in_flight_and_weights() {
    let u = upstreams("selection = \"least_conn\"", 2);
    let a = u.select(b"", &[]).unwrap();
    let b = u.select(b"", &[]).unwrap();
    assert_ne!(a.index(), b.index());
    let free = b.index();
    drop(b);
    // The server whose request ended is the one with fewer in flight.
    for _ in 0..5 {
        assert_eq!(u.select(b"", &[]).unwrap().index(), free);
    }
    drop(a);
    assert!(u.servers.iter().all(|s| s.active.load(Relaxed) == 0));
}

#[test]
fn passive_ejection_counts_in_a_row_and_spares_the_last_server() {
    let u = upstreams("unhealthy_after = 2\neject_for = \"1h\"", 2);
    let c = u.select(b"", &[]).unwrap();
    let i = c.index();
    c.connect_failed();
    c.answered(200); // a success in between: the count starts over
    c.connect_failed();
    assert!(u.usable(i, u.now_ms()));
    c.answered(503);
    assert!(!u.usable(i, u.now_ms()), "two in a row eject it");
    drop(c);
    // The other one is now the last usable server: never ejected.
    let other = u.select(b"", &[]).unwrap();
    assert_ne!(other.index(), i);
    for _ in 0..5 {
        other.connect_failed();
    }
    assert!(u.usable(other.index(), u.now_ms()));
}

#[test]
fn ready_needs_a_usable_server_unless_told_otherwise() {
    let u = upstreams("", 1);
    assert!(u.ready(), "no checks: ready at once");
    u.servers[0].ejected_until.store(u64::MAX, Relaxed);
    assert!(!u.ready());
    let u = upstreams("ready_requires_upstream = false", 1);
    u.servers[0].ejected_until.store(u64::MAX, Relaxed);
    assert!(u.ready());
    let u = upstreams("[upstream.health_check]\nkind = \"tcp\"", 1);
    assert!(!u.ready(), "not before the first round of checks");
}
