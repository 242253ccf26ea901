//! The numbers the JSON API and the map show: connections and their
//! totals by country, direction and service, and bytes by country and
//! direction, read from the same series `/metrics` shows, as typed
//! handles. The recorder puts a series' handles in the [`SeriesIndex`]
//! when it makes the series and takes them out when it drops it (rare);
//! an overview reads their values without touching the text format or
//! the table's task.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use prometheus::{IntCounter, IntGauge};

use crate::{capped::Slot, conn::Direction, geo::Country};

/// The series of one (country, direction, service slot).
#[derive(Clone)]
pub(super) struct Series {
    pub(super) connections: IntGauge,
    pub(super) opened: IntCounter,
    pub(super) closed: IntCounter,
}

/// Every connection series and byte series made so far, shared by the
/// recorder (which writes it rarely) and overviews (which read it).
#[derive(Clone, Default)]
pub(super) struct SeriesIndex(Arc<Mutex<Indexed>>);

#[derive(Default)]
struct Indexed {
    /// By country, direction and service slot: the `service` label value
    /// (none without `--labels service`) and the handles.
    series: HashMap<(Country, Direction, Slot), (Option<String>, Series)>,
    /// Received and sent bytes by country and direction.
    bytes: HashMap<(Country, Direction), (IntCounter, IntCounter)>,
}

impl SeriesIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Indexed> {
        // A poisoned lock only means a holder panicked; the maps are whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn add_series(
        &self,
        key: (Country, Direction, Slot),
        service: Option<String>,
        series: Series,
    ) {
        self.lock().series.insert(key, (service, series));
    }

    /// The series of service slot `slot` are gone.
    pub(super) fn remove_service(&self, slot: Slot) {
        self.lock().series.retain(|&(_, _, s), _| s != slot);
    }

    pub(super) fn add_bytes(&self, key: (Country, Direction), series: (IntCounter, IntCounter)) {
        self.lock().bytes.insert(key, series);
    }

    /// Current connections and opened/closed totals by country and
    /// direction (of the service `service` only, with `--labels
    /// service`), and each service's; bytes by country and direction
    /// (`bytes`: `--metrics.bytes`) when no service is asked for.
    pub(super) fn overview(&self, service: Option<&str>, bytes: bool) -> Overview {
        let indexed = self.lock();
        let mut out = Overview::default();
        for (&(country, direction, _), (shown, s)) in &indexed.series {
            let counts = DirectionCounts {
                connections: s.connections.get(),
                opened: s.opened.get(),
                closed: s.closed.get(),
                ..DirectionCounts::default()
            };
            let inbound = direction == Direction::Inbound;
            if let Some(name) = shown {
                *out.services.entry(name.clone()).or_default().get(inbound) += counts;
            }
            // Summed: with `--labels service` a country and direction have
            // a series per service.
            if service.is_none() || service == shown.as_deref() {
                *out.country(country).get(inbound) += counts;
            }
        }
        // Bytes are counted by country and direction only.
        if bytes && service.is_none() {
            for (&(country, direction), (received, sent)) in &indexed.bytes {
                let counts = out.country(country).get(direction == Direction::Inbound);
                counts.received_bytes = Some(counts.received_bytes.unwrap_or(0) + received.get());
                counts.sent_bytes = Some(counts.sent_bytes.unwrap_or(0) + sent.get());
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
}

/// One direction's numbers for a country.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DirectionCounts {
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

impl std::ops::AddAssign for DirectionCounts {
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
    pub(crate) inbound: DirectionCounts,
    pub(crate) outbound: DirectionCounts,
}

impl CountryCounts {
    fn get(&mut self, inbound: bool) -> &mut DirectionCounts {
        if inbound {
            &mut self.inbound
        } else {
            &mut self.outbound
        }
    }
}

/// What [`SeriesIndex::overview`] found.
#[derive(Debug, Default)]
pub(crate) struct Overview {
    /// By country code (or `unknown`).
    pub(crate) countries: BTreeMap<String, CountryCounts>,
    /// By `service` label value (empty without `--labels service`), every
    /// service whatever was asked for.
    pub(crate) services: BTreeMap<String, CountryCounts>,
}

impl Overview {
    fn country(&mut self, country: Country) -> &mut CountryCounts {
        self.countries
            .entry(country.as_str().to_owned())
            .or_default()
    }
}
