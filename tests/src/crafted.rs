//! MaxMind DB files no writer makes, for the tests of what a hostile or
//! damaged file must not do to the exporter: structurally valid files
//! whose search trees a walk cannot finish.

use crate::mmdb::{Value, Writer};

/// The one record of these databases: Germany.
fn data_section() -> Vec<u8> {
    Value::map([("country_code", Value::str("DE"))])
        .to_bytes()
        .unwrap_or_default()
}

/// An IPv6 database of `depth` nodes each of whose two children are the
/// same next node, the last one's leading to data (`with_data`) or to
/// nothing: a walk of it meets 2^`depth` paths. About 600 bytes at depth 60.
#[must_use]
pub fn shared_nodes(depth: usize, with_data: bool) -> Vec<u8> {
    let count = depth as u64;
    let leaf = if with_data { count + 16 } else { count };
    let records: Vec<(u64, u64)> = (1..=count)
        .map(|next| {
            if next < count {
                (next, next)
            } else {
                (leaf, leaf)
            }
        })
        .collect();
    Writer::new("GeoLite2-Country", 6)
        .layout(&records, &data_section())
        .unwrap_or_default()
}

/// An IPv4 database whose second node points back to the first: a
/// circle.
#[must_use]
pub fn circular() -> Vec<u8> {
    let records = [(1, 2 + 16), (0, 2 + 16)];
    Writer::new("GeoLite2-Country", 4)
        .layout(&records, &data_section())
        .unwrap_or_default()
}

/// A database whose search tree `bytes` choose (for fuzzing the walk):
/// the first byte picks the record size (24, 28 or 32 bits), the second
/// IPv4 or IPv6, every 8 after it one node: two words, each taken modulo
/// the node count + 2 as a node, no data, or the data.
#[must_use]
pub fn arbitrary_tree(bytes: &[u8]) -> Vec<u8> {
    let (Some(&size), Some(&version)) = (bytes.first(), bytes.get(1)) else {
        return Vec::new();
    };
    let record_size = [24, 28, 32][usize::from(size % 3)];
    let ip_version = if version & 1 == 0 { 4 } else { 6 };
    let words: Vec<u64> = bytes[2..]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let count = (words.len() / 2).max(1) as u64;
    let record = |w: u64| match w % (count + 2) {
        n if n == count + 1 => count + 16,
        n => n,
    };
    let records: Vec<(u64, u64)> = if words.len() < 2 {
        vec![(count + 16, count)]
    } else {
        words
            .chunks_exact(2)
            .map(|pair| (record(pair[0]), record(pair[1])))
            .collect()
    };
    Writer::new("GeoLite2-Country", ip_version)
        .record_size(record_size)
        .layout(&records, &data_section())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// maxminddb opens them (they are structurally valid) and finds the
    /// country where a lookup's path leads.
    #[test]
    fn they_open_and_answer_a_lookup() {
        for bytes in [shared_nodes(60, true), circular()] {
            assert!(bytes.len() < 1024, "{}", bytes.len());
            let reader = maxminddb::Reader::from_source(bytes).unwrap();
            let addr = if reader.metadata().ip_version == 6 {
                "2001:db8::1"
            } else {
                "128.0.0.1"
            };
            let found = reader.lookup(addr.parse().unwrap()).unwrap();
            assert!(found.has_data(), "{addr}");
        }
    }

    #[test]
    fn arbitrary_trees_are_databases() {
        for bytes in [
            &b""[..],
            b"\x00",
            b"\x00\x01",
            b"\x01\x00\0\0\0\x01\0\0\0\x02",
        ] {
            let file = arbitrary_tree(bytes);
            if bytes.len() >= 2 {
                assert!(maxminddb::Reader::from_source(file).is_ok(), "{bytes:?}");
            }
        }
    }
}
