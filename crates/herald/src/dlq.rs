//! `herald dlq list` and `herald dlq replay`.

use crate::preflight;
use crate::roles;
use anyhow::{Context, Result};
use clap::Subcommand;
use herald_bus::read_topic;
use herald_config::Config;
use herald_core::DeadLetter;
use rdkafka::Message;
use std::time::Duration;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Prints every dead letter as one JSON line: reason, job, time.
    List,
    /// Publishes the dead-lettered jobs again. Safe to repeat: each goes
    /// through dedupe, so what was delivered since is not sent again.
    Replay,
}

pub async fn run(config: Config, command: DlqCommand) -> Result<()> {
    preflight::kafka_configured(&config)?;
    // Dead letters live on whichever cluster was active when they were
    // written: read them all.
    let mut letters: Vec<DeadLetter> = Vec::new();
    for cluster in config.kafka.clusters() {
        let topic = config.kafka.topics.dead_letters.clone();
        let kafka = config.kafka.for_cluster(&cluster);
        let records = tokio::task::spawn_blocking(move || {
            read_topic(&kafka, &topic, Duration::from_secs(30))
        })
        .await
        .context("reading the dead-letter topic")?;
        match records {
            Ok(records) => letters.extend(
                records
                    .iter()
                    .filter_map(|m| DeadLetter::from_json(m.payload().unwrap_or_default()).ok()),
            ),
            Err(e) => eprintln!("cluster {}: cannot read dead letters: {e}", cluster.name),
        }
    }
    match command {
        DlqCommand::List => {
            for l in &letters {
                println!("{}", serde_json::to_string(l)?);
            }
            eprintln!("{} dead letters", letters.len());
        }
        DlqCommand::Replay => {
            let jobs: Vec<_> = letters.into_iter().filter_map(|l| l.job).collect();
            let store = preflight::postgres(&config).await?;
            roles::agreed_publisher(&config, &store)
                .await?
                .publish_jobs(&jobs)
                .await?;
            println!("replayed {} jobs", jobs.len());
        }
    }
    Ok(())
}
