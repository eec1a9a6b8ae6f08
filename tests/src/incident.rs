//! The incident Herald exists for, as a world the fault suites share: two
//! Kafka-protocol clusters (a primary, by default the test's embedded broker,
//! and an embedded standby), real Herald processes, and traffic of all three
//! kinds at once — transactional pushes with Idempotency-Keys, a running
//! campaign, trigger rules with a delay — with everything accepted and the
//! devices it must reach, to compare with the simulators' record.

use crate::fixture::{deliverable, seed, token};
use crate::{
    android_token, ios_token, wait_consumed_on, wait_until, App, HeraldProcess, TestEnv,
    PARTITIONS, TOPICS,
};
use herald_bus::EmbeddedBroker;
use herald_core::MessageId;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const LONG: Duration = Duration::from_secs(120);
/// Installations of the campaign's audience; users `user-1..` own two each.
pub const AUDIENCE: i64 = 1_500;
/// Trigger events per burst, one per user.
pub const EVENTS: i64 = 40;
/// Transactional requests per burst, two devices each.
pub const PUSHES: usize = 15;

/// One scenario's world: the clusters, the processes, and everything
/// accepted so far with the devices it must reach.
pub struct Incident {
    pub env: TestEnv,
    /// The standby cluster's address as the processes know it.
    pub standby: String,
    /// The embedded standby, unless the settings named one.
    embedded_standby: Option<EmbeddedBroker>,
    /// The primary cluster's address as the processes know it, kept when the
    /// test destroys that cluster.
    pub primary: String,
    pub app: App,
    pub gw: String,
    pub gateway: HeraldProcess,
    pub senders: Vec<HeraldProcess>,
    pub scheduler: HeraldProcess,
    /// Each role's operations endpoint (the first sender's), by role.
    pub ops: Vec<(&'static str, String)>,
    pub recorder: HeraldProcess,
    pub triggers: HeraldProcess,
    pub trigger_id: Uuid,
    pub campaign_id: String,
    /// The campaign's message, once launched.
    pub campaign_message: Option<String>,
    /// Every transactional request sent: (Idempotency-Key, body).
    pub requests: Vec<(String, Value)>,
    /// Every (message, token) owed a delivery.
    pub expected: HashSet<(String, String)>,
    pub next_push: usize,
    pub next_event: i64,
}

pub struct Settings {
    pub name: &'static str,
    pub failover_after_ms: u64,
    /// 0: producers move back to the primary only by command.
    pub failback_after_ms: u64,
    /// More settings for every process.
    pub extra: &'static [(&'static str, &'static str)],
    /// The primary cluster's bootstrap servers (a real Kafka cluster); None:
    /// the test's embedded broker.
    pub primary: Option<String>,
    /// The standby cluster's bootstrap servers; None: an embedded broker.
    pub standby: Option<String>,
    /// A Redis of the test's own, to restart without persistence.
    pub redis: Option<String>,
    pub senders: usize,
    /// The campaign's own rate: slow enough that faults land mid-run.
    pub campaign_rate: u32,
}

impl Incident {
    pub async fn start(s: Settings) -> Self {
        let embedded_standby = match s.standby {
            Some(_) => None,
            None => Some(EmbeddedBroker::start(1, &TOPICS, PARTITIONS).expect("standby cluster")),
        };
        let standby = s.standby.clone().unwrap_or_else(|| {
            embedded_standby
                .as_ref()
                .map(|b| b.bootstrap_servers().to_string())
                .unwrap_or_default()
        });
        let mut env = TestEnv::start(s.name).await;
        let primary = s
            .primary
            .clone()
            .unwrap_or_else(|| env.broker.bootstrap_servers().to_string());
        for (k, v) in [
            ("HERALD_KAFKA__BOOTSTRAP_SERVERS", primary.clone()),
            (
                "HERALD_KAFKA__CLUSTERS__STANDBY__BOOTSTRAP_SERVERS",
                standby.clone(),
            ),
            ("HERALD_KAFKA__HEALTH_CHECK_INTERVAL_MS", "300".into()),
            (
                "HERALD_KAFKA__FAILOVER_AFTER_MS",
                s.failover_after_ms.to_string(),
            ),
            (
                "HERALD_KAFKA__FAILBACK_AFTER_MS",
                s.failback_after_ms.to_string(),
            ),
            ("HERALD_KAFKA__MESSAGE_TIMEOUT_MS", "10000".into()),
            ("HERALD_SCHEDULER__PAGE_SIZE", "100".into()),
            ("HERALD_TRIGGERS__POLL_INTERVAL_MS", "100".into()),
        ] {
            env.extra_env.insert(k.into(), v);
        }
        for (k, v) in s.extra {
            env.extra_env.insert(k.to_string(), v.to_string());
        }
        if let Some(url) = s.redis {
            env.extra_env.insert("HERALD_REDIS__URL".into(), url);
        }
        let app = env.create_app().await;
        seed(&env, &app.id, AUDIENCE).await;
        // Every long-running role serves /readyz (the scheduler's metrics
        // also show what every producing process knows of the clusters).
        let ops: Vec<(&'static str, String)> = ["gateway", "sender", "scheduler", "triggers"]
            .into_iter()
            .map(|role| (role, crate::free_address()))
            .collect();
        let listen = |role: &str| {
            let addr = &ops.iter().find(|(r, _)| *r == role).expect("role").1;
            [("HERALD_METRICS__LISTEN", addr.as_str())]
        };
        let gateway = env.gateway_with(&listen("gateway")).await;
        let gw = gateway.url.clone().expect("gateway url");
        let mut senders = Vec::new();
        for n in 0..s.senders {
            senders.push(if n == 0 {
                env.spawn_with("sender", &["sender", "--no-recorder"], &listen("sender"))
                    .await
            } else {
                sender(&env).await
            });
        }
        // The recorder on its own, so that a paused sender does not pause it.
        let recorder = env.spawn("recorder", &["recorder"], false).await;
        let scheduler = env
            .spawn_with("scheduler", &["scheduler"], &listen("scheduler"))
            .await;
        let triggers = env
            .spawn_with("triggers", &["triggers"], &listen("triggers"))
            .await;
        let ops = ops
            .into_iter()
            .map(|(role, addr)| (role, format!("http://{addr}")))
            .collect();

        let (status, rule) = env
            .api(
                "POST",
                &format!("{gw}/v1/triggers"),
                &app.server_key,
                Some(
                    &json!({"name": "welcome", "entry_event": "signup", "delay_seconds": 2,
                             "delivery_policy": "at_least_once",
                             "notification": {"title": "Welcome {{event.name|friend}}"}}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{rule}");
        let trigger_id: Uuid = rule["id"].as_str().expect("id").parse().expect("uuid");
        let (status, campaign) = env
            .api(
                "POST",
                &format!("{gw}/v1/campaigns"),
                &app.server_key,
                Some(
                    &json!({"name": "Winter sale", "notification": {"title": "Sale"},
                             "delivery_policy": "at_least_once",
                             "rate_limit_per_second": s.campaign_rate}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{campaign}");
        let campaign_id = campaign["id"].as_str().expect("id").to_string();
        Self {
            env,
            standby,
            embedded_standby,
            primary,
            app,
            gw,
            gateway,
            senders,
            scheduler,
            ops,
            recorder,
            triggers,
            trigger_id,
            campaign_id,
            campaign_message: None,
            requests: Vec::new(),
            expected: HashSet::new(),
            next_push: 0,
            next_event: 1,
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.env
            .api(
                method,
                &format!("{}{path}", self.gw),
                &self.app.server_key,
                body,
            )
            .await
    }

    /// Launches (or relaunches) the campaign; every deliverable device of
    /// the audience is then owed the campaign's message.
    pub async fn launch_campaign(&mut self) {
        let (status, c) = self
            .call(
                "POST",
                &format!("/v1/campaigns/{}/launch", self.campaign_id),
                None,
            )
            .await;
        assert!((200..300).contains(&status), "{status} {c}");
        let message = c["message_id"].as_str().expect("message_id").to_string();
        for n in (1..=AUDIENCE).filter(|n| deliverable(*n)) {
            self.expected.insert((message.clone(), token(n)));
        }
        self.campaign_message = Some(message);
    }

    pub async fn campaign(&self) -> Value {
        self.call("GET", &format!("/v1/campaigns/{}", self.campaign_id), None)
            .await
            .1
    }

    /// Waits until the campaign has produced to its end (its status is
    /// `completed`): an operator relaunches it only then.
    pub async fn wait_campaign_produced(&self) {
        wait_until("the campaign produced to the end", LONG, || async {
            self.campaign().await["status"] == "completed"
        })
        .await;
    }

    /// Waits until the campaign is a third produced: a fault then lands
    /// mid-run.
    pub async fn wait_campaign_a_third_through(&self) {
        wait_until("the campaign a third through", LONG, || async {
            self.campaign().await["progress"]["produced"]
                .as_i64()
                .unwrap_or(0)
                >= AUDIENCE / 3
        })
        .await;
    }

    /// Fails unless the campaign still has devices to produce: a fault
    /// meant to land mid-run that lands after the end tests nothing about
    /// the campaign, so the scenario says so instead of waiting for a
    /// campaign delivery that cannot come.
    pub async fn assert_campaign_still_producing(&self) {
        let campaign = self.campaign().await;
        let produced = campaign["progress"]["produced"].as_i64().unwrap_or(0);
        assert!(
            campaign["status"] != "completed" && produced < AUDIENCE * 2 / 3,
            "the campaign was too far through before the fault: {campaign}"
        );
    }

    /// One transactional push with an Idempotency-Key to two new devices.
    pub async fn push(&mut self) -> String {
        let (key, body) = self.next_request();
        let message = self.send(&key, &body).await;
        self.accepted(message.clone(), key, body);
        message
    }

    /// The next new transactional request: its Idempotency-Key and body.
    pub fn next_request(&mut self) -> (String, Value) {
        let i = self.next_push;
        self.next_push += 1;
        let key = format!("\"order-{i}\"");
        let body = json!({
            "to": {"tokens": [{"platform": "ios", "token": ios_token(10_000 + i)},
                              {"platform": "android", "token": android_token(10_000 + i)}]},
            "notification": {"title": format!("Order {i} shipped")},
        });
        (key, body)
    }

    /// Records a request as accepted as `message`: every device it names is
    /// owed the message, and the client may resubmit it.
    pub fn accepted(&mut self, message: String, key: String, body: Value) {
        for target in body["to"]["tokens"].as_array().into_iter().flatten() {
            if let Some(t) = target["token"].as_str() {
                self.expected.insert((message.clone(), t.to_string()));
            }
        }
        self.requests.push((key, body));
    }

    pub async fn send(&self, key: &str, body: &Value) -> String {
        let (status, v) = self
            .env
            .push(&self.gw, &self.app.server_key, Some(key), body)
            .await;
        assert_eq!(status, 202, "{v}");
        v["message_id"].as_str().expect("message_id").to_string()
    }

    /// Every client resends every request it ever made: each one answers with
    /// the message it made the first time.
    pub async fn resubmit_everything(&self) {
        let mut replayed = 0;
        for (key, body) in &self.requests {
            let first = self.send(key, body).await;
            assert!(
                self.expected.iter().any(|(m, _)| *m == first),
                "a resubmission made a new message"
            );
            replayed += 1;
        }
        assert_eq!(replayed, self.requests.len());
    }

    /// A burst of sign-up events, one per user, each owed a welcome push on
    /// every deliverable device of its user two seconds later.
    pub async fn events(&mut self) {
        let users: Vec<i64> = (self.next_event..self.next_event + EVENTS).collect();
        self.next_event += EVENTS;
        let (status, v) = self
            .env
            .api(
                "POST",
                &format!("{}/v1/events", self.gw),
                &self.app.sdk_key,
                Some(&Self::signup_events(&users)),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        self.events_accepted(&users);
    }

    /// The sign-up events of `users`, as one burst.
    pub fn signup_events(users: &[i64]) -> Value {
        let events: Vec<Value> = users
            .iter()
            .map(|u| {
                json!({"event_id": format!("signup-{u}"), "name": "signup",
                            "custom_id": format!("user-{u}"), "attributes": {"name": "Ada"}})
            })
            .collect();
        json!({ "events": events })
    }

    /// Sign-up events of `users` accepted: each owed the welcome push on
    /// every deliverable device of its user.
    pub fn events_accepted(&mut self, users: &[i64]) {
        for u in users {
            let message = MessageId::for_trigger(self.trigger_id, &format!("signup-{u}"))
                .as_uuid()
                .to_string();
            for n in [2 * u, 2 * u + 1] {
                if n <= AUDIENCE && deliverable(n) {
                    self.expected.insert((message.clone(), token(n)));
                }
            }
        }
    }

    pub async fn traffic(&mut self) {
        for _ in 0..PUSHES {
            self.push().await;
        }
        self.events().await;
    }

    /// The time from `fault` until a push accepted after it reaches a device.
    pub async fn first_delivery_after(&mut self, fault: Instant, scenario: &str) {
        let message = self.push().await;
        let env = &self.env;
        wait_until("a push sent after the fault delivered", LONG, || async {
            env.deliveries_per_token(&message).await.len() == 2
        })
        .await;
        println!(
            "{scenario}: fault to first delivery through the new path: {:.1} s",
            fault.elapsed().as_secs_f64()
        );
    }

    /// The time from `back` (the cluster answering again) until the first
    /// delivery of each kind of traffic: a push accepted after it, the
    /// campaign's next device, a trigger fired by an event sent after it.
    /// Each must come within a minute.
    pub async fn first_delivery_of_each_kind(&mut self, back: Instant, scenario: &str) {
        let campaign = self
            .campaign_message
            .clone()
            .expect("the campaign launched");
        let env = &self.env;
        let campaign_before = env.deliveries_per_token(&campaign).await.len();
        let first_event = self.next_event;
        let push = self.push().await;
        self.events().await;
        let triggered: Vec<String> = (first_event..self.next_event)
            .map(|u| {
                MessageId::for_trigger(self.trigger_id, &format!("signup-{u}"))
                    .as_uuid()
                    .to_string()
            })
            .collect();
        let env = &self.env;
        // When each kind was first seen: transactional, campaign, trigger.
        let mut seen = [None::<Duration>; 3];
        let deadline = Instant::now() + LONG;
        while seen.iter().any(Option::is_none) {
            if Instant::now() >= deadline {
                panic!(
                    "{scenario}: no delivery of each kind after the fault (transactional, campaign, trigger): {seen:?}; {campaign_before} campaign deliveries before, the campaign now: {}",
                    self.campaign().await
                );
            }
            let got = record(env).await;
            let at = back.elapsed();
            let now = [
                got.keys().filter(|(m, _)| *m == push).count() == 2,
                got.keys().filter(|(m, _)| *m == campaign).count() > campaign_before,
                got.keys().any(|(m, _)| triggered.contains(m)),
            ];
            for (first, delivered) in seen.iter_mut().zip(now) {
                if first.is_none() && delivered {
                    *first = Some(at);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let [transactional, campaign_at, trigger] = seen;
        let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        println!(
            "{scenario}: cluster back to first delivery: transactional {:.1} s, campaign {:.1} s, trigger {:.1} s",
            secs(transactional),
            secs(campaign_at),
            secs(trigger)
        );
        for (kind, at) in [
            ("transactional", transactional),
            ("campaign", campaign_at),
            ("trigger", trigger),
        ] {
            assert!(
                at.is_some_and(|d| d < Duration::from_secs(60)),
                "{scenario}: first {kind} delivery took {at:?}"
            );
        }
    }

    /// A role's `/readyz`: status and body.
    pub async fn readiness(&self, role: &str) -> (u16, String) {
        let base = &self.ops.iter().find(|(r, _)| *r == role).expect("role").1;
        match self.env.http.get(format!("{base}/readyz")).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Waits until every role's `/readyz` answers 200.
    pub async fn wait_all_ready(&self) {
        for (role, _) in &self.ops {
            wait_until(&format!("the {role} ready"), LONG, || async {
                self.readiness(role).await.0 == 200
            })
            .await;
        }
    }

    /// Waits until nothing is pending in PostgreSQL (no delivery, no trigger
    /// timer, the campaign produced and settled) and every sender group has
    /// caught up on every cluster in `live`: nothing is in flight.
    pub async fn wait_settled(&self, live: &[&str]) {
        let env = &self.env;
        wait_until("no pending delivery or timer", LONG, || async {
            let pending: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM delivery_status WHERE status = 'pending')
                      + (SELECT count(*) FROM trigger_timers WHERE status = 'pending')",
            )
            .fetch_one(&env.db)
            .await
            .expect("pending");
            let c = self.campaign().await;
            pending == 0 && c["status"] == "completed" && c["progress"]["pending"] == 0
        })
        .await;
        for bootstrap in live {
            for (group, topic) in [
                ("herald-senders", TOPICS[0]),
                ("herald-senders-retries", TOPICS[1]),
                ("herald-senders-campaigns", TOPICS[5]),
            ] {
                wait_consumed_on(bootstrap, group, topic, LONG).await;
            }
        }
    }

    /// Waits until everything owed is delivered and nothing is left anywhere
    /// (no pending delivery or timer, every sender group caught up on every
    /// live cluster), then compares the simulators' record with what was
    /// accepted: each owed (message, device) once, and nothing else.
    pub async fn assert_exactly_once(&self, live: &[&str]) {
        self.assert_delivered_once_allowing(live, &[]).await;
    }

    /// As [`Self::assert_exactly_once`], except that a delivery may reach
    /// its device twice, never three times, when one of `kills` (a sender
    /// killed with SIGKILL) landed between its two receipts: the window
    /// between the provider's answer and the settle, which at_least_once
    /// (all of this traffic) closes by sending again. Prints and returns
    /// those deliveries.
    ///
    /// A delivery recorded as resent after an unknown outcome (its
    /// outcome's reason) may also come twice: at_least_once's documented
    /// windows, a provider that did not answer within the request timeout
    /// (a machine loaded past the tests' 2 s opens it with no fault on) or
    /// a send taken over from a stalled owner. The chaos run allows it the
    /// same way. Those are counted and printed, never returned. Answers that came and were misread as
    /// missing are the protocol tests' to catch
    /// (`a_sender_stopped_past_its_deadline_reads_the_answers_waiting_for_it`).
    pub async fn assert_delivered_once_allowing(
        &self,
        live: &[&str],
        kills: &[chrono::DateTime<chrono::Utc>],
    ) -> Vec<(String, String)> {
        let env = &self.env;
        wait_until("every accepted delivery in the record", LONG, || async {
            let got = record(env).await;
            self.expected.iter().all(|k| got.contains_key(k))
        })
        .await;
        self.wait_settled(live).await;
        let got = record(env).await;
        let receipts = receipts(env).await;
        let (allowed, doubled): (Vec<_>, Vec<_>) = got
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .partition(|(k, n)| {
                let at = &receipts[k];
                *n == 2
                    && kills.iter().any(|kill| {
                        *kill >= at[0] - chrono::Duration::milliseconds(200) && *kill <= at[1]
                    })
            });
        let resent = resent_after_unknown(env).await;
        let (unanswered, doubled): (Vec<_>, Vec<_>) = doubled
            .into_iter()
            .partition(|(k, n)| *n == 2 && resent.contains(k));
        for ((message, token), _) in &unanswered {
            println!(
                "{}: sent twice, recorded as resent after an unknown outcome: {message} {token}",
                self.env.name
            );
        }
        assert!(
            doubled.is_empty(),
            "{} deliveries doubled, e.g. {:?}",
            doubled.len(),
            doubled.iter().take(3).collect::<Vec<_>>()
        );
        for ((message, token), _) in &allowed {
            println!(
                "{}: sent twice, a sender killed between the provider's answer and the settle: {message} {token}",
                self.env.name
            );
        }
        let unexpected: Vec<_> = got
            .keys()
            .filter(|k| !self.expected.contains(*k))
            .take(3)
            .collect();
        assert!(unexpected.is_empty(), "not owed: {unexpected:?}");
        assert_eq!(got.len(), self.expected.len());
        println!(
            "{}: {} deliveries owed, each delivered once ({} twice, in a kill's window; {} twice, recorded as resent after an unknown outcome)",
            self.env.name,
            self.expected.len(),
            allowed.len(),
            unanswered.len()
        );
        allowed.into_iter().map(|(k, _)| k).collect()
    }

    /// Waits until every producing process says it follows the switch.
    pub async fn wait_all_producing_to(&self, cluster: &str) {
        let line = format!("now producing to {cluster}");
        let mut procs: Vec<&HeraldProcess> = vec![&self.gateway, &self.scheduler, &self.triggers];
        procs.extend(self.senders.iter());
        wait_until(&line, LONG, || async {
            procs.iter().all(|p| p.logged(&line))
        })
        .await;
    }

    /// One sample of the scheduler's metrics, by name and labels.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metric_of("scheduler", series).await
    }

    /// One sample of a role's metrics (the first sender's), by name and labels.
    pub async fn metric_of(&self, role: &str, series: &str) -> Option<f64> {
        let base = &self.ops.iter().find(|(r, _)| *r == role)?.1;
        let text = self
            .env
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// The embedded standby, for the scenarios that make it unreachable.
    pub fn standby_broker(&self) -> &EmbeddedBroker {
        self.embedded_standby
            .as_ref()
            .expect("this incident's standby is not embedded")
    }

    pub async fn cli(&self, args: &[&str]) -> String {
        self.env.run_cli(args).await
    }

    pub async fn finish(self) {
        // As TestEnv::finish does for the primary: no reused port.
        std::mem::forget(self.embedded_standby);
        self.env.finish().await;
    }
}

pub async fn sender(env: &TestEnv) -> HeraldProcess {
    env.spawn("sender", &["sender", "--no-recorder"], false)
        .await
}

/// When the simulators received each (message, token), in order.
pub async fn receipts(
    env: &TestEnv,
) -> HashMap<(String, String), Vec<chrono::DateTime<chrono::Utc>>> {
    let mut times: HashMap<(String, String), Vec<chrono::DateTime<chrono::Utc>>> = HashMap::new();
    for d in env.sim_deliveries().await {
        let key = (
            d["collapse_id"].as_str().unwrap_or_default().to_string(),
            d["token"].as_str().unwrap_or_default().to_string(),
        );
        let at = d["received_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(chrono::Utc::now);
        times.entry(key).or_default().push(at);
    }
    for at in times.values_mut() {
        at.sort();
    }
    times
}

/// The (message, token) of each delivery recorded as sent again after an
/// unknown outcome: a request the provider left unanswered within the
/// timeout, or one taken over from an owner that left no outcome.
pub async fn resent_after_unknown(env: &TestEnv) -> HashSet<(String, String)> {
    sqlx::query_as::<_, (uuid::Uuid, String)>(
        "SELECT message_id, token FROM delivery_status
         WHERE status = 'delivered' AND starts_with(reason, $1)",
    )
    .bind(herald_core::RESENT_AFTER_UNKNOWN)
    .fetch_all(&env.db)
    .await
    .expect("delivery status")
    .into_iter()
    .map(|(m, t)| (m.to_string(), t))
    .collect()
}

/// The simulators' record: deliveries per (message, token).
pub async fn record(env: &TestEnv) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for d in env.sim_deliveries().await {
        let key = (
            d["collapse_id"].as_str().unwrap_or_default().to_string(),
            d["token"].as_str().unwrap_or_default().to_string(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}
