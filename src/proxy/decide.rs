//! Which way a request goes: framing and path checks before any route is trusted, then
//! health, readiness, other paths, or admission on a watch route.

use super::*;

impl StreamGate {
    /// Time a store call into the store-latency histogram.
    pub(super) async fn timed<T>(
        &self,
        op: StoreOp,
        fut: impl std::future::Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        let t = Instant::now();
        let out = fut.await;
        self.metrics.store_op(op, t.elapsed());
        out
    }

    /// What to do with a request: forward it, or which answer it gets. Framing and paths
    /// first (before any route is trusted), then the route.
    pub(super) async fn decide(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<admit::Forward, Answer> {
        let raw = || match session.as_downstream() {
            pingora::protocols::http::ServerSession::H1(h1) => Some(h1.get_headers_raw_bytes()),
            _ => None,
        };
        let req = session.req_header();
        if let Some(r) = framing::check(req, self.max_request_head, raw) {
            return Err(Answer::Framing(r));
        }
        let path = routing::canonical(req.uri.path())
            .map_err(|AmbiguousPath(why)| Answer::InvalidPath(why))?;
        if path == "*" && req.method != Method::OPTIONS {
            return Err(Answer::InvalidPath("only OPTIONS may ask for '*'"));
        }
        if self.plan_header.is_some() {
            let ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            ctx.trusted_client =
                ip.is_some_and(|ip| self.trusted_proxies.iter().any(|n| n.contains(&ip)));
        }
        let live = self.live.load();
        ctx.route = live.routes.classify(&path);
        // Every watch request, probes and preflights included: no token goes upstream.
        ctx.strip_token = ctx.route == Route::Watch && live.jwt.is_some();
        drop(live);
        // On every watch request, preflights included: the origin never sees the parameter.
        ctx.strip_param = ctx.route == Route::Watch
            && req
                .uri
                .query()
                .is_some_and(|q| q.contains(self.identity.stream_param.as_str()));
        if ctx.route == Route::Watch && !WATCH_METHODS.contains(&req.method) {
            return Err(Answer::MethodNotAllowed);
        }
        match ctx.route {
            Route::Health => Err(Answer::Health),
            Route::Ready if self.drain.draining() => Err(Answer::Draining),
            Route::Ready if !self.upstreams.ready() => Err(Answer::NoUpstream),
            Route::Ready => match self.timed(StoreOp::Ping, self.store.ping()).await {
                Ok(()) => Err(Answer::Ready),
                Err(e) => {
                    self.metrics.store_error(&e);
                    Err(Answer::Store(e))
                }
            },
            // A CORS preflight, and a HEAD (a player probing a URL's type or size), fetch
            // no media: forwarded without identity, and they open or renew nothing, so a
            // probe before the GET cannot cost the viewer a second stream.
            Route::Watch if matches!(req.method, Method::OPTIONS | Method::HEAD) => {
                Ok(admit::Forward)
            }
            Route::Watch => self.admit(req, ctx).await,
            Route::Other => match self.other_paths {
                OtherPaths::Forward => Ok(admit::Forward),
                OtherPaths::NotFound => Err(Answer::NotFound),
            },
        }
    }
}
