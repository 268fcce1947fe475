//! tickpipe's Lambda: Kinesis batches of trades in, trades, candles and latest prices out
//! to DynamoDB.
//!
//! Data flows through one batch like this:
//!
//! ```text
//! KinesisEvent ─► handler::unpack ─► transform::transform ─► Store::write ─► response
//!  (base64 data)   deaggregate,       trade items, candle      BatchWriteItem,  batchItem-
//!                  decode, validate   deltas, latest prices    read-modify-     Failures
//!                  (poison skipped)                            write, update
//! ```
//!
//! The same [`handler::handle`] serves Lambda invocations and the local runner, which polls
//! a stream the way Lambda's event source mapping does.
//!
//! Layout:
//!
//! - [`handler`]: the entry point; unpacks an event, skips poison, reports failures.
//! - [`transform`]: pure computation of trade items, candles and latest prices; also the
//!   candle folding rules with high-water marks.
//! - [`position`]: Kinesis positions (sequence number, sub-record index) and their order.
//! - [`store`]: runs a batch's writes side by side and collects what failed;
//!   [`trades`], [`candles`] and [`latest`] hold one kind of write each.
//! - [`retry`]: backoff with full jitter and which AWS errors are worth retrying.
//! - [`local`]: the local runner (`bootstrap --local`).
//! - [`config`]: flags and environment; [`aws`]: SDK clients with timeouts.
//!
//! Choices worth knowing: a volume-0 user record counts as a trade with volume 0 (see
//! [`transform`]); trade items expire `--trade-ttl` after the trade's own time; candles do
//! not expire; the latest price only moves forward in trade time.

pub mod aws;
pub mod candles;
pub mod config;
pub mod handler;
pub mod latest;
pub mod local;
pub mod position;
pub mod retry;
pub mod store;
pub mod trades;
pub mod transform;

use std::convert::Infallible;
use std::future::Future;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::streams::KinesisEventResponse;
use lambda_runtime::{LambdaEvent, service_fn};
use tracing::info;

pub use config::{Cli, LocalConfig, StartPosition};
pub use handler::{BatchOutcome, BatchStats, handle, handle_batch};
pub use local::{LocalStats, run_local};
pub use store::{Store, StoreConfig};

/// Set by Lambda for the function's process: the address of the runtime API.
const LAMBDA_RUNTIME_API_ENV: &str = "AWS_LAMBDA_RUNTIME_API";

/// Runs `bootstrap` as configured: the local runner with `--local`, otherwise the Lambda
/// runtime loop. Returns when `shutdown` completes (or the runtime fails).
pub async fn run(
    cli: Cli,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    cli.validate()?;
    // The runtime client panics without the variables Lambda sets; say what to do instead.
    if !cli.local && std::env::var_os(LAMBDA_RUNTIME_API_ENV).is_none() {
        anyhow::bail!(
            "not running inside AWS Lambda ({LAMBDA_RUNTIME_API_ENV} is not set); \
             pass --local to poll the stream from this machine"
        );
    }
    let sdk = aws::sdk_config().await;
    let dynamo = aws::dynamodb(&sdk);
    if cli.local {
        run_local(cli.local_config(), aws::kinesis(&sdk), dynamo, shutdown).await?;
        return Ok(());
    }
    run_lambda(Store::new(dynamo, cli.store_config()), shutdown).await
}

/// Serves Lambda invocations until `shutdown` completes.
pub async fn run_lambda(
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    info!(table = store.config().table, "lambda handler starting");
    let handler = service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let store = store.clone();
        async move {
            let request_id = event.context.request_id;
            let outcome = handle_batch(event.payload, &store, Some(&request_id)).await;
            Ok::<KinesisEventResponse, Infallible>(outcome.response)
        }
    });
    tokio::select! {
        served = lambda_runtime::run(handler) => served.map_err(|e| anyhow::anyhow!(e)),
        () = shutdown => {
            info!("lambda handler stopping");
            Ok(())
        }
    }
}
