use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn verifier(extra: impl FnOnce(&mut JwtSection)) -> Verifier {
    install_crypto();
    // One file per verifier: tests run in parallel, and a file rewritten under a reader
    // reads empty.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sg-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("secret-{n}"));
    std::fs::write(&file, SECRET).unwrap();
    let mut c = JwtSection {
        hmac_secret_file: Some(file),
        algorithms: vec!["HS256".into()],
        plan_claim: Some("app.plan".into()),
        limit_claim: Some("screens".into()),
        max_limit: 5,
        ..JwtSection::default()
    };
    extra(&mut c);
    Verifier::new(&c, None).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

#[test]
fn claims_give_the_user_plan_and_capped_limit() {
    let v = verifier(|_| {});
    let t = token(json!({"sub": "alice", "exp": now() + 60,
        "app": {"plan": "premium"}, "screens": 9}));
    let p = v.verify(&t).unwrap();
    assert_eq!(&*p.user, "alice");
    assert_eq!(p.plan.as_deref(), Some("premium"));
    assert_eq!(p.limit, Some(5), "capped by max_limit");
    assert_eq!(v.verify(&t).unwrap(), p, "the cached answer is the same");
}

#[test]
fn each_bad_token_has_its_reason() {
    let v = verifier(|c| {
        c.issuers = vec!["login".into()];
        c.max_lifetime = Some(Duration::from_secs(3600));
    });
    let ok = json!({"sub": "a", "iss": "login", "iat": now(), "exp": now() + 60});
    assert!(v.verify(&token(ok.clone())).is_ok());
    let with = |k: &str, val: Value| {
        let mut c = ok.clone();
        c[k] = val;
        token(c)
    };
    assert_eq!(
        v.verify(&with("exp", json!(now() - 120))),
        Err(TokenError::Expired)
    );
    assert_eq!(
        v.verify(&with("nbf", json!(now() + 120))),
        Err(TokenError::NotYetValid)
    );
    assert_eq!(
        v.verify(&with("iss", json!("evil"))),
        Err(TokenError::BadIssuer)
    );
    assert_eq!(
        v.verify(&with("exp", json!(now() + 7200))),
        Err(TokenError::TooLongLived)
    );
    assert_eq!(
        v.verify(&with("sub", json!(""))),
        Err(TokenError::MissingClaim)
    );
    let mut no_exp = ok.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(v.verify(&token(no_exp)), Err(TokenError::MissingClaim));
    assert_eq!(v.verify("not.a.token"), Err(TokenError::Malformed));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &ok,
        &EncodingKey::from_secret(b"another secret, of the right length!"),
    )
    .unwrap();
    assert_eq!(v.verify(&forged), Err(TokenError::BadSignature));
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &ok,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(
        v.verify(&hs384),
        Err(TokenError::BadAlgorithm),
        "not in the allow-list"
    );
}

#[test]
fn an_hmac_secret_may_come_from_the_environment_never_too_short() {
    install_crypto();
    let env = |var: &str| JwtSection {
        hmac_secret_env: Some(var.into()),
        algorithms: vec!["HS256".into()],
        ..JwtSection::default()
    };
    std::env::set_var("SG_TEST_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
    let v = Verifier::new(&env("SG_TEST_JWT_SECRET"), None).unwrap();
    let t = token(json!({"sub": "env", "exp": now() + 60}));
    assert_eq!(&*v.verify(&t).unwrap().user, "env");
    let unset = Verifier::new(&env("SG_TEST_JWT_UNSET"), None)
        .err()
        .unwrap();
    assert_eq!(unset.key, "identity.jwt.hmac_secret_env");
    std::env::set_var("SG_TEST_JWT_SHORT", "short");
    let short = Verifier::new(&env("SG_TEST_JWT_SHORT"), None)
        .err()
        .unwrap();
    assert!(short.message.contains("32 bytes"), "{short}");
    assert!(
        !short.to_string().contains("short\""),
        "the secret is not echoed"
    );
}

#[test]
fn alg_none_is_refused() {
    let v = verifier(|_| {});
    // {"alg":"none","typ":"JWT"} . {"sub":"a","exp":9999999999} . (no signature)
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    assert!(v.verify(none).is_err());
    assert!(parse_algorithms(&["none".into()]).is_err());
}

#[test]
fn a_fetched_key_set_keeps_the_keys_that_verify_and_skips_the_rest() {
    let ed = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed1",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    let set = json!({"keys": [
        ed,
        {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
         "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
        {"kty": "PQC", "kid": "future"},
    ]});
    let (keys, fingerprint) = remote::parse_set(set.to_string().as_bytes()).unwrap();
    let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, [Some("ed1")]);
    // The fingerprint is of the usable keys: the skipped ones and member order do not
    // change it; another key does.
    let same = json!({"keys": [{"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "kid": "ed1", "crv": "Ed25519", "kty": "OKP"}]});
    assert_eq!(
        remote::parse_set(same.to_string().as_bytes()).unwrap().1,
        fingerprint
    );
    let mut other = ed.clone();
    other["kid"] = json!("ed2");
    let other = json!({"keys": [other]});
    assert_ne!(
        remote::parse_set(other.to_string().as_bytes()).unwrap().1,
        fingerprint
    );
    for bad in [
        &b"not json"[..],
        br#"{"keys": []}"#,
        br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
    ] {
        assert!(remote::parse_set(bad).is_err());
    }
    assert!(remote::parse_url("https://login.example/.well-known/jwks.json").is_ok());
    for bad in ["file:///etc/jwks.json", "login.example/jwks", "https://"] {
        assert!(remote::parse_url(bad).is_err(), "{bad}");
    }
}
