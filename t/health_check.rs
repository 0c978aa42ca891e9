//! Active health checks (`health_check`, `health_check_timeout`, `match`) through the
//! binary: unhealthy peers take no clients, come back after `passes`, `match` blocks'
//! send/expect, `mandatory`, UDP checks, `port=`, one check per interval across workers,
//! and the configuration errors.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

fn ask(port: u16) -> String {
    let mut c = connect(port);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn wait_log(s: &Sluice, what: &str) -> bool {
    wait_for(Duration::from_secs(10), || s.error_log().contains(what))
}

fn hc_suffix(action: &str, port: u16, upstream: &str) -> String {
    format!(" while {}, health check \"\" of peer 127.0.0.1:{} in upstream \"{}\"", action, port, upstream)
}

#[test]
fn an_unhealthy_peer_takes_no_clients() {
    let (live, dead) = (sends_and_closes("A"), free_port());
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n upstream u {{ zone u 64k; server 127.0.0.1:{dead}; server 127.0.0.1:{live}; }}\n \
         server {{ listen 127.0.0.1:{port}; proxy_pass u; health_check interval=200ms fails=2; }}\n}}\n"
    ));
    let warn = "[warn] ";
    assert!(wait_log(&s, "peer is unhealthy"), "{}", s.error_log());
    let log = s.error_log();
    let lines: Vec<&str> = log.lines().collect();
    let refused =
        format!("connect() failed (111: Connection refused){}", hc_suffix("connecting to upstream", dead, "u"));
    let errors: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.contains(&refused)).map(|(i, _)| i).collect();
    let unhealthy = format!("peer is unhealthy{}", hc_suffix("connecting to upstream", dead, "u"));
    let w = lines.iter().position(|l| l.contains(&unhealthy)).expect("the unhealthy line");
    assert!(lines[w].contains(warn), "a warning: {}", lines[w]);
    assert!(errors.iter().all(|&i| lines[i].contains("[error] ")), "{}", log);
    // fails=2: the first failure alone did not take the peer out.
    assert!(errors.len() >= 2 && errors[1] < w, "two failures, then the verdict:\n{}", log);
    assert!(!log.contains(&format!("127.0.0.1:{}\"", live)), "the live peer is never blamed:\n{}", log);
    for _ in 0..6 {
        assert_eq!(ask(port), "A");
    }
    // No client tried the dead peer: no session line about it.
    let log = s.error_log();
    assert!(!log.lines().any(|l| l.contains("client: ") && l.contains("connect() failed")), "{}", log);
}

#[test]
fn a_peer_comes_back_after_passes_in_a_row() {
    let live = sends_and_closes("A");
    let back = free_port();
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n upstream u {{ zone u 64k; server 127.0.0.1:{back}; server 127.0.0.1:{live}; }}\n \
         server {{ listen 127.0.0.1:{port}; proxy_pass u; health_check interval=200ms passes=2; }}\n}}\n"
    ));
    assert!(wait_log(&s, "peer is unhealthy"), "{}", s.error_log());
    let l = TcpListener::bind(("127.0.0.1", back)).expect("bind the peer's port");
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            n.fetch_add(1, Ordering::SeqCst);
            let _ = c.write_all(b"B");
        }
    });
    let healthy = "[notice] ";
    assert!(wait_log(&s, "peer is healthy"), "{}", s.error_log());
    let log = s.error_log();
    let line = log.lines().find(|l| l.contains("peer is healthy")).expect("line");
    assert!(line.contains(healthy) && line.ends_with(&hc_suffix("connecting to upstream", back, "u")), "{}", line);
    // The checks' connections complete in the listen queue: the thread may take them a
    // moment after sluice has logged its verdict.
    let two = wait_for(Duration::from_secs(5), || accepted.load(Ordering::SeqCst) >= 2);
    assert!(two, "two passes before it is healthy again");
    let answers: Vec<String> = (0..4).map(|_| ask(port)).collect();
    assert!(answers.contains(&"B".to_string()) && answers.contains(&"A".to_string()), "{:?}", answers);
}

/// A backend that answers `answer` to a line that is `ping`, and nothing otherwise.
fn pinged(answer: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut b = [0u8; 64];
                let n = c.read(&mut b).unwrap_or(0);
                if &b[..n] == b"ping\r\n" {
                    let _ = c.write_all(answer);
                } else {
                    let _ = c.write_all(b"hello");
                }
            });
        }
    });
    port
}

#[test]
fn match_blocks_send_and_expect() {
    let (good, bad) = (pinged(b"OK \x80 ready"), pinged(b"NO"));
    let (p1, p2) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n upstream u {{ zone u 64k; server 127.0.0.1:{good}; server 127.0.0.1:{bad}; }}\n \
         upstream v {{ zone v 64k; server 127.0.0.1:{good}; server 127.0.0.1:{bad}; }}\n \
         match re {{ send \"ping\\r\\n\"; expect ~* \"^ok .* READY\"; }}\n \
         match lit {{ send \"ping\\r\\n\"; expect \"OK \\x80\"; }}\n \
         server {{ listen 127.0.0.1:{p1}; proxy_pass u; health_check interval=200ms match=re; }}\n \
         server {{ listen 127.0.0.1:{p2}; proxy_pass v; health_check interval=200ms match=lit; }}\n}}\n"
    ));
    let unhealthy = |u: &str| format!("peer is unhealthy{}", hc_suffix("checking response", bad, u));
    let warned = |log: &str, u: &str| log.lines().any(|l| l.contains("[warn] ") && l.ends_with(&unhealthy(u)));
    assert!(
        wait_for(Duration::from_secs(10), || ["u", "v"].iter().all(|u| warned(&s.error_log(), u))),
        "{}",
        s.error_log()
    );
    let log = s.error_log();
    assert!(!log.contains("[error]"), "a response that does not match is no error line:\n{}", log);
    assert!(!log.contains(&format!("peer 127.0.0.1:{} ", good)), "{}", log);
    // Clients reach only the good peer: it answers "hello" to them.
    for p in [p1, p2, p1, p2] {
        let mut c = connect(p);
        c.write_all(b"hi").expect("write");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert_eq!(out, b"hello");
    }
}

#[test]
fn mandatory_peers_take_no_clients_before_their_first_check() {
    // The silent peer accepts and never answers: its first check lasts the whole
    // timeout, and with `mandatory` it takes no client meanwhile.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sp = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let live = pinged(b"yes");
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n upstream u {{ zone u 64k; server 127.0.0.1:{sp}; server 127.0.0.1:{live}; }}\n \
         match m {{ send \"ping\\r\\n\"; expect \"yes\"; }}\n \
         server {{ listen 127.0.0.1:{port}; proxy_pass u; health_check match=m mandatory; \
         health_check_timeout 3s; proxy_connect_timeout 1s; proxy_timeout 2s; }}\n}}\n"
    ));
    // Wait for the live peer's first check (the silent one's takes 3 s).
    for _ in 0..4 {
        let mut c = connect(port);
        c.write_all(b"x").expect("write");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert!(out == b"hello" || out.is_empty(), "{:?}", out);
    }
    let log = s.error_log();
    assert!(!log.contains("upstream timed out"), "no client waited on the silent peer:\n{}", log);
    let timed_out =
        format!("upstream timed out (110: Connection timed out){}", hc_suffix("reading from upstream", sp, "u"));
    assert!(wait_log(&s, &timed_out), "{}", s.error_log());
    assert!(wait_log(&s, "peer is unhealthy"), "{}", s.error_log());
}

#[test]
fn udp_checks_find_a_closed_port() {
    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind echo");
    let live = echo.local_addr().expect("addr").port();
    let probes = Arc::new(AtomicUsize::new(0));
    let n = probes.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        while let Ok((k, from)) = echo.recv_from(&mut b) {
            if &b[..k] == b"nginx health check" {
                n.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let _ = echo.send_to(&b[..k], from);
        }
    });
    let dead = free_port();
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n upstream u {{ zone u 64k; server 127.0.0.1:{dead}; server 127.0.0.1:{live}; }}\n \
         server {{ listen 127.0.0.1:{port} udp; proxy_pass u; proxy_timeout 1s; \
         health_check udp interval=200ms; health_check_timeout 200ms; }}\n}}\n"
    ));
    let refused = format!("recv() failed (111: Connection refused){}", hc_suffix("reading from upstream", dead, "u"));
    assert!(wait_log(&s, &refused), "{}", s.error_log());
    assert!(wait_log(&s, "peer is unhealthy"), "{}", s.error_log());
    assert!(wait_for(Duration::from_secs(10), || probes.load(Ordering::SeqCst) >= 2), "the live peer is probed");
    let log = s.error_log();
    assert!(!log.contains(&format!("peer 127.0.0.1:{} ", live)), "{}", log);
    let c = UdpSocket::bind("127.0.0.1:0").expect("client");
    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
    for i in 0..4 {
        let msg = format!("q{}", i);
        c.send_to(msg.as_bytes(), ("127.0.0.1", port)).expect("send");
        let mut b = [0u8; 64];
        let k = c.recv(&mut b).expect("an answer from the live peer");
        assert_eq!(&b[..k], msg.as_bytes());
    }
}

#[test]
fn port_parameter_checks_another_port_and_no_live_upstreams() {
    let live = sends_and_closes("A");
    let dead = free_port();
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n upstream u {{ zone u 64k; server 127.0.0.1:{live}; }}\n \
         server {{ listen 127.0.0.1:{port}; proxy_pass u; health_check interval=200ms port={dead}; }}\n}}\n"
    ));
    // The check goes to the other port; the log names the peer as configured.
    assert!(
        wait_log(&s, &format!("peer is unhealthy{}", hc_suffix("connecting to upstream", live, "u"))),
        "{}",
        s.error_log()
    );
    assert_eq!(ask(port), "", "its only peer is unhealthy: the client is closed");
    assert!(wait_log(&s, "no live upstreams while connecting to upstream, client: 127.0.0.1"), "{}", s.error_log());
}

#[test]
fn workers_share_the_checks() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = l.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            n.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    let port = free_port();
    let _s = Sluice::start_master(
        2,
        &format!(
            "events {{}}\nstream {{\n upstream u {{ zone u 64k; server 127.0.0.1:{peer}; }}\n \
             server {{ listen 127.0.0.1:{port}; proxy_pass u; health_check interval=1s; }}\n}}\n"
        ),
    );
    assert!(wait_for(Duration::from_secs(10), || accepted.load(Ordering::SeqCst) >= 1));
    let first = accepted.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(3500));
    let more = accepted.load(Ordering::SeqCst) - first;
    // One check a second for both workers: 3 or 4 in 3.5 s (each worker on its own
    // would make twice as many).
    assert!((2..=5).contains(&more), "{} checks in 3.5 s", more);
}

fn test_conf(body: &str) -> String {
    let dir = TempDir::new("hc-t");
    let text = format!("events {{}}\nstream {{\n{}\n}}\n", body);
    std::fs::write(dir.join("t.conf"), text).expect("write");
    let out = run(&["-t", "-p", &dir.prefix(), "-c", "t.conf"], dir.path());
    let err = console(&out.stderr);
    let path = format!("{}t.conf", dir.prefix());
    err.replace(&path, "T")
}

#[test]
fn configuration_errors() {
    let ups = "upstream u { zone u 64k; server 127.0.0.1:1; }\nupstream nz { server 127.0.0.1:1; }\n";
    let cases = [
        (
            "server { listen 127.0.0.1:1; proxy_pass nz; health_check; }",
            "[emerg] health check requires upstream \"nz\" to be in shared memory in T:5",
        ),
        ("server { listen 127.0.0.1:1; return x; health_check; }", "[emerg] health check requires an upstream in T:5"),
        (
            "server { listen 127.0.0.1:1; proxy_pass u; health_check match=nope; }",
            "[emerg] match \"nope\" not found in T:5",
        ),
        (
            "server { listen 127.0.0.1:1; proxy_pass u; health_check interval=0; }",
            "[emerg] invalid parameter \"interval=0\" in T:5",
        ),
        (
            "server { listen 127.0.0.1:1; proxy_pass u; health_check fails=x; }",
            "[emerg] invalid parameter \"fails=x\" in T:5",
        ),
        (
            "server { listen 127.0.0.1:1; proxy_pass u; health_check persistent; }",
            "[emerg] invalid parameter \"persistent\" in T:5",
        ),
        (
            "server { listen 127.0.0.1:1; proxy_pass u; health_check port=70000; }",
            "[emerg] invalid parameter \"port=70000\" in T:5",
        ),
        ("match m { send a; }\nmatch m { send b; }", "[emerg] duplicate match \"m\" in T:6"),
        ("match m { send a; send b; }", "[emerg] \"send\" directive is duplicate in T:5"),
        ("match m { expect = a; }", "[emerg] invalid parameter \"=\" in T:5"),
        ("match m { look a; }", "[emerg] unknown directive \"look\" in T:5"),
        ("match m { expect ~ \"(\"; }", "[emerg] pcre2_compile() failed: missing closing parenthesis in \"(\" in T:5"),
        ("health_check;", "[emerg] \"health_check\" directive is not allowed here in T:5"),
        (
            "server { listen 127.0.0.1:1; proxy_pass u; health_check_timeout 1s; health_check_timeout 2s; }",
            "[emerg] \"health_check_timeout\" directive is duplicate in T:5",
        ),
    ];
    for (body, want) in cases {
        let got = test_conf(&format!("{}{}", ups, body));
        assert!(got.contains(want), "{}\n wanted: {}\n got: {}", body, want, got);
        assert!(got.contains("test failed"), "{}", got);
    }
    let ok = "match m { send \"a\\x00\"; expect ~ \"^b\"; }\nserver { listen 127.0.0.1:1; proxy_pass u; \
              health_check interval=2s jitter=100ms fails=3 passes=2 mandatory persistent match=m port=99 udp; \
              health_check; health_check_timeout 1s; }";
    let got = test_conf(&format!("{}{}", ups, ok));
    assert!(got.contains("test is successful"), "{}", got);
}

#[test]
fn mandatory_persistent_keeps_a_healthy_peer_up_over_a_reload() {
    // The peer answers 2 s after each connection: a peer "checking" again after the
    // reload takes no client for those 2 s; with `persistent` it stays up.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                let _ = c.write_all(b"yes");
            });
        }
    });
    let (kept, again) = (free_port(), free_port());
    let s = Sluice::start_master(
        1,
        &format!(
            "events {{}}\nstream {{\n match m {{ expect yes; }}\n \
             upstream u {{ zone u 64k; server 127.0.0.1:{peer}; }}\n \
             upstream v {{ zone v 64k; server 127.0.0.1:{peer}; }}\n \
             server {{ listen 127.0.0.1:{kept}; proxy_pass u; health_check match=m mandatory persistent; }}\n \
             server {{ listen 127.0.0.1:{again}; proxy_pass v; health_check match=m mandatory; }}\n}}\n"
        ),
    );
    let healthy = |s: &Sluice| s.error_log().matches("peer is healthy").count();
    assert!(wait_for(Duration::from_secs(10), || healthy(&s) == 2), "{}", s.error_log());
    s.signal(libc::SIGHUP);
    let started = |s: &Sluice| s.error_log().matches("start worker process ").count();
    assert!(wait_for(Duration::from_secs(10), || started(&s) == 2), "{}", s.error_log());
    // The old worker no longer accepts (it would pass clients by its own, older state).
    assert!(wait_for(Duration::from_secs(10), || s.error_log().contains("gracefully shutting down")));
    // (The unkept one first: its first check ends 2 s after the reload.)
    let mut c = connect(again);
    let mut k = connect(kept);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    assert_eq!(out, b"", "checking again after the reload: no client is passed to it");
    out.clear();
    let _ = k.read_to_end(&mut out);
    assert_eq!(out, b"yes", "healthy before the reload, so healthy after it");
    assert!(s.error_log().contains("no live upstreams"), "{}", s.error_log());
}
