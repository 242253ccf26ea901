//! `geoip-exporter check` (or `--check`): can this host run the exporter
//! with these flags? One line per item, `ok`, `warn`, `FAILED` or
//! `skipped` ([`report`]), each saying what was found and, when it is not
//! ok, what to do. The items that change nothing in the kernel
//! ([`items`]) run first and all of them run even after a failure, so one
//! run lists every problem; then, when none failed, the real start-up runs
//! (load and attach the program, snapshot the connections that exist) and
//! stops before serving.
//!
//! Run with no flags at all, the check takes the flags the packaged
//! service runs with ([`service`]), and says so.

mod items;
mod report;
mod service;

use std::process::ExitCode;

use report::{Finding, Report};

use crate::{
    app::{self, AppError, Opened},
    capabilities,
    cli::{Args, LogLevel},
};

/// The check as the binary runs it: the flags to check (those given, or
/// the service's), then every item; exit 0 when nothing failed, 1 when
/// something did, 2 when the service's flags are bad.
pub(crate) fn run_check(given: Args) -> ExitCode {
    let command_line: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (args, service) = match service::flags(given, &command_line) {
        Ok(flags) => flags,
        Err(code) => return code,
    };
    // The check's lines are the report; the log says only what is wrong.
    crate::logging::init(match args.log_level {
        LogLevel::Debug => LogLevel::Debug,
        _ => LogLevel::Warn,
    });
    if check_host(&args, service) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Check everything and print a line per item; whether nothing failed.
/// With `service`, the flags are the service's, and what its unit's
/// sandbox would refuse of them is said too.
fn check_host(args: &Args, service: bool) -> bool {
    let mut report = Report::default();
    report.add("kernel", &items::kernel());
    report.add("BTF", &items::btf(args.bytes));
    report.add("tracepoint", &items::tracepoint());
    let sets = capabilities::current().ok();
    let capabilities = items::capabilities(sets.as_ref());
    report.add("capabilities", &capabilities);
    if let Some(namespaces) = items::namespace_capabilities(args, sets.as_ref()) {
        report.add("namespaces", &namespaces);
    }
    if capabilities.is_failed() {
        report.add(
            "ring buffer",
            &Finding::skipped("needs the capabilities above"),
        );
    } else {
        report.add(
            "ring buffer",
            &items::ring_buffer(args.ring_buffer_bytes, app::features(args)),
        );
    }
    let databases = match app::open_databases(args) {
        Ok(opened) => {
            report.add("database", &items::databases(&opened));
            Some(opened)
        }
        Err(err) => {
            report.add("database", &Finding::failed(crate::error::chain(&err)));
            None
        }
    };
    if let Some(path) = &args.web_config {
        report.add("web config", &items::web_config(path));
    }
    report.add("listen address", &items::listen(args));
    if service {
        for problem in service::sandbox_problems(args) {
            report.add("service", &Finding::warn(problem));
        }
    }
    if let Some(databases) = databases.filter(|_| report.failed == 0) {
        start(args, databases, &mut report);
    } else {
        for item in ["kernel program", "connections"] {
            report.add(item, &Finding::skipped("fix the failed items above first"));
        }
    }
    report.verdict()
}

/// The real start-up on the databases the check opened, stopped before
/// serving: load and attach the program, then merge the connections that
/// exist.
fn start(args: &Args, databases: Opened, report: &mut Report) {
    let started = match app::start(args, databases) {
        Ok(started) => started,
        Err(err) => {
            report.add(
                "kernel program",
                &Finding::failed(crate::error::chain(&err)),
            );
            report.add("connections", &Finding::skipped("needs the kernel program"));
            return;
        }
    };
    report.add(
        "kernel program",
        &Finding::ok(
            "loaded (the kernel's verifier accepted it) and attached to sock/inet_sock_set_state",
        ),
    );
    let merged = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(AppError::EventThread)
        .and_then(|runtime| {
            runtime.block_on(async {
                let running = app::begin(args, started).await?;
                let found = running.found();
                let found = (found.tracked, found.namespaces);
                running.stop().await;
                Ok(found)
            })
        });
    let finding = match merged {
        Ok((tracked, namespaces)) => Finding::ok(format!(
            "{tracked} established connection(s) found and tracked, in {namespaces} network namespace(s)"
        )),
        Err(err) => Finding::failed(crate::error::chain(&err)),
    };
    report.add("connections", &finding);
}
