//! `set_real_ip_from`, `$realip_remote_addr`, `$realip_remote_port`
//! (ngx_stream_realip_module), shaped like nginx-tests' stream_realip.t: a client
//! behind `listen ... proxy_protocol` from a trusted address becomes the header's
//! address (for the variables, the log and the access rules); an untrusted one, an
//! UNKNOWN header or a listener without the PROXY protocol changes nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::access::nginx_t;
use crate::common::{free_port, Sluice, TempDir};

#[test]
fn conf_errors_as_nginx() {
    for name in ["realip_valid", "realip_host_not_found", "realip_bad_cidr", "realip_in_upstream"] {
        nginx_t(name);
    }
}

const SHOW: &str = "return \"$remote_addr:$remote_port:$realip_remote_addr:$realip_remote_port\";";

fn pp_get(mut c: impl Read + Write, header: &str) -> String {
    c.write_all(header.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn tcp(host: &str, port: u16) -> (TcpStream, u16) {
    let c = TcpStream::connect((host, port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let local = c.local_addr().expect("local").port();
    (c, local)
}

const V4: &str = "PROXY TCP4 192.0.2.1 192.0.2.2 1234 5678\r\n";

#[test]
fn proxy_protocol_addresses() {
    let (p6, p4, off) = (free_port(), free_port(), free_port());
    let conf = format!(
        "events {{}}
stream {{
    server {{
        listen 127.0.0.1:{p6} proxy_protocol;
        listen [::1]:{p6} proxy_protocol;
        {SHOW}
        set_real_ip_from ::1;
        set_real_ip_from 127.0.0.2;
    }}
    server {{
        listen 127.0.0.1:{p4} proxy_protocol;
        {SHOW}
        set_real_ip_from 127.0.0.0/8;
        deny 192.0.2.9;
    }}
    server {{
        listen 127.0.0.1:{off};
        {SHOW}
        set_real_ip_from 127.0.0.1;
    }}
}}
"
    );
    let s = Sluice::start(&conf);
    // Not trusted: the connection's own address.
    let (c, me) = tcp("127.0.0.1", p6);
    assert_eq!(pp_get(c, V4), format!("127.0.0.1:{me}:127.0.0.1:{me}"), "ipv4 client, ipv6 trusted");
    let (c, me) = tcp("::1", p6);
    assert_eq!(pp_get(c, V4), format!("192.0.2.1:1234:::1:{me}"), "ipv6 realip");
    let (c, me) = tcp("127.0.0.1", p4);
    assert_eq!(pp_get(c, V4), format!("192.0.2.1:1234:127.0.0.1:{me}"), "ipv4 realip");
    let (c, me) = tcp("127.0.0.1", p4);
    let v6 = "PROXY TCP6 2001:db8::1 2001:db8::2 4321 5678\r\n";
    assert_eq!(pp_get(c, v6), format!("2001:db8::1:4321:127.0.0.1:{me}"), "an IPv6 header");
    let (c, me) = tcp("127.0.0.1", p4);
    let unknown = "PROXY UNKNOWN TCP4 192.0.2.1 192.0.2.2 1234 5678\r\n";
    assert_eq!(pp_get(c, unknown), format!("127.0.0.1:{me}:127.0.0.1:{me}"), "UNKNOWN");
    // Port 0 in the header: $remote_port is empty, as nginx prints no port 0.
    let (c, me) = tcp("127.0.0.1", p4);
    let zero = "PROXY TCP4 192.0.2.1 192.0.2.2 0 5678\r\n";
    assert_eq!(pp_get(c, zero), format!("192.0.2.1::127.0.0.1:{me}"), "source port 0");
    // Without proxy_protocol on the listener the header is just data.
    let (c, me) = tcp("127.0.0.1", off);
    assert_eq!(pp_get(c, ""), format!("127.0.0.1:{me}:127.0.0.1:{me}"), "no proxy_protocol");
    // The access rules see the real address; so does the log.
    let (c, _) = tcp("127.0.0.1", p4);
    assert_eq!(pp_get(c, "PROXY TCP4 192.0.2.9 192.0.2.2 1234 5678\r\n"), "");
    let log = s.error_log();
    assert!(
        log.contains(&format!(
            "access forbidden by rule while initializing session, client: 192.0.2.9, server: 127.0.0.1:{p4}"
        )),
        "{log}"
    );
}

/// A name trusts every address it resolves to; `unix:` trusts unix-domain clients.
#[test]
fn trusted_by_name_and_unix() {
    let dir = TempDir::new("realip-unix");
    let port = free_port();
    let sock = dir.join("pp.sock");
    let conf = format!(
        "events {{}}
stream {{
    set_real_ip_from localhost;
    server {{ listen 127.0.0.1:{port} proxy_protocol; {SHOW} }}
    server {{ listen unix:{sock} proxy_protocol; set_real_ip_from unix:; {SHOW} }}
}}
",
        sock = sock.display()
    );
    let _s = Sluice::start(&conf);
    let (c, me) = tcp("127.0.0.1", port);
    assert_eq!(pp_get(c, V4), format!("192.0.2.1:1234:127.0.0.1:{me}"));
    let u = UnixStream::connect(&sock).expect("connect unix");
    u.set_read_timeout(Some(Duration::from_secs(10))).ok();
    assert_eq!(pp_get(u, V4), "192.0.2.1:1234:unix::");
}

/// `$realip_remote_addr`/`_port` name the socket's peer as it was when realip replaced
/// the client address (nginx keeps it in the module's context), also after the client
/// has reset the connection and the peer can no longer be asked (side by side with
/// nginx 1.22.1: "127.0.0.1|PORT"; sluice gave the header's "192.0.2.1|4321").
#[test]
fn realip_remote_addr_survives_a_client_reset() {
    let echo = crate::common::backend(crate::common::echo);
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    log_format r '$realip_remote_addr|$realip_remote_port|$remote_addr|$remote_port';
    server {{ listen 127.0.0.1:{p} proxy_protocol; set_real_ip_from 127.0.0.1; proxy_pass 127.0.0.1:{echo};
             access_log %%PREFIX%%r.log r; }}
}}
"
    ));
    let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    let port = c.local_addr().expect("local").port();
    c.write_all(b"PROXY TCP4 192.0.2.1 198.51.100.2 4321 443\r\nhello").expect("write");
    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).expect("the echo");
    // Close with a reset (SO_LINGER 0).
    let sock = socket2::SockRef::from(&c);
    sock.set_linger(Some(Duration::ZERO)).expect("linger");
    drop(c);
    let lines = s.wait_lines("r.log", 1);
    assert_eq!(lines, vec![format!("127.0.0.1|{port}|192.0.2.1|4321")]);
}

/// A unix listener's client given an address by realip is sent upstream as that address:
/// nginx takes the PROXY keyword from the client's family and prints the listener as
/// `unix:PATH` with port 0, cut at its 107-byte buffer (side by side with nginx 1.22.1;
/// sluice sent "PROXY UNKNOWN").
#[test]
fn unix_listener_client_sent_upstream_with_its_real_address() {
    let dir = TempDir::new("realip-unix-pp");
    let echo = crate::common::backend(crate::common::echo);
    let short = dir.join("s.sock");
    // A path of 100 bytes: it fits sun_path (108) but not nginx's 107-byte header line.
    let long = dir.join(&"L".repeat(100 - 1 - dir.0.display().to_string().len().min(90)));
    let conf = format!(
        "events {{}}
stream {{
    set_real_ip_from unix:;
    proxy_protocol on;
    server {{ listen unix:{s} proxy_protocol; proxy_pass 127.0.0.1:{echo}; }}
    server {{ listen unix:{l} proxy_protocol; proxy_pass 127.0.0.1:{echo}; }}
}}
",
        s = short.display(),
        l = long.display()
    );
    let _s = Sluice::start(&conf);
    let ask = |path: &std::path::Path, header: &str| {
        let mut u = UnixStream::connect(path).expect("connect unix");
        u.set_read_timeout(Some(Duration::from_secs(10))).ok();
        u.write_all(format!("{header}x").as_bytes()).expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"x") {
            match u.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let v4 = "PROXY TCP4 192.0.2.1 198.51.100.2 4321 443\r\n";
    let v6 = "PROXY TCP6 2001:db8::1 2001:db8::2 4321 443\r\n";
    assert_eq!(ask(&short, v4), format!("PROXY TCP4 192.0.2.1 unix:{} 4321 0\r\nx", short.display()));
    assert_eq!(ask(&short, v6), format!("PROXY TCP6 2001:db8::1 unix:{} 4321 0\r\nx", short.display()));
    assert_eq!(ask(&short, "PROXY UNKNOWN\r\n"), "PROXY UNKNOWN\r\nx");
    let full = format!("PROXY TCP4 192.0.2.1 unix:{} 4321 0\r\n", long.display());
    assert!(full.len() > 107, "the path must be long enough to be cut: {full}");
    // nginx's ngx_sock_ntop says one byte less than it wrote for a path cut short: the
    // ports' space lands on the last byte.
    assert_eq!(ask(&long, v4), format!("{} x", &full[..106]));
}

/// A unix client that bound its socket to a path is known by it ("unix:PATH" in
/// `$remote_addr`, `$binary_remote_addr`, `$realip_remote_addr` and the error log), an
/// unnamed one as "unix:" (side by side with nginx 1.22.1: sluice printed "unix:" for both).
#[test]
fn named_unix_client_known_by_its_path() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir = TempDir::new("unix-named-client");
    let srv = dir.join("srv.sock");
    let me = dir.join("client.sock");
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    server {{ listen unix:{srv}; return \"$remote_addr|$binary_remote_addr|$realip_remote_addr|$remote_port|\"; }}
}}
",
        srv = srv.display()
    ));
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
    sock.bind(&SockAddr::unix(&me).expect("path")).expect("bind");
    sock.connect(&SockAddr::unix(&srv).expect("path")).expect("connect");
    let named: UnixStream = sock.into();
    named.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let m = me.display();
    assert_eq!(pp_get(named, ""), format!("unix:{m}|unix:{m}|unix:{m}||"));
    let unnamed = UnixStream::connect(&srv).expect("connect");
    unnamed.set_read_timeout(Some(Duration::from_secs(10))).ok();
    assert_eq!(pp_get(unnamed, ""), "unix:|unix:|unix:||");
    let log = s.error_log();
    assert!(log.contains(&format!("client unix:{m} connected to unix:{}", srv.display())), "{log}");
    assert!(log.contains(&format!("client unix: connected to unix:{}", srv.display())), "{log}");
}

/// A variable's bytes that are not UTF-8 (`$binary_remote_addr` of a 192.168.x.x client)
/// go into error lines as they are, as nginx's "%V": limit_conn's too-long key,
/// proxy_bind's and proxy_download_rate's invalid values (side by side with nginx 1.22.1).
#[test]
fn binary_values_in_error_lines_keep_their_bytes() {
    let (p, q) = (free_port(), free_port());
    let be = crate::common::backend(|mut c| {
        let _ = c.write_all(b"hi");
    });
    let long = "k".repeat(260);
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    limit_conn_zone \"${{binary_remote_addr}}{long}\" zone=z:1m;
    server {{
        listen 127.0.0.1:{p} proxy_protocol;
        set_real_ip_from 127.0.0.1;
        limit_conn z 1;
        return ok;
    }}
    server {{
        listen 127.0.0.1:{q} proxy_protocol;
        set_real_ip_from 127.0.0.1;
        proxy_bind $binary_remote_addr;
        proxy_download_rate \"${{binary_remote_addr}}\";
        proxy_pass 127.0.0.1:{be};
    }}
}}"
    ));
    let header = "PROXY TCP4 192.168.1.10 10.0.0.1 5000 80\r\n";
    assert_eq!(pp_get(tcp("127.0.0.1", p).0, header), "ok");
    let _ = pp_get(tcp("127.0.0.1", q).0, header);
    let addr = b"\xc0\xa8\x01\x0a";
    let lines = [
        [b"key is more than 255 bytes: \"".as_slice(), addr, long.as_bytes(), b"\""].concat(),
        [b"invalid local address \"".as_slice(), addr, b"\""].concat(),
        [b"invalid size \"".as_slice(), addr, b"\""].concat(),
    ];
    let log_has = |l: &[u8]| {
        let log = std::fs::read(s.dir.join("error.log")).unwrap_or_default();
        log.windows(l.len()).any(|w| w == l)
    };
    for l in &lines {
        crate::common::wait_for(Duration::from_secs(10), || log_has(l));
        assert!(log_has(l), "{}\n{}", String::from_utf8_lossy(l), s.error_log());
    }
}
