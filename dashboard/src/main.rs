//! The `dashboard` binary: parses flags, sets up logging, and serves [`dashboard::run`]
//! until SIGINT or SIGTERM. Everything else lives in the library.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use dashboard::DashboardConfig;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Live web dashboard over the tickpipe DynamoDB table.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to serve the page and API on.
    #[arg(long, env = "TICKPIPE_DASHBOARD_LISTEN", default_value = dashboard::config::DEFAULT_LISTEN)]
    listen: SocketAddr,

    #[command(flatten)]
    dashboard: DashboardConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("--listen: cannot bind {}", cli.listen))?;
    let dynamo = dashboard::dynamo_client(&cli.dashboard).await;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutting down"),
            _ = sigterm.recv() => info!(signal = "SIGTERM", "shutting down"),
        }
    };
    dashboard::run(cli.dashboard, dynamo, listener, shutdown).await
}
