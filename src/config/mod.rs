//! The one configuration file: its schema, how it is read, and what makes it valid.
//!
//! Reading happens in three steps (read the file, parse with `serde` and
//! `deny_unknown_fields`, then [`Config::validate`]) so that every mistake in the file is
//! reported as one line naming the file and the key, and never as a panic. The same file
//! also yields Pingora's own [`ServerConf`], so there is no second config file to keep in
//! step. Error messages never echo values, because a Redis URL may carry a password.
//!
//! `schema.rs` is the file's shape and defaults (with `identity.rs` and `store.rs` for
//! the two largest sections), `validate.rs` what serde cannot check (one
//! function per section), `pingora.rs` Pingora's `ServerConf`; this file reads.

use std::path::{Path, PathBuf};

mod header;
mod identity;
mod pingora;
mod schema;
mod store;
mod streams;
#[cfg(test)]
mod tests;
mod tls;
mod upstream;
mod validate;

pub use header::Header;
pub use identity::*;
pub use schema::*;
pub use store::*;
pub use streams::*;
pub use upstream::*;

/// Why a config file was refused. `Display` is one line: `FILE: KEY: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read file: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but a key is missing, unknown, or has a bad value.
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

/// A problem with one key, before we know which file it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    fn in_file(self, file: &Path) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            key: self.key,
            message: self.message,
        }
    }
}

/// A secret set by `<key>_file` (its bytes, a final newline dropped) or `<key>_env` (the
/// variable's value): with the full key it came from, for the caller's own errors. Errors
/// name the key, the file or the variable, never the value. `None` when neither is set.
pub(crate) fn read_secret(
    key: &str,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<(String, Vec<u8>)>, KeyError> {
    match (file, env) {
        (Some(path), _) => {
            let k = format!("{key}_file");
            let mut v = std::fs::read(path)
                .map_err(|e| KeyError::new(&k, format!("cannot read {}: {e}", path.display())))?;
            if v.last() == Some(&b'\n') {
                v.pop();
            }
            Ok(Some((k, v)))
        }
        (None, Some(var)) => {
            let k = format!("{key}_env");
            let v = std::env::var_os(var)
                .ok_or_else(|| KeyError::new(&k, format!("{var} is not set")))?;
            Ok(Some((k, v.into_encoded_bytes())))
        }
        (None, None) => Ok(None),
    }
}

impl Config {
    /// Read, parse, apply overrides and validate the file at `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        };
        // A FIFO or a device would block the read (or never end): regular files only.
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Err(read(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text)
            .map(|c| c.with_overrides(overrides))
            .and_then(Config::validate)
            .map_err(|e| e.in_file(path))
    }

    /// Parse TOML text into a config, without validating it. Errors name the key path.
    pub fn parse(text: &str) -> Result<Config, KeyError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().replace('\n', " ");
            // serde names a missing key in the message, at its parent's path.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
                .map(str::to_owned);
            let key = if let Some(field) = missing {
                if path.is_empty() || path == "." {
                    field
                } else {
                    format!("{path}.{field}")
                }
            } else if path.is_empty() || path == "." {
                match inner.span() {
                    Some(span) => format!("line {}", line_of(text, span.start)),
                    None => "(top level)".into(),
                }
            } else {
                path
            };
            KeyError::new(key, message)
        })
    }

    /// Parse and validate TOML text (what tests and `--check` use).
    pub fn from_toml(text: &str) -> Result<Config, KeyError> {
        Self::parse(text)?.validate()
    }

    pub fn with_overrides(mut self, o: &Overrides) -> Config {
        if !o.listen.is_empty() {
            self.server.listen = o.listen.clone();
        }
        if !o.upstream.is_empty() {
            self.upstream.addrs = o.upstream.iter().map(|a| a.as_str().into()).collect();
        }
        if let Some(limit) = o.limit {
            self.streams.limit = limit;
        }
        if let Some(m) = &o.metrics {
            self.metrics.listen = Some(*m);
        }
        self
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|t| t.matches('\n').count() + 1)
        .unwrap_or(1)
}
