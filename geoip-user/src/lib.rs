//! geoip-exporter: where in the world this machine's TCP connections come
//! from and go to, as Prometheus metrics. The binary (`src/main.rs`) calls
//! [`main`]; with the `fuzzing` feature, [`fuzz`] exposes the parsers of
//! outside input to the fuzz targets in `fuzz/`, and with `bench`, `bench`
//! what `cargo xtask bench` measures.
//!
//! # Layout
//! The modules in the order an event flows through them; each one uses
//! only those listed before it (`cargo xtask layout` shows the graph, and
//! a unit test of `xtask` checks it):
//! - leaves, the vocabulary every stage shares: [`error`] (errors as the
//!   log shows them), [`civil`] (calendar dates), [`conn`] (a
//!   connection's identity, direction, process and byte counters, the
//!   canonical address form), [`capabilities`] (Linux capabilities),
//!   [`exclude`] (ranges that are not "the world"), [`capped`] (label
//!   values capped to the busiest), [`byte_size`] (sizes as people read
//!   them), [`untrusted_file`] (the one way a file from outside is read),
//!   [`memory_room`] (how much more memory the process may take),
//!   [`cli`] (the flags), [`logging`].
//! - [`kernel`]: the running kernel, its tracefs and BTF; load and attach
//!   the program; read the ring buffer and decode its records; the
//!   kernel's loss counts and log lines.
//! - [`geo`]: the databases: the country table flattened at load, ASN and
//!   city records.
//! - [`metrics`]: every metric (the only module that touches prometheus
//!   types), the recorder the table updates, the API's overview.
//! - [`snapshot`]: what the kernel holds (`sock_diag`, in every network
//!   namespace), at start-up and for the reconcile.
//! - [`table`]: the live connection table: opens and closes from the
//!   events, merges of snapshots, the opt-in labels and measures.
//! - [`web`]: the HTTP side: routes, the JSON API, the map page, the
//!   server and its limits, basic auth and TLS.
//! - [`app`]: start-up order, the event loop, reloads, shutdown.
//! - [`check`]: `geoip-exporter check`, which runs the app's start-up.
//! - [`bench`](mod@bench) and [`fuzz`] (features `bench`, `fuzzing`): the entry
//!   points of `cargo xtask bench` and of the fuzz targets, which may use
//!   any module.
//!
//! An event's way: [`kernel::ring`] reads a record, [`kernel::events`]
//! decodes it, the table's tracker drops what [`exclude`] excludes, looks
//! the rest up in [`geo`], counts it under its labels and measures, and
//! the [`metrics`] recorder updates the series a scrape reads.

mod app;
#[cfg(feature = "bench")]
pub mod bench;
mod byte_size;
mod capabilities;
mod capped;
mod check;
mod civil;
mod cli;
mod conn;
mod error;
mod exclude;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod geo;
mod kernel;
mod logging;
mod memory_room;
mod metrics;
mod snapshot;
mod table;
mod untrusted_file;
mod web;

use std::process::ExitCode;

use clap::Parser as _;

/// The whole program: flags, start-up, serving, exit code.
#[must_use]
pub fn main() -> ExitCode {
    let args = cli::Args::parse();
    if let Some(text) = cli::self_description(&args) {
        use std::io::Write as _;
        let written = text.and_then(|t| std::io::stdout().lock().write_all(&t));
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("geoip-exporter: error: cannot write to standard output: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check || args.command.is_some() {
        return check::run_check(args);
    }
    app::hold_hangup();
    logging::init(args.log_level);
    app::run_exporter(&args)
}
