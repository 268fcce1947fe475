//! tickpipe's load tools: for now, a websocket server speaking the Finnhub trade protocol.
//!
//! The feed plays Finnhub for the local demo, for tests and for load: clients subscribe to
//! symbols and receive synthetic random-walk trades at a chosen rate, or a fixed script of
//! frames that a test later checks the pipeline's output against.
//!
//! Data flows: [`feed::Feed::serve`] accepts connections → token check and upgrade →
//! per-connection loop: subscriptions in, trade frames and pings out, from a
//! [`feed::TradeSource`].
//!
//! Files:
//! - `main.rs`: flags, logging, signals; calls [`run`].
//! - `cli.rs`: the flags of every subcommand and their defaults.
//! - `duration.rs`: human-written durations for flags (`500ms`, `60s`).
//! - `feed.rs` and `feed/`: the feed server; its docs list its files.

pub mod cli;
pub mod duration;
pub mod feed;

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
    }
}

/// Runs `loadgen feed`: binds, serves, and logs a progress line every `--progress-every`.
pub async fn run_feed(
    args: &FeedArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<FeedStats> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = args.feed_config(seed)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    info!(
        rate = args.rate,
        trades_per_frame = %args.trades_per_frame,
        seed,
        "synthetic trades"
    );
    let feed = Feed::new(config)?;
    let progress = tokio::spawn(feed::log_progress(feed.handle(), args.progress_every));
    let stats = feed.serve(listener, shutdown).await;
    progress.abort();
    Ok(stats?)
}
