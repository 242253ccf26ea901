//! Databases read record by record (ASN, city): kept whole in memory and
//! looked up with the maxminddb reader, each distinct record decoded once.
//!
//! Unlike the country table these are not flattened at load: they are
//! opt-in (`--labels asn`, `--labels city`), looked up once per connection
//! at its open, and a city database has millions of networks that a
//! flattened copy would hold next to the file anyway.

use std::{collections::HashMap, hash::Hash, net::IpAddr};

use maxminddb::{LookupResult, MaxMindDbError, Reader};

use super::file::{DatabaseInfo, LookupError};

/// What a [`Records`] database answers, decoded from one record.
pub(crate) trait Decode: Clone + Eq + Hash + Sized {
    /// What the answer is, for messages ("AS number", "city").
    const WHAT: &'static str;

    /// The answer in `result`'s record; `None` when the record has none.
    fn decode(result: &LookupResult<'_, Vec<u8>>) -> Result<Option<Self>, MaxMindDbError>;
}

/// Decoded records kept before the cache is emptied: a database has at
/// most a few hundred thousand distinct ones, and a busy host sees far
/// fewer.
const CACHE_MAX: usize = 1 << 16;

/// Networks read at load to check that a database answers `T` at all.
const PROBE_NETWORKS: usize = 4096;

/// An open database answering `T`.
pub(crate) struct Records<T> {
    info: DatabaseInfo,
    reader: Reader<Vec<u8>>,
    /// Answers by the offset of their record in the file.
    decoded: HashMap<usize, Option<T>>,
    /// Beside an IPv4-only database, the IPv6 database of the same kind
    /// (ip-location-db ships its city and ASN data as one file per
    /// family): it answers the IPv6 addresses.
    ipv6: Option<Box<Self>>,
}

impl<T: Decode> Records<T> {
    /// Whether some of the first networks of `reader` answer `T`.
    pub(crate) fn answers(reader: &Reader<Vec<u8>>) -> Result<bool, MaxMindDbError> {
        let options = maxminddb::WithinOptions::default();
        for network in reader.networks(options)?.take(PROBE_NETWORKS) {
            if T::decode(&network?)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(crate) fn new(info: DatabaseInfo, reader: Reader<Vec<u8>>) -> Self {
        Self {
            info,
            reader,
            decoded: HashMap::new(),
            ipv6: None,
        }
    }

    /// This IPv4-only database, with `ipv6` answering IPv6 addresses.
    pub(crate) fn with_ipv6(self, ipv6: Self) -> Self {
        Self {
            ipv6: Some(Box::new(ipv6)),
            ..self
        }
    }

    pub(crate) const fn info(&self) -> &DatabaseInfo {
        &self.info
    }

    /// The answer for `addr`; `None` when the database has none.
    pub(crate) fn lookup(&mut self, addr: IpAddr) -> Result<Option<T>, LookupError> {
        if addr.is_ipv6() && self.info.ip_version == 4 {
            // An IPv4-only database has no answer for IPv6 (not an error);
            // its IPv6 partner may.
            return match &mut self.ipv6 {
                Some(ipv6) => ipv6.lookup(addr),
                None => Ok(None),
            };
        }
        let damaged = || LookupError { addr };
        let result = self.reader.lookup(addr).map_err(|_| damaged())?;
        let Some(offset) = result.offset() else {
            return Ok(None);
        };
        if let Some(answer) = self.decoded.get(&offset) {
            return Ok(answer.clone());
        }
        let answer = T::decode(&result).map_err(|_| damaged())?;
        if self.decoded.len() >= CACHE_MAX {
            self.decoded.clear();
        }
        self.decoded.insert(offset, answer.clone());
        Ok(answer)
    }
}
