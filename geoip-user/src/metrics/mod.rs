//! The exporter's metrics; the only module that touches `prometheus`
//! types.
//!
//! Per-country series are created the first time a country is seen and
//! then updated in place (the [`Recorder`] caches their handles), so a
//! scrape reads atomics and never walks the connection table.
//!
//! From the registry up: [`register`] makes and registers a metric in one
//! step; [`families`] are the families that count connections,
//! [`self_metrics`] the exporter's observation of itself and
//! [`kernel_counter`] its counts kept in the kernel; [`overview`] is the
//! typed read-back the JSON API shows, [`recorder`] what the table's task
//! updates.

mod families;
mod kernel_counter;
mod overview;
mod recorder;
mod register;
mod self_metrics;
#[cfg(test)]
mod tests;

use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

pub(crate) use families::Wanted;
use families::{ConnectionFamilies, OptInFamilies};
use kernel_counter::FromKernel;
pub(crate) use kernel_counter::KernelCount;
use overview::SeriesIndex;
pub(crate) use overview::{CountryCounts, Overview};
use prometheus::{Encoder as _, IntCounter, Registry, TextEncoder};
pub(crate) use recorder::Recorder;
use self_metrics::{Health, Pipeline};

/// The content type of `/metrics`: the text exposition format.
pub(crate) const TEXT_FORMAT: &str = prometheus::TEXT_FORMAT;

/// Making, registering or rendering a metric failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct MetricsError(#[from] prometheus::Error);

/// The registry and every metric in it; cheap to clone.
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    connections: ConnectionFamilies,
    families: OptInFamilies,
    pipeline: Pipeline,
    health: Health,
    index: SeriesIndex,
    wanted: Wanted,
    /// Held (written) while the event thread applies a change that moves
    /// more than one series (a close: the gauge down, the closed counter
    /// up), and (read) while a scrape or the API reads them: each sees
    /// all of a change or none of it.
    consistency: Arc<RwLock<()>>,
}

/// While alive, no scrape reads the connection series.
pub(crate) struct Updating<'a>(
    #[expect(dead_code, reason = "held for its drop")] RwLockWriteGuard<'a, ()>,
);

impl Metrics {
    /// Create and register every metric. `legacy_job_location` adds the
    /// original tool's `job_location{location}` gauge.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn new(legacy_job_location: bool) -> Result<Self, MetricsError> {
        Self::with_families(legacy_job_location, Wanted::default())
    }

    /// [`Self::new`], and the opt-in families `wanted`.
    pub(crate) fn with_families(
        legacy_job_location: bool,
        wanted: Wanted,
    ) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let connections = ConnectionFamilies::new(&registry, legacy_job_location, wanted.service)?;
        let pipeline = Pipeline::new(&registry, wanted.bytes)?;
        let families = OptInFamilies::new(wanted, &registry)?;
        let health = Health::new(&registry)?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            connections,
            families,
            pipeline,
            health,
            index: SeriesIndex::default(),
            wanted,
            consistency: Arc::default(),
        })
    }

    /// Export the kernel's counts of events it could not hand over: ring
    /// buffer full (`lost`), and runs of the program the kernel skipped
    /// because it was already running on that CPU (`missed`; `None` on a
    /// kernel that does not count them, before 6.7: the family is then
    /// absent, not a 0 that would claim nothing was skipped).
    pub(crate) fn register_kernel_losses(
        &self,
        lost: KernelCount,
        missed: Option<KernelCount>,
    ) -> Result<(), MetricsError> {
        let counter = IntCounter::new(
            "geoip_exporter_events_lost_total",
            "Connection events the kernel program could not submit because the ring buffer was full; the reconcile they trigger repairs the counts. Raise --ringbuf.size-bytes.",
        )?;
        self.registry.register(Box::new(FromKernel {
            counter,
            source: lost,
        }))?;
        let Some(missed) = missed else {
            return Ok(());
        };
        let counter = IntCounter::new(
            "geoip_exporter_events_missed_total",
            "Runs of the kernel program the kernel skipped because it was already running on that CPU (a TCP state change in an interrupt during another one); each may have been a connection event, which the reconcile they trigger repairs.",
        )?;
        self.registry.register(Box::new(FromKernel {
            counter,
            source: missed,
        }))?;
        Ok(())
    }

    pub(crate) fn set_database_build(&self, epoch: u64) {
        self.health.set_database_build(epoch);
    }

    /// A database (re)load finished: `Some(build epoch)` if it is now in
    /// use, `None` if it failed and the previous one stays.
    pub(crate) fn database_reloaded(&self, loaded: Option<u64>) {
        self.health.database_reloaded(loaded);
    }

    /// A snapshot of the kernel's socket table was taken.
    pub(crate) fn snapshot_taken(&self, scanned: usize, unreadable: usize, seconds: f64) {
        self.health.snapshot_taken(scanned, unreadable, seconds);
    }

    /// An HTTP connection was refused: too many open.
    pub(crate) fn http_rejected(&self) {
        self.health.http_rejected();
    }

    /// A reconcile ended (`ok`) or could not take its snapshot.
    pub(crate) fn reconciled(&self, ok: bool) {
        self.health.reconciled(ok);
    }

    /// The whole registry in the text exposition format.
    pub(crate) fn render(&self) -> Result<String, MetricsError> {
        let families = {
            let _reading = self
                .consistency
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            self.registry.gather()
        };
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()).into())
    }

    /// Which opt-in families are exported.
    pub(crate) const fn wanted(&self) -> Wanted {
        self.wanted
    }

    /// Current connections and opened/closed totals by country and
    /// direction (of the service `service` only, with `--labels
    /// service`), and each service's; bytes too when no service is asked
    /// for. The same values `/metrics` shows.
    pub(crate) fn overview(&self, service: Option<&str>) -> Overview {
        let _reading = self
            .consistency
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        self.index.overview(service, self.wanted.bytes)
    }

    /// Hold off scrapes while the series change together (see
    /// `consistency`); keep it for a batch, not across an await.
    pub(crate) fn updating(&self) -> Updating<'_> {
        Updating(
            self.consistency
                .write()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// A fresh recorder for the one task that updates connection metrics.
    pub(crate) fn recorder(&self) -> Recorder {
        Recorder::new(
            self.connections.clone(),
            self.families.clone(),
            self.pipeline.clone(),
            self.index.clone(),
        )
    }
}
