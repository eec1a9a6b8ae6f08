//! Every role's operations endpoint: `/healthz` while the process runs,
//! `/readyz` only while the dependencies its roles use answer, and the
//! backlog gauges in `/metrics`.

use herald_tests::{free_address, wait_until, TestEnv};
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

async fn get(env: &TestEnv, url: &str) -> (u16, String) {
    match env.http.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_dependencies_and_metrics_show_the_backlogs() {
    let env = TestEnv::start("opsendpoint").await;
    let app = env.create_app().await;
    let ops = free_address();
    let _sender = env
        .spawn_with(
            "sender",
            &["sender"],
            &[
                ("HERALD_METRICS__LISTEN", &ops),
                ("HERALD_METRICS__BACKLOG_INTERVAL_MS", "200"),
            ],
        )
        .await;
    let base = format!("http://{ops}");
    wait_until("the sender ready", LONG, || async {
        get(&env, &format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let (_, body) = get(&env, &format!("{base}/readyz")).await;
    let ready: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        ready["checks"],
        json!({"postgres": "ok", "redis": "ok", "redis_eviction": "ok", "kafka": "ok",
               "kafka_producer": "ok", "loops": "ok"}),
        "a sender depends on all three, its producer and loops must work, and its Redis may not evict"
    );

    // The gateway accepts pushes whatever Kafka and Redis do (they wait in
    // the outbox): its readiness is PostgreSQL, and a producer that is not
    // wedged (one that cannot deliver to a cluster that is healthy).
    let gateway_ops = free_address();
    let gateway = env
        .gateway_with(&[("HERALD_METRICS__LISTEN", &gateway_ops)])
        .await;
    let gateway_base = format!("http://{gateway_ops}");
    wait_until("the gateway ready", LONG, || async {
        get(&env, &format!("{gateway_base}/readyz")).await.0 == 200
    })
    .await;

    // The broker goes away: the sender is not ready (alive all the same),
    // the gateway still is; then the broker is back.
    env.kafka_available(false);
    wait_until("readyz reports Kafka", LONG, || async {
        let (status, body) = get(&env, &format!("{base}/readyz")).await;
        status == 503
            && serde_json::from_str::<Value>(&body)
                .map(|v| v["checks"]["kafka"] != "ok" && v["checks"]["postgres"] == "ok")
                .unwrap_or(false)
    })
    .await;
    assert_eq!(get(&env, &format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(&env, &format!("{gateway_base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["checks"],
        json!({"postgres": "ok", "kafka_producer": "ok", "loops": "ok"})
    );
    env.kafka_available(true);
    wait_until("ready again", LONG, || async {
        get(&env, &format!("{base}/readyz")).await.0 == 200
    })
    .await;

    // A push due tomorrow waits in the outbox: the gauge shows it.
    let gw = gateway.url.clone().expect("url");
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let (status, _) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &json!({"to": {"tokens": [{"platform": "ios", "token": herald_tests::ios_token(1)}]},
                    "notification": {"title": "later"}, "send_at": tomorrow}),
        )
        .await;
    assert_eq!(status, 202);
    wait_until("the outbox backlog gauge", LONG, || async {
        get(&env, &format!("{base}/metrics"))
            .await
            .1
            .lines()
            .any(|l| l == "herald_outbox_backlog 1")
    })
    .await;
    let (_, metrics) = get(&env, &format!("{base}/metrics")).await;
    for gauge in [
        "herald_events_unpublished 0",
        "herald_trigger_timers_pending 0",
        "herald_campaigns{status=\"running\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == gauge),
            "no `{gauge}` in /metrics"
        );
    }
    env.finish().await;
}

/// librdkafka's mock broker does not implement CreateTopics, so what can
/// be checked here is that impossible settings are refused by name before
/// any broker is asked.
#[tokio::test]
async fn topics_create_refuses_settings_no_write_could_satisfy() {
    let env = TestEnv::start("topicscreate").await;
    let run = |args: &'static [&'static str], settings: &'static [(&'static str, &'static str)]| {
        let env = &env;
        async move {
            let mut cmd = env.command(args);
            cmd.envs(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let out = cmd.output().await.expect("herald");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (ok, err) = run(
        &["topics", "create"],
        &[
            ("HERALD_KAFKA__REPLICATION_FACTOR", "1"),
            ("HERALD_KAFKA__MIN_INSYNC_REPLICAS", "2"),
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("kafka.min_insync_replicas (2) is more than kafka.replication_factor (1)"),
        "{err}"
    );
    let (ok, err) = run(&["topics", "create", "--cluster", "nowhere"], &[]).await;
    assert!(!ok);
    assert!(err.contains("no Kafka cluster named `nowhere`"), "{err}");
    env.finish().await;
}

/// A Redis that speaks TLS only, with a certificate of its own.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    ca: std::path::PathBuf,
}

impl TlsRedis {
    fn start(dir: &std::path::Path) -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
        let dir = dir.join("tls-redis");
        std::fs::create_dir_all(&dir).expect("dir");
        let (ca, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&ca, cert.cert.pem()).expect("write");
        std::fs::write(&key, cert.signing_key.serialize_pem()).expect("write");
        let port: u16 = free_address()
            .rsplit(':')
            .next()
            .expect("port")
            .parse()
            .expect("port");
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&ca)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        Self { child, port, ca }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    fn keys(&self, pattern: &str) -> usize {
        let out = std::process::Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&self.ca)
            .args(["-p", &self.port.to_string(), "--scan", "--pattern", pattern])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_keeps_its_ledger_in_redis_over_tls() {
    let env = TestEnv::start("redistls").await;
    let app = env.create_app().await;
    let redis = TlsRedis::start(&env.log_dir);
    let (url, ca) = (redis.url(), redis.ca.display().to_string());
    wait_until("the TLS Redis answers", LONG, || async {
        redis.keys("*") == 0 && {
            std::process::Command::new("redis-cli")
                .args([
                    "--tls",
                    "--cacert",
                    &ca,
                    "-p",
                    &redis.port.to_string(),
                    "ping",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                .unwrap_or(false)
        }
    })
    .await;

    // Without the CA the server's certificate is not trusted: refused at start.
    let out = env
        .command(&["sender"])
        .env("HERALD_REDIS__URL", &url)
        .output()
        .await
        .expect("herald");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Redis is not reachable"));

    let ops = free_address();
    let _sender = env
        .spawn_with(
            "sender",
            &["sender"],
            &[
                ("HERALD_REDIS__URL", &url),
                ("HERALD_REDIS__TLS_CA_CERT_PATH", &ca),
                ("HERALD_METRICS__LISTEN", &ops),
            ],
        )
        .await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let (status, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &json!({"to": {"tokens": [{"platform": "ios", "token": herald_tests::ios_token(1)}]},
                    "notification": {"title": "over tls"}}),
        )
        .await;
    assert_eq!(status, 202);
    let id = m["message_id"].as_str().expect("id").to_string();
    env.wait_message(&gw, &app.server_key, &id, |m| m["counts"]["delivered"] == 1)
        .await;
    assert!(
        redis.keys(&format!("{}*", env.redis_prefix)) > 0,
        "the ledger is in the TLS Redis"
    );
    let (status, body) = get(&env, &format!("http://{ops}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    env.finish().await;
}
