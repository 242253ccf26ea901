//! What the kernel program could not hand over, as the kernel counts it.

use std::os::fd::{AsRawFd as _, OwnedFd};

use aya::maps::{MapData, PerCpuArray};

/// What the kernel could not hand over, as it counts it: events the
/// program dropped on a full ring buffer, and runs of the program the
/// kernel skipped. Each read is one system call; `None` when the kernel
/// does not say.
pub(crate) struct KernelLosses {
    lost: PerCpuArray<MapData, u64>,
    /// The program, for the kernel's count of its skipped runs.
    program: OwnedFd,
}

impl KernelLosses {
    pub(super) const fn new(lost: PerCpuArray<MapData, u64>, program: OwnedFd) -> Self {
        Self { lost, program }
    }

    /// Sum of the per-CPU counts of events the program could not submit.
    pub(crate) fn lost(&self) -> Option<u64> {
        self.lost
            .get(&0, 0)
            .ok()
            .map(|per_cpu| per_cpu.iter().sum())
    }

    /// How many times the kernel skipped the program because it was
    /// already running on the same CPU (`bpf_prog_info.recursion_misses`,
    /// Linux 5.12 and later): a TCP state change in softirq context that
    /// interrupts the program running for another one in process context
    /// is not seen.
    pub(crate) fn missed(&self) -> Option<u64> {
        missed_runs(&self.program)
    }
}

fn missed_runs(program: &OwnedFd) -> Option<u64> {
    /// `BPF_OBJ_GET_INFO_BY_FD`.
    const GET_INFO: libc::c_long = 15;
    /// Offset of `recursion_misses` in `struct bpf_prog_info`, in u64s (byte 208).
    const RECURSION_MISSES: usize = 26;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u64; 29];
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(program.as_raw_fd()).ok()?,
        info_len: u32::try_from(size_of_val(&info)).ok()?,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: bpf(2) BPF_OBJ_GET_INFO_BY_FD with an attribute of the
    // documented layout, pointing at a buffer of `info_len` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            GET_INFO,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    // The kernel writes back how much it filled: older kernels stop
    // before the field.
    let filled = usize::try_from(attr.info_len).ok()?;
    (rc == 0 && filled > RECURSION_MISSES * 8).then(|| info[RECURSION_MISSES])
}
