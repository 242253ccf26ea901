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
//!
//! [`databases`] opens every `--geoip.database` and decides what each one
//! provides; [`asn`] and [`city`] read the optional ASN and city answers
//! ([`records`]).

mod asn;
mod city;
mod databases;
mod records;

use std::{
    collections::HashMap,
    fmt, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

pub(crate) use asn::AsInfo;
pub(crate) use city::City;
pub(crate) use databases::{Databases, Wants};
use maxminddb::{MaxMindDbError, Reader};
pub(crate) use records::{Decode, Records};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

/// An ISO 3166-1 alpha-2 country code, or "unknown".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Country([u8; 2]);

impl Country {
    pub(crate) const UNKNOWN: Self = Self([0, 0]);

    const fn to_u16(self) -> u16 {
        u16::from_be_bytes(self.0)
    }

    const fn from_u16(v: u16) -> Self {
        Self(v.to_be_bytes())
    }

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
        "cannot open GeoIP database {}: no such file; get one (DB-IP Lite or geoipupdate: /etc/default/geoip-exporter and the README's \"Get a database\" say how; `cargo xtask fetch-db` in a source tree) or pass --geoip.database PATH",
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
        "GeoIP database {} (type {database_type:?}) has no country data in any of its networks ({checked} read); it looks like an ASN or other non-location database. Use a Country or City database (GeoLite2/GeoIP2 Country or City, DB-IP lite, ip-location-db), e.g. from `cargo xtask fetch-db`",
        path.display()
    )]
    NoCountry {
        path: PathBuf,
        database_type: String,
        checked: usize,
    },
    #[error(
        "two {what} databases given, {} and {}; pass one of them to --geoip.database (two of one kind only as an IPv4-only file and an IPv6 one)",
        first.display(),
        second.display()
    )]
    Duplicate {
        what: &'static str,
        first: PathBuf,
        second: PathBuf,
    },
    #[error(
        "--labels {label} needs {what}; pass one with another --geoip.database (e.g. {examples})"
    )]
    Missing {
        label: &'static str,
        what: &'static str,
        examples: &'static str,
    },
    #[error(
        "GeoIP database {} (type {database_type:?}) has no {what} in any of its first networks; it is not the {what} database it is used as",
        path.display()
    )]
    NoAnswers {
        path: PathBuf,
        database_type: String,
        what: &'static str,
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

impl DatabaseInfo {
    pub(crate) fn of(reader: &Reader<Vec<u8>>, path: &Path) -> Self {
        let meta = reader.metadata();
        Self {
            path: path.to_owned(),
            database_type: meta.database_type.clone(),
            build_epoch: meta.build_epoch,
            ip_version: meta.ip_version,
        }
    }
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

/// Marks ranges whose database record could not be decoded: a lookup
/// there is an error (counted), the connection counts as unknown.
const DAMAGED: Country = Country([b'!', b'!']);

/// An open database, flattened: every network's country, as sorted
/// ranges. The file itself is not kept.
pub(crate) struct Geo {
    info: DatabaseInfo,
    v4: V4Ranges,
    /// `None` for an IPv4-only database.
    v6: Option<Ranges<V6>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the database record for {addr} could not be decoded (damaged database?)")]
pub(crate) struct LookupError {
    addr: IpAddr,
}

impl Geo {
    /// Open `path`, check it is a MaxMind DB that has country data.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn open(path: &Path) -> Result<Self, OpenError> {
        Self::from_reader(&read(path)?, path)
    }

    /// Check and flatten the database `bytes`, read from `path`.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, OpenError> {
        Self::from_reader(&check(bytes, path)?, path)
    }

    /// Check and flatten the database `reader` reads, from `path`.
    pub(crate) fn from_reader(reader: &Reader<Vec<u8>>, path: &Path) -> Result<Self, OpenError> {
        let invalid = |source| OpenError::Invalid {
            path: path.to_owned(),
            source,
        };
        let info = DatabaseInfo::of(reader, path);
        let flat = Flattener::run(reader).map_err(invalid)?;
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
    ) -> Result<Self, OpenError> {
        let ipv6 = Self::from_reader(reader, path)?;
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
        if country == DAMAGED {
            return Err(LookupError {
                addr: crate::conn::from_canonical(addr),
            });
        }
        Ok(country)
    }
}

/// Read the database file at `path` whole and check it is a MaxMind DB.
fn read(path: &Path) -> Result<Reader<Vec<u8>>, OpenError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => OpenError::NotFound {
            path: path.to_owned(),
        },
        _ => OpenError::Unreadable {
            path: path.to_owned(),
            source,
        },
    })?;
    check(bytes, path)
}

/// Check that `bytes`, read from `path`, are a MaxMind DB.
fn check(bytes: Vec<u8>, path: &Path) -> Result<Reader<Vec<u8>>, OpenError> {
    if bytes.is_empty() {
        return Err(OpenError::Empty {
            path: path.to_owned(),
        });
    }
    Reader::from_source(bytes).map_err(|source| OpenError::Invalid {
        path: path.to_owned(),
        source,
    })
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
    fn run(reader: &Reader<Vec<u8>>) -> Result<Self, MaxMindDbError> {
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
                .or_insert_with(|| decode_country(&network).unwrap_or(DAMAGED));
            out.networks += 1;
            out.has_country |= country != Country::UNKNOWN && country != DAMAGED;
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
        Ok(out)
    }
}

/// The country of one database answer, decoding only the fields that can
/// hold one (the layouts in the module's description).
pub(crate) fn decode_country(
    result: &maxminddb::LookupResult<'_, Vec<u8>>,
) -> Result<Country, MaxMindDbError> {
    Ok(result
        .decode::<Record<'_>>()?
        .and_then(|r| r.country())
        .unwrap_or(Country::UNKNOWN))
}

/// An address type a [`Ranges`] table is keyed by, ordered as numbers.
trait Address: Copy + Ord {
    const ZERO: Self;
    /// The first address of the `top`-th of the 2^16 slices of the space.
    fn slice_start(top: usize) -> Self;
    /// Which of the 2^16 slices `self` is in.
    fn slice(self) -> usize;
    /// The first address after the network `self`/`prefix`; `None` at the
    /// end of the space.
    fn after(self, prefix: u8) -> Option<Self>;
}

impl Address for u32 {
    const ZERO: Self = 0;
    fn slice_start(top: usize) -> Self {
        u32::try_from(top).unwrap_or(u32::MAX >> 16) << 16
    }
    fn slice(self) -> usize {
        (self >> 16) as usize
    }
    fn after(self, prefix: u8) -> Option<Self> {
        let size = 1u32.checked_shl(Self::BITS - u32::from(prefix))?;
        self.checked_add(size)
    }
}

/// An IPv6 address as two words, most significant first: ordered as the
/// number, but 8-byte aligned, so a table entry with its country takes
/// 24 bytes instead of a `u128`'s 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct V6([u64; 2]);

impl V6 {
    #[expect(clippy::cast_possible_truncation, reason = "splitting in halves")]
    const fn from_u128(a: u128) -> Self {
        Self([(a >> 64) as u64, a as u64])
    }

    const fn to_u128(self) -> u128 {
        ((self.0[0] as u128) << 64) | self.0[1] as u128
    }
}

impl Address for V6 {
    const ZERO: Self = Self([0, 0]);
    fn slice_start(top: usize) -> Self {
        Self([(top as u64) << 48, 0])
    }
    fn slice(self) -> usize {
        (self.0[0] >> 48) as usize
    }
    fn after(self, prefix: u8) -> Option<Self> {
        let size = 1u128.checked_shl(128 - u32::from(prefix))?;
        self.to_u128().checked_add(size).map(Self::from_u128)
    }
}

/// Slices of the address space the first-level index cuts it into.
const SLICES: usize = 1 << 16;

/// The first-level index entry of one slice of the address space.
#[derive(Clone, Copy, Debug)]
struct Slice {
    /// The range holding the slice's first address.
    first: u32,
    /// Whether that range covers the whole slice.
    whole: bool,
    /// Its country (so a whole slice needs no second read).
    country: Country,
}

/// The whole address space as sorted, contiguous ranges, each with one
/// country: range `i` runs from `ranges[i].0` to `ranges[i + 1].0 - 1`.
/// `index[s]` is for slice `s` (the top 16 bits): the answer itself if the
/// slice lies in one range, else where its ranges begin, so a lookup is
/// one index read, or that and a binary search among the few ranges of
/// one slice (start and country side by side).
struct Ranges<A> {
    ranges: Vec<(A, Country)>,
    /// One per slice, and one more for the end of the space.
    index: Vec<Slice>,
}

impl<A: Address> Ranges<A> {
    fn len(&self) -> usize {
        self.ranges.len()
    }

    fn bytes(&self) -> usize {
        self.ranges.capacity() * size_of::<(A, Country)>()
            + self.index.capacity() * size_of::<Slice>()
    }

    #[inline]
    fn find(&self, addr: A) -> Country {
        let slice = addr.slice();
        let (Some(this), Some(next)) = (self.index.get(slice), self.index.get(slice + 1)) else {
            return Country::UNKNOWN;
        };
        if this.whole {
            return this.country;
        }
        // From the range holding this slice's first address to the one
        // holding the next slice's: `ranges[lo].0 <= addr` always.
        let within = self
            .ranges
            .get(this.first as usize..=next.first as usize)
            .unwrap_or_default();
        let at = within.partition_point(|r| r.0 <= addr).saturating_sub(1);
        within.get(at).map_or(Country::UNKNOWN, |r| r.1)
    }
}

/// The IPv4 table in 4-byte words, for a cache-friendlier lookup than the
/// generic [`Ranges`] (IPv4 is where most lookups and most ranges are).
/// `index[s]` for the /16 slice `s` is [`WHOLE`] with the country of the
/// range covering the whole slice, or the position in `words` of the
/// slice's block: a word with the count of ranges, then one word per
/// range in the slice, `low 16 bits of its start << 16 | country`, the
/// first at the slice's start (a range from an earlier slice is cut
/// there). A lookup is one index read, or that and a binary search in a
/// block that mostly fits one cache line.
struct V4Ranges {
    index: Vec<u32>,
    words: Vec<u32>,
    ranges: usize,
}

/// [`V4Ranges::index`]: the slice lies in one range.
const WHOLE: u32 = 1 << 31;

impl V4Ranges {
    fn new(ranges: &Ranges<u32>) -> Self {
        let r = &ranges.ranges;
        let mut index = Vec::with_capacity(SLICES);
        let mut words = Vec::new();
        let mut at = 0usize;
        for slice in 0..SLICES {
            let first = u32::slice_start(slice);
            while at + 1 < r.len() && r[at + 1].0 <= first {
                at += 1;
            }
            let inside = r[at + 1..]
                .iter()
                .take_while(|next| next.0.slice() == slice)
                .count();
            if inside == 0 {
                index.push(WHOLE | u32::from(r[at].1.to_u16()));
                continue;
            }
            index.push(
                u32::try_from(words.len())
                    .unwrap_or(WHOLE - 1)
                    .min(WHOLE - 1),
            );
            words.push(u32::try_from(inside + 1).unwrap_or(u32::MAX));
            words.push(u32::from(r[at].1.to_u16()));
            for next in &r[at + 1..=at + inside] {
                words.push((next.0 & 0xffff) << 16 | u32::from(next.1.to_u16()));
            }
        }
        words.shrink_to_fit();
        Self {
            index,
            words,
            ranges: r.len(),
        }
    }

    const fn len(&self) -> usize {
        self.ranges
    }

    fn bytes(&self) -> usize {
        (self.index.capacity() + self.words.capacity()) * size_of::<u32>()
    }

    #[inline]
    fn find(&self, addr: u32) -> Country {
        let Some(&entry) = self.index.get(addr.slice()) else {
            return Country::UNKNOWN;
        };
        #[expect(clippy::cast_possible_truncation, reason = "the low 16 bits")]
        if entry & WHOLE != 0 {
            return Country::from_u16(entry as u16);
        }
        let at = entry as usize;
        let count = self.words.get(at).map_or(0, |&c| c as usize);
        let block = self.words.get(at + 1..at + 1 + count).unwrap_or_default();
        // The first word's start is the slice's, never above `addr`.
        let key = (addr & 0xffff) << 16 | 0xffff;
        let i = block.partition_point(|w| *w <= key).saturating_sub(1);
        #[expect(clippy::cast_possible_truncation, reason = "the low 16 bits")]
        block
            .get(i)
            .map_or(Country::UNKNOWN, |w| Country::from_u16(*w as u16))
    }
}

/// Builds [`Ranges`] from networks given in ascending order.
struct RangesBuilder<A> {
    ranges: Vec<(A, Country)>,
    /// The first address not yet covered; `None` once the space is.
    next: Option<A>,
}

impl<A: Address> RangesBuilder<A> {
    const fn new() -> Self {
        Self {
            ranges: Vec::new(),
            next: Some(A::ZERO),
        }
    }

    fn push_range(&mut self, start: A, country: Country) {
        if self.ranges.last().map(|r| r.1) != Some(country) {
            self.ranges.push((start, country));
        }
    }

    /// The network `start`/`prefix` has `country`. Networks must come in
    /// ascending order without overlap; one that does not is ignored.
    fn push(&mut self, start: A, prefix: u8, country: Country) {
        let Some(next) = self.next else { return };
        if start < next {
            return;
        }
        if start > next {
            self.push_range(next, Country::UNKNOWN);
        }
        self.push_range(start, country);
        self.next = start.after(prefix);
    }

    fn finish(mut self) -> Ranges<A> {
        if let Some(next) = self.next {
            self.push_range(next, Country::UNKNOWN);
        }
        if self.ranges.is_empty() {
            self.push_range(A::ZERO, Country::UNKNOWN);
        }
        let mut ranges = self.ranges;
        ranges.shrink_to_fit();
        let position = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        let mut index = Vec::with_capacity(SLICES + 1);
        let mut at = 0usize;
        for slice in 0..SLICES {
            let first = A::slice_start(slice);
            while at + 1 < ranges.len() && ranges[at + 1].0 <= first {
                at += 1;
            }
            // One range covers the slice when the next one starts only in
            // a later slice.
            let whole = ranges.get(at + 1).is_none_or(|next| next.0.slice() > slice);
            index.push(Slice {
                first: position(at),
                whole,
                country: ranges[at].1,
            });
        }
        index.push(Slice {
            first: position(ranges.len() - 1),
            whole: true,
            country: Country::UNKNOWN,
        });
        Ranges { ranges, index }
    }
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

    /// The flattened table answers exactly what maxminddb's own lookup
    /// answers, for addresses inside, between and around many networks.
    #[test]
    #[expect(clippy::cast_possible_truncation, reason = "random bits")]
    fn flattened_lookups_match_maxminddb() {
        let dir = tempdir("flat");
        let mut w = Writer::new("GeoLite2-Country", 6);
        let codes = ["DE", "JP", "BR", "US", "FR"];
        // A small deterministic generator (xorshift).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut blocks: Vec<u32> = (0..3000).map(|_| (random() as u32) >> 12).collect();
        blocks.sort_unstable();
        blocks.dedup();
        for (i, b) in blocks.iter().enumerate() {
            let net = std::net::Ipv4Addr::from(b << 12);
            // Neighbours with the same country merge into one range.
            let code = codes[(i / 3) % codes.len()];
            w.insert(&format!("{net}/20"), geolite2_country(code))
                .unwrap();
        }
        let mut v6: Vec<u128> = (0..500)
            .map(|_| (0x2a00_u128 << 112) | (u128::from(random()) << 48))
            .map(|a| a & !((1u128 << 80) - 1))
            .collect();
        v6.sort_unstable();
        v6.dedup();
        for (i, a) in v6.iter().enumerate() {
            let net = std::net::Ipv6Addr::from(*a);
            w.insert(
                &format!("{net}/48"),
                geolite2_country(codes[i % codes.len()]),
            )
            .unwrap();
        }
        let path = write(&dir, "flat.mmdb", &w);
        let geo = Geo::open(&path).unwrap();
        let reader = Reader::open_readfile(&path).unwrap();
        let theirs = |addr: IpAddr| -> Country {
            reader
                .lookup(addr)
                .unwrap()
                .decode::<Record<'_>>()
                .unwrap()
                .and_then(|r| r.country())
                .unwrap_or(Country::UNKNOWN)
        };
        let mut checked = 0;
        for b in &blocks {
            for offset in [0u32, 1, 4095, 4096, 0xffff_ffff] {
                let addr = IpAddr::V4((b << 12).wrapping_add(offset).into());
                assert_eq!(geo.lookup(addr).unwrap(), theirs(addr), "{addr}");
                checked += 1;
            }
        }
        for a in &v6 {
            for offset in [0u128, 1, (1 << 80) - 1, 1 << 80, u128::MAX] {
                let addr = IpAddr::V6(a.wrapping_add(offset).into());
                assert_eq!(geo.lookup(addr).unwrap(), theirs(addr), "{addr}");
                checked += 1;
            }
        }
        for _ in 0..20_000 {
            let v4 = IpAddr::V4((random() as u32).into());
            let v6 = IpAddr::V6((u128::from(random()) << 64 | u128::from(random())).into());
            for addr in [v4, v6] {
                assert_eq!(geo.lookup(addr).unwrap(), theirs(addr), "{addr}");
                checked += 1;
            }
        }
        assert!(checked > 50_000);
        let (v4_ranges, _, _) = geo.table_size();
        assert!(
            v4_ranges < blocks.len() * 2,
            "neighbours merged: {v4_ranges}"
        );
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
            matches!(err, OpenError::NoCountry { checked, .. } if checked >= 3),
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
