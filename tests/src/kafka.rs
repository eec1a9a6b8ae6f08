//! Real Apache Kafka clusters (KRaft) for the tests, run by `scripts/kafka`
//! from the jars it installs from Maven Central (`./scripts/test` installs
//! them first). Each cluster has a directory and client ports of its own, so
//! that it can be wiped and started again, empty, at the same address: the
//! incident Herald exists for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a cluster may take to start on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);

pub struct RealKafka {
    dir: PathBuf,
    ports: Vec<u16>,
    log_dir: PathBuf,
    child: Option<Child>,
    bootstrap: String,
    /// Times this cluster was started (the log of each start is kept).
    starts: usize,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("kafka")
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("addr").port()
}

impl RealKafka {
    /// Starts a cluster of `brokers` combined broker and controller nodes,
    /// keeping its data and logs under `dir`.
    pub async fn start(brokers: usize, dir: &Path) -> Self {
        let mut kafka = Self {
            dir: dir.join("kafka"),
            ports: (0..brokers).map(|_| free_port()).collect(),
            log_dir: dir.to_path_buf(),
            child: None,
            bootstrap: String::new(),
            starts: 0,
        };
        kafka.spawn().await;
        kafka
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        std::fs::create_dir_all(&self.dir).expect("kafka dir");
        let log_path = self
            .log_dir
            .join(format!("kafka-start-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).expect("kafka log");
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut child = Command::new("bash")
            .arg(script())
            .arg("--brokers")
            .arg(self.ports.len().to_string())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--ports")
            .arg(ports.join(","))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("running scripts/kafka");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(b) = line.strip_prefix("bootstrap: ") {
                    return Some(b.trim().to_string());
                }
            }
            None
        })
        .await;
        let Ok(Some(bootstrap)) = found else {
            panic!(
                "the Kafka cluster did not start (is ./scripts/kafka jars done?); see {} and {}/node-*/server.log",
                log_path.display(),
                self.dir.display()
            );
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.bootstrap = bootstrap;
        self.child = Some(child);
    }

    /// Stops every node (each gets SIGTERM and shuts down cleanly).
    pub async fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(60), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// Herald's topics, before any Herald process starts: a process that
    /// finds them missing takes the cluster for unhealthy and fails over.
    pub async fn create_topics(&self, replication_factor: i32, min_insync_replicas: i32) {
        let kafka = herald_config::KafkaConfig {
            bootstrap_servers: self.bootstrap.clone(),
            ..Default::default()
        };
        herald_bus::create_topics(
            &kafka,
            kafka.partitions,
            replication_factor,
            min_insync_replicas,
        )
        .await
        .expect("creating Herald's topics");
    }

    /// The JVM pid of node `n` (1-based) of the running cluster.
    fn node_pid(&self, n: usize) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join(format!("node-{n}")).join("pid")).ok()?;
        text.trim().parse().ok()
    }

    fn signal_nodes(&self, signal: &str) {
        for n in 1..=self.ports.len() {
            if let Some(pid) = self.node_pid(n) {
                // A node killed before has no process left to signal.
                let _ = std::process::Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// Freezes every node (SIGSTOP): connections stay open and nothing
    /// answers, as when the network between Herald and the cluster drops
    /// packets.
    pub fn pause(&self) {
        self.signal_nodes("-STOP");
    }

    pub fn resume(&self) {
        self.signal_nodes("-CONT");
    }

    /// kill -9 of node `n` (1-based); the others go on.
    pub fn kill_node(&self, n: usize) {
        let pid = self.node_pid(n).expect("the node's pid");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }

    /// The node id of the KRaft quorum's leader: the active controller.
    pub async fn active_controller(&self) -> usize {
        let out = Command::new("bash")
            .arg(script())
            .args([
                "tool",
                "org.apache.kafka.tools.MetadataQuorumCommand",
                "--bootstrap-server",
                &self.bootstrap,
                "describe",
                "--status",
            ])
            .output()
            .await
            .expect("running MetadataQuorumCommand");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("LeaderId:")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no LeaderId in: {text}"))
    }

    /// The node leading each partition of `topic`, by partition.
    pub async fn partition_leaders(&self, topic: &str) -> Vec<usize> {
        let bootstrap = self.bootstrap.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("metadata client");
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .expect("metadata");
            metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions())
                .map(|p| usize::try_from(p.leader()).unwrap_or(0))
                .collect()
        })
        .await
        .expect("metadata task")
    }

    /// kill -9 of every node: the cluster is gone at once, with no clean
    /// shutdown. `start_wiped` brings an empty one back at the same address.
    pub async fn kill(&mut self) {
        self.signal_nodes("-KILL");
        if let Some(mut child) = self.child.take() {
            // The script notices its nodes died and exits by itself.
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// Starts a stopped cluster again at the same address, its data wiped:
    /// empty, with a new cluster id. Topics are not there until someone
    /// creates them.
    pub async fn start_wiped(&mut self) {
        assert!(self.child.is_none(), "stop the cluster first");
        self.spawn().await;
    }
}

impl Drop for RealKafka {
    fn drop(&mut self) {
        // A paused node would not hear the SIGTERM.
        self.resume();
        if let Some(child) = self.child.as_mut() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
    }
}
