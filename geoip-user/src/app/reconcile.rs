//! When the event loop compares the connection table with the kernel's
//! sockets.

use std::time::Duration;

use crate::snapshot::Scope;

/// When the table is compared with the kernel's sockets. Without a lost,
/// skipped or undecodable event the table is exact by construction (every
/// connection is opened and closed by its own events, merged with the
/// start-up snapshot), so a reconcile, which dumps every socket of every
/// namespace, runs only when the kernel reported one, and otherwise at
/// most every `max` as a safety net.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ReconcilePolicy {
    /// How often the loss counts are looked at; at most one reconcile
    /// starts per check.
    pub(super) check: Duration,
    /// The longest between two reconciles, losses or not.
    pub(super) max: Option<Duration>,
    /// Reconcile at every check: the kernel cannot say when events went
    /// missing.
    pub(super) every_check: bool,
}

impl ReconcilePolicy {
    /// When the event loop reconciles, if it does: not when disabled, and
    /// not when namespaces cannot be told apart (it would take containers'
    /// connections for stale ones). A kernel that does not count the
    /// program's skipped runs (`counts_skipped` false: before 6.7) cannot
    /// say when events went missing: then every check reconciles.
    pub(super) fn of(
        scope: Scope,
        every: Duration,
        max: Duration,
        counts_skipped: bool,
    ) -> Option<Self> {
        let policy = Self::counted(scope, every, max)?;
        if counts_skipped {
            return Some(policy);
        }
        tracing::info!(
            interval = ?every,
            "this kernel does not count the program's skipped runs: reconciling every --reconcile.interval instead of after losses"
        );
        Some(Self {
            every_check: true,
            ..policy
        })
    }

    fn counted(scope: Scope, every: Duration, max: Duration) -> Option<Self> {
        match (scope, every) {
            (_, Duration::ZERO) => None,
            (Scope::OwnUntagged, _) => {
                tracing::warn!(
                    "the reconcile is off: namespaces cannot be told apart on this kernel"
                );
                None
            }
            (Scope::All, every) => Some(Self {
                check: every,
                max: (!max.is_zero()).then_some(max),
                every_check: false,
            }),
        }
    }

    /// Whether to reconcile now: the kernel lost or skipped events (or
    /// records were undecodable) since the last reconcile began, when the
    /// count was `baseline`, or `max` has passed since.
    pub(super) fn due(self, baseline: u64, losses: u64, since_last: Duration) -> bool {
        self.every_check || losses > baseline || self.max.is_some_and(|max| since_last >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_mins(1);

    #[test]
    fn reconciles_after_losses_or_when_the_safety_interval_passed() {
        let policy =
            ReconcilePolicy::of(Scope::All, MINUTE, Duration::from_mins(15), true).unwrap();
        assert_eq!(policy.check, MINUTE);
        // Nothing lost, recently reconciled: nothing to repair.
        assert!(!policy.due(5, 5, MINUTE));
        // One event lost or skipped since the last one: repair.
        assert!(policy.due(5, 6, MINUTE));
        // Nothing lost, but the safety interval passed.
        assert!(policy.due(5, 5, Duration::from_mins(15)));
        assert!(!policy.due(5, 5, Duration::from_mins(14)));
    }

    #[test]
    fn zero_max_interval_reconciles_only_after_losses() {
        let policy = ReconcilePolicy::of(Scope::All, MINUTE, Duration::ZERO, true).unwrap();
        assert_eq!(policy.max, None);
        assert!(!policy.due(0, 0, Duration::from_hours(1000)));
        assert!(policy.due(0, 1, Duration::ZERO));
    }

    /// Before 6.7 the kernel does not count skipped runs: nothing says
    /// events went missing, so each check reconciles.
    #[test]
    fn a_kernel_that_cannot_count_skipped_runs_reconciles_at_each_check() {
        let policy =
            ReconcilePolicy::of(Scope::All, MINUTE, Duration::from_mins(15), false).unwrap();
        // Whatever the timer's jitter made of the time since the last.
        assert!(policy.due(5, 5, MINUTE));
        assert!(policy.due(5, 5, Duration::from_secs(59)));
    }

    #[test]
    fn no_reconcile_when_disabled_or_namespaces_unknown() {
        assert_eq!(
            ReconcilePolicy::of(Scope::All, Duration::ZERO, MINUTE, true),
            None
        );
        assert_eq!(
            ReconcilePolicy::of(Scope::OwnUntagged, MINUTE, MINUTE, false),
            None
        );
    }
}
