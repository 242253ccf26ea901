//! What the kernel program's opt-in features measure of each connection:
//! how long it lived (`--metrics.duration`) and how many bytes it carried
//! each way (`--metrics.bytes`).
//!
//! Durations come from the kernel's monotonic clock at the open and at the
//! close; a connection that existed before the exporter started has no
//! open time and no duration.
//!
//! Bytes are the socket's own counters (`tcp_sock.bytes_received`, and
//! `.bytes_acked`: sent and acknowledged), read by the kernel program when
//! the connection leaves ESTABLISHED and again when the socket reaches
//! CLOSE (its closing handshake may still carry data), and by the
//! periodic accounting pass (`sock_diag`) while it is open, so that a
//! long-lived connection does not hide its bytes until it closes. Each
//! reading adds what is new since the last one; the FINs are taken out by
//! the decoder, an outbound connection's SYN here. Bytes a connection
//! carried before the exporter first saw it (it existed at start-up) are
//! not counted: its first reading is its baseline.

use super::fingerprint::{ByFingerprint, Fingerprint};
use crate::{
    conn::{Counters, Direction},
    geo::Country,
    kernel::events::Extra,
    metrics::Recorder,
};

/// A connection that left ESTABLISHED, waiting for its socket to reach
/// CLOSE.
#[derive(Clone, Copy, Debug)]
struct Closing {
    country: Country,
    direction: Direction,
    netns: u32,
    counted: Counters,
    /// When it left ESTABLISHED, in [`Measures::now`] seconds.
    since: u32,
}

/// The longest a connection may wait for its last reading after it left
/// ESTABLISHED; past it, the reading is taken as lost (an application
/// that never closes its end keeps a socket in `CLOSE_WAIT` for ever).
const CLOSING_MAX_SECONDS: u32 = 3600;

/// Byte accounting.
#[derive(Default)]
struct Bytes {
    /// What was counted of each tracked connection so far.
    counted: ByFingerprint<Counters>,
    /// Connections that left ESTABLISHED, until their last reading.
    closing: ByFingerprint<Closing>,
}

/// The per-connection state of the enabled measures.
pub(crate) struct Measures {
    /// Each tracked connection's open time (kernel ns).
    opened_at: Option<ByFingerprint<u64>>,
    bytes: Option<Bytes>,
    /// The clock of [`Closing::since`].
    started: std::time::Instant,
}

impl Default for Measures {
    fn default() -> Self {
        Self::new(false, false)
    }
}

impl Measures {
    pub(crate) fn new(duration: bool, bytes: bool) -> Self {
        Self {
            opened_at: duration.then(ByFingerprint::default),
            bytes: bytes.then(Bytes::default),
            started: std::time::Instant::now(),
        }
    }

    /// Seconds since these measures started.
    pub(crate) fn now(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// A connection opened (an event: it carried nothing yet, but an
    /// outbound connection's SYN in `bytes_acked`).
    pub(crate) fn opened(&mut self, fp: Fingerprint, direction: Direction, extra: &Extra) {
        if let (Some(opened_at), Some(t)) = (&mut self.opened_at, extra.time_ns) {
            opened_at.insert(fp, t);
        }
        if let Some(bytes) = &mut self.bytes {
            bytes.counted.insert(
                fp,
                Counters {
                    received: 0,
                    acked: u64::from(direction == Direction::Outbound),
                },
            );
        }
    }

    /// A tracked connection left ESTABLISHED.
    pub(crate) fn closed(
        &mut self,
        fp: Fingerprint,
        (country, direction, netns): (Country, Direction, u32),
        extra: &Extra,
        recorder: &mut Recorder,
    ) {
        if let Some(opened_at) = &mut self.opened_at
            && let (Some(open), Some(close)) = (opened_at.remove(&fp), extra.time_ns)
        {
            #[expect(clippy::cast_precision_loss, reason = "nanoseconds to seconds")]
            let seconds = close.saturating_sub(open) as f64 / 1e9;
            recorder.duration(country, direction, seconds);
        }
        let Some(bytes) = &mut self.bytes else {
            return;
        };
        let Some(counted) = bytes.counted.remove(&fp) else {
            return;
        };
        let Some(now) = extra.bytes else {
            return;
        };
        let counted = add(recorder, country, direction, counted, now);
        if !extra.last {
            let since = u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX);
            bytes.closing.insert(
                fp,
                Closing {
                    country,
                    direction,
                    netns,
                    counted,
                    since,
                },
            );
        }
    }

    /// A connection that had left ESTABLISHED reached CLOSE: its last
    /// bytes.
    pub(crate) fn finished(&mut self, fp: Fingerprint, extra: &Extra, recorder: &mut Recorder) {
        if let Some(bytes) = &mut self.bytes
            && let Some(c) = bytes.closing.remove(&fp)
            && let Some(now) = extra.bytes
        {
            add(recorder, c.country, c.direction, c.counted, now);
        }
    }

    /// A tracked connection is forgotten without a close event (a
    /// reconcile found it gone).
    pub(crate) fn forget(&mut self, fp: Fingerprint) {
        if let Some(opened_at) = &mut self.opened_at {
            opened_at.remove(&fp);
        }
        if let Some(bytes) = &mut self.bytes {
            bytes.counted.remove(&fp);
        }
    }

    /// The accounting pass read `now` of a tracked connection: count what
    /// is new, or take it as the baseline of one seen for the first time.
    pub(crate) fn account(
        &mut self,
        fp: Fingerprint,
        country: Country,
        direction: Direction,
        now: Counters,
        recorder: &mut Recorder,
    ) {
        let Some(bytes) = &mut self.bytes else {
            return;
        };
        let counted = match bytes.counted.get(&fp) {
            Some(&before) => add(recorder, country, direction, before, now),
            None => now,
        };
        bytes.counted.insert(fp, counted);
    }

    /// The accounting pass read `now` of a connection it saw ESTABLISHED
    /// that the table no longer tracks: one that closed meanwhile counts
    /// up to that reading (its close event counted further already, so
    /// this adds nothing).
    pub(crate) fn account_closing(
        &mut self,
        fp: Fingerprint,
        now: Counters,
        recorder: &mut Recorder,
    ) {
        if let Some(bytes) = &mut self.bytes
            && let Some(c) = bytes.closing.get_mut(&fp)
        {
            c.counted = add(recorder, c.country, c.direction, c.counted, now);
        }
    }

    /// After an accounting pass requested at [`Self::now`] `began`:
    /// connections that were closing before it and that it did not see
    /// (`keep(fp, netns)` false) are gone, their last reading lost. Those
    /// that started closing while it ran are kept (it could not see
    /// them), and so are those waiting longer than
    /// [`CLOSING_MAX_SECONDS`] dropped.
    pub(crate) fn sweep_closing(&mut self, began: u32, keep: impl Fn(Fingerprint, u32) -> bool) {
        let now = self.now();
        if let Some(bytes) = &mut self.bytes {
            bytes.closing.retain(|fp, c| {
                now.saturating_sub(c.since) <= CLOSING_MAX_SECONDS
                    && (c.since >= began || keep(*fp, c.netns))
            });
        }
    }

    /// Drop connections waiting longer than [`CLOSING_MAX_SECONDS`] for
    /// their last reading (without accounting passes, nothing else does).
    pub(crate) fn expire_closing(&mut self) {
        self.sweep_closing(0, |_, _| true);
    }

    /// Connections waiting for their last reading.
    #[cfg(test)]
    pub(crate) fn closing(&self) -> usize {
        self.bytes.as_ref().map_or(0, |b| b.closing.len())
    }
}

/// Count what `now` has beyond `before`; what is counted now. Counters
/// only grow: a reading below the last one (a reused socket) counts
/// nothing and becomes the new base.
fn add(
    recorder: &mut Recorder,
    country: Country,
    direction: Direction,
    before: Counters,
    now: Counters,
) -> Counters {
    let received = now.received.saturating_sub(before.received);
    let sent = now.acked.saturating_sub(before.acked);
    if received > 0 || sent > 0 {
        recorder.bytes(country, direction, received, sent);
    }
    Counters {
        received: now.received.max(before.received),
        acked: now.acked.max(before.acked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Wanted};

    fn extra(time_ns: Option<u64>, bytes: Option<(u64, u64)>, last: bool) -> Extra {
        Extra {
            time_ns,
            bytes: bytes.map(|(received, acked)| Counters { received, acked }),
            comm: None,
            last,
        }
    }

    fn sample(m: &Metrics, series: &str) -> f64 {
        m.render()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    #[expect(clippy::float_cmp, reason = "sample values, compared exactly")]
    fn each_reading_adds_what_is_new_and_the_last_one_ends_it() {
        let m = Metrics::with_families(
            false,
            Wanted {
                duration: true,
                bytes: true,
                ..Wanted::default()
            },
        )
        .unwrap();
        let mut r = m.recorder();
        let de = Country::from_code("DE");
        let mut ms = Measures::new(true, true);
        let out = Direction::Outbound;
        ms.opened(1, out, &extra(Some(1_000_000_000), None, false));
        // A pass while open: 100 received, 50 sent (+ the SYN).
        ms.account(
            1,
            de,
            out,
            Counters {
                received: 100,
                acked: 51,
            },
            &mut r,
        );
        // It leaves ESTABLISHED: 150 / 80 so far, not yet final.
        ms.closed(
            1,
            (de, out, 7),
            &extra(Some(3_500_000_000), Some((150, 81)), false),
            &mut r,
        );
        assert_eq!(ms.closing(), 1);
        // A pass sees it still closing: kept.
        ms.sweep_closing(ms.now() + 1, |fp, netns| fp == 1 && netns == 7);
        assert_eq!(ms.closing(), 1);
        ms.finished(1, &extra(None, Some((160, 81)), true), &mut r);
        assert_eq!(ms.closing(), 0);
        let labels = r#"{country="DE",direction="outbound"}"#;
        assert_eq!(
            sample(&m, &format!("geoip_received_bytes_total{labels}")),
            160.0
        );
        assert_eq!(sample(&m, &format!("geoip_sent_bytes_total{labels}")), 80.0);
        assert_eq!(
            sample(
                &m,
                &format!("geoip_connection_duration_seconds_sum{labels}")
            ),
            2.5
        );

        // A connection first seen by a pass (it existed at start-up): that
        // reading is its baseline; it has no duration.
        ms.account(
            2,
            de,
            out,
            Counters {
                received: 1000,
                acked: 1000,
            },
            &mut r,
        );
        ms.closed(
            2,
            (de, out, 7),
            &extra(Some(9), Some((1010, 1001)), true),
            &mut r,
        );
        assert_eq!(
            ms.closing(),
            0,
            "closed at once (a reset): nothing to wait for"
        );
        assert_eq!(
            sample(&m, &format!("geoip_received_bytes_total{labels}")),
            170.0
        );
        assert_eq!(sample(&m, &format!("geoip_sent_bytes_total{labels}")), 81.0);
        assert_eq!(
            sample(
                &m,
                &format!("geoip_connection_duration_seconds_count{labels}")
            ),
            1.0
        );

        // A closing connection no pass sees any more is gone.
        ms.opened(3, Direction::Inbound, &extra(None, None, false));
        ms.closed(
            3,
            (de, Direction::Inbound, 7),
            &extra(None, Some((1, 1)), false),
            &mut r,
        );
        // One that started closing during the pass is kept.
        ms.sweep_closing(0, |_, netns| netns != 7);
        assert_eq!(ms.closing(), 1);
        ms.sweep_closing(ms.now() + 1, |_, netns| netns != 7);
        assert_eq!(ms.closing(), 0);
    }
}
