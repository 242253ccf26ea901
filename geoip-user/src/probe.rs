//! The kernel side seen from user space: check privileges, load the
//! embedded eBPF object with this kernel's tracepoint layout, attach it,
//! then read its ring buffer and lost-event counter.
//!
//! Preparing (reading tracefs, checking capabilities) is kept apart from
//! loading so that every check that needs no kernel change runs first.

use std::io;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use geoip_common::{
    CONNECTING_MAP, CONTROL_MAP, EVENTS_MAP, FEATURES_GLOBAL, LAYOUT_GLOBAL, LOST_MAP, PROGRAM,
    PROGRAM_ANY_LAYOUT, SOCK_LAYOUT_GLOBAL, SockLayout, TCP_LAYOUT_GLOBAL, TRACEPOINT_CATEGORY,
    TRACEPOINT_NAME, TcpLayout, TracepointLayout, WAKE_ON_FIRST, WAKEUP_GLOBAL, feature,
};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    btf::Btf,
    capabilities::{self, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN},
    events::{DecodeError, Event, decode},
    tracefs::{self, TracefsError},
};

/// The kernel program, built by `build.rs` with aya-build.
pub(crate) static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/geoip"));

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error(
        "not permitted to load eBPF programs: missing {missing}; run as root, or grant CAP_BPF and CAP_PERFMON (e.g. AmbientCapabilities= in the systemd unit)"
    )]
    Capabilities { missing: String },
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(
        "cannot find the TCP byte counters (tcp_sock.bytes_received, .bytes_acked) in this kernel's BTF, which --metrics.bytes needs (Linux 4.19 or later with /sys/kernel/btf/vmlinux); run without --metrics.bytes"
    )]
    ByteCounters(#[source] crate::btf::BtfError),
    #[error(
        "loading the kernel program failed; it needs Linux 5.8 or later with BTF (/sys/kernel/btf/vmlinux) and BPF ring buffers, and CAP_BPF+CAP_PERFMON"
    )]
    Load(#[source] aya::EbpfError),
    #[error(
        "the embedded kernel object has no {what} named {name}; the binary is broken, rebuild it"
    )]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error(
        "attaching to tracepoint {TRACEPOINT_CATEGORY}/{TRACEPOINT_NAME} failed; is tracefs mounted and the kernel 4.16 or later?"
    )]
    Attach(#[source] aya::programs::ProgramError),
    #[error("opening map {name} failed")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot poll the ring buffer")]
    Poll(#[source] io::Error),
}

/// Fail early, with what is missing, when the process cannot load the
/// program: `CAP_SYS_ADMIN`, or `CAP_BPF` and `CAP_PERFMON`.
pub(crate) fn check_capabilities() -> Result<(), ProbeError> {
    let Ok(sets) = capabilities::current() else {
        // Cannot tell: let the kernel decide and report.
        return Ok(());
    };
    let has = |cap: u32| sets.effective & capabilities::bit(cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing = capabilities::names(
        (capabilities::bit(CAP_BPF) | capabilities::bit(CAP_PERFMON)) & !sets.effective,
    );
    Err(ProbeError::Capabilities {
        missing: missing.join(" and "),
    })
}

/// What has to be right before anything is loaded into the kernel.
pub(crate) struct Prepared {
    layout: TracepointLayout,
    sock_layout: SockLayout,
    tcp_layout: TcpLayout,
    features: u32,
    ring_bytes: u32,
}

/// Entries of the map of connects in progress with [`feature::COMM`]: far
/// more than connects are ever in progress at once on one host.
const CONNECTING_ENTRIES: u32 = 65_536;

/// Check privileges, read this kernel's tracepoint layout and, from its
/// BTF, where a socket's network namespace sits (without it the exporter
/// still runs, but cannot tell namespaces apart) and, for
/// [`feature::BYTES`], where its byte counters sit (without them it
/// cannot count bytes: an error).
pub(crate) fn prepare(ring_bytes: u32, features: u32) -> Result<Prepared, ProbeError> {
    check_capabilities()?;
    let layout = tracefs::read_layout()?;
    let bytes = features & feature::BYTES != 0;
    let (sock_layout, tcp_layout) = match Btf::from_kernel() {
        Ok(btf) => (
            btf.sock_layout(),
            if bytes {
                btf.tcp_layout().map_err(ProbeError::ByteCounters)?
            } else {
                TcpLayout::NONE
            },
        ),
        Err(err) if bytes => return Err(ProbeError::ByteCounters(err)),
        Err(err) => (Err(err), TcpLayout::NONE),
    };
    let sock_layout = sock_layout.unwrap_or_else(|err| {
        tracing::warn!(
            error = %err,
            "cannot find the network namespace of sockets in the kernel's BTF: connections in other namespaces (containers) are tracked by events only and the reconcile is off"
        );
        SockLayout::DISABLED
    });
    Ok(Prepared {
        layout,
        sock_layout,
        tcp_layout,
        features,
        ring_bytes,
    })
}

/// The loaded and attached program; dropping it detaches it.
pub(crate) struct Probe {
    /// Keeps the program and its link alive.
    _ebpf: Ebpf,
    /// The kernel program's log lines (aya-log), if it has any.
    pub(crate) logger: Option<aya_log::EbpfLogger<TracingLog>>,
    /// The ring buffer; [`EventReader::new`] reads it inside the runtime.
    pub(crate) ring: RingBuf<MapData>,
    /// How the program wakes us (see [`EventReader`]).
    pub(crate) control: Array<MapData, u32>,
    /// The kernel's counts of what it could not hand over.
    pub(crate) losses: KernelLosses,
    /// Whether events carry their socket's network namespace.
    pub(crate) namespaces: bool,
}

impl Prepared {
    /// Load the program with the layout, attach it and open its maps.
    pub(crate) fn load_and_attach(self) -> Result<Probe, ProbeError> {
        // The drain timer reads the ring; the kernel wakes us only when a
        // quarter of it fills before the timer fires.
        let wakeup_bytes = u64::from(self.ring_bytes) / 4;
        let connecting = if self.features & feature::COMM == 0 {
            1
        } else {
            CONNECTING_ENTRIES
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(LAYOUT_GLOBAL, &self.layout, true)
            .override_global(WAKEUP_GLOBAL, &wakeup_bytes, true)
            .override_global(SOCK_LAYOUT_GLOBAL, &self.sock_layout, true)
            .override_global(FEATURES_GLOBAL, &self.features, true)
            .override_global(TCP_LAYOUT_GLOBAL, &self.tcp_layout, true)
            .map_max_entries(EVENTS_MAP, self.ring_bytes)
            .map_max_entries(CONNECTING_MAP, connecting)
            .load(PROGRAM_OBJECT)
            .map_err(ProbeError::Load)?;
        let logger = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, TracingLog) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::debug!(error = %err, "kernel program logging not available");
                None
            }
        };
        // The fast build reads the record at the default offsets; any other
        // layout needs the one that reads where tracefs says.
        let name = if self.layout == TracepointLayout::DEFAULT {
            PROGRAM
        } else {
            tracing::info!(layout = ?self.layout, "this kernel's inet_sock_set_state record differs from the usual layout; using the program that reads it through a helper");
            PROGRAM_ANY_LAYOUT
        };
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(ProbeError::Missing {
                what: "program",
                name,
            })?
            .try_into()
            .map_err(ProbeError::Attach)?;
        program.load().map_err(ProbeError::Attach)?;
        program
            .attach(TRACEPOINT_CATEGORY, TRACEPOINT_NAME)
            .map_err(ProbeError::Attach)?;
        let program = {
            use std::os::fd::AsFd as _;
            program
                .fd()
                .map_err(ProbeError::Attach)?
                .as_fd()
                .try_clone_to_owned()
                .map_err(ProbeError::Poll)?
        };
        let ring = take_map(&mut ebpf, EVENTS_MAP, RingBuf::try_from)?;
        let lost = take_map(&mut ebpf, LOST_MAP, PerCpuArray::try_from)?;
        let control = take_map(&mut ebpf, CONTROL_MAP, Array::try_from)?;
        Ok(Probe {
            _ebpf: ebpf,
            logger,
            ring,
            control,
            losses: KernelLosses { lost, program },
            namespaces: self.sock_layout.enabled != 0,
        })
    }
}

fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, ProbeError> {
    let map = ebpf
        .take_map(name)
        .ok_or(ProbeError::Missing { what: "map", name })?;
    convert(map).map_err(|source| ProbeError::Map { name, source })
}

/// What the kernel could not hand over, as it counts it: events the
/// program dropped on a full ring buffer, and runs of the program the
/// kernel skipped. Each read is one system call; `None` when the kernel
/// does not say.
pub(crate) struct KernelLosses {
    lost: PerCpuArray<MapData, u64>,
    /// The program, for the kernel's count of its skipped runs.
    program: std::os::fd::OwnedFd,
}

impl KernelLosses {
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

fn missed_runs(program: &std::os::fd::OwnedFd) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
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
    control: Array<MapData, u32>,
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
        control: Array<MapData, u32>,
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
        match self.control.set(0, mode, 0) {
            Ok(()) => self.asleep = asleep,
            // Then the timer goes on draining: slower to idle, never late.
            Err(err) => tracing::debug!(error = %err, "cannot set the wake-up mode"),
        }
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

/// Forwards the kernel program's aya-log lines to `tracing`.
pub(crate) struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "kernel", "{msg}"),
            log::Level::Info => tracing::info!(target: "kernel", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "kernel", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}
