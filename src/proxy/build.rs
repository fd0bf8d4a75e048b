//! What a [`StreamGate`] is made of: the config's values, parsed once into the proxy's
//! state (header names, upstreams, timeouts, CORS, manifest tagging).

use super::*;

impl StreamGate {
    /// The table of requests in flight per stream, which stream ends reaching this
    /// instance from the store cut (see [`crate::inflight`]).
    pub(crate) fn inflight(&self) -> Arc<StreamInflight> {
        self.inflight.clone()
    }

    /// The tags this proxy's log lines give users, for the admin API's lines.
    pub(crate) fn user_tags(&self) -> UserTags {
        self.user_tags.clone()
    }

    pub fn new(
        config: &Config,
        store: Arc<dyn StreamStore>,
        metrics: Metrics,
        drain: Arc<Drain>,
        access_log: AccessLog,
        live: reload::Shared,
        upstreams: Arc<crate::upstream::Upstreams>,
    ) -> Self {
        Self {
            live,
            identity: IdentityRules {
                session_header: config.identity.header.name().clone(),
                stream_header: config.streams.stream_id_header.name().clone(),
                stream_param: config.streams.stream_id_param.clone(),
                max_len: config.identity.max_len,
            },
            session_header_case: bytes::Bytes::from(config.identity.header.spelling().to_owned()),
            stream_header_case: bytes::Bytes::from(
                config.streams.stream_id_header.spelling().to_owned(),
            ),
            store,
            metrics,
            upstreams,
            timeouts: UpstreamTimeouts {
                connect: config.upstream.connect_timeout,
                read: config.upstream.read_timeout,
                write: config.upstream.write_timeout,
                idle: config.upstream.idle_timeout,
            },
            other_paths: config.server.other_paths,
            downstream_read_timeout: config.server.downstream_read_timeout,
            downstream_write_timeout: config.server.downstream_write_timeout,
            pipelining: config.server.pipelining,
            forwarded_for: config.upstream.forwarded_for,
            cors: respond::Cors::new(
                &config.streams.cors_origins,
                &[
                    config.streams.stream_id_header.spelling(),
                    config.identity.header.spelling(),
                    "Retry-After",
                ],
            ),
            tagger: Tagger::new(
                &config.streams.stream_id_param,
                &config.streams.rewrite_hosts,
            ),
            max_manifest_size: config.streams.max_manifest_size,
            max_request_head: config.server.max_request_head,
            redirect_manifests: config.streams.redirect_manifests,
            inflight: StreamInflight::new(config.streams.max_inflight_per_stream),
            drain,
            access_log,
            echo_session: config.identity.echo,
            device: config
                .streams
                .device_header
                .as_ref()
                .map(|h| (h.name().clone(), config.streams.device_param.clone())),
            user_tags: UserTags::default(),
            plan_header: config
                .identity
                .plan_header
                .as_ref()
                .map(|h| h.name().clone()),
            trusted_proxies: config.identity.trusted_proxies.clone(),
        }
    }
}
