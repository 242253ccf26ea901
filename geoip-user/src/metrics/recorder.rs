//! Updating the connection families: one recorder, owned by the task
//! that owns the connection table, keeps a handle to every series it
//! made, so an open or a close is a few atomic adds.

use std::collections::HashMap;

use prometheus::{IntCounter, IntGauge};

use super::{
    families::{ConnectionFamilies, OptInFamilies},
    overview::{Series, SeriesIndex},
    self_metrics::Pipeline,
};
use crate::{
    capped::Slot,
    conn::Direction,
    geo::{City, Country},
};

/// Updates connection metrics with cached handles; owned by the tracker.
pub(crate) struct Recorder {
    connections: ConnectionFamilies,
    families: OptInFamilies,
    pipeline: Pipeline,
    index: SeriesIndex,
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
    pub(super) fn new(
        connections: ConnectionFamilies,
        families: OptInFamilies,
        pipeline: Pipeline,
        index: SeriesIndex,
    ) -> Self {
        let events = |kind: &str| pipeline.events_read.with_label_values(&[kind]);
        Self {
            events_open: events("open"),
            events_close: events("close"),
            events_final: families.received.as_ref().map(|_| events("final")),
            series: HashMap::new(),
            locations: HashMap::new(),
            asn_series: HashMap::new(),
            durations: HashMap::new(),
            bytes_series: HashMap::new(),
            city_series: HashMap::new(),
            city_locations: HashMap::new(),
            connections,
            families,
            pipeline,
            index,
        }
    }

    fn series(
        &mut self,
        country: Country,
        direction: Direction,
        service: Slot,
        label: impl FnOnce() -> String,
    ) -> &Series {
        let (m, index) = (&self.connections, &self.index);
        let key = (country, direction, if m.service { service } else { 0 });
        self.series.entry(key).or_insert_with(|| {
            let service = m.service.then(label);
            let with_service = [
                country.as_str(),
                direction.as_str(),
                service.as_deref().unwrap_or_default(),
            ];
            let labels = if m.service {
                &with_service[..]
            } else {
                &with_service[..2]
            };
            let series = Series {
                connections: m.connections.with_label_values(labels),
                opened: m.opened.with_label_values(labels),
                closed: m.closed.with_label_values(labels),
            };
            index.add_series(key, service, series.clone());
            series
        })
    }

    fn location(&mut self, country: Country, delta: i64) {
        if let Some(legacy) = &self.connections.legacy {
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
        self.pipeline.tracked.inc();
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
        self.pipeline.tracked.dec();
    }

    /// The service slot `slot` (showing `label`) is free: its series go,
    /// in every country and direction.
    pub(crate) fn drop_service(&mut self, slot: Slot, label: &str) {
        let m = &self.connections;
        self.index.remove_service(slot);
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
        let Some(family) = &self.families.duration else {
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
        let (Some(rx), Some(tx)) = (&self.families.received, &self.families.sent) else {
            return;
        };
        let index = &self.index;
        let (r, t) = self
            .bytes_series
            .entry((country, direction))
            .or_insert_with(|| {
                let labels = [country.as_str(), direction.as_str()];
                let series = (rx.with_label_values(&labels), tx.with_label_values(&labels));
                index.add_bytes((country, direction), series.clone());
                series
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
        let Some(family) = &self.families.by_asn else {
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
        let Some(family) = &self.families.by_asn else {
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
        let Some(family) = &self.families.by_city else {
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
        let Some(family) = &self.families.city_location else {
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
        if let Some(family) = &self.families.by_city {
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
            &self.families.city_location,
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
        let c = &self.pipeline.corrections;
        c.with_label_values(&["added"]).inc_by(added);
        c.with_label_values(&["removed"]).inc_by(removed);
    }

    pub(crate) fn undecodable(&self) {
        self.pipeline.events_undecodable.inc();
    }

    pub(crate) fn lookup_error(&self) {
        self.pipeline.lookup_errors.inc();
    }
}
