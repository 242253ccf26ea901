//! Entry points for `cargo xtask bench` (feature `bench`); not used by the
//! exporter.

use aya::{Ebpf, EbpfLoader, programs::TracePoint};
pub use geoip_common::{PROGRAM, PROGRAM_ANY_LAYOUT, PROGRAM_EMPTY};
use geoip_common::{TRACEPOINT_CATEGORY, TRACEPOINT_NAME};

use crate::kernel::probe::PROGRAM_OBJECT;

/// The kernel's floor: an empty program (from the exporter's own object)
/// attached to the exporter's tracepoint while it is loaded. Comparing its
/// run time with the exporter's program under the same load shows what the
/// program itself costs. Dropping it detaches it.
pub struct EmptyProgram {
    _ebpf: Ebpf,
}

impl EmptyProgram {
    /// Load and attach the empty program.
    ///
    /// # Errors
    /// Loading or attaching failed (not root, no tracefs).
    pub fn attach() -> Result<Self, String> {
        attach_program(PROGRAM_EMPTY).map(|ebpf| Self { _ebpf: ebpf })
    }
}

/// Load the exporter's kernel object with its default globals and attach
/// the program `name` of it (the kernel's verifier checks it); dropping
/// the result detaches it. For tests of the builds the exporter attaches
/// only on other kernels (`geoip_common::PROGRAM_ANY_LAYOUT`).
///
/// # Errors
/// Loading, verifying or attaching failed.
pub fn attach_program(name: &str) -> Result<Ebpf, String> {
    attach_program_with(name, 0)
}

/// [`attach_program`] with the kernel program's opt-in `features`
/// (`geoip_common::feature`), the byte counters' offsets read from this
/// kernel's BTF.
///
/// # Errors
/// Loading, verifying or attaching failed.
pub fn attach_program_with(name: &str, features: u32) -> Result<Ebpf, String> {
    let tcp = crate::kernel::btf::Btf::from_kernel()
        .and_then(|btf| btf.tcp_layout())
        .map_err(|e| format!("the kernel's BTF: {e}"))?;
    let mut ebpf = EbpfLoader::new()
        .override_global(geoip_common::FEATURES_GLOBAL, &features, true)
        .override_global(geoip_common::TCP_LAYOUT_GLOBAL, &tcp, true)
        .map_max_entries(geoip_common::CONNECTING_MAP, 1024)
        .load(PROGRAM_OBJECT)
        .map_err(|e| format!("loading the kernel object: {e}"))?;
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("no program {name} in the kernel object"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))?;
    program.load().map_err(|e| format!("loading {name}: {e}"))?;
    program
        .attach(TRACEPOINT_CATEGORY, TRACEPOINT_NAME)
        .map_err(|e| format!("attaching {name}: {e}"))?;
    Ok(ebpf)
}

/// A small deterministic generator (xorshift64): the same synthetic
/// events every run.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Where the synthetic connections' remote addresses come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remotes {
    /// 64 addresses, used over and over (a busy server's usual peers).
    Warm,
    /// Every connection a new address, anywhere in the IPv4 space (one in
    /// five IPv6, anywhere in `2000::/3`).
    Cold,
}

/// What one pipeline run measured.
#[derive(Clone, Copy, Debug)]
pub struct PipelineReport {
    /// Events put through (half opens, half closes).
    pub events: usize,
    /// Wall time of the run, on one thread.
    pub seconds: f64,
    /// Connections counted (not excluded) among the opens.
    pub counted: u64,
    /// Connections tracked at the end (the window still open).
    pub tracked: usize,
}

/// `conns` synthetic connections as ring-buffer records, each opened and
/// closed `window` connections later (so about `window` are tracked at
/// any time), in the kernel program's exact record format.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "random bits, and ports below 2^16"
)]
pub fn synthetic_records(remotes: Remotes, conns: usize, window: usize) -> Vec<[u8; 48]> {
    use geoip_common::{
        AF_INET, AF_INET6, ConnEvent, DIRECTION_OUTBOUND, DIRECTION_UNKNOWN, KIND_CLOSE, KIND_OPEN,
        address_words,
    };
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let warm: Vec<u32> = (0..64).map(|_| rng.next() as u32 | 0x0100_0000).collect();
    let local = address_words([10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut opens: Vec<ConnEvent> = Vec::with_capacity(conns);
    for i in 0..conns {
        let (family, daddr) = match remotes {
            Remotes::Warm => {
                let a = warm[i % warm.len()].to_be_bytes();
                (
                    AF_INET,
                    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                )
            }
            Remotes::Cold if i % 5 == 4 => {
                let a = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
                (AF_INET6, a.to_be_bytes())
            }
            Remotes::Cold => {
                let a = (rng.next() as u32).to_be_bytes();
                (
                    AF_INET,
                    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                )
            }
        };
        opens.push(ConnEvent {
            saddr: local,
            daddr: address_words(daddr),
            netns: 4_026_531_840,
            sport: 1024 + (i % 60_000) as u16,
            dport: 443 + (i / 60_000) as u16,
            family,
            kind: KIND_OPEN,
            direction: DIRECTION_OUTBOUND,
            flags: 0,
            _pad: 0,
            _pad2: 0,
        });
    }
    let mut out = Vec::with_capacity(conns * 2);
    for i in 0..conns {
        out.push(bytemuck::cast(opens[i]));
        if i >= window {
            let mut close = opens[i - window];
            close.kind = KIND_CLOSE;
            close.direction = DIRECTION_UNKNOWN;
            out.push(bytemuck::cast(close));
        }
    }
    out
}

/// Put `records` through the exporter's own path — decode, exclusions,
/// connection table, country lookup in the flattened database, metric
/// updates — on this thread, and time it.
///
/// # Errors
/// The database cannot be opened.
pub fn pipeline(
    database: &std::path::Path,
    records: &[[u8; 48]],
) -> Result<PipelineReport, String> {
    let geo = crate::geo::CountryTable::open(database).map_err(|e| e.to_string())?;
    let metrics = crate::metrics::Metrics::new(false).map_err(|e| e.to_string())?;
    let mut tracker = crate::table::Tracker::new(
        crate::exclude::Exclusions::new(&[]),
        geo,
        metrics.recorder(),
    );
    let mut counted = 0;
    let started = std::time::Instant::now();
    for record in records {
        if let Ok(event) = crate::kernel::events::decode(record)
            && tracker.apply(&event) == crate::table::Outcome::Opened
        {
            counted += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(PipelineReport {
        events: records.len(),
        seconds,
        counted,
        tracked: tracker.len(),
    })
}

/// Country lookups of the same addresses three ways, in nanoseconds per
/// lookup, and whether the answers agreed.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Addresses looked up.
    pub addresses: usize,
    /// Distinct among them.
    pub distinct: usize,
    /// The exporter's flattened table.
    pub flattened_ns: f64,
    /// The same, IPv4 addresses alone and IPv6 alone.
    pub flattened_family_ns: (f64, f64),
    /// maxminddb: `Reader::lookup`, then decoding the record's country
    /// fields (the exporter's decoder before the table was flattened:
    /// borrowed strings, every other field skipped).
    pub maxminddb_ns: f64,
    /// maxminddb: `Reader::lookup` alone (the tree walk, no decoding).
    pub maxminddb_tree_ns: f64,
    /// Addresses where the flattened table and maxminddb disagreed.
    pub disagreements: usize,
    /// The first few of them: address, ours, theirs.
    pub examples: Vec<String>,
}

/// The database and the two lookup comparisons.
#[derive(Clone, Debug)]
pub struct LookupReport {
    /// Seconds to open and flatten the database.
    pub open_seconds: f64,
    /// Ranges in the flattened table, IPv4 and IPv6, and its bytes.
    pub ranges: (usize, usize, usize),
    /// Every address new, anywhere (four in five IPv4; IPv6 in `2000::/3`).
    pub cold: Comparison,
    /// The same number of lookups among 10,000 addresses: a server's
    /// recurring peers.
    pub warm: Comparison,
}

/// `n` random addresses, four in five IPv4 (anywhere), the rest IPv6
/// (anywhere in `2000::/3`).
#[expect(clippy::cast_possible_truncation, reason = "random bits")]
fn random_addresses(rng: &mut Xorshift, n: usize) -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    (0..n)
        .map(|i| {
            if i % 5 == 4 {
                let a = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
            }
        })
        .collect()
}

/// `addresses` random addresses (from `seed`), all distinct in practice
/// (cold); as many drawn from a pool of 10,000 (warm); and the pool's
/// size.
fn address_sets(
    seed: u64,
    addresses: usize,
) -> (Vec<std::net::IpAddr>, Vec<std::net::IpAddr>, usize) {
    let mut rng = Xorshift(seed);
    let cold = random_addresses(&mut rng, addresses);
    let pool = random_addresses(&mut rng, 10_000);
    #[expect(clippy::cast_possible_truncation, reason = "an index below 10,000")]
    let warm = (0..addresses)
        .map(|_| pool[(rng.next() % pool.len() as u64) as usize])
        .collect();
    (cold, warm, pool.len())
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn compare(
    geo: &crate::geo::CountryTable,
    reader: &maxminddb::Reader<Vec<u8>>,
    addrs: &[std::net::IpAddr],
    distinct: usize,
) -> Comparison {
    use crate::geo::Country;
    let canonical: Vec<u128> = addrs.iter().map(|a| crate::conn::canonical(*a)).collect();
    let per = |t: std::time::Instant, n: usize| t.elapsed().as_secs_f64() * 1e9 / n.max(1) as f64;

    let t = std::time::Instant::now();
    let ours: Vec<Country> = canonical
        .iter()
        .map(|a| geo.lookup_canonical(*a).unwrap_or(Country::UNKNOWN))
        .collect();
    let flattened_ns = per(t, addrs.len());
    let family_ns = |v4: bool| {
        let some: Vec<u128> = canonical
            .iter()
            .copied()
            .filter(|a| (a >> 32 == 0xffff) == v4)
            .collect();
        let t = std::time::Instant::now();
        for a in &some {
            std::hint::black_box(geo.lookup_canonical(*a).ok());
        }
        per(t, some.len())
    };
    let flattened_family_ns = (family_ns(true), family_ns(false));

    let t = std::time::Instant::now();
    for a in addrs {
        std::hint::black_box(reader.lookup(*a).ok().and_then(|r| r.offset()));
    }
    let maxminddb_tree_ns = per(t, addrs.len());

    let t = std::time::Instant::now();
    let theirs: Vec<Country> = addrs
        .iter()
        .map(|a| {
            reader
                .lookup(*a)
                .and_then(|r| crate::geo::decode_country(&r))
                .unwrap_or(Country::UNKNOWN)
        })
        .collect();
    let maxminddb_ns = per(t, addrs.len());
    let differ: Vec<usize> = (0..addrs.len()).filter(|&i| ours[i] != theirs[i]).collect();
    Comparison {
        addresses: addrs.len(),
        distinct,
        flattened_ns,
        flattened_family_ns,
        maxminddb_ns,
        maxminddb_tree_ns,
        disagreements: differ.len(),
        examples: differ
            .iter()
            .take(5)
            .map(|&i| format!("{} {:?} vs {:?}", addrs[i], ours[i], theirs[i]))
            .collect(),
    }
}

/// Compare the exporter's lookups with the maxminddb crate's on
/// `addresses` random addresses of `database`, cold and warm.
///
/// # Errors
/// The database cannot be opened.
pub fn lookups(database: &std::path::Path, addresses: usize) -> Result<LookupReport, String> {
    let started = std::time::Instant::now();
    let geo = crate::geo::CountryTable::open(database).map_err(|e| e.to_string())?;
    let open_seconds = started.elapsed().as_secs_f64();
    let reader = maxminddb::Reader::open_readfile(database).map_err(|e| e.to_string())?;
    let (cold, warm, pool) = address_sets(0x9e37_79b9_7f4a_7c15, addresses);
    Ok(LookupReport {
        open_seconds,
        ranges: geo.table_size(),
        cold: compare(&geo, &reader, &cold, addresses),
        warm: compare(&geo, &reader, &warm, pool),
    })
}

/// What the city lookup of `--labels city` costs per connection open, on
/// a real database.
#[derive(Debug)]
pub struct CityLookups {
    /// Opening the files (read whole into memory) and checking them.
    pub open_seconds: f64,
    /// Lookups of distinct random addresses (4 in 5 IPv4), and of a pool
    /// of 10,000 looked up again and again: nanoseconds each.
    pub cold_ns: f64,
    pub warm_ns: f64,
    /// The share of the cold lookups that found a city.
    pub answered: f64,
}

/// Time the exporter's city lookups (the maxminddb reader and its cache
/// of decoded records) on the city database of `paths` (one file, or an
/// IPv4 and an IPv6 one).
///
/// # Errors
/// The files cannot be opened as a city database.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
pub fn city_lookups(paths: &[std::path::PathBuf], addresses: usize) -> Result<CityLookups, String> {
    let started = std::time::Instant::now();
    let wants = crate::geo::Wants {
        asn: false,
        city: true,
    };
    let dbs = crate::geo::Databases::open(paths, wants).map_err(|e| e.to_string())?;
    let mut city = dbs.city.ok_or("no city database")?;
    let open_seconds = started.elapsed().as_secs_f64();
    let (cold, warm, _) = address_sets(0x2545_f491_4f6c_dd1d, addresses);
    let mut time = |addrs: &[std::net::IpAddr]| {
        let t = std::time::Instant::now();
        let found = addrs
            .iter()
            .filter(|a| matches!(city.lookup(**a), Ok(Some(_))))
            .count();
        (
            t.elapsed().as_secs_f64() * 1e9 / addrs.len().max(1) as f64,
            found,
        )
    };
    let (cold_ns, found) = time(&cold);
    let (warm_ns, _) = time(&warm);
    Ok(CityLookups {
        open_seconds,
        cold_ns,
        warm_ns,
        answered: found as f64 / cold.len().max(1) as f64,
    })
}
