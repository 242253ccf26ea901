//! The TCP connections the kernel holds, read from its netlink
//! `sock_diag` interface: at start-up (what existed before the program was
//! attached), for the reconcile after lost events, and for the byte
//! counters of open connections (`--metrics.bytes`).
//!
//! From the wire up: [`sock_diag`] talks to the kernel (one dump of the
//! calling thread's namespace), [`bytecode`] is the filter the kernel runs
//! on each socket of it, [`namespaces`] lists and enters the host's
//! network namespaces, [`owners`] finds the process holding a socket;
//! [`take`] makes one snapshot of them all, on the one thread of
//! [`thread`] that may enter other namespaces.

mod bytecode;
mod namespaces;
mod owners;
pub(crate) mod sock_diag;
mod take;
mod thread;

pub(crate) use take::{Pass, Scope, Snapshot, SnapshotError};
pub(crate) use thread::Snapshotter;
