//! The flattened range table a country database becomes: the whole
//! address space as sorted, contiguous ranges, each with one country,
//! behind a first-level index of 2^16 slices, so a lookup is one index
//! read, or that and a short binary search.

use super::country::Country;

/// An address type a [`Ranges`] table is keyed by, ordered as numbers.
pub(super) trait Address: Copy + Ord {
    const ZERO: Self;
    /// The first address of the `top`-th of the 2^16 slices of the space.
    fn slice_start(top: usize) -> Self;
    /// Which of the 2^16 slices `self` is in.
    fn slice(self) -> usize;
    /// The first address after the network `self`/`prefix`; `None` at the
    /// end of the space.
    fn after(self, prefix: u8) -> Option<Self>;
}

impl Address for u32 {
    const ZERO: Self = 0;
    fn slice_start(top: usize) -> Self {
        u32::try_from(top).unwrap_or(u32::MAX >> 16) << 16
    }
    fn slice(self) -> usize {
        (self >> 16) as usize
    }
    fn after(self, prefix: u8) -> Option<Self> {
        let size = 1u32.checked_shl(Self::BITS - u32::from(prefix))?;
        self.checked_add(size)
    }
}

/// An IPv6 address as two words, most significant first: ordered as the
/// number, but 8-byte aligned, so a table entry with its country takes
/// 24 bytes instead of a `u128`'s 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct V6([u64; 2]);

impl V6 {
    #[expect(clippy::cast_possible_truncation, reason = "splitting in halves")]
    pub(super) const fn from_u128(a: u128) -> Self {
        Self([(a >> 64) as u64, a as u64])
    }

    const fn to_u128(self) -> u128 {
        ((self.0[0] as u128) << 64) | self.0[1] as u128
    }
}

impl Address for V6 {
    const ZERO: Self = Self([0, 0]);
    fn slice_start(top: usize) -> Self {
        Self([(top as u64) << 48, 0])
    }
    fn slice(self) -> usize {
        (self.0[0] >> 48) as usize
    }
    fn after(self, prefix: u8) -> Option<Self> {
        let size = 1u128.checked_shl(128 - u32::from(prefix))?;
        self.to_u128().checked_add(size).map(Self::from_u128)
    }
}

/// Slices of the address space the first-level index cuts it into.
const SLICES: usize = 1 << 16;

/// The first-level index entry of one slice of the address space.
#[derive(Clone, Copy, Debug)]
struct Slice {
    /// The range holding the slice's first address.
    first: u32,
    /// Whether that range covers the whole slice.
    whole: bool,
    /// Its country (so a whole slice needs no second read).
    country: Country,
}

/// The whole address space as sorted, contiguous ranges, each with one
/// country: range `i` runs from `ranges[i].0` to `ranges[i + 1].0 - 1`.
/// `index[s]` is for slice `s` (the top 16 bits): the answer itself if the
/// slice lies in one range, else where its ranges begin, so a lookup is
/// one index read, or that and a binary search among the few ranges of
/// one slice (start and country side by side).
pub(super) struct Ranges<A> {
    ranges: Vec<(A, Country)>,
    /// One per slice, and one more for the end of the space.
    index: Vec<Slice>,
}

impl<A: Address> Ranges<A> {
    pub(super) fn len(&self) -> usize {
        self.ranges.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.ranges.capacity() * size_of::<(A, Country)>()
            + self.index.capacity() * size_of::<Slice>()
    }

    #[inline]
    pub(super) fn find(&self, addr: A) -> Country {
        let slice = addr.slice();
        let (Some(this), Some(next)) = (self.index.get(slice), self.index.get(slice + 1)) else {
            return Country::UNKNOWN;
        };
        if this.whole {
            return this.country;
        }
        // From the range holding this slice's first address to the one
        // holding the next slice's: `ranges[lo].0 <= addr` always.
        let within = self
            .ranges
            .get(this.first as usize..=next.first as usize)
            .unwrap_or_default();
        let at = within.partition_point(|r| r.0 <= addr).saturating_sub(1);
        within.get(at).map_or(Country::UNKNOWN, |r| r.1)
    }
}

/// The IPv4 table in 4-byte words, for a cache-friendlier lookup than the
/// generic [`Ranges`] (IPv4 is where most lookups and most ranges are).
/// `index[s]` for the /16 slice `s` is [`WHOLE`] with the country of the
/// range covering the whole slice, or the position in `words` of the
/// slice's block: a word with the count of ranges, then one word per
/// range in the slice, `low 16 bits of its start << 16 | country`, the
/// first at the slice's start (a range from an earlier slice is cut
/// there). A lookup is one index read, or that and a binary search in a
/// block that mostly fits one cache line.
pub(super) struct V4Ranges {
    index: Vec<u32>,
    words: Vec<u32>,
    ranges: usize,
}

/// [`V4Ranges::index`]: the slice lies in one range.
const WHOLE: u32 = 1 << 31;

impl V4Ranges {
    pub(super) fn new(ranges: &Ranges<u32>) -> Self {
        let r = &ranges.ranges;
        let mut index = Vec::with_capacity(SLICES);
        let mut words = Vec::new();
        let mut at = 0usize;
        for slice in 0..SLICES {
            let first = u32::slice_start(slice);
            while at + 1 < r.len() && r[at + 1].0 <= first {
                at += 1;
            }
            let inside = r[at + 1..]
                .iter()
                .take_while(|next| next.0.slice() == slice)
                .count();
            if inside == 0 {
                index.push(WHOLE | u32::from(r[at].1.to_u16()));
                continue;
            }
            index.push(
                u32::try_from(words.len())
                    .unwrap_or(WHOLE - 1)
                    .min(WHOLE - 1),
            );
            words.push(u32::try_from(inside + 1).unwrap_or(u32::MAX));
            words.push(u32::from(r[at].1.to_u16()));
            for next in &r[at + 1..=at + inside] {
                words.push((next.0 & 0xffff) << 16 | u32::from(next.1.to_u16()));
            }
        }
        words.shrink_to_fit();
        Self {
            index,
            words,
            ranges: r.len(),
        }
    }

    pub(super) const fn len(&self) -> usize {
        self.ranges
    }

    pub(super) fn bytes(&self) -> usize {
        (self.index.capacity() + self.words.capacity()) * size_of::<u32>()
    }

    #[inline]
    pub(super) fn find(&self, addr: u32) -> Country {
        let Some(&entry) = self.index.get(addr.slice()) else {
            return Country::UNKNOWN;
        };
        #[expect(clippy::cast_possible_truncation, reason = "the low 16 bits")]
        if entry & WHOLE != 0 {
            return Country::from_u16(entry as u16);
        }
        let at = entry as usize;
        let count = self.words.get(at).map_or(0, |&c| c as usize);
        let block = self.words.get(at + 1..at + 1 + count).unwrap_or_default();
        // The first word's start is the slice's, never above `addr`.
        let key = (addr & 0xffff) << 16 | 0xffff;
        let i = block.partition_point(|w| *w <= key).saturating_sub(1);
        #[expect(clippy::cast_possible_truncation, reason = "the low 16 bits")]
        block
            .get(i)
            .map_or(Country::UNKNOWN, |w| Country::from_u16(*w as u16))
    }
}

/// Builds [`Ranges`] from networks given in ascending order.
pub(super) struct RangesBuilder<A> {
    ranges: Vec<(A, Country)>,
    /// The first address not yet covered; `None` once the space is.
    next: Option<A>,
}

impl<A: Address> RangesBuilder<A> {
    pub(super) const fn new() -> Self {
        Self {
            ranges: Vec::new(),
            next: Some(A::ZERO),
        }
    }

    fn push_range(&mut self, start: A, country: Country) {
        if self.ranges.last().map(|r| r.1) != Some(country) {
            self.ranges.push((start, country));
        }
    }

    /// The network `start`/`prefix` has `country`. Networks must come in
    /// ascending order without overlap; one that does not is ignored.
    pub(super) fn push(&mut self, start: A, prefix: u8, country: Country) {
        let Some(next) = self.next else { return };
        if start < next {
            return;
        }
        if start > next {
            self.push_range(next, Country::UNKNOWN);
        }
        self.push_range(start, country);
        self.next = start.after(prefix);
    }

    pub(super) fn finish(mut self) -> Ranges<A> {
        if let Some(next) = self.next {
            self.push_range(next, Country::UNKNOWN);
        }
        if self.ranges.is_empty() {
            self.push_range(A::ZERO, Country::UNKNOWN);
        }
        let mut ranges = self.ranges;
        ranges.shrink_to_fit();
        let position = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        let mut index = Vec::with_capacity(SLICES + 1);
        let mut at = 0usize;
        for slice in 0..SLICES {
            let first = A::slice_start(slice);
            while at + 1 < ranges.len() && ranges[at + 1].0 <= first {
                at += 1;
            }
            // One range covers the slice when the next one starts only in
            // a later slice.
            let whole = ranges.get(at + 1).is_none_or(|next| next.0.slice() > slice);
            index.push(Slice {
                first: position(at),
                whole,
                country: ranges[at].1,
            });
        }
        index.push(Slice {
            first: position(ranges.len() - 1),
            whole: true,
            country: Country::UNKNOWN,
        });
        Ranges { ranges, index }
    }
}
