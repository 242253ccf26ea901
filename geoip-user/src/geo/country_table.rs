//! The country database as the exporter uses it: opened once, every
//! network's country read into the flattened range table of
//! [`super::ranges`] (each distinct record decoded once), and the file
//! itself not kept. A lookup is then a few memory reads, with no decoding
//! and no cache.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use maxminddb::{MaxMindDbError, Reader};

#[cfg(feature = "fuzzing")]
use super::file::check;
#[cfg(any(test, feature = "bench"))]
use super::file::read;
use super::{
    country::{Country, decode_country},
    file::{DatabaseInfo, LookupError, OpenError},
    ranges::{Ranges, RangesBuilder, V4Ranges, V6},
};

/// How many networks the flattening reads between two looks at whether to
/// give up.
const STOP_EVERY: usize = 1 << 16;

/// A country database, flattened: every network's country, as sorted
/// ranges. The file itself is not kept.
pub(crate) struct CountryTable {
    info: DatabaseInfo,
    v4: V4Ranges,
    /// `None` for an IPv4-only database.
    v6: Option<Ranges<V6>>,
}

impl CountryTable {
    /// Open `path`, check it is a MaxMind DB that has country data.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn open(path: &Path) -> Result<Self, OpenError> {
        {
            let stop = AtomicBool::new(false);
            Self::from_reader(&read(path, &stop)?, path, &stop)
        }
    }

    /// Check and flatten the database `bytes`, read from `path`.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, OpenError> {
        Self::from_reader(&check(bytes, path)?, path, &AtomicBool::new(false))
    }

    /// Check and flatten the database `reader` reads, from `path`; given
    /// up when `stop` is set.
    pub(crate) fn from_reader(
        reader: &Reader<Vec<u8>>,
        path: &Path,
        stop: &AtomicBool,
    ) -> Result<Self, OpenError> {
        let invalid = |source| OpenError::Invalid {
            path: path.to_owned(),
            source,
        };
        let info = DatabaseInfo::of(reader, path);
        let Some(flat) = Flattener::flatten(reader, stop).map_err(invalid)? else {
            return Err(OpenError::GivenUp {
                path: path.to_owned(),
            });
        };
        if !flat.has_country {
            return Err(OpenError::NoCountry {
                path: path.to_owned(),
                database_type: info.database_type,
                checked: flat.networks,
            });
        }
        let v6 = (info.ip_version == 6).then(|| flat.v6.finish());
        Ok(Self {
            v4: V4Ranges::new(&flat.v4.finish()),
            v6,
            info,
        })
    }

    /// This IPv4-only database, with `reader` (at `path`) answering IPv6
    /// addresses: ip-location-db ships some of its data as one file per
    /// family.
    pub(crate) fn with_ipv6(
        self,
        reader: &Reader<Vec<u8>>,
        path: &Path,
        stop: &AtomicBool,
    ) -> Result<Self, OpenError> {
        let ipv6 = Self::from_reader(reader, path, stop)?;
        Ok(Self {
            v6: ipv6.v6,
            ..self
        })
    }

    pub(crate) const fn info(&self) -> &DatabaseInfo {
        &self.info
    }

    /// Ranges in the flattened table (IPv4, IPv6), and its size in bytes.
    pub(crate) fn table_size(&self) -> (usize, usize, usize) {
        let v6 = self.v6.as_ref();
        (
            self.v4.len(),
            v6.map_or(0, Ranges::len),
            self.v4.bytes() + v6.map_or(0, Ranges::bytes),
        )
    }

    /// The country of `addr`; [`Country::UNKNOWN`] when the database has no
    /// answer (or is IPv4-only and `addr` is IPv6).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn lookup(&self, addr: IpAddr) -> Result<Country, LookupError> {
        self.lookup_canonical(crate::conn::canonical(addr))
    }

    /// [`Self::lookup`] of an address in the form of
    /// [`crate::conn::canonical`] (IPv4 as `::ffff:a.b.c.d`).
    #[inline]
    pub(crate) fn lookup_canonical(&self, addr: u128) -> Result<Country, LookupError> {
        let country = if addr >> 32 == 0xffff {
            #[expect(clippy::cast_possible_truncation, reason = "the low 32 bits")]
            self.v4.find(addr as u32)
        } else {
            match &self.v6 {
                Some(v6) => v6.find(V6::from_u128(addr)),
                None => Country::UNKNOWN,
            }
        };
        if country == Country::DAMAGED {
            return Err(LookupError {
                addr: crate::conn::from_canonical(addr),
            });
        }
        Ok(country)
    }
}

/// Reads every network of a database once, decoding each distinct
/// record once.
struct Flattener {
    v4: RangesBuilder<u32>,
    v6: RangesBuilder<V6>,
    /// Networks read.
    networks: usize,
    /// Whether any network has a country.
    has_country: bool,
}

impl Flattener {
    /// Every network of `reader`; `None` when `stop` was set meanwhile
    /// (looked at every [`STOP_EVERY`] networks).
    fn flatten(
        reader: &Reader<Vec<u8>>,
        stop: &AtomicBool,
    ) -> Result<Option<Self>, MaxMindDbError> {
        let mut out = Self {
            v4: RangesBuilder::new(),
            v6: RangesBuilder::new(),
            networks: 0,
            has_country: false,
        };
        let mut decoded: HashMap<usize, Country> = HashMap::new();
        // Aliases included: an IPv6 range the database maps onto its IPv4
        // networks (6to4, Teredo) answers as maxminddb's own lookup does.
        let options = maxminddb::WithinOptions::default().include_aliased_networks();
        for network in reader.networks(options)? {
            let network = network?;
            let Some(offset) = network.offset() else {
                continue;
            };
            let country = *decoded
                .entry(offset)
                .or_insert_with(|| decode_country(&network).unwrap_or(Country::DAMAGED));
            out.networks += 1;
            if out.networks.is_multiple_of(STOP_EVERY) && stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            out.has_country |= country != Country::UNKNOWN && country != Country::DAMAGED;
            let net = network.network()?;
            match net.network() {
                IpAddr::V4(start) => out.v4.push(u32::from(start), net.prefix(), country),
                IpAddr::V6(start) => {
                    let start = u128::from(start);
                    // The IPv4-mapped alias: those addresses are looked up
                    // as IPv4.
                    if start >> 32 != 0xffff {
                        out.v6.push(V6::from_u128(start), net.prefix(), country);
                    }
                }
            }
        }
        Ok(Some(out))
    }
}
