//! Peer state in a shared memory zone (`upstream { zone NAME SIZE; }`,
//! ngx_stream_upstream_zone_module): with several workers, failures, connection counts
//! and round-robin weights are one state for all of them.
//!
//! A region per upstream: a lock word, a layout signature and one record per peer.
//! Each balancer call locks the region, loads the records into the worker's `PeerSet`,
//! runs, and stores them back. A reload that keeps the zone (same name and size) and the
//! upstream's peers keeps their state; a changed peer list starts afresh.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::core::shm::{monotonic_ms, Shm, SpinGuard};

use super::{Peer, PeerSet};

const HEADER: usize = 24;
const RECORD: usize = 40;

/// The bytes one upstream's region needs.
pub fn region_size(peers: usize) -> usize {
    HEADER + RECORD * peers
}

pub struct SharedPeers {
    shm: Rc<Shm>,
    offset: usize,
    sig: u64,
    n: usize,
}

/// A signature of the peer list: a reload keeps state only for the same peers.
fn signature(peers: &PeerSet) -> u64 {
    let mut h = crc32fast::Hasher::new();
    for p in peers.primary.iter().chain(&peers.backup) {
        h.update(p.name.as_bytes());
        h.update(&p.weight.to_le_bytes());
        h.update(&[p.down as u8]);
    }
    (h.finalize() as u64) << 32 | (peers.primary.len() + peers.backup.len()) as u64
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// `Instant`s become monotonic milliseconds (+1, so 0 means none) in shared memory.
struct Clock {
    now: Instant,
    ms: u64,
}

impl Clock {
    fn ms_of(&self, t: Option<Instant>) -> u64 {
        match t {
            None => 0,
            Some(t) => self.ms.saturating_sub(self.now.saturating_duration_since(t).as_millis() as u64) + 1,
        }
    }

    fn instant_of(&self, v: u64) -> Option<Instant> {
        if v == 0 {
            return None;
        }
        let ago = self.ms.saturating_sub(v - 1);
        Some(self.now.checked_sub(Duration::from_millis(ago)).unwrap_or(self.now))
    }
}

impl SharedPeers {
    /// Attach `peers` to their region at `offset` of `shm`, initialising it when it holds
    /// another peer list (or nothing yet).
    pub fn attach(shm: Rc<Shm>, offset: usize, peers: &PeerSet, now: Instant) -> Option<SharedPeers> {
        let n = peers.primary.len() + peers.backup.len();
        shm.bytes(offset, region_size(n))?;
        shm.lock_at(offset)?;
        let sp = SharedPeers { shm, offset, sig: signature(peers), n };
        let _g = SpinGuard::lock(sp.shm.lock_at(offset)?);
        let b = sp.shm.bytes(offset, region_size(n))?;
        if get_u64(b, 8) != sp.sig {
            put_u64(b, 8, sp.sig);
            sp.write(b, peers, now);
        }
        drop(_g);
        Some(sp)
    }

    fn write(&self, b: &mut [u8], peers: &PeerSet, now: Instant) {
        let c = Clock { now, ms: monotonic_ms() };
        for (i, p) in peers.primary.iter().chain(&peers.backup).enumerate() {
            let at = HEADER + i * RECORD;
            put_u32(b, at, p.fails);
            put_u32(b, at + 4, p.conns);
            put_u64(b, at + 8, c.ms_of(p.checked));
            put_u64(b, at + 16, c.ms_of(p.accessed));
            put_u64(b, at + 24, p.current_weight as u64);
            put_u64(b, at + 32, p.effective_weight as u64);
        }
    }

    fn read(&self, b: &[u8], peers: &mut PeerSet, now: Instant) {
        let c = Clock { now, ms: monotonic_ms() };
        let all = peers.primary.iter_mut().chain(peers.backup.iter_mut());
        for (i, p) in all.enumerate().take(self.n) {
            let at = HEADER + i * RECORD;
            let p: &mut Peer = p;
            p.fails = get_u32(b, at);
            p.conns = get_u32(b, at + 4);
            p.checked = c.instant_of(get_u64(b, at + 8));
            p.accessed = c.instant_of(get_u64(b, at + 16));
            p.current_weight = get_u64(b, at + 24) as i64;
            p.effective_weight = get_u64(b, at + 32) as i64;
        }
    }

    /// Run `f` on `peers` holding the zone's lock, with the shared state loaded before
    /// and stored after.
    pub fn with<R>(&self, peers: &mut PeerSet, now: Instant, f: impl FnOnce(&mut PeerSet) -> R) -> R {
        let Some(lock) = self.shm.lock_at(self.offset) else { return f(peers) };
        let _g = SpinGuard::lock(lock);
        let Some(b) = self.shm.bytes(self.offset, region_size(self.n)) else { return f(peers) };
        self.read(b, peers, now);
        let r = f(peers);
        self.write(b, peers, now);
        r
    }
}
