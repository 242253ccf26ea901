//! The autonomous system (network operator) of an address.
//!
//! Layouts read:
//! - MaxMind GeoLite2-ASN and GeoIP2-ISP, DB-IP ASN lite, ip-location-db
//!   asn: `{"autonomous_system_number": 3320,
//!   "autonomous_system_organization": "Deutsche Telekom AG"}`;
//! - IPinfo lite: `{"asn": "AS3320", "as_name": "Deutsche Telekom AG"}`.

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use maxminddb::{LookupResult, MaxMindDbError};
use serde::Deserialize;

use super::records::Decode;

/// An autonomous system: its number and organisation. Two are the same
/// system when their numbers are.
#[derive(Clone, Debug)]
pub(crate) struct AsInfo {
    pub(crate) number: u32,
    pub(crate) org: Arc<str>,
}

impl PartialEq for AsInfo {
    fn eq(&self, other: &Self) -> bool {
        self.number == other.number
    }
}

impl Eq for AsInfo {}

impl Hash for AsInfo {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.number.hash(state);
    }
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(default, borrow)]
    autonomous_system_organization: Option<&'a str>,
    #[serde(default, borrow)]
    asn: Option<&'a str>,
    #[serde(default, borrow)]
    as_name: Option<&'a str>,
}

impl Decode for AsInfo {
    const WHAT: &'static str = "AS number";

    fn decode(result: &LookupResult<'_, Vec<u8>>) -> Result<Option<Self>, MaxMindDbError> {
        let Some(r) = result.decode::<AsnRecord<'_>>()? else {
            return Ok(None);
        };
        let number = r.autonomous_system_number.or_else(|| {
            r.asn
                .and_then(|a| a.strip_prefix("AS").or(Some(a)))
                .and_then(|n| n.parse().ok())
        });
        Ok(number.map(|number| Self {
            number,
            org: Arc::from(
                r.autonomous_system_organization
                    .or(r.as_name)
                    .unwrap_or_default(),
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use geoip_tests::mmdb::{Value, Writer};

    use super::*;
    use crate::geo::Records;

    #[test]
    fn every_asn_layout() {
        let geolite2 = Value::map([
            ("autonomous_system_number", Value::U32(3320)),
            (
                "autonomous_system_organization",
                Value::str("Deutsche Telekom AG"),
            ),
        ]);
        let ipinfo = Value::map([
            ("as_domain", Value::str("example.net")),
            ("as_name", Value::str("Example Networks")),
            ("asn", Value::str("AS64500")),
            ("country_code", Value::str("NL")),
        ]);
        let unnamed = Value::map([("autonomous_system_number", Value::U32(64_501))]);
        let none = Value::map([("asn", Value::str("none"))]);
        let mut w = Writer::new("GeoLite2-ASN", 6);
        w.insert("192.0.2.0/24", geolite2).unwrap();
        w.insert("198.51.100.0/24", ipinfo).unwrap();
        w.insert("203.0.113.0/25", unnamed).unwrap();
        w.insert("203.0.113.128/25", none).unwrap();
        let reader = maxminddb::Reader::from_source(w.to_bytes().unwrap()).unwrap();
        let info = crate::geo::DatabaseInfo::of(&reader, std::path::Path::new("/a.mmdb"));
        let mut db = Records::<AsInfo>::new(info, reader);
        let mut get = |a: &str| {
            db.lookup(a.parse().unwrap())
                .unwrap()
                .map(|a| (a.number, a.org.to_string()))
        };
        assert_eq!(get("192.0.2.1"), Some((3320, "Deutsche Telekom AG".into())));
        assert_eq!(
            get("198.51.100.1"),
            Some((64_500, "Example Networks".into()))
        );
        assert_eq!(get("203.0.113.1"), Some((64_501, String::new())));
        assert_eq!(get("203.0.113.200"), None, "not a number");
        assert_eq!(get("2001:db8::1"), None);
    }
}
