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
}
