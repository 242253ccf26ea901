//! What is not "the world": address ranges whose connections are never
//! counted (loopback, private, link-local, ... and the user's `--exclude`).

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

/// Ranges excluded whatever the flags say, with the reason shown in `--help`.
pub(crate) const BUILTIN: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified / this network"),
    ("10.0.0.0/8", "RFC 1918 private"),
    ("100.64.0.0/10", "CGNAT shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "RFC 1918 private"),
    ("192.168.0.0/16", "RFC 1918 private"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "unique local (ULA)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// An IPv4 or IPv6 network, stored as IPv6 (IPv4 as `::ffff:a.b.c.d/96+len`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: u128,
    prefix: u8,
    v4: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CidrError {
    #[error(
        "invalid CIDR {value:?}: expected ADDRESS/PREFIX such as 203.0.113.0/24 or 2001:db8::/32"
    )]
    Syntax { value: String },
    #[error("invalid CIDR {value:?}: prefix length {prefix} is longer than {max} bits")]
    PrefixTooLong { value: String, prefix: u8, max: u8 },
    #[error("invalid CIDR {value:?}: host bits are set; did you mean {suggestion}?")]
    HostBits { value: String, suggestion: String },
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax {
            value: value.to_owned(),
        };
        let (addr, prefix) = match value.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| syntax())?,
            None => max,
        };
        if prefix > max {
            return Err(CidrError::PrefixTooLong {
                value: value.to_owned(),
                prefix,
                max,
            });
        }
        let cidr = match addr {
            IpAddr::V4(a) => Self {
                network: u128::from(a.to_ipv6_mapped()),
                prefix: 96 + prefix,
                v4: true,
            },
            IpAddr::V6(a) => Self {
                network: u128::from(a),
                prefix,
                v4: false,
            },
        };
        if cidr.network & !cidr.mask() != 0 {
            let fixed = Self {
                network: cidr.network & cidr.mask(),
                ..cidr
            };
            return Err(CidrError::HostBits {
                value: value.to_owned(),
                suggestion: fixed.to_string(),
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = Ipv6Addr::from(self.network);
        match (self.v4, addr.to_ipv4_mapped()) {
            (true, Some(v4)) => write!(f, "{v4}/{}", self.prefix - 96),
            _ => write!(f, "{addr}/{}", self.prefix),
        }
    }
}

impl Cidr {
    const fn mask(&self) -> u128 {
        match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - p),
        }
    }

    /// `(address family, prefix length, address bytes)` as the kernel's
    /// interfaces take a network: IPv4 as 4 bytes.
    pub(crate) fn parts(&self) -> (i32, u8, Vec<u8>) {
        let bytes = self.network.to_be_bytes();
        if self.v4 {
            (libc::AF_INET, self.prefix - 96, bytes[12..].to_vec())
        } else {
            (libc::AF_INET6, self.prefix, bytes.to_vec())
        }
    }

    /// Whether `addr` (in the canonical form of [`crate::conn::canonical`]) is inside.
    pub(crate) const fn contains(&self, addr: u128) -> bool {
        addr & self.mask() == self.network
    }
}

/// The built-in ranges plus the user's, checked in order.
#[derive(Clone, Debug)]
pub(crate) struct Exclusions {
    ranges: Vec<Cidr>,
}

impl Exclusions {
    /// Built-in ranges followed by `extra`.
    pub(crate) fn new(extra: &[Cidr]) -> Self {
        let mut ranges: Vec<Cidr> = BUILTIN
            .iter()
            .filter_map(|(cidr, _)| cidr.parse().ok())
            .collect();
        ranges.extend_from_slice(extra);
        // Widest first: most excluded traffic is private or loopback.
        ranges.sort_by_key(|c| c.prefix);
        ranges.dedup();
        Self { ranges }
    }

    /// Every excluded range.
    pub(crate) fn ranges(&self) -> &[Cidr] {
        &self.ranges
    }

    /// Whether connections with this remote address (canonical form) are
    /// left out of every count.
    pub(crate) fn excludes(&self, addr: u128) -> bool {
        self.ranges.iter().any(|c| c.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{canonical, from_canonical, ip};

    fn excl(extra: &[&str]) -> Exclusions {
        let extra: Vec<Cidr> = extra.iter().map(|c| c.parse().unwrap()).collect();
        Exclusions::new(&extra)
    }

    #[test]
    fn builtin_ranges_parse() {
        for (cidr, _) in BUILTIN {
            assert!(cidr.parse::<Cidr>().is_ok(), "{cidr}");
        }
        assert_eq!(Exclusions::new(&[]).ranges.len(), BUILTIN.len());
    }

    /// The kernel program's own check (`geoip_common::always_excluded_*`)
    /// drops exactly the built-in ranges: at every range's edges, just
    /// outside them, and at many addresses between.
    #[test]
    fn the_kernel_check_matches_the_builtin_list() {
        let builtin = excl(&[]);
        let kernel = |a: u128| {
            let v6 = Ipv6Addr::from(a);
            match v6.to_ipv4_mapped() {
                Some(v4) => geoip_common::always_excluded_v4(v4.octets()),
                None => geoip_common::always_excluded_v6(v6.octets()),
            }
        };
        let mut probes: Vec<u128> = Vec::new();
        for c in &builtin.ranges {
            let size = if c.prefix == 0 { u128::MAX } else { !c.mask() };
            for a in [c.network, c.network | size] {
                probes.extend([a, a.wrapping_sub(1), a.wrapping_add(1)]);
            }
        }
        // A walk over both spaces.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            probes.push(canonical(IpAddr::from(std::net::Ipv4Addr::from(
                u32::try_from(x >> 32).unwrap(),
            ))));
            probes.push(u128::from(x) << 64 | u128::from(x.rotate_left(17)));
        }
        for a in probes {
            assert_eq!(kernel(a), builtin.excludes(a), "{}", Ipv6Addr::from(a));
        }
    }

    #[test]
    fn ipv4_private_and_special_are_excluded() {
        let e = excl(&[]);
        for a in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
        ] {
            assert!(e.excludes(ip(a)), "{a} should be excluded");
        }
        for a in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.2.10",
            "203.0.113.7",
            "198.51.100.1",
            "223.255.255.255",
        ] {
            assert!(!e.excludes(ip(a)), "{a} should count");
        }
    }

    #[test]
    fn ipv6_special_are_excluded() {
        let e = excl(&[]);
        for a in ["::", "::1", "fd00::1", "fc12::1", "fe80::1", "ff02::1"] {
            assert!(e.excludes(ip(a)), "{a} should be excluded");
        }
        for a in ["2001:db8::1", "2606:4700::1111", "fec0::1"] {
            assert!(!e.excludes(ip(a)), "{a} should count");
        }
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let e = excl(&["203.0.113.0/24"]);
        assert!(e.excludes(ip("::ffff:10.0.0.1")));
        assert!(e.excludes(ip("::ffff:127.0.0.1")));
        assert!(e.excludes(ip("::ffff:203.0.113.9")));
        assert!(!e.excludes(ip("::ffff:198.51.100.9")));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_eq!(
            from_canonical(ip("::ffff:192.0.2.1")),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn user_ranges_ipv4_and_ipv6() {
        let e = excl(&["198.51.100.0/24", "2001:db8:dead::/48", "192.0.2.5"]);
        assert!(e.excludes(ip("198.51.100.200")));
        assert!(!e.excludes(ip("198.51.101.1")));
        assert!(e.excludes(ip("2001:db8:dead:1::1")));
        assert!(!e.excludes(ip("2001:db8:beef::1")));
        assert!(e.excludes(ip("192.0.2.5")));
        assert!(!e.excludes(ip("192.0.2.6")));
        // An IPv4 range never matches an IPv6 address outside ::ffff:0:0/96.
        let all_v4 = excl(&["0.0.0.0/0"]);
        assert!(all_v4.excludes(ip("8.8.8.8")));
        assert!(!all_v4.excludes(ip("2001:db8::8")));
    }

    #[test]
    fn bad_cidrs_name_the_value() {
        let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid CIDR \"10.0.0.0/33\": prefix length 33 is longer than 32 bits"
        );
        let err = "banana".parse::<Cidr>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid CIDR \"banana\": expected")
        );
        let err = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid CIDR \"10.0.0.1/8\": host bits are set; did you mean 10.0.0.0/8?"
        );
        let err = "2001:db8::1/32".parse::<Cidr>().unwrap_err();
        assert!(
            err.to_string().ends_with("did you mean 2001:db8::/32?"),
            "{err}"
        );
        assert!("1.2.3.4/x".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "203.0.113.0/24",
            "2001:db8::/32",
            "0.0.0.0/0",
            "::/0",
            "1.2.3.4/32",
        ] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), s);
        }
    }
}
