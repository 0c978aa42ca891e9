//! Upstreams through the binary: balancing order, hash by client address (clients bind
//! distinct 127.0.0.x sources), failover to the next peer, backup, max_conns,
//! least_conn, and proxy_next_upstream limits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::common::*;

/// A backend that sends `id` on accept and then holds the connection until the client
/// closes it.
fn named_backend(id: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = c.write_all(id.as_bytes());
                let mut b = [0u8; 64];
                while matches!(c.read(&mut b), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// A port with nothing listening (connect is refused).
fn dead_port() -> u16 {
    free_port()
}

/// Connect from `src` (any 127/8 address) and read the backend's id.
fn ask_from(src: &str, port: u16) -> String {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{}:0", src).parse().expect("src");
    s.bind(&local.into()).expect("bind source");
    let dst: SocketAddr = format!("127.0.0.1:{}", port).parse().expect("dst");
    s.connect_timeout(&dst.into(), Duration::from_secs(5)).expect("connect");
    let mut c: TcpStream = s.into();
    read_id(&mut c)
}

fn read_id(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(n) => String::from_utf8_lossy(&b[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

fn ask(port: u16) -> String {
    ask_from("127.0.0.1", port)
}

/// Hold a connection open and return it with the id that answered.
fn hold(port: u16) -> (TcpStream, String) {
    let mut c = connect(port);
    let id = read_id(&mut c);
    (c, id)
}

#[test]
fn weighted_round_robin_order_is_nginx_s() {
    let (a, b, c) = (named_backend("a"), named_backend("b"), named_backend("c"));
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ upstream u {{ server 127.0.0.1:{a} weight=5; server 127.0.0.1:{b}; \
         server 127.0.0.1:{c}; }} server {{ listen 127.0.0.1:{p}; proxy_pass u; }} }}"
    ));
    let got: String = (0..14).map(|_| ask(p)).collect();
    // t/data/balancing/rr-weights-5-1-1.json: 0 0 1 0 2 0 0, repeating.
    assert_eq!(got, "aabacaaaabacaa");
    drop(s);
}

/// A server may name an upstream defined further down, in any letter case (nginx
/// resolves `proxy_pass NAME` when the stream block ends; names compare without case).
#[test]
fn proxy_pass_names_an_upstream_defined_later_in_other_case() {
    let (a, b) = (named_backend("a"), named_backend("b"));
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p}; proxy_pass Later; }} \
         upstream later {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }} }}"
    ));
    let got: String = (0..4).map(|_| ask(p)).collect();
    assert_eq!(got, "abab");
    drop(s);
}

/// `proxy_pass $var` looks for a configured upstream of the value's name first, an
/// address literal too (nginx's ngx_stream_proxy_handler: an `upstream 127.0.0.2 {}`
/// named after a VIP, or the group another server's `proxy_pass host:port` made), and
/// only then connects to the literal; and `unix:` is a prefix in any case, as
/// ngx_parse_url takes it, the peer named as written (side by side with nginx 1.22.1:
/// "ab", the unix answer, and `UNIX:/...` in `$upstream_addr`).
#[test]
fn proxy_pass_variable_literal_finds_its_upstream() {
    let (a, b) = (named_backend("a"), named_backend("b"));
    let (p, q, r, t, v) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let dir = TempDir::new("unixcase");
    let sock = dir.join("u.sock");
    let sock = sock.display();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ upstream 127.0.0.2 {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }} \
         upstream w {{ server uNiX:{sock}; }} \
         log_format u $upstream_addr; access_log %%PREFIX%%u.log u; \
         server {{ listen 127.0.0.1:{p}; set $u 127.0.0.2; proxy_pass $u; access_log off; }} \
         server {{ listen 127.0.0.1:{q}; proxy_pass UNIX:{sock}; }} \
         server {{ listen 127.0.0.1:{r}; set $v Unix:{sock}; proxy_pass $v; }} \
         server {{ listen 127.0.0.1:{t}; proxy_pass w; }} \
         server {{ listen 127.0.0.1:{v}; set $v UnIx:{sock}.none; proxy_pass $v; }} \
         server {{ listen unix:{sock}; return \"unix\\n\"; access_log off; }} }}"
    ));
    let got: String = (0..2).map(|_| ask(p)).collect();
    assert_eq!(got, "ab");
    for (i, port) in [q, r, t].into_iter().enumerate() {
        let mut out = Vec::new();
        connect(port).read_to_end(&mut out).ok();
        assert_eq!(out, b"unix\n");
        s.wait_lines("u.log", i + 1);
    }
    let mut out = Vec::new();
    connect(v).read_to_end(&mut out).ok();
    let names = s.wait_lines("u.log", 4);
    // (`Unix:` in the variable finds the group `proxy_pass UNIX:` made, as in nginx.)
    let want = [format!("UNIX:{sock}"), format!("UNIX:{sock}"), format!("uNiX:{sock}"), format!("UnIx:{sock}.none")];
    assert_eq!(names, want);
    drop(s);
}

/// The same address in several `proxy_pass` lines is one implicit group (one set of
/// peer state, as nginx's `ngx_stream_upstream_add`), IPv6 in brackets too.
#[test]
fn same_proxy_pass_address_is_one_implicit_group() {
    let dir = TempDir::new("implicit");
    let cycle = load_cycle(
        &dir,
        "events {} stream { \
         server { listen 127.0.0.1:1; proxy_pass [::1]:7; } server { listen 127.0.0.1:2; proxy_pass [::1]:7; } \
         server { listen 127.0.0.1:3; proxy_pass 127.0.0.1:7; } server { listen 127.0.0.1:4; proxy_pass 127.0.0.1:7; } \
         server { listen 127.0.0.1:5; proxy_pass [::1]:8; } }",
    );
    let mut names: Vec<&str> = cycle.upstreams.iter().map(|u| u.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["127.0.0.1:7", "[::1]:7", "[::1]:8"]);
}

/// Which backend sluice's own library says a key goes to, for the same upstream text.
fn predicted(upstream: &str, keys: &[String]) -> Vec<String> {
    use sluice::upstream::{new_balancer, Outcome, PeerPick, PeerSet};
    let dir = TempDir::new("pred");
    let cycle = load_cycle(
        &dir,
        &format!("events {{}} stream {{ {} server {{ listen 127.0.0.1:1; proxy_pass u; }} }}", upstream),
    );
    let conf = cycle.upstreams.iter().find(|u| u.name == "u").expect("u").clone();
    let mut peers = PeerSet::new(&conf);
    let mut bal = new_balancer(&conf, &peers);
    let now = std::time::Instant::now();
    keys.iter()
        .map(|k| {
            let mut pick = PeerPick { tries: peers.tries(), ..Default::default() };
            let id = bal.get(&mut peers, &mut pick, Some(k.as_bytes()), now).expect("peer");
            let name = peers.peer(id).expect("peer").name.to_string();
            peers.release(&mut pick, Outcome::Ok, now);
            name
        })
        .collect()
}

fn hash_through_binary(method: &str) {
    let ids = ["a", "b", "c", "d"];
    let ports: Vec<u16> = ids.iter().map(|id| named_backend(id)).collect();
    let servers: String =
        ports.iter().enumerate().map(|(i, p)| format!("server 127.0.0.1:{} weight={};", p, i + 1)).collect();
    let upstream = format!("upstream u {{ {} {} }}", method, servers);
    let p = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ {} server {{ listen 127.0.0.1:{}; proxy_pass u; }} }}",
        upstream, p
    ));
    let keys: Vec<String> = (1..=60).map(|i| format!("127.0.{}.{}", i / 50, 1 + i % 50)).collect();
    let want = predicted(&upstream, &keys);
    let mut spread = std::collections::HashSet::new();
    for (k, w) in keys.iter().zip(&want) {
        let got = ask_from(k, p);
        let i = ids.iter().position(|x| *x == got).unwrap_or_else(|| panic!("no answer for {}", k));
        assert_eq!(format!("127.0.0.1:{}", ports[i]), *w, "key {}", k);
        spread.insert(got);
    }
    assert!(spread.len() >= 3, "keys should spread over the servers: {:?}", spread);
}

#[test]
fn hash_remote_addr_through_binary() {
    hash_through_binary("hash $remote_addr;");
}

#[test]
fn consistent_hash_remote_addr_through_binary() {
    hash_through_binary("hash $remote_addr consistent;");
}

#[test]
fn failover_lists_every_tried_peer_and_disables_the_dead_one() {
    let dead = dead_port();
    let live = named_backend("live");
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format u '$upstream_addr|$status'; \
         upstream u {{ server 127.0.0.1:{dead}; server 127.0.0.1:{live}; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass u; access_log %%PREFIX%%u.log u; }} }}"
    ));
    // Each session is over (logged) before the next: its place in the log is its turn.
    for i in 1..=4 {
        assert_eq!(ask(p), "live");
        s.wait_lines("u.log", i);
    }
    let lines = s.wait_lines("u.log", 4);
    assert_eq!(lines[0], format!("127.0.0.1:{dead}, 127.0.0.1:{live}|200"));
    // max_fails=1 took the dead peer out for fail_timeout: the rest go straight to live.
    for l in &lines[1..] {
        assert_eq!(*l, format!("127.0.0.1:{live}|200"));
    }
    let log = s.error_log();
    assert!(log.contains("connect() failed (111: Connection refused) while connecting to upstream"), "{}", log);
    assert!(log.contains("[warn]") && log.contains("upstream server temporarily disabled"), "{}", log);
}

#[test]
fn all_peers_dead_is_502_then_no_live_upstreams() {
    let (d1, d2) = (dead_port(), dead_port());
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format u '$upstream_addr|$status'; \
         upstream u {{ server 127.0.0.1:{d1}; server 127.0.0.1:{d2}; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass u; access_log %%PREFIX%%u.log u; }} }}"
    ));
    assert_eq!(ask(p), "");
    assert_eq!(ask(p), "");
    let lines = s.wait_lines("u.log", 2);
    assert_eq!(lines[0], format!("127.0.0.1:{d1}, 127.0.0.1:{d2}|502"));
    // Both peers are now out for fail_timeout: nginx logs "no live upstreams" and the
    // state names the upstream.
    assert_eq!(lines[1], "u|502");
    assert!(s.error_log().contains("no live upstreams while connecting to upstream"), "{}", s.error_log());
}

#[test]
fn backup_serves_only_when_primaries_are_out() {
    let dead = dead_port();
    let (b, a) = (named_backend("backup"), named_backend("a"));
    let p = free_port();
    let q = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ \
         upstream u {{ server 127.0.0.1:{dead}; server 127.0.0.1:{b} backup; }} \
         upstream v {{ server 127.0.0.1:{a}; server 127.0.0.1:{b} backup; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass u; }} server {{ listen 127.0.0.1:{q}; proxy_pass v; }} }}"
    ));
    assert_eq!(ask(p), "backup");
    for _ in 0..3 {
        assert_eq!(ask(q), "a", "the backup is idle while a primary is up");
    }
}

#[test]
fn max_conns_moves_on_then_refuses() {
    let (a, b) = (named_backend("a"), named_backend("b"));
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ upstream u {{ server 127.0.0.1:{a} max_conns=1; server 127.0.0.1:{b} max_conns=1; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass u; }} }}"
    ));
    let (_c1, id1) = hold(p);
    let (_c2, id2) = hold(p);
    let mut got = vec![id1, id2];
    got.sort();
    assert_eq!(got, ["a", "b"]);
    assert_eq!(ask(p), "", "both peers are at max_conns");
    assert!(s.error_log().contains("no live upstreams"), "{}", s.error_log());
}

#[test]
fn least_conn_prefers_the_idle_peer() {
    let (a, b) = (named_backend("a"), named_backend("b"));
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format u '$upstream_addr'; \
         upstream u {{ least_conn; server 127.0.0.1:{a}; server 127.0.0.1:{b}; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass u; access_log %%PREFIX%%u.log u; }} }}"
    ));
    let (_held, first) = hold(p);
    let other = if first == "a" { "b" } else { "a" };
    // Each asking session is over (logged, its connection counted off) before the next.
    for i in 1..=3 {
        assert_eq!(ask(p), other, "the peer holding a connection is avoided\n{}", s.error_log());
        s.wait_lines("u.log", i);
    }
}

#[test]
fn next_upstream_off_and_tries_limit() {
    let dead = dead_port();
    let live = named_backend("live");
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format u '$upstream_addr|$status'; \
         upstream u {{ server 127.0.0.1:{dead} max_fails=0; server 127.0.0.1:{live}; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass u; proxy_next_upstream off; access_log %%PREFIX%%p.log u; }} \
         server {{ listen 127.0.0.1:{q}; proxy_pass u; proxy_next_upstream_tries 1; access_log %%PREFIX%%q.log u; }} }}"
    ));
    // Round-robin starts at the dead peer: with next_upstream off that is a 502.
    assert_eq!(ask(p), "");
    let l = s.wait_lines("p.log", 1);
    assert_eq!(l[0], format!("127.0.0.1:{dead}|502"));
    // The live peer is next in turn; then the dead one again, with one try allowed.
    assert_eq!(ask(q), "live");
    // Logged when sluice has seen the client's close: before the next session's line.
    s.wait_lines("q.log", 1);
    assert_eq!(ask(q), "");
    let l = s.wait_lines("q.log", 2);
    assert_eq!(l[1], format!("127.0.0.1:{dead}|502"));
}

#[test]
fn proxy_pass_variable_names_an_upstream_first() {
    // The upstream is named after the listening port, so `$server_port` evaluates to
    // its name: nginx looks a variable's value up among upstream names first.
    let a = named_backend("a");
    let p = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ upstream {p} {{ server 127.0.0.1:{a}; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass $server_port; }} }}"
    ));
    assert_eq!(ask(p), "a");
}

#[test]
fn proxy_pass_variable_with_an_address() {
    let a = named_backend("a");
    let p = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p}; proxy_pass $server_addr:{a}; }} }}"
    ));
    assert_eq!(ask(p), "a");
}

#[test]
fn zone_shares_round_robin_and_failures_between_workers() {
    let (a, b, c) = (named_backend("a"), named_backend("b"), named_backend("c"));
    let dead = dead_port();
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start_master(
        2,
        &format!(
            "events {{}} stream {{ log_format u '$pid|$upstream_addr'; \
             upstream u {{ zone u 64k; server 127.0.0.1:{a} weight=5; server 127.0.0.1:{b}; server 127.0.0.1:{c}; }} \
             upstream d {{ zone u; server 127.0.0.1:{dead}; server 127.0.0.1:{a}; }} \
             server {{ listen 127.0.0.1:{p} reuseport; proxy_pass u; access_log %%PREFIX%%u.log u; }} \
             server {{ listen 127.0.0.1:{q} reuseport; proxy_pass d; access_log %%PREFIX%%d.log u; }} }}"
        ),
    );
    // One weighted round-robin sequence, whichever worker takes each connection. (With
    // `reuseport` the kernel spreads connections over both workers by address hash; on
    // one shared socket, a busy machine could leave all 28 to one worker.)
    let got: String = (0..28).map(|_| ask(p)).collect();
    assert_eq!(got, "aabacaaaabacaaaabacaaaabacaa");
    let pids: std::collections::HashSet<String> =
        s.wait_lines("u.log", 28).iter().map(|l| l.split('|').next().unwrap_or("").to_string()).collect();
    assert!(pids.len() == 2, "both workers took connections: {:?}", pids);
    // The dead peer failed once (max_fails=1): no worker tries it again within fail_timeout.
    for _ in 0..10 {
        assert_eq!(ask(q), "a");
    }
    let lines = s.wait_lines("d.log", 10);
    let tried_dead = lines.iter().filter(|l| l.contains(&format!(":{dead}"))).count();
    assert_eq!(tried_dead, 1, "{:#?}", lines);
}

#[test]
fn proxy_pass_variable_needing_a_resolver_is_500() {
    // nginx-tests stream_status_variable.t: a host name in a variable, no resolver.
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format s '$status'; \
         server {{ listen 127.0.0.1:{p}; proxy_pass example.com:$remote_port; access_log %%PREFIX%%s.log s; }} }}"
    ));
    assert_eq!(ask(p), "");
    assert_eq!(s.wait_lines("s.log", 1), ["500"]);
    assert!(s.error_log().contains("no resolver defined to resolve example.com"), "{}", s.error_log());
}

/// A name in `server NAME:PORT` gives every address getaddrinfo returns, in its order and
/// duplicates included, as nginx's `ngx_inet_resolve_host` (checked side by side with
/// nginx 1.22.1 under the same hosts file): glibc puts ::1 before 127.0.0.1, and the
/// listed-twice 127.0.0.1 is two peers, so round-robin goes ::1, v4, v4.
#[test]
fn resolved_name_keeps_getaddrinfo_order_and_duplicates() {
    let port = free_port();
    for (addr, id) in [("127.0.0.1", "v4"), ("[::1]", "v6")] {
        let l = TcpListener::bind(format!("{addr}:{port}")).expect("bind backend");
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(id.as_bytes());
            }
        });
    }
    let p = free_port();
    let mut s = Sluice::start_with_hosts(
        &format!(
            "events {{}} stream {{ upstream u {{ server dup:{port}; }} \
             server {{ listen 127.0.0.1:{p}; proxy_pass u; }} }}"
        ),
        "127.0.0.1 localhost\n127.0.0.1 dup\n127.0.0.1 dup\n::1 dup\n",
    );
    let got: Vec<String> = (0..6).map(|_| ask(p)).collect();
    assert_eq!(got, ["v6", "v4", "v4", "v6", "v4", "v4"]);
    assert_eq!(s.stop(), Some(0));
}

/// A `proxy_pass` value is looked up among the upstreams as nginx's handler does (side by
/// side with nginx 1.22.1): host in any case and port must agree, so "LOCALHOST:P" finds
/// the group `proxy_pass localhost:P` made, with no resolver; an `upstream {}` block has
/// no port, so a block named "ub:P" is found by nothing and "ub:P" needs a resolver.
#[test]
fn proxy_pass_variable_finds_groups_by_host_and_port() {
    let (a, b) = (named_backend("a"), named_backend("b"));
    let (p, q, r) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format s '$server_port $status $upstream_addr'; access_log %%PREFIX%%s.log s; \
         upstream ub:{b} {{ server 127.0.0.1:{b}; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass localhost:{a}; }} \
         server {{ listen 127.0.0.1:{q}; set $up LOCALHOST:{a}; proxy_pass $up; }} \
         server {{ listen 127.0.0.1:{r}; set $up ub:{b}; proxy_pass $up; }} }}"
    ));
    assert_eq!(ask(q), "a");
    assert_eq!(ask(r), "");
    let mut lines = s.wait_lines("s.log", 2);
    lines.sort();
    let mut want = [format!("{q} 200 127.0.0.1:{a}"), format!("{r} 500 -")];
    want.sort();
    assert_eq!(lines, want);
    assert!(s.error_log().contains("no resolver defined to resolve ub,"), "{}", s.error_log());
    assert_eq!(ask(p), "a");
}

/// IPv4 addresses are read as nginx's `ngx_inet_addr` reads them: leading zeros are
/// decimal and an empty part is 0, in the configuration and in a `proxy_pass` value at
/// run time (which would otherwise be a name needing a resolver; side by side with
/// nginx 1.22.1).
#[test]
fn ipv4_literals_read_as_nginx() {
    let a = named_backend("a");
    let (p, q, r) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format s '$server_port $server_addr $status $upstream_addr'; access_log %%PREFIX%%s.log s; \
         server {{ listen 127.000.000.001:{p}; proxy_pass 127..0.1:{a}; }} \
         server {{ listen 127.0.0.1:{q}; set $up 127.000.000.001:{a}; proxy_pass $up; }} \
         server {{ listen 127.0.0.1:{r}; proxy_bind 127.0.0.01; proxy_pass 127.0.0.1:{a}; }} }}"
    ));
    for port in [p, q, r] {
        assert_eq!(ask(port), "a", "{}", s.error_log());
    }
    let mut lines = s.wait_lines("s.log", 3);
    lines.sort();
    let mut want: Vec<String> = [p, q, r].iter().map(|port| format!("{port} 127.0.0.1 200 127.0.0.1:{a}")).collect();
    want.sort();
    assert_eq!(lines, want);
}

/// The group a `proxy_pass HOST:PORT` makes goes by HOST alone, as nginx's
/// `uscf->host` (side by side with nginx 1.22.1): when every address of a name has
/// failed, "no live upstreams" and `$upstream_addr` say "multi", not "multi:PORT".
#[test]
fn implicit_group_goes_by_its_host() {
    let (p, dead) = (free_port(), free_port());
    let mut s = Sluice::start_with_hosts(
        &format!(
            "events {{}} stream {{ log_format f '$upstream_addr $status'; \
             server {{ listen 127.0.0.1:{p}; proxy_pass multi:{dead}; access_log %%PREFIX%%a.log f; }} }}"
        ),
        "127.0.0.1 localhost\n127.0.0.1 multi\n127.0.0.2 multi\n",
    );
    for _ in 0..2 {
        let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let _ = c.read(&mut [0u8; 8]);
    }
    let lines = s.wait_lines("a.log", 2);
    assert_eq!(lines, [format!("127.0.0.1:{dead}, 127.0.0.2:{dead} 502"), "multi 502".to_string()]);
    assert!(
        s.error_log().contains("no live upstreams while connecting to upstream, client: 127.0.0.1, "),
        "{}",
        s.error_log()
    );
    assert!(s.error_log().contains(", upstream: \"multi\", "), "{}", s.error_log());
    assert_eq!(s.stop(), Some(0));
}
