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
};

use crate::{
    cli::Args,
    events::{ConnKey, DecodeError, Direction, Event},
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

/// Decoded ring-buffer records.
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

    // Attached first, so nothing that opens from now on is missed; the
    // ring buffer is drained while sock_diag enumerates what exists, and
    // the merge counts what is in both once.
    let mut reader = probe.events;
    let snapshot = tokio::task::spawn_blocking(snapshot::established);
    let (existing, pending) = buffer_until(&mut reader, snapshot).await?;
    let mut events = Vec::with_capacity(pending.len());
    for record in pending {
        match record {
            Ok(event) => events.push(event),
            Err(_) => tracker.recorder().undecodable(),
        }
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
        print!("{}", metrics.render()?);
        println!(
            "# check passed: database {} ({}), kernel program attached, {} connections tracked",
            db.path.display(),
            db.database_type,
            tracker.len()
        );
        return Ok(());
    }

    let events = tokio::spawn(track(reader, tracker, state.clone()));
    let local = listener.local_addr().map_err(AppError::Serve)?;
    tracing::info!(address = %local, path = %args.telemetry_path, "serving metrics");
    let served = axum::serve(listener, router(state, &args.telemetry_path))
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("shutting down: detaching the kernel program");
    events.abort();
    let _ = events.await;
    served.map_err(AppError::Serve)
}

/// Read the ring buffer into memory until `snapshot` is done; return both.
async fn buffer_until(
    reader: &mut EventReader,
    snapshot: tokio::task::JoinHandle<Result<Vec<(ConnKey, Direction)>, SnapshotError>>,
) -> Result<(Vec<(ConnKey, Direction)>, Batch), AppError> {
    let mut pending = Vec::new();
    tokio::pin!(snapshot);
    loop {
        tokio::select! {
            existing = &mut snapshot => return Ok((existing??, pending)),
            read = reader.read_batch(&mut pending) => read.map_err(ProbeError::Poll)?,
        }
    }
}

/// The event loop: read a batch from the ring buffer, apply it, repeat.
/// One task, no hand-off: a busy table fills the ring, and the kernel
/// counts what it drops.
async fn track(mut reader: EventReader, mut tracker: Tracker, state: AppState) {
    let mut batch = Vec::new();
    loop {
        if let Err(err) = reader.read_batch(&mut batch).await {
            tracing::error!(error = %err, "reading the kernel ring buffer failed; counts are no longer updated");
            state.healthy.store(false, Ordering::Relaxed);
            return;
        }
        for record in batch.drain(..) {
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
