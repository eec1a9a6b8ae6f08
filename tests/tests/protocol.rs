//! The delivery protocol under the failures of docs/delivery-semantics.md,
//! each with real processes and asserted on the simulators' record: the
//! duplicates and losses the docs promise, and no more.

use herald_core::DeliveryJob;
use herald_tests::{android_token, ios_token, wait_until, PrivateRedis, TestEnv, TOPICS};
use rdkafka::Message;
use serde_json::{json, Value};
use std::time::Duration;

const DELIVERIES: &str = TOPICS[0];
const SENDERS: &str = "herald-senders";
const LONG: Duration = Duration::from_secs(90);

fn one_token(platform: &str, token: &str) -> Value {
    json!({"platform": platform, "token": token})
}

/// Devices numbered `devices`, iOS for even numbers and Android for odd.
fn alternating_tokens(devices: std::ops::Range<usize>) -> Vec<Value> {
    devices
        .map(|i| {
            if i % 2 == 0 {
                one_token("ios", &ios_token(i))
            } else {
                one_token("android", &android_token(i))
            }
        })
        .collect()
}

fn push_body(tokens: Vec<Value>, policy: &str) -> Value {
    json!({"to": {"tokens": tokens}, "notification": {"title": "t", "body": "b"}, "delivery_policy": policy})
}

/// Long request timeout and a lease just above it: held requests are still in
/// flight when a test acts, however slow the machine.
/// Pushes to the iOS devices numbered `devices`; returns the message id.
async fn push_ios(
    env: &TestEnv,
    gw: &str,
    key: &str,
    idempotency_key: &str,
    devices: std::ops::Range<usize>,
    policy: &str,
) -> String {
    let tokens = devices.map(|i| one_token("ios", &ios_token(i))).collect();
    let (status, m) = env
        .push(gw, key, Some(idempotency_key), &push_body(tokens, policy))
        .await;
    assert_eq!(status, 202, "{m}");
    m["message_id"].as_str().expect("id").to_string()
}

fn slow_leases(env: &mut TestEnv) {
    env.extra_env
        .insert("HERALD_SENDER__REQUEST_TIMEOUT_MS".into(), "8000".into());
    env.extra_env
        .insert("HERALD_SENDER__LEASE_MS".into(), "9000".into());
}

/// The at_most_once verdict on an unknown outcome: recorded `unknown`, and
/// the provider got exactly the one send whose answer was lost.
async fn assert_unknown_and_sent_once(env: &TestEnv, gw: &str, key: &str, id: &str) {
    let s = env
        .wait_message(gw, key, id, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["unknown"], 1, "{s}");
    assert_eq!(
        env.deliveries_per_token(id).await.values().sum::<usize>(),
        1,
        "never resent"
    );
}

#[tokio::test]
async fn a_sender_killed_between_the_providers_answer_and_settling() {
    let mut env = TestEnv::start("crashafter").await;
    slow_leases(&mut env);
    // Both pushes in one batch: a second batch would wait behind the first,
    // whose request never gets an answer (seen on a loaded machine).
    one_batch(&mut env);
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    // The first sender must still be waiting on the provider when it is
    // killed: with the 8 s timeout it resolved its own held request (an
    // at_least_once resend) once, on a loaded machine, before the kill.
    let mut first = env
        .spawn_with(
            "sender",
            &["sender"],
            &[
                ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "300000"),
                ("HERALD_SHUTDOWN__DEADLINE_MS", "610000"),
            ],
        )
        .await;

    // The providers record each delivery, then never answer.
    env.set_sim_faults(json!({"hang_after_accept": true})).await;
    let (_, least) = env
        .push(
            &gw,
            &app.server_key,
            Some("least"),
            &push_body(vec![one_token("ios", &ios_token(1))], "at_least_once"),
        )
        .await;
    let (_, most) = env
        .push(
            &gw,
            &app.server_key,
            Some("most"),
            &push_body(
                vec![one_token("android", &android_token(1))],
                "at_most_once",
            ),
        )
        .await;
    let least = least["message_id"].as_str().expect("id").to_string();
    let most = most["message_id"].as_str().expect("id").to_string();
    wait_until("both accepted by the providers", LONG, || async {
        env.sim_stats().await["accepted"] == 2
    })
    .await;
    first.kill().await;
    env.set_sim_faults(json!({})).await;
    let _second = env.sender().await;

    // at_least_once: resent once by the new owner, with the same ids, so the
    // device shows it once.
    let s = env
        .wait_message(&gw, &app.server_key, &least, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["delivered"], 1, "{s}");
    let copies: Vec<Value> = env
        .sim_deliveries()
        .await
        .into_iter()
        .filter(|d| d["collapse_id"] == least.as_str())
        .collect();
    assert_eq!(copies.len(), 2, "the promised resend: {copies:?}");
    assert_eq!(
        copies[0]["provider_id"], copies[1]["provider_id"],
        "same apns-id"
    );
    // Its record says the device may have it twice.
    let reason = s["deliveries"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(herald_core::RESENT_AFTER_UNKNOWN),
        "the takeover's send is recorded as a resend: {s}"
    );

    // at_most_once: recorded unknown, never resent.
    assert_unknown_and_sent_once(&env, &gw, &app.server_key, &most).await;
    env.finish().await;
}

#[tokio::test]
async fn a_sender_paused_past_its_lease_cannot_overwrite_its_successor() {
    let mut env = TestEnv::start("zombie").await;
    slow_leases(&mut env);
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let zombie = env.sender().await;

    env.set_sim_faults(json!({"stall": true})).await;
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            Some("z"),
            &push_body(vec![one_token("ios", &ios_token(7))], "at_most_once"),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("the send is held at the provider", LONG, || async {
        env.sim_stats().await["stalled"] == 1
    })
    .await;
    zombie.pause();
    let _successor = env.sender().await;

    // The successor waits out the lease, takes over, and under at_most_once
    // records `unknown` without sending.
    let s = env
        .wait_message(&gw, &app.server_key, &id, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["unknown"], 1, "{s}");

    // The zombie wakes up, its held request is answered 200: its settle is
    // refused, because the successor's epoch is newer.
    env.set_sim_faults(json!({})).await;
    zombie.resume();
    wait_until("the zombie's settle is fenced off", LONG, || async {
        zombie.logged("lease lost before settling")
    })
    .await;
    assert_eq!(
        env.deliveries_per_token(&id).await.values().sum::<usize>(),
        1
    );
    let s = env.message(&gw, &app.server_key, &id).await;
    assert_eq!(
        s["counts"]["unknown"], 1,
        "the successor's outcome stands: {s}"
    );
    env.finish().await;
}

/// A sender stalled (SIGSTOP) with one request at the provider and the rest
/// of its batch claimed but not yet sent: a successor takes them over once
/// the lease runs out, and the woken sender must not send them too.
#[tokio::test]
async fn a_sender_stalled_before_its_requests_left_does_not_send_them_after_its_lease() {
    let mut env = TestEnv::start("stalledzombie").await;
    env.extra_env
        .insert("HERALD_SENDER__CONCURRENCY".into(), "1".into());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let zombie = env.sender().await;

    env.set_sim_faults(json!({"stall": true})).await;
    let tokens = (0..10).map(|i| one_token("ios", &ios_token(i))).collect();
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            Some("stalled"),
            &push_body(tokens, "at_least_once"),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("the first send is held at the provider", LONG, || async {
        env.sim_stats().await["stalled"] == 1
    })
    .await;
    zombie.pause();
    env.set_sim_faults(json!({})).await;
    let _successor = env.sender().await;
    let s = env
        .wait_message(&gw, &app.server_key, &id, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["delivered"], 10, "{s}");

    // Woken, it finds its first request answered (its settle is refused:
    // the successor's epoch is newer) and the other nine not sent.
    zombie.resume();
    wait_until("the woken sender's round ends", LONG, || async {
        zombie.logged("lease lost before settling")
    })
    .await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;
    env.wait_consumed("herald-senders-retries", TOPICS[1], LONG)
        .await;
    let per_token = env.deliveries_per_token(&id).await;
    // The request held at the provider when the sender stalled reached it,
    // and the successor resent it (at_least_once): that one twice.
    let twice = per_token.values().filter(|&&n| n == 2).count();
    assert!(
        per_token.len() == 10 && twice <= 1 && per_token.values().all(|&n| n <= 2),
        "sent again by the woken sender: {per_token:?}"
    );
    assert!(zombie.logged("the lease may have run out before the request left"));
    env.finish().await;
}

/// A sender waits up to 2 s to fill a batch: the two pushes of
/// [`push_both_policies`] are in one batch, all twenty at the provider at once.
fn one_batch(env: &mut TestEnv) {
    env.extra_env
        .insert("HERALD_SENDER__BATCH_LINGER_MS".into(), "2000".into());
}

/// Pushes ten iOS tokens under at_least_once and ten Android tokens under
/// at_most_once; returns the two message ids.
async fn push_both_policies(env: &TestEnv, gw: &str, key: &str, tag: &str) -> [String; 2] {
    let mut ids = Vec::new();
    for (policy, platform) in [("at_least_once", "ios"), ("at_most_once", "android")] {
        let tokens = (0..10)
            .map(|i| {
                let token = if platform == "ios" {
                    ios_token(i)
                } else {
                    android_token(i)
                };
                one_token(platform, &token)
            })
            .collect();
        let (status, m) = env
            .push(
                gw,
                key,
                Some(&format!("{tag}-{policy}")),
                &push_body(tokens, policy),
            )
            .await;
        assert_eq!(status, 202, "{m}");
        ids.push(m["message_id"].as_str().expect("id").to_string());
    }
    [ids[0].clone(), ids[1].clone()]
}

/// Both messages of [`push_both_policies`] delivered to every token once:
/// no resend under at_least_once, no `unknown` under at_most_once.
async fn assert_each_delivered_once(env: &TestEnv, gw: &str, key: &str, ids: &[String; 2]) {
    for id in ids {
        let s = env
            .wait_message(gw, key, id, |s| s["status"] == "completed")
            .await;
        assert_eq!(s["counts"]["delivered"], 10, "{s}");
        let per_token = env.deliveries_per_token(id).await;
        assert_eq!(per_token.len(), 10, "{per_token:?}");
        assert!(
            per_token.values().all(|&n| n == 1),
            "sent twice: {per_token:?}"
        );
    }
}

#[tokio::test]
async fn redis_refusing_writes_while_sends_are_in_flight_neither_resends_nor_forgets() {
    let mut env = TestEnv::start("settlefail").await;
    one_batch(&mut env);
    let redis = PrivateRedis::start(&env.log_dir);
    env.extra_env
        .insert("HERALD_REDIS__URL".into(), redis.url());
    env.extra_env
        .insert("HERALD_SENDER__REQUEST_TIMEOUT_MS".into(), "8000".into());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let sender = env.sender().await;

    // Each request takes 2 s at the provider: Redis stops taking writes
    // while all twenty are there, so every settle of the batch fails.
    env.set_sim_faults(json!({"latency_ms": 2000})).await;
    let ids = push_both_policies(&env, &gw, &app.server_key, "refused").await;
    wait_until("twenty requests at the provider", LONG, || async {
        env.sim_stats().await["in_flight"] == 20
    })
    .await;
    let refused_before = redis.errors("NOREPLICAS");
    redis.refuse_writes(true);
    wait_until(
        "the providers answered and settles were refused",
        LONG,
        || async {
            env.sim_stats().await["accepted"] == 20
                && redis.errors("NOREPLICAS") >= refused_before + 3
        },
    )
    .await;
    redis.refuse_writes(false);

    // The sender settles what it sent, in place: no takeover of its own
    // claims, no resend, no `unknown` for what was delivered.
    assert_each_delivered_once(&env, &gw, &app.server_key, &ids).await;
    assert!(!sender.logged("lease expired"), "a claim was taken over");
    env.finish().await;
}

/// While Redis takes no settles, a lane starts no more requests than its
/// places for unsettled deliveries (`sender.concurrency` + 512): a crash
/// then leaves at most that many sent and unrecorded for the takeovers.
/// Two batches of 500 are claimed and sending when Redis stops taking
/// writes; exactly 8 + 512 requests reach the provider until it takes them
/// again, and then every device gets its push once.
#[tokio::test]
async fn while_redis_takes_no_settles_a_lane_stops_at_its_unsettled_places() {
    let mut env = TestEnv::start("settlebound").await;
    one_batch(&mut env);
    let redis = PrivateRedis::start(&env.log_dir);
    for (k, v) in [
        ("HERALD_REDIS__URL", redis.url()),
        ("HERALD_SENDER__CONCURRENCY", "8".to_string()),
        ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "8000".to_string()),
        ("HERALD_SENDER__LEASE_MS", "60000".to_string()),
    ] {
        env.extra_env.insert(k.into(), v);
    }
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;

    // Held at the provider, so that both batches are claimed before Redis
    // stops taking writes.
    env.set_sim_faults(json!({"latency_ms": 3000})).await;
    let mut ids = Vec::new();
    for part in 0..2 {
        let tokens = (0..700)
            .map(|i| one_token("ios", &ios_token(part * 700 + i)))
            .collect();
        let (status, m) = env
            .push(
                &gw,
                &app.server_key,
                Some(&format!("bound-{part}")),
                &push_body(tokens, "at_least_once"),
            )
            .await;
        assert_eq!(status, 202, "{m}");
        ids.push(m["message_id"].as_str().expect("id").to_string());
    }
    let prefix = env.redis_prefix.clone();
    let claimed = || {
        redis.cli(&[
            "EVAL",
            "return #redis.call('KEYS', ARGV[1])",
            "0",
            &format!("{prefix}d:*"),
        ])
    };
    wait_until(
        "two batches claimed, eight requests at the provider",
        LONG,
        || async { claimed().trim() == "1000" && env.sim_stats().await["in_flight"] == 8 },
    )
    .await;
    let refused_before = redis.errors("NOREPLICAS");
    redis.refuse_writes(true);
    env.set_sim_faults(json!({})).await;
    wait_until("8 + 512 requests answered", LONG, || async {
        env.sim_stats().await["accepted"].as_u64().unwrap_or(0) >= 520
    })
    .await;
    // Settles keep being refused while the sender holds the rest back.
    wait_until("settles refused again and again", LONG, || async {
        redis.errors("NOREPLICAS") >= refused_before + 20
    })
    .await;
    assert_eq!(
        env.sim_stats().await["accepted"],
        520,
        "requests started while 512 finished ones waited for their settle"
    );

    redis.refuse_writes(false);
    wait_until("all 1,400 delivered", LONG, || async {
        env.sim_stats().await["accepted"] == 1400
    })
    .await;
    assert_eq!(
        env.sim_stats().await["duplicates"],
        0,
        "a device got a push twice"
    );
    for id in &ids {
        wait_until("every delivery recorded delivered", LONG, || async {
            env.message(&gw, &app.server_key, id).await["counts"]["delivered"] == 700
        })
        .await;
    }
    env.finish().await;
}

#[tokio::test]
async fn a_provider_slower_than_the_lease_keeps_its_claims_renewed() {
    let mut env = TestEnv::start("renewal").await;
    one_batch(&mut env);
    // A lease of 1 s and a provider taking 4 s: without renewal every claim
    // would run out mid-send, and the copies below would take them over.
    for (k, v) in [
        ("HERALD_SENDER__LEASE_MS", "1000"),
        ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "8000"),
    ] {
        env.extra_env.insert(k.into(), v.into());
    }
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let sender = env.sender().await;
    env.set_sim_faults(json!({"latency_ms": 4000})).await;
    let ids = push_both_policies(&env, &gw, &app.server_key, "slow").await;
    // All twenty at the provider together, unless a loaded machine spread
    // them over more than the 4 s each takes: then every one has arrived
    // and the last are still there.
    wait_until("twenty requests at the provider", LONG, || async {
        let stats = env.sim_stats().await;
        let in_flight = stats["in_flight"].as_u64().unwrap_or(0);
        in_flight > 0 && in_flight + stats["accepted"].as_u64().unwrap_or(0) >= 20
    })
    .await;

    // A copy of every job reaches the retry loop while the originals are
    // at the provider (as a rebalance, or a relay resend, would supply one).
    let jobs = jobs_published(&env).await;
    assert_eq!(jobs.len(), 20);
    herald_bus::Publisher::new(&herald_config_for(&env))
        .expect("publisher")
        .publish_retries(&jobs)
        .await
        .expect("copies");

    assert_each_delivered_once(&env, &gw, &app.server_key, &ids).await;
    env.wait_consumed("herald-senders-retries", TOPICS[1], LONG)
        .await;
    assert!(
        !sender.logged("lease expired"),
        "a live send was taken over"
    );
    env.finish().await;
}

#[tokio::test]
async fn sigterm_with_requests_outstanding_at_a_slow_provider_loses_and_doubles_nothing() {
    let mut env = TestEnv::start("sigtermslow").await;
    // Two requests at a time, 3 s each: twenty take 30 s, longer than the
    // shutdown deadline, so the sender must hand back what it has not sent.
    for (k, v) in [
        ("HERALD_SENDER__LEASE_MS", "1000"),
        ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "8000"),
        ("HERALD_SENDER__CONCURRENCY", "2"),
    ] {
        env.extra_env.insert(k.into(), v.into());
    }
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let mut first = env.sender().await;
    env.set_sim_faults(json!({"latency_ms": 3000})).await;
    let ids = push_both_policies(&env, &gw, &app.server_key, "term").await;
    wait_until("two requests at the provider", LONG, || async {
        env.sim_stats().await["in_flight"] == 2
    })
    .await;

    let status = first.terminate().await;
    assert!(status.success(), "sender exit: {status}");
    assert_eq!(
        env.sim_stats().await["in_flight"],
        0,
        "the sender exited with requests outstanding"
    );
    let second = env.sender().await;
    assert_each_delivered_once(&env, &gw, &app.server_key, &ids).await;
    assert!(
        !second.logged("lease expired"),
        "the first sender left a claim to run out"
    );
    env.finish().await;
}

#[tokio::test]
async fn sigterm_while_redis_refuses_claims_exits_at_once_and_loses_nothing() {
    let mut env = TestEnv::start("sigtermclaim").await;
    let redis = PrivateRedis::start(&env.log_dir);
    env.extra_env
        .insert("HERALD_REDIS__URL".into(), redis.url());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let mut first = env.sender().await;

    redis.refuse_writes(true);
    let id = push_ios(
        &env,
        &gw,
        &app.server_key,
        "unclaimable",
        0..10,
        "at_least_once",
    )
    .await;
    wait_until(
        "the batch's claim refused and tried again",
        LONG,
        || async { first.logged_times("claiming a batch failed") >= 2 },
    )
    .await;

    // The shutdown deadline is 25 s: a claim retried until then would hold
    // the exit that long, though nothing of the batch was sent.
    let asked = std::time::Instant::now();
    let status = first.terminate().await;
    let took = asked.elapsed();
    assert!(status.success(), "sender exit: {status}");
    assert!(
        took < Duration::from_secs(10),
        "the sender took {took:?} to exit while its claim could not be made"
    );
    assert_eq!(env.sim_stats().await["accepted"], 0);

    // The uncommitted jobs are read again by the next sender.
    redis.refuse_writes(false);
    let _second = env.sender().await;
    env.wait_message(&gw, &app.server_key, &id, |s| {
        s["counts"]["delivered"] == 10
    })
    .await;
    let stats = env.sim_stats().await;
    assert_eq!(stats["accepted"], 10, "{stats}");
    assert_eq!(stats["duplicates"], 0, "a device got a push twice: {stats}");
    env.finish().await;
}

#[tokio::test]
async fn sigterm_while_a_claims_answer_is_lost_hands_the_claims_back() {
    let mut env = TestEnv::start("sigtermlost").await;
    let redis = PrivateRedis::start(&env.log_dir);
    for (k, v) in [
        ("HERALD_REDIS__URL", redis.url()),
        ("HERALD_SENDER__LEASE_MS", "3000".to_string()),
    ] {
        env.extra_env.insert(k.into(), v);
    }
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let mut first = env.sender().await;
    // Up and claiming: one push delivered before Redis stops.
    let warm = push_ios(
        &env,
        &gw,
        &app.server_key,
        "warm-up",
        100..101,
        "at_most_once",
    )
    .await;
    env.wait_message(&gw, &app.server_key, &warm, |s| {
        s["counts"]["delivered"] == 1
    })
    .await;

    // Redis stops for 6 s: the batch's claim outlives the client's wait,
    // and runs once Redis wakes, answered to no one. Only the round that
    // sent it can take it back as its own.
    let asleep = redis.freeze(6);
    let id = push_ios(
        &env,
        &gw,
        &app.server_key,
        "answer-lost",
        0..10,
        "at_most_once",
    )
    .await;
    wait_until("the batch's claim timed out", LONG, || async {
        first.logged("claiming a batch failed")
    })
    .await;
    let status = first.terminate().await;
    assert!(status.success(), "sender exit: {status}");
    assert_eq!(env.sim_stats().await["accepted"], 1);
    asleep.join().expect("redis woke");

    // Left to run out and be taken over, the claims would make these
    // at-most-once deliveries unknown, never sent.
    let second = env.sender().await;
    env.wait_message(&gw, &app.server_key, &id, |s| {
        s["counts"]["delivered"].as_u64().unwrap_or(0)
            + s["counts"]["unknown"].as_u64().unwrap_or(0)
            == 10
    })
    .await;
    let status = env.message(&gw, &app.server_key, &id).await;
    assert_eq!(status["counts"]["delivered"], 10, "{status}");
    assert_eq!(env.sim_stats().await["accepted"], 11);
    assert!(
        !second.logged("lease expired"),
        "the first sender left its claims to run out"
    );
    env.finish().await;
}

#[tokio::test]
async fn redis_restarted_without_persistence_does_not_resend_what_was_delivered() {
    let mut env = TestEnv::start("redisloss").await;
    let mut redis = PrivateRedis::start(&env.log_dir);
    env.extra_env
        .insert("HERALD_REDIS__URL".into(), redis.url());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;

    let tokens = |from: usize| {
        (from..from + 10)
            .map(|i| one_token("ios", &ios_token(i)))
            .collect::<Vec<_>>()
    };
    let (_, first) = env
        .push(
            &gw,
            &app.server_key,
            Some("before"),
            &push_body(tokens(0), "at_least_once"),
        )
        .await;
    let first = first["message_id"].as_str().expect("id").to_string();
    env.wait_message(&gw, &app.server_key, &first, |s| {
        s["counts"]["delivered"] == 10
    })
    .await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;

    // Redis comes back empty; then every job ever published is replayed (as
    // after a consumer offset reset, or a replay into a new cluster).
    redis.restart_empty();
    let jobs = jobs_published(&env).await;
    assert_eq!(jobs.len(), 10);
    herald_bus::Publisher::new(&herald_config_for(&env))
        .expect("publisher")
        .publish_jobs(&jobs)
        .await
        .expect("replay");
    let (_, second) = env
        .push(
            &gw,
            &app.server_key,
            Some("after"),
            &push_body(tokens(100), "at_least_once"),
        )
        .await;
    let second = second["message_id"].as_str().expect("id").to_string();
    env.wait_message(&gw, &app.server_key, &second, |s| {
        s["counts"]["delivered"] == 10
    })
    .await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;

    let first_copies = env.deliveries_per_token(&first).await;
    assert_eq!(first_copies.len(), 10);
    assert!(
        first_copies.values().all(|&n| n == 1),
        "resent after Redis lost its data: {first_copies:?}"
    );
    env.finish().await;
}

/// Every job of the deliveries topic so far, as a copy would carry it.
async fn jobs_published(env: &TestEnv) -> Vec<DeliveryJob> {
    let kafka = herald_config_for(env);
    let records = tokio::task::spawn_blocking(move || {
        herald_bus::read_topic(&kafka, DELIVERIES, Duration::from_secs(10))
    })
    .await
    .expect("join")
    .expect("read topic");
    records
        .iter()
        .map(|m| DeliveryJob::from_json(m.payload().unwrap_or_default()).expect("job"))
        .collect()
}

#[tokio::test]
async fn a_redis_that_lost_its_last_writes_but_kept_its_marker_resends_nothing() {
    let mut env = TestEnv::start("rollback").await;
    let redis = PrivateRedis::start(&env.log_dir);
    env.extra_env
        .insert("HERALD_REDIS__URL".into(), redis.url());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let mut first = env.sender().await;
    let ids = push_both_policies(&env, &gw, &app.server_key, "before").await;
    assert_each_delivered_once(&env, &gw, &app.server_key, &ids).await;
    assert_eq!(first.terminate().await.code(), Some(0));

    // Redis fails over to a replica that missed the last writes (or comes
    // back from an AOF written once a second): the marker is still there,
    // the claims and the write sequence are from before.
    let prefix = env.redis_prefix.clone();
    let gone = redis.cli(&[
        "EVAL",
        "local n = 0
         for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k); n = n + 1 end
         redis.call('SET', ARGV[2], 0)
         return n",
        "0",
        &format!("{prefix}d:*"),
        &format!("{prefix}ledger-seq"),
    ]);
    assert_eq!(gone.trim(), "20", "{gone}");
    assert_eq!(
        redis
            .cli(&["EXISTS", &format!("{prefix}ledger-marker")])
            .trim(),
        "1"
    );

    // A new sender (it never saw the lost writes) gets copies of every job.
    let second = env.sender().await;
    let jobs = jobs_published(&env).await;
    assert_eq!(jobs.len(), 20);
    herald_bus::Publisher::new(&herald_config_for(&env))
        .expect("publisher")
        .publish_jobs(&jobs)
        .await
        .expect("copies");
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;
    assert_each_delivered_once(&env, &gw, &app.server_key, &ids).await;
    assert!(
        second.logged("the Redis ledger went back in time"),
        "the rollback was not noticed"
    );
    env.finish().await;
}

#[tokio::test]
async fn redis_restarted_empty_before_the_recorder_caught_up_sends_nothing_again() {
    let mut env = TestEnv::start("lossunrecorded").await;
    let mut redis = PrivateRedis::start(&env.log_dir);
    env.extra_env
        .insert("HERALD_REDIS__URL".into(), redis.url());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let sender = env
        .spawn("sender", &["sender", "--no-recorder"], false)
        .await;
    let recorder = env.spawn("recorder", &["recorder"], false).await;
    // A history: PostgreSQL has outcomes, so a loss is not a first start.
    let earlier = push_both_policies(&env, &gw, &app.server_key, "earlier").await;
    assert_each_delivered_once(&env, &gw, &app.server_key, &earlier).await;

    // Twenty deliveries settled in Redis, their outcomes waiting in Kafka
    // for a recorder that is stuck.
    recorder.pause();
    let ids = push_both_policies(&env, &gw, &app.server_key, "unrecorded").await;
    wait_until("the twenty delivered", LONG, || async {
        env.sim_stats().await["accepted"] == 40
    })
    .await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;

    // Redis forgets them, and copies of their jobs arrive: PostgreSQL does
    // not know they were sent, and must not be asked until it does.
    redis.restart_empty();
    let copies: Vec<DeliveryJob> = jobs_published(&env)
        .await
        .into_iter()
        .filter(|j| ids.contains(&j.message_id.to_string()))
        .collect();
    assert_eq!(copies.len(), 20);
    herald_bus::Publisher::new(&herald_config_for(&env))
        .expect("publisher")
        .publish_jobs(&copies)
        .await
        .expect("copies");
    wait_until("the copies are held, or sent", LONG, || async {
        sender.logged("ledger hold: fresh claims") || env.sim_stats().await["accepted"] != 40
    })
    .await;
    assert_eq!(
        env.sim_stats().await["accepted"],
        40,
        "sent again before PostgreSQL knew"
    );

    // The recorder catches up; the hold ends; PostgreSQL now knows.
    recorder.resume();
    assert_each_delivered_once(&env, &gw, &app.server_key, &ids).await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;
    env.wait_consumed("herald-senders-retries", TOPICS[1], LONG)
        .await;
    assert_each_delivered_once(&env, &gw, &app.server_key, &ids).await;
    assert_eq!(env.sim_stats().await["accepted"], 40);
    env.finish().await;
}

/// Redis goes back in time (a failover to a replica that missed writes):
/// every delivery key of the ledger gone and its write sequence set back to
/// `seq`; the marker, if there is one, kept.
fn roll_back(redis: &PrivateRedis, prefix: &str, seq: &str) {
    redis.cli(&[
        "EVAL",
        "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end
         redis.call('SET', ARGV[2], ARGV[3])
         return 1",
        "0",
        &format!("{prefix}d:*"),
        &format!("{prefix}ledger-seq"),
        seq,
    ]);
}

/// The chaos run's seed 20261202 on real Kafka: a second Sentinel failover
/// before the ledger was rebuilt from the first lost what had been settled
/// since, and copies of those jobs were checked against a PostgreSQL the
/// stuck recorder had not told yet.
#[tokio::test]
async fn redis_losing_writes_again_before_the_ledger_is_rebuilt_sends_nothing_twice() {
    let mut env = TestEnv::start("rollback2").await;
    let redis = PrivateRedis::start(&env.log_dir);
    env.extra_env
        .insert("HERALD_REDIS__URL".into(), redis.url());
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let key = app.server_key.clone();
    let sender = env
        .spawn("sender", &["sender", "--no-recorder"], false)
        .await;
    let recorder = env.spawn("recorder", &["recorder"], false).await;
    let earlier = push_both_policies(&env, &gw, &key, "earlier").await;
    assert_each_delivered_once(&env, &gw, &key, &earlier).await;

    // Another process is rebuilding, slowly: the ledger stays lost.
    let prefix = env.redis_prefix.clone();
    let lock = format!("{prefix}ledger-rebuild-lock");
    redis.cli(&["SET", &lock, "elsewhere", "PX", "600000"]);
    roll_back(&redis, &prefix, "0");
    wait_until("the first loss noticed", LONG, || async {
        sender.logged("the Redis ledger went back in time")
    })
    .await;
    let during = push_both_policies(&env, &gw, &key, "during").await;
    assert_each_delivered_once(&env, &gw, &key, &during).await;
    wait_until("the first loss's hold over", LONG, || async {
        sender.logged("ledger hold over")
    })
    .await;

    // Settled in Redis only (the recorder is stuck), then lost with a
    // second rollback, and copies of their jobs arrive.
    recorder.pause();
    let seq = redis.cli(&["GET", &format!("{prefix}ledger-seq")]);
    let unrecorded = push_both_policies(&env, &gw, &key, "unrecorded").await;
    wait_until("the twenty delivered", LONG, || async {
        env.sim_stats().await["accepted"] == 60
    })
    .await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;
    let held_before = sender.logged_times("ledger hold: fresh claims");
    roll_back(&redis, &prefix, seq.trim());
    let copies: Vec<DeliveryJob> = jobs_published(&env)
        .await
        .into_iter()
        .filter(|j| unrecorded.contains(&j.message_id.to_string()))
        .collect();
    assert_eq!(copies.len(), 20);
    herald_bus::Publisher::new(&herald_config_for(&env))
        .expect("publisher")
        .publish_jobs(&copies)
        .await
        .expect("copies");
    wait_until("the copies are held, or sent", LONG, || async {
        sender.logged_times("ledger hold: fresh claims") > held_before
            || env.sim_stats().await["accepted"] != 60
    })
    .await;
    assert_eq!(
        env.sim_stats().await["accepted"],
        60,
        "sent again: the second loss went unnoticed"
    );

    recorder.resume();
    assert_each_delivered_once(&env, &gw, &key, &unrecorded).await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;
    env.wait_consumed("herald-senders-retries", TOPICS[1], LONG)
        .await;
    assert_eq!(env.sim_stats().await["accepted"], 60);
    env.finish().await;
}

/// A sender's `herald_dedupe_hits_total`, from its metrics endpoint.
async fn dedupe_hits(env: &TestEnv, metrics: &str) -> f64 {
    let Ok(resp) = env
        .http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    resp.text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("herald_dedupe_hits_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Deliveries settled in Redis whose outcomes cannot reach Kafka yet (the
/// cluster is unreachable), and Redis loses those settles: only the sender
/// knows they were sent. It writes them back while they wait to be
/// published, and copies of their jobs, arriving through another cluster
/// at another sender, are not sent again. Found by a chaos run (at_most_once
/// deliveries sent twice after a Redis failover while Kafka was failing over).
#[tokio::test]
async fn settles_lost_by_redis_before_their_outcomes_were_published_are_written_back() {
    let mut env = TestEnv::start("writeback").await;
    let redis = PrivateRedis::start(&env.log_dir);
    let standby =
        herald_bus::EmbeddedBroker::start(1, &TOPICS, herald_tests::PARTITIONS).expect("standby");
    for (k, v) in [
        ("HERALD_REDIS__URL", redis.url()),
        (
            "HERALD_KAFKA__CLUSTERS__STANDBY__BOOTSTRAP_SERVERS",
            standby.bootstrap_servers().to_string(),
        ),
        // Producers stay on the primary: the outcomes wait for it.
        ("HERALD_KAFKA__FAILOVER_AFTER_MS", "600000".into()),
    ] {
        env.extra_env.insert(k.into(), v);
    }
    one_batch(&mut env);
    // Sends that take 2 s, well within the request timeout.
    slow_leases(&mut env);
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let first = env.sender().await;
    env.set_sim_faults(json!({"latency_ms": 2000})).await;
    let ids = push_both_policies(&env, &gw, &app.server_key, "wb").await;
    let jobs: Vec<DeliveryJob> = jobs_published(&env).await;
    assert_eq!(jobs.len(), 20);
    wait_until("the twenty at the provider", LONG, || async {
        env.sim_stats().await["in_flight"] == 20
    })
    .await;
    herald_tests::set_cluster_available(&env.broker, false);
    let prefix = env.redis_prefix.clone();
    let settled_in_redis = || {
        redis.cli(&[
            "EVAL",
            "local n = 0
             for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
               local s = string.match(redis.call('GET', k) or '', '^%S+')
               if s == 'delivered' or s == 'unknown' then n = n + 1 end
             end
             return n",
            "0",
            &format!("{prefix}d:*"),
        ])
    };
    wait_until("the twenty settled in Redis", LONG, || async {
        settled_in_redis().trim() == "20"
    })
    .await;
    roll_back(&redis, &prefix, "0");
    wait_until("the settles written back", LONG, || async {
        first.logged("Redis had lost settles whose outcomes are not published yet")
    })
    .await;
    assert_eq!(settled_in_redis().trim(), "20");
    let sent = env.sim_stats().await["accepted"].clone();

    // Copies through the standby, to a sender that never saw them: its
    // first batch of them is found settled, not sent (it re-publishes their
    // outcomes, which wait for the primary like the first sender's, and
    // the rest of the copies wait behind them).
    let metrics = herald_tests::free_address();
    let _second = env
        .spawn_with(
            "sender",
            &["sender", "--no-recorder"],
            &[("HERALD_METRICS__LISTEN", metrics.as_str())],
        )
        .await;
    herald_bus::Publisher::new(&herald_config::KafkaConfig {
        bootstrap_servers: standby.bootstrap_servers().to_string(),
        ..Default::default()
    })
    .expect("publisher")
    .publish_jobs(&jobs)
    .await
    .expect("copies");
    wait_until("the copies found settled", LONG, || async {
        dedupe_hits(&env, &metrics).await >= 1.0 || env.sim_stats().await["accepted"] != sent
    })
    .await;
    assert_eq!(
        env.sim_stats().await["accepted"],
        sent,
        "sent again: the lost settles were not written back"
    );

    herald_tests::set_cluster_available(&env.broker, true);
    assert_each_delivered_once(&env, &gw, &app.server_key, &ids).await;
    std::mem::forget(standby);
    env.finish().await;
}

#[tokio::test]
async fn a_redis_that_may_evict_ledger_keys_is_refused() {
    let mut env = TestEnv::start("eviction").await;
    let redis = PrivateRedis::start(&env.log_dir);
    env.extra_env
        .insert("HERALD_REDIS__URL".into(), redis.url());
    redis.cli(&["CONFIG", "SET", "maxmemory", "100mb"]);
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    let out = tokio::time::timeout(LONG, env.run_cli_unchecked(&["sender"]))
        .await
        .expect("the sender ran on a Redis that may evict its keys");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("maxmemory-policy noeviction"), "{stderr}");
    env.finish().await;
}

fn herald_config_for(env: &TestEnv) -> herald_config::KafkaConfig {
    herald_config::KafkaConfig {
        bootstrap_servers: env.broker.bootstrap_servers().to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_second_sender_joining_mid_batch_delivers_everything_once() {
    let env = TestEnv::start("rebalance").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    env.set_sim_faults(json!({"latency_ms": 10, "latency_jitter_ms": 30}))
        .await;
    let _first = env.sender().await;
    let tokens = alternating_tokens(0..300);
    let (status, m) = env
        .push(
            &gw,
            &app.server_key,
            Some("rb"),
            &push_body(tokens, "at_least_once"),
        )
        .await;
    assert_eq!(status, 202, "{m}");
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("the first sender is under way", LONG, || async {
        env.sim_stats().await["accepted"].as_u64().unwrap_or(0) >= 20
    })
    .await;
    let _second = env.sender().await;
    env.wait_message(&gw, &app.server_key, &id, |s| {
        s["counts"]["delivered"] == 300
    })
    .await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;
    let per_token = env.deliveries_per_token(&id).await;
    assert_eq!(per_token.len(), 300);
    assert!(
        per_token.values().all(|&n| n == 1),
        "duplicates after a rebalance"
    );
    env.finish().await;
}

#[tokio::test]
async fn the_same_jobs_published_three_times_are_delivered_once() {
    let env = TestEnv::start("thrice").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let tokens: Vec<Value> = (0..10)
        .map(|i| one_token("android", &android_token(i)))
        .collect();
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            Some("x3"),
            &push_body(tokens, "at_least_once"),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    // No sender yet: the relay published once; recovery publishes twice more.
    wait_until("the outbox is published", LONG, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&env.db)
            .await
            .map(|n| n == 0)
            .unwrap_or(false)
    })
    .await;
    for _ in 0..2 {
        let out = env.run_cli(&["recover"]).await;
        assert!(out.contains(": 10 unsettled deliveries"), "{out}");
    }
    let _sender = env.sender().await;
    env.wait_message(&gw, &app.server_key, &id, |s| {
        s["counts"]["delivered"] == 10
    })
    .await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;
    let per_token = env.deliveries_per_token(&id).await;
    assert_eq!(per_token.len(), 10);
    assert!(per_token.values().all(|&n| n == 1), "{per_token:?}");
    env.finish().await;
}

#[tokio::test]
async fn storms_of_429_and_503_are_retried_until_each_delivery_lands_once() {
    let env = TestEnv::start("storms").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    // APNs 429s (FCM quota errors rightly wait a minute, too long for a test),
    // then 503s on both providers.
    for (status, tokens) in [
        (
            429,
            (0..20)
                .map(|i| one_token("ios", &ios_token(i)))
                .collect::<Vec<_>>(),
        ),
        (503, alternating_tokens(20..40)),
    ] {
        env.set_sim_faults(json!({"fail_first": 30, "fail_status": status}))
            .await;
        let (_, m) = env
            .push(
                &gw,
                &app.server_key,
                None,
                &push_body(tokens, "at_least_once"),
            )
            .await;
        let id = m["message_id"].as_str().expect("id").to_string();
        let s = env
            .wait_message(&gw, &app.server_key, &id, |s| {
                s["counts"]["delivered"] == 20
            })
            .await;
        let retried = s["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .filter(|d| d["attempts"].as_u64() > Some(1))
            .count();
        assert!(retried > 0, "{status}: nothing was retried: {s}");
        let per_token = env.deliveries_per_token(&id).await;
        assert_eq!(per_token.len(), 20, "{status}: lost");
        assert!(per_token.values().all(|&n| n == 1), "{status}: duplicates");
    }
    env.finish().await;
}

#[tokio::test]
async fn permanently_invalid_tokens_are_not_retried_and_their_installations_are_invalidated() {
    let env = TestEnv::start("badtokens").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let bad = [
        ("gone", "ios", format!("0410{}", &ios_token(1)[4..])),
        ("badtoken", "ios", format!("0bad{}", &ios_token(2)[4..])),
        ("unregistered", "android", "unreg-device-1".to_string()),
        ("good", "ios", ios_token(3)),
    ];
    for (install, platform, token) in &bad {
        let r = env
            .http
            .put(format!("{gw}/v1/installations/{install}"))
            .bearer_auth(&app.sdk_key)
            .json(&json!({"platform": platform, "token": token}))
            .send()
            .await
            .expect("install");
        assert_eq!(r.status(), 200);
    }
    let body = json!({"to": {"install_ids": ["gone", "badtoken", "unregistered", "good"]}, "notification": {"title": "t"}});
    let (_, m) = env.push(&gw, &app.server_key, None, &body).await;
    let id = m["message_id"].as_str().expect("id").to_string();
    let s = env
        .wait_message(&gw, &app.server_key, &id, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["rejected"], 3, "{s}");
    assert_eq!(s["counts"]["delivered"], 1, "{s}");
    for d in s["deliveries"].as_array().expect("deliveries") {
        assert_eq!(d["attempts"], 1, "never retried: {d}");
    }
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT install_id FROM installations WHERE invalidated_at IS NOT NULL ORDER BY install_id",
    )
    .fetch_all(&env.db)
    .await
    .expect("query");
    assert_eq!(invalid, ["badtoken", "gone", "unregistered"]);
    // Never targeted again.
    let (_, again) = env.push(&gw, &app.server_key, None, &body).await;
    assert_eq!(again["recipients"], 1, "{again}");
    assert_eq!(
        again["unresolved_install_ids"],
        json!(["gone", "badtoken", "unregistered"])
    );
    env.finish().await;
}

#[tokio::test]
async fn jobs_that_cannot_be_processed_are_dead_lettered_and_replay_safely() {
    let env = TestEnv::start("dlq").await;
    // An app without provider credentials: its deliveries cannot be sent.
    let app = env.create_bare_app("nocreds").await;
    let (key, app_id) = (app.server_key.clone(), app.id.clone());
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let tokens = vec![
        one_token("ios", &ios_token(1)),
        one_token("android", &android_token(1)),
    ];
    let (_, m) = env
        .push(&gw, &key, Some("dl"), &push_body(tokens, "at_least_once"))
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    let s = env
        .wait_message(&gw, &key, &id, |s| s["counts"]["failed"] == 2)
        .await;
    assert!(
        s["deliveries"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("credentials")),
        "{s}"
    );

    let listed = env.run_cli(&["dlq", "list"]).await;
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains("credentials"));

    // Fixed, then replayed twice: delivered once each.
    env.run_cli(&[
        "apps",
        "credentials",
        "--app",
        &app_id,
        "--sim",
        env.sim_url(),
    ])
    .await;
    for _ in 0..2 {
        let out = env.run_cli(&["dlq", "replay"]).await;
        assert!(out.contains("replayed 2"), "{out}");
    }
    env.wait_message(&gw, &key, &id, |s| s["counts"]["delivered"] == 2)
        .await;
    env.wait_consumed(SENDERS, DELIVERIES, LONG).await;
    let per_token = env.deliveries_per_token(&id).await;
    assert_eq!(per_token.len(), 2);
    assert!(per_token.values().all(|&n| n == 1), "{per_token:?}");
    env.finish().await;
}

#[tokio::test]
async fn a_connection_reset_after_the_provider_accepted_is_an_unknown_outcome() {
    let env = TestEnv::start("reset").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    // Every request is recorded, then its connection dropped unanswered.
    env.set_sim_faults(json!({"reset_after_accept": true}))
        .await;

    // at_least_once: resent once at once (same apns-id); that answer is lost
    // too, so the outcome stays unknown. The device shows one notification.
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &push_body(vec![one_token("ios", &ios_token(1))], "at_least_once"),
        )
        .await;
    let least = m["message_id"].as_str().expect("id").to_string();
    let s = env
        .wait_message(&gw, &app.server_key, &least, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["unknown"], 1, "{s}");
    let copies: Vec<Value> = env
        .sim_deliveries()
        .await
        .into_iter()
        .filter(|d| d["collapse_id"] == least.as_str())
        .collect();
    assert_eq!(copies.len(), 2, "one resend: {copies:?}");
    assert_eq!(copies[0]["provider_id"], copies[1]["provider_id"]);

    // at_most_once: recorded unknown, never resent.
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &push_body(
                vec![one_token("android", &android_token(1))],
                "at_most_once",
            ),
        )
        .await;
    let most = m["message_id"].as_str().expect("id").to_string();
    assert_unknown_and_sent_once(&env, &gw, &app.server_key, &most).await;
    env.finish().await;
}

/// A request that timed out may have reached the device; `at_least_once`
/// sends it once more, and the delivery's record says so, so that a device
/// showing it twice is explained by Herald's own record.
#[tokio::test]
async fn a_delivery_resent_after_a_timeout_says_so_in_its_record() {
    let env = TestEnv::start("resent").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let sender = env.sender().await;
    // The provider has the first request, and never answers it.
    env.set_sim_faults(json!({"hang_after_accept": true})).await;
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &push_body(vec![one_token("ios", &ios_token(1))], "at_least_once"),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("the first request timed out", LONG, || async {
        sender.logged("outcome unknown; resending once")
    })
    .await;
    // The resend is answered.
    env.set_sim_faults(json!({})).await;
    let s = env
        .wait_message(&gw, &app.server_key, &id, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["delivered"], 1, "{s}");
    let reason = s["deliveries"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(herald_core::RESENT_AFTER_UNKNOWN),
        "the record says it was sent twice: {s}"
    );
    let copies = env
        .sim_deliveries()
        .await
        .into_iter()
        .filter(|d| d["collapse_id"] == id.as_str())
        .count();
    assert_eq!(copies, 2, "the first request and its resend");
    env.finish().await;
}

/// A sender stopped (SIGSTOP: a paused VM, a frozen host) while its
/// requests are at the provider, and running again long after their
/// deadline: the answers waiting in its sockets are read, and no request
/// counts as unknown or goes out a second time.
#[tokio::test]
async fn a_sender_stopped_past_its_deadline_reads_the_answers_waiting_for_it() {
    const TIMEOUT_MS: u64 = 5_000;
    let env = TestEnv::start("frozen").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let timeout = TIMEOUT_MS.to_string();
    // Its lease and group session outlast the stop, so that what it finds
    // on waking is its own requests' answers, not a takeover.
    let sender = env
        .spawn_with(
            "sender",
            &["sender"],
            &[
                ("HERALD_SENDER__REQUEST_TIMEOUT_MS", timeout.as_str()),
                ("HERALD_SENDER__LEASE_MS", "30000"),
                ("HERALD_KAFKA__SESSION_TIMEOUT_MS", "30000"),
            ],
        )
        .await;
    // The provider holds every request, unanswered.
    env.set_sim_faults(json!({"stall": true})).await;
    let tokens = alternating_tokens(0..20);
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &push_body(tokens, "at_least_once"),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    wait_until("every request at the provider", LONG, || async {
        env.sim_stats().await["stalled"] == 20
    })
    .await;
    let stopped = std::time::Instant::now();
    sender.pause();
    // The provider answers every request while the sender is stopped.
    env.set_sim_faults(json!({})).await;
    wait_until("every request answered", LONG, || async {
        env.sim_stats().await["accepted"] == 20
    })
    .await;
    // The stop itself, outlasting the request deadline. (Whether the woken
    // sender reads the answers before its deadline timers run, or after,
    // with their grace, is the runtime's order; either way, read.)
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 2_000).saturating_sub(stopped.elapsed()))
        .await;
    sender.resume();
    let s = env
        .wait_message(&gw, &app.server_key, &id, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["delivered"], 20, "{s}");
    let per_token = env.deliveries_per_token(&id).await;
    assert_eq!(per_token.len(), 20);
    assert!(
        per_token.values().all(|&n| n == 1),
        "sent twice: {per_token:?}"
    );
    assert!(
        !sender.logged("outcome unknown"),
        "an answered request counted as unknown (or the {TIMEOUT_MS} ms deadline passed before the sender was stopped)"
    );
    env.finish().await;
}

#[tokio::test]
async fn goaway_mid_stream_loses_and_duplicates_nothing() {
    let env = TestEnv::start("goaway").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    // Every connection is told to go away after 5 requests, while many more
    // streams are in flight on it; latency keeps them overlapping.
    env.set_sim_faults(json!({"goaway_after": 5, "latency_ms": 30}))
        .await;
    let tokens = alternating_tokens(0..120);
    // at_most_once: a stream refused by GOAWAY must be known as not
    // delivered (and retried), never as unknown (which this policy drops).
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &push_body(tokens, "at_most_once"),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    let s = env
        .wait_message(&gw, &app.server_key, &id, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["delivered"], 120, "{}", s["counts"]);
    let per_token = env.deliveries_per_token(&id).await;
    assert_eq!(per_token.len(), 120);
    assert!(per_token.values().all(|&n| n == 1), "duplicates");
    let stats = env.sim_stats().await;
    assert!(
        stats["goaways"].as_u64() >= Some(5),
        "connections were sent away: {stats}"
    );
    assert!(
        stats["connections"].as_u64() > stats["goaways"].as_u64(),
        "and replaced: {stats}"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_provider_allowing_two_streams_per_connection_gets_everything_once() {
    let env =
        TestEnv::start_with("twostreams", &[("HERALD_SIM__MAX_CONCURRENT_STREAMS", "2")]).await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    env.set_sim_faults(json!({"latency_ms": 20})).await;
    let tokens: Vec<Value> = (0..80).map(|i| one_token("ios", &ios_token(i))).collect();
    let (_, m) = env
        .push(
            &gw,
            &app.server_key,
            None,
            &push_body(tokens, "at_most_once"),
        )
        .await;
    let id = m["message_id"].as_str().expect("id").to_string();
    let s = env
        .wait_message(&gw, &app.server_key, &id, |s| s["status"] == "completed")
        .await;
    assert_eq!(s["counts"]["delivered"], 80, "{}", s["counts"]);
    assert!(env
        .deliveries_per_token(&id)
        .await
        .values()
        .all(|&n| n == 1));
    let stats = env.sim_stats().await;
    assert_eq!(
        stats["max_streams_seen"], 2,
        "the client kept to the server's SETTINGS: {stats}"
    );
    env.finish().await;
}

#[tokio::test]
async fn an_outcome_said_twice_in_one_batch_is_recorded_once() {
    let env = TestEnv::start("outcometwice").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    // No sender: the delivery stays pending until the outcomes below arrive.
    let (status, m) = env
        .push(
            &gw,
            &app.server_key,
            Some("twice"),
            &push_body(vec![one_token("ios", &ios_token(1))], "at_least_once"),
        )
        .await;
    assert_eq!(status, 202, "{m}");
    let id = m["message_id"].as_str().expect("id").to_string();
    let s = env.message(&gw, &app.server_key, &id).await;
    let delivery = &s["deliveries"][0];
    let outcome = herald_core::DeliveryOutcome {
        delivery_id: delivery["delivery_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid"),
        message_id: id.parse().expect("uuid"),
        app_id: app.id.parse().expect("uuid"),
        platform: herald_core::Platform::Ios,
        status: herald_core::DeliveryStatus::Delivered,
        reason: None,
        provider_id: Some("first".into()),
        invalid_token: false,
        invalid_since: None,
        token: ios_token(1),
        install_id: None,
        attempts: 1,
        at: chrono::Utc::now(),
        ledger_mark: None,
    };
    let again = herald_core::DeliveryOutcome {
        provider_id: Some("second".into()),
        ..outcome.clone()
    };
    // Both land before the recorder starts, so they arrive in one batch.
    herald_bus::Publisher::new(&herald_config_for(&env))
        .expect("publisher")
        .publish_outcomes(&[outcome, again])
        .await
        .expect("publish");
    let _recorder = env.spawn("recorder", &["recorder"], false).await;
    let s = env
        .wait_message(&gw, &app.server_key, &id, |s| s["counts"]["delivered"] == 1)
        .await;
    assert_eq!(s["deliveries"][0]["provider_id"], "first", "{s}");
    env.finish().await;
}
