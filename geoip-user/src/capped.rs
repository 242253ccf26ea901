//! Bounded label values: at most `limit` values of a label get series of
//! their own, chosen by traffic; every other value shares `other`.
//!
//! Each connection is counted under a [`Slot`] when it opens and keeps it
//! until it closes, so a series' `opened - closed` is always its gauge.
//! Values are admitted as they come while there is room; then, every
//! [`Capped::rerank`] (the caller's timer, minutes apart: the set must not
//! change every scrape), a value whose recent traffic is well above the
//! weakest member's takes its place. A member that leaves keeps its slot
//! (and its series) until its last connection closes; then the slot is
//! freed and the caller drops the series. A member still holding
//! connections is displaced only while fewer than 2 x `limit` slots are in
//! use, so there are never more than 2 x `limit` values with series (plus
//! [`OTHER`]).
//!
//! Traffic is counted in a table of at most [`CANDIDATES_PER_SLOT`] x
//! `limit` values (after the "space-saving" heavy-hitter scheme: when the
//! table is full its least counted half goes, and a new value inherits
//! the highest count evicted, remembered as the count's possible error;
//! ranking uses the count less its error, a sure lower bound), halved at
//! every re-rank, so memory and time per open stay bounded however many
//! distinct values come.

use std::{collections::HashMap, hash::Hash};

/// Where a connection is counted; [`OTHER`] is shared by every value
/// without a slot of its own.
pub(crate) type Slot = u16;

/// The slot of every value that has none of its own.
pub(crate) const OTHER: Slot = 0;

/// Values whose traffic is counted, per slot of the limit.
const CANDIDATES_PER_SLOT: usize = 8;

/// A candidate replaces the weakest member only when its recent traffic
/// is more than this many times the member's.
const DISPLACE_FACTOR: u32 = 2;

/// One slot: the value it shows and the connections counted under it.
#[derive(Debug)]
struct SlotState<K> {
    value: K,
    open: u64,
    /// Still a member (new connections of its value come here).
    member: bool,
}

/// The label values of one capped label.
#[derive(Debug)]
pub(crate) struct Capped<K> {
    limit: usize,
    /// Members: value -> slot.
    members: HashMap<K, Slot>,
    /// `slots[s - 1]` is slot `s`; `None` when free.
    slots: Vec<Option<SlotState<K>>>,
    /// Recent opens by value, for ranking (bounded, see the module).
    traffic: HashMap<K, Counted>,
    /// The highest count evicted from `traffic` since the last rerank:
    /// what a newcomer may have had.
    floor: u32,
}

/// A value's recent opens, and by how much that may overcount them.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    count: u32,
    error: u32,
}

impl Counted {
    /// Opens certainly seen.
    const fn sure(self) -> u32 {
        self.count - self.error
    }
}

impl<K: Clone + Eq + Hash> Capped<K> {
    /// At most `limit` values with a slot of their own (at most
    /// `Slot::MAX`).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.min(usize::from(Slot::MAX)),
            members: HashMap::new(),
            slots: Vec::new(),
            traffic: HashMap::new(),
            floor: 0,
        }
    }

    /// A connection of `value` opens: the slot it is counted under.
    pub(crate) fn open(&mut self, value: &K) -> Slot {
        self.count(value);
        let slot = match self.members.get(value) {
            Some(&slot) => slot,
            None if self.members.len() < self.limit => self.admit(value.clone()),
            None => OTHER,
        };
        if let Some(state) = self.state_mut(slot) {
            state.open += 1;
        }
        slot
    }

    /// A connection counted under `slot` closed. Returns the slot's value
    /// if that freed the slot (no connection left, no longer a member):
    /// its series are to be dropped.
    pub(crate) fn close(&mut self, slot: Slot) -> Option<K> {
        let state = self.state_mut(slot)?;
        state.open = state.open.saturating_sub(1);
        if state.open == 0 && !state.member {
            return self.free(slot);
        }
        None
    }

    /// The value slot `slot` shows; `None` for [`OTHER`] (or a free slot).
    pub(crate) fn value(&self, slot: Slot) -> Option<&K> {
        self.state(slot).map(|s| &s.value)
    }

    /// Replace members whose recent traffic is far below a candidate's,
    /// then halve the traffic counts. Returns the slots freed, with their
    /// values (their series are to be dropped).
    pub(crate) fn rerank(&mut self) -> Vec<(Slot, K)> {
        let mut freed = Vec::new();
        let sure = |t: &HashMap<K, Counted>, v: &K| t.get(v).map_or(0, |c| c.sure());
        let mut candidates: Vec<(K, u32)> = self
            .traffic
            .iter()
            .filter(|(v, _)| !self.members.contains_key(*v))
            .map(|(v, c)| (v.clone(), c.sure()))
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
        for (value, count) in candidates {
            if count == 0 {
                break;
            }
            if self.members.len() < self.limit {
                self.admit(value);
                continue;
            }
            let weakest = self
                .members
                .iter()
                .map(|(v, s)| (sure(&self.traffic, v), *s))
                .min();
            let Some((weak_count, weak_slot)) = weakest else {
                break;
            };
            if count <= weak_count.saturating_mul(DISPLACE_FACTOR) {
                // Candidates come strongest first: none of the rest
                // displaces anyone either.
                break;
            }
            let holds = self.state(weak_slot).is_some_and(|s| s.open > 0);
            if holds && self.slots.iter().flatten().count() >= 2 * self.limit {
                // Its slot would stay in use beside the newcomer's: no room.
                break;
            }
            if let Some(value) = self.demote(weak_slot) {
                freed.push((weak_slot, value));
            }
            self.admit(value);
        }
        for c in self.traffic.values_mut() {
            c.count /= 2;
            c.error /= 2;
        }
        self.traffic.retain(|_, c| c.count > 0);
        self.floor /= 2;
        freed
    }

    /// Slots in use (members and former members still counting
    /// connections), [`OTHER`] not included.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    fn count(&mut self, value: &K) {
        if let Some(c) = self.traffic.get_mut(value) {
            c.count = c.count.saturating_add(1);
            return;
        }
        let capacity = self.limit.max(1) * CANDIDATES_PER_SLOT;
        if self.traffic.len() >= capacity {
            self.evict();
        }
        let floor = self.floor;
        self.traffic.insert(
            value.clone(),
            Counted {
                count: floor.saturating_add(1),
                error: floor,
            },
        );
    }

    /// Make room in the full traffic table: the least counted half of
    /// the values that are not members go at once (one sort, so a flood
    /// of new values costs a logarithm each, not a scan of the table
    /// each). A value counted later inherits the highest count evicted
    /// as its possible error (it may have been among them).
    fn evict(&mut self) {
        let mut counts: Vec<u32> = self
            .traffic
            .iter()
            .filter(|(v, _)| !self.members.contains_key(*v))
            .map(|(_, c)| c.count)
            .collect();
        if counts.is_empty() {
            return;
        }
        counts.sort_unstable();
        let cut = counts[(counts.len() - 1) / 2];
        let members = &self.members;
        self.traffic
            .retain(|v, c| members.contains_key(v) || c.count > cut);
        self.floor = self.floor.max(cut);
    }

    fn admit(&mut self, value: K) -> Slot {
        // A former member still counting connections takes its own slot
        // back: two slots must never show the same value (they would
        // share, and then drop, one series).
        let former = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.value == value));
        if let Some(i) = former {
            if let Some(state) = self.slots.get_mut(i).and_then(Option::as_mut) {
                state.member = true;
            }
            let slot = Slot::try_from(i + 1).unwrap_or(OTHER);
            self.members.insert(value, slot);
            return slot;
        }
        let state = SlotState {
            value: value.clone(),
            open: 0,
            member: true,
        };
        let index = if let Some(i) = self.slots.iter().position(Option::is_none) {
            self.slots[i] = Some(state);
            i
        } else {
            self.slots.push(Some(state));
            self.slots.len() - 1
        };
        let slot = Slot::try_from(index + 1).unwrap_or(OTHER);
        self.members.insert(value, slot);
        slot
    }

    /// `slot` stops being a member; freed at once (its value returned) if
    /// it holds nothing.
    fn demote(&mut self, slot: Slot) -> Option<K> {
        let state = self.state_mut(slot)?;
        state.member = false;
        let (value, open) = (state.value.clone(), state.open);
        self.members.remove(&value);
        if open == 0 {
            return self.free(slot);
        }
        None
    }

    /// Free `slot`; its value.
    fn free(&mut self, slot: Slot) -> Option<K> {
        usize::from(slot)
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::take)
            .map(|s| s.value)
    }

    fn state(&self, slot: Slot) -> Option<&SlotState<K>> {
        usize::from(slot)
            .checked_sub(1)
            .and_then(|i| self.slots.get(i))
            .and_then(Option::as_ref)
    }

    fn state_mut(&mut self, slot: Slot) -> Option<&mut SlotState<K>> {
        usize::from(slot)
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::as_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_values_get_slots_the_rest_share_other() {
        let mut c = Capped::new(2);
        let a = c.open(&"a");
        let b = c.open(&"b");
        assert_ne!(a, OTHER);
        assert_ne!(b, OTHER);
        assert_ne!(a, b);
        assert_eq!(c.open(&"c"), OTHER);
        assert_eq!(c.open(&"a"), a, "a member keeps its slot");
        assert_eq!(c.value(a), Some(&"a"));
        assert_eq!(c.value(OTHER), None);
    }

    #[test]
    fn a_much_busier_value_displaces_the_weakest_member_at_a_rerank_only() {
        let mut c = Capped::new(2);
        let a = c.open(&"a");
        let b = c.open(&"b");
        for _ in 0..10 {
            assert_eq!(c.open(&"a"), a);
        }
        for _ in 0..10 {
            assert_eq!(c.open(&"c"), OTHER, "no change between reranks");
        }
        // b (1 open) is the weakest; c (10) is more than twice as busy.
        // b still counts a connection: its slot stays until it closes.
        assert!(c.rerank().is_empty());
        let c_slot = c.open(&"c");
        assert_ne!(c_slot, OTHER);
        assert_ne!(c_slot, b, "b's slot is still held by its connection");
        assert_eq!(c.open(&"b"), OTHER, "b is no longer a member");
        assert_eq!(c.close(OTHER), None);
        assert_eq!(c.close(b), Some("b"), "b's last connection frees it");
        assert_eq!(c.value(b), None);
        assert_eq!(c.in_use(), 2);
    }

    #[test]
    fn a_slightly_busier_value_does_not_churn_the_set() {
        let mut c = Capped::new(1);
        let a = c.open(&"a");
        for _ in 0..5 {
            c.open(&"a");
        }
        for _ in 0..10 {
            c.open(&"b");
        }
        // b: 10 opens, a: 6 — not more than twice.
        c.rerank();
        assert_eq!(c.open(&"a"), a);
        assert_eq!(c.open(&"b"), OTHER);
    }

    #[test]
    fn a_member_without_connections_is_freed_when_displaced() {
        let mut c = Capped::new(1);
        let a = c.open(&"a");
        assert_eq!(c.close(a), None, "a member stays without connections");
        for _ in 0..4 {
            c.open(&"b");
        }
        assert_eq!(c.rerank(), vec![(a, "a")]);
        assert_ne!(c.open(&"b"), OTHER);
        assert_eq!(c.in_use(), 1);
    }

    #[test]
    fn never_more_than_twice_the_limit_of_slots() {
        let mut c = Capped::new(1);
        c.open(&0u32);
        // Each round a new value is far busier; the old members keep
        // their connections open.
        for round in 1..=5u32 {
            for _ in 0..(10 * round) {
                c.open(&round);
            }
            c.rerank();
            assert!(c.in_use() <= 2, "round {round}: {} slots", c.in_use());
        }
    }

    /// A former member still holding connections that becomes busy again
    /// takes its own slot back rather than a second one.
    #[test]
    fn a_value_never_holds_two_slots() {
        let mut c = Capped::new(1);
        let a = c.open(&"a");
        for _ in 0..10 {
            c.open(&"b");
        }
        c.rerank();
        let b = c.open(&"b");
        assert_ne!(b, OTHER);
        assert_eq!(c.close(b), None, "b, a member, keeps its slot");
        for _ in 0..100 {
            c.open(&"a");
        }
        // b (no connection) is displaced by a, which still holds `a`'s
        // first connection in its old slot.
        assert_eq!(c.rerank(), vec![(b, "b")]);
        assert_eq!(c.open(&"a"), a, "a is back in its own slot");
        assert_eq!(c.in_use(), 1);
    }

    #[test]
    fn memory_is_bounded_however_many_values_come() {
        let mut c = Capped::new(3);
        for i in 0..100_000u32 {
            c.open(&i);
        }
        assert!(c.traffic.len() <= 3 * CANDIDATES_PER_SLOT);
        assert_eq!(c.in_use(), 3);
        // A heavy hitter among the flood is still found.
        for i in 0..100_000u32 {
            c.open(&(i % 1000 + 1_000_000));
            if i % 10 == 0 {
                c.open(&7_777_777);
            }
        }
        c.rerank();
        let s = c.open(&7_777_777);
        assert_ne!(s, OTHER, "the value seen every tenth open gets a slot");
    }
}
