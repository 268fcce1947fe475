//! Command-line flags. Every flag can also be set from the environment variable named in
//! its help, and every default lives here, in the flag's declaration.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::duration::parse_duration;
use crate::feed::{FeedConfig, FeedError, FrameSize, SyntheticConfig, Token};

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
    /// Serve the Finnhub websocket protocol with synthetic trades.
    Feed(FeedArgs),
}

/// Flags of `loadgen feed`.
#[derive(Debug, Clone, Args)]
pub struct FeedArgs {
    /// Address to listen on (host:port).
    #[arg(long, env = "LOADGEN_FEED_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: String,

    /// Trades per second each connection receives, spread over its subscribed symbols.
    #[arg(long, env = "LOADGEN_FEED_RATE", default_value_t = 50.0)]
    pub rate: f64,

    /// Trades per frame: N, or MIN..MAX (inclusive) for a random count per frame.
    #[arg(long, env = "LOADGEN_FEED_TRADES_PER_FRAME", default_value = "1")]
    pub trades_per_frame: FrameSize,

    /// Seed for prices, volumes and condition codes; drawn at random (and logged) if unset.
    #[arg(long, env = "LOADGEN_FEED_SEED")]
    pub seed: Option<u64>,

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
    /// The feed configuration these flags describe, validated.
    pub fn feed_config(&self, seed: u64) -> Result<FeedConfig, FeedError> {
        let synthetic =
            SyntheticConfig { rate: self.rate, frame_size: self.trades_per_frame, seed };
        let config = FeedConfig {
            token: self.token.clone().map(Token::new),
            max_symbols: self.max_symbols,
            ping_interval: self.ping_interval,
            ..FeedConfig::synthetic(synthetic)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn feed_args(args: &[&str]) -> Result<FeedArgs, clap::Error> {
        let cli = Cli::try_parse_from(["loadgen", "feed"].iter().chain(args))?;
        let Command::Feed(args) = cli.command;
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
        assert_eq!(args.rate, 50.0);
        assert_eq!(args.trades_per_frame, FrameSize::fixed(1));
        assert_eq!(args.ping_interval, Duration::from_secs(60));
        assert!(args.feed_config(7).is_ok());
    }

    #[test]
    fn values_outside_limits_name_their_flag() {
        for (flags, flag) in [
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "1e9"], "--rate"),
            (&["--max-symbols", "0"], "--max-symbols"),
            (&["--ping-interval", "1ms"], "--ping-interval"),
            (&["--progress-every", "0s"], "--progress-every"),
        ] {
            let err = feed_args(flags).unwrap().feed_config(1).unwrap_err();
            assert!(err.to_string().starts_with(flag), "{flags:?}: {err}");
        }
        assert!(feed_args(&["--ping-interval", "60"]).is_err());
        assert!(feed_args(&["--trades-per-frame", "5..1"]).is_err());
    }
}
