//! Where a token travels in a request (a bearer header, a query parameter, a cookie), and
//! its removal, with the headers only the proxy may set, before the request goes upstream.

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderName;
use pingora::http::RequestHeader;

use super::Verifier;

impl Verifier {
    /// The request's token: `Authorization: Bearer`, else the query parameter, else the
    /// cookie (those two only when configured).
    pub fn find_token<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
        if let Some(t) = req
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
        {
            return Some(t);
        }
        if let Some(param) = &self.token_param {
            let found = req.uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix(param.as_str())?.strip_prefix('='))
            });
            if let Some(t) = found.filter(|t| !t.is_empty()) {
                return Some(t);
            }
        }
        let cookie = self.token_cookie.as_deref()?;
        req.headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(cookie)?.strip_prefix('='))
            .filter(|t| !t.is_empty())
    }

    /// Remove every place a token may travel in (a bearer `Authorization`, the parameter
    /// is the caller's: see [`Self::token_param`], the cookie) from a request going
    /// upstream.
    pub fn strip(&self, upstream: &mut RequestHeader) {
        let is_bearer = upstream
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .is_some();
        if is_bearer {
            upstream.remove_header(&AUTHORIZATION);
        }
        let Some(name) = self.token_cookie.as_deref() else {
            return;
        };
        let is_token = |c: &str| c.trim().split('=').next() == Some(name);
        let carried = upstream
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(';').any(is_token));
        if !carried {
            // Cookies go upstream byte for byte unless the token is among them.
            return;
        }
        let cookies: Vec<String> = upstream
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .map(str::trim)
                    .filter(|c| !is_token(c))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|v| !v.is_empty())
            .collect();
        upstream.remove_header(&COOKIE);
        for c in cookies {
            if let Ok(v) = http::HeaderValue::from_str(&c) {
                let _ = upstream.append_header(COOKIE, v);
            }
        }
    }

    /// Headers only the proxy may set upstream (`claim_to_headers`): a client's copies go.
    pub fn claim_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.claim_headers.iter().map(|(h, _)| h)
    }

    /// The query parameter that may carry a token (removed upstream like the stream's).
    pub fn token_param(&self) -> Option<&str> {
        self.token_param.as_deref()
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
pub(crate) fn bearer(v: &str) -> Option<&str> {
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
