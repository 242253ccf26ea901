//! A BPF array created memory-mappable (`BPF_F_MMAPABLE`), mapped into
//! this process: its slots are read and written as memory, without a
//! `bpf(2)` call. That matters beyond speed: before Linux 5.19 a kernel
//! with `kernel.unprivileged_bpf_disabled` set (the distributions'
//! default) refuses every `bpf(2)` of a thread without `CAP_BPF`, which
//! the exporter's threads drop after start-up.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use aya::maps::{Map, MapData};

/// A value a slot holds, read and written as an atomic (the kernel
/// program writes the other side).
pub(crate) trait Slot: Copy {
    /// # Safety
    /// `at` is valid for the slot's size, aligned to it, and only ever
    /// accessed atomically.
    unsafe fn load(at: *mut u8) -> Self;
    /// # Safety
    /// As [`Slot::load`], and `at` is writable.
    unsafe fn store(at: *mut u8, value: Self);
}

impl Slot for u32 {
    unsafe fn load(at: *mut u8) -> Self {
        // SAFETY: the caller's.
        unsafe { AtomicU32::from_ptr(at.cast()) }.load(Ordering::Relaxed)
    }
    unsafe fn store(at: *mut u8, value: Self) {
        // SAFETY: the caller's.
        unsafe { AtomicU32::from_ptr(at.cast()) }.store(value, Ordering::SeqCst);
    }
}

impl Slot for u64 {
    unsafe fn load(at: *mut u8) -> Self {
        // SAFETY: the caller's.
        unsafe { AtomicU64::from_ptr(at.cast()) }.load(Ordering::Relaxed)
    }
    unsafe fn store(at: *mut u8, value: Self) {
        // SAFETY: the caller's.
        unsafe { AtomicU64::from_ptr(at.cast()) }.store(value, Ordering::SeqCst);
    }
}

/// The slots of one mapped array.
pub(crate) struct SharedArray<T: Slot> {
    base: NonNull<u8>,
    /// Slots, as the map was created with.
    len: usize,
    /// Bytes from one slot to the next: the kernel rounds an array's
    /// values up to 8 bytes.
    stride: usize,
    mapped: usize,
    writable: bool,
    /// Keeps the map alive as long as the mapping.
    _map: MapData,
    _slots: PhantomData<T>,
}

// SAFETY: the mapping is shared memory of plain integers, read and written
// only with atomic whole-slot accesses; the kernel program is the other
// party, and no Rust reference to a slot is ever handed out.
unsafe impl<T: Slot> Send for SharedArray<T> {}
// SAFETY: as above.
unsafe impl<T: Slot> Sync for SharedArray<T> {}

impl<T: Slot> SharedArray<T> {
    /// Map `map` (an array of `T`, created mmapable), writable if
    /// `writable`. Its size is the map's own (one `bpf(2)` call: at
    /// start-up, before the capabilities go).
    pub(crate) fn new(map: Map, writable: bool) -> io::Result<Self> {
        let Map::Array(data) = map else {
            return Err(io::Error::other("not an array map"));
        };
        let info = data.info().map_err(io::Error::other)?;
        if usize::try_from(info.value_size()).ok() != Some(size_of::<T>()) {
            return Err(io::Error::other(
                "the array's values are not of the slot's size",
            ));
        }
        let len = usize::try_from(info.max_entries()).map_err(io::Error::other)?;
        let stride = size_of::<T>().next_multiple_of(8);
        let page = page_size();
        let bytes = len
            .checked_mul(stride)
            .ok_or_else(|| io::Error::other("array too large"))?;
        let mapped = bytes.div_ceil(page).max(1) * page;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: mmap(2) of a BPF array map's descriptor, which the kernel
        // allows for `BPF_F_MMAPABLE` arrays up to their page-rounded size;
        // the result is checked.
        let addr =
            unsafe { libc::mmap(std::ptr::null_mut(), mapped, prot, libc::MAP_SHARED, fd, 0) };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self {
            base,
            len,
            stride,
            mapped,
            writable,
            _map: data,
            _slots: PhantomData,
        })
    }

    /// The value of slot `i`.
    pub(crate) fn get(&self, i: usize) -> Option<T> {
        // SAFETY: slot `i` lies within the mapping, aligned to its size
        // (the mapping is page-aligned, the stride a multiple of 8), and
        // is only accessed atomically.
        (i < self.len).then(|| unsafe { T::load(self.base.as_ptr().add(i * self.stride)) })
    }

    /// Set slot `i`, if the mapping is writable.
    pub(crate) fn set(&self, i: usize, value: T) {
        debug_assert!(self.writable, "set on a read-only mapping");
        if self.writable && i < self.len {
            // SAFETY: as in `get`, and the mapping is writable.
            unsafe { T::store(self.base.as_ptr().add(i * self.stride), value) };
        }
    }

    /// Every slot's value.
    pub(crate) fn values(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }
}

impl<T: Slot> Drop for SharedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// One more than the highest CPU number the kernel may run on
/// (`/sys/devices/system/cpu/possible`, such as `0-3` or `0,2-5`): the
/// slots a per-CPU array indexed by CPU number needs.
pub(crate) fn cpu_slots() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|text| highest_cpu(&text))
        .map_or(1024, |highest| highest.saturating_add(1))
}

fn highest_cpu(list: &str) -> Option<u32> {
    list.trim()
        .split(',')
        .filter_map(|part| part.rsplit('-').next())
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slots_cover_the_highest_possible_cpu() {
        assert_eq!(highest_cpu("0-3\n"), Some(3));
        assert_eq!(highest_cpu("0,2-5,7\n"), Some(7));
        assert_eq!(highest_cpu("0\n"), Some(0));
        assert_eq!(highest_cpu("\n"), None);
        assert!(cpu_slots() >= 1);
    }
}
