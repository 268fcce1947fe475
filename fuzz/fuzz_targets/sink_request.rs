//! The sink's request handling: target header and body in, an AWS-style answer out.
//! The first line of the input is the `X-Amz-Target` value, the rest the body; see
//! `tickpipe_fuzz::sink_request` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tickpipe_fuzz::sink_request(data));
