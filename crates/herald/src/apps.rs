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
    /// Creates another key for an app and prints its secret (once).
    CreateKey {
        #[arg(long)]
        app: String,
        #[arg(long, value_parser = ["server", "sdk"])]
        kind: String,
    },
    /// Lists an app's keys (never their secrets).
    Keys {
        #[arg(long)]
        app: String,
    },
    /// Revokes a key at once.
    RevokeKey {
        #[arg(long)]
        app: String,
        #[arg(long)]
        key: String,
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
            // Everything that can fail is checked before the app is written:
            // an app created, then refused its credentials, would leave keys
            // whose secrets were never shown.
            let sim_credentials = match sim {
                Some(sim) => {
                    if !store.can_seal_credentials() {
                        bail!(
                            "{} (set HERALD_CREDENTIALS__KEY); nothing was created",
                            herald_store::SealError::NoKey
                        );
                    }
                    Some(fetch_sim_credentials(&sim).await?)
                }
                None => None,
            };
            let app = store.create_app(&name).await?;
            let server = store.create_api_key(app, ApiKeyKind::Server).await?;
            let sdk = store.create_api_key(app, ApiKeyKind::Sdk).await?;
            if let Some(creds) = sim_credentials {
                put_sim_credentials(&store, app, &creds).await?;
            }
            println!(
                "{}",
                json!({ "app_id": app, "server_key": server.secret, "sdk_key": sdk.secret })
            );
        }
        AppsCommand::CreateKey { app, kind } => {
            let app = existing_app(&store, &app).await?;
            let kind = if kind == "server" {
                ApiKeyKind::Server
            } else {
                ApiKeyKind::Sdk
            };
            let key = store.create_api_key(app, kind).await?;
            println!(
                "{}",
                json!({ "id": key.id, "kind": kind.as_str(), "secret": key.secret })
            );
        }
        AppsCommand::Keys { app } => {
            let app = existing_app(&store, &app).await?;
            for k in store.api_keys(app).await? {
                println!(
                    "{}",
                    json!({ "id": k.id, "kind": k.kind.as_str(), "prefix": k.prefix,
                            "created_at": k.created_at, "revoked_at": k.revoked_at })
                );
            }
        }
        AppsCommand::RevokeKey { app, key } => {
            let app = existing_app(&store, &app).await?;
            let key = uuid::Uuid::parse_str(&key).context("--key is a key id (UUID)")?;
            if !store.revoke_api_key(app, key).await? {
                bail!("no live key {key} in app {app}");
            }
            println!("revoked {key}");
        }
        AppsCommand::Credentials {
            app,
            apns,
            fcm,
            sim,
        } => {
            let app = existing_app(&store, &app).await?;
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

async fn existing_app(store: &Store, app: &str) -> Result<AppId> {
    let app = AppId::from_str(app).context("--app is an app id (UUID)")?;
    if !store.app_exists(app).await? {
        bail!("no app {app}");
    }
    Ok(app)
}

pub async fn load_sim_credentials(store: &Store, app: AppId, sim: &str) -> Result<()> {
    let creds = fetch_sim_credentials(sim).await?;
    put_sim_credentials(store, app, &creds).await
}

/// The simulator's APNs and FCM credentials (`GET /sim/credentials`).
async fn fetch_sim_credentials(sim: &str) -> Result<Value> {
    let url = format!("{}/sim/credentials", sim.trim_end_matches('/'));
    reqwest::get(&url)
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("fetching {url}"))?
        .json()
        .await
        .with_context(|| format!("reading {url}"))
}

async fn put_sim_credentials(store: &Store, app: AppId, creds: &Value) -> Result<()> {
    store.put_credentials(app, "apns", &creds["apns"]).await?;
    store.put_credentials(app, "fcm", &creds["fcm"]).await?;
    Ok(())
}
