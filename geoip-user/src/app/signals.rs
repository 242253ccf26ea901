//! The signals the exporter acts on: SIGINT and SIGTERM end it; SIGHUP
//! reloads its databases, also when it comes during start-up, before the
//! reload task listens (its default action would end the process).

use std::sync::atomic::{AtomicBool, Ordering};

/// A SIGHUP came before the reload task listened for it.
static EARLY_HANGUP: AtomicBool = AtomicBool::new(false);

extern "C" fn note_hangup(_: libc::c_int) {
    // An atomic store: safe in a signal handler.
    EARLY_HANGUP.store(true, Ordering::Relaxed);
}

/// From now on a SIGHUP is held for the reload task instead of ending the
/// process. Call it first: a reload requested while the databases load
/// (`systemctl reload`, a log rotator) must not kill start-up. (The
/// reload task's own handler, installed later, chains to this one.)
pub(crate) fn hold_hangup() {
    // SAFETY: sigaction with a zeroed action whose handler only stores to
    // an atomic; SA_RESTART so no system call of start-up fails with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = note_hangup as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut action.sa_mask);
        if libc::sigaction(libc::SIGHUP, &raw const action, std::ptr::null_mut()) != 0 {
            // Logging is not set up yet: straight to stderr.
            eprintln!(
                "geoip-exporter: warning: cannot hold SIGHUP during start-up ({}): one then ends the process",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Whether a SIGHUP came before the reload task listened (and forget it).
pub(super) fn take_early_hangup() -> bool {
    EARLY_HANGUP.swap(false, Ordering::Relaxed)
}

/// Completes on SIGINT or SIGTERM.
pub(super) async fn shutdown() {
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
