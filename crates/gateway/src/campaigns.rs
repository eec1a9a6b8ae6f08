//! Campaigns: compose, edit, launch, pause, resume, cancel, watch; audience
//! lists and estimates; the app's campaign send rate.

use crate::auth::ServerKey;
use crate::body::{name_filter_node, parse_body};
use crate::idempotency;
use crate::problem::Problem;
use crate::query::ApiQuery;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use herald_core::audience::{validate_list_id, Audience, AudienceKind};
use herald_core::campaign::{CampaignAction, CampaignInput, CampaignStatus, MAX_RATE_PER_SECOND};
use herald_core::{AppId, DeliveryStatus};
use herald_store::{AudienceList, AudienceScope, Campaign, CampaignRefusal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;
use utoipa::ToSchema;
use uuid::Uuid;

/// How many installations an estimate reads per query.
const ESTIMATE_PAGE: i64 = 5000;
/// The most ids one upload request may carry.
const MAX_UPLOAD_IDS: usize = 1_000_000;

/// A campaign, its definition and its live progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    pub id: Uuid,
    /// The campaign's message (`GET /v1/messages/{id}` lists every device).
    pub message_id: Uuid,
    pub status: CampaignStatus,
    /// Launches and resumes so far.
    pub generation: i64,
    #[serde(flatten)]
    pub definition: CampaignInput,
    /// Ids on the audience list (list audiences).
    pub audience_list_size: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub launched_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub progress: Progress,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    /// Devices the current generation's walk reached: jobs handed to Kafka,
    /// and devices whose delivery was settled before (not sent again).
    pub produced: i64,
    /// Deliveries of the campaign's message with an outcome, from every
    /// generation (the sum of `counts`).
    pub settled: i64,
    /// Produced in the current generation and without an outcome yet. A
    /// resumed or relaunched campaign does not count here the outcomes of
    /// devices its new walk no longer reaches (a token rejected earlier, an
    /// installation opted out since).
    pub pending: i64,
    /// Settled deliveries per status (every status is present).
    pub counts: BTreeMap<String, i64>,
    /// Settled deliveries per platform, then per status.
    pub by_platform: BTreeMap<String, BTreeMap<String, i64>>,
    pub waves_total: i64,
    pub waves_done: i64,
    /// When the next wave is due (local-time campaigns have one per time zone).
    pub next_wave_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignList {
    pub campaigns: Vec<CampaignView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// At most 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `next_before` of the previous page (a campaign id).
    #[param(value_type = Option<uuid::Uuid>)]
    before: Option<String>,
    /// Only campaigns in this status.
    #[param(value_type = Option<herald_core::campaign::CampaignStatus>)]
    status: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Estimate {
    /// Reachable installations that match the audience now.
    pub installations: i64,
    pub by_platform: BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    /// Add to the list instead of replacing it.
    #[serde(default)]
    append: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListUploaded {
    /// Ids on the list now.
    pub audience_list_size: i64,
}

/// The app-wide ceiling shared by all of its campaigns.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignSettings {
    /// Deliveries per second across every campaign of the app; null: none.
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_second: Option<u32>,
}

fn parse_campaign_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::from_str(id).map_err(|_| Problem::invalid_field("campaign_id", "a campaign id is a UUID"))
}

fn parse_campaign(headers: &HeaderMap, body: &Bytes) -> Result<CampaignInput, Problem> {
    Ok(parse_campaign_body(headers, body)?.1)
}

/// The campaign, and the JSON it came as (for an Idempotency-Key's
/// fingerprint).
fn parse_campaign_body(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(serde_json::Value, CampaignInput), Problem> {
    let (value, input): (_, CampaignInput) =
        parse_body(headers, body).map_err(|p| name_filter_node(p, "audience.filter"))?;
    input
        .validate()
        .map_err(|e| Problem::invalid_field(e.field, e.detail))?;
    Ok((value, input))
}

fn refused(id: Uuid, action: CampaignAction, refusal: CampaignRefusal) -> Problem {
    match refusal {
        CampaignRefusal::NotFound => Problem::not_found(format!("no campaign {id} in this app")),
        CampaignRefusal::WrongStatus(s) => Problem::wrong_state(format!(
            "cannot {} a campaign that is {}",
            action.as_str(),
            s.as_str()
        )),
    }
}

async fn view(state: &AppState, c: Campaign) -> Result<CampaignView, Problem> {
    let progress = state.store.campaign_progress(&c).await?;
    let mut counts: BTreeMap<String, i64> = DeliveryStatus::ALL
        .iter()
        .filter(|s| **s != DeliveryStatus::Pending)
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    let mut by_platform: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut settled = 0;
    for (platform, status, n) in &progress.counts {
        if *status == DeliveryStatus::Pending {
            continue;
        }
        settled += n;
        *counts.entry(status.as_str().to_string()).or_default() += n;
        *by_platform
            .entry(platform.as_str().to_string())
            .or_default()
            .entry(status.as_str().to_string())
            .or_default() += n;
    }
    Ok(CampaignView {
        id: c.id,
        message_id: c.message_id.as_uuid(),
        status: c.status,
        generation: c.generation,
        definition: c.input,
        audience_list_size: c.audience_list_size,
        created_at: c.created_at,
        updated_at: c.updated_at,
        launched_at: c.launched_at,
        completed_at: c.completed_at,
        progress: Progress {
            produced: progress.produced,
            settled,
            pending: (progress.produced - progress.settled_in_generation).max(0),
            counts,
            by_platform,
            waves_total: progress.waves_total,
            waves_done: progress.waves_done,
            next_wave_at: progress.next_wave_at,
        },
    })
}

/// Creates a draft campaign.
#[utoipa::path(
    post,
    path = "/v1/campaigns",
    operation_id = "create_campaign",
    tag = "campaigns",
    request_body = CampaignInput,
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Structured-field string, 1 to 255 printable characters; scoped per app. The same key and body replay the first answer (`Idempotent-Replayed: true`); one key names one request"),
    ),
    responses(
        (status = 201, body = CampaignView, headers(("Idempotent-Replayed" = String))),
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
    let (value, input) = parse_campaign_body(&headers, &body)?;
    let request_key = idempotency::request_key(
        &headers,
        "POST",
        "/v1/campaigns",
        &value,
        state.idempotency_retention,
    )?;
    let keyed = state
        .store
        .create_campaign_keyed(app, Uuid::now_v7(), &input, request_key.as_ref())
        .await?;
    idempotency::answer_create(
        &state.store,
        app,
        request_key.as_ref(),
        keyed,
        StatusCode::CREATED,
        async |campaign| view(&state, campaign).await,
        async |id| {
            state.store.campaign(app, id).await?.ok_or_else(|| {
                Problem::not_found(format!("campaign {id}, created with this key, was deleted"))
            })
        },
    )
    .await
}

/// The app's campaigns, newest first.
#[utoipa::path(
    get,
    path = "/v1/campaigns",
    operation_id = "list_campaigns",
    tag = "campaigns",
    params(ListQuery),
    responses(
        (status = 200, body = CampaignList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<CampaignList>, Problem> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(Problem::invalid_field("limit", "1 to 100"));
    }
    let status = q
        .status
        .as_deref()
        .map(CampaignStatus::from_str)
        .transpose()
        .map_err(|d| Problem::invalid_field("status", d))?;
    let before = q
        .before
        .as_deref()
        .map(|b| {
            Uuid::from_str(b).map_err(|_| {
                Problem::invalid_field("before", "pass the `next_before` of the previous page")
            })
        })
        .transpose()?;
    let page = state
        .store
        .campaigns_page(key.app_id, before, status, limit + 1)
        .await?;
    let more = page.len() as i64 > limit;
    let mut campaigns = Vec::new();
    for c in page.into_iter().take(limit as usize) {
        campaigns.push(view(&state, c).await?);
    }
    let next_before = if more {
        campaigns.last().map(|c| c.id.to_string())
    } else {
        None
    };
    Ok(Json(CampaignList {
        campaigns,
        next_before,
    }))
}

/// A campaign with its live progress.
#[utoipa::path(
    get,
    path = "/v1/campaigns/{campaign_id}",
    operation_id = "get_campaign",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    let id = parse_campaign_id(&id)?;
    let campaign = state
        .store
        .campaign(key.app_id, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no campaign {id} in this app")))?;
    Ok(Json(view(&state, campaign).await?))
}

/// Replaces a draft or scheduled campaign's definition.
#[utoipa::path(
    put,
    path = "/v1/campaigns/{campaign_id}",
    operation_id = "update_campaign",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid)),
    request_body = CampaignInput,
    responses(
        (status = 200, body = CampaignView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CampaignView>, Problem> {
    let id = parse_campaign_id(&id)?;
    let input = parse_campaign(&headers, &body)?;
    let campaign = state
        .store
        .update_campaign(key.app_id, id, &input)
        .await?
        .map_err(|r| refused(id, CampaignAction::Update, r))?;
    Ok(Json(view(&state, campaign).await?))
}

/// Deletes a draft, completed or cancelled campaign (its message and
/// deliveries stay).
#[utoipa::path(
    delete,
    path = "/v1/campaigns/{campaign_id}",
    operation_id = "delete_campaign",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid)),
    responses(
        (status = 204),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = parse_campaign_id(&id)?;
    state
        .store
        .delete_campaign(key.app_id, id)
        .await?
        .map_err(|r| refused(id, CampaignAction::Delete, r))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(
    state: AppState,
    app: AppId,
    id: &str,
    action: CampaignAction,
) -> Result<Json<CampaignView>, Problem> {
    let id = parse_campaign_id(id)?;
    let campaign = state
        .store
        .campaign_action(app, id, action, Utc::now())
        .await?
        .map_err(|r| refused(id, action, r))?;
    tracing::info!(campaign_id = %id, action = action.as_str(), status = campaign.status.as_str(), generation = campaign.generation, "campaign action");
    Ok(Json(view(&state, campaign).await?))
}

/// Launches a draft campaign, or launches a completed or cancelled one
/// again: the audience is walked from the start and only devices that never
/// got the message receive it.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{campaign_id}/launch",
    operation_id = "launch_campaign",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn launch(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(state, key.app_id, &id, CampaignAction::Launch).await
}

/// Pauses a scheduled or running campaign within a second; queued jobs are
/// held back by senders.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{campaign_id}/pause",
    operation_id = "pause_campaign",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn pause(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(state, key.app_id, &id, CampaignAction::Pause).await
}

/// Resumes a paused campaign: devices that did not get it yet will.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{campaign_id}/resume",
    operation_id = "resume_campaign",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn resume(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(state, key.app_id, &id, CampaignAction::Resume).await
}

/// Cancels a campaign for good: nothing more is sent, queued jobs are dropped.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{campaign_id}/cancel",
    operation_id = "cancel_campaign",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(state, key.app_id, &id, CampaignAction::Cancel).await
}

/// Uploads the audience list of an `install_ids` or `custom_ids` campaign:
/// `text/plain`, one id per line (a CSV's first column works too). Replaces
/// the list unless `append=true`. Draft and scheduled campaigns only.
#[utoipa::path(
    put,
    path = "/v1/campaigns/{campaign_id}/audience/ids",
    operation_id = "upload_campaign_audience_ids",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid), UploadQuery),
    request_body(content = String, content_type = "text/plain"),
    responses(
        (status = 200, body = ListUploaded),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn upload_ids(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Bytes,
) -> Result<Json<ListUploaded>, Problem> {
    let id = parse_campaign_id(&id)?;
    let campaign = state
        .store
        .campaign(key.app_id, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no campaign {id} in this app")))?;
    if campaign.input.audience.kind == AudienceKind::All {
        return Err(Problem::invalid_field(
            "audience.type",
            "this campaign's audience is `all`; lists are for `install_ids` and `custom_ids`",
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::invalid_field("body", "the list must be UTF-8 text"))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.split(',').next().unwrap_or_default().trim();
        if id.is_empty() {
            continue;
        }
        validate_list_id(id)
            .map_err(|d| Problem::invalid_field(format!("body line {}", n + 1), d))?;
        ids.push(id.to_string());
    }
    if ids.len() > MAX_UPLOAD_IDS {
        return Err(Problem::invalid_field(
            "body",
            format!("at most {MAX_UPLOAD_IDS} ids per request; send more with append=true"),
        ));
    }
    let size = state
        .store
        .upload_audience_ids(key.app_id, id, &ids, !q.append)
        .await?
        .map_err(|r| refused(id, CampaignAction::UploadIds, r))?;
    Ok(Json(ListUploaded {
        audience_list_size: size,
    }))
}

async fn estimate(
    state: &AppState,
    scope: AudienceScope<'_>,
    audience: &Audience,
) -> Result<Estimate, Problem> {
    let mut by_platform: BTreeMap<String, i64> = BTreeMap::new();
    let mut total = 0;
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store
            .audience_page(
                scope,
                &herald_core::campaign::WaveZone::All,
                after.as_deref(),
                ESTIMATE_PAGE,
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.install_id.clone());
        for c in &page {
            if audience.filter.as_ref().is_none_or(|f| f.matches(&c.facts)) {
                total += 1;
                *by_platform
                    .entry(c.platform.as_str().to_string())
                    .or_default() += 1;
            }
        }
    }
    Ok(Estimate {
        installations: total,
        by_platform,
    })
}

/// How many installations a campaign would reach now.
#[utoipa::path(
    get,
    path = "/v1/campaigns/{campaign_id}/estimate",
    operation_id = "estimate_campaign",
    tag = "campaigns",
    params(("campaign_id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = Estimate),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn estimate_campaign(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<Estimate>, Problem> {
    let id = parse_campaign_id(&id)?;
    let campaign = state
        .store
        .campaign(key.app_id, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no campaign {id} in this app")))?;
    let audience = &campaign.input.audience;
    let scope = AudienceScope {
        app: key.app_id,
        kind: audience.kind,
        list: AudienceList::Stored(id),
        replay: None,
    };
    Ok(Json(estimate(&state, scope, audience).await?))
}

/// How many installations an audience (with inline ids, if a list) reaches
/// now: what a composer shows while the audience is being built.
#[utoipa::path(
    post,
    path = "/v1/audiences/estimate",
    operation_id = "estimate_audience",
    tag = "campaigns",
    request_body = Audience,
    responses(
        (status = 200, body = Estimate),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn estimate_audience(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Estimate>, Problem> {
    let (_, audience): (_, Audience) =
        parse_body(&headers, &body).map_err(|p| name_filter_node(p, "filter"))?;
    audience
        .validate()
        .map_err(|(f, d)| Problem::invalid_field(f.trim_start_matches("audience."), d))?;
    let ids = audience.ids.clone().unwrap_or_default();
    let scope = AudienceScope {
        app: key.app_id,
        kind: audience.kind,
        list: AudienceList::Inline(&ids),
        replay: None,
    };
    Ok(Json(estimate(&state, scope, &audience).await?))
}

/// The app's campaign send rate.
#[utoipa::path(
    get,
    path = "/v1/campaign-settings",
    operation_id = "get_campaign_settings",
    tag = "campaigns",
    responses((status = 200, body = CampaignSettings))
)]
pub(crate) async fn get_settings(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<Json<CampaignSettings>, Problem> {
    Ok(Json(CampaignSettings {
        rate_limit_per_second: state.store.app_campaign_rate_limit(key.app_id).await?,
    }))
}

/// Sets the app's campaign send rate, shared by all of its campaigns.
#[utoipa::path(
    put,
    path = "/v1/campaign-settings",
    operation_id = "put_campaign_settings",
    tag = "campaigns",
    request_body = CampaignSettings,
    responses(
        (status = 200, body = CampaignSettings),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_settings(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CampaignSettings>, Problem> {
    let (_, settings): (_, CampaignSettings) = parse_body(&headers, &body)?;
    if let Some(r) = settings.rate_limit_per_second {
        if r == 0 || r > MAX_RATE_PER_SECOND {
            return Err(Problem::invalid_field(
                "rate_limit_per_second",
                format!("1 to {MAX_RATE_PER_SECOND}, or null for no app-wide limit"),
            ));
        }
    }
    state
        .store
        .set_app_campaign_rate_limit(key.app_id, settings.rate_limit_per_second)
        .await?;
    Ok(Json(settings))
}
