use super::*;

#[test]
fn handle_tables_list_every_variant_at_its_own_index() {
    for (i, d) in DECISIONS.iter().enumerate() {
        assert_eq!(*d as usize, i, "{d:?}");
    }
    for (i, r) in ROUTES.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
    for (i, o) in StoreOp::ALL.iter().enumerate() {
        assert_eq!(*o as usize, i, "{o:?}");
    }
    for (i, k) in MANIFEST_KINDS.iter().enumerate() {
        assert_eq!(*k as usize, i, "{k:?}");
    }
    for (i, o) in Outcome::ALL.iter().enumerate() {
        assert_eq!(*o as usize, i, "{o:?}");
    }
}

#[test]
fn metrics_register_on_a_fresh_registry_with_conventional_names() {
    let reg = Registry::new();
    let m = Metrics::new(&reg).unwrap();
    m.decision(Decision::Admitted, None);
    m.decision(Decision::Rejected, Some("basic"));
    m.expired.inc();
    m.request_done(Route::Watch, 401, Duration::from_millis(3));
    m.upstream_errors.with_label_values(&["connect"]).inc();
    m.store_op(StoreOp::Open, Duration::from_millis(1));
    m.store_errors.with_label_values(&["timeout"]).inc();
    let text = String::from_utf8(MetricsApp::new(reg.clone()).render().unwrap()).unwrap();
    for needle in [
        "streamgate_active_streams 0",
        "streamgate_stream_decisions_total{outcome=\"admitted\",plan=\"default\"} 1",
        "streamgate_stream_decisions_total{outcome=\"rejected\",plan=\"basic\"} 1",
        "streamgate_stream_decisions_total{outcome=\"expired\",plan=\"\"} 1",
        "streamgate_requests_total{route=\"watch\",status=\"4xx\"} 1",
        "streamgate_request_duration_seconds_bucket",
        "streamgate_upstream_errors_total{kind=\"connect\"} 1",
        "streamgate_store_operation_duration_seconds_bucket",
        "streamgate_store_errors_total{kind=\"timeout\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // A second server on its own registry does not collide.
    Metrics::new(&Registry::new()).unwrap();
    assert!(Metrics::new(&reg).is_err());
}
