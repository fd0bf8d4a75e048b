//! JWT identity (issue #12): any bytes as a token, signed or not, never panic the
//! verifier, and only a token signed with the key is ever accepted.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use streamgate::config::JwtSection;
use streamgate::jwt::Verifier;

const SECRET: &[u8] = b"streamgate-fuzz-secret-32-bytes!";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let file = std::env::temp_dir().join("streamgate-fuzz-secret");
        std::fs::write(&file, SECRET).unwrap();
        let c = JwtSection {
            hmac_secret_file: Some(file),
            algorithms: vec!["HS256".into()],
            plan_claim: Some("a.plan".into()),
            limit_claim: Some("screens".into()),
            ..JwtSection::default()
        };
        Verifier::new(&c, None).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let v = verifier();
    // Bytes as a whole token: its header and claims parts are what the fuzzer mutates.
    if let Ok(p) = v.verify_uncached(text) {
        // Accepting means the signature matched our secret: the fuzzer would have to
        // have found an HMAC-SHA256 collision.
        panic!("accepted an unsigned token for {:?}", p.0.user);
    }
    // The same bytes as claims, signed properly: never a panic, whatever the claims hold.
    if let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        );
        if let Ok(t) = token {
            if let Ok((p, _)) = v.verify_uncached(&t) {
                assert!(!p.user.is_empty());
                assert!(p.limit.is_none_or(|l| l <= 10));
            }
        }
    }
});
