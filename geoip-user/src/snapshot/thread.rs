//! The one thread that takes snapshots, and how the exporter asks it for
//! one.
//!
//! `sock_diag` answers for the namespace its socket was made in, so the
//! thread enters each of the host's network namespaces in turn (see
//! [`super::namespaces`]); entering one must never happen to a runtime
//! thread.

use std::fs::File;

use super::{
    bytecode::Bytecode,
    namespaces,
    take::{Pass, Scope, Snapshot, SnapshotError, take},
};
use crate::{
    capabilities::{self, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN, CAP_SYS_PTRACE},
    exclude::Cidr,
};

/// The snapshot thread's nice value: a reconcile of 100,000 connections
/// takes a few hundred milliseconds of CPU, which must not delay scrapes.
const SNAPSHOT_NICE: i32 = 10;

type Reply = tokio::sync::oneshot::Sender<Result<Snapshot, SnapshotError>>;

/// A request to the snapshot thread.
type Job = (Scope, Pass, Reply);

/// The one thread that takes snapshots. It enters other namespaces (which
/// must never happen to a runtime thread), so it is the one thread that
/// keeps `CAP_SYS_ADMIN` and `CAP_SYS_PTRACE`: it is started before the
/// exporter drops its capabilities, and drops every other one itself.
pub(crate) struct Snapshotter {
    requests: std::sync::mpsc::Sender<Job>,
}

impl Snapshotter {
    /// Start the thread (call it while the process still has its
    /// capabilities). With `owners`, the first [`Pass::Connections`]
    /// snapshot (start-up) also finds the process holding each outbound
    /// connection (see [`super::owners`]); the thread keeps
    /// `CAP_DAC_READ_SEARCH` until then, to open other users'
    /// `/proc/PID/fd`. Later ones (reconciles) do not search: the
    /// connections they add are only those whose events were lost, and the
    /// search reads every open file of every process (2.5 s for 200,000
    /// on the benchmark VM).
    pub(crate) fn start(exclude: &[Cidr], owners: bool) -> Result<Self, SnapshotError> {
        let bytecode = Bytecode::excluding(exclude);
        let (requests, incoming) = std::sync::mpsc::channel::<Job>();
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
                        let answer = take(scope, pass, &bytecode, first);
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
