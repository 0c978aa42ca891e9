//! `split_clients` (ngx_stream_split_clients_module), shaped like nginx's
//! stream_split_clients.t; the answers for 200 client addresses and the configuration
//! messages recorded from nginx 1.22.1 (`t/data/modules/`).

use crate::common::{connect, free_port, Sluice};
use std::io::Read;

mod conf {
    crate::map::conf_cases! {
        split_after_star, split_args, split_bad_name, split_bad_percent, split_builtin,
        split_nested_block, split_over_100, split_three_decimals, split_valid, split_zero,
        split_one_param,
    }
}

pub const CASES: &[&str] = {
    const ALL: [&str; 11] = [
        "split_after_star",
        "split_args",
        "split_bad_name",
        "split_bad_percent",
        "split_builtin",
        "split_nested_block",
        "split_over_100",
        "split_three_decimals",
        "split_valid",
        "split_zero",
        "split_one_param",
    ];
    &ALL
};

#[test]
fn cases_list_matches() {
    assert_eq!(&CASES[..conf::CASES.len()], conf::CASES);
}

#[test]
fn recorded_split_answers() {
    // $sc (0.5% .. 33.33% and "*"), $sc2 (exactly 100% without "*").
    crate::map::check_trace(&[1, 2]);
}

/// stream_split_clients.t: 20 sessions split on $connection.
#[test]
fn stream_split_clients_t() {
    let p = free_port();
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    split_clients $connection $variant {{
        51.2%  "first";
        10%    "second";
        *      "third";
    }}
    server {{
        listen  127.0.0.1:{p};
        return  $variant;
    }}
}}
"#
    ));
    let mut dist = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let mut c = connect(p);
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        *dist.entry(out).or_insert(0) += 1;
    }
    let got: Vec<String> = dist.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    assert_eq!(got.join(", "), "first: 12, second: 2, third: 6");
    drop(s);
}
