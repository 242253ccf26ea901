//! The routes, and the handlers that are not the JSON API: `/metrics`
//! (or `--web.telemetry-path`), the live map at `/` with its country
//! shapes at `/assets/world.json`, and `/healthz`.

use std::sync::atomic::Ordering;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};

use super::{
    api::{asns, connections, countries},
    page,
    state::AppState,
};
use crate::metrics::TEXT_FORMAT;

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

async fn metrics(State(state): State<AppState>) -> Response {
    // Off the server's threads: a render waits while the event thread
    // applies a change (a merge of a large snapshot takes a while), and
    // the server must go on answering meanwhile.
    let rendered = tokio::task::spawn_blocking(move || state.scrapes.render(&state.metrics)).await;
    match rendered {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering metrics failed: {err}\n"),
            )
                .into_response()
        }
        Ok(Err(err)) => {
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
