//! The trigger engine role: consumes app events in order per user, applies
//! the app's rules (cancel events first, then entries), keeps one durable
//! timer per (rule, entry event) in PostgreSQL, and fires due timers: quiet
//! hours, frequency cap, template, then the push itself — written as a message
//! with id UUIDv5(rule, event) in the same transaction that marks the timer
//! fired, and published like a transactional push.
//!
//! A replayed event finds its timer already there; a timer fired twice (an
//! engine died after writing, before publishing) writes nothing new, and the
//! relay or `herald recover` publishes what was written.

use herald_bus::{BatchConsumer, Publisher};
use herald_config::{Clock, TriggersConfig};
use herald_core::ids::DeliveryTarget;
use herald_core::template::TemplateContext;
use herald_core::trigger::{user_time_zone, EventRecord, QuietDecision, QuietHours, TimerStatus};
use herald_core::{AppId, DeliveryId, MessageId};
use herald_store::{DueTimer, NewDelivery, NewMessage, NewTimer, Store, Trigger};
use rdkafka::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error(transparent)]
    Store(#[from] herald_store::StoreError),
    #[error(transparent)]
    Bus(#[from] herald_bus::BusError),
}

pub struct TriggerEngine {
    pub store: Store,
    pub publisher: Publisher,
    pub config: TriggersConfig,
    pub clock: Clock,
    rules: Mutex<HashMap<AppId, AppRules>>,
}

#[derive(Clone)]
struct AppRules {
    triggers: Arc<Vec<Trigger>>,
    quiet_hours: Option<QuietHours>,
    version: String,
}

impl TriggerEngine {
    pub fn new(store: Store, publisher: Publisher, config: TriggersConfig, clock: Clock) -> Self {
        Self {
            store,
            publisher,
            config,
            clock,
            rules: Mutex::default(),
        }
    }

    /// Consumes events and fires timers until `shutdown`; each loop finishes
    /// what it holds (a batch of events, a transaction of timers) first.
    pub async fn run(
        self: Arc<Self>,
        events: Vec<BatchConsumer>,
        shutdown: CancellationToken,
    ) -> Result<(), TriggerError> {
        // One ingest loop per Kafka cluster: a standby's events and a
        // recovered cluster's backlog are applied alike.
        let mut loops: Vec<_> = events
            .into_iter()
            .map(|c| tokio::spawn(self.clone().ingest(c, shutdown.clone())))
            .collect();
        loops.push(tokio::spawn(self.fire_loop(shutdown)));
        for r in futures::future::join_all(loops).await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => tracing::error!(error = %e, "a trigger engine loop panicked"),
            }
        }
        Ok(())
    }

    /// The app's rules as of now: a rule saved a moment ago applies to the
    /// next batch. One small query per app and batch says whether the cached
    /// rules are still current.
    async fn app_rules(&self, app: AppId) -> Result<AppRules, TriggerError> {
        let version = self.store.rules_version(app).await?;
        let mut cache = self.rules.lock().await;
        if let Some(r) = cache.get(&app) {
            if r.version == version {
                return Ok(r.clone());
            }
        }
        let rules = AppRules {
            triggers: Arc::new(self.store.triggers(app).await?),
            quiet_hours: self.store.app_quiet_hours(app).await?,
            version,
        };
        cache.insert(app, rules.clone());
        Ok(rules)
    }

    /// The rules of every app in a batch, read once for the batch.
    async fn rules_for(&self, apps: Vec<AppId>) -> Result<HashMap<AppId, AppRules>, TriggerError> {
        let mut out = HashMap::new();
        for app in apps {
            if let std::collections::hash_map::Entry::Vacant(e) = out.entry(app) {
                e.insert(self.app_rules(app).await?);
            }
        }
        Ok(out)
    }

    async fn ingest(
        self: Arc<Self>,
        mut consumer: BatchConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), TriggerError> {
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        let health = herald_telemetry::health::register(format!(
            "the trigger engine's event loop ({})",
            consumer.label()
        ));
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = consumer.next_batch(self.config.batch_size, linger) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "consuming events");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let records: Vec<EventRecord> = batch
                .iter()
                .filter_map(|m| match m.payload().map(EventRecord::from_json) {
                    Some(Ok(r)) => Some(r),
                    other => {
                        tracing::error!(offset = m.offset(), error = ?other.map(|r| r.err()), "undecodable event skipped");
                        None
                    }
                })
                .collect();
            while let Err(e) = self.apply_events(&records).await {
                health.failed(&e);
                tracing::warn!(error = %e, "applying events failed; retrying the batch");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            health.ok();
            let applied: Vec<(AppId, &str)> = records
                .iter()
                .map(|r| (r.app_id, r.event.event_id.as_str()))
                .collect();
            if let Err(e) = self.store.mark_events_applied(&applied).await {
                // Only recovery reads the mark: it would publish these again, harmlessly.
                tracing::warn!(error = %e, "marking events applied failed");
            }
            metrics::counter!("herald_events_consumed_total").increment(records.len() as u64);
            let mode = herald_bus::commit_mode(shutdown.is_cancelled());
            if let Err(e) = consumer.commit(&batch, mode) {
                tracing::warn!(error = %e, "committing event offsets failed; the events will be applied again, harmlessly");
            }
        }
        consumer.unsubscribe();
        Ok(())
    }

    /// Applies events in order. Timers are written in batches, but always
    /// before a cancel event is applied, so that a cancel sees every entry
    /// that came before it.
    async fn apply_events(&self, records: &[EventRecord]) -> Result<(), TriggerError> {
        let mut pending: Vec<NewTimer> = Vec::new();
        let all_rules = self
            .rules_for(records.iter().map(|r| r.app_id).collect())
            .await?;
        for r in records {
            let Some(rules) = all_rules.get(&r.app_id) else {
                continue;
            };
            let occurred_at = r.event.occurred_at.unwrap_or_else(chrono::Utc::now);
            let user = r.event.user().encode();
            let cancels: Vec<&Trigger> = rules
                .triggers
                .iter()
                .filter(|t| t.input.is_cancelled_by(&r.event))
                .collect();
            if !cancels.is_empty() {
                self.store
                    .create_timers(&std::mem::take(&mut pending))
                    .await?;
                for t in cancels {
                    let n = self.store.cancel_timers(t.id, &user, occurred_at).await?;
                    if n > 0 {
                        tracing::debug!(trigger_id = %t.id, %user, cancelled = n, "pending pushes cancelled");
                    }
                }
            }
            for t in rules
                .triggers
                .iter()
                .filter(|t| t.input.is_entered_by(&r.event, occurred_at))
            {
                pending.push(NewTimer {
                    trigger_id: t.id,
                    event_id: r.event.event_id.clone(),
                    app_id: r.app_id,
                    user_key: user.clone(),
                    occurred_at,
                    due_at: t.input.due_at(occurred_at),
                    attributes: r.event.attributes.clone(),
                });
            }
        }
        self.store.create_timers(&pending).await?;
        Ok(())
    }

    async fn fire_loop(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), TriggerError> {
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let health = herald_telemetry::health::register("the trigger engine's timer loop");
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let fired = match self.fire_due().await {
                Ok(n) => {
                    health.ok();
                    n
                }
                Err(e) => {
                    health.failed(&e);
                    tracing::warn!(error = %e, "firing timers failed; retrying");
                    0
                }
            };
            if fired < self.config.fire_batch.max(1) as usize {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }

    /// Settles one transaction's worth of due timers; returns how many.
    /// Reads and writes are batched (a few statements per transaction); only
    /// timers of capped rules take their (rule, user) lock and count, one by
    /// one, since the cap must see every push fired before.
    pub async fn fire_due(&self) -> Result<usize, TriggerError> {
        let now = self.clock.now();
        let mut batch = self
            .store
            .due_timers(now, self.config.fire_batch.max(1))
            .await?;
        let timers = std::mem::take(&mut batch.timers);
        let all_rules = self
            .rules_for(timers.iter().map(|t| t.app_id).collect())
            .await?;
        let devices = batch.devices(&timers).await?;
        let mut settled: Vec<(&DueTimer, TimerStatus)> = Vec::new();
        let mut fired: Vec<(&DueTimer, NewMessage)> = Vec::new();
        let mut postponed: Vec<(&DueTimer, chrono::DateTime<chrono::Utc>)> = Vec::new();
        // Pushes of a capped rule fired earlier in this same transaction.
        let mut fired_here: HashMap<(uuid::Uuid, &str), i64> = HashMap::new();
        for timer in &timers {
            let Some(rules) = all_rules.get(&timer.app_id) else {
                continue;
            };
            let Some(rule) = rules.triggers.iter().find(|t| t.id == timer.trigger_id) else {
                continue; // deleted meanwhile: its timers go with it
            };
            if !rule.input.enabled {
                settled.push((timer, TimerStatus::Cancelled));
                continue;
            }
            let Some(user_devices) = devices
                .get(&(timer.app_id, timer.user_key.clone()))
                .filter(|d| !d.is_empty())
            else {
                settled.push((timer, TimerStatus::Unreachable));
                continue;
            };
            let zones: Vec<Option<String>> =
                user_devices.iter().map(|d| d.time_zone.clone()).collect();
            let tz = user_time_zone(&zones);
            let quiet = [rule.input.quiet_hours, rules.quiet_hours]
                .into_iter()
                .flatten()
                .map(|q| q.decide(now, tz))
                .find(|d| *d != QuietDecision::Send);
            match quiet {
                Some(QuietDecision::PostponeUntil(until)) => {
                    postponed.push((timer, until));
                    continue;
                }
                Some(_) => {
                    settled.push((timer, TimerStatus::Dropped));
                    continue;
                }
                None => {}
            }
            if let Some(cap) = rule.input.frequency_cap {
                batch.lock_user(timer).await?;
                let window = chrono::Duration::seconds(
                    i64::try_from(cap.window_seconds).unwrap_or(i64::MAX / 2),
                );
                let here = fired_here
                    .entry((timer.trigger_id, timer.user_key.as_str()))
                    .or_insert(0);
                let before = batch.fired_since(timer, now - window).await?;
                if before + *here >= i64::from(cap.max) {
                    settled.push((timer, TimerStatus::Capped));
                    continue;
                }
                *here += 1;
            }
            let notification = rule.input.render(TemplateContext {
                event: &timer.attributes,
                user: &user_devices[0].attributes,
            });
            let id = MessageId::for_trigger(rule.id, &timer.event_id);
            let message = NewMessage {
                id,
                app_id: timer.app_id,
                kind: "trigger",
                notification,
                policy: rule.input.delivery_policy,
                expires_at: None,
                send_at: None,
                deliveries: user_devices
                    .iter()
                    .map(|d| NewDelivery {
                        id: DeliveryId::derive(id, DeliveryTarget::Installation(&d.install_id)),
                        platform: d.platform,
                        token: d.token.clone(),
                        install_id: Some(d.install_id.clone()),
                        locale: d.locale.clone(),
                        apns_sandbox: d.apns_sandbox,
                    })
                    .collect(),
            };
            let late = (now - timer.due_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("herald_trigger_timer_lateness_seconds").record(late);
            fired.push((timer, message));
        }
        batch.settle(&settled, now).await?;
        batch.postpone(&postponed).await?;
        let written = batch.fire(&fired, now).await?;
        batch.commit().await?;
        metrics::counter!("herald_trigger_timers_postponed_total")
            .increment(postponed.len() as u64);
        for (_, status) in &settled {
            metrics::counter!("herald_trigger_timers_settled_total", "status" => status.as_str())
                .increment(1);
        }
        metrics::counter!("herald_trigger_timers_settled_total", "status" => "fired")
            .increment(fired.len() as u64);
        self.publish(&written).await;
        Ok(timers.len())
    }

    /// Publishes what the fired timers wrote. A failure leaves the outbox
    /// rows for the gateway's relay (or `herald recover`).
    #[tracing::instrument(name = "fire timers", skip_all, fields(messages = written.len()))]
    async fn publish(&self, written: &[(i64, MessageId)]) {
        if written.is_empty() {
            return;
        }
        let messages: Vec<MessageId> = written.iter().map(|(_, m)| *m).collect();
        let outbox: Vec<i64> = written.iter().map(|(o, _)| *o).collect();
        let result = async {
            let jobs = self.store.pending_jobs_for(&messages).await?;
            self.publisher.publish_jobs(&jobs).await?;
            self.store.mark_published(&outbox).await?;
            Ok::<_, TriggerError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "publishing trigger pushes failed; the outbox relay will");
        }
    }
}
