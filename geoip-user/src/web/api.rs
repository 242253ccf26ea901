//! The JSON API the map reads: `/api/v1/countries` (connections,
//! opened/closed totals and bytes by country and direction, of all
//! services or one), `/api/v1/asns` (with `--labels asn`: live connections
//! by network of a country) and, opt-in, `/api/v1/connections`. Bad query
//! strings are answered 400 with what was wrong.

use std::time::Duration;

use axum::{
    extract::{RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::sync::oneshot;

use super::state::AppState;
use crate::{
    geo::Country,
    metrics::{CountryCounts, Wanted},
    table::{AsnCount, Query},
};

/// `/api/v1/connections` answers at most this many connections.
const CONNECTIONS_MAX: usize = 10_000;
/// ... and this many when `limit` is not given.
const CONNECTIONS_DEFAULT: usize = 1_000;

/// What is wrong with a query string: answered 400 with this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum QueryError {
    #[error("unknown parameter {name:?}; the known ones are: {known}")]
    Unknown { name: String, known: String },
    #[error("parameter {name:?} given more than once")]
    Repeated { name: String },
    #[error("limit {value:?} is not a number from 1 to {max}", max = CONNECTIONS_MAX)]
    Limit { value: String },
    #[error("{name} is empty; leave it out for all {name} values")]
    Empty { name: String },
    #[error("service {value:?}: the exporter counts no services; start it with --labels service")]
    NoServices { value: String },
    #[error(
        "country {value:?} is not a two-letter code (ISO 3166-1 alpha-2, such as DE) or unknown"
    )]
    Country { value: String },
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, format!("{self}\n")).into_response()
    }
}

/// The parameters of a query string, decoded; each one of `known`, at
/// most once.
fn params(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, QueryError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !known.contains(&name.as_ref()) {
            return Err(QueryError::Unknown {
                name: name.into_owned(),
                known: known.join(", "),
            });
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(QueryError::Repeated {
                name: name.into_owned(),
            });
        }
        out.push((name.into_owned(), value.into_owned()));
    }
    Ok(out)
}

/// `?limit=N` of `/api/v1/connections`, 1 to [`CONNECTIONS_MAX`].
fn parse_limit(query: Option<&str>) -> Result<usize, QueryError> {
    let mut limit = CONNECTIONS_DEFAULT;
    for (_, value) in params(query, &["limit"])? {
        limit = match value.parse() {
            Ok(n) if (1..=CONNECTIONS_MAX).contains(&n) => n,
            _ => return Err(QueryError::Limit { value }),
        };
    }
    Ok(limit)
}

/// What `/api/v1/countries` and `/api/v1/asns` are asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Selection {
    country: Option<Country>,
    service: Option<String>,
}

/// `?service=NAME` (with `--labels service`) and, if `with_country`,
/// `?country=CC` (two letters or `unknown`).
fn parse_selection(
    query: Option<&str>,
    wanted: Wanted,
    with_country: bool,
) -> Result<Selection, QueryError> {
    let known: &[&str] = if with_country {
        &["country", "service"]
    } else {
        &["service"]
    };
    let mut selection = Selection::default();
    for (name, value) in params(query, known)? {
        if value.is_empty() {
            return Err(QueryError::Empty { name });
        }
        if name == "service" {
            if !wanted.service {
                return Err(QueryError::NoServices { value });
            }
            selection.service = Some(value);
        } else {
            let code = Country::from_code(&value);
            if code == Country::UNKNOWN && value != "unknown" {
                return Err(QueryError::Country { value });
            }
            selection.country = Some(code);
        }
    }
    Ok(selection)
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

pub(super) async fn connections(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Response {
    let limit = match parse_limit(query.as_deref()) {
        Ok(limit) => limit,
        Err(err) => return err.into_response(),
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

pub(super) async fn asns(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let selection = match parse_selection(query.as_deref(), state.metrics.wanted(), true) {
        Ok(selection) => selection,
        Err(err) => return err.into_response(),
    };
    let Selection { country, service } = selection;
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

pub(super) async fn countries(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Response {
    let wanted = state.metrics.wanted();
    let service = match parse_selection(query.as_deref(), wanted, false) {
        Ok(selection) => selection.service,
        Err(err) => return err.into_response(),
    };
    // Off the server's threads, as a render of /metrics (it waits while
    // the event thread applies a change).
    let (metrics, asked) = (state.metrics.clone(), service.clone());
    let Ok(overview) =
        tokio::task::spawn_blocking(move || metrics.overview(asked.as_deref())).await
    else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the counts failed\n",
        )
            .into_response();
    };
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
