//! The HTTPS listener's certificate and key, checked when the config is: Pingora loads them
//! only when the listener starts, and panics if they are bad. So they are loaded here first,
//! the way Pingora will load them (rustls on ring): a missing file, a file without PEM in
//! it, or a key that does not fit the certificate is one config error naming its key, and
//! exit code 2.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{KeyError, TlsSection};

/// One of the two files, as a UTF-8 path (what Pingora takes).
fn path<'a>(key: &str, p: Option<&'a Path>) -> Result<&'a str, KeyError> {
    let p = p.ok_or_else(|| KeyError::new(key, "required with tls.listen"))?;
    p.to_str()
        .ok_or_else(|| KeyError::new(key, "must be a UTF-8 path"))
}

impl TlsSection {
    /// The certificate chain and key files.
    pub(crate) fn files(&self) -> Result<(&str, &str), KeyError> {
        Ok((
            path("tls.cert_file", self.cert_file.as_deref())?,
            path("tls.key_file", self.key_file.as_deref())?,
        ))
    }
}

/// Check that the certificate chain and key load, and that the key is the certificate's.
pub(super) fn check(tls: &TlsSection) -> Result<(), KeyError> {
    let (cert_file, key_file) = tls.files()?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| KeyError::new("tls.cert_file", format!("cannot read it: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| KeyError::new("tls.cert_file", format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(KeyError::new("tls.cert_file", "holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| KeyError::new("tls.key_file", format!("no PEM private key read: {e}")))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| KeyError::new("tls.cert_file", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| KeyError::new("tls.key_file", format!("does not fit the certificate: {e}")))?;
    Ok(())
}
