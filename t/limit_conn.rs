//! `limit_conn_zone`, `limit_conn`, `limit_conn_log_level`, `limit_conn_dry_run` and
//! `$limit_conn_status` (ngx_stream_limit_conn_module): counts per key in a shared
//! memory zone, shared by the workers of a master, released when a session ends.
//! The log lines and statuses are compared with a run of nginx 1.22.1
//! (`t/data/modules-access/record-logs.sh`); configuration errors with its `-t`.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::access::nginx_t;
use crate::common::{backend, connect, free_port, wait_for, Sluice};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/modules-access")
}

/// A backend that greets each connection with "H" and holds it until the client closes.
fn holder(mut c: TcpStream) {
    let _ = c.write_all(b"H");
    let mut buf = [0u8; 1024];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Whether sluice let the connection through to the holder (it then reads "H") or
/// closed it (end of stream).
fn held(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(c.read(&mut b), Ok(1))
}

/// Connect through `port` to a holder; `Some` while the connection is held.
fn hold(port: u16) -> Option<TcpStream> {
    let mut c = connect(port);
    held(&mut c).then_some(c)
}

fn read_all(port: u16) -> String {
    let mut c = connect(port);
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

#[test]
fn conf_errors_as_nginx() {
    for name in [
        "limit_conn_zone_too_small",
        "limit_conn_zone_bad_size",
        "limit_conn_zone_no_size",
        "limit_conn_zone_no_name",
        "limit_conn_zone_bad_parameter",
        "limit_conn_zone_one_arg",
        "limit_conn_zone_bound_twice",
        "limit_conn_zone_size_conflict",
        "limit_conn_zone_other_use",
        "limit_conn_zone_unknown_variable",
        "limit_conn_zone_in_server",
        "limit_conn_unknown_zone",
        "limit_conn_zero",
        "limit_conn_not_a_number",
        "limit_conn_too_many",
        "limit_conn_duplicate",
        "limit_conn_before_zone",
        "limit_conn_log_level_bad",
        "limit_conn_log_level_duplicate",
        "limit_conn_dry_run_bad",
    ] {
        nginx_t(name);
    }
}

/// `[LEVEL] *%%CONN%% MESSAGE` of a `[warn]`/`[error]` session line, as the recorder
/// masks nginx's.
fn masked_session_line(l: &str) -> Option<String> {
    let (_, rest) = l.split_once(" [")?;
    let (level, rest) = rest.split_once("] ")?;
    if level != "warn" && level != "error" {
        return None;
    }
    let (_, rest) = rest.split_once(": *")?;
    let (_, msg) = rest.split_once(' ')?;
    Some(format!("[{level}] *%%CONN%% {msg}"))
}

/// The sessions of `record-logs.sh`, against sluice: the same access-log lines and the
/// same warn/error lines as nginx.
#[test]
fn log_lines_as_nginx() {
    let ports: Vec<(&str, u16)> = ["DENY", "HOLD", "DRY", "LONGKEY"].iter().map(|n| (*n, free_port())).collect();
    let back = backend(holder);
    let mut conf = std::fs::read_to_string(data_dir().join("runtime.conf")).expect("runtime.conf");
    for (n, p) in &ports {
        conf = conf.replace(&format!("%%PORT_{n}%%"), &p.to_string());
    }
    conf = conf.replace("%%PORT_BACKEND%%", &back.to_string());
    let mut s = Sluice::start(&conf);
    let port = |n: &str| ports.iter().find(|(x, _)| *x == n).map(|x| x.1).unwrap_or(0);
    assert_eq!(read_all(port("DENY")), "");
    let h = hold(port("HOLD")).expect("first connection held");
    assert!(hold(port("HOLD")).is_none(), "second connection from the same address refused");
    assert_eq!(read_all(port("DRY")), "ok");
    assert_eq!(read_all(port("LONGKEY")), "ok");
    drop(h);
    s.wait_lines("access.log", 5);
    s.stop();
    let mask = |l: &str| {
        let mut l = l.to_string();
        for (n, p) in &ports {
            l = l.replace(&p.to_string(), &format!("%%PORT_{n}%%"));
        }
        l
    };
    let access: Vec<String> = s.read("access.log").lines().map(mask).collect();
    let want_access: Vec<String> = std::fs::read_to_string(data_dir().join("runtime.access"))
        .expect("runtime.access")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(access, want_access);
    let errors: Vec<String> = s.error_log().lines().filter_map(masked_session_line).map(|l| mask(&l)).collect();
    let want_errors: Vec<String> = std::fs::read_to_string(data_dir().join("runtime.error"))
        .expect("runtime.error")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(errors, want_errors);
}

/// `limit_conn 2` with two worker processes admits exactly two connections per key:
/// the count is in shared memory. With `reuseport` the kernel spreads the connections
/// over both workers, and the access log shows that each worker refused some while
/// the two admitted ones were held.
#[test]
fn shared_by_workers() {
    let back = backend(holder);
    let port = free_port();
    let conf = format!(
        "events {{}}
stream {{
    limit_conn_zone $binary_remote_addr zone=addr:64k;
    log_format st \"$pid $status $limit_conn_status\";
    access_log %%PREFIX%%access.log st;
    server {{
        listen 127.0.0.1:{port} reuseport;
        limit_conn addr 2;
        proxy_pass 127.0.0.1:{back};
    }}
}}
"
    );
    let mut s = Sluice::start_master(2, &conf);
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..24 {
        match hold(port) {
            Some(c) => kept.push(c),
            None => refused += 1,
        }
    }
    assert_eq!(kept.len(), 2, "admitted connections");
    assert_eq!(refused, 22);
    let log = s.wait_lines("access.log", 22);
    let mut rejecting: Vec<&str> =
        log.iter().filter(|l| l.ends_with(" 503 REJECTED")).filter_map(|l| l.split(' ').next()).collect();
    rejecting.sort();
    rejecting.dedup();
    assert_eq!(rejecting.len(), 2, "both workers refused connections:\n{}", log.join("\n"));
    // Released on close, whichever worker held them.
    drop(kept);
    assert!(wait_for(Duration::from_secs(5), || s.read("access.log").lines().count() == 24));
    // A count is released right after the session's log line.
    std::thread::sleep(Duration::from_millis(100));
    let again: Vec<TcpStream> = (0..2).filter_map(|_| hold(port)).collect();
    assert_eq!(again.len(), 2, "counts were released");
    assert!(hold(port).is_none());
    drop(again);
    s.stop();
    let log = s.read("access.log");
    assert_eq!(log.lines().filter(|l| l.ends_with(" 200 PASSED")).count(), 4, "{log}");
}

/// Several `limit_conn` in one server: a refusal by the second gives back what the
/// first took (nginx's `ngx_stream_limit_conn_cleanup_all`).
#[test]
fn refusal_releases_earlier_counts() {
    let back = backend(holder);
    let (a, b) = (free_port(), free_port());
    let conf = format!(
        "events {{}}
stream {{
    limit_conn_zone $binary_remote_addr zone=addr:32k;
    limit_conn_zone $server_port zone=port:32k;
    server {{ listen 127.0.0.1:{a}; limit_conn addr 5; limit_conn port 1; proxy_pass 127.0.0.1:{back}; }}
    server {{ listen 127.0.0.1:{b}; limit_conn addr 2; proxy_pass 127.0.0.1:{back}; }}
}}
"
    );
    let s = Sluice::start(&conf);
    let first = hold(a).expect("first held");
    assert!(hold(a).is_none(), "refused by zone \"port\"");
    // "addr" counts only `first`: one more fits under 2.
    let second = hold(b).expect("the refused connection's addr count was released");
    assert!(hold(b).is_none());
    drop((first, second));
    let log = s.error_log();
    assert!(log.contains("limiting connections by zone \"port\" while initializing session"), "{log}");
    // Only the last refusal (at `b`, where "addr" is at 2) is by zone "addr".
    assert_eq!(log.matches("by zone \"addr\"").count(), 1, "{log}");
}

/// A zone full of keys refuses new ones with nginx's allocator line, at crit, and takes
/// them again once entries are freed. It holds the keys nginx's slab allocator holds:
/// side by side with nginx 1.22.1, a 32k zone takes 40 keys of about 250 bytes (nodes
/// of the 512-byte class, 8 to a page, 5 pages left after the zone's own state).
#[test]
fn full_zone_refuses_new_keys() {
    let back = backend(holder);
    let port = free_port();
    // 249- or 248-byte keys, one per client port.
    let pad = "k".repeat(244);
    let conf = format!(
        "events {{ worker_connections 2048; }}
stream {{
    limit_conn_zone ${{remote_port}}{pad} zone=ports:32k;
    server {{ listen 127.0.0.1:{port}; limit_conn ports 1; proxy_pass 127.0.0.1:{back}; }}
}}
"
    );
    let s = Sluice::start(&conf);
    let mut kept = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        match hold(port) {
            Some(c) => kept.push(c),
            None => {
                refused = Some(i);
                break;
            }
        }
    }
    let n = refused.expect("the zone filled up");
    assert_eq!(n, 40, "keys that fit in 32k");
    let log = s.error_log();
    assert!(log.contains("[crit]") && log.contains("ngx_slab_alloc() failed: no memory in limit_conn_zone \"ports\""));
    kept.truncate(kept.len() - 1);
    // The entry is freed once sluice has seen the close.
    assert!(
        wait_for(Duration::from_secs(5), || hold(port).map(|c| kept.push(c)).is_some()),
        "a freed entry makes room"
    );
}

/// UDP sessions count too (stream_udp_limit_conn.t): a second client address-mate is
/// refused while the first session lasts, and served once it ended.
#[test]
fn udp_sessions() {
    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind echo");
    let eport = echo.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let port = free_port();
    let conf = format!(
        "events {{}}
stream {{
    limit_conn_zone $binary_remote_addr zone=addr:32k;
    server {{
        listen 127.0.0.1:{port} udp;
        limit_conn addr 1;
        proxy_timeout 1s;
        proxy_pass 127.0.0.1:{eport};
    }}
}}
"
    );
    let s = Sluice::start(&conf);
    let ask = |c: &UdpSocket, what: &[u8], wait: u64| -> Option<Vec<u8>> {
        c.set_read_timeout(Some(Duration::from_millis(wait))).ok();
        c.send_to(what, ("127.0.0.1", port)).ok()?;
        let mut buf = [0u8; 2048];
        c.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    };
    let a = UdpSocket::bind("127.0.0.1:0").expect("a");
    let b = UdpSocket::bind("127.0.0.1:0").expect("b");
    assert_eq!(ask(&a, b"1", 2000).as_deref(), Some(&b"1"[..]));
    assert_eq!(ask(&a, b"2", 2000).as_deref(), Some(&b"2"[..]), "same session");
    assert_eq!(ask(&b, b"3", 300), None, "a second session for the key is refused");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ask(&b, b"4", 2000).as_deref(), Some(&b"4"[..]), "after proxy_timeout");
    let log = s.error_log();
    assert!(log.contains("limiting connections by zone \"addr\" while initializing session, udp client: 127.0.0.1"));
}
