//! Every `--geoip.database` given, and what each one provides.
//!
//! Each file's kind comes from its metadata (`database_type`): one naming
//! an ASN or ISP database (`GeoLite2-ASN`, `DBIP-ASN-Lite`, `GeoIP2-ISP`,
//! ip-location-db's asn) provides AS numbers, one naming a city database
//! provides cities (and countries), any other provides countries. Then its
//! records are checked to have what it is used for.
//!
//! - Countries come from the first country database, else from the first
//!   city database: there must be one.
//! - With `--labels city`, cities come from the city database.
//! - With `--labels asn`, AS numbers come from the ASN database, else from
//!   a country database whose records carry them (IPinfo lite).
//!
//! Two databases of one kind are refused (which would count?), unless one
//! is IPv4-only and the other an IPv6 database: ip-location-db ships its
//! city and ASN data (and some of its country data) as one file per
//! family, and the pair then answers as one database. A database that is
//! used for nothing is only logged.

use std::path::{Path, PathBuf};

use maxminddb::Reader;

use super::{
    asn::AsInfo,
    city::City,
    country_table::CountryTable,
    file::{DatabaseInfo, OpenError, read},
    records::{Decode, Records},
};

/// What the exporter needs besides countries (`--labels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wants {
    pub(crate) asn: bool,
    pub(crate) city: bool,
}

/// The open databases: countries always, AS numbers and cities when
/// wanted.
pub(crate) struct Databases {
    pub(crate) country: CountryTable,
    pub(crate) asn: Option<Records<AsInfo>>,
    pub(crate) city: Option<Records<City>>,
}

/// A database's kind, from its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Country,
    City,
    Asn,
}

impl Kind {
    fn of(database_type: &str) -> Self {
        let t = database_type.to_ascii_lowercase();
        if t.contains("asn") || t.contains("isp") {
            Self::Asn
        } else if t.contains("city") {
            Self::City
        } else {
            Self::Country
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Country => "country",
            Self::City => "city",
            Self::Asn => "ASN",
        }
    }
}

/// One file, read and checked to be a MaxMind DB.
struct Opened {
    path: PathBuf,
    kind: Kind,
    reader: Reader<Vec<u8>>,
    /// Beside this IPv4-only file, an IPv6 one of the same kind.
    ipv6: Option<(PathBuf, Reader<Vec<u8>>)>,
}

impl Opened {
    /// Take `reader` (at `path`), of this one's kind, as its other
    /// family; `false` unless one of the two is IPv4-only and the other
    /// an IPv6 database, and this one has no other family yet.
    fn pair(&mut self, path: &Path, reader: Reader<Vec<u8>>) -> bool {
        if self.ipv6.is_some() {
            return false;
        }
        match (
            self.reader.metadata().ip_version,
            reader.metadata().ip_version,
        ) {
            (4, 6) => self.ipv6 = Some((path.to_owned(), reader)),
            (6, 4) => {
                let path = std::mem::replace(&mut self.path, path.to_owned());
                let reader = std::mem::replace(&mut self.reader, reader);
                self.ipv6 = Some((path, reader));
            }
            _ => return false,
        }
        if let Some((ipv6, _)) = &self.ipv6 {
            tracing::info!(
                kind = self.kind.name(),
                ipv4 = %self.path.display(),
                ipv6 = %ipv6.display(),
                "two databases of one kind: IPv4 addresses from the IPv4-only one, IPv6 addresses from the other"
            );
        }
        true
    }
}

impl Databases {
    /// Open every file of `paths` (at least one) and decide what each
    /// provides.
    pub(crate) fn open(paths: &[PathBuf], wants: Wants) -> Result<Self, OpenError> {
        let mut opened: Vec<Opened> = Vec::with_capacity(paths.len());
        for path in paths {
            let reader = read(path)?;
            let kind = Kind::of(&reader.metadata().database_type);
            if let Some(same) = opened.iter_mut().find(|o| o.kind == kind) {
                if !same.pair(path, reader) {
                    return Err(OpenError::Duplicate {
                        what: kind.name(),
                        first: same.path.clone(),
                        second: path.clone(),
                    });
                }
                continue;
            }
            opened.push(Opened {
                path: path.clone(),
                kind,
                reader,
                ipv6: None,
            });
        }
        // Where each one's files are, to read them again if one is used
        // twice.
        let sources: Vec<(PathBuf, Option<PathBuf>)> = opened
            .iter()
            .map(|o| (o.path.clone(), o.ipv6.as_ref().map(|(p, _)| p.clone())))
            .collect();
        let position = |kind| opened.iter().position(|o| o.kind == kind);
        // Countries from the country database, else the city database;
        // with only ASN databases, the first one says why it is no use
        // alone (no country data), unless it has some after all.
        let location = position(Kind::Country)
            .or_else(|| position(Kind::City))
            .unwrap_or(0);
        let Some(first) = opened.get(location) else {
            return Err(OpenError::Missing {
                label: "(any)",
                what: "a country or city database",
                examples: "GeoLite2-Country, DB-IP Country lite",
            });
        };
        let mut country = CountryTable::from_reader(&first.reader, &first.path)?;
        if let Some((path, reader)) = &first.ipv6 {
            country = country.with_ipv6(reader, path)?;
        }
        let city = match (wants.city, position(Kind::City)) {
            (false, _) => None,
            (true, Some(i)) => Some(i),
            (true, None) => {
                return Err(OpenError::Missing {
                    label: "city",
                    what: "a city database",
                    examples: "GeoLite2-City, DB-IP City lite, ip-location-db city",
                });
            }
        };
        let asn = if wants.asn {
            let answering = || {
                opened.iter().position(|o| {
                    o.kind != Kind::Asn && Records::<AsInfo>::answers(&o.reader).unwrap_or(false)
                })
            };
            match position(Kind::Asn).or_else(answering) {
                Some(i) => Some(i),
                None => {
                    return Err(OpenError::Missing {
                        label: "asn",
                        what: "an ASN database",
                        examples: "GeoLite2-ASN, DB-IP ASN lite, ip-location-db asn, IPinfo lite",
                    });
                }
            }
        } else {
            None
        };
        for (i, o) in opened.iter().enumerate() {
            if i != location && Some(i) != city && Some(i) != asn {
                tracing::warn!(path = %o.path.display(), kind = o.kind.name(), "GeoIP database not used: --labels asn or --labels city would use it");
            }
        }
        let mut opened: Vec<Option<Opened>> = opened.into_iter().map(Some).collect();
        let city = city
            .map(|i| checked::<City>(&mut opened, &sources, i))
            .transpose()?;
        let asn = asn
            .map(|i| checked::<AsInfo>(&mut opened, &sources, i))
            .transpose()?;
        Ok(Self { country, asn, city })
    }
}

/// The database `opened[i]` (with its IPv6 file if it has one) as one
/// answering `T`, if its first networks do. Its readers are moved out;
/// should the files be wanted a second time (a city database that also
/// has AS numbers), they are read again from `sources[i]`.
fn checked<T: Decode>(
    opened: &mut [Option<Opened>],
    sources: &[(PathBuf, Option<PathBuf>)],
    i: usize,
) -> Result<Records<T>, OpenError> {
    let (path, reader, ipv6) = if let Some(o) = opened.get_mut(i).and_then(Option::take) {
        (o.path, o.reader, o.ipv6)
    } else {
        let (path, ipv6) = sources.get(i).cloned().unwrap_or_default();
        let reader = read(&path)?;
        let ipv6 = ipv6.map(|p| read(&p).map(|r| (p, r))).transpose()?;
        (path, reader, ipv6)
    };
    let records = answering::<T>(path, reader)?;
    match ipv6 {
        Some((path, reader)) => Ok(records.with_ipv6(answering::<T>(path, reader)?)),
        None => Ok(records),
    }
}

/// The database `reader` (at `path`) as one answering `T`, if its first
/// networks do.
fn answering<T: Decode>(path: PathBuf, reader: Reader<Vec<u8>>) -> Result<Records<T>, OpenError> {
    let info = DatabaseInfo::of(&reader, &path);
    let answers = Records::<T>::answers(&reader).map_err(|source| OpenError::Invalid {
        path: path.clone(),
        source,
    })?;
    if !answers {
        return Err(OpenError::NoAnswers {
            path,
            database_type: info.database_type,
            what: T::WHAT,
        });
    }
    Ok(Records::new(info, reader))
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, path::Path};

    use geoip_tests::mmdb::{Value, Writer};

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("geoip-dbs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, database_type: &str, value: &Value) -> PathBuf {
        let mut w = Writer::new(database_type, 6);
        w.insert("192.0.2.0/24", value.clone()).unwrap();
        let path = dir.join(name);
        w.write(&path).unwrap();
        path
    }

    fn country() -> Value {
        Value::map([("country_code", Value::str("DE"))])
    }

    fn asn() -> Value {
        Value::map([
            ("autonomous_system_number", Value::U32(64_500)),
            ("autonomous_system_organization", Value::str("Example")),
        ])
    }

    fn city() -> Value {
        Value::map([
            ("city", Value::str("Berlin")),
            ("country_code", Value::str("DE")),
            ("latitude", Value::Double(52.52)),
            ("longitude", Value::Double(13.405)),
        ])
    }

    const BOTH: Wants = Wants {
        asn: true,
        city: true,
    };

    #[test]
    fn each_database_provides_what_its_type_says() {
        let d = dir("roles");
        let c = write(&d, "c.mmdb", "DBIP-Country-Lite", &country());
        let a = write(&d, "a.mmdb", "GeoLite2-ASN", &asn());
        let y = write(&d, "y.mmdb", "ip-location-db city", &city());
        let ip = "192.0.2.1".parse().unwrap();

        let mut dbs = Databases::open(&[y.clone(), a.clone(), c.clone()], BOTH).unwrap();
        assert_eq!(
            dbs.country.info().path,
            c,
            "countries from the country database"
        );
        assert_eq!(
            dbs.asn
                .as_mut()
                .unwrap()
                .lookup(ip)
                .unwrap()
                .unwrap()
                .number,
            64_500
        );
        let berlin = dbs.city.as_mut().unwrap().lookup(ip).unwrap().unwrap();
        assert_eq!((&*berlin.name, berlin.country.as_str()), ("Berlin", "DE"));
        assert!((berlin.latitude - 52.52).abs() < 1e-9);

        // Without --labels the extra databases are not kept.
        let dbs = Databases::open(&[c.clone(), a.clone()], Wants::default()).unwrap();
        assert!(dbs.asn.is_none() && dbs.city.is_none());

        // A city database alone gives countries and cities.
        let dbs = Databases::open(
            std::slice::from_ref(&y),
            Wants {
                asn: false,
                city: true,
            },
        )
        .unwrap();
        assert_eq!(dbs.country.info().path, y);
        assert!(dbs.city.is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn what_labels_need_must_be_given_once() {
        let d = dir("needs");
        let c = write(&d, "c.mmdb", "GeoLite2-Country", &country());
        let c2 = write(&d, "c2.mmdb", "DBIP-Country-Lite", &country());
        let a = write(&d, "a.mmdb", "GeoLite2-ASN", &asn());
        let err =
            |paths: &[PathBuf], wants| Databases::open(paths, wants).err().unwrap().to_string();

        let e = err(
            std::slice::from_ref(&c),
            Wants {
                asn: true,
                city: false,
            },
        );
        assert!(e.contains("--labels asn needs an ASN database"), "{e}");
        let e = err(&[c.clone(), a.clone()], BOTH);
        assert!(e.contains("--labels city needs a city database"), "{e}");
        let e = err(&[c.clone(), c2.clone()], Wants::default());
        assert!(
            e.contains("two country databases") && e.contains("c.mmdb") && e.contains("c2.mmdb"),
            "{e}"
        );
        // An ASN database alone has no countries.
        let e = err(std::slice::from_ref(&a), Wants::default());
        assert!(e.contains("has no country data"), "{e}");
        // A database typed ASN without AS numbers.
        let fake = write(&d, "fake.mmdb", "GeoLite2-ASN", &country());
        let e = err(
            &[c.clone(), fake],
            Wants {
                asn: true,
                city: false,
            },
        );
        assert!(e.contains("has no AS number"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// ip-location-db's one file per family: an IPv4-only file and an
    /// IPv6 one of the same kind answer as one database, in either order;
    /// a third file, or two of one family, is still refused.
    #[test]
    fn an_ipv4_file_and_an_ipv6_file_of_one_kind_answer_together() {
        let d = dir("families");
        let family = |name: &str, database_type: &str, ip_version: u16, net: &str, value: Value| {
            let mut w = Writer::new(database_type, ip_version);
            w.insert(net, value).unwrap();
            let path = d.join(name);
            w.write(&path).unwrap();
            path
        };
        let city = |name: &str, code: &str| {
            Value::map([
                ("city", Value::str(name)),
                ("country_code", Value::str(code)),
                ("latitude", Value::Double(1.0)),
                ("longitude", Value::Double(2.0)),
            ])
        };
        let y4 = family(
            "city-ipv4.mmdb",
            "ip-location-db city",
            4,
            "192.0.2.0/24",
            city("Berlin", "DE"),
        );
        let y6 = family(
            "city-ipv6.mmdb",
            "ip-location-db city",
            6,
            "2001:db8::/32",
            city("Osaka", "JP"),
        );
        let a4 = family(
            "asn-ipv4.mmdb",
            "ip-location-db asn",
            4,
            "192.0.2.0/24",
            asn(),
        );
        let a6 = family(
            "asn-ipv6.mmdb",
            "ip-location-db asn",
            6,
            "2001:db8::/32",
            Value::map([
                ("autonomous_system_number", Value::U32(64_501)),
                ("autonomous_system_organization", Value::str("Six")),
            ]),
        );
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for paths in [
            [y4.clone(), a6.clone(), y6.clone(), a4.clone()],
            [a4.clone(), y6.clone(), a6.clone(), y4.clone()],
        ] {
            let mut dbs = Databases::open(&paths, BOTH).unwrap();
            assert_eq!(dbs.country.lookup(v4).unwrap().as_str(), "DE", "{paths:?}");
            assert_eq!(dbs.country.lookup(v6).unwrap().as_str(), "JP", "{paths:?}");
            let city = dbs.city.as_mut().unwrap();
            assert_eq!(&*city.lookup(v4).unwrap().unwrap().name, "Berlin");
            assert_eq!(&*city.lookup(v6).unwrap().unwrap().name, "Osaka");
            let asn = dbs.asn.as_mut().unwrap();
            assert_eq!(asn.lookup(v4).unwrap().unwrap().number, 64_500);
            assert_eq!(asn.lookup(v6).unwrap().unwrap().number, 64_501);
        }
        // The IPv4 file alone: IPv6 has no answer (not an error).
        let mut dbs = Databases::open(std::slice::from_ref(&y4), BOTH_CITY).unwrap();
        assert_eq!(dbs.city.as_mut().unwrap().lookup(v6).unwrap(), None);
        // A third file of the kind, or two of one family: refused.
        let y4b = family(
            "city-ipv4-b.mmdb",
            "ip-location-db city",
            4,
            "198.51.100.0/24",
            city("Paris", "FR"),
        );
        let refused =
            |paths: &[PathBuf]| Databases::open(paths, BOTH_CITY).err().unwrap().to_string();
        let e = refused(&[y4.clone(), y6.clone(), y4b.clone()]);
        assert!(
            e.contains("two city databases") && e.contains("city-ipv4-b.mmdb"),
            "{e}"
        );
        let e = refused(&[y4.clone(), y4b]);
        assert!(e.contains("an IPv4-only file and an IPv6 one"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    const BOTH_CITY: Wants = Wants {
        asn: false,
        city: true,
    };

    #[test]
    fn a_country_database_with_as_numbers_serves_asn_too() {
        let d = dir("ipinfo");
        let lite = Value::map([
            ("asn", Value::str("AS64501")),
            ("as_name", Value::str("Lite Networks")),
            ("country_code", Value::str("FR")),
        ]);
        let p = write(&d, "ipinfo_lite.mmdb", "ipinfo lite", &lite);
        let mut dbs = Databases::open(
            std::slice::from_ref(&p),
            Wants {
                asn: true,
                city: false,
            },
        )
        .unwrap();
        let a = dbs
            .asn
            .as_mut()
            .unwrap()
            .lookup("192.0.2.9".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((a.number, &*a.org), (64_501, "Lite Networks"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
