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

use std::{
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
};

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
        Self::open_until(paths, wants, &AtomicBool::new(false))
    }

    /// [`Self::open`], given up when `stop` is set (a reload that took too
    /// long: the flattening of the country database looks at it).
    pub(crate) fn open_until(
        paths: &[PathBuf],
        wants: Wants,
        stop: &AtomicBool,
    ) -> Result<Self, OpenError> {
        let opened = read_all(paths, stop)?;
        // Where each one's files are, to read them again if one is used
        // twice.
        let sources: Vec<(PathBuf, Option<PathBuf>)> = opened
            .iter()
            .map(|o| (o.path.clone(), o.ipv6.as_ref().map(|(p, _)| p.clone())))
            .collect();
        // The country database is checked (and flattened) before what
        // `--labels` needs: its problems are the first to name.
        let location = location(&opened)?;
        let mut country =
            CountryTable::from_reader(&opened[location].reader, &opened[location].path, stop)?;
        if let Some((path, reader)) = &opened[location].ipv6 {
            country = country.with_ipv6(reader, path, stop)?;
        }
        let roles = Roles::of(&opened, location, wants)?;
        for (i, o) in opened.iter().enumerate() {
            if i != roles.location && Some(i) != roles.city && Some(i) != roles.asn {
                tracing::warn!(path = %o.path.display(), kind = o.kind.name(), "GeoIP database not used: --labels asn or --labels city would use it");
            }
        }
        let mut opened: Vec<Option<Opened>> = opened.into_iter().map(Some).collect();
        let city = roles
            .city
            .map(|i| checked::<City>(&mut opened, &sources, i, stop))
            .transpose()?;
        let asn = roles
            .asn
            .map(|i| checked::<AsInfo>(&mut opened, &sources, i, stop))
            .transpose()?;
        Ok(Self { country, asn, city })
    }
}

/// Read every file of `paths`, one [`Opened`] per kind (an IPv4-only file
/// and an IPv6 one of a kind paired).
fn read_all(paths: &[PathBuf], stop: &AtomicBool) -> Result<Vec<Opened>, OpenError> {
    let mut opened: Vec<Opened> = Vec::with_capacity(paths.len());
    for path in paths {
        let reader = read(path, stop)?;
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
    Ok(opened)
}

/// Which of the opened databases provides what: positions in them.
struct Roles {
    /// Countries.
    location: usize,
    city: Option<usize>,
    asn: Option<usize>,
}

/// Which of the opened databases gives countries: the country database,
/// else the city database; with only ASN databases, the first one, which
/// then says why it is no use alone (no country data), unless it has some
/// after all.
fn location(opened: &[Opened]) -> Result<usize, OpenError> {
    let position = |kind| opened.iter().position(|o: &Opened| o.kind == kind);
    let location = position(Kind::Country)
        .or_else(|| position(Kind::City))
        .unwrap_or(0);
    if opened.get(location).is_none() {
        return Err(OpenError::Missing {
            label: "(any)",
            what: "a country or city database",
            examples: "GeoLite2-Country, DB-IP Country lite",
        });
    }
    Ok(location)
}

impl Roles {
    /// The roles of `opened`, `location` giving countries.
    fn of(opened: &[Opened], location: usize, wants: Wants) -> Result<Self, OpenError> {
        let position = |kind| opened.iter().position(|o: &Opened| o.kind == kind);
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
        let answering = || {
            opened.iter().position(|o| {
                o.kind != Kind::Asn && Records::<AsInfo>::answers(&o.reader).unwrap_or(false)
            })
        };
        let asn = match wants.asn.then(|| position(Kind::Asn).or_else(answering)) {
            None => None,
            Some(Some(i)) => Some(i),
            Some(None) => {
                return Err(OpenError::Missing {
                    label: "asn",
                    what: "an ASN database",
                    examples: "GeoLite2-ASN, DB-IP ASN lite, ip-location-db asn, IPinfo lite",
                });
            }
        };
        Ok(Self {
            location,
            city,
            asn,
        })
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
    stop: &AtomicBool,
) -> Result<Records<T>, OpenError> {
    let (path, reader, ipv6) = if let Some(o) = opened.get_mut(i).and_then(Option::take) {
        (o.path, o.reader, o.ipv6)
    } else {
        let (path, ipv6) = sources.get(i).cloned().unwrap_or_default();
        let reader = read(&path, stop)?;
        let ipv6 = ipv6.map(|p| read(&p, stop).map(|r| (p, r))).transpose()?;
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
mod tests;
