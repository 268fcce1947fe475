//! `bootstrap`: tickpipe's Lambda function, or with `--local` a runner that polls the
//! stream from this machine. Parses flags, sets up logging, wires SIGINT/SIGTERM to a
//! clean stop and calls [`lambda::run`]; everything else lives in the library.

use clap::Parser;
use lambda::Cli;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.local {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
            .init();
    } else {
        // Level and format from Lambda's logging controls (AWS_LAMBDA_LOG_LEVEL,
        // AWS_LAMBDA_LOG_FORMAT), falling back to RUST_LOG, then INFO.
        lambda_runtime::tracing::init_default_subscriber();
    }
    lambda::run(cli, shutdown_signal()).await
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
