//! Where the store connects (one server or a cluster, `rediss://` with an optional CA),
//! and the connection made on first use.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, ScriptInvocation};

use super::RedisStore;

/// Where the store connects.
#[derive(Clone)]
pub enum Target {
    /// One server (`redis://` or `rediss://` URL).
    Single(String),
    /// A cluster, through its seed nodes.
    Cluster(Vec<String>),
}

#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(super) async fn query<T: redis::FromRedisValue + Send>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    pub(super) async fn invoke<T: redis::FromRedisValue + Send>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        match self {
            Conn::Single(c) => inv.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => inv.invoke_async(&mut c.clone()).await,
        }
    }
}

impl RedisStore {
    fn certs(&self) -> Option<redis::TlsCertificates> {
        self.tls_ca.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }

    /// A client for `url`, with the configured CA for `rediss://`.
    pub(super) fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        match self.certs() {
            Some(certs) => redis::Client::build_with_tls(url, certs),
            None => redis::Client::open(url),
        }
    }

    /// Connect on first use (and after a failed first attempt), inside the proxy's runtime.
    pub(super) async fn connect(&self) -> Result<&Conn, RedisError> {
        self.conn
            .get_or_try_init(|| async {
                match &self.target {
                    Target::Single(url) => {
                        let client = self.client(url)?;
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(self.tuning.timeout())
                            .set_response_timeout(self.tuning.timeout())
                            // No retry inside one attempt: a refused password (or a
                            // down server) is then its own error within `store.timeout`,
                            // not a timeout after backing off; the health check
                            // (`store.health_interval`) tries again in the background.
                            .set_number_of_retries(0)
                            .set_max_delay(1000);
                        Ok(Conn::Single(
                            client.get_connection_manager_with_config(config).await?,
                        ))
                    }
                    Target::Cluster(nodes) => {
                        let mut builder = ClusterClient::builder(nodes.clone())
                            .connection_timeout(self.tuning.timeout())
                            .response_timeout(self.tuning.timeout())
                            .retries(1);
                        if let Some(certs) = self.certs() {
                            builder = builder.certs(certs);
                        }
                        let client = builder.build()?;
                        Ok(Conn::Cluster(client.get_async_connection().await?))
                    }
                }
            })
            .await
    }
}
