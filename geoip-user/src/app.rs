//! Start-up, the event loop and shutdown.
//!
//! Order matters: every check that changes nothing in the kernel runs first
//! (database, listen address, privileges, tracefs), so a bad flag leaves
//! nothing half-started; then the program is attached, then the existing
//! connections are enumerated, then both are merged. Everything that needs
//! privileges happens in [`start`], before any thread but the main one
//! exists, which then drops its capabilities. After that one task
//! owns the connection table ([`EventLoop`]), the HTTP server reads
//! metrics, and [`Reloader`] hands it new databases.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use geoip_common::feature;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::{
    capabilities,
    check::Found,
    cli::{Args, Label},
    exclude::Exclusions,
    geo::{Databases, OpenError, Records, Wants},
    kernel::{
        events::{DecodeError, Event},
        log,
        losses::KernelLosses,
        probe::{self, Probe, ProbeError},
        ring::EventReader,
    },
    metrics::{Metrics, MetricsError, Wanted},
    reload::Reloader,
    snapshot::{Pass, Scope, Snapshot, SnapshotError, Snapshotter},
    table::{LabelLimits, Labels, Measures, Query, SyncKind, SyncReport, Tracker},
    web::{
        self, AppState, BasicAuth, Limits, Transport, WebConfig, WebConfigError, router,
        with_basic_auth,
    },
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    #[error(transparent)]
    Database(#[from] OpenError),
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
    #[error(
        "cannot listen on {addr}: address already in use; pass another --web.listen-address or stop what listens there"
    )]
    AddrInUse {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr}; pass another --web.listen-address")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("enumerating the connections that already exist failed")]
    Snapshot(#[from] SnapshotError),
    #[error("setting up metrics failed")]
    Metrics(#[from] MetricsError),
    #[error("serving HTTP failed")]
    Serve(#[source] io::Error),
    #[error("starting the event thread failed")]
    EventThread(#[source] io::Error),
}

impl AppError {
    /// 2 for what the user fixes with flags or input files, 1 otherwise.
    pub(crate) const fn exit_code(&self) -> u8 {
        match self {
            Self::Database(_) | Self::WebConfig(_) | Self::AddrInUse { .. } | Self::Bind { .. } => {
                2
            }
            _ => 1,
        }
    }
}

/// Decoded ring-buffer records.
type Batch = Vec<Result<Event, DecodeError>>;

/// The longest a merge waits for records reserved before its snapshot
/// ended to be written.
const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// How often the busiest ASN and city values may displace quiet ones in
/// their capped families: rarely enough that the set of series does not
/// change from one scrape to the next.
const RERANK: Duration = Duration::from_mins(5);

/// How long requests in flight may take to finish after SIGTERM before
/// their connections are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            AppError::AddrInUse { addr, source }
        } else {
            AppError::Bind { addr, source }
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| AppError::Bind { addr, source })?;
    Ok(listener)
}

/// What the privileged start-up made, for [`run`].
pub(crate) struct Started {
    databases: Databases,
    users: HashMap<String, String>,
    transport: Transport,
    listener: std::net::TcpListener,
    probe: Probe,
    snapshotter: Snapshotter,
}

/// The databases `--geoip.database` names, as `--labels` needs them.
pub(crate) fn open_databases(args: &Args) -> Result<Databases, OpenError> {
    Databases::open(&args.database, wants(args))
}

/// Everything that needs privileges, on the main thread before any other
/// thread exists: check the other inputs, load and attach the kernel
/// program, start the snapshot thread; then drop every capability of this
/// thread (threads made later, the runtime's included, inherit none).
pub(crate) fn start(args: &Args, databases: Databases) -> Result<Started, AppError> {
    let db = databases.country.info();
    let ranges = databases.country.table_size();
    tracing::info!(
        path = %db.path.display(),
        database_type = %db.database_type,
        build_epoch = db.build_epoch,
        ipv4_ranges = ranges.0,
        ipv6_ranges = ranges.1,
        table_bytes = ranges.2,
        "GeoIP database opened and flattened"
    );
    let (users, transport) = match &args.web_config {
        Some(path) => {
            let web = WebConfig::load(path)?;
            let transport = web
                .tls
                .map_or(Transport::Plain, |t| Transport::Tls(Arc::new(t)));
            (web.users, transport)
        }
        None => (HashMap::new(), Transport::Plain),
    };
    let listener = bind(args.listen_address)?;
    let probe = probe::prepare(args.ring_buffer_bytes, features(args))?.load_and_attach()?;
    tracing::info!(
        ring_buffer_bytes = args.ring_buffer_bytes,
        "kernel program attached to sock/inet_sock_set_state"
    );
    // Outbound connections already open are named after the process
    // holding them (the kernel program saw no connect() of theirs).
    let snapshotter = Snapshotter::start(
        Exclusions::new(&args.exclude).ranges(),
        args.labels.contains(&Label::Service),
    )?;
    // Reading the kernel's BTF (several MB) and the eBPF object left freed
    // heap behind; give it back to the system before serving.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    match capabilities::restrict_thread(0) {
        Ok(_) => tracing::info!(
            "capabilities dropped (the snapshot thread keeps CAP_SYS_ADMIN and CAP_SYS_PTRACE to enter network namespaces, and with --labels service CAP_DAC_READ_SEARCH until start-up has read /proc/PID/fd)"
        ),
        Err(err) => tracing::warn!(error = %err, "cannot drop capabilities"),
    }
    for (what, info) in [
        ("ASN", databases.asn.as_ref().map(Records::info)),
        ("city", databases.city.as_ref().map(Records::info)),
    ] {
        if let Some(info) = info {
            tracing::info!(path = %info.path.display(), database_type = %info.database_type, build_epoch = info.build_epoch, "{what} database opened");
        }
    }
    Ok(Started {
        databases,
        users,
        transport,
        listener,
        probe,
        snapshotter,
    })
}

/// Run the exporter until `shutdown` completes; with `--check`, only until
/// the connections that exist are merged, returning what was found.
pub(crate) async fn run(
    args: Args,
    started: Started,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<Found>, AppError> {
    let Started {
        databases,
        users,
        transport,
        listener,
        probe,
        snapshotter,
    } = started;
    let db = databases.country.info().clone();
    let listener = TcpListener::from_std(listener).map_err(|source| AppError::Bind {
        addr: args.listen_address,
        source,
    })?;
    let (tracker, metrics) = tracker(&args, databases)?;
    metrics.set_database_build(db.build_epoch);
    let (query_tx, query_rx) = mpsc::channel(4);
    let state = AppState::new(metrics.clone(), &args.telemetry_path, &db)
        .with_queries(query_tx, args.connections_api);
    let losses = Arc::new(probe.losses);
    let (lost, missed) = (losses.clone(), losses.clone());
    metrics.register_kernel_losses(
        Box::new(move || lost.lost()),
        Box::new(move || missed.missed()),
    )?;
    if let Some(logger) = probe.logger {
        log::forward(logger);
    }
    let scope = if probe.namespaces {
        Scope::All
    } else {
        Scope::OwnUntagged
    };
    let reconcile = reconcile_policy(scope, args.reconcile_interval, args.reconcile_max_interval);

    // Attached first, so nothing that opens from now on is missed; events
    // are applied while sock_diag enumerates what exists, and the merge
    // leaves every connection an event touched meanwhile as the events
    // say, so each one counts once.
    //
    // The table lives on a thread of its own, with its own (single-thread)
    // runtime: applying a burst of events or merging a reconcile of
    // 100,000 connections never delays a scrape, and a burst of scrapes
    // never delays the ring buffer.
    let (geo_tx, geo_rx) = mpsc::channel(1);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (runtime, reader) = event_runtime(probe.ring, probe.control)?;
    let events = EventLoop {
        reader,
        tracker,
        metrics: metrics.clone(),
        snapshotter,
        scope,
        batch: Vec::new(),
        geo_updates: geo_rx,
        queries: query_rx,
        losses,
        undecodable: 0,
        bytes_every: (args.bytes && !args.bytes_interval.is_zero()).then_some(args.bytes_interval),
    };
    let loop_state = state.clone();
    let thread = std::thread::Builder::new()
        .name("geoip-events".into())
        .spawn(move || {
            if let Some(rt) = &runtime.0 {
                events.run_thread(rt, reconcile, loop_state, ready_tx, stop_rx);
            }
        })
        .map_err(AppError::EventThread)?;
    let (startup, tracked_at_start) = ready_rx.await.map_err(|_| {
        AppError::EventThread(io::Error::other("the event thread ended before it started"))
    })??;
    tracing::info!(
        established = startup.seen,
        namespaces = startup.namespaces,
        tracked = tracked_at_start,
        "existing connections merged"
    );

    if args.check {
        drop(stop_tx);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        return Ok(Some(Found {
            tracked: tracked_at_start,
            namespaces: startup.namespaces,
        }));
    }

    let reloader = tokio::spawn(
        Reloader {
            paths: args.database.clone(),
            wants: wants(&args),
            to_tracker: geo_tx,
            metrics: metrics.clone(),
            state: state.clone(),
        }
        .run(),
    );
    let local = listener.local_addr().map_err(AppError::Serve)?;
    tracing::info!(address = %local, path = %args.telemetry_path, "serving metrics");
    let mut app = router(state, &args.telemetry_path);
    if !users.is_empty() {
        app = with_basic_auth(app, Arc::new(BasicAuth::new(users)));
    }
    let served = web::serve(listener, app, limits(&args), transport, metrics, shutdown).await;
    tracing::info!("shutting down: detaching the kernel program");
    reloader.abort();
    drop(stop_tx);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    served.map(|()| None).map_err(AppError::Serve)
}

/// The connection table on `databases`, and the metrics it updates (with
/// the families `--labels` asks for).
fn tracker(args: &Args, databases: Databases) -> Result<(Tracker, Metrics), AppError> {
    let Databases { country, asn, city } = databases;
    let metrics = Metrics::with_families(
        args.legacy_job_location,
        Wanted {
            service: args.labels.contains(&Label::Service),
            asn: asn.is_some(),
            city: city.is_some(),
            duration: args.duration,
            bytes: args.bytes,
        },
    )?;
    let limits = LabelLimits {
        service: args.service_limit,
        asn: args.asn_limit,
        city: args.city_limit,
    };
    let mut tracker = Tracker::new(Exclusions::new(&args.exclude), country, metrics.recorder())
        .with_labels(Labels::new(
            args.labels.contains(&Label::Service),
            asn,
            city,
            limits,
        ))
        .with_measures(Measures::new(args.duration, args.bytes));
    if args.connections_api {
        tracker = tracker.keeping_addresses();
    }
    Ok((tracker, metrics))
}

/// The event thread's runtime (a single-thread one). Made where another
/// runtime runs, it must not be dropped there (tokio refuses to block
/// inside a runtime): dropping this shuts it down in the background.
struct EventRuntime(Option<tokio::runtime::Runtime>);

impl Drop for EventRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The event thread's runtime, and the ring-buffer reader registered with
/// it.
fn event_runtime(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    control: aya::maps::Array<aya::maps::MapData, u32>,
) -> Result<(EventRuntime, EventReader), AppError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::EventThread)?;
    let reader = {
        let _entered = rt.enter();
        EventReader::new(ring, control)
    };
    // Wrapped before a failed reader returns: the guard drops it.
    let runtime = EventRuntime(Some(rt));
    Ok((runtime, reader?))
}

/// What the kernel program reports beyond opens and closes.
fn features(args: &Args) -> u32 {
    let mut features = 0;
    if args.labels.contains(&Label::Service) {
        features |= feature::COMM;
    }
    if args.duration {
        features |= feature::TIME;
    }
    if args.bytes {
        features |= feature::BYTES;
    }
    features
}

/// The databases `--labels` needs besides a country database.
fn wants(args: &Args) -> Wants {
    Wants {
        asn: args.labels.contains(&Label::Asn),
        city: args.labels.contains(&Label::City),
    }
}

fn limits(args: &Args) -> Limits {
    Limits {
        max_connections: args.max_connections,
        max_header_bytes: args.max_header_bytes,
        header_timeout: args.header_timeout,
        shutdown_grace: SHUTDOWN_GRACE,
    }
}

/// When the event loop reconciles, if it does: not when disabled, and not
/// when namespaces cannot be told apart (it would take containers'
/// connections for stale ones).
fn reconcile_policy(scope: Scope, every: Duration, max: Duration) -> Option<ReconcilePolicy> {
    match (scope, every) {
        (_, Duration::ZERO) => None,
        (Scope::OwnUntagged, _) => {
            tracing::warn!("the reconcile is off: namespaces cannot be told apart on this kernel");
            None
        }
        (Scope::All, every) => Some(ReconcilePolicy {
            check: every,
            max: (!max.is_zero()).then_some(max),
        }),
    }
}

/// When the table is compared with the kernel's sockets. Without a lost,
/// skipped or undecodable event the table is exact by construction (every
/// connection is opened and closed by its own events, merged with the
/// start-up snapshot), so a reconcile, which dumps every socket of every
/// namespace, runs only when the kernel reported one, and otherwise at
/// most every `max` as a safety net.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReconcilePolicy {
    /// How often the loss counts are looked at; at most one reconcile
    /// starts per check.
    check: Duration,
    /// The longest between two reconciles, losses or not.
    max: Option<Duration>,
}

impl ReconcilePolicy {
    /// Whether to reconcile now: the kernel lost or skipped events (or
    /// records were undecodable) since the last reconcile began, when the
    /// count was `baseline`, or `max` has passed since.
    fn due(self, baseline: u64, losses: u64, since_last: Duration) -> bool {
        losses > baseline || self.max.is_some_and(|max| since_last >= max)
    }
}

/// What a merged snapshot found.
struct Synced {
    seen: usize,
    namespaces: usize,
}

/// The event thread's start-up result: the merge of what existed, and
/// how many connections are tracked after it.
type Ready = Result<(Synced, usize), AppError>;

/// The one task that owns the connection table: reads the ring buffer,
/// applies events, runs the reconcile and swaps in reloaded databases.
/// No hand-off: a busy table fills the ring, and the kernel counts what
/// it drops.
struct EventLoop {
    reader: EventReader,
    tracker: Tracker,
    metrics: Metrics,
    snapshotter: Snapshotter,
    scope: Scope,
    batch: Batch,
    geo_updates: mpsc::Receiver<Databases>,
    queries: mpsc::Receiver<Query>,
    /// The kernel's counts of events it could not hand over.
    losses: Arc<KernelLosses>,
    /// Ring-buffer records that could not be decoded (each may have been
    /// an event).
    undecodable: u64,
    /// How often the bytes of open connections are counted
    /// (`--metrics.bytes-interval`), if they are.
    bytes_every: Option<Duration>,
}

impl EventLoop {
    /// The event thread: on `runtime` (the one the reader is registered
    /// with), the start-up snapshot (reported on `ready`), then the event
    /// loop until `stop` is sent or dropped.
    fn run_thread(
        mut self,
        runtime: &tokio::runtime::Runtime,
        reconcile: Option<ReconcilePolicy>,
        state: AppState,
        ready: oneshot::Sender<Ready>,
        stop: oneshot::Receiver<()>,
    ) {
        runtime.block_on(async move {
            let started = tokio::time::Instant::now();
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
                () = self.run(reconcile, started, state) => {}
                _ = stop => {}
            }
        });
    }

    fn apply_batch(&mut self) {
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
        let kernel = self.losses.lost().unwrap_or(0) + self.losses.missed().unwrap_or(0);
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
        let target = self.reader.reserved_until();
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            self.reader.drain_now(&mut self.batch);
            self.apply_batch();
            if self.reader.read_until(target) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    "ring buffer records reserved before the snapshot ended are still being written after {SETTLE_LIMIT:?}; merging without them"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
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
        let report = self.tracker.finish_sync(&snap, kind);
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

    /// `last_reconcile`: when the start-up snapshot began (it was one).
    async fn run(
        mut self,
        policy: Option<ReconcilePolicy>,
        mut last_reconcile: tokio::time::Instant,
        state: AppState,
    ) {
        let mut checks = policy.map(|p| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p.check, p.check);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        // Anything lost since the program was loaded, the start-up
        // snapshot's time included, is reason for the first check to
        // reconcile.
        let mut baseline = 0;
        // A reconcile under way: its snapshot, and the losses and time when
        // it began (the baseline and time of the last reconcile once it
        // succeeds).
        let mut pending: Option<(SnapshotReceiver, u64, tokio::time::Instant)> = None;
        let mut reranks = tokio::time::interval_at(tokio::time::Instant::now() + RERANK, RERANK);
        reranks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut byte_passes = self.bytes_every.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut pending_bytes: Option<(SnapshotReceiver, u32)> = None;
        loop {
            tokio::select! {
                read = self.reader.read_batch(&mut self.batch) => {
                    if let Err(err) = read {
                        tracing::error!(error = %err, "reading the kernel ring buffer failed; counts are no longer updated");
                        state.healthy.store(false, Ordering::Relaxed);
                        return;
                    }
                    self.apply_batch();
                }
                () = tick(checks.as_mut()), if pending.is_none() => {
                    let Some(policy) = policy else { continue };
                    let losses = self.losses();
                    if !policy.due(baseline, losses, last_reconcile.elapsed()) {
                        continue;
                    }
                    tracing::debug!(since_last = ?last_reconcile.elapsed(), lost_or_skipped = losses.saturating_sub(baseline), "reconciling");
                    self.tracker.begin_sync();
                    match self.snapshotter.request(self.scope, Pass::Connections) {
                        Ok(rx) => pending = Some((rx, losses, tokio::time::Instant::now())),
                        Err(err) => {
                            self.tracker.abort_sync();
                            self.metrics.reconciled(false);
                            tracing::warn!(error = %crate::error::chain(&err), "reconcile skipped");
                        }
                    }
                }
                taken = wait(pending.as_mut().map(|p| &mut p.0)), if pending.is_some() => {
                    let Some((_, losses, began)) = pending.take() else { continue };
                    let ok = self.merge(taken, SyncKind::Reconcile).await;
                    self.metrics.reconciled(ok.is_ok());
                    match ok {
                        Ok(_) => {
                            baseline = losses;
                            last_reconcile = began;
                        }
                        Err(err) => tracing::warn!(error = %crate::error::chain(&err), "reconcile failed; trying again at the next check"),
                    }
                }
                Some(query) = self.queries.recv() => self.tracker.answer(query),
                Some(dbs) = self.geo_updates.recv() => {
                    // Dropping the old country table (megabytes) is left
                    // to a blocking thread.
                    let old = self.tracker.replace_databases(dbs);
                    tokio::task::spawn_blocking(move || drop(old));
                }
                _ = reranks.tick() => self.tracker.rerank(),
                () = tick(byte_passes.as_mut()), if pending_bytes.is_none() => {
                    match self.snapshotter.request(self.scope, Pass::Bytes) {
                        Ok(rx) => pending_bytes = Some((rx, self.tracker.now())),
                        Err(err) => tracing::warn!(error = %crate::error::chain(&err), "counting the bytes of open connections skipped"),
                    }
                }
                taken = wait(pending_bytes.as_mut().map(|p| &mut p.0)), if pending_bytes.is_some() => {
                    let Some((_, began)) = pending_bytes.take() else { continue };
                    match taken {
                        Ok(Ok(snap)) => self.tracker.account(&snap, began),
                        Ok(Err(err)) => tracing::warn!(error = %crate::error::chain(&err), "counting the bytes of open connections failed; trying again at the next interval"),
                        Err(_) => tracing::warn!("the snapshot thread stopped; the bytes of open connections are counted when they close"),
                    }
                }
            }
        }
    }
}

type SnapshotReceiver = oneshot::Receiver<Result<Snapshot, SnapshotError>>;

async fn tick(every: Option<&mut tokio::time::Interval>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_mins(1);

    #[test]
    fn reconciles_after_losses_or_when_the_safety_interval_passed() {
        let policy = reconcile_policy(Scope::All, MINUTE, Duration::from_mins(15)).unwrap();
        assert_eq!(policy.check, MINUTE);
        // Nothing lost, recently reconciled: nothing to repair.
        assert!(!policy.due(5, 5, MINUTE));
        // One event lost or skipped since the last one: repair.
        assert!(policy.due(5, 6, MINUTE));
        // Nothing lost, but the safety interval passed.
        assert!(policy.due(5, 5, Duration::from_mins(15)));
        assert!(!policy.due(5, 5, Duration::from_mins(14)));
    }

    #[test]
    fn zero_max_interval_reconciles_only_after_losses() {
        let policy = reconcile_policy(Scope::All, MINUTE, Duration::ZERO).unwrap();
        assert_eq!(policy.max, None);
        assert!(!policy.due(0, 0, Duration::from_hours(1000)));
        assert!(policy.due(0, 1, Duration::ZERO));
    }

    #[test]
    fn no_reconcile_when_disabled_or_namespaces_unknown() {
        assert_eq!(reconcile_policy(Scope::All, Duration::ZERO, MINUTE), None);
        assert_eq!(reconcile_policy(Scope::OwnUntagged, MINUTE, MINUTE), None);
    }
}
