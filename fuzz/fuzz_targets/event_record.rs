//! Fuzz target: `geoip_user::fuzz::event_record` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geoip_user::fuzz::event_record(data));
