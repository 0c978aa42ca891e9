//! Deadline-ordered timers (nginx's event timer rbtree) over a `BTreeMap`.
//!
//! A timer names a mio `Token`; the owner keeps the `TimerId` to cancel or re-arm it.
//! Re-arming that moves a deadline by less than `LAZY` is skipped, as nginx's
//! `NGX_TIMER_LAZY_DELAY`, so a busy relay does not churn the tree on every read.
//!
//! The owner of a slot clears it when its timer fires (the fired id is no longer in
//! the tree), so a slot holding `Some` always names a live timer and re-arming needs no
//! lookup.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mio::Token;

pub const LAZY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerId(Instant, u64);

impl TimerId {
    pub fn deadline(&self) -> Instant {
        self.0
    }
}

#[derive(Default)]
pub struct Timers {
    tree: BTreeMap<TimerId, Token>,
    seq: u64,
}

impl Timers {
    pub fn add(&mut self, at: Instant, t: Token) -> TimerId {
        self.seq += 1;
        let id = TimerId(at, self.seq);
        self.tree.insert(id, t);
        id
    }

    pub fn cancel(&mut self, id: TimerId) {
        self.tree.remove(&id);
    }

    /// Arm `slot` for `at`: keep the existing timer if it is within `LAZY` of `at`.
    /// `slot` must have been cleared if its timer fired (see the module comment).
    pub fn rearm(&mut self, slot: &mut Option<TimerId>, at: Instant, t: Token) {
        if let Some(old) = *slot {
            let d = if old.0 > at { old.0 - at } else { at - old.0 };
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
        self.tree.keys().next().map(|id| id.0.saturating_duration_since(now))
    }

    /// The next expired timer, removed from the tree.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, Token)> {
        let (&id, _) = self.tree.iter().next()?;
        if id.0 > now {
            return None;
        }
        self.tree.remove(&id).map(|t| (id, t))
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
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
}
