//! Transactional pushes: clients POST /v1/push with Idempotency-Keys as fast
//! as the gateway takes them; optionally every request is sent several times
//! (a resubmission storm), and the extra deliveries are counted (must be 0).

use crate::procstat::ProcStat;
use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use herald_tests::HeraldProcess;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Settings {
    /// Names the run's flame graph.
    pub profile: &'static str,
    pub requests: usize,
    pub recipients: usize,
    pub concurrency: usize,
    pub copies: usize,
}

struct Answer {
    status: u16,
    latency: Duration,
    /// When the answer arrived (wall clock, to compare with the simulator's).
    at: chrono::DateTime<chrono::Utc>,
    message: Option<String>,
}

fn token(n: usize) -> (String, String) {
    if n.is_multiple_of(2) {
        ("ios".into(), format!("d{n:063x}"))
    } else {
        ("android".into(), format!("fcm-t{n}"))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The headline figure, for comparisons made in the same run.
pub struct Summary {
    pub deliveries_per_second: f64,
    pub requests_per_second: f64,
    /// 202 latency.
    pub p99_ms: f64,
    pub duplicates: u64,
    /// Deliveries owed that the simulators never accepted.
    pub lost: u64,
    pub sender_peak_rss_mb: f64,
}

pub async fn run(s: Settings) -> Result<Summary> {
    if s.requests == 0 || s.recipients == 0 || s.concurrency == 0 || s.copies == 0 {
        bail!("--requests, --recipients, --concurrency and --copies must be positive");
    }
    let env = crate::start_env(
        "benchtx",
        &[
            ("HERALD_LOG", "warn"),
            ("HERALD_POSTGRES__MAX_CONNECTIONS", "32"),
            ("HERALD_GATEWAY__RATE_LIMIT_PER_SECOND", "0"),
            // Batches and requests in flight: the defaults (see
            // CAMPAIGN_SETTINGS).
            ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "10000"),
            ("HERALD_SENDER__LEASE_MS", "60000"),
        ],
    )
    .await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let base = gateway.url.clone().context("gateway url")?;
    let sender = env.sender().await;
    crate::warm_up(&env, &base, &app.server_key).await?;
    let procs: Vec<&HeraldProcess> = vec![&gateway, &sender];
    let before: Vec<ProcStat> = procs.iter().map(|p| ProcStat::of(p)).collect();
    let profile = crate::profile::Profile::start(s.profile);

    // Every copy of request i carries the same key and body.
    let bodies: Vec<Value> = (0..s.requests)
        .map(|i| {
            let tokens: Vec<Value> = (0..s.recipients)
                .map(|j| {
                    let (platform, token) = token(i * s.recipients + j);
                    json!({"platform": platform, "token": token})
                })
                .collect();
            json!({"to": {"tokens": tokens}, "notification": {"title": format!("Order {i}")}})
        })
        .collect();
    let order: Vec<(usize, usize)> = (0..s.copies)
        .flat_map(|c| (0..s.requests).map(move |i| (i, c)))
        .collect();
    let started = Instant::now();
    let results: Vec<Answer> = stream::iter(order)
        .map(|(i, _)| {
            let (env, base, key, body) = (&env, &base, &app.server_key, &bodies[i]);
            async move {
                let t = Instant::now();
                let r = env
                    .http
                    .post(format!("{base}/v1/push"))
                    .bearer_auth(key)
                    .header("Idempotency-Key", format!("\"bench-{i}\""))
                    .json(body)
                    .send()
                    .await;
                let latency = t.elapsed();
                let at = chrono::Utc::now();
                match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let v: Value = r.json().await.unwrap_or_default();
                        let message = v["message_id"].as_str().map(str::to_string);
                        Answer {
                            status,
                            latency,
                            at,
                            message,
                        }
                    }
                    Err(_) => Answer {
                        status: 0,
                        latency,
                        at,
                        message: None,
                    },
                }
            }
        })
        .buffer_unordered(s.concurrency)
        .collect()
        .await;
    let sending = started.elapsed();
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for r in &results {
        *by_status.entry(r.status).or_default() += 1;
    }
    let mut latencies: Vec<Duration> = results
        .iter()
        .filter(|r| r.status == 202)
        .map(|r| r.latency)
        .collect();
    latencies.sort();
    // When each message was first accepted (its first 202).
    let mut accepted_at: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for r in results.iter().filter(|r| r.status == 202) {
        if let Some(m) = &r.message {
            let e = accepted_at.entry(m.clone()).or_insert(r.at);
            *e = (*e).min(r.at);
        }
    }
    let accepted_messages: std::collections::HashSet<&String> = accepted_at.keys().collect();
    if accepted_messages.len() != s.requests {
        bail!(
            "{} distinct messages for {} requests: {by_status:?}",
            accepted_messages.len(),
            s.requests
        );
    }

    let owed = (s.requests * s.recipients) as u64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let accepted = env.sim_stats().await["accepted"].as_u64().unwrap_or(0);
        if accepted > owed {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {accepted} of {owed} deliveries arrived");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered_in = started.elapsed();
    let after: Vec<ProcStat> = procs.iter().map(|p| ProcStat::of(p)).collect();
    let mut roles = procs.clone();
    roles.extend(env.sim.as_ref());
    profile.finish(&roles).await;
    // Accept → device: each delivery's simulator time against its
    // message's first 202 (both clocks are this machine's).
    let record = env.sim_deliveries().await;
    let stats = env.sim_stats().await;
    let mut e2e: Vec<Duration> = record
        .iter()
        .filter_map(|d| {
            let accepted = accepted_at.get(d["collapse_id"].as_str()?)?;
            let at = chrono::DateTime::parse_from_rfc3339(d["received_at"].as_str()?).ok()?;
            (at.with_timezone(&chrono::Utc) - *accepted).to_std().ok()
        })
        .collect();
    e2e.sort();

    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "\nTransactional: {} requests × {} recipient(s), each sent {} time(s), {} concurrent clients, {build} build\n",
        s.requests, s.recipients, s.copies, s.concurrency
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| requests answered per second | {:.0} |",
        results.len() as f64 / sending.as_secs_f64()
    );
    println!("| answers by status | {by_status:?} |");
    println!(
        "| 202 latency p50 / p99 / p999 | {:.1} / {:.1} / {:.1} ms |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999)
    );
    println!(
        "| deliveries per second (first request → last delivery) | {:.0} |",
        owed as f64 / delivered_in.as_secs_f64()
    );
    println!(
        "| accepted → delivered, p50 / p99 | {:.0} / {:.0} ms |",
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99)
    );
    println!(
        "| deliveries owed / accepted by the simulators | {owed} / {} |",
        stats["accepted"].as_u64().unwrap_or(0).saturating_sub(1)
    );
    println!("| extra deliveries (must be 0) | {} |", stats["duplicates"]);
    crate::procstat::print_processes(&procs, &before, &after, owed);
    let sender_peak_rss_mb = after[1].peak_rss_mb;
    drop(procs);
    env.finish().await;
    Ok(Summary {
        deliveries_per_second: owed as f64 / delivered_in.as_secs_f64(),
        requests_per_second: results.len() as f64 / sending.as_secs_f64(),
        p99_ms: percentile(&latencies, 0.99),
        duplicates: stats["duplicates"].as_u64().unwrap_or(0),
        lost: owed.saturating_sub(stats["accepted"].as_u64().unwrap_or(0).saturating_sub(1)),
        sender_peak_rss_mb,
    })
}
