//! Herald's configuration: one TOML file, every value overridable by a
//! `HERALD_...` environment variable (`HERALD_POSTGRES__URL` sets `postgres.url`).
//! The defaults are the ones `herald dev` needs on a machine with PostgreSQL and
//! Redis at their usual local addresses.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

mod clock;
pub use clock::Clock;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub gateway: GatewayConfig,
    pub sender: SenderConfig,
    pub scheduler: SchedulerConfig,
    pub triggers: TriggersConfig,
    pub recorder: RecorderConfig,
    pub providers: ProvidersConfig,
    pub sim: SimConfig,
    pub metrics: MetricsConfig,
    pub credentials: CredentialsConfig,
    pub shutdown: ShutdownConfig,
    pub telemetry: TelemetryConfig,
}

/// Trace export to an OpenTelemetry collector (logs go to stderr whatever
/// this says; `HERALD_LOG` filters them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP address (`http://collector:4318`); empty:
    /// no trace export.
    pub otlp_endpoint: String,
    /// `http/protobuf` or `http/json`.
    pub otlp_protocol: String,
    /// `service.name` of the exported spans; empty: `herald-ROLE`
    /// (`herald-gateway`, `herald-sender`, ...).
    pub service_name: String,
    /// The fraction of new traces recorded; a trace begun elsewhere (an API
    /// caller's `traceparent`) keeps its caller's decision.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            otlp_protocol: "http/protobuf".into(),
            service_name: String::new(),
            sample_ratio: 1.0,
        }
    }
}

/// Stopping on SIGTERM or SIGINT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long the roles get to stop taking work, settle what they hold and
    /// commit, before the process exits anyway (keep it under Kubernetes'
    /// `terminationGracePeriodSeconds`). Work cut off then is not lost: it
    /// is read again from Kafka and deduplicated.
    pub deadline_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            deadline_ms: 25_000,
        }
    }
}

/// Encryption at rest of the apps' provider credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialsConfig {
    /// 32 bytes, base64 (`openssl rand -base64 32`); set it with
    /// `HERALD_CREDENTIALS__KEY`, not in a file. Empty: credentials can be
    /// neither stored nor read (`herald dev` uses a fixed development key).
    pub key: String,
}

/// The operations endpoint of the roles in this process: Prometheus metrics
/// (`GET /metrics`), `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the endpoint; empty: none (`herald dev` uses 127.0.0.1:9464).
    pub listen: String,
    /// How often the backlog gauges (outbox, events, timers, campaigns) are
    /// read from PostgreSQL.
    pub backlog_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            backlog_interval_ms: 15_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// The database Herald uses; `herald dev` and `herald migrate` create it if missing.
    pub url: String,
    pub max_connections: u32,
    /// A statement running longer is cancelled (0: no limit). Migrations
    /// are not limited.
    pub statement_timeout_ms: u64,
    /// How long a request may wait for a pooled connection before failing
    /// (the API then answers 503).
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]`; `rediss://` for TLS.
    pub url: String,
    /// Every Redis key Herald writes starts with this.
    pub prefix: String,
    /// PEM file of the CA that signed the server's certificate (`rediss://`);
    /// empty: the system's CAs.
    pub tls_ca_cert_path: String,
    /// How Redis is deployed: one server at `url`, a primary named by
    /// Sentinel, or a Redis Cluster.
    pub mode: RedisMode,
    pub sentinel: RedisSentinelConfig,
    pub cluster: RedisClusterConfig,
    /// How many replicas must hold a sender's claims and settles before it
    /// sends on them (Redis `WAIT`), so that a failover keeps them. Unset:
    /// 1 with `mode = "sentinel"`, 0 (never wait) otherwise. A cluster's
    /// shards are not waited for.
    pub replica_acks: Option<u64>,
    /// How long a batch of claims or settles waits for them before the
    /// sender tries it again (at most a quarter of `sender.lease_ms`).
    pub replica_ack_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a proxy) at `redis.url`.
    #[default]
    Standalone,
    /// The primary that Sentinel names; followed through failovers.
    Sentinel,
    /// A Redis Cluster: keys are spread over its shards.
    Cluster,
}

/// `redis.mode = "sentinel"`: where the sentinels are, and which primary.
/// The primary's credentials, database and TLS come from `redis.url`; its
/// host and port are what the sentinels say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSentinelConfig {
    /// `redis://[:PASSWORD@]HOST:PORT` of each sentinel (the password is the
    /// sentinels' own, if they have one).
    pub nodes: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master_name: String,
}

impl Default for RedisSentinelConfig {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            master_name: "herald".into(),
        }
    }
}

/// `redis.mode = "cluster"`: some of the cluster's nodes; the rest are
/// discovered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RedisClusterConfig {
    /// `redis://[USER:PASSWORD@]HOST:PORT` (or `rediss://`) of one or more
    /// nodes.
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Empty: `herald dev` starts an embedded Kafka-protocol broker; other roles refuse to start.
    pub bootstrap_servers: String,
    pub topics: TopicsConfig,
    /// Partitions for topics Herald creates (embedded broker, `herald topics create`).
    pub partitions: i32,
    /// Replicas of each topic `herald topics create` makes.
    pub replication_factor: i32,
    /// `min.insync.replicas` of those topics: with `acks=all`, a write is
    /// acknowledged once this many replicas have it.
    pub min_insync_replicas: i32,
    /// How long a produce may keep retrying before it counts as failed.
    pub message_timeout_ms: u64,
    /// How long a consumer may be silent before its partitions go to another.
    pub session_timeout_ms: u64,
    /// How long a consumer's fetch waits at the broker when there is nothing
    /// new. Kafka answers as soon as a record arrives; brokers that answer an
    /// empty fetch only once this runs out (librdkafka's mock cluster) add up
    /// to this much to every delivery.
    pub fetch_wait_max_ms: u64,
    /// How much each consumer reads ahead of what it has handed over, in
    /// KiB (librdkafka's `queued.max.messages.kbytes`, whose default of
    /// 65,536 made most of a busy sender's memory). A few batches ahead keep
    /// a sender busy; more is memory held for nothing.
    pub consumer_queue_kbytes: u32,
    /// How long a consumer whose read-ahead is full waits before it fetches
    /// again (librdkafka's `fetch.queue.backoff.ms`). librdkafka's default,
    /// 1,000 ms, starves a consumer whose read-ahead is worth less than a
    /// second of work: it lets the queue run dry before fetching again.
    pub fetch_queue_backoff_ms: u64,
    /// More clusters by name (`[kafka.clusters.standby]`); `bootstrap_servers`
    /// above, if set, is the one named `primary`. Producers write to one
    /// cluster at a time; consumers read every one.
    pub clusters: BTreeMap<String, KafkaClusterConfig>,
    /// The order in which clusters are preferred; unnamed ones follow,
    /// `primary` first, then by name.
    pub failover_order: Vec<String>,
    /// How often every process checks the health of each cluster.
    pub health_check_interval_ms: u64,
    /// How long the active cluster may fail its health checks before
    /// producers switch to the next healthy one.
    pub failover_after_ms: u64,
    /// How long a more preferred cluster must pass its health checks before
    /// producers switch back to it; 0: only `herald cluster failover` does.
    pub failback_after_ms: u64,
    /// How long a producer may deliver nothing to a cluster that passes its
    /// health checks before it is thrown away and built anew (a fatal
    /// producer is rebuilt at once).
    pub rebuild_after_ms: u64,
    /// How long a Kafka client, or a loop that settles, relays or records
    /// work, may fail (with the cluster healthy) before `/readyz` says the
    /// process cannot do its job.
    pub unready_after_ms: u64,
    /// How Herald connects to every cluster: TLS and SASL.
    pub security: KafkaSecurityConfig,
}

/// Kafka connection security, applied to every cluster.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurityConfig {
    /// `plaintext` (empty: the same), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: String,
    /// With SASL: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// Set it with `HERALD_KAFKA__SECURITY__SASL_PASSWORD`, not in a file.
    pub sasl_password: String,
    /// PEM file of the CA that signed the brokers' certificates; empty: the
    /// system's CAs.
    pub ssl_ca_location: String,
    /// PEM files of a client certificate and its key, for mutual TLS.
    pub ssl_certificate_location: String,
    pub ssl_key_location: String,
}

// Never prints the password.
impl std::fmt::Debug for KafkaSecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurityConfig")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .finish_non_exhaustive()
    }
}

impl KafkaSecurityConfig {
    /// The librdkafka settings these stand for; an error names the setting
    /// at fault.
    pub fn client_settings(&self) -> Result<Vec<(&'static str, String)>, String> {
        let protocol = match self.protocol.trim().to_ascii_lowercase().as_str() {
            "" | "plaintext" => "plaintext",
            "ssl" => "ssl",
            "sasl_plaintext" => "sasl_plaintext",
            "sasl_ssl" => "sasl_ssl",
            other => {
                return Err(format!(
                "kafka.security.protocol `{other}`: use plaintext, ssl, sasl_plaintext or sasl_ssl"
            ))
            }
        };
        let mut out = vec![("security.protocol", protocol.to_string())];
        if protocol.starts_with("sasl") {
            let mechanism = match self.sasl_mechanism.trim().to_ascii_uppercase().as_str() {
                "" | "SCRAM-SHA-512" => "SCRAM-SHA-512",
                "SCRAM-SHA-256" => "SCRAM-SHA-256",
                "PLAIN" => "PLAIN",
                other => {
                    return Err(format!(
                        "kafka.security.sasl_mechanism `{other}`: use SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"
                    ))
                }
            };
            if self.sasl_username.is_empty() || self.sasl_password.is_empty() {
                return Err(
                    "kafka.security.sasl_username and sasl_password are needed with SASL".into(),
                );
            }
            out.push(("sasl.mechanism", mechanism.to_string()));
            out.push(("sasl.username", self.sasl_username.clone()));
            out.push(("sasl.password", self.sasl_password.clone()));
        }
        if protocol.ends_with("ssl") {
            for (key, value) in [
                ("ssl.ca.location", &self.ssl_ca_location),
                ("ssl.certificate.location", &self.ssl_certificate_location),
                ("ssl.key.location", &self.ssl_key_location),
            ] {
                if !value.is_empty() {
                    out.push((key, value.clone()));
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaClusterConfig {
    pub bootstrap_servers: String,
}

/// One configured cluster, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCluster {
    pub name: String,
    pub bootstrap_servers: String,
}

impl KafkaConfig {
    /// Every configured cluster, most preferred first.
    pub fn clusters(&self) -> Vec<NamedCluster> {
        let mut all: BTreeMap<&str, &str> = self
            .clusters
            .iter()
            .filter(|(_, c)| !c.bootstrap_servers.trim().is_empty())
            .map(|(n, c)| (n.as_str(), c.bootstrap_servers.as_str()))
            .collect();
        if !self.bootstrap_servers.trim().is_empty() {
            all.entry(PRIMARY)
                .or_insert(self.bootstrap_servers.as_str());
        }
        let mut names: Vec<&str> = self
            .failover_order
            .iter()
            .map(String::as_str)
            .filter(|n| all.contains_key(n))
            .collect();
        if all.contains_key(PRIMARY) && !names.contains(&PRIMARY) {
            names.push(PRIMARY);
        }
        for n in all.keys() {
            if !names.contains(n) {
                names.push(n);
            }
        }
        names
            .into_iter()
            .map(|n| NamedCluster {
                name: n.to_string(),
                bootstrap_servers: all[n].to_string(),
            })
            .collect()
    }

    /// This configuration narrowed to one cluster (for a consumer or probe
    /// that talks to that cluster only).
    /// It keeps the cluster's name, for logs and metrics.
    pub fn for_cluster(&self, cluster: &NamedCluster) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: String::new(),
            clusters: BTreeMap::from([(
                cluster.name.clone(),
                KafkaClusterConfig {
                    bootstrap_servers: cluster.bootstrap_servers.clone(),
                },
            )]),
            failover_order: Vec::new(),
            ..self.clone()
        }
    }
}

/// The name `kafka.bootstrap_servers` goes by among several clusters.
pub const PRIMARY: &str = "primary";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Delivery jobs of transactional pushes and fired triggers.
    pub deliveries: String,
    /// Delivery jobs of campaigns: a lane of their own, read by its own
    /// consumer group, so that a push never waits behind a million campaign
    /// jobs queued in the same partitions.
    pub campaigns: String,
    /// Deliveries waiting for a retry; a separate topic so that a retry never
    /// holds back the partition its job came from.
    pub retries: String,
    pub outcomes: String,
    /// Jobs that cannot be processed, with the reason (`herald dlq`).
    pub dead_letters: String,
    /// App events for trigger campaigns, keyed by user.
    pub events: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: String,
    /// How often the outbox relay looks for rows that were not published at once.
    pub relay_interval_ms: u64,
    /// How long a request waits for its own publish before answering with
    /// `Herald-Publish: deferred` (the relay publishes it later).
    pub publish_wait_ms: u64,
    /// Most push requests written in one transaction: requests arriving while
    /// the writers are busy wait and go together (group commit).
    pub accept_batch_max: usize,
    /// Transactions of push requests written at the same time.
    pub accept_writers: usize,
    /// How long an Idempotency-Key and its stored response are kept.
    pub idempotency_retention_hours: u64,
    /// Requests per second per API key; 0: no limit.
    pub rate_limit_per_second: u64,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// A request (body included) taking longer is cut off with 408.
    pub request_timeout_ms: u64,
    /// How often expired Idempotency-Keys are deleted.
    pub purge_interval_ms: u64,
    /// Serve the operators' dashboard under `/dashboard`.
    pub dashboard: bool,
    /// Mark the dashboard's session cookie `Secure`. Browsers keep secure
    /// cookies on http://localhost; turn it off only to reach the dashboard
    /// over plain HTTP on another host (behind a TLS proxy, leave it on).
    pub dashboard_secure_cookies: bool,
    /// How long an operator stays logged in.
    pub dashboard_session_hours: u64,
    /// PEM certificate chain and key: with both set the gateway speaks TLS
    /// (HTTP/2 and HTTP/1.1); empty: plain HTTP (behind a TLS proxy).
    pub tls_cert_path: String,
    pub tls_key_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SenderConfig {
    pub group_id: String,
    /// A claim's lease, renewed every third of it while its send is
    /// outstanding (at least 1000 ms).
    pub lease_ms: u64,
    pub request_timeout_ms: u64,
    /// How long a settled delivery is remembered in Redis (never shorter than
    /// the Idempotency-Key retention).
    pub dedupe_horizon_hours: u64,
    pub batch_size: usize,
    /// How long to wait to fill a batch.
    pub batch_linger_ms: u64,
    /// Provider requests in flight at once per sender process and lane.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Benchmarks only (`herald-bench dedupe`): false sends every job without
    /// claiming or settling it in Redis, to measure what the ledger costs.
    /// Never in production: duplicates reach devices.
    pub dedupe: bool,
}

/// The campaign scheduler.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How often to look for campaigns with a wave due.
    pub poll_interval_ms: u64,
    /// Installations read, filtered and produced per page; the checkpoint
    /// moves once per page.
    pub page_size: i64,
    /// Campaigns one scheduler process sends at once.
    pub max_concurrent_campaigns: usize,
    /// How soon a running campaign notices a pause or cancel.
    pub status_check_ms: u64,
    /// Produce no more while the senders' group is this many jobs behind on
    /// the deliveries topic: the queue stays short, so a pause holds back
    /// little, and a broker with small retention never drops queued jobs.
    /// 0: no limit.
    pub max_backlog: i64,
    /// Tests only: read "now" from this file (an RFC 3339 instant) instead of
    /// the system clock, to move through local-time waves at will. Empty: the
    /// system clock.
    pub clock_file: String,
}

/// The trigger engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TriggersConfig {
    pub group_id: String,
    /// Events read per batch.
    pub batch_size: usize,
    pub batch_linger_ms: u64,
    /// How often to look for due timers.
    pub poll_interval_ms: u64,
    /// Timers fired per database transaction.
    pub fire_batch: i64,
    /// Tests only: read "now" from this file (an RFC 3339 instant). Empty:
    /// the system clock.
    pub clock_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderConfig {
    pub group_id: String,
    pub batch_size: usize,
    pub batch_linger_ms: u64,
    /// Posts to an app's outcome webhook before giving up on an event.
    pub webhook_max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to an hour.
    pub webhook_retry_base_ms: u64,
    /// How often the webhook dispatcher looks for due events.
    pub webhook_poll_ms: u64,
    /// Days a delivery's outcome (and a message that named its devices) is
    /// kept. Never shorter than the dedupe horizon: rebuilding a lost Redis
    /// ledger reads the outcomes of that horizon.
    pub outcome_retention_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersConfig {
    /// `https://api.push.apple.com` in production; the simulator by default.
    pub apns_url: String,
    /// `https://api.sandbox.push.apple.com` for development builds' tokens;
    /// empty: the same as `apns_url`.
    pub apns_sandbox_url: String,
    /// `https://fcm.googleapis.com` in production; the simulator by default.
    pub fcm_url: String,
    /// Extra CA certificate (PEM) to trust, e.g. the simulator's TLS certificate.
    pub ca_cert_path: Option<String>,
    /// HTTP/2 connections per sender process (per provider host); each
    /// carries as many concurrent streams as the provider's SETTINGS allow.
    pub connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Cleartext HTTP/2 (h2c) and HTTP/1.1 for the inspection endpoints.
    pub listen: String,
    /// TLS (HTTP/2 via ALPN) with a generated certificate; empty disables it.
    pub tls_listen: String,
    /// SETTINGS_MAX_CONCURRENT_STREAMS per connection (APNs: about 1000).
    pub max_concurrent_streams: u32,
    /// What is kept of each accepted delivery.
    pub record: SimRecord,
}

/// `full`: every delivery with its payload (the default; tests assert on
/// it). `counts`: counts, duplicates and a sample of 1,000 deliveries plus
/// 1,000 duplicates, so memory stays flat at benchmark volumes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SimRecord {
    #[default]
    Full,
    Counts,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/herald".into(),
            max_connections: 16,
            statement_timeout_ms: 60_000,
            acquire_timeout_ms: 10_000,
        }
    }
}

impl RedisConfig {
    /// `replica_acks`, or what the deployment calls for when unset: a
    /// Sentinel deployment fails over to a replica, so a write must be on one.
    pub fn replica_acks(&self) -> u64 {
        self.replica_acks.unwrap_or(match self.mode {
            RedisMode::Sentinel => 1,
            RedisMode::Standalone | RedisMode::Cluster => 0,
        })
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald:".into(),
            tls_ca_cert_path: String::new(),
            mode: RedisMode::Standalone,
            sentinel: RedisSentinelConfig::default(),
            cluster: RedisClusterConfig::default(),
            replica_acks: None,
            replica_ack_timeout_ms: 1_000,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: String::new(),
            topics: TopicsConfig::default(),
            partitions: 8,
            replication_factor: 3,
            min_insync_replicas: 2,
            message_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
            fetch_wait_max_ms: 50,
            consumer_queue_kbytes: 8_192,
            fetch_queue_backoff_ms: 20,
            clusters: BTreeMap::new(),
            failover_order: Vec::new(),
            health_check_interval_ms: 2_000,
            failover_after_ms: 10_000,
            failback_after_ms: 300_000,
            rebuild_after_ms: 15_000,
            unready_after_ms: 30_000,
            security: KafkaSecurityConfig::default(),
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            deliveries: "herald.deliveries".into(),
            campaigns: "herald.campaigns".into(),
            retries: "herald.retries".into(),
            outcomes: "herald.outcomes".into(),
            dead_letters: "herald.dead-letters".into(),
            events: "herald.events".into(),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            relay_interval_ms: 1_000,
            publish_wait_ms: 250,
            accept_batch_max: 256,
            accept_writers: 4,
            idempotency_retention_hours: 24 * 7,
            rate_limit_per_second: 1000,
            max_body_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            purge_interval_ms: 600_000,
            dashboard: true,
            dashboard_secure_cookies: true,
            dashboard_session_hours: 12,
            tls_cert_path: String::new(),
            tls_key_path: String::new(),
        }
    }
}

impl SenderConfig {
    /// The group reading campaign jobs: apart from the deliveries' group, so
    /// that each lane has its own assignment and its own lag.
    pub fn campaigns_group(&self) -> String {
        format!("{}-campaigns", self.group_id)
    }

    /// The group reading retries, whose waits never touch the assignment of
    /// the other topics.
    pub fn retries_group(&self) -> String {
        format!("{}-retries", self.group_id)
    }
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            group_id: "herald-senders".into(),
            lease_ms: 60_000,
            request_timeout_ms: 10_000,
            dedupe_horizon_hours: 24 * 7,
            batch_size: 500,
            batch_linger_ms: 20,
            concurrency: 256,
            max_attempts: 8,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            dedupe: true,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 250,
            page_size: 1000,
            max_concurrent_campaigns: 8,
            status_check_ms: 250,
            max_backlog: 20_000,
            clock_file: String::new(),
        }
    }
}

impl Default for TriggersConfig {
    fn default() -> Self {
        Self {
            group_id: "herald-triggers".into(),
            batch_size: 1000,
            batch_linger_ms: 20,
            poll_interval_ms: 100,
            fire_batch: 500,
            clock_file: String::new(),
        }
    }
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            group_id: "herald-recorder".into(),
            batch_size: 1_000,
            batch_linger_ms: 50,
            webhook_max_attempts: 10,
            webhook_retry_base_ms: 1_000,
            webhook_poll_ms: 500,
            outcome_retention_days: 30,
        }
    }
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            apns_url: "http://127.0.0.1:8090".into(),
            apns_sandbox_url: String::new(),
            fcm_url: "http://127.0.0.1:8090".into(),
            ca_cert_path: None,
            connections: 4,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8090".into(),
            tls_listen: "127.0.0.1:8443".into(),
            max_concurrent_streams: 1000,
            record: SimRecord::Full,
        }
    }
}

impl TopicsConfig {
    pub fn all(&self) -> [&str; 6] {
        [
            self.deliveries.as_str(),
            self.campaigns.as_str(),
            self.retries.as_str(),
            self.outcomes.as_str(),
            self.dead_letters.as_str(),
            self.events.as_str(),
        ]
    }
}

impl Config {
    /// Every consumer group Herald runs, with the topic it reads: what the
    /// lag gauges, `herald cluster status` and the dashboard report.
    pub fn consumer_groups(&self) -> [(String, &str); 5] {
        let topics = &self.kafka.topics;
        [
            (self.sender.group_id.clone(), topics.deliveries.as_str()),
            (self.sender.campaigns_group(), topics.campaigns.as_str()),
            (self.sender.retries_group(), topics.retries.as_str()),
            (self.recorder.group_id.clone(), topics.outcomes.as_str()),
            (self.triggers.group_id.clone(), topics.events.as_str()),
        ]
    }

    /// Defaults, then the TOML file (if given), then `HERALD_` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        // These name the file and the logging, which are read before the
        // configuration: they are not settings.
        figment = figment.merge(
            Env::prefixed("HERALD_")
                .ignore(&["config", "log", "log_format"])
                .split("__"),
        );
        let config: Config = figment.extract().map_err(Box::new)?;
        Ok(config.normalized())
    }

    /// The dedupe horizon may never be shorter than the Idempotency-Key retention:
    /// a key replayed within its retention must still find its deliveries settled.
    fn normalized(mut self) -> Self {
        self.sender.dedupe_horizon_hours = self
            .sender
            .dedupe_horizon_hours
            .max(self.gateway.idempotency_retention_hours);
        let horizon_days = self.sender.dedupe_horizon_hours.div_ceil(24) + 1;
        self.recorder.outcome_retention_days = self
            .recorder
            .outcome_retention_days
            .max(u32::try_from(horizon_days).unwrap_or(u32::MAX));
        self
    }
}

#[cfg(test)]
// figment::Jail's closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn kafka_security_becomes_librdkafka_settings_and_names_what_is_wrong() {
        let none = KafkaSecurityConfig::default();
        assert_eq!(
            none.client_settings().unwrap(),
            vec![("security.protocol", "plaintext".to_string())]
        );
        let scram = KafkaSecurityConfig {
            protocol: "SASL_SSL".into(),
            sasl_username: "herald".into(),
            sasl_password: "s3cret".into(),
            ssl_ca_location: "/etc/herald/ca.pem".into(),
            ..Default::default()
        };
        let settings = scram.client_settings().unwrap();
        for expected in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "herald"),
            ("sasl.password", "s3cret"),
            ("ssl.ca.location", "/etc/herald/ca.pem"),
        ] {
            assert!(
                settings.iter().any(|(k, v)| (*k, v.as_str()) == expected),
                "{expected:?} missing"
            );
        }
        assert!(
            !format!("{scram:?}").contains("s3cret"),
            "Debug hides the password"
        );
        let no_password = KafkaSecurityConfig {
            protocol: "sasl_plaintext".into(),
            sasl_username: "herald".into(),
            ..Default::default()
        };
        assert!(no_password
            .client_settings()
            .unwrap_err()
            .contains("sasl_password"));
        let typo = KafkaSecurityConfig {
            protocol: "tls".into(),
            ..Default::default()
        };
        assert!(typo
            .client_settings()
            .unwrap_err()
            .contains("kafka.security.protocol"));
    }

    #[test]
    fn file_and_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            // The machine's own HERALD_* settings (the test script exports
            // some) must not reach the defaults under test.
            jail.clear_env();
            jail.create_file(
                "herald.toml",
                r#"
                [gateway]
                listen = "0.0.0.0:9000"
                [sender]
                batch_size = 7
                "#,
            )?;
            jail.set_env("HERALD_SENDER__BATCH_SIZE", "9");
            jail.set_env("HERALD_REDIS__PREFIX", "t1:");
            let c = Config::load(Some(Path::new("herald.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.gateway.listen, "0.0.0.0:9000");
            assert_eq!(c.sender.batch_size, 9);
            assert_eq!(c.redis.prefix, "t1:");
            assert_eq!(c.postgres, PostgresConfig::default());
            assert_eq!(c.redis.replica_acks(), 0, "one Redis: nothing to wait for");
            jail.set_env("HERALD_REDIS__MODE", "sentinel");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.redis.replica_acks(), 1, "Sentinel promotes a replica");
            jail.set_env("HERALD_REDIS__REPLICA_ACKS", "0");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.redis.replica_acks(), 0, "said explicitly");
            Ok(())
        });
    }

    #[test]
    fn clusters_come_in_the_order_of_preference() {
        figment::Jail::expect_with(|jail| {
            // The machine's own HERALD_* settings (the test script exports
            // some) must not reach the defaults under test.
            jail.clear_env();
            jail.set_env("HERALD_KAFKA__BOOTSTRAP_SERVERS", "a:9092");
            jail.set_env(
                "HERALD_KAFKA__CLUSTERS__STANDBY__BOOTSTRAP_SERVERS",
                "b:9092",
            );
            jail.set_env(
                "HERALD_KAFKA__CLUSTERS__ARCHIVE__BOOTSTRAP_SERVERS",
                "c:9092",
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let names: Vec<String> = c.kafka.clusters().into_iter().map(|c| c.name).collect();
            assert_eq!(names, ["primary", "archive", "standby"]);
            jail.set_env("HERALD_KAFKA__FAILOVER_ORDER", "[standby, primary]");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let clusters = c.kafka.clusters();
            let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["standby", "primary", "archive"]);
            assert_eq!(clusters[0].bootstrap_servers, "b:9092");
            let one = c.kafka.for_cluster(&clusters[0]);
            assert_eq!(one.clusters().len(), 1);
            assert_eq!(one.clusters()[0].bootstrap_servers, "b:9092");
            assert_eq!(one.clusters()[0].name, "standby");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            // The machine's own HERALD_* settings (the test script exports
            // some) must not reach the defaults under test.
            jail.clear_env();
            jail.create_file("herald.toml", "[gateway]\nlisten_typo = \"x\"\n")?;
            let err = Config::load(Some(Path::new("herald.toml"))).unwrap_err();
            assert!(err.to_string().contains("listen_typo"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn dedupe_horizon_is_never_shorter_than_key_retention() {
        figment::Jail::expect_with(|jail| {
            // The machine's own HERALD_* settings (the test script exports
            // some) must not reach the defaults under test.
            jail.clear_env();
            jail.set_env("HERALD_SENDER__DEDUPE_HORIZON_HOURS", "1");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.sender.dedupe_horizon_hours, 24 * 7);
            Ok(())
        });
    }

    #[test]
    fn outcomes_are_kept_past_the_dedupe_horizon() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("HERALD_RECORDER__OUTCOME_RETENTION_DAYS", "2");
            jail.set_env("HERALD_SENDER__DEDUPE_HORIZON_HOURS", "240");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.recorder.outcome_retention_days, 11);
            jail.set_env("HERALD_RECORDER__OUTCOME_RETENTION_DAYS", "90");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.recorder.outcome_retention_days, 90);
            Ok(())
        });
    }
}
