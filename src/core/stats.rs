//! Counters for the metrics endpoint (`api`), in one shared mapping for every worker and
//! every configuration (nginx Plus keeps its statistics in shared memory too, and they
//! survive a reload when the names stay): a table of named slots of 64-bit counters,
//! found by kind and name, added to with atomic operations and no lock.
//!
//! The mapping is made on first use — by the process reading the configuration, before
//! it forks the workers — and only when the configuration has `api` or `status_zone`,
//! so a configuration without them pays for nothing.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::core::shm::{Shm, SpinGuard};

const ARENA: usize = 1 << 20;
const SLOT: usize = 256;
const SLOTS: usize = ARENA / SLOT;
/// Name bytes kept per slot (longer names are told apart by their hash).
const NAME: usize = 64;
/// Where a slot's counters start, and how many it has.
const COUNTERS_AT: usize = 80;
pub const COUNTERS: usize = (SLOT - COUNTERS_AT) / 8;

/// What a slot counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The process-wide counters (one slot, named "").
    Global = 1,
    /// A `status_zone`.
    ServerZone = 2,
    /// An upstream peer, named "UPSTREAM\0PEER".
    Peer = 3,
}

/// Counters of the global slot.
pub mod global {
    pub const ACCEPTED: usize = 0;
    pub const ACTIVE: usize = 1;
    pub const DROPPED: usize = 2;
}

/// Counters of a `status_zone` slot (nginx Plus's server zone fields).
pub mod zone {
    pub const PROCESSING: usize = 0;
    pub const CONNECTIONS: usize = 1;
    pub const SESSIONS_2XX: usize = 2;
    pub const SESSIONS_4XX: usize = 3;
    pub const SESSIONS_5XX: usize = 4;
    pub const SESSIONS_TOTAL: usize = 5;
    pub const DISCARDED: usize = 6;
    pub const RECEIVED: usize = 7;
    pub const SENT: usize = 8;
    pub const SSL_HANDSHAKES: usize = 9;
    pub const SSL_HANDSHAKES_FAILED: usize = 10;
    pub const SSL_SESSION_REUSES: usize = 11;
    pub const SSL_NO_COMMON_PROTOCOL: usize = 12;
    pub const SSL_NO_COMMON_CIPHER: usize = 13;
    pub const SSL_HANDSHAKE_TIMEOUT: usize = 14;
    pub const SSL_PEER_REJECTED_CERT: usize = 15;
    pub const SSL_NO_CERT: usize = 16;
    pub const SSL_EXPIRED_CERT: usize = 17;
    pub const SSL_REVOKED_CERT: usize = 18;
    pub const SSL_OTHER: usize = 19;
}

/// Counters of a peer slot (nginx Plus's upstream peer fields).
pub mod peer {
    pub const CONNECTIONS: usize = 0;
    pub const SENT: usize = 1;
    pub const RECEIVED: usize = 2;
    pub const FAILS: usize = 3;
    pub const UNAVAIL: usize = 4;
    /// Wall-clock milliseconds of the last time it was picked.
    pub const SELECTED: usize = 5;
    /// Sums (milliseconds) and counts for the average times nginx Plus reports.
    pub const CONNECT_TIME: usize = 6;
    pub const CONNECT_COUNT: usize = 7;
    pub const FIRST_BYTE_TIME: usize = 8;
    pub const FIRST_BYTE_COUNT: usize = 9;
    pub const RESPONSE_TIME: usize = 10;
    pub const RESPONSE_COUNT: usize = 11;
}

struct Arena {
    shm: Shm,
}

// SAFETY: a worker is single-threaded; the mapping is only reached through atomics and
// the arena's own spinlock.
unsafe impl Sync for Arena {}
unsafe impl Send for Arena {}

static ARENA_MAP: OnceLock<Option<Arena>> = OnceLock::new();

/// Map the arena (the configuration asks for statistics). Call before forking.
pub fn enable() {
    ARENA_MAP.get_or_init(|| Shm::new(ARENA).ok().map(|shm| Arena { shm }));
}

fn arena() -> Option<&'static Arena> {
    ARENA_MAP.get().and_then(|a| a.as_ref())
}

/// Whether statistics are being kept.
pub fn enabled() -> bool {
    arena().is_some()
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// A configuration was loaded (nginx Plus's `generation`: how many so far, the first
/// included). Workers see the count of the master that forked them.
pub fn next_generation() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// A slot of counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

impl Slot {
    fn counter(self, i: usize) -> Option<&'static AtomicU64> {
        let a = arena()?;
        if i >= COUNTERS {
            return None;
        }
        let at = self.0 * SLOT + COUNTERS_AT + i * 8;
        let b = a.shm.bytes(at, 8)?;
        // SAFETY: 8-byte aligned (slots and the counter area are), inside the mapping,
        // which lives as long as the process; AtomicU64 has u64's layout.
        Some(unsafe { &*(b.as_mut_ptr() as *const AtomicU64) })
    }

    pub fn add(self, i: usize, n: u64) {
        if let Some(c) = self.counter(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn sub(self, i: usize, n: u64) {
        if let Some(c) = self.counter(i) {
            // Never below zero (a count from an older configuration's workers).
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
        }
    }

    pub fn set(self, i: usize, v: u64) {
        if let Some(c) = self.counter(i) {
            c.store(v, Ordering::Relaxed);
        }
    }

    pub fn get(self, i: usize) -> u64 {
        self.counter(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

fn hash(kind: Kind, name: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind as u8]);
    h.update(name.as_bytes());
    h.finalize() | 1
}

/// The slot for `name` of `kind`, made on first use; None without statistics or when
/// the arena is full.
pub fn slot(kind: Kind, name: &str) -> Option<Slot> {
    let a = arena()?;
    let lock: &AtomicU32 = a.shm.lock_at(0)?;
    let _g = SpinGuard::lock(lock);
    let h = hash(kind, name);
    let key = &name.as_bytes()[..name.len().min(NAME)];
    // Slot 0 holds the lock; the others are probed from the hash on.
    for k in 0..SLOTS - 1 {
        let i = 1 + (h as usize + k) % (SLOTS - 1);
        let b = a.shm.bytes(i * SLOT, SLOT)?;
        let stored = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if stored == 0 {
            b[..4].copy_from_slice(&h.to_le_bytes());
            b[4] = kind as u8;
            b[5] = key.len() as u8;
            b[8..8 + key.len()].copy_from_slice(key);
            return Some(Slot(i));
        }
        if stored == h && b[4] == kind as u8 && &b[8..8 + b[5] as usize] == key {
            return Some(Slot(i));
        }
    }
    None
}

/// The process-wide counters.
pub fn global() -> Option<Slot> {
    static GLOBAL: OnceLock<Option<Slot>> = OnceLock::new();
    if !enabled() {
        return None;
    }
    *GLOBAL.get_or_init(|| slot(Kind::Global, ""))
}

/// The slot of peer `peer` of upstream `upstream`.
pub fn peer_slot(upstream: &str, peer: &str) -> Option<Slot> {
    slot(Kind::Peer, &format!("{}\0{}", upstream, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_found_again_by_name_and_count() {
        enable();
        let a = slot(Kind::ServerZone, "dns").expect("slot");
        let b = slot(Kind::ServerZone, "db").expect("slot");
        assert_ne!(a, b);
        assert_eq!(slot(Kind::ServerZone, "dns"), Some(a));
        assert_ne!(slot(Kind::Peer, "dns"), Some(a), "another kind, another slot");
        a.add(zone::CONNECTIONS, 3);
        a.sub(zone::PROCESSING, 5);
        assert_eq!(a.get(zone::CONNECTIONS), 3);
        assert_eq!(a.get(zone::PROCESSING), 0, "never below zero");
        assert_eq!(b.get(zone::CONNECTIONS), 0);
        let long = "x".repeat(100);
        let l = slot(Kind::ServerZone, &long).expect("long name");
        assert_eq!(slot(Kind::ServerZone, &long), Some(l));
    }
}
