//! geoip-exporter's kernel program.
//!
//! # Layout
//! One tracepoint program on `sock/inet_sock_set_state` (the tracepoint inside
//! `tcp_set_state()`/`inet_sk_state_store()`, kernel 4.16 and later). For every
//! TCP state change it decides whether the transition matters (entering or
//! leaving ESTABLISHED, see `geoip_common::classify`), and if so reserves and
//! submits one `ConnEvent` in the `EVENTS` ring buffer (kernel 5.8 and
//! later). An event that does not fit is counted in the per-CPU `LOST` array.
//! Nothing is logged on this path.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use geoip_common::{
    AF_INET, AF_INET6, ConnEvent, DEFAULT_RING_BYTES, DEFAULT_WAKEUP_BYTES, IPPROTO_TCP,
    SockLayout, TracepointLayout, classify,
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map(name = "LOST")]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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

#[tracepoint]
fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if let Err(code) = try_inet_sock_set_state(&ctx) {
        // Only reached when the record is not what the layout says (never on
        // a kernel whose tracefs format the daemon checked): worth a line.
        aya_log_ebpf::error!(&ctx, "geoip: reading inet_sock_set_state failed: {}", code);
    }
    0
}

#[inline(always)]
fn layout() -> TracepointLayout {
    // SAFETY: reading a global; volatile so the compiler does not fold the
    // default value that user space overwrites at load time.
    unsafe { core::ptr::read_volatile(&raw const TP_LAYOUT) }
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout();
    // SAFETY (all reads below): `read_at` is `bpf_probe_read_kernel` of the
    // tracepoint record at offsets tracefs gave for this kernel.
    let protocol: u16 = unsafe { ctx.read_at(usize::from(l.protocol))? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let oldstate: i32 = unsafe { ctx.read_at(usize::from(l.oldstate))? };
    let newstate: i32 = unsafe { ctx.read_at(usize::from(l.newstate))? };
    let Some((kind, direction)) = classify(oldstate, newstate) else {
        return Ok(());
    };
    let family: u16 = unsafe { ctx.read_at(usize::from(l.family))? };
    let (saddr, daddr) = match family {
        AF_INET => {
            let s: [u8; 4] = unsafe { ctx.read_at(usize::from(l.saddr))? };
            let d: [u8; 4] = unsafe { ctx.read_at(usize::from(l.daddr))? };
            (v4_in_16(s), v4_in_16(d))
        }
        AF_INET6 => unsafe {
            (
                ctx.read_at::<[u8; 16]>(usize::from(l.saddr_v6))?,
                ctx.read_at::<[u8; 16]>(usize::from(l.daddr_v6))?,
            )
        },
        _ => return Ok(()),
    };
    let sock: u64 = unsafe { ctx.read_at(usize::from(l.skaddr))? };
    let event = ConnEvent {
        // SAFETY: a helper with no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        sock,
        saddr,
        daddr,
        sport: unsafe { ctx.read_at(usize::from(l.sport))? },
        dport: unsafe { ctx.read_at(usize::from(l.dport))? },
        family,
        kind,
        direction,
        // TCP states are 1..=12.
        oldstate: u8::try_from(oldstate).unwrap_or(u8::MAX),
        newstate: u8::try_from(newstate).unwrap_or(u8::MAX),
        _pad: [0; 2],
        netns: netns_of(sock)?,
    };
    if let Some(mut slot) = EVENTS.reserve::<ConnEvent>(0) {
        slot.write(event);
        // SAFETY: reading a global that user space sets before loading.
        let wakeup_bytes = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
        let flags = if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= wakeup_bytes {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        slot.submit(flags.into());
    } else if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: the slot belongs to this CPU and the program cannot be
        // preempted by itself on it.
        unsafe { *lost += 1 };
    }
    Ok(())
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
    // SAFETY (both reads): `bpf_probe_read_kernel` of kernel memory; a bad
    // address is an error, not a fault.
    let net: u64 = unsafe {
        bpf_probe_read_kernel((sock + u64::from(sl.net)) as *const u64).map_err(|_| -14)?
    };
    unsafe { bpf_probe_read_kernel((net + u64::from(sl.inum)) as *const u32).map_err(|_| -14) }
}

#[inline(always)]
const fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
