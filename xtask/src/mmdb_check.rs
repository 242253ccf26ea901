//! Opens a MaxMind-format database and checks that it answers country
//! lookups, printing what it found.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result, bail};
use maxminddb::Reader;
use serde::Deserialize;

use crate::civil;

/// Well-known addresses every country database maps (Cloudflare's resolver).
const PROBES: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2606, 0x4700, 0x4700, 0, 0, 0, 0, 0x1111)),
];

/// The country of a record in either layout: ip-location-db's flat
/// `{"country_code": "AU"}` or `GeoIP2`'s `{"country": {"iso_code": "AU"}}`.
#[derive(Debug, Deserialize)]
struct CountryRecord {
    country_code: Option<String>,
    country: Option<Country>,
}

#[derive(Debug, Deserialize)]
struct Country {
    iso_code: Option<String>,
}

impl CountryRecord {
    fn into_code(self) -> Option<String> {
        self.country_code
            .or_else(|| self.country.and_then(|country| country.iso_code))
    }
}

/// One address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

/// What a database is and how it answered the probe lookups.
#[derive(Debug)]
pub(crate) struct Checked {
    database_type: String,
    build_epoch: u64,
    node_count: u32,
    ip_version: u16,
    lookups: Vec<(IpAddr, Option<String>)>,
}

/// Opens `path` and looks up the probe addresses.
pub(crate) fn check(path: &Path) -> Result<Checked> {
    let reader = Reader::open_readfile(path)
        .with_context(|| format!("cannot open {} as a MaxMind DB (mmdb)", path.display()))?;
    let metadata = reader.metadata();
    let mut lookups = Vec::new();
    for ip in PROBES {
        if ip.is_ipv6() && metadata.ip_version == 4 {
            continue;
        }
        let code = reader
            .lookup(ip)
            .and_then(|result| result.decode::<CountryRecord>())
            .with_context(|| format!("looking up {ip} in {} failed", path.display()))?
            .and_then(CountryRecord::into_code);
        lookups.push((ip, code));
    }
    Ok(Checked {
        database_type: metadata.database_type.clone(),
        build_epoch: metadata.build_epoch,
        node_count: metadata.node_count,
        ip_version: metadata.ip_version,
        lookups,
    })
}

impl Checked {
    /// Fails unless every probe address (of `family`, if given: a file
    /// of one family) got a country.
    pub(crate) fn require_countries(&self, path: &Path, family: Option<Family>) -> Result<()> {
        let missing: Vec<String> = self
            .lookups
            .iter()
            .filter(|(ip, _)| match family {
                None => true,
                Some(Family::V4) => ip.is_ipv4(),
                Some(Family::V6) => ip.is_ipv6(),
            })
            .filter(|(_, code)| code.is_none())
            .map(|(ip, _)| ip.to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} gives no country for {}: it is not an IP-to-country database (type {}); \
                 fetch another with `cargo xtask fetch-db --force`",
                path.display(),
                missing.join(", "),
                self.database_type
            );
        }
        Ok(())
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "    type:  {} (IP version {})",
            self.database_type, self.ip_version
        )?;
        writeln!(f, "    built: {}", utc_datetime(self.build_epoch))?;
        write!(f, "    nodes: {}", self.node_count)?;
        for (ip, code) in &self.lookups {
            write!(
                f,
                "\n    {ip} -> {}",
                code.as_deref().unwrap_or("(no country)")
            )?;
        }
        Ok(())
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
fn utc_datetime(epoch: u64) -> String {
    let seconds = epoch % 86_400;
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        civil::date(epoch),
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_seconds() {
        assert_eq!(utc_datetime(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_datetime(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_datetime(1_709_251_199), "2024-02-29 23:59:59 UTC");
    }

    #[test]
    fn reads_country_from_either_layout() {
        let flat = CountryRecord {
            country_code: Some("AU".to_owned()),
            country: None,
        };
        assert_eq!(flat.into_code().as_deref(), Some("AU"));
        let nested = CountryRecord {
            country_code: None,
            country: Some(Country {
                iso_code: Some("US".to_owned()),
            }),
        };
        assert_eq!(nested.into_code().as_deref(), Some("US"));
        let empty = CountryRecord {
            country_code: None,
            country: Some(Country { iso_code: None }),
        };
        assert_eq!(empty.into_code(), None);
    }

    #[test]
    fn missing_country_is_an_error_naming_the_address() {
        let checked = Checked {
            database_type: "GeoLite2-ASN".to_owned(),
            build_epoch: 0,
            node_count: 1,
            ip_version: 6,
            lookups: vec![(PROBES[0], Some("AU".to_owned())), (PROBES[1], None)],
        };
        let error = checked
            .require_countries(Path::new("/x.mmdb"), None)
            .expect_err("one lookup has no country");
        let message = error.to_string();
        assert!(message.contains("2606:4700:4700::1111"), "{message}");
        assert!(!message.contains("1.1.1.1"), "{message}");
        // A file of IPv4 addresses only is not asked about IPv6.
        assert!(
            checked
                .require_countries(Path::new("/x.mmdb"), Some(Family::V4))
                .is_ok()
        );
        assert!(
            checked
                .require_countries(Path::new("/x.mmdb"), Some(Family::V6))
                .is_err()
        );
    }
}
