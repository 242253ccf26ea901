//! Types shared by the kernel program (`geoip-ebpf`) and the daemon
//! (`geoip-user`).
//!
//! # Layout
//! - [`ConnEvent`]: the one record the kernel program puts in the ring buffer.
//! - [`TracepointLayout`]: where the fields of `sock/inet_sock_set_state`
//!   sit in the tracepoint record; the daemon reads it from tracefs and
//!   writes it into the program's global before loading it.
//! - constants: TCP states, event kinds, directions, map and program names.
//!
//! Every shared struct is `#[repr(C)]`, has no `bool`, no implicit padding
//! (explicit `_pad` fields) and a compile-time size check. `bytemuck::Pod`
//! and `aya::Pod` are only derived behind the `user` feature.
#![no_std]

/// Name of the ring buffer map carrying [`ConnEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the array (one `u64` slot per CPU, indexed by CPU number, as
/// many as user space sizes it to) counting events the program could not
/// submit because the ring buffer was full. Memory-mapped
/// ([`MAP_MMAPABLE`]): user space reads it without a system call, so with
/// its capabilities dropped even where the kernel refuses every `bpf(2)`
/// to a process without them (before 5.19, with
/// `kernel.unprivileged_bpf_disabled` set, as distributions do).
pub const LOST_MAP: &str = "LOST";
/// Name of the one-slot array (`u32`, memory-mapped like [`LOST_MAP`])
/// through which the daemon tells the program how to wake it:
/// [`WAKE_ON_FIRST`] while it sleeps until woken (no events for a while),
/// 0 while it drains the ring on its timer.
pub const CONTROL_MAP: &str = "CONTROL";
/// `BPF_F_MMAPABLE`: an array user space maps into its memory (Linux 5.5).
pub const MAP_MMAPABLE: u32 = 1 << 10;
/// [`CONTROL_MAP`] value: wake user space on the first record of an empty
/// ring.
pub const WAKE_ON_FIRST: u32 = 1;
/// Name of the global holding the [`TracepointLayout`].
pub const LAYOUT_GLOBAL: &str = "TP_LAYOUT";
/// Name of the global (`u64`): wake user space up when the bytes waiting in
/// the ring buffer pass a multiple of this; user space also drains it on a
/// timer.
pub const WAKEUP_GLOBAL: &str = "WAKEUP_BYTES";
/// Default of [`WAKEUP_GLOBAL`]: a quarter of the default ring buffer. The
/// daemon drains the ring on a short timer anyway; a wake-up from the
/// kernel (an interrupt raised from inside the program, the costliest thing
/// it does) is only needed when events arrive faster than the timer
/// drains them.
pub const DEFAULT_WAKEUP_BYTES: u64 = DEFAULT_RING_BYTES as u64 / 4;
/// Name of the global holding the [`SockLayout`].
pub const SOCK_LAYOUT_GLOBAL: &str = "SOCK_LAYOUT";
/// Name of the tracepoint program for the record layout every kernel since
/// 4.16 has ([`TracepointLayout::DEFAULT`]): it reads the record directly.
pub const PROGRAM: &str = "inet_sock_set_state";
/// Name of the same program for any other layout: it reads the record at
/// the offsets in the [`LAYOUT_GLOBAL`], through a helper (slower).
pub const PROGRAM_ANY_LAYOUT: &str = "inet_sock_set_state_any_layout";
/// Name of an empty program on the same tracepoint, never attached by the
/// daemon: `cargo xtask bench` measures the kernel's floor cost with it.
pub const PROGRAM_EMPTY: &str = "inet_sock_set_state_empty";
/// Tracepoint category and name the program attaches to.
pub const TRACEPOINT_CATEGORY: &str = "sock";
pub const TRACEPOINT_NAME: &str = "inet_sock_set_state";

/// Default size of the ring buffer in bytes (a power of two, multiple of
/// the page size): 4 MiB, room for 74,898 events.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
}

/// [`ConnEvent::kind`]: the connection entered ESTABLISHED.
pub const KIND_OPEN: u8 = 1;
/// [`ConnEvent::kind`]: the connection left ESTABLISHED.
pub const KIND_CLOSE: u8 = 2;
/// [`ConnEvent::kind`]: a connection that had left ESTABLISHED reached
/// CLOSE (the socket is gone); only with [`feature::BYTES`], to account
/// the bytes of its closing handshake.
pub const KIND_FINAL: u8 = 3;

/// [`ConnEvent::flags`]: the socket reached CLOSE: its byte counts are its
/// last.
pub const FLAG_FINAL: u8 = 1;
/// [`ConnEvent::flags`]: the peer's FIN was received (it takes one number
/// of `bytes_received`).
pub const FLAG_FIN_RECEIVED: u8 = 2;
/// [`ConnEvent::flags`]: our FIN was acknowledged (it takes one number of
/// `bytes_acked`).
pub const FLAG_FIN_ACKED: u8 = 4;

/// What the kernel program reports beyond opens and closes, each opt-in
/// (the daemon sets [`FEATURES_GLOBAL`] before loading; the verifier
/// drops the code of the features that are off). With any on, every
/// record is a [`ConnEventExt`].
pub mod feature {
    /// The process name (comm) of an outbound connection, captured at
    /// `connect()`.
    pub const COMM: u32 = 1;
    /// The monotonic time of every event.
    pub const TIME: u32 = 2;
    /// The socket's byte counters at a close, and a [`super::KIND_FINAL`]
    /// record when it reaches CLOSE.
    pub const BYTES: u32 = 4;
}

/// Name of the global (`u32`) holding the [`feature`] bits.
pub const FEATURES_GLOBAL: &str = "FEATURES";
/// Name of the global holding the [`TcpLayout`].
pub const TCP_LAYOUT_GLOBAL: &str = "TCP_LAYOUT";
/// Name of the LRU hash map (socket address -> comm) of connects in
/// progress, for [`feature::COMM`].
pub const CONNECTING_MAP: &str = "CONNECTING";

/// Where the byte counters sit in this kernel's `struct tcp_sock` (found
/// in its BTF at load time): the program reads the `span` bytes from
/// `span_start` at once, and the four fields at their offsets in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TcpLayout {
    pub span_start: u32,
    pub span: u32,
    pub reserved2: u32,
    pub write_seq: u16,
    pub snd_una: u16,
    pub bytes_received: u16,
    pub bytes_acked: u16,
    pub reserved: u32,
}

const _: () = assert!(size_of::<TcpLayout>() == 24);

/// The most bytes of `struct tcp_sock` read at once for [`TcpLayout`].
pub const TCP_SPAN_MAX: u32 = 512;

impl TcpLayout {
    /// Byte counters not read.
    pub const NONE: Self = Self {
        span_start: 0,
        span: 0,
        reserved2: 0,
        write_seq: 0,
        snd_una: 0,
        bytes_received: 0,
        bytes_acked: 0,
        reserved: 0,
    };
}

#[cfg(feature = "user")]
// SAFETY: `TcpLayout` is `#[repr(C)]`, `Copy`, has no padding and every
// bit pattern is valid.
unsafe impl aya::Pod for TcpLayout {}

/// [`ConnEvent::direction`]: not known (a close event).
pub const DIRECTION_UNKNOWN: u8 = 0;
/// [`ConnEvent::direction`]: the remote end connected to us (`SYN_RECV` -> `ESTABLISHED`).
pub const DIRECTION_INBOUND: u8 = 1;
/// [`ConnEvent::direction`]: we connected to the remote end (`SYN_SENT` -> `ESTABLISHED`).
pub const DIRECTION_OUTBOUND: u8 = 2;

/// What a TCP state transition means to the exporter, or `None` when it does
/// not matter. Shared by the kernel program (which submits only these) and
/// the daemon's tests.
#[must_use]
#[inline]
pub const fn classify(oldstate: i32, newstate: i32) -> Option<(u8, u8)> {
    if newstate == tcp_state::ESTABLISHED {
        match oldstate {
            tcp_state::SYN_SENT => Some((KIND_OPEN, DIRECTION_OUTBOUND)),
            tcp_state::SYN_RECV => Some((KIND_OPEN, DIRECTION_INBOUND)),
            _ => None,
        }
    } else if oldstate == tcp_state::ESTABLISHED {
        Some((KIND_CLOSE, DIRECTION_UNKNOWN))
    } else {
        None
    }
}

/// Whether a transition is a connection that had left ESTABLISHED
/// reaching CLOSE: the end of its closing handshake ([`KIND_FINAL`]).
#[must_use]
#[inline]
pub const fn is_final(oldstate: i32, newstate: i32) -> bool {
    newstate == tcp_state::CLOSE
        && matches!(
            oldstate,
            tcp_state::FIN_WAIT1
                | tcp_state::FIN_WAIT2
                | tcp_state::CLOSING
                | tcp_state::CLOSE_WAIT
                | tcp_state::LAST_ACK
        )
}

/// Whether connections with this remote IPv4 address are never counted:
/// the ranges the daemon always excludes (its `filter::BUILTIN` list, and
/// a test checks the two agree). The kernel program drops their events
/// before they cost a ring-buffer record; a load balancer's connections to
/// private back ends are half its connections.
#[must_use]
#[inline]
pub const fn always_excluded_v4(a: [u8; 4]) -> bool {
    matches!(
        a,
        [0 | 10 | 127 | 224..=239, ..] | [169, 254, ..] | [192, 168, ..] | [255, 255, 255, 255]
    ) || (a[0] == 100 && a[1] & 0xc0 == 64)
        || (a[0] == 172 && a[1] & 0xf0 == 16)
}

/// [`always_excluded_v4`] for an IPv6 address (an IPv4-mapped one is
/// judged as IPv4).
#[must_use]
#[inline]
pub const fn always_excluded_v6(a: [u8; 16]) -> bool {
    let [
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
        b8,
        b9,
        b10,
        b11,
        b12,
        b13,
        b14,
        b15,
    ] = a;
    let zero_to_9 = b0 | b1 | b2 | b3 | b4 | b5 | b6 | b7 | b8 | b9 == 0;
    if zero_to_9 && b10 == 0xff && b11 == 0xff {
        return always_excluded_v4([b12, b13, b14, b15]);
    }
    // `::` and `::1`.
    (zero_to_9 && b10 | b11 | b12 | b13 | b14 == 0 && b15 <= 1)
        || b0 & 0xfe == 0xfc
        || (b0 == 0xfe && b1 & 0xc0 == 0x80)
        || b0 == 0xff
}

/// One TCP connection entering or leaving ESTABLISHED.
///
/// Addresses are their 16 bytes in network byte order, held as two words
/// (so the kernel copies each with two loads and stores: read them with
/// [`address_bytes`]); an IPv4 address uses the first four bytes and leaves
/// the rest zero. Ports are in host byte order. Only what the daemon uses is
/// carried: every byte costs ring-buffer space
/// and every field a read in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, always zero"
)]
pub struct ConnEvent {
    /// Local address.
    pub saddr: [u64; 2],
    /// Remote address.
    pub daddr: [u64; 2],
    /// Inode number of the socket's network namespace (`ls -Li
    /// /proc/PID/ns/net`), 0 when the kernel's layout is not known.
    pub netns: u32,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// [`KIND_OPEN`] or [`KIND_CLOSE`].
    pub kind: u8,
    /// One of the `DIRECTION_*` constants.
    pub direction: u8,
    /// `FLAG_*` bits (with [`feature::BYTES`]).
    pub flags: u8,
    /// Padding, always zero (no arrays here: the BPF target zeroes an
    /// array with a call to a `memset` loop, on every event).
    pub _pad: u8,
    pub _pad2: u16,
}

const _: () = assert!(size_of::<ConnEvent>() == 48);

/// A [`ConnEvent`] with what the opt-in [`feature`]s report; every record
/// is one of these when any feature is on. A field whose feature is off,
/// or that the event has not (a comm but on outbound opens, bytes but on
/// closes), is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ConnEventExt {
    pub base: ConnEvent,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) at the event ([`feature::TIME`]).
    pub time_ns: u64,
    /// `tcp_sock.bytes_received` ([`feature::BYTES`]).
    pub bytes_received: u64,
    /// `tcp_sock.bytes_acked` ([`feature::BYTES`]).
    pub bytes_acked: u64,
    /// The connecting process's name, NUL-padded ([`feature::COMM`]): its
    /// 16 bytes as two native-order words (as with the addresses: two
    /// stores, not a `memset` loop, in the kernel).
    pub comm: [u64; 2],
}

const _: () = assert!(size_of::<ConnEventExt>() == 88);

/// The bytes of a [`ConnEvent`] address, in network order.
#[must_use]
#[inline]
pub const fn address_bytes(words: [u64; 2]) -> [u8; 16] {
    let (a, b) = (words[0].to_ne_bytes(), words[1].to_ne_bytes());
    [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        b[7],
    ]
}

/// A [`ConnEvent`] address from its bytes in network order.
#[must_use]
#[inline]
pub const fn address_words(bytes: [u8; 16]) -> [u64; 2] {
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
    ] = bytes;
    [
        u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        u64::from_ne_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
    ]
}
/// Bytes one event takes in the ring buffer: the kernel's 8-byte record
/// header, then the event (a multiple of 8 bytes); more with features
/// ([`RING_RECORD_EXT_BYTES`]).
pub const RING_RECORD_BYTES: u64 = 8 + size_of::<ConnEvent>() as u64;
/// [`RING_RECORD_BYTES`] of a [`ConnEventExt`].
pub const RING_RECORD_EXT_BYTES: u64 = 8 + size_of::<ConnEventExt>() as u64;

/// Byte offsets of the fields of the `sock/inet_sock_set_state` record, as
/// tracefs describes them (`events/sock/inet_sock_set_state/format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, always zero"
)]
pub struct TracepointLayout {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<TracepointLayout>() == 24);

impl TracepointLayout {
    /// The layout of every kernel since 4.16 (checked on 6.18); the daemon
    /// still reads the real one from tracefs and refuses to load when a
    /// field is missing or has another size.
    pub const DEFAULT: Self = Self {
        skaddr: 8,
        oldstate: 16,
        newstate: 20,
        sport: 24,
        dport: 26,
        family: 28,
        protocol: 30,
        saddr: 32,
        daddr: 36,
        saddr_v6: 40,
        daddr_v6: 56,
        _pad: 0,
    };
}

/// Where the network namespace's inode number sits, found in the running
/// kernel's BTF at load time: `sock->__sk_common.skc_net.net` is at byte
/// `net` of `struct sock`, and `net->ns.inum` at byte `inum` of `struct
/// net`. With `enabled` 0 the program reports namespace 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockLayout {
    pub net: u32,
    pub inum: u32,
    pub enabled: u32,
    pub reserved: u32,
}

const _: () = assert!(size_of::<SockLayout>() == 16);

impl SockLayout {
    /// Namespaces not read.
    pub const DISABLED: Self = Self {
        net: 0,
        inum: 0,
        enabled: 0,
        reserved: 0,
    };
}

#[cfg(feature = "user")]
// SAFETY: `SockLayout` is `#[repr(C)]`, `Copy`, has no padding and every
// bit pattern is valid.
unsafe impl aya::Pod for SockLayout {}

#[cfg(feature = "user")]
// SAFETY: `TracepointLayout` is `#[repr(C)]`, `Copy`, has no padding and
// every bit pattern is valid.
unsafe impl aya::Pod for TracepointLayout {}
