//! Whether this kernel lets this process create a BPF ring buffer of a
//! given size: one raw `BPF_MAP_CREATE`, freed at once, so `check` can
//! tell why a load would fail before loading anything.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
};

use super::version::{self, MEMCG_ACCOUNTING};

/// Why the kernel refused the ring buffer, with what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RingBufferRefused {
    #[error(
        "this kernel refused a BPF ring buffer of {bytes} bytes ({err}): ring buffers need Linux 5.8 or later"
    )]
    Unsupported { bytes: u32, err: io::Error },
    #[error(
        "not permitted to create a {bytes}-byte BPF map ({err}): before Linux 5.11 BPF maps count against the locked-memory limit; raise it (ulimit -l, LimitMEMLOCK= as the packaged unit does) or pass a smaller --ringbuf.size-bytes"
    )]
    LockedMemory { bytes: u32, err: io::Error },
    #[error(
        "not permitted to create a BPF map ({err}): see the capabilities; inside a container, the host must allow bpf(2)"
    )]
    NotPermitted { err: io::Error },
    #[error(
        "no memory for a {bytes}-byte ring buffer ({err}): before Linux 5.11 raise the locked-memory limit (LimitMEMLOCK=, ulimit -l), or pass a smaller --ringbuf.size-bytes"
    )]
    NoMemory { bytes: u32, err: io::Error },
    #[error("creating a {bytes}-byte BPF ring buffer failed: {err}")]
    Other { bytes: u32, err: io::Error },
}

/// Create (and free) a BPF ring buffer of `bytes`.
pub(crate) fn ring_buffer(bytes: u32) -> Result<(), RingBufferRefused> {
    /// The first fields of `union bpf_attr` for `BPF_MAP_CREATE`; the
    /// kernel zeroes the rest.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: bytes,
        map_flags: 0,
    };
    let size = libc::c_uint::try_from(size_of::<MapCreate>()).unwrap_or(20);
    // SAFETY: bpf(BPF_MAP_CREATE) with a valid attribute of `size` bytes.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &raw const attr, size) };
    if fd < 0 {
        return Err(refused(
            bytes,
            io::Error::last_os_error(),
            version::running(),
        ));
    }
    if let Ok(fd) = RawFd::try_from(fd) {
        // SAFETY: a new descriptor that nothing else owns; dropping closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(())
}

/// What a refusal of `bytes` with `err` means on kernel `kernel`.
pub(super) fn refused(bytes: u32, err: io::Error, kernel: Option<(u32, u32)>) -> RingBufferRefused {
    match err.raw_os_error() {
        Some(libc::EINVAL) => RingBufferRefused::Unsupported { bytes, err },
        Some(libc::EPERM) if kernel < Some(MEMCG_ACCOUNTING) => {
            RingBufferRefused::LockedMemory { bytes, err }
        }
        Some(libc::EPERM) => RingBufferRefused::NotPermitted { err },
        Some(libc::ENOMEM) => RingBufferRefused::NoMemory { bytes, err },
        _ => RingBufferRefused::Other { bytes, err },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_do_for_the_kernel_they_happen_on() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        let text = |err: RingBufferRefused| err.to_string();
        assert!(text(refused(4096, eperm(), Some((5, 10)))).contains("locked-memory limit"));
        assert!(text(refused(4096, eperm(), Some((6, 1)))).contains("see the capabilities"));
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(text(refused(4096, einval, Some((5, 4)))).contains("Linux 5.8 or later"));
    }

    /// The tests run as root on a kernel with ring buffers.
    #[test]
    fn this_kernel_creates_one() {
        ring_buffer(4096).unwrap_or_else(|e| panic!("{e}"));
    }
}
