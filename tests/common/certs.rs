//! Throwaway certificates for the TLS tests (Redis over TLS, the HTTPS listener), made
//! with the openssl CLI in a temporary directory: `ca.crt`/`ca.key`, and `server.crt`/
//! `server.key` for 127.0.0.1 signed by that CA.

use std::process::Command;

pub fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI.
pub fn make_certs(dir: &std::path::Path) {
    make_certs_for(dir, "server", "127.0.0.1", "IP:127.0.0.1");
}

/// A throwaway CA (`ca.crt`/`ca.key`) and `<name>.crt`/`<name>.key` for `cn`, with the
/// subject alternative name `san` (`IP:127.0.0.1`, `DNS:origin.test`), signed by it.
pub fn make_certs_for(dir: &std::path::Path, name: &str, cn: &str, san: &str) {
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=streamgate-test-ca",
        ],
        dir,
    );
    let subject = format!("/CN={cn}");
    openssl(
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
            &subject,
        ],
        dir,
    );
    std::fs::write(dir.join("san.ext"), format!("subjectAltName={san}\n")).unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        dir,
    );
}
