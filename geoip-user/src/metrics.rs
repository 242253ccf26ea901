//! The exporter's metrics; the only module that touches `prometheus` types.
//!
//! Per-country series are created the first time a country is seen and
//! then updated in place (the handles are cached), so a scrape reads
//! atomics and never walks the connection table.

use std::collections::{BTreeMap, HashMap};

use prometheus::{
    Encoder as _, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::{
    capped::Slot,
    conn::Direction,
    geo::{City, Country},
};

/// Where a count kept in the kernel comes from (read at each scrape).
pub(crate) type KernelCount = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// The registry and every metric in it; cheap to clone.
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    connections: IntGaugeVec,
    opened: IntCounterVec,
    closed: IntCounterVec,
    legacy: Option<IntGaugeVec>,
    /// Whether the connection families have a `service` label.
    service: bool,
    wanted: Wanted,
    families: Families,
    events_read: IntCounterVec,
    events_undecodable: IntCounter,
    lookup_errors: IntCounter,
    tracked: IntGauge,
    database_build: IntGauge,
    health: Health,
}

/// How reloads and reconciles went.
#[derive(Clone)]
struct Health {
    database_reloads: IntCounterVec,
    database_reload_ok: IntGauge,
    corrections: IntCounterVec,
    reconciles: IntCounterVec,
    namespaces: IntGaugeVec,
    snapshot_seconds: Gauge,
    http_rejected: IntCounter,
}

impl Health {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let database_reloads = IntCounterVec::new(
            opts(
                "geoip_exporter_database_reloads_total",
                "GeoIP database reloads (file replaced, or SIGHUP), by result; on failure the previous database stays in use.",
            ),
            &["result"],
        )?;
        let database_reload_ok = IntGauge::with_opts(opts(
            "geoip_exporter_database_last_reload_successful",
            "1 if the last GeoIP database (re)load succeeded, 0 if it failed and an older database is in use.",
        ))?;
        database_reload_ok.set(1);
        let corrections = IntCounterVec::new(
            opts(
                "geoip_exporter_reconcile_corrections_total",
                "Connections a reconcile with the kernel's socket table had to add (opened, their event lost) or remove (closed, their event lost).",
            ),
            &["action"],
        )?;
        let reconciles = IntCounterVec::new(
            opts(
                "geoip_exporter_reconciles_total",
                "Reconciles of the connection table with the kernel's socket table (after lost, skipped or undecodable events, or every --reconcile.max-interval), by result.",
            ),
            &["result"],
        )?;
        let namespaces = IntGaugeVec::new(
            opts(
                "geoip_exporter_network_namespaces",
                "Network namespaces at the last snapshot of the kernel's socket table: scanned, or unreadable (their connections are then kept as the events say).",
            ),
            &["state"],
        )?;
        let snapshot_seconds = Gauge::with_opts(opts(
            "geoip_exporter_snapshot_duration_seconds",
            "How long the last snapshot of the kernel's socket table (every network namespace) took.",
        ))?;
        let http_rejected = IntCounter::with_opts(opts(
            "geoip_exporter_http_connections_rejected_total",
            "HTTP connections answered 503 and closed because --web.max-connections were already open.",
        ))?;
        for result in ["success", "failure"] {
            database_reloads.with_label_values(&[result]);
            reconciles.with_label_values(&[result]);
        }
        for action in ["added", "removed"] {
            corrections.with_label_values(&[action]);
        }
        for state in ["scanned", "unreadable"] {
            namespaces.with_label_values(&[state]);
        }
        registry.register(Box::new(database_reloads.clone()))?;
        registry.register(Box::new(database_reload_ok.clone()))?;
        registry.register(Box::new(corrections.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(namespaces.clone()))?;
        registry.register(Box::new(snapshot_seconds.clone()))?;
        registry.register(Box::new(http_rejected.clone()))?;
        Ok(Self {
            database_reloads,
            database_reload_ok,
            corrections,
            reconciles,
            namespaces,
            snapshot_seconds,
            http_rejected,
        })
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

/// `geoip_exporter_build_info{version,revision,build_date} 1`.
fn build_info() -> Result<IntGaugeVec, prometheus::Error> {
    let build_info = IntGaugeVec::new(
        opts(
            "geoip_exporter_build_info",
            "A metric with a constant '1' value labeled by the exporter's version, git commit and build date.",
        ),
        &["version", "revision", "build_date"],
    )?;
    build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            env!("GEOIP_GIT_COMMIT"),
            env!("GEOIP_BUILD_DATE"),
        ])
        .set(1);
    Ok(build_info)
}

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

/// The opt-in families, when exported.
#[derive(Clone, Default)]
struct Families {
    by_asn: Option<IntGaugeVec>,
    by_city: Option<IntGaugeVec>,
    city_location: Option<IntGaugeVec>,
    duration: Option<HistogramVec>,
    received: Option<IntCounterVec>,
    sent: Option<IntCounterVec>,
}

impl Families {
    fn new(wanted: Wanted, registry: &Registry) -> Result<Self, prometheus::Error> {
        let mut families = Self::default();
        if wanted.duration {
            let duration = HistogramVec::new(
                HistogramOpts::new(
                    "geoip_connection_duration_seconds",
                    "How long TCP connections stayed ESTABLISHED, by country and direction, observed when they close (connections that existed before the exporter started are not observed).",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["country", "direction"],
            )?;
            registry.register(Box::new(duration.clone()))?;
            families.duration = Some(duration);
        }
        if wanted.bytes {
            let received = IntCounterVec::new(
                opts(
                    "geoip_received_bytes_total",
                    "Payload bytes received on TCP connections, by country and direction: counted when they close and every --metrics.bytes-interval while open.",
                ),
                &["country", "direction"],
            )?;
            let sent = IntCounterVec::new(
                opts(
                    "geoip_sent_bytes_total",
                    "Payload bytes sent on TCP connections and acknowledged by the peer, by country and direction: counted when they close and every --metrics.bytes-interval while open.",
                ),
                &["country", "direction"],
            )?;
            registry.register(Box::new(received.clone()))?;
            registry.register(Box::new(sent.clone()))?;
            families.received = Some(received);
            families.sent = Some(sent);
        }
        if wanted.asn {
            let by_asn = IntGaugeVec::new(
                opts(
                    "geoip_connections_by_asn",
                    "TCP connections now ESTABLISHED, by the remote end's autonomous system (number and organisation; the busiest --labels.asn-limit, the rest as other, no answer as unknown) and who opened them.",
                ),
                &["asn", "as_org", "direction"],
            )?;
            registry.register(Box::new(by_asn.clone()))?;
            families.by_asn = Some(by_asn);
        }
        if wanted.city {
            let by_city = IntGaugeVec::new(
                opts(
                    "geoip_connections_by_city",
                    "TCP connections now ESTABLISHED, by the remote end's city (the busiest --labels.city-limit; the rest of each country as other, no answer as unknown) and who opened them.",
                ),
                &["country", "city", "direction"],
            )?;
            let city_location = IntGaugeVec::new(
                opts(
                    "geoip_city_location_info",
                    "Where each city of geoip_connections_by_city lies (degrees, WGS 84), for map markers; always 1.",
                ),
                &["country", "city", "latitude", "longitude"],
            )?;
            registry.register(Box::new(by_city.clone()))?;
            registry.register(Box::new(city_location.clone()))?;
            families.by_city = Some(by_city);
            families.city_location = Some(city_location);
        }
        Ok(families)
    }
}

impl Metrics {
    /// Create and register every metric. `legacy_job_location` adds the
    /// original tool's `job_location{location}` gauge.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn new(legacy_job_location: bool) -> Result<Self, prometheus::Error> {
        Self::with_families(legacy_job_location, Wanted::default())
    }

    /// [`Self::new`], and the opt-in families `wanted`.
    pub(crate) fn with_families(
        legacy_job_location: bool,
        wanted: Wanted,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let labels: &[&str] = if wanted.service {
            &["country", "direction", "service"]
        } else {
            &["country", "direction"]
        };
        let connections = IntGaugeVec::new(
            opts(
                "geoip_connections",
                "TCP connections now ESTABLISHED, by the remote end's country (ISO 3166-1 alpha-2, or unknown) and who opened them.",
            ),
            labels,
        )?;
        let opened = IntCounterVec::new(
            opts(
                "geoip_connections_opened_total",
                "TCP connections that entered ESTABLISHED (or were already ESTABLISHED at start-up), by country and direction.",
            ),
            labels,
        )?;
        let closed = IntCounterVec::new(
            opts(
                "geoip_connections_closed_total",
                "Tracked TCP connections that left ESTABLISHED, by country and direction.",
            ),
            labels,
        )?;
        let legacy = legacy_job_location
            .then(|| {
                IntGaugeVec::new(
                    opts(
                        "job_location",
                        "Compatibility: TCP connections now ESTABLISHED by country code, both directions (the original tool's metric).",
                    ),
                    &["location"],
                )
            })
            .transpose()?;
        let events_read = IntCounterVec::new(
            opts(
                "geoip_exporter_events_read_total",
                "Connection events read from the kernel ring buffer, by kind (open, close; final: the last byte counts of a closed connection, with --metrics.bytes).",
            ),
            &["kind"],
        )?;
        let events_undecodable = IntCounter::with_opts(opts(
            "geoip_exporter_events_undecodable_total",
            "Ring buffer records that could not be decoded (a kernel/user-space mismatch).",
        ))?;
        let lookup_errors = IntCounter::with_opts(opts(
            "geoip_exporter_lookup_errors_total",
            "GeoIP lookups that failed (damaged database record); those connections count as country=\"unknown\".",
        ))?;
        let tracked = IntGauge::with_opts(opts(
            "geoip_exporter_connections_tracked",
            "Connections in the exporter's live connection table.",
        ))?;
        let database_build = IntGauge::with_opts(opts(
            "geoip_exporter_database_build_timestamp_seconds",
            "Build time of the GeoIP database in use, as a Unix timestamp.",
        ))?;
        for kind in ["open", "close"] {
            events_read.with_label_values(&[kind]);
        }
        if wanted.bytes {
            events_read.with_label_values(&["final"]);
        }

        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(opened.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        if let Some(legacy) = &legacy {
            registry.register(Box::new(legacy.clone()))?;
        }
        registry.register(Box::new(events_read.clone()))?;
        registry.register(Box::new(events_undecodable.clone()))?;
        registry.register(Box::new(lookup_errors.clone()))?;
        registry.register(Box::new(tracked.clone()))?;
        registry.register(Box::new(database_build.clone()))?;
        let families = Families::new(wanted, &registry)?;
        let health = Health::new(&registry)?;
        registry.register(Box::new(build_info()?))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            connections,
            opened,
            closed,
            legacy,
            service: wanted.service,
            wanted,
            families,
            events_read,
            events_undecodable,
            lookup_errors,
            tracked,
            database_build,
            health,
        })
    }

    /// Export the kernel's counts of events it could not hand over: ring
    /// buffer full (`lost`), and runs of the program the kernel skipped
    /// because it was already running on that CPU (`missed`).
    pub(crate) fn register_kernel_losses(
        &self,
        lost: KernelCount,
        missed: KernelCount,
    ) -> Result<(), prometheus::Error> {
        let counter = IntCounter::with_opts(opts(
            "geoip_exporter_events_lost_total",
            "Connection events the kernel program could not submit because the ring buffer was full; the reconcile they trigger repairs the counts. Raise --ringbuf.size-bytes.",
        ))?;
        self.registry.register(Box::new(FromKernel {
            counter,
            source: lost,
        }))?;
        let counter = IntCounter::with_opts(opts(
            "geoip_exporter_events_missed_total",
            "Runs of the kernel program the kernel skipped because it was already running on that CPU (a TCP state change in an interrupt during another one); each may have been a connection event, which the reconcile they trigger repairs.",
        ))?;
        self.registry.register(Box::new(FromKernel {
            counter,
            source: missed,
        }))
    }

    pub(crate) fn set_database_build(&self, epoch: u64) {
        self.database_build
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// A database (re)load finished: `Some(build epoch)` if it is now in
    /// use, `None` if it failed and the previous one stays.
    pub(crate) fn database_reloaded(&self, loaded: Option<u64>) {
        let result = if loaded.is_some() {
            "success"
        } else {
            "failure"
        };
        self.health
            .database_reloads
            .with_label_values(&[result])
            .inc();
        self.health
            .database_reload_ok
            .set(i64::from(loaded.is_some()));
        if let Some(epoch) = loaded {
            self.set_database_build(epoch);
        }
    }

    /// A snapshot of the kernel's socket table was taken.
    pub(crate) fn snapshot_taken(&self, scanned: usize, unreadable: usize, seconds: f64) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.health
            .namespaces
            .with_label_values(&["scanned"])
            .set(n(scanned));
        self.health
            .namespaces
            .with_label_values(&["unreadable"])
            .set(n(unreadable));
        self.health.snapshot_seconds.set(seconds);
    }

    /// An HTTP connection was refused: too many open.
    pub(crate) fn http_rejected(&self) {
        self.health.http_rejected.inc();
    }

    /// A reconcile ended (`ok`) or could not take its snapshot.
    pub(crate) fn reconciled(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.health.reconciles.with_label_values(&[result]).inc();
    }

    /// The whole registry in the text exposition format.
    pub(crate) fn render(&self) -> Result<String, prometheus::Error> {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Which opt-in families are exported.
    pub(crate) const fn wanted(&self) -> Wanted {
        self.wanted
    }

    /// Current connections and opened/closed totals by country and
    /// direction (of the service `service` only, with `--labels
    /// service`), and each service's, read from the same series
    /// `/metrics` shows.
    pub(crate) fn overview(&self, service: Option<&str>) -> Overview {
        let mut out = Overview::default();
        let families = [
            &self.connections as &dyn Collector,
            &self.opened,
            &self.closed,
        ];
        for (which, collector) in families.into_iter().enumerate() {
            for_each_series(collector, |labels, metric| {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "integer-valued, non-negative samples"
                )]
                let add = |counts: &mut Counts| match which {
                    0 => counts.connections += metric.get_gauge().get_value() as i64,
                    1 => counts.opened += metric.get_counter().get_value() as u64,
                    _ => counts.closed += metric.get_counter().get_value() as u64,
                };
                let shown = labels.service;
                if let Some(name) = shown {
                    add(out
                        .services
                        .entry(name.to_owned())
                        .or_default()
                        .get(labels.inbound));
                }
                // Summed: with `--labels service` a country and direction
                // have a series per service.
                if service.is_none() || service == shown {
                    add(out
                        .countries
                        .entry(labels.country.to_owned())
                        .or_default()
                        .get(labels.inbound));
                }
            });
        }
        // Bytes are counted by country and direction only.
        if service.is_none()
            && let (Some(received), Some(sent)) = (&self.families.received, &self.families.sent)
        {
            for (collector, received) in [(received, true), (sent, false)] {
                for_each_series(collector, |labels, metric| {
                    #[expect(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "integer-valued, non-negative samples"
                    )]
                    let value = metric.get_counter().get_value() as u64;
                    let counts = out
                        .countries
                        .entry(labels.country.to_owned())
                        .or_default()
                        .get(labels.inbound);
                    let field = if received {
                        &mut counts.received_bytes
                    } else {
                        &mut counts.sent_bytes
                    };
                    *field = Some(field.unwrap_or(0) + value);
                });
            }
            for counts in out.countries.values_mut() {
                for c in [&mut counts.inbound, &mut counts.outbound] {
                    c.received_bytes.get_or_insert(0);
                    c.sent_bytes.get_or_insert(0);
                }
            }
        }
        out
    }

    /// A fresh recorder for the one task that updates connection metrics.
    pub(crate) fn recorder(&self) -> Recorder {
        Recorder {
            metrics: self.clone(),
            series: HashMap::new(),
            locations: HashMap::new(),
            asn_series: HashMap::new(),
            durations: HashMap::new(),
            bytes_series: HashMap::new(),
            city_series: HashMap::new(),
            city_locations: HashMap::new(),
            events_open: self.events_read.with_label_values(&["open"]),
            events_close: self.events_read.with_label_values(&["close"]),
            events_final: self
                .families
                .received
                .as_ref()
                .map(|_| self.events_read.with_label_values(&["final"])),
        }
    }
}

/// One direction's numbers for a country.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Counts {
    /// Connections now ESTABLISHED.
    pub(crate) connections: i64,
    /// Connections opened since start-up.
    pub(crate) opened: u64,
    /// Connections closed since start-up.
    pub(crate) closed: u64,
    /// Payload bytes received since start-up (`--metrics.bytes`, and no
    /// service asked for: bytes are counted by country and direction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) received_bytes: Option<u64>,
    /// Payload bytes sent and acknowledged, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sent_bytes: Option<u64>,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, rhs: Self) {
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.connections += rhs.connections;
        self.opened += rhs.opened;
        self.closed += rhs.closed;
        self.received_bytes = sum(self.received_bytes, rhs.received_bytes);
        self.sent_bytes = sum(self.sent_bytes, rhs.sent_bytes);
    }
}

/// A country's (or a service's) numbers, both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct CountryCounts {
    pub(crate) inbound: Counts,
    pub(crate) outbound: Counts,
}

impl CountryCounts {
    fn get(&mut self, inbound: bool) -> &mut Counts {
        if inbound {
            &mut self.inbound
        } else {
            &mut self.outbound
        }
    }
}

/// What [`Metrics::overview`] found.
#[derive(Debug, Default)]
pub(crate) struct Overview {
    /// By country code (or `unknown`).
    pub(crate) countries: BTreeMap<String, CountryCounts>,
    /// By `service` label value (empty without `--labels service`), every
    /// service whatever was asked for.
    pub(crate) services: BTreeMap<String, CountryCounts>,
}

/// The labels [`Metrics::overview`] reads of a series.
struct SeriesLabels<'a> {
    country: &'a str,
    inbound: bool,
    service: Option<&'a str>,
}

/// Call `f` with every series of `collector` that has a country and a
/// direction.
fn for_each_series(
    collector: &dyn Collector,
    mut f: impl FnMut(SeriesLabels<'_>, &prometheus::proto::Metric),
) {
    for family in collector.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(prometheus::proto::LabelPair::value)
            };
            let (Some(country), Some(direction)) = (label("country"), label("direction")) else {
                continue;
            };
            let labels = SeriesLabels {
                country,
                inbound: direction == "inbound",
                service: label("service"),
            };
            f(labels, metric);
        }
    }
}

/// A counter kept in the kernel, read at collection time.
struct FromKernel {
    counter: IntCounter,
    source: KernelCount,
}

impl Collector for FromKernel {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(total) = (self.source)() {
            let seen = self.counter.get();
            if total > seen {
                self.counter.inc_by(total - seen);
            }
        }
        self.counter.collect()
    }
}

/// The series of one (country, direction).
struct Series {
    connections: IntGauge,
    opened: IntCounter,
    closed: IntCounter,
}

/// Updates connection metrics with cached handles; owned by the tracker.
pub(crate) struct Recorder {
    metrics: Metrics,
    /// By country, direction and service slot (0 without `--labels
    /// service`).
    series: HashMap<(Country, Direction, Slot), Series>,
    locations: HashMap<Country, IntGauge>,
    asn_series: HashMap<(Slot, Direction), IntGauge>,
    durations: HashMap<(Country, Direction), prometheus::Histogram>,
    bytes_series: HashMap<(Country, Direction), (IntCounter, IntCounter)>,
    city_series: HashMap<(Country, Slot, Direction), IntGauge>,
    /// The label values of each city slot's location series.
    city_locations: HashMap<Slot, [String; 4]>,
    events_open: IntCounter,
    events_close: IntCounter,
    /// With `--metrics.bytes`.
    events_final: Option<IntCounter>,
}

impl Recorder {
    fn series(
        &mut self,
        country: Country,
        direction: Direction,
        service: Slot,
        label: impl FnOnce() -> String,
    ) -> &Series {
        let m = &self.metrics;
        let key = (country, direction, if m.service { service } else { 0 });
        self.series.entry(key).or_insert_with(|| {
            let service = if m.service { label() } else { String::new() };
            let with_service = [country.as_str(), direction.as_str(), service.as_str()];
            let labels = if m.service {
                &with_service[..]
            } else {
                &with_service[..2]
            };
            Series {
                connections: m.connections.with_label_values(labels),
                opened: m.opened.with_label_values(labels),
                closed: m.closed.with_label_values(labels),
            }
        })
    }

    fn location(&mut self, country: Country, delta: i64) {
        if let Some(legacy) = &self.metrics.legacy {
            self.locations
                .entry(country)
                .or_insert_with(|| legacy.with_label_values(&[country.as_str()]))
                .add(delta);
        }
    }

    /// A connection to or from `country` (counted under the service slot
    /// `service`, whose label value `label` gives) is now tracked.
    pub(crate) fn opened(
        &mut self,
        country: Country,
        direction: Direction,
        service: Slot,
        label: impl FnOnce() -> String,
    ) {
        let s = self.series(country, direction, service, label);
        s.connections.inc();
        s.opened.inc();
        self.location(country, 1);
        self.metrics.tracked.inc();
    }

    /// A tracked connection closed.
    pub(crate) fn closed(
        &mut self,
        country: Country,
        direction: Direction,
        service: Slot,
        label: impl FnOnce() -> String,
    ) {
        let s = self.series(country, direction, service, label);
        s.connections.dec();
        s.closed.inc();
        self.location(country, -1);
        self.metrics.tracked.dec();
    }

    /// The service slot `slot` (showing `label`) is free: its series go,
    /// in every country and direction.
    pub(crate) fn drop_service(&mut self, slot: Slot, label: &str) {
        let m = &self.metrics;
        self.series.retain(|&(country, direction, s), _| {
            if s != slot {
                return true;
            }
            let labels = [country.as_str(), direction.as_str(), label];
            let _ = m.connections.remove_label_values(&labels);
            let _ = m.opened.remove_label_values(&labels);
            let _ = m.closed.remove_label_values(&labels);
            false
        });
    }

    /// A connection to or from `country` closed after `seconds`.
    pub(crate) fn duration(&mut self, country: Country, direction: Direction, seconds: f64) {
        let Some(family) = &self.metrics.families.duration else {
            return;
        };
        self.durations
            .entry((country, direction))
            .or_insert_with(|| family.with_label_values(&[country.as_str(), direction.as_str()]))
            .observe(seconds);
    }

    /// Connections to or from `country` received and sent these many
    /// more payload bytes.
    pub(crate) fn bytes(
        &mut self,
        country: Country,
        direction: Direction,
        received: u64,
        sent: u64,
    ) {
        let (Some(rx), Some(tx)) = (&self.metrics.families.received, &self.metrics.families.sent)
        else {
            return;
        };
        let (r, t) = self
            .bytes_series
            .entry((country, direction))
            .or_insert_with(|| {
                let labels = [country.as_str(), direction.as_str()];
                (rx.with_label_values(&labels), tx.with_label_values(&labels))
            });
        r.inc_by(received);
        t.inc_by(sent);
    }

    /// An ASN series changed by `delta`; `labels` (`asn`, `as_org`) are
    /// asked for only when the series has no handle yet.
    pub(crate) fn asn(
        &mut self,
        slot: Slot,
        direction: Direction,
        delta: i64,
        labels: impl FnOnce() -> [String; 2],
    ) {
        let Some(family) = &self.metrics.families.by_asn else {
            return;
        };
        self.asn_series
            .entry((slot, direction))
            .or_insert_with(|| {
                let [asn, org] = labels();
                family.with_label_values(&[asn.as_str(), org.as_str(), direction.as_str()])
            })
            .add(delta);
    }

    /// The ASN slot `slot` (showing `labels`) is free: its series go.
    pub(crate) fn drop_asn(&mut self, slot: Slot, labels: &[String; 2]) {
        let Some(family) = &self.metrics.families.by_asn else {
            return;
        };
        for direction in [Direction::Inbound, Direction::Outbound] {
            self.asn_series.remove(&(slot, direction));
            let _ = family.remove_label_values(&[
                labels[0].as_str(),
                labels[1].as_str(),
                direction.as_str(),
            ]);
        }
    }

    /// A city series changed by `delta`; `name` is asked for only when the
    /// series has no handle yet.
    pub(crate) fn city(
        &mut self,
        country: Country,
        slot: Slot,
        direction: Direction,
        delta: i64,
        name: impl FnOnce() -> String,
    ) {
        let Some(family) = &self.metrics.families.by_city else {
            return;
        };
        self.city_series
            .entry((country, slot, direction))
            .or_insert_with(|| {
                family.with_label_values(&[country.as_str(), name().as_str(), direction.as_str()])
            })
            .add(delta);
    }

    /// The city slot `slot` shows `city`: its location series exists.
    pub(crate) fn city_location(&mut self, slot: Slot, city: &City) {
        let Some(family) = &self.metrics.families.city_location else {
            return;
        };
        self.city_locations.entry(slot).or_insert_with(|| {
            let labels = [
                city.country.as_str().to_owned(),
                city.name.to_string(),
                format!("{:.4}", city.latitude),
                format!("{:.4}", city.longitude),
            ];
            family
                .with_label_values(&[
                    labels[0].as_str(),
                    labels[1].as_str(),
                    labels[2].as_str(),
                    labels[3].as_str(),
                ])
                .set(1);
            labels
        });
    }

    /// The city slot `slot` (showing `city`) is free: its series go.
    pub(crate) fn drop_city(&mut self, slot: Slot, city: &City) {
        if let Some(family) = &self.metrics.families.by_city {
            for direction in [Direction::Inbound, Direction::Outbound] {
                self.city_series.remove(&(city.country, slot, direction));
                let _ = family.remove_label_values(&[
                    city.country.as_str(),
                    &city.name,
                    direction.as_str(),
                ]);
            }
        }
        if let (Some(family), Some(labels)) = (
            &self.metrics.families.city_location,
            self.city_locations.remove(&slot),
        ) {
            let _ = family.remove_label_values(&[
                labels[0].as_str(),
                labels[1].as_str(),
                labels[2].as_str(),
                labels[3].as_str(),
            ]);
        }
    }

    /// A connection's last byte counts were read (`--metrics.bytes`).
    pub(crate) fn final_read(&self) {
        if let Some(c) = &self.events_final {
            c.inc();
        }
    }

    pub(crate) fn event_read(&self, open: bool) {
        if open {
            self.events_open.inc();
        } else {
            self.events_close.inc();
        }
    }

    /// The reconcile added and removed this many connections.
    pub(crate) fn corrections(&self, added: u64, removed: u64) {
        let c = &self.metrics.health.corrections;
        c.with_label_values(&["added"]).inc_by(added);
        c.with_label_values(&["removed"]).inc_by(removed);
    }

    pub(crate) fn undecodable(&self) {
        self.metrics.events_undecodable.inc();
    }

    pub(crate) fn lookup_error(&self) {
        self.metrics.lookup_errors.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn de() -> Country {
        Country::from_code("DE")
    }

    /// The build's version, commit and date, as `--version` tells them.
    #[test]
    fn build_info_names_the_version_commit_and_date() {
        let text = Metrics::new(true).unwrap().render().unwrap();
        let line = format!(
            "geoip_exporter_build_info{{build_date=\"{}\",revision=\"{}\",version=\"{}\"}} 1",
            env!("GEOIP_BUILD_DATE"),
            env!("GEOIP_GIT_COMMIT"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        let date = env!("GEOIP_BUILD_DATE").as_bytes();
        assert!(
            date.len() == 10 && date[4] == b'-' && date[7] == b'-',
            "a UTC date: {}",
            env!("GEOIP_BUILD_DATE")
        );
        assert_ne!(
            env!("GEOIP_GIT_COMMIT"),
            "unknown",
            "built in a git checkout"
        );
    }

    #[test]
    fn series_follow_opens_and_closes() {
        let m = Metrics::new(true).unwrap();
        let mut r = m.recorder();
        r.opened(de(), Direction::Inbound, 0, String::new);
        r.opened(de(), Direction::Inbound, 0, String::new);
        r.opened(de(), Direction::Outbound, 0, String::new);
        r.opened(Country::UNKNOWN, Direction::Outbound, 0, String::new);
        r.closed(de(), Direction::Inbound, 0, String::new);
        let overview = m.overview(None);
        assert!(overview.services.is_empty(), "no service label");
        let countries = overview.countries;
        assert_eq!(
            countries["DE"],
            CountryCounts {
                inbound: Counts {
                    connections: 1,
                    opened: 2,
                    closed: 1,
                    ..Counts::default()
                },
                outbound: Counts {
                    connections: 1,
                    opened: 1,
                    closed: 0,
                    ..Counts::default()
                },
            }
        );
        assert_eq!(countries["unknown"].outbound.connections, 1);
        assert_eq!(countries.len(), 2);
        let text = m.render().unwrap();
        for line in [
            "geoip_connections{country=\"DE\",direction=\"inbound\"} 1",
            "geoip_connections{country=\"DE\",direction=\"outbound\"} 1",
            "geoip_connections{country=\"unknown\",direction=\"outbound\"} 1",
            "geoip_connections_opened_total{country=\"DE\",direction=\"inbound\"} 2",
            "geoip_connections_closed_total{country=\"DE\",direction=\"inbound\"} 1",
            "geoip_connections_closed_total{country=\"DE\",direction=\"outbound\"} 0",
            "job_location{location=\"DE\"} 2",
            "job_location{location=\"unknown\"} 1",
            "geoip_exporter_connections_tracked 3",
            "geoip_exporter_events_read_total{kind=\"open\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn legacy_gauge_is_optional_and_lost_events_are_read_at_scrape() {
        let m = Metrics::new(false).unwrap();
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let source = lost.clone();
        m.register_kernel_losses(
            Box::new(move || Some(source.load(std::sync::atomic::Ordering::Relaxed))),
            Box::new(|| Some(3)),
        )
        .unwrap();
        assert!(
            m.render()
                .unwrap()
                .contains("geoip_exporter_events_lost_total 0\n")
        );
        lost.store(7, std::sync::atomic::Ordering::Relaxed);
        let text = m.render().unwrap();
        assert!(
            text.contains("geoip_exporter_events_lost_total 7\n"),
            "{text}"
        );
        assert!(text.contains("geoip_exporter_events_missed_total 3\n"));
        assert!(!text.contains("job_location"));
    }
}
