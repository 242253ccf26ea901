//! geoip-exporter: where in the world this machine's TCP connections come
//! from and go to, as Prometheus metrics. The binary (`src/main.rs`) calls
//! [`main`]; with the `fuzzing` feature, [`fuzz`] exposes the parsers of
//! outside input to the fuzz targets in `fuzz/`, and with `bench`, `bench`
//! what `cargo xtask bench` measures.
//!
//! # Layout
//! Data flows one way:
//! - [`cli`]: the flags.
//! - [`probe`] (with [`tracefs`] and [`btf`]): load and attach the kernel program,
//!   read its ring buffer and lost-event counter.
//! - [`events`]: decode ring-buffer records.
//! - [`snapshot`]: the connections the kernel holds (`sock_diag`, in every
//!   network namespace of [`namespaces`]), at start-up and for the
//!   reconcile after lost events.
//! - [`filter`]: ranges that are not "the world".
//! - [`table`]: the live connection table; [`geo`] answers its lookups,
//!   [`reload`] swaps in new databases when their files change;
//!   [`labels`] counts the opt-in service, ASN and city labels, each
//!   capped to its busiest values by [`cap`]; [`measures`] counts
//!   durations and bytes.
//! - [`metrics`]: the only module that touches prometheus types.
//! - [`http`]: the router; [`page`]: the live map it serves at `/`;
//!   [`server`]: the HTTP server and its limits; [`webconfig`]: TLS and
//!   basic auth from `--web.config.file`.
//! - [`app`]: start-up order, tasks, shutdown.

mod app;
#[cfg(feature = "bench")]
pub mod bench;
mod capabilities;
mod capped;
mod check;
mod cli;
mod conn;
mod error;
mod exclude;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod geo;
mod kernel;
mod metrics;
mod reload;
mod snapshot;
mod table;
mod web;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

/// The whole program: flags, start-up, serving, exit code.
#[must_use]
pub fn main() -> ExitCode {
    let mut args = cli::Args::parse();
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
        args.check = true;
        let command_line: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let (args, service) = match check::flags(args, &command_line) {
            Ok(flags) => flags,
            Err(code) => return code,
        };
        // The check's lines are the report; the log says only what is wrong.
        init_logging(match args.log_level {
            cli::LogLevel::Debug => cli::LogLevel::Debug,
            _ => cli::LogLevel::Warn,
        });
        return check::run(args, service);
    }
    init_logging(args.log_level);
    // Privileged work first, on this thread alone; the runtime's threads
    // are made after the capabilities are dropped.
    let started = match app::open_databases(&args)
        .map_err(app::AppError::from)
        .and_then(|databases| app::start(&args, databases))
    {
        Ok(started) => started,
        Err(err) => {
            report(&err);
            return ExitCode::from(err.exit_code());
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            report(&err);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(args, started, shutdown_signal())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::from(err.exit_code())
        }
    }
}

/// `error: <what>` then one `caused by:` line per underlying cause.
fn report(err: &dyn std::error::Error) {
    eprintln!("geoip-exporter: error: {}", error::chain(err));
}

fn init_logging(level: cli::LogLevel) {
    let level = match level {
        cli::LogLevel::Error => tracing::Level::ERROR,
        cli::LogLevel::Warn => tracing::Level::WARN,
        cli::LogLevel::Info => tracing::Level::INFO,
        cli::LogLevel::Debug => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
