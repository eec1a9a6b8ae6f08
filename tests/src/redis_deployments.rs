//! Redis as production runs it, on loopback: a primary with a replica and a
//! Sentinel, and a three-shard Redis Cluster. Real `redis-server` processes,
//! killed when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    let start = 20_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u16;
    (start..55_000)
        .find(|p| {
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", *p + 10_000)).is_ok()
        })
        .expect("a free port")
}

/// `redis-cli -p PORT ARGS…`, its output trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Keys matching `pattern` on one server.
pub fn count_keys(port: u16, pattern: &str) -> usize {
    redis_cli(port, &["--scan", "--pattern", pattern])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_server(dir: &Path, port: u16, extra: &[&str]) -> Child {
    std::fs::create_dir_all(dir).expect("dir");
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    wait_for("redis-server answers", Duration::from_secs(10), || {
        redis_cli(port, &["ping"]) == "PONG"
    });
    child
}

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A primary, one replica, and one Sentinel (quorum 1) monitoring them as
/// `herald`.
pub struct SentinelRedis {
    pub ports: [u16; 2],
    pub sentinel_port: u16,
    _servers: Servers,
}

pub const SENTINEL_MASTER: &str = "herald";

impl SentinelRedis {
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("sentinel-redis");
        let ports = [free_port(), free_port()];
        let mut servers = Servers(Vec::new());
        servers.0.push(spawn_server(&dir.join("a"), ports[0], &[]));
        let primary = ports[0].to_string();
        servers.0.push(spawn_server(
            &dir.join("b"),
            ports[1],
            &["--replicaof", "127.0.0.1", &primary],
        ));
        wait_for("the replica is in sync", Duration::from_secs(20), || {
            redis_cli(ports[1], &["info", "replication"]).contains("master_link_status:up")
        });
        let sentinel_port = free_port();
        let conf: PathBuf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 10000\n",
                dir.display()
            ),
        )
        .expect("sentinel.conf");
        servers.0.push(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel"),
        );
        let set = Self {
            ports,
            sentinel_port,
            _servers: servers,
        };
        // Sentinel learns of the replica from the primary's INFO, which it
        // reads every 10 s: a failover before that has nobody to promote.
        wait_for(
            "Sentinel knows the replica",
            Duration::from_secs(30),
            || {
                let replicas = redis_cli(sentinel_port, &["sentinel", "replicas", SENTINEL_MASTER]);
                replicas.contains(&ports[1].to_string()) && !replicas.contains("disconnected")
            },
        );
        set
    }

    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// The port Sentinel names as the primary.
    pub fn primary_port(&self) -> u16 {
        redis_cli(
            self.sentinel_port,
            &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
        )
        .lines()
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .expect("Sentinel names a primary")
    }

    /// The port of the server that is not the primary.
    pub fn replica_port(&self) -> u16 {
        let primary = self.primary_port();
        if primary == self.ports[0] {
            self.ports[1]
        } else {
            self.ports[0]
        }
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to the server on `port`. A stopped
    /// replica stays connected, so its primary counts it online, but it
    /// acknowledges nothing.
    pub fn signal(&self, port: u16, sig: &str) {
        let index = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("one of the set's servers");
        let pid = self._servers.0[index].id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Waits until the replica has every write the primary took.
    pub fn wait_replicated(&self) {
        let primary = self.primary_port();
        let acked = redis_cli(primary, &["wait", "1", "5000"]);
        assert_eq!(acked, "1", "the replica acknowledged the primary's writes");
    }

    /// `SENTINEL FAILOVER`, then waits until the other server is the primary
    /// and the old one follows it. Returns the new primary's port.
    pub fn failover(&self) -> u16 {
        let old = self.primary_port();
        let new = if old == self.ports[0] {
            self.ports[1]
        } else {
            self.ports[0]
        };
        assert_eq!(
            redis_cli(
                self.sentinel_port,
                &["sentinel", "failover", SENTINEL_MASTER]
            ),
            "OK"
        );
        wait_for("the failover completes", Duration::from_secs(30), || {
            self.primary_port() == new
                && redis_cli(new, &["role"]).starts_with("master")
                && redis_cli(old, &["role"]).starts_with("slave")
        });
        new
    }
}

/// A Redis Cluster of three primaries (no replicas), every slot assigned.
pub struct ClusterRedis {
    pub ports: [u16; 3],
    _servers: Servers,
}

impl ClusterRedis {
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("cluster-redis");
        let ports = [free_port(), free_port(), free_port()];
        let mut servers = Servers(Vec::new());
        for (i, port) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("n{i}"));
            servers.0.push(spawn_server(
                &node_dir,
                *port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &node_dir.join("nodes.conf").display().to_string(),
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        wait_for(
            "every node sees the cluster ok",
            Duration::from_secs(30),
            || {
                ports.iter().all(|p| {
                    let info = redis_cli(*p, &["cluster", "info"]);
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                })
            },
        );
        Self {
            ports,
            _servers: servers,
        }
    }

    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Empties one shard, as a restart without persistence would.
    pub fn lose_shard_data(&self, shard: usize) {
        assert_eq!(redis_cli(self.ports[shard], &["flushall"]), "OK");
    }
}
