//! `herald cluster status` and `herald cluster failover --to NAME`.

use crate::preflight;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use herald_bus::{LagProbe, Publisher};
use herald_config::Config;
use herald_store::Chooser;
use std::time::Duration;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The configured Kafka clusters: which one producers use, each one's
    /// health and consumer lag, and the latest switches.
    Status,
    /// Moves every producer to the named cluster now (within one health
    /// check interval); also how to fail back. Consumers keep reading all.
    /// The choice holds: automatic failback leaves it alone until
    /// `herald cluster release` (or `--hold-for` runs out). Producers still
    /// leave the chosen cluster if it fails its health checks.
    Failover {
        #[arg(long)]
        to: String,
        /// Hold the choice for this long (90m, 6h, 2d) instead of until
        /// `herald cluster release`.
        #[arg(long, value_parser = crate::args::parse_span)]
        hold_for: Option<chrono::Duration>,
    },
    /// Hands the choice of cluster back to automatic failover and failback,
    /// without moving producers now.
    Release,
}

pub async fn run(config: Config, command: ClusterCommand) -> Result<()> {
    preflight::kafka_configured(&config)?;
    let store = preflight::postgres(&config).await?;
    let publisher = Publisher::new(&config.kafka).context("creating the Kafka producers")?;
    let names = publisher.cluster_names();
    let agreed = store.active_kafka_cluster().await?;
    let active = agreed
        .as_ref()
        .map_or_else(|| names[0].clone(), |a| a.to.clone());
    match command {
        ClusterCommand::Failover { to, hold_for } => {
            if !names.contains(&to) {
                bail!(
                    "no Kafka cluster named `{to}`; configured: {}",
                    names.join(", ")
                );
            }
            let until = hold_for.map(|d| chrono::Utc::now() + d);
            let reason = format!("operator: herald cluster failover --to {to}");
            store
                .switch_kafka_cluster(None, &names[0], &to, &reason, Chooser::Operator { until })
                .await?;
            if to == active {
                println!("producers already use cluster {to}; it is now held there");
            } else {
                println!(
                    "producers move from {active} to {to} within {} ms; consumers keep reading every cluster",
                    config.kafka.health_check_interval_ms
                );
            }
            match until {
                Some(t) => println!(
                    "automatic failback leaves this choice alone until {} (`herald cluster release` ends it sooner)",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => println!(
                    "automatic failback leaves this choice alone until `herald cluster release`"
                ),
            }
        }
        ClusterCommand::Release => {
            let reason = "operator: herald cluster release";
            store
                .switch_kafka_cluster(None, &names[0], &active, reason, Chooser::Automatic)
                .await?;
            println!(
                "producers stay on {active}; automatic failover and failback choose from now on"
            );
        }
        ClusterCommand::Status => {
            println!("active cluster: {active}");
            if let Some(a) = &agreed {
                println!("  since {} ({})", a.at.to_rfc3339(), a.reason);
                let now = chrono::Utc::now();
                match a.chosen_by {
                    Chooser::Operator { until } if a.held(now) => println!(
                        "  chosen by an operator; held {}",
                        until.map_or("until `herald cluster release`".to_string(), |t| format!(
                            "until {}",
                            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ))
                    ),
                    Chooser::Operator { .. } => {
                        println!("  chosen by an operator; the hold has run out")
                    }
                    Chooser::Automatic => println!("  chosen automatically"),
                }
            } else {
                println!("  chosen automatically (the most preferred cluster)");
            }
            let groups = config.consumer_groups();
            for cluster in config.kafka.clusters() {
                let health = {
                    let (p, n) = (publisher.clone(), cluster.name.clone());
                    tokio::task::spawn_blocking(move || {
                        p.cluster_health(&n, Duration::from_secs(3))
                    })
                    .await?
                };
                println!(
                    "\n{} ({}): {}",
                    cluster.name,
                    cluster.bootstrap_servers,
                    match &health {
                        Ok(()) => "healthy".to_string(),
                        Err(e) => format!("UNHEALTHY: {e}"),
                    }
                );
                if health.is_err() {
                    continue;
                }
                for (group, topic) in &groups {
                    let probe = LagProbe::new(&config.kafka.for_cluster(&cluster), group)?;
                    let topic = topic.to_string();
                    let lag = tokio::task::spawn_blocking(move || {
                        probe.lag(&topic, Duration::from_secs(3))
                    })
                    .await?;
                    match lag {
                        Ok(lag) => println!("  lag {group:<24} {lag}"),
                        Err(e) => println!("  lag {group:<24} unknown: {e}"),
                    }
                }
            }
            print_processes(&store).await?;
            let history = store.kafka_failovers(10).await?;
            if !history.is_empty() {
                println!("\nlatest switches:");
                for s in history {
                    println!(
                        "  {}  {} -> {}  {} ({})",
                        s.at.to_rfc3339(),
                        s.from.as_deref().unwrap_or("-"),
                        s.to,
                        s.reason,
                        match s.chosen_by {
                            Chooser::Automatic => "automatic",
                            Chooser::Operator { .. } => "operator",
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every process heard from in the last ten minutes, with what its
/// `/readyz` said last (each writes it every few seconds).
async fn print_processes(store: &herald_store::Store) -> Result<()> {
    let processes = store.process_health(chrono::Duration::minutes(10)).await?;
    if processes.is_empty() {
        return Ok(());
    }
    println!("\nprocesses (what each one's /readyz said last):");
    let now = chrono::Utc::now();
    for p in processes {
        let age = (now - p.updated_at).num_seconds().max(0);
        let state = if age > 30 {
            format!("SILENT for {age} s")
        } else if p.ready {
            "ready".to_string()
        } else {
            let failing: Vec<String> = p
                .checks
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| v.as_str() != Some("ok"))
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                .collect();
            format!("NOT READY: {}", failing.join("; "))
        };
        println!("  {:<10} {:<24} {state}", p.command, p.process);
    }
    Ok(())
}
