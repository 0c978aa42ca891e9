//! `ssl_preread on` (ngx_stream_ssl_preread_module): `$ssl_preread_server_name`,
//! `$ssl_preread_alpn_protocols`, `$ssl_preread_protocol` from ClientHellos made by a
//! real TLS client (python's ssl module, i.e. OpenSSL), checked against real nginx
//! 1.22.1: the hellos nginx saw are in t/data/proxy_protocol/recorded.json (record.py
//! there) and are replayed byte for byte, whole, split over TCP segments with pauses,
//! fragmented over TLS records, and grown to post-quantum size; and fresh hellos are
//! captured from python here, by a plain TCP listener, and sent to sluice, which must
//! answer what nginx answered for the same SNI and ALPN. Also: input that is not TLS,
//! `preread_timeout`, `preread_buffer_size`, a PROXY header in front of the hello.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::proxy_protocol::{case, check_cases, clip, compare, compare_fields, Bed, Case};

/// Recorded hellos from python's ssl module: TLS 1.3 with SNI and ALPN, without SNI,
/// TLS 1.2 only, TLS 1.0 only, and a 2 KB one (twelve long ALPN protocols).
#[test]
fn hellos_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &["tls13", "tls13_no_sni", "tls12", "tls10", "big_alpn"]);
}

/// The same hellos split: over five TCP segments 100 ms apart (the first one byte);
/// the handshake message fragmented over three TLS records (the SNI host name cut in
/// two); a post-quantum sized hello (an X25519MLKEM768 key share, 1.7 KB) in one
/// record and fragmented over two records sent in three segments; the 2 KB hello in
/// 500-byte segments.
#[test]
fn split_and_large_hellos_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &["tls13_segments", "tls13_three_records", "pq", "pq_two_records", "big_alpn_segments"]);
    assert!(case("pq").send[0].len() > 1500, "the pq hello is post-quantum sized");
    assert!(case("big_alpn").send[0].len() > 2000);
}

/// An SSLv2-framed hello (protocol only), input that is not TLS (the phase declines:
/// the variables are not found, "-" in the log, and the session goes on), a PROXY
/// header in front of a hello, and a proxied hello (the upstream gets every byte).
#[test]
fn other_input_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &["sslv2", "not_tls", "after_pp", "proxied"]);
}

/// Fewer bytes than a record header, or part of a hello: nginx waits for more until
/// `preread_timeout` and then ends the session (200, no content); when the client
/// closes its side first, nginx ends the session at once (200, no content).
#[test]
fn preread_timeout_and_eof_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &["not_tls_short", "partial_timeout", "partial_eof"]);
}

/// A hello larger than `preread_buffer_size`: "preread buffer full", 400.
#[test]
fn preread_buffer_full_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &["buffer_full"]);
}

/// Where no ClientHello was parsed — no `ssl_preread` in the server, or the session
/// never got that far — the variables are not found (nginx: no module context), which
/// the access log shows as "-" (the `$ssl_preread_*` fields of the recorded PROXY
/// protocol sessions).
#[test]
fn variables_without_a_hello_as_nginx() {
    let bed = Bed::start("", &[]);
    let mut report = Vec::new();
    for name in ["v1_tcp4", "v2_local", "v1_bad_port", "timeout", "send_v4", "v1_payload"] {
        let c = case(name);
        let o = bed.run(c);
        let diffs = compare_fields(&bed, c, &o, true);
        if !diffs.is_empty() {
            report.push(format!("case {} ({}):\n  {}", c.name, c.note, clip(&diffs.join("\n  "))));
        }
    }
    assert!(report.is_empty(), "sluice differs from nginx 1.22.1:\n{}", report.join("\n"));
}

// --------------------------------------------------------- a live TLS client --

const TLS_CLIENT: &str = include_str!("data/proxy_protocol/tls_client.py");

/// The ClientHello python's ssl module sends for `params` (tls_client.py's), caught by
/// a plain TCP listener here: one whole handshake record.
fn python_hello(mut params: serde_json::Value) -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    params["port"] = json!(l.local_addr().expect("addr").port());
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(TLS_CLIENT)
        .arg(params.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3 (the TLS client)");
    let end = Instant::now() + Duration::from_secs(10);
    let accepted = loop {
        match l.accept() {
            Ok((c, _)) => break Some(c),
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let mut hello = Vec::new();
    if let Some(mut c) = accepted {
        c.set_nonblocking(false).ok();
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut b = [0u8; 65536];
        while hello.len() < 5 || hello.len() < 5 + u16::from_be_bytes([hello[3], hello[4]]) as usize {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => hello.extend_from_slice(&b[..n]),
            }
        }
    }
    // the client gives up once the listener closes; bounded either way
    let end = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        hello.len() > 9 && hello[0] == 0x16 && hello[5] == 1,
        "no ClientHello from python for {}: {:02x?}",
        params,
        &hello[..hello.len().min(16)]
    );
    assert_eq!(hello.len(), 5 + u16::from_be_bytes([hello[3], hello[4]]) as usize, "one record");
    hello
}

/// Where the SNI host name starts in a one-record hello.
fn sni_host_offset(rec: &[u8]) -> usize {
    let be = |i: usize| u16::from_be_bytes([rec[i], rec[i + 1]]) as usize;
    let mut p = 5 + 4 + 2 + 32; // record header, handshake header, version, random
    p += 1 + rec[p] as usize; // session id
    p += 2 + be(p); // cipher suites
    p += 1 + rec[p] as usize; // compression methods
    let end = p + 2 + be(p);
    p += 2;
    while p < end {
        let (ty, len) = (be(p), be(p + 2));
        if ty == 0 {
            return p + 4 + 2 + 3; // list length, name type, name length
        }
        p += 4 + len;
    }
    panic!("no SNI in the hello");
}

/// The handshake message of a one-record hello, fragmented into records at `cuts`
/// (offsets into the message).
fn fragment(rec: &[u8], cuts: &[usize]) -> Vec<u8> {
    let hs = &rec[5..];
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts.iter().chain(std::iter::once(&hs.len())) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&((c - last) as u16).to_be_bytes());
        out.extend_from_slice(&hs[last..c]);
        last = c;
    }
    out
}

/// Fresh hellos from python, sent whole, byte by byte at first and then in small
/// segments, and fragmented over records: sluice must answer what nginx answered for
/// the recorded hello with the same parameters (the answer does not depend on the
/// random parts of a hello).
#[test]
fn live_python_hellos_as_nginx() {
    let bed = Bed::start("", &[]);
    let mut report = Vec::new();
    let mut check = |what: &str, like: &Case, send: Vec<Vec<u8>>, pause: Duration| {
        let o = bed.session(&like.server, like.family, &send, pause, false);
        let diffs = compare(&bed, like, &o);
        if !diffs.is_empty() {
            report.push(format!("{} (as nginx's {}):\n  {}", what, like.name, clip(&diffs.join("\n  "))));
        }
    };
    let params = [
        ("tls13", json!({"sni": "app.example.com", "alpn": ["h2", "http/1.1"]})),
        ("tls13_no_sni", json!({"alpn": ["imap"]})),
        ("tls12", json!({"sni": "legacy.example", "max": "TLSv1_2"})),
        ("tls10", json!({"sni": "old.example", "min": "TLSv1", "max": "TLSv1", "ciphers": "DEFAULT:@SECLEVEL=0"})),
        (
            "big_alpn",
            json!({"sni": "big.example",
                   "alpn": (0..12).map(|i| format!("p{:02}-{}", i, "x".repeat(145))).collect::<Vec<_>>()}),
        ),
    ];
    for (name, p) in params {
        let hello = python_hello(p);
        let like = case(name);
        check(&format!("live {} hello", name), like, vec![hello.clone()], Duration::ZERO);
        // five single bytes (the record header alone), then 128-byte segments
        let mut segs: Vec<Vec<u8>> = hello[..5].iter().map(|&b| vec![b]).collect();
        segs.extend(hello[5..].chunks(128).map(<[u8]>::to_vec));
        let pause = Duration::from_millis(if segs.len() > 12 { 10 } else { 30 });
        check(&format!("live {} hello in {} segments", name, segs.len()), like, segs, pause);
        if name != "tls13_no_sni" {
            // three records: 10 bytes, then up to the middle of the host name, the rest
            let cut = sni_host_offset(&hello) - 5 + 3;
            check(
                &format!("live {} hello in three records", name),
                like,
                vec![fragment(&hello, &[10, cut])],
                Duration::ZERO,
            );
        }
    }
    assert!(report.is_empty(), "sluice differs from nginx 1.22.1:\n{}", report.join("\n"));
}

/// The bytes after the hello go on to the upstream too, whatever the segments: a live
/// hello and data in one write, answered by the mirror backend.
#[test]
fn live_hello_proxied_untouched() {
    let bed = Bed::start("", &[]);
    let mut send = python_hello(json!({"sni": "app.example.com", "alpn": ["h2"]}));
    send.extend_from_slice(b"hello\n");
    let o = bed.session("SP_PROXY", 4, std::slice::from_ref(&send), Duration::ZERO, false);
    assert_eq!(o.reply, send, "the mirror got what the client sent");
    let mut c = std::net::TcpStream::connect(("127.0.0.1", bed.port("SP_PROXY"))).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    c.write_all(&send[..7]).expect("write");
    std::thread::sleep(Duration::from_millis(100));
    c.write_all(&send[7..]).expect("write");
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert_eq!(got, send, "in two segments");
}

/// A backend that answers `tag` once the client's first bytes came, then closes.
fn tag_backend(tag: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            c.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let _ = c.read(&mut [0u8; 4096]);
            let _ = c.write_all(tag);
        }
    });
    port
}

/// A `$ssl_preread_*` variable read before the preread phase (here by a `limit_conn`
/// key, in the preaccess phase) is not found, and nginx keeps that for the whole
/// session, as it keeps any cacheable variable: an SNI router's map then sees no name
/// (nginx 1.22.1 side by side: the default upstream, `sni="-"`). Read first after the
/// phase, it is the hello's.
#[test]
fn preread_variables_read_early_stay_not_found() {
    let hello = case("tls13").send[0].clone();
    let (a, b) = (tag_backend(b"A"), tag_backend(b"B"));
    let (p, q) = (crate::common::free_port(), crate::common::free_port());
    let s = crate::common::Sluice::start(&format!(
        "events {{}}
stream {{
    log_format s '$server_port sni=\"$ssl_preread_server_name\"';
    access_log %%PREFIX%%s.log s;
    map $ssl_preread_server_name $backend {{ app.example.com 127.0.0.1:{a}; default 127.0.0.1:{b}; }}
    limit_conn_zone $ssl_preread_server_name zone=per_sni:1m;
    server {{ listen 127.0.0.1:{p}; ssl_preread on; limit_conn per_sni 10; proxy_pass $backend; }}
    server {{ listen 127.0.0.1:{q}; ssl_preread on; proxy_pass $backend; }}
}}
"
    ));
    for (port, want) in [(p, "B"), (q, "A")] {
        let mut c = crate::common::connect(port);
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        c.write_all(&hello).expect("write");
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert_eq!(String::from_utf8_lossy(&got), want, "port {}", port);
    }
    let lines = s.wait_lines("s.log", 2);
    assert!(lines.contains(&format!("{p} sni=\"-\"")), "{lines:?}");
    assert!(lines.contains(&format!("{q} sni=\"app.example.com\"")), "{lines:?}");
}

/// A preread read that filled its buffer leaves the client ready to read, so the proxy
/// reads the rest while it connects (nginx's posted read event): a refused connect is
/// then logged while proxying connection, with the bytes read counted (side by side
/// with nginx 1.22.1: 26 of 90 bytes past a 64-byte buffer; sluice read nothing more).
#[test]
fn full_preread_buffer_reads_on_while_connecting() {
    let (p, dead) = (crate::common::free_port(), crate::common::free_port());
    let s = crate::common::Sluice::start(&format!(
        "events {{}}
stream {{
    server {{ listen 127.0.0.1:{p}; ssl_preread on; preread_buffer_size 64; proxy_pass 127.0.0.1:{dead}; }}
}}
"
    ));
    let mut c = crate::common::connect(p);
    std::io::Write::write_all(&mut c, &[b'y'; 90]).expect("write");
    let want = format!(
        "connect() failed (111: Connection refused) while proxying connection, client: 127.0.0.1, server: \
         127.0.0.1:{p}, upstream: \"127.0.0.1:{dead}\", bytes from/to client:26/0, bytes from/to upstream:0/0"
    );
    assert!(
        crate::common::wait_for(std::time::Duration::from_secs(10), || s.error_log().contains(&want)),
        "{}",
        s.error_log()
    );
    drop(c);
}

/// Client name bytes that are not UTF-8, or hold a NUL, go on as nginx passes them
/// (recorded side by side with nginx 1.22.1, Debian deb12u11): `proxy_ssl_name
/// $ssl_preread_server_name` sends the name cut at its NUL (nginx copies it as a C
/// string) and other bytes unchanged, and the worker lives on (sluice used to panic on
/// the NUL); `proxy_pass $ssl_preread_server_name:80` asks the resolver for the name's
/// own bytes and logs them so.
#[test]
fn client_name_bytes_go_upstream_as_they_came() {
    use crate::common::{connect, free_port, sni_hello, Sluice};
    let (a, b, r) = (free_port(), free_port(), free_port());
    let dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    dns.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dns_port = dns.local_addr().unwrap().port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n    log_format b 'B:$ssl_preread_server_name';\n    \
         server {{ listen 127.0.0.1:{a}; ssl_preread on; proxy_pass 127.0.0.1:{b}; proxy_ssl on;\n        \
         proxy_ssl_server_name on; proxy_ssl_name $ssl_preread_server_name; }}\n    \
         server {{ listen 127.0.0.1:{b}; ssl_preread on; access_log %%PREFIX%%b.log b; return \"\"; }}\n    \
         server {{ listen 127.0.0.1:{r}; ssl_preread on; resolver 127.0.0.1:{dns_port}; resolver_timeout 300ms;\n        \
         proxy_pass $ssl_preread_server_name:80; }}\n}}\n"
    ));
    for name in [&b"a\0b"[..], b"\xff.com", b"after.example"] {
        let mut c = connect(a);
        c.write_all(&sni_hello(name)).unwrap();
        let _ = c.read_to_end(&mut Vec::new());
    }
    let log = s.wait_lines("b.log", 3);
    assert_eq!(log, ["B:a", "B:\\xFF.com", "B:after.example"]);

    let mut c = connect(r);
    c.write_all(&sni_hello(b"ok\xff")).unwrap();
    let mut q = [0u8; 512];
    let n = dns.recv(&mut q).expect("a query");
    assert_eq!(&q[12..n - 4], b"\x03ok\xff\x00", "the question's name");
    let _ = c.read_to_end(&mut Vec::new());
    let err = std::fs::read(s.dir.join("error.log")).unwrap();
    let needle = b"ok\xff could not be resolved (110: Operation timed out)";
    assert!(err.windows(needle.len()).any(|w| w == needle), "{}", String::from_utf8_lossy(&err));
    s.stop();
}
