//! Isolation: transactional pushes sent at a steady rate, first with nothing
//! else going on, then while a campaign to a million devices is being sent.
//! A push must not queue behind campaign jobs: its accepted → delivered p99
//! during the campaign, divided by the same without it, is the figure.

use crate::{create_campaign, launch_campaign, seed_installations, warm_up, CAMPAIGN_SETTINGS};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use herald_tests::TestEnv;
use serde_json::json;
use std::time::{Duration, Instant};

pub struct Settings {
    pub installations: i64,
    /// Pushes in each of the two phases.
    pub pushes: usize,
    /// Pushes per second.
    pub rate: u32,
}

/// Accepted → delivered of one phase's pushes, in milliseconds.
pub struct Phase {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub struct Isolation {
    pub quiet: Phase,
    pub busy: Phase,
    /// Devices of the campaign the simulators had accepted when the busy
    /// phase began and when it ended: the campaign was going out throughout.
    pub campaign_sent: (u64, u64),
    pub duplicates: u64,
    pub sender_peak_rss_mb: f64,
}

impl Isolation {
    pub fn ratio(&self) -> f64 {
        self.busy.p99_ms / self.quiet.p99_ms.max(1e-9)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Sends `s.pushes` single-device pushes at `s.rate` per second (tokens
/// numbered from `first`), then waits for each one's outcome: accepted is
/// the 202's arrival, delivered the sender's settle time (the provider's
/// answer), both on this machine's clock.
async fn phase(env: &TestEnv, base: &str, key: &str, s: &Settings, first: usize) -> Result<Phase> {
    let every = Duration::from_secs_f64(1.0 / f64::from(s.rate.max(1)));
    let start = tokio::time::Instant::now();
    // Each push leaves when it is due, whatever the ones before are doing.
    let answered: Vec<(u16, serde_json::Value, DateTime<Utc>)> = futures::stream::iter(
        first..first + s.pushes,
    )
    .then(|n| async move {
        let due = start + every * u32::try_from(n - first).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due).await;
        n
    })
    .map(|n| async move {
        let body = json!({"to": {"tokens": [{"platform": "ios", "token": format!("c{n:063x}")}]},
                                  "notification": {"title": "isolation"}});
        let (status, answer) = env.push(base, key, None, &body).await;
        (status, answer, Utc::now())
    })
    .buffer_unordered(256)
    .collect()
    .await;
    let mut accepted: Vec<(String, DateTime<Utc>)> = Vec::new();
    for (status, answer, at) in answered {
        if status != 202 {
            bail!("a push was refused: {status} {answer}");
        }
        accepted.push((
            answer["message_id"]
                .as_str()
                .context("message id")?
                .to_string(),
            at,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut latencies = Vec::with_capacity(accepted.len());
    for (id, at) in &accepted {
        loop {
            let (_, m) = env
                .api("GET", &format!("{base}/v1/messages/{id}"), key, None)
                .await;
            let settled = m["deliveries"][0]["settled_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            if let Some(settled) = settled {
                if m["deliveries"][0]["status"] != "delivered" {
                    bail!("push {id} ended {}", m["deliveries"][0]);
                }
                latencies.push(
                    (settled.with_timezone(&Utc) - *at)
                        .num_microseconds()
                        .unwrap_or(0) as f64
                        / 1000.0,
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("push {id} was not delivered within ten minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Phase {
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    })
}

pub async fn run(s: Settings) -> Result<Isolation> {
    if s.installations <= 0 || s.pushes == 0 {
        bail!("--installations and --pushes must be positive");
    }
    let env = crate::start_env("bench", &CAMPAIGN_SETTINGS).await;
    let app = env.create_app().await;
    seed_installations(&env, &app.id, s.installations).await?;
    let gateway = env.gateway().await;
    let base = gateway.url.clone().context("gateway url")?;
    let sender = env.sender().await;
    let _scheduler = env.scheduler().await;
    warm_up(&env, &base, &app.server_key).await?;

    let quiet = phase(&env, &base, &app.server_key, &s, 0).await?;

    let id = create_campaign(&env, &base, &app.server_key, "bulk").await?;
    launch_campaign(&env, &base, &app.server_key, &id).await?;
    // The campaign is in full flow (its lane has a backlog) before the
    // pushes start.
    let accepted = || async { env.sim_stats().await["accepted"].as_u64().unwrap_or(0) };
    let flowing = (s.pushes as u64 + 1) + 50_000.min(s.installations as u64 / 10);
    let waited = Instant::now();
    while accepted().await < flowing {
        if waited.elapsed() > Duration::from_secs(120) {
            bail!("the campaign did not start flowing within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = accepted().await;
    let busy = phase(&env, &base, &app.server_key, &s, s.pushes).await?;
    let after = accepted().await;
    let sender_peak_rss_mb = crate::procstat::ProcStat::of(&sender).peak_rss_mb;
    let campaign_total = s.installations as u64;
    let base_count = 2 * s.pushes as u64 + 1;
    let campaign_sent = (
        before.saturating_sub(s.pushes as u64 + 1),
        after.saturating_sub(base_count),
    );
    if campaign_sent.1 >= campaign_total {
        bail!(
            "the campaign ended before the pushes did ({} of {campaign_total} sent): measure with more installations",
            campaign_sent.1
        );
    }
    let (_, cancelled) = env
        .api(
            "POST",
            &format!("{base}/v1/campaigns/{id}/cancel"),
            &app.server_key,
            None,
        )
        .await;
    let duplicates = env.sim_stats().await["duplicates"].as_u64().unwrap_or(0);
    let result = Isolation {
        quiet,
        busy,
        campaign_sent,
        duplicates,
        sender_peak_rss_mb,
    };
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "\nIsolation: {} pushes at {}/s alone, then as many while a campaign to {} devices is sent ({}), {build} build\n",
        s.pushes, s.rate, s.installations, cancelled["status"]
    );
    println!("| accepted → delivered | alone | during the campaign |");
    println!("|---|---|---|");
    println!(
        "| p50 | {:.0} ms | {:.0} ms |",
        result.quiet.p50_ms, result.busy.p50_ms
    );
    println!(
        "| p99 | {:.0} ms | {:.0} ms |",
        result.quiet.p99_ms, result.busy.p99_ms
    );
    println!(
        "| max | {:.0} ms | {:.0} ms |",
        result.quiet.max_ms, result.busy.max_ms
    );
    println!(
        "\np99 during ÷ alone: {:.2}; campaign devices sent while the pushes went: {} → {}; duplicates: {}",
        result.ratio(),
        result.campaign_sent.0,
        result.campaign_sent.1,
        result.duplicates
    );
    env.finish().await;
    Ok(result)
}
