//! nginx's smooth weighted round-robin (`ngx_stream_upstream_get_round_robin_peer`): the
//! default balancer, and the fallback group logic (primaries, then backups) others reuse.

use std::time::Instant;

use super::{Balancer, PeerId, PeerPick, PeerSet};

#[derive(Default)]
pub struct RoundRobin;

/// Pick from one group: highest `current_weight` after adding `effective_weight`.
fn get_peer(group: &mut [super::Peer], pick: &mut PeerPick, backup: bool, now: Instant) -> Option<PeerId> {
    let mut best: Option<(usize, i64)> = None;
    let mut total: i64 = 0;
    for (i, p) in group.iter_mut().enumerate() {
        if pick.tried.contains(i) || p.is_down() || p.is_failed(now) {
            continue;
        }
        if p.max_conns != 0 && p.conns >= p.max_conns {
            continue;
        }
        // (ngx_int_t sums: huge weights wrap as in nginx.)
        p.current_weight = p.current_weight.wrapping_add(p.effective_weight);
        total = total.wrapping_add(p.effective_weight);
        if p.effective_weight < p.weight {
            p.effective_weight += 1;
        }
        if best.is_none_or(|(_, w)| p.current_weight > w) {
            best = Some((i, p.current_weight));
        }
    }
    let (b, _) = best?;
    pick.tried.insert(b);
    let p = &mut group[b];
    p.current_weight = p.current_weight.wrapping_sub(total);
    if p.check_due(now) {
        p.checked = Some(now);
    }
    Some(PeerId { backup, index: b })
}

impl Balancer for RoundRobin {
    fn get(&mut self, peers: &mut PeerSet, pick: &mut PeerPick, _key: Option<&[u8]>, now: Instant) -> Option<PeerId> {
        let id = if peers.primary.len() == 1 && peers.backup.is_empty() && !pick.in_backup {
            // A single peer: nginx checks only `down` and `max_conns`.
            let p = &peers.primary[0];
            if p.is_down() || (p.max_conns != 0 && p.conns >= p.max_conns) {
                None
            } else {
                Some(PeerId { backup: false, index: 0 })
            }
        } else {
            let mut id = None;
            if !pick.in_backup {
                id = get_peer(&mut peers.primary, pick, false, now);
                if id.is_none() && !peers.backup.is_empty() {
                    pick.in_backup = true;
                    pick.tried.clear();
                }
            }
            if id.is_none() && pick.in_backup {
                id = get_peer(&mut peers.backup, pick, true, now);
            }
            id
        }?;
        if let Some(p) = peers.group(id.backup).get_mut(id.index) {
            p.conns += 1;
        }
        pick.current = Some(id);
        Some(id)
    }
}
