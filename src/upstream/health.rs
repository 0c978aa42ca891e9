//! Active health check verdicts in an upstream's shared memory zone (nginx Plus's
//! ngx_stream_upstream_hc_module keeps them in the zone too): one table per
//! `health_check` directive naming the upstream, one record per peer, so that every
//! worker skips the same unhealthy peers and one worker checks a peer at a time.
//!
//! A record belongs to the peer whose name hash it holds; a record of another peer (the
//! peer list changed: a reload, resolved addresses) counts as never checked — "checking"
//! with `mandatory`, healthy without. All access is under the upstream region's lock.

use std::rc::Rc;

use crate::core::shm::{Shm, SpinGuard};

use super::zone::{get_u32, get_u64, put_u32, put_u64};

const HEADER: usize = 16;
const RECORD: usize = 64;
const MAGIC: u32 = 0x6863_7462; // "hctb"

/// The bytes a table for `peers` peers needs (a multiple of 8).
pub fn table_size(peers: usize) -> usize {
    HEADER + RECORD * peers
}

/// A peer's state under one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Unhealthy,
    /// `mandatory`: not checked yet, no client is passed to it.
    Checking,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::Up => 1,
            State::Unhealthy => 2,
            State::Checking => 3,
        }
    }

    fn of(code: u8) -> Option<State> {
        match code {
            1 => Some(State::Up),
            2 => Some(State::Unhealthy),
            3 => Some(State::Checking),
            _ => None,
        }
    }
}

/// What a finished check changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

/// A peer's check counters (for the metrics endpoint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub checks: u64,
    pub fails: u64,
    pub unhealthy: u64,
    /// The last check passed (None before the first).
    pub last_passed: Option<bool>,
    /// Milliseconds spent unhealthy or checking, the current spell included.
    pub downtime: u64,
    /// When the current spell began (wall-clock ms), if the peer is down now.
    pub downstart: Option<u64>,
}

/// The wall clock in milliseconds (downtime is reported in it).
fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

// Record layout: name hash u32 @0, state u8 @4, last passed u8 @5 (0 none, 1 yes, 2 no),
// due (monotonic ms) u64 @8, consecutive fails u32 @16, consecutive passes u32 @20,
// checks u64 @24, fails u64 @32, times found unhealthy u64 @40, down since (wall ms, 0
// when up) u64 @48, downtime before it (ms) u64 @56.

/// One check's table: where it is and what it is for.
#[derive(Clone)]
pub struct HealthTable {
    shm: Rc<Shm>,
    /// The upstream region's lock.
    lock: usize,
    offset: usize,
    n: usize,
    /// The configuration the table belongs to: a table of another one is laid out anew.
    sig: u64,
    pub mandatory: bool,
}

impl HealthTable {
    /// Attach to (or lay out) the table at `offset` for peers named by `hashes`. A
    /// table of another configuration is laid out anew; with `persistent`, a peer it
    /// held as healthy starts healthy (nginx Plus's `mandatory persistent` after a reload).
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        shm: Rc<Shm>,
        lock: usize,
        offset: usize,
        hashes: &[u32],
        capacity: usize,
        sig: u64,
        mandatory: bool,
        persistent: bool,
    ) -> Option<HealthTable> {
        let t = HealthTable { shm, lock, offset, n: capacity, sig, mandatory };
        let _g = SpinGuard::lock(t.shm.lock_at(lock)?);
        let b = t.shm.bytes(offset, table_size(capacity))?;
        if get_u32(b, 0) == MAGIC && get_u64(b, 8) == sig {
            return Some(t.clone());
        }
        let healthy_before: Vec<u32> = if persistent && get_u32(b, 0) == MAGIC {
            let old = (get_u32(b, 4) as usize).min(capacity);
            (0..old)
                .map(|i| HEADER + i * RECORD)
                .filter(|&at| State::of(b[at + 4]) == Some(State::Up))
                .map(|at| get_u32(b, at))
                .collect()
        } else {
            Vec::new()
        };
        b.fill(0);
        put_u32(b, 0, MAGIC);
        put_u32(b, 4, hashes.len().min(capacity) as u32);
        put_u64(b, 8, sig);
        for (i, &h) in hashes.iter().take(capacity).enumerate() {
            let at = HEADER + i * RECORD;
            put_u32(b, at, h);
            let state = if mandatory && !healthy_before.contains(&h) { State::Checking } else { State::Up };
            b[at + 4] = state.code();
            if state == State::Checking {
                put_u64(b, at + 48, wall_ms());
            }
        }
        drop(_g);
        Some(t)
    }

    /// Run `f` on the table's bytes under the lock (None if the table is another
    /// configuration's now).
    fn locked<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let _g = SpinGuard::lock(self.shm.lock_at(self.lock)?);
        let b = self.shm.bytes(self.offset, table_size(self.n))?;
        if get_u32(b, 0) != MAGIC || get_u64(b, 8) != self.sig {
            return None;
        }
        Some(f(b))
    }

    /// The record of peer `i` named by `hash`, made afresh if it held another peer.
    fn record(&self, b: &mut [u8], i: usize, hash: u32) -> usize {
        let at = HEADER + i * RECORD;
        if get_u32(b, at) != hash || State::of(b[at + 4]).is_none() {
            b[at..at + RECORD].fill(0);
            put_u32(b, at, hash);
            b[at + 4] = if self.mandatory { State::Checking } else { State::Up }.code();
            if self.mandatory {
                put_u64(b, at + 48, wall_ms());
            }
        }
        at
    }

    /// Whether peer `i` (named by `hash`) may take clients, read with the upstream
    /// region's lock already held (the balancer's call).
    pub fn passes_clients(&self, i: usize, hash: u32) -> bool {
        if i >= self.n {
            return true;
        }
        let Some(b) = self.shm.bytes(self.offset, table_size(self.n)) else { return true };
        if get_u32(b, 0) != MAGIC || get_u64(b, 8) != self.sig {
            return true;
        }
        let at = HEADER + i * RECORD;
        match State::of(b[at + 4]).filter(|_| get_u32(b, at) == hash) {
            Some(s) => s == State::Up,
            None => !self.mandatory,
        }
    }

    /// Take peer `i`'s check if it is due at `now_ms`, holding it for `hold_ms`.
    pub fn claim(&self, i: usize, hash: u32, now_ms: u64, hold_ms: u64) -> bool {
        if i >= self.n {
            return false;
        }
        self.locked(|b| {
            let at = self.record(b, i, hash);
            if get_u64(b, at + 8) > now_ms {
                return false;
            }
            put_u64(b, at + 8, now_ms + hold_ms);
            true
        })
        .unwrap_or(false)
    }

    /// Record a finished check of peer `i` and when the next one is due; the peer turns
    /// unhealthy after `fails` failures in a row and healthy after `passes` passes in a
    /// row (the first check of a peer still "checking" decides at once).
    pub fn store(&self, i: usize, hash: u32, passed: bool, fails: u32, passes: u32, due_ms: u64) -> Change {
        if i >= self.n {
            return Change::None;
        }
        self.locked(|b| {
            let at = self.record(b, i, hash);
            put_u64(b, at + 8, due_ms);
            put_u64(b, at + 24, get_u64(b, at + 24) + 1);
            let state = State::of(b[at + 4]).unwrap_or(State::Up);
            let (mut f, mut p) = (get_u32(b, at + 16), get_u32(b, at + 20));
            let change = if passed {
                f = 0;
                p = p.saturating_add(1);
                b[at + 5] = 1;
                if state != State::Up && (p >= passes || state == State::Checking) {
                    b[at + 4] = State::Up.code();
                    let since = get_u64(b, at + 48);
                    if since > 0 {
                        put_u64(b, at + 56, get_u64(b, at + 56) + wall_ms().saturating_sub(since));
                        put_u64(b, at + 48, 0);
                    }
                    Change::BecameHealthy
                } else {
                    Change::None
                }
            } else {
                p = 0;
                f = f.saturating_add(1);
                b[at + 5] = 2;
                put_u64(b, at + 32, get_u64(b, at + 32) + 1);
                if state != State::Unhealthy && (f >= fails || state == State::Checking) {
                    b[at + 4] = State::Unhealthy.code();
                    if get_u64(b, at + 48) == 0 {
                        put_u64(b, at + 48, wall_ms());
                    }
                    put_u64(b, at + 40, get_u64(b, at + 40) + 1);
                    Change::BecameUnhealthy
                } else {
                    Change::None
                }
            };
            put_u32(b, at + 16, f);
            put_u32(b, at + 20, p);
            change
        })
        .unwrap_or(Change::None)
    }

    /// The earliest moment (monotonic ms) a check of one of `peers` is due.
    pub fn next_due(&self, peers: &[usize]) -> Option<u64> {
        self.locked(|b| peers.iter().filter(|&&i| i < self.n).map(|&i| get_u64(b, HEADER + i * RECORD + 8)).min())
            .flatten()
    }

    /// Peer `i`'s state and counters.
    pub fn stats(&self, i: usize, hash: u32) -> Option<(State, Stats)> {
        if i >= self.n {
            return None;
        }
        self.locked(|b| {
            let at = self.record(b, i, hash);
            let since = get_u64(b, at + 48);
            let current = if since > 0 { wall_ms().saturating_sub(since) } else { 0 };
            let stats = Stats {
                downtime: get_u64(b, at + 56) + current,
                downstart: (since > 0).then_some(since),
                checks: get_u64(b, at + 24),
                fails: get_u64(b, at + 32),
                unhealthy: get_u64(b, at + 40),
                last_passed: match b[at + 5] {
                    1 => Some(true),
                    2 => Some(false),
                    _ => None,
                },
            };
            (State::of(b[at + 4]).unwrap_or(State::Up), stats)
        })
    }
}

/// The hash a peer's records are kept under (its name, as "127.0.0.1:80").
pub fn name_hash(name: &str) -> u32 {
    crc32fast::hash(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_fails_and_passes_in_a_row() {
        let shm = Rc::new(Shm::new(64 * 1024).unwrap());
        let (a, b) = (name_hash("10.0.0.1:80"), name_hash("10.0.0.2:80"));
        let t = HealthTable::attach(shm.clone(), 0, 64, &[a, b], 4, 1, false, false).unwrap();
        assert!(t.passes_clients(0, a) && t.passes_clients(1, b), "healthy until checked");
        assert!(t.claim(0, a, 1000, 500));
        assert!(!t.claim(0, a, 1200, 500), "another worker holds it");
        assert_eq!(t.store(0, a, false, 2, 1, 2000), Change::None, "one failure of two");
        assert!(t.passes_clients(0, a));
        assert!(!t.claim(0, a, 1999, 500), "not due before the interval");
        assert!(t.claim(0, a, 2000, 500));
        assert_eq!(t.store(0, a, false, 2, 1, 3000), Change::BecameUnhealthy);
        assert!(!t.passes_clients(0, a));
        assert_eq!(t.store(0, a, false, 2, 1, 4000), Change::None, "already unhealthy");
        assert_eq!(t.store(0, a, true, 2, 1, 5000), Change::BecameHealthy);
        assert!(t.passes_clients(0, a));
        let (state, stats) = t.stats(0, a).unwrap();
        assert_eq!(state, State::Up);
        assert_eq!((stats.checks, stats.fails, stats.unhealthy, stats.last_passed), (4, 3, 1, Some(true)));
        assert_eq!(stats.downstart, None, "up again");
        assert!(stats.downtime < 60_000, "{:?}", stats);
        assert_eq!(t.next_due(&[0, 1]), Some(0), "peer 1 was never checked");
        // Another peer in the same place (the peer list changed) starts afresh.
        let c = name_hash("10.0.0.3:80");
        assert!(t.passes_clients(0, c));
        assert_eq!(t.stats(0, c).unwrap().1, Stats::default());
        // Down: its spell is counted from when it began.
        assert_eq!(t.store(1, b, false, 1, 1, 0), Change::BecameUnhealthy);
        let s1 = t.stats(1, b).unwrap().1;
        assert!(s1.downstart.is_some_and(|d| d > 1_700_000_000_000), "{:?}", s1);
    }

    #[test]
    fn mandatory_checks_first_and_persistent_keeps_healthy_peers() {
        let shm = Rc::new(Shm::new(64 * 1024).unwrap());
        let (a, b) = (name_hash("a:1"), name_hash("b:1"));
        let t = HealthTable::attach(shm.clone(), 0, 64, &[a, b], 2, 1, true, false).unwrap();
        assert!(!t.passes_clients(0, a) && !t.passes_clients(1, b), "checking");
        assert_eq!(t.store(0, a, true, 1, 3, 100), Change::BecameHealthy, "the first check decides");
        assert_eq!(t.store(1, b, false, 3, 1, 100), Change::BecameUnhealthy);
        // A reload (another signature): with persistent, the healthy peer stays up.
        let t2 = HealthTable::attach(shm.clone(), 0, 64, &[b, a], 2, 2, true, true).unwrap();
        assert!(t2.passes_clients(1, a), "was healthy before the reload");
        assert!(!t2.passes_clients(0, b), "was not");
        assert!(t.next_due(&[0, 1]).is_none(), "the old configuration's handle is dead");
        let t3 = HealthTable::attach(shm, 0, 64, &[a], 2, 3, true, false).unwrap();
        assert!(!t3.passes_clients(0, a), "without persistent: checking again");
    }
}
