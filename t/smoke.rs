//! The demo path: `return` and a proxied `return` through the real binary.

use crate::common::*;

#[test]
fn return_and_proxy_to_return() {
    let (a, b) = (free_port(), free_port());
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  server {{ listen 127.0.0.1:{a}; return \"hi $protocol\\n\"; }}\n  \
         server {{ listen 127.0.0.1:{b}; proxy_pass 127.0.0.1:{a}; }}\n}}\n"
    ));
    assert_eq!(exchange(a, b""), b"hi TCP\n");
    assert_eq!(exchange(b, b""), b"hi TCP\n");
    assert_eq!(s.stop(), Some(0));
    assert!(!s.error_log().contains("[alert]"), "{}", s.error_log());
}

/// The demo configuration and every example pass `-t` (in a prefix with a logs/
/// directory, as a fresh checkout has).
#[test]
fn shipped_configurations_pass_t() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("conf/sluice.conf")];
    let mut examples: Vec<_> = std::fs::read_dir(root.join("conf/examples"))
        .expect("conf/examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "examples: {examples:?}");
    files.extend(examples);
    for f in files {
        let dir = crate::common::TempDir::new("shipped");
        std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
        let out = crate::common::run(&["-t", "-p", &dir.prefix(), "-c", &f.to_string_lossy()], dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.contains("test is successful"), "{}:\n{}", f.display(), err);
    }
}

/// Three consecutive free ports (`free_port` walks a sequence, so this seldom retries).
fn port_run() -> u16 {
    for _ in 0..50 {
        let a = free_port();
        if free_port() == a + 1 && free_port() == a + 2 {
            return a;
        }
    }
    panic!("no three consecutive free ports");
}

/// `listen ADDR:FIRST-LAST` (nginx 1.15.10, in the stream core docs): a socket per port,
/// TCP and UDP, IPv4 and IPv6, each a server address of its own in `$server_port` and in
/// the log, as nginx 1.22.1 answered side by side. (Its `-t` messages are recorded
/// cases in conf_errors: listen_range_*.)
#[test]
fn listen_port_ranges() {
    let (t, u) = (port_run(), port_run());
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    log_format f \"$protocol $server_addr:$server_port\";
    access_log %%PREFIX%%ports.log f;
    server {{ listen 127.0.0.1:{t}-{t2}; listen [::1]:{t}-{t1}; return \"tcp $server_port\"; }}
    server {{ listen 127.0.0.1:{u}-{u2} udp; return \"udp $server_port\"; }}
}}
",
        t1 = t + 1,
        t2 = t + 2,
        u2 = u + 2
    ));
    for p in t..=t + 2 {
        assert_eq!(String::from_utf8_lossy(&exchange(p, b"")), format!("tcp {p}"));
    }
    for p in t..=t + 1 {
        let mut c = std::net::TcpStream::connect(("::1", p)).expect("connect ::1");
        let mut got = String::new();
        std::io::Read::read_to_string(&mut c, &mut got).expect("read");
        assert_eq!(got, format!("tcp {p}"));
    }
    assert!(std::net::TcpStream::connect(("::1", t + 2)).is_err(), "[::1] has two ports only");
    for p in u..=u + 2 {
        let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        c.send_to(b"q", ("127.0.0.1", p)).expect("send");
        let mut buf = [0u8; 64];
        let n = c.recv(&mut buf).expect("udp answer");
        assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("udp {p}"));
    }
    let log = || std::fs::read_to_string(s.dir.join("ports.log")).unwrap_or_default();
    assert!(wait_for(std::time::Duration::from_secs(5), || log().lines().count() == 8), "{}", log());
    let l = log();
    for p in t..=t + 2 {
        assert!(l.contains(&format!("TCP 127.0.0.1:{p}\n")), "{l}");
    }
    assert!(l.contains(&format!("TCP ::1:{t}\n")) && l.contains(&format!("UDP 127.0.0.1:{}\n", u + 2)), "{l}");
}

/// `listen ... so_keepalive=` values the kernel refuses (TCP_KEEPIDLE and TCP_KEEPINTVL
/// over 32767 s, TCP_KEEPCNT over 127) are alerts, and the socket serves without them,
/// as nginx's ngx_configure_listening_sockets (side by side with nginx 1.22.1: the same
/// alerts; sluice took the refusal for a bind() error and did not start).
#[test]
fn listen_keepalive_values_the_kernel_refuses_are_alerts() {
    let (a, b) = (free_port(), free_port());
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  server {{ listen 127.0.0.1:{a} so_keepalive=10h::; return a; }}\n  \
         server {{ listen 127.0.0.1:{b} so_keepalive=1m:10h:128; return b; }}\n}}\n"
    ));
    assert_eq!(exchange(a, b""), b"a");
    assert_eq!(exchange(b, b""), b"b");
    let log = s.error_log();
    for (opt, v, p) in [("TCP_KEEPIDLE", 36000, a), ("TCP_KEEPINTVL", 36000, b), ("TCP_KEEPCNT", 128, b)] {
        let want = format!(
            "[alert] {pid}#{pid}: setsockopt({opt}, {v}) 127.0.0.1:{p} failed, ignored (22: Invalid argument)\n",
            pid = s.pid()
        );
        assert!(log.contains(&want), "no {want:?} in\n{log}");
    }
    assert_eq!(s.stop(), Some(0));
}

/// A unix listening socket: `rcvbuf=` and `sndbuf=` apply, and the TCP options
/// (`so_keepalive=`, `fastopen=`) are tried and refused with an alert each, the socket
/// serving on (nginx's ngx_configure_listening_sockets sets them whatever the family);
/// `reuseport` stops the start, as nginx's setsockopt(SO_REUSEPORT) failure does. Side
/// by side with nginx 1.22.1: the same lines.
#[test]
fn unix_listen_options_as_nginx() {
    let dir = TempDir::new("unix-opts");
    let path = format!("{}u.sock", dir.prefix());
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{ server {{ listen unix:{path} so_keepalive=1m:2:3 fastopen=5 rcvbuf=16k; return u; }} }}\n"
    ));
    let mut c = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut got).expect("read");
    assert_eq!(got, b"u");
    let log = s.error_log();
    for (opt, v) in [("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3), ("TCP_FASTOPEN", 5)] {
        let want = format!("setsockopt({opt}, {v}) unix:{path} failed, ignored (95: Operation not supported)\n");
        assert!(log.contains(&want), "no {want:?} in\n{log}");
    }
    assert_eq!(s.stop(), Some(0));
    let other = format!("{}r.sock", dir.prefix());
    let e = Sluice::try_start(&format!(
        "events {{}}\nstream {{ server {{ listen unix:{other} reuseport; return u; }} }}\n"
    ))
    .err()
    .expect("reuseport on a unix socket starts nothing");
    let want = format!("[emerg] setsockopt(SO_REUSEPORT) unix:{other} failed (95: Operation not supported)");
    assert!(e.contains(&want), "no {want:?} in\n{e}");
}
