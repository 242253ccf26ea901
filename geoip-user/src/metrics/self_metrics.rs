//! The exporter's observation of itself, `geoip_exporter_*`: what the
//! table's task counts ([`Pipeline`]: events read and undecodable, lookup
//! errors, the table's size, reconcile corrections) and how the rest goes
//! ([`Health`]: the database in use and its reloads, reconciles, the
//! snapshots' namespaces and time, refused HTTP connections), and the
//! build. Every label set is made at start-up, so each series reads 0
//! before it first moves.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::register::{counter, counter_vec, gauge, gauge_vec, register};

/// What the task that owns the connection table counts.
#[derive(Clone)]
pub(super) struct Pipeline {
    pub(super) events_read: IntCounterVec,
    pub(super) events_undecodable: IntCounter,
    pub(super) lookup_errors: IntCounter,
    pub(super) tracked: IntGauge,
    pub(super) corrections: IntCounterVec,
}

impl Pipeline {
    /// Register every series; `final_events`: the `final` kind of events
    /// read exists (`--metrics.bytes`).
    pub(super) fn new(registry: &Registry, final_events: bool) -> prometheus::Result<Self> {
        let pipeline = Self {
            events_read: counter_vec(
                registry,
                "geoip_exporter_events_read_total",
                "Connection events read from the kernel ring buffer, by kind (open, close; final: the last byte counts of a closed connection, with --metrics.bytes).",
                &["kind"],
            )?,
            events_undecodable: counter(
                registry,
                "geoip_exporter_events_undecodable_total",
                "Ring buffer records that could not be decoded (a kernel/user-space mismatch).",
            )?,
            lookup_errors: counter(
                registry,
                "geoip_exporter_lookup_errors_total",
                "GeoIP lookups that failed (damaged database record); those connections count as country=\"unknown\".",
            )?,
            tracked: gauge(
                registry,
                "geoip_exporter_connections_tracked",
                "Connections in the exporter's live connection table.",
            )?,
            corrections: counter_vec(
                registry,
                "geoip_exporter_reconcile_corrections_total",
                "Connections a reconcile with the kernel's socket table had to add (opened, their event lost) or remove (closed, their event lost).",
                &["action"],
            )?,
        };
        let kinds: &[&str] = if final_events {
            &["open", "close", "final"]
        } else {
            &["open", "close"]
        };
        for kind in kinds {
            pipeline.events_read.with_label_values(&[kind]);
        }
        for action in ["added", "removed"] {
            pipeline.corrections.with_label_values(&[action]);
        }
        Ok(pipeline)
    }
}

/// How the database, the reconciles, the snapshots and the HTTP server
/// are doing.
#[derive(Clone)]
pub(super) struct Health {
    database_build: IntGauge,
    database_reloads: IntCounterVec,
    database_reload_ok: IntGauge,
    reconciles: IntCounterVec,
    namespaces: IntGaugeVec,
    snapshot_seconds: Gauge,
    http_rejected: IntCounter,
}

impl Health {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let health = Self {
            database_build: gauge(
                registry,
                "geoip_exporter_database_build_timestamp_seconds",
                "Build time of the GeoIP database in use, as a Unix timestamp.",
            )?,
            database_reloads: counter_vec(
                registry,
                "geoip_exporter_database_reloads_total",
                "GeoIP database reloads (file replaced, or SIGHUP), by result; on failure the previous database stays in use.",
                &["result"],
            )?,
            database_reload_ok: gauge(
                registry,
                "geoip_exporter_database_last_reload_successful",
                "1 if the last GeoIP database (re)load succeeded, 0 if it failed and an older database is in use.",
            )?,
            reconciles: counter_vec(
                registry,
                "geoip_exporter_reconciles_total",
                "Reconciles of the connection table with the kernel's socket table (after lost, skipped or undecodable events, or every --reconcile.max-interval), by result.",
                &["result"],
            )?,
            namespaces: gauge_vec(
                registry,
                "geoip_exporter_network_namespaces",
                "Network namespaces at the last snapshot of the kernel's socket table: scanned, or unreadable (their connections are then kept as the events say).",
                &["state"],
            )?,
            snapshot_seconds: register(
                registry,
                Gauge::with_opts(Opts::new(
                    "geoip_exporter_snapshot_duration_seconds",
                    "How long the last snapshot of the kernel's socket table (every network namespace) took.",
                ))?,
            )?,
            http_rejected: counter(
                registry,
                "geoip_exporter_http_connections_rejected_total",
                "HTTP connections answered 503 and closed because --web.max-connections were already open.",
            )?,
        };
        health.database_reload_ok.set(1);
        for result in ["success", "failure"] {
            health.database_reloads.with_label_values(&[result]);
            health.reconciles.with_label_values(&[result]);
        }
        for state in ["scanned", "unreadable"] {
            health.namespaces.with_label_values(&[state]);
        }
        register(registry, build_info()?)?;
        Ok(health)
    }

    pub(super) fn set_database_build(&self, epoch: u64) {
        self.database_build
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// A database (re)load finished: `Some(build epoch)` if it is now in
    /// use, `None` if it failed and the previous one stays.
    pub(super) fn database_reloaded(&self, loaded: Option<u64>) {
        let result = if loaded.is_some() {
            "success"
        } else {
            "failure"
        };
        self.database_reloads.with_label_values(&[result]).inc();
        self.database_reload_ok.set(i64::from(loaded.is_some()));
        if let Some(epoch) = loaded {
            self.set_database_build(epoch);
        }
    }

    /// A snapshot of the kernel's socket table was taken.
    pub(super) fn snapshot_taken(&self, scanned: usize, unreadable: usize, seconds: f64) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.namespaces
            .with_label_values(&["scanned"])
            .set(n(scanned));
        self.namespaces
            .with_label_values(&["unreadable"])
            .set(n(unreadable));
        self.snapshot_seconds.set(seconds);
    }

    pub(super) fn http_rejected(&self) {
        self.http_rejected.inc();
    }

    pub(super) fn reconciled(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reconciles.with_label_values(&[result]).inc();
    }
}

/// `geoip_exporter_build_info{version,revision,build_date} 1`.
fn build_info() -> prometheus::Result<IntGaugeVec> {
    let build_info = IntGaugeVec::new(
        Opts::new(
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
