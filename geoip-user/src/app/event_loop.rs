//! The one task that owns the connection table, on a thread of its own
//! with its own (single-thread) runtime: it reads the ring buffer and
//! applies events, takes the start-up snapshot and merges it, reconciles
//! after lost events, counts the bytes of open connections, answers the
//! HTTP side's questions and swaps in reloaded databases. Applying a
//! burst of events or merging a reconcile of 100,000 connections never
//! delays a scrape, and a burst of scrapes never delays the ring buffer.
//! No hand-off: a busy table fills the ring, and the kernel counts what it
//! drops.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, Interval, MissedTickBehavior},
};

use super::{error::AppError, reconcile::ReconcilePolicy};
use crate::{
    geo::Databases,
    kernel::{
        events::{DecodeError, Event},
        losses::KernelLosses,
        probe::ProbeError,
        ring::EventReader,
    },
    metrics::Metrics,
    snapshot::{Pass, Scope, Snapshot, SnapshotError, Snapshotter},
    table::{Query, SyncKind, SyncReport, Tracker},
};

/// Decoded ring-buffer records.
type Batch = Vec<Result<Event, DecodeError>>;

/// The longest a merge waits for records reserved before its snapshot
/// ended to be written.
const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// How often the busiest ASN and city values may displace quiet ones in
/// their capped families: rarely enough that the set of series does not
/// change from one scrape to the next.
const RERANK: Duration = Duration::from_mins(5);

/// What a merged snapshot found.
pub(super) struct Synced {
    pub(super) seen: usize,
    pub(super) namespaces: usize,
}

/// The event thread's start-up result: the merge of what existed, and
/// how many connections are tracked after it.
pub(super) type Ready = Result<(Synced, usize), AppError>;

type SnapshotReceiver = oneshot::Receiver<Result<Snapshot, SnapshotError>>;

/// The task that owns the connection table.
pub(super) struct EventLoop {
    pub(super) reader: EventReader,
    pub(super) tracker: Tracker,
    pub(super) metrics: Metrics,
    pub(super) snapshotter: Snapshotter,
    pub(super) scope: Scope,
    pub(super) geo_updates: mpsc::Receiver<Databases>,
    pub(super) queries: mpsc::Receiver<Query>,
    /// The kernel's counts of events it could not hand over.
    pub(super) losses: Arc<KernelLosses>,
    /// How often the bytes of open connections are counted
    /// (`--metrics.bytes-interval`), if they are.
    pub(super) bytes_every: Option<Duration>,
    /// When to reconcile, if ever.
    pub(super) reconcile: Option<ReconcilePolicy>,
    /// Set false when the ring buffer can no longer be read: the counts
    /// are stale.
    pub(super) healthy: Arc<std::sync::atomic::AtomicBool>,
    pub(super) batch: Batch,
    /// Ring-buffer records that could not be decoded (each may have been
    /// an event).
    pub(super) undecodable: u64,
}

/// The event loop's timers and the snapshots it waits for.
struct Schedule {
    /// When the loss counts are looked at (with a reconcile policy).
    checks: Option<Interval>,
    reranks: Interval,
    /// When the bytes of open connections are counted.
    byte_passes: Option<Interval>,
    /// The losses when the last successful reconcile began.
    baseline: u64,
    /// When it began (the start-up snapshot was one).
    last_reconcile: Instant,
    /// A reconcile under way: its snapshot, and the losses and time when
    /// it began.
    reconciling: Option<(SnapshotReceiver, u64, Instant)>,
    /// A bytes pass under way, and the table's clock when it was asked.
    counting: Option<(SnapshotReceiver, u32)>,
}

fn every(period: Duration) -> Interval {
    let mut t = tokio::time::interval_at(Instant::now() + period, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

impl EventLoop {
    /// The event thread: on `runtime` (the one the reader is registered
    /// with), the start-up snapshot (reported on `ready`), then the event
    /// loop until `stop` is sent or dropped.
    pub(super) fn run_thread(
        mut self,
        runtime: &tokio::runtime::Runtime,
        ready: oneshot::Sender<Ready>,
        stop: oneshot::Receiver<()>,
    ) {
        runtime.block_on(async move {
            let started = Instant::now();
            match self.sync(SyncKind::Startup).await {
                Ok(synced) => {
                    let tracked = self.tracker.len();
                    if ready.send(Ok((synced, tracked))).is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let _ = ready.send(Err(err));
                    return;
                }
            }
            tokio::select! {
                () = self.process(started) => {}
                _ = stop => {}
            }
        });
    }

    fn apply_batch(&mut self) {
        let _updating = self.metrics.updating();
        for record in self.batch.drain(..) {
            match record {
                Ok(event) => {
                    self.tracker.apply(&event);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "undecodable ring buffer record");
                    self.tracker.recorder().undecodable();
                    self.undecodable += 1;
                }
            }
        }
    }

    /// Events the kernel lost or skipped, and records that could not be
    /// decoded, since the program was loaded.
    fn losses(&self) -> u64 {
        let kernel = self.losses.lost() + self.losses.missed().unwrap_or(0);
        kernel + self.undecodable
    }

    /// Take a snapshot while applying events, then merge it.
    async fn sync(&mut self, kind: SyncKind) -> Result<Synced, AppError> {
        self.tracker.begin_sync();
        let snapshot = self.snapshotter.request(self.scope, Pass::Connections)?;
        tokio::pin!(snapshot);
        let taken = loop {
            tokio::select! {
                taken = &mut snapshot => break taken,
                read = self.reader.read_batch(&mut self.batch) => {
                    read.map_err(ProbeError::Poll)?;
                    self.apply_batch();
                }
            }
        };
        self.merge(taken, kind).await.map_err(AppError::Snapshot)
    }

    /// Merge a finished snapshot, after applying every event of a state
    /// change that happened before it ended. The kernel reserves a
    /// change's record before the socket's state changes, so every such
    /// record lies before the producer position read now; but the ring
    /// buffer hands records over in order and stops at one still being
    /// written (its program may be interrupted or preempted for a while),
    /// so reading goes on until the consumer position has passed it.
    async fn merge(
        &mut self,
        taken: Result<Result<Snapshot, SnapshotError>, oneshot::error::RecvError>,
        kind: SyncKind,
    ) -> Result<Synced, SnapshotError> {
        self.settle().await;
        let snap = match taken.unwrap_or(Err(SnapshotError::Lost)) {
            Ok(snap) => snap,
            Err(err) => {
                // Nothing is judged: the table stays as the events made it.
                self.tracker.abort_sync();
                return Err(err);
            }
        };
        self.metrics.snapshot_taken(
            snap.scanned.len(),
            snap.unreadable.len(),
            snap.elapsed.as_secs_f64(),
        );
        let synced = Synced {
            seen: snap.conns.len(),
            namespaces: snap.scanned.len(),
        };
        let report = {
            let _updating = self.metrics.updating();
            self.tracker.finish_sync(&snap, kind)
        };
        // The snapshot and the merge's working set (megabytes at 100,000
        // connections) are freed now: give the memory back rather than let
        // the allocator keep it.
        drop(snap);
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        if kind == SyncKind::Reconcile && report != SyncReport::default() {
            tracing::info!(
                added = report.added,
                removed = report.removed,
                "reconcile corrected the connection table"
            );
        }
        Ok(synced)
    }

    /// Apply every record reserved until now, waiting (up to
    /// [`SETTLE_LIMIT`]) for those still being written.
    async fn settle(&mut self) {
        let target = self.reader.reserved_until();
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            self.reader.drain_now(&mut self.batch);
            self.apply_batch();
            if self.reader.read_until(target) {
                return;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    "ring buffer records reserved before the snapshot ended are still being written after {SETTLE_LIMIT:?}; merging without them"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The event loop, after the start-up snapshot that began at
    /// `last_reconcile` (it was one).
    async fn process(mut self, last_reconcile: Instant) {
        let mut s = Schedule {
            checks: self.reconcile.map(|p| every(p.check)),
            reranks: every(RERANK),
            byte_passes: self.bytes_every.map(every),
            // Anything lost since the program was loaded, the start-up
            // snapshot's time included, is reason for the first check to
            // reconcile.
            baseline: 0,
            last_reconcile,
            reconciling: None,
            counting: None,
        };
        loop {
            tokio::select! {
                read = self.reader.read_batch(&mut self.batch) => {
                    if let Err(err) = read {
                        tracing::error!(error = %err, "reading the kernel ring buffer failed; counts are no longer updated");
                        self.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    self.apply_batch();
                }
                () = tick(s.checks.as_mut()), if s.reconciling.is_none() => self.check_losses(&mut s),
                taken = wait(s.reconciling.as_mut().map(|p| &mut p.0)), if s.reconciling.is_some() => {
                    self.reconciled(&mut s, taken).await;
                }
                Some(query) = self.queries.recv() => self.tracker.answer(query),
                Some(dbs) = self.geo_updates.recv() => {
                    // Dropping the old country table (megabytes) is left
                    // to a blocking thread.
                    let old = {
                        let _updating = self.metrics.updating();
                        self.tracker.replace_databases(dbs)
                    };
                    tokio::task::spawn_blocking(move || drop(old));
                }
                _ = s.reranks.tick() => {
                    let _updating = self.metrics.updating();
                    self.tracker.rerank();
                }
                () = tick(s.byte_passes.as_mut()), if s.counting.is_none() => self.count_bytes(&mut s),
                taken = wait(s.counting.as_mut().map(|p| &mut p.0)), if s.counting.is_some() => {
                    self.counted(&mut s, taken);
                }
            }
        }
    }

    /// A loss check: start a reconcile if the policy says one is due.
    fn check_losses(&mut self, s: &mut Schedule) {
        let Some(policy) = self.reconcile else {
            return;
        };
        let losses = self.losses();
        if !policy.due(s.baseline, losses, s.last_reconcile.elapsed()) {
            return;
        }
        tracing::debug!(since_last = ?s.last_reconcile.elapsed(), lost_or_skipped = losses.saturating_sub(s.baseline), "reconciling");
        self.tracker.begin_sync();
        match self.snapshotter.request(self.scope, Pass::Connections) {
            Ok(rx) => s.reconciling = Some((rx, losses, Instant::now())),
            Err(err) => {
                self.tracker.abort_sync();
                self.metrics.reconciled(false);
                tracing::warn!(error = %crate::error::chain(&err), "reconcile skipped");
            }
        }
    }

    /// A reconcile's snapshot came: merge it.
    async fn reconciled(
        &mut self,
        s: &mut Schedule,
        taken: Result<Result<Snapshot, SnapshotError>, oneshot::error::RecvError>,
    ) {
        let Some((_, losses, began)) = s.reconciling.take() else {
            return;
        };
        let merged = self.merge(taken, SyncKind::Reconcile).await;
        self.metrics.reconciled(merged.is_ok());
        match merged {
            Ok(_) => {
                s.baseline = losses;
                s.last_reconcile = began;
            }
            Err(err) => {
                tracing::warn!(error = %crate::error::chain(&err), "reconcile failed; trying again at the next check");
            }
        }
    }

    /// Ask for the bytes of open connections.
    fn count_bytes(&mut self, s: &mut Schedule) {
        match self.snapshotter.request(self.scope, Pass::Bytes) {
            Ok(rx) => s.counting = Some((rx, self.tracker.now())),
            Err(err) => {
                tracing::warn!(error = %crate::error::chain(&err), "counting the bytes of open connections skipped");
            }
        }
    }

    /// The bytes of open connections came: count them.
    fn counted(
        &mut self,
        s: &mut Schedule,
        taken: Result<Result<Snapshot, SnapshotError>, oneshot::error::RecvError>,
    ) {
        let Some((_, began)) = s.counting.take() else {
            return;
        };
        match taken {
            Ok(Ok(snap)) => {
                let _updating = self.metrics.updating();
                self.tracker.account(&snap, began);
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %crate::error::chain(&err), "counting the bytes of open connections failed; trying again at the next interval");
            }
            Err(_) => tracing::warn!(
                "the snapshot thread stopped; the bytes of open connections are counted when they close"
            ),
        }
    }
}

async fn tick(every: Option<&mut Interval>) {
    match every {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn wait(
    pending: Option<&mut SnapshotReceiver>,
) -> Result<Result<Snapshot, SnapshotError>, oneshot::error::RecvError> {
    match pending {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}
