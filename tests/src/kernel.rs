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

/// Whether the kernel counts a program's skipped runs
/// (`bpf_prog_info.recursion_misses`, Linux 5.12).
pub fn counts_skipped_runs() -> bool {
    version() >= (5, 12)
}
