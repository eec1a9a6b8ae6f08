//! `herald dev`: every role in one process, with an embedded Kafka-protocol
//! broker and the simulators, so that a new user sees pushes arrive with
//! nothing but PostgreSQL and Redis running.

use crate::preflight;
use crate::roles::{self, Roles};
use anyhow::{Context, Result};
use herald_bus::EmbeddedBroker;
use herald_config::{Config, ProvidersConfig};
use herald_store::ApiKeyKind;

/// The demo app's server key. Fixed so that the README's curl works as is;
/// `herald dev` is for a laptop, never for production.
pub const DEV_SERVER_KEY: &str = "hk_server_dev_demo_key";

/// The demo operator's login. Fixed for the same reason as the key.
pub const DEV_OPERATOR_EMAIL: &str = "admin@herald.local";
pub const DEV_OPERATOR_PASSWORD: &str = "herald-dev-password";

/// Seals the demo app's credentials when no credentials.key is set. Public
/// and fixed: fine for simulator keys on a laptop, never for real ones.
const DEV_CREDENTIALS_KEY: &str = "aGVyYWxkLWRldi1vbmx5LWtleS1ub3QtYS1zZWNyZXQ=";

pub async fn run(mut config: Config) -> Result<()> {
    if config.credentials.key.is_empty() {
        tracing::warn!("credentials.key is not set: using the fixed development key (dev only)");
        config.credentials.key = DEV_CREDENTIALS_KEY.into();
    }
    let store = preflight::postgres(&config).await?;
    preflight::redis(&config).await?;
    if config.metrics.listen.is_empty() {
        config.metrics.listen = "127.0.0.1:9464".into();
    }
    let mut roles = Roles::new();
    roles.serve_ops(&config).await?;
    roles.needs_postgres(&config, &store);
    roles.needs_redis(&config);

    let broker = if config.kafka.clusters().is_empty() {
        let topics = config.kafka.topics.all();
        let broker = EmbeddedBroker::start(1, &topics, config.kafka.partitions)
            .context("starting the embedded Kafka-protocol broker")?;
        config.kafka.bootstrap_servers = broker.bootstrap_servers().to_string();
        tracing::info!(bootstrap = %config.kafka.bootstrap_servers, "embedded broker started");
        Some(broker)
    } else {
        None
    };

    let sim = roles::start_sim(&config).await?;
    let sim_url = format!("http://{}", sim.h2c_addr);
    if config.providers == ProvidersConfig::default() {
        config.providers.apns_url = sim_url.clone();
        config.providers.fcm_url = sim_url.clone();
    }

    let app = match store.app_by_name("demo").await? {
        Some(app) => app,
        None => store.create_app("demo").await?,
    };
    store
        .ensure_api_key(app, ApiKeyKind::Server, DEV_SERVER_KEY)
        .await?;
    if !store.operator_exists(DEV_OPERATOR_EMAIL).await? {
        crate::operators::ensure_operator(&store, DEV_OPERATOR_EMAIL, DEV_OPERATOR_PASSWORD)
            .await?;
    }
    // The simulator makes new keys at every start; the demo app follows them.
    let creds = sim.credentials();
    store.put_credentials(app, "apns", &creds.apns).await?;
    store.put_credentials(app, "fcm", &creds.fcm).await?;

    // The embedded broker starts empty: what was accepted but not settled
    // before a restart is published again (dedupe drops what was sent).
    let publisher = roles.publisher(&config, &store)?;
    if broker.is_some() {
        let horizon =
            chrono::Utc::now() - chrono::Duration::hours(config.sender.dedupe_horizon_hours as i64);
        let recovered = crate::recovery::recover_into(&publisher, &store, horizon).await?;
        if recovered.deliveries + recovered.events + recovered.campaigns > 0 {
            tracing::info!(?recovered, "recovered unsettled work from PostgreSQL");
        }
    }

    let gateway = roles::start_gateway(&mut roles, &config, store.clone()).await?;
    roles::start_sender(&mut roles, &config, store.clone()).await?;
    roles::start_scheduler(&mut roles, &config, store.clone()).await?;
    roles::start_triggers(&mut roles, &config, store.clone())?;
    roles::start_recorder(&mut roles, &config, store)?;

    eprintln!(
        "\nHerald is running (dev mode: embedded broker, APNs/FCM simulators).\n\
         \n  API            http://{gateway}\n  dashboard      http://{gateway}/dashboard   ({DEV_OPERATOR_EMAIL} / {DEV_OPERATOR_PASSWORD}, dev only)\n  simulators     {sim_url}   (record: {sim_url}/sim/deliveries)\n  your clients   {sim_url}/sim/apns-key.p8, /sim/service-account.json, /sim/tls-certificate   (docs/simulators.md)\n  demo app       {app}\n  server key     {DEV_SERVER_KEY}   (dev only)\n\
         \nSend a push:\n\n  curl -s http://{gateway}/v1/push \\\n    -H 'Authorization: Bearer {DEV_SERVER_KEY}' \\\n    -H 'Content-Type: application/json' \\\n    -H 'Idempotency-Key: \"my-first-push\"' \\\n    -d '{{\"to\":{{\"tokens\":[{{\"platform\":\"ios\",\"token\":\"a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90\"}}]}},\"notification\":{{\"title\":\"Hello\",\"body\":\"from Herald\"}}}}'\n\
         \nThen see it arrive:  curl -s {sim_url}/sim/deliveries\n"
    );
    roles.wait(&config).await
}
