//! `hash KEY [consistent]` (ngx_stream_upstream_hash_module): Cache::Memcached-style
//! crc32 modulo with rehash on an unusable peer, and the Cache::Memcached::Fast ring
//! (160 points per weight unit) for `consistent` — the same server as nginx for a key.

use std::rc::Rc;
use std::time::Instant;

use super::round_robin::RoundRobin;
use super::{take, Balancer, PeerId, PeerPick, PeerSet};

/// After 20 unusable picks nginx falls back to round-robin.
const MAX_TRIES: u32 = 20;

pub struct Hash;

impl Balancer for Hash {
    fn get(&mut self, peers: &mut PeerSet, pick: &mut PeerPick, key: Option<&[u8]>, now: Instant) -> Option<PeerId> {
        let key = key.unwrap_or_default();
        if pick.balancer_tries > MAX_TRIES || peers.primary.len() < 2 || key.is_empty() || peers.total_weight == 0 {
            return RoundRobin.get(peers, pick, Some(key), now);
        }
        loop {
            // ((crc32([REHASH] KEY) >> 16) & 0x7fff) + PREV_HASH
            let mut h = crc32fast::Hasher::new();
            if pick.rehash > 0 {
                h.update(pick.rehash.to_string().as_bytes());
            }
            h.update(key);
            pick.hash = (pick.hash as u32).wrapping_add((h.finalize() >> 16) & 0x7fff) as u64;
            pick.rehash += 1;
            let mut w = pick.hash % peers.total_weight.max(1);
            let mut p = 0;
            while let Some(peer) = peers.primary.get(p) {
                if w < peer.weight as u64 {
                    break;
                }
                w -= peer.weight as u64;
                p += 1;
            }
            let ok = peers.primary.get(p).is_some_and(|peer| !pick.tried.contains(p) && peer.usable(now));
            if ok {
                return Some(take(peers, pick, PeerId { backup: false, index: p }, now));
            }
            pick.balancer_tries += 1;
            if pick.balancer_tries > MAX_TRIES {
                return RoundRobin.get(peers, pick, Some(key), now);
            }
        }
    }
}

/// The ring of `hash ... consistent`: points name a server (by index into `servers`),
/// and a server name may stand for several peers (a host with several addresses).
pub struct ConsistentHash {
    points: Vec<(u32, u32)>,
    /// The primary peers of each distinct server name.
    servers: Vec<Vec<usize>>,
}

/// Split a server name into the host and port nginx hashes ("unix:" paths have no port).
fn host_port(server: &str) -> (&str, &str) {
    if server.len() >= 5 && server[..5].eq_ignore_ascii_case("unix:") {
        return (&server[5..], "");
    }
    let digits = server.bytes().rev().take_while(|c| c.is_ascii_digit()).count();
    let at = server.len() - digits;
    if at > 0 && server.as_bytes()[at - 1] == b':' {
        return (&server[..at - 1], &server[at..]);
    }
    (server, "")
}

impl ConsistentHash {
    pub fn new(peers: &PeerSet) -> ConsistentHash {
        let mut names: Vec<Rc<str>> = Vec::new();
        let mut servers: Vec<Vec<usize>> = Vec::new();
        let mut points = Vec::new();
        for (i, peer) in peers.primary.iter().enumerate() {
            let sid = match names.iter().position(|n| *n == peer.server) {
                Some(s) => s,
                None => {
                    names.push(peer.server.clone());
                    servers.push(Vec::new());
                    names.len() - 1
                }
            };
            servers[sid].push(i);
            // crc32(HOST \0 PORT PREV_HASH), PREV_HASH as 4 little-endian bytes.
            let (host, port) = host_port(&peer.server);
            let mut base = crc32fast::Hasher::new();
            base.update(host.as_bytes());
            base.update(b"\0");
            base.update(port.as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..peer.weight * 160 {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                let hash = h.finalize();
                points.push((hash, sid as u32));
                prev = hash;
            }
        }
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        ConsistentHash { points, servers }
    }

    /// The first point at or after `hash` (may be one past the end: the lookup wraps).
    fn find(&self, hash: u32) -> usize {
        self.points.partition_point(|p| p.0 < hash)
    }
}

impl Balancer for ConsistentHash {
    fn get(&mut self, peers: &mut PeerSet, pick: &mut PeerPick, key: Option<&[u8]>, now: Instant) -> Option<PeerId> {
        let key = key.unwrap_or_default();
        if pick.balancer_tries > MAX_TRIES || peers.single() || key.is_empty() {
            return RoundRobin.get(peers, pick, Some(key), now);
        }
        if peers.primary.is_empty() || self.points.is_empty() {
            return None;
        }
        if !pick.started {
            pick.started = true;
            pick.hash = self.find(crc32fast::hash(key)) as u64;
        }
        loop {
            let sid = self.points[(pick.hash % self.points.len() as u64) as usize].1 as usize;
            let mut best: Option<(usize, i64)> = None;
            let mut total = 0;
            for &i in self.servers.get(sid).map(Vec::as_slice).unwrap_or_default() {
                let Some(p) = peers.primary.get_mut(i) else { continue };
                if pick.tried.contains(i) || !p.usable(now) {
                    continue;
                }
                p.current_weight += p.effective_weight;
                total += p.effective_weight;
                if p.effective_weight < p.weight {
                    p.effective_weight += 1;
                }
                if best.is_none_or(|(_, w)| p.current_weight > w) {
                    best = Some((i, p.current_weight));
                }
            }
            if let Some((i, _)) = best {
                peers.primary[i].current_weight -= total;
                return Some(take(peers, pick, PeerId { backup: false, index: i }, now));
            }
            pick.hash += 1;
            pick.balancer_tries += 1;
            if pick.balancer_tries > MAX_TRIES {
                return RoundRobin.get(peers, pick, Some(key), now);
            }
        }
    }
}

/// `ngx_stream_upstream_init_chash` allocates its ring of 160 points per weight unit at
/// configuration time, 16 bytes a point, and fails when it cannot: the same message when
/// that much is more than this machine's memory (sluice would fail building it too).
pub fn check_ring_size(conf: &crate::upstream::UpstreamConf) -> Result<(), String> {
    if !matches!(conf.method, crate::upstream::Method::Hash { consistent: true }) {
        return Ok(());
    }
    let weight: u128 =
        conf.servers.iter().filter(|s| !s.backup).map(|s| u128::from(s.weight) * s.addrs.len() as u128).sum();
    let size = weight * 160 * 16 + 8;
    if size > physical_memory() as u128 {
        return Err(format!("malloc({}) failed (12: Cannot allocate memory)", size));
    }
    Ok(())
}

fn physical_memory() -> u64 {
    // SAFETY: sysinfo fills the zeroed struct we pass.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return u64::MAX;
    }
    (si.totalram as u64).saturating_mul(u64::from(si.mem_unit.max(1)))
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn server_names_split_like_nginx() {
        assert_eq!(host_port("127.0.0.1:80"), ("127.0.0.1", "80"));
        assert_eq!(host_port("unix:/tmp/s"), ("/tmp/s", ""));
        assert_eq!(host_port("backend"), ("backend", ""));
        assert_eq!(host_port("[::1]:8080"), ("[::1]", "8080"));
    }
}
