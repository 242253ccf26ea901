//! The running kernel's release, and the oldest one the exporter runs on.

use std::{ffi::CStr, io};

/// The oldest kernel with everything the exporter uses (BPF ring buffers,
/// `CAP_BPF`).
pub(crate) const MIN_KERNEL: (u32, u32) = (5, 8);

/// The first kernel that charges BPF maps to the memory cgroup instead of
/// `RLIMIT_MEMLOCK`.
pub(crate) const MEMCG_ACCOUNTING: (u32, u32) = (5, 11);

/// The first kernel that counts the skipped runs of a tracepoint program
/// (`trace_call_bpf` counting `recursion_misses`; the field itself, in
/// fdinfo, came with 5.12 but stayed 0 for tracepoints until then).
pub(crate) const COUNTS_SKIPPED_RUNS: (u32, u32) = (6, 7);

/// `uname -r`.
pub(crate) fn release() -> io::Result<String> {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&raw mut name) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: uname NUL-terminates release within the array.
    let release = unsafe { CStr::from_ptr(name.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

/// `6.18.0-foo` -> (6, 18).
pub(crate) fn parse(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's (major, minor), if it can be told.
pub(crate) fn running() -> Option<(u32, u32)> {
    release().ok().and_then(|r| parse(&r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_versions() {
        assert_eq!(parse("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse("5.8.0"), Some((5, 8)));
        assert_eq!(parse("4.19"), Some((4, 19)));
        assert_eq!(parse("weird"), None);
        assert!((5, 10) >= MIN_KERNEL && (4, 19) < MIN_KERNEL && (6, 1) >= MIN_KERNEL);
    }
}
