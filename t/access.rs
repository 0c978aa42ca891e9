//! `allow` / `deny` (ngx_stream_access_module), shaped like nginx-tests' stream_access.t:
//! IPv4, IPv6 and unix-domain clients against address, CIDR, `unix:` and `all` rules,
//! first match wins, inheritance from `stream {}`, the 403 status and nginx's log line.
//! Configuration errors are compared with what nginx 1.22.1 printed for the same files
//! (`t/data/modules-access/`, recorded by `record.sh` there).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{connect, free_port, run, Sluice, TempDir};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/modules-access")
}

/// `sluice -t` on `t/data/modules-access/NAME.conf` prints what nginx printed for it
/// (`NAME.expected`, "nginx: " read as "sluice: ", `%%PREFIX%%` as the directory) and
/// exits as nginx did.
pub fn nginx_t(name: &str) {
    let tmp = TempDir::new(&format!("access-{name}"));
    std::fs::copy(data_dir().join(format!("{name}.conf")), tmp.join("nginx.conf")).expect("copy case");
    let dir = tmp.path().display().to_string();
    let conf = format!("{dir}/nginx.conf");
    let log = format!("{dir}/error.log");
    let out = run(&["-t", "-p", &dir, "-c", &conf, "-e", &log], tmp.path());
    let text = std::fs::read_to_string(data_dir().join(format!("{name}.expected"))).expect("read expected");
    let mut lines: Vec<&str> = text.lines().collect();
    let code: i32 = lines.pop().and_then(|l| l.strip_prefix("exit=")).and_then(|c| c.parse().ok()).expect("exit=N");
    let want: String = lines
        .iter()
        .map(|l| format!("{}\n", l.replacen("nginx: ", "sluice: ", 1).replace("%%PREFIX%%", &dir)))
        .collect();
    let got = String::from_utf8_lossy(&out.stderr);
    assert_eq!(got, want, "case {name}: stderr differs from nginx's");
    assert_eq!(out.status.code(), Some(code), "case {name}: exit status");
}

#[test]
fn conf_errors_as_nginx() {
    for name in ["access_bad_cidr", "access_bad_address", "access_low_bits", "access_in_upstream", "access_two_args"] {
        nginx_t(name);
    }
}

/// Read until the server closes: a denied client gets nothing.
fn answer(port: u16) -> String {
    let mut c = connect(port);
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn answer6(port: u16) -> String {
    let mut c = std::net::TcpStream::connect(("::1", port)).expect("connect [::1]");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn answer_unix(path: &Path) -> String {
    let mut c = UnixStream::connect(path).expect("connect unix");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

#[test]
fn first_match_wins_and_inheritance() {
    let p: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let conf = format!(
        "events {{}}
stream {{
    log_format st \"$server_port $status\";
    access_log %%PREFIX%%access.log st;
    deny all;
    server {{ listen 127.0.0.1:{a}; allow 127.0.0.1; deny all; return a; }}
    server {{ listen 127.0.0.1:{b}; deny 127.0.0.0/8; allow all; return b; }}
    server {{ listen 127.0.0.1:{c}; allow 10.0.0.0/8; allow 192.168.0.0/16; return c; }}
    server {{ listen 127.0.0.1:{d}; return d; }}
    server {{ listen 127.0.0.1:{e}; deny ::1; deny unix:; return e; }}
    server {{ listen 127.0.0.1:{f}; allow 127.0.0.2/31; allow 127.0.0.0/31; deny all; return f; }}
}}
",
        a = p[0],
        b = p[1],
        c = p[2],
        d = p[3],
        e = p[4],
        f = p[5]
    );
    let mut s = Sluice::start(&conf);
    assert_eq!(answer(p[0]), "a", "allowed by the first rule");
    assert_eq!(answer(p[1]), "", "denied by the first rule");
    assert_eq!(answer(p[2]), "c", "no rule matches: allowed");
    assert_eq!(answer(p[3]), "", "no rules of its own: the stream level's deny all");
    assert_eq!(answer(p[4]), "e", "IPv6 and unix rules do not apply to an IPv4 client");
    assert_eq!(answer(p[5]), "f", "the second mask matches");
    let lines = s.wait_lines("access.log", 6);
    let mut by_port: Vec<String> = lines.clone();
    by_port.sort();
    let mut want: Vec<String> = vec![
        format!("{} 200", p[0]),
        format!("{} 403", p[1]),
        format!("{} 200", p[2]),
        format!("{} 403", p[3]),
        format!("{} 200", p[4]),
        format!("{} 200", p[5]),
    ];
    want.sort();
    assert_eq!(by_port, want);
    s.stop();
    let log = s.error_log();
    for port in [p[1], p[3]] {
        let line = log
            .lines()
            .find(|l| l.ends_with(&format!("server: 127.0.0.1:{}", port)) && l.contains("[error]"))
            .unwrap_or_else(|| panic!("no error line for port {port} in:\n{log}"));
        assert!(
            line.contains(&format!(
                " access forbidden by rule while initializing session, client: 127.0.0.1, server: 127.0.0.1:{}",
                port
            )),
            "{line}"
        );
    }
    assert_eq!(log.matches("access forbidden by rule").count(), 2, "{log}");
}

/// stream_access.t's matrix: each rule against an IPv4, an IPv6 and a unix client.
#[test]
fn families_as_stream_access_t() {
    let dir = TempDir::new("access-unix");
    let rules = ["allow all", "deny all", "allow unix:", "deny 127.0.0.1", "deny ::1", "deny unix:"];
    let ports: Vec<u16> = rules.iter().map(|_| free_port()).collect();
    let mut servers = String::new();
    for (i, (r, port)) in rules.iter().zip(&ports).enumerate() {
        servers.push_str(&format!(
            "    server {{ listen 127.0.0.1:{port}; listen [::1]:{port}; listen unix:{d}/s{i}.sock; {r}; return ok; }}\n",
            d = dir.path().display()
        ));
    }
    let s = Sluice::start(&format!("events {{}}\nstream {{\n{servers}}}\n"));
    // (inet, inet6, unix) answers per rule, as stream_access.t expects them.
    let want =
        [("ok", "ok", "ok"), ("", "", ""), ("ok", "ok", "ok"), ("", "ok", "ok"), ("ok", "", "ok"), ("ok", "ok", "")];
    for (i, (r, port)) in rules.iter().zip(&ports).enumerate() {
        let got = (answer(*port), answer6(*port), answer_unix(&dir.join(&format!("s{i}.sock"))));
        let w = want[i];
        assert_eq!((got.0.as_str(), got.1.as_str(), got.2.as_str()), w, "rule \"{r}\"");
    }
    drop(s);
}

/// A denied client that sent data first is still refused, and nothing reaches the
/// upstream.
#[test]
fn denied_before_the_upstream() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let bport = backend.local_addr().expect("addr").port();
    backend.set_nonblocking(true).expect("nonblocking");
    let port = free_port();
    let conf = format!(
        "events {{}}\nstream {{ server {{ listen 127.0.0.1:{port}; deny 127.0.0.1/32; proxy_pass 127.0.0.1:{bport}; }} }}\n"
    );
    let _s = Sluice::start(&conf);
    let mut c = connect(port);
    let _ = c.write_all(b"hello");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    assert!(out.is_empty());
    std::thread::sleep(Duration::from_millis(100));
    assert!(backend.accept().is_err(), "the upstream was contacted");
}
