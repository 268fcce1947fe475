//! Command-line flags. Every flag can also be set from the environment variable named in
//! its help, and every default lives here, in the flag's declaration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::duration::parse_duration;
use crate::feed::{
    Burst, Capture, Faults, FeedConfig, FeedError, FrameSize, ReplayConfig, Speed, Stall,
    SyntheticConfig, Token, TradeSource, Universe,
};

/// Load tools for tickpipe.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to run. The verifying Kinesis sink, capture recording and full load runs join
/// this list as they are built.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Finnhub websocket protocol with synthetic or replayed trades.
    Feed(FeedArgs),
    /// Record a Finnhub websocket feed into a capture file that `--replay` plays back.
    Record(RecordArgs),
    /// Run a load test: feed, ingestor and verifying sink, with a report at the end.
    Run(RunArgs),
    /// Play Kinesis for benchmarks and fault tests: enforce shard limits, inject faults,
    /// and verify every trade written.
    Sink(SinkArgs),
}

/// Flags of `loadgen feed`.
#[derive(Debug, Clone, Args)]
pub struct FeedArgs {
    /// Address to listen on (host:port).
    #[arg(long, env = "LOADGEN_FEED_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: String,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub faults: FaultArgs,

    /// Require clients to connect with ?token=THIS; anyone may connect if unset.
    #[arg(long, env = "LOADGEN_FEED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Symbols one connection may subscribe to (a free Finnhub account gets 50); no limit if
    /// unset.
    #[arg(long, env = "LOADGEN_FEED_MAX_SYMBOLS")]
    pub max_symbols: Option<usize>,

    /// Time between {"type":"ping"} frames, such as 60s or 500ms.
    #[arg(long, env = "LOADGEN_FEED_PING_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Time between progress lines on stderr, such as 5s.
    #[arg(long, env = "LOADGEN_FEED_PROGRESS_EVERY", default_value = "5s", value_parser = parse_duration)]
    pub progress_every: Duration,
}

impl FeedArgs {
    /// The feed configuration these flags describe, validated. Reads the capture file
    /// when replaying.
    pub fn feed_config(&self, seed: u64) -> Result<FeedConfig, FeedError> {
        let config = FeedConfig {
            source: self.source.trade_source(seed)?,
            token: self.token.clone().map(Token::new),
            max_symbols: self.max_symbols,
            ping_interval: self.ping_interval,
            faults: self.faults.faults(seed)?,
        };
        config.validate()?;
        if self.progress_every.is_zero() {
            return Err(FeedError::InvalidConfig {
                flag: "--progress-every",
                reason: "must be above zero, such as 5s".into(),
            });
        }
        Ok(config)
    }
}

/// Where the feed's trades come from: synthetic flags, or a capture to replay.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Trades per second each connection receives outside bursts, spread over its
    /// subscribed symbols.
    #[arg(long, env = "LOADGEN_FEED_RATE", default_value_t = 50.0)]
    pub rate: f64,

    /// Trades per frame: N, or MIN..MAX (inclusive) for a random count per frame.
    #[arg(long, env = "LOADGEN_FEED_TRADES_PER_FRAME", default_value = "1")]
    pub trades_per_frame: FrameSize,

    /// Seed for prices, volumes, condition codes and faults; drawn at random (and logged)
    /// if unset.
    #[arg(long, env = "LOADGEN_FEED_SEED")]
    pub seed: Option<u64>,

    /// A synthetic universe of N symbols named SYN:0000, SYN:0001, ...; only these may be
    /// subscribed. Any valid symbol may be subscribed if unset.
    #[arg(long, env = "LOADGEN_FEED_SYMBOLS", conflicts_with = "replay")]
    pub symbols: Option<usize>,

    /// Zipf exponent of activity over a connection's symbols, in the order it subscribed
    /// to them: the k-th gets a share proportional to 1/k^s. 0 spreads trades evenly.
    #[arg(long, env = "LOADGEN_FEED_ZIPF", default_value_t = 1.0, conflicts_with = "replay")]
    pub zipf: f64,

    /// Start a burst this often (the first one period after start), such as 30s.
    #[arg(long, env = "LOADGEN_FEED_BURST_EVERY", value_parser = parse_duration, conflicts_with = "replay")]
    pub burst_every: Option<Duration>,

    /// Rate multiplier during a burst.
    #[arg(
        long,
        env = "LOADGEN_FEED_BURST_FACTOR",
        default_value_t = 10.0,
        requires = "burst_every"
    )]
    pub burst_factor: f64,

    /// How long each burst lasts, such as 2s; below --burst-every.
    #[arg(long, env = "LOADGEN_FEED_BURST_LENGTH", value_parser = parse_duration, default_value = "1s", requires = "burst_every")]
    pub burst_length: Duration,

    /// Replay the trade frames of this capture file (written by `loadgen record`) instead
    /// of synthetic trades.
    #[arg(long, env = "LOADGEN_FEED_REPLAY")]
    pub replay: Option<PathBuf>,

    /// Replay speed: a factor of real time such as 1x or 10x, or max. [default: 1x]
    #[arg(long, env = "LOADGEN_FEED_SPEED", requires = "replay")]
    pub speed: Option<Speed>,

    /// Replay the capture over and over, each pass re-timed to start now.
    #[arg(long = "loop", env = "LOADGEN_FEED_LOOP", requires = "replay")]
    pub looped: bool,
}

impl SourceArgs {
    /// The trade source these flags describe. Reads the capture file when replaying; the
    /// feed validates the rest.
    pub fn trade_source(&self, seed: u64) -> Result<TradeSource, FeedError> {
        if let Some(path) = &self.replay {
            let capture = Capture::load(path).map_err(|err| FeedError::InvalidConfig {
                flag: "--replay",
                reason: err.to_string(),
            })?;
            return Ok(TradeSource::Replay(ReplayConfig {
                capture: Arc::new(capture),
                speed: self.speed.unwrap_or(Speed::Factor(1.0)),
                looped: self.looped,
            }));
        }
        Ok(TradeSource::Synthetic(SyntheticConfig {
            rate: self.rate,
            frame_size: self.trades_per_frame,
            seed,
            zipf: self.zipf,
            burst: self.burst_every.map(|every| Burst {
                every,
                factor: self.burst_factor,
                length: self.burst_length,
            }),
            universe: self.symbols.map(Universe::new),
        }))
    }
}

/// Faults the feed injects into every connection.
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// Close each connection abruptly (TCP close, no websocket close) this long after it
    /// opened, such as 30s.
    #[arg(long, env = "LOADGEN_FEED_DROP_EVERY", value_parser = parse_duration)]
    pub drop_every: Option<Duration>,

    /// Fraction of data frames that are malformed (truncated JSON, invalid numbers,
    /// unknown types), inserted between real ones; from 0 to 0.9.
    #[arg(long, env = "LOADGEN_FEED_MALFORMED_RATE", default_value_t = 0.0)]
    pub malformed_rate: f64,

    /// Stop writing to each connection this often, such as 20s; needs --stall-for.
    #[arg(long, env = "LOADGEN_FEED_STALL_EVERY", value_parser = parse_duration, requires = "stall_for")]
    pub stall_every: Option<Duration>,

    /// How long each stall lasts, such as 3s; below --stall-every.
    #[arg(long, env = "LOADGEN_FEED_STALL_FOR", value_parser = parse_duration, requires = "stall_every")]
    pub stall_for: Option<Duration>,

    /// Stop writing to each connection for good (pings too) this long after it opened,
    /// leaving it open, such as 10s.
    #[arg(long, env = "LOADGEN_FEED_SILENCE_AFTER", value_parser = parse_duration)]
    pub silence_after: Option<Duration>,
}

impl FaultArgs {
    /// The faults these flags describe; the feed validates them.
    pub fn faults(&self, seed: u64) -> Result<Faults, FeedError> {
        let stall = match (self.stall_every, self.stall_for) {
            (Some(every), Some(length)) => Some(Stall { every, length }),
            (None, None) => None,
            // clap's `requires` makes these unreachable from the command line; a caller
            // building the struct by hand still gets a clear answer.
            (Some(_), None) => {
                return Err(FeedError::InvalidConfig {
                    flag: "--stall-for",
                    reason: "is needed with --stall-every".into(),
                });
            }
            (None, Some(_)) => {
                return Err(FeedError::InvalidConfig {
                    flag: "--stall-every",
                    reason: "is needed with --stall-for".into(),
                });
            }
        };
        Ok(Faults {
            drop_every: self.drop_every,
            malformed_rate: self.malformed_rate,
            stall,
            silence_after: self.silence_after,
            seed,
        })
    }
}

/// The symbols `loadgen record` subscribes to unless told otherwise: the ingestor's
/// defaults, a few liquid stocks and two crypto pairs that trade at any hour.
pub const RECORD_DEFAULT_SYMBOLS: &str = "AAPL,MSFT,AMZN,NVDA,TSLA,BINANCE:BTCUSDT,BINANCE:ETHUSDT";

/// Flags of `loadgen record`.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Websocket URL of the feed (ws:// or wss://). The token is added from FINNHUB_TOKEN
    /// and never printed.
    #[arg(long, env = "LOADGEN_RECORD_URL", default_value = "wss://ws.finnhub.io")]
    pub url: String,

    /// Finnhub API token, sent as the `token` query parameter.
    #[arg(long = "finnhub-token", env = "FINNHUB_TOKEN", hide_env_values = true, hide = true)]
    pub token: Option<String>,

    /// Symbols to subscribe, comma-separated.
    #[arg(long, env = "LOADGEN_RECORD_SYMBOLS", value_delimiter = ',', default_value = RECORD_DEFAULT_SYMBOLS)]
    pub symbols: Vec<String>,

    /// Capture file to write (replaced if it exists).
    #[arg(long, env = "LOADGEN_RECORD_OUT")]
    pub out: PathBuf,

    /// Stop after this long, such as 10m. With neither this nor --frames, record until
    /// SIGINT or SIGTERM.
    #[arg(long, env = "LOADGEN_RECORD_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many frames.
    #[arg(long, env = "LOADGEN_RECORD_FRAMES")]
    pub frames: Option<u64>,

    /// A comment written at the top of the file, after '# '.
    #[arg(long, env = "LOADGEN_RECORD_COMMENT")]
    pub comment: Option<String>,

    /// Time allowed for TCP, TLS and the websocket handshake together.
    #[arg(long, env = "LOADGEN_RECORD_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
}

/// Flags of `loadgen run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub faults: FaultArgs,

    /// Address the feed listens on; port 0 picks a free port.
    #[arg(long, env = "LOADGEN_RUN_FEED_LISTEN", default_value = "127.0.0.1:0")]
    pub feed_listen: String,

    /// Address the sink listens on; port 0 picks a free port.
    #[arg(long, env = "LOADGEN_RUN_SINK_LISTEN", default_value = "127.0.0.1:0")]
    pub sink_listen: String,

    /// The ingestor binary to start, or `none` to start nothing and wait for one started
    /// by hand (the feed and sink addresses are printed). [default: target/release/ingestor]
    #[arg(long, env = "LOADGEN_RUN_INGESTOR")]
    pub ingestor: Option<String>,

    /// One more argument for the ingestor, such as --ingestor-arg=--aggregation=off;
    /// repeat for several (space-separated in the environment variable).
    #[arg(
        long,
        env = "LOADGEN_RUN_INGESTOR_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub ingestor_arg: Vec<String>,

    /// Append the ingestor's stdout and stderr to this file instead of this terminal.
    #[arg(long, env = "LOADGEN_RUN_INGESTOR_LOG")]
    pub ingestor_log: Option<PathBuf>,

    /// Kinesis stream the sink serves and the ingestor writes to.
    #[arg(long, env = "LOADGEN_RUN_STREAM", default_value = "tickpipe-trades")]
    pub stream: String,

    /// Shards of the sink's stream.
    #[arg(long, env = "LOADGEN_RUN_SHARDS", default_value_t = 4)]
    pub shards: usize,

    /// Accept any rate on every shard instead of Kinesis' 1,000 records/s and 1 MiB/s.
    #[arg(long, env = "LOADGEN_RUN_UNLIMITED")]
    pub unlimited: bool,

    /// Drive load for this long, such as 30s. [default: 10s unless --trades is given]
    #[arg(long, env = "LOADGEN_RUN_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Drive load until the feed has sent this many trades (it may send a few more).
    #[arg(long, env = "LOADGEN_RUN_TRADES")]
    pub trades: Option<u64>,

    /// Leave trades received in the first part of the load out of the latency
    /// percentiles, such as 3s, to report steady-state latency without start-up (new
    /// connections, first allocations). Every trade is still counted and verified.
    #[arg(long, env = "LOADGEN_RUN_WARMUP", value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,

    /// After the feed stops, how long the sink may go without a new trade before the
    /// ingestor is told to stop.
    #[arg(long, env = "LOADGEN_RUN_SETTLE", value_parser = parse_duration, default_value = "5s")]
    pub settle: Duration,

    /// Longest wait for the ingestor to flush and exit after SIGTERM before it is killed.
    #[arg(long, env = "LOADGEN_RUN_STOP_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub stop_timeout: Duration,

    /// Time between progress lines.
    #[arg(long, env = "LOADGEN_RUN_PROGRESS_EVERY", value_parser = parse_duration, default_value = "1s")]
    pub progress_every: Duration,

    /// Also write the report as JSON to this file.
    #[arg(long, env = "LOADGEN_RUN_REPORT_JSON")]
    pub report_json: Option<PathBuf>,
}

/// Flags of `loadgen sink`.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Address to listen on (host:port); point the SDK at it with AWS_ENDPOINT_URL_KINESIS.
    #[arg(long, env = "LOADGEN_SINK_LISTEN", default_value = "127.0.0.1:4566")]
    pub listen: String,

    /// The stream to serve; requests for any other get ResourceNotFoundException.
    #[arg(long, env = "LOADGEN_SINK_STREAM", default_value = "tickpipe-trades")]
    pub stream: String,

    /// Open shards at start, splitting the hash-key space evenly.
    #[arg(long, env = "LOADGEN_SINK_SHARDS", default_value_t = crate::sink::DEFAULT_SHARDS)]
    pub shards: usize,

    /// Records each shard accepts in any one-second window (Kinesis: 1,000).
    #[arg(
        long,
        env = "LOADGEN_SINK_SHARD_RECORDS_PER_SEC",
        default_value_t = wire::limits::SHARD_MAX_RECORDS_PER_SEC
    )]
    pub shard_records_per_sec: u32,

    /// Bytes (data plus partition key) each shard accepts in any one-second window
    /// (Kinesis: 1 MiB).
    #[arg(
        long,
        env = "LOADGEN_SINK_SHARD_BYTES_PER_SEC",
        default_value_t = wire::limits::SHARD_MAX_BYTES_PER_SEC
    )]
    pub shard_bytes_per_sec: u32,

    /// Accept everything: no per-shard limits (the request limits still apply).
    #[arg(long, env = "LOADGEN_SINK_UNLIMITED")]
    pub unlimited: bool,

    /// Fraction (0 to 1) of records failed with InternalFailure inside a 200 answer.
    #[arg(long, env = "LOADGEN_SINK_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,

    /// Fraction (0 to 1) of write requests answered 500 InternalFailure or 503
    /// ServiceUnavailable, with nothing written.
    #[arg(long, env = "LOADGEN_SINK_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,

    /// Fraction (0 to 1) of write requests held for --slow-delay and then written.
    #[arg(long, env = "LOADGEN_SINK_SLOW_RATE", default_value_t = 0.0)]
    pub slow_rate: f64,

    /// How long a slow request is held, such as 6s (past the client's timeout, to make it
    /// retry a request that is then written twice).
    #[arg(long, env = "LOADGEN_SINK_SLOW_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub slow_delay: Duration,

    /// Split every shard in two this long after start, such as 30s.
    #[arg(long, env = "LOADGEN_SINK_RESHARD_AFTER", value_parser = parse_duration)]
    pub reshard_after: Option<Duration>,

    /// Seed for the fault dice; drawn at random (and logged) if unset.
    #[arg(long, env = "LOADGEN_SINK_SEED")]
    pub seed: Option<u64>,

    /// Time between progress lines on stderr, such as 5s.
    #[arg(long, env = "LOADGEN_SINK_PROGRESS_EVERY", default_value = "5s", value_parser = parse_duration)]
    pub progress_every: Duration,

    /// Also write the final report, as JSON, to this file.
    #[arg(long, env = "LOADGEN_SINK_REPORT_JSON")]
    pub report_json: Option<PathBuf>,
}

impl SinkArgs {
    /// The sink configuration these flags describe, validated.
    pub fn sink_config(
        &self,
        seed: u64,
    ) -> Result<crate::sink::SinkConfig, crate::sink::SinkError> {
        use crate::sink::{FaultConfig, ShardLimits, SinkConfig, SinkError};
        let limits = (!self.unlimited).then_some(ShardLimits {
            records_per_sec: self.shard_records_per_sec,
            bytes_per_sec: self.shard_bytes_per_sec,
        });
        let config = SinkConfig {
            stream: self.stream.clone(),
            shards: self.shards,
            limits,
            faults: FaultConfig {
                fail_rate: self.fail_rate,
                error_rate: self.error_rate,
                slow_rate: self.slow_rate,
                slow_delay: self.slow_delay,
                reshard_after: self.reshard_after,
                seed,
            },
        };
        config.validate()?;
        if self.progress_every.is_zero() {
            return Err(SinkError::InvalidConfig {
                flag: "--progress-every",
                reason: "must be above zero, such as 5s".into(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn feed_args(args: &[&str]) -> Result<FeedArgs, clap::Error> {
        let cli = Cli::try_parse_from(["loadgen", "feed"].iter().chain(args))?;
        let Command::Feed(args) = cli.command else { panic!("parsed as another command") };
        Ok(args)
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_design() {
        let args = feed_args(&[]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:9001");
        assert_eq!(args.source.rate, 50.0);
        assert_eq!(args.source.trades_per_frame, FrameSize::fixed(1));
        assert_eq!(args.source.zipf, 1.0);
        assert_eq!(args.ping_interval, Duration::from_secs(60));
        let config = args.feed_config(7).unwrap();
        assert_eq!(config.faults, Faults { seed: 7, ..Faults::default() });
        assert!(!config.faults.any());
    }

    #[test]
    fn values_outside_limits_name_their_flag() {
        for (flags, flag) in [
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "1e9"], "--rate"),
            (&["--max-symbols", "0"], "--max-symbols"),
            (&["--ping-interval", "1ms"], "--ping-interval"),
            (&["--progress-every", "0s"], "--progress-every"),
            (&["--symbols", "0"], "--symbols"),
            (&["--zipf=-1"], "--zipf"),
            (&["--burst-every", "10s", "--burst-length", "10s"], "--burst-length"),
            (&["--burst-every", "10s", "--burst-factor", "0"], "--burst-factor"),
            (&["--rate", "1e6", "--burst-every", "9s", "--burst-factor", "100"], "--burst-factor"),
            (&["--drop-every", "1ms"], "--drop-every"),
            (&["--malformed-rate", "1"], "--malformed-rate"),
            (&["--stall-every", "1s", "--stall-for", "2s"], "--stall-for"),
            (&["--silence-after", "0s"], "--silence-after"),
            (&["--replay", "/nonexistent/capture.tsv"], "--replay"),
        ] {
            let err = feed_args(flags).unwrap().feed_config(1).unwrap_err();
            assert!(err.to_string().starts_with(flag), "{flags:?}: {err}");
        }
        assert!(feed_args(&["--ping-interval", "60"]).is_err());
        assert!(feed_args(&["--trades-per-frame", "5..1"]).is_err());
        // Flags that only make sense together are refused apart.
        assert!(feed_args(&["--speed", "10x"]).is_err());
        assert!(feed_args(&["--loop"]).is_err());
        assert!(feed_args(&["--burst-factor", "3"]).is_err());
        assert!(feed_args(&["--stall-every", "3s"]).is_err());
        assert!(feed_args(&["--replay", "x.tsv", "--symbols", "10"]).is_err());
    }

    #[test]
    fn synthetic_flags_reach_the_config() {
        let args = feed_args(&[
            "--symbols",
            "500",
            "--zipf",
            "1.2",
            "--burst-every",
            "30s",
            "--burst-factor",
            "4",
            "--burst-length",
            "2s",
            "--drop-every",
            "1m",
            "--stall-every",
            "20s",
            "--stall-for",
            "3s",
        ])
        .unwrap();
        let config = args.feed_config(1).unwrap();
        let TradeSource::Synthetic(s) = &config.source else { panic!("not synthetic") };
        assert_eq!(s.universe, Some(Universe::new(500)));
        assert_eq!(s.zipf, 1.2);
        let burst =
            Burst { every: Duration::from_secs(30), factor: 4.0, length: Duration::from_secs(2) };
        assert_eq!(s.burst, Some(burst));
        assert_eq!(config.faults.drop_every, Some(Duration::from_secs(60)));
        let stall = Stall { every: Duration::from_secs(20), length: Duration::from_secs(3) };
        assert_eq!(config.faults.stall, Some(stall));
    }

    #[test]
    fn record_and_run_have_their_defaults() {
        let cli = Cli::try_parse_from(["loadgen", "record", "--out", "c.tsv"]).unwrap();
        let Command::Record(record) = cli.command else { panic!("not record") };
        assert_eq!(record.url, "wss://ws.finnhub.io");
        assert_eq!(record.symbols.len(), 7);
        assert_eq!((record.duration, record.frames), (None, None));

        let cli = Cli::try_parse_from([
            "loadgen",
            "run",
            "--ingestor-arg=--aggregation=off",
            "--ingestor-arg",
            "--linger=5ms",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.feed_listen, "127.0.0.1:0");
        assert_eq!(run.sink_listen, "127.0.0.1:0");
        assert_eq!(run.ingestor_arg, ["--aggregation=off", "--linger=5ms"]);
        assert_eq!(run.shards, 4);
    }
}
