use crate::problem::Problem;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use herald_ledger::RateDecision;
use herald_store::{ApiKeyKind, AuthenticatedKey};

/// A request authenticated with the app's server key.
pub struct ServerKey(pub AuthenticatedKey);

/// A request authenticated with either key (installations, events).
pub struct AnyKey(pub AuthenticatedKey);

async fn authenticate(parts: &Parts, state: &AppState) -> Result<AuthenticatedKey, Problem> {
    // The dashboard calling for a logged-in operator: only server-side code
    // can put this extension on a request. Operators are not rate limited
    // per key; their pages make a handful of calls.
    if let Some(acting) = parts.extensions.get::<herald_dashboard::ActingOperator>() {
        return Ok(AuthenticatedKey {
            key_id: acting.operator_id,
            app_id: acting.app_id,
            kind: ApiKeyKind::Server,
        });
    }
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("send `Authorization: Bearer <API key>`"))?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Problem::unauthorized("the Authorization header must be `Bearer <API key>`")
        })?;
    let key = state
        .keys
        .authenticate(secret)
        .await?
        .ok_or_else(|| Problem::unauthorized("this API key is unknown or revoked"))?;
    if let Some(limiter) = &state.limiter {
        match limiter
            .hit(&key.key_id.to_string(), state.rate_limit_per_second)
            .await
        {
            Ok(RateDecision::Allow) => {}
            Ok(RateDecision::Limited(wait)) => {
                return Err(Problem::rate_limited(wait.as_secs_f64().ceil() as u64));
            }
            // A rate limit is a courtesy; Redis being away must not stop pushes.
            Err(e) => tracing::warn!(error = %e, "rate limiter unavailable; request allowed"),
        }
    }
    Ok(key)
}

impl FromRequestParts<AppState> for ServerKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let key = authenticate(parts, state).await?;
        if key.kind != ApiKeyKind::Server {
            return Err(Problem::forbidden(
                "an SDK key can register installations and post events only; use the server key",
            ));
        }
        Ok(ServerKey(key))
    }
}

impl FromRequestParts<AppState> for AnyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        Ok(AnyKey(authenticate(parts, state).await?))
    }
}
