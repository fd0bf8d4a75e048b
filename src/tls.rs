//! HTTPS on the listener (`[tls]`): HTTP/2 and HTTP/1.1 by ALPN, terminated here as an
//! edge proxy must (browsers play protected video only over HTTPS).
//!
//! Compiled into Pingora only with the cargo feature `tls`: Pingora's TLS support makes
//! every connection's state bigger, plain ones too (docs/tuning.md#tls-feature). Without it, a
//! config with `tls.listen` is refused at load.
//!
//! Pingora loads the certificate and key only when the listener starts, and panics if they
//! are bad, so config validation loads them first (`config/tls.rs`).

#[cfg(feature = "tls")]
use pingora::listeners::tls::TlsSettings;

#[cfg(feature = "tls")]
use crate::config::TlsSection;

/// Pingora's settings for one HTTPS listener. Call only on a validated config (its files were
/// checked in `config::tls`).
#[cfg(feature = "tls")]
pub fn listener_settings(tls: &TlsSection) -> pingora::Result<TlsSettings> {
    let (cert_file, key_file) = tls.files().map_err(|e| {
        pingora::Error::explain(
            pingora::ErrorType::InvalidCert,
            format!("{}: {}", e.key, e.message),
        )
    })?;
    let mut settings = TlsSettings::intermediate(cert_file, key_file)?;
    if tls.h2 {
        settings.enable_h2();
    }
    Ok(settings)
}
