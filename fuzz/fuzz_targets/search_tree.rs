//! Fuzz target: a database whose search tree the bytes choose
//! (`geoip_tests::crafted::arbitrary_tree`), opened, walked and flattened
//! by `geoip_user::fuzz::database`. `cargo xtask fuzz` gives each input 2
//! seconds: a tree that passes the bounded walk but makes the flattening
//! slow is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    geoip_user::fuzz::database(&geoip_tests::crafted::arbitrary_tree(data));
});
