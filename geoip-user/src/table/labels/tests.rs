//! The opt-in families against real database records: each connection
//! counted once under capped values, freed series dropped.

use geoip_tests::mmdb::{Value, Writer};

use super::*;
use crate::metrics::{Metrics, Wanted};

#[test]
fn process_names_never_look_like_other_values() {
    let label = |name: &str| {
        let mut bytes = [0u8; 16];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Service::Process(Comm(bytes)).label()
    };
    assert_eq!(label("nginx"), "nginx");
    assert_eq!(label("other"), "comm:other");
    assert_eq!(label("unknown"), "comm:unknown");
    assert_eq!(label("443"), "comm:443");
    assert_eq!(label("comm:x"), "comm:comm:x");
    assert_eq!(Service::Port(443).label(), "443");
}

/// One database with AS numbers and cities: a quarter of 192.0.2.0/24
/// each for three systems and cities, the last quarter unknown.
fn databases() -> (Records<AsInfo>, Records<City>) {
    let mut w = Writer::new("test", 6);
    for (net, asn, org, city, cc) in [
        ("192.0.2.0/26", 64_500, "Alpha", "Berlin", "DE"),
        ("192.0.2.64/26", 64_501, "Beta", "Tokyo", "JP"),
        ("192.0.2.128/26", 64_502, "Gamma", "Paris", "FR"),
    ] {
        w.insert(
            net,
            Value::map([
                ("autonomous_system_number", Value::U32(asn)),
                ("autonomous_system_organization", Value::str(org)),
                ("city", Value::str(city)),
                ("country_code", Value::str(cc)),
                ("latitude", Value::Double(1.5)),
                ("longitude", Value::Double(-2.25)),
            ]),
        )
        .unwrap();
    }
    let bytes = w.to_bytes().unwrap();
    let reader = || maxminddb::Reader::from_source(bytes.clone()).unwrap();
    let info = crate::geo::DatabaseInfo::of(&reader(), std::path::Path::new("/t.mmdb"));
    (
        Records::new(info.clone(), reader()),
        Records::new(info, reader()),
    )
}

fn value(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn capped_families_count_each_connection_once_and_drop_freed_series() {
    let m = Metrics::with_families(
        false,
        Wanted {
            asn: true,
            city: true,
            ..Wanted::default()
        },
    )
    .unwrap();
    let mut r = m.recorder();
    let (asn, city) = databases();
    let mut l = Labels::new(
        false,
        Some(asn),
        Some(city),
        LabelLimits {
            service: 1,
            asn: 2,
            city: 2,
        },
    )
    .unwrap();
    let out = Direction::Outbound;
    let de = Country::from_code("DE");
    let open = |l: &mut Labels, r: &mut Recorder, ip: &str, cc: Country| {
        let conn = Opening {
            remote: ip.parse().unwrap(),
            local_port: 40_000,
            direction: out,
            comm: None,
        };
        l.open(conn, cc, r)
    };
    let alpha = open(&mut l, &mut r, "192.0.2.1", de);
    let _beta = open(&mut l, &mut r, "192.0.2.65", Country::from_code("JP"));
    let gamma = open(&mut l, &mut r, "192.0.2.129", Country::from_code("FR"));
    let _unknown = open(&mut l, &mut r, "192.0.2.200", Country::from_code("NL"));
    let text = m.render().unwrap();
    for (series, want) in [
        (
            r#"geoip_connections_by_asn{as_org="Alpha",asn="64500",direction="outbound"}"#,
            1,
        ),
        (
            r#"geoip_connections_by_asn{as_org="Beta",asn="64501",direction="outbound"}"#,
            1,
        ),
        (
            r#"geoip_connections_by_asn{as_org="other",asn="other",direction="outbound"}"#,
            1,
        ),
        (
            r#"geoip_connections_by_asn{as_org="unknown",asn="unknown",direction="outbound"}"#,
            1,
        ),
        (
            r#"geoip_connections_by_city{city="Berlin",country="DE",direction="outbound"}"#,
            1,
        ),
        (
            r#"geoip_connections_by_city{city="Tokyo",country="JP",direction="outbound"}"#,
            1,
        ),
        (
            r#"geoip_connections_by_city{city="other",country="FR",direction="outbound"}"#,
            1,
        ),
        (
            r#"geoip_connections_by_city{city="unknown",country="NL",direction="outbound"}"#,
            1,
        ),
        (
            r#"geoip_city_location_info{city="Berlin",country="DE",latitude="1.5000",longitude="-2.2500"}"#,
            1,
        ),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(
        !text.contains("Gamma") && !text.contains("Paris"),
        "capped:\n{text}"
    );

    // Alpha closes (its series stays at 0: still a member), then
    // Gamma gets much busier; at the next rerank it displaces Alpha,
    // whose series go.
    l.close(alpha, de, out, &mut r);
    l.close(gamma, Country::from_code("FR"), out, &mut r);
    let text = m.render().unwrap();
    assert_eq!(
        value(
            &text,
            r#"geoip_connections_by_asn{as_org="Alpha",asn="64500",direction="outbound"}"#
        ),
        Some(0)
    );
    assert_eq!(
        value(
            &text,
            r#"geoip_connections_by_asn{as_org="other",asn="other",direction="outbound"}"#
        ),
        Some(0),
        "Gamma's close uncounts other, where it was counted"
    );
    for _ in 0..6 {
        let s = open(&mut l, &mut r, "192.0.2.130", Country::from_code("FR"));
        l.close(s, Country::from_code("FR"), out, &mut r);
    }
    l.rerank(&mut r);
    let g = open(&mut l, &mut r, "192.0.2.131", Country::from_code("FR"));
    let text = m.render().unwrap();
    assert!(
        !text.contains("Alpha") && !text.contains("Berlin"),
        "freed:\n{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"geoip_connections_by_asn{as_org="Gamma",asn="64502",direction="outbound"}"#
        ),
        Some(1)
    );
    assert_eq!(
        value(
            &text,
            r#"geoip_connections_by_city{city="Paris",country="FR",direction="outbound"}"#
        ),
        Some(1)
    );
    l.close(g, Country::from_code("FR"), out, &mut r);
}

#[test]
fn asns_by_country_and_service_follow_opens_and_closes() {
    let m = Metrics::with_families(
        false,
        Wanted {
            service: true,
            asn: true,
            ..Wanted::default()
        },
    )
    .unwrap();
    let mut r = m.recorder();
    let (asn, _) = databases();
    let mut l = Labels::new(
        true,
        Some(asn),
        None,
        LabelLimits {
            service: 5,
            asn: 1,
            city: 1,
        },
    )
    .unwrap();
    let (de, jp) = (Country::from_code("DE"), Country::from_code("JP"));
    let open = |l: &mut Labels, r: &mut Recorder, ip: &str, cc, port, direction| {
        let conn = Opening {
            remote: ip.parse().unwrap(),
            local_port: port,
            direction,
            comm: None,
        };
        (l.open(conn, cc, r), cc, direction)
    };
    let (inb, out) = (Direction::Inbound, Direction::Outbound);
    // Alpha (the one ASN with a slot) twice in DE on 443, once in JP
    // on 22; Beta (other) in DE on 443; no answer in DE on 22.
    let conns = [
        open(&mut l, &mut r, "192.0.2.1", de, 443, inb),
        open(&mut l, &mut r, "192.0.2.2", de, 443, inb),
        open(&mut l, &mut r, "192.0.2.3", jp, 22, inb),
        open(&mut l, &mut r, "192.0.2.65", de, 443, inb),
        open(&mut l, &mut r, "192.0.2.200", de, 22, inb),
        open(&mut l, &mut r, "192.0.2.4", de, 40_000, out),
    ];
    let row = |asn: &str, org: &str, inbound, outbound| AsnCount {
        asn: asn.into(),
        as_org: org.into(),
        inbound,
        outbound,
    };
    assert_eq!(
        l.asns(Some(de), None),
        [
            row("64500", "Alpha", 2, 1),
            row("other", "other", 1, 0),
            row("unknown", "unknown", 1, 0),
        ]
    );
    assert_eq!(
        l.asns(Some(de), Some("443")),
        [row("64500", "Alpha", 2, 0), row("other", "other", 1, 0)]
    );
    assert_eq!(l.asns(Some(jp), Some("443")), []);
    assert_eq!(
        l.asns(None, Some("22")),
        [row("64500", "Alpha", 1, 0), row("unknown", "unknown", 1, 0)]
    );
    assert_eq!(l.asns(None, None)[0], row("64500", "Alpha", 3, 1));
    for (slots, cc, direction) in conns {
        l.close(slots, cc, direction, &mut r);
    }
    assert_eq!(l.asns(None, None), []);
    assert!(l.asn_by_country.is_empty(), "no entry left behind");
}
