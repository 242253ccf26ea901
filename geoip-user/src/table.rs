//! The live connection table: every connection counted once when it opens
//! and uncounted once when it closes.

use std::collections::{HashMap, hash_map::Entry};

use crate::{
    events::{Change, ConnKey, Direction, Event},
    filter::{Exclusions, from_canonical},
    geo::{Country, Geo},
    metrics::Recorder,
};

/// What the exporter remembers of a tracked connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tracked {
    country: Country,
    direction: Direction,
}

/// What [`Tracker::apply`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A new connection is counted.
    Opened,
    /// A tracked connection is no longer counted.
    Closed,
    /// The remote address is excluded; nothing counted.
    Excluded,
    /// An open for a connection already tracked (it was in the start-up
    /// snapshot, or its close was lost and the 4-tuple reused).
    AlreadyTracked,
    /// A close for a connection never tracked (excluded, or opened in
    /// another network namespace before the exporter started).
    Untracked,
}

/// The connection table and everything it updates; owned by one task.
pub(crate) struct Tracker {
    conns: HashMap<ConnKey, Tracked>,
    exclusions: Exclusions,
    geo: Geo,
    recorder: Recorder,
}

impl Tracker {
    pub(crate) fn new(exclusions: Exclusions, geo: Geo, recorder: Recorder) -> Self {
        Self {
            conns: HashMap::new(),
            exclusions,
            geo,
            recorder,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) const fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Apply one kernel event.
    pub(crate) fn apply(&mut self, event: &Event) -> Outcome {
        match event.change {
            Change::Open(direction) => {
                self.recorder.event_read(true);
                self.open(event.key, direction)
            }
            Change::Close => {
                self.recorder.event_read(false);
                self.close(&event.key)
            }
        }
    }

    fn open(&mut self, key: ConnKey, direction: Direction) -> Outcome {
        if self.exclusions.excludes(key.remote) {
            return Outcome::Excluded;
        }
        match self.conns.entry(key) {
            Entry::Occupied(mut entry) => {
                let old = *entry.get();
                if old.direction != direction {
                    // The same 4-tuple the other way round: the old
                    // connection is gone, its close was lost.
                    entry.get_mut().direction = direction;
                    self.recorder.closed(old.country, old.direction);
                    self.recorder.opened(old.country, direction);
                }
                Outcome::AlreadyTracked
            }
            Entry::Vacant(entry) => {
                let country = match self.geo.lookup(from_canonical(key.remote)) {
                    Ok(country) => country,
                    Err(err) => {
                        tracing::debug!(error = %err, "lookup failed; counting as unknown");
                        self.recorder.lookup_error();
                        Country::UNKNOWN
                    }
                };
                entry.insert(Tracked { country, direction });
                self.recorder.opened(country, direction);
                Outcome::Opened
            }
        }
    }

    fn close(&mut self, key: &ConnKey) -> Outcome {
        match self.conns.remove(key) {
            Some(t) => {
                self.recorder.closed(t.country, t.direction);
                Outcome::Closed
            }
            None => Outcome::Untracked,
        }
    }

    /// Merge the connections that were ESTABLISHED at start-up (from
    /// `sock_diag`, taken after the kernel program was attached) with the
    /// events buffered meanwhile, so that each connection counts once:
    /// a buffered open gives the true direction of a snapshot connection;
    /// then the snapshot is inserted; then the buffered events are applied
    /// in order (their opens of snapshot connections are no-ops, their
    /// closes uncount them).
    pub(crate) fn merge_startup(&mut self, snapshot: Vec<(ConnKey, Direction)>, pending: &[Event]) {
        let mut snapshot: HashMap<ConnKey, Direction> = snapshot.into_iter().collect();
        for event in pending {
            if let Change::Open(direction) = event.change
                && let Some(d) = snapshot.get_mut(&event.key)
            {
                *d = direction;
            }
        }
        for (key, direction) in snapshot {
            self.open(key, direction);
        }
        for event in pending {
            self.apply(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use geoip_tests::mmdb::{Value, Writer};

    use super::*;
    use crate::{filter::ip, metrics::Metrics};

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
            Geo::open(&path).unwrap(),
            metrics.recorder(),
        );
        (t, metrics)
    }

    fn key(remote: &str, remote_port: u16, local_port: u16) -> ConnKey {
        ConnKey {
            local: ip("192.168.1.10"),
            remote: ip(remote),
            local_port,
            remote_port,
        }
    }

    fn open(k: ConnKey, d: Direction) -> Event {
        Event {
            key: k,
            change: Change::Open(d),
        }
    }

    fn close(k: ConnKey) -> Event {
        Event {
            key: k,
            change: Change::Close,
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
        let before_closed = key("192.0.2.11", 443, 40002); // open before start, closes while buffering
        let between = key("192.0.2.12", 443, 40003); // opened after attach, in snapshot too
        let inbound_guess = key("198.51.100.9", 51000, 8080); // snapshot guessed wrong
        let gone = key("192.0.2.13", 443, 40004); // opened and closed while buffering
        let snapshot = vec![
            (before, Direction::Outbound),
            (before_closed, Direction::Outbound),
            (between, Direction::Outbound),
            (inbound_guess, Direction::Outbound),
        ];
        let pending = [
            close(before_closed),
            open(between, Direction::Outbound),
            open(inbound_guess, Direction::Inbound),
            open(gone, Direction::Outbound),
            close(gone),
        ];
        t.merge_startup(snapshot, &pending);
        assert_eq!(conns(&m, "DE", "outbound"), 2, "before + between");
        assert_eq!(conns(&m, "JP", "inbound"), 1);
        assert_eq!(conns(&m, "JP", "outbound"), 0);
        assert_eq!(t.len(), 3);
        // The close of a connection opened before start uncounts it.
        assert_eq!(t.apply(&close(before)), Outcome::Closed);
        assert_eq!(conns(&m, "DE", "outbound"), 1);
        assert_eq!(
            sample(
                &m,
                "geoip_connections_opened_total{country=\"DE\",direction=\"outbound\"}"
            ),
            4
        );
        assert_eq!(
            sample(
                &m,
                "geoip_connections_closed_total{country=\"DE\",direction=\"outbound\"}"
            ),
            3
        );
    }
}
