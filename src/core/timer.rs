//! Deadline-ordered timers (nginx's event timer rbtree) as an indexed binary heap.
//!
//! A timer names a mio `Token`; the owner keeps the `TimerId` to cancel or re-arm it.
//! Re-arming that moves a deadline by less than `LAZY` is skipped, as nginx's
//! `NGX_TIMER_LAZY_DELAY`, so a busy relay does not churn the heap on every read.
//!
//! Entries live in a slot vector with a free list, and the heap holds slot numbers;
//! each entry knows its heap position, so cancelling is O(log n) without a search.
//! Once the vectors have grown to the peak number of timers, arming and cancelling
//! allocate nothing (a `BTreeMap` allocated and freed nodes as sessions came and went).
//!
//! The owner of a slot clears it when its timer fires (the fired id is no longer
//! armed), so a slot holding `Some` always names a live timer and re-arming needs no
//! lookup. Ties fire in the order they were armed.

use std::time::{Duration, Instant};

use mio::Token;

pub const LAZY: Duration = Duration::from_millis(300);

/// A timer: its deadline, its entry and the entry's generation (a stale id, one whose
/// timer fired or was cancelled, matches nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId {
    at: Instant,
    slot: u32,
    gen: u32,
}

impl TimerId {
    pub fn deadline(&self) -> Instant {
        self.at
    }
}

/// Not in the heap (free, or the owner's copy of a fired timer).
const NOWHERE: usize = usize::MAX;

struct Entry {
    at: Instant,
    /// Arming order, for ties.
    seq: u64,
    token: Token,
    gen: u32,
    pos: usize,
}

#[derive(Default)]
pub struct Timers {
    entries: Vec<Entry>,
    free: Vec<u32>,
    heap: Vec<u32>,
    seq: u64,
}

impl Timers {
    pub fn add(&mut self, at: Instant, t: Token) -> TimerId {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.entries.push(Entry { at, seq: 0, token: t, gen: 0, pos: NOWHERE });
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[slot as usize];
        e.at = at;
        e.seq = self.seq;
        e.token = t;
        e.pos = self.heap.len();
        let gen = e.gen;
        self.heap.push(slot);
        self.sift_up(self.heap.len() - 1);
        TimerId { at, slot, gen }
    }

    pub fn cancel(&mut self, id: TimerId) {
        if self.live(id) {
            self.remove(id.slot);
        }
    }

    /// Arm `slot` for `at`: keep the existing timer if it is within `LAZY` of `at`.
    /// `slot` must have been cleared if its timer fired (see the module comment).
    pub fn rearm(&mut self, slot: &mut Option<TimerId>, at: Instant, t: Token) {
        if let Some(old) = *slot {
            let d = if old.at > at { old.at - at } else { at - old.at };
            if d < LAZY {
                return;
            }
            self.cancel(old);
        }
        *slot = Some(self.add(at, t));
    }

    /// Arm `slot` for exactly `at` (no lazy skip).
    pub fn set(&mut self, slot: &mut Option<TimerId>, at: Instant, t: Token) {
        if let Some(old) = slot.take() {
            self.cancel(old);
        }
        *slot = Some(self.add(at, t));
    }

    pub fn clear(&mut self, slot: &mut Option<TimerId>) {
        if let Some(old) = slot.take() {
            self.cancel(old);
        }
    }

    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.heap.first().map(|&slot| self.entries[slot as usize].at.saturating_duration_since(now))
    }

    /// The next expired timer, disarmed.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, Token)> {
        let slot = *self.heap.first()?;
        let e = &self.entries[slot as usize];
        if e.at > now {
            return None;
        }
        let fired = (TimerId { at: e.at, slot, gen: e.gen }, e.token);
        self.remove(slot);
        Some(fired)
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn live(&self, id: TimerId) -> bool {
        self.entries.get(id.slot as usize).is_some_and(|e| e.gen == id.gen && e.pos != NOWHERE)
    }

    /// Take an armed entry out of the heap and free it (its ids go stale).
    fn remove(&mut self, slot: u32) {
        let pos = self.entries[slot as usize].pos;
        let last = self.heap.len() - 1;
        self.swap(pos, last);
        self.heap.pop();
        if pos < last {
            self.sift_down(pos);
            self.sift_up(pos);
        }
        let e = &mut self.entries[slot as usize];
        e.pos = NOWHERE;
        e.gen = e.gen.wrapping_add(1);
        self.free.push(slot);
    }

    fn before(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.entries[self.heap[a] as usize], &self.entries[self.heap[b] as usize]);
        (x.at, x.seq) < (y.at, y.seq)
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.entries[self.heap[a] as usize].pos = a;
        self.entries[self.heap[b] as usize].pos = b;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.before(i, parent) {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut first = i;
            if l < self.heap.len() && self.before(l, first) {
                first = l;
            }
            if r < self.heap.len() && self.before(r, first) {
                first = r;
            }
            if first == i {
                break;
            }
            self.swap(i, first);
            i = first;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_cancel_lazy() {
        let now = Instant::now();
        let mut t = Timers::default();
        let a = t.add(now + Duration::from_secs(2), Token(1));
        t.add(now + Duration::from_secs(1), Token(2));
        assert_eq!(t.next_timeout(now), Some(Duration::from_secs(1)));
        t.cancel(a);
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(t.pop_expired(now + Duration::from_secs(1)).map(|x| x.1), Some(Token(2)));
        let mut slot = None;
        t.rearm(&mut slot, now + Duration::from_secs(10), Token(3));
        let first = slot;
        t.rearm(&mut slot, now + Duration::from_millis(10_100), Token(3));
        assert_eq!(first, slot, "a small move is skipped");
        t.rearm(&mut slot, now + Duration::from_secs(20), Token(3));
        assert_ne!(first, slot);
    }

    #[test]
    fn matches_a_sorted_model_under_random_arming_and_cancelling() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = Instant::now();
        let mut t = Timers::default();
        // The model: (deadline, arming order, token) of every armed timer.
        let mut model: Vec<(Instant, u64, usize, TimerId)> = Vec::new();
        let mut order = 0u64;
        let mut now = base;
        for round in 0..20_000 {
            match rng.random_range(0..4) {
                0 | 1 => {
                    let at = now + Duration::from_millis(rng.random_range(0..50));
                    order += 1;
                    let id = t.add(at, Token(round));
                    model.push((at, order, round, id));
                }
                2 if !model.is_empty() => {
                    let (_, _, _, id) = model.swap_remove(rng.random_range(0..model.len()));
                    t.cancel(id);
                    t.cancel(id); // a stale id is ignored
                }
                _ => {
                    now += Duration::from_millis(rng.random_range(0..20));
                    model.sort_by_key(|m| (m.0, m.1));
                    let due = model.iter().take_while(|m| m.0 <= now).count();
                    for (at, _, token, id) in model.drain(..due) {
                        assert_eq!(t.pop_expired(now), Some((id, Token(token))));
                        assert_eq!(id.deadline(), at);
                        t.cancel(id); // the owner's copy of a fired timer is stale
                    }
                    assert_eq!(t.pop_expired(now), None);
                }
            }
            let next = model.iter().map(|m| m.0).min();
            assert_eq!(t.next_timeout(now), next.map(|at| at.saturating_duration_since(now)));
            assert_eq!(t.is_empty(), model.is_empty());
        }
        assert!(t.entries.len() <= 20_000 && t.free.len() + t.heap.len() == t.entries.len());
    }
}
