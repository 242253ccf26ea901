//! The live connection table: every connection counted once when it opens
//! and uncounted once when it closes, merged with the kernel's own table
//! (a snapshot) at start-up and at each reconcile.

use std::{
    collections::{HashSet, hash_map::Entry},
    hash::BuildHasherDefault,
};

use super::{
    fingerprint::{ByFingerprint, Fingerprint, FingerprintSet, Fingerprinter},
    labels::{Labels, Opening, Slots},
    measures::Measures,
    query::{ConnList, ConnView, Query},
};
use crate::{
    conn::{Comm, ConnKey, Direction, from_canonical},
    exclude::Exclusions,
    geo::{Country, CountryTable, Databases},
    kernel::events::{Change, Event},
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

/// The connection table and everything it updates; owned by one task.
/// A tracked connection costs one 16-byte entry (fingerprint and
/// [`Tracked`]) plus the hash table's control byte and spare room.
pub(crate) struct Tracker {
    conns: ByFingerprint<Tracked>,
    /// Draws the fingerprints.
    keys: Fingerprinter,
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
    touched: Option<FingerprintSet>,
    /// Namespaces the last snapshot read: one of them missing from the
    /// next snapshot is gone, with its connections.
    namespaces: HashSet<u32>,
}

impl Tracker {
    pub(crate) fn new(exclusions: Exclusions, geo: CountryTable, recorder: Recorder) -> Self {
        Self {
            conns: ByFingerprint::default(),
            keys: Fingerprinter::new(),
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
        self.keys.of(key)
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
        let closing: FingerprintSet = snapshot
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
        let mut seen: ByFingerprint<(ConnKey, Direction)> = ByFingerprint::with_capacity_and_hasher(
            snapshot.conns.len(),
            BuildHasherDefault::default(),
        );
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
mod tests;
