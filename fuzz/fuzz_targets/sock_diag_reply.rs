//! Fuzz target: `geoip_user::fuzz::sock_diag_reply` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geoip_user::fuzz::sock_diag_reply(data));
