//! Peers: what teams commonly run instead of Herald, on the same simulator
//! and machine in the same run. A Python sender on aioapns and a Node.js
//! sender on @parse/node-apn each send N notifications to the APNs
//! simulator (over TLS, token auth) as fast as they can; then Herald's sender
//! delivers N jobs waiting on Kafka, and Herald end to end takes N
//! deliveries through `POST /v1/push`. Herald's rates are reported as ratios
//! to each peer.
//!
//! `scripts/bench` installs the peers under `target/bench-peers/` (a Python
//! virtual environment and an npm prefix); `HERALD_BENCH_PEERS` points
//! elsewhere.

use anyhow::{bail, Context, Result};
use herald_tests::TestEnv;
use serde_json::Value;
use std::path::PathBuf;

pub struct Settings {
    pub notifications: usize,
    pub connections: usize,
    pub in_flight: usize,
}

struct PeerRun {
    name: &'static str,
    per_second: f64,
    cpu_per_1000: f64,
    peak_rss_mb: f64,
}

fn peers_dir() -> PathBuf {
    std::env::var("HERALD_BENCH_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/bench-peers"))
}

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Runs one peer against the simulator and checks its count against the
/// simulator's record.
async fn run_peer(
    env: &TestEnv,
    name: &'static str,
    mut command: tokio::process::Command,
    settings: &[(&str, String)],
) -> Result<PeerRun> {
    let before = env.sim_stats().await["accepted"].as_u64().unwrap_or(0);
    for (k, v) in settings {
        command.env(k, v);
    }
    let out = command
        .output()
        .await
        .with_context(|| format!("starting the {name} peer"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the {name} peer failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no report from the {name} peer:\n{stdout}"))?;
    let sent = report["sent"].as_u64().unwrap_or(0);
    let ok = report["ok"].as_u64().unwrap_or(0);
    let accepted = env.sim_stats().await["accepted"].as_u64().unwrap_or(0) - before;
    // The peer's warm-up notification is one more.
    if ok != sent || accepted != sent + 1 {
        bail!("the {name} peer: {ok} of {sent} succeeded, the simulator accepted {accepted}");
    }
    let seconds = report["seconds"].as_f64().unwrap_or(f64::MAX);
    Ok(PeerRun {
        name,
        per_second: sent as f64 / seconds,
        cpu_per_1000: report["cpu_seconds"].as_f64().unwrap_or(0.0) * 1000.0 / sent as f64,
        peak_rss_mb: report["peak_rss_mb"].as_f64().unwrap_or(0.0),
    })
}

/// Herald's sender against @parse/node-apn, for the ratios of `all`.
pub struct Summary {
    pub sender: crate::sender::SenderRun,
    pub node_apn_per_second: f64,
    pub node_apn_cpu_per_1000: f64,
}

pub async fn run(s: Settings) -> Result<Summary> {
    let peers = peers_dir();
    let python = peers.join("venv/bin/python");
    let node_modules = peers.join("node/node_modules");
    if !python.exists() || !node_modules.join("@parse/node-apn").exists() {
        bail!(
            "the peers are not installed under {} (./scripts/bench peers installs them)",
            peers.display()
        );
    }
    let env = crate::start_env("benchpeers", &[("HERALD_LOG", "warn")]).await;
    let credentials = env.sim_credentials().await;
    let apns = &credentials["apns"];
    let key_file = env.log_dir.join("apns-key.pem");
    std::fs::write(
        &key_file,
        apns["private_key_pem"]
            .as_str()
            .context("private_key_pem")?,
    )?;
    let cert = env
        .http
        .get(format!("{}/sim/tls-certificate", env.sim_url()))
        .send()
        .await?
        .text()
        .await?;
    let ca_file = env.log_dir.join("sim-cert.pem");
    std::fs::write(&ca_file, cert)?;
    let tls = env
        .sim_tls_url
        .clone()
        .context("the simulator's TLS address")?;
    let address = tls.trim_start_matches("https://");
    let (host, port) = address.rsplit_once(':').context("host:port")?;
    let settings: Vec<(&str, String)> = vec![
        ("PEER_HOST", host.to_string()),
        ("PEER_PORT", port.to_string()),
        ("PEER_CA_FILE", ca_file.display().to_string()),
        ("PEER_KEY_FILE", key_file.display().to_string()),
        (
            "PEER_KEY_ID",
            apns["key_id"].as_str().unwrap_or_default().into(),
        ),
        (
            "PEER_TEAM_ID",
            apns["team_id"].as_str().unwrap_or_default().into(),
        ),
        (
            "PEER_TOPIC",
            apns["topic"].as_str().unwrap_or_default().into(),
        ),
        ("PEER_COUNT", s.notifications.to_string()),
        ("PEER_CONNECTIONS", s.connections.to_string()),
        ("PEER_IN_FLIGHT", s.in_flight.to_string()),
    ];

    let mut python_peer = tokio::process::Command::new(&python);
    python_peer.arg(scripts_dir().join("aioapns_peer.py"));
    let aioapns = run_peer(&env, "aioapns (Python)", python_peer, &settings).await?;
    let mut node_peer = tokio::process::Command::new("node");
    node_peer
        .arg(scripts_dir().join("node_apn_peer.js"))
        .env("NODE_PATH", &node_modules);
    let node_apn = run_peer(&env, "@parse/node-apn (Node.js)", node_peer, &settings).await?;
    env.finish().await;

    let sender = crate::sender::run_once(s.notifications, true, "peers-sender").await?;
    let recipients = 100;
    let end_to_end = crate::transactional::run(crate::transactional::Settings {
        profile: "peers-end-to-end",
        requests: s.notifications.div_ceil(recipients),
        recipients,
        concurrency: 16,
        copies: 1,
    })
    .await?;

    println!(
        "\nPeers: {} notifications to the APNs simulator, {} connections, {} in flight (peers); release build\n",
        s.notifications, s.connections, s.in_flight
    );
    println!("| sender | deliveries/s | CPU s per 1,000 | peak RSS MB |");
    println!("|---|---|---|---|");
    for p in [&aioapns, &node_apn] {
        println!(
            "| {} | {:.0} | {:.3} | {:.0} |",
            p.name, p.per_second, p.cpu_per_1000, p.peak_rss_mb
        );
    }
    println!(
        "| Herald's sender (Kafka in, Redis ledger, outcomes out) | {:.0} | {:.3} | {:.0} |",
        sender.per_second,
        sender.cpu_seconds * 1000.0 / sender.jobs as f64,
        sender.peak_rss_mb
    );
    println!(
        "| Herald end to end (POST /v1/push × {recipients} recipients → simulator) | {:.0} | | |",
        end_to_end.deliveries_per_second
    );
    println!("\n| ratio | vs aioapns | vs node-apn |");
    println!("|---|---|---|");
    println!(
        "| Herald's sender / peer | {:.2} | {:.2} |",
        sender.per_second / aioapns.per_second,
        sender.per_second / node_apn.per_second
    );
    println!(
        "| Herald end to end / peer | {:.2} | {:.2} |",
        end_to_end.deliveries_per_second / aioapns.per_second,
        end_to_end.deliveries_per_second / node_apn.per_second
    );
    Ok(Summary {
        sender,
        node_apn_per_second: node_apn.per_second,
        node_apn_cpu_per_1000: node_apn.cpu_per_1000,
    })
}
