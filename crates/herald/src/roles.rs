//! Starting each role. `herald dev` composes the same functions.

use crate::preflight;
use anyhow::{Context, Result};
use herald_bus::{BatchConsumer, Publisher};
use herald_config::Config;
use herald_gateway::{AppState, OutboxRelay};
use herald_ledger::Ledger;
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
}

impl Roles {
    pub fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Runs until SIGINT/SIGTERM or a role fails, then lets every role finish
    /// its in-flight work.
    pub async fn wait(mut self) -> Result<()> {
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
        while let Some(done) = self.tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "role ended with an error during shutdown");
            }
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

/// Serves Prometheus metrics for every role of this process, if configured.
pub fn install_metrics(config: &Config) -> Result<()> {
    if config.metrics.listen.trim().is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = config.metrics.listen.parse().with_context(|| {
        format!(
            "metrics.listen `{}` is not an address",
            config.metrics.listen
        )
    })?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    announce("metrics", &format!("http://{addr}/metrics"));
    Ok(())
}

/// Tests and scripts read these lines from stdout to learn bound addresses.
pub fn announce(what: &str, url: &str) {
    println!("listening {what} {url}");
}

pub async fn start_gateway(roles: &mut Roles, config: &Config, store: Store) -> Result<SocketAddr> {
    let publisher = Publisher::new(&config.kafka).context("creating the Kafka producer")?;
    let limiter = if config.gateway.rate_limit_per_second == 0 {
        None
    } else {
        Some(
            herald_ledger::RateLimiter::connect(&config.redis.url, &config.redis.prefix)
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
    let state = AppState {
        store,
        relay: relay.clone(),
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
    let app = herald_gateway::router(state);
    roles.tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving the API")
    });
    announce("gateway", &format!("http://{addr}"));
    Ok(addr)
}

pub async fn start_sender(roles: &mut Roles, config: &Config, store: Store) -> Result<()> {
    let owner = format!(
        "{}-{}-{:08x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".into()),
        std::process::id(),
        rand_suffix()
    );
    let ledger = Ledger::connect(
        &config.redis.url,
        &config.redis.prefix,
        &owner,
        Duration::from_millis(config.sender.lease_ms),
        Duration::from_secs(config.sender.dedupe_horizon_hours * 3600),
    )
    .await
    .context("connecting the ledger to Redis")?;
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
        Publisher::new(&config.kafka)?,
        store,
        config.sender.clone(),
    ));
    let deliveries = BatchConsumer::new(
        &config.kafka,
        &config.sender.group_id,
        &[config.kafka.topics.deliveries.as_str()],
    )?;
    // Retries have their own group, so their waits never touch the
    // assignment of the deliveries topic.
    let retries = BatchConsumer::new(
        &config.kafka,
        &format!("{}-retries", config.sender.group_id),
        &[config.kafka.topics.retries.as_str()],
    )?;
    let shutdown = roles.shutdown.clone();
    roles.tasks.spawn(async move {
        sender
            .run(deliveries, retries, shutdown)
            .await
            .context("sender")
    });
    tracing::info!(%owner, "sender started");
    Ok(())
}

pub async fn start_scheduler(roles: &mut Roles, config: &Config, store: Store) -> Result<()> {
    let limiter = herald_ledger::RateLimiter::connect(&config.redis.url, &config.redis.prefix)
        .await
        .context("connecting the campaign rate limiter to Redis")?;
    let scheduler = Arc::new(herald_scheduler::Scheduler {
        store,
        publisher: Publisher::new(&config.kafka).context("creating the Kafka producer")?,
        limiter,
        config: config.scheduler.clone(),
        clock: herald_config::Clock::from_config(&config.scheduler.clock_file),
        backlog: if config.scheduler.max_backlog > 0 {
            Some(herald_scheduler::Backlog {
                probe: Arc::new(herald_bus::LagProbe::new(
                    &config.kafka,
                    &config.sender.group_id,
                )?),
                topic: config.kafka.topics.deliveries.clone(),
                max: config.scheduler.max_backlog,
            })
        } else {
            None
        },
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
        store,
        Publisher::new(&config.kafka).context("creating the Kafka producer")?,
        config.triggers.clone(),
        herald_config::Clock::from_config(&config.triggers.clock_file),
    ));
    let events = BatchConsumer::new(
        &config.kafka,
        &config.triggers.group_id,
        &[config.kafka.topics.events.as_str()],
    )?;
    let shutdown = roles.shutdown.clone();
    roles
        .tasks
        .spawn(async move { engine.run(events, shutdown).await.context("trigger engine") });
    tracing::info!("trigger engine started");
    Ok(())
}

pub fn start_recorder(roles: &mut Roles, config: &Config, store: Store) -> Result<()> {
    let recorder_store = store.clone();
    let recorder = Recorder {
        consumer: BatchConsumer::new(
            &config.kafka,
            &config.recorder.group_id,
            &[config.kafka.topics.outcomes.as_str()],
        )?,
        store,
        config: config.recorder.clone(),
    };
    let shutdown = roles.shutdown.clone();
    roles
        .tasks
        .spawn(async move { recorder.run(shutdown).await.context("recorder") });
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

/// Publishes every delivery PostgreSQL shows as accepted but not settled.
pub async fn republish_pending(config: &Config, store: &Store) -> Result<usize> {
    let publisher = Publisher::new(&config.kafka)?;
    let mut after = None;
    let mut total = 0;
    loop {
        let page = store.pending_jobs_page(after, 1000).await?;
        let Some((at, last)) = page.last().map(|(at, j)| (*at, j.delivery_id)) else {
            break;
        };
        let jobs: Vec<_> = page.into_iter().map(|(_, j)| j).collect();
        publisher.publish_jobs(&jobs).await?;
        total += jobs.len();
        after = Some((at, last));
    }
    Ok(total)
}

fn rand_suffix() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

pub async fn gateway(config: Config) -> Result<()> {
    install_metrics(&config)?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    if config.gateway.rate_limit_per_second > 0 {
        preflight::redis(&config).await?;
    }
    let mut roles = Roles::new();
    start_gateway(&mut roles, &config, store).await?;
    roles.wait().await
}

pub async fn sender(config: Config, with_recorder: bool) -> Result<()> {
    install_metrics(&config)?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    preflight::redis(&config).await?;
    let mut roles = Roles::new();
    start_sender(&mut roles, &config, store.clone()).await?;
    if with_recorder {
        start_recorder(&mut roles, &config, store)?;
    }
    roles.wait().await
}

pub async fn scheduler(config: Config) -> Result<()> {
    install_metrics(&config)?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    preflight::redis(&config).await?;
    let mut roles = Roles::new();
    start_scheduler(&mut roles, &config, store).await?;
    roles.wait().await
}

pub async fn triggers(config: Config) -> Result<()> {
    install_metrics(&config)?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    let mut roles = Roles::new();
    start_triggers(&mut roles, &config, store)?;
    roles.wait().await
}

pub async fn recorder(config: Config) -> Result<()> {
    install_metrics(&config)?;
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    let mut roles = Roles::new();
    start_recorder(&mut roles, &config, store)?;
    roles.wait().await
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

pub async fn recover(config: Config) -> Result<()> {
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    let n = republish_pending(&config, &store).await?;
    println!("republished {n} unsettled deliveries");
    Ok(())
}
