//! `ingestor`: reads the Finnhub trade feed and writes it to Amazon Kinesis.
//!
//! Flags and environment variables are listed by `ingestor --help`; AWS endpoint, region
//! and credentials come from the standard AWS environment and config chain.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in `mi_option_t` of mimalloc 2); the sys
/// crate names only some options.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc gives it back to the OS.
/// Every PutRecords request serialises a body of up to a few MiB; with mimalloc's default
/// of 10 ms those pages go back to the kernel between requests and come back zeroed,
/// which costs about a seventh of the ingestor's CPU at high rates. A second keeps the
/// steady churn in the process and still returns what a burst left behind.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 1_000;

/// Reads the Finnhub websocket trade feed and writes every trade to an Amazon Kinesis
/// stream, shard-aware, aggregated and in order per symbol.
#[derive(Parser)]
#[command(
    version,
    after_help = "AWS endpoint, region and credentials come from the standard AWS environment \
                  and config chain (AWS_REGION, AWS_ENDPOINT_URL_KINESIS, profiles, instance \
                  roles).\n\nMetrics: GET /metrics on --metrics-listen (Prometheus text).\n\n\
                  Exit status: 0 when every received trade was acknowledged by Kinesis, 1 when \
                  some were lost, 2 on a configuration error."
)]
struct Cli {
    #[command(flatten)]
    config: ingestor::config::IngestorConfig,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "TICKPIPE_LOG_JSON")]
    log_json: bool,
}

fn main() -> ExitCode {
    // SAFETY: setting an option is a plain store that mimalloc reads on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    if let Err(e) = cli.config.validate() {
        eprintln!("ingestor: {e}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.config.worker_threads)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli.config)),
        Err(e) => {
            eprintln!("ingestor: could not start the async runtime: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the pipeline on the runtime's main thread, which reads the websocket.
async fn run(config: ingestor::config::IngestorConfig) -> ExitCode {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = ingestor::kinesis_client(&sdk, &config);
    let stats = Arc::new(ingestor::stats::Stats::default());
    match ingestor::run(config, client, stats, shutdown_signal()).await {
        Ok(report) if report.summary.lossless() => ExitCode::SUCCESS,
        Ok(report) => {
            let s = report.summary;
            eprintln!(
                "ingestor: {} of {} received trades were not acknowledged ({} dropped)",
                s.received - s.acked.min(s.received),
                s.received,
                s.dropped
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ingestor: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler succeeds on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}
