//! Peer state in a shared memory zone (`upstream { zone NAME SIZE; }`,
//! ngx_stream_upstream_zone_module): with several workers, failures, connection counts
//! and round-robin weights are one state for all of them.
//!
//! A region per upstream: a lock word, a layout signature and one record per peer.
//! Each balancer call locks the region, loads the records into the worker's `PeerSet`,
//! runs, and stores them back. As in nginx, a reload starts the state afresh even when it
//! keeps the zone (nginx copies the peers into it anew); workers of the old
//! configuration then work on their own state.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::core::shm::{monotonic_ms, Shm, SpinGuard};

use super::health::HealthTable;
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
    /// The tables of the `health_check`s naming the upstream: a peer any of them holds
    /// unhealthy (or still checking) takes no clients.
    pub health: Vec<HealthTable>,
}

/// A signature of the peer list and the configuration it belongs to: every reload starts
/// the state afresh (nginx copies the peers into the zone anew), and within one
/// configuration a changed peer list (resolved addresses) does too.
fn signature(peers: &PeerSet, generation: u64) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    for p in peers.primary.iter().chain(&peers.backup) {
        h.update(p.name.as_bytes());
        h.update(&p.weight.to_le_bytes());
        h.update(&[p.down as u8]);
    }
    (h.finalize() as u64) << 32 | (peers.primary.len() + peers.backup.len()) as u64
}

/// Little-endian fields of records in shared memory (shared with `health`).
pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
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
    pub fn attach(shm: Rc<Shm>, offset: usize, peers: &PeerSet, generation: u64, now: Instant) -> Option<SharedPeers> {
        let n = peers.primary.len() + peers.backup.len();
        shm.bytes(offset, region_size(n))?;
        shm.lock_at(offset)?;
        let sp = SharedPeers { shm, offset, sig: signature(peers, generation), n, health: Vec::new() };
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
            p.hc_down = self.health.iter().any(|t| !t.passes_clients(i, p.name_hash));
        }
    }

    /// Run `f` on `peers` holding the zone's lock, with the shared state loaded before
    /// and stored after.
    pub fn with<R>(&self, peers: &mut PeerSet, now: Instant, f: impl FnOnce(&mut PeerSet) -> R) -> R {
        let Some(lock) = self.shm.lock_at(self.offset) else { return f(peers) };
        let _g = SpinGuard::lock(lock);
        let Some(b) = self.shm.bytes(self.offset, region_size(self.n)) else { return f(peers) };
        // Another worker already laid out a newer peer list (resolved addresses changed):
        // this call works on the local state alone until this worker catches up.
        if get_u64(b, 8) != self.sig {
            return f(peers);
        }
        self.read(b, peers, now);
        let r = f(peers);
        self.write(b, peers, now);
        r
    }
}

/// Addresses kept per `server ... resolve` line.
pub const MAX_RESOLVED: usize = 64;
const ENTRY: usize = 24;
const TABLE_HEADER: usize = 16;
const SERVER_HEADER: usize = 16;

/// The bytes the resolved-address table of `servers` resolvable lines needs.
pub fn table_size(servers: usize) -> usize {
    TABLE_HEADER + servers * (SERVER_HEADER + MAX_RESOLVED * ENTRY)
}

/// One resolved address of a `resolve` server line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
}

/// The addresses the `resolve` servers of one upstream have now, in the upstream's zone
/// so that every worker uses the same: a generation that changes with them, and per
/// server line the moment its next lookup is due (a worker claims a lookup by moving
/// that moment on, so one worker asks while the others wait for its answer).
pub struct ResolvedTable {
    shm: Rc<Shm>,
    /// The upstream region's lock.
    lock: usize,
    offset: usize,
    servers: usize,
    /// What the table is for (the upstream's resolvable lines): a reload that keeps
    /// them keeps their addresses; otherwise the new configuration starts the table
    /// afresh, and workers of the old one find it no longer theirs.
    sig: u64,
}

impl ResolvedTable {
    pub fn new(shm: Rc<Shm>, lock: usize, offset: usize, servers: usize, sig: u64) -> Option<ResolvedTable> {
        let t = ResolvedTable { shm, lock, offset, servers, sig };
        let _g = SpinGuard::lock(t.shm.lock_at(lock)?);
        let b = t.shm.bytes(offset, table_size(servers))?;
        if get_u64(b, 8) != sig {
            let g = get_u64(b, 0);
            b.fill(0);
            put_u64(b, 0, g.wrapping_add(1));
            put_u64(b, 8, sig);
        }
        drop(_g);
        Some(t)
    }

    fn locked<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let _g = SpinGuard::lock(self.shm.lock_at(self.lock)?);
        let b = self.shm.bytes(self.offset, table_size(self.servers))?;
        if get_u64(b, 8) != self.sig {
            return None;
        }
        Some(f(b))
    }

    fn server_at(s: usize) -> usize {
        TABLE_HEADER + s * (SERVER_HEADER + MAX_RESOLVED * ENTRY)
    }

    pub fn generation(&self) -> u64 {
        self.locked(|b| get_u64(b, 0)).unwrap_or(0)
    }

    /// The generation and every line's addresses.
    pub fn read(&self) -> (u64, Vec<Vec<Resolved>>) {
        self.locked(|b| {
            let lists = (0..self.servers)
                .map(|s| {
                    let at = Self::server_at(s);
                    let n = (get_u32(b, at + 8) as usize).min(MAX_RESOLVED);
                    (0..n).filter_map(|i| decode(&b[at + SERVER_HEADER + i * ENTRY..][..ENTRY])).collect()
                })
                .collect();
            (get_u64(b, 0), lists)
        })
        .unwrap_or_default()
    }

    /// Take the lookup of line `s` if it is due at `now_ms` (monotonic), holding it for
    /// `hold_ms`; otherwise when it is due.
    pub fn claim(&self, s: usize, now_ms: u64, hold_ms: u64) -> Result<(), u64> {
        self.locked(|b| {
            let at = Self::server_at(s);
            let due = get_u64(b, at);
            if due > now_ms {
                return Err(due);
            }
            put_u64(b, at, now_ms + hold_ms);
            Ok(())
        })
        .unwrap_or(Err(u64::MAX))
    }

    /// Store line `s`'s addresses (at most `MAX_RESOLVED`), if given, and when it is
    /// due again; the generation moves when the addresses changed.
    pub fn store(&self, s: usize, list: Option<&[Resolved]>, due_ms: u64) {
        self.locked(|b| {
            let at = Self::server_at(s);
            put_u64(b, at, due_ms);
            let Some(list) = list else { return };
            let list = &list[..list.len().min(MAX_RESOLVED)];
            let n = (get_u32(b, at + 8) as usize).min(MAX_RESOLVED);
            let old: Vec<Resolved> =
                (0..n).filter_map(|i| decode(&b[at + SERVER_HEADER + i * ENTRY..][..ENTRY])).collect();
            if old == list {
                return;
            }
            for (i, r) in list.iter().enumerate() {
                encode(r, &mut b[at + SERVER_HEADER + i * ENTRY..][..ENTRY]);
            }
            put_u32(b, at + 8, list.len() as u32);
            let g = get_u64(b, 0);
            put_u64(b, 0, g.wrapping_add(1));
        });
    }
}

fn encode(r: &Resolved, e: &mut [u8]) {
    e.fill(0);
    match r.addr.ip() {
        IpAddr::V4(ip) => {
            e[0] = 4;
            e[8..12].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            e[0] = 6;
            e[8..24].copy_from_slice(&ip.octets());
        }
    }
    e[1] = r.backup as u8;
    e[2..4].copy_from_slice(&r.addr.port().to_le_bytes());
    put_u32(e, 4, r.weight);
}

fn decode(e: &[u8]) -> Option<Resolved> {
    let port = u16::from_le_bytes([e[2], e[3]]);
    let ip = match e[0] {
        4 => IpAddr::from([e[8], e[9], e[10], e[11]]),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&e[8..24]);
            IpAddr::from(o)
        }
        _ => return None,
    };
    Some(Resolved { addr: SocketAddr::new(ip, port), weight: get_u32(e, 4).max(1), backup: e[1] != 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_claims_stores_and_counts_generations() {
        let shm = Rc::new(Shm::new(64 * 1024).unwrap());
        let t = ResolvedTable::new(shm.clone(), 0, 64, 2, 7).unwrap();
        let t2 = ResolvedTable::new(shm.clone(), 0, 64, 2, 7).unwrap();
        assert_eq!(t.generation(), 1);
        assert_eq!(t.claim(1, 1000, 500), Ok(()));
        assert_eq!(t2.claim(1, 1200, 500), Err(1500), "held by the first claimer");
        let list = vec![
            Resolved { addr: "10.0.0.1:80".parse().unwrap(), weight: 1, backup: false },
            Resolved { addr: "[::1]:8080".parse().unwrap(), weight: 5, backup: true },
        ];
        t.store(1, Some(&list), 5000);
        assert_eq!(t2.read(), (2, vec![vec![], list.clone()]));
        t.store(1, Some(&list), 6000);
        assert_eq!(t2.generation(), 2, "the same addresses: no new generation");
        assert_eq!(t2.claim(1, 5500, 100), Err(6000));
        t.store(1, None, 7000);
        assert_eq!(t2.read().1[1], list, "no answer keeps the addresses");
        let many: Vec<Resolved> = (0..100)
            .map(|i| Resolved { addr: SocketAddr::from(([10, 0, 1, i as u8], 80)), weight: 1, backup: false })
            .collect();
        t.store(0, Some(&many), 7000);
        assert_eq!(t2.read().1[0].len(), MAX_RESOLVED);
        // Another configuration's table in the same place: the old one's handles go dead.
        let t3 = ResolvedTable::new(shm, 0, 64, 1, 8).unwrap();
        assert_eq!(t3.read().1, vec![Vec::<Resolved>::new()]);
        assert_eq!(t.claim(0, 99_999, 1), Err(u64::MAX));
        t.store(0, Some(&list), 1);
        assert_eq!(t3.read().1, vec![Vec::<Resolved>::new()]);
    }
}
