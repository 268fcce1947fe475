//! The Finnhub websocket protocol.
//!
//! Server frames decode zero-copy: [`decode`] parses a frame buffer in place with simd-json
//! (escaped strings are unescaped inside the buffer) and the returned [`Trade`]s borrow
//! their symbol and condition codes from it. Nothing is allocated per trade; one `Vec` of
//! trades is allocated per frame. [`scan::trades`] is the faster path for the common
//! case: it reads a trade frame as Finnhub writes it without parsing the numbers, and
//! declines anything else.
//!
//! The same module writes what the other side of the protocol sends, for the load
//! generator's feed: trade frames, pings, errors, and the client's subscribe messages.

use serde::Deserialize;
use serde::de::{self, SeqAccess, Visitor};
use std::fmt;

use crate::json;
use crate::limits::PARTITION_KEY_MAX_CHARS;

pub mod scan;

/// Condition codes kept inline before spilling to the heap. Finnhub trades carry at most
/// four codes in practice, so the spill path exists only for correctness.
const INLINE_CONDITIONS: usize = 4;

/// One trade as Finnhub sends it, borrowing its strings from the frame buffer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Trade<'a> {
    /// Symbol, such as `AAPL` or `BINANCE:BTCUSDT`. Used as the Kinesis partition key.
    #[serde(rename = "s", borrow)]
    pub symbol: &'a str,
    /// Last price.
    #[serde(rename = "p")]
    pub price: f64,
    /// Exchange time, milliseconds since the Unix epoch.
    #[serde(rename = "t")]
    pub time_ms: u64,
    /// Volume; zero marks a price update rather than a trade.
    #[serde(rename = "v")]
    pub volume: f64,
    /// Trade condition codes, absent for most trades.
    #[serde(rename = "c", default, borrow)]
    pub conditions: Conditions<'a>,
}

/// Why a well-formed trade is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTrade {
    #[error("empty symbol")]
    EmptySymbol,
    #[error("symbol longer than {PARTITION_KEY_MAX_CHARS} characters")]
    SymbolTooLong,
    #[error("price is negative or not finite")]
    BadPrice,
    #[error("volume is negative or not finite")]
    BadVolume,
}

impl InvalidTrade {
    /// A short, fixed label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::EmptySymbol => "empty_symbol",
            Self::SymbolTooLong => "symbol_too_long",
            Self::BadPrice => "bad_price",
            Self::BadVolume => "bad_volume",
        }
    }
}

impl Trade<'_> {
    /// Checks what JSON types alone cannot: the symbol must be a valid partition key and
    /// the numbers must be usable.
    pub fn validate(&self) -> Result<(), InvalidTrade> {
        if self.symbol.is_empty() {
            return Err(InvalidTrade::EmptySymbol);
        }
        // Byte length bounds character count from above, so count chars only when needed.
        if self.symbol.len() > PARTITION_KEY_MAX_CHARS
            && self.symbol.chars().count() > PARTITION_KEY_MAX_CHARS
        {
            return Err(InvalidTrade::SymbolTooLong);
        }
        if !(self.price.is_finite() && self.price >= 0.0) {
            return Err(InvalidTrade::BadPrice);
        }
        if !(self.volume.is_finite() && self.volume >= 0.0) {
            return Err(InvalidTrade::BadVolume);
        }
        Ok(())
    }
}

/// A trade's condition codes, stored inline up to a small count.
#[derive(Clone, PartialEq)]
pub enum Conditions<'a> {
    Inline { codes: [&'a str; INLINE_CONDITIONS], len: u8 },
    Spilled(Vec<&'a str>),
}

impl Default for Conditions<'_> {
    fn default() -> Self {
        Self::Inline { codes: [""; INLINE_CONDITIONS], len: 0 }
    }
}

impl<'a> Conditions<'a> {
    /// The codes in the order received.
    pub fn as_slice(&self) -> &[&'a str] {
        match self {
            Self::Inline { codes, len } => &codes[..*len as usize],
            Self::Spilled(v) => v,
        }
    }

    pub fn push(&mut self, code: &'a str) {
        match self {
            Self::Inline { codes, len } if (*len as usize) < INLINE_CONDITIONS => {
                codes[*len as usize] = code;
                *len += 1;
            }
            Self::Inline { codes, len } => {
                let mut v = codes[..*len as usize].to_vec();
                v.push(code);
                *self = Self::Spilled(v);
            }
            Self::Spilled(v) => v.push(code),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl<'a> FromIterator<&'a str> for Conditions<'a> {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut c = Conditions::default();
        for code in iter {
            c.push(code);
        }
        c
    }
}

impl fmt::Debug for Conditions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Conditions<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CodesVisitor;
        impl<'de> Visitor<'de> for CodesVisitor {
            type Value = Conditions<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of condition code strings or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Conditions::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Conditions::default())
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_seq(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut c = Conditions::default();
                while let Some(code) = seq.next_element::<&'de str>()? {
                    c.push(code);
                }
                Ok(c)
            }
        }
        d.deserialize_option(CodesVisitor)
    }
}

/// A decoded server frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// One or more trades, in the order the server sent them.
    Trades(Vec<Trade<'a>>),
    /// Keep-alive; needs no answer but proves the connection is alive.
    Ping,
    /// An error the server reports, such as an invalid symbol or too many subscriptions.
    Error(&'a str),
    /// A well-formed frame of a type this version does not know.
    Unknown(&'a str),
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape (a string where a number belongs, a trade
    /// without a symbol, a negative time). Carries the parser's description.
    #[error("frame is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("frame has no \"type\" field")]
    MissingType,
}

impl DecodeError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::MissingType => "missing_type",
        }
    }
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<Vec<Trade<'a>>>,
    #[serde(borrow, default)]
    msg: Option<&'a str>,
}

/// Decodes one server frame in place. The buffer is modified (strings are unescaped in
/// it) and the result borrows from it.
///
/// `data` is read as a list of trades whatever the frame's type, because Finnhub writes
/// `type` after `data` and the parser makes one pass. A frame of an unknown type whose
/// `data` is not a list of trades is therefore reported as [`DecodeError::Malformed`],
/// not [`Frame::Unknown`]; either way it is refused and counted, only the label differs.
pub fn decode(buf: &mut [u8]) -> Result<Frame<'_>, DecodeError> {
    let raw: RawFrame<'_> =
        simd_json::serde::from_slice(buf).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    classify(raw)
}

/// Like [`decode`], reusing the parser's scratch buffers across frames.
pub fn decode_with_buffers<'a>(
    buf: &'a mut [u8],
    buffers: &mut simd_json::Buffers,
) -> Result<Frame<'a>, DecodeError> {
    let raw: RawFrame<'_> = simd_json::serde::from_slice_with_buffers(buf, buffers)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    classify(raw)
}

fn classify(raw: RawFrame<'_>) -> Result<Frame<'_>, DecodeError> {
    match raw.kind {
        None => Err(DecodeError::MissingType),
        Some("trade") => Ok(Frame::Trades(raw.data.unwrap_or_default())),
        Some("ping") => Ok(Frame::Ping),
        Some("error") => Ok(Frame::Error(raw.msg.unwrap_or(""))),
        Some(other) => Ok(Frame::Unknown(other)),
    }
}

/// Writes a trade frame as Finnhub sends it.
pub fn write_trade_frame<'t, 'a: 't>(
    out: &mut Vec<u8>,
    trades: impl IntoIterator<Item = &'t Trade<'a>>,
) {
    out.extend_from_slice(br#"{"data":["#);
    for (i, t) in trades.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"c":"#);
        if t.conditions.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            write_codes(out, t.conditions.as_slice());
        }
        out.extend_from_slice(br#","p":"#);
        json::write_f64(out, t.price);
        out.extend_from_slice(br#","s":"#);
        json::write_str(out, t.symbol);
        out.extend_from_slice(br#","t":"#);
        json::write_u64(out, t.time_ms);
        out.extend_from_slice(br#","v":"#);
        json::write_f64(out, t.volume);
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"type":"trade"}"#);
}

/// Appends a JSON array of condition codes.
pub(crate) fn write_codes(out: &mut Vec<u8>, codes: &[&str]) {
    out.push(b'[');
    for (i, code) in codes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, code);
    }
    out.push(b']');
}

/// The server's keep-alive frame.
pub const PING_FRAME: &str = r#"{"type":"ping"}"#;

/// An error frame as the server sends it.
pub fn error_frame(msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 24);
    out.extend_from_slice(br#"{"type":"error","msg":"#);
    json::write_str(&mut out, msg);
    out.push(b'}');
    out
}

/// A message the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    Subscribe(&'a str),
    Unsubscribe(&'a str),
}

/// Why a client message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientMessageError {
    #[error("message is not valid JSON of the expected shape")]
    Malformed,
    #[error("unknown message type")]
    UnknownType,
    #[error("message has no symbol")]
    MissingSymbol,
}

impl ClientMessage<'_> {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        let (kind, symbol) = match self {
            Self::Subscribe(s) => ("subscribe", s),
            Self::Unsubscribe(s) => ("unsubscribe", s),
        };
        let mut out = Vec::with_capacity(symbol.len() + 40);
        out.extend_from_slice(br#"{"type":""#);
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(br#"","symbol":"#);
        json::write_str(&mut out, symbol);
        out.push(b'}');
        String::from_utf8(out).expect("built from str pieces only")
    }
}

#[derive(Deserialize)]
struct RawClientMessage<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow, default)]
    symbol: Option<&'a str>,
}

/// Decodes a message sent by a client, in place.
pub fn decode_client(buf: &mut [u8]) -> Result<ClientMessage<'_>, ClientMessageError> {
    let raw: RawClientMessage<'_> =
        simd_json::serde::from_slice(buf).map_err(|_| ClientMessageError::Malformed)?;
    let symbol = raw.symbol.ok_or(ClientMessageError::MissingSymbol)?;
    match raw.kind {
        "subscribe" => Ok(ClientMessage::Subscribe(symbol)),
        "unsubscribe" => Ok(ClientMessage::Unsubscribe(symbol)),
        _ => Err(ClientMessageError::UnknownType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trade frame from Finnhub's documentation.
    const DOC_TRADES: &str = r#"{"data":[{"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467}],"type":"trade"}"#;

    /// The trade sample the design brief quotes, with condition codes.
    const DOC_TRADE_WITH_CODES: &str = r#"{"type":"trade","data":[{"s":"AAPL","p":146.76,"t":1628238530221,"v":43,"c":["1","24","12"]}]}"#;

    fn decode_owned(text: &str) -> Result<Frame<'static>, DecodeError> {
        let buf: &'static mut [u8] = Box::leak(text.as_bytes().to_vec().into_boxed_slice());
        decode(buf)
    }

    #[test]
    fn documented_trade_frames_decode() {
        let Frame::Trades(t) = decode_owned(DOC_TRADES).unwrap() else { panic!("not trades") };
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].symbol, "BINANCE:BTCUSDT");
        assert_eq!(t[0].price, 7296.89);
        assert_eq!(t[0].time_ms, 1575526691134);
        assert_eq!(t[0].volume, 0.011467);
        assert!(t[0].conditions.is_empty());

        let Frame::Trades(t) = decode_owned(DOC_TRADE_WITH_CODES).unwrap() else {
            panic!("not trades")
        };
        assert_eq!(t[0].symbol, "AAPL");
        assert_eq!(t[0].volume, 43.0);
        assert_eq!(t[0].conditions.as_slice(), ["1", "24", "12"]);
    }

    #[test]
    fn ping_error_and_unknown_frames_decode() {
        assert_eq!(decode_owned(PING_FRAME).unwrap(), Frame::Ping);
        let err = r#"{"type":"error","msg":"Subscribing to too many symbols"}"#;
        assert_eq!(decode_owned(err).unwrap(), Frame::Error("Subscribing to too many symbols"));
        assert_eq!(decode_owned(r#"{"type":"news","data":[]}"#).unwrap(), Frame::Unknown("news"));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for text in [
            "",
            "{",
            "not json",
            r#"{"data":[]}"#,
            r#"{"type":"trade","data":[{"s":"A","p":"abc","t":1,"v":1}]}"#,
            r#"{"type":"trade","data":[{"s":"A","p":1,"t":-5,"v":1}]}"#,
            r#"{"type":"trade","data":[{"p":1,"t":1,"v":1}]}"#,
            r#"{"type":"trade","data":{"s":"A"}}"#,
        ] {
            assert!(decode_owned(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn escaped_symbols_are_unescaped_in_place() {
        let text = r#"{"type":"trade","data":[{"s":"A\"B","p":1,"t":2,"v":3}]}"#;
        let Frame::Trades(t) = decode_owned(text).unwrap() else { panic!() };
        assert_eq!(t[0].symbol, "A\"B");
    }

    #[test]
    fn validation_refuses_unusable_trades() {
        let ok = Trade {
            symbol: "AAPL",
            price: 1.0,
            time_ms: 1,
            volume: 0.0,
            conditions: Conditions::default(),
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(Trade { symbol: "", ..ok.clone() }.validate(), Err(InvalidTrade::EmptySymbol));
        let long = "X".repeat(257);
        assert_eq!(
            Trade { symbol: &long, ..ok.clone() }.validate(),
            Err(InvalidTrade::SymbolTooLong)
        );
        let max = "é".repeat(256);
        assert_eq!(Trade { symbol: &max, ..ok.clone() }.validate(), Ok(()));
        assert_eq!(Trade { price: -1.0, ..ok.clone() }.validate(), Err(InvalidTrade::BadPrice));
        assert_eq!(Trade { volume: f64::INFINITY, ..ok }.validate(), Err(InvalidTrade::BadVolume));
    }

    #[test]
    fn trade_frames_round_trip_through_the_writer() {
        let codes: Conditions = ["1", "2", "3", "4", "5", "6"].into_iter().collect();
        let trades = vec![
            Trade {
                symbol: "AAPL",
                price: 146.76,
                time_ms: 1628238530221,
                volume: 43.0,
                conditions: codes,
            },
            Trade {
                symbol: "BINANCE:BTCUSDT",
                price: 7296.89,
                time_ms: 1575526691134,
                volume: 0.011467,
                conditions: Conditions::default(),
            },
        ];
        let mut out = Vec::new();
        write_trade_frame(&mut out, &trades);
        let Frame::Trades(back) = decode(&mut out).unwrap() else { panic!() };
        assert_eq!(back, trades);
    }

    #[test]
    fn client_messages_round_trip() {
        for msg in [ClientMessage::Subscribe("AAPL"), ClientMessage::Unsubscribe("X\"Y")] {
            let mut text = msg.to_json().into_bytes();
            assert_eq!(decode_client(&mut text).unwrap(), msg);
        }
        let mut bad = br#"{"type":"subscribe"}"#.to_vec();
        assert_eq!(decode_client(&mut bad), Err(ClientMessageError::MissingSymbol));
        let mut bad = br#"{"type":"hello","symbol":"A"}"#.to_vec();
        assert_eq!(decode_client(&mut bad), Err(ClientMessageError::UnknownType));
        let mut bad = b"{".to_vec();
        assert_eq!(decode_client(&mut bad), Err(ClientMessageError::Malformed));
    }

    #[test]
    fn error_frames_decode() {
        let mut f = error_frame("Invalid symbol \"X\"");
        assert_eq!(decode(&mut f).unwrap(), Frame::Error("Invalid symbol \"X\""));
    }
}
