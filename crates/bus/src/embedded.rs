//! An in-process Kafka-protocol broker (librdkafka's mock cluster), speaking the
//! real protocol on real TCP ports. `herald dev` runs one when no bootstrap
//! servers are configured; tests use it for fault injection.

use crate::{BusError, Result};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::mpsc;
use std::thread;

/// Fault injection and control, applied on the broker's own thread (the mock
/// cluster handle cannot leave the thread that made it).
#[derive(Debug, Clone)]
pub enum BrokerCommand {
    CreateTopic {
        name: String,
        partitions: i32,
    },
    /// Closes the broker's listener. Beware: bringing it back re-binds the
    /// same port, and librdkafka aborts the process if another socket took
    /// it meanwhile. `PartitionLeader` makes a cluster unavailable without that.
    BrokerDown(i32),
    BrokerUp(i32),
    /// Sets a partition's leader. Beware: a produce to a leaderless partition
    /// crashes librdkafka 2.12's mock (it writes the missing leader's id into
    /// the reply); use `Reachable(false)` to take a cluster away.
    PartitionLeader {
        topic: String,
        partition: i32,
        leader: Option<i32>,
    },
    /// false: the cluster is away. Every partition loses its leader (what
    /// metadata shows) and every other client request has its connection
    /// closed (the mock answers metadata whatever is injected; and a request
    /// never reaches a leaderless partition, which would crash it). true:
    /// back, with its data.
    Reachable(bool),
    /// The next `errors.len()` requests of kind `api`, from any client, are
    /// answered with these errors, in order; nothing they carry is applied.
    /// One `OutOfOrderSequenceNumber` on `Produce` makes the idempotent
    /// producer that receives it fail fatally ("sequence desynchronization"),
    /// as a cluster that forgot its producers does.
    RequestErrors {
        api: RDKafkaApiKey,
        errors: Vec<RDKafkaRespErr>,
    },
    /// Forgets the errors `RequestErrors` left for `api`.
    ClearRequestErrors(RDKafkaApiKey),
}

/// The requests `Reachable(false)` refuses: everything clients send.
const CLIENT_REQUESTS: [RDKafkaApiKey; 14] = [
    RDKafkaApiKey::Produce,
    RDKafkaApiKey::Fetch,
    RDKafkaApiKey::ListOffsets,
    RDKafkaApiKey::Metadata,
    RDKafkaApiKey::OffsetCommit,
    RDKafkaApiKey::OffsetFetch,
    RDKafkaApiKey::FindCoordinator,
    RDKafkaApiKey::JoinGroup,
    RDKafkaApiKey::Heartbeat,
    RDKafkaApiKey::LeaveGroup,
    RDKafkaApiKey::SyncGroup,
    RDKafkaApiKey::DescribeGroups,
    RDKafkaApiKey::InitProducerId,
    RDKafkaApiKey::OffsetForLeaderEpoch,
];

/// Each refused request uses one entry of the mock's error stack; this is
/// far more than a test's clients send while a cluster is away.
const REFUSALS: usize = 500_000;

fn set_leaders(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    topics: &[(String, i32)],
    leader: Option<i32>,
) -> rdkafka::error::KafkaResult<()> {
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            cluster.partition_leader(topic, p, leader)?;
        }
    }
    Ok(())
}

pub struct EmbeddedBroker {
    bootstrap: String,
    commands: mpsc::Sender<(BrokerCommand, mpsc::Sender<Result<(), String>>)>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts `brokers` mock brokers and creates `topics` with `partitions` each.
    pub fn start(brokers: i32, topics: &[&str], partitions: i32) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (cmd_tx, cmd_rx) = mpsc::channel::<(BrokerCommand, mpsc::Sender<Result<(), String>>)>();
        let thread = thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let refusals = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT; REFUSALS];
                let mut topics: Vec<(String, i32)> = Vec::new();
                // Runs until every sender is dropped, i.e. the handle is dropped.
                while let Ok((cmd, reply)) = cmd_rx.recv() {
                    let r = match cmd {
                        BrokerCommand::CreateTopic { name, partitions } => {
                            topics.push((name.clone(), partitions));
                            cluster.create_topic(&name, partitions, brokers.min(3))
                        }
                        BrokerCommand::BrokerDown(id) => cluster.broker_down(id),
                        BrokerCommand::BrokerUp(id) => cluster.broker_up(id),
                        BrokerCommand::PartitionLeader {
                            topic,
                            partition,
                            leader,
                        } => cluster.partition_leader(&topic, partition, leader),
                        BrokerCommand::Reachable(false) => {
                            for key in CLIENT_REQUESTS {
                                cluster.clear_request_errors(key);
                                cluster.request_errors(key, &refusals);
                            }
                            set_leaders(&cluster, &topics, None)
                        }
                        BrokerCommand::RequestErrors { api, errors } => {
                            cluster.request_errors(api, &errors);
                            Ok(())
                        }
                        BrokerCommand::ClearRequestErrors(api) => {
                            cluster.clear_request_errors(api);
                            Ok(())
                        }
                        BrokerCommand::Reachable(true) => {
                            let r = set_leaders(&cluster, &topics, Some(1));
                            for key in CLIENT_REQUESTS {
                                cluster.clear_request_errors(key);
                            }
                            r
                        }
                    };
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                }
            })
            .map_err(|e| BusError::Embedded(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|e| BusError::Embedded(e.to_string()))?
            .map_err(BusError::Embedded)?;
        let broker = Self {
            bootstrap,
            commands: cmd_tx,
            thread: Some(thread),
        };
        for topic in topics {
            broker.command(BrokerCommand::CreateTopic {
                name: (*topic).to_string(),
                partitions,
            })?;
        }
        Ok(broker)
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn command(&self, cmd: BrokerCommand) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send((cmd, tx))
            .map_err(|e| BusError::Embedded(e.to_string()))?;
        rx.recv()
            .map_err(|e| BusError::Embedded(e.to_string()))?
            .map_err(BusError::Embedded)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // Closing the command channel ends the thread, which drops the cluster.
        let (tx, _) = mpsc::channel();
        self.commands = tx;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
