//! Starting each role. `herald dev` composes the same functions.

use crate::failover::{FailoverController, LagProbes};
use crate::ops::Readiness;
use crate::preflight;
use anyhow::{Context, Result};
use herald_bus::{BatchConsumer, Publisher};
use herald_config::Config;
use herald_gateway::{AppState, OutboxRelay};
use herald_ledger::{Ledger, Replication};
use herald_providers::{ProviderSettings, Providers};
use herald_recorder::Recorder;
use herald_sender::Sender;
use herald_sim::Simulator;
use herald_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Role tasks of one process; the first to fail stops the others.
pub struct Roles {
    pub tasks: JoinSet<Result<()>>,
    pub shutdown: CancellationToken,
    /// One producer set for every role of the process, so that a failover
    /// moves them all at once.
    publisher: Option<Publisher>,
    /// One lag probe per consumer group and cluster for every user in the
    /// process (the lag gauges, the dashboard, the sender's wait for the
    /// recorder, the scheduler's backlog check): each probe is a whole
    /// librdkafka client, with its threads and broker connections.
    lag_probes: Option<LagProbes>,
    /// What `/readyz` checks for this process.
    pub readiness: Readiness,
}

impl Roles {
    pub fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            shutdown: CancellationToken::new(),
            publisher: None,
            lag_probes: None,
            readiness: Readiness::default(),
        }
    }

    /// Serves metrics, `/healthz` and `/readyz` on `metrics.listen`.
    /// `/readyz` fails while a loop of this process that settles, records
    /// or produces work has failed for `kafka.unready_after_ms`.
    pub async fn serve_ops(&self, config: &Config) -> Result<()> {
        let after = Duration::from_millis(config.kafka.unready_after_ms);
        self.readiness.add("loops", move || async move {
            match herald_telemetry::health::failing_for(after) {
                failing if failing.is_empty() => Ok(()),
                failing => Err(failing.join("; ")),
            }
        });
        crate::ops::install(config, self.readiness.clone()).await
    }

    /// `/readyz` fails while PostgreSQL does not answer; the backlog gauges
    /// are read from it.
    pub fn needs_postgres(&mut self, config: &Config, store: &Store) {
        let exporter = store.clone();
        let shutdown = self.shutdown.clone();
        let interval = Duration::from_millis(config.metrics.backlog_interval_ms.max(100));
        self.tasks.spawn(async move {
            export_backlogs(exporter, interval, shutdown).await;
            Ok(())
        });
        let reporter = store.clone();
        let readiness = self.readiness.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            report_health(reporter, readiness, shutdown).await;
            Ok(())
        });
        let store = store.clone();
        self.readiness.add("postgres", move || {
            let store = store.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        });
    }

    /// `/readyz` fails while the active Kafka cluster fails its health
    /// check. Not for the gateway: it accepts pushes while Kafka is away.
    pub fn needs_kafka(&self) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let checked = publisher.clone();
        self.readiness.add("kafka", move || {
            let publisher = checked.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let active = publisher.active_cluster().to_string();
                    publisher
                        .cluster_health(&active, Duration::from_millis(1500))
                        .map_err(|e| format!("cluster {active}: {e}"))
                })
                .await
                .map_err(|e| e.to_string())?
            }
        });
    }

    /// `/readyz` fails while Redis does not answer.
    pub fn needs_redis(&self, config: &Config) {
        let config = config.clone();
        self.readiness.add("redis", move || {
            let endpoint = preflight::redis_endpoint(&config);
            async move {
                let endpoint = endpoint.map_err(|e| e.to_string())?;
                preflight::redis_ping(&endpoint).await
            }
        });
    }

    /// The process's lag probes, made on first use.
    pub fn lag_probes(&mut self, config: &Config) -> LagProbes {
        self.lag_probes
            .get_or_insert_with(|| crate::failover::lag_probes(config))
            .clone()
    }

    /// One probe of `group` on `topic` per cluster, in the order of
    /// `kafka.clusters()`: the process's own where it has them.
    pub fn group_probes(
        &mut self,
        config: &Config,
        group: &str,
        topic: &str,
    ) -> Result<Vec<Arc<herald_bus::LagProbe>>> {
        let shared = self.lag_probes(config);
        config
            .kafka
            .clusters()
            .iter()
            .map(|c| {
                let own = shared
                    .iter()
                    .find(|p| p.cluster == c.name && p.group == group && p.topic == topic);
                Ok(match own {
                    Some(p) => p.probe.clone(),
                    None => Arc::new(
                        herald_bus::LagProbe::new(&config.kafka.for_cluster(c), group)
                            .with_context(|| {
                                format!("a lag probe of {group} on Kafka cluster {}", c.name)
                            })?,
                    ),
                })
            })
            .collect()
    }

    /// The process's publisher; the first call also starts the task that
    /// keeps it on the agreed Kafka cluster.
    pub fn publisher(&mut self, config: &Config, store: &Store) -> Result<Publisher> {
        if let Some(p) = &self.publisher {
            return Ok(p.clone());
        }
        let publisher = Publisher::new(&config.kafka).context("creating the Kafka producers")?;
        // Every role that produces, the gateway too: a producer that cannot
        // deliver to a healthy cluster is wedged, not waiting out an outage.
        let checked = publisher.clone();
        let after = Duration::from_millis(config.kafka.unready_after_ms);
        self.readiness.add("kafka_producer", move || {
            let result = checked.wedged(after);
            async move { result }
        });
        let lag_probes = self.lag_probes(config);
        let controller =
            FailoverController::new(config, publisher.clone(), store.clone(), lag_probes);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            controller.run(shutdown).await;
            Ok(())
        });
        self.publisher = Some(publisher.clone());
        Ok(publisher)
    }

    /// Runs until SIGINT/SIGTERM or a role fails, then lets every role finish
    /// its in-flight work.
    pub async fn wait(mut self, config: &Config) -> Result<()> {
        self.readiness.started();
        let mut failure = None;
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutting down"),
            Some(done) = self.tasks.join_next() => {
                failure = Some(match done {
                    Ok(Ok(())) => anyhow::anyhow!("a role stopped unexpectedly"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("a role panicked: {e}"),
                });
            }
        }
        self.shutdown.cancel();
        let deadline = Duration::from_millis(config.shutdown.deadline_ms);
        let settled = tokio::time::timeout(deadline, async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = %e, "role ended with an error during shutdown");
                }
            }
        })
        .await;
        if settled.is_err() {
            tracing::warn!(
                ?deadline,
                "roles did not finish within shutdown.deadline_ms; exiting anyway (unsettled work is read again from Kafka)"
            );
            self.tasks.abort_all();
        }
        failure.map_or(Ok(()), Err)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// How often a process writes its readiness to PostgreSQL for
/// `herald cluster status`.
const HEALTH_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Writes what this process's `/readyz` says into PostgreSQL, so that
/// `herald cluster status` shows every process's health in one place.
async fn report_health(store: Store, readiness: Readiness, shutdown: CancellationToken) {
    let process = format!("{}-{}", hostname(), std::process::id());
    // The subcommand, wherever it stands among the options.
    let command = std::env::args()
        .skip(1)
        .find(|a| {
            [
                "gateway",
                "sender",
                "scheduler",
                "triggers",
                "recorder",
                "dev",
            ]
            .contains(&a.as_str())
        })
        .unwrap_or_else(|| "herald".into());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEALTH_REPORT_INTERVAL) => {}
        }
        let (ready, checks) = readiness.check().await;
        let checks = serde_json::Value::Object(checks);
        if let Err(e) = store
            .report_process_health(&process, &command, ready, &checks)
            .await
        {
            tracing::debug!(error = %e, "cannot report this process's health");
        }
    }
}

/// Work waiting in PostgreSQL, as gauges: the outbox, app events not yet
/// published, trigger timers, campaigns per status.
async fn export_backlogs(store: Store, interval: Duration, shutdown: CancellationToken) {
    loop {
        match store.backlogs().await {
            Ok(b) => {
                metrics::gauge!("herald_outbox_backlog").set(b.outbox_unpublished as f64);
                metrics::gauge!("herald_outbox_oldest_due_seconds")
                    .set(b.outbox_oldest_due_seconds);
                metrics::gauge!("herald_events_unpublished").set(b.events_unpublished as f64);
                metrics::gauge!("herald_trigger_timers_pending").set(b.timers_pending as f64);
                metrics::gauge!("herald_trigger_timers_due").set(b.timers_due as f64);
                for status in [
                    "draft",
                    "scheduled",
                    "running",
                    "paused",
                    "completed",
                    "cancelled",
                ] {
                    let n = b
                        .campaigns
                        .iter()
                        .find(|(s, _)| s == status)
                        .map_or(0, |(_, n)| *n);
                    metrics::gauge!("herald_campaigns", "status" => status).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the backlogs failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Tests and scripts read these lines from stdout to learn bound addresses.
pub fn announce(what: &str, url: &str) {
    println!("listening {what} {url}");
}

pub async fn start_gateway(roles: &mut Roles, config: &Config, store: Store) -> Result<SocketAddr> {
    let publisher = roles.publisher(config, &store)?;
    let limiter = if config.gateway.rate_limit_per_second == 0 {
        None
    } else {
        Some(
            herald_ledger::RateLimiter::connect(
                &preflight::redis_endpoint(config)?,
                &config.redis.prefix,
            )
            .await
            .context("connecting the rate limiter to Redis")?,
        )
    };
    let purge = tokio::spawn(herald_gateway::purge_idempotency_keys(
        store.clone(),
        Duration::from_millis(config.gateway.purge_interval_ms),
        roles.shutdown.clone(),
    ));
    roles.tasks.spawn(async move {
        let _ = purge.await;
        Ok(())
    });
    let relay = OutboxRelay {
        store: store.clone(),
        publisher,
        wakeup: Arc::new(tokio::sync::Notify::new()),
        interval: Duration::from_millis(config.gateway.relay_interval_ms),
        broker_down: Arc::default(),
    };
    let store_for_dashboard = store.clone();
    let keys = herald_gateway::KeyCache::new(store.clone());
    let shutdown = roles.shutdown.clone();
    let listening = keys.clone();
    roles.tasks.spawn(async move {
        listening.run(shutdown).await;
        Ok(())
    });
    let acceptor = herald_gateway::Acceptor::spawn(
        store.clone(),
        relay.clone(),
        herald_gateway::AcceptSettings {
            max_batch: config.gateway.accept_batch_max,
            writers: config.gateway.accept_writers,
            publish_wait: Duration::from_millis(config.gateway.publish_wait_ms),
        },
    );
    let state = AppState {
        store,
        keys,
        relay: relay.clone(),
        acceptor,
        idempotency_retention: Duration::from_secs(
            config.gateway.idempotency_retention_hours * 3600,
        ),
        publish_wait: Duration::from_millis(config.gateway.publish_wait_ms),
        limiter,
        rate_limit_per_second: config.gateway.rate_limit_per_second,
        max_body_bytes: config.gateway.max_body_bytes,
        request_timeout: Duration::from_millis(config.gateway.request_timeout_ms),
    };
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen)
        .await
        .with_context(|| format!("binding the gateway to {}", config.gateway.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = roles.shutdown.clone();
    roles.tasks.spawn(async move {
        relay.run(shutdown).await;
        Ok(())
    });
    let shutdown = roles.shutdown.clone();
    let api = herald_gateway::router(state);
    let app = if config.gateway.dashboard {
        api.clone()
            .merge(herald_dashboard::router(herald_dashboard::DashboardState {
                store: store_for_dashboard,
                api,
                lag: lag_reader(roles.lag_probes(config)),
                secure_cookies: config.gateway.dashboard_secure_cookies,
                session_ttl: chrono::Duration::hours(config.gateway.dashboard_session_hours as i64),
            }))
    } else {
        api
    };
    let tls = match (
        config.gateway.tls_cert_path.trim(),
        config.gateway.tls_key_path.trim(),
    ) {
        ("", "") => None,
        ("", _) | (_, "") => anyhow::bail!(
            "gateway.tls_cert_path and gateway.tls_key_path go together: set both or neither"
        ),
        (cert, key) => Some(herald_gateway::tls::acceptor(
            std::path::Path::new(cert),
            std::path::Path::new(key),
        )?),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    match tls {
        Some(acceptor) => {
            roles.tasks.spawn(async move {
                herald_gateway::tls::serve(listener, acceptor, app, shutdown).await;
                Ok(())
            });
        }
        None => {
            roles.tasks.spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
                    .context("serving the API")
            });
        }
    }
    announce("gateway", &format!("{scheme}://{addr}"));
    Ok(addr)
}

/// The consumer groups' lag, read off the async threads, for the dashboard.
fn lag_reader(probes: LagProbes) -> herald_dashboard::LagReader {
    Arc::new(move || {
        let probes = probes.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                probes
                    .iter()
                    .map(|p| herald_dashboard::ConsumerLag {
                        cluster: p.cluster.clone(),
                        group: p.group.clone(),
                        topic: p.topic.clone(),
                        lag: p.probe.lag(&p.topic, Duration::from_millis(500)).ok(),
                    })
                    .collect()
            })
            .await
            .unwrap_or_default()
        })
    })
}

pub async fn start_sender(roles: &mut Roles, config: &Config, store: Store) -> Result<()> {
    preflight::sender_timing(config)?;
    let owner = format!(
        "{}-{}-{:08x}",
        hostname(),
        std::process::id(),
        rand_suffix()
    );
    let ledger = Ledger::connect(
        &preflight::redis_endpoint(config)?,
        &config.redis.prefix,
        &owner,
        Duration::from_millis(config.sender.lease_ms),
        Duration::from_secs(config.sender.dedupe_horizon_hours * 3600),
    )
    .await
    .context("connecting the ledger to Redis")?
    .with_replication(Replication {
        acks: config.redis.replica_acks(),
        // A WAIT holds up everything else on the connection, renewals too.
        timeout: Duration::from_millis(
            config
                .redis
                .replica_ack_timeout_ms
                .min(config.sender.lease_ms / 4),
        ),
    });
    // The ledger's scripts use `SET … GET` (Redis 6.2): an older Redis
    // would fail every claim.
    match ledger.server_version().await {
        Ok(version) if version < (6, 2) => anyhow::bail!(
            "the ledger's Redis is {}.{}: Herald needs Redis 6.2 or later",
            version.0,
            version.1
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            error = %e,
            "cannot read Redis's version (INFO server): Herald needs Redis 6.2 or later"
        ),
    }
    // An evicted ledger key is a claim forgotten, with nothing to tell it
    // from one never made: refuse a Redis that may evict, and say so in
    // /readyz should it start to.
    match ledger.eviction().await {
        Ok(eviction) => {
            if let Some(risk) = eviction.risk() {
                if eviction.maxmemory > 0 && eviction.policy != "noeviction" {
                    anyhow::bail!(
                        "{risk}.\n  Set `maxmemory-policy noeviction` on the ledger's Redis (or `maxmemory 0`), and give it the memory the dedupe horizon needs (docs/operations.md, \"Redis\")."
                    );
                }
                tracing::warn!("{risk}");
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot read Redis's eviction policy (INFO memory): make sure it is noeviction"
        ),
    }
    let watched = ledger.clone();
    roles.readiness.add("redis_eviction", move || {
        let ledger = watched.clone();
        async move {
            match ledger.eviction().await {
                Ok(e) => e.risk().map_or(Ok(()), Err),
                // Redis away is the `redis` check's to report.
                Err(_) => Ok(()),
            }
        }
    });
    let outcome_probes = herald_sender::OutcomeProbes {
        probes: roles.group_probes(
            config,
            &config.recorder.group_id,
            &config.kafka.topics.outcomes,
        )?,
        topic: config.kafka.topics.outcomes.clone(),
    };
    let ca_cert_pem = match &config.providers.ca_cert_path {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {path}"))?),
        None => None,
    };
    let providers = Providers::new(ProviderSettings {
        apns_url: config.providers.apns_url.clone(),
        apns_sandbox_url: if config.providers.apns_sandbox_url.is_empty() {
            config.providers.apns_url.clone()
        } else {
            config.providers.apns_sandbox_url.clone()
        },
        fcm_url: config.providers.fcm_url.clone(),
        ca_cert_pem,
        request_timeout: Duration::from_millis(config.sender.request_timeout_ms),
        connections: config.providers.connections,
    })?;
    let sender = Arc::new(Sender::new(
        ledger,
        providers,
        roles.publisher(config, &store)?,
        store,
        config.sender.clone(),
        outcome_probes,
    ));
    // Every cluster is read: the standby's jobs, and a recovered cluster's
    // backlog, which the ledger sorts out.
    for cluster in config.kafka.clusters() {
        let kafka = config.kafka.for_cluster(&cluster);
        let deliveries = BatchConsumer::new(
            &kafka,
            &config.sender.group_id,
            &[config.kafka.topics.deliveries.as_str()],
        )?;
        let campaigns = BatchConsumer::new(
            &kafka,
            &config.sender.campaigns_group(),
            &[config.kafka.topics.campaigns.as_str()],
        )?;
        let retries = BatchConsumer::new(
            &kafka,
            &config.sender.retries_group(),
            &[config.kafka.topics.retries.as_str()],
        )?;
        let shutdown = roles.shutdown.clone();
        let sender = sender.clone();
        roles.tasks.spawn(async move {
            sender
                .run(deliveries, campaigns, retries, shutdown)
                .await
                .with_context(|| format!("sender on cluster {}", cluster.name))
        });
    }
    if !config.sender.dedupe {
        tracing::warn!(
            "sender.dedupe is false: jobs are sent without the Redis ledger, and duplicates reach devices (benchmarks only)"
        );
    }
    tracing::info!(%owner, "sender started");
    Ok(())
}

pub async fn start_scheduler(roles: &mut Roles, config: &Config, store: Store) -> Result<()> {
    let limiter = herald_ledger::RateLimiter::connect(
        &preflight::redis_endpoint(config)?,
        &config.redis.prefix,
    )
    .await
    .context("connecting the campaign rate limiter to Redis")?;
    let publisher = roles.publisher(config, &store)?;
    let backlog = if config.scheduler.max_backlog > 0 {
        Some(herald_scheduler::Backlog {
            probes: roles.group_probes(
                config,
                &config.sender.campaigns_group(),
                &config.kafka.topics.campaigns,
            )?,
            topic: config.kafka.topics.campaigns.clone(),
            max: config.scheduler.max_backlog,
        })
    } else {
        None
    };
    let scheduler = Arc::new(herald_scheduler::Scheduler {
        store,
        publisher,
        limiter,
        config: config.scheduler.clone(),
        clock: herald_config::Clock::from_config(&config.scheduler.clock_file),
        backlog,
        health: herald_telemetry::health::register("the scheduler's campaign production"),
    });
    let shutdown = roles.shutdown.clone();
    roles
        .tasks
        .spawn(async move { scheduler.run(shutdown).await.context("scheduler") });
    tracing::info!("scheduler started");
    Ok(())
}

pub fn start_triggers(roles: &mut Roles, config: &Config, store: Store) -> Result<()> {
    let engine = Arc::new(herald_triggers::TriggerEngine::new(
        store.clone(),
        roles.publisher(config, &store)?,
        config.triggers.clone(),
        herald_config::Clock::from_config(&config.triggers.clock_file),
    ));
    let events = config
        .kafka
        .clusters()
        .iter()
        .map(|c| {
            BatchConsumer::new(
                &config.kafka.for_cluster(c),
                &config.triggers.group_id,
                &[config.kafka.topics.events.as_str()],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shutdown = roles.shutdown.clone();
    roles
        .tasks
        .spawn(async move { engine.run(events, shutdown).await.context("trigger engine") });
    tracing::info!("trigger engine started");
    Ok(())
}

pub fn start_recorder(roles: &mut Roles, config: &Config, store: Store) -> Result<()> {
    let recorder_store = store.clone();
    for cluster in config.kafka.clusters() {
        let recorder = Recorder {
            consumer: BatchConsumer::new(
                &config.kafka.for_cluster(&cluster),
                &config.recorder.group_id,
                &[config.kafka.topics.outcomes.as_str()],
            )?,
            store: store.clone(),
            config: config.recorder.clone(),
        };
        let shutdown = roles.shutdown.clone();
        roles.tasks.spawn(async move {
            recorder
                .run(shutdown)
                .await
                .with_context(|| format!("recorder on cluster {}", cluster.name))
        });
    }
    let keeper = herald_recorder::OutcomeLogKeeper {
        store: recorder_store.clone(),
        config: config.recorder.clone(),
    };
    let shutdown = roles.shutdown.clone();
    roles.tasks.spawn(async move {
        keeper.run(shutdown).await;
        Ok(())
    });
    let dispatcher = herald_recorder::WebhookDispatcher {
        store: recorder_store,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("creating the webhook client")?,
        config: config.recorder.clone(),
    };
    let shutdown = roles.shutdown.clone();
    roles.tasks.spawn(async move {
        dispatcher.run(shutdown).await;
        Ok(())
    });
    Ok(())
}

pub async fn start_sim(config: &Config) -> Result<Simulator> {
    let sim = Simulator::start(
        &config.sim.listen,
        &config.sim.tls_listen,
        config.sim.max_concurrent_streams,
        match config.sim.record {
            herald_config::SimRecord::Full => herald_sim::RecordMode::Full,
            herald_config::SimRecord::Counts => herald_sim::RecordMode::Counts,
        },
    )
    .await
    .context("starting the simulators")?;
    // The TLS line first: readers may stop at the `sim` line.
    if let Some(tls) = sim.tls_addr {
        announce("sim-tls", &format!("https://{tls}"));
    }
    announce("sim", &format!("http://{}", sim.h2c_addr));
    Ok(sim)
}

/// A publisher on the cluster every process has agreed on, for commands
/// that run once (`recover`, `dlq replay`) and so have no controller.
pub async fn agreed_publisher(config: &Config, store: &Store) -> Result<Publisher> {
    let publisher = Publisher::new(&config.kafka).context("creating the Kafka producers")?;
    if let Some(agreed) = store.active_kafka_cluster().await? {
        if !publisher.switch_to(&agreed.to) {
            anyhow::bail!(
                "the agreed Kafka cluster `{}` is not in this configuration (kafka.clusters)",
                agreed.to
            );
        }
    }
    Ok(publisher)
}

/// This machine's name: `HOSTNAME` (set in containers), else the kernel's.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into())
}

fn rand_suffix() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

pub async fn gateway(config: Config) -> Result<()> {
    let mut roles = Roles::new();
    roles.serve_ops(&config).await?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    roles.needs_postgres(&config, &store);
    if config.gateway.rate_limit_per_second > 0 {
        preflight::redis(&config).await?;
    }
    start_gateway(&mut roles, &config, store).await?;
    roles.wait(&config).await
}

pub async fn sender(config: Config, with_recorder: bool) -> Result<()> {
    let mut roles = Roles::new();
    roles.serve_ops(&config).await?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    roles.needs_postgres(&config, &store);
    preflight::redis(&config).await?;
    roles.needs_redis(&config);
    start_sender(&mut roles, &config, store.clone()).await?;
    if with_recorder {
        start_recorder(&mut roles, &config, store)?;
    }
    roles.needs_kafka();
    roles.wait(&config).await
}

pub async fn scheduler(config: Config) -> Result<()> {
    let mut roles = Roles::new();
    roles.serve_ops(&config).await?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    roles.needs_postgres(&config, &store);
    preflight::redis(&config).await?;
    roles.needs_redis(&config);
    start_scheduler(&mut roles, &config, store).await?;
    roles.needs_kafka();
    roles.wait(&config).await
}

pub async fn triggers(config: Config) -> Result<()> {
    let mut roles = Roles::new();
    roles.serve_ops(&config).await?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    roles.needs_postgres(&config, &store);
    start_triggers(&mut roles, &config, store)?;
    roles.needs_kafka();
    roles.wait(&config).await
}

pub async fn recorder(config: Config) -> Result<()> {
    let mut roles = Roles::new();
    roles.serve_ops(&config).await?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    roles.needs_postgres(&config, &store);
    start_recorder(&mut roles, &config, store)?;
    roles.wait(&config).await
}

pub async fn sim(config: Config) -> Result<()> {
    let _sim = start_sim(&config).await?;
    shutdown_signal().await;
    Ok(())
}

pub async fn migrate(config: Config) -> Result<()> {
    preflight::postgres(&config).await?;
    println!("migrations applied");
    Ok(())
}

pub async fn recover(config: Config, since: Option<chrono::DateTime<chrono::Utc>>) -> Result<()> {
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    let publisher = agreed_publisher(&config, &store).await?;
    // Older work is past the dedupe horizon: sending it again could not be
    // told from a first send.
    let horizon =
        chrono::Utc::now() - chrono::Duration::hours(config.sender.dedupe_horizon_hours as i64);
    let since = since.map_or(horizon, |s| s.max(horizon));
    let r = crate::recovery::recover_into(&publisher, &store, since).await?;
    publisher.flush(Duration::from_secs(10));
    println!(
        "recovered into Kafka cluster {} (work accepted since {}): {} unsettled deliveries, {} unapplied events, {} campaigns replayed",
        publisher.active_cluster(),
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        r.deliveries,
        r.events,
        r.campaigns
    );
    Ok(())
}
