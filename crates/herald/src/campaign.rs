//! `herald campaign watch ID`: a campaign's progress in the terminal.

use crate::preflight;
use anyhow::{Context, Result};
use clap::Subcommand;
use herald_config::Config;
use herald_core::{CampaignStatus, DeliveryStatus};
use indicatif::{ProgressBar, ProgressStyle};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

#[derive(Subcommand)]
pub enum CampaignCommand {
    /// Shows a campaign's progress live until every produced delivery has an
    /// outcome (or the campaign is paused or cancelled).
    Watch {
        /// The campaign id.
        id: String,
        /// Print one line per second instead of a progress bar (for logs).
        #[arg(long)]
        plain: bool,
    },
}

pub async fn run(config: Config, command: CampaignCommand) -> Result<()> {
    let store = preflight::postgres(&config).await?;
    match command {
        CampaignCommand::Watch { id, plain } => {
            let id = Uuid::from_str(&id).context("a campaign id is a UUID")?;
            watch(&store, id, plain).await
        }
    }
}

async fn watch(store: &herald_store::Store, id: Uuid, plain: bool) -> Result<()> {
    let bar = if plain {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} settled  {msg}",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    loop {
        let campaign = store
            .campaign_by_id(id)
            .await?
            .with_context(|| format!("no campaign {id}"))?;
        let progress = store.campaign_progress(&campaign).await?;
        let count = |s: DeliveryStatus| -> i64 {
            progress
                .counts
                .iter()
                .filter(|(_, st, _)| *st == s)
                .map(|(_, _, n)| n)
                .sum()
        };
        let settled: i64 = progress
            .counts
            .iter()
            .filter(|(_, s, _)| *s != DeliveryStatus::Pending)
            .map(|(_, _, n)| n)
            .sum();
        // The bar is the current generation's: its walk, and the outcomes of
        // the devices it reached.
        let produced = progress.produced.max(progress.settled_in_generation);
        let settled_now = progress.settled_in_generation;
        let line = format!(
            "{}  produced {}  delivered {}  rejected {}  unknown {}  expired {}  failed {}  waves {}/{}",
            campaign.status.as_str(),
            progress.produced,
            count(DeliveryStatus::Delivered),
            count(DeliveryStatus::Rejected),
            count(DeliveryStatus::Unknown),
            count(DeliveryStatus::Expired),
            count(DeliveryStatus::Failed),
            progress.waves_done,
            progress.waves_total,
        );
        bar.set_length(produced.max(0) as u64);
        bar.set_position(settled_now.max(0) as u64);
        bar.set_message(line.clone());
        if plain {
            println!("{settled_now}/{produced} settled  {line}");
        }
        let finished = match campaign.status {
            CampaignStatus::Completed => settled_now >= progress.produced,
            CampaignStatus::Paused | CampaignStatus::Cancelled | CampaignStatus::Draft => true,
            CampaignStatus::Scheduled | CampaignStatus::Running => false,
        };
        if finished {
            bar.finish_with_message(line.clone());
            if !plain {
                println!();
            }
            println!(
                "campaign {id} {}: {settled_now} of {} settled ({settled} over every generation)",
                campaign.status.as_str(),
                progress.produced
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
