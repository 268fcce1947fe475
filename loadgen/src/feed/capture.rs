//! Capture files: the frames a client received, one per line, with their receive times.
//!
//! ```text
//! # a comment: lines starting with '#' are skipped, as are blank lines
//! 1712345678901234<TAB>{"data":[{"c":null,"p":189.5,"s":"AAPL","t":1712345678900,"v":3}],"type":"trade"}
//! ```
//!
//! Each frame line is the receive time in microseconds since the Unix epoch, one tab, and
//! the frame's text exactly as received. JSON never needs a raw newline (inside strings
//! a newline must be escaped, and between tokens any whitespace will do), so the writer
//! replaces the rare raw CR or LF with a space and the file stays one frame per line.
//! `loadgen record` writes these files; the feed's replay source reads them.

use std::io::{self, Write};

/// Starts a comment line.
pub const COMMENT_PREFIX: &str = "#";

/// Why a capture file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    BadLine { path: String, line: usize, reason: String },
    #[error("{path} holds no trade frames to replay")]
    NoTrades { path: String },
}

impl CaptureError {
    /// A file that failed to read or parse fails the same way again; a full disk or a
    /// vanished directory needs an operator, not a retry loop.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// One frame line, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLine<'a> {
    /// Receive time, microseconds since the Unix epoch.
    pub rt_us: u64,
    pub frame: &'a str,
}

/// Reads one line: `Ok(None)` for comments and blank lines.
pub fn parse_line(line: &str) -> Result<Option<CaptureLine<'_>>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() || line.starts_with(COMMENT_PREFIX) {
        return Ok(None);
    }
    let Some((time, frame)) = line.split_once('\t') else {
        return Err("expected <receive time µs>, a tab, then the frame".into());
    };
    let rt_us = time
        .parse::<u64>()
        .map_err(|_| format!("receive time {time:.30?} is not whole microseconds"))?;
    if frame.is_empty() {
        return Err("the frame after the tab is empty".into());
    }
    Ok(Some(CaptureLine { rt_us, frame }))
}

/// Writes a capture file line by line. Buffering is the caller's: wrap a file in a
/// `BufWriter`.
#[derive(Debug)]
pub struct CaptureWriter<W: Write> {
    out: W,
    /// Frames whose raw CR or LF had to be replaced.
    rewritten: u64,
}

impl<W: Write> CaptureWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, rewritten: 0 }
    }

    /// Writes `text` as comment lines, one per line of text.
    pub fn comment(&mut self, text: &str) -> io::Result<()> {
        for line in text.lines() {
            writeln!(self.out, "{COMMENT_PREFIX} {line}")?;
        }
        Ok(())
    }

    /// Writes one frame received at `rt_us`.
    pub fn frame(&mut self, rt_us: u64, frame: &[u8]) -> io::Result<()> {
        let mut digits = itoa::Buffer::new();
        self.out.write_all(digits.format(rt_us).as_bytes())?;
        self.out.write_all(b"\t")?;
        if frame.iter().any(|&b| b == b'\n' || b == b'\r') {
            self.rewritten += 1;
            let flat: Vec<u8> =
                frame.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }).collect();
            self.out.write_all(&flat)?;
        } else {
            self.out.write_all(frame)?;
        }
        self.out.write_all(b"\n")
    }

    /// Frames written with a raw CR or LF replaced by a space.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_comments_are_skipped() {
        let mut writer = CaptureWriter::new(Vec::new());
        writer.comment("synthetic\nnot market data").unwrap();
        writer.frame(17, br#"{"type":"ping"}"#).unwrap();
        writer.frame(18, b"{\"type\":\n\"ping\"}").unwrap();
        assert_eq!(writer.rewritten(), 1);
        let text = String::from_utf8(writer.into_inner()).unwrap();
        let lines: Vec<_> = text.lines().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(lines[..2], [None, None]);
        assert_eq!(lines[2], Some(CaptureLine { rt_us: 17, frame: r#"{"type":"ping"}"# }));
        assert_eq!(lines[3], Some(CaptureLine { rt_us: 18, frame: r#"{"type": "ping"}"# }));
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn broken_lines_say_what_is_wrong() {
        assert_eq!(parse_line("   "), Ok(None));
        assert_eq!(parse_line("12\t{}\r"), Ok(Some(CaptureLine { rt_us: 12, frame: "{}" })));
        assert!(parse_line("12 {}").unwrap_err().contains("tab"));
        assert!(parse_line("-1\t{}").unwrap_err().contains("microseconds"));
        assert!(parse_line("1.5\t{}").unwrap_err().contains("microseconds"));
        assert!(parse_line("12\t").unwrap_err().contains("empty"));
    }
}
