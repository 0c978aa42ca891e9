//! `least_conn` (ngx_stream_upstream_least_conn_module): the peer with the fewest
//! connections relative to its weight; ties go round-robin among the tied peers.

use std::time::Instant;

use super::round_robin::RoundRobin;
use super::{take, Balancer, Peer, PeerId, PeerPick, PeerSet, Tried};

pub struct LeastConn;

/// `a` has fewer connections per weight than `b` (compared as nginx does, crosswise, in
/// its unsigned word: huge weights wrap there as in nginx).
fn fewer(a: &Peer, b: &Peer) -> std::cmp::Ordering {
    let l = (a.conns as u64).wrapping_mul(b.weight as u64);
    let r = (b.conns as u64).wrapping_mul(a.weight as u64);
    l.cmp(&r)
}

fn pick_group(group: &mut [Peer], tried: &Tried, now: Instant) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut many = false;
    for (i, p) in group.iter().enumerate() {
        if tried.contains(i) || !p.usable(now) {
            continue;
        }
        match best {
            None => best = Some(i),
            Some(b) => match fewer(p, &group[b]) {
                std::cmp::Ordering::Less => {
                    best = Some(i);
                    many = false;
                }
                std::cmp::Ordering::Equal => many = true,
                std::cmp::Ordering::Greater => {}
            },
        }
    }
    let mut b = best?;
    if many {
        let first = b;
        let mut total: i64 = 0;
        for i in first..group.len() {
            if tried.contains(i) || !group[i].usable(now) || fewer(&group[i], &group[first]).is_ne() {
                continue;
            }
            let p = &mut group[i];
            p.current_weight = p.current_weight.wrapping_add(p.effective_weight);
            total = total.wrapping_add(p.effective_weight);
            if p.effective_weight < p.weight {
                p.effective_weight += 1;
            }
            if group[i].current_weight > group[b].current_weight {
                b = i;
            }
        }
        group[b].current_weight = group[b].current_weight.wrapping_sub(total);
    }
    Some(b)
}

impl Balancer for LeastConn {
    fn get(&mut self, peers: &mut PeerSet, pick: &mut PeerPick, key: Option<&[u8]>, now: Instant) -> Option<PeerId> {
        if peers.single() {
            return RoundRobin.get(peers, pick, key, now);
        }
        if !pick.in_backup {
            if let Some(i) = pick_group(&mut peers.primary, &pick.tried, now) {
                return Some(take(peers, pick, PeerId { backup: false, index: i }, now));
            }
            if peers.backup.is_empty() {
                return None;
            }
            pick.in_backup = true;
            pick.tried.clear();
        }
        let i = pick_group(&mut peers.backup, &pick.tried, now)?;
        Some(take(peers, pick, PeerId { backup: true, index: i }, now))
    }
}
