//! A connection's identity as the table keys it: 64 bits instead of the
//! 40 bytes of a [`ConnKey`].

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher as _, BuildHasherDefault, Hasher, RandomState},
};

use crate::conn::ConnKey;

/// A connection's identity ([`ConnKey`], 40 bytes) as 64 bits: a `SipHash`
/// of it with a key drawn at start-up, so that nobody outside can choose
/// 4-tuples that collide. Two of n live connections share one with
/// probability about n^2 / 2^65 (3 * 10^-10 at 100,000); the reconcile
/// would repair the miscount.
pub(crate) type Fingerprint = u64;

/// Hashes a [`Fingerprint`] to itself: it is already a uniform hash.
#[derive(Clone, Copy, Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A map by [`Fingerprint`].
pub(crate) type ByFingerprint<V> = HashMap<Fingerprint, V, BuildHasherDefault<Prehashed>>;

/// A set of [`Fingerprint`]s.
pub(crate) type FingerprintSet = HashSet<Fingerprint, BuildHasherDefault<Prehashed>>;

/// Draws fingerprints with a key of its own, drawn when it is made.
pub(crate) struct Fingerprinter(RandomState);

impl Fingerprinter {
    pub(crate) fn new() -> Self {
        Self(RandomState::new())
    }

    pub(crate) fn of(&self, key: &ConnKey) -> Fingerprint {
        self.0.hash_one(key)
    }
}
