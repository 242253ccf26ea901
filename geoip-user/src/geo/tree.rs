//! A MaxMind DB's search tree, walked once before anything else reads the
//! file. Every later walk (the flattening of the country database, the
//! first networks of the others) follows the tree from its root as this
//! one does, and a crafted file of a few hundred bytes can make such a
//! walk longer than any machine runs: nodes that share their children
//! (2^depth paths), or that point back up (a circle). Here the walk's
//! length is bounded by what a real file holds: each node once, the IPv4
//! subtree of an IPv6 database three more times (its aliases
//! `::ffff:0:0/96`, `2001::/32` and `2002::/16`, which flattening follows),
//! with room to spare: [`MAX_UNFOLDING`] times the node count at most.

use maxminddb::MaxMindDbError;

/// How many times its node count the walk of a tree may visit nodes.
pub(super) const MAX_UNFOLDING: usize = 8;

/// Walk the search tree of `bytes` (`node_count` nodes of `record_size`
/// bits per record, for addresses of IP version `ip_version`); an error when it
/// visits more than [`MAX_UNFOLDING`] times its node count, goes deeper
/// than an address has bits, or reads past its end.
pub(super) fn check(
    bytes: &[u8],
    node_count: usize,
    record_size: u16,
    ip_version: u16,
) -> Result<(), MaxMindDbError> {
    let bits: usize = if ip_version == 6 { 128 } else { 32 };
    let budget = node_count.saturating_mul(MAX_UNFOLDING).saturating_add(64);
    let mut visits = 0usize;
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    while let Some((node, depth)) = stack.pop() {
        if node >= node_count {
            // Data, or no data: a leaf.
            continue;
        }
        if depth >= bits {
            return Err(MaxMindDbError::invalid_database(format!(
                "its search tree goes deeper than an address's {bits} bits (node {node} points back up): a circle, as no database has"
            )));
        }
        visits += 1;
        if visits > budget {
            return Err(MaxMindDbError::invalid_database(format!(
                "its search tree unfolds into more than {budget} nodes ({MAX_UNFOLDING} times its {node_count}): its nodes are shared as no database needs (crafted, or damaged)"
            )));
        }
        let (left, right) = children(bytes, node, record_size).ok_or_else(|| {
            MaxMindDbError::invalid_database(format!(
                "its search tree node {node} lies past the end of the file"
            ))
        })?;
        stack.push((right, depth + 1));
        stack.push((left, depth + 1));
    }
    Ok(())
}

/// The two records of `node`.
fn children(bytes: &[u8], node: usize, record_size: u16) -> Option<(usize, usize)> {
    let size = usize::from(record_size) / 4;
    let at = node.checked_mul(size)?;
    let b = bytes.get(at..at.checked_add(size)?)?;
    let word = |s: &[u8]| {
        s.iter()
            .fold(0usize, |acc, byte| acc << 8 | usize::from(*byte))
    };
    match record_size {
        24 => Some((word(&b[..3]), word(&b[3..]))),
        28 => {
            let middle = usize::from(b[3]);
            Some((
                (middle & 0xf0) << 20 | word(&b[..3]),
                (middle & 0x0f) << 24 | word(&b[4..]),
            ))
        }
        32 => Some((word(&b[..4]), word(&b[4..]))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of `nodes` nodes of 24-bit records, `link(i)` giving node
    /// `i`'s two children.
    fn tree(nodes: usize, link: impl Fn(usize) -> (usize, usize)) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..nodes {
            let (l, r) = link(i);
            for v in [l, r] {
                out.extend_from_slice(&u32::try_from(v).unwrap().to_be_bytes()[1..]);
            }
        }
        out
    }

    #[test]
    fn a_tree_passes_and_shared_or_circular_nodes_do_not() {
        // A chain down the left, each right child empty (= node count).
        let n = 40;
        let chain = tree(n, |i| (if i + 1 < n { i + 1 } else { n }, n));
        assert!(check(&chain, n, 24, 6).is_ok());
        // Both children the same next node: 2^depth paths.
        let shared = tree(n, |i| if i + 1 < n { (i + 1, i + 1) } else { (n, n) });
        let err = check(&shared, n, 24, 6).unwrap_err().to_string();
        assert!(err.contains("unfolds into more than 384 nodes"), "{err}");
        // A node pointing back to the root.
        let circle = tree(2, |i| if i == 0 { (1, 2) } else { (0, 2) });
        let err = check(&circle, 2, 24, 4).unwrap_err().to_string();
        assert!(err.contains("deeper than an address's 32 bits"), "{err}");
        // Cut short.
        assert!(check(&chain[..10], n, 24, 6).is_err());
    }

    #[test]
    fn every_record_size_reads_its_children() {
        // 28 bits: the middle byte's high nibble belongs to the left record.
        assert_eq!(
            children(&[0x12, 0x34, 0x56, 0xab, 0x78, 0x9a, 0xbc], 0, 28),
            Some((0x0a12_3456, 0x0b78_9abc))
        );
        assert_eq!(children(&[0, 0, 0, 1, 0, 0, 0, 2], 0, 32), Some((1, 2)));
        assert_eq!(children(&[0, 0, 3, 0, 0, 4], 0, 24), Some((3, 4)));
        assert_eq!(children(&[0; 6], 1, 24), None);
        assert_eq!(children(&[0; 6], 0, 16), None);
    }
}
