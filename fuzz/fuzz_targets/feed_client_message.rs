//! The feed's handling of client messages: `wire::finnhub::decode_client` and the symbol
//! rules; see `tickpipe_fuzz::feed_client_message` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tickpipe_fuzz::feed_client_message(data));
