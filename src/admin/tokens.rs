//! The admin API's two bearer tokens: read once at start from files or the environment,
//! compared in constant time, never logged or echoed.

use http::HeaderValue;
use subtle::ConstantTimeEq;

use crate::config::{read_secret, AdminSection, KeyError};

/// The shortest token accepted: a guessable one is no lock.
const MIN_TOKEN: usize = 16;

/// What a request's token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    None,
    Read,
    Write,
}

/// The two bearer tokens, read once at start.
pub struct Tokens {
    read: Option<Vec<u8>>,
    write: Vec<u8>,
}

impl Tokens {
    /// Read the tokens `[admin]` names. Errors name the key, never the value.
    pub fn load(a: &AdminSection) -> Result<Self, KeyError> {
        let read = token("admin.read_token", &a.read_token_file, &a.read_token_env)?;
        let write = token("admin.write_token", &a.write_token_file, &a.write_token_env)?
            .ok_or_else(|| {
                KeyError::new(
                    "admin.write_token_file",
                    "admin.listen needs a write token (write_token_file or write_token_env)",
                )
            })?;
        Ok(Self { read, write })
    }

    pub(super) fn scope(&self, authorization: Option<&HeaderValue>) -> Scope {
        let Some(given) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(crate::jwt::bearer)
        else {
            return Scope::None;
        };
        let given = given.as_bytes();
        if bool::from(given.ct_eq(&self.write)) {
            Scope::Write
        } else if self
            .read
            .as_ref()
            .is_some_and(|r| bool::from(given.ct_eq(r)))
        {
            Scope::Read
        } else {
            Scope::None
        }
    }
}

fn token(
    key: &str,
    file: &Option<std::path::PathBuf>,
    env: &Option<String>,
) -> Result<Option<Vec<u8>>, KeyError> {
    let Some((key, mut value)) = read_secret(key, file.as_deref(), env.as_deref())? else {
        return Ok(None);
    };
    while value.last().is_some_and(u8::is_ascii_whitespace) {
        value.pop();
    }
    if value.len() < MIN_TOKEN {
        return Err(KeyError::new(
            key,
            format!("a token must be at least {MIN_TOKEN} bytes"),
        ));
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            read: Some(b"read-token-0123456789".to_vec()),
            write: b"write-token-0123456789".to_vec(),
        }
    }

    #[test]
    fn a_token_gives_its_scope_and_nothing_else_does() {
        let t = tokens();
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        assert_eq!(t.scope(None), Scope::None);
        assert_eq!(
            t.scope(Some(&h("Bearer write-token-0123456789"))),
            Scope::Write
        );
        assert_eq!(
            t.scope(Some(&h("Bearer read-token-0123456789"))),
            Scope::Read
        );
        assert_eq!(
            t.scope(Some(&h("Bearer read-token-012345678"))),
            Scope::None
        );
        assert_eq!(t.scope(Some(&h("write-token-0123456789"))), Scope::None);
        assert_eq!(t.scope(Some(&h("Basic d3JpdGU="))), Scope::None);
        assert_eq!(
            t.scope(Some(&h("bearer read-token-0123456789"))),
            Scope::Read,
            "the scheme in any case"
        );
    }

    #[test]
    fn tokens_are_read_trimmed_and_must_be_long() {
        let dir = std::env::temp_dir().join(format!("sg-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("write");
        std::fs::write(&file, "write-token-0123456789\n").unwrap();
        let a = AdminSection {
            write_token_file: Some(file.clone()),
            ..AdminSection::default()
        };
        let t = Tokens::load(&a).unwrap();
        assert_eq!(t.write, b"write-token-0123456789");
        std::fs::write(&file, "short").unwrap();
        let e = Tokens::load(&a).err().unwrap();
        assert_eq!(e.key, "admin.write_token_file");
        assert!(
            !e.to_string().contains("short"),
            "the value is never echoed"
        );
    }
}
