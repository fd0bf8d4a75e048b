//! The upstream side of a forwarded request: which content server, with what timeouts,
//! and the request as the origin must see it (the client's address appended to
//! `X-Forwarded-For`, the stream parameter removed, the stream id added).

use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{RequestCtx, StreamGate};
use crate::config::HashKey;

const X_FORWARDED_FOR: &str = "X-Forwarded-For";

/// The `X-Forwarded-For` to send upstream: the client's own list (all its headers, in
/// order) with the address it connected from appended, as nginx's
/// `$proxy_add_x_forwarded_for` and Envoy do. Only the last entry is ours; what comes before
/// is whatever the client claimed.
fn forwarded_for<'a>(
    sent: impl IntoIterator<Item = &'a HeaderValue>,
    client: std::net::IpAddr,
) -> Option<HeaderValue> {
    let mut value = Vec::with_capacity(64);
    for v in sent.into_iter().filter(|v| !v.is_empty()) {
        value.extend_from_slice(v.as_bytes());
        value.extend_from_slice(b", ");
    }
    // Formatted straight into the value: no string of its own on every forwarded request.
    std::io::Write::write_fmt(&mut value, format_args!("{client}")).ok()?;
    HeaderValue::from_bytes(&value).ok()
}

impl StreamGate {
    /// The next content server for this request, with every timeout set: no request may
    /// hold a slot forever on a silent upstream.
    pub(super) fn peer(&self, session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let path = session.req_header().uri.path().as_bytes();
        let user = ctx.user.as_deref().map(str::as_bytes);
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let stream = ctx
            .stream_id
            .map(|s| s.hyphenated().encode_lower(&mut id).as_bytes());
        let key = match self.upstreams.hash_key() {
            HashKey::User => user.unwrap_or(path),
            HashKey::Stream => stream.or(user).unwrap_or(path),
            HashKey::Path => path,
        };
        // Every server is out (checked dead, ejected, or tried): refused at once, with no
        // connection to a server known dead.
        let chosen = self
            .upstreams
            .select(key, &ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no upstream available"))?;
        let mut peer = match &self.upstreams.tls {
            Some(tls) => {
                let mut p = HttpPeer::new(chosen.addr(), true, chosen.sni());
                p.options.verify_cert = tls.verify;
                p.options.verify_hostname = tls.verify;
                p
            }
            None => HttpPeer::new(chosen.addr(), false, String::new()),
        };
        ctx.chosen = Some(chosen);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.connect);
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.write);
        o.idle_timeout = Some(self.timeouts.idle);
        Ok(Box::new(peer))
    }

    /// The request as it goes upstream.
    pub(super) fn prepare_upstream_request(
        &self,
        session: &Session,
        upstream_request: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let headers = &upstream_request.headers;
        if headers.keys().any(|k| self.identity.is_lookalike(k)) {
            let lookalikes: Vec<_> = headers
                .keys()
                .filter(|k| self.identity.is_lookalike(k))
                .cloned()
                .collect();
            for name in lookalikes {
                upstream_request.remove_header(&name);
            }
        }
        if self.forwarded_for {
            let client = session.client_addr().and_then(|a| a.as_inet());
            if let Some(value) = client.and_then(|a| {
                forwarded_for(upstream_request.headers.get_all(X_FORWARDED_FOR), a.ip())
            }) {
                upstream_request.insert_header(X_FORWARDED_FOR, value)?;
            }
        }
        if let Some(name) = &self.plan_header {
            if !ctx.trusted_client {
                upstream_request.remove_header(name);
            }
        }
        let live = ctx.strip_token.then(|| self.live.load_full());
        let jwt = live.as_ref().and_then(|l| l.jwt.as_ref());
        if let Some(jwt) = jwt {
            jwt.strip(upstream_request);
            for h in jwt.claim_headers() {
                upstream_request.remove_header(h);
            }
            for (h, v) in ctx.forward.iter().flat_map(|f| f.iter()) {
                upstream_request.insert_header(h.clone(), v.clone())?;
            }
        }
        // The origin (and any cache before it) sees one URL for every viewer, and never a
        // token: the stream and token parameters go, the rest of the query stays as it was.
        let token_param = jwt
            .and_then(|j| j.token_param())
            .filter(|p| upstream_request.uri.query().is_some_and(|q| q.contains(p)));
        let device_param = self.device.as_ref().map(|(_, p)| p.as_str()).filter(|p| {
            ctx.route == crate::routing::Route::Watch
                && upstream_request.uri.query().is_some_and(|q| q.contains(p))
        });
        if ctx.strip_param || token_param.is_some() || device_param.is_some() {
            let uri = &upstream_request.uri;
            let mut kept = uri.query().unwrap_or_default().to_string();
            if ctx.strip_param {
                kept = crate::manifest::strip_param(&kept, &self.identity.stream_param);
            }
            for p in token_param.into_iter().chain(device_param) {
                kept = crate::manifest::strip_param(&kept, p);
            }
            let pq = if kept.is_empty() {
                uri.path().to_string()
            } else {
                format!("{}?{kept}", uri.path())
            };
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(
                http::uri::PathAndQuery::try_from(pq)
                    .explain_err(ErrorType::InvalidHTTPHeader, |_| "request path")?,
            );
            let uri = http::Uri::from_parts(parts)
                .explain_err(ErrorType::InvalidHTTPHeader, |_| "request path")?;
            upstream_request.set_uri(uri);
        }
        if let Some(id) = ctx.stream_id {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let id = id.hyphenated().encode_lower(&mut buf);
            // A renewal already carries exactly this id: leave the header map alone (an
            // insert grows and copies it).
            let sent = upstream_request.headers.get(&self.identity.stream_header);
            if sent.is_none_or(|v| v.as_bytes() != id.as_bytes()) {
                upstream_request.insert_header(self.stream_header_case.clone(), &*id)?;
            }
        }
        if let Some(status) = &ctx.limit_status {
            upstream_request.insert_header(super::LIMIT_STATUS, status.clone())?;
        }
        if let Some(host) = &self.upstreams.host {
            upstream_request.insert_header(http::header::HOST, host.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_client_to_what_was_sent() {
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let hv = HeaderValue::from_static;
        assert_eq!(forwarded_for([], v4).unwrap(), "192.0.2.7");
        assert_eq!(forwarded_for([], v6).unwrap(), "2001:db8::1");
        assert_eq!(
            forwarded_for([&hv("203.0.113.1")], v4).unwrap(),
            "203.0.113.1, 192.0.2.7"
        );
        // Several headers are one list, in order; empty ones add nothing.
        assert_eq!(
            forwarded_for([&hv("a, b"), &hv(""), &hv("c")], v6).unwrap(),
            "a, b, c, 2001:db8::1"
        );
    }
}
