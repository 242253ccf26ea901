//! The opt-in labels beyond the country, each capped to its busiest
//! values ([`crate::cap`]): which of this host's services a connection is
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
pub(crate) struct Caps {
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
        caps: Caps,
    ) -> Option<Self> {
        if !service && asn.is_none() && city.is_none() {
            return None;
        }
        Some(Self {
            service: service.then(|| Capped::new(caps.service)),
            asn: asn.map(|db| Family::new(db, caps.asn)),
            city: city.map(|db| Family::new(db, caps.city)),
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
mod tests {
    #[test]
    fn process_names_never_look_like_other_values() {
        let label = |name: &str| {
            let mut bytes = [0u8; 16];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            Service::Process(Comm(bytes)).label()
        };
        assert_eq!(label("nginx"), "nginx");
        assert_eq!(label("other"), "comm:other");
        assert_eq!(label("unknown"), "comm:unknown");
        assert_eq!(label("443"), "comm:443");
        assert_eq!(label("comm:x"), "comm:comm:x");
        assert_eq!(Service::Port(443).label(), "443");
    }

    use geoip_tests::mmdb::{Value, Writer};

    use super::*;
    use crate::metrics::{Metrics, Wanted};

    /// One database with AS numbers and cities: a quarter of 192.0.2.0/24
    /// each for three systems and cities, the last quarter unknown.
    fn databases() -> (Records<AsInfo>, Records<City>) {
        let mut w = Writer::new("test", 6);
        for (net, asn, org, city, cc) in [
            ("192.0.2.0/26", 64_500, "Alpha", "Berlin", "DE"),
            ("192.0.2.64/26", 64_501, "Beta", "Tokyo", "JP"),
            ("192.0.2.128/26", 64_502, "Gamma", "Paris", "FR"),
        ] {
            w.insert(
                net,
                Value::map([
                    ("autonomous_system_number", Value::U32(asn)),
                    ("autonomous_system_organization", Value::str(org)),
                    ("city", Value::str(city)),
                    ("country_code", Value::str(cc)),
                    ("latitude", Value::Double(1.5)),
                    ("longitude", Value::Double(-2.25)),
                ]),
            )
            .unwrap();
        }
        let bytes = w.to_bytes().unwrap();
        let reader = || maxminddb::Reader::from_source(bytes.clone()).unwrap();
        let info = crate::geo::DatabaseInfo::of(&reader(), std::path::Path::new("/t.mmdb"));
        (
            Records::new(info.clone(), reader()),
            Records::new(info, reader()),
        )
    }

    fn value(text: &str, series: &str) -> Option<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
    fn capped_families_count_each_connection_once_and_drop_freed_series() {
        let m = Metrics::with_families(
            false,
            Wanted {
                asn: true,
                city: true,
                ..Wanted::default()
            },
        )
        .unwrap();
        let mut r = m.recorder();
        let (asn, city) = databases();
        let mut l = Labels::new(
            false,
            Some(asn),
            Some(city),
            Caps {
                service: 1,
                asn: 2,
                city: 2,
            },
        )
        .unwrap();
        let out = Direction::Outbound;
        let de = Country::from_code("DE");
        let open = |l: &mut Labels, r: &mut Recorder, ip: &str, cc: Country| {
            let conn = Opening {
                remote: ip.parse().unwrap(),
                local_port: 40_000,
                direction: out,
                comm: None,
            };
            l.open(conn, cc, r)
        };
        let alpha = open(&mut l, &mut r, "192.0.2.1", de);
        let _beta = open(&mut l, &mut r, "192.0.2.65", Country::from_code("JP"));
        let gamma = open(&mut l, &mut r, "192.0.2.129", Country::from_code("FR"));
        let _unknown = open(&mut l, &mut r, "192.0.2.200", Country::from_code("NL"));
        let text = m.render().unwrap();
        for (series, want) in [
            (
                r#"geoip_connections_by_asn{as_org="Alpha",asn="64500",direction="outbound"}"#,
                1,
            ),
            (
                r#"geoip_connections_by_asn{as_org="Beta",asn="64501",direction="outbound"}"#,
                1,
            ),
            (
                r#"geoip_connections_by_asn{as_org="other",asn="other",direction="outbound"}"#,
                1,
            ),
            (
                r#"geoip_connections_by_asn{as_org="unknown",asn="unknown",direction="outbound"}"#,
                1,
            ),
            (
                r#"geoip_connections_by_city{city="Berlin",country="DE",direction="outbound"}"#,
                1,
            ),
            (
                r#"geoip_connections_by_city{city="Tokyo",country="JP",direction="outbound"}"#,
                1,
            ),
            (
                r#"geoip_connections_by_city{city="other",country="FR",direction="outbound"}"#,
                1,
            ),
            (
                r#"geoip_connections_by_city{city="unknown",country="NL",direction="outbound"}"#,
                1,
            ),
            (
                r#"geoip_city_location_info{city="Berlin",country="DE",latitude="1.5000",longitude="-2.2500"}"#,
                1,
            ),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        assert!(
            !text.contains("Gamma") && !text.contains("Paris"),
            "capped:\n{text}"
        );

        // Alpha closes (its series stays at 0: still a member), then
        // Gamma gets much busier; at the next rerank it displaces Alpha,
        // whose series go.
        l.close(alpha, de, out, &mut r);
        l.close(gamma, Country::from_code("FR"), out, &mut r);
        let text = m.render().unwrap();
        assert_eq!(
            value(
                &text,
                r#"geoip_connections_by_asn{as_org="Alpha",asn="64500",direction="outbound"}"#
            ),
            Some(0)
        );
        assert_eq!(
            value(
                &text,
                r#"geoip_connections_by_asn{as_org="other",asn="other",direction="outbound"}"#
            ),
            Some(0),
            "Gamma's close uncounts other, where it was counted"
        );
        for _ in 0..6 {
            let s = open(&mut l, &mut r, "192.0.2.130", Country::from_code("FR"));
            l.close(s, Country::from_code("FR"), out, &mut r);
        }
        l.rerank(&mut r);
        let g = open(&mut l, &mut r, "192.0.2.131", Country::from_code("FR"));
        let text = m.render().unwrap();
        assert!(
            !text.contains("Alpha") && !text.contains("Berlin"),
            "freed:\n{text}"
        );
        assert_eq!(
            value(
                &text,
                r#"geoip_connections_by_asn{as_org="Gamma",asn="64502",direction="outbound"}"#
            ),
            Some(1)
        );
        assert_eq!(
            value(
                &text,
                r#"geoip_connections_by_city{city="Paris",country="FR",direction="outbound"}"#
            ),
            Some(1)
        );
        l.close(g, Country::from_code("FR"), out, &mut r);
    }

    #[test]
    fn asns_by_country_and_service_follow_opens_and_closes() {
        let m = Metrics::with_families(
            false,
            Wanted {
                service: true,
                asn: true,
                ..Wanted::default()
            },
        )
        .unwrap();
        let mut r = m.recorder();
        let (asn, _) = databases();
        let mut l = Labels::new(
            true,
            Some(asn),
            None,
            Caps {
                service: 5,
                asn: 1,
                city: 1,
            },
        )
        .unwrap();
        let (de, jp) = (Country::from_code("DE"), Country::from_code("JP"));
        let open = |l: &mut Labels, r: &mut Recorder, ip: &str, cc, port, direction| {
            let conn = Opening {
                remote: ip.parse().unwrap(),
                local_port: port,
                direction,
                comm: None,
            };
            (l.open(conn, cc, r), cc, direction)
        };
        let (inb, out) = (Direction::Inbound, Direction::Outbound);
        // Alpha (the one ASN with a slot) twice in DE on 443, once in JP
        // on 22; Beta (other) in DE on 443; no answer in DE on 22.
        let conns = [
            open(&mut l, &mut r, "192.0.2.1", de, 443, inb),
            open(&mut l, &mut r, "192.0.2.2", de, 443, inb),
            open(&mut l, &mut r, "192.0.2.3", jp, 22, inb),
            open(&mut l, &mut r, "192.0.2.65", de, 443, inb),
            open(&mut l, &mut r, "192.0.2.200", de, 22, inb),
            open(&mut l, &mut r, "192.0.2.4", de, 40_000, out),
        ];
        let row = |asn: &str, org: &str, inbound, outbound| AsnCount {
            asn: asn.into(),
            as_org: org.into(),
            inbound,
            outbound,
        };
        assert_eq!(
            l.asns(Some(de), None),
            [
                row("64500", "Alpha", 2, 1),
                row("other", "other", 1, 0),
                row("unknown", "unknown", 1, 0),
            ]
        );
        assert_eq!(
            l.asns(Some(de), Some("443")),
            [row("64500", "Alpha", 2, 0), row("other", "other", 1, 0)]
        );
        assert_eq!(l.asns(Some(jp), Some("443")), []);
        assert_eq!(
            l.asns(None, Some("22")),
            [row("64500", "Alpha", 1, 0), row("unknown", "unknown", 1, 0)]
        );
        assert_eq!(l.asns(None, None)[0], row("64500", "Alpha", 3, 1));
        for (slots, cc, direction) in conns {
            l.close(slots, cc, direction, &mut r);
        }
        assert_eq!(l.asns(None, None), []);
        assert!(l.asn_by_country.is_empty(), "no entry left behind");
    }
}
