//! Start-up, the event loop and shutdown.
//!
//! Order matters: every check that changes nothing in the kernel runs first
//! (database, listen address, privileges, tracefs), so a bad flag leaves
//! nothing half-started; then the program is attached, then the existing
//! connections are enumerated, then both are merged.

use std::{future::Future, io, net::SocketAddr, sync::atomic::Ordering};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpListener,
    sync::mpsc,
};

use crate::{
    cli::Args,
    events::{DecodeError, Event},
    filter::Exclusions,
    geo::{Geo, OpenError},
    http::{AppState, router},
    metrics::Metrics,
    probe::{self, EventReader, ProbeError},
    snapshot::{self, SnapshotError},
    table::Tracker,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    #[error(transparent)]
    Database(#[from] OpenError),
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
    Metrics(#[from] prometheus::Error),
    #[error("serving HTTP failed")]
    Serve(#[source] io::Error),
    #[error("a start-up task failed")]
    Join(#[from] tokio::task::JoinError),
}

impl AppError {
    /// 2 for what the user fixes with flags or input files, 1 otherwise.
    pub(crate) const fn exit_code(&self) -> u8 {
        match self {
            Self::Database(_) | Self::AddrInUse { .. } | Self::Bind { .. } => 2,
            _ => 1,
        }
    }
}

/// Batches of decoded records on their way from the ring buffer to the table.
type Batch = Vec<Result<Event, DecodeError>>;

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            AppError::AddrInUse { addr, source }
        } else {
            AppError::Bind { addr, source }
        }
    })
}

/// Run the exporter until `shutdown` completes.
pub(crate) async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let geo = Geo::open(&args.database)?;
    let db = geo.info().clone();
    tracing::info!(
        path = %db.path.display(),
        database_type = %db.database_type,
        build_epoch = db.build_epoch,
        "GeoIP database opened"
    );
    let listener = bind(args.listen_address).await?;
    let prepared = probe::prepare(args.ring_buffer_bytes)?;

    let metrics = Metrics::new(args.legacy_job_location)?;
    metrics.set_database_build(db.build_epoch);
    let state = AppState::new(metrics.clone(), &args.telemetry_path, &db);
    let mut tracker = Tracker::new(Exclusions::new(&args.exclude), geo, metrics.recorder());

    let probe = prepared.load_and_attach()?;
    tracing::info!(
        ring_buffer_bytes = args.ring_buffer_bytes,
        "kernel program attached to sock/inet_sock_set_state"
    );
    let lost = probe.lost;
    metrics.register_lost_events(Box::new(move || probe::lost_events(&lost)))?;
    if let Some(logger) = probe.logger {
        forward_kernel_logs(logger);
    }

    let (tx, mut rx) = mpsc::channel::<Batch>(256);
    let reader = tokio::spawn(read_events(probe.events, tx, state.clone()));

    // Attached first, so nothing that opens from now on is missed; the
    // merge counts what is in both the snapshot and the buffer once.
    let existing = tokio::task::spawn_blocking(snapshot::established).await??;
    let mut pending = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        pending.extend(batch);
    }
    let (events, undecodable): (Vec<_>, Vec<_>) = pending.into_iter().partition(Result::is_ok);
    let events: Vec<Event> = events.into_iter().flatten().collect();
    for _ in &undecodable {
        tracker.recorder().undecodable();
    }
    let existing_count = existing.len();
    tracker.merge_startup(existing, &events);
    tracing::info!(
        established = existing_count,
        buffered_events = events.len(),
        tracked = tracker.len(),
        "existing connections merged"
    );

    if args.check {
        reader.abort();
        print!("{}", metrics.render()?);
        println!(
            "# check passed: database {} ({}), kernel program attached, {} connections tracked",
            db.path.display(),
            db.database_type,
            tracker.len()
        );
        return Ok(());
    }

    let table = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            apply_batch(&mut tracker, batch);
        }
    });

    let local = listener.local_addr().map_err(AppError::Serve)?;
    tracing::info!(address = %local, path = %args.telemetry_path, "serving metrics");
    let served = axum::serve(listener, router(state, &args.telemetry_path))
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("shutting down: detaching the kernel program");
    reader.abort();
    let _ = reader.await;
    // The reader owned the sender: the table task ends once drained.
    let _ = table.await;
    served.map_err(AppError::Serve)
}

fn apply_batch(tracker: &mut Tracker, batch: Batch) {
    for record in batch {
        match record {
            Ok(event) => {
                tracker.apply(&event);
            }
            Err(err) => {
                tracing::debug!(error = %err, "undecodable ring buffer record");
                tracker.recorder().undecodable();
            }
        }
    }
}

/// Move records from the ring buffer to the table task; backpressure from
/// a busy table fills the ring, and the kernel counts what it drops.
async fn read_events(mut reader: EventReader, tx: mpsc::Sender<Batch>, state: AppState) {
    loop {
        let mut batch = Vec::new();
        if let Err(err) = reader.read_batch(&mut batch).await {
            tracing::error!(error = %err, "reading the kernel ring buffer failed; counts are no longer updated");
            state.healthy.store(false, Ordering::Relaxed);
            return;
        }
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

fn forward_kernel_logs(logger: aya_log::EbpfLogger<probe::TracingLog>) {
    // SAFETY: the logger owns its descriptor and neither replaces nor
    // closes it while the AsyncFd holds it.
    let logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(err) => {
            tracing::debug!(error = %err, "cannot poll kernel program logs");
            return;
        }
    };
    let mut logger = logger;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
