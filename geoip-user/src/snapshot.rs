//! The TCP connections ESTABLISHED when the exporter starts, from the
//! kernel's netlink `sock_diag` interface (`NETLINK_SOCK_DIAG`).
//!
//! One dump per namespace covers both address families: the request is
//! `TCPDIAG_GETSOCK` with an `inet_diag_req` (the interface's first form,
//! which every kernel since 2.6 answers for IPv4 and IPv6 at once). The
//! kernel walks its whole established-socket hash for every dump, and that
//! hash is shared by all namespaces, so one dump instead of one per family
//! halves the cost of a snapshot. Should a kernel refuse it, the snapshot
//! falls back to one `SOCK_DIAG_BY_FAMILY` dump (`inet_diag_req_v2`, 3.3
//! and later) per family.
//!
//! `sock_diag` answers for the namespace its socket was made in, so the
//! snapshot runs on a thread of its own that enters each of the host's
//! network namespaces in turn (see [`crate::namespaces`]). Listening sockets
//! come in the same dump: a connection whose local port is a listening port
//! of its namespace was accepted (inbound), any other was made (outbound).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bytemuck::{Pod, Zeroable};
use geoip_common::{AF_INET, AF_INET6, IPPROTO_TCP, tcp_state};

use crate::{
    capabilities::{self, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN, CAP_SYS_PTRACE},
    conn::{Comm, ConnKey, Counters, Direction, canonical},
    exclude::Cidr,
    namespaces::{self, NetNs},
    owners,
};

const NETLINK_SOCK_DIAG: i32 = 4;
/// The snapshot thread's nice value: a reconcile of 100,000 connections
/// takes a few hundred milliseconds of CPU, which must not delay scrapes.
const SNAPSHOT_NICE: i32 = 10;
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
    inode: u32,
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
pub(crate) enum SnapshotError {
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
    #[error("cannot find the exporter's own network namespace (is /proc mounted?)")]
    OwnNamespace(#[source] io::Error),
    #[error("cannot start the snapshot thread")]
    Thread(#[source] io::Error),
    #[error("the snapshot thread stopped without an answer")]
    Lost,
    #[error("the snapshot thread could not return to the exporter's network namespace")]
    Stranded,
}

/// Which namespaces a snapshot covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every network namespace on the host, each connection tagged with
    /// its namespace's id (what the kernel program reports).
    All,
    /// Only the exporter's own, tagged 0: the kernel program cannot tell
    /// namespaces apart on this kernel.
    OwnUntagged,
}

/// What a snapshot is taken for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The ESTABLISHED connections, with their direction (start-up,
    /// reconcile).
    Connections,
    /// The byte counters of ESTABLISHED connections, and which closing
    /// ones still exist (`--metrics.bytes`).
    Bytes,
}

impl Pass {
    /// The TCP states dumped.
    const fn states(self) -> u32 {
        match self {
            Self::Connections => (1 << tcp_state::ESTABLISHED) | (1 << tcp_state::LISTEN),
            Self::Bytes => {
                (1 << tcp_state::ESTABLISHED)
                    | (1 << tcp_state::FIN_WAIT1)
                    | (1 << tcp_state::FIN_WAIT2)
                    | (1 << tcp_state::CLOSE_WAIT)
                    | (1 << tcp_state::LAST_ACK)
                    | (1 << tcp_state::CLOSING)
            }
        }
    }

    /// The `idiag_ext` bits: `tcp_info` for bytes.
    const fn ext(self) -> u8 {
        match self {
            Self::Connections => 0,
            Self::Bytes => 1 << (INET_DIAG_INFO - 1),
        }
    }
}

/// What a snapshot saw.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// ESTABLISHED connections and their direction ([`Pass::Connections`]).
    pub(crate) conns: Vec<(ConnKey, Direction)>,
    /// The process holding each outbound connection, when asked for
    /// ([`Snapshotter::start`] with `owners`: at start-up).
    pub(crate) owners: HashMap<ConnKey, Comm>,
    /// ESTABLISHED connections and their byte counters ([`Pass::Bytes`]).
    pub(crate) bytes: Vec<(ConnKey, Counters)>,
    /// Connections in a closing state ([`Pass::Bytes`]).
    pub(crate) closing: Vec<ConnKey>,
    /// Namespaces dumped: the table can be compared with them.
    pub(crate) scanned: HashSet<u32>,
    /// Namespaces that exist but could not be dumped (no permission, or
    /// gone meanwhile): what is known of their connections stands.
    pub(crate) unreadable: HashSet<u32>,
    /// How long it took.
    pub(crate) elapsed: Duration,
    /// The socket inode of each outbound connection, until
    /// [`Self::find_owners`].
    pub(crate) inodes: Vec<(ConnKey, u32)>,
}

type Reply = tokio::sync::oneshot::Sender<Result<Snapshot, SnapshotError>>;

/// A request to the snapshot thread.
type Request = (Scope, Pass, Reply);

/// The one thread that takes snapshots. It enters other namespaces (which
/// must never happen to a runtime thread), so it is the one thread that
/// keeps `CAP_SYS_ADMIN` and `CAP_SYS_PTRACE`: it is started before the
/// exporter drops its capabilities, and drops every other one itself.
pub(crate) struct Snapshotter {
    requests: std::sync::mpsc::Sender<Request>,
}

impl Snapshotter {
    /// Start the thread (call it while the process still has its
    /// capabilities). With `owners`, the first [`Pass::Connections`]
    /// snapshot (start-up) also finds the process holding each outbound
    /// connection (see [`crate::owners`]); the thread keeps
    /// `CAP_DAC_READ_SEARCH` until then, to open other users'
    /// `/proc/PID/fd`. Later ones (reconciles) do not search: the
    /// connections they add are only those whose events were lost, and the
    /// search reads every open file of every process (2.5 s for 200,000
    /// on the benchmark VM).
    pub(crate) fn start(exclude: &[Cidr], owners: bool) -> Result<Self, SnapshotError> {
        let filter = Filter::excluding(exclude);
        let (requests, incoming) = std::sync::mpsc::channel::<Request>();
        let home = File::open("/proc/thread-self/ns/net").map_err(SnapshotError::OwnNamespace)?;
        std::thread::Builder::new()
            .name("geoip-snapshot".into())
            .spawn(move || {
                // Background work: under load, scrapes and events go first.
                // SAFETY: setpriority on this thread (Linux: a thread id
                // with PRIO_PROCESS); lowering priority needs no privilege.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid().cast_unsigned(), SNAPSHOT_NICE);
                }
                let keep = capabilities::bit(CAP_SYS_ADMIN) | capabilities::bit(CAP_SYS_PTRACE);
                let search = if owners { capabilities::bit(CAP_DAC_READ_SEARCH) } else { 0 };
                match capabilities::restrict_thread(keep | search) {
                    Ok(sets) if sets.permitted & keep != keep => {
                        tracing::warn!(
                            missing = ?capabilities::names(keep & !sets.permitted),
                            "without these capabilities only the exporter's own network namespace is snapshotted and reconciled; connections in other namespaces (containers) are counted from events alone"
                        );
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "cannot drop the snapshot thread's capabilities"),
                }
                let mut broken = false;
                let mut owners = owners;
                for (scope, pass, reply) in incoming {
                    let answer = if broken {
                        Err(SnapshotError::Stranded)
                    } else {
                        let first = pass == Pass::Connections && std::mem::take(&mut owners);
                        let answer = take(scope, pass, &filter, first);
                        if first && let Err(err) = capabilities::restrict_thread(keep) {
                            tracing::warn!(error = %err, "cannot drop CAP_DAC_READ_SEARCH from the snapshot thread");
                        }
                        // Back home for the next one, whatever happened
                        // (a no-op when it never left: without setns(2),
                        // e.g. under the packaged unit, it stays home).
                        if let Err(err) = namespaces::return_to(&home) {
                            tracing::error!(error = %err, "the snapshot thread cannot return to the exporter's network namespace; no more snapshots");
                            broken = true;
                        }
                        answer
                    };
                    let _ = reply.send(answer);
                }
            })
            .map_err(SnapshotError::Thread)?;
        Ok(Self { requests })
    }

    /// Ask for a snapshot; the answer arrives on the returned channel.
    pub(crate) fn request(
        &self,
        scope: Scope,
        pass: Pass,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Snapshot, SnapshotError>>, SnapshotError>
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send((scope, pass, tx))
            .map_err(|_| SnapshotError::Lost)?;
        Ok(rx)
    }
}

/// Dump the exporter's own namespace, then (for [`Scope::All`]) enter
/// each other one in turn. Runs on the snapshot thread, which starts in
/// the exporter's namespace.
fn take(
    scope: Scope,
    pass: Pass,
    filter: &Filter,
    owners: bool,
) -> Result<Snapshot, SnapshotError> {
    let start = Instant::now();
    let own = namespaces::own().map_err(SnapshotError::OwnNamespace)?;
    let mut snap = Snapshot::default();
    let own_tag = match scope {
        Scope::All => own.id,
        Scope::OwnUntagged => 0,
    };
    snap.add(pass, &sockets(own_tag, pass, filter)?, owners);
    snap.scanned.insert(own_tag);
    if scope == Scope::All {
        for ns in namespaces::all().into_iter().filter(|ns| ns.id != own.id) {
            match enter_and_dump(&ns, pass, filter) {
                Ok(sockets) => {
                    snap.add(pass, &sockets, owners);
                    snap.scanned.insert(ns.id);
                }
                Err(err) => {
                    tracing::debug!(namespace = ns.id, path = %ns.path.display(), error = %err, "cannot read a network namespace's connections");
                    snap.unreadable.insert(ns.id);
                }
            }
        }
    }
    if owners && pass == Pass::Connections {
        snap.find_owners(Path::new("/proc"));
    }
    snap.elapsed = start.elapsed();
    Ok(snap)
}

impl Snapshot {
    /// Add one namespace's `sockets` (keeping the inodes of outbound ones
    /// for [`Self::find_owners`] with `owners`).
    fn add(&mut self, pass: Pass, sockets: &[DiagSocket], owners: bool) {
        match pass {
            Pass::Connections => {
                for (key, direction, inode) in classify(sockets) {
                    self.conns.push((key, direction));
                    if owners && direction == Direction::Outbound && inode != 0 {
                        self.inodes.push((key, inode));
                    }
                }
            }
            Pass::Bytes => {
                for s in sockets {
                    if i32::from(s.state) == tcp_state::ESTABLISHED {
                        if let Some(c) = s.counters {
                            self.bytes.push((s.key, c));
                        }
                    } else {
                        self.closing.push(s.key);
                    }
                }
            }
        }
    }

    /// Name each outbound connection after the process holding it.
    fn find_owners(&mut self, proc: &Path) {
        let started = Instant::now();
        let inodes = std::mem::take(&mut self.inodes);
        let wanted: HashSet<u32> = inodes.iter().map(|(_, inode)| *inode).collect();
        let found = owners::process_names(proc, &wanted);
        self.owners = inodes
            .into_iter()
            .filter_map(|(key, inode)| Some((key, *found.names.get(&inode)?)))
            .collect();
        tracing::info!(
            outbound = wanted.len(),
            named = found.names.len(),
            seconds = started.elapsed().as_secs_f64(),
            "outbound connections already open named after the processes holding them (/proc/PID/fd)"
        );
        if found.refused > 0 {
            tracing::warn!(
                processes = found.refused,
                "open files of some processes could not be read (the snapshot thread needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH): their connections already open stay service=\"unknown\""
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum EnterError {
    #[error("cannot enter the namespace")]
    Enter(#[source] io::Error),
    #[error(transparent)]
    Dump(#[from] SnapshotError),
}

fn enter_and_dump(ns: &NetNs, pass: Pass, filter: &Filter) -> Result<Vec<DiagSocket>, EnterError> {
    namespaces::enter(ns).map_err(EnterError::Enter)?;
    Ok(sockets(ns.id, pass, filter)?)
}

/// One socket of the dump.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiagSocket {
    state: u8,
    key: ConnKey,
    /// From its `tcp_info`, when asked for ([`Pass::Bytes`]).
    counters: Option<Counters>,
    /// Its inode (0: none, as for a socket without a file).
    inode: u32,
}

/// The TCP sockets `pass` wants of the calling thread's network namespace
/// (IPv4 and IPv6), tagged `netns`.
fn sockets(netns: u32, pass: Pass, filter: &Filter) -> Result<Vec<DiagSocket>, SnapshotError> {
    if ONE_DUMP_REFUSED.load(Ordering::Relaxed) {
        return per_family(netns, pass, filter);
    }
    match dump(Dump::Both, netns, pass, filter) {
        Err(err) if refused(&err) => {
            tracing::debug!(error = %crate::error::chain(&err), "the kernel refused one dump for both families; dumping each family");
            ONE_DUMP_REFUSED.store(true, Ordering::Relaxed);
            per_family(netns, pass, filter)
        }
        result => result,
    }
}

/// Whether the kernel refused a request form (rather than failing it).
fn refused(err: &SnapshotError) -> bool {
    matches!(
        err,
        SnapshotError::Io { source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOENT | libc::EPROTONOSUPPORT)
            )
    )
}

/// Set once the kernel refused [`Dump::Both`]: then every snapshot dumps
/// each family.
static ONE_DUMP_REFUSED: AtomicBool = AtomicBool::new(false);

fn per_family(netns: u32, pass: Pass, filter: &Filter) -> Result<Vec<DiagSocket>, SnapshotError> {
    let mut sockets = dump(Dump::Family(AF_INET), netns, pass, filter)?;
    sockets.extend(dump(Dump::Family(AF_INET6), netns, pass, filter)?);
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
/// Filter operations (`linux/inet_diag.h`).
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_D_COND: u8 = 8;
const INET_DIAG_BC_D_EQ: u8 = 12;
/// The largest filter sent (the attribute's length is 16 bits); beyond it
/// the dump is not filtered (the exclusions still apply when merging).
const FILTER_MAX_BYTES: usize = 32 * 1024;

/// A `sock_diag` filter run by the kernel on each socket of the dump: a
/// listening socket (remote port 0) passes; an established one passes
/// unless its remote address is in one of the excluded ranges. The dump
/// then leaves out what the exporter drops anyway (a load balancer's
/// connections to private back ends are half its sockets).
///
/// The kernel checks a filter by following each operation's "yes" jump
/// from the first to the end, so every "yes" goes to the next operation
/// and the decisions are "no" jumps: to the end (accept) or past it
/// (reject), through `JMP` operations (always "no").
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter(Vec<u8>);

impl Filter {
    pub(crate) fn excluding(ranges: &[Cidr]) -> Self {
        let conds: Vec<Vec<u8>> = ranges.iter().map(hostcond).collect();
        let total = 8 + 4 + conds.iter().map(|c| 4 + c.len() + 4).sum::<usize>();
        if total > FILTER_MAX_BYTES {
            return Self::default();
        }
        let mut bc = Vec::with_capacity(total);
        let op = |bc: &mut Vec<u8>, code: u8, yes: usize, no: usize| {
            bc.push(code);
            bc.push(u8::try_from(yes).unwrap_or(u8::MAX));
            bc.extend_from_slice(&u16::try_from(no).unwrap_or(u16::MAX).to_ne_bytes());
        };
        // Remote port 0 (a listener): on to the accepting JMP; otherwise
        // over it to the first range. The port sits in a second operation.
        op(&mut bc, INET_DIAG_BC_D_EQ, 8, 12);
        op(&mut bc, 0, 0, 0);
        let left = total - bc.len();
        op(&mut bc, INET_DIAG_BC_JMP, 4, left);
        for cond in &conds {
            let size = 4 + cond.len();
            // In the range: on to the rejecting JMP; otherwise over it.
            op(&mut bc, INET_DIAG_BC_D_COND, size, size + 4);
            bc.extend_from_slice(cond);
            let left = total - bc.len();
            op(&mut bc, INET_DIAG_BC_JMP, 4, left + 4);
        }
        Self(bc)
    }
}

/// `struct inet_diag_hostcond` for `cidr`, any port.
fn hostcond(cidr: &Cidr) -> Vec<u8> {
    let (family, prefix, addr) = cidr.parts();
    let mut out = vec![u8::try_from(family).unwrap_or(0), prefix, 0, 0];
    out.extend_from_slice(&(-1i32).to_ne_bytes());
    out.extend_from_slice(&addr);
    out
}

fn classify(sockets: &[DiagSocket]) -> Vec<(ConnKey, Direction, u32)> {
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| i32::from(s.state) == tcp_state::LISTEN)
        .map(|s| s.key.local_port)
        .collect();
    sockets
        .iter()
        .filter(|s| i32::from(s.state) == tcp_state::ESTABLISHED)
        .map(|s| {
            let direction = if listening.contains(&s.key.local_port) {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            (s.key, direction, s.inode)
        })
        .collect()
}

fn dump(
    what: Dump,
    netns: u32,
    pass: Pass,
    filter: &Filter,
) -> Result<Vec<DiagSocket>, SnapshotError> {
    let fd = request(what, pass, filter).map_err(|source| SnapshotError::Io {
        family: what.name(),
        source,
    })?;
    read_replies(&fd, what.name(), netns)
}

/// The bytes of a dump request: header, request, then `filter` (if any)
/// as its attribute.
fn request_bytes(what: Dump, pass: Pass, filter: &Filter) -> Vec<u8> {
    let (kind, body) = match what {
        Dump::Both => (
            TCPDIAG_GETSOCK,
            bytemuck::bytes_of(&InetDiagReqV1 {
                family: u8::try_from(AF_INET).unwrap_or(0),
                src_len: 0,
                dst_len: 0,
                ext: pass.ext(),
                id: InetDiagSockId::zeroed(),
                states: pass.states(),
                dbs: 0,
            })
            .to_vec(),
        ),
        Dump::Family(family) => (
            SOCK_DIAG_BY_FAMILY,
            bytemuck::bytes_of(&InetDiagReqV2 {
                family: u8::try_from(family).unwrap_or(0),
                protocol: u8::try_from(IPPROTO_TCP).unwrap_or(0),
                ext: pass.ext(),
                pad: 0,
                states: pass.states(),
                id: InetDiagSockId::zeroed(),
            })
            .to_vec(),
        ),
    };
    let attr_len = if filter.0.is_empty() {
        0
    } else {
        4 + filter.0.len()
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
        bytes.extend_from_slice(&filter.0);
    }
    bytes
}

/// Open a `sock_diag` socket and ask for the TCP sockets `pass` wants
/// that pass `filter`.
fn request(what: Dump, pass: Pass, filter: &Filter) -> io::Result<OwnedFd> {
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
    let bytes = request_bytes(what, pass, filter);
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
) -> Result<Vec<DiagSocket>, SnapshotError> {
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
            return Err(SnapshotError::Io {
                family: name,
                source: err,
            });
        };
        if n == 0 {
            return Err(SnapshotError::Malformed {
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
) -> Result<bool, SnapshotError> {
    let malformed = |what| SnapshotError::Malformed { family: name, what };
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
                return Err(SnapshotError::Io {
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
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::conn::ip;

    fn established(
        netns: u32,
        filter: &Filter,
    ) -> Result<Vec<(ConnKey, Direction)>, SnapshotError> {
        Ok(classify(&sockets(netns, Pass::Connections, filter)?)
            .into_iter()
            .map(|(key, direction, _)| (key, direction))
            .collect())
    }

    /// An outbound connection is named after the process holding it,
    /// found by its socket inode; an inbound one is not looked for.
    #[test]
    fn outbound_connections_are_named_after_their_process() {
        let l = TcpListener::bind("[::1]:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut snap = Snapshot::default();
        snap.add(
            Pass::Connections,
            &sockets(7, Pass::Connections, &Filter::default()).unwrap(),
            true,
        );
        snap.find_owners(Path::new("/proc"));
        let key = |s: &TcpStream| {
            let (local, remote) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
            ConnKey {
                local: canonical(local.ip()),
                remote: canonical(remote.ip()),
                local_port: local.port(),
                remote_port: remote.port(),
                netns: 7,
            }
        };
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            snap.owners.get(&key(&c)).and_then(Comm::name).as_deref(),
            Some(own.trim_end())
        );
        assert!(snap.conns.contains(&(key(&s), Direction::Inbound)));
        assert!(
            !snap.owners.contains_key(&key(&s)),
            "inbound: not looked for"
        );
        assert!(snap.inodes.is_empty(), "used up");
    }

    /// Real sockets on loopback, seen through the real kernel interface.
    #[test]
    fn sees_established_loopback_connections_both_families() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let mut c4 = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let c6 = TcpStream::connect(v6.local_addr().unwrap()).unwrap();
        let (mut s4, _) = v4.accept().unwrap();
        let (_s6, _) = v6.accept().unwrap();
        c4.write_all(b"x").unwrap();
        let mut b = [0; 1];
        s4.read_exact(&mut b).unwrap();

        let conns = established(7, &Filter::default()).unwrap();
        let find = |local: std::net::SocketAddr, remote: std::net::SocketAddr| {
            conns.iter().find(|(k, _)| {
                k.local == canonical(local.ip())
                    && k.local_port == local.port()
                    && k.remote == canonical(remote.ip())
                    && k.remote_port == remote.port()
            })
        };
        let out4 = find(c4.local_addr().unwrap(), c4.peer_addr().unwrap()).unwrap();
        assert_eq!(out4.1, Direction::Outbound);
        let in4 = find(s4.local_addr().unwrap(), s4.peer_addr().unwrap()).unwrap();
        assert_eq!(in4.1, Direction::Inbound);
        let out6 = find(c6.local_addr().unwrap(), c6.peer_addr().unwrap()).unwrap();
        assert_eq!(out6.1, Direction::Outbound);
        assert_eq!(out6.0.remote, ip("::1"));
        assert_eq!(out6.0.netns, 7, "tagged with the namespace asked for");
    }

    /// The kernel runs the filter: a connection to an excluded range is
    /// left out of the dump, one to another range is in it, and listening
    /// sockets still come (the direction of the rest depends on them).
    #[test]
    fn the_kernel_leaves_excluded_ranges_out_of_the_dump() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let c4 = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let c6 = TcpStream::connect(v6.local_addr().unwrap()).unwrap();
        let (s4, _) = v4.accept().unwrap();
        let (s6, _) = v6.accept().unwrap();
        let ranges: Vec<Cidr> = ["127.0.0.0/8", "fe80::/10", "10.0.0.0/8"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let filter = Filter::excluding(&ranges);
        let conns = established(7, &filter).unwrap();
        let has = |s: &TcpStream| {
            let (local, remote) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
            conns.iter().find(|(k, _)| {
                k.local_port == local.port()
                    && k.remote_port == remote.port()
                    && k.remote == canonical(remote.ip())
            })
        };
        assert!(
            has(&c4).is_none() && has(&s4).is_none(),
            "127/8 is excluded"
        );
        assert_eq!(has(&c6).map(|c| c.1), Some(Direction::Outbound));
        assert_eq!(
            has(&s6).map(|c| c.1),
            Some(Direction::Inbound),
            "the listener came through the filter"
        );
        // Nothing else of 127/8 either, whoever else runs here.
        assert!(
            conns.iter().all(|(k, _)| !ranges[0].contains(k.remote)),
            "{conns:?}"
        );
        // Too many ranges for one filter: no filter, nothing refused.
        let many: Vec<Cidr> = (0..3000)
            .map(|i| format!("2001:db8:{i:x}::/48").parse().unwrap())
            .collect();
        assert!(Filter::excluding(&many).0.is_empty());
        assert!(
            !established(7, &Filter::excluding(&many))
                .unwrap()
                .is_empty()
        );
    }

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
            Filter::default(),
            Filter::excluding(&["fe80::/10".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]),
            Filter::excluding(&["127.0.0.0/8".parse().unwrap()]),
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
            let both = mine(dump(Dump::Both, 7, Pass::Connections, &filter).unwrap());
            let each = mine(per_family(7, Pass::Connections, &filter).unwrap());
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
        dump(Dump::Both, 7, Pass::Connections, &Filter::default())
            .unwrap()
            .iter()
            .filter(|s| ports.contains(&s.key.local_port) || ports.contains(&s.key.remote_port))
            .count()
    }

    /// The bytes pass reads each ESTABLISHED socket's counters from
    /// `tcp_info`: what each end sent and received (the connecting end's
    /// SYN counted in what it sent), and lists closing sockets.
    #[test]
    fn the_bytes_pass_reads_tcp_info() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[1; 1234]).unwrap();
        let mut b = vec![0; 1234];
        s.read_exact(&mut b).unwrap();
        s.write_all(&[2; 77]).unwrap();
        let mut b = vec![0; 77];
        c.read_exact(&mut b).unwrap();
        // Let the last ACKs arrive.
        std::thread::sleep(Duration::from_millis(50));
        let found = sockets(7, Pass::Bytes, &Filter::default()).unwrap();
        let counters = |local: std::net::SocketAddr| {
            found
                .iter()
                .find(|d| {
                    d.key.local_port == local.port() && i32::from(d.state) == tcp_state::ESTABLISHED
                })
                .and_then(|d| d.counters)
        };
        assert_eq!(
            counters(c.local_addr().unwrap()),
            Some(Counters {
                received: 77,
                acked: 1235
            }),
            "client: its SYN is in acked"
        );
        assert_eq!(
            counters(s.local_addr().unwrap()),
            Some(Counters {
                received: 1234,
                acked: 77
            })
        );
        // After a FIN the socket is closing: listed, without counters.
        c.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut snap = Snapshot::default();
        snap.add(
            Pass::Bytes,
            &sockets(7, Pass::Bytes, &Filter::default()).unwrap(),
            false,
        );
        let port = |k: &ConnKey| k.local_port;
        assert!(
            snap.closing
                .iter()
                .any(|k| port(k) == c.local_addr().unwrap().port())
        );
        assert!(
            snap.closing
                .iter()
                .any(|k| port(k) == s.local_addr().unwrap().port())
        );
        assert!(
            !snap
                .bytes
                .iter()
                .any(|(k, _)| port(k) == s.local_addr().unwrap().port())
        );
    }

    #[test]
    fn direction_comes_from_listening_ports() {
        let k = |lp, rp| ConnKey {
            local: ip("192.0.2.1"),
            remote: ip("198.51.100.1"),
            local_port: lp,
            remote_port: rp,
            netns: 1,
        };
        let sockets = [
            DiagSocket {
                state: 10,
                key: k(443, 0),
                counters: None,
                inode: 0,
            },
            DiagSocket {
                state: 1,
                key: k(443, 50000),
                counters: None,
                inode: 0,
            },
            DiagSocket {
                state: 1,
                key: k(50001, 443),
                counters: None,
                inode: 0,
            },
        ];
        let got = classify(&sockets);
        assert_eq!(
            got,
            vec![
                (k(443, 50000), Direction::Inbound, 0),
                (k(50001, 443), Direction::Outbound, 0)
            ]
        );
    }
}
