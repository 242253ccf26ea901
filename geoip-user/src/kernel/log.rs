//! The kernel program's log lines (aya-log), forwarded to `tracing`.

use tokio::io::{Interest, unix::AsyncFd};

/// Forwards the kernel program's aya-log lines to `tracing`.
pub(crate) struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "kernel", "{msg}"),
            log::Level::Info => tracing::info!(target: "kernel", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "kernel", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Forward the kernel program's log lines as they come, on a task of
/// this runtime.
pub(crate) fn forward(logger: aya_log::EbpfLogger<TracingLog>) {
    // SAFETY: the logger owns its descriptor and neither replaces nor
    // closes it while the AsyncFd holds it.
    let logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(err) => {
            tracing::debug!(error = %err, "cannot poll kernel program logs");
            return;
        }
    };
    let mut logger = logger;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
