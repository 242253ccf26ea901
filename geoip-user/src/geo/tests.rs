//! Country databases of every layout, opened and flattened: the answers
//! are maxminddb's own, bad files are refused by path.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use geoip_tests::{
    crafted,
    mmdb::{Value, Writer},
};
use maxminddb::Reader;

use super::{
    country::{Country, CountryRecord},
    country_table::CountryTable,
    file::OpenError,
};

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

fn lookup(geo: &mut CountryTable, addr: &str) -> String {
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
        let mut geo = CountryTable::open(&path).unwrap_or_else(|e| panic!("{database_type}: {e}"));
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
    let mut geo = CountryTable::open(&write(&dir, "reg.mmdb", &w)).unwrap();
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
    let geo = CountryTable::open(&path).unwrap();
    let reader = Reader::open_readfile(&path).unwrap();
    let theirs = |addr: IpAddr| -> Country {
        reader
            .lookup(addr)
            .unwrap()
            .decode::<CountryRecord<'_>>()
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
    let mut geo = CountryTable::open(&write(&dir, "v4.mmdb", &w)).unwrap();
    assert_eq!(lookup(&mut geo, "192.0.2.9"), "SE");
    assert_eq!(lookup(&mut geo, "2001:db8::1"), "unknown");
}

#[test]
fn bad_databases_are_refused_with_the_path() {
    let dir = tempdir("bad");
    let missing = dir.join("missing.mmdb");
    let err = CountryTable::open(&missing).err().unwrap();
    assert!(matches!(err, OpenError::NotFound { .. }));
    assert!(err.to_string().contains(&missing.display().to_string()));
    assert!(err.to_string().contains("cargo xtask fetch-db"));

    let empty = dir.join("empty.mmdb");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        CountryTable::open(&empty),
        Err(OpenError::Empty { .. })
    ));

    let text = dir.join("text.mmdb");
    std::fs::write(&text, b"this is not a database\n").unwrap();
    assert!(matches!(
        CountryTable::open(&text),
        Err(OpenError::Invalid { .. })
    ));

    let mut w = Writer::new("GeoLite2-Country", 6);
    w.insert("192.0.2.0/24", geolite2_country("DE")).unwrap();
    let bytes = w.to_bytes().unwrap();
    let truncated = dir.join("truncated.mmdb");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        CountryTable::open(&truncated),
        Err(OpenError::Invalid { .. })
    ));

    let asn = dir.join("asn.mmdb");
    geoip_tests::fixtures::write_asn_database(&asn);
    let err = CountryTable::open(&asn).err().unwrap();
    assert!(
        matches!(err, OpenError::NoCountry { checked, .. } if checked >= 3),
        "{err:?}"
    );
    assert!(err.to_string().contains("GeoLite2-ASN"));

    let dir_as_file = CountryTable::open(&dir).err().unwrap();
    assert!(
        matches!(dir_as_file, OpenError::Refused { .. }),
        "{dir_as_file:?}"
    );
    assert_eq!(
        dir_as_file.to_string(),
        format!(
            "GeoIP database {} cannot be used: it is a directory, not a regular file; pass a regular .mmdb file of at most 2.0 GiB to --geoip.database",
            dir.display()
        )
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

/// Structurally valid files whose search trees a walk could not finish
/// (shared nodes: 2^60 paths, with data at the end or not; a circle) are
/// refused at once, as damaged, naming the file.
#[test]
fn search_trees_a_walk_cannot_finish_are_refused_at_once() {
    let dir = tempdir("crafted");
    for (name, bytes, says) in [
        (
            "shared.mmdb",
            crafted::shared_nodes(60, true),
            "unfolds into more than",
        ),
        (
            "shared-empty.mmdb",
            crafted::shared_nodes(60, false),
            "unfolds into more than",
        ),
        (
            "circle.mmdb",
            crafted::circular(),
            "deeper than an address's 32 bits",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let started = std::time::Instant::now();
        let err = CountryTable::open(&path).err().unwrap();
        assert!(matches!(err, OpenError::Invalid { .. }), "{err:?}");
        let text = crate::error::chain(&err);
        assert!(text.contains(name) && text.contains(says), "{text}");
        assert!(started.elapsed().as_secs() < 1, "{:?}", started.elapsed());
    }
}
