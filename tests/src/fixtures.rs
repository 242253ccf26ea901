//! The test hosts' addresses and the database that maps them.

use std::path::{Path, PathBuf};

use crate::mmdb::{Value, Writer};

pub const DE_V4: &str = "192.0.2.10";
pub const DE_V6: &str = "2001:db8:de::10";
pub const JP_V4: &str = "198.51.100.20";
pub const JP_V6: &str = "2001:db8:a::20";
pub const BR_V4: &str = "203.0.113.30";
pub const BR_V6: &str = "2001:db8:b::30";
/// In a range the database has, with no country in its record.
pub const NO_COUNTRY_V4: &str = "192.0.2.200";
/// In no range the database has.
pub const NOT_IN_DB_V6: &str = "2001:db8:ff::1";
/// Mapped to BR, but inside [`EXCLUDED`].
pub const EXCLUDED_V4: &str = "203.0.113.200";
/// What the tests pass to `--exclude`.
pub const EXCLUDED: &str = "203.0.113.128/25";

/// Every test host address.
pub const ALL: &[&str] = &[
    DE_V4,
    DE_V6,
    JP_V4,
    JP_V6,
    BR_V4,
    BR_V6,
    NO_COUNTRY_V4,
    NOT_IN_DB_V6,
    EXCLUDED_V4,
];

fn country(code: &str, name: &str) -> Value {
    Value::map([
        ("iso_code", Value::str(code)),
        ("names", Value::map([("en", Value::str(name))])),
    ])
}

/// A GeoLite2-Country-style record.
fn record(code: &str, name: &str) -> Value {
    Value::map([
        ("continent", Value::map([("code", Value::str("XX"))])),
        ("country", country(code, name)),
        ("registered_country", country(code, name)),
    ])
}

/// Write the test database (GeoLite2-Country layout, IPv6 tree with the
/// IPv4 space) to `path`.
pub fn write_database(path: &Path) {
    let mut w = Writer::new("GeoLite2-Country", 6).build_epoch(1_750_000_000);
    let de = record("DE", "Germany");
    let jp = record("JP", "Japan");
    let br = record("BR", "Brazil");
    for (net, value) in [
        ("192.0.2.0/25", &de),
        (
            "192.0.2.128/25",
            &Value::map([("continent", Value::map([("code", Value::str("EU"))]))]),
        ),
        ("198.51.100.0/24", &jp),
        ("203.0.113.0/24", &br),
        ("2001:db8:de::/48", &de),
        ("2001:db8:a::/48", &jp),
        ("2001:db8:b::/48", &br),
    ] {
        w.insert(net, value.clone())
            .unwrap_or_else(|e| panic!("{net}: {e}"));
    }
    w.write(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Write an ASN-only database (GeoLite2-ASN layout, no country anywhere:
/// three networks) to `path`.
pub fn write_asn_database(path: &Path) {
    let mut w = Writer::new("GeoLite2-ASN", 6);
    for (asn, net) in [
        (64_500, "192.0.2.0/24"),
        (64_501, "198.51.100.0/24"),
        (64_502, "2001:db8::/32"),
    ] {
        w.insert(
            net,
            Value::map([
                ("autonomous_system_number", Value::U32(asn)),
                (
                    "autonomous_system_organization",
                    Value::str("Example Networks"),
                ),
            ]),
        )
        .unwrap_or_else(|e| panic!("{net}: {e}"));
    }
    w.write(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Write an ASN database for the test hosts (GeoLite2-ASN layout): the DE
/// networks are AS64500 "Deutsche Example", the JP ones AS64501 "Japan
/// Example"; BR has no AS number.
pub fn write_asn_labels_database(path: &Path) {
    let mut w = Writer::new("GeoLite2-ASN", 6);
    for (nets, asn, org) in [
        (
            ["192.0.2.0/25", "2001:db8:de::/48"],
            64_500,
            "Deutsche Example",
        ),
        (
            ["198.51.100.0/24", "2001:db8:a::/48"],
            64_501,
            "Japan Example",
        ),
    ] {
        for net in nets {
            w.insert(
                net,
                Value::map([
                    ("autonomous_system_number", Value::U32(asn)),
                    ("autonomous_system_organization", Value::str(org)),
                ]),
            )
            .unwrap_or_else(|e| panic!("{net}: {e}"));
        }
    }
    w.write(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Write a city database for the test hosts (GeoLite2-City layout): the
/// DE networks are Berlin, the JP ones Tokyo; BR has no city.
pub fn write_city_database(path: &Path) {
    let mut w = Writer::new("GeoLite2-City", 6);
    for (nets, code, city, latitude, longitude) in [
        (
            ["192.0.2.0/25", "2001:db8:de::/48"],
            "DE",
            "Berlin",
            52.5244,
            13.4105,
        ),
        (
            ["198.51.100.0/24", "2001:db8:a::/48"],
            "JP",
            "Tokyo",
            35.6895,
            139.6917,
        ),
    ] {
        for net in nets {
            w.insert(
                net,
                Value::map([
                    (
                        "city",
                        Value::map([("names", Value::map([("en", Value::str(city))]))]),
                    ),
                    ("country", Value::map([("iso_code", Value::str(code))])),
                    (
                        "location",
                        Value::map([
                            ("latitude", Value::Double(latitude)),
                            ("longitude", Value::Double(longitude)),
                        ]),
                    ),
                ]),
            )
            .unwrap_or_else(|e| panic!("{net}: {e}"));
        }
    }
    w.insert(
        "203.0.113.0/24",
        Value::map([("country", Value::map([("iso_code", Value::str("BR"))]))]),
    )
    .unwrap_or_else(|e| panic!("BR: {e}"));
    w.write(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The country, ASN and city test databases in `dir`, as the
/// `--geoip.database` flags that give them all.
pub fn write_label_databases(dir: &Path) -> Vec<String> {
    let paths: [PathBuf; 3] = ["country", "asn", "city"].map(|n| dir.join(format!("{n}.mmdb")));
    write_database(&paths[0]);
    write_asn_labels_database(&paths[1]);
    write_city_database(&paths[2]);
    paths
        .iter()
        .flat_map(|p| {
            [
                "--geoip.database".to_owned(),
                p.to_str().expect("utf-8 path").to_owned(),
            ]
        })
        .collect()
}
