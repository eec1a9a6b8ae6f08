//! Group commit for `POST /v1/push`: requests that arrive while earlier ones
//! are being written wait and are written together, in one transaction of a
//! fixed number of statements, then published to Kafka in one produce and
//! marked published in one update. Per request, that replaces about a dozen
//! round trips to PostgreSQL and two commits with a share of a few, which is
//! what a gateway on a busy database waits on. Each request still gets its own
//! answer; a batch that fails is written again one request at a time, so one
//! bad request fails alone.

use crate::problem::Problem;
use crate::relay::OutboxRelay;
use herald_core::AppId;
use herald_core::DeliveryJob;
use herald_store::{AcceptOutcome, IdempotencyRecord, NewMessage, Store};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// A batch stops growing at this many deliveries, so that a few very large
/// requests do not make one huge transaction.
const MAX_BATCH_DELIVERIES: usize = 10_000;

/// What became of one accepted request.
#[derive(Debug)]
pub struct Accepted {
    pub outcome: AcceptOutcome,
    /// False: stored, but not yet acknowledged by Kafka (the relay publishes it).
    pub published: bool,
}

struct Request {
    message: NewMessage,
    key: Option<IdempotencyRecord>,
    trace_parent: Option<String>,
    reply: oneshot::Sender<Result<Accepted, Problem>>,
}

/// The handle requests are accepted through; clones share the writers.
#[derive(Clone)]
pub struct Acceptor {
    requests: mpsc::Sender<Request>,
}

#[derive(Debug, Clone)]
pub struct AcceptSettings {
    pub max_batch: usize,
    pub writers: usize,
    /// How long a batch waits for Kafka before answering `deferred`.
    pub publish_wait: Duration,
}

impl Acceptor {
    /// Starts the writers; they stop once every handle is dropped.
    pub fn spawn(store: Store, relay: OutboxRelay, settings: AcceptSettings) -> Self {
        let max_batch = settings.max_batch.max(1);
        let (requests, queue) = mpsc::channel(max_batch * settings.writers.max(1) * 2);
        tokio::spawn(collect(queue, store, relay, settings));
        Self { requests }
    }

    /// Writes the message (and its key), then publishes it unless it is
    /// scheduled; returns once both are done or publishing gave up.
    pub async fn accept(
        &self,
        message: NewMessage,
        key: Option<IdempotencyRecord>,
    ) -> Result<Accepted, Problem> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            message,
            key,
            trace_parent: herald_telemetry::trace_parent(),
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| Problem::unavailable("the gateway is shutting down"))?;
        metrics::gauge!("herald_gateway_accept_waiting").increment(1.0);
        answer.await.map_err(|_| {
            Problem::unavailable(
                "the gateway stopped before it could answer; the push may have been accepted: send it again with the same Idempotency-Key to learn which",
            )
        })?
    }
}

/// Takes a writer, then every request waiting (up to the batch limits), and
/// hands them to the writer: while all writers are busy, requests gather. A
/// request whose Idempotency-Key is already in the batch waits for the next
/// one, so that it is answered from the first request's stored response
/// instead of with a 409.
async fn collect(
    mut queue: mpsc::Receiver<Request>,
    store: Store,
    relay: OutboxRelay,
    settings: AcceptSettings,
) {
    let writers = Arc::new(Semaphore::new(settings.writers.max(1)));
    let max_batch = settings.max_batch.max(1);
    let mut held: VecDeque<Request> = VecDeque::new();
    // Ends when the batch that held requests back is written.
    let mut held_behind: Option<oneshot::Receiver<()>> = None;
    loop {
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        // Requests held back from the last batch go first, once it is written.
        let mut pending = std::mem::take(&mut held);
        let after = held_behind.take();
        if pending.is_empty() {
            match queue.recv().await {
                Some(request) => pending.push_back(taken(request)),
                None => return,
            }
        }
        let mut batch = Vec::new();
        let mut keys: HashSet<(AppId, String)> = HashSet::new();
        let mut deliveries = 0;
        while batch.len() < max_batch && deliveries < MAX_BATCH_DELIVERIES {
            let request = match pending.pop_front() {
                Some(request) => request,
                None => match queue.try_recv() {
                    Ok(request) => taken(request),
                    Err(_) => break,
                },
            };
            if let Some(key) = &request.key {
                if !keys.insert((request.message.app_id, key.key.clone())) {
                    held.push_back(request);
                    continue;
                }
            }
            deliveries += request.message.deliveries.len();
            batch.push(request);
        }
        // Requests the batch had no room for keep their place ahead of those
        // held back.
        pending.extend(held);
        held = pending;
        let (written, done) = oneshot::channel::<()>();
        if !held.is_empty() {
            held_behind = Some(done);
        }
        let (store, relay, publish_wait) = (store.clone(), relay.clone(), settings.publish_wait);
        tokio::spawn(async move {
            if let Some(earlier) = after {
                // Sent or dropped, either way that batch is over.
                let _ = earlier.await;
            }
            write_batch(&store, &relay, publish_wait, batch).await;
            drop((written, writer));
        });
    }
}

/// Counts a request out of the queue.
fn taken(request: Request) -> Request {
    metrics::gauge!("herald_gateway_accept_waiting").decrement(1.0);
    request
}

async fn write_batch(
    store: &Store,
    relay: &OutboxRelay,
    publish_wait: Duration,
    batch: Vec<Request>,
) {
    metrics::histogram!("herald_gateway_accept_batch_requests").record(batch.len() as f64);
    let requests: Vec<(&NewMessage, Option<&IdempotencyRecord>)> =
        batch.iter().map(|r| (&r.message, r.key.as_ref())).collect();
    let outcomes: Vec<Result<AcceptOutcome, Problem>> = match store.accept_messages(&requests).await
    {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) if batch.len() == 1 => vec![Err(Problem::from(e))],
        Err(e) => {
            tracing::warn!(error = %e, requests = batch.len(), "writing a batch of pushes failed; writing them one at a time");
            let mut outcomes = Vec::with_capacity(batch.len());
            for (message, key) in &requests {
                outcomes.push(
                    store
                        .accept_message(message, *key)
                        .await
                        .map_err(Problem::from),
                );
            }
            outcomes
        }
    };
    // Scheduled pushes are the relay's to publish when due.
    let mut outbox_ids = Vec::new();
    let mut jobs: Vec<DeliveryJob> = Vec::new();
    for (request, outcome) in batch.iter().zip(&outcomes) {
        if let Ok(AcceptOutcome::Accepted {
            outbox_id: Some(id),
        }) = outcome
        {
            if request.message.send_at.is_none() {
                outbox_ids.push(*id);
                jobs.extend(request.message.jobs(request.trace_parent.as_deref()));
            }
        }
    }
    let published =
        outbox_ids.is_empty() || publish_now(relay, publish_wait, &outbox_ids, &jobs, &batch).await;
    for (request, outcome) in batch.into_iter().zip(outcomes) {
        let answer = outcome.map(|outcome| {
            let published = match outcome {
                AcceptOutcome::Accepted { outbox_id: Some(_) }
                    if request.message.send_at.is_none() =>
                {
                    published
                }
                _ => true,
            };
            Accepted { outcome, published }
        });
        // The client may be gone; what it asked for is stored either way.
        let _ = request.reply.send(answer);
    }
}

/// Publishes the batch's jobs at once, waiting at most `publish_wait`; a
/// broker known to be away is not waited for.
async fn publish_now(
    relay: &OutboxRelay,
    publish_wait: Duration,
    outbox_ids: &[i64],
    jobs: &[DeliveryJob],
    batch: &[Request],
) -> bool {
    if !relay.broker_down.load(Ordering::SeqCst) {
        match tokio::time::timeout(publish_wait, relay.publish_now(outbox_ids, jobs)).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::warn!(messages = %message_ids(batch), error = %e, "publishing at once failed; the relay will retry")
            }
            Err(_) => {
                tracing::warn!(messages = %message_ids(batch), "publishing at once timed out; the relay will retry")
            }
        }
        relay.broker_down.store(true, Ordering::SeqCst);
    }
    relay.wakeup.notify_one();
    false
}

fn message_ids(batch: &[Request]) -> String {
    batch
        .iter()
        .map(|r| r.message.id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
