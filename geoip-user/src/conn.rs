//! The vocabulary every stage shares: a connection's identity
//! ([`ConnKey`]), who opened it ([`Direction`]), the process that made it
//! ([`Comm`]), its byte counters ([`Counters`]), and the one form
//! addresses are kept in ([`canonical`]).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr},
};

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Direction {
    /// The remote end connected to this machine.
    Inbound,
    /// This machine connected to the remote end.
    Outbound,
}

impl Direction {
    /// The `direction` label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// A TCP connection's identity: local and remote address (canonical form,
/// see [`canonical`]) and port, and its network namespace. Unique among
/// ESTABLISHED sockets of the host (two containers may well hold the same
/// 4-tuple), and the same whether it came from the kernel program or from
/// `sock_diag`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub(crate) local: u128,
    pub(crate) remote: u128,
    pub(crate) local_port: u16,
    pub(crate) remote_port: u16,
    /// Inode number of the network namespace (0: not told apart).
    pub(crate) netns: u32,
}

impl std::fmt::Debug for ConnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |a: u128, p: u16| std::net::SocketAddr::new(from_canonical(a), p);
        write!(
            f,
            "{} -> {} (netns {})",
            show(self.local, self.local_port),
            show(self.remote, self.remote_port),
            self.netns
        )
    }
}

/// A process name (`comm`), NUL-padded as the kernel keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Comm(pub(crate) [u8; 16]);

impl Comm {
    /// The name, up to its first NUL; `None` when empty. Bytes that are
    /// not UTF-8 are shown as `\xNN` (and a backslash as `\\`), so two
    /// different names never show alike.
    pub(crate) fn name(&self) -> Option<String> {
        let len = self.0.iter().position(|b| *b == 0).unwrap_or(self.0.len());
        if len == 0 {
            return None;
        }
        let mut name = String::with_capacity(len);
        for chunk in self.0[..len].utf8_chunks() {
            name.push_str(&chunk.valid().replace('\\', "\\\\"));
            for byte in chunk.invalid() {
                let _ = write!(name, "\\x{byte:02x}");
            }
        }
        Some(name)
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.name())
    }
}

/// A socket's byte counters, FINs taken out: `received` is the payload
/// received; `acked` the payload the peer acknowledged, still counting an
/// outbound connection's SYN (only the table knows the direction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) received: u64,
    pub(crate) acked: u64,
}

/// An address as the exporter keys it: IPv4 and IPv4-mapped IPv6 both as
/// `::ffff:a.b.c.d`, so the two spellings of one peer are one peer.
#[must_use]
pub(crate) fn canonical(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address back from its canonical form (IPv4 when mapped).
#[must_use]
pub(crate) fn from_canonical(addr: u128) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// For tests: an `IpAddr` literal in canonical form.
#[cfg(test)]
pub(crate) fn ip(s: &str) -> u128 {
    canonical(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(bytes: &[u8]) -> Comm {
        let mut name = [0u8; 16];
        name[..bytes.len()].copy_from_slice(bytes);
        Comm(name)
    }

    /// Names are told apart whatever their bytes: two that are not UTF-8
    /// never both show as U+FFFD, nor like a name that spells the escape.
    #[test]
    fn process_names_are_shown_apart() {
        assert_eq!(comm(b"nginx").name().as_deref(), Some("nginx"));
        assert_eq!(comm(b"").name(), None);
        assert_eq!(comm(b"a\xff").name().as_deref(), Some("a\\xff"));
        assert_eq!(comm(b"a\\xff").name().as_deref(), Some("a\\\\xff"));
        assert_eq!(comm(b"a\xfe").name().as_deref(), Some("a\\xfe"));
        assert_eq!(
            comm("caf\u{e9}".as_bytes()).name().as_deref(),
            Some("caf\u{e9}")
        );
        let full = comm(b"0123456789abcdef");
        assert_eq!(full.name().as_deref(), Some("0123456789abcdef"));
    }
}
