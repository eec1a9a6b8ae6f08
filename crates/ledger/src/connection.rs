//! One Redis connection for every way Redis is deployed: a standalone server,
//! the primary that Redis Sentinel names, or a Redis Cluster.

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, TlsCertificates, Value,
};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where Herald's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a proxy in front of several).
    Standalone { url: String },
    /// The primary the sentinels monitor as `master_name`. `url` gives its
    /// credentials, database and TLS; the sentinels give its address.
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
        url: String,
    },
    /// A Redis Cluster, found from any of `nodes`.
    Cluster { nodes: Vec<String> },
}

/// A [`RedisTarget`] and the CA to trust for `rediss://` (None: the system's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisEndpoint {
    pub target: RedisTarget,
    pub ca_cert_pem: Option<Vec<u8>>,
}

impl RedisEndpoint {
    pub fn standalone(url: &str) -> Self {
        Self {
            target: RedisTarget::Standalone { url: url.into() },
            ca_cert_pem: None,
        }
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.ca_cert_pem.clone().map(|root_cert| TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        })
    }

    fn client(&self, url: &str) -> RedisResult<redis::Client> {
        match self.certificates() {
            Some(certs) => redis::Client::build_with_tls(url, certs),
            None => redis::Client::open(url),
        }
    }
}

/// A connection that reconnects by itself; cheap to clone (clones share it).
#[derive(Clone)]
pub struct RedisConnection(Inner);

#[derive(Clone)]
enum Inner {
    Standalone(ConnectionManager),
    Sentinel(SentinelConnection),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    pub async fn connect(endpoint: &RedisEndpoint) -> RedisResult<Self> {
        Ok(Self(match &endpoint.target {
            RedisTarget::Standalone { url } => {
                Inner::Standalone(ConnectionManager::new(endpoint.client(url)?).await?)
            }
            RedisTarget::Sentinel {
                sentinels,
                master_name,
                url,
            } => Inner::Sentinel(
                SentinelConnection::connect(sentinel_client(
                    endpoint,
                    sentinels,
                    master_name,
                    url,
                )?)
                .await?,
            ),
            RedisTarget::Cluster { nodes } => {
                let mut builder = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(Duration::from_secs(5))
                    .response_timeout(Duration::from_secs(10));
                if let Some(certs) = endpoint.certificates() {
                    builder = builder.certs(certs);
                }
                Inner::Cluster(builder.build()?.get_async_connection().await?)
            }
        }))
    }

    /// A cluster spreads keys over shards: a pipeline or a script may only
    /// touch keys of one hash slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Inner::Cluster(_))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Standalone(c) => c.req_packed_command(cmd),
            Inner::Sentinel(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Standalone(c) => c.get_db(),
            Inner::Sentinel(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

fn sentinel_client(
    endpoint: &RedisEndpoint,
    sentinels: &[String],
    master_name: &str,
    url: &str,
) -> RedisResult<SentinelClient> {
    let mut addresses = Vec::new();
    let mut sentinel_auth = None;
    for s in sentinels {
        let info = s.as_str().into_connection_info()?;
        if sentinel_auth.is_none() {
            sentinel_auth = info.redis_settings().password().map(str::to_string);
        }
        addresses.push(info.addr().clone());
    }
    let primary = url.into_connection_info()?;
    let settings = primary.redis_settings();
    let mut builder =
        SentinelClientBuilder::new(addresses, master_name, SentinelServerType::Master)?
            .set_client_to_redis_db(settings.db());
    if let Some(user) = settings.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = settings.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = sentinel_auth {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if url.starts_with("rediss://") {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(certs) = endpoint.certificates() {
            builder = builder.set_client_to_redis_certificates(certs);
        }
    }
    builder.build()
}

/// The primary that Sentinel names, followed through failovers.
///
/// It moves on an error, not on Sentinel's announcement:
/// - a command the server refused as a replica (`READONLY`) or while loading
///   did not run: the connection asks Sentinel for the primary, moves there,
///   and sends it once more;
/// - a command whose connection broke may have run, so its error is returned
///   (the caller decides, as with any lost connection), and the connection
///   asks Sentinel before the next one.
///
/// Clones share the connection, so one move moves them all.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<SentinelShared>,
}

struct SentinelShared {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection and how many moves it has seen, so that concurrent
    /// callers failing on the same connection move once.
    current: RwLock<(u64, MultiplexedConnection)>,
}

/// How long one Sentinel lookup and the connection to the primary may take.
const SENTINEL_LOOKUP: Duration = Duration::from_secs(5);

impl SentinelConnection {
    async fn connect(mut client: SentinelClient) -> RedisResult<Self> {
        let conn = lookup(&mut client).await?;
        Ok(Self {
            shared: Arc::new(SentinelShared {
                client: tokio::sync::Mutex::new(client),
                current: RwLock::new((0, conn)),
            }),
        })
    }

    fn current(&self) -> (u64, MultiplexedConnection) {
        let guard = self
            .shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Moves to the primary Sentinel names now, unless another caller moved
    /// since `seen`.
    async fn follow(&self, seen: u64) -> RedisResult<()> {
        let mut client = self.shared.client.lock().await;
        if self.current().0 != seen {
            return Ok(());
        }
        let conn = lookup(&mut client).await?;
        let mut guard = self
            .shared
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = (seen + 1, conn);
        tracing::warn!("Redis Sentinel: connected to the primary it names now");
        Ok(())
    }
}

impl SentinelConnection {
    /// Whether `answer` was refused by a server that is no longer the
    /// primary (then the caller moves and sends again). A lost connection is
    /// not retried (the command may have run), but the next command goes to
    /// the primary Sentinel names by then.
    async fn refused<T>(
        &self,
        seen: u64,
        answer: &RedisResult<T>,
        refused_value: impl Fn(&T) -> bool,
    ) -> bool {
        match answer {
            Ok(v) => refused_value(v),
            Err(e) if error_refused_here(e) => true,
            Err(e) if connection_lost(e) => {
                if let Err(lookup) = self.follow(seen).await {
                    tracing::warn!(error = %lookup, "Redis Sentinel lookup failed");
                }
                false
            }
            Err(_) => false,
        }
    }
}

async fn lookup(client: &mut SentinelClient) -> RedisResult<MultiplexedConnection> {
    tokio::time::timeout(SENTINEL_LOOKUP, client.get_async_connection())
        .await
        .map_err(|_| {
            RedisError::from((
                ErrorKind::Io,
                "no primary from Redis Sentinel",
                format!("timed out after {SENTINEL_LOOKUP:?}"),
            ))
        })?
}

/// Refused without running: the server is a replica now, or loading.
fn refused_here(kind: Option<ServerErrorKind>) -> bool {
    matches!(
        kind,
        Some(ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading)
    )
}

fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

fn error_refused_here(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(kind) => refused_here(Some(kind)),
        _ => false,
    }
}

fn value_refused_here(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if refused_here(e.kind()))
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (seen, mut conn) = self.current();
            let answer = conn.req_packed_command(cmd).await;
            if !self.refused(seen, &answer, value_refused_here).await {
                return answer;
            }
            self.follow(seen).await?;
            self.current().1.req_packed_command(cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (seen, mut conn) = self.current();
            let answer = conn.req_packed_commands(pipeline, offset, count).await;
            // A replica applies none of a pipeline's writes. What the old
            // primary applied before it was demoted the new one either has
            // (replicated) or lost with it, so sending all of it again to the
            // new primary is the same as sending it the first time.
            let any_refused = |values: &Vec<Value>| values.iter().any(value_refused_here);
            if !self.refused(seen, &answer, any_refused).await {
                return answer;
            }
            self.follow(seen).await?;
            self.current()
                .1
                .req_packed_commands(pipeline, offset, count)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}
