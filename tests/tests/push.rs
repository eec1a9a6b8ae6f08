//! Transactional push, end to end: gateway, broker, sender, recorder and the
//! simulators as real processes; the simulator's record is the ground truth.

use herald_tests::{android_token, free_address, ios_token, wait_until, TestEnv};
use serde_json::{json, Value};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_push_to_six_devices_resubmitted_five_times_is_delivered_once_each() {
    let env = TestEnv::start("push6").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let gw = gateway.url.clone().expect("gateway url");

    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.push(json!({"platform": "ios", "token": ios_token(i)}));
        tokens.push(json!({"platform": "android", "token": android_token(i)}));
    }
    let body = json!({
        "to": {"tokens": tokens},
        "notification": {"title": "Order shipped", "body": "It is on its way", "data": {"order": "42"}},
    });
    let send = || {
        env.http
            .post(format!("{gw}/v1/push"))
            .bearer_auth(&app.server_key)
            .header("Idempotency-Key", "\"order-42-shipped\"")
            .json(&body)
            .send()
    };

    let first = send().await.expect("push");
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("json");
    let message_id = first["message_id"]
        .as_str()
        .expect("message_id")
        .to_string();
    assert_eq!(first["recipients"], 6);

    wait_until(
        "6 deliveries recorded by the simulators",
        SETTLE,
        || async { env.deliveries_per_token(&message_id).await.len() == 6 },
    )
    .await;

    for _ in 0..5 {
        let again = send().await.expect("resubmit");
        assert_eq!(again.status(), 202);
        assert_eq!(
            again
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        let again: Value = again.json().await.expect("json");
        assert_eq!(again["message_id"], message_id.as_str());
    }

    // A sentinel push through the same pipeline: once it has arrived, anything
    // the resubmissions might have published wrongly would have too.
    let sentinel = env
        .http
        .post(format!("{gw}/v1/push"))
        .bearer_auth(&app.server_key)
        .json(
            &json!({"to": {"tokens": [{"platform": "ios", "token": ios_token(99)}]},
                      "notification": {"title": "sentinel"}}),
        )
        .send()
        .await
        .expect("sentinel");
    let sentinel: Value = sentinel.json().await.expect("json");
    let sentinel_id = sentinel["message_id"].as_str().expect("id").to_string();
    wait_until("the sentinel arrives", SETTLE, || async {
        env.deliveries_per_token(&sentinel_id).await.len() == 1
    })
    .await;

    let per_token = env.deliveries_per_token(&message_id).await;
    assert_eq!(per_token.len(), 6, "{per_token:?}");
    assert!(
        per_token.values().all(|&n| n == 1),
        "duplicates: {per_token:?}"
    );
    assert_eq!(env.count_rows("messages").await, 2);
    assert_eq!(env.count_rows("delivery_status").await, 7);

    // The recorder has written every outcome back to PostgreSQL.
    wait_until("the message status shows 6 delivered", SETTLE, || async {
        let s = env.message(&gw, &app.server_key, &message_id).await;
        s["counts"]["delivered"] == 6 && s["status"] == "completed"
    })
    .await;
    let status = env.message(&gw, &app.server_key, &message_id).await;
    assert_eq!(status["by_platform"]["ios"]["delivered"], 3);
    assert_eq!(status["by_platform"]["android"]["delivered"], 3);
    env.finish().await;
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_refused_and_without_a_key_is_a_new_message() {
    let env = TestEnv::start("keys").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("gateway url");
    let push = |key: Option<&'static str>, title: &'static str| {
        let mut r = env
            .http
            .post(format!("{gw}/v1/push"))
            .bearer_auth(&app.server_key)
            .json(
                &json!({"to": {"tokens": [{"platform": "android", "token": "fcm-x"}]},
                          "notification": {"title": title}}),
            );
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        r.send()
    };
    assert_eq!(push(Some("k1"), "a").await.expect("push").status(), 202);
    let conflict = push(Some("k1"), "b").await.expect("push");
    assert_eq!(conflict.status(), 422);
    assert_eq!(
        conflict.headers()["content-type"],
        "application/problem+json"
    );
    let a: Value = push(None, "a")
        .await
        .expect("push")
        .json()
        .await
        .expect("json");
    let b: Value = push(None, "a")
        .await
        .expect("push")
        .json()
        .await
        .expect("json");
    assert_ne!(
        a["message_id"], b["message_id"],
        "no key: no dedupe across resubmissions"
    );
    assert_eq!(env.count_rows("messages").await, 3);
    env.finish().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_problem_naming_it_and_nothing_is_written() {
    let env = TestEnv::start("badinput").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("gateway url");
    let ios = ios_token(1);
    let big = "x".repeat(4200);

    let server = Some(app.server_key.clone());
    let good_to = json!({"tokens": [{"platform": "ios", "token": ios}]});
    let cases = vec![
        BadCase::new(
            "missing target",
            &server,
            json!({"to": {}, "notification": {"title": "t"}}),
            400,
            "to",
        ),
        BadCase::new(
            "missing to",
            &server,
            json!({"notification": {"title": "t"}}),
            400,
            "body",
        ),
        BadCase::new(
            "unknown platform",
            &server,
            json!({"to": {"tokens": [{"platform": "windows", "token": "abc"}]}, "notification": {"title": "t"}}),
            400,
            "to.tokens[0].platform",
        ),
        BadCase::new(
            "bad APNs token",
            &server,
            json!({"to": {"tokens": [{"platform": "ios", "token": "not-hex"}]}, "notification": {"title": "t"}}),
            400,
            "to.tokens[0].token",
        ),
        BadCase::new(
            "payload over 4 KB",
            &server,
            json!({"to": good_to, "notification": {"title": "t", "body": big}}),
            400,
            "notification",
        ),
        BadCase::new(
            "empty notification",
            &server,
            json!({"to": good_to, "notification": {}}),
            400,
            "notification",
        ),
        BadCase::new(
            "reserved data key",
            &server,
            json!({"to": good_to, "notification": {"title": "t", "data": {"aps": "x"}}}),
            400,
            "notification.data",
        ),
        BadCase::new(
            "unknown field",
            &server,
            json!({"to": good_to, "notification": {"title": "t"}, "colour": "red"}),
            400,
            "colour",
        ),
        BadCase {
            body: "{\"to\": {".into(),
            ..BadCase::new("malformed JSON", &server, json!({}), 400, "malformed-json")
        },
        BadCase {
            header: Some(("Idempotency-Key", "\"unclosed")),
            ..BadCase::new(
                "malformed Idempotency-Key",
                &server,
                json!({"to": good_to, "notification": {"title": "t"}}),
                400,
                "Idempotency-Key",
            )
        },
        BadCase::new(
            "wrong key",
            &Some("hk_server_not_a_real_key".into()),
            json!({"to": good_to, "notification": {"title": "t"}}),
            401,
            "unauthorized",
        ),
        BadCase::new(
            "no key",
            &None,
            json!({"to": good_to, "notification": {"title": "t"}}),
            401,
            "unauthorized",
        ),
        BadCase::new(
            "SDK key",
            &Some(app.sdk_key.clone()),
            json!({"to": good_to, "notification": {"title": "t"}}),
            403,
            "forbidden",
        ),
    ];
    for c in cases {
        let case = c.case;
        let mut r = env
            .http
            .post(format!("{gw}/v1/push"))
            .header("content-type", "application/json")
            .body(c.body);
        if let Some(a) = c.auth {
            r = r.bearer_auth(a);
        }
        if let Some((k, v)) = c.header {
            r = r.header(k, v);
        }
        let resp = r.send().await.expect(case);
        assert_eq!(resp.status().as_u16(), c.status, "{case}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        let p: Value = resp.json().await.expect(case);
        let named = p["field"].as_str() == Some(c.names)
            || p["type"].as_str().is_some_and(|t| t.ends_with(c.names));
        assert!(named, "{case}: expected `{}` in {p}", c.names);
        assert!(
            p["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}: {p}"
        );
    }
    env.assert_nothing_accepted().await;
    env.finish().await;
}

/// One malformed request and the problem it must get.
struct BadCase {
    case: &'static str,
    auth: Option<String>,
    header: Option<(&'static str, &'static str)>,
    body: String,
    status: u16,
    /// The problem's `field`, or the end of its `type`.
    names: &'static str,
}

impl BadCase {
    fn new(
        case: &'static str,
        auth: &Option<String>,
        body: Value,
        status: u16,
        names: &'static str,
    ) -> Self {
        Self {
            case,
            auth: auth.clone(),
            header: None,
            body: body.to_string(),
            status,
            names,
        }
    }
}

/// One sample of the gateway's metrics, 0 when it is not there yet.
/// Waits until one write of pushes waits on this test's lock on the outbox.
async fn wait_outbox_insert_held(env: &TestEnv, what: &str) {
    wait_until(what, SETTLE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO outbox%'",
        )
        .fetch_one(&env.db)
        .await
        .expect("pg_stat_activity");
        waiting == 1
    })
    .await;
}

async fn metric(env: &TestEnv, ops: &str, name: &str) -> f64 {
    let text = match env.http.get(format!("http://{ops}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_waiting_for_a_writer_are_written_together_and_each_gets_its_own_answer() {
    let env = TestEnv::start("groupcommit").await;
    let app = env.create_app().await;
    let doomed = env.create_app().await;
    let ops = free_address();
    let gateway = env
        .gateway_with(&[
            ("HERALD_GATEWAY__ACCEPT_WRITERS", "1"),
            ("HERALD_METRICS__LISTEN", &ops),
        ])
        .await;
    let _sender = env.sender().await;
    let gw = gateway.url.clone().expect("gateway url");
    let send = |server_key: String, key: Option<String>, token: String, title: &'static str| {
        let request = env
            .http
            .post(format!("{gw}/v1/push"))
            .bearer_auth(server_key)
            .json(&json!({
                "to": {"tokens": [{"platform": "ios", "token": token}]},
                "notification": {"title": title},
            }));
        let request = match key {
            Some(key) => request.header("Idempotency-Key", format!("\"{key}\"")),
            None => request,
        };
        tokio::spawn(async move {
            let r = request.send().await.expect("push");
            let status = r.status().as_u16();
            let replayed = r.headers().contains_key("idempotent-replayed");
            let body: Value = r.json().await.expect("json");
            (status, replayed, body)
        })
    };

    // The first batch is held at its outbox row by this test's lock, so the
    // next requests queue behind the gateway's one writer.
    let mut holder = env.db.begin().await.expect("tx");
    sqlx::query("LOCK TABLE outbox IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let first = send(
        app.server_key.clone(),
        Some("first".into()),
        ios_token(0),
        "first",
    );
    wait_outbox_insert_held(&env, "the first batch waits on the lock").await;

    let distinct: Vec<_> = (1..=30)
        .map(|i| {
            send(
                app.server_key.clone(),
                Some(format!("k{i}")),
                ios_token(i),
                "distinct",
            )
        })
        .collect();
    // Copies of one request, and a key reused for another body: each copy
    // waits for the batch after its key's first request.
    let copies: Vec<_> = (0..2)
        .map(|_| {
            send(
                app.server_key.clone(),
                Some("dup".into()),
                ios_token(31),
                "copy",
            )
        })
        .collect();
    let reused = [
        send(
            app.server_key.clone(),
            Some("reused".into()),
            ios_token(32),
            "one body",
        ),
        send(
            app.server_key.clone(),
            Some("reused".into()),
            ios_token(32),
            "another body",
        ),
    ];
    // An app deleted while its push waits: that push fails, alone.
    let lost = send(doomed.server_key.clone(), None, ios_token(33), "lost");
    wait_until("35 requests waiting for the writer", SETTLE, || async {
        metric(&env, &ops, "herald_gateway_accept_waiting").await == 35.0
    })
    .await;
    let doomed_id: uuid::Uuid = doomed.id.parse().expect("uuid");
    sqlx::query("DELETE FROM apps WHERE id = $1")
        .bind(doomed_id)
        .execute(&env.db)
        .await
        .expect("delete the app");
    holder.commit().await.expect("release");

    let (status, replayed, _) = first.await.expect("task");
    assert_eq!((status, replayed), (202, false), "the held request");
    let mut ids = std::collections::HashSet::new();
    for answer in distinct {
        let (status, replayed, body) = answer.await.expect("task");
        assert_eq!((status, replayed), (202, false), "{body}");
        ids.insert(body["message_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), 30, "thirty keys, thirty messages");
    let mut copy_answers = Vec::new();
    for answer in copies {
        copy_answers.push(answer.await.expect("task"));
    }
    assert_eq!(copy_answers[0].0, 202, "{:?}", copy_answers[0]);
    assert_eq!(copy_answers[1].0, 202, "{:?}", copy_answers[1]);
    assert_eq!(
        copy_answers[0].2["message_id"], copy_answers[1].2["message_id"],
        "copies get one message"
    );
    assert_ne!(
        copy_answers[0].1, copy_answers[1].1,
        "one copy is written, the other replayed: {copy_answers:?}"
    );
    let mut reused_statuses = Vec::new();
    for answer in reused {
        reused_statuses.push(answer.await.expect("task").0);
    }
    reused_statuses.sort();
    assert_eq!(
        reused_statuses,
        vec![202, 422],
        "a key reused for another body"
    );
    let (status, _, body) = lost.await.expect("task");
    assert!(
        status >= 500,
        "the deleted app's push fails: {status} {body}"
    );

    // Three transactions: the held one, everything that waited (written again
    // one at a time once the deleted app's push failed it), the copies.
    assert_eq!(
        metric(&env, &ops, "herald_gateway_accept_batch_requests_count").await,
        3.0
    );
    assert_eq!(
        metric(&env, &ops, "herald_gateway_accept_batch_requests_sum").await,
        36.0
    );
    assert_eq!(
        metric(&env, &ops, "herald_gateway_accept_waiting").await,
        0.0
    );

    // Every accepted push reaches its device once; the failed one nowhere.
    wait_until("33 deliveries", SETTLE, || async {
        env.sim_stats().await["accepted"].as_u64() == Some(33)
    })
    .await;
    let mut per_token: std::collections::HashMap<String, usize> = Default::default();
    for d in env.sim_deliveries().await {
        *per_token
            .entry(d["token"].as_str().expect("token").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_token.len(), 33, "{per_token:?}");
    assert!(per_token.values().all(|n| *n == 1), "{per_token:?}");
    assert!(!per_token.contains_key(&ios_token(33)));
    assert_eq!(
        env.count_rows("messages").await,
        33,
        "nothing half-written for the failed push"
    );
}

/// A push whose write is held up past `gateway.request_timeout_ms` (here by
/// this test's lock on the outbox) is answered when the write is done: 202,
/// and delivered. Answering 408 ("nothing was accepted, retrying is safe")
/// while the write went on to commit would be a lie: a client without an
/// Idempotency-Key that believed it would send the push twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_write_outlives_the_request_deadline_is_answered_by_the_write() {
    let env = TestEnv::start_with(
        "deadline",
        &[("HERALD_GATEWAY__REQUEST_TIMEOUT_MS", "1000")],
    )
    .await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let gw = gateway.url.clone().expect("url");

    let mut holder = env.db.begin().await.expect("tx");
    sqlx::query("LOCK TABLE outbox IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let request = env
        .http
        .post(format!("{gw}/v1/push"))
        .bearer_auth(&app.server_key)
        .json(
            &json!({"to": {"tokens": [{"platform": "ios", "token": ios_token(1)}]},
                      "notification": {"title": "held"}}),
        );
    let sent = std::time::Instant::now();
    let answer = tokio::spawn(async move {
        let r = request.send().await.expect("push");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    });
    wait_outbox_insert_held(&env, "the push's write waits on the lock").await;
    // The deadline passes while the write is held (a time, not a state, is
    // what this waits for).
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(sent.elapsed())).await;
    holder.rollback().await.expect("release the lock");
    let (status, body) = answer.await.expect("answer");
    assert_eq!(status, 202, "{body}");
    let message = body["message_id"].as_str().expect("message_id").to_string();
    wait_until("the push delivered", SETTLE, || async {
        env.deliveries_per_token(&message).await.get(&ios_token(1)) == Some(&1)
    })
    .await;
    assert!(
        sent.elapsed() > Duration::from_secs(1),
        "the deadline never passed"
    );
    env.finish().await;
}

/// An accepted push whose jobs no Kafka record can hold (here made so in
/// the database, as a row written by an older Herald or by any bug could
/// be) must not hold back the pushes after it: the relay takes its page row
/// by row, settles that push's deliveries `failed` with the reason, and
/// publishes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_kafka_can_never_take_fails_alone_and_holds_back_nothing() {
    let env =
        TestEnv::start_with("poisonrow", &[("HERALD_KAFKA__MESSAGE_TIMEOUT_MS", "1000")]).await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let gw = gateway.url.clone().expect("url");

    env.kafka_available(false);
    let mut ids = Vec::new();
    for (key, n) in [("poison", 1), ("after", 2)] {
        let (status, m) = env
            .push(
                &gw,
                &app.server_key,
                Some(&format!("\"{key}\"")),
                &json!({"to": {"tokens": [{"platform": "ios", "token": ios_token(n)}]},
                        "notification": {"title": key}}),
            )
            .await;
        assert_eq!(status, 202, "{m}");
        ids.push(m["message_id"].as_str().expect("id").to_string());
    }
    let (poison, after) = (&ids[0], &ids[1]);
    sqlx::query(
        "UPDATE messages SET notification = jsonb_set(notification, '{data}',
                jsonb_build_object('blob', repeat('x', 1200000)))
         WHERE id = $1::uuid",
    )
    .bind(poison)
    .execute(&env.db)
    .await
    .expect("grow the notification");
    // The gateway's first attempts, queued while the broker was away, run
    // out (kafka.message_timeout_ms, a time) before the broker returns.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.kafka_available(true);

    wait_until(
        "the push after the poisoned one delivered",
        SETTLE,
        || async { env.deliveries_per_token(after).await.get(&ios_token(2)) == Some(&1) },
    )
    .await;
    let status = env
        .wait_message(&gw, &app.server_key, poison, |s| s["status"] == "completed")
        .await;
    assert_eq!(status["counts"]["failed"], 1, "{status}");
    assert!(
        status["deliveries"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Kafka refuses")),
        "{status}"
    );
    assert!(env.deliveries_per_token(poison).await.is_empty());
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&env.db)
            .await
            .expect("outbox");
    assert_eq!(unpublished, 0);
    assert!(gateway.logged("an accepted push can never be published"));
    env.finish().await;
}

/// The outcome log keeps days ready ahead; a day past retention goes whole,
/// with the messages whose outcomes it held, and a push still waiting for its
/// `send_at` stays. A replayed outcome is not appended again.
#[tokio::test]
async fn outcomes_past_retention_go_with_their_messages() {
    let env = TestEnv::start("retention").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let gw = gateway.url.clone().expect("gateway url");
    let to = |i| json!({"tokens": [{"platform": "ios", "token": ios_token(i)}]});
    let (status, sent) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &json!({"to": to(1), "notification": {"title": "now"}}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let sent = sent["message_id"].as_str().expect("id").to_string();
    let later = (chrono::Utc::now() + chrono::Duration::days(29)).to_rfc3339();
    let (status, waiting) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &json!({"to": to(2), "notification": {"title": "later"}, "send_at": later}),
        )
        .await;
    assert_eq!(status, 202, "{waiting}");
    let waiting = waiting["message_id"].as_str().expect("id").to_string();
    wait_until("the push is delivered and recorded", SETTLE, || async {
        env.message(&gw, &app.server_key, &sent).await["counts"]["delivered"] == 1
    })
    .await;

    let store = herald_store::Store::connect(&env.db_url, 2)
        .await
        .expect("store");
    let outcome: herald_core::DeliveryOutcome = {
        let (message_id, delivery_id, token): (uuid::Uuid, uuid::Uuid, String) =
            sqlx::query_as("SELECT message_id, delivery_id, token FROM delivery_outcomes")
                .fetch_one(&env.db)
                .await
                .expect("the outcome");
        serde_json::from_value(json!({
            "delivery_id": delivery_id, "message_id": message_id, "app_id": app.id,
            "platform": "ios", "status": "delivered", "token": token,
            "attempts": 1, "at": chrono::Utc::now(),
        }))
        .expect("an outcome")
    };
    store
        .record_outcomes(&[outcome.clone(), outcome])
        .await
        .expect("replayed");
    assert_eq!(env.count_rows("delivery_outcomes").await, 1);

    // Forty days on, with thirty days of retention.
    let now = chrono::Utc::now() + chrono::Duration::days(40);
    let upkeep = store.keep_outcome_log(now, 14, 30).await.expect("upkeep");
    assert_eq!(upkeep.partitions_created.len(), 15, "{upkeep:?}");
    let today = chrono::Utc::now().format("%Y%m%d").to_string();
    assert!(
        upkeep
            .partitions_dropped
            .contains(&format!("delivery_outcomes_p{today}")),
        "{upkeep:?}"
    );
    assert!(
        upkeep
            .partitions_dropped
            .contains(&format!("delivery_outcomes_before_{today}")),
        "{upkeep:?}"
    );
    assert_eq!(upkeep.messages_deleted, 1, "{upkeep:?}");
    assert_eq!(env.count_rows("delivery_outcomes").await, 0);
    let gone = env
        .http
        .get(format!("{gw}/v1/messages/{sent}"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("status");
    assert_eq!(gone.status(), 404);
    let kept = env.message(&gw, &app.server_key, &waiting).await;
    assert_eq!(kept["counts"]["pending"], 1, "{kept}");
    // Done once, there is nothing left to do.
    assert_eq!(
        store.keep_outcome_log(now, 14, 30).await.expect("again"),
        herald_store::OutcomeLogUpkeep::default()
    );
    env.finish().await;
}
