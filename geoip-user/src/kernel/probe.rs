//! Loading and attaching the kernel program: check privileges, read this
//! kernel's tracepoint layout (tracefs) and struct offsets (BTF), load the
//! embedded eBPF object with them, attach it to
//! `sock/inet_sock_set_state`, and take its maps.
//!
//! Preparing (reading tracefs and BTF, checking capabilities) is kept apart
//! from loading so that every check that needs no kernel change runs
//! first.

use std::io;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::TracePoint,
};
use geoip_common::{
    CONNECTING_MAP, CONTROL_MAP, EVENTS_MAP, FEATURES_GLOBAL, LAYOUT_GLOBAL, LOST_MAP, PROGRAM,
    PROGRAM_ANY_LAYOUT, SOCK_LAYOUT_GLOBAL, SockLayout, TCP_LAYOUT_GLOBAL, TRACEPOINT_CATEGORY,
    TRACEPOINT_NAME, TcpLayout, TracepointLayout, WAKEUP_GLOBAL, feature,
};

use super::{
    btf::{Btf, BtfError},
    log::TracingLog,
    losses::KernelLosses,
    map_create::{self, RingBufferRefused},
    memlock,
    shared_array::{self, SharedArray},
    tracefs::{self, TracefsError},
    version,
};
use crate::capabilities::{self, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN};

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
    ByteCounters(#[source] BtfError),
    #[error(
        "loading the kernel program failed; it needs Linux 5.8 or later with BTF (/sys/kernel/btf/vmlinux) and BPF ring buffers, and CAP_BPF+CAP_PERFMON"
    )]
    Load(#[source] aya::EbpfError),
    /// The load failed and the kernel refuses the ring buffer itself: the
    /// one thing missing, said as `check` says it.
    #[error("cannot load the kernel program: {0}")]
    RingBuffer(#[source] RingBufferRefused),
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

/// Why loading failed: when this kernel refuses the ring buffer on its
/// own (one older than 5.8, a locked-memory limit too low), that, naming
/// what is missing; else the loader's error.
fn load_error(err: aya::EbpfError, ring: Result<(), RingBufferRefused>) -> ProbeError {
    match ring {
        Err(refused) => ProbeError::RingBuffer(refused),
        Ok(()) => ProbeError::Load(err),
    }
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
    raise_memlock(ring_bytes, features);
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

/// What the program's maps take at most, in bytes, as the locked-memory
/// limit counts them before Linux 5.11: the ring buffer, the map of
/// connects in progress (with [`feature::COMM`]), and room for the small
/// ones.
pub(crate) fn map_bytes(ring_bytes: u32, features: u32) -> u64 {
    let connecting = if features & feature::COMM == 0 {
        0
    } else {
        // Key, value and the hash table's own bookkeeping per entry.
        u64::from(CONNECTING_ENTRIES) * 96
    };
    u64::from(ring_bytes) + connecting + (256 << 10)
}

/// Before Linux 5.11, raise the locked-memory limit the maps count
/// against, and say what was done.
fn raise_memlock(ring_bytes: u32, features: u32) {
    match memlock::raise_if_needed(version::running(), map_bytes(ring_bytes, features)) {
        Ok(raised @ memlock::Raised::To { .. }) => tracing::info!(
            "locked-memory limit (which Linux before 5.11 counts BPF maps against) {raised}"
        ),
        Ok(raised @ memlock::Raised::Short { .. }) => tracing::warn!(
            "locked-memory limit (which Linux before 5.11 counts BPF maps against): {raised}; creating the maps may fail: raise it (ulimit -l, LimitMEMLOCK=)"
        ),
        Ok(_) => {}
        Err(err) => tracing::debug!(error = %err, "cannot read the locked-memory limit"),
    }
}

/// The loaded and attached program: the program itself ([`Attached`]:
/// dropping it detaches it) and its maps, each taken by its reader.
pub(crate) struct Probe {
    pub(crate) attached: Attached,
    /// The kernel program's log lines (aya-log), if it has any.
    pub(crate) logger: Option<aya_log::EbpfLogger<TracingLog>>,
    /// The ring buffer; [`super::ring::EventReader::new`] reads it inside the runtime.
    pub(crate) ring: RingBuf<MapData>,
    /// How the program wakes us (see [`super::ring::EventReader`]).
    pub(crate) control: SharedArray<u32>,
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
            .map_max_entries(LOST_MAP, shared_array::cpu_slots())
            .load(PROGRAM_OBJECT)
            .map_err(|err| load_error(err, map_create::ring_buffer(self.ring_bytes)))?;
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
        let lost = take_map(&mut ebpf, LOST_MAP, |m| shared(m, false))?;
        let control = take_map(&mut ebpf, CONTROL_MAP, |m| shared(m, true))?;
        Ok(Probe {
            attached: Attached(ebpf),
            logger,
            ring,
            control,
            losses: KernelLosses::new(lost, program),
            namespaces: self.sock_layout.enabled != 0,
        })
    }
}

/// The program and its link to the tracepoint: the program stays attached
/// as long as this lives.
pub(crate) struct Attached(#[expect(dead_code, reason = "held for its Drop: the detach")] Ebpf);

/// `map` mapped into memory.
fn shared<T: shared_array::Slot>(
    map: aya::maps::Map,
    writable: bool,
) -> Result<SharedArray<T>, aya::maps::MapError> {
    SharedArray::new(map, writable).map_err(|io_error| {
        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "mmap",
            io_error,
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An older kernel's answers: its refusal of the ring buffer is the
    /// one line start-up says, as `check` says it; a kernel that makes
    /// the ring buffer gets the loader's own error.
    #[test]
    fn a_failed_load_names_what_the_kernel_lacks() {
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        let older = map_create::refused(4 << 20, einval, Some((4, 19)));
        assert_eq!(
            load_error(aya::EbpfError::NoBTF, Err(older)).to_string(),
            "cannot load the kernel program: this kernel refused a BPF ring buffer of 4194304 bytes (Invalid argument (os error 22)): ring buffers need Linux 5.8 or later"
        );
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let limited = map_create::refused(4 << 20, eperm, Some((5, 10)));
        assert!(
            load_error(aya::EbpfError::NoBTF, Err(limited))
                .to_string()
                .contains("locked-memory limit")
        );
        assert!(
            load_error(aya::EbpfError::NoBTF, Ok(()))
                .to_string()
                .starts_with("loading the kernel program failed")
        );
    }
}
