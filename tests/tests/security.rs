//! One app's key never reaches another app's data; oversize, slow and
//! malformed requests are cut off with problem+json, and write nothing.

use herald_tests::{ios_token, wait_until, TestEnv};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn an_apps_key_reaches_only_its_own_data() {
    let env = TestEnv::start("tenants").await;
    let a = env.create_app().await;
    let b = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let http = &env.http;

    // App A's resources.
    let r = http
        .put(format!("{gw}/v1/installations/a-phone"))
        .bearer_auth(&a.sdk_key)
        .json(&json!({"platform": "ios", "token": ios_token(1), "custom_id": "shared-user"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let (_, m) = env
        .push(
            &gw,
            &a.server_key,
            Some("same-key"),
            &json!({"to": {"install_ids": ["a-phone"]}, "notification": {"title": "a"}}),
        )
        .await;
    let a_message = m["message_id"].as_str().expect("id").to_string();
    let a_key: Value = http
        .post(format!("{gw}/v1/keys"))
        .bearer_auth(&a.server_key)
        .json(&json!({"kind": "sdk"}))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let a_key_id = a_key["id"].as_str().expect("id").to_string();
    let r = http
        .put(format!("{gw}/v1/webhook"))
        .bearer_auth(&a.server_key)
        .json(&json!({"url": "http://127.0.0.1:9/a"}))
        .send()
        .await
        .expect("hook");
    assert_eq!(r.status(), 200);
    wait_until("A's push delivered", Duration::from_secs(60), || async {
        env.message(&gw, &a.server_key, &a_message).await["counts"]["delivered"] == 1
    })
    .await;

    // App B's server key, against every endpoint that names A's resources.
    let b_key = &b.server_key;
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "GET message",
            http.get(format!("{gw}/v1/messages/{a_message}")),
            404,
        ),
        (
            "GET deliveries",
            http.get(format!("{gw}/v1/messages/{a_message}/deliveries")),
            404,
        ),
        (
            "GET installation",
            http.get(format!("{gw}/v1/installations/a-phone")),
            404,
        ),
        (
            "DELETE installation",
            http.delete(format!("{gw}/v1/installations/a-phone")),
            404,
        ),
        (
            "DELETE key",
            http.delete(format!("{gw}/v1/keys/{a_key_id}")),
            404,
        ),
        ("GET webhook", http.get(format!("{gw}/v1/webhook")), 404),
        (
            "DELETE webhook",
            http.delete(format!("{gw}/v1/webhook")),
            404,
        ),
    ];
    for (case, request, status) in cases {
        let r = request.bearer_auth(b_key).send().await.expect(case);
        assert_eq!(r.status().as_u16(), status, "{case}");
        let body = r.text().await.expect(case);
        // The detail may echo the id B asked for; none of A's data may appear.
        assert!(
            !body.contains(&ios_token(1)) && !body.contains("shared-user"),
            "{case} leaked: {body}"
        );
    }
    let keys: Value = http
        .get(format!("{gw}/v1/keys"))
        .bearer_auth(b_key)
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    assert_eq!(
        keys.as_array().map(Vec::len),
        Some(2),
        "only B's own keys: {keys}"
    );
    assert!(!keys.to_string().contains(&a_key_id));

    // B's targets never resolve to A's installations, and the same
    // Idempotency-Key in B is a different message.
    let (_, m) = env
        .push(&gw, b_key, Some("same-key"), &json!({"to": {"install_ids": ["a-phone"], "custom_ids": ["shared-user"]}, "notification": {"title": "b"}}))
        .await;
    assert_ne!(m["message_id"], a_message.as_str());
    assert_eq!(m["recipients"], 0, "{m}");
    // B registering the same install id makes B's own installation.
    let r = http
        .put(format!("{gw}/v1/installations/a-phone"))
        .bearer_auth(&b.sdk_key)
        .json(&json!({"platform": "android", "token": "b-token"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let a_view: Value = http
        .get(format!("{gw}/v1/installations/a-phone"))
        .bearer_auth(&a.server_key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        a_view["token"],
        ios_token(1),
        "A's installation is untouched"
    );
    // A's key B tried to revoke still works; A's webhook is still set.
    let r = http
        .get(format!("{gw}/v1/keys"))
        .bearer_auth(a_key["secret"].as_str().expect("secret"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status(),
        403,
        "an SDK key, alive, but not allowed to list keys"
    );
    let r = http
        .get(format!("{gw}/v1/webhook"))
        .bearer_auth(&a.server_key)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    env.finish().await;
}

#[tokio::test]
async fn oversize_slow_and_misdirected_requests_are_cut_off() {
    let env = TestEnv::start_with(
        "limits",
        &[
            ("HERALD_GATEWAY__MAX_BODY_BYTES", "10000"),
            ("HERALD_GATEWAY__REQUEST_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");

    let big = json!({"to": {"install_ids": (0..1000).map(|i| format!("install-{i:08}")).collect::<Vec<_>>()},
                     "notification": {"title": "t"}});
    let r = env
        .http
        .post(format!("{gw}/v1/push"))
        .bearer_auth(&app.server_key)
        .json(&big)
        .send()
        .await
        .expect("push");
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let r = env
        .http
        .patch(format!("{gw}/v1/push"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // A body that never finishes arriving.
    let addr = gw.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"to\":",
        app.server_key
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("the gateway answers a stalled request")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("urn:herald:problem:request-timeout"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    env.assert_nothing_accepted().await;
    env.finish().await;
}
