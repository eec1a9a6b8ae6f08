//! The consumer's watcher against an in-process Kafka-protocol broker
//! (librdkafka's mock cluster, real TCP).

use herald_bus::{BatchConsumer, BatchEnd, EmbeddedBroker};
use herald_config::KafkaConfig;
use rdkafka::consumer::CommitMode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::Duration;

const TOPIC: &str = "watched";

/// A caller that holds a batch while it waits for the next one (a sender
/// keeps two in flight) is busy, not idle: the watcher must not rebuild the
/// consumer under it (a rebuilt consumer rejoins the group, and the records
/// held are read again). Where the watcher took the wait for the next batch
/// as idleness, it rebuilt the consumer within three seconds here.
#[tokio::test]
async fn a_consumer_holding_a_batch_while_it_waits_for_the_next_is_not_rebuilt() {
    let broker = EmbeddedBroker::start(1, &[TOPIC], 1).expect("broker");
    let kafka = KafkaConfig {
        bootstrap_servers: broker.bootstrap_servers().to_string(),
        health_check_interval_ms: 1_000,
        rebuild_after_ms: 1_000,
        ..Default::default()
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::<str, str>::to(TOPIC).payload("job"),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");

    let mut consumer = BatchConsumer::new(&kafka, "watched-group", &[TOPIC]).expect("consumer");
    let held = tokio::time::timeout(
        Duration::from_secs(30),
        consumer.next_batch(10, Duration::from_millis(100)),
    )
    .await
    .expect("the record arrives")
    .expect("a batch");
    assert_eq!(held.len(), 1);

    // Long past the rebuild delay, with the record held and uncommitted.
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        consumer.next_batch(10, Duration::from_millis(100)),
    )
    .await;
    assert!(
        again.is_err(),
        "a record came again while the first batch was held: {:?}",
        again.map(|b| b.map(|b| b.iter().map(|m| m.offset()).collect::<Vec<_>>()))
    );
    assert_eq!(
        consumer.rebuilds(),
        0,
        "the consumer was rebuilt while its caller held a batch"
    );
    consumer
        .committer()
        .commit(&BatchEnd::of(&held), CommitMode::Sync)
        .expect("committed");
}
