//! The table against made-up events and snapshots: each connection
//! counted once, however its events and the snapshots interleave.

use geoip_tests::mmdb::{Value, Writer};

use super::*;
use crate::{conn::ip, metrics::Metrics};

fn tracker(extra_exclusions: &[&str]) -> (Tracker, Metrics) {
    let dir = std::env::temp_dir().join(format!("geoip-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("t{}.mmdb", extra_exclusions.len()));
    let mut w = Writer::new("test", 6);
    let cc = |c: &str| Value::map([("country_code", Value::str(c))]);
    w.insert("192.0.2.0/24", cc("DE")).unwrap();
    w.insert("198.51.100.0/24", cc("JP")).unwrap();
    w.insert("2001:db8:1::/48", cc("BR")).unwrap();
    w.write(&path).unwrap();
    let extra: Vec<_> = extra_exclusions
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let metrics = Metrics::new(false).unwrap();
    let t = Tracker::new(
        Exclusions::new(&extra),
        CountryTable::open(&path).unwrap(),
        metrics.recorder(),
    )
    .keeping_addresses();
    (t, metrics)
}

fn key(remote: &str, remote_port: u16, local_port: u16) -> ConnKey {
    ConnKey {
        local: ip("192.168.1.10"),
        remote: ip(remote),
        local_port,
        remote_port,
        netns: 1,
    }
}

/// A snapshot that read namespaces `scanned` and could not read
/// `unreadable`.
fn snapshot(conns: &[(ConnKey, Direction)], scanned: &[u32], unreadable: &[u32]) -> Snapshot {
    Snapshot {
        conns: conns.to_vec(),
        scanned: scanned.iter().copied().collect(),
        unreadable: unreadable.iter().copied().collect(),
        ..Snapshot::default()
    }
}

fn corrections(m: &Metrics, action: &str) -> i64 {
    sample(
        m,
        &format!("geoip_exporter_reconcile_corrections_total{{action=\"{action}\"}}"),
    )
}

fn open(k: ConnKey, d: Direction) -> Event {
    Event {
        key: k,
        change: Change::Open(d),
        extra: crate::kernel::events::Extra::default(),
    }
}

fn close(k: ConnKey) -> Event {
    Event {
        key: k,
        change: Change::Close,
        extra: crate::kernel::events::Extra::default(),
    }
}

/// The value of one sample line, 0 when absent.
fn sample(m: &Metrics, series: &str) -> i64 {
    let text = m.render().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn conns(m: &Metrics, country: &str, dir: &str) -> i64 {
    sample(
        m,
        &format!("geoip_connections{{country=\"{country}\",direction=\"{dir}\"}}"),
    )
}

#[test]
fn open_close_counts_once() {
    let (mut t, m) = tracker(&[]);
    let a = key("192.0.2.1", 443, 50000);
    let de2 = key("192.0.2.2", 443, 50001);
    let br = key("2001:db8:1::5", 22, 50002);
    assert_eq!(t.apply(&open(a, Direction::Outbound)), Outcome::Opened);
    assert_eq!(t.apply(&open(de2, Direction::Outbound)), Outcome::Opened);
    assert_eq!(t.apply(&open(br, Direction::Inbound)), Outcome::Opened);
    assert_eq!(conns(&m, "DE", "outbound"), 2);
    assert_eq!(conns(&m, "BR", "inbound"), 1);
    assert_eq!(t.apply(&close(a)), Outcome::Closed);
    assert_eq!(
        t.apply(&close(a)),
        Outcome::Untracked,
        "second close is a no-op"
    );
    assert_eq!(conns(&m, "DE", "outbound"), 1);
    assert_eq!(
        sample(
            &m,
            "geoip_connections_closed_total{country=\"DE\",direction=\"outbound\"}"
        ),
        1
    );
    assert_eq!(t.len(), 2);
    assert_eq!(sample(&m, "geoip_exporter_connections_tracked"), 2);
    assert_eq!(
        sample(&m, "geoip_exporter_events_read_total{kind=\"close\"}"),
        2
    );
}

#[test]
fn unknown_close_and_duplicate_open_change_nothing() {
    let (mut t, m) = tracker(&[]);
    let a = key("198.51.100.3", 80, 40000);
    assert_eq!(t.apply(&close(a)), Outcome::Untracked);
    assert_eq!(t.apply(&open(a, Direction::Outbound)), Outcome::Opened);
    assert_eq!(
        t.apply(&open(a, Direction::Outbound)),
        Outcome::AlreadyTracked
    );
    assert_eq!(conns(&m, "JP", "outbound"), 1);
    assert_eq!(
        sample(
            &m,
            "geoip_connections_opened_total{country=\"JP\",direction=\"outbound\"}"
        ),
        1
    );
    // Same tuple, other direction: the old one is gone.
    assert_eq!(
        t.apply(&open(a, Direction::Inbound)),
        Outcome::AlreadyTracked
    );
    assert_eq!(conns(&m, "JP", "outbound"), 0);
    assert_eq!(conns(&m, "JP", "inbound"), 1);
    assert_eq!(t.len(), 1);
}

#[test]
fn lists_connections_up_to_a_limit() {
    let (mut t, _m) = tracker(&[]);
    t.apply(&open(key("192.0.2.1", 443, 40001), Direction::Outbound));
    t.apply(&open(key("2001:db8:1::5", 50000, 22), Direction::Inbound));
    let all = t.list(10);
    assert_eq!(all.total, 2);
    let mut shown: Vec<String> = all
        .connections
        .iter()
        .map(|c| {
            format!(
                "{} {}:{} {}",
                c.direction, c.remote, c.remote_port, c.country
            )
        })
        .collect();
    shown.sort();
    assert_eq!(
        shown,
        [
            "inbound 2001:db8:1::5:50000 BR",
            "outbound 192.0.2.1:443 DE"
        ]
    );
    let one = t.list(1);
    assert_eq!((one.total, one.connections.len()), (2, 1));
    // Closed connections leave the address table too.
    t.apply(&close(key("192.0.2.1", 443, 40001)));
    let left = t.list(10);
    assert_eq!((left.total, left.connections.len()), (1, 1));
    assert_eq!(t.addresses.as_ref().map(ByFingerprint::len), Some(1));
}

#[test]
fn excluded_and_unknown_countries() {
    let (mut t, m) = tracker(&["198.51.100.0/25"]);
    assert_eq!(
        t.apply(&open(key("127.0.0.1", 1, 2), Direction::Outbound)),
        Outcome::Excluded
    );
    assert_eq!(
        t.apply(&open(key("10.1.1.1", 1, 2), Direction::Inbound)),
        Outcome::Excluded
    );
    assert_eq!(
        t.apply(&open(key("fd00::1", 1, 2), Direction::Inbound)),
        Outcome::Excluded
    );
    assert_eq!(
        t.apply(&open(key("198.51.100.100", 1, 2), Direction::Outbound)),
        Outcome::Excluded,
        "user range"
    );
    assert_eq!(
        t.apply(&open(key("198.51.100.200", 1, 2), Direction::Outbound)),
        Outcome::Opened
    );
    assert_eq!(
        t.apply(&open(
            key("::ffff:198.51.100.201", 1, 2),
            Direction::Outbound
        )),
        Outcome::Opened
    );
    assert_eq!(
        t.apply(&open(key("8.8.8.8", 1, 2), Direction::Outbound)),
        Outcome::Opened
    );
    assert_eq!(conns(&m, "JP", "outbound"), 2);
    assert_eq!(conns(&m, "unknown", "outbound"), 1);
    assert_eq!(t.len(), 3);
}

#[test]
fn startup_merge_counts_each_connection_once() {
    let (mut t, m) = tracker(&[]);
    let before = key("192.0.2.10", 443, 40001); // open before start, still open
    let before_closed = key("192.0.2.11", 443, 40002); // open before start, closes while syncing
    let between = key("192.0.2.12", 443, 40003); // opened after attach, in snapshot too
    let inbound_guess = key("198.51.100.9", 51000, 8080); // snapshot guessed wrong
    let gone = key("192.0.2.13", 443, 40004); // opened and closed while syncing
    t.begin_sync();
    for event in [
        close(before_closed),
        open(between, Direction::Outbound),
        open(inbound_guess, Direction::Inbound),
        open(gone, Direction::Outbound),
        close(gone),
    ] {
        t.apply(&event);
    }
    let report = t.finish_sync(
        &snapshot(
            &[
                (before, Direction::Outbound),
                (before_closed, Direction::Outbound),
                (between, Direction::Outbound),
                (inbound_guess, Direction::Outbound),
            ],
            &[1],
            &[],
        ),
        SyncKind::Startup,
    );
    assert_eq!(
        report,
        SyncReport {
            added: 1,
            removed: 0
        },
        "only `before`"
    );
    assert_eq!(conns(&m, "DE", "outbound"), 2, "before + between");
    assert_eq!(conns(&m, "JP", "inbound"), 1);
    assert_eq!(conns(&m, "JP", "outbound"), 0);
    assert_eq!(t.len(), 3);
    assert_eq!(corrections(&m, "added"), 0, "start-up is not a correction");
    // The close of a connection opened before start uncounts it.
    assert_eq!(t.apply(&close(before)), Outcome::Closed);
    assert_eq!(conns(&m, "DE", "outbound"), 1);
    assert_eq!(
        sample(
            &m,
            "geoip_connections_opened_total{country=\"DE\",direction=\"outbound\"}"
        ),
        3
    );
    assert_eq!(
        sample(
            &m,
            "geoip_connections_closed_total{country=\"DE\",direction=\"outbound\"}"
        ),
        2
    );
}

#[test]
fn reconcile_repairs_lost_events_but_trusts_events_during_the_snapshot() {
    let (mut t, m) = tracker(&[]);
    let kept = key("192.0.2.1", 443, 40001);
    let lost_close = key("192.0.2.2", 443, 40002); // its close event was lost
    let lost_open = key("198.51.100.3", 443, 40003); // its open event was lost
    let racing_close = key("192.0.2.4", 443, 40004); // closes while the snapshot runs
    let racing_open = key("192.0.2.5", 443, 40005); // opens while the snapshot runs
    for k in [kept, lost_close, racing_close] {
        t.apply(&open(k, Direction::Outbound));
    }
    t.begin_sync();
    t.apply(&close(racing_close));
    t.apply(&open(racing_open, Direction::Outbound));
    // The snapshot saw racing_close still open and racing_open not yet.
    let report = t.finish_sync(
        &snapshot(
            &[
                (kept, Direction::Outbound),
                (lost_open, Direction::Inbound),
                (racing_close, Direction::Outbound),
                (key("10.0.0.1", 1, 2), Direction::Outbound),
            ],
            &[1],
            &[],
        ),
        SyncKind::Reconcile,
    );
    assert_eq!(
        report,
        SyncReport {
            added: 1,
            removed: 1
        }
    );
    assert_eq!(corrections(&m, "added"), 1);
    assert_eq!(corrections(&m, "removed"), 1);
    assert_eq!(conns(&m, "DE", "outbound"), 2, "kept + racing_open");
    assert_eq!(
        conns(&m, "JP", "inbound"),
        1,
        "lost_open, excluded peer left out"
    );
    assert_eq!(t.len(), 3);
    assert_eq!(t.apply(&close(lost_open)), Outcome::Closed);
    assert_eq!(t.apply(&close(lost_close)), Outcome::Untracked);
}

#[test]
fn namespaces_are_apart_and_unreadable_ones_are_not_judged() {
    let (mut t, m) = tracker(&[]);
    let in_a = key("192.0.2.1", 443, 40001);
    let in_b = ConnKey { netns: 2, ..in_a };
    let in_c = ConnKey { netns: 3, ..in_a };
    assert_eq!(t.apply(&open(in_a, Direction::Outbound)), Outcome::Opened);
    assert_eq!(t.apply(&open(in_b, Direction::Outbound)), Outcome::Opened);
    assert_eq!(t.apply(&open(in_c, Direction::Outbound)), Outcome::Opened);
    assert_eq!(
        conns(&m, "DE", "outbound"),
        3,
        "same 4-tuple, three namespaces"
    );
    // Only namespace 1 read: 2 and 3 were never read, so not judged.
    t.begin_sync();
    let report = t.finish_sync(
        &snapshot(&[(in_a, Direction::Outbound)], &[1], &[]),
        SyncKind::Reconcile,
    );
    assert_eq!(report, SyncReport::default());
    // Now 2 and 3 are read and hold their connections...
    t.begin_sync();
    let all = [
        (in_a, Direction::Outbound),
        (in_b, Direction::Outbound),
        (in_c, Direction::Outbound),
    ];
    let report = t.finish_sync(&snapshot(&all, &[1, 2, 3], &[]), SyncKind::Reconcile);
    assert_eq!(report, SyncReport::default());
    // ...then 2 is gone and 3 cannot be read: 2's connection goes.
    t.begin_sync();
    let report = t.finish_sync(
        &snapshot(&[(in_a, Direction::Outbound)], &[1], &[3]),
        SyncKind::Reconcile,
    );
    assert_eq!(
        report,
        SyncReport {
            added: 0,
            removed: 1
        }
    );
    assert_eq!(conns(&m, "DE", "outbound"), 2);
    assert_eq!(t.apply(&close(in_c)), Outcome::Closed);
    assert_eq!(t.apply(&close(in_b)), Outcome::Untracked);
}

#[test]
fn a_new_database_applies_to_new_connections_only() {
    let (mut t, m) = tracker(&[]);
    let early = key("192.0.2.1", 443, 40001);
    let late = key("192.0.2.2", 443, 40002);
    t.apply(&open(early, Direction::Outbound));
    let dir = std::env::temp_dir().join(format!("geoip-table-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fr.mmdb");
    let mut w = Writer::new("test", 6);
    w.insert(
        "192.0.2.0/24",
        Value::map([("country_code", Value::str("FR"))]),
    )
    .unwrap();
    w.write(&path).unwrap();
    drop(t.replace_databases(
        Databases::open(std::slice::from_ref(&path), crate::geo::Wants::default()).unwrap(),
    ));
    t.apply(&open(late, Direction::Outbound));
    assert_eq!(conns(&m, "DE", "outbound"), 1, "keeps its country");
    assert_eq!(conns(&m, "FR", "outbound"), 1, "uses the new database");
    t.apply(&close(early));
    assert_eq!(conns(&m, "DE", "outbound"), 0, "the close uncounts DE");
    std::fs::remove_dir_all(&dir).unwrap();
}
