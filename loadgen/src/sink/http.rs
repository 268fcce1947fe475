//! The HTTP side of the sink: connections, the body-size cap, and the AWS-style answers.
//!
//! Every request is answered in AWS JSON form, whatever it was: a non-POST gets 405, a body
//! declared or found larger than [`MAX_BODY_BYTES`] gets 413 before more of it is read,
//! anything else goes to the handler. The handler runs in its own task, so a request whose
//! client hangs up (a timeout, say) is still processed and written, as Kinesis would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, error};

use super::api::ApiError;
use super::request::{CONTENT_TYPE_JSON, MAX_BODY_BYTES, TARGET_HEADER, body_too_large};
use super::stats::Counters;
use super::{Shared, handler};

/// How long a client may take to send its request headers; a client that connects and
/// says nothing must not hold a task forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one TCP connection until the client closes it or shutdown begins; on shutdown,
/// the request in progress is answered before the connection closes.
pub(crate) async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(req, shared).await) }
    });
    let mut conn = pin!(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
    );
    let result = tokio::select! {
        res = conn.as_mut() => res,
        _ = super::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        debug!(peer = %peer, error = %err, "HTTP connection ended with an error");
    }
}

async fn respond(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    Counters::add(&shared.counters.requests, 1);
    let result = read_and_handle(req, &shared).await;
    let (status, body, error_type) = handler::conclude(&shared, result);
    answer(status, body, error_type)
}

async fn read_and_handle(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
) -> Result<Vec<u8>, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed(format!(
            "{} is not served; Kinesis operations are POST /",
            req.method()
        )));
    }
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|len: u64| len > MAX_BODY_BYTES as u64) {
        return Err(body_too_large());
    }
    let header = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let target = header(TARGET_HEADER).map(str::to_owned);
    let content_type = header(CONTENT_TYPE.as_str()).map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => return Err(body_too_large()),
        Err(err) => return Err(ApiError::Serialization(format!("could not read the body: {err}"))),
    };
    let shared = shared.clone();
    // Its own task: if the client gives up and hyper drops this future, the request is
    // still processed to the end, as a server that already received it would.
    let task = tokio::spawn(async move {
        handler::handle(&shared, target.as_deref(), content_type.as_deref(), &body).await
    });
    match task.await {
        Ok(result) => result,
        Err(err) => {
            error!(error = %err, "a sink request task failed; its records may be half counted");
            Err(ApiError::InternalFailure("Internal service failure.".into()))
        }
    }
}

fn answer(
    status: StatusCode,
    body: Vec<u8>,
    error_type: Option<&'static str>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
    if let Some(code) = error_type {
        headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
    }
    response
}
