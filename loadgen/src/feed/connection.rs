//! One websocket connection, from upgrade to close.
//!
//! The socket is split. A reader future decodes client messages and forwards them, with
//! the pongs and close replies the protocol obliges, over a channel to the writer loop. The
//! writer loop owns the subscriptions and the trade source and is the only one that writes:
//! it handles, in priority order, shutdown, injected faults (see `faults`), client
//! messages, the end of the reader, the keep-alive ping and the source's frames. Because
//! client messages are applied in the order they arrived and before the next batch is
//! built, every frame written after the reply to a message already reflects that message.
//!
//! While stalled, the writer handles nothing but shutdown and faults; once silent, it
//! applies client messages without answering them and writes nothing ever again.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info};
use wire::finnhub::{ClientMessage, PING_FRAME, decode_client, error_frame};

use super::Shared;
use super::faults::ConnFaults;
use super::session::Session;
use super::source::{ConnSource, Outbox};
use super::stats::Counters;

/// The largest client message accepted. Subscribe messages are tens of bytes; anything
/// near this is hostile, and the connection is closed rather than buffered.
const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;

/// Client messages queued between reader and writer. Small: the writer drains them before
/// anything else, so the queue only fills if a client floods subscriptions.
const INBOUND_QUEUE: usize = 64;

/// Bytes buffered before a write reaches the socket, so that a tick's many small frames go
/// out in a few system calls.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// How long a closing server waits for the client to answer its close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Close code for a server going away (RFC 6455, section 7.4.1).
const CLOSE_GOING_AWAY: u16 = 1001;

/// Far enough ahead to stand for "never" in a timer that must still be built.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

type Io = TokioIo<Upgraded>;
type Writer = WebSocketWrite<BufWriter<WriteHalf<Io>>>;
type Reader = FragmentCollectorRead<ReadHalf<Io>>;

/// What the reader hands the writer.
enum Inbound {
    Subscribe(String),
    Unsubscribe(String),
    /// A frame the protocol obliges the server to send: a pong or a close reply.
    Obligated(Frame<'static>),
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed,
    ClientGone,
    Shutdown,
    /// The drop fault closed the socket.
    Dropped,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ClientGone => "client_gone",
            Self::Shutdown => "shutdown",
            Self::Dropped => "dropped_by_fault",
        }
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("websocket upgrade did not complete: {0}")]
    Upgrade(#[source] WebSocketError),
    #[error("writing to the client failed: {0}")]
    Write(#[source] WebSocketError),
}

impl ConnectionError {
    /// The feed loses nothing when a connection fails; the client may simply reconnect.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// What one connection sent, for its closing log line.
#[derive(Debug, Default)]
struct Sent {
    frames: u64,
    trades: u64,
}

/// Per-connection context the accept loop hands over.
pub(crate) struct ConnContext {
    pub id: u64,
    pub peer: SocketAddr,
    pub shared: Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
}

/// Serves one upgraded websocket until the client leaves or the feed shuts down.
pub(crate) async fn serve(ws: WebSocket<Io>, ctx: ConnContext) -> Result<(), ConnectionError> {
    let counters = &ctx.shared.counters;
    Counters::add(&counters.websocket_sessions, 1);
    Counters::add(&counters.connections_open, 1);
    info!(conn = ctx.id, peer = %ctx.peer, "client connected");
    let mut sent = Sent::default();
    let result = run(ws, &ctx, &mut sent).await;
    Counters::sub(&counters.connections_open, 1);
    match &result {
        Ok(end) => info!(
            conn = ctx.id,
            peer = %ctx.peer,
            reason = end.label(),
            frames = sent.frames,
            trades = sent.trades,
            "client disconnected"
        ),
        Err(err) => info!(
            conn = ctx.id,
            peer = %ctx.peer,
            error = %err,
            retryable = err.is_retryable(),
            frames = sent.frames,
            trades = sent.trades,
            "client connection failed"
        ),
    }
    result.map(drop)
}

async fn run(
    mut ws: WebSocket<Io>,
    ctx: &ConnContext,
    sent: &mut Sent,
) -> Result<End, ConnectionError> {
    let shared = &ctx.shared;
    let counters = &shared.counters;
    ws.set_max_message_size(MAX_CLIENT_MESSAGE_BYTES);
    let (reader, mut writer) = ws.split(|io| {
        let (r, w) = tokio::io::split(io);
        (r, BufWriter::with_capacity(WRITE_BUFFER_BYTES, w))
    });
    let (inbound_tx, mut inbound) = mpsc::channel(INBOUND_QUEUE);
    let mut reader = pin!(read_loop(FragmentCollectorRead::new(reader), inbound_tx, counters));
    let mut reader_done = false;

    let mut session =
        Session::new(shared.config.max_symbols, shared.source.universe(), counters.clone());
    let mut source = ConnSource::new(&shared.source, ctx.id, counters);
    let mut outbox = Outbox::default();
    let mut mixed = Outbox::default();
    let interval = shared.config.ping_interval;
    let now = Instant::now();
    let mut ping = tokio::time::interval_at(now + interval, interval);
    let mut faults = ConnFaults::new(&shared.config.faults, ctx.id, now);
    // Disabled fault arms still build their sleep; this instant is never reached.
    let never = now + NEVER;
    let mut shutdown = ctx.shutdown.clone();

    loop {
        let writing = !faults.stalled && !faults.silent;
        tokio::select! {
            biased;
            _ = super::stopped(&mut shutdown) => {
                if faults.silent {
                    return Ok(End::Shutdown);
                }
                let close = Frame::close(CLOSE_GOING_AWAY, b"server shutting down");
                write_all(&mut writer, [close]).await?;
                if !reader_done {
                    // Give the client a moment to answer the close; its answer ends the reader.
                    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, &mut reader).await;
                }
                return Ok(End::Shutdown);
            }
            _ = sleep_until(faults.drop_at.unwrap_or(never)), if faults.drop_at.is_some() => {
                // Returning drops both halves of the socket: a TCP close with no websocket
                // close frame before it, and whatever was still buffered is lost.
                Counters::add(&counters.connections_dropped, 1);
                return Ok(End::Dropped);
            }
            _ = sleep_until(faults.silence_at.unwrap_or(never)),
                if faults.silence_at.is_some() && !faults.silent =>
            {
                faults.silent = true;
                Counters::add(&counters.connections_silenced, 1);
                debug!(conn = ctx.id, "connection silenced by fault");
            }
            _ = sleep_until(faults.stall_at.unwrap_or(never)),
                if faults.stall_at.is_some() && !faults.silent =>
            {
                if faults.toggle_stall() {
                    Counters::add(&counters.stalls, 1);
                    debug!(conn = ctx.id, "connection stalled by fault");
                }
            }
            msg = inbound.recv(), if !faults.stalled => {
                let Some(msg) = msg else { return Ok(End::ClientGone) };
                match msg {
                    Inbound::Obligated(frame) => {
                        let closing = frame.opcode == OpCode::Close;
                        if !faults.silent {
                            write_all(&mut writer, [frame]).await?;
                        }
                        if closing {
                            return Ok(End::ClientClosed);
                        }
                    }
                    Inbound::Subscribe(symbol) => match session.subscribe(symbol) {
                        Ok(true) => source.subscriptions_changed(&session),
                        Ok(false) => {}
                        Err(err) => {
                            debug!(conn = ctx.id, error = %err, "subscribe refused");
                            if !faults.silent {
                                let reply = error_frame(&err.to_string());
                                write_all(&mut writer, [text(&reply)]).await?;
                                Counters::add(&counters.error_frames_sent, 1);
                            }
                        }
                    },
                    Inbound::Unsubscribe(symbol) => {
                        if session.unsubscribe(&symbol) {
                            source.subscriptions_changed(&session);
                        }
                    }
                }
            }
            _ = &mut reader, if !reader_done => {
                // The reader dropped its sender; the channel drains, then ends the loop.
                reader_done = true;
            }
            _ = ping.tick(), if writing => {
                write_all(&mut writer, [text(PING_FRAME.as_bytes())]).await?;
                Counters::add(&counters.pings_sent, 1);
            }
            _ = source.due(), if writing => {
                outbox.clear();
                source.fill(&mut outbox, &session);
                if outbox.is_empty() {
                    continue;
                }
                let mut malformed = 0;
                if faults.malforms() {
                    malformed = mix_malformed(&outbox, &mut mixed, &mut faults);
                    write_all(&mut writer, mixed.frames().map(text)).await?;
                } else {
                    write_all(&mut writer, outbox.frames().map(text)).await?;
                }
                source.sent();
                let (frames, trades) = (outbox.frame_count(), outbox.trade_count());
                Counters::add(&counters.frames_sent, frames);
                Counters::add(&counters.trades_sent, trades);
                Counters::add(&counters.malformed_frames_sent, malformed);
                sent.frames += frames;
                sent.trades += trades;
            }
        }
    }
}

/// Copies `real` into `mixed` with malformed frames inserted; returns how many.
fn mix_malformed(real: &Outbox, mixed: &mut Outbox, faults: &mut ConnFaults) -> u64 {
    mixed.clear();
    let mut scratch = Vec::new();
    let mut inserted = 0;
    for frame in real.frames() {
        for _ in 0..faults.malformed_before() {
            scratch.clear();
            faults.malformed(frame, &mut scratch);
            mixed.push_encoded(&scratch, 0);
            inserted += 1;
        }
        mixed.push_encoded(frame, 0);
    }
    inserted
}

/// A text frame over bytes the caller keeps.
fn text(bytes: &[u8]) -> Frame<'_> {
    Frame::text(Payload::Borrowed(bytes))
}

/// Writes frames and flushes them to the socket.
async fn write_all<'f>(
    writer: &mut Writer,
    frames: impl IntoIterator<Item = Frame<'f>>,
) -> Result<(), ConnectionError> {
    for frame in frames {
        writer.write_frame(frame).await.map_err(ConnectionError::Write)?;
    }
    writer.flush().await.map_err(ConnectionError::Write)
}

/// Reads client messages until the client closes, the socket fails, or the writer is gone.
/// Returns nothing: whatever ended it, the writer learns by the channel closing.
async fn read_loop(mut reader: Reader, tx: mpsc::Sender<Inbound>, counters: &Counters) {
    let mut obligated = |frame: Frame<'static>| {
        let tx = tx.clone();
        async move {
            tx.send(Inbound::Obligated(frame))
                .await
                .map_err(|_| "the connection writer has stopped")
        }
    };
    loop {
        let frame = match reader.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(err) => {
                debug!(error = %err, "websocket read ended");
                return;
            }
        };
        let msg = match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                let mut payload = frame.payload;
                match decode_client(payload.to_mut()) {
                    Ok(ClientMessage::Subscribe(s)) => Inbound::Subscribe(s.to_owned()),
                    Ok(ClientMessage::Unsubscribe(s)) => Inbound::Unsubscribe(s.to_owned()),
                    Err(err) => {
                        // Counted and ignored, as a hostile or buggy client's noise should be.
                        Counters::add(&counters.malformed_messages, 1);
                        debug!(error = %err, "client message ignored");
                        continue;
                    }
                }
            }
            // The close reply was already queued as an obligated frame.
            OpCode::Close => return,
            _ => continue,
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}
