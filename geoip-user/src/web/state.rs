//! What the HTTP handlers share: the metrics, the shared rendering of
//! `/metrics`, the map page of the database in use, the way to the
//! table's task, and whether the kernel reader still runs.

use std::{
    sync::{Arc, Mutex, PoisonError, RwLock, atomic::AtomicBool},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::page;
use crate::{
    geo::DatabaseInfo,
    metrics::{Metrics, MetricsError},
    table::Query,
};

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) metrics: Metrics,
    /// Scrapes that arrive together share one rendering.
    pub(super) scrapes: Arc<SharedRender>,
    /// False once the kernel event reader stopped: the numbers are stale.
    pub(crate) healthy: Arc<AtomicBool>,
    pub(super) telemetry_path: Arc<str>,
    /// What depends on the database in use; replaced whole on a reload
    /// (the lock is held only to clone or swap the pointer).
    pub(super) page: Arc<RwLock<Arc<Page>>>,
    /// Where `/api/v1/connections` and `/api/v1/asns` ask the table's
    /// task.
    pub(super) queries: Option<mpsc::Sender<Query>>,
    /// Serve `/api/v1/connections`: off by default, remote addresses are
    /// personal data.
    pub(super) connections_api: bool,
}

/// How long a rendering of `/metrics` is served again. Scrapes that come
/// together (several Prometheus servers, a dashboard's burst) then cost one
/// rendering; the counts themselves are up to 50 ms old anyway (the ring
/// buffer is drained on that period).
const RENDER_REUSE: Duration = Duration::from_millis(20);

/// The last rendering of `/metrics`; made by one request at a time, the
/// others waiting for it and reusing it while it is fresh.
#[derive(Default)]
pub(crate) struct SharedRender {
    last: Mutex<Option<(Instant, axum::body::Bytes)>>,
}

impl SharedRender {
    pub(super) fn render(&self, metrics: &Metrics) -> Result<axum::body::Bytes, MetricsError> {
        // A poisoned lock only means a rendering panicked: render anew.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, body)) = last.as_ref()
            && at.elapsed() < RENDER_REUSE
        {
            return Ok(body.clone());
        }
        let body = axum::body::Bytes::from(metrics.render()?);
        *last = Some((Instant::now(), body.clone()));
        Ok(body)
    }
}

/// The rendered map page (cheap to clone per request) and the database it
/// names.
pub(super) struct Page {
    pub(super) landing: axum::body::Bytes,
    pub(super) database: DatabaseInfo,
}

impl AppState {
    pub(crate) fn new(metrics: Metrics, telemetry_path: &str, database: &DatabaseInfo) -> Self {
        Self {
            metrics,
            scrapes: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            telemetry_path: telemetry_path.into(),
            page: Arc::new(RwLock::new(Arc::new(Page::new(telemetry_path, database)))),
            queries: None,
            connections_api: false,
        }
    }

    /// Ask the table's task through `queries`; serve
    /// `/api/v1/connections` if `connections_api`.
    pub(crate) fn with_queries(
        mut self,
        queries: mpsc::Sender<Query>,
        connections_api: bool,
    ) -> Self {
        self.queries = Some(queries);
        self.connections_api = connections_api;
        self
    }

    /// A new database is in use.
    pub(crate) fn set_database(&self, database: &DatabaseInfo) {
        let page = Arc::new(Page::new(&self.telemetry_path, database));
        *self.page.write().unwrap_or_else(PoisonError::into_inner) = page;
    }

    pub(super) fn page(&self) -> Arc<Page> {
        self.page
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Page {
    fn new(telemetry_path: &str, database: &DatabaseInfo) -> Self {
        Self {
            landing: page::render(telemetry_path, database).into(),
            database: database.clone(),
        }
    }
}
