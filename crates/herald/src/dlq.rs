//! `herald dlq list` and `herald dlq replay`.

use crate::preflight;
use crate::roles;
use anyhow::{Context, Result};
use clap::Subcommand;
use herald_bus::read_topic;
use herald_config::Config;
use herald_core::{DeadLetter, DeliveryJob};
use rdkafka::Message;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

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
            let mut jobs: Vec<_> = letters.into_iter().filter_map(|l| l.job).collect();
            let store = preflight::postgres(&config).await?;
            current_generations(&store, &mut jobs).await?;
            roles::agreed_publisher(&config, &store)
                .await?
                .publish_jobs(&jobs)
                .await?;
            println!("replayed {} jobs", jobs.len());
        }
    }
    Ok(())
}

/// A replayed campaign job belongs to its campaign's current generation.
/// Senders drop jobs of a superseded generation (the new walk hands out its
/// own), but that walk skips a dead-lettered device (its `failed` outcome
/// counts as settled): replayed with its old generation, it would reach no
/// one. A job of a paused, cancelled or deleted campaign is still held back.
async fn current_generations(store: &herald_store::Store, jobs: &mut [DeliveryJob]) -> Result<()> {
    let mut ids: Vec<Uuid> = jobs
        .iter()
        .filter_map(|j| j.campaign)
        .map(|c| c.id)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    let current: HashMap<Uuid, i64> = store
        .campaign_states(&ids)
        .await
        .context("reading the replayed jobs' campaigns")?
        .into_iter()
        .map(|(id, state)| (id, state.generation))
        .collect();
    for campaign in jobs.iter_mut().filter_map(|j| j.campaign.as_mut()) {
        if let Some(generation) = current.get(&campaign.id) {
            campaign.generation = campaign.generation.max(*generation);
        }
    }
    Ok(())
}
