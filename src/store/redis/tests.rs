use super::*;

#[test]
fn keys_are_prefixed_and_hash_tagged_by_user() {
    let s = RedisStore::new(
        Target::Single("redis://127.0.0.1:1".into()),
        "sg",
        Duration::from_secs(60),
        Duration::from_millis(100),
        LeaseCounters::unregistered(),
    );
    assert_eq!(s.key("abc"), "sg:{abc}:streams");
    assert_eq!(s.hold_refresh_interval(), Some(Duration::from_secs(20)));
}
