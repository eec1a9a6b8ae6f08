//! The transactional API's promises: the Idempotency-Key table across gateway
//! processes, accepting while the broker is down, and resubmission after the
//! broker was replaced.

use herald_tests::{android_token, ios_token, wait_until, TestEnv};
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn body(tokens: Vec<Value>) -> Value {
    json!({"to": {"tokens": tokens}, "notification": {"title": "t", "body": "b"}})
}

#[tokio::test]
async fn fifty_concurrent_identical_requests_on_two_gateways_make_one_message() {
    let env = TestEnv::start("concurrent").await;
    let app = env.create_app().await;
    let g1 = env.gateway().await;
    let g2 = env.gateway().await;
    let _sender = env.sender().await;
    let gws = [g1.url.clone().expect("url"), g2.url.clone().expect("url")];
    let tokens = vec![
        json!({"platform": "ios", "token": ios_token(1)}),
        json!({"platform": "android", "token": android_token(1)}),
    ];
    let request = body(tokens);
    let mut handles = Vec::new();
    for i in 0..50 {
        let (http, url, key, request) = (
            env.http.clone(),
            gws[i % 2].clone(),
            app.server_key.clone(),
            request.clone(),
        );
        handles.push(tokio::spawn(async move {
            let r = http
                .post(format!("{url}/v1/push"))
                .bearer_auth(key)
                .header("Idempotency-Key", "\"same-for-all\"")
                .json(&request)
                .send()
                .await
                .expect("push");
            let status = r.status().as_u16();
            let replayed = r.headers().contains_key("idempotent-replayed");
            let retry_after = r.headers().contains_key("retry-after");
            let body: Value = r.json().await.expect("json");
            (status, replayed, retry_after, body)
        }));
    }
    // Each waits for the one being written, and is answered from it: no
    // 409 for a request whose twin commits within the wait.
    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for h in handles {
        let (status, replayed, _, body) = h.await.expect("task");
        assert_eq!(status, 202, "{body}");
        ids.insert(body["message_id"].as_str().expect("id").to_string());
        if !replayed {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one request was processed");
    assert_eq!(ids.len(), 1);
    assert_eq!(env.count_rows("messages").await, 1);
    let id = ids.into_iter().next().expect("id");
    wait_until("both devices delivered", LONG, || async {
        env.message(&gws[0], &app.server_key, &id).await["counts"]["delivered"] == 2
    })
    .await;
    let per_token = env.deliveries_per_token(&id).await;
    assert_eq!(per_token.len(), 2);
    assert!(per_token.values().all(|&n| n == 1));
    env.finish().await;
}

#[tokio::test]
async fn while_the_broker_is_down_pushes_are_accepted_and_later_delivered_once() {
    let mut env = TestEnv::start("brokerdown").await;
    env.extra_env
        .insert("HERALD_KAFKA__MESSAGE_TIMEOUT_MS".into(), "3000".into());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;

    env.kafka_available(false);
    let mut ids = Vec::new();
    for i in 0..100 {
        let r = env
            .http
            .post(format!("{gw}/v1/push"))
            .bearer_auth(&app.server_key)
            .header("Idempotency-Key", format!("down-{i}"))
            .json(&body(vec![
                json!({"platform": "ios", "token": ios_token(i)}),
            ]))
            .send()
            .await
            .expect("push");
        assert_eq!(r.status(), 202, "accepted while the broker is down");
        assert_eq!(
            r.headers().get("herald-publish").map(|v| v.as_bytes()),
            Some(&b"deferred"[..]),
            "the answer says delivery waits for the broker"
        );
        let m: Value = r.json().await.expect("json");
        ids.push(m["message_id"].as_str().expect("id").to_string());
    }
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&env.db)
            .await
            .expect("count");
    assert!(unpublished > 0, "nothing can have been published");
    assert_eq!(env.sim_stats().await["accepted"], 0);

    env.kafka_available(true);
    wait_until("all 100 delivered", LONG, || async {
        env.sim_stats().await["accepted"].as_u64() == Some(100)
    })
    .await;
    for id in &ids {
        assert_eq!(
            env.deliveries_per_token(id).await.values().sum::<usize>(),
            1,
            "{id}"
        );
    }
    wait_until("the outbox is empty", LONG, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&env.db)
            .await
            .map(|n| n == 0)
            .unwrap_or(false)
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn a_resubmission_after_the_broker_was_replaced_gets_the_same_id_and_no_second_delivery() {
    let mut env = TestEnv::start("newbroker").await;
    let app = env.create_app().await;
    let request = body(vec![
        json!({"platform": "android", "token": android_token(5)}),
    ]);
    let first_id = {
        let gateway = env.gateway().await;
        let _sender = env.sender().await;
        let gw = gateway.url.clone().expect("url");
        let (_, m) = env
            .push(&gw, &app.server_key, Some("survives"), &request)
            .await;
        let id = m["message_id"].as_str().expect("id").to_string();
        wait_until("delivered", LONG, || async {
            env.message(&gw, &app.server_key, &id).await["counts"]["delivered"] == 1
        })
        .await;
        id
    };
    // The cluster is lost outright; Herald comes back on a new one.
    env.replace_broker();
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let gw = gateway.url.clone().expect("url");
    let out = env.run_cli(&["recover"]).await;
    assert!(out.contains(": 0 unsettled deliveries"), "{out}");
    let r = env
        .http
        .post(format!("{gw}/v1/push"))
        .bearer_auth(&app.server_key)
        .header("Idempotency-Key", "survives")
        .json(&request)
        .send()
        .await
        .expect("push");
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("idempotent-replayed"));
    let m: Value = r.json().await.expect("json");
    assert_eq!(m["message_id"], first_id.as_str());
    // A sentinel through the new cluster proves the pipeline runs; the first
    // message still has its single delivery.
    let (_, s) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &body(vec![
                json!({"platform": "android", "token": android_token(6)}),
            ]),
        )
        .await;
    let sentinel = s["message_id"].as_str().expect("id").to_string();
    wait_until("the sentinel arrives", LONG, || async {
        env.deliveries_per_token(&sentinel).await.len() == 1
    })
    .await;
    assert_eq!(
        env.deliveries_per_token(&first_id)
            .await
            .values()
            .sum::<usize>(),
        1
    );
    env.finish().await;
}

#[tokio::test]
async fn the_idempotency_key_table_row_by_row() {
    let env = TestEnv::start("keytable").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let request = body(vec![json!({"platform": "ios", "token": ios_token(3)})]);
    let send = |key: &'static str, request: Value| {
        env.http
            .post(format!("{gw}/v1/push"))
            .bearer_auth(&app.server_key)
            .header("Idempotency-Key", key)
            .json(&request)
            .send()
    };

    // Same key while the first is in progress: this test holds the key's lock
    // the way a gateway does inside its transaction.
    let app_id: uuid::Uuid = app.id.parse().expect("uuid");
    let message =
        herald_core::MessageId::for_idempotency_key(herald_core::AppId(app_id), "row-by-row");
    let b = message.as_uuid().into_bytes();
    let lock_id = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let mut holder = env.db.begin().await.expect("tx");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_id)
        .execute(&mut *holder)
        .await
        .expect("lock");
    // Held past the wait (5 s): 409, and nothing stored.
    let started = std::time::Instant::now();
    let busy = send("\"row-by-row\"", request.clone()).await.expect("push");
    assert_eq!(busy.status(), 409);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "it waited first"
    );
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(
        env.count_rows("idempotency_keys").await,
        0,
        "a 409 stores nothing"
    );

    // Held for a moment: the request waits, and once the holder is gone (it
    // wrote nothing) it is processed itself.
    let waiting = tokio::spawn(send("\"row-by-row\"", request.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "it waits while the key is held");
    holder.rollback().await.expect("release");
    let first = waiting.await.expect("task").expect("push");
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["message_id"], message.to_string());

    // Same key, same body (reordered): the stored answer, replayed.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"notification": {{"body": "b", "title": "t"}}, "to": {{"tokens": [{{"token": "{}", "platform": "ios"}}]}}}}"#,
        ios_token(3)
    ))
    .expect("json");
    let again = send("\"row-by-row\"", reordered).await.expect("push");
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.expect("json"), first);

    // Same key, different body: 422.
    let other = send(
        "\"row-by-row\"",
        body(vec![json!({"platform": "ios", "token": ios_token(4)})]),
    )
    .await
    .expect("push");
    assert_eq!(other.status(), 422);

    // Malformed key: 400.
    let bad = send("\"no-closing-quote", request.clone())
        .await
        .expect("push");
    assert_eq!(bad.status(), 400);
    let p: Value = bad.json().await.expect("json");
    assert_eq!(p["field"], "Idempotency-Key");

    assert_eq!(env.count_rows("messages").await, 1);
    env.finish().await;
}

#[tokio::test]
async fn installations_custom_ids_localization_and_send_at() {
    let env = TestEnv::start("installs").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let put = |id: &str, body: Value| {
        env.http
            .put(format!("{gw}/v1/installations/{id}"))
            .bearer_auth(&app.sdk_key)
            .json(&body)
            .send()
    };

    // Every field is kept and returned.
    let full = json!({"platform": "ios", "token": ios_token(1), "custom_id": "u1", "apns_environment": "production",
                      "app_version": "5.2.0", "locale": "fr-CA", "time_zone": "America/Montreal",
                      "tags": ["vip", "beta"], "attributes": {"plan": "gold", "orders": 12, "pro": true}, "opted_in": true});
    assert_eq!(
        put("phone-1", full.clone()).await.expect("put").status(),
        200
    );
    let got: Value = env
        .http
        .get(format!("{gw}/v1/installations/phone-1"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    for field in [
        "platform",
        "token",
        "custom_id",
        "app_version",
        "locale",
        "time_zone",
        "tags",
        "attributes",
        "opted_in",
    ] {
        assert_eq!(got[field], full[field], "{field}");
    }
    // The SDK key cannot read installations back (they hold tokens).
    let r = env
        .http
        .get(format!("{gw}/v1/installations/phone-1"))
        .bearer_auth(&app.sdk_key)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);
    // A bad field is named, and nothing changes.
    let r = put(
        "phone-1",
        json!({"platform": "ios", "time_zone": "Nowhere/Special"}),
    )
    .await
    .expect("put");
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.expect("json")["field"], "time_zone");

    assert_eq!(put("tablet-1", json!({"platform": "android", "token": android_token(1), "custom_id": "u1", "locale": "pt-BR"})).await.expect("put").status(), 200);
    assert_eq!(put("web-2", json!({"platform": "android", "token": android_token(2), "custom_id": "u2", "opted_in": false})).await.expect("put").status(), 200);
    assert_eq!(
        put(
            "plain-3",
            json!({"platform": "android", "token": android_token(3), "custom_id": "u3"})
        )
        .await
        .expect("put")
        .status(),
        200
    );

    // A token registered again by another installation moves there.
    assert_eq!(
        put(
            "plain-3b",
            json!({"platform": "android", "token": android_token(3), "custom_id": "u3"})
        )
        .await
        .expect("put")
        .status(),
        200
    );
    let moved: Option<String> =
        sqlx::query_scalar("SELECT token FROM installations WHERE install_id = 'plain-3'")
            .fetch_one(&env.db)
            .await
            .expect("query");
    assert_eq!(moved, None);

    let push = json!({
        "to": {"custom_ids": ["u1", "u2", "u3", "nobody"]},
        "notification": {"title": "Hello", "body": "Default",
                         "localizations": {"fr": {"title": "Bonjour"}, "pt-BR": {"title": "Olá", "body": "Padrão"}}},
    });
    let (status, m) = env.push(&gw, &app.server_key, None, &push).await;
    assert_eq!(status, 202, "{m}");
    assert_eq!(m["recipients"], 3, "{m}");
    assert_eq!(m["unresolved_custom_ids"], json!(["u2", "nobody"]));
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("three deliveries", LONG, || async {
        env.deliveries_per_token(&id).await.len() == 3
    })
    .await;
    let by_token: std::collections::HashMap<String, Value> = env
        .sim_deliveries()
        .await
        .into_iter()
        .filter(|d| d["collapse_id"] == id.as_str())
        .map(|d| {
            (
                d["token"].as_str().unwrap_or_default().to_string(),
                d["payload"].clone(),
            )
        })
        .collect();
    let ios = &by_token[&ios_token(1)];
    assert_eq!(
        ios["aps"]["alert"]["title"], "Bonjour",
        "fr-CA falls back to fr"
    );
    assert_eq!(ios["aps"]["alert"]["body"], "Default");
    let br = &by_token[&android_token(1)];
    assert_eq!(br["notification"]["title"], "Olá");
    assert_eq!(br["notification"]["body"], "Padrão");
    let plain = &by_token[&android_token(3)];
    assert_eq!(plain["notification"]["title"], "Hello");

    // Scheduled: nothing before send_at, delivered after.
    let send_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (status, m) = env
        .push(&gw, &app.server_key, None, &json!({"to": {"install_ids": ["phone-1"]}, "notification": {"title": "Later"}, "send_at": send_at}))
        .await;
    assert_eq!(status, 202, "{m}");
    assert!(m["send_at"].is_string(), "{m}");
    let later = m["message_id"].as_str().expect("id").to_string();
    assert_eq!(
        env.message(&gw, &app.server_key, &later).await["status"],
        "scheduled"
    );
    // Recovery (run by hand, by `herald dev` at start, or by itself after a
    // cluster was replaced) republishes what is due, not what waits for its
    // send_at: the check below fails if this sends it early.
    env.run_cli(&["recover"]).await;
    wait_until("the scheduled push is delivered", LONG, || async {
        env.deliveries_per_token(&later).await.len() == 1
    })
    .await;
    let received: Vec<Value> = env
        .sim_deliveries()
        .await
        .into_iter()
        .filter(|d| d["collapse_id"] == later.as_str())
        .collect();
    let at: chrono::DateTime<chrono::Utc> = received[0]["received_at"]
        .as_str()
        .expect("time")
        .parse()
        .expect("rfc3339");
    assert!(at >= send_at, "delivered at {at}, before {send_at}");

    let r = env
        .http
        .delete(format!("{gw}/v1/installations/phone-1"))
        .bearer_auth(&app.sdk_key)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let r = env
        .http
        .get(format!("{gw}/v1/installations/phone-1"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    env.finish().await;
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_through_the_api_and_the_cli() {
    let env = TestEnv::start("keys").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let created: Value = env
        .http
        .post(format!("{gw}/v1/keys"))
        .bearer_auth(&app.server_key)
        .json(&json!({"kind": "sdk"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let secret = created["secret"].as_str().expect("secret").to_string();
    let id = created["id"].as_str().expect("id").to_string();
    let listed: Value = env
        .http
        .get(format!("{gw}/v1/keys"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );
    let install = |key: String| {
        env.http
            .put(format!("{gw}/v1/installations/k1"))
            .bearer_auth(key)
            .json(&json!({"platform": "android", "token": "t"}))
            .send()
    };
    assert_eq!(install(secret.clone()).await.expect("put").status(), 200);
    let r = env
        .http
        .delete(format!("{gw}/v1/keys/{id}"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    assert_eq!(
        install(secret).await.expect("put").status(),
        401,
        "a revoked key is refused"
    );

    // The same through the CLI.
    let out = env
        .run_cli(&["apps", "create-key", "--app", &app.id, "--kind", "server"])
        .await;
    let cli_key: Value = serde_json::from_str(out.trim()).expect("json");
    let cli_secret = cli_key["secret"].as_str().expect("secret").to_string();
    let r = env
        .http
        .get(format!("{gw}/v1/keys"))
        .bearer_auth(&cli_secret)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
    env.run_cli(&[
        "apps",
        "revoke-key",
        "--app",
        &app.id,
        "--key",
        cli_key["id"].as_str().expect("id"),
    ])
    .await;
    // Another process revoked it: the gateway hears of it within a second.
    wait_until(
        "the CLI's revocation heard",
        Duration::from_secs(1),
        || async {
            let r = env
                .http
                .get(format!("{gw}/v1/keys"))
                .bearer_auth(&cli_secret)
                .send()
                .await
                .expect("list");
            r.status() == 401
        },
    )
    .await;
    let listed = env.run_cli(&["apps", "keys", "--app", &app.id]).await;
    assert_eq!(listed.lines().count(), 4);
    env.finish().await;
}

/// `herald apps create --sim` checks what could fail before it writes: an
/// app created and then refused its credentials would hold keys whose
/// secrets were never shown.
#[tokio::test]
async fn apps_create_refused_its_credentials_creates_nothing() {
    let env = TestEnv::start("appscreate").await;
    let before = env.count_rows("apps").await;
    let mut cmd = env.command(&["apps", "create", "--name", "nokey", "--sim", env.sim_url()]);
    cmd.env_remove("HERALD_CREDENTIALS__KEY");
    let out = cmd.output().await.expect("herald");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("credentials.key"), "{stderr}");
    assert!(stderr.contains("nothing was created"), "{stderr}");
    assert_eq!(env.count_rows("apps").await, before, "no app half-made");
    assert_eq!(env.count_rows("api_keys").await, 0, "no key half-made");

    // A simulator that is not there: refused the same way.
    let out = env
        .command(&[
            "apps",
            "create",
            "--name",
            "nosim",
            "--sim",
            "http://127.0.0.1:9",
        ])
        .output()
        .await
        .expect("herald");
    assert!(!out.status.success());
    assert_eq!(env.count_rows("apps").await, before);

    // With both, the app comes with its credentials.
    let out = env
        .run_cli(&["apps", "create", "--name", "sim", "--sim", env.sim_url()])
        .await;
    let created: Value = serde_json::from_str(out.trim()).expect("json");
    assert!(created["server_key"].as_str().is_some());
    assert_eq!(env.count_rows("provider_credentials").await, 2);
    env.finish().await;
}

/// A dashboard double-click or a client retry must not make two campaigns
/// or two triggers: every create honours an Idempotency-Key as a push does
/// (replay, 409, 422, 400), in the app's one key space.
#[tokio::test]
async fn campaigns_and_triggers_created_under_one_key_are_made_once() {
    let env = TestEnv::start("keyedcreates").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let post = |path: &'static str, key: &'static str, body: Value| {
        let request = env
            .http
            .post(format!("{gw}{path}"))
            .bearer_auth(&app.server_key)
            .header("Idempotency-Key", key)
            .json(&body);
        async move {
            let r = request.send().await.expect("post");
            let status = r.status().as_u16();
            let replayed = r.headers().contains_key("idempotent-replayed");
            let body: Value = r.json().await.expect("json");
            (status, replayed, body)
        }
    };
    let campaign = json!({"name": "Sale", "notification": {"title": "Sale"}});
    let trigger = json!({"name": "welcome", "entry_event": "signup", "delay_seconds": 60,
                         "notification": {"title": "Hi"}});

    // Ten at once, then once more: one campaign, one answer.
    let twins: Vec<_> = (0..10)
        .map(|_| tokio::spawn(post("/v1/campaigns", "\"sale-1\"", campaign.clone())))
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for twin in twins {
        let (status, replayed, body) = twin.await.expect("task");
        assert_eq!(status, 201, "{body}");
        ids.insert(body["id"].as_str().expect("id").to_string());
        fresh += usize::from(!replayed);
    }
    assert_eq!((ids.len(), fresh), (1, 1), "one campaign, created once");
    let (status, replayed, again) = post("/v1/campaigns", "\"sale-1\"", campaign.clone()).await;
    assert_eq!((status, replayed), (201, true));
    assert!(ids.contains(again["id"].as_str().expect("id")));
    assert_eq!(env.count_rows("campaigns").await, 1);

    // The key names that request only.
    let other = json!({"name": "Other", "notification": {"title": "Sale"}});
    let (status, _, problem) = post("/v1/campaigns", "\"sale-1\"", other).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "urn:herald:problem:idempotency-key-reused");
    let (status, _, problem) = post("/v1/triggers", "\"sale-1\"", trigger.clone()).await;
    assert_eq!(status, 422, "one key space per app: {problem}");
    let (status, _, problem) = post("/v1/campaigns", "\"open", campaign.clone()).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(
        env.count_rows("campaigns").await,
        1,
        "nothing made by a refusal"
    );

    // Triggers alike.
    let (status, replayed, first) = post("/v1/triggers", "welcome-1", trigger.clone()).await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, replayed, second) = post("/v1/triggers", "welcome-1", trigger.clone()).await;
    assert_eq!((status, replayed), (201, true));
    assert_eq!(first, second, "the stored answer, replayed");
    assert_eq!(env.count_rows("triggers").await, 1);

    // Without a key, each request creates.
    for _ in 0..2 {
        let r = env
            .http
            .post(format!("{gw}/v1/triggers"))
            .bearer_auth(&app.server_key)
            .json(&trigger)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    assert_eq!(env.count_rows("triggers").await, 3);

    // Events are deduplicated by their event ids; a key, if sent, must be
    // well-formed.
    let r = env
        .http
        .post(format!("{gw}/v1/events"))
        .bearer_auth(&app.server_key)
        .header("Idempotency-Key", "\"open")
        .json(&json!({"event_id": "e-1", "name": "signup", "custom_id": "u-1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    assert_eq!(env.count_rows("events").await, 0);
    let event = json!({"event_id": "e-1", "name": "signup", "custom_id": "u-1"});
    let (status, replayed, first) = post("/v1/events", "ev-1", event.clone()).await;
    assert_eq!((status, replayed), (202, false), "{first}");
    assert_eq!(first["accepted"], 1);
    let (status, replayed, again) = post("/v1/events", "ev-1", event).await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(first, again, "the first answer, replayed");
    let other = json!({"event_id": "e-2", "name": "signup", "custom_id": "u-1"});
    let (status, _, _) = post("/v1/events", "ev-1", other).await;
    assert_eq!(status, 422);
    assert_eq!(env.count_rows("events").await, 1);

    // A key's secret is never stored, so its creation cannot be replayed:
    // refused, rather than a retry making a second key.
    let keys_before = env.count_rows("api_keys").await;
    let (status, _, problem) = post("/v1/keys", "key-1", json!({"kind": "sdk"})).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(env.count_rows("api_keys").await, keys_before);
    env.finish().await;
}

/// Where the standards leave room, what Herald decided (docs/api.md,
/// "Leniency"): each decision is held here.
#[tokio::test]
async fn the_leniency_decisions_hold() {
    let env = TestEnv::start("leniency").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let raw = |key: Option<&'static str>, content_type: Option<&'static str>, body: String| {
        let mut request = env
            .http
            .post(format!("{gw}/v1/push"))
            .bearer_auth(&app.server_key)
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(ct) = content_type {
            request = request.header("Content-Type", ct);
        }
        async move {
            let r = request.send().await.expect("push");
            let status = r.status().as_u16();
            let replayed = r.headers().contains_key("idempotent-replayed");
            let body: Value = r.json().await.expect("json");
            (status, replayed, body)
        }
    };
    let token = ios_token(7);

    // A member named twice: refused, named.
    let twice = format!(
        r#"{{"to": {{"tokens": [{{"platform": "ios", "token": "{token}"}}]}}, "notification": {{"title": "a", "title": "b"}}}}"#
    );
    let (status, _, problem) = raw(None, Some("application/json"), twice).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`title` appears twice"),
        "{problem}"
    );

    // No Content-Type: read as JSON. Another type: 415.
    let plain = format!(
        r#"{{"to": {{"tokens": [{{"platform": "ios", "token": "{token}"}}]}}, "notification": {{"title": "t"}}}}"#
    );
    let (status, _, body) = raw(Some("\"plain-1\""), None, plain.clone()).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, problem) = raw(None, Some("text/plain"), plain.clone()).await;
    assert_eq!(status, 415, "{problem}");

    // An explicit null is the field left out: the same request.
    let with_null = format!(
        r#"{{"to": {{"tokens": [{{"platform": "ios", "token": "{token}"}}]}}, "notification": {{"title": "t"}}, "ttl_seconds": null}}"#
    );
    let (status, replayed, again) = raw(Some("\"plain-1\""), None, with_null).await;
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again["message_id"], body["message_id"]);

    // A key that is neither an sf-string nor an sf-token, but printable: taken as it is.
    let (status, replayed, _) = raw(Some("order 42 / retry"), None, plain.clone()).await;
    assert_eq!((status, replayed), (202, false));
    let (status, replayed, _) = raw(Some("order 42 / retry"), None, plain).await;
    assert_eq!((status, replayed), (202, true));

    // `send_at` in the past: sent at once, and the answer says no time.
    let past = format!(
        r#"{{"to": {{"tokens": [{{"platform": "ios", "token": "{token}"}}]}}, "notification": {{"title": "t"}}, "send_at": "2020-01-01T00:00:00Z"}}"#
    );
    let (status, _, body) = raw(None, Some("application/json"), past).await;
    assert_eq!(status, 202, "{body}");
    assert!(body["send_at"].is_null(), "{body}");
    let scheduled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE send_at IS NOT NULL")
            .fetch_one(&env.db)
            .await
            .expect("count");
    assert_eq!(scheduled, 0, "not held as scheduled");
    env.finish().await;
}

#[tokio::test]
async fn campaigns_are_listed_newest_first_a_page_at_a_time() {
    let env = TestEnv::start("campaignpages").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let mut made = Vec::new();
    for i in 0..5 {
        let r = env
            .http
            .post(format!("{gw}/v1/campaigns"))
            .bearer_auth(&app.server_key)
            .json(&json!({"name": format!("c{i}"), "notification": {"title": "t"}}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 201);
        let c: Value = r.json().await.expect("json");
        made.push(c["id"].as_str().expect("id").to_string());
    }
    made.reverse();
    let mut listed = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!("{gw}/v1/campaigns?limit=2");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let page: Value = env
            .http
            .get(url)
            .bearer_auth(&app.server_key)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        for c in page["campaigns"].as_array().expect("campaigns") {
            listed.push(c["id"].as_str().expect("id").to_string());
        }
        match page["next_before"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(listed, made, "newest first, each once");
    // Any campaign id is a cursor, one deleted since too.
    let r = env
        .http
        .get(format!("{gw}/v1/campaigns?before={}", uuid::Uuid::new_v4()))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
    env.finish().await;
}

#[tokio::test]
async fn a_key_over_its_rate_limit_gets_429_and_other_keys_do_not() {
    let mut env = TestEnv::start("ratelimit").await;
    env.extra_env
        .insert("HERALD_GATEWAY__RATE_LIMIT_PER_SECOND".into(), "5".into());
    let noisy = env.create_app().await;
    let quiet = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let mut handles = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let (http, url, key) = (
            env.http.clone(),
            format!("{gw}/v1/keys"),
            noisy.server_key.clone(),
        );
        handles.push(tokio::spawn(async move {
            let r = http.get(url).bearer_auth(key).send().await.expect("get");
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (
                r.status().as_u16(),
                retry_after,
                r.text().await.unwrap_or_default(),
            )
        }));
    }
    let mut limited = 0;
    for h in handles {
        let (status, retry_after, body) = h.await.expect("task");
        if status == 429 {
            limited += 1;
            let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
            assert!((1..=1).contains(&secs), "{secs}");
            assert!(body.contains("urn:herald:problem:rate-limited"), "{body}");
        } else {
            assert_eq!(status, 200);
        }
    }
    // Each one-second window the burst touched lets 5 through.
    let windows = started.elapsed().as_secs() + 2;
    assert!(limited > 0, "nothing was limited");
    assert!(
        30 - limited <= 5 * windows,
        "{} allowed in {windows} windows",
        30 - limited
    );
    let r = env
        .http
        .get(format!("{gw}/v1/keys"))
        .bearer_auth(&quiet.server_key)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "another key has its own budget");
    env.finish().await;
}

#[tokio::test]
async fn expired_idempotency_keys_are_purged() {
    let mut env = TestEnv::start("purge").await;
    env.extra_env.insert(
        "HERALD_GATEWAY__IDEMPOTENCY_RETENTION_HOURS".into(),
        "0".into(),
    );
    env.extra_env
        .insert("HERALD_GATEWAY__PURGE_INTERVAL_MS".into(), "100".into());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let request = body(vec![
        json!({"platform": "android", "token": android_token(1)}),
    ]);
    let (status, first) = env
        .push(&gw, &app.server_key, Some("short-lived"), &request)
        .await;
    assert_eq!(status, 202);
    wait_until("the expired key is purged", LONG, || async {
        env.count_rows("idempotency_keys").await == 0
    })
    .await;
    // The key is forgotten: the same key now is a new request, with a new
    // message (a 202 always means something will be sent).
    let (status, again) = env
        .push(&gw, &app.server_key, Some("short-lived"), &request)
        .await;
    assert_eq!(status, 202);
    assert_ne!(again["message_id"], first["message_id"]);
    assert_eq!(env.count_rows("messages").await, 2);
    assert_eq!(env.count_rows("delivery_status").await, 2);
    env.finish().await;
}

#[tokio::test]
async fn a_key_used_again_after_its_retention_is_a_new_push_and_is_sent() {
    let mut env = TestEnv::start("keylives").await;
    // Keys expire at once and are never purged by the gateway here: the
    // test removes them itself, so both an expired key still stored and a
    // purged one are reused.
    env.extra_env.insert(
        "HERALD_GATEWAY__IDEMPOTENCY_RETENTION_HOURS".into(),
        "0".into(),
    );
    env.extra_env
        .insert("HERALD_GATEWAY__PURGE_INTERVAL_MS".into(), "3600000".into());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let token = android_token(7);
    let request = body(vec![json!({"platform": "android", "token": token})]);
    let mut ids = Vec::new();
    for life in 1..=3 {
        if life == 3 {
            sqlx::query("DELETE FROM idempotency_keys")
                .execute(&env.db)
                .await
                .expect("purge");
        }
        let (status, accepted) = env
            .push(&gw, &app.server_key, Some("reused"), &request)
            .await;
        assert_eq!(status, 202, "life {life}: {accepted}");
        assert_eq!(accepted["recipients"], 1, "{accepted}");
        let id = accepted["message_id"].as_str().expect("id").to_string();
        let s = env
            .wait_message(&gw, &app.server_key, &id, |s| s["counts"]["delivered"] == 1)
            .await;
        assert_eq!(s["status"], "completed", "{s}");
        ids.push(id);
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 3, "each life is its own message: {ids:?}");
    for id in &ids {
        assert_eq!(
            env.deliveries_per_token(id).await.get(&token),
            Some(&1),
            "message {id} reached the device once"
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn credentials_are_uploaded_sealed_never_returned_and_never_logged() {
    let env = TestEnv::start("creds").await;
    let key = env.create_bare_app("bare").await.server_key;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let sender = env.sender().await;
    let sim: Value = env
        .http
        .get(format!("{}/sim/credentials", env.sim_url()))
        .send()
        .await
        .expect("sim")
        .json()
        .await
        .expect("json");
    let apns_key = sim["apns"]["private_key_pem"]
        .as_str()
        .expect("pem")
        .to_string();
    let fcm_key = sim["fcm"]["service_account"]["private_key"]
        .as_str()
        .expect("pem")
        .to_string();

    let put = |provider: &str, body: Value| {
        env.http
            .put(format!("{gw}/v1/credentials/{provider}"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let mut broken = sim["apns"].clone();
    broken["private_key_pem"] =
        json!("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----");
    let r = put("apns", broken).await.expect("put");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.expect("json")["field"],
        "private_key_pem"
    );

    for (provider, body) in [("apns", sim["apns"].clone()), ("fcm", sim["fcm"].clone())] {
        let r = put(provider, body).await.expect("put");
        assert_eq!(r.status(), 200);
        let text = r.text().await.expect("text");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
    let shown = env
        .http
        .get(format!("{gw}/v1/credentials"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        shown.contains("HERALDSIM1") && shown.contains("herald-sim"),
        "{shown}"
    );
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    let rows: Vec<(Option<Value>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT config, sealed FROM provider_credentials")
            .fetch_all(&env.db)
            .await
            .expect("rows");
    assert_eq!(rows.len(), 2);
    for (plain, sealed) in rows {
        assert!(plain.is_none(), "no plaintext column");
        let sealed = sealed.expect("sealed");
        assert!(
            !sealed.windows(11).any(|w| w == b"PRIVATE KEY"),
            "sealed, not stored in clear"
        );
    }

    let tokens = vec![
        json!({"platform": "ios", "token": ios_token(1)}),
        json!({"platform": "android", "token": android_token(1)}),
    ];
    let (_, m) = env
        .push(
            &gw,
            &key,
            None,
            &json!({"to": {"tokens": tokens}, "notification": {"title": "t"}}),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("delivered with the uploaded credentials", LONG, || async {
        env.message(&gw, &key, &id).await["counts"]["delivered"] == 2
    })
    .await;

    // No secret in any log, with debug logging on.
    let key_line = |pem: &str| pem.lines().nth(1).expect("a base64 line").to_string();
    for log in [&gateway.log, &sender.log] {
        let text = std::fs::read_to_string(log).expect("log");
        for secret in [key_line(&apns_key), key_line(&fcm_key), key.clone()] {
            assert!(!text.contains(&secret), "a secret is in {}", log.display());
        }
    }
    let r = env
        .http
        .delete(format!("{gw}/v1/credentials/fcm"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    env.finish().await;
}

#[tokio::test]
async fn lookups_and_stats_answer_for_the_callers_app_only() {
    let env = TestEnv::start("lookups").await;
    let a = env.create_app().await;
    let b = env.create_bare_app("other").await;
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let gw = gateway.url.clone().expect("url");
    let put = |key: String, id: &'static str, token: String| {
        let (env, gw) = (&env, gw.clone());
        async move {
            let (status, _) = env
                .api(
                    "PUT",
                    &format!("{gw}/v1/installations/{id}"),
                    &key,
                    Some(&json!({"platform": "ios", "token": token, "custom_id": "user-1"})),
                )
                .await;
            assert_eq!(status, 200);
        }
    };
    put(a.sdk_key.clone(), "phone", ios_token(1)).await;
    put(a.sdk_key.clone(), "tablet", ios_token(2)).await;
    put(b.sdk_key.clone(), "phone", ios_token(3)).await;
    let (status, accepted) = env
        .push(
            &gw,
            &a.server_key,
            None,
            &json!({"to": {"custom_ids": ["user-1"]}, "notification": {"title": "t"}}),
        )
        .await;
    assert_eq!(status, 202);
    let message_id = accepted["message_id"].as_str().expect("id").to_string();
    env.wait_message(&gw, &a.server_key, &message_id, |m| {
        m["status"] == "completed"
    })
    .await;

    let get = |key: String, path: String| {
        let (env, gw) = (&env, gw.clone());
        async move { env.api("GET", &format!("{gw}{path}"), &key, None).await }
    };
    let (_, found) = get(
        a.server_key.clone(),
        "/v1/installations?custom_id=user-1".into(),
    )
    .await;
    let ids: Vec<&str> = found["installations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["install_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids, vec!["phone", "tablet"]);
    let (_, found) = get(
        b.server_key.clone(),
        "/v1/installations?custom_id=user-1".into(),
    )
    .await;
    assert_eq!(
        found["installations"].as_array().expect("list").len(),
        1,
        "B sees its own only"
    );
    let (_, found) = get(
        b.server_key.clone(),
        format!("/v1/installations?token={}", ios_token(1)),
    )
    .await;
    assert_eq!(
        found["installations"],
        json!([]),
        "A's token is not B's to see"
    );
    let (_, found) = get(
        a.server_key.clone(),
        format!("/v1/installations?token={}", ios_token(1)),
    )
    .await;
    assert_eq!(found["installations"][0]["install_id"], "phone");

    let (status, d) = get(
        a.server_key.clone(),
        "/v1/installations/tablet/deliveries".into(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(d["deliveries"][0]["message_id"], message_id.as_str());
    assert_eq!(d["deliveries"][0]["status"], "delivered");
    let (status, _) = get(
        b.server_key.clone(),
        "/v1/installations/tablet/deliveries".into(),
    )
    .await;
    assert_eq!(status, 404, "B has no installation `tablet`");
    let (status, d) = get(
        b.server_key.clone(),
        "/v1/installations/phone/deliveries".into(),
    )
    .await;
    assert_eq!(
        (status, d["deliveries"].clone()),
        (200, json!([])),
        "B's phone got nothing"
    );

    let (_, stats) = get(a.server_key.clone(), "/v1/stats?hours=2".into()).await;
    assert_eq!(stats["totals"]["delivered"], 2);
    assert_eq!(stats["hours"].as_array().expect("hours").len(), 2);
    let (_, stats) = get(b.server_key.clone(), "/v1/stats".into()).await;
    assert_eq!(stats["totals"]["delivered"], 0);
    assert_eq!(stats["hours"].as_array().expect("hours").len(), 24);

    for (path, field) in [
        ("/v1/stats?hours=0", "hours"),
        ("/v1/installations", "custom_id"),
        ("/v1/installations?custom_id=a&token=b", "token"),
        ("/v1/installations/phone/deliveries?limit=1000", "limit"),
    ] {
        let (status, problem) = get(a.server_key.clone(), path.into()).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (400, Some(field)),
            "{path}"
        );
    }
    let (status, _) = get(a.sdk_key.clone(), "/v1/stats".into()).await;
    assert_eq!(status, 403, "an SDK key reads no statistics");
    env.finish().await;
}

/// No input gets a 500: a NUL character (PostgreSQL's text cannot hold one)
/// in any body string or object key, or in a query parameter, and a query
/// parameter of the wrong type, are refused with an
/// `application/problem+json` naming the field, and nothing is applied: the
/// Idempotency-Key of a refused push is still free.
#[tokio::test]
async fn a_nul_character_or_a_bad_query_parameter_is_a_problem_naming_the_field() {
    let env = TestEnv::start("nulchars").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let call = |method: &'static str, path: String, key: String, body: Option<Value>| {
        let (env, gw) = (&env, gw.clone());
        async move {
            let mut r = env
                .http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    format!("{gw}{path}"),
                )
                .bearer_auth(key)
                .header("Idempotency-Key", "\"nul-1\"");
            if let Some(b) = body {
                r = r.json(&b);
            }
            let resp = r.send().await.expect("call");
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            (status, ct, v)
        }
    };
    let server = app.server_key.clone();
    let sdk = app.sdk_key.clone();
    let push = |title: &str| {
        json!({"to": {"tokens": [{"platform": "ios", "token": ios_token(1)}]},
               "notification": {"title": title}})
    };
    let cases = [
        (
            "POST",
            "/v1/push".to_string(),
            server.clone(),
            Some(push("a\u{0}b")),
            "notification.title",
        ),
        (
            "POST",
            "/v1/push".into(),
            server.clone(),
            Some(json!({"to": {"custom_ids": ["ok", "u\u{0}"]}, "notification": {"title": "t"}})),
            "to.custom_ids[1]",
        ),
        (
            "POST",
            "/v1/events".into(),
            sdk.clone(),
            Some(
                json!({"events": [{"event_id": "e1", "name": "signup", "custom_id": "u",
                                    "attributes": {"plan": "p\u{0}"}}]}),
            ),
            "events[0].attributes.plan",
        ),
        (
            "PUT",
            "/v1/installations/phone".into(),
            sdk.clone(),
            Some(json!({"platform": "ios", "token": ios_token(2), "custom_id": "x\u{0}"})),
            "custom_id",
        ),
        (
            "GET",
            "/v1/installations?token=%00".into(),
            server.clone(),
            None,
            "token",
        ),
        (
            "GET",
            "/v1/installations?custom_id=a%00".into(),
            server.clone(),
            None,
            "custom_id",
        ),
        (
            "GET",
            "/v1/stats?hours=abc".into(),
            server.clone(),
            None,
            "hours",
        ),
        (
            "GET",
            "/v1/campaigns?limit=abc".into(),
            server.clone(),
            None,
            "limit",
        ),
    ];
    for (method, path, key, body, field) in cases {
        let (status, ct, v) = call(method, path.clone(), key, body).await;
        assert_eq!(status, 400, "{method} {path}: {v}");
        assert!(
            ct.starts_with("application/problem+json"),
            "{method} {path}: {ct}"
        );
        assert_eq!(v["field"], field, "{method} {path}: {v}");
    }
    // The refused push left nothing behind, not even its key.
    let (status, _, v) = call("POST", "/v1/push".into(), server, Some(push("ab"))).await;
    assert_eq!(status, 202, "{v}");
    env.finish().await;
}
