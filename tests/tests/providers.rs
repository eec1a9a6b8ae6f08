//! Every provider answer the simulators can give, through the whole pipeline:
//! the outcome Herald records, whether it retried, and what the device got.

use herald_core::DeliveryJob;
use herald_tests::{ios_token, wait_until, TestEnv, TOPICS};
use rdkafka::Message;
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn apns(prefix: &str, n: usize) -> String {
    format!("{prefix}{}", &ios_token(n)[prefix.len()..])
}

#[tokio::test]
async fn every_provider_answer_is_classified_as_the_design_says() {
    let mut env = TestEnv::start("answers").await;
    env.extra_env
        .insert("HERALD_SENDER__MAX_ATTEMPTS".into(), "2".into());
    env.extra_env
        .insert("HERALD_SENDER__RETRY_BASE_MS".into(), "50".into());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;

    // (platform, token, expected status, reason fragment, attempts)
    let cases = [
        ("ios", apns("0bad", 1), "rejected", "BadDeviceToken", 1),
        ("ios", apns("0410", 2), "rejected", "Unregistered", 1),
        ("ios", apns("0429", 3), "failed", "TooManyRequests", 2),
        ("ios", apns("0500", 4), "failed", "InternalServerError", 2),
        ("ios", apns("0503", 5), "failed", "ServiceUnavailable", 2),
        (
            "android",
            "bad-1".to_string(),
            "rejected",
            "INVALID_ARGUMENT",
            1,
        ),
        (
            "android",
            "unreg-1".to_string(),
            "rejected",
            "UNREGISTERED",
            1,
        ),
        (
            "android",
            "mismatch-1".to_string(),
            "rejected",
            "SENDER_ID_MISMATCH",
            1,
        ),
        (
            "android",
            "unavail-1".to_string(),
            "failed",
            "UNAVAILABLE",
            2,
        ),
        ("android", "internal-1".to_string(), "failed", "INTERNAL", 2),
    ];
    let tokens: Vec<Value> = cases
        .iter()
        .map(|(p, t, ..)| json!({"platform": p, "token": t}))
        .chain([json!({"platform": "android", "token": "quota-1"})])
        .collect();
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &json!({"to": {"tokens": tokens}, "notification": {"title": "t"}}),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    let status = env
        .wait_message(&gw, &app.server_key, &id, |s| s["counts"]["pending"] == 1)
        .await;
    let deliveries = status["deliveries"].as_array().expect("deliveries");
    for (_, token, expected, reason, attempts) in &cases {
        let d = deliveries
            .iter()
            .find(|d| d["token"] == token.as_str())
            .expect("delivery");
        assert_eq!(d["status"], *expected, "{token}: {d}");
        assert!(
            d["reason"].as_str().is_some_and(|r| r.contains(reason)),
            "{token}: {d}"
        );
        assert_eq!(d["attempts"], *attempts, "{token}: {d}");
    }
    assert_eq!(
        env.sim_stats().await["accepted"],
        0,
        "the simulators accepted nothing"
    );

    // FCM's quota error waits at least a minute before the next attempt.
    let kafka = herald_config::KafkaConfig {
        bootstrap_servers: env.broker.bootstrap_servers().into(),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + LONG;
    let job = loop {
        let kafka = kafka.clone();
        let records = tokio::task::spawn_blocking(move || {
            herald_bus::read_topic(&kafka, TOPICS[1], Duration::from_secs(5))
        })
        .await
        .expect("join")
        .expect("read");
        let found = records
            .iter()
            .filter_map(|m| DeliveryJob::from_json(m.payload().unwrap_or_default()).ok())
            // The retry the provider's answer scheduled, not a copy put back
            // because another claim held the lease.
            .find(|j| j.token == "quota-1" && j.attempt == 1);
        if let Some(job) = found {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the quota error never reached the retry topic"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let wait = job.not_before.expect("not_before") - chrono::Utc::now();
    assert!(wait > chrono::Duration::seconds(50), "retry in {wait}");

    // Credentials the provider refuses: APNs answers 403 InvalidProviderToken.
    let sim: Value = env
        .http
        .get(format!("{}/sim/credentials", env.sim_url()))
        .send()
        .await
        .expect("sim")
        .json()
        .await
        .expect("json");
    let mut wrong = sim["apns"].clone();
    wrong["team_id"] = json!("WRONGTEAM1");
    let out = env
        .run_cli(&["apps", "create", "--name", "wrongteam"])
        .await;
    let other: Value = serde_json::from_str(out.trim()).expect("json");
    let other_key = other["server_key"].as_str().expect("key").to_string();
    let r = env
        .http
        .put(format!("{gw}/v1/credentials/apns"))
        .bearer_auth(&other_key)
        .json(&wrong)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let (_, m) = env
        .push(&gw, &other_key, None, &json!({"to": {"tokens": [{"platform": "ios", "token": ios_token(9)}]}, "notification": {"title": "t"}}))
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("refused by APNs", LONG, || async {
        let s = env.message(&gw, &other_key, &id).await;
        s["deliveries"][0]["reason"] == "InvalidProviderToken" && s["counts"]["rejected"] == 1
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn senders_reach_the_providers_over_tls_trusting_a_configured_certificate() {
    let mut env = TestEnv::start("tls").await;
    env.use_sim_tls(true, true).await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let tokens = vec![
        json!({"platform": "ios", "token": ios_token(1)}),
        json!({"platform": "android", "token": "fcm-over-tls"}),
    ];
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &json!({"to": {"tokens": tokens}, "notification": {"title": "t"}}),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("both delivered over TLS", LONG, || async {
        env.message(&gw, &app.server_key, &id).await["counts"]["delivered"] == 2
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn apns_certificate_auth_proves_itself_in_the_tls_handshake() {
    let mut env = TestEnv::start("certauth").await;
    env.use_sim_tls(true, false).await;
    let key = env.create_bare_app("certs").await.server_key;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;

    let sim: Value = env
        .http
        .get(format!("{}/sim/credentials", env.sim_url()))
        .send()
        .await
        .expect("sim")
        .json()
        .await
        .expect("json");
    let r = env
        .http
        .put(format!("{gw}/v1/credentials/apns"))
        .bearer_auth(&key)
        .json(&sim["apns_certificate"])
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let shown: Value = r.json().await.expect("json");
    assert_eq!(shown["auth"], "certificate");
    let mut broken = sim["apns_certificate"].clone();
    broken["certificate_pem"] =
        json!("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----");
    let r = env
        .http
        .put(format!("{gw}/v1/credentials/apns"))
        .bearer_auth(&key)
        .json(&broken)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.expect("json")["field"],
        "certificate_pem"
    );

    let (_, m) = env
        .push(&gw, &key, None, &json!({"to": {"tokens": [{"platform": "ios", "token": ios_token(3)}]}, "notification": {"title": "t"}}))
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("delivered with certificate auth", LONG, || async {
        env.message(&gw, &key, &id).await["counts"]["delivered"] == 1
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn a_retry_waiting_a_minute_does_not_hold_back_the_retries_behind_it() {
    let mut env = TestEnv::start("holdback").await;
    env.extra_env
        .insert("HERALD_SENDER__MAX_ATTEMPTS".into(), "2".into());
    env.extra_env
        .insert("HERALD_SENDER__RETRY_BASE_MS".into(), "50".into());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let push = |token: &'static str| {
        let (env, gw, key) = (&env, gw.clone(), app.server_key.clone());
        async move {
            let (_, m) = env
                .push(
                    &gw,
                    &key,
                    None,
                    &json!({"to": {"tokens": [{"platform": "android", "token": token}]},
                            "notification": {"title": "t"}}),
                )
                .await;
            m["message_id"].as_str().expect("id").to_string()
        }
    };

    // FCM's quota error: its retry waits a minute at the head of the topic.
    push("quota-1").await;
    let kafka = herald_config::KafkaConfig {
        bootstrap_servers: env.broker.bootstrap_servers().into(),
        ..Default::default()
    };
    wait_until("the quota retry on the retries topic", LONG, || async {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || {
            herald_bus::read_topic(&kafka, TOPICS[1], Duration::from_secs(5))
        })
        .await
        .expect("join")
        .expect("read")
        .iter()
        .filter_map(|m| DeliveryJob::from_json(m.payload().unwrap_or_default()).ok())
        .any(|j| j.token == "quota-1" && j.attempt == 1)
    })
    .await;

    // A 503 behind it is retried after its own 50 ms, not after the minute.
    let id = push("unavail-2").await;
    wait_until(
        "the 503 retried while the quota retry still waits",
        Duration::from_secs(20),
        || async { env.message(&gw, &app.server_key, &id).await["deliveries"][0]["attempts"] == 2 },
    )
    .await;
    env.finish().await;
}
