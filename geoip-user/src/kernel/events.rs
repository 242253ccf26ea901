//! Decoding the kernel's ring-buffer records into connection events.

use std::net::{Ipv4Addr, Ipv6Addr};

use geoip_common::{
    AF_INET, AF_INET6, ConnEvent, ConnEventExt, DIRECTION_INBOUND, DIRECTION_OUTBOUND,
    FLAG_FIN_ACKED, FLAG_FIN_RECEIVED, FLAG_FINAL, KIND_CLOSE, KIND_FINAL, KIND_OPEN,
    address_bytes,
};

use crate::conn::{Comm, ConnKey, Counters, Direction, canonical};

/// What happened to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Open(Direction),
    Close,
    /// A connection that had left ESTABLISHED reached CLOSE: the bytes of
    /// its closing handshake (with `--bytes` only).
    Final,
}

/// What the opt-in kernel features add to an event (all empty without).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    /// The kernel's monotonic time of the event (`CLOCK_MONOTONIC`), in ns.
    pub(crate) time_ns: Option<u64>,
    /// The socket's byte counters (closes).
    pub(crate) bytes: Option<Counters>,
    /// The process that made an outbound connection (opens).
    pub(crate) comm: Option<Comm>,
    /// The socket is gone: its counters are its last.
    pub(crate) last: bool,
}

/// One decoded kernel event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) key: ConnKey,
    pub(crate) change: Change,
    pub(crate) extra: Extra,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("ring buffer record of {len} bytes, expected {expected} or {extended}")]
    Size {
        len: usize,
        expected: usize,
        extended: usize,
    },
    #[error("unknown address family {family}")]
    Family { family: u16 },
    #[error("unknown event kind {kind} with direction {direction}")]
    Kind { kind: u8, direction: u8 },
}

/// Decode one ring-buffer record: a [`ConnEvent`], or a [`ConnEventExt`]
/// when the kernel program runs with features.
pub(crate) fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    if record.len() == size_of::<ConnEventExt>() {
        let ext: ConnEventExt = bytemuck::pod_read_unaligned(record);
        let mut event = from_raw(&ext.base)?;
        let flags = ext.base.flags;
        let fin = |flag: u8| u64::from(flags & flag != 0);
        event.extra = Extra {
            time_ns: (ext.time_ns != 0).then_some(ext.time_ns),
            bytes: (ext.bytes_received | ext.bytes_acked != 0
                || flags & (FLAG_FIN_RECEIVED | FLAG_FIN_ACKED) != 0)
                .then(|| Counters {
                    received: ext.bytes_received.saturating_sub(fin(FLAG_FIN_RECEIVED)),
                    acked: ext.bytes_acked.saturating_sub(fin(FLAG_FIN_ACKED)),
                }),
            comm: (ext.comm != [0; 2]).then(|| Comm(address_bytes(ext.comm))),
            last: flags & FLAG_FINAL != 0,
        };
        return Ok(event);
    }
    let raw: ConnEvent =
        bytemuck::try_pod_read_unaligned(record).map_err(|_| DecodeError::Size {
            len: record.len(),
            expected: size_of::<ConnEvent>(),
            extended: size_of::<ConnEventExt>(),
        })?;
    from_raw(&raw)
}

fn from_raw(raw: &ConnEvent) -> Result<Event, DecodeError> {
    let addr = |words: &[u64; 2]| -> Result<u128, DecodeError> {
        let bytes = address_bytes(*words);
        match raw.family {
            AF_INET => Ok(canonical(
                Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
            )),
            AF_INET6 => Ok(canonical(Ipv6Addr::from(bytes).into())),
            family => Err(DecodeError::Family { family }),
        }
    };
    let change = match (raw.kind, raw.direction) {
        (KIND_OPEN, DIRECTION_INBOUND) => Change::Open(Direction::Inbound),
        (KIND_OPEN, DIRECTION_OUTBOUND) => Change::Open(Direction::Outbound),
        (KIND_CLOSE, _) => Change::Close,
        (KIND_FINAL, _) => Change::Final,
        (kind, direction) => return Err(DecodeError::Kind { kind, direction }),
    };
    Ok(Event {
        key: ConnKey {
            local: addr(&raw.saddr)?,
            remote: addr(&raw.daddr)?,
            local_port: raw.sport,
            remote_port: raw.dport,
            netns: raw.netns,
        },
        change,
        extra: Extra {
            last: raw.flags & FLAG_FINAL != 0,
            ..Extra::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use geoip_common::{DIRECTION_UNKNOWN, address_words, classify, tcp_state};

    use super::*;
    use crate::conn::ip;

    fn raw(family: u16, s: [u8; 16], d: [u8; 16], old: i32, new: i32) -> Option<ConnEvent> {
        let (kind, direction) = classify(old, new)?;
        Some(ConnEvent {
            saddr: address_words(s),
            daddr: address_words(d),
            netns: 4_026_531_840,
            sport: 40000,
            dport: 443,
            family,
            kind,
            direction,
            flags: 0,
            _pad: 0,
            _pad2: 0,
        })
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    #[test]
    fn only_established_transitions_matter() {
        use tcp_state::*;
        assert_eq!(
            classify(SYN_SENT, ESTABLISHED),
            Some((KIND_OPEN, DIRECTION_OUTBOUND))
        );
        assert_eq!(
            classify(SYN_RECV, ESTABLISHED),
            Some((KIND_OPEN, DIRECTION_INBOUND))
        );
        for next in [FIN_WAIT1, CLOSE_WAIT, CLOSE, LAST_ACK, CLOSING, TIME_WAIT] {
            assert_eq!(
                classify(ESTABLISHED, next),
                Some((KIND_CLOSE, DIRECTION_UNKNOWN))
            );
        }
        for (old, new) in [
            (CLOSE, SYN_SENT),
            (LISTEN, SYN_RECV),
            (CLOSE, LISTEN),
            (SYN_SENT, CLOSE),
            (SYN_RECV, CLOSE),
            (FIN_WAIT1, FIN_WAIT2),
            (FIN_WAIT2, TIME_WAIT),
            (CLOSE_WAIT, LAST_ACK),
            (LAST_ACK, CLOSE),
            (NEW_SYN_RECV, ESTABLISHED),
            (CLOSE, ESTABLISHED),
        ] {
            assert_eq!(classify(old, new), None, "{old} -> {new}");
        }
    }

    #[test]
    fn decodes_ipv4_open() {
        let r = raw(
            AF_INET,
            v4([10, 0, 0, 1]),
            v4([203, 0, 113, 9]),
            tcp_state::SYN_SENT,
            tcp_state::ESTABLISHED,
        )
        .unwrap();
        let e = decode(bytemuck::bytes_of(&r)).unwrap();
        assert_eq!(e.change, Change::Open(Direction::Outbound));
        assert_eq!(e.key.local, ip("10.0.0.1"));
        assert_eq!(e.key.remote, ip("203.0.113.9"));
        assert_eq!((e.key.local_port, e.key.remote_port), (40000, 443));
        assert_eq!(e.key.netns, 4_026_531_840);
    }

    #[test]
    fn decodes_ipv6_and_mapped_close() {
        let s: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d: Ipv6Addr = "::ffff:198.51.100.7".parse().unwrap();
        let r = raw(
            AF_INET6,
            s.octets(),
            d.octets(),
            tcp_state::ESTABLISHED,
            tcp_state::CLOSE_WAIT,
        )
        .unwrap();
        let e = decode(bytemuck::bytes_of(&r)).unwrap();
        assert_eq!(e.change, Change::Close);
        assert_eq!(e.key.remote, ip("198.51.100.7"), "mapped is IPv4");
        assert_eq!(e.key.local, ip("2001:db8::1"));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(
            decode(&[0; 10]),
            Err(DecodeError::Size {
                len: 10,
                expected: 48,
                extended: 88
            })
        );
        let mut r = raw(AF_INET, v4([1; 4]), v4([2; 4]), 2, 1).unwrap();
        r.family = 1;
        assert_eq!(
            decode(bytemuck::bytes_of(&r)),
            Err(DecodeError::Family { family: 1 })
        );
        r.family = AF_INET;
        r.kind = 9;
        assert!(matches!(
            decode(bytemuck::bytes_of(&r)),
            Err(DecodeError::Kind { .. })
        ));
    }
}
