//! The `ingestor` binary refuses bad flags with a message that names the flag and what it
//! accepts, and exits 2 without touching the network.

use std::process::Command;

fn ingestor(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ingestor"))
        .args(args)
        // Nothing here may reach AWS; a stray default would show up as a hang or a 1.
        .env("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("the ingestor binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_flags_name_the_flag_and_the_accepted_values() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--linger", "20"], &["--linger", "needs a unit"]),
        (&["--aggregation", "maybe"], &["--aggregation", "on", "off"]),
        (&["--aggregate-max-bytes", "5000000"], &["--aggregate-max-bytes", "1024..="]),
        (&["--max-request-bytes", "6000000"], &["--max-request-bytes", "5242880"]),
        (&["--url", "http://example.com"], &["--url", "ws://"]),
        (&["--shard-rate-fraction", "3"], &["--shard-rate-fraction", "0.05"]),
        (&["--metrics-listen", "everywhere"], &["host:port"]),
        (&["--symbols", ","], &["--symbols"]),
    ];
    for (args, needles) in cases {
        let (code, stderr) = ingestor(args);
        assert_eq!(code, 2, "{args:?} exited {code}: {stderr}");
        for needle in *needles {
            assert!(stderr.contains(needle), "{args:?}: {needle:?} not in {stderr:?}");
        }
    }
}

#[test]
fn a_dead_kinesis_endpoint_is_a_clear_error() {
    let (code, stderr) = ingestor(&["--metrics-listen", "off", "--stream", "nowhere"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("shard map") && stderr.contains("nowhere"), "{stderr}");
}

#[test]
fn help_explains_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_ingestor")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("Exit status") && text.contains("FINNHUB_TOKEN"), "{text}");
}
