//! What a token costs (issue #12): a first request verifies its signature (RS256, ES256,
//! EdDSA: "cold"), every later one finds it in the cache. Aim: cold RS256 under 40 µs.
//!
//!     cargo bench --bench jwt

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use streamgate::config::{JwtKey, JwtSection};
use streamgate::jwt::Verifier;

#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn openssl(args: &[&str], dir: &std::path::Path) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("openssl must be installed")
        .success();
    assert!(ok, "openssl {args:?}");
}

fn bench(c: &mut Criterion) {
    // Before the first encode below: the first use of jsonwebtoken fixes its provider.
    streamgate::jwt::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "alice", "exp": exp, "plan": "premium"});
    for (name, alg, args) in [
        (
            "RS256",
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        (
            "ES256",
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        ),
        ("EdDSA", Algorithm::EdDSA, &["-algorithm", "ed25519"][..]),
    ] {
        let mut a = vec!["genpkey"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-out", "k.pem"]);
        openssl(&a, d);
        openssl(&["pkey", "-in", "k.pem", "-pubout", "-out", "p.pem"], d);
        let pem = std::fs::read(d.join("k.pem")).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap();
        let mut h = Header::new(alg);
        h.kid = Some("k".into());
        let token = encode(&h, &claims, &key).unwrap();
        let config = JwtSection {
            keys: vec![JwtKey {
                kid: "k".into(),
                file: d.join("p.pem"),
            }],
            algorithms: vec![name.into()],
            plan_claim: Some("plan".into()),
            ..JwtSection::default()
        };
        let v = Verifier::new(&config, None).unwrap();
        c.bench_function(&format!("jwt/{name}/cold"), |b| {
            b.iter(|| v.verify_uncached(&token).unwrap())
        });
        if alg == Algorithm::RS256 {
            c.bench_function("jwt/cached", |b| b.iter(|| v.verify(&token).unwrap()));
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
