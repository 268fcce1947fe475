//! Small JSON writers shared by the encoders in this crate.
//!
//! They append to a caller's `Vec<u8>` so that a hot loop can reuse one buffer and never
//! allocate per value.

/// Appends `s` as a JSON string literal, escaping only what JSON requires.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let needs_escape = s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    serde_json::to_writer(&mut *out, s).expect("writing a str into a Vec cannot fail");
}

/// Appends a finite number, as an integer when it has no fractional part.
///
/// Finnhub writes volumes such as `43` and prices such as `146.76`; printing `43` rather
/// than `43.0` keeps records compact and byte-for-byte close to what was received.
/// Non-finite values have no JSON form and are written as `null`.
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    // Below 2^53 every integer is exact in an f64, so the cast loses nothing.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if !v.is_finite() {
        out.extend_from_slice(b"null");
    } else if v.fract() == 0.0 && v.abs() < EXACT {
        write_i64(out, v as i64);
    } else {
        let mut buf = ryu::Buffer::new();
        out.extend_from_slice(buf.format_finite(v).as_bytes());
    }
}

/// Appends an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// Appends a signed integer.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_only_when_needed() {
        assert_eq!(s(|o| write_str(o, "BINANCE:BTCUSDT")), r#""BINANCE:BTCUSDT""#);
        assert_eq!(s(|o| write_str(o, "a\"b\\c\n")), r#""a\"b\\c\n""#);
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(s(|o| write_f64(o, 43.0)), "43");
        assert_eq!(s(|o| write_f64(o, 146.76)), "146.76");
        assert_eq!(s(|o| write_f64(o, -0.5)), "-0.5");
        assert_eq!(s(|o| write_f64(o, 1e300)), "1e300");
        assert_eq!(s(|o| write_f64(o, f64::NAN)), "null");
        assert_eq!(s(|o| write_u64(o, u64::MAX)), "18446744073709551615");
    }
}
