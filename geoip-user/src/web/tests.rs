//! The routes through `oneshot` requests, no socket: each endpoint's
//! status, headers and body, the API's filters and their errors.

use std::sync::atomic::Ordering;

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{StatusCode, header},
};
use tokio::sync::mpsc;
use tower::ServiceExt as _;

use super::{AppState, router};
use crate::{
    geo::{Country, DatabaseInfo},
    metrics::{Metrics, Wanted},
    table::{AsnCount, ConnList, Query},
};

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
