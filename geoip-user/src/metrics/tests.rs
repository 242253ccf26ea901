//! The registry's series and the typed overview, through a recorder.

use super::{
    Metrics,
    overview::{CountryCounts, DirectionCounts},
};
use crate::{conn::Direction, geo::Country};

fn de() -> Country {
    Country::from_code("DE")
}

/// The build's version, commit and date, as `--version` tells them.
#[test]
fn build_info_names_the_version_commit_and_date() {
    let text = Metrics::new(true).unwrap().render().unwrap();
    let line = format!(
        "geoip_exporter_build_info{{build_date=\"{}\",revision=\"{}\",version=\"{}\"}} 1",
        env!("GEOIP_BUILD_DATE"),
        env!("GEOIP_GIT_COMMIT"),
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    let date = env!("GEOIP_BUILD_DATE").as_bytes();
    assert!(
        date.len() == 10 && date[4] == b'-' && date[7] == b'-',
        "a UTC date: {}",
        env!("GEOIP_BUILD_DATE")
    );
    assert_ne!(
        env!("GEOIP_GIT_COMMIT"),
        "unknown",
        "built in a git checkout"
    );
}

#[test]
fn series_follow_opens_and_closes() {
    let m = Metrics::new(true).unwrap();
    let mut r = m.recorder();
    r.opened(de(), Direction::Inbound, 0, String::new);
    r.opened(de(), Direction::Inbound, 0, String::new);
    r.opened(de(), Direction::Outbound, 0, String::new);
    r.opened(Country::UNKNOWN, Direction::Outbound, 0, String::new);
    r.closed(de(), Direction::Inbound, 0, String::new);
    let overview = m.overview(None);
    assert!(overview.services.is_empty(), "no service label");
    let countries = overview.countries;
    assert_eq!(
        countries["DE"],
        CountryCounts {
            inbound: DirectionCounts {
                connections: 1,
                opened: 2,
                closed: 1,
                ..DirectionCounts::default()
            },
            outbound: DirectionCounts {
                connections: 1,
                opened: 1,
                closed: 0,
                ..DirectionCounts::default()
            },
        }
    );
    assert_eq!(countries["unknown"].outbound.connections, 1);
    assert_eq!(countries.len(), 2);
    let text = m.render().unwrap();
    for line in [
        "geoip_connections{country=\"DE\",direction=\"inbound\"} 1",
        "geoip_connections{country=\"DE\",direction=\"outbound\"} 1",
        "geoip_connections{country=\"unknown\",direction=\"outbound\"} 1",
        "geoip_connections_opened_total{country=\"DE\",direction=\"inbound\"} 2",
        "geoip_connections_closed_total{country=\"DE\",direction=\"inbound\"} 1",
        "geoip_connections_closed_total{country=\"DE\",direction=\"outbound\"} 0",
        "job_location{location=\"DE\"} 2",
        "job_location{location=\"unknown\"} 1",
        "geoip_exporter_connections_tracked 3",
        "geoip_exporter_events_read_total{kind=\"open\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[test]
fn legacy_gauge_is_optional_and_lost_events_are_read_at_scrape() {
    let m = Metrics::new(false).unwrap();
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let source = lost.clone();
    m.register_kernel_losses(
        Box::new(move || Some(source.load(std::sync::atomic::Ordering::Relaxed))),
        Some(Box::new(|| Some(3))),
    )
    .unwrap();
    assert!(
        m.render()
            .unwrap()
            .contains("geoip_exporter_events_lost_total 0\n")
    );
    lost.store(7, std::sync::atomic::Ordering::Relaxed);
    let text = m.render().unwrap();
    assert!(
        text.contains("geoip_exporter_events_lost_total 7\n"),
        "{text}"
    );
    assert!(text.contains("geoip_exporter_events_missed_total 3\n"));
    assert!(!text.contains("job_location"));
}

/// A kernel that does not count skipped runs: the family is absent, not a
/// false 0.
#[test]
fn skipped_runs_are_absent_where_the_kernel_does_not_count_them() {
    let m = Metrics::new(false).unwrap();
    m.register_kernel_losses(Box::new(|| Some(1)), None)
        .unwrap();
    let text = m.render().unwrap();
    assert!(
        text.contains("geoip_exporter_events_lost_total 1\n"),
        "{text}"
    );
    assert!(
        !text.contains("geoip_exporter_events_missed_total"),
        "{text}"
    );
}

/// A scrape while the event thread opens and closes sees each change
/// whole: open connections plus closed ones always equal the opened, in
/// every render (without the hold, a render between a close's gauge and
/// its counter breaks it within a few thousand tries).
#[test]
fn a_scrape_sees_each_change_whole() {
    let m = Metrics::new(false).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (m, done) = (m.clone(), done.clone());
        std::thread::spawn(move || {
            let mut r = m.recorder();
            for _ in 0..200_000 {
                let _updating = m.updating();
                r.opened(de(), Direction::Outbound, 0, String::new);
                r.closed(de(), Direction::Outbound, 0, String::new);
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let value = |text: &str, name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("country=\"DE\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (mut renders, mut amid) = (0, 0);
    while !done.load(std::sync::atomic::Ordering::Relaxed) && renders < 20_000 {
        let text = m.render().unwrap();
        let open = value(&text, "geoip_connections{");
        let opened = value(&text, "geoip_connections_opened_total{");
        let closed = value(&text, "geoip_connections_closed_total{");
        assert_eq!(open + closed, opened, "render {renders}:\n{text}");
        renders += 1;
        if opened > 0 && opened < 200_000 {
            amid += 1;
        }
    }
    writer.join().unwrap();
    assert!(
        amid > 10,
        "renders while the changes went on: {amid} of {renders}"
    );
}
