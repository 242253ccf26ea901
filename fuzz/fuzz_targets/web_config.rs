//! Fuzz target: `geoip_user::fuzz::web_config` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geoip_user::fuzz::web_config(data));
