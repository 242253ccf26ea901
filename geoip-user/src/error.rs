//! Errors as the log and the terminal show them.

/// An error and its causes on one string: `what` then one `caused by:`
/// line per underlying cause.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str("\n  caused by: ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Print `geoip-exporter: error: <what>` and its causes on stderr.
pub(crate) fn report(err: &dyn std::error::Error) {
    eprintln!("geoip-exporter: error: {}", chain(err));
}
