//! A strict scanner for the trade frame as Finnhub writes it, the shape of nearly every
//! frame the ingestor sees.
//!
//! [`trades`] accepts a small subset of JSON: one object with exactly the keys `data` and
//! `type` (`"trade"`), `data` a list of objects with the keys `s`, `p`, `t`, `v` and
//! optionally `c`, strings of printable ASCII without escapes, and plain non-negative
//! numbers. Anything outside that subset, including every frame that
//! [`super::decode`] would refuse or whose trades would fail [`super::Trade::validate`],
//! makes it return `None`, and the caller decodes the frame the general way. So the
//! scanner never has to be right about unusual input, only about declining it.
//!
//! What it gains: the numbers are passed on as the text that arrived instead of being
//! parsed to `f64` and printed again, and the frame is read once, byte by byte, with no
//! tape, no scratch buffers and nothing allocated. On the synthetic feed this cuts the
//! decode and encode cost per trade to a fraction (see the `decode` bench).

use crate::limits::PARTITION_KEY_MAX_CHARS;

/// Digits and signs in a number the scanner passes on. With at most two exponent digits
/// this bounds every value far inside `f64`'s range, so what the general path would call
/// non-finite never gets through.
const MAX_NUMBER_LEN: usize = 32;

/// Digits in an integer that always fits a `u64`.
const MAX_U64_DIGITS: usize = 19;

/// One trade as the JSON text of its fields, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawTrade<'a> {
    /// A valid partition key of printable ASCII that needs no escaping in JSON.
    pub symbol: &'a str,
    /// A non-negative JSON number.
    pub price: &'a [u8],
    /// A non-negative JSON number.
    pub volume: &'a [u8],
    /// A non-negative JSON integer that fits a `u64`.
    pub time_ms: &'a [u8],
    /// The condition codes as a compact JSON array of strings, or empty when the trade
    /// has none (absent, `null` or `[]`).
    pub conditions: &'a [u8],
}

/// Calls `each` for every trade of `frame`, in order, and returns how many there were; or
/// returns `None` as soon as the frame leaves the accepted subset. `each` may have been
/// called for some trades before a `None`: the caller must discard what it did with them.
pub fn trades<'a>(frame: &'a [u8], mut each: impl FnMut(&RawTrade<'a>)) -> Option<usize> {
    let mut c = Cursor { buf: frame, pos: 0 };
    c.expect(b'{')?;
    let (mut count, mut is_trade) = (None, false);
    loop {
        let key = c.string()?;
        c.expect(b':')?;
        match key {
            b"data" if count.is_none() => count = Some(c.trade_list(&mut each)?),
            b"type" if !is_trade => {
                if c.string()? != b"trade" {
                    return None;
                }
                is_trade = true;
            }
            _ => return None,
        }
        match c.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    c.skip_space();
    (is_trade && c.pos == frame.len()).then_some(count?)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after any whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        self.skip_space();
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string of printable ASCII without escapes, after any whitespace; its contents.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.skip_space();
        self.string_here()
    }

    /// Like [`Cursor::string`], starting exactly at the opening quote.
    fn string_here(&mut self) -> Option<&'a [u8]> {
        if self.buf.get(self.pos) != Some(&b'"') {
            return None;
        }
        let start = self.pos + 1;
        let mut end = start;
        loop {
            match *self.buf.get(end)? {
                b'"' => break,
                b'\\' | 0..0x20 | 0x80.. => return None,
                _ => end += 1,
            }
        }
        self.pos = end + 1;
        Some(&self.buf[start..end])
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.buf.get(self.pos) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A non-negative JSON number, or with `integer` a non-negative JSON integer.
    fn number(&mut self, integer: bool) -> Option<&'a [u8]> {
        self.skip_space();
        let start = self.pos;
        let whole = self.digits();
        if whole == 0 || (whole > 1 && self.buf[start] == b'0') {
            return None;
        }
        if integer {
            return (whole <= MAX_U64_DIGITS).then(|| &self.buf[start..self.pos]);
        }
        if self.buf.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.buf.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.buf.get(self.pos) {
                self.pos += 1;
            }
            if !(1..=2).contains(&self.digits()) {
                return None;
            }
        }
        let text = &self.buf[start..self.pos];
        (text.len() <= MAX_NUMBER_LEN).then_some(text)
    }

    /// `null`, or a compact array of strings; its text, empty when there are no codes.
    fn conditions(&mut self) -> Option<&'a [u8]> {
        self.skip_space();
        let start = self.pos;
        if self.buf[start..].starts_with(b"null") {
            self.pos += 4;
            return Some(&[]);
        }
        if self.buf.get(self.pos) != Some(&b'[') {
            return None;
        }
        self.pos += 1;
        if self.buf.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Some(&[]);
        }
        // No whitespace inside, so that the text can be copied as it is and stay compact.
        loop {
            self.string_here()?;
            match self.buf.get(self.pos)? {
                b',' => self.pos += 1,
                b']' => break,
                _ => return None,
            }
        }
        self.pos += 1;
        Some(&self.buf[start..self.pos])
    }

    fn trade_list(&mut self, each: &mut impl FnMut(&RawTrade<'a>)) -> Option<usize> {
        self.expect(b'[')?;
        self.skip_space();
        if self.buf.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Some(0);
        }
        let mut count = 0;
        loop {
            each(&self.trade()?);
            count += 1;
            match self.next()? {
                b',' => {}
                b']' => return Some(count),
                _ => return None,
            }
        }
    }

    fn trade(&mut self) -> Option<RawTrade<'a>> {
        self.expect(b'{')?;
        let (mut symbol, mut price, mut volume, mut time_ms, mut conditions) =
            (None, None, None, None, None);
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            match key {
                b"s" if symbol.is_none() => symbol = Some(self.string()?),
                b"p" if price.is_none() => price = Some(self.number(false)?),
                b"v" if volume.is_none() => volume = Some(self.number(false)?),
                b"t" if time_ms.is_none() => time_ms = Some(self.number(true)?),
                b"c" if conditions.is_none() => conditions = Some(self.conditions()?),
                _ => return None,
            }
            match self.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        // ASCII, so bytes are characters: the partition key limit is a length check.
        let symbol = symbol.filter(|s| !s.is_empty() && s.len() <= PARTITION_KEY_MAX_CHARS)?;
        let symbol = std::str::from_utf8(symbol).ok()?;
        Some(RawTrade {
            symbol,
            price: price?,
            volume: volume?,
            time_ms: time_ms?,
            conditions: conditions.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finnhub::{self, Frame, Trade};
    use proptest::prelude::*;

    fn scan(text: &str) -> Option<Vec<RawTrade<'_>>> {
        let mut out = Vec::new();
        trades(text.as_bytes(), |t| out.push(*t)).map(|n| {
            assert_eq!(n, out.len());
            out
        })
    }

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn finnhub_frames_scan_field_by_field() {
        let text = r#"{"data":[{"c":["1","24"],"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467},{"s":"A","p":1e-7,"t":0,"v":43,"c":null}],"type":"trade"}"#;
        let got = scan(text).expect("a Finnhub trade frame is in the subset");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].symbol, "BINANCE:BTCUSDT");
        assert_eq!(
            (s(got[0].price), s(got[0].volume), s(got[0].time_ms)),
            ("7296.89", "0.011467", "1575526691134")
        );
        assert_eq!(s(got[0].conditions), r#"["1","24"]"#);
        assert_eq!((s(got[1].price), s(got[1].volume)), ("1e-7", "43"));
        assert!(got[1].conditions.is_empty());
        // Whitespace between tokens and either key order are fine.
        let spaced = " {\n\"type\" : \"trade\" , \"data\" : [ { \"s\" : \"X\" , \"p\" : 1 ,\
                      \"t\" : 2 , \"v\" : 3 , \"c\" : [] } ] }\r\n";
        assert_eq!(scan(spaced).unwrap()[0].symbol, "X");
        assert_eq!(scan(r#"{"type":"trade","data":[]}"#).unwrap().len(), 0);
    }

    #[test]
    fn anything_unusual_is_declined() {
        let base = |trade: &str| format!(r#"{{"data":[{trade}],"type":"trade"}}"#);
        let ok = r#"{"s":"A","p":1,"t":1,"v":1}"#;
        assert!(scan(&base(ok)).is_some());
        for trade in [
            r#"{"s":"A\"B","p":1,"t":1,"v":1}"#,
            r#"{"s":"Ä","p":1,"t":1,"v":1}"#,
            r#"{"s":"","p":1,"t":1,"v":1}"#,
            r#"{"s":"A","p":-1,"t":1,"v":1}"#,
            r#"{"s":"A","p":01,"t":1,"v":1}"#,
            r#"{"s":"A","p":1.,"t":1,"v":1}"#,
            r#"{"s":"A","p":1e400,"t":1,"v":1}"#,
            r#"{"s":"A","p":1,"t":1.5,"v":1}"#,
            r#"{"s":"A","p":1,"t":99999999999999999999,"v":1}"#,
            r#"{"s":"A","p":1,"t":1}"#,
            r#"{"s":"A","p":1,"t":1,"v":1,"v":2}"#,
            r#"{"s":"A","p":1,"t":1,"v":1,"x":0}"#,
            r#"{"s":"A","p":"1","t":1,"v":1}"#,
            r#"{"s":"A","p":1,"t":1,"v":1,"c":[ "1"]}"#,
            r#"{"s":"A","p":1,"t":1,"v":1,"c":["1",2]}"#,
            r#"{"s":"A","p":1,"t":1,"v":1"#,
        ] {
            assert_eq!(scan(&base(trade)), None, "{trade}");
        }
        let long = format!(r#"{{"s":"{}","p":1,"t":1,"v":1}}"#, "A".repeat(257));
        assert_eq!(scan(&base(&long)), None);
        for frame in [
            r#"{"type":"ping"}"#,
            r#"{"data":[],"type":"news"}"#,
            r#"{"data":[]}"#,
            r#"{"data":[],"type":"trade","msg":"x"}"#,
            r#"{"data":[],"type":"trade"} x"#,
            r#"{"data":[],"data":[],"type":"trade"}"#,
            r#"{"data":[{"s":"A","p":1,"t":1,"v":1}],"type":"trade""#,
            "",
        ] {
            assert_eq!(scan(frame), None, "{frame}");
        }
    }

    /// A trade frame the scanner accepts, as the general decoder reads it.
    fn general(text: &str) -> Vec<Trade<'static>> {
        let buf: &'static mut [u8] = Box::leak(text.as_bytes().to_vec().into_boxed_slice());
        match finnhub::decode(buf) {
            Ok(Frame::Trades(t)) => t,
            other => panic!("the general decoder refused what the scanner took: {other:?}"),
        }
    }

    proptest! {
        /// Whatever the scanner accepts, the general decoder reads the same trades from:
        /// equal numbers, equal strings, valid trades.
        #[test]
        fn accepted_frames_mean_what_the_general_decoder_reads(
            trades in prop::collection::vec(
                (
                    "[ -~]{0,6}",
                    "(0|[1-9][0-9]{0,8})(\\.[0-9]{1,6})?([eE][+-]?[0-9]{1,2})?",
                    "(0|[1-9][0-9]{0,6})(\\.[0-9]{1,3})?",
                    "(0|[1-9][0-9]{0,13})",
                    prop::option::of(prop::collection::vec("[0-9A-Z]{1,2}", 0..4)),
                ),
                0..8,
            ),
            space in "[ \n]{0,1}",
        ) {
            let mut text = format!(r#"{{{space}"data":{space}["#);
            for (i, (sym, p, v, t, codes)) in trades.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                let sym = serde_json::to_string(sym).unwrap();
                text.push_str(&format!(r#"{{"s":{sym},"p":{p},{space}"v":{v},"t":{t}"#));
                if let Some(codes) = codes {
                    text.push_str(&format!(r#","c":{}"#, serde_json::to_string(codes).unwrap()));
                }
                text.push('}');
            }
            text.push_str(r#"],"type":"trade"}"#);
            let Some(fast) = scan(&text) else {
                // Declined: only for what the subset leaves out.
                let unusual = trades.iter().any(|(sym, ..)| sym.is_empty() || sym.contains(['"', '\\']));
                prop_assert!(unusual, "declined a frame in the subset: {}", text);
                return Ok(());
            };
            let slow = general(&text);
            prop_assert_eq!(fast.len(), slow.len());
            for (f, g) in fast.iter().zip(&slow) {
                prop_assert!(g.validate().is_ok());
                prop_assert_eq!(f.symbol, g.symbol);
                prop_assert_eq!(s(f.price).parse::<f64>().unwrap(), g.price);
                prop_assert_eq!(s(f.volume).parse::<f64>().unwrap(), g.volume);
                prop_assert_eq!(s(f.time_ms).parse::<u64>().unwrap(), g.time_ms);
                let codes: Vec<String> = if f.conditions.is_empty() {
                    Vec::new()
                } else {
                    serde_json::from_slice(f.conditions).unwrap()
                };
                prop_assert_eq!(codes, g.conditions.as_slice());
            }
        }
    }
}
