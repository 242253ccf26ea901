//! The HTTP side: `/metrics` (or `--web.telemetry-path`), the live map at
//! `/` (with its country shapes at `/assets/world.json`), `/healthz`, and
//! the JSON API the map reads: `/api/v1/countries` (connections,
//! opened/closed totals and bytes by country and direction, of all
//! services or one), `/api/v1/asns` (with `--labels asn`: live
//! connections by network of a country) and, opt-in,
//! `/api/v1/connections`.

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
    geo::{Country, DatabaseInfo},
    metrics::{CountryCounts, Metrics, MetricsError, TEXT_FORMAT, Wanted},
    page,
    table::{AsnCount, Query},
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
    /// Where `/api/v1/connections` and `/api/v1/asns` ask the table's
    /// task.
    queries: Option<mpsc::Sender<Query>>,
    /// Serve `/api/v1/connections`: off by default, remote addresses are
    /// personal data.
    connections_api: bool,
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
    fn render(&self, metrics: &Metrics) -> Result<axum::body::Bytes, MetricsError> {
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
    if state.queries.is_some() {
        if state.connections_api {
            router = router.route("/api/v1/connections", get(connections));
        }
        if state.metrics.wanted().asn {
            router = router.route("/api/v1/asns", get(asns));
        }
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

/// The parameters of a query string, decoded; each one of `known`, at
/// most once.
fn params(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !known.contains(&name.as_ref()) {
            let known = known.join(", ");
            return Err(format!(
                "unknown parameter {name:?}; the known ones are: {known}"
            ));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("parameter {name:?} given more than once"));
        }
        out.push((name.into_owned(), value.into_owned()));
    }
    Ok(out)
}

/// `?limit=N` of `/api/v1/connections`, 1 to [`CONNECTIONS_MAX`].
fn parse_limit(query: Option<&str>) -> Result<usize, String> {
    let mut limit = CONNECTIONS_DEFAULT;
    for (_, value) in params(query, &["limit"])? {
        limit = value
            .parse()
            .ok()
            .filter(|n| (1..=CONNECTIONS_MAX).contains(n))
            .ok_or_else(|| {
                format!("limit {value:?} is not a number from 1 to {CONNECTIONS_MAX}")
            })?;
    }
    Ok(limit)
}

/// What `/api/v1/countries` and `/api/v1/asns` are asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Filter {
    country: Option<Country>,
    service: Option<String>,
}

/// `?service=NAME` (with `--labels service`) and, if `with_country`,
/// `?country=CC` (two letters or `unknown`).
fn parse_filter(query: Option<&str>, wanted: Wanted, with_country: bool) -> Result<Filter, String> {
    let known: &[&str] = if with_country {
        &["country", "service"]
    } else {
        &["service"]
    };
    let mut filter = Filter::default();
    for (name, value) in params(query, known)? {
        if value.is_empty() {
            return Err(format!(
                "{name} is empty; leave it out for all {name} values"
            ));
        }
        if name == "service" {
            if !wanted.service {
                return Err(format!(
                    "service {value:?}: the exporter counts no services; start it with --labels service"
                ));
            }
            filter.service = Some(value);
        } else {
            let code = Country::from_code(&value);
            if code == Country::UNKNOWN && value != "unknown" {
                return Err(format!(
                    "country {value:?} is not a two-letter code (ISO 3166-1 alpha-2, such as DE) or unknown"
                ));
            }
            filter.country = Some(code);
        }
    }
    Ok(filter)
}

fn bad_request(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

/// Ask the table's task; `None` if it does not take the question and
/// answer within 2 s (its queue is short: a busy table turns callers
/// away rather than piling them up).
async fn ask<T>(state: &AppState, query: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
    let queries = state.queries.as_ref()?;
    let (reply, answer) = oneshot::channel();
    let exchange = async {
        queries.send(query(reply)).await.ok()?;
        answer.await.ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()?
}

fn no_answer() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the connection table did not answer; see the exporter's log\n",
    )
        .into_response()
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

async fn connections(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let limit = match parse_limit(query.as_deref()) {
        Ok(limit) => limit,
        Err(msg) => return bad_request(&msg),
    };
    match ask(&state, |reply| Query::Connections { limit, reply }).await {
        Some(list) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(list)).into_response(),
        None => no_answer(),
    }
}

/// The answer of `/api/v1/asns`.
#[derive(serde::Serialize)]
struct AsnsResponse {
    time_ms: u128,
    /// The country asked for; `null`: all.
    country: Option<String>,
    /// The service asked for; `null`: all.
    service: Option<String>,
    /// Busiest first; ASNs beyond `--labels.asn-limit` as `other`.
    asns: Vec<AsnCount>,
}

async fn asns(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let filter = match parse_filter(query.as_deref(), state.metrics.wanted(), true) {
        Ok(filter) => filter,
        Err(msg) => return bad_request(&msg),
    };
    let Filter { country, service } = filter;
    let asked = service.clone();
    let Some(asns) = ask(&state, |reply| Query::Asns {
        country,
        service: asked,
        reply,
    })
    .await
    else {
        return no_answer();
    };
    let body = AsnsResponse {
        time_ms: now_ms(),
        country: country.map(|c| c.as_str().to_owned()),
        service,
        asns,
    };
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.scrapes.render(&state.metrics) {
        Ok(body) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response(),
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
    /// What the exporter counts beyond connections by country.
    features: Features,
    /// The service asked for (`?service=`); `null`: all.
    service: Option<String>,
    /// Sums over every country.
    total: CountryCounts,
    /// Every country seen since start-up (ISO 3166-1 alpha-2 or `unknown`),
    /// most connections first.
    countries: Vec<CountryJson>,
    /// With `--labels service`: every `service` label value now shown,
    /// most connections first (whatever `?service=` asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<Vec<ServiceJson>>,
}

#[derive(serde::Serialize)]
struct DatabaseJson {
    #[serde(rename = "type")]
    kind: String,
    build_epoch: u64,
}

/// The opt-in families, as the page needs to know them.
#[derive(serde::Serialize)]
#[expect(clippy::struct_excessive_bools, reason = "one switch per family")]
struct Features {
    /// `?service=` and `services` (`--labels service`).
    service: bool,
    /// `/api/v1/asns` (`--labels asn`).
    asn: bool,
    city: bool,
    /// `received_bytes` and `sent_bytes` (`--metrics.bytes`).
    bytes: bool,
    duration: bool,
}

#[derive(serde::Serialize)]
struct CountryJson {
    country: String,
    #[serde(flatten)]
    counts: CountryCounts,
}

#[derive(serde::Serialize)]
struct ServiceJson {
    service: String,
    #[serde(flatten)]
    counts: CountryCounts,
}

/// Live connections, both directions.
const fn live(c: &CountryCounts) -> i64 {
    c.inbound.connections + c.outbound.connections
}

async fn countries(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let wanted = state.metrics.wanted();
    let service = match parse_filter(query.as_deref(), wanted, false) {
        Ok(filter) => filter.service,
        Err(msg) => return bad_request(&msg),
    };
    let overview = state.metrics.overview(service.as_deref());
    let mut total = CountryCounts::default();
    let mut list: Vec<CountryJson> = overview
        .countries
        .into_iter()
        .map(|(country, counts)| {
            total.inbound += counts.inbound;
            total.outbound += counts.outbound;
            CountryJson { country, counts }
        })
        .collect();
    list.sort_by_key(|c| std::cmp::Reverse(live(&c.counts)));
    let services = wanted.service.then(|| {
        let mut list: Vec<ServiceJson> = overview
            .services
            .into_iter()
            .map(|(service, counts)| ServiceJson { service, counts })
            .collect();
        list.sort_by_key(|s| std::cmp::Reverse(live(&s.counts)));
        list
    });
    let page = state.page();
    let body = CountriesResponse {
        time_ms: now_ms(),
        database: DatabaseJson {
            kind: page.database.database_type.clone(),
            build_epoch: page.database.build_epoch,
        },
        features: Features {
            service: wanted.service,
            asn: wanted.asn,
            city: wanted.city,
            bytes: wanted.bytes,
            duration: wanted.duration,
        },
        service,
        total,
        countries: list,
        services,
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
    use crate::table::ConnList;

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
        let de = Country::from_code("DE");
        let jp = Country::from_code("JP");
        r.opened(de, crate::conn::Direction::Inbound, 0, String::new);
        r.opened(jp, crate::conn::Direction::Outbound, 0, String::new);
        r.opened(jp, crate::conn::Direction::Outbound, 0, String::new);
        r.closed(de, crate::conn::Direction::Inbound, 0, String::new);
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

    /// A table's task that answers every query with these.
    fn answering(list: ConnList, asns: Vec<AsnCount>) -> mpsc::Sender<Query> {
        let (tx, mut rx) = mpsc::channel::<Query>(1);
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                match q {
                    Query::Connections { limit, reply } => {
                        assert_eq!(limit, 7);
                        let _ = reply.send(list.clone());
                    }
                    Query::Asns {
                        country,
                        service,
                        reply,
                    } => {
                        let mut asns = asns.clone();
                        // Echo what was asked, for the test to check.
                        asns.push(AsnCount {
                            asn: format!("{country:?}"),
                            as_org: format!("{service:?}"),
                            inbound: 0,
                            outbound: 0,
                        });
                        let _ = reply.send(asns);
                    }
                }
            }
        });
        tx
    }

    #[tokio::test]
    async fn connections_api_only_when_enabled_and_bounded() {
        let (status, _, _) = get(router(state(), "/m"), "/api/v1/connections").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "off by default");
        let list = ConnList {
            total: 5,
            connections: Vec::new(),
        };
        let queries = answering(list.clone(), Vec::new());
        let app = router(state().with_queries(queries.clone(), false), "/m");
        let (status, _, _) = get(app, "/api/v1/connections").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "asked for, not enabled");

        let app = router(state().with_queries(queries, true), "/m");
        let (status, _, body) = get(app.clone(), "/api/v1/connections?limit=7").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"total":5,"connections":[]}"#);
        for (bad, needle) in [
            ("limit=0", "limit \"0\""),
            ("limit=10001", "limit \"10001\""),
            ("limit=x", "limit \"x\""),
            (
                "ip=1.2.3.4",
                "unknown parameter \"ip\"; the known ones are: limit",
            ),
            (
                "limit=7&limit=7",
                "parameter \"limit\" given more than once",
            ),
        ] {
            let (status, _, body) = get(app.clone(), &format!("/api/v1/connections?{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(body.contains(needle), "{bad}: {body}");
        }
    }

    fn state_with(wanted: Wanted) -> AppState {
        let s = state();
        AppState {
            metrics: Metrics::with_families(false, wanted).unwrap(),
            ..s
        }
    }

    #[tokio::test]
    async fn countries_api_filters_by_service_and_reports_bytes() {
        use crate::conn::Direction::{Inbound, Outbound};
        let s = state_with(Wanted {
            service: true,
            bytes: true,
            ..Wanted::default()
        });
        let mut r = s.metrics.recorder();
        let (de, jp) = (Country::from_code("DE"), Country::from_code("JP"));
        r.opened(de, Inbound, 1, || "443".to_owned());
        r.opened(de, Inbound, 1, || "443".to_owned());
        r.opened(jp, Outbound, 2, || "curl odd&name".to_owned());
        r.bytes(de, Inbound, 1000, 20);
        r.bytes(de, Inbound, 5, 0);
        let app = router(s, "/m");

        let (status, _, body) = get(app.clone(), "/api/v1/countries").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["features"]["service"], true);
        assert_eq!(v["features"]["bytes"], true);
        assert_eq!(v["features"]["asn"], false);
        assert_eq!(v["service"], serde_json::Value::Null);
        assert_eq!(v["countries"][0]["country"], "DE");
        assert_eq!(v["countries"][0]["inbound"]["connections"], 2);
        assert_eq!(v["countries"][0]["inbound"]["received_bytes"], 1005);
        assert_eq!(v["countries"][0]["inbound"]["sent_bytes"], 20);
        assert_eq!(v["countries"][0]["outbound"]["received_bytes"], 0);
        assert_eq!(v["countries"][1]["outbound"]["sent_bytes"], 0);
        assert_eq!(v["total"]["inbound"]["received_bytes"], 1005);
        assert_eq!(v["services"][0]["service"], "443");
        assert_eq!(v["services"][0]["inbound"]["connections"], 2);
        assert_eq!(v["services"][1]["service"], "curl odd&name");
        assert_eq!(v["services"][1]["outbound"]["connections"], 1);

        // One service: its countries only, no bytes (counted by country),
        // every service still listed. Values are URL-decoded.
        let (status, _, body) = get(app.clone(), "/api/v1/countries?service=curl+odd%26name").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["service"], "curl odd&name");
        let countries = v["countries"].as_array().unwrap();
        assert_eq!(countries.len(), 1, "{body}");
        assert_eq!(countries[0]["country"], "JP");
        assert_eq!(countries[0]["outbound"]["connections"], 1);
        assert!(countries[0]["outbound"].get("received_bytes").is_none());
        assert_eq!(v["services"].as_array().unwrap().len(), 2);
        let (_, _, body) = get(app.clone(), "/api/v1/countries?service=8080").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["countries"], serde_json::json!([]), "no such service now");

        let (status, _, body) = get(app.clone(), "/api/v1/countries?service=").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("service is empty"), "{body}");
        let (status, _, body) = get(app, "/api/v1/countries?country=DE").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown parameter \"country\""), "{body}");
        let (status, _, body) = get(router(state(), "/m"), "/api/v1/countries?service=443").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.contains("service \"443\"") && body.contains("--labels service"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn asns_api_with_asn_labels_only_and_checked_filters() {
        let queries = answering(ConnList::default(), Vec::new());
        let app = router(state().with_queries(queries.clone(), false), "/m");
        let (status, _, _) = get(app, "/api/v1/asns").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "without --labels asn");

        let alpha = AsnCount {
            asn: "64500".into(),
            as_org: "Alpha".into(),
            inbound: 1,
            outbound: 2,
        };
        let wanted = Wanted {
            asn: true,
            ..Wanted::default()
        };
        let queries = answering(ConnList::default(), vec![alpha]);
        let app = router(state_with(wanted).with_queries(queries, false), "/m");
        let (status, _, body) = get(app.clone(), "/api/v1/asns?country=de").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["country"], "DE");
        assert_eq!(v["service"], serde_json::Value::Null);
        assert_eq!(v["asns"][0]["as_org"], "Alpha");
        assert_eq!(v["asns"][0]["outbound"], 2);
        assert_eq!(v["asns"][1]["asn"], "Some(DE)", "asked the table for DE");
        let (_, _, body) = get(app.clone(), "/api/v1/asns?country=unknown").await;
        assert!(body.contains("\"country\":\"unknown\""), "{body}");
        let (_, _, body) = get(app.clone(), "/api/v1/asns").await;
        assert!(body.contains("\"country\":null"), "all countries: {body}");
        for (bad, needle) in [
            (
                "country=Germany",
                "country \"Germany\" is not a two-letter code",
            ),
            ("country=D1", "country \"D1\""),
            ("country=", "country is empty; leave it out"),
            ("service=443", "start it with --labels service"),
            (
                "asn=1",
                "unknown parameter \"asn\"; the known ones are: country, service",
            ),
        ] {
            let (status, _, body) = get(app.clone(), &format!("/api/v1/asns?{bad}")).await;
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
