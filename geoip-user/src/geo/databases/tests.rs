//! Which database provides what, from generated files of every kind.

use std::{net::IpAddr, path::Path};

use geoip_tests::mmdb::{Value, Writer};

use super::*;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("geoip-dbs-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, database_type: &str, value: &Value) -> PathBuf {
    let mut w = Writer::new(database_type, 6);
    w.insert("192.0.2.0/24", value.clone()).unwrap();
    let path = dir.join(name);
    w.write(&path).unwrap();
    path
}

fn country() -> Value {
    Value::map([("country_code", Value::str("DE"))])
}

fn asn() -> Value {
    Value::map([
        ("autonomous_system_number", Value::U32(64_500)),
        ("autonomous_system_organization", Value::str("Example")),
    ])
}

fn city() -> Value {
    Value::map([
        ("city", Value::str("Berlin")),
        ("country_code", Value::str("DE")),
        ("latitude", Value::Double(52.52)),
        ("longitude", Value::Double(13.405)),
    ])
}

const BOTH: Wants = Wants {
    asn: true,
    city: true,
};

#[test]
fn each_database_provides_what_its_type_says() {
    let d = dir("roles");
    let c = write(&d, "c.mmdb", "DBIP-Country-Lite", &country());
    let a = write(&d, "a.mmdb", "GeoLite2-ASN", &asn());
    let y = write(&d, "y.mmdb", "ip-location-db city", &city());
    let ip = "192.0.2.1".parse().unwrap();

    let mut dbs = Databases::open(&[y.clone(), a.clone(), c.clone()], BOTH).unwrap();
    assert_eq!(
        dbs.country.info().path,
        c,
        "countries from the country database"
    );
    assert_eq!(
        dbs.asn
            .as_mut()
            .unwrap()
            .lookup(ip)
            .unwrap()
            .unwrap()
            .number,
        64_500
    );
    let berlin = dbs.city.as_mut().unwrap().lookup(ip).unwrap().unwrap();
    assert_eq!((&*berlin.name, berlin.country.as_str()), ("Berlin", "DE"));
    assert!((berlin.latitude - 52.52).abs() < 1e-9);

    // Without --labels the extra databases are not kept.
    let dbs = Databases::open(&[c.clone(), a.clone()], Wants::default()).unwrap();
    assert!(dbs.asn.is_none() && dbs.city.is_none());

    // A city database alone gives countries and cities.
    let dbs = Databases::open(
        std::slice::from_ref(&y),
        Wants {
            asn: false,
            city: true,
        },
    )
    .unwrap();
    assert_eq!(dbs.country.info().path, y);
    assert!(dbs.city.is_some());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn what_labels_need_must_be_given_once() {
    let d = dir("needs");
    let c = write(&d, "c.mmdb", "GeoLite2-Country", &country());
    let c2 = write(&d, "c2.mmdb", "DBIP-Country-Lite", &country());
    let a = write(&d, "a.mmdb", "GeoLite2-ASN", &asn());
    let err = |paths: &[PathBuf], wants| Databases::open(paths, wants).err().unwrap().to_string();

    let e = err(
        std::slice::from_ref(&c),
        Wants {
            asn: true,
            city: false,
        },
    );
    assert!(e.contains("--labels asn needs an ASN database"), "{e}");
    let e = err(&[c.clone(), a.clone()], BOTH);
    assert!(e.contains("--labels city needs a city database"), "{e}");
    let e = err(&[c.clone(), c2.clone()], Wants::default());
    assert!(
        e.contains("two country databases") && e.contains("c.mmdb") && e.contains("c2.mmdb"),
        "{e}"
    );
    // An ASN database alone has no countries.
    let e = err(std::slice::from_ref(&a), Wants::default());
    assert!(e.contains("has no country data"), "{e}");
    // Whatever --labels needs besides: the country database's problem
    // comes first.
    let e = err(std::slice::from_ref(&a), BOTH);
    assert!(e.contains("has no country data"), "{e}");
    // A database typed ASN without AS numbers.
    let fake = write(&d, "fake.mmdb", "GeoLite2-ASN", &country());
    let e = err(
        &[c.clone(), fake],
        Wants {
            asn: true,
            city: false,
        },
    );
    assert!(e.contains("has no AS number"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// ip-location-db's one file per family: an IPv4-only file and an
/// IPv6 one of the same kind answer as one database, in either order;
/// a third file, or two of one family, is still refused.
#[test]
fn an_ipv4_file_and_an_ipv6_file_of_one_kind_answer_together() {
    let d = dir("families");
    let family = |name: &str, database_type: &str, ip_version: u16, net: &str, value: Value| {
        let mut w = Writer::new(database_type, ip_version);
        w.insert(net, value).unwrap();
        let path = d.join(name);
        w.write(&path).unwrap();
        path
    };
    let city = |name: &str, code: &str| {
        Value::map([
            ("city", Value::str(name)),
            ("country_code", Value::str(code)),
            ("latitude", Value::Double(1.0)),
            ("longitude", Value::Double(2.0)),
        ])
    };
    let y4 = family(
        "city-ipv4.mmdb",
        "ip-location-db city",
        4,
        "192.0.2.0/24",
        city("Berlin", "DE"),
    );
    let y6 = family(
        "city-ipv6.mmdb",
        "ip-location-db city",
        6,
        "2001:db8::/32",
        city("Osaka", "JP"),
    );
    let a4 = family(
        "asn-ipv4.mmdb",
        "ip-location-db asn",
        4,
        "192.0.2.0/24",
        asn(),
    );
    let a6 = family(
        "asn-ipv6.mmdb",
        "ip-location-db asn",
        6,
        "2001:db8::/32",
        Value::map([
            ("autonomous_system_number", Value::U32(64_501)),
            ("autonomous_system_organization", Value::str("Six")),
        ]),
    );
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    for paths in [
        [y4.clone(), a6.clone(), y6.clone(), a4.clone()],
        [a4.clone(), y6.clone(), a6.clone(), y4.clone()],
    ] {
        let mut dbs = Databases::open(&paths, BOTH).unwrap();
        assert_eq!(dbs.country.lookup(v4).unwrap().as_str(), "DE", "{paths:?}");
        assert_eq!(dbs.country.lookup(v6).unwrap().as_str(), "JP", "{paths:?}");
        let city = dbs.city.as_mut().unwrap();
        assert_eq!(&*city.lookup(v4).unwrap().unwrap().name, "Berlin");
        assert_eq!(&*city.lookup(v6).unwrap().unwrap().name, "Osaka");
        let asn = dbs.asn.as_mut().unwrap();
        assert_eq!(asn.lookup(v4).unwrap().unwrap().number, 64_500);
        assert_eq!(asn.lookup(v6).unwrap().unwrap().number, 64_501);
    }
    // The IPv4 file alone: IPv6 has no answer (not an error).
    let mut dbs = Databases::open(std::slice::from_ref(&y4), BOTH_CITY).unwrap();
    assert_eq!(dbs.city.as_mut().unwrap().lookup(v6).unwrap(), None);
    // A third file of the kind, or two of one family: refused.
    let y4b = family(
        "city-ipv4-b.mmdb",
        "ip-location-db city",
        4,
        "198.51.100.0/24",
        city("Paris", "FR"),
    );
    let refused = |paths: &[PathBuf]| Databases::open(paths, BOTH_CITY).err().unwrap().to_string();
    let e = refused(&[y4.clone(), y6.clone(), y4b.clone()]);
    assert!(
        e.contains("two city databases") && e.contains("city-ipv4-b.mmdb"),
        "{e}"
    );
    let e = refused(&[y4.clone(), y4b]);
    assert!(e.contains("an IPv4-only file and an IPv6 one"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

const BOTH_CITY: Wants = Wants {
    asn: false,
    city: true,
};

#[test]
fn a_country_database_with_as_numbers_serves_asn_too() {
    let d = dir("ipinfo");
    let lite = Value::map([
        ("asn", Value::str("AS64501")),
        ("as_name", Value::str("Lite Networks")),
        ("country_code", Value::str("FR")),
    ]);
    let p = write(&d, "ipinfo_lite.mmdb", "ipinfo lite", &lite);
    let mut dbs = Databases::open(
        std::slice::from_ref(&p),
        Wants {
            asn: true,
            city: false,
        },
    )
    .unwrap();
    let a = dbs
        .asn
        .as_mut()
        .unwrap()
        .lookup("192.0.2.9".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((a.number, &*a.org), (64_501, "Lite Networks"));
    std::fs::remove_dir_all(&d).unwrap();
}
