//! Reading the ring buffer the kernel program fills: in batches while
//! events come, asleep until the kernel wakes it while none do, and with
//! the ring's positions for a merge that must see every record reserved
//! before a point in time.

use std::io;

use aya::maps::{MapData, RingBuf};
use geoip_common::WAKE_ON_FIRST;
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    events::{DecodeError, Event, decode},
    probe::ProbeError,
    shared_array::SharedArray,
};

/// Most records handed on in one batch.
const BATCH: usize = 4096;
/// How often the ring buffer is drained while events come: the longest an
/// event waits. (The kernel wakes us earlier only when a quarter of the
/// ring fills first.)
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// Drains that found nothing before the reader sleeps until the kernel
/// wakes it (on the first record of the empty ring): one second of quiet.
const IDLE_DRAINS: u32 = 20;
/// While asleep, the ring is still looked at this often (a record submitted
/// while the reader was falling asleep does not wake it).
const ASLEEP_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the ring buffer as it fills. While events come it drains the
/// ring every [`DRAIN_INTERVAL`] (one wake-up per batch, not per event);
/// after [`IDLE_DRAINS`] empty drains it asks the program to wake it on the
/// next event instead and sleeps (an idle exporter wakes once a second,
/// not twenty times).
pub(crate) struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    control: SharedArray<u32>,
    positions: Positions,
    /// Empty drains in a row.
    idle: u32,
    /// Whether the program wakes us on the next event.
    asleep: bool,
}

impl EventReader {
    /// Read `ring` from this runtime (call inside it).
    pub(crate) fn new(
        ring: RingBuf<MapData>,
        control: SharedArray<u32>,
    ) -> Result<Self, ProbeError> {
        let positions = Positions::map(&ring).map_err(ProbeError::Poll)?;
        // SAFETY: the ring buffer owns its descriptor and neither replaces
        // nor closes it while the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| ProbeError::Poll(e.into_parts().1))?;
        Ok(Self {
            ring,
            control,
            positions,
            idle: 0,
            asleep: false,
        })
    }

    /// Ask the program to wake us on the next event (`asleep`), or not.
    fn set_asleep(&mut self, asleep: bool) {
        let mode = if asleep { WAKE_ON_FIRST } else { 0 };
        self.control.set(0, mode);
        self.asleep = asleep;
    }

    /// Where the kernel will put the next record: every record reserved
    /// until now lies before it.
    pub(crate) fn reserved_until(&self) -> u64 {
        self.positions.producer()
    }

    /// Whether every record before `position` has been read (a record is
    /// read only once its program has finished writing it).
    pub(crate) fn read_until(&self, position: u64) -> bool {
        self.positions.consumer() >= position
    }

    /// Decode up to [`BATCH`] records onto `out`, waiting for a wake-up
    /// from the kernel or the drain timer while there are none.
    /// Cancel-safe: what was read is in `out`.
    pub(crate) async fn read_batch(
        &mut self,
        out: &mut Vec<Result<Event, DecodeError>>,
    ) -> io::Result<()> {
        let start = out.len();
        loop {
            let ring = self.ring.get_mut();
            while out.len() - start < BATCH {
                match ring.next() {
                    Some(item) => out.push(decode(&item)),
                    None => break,
                }
            }
            if out.len() > start {
                self.idle = 0;
                if self.asleep {
                    self.set_asleep(false);
                }
                return Ok(());
            }
            if !self.asleep && self.idle >= IDLE_DRAINS {
                // Look at the ring once more after the program knows: a
                // record submitted meanwhile would not wake us.
                self.set_asleep(true);
                if self.asleep {
                    continue;
                }
            }
            let period = if self.asleep {
                ASLEEP_CHECK
            } else {
                DRAIN_INTERVAL
            };
            tokio::select! {
                guard = self.ring.readable_mut() => guard?.clear_ready(),
                () = tokio::time::sleep(period) => self.idle = self.idle.saturating_add(1),
            }
        }
    }

    /// Decode every record waiting now onto `out`, without waiting.
    pub(crate) fn drain_now(&mut self, out: &mut Vec<Result<Event, DecodeError>>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            out.push(decode(&item));
        }
    }
}

/// A read-only view of the ring buffer's two position pages: the
/// consumer's (page 0) and the producer's (page 1), each a 64-bit byte
/// position that only grows (`struct bpf_ringbuf`).
struct Positions {
    base: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    page: usize,
}

// SAFETY: the mapping is read-only and read only through atomics.
unsafe impl Send for Positions {}

impl Positions {
    fn map(ring: &RingBuf<MapData>) -> io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("page size unknown"))?;
        // SAFETY: a new read-only shared mapping of the map's first two
        // pages, which the kernel allows for ring buffers; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // mmap returns a page-aligned address: aligned for the u64s.
        let base = std::ptr::NonNull::new(addr.cast::<std::sync::atomic::AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { base, page })
    }

    /// The position at byte `offset` (0 or one page).
    fn load(&self, offset: usize) -> u64 {
        let index = offset / size_of::<u64>();
        // SAFETY: the first word of page 0 or 1 of a two-page mapping that
        // lives as long as `self`, aligned; the kernel and aya update it
        // atomically.
        let atomic = unsafe { &*self.base.as_ptr().add(index) };
        atomic.load(std::sync::atomic::Ordering::Acquire)
    }

    fn consumer(&self) -> u64 {
        self.load(0)
    }

    fn producer(&self) -> u64 {
        self.load(self.page)
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), 2 * self.page) };
    }
}
