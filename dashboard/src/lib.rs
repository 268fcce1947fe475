//! tickpipe's live dashboard: an HTTP server and a page over the DynamoDB table that the
//! Lambda fills with trades, 1-minute candles and latest prices.
//!
//! Data flows one way. The browser loads the page once, then polls the JSON API every
//! second; each API request becomes one or a few DynamoDB Queries, answered as JSON that no
//! cache may keep. The server holds no state of its own besides the DynamoDB client.
//!
//! Layout:
//!
//! - `lib.rs`: [`run`], the router, and [`dynamo_client`], which sets the client's timeouts.
//! - `config.rs`: [`DashboardConfig`], the flags and their validation.
//! - `store.rs`: the DynamoDB reads ([`Store`]) and their errors.
//! - `api.rs`: the JSON routes, parameter validation, and the mapping of errors to 4xx/5xx.
//! - `page.rs`: the embedded page and its security headers.
//! - `page/`: `index.html`, `style.css`, `app.js` (the poller, the watchlist and the SVG
//!   candlestick chart) and `favicon.svg`.

pub mod api;
pub mod config;
pub mod page;
pub mod store;

use std::future::Future;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use axum::Router;
use axum::routing::get;
use tracing::info;

pub use config::DashboardConfig;
pub use store::{Store, StoreError};

/// Attempts per DynamoDB call: one retry. The page polls again within a second anyway, so a
/// longer retry chain would only pile up requests behind a struggling table.
const DYNAMO_MAX_ATTEMPTS: u32 = 2;

/// Builds the dashboard's routes over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::app_js))
        .route("/style.css", get(page::style_css))
        .route("/favicon.svg", get(page::favicon))
        .route("/api/latest", get(api::latest))
        .route("/api/candles", get(api::candles))
        .route("/healthz", get(api::healthz))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(store)
}

/// Serves the dashboard on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish.
pub async fn run(
    config: DashboardConfig,
    dynamo: aws_sdk_dynamodb::Client,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, table = %config.table, "dashboard listening");
    let app = router(Store::new(dynamo, config.table));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    info!(%addr, "dashboard stopped");
    Ok(())
}

/// A DynamoDB client from the standard AWS chain (`AWS_ENDPOINT_URL_DYNAMODB`,
/// `AWS_REGION`, profiles, instance roles) with the dashboard's timeouts.
pub async fn dynamo_client(config: &DashboardConfig) -> aws_sdk_dynamodb::Client {
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    dynamo_client_from(&sdk, config)
}

/// Like [`dynamo_client`] but over a given `SdkConfig`, e.g. one a test built with a local
/// endpoint and dummy credentials.
pub fn dynamo_client_from(sdk: &SdkConfig, config: &DashboardConfig) -> aws_sdk_dynamodb::Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(config.dynamo_timeout / 2)
        .operation_attempt_timeout(config.dynamo_timeout / 2)
        .operation_timeout(config.dynamo_timeout)
        .build();
    let dynamo = aws_sdk_dynamodb::config::Builder::from(sdk)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(DYNAMO_MAX_ATTEMPTS))
        .build();
    aws_sdk_dynamodb::Client::from_conf(dynamo)
}
