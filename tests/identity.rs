//! Issue #12: verified identity (`identity.mode = "jwt"`) and limits per plan, on the real
//! proxy and origin, with keys made by the openssl CLI and tokens signed here.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::certs::openssl;
use common::redis_server::RedisServer;
use common::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Key pairs (RSA 2048, EC P-256, Ed25519) in a fresh directory; public keys as PEM, the
/// Ed25519 one also in a JWKS file (`kid` "ed1").
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn make() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, args) in [
            (
                "rs",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
            (
                "ec",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            ),
            ("ed", &["-algorithm", "ed25519"][..]),
            (
                "other",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
        ] {
            let key = format!("{name}.key");
            let mut a = vec!["genpkey"];
            a.extend_from_slice(args);
            a.extend_from_slice(&["-out", &key]);
            openssl(&a, d);
            openssl(
                &[
                    "pkey",
                    "-in",
                    &key,
                    "-pubout",
                    "-out",
                    &format!("{name}.pub"),
                ],
                d,
            );
        }
        openssl(
            &[
                "pkey", "-in", "ed.key", "-pubout", "-outform", "DER", "-out", "ed.der",
            ],
            d,
        );
        let der = std::fs::read(d.join("ed.der")).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        std::fs::write(
            d.join("jwks.json"),
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "alg": "EdDSA", "x": x}]})
                .to_string(),
        )
        .unwrap();
        Keys { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn private(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("{name}.key"))).unwrap()
    }

    /// Sign `claims` with key `name` (`rs`, `ec`, `ed`, `other`) under `kid`.
    fn sign(&self, name: &str, kid: Option<&str>, claims: &Value) -> String {
        let (alg, key) = match name {
            "rs" | "other" => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&self.private(name)),
            ),
            "ec" => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&self.private(name)),
            ),
            "ed" => (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(&self.private(name)),
            ),
            _ => unreachable!(),
        };
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        encode(&h, claims, &key.unwrap()).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "login", "aud": "video", "iat": now(), "exp": now() + 300})
}

/// The JWT identity config of these tests: PEM RSA and EC keys, the JWKS file, issuer and
/// audience checked, the token also accepted as `?token=` and as the `sg_token` cookie.
fn jwt_config(origin: &Origin, keys: &Keys) -> TestConfig {
    let file = |p: &Path| p.display().to_string();
    TestConfig::new(origin)
        .limit(2)
        .identity("mode = \"jwt\"")
        .identity(&format!(
            "jwt.keys = [{{ kid = \"rs1\", file = \"{}\" }}, {{ kid = \"ec1\", file = \"{}\" }}]",
            file(&keys.path("rs.pub")),
            file(&keys.path("ec.pub"))
        ))
        .identity(&format!(
            "jwt.jwks_file = \"{}\"",
            file(&keys.path("jwks.json"))
        ))
        .identity("jwt.issuers = [\"login\"]")
        .identity("jwt.audiences = [\"video\"]")
        .identity("jwt.plan_claim = \"plan\"")
        .identity("jwt.limit_claim = \"screens\"")
        .identity("jwt.max_limit = 3")
        .identity("jwt.token_param = \"token\"")
        .identity("jwt.token_cookie = \"sg_token\"")
}

async fn get(proxy: &Proxy, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = proxy.client.get(proxy.url(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn error_of(r: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, www, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_token_names_the_user_and_bad_ones_get_401_with_a_reason() {
    let keys = Keys::make();
    let origin = Origin::start().await;
    let proxy = Proxy::start(&jwt_config(&origin, &keys)).await;

    // Two tokens of one user (RSA, and EC through another key) share the limit of 2; the
    // Session-Id a client sends means nothing now.
    let a = keys.sign("rs", Some("rs1"), &claims("alice"));
    let b = keys.sign("ec", Some("ec1"), &claims("alice"));
    let ed = keys.sign("ed", Some("ed1"), &claims("alice"));
    assert_eq!(get(&proxy, "/watch/1", Some(&a)).await.status(), 200);
    assert_eq!(get(&proxy, "/watch/2", Some(&b)).await.status(), 200);
    let (status, _, body) = error_of(get(&proxy, "/watch/3", Some(&ed)).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("stream_limit_exceeded"))
    );
    let other = keys.sign("ed", Some("ed1"), &claims("bob"));
    assert_eq!(
        get(&proxy, "/watch/1", Some(&other)).await.status(),
        200,
        "JWKS key"
    );

    // No token: 401 token_required, with a bare Bearer challenge.
    let (status, www, body) = error_of(
        proxy
            .client
            .get(proxy.url("/watch/x"))
            .header("Session-Id", "alice")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_required"))
    );
    assert_eq!(www.as_deref(), Some("Bearer realm=\"streamgate\""));

    // Each bad token: 401 invalid_token with its reason, in the body and the challenge.
    let with = |k: &str, v: Value| {
        let mut c = claims("mallory");
        c[k] = v;
        c
    };
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims("mallory").to_string())
    );
    // Algorithm confusion: an HS256 token whose "secret" is the public RSA key.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims("mallory"),
        &EncodingKey::from_secret(&std::fs::read(keys.path("rs.pub")).unwrap()),
    )
    .unwrap();
    let cases = [
        (
            "expired",
            keys.sign("rs", Some("rs1"), &with("exp", json!(now() - 120))),
            "expired",
        ),
        (
            "not yet valid",
            keys.sign("rs", Some("rs1"), &with("nbf", json!(now() + 120))),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            keys.sign("rs", Some("rs1"), &with("iss", json!("evil"))),
            "bad_issuer",
        ),
        (
            "wrong audience",
            keys.sign("rs", Some("rs1"), &with("aud", json!("ads"))),
            "bad_audience",
        ),
        (
            "another key",
            keys.sign("other", Some("rs1"), &claims("mallory")),
            "bad_signature",
        ),
        (
            "unknown kid",
            keys.sign("rs", Some("rs9"), &claims("mallory")),
            "unknown_kid",
        ),
        // jsonwebtoken has no `none` algorithm: such a header does not even parse.
        ("alg none", none, "malformed"),
        ("HS256 with the RSA public key", confused, "bad_algorithm"),
        ("garbage", "a.b.c".to_string(), "malformed"),
    ];
    for (name, token, reason) in &cases {
        let (status, www, body) = error_of(get(&proxy, "/watch/x", Some(token)).await).await;
        assert_eq!(status, 401, "{name}");
        assert_eq!(body["error"], "invalid_token", "{name}");
        assert_eq!(body["reason"], *reason, "{name}");
        let www = www.unwrap_or_default();
        assert!(www.contains("error=\"invalid_token\""), "{name}: {www}");
        assert!(
            !body.to_string().contains(token.as_str()),
            "{name}: the token is not echoed"
        );
    }
    assert_eq!(
        proxy
            .metric("streamgate_auth_total{reason=\"expired\",result=\"refused\"}")
            .await,
        1.0
    );
    assert!(
        origin.seen().iter().all(|s| !s.path.contains("/watch/x")),
        "no refused request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_origin_claims_do_and_a_token_is_verified_once() {
    let keys = Keys::make();
    let origin = Origin::start().await;
    let cfg = jwt_config(&origin, &keys)
        .limit(3)
        .identity("jwt.claim_to_headers = { \"X-User-Id\" = \"sub\" }");
    let proxy = Proxy::start(&cfg).await;
    let t = keys.sign("rs", Some("rs1"), &claims("carol"));

    let q = get(&proxy, &format!("/watch/seg1.ts?a=1&token={t}&b=2"), None).await;
    assert_eq!(q.status(), 200);
    let c = proxy
        .client
        .get(proxy.url("/watch/seg2.ts"))
        .header("Cookie", format!("theme=dark; sg_token={t}; lang=en"))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200);
    let h = proxy
        .client
        .get(proxy.url("/watch/seg3.ts"))
        .bearer_auth(&t)
        .header("X-User-Id", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let head = proxy
        .client
        .head(proxy.url(&format!("/watch/seg4.ts?token={t}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);

    let seen = origin.seen();
    let seg = |n: u8| {
        seen.iter()
            .find(|s| s.path.starts_with(&format!("/watch/seg{n}.ts")))
            .unwrap_or_else(|| panic!("seg{n} reached the origin"))
    };
    assert_eq!(
        seg(1).path,
        "/watch/seg1.ts?a=1&b=2",
        "the rest of the query stays"
    );
    assert_eq!(
        seg(2).headers.get("cookie").map(String::as_str),
        Some("theme=dark; lang=en")
    );
    assert!(!seg(3).headers.contains_key("authorization"));
    assert_eq!(
        seg(3).headers.get("x-user-id").map(String::as_str),
        Some("carol"),
        "the claim, not the client's copy"
    );
    assert_eq!(seg(4).path, "/watch/seg4.ts");
    for s in &seen {
        let all = format!("{} {:?}", s.path, s.headers);
        assert!(!all.contains(&t), "the origin saw a token: {all}");
    }
    // One verification, then the cache: three requests with the same token.
    assert_eq!(
        proxy
            .metric("streamgate_auth_total{reason=\"none\",result=\"verified\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("streamgate_auth_total{reason=\"none\",result=\"cached\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_give_each_user_their_limit() {
    let keys = Keys::make();
    let origin = Origin::start().await;
    let cfg = jwt_config(&origin, &keys)
        .limit(2)
        .streams("default_plan = \"standard\"")
        .streams("unknown_plan = \"reject\"")
        .table("[plans.basic]\nlimit = 1\n[plans.standard]\nlimit = 2\n[plans.premium]\nlimit = 4\n[plans.suspended]\nlimit = 0\n[plans.staff]\nunlimited = true");
    let proxy = Proxy::start(&cfg).await;
    let token = |sub: &str, extra: Value| {
        let mut c = claims(sub);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        keys.sign("rs", Some("rs1"), &c)
    };
    // How many opens each user gets before a refusal.
    let opens = |t: String, most: usize| {
        let proxy = &proxy;
        async move {
            for n in 0..most {
                let r = get(proxy, &format!("/watch/{n}"), Some(&t)).await;
                if r.status() != 200 {
                    return (n, error_of(r).await);
                }
            }
            (most, (200, None, Value::Null))
        }
    };
    let (n, (status, _, body)) = opens(token("b", json!({"plan": "basic"})), 10).await;
    assert_eq!((n, status), (1, 401));
    assert_eq!(body["plan"], "basic", "the refusal names the plan");
    assert_eq!(body["limit"], 1);
    assert_eq!(
        opens(token("s", json!({})), 10).await.0,
        2,
        "no plan: default_plan"
    );
    assert_eq!(opens(token("p", json!({"plan": "premium"})), 10).await.0, 4);
    assert_eq!(
        opens(token("c", json!({"plan": "premium", "screens": 9})), 10)
            .await
            .0,
        3,
        "the token's own limit, capped by max_limit"
    );
    assert_eq!(
        opens(token("staff", json!({"plan": "staff"})), 12).await.0,
        12,
        "unlimited"
    );
    let (n, (status, _, body)) = opens(token("x", json!({"plan": "suspended"})), 3).await;
    assert_eq!(
        (n, status, body["error"].as_str()),
        (0, 403, Some("plan_blocked"))
    );
    let (n, (status, _, body)) = opens(token("y", json!({"plan": "gold"})), 3).await;
    assert_eq!(
        (n, status, body["error"].as_str()),
        (0, 403, Some("unknown_plan"))
    );

    // A downgrade keeps what plays and applies at the next open: premium's 4 streams stay
    // counted, and basic refuses a fifth.
    let (n, (status, _, _)) = opens(token("p", json!({"plan": "basic"})), 3).await;
    assert_eq!((n, status), (0, 401));
    assert_eq!(
        proxy.metric("streamgate_active_streams").await as usize,
        1 + 2 + 4 + 3 + 12
    );
    // Decisions by plan: configured names only (no plan: the default plan).
    let decided = |outcome: &str, plan: &str, expect: f64| {
        let series =
            format!("streamgate_stream_decisions_total{{outcome=\"{outcome}\",plan=\"{plan}\"}}");
        let proxy = &proxy;
        async move { proxy.settled(&series, expect).await }
    };
    assert_eq!(decided("admitted", "premium", 7.0).await, 4.0 + 3.0);
    assert_eq!(decided("admitted", "standard", 2.0).await, 2.0);
    assert_eq!(decided("admitted", "staff", 12.0).await, 12.0);
    assert_eq!(decided("rejected", "basic", 2.0).await, 2.0);
    assert_eq!(decided("admitted", "default", 0.0).await, 0.0);
}

/// Plans on the shared store: two instances on one Redis hold each user to their plan's
/// limit together, and a downgrade applies at the next open on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_hold_across_instances_on_redis() {
    let keys = Keys::make();
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let cfg = jwt_config(&origin, &keys)
        .redis(&redis.url(), "plans", "deny")
        .table("[plans.basic]\nlimit = 1\n[plans.premium]\nlimit = 4");
    let (a, b) = (Proxy::start(&cfg).await, Proxy::start(&cfg).await);
    let token = |sub: &str, plan: &str| {
        let mut c = claims(sub);
        c["plan"] = json!(plan);
        keys.sign("rs", Some("rs1"), &c)
    };
    let premium = token("pat", "premium");
    for (n, proxy) in [&a, &b, &a, &b].into_iter().enumerate() {
        let r = get(proxy, &format!("/watch/{n}"), Some(&premium)).await;
        assert_eq!(r.status(), 200, "premium open {n}");
    }
    for proxy in [&a, &b] {
        let (status, _, body) = error_of(get(proxy, "/watch/5", Some(&premium)).await).await;
        assert_eq!((status, body["limit"].as_u64()), (401, Some(4)));
        assert_eq!(
            (body["active"].as_u64(), body["plan"].as_str()),
            (Some(4), Some("premium"))
        );
    }
    let basic = token("bea", "basic");
    assert_eq!(get(&a, "/watch/1", Some(&basic)).await.status(), 200);
    assert_eq!(get(&b, "/watch/2", Some(&basic)).await.status(), 401);
    // pat is downgraded: the 4 streams stay, the next open is refused by basic's limit.
    let downgraded = token("pat", "basic");
    let (status, _, body) = error_of(get(&b, "/watch/6", Some(&downgraded)).await).await;
    assert_eq!(
        (status, body["limit"].as_u64(), body["active"].as_u64()),
        (401, Some(1), Some(4))
    );
    // A plan no table has, with unknown_plan = "default": as no plan, streams.limit (2).
    let gold = token("gil", "gold");
    assert_eq!(get(&a, "/watch/1", Some(&gold)).await.status(), 200);
    assert_eq!(get(&b, "/watch/2", Some(&gold)).await.status(), 200);
    let (status, _, body) = error_of(get(&a, "/watch/3", Some(&gold)).await).await;
    assert_eq!((status, body["limit"].as_u64()), (401, Some(2)));
    let unknown = "streamgate_stream_decisions_total{outcome=\"admitted\",plan=\"unknown\"}";
    a.eventually(Duration::from_secs(5), "both count their opens", || async {
        a.metric(unknown).await + b.metric(unknown).await == 2.0
    })
    .await;
}

/// Header identity: the plan header is believed from `identity.trusted_proxies` only;
/// anyone else's is ignored, counted, and removed before the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_header_counts_only_from_trusted_proxies() {
    let origin = Origin::start().await;
    let plans = "[plans.basic]\nlimit = 1\n[plans.premium]\nlimit = 4";
    let base = |trusted: &str| {
        TestConfig::new(&origin)
            .limit(2)
            .identity("plan_header = \"Plan\"")
            .identity(&format!("trusted_proxies = [\"{trusted}\"]"))
            .table(plans)
    };
    let opens = |proxy: &Proxy, user: &'static str, plan: &'static str| {
        let (client, url) = (proxy.client.clone(), proxy.url("/watch/p"));
        async move {
            let mut n = 0;
            while n < 10 {
                let r = client
                    .get(&url)
                    .header("Session-Id", user)
                    .header("Plan", plan)
                    .send()
                    .await
                    .unwrap();
                if r.status() != 200 {
                    break;
                }
                n += 1;
            }
            n
        }
    };
    let trusted = Proxy::start(&base("127.0.0.0/8")).await;
    assert_eq!(opens(&trusted, "t1", "basic").await, 1);
    assert_eq!(opens(&trusted, "t2", "premium").await, 4);
    assert!(
        origin
            .seen()
            .iter()
            .any(|s| s.headers.get("plan").map(String::as_str) == Some("premium")),
        "a trusted gateway's plan header goes on to the origin"
    );
    drop(trusted);

    let untrusted = Proxy::start(&base("10.0.0.0/8")).await;
    let before = origin.seen().len();
    assert_eq!(
        opens(&untrusted, "u1", "premium").await,
        2,
        "ignored: streams.limit"
    );
    assert!(origin.seen()[before..]
        .iter()
        .all(|s| !s.headers.contains_key("plan")));
    assert_eq!(
        untrusted
            .metric("streamgate_untrusted_plan_headers_total")
            .await,
        3.0,
        "every request that carried it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_status_is_configurable() {
    let keys = Keys::make();
    let origin = Origin::start().await;
    let proxy = Proxy::start(
        &jwt_config(&origin, &keys)
            .limit(1)
            .streams("limit_status = 429"),
    )
    .await;
    let t = keys.sign("rs", Some("rs1"), &claims("dave"));
    assert_eq!(get(&proxy, "/watch/1", Some(&t)).await.status(), 200);
    let r = get(&proxy, "/watch/2", Some(&t)).await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, www, body) = error_of(r).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("stream_limit_exceeded"))
    );
    assert_eq!(
        www, None,
        "a refusal at the limit is not an authentication challenge"
    );
}

/// A JWKS file the login service rotates is read again by itself (no `SIGHUP`): a token of
/// the new key is refused (`unknown_kid`) until the file changes, then admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwks_file_is_picked_up_without_a_signal() {
    let keys = Keys::make();
    let origin = Origin::start().await;
    let proxy = Proxy::start(&jwt_config(&origin, &keys)).await;
    // The Ed25519 key under a new kid, as a rotation would publish it.
    let rotated = keys.sign("ed", Some("ed2"), &claims("erin"));
    let (status, _, body) = error_of(get(&proxy, "/watch/1", Some(&rotated)).await).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("unknown_kid"))
    );

    let jwks = std::fs::read_to_string(keys.path("jwks.json")).unwrap();
    std::fs::write(keys.path("jwks.json"), jwks.replace("\"ed1\"", "\"ed2\"")).unwrap();
    proxy
        .eventually(
            Duration::from_secs(10),
            "the rotated key is in use",
            || async { get(&proxy, "/watch/1", Some(&rotated)).await.status() == 200 },
        )
        .await;
    // The old kid is gone with the old file.
    let old = keys.sign("ed", Some("ed1"), &claims("erin"));
    let (status, _, body) = error_of(get(&proxy, "/watch/2", Some(&old)).await).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("unknown_kid"))
    );
}

/// The login service's JWKS endpoint: serves its set (`503` while it has none) and counts
/// the fetches it answered.
struct Jwks {
    addr: std::net::SocketAddr,
    set: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Jwks {
    async fn start(set: Option<String>) -> Jwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let set = Arc::new(Mutex::new(set));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (set.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (s, f) = (s.clone(), f.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = s.lock().unwrap().clone();
                    let answer = match body {
                        Some(b) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{b}",
                            b.len()
                        ),
                        None => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                                 Connection: close\r\n\r\n"
                            .to_string(),
                    };
                    let _ = sock.write_all(answer.as_bytes()).await;
                    f.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Jwks {
            addr,
            set,
            fetches,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn publish(&self, set: Option<String>) {
        *self.set.lock().unwrap() = set;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Keys {
    /// A JWKS of these keys: (`name`, `kid`) pairs, `name` one of `rs`, `ec`.
    fn jwks(&self, entries: &[(&str, &str)]) -> String {
        let keys: Vec<Value> = entries
            .iter()
            .map(|(name, kid)| {
                let (key, alg) = match *name {
                    "ec" => (
                        EncodingKey::from_ec_pem(&self.private(name)),
                        Algorithm::ES256,
                    ),
                    _ => (
                        EncodingKey::from_rsa_pem(&self.private(name)),
                        Algorithm::RS256,
                    ),
                };
                let mut jwk = Jwk::from_encoding_key(&key.unwrap(), alg).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                serde_json::to_value(jwk).unwrap()
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }
}

fn jwks_config(origin: &Origin, jwks: &Jwks) -> TestConfig {
    TestConfig::new(origin)
        .limit(3)
        .identity("mode = \"jwt\"")
        .identity(&format!("jwt.jwks_url = \"{}\"", jwks.url()))
}

/// `jwks_url`: a token of a key the login service has just published is admitted at its
/// first request (one fetch, awaited); a key it removed stops its tokens, cached or not;
/// made-up `kid`s do not make the proxy fetch again within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_refetched_once_for_a_new_kid() {
    let keys = Keys::make();
    let jwks = Jwks::start(Some(keys.jwks(&[("ec", "k1")]))).await;
    let origin = Origin::start().await;
    let proxy =
        Proxy::start(&jwks_config(&origin, &jwks).identity("jwt.jwks_refresh = \"10m\"")).await;
    proxy
        .counted("streamgate_jwks_refresh_total{result=\"ok\"}", 1.0)
        .await;

    let old = keys.sign("ec", Some("k1"), &claims("fay"));
    assert_eq!(get(&proxy, "/watch/1", Some(&old)).await.status(), 200);
    assert_eq!(jwks.fetches(), 1);

    // The login service rotates: k2 in, k1 out. The first k2 token fetches the set.
    jwks.publish(Some(keys.jwks(&[("rs", "k2")])));
    let new = keys.sign("rs", Some("k2"), &claims("fay"));
    assert_eq!(get(&proxy, "/watch/2", Some(&new)).await.status(), 200);
    assert_eq!(jwks.fetches(), 2, "one fetch for the new kid");
    assert_eq!(
        proxy
            .metric("streamgate_jwks_refresh_total{result=\"ok\"}")
            .await,
        2.0
    );
    // k1's token was cached as good; its key left the set, so it is refused now.
    let (status, www, body) = error_of(get(&proxy, "/watch/3", Some(&old)).await).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("unknown_kid"))
    );
    assert!(www
        .unwrap_or_default()
        .contains("error_description=\"unknown_kid\""));

    // Made-up kids are refused without asking the login service again.
    for n in 0..5 {
        let forged = keys.sign("rs", Some(&format!("k{}", 10 + n)), &claims("fay"));
        let (status, _, body) = error_of(get(&proxy, "/watch/4", Some(&forged)).await).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (401, Some("unknown_kid"))
        );
    }
    assert_eq!(jwks.fetches(), 2, "no fetch within 30 s of the last");
}

/// `jwks_url` down: before any set, tokens are `503 auth_unavailable` (never `401`); once a
/// set arrived, a failing endpoint keeps it for `jwks_max_stale`, then `503` again until
/// the endpoint is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_down_keeps_the_last_good_set_until_it_is_too_stale() {
    let keys = Keys::make();
    let jwks = Jwks::start(None).await;
    let origin = Origin::start().await;
    let proxy = Proxy::start(
        &jwks_config(&origin, &jwks)
            .identity("jwt.jwks_refresh = \"1s\"")
            .identity("jwt.jwks_max_stale = \"3s\""),
    )
    .await;
    let failed = "streamgate_jwks_refresh_total{result=\"failed\"}";
    proxy.counted(failed, 1.0).await;
    assert_eq!(
        proxy.metric("streamgate_jwks_age_seconds").await,
        f64::INFINITY,
        "no set yet"
    );
    let token = |sub: &str| keys.sign("ec", Some("k1"), &claims(sub));
    let r = get(&proxy, "/watch/1", Some(&token("gus"))).await;
    assert_eq!(r.headers()["retry-after"], "5");
    let (status, www, body) = error_of(r).await;
    assert_eq!(
        (status, body["error"].as_str(), www),
        (503, Some("auth_unavailable"), None)
    );

    let set = keys.jwks(&[("ec", "k1")]);
    jwks.publish(Some(set.clone()));
    proxy
        .eventually(Duration::from_secs(5), "the set is fetched", || async {
            get(&proxy, "/watch/1", Some(&token("gus"))).await.status() == 200
        })
        .await;

    // The endpoint fails again: the set in hand still verifies new tokens...
    jwks.publish(None);
    let before = proxy.metric(failed).await;
    proxy.counted(failed, before + 1.0).await;
    assert_eq!(
        get(&proxy, "/watch/2", Some(&token("hal"))).await.status(),
        200
    );
    assert!(proxy.metric("streamgate_jwks_age_seconds").await >= 1.0);
    // ...until it is older than jwks_max_stale. (A user per poll: polls that pass open a
    // stream.)
    let polls = AtomicUsize::new(0);
    let fresh = || token(&format!("ida{}", polls.fetch_add(1, Ordering::Relaxed)));
    proxy
        .eventually(Duration::from_secs(8), "the set is too stale", || async {
            get(&proxy, "/watch/3", Some(&fresh())).await.status() == 503
        })
        .await;
    jwks.publish(Some(set));
    proxy
        .eventually(Duration::from_secs(5), "the endpoint is back", || async {
            get(&proxy, "/watch/3", Some(&fresh())).await.status() == 200
        })
        .await;
    assert!(
        proxy
            .metric("streamgate_auth_total{reason=\"keys_unavailable\",result=\"unavailable\"}")
            .await
            >= 2.0
    );
}
