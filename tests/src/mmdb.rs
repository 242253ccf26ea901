//! A small writer for `MaxMind` DB (format v2) files, used to build test databases.
//!
//! Format: <https://maxmind.github.io/MaxMind-DB/>. The file is a binary search
//! tree over address bits, 16 zero bytes, a data section and a metadata map.
//! This writer never emits pointers; identical values are stored once.

use std::{
    collections::HashMap,
    error::Error,
    fmt, fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
const DATA_SECTION_SEPARATOR: usize = 16;
/// Largest size a control byte can express (31 => three extra bytes + 65 821).
const MAX_SIZE: usize = 65_821 + 0xFF_FFFF;
/// `::ffff:0:0`, the IPv4-mapped prefix aliased to the IPv4 subtree (`::/96`).
const IPV4_MAPPED: u128 = 0xffff << 32;

/// A value in the data section, one variant per MMDB data type (pointers excluded).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// UTF-8 string (type 2).
    Str(String),
    /// Unsigned 16-bit integer (type 5).
    U16(u16),
    /// Unsigned 32-bit integer (type 6).
    U32(u32),
    /// Unsigned 64-bit integer (type 9).
    U64(u64),
    /// Unsigned 128-bit integer (type 10).
    U128(u128),
    /// Signed 32-bit integer (type 8).
    I32(i32),
    /// IEEE 754 double (type 3).
    Double(f64),
    /// IEEE 754 single (type 15).
    Float(f32),
    /// Boolean (type 14).
    Bool(bool),
    /// Raw bytes (type 4).
    Bytes(Vec<u8>),
    /// Array (type 11).
    Array(Vec<Value>),
    /// Map with string keys, encoded in the given order (type 7).
    Map(Vec<(String, Value)>),
}

impl Value {
    /// A [`Value::Str`].
    pub fn str(s: impl Into<String>) -> Self {
        Self::Str(s.into())
    }

    /// A [`Value::Map`] from `(key, value)` pairs, e.g. `Value::map([("iso_code", Value::str("DE"))])`.
    pub fn map<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    /// The value as the data section holds it.
    ///
    /// # Errors
    ///
    /// [`WriteError`] for a value too large for the format.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), WriteError> {
        match self {
            Self::Str(s) => encode_str(out, s)?,
            Self::Double(d) => {
                header(out, 3, 8)?;
                out.extend_from_slice(&d.to_be_bytes());
            }
            Self::Bytes(b) => {
                header(out, 4, b.len())?;
                out.extend_from_slice(b);
            }
            Self::U16(n) => encode_uint(out, 5, (*n).into())?,
            Self::U32(n) => encode_uint(out, 6, (*n).into())?,
            Self::Map(entries) => {
                header(out, 7, entries.len())?;
                for (key, value) in entries {
                    encode_str(out, key)?;
                    value.encode(out)?;
                }
            }
            // Negative values need all four bytes; non-negative ones drop leading zeros.
            Self::I32(n) if *n < 0 => {
                header(out, 8, 4)?;
                out.extend_from_slice(&n.to_be_bytes());
            }
            Self::I32(n) => encode_uint(out, 8, n.unsigned_abs().into())?,
            Self::U64(n) => encode_uint(out, 9, (*n).into())?,
            Self::U128(n) => encode_uint(out, 10, *n)?,
            Self::Array(items) => {
                header(out, 11, items.len())?;
                for item in items {
                    item.encode(out)?;
                }
            }
            Self::Bool(b) => header(out, 14, usize::from(*b))?,
            Self::Float(f) => {
                header(out, 15, 4)?;
                out.extend_from_slice(&f.to_be_bytes());
            }
        }
        Ok(())
    }
}

/// Writes a control byte (plus extended-type and size bytes) for `type_num` and `size`.
fn header(out: &mut Vec<u8>, type_num: u8, size: usize) -> Result<(), WriteError> {
    let (size_bits, extra, rest) = match size {
        0..29 => (size, 0, 0),
        29..285 => (29, 1, size - 29),
        285..65_821 => (30, 2, size - 285),
        65_821..=MAX_SIZE => (31, 3, size - 65_821),
        _ => return Err(WriteError::TooLarge(size)),
    };
    #[expect(clippy::cast_possible_truncation, reason = "size_bits < 32")]
    let size_bits = size_bits as u8;
    if type_num <= 7 {
        out.push(type_num << 5 | size_bits);
    } else {
        out.extend_from_slice(&[size_bits, type_num - 7]);
    }
    out.extend_from_slice(&rest.to_be_bytes()[size_of::<usize>() - extra..]);
    Ok(())
}

fn encode_str(out: &mut Vec<u8>, s: &str) -> Result<(), WriteError> {
    header(out, 2, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Big-endian with leading zero bytes dropped; the size is the number of bytes left.
fn encode_uint(out: &mut Vec<u8>, type_num: u8, n: u128) -> Result<(), WriteError> {
    let bytes = n.to_be_bytes();
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    header(out, type_num, bytes.len() - zeros)?;
    out.extend_from_slice(&bytes[zeros..]);
    Ok(())
}

/// Why a database could not be built or written.
#[derive(Debug)]
pub enum WriteError {
    /// A network that cannot be inserted, with the reason.
    Network {
        /// The network as passed to [`Writer::insert`].
        cidr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A string, byte string, map or array longer than the format allows.
    TooLarge(usize),
    /// A record size other than 24, 28 or 32.
    RecordSize(u16),
    /// An IP version other than 4 or 6.
    IpVersion(u16),
    /// A search tree record value that does not fit in the record size.
    RecordOverflow {
        /// The record value.
        value: u64,
        /// The record size in bits.
        record_size: u16,
    },
    /// Writing the file failed.
    Io {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network { cidr, reason } => write!(f, "invalid network {cidr:?}: {reason}"),
            Self::TooLarge(size) => {
                write!(f, "value of size {size} exceeds the maximum {MAX_SIZE}")
            }
            Self::RecordSize(bits) => write!(f, "record size {bits} is not 24, 28 or 32"),
            Self::IpVersion(version) => write!(f, "IP version {version} is not 4 or 6"),
            Self::RecordOverflow { value, record_size } => {
                write!(f, "record value {value} does not fit in {record_size} bits")
            }
            Self::Io { path, source } => write!(f, "writing {}: {source}", path.display()),
        }
    }
}

impl Error for WriteError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A search tree record: a child node, no data, or a value with the prefix
/// length of the network it was inserted for.
#[derive(Debug, Clone, Copy)]
enum Record {
    Empty,
    Node(usize),
    Data { id: usize, prefix: u8 },
}

/// Builds a `MaxMind` DB in memory; see [`Writer::insert`] and [`Writer::write`].
#[derive(Debug, Clone)]
pub struct Writer {
    database_type: String,
    ip_version: u16,
    record_size: u16,
    build_epoch: u64,
    /// Search tree nodes; node 0 is the root.
    nodes: Vec<[Record; 2]>,
    /// Distinct encoded values, indexed by `Record::Data::id`.
    data: Vec<Vec<u8>>,
    data_ids: HashMap<Vec<u8>, usize>,
}

impl Writer {
    /// An empty database of the given type for IP version 4 or 6, with 28-bit
    /// records, languages `["en"]`, build epoch 0 and description `{"en": database_type}`.
    #[must_use]
    pub fn new(database_type: &str, ip_version: u16) -> Self {
        Self {
            database_type: database_type.to_owned(),
            ip_version,
            record_size: 28,
            build_epoch: 0,
            nodes: vec![[Record::Empty; 2]],
            data: Vec::new(),
            data_ids: HashMap::new(),
        }
    }

    /// Sets the record size in bits (24, 28 or 32; others fail in [`Writer::to_bytes`]).
    #[must_use]
    pub fn record_size(self, bits: u16) -> Self {
        Self {
            record_size: bits,
            ..self
        }
    }

    /// Sets the metadata's `build_epoch` (seconds since the Unix epoch).
    #[must_use]
    pub fn build_epoch(self, secs: u64) -> Self {
        Self {
            build_epoch: secs,
            ..self
        }
    }

    /// Maps `cidr` (`"192.0.2.0/24"`, `"2001:db8::/32"`, or a bare address for a
    /// single host) to `value`. A network overrides the parts of earlier, less or
    /// equally specific networks it covers, but not earlier more specific ones.
    /// In an IPv6 database IPv4 networks are stored at `::a.b.c.d` and are also
    /// reachable through `::ffff:a.b.c.d`. Readers report the network of the
    /// tree leaf, so a network split by a more specific one shows up in pieces.
    ///
    /// # Errors
    ///
    /// [`WriteError::Network`] if `cidr` does not parse, has host bits set, is
    /// IPv6 in an IPv4 database or lies in the aliased `::ffff:0:0/96`;
    /// [`WriteError::IpVersion`] for a bad IP version; [`WriteError::TooLarge`]
    /// if `value` cannot be encoded.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "owned values read naturally at call sites"
    )]
    pub fn insert(&mut self, cidr: &str, value: Value) -> Result<(), WriteError> {
        let (addr, prefix) = self.parse_network(cidr)?;
        let mut encoded = Vec::new();
        value.encode(&mut encoded)?;
        let data = &mut self.data;
        let id = *self.data_ids.entry(encoded).or_insert_with_key(|bytes| {
            data.push(bytes.clone());
            data.len() - 1
        });
        if prefix == 0 {
            fill(&mut self.nodes, Record::Node(0), id, 0);
        } else {
            let width = self.width()?;
            let node = descend(&mut self.nodes, addr, width, prefix - 1);
            let side = bit(addr, width, prefix - 1);
            let record = self.nodes[node][side];
            self.nodes[node][side] = fill(&mut self.nodes, record, id, prefix);
        }
        Ok(())
    }

    /// The largest value a record holds.
    fn max_record(&self) -> Result<u64, WriteError> {
        match self.record_size {
            24 | 28 | 32 => Ok((1_u64 << self.record_size) - 1),
            bits => Err(WriteError::RecordSize(bits)),
        }
    }

    /// Serializes the database.
    ///
    /// # Errors
    ///
    /// [`WriteError::RecordSize`] or [`WriteError::IpVersion`] for bad settings,
    /// [`WriteError::RecordOverflow`] if the tree or data section is too large
    /// for the record size.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        self.max_record()?;
        let mut nodes = self.nodes.clone();
        if self.width()? == 128 {
            // Point the record for ::ffff:0:0/96 at the node for ::/96.
            let ipv4_root = descend(&mut nodes, 0, 128, 96);
            let parent = descend(&mut nodes, IPV4_MAPPED, 128, 95);
            nodes[parent][1] = Record::Node(ipv4_root);
        }

        // Number the reachable nodes breadth first and lay out the values they use.
        let mut order = vec![0];
        let mut number = vec![None; nodes.len()];
        number[0] = Some(0);
        let mut offsets = vec![None; self.data.len()];
        let mut data_section = Vec::new();
        let mut i = 0;
        while let Some(&node) = order.get(i) {
            i += 1;
            for record in nodes[node] {
                match record {
                    Record::Node(child) if number[child].is_none() => {
                        number[child] = Some(order.len());
                        order.push(child);
                    }
                    Record::Data { id, .. } if offsets[id].is_none() => {
                        offsets[id] = Some(data_section.len());
                        data_section.extend_from_slice(&self.data[id]);
                    }
                    _ => {}
                }
            }
        }

        let node_count = order.len();
        let record_value = |record: Record| {
            (match record {
                Record::Empty => node_count,
                Record::Node(child) => number[child].unwrap_or_default(),
                Record::Data { id, .. } => {
                    node_count + DATA_SECTION_SEPARATOR + offsets[id].unwrap_or_default()
                }
            }) as u64
        };
        let records: Vec<(u64, u64)> = order
            .iter()
            .map(|&node| (record_value(nodes[node][0]), record_value(nodes[node][1])))
            .collect();
        self.layout(&records, &data_section)
    }

    /// The file of a search tree whose node `i` has the records
    /// `records[i]` (numbers as the format stores them: below the node
    /// count a node, the node count no data, above it data at that number
    /// less the node count and 16), followed by `data_section`.
    ///
    /// # Errors
    ///
    /// [`WriteError::RecordSize`] for a bad record size,
    /// [`WriteError::RecordOverflow`] for a record or node count the
    /// record size cannot hold.
    pub fn layout(
        &self,
        records: &[(u64, u64)],
        data_section: &[u8],
    ) -> Result<Vec<u8>, WriteError> {
        let max_record = self.max_record()?;
        let overflow = |value| WriteError::RecordOverflow {
            value,
            record_size: self.record_size,
        };
        let node_bytes = usize::from(self.record_size / 4);
        let mut out = Vec::with_capacity(records.len() * node_bytes + data_section.len() + 256);
        for &(left, right) in records {
            for value in [left, right] {
                if value > max_record {
                    return Err(overflow(value));
                }
            }
            // For 28 bits the left record's top nibble sits above the right record.
            let both = match self.record_size {
                28 => (left & 0xFF_FFFF) << 32 | (left >> 24) << 28 | right,
                bits => left << bits | right,
            };
            out.extend_from_slice(&both.to_be_bytes()[8 - node_bytes..]);
        }
        out.extend_from_slice(&[0; DATA_SECTION_SEPARATOR]);
        out.extend_from_slice(data_section);
        out.extend_from_slice(METADATA_MARKER);
        let node_count =
            u32::try_from(records.len()).map_err(|_| overflow(records.len() as u64))?;
        let metadata = Value::map([
            ("node_count", Value::U32(node_count)),
            ("record_size", Value::U16(self.record_size)),
            ("ip_version", Value::U16(self.ip_version)),
            ("database_type", Value::str(&self.database_type)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            (
                "description",
                Value::map([("en", Value::str(&self.database_type))]),
            ),
        ]);
        metadata.encode(&mut out)?;
        Ok(out)
    }

    /// Writes the database to `path` through a temporary file in the same
    /// directory and a rename, so readers never see a partial file.
    ///
    /// # Errors
    ///
    /// Anything [`Writer::to_bytes`] returns, or [`WriteError::Io`].
    pub fn write(&self, path: &Path) -> Result<(), WriteError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let bytes = self.to_bytes()?;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        name.push(format!(".{}-{unique}.tmp", std::process::id()));
        let tmp = path.with_file_name(name);
        fs::write(&tmp, bytes)
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|source| {
                let _ = fs::remove_file(&tmp);
                WriteError::Io {
                    path: path.to_owned(),
                    source,
                }
            })
    }

    /// Number of address bits in the tree.
    fn width(&self) -> Result<u8, WriteError> {
        match self.ip_version {
            4 => Ok(32),
            6 => Ok(128),
            version => Err(WriteError::IpVersion(version)),
        }
    }

    /// Parses `cidr` into tree address bits and prefix length.
    fn parse_network(&self, cidr: &str) -> Result<(u128, u8), WriteError> {
        let err = |reason: &str| WriteError::Network {
            cidr: cidr.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = match cidr.split_once('/') {
            Some((addr, prefix)) => (
                addr,
                Some(prefix.parse::<u8>().map_err(|_| err("bad prefix length"))?),
            ),
            None => (cidr, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("bad address"))?;
        let width = self.width()?;
        let (addr, len) = match addr {
            IpAddr::V4(v4) => (u128::from(v4.to_bits()), 32),
            IpAddr::V6(_) if width == 32 => return Err(err("IPv6 network in an IPv4 database")),
            IpAddr::V6(v6) => (v6.to_bits(), 128),
        };
        let prefix = match prefix.unwrap_or(len) {
            prefix if prefix > len => return Err(err(&format!("prefix longer than {len}"))),
            prefix => width - len + prefix,
        };
        if addr & (u128::MAX.checked_shr(prefix.into()).unwrap_or(0) >> (128 - width)) != 0 {
            return Err(err("host bits set"));
        }
        if width == 128 && prefix >= 96 && addr >> 32 == IPV4_MAPPED >> 32 {
            return Err(err(
                "inside ::ffff:0:0/96, which aliases the IPv4 networks; insert the IPv4 network",
            ));
        }
        Ok((addr, prefix))
    }
}

/// Bit `i` (0 = most significant) of a `width`-bit address.
fn bit(addr: u128, width: u8, i: u8) -> usize {
    usize::from(addr >> (width - 1 - i) & 1 == 1)
}

/// Follows `addr` for `depth` bits from the root, splitting leaves into nodes
/// with two copies of the leaf on the way, and returns the node reached.
fn descend(nodes: &mut Vec<[Record; 2]>, addr: u128, width: u8, depth: u8) -> usize {
    let mut node = 0;
    for i in 0..depth {
        let side = bit(addr, width, i);
        node = match nodes[node][side] {
            Record::Node(child) => child,
            leaf => {
                nodes.push([leaf; 2]);
                nodes[node][side] = Record::Node(nodes.len() - 1);
                nodes.len() - 1
            }
        };
    }
    node
}

/// Returns `record` with value `id` of a /`prefix` network stored in every leaf
/// below it that is empty or holds a less or equally specific network.
fn fill(nodes: &mut [[Record; 2]], record: Record, id: usize, prefix: u8) -> Record {
    match record {
        Record::Node(node) => {
            for side in 0..2 {
                let child = nodes[node][side];
                nodes[node][side] = fill(nodes, child, id, prefix);
            }
            record
        }
        Record::Data {
            prefix: existing, ..
        } if existing > prefix => record,
        _ => Record::Data { id, prefix },
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use maxminddb::Reader;
    use serde::Deserialize;

    use super::{MAX_SIZE, Value, WriteError, Writer};

    fn reader(writer: &Writer) -> Reader<Vec<u8>> {
        let reader = Reader::from_source(writer.to_bytes().unwrap()).unwrap();
        reader.verify().unwrap();
        reader
    }

    /// The value stored for `addr`, if any.
    fn get<'a, T: Deserialize<'a>>(reader: &'a Reader<Vec<u8>>, addr: &str) -> Option<T> {
        let addr: IpAddr = addr.parse().unwrap();
        reader.lookup(addr).unwrap().decode().unwrap()
    }

    /// The string stored for `addr` and the network the reader reports: the
    /// tree leaf, which is only part of an inserted network that a more
    /// specific one was inserted into.
    fn lookup(reader: &Reader<Vec<u8>>, addr: &str) -> (Option<String>, String) {
        let result = reader.lookup(addr.parse().unwrap()).unwrap();
        let network = result.network().unwrap().to_string();
        (result.decode().unwrap(), network)
    }

    fn found(value: &str, network: &str) -> (Option<String>, String) {
        (Some(value.to_owned()), network.to_owned())
    }

    #[test]
    fn round_trips_for_every_record_size_and_ip_version() {
        for (record_size, ip_version) in [(24, 4), (28, 4), (32, 4), (24, 6), (28, 6), (32, 6)] {
            let mut writer = Writer::new("Test-DB", ip_version)
                .record_size(record_size)
                .build_epoch(1_700_000_000);
            writer.insert("10.0.0.0/8", Value::str("ten")).unwrap();
            writer.insert("192.0.2.1", Value::str("host")).unwrap();
            writer.insert("0.0.0.0/1", Value::str("low half")).unwrap();
            if ip_version == 6 {
                writer.insert("2001:db8::/32", Value::str("doc")).unwrap();
            }
            let reader = reader(&writer);
            let meta = reader.metadata();
            let versions = (
                meta.binary_format_major_version,
                meta.binary_format_minor_version,
            );
            assert_eq!(
                (meta.record_size, meta.ip_version, versions),
                (record_size, ip_version, (2, 0))
            );
            assert_eq!(
                (&*meta.database_type, meta.build_epoch),
                ("Test-DB", 1_700_000_000)
            );
            assert_eq!(
                (meta.languages.clone(), &*meta.description["en"]),
                (vec!["en".to_owned()], "Test-DB")
            );
            assert_eq!(lookup(&reader, "10.1.2.3"), found("ten", "10.0.0.0/8"));
            assert_eq!(lookup(&reader, "192.0.2.1"), found("host", "192.0.2.1/32"));
            assert_eq!(lookup(&reader, "64.0.0.1"), found("low half", "64.0.0.0/2"));
            assert_eq!(
                lookup(&reader, "192.0.2.2"),
                (None, "192.0.2.2/31".to_owned())
            );
            assert_eq!(get::<String>(&reader, "203.0.113.9"), None);
            if ip_version == 6 {
                assert_eq!(
                    lookup(&reader, "2001:db8:1::1"),
                    found("doc", "2001:db8::/32")
                );
                assert_eq!(
                    lookup(&reader, "::ffff:10.9.8.7"),
                    found("ten", "::ffff:10.0.0.0/104")
                );
                // Rust prints ::10.0.0.0 as ::a00:0.
                assert_eq!(lookup(&reader, "::10.9.8.7"), found("ten", "::a00:0/104"));
                assert_eq!(get::<String>(&reader, "2001:db9::1"), None);
            }
        }
    }

    #[test]
    fn empty_and_ipv6_only_databases() {
        for ip_version in [4, 6] {
            assert_eq!(
                get::<String>(&reader(&Writer::new("Empty", ip_version)), "192.0.2.1"),
                None
            );
        }
        let mut writer = Writer::new("V6-Only", 6);
        writer.insert("2001:db8::/32", Value::U32(1)).unwrap();
        let reader = reader(&writer);
        assert_eq!(get::<u32>(&reader, "2001:db8::1"), Some(1));
        assert_eq!(get::<u32>(&reader, "192.0.2.1"), None);
        assert_eq!(get::<u32>(&reader, "::ffff:192.0.2.1"), None);
    }

    #[test]
    fn nested_geoip2_style_record_decodes() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Country {
            iso_code: String,
            names: BTreeMap<String, String>,
        }
        #[derive(Deserialize, Debug, PartialEq)]
        struct Record {
            country: Country,
        }
        let names = Value::map([("en", Value::str("Germany"))]);
        let country = Value::map([("iso_code", Value::str("DE")), ("names", names)]);
        let germany = Value::map([("country", country)]);
        let mut writer = Writer::new("GeoIP2-Country", 6);
        writer.insert("192.0.2.0/24", germany.clone()).unwrap();
        writer.insert("2001:db8::/32", germany).unwrap();
        let reader = reader(&writer);
        let names = BTreeMap::from([("en".to_owned(), "Germany".to_owned())]);
        let expected = Record {
            country: Country {
                iso_code: "DE".into(),
                names,
            },
        };
        for addr in ["192.0.2.7", "::ffff:192.0.2.7", "2001:db8::7"] {
            assert_eq!(
                get::<Record>(&reader, addr).as_ref(),
                Some(&expected),
                "{addr}"
            );
            let country: maxminddb::geoip2::Country<'_> = get(&reader, addr).unwrap();
            assert_eq!(country.country.iso_code, Some("DE"));
        }
        // Identical values are stored once.
        let offset = |addr: &str| reader.lookup(addr.parse().unwrap()).unwrap().offset();
        assert_eq!(offset("192.0.2.7"), offset("2001:db8::7"));
    }

    #[test]
    fn every_value_type_round_trips() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct All<'a> {
            s: String,
            u16: (u16, u16),
            u32: u32,
            u64: u64,
            u128: u128,
            i32: (i32, i32, i32, i32),
            double: f64,
            float: f32,
            bools: (bool, bool),
            bytes: &'a [u8],
            empty: BTreeMap<String, u32>,
        }
        let value = Value::map([
            ("s", Value::str("héllo")),
            ("u16", Value::Array(vec![Value::U16(0), Value::U16(0x1234)])),
            ("u32", Value::U32(u32::MAX)),
            ("u64", Value::U64(1 << 40)),
            ("u128", Value::U128(u128::MAX - 1)),
            (
                "i32",
                Value::Array([-5, 0, 300, i32::MIN].map(Value::I32).to_vec()),
            ),
            ("double", Value::Double(-1.5e300)),
            ("float", Value::Float(0.25)),
            (
                "bools",
                Value::Array(vec![Value::Bool(true), Value::Bool(false)]),
            ),
            ("bytes", Value::Bytes(vec![0, 1, 0xff])),
            ("empty", Value::Map(Vec::new())),
        ]);
        let expected = All {
            s: "héllo".into(),
            u16: (0, 0x1234),
            u32: u32::MAX,
            u64: 1 << 40,
            u128: u128::MAX - 1,
            i32: (-5, 0, 300, i32::MIN),
            double: -1.5e300,
            float: 0.25,
            bools: (true, false),
            bytes: &[0, 1, 0xff],
            empty: BTreeMap::new(),
        };
        for record_size in [24, 28, 32] {
            let mut writer = Writer::new("All", 4).record_size(record_size);
            writer.insert("198.51.100.0/24", value.clone()).unwrap();
            let reader = reader(&writer);
            assert_eq!(
                get::<All<'_>>(&reader, "198.51.100.1").as_ref(),
                Some(&expected)
            );
        }
    }

    #[test]
    fn large_values_use_extended_sizes() {
        const LENGTHS: [usize; 9] = [28, 29, 100, 284, 285, 1000, 65_820, 65_821, 70_000];
        let mut writer = Writer::new("Large", 4);
        for (i, len) in LENGTHS.into_iter().enumerate() {
            writer
                .insert(&format!("10.0.{i}.0/24"), Value::str("x".repeat(len)))
                .unwrap();
            let array = Value::Array(vec![Value::Bool(true); len]);
            writer.insert(&format!("10.1.{i}.0/24"), array).unwrap();
        }
        let reader = reader(&writer);
        for (i, len) in LENGTHS.into_iter().enumerate() {
            let s: String = get(&reader, &format!("10.0.{i}.1")).unwrap();
            assert_eq!(s.len(), len);
            // The reader refuses to decode containers of more than 65536 values.
            if len <= 65_536 {
                let items: Vec<bool> = get(&reader, &format!("10.1.{i}.1")).unwrap();
                assert_eq!(items.len(), len);
            }
        }
    }

    #[test]
    fn more_specific_networks_override_and_less_specific_fill_gaps() {
        let mut writer = Writer::new("Override", 6);
        for (cidr, value) in [
            ("10.0.0.0/8", "eight"),
            ("10.1.0.0/16", "sixteen"),
            ("10.1.2.0/24", "twenty-four"),
            ("10.0.0.0/12", "twelve"),
            ("10.1.2.0/24", "replaced"),
            ("::/0", "everything"),
        ] {
            writer.insert(cidr, Value::str(value)).unwrap();
        }
        let reader = reader(&writer);
        assert_eq!(
            lookup(&reader, "10.1.2.3"),
            found("replaced", "10.1.2.0/24")
        );
        assert_eq!(lookup(&reader, "10.1.3.3"), found("sixteen", "10.1.3.0/24"));
        assert_eq!(lookup(&reader, "10.2.0.1"), found("twelve", "10.2.0.0/15"));
        assert_eq!(
            lookup(&reader, "10.200.0.1"),
            found("eight", "10.128.0.0/9")
        );
        assert_eq!(
            lookup(&reader, "::ffff:10.1.3.3"),
            found("sixteen", "::ffff:10.1.3.0/120")
        );
        assert_eq!(
            get::<String>(&reader, "192.0.2.1").as_deref(),
            Some("everything")
        );
        assert_eq!(
            lookup(&reader, "2001:db8::1"),
            found("everything", "2000::/3")
        );
    }

    #[test]
    fn write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("geoip-mmdb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test.mmdb");
        for value in ["first", "second"] {
            let mut writer = Writer::new("File", 4);
            writer.insert("192.0.2.0/24", Value::str(value)).unwrap();
            writer.write(&path).unwrap();
            let reader = Reader::open_readfile(&path).unwrap();
            assert_eq!(get::<String>(&reader, "192.0.2.1").as_deref(), Some(value));
        }
        let files = std::fs::read_dir(&dir).unwrap().count();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(files, 1, "temporary file left behind");
        let err = Writer::new("File", 4)
            .write(&dir.join("missing.mmdb"))
            .unwrap_err();
        assert!(matches!(err, WriteError::Io { .. }), "{err}");
    }

    #[test]
    fn rejects_bad_input() {
        for (ip_version, cidr, message) in [
            (4, "2001:db8::/32", "IPv6 network in an IPv4 database"),
            (4, "192.0.2.1/24", "host bits set"),
            (4, "192.0.2.0/33", "prefix longer than 32"),
            (4, "192.0.2.0/x", "bad prefix length"),
            (4, "example.com", "bad address"),
            (6, "2001:db8::1/32", "host bits set"),
            (6, "::/129", "prefix longer than 128"),
            (6, "::ffff:192.0.2.0/120", "inside ::ffff:0:0/96"),
        ] {
            let err = Writer::new("Errors", ip_version).insert(cidr, Value::Bool(true));
            let err = err.unwrap_err().to_string();
            assert!(err.contains(cidr) && err.contains(message), "{cidr}: {err}");
        }
        let err = Writer::new("Errors", 4)
            .record_size(30)
            .to_bytes()
            .unwrap_err();
        assert_eq!(err.to_string(), "record size 30 is not 24, 28 or 32");
        let err = Writer::new("Errors", 5).insert("192.0.2.0/24", Value::U16(1));
        assert_eq!(err.unwrap_err().to_string(), "IP version 5 is not 4 or 6");
        let too_large = Value::Bytes(vec![0; MAX_SIZE + 1]);
        let err = Writer::new("Errors", 4).insert("192.0.2.0/24", too_large);
        let message = "value of size 16843037 exceeds the maximum 16843036";
        assert_eq!(err.unwrap_err().to_string(), message);
    }

    #[test]
    fn record_overflow_is_an_error_and_28_bit_records_use_the_middle_nibble() {
        // Three distinct 8.5 MB values put the last data offset past 2^24.
        let mut writer = Writer::new("Overflow", 4).record_size(24);
        for i in 0..3 {
            let value = Value::Bytes(vec![i; 8_500_000]);
            writer.insert(&format!("10.{i}.0.0/16"), value).unwrap();
        }
        let err = writer.to_bytes().unwrap_err();
        assert!(
            matches!(
                err,
                WriteError::RecordOverflow {
                    record_size: 24,
                    ..
                }
            ),
            "{err}"
        );
        let reader = reader(&writer.record_size(28));
        let last = reader.lookup("10.2.0.1".parse().unwrap()).unwrap();
        assert!(last.offset().unwrap() > 1 << 24);
        assert_eq!(
            last.decode::<&[u8]>().unwrap().map(<[u8]>::len),
            Some(8_500_000)
        );
        assert_eq!(get::<&[u8]>(&reader, "10.1.0.1").unwrap()[0], 1);
    }
}
