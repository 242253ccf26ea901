//! The city of an address, with its coordinates.
//!
//! Layouts read:
//! - MaxMind GeoLite2/GeoIP2 City, DB-IP City lite: `{"city": {"names":
//!   {"en": "Berlin", ...}}, "location": {"latitude": 52.5, "longitude":
//!   13.4}, "country": {"iso_code": "DE"}, ...}`;
//! - ip-location-db city: `{"city": "Berlin", "country_code": "DE",
//!   "latitude": 52.5, "longitude": 13.4, ...}`.
//!
//! The English name is used; a record without one has no city.

use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::Arc,
};

use maxminddb::{LookupResult, MaxMindDbError};
use serde::{Deserialize, Deserializer, de::Visitor};

use super::{
    country::{Country, decode_country},
    field::MapOrText,
    records::Decode,
};

/// A city: its country, English name and coordinates. Two are the same
/// city when their country and name are.
#[derive(Clone, Debug)]
pub(crate) struct City {
    pub(crate) country: Country,
    pub(crate) name: Arc<str>,
    pub(crate) latitude: f64,
    pub(crate) longitude: f64,
}

impl PartialEq for City {
    fn eq(&self, other: &Self) -> bool {
        self.country == other.country && self.name == other.name
    }
}

impl Eq for City {}

impl Hash for City {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.country.hash(state);
        self.name.hash(state);
    }
}

#[derive(Deserialize, Default)]
struct Location {
    #[serde(default)]
    latitude: Option<Degrees>,
    #[serde(default)]
    longitude: Option<Degrees>,
}

#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(default, borrow)]
    city: Option<MapOrText<'a, CityNames<'a>>>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    latitude: Option<Degrees>,
    #[serde(default)]
    longitude: Option<Degrees>,
}

/// A coordinate, stored as a double (MaxMind, DB-IP) or a float
/// (ip-location-db).
#[derive(Clone, Copy)]
struct Degrees(f64);

impl<'de> Deserialize<'de> for Degrees {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DegreesVisitor;
        impl Visitor<'_> for DegreesVisitor {
            type Value = Degrees;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of degrees")
            }

            fn visit_f64<E>(self, v: f64) -> Result<Degrees, E> {
                Ok(Degrees(v))
            }

            fn visit_f32<E>(self, v: f32) -> Result<Degrees, E> {
                Ok(Degrees(f64::from(v)))
            }
        }
        deserializer.deserialize_any(DegreesVisitor)
    }
}

/// `{"names": {"en": "Berlin"}}` (the name as plain text is the other
/// spelling of [`MapOrText`]).
#[derive(Deserialize)]
struct CityNames<'a> {
    #[serde(default, borrow)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(default, borrow)]
    en: Option<&'a str>,
}

impl Decode for City {
    const WHAT: &'static str = "city";

    fn decode(result: &LookupResult<'_, Vec<u8>>) -> Result<Option<Self>, MaxMindDbError> {
        let Some(r) = result.decode::<CityRecord<'_>>()? else {
            return Ok(None);
        };
        let name = match r.city {
            Some(MapOrText::Text(name)) => name,
            Some(MapOrText::Map(c)) => c.names.and_then(|n| n.en),
            None => None,
        };
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let location = r.location.unwrap_or_default();
        let country = decode_country(result)?;
        Ok(Some(Self {
            country,
            name: Arc::from(name),
            latitude: location.latitude.or(r.latitude).map_or(0.0, |d| d.0),
            longitude: location.longitude.or(r.longitude).map_or(0.0, |d| d.0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use geoip_tests::mmdb::{Value, Writer};

    use super::*;
    use crate::geo::Records;

    fn names(en: &str) -> Value {
        Value::map([("de", Value::str("x")), ("en", Value::str(en))])
    }

    /// Every city layout read gives the English name, the country and the
    /// coordinates; a record without a city name has none.
    #[test]
    fn every_city_layout() {
        let maxmind = Value::map([
            (
                "city",
                Value::map([("geoname_id", Value::U32(1)), ("names", names("Tokyo"))]),
            ),
            ("country", Value::map([("iso_code", Value::str("JP"))])),
            (
                "location",
                Value::map([
                    ("accuracy_radius", Value::U16(20)),
                    ("latitude", Value::Double(35.6895)),
                    ("longitude", Value::Double(139.6917)),
                ]),
            ),
        ]);
        let dbip = Value::map([
            ("city", Value::map([("names", names("Rio de Janeiro"))])),
            ("country", Value::map([("iso_code", Value::str("BR"))])),
            (
                "location",
                Value::map([
                    ("latitude", Value::Double(-22.9)),
                    ("longitude", Value::Double(-43.2)),
                ]),
            ),
        ]);
        let ip_location_db = Value::map([
            ("city", Value::str("Sydney")),
            ("country_code", Value::str("AU")),
            ("latitude", Value::Float(-33.87)),
            ("longitude", Value::Float(151.21)),
        ]);
        let no_city = Value::map([("country", Value::map([("iso_code", Value::str("FR"))]))]);
        let mut w = Writer::new("GeoIP2-City", 6);
        w.insert("192.0.2.0/25", maxmind).unwrap();
        w.insert("192.0.2.128/25", dbip).unwrap();
        w.insert("198.51.100.0/24", ip_location_db).unwrap();
        w.insert("203.0.113.0/24", no_city).unwrap();
        let reader = maxminddb::Reader::from_source(w.to_bytes().unwrap()).unwrap();
        assert!(Records::<City>::answers(&reader).unwrap());
        let info = crate::geo::DatabaseInfo::of(&reader, std::path::Path::new("/c.mmdb"));
        let mut db = Records::<City>::new(info, reader);
        let get = |db: &mut Records<City>, a: &str| db.lookup(a.parse().unwrap()).unwrap();
        let tokyo = get(&mut db, "192.0.2.1").unwrap();
        assert_eq!((&*tokyo.name, tokyo.country.as_str()), ("Tokyo", "JP"));
        assert!(
            (tokyo.latitude - 35.6895).abs() < 1e-9 && (tokyo.longitude - 139.6917).abs() < 1e-9
        );
        let rio = get(&mut db, "192.0.2.200").unwrap();
        assert_eq!((&*rio.name, rio.country.as_str()), ("Rio de Janeiro", "BR"));
        let sydney = get(&mut db, "198.51.100.7").unwrap();
        assert_eq!((&*sydney.name, sydney.country.as_str()), ("Sydney", "AU"));
        assert!(
            (sydney.latitude + 33.87).abs() < 1e-4,
            "{}",
            sydney.latitude
        );
        assert_eq!(get(&mut db, "203.0.113.1"), None, "no city name");
        assert_eq!(get(&mut db, "8.8.8.8"), None, "not in the database");
        // Cached: the same answer again.
        assert_eq!(get(&mut db, "192.0.2.2").unwrap(), tokyo);
    }
}
