//! GeoIP databases: opening and checking a MaxMind-format (mmdb) file, and
//! country lookups with a cache.
//!
//! The record layouts users actually have differ; one decoder reads them all:
//! - MaxMind GeoIP2/GeoLite2 Country and City, DB-IP lite Country and City:
//!   `{"country": {"iso_code": "DE", ...}, "registered_country": {...}}`;
//! - ip-location-db (and IPinfo lite): `{"country_code": "DE", ...}`
//!   (IPinfo's `country` is then the country's name, a string).
//!
//! `country` is preferred (where the address is used), then
//! `registered_country` (who holds it), then `country_code`.

use std::{
    collections::HashMap,
    fmt, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use maxminddb::{MaxMindDbError, Reader};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

/// An ISO 3166-1 alpha-2 country code, or "unknown".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Country([u8; 2]);

impl Country {
    pub(crate) const UNKNOWN: Self = Self([0, 0]);

    /// A code as databases spell it; anything but two ASCII letters is
    /// unknown (this bounds the label to 26 x 26 values).
    pub(crate) fn from_code(code: &str) -> Self {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
            }
            _ => Self::UNKNOWN,
        }
    }

    /// The `country` label value.
    pub(crate) fn as_str(&self) -> &str {
        if *self == Self::UNKNOWN {
            return "unknown";
        }
        std::str::from_utf8(&self.0).unwrap_or("unknown")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error(
        "cannot open GeoIP database {}: no such file; pass --geoip.database PATH or run `cargo xtask fetch-db`",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error("cannot read GeoIP database {}; check the path and its permissions", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "GeoIP database {} is empty (0 bytes); download it again (`cargo xtask fetch-db`) or pass another --geoip.database",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "GeoIP database {} is not a MaxMind DB (.mmdb) file or is damaged (truncated?); download it again or pass another --geoip.database",
        path.display()
    )]
    Invalid {
        path: PathBuf,
        #[source]
        source: MaxMindDbError,
    },
    #[error(
        "GeoIP database {} (type {database_type:?}) has no country data in its first {checked} networks; it looks like an ASN or other non-location database. Use a Country or City database (GeoLite2/GeoIP2 Country or City, DB-IP lite, ip-location-db), e.g. from `cargo xtask fetch-db`",
        path.display()
    )]
    NoCountry {
        path: PathBuf,
        database_type: String,
        checked: usize,
    },
}

/// What the exporter tells about the database it uses.
#[derive(Clone, Debug)]
pub(crate) struct DatabaseInfo {
    pub(crate) path: PathBuf,
    pub(crate) database_type: String,
    pub(crate) build_epoch: u64,
    pub(crate) ip_version: u16,
}

/// The fields that hold a country in the layouts we read.
#[derive(Deserialize, Default)]
struct Record<'a> {
    #[serde(default, borrow)]
    country: Option<CountryField<'a>>,
    #[serde(default, borrow)]
    registered_country: Option<CountryField<'a>>,
    #[serde(default, borrow)]
    country_code: Option<&'a str>,
}

impl Record<'_> {
    fn country(&self) -> Option<Country> {
        [
            self.country.as_ref().and_then(|c| c.iso_code),
            self.registered_country.as_ref().and_then(|c| c.iso_code),
            self.country_code,
        ]
        .into_iter()
        .flatten()
        .map(Country::from_code)
        .find(|c| *c != Country::UNKNOWN)
    }
}

/// `{"iso_code": "DE", ...}`, or a country's name as a plain string.
#[derive(Default)]
struct CountryField<'a> {
    iso_code: Option<&'a str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for CountryField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
            type Value = CountryField<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a country map or a country name")
            }

            fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(CountryField::default())
            }

            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(CountryField::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut field = CountryField::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    if key == "iso_code" {
                        field.iso_code = Some(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(field)
            }
        }
        deserializer.deserialize_any(FieldVisitor(std::marker::PhantomData))
    }
}

/// How many networks [`Geo::open`] reads to make sure the database has
/// country data at all.
const COUNTRY_PROBE_NETWORKS: usize = 20_000;
/// Decoded records kept (by data-section offset). Country databases have a
/// few hundred distinct records; city databases far more.
const CACHE_RECORDS: usize = 1 << 16;

/// An open database and its lookup cache.
pub(crate) struct Geo {
    reader: Reader<Vec<u8>>,
    info: DatabaseInfo,
    /// Country of each data record decoded so far, by its offset.
    cache: HashMap<usize, Country>,
}

#[derive(Debug, thiserror::Error)]
#[error("looking up {addr} failed")]
pub(crate) struct LookupError {
    addr: IpAddr,
    #[source]
    source: MaxMindDbError,
}

impl Geo {
    /// Open `path`, check it is a MaxMind DB that has country data.
    pub(crate) fn open(path: &Path) -> Result<Self, OpenError> {
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => OpenError::NotFound {
                path: path.to_owned(),
            },
            _ => OpenError::Unreadable {
                path: path.to_owned(),
                source,
            },
        })?;
        Self::from_bytes(bytes, path)
    }

    /// Check and use the database `bytes`, read from `path`.
    pub(crate) fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, OpenError> {
        if bytes.is_empty() {
            return Err(OpenError::Empty {
                path: path.to_owned(),
            });
        }
        let invalid = |source| OpenError::Invalid {
            path: path.to_owned(),
            source,
        };
        let reader = Reader::from_source(bytes).map_err(invalid)?;
        let meta = reader.metadata();
        let info = DatabaseInfo {
            path: path.to_owned(),
            database_type: meta.database_type.clone(),
            build_epoch: meta.build_epoch,
            ip_version: meta.ip_version,
        };
        let checked = has_country_data(&reader).map_err(invalid)?;
        if let Some(checked) = checked {
            return Err(OpenError::NoCountry {
                path: path.to_owned(),
                database_type: info.database_type,
                checked,
            });
        }
        Ok(Self {
            reader,
            info,
            cache: HashMap::new(),
        })
    }

    pub(crate) const fn info(&self) -> &DatabaseInfo {
        &self.info
    }

    /// The country of `addr`; [`Country::UNKNOWN`] when the database has no
    /// answer (or is IPv4-only and `addr` is IPv6).
    pub(crate) fn lookup(&mut self, addr: IpAddr) -> Result<Country, LookupError> {
        if addr.is_ipv6() && self.info.ip_version == 4 {
            return Ok(Country::UNKNOWN);
        }
        let result = self
            .reader
            .lookup(addr)
            .map_err(|source| LookupError { addr, source })?;
        let Some(offset) = result.offset() else {
            return Ok(Country::UNKNOWN);
        };
        if let Some(country) = self.cache.get(&offset) {
            return Ok(*country);
        }
        let record: Record<'_> = result
            .decode()
            .map_err(|source| LookupError { addr, source })?
            .unwrap_or_default();
        let country = record.country().unwrap_or(Country::UNKNOWN);
        if self.cache.len() >= CACHE_RECORDS {
            self.cache.clear();
        }
        self.cache.insert(offset, country);
        Ok(country)
    }
}

/// `None` when some record among the first networks has a country, else the
/// number of networks read.
fn has_country_data(reader: &Reader<Vec<u8>>) -> Result<Option<usize>, MaxMindDbError> {
    let mut seen = 0;
    for network in reader.networks(maxminddb::WithinOptions::default())? {
        let record: Option<Record<'_>> = network?.decode()?;
        if record.and_then(|r| r.country()).is_some() {
            return Ok(None);
        }
        seen += 1;
        if seen == COUNTRY_PROBE_NETWORKS {
            break;
        }
    }
    Ok(Some(seen))
}

#[cfg(test)]
mod tests {
    use geoip_tests::mmdb::{Value, Writer};

    use super::*;

    fn names(en: &str) -> Value {
        Value::map([("en", Value::str(en)), ("de", Value::str(en))])
    }

    fn maxmind_country(code: &str, name: &str) -> Value {
        Value::map([
            ("geoname_id", Value::U32(2_921_044)),
            ("iso_code", Value::str(code)),
            ("names", names(name)),
        ])
    }

    /// GeoLite2/GeoIP2 Country: continent, country, `registered_country`.
    fn geolite2_country(code: &str) -> Value {
        Value::map([
            (
                "continent",
                Value::map([("code", Value::str("EU")), ("names", names("Europe"))]),
            ),
            ("country", maxmind_country(code, "Somewhere")),
            ("registered_country", maxmind_country(code, "Somewhere")),
        ])
    }

    /// GeoLite2/GeoIP2 City: adds city, location, postal, subdivisions.
    fn geolite2_city(code: &str) -> Value {
        Value::map([
            ("city", Value::map([("names", names("Town"))])),
            (
                "continent",
                Value::map([("code", Value::str("AS")), ("names", names("Asia"))]),
            ),
            ("country", maxmind_country(code, "Somewhere")),
            (
                "location",
                Value::map([
                    ("accuracy_radius", Value::U16(50)),
                    ("latitude", Value::Double(35.6)),
                    ("longitude", Value::Double(139.7)),
                    ("time_zone", Value::str("Asia/Tokyo")),
                ]),
            ),
            ("postal", Value::map([("code", Value::str("100-0001"))])),
            ("registered_country", maxmind_country(code, "Somewhere")),
            (
                "subdivisions",
                Value::Array(vec![Value::map([
                    ("iso_code", Value::str("13")),
                    ("names", names("Tokyo")),
                ])]),
            ),
        ])
    }

    /// DB-IP lite Country and City.
    fn dbip(code: &str, city: bool) -> Value {
        let mut fields = vec![
            (
                "continent",
                Value::map([
                    ("code", Value::str("SA")),
                    ("names", names("South America")),
                ]),
            ),
            (
                "country",
                Value::map([
                    ("is_in_european_union", Value::Bool(false)),
                    ("iso_code", Value::str(code)),
                    ("names", names("Brasil")),
                ]),
            ),
        ];
        if city {
            fields.push(("city", Value::map([("names", names("Rio"))])));
            fields.push((
                "location",
                Value::map([
                    ("latitude", Value::Double(-22.9)),
                    ("longitude", Value::Double(-43.2)),
                ]),
            ));
        }
        Value::map(fields)
    }

    /// ip-location-db country and city.
    fn ip_location_db(code: &str, city: bool) -> Value {
        if city {
            Value::map([
                ("city", Value::str("Sydney")),
                ("country_code", Value::str(code)),
                ("latitude", Value::Float(-33.8)),
                ("longitude", Value::Float(151.2)),
                ("postcode", Value::str("2000")),
                ("state1", Value::str("New South Wales")),
                ("timezone", Value::str("Australia/Sydney")),
            ])
        } else {
            Value::map([("country_code", Value::str(code))])
        }
    }

    /// IPinfo lite: `country` is the name, `country_code` the code.
    fn ipinfo_lite(code: &str) -> Value {
        Value::map([
            ("as_domain", Value::str("example.net")),
            ("asn", Value::str("AS64500")),
            ("continent", Value::str("Europe")),
            ("continent_code", Value::str("EU")),
            ("country", Value::str("France")),
            ("country_code", Value::str(code)),
        ])
    }

    fn write(dir: &Path, name: &str, w: &Writer) -> PathBuf {
        let path = dir.join(name);
        w.write(&path).unwrap();
        path
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("geoip-geo-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn lookup(geo: &mut Geo, addr: &str) -> String {
        geo.lookup(addr.parse().unwrap())
            .unwrap()
            .as_str()
            .to_owned()
    }

    type Layout = fn(&str) -> Value;

    #[test]
    fn every_layout_gives_the_country() {
        let dir = tempdir("layouts");
        let layouts: Vec<(&str, Layout)> = vec![
            ("GeoLite2-Country", geolite2_country),
            ("GeoIP2-City", geolite2_city),
            ("DBIP-Country-Lite", |c| dbip(c, false)),
            ("DBIP-City-Lite", |c| dbip(c, true)),
            ("ip-location-db country", |c| ip_location_db(c, false)),
            ("ip-location-db city", |c| ip_location_db(c, true)),
            ("ipinfo_lite", ipinfo_lite),
        ];
        for (database_type, layout) in layouts {
            let mut w = Writer::new(database_type, 6).build_epoch(1_700_000_000);
            w.insert("192.0.2.0/24", layout("DE")).unwrap();
            w.insert("198.51.100.0/24", layout("jp")).unwrap();
            w.insert("2001:db8:1::/48", layout("BR")).unwrap();
            w.insert(
                "203.0.113.0/24",
                Value::map([("continent", Value::map([("code", Value::str("EU"))]))]),
            )
            .unwrap();
            let path = write(&dir, "layout.mmdb", &w);
            let mut geo = Geo::open(&path).unwrap_or_else(|e| panic!("{database_type}: {e}"));
            assert_eq!(geo.info().database_type, database_type);
            assert_eq!(geo.info().build_epoch, 1_700_000_000);
            assert_eq!(lookup(&mut geo, "192.0.2.77"), "DE", "{database_type}");
            assert_eq!(
                lookup(&mut geo, "::ffff:192.0.2.77"),
                "DE",
                "{database_type} mapped"
            );
            assert_eq!(
                lookup(&mut geo, "198.51.100.1"),
                "JP",
                "{database_type} lower case"
            );
            assert_eq!(lookup(&mut geo, "2001:db8:1:2::3"), "BR", "{database_type}");
            assert_eq!(
                lookup(&mut geo, "203.0.113.1"),
                "unknown",
                "{database_type} no country"
            );
            assert_eq!(
                lookup(&mut geo, "8.8.8.8"),
                "unknown",
                "{database_type} not in db"
            );
            assert_eq!(
                lookup(&mut geo, "2001:db8:2::1"),
                "unknown",
                "{database_type}"
            );
            // Cached answers are the same answers.
            assert_eq!(lookup(&mut geo, "192.0.2.1"), "DE");
        }
    }

    #[test]
    fn registered_country_is_the_fallback() {
        let dir = tempdir("registered");
        let mut w = Writer::new("GeoIP2-Country", 6);
        w.insert(
            "192.0.2.0/24",
            Value::map([("registered_country", maxmind_country("NL", "Netherlands"))]),
        )
        .unwrap();
        w.insert(
            "198.51.100.0/24",
            Value::map([
                ("country", maxmind_country("FR", "France")),
                ("registered_country", maxmind_country("NL", "Netherlands")),
            ]),
        )
        .unwrap();
        let mut geo = Geo::open(&write(&dir, "reg.mmdb", &w)).unwrap();
        assert_eq!(lookup(&mut geo, "192.0.2.1"), "NL");
        assert_eq!(lookup(&mut geo, "198.51.100.1"), "FR");
    }

    #[test]
    fn ipv4_only_database_answers_unknown_for_ipv6() {
        let dir = tempdir("v4only");
        let mut w = Writer::new("ip-location-db country ipv4", 4);
        w.insert("192.0.2.0/24", ip_location_db("SE", false))
            .unwrap();
        let mut geo = Geo::open(&write(&dir, "v4.mmdb", &w)).unwrap();
        assert_eq!(lookup(&mut geo, "192.0.2.9"), "SE");
        assert_eq!(lookup(&mut geo, "2001:db8::1"), "unknown");
    }

    #[test]
    fn bad_databases_are_refused_with_the_path() {
        let dir = tempdir("bad");
        let missing = dir.join("missing.mmdb");
        let err = Geo::open(&missing).err().unwrap();
        assert!(matches!(err, OpenError::NotFound { .. }));
        assert!(err.to_string().contains(&missing.display().to_string()));
        assert!(err.to_string().contains("cargo xtask fetch-db"));

        let empty = dir.join("empty.mmdb");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(Geo::open(&empty), Err(OpenError::Empty { .. })));

        let text = dir.join("text.mmdb");
        std::fs::write(&text, b"this is not a database\n").unwrap();
        assert!(matches!(Geo::open(&text), Err(OpenError::Invalid { .. })));

        let mut w = Writer::new("GeoLite2-Country", 6);
        w.insert("192.0.2.0/24", geolite2_country("DE")).unwrap();
        let bytes = w.to_bytes().unwrap();
        let truncated = dir.join("truncated.mmdb");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            Geo::open(&truncated),
            Err(OpenError::Invalid { .. })
        ));

        let asn = dir.join("asn.mmdb");
        geoip_tests::fixtures::write_asn_database(&asn);
        let err = Geo::open(&asn).err().unwrap();
        assert!(
            matches!(err, OpenError::NoCountry { checked: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("GeoLite2-ASN"));

        let dir_as_file = Geo::open(&dir).err().unwrap();
        assert!(
            matches!(dir_as_file, OpenError::Unreadable { .. }),
            "{dir_as_file:?}"
        );
    }

    #[test]
    fn country_codes_are_bounded() {
        assert_eq!(Country::from_code("de").as_str(), "DE");
        assert_eq!(Country::from_code("DEU"), Country::UNKNOWN);
        assert_eq!(Country::from_code(""), Country::UNKNOWN);
        assert_eq!(Country::from_code("1A"), Country::UNKNOWN);
        assert_eq!(Country::from_code("é"), Country::UNKNOWN);
        assert_eq!(Country::UNKNOWN.as_str(), "unknown");
    }
}
