//! The opt-in labels beyond the country, each capped to its busiest
//! values ([`crate::capped`]): which of this host's services a connection is
//! (`--labels service`: for an inbound connection the local port it came
//! to, for an outbound one the process that made it), and which network
//! operator (autonomous system, `--labels asn`) and city (`--labels
//! city`) it is with.
//!
//! A connection is looked up once, when it opens; the slots it is counted
//! under are kept with it (6 bytes) until it closes, so every series
//! counts up and down exactly once per connection, whatever the databases
//! or the capped sets do meanwhile.

use std::{collections::HashMap, net::IpAddr};

use crate::{
    capped::{Capped, OTHER, Slot},
    conn::{Comm, Direction},
    geo::{AsInfo, City, Country, Decode, Records},
    metrics::Recorder,
};

/// A connection whose database had no answer: a series of its own, never
/// capped.
pub(crate) const UNKNOWN: Slot = Slot::MAX;

/// The slots one connection is counted under.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slots {
    pub(crate) service: Slot,
    asn: Slot,
    city: Slot,
}

/// How many values of each label get a series of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LabelLimits {
    pub(crate) service: usize,
    pub(crate) asn: usize,
    pub(crate) city: usize,
}

/// What a connection is to this host: an inbound one the local port it
/// came to (a port the host listens on), an outbound one the process
/// that made it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Service {
    Port(u16),
    Process(Comm),
}

impl Service {
    /// The `service` label value: the port number, or the process name.
    /// A process named like another value (`other`, `unknown`, a number)
    /// is shown as `comm:NAME`: two slots must never share a label.
    fn label(&self) -> String {
        match self {
            Self::Port(port) => port.to_string(),
            Self::Process(comm) => {
                let name = comm.name().unwrap_or_default();
                let reserved = name.is_empty()
                    || name == "other"
                    || name == "unknown"
                    || name.starts_with("comm:")
                    || name.bytes().all(|b| b.is_ascii_digit());
                if reserved {
                    format!("comm:{name}")
                } else {
                    name
                }
            }
        }
    }
}

/// A connection that opens, as the labels see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Opening {
    pub(crate) remote: IpAddr,
    pub(crate) local_port: u16,
    pub(crate) direction: Direction,
    /// The process that made it (an outbound connection the kernel saw
    /// open), if known.
    pub(crate) comm: Option<Comm>,
}

/// One capped family: its database and its busiest values.
struct Family<T> {
    db: Records<T>,
    capped: Capped<T>,
}

impl<T: Decode> Family<T> {
    fn new(db: Records<T>, limit: usize) -> Self {
        Self {
            db,
            capped: Capped::new(limit),
        }
    }

    /// The slot of a connection with `remote`.
    fn open(&mut self, remote: IpAddr, recorder: &Recorder) -> Slot {
        match self.db.lookup(remote) {
            Ok(Some(value)) => self.capped.open(&value),
            Ok(None) => UNKNOWN,
            Err(err) => {
                tracing::debug!(error = %err, "lookup failed; counting as unknown");
                recorder.lookup_error();
                UNKNOWN
            }
        }
    }

    /// The value `slot` shows; `None` for `other` and `unknown`.
    fn value(&self, slot: Slot) -> Option<&T> {
        if slot == UNKNOWN {
            return None;
        }
        self.capped.value(slot)
    }
}

/// The opt-in labels.
pub(crate) struct Labels {
    service: Option<Capped<Service>>,
    asn: Option<Family<AsInfo>>,
    city: Option<Family<City>>,
    /// With `--labels asn`: live connections by country, ASN slot and
    /// service slot, (inbound, outbound), for the map's networks of a
    /// country (`/api/v1/asns`). At most one entry per live connection;
    /// an entry goes when its count does, so every slot here is held.
    asn_by_country: HashMap<(Country, Slot, Slot), [u32; 2]>,
}

/// One ASN's live connections, as `/api/v1/asns` shows it: the label
/// values of `geoip_connections_by_asn`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct AsnCount {
    pub(crate) asn: String,
    pub(crate) as_org: String,
    pub(crate) inbound: u64,
    pub(crate) outbound: u64,
}

impl Labels {
    /// `None` when no label is wanted.
    pub(crate) fn new(
        service: bool,
        asn: Option<Records<AsInfo>>,
        city: Option<Records<City>>,
        limits: LabelLimits,
    ) -> Option<Self> {
        if !service && asn.is_none() && city.is_none() {
            return None;
        }
        Some(Self {
            service: service.then(|| Capped::new(limits.service)),
            asn: asn.map(|db| Family::new(db, limits.asn)),
            city: city.map(|db| Family::new(db, limits.city)),
            asn_by_country: HashMap::new(),
        })
    }

    /// The live connections by ASN (the same values as
    /// `geoip_connections_by_asn`) of `country` and of the service shown
    /// as `service`, or of all: busiest first.
    pub(crate) fn asns(&self, country: Option<Country>, service: Option<&str>) -> Vec<AsnCount> {
        let Some(family) = &self.asn else {
            return Vec::new();
        };
        let mut service_matches: HashMap<Slot, bool> = HashMap::new();
        let mut by_slot: HashMap<Slot, [u64; 2]> = HashMap::new();
        for (&(cc, asn, svc), counts) in &self.asn_by_country {
            if country.is_some_and(|c| c != cc) {
                continue;
            }
            if let Some(wanted) = service
                && !*service_matches
                    .entry(svc)
                    .or_insert_with(|| self.service_label(svc) == wanted)
            {
                continue;
            }
            let sum = by_slot.entry(asn).or_default();
            sum[0] += u64::from(counts[0]);
            sum[1] += u64::from(counts[1]);
        }
        let mut out: Vec<AsnCount> = by_slot
            .into_iter()
            .map(|(slot, [inbound, outbound])| {
                let [asn, as_org] = asn_labels(family.value(slot), slot);
                AsnCount {
                    asn,
                    as_org,
                    inbound,
                    outbound,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (b.inbound + b.outbound)
                .cmp(&(a.inbound + a.outbound))
                .then_with(|| a.asn.cmp(&b.asn))
        });
        out
    }

    /// Count a connection in [`Self::asn_by_country`] (`delta` +1 or -1).
    fn count_by_country(&mut self, key: (Country, Slot, Slot), direction: Direction, delta: i32) {
        let i = usize::from(direction == Direction::Outbound);
        let counts = self.asn_by_country.entry(key).or_default();
        counts[i] = counts[i].saturating_add_signed(delta);
        if *counts == [0, 0] {
            self.asn_by_country.remove(&key);
        }
    }

    /// The `service` label value of a connection counted under `slot`.
    pub(crate) fn service_label(&self, slot: Slot) -> String {
        match self.service.as_ref().and_then(|c| c.value(slot)) {
            Some(service) => service.label(),
            None if slot == UNKNOWN => "unknown".to_owned(),
            None => "other".to_owned(),
        }
    }

    /// Use these databases for connections that open from now on (a
    /// reload); connections already counted keep their slots.
    pub(crate) fn replace(&mut self, asn: Option<Records<AsInfo>>, city: Option<Records<City>>) {
        if let (Some(family), Some(db)) = (&mut self.asn, asn) {
            family.db = db;
        }
        if let (Some(family), Some(db)) = (&mut self.city, city) {
            family.db = db;
        }
    }

    /// A connection `conn` (in `country`) opened: count it in the ASN
    /// and city families, and return its slots (its service slot is
    /// counted by the caller, in the connection families).
    pub(crate) fn open(
        &mut self,
        conn: Opening,
        country: Country,
        recorder: &mut Recorder,
    ) -> Slots {
        let (remote, direction) = (conn.remote, conn.direction);
        let mut slots = Slots::default();
        if let Some(capped) = &mut self.service {
            let service = match (direction, conn.comm) {
                (Direction::Inbound, _) => Some(Service::Port(conn.local_port)),
                (Direction::Outbound, comm) => {
                    comm.filter(|c| c.name().is_some()).map(Service::Process)
                }
            };
            slots.service = service.map_or(UNKNOWN, |s| capped.open(&s));
        }
        if let Some(family) = &mut self.asn {
            slots.asn = family.open(remote, recorder);
            let value = family.value(slots.asn);
            recorder.asn(slots.asn, direction, 1, || asn_labels(value, slots.asn));
            self.count_by_country((country, slots.asn, slots.service), direction, 1);
        }
        if let Some(family) = &mut self.city {
            slots.city = family.open(remote, recorder);
            let city = family.value(slots.city);
            recorder.city(
                city_country(city, country),
                slots.city,
                direction,
                1,
                || city_name(city, slots.city),
            );
            if let Some(city) = city {
                recorder.city_location(slots.city, city);
            }
        }
        slots
    }

    /// A connection counted under `slots` (in `country`) closed (the
    /// caller uncounted it from the connection families first).
    pub(crate) fn close(
        &mut self,
        slots: Slots,
        country: Country,
        direction: Direction,
        recorder: &mut Recorder,
    ) {
        if let Some(capped) = &mut self.service
            && slots.service != UNKNOWN
            && let Some(freed) = capped.close(slots.service)
        {
            recorder.drop_service(slots.service, &freed.label());
        }
        if self.asn.is_some() {
            self.count_by_country((country, slots.asn, slots.service), direction, -1);
        }
        if let Some(family) = &mut self.asn {
            let value = family.value(slots.asn);
            recorder.asn(slots.asn, direction, -1, || asn_labels(value, slots.asn));
            if slots.asn != UNKNOWN
                && let Some(freed) = family.capped.close(slots.asn)
            {
                recorder.drop_asn(slots.asn, &asn_labels(Some(&freed), slots.asn));
            }
        }
        if let Some(family) = &mut self.city {
            let city = family.value(slots.city);
            let shown = city_country(city, country);
            recorder.city(shown, slots.city, direction, -1, || {
                city_name(city, slots.city)
            });
            if slots.city != UNKNOWN
                && let Some(freed) = family.capped.close(slots.city)
            {
                recorder.drop_city(slots.city, &freed);
            }
        }
    }

    /// Let busier values displace quiet ones (on a timer, minutes apart);
    /// the series of slots freed go.
    pub(crate) fn rerank(&mut self, recorder: &mut Recorder) {
        if let Some(capped) = &mut self.service {
            for (slot, freed) in capped.rerank() {
                recorder.drop_service(slot, &freed.label());
            }
        }
        if let Some(family) = &mut self.asn {
            for (slot, freed) in family.capped.rerank() {
                recorder.drop_asn(slot, &asn_labels(Some(&freed), slot));
            }
        }
        if let Some(family) = &mut self.city {
            for (slot, freed) in family.capped.rerank() {
                recorder.drop_city(slot, &freed);
            }
        }
    }
}

/// The `asn` and `as_org` label values of a slot.
fn asn_labels(value: Option<&AsInfo>, slot: Slot) -> [String; 2] {
    match value {
        Some(a) => [a.number.to_string(), a.org.to_string()],
        None if slot == UNKNOWN => ["unknown".to_owned(), "unknown".to_owned()],
        None => {
            debug_assert_eq!(slot, OTHER);
            ["other".to_owned(), "other".to_owned()]
        }
    }
}

/// The `country` of a city series: the city's own, or the connection's
/// for `other` and `unknown`.
fn city_country(city: Option<&City>, connection: Country) -> Country {
    city.map_or(connection, |c| c.country)
}

/// The `city` label value of a slot.
fn city_name(city: Option<&City>, slot: Slot) -> String {
    match city {
        Some(c) => c.name.to_string(),
        None if slot == UNKNOWN => "unknown".to_owned(),
        None => "other".to_owned(),
    }
}

const _: () = assert!(size_of::<Slots>() == 6);

#[cfg(test)]
mod tests;
