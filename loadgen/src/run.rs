//! `loadgen run`: one command for a load test. It starts the feed and the verifying sink
//! in this process, the ingestor as a child process between them, drives load for a
//! duration or a trade count, stops everything in the order that loses nothing, and
//! reports what was sent, what arrived and what it cost.
//!
//! ```text
//!  feed thread (own runtime)      ingestor (child)            sink (tasks)
//!  ws://127.0.0.1:P  ── trades ──► --url ws://.. ── PutRecords ──► http://127.0.0.1:Q
//! ```
//!
//! The order of a run:
//!
//! 1. Bind both listeners (port 0 by default), start the feed on a thread of its own
//!    (a one-thread runtime, so that its CPU time is one core's), the sink on this
//!    runtime, and the ingestor with `--url`, `--stream`, `--metrics-listen off` and, for
//!    a replay or a synthetic universe, `--symbols`; its AWS endpoint is the sink and its
//!    credentials are dummies.
//! 2. Wait for the first subscription, then drive load for `--duration` or until the feed
//!    has sent `--trades`, printing a progress line every `--progress-every`.
//! 3. Stop the feed: it closes every websocket after the frames already written, so the
//!    ingestor reads everything the feed counted as sent.
//! 4. Settle: wait until the sink has received every trade sent, or until it has gone
//!    `--settle` without a new one.
//! 5. SIGTERM the ingestor, which flushes what it holds, and wait for it to exit (killing
//!    it after `--stop-timeout`); then stop the sink and take its report.
//!
//! Lost is trades sent by the feed less distinct trades received by the sink. Without
//! `--ingestor` (`none`), the run waits for any client, such as an ingestor started by
//! hand or a test's scripted one, and reports the same way.
//!
//! Files: `run/child.rs` starts, measures and stops the child; `run/report.rs` holds
//! [`RunReport`], its table and JSON.

mod child;
mod report;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

pub use child::{ChildCommand, ChildError, ChildUsage, RunningChild, thread_cpu_seconds};
pub use report::{FeedUsage, IngestorUsage, RunReport, count};

use crate::cli::RunArgs;
use crate::feed::{Feed, FeedConfig, FeedError, FeedHandle, FeedStats, TradeSource};
use crate::sink::{ShardLimits, Sink, SinkConfig, SinkError, SinkHandle, SinkStats};

/// Where `loadgen run` looks for the ingestor when `--ingestor` is not given.
pub const DEFAULT_INGESTOR: &str = "target/release/ingestor";

/// How long load is driven when neither `--duration` nor `--trades` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// How long a started ingestor gets to connect and subscribe before the run gives up.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the run checks its stop conditions; also the resolution of `--trades`.
const POLL: Duration = Duration::from_millis(10);

/// The longest single argument Linux passes to a program (`MAX_ARG_STRLEN`).
const MAX_ARG_BYTES: usize = 128 * 1024;

/// Region and credentials the ingestor is given: the sink checks neither, but the AWS
/// SDK refuses to sign requests without them.
const DUMMY_REGION: &str = "us-east-1";
const DUMMY_KEY_ID: &str = "loadgen";
const DUMMY_SECRET: &str = "loadgen";

/// Environment the ingestor must not inherit: the real Finnhub token and any AWS session
/// or profile that would send it to a real account instead of the sink.
const ENV_REMOVED: [&str; 5] =
    ["FINNHUB_TOKEN", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"];

/// The ingestor to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestorLaunch {
    pub program: PathBuf,
    /// Passed after the flags the run sets, so they can override them.
    pub extra_args: Vec<String>,
    /// Append its stdout and stderr here instead of inheriting them.
    pub log: Option<PathBuf>,
}

/// When to stop driving load: whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Until {
    pub duration: Option<Duration>,
    pub trades: Option<u64>,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub feed: FeedConfig,
    pub feed_listen: String,
    pub sink: SinkConfig,
    pub sink_listen: String,
    /// `None`: start no ingestor and wait for any client.
    pub ingestor: Option<IngestorLaunch>,
    pub until: Until,
    pub settle: Duration,
    /// Trades received in this first part of the load add no latency sample.
    pub warmup: Duration,
    pub stop_timeout: Duration,
    pub progress_every: Duration,
    /// Print progress lines on stderr.
    pub print_progress: bool,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{flag} {reason}")]
    InvalidConfig { flag: &'static str, reason: String },
    #[error("{flag} {addr}: cannot listen: {source}")]
    Bind {
        flag: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("the ingestor exited during the run ({0}); see its log")]
    IngestorExited(String),
    #[error("no client subscribed to the feed within {0:?}; see the ingestor's log")]
    NoSubscriber(Duration),
    #[error("the feed thread failed: {0}")]
    FeedThread(String),
    #[error("the sink task failed: {0}")]
    SinkTask(String),
}

impl RunError {
    /// A bad flag, a missing binary or an ingestor that crashes will do so again; a busy
    /// port or a slow start may not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::InvalidConfig { .. } | Self::IngestorExited(_) => false,
            Self::Bind { .. } | Self::NoSubscriber(_) => true,
            // A panic is a bug and a thread that cannot start means exhausted resources:
            // neither goes away by running again.
            Self::FeedThread(_) | Self::SinkTask(_) => false,
            Self::Feed(e) => e.is_retryable(),
            Self::Sink(e) => e.is_retryable(),
            Self::Child(e) => e.is_retryable(),
        }
    }
}

impl RunConfig {
    /// The run these flags describe. Reads the capture file when replaying and picks the
    /// default ingestor binary when `--ingestor` is not given.
    pub fn from_args(args: &RunArgs, seed: u64) -> Result<Self, RunError> {
        let feed = FeedConfig {
            source: args.source.trade_source(seed)?,
            faults: args.faults.faults(seed)?,
            ..FeedConfig::synthetic(Default::default())
        };
        let sink = SinkConfig {
            stream: args.stream.clone(),
            shards: args.shards,
            limits: (!args.unlimited).then(ShardLimits::default),
            ..SinkConfig::default()
        };
        let program = match args.ingestor.as_deref() {
            Some("none") => None,
            Some(path) => Some(PathBuf::from(path)),
            None if Path::new(DEFAULT_INGESTOR).exists() => Some(DEFAULT_INGESTOR.into()),
            None => {
                return Err(RunError::InvalidConfig {
                    flag: "--ingestor",
                    reason: format!(
                        "not given and {DEFAULT_INGESTOR} does not exist: build it with \
                         `cargo build --release -p tickpipe-ingestor`, pass the binary's path, \
                         or pass `none` to start an ingestor by hand"
                    ),
                });
            }
        };
        let config = Self {
            feed,
            feed_listen: args.feed_listen.clone(),
            sink,
            sink_listen: args.sink_listen.clone(),
            ingestor: program.map(|program| IngestorLaunch {
                program,
                extra_args: args.ingestor_arg.clone(),
                log: args.ingestor_log.clone(),
            }),
            until: Until {
                duration: args.duration.or(args.trades.is_none().then_some(DEFAULT_DURATION)),
                trades: args.trades,
            },
            settle: args.settle,
            warmup: args.warmup,
            stop_timeout: args.stop_timeout,
            progress_every: args.progress_every,
            print_progress: true,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses values the run cannot honour, naming the flag that set them.
    pub fn validate(&self) -> Result<(), RunError> {
        let invalid = |flag, reason: String| Err(RunError::InvalidConfig { flag, reason });
        self.feed.validate()?;
        self.sink.validate()?;
        if self.until.duration.is_none() && self.until.trades.is_none() {
            return invalid("--duration", "or --trades is needed to know when to stop".into());
        }
        if self.until.duration.is_some_and(|d| d.is_zero()) {
            return invalid("--duration", "must be above zero, such as 30s".into());
        }
        if self.until.trades == Some(0) {
            return invalid("--trades", "must be at least 1".into());
        }
        if self.progress_every.is_zero() {
            return invalid("--progress-every", "must be above zero, such as 1s".into());
        }
        if self.settle.is_zero() {
            return invalid("--settle", "must be above zero, such as 5s".into());
        }
        if let Some(d) = self.until.duration
            && self.warmup >= d
        {
            return invalid("--warmup", format!("must be shorter than --duration ({d:?})"));
        }
        if self.ingestor.is_some()
            && let Some(symbols) = ingestor_symbols(&self.feed.source)
        {
            let bytes = symbols.iter().map(|s| s.len() + 1).sum::<usize>();
            if bytes > MAX_ARG_BYTES {
                let flag = match self.feed.source {
                    TradeSource::Replay(_) => "--replay",
                    _ => "--symbols",
                };
                return invalid(
                    flag,
                    format!(
                        "gives {} symbols, {bytes} bytes as the ingestor's --symbols; Linux \
                         passes at most {MAX_ARG_BYTES} bytes in one argument",
                        symbols.len()
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The symbols the ingestor is told to subscribe to: the capture's when replaying, the
/// universe's when it has one, otherwise its own defaults (`None`).
pub fn ingestor_symbols(source: &TradeSource) -> Option<Vec<String>> {
    match source {
        TradeSource::Replay(replay) => Some(replay.capture.symbols().to_vec()),
        TradeSource::Synthetic(s) => s.universe.map(|u| u.names().collect()),
        TradeSource::Scripted(script) => Some(script.wait_for_symbols().into_iter().collect()),
    }
}

/// A run with its listeners bound, ready to execute.
pub struct Run {
    config: RunConfig,
    feed_listener: std::net::TcpListener,
    sink_listener: TcpListener,
    feed_addr: SocketAddr,
    sink_addr: SocketAddr,
}

impl Run {
    /// Checks the configuration and binds the feed and sink listeners.
    pub async fn bind(config: RunConfig) -> Result<Self, RunError> {
        config.validate()?;
        let bind_err = |flag, addr: &str| {
            let addr = addr.to_owned();
            move |source| RunError::Bind { flag, addr, source }
        };
        // The feed's listener is a std one: it is registered with the feed thread's own
        // runtime there, not with this one.
        let feed_listener = std::net::TcpListener::bind(&config.feed_listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(bind_err("--feed-listen", &config.feed_listen))?;
        let sink_listener = TcpListener::bind(&config.sink_listen)
            .await
            .map_err(bind_err("--sink-listen", &config.sink_listen))?;
        let feed_addr =
            feed_listener.local_addr().map_err(bind_err("--feed-listen", &config.feed_listen))?;
        let sink_addr =
            sink_listener.local_addr().map_err(bind_err("--sink-listen", &config.sink_listen))?;
        Ok(Self { config, feed_listener, sink_listener, feed_addr, sink_addr })
    }

    pub fn feed_addr(&self) -> SocketAddr {
        self.feed_addr
    }

    pub fn sink_addr(&self) -> SocketAddr {
        self.sink_addr
    }

    /// The command that starts the ingestor against this run's feed and sink.
    pub fn ingestor_command(&self, launch: &IngestorLaunch) -> ChildCommand {
        ingestor_command(&self.config, self.feed_addr, self.sink_addr, launch)
    }

    /// Runs the load test to its end (or until `shutdown`, which ends the load phase
    /// early but still stops everything in order) and returns the report.
    pub async fn execute(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunReport, RunError> {
        let child_command = self.config.ingestor.as_ref().map(|l| self.ingestor_command(l));
        let Self { config, feed_listener, sink_listener, feed_addr, sink_addr } = self;
        let source = config.feed.source.label();

        let feed = Feed::new(config.feed.clone())?;
        let feed_handle = feed.handle();
        let (feed_stop, feed_done) = start_feed_thread(feed, feed_listener)?;

        let sink = Sink::new(config.sink.clone())?;
        let sink_handle = sink.handle();
        let (sink_stop, sink_stopped) = oneshot::channel::<()>();
        let sink_task = tokio::spawn(sink.serve(sink_listener, async {
            let _ = sink_stopped.await;
        }));
        info!(feed = %format!("ws://{feed_addr}"), sink = %format!("http://{sink_addr}"), "run started");

        let mut child = match &child_command {
            Some(command) => Some(RunningChild::spawn(command)?),
            None => {
                eprintln!(
                    "waiting for a client: start an ingestor with \
                     AWS_ENDPOINT_URL_KINESIS=http://{sink_addr} ingestor --url ws://{feed_addr} \
                     --stream {}",
                    config.sink.stream
                );
                None
            }
        };

        let mut shutdown = std::pin::pin!(shutdown);
        let driven =
            drive(&config, &feed_handle, &sink_handle, child.as_mut(), &mut shutdown).await;

        // Stop in the order that loses nothing, whatever happened while driving.
        let _ = feed_stop.send(());
        let feed_result = feed_done.await.map_err(|_| RunError::FeedThread("it panicked".into()));
        let settled = match (&driven, &feed_result) {
            (Ok(_), Ok(Ok((stats, _)))) => {
                settle(stats.trades_sent, &sink_handle, child.as_mut(), config.settle).await
            }
            _ => false,
        };
        let usage = match child {
            Some(child) => Some(child.stop(config.stop_timeout).await?),
            None => None,
        };
        let _ = sink_stop.send(());
        let sink_report = sink_task.await.map_err(|e| RunError::SinkTask(e.to_string()))??;
        let load_secs = driven?;
        let (feed_stats, feed_cpu) = feed_result??;
        if !settled {
            warn!("the sink was still short of trades when the settle time ran out");
        }

        let sent = feed_stats.trades_sent;
        let received = sink_report.stats.trades - sink_report.stats.duplicates;
        let ingestor = usage.map(|usage| IngestorUsage {
            cpu_seconds_per_million_trades: per_million(usage.cpu_seconds, sent),
            usage,
        });
        Ok(RunReport {
            source: source.to_owned(),
            load_secs,
            trades_sent: sent,
            trades_received: received,
            lost: sent.saturating_sub(received),
            duplicated: sink_report.stats.duplicates,
            reordered: sink_report.stats.reorders,
            throttled: sink_report.stats.records_throttled,
            sent_per_sec: if load_secs > 0.0 { sent as f64 / load_secs } else { 0.0 },
            latency_us: sink_report.latency_us,
            latency_warmup_secs: config.warmup.as_secs_f64(),
            feed: FeedUsage {
                cpu_seconds: feed_cpu,
                trades_per_cpu_second: if feed_cpu > 0.0 { sent as f64 / feed_cpu } else { 0.0 },
            },
            ingestor,
            feed_stats,
            sink: sink_report,
        })
    }
}

/// What the feed thread hands back: its final counters and its CPU seconds.
type FeedOutcome = Result<(FeedStats, f64), RunError>;

/// Starts the feed on a thread with a one-thread runtime of its own, so that its CPU time
/// is one core's and the sink and ingestor do not share its core's runtime.
fn start_feed_thread(
    feed: Feed,
    listener: std::net::TcpListener,
) -> Result<(oneshot::Sender<()>, oneshot::Receiver<FeedOutcome>), RunError> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::FeedThread(format!("cannot build its runtime: {e}")))?;
    std::thread::Builder::new()
        .name("feed".into())
        .spawn(move || {
            let outcome = runtime.block_on(async move {
                let cpu_before = thread_cpu_seconds().unwrap_or(0.0);
                let listener = TcpListener::from_std(listener).map_err(FeedError::Listener)?;
                let stats = feed
                    .serve(listener, async {
                        let _ = stop_rx.await;
                    })
                    .await?;
                let cpu = thread_cpu_seconds().unwrap_or(0.0) - cpu_before;
                Ok((stats, cpu))
            });
            // The receiver is gone only if the run itself was dropped.
            let _ = done_tx.send(outcome);
        })
        .map_err(|e| RunError::FeedThread(format!("cannot start it: {e}")))?;
    Ok((stop_tx, done_rx))
}

/// Drives load until a stop condition; returns the seconds load was driven.
async fn drive(
    config: &RunConfig,
    feed: &FeedHandle,
    sink: &SinkHandle,
    mut child: Option<&mut RunningChild>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<f64, RunError> {
    let check_child = |child: &mut Option<&mut RunningChild>| match child {
        Some(c) => c.try_exit().map_or(Ok(()), |s| Err(RunError::IngestorExited(s.to_string()))),
        None => Ok(()),
    };
    // Wait for the first subscription: load starts when a client is there to take it.
    let waiting_since = Instant::now();
    loop {
        if feed.stats().subscriptions > 0 {
            break;
        }
        check_child(&mut child)?;
        if child.is_some() && waiting_since.elapsed() > SUBSCRIBE_TIMEOUT {
            return Err(RunError::NoSubscriber(SUBSCRIBE_TIMEOUT));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut *shutdown => return Ok(0.0),
        }
    }
    let started = Instant::now();
    let mut progress = Progress::new(feed.stats(), sink.stats(), started);
    let mut warming_up = !config.warmup.is_zero();
    loop {
        let sent = feed.stats().trades_sent;
        let elapsed = started.elapsed();
        if warming_up && elapsed >= config.warmup {
            sink.measure_latency_from_now();
            warming_up = false;
        }
        if config.until.duration.is_some_and(|d| elapsed >= d)
            || config.until.trades.is_some_and(|n| sent >= n)
        {
            break;
        }
        check_child(&mut child)?;
        if config.print_progress && progress.due(config.progress_every) {
            eprintln!("{}", progress.line(feed.stats(), sink.stats()));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut *shutdown => {
                info!("shutdown requested: ending the load early");
                break;
            }
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Waits until the sink holds `sent` distinct trades, or has gone `settle` without a new
/// one, or the ingestor has exited; returns whether everything arrived.
async fn settle(
    sent: u64,
    sink: &SinkHandle,
    mut child: Option<&mut RunningChild>,
    settle: Duration,
) -> bool {
    let mut last = distinct(&sink.stats());
    let mut last_change = Instant::now();
    loop {
        let now = distinct(&sink.stats());
        if now >= sent {
            return true;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        let exited = child.as_mut().is_some_and(|c| c.try_exit().is_some());
        if exited || last_change.elapsed() >= settle {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn distinct(stats: &SinkStats) -> u64 {
    stats.trades - stats.duplicates
}

fn per_million(seconds: f64, trades: u64) -> f64 {
    if trades == 0 { 0.0 } else { seconds * 1e6 / trades as f64 }
}

/// Builds the ingestor's command line and environment for a run's addresses.
fn ingestor_command(
    config: &RunConfig,
    feed_addr: SocketAddr,
    sink_addr: SocketAddr,
    launch: &IngestorLaunch,
) -> ChildCommand {
    let mut args = vec![
        "--url".to_owned(),
        format!("ws://{feed_addr}"),
        "--stream".to_owned(),
        config.sink.stream.clone(),
        "--metrics-listen".to_owned(),
        "off".to_owned(),
    ];
    if let Some(symbols) = ingestor_symbols(&config.feed.source) {
        args.push("--symbols".to_owned());
        args.push(symbols.join(","));
    }
    args.extend(launch.extra_args.iter().cloned());
    let env = [
        ("AWS_ENDPOINT_URL_KINESIS", format!("http://{sink_addr}")),
        ("AWS_REGION", DUMMY_REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", DUMMY_KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET.to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    ChildCommand {
        program: launch.program.clone(),
        args,
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        env_remove: ENV_REMOVED.iter().map(|s| (*s).to_owned()).collect(),
        log: launch.log.clone(),
    }
}

/// The live progress line: rates over the last period and the running lag.
struct Progress {
    started: Instant,
    last_at: Instant,
    last_feed: FeedStats,
    last_sink: SinkStats,
}

impl Progress {
    fn new(feed: FeedStats, sink: SinkStats, started: Instant) -> Self {
        Self { started, last_at: started, last_feed: feed, last_sink: sink }
    }

    fn due(&self, every: Duration) -> bool {
        self.last_at.elapsed() >= every
    }

    fn line(&mut self, feed: FeedStats, sink: SinkStats) -> String {
        let secs = self.last_at.elapsed().as_secs_f64().max(f64::EPSILON);
        let rate = |new: u64, old: u64| count((new.saturating_sub(old) as f64 / secs) as u64);
        let line = format!(
            "[{:>6.1}s] sent {:>11}/s  received {:>11}/s  lag {:>10}  throttled {:>8}/s  \
             sent total {}",
            self.started.elapsed().as_secs_f64(),
            rate(feed.trades_sent, self.last_feed.trades_sent),
            rate(distinct(&sink), distinct(&self.last_sink)),
            count(feed.trades_sent.saturating_sub(distinct(&sink))),
            rate(sink.records_throttled, self.last_sink.records_throttled),
            count(feed.trades_sent),
        );
        self.last_at = Instant::now();
        self.last_feed = feed;
        self.last_sink = sink;
        line
    }
}

/// Runs `loadgen run` from its flags: prints progress, the report table on stdout, writes
/// the JSON report, and fails when any trade was lost.
pub async fn run_cli(
    args: &RunArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<RunReport> {
    let seed = args.source.seed.unwrap_or_else(rand::random);
    info!(seed, "run seed");
    let config = RunConfig::from_args(args, seed)?;
    let run = Run::bind(config).await?;
    let report = run.execute(shutdown).await?;
    print!("{}", report.table());
    if let Some(path) = &args.report_json {
        let json = serde_json::to_string_pretty(&report).context("serializing the run report")?;
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("--report-json {}: cannot write", path.display()))?;
    }
    if !report.lossless() {
        error!(lost = report.lost, sent = report.trades_sent, "trades were lost");
        anyhow::bail!(
            "{} of {} trades sent were never received",
            count(report.lost),
            count(report.trades_sent)
        );
    }
    Ok(report)
}
