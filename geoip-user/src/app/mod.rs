//! The exporter as a whole: start-up order, the tasks, shutdown.
//!
//! Order matters: every check that changes nothing in the kernel runs
//! first (database, listen address, privileges, tracefs), so a bad flag
//! leaves nothing half-started; then the program is attached, then the
//! existing connections are enumerated, then both are merged. Everything
//! that needs privileges happens in [`start`] ([`startup`]), before any
//! thread but the main one exists, which then drops its capabilities.
//! After that [`begin`] ([`running`]) starts the one task that owns the
//! connection table ([`event_loop`], reconciling as [`reconcile`] says)
//! and waits for the merge; [`running::Running::serve`] serves HTTP and reloads
//! the databases when their files change ([`reload`], watching their
//! directories with [`dir_watch`]) until a signal ([`signals`]) ends it.

mod dir_watch;
mod error;
mod event_loop;
mod reconcile;
mod reload;
mod running;
mod signals;
mod startup;

use std::{process::ExitCode, time::Duration};

pub(crate) use error::AppError;
pub(crate) use running::begin;
pub(crate) use signals::hold_hangup;
pub(crate) use startup::{Opened, features, open_databases, start};

use crate::cli::Args;

/// How long blocking tasks still running may hold up the exit.
const EXIT_DEADLINE: Duration = Duration::from_millis(200);

/// Start, serve until SIGINT or SIGTERM, and the exit code.
pub(crate) fn run_exporter(args: &Args) -> ExitCode {
    // Privileged work first, on this thread alone; the runtime's threads
    // are made after the capabilities are dropped.
    let started = match open_databases(args)
        .map_err(AppError::from)
        .and_then(|opened| start(args, opened))
    {
        Ok(started) => started,
        Err(err) => return failed(&err),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            crate::error::report(&err);
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        begin(args, started)
            .await?
            .serve(args, signals::shutdown())
            .await
    });
    // A blocking task still running (a reload reading a file system that
    // does not answer) must not hold the exit back.
    runtime.shutdown_timeout(EXIT_DEADLINE);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failed(&err),
    }
}

fn failed(err: &AppError) -> ExitCode {
    crate::error::report(err);
    ExitCode::from(err.exit_code())
}
