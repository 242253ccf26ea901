//! Support for geoip-exporter's end-to-end tests (in `tests/`), which run
//! as root against the real kernel:
//! - [`mmdb`]: writes `MaxMind` DB files, so the tests make their own databases;
//!   [`crafted`]: the files no writer makes (search trees a walk cannot finish);
//! - [`netns`]: test hosts with public-looking addresses in a network
//!   namespace the test creates;
//! - [`exporter`]: runs the real binary and reads its `/metrics`;
//!   [`kernel`]: the running kernel's version and what it counts;
//! - [`load`]: load generation for the benchmark and the soak;
//! - [`hold`], [`scrape`], [`peer`]: the scale and poller benchmarks'
//!   connection holders, `/metrics` latency and the polling peer;
//! - [`webdriver`]: drives headless Chromium for the map page's test.

#![expect(
    clippy::missing_panics_doc,
    clippy::must_use_candidate,
    clippy::missing_errors_doc,
    reason = "test support: a panic is how it reports a failed test"
)]

#[cfg(test)]
use bcrypt as _;
#[cfg(test)]
use geoip_user as _;

pub mod crafted;
pub mod exporter;
pub mod fixtures;
pub mod hold;
pub mod kernel;
pub mod load;
pub mod mmdb;
pub mod netns;
pub mod peer;
pub mod prometheus;
pub mod scrape;
pub mod webdriver;
