//! The HTTP side: `/metrics` (or `--web.telemetry-path`), the live map at
//! `/` (with its country shapes at `/assets/world.json`), `/healthz`, and
//! `/api/v1/countries` (JSON: connections and opened/closed totals by
//! country and direction).

use std::{
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{RawQuery, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{Html, IntoResponse, Response},
    routing::get,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    geo::DatabaseInfo,
    metrics::{CountryCounts, Metrics},
    page,
    table::{ConnList, ConnQuery},
    webconfig::BasicAuth,
};

/// `/api/v1/connections` answers at most this many connections.
const CONNECTIONS_MAX: usize = 10_000;
/// ... and this many when `limit` is not given.
const CONNECTIONS_DEFAULT: usize = 1_000;

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) metrics: Metrics,
    /// Scrapes that arrive together share one rendering.
    scrapes: Arc<SharedRender>,
    /// False once the kernel event reader stopped: the numbers are stale.
    pub(crate) healthy: Arc<AtomicBool>,
    telemetry_path: Arc<str>,
    /// What depends on the database in use; replaced whole on a reload
    /// (the lock is held only to clone or swap the pointer).
    page: Arc<RwLock<Arc<Page>>>,
    /// Where `/api/v1/connections` asks the table's task; `None` (the
    /// default) leaves the endpoint out: remote addresses are personal
    /// data.
    connections: Option<mpsc::Sender<ConnQuery>>,
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
    fn render(&self, metrics: &Metrics) -> Result<axum::body::Bytes, prometheus::Error> {
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
struct Page {
    landing: axum::body::Bytes,
    database: DatabaseInfo,
}

impl AppState {
    pub(crate) fn new(metrics: Metrics, telemetry_path: &str, database: &DatabaseInfo) -> Self {
        Self {
            metrics,
            scrapes: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            telemetry_path: telemetry_path.into(),
            page: Arc::new(RwLock::new(Arc::new(Page::new(telemetry_path, database)))),
            connections: None,
        }
    }

    /// Serve `/api/v1/connections`, asking `queries`.
    pub(crate) fn with_connections_api(mut self, queries: mpsc::Sender<ConnQuery>) -> Self {
        self.connections = Some(queries);
        self
    }

    /// A new database is in use.
    pub(crate) fn set_database(&self, database: &DatabaseInfo) {
        let page = Arc::new(Page::new(&self.telemetry_path, database));
        *self.page.write().unwrap_or_else(PoisonError::into_inner) = page;
    }

    fn page(&self) -> Arc<Page> {
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

pub(crate) fn router(state: AppState, telemetry_path: &str) -> Router {
    let mut router = Router::new()
        .route("/", get(landing))
        .route(telemetry_path, get(metrics))
        .route("/assets/world.json", get(world))
        .route("/healthz", get(healthz))
        .route("/api/v1/countries", get(countries));
    if state.connections.is_some() {
        router = router.route("/api/v1/connections", get(connections));
    }
    router.with_state(state)
}

/// Require basic auth on every path but `/healthz` (which says only
/// whether the exporter works, and which liveness probes must reach).
pub(crate) fn with_basic_auth(router: Router, auth: Arc<BasicAuth>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let auth = auth.clone();
            async move {
                if req.uri().path() == "/healthz" {
                    return next.run(req).await;
                }
                let value = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // bcrypt is slow on purpose: off the runtime's threads.
                let ok = tokio::task::spawn_blocking(move || auth.check(value.as_deref()))
                    .await
                    .unwrap_or(false);
                if ok {
                    next.run(req).await
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"geoip-exporter\"")],
                        "unauthorized\n",
                    )
                        .into_response()
                }
            }
        },
    ))
}

/// `?limit=N` of `/api/v1/connections`, 1 to [`CONNECTIONS_MAX`].
fn parse_limit(query: Option<&str>) -> Result<usize, String> {
    let mut limit = CONNECTIONS_DEFAULT;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("limit", value)) => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=CONNECTIONS_MAX).contains(n))
                    .ok_or_else(|| {
                        format!("limit {value:?} is not a number from 1 to {CONNECTIONS_MAX}")
                    })?;
            }
            _ => return Err(format!("unknown parameter {pair:?}; the only one is limit")),
        }
    }
    Ok(limit)
}

async fn connections(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let limit = match parse_limit(query.as_deref()) {
        Ok(limit) => limit,
        Err(msg) => return (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response(),
    };
    let Some(queries) = &state.connections else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (reply, answer) = oneshot::channel();
    let asked = queries.send(ConnQuery { limit, reply }).await.is_ok();
    let list: Option<ConnList> = if asked {
        tokio::time::timeout(Duration::from_secs(2), answer)
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    match list {
        Some(list) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(list)).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the connection table did not answer; see the exporter's log\n",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.scrapes.render(&state.metrics) {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering metrics failed: {err}\n"),
            )
                .into_response()
        }
    }
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "kernel event reader stopped; see the exporter's log\n",
        )
    }
}

/// The answer of `/api/v1/countries`.
#[derive(serde::Serialize)]
struct CountriesResponse {
    /// When this answer was made, in milliseconds since the Unix epoch.
    time_ms: u128,
    database: DatabaseJson,
    /// Sums over every country.
    total: CountryCounts,
    /// Every country seen since start-up (ISO 3166-1 alpha-2 or `unknown`),
    /// most connections first.
    countries: Vec<CountryJson>,
}

#[derive(serde::Serialize)]
struct DatabaseJson {
    #[serde(rename = "type")]
    kind: String,
    build_epoch: u64,
}

#[derive(serde::Serialize)]
struct CountryJson {
    country: String,
    #[serde(flatten)]
    counts: CountryCounts,
}

async fn countries(State(state): State<AppState>) -> Response {
    let mut total = CountryCounts::default();
    let mut list: Vec<CountryJson> = state
        .metrics
        .countries()
        .into_iter()
        .map(|(country, counts)| {
            total.inbound += counts.inbound;
            total.outbound += counts.outbound;
            CountryJson { country, counts }
        })
        .collect();
    list.sort_by_key(|c| {
        std::cmp::Reverse(c.counts.inbound.connections + c.counts.outbound.connections)
    });
    let page = state.page();
    let body = CountriesResponse {
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        database: DatabaseJson {
            kind: page.database.database_type.clone(),
            build_epoch: page.database.build_epoch,
        },
        total,
        countries: list,
    };
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

async fn landing(State(state): State<AppState>) -> Html<axum::body::Bytes> {
    Html(state.page().landing.clone())
}

async fn world() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        page::WORLD_JSON,
    )
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use tower::ServiceExt as _;

    use super::*;

    fn state() -> AppState {
        let db = DatabaseInfo {
            path: "/data/dbip-country.mmdb".into(),
            database_type: "dbip-country <b>".into(),
            build_epoch: 0,
            ip_version: 6,
        };
        AppState::new(Metrics::new(false).unwrap(), "/m", &db)
    }

    async fn get(app: Router, uri: &str) -> (StatusCode, String, String) {
        let res = app
            .oneshot(axum::http::Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let ctype = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_metrics_on_the_configured_path_only() {
        let s = state();
        let (status, ctype, body) = get(router(s.clone(), "/m"), "/m").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "text/plain; version=0.0.4");
        assert!(body.contains("# TYPE geoip_exporter_build_info gauge"));
        let (status, _, _) = get(router(s, "/m"), "/metrics").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn map_page_links_metrics_and_escapes() {
        let (status, ctype, body) = get(router(state(), "/m"), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/html"));
        assert!(body.contains("<a href=\"/m\">"));
        assert!(body.contains("<a href=\"/healthz\">"));
        assert!(body.contains("dbip-country &lt;b&gt;"));
        assert!(body.contains("IP Geolocation by DB-IP"));
        assert!(body.contains("<svg"), "the map");
    }

    #[tokio::test]
    async fn serves_the_country_shapes() {
        let res = router(state(), "/m")
            .oneshot(
                axum::http::Request::get("/assets/world.json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            res.headers()[header::CACHE_CONTROL],
            "public, max-age=86400"
        );
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let world: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(world["countries"]["DE"].is_string());
    }

    #[tokio::test]
    async fn countries_api_reports_per_direction_and_totals() {
        let s = state();
        let mut r = s.metrics.recorder();
        let de = crate::geo::Country::from_code("DE");
        let jp = crate::geo::Country::from_code("JP");
        r.opened(de, crate::events::Direction::Inbound, 0, String::new);
        r.opened(jp, crate::events::Direction::Outbound, 0, String::new);
        r.opened(jp, crate::events::Direction::Outbound, 0, String::new);
        r.closed(de, crate::events::Direction::Inbound, 0, String::new);
        let (status, ctype, body) = get(router(s, "/m"), "/api/v1/countries").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["countries"][0]["country"], "JP",
            "most connections first: {body}"
        );
        assert_eq!(v["countries"][0]["outbound"]["connections"], 2);
        assert_eq!(v["countries"][1]["country"], "DE");
        assert_eq!(v["countries"][1]["inbound"]["connections"], 0);
        assert_eq!(v["countries"][1]["inbound"]["opened"], 1);
        assert_eq!(v["countries"][1]["inbound"]["closed"], 1);
        assert_eq!(v["total"]["outbound"]["opened"], 2);
        assert_eq!(v["total"]["inbound"]["closed"], 1);
        assert_eq!(v["database"]["type"], "dbip-country <b>");
        assert!(v["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }

    #[tokio::test]
    async fn connections_api_only_when_enabled_and_bounded() {
        let (status, _, _) = get(router(state(), "/m"), "/api/v1/connections").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "off by default");

        let (tx, mut rx) = mpsc::channel::<ConnQuery>(1);
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                let _ = q.reply.send(ConnList {
                    total: 5,
                    connections: Vec::new(),
                });
                assert_eq!(q.limit, 7);
            }
        });
        let app = router(state().with_connections_api(tx), "/m");
        let (status, _, body) = get(app.clone(), "/api/v1/connections?limit=7").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"total":5,"connections":[]}"#);
        for (bad, needle) in [
            ("limit=0", "limit \"0\""),
            ("limit=10001", "limit \"10001\""),
            ("limit=x", "limit \"x\""),
            ("ip=1.2.3.4", "unknown parameter \"ip=1.2.3.4\""),
        ] {
            let (status, _, body) = get(app.clone(), &format!("/api/v1/connections?{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(body.contains(needle), "{bad}: {body}");
        }
    }

    #[tokio::test]
    async fn healthz_reflects_the_reader() {
        let s = state();
        assert_eq!(
            get(router(s.clone(), "/m"), "/healthz").await.0,
            StatusCode::OK
        );
        s.healthy.store(false, Ordering::Relaxed);
        assert_eq!(
            get(router(s, "/m"), "/healthz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
