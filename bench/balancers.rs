//! Cost of one pick + release per balancer at 2, 16 and 256 peers.
//!
//!     cargo bench --bench balancers
//!
//! Each figure is the median of 7 rounds of 200,000 pick+release pairs on one core,
//! with distinct hash keys cycling through 1,024 client addresses.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice::core::addr::Addr;
use sluice::upstream::{new_balancer, Method, Outcome, PeerPick, PeerSet, UpstreamConf, UpstreamServer};

fn conf(method: Method, n: usize) -> UpstreamConf {
    let servers = (0..n)
        .map(|i| {
            let addr = Addr::Inet(format!("127.0.{}.{}:{}", i / 250, 1 + i % 250, 8000 + i).parse().expect("addr"));
            let mut s = UpstreamServer::new(addr.to_string(), vec![addr]);
            s.weight = 1 + (i % 5) as u64;
            s
        })
        .collect();
    UpstreamConf { name: "bench".into(), servers, method, ..Default::default() }
}

fn round(method: &Method, n: usize, iters: usize, keys: &[Vec<u8>]) -> Duration {
    let c = conf(method.clone(), n);
    let mut peers = PeerSet::new(&c);
    let mut b = new_balancer(&c, &peers);
    let now = Instant::now();
    let start = Instant::now();
    for i in 0..iters {
        let mut p = PeerPick { tries: peers.tries(), ..Default::default() };
        let key = keys[i % keys.len()].as_slice();
        let id = b.get(&mut peers, &mut p, Some(key), now);
        black_box(id);
        peers.release(&mut p, Outcome::Ok, now);
    }
    start.elapsed()
}

fn main() {
    let keys: Vec<Vec<u8>> = (0..1024).map(|i| format!("10.0.{}.{}", i / 256, i % 256).into_bytes()).collect();
    let methods = [
        ("round-robin", Method::RoundRobin),
        ("hash", Method::Hash { consistent: false }),
        ("hash consistent", Method::Hash { consistent: true }),
        ("least_conn", Method::LeastConn),
        ("random", Method::Random { two: false }),
        ("random two", Method::Random { two: true }),
    ];
    let iters = 200_000;
    println!("| balancer | 2 peers | 16 peers | 256 peers |");
    println!("|---|---|---|---|");
    for (name, m) in &methods {
        let mut row = format!("| {} |", name);
        for n in [2, 16, 256] {
            let mut ns: Vec<f64> = (0..7).map(|_| round(m, n, iters, &keys).as_nanos() as f64 / iters as f64).collect();
            ns.sort_by(|a, b| a.total_cmp(b));
            row.push_str(&format!(" {:.0} ns |", ns[3]));
        }
        println!("{}", row);
    }
}
