//! CPU cost of the whole sink process per trade: `loadgen sink --unlimited` in its own
//! process, fed aggregated PutRecords requests over HTTP by client threads in this one,
//! measured by the child's user + system time from `/proc/<pid>/stat`. CPU time holds
//! still on a shared machine where wall time does not, and it counts everything the sink
//! does: HTTP, JSON, base64, deaggregation with its MD5 check, user-record decoding, the
//! per-trade checks and the answers.
//!
//! Requests are shaped like the ingestor's defaults: four aggregated records of about
//! 256 KiB each, 1 MiB of data per request, one `src` per client thread, every trade new.
//!
//! Run: `cargo bench -p tickpipe-loadgen --bench sink_cpu` (prints one line of results;
//! `SINK_CPU_REQUESTS` sets the requests per client thread, default 60).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wire::finnhub::Trade;
use wire::kpl::Aggregator;
use wire::record::{Receipt, encode};

const CLIENTS: usize = 2;
const AGGREGATE_BYTES: usize = 256 * 1024;
const AGGREGATES_PER_REQUEST: usize = 4;
const SYMBOLS: u64 = 50;
const STREAM: &str = "bench";

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// Builds `requests` PutRecords bodies of trades from `src`, numbered on from 0, and the
/// number of trades they hold.
fn bodies(src: &str, requests: usize) -> (Vec<Vec<u8>>, u64) {
    let mut seq = 0u64;
    let mut out = Vec::with_capacity(requests);
    let codes = ["1", "12"];
    for _ in 0..requests {
        let mut records = Vec::new();
        for _ in 0..AGGREGATES_PER_REQUEST {
            let mut agg = Aggregator::new();
            loop {
                let symbol = format!("SYN:{:04}", seq % SYMBOLS);
                let trade = Trade {
                    symbol: &symbol,
                    price: 100.0 + (seq % 997) as f64 * 0.01,
                    time_ms: now_us() / 1000,
                    volume: (1 + seq % 300) as f64,
                    conditions: if seq.is_multiple_of(3) {
                        codes.into_iter().collect()
                    } else {
                        Default::default()
                    },
                };
                let mut data = Vec::new();
                encode(&mut data, &trade, Receipt { src, seq, rt_us: now_us() });
                if agg.len_with(&symbol, data.len()) > AGGREGATE_BYTES {
                    break;
                }
                agg.push(&symbol, &data);
                seq += 1;
            }
            let (bytes, key) = agg.finish().unwrap();
            records.push(serde_json::json!({
                "Data": loadgen::sink::encode_base64(&bytes),
                "PartitionKey": key,
            }));
        }
        let body = serde_json::json!({ "StreamName": STREAM, "Records": records });
        out.push(serde_json::to_vec(&body).unwrap());
    }
    (out, seq)
}

/// Sends every body on one keep-alive connection, checking each answer wrote everything.
fn send_all(port: u16, bodies: &[Vec<u8>]) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    for body in bodies {
        let head = format!(
            "POST / HTTP/1.1\r\nHost: bench\r\nX-Amz-Target: Kinesis_20131202.PutRecords\r\n\
             Content-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).unwrap();
        socket.write_all(body).unwrap();
        let answer = read_answer(&mut socket, &mut buf);
        assert!(answer.contains("\"FailedRecordCount\":0"), "{answer}");
    }
}

fn read_answer(socket: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                assert!(head.starts_with("http/1.1 200"), "{head}");
                return String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            }
        }
        let n = socket.read(&mut chunk).unwrap();
        assert!(n > 0, "the sink closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// User plus system CPU seconds of process `pid`, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / ticks_per_sec
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok().and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok()).unwrap_or(100.0)
}

fn start_sink() -> (Child, u16) {
    // Pick a free port; the race with another process taking it first is harmless here.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["sink", "--unlimited", "--stream", STREAM, "--progress-every", "1h"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the sink did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn main() {
    let requests: usize =
        std::env::var("SINK_CPU_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let work: Vec<(Vec<Vec<u8>>, u64)> =
        (0..CLIENTS).map(|i| bodies(&format!("bench-client.{i}"), requests)).collect();
    let trades: u64 = work.iter().map(|w| w.1).sum();

    let ticks = clock_ticks();
    let (mut child, port) = start_sink();
    let pid = child.id();
    let cpu_before = cpu_secs(pid, ticks);
    let started = Instant::now();
    std::thread::scope(|s| {
        for (bodies, _) in &work {
            s.spawn(move || send_all(port, bodies));
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid, ticks) - cpu_before;
    let rss = peak_rss_kib(pid);

    let killed = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(killed.success());
    let mut report = String::new();
    child.stdout.take().unwrap().read_to_string(&mut report).unwrap();
    assert!(child.wait().unwrap().success());
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["trades"], trades, "the sink saw every trade");
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["missing"], 0);

    println!(
        "sink_cpu: {trades} trades in {requests}x{CLIENTS} requests; sink process CPU \
         {cpu:.2} s (user+sys) -> {:.0} trades per CPU-second, {:.2} us CPU per trade; \
         wall {wall:.2} s ({:.0} trades/s); peak RSS {} MiB",
        trades as f64 / cpu,
        cpu * 1e6 / trades as f64,
        trades as f64 / wall,
        rss / 1024,
    );
}
