//! `herald-bench`: how fast Herald is, measured on this machine.
//!
//! Each scenario starts what it needs on loopback (a Kafka-protocol broker,
//! Herald's roles as separate processes, the simulators; PostgreSQL and Redis
//! as configured for the tests), runs a fixed amount of work, and prints a
//! table. Run it from a release build: `./scripts/bench campaign`.

mod all;
mod ceiling;
mod isolation;
mod peers;
mod procstat;
mod profile;
mod sender;
mod transactional;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use herald_tests::{HeraldProcess, TestEnv};
use procstat::ProcStat;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Starts a scenario's environment with its settings, and on top of them any
/// `HERALD_*` variable of the benchmark's own environment (to compare
/// settings run by run: `HERALD_SENDER__BATCH_SIZE=100 herald-bench ...`).
pub(crate) async fn start_env(name: &str, settings: &[(&str, &str)]) -> TestEnv {
    // Not the benchmark's own switch, nor the database: each scenario has
    // its own (scripts/setup.sh exports
    // HERALD_POSTGRES__URL for `herald dev`, and applied here it sent the
    // processes to that one while the bench seeded its own).
    let overrides: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("HERALD_") && k != "HERALD_POSTGRES__URL" && k != "HERALD_BENCH_PROFILE"
        })
        .collect();
    for (k, v) in &overrides {
        eprintln!("setting from the environment: {k}={v}");
    }
    let mut all: Vec<(&str, &str)> = settings.to_vec();
    all.extend(overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    TestEnv::start_with(name, &all).await
}

#[derive(Parser)]
#[command(name = "herald-bench", about = "Herald benchmarks (not tests)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Everything, against one ceiling: h2load's rate at the simulator, then
    /// every scenario, and one table of each headline as a ratio to it.
    All {
        #[arg(long, default_value_t = 1_000_000)]
        installations: i64,
        /// Users of the triggers scenario.
        #[arg(long, default_value_t = 100_000)]
        users: i64,
    },
    /// Fan-out: an app with N installations, one campaign to all of them,
    /// timed from launch to every device's outcome recorded.
    Campaign {
        #[arg(long, default_value_t = 1_000_000)]
        installations: i64,
        /// Sender processes.
        #[arg(long, default_value_t = 1)]
        senders: usize,
    },
    /// Isolation: single-device pushes at a steady rate alone, then while a
    /// campaign to N devices is sent; accepted → delivered p99 of each, and
    /// their ratio.
    Isolation {
        #[arg(long, default_value_t = 1_000_000)]
        installations: i64,
        /// Pushes in each phase.
        #[arg(long, default_value_t = 1_000)]
        pushes: usize,
        /// Pushes per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
    /// Transactional: clients POST /v1/push with Idempotency-Keys; `--copies 3`
    /// sends every request three times (a resubmission storm).
    Transactional {
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Devices per request.
        #[arg(long, default_value_t = 1)]
        recipients: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// How many times each request is sent.
        #[arg(long, default_value_t = 1)]
        copies: usize,
    },
    /// The ceiling: h2load straight at the APNs simulator, then Herald's
    /// end-to-end rate against the same simulator, as a fraction of it.
    Ceiling {
        #[arg(long, default_value_t = 1_000_000)]
        requests: usize,
        /// HTTP/2 connections.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Streams in flight per connection.
        #[arg(long, default_value_t = 100)]
        streams: usize,
    },
    /// Dedupe cost: one sender delivers N jobs waiting on Kafka, with the
    /// Redis ledger and without it.
    Dedupe {
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
    },
    /// Peers: aioapns (Python) and @parse/node-apn (Node.js) send N
    /// notifications to the same simulator; Herald's sender and Herald end to
    /// end deliver N; Herald's rates as ratios to each peer.
    Peers {
        #[arg(long, default_value_t = 50_000)]
        notifications: usize,
        /// HTTP/2 connections each peer opens.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Notifications each peer has in flight at once.
        #[arg(long, default_value_t = 1000)]
        in_flight: usize,
    },
    /// Triggers: N users each post one event to a rule with a short delay;
    /// events/s in, timers fired per second, and how late they fired.
    Triggers {
        #[arg(long, default_value_t = 100_000)]
        users: i64,
        /// Trigger engine processes.
        #[arg(long, default_value_t = 1)]
        engines: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::Campaign {
            installations,
            senders,
        } => campaign(installations, senders).await.map(|_| ()),
        Scenario::Isolation {
            installations,
            pushes,
            rate,
        } => isolation::run(isolation::Settings {
            installations,
            pushes,
            rate,
        })
        .await
        .map(|_| ()),
        Scenario::Triggers { users, engines } => triggers(users, engines).await.map(|_| ()),
        Scenario::Dedupe { jobs } => sender::dedupe(jobs).await.map(|_| ()),
        Scenario::All {
            installations,
            users,
        } => {
            all::run(all::Settings {
                installations,
                users,
            })
            .await
        }
        Scenario::Peers {
            notifications,
            connections,
            in_flight,
        } => peers::run(peers::Settings {
            notifications,
            connections,
            in_flight,
        })
        .await
        .map(|_| ()),
        Scenario::Ceiling {
            requests,
            clients,
            streams,
        } => {
            ceiling::run(ceiling::Settings {
                requests,
                clients,
                streams,
            })
            .await
        }
        Scenario::Transactional {
            requests,
            recipients,
            concurrency,
            copies,
        } => transactional::run(transactional::Settings {
            profile: "transactional",
            requests,
            recipients,
            concurrency,
            copies,
        })
        .await
        .map(|_| ()),
    }
}

/// One push through the whole pipeline, waited for: consumers have joined
/// their groups and connections are open before a clock starts.
async fn warm_up(env: &TestEnv, base: &str, key: &str) -> Result<()> {
    let (status, _) = env
        .push(
            base,
            key,
            None,
            &json!({"to": {"tokens": [{"platform": "ios", "token": format!("b{:063x}", 1)}]},
                    "notification": {"title": "warm-up"}}),
        )
        .await;
    if status != 202 {
        bail!("warm-up push refused: {status}");
    }
    let warm = Instant::now();
    while env.sim_stats().await["accepted"].as_u64().unwrap_or(0) < 1 {
        if warm.elapsed() > Duration::from_secs(60) {
            bail!("the warm-up push was never delivered");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The settings of the scenarios that send a campaign to a million devices.
pub(crate) const CAMPAIGN_SETTINGS: [(&str, &str); 6] = [
    ("HERALD_LOG", "warn"),
    // Memory flat at a million deliveries; counts stay exact.
    ("HERALD_SIM__RECORD", "counts"),
    ("HERALD_POSTGRES__MAX_CONNECTIONS", "16"),
    // The sender's and recorder's batches and requests in flight are the
    // defaults: with two batches in flight per lane, 5,000-job batches were
    // no faster and held half as much memory again (docs/benchmarks.md,
    // fifth sitting), and 1,024 requests in flight made a push wait behind
    // them at the simulator (isolation).
    ("HERALD_SENDER__REQUEST_TIMEOUT_MS", "10000"),
    ("HERALD_SENDER__LEASE_MS", "60000"),
    ("HERALD_SCHEDULER__PAGE_SIZE", "5000"),
];

/// `n` installations of the app, half iOS and half Android, written with SQL
/// (seeding is not what is measured).
pub(crate) async fn seed_installations(env: &TestEnv, app_id: &str, n: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO installations (app_id, install_id, custom_id, platform, token)
         SELECT $1::uuid, 'i-' || lpad(n::text, 8, '0'), 'user-' || n,
                CASE WHEN n % 2 = 0 THEN 'ios' ELSE 'android' END,
                CASE WHEN n % 2 = 0 THEN 'a' || lpad(to_hex(n), 63, '0') ELSE 'fcm-' || n END
         FROM generate_series(1, $2::int8) AS n",
    )
    .bind(app_id)
    .bind(n)
    .execute(&env.db)
    .await
    .context("seeding installations")?;
    sqlx::query("ANALYZE installations")
        .execute(&env.db)
        .await
        .context("analyze")?;
    Ok(())
}

/// A draft campaign to the whole app; its id.
pub(crate) async fn create_campaign(
    env: &TestEnv,
    base: &str,
    key: &str,
    name: &str,
) -> Result<String> {
    let (status, created) = env
        .api(
            "POST",
            &format!("{base}/v1/campaigns"),
            key,
            Some(&json!({"name": name, "notification": {"title": name, "body": "fan-out"}})),
        )
        .await;
    if status != 201 {
        bail!("creating the campaign: {status} {created}");
    }
    Ok(created["id"].as_str().context("campaign id")?.to_string())
}

pub(crate) async fn launch_campaign(env: &TestEnv, base: &str, key: &str, id: &str) -> Result<()> {
    let (status, launched) = env
        .api(
            "POST",
            &format!("{base}/v1/campaigns/{id}/launch"),
            key,
            None,
        )
        .await;
    if status != 200 {
        bail!("launching: {status} {launched}");
    }
    Ok(())
}

/// A scenario's headline rate, for the ratios of `all`.
pub(crate) struct Measured {
    pub per_second: f64,
    pub duplicates: u64,
    pub lost: u64,
    pub sender_peak_rss_mb: f64,
    pub sim_peak_rss_mb: f64,
}

async fn campaign(installations: i64, senders: usize) -> Result<Measured> {
    if installations <= 0 || senders == 0 {
        bail!("--installations and --senders must be positive");
    }
    let env = crate::start_env("bench", &CAMPAIGN_SETTINGS).await;
    let app = env.create_app().await;
    let seeding = Instant::now();
    seed_installations(&env, &app.id, installations).await?;
    let seeded_in = seeding.elapsed();

    let gateway = env.gateway().await;
    let base = gateway.url.clone().context("gateway url")?;
    let mut procs: Vec<HeraldProcess> = Vec::new();
    for _ in 0..senders {
        procs.push(env.sender().await);
    }
    procs.push(env.scheduler().await);
    // Warm up: the senders have joined their group and opened their
    // connections before the clock starts.
    warm_up(&env, &base, &app.server_key).await?;
    let before: Vec<ProcStat> = procs.iter().map(ProcStat::of).collect();
    let profile = profile::Profile::start("campaign");

    let id = create_campaign(&env, &base, &app.server_key, "bench").await?;
    let started = Instant::now();
    launch_campaign(&env, &base, &app.server_key, &id).await?;
    let mut produced_at = None;
    let finished: Value = loop {
        // A campaign's counts are read from the outcome log, a pass over
        // every outcome so far: asked four times a second they would cost
        // PostgreSQL more than the campaign. Until production is done the
        // status is asked once a second, then not until the simulators have
        // seen every device.
        if produced_at.is_some()
            && env.sim_stats().await["accepted"].as_i64().unwrap_or(0) < installations
        {
            if started.elapsed() > Duration::from_secs(3600) {
                bail!("the campaign did not finish within an hour");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let (_, c) = env
            .api(
                "GET",
                &format!("{base}/v1/campaigns/{id}"),
                &app.server_key,
                None,
            )
            .await;
        if produced_at.is_none() && c["status"] == "completed" {
            produced_at = Some(started.elapsed());
        }
        if c["status"] == "completed" && c["progress"]["pending"] == 0 {
            break c;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the campaign did not finish within an hour: {c}");
        }
        let pause = if produced_at.is_some() { 250 } else { 1000 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    };
    let total = started.elapsed();
    let after: Vec<ProcStat> = procs.iter().map(ProcStat::of).collect();
    let mut roles: Vec<&HeraldProcess> = procs.iter().chain([&gateway]).collect();
    roles.extend(env.sim.as_ref());
    profile.finish(&roles).await;
    let stats = env.sim_stats().await;
    let delivered = finished["progress"]["counts"]["delivered"]
        .as_i64()
        .unwrap_or(0);

    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "\nCampaign fan-out: {installations} installations, {senders} sender(s), {build} build\n"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| seeding installations (SQL, not Herald) | {:.1} s |",
        seeded_in.as_secs_f64()
    );
    println!(
        "| launch → every job produced | {:.1} s |",
        produced_at.unwrap_or(total).as_secs_f64()
    );
    println!(
        "| launch → every outcome recorded | {:.1} s |",
        total.as_secs_f64()
    );
    println!(
        "| deliveries per second (end to end) | {:.0} |",
        delivered as f64 / total.as_secs_f64()
    );
    println!(
        "| delivered / accepted by the simulators | {delivered} / {} |",
        stats["accepted"].as_u64().unwrap_or(0).saturating_sub(1)
    );
    println!("| duplicates at the simulators | {} |", stats["duplicates"]);
    let shown: Vec<&HeraldProcess> = procs.iter().collect();
    procstat::print_processes(&shown, &before, &after, delivered.max(0) as u64);
    let sim_peak_rss_mb = env.sim.as_ref().map_or(0.0, |sim| {
        let s = ProcStat::of(sim);
        println!(
            "| sim (APNs + FCM) | {:.1} | | {:.0} |",
            s.cpu_seconds, s.peak_rss_mb
        );
        s.peak_rss_mb
    });
    env.finish().await;
    let accepted = stats["accepted"].as_u64().unwrap_or(0).saturating_sub(1);
    Ok(Measured {
        per_second: delivered as f64 / total.as_secs_f64(),
        duplicates: stats["duplicates"].as_u64().unwrap_or(0),
        lost: (installations as u64).saturating_sub(accepted),
        sender_peak_rss_mb: after[0].peak_rss_mb,
        sim_peak_rss_mb,
    })
}

async fn triggers(users: i64, engines: usize) -> Result<Measured> {
    if users <= 0 || engines == 0 {
        bail!("--users and --engines must be positive");
    }
    let env = crate::start_env(
        "benchtrig",
        &[
            ("HERALD_LOG", "warn"),
            // Memory flat at a million deliveries; counts stay exact.
            ("HERALD_SIM__RECORD", "counts"),
            ("HERALD_POSTGRES__MAX_CONNECTIONS", "16"),
            ("HERALD_SENDER__BATCH_SIZE", "5000"),
            ("HERALD_SENDER__CONCURRENCY", "1024"),
            ("HERALD_RECORDER__BATCH_SIZE", "5000"),
            ("HERALD_TRIGGERS__FIRE_BATCH", "1000"),
            // 100,000 events posted at once outgrow the embedded broker's
            // ~5 MB per partition at 4 partitions: older records were dropped
            // before the engine read them (docs/benchmarks.md, eighth sitting).
            ("HERALD_KAFKA__PARTITIONS", "16"),
        ],
    )
    .await;
    let app = env.create_app().await;
    sqlx::query(
        "INSERT INTO installations (app_id, install_id, custom_id, platform, token)
         SELECT $1::uuid, 'i-' || n, 'user-' || n,
                CASE WHEN n % 2 = 0 THEN 'ios' ELSE 'android' END,
                CASE WHEN n % 2 = 0 THEN 'a' || lpad(to_hex(n), 63, '0') ELSE 'fcm-' || n END
         FROM generate_series(1, $2::int8) AS n",
    )
    .bind(&app.id)
    .bind(users)
    .execute(&env.db)
    .await
    .context("seeding installations")?;
    let gateway = env.gateway().await;
    let base = gateway.url.clone().context("gateway url")?;
    let mut procs: Vec<HeraldProcess> = vec![env.sender().await];
    for _ in 0..engines {
        procs.push(env.spawn("triggers", &["triggers"], false).await);
    }
    let (status, rule) = env
        .api(
            "POST",
            &format!("{base}/v1/triggers"),
            &app.server_key,
            Some(
                &json!({"name": "bench", "entry_event": "signup", "delay_seconds": 10,
                         "notification": {"title": "Welcome {{event.plan|friend}}"}}),
            ),
        )
        .await;
    if status != 201 {
        bail!("creating the rule: {status} {rule}");
    }
    let rule_id = rule["id"].as_str().context("rule id")?.to_string();
    let before: Vec<ProcStat> = procs.iter().map(ProcStat::of).collect();
    let profile = profile::Profile::start("triggers");
    let posting = Instant::now();
    for chunk in (1..=users).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|n| json!({"event_id": format!("e{n}"), "name": "signup", "custom_id": format!("user-{n}"),
                            "attributes": {"plan": "pro"}}))
            .collect();
        let (status, body) = env
            .api(
                "POST",
                &format!("{base}/v1/events"),
                &app.sdk_key,
                Some(&json!({"events": events})),
            )
            .await;
        if status != 202 {
            bail!("posting events: {status} {body}");
        }
    }
    let posted_in = posting.elapsed();
    let mut progress = (None, Instant::now());
    loop {
        let (_, r) = env
            .api(
                "GET",
                &format!("{base}/v1/triggers/{rule_id}"),
                &app.server_key,
                None,
            )
            .await;
        let fired = r["timers"]["fired"].as_i64();
        if fired == Some(users) {
            break;
        }
        if fired != progress.0 {
            progress = (fired, Instant::now());
        }
        if progress.1.elapsed() > Duration::from_secs(60) {
            // Seen at 100,000 users: the embedded broker keeps about 5 MB
            // per partition and drops older records, events included.
            let applied: i64 =
                sqlx::query_scalar("SELECT count(*) FROM events WHERE applied_at IS NOT NULL")
                    .fetch_one(&env.db)
                    .await
                    .unwrap_or(-1);
            bail!(
                "timers stopped at {} fired of {users} for a minute ({applied} events applied by the engine): \
                 on the embedded broker, records beyond its ~5 MB per partition are dropped before they are read; \
                 run `./scripts/bench --kafka real triggers --users {users}`",
                fired.unwrap_or(0)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after: Vec<ProcStat> = procs.iter().map(ProcStat::of).collect();
    let mut roles: Vec<&HeraldProcess> = procs.iter().chain([&gateway]).collect();
    roles.extend(env.sim.as_ref());
    profile.finish(&roles).await;
    let (first, last, p50, p99, max): (f64, f64, f64, f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM min(settled_at))::float8, extract(epoch FROM max(settled_at))::float8,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - due_at))::float8,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - due_at))::float8,
                max(extract(epoch FROM settled_at - due_at))::float8
         FROM trigger_timers WHERE status = 'fired'",
    )
    .fetch_one(&env.db)
    .await
    .context("timer statistics")?;
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("\nTriggers: {users} users, one event each, delay 10 s, {engines} engine(s), {build} build\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| events accepted per second (POST /v1/events, 1000 per request) | {:.0} |",
        users as f64 / posted_in.as_secs_f64()
    );
    println!(
        "| timers fired per second (first to last fire) | {:.0} |",
        users as f64 / (last - first).max(0.001)
    );
    println!(
        "| lateness p50 / p99 / max (due → push written) | {p50:.2} s / {p99:.2} s / {max:.2} s |"
    );
    println!("\n| process | CPU s | peak RSS MB |");
    println!("|---|---|---|");
    for ((p, b), a) in procs.iter().zip(&before).zip(&after) {
        println!(
            "| {} | {:.1} | {:.0} |",
            p.name,
            a.cpu_seconds - b.cpu_seconds,
            a.peak_rss_mb
        );
    }
    // Every fired timer's push at the simulator, for the duplicates and
    // losses of `all` (fired means written, not yet delivered).
    let waiting = Instant::now();
    let stats = loop {
        let stats = env.sim_stats().await;
        if stats["accepted"].as_i64().unwrap_or(0) >= users
            || waiting.elapsed() > Duration::from_secs(600)
        {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let accepted = stats["accepted"].as_u64().unwrap_or(0);
    println!(
        "| fired pushes accepted by the simulators / duplicates | {accepted} / {} |",
        stats["duplicates"]
    );
    let sim_peak_rss_mb = env
        .sim
        .as_ref()
        .map_or(0.0, |sim| ProcStat::of(sim).peak_rss_mb);
    env.finish().await;
    Ok(Measured {
        per_second: users as f64 / (last - first).max(0.001),
        duplicates: stats["duplicates"].as_u64().unwrap_or(0),
        lost: (users as u64).saturating_sub(accepted),
        sender_peak_rss_mb: after[0].peak_rss_mb,
        sim_peak_rss_mb,
    })
}
