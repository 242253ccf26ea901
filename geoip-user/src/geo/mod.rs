//! GeoIP databases: MaxMind-format (mmdb) files, opened, checked and
//! answered from.
//!
//! The country database is not looked up in the file: at load every
//! network's country is read once into a flattened range table
//! ([`ranges`], [`country_table`]), so a lookup is a few memory reads and
//! the file is not kept. The opt-in ASN and city databases are looked up
//! in the file, record by record ([`records`]: [`asn`], [`city`]), each
//! distinct record decoded once.
//!
//! From the file up: [`file`](mod@file) reads one file and checks it is a MaxMind DB
//! whose search tree [`tree`] can walk in bounded time;
//! [`field`] and [`country`] decode the country in every record layout
//! users have; [`databases`] opens every `--geoip.database` and decides
//! what each one provides.

mod asn;
mod city;
mod country;
mod country_table;
mod databases;
mod field;
mod file;
mod ranges;
mod records;
#[cfg(test)]
mod tests;
mod tree;

pub(crate) use asn::AsInfo;
pub(crate) use city::City;
pub(crate) use country::Country;
#[cfg(feature = "bench")]
pub(crate) use country::decode_country;
pub(crate) use country_table::CountryTable;
pub(crate) use databases::{Databases, Wants};
pub(crate) use file::{DatabaseInfo, OpenError};
pub(crate) use records::{Decode, Records};
