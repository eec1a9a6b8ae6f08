//! The harness of Herald's end-to-end suites.
//!
//! Each [`TestEnv`] gets its own PostgreSQL database, Redis key prefix and
//! Kafka-protocol broker (librdkafka's mock cluster, in this process, on real
//! TCP ports), then runs real `herald` processes against them. Tests therefore
//! run in parallel and repeatedly without cleanup. The `herald` binary must be
//! built first (`cargo build -p herald`; the test script does it); set
//! `TEST_HERALD_BIN` to use another.

pub mod browser;
pub mod chaos;
pub mod clusters;
pub mod fixture;
pub mod incident;
pub mod kafka;
pub mod redis_deployments;

use herald_bus::EmbeddedBroker;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Seals provider credentials in the tests' databases.
pub const TEST_CREDENTIALS_KEY: &str = "dGVzdC1jcmVkZW50aWFscy1rZXktMzItYnl0ZXMhISE=";

/// Partitions per topic in the tests' clusters.
pub const PARTITIONS: i32 = 4;

/// Herald's default topic names.
pub const TOPICS: [&str; 6] = [
    "herald.deliveries",
    "herald.retries",
    "herald.outcomes",
    "herald.dead-letters",
    "herald.events",
    "herald.campaigns",
];

/// Waits for a condition, polling; panics with `what` when `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback address no one listens on (for a child's `*.listen` setting).
///
/// The port is free when chosen, and the child binds it later. It is chosen
/// below the kernel's ephemeral range, which every `:0` bind and outgoing
/// connection draws from: a port from that range could be handed to someone
/// else in between (a CI run lost a trigger engine to "Address already in
/// use" on its metrics port).
pub fn free_address() -> String {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_low / 2);
    for _ in 0..1000 {
        let port = rand::rng().random_range(low..ephemeral_low);
        if let Ok(probe) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return probe.local_addr().expect("addr").to_string();
        }
    }
    panic!("no free port below the ephemeral range ({low}..{ephemeral_low})")
}

/// Cargo's target directory (where test logs and installed test clients go).
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            herald_bin()
                .parent()
                .and_then(|p| p.parent())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"))
        })
}

pub fn herald_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TEST_HERALD_BIN") {
        return PathBuf::from(p);
    }
    // A test binary is in target/<profile>/deps/, a benchmark binary in
    // target/<profile>/; herald is in target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("target directory layout");
    let bin = if dir.ends_with("deps") {
        dir.parent()
            .map(|p| p.join("herald"))
            .expect("target directory layout")
    } else {
        dir.join("herald")
    };
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p herald`",
        bin.display()
    );
    bin
}

/// A running `herald` child process; killed when dropped.
pub struct HeraldProcess {
    pub name: String,
    pub child: Child,
    pub url: Option<String>,
    /// The simulator's TLS address, when it has one.
    pub tls_url: Option<String>,
    pub log: PathBuf,
}

impl HeraldProcess {
    /// SIGKILL: the process gets no chance to settle anything.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGSTOP / SIGCONT: a paused process keeps its connections open and
    /// wakes up with stale leases: a zombie.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM, then waits (up to 30 s) for the process to exit on its own.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 30 s of SIGTERM", self.name))
            .expect("wait")
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("process is running");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Whether the process has logged `text` so far.
    pub fn logged(&self, text: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(text))
    }

    /// How many times the process has logged `text` so far.
    pub fn logged_times(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |l| l.matches(text).count())
    }
}

/// A Redis server of one test's own, on a Unix socket, so that the test can
/// restart it (without persistence: it comes back empty).
pub struct PrivateRedis {
    dir: PathBuf,
    child: std::process::Child,
}

impl PrivateRedis {
    pub fn start(dir: &std::path::Path) -> Self {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).expect("redis dir");
        let child = Self::spawn(&dir);
        let r = Self { dir, child };
        r.wait_ready();
        r
    }

    fn socket(dir: &std::path::Path) -> PathBuf {
        dir.join("redis.sock")
    }

    fn spawn(dir: &std::path::Path) -> std::process::Child {
        let _ = std::fs::remove_file(Self::socket(dir));
        std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
                "--unixsocket",
            ])
            .arg(Self::socket(dir))
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server")
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if Self::socket(&self.dir).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("private redis did not start");
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", Self::socket(&self.dir).display())
    }

    /// Stops the server for `secs` seconds (`DEBUG SLEEP`): commands sent
    /// meanwhile wait in its sockets and run when it wakes, answered late or
    /// to clients that have gone. Returns once the server is asleep; the
    /// handle ends when it wakes.
    pub fn freeze(&self, secs: u32) -> std::thread::JoinHandle<()> {
        let socket = Self::socket(&self.dir);
        let sleeper = socket.clone();
        let handle = std::thread::spawn(move || {
            let out = std::process::Command::new("redis-cli")
                .arg("-s")
                .arg(&sleeper)
                .args(["DEBUG", "SLEEP", &secs.to_string()])
                .output()
                .expect("redis-cli");
            assert!(out.status.success(), "DEBUG SLEEP: {out:?}");
        });
        let asleep = || {
            use std::io::{Read, Write};
            let Ok(mut probe) = std::os::unix::net::UnixStream::connect(&socket) else {
                return false;
            };
            let _ = probe.set_read_timeout(Some(Duration::from_millis(200)));
            let mut answer = [0u8; 16];
            probe.write_all(b"PING\r\n").is_ok() && probe.read(&mut answer).is_err()
        };
        for _ in 0..100 {
            if asleep() {
                return handle;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis did not fall asleep");
    }

    /// Runs a redis-cli command against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(Self::socket(&self.dir))
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Refuses every write (scripts that write fail with NOREPLICAS) while
    /// reads go on: a primary cut off from its replicas, or a Redis with
    /// its disk full.
    pub fn refuse_writes(&self, refuse: bool) {
        let n = if refuse { "1" } else { "0" };
        let answer = self.cli(&["CONFIG", "SET", "min-replicas-to-write", n]);
        assert!(answer.contains("OK"), "{answer}");
    }

    /// How many commands this server has failed with `error` (NOREPLICAS…).
    pub fn errors(&self, error: &str) -> u64 {
        let stats = self.cli(&["INFO", "errorstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("errorstat_{error}:count=")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kills Redis and starts an empty one on the same socket.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir);
        self.wait_ready();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct App {
    pub id: String,
    pub server_key: String,
    pub sdk_key: String,
}

pub struct TestEnv {
    pub name: String,
    pub broker: EmbeddedBroker,
    /// Partitions of each topic on the embedded broker, and on any broker
    /// that replaces it.
    pub partitions: i32,
    pub db_url: String,
    pub redis_prefix: String,
    pub sim: Option<HeraldProcess>,
    pub http: reqwest::Client,
    pub log_dir: PathBuf,
    pub extra_env: HashMap<String, String>,
    pub db: sqlx::PgPool,
    pub sim_tls_url: Option<String>,
}

fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

impl TestEnv {
    /// A broker, a fresh database (migrated), and a running simulator.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, &[]).await
    }

    /// As `start`, with settings that must be in place before the simulator
    /// starts (they apply to every process of the test).
    pub async fn start_with(name: &str, settings: &[(&str, &str)]) -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string();
        // The embedded broker keeps about 5 MB per partition: a scenario that
        // lets more than that wait on one topic asks for more partitions (the
        // last setting wins, as it does for the processes).
        let partitions = settings
            .iter()
            .rev()
            .find(|(k, _)| *k == "HERALD_KAFKA__PARTITIONS")
            .map_or(PARTITIONS, |(_, v)| {
                v.parse().expect("HERALD_KAFKA__PARTITIONS is a number")
            });
        let broker = EmbeddedBroker::start(1, &TOPICS, partitions).expect("embedded broker");
        let db_name = format!("herald_t_{}_{}", name, &run[..12]);
        let db_url = format!("{}/{}", postgres_base(), db_name);
        let log_dir = target_dir()
            .join("test-logs")
            .join(format!("{name}-{}", &run[..8]));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let mut env = Self {
            name: name.to_string(),
            broker,
            partitions,
            db_url: db_url.clone(),
            redis_prefix: format!("herald-test:{run}:"),
            sim: None,
            sim_tls_url: None,
            http,
            log_dir,
            extra_env: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            db: sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect_lazy(&db_url)
                .expect("db url"),
        };
        env.sim = Some(env.spawn("sim", &["sim"], true).await);
        env.sim_tls_url = env.sim.as_ref().and_then(|s| s.tls_url.clone());
        env.run_cli(&["migrate"]).await;
        env
    }

    pub fn sim_url(&self) -> &str {
        self.sim
            .as_ref()
            .and_then(|s| s.url.as_deref())
            .expect("the simulator is running")
    }

    fn env_vars(&self) -> Vec<(String, String)> {
        let sim = self
            .sim
            .as_ref()
            .and_then(|s| s.url.clone())
            .unwrap_or_default();
        let mut vars: Vec<(String, String)> = [
            ("HERALD_POSTGRES__URL", self.db_url.clone()),
            ("HERALD_POSTGRES__MAX_CONNECTIONS", "4".into()),
            ("HERALD_REDIS__URL", redis_url()),
            ("HERALD_REDIS__PREFIX", self.redis_prefix.clone()),
            (
                "HERALD_KAFKA__BOOTSTRAP_SERVERS",
                self.broker.bootstrap_servers().into(),
            ),
            ("HERALD_KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
            ("HERALD_GATEWAY__LISTEN", "127.0.0.1:0".into()),
            ("HERALD_GATEWAY__RELAY_INTERVAL_MS", "200".into()),
            ("HERALD_SIM__LISTEN", "127.0.0.1:0".into()),
            ("HERALD_SIM__TLS_LISTEN", "127.0.0.1:0".into()),
            ("HERALD_PROVIDERS__APNS_URL", sim.clone()),
            ("HERALD_PROVIDERS__FCM_URL", sim),
            ("HERALD_SENDER__LEASE_MS", "3000".into()),
            ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "2000".into()),
            ("HERALD_SENDER__RETRY_BASE_MS", "100".into()),
            ("HERALD_SENDER__RETRY_MAX_MS", "1000".into()),
            ("HERALD_LOG", "info,herald=debug".into()),
            ("HERALD_CREDENTIALS__KEY", TEST_CREDENTIALS_KEY.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        vars.extend(self.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        vars
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(herald_bin());
        cmd.args(args);
        // Only this environment's settings reach the child.
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env_vars());
        cmd
    }

    /// Starts a role that does not listen, with settings of its own on top
    /// of the environment's.
    pub async fn spawn_with(
        &self,
        name: &str,
        args: &[&str],
        settings: &[(&str, &str)],
    ) -> HeraldProcess {
        self.spawn_process(name, args, false, settings).await
    }

    /// Starts a long-running role; with `listens`, waits for its address.
    pub async fn spawn(&self, name: &str, args: &[&str], listens: bool) -> HeraldProcess {
        self.spawn_process(name, args, listens, &[]).await
    }

    async fn spawn_process(
        &self,
        name: &str,
        args: &[&str],
        listens: bool,
        settings: &[(&str, &str)],
    ) -> HeraldProcess {
        let log_path = self
            .log_dir
            .join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let mut command = self.command(args);
        command.envs(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        spawn_herald(command, name, args, listens, log_path).await
    }

    /// Runs a command that may fail: its exit status, stdout and stderr.
    pub async fn run_cli_unchecked(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().await.expect("running herald")
    }

    /// Runs a one-shot command with `input` on its standard input.
    pub async fn run_cli_with_input(&self, args: &[&str], input: &str) -> String {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running herald");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("writing stdin");
        drop(stdin);
        let out = child.wait_with_output().await.expect("herald output");
        assert!(
            out.status.success(),
            "herald {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn run_cli(&self, args: &[&str]) -> String {
        let out = self.command(args).output().await.expect("running herald");
        assert!(
            out.status.success(),
            "herald {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn create_app(&self) -> App {
        let out = self
            .run_cli(&[
                "apps",
                "create",
                "--name",
                &self.name,
                "--sim",
                self.sim_url(),
            ])
            .await;
        let v: Value = serde_json::from_str(out.trim()).expect("apps create prints JSON");
        App {
            id: v["app_id"].as_str().expect("app_id").to_string(),
            server_key: v["server_key"].as_str().expect("server_key").to_string(),
            sdk_key: v["sdk_key"].as_str().expect("sdk_key").to_string(),
        }
    }

    /// An app with keys but no provider credentials.
    pub async fn create_bare_app(&self, name: &str) -> App {
        let out = self.run_cli(&["apps", "create", "--name", name]).await;
        let v: Value = serde_json::from_str(out.trim()).expect("apps create prints JSON");
        App {
            id: v["app_id"].as_str().expect("app_id").to_string(),
            server_key: v["server_key"].as_str().expect("server_key").to_string(),
            sdk_key: v["sdk_key"].as_str().expect("sdk_key").to_string(),
        }
    }

    /// A gateway with settings of its own.
    pub async fn gateway_with(&self, settings: &[(&str, &str)]) -> HeraldProcess {
        self.spawn_process("gateway", &["gateway"], true, settings)
            .await
    }

    pub async fn gateway(&self) -> HeraldProcess {
        self.spawn("gateway", &["gateway"], true).await
    }

    pub async fn sender(&self) -> HeraldProcess {
        self.spawn("sender", &["sender"], false).await
    }

    pub async fn scheduler(&self) -> HeraldProcess {
        self.spawn("scheduler", &["scheduler"], false).await
    }

    /// Any API call: returns the status and the JSON body (Null if none).
    pub async fn api(
        &self,
        method: &str,
        url: &str,
        key: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.api_checked(method, url, key, body)
            .await
            .expect("api call")
    }

    /// [`Self::api`] for a client that expects the server to go away.
    pub async fn api_checked(
        &self,
        method: &str,
        url: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(method, url).bearer_auth(key);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn sim_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.sim_url()))
            .send()
            .await
            .expect("sim")
            .json()
            .await
            .expect("sim json")
    }

    /// The simulator's record of accepted deliveries.
    pub async fn sim_deliveries(&self) -> Vec<Value> {
        serde_json::from_value(self.sim_get("/sim/deliveries").await).expect("a list")
    }

    pub async fn sim_stats(&self) -> Value {
        self.sim_get("/sim/stats").await
    }

    /// The credentials the simulator accepts (`apns`, `apns_certificate`, `fcm`).
    pub async fn sim_credentials(&self) -> Value {
        self.sim_get("/sim/credentials").await
    }

    /// Points the providers at the simulator's TLS listener, trusting its
    /// certificate. Applies to processes started afterwards.
    pub async fn use_sim_tls(&mut self, apns: bool, fcm: bool) {
        let tls = self.sim_tls_url.clone().expect("the simulator serves TLS");
        let cert = self
            .http
            .get(format!("{}/sim/tls-certificate", self.sim_url()))
            .send()
            .await
            .expect("cert")
            .text()
            .await
            .expect("pem");
        let path = self.log_dir.join("sim-cert.pem");
        std::fs::write(&path, cert).expect("write");
        if apns {
            self.extra_env
                .insert("HERALD_PROVIDERS__APNS_URL".into(), tls.clone());
        }
        if fcm {
            self.extra_env
                .insert("HERALD_PROVIDERS__FCM_URL".into(), tls);
        }
        self.extra_env.insert(
            "HERALD_PROVIDERS__CA_CERT_PATH".into(),
            path.display().to_string(),
        );
    }

    pub async fn set_sim_faults(&self, faults: Value) {
        let r = self
            .http
            .put(format!("{}/sim/faults", self.sim_url()))
            .json(&faults)
            .send()
            .await
            .expect("sim");
        assert!(r.status().is_success(), "setting faults: {}", r.status());
    }

    /// How many times each token was delivered, for one message (collapse id).
    pub async fn deliveries_per_token(&self, message_id: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for d in self.sim_deliveries().await {
            if d["collapse_id"].as_str() == Some(message_id) {
                *counts
                    .entry(d["token"].as_str().unwrap_or_default().to_string())
                    .or_default() += 1;
            }
        }
        counts
    }

    /// Waits until `group` has committed every record of `topic`: nothing it
    /// was given is still in flight.
    pub async fn wait_consumed(&self, group: &str, topic: &str, timeout: Duration) {
        wait_consumed_on(self.broker.bootstrap_servers(), group, topic, timeout).await;
    }

    /// Waits until `topic` holds at least `count` records (all partitions).
    pub async fn wait_records(&self, topic: &str, count: i64, timeout: Duration) {
        let bootstrap = self.broker.bootstrap_servers().to_string();
        let what = format!("{count} records on {topic}");
        wait_until(&what, timeout, || {
            let (bootstrap, topic) = (bootstrap.clone(), topic.to_string());
            async move {
                tokio::task::spawn_blocking(move || records_on(&bootstrap, &topic))
                    .await
                    .unwrap_or(0)
                    >= count
            }
        })
        .await;
    }

    /// A test's API call: POST /v1/push, returning the status and JSON body.
    pub async fn push(
        &self,
        gateway: &str,
        key: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        self.push_checked(gateway, key, idempotency_key, body)
            .await
            .expect("push")
    }

    /// [`Self::push`] for a client that expects the gateway to go away.
    pub async fn push_checked(
        &self,
        gateway: &str,
        key: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut r = self
            .http
            .post(format!("{gateway}/v1/push"))
            .bearer_auth(key)
            .json(body);
        if let Some(k) = idempotency_key {
            r = r.header("Idempotency-Key", k);
        }
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    pub async fn message(&self, gateway: &str, key: &str, id: &str) -> Value {
        self.http
            .get(format!("{gateway}/v1/messages/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("message")
            .json()
            .await
            .expect("message json")
    }

    /// Polls a message's status until `done` holds; returns that status.
    pub async fn wait_message(
        &self,
        gateway: &str,
        key: &str,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let s = self.message(gateway, key, id).await;
            if done(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {id} never reached the expected state: {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that no push was stored: no message, outcome, outbox row or
    /// Idempotency-Key.
    pub async fn assert_nothing_accepted(&self) {
        for table in [
            "messages",
            "delivery_outcomes",
            "outbox",
            "idempotency_keys",
        ] {
            assert_eq!(self.count_rows(table).await, 0, "{table} was written");
        }
    }

    pub async fn count_rows(&self, table: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.db)
            .await
            .expect("count")
    }

    /// Replaces the Kafka-protocol cluster with a new, empty one (the old one
    /// and all its data are gone). Processes started afterwards use the new one.
    pub fn replace_broker(&mut self) {
        let new = EmbeddedBroker::start(1, &TOPICS, self.partitions).expect("embedded broker");
        let old = std::mem::replace(&mut self.broker, new);
        // Gone for good, but its port stays bound: were it closed, another
        // test's broker could get that port, and this test's processes, still
        // pointed at it, would join that test's consumer groups.
        set_cluster_available(&old, false);
        std::mem::forget(old);
    }

    /// Makes the cluster unreachable, or reachable again (see
    /// [`set_cluster_available`]). The broker keeps its port and its data.
    pub fn kafka_available(&self, available: bool) {
        set_cluster_available(&self.broker, available);
    }

    /// Drops the test database; called at the end of a passing test.
    pub async fn finish(self) {
        let Self {
            db, db_url, broker, ..
        } = self;
        // The processes of the test may outlive this call by a moment; the
        // broker's port stays bound until the test binary exits, so that they
        // can never reach another test's broker on a reused port.
        std::mem::forget(broker);
        db.close().await;
        let name = db_url.rsplit('/').next().unwrap_or_default().to_string();
        if let Ok(admin) = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", postgres_base()))
            .await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&admin)
                .await;
        }
    }
}

/// Waits until `group` has committed every record of `topic` on the cluster
/// at `bootstrap`.
pub async fn wait_consumed_on(bootstrap: &str, group: &str, topic: &str, timeout: Duration) {
    let bootstrap = bootstrap.to_string();
    let (group, topic) = (group.to_string(), topic.to_string());
    let what = format!("{group} to consume all of {topic}");
    wait_until(&what, timeout, || {
        let (bootstrap, group, topic) = (bootstrap.clone(), group.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || caught_up(&bootstrap, &group, &topic))
                .await
                .unwrap_or(false)
        }
    })
    .await;
}

/// Makes a cluster unreachable (it closes the connection of every request a
/// client makes: nothing can be produced, fetched or even asked for
/// metadata), or reachable again, with its data.
pub fn set_cluster_available(broker: &EmbeddedBroker, available: bool) {
    broker
        .command(herald_bus::BrokerCommand::Reachable(available))
        .expect("broker command");
}

/// An APNs-looking token (64 hex digits) that is distinct per `n`.
pub fn ios_token(n: usize) -> String {
    format!("{:064x}", 0xa000_0000_0000_0000u128 + n as u128)
}

pub fn android_token(n: usize) -> String {
    format!("fcm-device-{n:04}")
}

/// How many records `topic` holds: the sum of its partitions' high
/// watermarks (0 when the cluster does not answer).
fn records_on(bootstrap: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::ClientConfig;
    let timeout = Duration::from_secs(5);
    let Ok(consumer) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create::<BaseConsumer>()
    else {
        return 0;
    };
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else {
        return 0;
    };
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

fn caught_up(bootstrap: &str, group: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let timeout = Duration::from_secs(5);
    let Ok(consumer) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create::<BaseConsumer>()
    else {
        return false;
    };
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else {
        return false;
    };
    let mut tpl = TopicPartitionList::new();
    let mut highs = HashMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let Ok((_, high)) = consumer.fetch_watermarks(topic, p.id(), timeout) else {
                return false;
            };
            highs.insert(p.id(), high);
            tpl.add_partition(topic, p.id());
        }
    }
    let Ok(committed) = consumer.committed_offsets(tpl, timeout) else {
        return false;
    };
    committed.elements().iter().all(|e| {
        let high = highs.get(&e.partition()).copied().unwrap_or(0);
        match e.offset() {
            Offset::Offset(o) => o >= high,
            _ => high == 0,
        }
    })
}

/// Starts `herald` as `command` says, logging to `log_path`; with `listens`,
/// waits for the address it prints.
async fn spawn_herald(
    mut command: Command,
    name: &str,
    args: &[&str],
    listens: bool,
    log_path: PathBuf,
) -> HeraldProcess {
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawning herald");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut url = None;
    let mut tls_url = None;
    if listens {
        let prefix = format!("listening {} ", args[0]);
        let tls_prefix = format!("listening {}-tls ", args[0]);
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(u) = line.strip_prefix(&tls_prefix) {
                    tls_url = Some(u.to_string());
                } else if let Some(u) = line.strip_prefix(&prefix) {
                    return Some(u.to_string());
                }
            }
            None
        })
        .await;
        url = match found {
            Ok(Some(u)) => Some(u),
            _ => panic!("{name} did not start; see {}", log_path.display()),
        };
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    HeraldProcess {
        name: name.to_string(),
        child,
        url,
        tls_url,
        log: log_path,
    }
}

/// `herald sim` on its own (no broker, no database), for tests of the
/// simulator itself, logging under `log_dir`.
pub async fn start_simulator(log_dir: &std::path::Path) -> HeraldProcess {
    let mut command = Command::new(herald_bin());
    command.arg("sim");
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            command.env_remove(k);
        }
    }
    command.envs([
        ("HERALD_SIM__LISTEN", "127.0.0.1:0"),
        ("HERALD_SIM__TLS_LISTEN", "127.0.0.1:0"),
        ("HERALD_LOG", "info"),
    ]);
    std::fs::create_dir_all(log_dir).expect("log directory");
    let log = log_dir.join(format!("sim-{}.log", uuid::Uuid::new_v4().simple()));
    spawn_herald(command, "sim", &["sim"], true, log).await
}
