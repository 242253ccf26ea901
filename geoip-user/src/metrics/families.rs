//! The families that count connections: `geoip_connections` and its
//! totals (always), the compatibility `job_location`, and the opt-in ones
//! (`--labels asn,city`, `--metrics.duration`, `--metrics.bytes`).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Registry};

use super::register::{counter_vec, gauge_vec, register};

/// Which opt-in families are exported (`--labels`, `--metrics.*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[expect(clippy::struct_excessive_bools, reason = "one switch per family")]
pub(crate) struct Wanted {
    /// A `service` label on the connection families.
    pub(crate) service: bool,
    pub(crate) asn: bool,
    pub(crate) city: bool,
    pub(crate) duration: bool,
    pub(crate) bytes: bool,
}

/// The buckets of `geoip_connection_duration_seconds`: from a short API
/// call (10 ms) to a day-long stream, a step of 2.5-10x.
pub(crate) const DURATION_BUCKETS: [f64; 11] = [
    0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 21_600.0, 86_400.0,
];

/// `geoip_connections` and its opened and closed totals, by country and
/// direction (and service, with `--labels service`), and `job_location`.
#[derive(Clone)]
pub(super) struct ConnectionFamilies {
    pub(super) connections: IntGaugeVec,
    pub(super) opened: IntCounterVec,
    pub(super) closed: IntCounterVec,
    pub(super) legacy: Option<IntGaugeVec>,
    /// Whether the families have a `service` label.
    pub(super) service: bool,
}

impl ConnectionFamilies {
    pub(super) fn new(
        registry: &Registry,
        legacy_job_location: bool,
        service: bool,
    ) -> prometheus::Result<Self> {
        let labels: &[&str] = if service {
            &["country", "direction", "service"]
        } else {
            &["country", "direction"]
        };
        let connections = gauge_vec(
            registry,
            "geoip_connections",
            "TCP connections now ESTABLISHED, by the remote end's country (ISO 3166-1 alpha-2, or unknown) and who opened them.",
            labels,
        )?;
        let opened = counter_vec(
            registry,
            "geoip_connections_opened_total",
            "TCP connections that entered ESTABLISHED (or were already ESTABLISHED at start-up), by country and direction.",
            labels,
        )?;
        let closed = counter_vec(
            registry,
            "geoip_connections_closed_total",
            "Tracked TCP connections that left ESTABLISHED, by country and direction.",
            labels,
        )?;
        let legacy = legacy_job_location
            .then(|| {
                gauge_vec(
                    registry,
                    "job_location",
                    "Compatibility: TCP connections now ESTABLISHED by country code, both directions (the original tool's metric).",
                    &["location"],
                )
            })
            .transpose()?;
        Ok(Self {
            connections,
            opened,
            closed,
            legacy,
            service,
        })
    }
}

/// The opt-in families, when exported.
#[derive(Clone, Default)]
pub(super) struct OptInFamilies {
    pub(super) by_asn: Option<IntGaugeVec>,
    pub(super) by_city: Option<IntGaugeVec>,
    pub(super) city_location: Option<IntGaugeVec>,
    pub(super) duration: Option<HistogramVec>,
    pub(super) received: Option<IntCounterVec>,
    pub(super) sent: Option<IntCounterVec>,
}

impl OptInFamilies {
    pub(super) fn new(wanted: Wanted, registry: &Registry) -> prometheus::Result<Self> {
        let mut families = Self::default();
        if wanted.duration {
            families.duration = Some(duration(registry)?);
        }
        if wanted.bytes {
            families.received = Some(counter_vec(
                registry,
                "geoip_received_bytes_total",
                "Payload bytes received on TCP connections, by country and direction: counted when they close and every --metrics.bytes-interval while open.",
                &["country", "direction"],
            )?);
            families.sent = Some(counter_vec(
                registry,
                "geoip_sent_bytes_total",
                "Payload bytes sent on TCP connections and acknowledged by the peer, by country and direction: counted when they close and every --metrics.bytes-interval while open.",
                &["country", "direction"],
            )?);
        }
        if wanted.asn {
            families.by_asn = Some(gauge_vec(
                registry,
                "geoip_connections_by_asn",
                "TCP connections now ESTABLISHED, by the remote end's autonomous system (number and organisation; the busiest --labels.asn-limit, the rest as other, no answer as unknown) and who opened them.",
                &["asn", "as_org", "direction"],
            )?);
        }
        if wanted.city {
            families.by_city = Some(gauge_vec(
                registry,
                "geoip_connections_by_city",
                "TCP connections now ESTABLISHED, by the remote end's city (the busiest --labels.city-limit; the rest of each country as other, no answer as unknown) and who opened them.",
                &["country", "city", "direction"],
            )?);
            families.city_location = Some(gauge_vec(
                registry,
                "geoip_city_location_info",
                "Where each city of geoip_connections_by_city lies (degrees, WGS 84), for map markers; always 1.",
                &["country", "city", "latitude", "longitude"],
            )?);
        }
        Ok(families)
    }
}

fn duration(registry: &Registry) -> prometheus::Result<HistogramVec> {
    let opts = HistogramOpts::new(
        "geoip_connection_duration_seconds",
        "How long TCP connections stayed ESTABLISHED, by country and direction, observed when they close (connections that existed before the exporter started are not observed).",
    )
    .buckets(DURATION_BUCKETS.to_vec());
    register(
        registry,
        HistogramVec::new(opts, &["country", "direction"])?,
    )
}
