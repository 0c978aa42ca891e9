//! `pass ADDRESS` (ngx_stream_pass_module, nginx 1.25.5): the accepted connection starts
//! again as a session of the server listening on ADDRESS, which runs its own phases
//! (access rules, logging) and content. nginx 1.22.1 has no `pass`, so the messages here
//! are nginx 1.25.5's from its source: "port not found for", "stream pass cycle",
//! "cannot pass udp connection", "has no port", "has no addresses".

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::time::Duration;

use crate::common::{backend, connect, echo, free_port, run, wait_for, Sluice, TempDir};

fn read_all(port: u16) -> String {
    let mut c = connect(port);
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

#[test]
fn passes_to_another_server() {
    let dir = TempDir::new("pass-unix");
    let (a, b, c, u) = (free_port(), free_port(), free_port(), free_port());
    let echo_port = backend(echo);
    let sock = dir.join("b.sock");
    let conf = format!(
        "events {{}}
stream {{
    log_format st \"$server_port $status $connection\";
    server {{ listen 127.0.0.1:{a}; pass 127.0.0.1:{b}; access_log %%PREFIX%%a.log st; }}
    server {{
        listen 127.0.0.1:{b};
        return \"$server_addr:$server_port $remote_addr $connection\";
        access_log %%PREFIX%%b.log st;
    }}
    server {{ listen 127.0.0.1:{c}; pass 127.0.0.3:$server_port; }}
    server {{ listen 127.0.0.3:{c}; proxy_pass 127.0.0.1:{echo_port}; }}
    server {{ listen 127.0.0.1:{u}; pass unix:{sock}; }}
    server {{ listen unix:{sock}; return \"$server_addr\"; }}
}}
",
        sock = sock.display()
    );
    let s = Sluice::start(&conf);
    assert_eq!(read_all(a), format!("127.0.0.1:{b} 127.0.0.1 1"));
    // With a variable, and the client's bytes go on to the new session's upstream.
    let mut cl = connect(c);
    cl.write_all(b"hello").expect("write");
    let mut buf = [0u8; 5];
    cl.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"hello");
    drop(cl);
    assert_eq!(read_all(u), format!("unix:{}", sock.display()));
    // Only the server the connection was passed to logs the session.
    assert_eq!(s.wait_lines("b.log", 1), vec![format!("{b} 200 1")]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.read("a.log"), "");
}

#[test]
fn passed_session_runs_its_phases() {
    let (a, b) = (free_port(), free_port());
    let conf = format!(
        "events {{}}
stream {{
    server {{ listen 127.0.0.1:{a}; pass 127.0.0.1:{b}; }}
    server {{ listen 127.0.0.1:{b}; deny 127.0.0.1; return no; }}
}}
"
    );
    let s = Sluice::start(&conf);
    assert_eq!(read_all(a), "");
    let log = s.error_log();
    assert!(
        log.contains(&format!(
            "access forbidden by rule while initializing session, client: 127.0.0.1, server: 127.0.0.1:{b}"
        )),
        "{log}"
    );
}

#[test]
fn runtime_errors() {
    let p: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let nowhere = free_port();
    let conf = format!(
        "events {{}}
stream {{
    log_format st \"$server_port $status\";
    access_log %%PREFIX%%access.log st;
    server {{ listen 127.0.0.1:{}; pass 127.0.0.1:{nowhere}; }}
    server {{ listen 127.0.0.1:{}; pass 127.0.0.1:$server_port; }}
    server {{ listen 127.0.0.1:{}; pass $remote_addr; }}
    server {{ listen 127.0.0.1:{}; pass x$server_port:1; }}
    server {{ listen 127.0.0.1:{}; pass $server_port:99999; }}
}}
",
        p[0], p[1], p[2], p[3], p[4]
    );
    let mut s = Sluice::start(&conf);
    for port in &p {
        assert_eq!(read_all(*port), "");
    }
    let lines = s.wait_lines("access.log", 5);
    s.stop();
    let mut got = lines.clone();
    got.sort();
    let mut want = vec![
        format!("{} 200", p[0]),
        format!("{} 500", p[1]),
        format!("{} 500", p[2]),
        format!("{} 500", p[3]),
        format!("{} 500", p[4]),
    ];
    want.sort();
    assert_eq!(got, want);
    let log = s.error_log();
    let tail = |port: u16| format!(" while passing connection to port, client: 127.0.0.1, server: 127.0.0.1:{port}");
    for (msg, port) in [
        (format!("port not found for \"127.0.0.1:{nowhere}\""), p[0]),
        ("stream pass cycle".to_string(), p[1]),
        ("no port in pass \"127.0.0.1\"".to_string(), p[2]),
        (format!("no addresses in pass \"x{}:1\"", p[3]), p[3]),
        (format!("invalid port in pass \"{}:99999\"", p[4]), p[4]),
    ] {
        let want = format!("{msg}{}", tail(port));
        assert!(log.lines().any(|l| l.contains("[error] ") && l.ends_with(&want)), "no line ending {want:?} in\n{log}");
    }
    // The cycle: ten passes, then the eleventh attempt fails.
    assert_eq!(log.matches("stream pass cycle").count(), 1);
}

#[test]
fn udp_is_refused() {
    let port = free_port();
    let b = free_port();
    let conf = format!(
        "events {{}}
stream {{
    server {{ listen 127.0.0.1:{port} udp; pass 127.0.0.1:{b}; }}
    server {{ listen 127.0.0.1:{b}; return x; }}
}}
"
    );
    let s = Sluice::start(&conf);
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.send_to(b"x", ("127.0.0.1", port)).expect("send");
    assert!(wait_for(Duration::from_secs(5), || s.error_log().contains("cannot pass udp connection")));
    let log = s.error_log();
    assert!(
        log.contains("cannot pass udp connection while passing connection to port, udp client: 127.0.0.1"),
        "{log}"
    );
}

/// `sluice -t` on a one-server configuration with `line` in the server (line 5).
fn check(line: &str) -> (String, Option<i32>) {
    let dir = TempDir::new("pass-conf");
    let conf =
        format!("events {{}}\nstream {{\n    server {{\n        listen 127.0.0.1:9;\n        {line}\n    }}\n}}\n");
    std::fs::write(dir.join("nginx.conf"), conf).expect("write");
    let d = dir.path().display().to_string();
    let out = run(&["-t", "-p", &d, "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")], dir.path());
    let first = String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default().replace(&d, "DIR");
    (first, out.status.code())
}

#[test]
fn conf_errors() {
    let cases = [
        ("pass 127.0.0.1:8080; pass 127.0.0.1:8081;", "\"pass\" directive is duplicate"),
        ("pass 127.0.0.1;", "\"pass\" directive has no port"),
        ("pass [::1];", "\"pass\" directive has no port"),
        ("pass localhost:8080;", "\"pass\" directive has no addresses"),
        ("pass 127.0.0.1:0;", "invalid port in \"127.0.0.1:0\" of the \"pass\" directive"),
        ("pass unix:;", "no path in the unix domain socket in \"unix:\" of the \"pass\" directive"),
        ("pass $nope;", "unknown \"nope\" variable"),
        ("pass;", "invalid number of arguments in \"pass\" directive"),
    ];
    for (line, msg) in cases {
        let (got, code) = check(line);
        let at = if msg.starts_with("unknown") { String::new() } else { " in DIR/nginx.conf:5".to_string() };
        assert_eq!(got, format!("sluice: [emerg] {msg}{at}"), "{line}");
        assert_eq!(code, Some(1), "{line}");
    }
    let (ok, code) = check("pass 127.0.0.1:8080;");
    assert!(ok.ends_with("syntax is ok"), "{ok}");
    assert_eq!(code, Some(0));
    // `pass` belongs in server{} only.
    let dir = TempDir::new("pass-conf");
    std::fs::write(dir.join("nginx.conf"), "events {}\nstream {\n    pass 127.0.0.1:80;\n}\n").expect("write");
    let d = dir.path().display().to_string();
    let out = run(&["-t", "-p", &d, "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("sluice: [emerg] \"pass\" directive is not allowed here in {d}/nginx.conf:3")),
        "{err}"
    );
}

/// With an accept mutex (sessions start after the turn's accepts, posted) the session a
/// `pass` hands over, posted while the posted ones run, starts at once too.
#[test]
fn pass_with_an_accept_mutex() {
    let (a, b) = (free_port(), free_port());
    let s = Sluice::start_master(
        2,
        &format!(
            "events {{ accept_mutex on; }}
stream {{
    server {{ listen 127.0.0.1:{a}; pass 127.0.0.1:{b}; }}
    server {{ listen 127.0.0.1:{b}; return passed; }}
}}
"
        ),
    );
    for _ in 0..5 {
        let t = std::time::Instant::now();
        assert_eq!(read_all(a), "passed", "{}", s.error_log());
        assert!(t.elapsed() < Duration::from_millis(300), "the passed session waited {:?}", t.elapsed());
    }
}
