//! `POST /v1/push`: a transactional push to tokens and installations.

use crate::api::PushAccepted;
use crate::auth::ServerKey;
use crate::body::parse_body;
use crate::idempotency;
use crate::problem::Problem;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::ids::DeliveryTarget;
use herald_core::{DeliveryId, DeliveryPolicy, MessageId, Platform, PushRequest};
use herald_store::{AcceptOutcome, IdempotencyRecord, NewDelivery, NewMessage, StoredResponse};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

/// Send a push to tokens, installations and users.
///
/// With an `Idempotency-Key` the request is safe to retry: the same key and
/// body replay the stored answer (`Idempotent-Replayed: true`).
#[utoipa::path(
    post,
    path = "/v1/push",
    operation_id = "send_push",
    tag = "push",
    request_body = PushRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Structured-field string, 1 to 255 printable characters; scoped per app"),
    ),
    responses(
        (status = 202, description = "Accepted: stored, and published unless `Herald-Publish: deferred`", body = PushAccepted,
         headers(("Location" = String), ("Idempotent-Replayed" = String), ("Herald-Publish" = String))),
        (status = 400, description = "A field, the JSON or the Idempotency-Key is malformed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or an unknown one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An SDK key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another request with this key was still being written after 5 s", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL is unreachable; nothing was accepted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    committing: Option<axum::Extension<crate::deadline::Committing>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let idempotency_key = idempotency::key(&headers)?;
    let (value, request): (Value, PushRequest) = parse_body(&headers, &body)?;
    request
        .validate()
        .map_err(|e| Problem::invalid_field(e.field, e.detail))?;
    let app = key.app_id;
    let fingerprint = idempotency::fingerprint("POST", "/v1/push", &value);

    // Fast path for a retry of a completed request: no target resolution.
    // With only raw tokens there is nothing to resolve, and the write checks
    // the key anyway.
    let resolves = !request.to.install_ids.is_empty() || !request.to.custom_ids.is_empty();
    if let (Some(k), true) = (&idempotency_key, resolves) {
        if let Some((stored_fp, stored)) = state.store.idempotent_response(app, k).await? {
            if stored_fp != fingerprint {
                return Err(Problem::idempotency_mismatch());
            }
            return Ok(replay(stored));
        }
    }

    let mut message_id = match &idempotency_key {
        Some(k) => MessageId::for_idempotency_key(app, k),
        None => MessageId::new_random(),
    };
    // A key used again after its retention starts a new life, with a new
    // message id; the write says so when the id it was given is an earlier
    // life's. Twice is enough unless other requests keep reusing the key at
    // the same moment, which is "in progress" for this one.
    let mut lives = 0;
    // A request whose key another request (on another writer or gateway) is
    // writing now waits for that write, then is answered from it: a client
    // retrying early, or two of its workers sending the same request, get
    // one answer, not a 409.
    let waiting_since = std::time::Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let outcome = accept_as(
            &state,
            &request,
            app,
            message_id,
            idempotency_key.as_deref(),
            &fingerprint,
            committing.as_ref().map(|c| &c.0),
        )
        .await?;
        match (outcome, &idempotency_key) {
            (Accepted::Outlived, Some(_)) if lives >= 2 => {
                return Err(Problem::idempotency_in_progress())
            }
            (Accepted::Outlived, Some(k)) => {
                lives += 1;
                message_id = state.store.message_id_for_key(app, k).await?;
            }
            (Accepted::Outlived, None) => return Err(Problem::internal()),
            (Accepted::InProgress, _) => {
                let left = KEY_IN_PROGRESS_WAIT.saturating_sub(waiting_since.elapsed());
                if left.is_zero() {
                    return Err(Problem::idempotency_in_progress());
                }
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            (Accepted::Answer(response), _) => return Ok(response),
        }
    }
}

/// How long a request waits for another request with its Idempotency-Key
/// to be written before it is answered 409.
const KEY_IN_PROGRESS_WAIT: Duration = Duration::from_secs(5);

/// What one write of a push came to.
enum Accepted {
    Answer(Response),
    /// The message id was an earlier life's of the key: choose again.
    Outlived,
    /// Another request with the key is being written.
    InProgress,
}

/// Resolves the targets of a push under `message_id` and writes it.
async fn accept_as(
    state: &AppState,
    request: &PushRequest,
    app: herald_core::AppId,
    message_id: MessageId,
    idempotency_key: Option<&str>,
    fingerprint: &[u8],
    committing: Option<&crate::deadline::Committing>,
) -> Result<Accepted, Problem> {
    tracing::Span::current().record("message_id", tracing::field::display(message_id));
    let resolved = resolve_targets(state, request, message_id, app).await?;
    let now = chrono::Utc::now();
    let send_at = request.send_at.filter(|at| *at > now);
    let body = serde_json::to_value(PushAccepted {
        message_id: message_id.as_uuid(),
        recipients: resolved.deliveries.len(),
        unresolved_install_ids: resolved.unresolved_install_ids,
        unresolved_custom_ids: resolved.unresolved_custom_ids,
        send_at,
    })
    .map_err(|_| Problem::internal())?;
    // The TTL runs from when the push is due.
    let expires_at = request.ttl_seconds.map(|s| {
        send_at.unwrap_or(now) + chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX))
    });
    let deliveries = resolved.deliveries;
    let message = NewMessage {
        id: message_id,
        app_id: app,
        kind: "transactional",
        notification: request.notification.clone(),
        policy: request
            .delivery_policy
            .unwrap_or(DeliveryPolicy::AtLeastOnce),
        expires_at,
        send_at,
        deliveries,
    };
    let record = idempotency_key.map(|key| IdempotencyRecord {
        key: key.to_string(),
        fingerprint: fingerprint.to_vec(),
        response_status: StatusCode::ACCEPTED.as_u16(),
        response_body: body.clone(),
        retention: state.idempotency_retention,
    });
    let recipients = message.deliveries.len();
    // From here the write may commit: the request deadline must not answer
    // "nothing was accepted" for it any more.
    if let Some(c) = committing {
        c.start();
    }
    let accepted_push = state.acceptor.accept(message, record).await?;
    match accepted_push.outcome {
        AcceptOutcome::Accepted { .. } => {
            metrics::counter!("herald_pushes_accepted_total").increment(1);
            tracing::info!(%message_id, app_id = %app, recipients, "push accepted");
            let mut response = accepted(StatusCode::ACCEPTED, message_id, body, false);
            if !accepted_push.published {
                response
                    .headers_mut()
                    .insert(PUBLISH_HEADER, HeaderValue::from_static("deferred"));
            }
            Ok(Accepted::Answer(response))
        }
        AcceptOutcome::Replay(stored) => Ok(Accepted::Answer(replay(stored))),
        AcceptOutcome::KeyInProgress => Ok(Accepted::InProgress),
        AcceptOutcome::KeyMismatch => Err(Problem::idempotency_mismatch()),
        AcceptOutcome::KeyOutlived => Ok(Accepted::Outlived),
    }
}

/// Says the message is stored but not yet handed to Kafka (the broker is away
/// or slow); the outbox relay publishes it as soon as it can.
pub const PUBLISH_HEADER: &str = "herald-publish";

fn replay(stored: StoredResponse) -> Response {
    metrics::counter!("herald_idempotent_replays_total").increment(1);
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::ACCEPTED);
    accepted(status, stored.message_id, stored.body, true)
}

fn accepted(status: StatusCode, message_id: MessageId, body: Value, replayed: bool) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/messages/{message_id}")) {
        headers.insert(axum::http::header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

struct Resolved {
    deliveries: Vec<NewDelivery>,
    unresolved_install_ids: Vec<String>,
    unresolved_custom_ids: Vec<String>,
}

/// Turns targets into deliveries. Installations come first (by install id,
/// then by custom id) so that a device named twice, or by its raw token too,
/// gets one delivery whose id survives a later token change. Unknown,
/// invalidated or opted-out ids are reported back, not failed on.
async fn resolve_targets(
    state: &AppState,
    request: &PushRequest,
    message: MessageId,
    app: herald_core::AppId,
) -> Result<Resolved, Problem> {
    let by_install = state
        .store
        .resolve_install_ids(app, &request.to.install_ids)
        .await?;
    let by_user = state
        .store
        .resolve_custom_ids(app, &request.to.custom_ids)
        .await?;
    let found_installs: HashSet<&str> = by_install.iter().map(|r| r.install_id.as_str()).collect();
    let found_users: HashSet<&str> = by_user
        .iter()
        .filter_map(|r| r.custom_id.as_deref())
        .collect();
    let unresolved_install_ids = unresolved(&request.to.install_ids, &found_installs);
    let unresolved_custom_ids = unresolved(&request.to.custom_ids, &found_users);
    let mut seen: HashSet<(Platform, String)> = HashSet::new();
    let mut deliveries = Vec::new();
    for r in by_install.iter().chain(&by_user) {
        if seen.insert((r.platform, r.token.clone())) {
            deliveries.push(NewDelivery {
                id: DeliveryId::derive(message, DeliveryTarget::Installation(&r.install_id)),
                platform: r.platform,
                token: r.token.clone(),
                install_id: Some(r.install_id.clone()),
                locale: r.locale.clone(),
                apns_sandbox: r.apns_sandbox,
            });
        }
    }
    for t in &request.to.tokens {
        if seen.insert((t.platform, t.token.clone())) {
            deliveries.push(NewDelivery {
                id: DeliveryId::derive(message, DeliveryTarget::Token(&t.token)),
                platform: t.platform,
                token: t.token.clone(),
                install_id: None,
                locale: None,
                apns_sandbox: false,
            });
        }
    }
    Ok(Resolved {
        deliveries,
        unresolved_install_ids,
        unresolved_custom_ids,
    })
}

fn unresolved(asked: &[String], found: &HashSet<&str>) -> Vec<String> {
    let mut out: Vec<String> = asked
        .iter()
        .filter(|id| !found.contains(id.as_str()))
        .cloned()
        .collect();
    out.dedup();
    out
}
