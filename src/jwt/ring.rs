//! Signature checks with `ring`, the crypto library our TLS already uses.
//!
//! jsonwebtoken 10 ships two backends: `aws_lc_rs` (a second C crypto library beside
//! ring) and `rust_crypto` (pure Rust, but its RSA and P-256 verification cost 290 and
//! 570 µs per token here, against ring's 43 and 119 µs: `cargo bench --bench jwt`). It lets
//! a process install its own provider, so RS*, PS* and ES256/384 verification goes through
//! ring, the way jsonwebtoken's own aws-lc backend does it (aws-lc-rs mirrors ring's API).
//! EdDSA stays with `rust_crypto` (ed25519-dalek: 79 µs, ring 132 µs here), as do HMAC and
//! all signing (tests and benchmarks only).

use std::sync::OnceLock;

use jsonwebtoken::crypto::{rust_crypto, CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};

/// Use ring for this process's JWT verification. Idempotent; must come before the first
/// token is decoded or encoded (the first use fixes the provider).
pub fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        verifier_factory: new_verifier,
        ..rust_crypto::DEFAULT_PROVIDER.clone()
    });
    // Already installed (by an earlier call): nothing to do.
    let _ = provider.install_default();
}

/// A public-key check for one algorithm.
struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 | Algorithm::EdDSA => {
            (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key)
        }
        _ if key.family() != alg.family() => Err(ErrorKind::InvalidAlgorithm.into()),
        _ => Ok(Box::new(RingVerifier {
            alg: *alg,
            key: key.clone(),
        })),
    }
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let bad = |_| signature::Error::new();
        let rsa = |params: &'static sig::RsaParameters| match self.key.kind() {
            DecodingKeyKind::SecretOrDer(der) => UnparsedPublicKey::new(params, der)
                .verify(msg, signature)
                .map_err(bad),
            DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents { n, e }
                .verify(params, msg, signature)
                .map_err(bad),
        };
        let raw = |alg: &'static dyn sig::VerificationAlgorithm| {
            UnparsedPublicKey::new(alg, self.key.as_bytes())
                .verify(msg, signature)
                .map_err(bad)
        };
        match self.alg {
            Algorithm::RS256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
            Algorithm::ES256 => raw(&sig::ECDSA_P256_SHA256_FIXED),
            Algorithm::ES384 => raw(&sig::ECDSA_P384_SHA384_FIXED),
            // Never built for these (see `new_verifier`).
            Algorithm::EdDSA | Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                Err(signature::Error::new())
            }
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
