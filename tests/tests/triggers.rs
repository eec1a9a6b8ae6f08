//! Trigger campaigns end to end: delays on a controllable clock, cancel
//! events, frequency caps under concurrency, quiet hours, replayed events, rule
//! validation, and 10,000 users with the engine restarted mid-run. Every test
//! ends on the simulators' record.

use herald_tests::{wait_until, App, TestEnv};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// A clock file the trigger engine reads "now" from.
struct TestClock {
    dir: PathBuf,
    file: PathBuf,
}

impl TestClock {
    fn new(start: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-clock-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("clock dir");
        let clock = Self {
            file: dir.join("now"),
            dir,
        };
        clock.set(start);
        clock
    }

    fn set(&self, t: &str) {
        std::fs::write(&self.file, t).expect("clock");
    }

    fn setting(&self) -> (&'static str, String) {
        (
            "HERALD_TRIGGERS__CLOCK_FILE",
            self.file.to_str().expect("path").to_string(),
        )
    }
}

impl Drop for TestClock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Api<'a> {
    env: &'a TestEnv,
    base: String,
    app: App,
}

impl Api<'_> {
    async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self
            .env
            .api(
                method,
                &format!("{}{path}", self.base),
                &self.app.server_key,
                body,
            )
            .await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn rule(&self, body: Value) -> String {
        self.ok("POST", "/v1/triggers", Some(&body)).await["id"]
            .as_str()
            .expect("trigger id")
            .to_string()
    }

    async fn timers(&self, id: &str) -> Value {
        self.ok("GET", &format!("/v1/triggers/{id}"), None).await["timers"].clone()
    }

    /// Posts events with the SDK key, as an app would.
    async fn events(&self, events: Value) -> Value {
        let (status, v) = self
            .env
            .api(
                "POST",
                &format!("{}/v1/events", self.base),
                &self.app.sdk_key,
                Some(&events),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        v
    }

    async fn device(&self, install_id: &str, custom_id: &str, token: &str, extra: Value) {
        let mut body = json!({"platform": "ios", "token": token, "custom_id": custom_id});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.ok(
            "PUT",
            &format!("/v1/installations/{install_id}"),
            Some(&body),
        )
        .await;
    }

    async fn wait_timers(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) {
        wait_until(what, LONG, || async { check(&self.timers(id).await) }).await;
    }
}

fn token(n: usize) -> String {
    format!("c{:063x}", n)
}

/// Deliveries per token in the simulator's record.
async fn record(env: &TestEnv) -> HashMap<String, Vec<Value>> {
    let mut by_token: HashMap<String, Vec<Value>> = HashMap::new();
    for d in env.sim_deliveries().await {
        by_token
            .entry(d["token"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(d);
    }
    by_token
}

#[tokio::test]
async fn a_delayed_push_fires_at_its_due_time_with_its_placeholders_filled() {
    let clock = TestClock::new("2026-12-01T10:00:00Z");
    let (k, v) = clock.setting();
    let env = TestEnv::start_with("trigdelay", &[(k, &v)]).await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let api = Api {
        env: &env,
        base: gateway.url.clone().expect("url"),
        app,
    };
    let _sender = env.sender().await;
    let _engine = env.spawn("triggers", &["triggers"], false).await;
    api.device(
        "d1",
        "ada",
        &token(1),
        json!({"attributes": {"first_name": "Ada"}}),
    )
    .await;
    let cart = api
        .rule(json!({
            "name": "cart reminder", "entry_event": "cart_abandoned", "delay_seconds": 3600,
            "conditions": {"field": "attributes.total", "op": "gte", "value": 20},
            "notification": {"title": "{{event.item|Your cart}} is waiting",
                             "body": "Hi {{user.first_name|there}}, {{event.total}} EUR"}
        }))
        .await;
    let ping = api
        .rule(json!({"name": "ping", "entry_event": "ping", "notification": {"title": "pong"}}))
        .await;
    api.events(json!({"events": [
        {"event_id": "e1", "name": "cart_abandoned", "custom_id": "ada",
         "attributes": {"item": "Red shoes", "total": 25}, "occurred_at": "2026-12-01T10:00:00Z"},
        {"event_id": "e2", "name": "cart_abandoned", "custom_id": "ada",
         "attributes": {"item": "Socks", "total": 3}, "occurred_at": "2026-12-01T10:00:00Z"}
    ]}))
    .await;
    // Only the event that meets the conditions starts a timer.
    api.wait_timers(&cart, "the cart timer", |t| t["pending"] == 1)
        .await;

    // 59 minutes later: a push due now fires, the cart reminder does not.
    clock.set("2026-12-01T10:59:00Z");
    api.events(json!({"event_id": "p1", "name": "ping", "custom_id": "ada",
                      "occurred_at": "2026-12-01T10:59:00Z"}))
        .await;
    api.wait_timers(&ping, "the ping", |t| t["fired"] == 1)
        .await;
    assert_eq!(api.timers(&cart).await["pending"], 1);
    wait_until("the ping delivered", LONG, || async {
        record(&env).await.get(&token(1)).map(Vec::len) == Some(1)
    })
    .await;

    clock.set("2026-12-01T11:00:01Z");
    api.wait_timers(&cart, "the cart reminder", |t| t["fired"] == 1)
        .await;
    wait_until("the reminder delivered", LONG, || async {
        record(&env).await.get(&token(1)).map(Vec::len) == Some(2)
    })
    .await;
    let pushes = &record(&env).await[&token(1)];
    let reminder = pushes
        .iter()
        .find(|d| d["payload"]["aps"]["alert"]["title"] == "Red shoes is waiting")
        .unwrap_or_else(|| panic!("no rendered reminder in {pushes:?}"));
    assert_eq!(
        reminder["payload"]["aps"]["alert"]["body"],
        "Hi Ada, 25 EUR"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_cancel_event_before_the_due_time_prevents_the_push_and_one_after_does_not() {
    let clock = TestClock::new("2026-12-01T10:00:00Z");
    let (k, v) = clock.setting();
    let env = TestEnv::start_with("trigcancel", &[(k, &v)]).await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let api = Api {
        env: &env,
        base: gateway.url.clone().expect("url"),
        app,
    };
    let _sender = env.sender().await;
    let _engine = env.spawn("triggers", &["triggers"], false).await;
    api.device("da", "early", &token(1), json!({})).await;
    api.device("db", "late", &token(2), json!({})).await;
    let rule = api
        .rule(
            json!({"name": "nudge", "entry_event": "signup", "delay_seconds": 600,
                     "cancel_events": ["purchase"], "notification": {"title": "Need help?"}}),
        )
        .await;
    api.events(json!({"events": [
        {"event_id": "s1", "name": "signup", "custom_id": "early", "occurred_at": "2026-12-01T10:00:00Z"},
        {"event_id": "s2", "name": "signup", "custom_id": "late", "occurred_at": "2026-12-01T10:00:00Z"},
        {"event_id": "b1", "name": "purchase", "custom_id": "early", "occurred_at": "2026-12-01T10:01:00Z"}
    ]}))
    .await;
    api.wait_timers(&rule, "one cancelled, one pending", |t| {
        t["cancelled"] == 1 && t["pending"] == 1
    })
    .await;
    clock.set("2026-12-01T10:10:01Z");
    api.wait_timers(&rule, "the push fired", |t| t["fired"] == 1)
        .await;
    // A purchase after the push changes nothing.
    api.events(
        json!({"event_id": "b2", "name": "purchase", "custom_id": "late",
                      "occurred_at": "2026-12-01T10:11:00Z"}),
    )
    .await;
    env.wait_consumed("herald-triggers", "herald.events", LONG)
        .await;
    wait_until("the push delivered", LONG, || async {
        record(&env).await.contains_key(&token(2))
    })
    .await;
    let r = record(&env).await;
    assert_eq!(r[&token(2)].len(), 1);
    assert!(!r.contains_key(&token(1)), "a cancelled push was sent");
    let t = api.timers(&rule).await;
    assert_eq!(
        (t["fired"].clone(), t["cancelled"].clone()),
        (json!(1), json!(1)),
        "{t}"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_frequency_cap_holds_under_concurrent_events_and_two_engines() {
    let env = TestEnv::start("trigcap").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let api = Api {
        env: &env,
        base: gateway.url.clone().expect("url"),
        app,
    };
    let _sender = env.sender().await;
    let _one = env.spawn("triggers", &["triggers"], false).await;
    let _two = env.spawn("triggers", &["triggers"], false).await;
    api.device("dc", "busy", &token(3), json!({})).await;
    let rule = api
        .rule(json!({"name": "capped", "entry_event": "viewed", "frequency_cap": {"max": 2, "window_seconds": 3600},
                     "notification": {"title": "You looked at {{event.item}}"}}))
        .await;
    let posts = (0..20).map(|i| {
        let api = &api;
        async move {
            api.events(
                json!({"event_id": format!("v{i}"), "name": "viewed", "custom_id": "busy",
                              "attributes": {"item": format!("item {i}")}}),
            )
            .await
        }
    });
    futures::future::join_all(posts).await;
    api.wait_timers(&rule, "every timer settled", |t| {
        t["pending"] == 0
            && t["fired"].as_i64().unwrap_or(0) + t["capped"].as_i64().unwrap_or(0) == 20
    })
    .await;
    let t = api.timers(&rule).await;
    assert_eq!(t["fired"], 2, "{t}");
    assert_eq!(t["capped"], 18, "{t}");
    wait_until("two pushes delivered", LONG, || async {
        record(&env).await.get(&token(3)).map(Vec::len) == Some(2)
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn quiet_hours_postpone_or_drop_in_the_users_time_zone() {
    // 23:30 in Paris.
    let clock = TestClock::new("2026-12-01T22:30:00Z");
    let (k, v) = clock.setting();
    let env = TestEnv::start_with("trigquiet", &[(k, &v)]).await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let api = Api {
        env: &env,
        base: gateway.url.clone().expect("url"),
        app,
    };
    let _sender = env.sender().await;
    let _engine = env.spawn("triggers", &["triggers"], false).await;
    api.device(
        "dp",
        "paris",
        &token(4),
        json!({"time_zone": "Europe/Paris"}),
    )
    .await;
    let quiet = |action: &str| json!({"start": "22:00", "end": "08:00", "action": action});
    let postpone = api
        .rule(
            json!({"name": "later", "entry_event": "e", "quiet_hours": quiet("postpone"),
                     "notification": {"title": "postponed"}}),
        )
        .await;
    let drop = api
        .rule(
            json!({"name": "never", "entry_event": "e", "quiet_hours": quiet("drop"),
                     "notification": {"title": "dropped"}}),
        )
        .await;
    let now = api
        .rule(json!({"name": "now", "entry_event": "e", "notification": {"title": "at once"}}))
        .await;
    // On the test's clock: an event stamped with the real time would only be
    // due once the real time passed 22:30 UTC (it did, one evening).
    api.events(json!({"event_id": "q1", "name": "e", "custom_id": "paris",
                      "occurred_at": "2026-12-01T22:30:00Z"}))
        .await;
    api.wait_timers(&now, "the rule without quiet hours", |t| t["fired"] == 1)
        .await;
    api.wait_timers(&drop, "the dropped push", |t| t["dropped"] == 1)
        .await;
    let t = api.timers(&postpone).await;
    assert_eq!(
        (t["pending"].clone(), t["fired"].clone()),
        (json!(1), json!(0)),
        "{t}"
    );

    // App-wide quiet hours apply to rules without their own.
    api.ok(
        "PUT",
        "/v1/trigger-settings",
        Some(&json!({"quiet_hours": quiet("drop")})),
    )
    .await;
    let app_wide = api
        .rule(
            json!({"name": "app-wide", "entry_event": "f", "notification": {"title": "app-wide"}}),
        )
        .await;
    api.events(json!({"event_id": "q2", "name": "f", "custom_id": "paris",
                      "occurred_at": "2026-12-01T22:30:00Z"}))
        .await;
    api.wait_timers(&app_wide, "dropped by the app's quiet hours", |t| {
        t["dropped"] == 1
    })
    .await;
    api.ok(
        "PUT",
        "/v1/trigger-settings",
        Some(&json!({"quiet_hours": null})),
    )
    .await;

    // 08:00:30 in Paris: the postponed push goes out.
    clock.set("2026-12-02T07:00:30Z");
    api.wait_timers(&postpone, "the postponed push", |t| t["fired"] == 1)
        .await;
    wait_until("two pushes delivered", LONG, || async {
        record(&env).await.get(&token(4)).map(Vec::len) == Some(2)
    })
    .await;
    let titles: HashSet<String> = record(&env).await[&token(4)]
        .iter()
        .map(|d| {
            d["payload"]["aps"]["alert"]["title"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        titles,
        HashSet::from(["at once".to_string(), "postponed".to_string()])
    );
    env.finish().await;
}

#[tokio::test]
async fn a_replayed_event_yields_one_push_even_after_a_consumer_restart() {
    let env = TestEnv::start("trigreplay").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let api = Api {
        env: &env,
        base: gateway.url.clone().expect("url"),
        app,
    };
    let _sender = env.sender().await;
    let mut engine = env.spawn("triggers", &["triggers"], false).await;
    api.device("dr", "again", &token(5), json!({})).await;
    let rule = api
        .rule(json!({"name": "welcome", "entry_event": "signup", "notification": {"title": "Welcome"}}))
        .await;
    let event = json!({"event_id": "signup-42", "name": "signup", "custom_id": "again"});
    let mut duplicates = 0;
    for _ in 0..10 {
        duplicates += api.events(event.clone()).await["duplicates"]
            .as_i64()
            .unwrap_or(0);
    }
    assert_eq!(duplicates, 9);
    api.wait_timers(&rule, "the push", |t| t["fired"] == 1)
        .await;
    env.wait_consumed("herald-triggers", "herald.events", LONG)
        .await;

    // A new engine in a new consumer group reads every event again from the
    // start of the topic; the same event is also published once more.
    engine.kill().await;
    let reread = env
        .spawn_with(
            "triggers",
            &["triggers"],
            &[("HERALD_TRIGGERS__GROUP_ID", "herald-triggers-reread")],
        )
        .await;
    let record_again = herald_core::trigger::EventRecord {
        app_id: api.app.id.parse().expect("uuid"),
        event: serde_json::from_value(
            json!({"event_id": "signup-42", "name": "signup", "custom_id": "again",
                                             "occurred_at": "2026-12-01T10:00:00Z"}),
        )
        .expect("event"),
    };
    herald_bus::Publisher::new(&herald_config::KafkaConfig {
        bootstrap_servers: env.broker.bootstrap_servers().to_string(),
        ..Default::default()
    })
    .expect("publisher")
    .publish_events(&[record_again])
    .await
    .expect("publish");
    env.wait_consumed("herald-triggers-reread", "herald.events", LONG)
        .await;
    drop(reread);
    let t = api.timers(&rule).await;
    assert_eq!(t["fired"], 1, "{t}");
    wait_until("the push delivered", LONG, || async {
        record(&env).await.contains_key(&token(5))
    })
    .await;
    env.wait_consumed("herald-senders", "herald.deliveries", LONG)
        .await;
    assert_eq!(record(&env).await[&token(5)].len(), 1);
    env.finish().await;
}

#[tokio::test]
async fn broken_rules_are_refused_when_saved_with_the_field_named() {
    let env = TestEnv::start("trigrules").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let base = gateway.url.clone().expect("url");
    let post = |body: Value| {
        let env = &env;
        let base = &base;
        let key = app.server_key.clone();
        async move {
            env.api("POST", &format!("{base}/v1/triggers"), &key, Some(&body))
                .await
        }
    };
    let cases = [
        (
            json!({"name": "x", "entry_event": "e", "notification": {"title": "Hi {{user.name"}}),
            "notification.title",
            "never closed",
        ),
        (
            json!({"name": "x", "entry_event": "e", "notification": {"title": "t", "localizations": {"fr": {"body": "{{cart.total}}"}}}}),
            "notification.localizations.fr.body",
            "event.NAME",
        ),
        (
            json!({"name": "x", "entry_event": "e", "notification": {"title": "t", "data": {"k": "{{event.a b}}"}}}),
            "notification.data.k",
            "attribute name",
        ),
        (
            json!({"name": "x", "entry_event": "e", "conditions": {"field": "attributes.n", "op": "gt", "value": "x"}, "notification": {"title": "t"}}),
            "conditions.value",
            "number",
        ),
        (
            json!({"name": "x", "entry_event": "e", "delay_seconds": 99999999, "notification": {"title": "t"}}),
            "delay_seconds",
            "30 days",
        ),
        (
            json!({"name": "x", "entry_event": "e", "quiet_hours": {"start": "25:00", "end": "08:00", "action": "drop"}, "notification": {"title": "t"}}),
            "quiet_hours.start",
            "22:00",
        ),
        (
            json!({"name": "x", "entry_event": "bad event", "notification": {"title": "t"}}),
            "entry_event",
            "event name",
        ),
    ];
    for (body, field, detail) in cases {
        let (status, p) = post(body).await;
        assert_eq!(status, 400, "{p}");
        assert_eq!(p["field"], field, "{p}");
        assert!(
            p["detail"].as_str().unwrap_or_default().contains(detail),
            "{p}"
        );
    }
    assert_eq!(
        env.count_rows("triggers").await,
        0,
        "a refused rule was stored"
    );
    // Bad events are refused whole, naming the event and field.
    let (status, p) = env
        .api(
            "POST",
            &format!("{base}/v1/events"),
            &app.sdk_key,
            Some(&json!({"events": [
                {"event_id": "ok", "name": "e", "custom_id": "u"},
                {"event_id": "bad", "name": "e"}
            ]})),
        )
        .await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(p["field"], "events[1].custom_id", "{p}");
    assert_eq!(env.count_rows("events").await, 0, "half a batch was stored");
    env.finish().await;
}

#[tokio::test]
async fn ten_thousand_users_some_cancelled_with_the_engine_restarted_reach_exactly_the_expected_set(
) {
    const USERS: usize = 10_000;
    let clock = TestClock::new("2026-12-01T10:00:00Z");
    let (k, v) = clock.setting();
    let env =
        TestEnv::start_with("trig10k", &[(k, &v), ("HERALD_SENDER__CONCURRENCY", "512")]).await;
    let app = env.create_app().await;
    sqlx::query(
        "INSERT INTO installations (app_id, install_id, custom_id, platform, token)
         SELECT $1::uuid, 'd-' || n, 'user-' || n, 'ios', 'c' || lpad(to_hex(n), 63, '0')
         FROM generate_series(1, $2::int8) AS n",
    )
    .bind(&app.id)
    .bind(USERS as i64)
    .execute(&env.db)
    .await
    .expect("seeding");
    let gateway = env.gateway().await;
    let api = Api {
        env: &env,
        base: gateway.url.clone().expect("url"),
        app,
    };
    let _sender = env.sender().await;
    let mut engine = env.spawn("triggers", &["triggers"], false).await;
    let rule = api
        .rule(json!({"name": "onboarding", "entry_event": "signup", "delay_seconds": 60,
                     "cancel_events": ["purchase"], "notification": {"title": "Welcome, {{event.plan|friend}}"}}))
        .await;
    // Every user signs up; every third buys within the delay.
    let mut events = Vec::new();
    for n in 1..=USERS {
        events.push(
            json!({"event_id": format!("s{n}"), "name": "signup", "custom_id": format!("user-{n}"),
                           "attributes": {"plan": "pro"}, "occurred_at": "2026-12-01T10:00:00Z"}),
        );
        if n % 3 == 0 {
            events.push(json!({"event_id": format!("p{n}"), "name": "purchase", "custom_id": format!("user-{n}"),
                               "occurred_at": "2026-12-01T10:00:30Z"}));
        }
    }
    let chunks: Vec<Value> = events.chunks(1000).map(|c| json!({"events": c})).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        api.events(chunk.clone()).await;
        if i == chunks.len() / 2 {
            // Restart the engine while it is taking events in.
            engine.kill().await;
            engine = env.spawn("triggers", &["triggers"], false).await;
        }
    }
    env.wait_consumed("herald-triggers", "herald.events", LONG)
        .await;
    let expected_fired = (1..=USERS).filter(|n| n % 3 != 0).count() as i64;
    let t = api.timers(&rule).await;
    assert_eq!(t["pending"], expected_fired, "{t}");
    assert_eq!(t["cancelled"], (USERS as i64) - expected_fired, "{t}");

    // The delay passes; the engine is restarted again while firing.
    clock.set("2026-12-01T10:01:01Z");
    api.wait_timers(&rule, "a third fired", |t| {
        t["fired"].as_i64().unwrap_or(0) >= expected_fired / 3
    })
    .await;
    engine.kill().await;
    let _engine = env.spawn("triggers", &["triggers"], false).await;
    api.wait_timers(&rule, "all fired", |t| t["fired"] == expected_fired)
        .await;
    wait_until("every push delivered", Duration::from_secs(300), || async {
        env.sim_stats().await["accepted"].as_i64().unwrap_or(0) >= expected_fired
    })
    .await;
    env.wait_consumed("herald-senders", "herald.deliveries", LONG)
        .await;
    let r = record(&env).await;
    let expected: HashSet<String> = (1..=USERS)
        .filter(|n| n % 3 != 0)
        .map(|n| format!("c{:063x}", n))
        .collect();
    let got: HashSet<String> = r.keys().cloned().collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "{} unexpected, {} missing",
        got.difference(&expected).count(),
        expected.difference(&got).count()
    );
    assert_eq!(got, expected);
    assert!(
        r.values().all(|d| d.len() == 1),
        "a user got the push twice"
    );
    env.finish().await;
}

/// Resending any event is safe, a cancel event too. The gateway stamps an
/// event that has no `occurred_at` with the time it arrives; a resent cancel
/// event is the one already stored, with its first time, and is not
/// published again: it must not cancel a push that an entry event after the
/// original started.
#[tokio::test]
async fn a_resent_cancel_event_does_not_cancel_what_later_events_started() {
    let clock = TestClock::new(&chrono::Utc::now().to_rfc3339());
    let (k, v) = clock.setting();
    let env = TestEnv::start_with("trigresend", &[(k, &v)]).await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let api = Api {
        env: &env,
        base: gateway.url.clone().expect("url"),
        app,
    };
    let _sender = env.sender().await;
    let _engine = env.spawn("triggers", &["triggers"], false).await;
    api.device("dr", "resender", &token(7), json!({})).await;
    let rule = api
        .rule(
            json!({"name": "nudge", "entry_event": "signup", "delay_seconds": 600,
                     "cancel_events": ["purchase"], "notification": {"title": "Need help?"}}),
        )
        .await;
    let purchase = json!({"event_id": "p1", "name": "purchase", "custom_id": "resender"});
    api.events(purchase.clone()).await;
    env.wait_consumed("herald-triggers", "herald.events", LONG)
        .await;
    // The signup comes after the purchase: its push is owed.
    api.events(json!({"event_id": "s1", "name": "signup", "custom_id": "resender"}))
        .await;
    api.wait_timers(&rule, "the signup's push pending", |t| t["pending"] == 1)
        .await;
    // The app resends the purchase (a retry after a lost answer).
    let again = api.events(purchase).await;
    assert_eq!(again["duplicates"], 1, "{again}");
    env.wait_consumed("herald-triggers", "herald.events", LONG)
        .await;
    let t = api.timers(&rule).await;
    assert_eq!(
        (t["pending"].clone(), t["cancelled"].clone()),
        (json!(1), json!(0)),
        "the resent purchase cancelled a later signup's push: {t}"
    );
    clock.set(&(chrono::Utc::now() + chrono::Duration::minutes(11)).to_rfc3339());
    wait_until("the signup's push delivered", LONG, || async {
        record(&env).await.get(&token(7)).map(Vec::len) == Some(1)
    })
    .await;
    env.finish().await;
}

/// Per-user order follows the events' own time, whatever order they are
/// applied in: an entry event that occurred before a cancel but reaches the
/// engine after it (the outbox relay, `herald recover`, a cluster's backlog
/// returning, or an app's offline batch sent late) starts no push.
#[tokio::test]
async fn an_entry_event_applied_after_a_later_cancel_starts_no_push() {
    let clock = TestClock::new(&chrono::Utc::now().to_rfc3339());
    let (k, v) = clock.setting();
    let env = TestEnv::start_with("triglate", &[(k, &v)]).await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let api = Api {
        env: &env,
        base: gateway.url.clone().expect("url"),
        app,
    };
    let _sender = env.sender().await;
    let _engine = env.spawn("triggers", &["triggers"], false).await;
    api.device("dl", "late", &token(8), json!({})).await;
    api.device("dn", "ontime", &token(9), json!({})).await;
    let rule = api
        .rule(
            json!({"name": "nudge", "entry_event": "signup", "delay_seconds": 600,
                     "cancel_events": ["purchase"], "notification": {"title": "Need help?"}}),
        )
        .await;
    let now = chrono::Utc::now();
    let at = |minutes: i64| (now - chrono::Duration::minutes(minutes)).to_rfc3339();
    api.events(
        json!({"event_id": "p1", "name": "purchase", "custom_id": "late", "occurred_at": at(1)}),
    )
    .await;
    env.wait_consumed("herald-triggers", "herald.events", LONG)
        .await;
    // The signup happened before the purchase and arrives after it; the
    // other user's signup, after that user's own purchase, is owed.
    api.events(json!({"events": [
        {"event_id": "s1", "name": "signup", "custom_id": "late", "occurred_at": at(2)},
        {"event_id": "s2", "name": "signup", "custom_id": "ontime", "occurred_at": at(0)}
    ]}))
    .await;
    api.wait_timers(&rule, "both signups applied", |t| {
        t["pending"].as_i64().unwrap_or(0) + t["cancelled"].as_i64().unwrap_or(0) == 2
    })
    .await;
    let t = api.timers(&rule).await;
    assert_eq!(
        (t["pending"].clone(), t["cancelled"].clone()),
        (json!(1), json!(1)),
        "the late signup started a push its purchase had cancelled: {t}"
    );
    clock.set(&(now + chrono::Duration::minutes(11)).to_rfc3339());
    wait_until("the owed push delivered", LONG, || async {
        record(&env).await.get(&token(9)).map(Vec::len) == Some(1)
    })
    .await;
    assert!(!record(&env).await.contains_key(&token(8)));
    env.finish().await;
}
