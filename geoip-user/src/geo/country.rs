//! The country of a database record: ISO 3166-1 alpha-2 codes, and the
//! one decoder for the record layouts users actually have:
//! - MaxMind GeoIP2/GeoLite2 Country and City, DB-IP lite Country and City:
//!   `{"country": {"iso_code": "DE", ...}, "registered_country": {...}}`;
//! - ip-location-db (and IPinfo lite): `{"country_code": "DE", ...}`
//!   (IPinfo's `country` is then the country's name, a string).
//!
//! `country` is preferred (where the address is used), then
//! `registered_country` (who holds it), then `country_code`.

use std::fmt;

use maxminddb::MaxMindDbError;
use serde::Deserialize;

use super::field::MapOrText;

/// An ISO 3166-1 alpha-2 country code, or "unknown".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Country([u8; 2]);

impl Country {
    pub(crate) const UNKNOWN: Self = Self([0, 0]);

    /// Marks ranges whose database record could not be decoded: a lookup
    /// there is an error (counted), the connection counts as unknown.
    pub(super) const DAMAGED: Self = Self([b'!', b'!']);

    pub(super) const fn to_u16(self) -> u16 {
        u16::from_be_bytes(self.0)
    }

    pub(super) const fn from_u16(v: u16) -> Self {
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

/// The fields that hold a country in the layouts we read.
#[derive(Deserialize, Default)]
pub(super) struct CountryRecord<'a> {
    #[serde(default, borrow)]
    country: Option<MapOrText<'a, IsoCode<'a>>>,
    #[serde(default, borrow)]
    registered_country: Option<MapOrText<'a, IsoCode<'a>>>,
    #[serde(default, borrow)]
    country_code: Option<&'a str>,
}

/// `{"iso_code": "DE", ...}` (a country's name as plain text has none).
#[derive(Deserialize, Default)]
struct IsoCode<'a> {
    #[serde(default, borrow)]
    iso_code: Option<&'a str>,
}

impl CountryRecord<'_> {
    pub(super) fn country(&self) -> Option<Country> {
        fn iso<'a>(field: Option<&MapOrText<'a, IsoCode<'a>>>) -> Option<&'a str> {
            match field {
                Some(MapOrText::Map(c)) => c.iso_code,
                _ => None,
            }
        }
        [
            iso(self.country.as_ref()),
            iso(self.registered_country.as_ref()),
            self.country_code,
        ]
        .into_iter()
        .flatten()
        .map(Country::from_code)
        .find(|c| *c != Country::UNKNOWN)
    }
}

/// The country of one database answer, decoding only the fields that can
/// hold one (the layouts in the module's description).
pub(crate) fn decode_country(
    result: &maxminddb::LookupResult<'_, Vec<u8>>,
) -> Result<Country, MaxMindDbError> {
    Ok(result
        .decode::<CountryRecord<'_>>()?
        .and_then(|r| r.country())
        .unwrap_or(Country::UNKNOWN))
}
