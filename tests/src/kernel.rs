//! The kernel the tests run on (the host's, or a guest's in the kernel
//! matrix): what its answers depend on.

/// The running kernel's version, `(major, minor)`.
pub fn version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether the kernel counts a tracepoint program's skipped runs
/// (`recursion_misses`, counted for tracepoints since Linux 6.7).
pub fn counts_skipped_runs() -> bool {
    version() >= (6, 7)
}
