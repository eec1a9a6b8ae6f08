//! `herald operators ...`: who may log in to the dashboard.

use crate::preflight;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use herald_config::Config;
use std::io::BufRead;

/// Shorter passwords are refused.
pub const PASSWORD_MIN: usize = 10;

#[derive(Subcommand)]
pub enum OperatorsCommand {
    /// Creates an operator, or sets a new password for an existing one (which
    /// logs that operator out everywhere). The password is read from the
    /// first line of standard input, never from the command line.
    Create {
        #[arg(long)]
        email: String,
    },
}

pub async fn run(config: Config, command: OperatorsCommand) -> Result<()> {
    let store = preflight::postgres(&config).await?;
    match command {
        OperatorsCommand::Create { email } => {
            let email = email.trim().to_lowercase();
            if !email.contains('@') || email.len() > 254 {
                bail!("`{email}` is not an email address");
            }
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            ensure_operator(&store, &email, password).await?;
            println!("operator {email} can log in at /dashboard");
        }
    }
    Ok(())
}

/// Creates or updates an operator's password.
pub async fn ensure_operator(
    store: &herald_store::Store,
    email: &str,
    password: &str,
) -> Result<bool> {
    if password.chars().count() < PASSWORD_MIN {
        bail!("a password has at least {PASSWORD_MIN} characters");
    }
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || herald_dashboard::hash_password(&password))
        .await
        .context("hashing the password")??;
    Ok(store.upsert_operator(email, &hash).await?)
}
