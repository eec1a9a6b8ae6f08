//! The chaos run (`./scripts/chaos`): real Herald processes (two gateways,
//! two senders, a scheduler, two trigger engines, a recorder), PostgreSQL,
//! Redis as a primary and a replica under Sentinel, two Kafka-protocol
//! clusters and the simulators with latency, under steady traffic of all
//! three kinds, while a nemesis picks faults at random from a seed. At the
//! end everything is healed, `herald recover` runs, and the whole history is
//! checked as a total-queue checker does: every accepted (message, device)
//! delivered exactly once, or accounted for by a documented outcome.

use crate::clusters::{Clusters, KafkaKind};
use crate::fixture::{deliverable, token};
use crate::incident::{self, Incident, Settings, AUDIENCE, EVENTS};
use crate::redis_deployments::{redis_cli, SentinelRedis, SENTINEL_MASTER};
use crate::HeraldProcess;
use herald_core::MessageId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The harness's lease (tests/src/lib.rs): a sender stopped longer than
/// this is a zombie whose claims are taken over.
const LEASE: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(1000);
/// The simulators' latency while no provider fault is on.
const BASELINE: fn() -> Value = || json!({"latency_ms": 30, "latency_jitter_ms": 120});

/// What one run came to.
#[derive(Debug)]
pub struct Summary {
    pub seed: u64,
    pub accepted: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub allowed: usize,
    pub lost: usize,
    pub unknown: usize,
    pub faults: usize,
    /// Each delivery sent more than once.
    pub doubled: Vec<Doubled>,
    pub missing: Vec<(String, String)>,
    /// Deliveries nobody was owed (a cancelled reminder sent, a push to a
    /// device its message did not name).
    pub unowed: Vec<(String, String)>,
    /// Each delivery settled `unknown`, with the fault it is put down to.
    pub unknowns: Vec<(String, String, Option<String>)>,
}

/// A delivery the simulators recorded more than once.
#[derive(Debug)]
pub struct Doubled {
    pub message: String,
    pub token: String,
    pub copies: usize,
    /// The fault it is put down to (None: no fault explains it).
    pub cause: Option<String>,
    pub at_most_once: bool,
    /// When the simulators recorded each copy.
    pub at: Vec<chrono::DateTime<chrono::Utc>>,
    /// Within the policy: `at_least_once`, twice, around a fault that
    /// explains it.
    pub allowed: bool,
}

impl Summary {
    pub fn line(&self) -> String {
        format!(
            "chaos: accepted {}, delivered {}, duplicates {} (allowed {}), lost {}, unknown {}, faults {}, seed {}",
            self.accepted,
            self.delivered,
            self.duplicates,
            self.allowed,
            self.lost,
            self.unknown,
            self.faults,
            self.seed
        )
    }

    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.unowed.is_empty()
            && self.duplicates == self.allowed
            && self.unknowns.iter().all(|(_, _, cause)| cause.is_some())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Sender(usize),
    Gateway(usize),
    Scheduler,
    Triggers(usize),
    Recorder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill(Role),
    Term(Role),
    /// SIGSTOP past the lease, then SIGCONT.
    Stop(Role),
    RedisFailover,
    RedisPaused,
    /// Every primary node frozen (SIGSTOP on real Kafka; the mock refusing
    /// connections), then back.
    KafkaPrimaryUnreachable,
    /// The primary killed -9 and started again empty at the same address,
    /// its topics created anew (real Kafka only).
    KafkaPrimaryDestroyed,
    ProviderSlow,
    ProviderErrors(u16),
    ProviderStalled,
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Fault::Kill(r) => format!("kill -9 {r:?}"),
            Fault::Term(r) => format!("SIGTERM {r:?}"),
            Fault::Stop(r) => format!("SIGSTOP {r:?} past the lease"),
            Fault::RedisFailover => "Redis primary failed over".into(),
            Fault::RedisPaused => "Redis paused".into(),
            Fault::KafkaPrimaryUnreachable => "primary Kafka cluster unreachable".into(),
            Fault::KafkaPrimaryDestroyed => {
                "primary Kafka cluster destroyed and reborn empty".into()
            }
            Fault::ProviderSlow => "providers slow (2.5 s)".into(),
            Fault::ProviderErrors(s) => format!("providers answering {s}"),
            Fault::ProviderStalled => "providers stalled".into(),
        }
    }

    /// A fault whose window lets an at_least_once delivery be sent twice:
    /// a sender killed, or stopped past its lease, between the provider's
    /// answer and its settle; or a provider answering after the request
    /// timeout (the outcome is unknown, and at_least_once resends once).
    fn may_double(&self) -> bool {
        matches!(
            self,
            Fault::Kill(Role::Sender(_))
                | Fault::Stop(Role::Sender(_))
                | Fault::ProviderSlow
                | Fault::ProviderStalled
        )
    }

    /// Whether this fault, landed at `start` and healed at `healed`, explains
    /// a delivery received at `first` and again at `second`: a sender dying
    /// or stalling after the provider had the first; a provider slow or
    /// stalled when it took the first (a stalled request is recorded when
    /// the stall is lifted, however long it lasted), or answering it past
    /// the request timeout just after.
    fn explains_double(
        &self,
        start: chrono::DateTime<chrono::Utc>,
        healed: Option<chrono::DateTime<chrono::Utc>>,
        first: chrono::DateTime<chrono::Utc>,
        second: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        match self {
            Fault::ProviderSlow | Fault::ProviderStalled => self
                .unknown_window(start, healed)
                .is_some_and(|w| w.contains(&first)),
            _ => (first - chrono::Duration::milliseconds(200)..=second).contains(&start),
        }
    }

    /// When a fault that landed at `start` and was healed at `healed` can
    /// leave a send's outcome unknown, if it can: the provider not answering
    /// within the request timeout while it is slow or stalled (twice, under
    /// `at_least_once`); a sender dying or stalling mid-send, its claims
    /// taken over once its lease ran out and a copy of each job came back
    /// (which waits for Kafka to hand the partition over, so up to a minute
    /// later); Redis failing over or pausing long enough for live leases to
    /// run out before their renewals reached the new primary.
    fn unknown_window(
        &self,
        start: chrono::DateTime<chrono::Utc>,
        healed: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<std::ops::RangeInclusive<chrono::DateTime<chrono::Utc>>> {
        let after = |s: i64| chrono::Duration::seconds(s);
        match self {
            Fault::ProviderStalled | Fault::ProviderSlow => {
                Some(start..=healed.unwrap_or(start) + after(20))
            }
            Fault::Kill(Role::Sender(_)) | Fault::Stop(Role::Sender(_)) => {
                Some(start..=healed.unwrap_or(start).max(start) + after(60))
            }
            Fault::RedisFailover | Fault::RedisPaused => {
                Some(start..=healed.unwrap_or(start).max(start) + after(30))
            }
            _ => None,
        }
    }
}

/// A fault on, and when it is healed.
struct Active {
    fault: Fault,
    heal_at: Instant,
}

/// The world, the traffic's bookkeeping and the fault log.
struct Run {
    inc: Incident,
    clusters: Clusters,
    redis: SentinelRedis,
    gateways: Vec<Option<HeraldProcess>>,
    gateway_urls: Vec<String>,
    /// Trigger engines beyond the incident's own.
    triggers: Vec<Option<HeraldProcess>>,
    down: HashSet<Role>,
    /// (when, fault) for every fault injected, in chrono time to compare
    /// with the simulators' record.
    log: Vec<(chrono::DateTime<chrono::Utc>, Fault)>,
    /// When each fault of `log` (by index) was healed.
    healed: HashMap<usize, chrono::DateTime<chrono::Utc>>,
    rng: StdRng,
    event_bursts: Vec<i64>,
    campaign_paused: bool,
    /// Messages sent `at_most_once`: never twice, whatever the fault.
    at_most_once: HashSet<String>,
    /// The reminder rule (entry `cart`, cancelled by `purchase`), and the
    /// cart bursts sent so far, by first user and tick.
    reminder: uuid::Uuid,
    cart_bursts: Vec<(i64, u64)>,
}

/// The reminder's delay: long enough that a purchase sent with its cart is
/// applied before it is due, whatever fault delays the events meanwhile.
const REMINDER_DELAY_S: i64 = 45;

pub async fn run(minutes: f64, seed: u64, kafka: KafkaKind) -> Summary {
    let dir = std::env::temp_dir().join(format!("herald-chaos-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("chaos dir");
    let clusters = Clusters::start(kafka, &dir).await;
    let redis_dir = dir.clone();
    let redis = tokio::task::spawn_blocking(move || SentinelRedis::start(&redis_dir))
        .await
        .expect("sentinel");
    let nodes: &'static str = Box::leak(format!("[\"{}\"]", redis.sentinel_url()).into_boxed_str());
    let mut extra = vec![
        ("HERALD_REDIS__MODE", "sentinel"),
        ("HERALD_REDIS__SENTINEL__NODES", nodes),
        ("HERALD_REDIS__SENTINEL__MASTER_NAME", SENTINEL_MASTER),
        ("HERALD_REDIS__URL", "redis://127.0.0.1:1"),
        // Production's order of things: a provider request may take seconds
        // before it times out, and a shutdown waits for it.
        ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "5000"),
        // Retries outlast any provider fault of the run (8 s at most): a
        // delivery given up as `failed` is a loss to this checker.
        ("HERALD_SENDER__MAX_ATTEMPTS", "20"),
        ("HERALD_SENDER__RETRY_MAX_MS", "2000"),
        ("HERALD_SHUTDOWN__DEADLINE_MS", "15000"),
    ];
    extra.extend(clusters.settings());
    let (primary, standby) = clusters.addresses();
    let inc = Incident::start(Settings {
        name: "chaos",
        failover_after_ms: 1_500,
        failback_after_ms: 5_000,
        extra: Box::leak(extra.into_boxed_slice()),
        primary,
        standby,
        redis: None,
        senders: 2,
        campaign_rate: 200,
    })
    .await;
    let (status, rule) = inc
        .call(
            "POST",
            "/v1/triggers",
            Some(
                &json!({"name": "reminder", "entry_event": "cart", "cancel_events": ["purchase"],
                         "delay_seconds": REMINDER_DELAY_S, "delivery_policy": "at_least_once",
                         "notification": {"title": "Still thinking?"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let reminder: uuid::Uuid = rule["id"].as_str().expect("id").parse().expect("uuid");
    let second_gateway = inc.env.gateway().await;
    let second_triggers = inc.env.spawn("triggers", &["triggers"], false).await;
    let gateway_urls = vec![
        inc.gw.clone(),
        second_gateway.url.clone().expect("gateway url"),
    ];
    inc.env.set_sim_faults(BASELINE()).await;
    let mut run = Run {
        inc,
        clusters,
        redis,
        gateways: vec![None, Some(second_gateway)],
        gateway_urls,
        triggers: vec![Some(second_triggers)],
        down: HashSet::new(),
        log: Vec::new(),
        healed: HashMap::new(),
        rng: StdRng::seed_from_u64(seed),
        event_bursts: Vec::new(),
        campaign_paused: false,
        at_most_once: HashSet::new(),
        reminder,
        cart_bursts: Vec::new(),
    };
    println!("chaos: seed {seed}, {minutes} minutes, {kafka:?} Kafka");
    run.inc.launch_campaign().await;

    let end = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut active: Vec<Active> = Vec::new();
    let mut tick = 0u64;
    let started = Instant::now();
    while Instant::now() < end {
        tick += 1;
        run.traffic(tick).await;
        if tick.is_multiple_of(15) {
            println!(
                "chaos: {:.0} s, {} deliveries owed so far",
                started.elapsed().as_secs_f64(),
                run.inc.expected.len()
            );
        }
        // Heal what is due.
        let now = Instant::now();
        let (due, keep): (Vec<Active>, Vec<Active>) =
            active.into_iter().partition(|a| a.heal_at <= now);
        active = keep;
        for a in due {
            run.heal(a.fault).await;
        }
        // A new fault now and then, at most two at once.
        if active.len() < 2 && run.rng.random_bool(0.3) {
            let fault = run.pick(&active);
            if let Some(fault) = fault {
                let lasts = run.inject(fault).await;
                active.push(Active {
                    fault,
                    heal_at: Instant::now() + lasts,
                });
            }
        }
        tokio::time::sleep(TICK).await;
    }
    for a in active {
        run.heal(a.fault).await;
    }
    run.quiesce().await;
    run.check(seed).await
}

impl Run {
    fn live_gateway(&self) -> Vec<String> {
        (0..self.gateway_urls.len())
            .filter(|i| !self.down.contains(&Role::Gateway(*i)))
            .map(|i| self.gateway_urls[i].clone())
            .collect()
    }

    /// A client that resubmits until it gets an answer: 202 (new or a
    /// replay), whatever gateway died under it.
    async fn accept(&self, key: &str, body: &Value) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for gw in self.live_gateway() {
                if let Ok(Ok((202, v))) = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.inc
                        .env
                        .push_checked(&gw, &self.inc.app.server_key, Some(key), body),
                )
                .await
                {
                    if let Some(m) = v["message_id"].as_str() {
                        return m.to_string();
                    }
                }
            }
            assert!(Instant::now() < deadline, "no gateway accepted {key}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A call retried until a gateway answers it for good: anything but a
    /// lost connection, a 5xx or a 429 (a 409 for a campaign in the wrong
    /// state is an answer too).
    async fn api_until_answered(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for gw in self.live_gateway() {
                if let Ok(Ok((status, v))) = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.inc
                        .env
                        .api_checked(method, &format!("{gw}{path}"), key, body),
                )
                .await
                {
                    if status < 500 && status != 429 {
                        return (status, v);
                    }
                }
            }
            assert!(Instant::now() < deadline, "{method} {path} never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One tick of traffic: new pushes, resubmissions, sign-up events (some
    /// resent), and the campaign launched, paused, resumed and relaunched.
    async fn traffic(&mut self, tick: u64) {
        for i in 0..3 {
            let (key, mut body) = self.inc.next_request();
            // Every third push is sent at most once: an unknown outcome is
            // recorded, never resent.
            let most = i == 0;
            if most {
                body["delivery_policy"] = json!("at_most_once");
            }
            let message = self.accept(&key, &body).await;
            if most {
                self.at_most_once.insert(message.clone());
            }
            self.inc.accepted(message, key, body);
        }
        for _ in 0..2 {
            let n = self.inc.requests.len();
            let (key, body) = self.inc.requests[self.rng.random_range(0..n)].clone();
            let again = self.accept(&key, &body).await;
            assert!(
                self.inc.expected.iter().any(|(m, _)| *m == again),
                "a resubmission of {key} made a new message"
            );
        }
        if tick.is_multiple_of(4) && self.inc.next_event + EVENTS <= AUDIENCE / 2 {
            let first = self.inc.next_event;
            self.events(first).await;
            self.event_bursts.push(first);
            self.inc.next_event += EVENTS;
        }
        if tick % 4 == 2 {
            let first = 1 + (tick as i64 / 4 * EVENTS) % (AUDIENCE / 2 - EVENTS);
            self.carts(first, tick).await;
            self.cart_bursts.push((first, tick));
        }
        if tick % 9 == 5 && !self.cart_bursts.is_empty() {
            // A client resends an earlier cart burst, purchases and all.
            let n = self.cart_bursts.len();
            let (first, at) = self.cart_bursts[self.rng.random_range(0..n)];
            self.carts(first, at).await;
        }
        if tick.is_multiple_of(7) && !self.event_bursts.is_empty() {
            // A client resends an earlier burst: the same event ids.
            let n = self.event_bursts.len();
            let first = self.event_bursts[self.rng.random_range(0..n)];
            self.events(first).await;
        }
        let campaign = format!("/v1/campaigns/{}", self.inc.campaign_id);
        let key = self.inc.app.server_key.clone();
        if tick % 20 == 10 && !self.campaign_paused {
            let (status, _) = self
                .api_until_answered("POST", &format!("{campaign}/pause"), &key, None)
                .await;
            // 409: it had finished producing; nothing to pause.
            self.campaign_paused = status == 200;
        } else if tick % 20 == 15 && self.campaign_paused {
            let (status, v) = self
                .api_until_answered("POST", &format!("{campaign}/resume"), &key, None)
                .await;
            assert_eq!(status, 200, "resume: {v}");
            self.campaign_paused = false;
        } else if tick.is_multiple_of(20) && !self.campaign_paused {
            let (_, c) = self.api_until_answered("GET", &campaign, &key, None).await;
            if c["status"] == "completed" {
                let (status, v) = self
                    .api_until_answered("POST", &format!("{campaign}/launch"), &key, None)
                    .await;
                assert_eq!(status, 200, "relaunch: {v}");
            }
        }
    }

    /// Sign-up events for users `first..first + EVENTS`, each owed the
    /// welcome push on every deliverable device of the user.
    async fn events(&mut self, first: i64) {
        let users: Vec<i64> = (first..first + EVENTS).collect();
        let sdk = self.inc.app.sdk_key.clone();
        let burst = Incident::signup_events(&users);
        let (status, v) = self
            .api_until_answered("POST", "/v1/events", &sdk, Some(&burst))
            .await;
        assert_eq!(status, 202, "events: {v}");
        self.inc.events_accepted(&users);
    }

    /// Carts for users `first..first + EVENTS`; the even users buy at once
    /// (a purchase that occurred after their cart, in the same request), the
    /// odd ones are owed the reminder on each deliverable device.
    async fn carts(&mut self, first: i64, tick: u64) {
        let sdk = self.inc.app.sdk_key.clone();
        let now = chrono::Utc::now();
        let mut events = Vec::new();
        for u in first..first + EVENTS {
            let user = format!("user-{u}");
            events.push(
                json!({"event_id": format!("cart-{u}-{tick}"), "name": "cart",
                               "custom_id": user,
                               "occurred_at": (now - chrono::Duration::seconds(1)).to_rfc3339()}),
            );
            if u % 2 == 0 {
                events.push(
                    json!({"event_id": format!("purchase-{u}-{tick}"), "name": "purchase",
                                   "custom_id": user, "occurred_at": now.to_rfc3339()}),
                );
            }
        }
        let (status, v) = self
            .api_until_answered(
                "POST",
                "/v1/events",
                &sdk,
                Some(&json!({ "events": events })),
            )
            .await;
        assert_eq!(status, 202, "carts: {v}");
        for u in (first..first + EVENTS).filter(|u| u % 2 == 1) {
            let message = MessageId::for_trigger(self.reminder, &format!("cart-{u}-{tick}"))
                .as_uuid()
                .to_string();
            for n in [2 * u, 2 * u + 1] {
                if n <= AUDIENCE && deliverable(n) {
                    self.inc.expected.insert((message.clone(), token(n)));
                }
            }
        }
    }

    /// A fault whose target is not already faulted.
    fn pick(&mut self, active: &[Active]) -> Option<Fault> {
        let roles = [
            Role::Sender(0),
            Role::Sender(1),
            Role::Gateway(0),
            Role::Gateway(1),
            Role::Scheduler,
            Role::Triggers(0),
            Role::Triggers(1),
            Role::Recorder,
        ];
        let role = roles[self.rng.random_range(0..roles.len())];
        let fault = match self.rng.random_range(0..12) {
            0..=1 => Fault::Kill(role),
            2 => Fault::Term(role),
            3 => Fault::Stop(Role::Sender(self.rng.random_range(0..2))),
            4 => Fault::RedisFailover,
            5 => Fault::RedisPaused,
            6 if matches!(self.clusters, Clusters::Real { .. }) && self.rng.random_bool(0.3) => {
                Fault::KafkaPrimaryDestroyed
            }
            6 => Fault::KafkaPrimaryUnreachable,
            7 => Fault::ProviderSlow,
            8 => Fault::ProviderErrors(if self.rng.random_bool(0.5) { 503 } else { 429 }),
            9 => Fault::ProviderStalled,
            _ => Fault::Kill(Role::Sender(self.rng.random_range(0..2))),
        };
        let target = |f: &Fault| match f {
            Fault::Kill(r) | Fault::Term(r) | Fault::Stop(r) => format!("{r:?}"),
            Fault::ProviderSlow | Fault::ProviderErrors(_) | Fault::ProviderStalled => {
                "provider".into()
            }
            Fault::RedisFailover | Fault::RedisPaused => "redis".into(),
            Fault::KafkaPrimaryUnreachable | Fault::KafkaPrimaryDestroyed => "kafka".into(),
        };
        let busy = active.iter().any(|a| target(&a.fault) == target(&fault));
        // Both senders down at once would only stop delivery.
        let both_senders = matches!(
            fault,
            Fault::Kill(Role::Sender(_))
                | Fault::Term(Role::Sender(_))
                | Fault::Stop(Role::Sender(_))
        ) && active.iter().any(|a| {
            matches!(
                a.fault,
                Fault::Kill(Role::Sender(_))
                    | Fault::Term(Role::Sender(_))
                    | Fault::Stop(Role::Sender(_))
            )
        });
        (!busy && !both_senders).then_some(fault)
    }

    /// Injects a fault; returns how long it lasts before it is healed.
    async fn inject(&mut self, fault: Fault) -> Duration {
        let now = chrono::Utc::now();
        println!(
            "chaos: fault at {}: {}",
            now.format("%H:%M:%S%.3f"),
            fault.name()
        );
        self.log.push((now, fault));
        match fault {
            Fault::Kill(role) => {
                if let Some(p) = self.process(role) {
                    p.kill().await;
                }
                self.down.insert(role);
                Duration::from_secs(2)
            }
            Fault::Term(role) => {
                if let Some(p) = self.process(role) {
                    p.terminate().await;
                }
                self.down.insert(role);
                Duration::from_secs(1)
            }
            Fault::Stop(role) => {
                if let Some(p) = self.process(role) {
                    p.pause();
                }
                LEASE + Duration::from_secs(2)
            }
            Fault::RedisFailover => {
                let sentinel = self.redis.sentinel_port;
                // Fire and go on: the failover completes while traffic flows.
                let _ = tokio::task::spawn_blocking(move || {
                    redis_cli(sentinel, &["sentinel", "failover", SENTINEL_MASTER])
                })
                .await;
                Duration::from_secs(5)
            }
            Fault::RedisPaused => {
                let primary = self.redis.primary_port();
                redis_cli(primary, &["CLIENT", "PAUSE", "2500", "ALL"]);
                Duration::from_secs(3)
            }
            Fault::KafkaPrimaryUnreachable => {
                self.clusters.set_primary_reachable(&self.inc, false);
                Duration::from_secs(8)
            }
            Fault::KafkaPrimaryDestroyed => {
                self.clusters.destroy_primary(&mut self.inc).await;
                Duration::from_secs(5)
            }
            Fault::ProviderSlow => {
                self.inc
                    .env
                    .set_sim_faults(json!({"latency_ms": 2500, "latency_jitter_ms": 500}))
                    .await;
                Duration::from_secs(6)
            }
            Fault::ProviderErrors(status) => {
                self.inc
                    .env
                    .set_sim_faults(
                        json!({"fail_first": 200, "fail_status": status, "latency_ms": 30}),
                    )
                    .await;
                Duration::from_secs(4)
            }
            Fault::ProviderStalled => {
                self.inc.env.set_sim_faults(json!({"stall": true})).await;
                Duration::from_millis(1500)
            }
        }
    }

    async fn heal(&mut self, fault: Fault) {
        if let Some(i) = (0..self.log.len())
            .rev()
            .find(|i| self.log[*i].1 == fault && !self.healed.contains_key(i))
        {
            self.healed.insert(i, chrono::Utc::now());
        }
        match fault {
            Fault::Kill(role) | Fault::Term(role) => self.restart(role).await,
            Fault::Stop(role) => {
                if let Some(p) = self.process(role) {
                    p.resume();
                }
            }
            Fault::KafkaPrimaryUnreachable => self.clusters.set_primary_reachable(&self.inc, true),
            Fault::KafkaPrimaryDestroyed => self.clusters.reborn_primary(&self.inc).await,
            Fault::ProviderSlow | Fault::ProviderErrors(_) | Fault::ProviderStalled => {
                self.inc.env.set_sim_faults(BASELINE()).await
            }
            Fault::RedisFailover | Fault::RedisPaused => {}
        }
    }

    fn process(&mut self, role: Role) -> Option<&mut HeraldProcess> {
        match role {
            Role::Sender(i) => self.inc.senders.get_mut(i),
            Role::Gateway(0) => Some(&mut self.inc.gateway),
            Role::Gateway(i) => self.gateways.get_mut(i)?.as_mut(),
            Role::Scheduler => Some(&mut self.inc.scheduler),
            Role::Triggers(0) => Some(&mut self.inc.triggers),
            Role::Triggers(i) => self.triggers.get_mut(i - 1)?.as_mut(),
            Role::Recorder => Some(&mut self.inc.recorder),
        }
    }

    async fn restart(&mut self, role: Role) {
        let env = &self.inc.env;
        match role {
            Role::Sender(i) => self.inc.senders[i] = incident::sender(env).await,
            Role::Gateway(i) => {
                let p = env.gateway().await;
                self.gateway_urls[i] = p.url.clone().expect("gateway url");
                if i == 0 {
                    self.inc.gw = self.gateway_urls[0].clone();
                    self.inc.gateway = p;
                } else {
                    self.gateways[i] = Some(p);
                }
            }
            Role::Scheduler => {
                self.inc.scheduler = env.spawn("scheduler", &["scheduler"], false).await
            }
            Role::Triggers(0) => {
                self.inc.triggers = env.spawn("triggers", &["triggers"], false).await
            }
            Role::Triggers(i) => {
                self.triggers[i - 1] = Some(env.spawn("triggers", &["triggers"], false).await)
            }
            Role::Recorder => self.inc.recorder = env.spawn("recorder", &["recorder"], false).await,
        }
        self.down.remove(&role);
    }

    /// Every fault healed, the campaign running to its end, `herald
    /// recover` run, and everything owed delivered or settled.
    async fn quiesce(&mut self) {
        self.clusters.set_primary_reachable(&self.inc, true);
        self.inc.env.set_sim_faults(BASELINE()).await;
        if self.campaign_paused {
            let path = format!("/v1/campaigns/{}/resume", self.inc.campaign_id);
            let key = self.inc.app.server_key.clone();
            self.api_until_answered("POST", &path, &key, None).await;
        }
        let out = self.inc.cli(&["recover"]).await;
        println!("chaos: {}", out.trim());
        let settled = tokio::time::timeout(Duration::from_secs(300), self.settled()).await;
        if settled.is_err() {
            println!("chaos: not everything was settled within 5 minutes of the end");
        }
    }

    /// Waits until nothing is pending (no delivery, no timer, the campaign
    /// produced and every device of it settled) and everything owed is in
    /// the simulators' record or settled `unknown`.
    async fn settled(&self) {
        let env = &self.inc.env;
        loop {
            let pending: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM delivery_status WHERE status = 'pending')
                      + (SELECT count(*) FROM trigger_timers WHERE status = 'pending')",
            )
            .fetch_one(&env.db)
            .await
            .unwrap_or(1);
            let campaign = self.inc.campaign().await;
            let unknown = self.unknown().await;
            let failed = self.failed().await;
            let got = incident::record(env).await;
            if pending == 0
                && campaign["status"] == "completed"
                && campaign["progress"]["pending"] == 0
                && self
                    .inc
                    .expected
                    .iter()
                    .all(|k| got.contains_key(k) || unknown.contains(k) || failed.contains(k))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deliveries given up as `failed` (settled, but not sent: lost to
    /// this checker).
    async fn failed(&self) -> HashSet<(String, String)> {
        sqlx::query_as::<_, (uuid::Uuid, String)>(
            "SELECT message_id, token FROM delivery_status WHERE status = 'failed'",
        )
        .fetch_all(&self.inc.env.db)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(m, t)| (m.to_string(), t))
        .collect()
    }

    /// Deliveries settled `unknown`, by (message, token).
    async fn unknown(&self) -> HashSet<(String, String)> {
        self.unknown_at().await.into_keys().collect()
    }

    /// Deliveries settled `unknown`, with when.
    async fn unknown_at(&self) -> HashMap<(String, String), chrono::DateTime<chrono::Utc>> {
        sqlx::query_as::<_, (uuid::Uuid, String, chrono::DateTime<chrono::Utc>)>(
            "SELECT message_id, token, settled_at FROM delivery_status WHERE status = 'unknown'",
        )
        .fetch_all(&self.inc.env.db)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(m, t, at)| ((m.to_string(), t), at))
        .collect()
    }

    async fn check(&self, seed: u64) -> Summary {
        let env = &self.inc.env;
        let times = incident::receipts(env).await;
        // Deliveries their sender says it sent again after a request whose
        // outcome it could not know (a timeout, a reset): `at_least_once`
        // allows the second copy whatever caused the first to go unanswered
        // (on a loaded machine, a request can time out with no fault on).
        let resent = incident::resent_after_unknown(env).await;
        let unknown_at = self.unknown_at().await;
        let unknown: HashSet<(String, String)> = unknown_at.keys().cloned().collect();
        // The fault in the 15 s before an unknown settle that explains it.
        let unknowns = unknown_at
            .iter()
            .map(|((m, t), at)| {
                let cause = self
                    .log
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(i, (when, f))| {
                        f.unknown_window(*when, self.healed.get(i).copied())
                            .is_some_and(|w| w.contains(at))
                    })
                    .map(|(_, (_, f))| f.name());
                (m.clone(), t.clone(), cause)
            })
            .collect();
        let mut doubled = Vec::new();
        let mut allowed = 0;
        for (key, at) in &times {
            if at.len() < 2 {
                continue;
            }
            let cause = self
                .log
                .iter()
                .enumerate()
                .find(|(i, (when, f))| {
                    f.may_double()
                        && f.explains_double(*when, self.healed.get(i).copied(), at[0], at[1])
                })
                .map(|(_, (_, f))| f.name())
                .or_else(|| {
                    resent
                        .contains(key)
                        .then(|| "its sender's request went unanswered, and it said so".into())
                });
            // Policy: at_least_once may send twice, never three times,
            // when a sender died or stalled mid-send or a provider answered
            // past the timeout; at_most_once never twice.
            let at_most_once = self.at_most_once.contains(&key.0);
            let within_policy = at.len() == 2 && cause.is_some() && !at_most_once;
            if within_policy {
                allowed += 1;
            }
            doubled.push(Doubled {
                message: key.0.clone(),
                token: key.1.clone(),
                copies: at.len(),
                cause,
                at_most_once,
                at: at.clone(),
                allowed: within_policy,
            });
        }
        let missing: Vec<(String, String)> = self
            .inc
            .expected
            .iter()
            .filter(|k| !times.contains_key(*k) && !unknown.contains(*k))
            .cloned()
            .collect();
        let unowed: Vec<(String, String)> = times
            .keys()
            .filter(|k| !self.inc.expected.contains(*k))
            .cloned()
            .collect();
        Summary {
            seed,
            unowed,
            accepted: self.inc.expected.len(),
            delivered: times
                .keys()
                .filter(|k| self.inc.expected.contains(*k))
                .count(),
            duplicates: doubled.len(),
            allowed,
            lost: missing.len(),
            unknown: unknown.len(),
            faults: self.log.len(),
            doubled,
            missing,
            unknowns,
        }
    }
}
