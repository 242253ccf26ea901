//! Linux capabilities of the calling thread (`capget`/`capset`, version 3).
//!
//! Capabilities belong to threads: the exporter drops them on its main
//! thread after start-up, before any other thread exists (threads made
//! later inherit the reduced sets), and keeps `CAP_SYS_ADMIN` and
//! `CAP_SYS_PTRACE` only on the one thread that enters other network
//! namespaces.

use std::io;

pub(crate) const CAP_DAC_READ_SEARCH: u32 = 2;
pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_PERFMON: u32 = 38;
pub(crate) const CAP_BPF: u32 = 39;

/// `_LINUX_CAPABILITY_VERSION_3`.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The three capability sets of a thread, as bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sets {
    pub(crate) effective: u64,
    pub(crate) permitted: u64,
    pub(crate) inheritable: u64,
}

/// The bit of capability `cap`.
pub(crate) const fn bit(cap: u32) -> u64 {
    1 << cap
}

/// This thread's capability sets.
pub(crate) fn current() -> io::Result<Sets> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget(2) with a version-3 header and room for two data
    // structs, as the kernel expects for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(Sets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Keep on this thread only the capabilities in `keep` that it has:
/// effective and permitted become `keep ∩ permitted`, inheritable and
/// ambient become empty. What is dropped cannot come back.
pub(crate) fn restrict_thread(keep: u64) -> io::Result<Sets> {
    let now = current()?;
    let kept = now.permitted & keep;
    // SAFETY: prctl(2) with constant arguments; clearing the ambient set
    // only removes capabilities.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "splitting a 64-bit mask into its 32-bit halves"
    )]
    let data = [
        Data {
            effective: kept as u32,
            permitted: kept as u32,
            inheritable: 0,
        },
        Data {
            effective: (kept >> 32) as u32,
            permitted: (kept >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) with a version-3 header and two data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    current()
}

/// Names of the capabilities in `mask` that this module knows.
pub(crate) fn names(mask: u64) -> Vec<&'static str> {
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .into_iter()
    .filter(|(cap, _)| mask & bit(*cap) != 0)
    .map(|(_, name)| name)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a thread of its own (capabilities are per thread): drop all
    /// but one, and see that the rest cannot come back.
    #[test]
    fn dropped_capabilities_stay_dropped() {
        std::thread::spawn(|| {
            let before = current().unwrap();
            assert!(
                before.permitted & bit(CAP_SYS_ADMIN) != 0,
                "tests run as root"
            );
            let after = restrict_thread(bit(CAP_SYS_PTRACE)).unwrap();
            assert_eq!(after.effective, bit(CAP_SYS_PTRACE));
            assert_eq!(after.permitted, bit(CAP_SYS_PTRACE));
            let again = restrict_thread(u64::MAX).unwrap();
            assert_eq!(again.permitted, bit(CAP_SYS_PTRACE), "no way back");
            assert_eq!(names(again.permitted), ["CAP_SYS_PTRACE"]);
        })
        .join()
        .unwrap();
        assert!(
            current().unwrap().permitted & bit(CAP_SYS_ADMIN) != 0,
            "other threads keep theirs"
        );
    }
}
