//! Outcome webhooks: signed, retried until the receiver accepts, each
//! delivery's outcome reported once.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use herald_tests::{android_token, ios_token, wait_until, TestEnv};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Received {
    /// (answered with, headers, body)
    posts: Vec<(u16, HeaderMap, String)>,
}

async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let r = received.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                let mut r = r.lock().expect("lock");
                let status = if r.posts.len() < fail_first { 500 } else { 200 };
                r.posts
                    .push((status, headers, String::from_utf8_lossy(&body).into_owned()));
                StatusCode::from_u16(status).expect("status")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}

#[tokio::test]
async fn outcomes_are_posted_signed_and_retried_once_per_delivery() {
    let mut env = TestEnv::start("webhooks").await;
    env.extra_env.insert(
        "HERALD_RECORDER__WEBHOOK_RETRY_BASE_MS".into(),
        "100".into(),
    );
    env.extra_env
        .insert("HERALD_RECORDER__WEBHOOK_POLL_MS".into(), "100".into());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let (url, received) = receiver(2).await;

    let set: Value = env
        .http
        .put(format!("{gw}/v1/webhook"))
        .bearer_auth(&app.server_key)
        .json(&json!({"url": url}))
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("json");
    let secret = set["secret"].as_str().expect("secret").to_string();
    let got: Value = env
        .http
        .get(format!("{gw}/v1/webhook"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(
        got.get("secret").is_none(),
        "the secret is shown once: {got}"
    );
    let bad = env
        .http
        .put(format!("{gw}/v1/webhook"))
        .bearer_auth(&app.server_key)
        .json(&json!({"url": "ftp://x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status(), 400);

    let tokens = vec![
        json!({"platform": "ios", "token": ios_token(1)}),
        json!({"platform": "android", "token": android_token(1)}),
        json!({"platform": "ios", "token": format!("0bad{}", &ios_token(2)[4..])}),
    ];
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            Some("hooked"),
            &json!({"to": {"tokens": tokens}, "notification": {"title": "t"}}),
        )
        .await;
    let message_id = m["message_id"].as_str().expect("id").to_string();

    let accepted = || {
        let r = received.lock().expect("lock");
        r.posts
            .iter()
            .filter(|(s, _, _)| *s == 200)
            .map(|(_, h, b)| (h.clone(), b.clone()))
            .collect::<Vec<_>>()
    };
    wait_until(
        "all three outcomes reported",
        Duration::from_secs(60),
        || async {
            accepted()
                .iter()
                .map(|(_, b)| {
                    serde_json::from_str::<Value>(b)
                        .map(|v| v["deliveries"].as_array().map_or(0, Vec::len))
                        .unwrap_or(0)
                })
                .sum::<usize>()
                >= 3
        },
    )
    .await;
    assert!(
        received.lock().expect("lock").posts.len() >= 3,
        "the two failures were retried"
    );

    let mut seen = std::collections::HashMap::new();
    for (headers, body) in accepted() {
        let ts: i64 = headers["herald-webhook-timestamp"]
            .to_str()
            .expect("ts")
            .parse()
            .expect("int");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{ts}.{body}").as_bytes());
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(headers["herald-signature"].to_str().expect("sig"), expected);
        let event: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(event["type"], "deliveries.settled");
        for d in event["deliveries"].as_array().expect("deliveries") {
            assert_eq!(d["message_id"], message_id.as_str());
            *seen
                .entry(d["delivery_id"].as_str().expect("id").to_string())
                .or_insert(0) += 1;
            if d["token"].as_str().is_some_and(|t| t.starts_with("0bad")) {
                assert_eq!(d["status"], "rejected");
                assert_eq!(d["reason"], "BadDeviceToken");
            } else {
                assert_eq!(d["status"], "delivered");
            }
        }
    }
    assert_eq!(seen.len(), 3);
    assert!(
        seen.values().all(|&n| n == 1),
        "each outcome once: {seen:?}"
    );
    env.finish().await;
}
