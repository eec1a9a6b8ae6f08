//! Every process's operations endpoint (`metrics.listen`): `/metrics` for
//! Prometheus, `/healthz` (the process runs: liveness) and `/readyz` (every
//! dependency the process's roles use answers: readiness).

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use herald_config::Config;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Map, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long one dependency may take to answer a readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The dependencies `/readyz` checks; roles add theirs as they start.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(&'static str, Check)>>>,
    /// Set once every role of the process has started.
    started: Arc<std::sync::atomic::AtomicBool>,
}

impl Readiness {
    /// Adds a check once per name (several roles of a process share one).
    pub fn add<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let Ok(mut checks) = self.checks.write() else {
            return;
        };
        if checks.iter().any(|(n, _)| *n == name) {
            return;
        }
        checks.push((name, Arc::new(move || Box::pin(check()))));
    }

    /// Every role has started: readiness now depends on the checks alone.
    pub fn started(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Each check's answer; ready once started and when all pass.
    pub async fn check(&self) -> (bool, Map<String, Value>) {
        let checks: Vec<(&'static str, Check)> =
            self.checks.read().map(|c| c.clone()).unwrap_or_default();
        let answers = futures::future::join_all(checks.iter().map(|(_, check)| async move {
            match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer in {CHECK_TIMEOUT:?}")),
            }
        }))
        .await;
        let mut ready = self.started.load(std::sync::atomic::Ordering::SeqCst);
        let mut out = Map::new();
        if !ready {
            out.insert("roles".into(), "starting".into());
        }
        for ((name, _), answer) in checks.iter().zip(answers) {
            ready &= answer.is_ok();
            out.insert(
                name.to_string(),
                match answer {
                    Ok(()) => "ok".into(),
                    Err(e) => e.into(),
                },
            );
        }
        (ready, out)
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// Installs the metrics recorder and, when `metrics.listen` is set, serves
/// the operations endpoint there.
pub async fn install(config: &Config, readiness: Readiness) -> Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    if config.metrics.listen.trim().is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = config.metrics.listen.parse().with_context(|| {
        format!(
            "metrics.listen `{}` is not an address",
            config.metrics.listen
        )
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("serving metrics on {addr}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(OpsState {
            metrics: handle,
            readiness,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the operations endpoint stopped");
        }
    });
    crate::roles::announce("metrics", &format!("http://{addr}/metrics"));
    Ok(())
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    let (ready, checks) = state.readiness.check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "checks": checks})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_check_passes() {
        let r = Readiness::default();
        r.add("postgres", || async { Ok(()) });
        assert!(!r.check().await.0, "roles still starting: not ready");
        r.started();
        assert!(r.check().await.0);
        r.add("redis", || async { Err("refused".to_string()) });
        let (ready, checks) = r.check().await;
        assert!(!ready);
        assert_eq!(checks["redis"], "refused");
        r.add("redis", || async { Ok(()) });
        assert!(!r.check().await.0, "a name is added once");
    }
}
