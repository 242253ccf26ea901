//! The exporter after the privileged start-up: the table, its metrics and
//! the event thread made and the existing connections merged
//! ([`begin`]), then serving until shutdown ([`Running::serve`]), or
//! stopped there (`check`: [`Running::stop`]).
//!
//! Attached first, so nothing that opens from then on is missed; events
//! are applied while `sock_diag` enumerates what exists, and the merge
//! leaves every connection an event touched meanwhile as the events say,
//! so each one counts once.

use std::{future::Future, io, sync::Arc, thread::JoinHandle, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use super::{
    error::AppError,
    event_loop::{EventLoop, Ready},
    reconcile::ReconcilePolicy,
    reload::{RELOAD_TIMEOUT, Reloader},
    startup::{Started, wants},
};
use crate::{
    cli::{Args, Label},
    exclude::Exclusions,
    geo::Databases,
    kernel::{log, losses::KernelLosses, probe::Attached, ring::EventReader},
    metrics::{KernelCount, Metrics, Wanted},
    snapshot::Scope,
    table::{LabelLimits, Labels, Measures, Tracker},
    web::{self, AppState, BasicAuth, Limits, Transport, router, with_basic_auth},
};

/// How long requests in flight may take to finish after SIGTERM before
/// their connections are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// What the start-up merge found.
pub(crate) struct Merged {
    /// Connections tracked after it.
    pub(crate) tracked: usize,
    /// Network namespaces it read.
    pub(crate) namespaces: usize,
}

/// The exporter with its event thread running and the connections that
/// existed merged; nothing served yet.
pub(crate) struct Running {
    found: Merged,
    metrics: Metrics,
    state: AppState,
    auth: Option<Arc<BasicAuth>>,
    transport: Transport,
    listener: TcpListener,
    /// Where reloaded databases go to the event thread.
    geo_updates: mpsc::Sender<Databases>,
    /// Dropped or sent: the event thread stops.
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
    /// The kernel program: detached when this is dropped, after the event
    /// thread stopped (the last field: fields drop in order).
    attached: Attached,
}

/// Make the table and its metrics, start the event thread and wait until
/// it has merged the connections that exist.
pub(crate) async fn begin(args: &Args, started: Started) -> Result<Running, AppError> {
    let Started {
        databases,
        auth,
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
    let (tracker, metrics) = tracker(args, databases)?;
    metrics.set_database_build(db.build_epoch);
    let (query_tx, queries) = mpsc::channel(4);
    let state = AppState::new(metrics.clone(), &args.telemetry_path, &db)
        .with_queries(query_tx, args.connections_api);
    let losses = Arc::new(probe.losses);
    register_losses(&metrics, &losses)?;
    if let Some(logger) = probe.logger {
        log::forward(logger);
    }
    let scope = if probe.namespaces {
        Scope::All
    } else {
        Scope::OwnUntagged
    };
    let reconcile = ReconcilePolicy::of(
        scope,
        args.reconcile_interval,
        args.reconcile_max_interval,
        losses.missed().is_some(),
    );
    let (geo_updates, geo_rx) = mpsc::channel(1);
    let (runtime, reader) = event_runtime(probe.ring, probe.control)?;
    let events = EventLoop {
        reader,
        tracker,
        metrics: metrics.clone(),
        snapshotter,
        scope,
        geo_updates: geo_rx,
        queries,
        losses,
        bytes_every: (args.bytes && !args.bytes_interval.is_zero()).then_some(args.bytes_interval),
        reconcile,
        healthy: state.healthy.clone(),
        batch: Vec::new(),
        undecodable: 0,
    };
    let (ready_tx, ready) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("geoip-events".into())
        .spawn(move || {
            if let Some(rt) = &runtime.0 {
                events.run_thread(rt, ready_tx, stop_rx);
            }
        })
        .map_err(AppError::EventThread)?;
    let found = merged(ready).await?;
    Ok(Running {
        found,
        metrics,
        state,
        auth,
        transport,
        listener,
        geo_updates,
        stop,
        thread,
        attached: probe.attached,
    })
}

/// Wait for the event thread's start-up merge.
async fn merged(ready: oneshot::Receiver<Ready>) -> Result<Merged, AppError> {
    let (startup, tracked) = ready.await.map_err(|_| {
        AppError::EventThread(io::Error::other("the event thread ended before it started"))
    })??;
    tracing::info!(
        established = startup.seen,
        namespaces = startup.namespaces,
        tracked,
        "existing connections merged"
    );
    Ok(Merged {
        tracked,
        namespaces: startup.namespaces,
    })
}

impl Running {
    /// What the start-up merge found.
    pub(crate) const fn found(&self) -> &Merged {
        &self.found
    }

    /// Serve until `shutdown` completes, reloading the databases when
    /// their files change; then stop the event thread (which detaches the
    /// kernel program).
    pub(crate) async fn serve(
        self,
        args: &Args,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let reloader = tokio::spawn(
            Reloader {
                paths: args.database.clone(),
                wants: wants(args),
                to_tracker: self.geo_updates.clone(),
                metrics: self.metrics.clone(),
                state: self.state.clone(),
                timeout: RELOAD_TIMEOUT,
                open: Databases::open_until,
            }
            .watch(),
        );
        let local = self.listener.local_addr().map_err(AppError::Serve)?;
        tracing::info!(address = %local, path = %args.telemetry_path, "serving metrics");
        let mut app = router(self.state.clone(), &args.telemetry_path);
        if let Some(auth) = self.auth {
            app = with_basic_auth(app, auth);
        }
        let limits = Limits {
            max_connections: args.max_connections,
            max_header_bytes: args.max_header_bytes,
            header_timeout: args.header_timeout,
            shutdown_grace: SHUTDOWN_GRACE,
        };
        let served = web::serve(
            self.listener,
            app,
            limits,
            self.transport,
            self.metrics,
            shutdown,
        )
        .await;
        tracing::info!("shutting down: detaching the kernel program");
        reloader.abort();
        Self::join(self.stop, self.thread).await;
        drop(self.attached);
        served.map_err(AppError::Serve)
    }

    /// Stop the event thread, without serving.
    pub(crate) async fn stop(self) {
        Self::join(self.stop, self.thread).await;
        drop(self.attached);
    }

    async fn join(stop: oneshot::Sender<()>, thread: JoinHandle<()>) {
        drop(stop);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// The connection table on `databases`, and the metrics it updates (with
/// the families `--labels` asks for).
fn tracker(args: &Args, databases: Databases) -> Result<(Tracker, Metrics), AppError> {
    let Databases { country, asn, city } = databases;
    let service = args.labels.contains(&Label::Service);
    let metrics = Metrics::with_families(
        args.legacy_job_location,
        Wanted {
            service,
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
        .with_labels(Labels::new(service, asn, city, limits))
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

/// Export the kernel's counts of lost events and skipped runs (those only
/// where the kernel counts them).
fn register_losses(metrics: &Metrics, losses: &Arc<KernelLosses>) -> Result<(), AppError> {
    let (lost, missed) = (losses.clone(), losses.clone());
    let missed: Option<KernelCount> = if losses.missed().is_some() {
        Some(Box::new(move || missed.missed()))
    } else {
        tracing::info!(
            "this kernel does not count the program's skipped runs (recursion_misses of tracepoint programs, Linux 6.7 and later): geoip_exporter_events_missed_total is not exported (it would be a false 0); lost events still are"
        );
        None
    };
    metrics.register_kernel_losses(Box::new(move || Some(lost.lost())), missed)?;
    Ok(())
}

/// The event thread's runtime, and the ring-buffer reader registered with
/// it.
fn event_runtime(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    control: crate::kernel::shared_array::SharedArray<u32>,
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
