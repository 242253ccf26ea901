//! geoip-exporter's kernel program.
//!
//! # Layout
//! A tracepoint program on `sock/inet_sock_set_state` (the tracepoint inside
//! `tcp_set_state()`/`inet_sk_state_store()`, kernel 4.16 and later). For every
//! TCP state change it decides whether the transition matters (entering or
//! leaving ESTABLISHED, see `geoip_common::classify`), and if so reserves and
//! submits one `ConnEvent` in the `EVENTS` ring buffer (kernel 5.8 and
//! later). An event that does not fit is counted in this CPU's slot of the
//! `LOST` array.
//! Nothing is logged on this path.
//!
//! With opt-in features (the `FEATURES` global, see
//! `geoip_common::feature`; the verifier drops the code of those that are
//! off) every record is a `ConnEventExt`: the time of the event, the
//! socket's byte counters at a close and when it finally reaches CLOSE
//! (`KIND_FINAL`), and the process that made an outbound connection
//! (its comm is kept in the `CONNECTING` LRU map from `connect()`, in the
//! process's context, until the handshake completes, in softirq).
//!
//! It comes in two builds of the same code: `inet_sock_set_state` reads the
//! record with plain loads at the offsets every kernel since 4.16 has, and
//! `inet_sock_set_state_any_layout` through `bpf_probe_read_kernel` at the
//! offsets tracefs gives; the daemon attaches one. A third, empty program is
//! only for measuring the floor (`cargo xtask bench`).
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "one program for the verifier and the benchmarks: every helper inlined into it"
)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_probe_read_kernel, generated},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use geoip_common::{
    AF_INET, AF_INET6, ConnEvent, ConnEventExt, DEFAULT_RING_BYTES, DEFAULT_WAKEUP_BYTES,
    DIRECTION_OUTBOUND, DIRECTION_UNKNOWN, FLAG_FIN_ACKED, FLAG_FIN_RECEIVED, FLAG_FINAL,
    IPPROTO_TCP, KIND_FINAL, KIND_OPEN, MAP_MMAPABLE, RING_RECORD_BYTES, RING_RECORD_EXT_BYTES,
    SockLayout, TCP_SPAN_MAX, TcpLayout, TracepointLayout, WAKE_ON_FIRST, address_bytes,
    address_words, always_excluded_v4, always_excluded_v6, classify, feature, is_final, tcp_state,
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// One slot per CPU (user space sets how many), memory-mapped.
#[map(name = "LOST")]
static LOST: Array<u64> = Array::with_max_entries(1, MAP_MMAPABLE);

#[map(name = "CONTROL")]
static CONTROL: Array<u32> = Array::with_max_entries(1, MAP_MMAPABLE);

/// Outbound connects: socket address -> the comm of the process that
/// called `connect()` ([`feature::COMM`]; user space sizes it, to one
/// entry when the feature is off). Entries are not deleted: the least
/// recently used make room.
#[map(name = "CONNECTING")]
static CONNECTING: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(1, 0);

/// Where the span of `struct tcp_sock` with the byte counters is read to
/// ([`feature::BYTES`]).
#[map(name = "TCP_SCRATCH")]
static TCP_SCRATCH: PerCpuArray<[u8; TCP_SPAN_MAX as usize]> = PerCpuArray::with_max_entries(1, 0);

/// `geoip_common::feature` bits; user space sets them before loading.
#[unsafe(no_mangle)]
static FEATURES: u32 = 0;

/// Where the byte counters sit in this kernel's `struct tcp_sock` (from its
/// BTF); user space sets it with [`feature::BYTES`].
#[unsafe(no_mangle)]
static TCP_LAYOUT: TcpLayout = TcpLayout::NONE;

/// Field offsets of the tracepoint record; user space overwrites this with
/// what tracefs says before loading.
#[unsafe(no_mangle)]
static TP_LAYOUT: TracepointLayout = TracepointLayout::DEFAULT;

/// Where the socket's network namespace inode sits in this kernel's
/// `struct sock` and `struct net` (from its BTF); user space sets it.
#[unsafe(no_mangle)]
static SOCK_LAYOUT: SockLayout = SockLayout::DISABLED;

/// Wake user space only when this many bytes wait (it also drains the
/// ring on a short timer): one wake-up per batch, not per event.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = DEFAULT_WAKEUP_BYTES;

/// The program for the record layout of every kernel since 4.16: the
/// fields are read straight from the record at constant offsets (the
/// verifier allows tracepoint context loads only at constant offsets).
#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[tracepoint] hands the context over by value"
)]
fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    handle(&ctx, &Direct)
}

/// The same for any other layout, at the offsets user space found in
/// tracefs, through `bpf_probe_read_kernel`.
#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[tracepoint] hands the context over by value"
)]
fn inet_sock_set_state_any_layout(ctx: TracePointContext) -> u32 {
    handle(&ctx, &Probed(layout()))
}

/// Does nothing: the kernel's own cost of running a program on this
/// tracepoint, measured by `cargo xtask bench` (never attached otherwise).
#[tracepoint]
fn inet_sock_set_state_empty(_ctx: TracePointContext) -> u32 {
    0
}

#[inline(always)]
fn handle(ctx: &TracePointContext, fields: &impl Fields) -> u32 {
    if let Err(code) = try_handle(ctx, fields) {
        // Only reached when the record is not what the layout says (never on
        // a kernel whose tracefs format the daemon checked): worth a line.
        aya_log_ebpf::error!(ctx, "geoip: reading inet_sock_set_state failed: {}", code);
    }
    0
}

#[inline(always)]
fn layout() -> TracepointLayout {
    // SAFETY: reading a global; volatile so the compiler does not fold the
    // default value that user space overwrites at load time.
    unsafe { core::ptr::read_volatile(&raw const TP_LAYOUT) }
}

/// Reads the fields of the tracepoint record.
trait Fields {
    /// The value of `T` at the byte offset `pick` selects from the layout.
    ///
    /// # Safety
    /// The layout must be the record's, with `T` the field's type.
    unsafe fn read<T: Copy>(
        &self,
        ctx: &TracePointContext,
        pick: impl Fn(&TracepointLayout) -> u16,
    ) -> Result<T, i32>;
}

/// Direct loads at [`TracepointLayout::DEFAULT`]'s offsets, each a
/// constant the compiler folds into the load instruction.
struct Direct;

impl Fields for Direct {
    #[inline(always)]
    unsafe fn read<T: Copy>(
        &self,
        ctx: &TracePointContext,
        pick: impl Fn(&TracepointLayout) -> u16,
    ) -> Result<T, i32> {
        let offset = usize::from(pick(&TracepointLayout::DEFAULT));
        // SAFETY: the record has a `T` at this (naturally aligned) offset:
        // user space attaches this program only when tracefs gives
        // exactly the default layout.
        Ok(unsafe { ctx.as_ptr().cast::<u8>().add(offset).cast::<T>().read() })
    }
}

/// `bpf_probe_read_kernel` at offsets only known at load time.
struct Probed(TracepointLayout);

impl Fields for Probed {
    #[inline(always)]
    unsafe fn read<T: Copy>(
        &self,
        ctx: &TracePointContext,
        pick: impl Fn(&TracepointLayout) -> u16,
    ) -> Result<T, i32> {
        // SAFETY: a helper read of the record; a bad offset is an error.
        unsafe { ctx.read_at(usize::from(pick(&self.0))) }
    }
}

/// Read the record, decide whether the transition matters, and submit its
/// event (or, for a `connect()`, remember who made it).
#[inline(always)]
fn try_handle(ctx: &TracePointContext, f: &impl Fields) -> Result<(), i32> {
    // SAFETY: `protocol` is a u16 of the record. Here and below, each
    // field is read with the type the tracepoint's format gives it (the
    // daemon checks the format before loading).
    let protocol: u16 = unsafe { f.read(ctx, |l| l.protocol)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: `oldstate` is a i32 of the record.
    let oldstate: i32 = unsafe { f.read(ctx, |l| l.oldstate)? };
    // SAFETY: `newstate` is a i32 of the record.
    let newstate: i32 = unsafe { f.read(ctx, |l| l.newstate)? };
    let features = features();
    let Some((kind, direction)) = decide(oldstate, newstate, features) else {
        return Ok(());
    };
    // SAFETY: `family` is a u16 of the record.
    let family: u16 = unsafe { f.read(ctx, |l| l.family)? };
    let (saddr, daddr) = match family {
        // An IPv4 address read as a native word keeps its bytes in memory
        // order, the first four of the event's field.
        // SAFETY: `saddr` and `daddr` are 4 bytes of the record.
        AF_INET => unsafe {
            (
                [u64::from(f.read::<u32>(ctx, |l| l.saddr)?), 0],
                [u64::from(f.read::<u32>(ctx, |l| l.daddr)?), 0],
            )
        },
        // SAFETY: `saddr_v6` and `daddr_v6` are 16 bytes of the record.
        AF_INET6 => unsafe {
            (
                f.read::<[u64; 2]>(ctx, |l| l.saddr_v6)?,
                f.read::<[u64; 2]>(ctx, |l| l.daddr_v6)?,
            )
        },
        _ => return Ok(()),
    };
    // Never counted (private, loopback, ...): not worth a record.
    let remote = address_bytes(daddr);
    let excluded = if family == AF_INET {
        always_excluded_v4([remote[0], remote[1], remote[2], remote[3]])
    } else {
        always_excluded_v6(remote)
    };
    if excluded {
        return Ok(());
    }
    // SAFETY: `skaddr` is a u64 of the record.
    let sock: u64 = unsafe { f.read(ctx, |l| l.skaddr)? };
    if kind == KIND_OPEN && direction == DIRECTION_UNKNOWN {
        // connect() (only with feature::COMM): no record yet.
        if let Ok(comm) = bpf_get_current_comm() {
            let _ = CONNECTING.insert(sock, address_words(comm), 0);
        }
        return Ok(());
    }
    let event = ConnEvent {
        saddr,
        daddr,
        netns: netns_of(sock)?,
        // SAFETY: `sport` is a u16 of the record.
        sport: unsafe { f.read(ctx, |l| l.sport)? },
        // SAFETY: `dport` is a u16 of the record.
        dport: unsafe { f.read(ctx, |l| l.dport)? },
        family,
        kind,
        direction,
        flags: if newstate == tcp_state::CLOSE {
            FLAG_FINAL
        } else {
            0
        },
        _pad: 0,
        _pad2: 0,
    };
    submit(event, sock, (oldstate, newstate), features);
    Ok(())
}

/// Whether the transition `oldstate -> newstate` matters, and as what:
/// an open or close (`classify`), with [`feature::BYTES`] a socket's final
/// CLOSE, with [`feature::COMM`] a `connect()` (an open of no direction).
#[inline(always)]
fn decide(oldstate: i32, newstate: i32, features: u32) -> Option<(u8, u8)> {
    match classify(oldstate, newstate) {
        Some(what) => Some(what),
        None if features & feature::BYTES != 0 && is_final(oldstate, newstate) => {
            Some((KIND_FINAL, DIRECTION_UNKNOWN))
        }
        None if features & feature::COMM != 0 && newstate == tcp_state::SYN_SENT => {
            // connect(), in the calling process: remember who it is.
            Some((KIND_OPEN, DIRECTION_UNKNOWN))
        }
        None => None,
    }
}

/// Reserve and submit `event` (extended with what `features` add), or
/// count it lost when the ring buffer is full.
#[inline(always)]
fn submit(event: ConnEvent, sock: u64, states: (i32, i32), features: u32) {
    if features == 0 {
        if let Some(mut slot) = EVENTS.reserve::<ConnEvent>(0) {
            slot.write(event);
            slot.submit(wakeup_flag(RING_RECORD_BYTES));
            return;
        }
    } else if let Some(mut slot) = EVENTS.reserve::<ConnEventExt>(0) {
        slot.write(extended(event, sock, states, features));
        slot.submit(wakeup_flag(RING_RECORD_EXT_BYTES));
        return;
    }
    // SAFETY: a helper without arguments.
    let cpu = unsafe { generated::bpf_get_smp_processor_id() };
    if let Some(lost) = LOST.get_ptr_mut(cpu) {
        // SAFETY: the slot is this CPU's, and the kernel never runs the
        // program on a CPU where it is already running: no other writer.
        // User space only reads it (a u64 store is not torn).
        unsafe { core::ptr::write_volatile(lost, core::ptr::read_volatile(lost) + 1) };
    }
}

#[inline(always)]
fn features() -> u32 {
    // SAFETY: reading a global that user space sets before loading.
    unsafe { core::ptr::read_volatile(&raw const FEATURES) }
}

/// `event` with what the enabled `features` add.
#[inline(always)]
fn extended(mut event: ConnEvent, sock: u64, states: (i32, i32), features: u32) -> ConnEventExt {
    let mut ext = ConnEventExt {
        base: event,
        time_ns: 0,
        bytes_received: 0,
        bytes_acked: 0,
        comm: [0; 2],
    };
    if features & feature::TIME != 0 {
        // SAFETY: a helper without arguments.
        ext.time_ns = unsafe { generated::bpf_ktime_get_ns() };
    }
    if features & feature::BYTES != 0
        && event.kind != KIND_OPEN
        && let Some((received, acked, flags)) = byte_counters(sock, states)
    {
        ext.bytes_received = received;
        ext.bytes_acked = acked;
        event.flags |= flags;
        ext.base = event;
    }
    if features & feature::COMM != 0
        && event.kind == KIND_OPEN
        && event.direction == DIRECTION_OUTBOUND
    {
        // The entry is left for the LRU to evict (a delete is another
        // locked map operation per connection): the next connect() from
        // this socket address overwrites it before its handshake ends.
        // SAFETY: a copy of the value is taken at once.
        if let Some(comm) = unsafe { CONNECTING.get(sock) } {
            ext.comm = *comm;
        }
    }
    ext
}

/// `tcp_sock.bytes_received` and `.bytes_acked`, with `FLAG_FIN_*` for
/// the FINs counted in them, read at the offsets user space found in BTF.
/// Which FINs are in them follows from the transition (`states`, old and
/// new): the peer's FIN was received when the connection moves to
/// `CLOSE_WAIT`, or reaches CLOSE from a state that follows it (`FIN_WAIT2`
/// through `TIME_WAIT`, CLOSING, `CLOSE_WAIT`, `LAST_ACK`); ours was sent in
/// the states after `FIN_WAIT1`, and acknowledged if nothing sent is
/// unacknowledged (`snd_una == write_seq`). (`sk_shutdown` would not
/// tell: `close()` sets it before any FIN is sent or received.)
#[inline(always)]
fn byte_counters(sock: u64, (oldstate, newstate): (i32, i32)) -> Option<(u64, u64, u8)> {
    use tcp_state::{CLOSE, CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK};
    // SAFETY: reading a global that user space sets before loading.
    let l = unsafe { core::ptr::read_volatile(&raw const TCP_LAYOUT) };
    if l.span == 0 || l.span > TCP_SPAN_MAX {
        return None;
    }
    let scratch = TCP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: `bpf_probe_read_kernel` of kernel memory into this CPU's
    // buffer of TCP_SPAN_MAX bytes; a bad address is an error, not a fault.
    let read = unsafe {
        generated::bpf_probe_read_kernel(
            scratch.cast(),
            l.span,
            (sock + u64::from(l.span_start)) as *const core::ffi::c_void,
        )
    };
    if read != 0 {
        return None;
    }
    let at = |offset: u16, size: u32| -> Option<*const u8> {
        (u32::from(offset) + size <= TCP_SPAN_MAX)
            // SAFETY: `scratch` is this CPU's buffer of TCP_SPAN_MAX bytes;
            // the offset leaves room for the field.
            .then(|| unsafe { scratch.cast::<u8>().cast_const().add(usize::from(offset)) })
    };
    // SAFETY: `at` gave a pointer with 4 bytes of the buffer behind it.
    let read_u32 = |offset| at(offset, 4).map(|p| unsafe { p.cast::<u32>().read_unaligned() });
    // SAFETY: `at` gave a pointer with 8 bytes of the buffer behind it.
    let read_u64 = |offset| at(offset, 8).map(|p| unsafe { p.cast::<u64>().read_unaligned() });
    let write_seq = read_u32(l.write_seq)?;
    let snd_una = read_u32(l.snd_una)?;
    let received = read_u64(l.bytes_received)?;
    let acked = read_u64(l.bytes_acked)?;
    let mut flags = 0;
    let fin_received = (oldstate == ESTABLISHED && newstate == CLOSE_WAIT)
        || (newstate == CLOSE && matches!(oldstate, FIN_WAIT2 | CLOSING | CLOSE_WAIT | LAST_ACK));
    if fin_received {
        flags |= FLAG_FIN_RECEIVED;
    }
    let fin_sent =
        newstate == CLOSE && matches!(oldstate, FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK);
    if fin_sent && snd_una == write_seq {
        flags |= FLAG_FIN_ACKED;
    }
    Some((received, acked, flags))
}

/// Wake user space when the record just reserved (of `record` bytes)
/// took the waiting bytes
/// across a multiple of `WAKEUP_BYTES` (it drains the ring on a timer, but
/// the ring must not fill first), or, while it sleeps until woken (no
/// events for a while), when this is the first record of an empty ring (the
/// kernel's own rule for flags 0). Otherwise not: a wake-up is an interrupt.
#[inline(always)]
fn wakeup_flag(record: u64) -> u64 {
    // SAFETY: reading a global that user space sets before loading.
    let every = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) }.max(record);
    // Includes the record just reserved.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let crossed = waiting >= every && waiting / every != waiting.saturating_sub(record) / every;
    if crossed {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else if CONTROL.get(0).is_some_and(|mode| *mode == WAKE_ON_FIRST) {
        0
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// `sk->__sk_common.skc_net.net->ns.inum`, at the offsets user space read
/// from the running kernel's BTF.
#[inline(always)]
fn netns_of(sock: u64) -> Result<u32, i32> {
    // SAFETY: reading a global that user space sets before loading.
    let sl = unsafe { core::ptr::read_volatile(&raw const SOCK_LAYOUT) };
    if sl.enabled == 0 {
        return Ok(0);
    }
    // SAFETY: `bpf_probe_read_kernel` of kernel memory; a bad address is
    // an error, not a fault.
    let net: u64 = unsafe {
        bpf_probe_read_kernel((sock + u64::from(sl.net)) as *const u64).map_err(|_| -14)?
    };
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((net + u64::from(sl.inum)) as *const u32).map_err(|_| -14) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
