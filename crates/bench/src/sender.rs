//! The sender alone: one sender (without the recorder) and N delivery jobs
//! fed to the deliveries topic ahead of it, timed from the simulator's first
//! accepted delivery to its last. `dedupe` runs it twice, with the Redis
//! ledger and without (`sender.dedupe = false`), and prints what the ledger
//! costs.

use crate::procstat::ProcStat;
use anyhow::{bail, Context, Result};
use herald_core::ids::DeliveryTarget;
use herald_core::{AppId, DeliveryId, DeliveryJob, DeliveryPolicy, MessageId, Platform};
use herald_tests::ios_token;
use serde_json::json;
use std::time::{Duration, Instant};

/// One sender run.
pub struct SenderRun {
    pub jobs: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    pub duplicates: u64,
}

fn jobs_for(app: AppId, count: usize) -> Result<Vec<DeliveryJob>> {
    let message = MessageId::new_random();
    let notification = serde_json::from_value(json!({"title": "bench", "body": "sender"}))?;
    Ok((0..count)
        .map(|i| {
            let token = ios_token(i);
            DeliveryJob {
                delivery_id: DeliveryId::derive(message, DeliveryTarget::Token(&token)),
                message_id: message,
                app_id: app,
                platform: Platform::Ios,
                token,
                install_id: None,
                notification: Clone::clone(&notification),
                policy: DeliveryPolicy::AtLeastOnce,
                expires_at: None,
                locale: None,
                apns_sandbox: false,
                attempt: 0,
                not_before: None,
                campaign: None,
                trace_parent: None,
            }
        })
        .collect())
}

/// Starts a sender (without the recorder: nothing but consume, claim, send,
/// settle and the outcome's publish), feeds it `count` jobs, and waits for
/// the simulator to accept them all.
/// `profile` names its flame graph.
pub async fn run_once(count: usize, dedupe: bool, profile: &str) -> Result<SenderRun> {
    let env = crate::start_env(
        if dedupe { "benchsend" } else { "benchnodedupe" },
        &[
            ("HERALD_LOG", "warn"),
            // Batches and requests in flight: the defaults (see
            // CAMPAIGN_SETTINGS).
            ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "10000"),
            ("HERALD_SENDER__LEASE_MS", "60000"),
            (
                "HERALD_SENDER__DEDUPE",
                if dedupe { "true" } else { "false" },
            ),
        ],
    )
    .await;
    let app = env.create_app().await;
    let app_id = AppId(app.id.parse().context("app id")?);
    let publisher = herald_bus::Publisher::new(&herald_config::KafkaConfig {
        bootstrap_servers: env.broker.bootstrap_servers().to_string(),
        ..Default::default()
    })?;
    let sender = env
        .spawn("sender", &["sender", "--no-recorder"], false)
        .await;
    let before = ProcStat::of(&sender);
    let profile = crate::profile::Profile::start(profile);
    // The embedded broker keeps about 5 MB per partition and drops older
    // records: never let more than BACKLOG jobs wait, as a real topic with
    // the senders behind it would not either.
    const BACKLOG: u64 = 20_000;
    let accepted = || async { env.sim_stats().await["accepted"].as_u64().unwrap_or(0) };
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut published = 0u64;
    for chunk in jobs_for(app_id, count)?.chunks(5_000) {
        while published - accepted().await >= BACKLOG {
            if Instant::now() > deadline {
                bail!("the sender stopped taking jobs at {published} published");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        publisher.publish_jobs(chunk).await?;
        published += chunk.len() as u64;
    }
    eprintln!(
        "{count} jobs published (dedupe {}); waiting for the last deliveries",
        if dedupe { "on" } else { "off" }
    );
    let mut progress = Instant::now();
    loop {
        let accepted = accepted().await;
        if accepted >= count as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {accepted} of {count} deliveries arrived");
        }
        if progress.elapsed() > Duration::from_secs(5) {
            eprintln!("{accepted} of {count} delivered");
            progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = ProcStat::of(&sender);
    let mut roles = vec![&sender];
    roles.extend(env.sim.as_ref());
    profile.finish(&roles).await;
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = env
        .sim_deliveries()
        .await
        .iter()
        .filter_map(|d| chrono::DateTime::parse_from_rfc3339(d["received_at"].as_str()?).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .collect();
    times.sort();
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        bail!("the simulator recorded no delivery");
    };
    let seconds = (*last - *first)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-3);
    let duplicates = env.sim_stats().await["duplicates"].as_u64().unwrap_or(0);
    drop(sender);
    env.finish().await;
    Ok(SenderRun {
        jobs: count,
        seconds,
        per_second: count as f64 / seconds,
        cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        peak_rss_mb: after.peak_rss_mb,
        duplicates,
    })
}

/// What the ledger costs the sender: CPU and wall time, as fractions.
pub struct DedupeOverhead {
    pub cpu: f64,
    pub time: f64,
}

/// The same sender run with the ledger and without it.
pub async fn dedupe(count: usize) -> Result<DedupeOverhead> {
    let on = run_once(count, true, "dedupe-on").await?;
    let off = run_once(count, false, "dedupe-off").await?;
    println!(
        "\nDedupe cost: one sender, {count} jobs fed to the topic ahead of it, release build\n"
    );
    println!("| run | deliveries/s | time | CPU s per 1,000 | peak RSS MB | duplicates at the simulator |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in [
        ("ledger on (claim + settle in Redis)", &on),
        ("ledger off", &off),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} s | {:.3} | {:.0} | {} |",
            r.per_second,
            r.seconds,
            r.cpu_seconds * 1000.0 / r.jobs as f64,
            r.peak_rss_mb,
            r.duplicates
        );
    }
    println!(
        "\n| dedupe overhead (time on / time off − 1) | {:.1} % |",
        100.0 * (on.seconds / off.seconds - 1.0)
    );
    let overhead = DedupeOverhead {
        cpu: on.cpu_seconds / off.cpu_seconds.max(1e-9) - 1.0,
        time: on.seconds / off.seconds - 1.0,
    };
    println!(
        "| CPU overhead (CPU on / CPU off − 1) | {:.1} % |",
        100.0 * overhead.cpu
    );
    Ok(overhead)
}
