//! The kernel's netlink `sock_diag` interface (`NETLINK_SOCK_DIAG`): the
//! request and reply wire format, one dump of the calling thread's network
//! namespace, and the parsing of its replies.
//!
//! One dump covers both address families: the request is
//! `TCPDIAG_GETSOCK` with an `inet_diag_req` (the interface's first form,
//! which every kernel since 2.6 answers for IPv4 and IPv6 at once). The
//! kernel walks its whole established-socket hash for every dump, and that
//! hash is shared by all namespaces, so one dump instead of one per family
//! halves the cost of a snapshot. Should a kernel refuse it, the dumps fall
//! back to one `SOCK_DIAG_BY_FAMILY` request (`inet_diag_req_v2`, 3.3 and
//! later) per family.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use bytemuck::{Pod, Zeroable};
use geoip_common::{AF_INET, AF_INET6, IPPROTO_TCP};

use super::bytecode::Bytecode;
use crate::conn::{ConnKey, Counters, canonical};

const NETLINK_SOCK_DIAG: i32 = 4;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The first form of the dump request: both families in one walk.
const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    pub(crate) inode: u32,
}

/// `struct inet_diag_req`: the kernel ignores `family` and answers for
/// both.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct InetDiagReqV1 {
    family: u8,
    src_len: u8,
    dst_len: u8,
    ext: u8,
    id: InetDiagSockId,
    states: u32,
    dbs: u32,
}

const _: () = assert!(size_of::<NlMsgHdr>() == 16);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagReqV1>() == 60);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);

#[derive(Debug, thiserror::Error)]
pub(crate) enum DumpError {
    #[error("sock_diag dump of {family} TCP sockets failed (a kernel without CONFIG_INET_DIAG?)")]
    Io {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sock_diag dump of {family} sockets: malformed reply ({what})")]
    Malformed {
        family: &'static str,
        what: &'static str,
    },
}

/// What one dump asks the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// The TCP states dumped, as a mask of `1 << state`.
    pub(crate) states: u32,
    /// Whether each socket's `tcp_info` comes with it.
    pub(crate) tcp_info: bool,
}

impl Request {
    /// The `idiag_ext` bits.
    const fn ext(self) -> u8 {
        if self.tcp_info {
            1 << (INET_DIAG_INFO - 1)
        } else {
            0
        }
    }
}

/// One socket of the dump.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiagSocket {
    pub(crate) state: u8,
    pub(crate) key: ConnKey,
    /// From its `tcp_info`, when asked for ([`Request::tcp_info`]).
    pub(crate) counters: Option<Counters>,
    /// Its inode (0: none, as for a socket without a file).
    pub(crate) inode: u32,
}

/// The TCP sockets `req` asks for of the calling thread's network namespace
/// (IPv4 and IPv6), tagged `netns`.
pub(crate) fn sockets(
    netns: u32,
    req: Request,
    bytecode: &Bytecode,
) -> Result<Vec<DiagSocket>, DumpError> {
    if ONE_DUMP_REFUSED.load(Ordering::Relaxed) {
        return per_family(netns, req, bytecode);
    }
    match dump(Dump::Both, netns, req, bytecode) {
        Err(err) if refused(&err) => {
            tracing::debug!(error = %crate::error::chain(&err), "the kernel refused one dump for both families; dumping each family");
            ONE_DUMP_REFUSED.store(true, Ordering::Relaxed);
            per_family(netns, req, bytecode)
        }
        result => result,
    }
}

/// Whether the kernel refused a request form (rather than failing it).
fn refused(err: &DumpError) -> bool {
    matches!(
        err,
        DumpError::Io { source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOENT | libc::EPROTONOSUPPORT)
            )
    )
}

/// Set once the kernel refused [`Dump::Both`]: then every snapshot dumps
/// each family.
static ONE_DUMP_REFUSED: AtomicBool = AtomicBool::new(false);

fn per_family(netns: u32, req: Request, bytecode: &Bytecode) -> Result<Vec<DiagSocket>, DumpError> {
    let mut sockets = dump(Dump::Family(AF_INET), netns, req, bytecode)?;
    sockets.extend(dump(Dump::Family(AF_INET6), netns, req, bytecode)?);
    Ok(sockets)
}

/// What one dump asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dump {
    /// Both families in one walk (`TCPDIAG_GETSOCK`).
    Both,
    /// One family (`SOCK_DIAG_BY_FAMILY`).
    Family(u16),
}

impl Dump {
    /// The family named in errors.
    const fn name(self) -> &'static str {
        match self {
            Self::Both => "IPv4 and IPv6",
            Self::Family(AF_INET) => "IPv4",
            Self::Family(_) => "IPv6",
        }
    }
}

/// `INET_DIAG_REQ_BYTECODE`: the request attribute holding a filter.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_INFO`: the reply attribute holding `struct tcp_info`.
const INET_DIAG_INFO: u8 = 2;

fn dump(
    what: Dump,
    netns: u32,
    req: Request,
    bytecode: &Bytecode,
) -> Result<Vec<DiagSocket>, DumpError> {
    let fd = request(what, req, bytecode).map_err(|source| DumpError::Io {
        family: what.name(),
        source,
    })?;
    read_replies(&fd, what.name(), netns)
}

/// The bytes of a dump request: header, request, then `bytecode` (if any)
/// as its attribute.
fn request_bytes(what: Dump, req: Request, bytecode: &Bytecode) -> Vec<u8> {
    let (kind, body) = match what {
        Dump::Both => (
            TCPDIAG_GETSOCK,
            bytemuck::bytes_of(&InetDiagReqV1 {
                family: u8::try_from(AF_INET).unwrap_or(0),
                src_len: 0,
                dst_len: 0,
                ext: req.ext(),
                id: InetDiagSockId::zeroed(),
                states: req.states,
                dbs: 0,
            })
            .to_vec(),
        ),
        Dump::Family(family) => (
            SOCK_DIAG_BY_FAMILY,
            bytemuck::bytes_of(&InetDiagReqV2 {
                family: u8::try_from(family).unwrap_or(0),
                protocol: u8::try_from(IPPROTO_TCP).unwrap_or(0),
                ext: req.ext(),
                pad: 0,
                states: req.states,
                id: InetDiagSockId::zeroed(),
            })
            .to_vec(),
        ),
    };
    let attr_len = if bytecode.is_empty() {
        0
    } else {
        4 + bytecode.len()
    };
    // Both request forms are a multiple of 4 bytes: the attribute follows
    // at once.
    let len = size_of::<NlMsgHdr>() + body.len() + attr_len;
    let hdr = NlMsgHdr {
        len: u32::try_from(len).unwrap_or(u32::MAX),
        kind,
        flags: NLM_F_REQUEST | NLM_F_DUMP,
        seq: 1,
        pid: 0,
    };
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(bytemuck::bytes_of(&hdr));
    bytes.extend_from_slice(&body);
    if attr_len > 0 {
        bytes.extend_from_slice(&u16::try_from(attr_len).unwrap_or(u16::MAX).to_ne_bytes());
        bytes.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        bytes.extend_from_slice(bytecode.as_bytes());
    }
    bytes
}

/// Open a `sock_diag` socket and ask for the TCP sockets `req` wants
/// that pass `bytecode`.
fn request(what: Dump, req: Request, bytecode: &Bytecode) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let bytes = request_bytes(what, req, bytecode);
    // SAFETY: `sockaddr_nl` is plain data; all-zero is the kernel's address.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = u16::try_from(libc::AF_NETLINK).unwrap_or(0);
    // SAFETY: the buffer and address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&raw const kernel).cast(),
            u32::try_from(size_of::<libc::sockaddr_nl>()).unwrap_or(0),
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Read the dump's messages up to `NLMSG_DONE`.
fn read_replies(
    fd: &OwnedFd,
    name: &'static str,
    netns: u32,
) -> Result<Vec<DiagSocket>, DumpError> {
    let mut sockets = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(DumpError::Io {
                family: name,
                source: err,
            });
        };
        if n == 0 {
            return Err(DumpError::Malformed {
                family: name,
                what: "the kernel closed the dump before NLMSG_DONE",
            });
        }
        if parse_messages(&buf[..n], name, netns, &mut sockets)? {
            return Ok(sockets);
        }
    }
}

/// Parse one datagram of netlink messages onto `sockets`; true once
/// `NLMSG_DONE` is reached.
pub(crate) fn parse_messages(
    mut rest: &[u8],
    name: &'static str,
    netns: u32,
    sockets: &mut Vec<DiagSocket>,
) -> Result<bool, DumpError> {
    let malformed = |what| DumpError::Malformed { family: name, what };
    while rest.len() >= size_of::<NlMsgHdr>() {
        let hdr: NlMsgHdr = bytemuck::pod_read_unaligned(&rest[..size_of::<NlMsgHdr>()]);
        let len = usize::try_from(hdr.len).unwrap_or(usize::MAX);
        if len < size_of::<NlMsgHdr>() || len > rest.len() {
            return Err(malformed("message length out of bounds"));
        }
        let payload = &rest[size_of::<NlMsgHdr>()..len];
        match hdr.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(DumpError::Io {
                    family: name,
                    source: io::Error::from_raw_os_error(code.saturating_neg()),
                });
            }
            // The reply has the request's type.
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                let msg = payload
                    .get(..size_of::<InetDiagMsg>())
                    .ok_or_else(|| malformed("short inet_diag_msg"))?;
                let msg: InetDiagMsg = bytemuck::pod_read_unaligned(msg);
                if let Some(key) = key_of(&msg, netns) {
                    sockets.push(DiagSocket {
                        state: msg.state,
                        key,
                        counters: tcp_info_counters(&payload[size_of::<InetDiagMsg>()..]),
                        inode: msg.inode,
                    });
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = len.next_multiple_of(4).min(rest.len());
        rest = &rest[next..];
    }
    Ok(false)
}

/// The byte counters in the `INET_DIAG_INFO` attribute (`struct
/// tcp_info`) among `attrs`, if there is one long enough (Linux 4.1 and
/// later): `tcpi_bytes_acked` at byte 120, `tcpi_bytes_received` at 128.
/// An ESTABLISHED socket has no FIN in them.
fn tcp_info_counters(mut attrs: &[u8]) -> Option<Counters> {
    const BYTES_ACKED: usize = 120;
    const BYTES_RECEIVED: usize = 128;
    let u64_at = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == u16::from(INET_DIAG_INFO) {
            let info = &attrs[4..len];
            return Some(Counters {
                acked: u64_at(info, BYTES_ACKED)?,
                received: u64_at(info, BYTES_RECEIVED)?,
            });
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

fn key_of(msg: &InetDiagMsg, netns: u32) -> Option<ConnKey> {
    let addr = |b: &[u8; 16]| match u16::from(msg.family) {
        AF_INET => Some(canonical(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into())),
        AF_INET6 => Some(canonical(Ipv6Addr::from(*b).into())),
        _ => None,
    };
    Some(ConnKey {
        local: addr(&msg.id.src)?,
        remote: addr(&msg.id.dst)?,
        local_port: u16::from_be_bytes(msg.id.sport),
        remote_port: u16::from_be_bytes(msg.id.dport),
        netns,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// What a snapshot of connections asks for: ESTABLISHED and LISTEN.
    const CONNECTIONS: Request = Request {
        states: (1 << 1) | (1 << 10),
        tcp_info: false,
    };

    /// The one dump for both families (what a snapshot sends) and the
    /// two per-family dumps (its fallback) see the same sockets, the
    /// filter applied to each family's own ranges.
    #[test]
    fn one_dump_for_both_families_sees_what_two_dumps_see() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let _c4 = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let _c6 = TcpStream::connect(v6.local_addr().unwrap()).unwrap();
        let (_s4, _) = v4.accept().unwrap();
        let (_s6, _) = v6.accept().unwrap();
        let ours = [
            v4.local_addr().unwrap().port(),
            v6.local_addr().unwrap().port(),
        ];
        for filter in [
            Bytecode::default(),
            Bytecode::excluding(&["fe80::/10".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]),
            Bytecode::excluding(&["127.0.0.0/8".parse().unwrap()]),
        ] {
            // Only this test's sockets: others come and go meanwhile.
            let mine = |sockets: Vec<DiagSocket>| {
                let mut keys: Vec<(u8, String)> = sockets
                    .into_iter()
                    .filter(|s| {
                        ours.contains(&s.key.local_port) || ours.contains(&s.key.remote_port)
                    })
                    .map(|s| (s.state, format!("{:?}", s.key)))
                    .collect();
                keys.sort();
                keys
            };
            let both = mine(dump(Dump::Both, 7, CONNECTIONS, &filter).unwrap());
            let each = mine(per_family(7, CONNECTIONS, &filter).unwrap());
            assert_eq!(both, each);
            assert!(
                both.iter().any(|(_, k)| k.contains("::1")),
                "IPv6 came in the one dump: {both:?}"
            );
        }
        // Unfiltered: both listeners and all four ends.
        assert_eq!(mine_count(&ours), 6);
    }

    fn mine_count(ports: &[u16]) -> usize {
        dump(Dump::Both, 7, CONNECTIONS, &Bytecode::default())
            .unwrap()
            .iter()
            .filter(|s| ports.contains(&s.key.local_port) || ports.contains(&s.key.remote_port))
            .count()
    }
}
