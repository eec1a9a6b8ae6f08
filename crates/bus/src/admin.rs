//! Creating Herald's topics on a cluster (`herald topics create`).

use crate::{base_config, BusError, Result};
use herald_config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How each topic fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCreation {
    Created,
    AlreadyThere,
}

/// Creates every topic Herald uses, with `partitions`, `replication_factor`
/// and `min.insync.replicas`; a topic that exists is left as it is.
pub async fn create_topics(
    kafka: &KafkaConfig,
    partitions: i32,
    replication_factor: i32,
    min_insync_replicas: i32,
) -> Result<Vec<(String, TopicCreation)>> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka)?.create()?;
    let min_isr = min_insync_replicas.to_string();
    let topics: Vec<NewTopic> = kafka
        .topics
        .all()
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(replication_factor),
            )
            .set("min.insync.replicas", &min_isr)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let answers = admin.create_topics(topics.iter(), &options).await?;
    answers
        .into_iter()
        .map(|answer| match answer {
            Ok(name) => Ok((name, TopicCreation::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok((name, TopicCreation::AlreadyThere))
            }
            Err((name, code)) => Err(BusError::Admin(format!("creating topic {name}: {code}"))),
        })
        .collect()
}
