//! `herald apps ...`: create apps and keys, load provider credentials.

use crate::preflight;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use herald_config::Config;
use herald_core::AppId;
use herald_store::{ApiKeyKind, Store};
use serde_json::{json, Value};
use std::str::FromStr;

#[derive(Subcommand)]
pub enum AppsCommand {
    /// Creates an app with a server key and an SDK key; prints them as JSON
    /// (the only time the secrets are shown).
    Create {
        #[arg(long)]
        name: String,
        /// Load the APNs and FCM credentials a running simulator accepts
        /// (its base URL, e.g. http://127.0.0.1:8090).
        #[arg(long)]
        sim: Option<String>,
    },
    /// Sets an app's provider credentials from JSON files.
    Credentials {
        #[arg(long)]
        app: String,
        /// {"team_id", "key_id", "private_key_pem", "topic"}
        #[arg(long)]
        apns: Option<std::path::PathBuf>,
        /// {"project_id", "service_account": <service-account key file>}
        #[arg(long)]
        fcm: Option<std::path::PathBuf>,
        /// Load the credentials a running simulator accepts.
        #[arg(long)]
        sim: Option<String>,
    },
}

pub async fn run(config: Config, command: AppsCommand) -> Result<()> {
    let store = preflight::postgres(&config).await?;
    match command {
        AppsCommand::Create { name, sim } => {
            let app = store.create_app(&name).await?;
            let server = store.create_api_key(app, ApiKeyKind::Server).await?;
            let sdk = store.create_api_key(app, ApiKeyKind::Sdk).await?;
            if let Some(sim) = sim {
                load_sim_credentials(&store, app, &sim).await?;
            }
            println!(
                "{}",
                json!({ "app_id": app, "server_key": server.secret, "sdk_key": sdk.secret })
            );
        }
        AppsCommand::Credentials {
            app,
            apns,
            fcm,
            sim,
        } => {
            let app = AppId::from_str(&app).context("--app is an app id (UUID)")?;
            if !store.app_exists(app).await? {
                bail!("no app {app}");
            }
            if let Some(sim) = sim {
                load_sim_credentials(&store, app, &sim).await?;
            }
            for (provider, path) in [("apns", apns), ("fcm", fcm)] {
                if let Some(path) = path {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let value: Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    store.put_credentials(app, provider, &value).await?;
                }
            }
            println!("credentials stored");
        }
    }
    Ok(())
}

pub async fn load_sim_credentials(store: &Store, app: AppId, sim: &str) -> Result<()> {
    let url = format!("{}/sim/credentials", sim.trim_end_matches('/'));
    let creds: Value = reqwest::get(&url)
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("fetching {url}"))?
        .json()
        .await
        .with_context(|| format!("reading {url}"))?;
    store.put_credentials(app, "apns", &creds["apns"]).await?;
    store.put_credentials(app, "fcm", &creds["fcm"]).await?;
    Ok(())
}
