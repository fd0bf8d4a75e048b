//! The HTTPS listener (`[tls]`): the same contract over TLS, by HTTP/1.1 and by HTTP/2
//! (ALPN), sharing one limit with the plain listener. Needs the `tls` feature.
#![cfg(feature = "tls")]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::certs::make_certs;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A TLS connection to the proxy's HTTPS listener, trusting only the test CA, offering
/// `alpn`.
async fn connect(proxy: &Proxy, certs: &Path, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.join("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(proxy.tls_addr.expect("an HTTPS listener"))
        .await
        .unwrap();
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// An origin and a proxy serving HTTPS too, with certificates made for this test (the
/// directory lives as long as the returned handle).
async fn https_proxy() -> (tempfile::TempDir, Origin, Proxy) {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).https(certs.path())).await;
    (certs, origin, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_by_http1_answers_health() {
    let (certs, _origin, proxy) = https_proxy().await;

    let mut conn = connect(&proxy, certs.path(), &[b"http/1.1"]).await;
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // Until the proxy closes; a close without a TLS close_notify is an error here, and the
    // bytes read before it are kept.
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .expect("no answer over TLS");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(r#"{"status":"UP"}"#), "{out}");
}

/// Send `GET path` as `user` on an HTTP/2 connection: status, `stream-id`, body.
async fn h2_get(
    client: h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    user: &str,
) -> (u16, Option<String>, String) {
    let request = http::Request::get(format!("https://127.0.0.1{path}"))
        .header("session-id", user)
        .body(())
        .unwrap();
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.expect("an HTTP/2 response");
    let status = response.status().as_u16();
    let stream = response
        .headers()
        .get("stream-id")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        text.extend_from_slice(&chunk);
    }
    (status, stream, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_by_http2_keeps_the_limit_shared_with_plain_http() {
    let (certs, origin, proxy) = https_proxy().await;

    let conn = connect(&proxy, certs.path(), &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        conn.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN chose HTTP/2"
    );
    let (client, connection) = h2::client::handshake(conn).await.unwrap();
    tokio::spawn(connection);

    let (status, _, body) = h2_get(client.clone(), "/health", "-").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"UP"}"#));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, id, body) = h2_get(client.clone(), "/watch/seg1", "tls-user").await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok /watch/seg1");
        ids.push(id.expect("a Stream-Id"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    let (status, _, body) = h2_get(client.clone(), "/watch/seg1", "tls-user").await;
    assert_eq!(status, 401);
    assert!(body.contains("stream_limit_exceeded"), "{body}");
    assert_eq!(origin.served(), 3);

    // The plain listener counts against the same limit.
    let r = proxy.watch("/watch", "tls-user", None).await;
    assert_eq!(r.status(), 401);
}
