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
//! Two databases of one kind are refused (which would count?); a database
//! that is used for nothing is only logged.

use std::path::PathBuf;

use maxminddb::Reader;

use super::{AsInfo, City, DatabaseInfo, Geo, OpenError, Records, records::Decode};

/// What the exporter needs besides countries (`--labels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wants {
    pub(crate) asn: bool,
    pub(crate) city: bool,
}

/// The open databases: countries always, AS numbers and cities when
/// wanted.
pub(crate) struct Databases {
    pub(crate) country: Geo,
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
}

impl Databases {
    /// Open every file of `paths` (at least one) and decide what each
    /// provides.
    pub(crate) fn open(paths: &[PathBuf], wants: Wants) -> Result<Self, OpenError> {
        let mut opened: Vec<Opened> = Vec::with_capacity(paths.len());
        for path in paths {
            let reader = super::read(path)?;
            let kind = Kind::of(&reader.metadata().database_type);
            if let Some(same) = opened.iter().find(|o| o.kind == kind) {
                return Err(OpenError::Duplicate {
                    what: kind.name(),
                    first: same.path.clone(),
                    second: path.clone(),
                });
            }
            opened.push(Opened {
                path: path.clone(),
                kind,
                reader,
            });
        }
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
        let country = Geo::from_reader(&first.reader, &first.path)?;
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
            .map(|i| checked::<City>(&mut opened, paths, i))
            .transpose()?;
        let asn = asn
            .map(|i| checked::<AsInfo>(&mut opened, paths, i))
            .transpose()?;
        Ok(Self { country, asn, city })
    }
}

/// The database `opened[i]` as one answering `T`, if its first networks
/// do. Its reader is moved out; should the file be wanted a second time
/// (a city database that also has AS numbers), it is read again.
fn checked<T: Decode>(
    opened: &mut [Option<Opened>],
    paths: &[PathBuf],
    i: usize,
) -> Result<Records<T>, OpenError> {
    let (path, reader) = if let Some(o) = opened.get_mut(i).and_then(Option::take) {
        (o.path, o.reader)
    } else {
        let path = paths.get(i).cloned().unwrap_or_default();
        let reader = super::read(&path)?;
        (path, reader)
    };
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
    use std::path::Path;

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
