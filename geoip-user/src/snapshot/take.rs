//! One snapshot: the TCP sockets of the exporter's own network namespace
//! and (for [`Scope::All`]) of every other one, entered in turn, each
//! connection with its direction; with the process holding each outbound
//! one, or with each connection's byte counters, when asked.
//!
//! Listening sockets come in the same dump: a connection whose local port
//! is a listening port of its namespace was accepted (inbound), any other
//! was made (outbound).

use std::{
    collections::{HashMap, HashSet},
    io,
    path::Path,
    time::{Duration, Instant},
};

use geoip_common::tcp_state;

use super::{
    bytecode::Bytecode,
    namespaces::{self, NetNs},
    owners,
    sock_diag::{self, DiagSocket, DumpError},
};
use crate::conn::{Comm, ConnKey, Counters, Direction};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(transparent)]
    Dump(#[from] DumpError),
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
    /// What its dumps ask the kernel for.
    const fn request(self) -> sock_diag::Request {
        let states = match self {
            Self::Connections => (1 << tcp_state::ESTABLISHED) | (1 << tcp_state::LISTEN),
            Self::Bytes => {
                (1 << tcp_state::ESTABLISHED)
                    | (1 << tcp_state::FIN_WAIT1)
                    | (1 << tcp_state::FIN_WAIT2)
                    | (1 << tcp_state::CLOSE_WAIT)
                    | (1 << tcp_state::LAST_ACK)
                    | (1 << tcp_state::CLOSING)
            }
        };
        sock_diag::Request {
            states,
            tcp_info: matches!(self, Self::Bytes),
        }
    }
}

/// What a snapshot saw.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// ESTABLISHED connections and their direction ([`Pass::Connections`]).
    pub(crate) conns: Vec<(ConnKey, Direction)>,
    /// The process holding each outbound connection, when asked for
    /// ([`super::Snapshotter::start`] with `owners`: at start-up).
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

/// Dump the exporter's own namespace, then (for [`Scope::All`]) enter
/// each other one in turn. Runs on the snapshot thread, which starts in
/// the exporter's namespace.
pub(super) fn take(
    scope: Scope,
    pass: Pass,
    bytecode: &Bytecode,
    owners: bool,
) -> Result<Snapshot, SnapshotError> {
    let start = Instant::now();
    let own = namespaces::own().map_err(SnapshotError::OwnNamespace)?;
    let mut snap = Snapshot::default();
    let own_tag = match scope {
        Scope::All => own.id,
        Scope::OwnUntagged => 0,
    };
    snap.add(
        pass,
        &sock_diag::sockets(own_tag, pass.request(), bytecode)?,
        owners,
    );
    snap.scanned.insert(own_tag);
    if scope == Scope::All {
        for ns in namespaces::all().into_iter().filter(|ns| ns.id != own.id) {
            match enter_and_dump(&ns, pass, bytecode) {
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
    Dump(#[from] DumpError),
}

fn enter_and_dump(
    ns: &NetNs,
    pass: Pass,
    bytecode: &Bytecode,
) -> Result<Vec<DiagSocket>, EnterError> {
    namespaces::enter(ns).map_err(EnterError::Enter)?;
    Ok(sock_diag::sockets(ns.id, pass.request(), bytecode)?)
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

#[cfg(test)]
mod tests;
