//! Fuzz target: `geoip_user::fuzz::exclude_list` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geoip_user::fuzz::exclude_list(data));
