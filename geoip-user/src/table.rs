//! The live connection table: every connection counted once when it opens
//! and uncounted once when it closes.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    hash::{BuildHasher as _, BuildHasherDefault, Hasher, RandomState},
    net::IpAddr,
};

use crate::{
    conn::{Comm, ConnKey, Direction, from_canonical},
    exclude::Exclusions,
    geo::{Country, CountryTable, Databases},
    kernel::events::{Change, Event},
    labels::{AsnCount, Labels, Opening, Slots},
    measures::Measures,
    metrics::Recorder,
    snapshot::Snapshot,
};

/// What the exporter remembers of a tracked connection: 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tracked {
    /// Its network namespace (the reconcile judges it only if that
    /// namespace was read).
    netns: u32,
    country: Country,
    direction: Direction,
}

/// A connection's identity ([`ConnKey`], 40 bytes) as 64 bits: a `SipHash`
/// of it with a key drawn at start-up, so that nobody outside can choose
/// 4-tuples that collide. Two of n live connections share one with
/// probability about n^2 / 2^65 (3 * 10^-10 at 100,000); the reconcile
/// would repair the miscount.
pub(crate) type Fingerprint = u64;

/// Hashes a [`Fingerprint`] to itself: it is already a uniform hash.
#[derive(Clone, Copy, Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub(crate) type ByFingerprint<V> = HashMap<Fingerprint, V, BuildHasherDefault<Prehashed>>;

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
    /// The last reading of a connection's bytes (`--metrics.bytes`).
    Finished,
}

/// Why a snapshot is merged into the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncKind {
    /// At start-up: what exists is counted as opened, nothing is a
    /// correction.
    Startup,
    /// A reconcile: every difference is a correction (lost
    /// events, or a namespace that vanished with its sockets).
    Reconcile,
}

/// What merging a snapshot changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncReport {
    /// ESTABLISHED in the kernel, missing from the table: now counted.
    pub(crate) added: u64,
    /// In the table, no longer ESTABLISHED in the kernel: now uncounted.
    pub(crate) removed: u64,
}

/// One tracked connection, as `/api/v1/connections` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ConnView {
    pub(crate) remote: IpAddr,
    pub(crate) remote_port: u16,
    pub(crate) local: IpAddr,
    pub(crate) local_port: u16,
    pub(crate) direction: &'static str,
    pub(crate) country: String,
    /// Inode number of the connection's network namespace.
    pub(crate) netns: u32,
}

/// Up to `limit` tracked connections, and how many there are.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct ConnList {
    pub(crate) total: usize,
    pub(crate) connections: Vec<ConnView>,
}

/// A question for the task that owns the table.
pub(crate) enum Query {
    /// Up to `limit` tracked connections (`/api/v1/connections`).
    Connections {
        limit: usize,
        reply: tokio::sync::oneshot::Sender<ConnList>,
    },
    /// The live connections by ASN of one country, or all, of one
    /// service, or all (`/api/v1/asns`).
    Asns {
        country: Option<Country>,
        service: Option<String>,
        reply: tokio::sync::oneshot::Sender<Vec<AsnCount>>,
    },
}

/// The connection table and everything it updates; owned by one task.
/// A tracked connection costs one 16-byte entry (fingerprint and
/// [`Tracked`]) plus the hash table's control byte and spare room.
pub(crate) struct Tracker {
    conns: ByFingerprint<Tracked>,
    /// Draws the fingerprints.
    keys: RandomState,
    /// Every tracked connection's addresses, kept only for
    /// `/api/v1/connections` (`--web.enable-connections-api`).
    addresses: Option<ByFingerprint<ConnKey>>,
    /// The opt-in families (`--labels`), and every tracked connection's
    /// slots in them.
    labels: Option<(Labels, ByFingerprint<Slots>)>,
    /// Durations and bytes (`--metrics.duration`, `--metrics.bytes`).
    measures: Measures,
    exclusions: Exclusions,
    geo: CountryTable,
    recorder: Recorder,
    /// While a snapshot is being taken: the connections events changed
    /// meanwhile (the events know better than the snapshot about them).
    touched: Option<HashSet<Fingerprint, BuildHasherDefault<Prehashed>>>,
    /// Namespaces the last snapshot read: one of them missing from the
    /// next snapshot is gone, with its connections.
    namespaces: HashSet<u32>,
}

impl Tracker {
    pub(crate) fn new(exclusions: Exclusions, geo: CountryTable, recorder: Recorder) -> Self {
        Self {
            conns: ByFingerprint::default(),
            keys: RandomState::new(),
            addresses: None,
            labels: None,
            measures: Measures::default(),
            exclusions,
            geo,
            recorder,
            touched: None,
            namespaces: HashSet::new(),
        }
    }

    /// Also keep every tracked connection's addresses, for
    /// [`Self::list`].
    pub(crate) fn keeping_addresses(mut self) -> Self {
        self.addresses = Some(ByFingerprint::default());
        self
    }

    /// Also count connections in the opt-in families (`--labels`).
    pub(crate) fn with_labels(mut self, labels: Option<Labels>) -> Self {
        self.labels = labels.map(|l| (l, ByFingerprint::default()));
        self
    }

    /// Also measure durations and bytes.
    pub(crate) fn with_measures(mut self, measures: Measures) -> Self {
        self.measures = measures;
        self
    }

    /// Let busier ASN and city values displace quiet ones (on a timer,
    /// which also drops connections waiting too long for their last byte
    /// counts).
    pub(crate) fn rerank(&mut self) {
        self.measures.expire_closing();
        if let Some((labels, _)) = &mut self.labels {
            labels.rerank(&mut self.recorder);
        }
    }

    fn fingerprint(&self, key: &ConnKey) -> Fingerprint {
        self.keys.hash_one(key)
    }

    /// Use `dbs` for connections that open from now on. Connections
    /// already tracked keep the country (and slots) they were counted
    /// under, so that each close uncounts exactly what its open counted.
    /// Returns the old country database (the others are dropped here: the
    /// caller frees the big one off this task).
    pub(crate) fn replace_databases(&mut self, dbs: Databases) -> CountryTable {
        if let Some((labels, _)) = &mut self.labels {
            labels.replace(dbs.asn, dbs.city);
        }
        std::mem::replace(&mut self.geo, dbs.country)
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) const fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Up to `limit` tracked connections (most recent remote addresses
    /// first is not promised: the order is the table's); none unless
    /// [`Self::keeping_addresses`].
    pub(crate) fn list(&self, limit: usize) -> ConnList {
        let Some(addresses) = &self.addresses else {
            return ConnList {
                total: self.conns.len(),
                connections: Vec::new(),
            };
        };
        ConnList {
            total: self.conns.len(),
            connections: self
                .conns
                .iter()
                .filter_map(|(fp, t)| Some((addresses.get(fp)?, t)))
                .take(limit)
                .map(|(key, t)| ConnView {
                    remote: from_canonical(key.remote),
                    remote_port: key.remote_port,
                    local: from_canonical(key.local),
                    local_port: key.local_port,
                    direction: t.direction.as_str(),
                    country: t.country.as_str().to_owned(),
                    netns: key.netns,
                })
                .collect(),
        }
    }

    /// Answer `query`; a caller that gave up meanwhile gets nothing.
    pub(crate) fn answer(&self, query: Query) {
        match query {
            Query::Connections { limit, reply } => {
                let _ = reply.send(self.list(limit));
            }
            Query::Asns {
                country,
                service,
                reply,
            } => {
                let asns = self.labels.as_ref().map_or_else(Vec::new, |(labels, _)| {
                    labels.asns(country, service.as_deref())
                });
                let _ = reply.send(asns);
            }
        }
    }

    /// Apply one kernel event.
    pub(crate) fn apply(&mut self, event: &Event) -> Outcome {
        let fp = self.fingerprint(&event.key);
        if let Some(touched) = &mut self.touched {
            touched.insert(fp);
        }
        match event.change {
            Change::Open(direction) => {
                self.recorder.event_read(true);
                let outcome = self.open(fp, &event.key, direction, event.extra.comm);
                match outcome {
                    Outcome::Opened => self.measures.opened(fp, direction, &event.extra),
                    Outcome::AlreadyTracked => {
                        // A new life of a tracked 4-tuple (the snapshot
                        // raced its open, or its close was lost): it
                        // starts now.
                        self.measures.forget(fp);
                        self.measures.opened(fp, direction, &event.extra);
                    }
                    _ => {}
                }
                outcome
            }
            Change::Close => {
                self.recorder.event_read(false);
                match self.close(fp) {
                    Some(t) => {
                        self.measures.closed(
                            fp,
                            (t.country, t.direction, t.netns),
                            &event.extra,
                            &mut self.recorder,
                        );
                        Outcome::Closed
                    }
                    None => Outcome::Untracked,
                }
            }
            Change::Final => {
                self.recorder.final_read();
                self.measures.finished(fp, &event.extra, &mut self.recorder);
                Outcome::Finished
            }
        }
    }

    fn open(
        &mut self,
        fp: Fingerprint,
        key: &ConnKey,
        direction: Direction,
        comm: Option<Comm>,
    ) -> Outcome {
        if self.exclusions.excludes(key.remote) {
            return Outcome::Excluded;
        }
        match self.conns.entry(fp) {
            Entry::Occupied(mut entry) => {
                let old = *entry.get();
                tracing::debug!(
                    ?key,
                    ?direction,
                    flipped = old.direction != direction,
                    "open of a connection already tracked"
                );
                if old.direction != direction {
                    // The same 4-tuple the other way round: the old
                    // connection is gone, its close was lost.
                    entry.get_mut().direction = direction;
                    uncount(
                        &mut self.recorder,
                        &mut self.labels,
                        fp,
                        old.country,
                        old.direction,
                    );
                    self.count(fp, key, old.country, direction, comm);
                }
                Outcome::AlreadyTracked
            }
            Entry::Vacant(entry) => {
                let country = match self.geo.lookup_canonical(key.remote) {
                    Ok(country) => country,
                    Err(err) => {
                        tracing::debug!(error = %err, "lookup failed; counting as unknown");
                        self.recorder.lookup_error();
                        Country::UNKNOWN
                    }
                };
                entry.insert(Tracked {
                    netns: key.netns,
                    country,
                    direction,
                });
                if let Some(addresses) = &mut self.addresses {
                    addresses.insert(fp, *key);
                }
                self.count(fp, key, country, direction, comm);
                Outcome::Opened
            }
        }
    }

    /// Count a connection that opened, in every family.
    fn count(
        &mut self,
        fp: Fingerprint,
        key: &ConnKey,
        country: Country,
        direction: Direction,
        comm: Option<Comm>,
    ) {
        let Some((labels, slots)) = &mut self.labels else {
            self.recorder.opened(country, direction, 0, String::new);
            return;
        };
        let conn = Opening {
            remote: from_canonical(key.remote),
            local_port: key.local_port,
            direction,
            comm,
        };
        let s = labels.open(conn, country, &mut self.recorder);
        self.recorder.opened(country, direction, s.service, || {
            labels.service_label(s.service)
        });
        slots.insert(fp, s);
    }

    /// Uncount the connection `fp`; what it was counted as, if tracked.
    fn close(&mut self, fp: Fingerprint) -> Option<Tracked> {
        let t = self.conns.remove(&fp)?;
        if let Some(addresses) = &mut self.addresses {
            addresses.remove(&fp);
        }
        uncount(
            &mut self.recorder,
            &mut self.labels,
            fp,
            t.country,
            t.direction,
        );
        Some(t)
    }

    /// The clock an accounting pass is stamped with when requested.
    pub(crate) fn now(&self) -> u32 {
        self.measures.now()
    }

    /// Count the bytes the accounting pass `snapshot` (requested at
    /// [`Self::now`] `began`) read of open connections since the last
    /// reading; forget closing connections it no longer saw.
    pub(crate) fn account(&mut self, snapshot: &Snapshot, began: u32) {
        for &(key, counters) in &snapshot.bytes {
            let fp = self.fingerprint(&key);
            if let Some(t) = self.conns.get(&fp) {
                self.measures
                    .account(fp, t.country, t.direction, counters, &mut self.recorder);
            } else {
                self.measures
                    .account_closing(fp, counters, &mut self.recorder);
            }
        }
        let closing: HashSet<Fingerprint, BuildHasherDefault<Prehashed>> = snapshot
            .closing
            .iter()
            .map(|k| self.fingerprint(k))
            .collect();
        // Kept: seen closing, or in a namespace that could not be read; a
        // namespace neither scanned nor unreadable is gone.
        self.measures.sweep_closing(began, |fp, netns| {
            closing.contains(&fp) || snapshot.unreadable.contains(&netns)
        });
    }

    /// A snapshot is about to be taken: from now on remember which
    /// connections events change, until [`Self::finish_sync`].
    pub(crate) fn begin_sync(&mut self) {
        self.touched = Some(HashSet::default());
    }

    /// The snapshot failed: judge nothing, the table stays as the events
    /// made it.
    pub(crate) fn abort_sync(&mut self) {
        self.touched = None;
    }

    /// Make the table agree with `snapshot`, taken after
    /// [`Self::begin_sync`] and merged once every event submitted before
    /// it ended has been applied (the caller drains the ring buffer
    /// first). A connection an event changed meanwhile is left as the
    /// events say: an open or close racing the snapshot is then neither
    /// counted twice nor missed. Every other connection the snapshot sees
    /// is counted if missing; every other tracked one it does not see is
    /// uncounted, unless its namespace could not be read.
    pub(crate) fn finish_sync(&mut self, snapshot: &Snapshot, kind: SyncKind) -> SyncReport {
        let touched = self.touched.take().unwrap_or_default();
        let mut seen: ByFingerprint<(ConnKey, Direction)> =
            HashMap::with_capacity_and_hasher(snapshot.conns.len(), BuildHasherDefault::default());
        for &(key, direction) in &snapshot.conns {
            if !self.exclusions.excludes(key.remote) {
                seen.insert(self.fingerprint(&key), (key, direction));
            }
        }
        let mut report = SyncReport::default();
        let recorder = &mut self.recorder;
        let namespaces = &self.namespaces;
        let addresses = &mut self.addresses;
        let labels = &mut self.labels;
        let measures = &mut self.measures;
        self.conns.retain(|fp, tracked| {
            let ns = tracked.netns;
            let covered = snapshot.scanned.contains(&ns)
                || (namespaces.contains(&ns) && !snapshot.unreadable.contains(&ns));
            let stale = covered && !seen.contains_key(fp) && !touched.contains(fp);
            if stale {
                if kind == SyncKind::Reconcile {
                    tracing::debug!(
                        netns = ns,
                        country = ?tracked.country,
                        direction = ?tracked.direction,
                        "reconcile: no longer ESTABLISHED, uncounted"
                    );
                }
                if let Some(addresses) = addresses {
                    addresses.remove(fp);
                }
                uncount(recorder, labels, *fp, tracked.country, tracked.direction);
                measures.forget(*fp);
                report.removed += 1;
            }
            !stale
        });
        for (fp, (key, direction)) in seen {
            if !touched.contains(&fp) && !self.conns.contains_key(&fp) {
                if kind == SyncKind::Reconcile {
                    tracing::debug!(
                        ?key,
                        ?direction,
                        "reconcile: ESTABLISHED but untracked, counted"
                    );
                }
                self.open(fp, &key, direction, snapshot.owners.get(&key).copied());
                report.added += 1;
            }
        }
        if kind == SyncKind::Reconcile {
            self.recorder.corrections(report.added, report.removed);
        }
        self.namespaces
            .retain(|ns| snapshot.unreadable.contains(ns));
        self.namespaces.extend(&snapshot.scanned);
        report
    }
}

/// Uncount the connection `fp` (in `country`, `direction`) from every
/// family.
fn uncount(
    recorder: &mut Recorder,
    labels: &mut Option<(Labels, ByFingerprint<Slots>)>,
    fp: Fingerprint,
    country: Country,
    direction: Direction,
) {
    let Some((labels, slots)) = labels else {
        recorder.closed(country, direction, 0, String::new);
        return;
    };
    let s = slots.remove(&fp).unwrap_or_default();
    recorder.closed(country, direction, s.service, || {
        labels.service_label(s.service)
    });
    labels.close(s, country, direction, recorder);
}

#[cfg(test)]
mod tests {
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
        assert_eq!(t.addresses.as_ref().map(HashMap::len), Some(1));
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
}
