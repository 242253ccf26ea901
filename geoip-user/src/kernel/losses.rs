//! What the kernel program could not hand over, as the kernel counts it.

use std::os::fd::{AsRawFd as _, OwnedFd};

use super::{
    shared_array::SharedArray,
    version::{self, COUNTS_SKIPPED_RUNS},
};

/// What the kernel could not hand over, as it counts it: events the
/// program dropped on a full ring buffer, and runs of the program the
/// kernel skipped. Neither read is a `bpf(2)` call (see
/// [`super::shared_array`]).
pub(crate) struct KernelLosses {
    /// One slot per CPU.
    lost: SharedArray<u64>,
    /// The program, for the kernel's count of its skipped runs.
    program: OwnedFd,
}

impl KernelLosses {
    pub(super) const fn new(lost: SharedArray<u64>, program: OwnedFd) -> Self {
        Self { lost, program }
    }

    /// Sum of the per-CPU counts of events the program could not submit.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.values().sum()
    }

    /// How many times the kernel skipped the program because it was
    /// already running on the same CPU (`recursion_misses`, from the
    /// program descriptor's `/proc/self/fdinfo`): a TCP state change in
    /// softirq context that interrupts the program running for another one
    /// in process context is not seen. `None` before Linux 6.7, which
    /// skips such runs of a tracepoint program without counting them.
    pub(crate) fn missed(&self) -> Option<u64> {
        if version::running().is_none_or(|v| v < COUNTS_SKIPPED_RUNS) {
            return None;
        }
        let path = format!("/proc/self/fdinfo/{}", self.program.as_raw_fd());
        recursion_misses(&std::fs::read_to_string(path).ok()?)
    }
}

/// The `recursion_misses:` count of a BPF program's fdinfo text; `None`
/// from a kernel that does not count them.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fdinfo of a program on 5.10 (no count) and on 6.1.
    #[test]
    fn skipped_runs_are_read_where_the_kernel_counts_them() {
        let v5_10 = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\tab12\nmemlock:\t4096\nprog_id:\t7\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        assert_eq!(recursion_misses(v5_10), None);
        let v6_1 = format!("{v5_10}recursion_misses:\t42\nverified_insns:\t900\n");
        assert_eq!(recursion_misses(&v6_1), Some(42));
    }
}
