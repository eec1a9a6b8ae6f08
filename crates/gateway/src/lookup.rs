//! Finding things an operator is asked about: a user's or a token's
//! installations, an installation's recent deliveries, and the app's delivery
//! counts per hour with its latest failures (server key).

use crate::api::{DeliveryView, InstallationView};
use crate::auth::ServerKey;
use crate::messages::{delivery_view, installation_view};
use crate::problem::Problem;
use crate::query::ApiQuery;
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Duration, DurationRound, Utc};
use herald_core::DeliveryStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const INSTALLATIONS_MAX: i64 = 100;
const DELIVERIES_MAX: i64 = 100;
const FAILURES_LISTED: i64 = 20;
const STATS_HOURS_MAX: i64 = 24 * 7;

#[derive(Debug, Deserialize)]
pub(crate) struct FindQuery {
    custom_id: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstallationList {
    pub installations: Vec<InstallationView>,
}

/// The installations of a user (`custom_id`) or the one holding a push
/// token (`token`); exactly one of the two.
#[utoipa::path(get, path = "/v1/installations", operation_id = "find_installations", tag = "installations",
    params(("custom_id" = Option<String>, Query), ("token" = Option<String>, Query)),
    responses((status = 200, body = InstallationList), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn find_installations(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    ApiQuery(query): ApiQuery<FindQuery>,
) -> Result<Json<InstallationList>, Problem> {
    let found = match (query.custom_id.as_deref(), query.token.as_deref()) {
        (Some(custom_id), None) if !custom_id.is_empty() => {
            state
                .store
                .installations_of_custom_id(key.app_id, custom_id, INSTALLATIONS_MAX)
                .await?
        }
        (None, Some(token)) if !token.is_empty() => {
            state
                .store
                .installations_with_token(key.app_id, token)
                .await?
        }
        (Some(_), Some(_)) => {
            return Err(Problem::invalid_field(
                "token",
                "give either custom_id or token, not both",
            ))
        }
        _ => {
            return Err(Problem::invalid_field(
                "custom_id",
                "give a custom_id or a token to look installations up by",
            ))
        }
    };
    Ok(Json(InstallationList {
        installations: found.into_iter().map(installation_view).collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct LimitQuery {
    limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstallationDeliveries {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

/// An installation's latest deliveries, newest first (`limit`: 1 to 100,
/// default 20).
#[utoipa::path(get, path = "/v1/installations/{install_id}/deliveries", operation_id = "installation_deliveries", tag = "installations",
    params(("install_id" = String, Path, min_length = 1, max_length = 128), ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "At most 100 (default 20).")),
    responses((status = 200, body = InstallationDeliveries), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn installation_deliveries(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(install_id): Path<String>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> Result<Json<InstallationDeliveries>, Problem> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=DELIVERIES_MAX).contains(&limit) {
        return Err(Problem::invalid_field(
            "limit",
            format!("limit is 1 to {DELIVERIES_MAX}"),
        ));
    }
    if state
        .store
        .installation(key.app_id, &install_id)
        .await?
        .is_none()
    {
        return Err(Problem::not_found(format!(
            "no installation `{install_id}` in this app"
        )));
    }
    let rows = state
        .store
        .installation_deliveries(key.app_id, &install_id, limit)
        .await?;
    Ok(Json(InstallationDeliveries {
        deliveries: rows.iter().map(delivery_view).collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatsQuery {
    hours: Option<i64>,
}

/// Deliveries settled in one hour, per status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HourStats {
    /// The hour's start (UTC).
    pub hour: DateTime<Utc>,
    /// Every settled status is present.
    pub counts: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub since: DateTime<Utc>,
    /// One entry per hour, oldest first, hours without deliveries included.
    pub hours: Vec<HourStats>,
    /// Per status over the whole window.
    pub totals: BTreeMap<String, i64>,
    /// Deliveries of the messages accepted in the window that are waiting
    /// for an outcome now.
    pub pending: i64,
    /// The latest deliveries in the window that ended other than delivered.
    pub recent_failures: Vec<DeliveryView>,
}

const SETTLED: [DeliveryStatus; 5] = [
    DeliveryStatus::Delivered,
    DeliveryStatus::Rejected,
    DeliveryStatus::Unknown,
    DeliveryStatus::Expired,
    DeliveryStatus::Failed,
];

fn zeroes() -> BTreeMap<String, i64> {
    SETTLED
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect()
}

/// The app's deliveries per hour over the last `hours` (1 to 168, default
/// 24), totals per outcome, and the latest failures.
#[utoipa::path(get, path = "/v1/stats", operation_id = "stats", tag = "stats",
    params(("hours" = Option<i64>, Query, minimum = 1, maximum = 168, description = "1 to 168 (default 24).")),
    responses((status = 200, body = Stats), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Json<Stats>, Problem> {
    let hours = query.hours.unwrap_or(24);
    if !(1..=STATS_HOURS_MAX).contains(&hours) {
        return Err(Problem::invalid_field(
            "hours",
            format!("hours is 1 to {STATS_HOURS_MAX}"),
        ));
    }
    let now = Utc::now();
    let current_hour = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let since = current_hour - Duration::hours(hours - 1);
    let counts = state
        .store
        .hourly_delivery_counts(key.app_id, since)
        .await?;
    let mut per_hour: BTreeMap<DateTime<Utc>, BTreeMap<String, i64>> = (0..hours)
        .map(|h| (since + Duration::hours(h), zeroes()))
        .collect();
    let mut totals = zeroes();
    for c in counts {
        let status = c.status.as_str().to_string();
        *totals.entry(status.clone()).or_default() += c.count;
        *per_hour
            .entry(c.hour)
            .or_insert_with(zeroes)
            .entry(status)
            .or_default() += c.count;
    }
    let pending = state
        .store
        .pending_delivery_count(key.app_id, since)
        .await?;
    let failures = state
        .store
        .recent_failures(key.app_id, since, FAILURES_LISTED)
        .await?;
    Ok(Json(Stats {
        since,
        hours: per_hour
            .into_iter()
            .map(|(hour, counts)| HourStats { hour, counts })
            .collect(),
        totals,
        pending,
        recent_failures: failures.iter().map(delivery_view).collect(),
    }))
}
