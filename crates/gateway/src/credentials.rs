//! The app's provider credentials (server key): written, replaced, removed;
//! never read back beyond their identifying fields.

use crate::auth::ServerKey;
use crate::body::parse_body;
use crate::problem::Problem;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herald_providers::{ApnsCredentials, FcmCredentials};
use serde::Serialize;
use serde_json::Value;

/// What identifies an app's credentials, without their secrets.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct CredentialsView {
    pub apns: Option<ApnsView>,
    pub fcm: Option<FcmView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApnsView {
    /// `token` or `certificate`.
    pub auth: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub team_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    pub topic: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FcmView {
    pub project_id: String,
    pub client_email: String,
}

fn apns_view(c: &ApnsCredentials) -> ApnsView {
    ApnsView {
        auth: if c.certificate_pem.is_some() {
            "certificate"
        } else {
            "token"
        }
        .into(),
        team_id: c.team_id.clone(),
        key_id: c.key_id.clone(),
        topic: c.topic.clone(),
    }
}

fn fcm_view(c: &FcmCredentials) -> FcmView {
    FcmView {
        project_id: c.project_id.clone(),
        client_email: c.service_account.client_email.clone(),
    }
}

/// Sets the app's APNs token-auth key (a .p8 key). Stored encrypted.
#[utoipa::path(put, path = "/v1/credentials/apns", tag = "credentials", operation_id = "set_apns_credentials",
    request_body = ApnsCredentials,
    responses((status = 200, body = ApnsView), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_apns(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ApnsView>, Problem> {
    let (value, creds): (Value, ApnsCredentials) = parse_body(&headers, &body)?;
    creds
        .check()
        .map_err(|(f, d)| Problem::invalid_field(f, d))?;
    state
        .store
        .put_credentials(key.app_id, "apns", &value)
        .await?;
    Ok(Json(apns_view(&creds)))
}

/// Sets the app's FCM project and service account. Stored encrypted.
#[utoipa::path(put, path = "/v1/credentials/fcm", tag = "credentials", operation_id = "set_fcm_credentials",
    request_body = FcmCredentials,
    responses((status = 200, body = FcmView), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_fcm(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<FcmView>, Problem> {
    let (_, creds): (Value, FcmCredentials) = parse_body(&headers, &body)?;
    creds
        .check()
        .map_err(|(f, d)| Problem::invalid_field(f, d))?;
    // Stored as parsed: unknown fields of the key file are not kept.
    let value = serde_json::to_value(&creds).map_err(|_| Problem::internal())?;
    state
        .store
        .put_credentials(key.app_id, "fcm", &value)
        .await?;
    Ok(Json(fcm_view(&creds)))
}

/// Which credentials the app has (never the keys themselves).
#[utoipa::path(get, path = "/v1/credentials", tag = "credentials", operation_id = "get_credentials",
    responses((status = 200, body = CredentialsView)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<Json<CredentialsView>, Problem> {
    let stored = state.store.credentials(key.app_id).await?;
    Ok(Json(CredentialsView {
        apns: stored
            .apns
            .and_then(|v| serde_json::from_value::<ApnsCredentials>(v).ok())
            .map(|c| apns_view(&c)),
        fcm: stored
            .fcm
            .and_then(|v| serde_json::from_value::<FcmCredentials>(v).ok())
            .map(|c| fcm_view(&c)),
    }))
}

/// Removes the app's APNs credentials.
#[utoipa::path(delete, path = "/v1/credentials/apns", tag = "credentials", operation_id = "delete_apns_credentials",
    responses((status = 204, description = "Removed"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_apns(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<StatusCode, Problem> {
    delete(&state, key.app_id, "apns").await
}

/// Removes the app's FCM credentials.
#[utoipa::path(delete, path = "/v1/credentials/fcm", tag = "credentials", operation_id = "delete_fcm_credentials",
    responses((status = 204, description = "Removed"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_fcm(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<StatusCode, Problem> {
    delete(&state, key.app_id, "fcm").await
}

async fn delete(
    state: &AppState,
    app: herald_core::AppId,
    provider: &str,
) -> Result<StatusCode, Problem> {
    if state.store.delete_credentials(app, provider).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "this app has no {provider} credentials"
        )))
    }
}
