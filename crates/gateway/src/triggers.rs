//! Trigger campaigns: events in (`POST /v1/events`), rules, and the app's
//! quiet hours.

use crate::auth::{AnyKey, ServerKey};
use crate::body::{from_value, name_filter_node, parse_body, parse_json};
use crate::idempotency;
use crate::problem::Problem;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use herald_core::trigger::{
    EventInput, QuietHours, TimerStatus, TriggerInput, MAX_EVENTS_PER_REQUEST,
};
use herald_store::{Keyed, Trigger};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;
use utoipa::ToSchema;
use uuid::Uuid;

/// Several events in one request (up to 1000).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    pub events: Vec<EventInput>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventsAccepted {
    /// Events stored now.
    pub accepted: u64,
    /// Event ids seen before: ignored (they never fire a rule twice).
    pub duplicates: u64,
}

/// A rule, and how its timers stand.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerView {
    pub id: Uuid,
    #[serde(flatten)]
    pub rule: TriggerInput,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Timers per status: `pending`, `fired`, `cancelled`, `dropped`,
    /// `capped`, `unreachable`.
    pub timers: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<TriggerView>,
}

/// App-wide rules for trigger pushes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSettings {
    /// Applies to every rule, besides each rule's own; null: none.
    pub quiet_hours: Option<QuietHours>,
}

fn parse_trigger_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::from_str(id).map_err(|_| Problem::invalid_field("trigger_id", "a trigger id is a UUID"))
}

fn parse_rule(headers: &HeaderMap, body: &Bytes) -> Result<TriggerInput, Problem> {
    Ok(parse_rule_body(headers, body)?.1)
}

/// The rule, and the JSON it came as (for an Idempotency-Key's fingerprint).
fn parse_rule_body(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(serde_json::Value, TriggerInput), Problem> {
    let (value, rule): (_, TriggerInput) =
        parse_body(headers, body).map_err(|p| name_filter_node(p, "conditions"))?;
    rule.validate()
        .map_err(|e| Problem::invalid_field(e.field, e.detail))?;
    Ok((value, rule))
}

async fn view(state: &AppState, t: Trigger) -> Result<TriggerView, Problem> {
    let mut timers: BTreeMap<String, i64> = TimerStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for (status, n) in state.store.timer_counts(t.id).await? {
        timers.insert(status.as_str().to_string(), n);
    }
    Ok(TriggerView {
        id: t.id,
        rule: t.input,
        created_at: t.created_at,
        updated_at: t.updated_at,
        timers,
    })
}

/// Posts one event, or `{"events": [...]}` (up to 1000). An event id seen
/// before is ignored, so resending is always safe.
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "post_events",
    tag = "triggers",
    request_body = EventInput,
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Optional (event ids already make a resend safe): structured-field string, 1 to 255 printable characters; scoped per app. The same key and body replay the first answer (`Idempotent-Replayed: true`)"),
    ),
    responses(
        (status = 202, body = EventsAccepted, headers(("Idempotent-Replayed" = String))),
        (status = 400, description = "A field, the JSON or the Idempotency-Key is malformed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another request with this key was still being written after 5 s", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for a different request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn post_events(
    State(state): State<AppState>,
    AnyKey(key): AnyKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let raw = parse_json(&headers, &body)?;
    let request_key = idempotency::request_key(
        &headers,
        "POST",
        "/v1/events",
        &raw,
        state.idempotency_retention,
    )?;
    let (mut events, prefix) = if raw.get("events").is_some() {
        (from_value::<EventBatch>(&raw)?.events, "events")
    } else {
        (vec![from_value::<EventInput>(&raw)?], "")
    };
    if events.is_empty() || events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(Problem::invalid_field(
            "events",
            format!("1 to {MAX_EVENTS_PER_REQUEST} events per request"),
        ));
    }
    let now = Utc::now();
    for (i, e) in events.iter_mut().enumerate() {
        e.validate().map_err(|f| {
            let field = if prefix.is_empty() {
                f.field
            } else {
                format!("{prefix}[{i}].{}", f.field)
            };
            Problem::invalid_field(field, f.detail)
        })?;
        e.occurred_at.get_or_insert(now);
    }
    let app = key.app_id;
    let total = events.len() as u64;
    let mut new = match state
        .store
        .accept_events_keyed(app, &events, request_key.as_ref())
        .await?
    {
        Keyed::Created(new) => new,
        // Stored by an earlier request with this key: every event is a
        // duplicate now, and was published by that request or the relay.
        keyed => {
            return idempotency::answer_create(
                &state.store,
                app,
                request_key.as_ref(),
                keyed,
                StatusCode::ACCEPTED,
                async |_| {
                    Ok(EventsAccepted {
                        accepted: 0,
                        duplicates: total,
                    })
                },
                async |_| Ok(Default::default()),
            )
            .await;
        }
    };
    let accepted = new.len() as u64;
    // Only what this request stored is published. A resent event is already
    // stored, with the time it was first given (or stamped); publishing the
    // resent copy, stamped now, would let a resent cancel event cancel
    // pushes that events after the original started. The stored copy is
    // published by its own request or by the relay.
    events.retain(|e| new.remove(&e.event_id));
    // Published at once when the broker answers in time; the relay publishes
    // whatever is left.
    let relay = state.relay.clone();
    if !events.is_empty() {
        let publish = tokio::spawn(async move { relay.publish_events_now(app, events).await });
        match tokio::time::timeout(state.publish_wait, publish).await {
            Ok(Ok(Ok(()))) => {}
            _ => state.relay.wakeup.notify_one(),
        }
    }
    metrics::counter!("herald_events_accepted_total").increment(accepted);
    let answer = EventsAccepted {
        accepted,
        duplicates: total - accepted,
    };
    match &request_key {
        Some(k) => {
            let body = serde_json::to_value(&answer).map_err(|_| Problem::internal())?;
            state
                .store
                .store_key_answer(app, &k.key, StatusCode::ACCEPTED.as_u16(), &body)
                .await?;
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        None => Ok((StatusCode::ACCEPTED, Json(answer)).into_response()),
    }
}

/// Creates a rule. Its templates and conditions are checked now.
#[utoipa::path(
    post,
    path = "/v1/triggers",
    operation_id = "create_trigger",
    tag = "triggers",
    request_body = TriggerInput,
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Structured-field string, 1 to 255 printable characters; scoped per app. The same key and body replay the first answer (`Idempotent-Replayed: true`); one key names one request"),
    ),
    responses(
        (status = 201, body = TriggerView, headers(("Idempotent-Replayed" = String))),
        (status = 400, description = "A field, the JSON or the Idempotency-Key is malformed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Replaying a key whose creation was deleted since", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another request with this key was still being written after 5 s", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for a different request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let app = key.app_id;
    let (value, rule) = parse_rule_body(&headers, &body)?;
    let request_key = idempotency::request_key(
        &headers,
        "POST",
        "/v1/triggers",
        &value,
        state.idempotency_retention,
    )?;
    let keyed = state
        .store
        .create_trigger_keyed(app, Uuid::now_v7(), &rule, request_key.as_ref())
        .await?;
    idempotency::answer_create(
        &state.store,
        app,
        request_key.as_ref(),
        keyed,
        StatusCode::CREATED,
        async |trigger| view(&state, trigger).await,
        async |id| {
            state.store.trigger(app, id).await?.ok_or_else(|| {
                Problem::not_found(format!("trigger {id}, created with this key, was deleted"))
            })
        },
    )
    .await
}

/// The app's rules.
#[utoipa::path(
    get,
    path = "/v1/triggers",
    operation_id = "list_triggers",
    tag = "triggers",
    responses((status = 200, body = TriggerList))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<Json<TriggerList>, Problem> {
    let mut triggers = Vec::new();
    for t in state.store.triggers(key.app_id).await? {
        triggers.push(view(&state, t).await?);
    }
    Ok(Json(TriggerList { triggers }))
}

#[utoipa::path(
    get,
    path = "/v1/triggers/{trigger_id}",
    operation_id = "get_trigger",
    tag = "triggers",
    params(("trigger_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = TriggerView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<TriggerView>, Problem> {
    let id = parse_trigger_id(&id)?;
    let t = state
        .store
        .trigger(key.app_id, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no trigger {id} in this app")))?;
    Ok(Json(view(&state, t).await?))
}

/// Replaces a rule (set `enabled: false` to stop it). Timers already
/// pending keep their due time and fire with the new content.
#[utoipa::path(
    put,
    path = "/v1/triggers/{trigger_id}",
    operation_id = "update_trigger",
    tag = "triggers",
    params(("trigger_id" = String, Path, format = Uuid)),
    request_body = TriggerInput,
    responses(
        (status = 200, body = TriggerView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TriggerView>, Problem> {
    let id = parse_trigger_id(&id)?;
    let rule = parse_rule(&headers, &body)?;
    let t = state
        .store
        .update_trigger(key.app_id, id, &rule)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no trigger {id} in this app")))?;
    Ok(Json(view(&state, t).await?))
}

/// Deletes a rule; its pending pushes are not sent.
#[utoipa::path(
    delete,
    path = "/v1/triggers/{trigger_id}",
    operation_id = "delete_trigger",
    tag = "triggers",
    params(("trigger_id" = String, Path, format = Uuid)),
    responses(
        (status = 204),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = parse_trigger_id(&id)?;
    if state.store.delete_trigger(key.app_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no trigger {id} in this app")))
    }
}

#[utoipa::path(
    get,
    path = "/v1/trigger-settings",
    operation_id = "get_trigger_settings",
    tag = "triggers",
    responses((status = 200, body = TriggerSettings))
)]
pub(crate) async fn get_settings(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<Json<TriggerSettings>, Problem> {
    Ok(Json(TriggerSettings {
        quiet_hours: state.store.app_quiet_hours(key.app_id).await?,
    }))
}

/// Sets the app-wide quiet hours for trigger pushes.
#[utoipa::path(
    put,
    path = "/v1/trigger-settings",
    operation_id = "put_trigger_settings",
    tag = "triggers",
    request_body = TriggerSettings,
    responses(
        (status = 200, body = TriggerSettings),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_settings(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TriggerSettings>, Problem> {
    let (_, settings): (_, TriggerSettings) = parse_body(&headers, &body)?;
    state
        .store
        .set_app_quiet_hours(key.app_id, settings.quiet_hours.as_ref())
        .await?;
    Ok(Json(settings))
}
