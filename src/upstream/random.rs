//! `random [two [least_conn]]` (ngx_stream_upstream_random_module): a weighted random
//! peer, or the less loaded of two random peers.

use std::time::Instant;

use super::round_robin::RoundRobin;
use super::{take, Balancer, PeerId, PeerPick, PeerSet};

const MAX_TRIES: u32 = 20;

pub struct Random {
    /// Where each primary peer's share of the total weight starts.
    ranges: Vec<u64>,
    two: bool,
    state: u64,
}

impl Random {
    pub fn new(peers: &PeerSet, two: bool) -> Random {
        let mut ranges = Vec::with_capacity(peers.primary.len());
        let mut total = 0u64;
        for p in &peers.primary {
            ranges.push(total);
            total = total.wrapping_add(p.weight as u64);
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            ^ ((crate::core::process::pid() as u64) << 32);
        Random { ranges, two, state: seed | 1 }
    }

    /// xorshift64*, cut to the 31 bits of random(3) that nginx's ngx_random() gives: with a
    /// total weight of 2^31 or more nginx never lands past 2^31, and neither does this.
    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33
    }

    /// A peer index drawn with probability proportional to weight.
    fn peek(&mut self, total: u64) -> usize {
        let x = self.next() % total.max(1);
        self.ranges.partition_point(|&r| r <= x).saturating_sub(1)
    }
}

impl Balancer for Random {
    fn get(&mut self, peers: &mut PeerSet, pick: &mut PeerPick, key: Option<&[u8]>, now: Instant) -> Option<PeerId> {
        if pick.balancer_tries > MAX_TRIES || peers.primary.len() < 2 || self.ranges.len() != peers.primary.len() {
            return RoundRobin.get(peers, pick, key, now);
        }
        let mut prev: Option<usize> = None;
        loop {
            let i = self.peek(peers.total_weight);
            let usable = prev != Some(i) && !pick.tried.contains(i) && peers.primary[i].usable(now);
            if usable {
                if !self.two {
                    return Some(take(peers, pick, PeerId { backup: false, index: i }, now));
                }
                match prev {
                    None => prev = Some(i),
                    Some(p) => {
                        let (a, b) = (&peers.primary[i], &peers.primary[p]);
                        let chosen = if a.conns as i64 * b.weight > b.conns as i64 * a.weight { p } else { i };
                        return Some(take(peers, pick, PeerId { backup: false, index: chosen }, now));
                    }
                }
            }
            pick.balancer_tries += 1;
            if pick.balancer_tries > MAX_TRIES {
                return RoundRobin.get(peers, pick, key, now);
            }
        }
    }
}
