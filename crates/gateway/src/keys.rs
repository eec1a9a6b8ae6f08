//! API keys of the calling app: list, create, revoke (server key).

use crate::auth::ServerKey;
use crate::body::parse_body;
use crate::problem::Problem;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use herald_store::{ApiKeyInfo, ApiKeyKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Everything.
    Server,
    /// Register and delete installations only.
    Sdk,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub kind: KeyKind,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub kind: KeyKind,
    /// The secret's first characters.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub id: Uuid,
    pub kind: KeyKind,
    /// Shown once: only a hash is kept.
    pub secret: String,
}

fn kind_of(k: ApiKeyKind) -> KeyKind {
    match k {
        ApiKeyKind::Server => KeyKind::Server,
        ApiKeyKind::Sdk => KeyKind::Sdk,
    }
}

fn view(k: ApiKeyInfo) -> KeyView {
    KeyView {
        id: k.id,
        kind: kind_of(k.kind),
        prefix: k.prefix,
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    }
}

/// The app's keys, revoked ones included; never their secrets.
#[utoipa::path(get, path = "/v1/keys", operation_id = "list_keys", tag = "keys",
    responses((status = 200, body = Vec<KeyView>), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<Json<Vec<KeyView>>, Problem> {
    let keys = state.store.api_keys(key.app_id).await?;
    Ok(Json(keys.into_iter().map(view).collect()))
}

/// A new key for the app; its secret is in this answer only.
///
/// Not idempotent, and an `Idempotency-Key` is refused (400): replaying the
/// answer would mean storing the secret. After a lost answer, list the keys
/// and revoke the one whose secret you never saw.
#[utoipa::path(post, path = "/v1/keys", operation_id = "create_key", tag = "keys", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 400, description = "A field or the JSON is malformed, or an Idempotency-Key was sent", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), Problem> {
    if headers.contains_key(crate::idempotency::HEADER) {
        return Err(Problem::malformed_idempotency_key(
            "creating an API key is not idempotent: its secret is shown once and never stored, so an answer cannot be replayed. Send it without the key; after a lost answer, list the keys (GET /v1/keys) and revoke the one whose secret you never saw",
        ));
    }
    let (_, new): (Value, NewKey) = parse_body(&headers, &body)?;
    let kind = match new.kind {
        KeyKind::Server => ApiKeyKind::Server,
        KeyKind::Sdk => ApiKeyKind::Sdk,
    };
    let created = state.store.create_api_key(key.app_id, kind).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id: created.id,
            kind: new.kind,
            secret: created.secret,
        }),
    ))
}

/// Revokes a key at once; requests with it get 401 from then on.
#[utoipa::path(delete, path = "/v1/keys/{key_id}", operation_id = "revoke_key", tag = "keys",
    params(("key_id" = Uuid, Path)),
    responses((status = 204, description = "Revoked"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(key_id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = Uuid::parse_str(&key_id)
        .map_err(|_| Problem::invalid_field("key_id", "a key id is a UUID"))?;
    if state.store.revoke_api_key(key.app_id, id).await? {
        state.keys.forget_key(id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no live key {id} in this app")))
    }
}
