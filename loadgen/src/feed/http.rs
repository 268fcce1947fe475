//! The HTTP side of a feed connection: the token check and the websocket upgrade.
//!
//! Any path is accepted, as Finnhub accepts `wss://ws.finnhub.io` and
//! `wss://ws.finnhub.io/` alike. When the feed has a token, a request whose `?token=` is
//! missing or different gets `401 Unauthorized` before any upgrade, as Finnhub answers a
//! bad token. A request that is not a websocket upgrade gets `426 Upgrade Required`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastwebsockets::upgrade::{self, UpgradeFut};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info};

use super::Shared;
use super::connection::{self, ConnContext, ConnectionError};
use super::stats::Counters;

/// How long a client may take to send its request headers; a client that connects and
/// says nothing must not hold a task forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one TCP connection: HTTP until a websocket upgrade, then the websocket.
pub(crate) async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The service hands the pending upgrade out through this slot, so the websocket runs
    // in this task, where the accept loop can wait for it at shutdown.
    let slot: Arc<Mutex<Option<UpgradeFut>>> = Arc::default();
    let service = service_fn({
        let (shared, slot) = (shared.clone(), slot.clone());
        move |req| {
            let response = respond(req, peer, &shared, &slot);
            async move { Ok::<_, Infallible>(response) }
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        res = conn => {
            if let Err(err) = res {
                debug!(peer = %peer, error = %err, "HTTP connection ended with an error");
            }
        }
        _ = super::stopped(&mut shutdown) => return,
    }

    let pending = slot.lock().expect("no code panics while holding the upgrade slot").take();
    let Some(pending) = pending else { return };
    let ws = tokio::select! {
        ws = pending => ws,
        _ = super::stopped(&mut shutdown) => return,
    };
    let ws = match ws.map_err(ConnectionError::Upgrade) {
        Ok(ws) => ws,
        Err(err) => {
            info!(peer = %peer, error = %err, "websocket upgrade failed");
            return;
        }
    };
    let id = shared.next_conn_id();
    let ctx = ConnContext { id, peer, shared, shutdown };
    // `serve` logs how the connection ended; the error adds nothing the log lacks.
    let _ = connection::serve(ws, ctx).await;
}

fn respond(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    slot: &Mutex<Option<UpgradeFut>>,
) -> Response<Full<Bytes>> {
    let counters = &shared.counters;
    if let Some(token) = &shared.config.token
        && !token.matches(query_param(req.uri().query(), "token").as_deref())
    {
        Counters::add(&counters.handshakes_rejected, 1);
        // The token itself is never logged, not even the wrong one.
        info!(peer = %peer, status = 401, "handshake refused: missing or wrong token");
        return plain(StatusCode::UNAUTHORIZED, "missing or wrong token\n");
    }
    if !upgrade::is_upgrade_request(&req) {
        Counters::add(&counters.handshakes_rejected, 1);
        debug!(peer = %peer, status = 426, "plain HTTP request refused");
        return plain(StatusCode::UPGRADE_REQUIRED, "this server speaks websocket only\n");
    }
    match upgrade::upgrade(&mut req) {
        Ok((response, pending)) => {
            *slot.lock().expect("no code panics while holding the upgrade slot") = Some(pending);
            response.map(|_| Full::default())
        }
        Err(err) => {
            Counters::add(&counters.handshakes_rejected, 1);
            debug!(peer = %peer, status = 400, error = %err, "malformed upgrade refused");
            plain(StatusCode::BAD_REQUEST, "malformed websocket upgrade\n")
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The percent-decoded value of `key` in a query string, if present.
fn query_param(query: Option<&str>, key: &str) -> Option<Vec<u8>> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

/// Decodes `%XX` escapes and `+` (a space in form encoding). A malformed escape is kept as
/// written, so it simply fails to match the token.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some((hi, lo)), _) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_and_decoded() {
        assert_eq!(query_param(Some("token=abc"), "token"), Some(b"abc".to_vec()));
        assert_eq!(query_param(Some("a=1&token=x%2By+z"), "token"), Some(b"x+y z".to_vec()));
        assert_eq!(query_param(Some("token"), "token"), Some(Vec::new()));
        assert_eq!(query_param(Some("tokens=abc"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(percent_decode("%41%"), b"A%");
    }
}
