//! The keys a token may be verified with, loaded from `[identity.jwt]`'s files and
//! environment: PEM public keys, a JWKS file, an HMAC secret. Every error names the key
//! (`identity.jwt.keys[0].file`...) and never a secret's value.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{read_secret, JwtSection, KeyError};

/// One verification key, with the `kid` it is named by (if any).
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
}

/// Every key the files and the environment hold (none is fine when `jwks_url` is set).
pub(super) fn load(c: &JwtSection) -> Result<Vec<Key>, KeyError> {
    let mut keys = Vec::new();
    for (i, k) in c.keys.iter().enumerate() {
        let pem = read(&format!("identity.jwt.keys[{i}].file"), &k.file)?;
        let key = DecodingKey::from_rsa_pem(&pem)
            .or_else(|_| DecodingKey::from_ec_pem(&pem))
            .or_else(|_| DecodingKey::from_ed_pem(&pem))
            .map_err(|_| {
                KeyError::new(
                    format!("identity.jwt.keys[{i}].file"),
                    "not a PEM RSA, EC or Ed25519 public key",
                )
            })?;
        keys.push(Key {
            kid: Some(k.kid.clone()),
            key,
        });
    }
    if let Some(path) = &c.jwks_file {
        let text = read("identity.jwt.jwks_file", path)?;
        let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
            KeyError::new(
                "identity.jwt.jwks_file",
                format!("not a JSON Web Key Set: {e}"),
            )
        })?;
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                KeyError::new(
                    "identity.jwt.jwks_file",
                    format!("a key cannot be used: {e}"),
                )
            })?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                key,
            });
        }
    }
    let secret = read_secret(
        "identity.jwt.hmac_secret",
        c.hmac_secret_file.as_deref(),
        c.hmac_secret_env.as_deref(),
    )?;
    if let Some((key, secret)) = secret {
        if secret.len() < 32 {
            return Err(KeyError::new(
                key,
                "an HMAC secret must be at least 32 bytes",
            ));
        }
        keys.push(Key {
            kid: None,
            key: DecodingKey::from_secret(&secret),
        });
    }
    Ok(keys)
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path)
        .map_err(|e| KeyError::new(key, format!("cannot read {}: {e}", path.display())))
}

/// `identity.jwt.algorithms`, refusing `none` and names that are not algorithms.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, KeyError> {
    if names.is_empty() {
        return Err(KeyError::new(
            "identity.jwt.algorithms",
            "needs at least one algorithm",
        ));
    }
    names
        .iter()
        .map(|n| {
            n.parse::<Algorithm>().map_err(|_| {
                KeyError::new(
                    "identity.jwt.algorithms",
                    format!("{n:?} is not an accepted algorithm (none never is)"),
                )
            })
        })
        .collect()
}
