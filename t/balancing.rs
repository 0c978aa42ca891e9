//! Balancing decisions against traces recorded from nginx 1.22.1 (t/data/balancing):
//! the recorded `upstream {}` block is loaded through sluice's configuration code, and
//! the balancer must pick the same server as nginx for every connection or key.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;
use sluice::upstream::{new_balancer, Outcome, PeerPick, PeerSet};

use crate::common::{load_cycle, TempDir};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("t/data/balancing")
}

/// The upstream of a trace, built as sluice builds it from configuration text.
fn upstream(trace: &Value) -> sluice::upstream::UpstreamConf {
    let block = trace["upstream"].as_str().expect("upstream text");
    let name = block.split_whitespace().nth(1).expect("upstream name");
    let dir = TempDir::new("bal");
    let conf = format!(
        "events {{}}\nstream {{\n{block}\nserver {{ listen 127.0.0.1:1; proxy_pass {name}; }}\n}}\n",
        block = block,
        name = name
    );
    load_cycle(&dir, &conf).upstreams.into_iter().find(|u| u.name == name).expect("the upstream")
}

fn index_of(trace: &Value, peers: &PeerSet, id: sluice::upstream::PeerId) -> usize {
    let name = peers.peer(id).expect("peer").server.to_string();
    trace["servers"].as_array().expect("servers").iter().position(|s| s["name"] == name.as_str()).expect("known")
}

fn replay(file: &str) {
    let path = data_dir().join(file);
    let trace: Value = serde_json::from_slice(&std::fs::read(&path).expect("trace")).expect("json");
    let conf = upstream(&trace);
    let mut peers = PeerSet::new(&conf);
    let mut balancer = new_balancer(&conf, &peers);
    let picks: Vec<usize> =
        trace["picks"].as_array().expect("picks").iter().map(|v| v.as_u64().expect("index") as usize).collect();
    let keys: Vec<String> = match trace.get("keys") {
        Some(k) => k.as_array().expect("keys").iter().map(|v| v.as_str().expect("key").to_string()).collect(),
        None => vec![String::new(); picks.len()],
    };
    let now = Instant::now();
    let mut wrong = Vec::new();
    for (i, (key, want)) in keys.iter().zip(&picks).enumerate() {
        let mut pick = PeerPick { tries: peers.tries(), ..Default::default() };
        let k = (!key.is_empty()).then_some(key.as_bytes());
        let id = balancer.get(&mut peers, &mut pick, k, now).expect("a peer");
        let got = index_of(&trace, &peers, id);
        if got != *want {
            wrong.push(format!("#{} key {:?}: nginx {} sluice {}", i, key, want, got));
        }
        peers.release(&mut pick, Outcome::Ok, now);
    }
    assert!(
        wrong.is_empty(),
        "{}: {} of {} picks differ, first: {:?}",
        file,
        wrong.len(),
        picks.len(),
        &wrong[..wrong.len().min(5)]
    );
}

macro_rules! traces {
    ($($name:ident => $file:expr),* $(,)?) => {
        $( #[test] fn $name() { replay($file); } )*

        #[test]
        fn every_trace_is_replayed() {
            let listed = [$($file),*];
            for e in std::fs::read_dir(data_dir()).expect("dir").flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.ends_with(".json") {
                    assert!(listed.contains(&n.as_str()), "{} is not replayed", n);
                }
            }
        }
    };
}

traces! {
    rr_equal_3 => "rr-equal-3.json",
    rr_weights_5_1_1 => "rr-weights-5-1-1.json",
    rr_weights_huge => "rr-weights-huge.json",
    rr_weights_3_2_1_4 => "rr-weights-3-2-1-4.json",
    rr_down_4 => "rr-down-4.json",
    rr_backup => "rr-backup.json",
    rr_backup_weighted => "rr-backup-weighted.json",
    rr_mixed_10 => "rr-mixed-10.json",
    hash_equal_3 => "hash-equal-3.json",
    hash_weights_1_2_3_4_5 => "hash-weights-1-2-3-4-5.json",
    hash_mixed_10 => "hash-mixed-10.json",
    hash_down_5 => "hash-down-5.json",
    chash_equal_3 => "chash-equal-3.json",
    chash_weights_1_2_3_4_5 => "chash-weights-1-2-3-4-5.json",
    chash_mixed_10 => "chash-mixed-10.json",
    chash_down_5 => "chash-down-5.json",
}
