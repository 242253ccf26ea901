//! The locked-memory limit (`RLIMIT_MEMLOCK`). Before Linux 5.11 the kernel
//! charges BPF maps against it, and it is 64 KiB by default on such systems:
//! the 4 MiB ring buffer does not fit and creating it fails with EPERM. On
//! those kernels the exporter raises its own limit before it loads the
//! program, as aya's template does: to unlimited if it may (root, or
//! `CAP_SYS_RESOURCE`), else to its hard limit. From 5.11 on BPF memory is
//! charged to the memory cgroup instead, and the limit is left alone.

use std::io;

use super::version::MEMCG_ACCOUNTING;

/// What raising the limit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Raised {
    /// Linux 5.11 or later: the limit does not count BPF maps.
    NotNeeded,
    /// Already unlimited, or at least `need`.
    Enough,
    /// Raised from `from` to `to` bytes (`None`: unlimited).
    To { from: u64, to: Option<u64> },
    /// It could not be raised past `current`, which is short of `need`.
    Short { current: u64, need: u64 },
}

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kib = |b: u64| b / 1024;
        match self {
            Self::NotNeeded => f.write_str(
                "not needed (Linux 5.11 or later charges BPF maps to the memory cgroup)",
            ),
            Self::Enough => f.write_str("already enough"),
            Self::To { from, to: None } => write!(f, "raised from {} KiB to unlimited", kib(*from)),
            Self::To { from, to: Some(to) } => {
                write!(
                    f,
                    "raised from {} KiB to {} KiB, the hard limit",
                    kib(*from),
                    kib(*to)
                )
            }
            Self::Short { current, need } => write!(
                f,
                "{} KiB, which cannot be raised to the {} KiB the maps need (the hard limit is lower and raising it needs CAP_SYS_RESOURCE)",
                kib(*current),
                kib(*need)
            ),
        }
    }
}

/// What to do, given the kernel, the soft and hard limits (`None`:
/// unlimited) and the bytes the maps need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Nothing(Raised),
    /// Try unlimited, else the hard limit.
    Raise,
}

fn plan(kernel: Option<(u32, u32)>, soft: Option<u64>, need: u64) -> Plan {
    match (kernel, soft) {
        (Some(k), _) if k >= MEMCG_ACCOUNTING => Plan::Nothing(Raised::NotNeeded),
        (_, None) => Plan::Nothing(Raised::Enough),
        (_, Some(soft)) if soft >= need => Plan::Nothing(Raised::Enough),
        _ => Plan::Raise,
    }
}

fn limit() -> io::Result<(Option<u64>, Option<u64>)> {
    let mut rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut rlimit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Ok((bytes(rlimit.rlim_cur), bytes(rlimit.rlim_max)))
}

fn set(soft: libc::rlim_t, hard: libc::rlim_t) -> bool {
    let rlimit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const rlimit) == 0 }
}

/// On a kernel before 5.11, raise the limit for maps of `need` bytes.
pub(crate) fn raise_if_needed(kernel: Option<(u32, u32)>, need: u64) -> io::Result<Raised> {
    let (soft, hard) = limit()?;
    if let Plan::Nothing(raised) = plan(kernel, soft, need) {
        return Ok(raised);
    }
    let from = soft.unwrap_or(0);
    if set(libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
        return Ok(Raised::To { from, to: None });
    }
    match hard {
        None if set(libc::RLIM_INFINITY, libc::RLIM_INFINITY) => Ok(Raised::To { from, to: None }),
        Some(hard) if hard > from && set(hard, hard) => {
            if hard >= need {
                Ok(Raised::To {
                    from,
                    to: Some(hard),
                })
            } else {
                Ok(Raised::Short {
                    current: hard,
                    need,
                })
            }
        }
        _ => Ok(Raised::Short {
            current: from,
            need,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_only_before_5_11_and_only_when_short() {
        let need = 4 << 20;
        assert_eq!(
            plan(Some((6, 1)), Some(64 << 10), need),
            Plan::Nothing(Raised::NotNeeded)
        );
        assert_eq!(
            plan(Some((5, 11)), Some(64 << 10), need),
            Plan::Nothing(Raised::NotNeeded)
        );
        assert_eq!(plan(Some((5, 10)), Some(64 << 10), need), Plan::Raise);
        assert_eq!(
            plan(None, Some(64 << 10), need),
            Plan::Raise,
            "unknown: try"
        );
        assert_eq!(
            plan(Some((5, 10)), None, need),
            Plan::Nothing(Raised::Enough)
        );
        assert_eq!(
            plan(Some((5, 10)), Some(8 << 20), need),
            Plan::Nothing(Raised::Enough)
        );
    }

    #[test]
    fn what_was_done_is_said() {
        assert_eq!(
            Raised::To {
                from: 64 << 10,
                to: None
            }
            .to_string(),
            "raised from 64 KiB to unlimited"
        );
        assert!(
            Raised::Short {
                current: 64 << 10,
                need: 4 << 20
            }
            .to_string()
            .contains("64 KiB, which cannot be raised to the 4096 KiB")
        );
    }

    /// On this machine's kernel (6.18) nothing is touched.
    #[test]
    fn a_new_kernel_leaves_the_limit_alone() {
        assert_eq!(
            raise_if_needed(Some((6, 18)), 4 << 20).unwrap(),
            Raised::NotNeeded
        );
    }
}
