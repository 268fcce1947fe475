//! The checks behind tickpipe's fuzz targets, callable from libFuzzer (`fuzz_targets/`, with
//! cargo-fuzz on nightly) and from plain `cargo test` on stable, which replays the seeds in
//! `seeds/<target>/` and seeded mutations of them. (`corpus/`, where libFuzzer keeps what
//! it finds, is git-ignored; the seeds are the part worth keeping.)
//!
//! - [`sink_request`]: a request to `loadgen sink`, answered by a fresh sink without a
//!   socket. Whatever the bytes, the sink must answer with a known status and JSON: an
//!   AWS-style error (`__type` and `message`) for anything but 200, and for a 200 to
//!   PutRecords one result per record.
//! - [`feed_client_message`]: a message a websocket client sends the feed. Decoding must
//!   not panic, and a decoded message must encode and decode back to itself.

use std::sync::OnceLock;

use loadgen::sink::{CONTENT_TYPE_JSON, FaultConfig, ShardLimits, Sink, SinkConfig};
use wire::finnhub::{ClientMessage, decode_client};

/// Statuses the sink may answer with.
const STATUSES: [u16; 5] = [200, 400, 413, 500, 503];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime always builds")
    })
}

/// A sink with tight limits and record failures, so that throttling and injected
/// failures are reached by small inputs. No request-level faults: those only sleep or
/// refuse, and sleeping would slow the fuzzer to a crawl.
fn sink() -> Sink {
    Sink::new(SinkConfig {
        stream: "fuzz".into(),
        shards: 3,
        limits: Some(ShardLimits { records_per_sec: 5, bytes_per_sec: 4096 }),
        faults: FaultConfig { fail_rate: 0.1, seed: 1, ..FaultConfig::default() },
    })
    .expect("a valid configuration")
}

/// Splits an input into the target header (its first line, if UTF-8) and the body.
fn split(data: &[u8]) -> (Option<&str>, &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    }
}

/// Answers `data` (target line, then body) with a fresh sink and checks the answer's shape.
pub fn sink_request(data: &[u8]) {
    let (target, body) = split(data);
    // Parsing alone is what the HTTP layer calls first; it must hold up by itself too.
    let parsed = loadgen::sink::parse_request(target, Some(CONTENT_TYPE_JSON), body);
    let records = match &parsed {
        Ok(loadgen::sink::Request::PutRecords(put)) => Some(put.records.len()),
        _ => None,
    };
    let parsed_ok = parsed.is_ok();
    let sink = sink();
    let (status, answer) = runtime().block_on(sink.answer(target, Some(CONTENT_TYPE_JSON), body));
    assert!(STATUSES.contains(&status), "status {status}");
    let json: serde_json::Value = serde_json::from_slice(&answer).expect("every answer is JSON");
    if status == 200 {
        assert!(parsed_ok, "a request that does not parse was answered 200");
        if let Some(n) = records {
            assert_eq!(json["Records"].as_array().map(Vec::len), Some(n), "{json}");
        }
    } else {
        assert!(json["__type"].is_string(), "{json}");
        assert!(json["message"].is_string(), "{json}");
    }
}

/// Decodes `data` as a client message and checks that it round-trips.
pub fn feed_client_message(data: &[u8]) {
    let mut buf = data.to_vec();
    let Ok(message) = decode_client(&mut buf) else { return };
    let symbol = match message {
        ClientMessage::Subscribe(s) | ClientMessage::Unsubscribe(s) => s,
    };
    // The feed checks every subscribed symbol; any string must get a verdict, not a panic.
    let _ = loadgen::feed::validate_symbol(symbol);
    let mut again = message.to_json().into_bytes();
    let back = decode_client(&mut again).expect("an encoded message decodes");
    assert_eq!(back, message);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Mutated inputs tried per seed on stable.
    const MUTATIONS_PER_SEED: usize = 400;

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let inputs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert!(!inputs.is_empty(), "{} holds no seeds", dir.display());
        inputs
    }

    /// A small xorshift generator: the stable replay must be repeatable without extra crates.
    struct Dice(u64);

    impl Dice {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// libFuzzer-style mutations: flip, insert, delete, duplicate, splice in a token.
    fn mutate(seed: &[u8], dice: &mut Dice) -> Vec<u8> {
        const TOKENS: &[&[u8]] = &[
            b"\"", b"{", b"}", b"[", b"]", b",", b":", b"\\u0000", b"null", b"-1", b"1e999",
            b"\xff",
        ];
        let mut out = seed.to_vec();
        for _ in 0..1 + dice.below(4) {
            let at = dice.below(out.len() + 1);
            match dice.below(5) {
                0 if !out.is_empty() => {
                    let i = at.min(out.len() - 1);
                    out[i] ^= 1 << dice.below(8);
                }
                1 => out.insert(at, dice.next() as u8),
                2 if at < out.len() => {
                    let end = (at + 1 + dice.below(8)).min(out.len());
                    out.drain(at..end);
                }
                3 if at < out.len() => {
                    let end = (at + 1 + dice.below(16)).min(out.len());
                    let piece = out[at..end].to_vec();
                    out.splice(at..at, piece);
                }
                _ => {
                    let token = TOKENS[dice.below(TOKENS.len())];
                    out.splice(at..at, token.iter().copied());
                }
            }
        }
        out
    }

    fn replay(target: &str, check: fn(&[u8])) {
        let seeds = corpus(target);
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        for seed in &seeds {
            check(seed);
            for _ in 0..MUTATIONS_PER_SEED {
                check(&mutate(seed, &mut dice));
            }
        }
    }

    /// The seeds reach the paths their names promise, so mutations start from deep inside
    /// the handler rather than from the JSON parser's first error.
    #[test]
    fn sink_seeds_are_answered_as_their_names_say() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/sink_request");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let data = std::fs::read(&path).unwrap();
            let (target, body) = super::split(&data);
            let sink = super::sink();
            let handle = sink.handle();
            let (status, answer) = super::runtime().block_on(sink.answer(
                target,
                Some(super::CONTENT_TYPE_JSON),
                body,
            ));
            let answer = String::from_utf8_lossy(&answer);
            let expected =
                if matches!(name.as_str(), "unknown_stream" | "no_target") { 400 } else { 200 };
            assert_eq!(status, expected, "{name}: {answer}");
            if name == "put_records_aggregated" {
                let stats = handle.stats();
                assert_eq!((stats.trades, stats.undecodable_records), (5, 0), "{name}");
            }
        }
    }

    #[test]
    fn sink_request_holds_on_the_seeds_and_their_mutations() {
        replay("sink_request", super::sink_request);
    }

    #[test]
    fn feed_client_message_holds_on_the_seeds_and_their_mutations() {
        replay("feed_client_message", super::feed_client_message);
    }
}
