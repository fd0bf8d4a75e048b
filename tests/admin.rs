//! Issue #13 item 4 (in part): the admin API on its own listener. A user's streams are
//! listed and ended (one, or all), and an ended stream's response is cut mid-body. This
//! runs on the memory store and across two instances on one Redis. Tokens are checked:
//! none or a wrong one gets 401, the read token on a write gets 403.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use serde_json::Value;

const READ: &str = "read-token-for-tests-0123";
const WRITE: &str = "write-token-for-tests-0123";

/// A proxy's admin listener and the token files it reads.
struct Admin {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Admin {
    /// The `[admin]` table of a config, on a free port.
    fn table() -> (Admin, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("read"), format!("{READ}\n")).unwrap();
        std::fs::write(dir.path().join("write"), WRITE).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let table = format!(
            "[admin]\nlisten = \"{addr}\"\nread_token_file = \"{}\"\nwrite_token_file = \"{}\"\n",
            dir.path().join("read").display(),
            dir.path().join("write").display()
        );
        let admin = Admin {
            addr,
            _dir: dir,
            client: reqwest::Client::new(),
        };
        (admin, table)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self
            .client
            .request(method, format!("http://{}{path}", self.addr));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// `PUT` (or another method) with a JSON body.
    async fn send_body(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &str,
    ) -> reqwest::Response {
        self.client
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// The user's listing: streams and rules.
    async fn listing(&self, user: &str) -> Value {
        let r = self
            .send(
                reqwest::Method::GET,
                &format!("/admin/v1/users/{user}/streams"),
                Some(READ),
            )
            .await;
        assert_eq!(r.status(), 200);
        json_body(r).await
    }

    async fn streams(&self, user: &str) -> Vec<Value> {
        self.listing(user).await["streams"]
            .as_array()
            .unwrap()
            .clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_lists_and_ends_a_users_streams_with_the_right_token() {
    let origin = Origin::start().await;
    let (admin, table) = Admin::table();
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(2).table(&table)).await;

    let a = proxy.watch("/watch/a", "alice%40home", None).await;
    let b = proxy.watch("/watch/b", "alice%40home", None).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let (a, b) = (stream_id(&a), stream_id(&b));

    // Tokens: none, a wrong one, the read token on a write.
    use reqwest::Method;
    let list = "/admin/v1/users/alice%2540home/streams";
    for token in [None, Some("not-the-token-0123456789")] {
        let r = admin.send(Method::GET, list, token).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"streamgate-admin\""
        );
        assert_eq!(json_body(r).await["error"], "unauthorized");
    }
    let one = format!("{list}/{a}");
    let r = admin.send(Method::DELETE, &one, Some(READ)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(json_body(r).await["error"], "insufficient_scope");

    // List: both streams, by the user's percent-encoded id.
    let streams = admin.streams("alice%2540home").await;
    let mut ids: Vec<&str> = streams.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert!(streams
        .iter()
        .all(|s| s["in_flight"] == false && s["expires_in_ms"].as_u64().is_some()));
    assert!(streams.iter().all(|s| s["opened"].as_str().is_some()
        && s["last_renewed"].as_str().is_some()
        && s["device"].is_null()));

    // End one: 204, and the user has a slot again.
    let r = admin.send(Method::DELETE, &one, Some(WRITE)).await;
    assert_eq!(r.status(), 204);
    let r = admin.send(Method::DELETE, &one, Some(WRITE)).await;
    assert_eq!(r.status(), 404, "already ended");
    assert_eq!(admin.streams("alice%2540home").await.len(), 1);
    // Its player cannot undo the end by asking for its next segment: the id is remembered.
    let r = proxy
        .watch("/watch/seg2.ts", "alice%40home", Some(&a))
        .await;
    assert_eq!(r.status(), 410);
    let body = json_body(r).await;
    assert_eq!(body["error"], "stream_ended");
    assert!(
        body["at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );

    // End all, while a response of one of them is being served: it is cut.
    let slow = proxy
        .watch("/watch/slow?chunks=100&ms=100", "alice%40home", None)
        .await;
    assert_eq!(slow.status(), 200);
    assert!(
        admin
            .streams("alice%2540home")
            .await
            .iter()
            .any(|s| s["in_flight"] == true),
        "the slow stream is in flight"
    );
    let started = Instant::now();
    let r = admin.send(Method::DELETE, list, Some(WRITE)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(r).await["ended"], 2);
    assert!(was_cut(slow).await, "the ended stream's response is cut");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut long before its 10 s body"
    );
    assert!(admin.streams("alice%2540home").await.is_empty());
    assert_eq!(
        proxy.watch("/watch/c", "alice%40home", None).await.status(),
        200
    );

    // Stats, bad ids, unknown paths, wrong methods.
    let r = admin.send(Method::GET, "/admin/v1/stats", Some(READ)).await;
    assert_eq!(r.status(), 200);
    assert!(json_body(r).await["inflight_requests"].is_i64());
    let r = admin
        .send(Method::DELETE, &format!("{list}/nope"), Some(WRITE))
        .await;
    assert_eq!(
        (r.status(), json_body(r).await["error"].clone()),
        (
            reqwest::StatusCode::BAD_REQUEST,
            Value::from("invalid_stream_id")
        )
    );
    let r = admin.send(Method::GET, "/admin/v1/users", Some(READ)).await;
    assert_eq!(r.status(), 404, "no endpoint lists every user");
    let r = admin.send(Method::POST, list, Some(WRITE)).await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, DELETE");

    assert_eq!(
        proxy
            .metric("streamgate_admin_requests_total{action=\"end\",status=\"204\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("streamgate_admin_requests_total{status=\"401\"}")
            .await,
        2.0
    );
}

/// Two instances on one Redis: a stream served by one is ended through the other's admin
/// API, and its response is cut there; both see the user with no stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_through_one_instances_admin_api_cuts_the_stream_on_the_other() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let (admin, table) = Admin::table();
    let base = TestConfig::new(&origin)
        .redis(&redis.url(), "admin", "deny")
        .streams("device_header = \"Device-Id\"");
    let a = Proxy::start(
        &base
            .clone()
            .table(&table)
            .server("instance_name = \"edge-a\""),
    )
    .await;
    let b = Proxy::start(&base.clone().server("instance_name = \"edge-b\"")).await;

    let slow = b
        .client
        .get(b.url("/watch/slow?chunks=100&ms=100"))
        .header("Session-Id", "bob")
        .header("Device-Id", "living-room-tv")
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let id = stream_id(&slow);
    let streams = admin.streams("bob").await;
    assert_eq!(streams.len(), 1);
    let lease = &streams[0];
    assert_eq!(lease["id"], id.as_str());
    // Listed through a, served by b: when it opened, when renewed, which device (a hash,
    // never the id), and which instance.
    assert_eq!(lease["served_by"], "edge-b");
    for at in ["opened", "last_renewed"] {
        assert!(
            lease[at].as_str().is_some_and(|t| t.ends_with('Z')),
            "{lease}"
        );
    }
    let device = lease["device"].as_str().unwrap();
    assert!(device.len() == 8 && device.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!lease.to_string().contains("living-room"));

    let started = Instant::now();
    let r = admin
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/v1/users/bob/streams/{id}"),
            Some(WRITE),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert!(was_cut(slow).await, "b cut the response the end came for");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(admin.streams("bob").await.is_empty());
    // Remembered in the store, so the other instance refuses the id too.
    let r = b.watch("/watch/next", "bob", Some(&id)).await;
    assert_eq!(r.status(), 410);
    assert_eq!(json_body(r).await["error"], "stream_ended");
    drop(a);
}

/// Item 4: a per-user limit override and a block, kept in the store with their expiry, so
/// the instance without the admin API obeys them too.
async fn overrides_and_blocks_hold_everywhere(admin: &Admin, proxy: &Proxy) {
    use reqwest::Method;
    let limit = "/admin/v1/users/vip/limit";
    let block = "/admin/v1/users/vip/block";
    let first = stream_id(&proxy.watch("/watch/1", "vip", None).await);
    assert_eq!(proxy.watch("/watch/2", "vip", None).await.status(), 401);

    let body = r#"{"limit": 3, "ttl": "1h"}"#;
    let r = admin.send_body(Method::PUT, limit, READ, body).await;
    assert_eq!(r.status(), 403, "the read token cannot write");
    let r = admin.send_body(Method::PUT, limit, WRITE, body).await;
    assert_eq!(r.status(), 200);
    let set = json_body(r).await;
    assert_eq!(set["limit"], 3);
    assert!(set["limit_expires_in_ms"].as_u64().unwrap() <= 3_600_000);
    for n in 2..4 {
        let r = proxy.watch(&format!("/watch/{n}"), "vip", None).await;
        assert_eq!(r.status(), 200, "open {n} under the override");
    }
    assert_eq!(proxy.watch("/watch/4", "vip", None).await.status(), 401);
    assert_eq!(admin.listing("vip").await["rules"]["limit"], 3);
    for bad in [
        "nonsense",
        r#"{"limit": 0, "ttl": "1h"}"#,
        r#"{"limit": 2}"#,
    ] {
        let r = admin.send_body(Method::PUT, limit, WRITE, bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(json_body(r).await["error"], "invalid_body");
    }
    let r = admin.send(Method::DELETE, limit, Some(WRITE)).await;
    assert_eq!(r.status(), 204);
    let r = admin.send(Method::DELETE, limit, Some(WRITE)).await;
    assert_eq!(r.status(), 404, "none in force");
    assert_eq!(
        proxy.watch("/watch/5", "vip", None).await.status(),
        401,
        "back to the configured limit"
    );

    // A block: opens and renewals are 403, with when to try again.
    let r = admin
        .send_body(Method::PUT, block, WRITE, r#"{"ttl": "1h"}"#)
        .await;
    assert_eq!(r.status(), 200);
    assert!(json_body(r).await["blocked_expires_in_ms"]
        .as_u64()
        .is_some());
    let r = proxy.watch("/watch/6", "vip", Some(&first)).await;
    assert_eq!(r.status(), 403, "a renewal of a blocked user");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 3000 && retry <= 3600, "{retry}");
    assert_eq!(json_body(r).await["error"], "user_blocked");
    assert_eq!(proxy.watch("/watch/7", "vip", None).await.status(), 403);
    assert_eq!(proxy.watch("/watch/1", "other", None).await.status(), 200);
    let r = admin.send(Method::DELETE, block, Some(WRITE)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        proxy.watch("/watch/8", "vip", Some(&first)).await.status(),
        200
    );

    // An override runs out by itself.
    let r = admin
        .send_body(
            Method::PUT,
            "/admin/v1/users/brief/limit",
            WRITE,
            r#"{"limit": 2, "ttl": "400ms"}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(proxy.watch("/watch/1", "brief", None).await.status(), 200);
    assert_eq!(proxy.watch("/watch/2", "brief", None).await.status(), 200);
    proxy
        .eventually(Duration::from_secs(5), "the override expires", || async {
            admin.listing("brief").await["rules"]["limit"].is_null()
        })
        .await;
    assert_eq!(proxy.watch("/watch/3", "brief", None).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_override_and_a_block_apply_on_the_memory_store() {
    let origin = Origin::start().await;
    let (admin, table) = Admin::table();
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1).table(&table)).await;
    overrides_and_blocks_hold_everywhere(&admin, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_override_and_a_block_set_on_one_instance_hold_on_the_other() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let (admin, table) = Admin::table();
    let base = TestConfig::new(&origin)
        .limit(1)
        .redis(&redis.url(), "rules", "deny");
    let a = Proxy::start(&base.clone().table(&table)).await;
    let b = Proxy::start(&base).await;
    overrides_and_blocks_hold_everywhere(&admin, &b).await;
    drop(a);
}
