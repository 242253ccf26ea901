//! What the check prints: one line per item, `ok`, `warn`, `FAILED` or
//! `skipped`, then a verdict.

use std::fmt::Display;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    Warn,
    Failed,
    Skipped,
}

impl Status {
    const fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Failed => "FAILED",
            Self::Skipped => "skipped",
        }
    }
}

/// What one item found: its status and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Finding {
    pub(super) status: Status,
    pub(super) text: String,
}

impl Finding {
    pub(super) fn ok(text: impl Display) -> Self {
        Self::new(Status::Ok, text)
    }

    pub(super) fn warn(text: impl Display) -> Self {
        Self::new(Status::Warn, text)
    }

    pub(super) fn failed(text: impl Display) -> Self {
        Self::new(Status::Failed, text)
    }

    pub(super) fn skipped(text: impl Display) -> Self {
        Self::new(Status::Skipped, text)
    }

    fn new(status: Status, text: impl Display) -> Self {
        Self {
            status,
            text: text.to_string(),
        }
    }

    pub(super) fn is_failed(&self) -> bool {
        self.status == Status::Failed
    }
}

/// The lines printed so far, counted.
#[derive(Default)]
pub(super) struct Report {
    pub(super) failed: usize,
    pub(super) warned: usize,
}

impl Report {
    /// Print `item`'s line.
    pub(super) fn add(&mut self, item: &str, finding: &Finding) {
        match finding.status {
            Status::Failed => self.failed += 1,
            Status::Warn => self.warned += 1,
            Status::Ok | Status::Skipped => {}
        }
        println!("{:<8}{item:<16}{}", finding.status.word(), finding.text);
    }

    /// Print the verdict.
    pub(super) fn verdict(&self) -> bool {
        if self.failed == 0 {
            println!(
                "check passed: this host can run geoip-exporter with these flags ({} warning(s))",
                self.warned
            );
        } else {
            println!(
                "check failed: {} item(s) failed; do what their lines say and run the check again",
                self.failed
            );
        }
        self.failed == 0
    }
}
