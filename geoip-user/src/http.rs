//! The HTTP side: `/metrics` (or `--web.telemetry-path`), a landing page
//! at `/` and `/healthz`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};

use crate::{geo::DatabaseInfo, metrics::Metrics};

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) metrics: Metrics,
    /// False once the kernel event reader stopped: the numbers are stale.
    pub(crate) healthy: Arc<AtomicBool>,
    landing: Arc<str>,
}

impl AppState {
    pub(crate) fn new(metrics: Metrics, telemetry_path: &str, database: &DatabaseInfo) -> Self {
        Self {
            metrics,
            healthy: Arc::new(AtomicBool::new(true)),
            landing: landing_page(telemetry_path, database).into(),
        }
    }
}

pub(crate) fn router(state: AppState, telemetry_path: &str) -> Router {
    Router::new()
        .route("/", get(landing))
        .route(telemetry_path, get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.render() {
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

async fn landing(State(state): State<AppState>) -> Html<String> {
    Html(state.landing.to_string())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn landing_page(telemetry_path: &str, db: &DatabaseInfo) -> String {
    let path = escape(telemetry_path);
    let db_type = escape(&db.database_type);
    let db_path = escape(&db.path.display().to_string());
    // DB-IP's licence asks for a link wherever its data is shown.
    let attribution = if db.database_type.to_ascii_lowercase().contains("dbip")
        || db_path.to_ascii_lowercase().contains("dbip")
    {
        "<p><a href=\"https://db-ip.com\">IP Geolocation by DB-IP</a></p>"
    } else {
        ""
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>geoip-exporter</title></head>\n<body>\n<h1>geoip-exporter</h1>\n\
         <p>Where this machine's TCP connections come from and go to, by country.</p>\n\
         <ul><li><a href=\"{path}\">Metrics</a> (<code>{path}</code>)</li>\
         <li><a href=\"/healthz\">Health</a></li></ul>\n\
         <p>GeoIP database: <code>{db_type}</code> from <code>{db_path}</code>.</p>\n\
         {attribution}\n<p>Version {}.</p>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
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
    async fn landing_links_metrics_and_escapes() {
        let (status, ctype, body) = get(router(state(), "/m"), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/html"));
        assert!(body.contains("<a href=\"/m\">"));
        assert!(body.contains("dbip-country &lt;b&gt;"));
        assert!(body.contains("IP Geolocation by DB-IP"));
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
