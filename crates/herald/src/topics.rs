//! `herald topics create`: Herald's topics on every configured cluster.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use herald_bus::TopicCreation;
use herald_config::Config;

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Creates Herald's topics with `kafka.partitions`,
    /// `kafka.replication_factor` and `kafka.min_insync_replicas`, on every
    /// configured cluster (or one). Topics that exist are left as they are.
    Create {
        /// Only this cluster (`primary`, or a `kafka.clusters` name).
        #[arg(long)]
        cluster: Option<String>,
    },
}

pub async fn run(config: Config, command: TopicsCommand) -> Result<()> {
    let TopicsCommand::Create { cluster } = command;
    let kafka = &config.kafka;
    let clusters: Vec<_> = kafka
        .clusters()
        .into_iter()
        .filter(|c| cluster.as_deref().is_none_or(|name| c.name == name))
        .collect();
    if clusters.is_empty() {
        match cluster {
            Some(name) => bail!("no Kafka cluster named `{name}` is configured"),
            None => bail!("no Kafka cluster is configured: set kafka.bootstrap_servers"),
        }
    }
    if kafka.min_insync_replicas > kafka.replication_factor {
        bail!(
            "kafka.min_insync_replicas ({}) is more than kafka.replication_factor ({}): no write could ever be acknowledged",
            kafka.min_insync_replicas,
            kafka.replication_factor
        );
    }
    for c in clusters {
        let created = herald_bus::create_topics(
            &kafka.for_cluster(&c),
            kafka.partitions,
            kafka.replication_factor,
            kafka.min_insync_replicas,
        )
        .await
        .with_context(|| format!("creating topics on cluster {}", c.name))?;
        for (topic, how) in created {
            let how = match how {
                TopicCreation::Created => "created",
                TopicCreation::AlreadyThere => "already there",
            };
            println!("{}: {topic} {how}", c.name);
        }
    }
    Ok(())
}
