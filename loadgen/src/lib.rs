//! tickpipe's load tools: a websocket server speaking the Finnhub trade protocol, a
//! recorder for that protocol, a verifying Kinesis stand-in, and a load-test runner that
//! puts them around the ingestor.
//!
//! The feed plays Finnhub for the local demo, for tests and for load: clients subscribe to
//! symbols and receive synthetic random-walk trades (Zipf-skewed, bursting, over a million
//! a second per core), a replayed capture file, or a fixed script of frames that a test
//! later checks the pipeline's output against; it can also drop, corrupt, stall and
//! silence its connections on purpose.
//!
//! Data flows: [`feed::Feed::serve`] accepts connections → token check and upgrade →
//! per-connection loop: subscriptions in, trade frames and pings out, from a
//! [`feed::TradeSource`]. `loadgen record` writes what a feed sends to a capture file;
//! `loadgen run` wires feed → ingestor → sink and reports what arrived.
//!
//! Files:
//! - `main.rs`: flags, logging, signals; calls [`run()`].
//! - `cli.rs`: the flags of every subcommand and their defaults.
//! - `duration.rs`: human-written durations for flags (`500ms`, `60s`).
//! - `feed.rs` and `feed/`: the feed server; its docs list its files.
//! - `record.rs`: `loadgen record`, a Finnhub client that writes capture files.
//! - `run.rs` and `run/`: `loadgen run`, feed, sink and ingestor in one load test, and
//!   its report.
//! - `sink.rs` and `sink/`: the verifying Kinesis stand-in (`loadgen sink`); its docs list
//!   its files.

pub mod cli;
pub mod duration;
pub mod feed;
pub mod record;
pub mod run;
pub mod sink;

use std::future::Future;

use anyhow::Context;
use tracing::info;

use cli::{Command, FeedArgs};
use feed::{Feed, FeedStats};

/// Runs one subcommand until `shutdown` resolves.
pub async fn run(
    command: Command,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    match command {
        Command::Feed(args) => run_feed(&args, shutdown).await.map(drop),
        Command::Record(args) => record::record(&args, shutdown).await.map(drop),
        Command::Run(args) => run::run_cli(&args, shutdown).await.map(drop),
        Command::Sink(args) => run_sink(&args, shutdown).await.map(drop),
    }
}

/// Runs `loadgen feed`: binds, serves, and logs a progress line every `--progress-every`.
pub async fn run_feed(
    args: &FeedArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<FeedStats> {
    let seed = args.source.seed.unwrap_or_else(rand::random);
    let config = args.feed_config(seed)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    match &config.source {
        feed::TradeSource::Replay(replay) => info!(
            frames = replay.capture.frame_count(),
            trades = replay.capture.trade_count(),
            symbols = replay.capture.symbols().len(),
            span = ?replay.capture.span(),
            speed = %replay.speed,
            looped = replay.looped,
            "replaying a capture"
        ),
        _ => info!(
            rate = args.source.rate,
            trades_per_frame = %args.source.trades_per_frame,
            universe = ?args.source.symbols,
            zipf = args.source.zipf,
            burst_every = ?args.source.burst_every,
            seed,
            "synthetic trades"
        ),
    }
    let feed = Feed::new(config)?;
    let progress = tokio::spawn(feed::log_progress(feed.handle(), args.progress_every));
    let stats = feed.serve(listener, shutdown).await;
    progress.abort();
    Ok(stats?)
}

/// Runs `loadgen sink`: binds, serves, logs a progress line every `--progress-every`, and
/// at shutdown prints the report as JSON on stdout (and writes it to `--report-json`).
pub async fn run_sink(
    args: &cli::SinkArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<sink::SinkReport> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = args.sink_config(seed)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    info!(seed, "sink fault dice");
    let sink = sink::Sink::new(config)?;
    let progress = tokio::spawn(sink::log_progress(sink.handle(), args.progress_every));
    let report = sink.serve(listener, shutdown).await;
    progress.abort();
    let report = report?;
    let json = serde_json::to_string_pretty(&report).context("serializing the sink report")?;
    if let Some(path) = &args.report_json {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("--report-json {}: cannot write", path.display()))?;
    }
    println!("{json}");
    Ok(report)
}
