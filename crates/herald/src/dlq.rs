//! `herald dlq list` and `herald dlq replay`.

use crate::preflight;
use anyhow::{Context, Result};
use clap::Subcommand;
use herald_bus::{read_topic, Publisher};
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
    let topic = config.kafka.topics.dead_letters.clone();
    let kafka = config.kafka.clone();
    let records =
        tokio::task::spawn_blocking(move || read_topic(&kafka, &topic, Duration::from_secs(30)))
            .await
            .context("reading the dead-letter topic")??;
    let letters: Vec<DeadLetter> = records
        .iter()
        .filter_map(|m| DeadLetter::from_json(m.payload().unwrap_or_default()).ok())
        .collect();
    match command {
        DlqCommand::List => {
            for l in &letters {
                println!("{}", serde_json::to_string(l)?);
            }
            eprintln!("{} dead letters", letters.len());
        }
        DlqCommand::Replay => {
            let jobs: Vec<_> = letters.into_iter().filter_map(|l| l.job).collect();
            Publisher::new(&config.kafka)?.publish_jobs(&jobs).await?;
            println!("replayed {} jobs", jobs.len());
        }
    }
    Ok(())
}
