//! The OpenAPI document (`GET /v1/openapi.json`), generated from the handlers'
//! annotations and the request and response types themselves.

use crate::problem::Problem;
use chrono::{DateTime, Utc};
use herald_core::installation::{ApnsEnvironment, InstallationInput};
use herald_core::payload::{Localized, Notification, Priority};
use herald_core::push::{PushRequest, Targets, TokenTarget};
use herald_core::{DeliveryPolicy, DeliveryStatus, Platform};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

/// The answer to an accepted push.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PushAccepted {
    /// Deterministic with an Idempotency-Key: UUIDv5(app id, key).
    pub message_id: Uuid,
    /// Devices the push will be sent to.
    pub recipients: usize,
    /// Install ids that are unknown, opted out, without a token, or invalidated.
    pub unresolved_install_ids: Vec<String>,
    /// Custom ids with no installation that can receive a push.
    pub unresolved_custom_ids: Vec<String>,
    /// When the push is due, if it was scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
}

/// One device's delivery of a message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    pub delivery_id: Uuid,
    pub message_id: Uuid,
    pub platform: Platform,
    pub token: String,
    pub install_id: Option<String>,
    pub status: DeliveryStatus,
    /// Why it was rejected, failed, expired or is unknown.
    pub reason: Option<String>,
    /// `apns-id`, or the FCM message name.
    pub provider_id: Option<String>,
    pub attempts: i32,
    pub settled_at: Option<DateTime<Utc>>,
}

/// A message and its per-device outcomes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageStatus {
    pub message_id: Uuid,
    /// `transactional`, `campaign` or `trigger`.
    pub kind: String,
    pub delivery_policy: DeliveryPolicy,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub send_at: Option<DateTime<Utc>>,
    /// `scheduled`, `in_progress` (some deliveries pending) or `completed`.
    pub status: String,
    pub recipients: i64,
    /// Deliveries per status (every status is present).
    pub counts: BTreeMap<String, i64>,
    /// Deliveries per platform, then per status.
    pub by_platform: BTreeMap<String, BTreeMap<String, i64>>,
    /// The first deliveries, up to 1000.
    pub deliveries: Vec<DeliveryView>,
    pub deliveries_truncated: bool,
}

/// An installation as stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstallationView {
    pub install_id: String,
    #[serde(flatten)]
    pub installation: InstallationInput,
    /// Set when a provider reported the token permanently invalid.
    pub invalidated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Idempotent push notification delivery. Errors are application/problem+json (RFC 9457).",
    ),
    paths(
        crate::push::create,
        crate::messages::get,
        crate::messages::deliveries,
        crate::messages::put_installation,
        crate::messages::get_installation,
        crate::messages::delete_installation,
        crate::lookup::find_installations,
        crate::lookup::installation_deliveries,
        crate::lookup::stats,
        crate::keys::list,
        crate::keys::create,
        crate::keys::revoke,
        crate::webhook::put,
        crate::webhook::get,
        crate::webhook::delete,
        crate::credentials::put_apns,
        crate::credentials::put_fcm,
        crate::credentials::get,
        crate::credentials::delete_apns,
        crate::credentials::delete_fcm,
        crate::campaigns::create,
        crate::campaigns::list,
        crate::campaigns::get,
        crate::campaigns::update,
        crate::campaigns::delete,
        crate::campaigns::launch,
        crate::campaigns::pause,
        crate::campaigns::resume,
        crate::campaigns::cancel,
        crate::campaigns::upload_ids,
        crate::campaigns::estimate_campaign,
        crate::campaigns::estimate_audience,
        crate::campaigns::get_settings,
        crate::campaigns::put_settings,
        crate::triggers::post_events,
        crate::triggers::create,
        crate::triggers::list,
        crate::triggers::get,
        crate::triggers::update,
        crate::triggers::delete,
        crate::triggers::get_settings,
        crate::triggers::put_settings,
    ),
    components(schemas(
        PushRequest, Targets, TokenTarget, Notification, Localized, Priority, Platform,
        DeliveryPolicy, DeliveryStatus, InstallationInput, ApnsEnvironment, PushAccepted,
        MessageStatus, DeliveryView, InstallationView, Problem, crate::messages::DeliveriesPage,
        crate::keys::KeyKind, crate::keys::NewKey, crate::keys::KeyView, crate::keys::CreatedKey,
        crate::webhook::WebhookInput, crate::webhook::WebhookView,
        herald_providers::ApnsCredentials, herald_providers::FcmCredentials, herald_providers::ServiceAccount,
        crate::credentials::CredentialsView, crate::credentials::ApnsView, crate::credentials::FcmView,
        herald_core::campaign::CampaignInput, herald_core::campaign::Schedule,
        herald_core::campaign::CampaignStatus, herald_core::audience::Audience,
        herald_core::audience::AudienceKind, crate::campaigns::CampaignView,
        crate::campaigns::Progress, crate::campaigns::CampaignList, crate::campaigns::Estimate,
        crate::campaigns::ListUploaded, crate::campaigns::CampaignSettings,
        herald_core::trigger::EventInput, herald_core::trigger::TriggerInput,
        herald_core::trigger::FrequencyCap, herald_core::trigger::QuietHours,
        herald_core::trigger::QuietAction, crate::triggers::EventBatch,
        crate::triggers::EventsAccepted, crate::triggers::TriggerView,
        crate::triggers::TriggerList, crate::triggers::TriggerSettings,
        crate::lookup::InstallationList, crate::lookup::InstallationDeliveries,
        crate::lookup::Stats, crate::lookup::HourStats,
    )),
    modifiers(&BearerKey),
    security(("api_key" = [])),
    tags(
        (name = "push", description = "Transactional push"),
        (name = "messages", description = "Message status and outcomes"),
        (name = "installations", description = "Devices registered by apps"),
        (name = "stats", description = "Delivery counts per hour and recent failures"),
        (name = "keys", description = "The app's API keys"),
        (name = "webhook", description = "Outcome events posted to the app"),
        (name = "credentials", description = "The app's APNs and FCM credentials (write-only secrets)"),
        (name = "triggers", description = "Trigger campaigns: events in, rules, delays, cancel events, caps, quiet hours"),
        (name = "campaigns", description = "Campaigns: audiences, schedules, launch, pause, resume, cancel, progress"),
    )
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub(crate) async fn openapi_json() -> axum::Json<Value> {
    axum::Json(document())
}

/// The views of stored things: their input's fields, flattened, and the
/// fields the server adds.
const STORED_VIEWS: [&str; 3] = ["InstallationView", "CampaignView", "TriggerView"];

/// The OpenAPI document as served. utoipa writes a view that flattens an
/// input as `allOf` of the input's schema, which refuses unknown fields
/// (`additionalProperties: false`, right for a request), and the fields the
/// server adds: no response could satisfy both, and generated clients
/// rejected every installation, campaign and trigger. Each such view is
/// merged into one object schema here.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    for name in STORED_VIEWS {
        merge_all_of(&mut doc, name);
    }
    add_shared_responses(&mut doc);
    doc
}

/// The operations an SDK key may call; every other one answers it 403.
const SDK_KEY_OPERATIONS: [(&str, &str); 3] = [
    ("put", "/v1/installations/{install_id}"),
    ("delete", "/v1/installations/{install_id}"),
    ("post", "/v1/events"),
];

/// The answers the gateway's layers give on every operation (the key check,
/// the rate limit, the request deadline, PostgreSQL away; the body limit and
/// JSON parsing where there is a body; parameter parsing where there are
/// parameters), added where an operation does not state them itself, so a
/// generated client knows every status it can get.
fn add_shared_responses(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, operations) in paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for (method, operation) in operations.iter_mut() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let has_body = operation.get("requestBody").is_some();
            let has_parameters = operation
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty());
            let sdk_allowed = SDK_KEY_OPERATIONS.contains(&(method.as_str(), path.as_str()));
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| problem_response(description));
            };
            if has_body || has_parameters {
                add("400", "A field, a parameter or the JSON is malformed or out of range; `field` names it");
            }
            add("401", "No key, or an unknown or revoked one");
            if !sdk_allowed {
                add("403", "An SDK key: this operation takes a server key");
            }
            add("408", "The request took longer than the gateway's deadline before its write began; nothing was written");
            if has_body {
                add("413", "The body is over the gateway's limit");
                add("415", "A Content-Type other than JSON");
            }
            add(
                "429",
                "This key's requests per second are used up (`Retry-After` says when to try again)",
            );
            add("503", "PostgreSQL is unreachable; nothing was written");
            if let Some(limited) = responses.get_mut("429") {
                limited["headers"] = serde_json::json!({
                    "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
                });
            }
        }
    }
}

fn problem_response(description: &str) -> Value {
    serde_json::json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn merge_all_of(doc: &mut Value, name: &str) {
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let Some(parts) = schemas
        .get(name)
        .and_then(|v| v.get("allOf"))
        .and_then(Value::as_array)
        .cloned()
    else {
        return;
    };
    let mut properties = serde_json::Map::new();
    let mut required: Vec<Value> = Vec::new();
    for part in parts {
        let part = match part.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/components/schemas/")
                .and_then(|n| schemas.get(n))
                .cloned()
                .unwrap_or_default(),
            None => part,
        };
        if let Some(p) = part.get("properties").and_then(Value::as_object) {
            properties.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for r in part
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !required.contains(r) {
                required.push(r.clone());
            }
        }
    }
    let mut merged = serde_json::json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        merged["required"] = Value::Array(required);
    }
    if let Some(d) = schemas
        .get(name)
        .and_then(|v| v.get("description"))
        .cloned()
    {
        merged["description"] = d;
    }
    schemas.insert(name.to_string(), merged);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_views_are_one_object_with_the_inputs_fields_and_the_servers() {
        let doc = document();
        for (name, input_field, server_field) in [
            ("InstallationView", "platform", "created_at"),
            ("CampaignView", "name", "progress"),
            ("TriggerView", "entry_event", "timers"),
        ] {
            let view = &doc["components"]["schemas"][name];
            assert!(view.get("allOf").is_none(), "{name}: {view}");
            assert!(view.get("additionalProperties").is_none(), "{name}: {view}");
            assert!(
                view["properties"].get(input_field).is_some(),
                "{name}: {view}"
            );
            assert!(
                view["properties"].get(server_field).is_some(),
                "{name}: {view}"
            );
        }
    }
}

#[cfg(test)]
mod shared_responses {
    use super::document;

    #[test]
    fn every_operation_states_what_the_layers_answer() {
        let doc = document();
        let op = |method: &str, path: &str| doc["paths"][path][method].clone();
        let statuses = |method: &str, path: &str| -> Vec<String> {
            op(method, path)["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default()
        };
        for status in ["400", "401", "403", "408", "413", "415", "429", "503"] {
            assert!(
                statuses("post", "/v1/campaigns").contains(&status.to_string()),
                "{status}"
            );
        }
        let events = statuses("post", "/v1/events");
        assert!(
            !events.contains(&"403".to_string()),
            "an SDK key may post events"
        );
        let list = statuses("get", "/v1/triggers");
        assert!(!list.contains(&"413".to_string()), "no body, no 413");
        assert!(
            !list.contains(&"400".to_string()),
            "nothing to be malformed"
        );
        let id = &op("get", "/v1/campaigns/{campaign_id}")["parameters"][0]["schema"];
        assert_eq!(id["format"], "uuid", "{id}");
    }
}
