//! `herald`: one binary, every role as a subcommand, plus operator commands.

mod apps;
mod args;
mod campaign;
mod cluster;
mod dev;
mod dlq;
mod failover;
mod operators;
mod ops;
mod preflight;
mod recovery;
mod roles;
mod topics;

use clap::{Parser, Subcommand};
use herald_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

// glibc's allocator was a fifth of the sender's CPU at full speed (malloc,
// free and their consolidation, in the flame graphs of ./scripts/bench);
// jemalloc's per-thread caches cost a fraction of that for the many small,
// short-lived allocations of a request, and it keeps less memory than
// glibc's arenas (mimalloc was as fast, with half as much again resident).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Idempotent push notification delivery"
)]
struct Cli {
    /// TOML configuration file; every value can also be set with HERALD_... variables.
    #[arg(long, short, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process: embedded broker, simulators, all roles, a demo app.
    Dev,
    /// The REST API and the outbox relay.
    Gateway,
    /// Consumes delivery jobs and sends them to APNs and FCM.
    Sender {
        /// Do not also run the recorder in this process.
        #[arg(long)]
        no_recorder: bool,
    },
    /// Sends campaigns: pages through audiences and produces delivery jobs.
    Scheduler,
    /// Trigger campaigns: consumes app events, keeps timers, fires pushes.
    Triggers,
    /// Writes delivery outcomes to PostgreSQL.
    Recorder,
    /// APNs and FCM simulators.
    Sim,
    /// Creates the database if missing and applies migrations.
    Migrate,
    /// Puts back into the active Kafka cluster, from PostgreSQL, everything
    /// accepted and not settled: deliveries, unapplied events, campaigns.
    /// Safe to run any number of times: dedupe drops what was already sent.
    Recover {
        /// Only work accepted since then: RFC 3339 (2026-11-29T10:00:00Z) or
        /// an age (90m, 6h, 2d). Default: the dedupe horizon.
        #[arg(long, value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Kafka clusters: status, and moving producers to another.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// The dead-letter topic: jobs that could not be processed.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Campaigns: follow one's progress.
    Campaign {
        #[command(subcommand)]
        command: campaign::CampaignCommand,
    },
    /// Apps and their keys.
    Apps {
        #[command(subcommand)]
        command: apps::AppsCommand,
    },
    /// Loads the configuration (file and `HERALD_` environment) and says
    /// whether it is valid: unknown settings and impossible values are named.
    CheckConfig,
    /// Kafka topics.
    Topics {
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// Dashboard operators.
    Operators {
        #[command(subcommand)]
        command: operators::OperatorsCommand,
    },
}

impl Command {
    /// What the process is, for the `service.name` of its spans.
    fn role(&self) -> &'static str {
        match self {
            Command::Dev => "dev",
            Command::Gateway => "gateway",
            Command::Sender { .. } => "sender",
            Command::Scheduler => "scheduler",
            Command::Triggers => "triggers",
            Command::Recorder => "recorder",
            Command::Sim => "sim",
            _ => "cli",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    // Before the runtime: the span exporter's thread must not start inside it.
    let telemetry = match herald_telemetry::init(&config.telemetry, cli.command.role()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev => dev::run(config).await,
            Command::Gateway => roles::gateway(config).await,
            Command::Sender { no_recorder } => roles::sender(config, !no_recorder).await,
            Command::Scheduler => roles::scheduler(config).await,
            Command::Triggers => roles::triggers(config).await,
            Command::Recorder => roles::recorder(config).await,
            Command::Campaign { command } => campaign::run(config, command).await,
            Command::Sim => roles::sim(config).await,
            Command::Migrate => roles::migrate(config).await,
            Command::Recover { since } => roles::recover(config, since).await,
            Command::Cluster { command } => cluster::run(config, command).await,
            Command::Apps { command } => apps::run(config, command).await,
            Command::Dlq { command } => dlq::run(config, command).await,
            Command::Operators { command } => operators::run(config, command).await,
            Command::Topics { command } => topics::run(config, command).await,
            Command::CheckConfig => check_config(&config),
        }
    });
    drop(runtime);
    // The last spans are flushed before the process ends.
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable paragraph, no backtrace: the error chain says what
            // failed, where, and what to do.
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What loading alone does not catch: values that cannot work together.
fn check_config(config: &Config) -> anyhow::Result<()> {
    config
        .kafka
        .security
        .client_settings()
        .map_err(anyhow::Error::msg)?;
    preflight::redis_endpoint(config)?;
    herald_telemetry::check(&config.telemetry)?;
    if config.kafka.min_insync_replicas > config.kafka.replication_factor {
        anyhow::bail!("kafka.min_insync_replicas is more than kafka.replication_factor");
    }
    for (name, address) in [
        ("gateway.listen", &config.gateway.listen),
        ("metrics.listen", &config.metrics.listen),
    ] {
        if !address.is_empty() && address.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!("{name} `{address}` is not an address (HOST:PORT)");
        }
    }
    println!("configuration is valid");
    Ok(())
}

/// A time, or an age counted back from now.
fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let age = args::parse_span(s)
        .map_err(|_| format!("`{s}` is neither an RFC 3339 time nor an age like 90m, 6h, 2d"))?;
    Ok(chrono::Utc::now() - age)
}
