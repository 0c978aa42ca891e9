//! TLS termination (`listen ... ssl`, ngx_stream_ssl_module) through the real binary,
//! with an OpenSSL client. Every expected log line and variable value below was
//! recorded from nginx 1.22.1 (Debian's, OpenSSL 3.0) on the same configuration and the
//! same client; the certificate is t/data/conf_errors/ssl.files/cert.pem.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use sha2::{Digest, Sha256};

use crate::common::{backend, connect, echo, free_port, wait_for, Sluice};

fn files() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("t/data/conf_errors/ssl.files")
}

/// A server on `port` terminating TLS with the test certificate; `extra` goes into the
/// server block, `content` is its proxy_pass or return.
fn conf(port: u16, extra: &str, content: &str) -> String {
    let f = files();
    format!(
        "events {{}}\nstream {{\n    log_format t '$status $bytes_sent $bytes_received [$ssl_protocol] [$ssl_cipher] \
         [$ssl_session_reused] [$ssl_server_name] [$ssl_alpn_protocol] [$ssl_client_verify] [$ssl_curve]';\n    \
         access_log %%PREFIX%%access.log t;\n    server {{\n        listen 127.0.0.1:{port} ssl;\n        \
         ssl_certificate {c};\n        ssl_certificate_key {k};\n        {extra}\n        {content}\n    }}\n}}\n",
        c = f.join("cert.pem").display(),
        k = f.join("key.pem").display(),
    )
}

/// A TLS client: `setup` adjusts its context (protocols, ALPN); no certificate check.
fn tls(
    port: u16,
    sni: Option<&str>,
    setup: impl FnOnce(&mut openssl::ssl::SslConnectorBuilder),
) -> SslStream<TcpStream> {
    tls_result(port, sni, setup).expect("TLS handshake")
}

fn tls_result(
    port: u16,
    sni: Option<&str>,
    setup: impl FnOnce(&mut openssl::ssl::SslConnectorBuilder),
) -> Result<SslStream<TcpStream>, String> {
    let mut b = SslConnector::builder(SslMethod::tls()).expect("connector");
    b.set_verify(SslVerifyMode::NONE);
    setup(&mut b);
    let c = b.build();
    let mut cfg = c.configure().expect("configure");
    cfg.set_verify_hostname(false);
    cfg.set_use_server_name_indication(sni.is_some());
    cfg.connect(sni.unwrap_or("unused"), connect(port)).map_err(|e| e.to_string())
}

/// A TLSv1.2 client without certificate checks (sessions resume by id or ticket);
/// `setup` adds to it (a client certificate).
fn tls12(setup: impl FnOnce(&mut openssl::ssl::SslConnectorBuilder)) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls()).expect("connector");
    b.set_verify(SslVerifyMode::NONE);
    b.set_max_proto_version(Some(SslVersion::TLS1_2)).expect("max");
    setup(&mut b);
    b.build()
}

/// A handshake with `b` offering `sess`.
fn resume(b: &SslConnector, sess: &openssl::ssl::SslSessionRef, port: u16) -> SslStream<TcpStream> {
    let mut cfg = b.configure().expect("cfg").verify_hostname(false);
    // SAFETY: the tests offer sessions made for the server they connect to.
    unsafe { cfg.set_session(sess).expect("set session") };
    cfg.connect("x", connect(port)).expect("handshake")
}

/// The error log's lines at info and above from session `*N` lines, without the time
/// and the pid, client ports as P.
fn session_lines(s: &Sluice) -> Vec<String> {
    s.error_log()
        .lines()
        .filter(|l| l.contains(" *"))
        .map(|l| {
            let l = l.split_once("] ").map_or(l, |(_, r)| r);
            let l = l.split_once(": ").map_or(l, |(_, r)| r);
            let mut out = String::new();
            let mut rest = l;
            // 127.0.0.1:NNNNN (a client port) reads as 127.0.0.1:P.
            while let Some(i) = rest.find("127.0.0.1:") {
                out.push_str(&rest[..i + 10]);
                rest = &rest[i + 10..];
                let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
                out.push('P');
                rest = &rest[digits..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

fn wait_log(s: &Sluice, n: usize) -> Vec<String> {
    s.wait_lines("access.log", n)
}

/// The default protocols of nginx 1.22.1's stream module are TLSv1 to TLSv1.2: an
/// OpenSSL client gets TLSv1.2 with its first choice of cipher, its SNI name is
/// `$ssl_server_name`, no client certificate is NONE; bytes pass both ways.
#[test]
fn handshake_and_proxy_as_nginx() {
    let port = free_port();
    let up = backend(echo);
    let mut s = Sluice::start(&conf(port, "", &format!("proxy_pass 127.0.0.1:{up};")));
    let mut c = tls(port, Some("foo.example"), |_| {});
    c.write_all(b"hello\n").expect("write");
    let mut buf = [0u8; 6];
    c.read_exact(&mut buf).expect("read echo");
    assert_eq!(&buf, b"hello\n");
    c.shutdown().ok();
    drop(c);
    let log = wait_log(&s, 1);
    assert_eq!(
        log,
        ["200 6 6 [TLSv1.2] [ECDHE-RSA-AES256-GCM-SHA384] [.] [foo.example] [-] [NONE] [X25519]"],
        "access log"
    );
    s.stop();
}

/// `return` over TLS, and the close_notify after it: the client reads the text and a
/// clean end of the TLS session, not a truncation.
#[test]
fn return_ends_with_close_notify() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "", "return \"hello $ssl_protocol\\n\";"));
    let mut c = tls(port, None, |_| {});
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read to a clean end (close_notify)");
    assert_eq!(out, "hello TLSv1.2\n");
    assert_eq!(wait_log(&s, 1), ["200 14 0 [TLSv1.2] [ECDHE-RSA-AES256-GCM-SHA384] [.] [-] [-] [NONE] [X25519]"]);
    s.stop();
}

/// Megabytes both ways through TLS with a backend that echoes: OpenSSL reads ahead
/// whole records, so a short read does not mean the socket is drained (a relay that
/// thought so stalled after a few hundred kilobytes, waiting for an event that had
/// already been consumed).
#[test]
fn bulk_both_ways_through_tls() {
    let port = free_port();
    let up = backend(echo);
    let mut s = Sluice::start(&conf(port, "ssl_protocols TLSv1.2 TLSv1.3;", &format!("proxy_pass 127.0.0.1:{up};")));
    let c = tls(port, None, |_| {});
    let mut data = vec![0u8; 6 << 20];
    let mut x: u32 = 12345;
    for b in data.iter_mut() {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    let want = Sha256::digest(&data);
    let c = std::sync::Arc::new(std::sync::Mutex::new(c));
    // One TLS stream cannot be read and written from two threads at once: write in
    // slices, reading what came back in between (non-blocking reads).
    let mut got = Vec::with_capacity(data.len());
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    {
        let mut g = c.lock().expect("lock");
        g.get_ref().set_read_timeout(Some(Duration::from_millis(20))).ok();
        while got.len() < data.len() {
            assert!(Instant::now() < deadline, "relay stalled: {} of {} bytes back", got.len(), data.len());
            if sent < data.len() {
                let end = (sent + 64 * 1024).min(data.len());
                g.write_all(&data[sent..end]).expect("write");
                sent = end;
            }
            let mut buf = [0u8; 65536];
            match g.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), want, "the bytes came back unchanged");
    drop(c);
    let log = wait_log(&s, 1);
    assert!(log[0].starts_with("200 6291456 6291456 [TLSv1.3]"), "{log:?}");
    s.stop();
}

/// Plain text to a TLS port: nginx's info line ("http request"), 500, nothing sent.
#[test]
fn plain_text_client_as_nginx() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "", "return ok;"));
    let mut c = connect(port);
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let log = wait_log(&s, 1);
    assert_eq!(log, ["500 0 0 [TLSv1.3] [(NONE)] [.] [-] [-] [NONE] [-]"]);
    let lines = session_lines(&s);
    assert!(
        lines.contains(
            &format!(
                "*1 SSL_do_handshake() failed (SSL: error:0A00009C:SSL routines::http request) while SSL handshaking, \
                 client: 127.0.0.1, server: 127.0.0.1:{port}"
            )
            .replace(&format!(":{port}"), ":P")
        ),
        "{lines:?}"
    );
    s.stop();
}

/// A client offering only TLSv1.3 where the default protocols stop at TLSv1.2.
#[test]
fn protocol_refused_as_nginx() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "", "return ok;"));
    let r = tls_result(port, None, |b| {
        b.set_min_proto_version(Some(SslVersion::TLS1_3)).expect("min");
    });
    assert!(r.is_err(), "TLSv1.3 alone must be refused");
    let log = wait_log(&s, 1);
    assert_eq!(log, ["500 0 0 [TLSv1.2] [(NONE)] [.] [-] [-] [NONE] [-]"]);
    assert!(
        session_lines(&s).iter().any(|l| l.starts_with(
            "*1 SSL_do_handshake() failed (SSL: error:0A000102:SSL routines::unsupported protocol) while SSL handshaking"
        )),
        "{:?}",
        session_lines(&s)
    );
    s.stop();
}

/// A client that connects and closes without a byte: "peer closed connection in SSL
/// handshake"; one that says nothing is ended by `ssl_handshake_timeout` with 500 and
/// no line of its own.
#[test]
fn closed_and_silent_clients_as_nginx() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "ssl_handshake_timeout 300ms;", "return ok;"));
    drop(connect(port));
    wait_log(&s, 1);
    let silent = connect(port);
    let started = Instant::now();
    let log = wait_log(&s, 2);
    assert!(started.elapsed() >= Duration::from_millis(250), "ended after {:?}", started.elapsed());
    assert_eq!(log, ["500 0 0 [TLSv1.3] [(NONE)] [.] [-] [-] [NONE] [-]"; 2]);
    drop(silent);
    let lines = session_lines(&s);
    let own: Vec<&String> = lines.iter().filter(|l| !l.contains("connected to")).collect();
    assert_eq!(
        own,
        [&"*1 peer closed connection in SSL handshake while SSL handshaking, client: 127.0.0.1, server: 127.0.0.1:P"
            .to_string()],
        "{lines:?}"
    );
    s.stop();
}

/// `ssl_alpn`: the first of the server's protocols the client offers; none in common
/// is a fatal alert and nginx's info line.
#[test]
fn alpn_as_nginx() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "ssl_protocols TLSv1.2 TLSv1.3; ssl_alpn h2 http/1.1;", "return ok;"));
    let mut c = tls(port, None, |b| b.set_alpn_protos(b"\x08http/1.1\x03foo").expect("alpn"));
    let mut out = String::new();
    c.read_to_string(&mut out).ok();
    assert_eq!(out, "ok");
    assert_eq!(c.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));
    wait_log(&s, 1);
    assert!(tls_result(port, None, |b| b.set_alpn_protos(b"\x03foo").expect("alpn")).is_err());
    let log = wait_log(&s, 2);
    assert_eq!(log[0], "200 2 0 [TLSv1.3] [TLS_AES_256_GCM_SHA384] [.] [-] [http/1.1] [NONE] [X25519]");
    assert!(log[1].starts_with("500 0 0 [TLSv1.3] "), "{log:?}");
    assert!(
        session_lines(&s).iter().any(|l| l.starts_with(
            "*2 SSL_do_handshake() failed (SSL: error:0A0000EB:SSL routines::no application protocol) while SSL handshaking"
        )),
        "{:?}",
        session_lines(&s)
    );
    s.stop();
}

/// A TLSv1.2 session resumed from its ticket is `$ssl_session_reused` "r".
#[test]
fn session_resumed_from_ticket() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "", "return ok;"));
    let b = tls12(|_| {});
    let mut c = b.configure().expect("cfg").verify_hostname(false).connect("x", connect(port)).expect("first");
    let mut out = String::new();
    c.read_to_string(&mut out).ok();
    let sess = c.ssl().session().expect("a session").to_owned();
    let mut c2 = resume(&b, &sess, port);
    c2.read_to_string(&mut out).ok();
    assert!(c2.ssl().session_reused(), "the client resumed");
    let log = wait_log(&s, 2);
    assert!(log[0].starts_with("200 2 0 [TLSv1.2] [ECDHE-RSA-AES256-GCM-SHA384] [.]"), "{log:?}");
    assert!(log[1].starts_with("200 2 0 [TLSv1.2] [ECDHE-RSA-AES256-GCM-SHA384] [r]"), "{log:?}");
    s.stop();
}

/// `-V` names the module, as nginx's configure arguments do (nginx-tests look there).
#[test]
fn version_names_the_ssl_module() {
    let out = std::process::Command::new(crate::common::bin()).arg("-V").output().expect("run -V");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--with-stream_ssl_module"), "{text}");
    assert!(wait_for(Duration::from_secs(1), || true));
}

/// A TLS server context with the test certificate, for backends.
fn acceptor_builder() -> openssl::ssl::SslAcceptorBuilder {
    let mut b = openssl::ssl::SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
    b.set_certificate_chain_file(files().join("cert.pem")).expect("cert");
    b.set_private_key_file(files().join("key.pem"), openssl::ssl::SslFiletype::PEM).expect("key");
    b
}

/// A TLS backend on a free port (the test certificate): for each connection, `handle`
/// runs on the accepted TLS stream, in a thread of its own.
fn tls_backend(handle: fn(SslStream<TcpStream>)) -> u16 {
    let mut b = acceptor_builder();
    // As nginx's servers: accept any name (a resumed session then keeps its name).
    b.set_servername_callback(|_, _| Ok(()));
    let acceptor = std::sync::Arc::new(b.build());
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let a = acceptor.clone();
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(10))).ok();
                if let Ok(s) = a.accept(c) {
                    handle(s);
                }
            });
        }
    });
    port
}

/// A TLS backend for one connection on a free port: after `delay`, the handshake with
/// `acceptor`, then `handle` on the TLS stream (reads time out at 5 s).
fn tls_backend_once(
    acceptor: openssl::ssl::SslAcceptor,
    delay: Duration,
    handle: impl FnOnce(SslStream<TcpStream>) + Send + 'static,
) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((c, _)) = l.accept() {
            c.set_read_timeout(Some(Duration::from_secs(5))).ok();
            std::thread::sleep(delay);
            if let Ok(s) = acceptor.accept(c) {
                handle(s);
            }
        }
    });
    port
}

/// Says what the handshake was: the SNI name, resumed or not, and the protocol.
fn tell(mut s: SslStream<TcpStream>) {
    let line = format!(
        "[{}] {} {}\n",
        s.ssl().servername(openssl::ssl::NameType::HOST_NAME).unwrap_or(""),
        if s.ssl().session_reused() { "r" } else { "." },
        s.ssl().version_str()
    );
    let _ = s.write_all(line.as_bytes());
    let _ = s.shutdown();
}

fn tls_echo(mut s: SslStream<TcpStream>) {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

/// A plain-text proxy with `proxy_ssl`: the server name sent (`proxy_ssl_name`, its
/// port stripped, with `proxy_ssl_server_name on`), and the session kept from the first
/// connection resumed by the second (`proxy_ssl_session_reuse` is on by default). The
/// backend's answers are what nginx 1.22.1's connections got from the same backend.
#[test]
fn proxy_ssl_sends_the_name_and_resumes() {
    let port = free_port();
    let up = tls_backend(tell);
    let conf = format!(
        "events {{}}\nstream {{\n    server {{\n        listen 127.0.0.1:{port};\n        proxy_ssl on;\n        \
         proxy_ssl_server_name on;\n        proxy_ssl_name foo.example:443;\n        proxy_pass 127.0.0.1:{up};\n    }}\n}}\n"
    );
    let mut s = Sluice::start(&conf);
    let read = || {
        let mut c = connect(port);
        let mut out = String::new();
        c.read_to_string(&mut out).ok();
        out
    };
    assert_eq!(read(), "[foo.example] . TLSv1.2\n");
    assert_eq!(read(), "[foo.example] r TLSv1.2\n");
    s.stop();
}

/// `proxy_ssl_verify`: a certificate that does not verify, or not for the name, is
/// nginx's error line and the next upstream (here none: 502); the right name passes.
/// (Without `proxy_ssl_session_reuse off` the second would resume the first's session:
/// both servers' `proxy_pass` name one implicit upstream, whose peer keeps it.)
#[test]
fn proxy_ssl_verify_as_nginx() {
    let (p1, p2) = (free_port(), free_port());
    let up = tls_backend(tell);
    let cert = files().join("cert.pem");
    let conf = format!(
        "events {{}}\nstream {{\n    log_format t '$status $upstream_addr';\n    access_log %%PREFIX%%access.log t;\n    \
         proxy_ssl on;\n    proxy_ssl_verify on;\n    proxy_ssl_trusted_certificate {c};\n    \
         proxy_ssl_session_reuse off;\n    \
         server {{\n        listen 127.0.0.1:{p1};\n        proxy_ssl_name foo.example;\n        proxy_pass 127.0.0.1:{up};\n    }}\n    \
         server {{\n        listen 127.0.0.1:{p2};\n        proxy_ssl_name localhost;\n        proxy_pass 127.0.0.1:{up};\n    }}\n}}\n",
        c = cert.display()
    );
    let mut s = Sluice::start(&conf);
    let mut out = String::new();
    connect(p1).read_to_string(&mut out).ok();
    assert_eq!(out, "");
    wait_log(&s, 1);
    connect(p2).read_to_string(&mut out).ok();
    assert_eq!(out, "[] . TLSv1.2\n");
    let log = wait_log(&s, 2);
    assert_eq!(log, [format!("502 127.0.0.1:{up}"), format!("200 127.0.0.1:{up}")]);
    let want = "*1 upstream SSL certificate does not match \"foo.example\" while SSL handshaking to upstream, \
                client: 127.0.0.1, server: 127.0.0.1:P, upstream: \"127.0.0.1:P\", bytes from/to client:0/0, bytes \
                from/to upstream:0/0"
        .to_string();
    let lines = session_lines(&s);
    assert!(lines.contains(&want), "{lines:?}");
    s.stop();
}

/// `proxy_ssl` to a backend that does not speak TLS, and to one that never answers the
/// hello (`proxy_connect_timeout` covers the handshake; nginx logs nothing for it).
#[test]
fn proxy_ssl_failures_as_nginx() {
    let (p1, p2) = (free_port(), free_port());
    let plain = backend(|mut c| {
        let _ = c.write_all(b"plain\n");
    });
    let silent = backend(|mut c| {
        let mut buf = [0u8; 1024];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    });
    let conf = format!(
        "events {{}}\nstream {{\n    log_format t '$status $upstream_addr';\n    access_log %%PREFIX%%access.log t;\n    \
         proxy_ssl on;\n    proxy_connect_timeout 300ms;\n    \
         server {{\n        listen 127.0.0.1:{p1};\n        proxy_pass 127.0.0.1:{plain};\n    }}\n    \
         server {{\n        listen 127.0.0.1:{p2};\n        proxy_pass 127.0.0.1:{silent};\n    }}\n}}\n"
    );
    let mut s = Sluice::start(&conf);
    let mut out = Vec::new();
    connect(p1).read_to_end(&mut out).ok();
    wait_log(&s, 1);
    let started = Instant::now();
    connect(p2).read_to_end(&mut out).ok();
    assert!(out.is_empty());
    let log = wait_log(&s, 2);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(log, [format!("502 127.0.0.1:{plain}"), format!("502 127.0.0.1:{silent}")]);
    let lines = session_lines(&s);
    let ssl: Vec<&String> = lines.iter().filter(|l| l.contains("SSL") || l.contains("timed out")).collect();
    assert_eq!(
        ssl,
        [&"*1 SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number) while SSL \
           handshaking to upstream, client: 127.0.0.1, server: 127.0.0.1:P, upstream: \"127.0.0.1:P\", bytes \
           from/to client:0/0, bytes from/to upstream:0/0"
            .to_string()],
        "{lines:?}"
    );
    s.stop();
}

/// `proxy_protocol on` with `proxy_ssl`: the header goes out ahead of each try's
/// handshake, so the next upstream after a failed handshake gets one too (nginx's
/// ngx_stream_proxy_connect sets `u->proxy_protocol` again for every peer), and each
/// try counts it in `$upstream_bytes_sent` (nginx: "44, 44" for two peers).
#[test]
fn proxy_protocol_header_goes_ahead_of_every_tls_try() {
    let port = free_port();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut peers = Vec::new();
    for _ in 0..2 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        peers.push(l.local_addr().unwrap().port());
        let tx = tx.clone();
        std::thread::spawn(move || {
            let Ok((mut c, _)) = l.accept() else { return };
            c.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
            // The header and the start of the hello; then close, failing the handshake.
            while got.len() < 60 {
                match c.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let _ = tx.send(got);
        });
    }
    let (a, b) = (peers[0], peers[1]);
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n    log_format t '$upstream_addr $upstream_bytes_sent $status';\n    \
         access_log %%PREFIX%%access.log t;\n    upstream u {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}\n    \
         server {{ listen 127.0.0.1:{port}; proxy_protocol on; proxy_ssl on; proxy_pass u; }}\n}}\n"
    ));
    let mut c = connect(port);
    c.write_all(b"hello").unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).ok();
    let log = wait_log(&s, 1);
    let got: Vec<Vec<u8>> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
    let local = c.local_addr().unwrap().port();
    let header = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {local} {port}\r\n");
    for g in &got {
        assert!(g.starts_with(header.as_bytes()), "{:?}", String::from_utf8_lossy(g));
        assert_eq!(g.get(header.len()), Some(&0x16), "a TLS record follows the header");
    }
    let n = header.len();
    assert_eq!(log, [format!("127.0.0.1:{a}, 127.0.0.1:{b} {n}, {n} 502")]);
    s.stop();
}

/// `$ssl_server_name` is the SNI name's bytes as the client sent them, UTF-8 or not
/// (nginx gives SSL_get_servername's C string; sluice gave an empty value).
#[test]
fn ssl_server_name_keeps_its_bytes() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "", "return \"[$ssl_server_name]\";"));
    let mut b = SslConnector::builder(SslMethod::tls()).expect("connector");
    b.set_verify(SslVerifyMode::NONE);
    let ctx = b.build().into_context();
    let ssl = openssl::ssl::Ssl::new(&ctx).expect("ssl");
    let name = std::ffi::CString::new(&b"\xff.com"[..]).unwrap();
    // SAFETY: a live SSL and a NUL-terminated name, which OpenSSL copies.
    let rc = unsafe {
        openssl_sys::SSL_set_tlsext_host_name(
            &*ssl as *const openssl::ssl::SslRef as *mut openssl_sys::SSL,
            name.as_ptr() as *mut _,
        )
    };
    assert_eq!(rc, 1);
    let mut t = ssl.connect(connect(port)).expect("handshake");
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    assert_eq!(out, b"[\xff.com]");
    let log = wait_log(&s, 1);
    assert!(log[0].contains("[\\xFF.com]"), "{log:?}");
    s.stop();
}

/// Each peer keeps its own saved session, as nginx keeps it in the peer: two `server`
/// lines with one address resume only from their second turn (nginx: ". . r r"), with
/// or without a zone.
#[test]
fn proxy_ssl_sessions_are_kept_per_peer() {
    let up = tls_backend(tell);
    for zone in ["", "zone z 64k;"] {
        let port = free_port();
        let mut s = Sluice::start(&format!(
            "events {{}}\nstream {{\n    upstream u {{ {zone} server 127.0.0.1:{up}; server 127.0.0.1:{up}; }}\n    \
             server {{ listen 127.0.0.1:{port}; proxy_ssl on; proxy_pass u; }}\n}}\n"
        ));
        let got: Vec<String> = (0..4)
            .map(|_| {
                let mut out = String::new();
                connect(port).read_to_string(&mut out).ok();
                out.split(' ').nth(1).unwrap_or("?").to_string()
            })
            .collect();
        assert_eq!(got, [".", ".", "r", "r"], "zone: {zone:?}");
        s.stop();
    }
}

/// OpenSSL's reasons 182, 253 and 266 are not a peer's doing to nginx built with
/// OpenSSL 3.0 (it lists BoringSSL names under those numbers, undefined here): a
/// TLSv1.3 hello with another handshake message after it in its record is "not on
/// record boundary" at crit (side by side with nginx 1.22.1).
#[test]
fn not_on_record_boundary_is_crit() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "ssl_protocols TLSv1.3;", "return \"hi\\n\";"));
    // A real client's hello, caught by a listener of our own.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let catcher = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let _ = tls_result(catcher, Some("x.test"), |b| {
            b.set_min_proto_version(Some(SslVersion::TLS1_3)).expect("min version");
        });
    });
    let (mut h, _) = l.accept().expect("accept");
    h.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut head = [0u8; 5];
    h.read_exact(&mut head).expect("record header");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[3], head[4]]))];
    h.read_exact(&mut body).expect("record");
    drop(h);
    // An empty handshake message of type 11 in the same record.
    body.extend_from_slice(&[0x0b, 0, 0, 0]);
    let mut rec = vec![head[0], head[1], head[2]];
    rec.extend_from_slice(&(body.len() as u16).to_be_bytes());
    rec.extend_from_slice(&body);
    let mut c = connect(port);
    c.write_all(&rec).expect("send");
    let _ = c.read_to_end(&mut Vec::new());
    wait_log(&s, 1);
    let log = s.error_log();
    assert!(
        log.contains("[crit]")
            && log.contains("SSL_do_handshake() failed (SSL: error:0A0000B6:SSL routines::not on record boundary) while SSL handshaking"),
        "{log}"
    );
    s.stop();
}

/// TLS on both sides (`listen ... ssl` and `proxy_ssl`), megabytes both ways to an
/// echoing TLS backend: the bytes come back unchanged.
#[test]
fn tls_both_sides_bulk() {
    let port = free_port();
    let up = tls_backend(tls_echo);
    let mut s = Sluice::start(&conf(port, "proxy_ssl on;", &format!("proxy_pass 127.0.0.1:{up};")));
    let mut c = tls(port, None, |_| {});
    c.get_ref().set_read_timeout(Some(Duration::from_millis(20))).ok();
    let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut got = Vec::new();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < data.len() {
        assert!(Instant::now() < deadline, "stalled at {} of {}", got.len(), data.len());
        if sent < data.len() {
            let end = (sent + 32 * 1024).min(data.len());
            c.write_all(&data[sent..end]).expect("write");
            sent = end;
        }
        let mut buf = [0u8; 65536];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(got == data, "the bytes came back unchanged ({} of {})", got.len(), data.len());
    drop(c);
    let log = wait_log(&s, 1);
    assert!(log[0].starts_with("200 3145728 3145728 [TLSv1.2]"), "{log:?}");
    s.stop();
}

/// `ssl_verify_client optional` with a certificate from the trusted CA and with a
/// self-signed one: the `$ssl_client_*` values and the verify error line nginx 1.22.1
/// gave for the same certificates (t/data/conf_errors/ssl.files: ca.pem, client.pem;
/// `$ssl_client_v_remain` counts down a day a day, so it is checked against the date).
#[test]
fn client_certificate_as_nginx() {
    let port = free_port();
    let f = files();
    let conf = format!(
        "events {{}}\nstream {{\n    log_format t '$status [$ssl_client_verify] [$ssl_client_s_dn] [$ssl_client_i_dn] \
         [$ssl_client_serial] [$ssl_client_fingerprint] [$ssl_client_v_start] [$ssl_client_v_end] \
         [$ssl_client_v_remain]';\n    access_log %%PREFIX%%access.log t;\n    server {{\n        listen \
         127.0.0.1:{port} ssl;\n        ssl_certificate {d}/cert.pem;\n        ssl_certificate_key {d}/key.pem;\n        \
         ssl_verify_client optional;\n        ssl_client_certificate {d}/ca.pem;\n        return ok;\n    }}\n}}\n",
        d = f.display()
    );
    let mut s = Sluice::start(&conf);
    for (cert, key) in [("client.pem", "client.key"), ("cert.pem", "key.pem")] {
        let r = tls_result(port, None, |b| {
            b.set_certificate_file(f.join(cert), openssl::ssl::SslFiletype::PEM).expect("cert");
            b.set_private_key_file(f.join(key), openssl::ssl::SslFiletype::PEM).expect("key");
        });
        if let Ok(mut c) = r {
            let mut out = String::new();
            c.read_to_string(&mut out).ok();
        }
        wait_log(&s, if cert == "client.pem" { 1 } else { 2 });
    }
    let log = wait_log(&s, 2);
    let days = |end_year: i64| {
        // Days from now to the end (22:40:09 on the date given below).
        let end = openssl::asn1::Asn1Time::from_str(&format!("{end_year}1029224009Z")).expect("time");
        let now = openssl::asn1::Asn1Time::days_from_now(0).expect("now");
        now.diff(&end).expect("diff").days
    };
    assert_eq!(
        log[0],
        format!(
            "200 [SUCCESS] [emailAddress=a@b.example,CN=client.example,O=Client,C=DE] [CN=Test CA,O=Test\\x5C, \
             Inc.,C=DE] [0123] [fe75dc50bd8229a9a56f8160f19e920247ca1aec] [Nov 22 22:40:09 2026 GMT] [Oct 29 \
             22:40:09 2126 GMT] [{}]",
            days(2126)
        )
    );
    assert!(
        log[1].starts_with(
            "500 [FAILED:self-signed certificate] [CN=localhost] [CN=localhost] [6815E5CAEFF2921071ABBD58001CA1946D776162] \
             [3628619763fa80c3ea411d669bf2e9a59bcecc01] [Nov 22 22:21:58 2026 GMT] [Oct 29 22:21:58 2126 GMT]"
        ),
        "{log:?}"
    );
    let lines = session_lines(&s);
    assert!(
        lines.contains(
            &"*2 client SSL certificate verify error: (18:self-signed certificate) while SSL handshaking, client: \
              127.0.0.1, server: 127.0.0.1:P"
                .to_string()
        ),
        "{lines:?}"
    );
    s.stop();
}

/// `proxy_ssl_certificate` with variables whose value is empty sends no client
/// certificate, and the session goes on (nginx's map idiom: a certificate for some
/// upstreams only; nginx-tests stream_proxy_ssl_certificate_vars.t "variable - no
/// certificate"). The TLS server here sees none: NONE.
#[test]
fn proxy_ssl_certificate_empty_sends_none() {
    let (p1, p2) = (free_port(), free_port());
    let d = files();
    let conf = format!(
        "events {{}}\nstream {{\n    log_format t '$server_port $status';\n    access_log %%PREFIX%%access.log t;\n    \
         map $server_port $cert {{ default \"\"; }}\n    \
         server {{\n        listen 127.0.0.1:{p1} ssl;\n        ssl_certificate {d}/cert.pem;\n        \
         ssl_certificate_key {d}/key.pem;\n        ssl_verify_client optional_no_ca;\n        \
         return \"$ssl_client_verify\\n\";\n    }}\n    \
         server {{\n        listen 127.0.0.1:{p2};\n        proxy_ssl on;\n        proxy_ssl_certificate $cert;\n        \
         proxy_ssl_certificate_key $cert;\n        proxy_pass 127.0.0.1:{p1};\n    }}\n}}\n",
        d = d.display()
    );
    let mut s = Sluice::start(&conf);
    let mut out = Vec::new();
    connect(p2).read_to_end(&mut out).ok();
    assert_eq!(String::from_utf8_lossy(&out), "NONE\n");
    let log = wait_log(&s, 2);
    assert_eq!(log, [format!("{p1} 200"), format!("{p2} 200")]);
    assert!(!s.error_log().contains("cannot load certificate"), "{}", s.error_log());
    s.stop();
}

/// Certificates named with variables (`ngx_stream_ssl_certificate`): loaded for each
/// handshake, here by the SNI name; a name without a file is nginx's error line, then
/// the handshake fails ("cert cb error"). And `proxy_ssl_certificate` with variables,
/// whose missing key ends the session with 500 before the upstream handshake. Lines as
/// nginx 1.22.1 wrote them for the same configuration.
#[test]
fn certificates_by_variables_as_nginx() {
    let (p1, p2) = (free_port(), free_port());
    let d = files();
    let conf = format!(
        "events {{}}\nstream {{\n    log_format t '$status [$ssl_server_name]';\n    access_log %%PREFIX%%access.log t;\n    \
         map $ssl_server_name $k {{ cert key; default none; }}\n    \
         server {{\n        listen 127.0.0.1:{p1} ssl;\n        ssl_certificate {d}/$ssl_server_name.pem;\n        \
         ssl_certificate_key {d}/$k.pem;\n        return \"$ssl_server_name\\n\";\n    }}\n    \
         server {{\n        listen 127.0.0.1:{p2};\n        proxy_ssl on;\n        proxy_ssl_certificate {d}/cert.pem;\n        \
         proxy_ssl_certificate_key {d}/no$k;\n        proxy_pass 127.0.0.1:{p1};\n    }}\n}}\n",
        d = d.display()
    );
    let mut s = Sluice::start(&conf);
    let mut c = tls(p1, Some("cert"), |_| {});
    let mut out = String::new();
    c.read_to_string(&mut out).ok();
    assert_eq!(out, "cert\n");
    assert_eq!(c.ssl().peer_certificate().map(|x| crate::common::cn(&x)), Some("localhost".to_string()));
    assert!(tls_result(p1, Some("nope"), |_| {}).is_err());
    let mut plain = Vec::new();
    connect(p2).read_to_end(&mut plain).ok();
    // The fourth line is the TLS server's: the proxy's connection to it closed before a
    // hello ("peer closed connection in SSL handshake"), as under nginx.
    let log = wait_log(&s, 4);
    assert_eq!(log, ["200 [cert]", "500 [nope]", "500 [-]", "500 [-]"]);
    let lines = session_lines(&s);
    let d = d.display();
    for want in [
        format!(
            "*2 cannot load certificate \"{d}/nope.pem\": BIO_new_file() failed (SSL: error:80000002:system \
             library::No such file or directory:calling fopen({d}/nope.pem, r) error:10000080:BIO routines::no such \
             file) while SSL handshaking, client: 127.0.0.1, server: 127.0.0.1:P"
        ),
        "*2 SSL_do_handshake() failed (SSL: error:0A000179:SSL routines::cert cb error) while SSL handshaking, client: \
         127.0.0.1, server: 127.0.0.1:P"
            .to_string(),
        format!(
            "*3 cannot load certificate key \"{d}/nonone\": BIO_new_file() failed (SSL: error:80000002:system \
             library::No such file or directory:calling fopen({d}/nonone, r) error:10000080:BIO routines::no such \
             file) while connecting to upstream, client: 127.0.0.1, server: 127.0.0.1:P, upstream: \"127.0.0.1:P\", \
             bytes from/to client:0/0, bytes from/to upstream:0/0"
        ),
    ] {
        assert!(lines.contains(&want), "{want}\nnot in {lines:?}");
    }
    s.stop();
}

/// A certificate named with variables whose key is encrypted, and no password file:
/// no password is tried (nginx's empty password list), so the handshake fails at once
/// with OpenSSL's "empty password", server and proxy side; OpenSSL's own prompt would
/// block the worker on a terminal or an open stdin (side by side with nginx 1.22.1).
#[test]
fn encrypted_key_by_variables_without_password_file_fails_at_once() {
    let (p1, p2, up) = (free_port(), free_port(), free_port());
    let d = files();
    let conf = format!(
        "events {{}}\nstream {{\n    map $server_port $c {{ default cert; }}\n    \
         server {{\n        listen 127.0.0.1:{p1} ssl;\n        ssl_certificate {d}/$c.pem;\n        \
         ssl_certificate_key {d}/pw-key.pem;\n        return ok;\n    }}\n    \
         server {{\n        listen 127.0.0.1:{p2};\n        proxy_ssl on;\n        proxy_ssl_certificate {d}/$c.pem;\n        \
         proxy_ssl_certificate_key {d}/pw-key.pem;\n        proxy_pass 127.0.0.1:{up};\n    }}\n    \
         server {{\n        listen 127.0.0.1:{up};\n        return up;\n    }}\n}}\n",
        d = d.display()
    );
    let s = Sluice::start(&conf);
    assert!(tls_result(p1, None, |_| {}).is_err());
    let mut plain = Vec::new();
    connect(p2).read_to_end(&mut plain).ok();
    assert!(plain.is_empty());
    let want =
        format!("cannot load certificate key \"{}/pw-key.pem\": PEM_read_bio_PrivateKey() failed (SSL: ", d.display());
    let failed = || s.error_log().lines().filter(|l| l.contains(&want) && l.contains("empty password")).count();
    assert!(wait_for(Duration::from_secs(10), || failed() == 2), "{}", s.error_log());
    assert!(!s.error_log().contains("pass phrase"), "{}", s.error_log());
}

/// `ssl_session_ticket_key`: a TLSv1.2 session whose ticket nginx 1.22.1 issued under
/// ssl.files/ticket80.key (kept in ssl.files/nginx-ticket-session.pem, with
/// `ssl_session_timeout 36500d`) resumes here: same key file format, same ticket
/// crypto, same session id context (SHA-1 over "STREAM" and the certificate), so a
/// fleet moving from nginx keeps its clients' sessions.
#[test]
fn nginx_ticket_resumes() {
    let port = free_port();
    let f = files();
    let conf = format!(
        "events {{}}\nstream {{\n    server {{\n        listen 127.0.0.1:{port} ssl;\n        \
         ssl_certificate {d}/cert.pem;\n        ssl_certificate_key {d}/key.pem;\n        \
         ssl_session_ticket_key {d}/ticket48.key;\n        ssl_session_ticket_key {d}/ticket80.key;\n        \
         ssl_session_timeout 36500d;\n        return \"$ssl_session_reused\\n\";\n    }}\n}}\n",
        d = f.display()
    );
    let mut s = Sluice::start(&conf);
    let pem = std::fs::read_to_string(f.join("nginx-ticket-session.pem")).expect("session file");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = openssl::base64::decode_block(&b64).expect("base64");
    let sess = openssl::ssl::SslSession::from_der(&der).expect("session");
    let b = tls12(|_| {});
    let mut c = resume(&b, &sess, port);
    let mut out = String::new();
    c.read_to_string(&mut out).ok();
    assert_eq!(out, "r\n", "the ticket from nginx (second key here) resumed");
    assert!(c.ssl().session_reused());
    s.stop();
}

/// `ssl_session_cache shared:NAME:SIZE` without tickets: a TLSv1.2 session made by one
/// server resumes at another server naming the same zone (same certificate, so the same
/// session id context), and in whichever of two workers takes the connection.
#[test]
fn shared_session_cache_across_servers_and_workers() {
    let (p1, p2) = (free_port(), free_port());
    let f = files();
    let conf = format!(
        "events {{}}\nstream {{\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n    \
         ssl_session_cache shared:S:1m;\n    ssl_session_tickets off;\n    \
         server {{ listen 127.0.0.1:{p1} ssl; return \"a$ssl_session_reused\"; }}\n    \
         server {{ listen 127.0.0.1:{p2} ssl; return \"b$ssl_session_reused\"; }}\n}}\n",
        d = f.display()
    );
    let mut s = Sluice::start_master(2, &conf);
    let b = tls12(|_| {});
    let mut c = b.configure().expect("cfg").verify_hostname(false).connect("x", connect(p1)).expect("first");
    let mut out = String::new();
    c.read_to_string(&mut out).ok();
    assert_eq!(out, "a.");
    let sess = c.ssl().session().expect("session").to_owned();
    for i in 0..8 {
        let port = if i % 2 == 0 { p1 } else { p2 };
        let mut c = resume(&b, &sess, port);
        let mut out = String::new();
        c.read_to_string(&mut out).ok();
        // A client that ends without close_notify marks the session not resumable (on
        // its side: OpenSSL's SSL_free of an unclean shutdown), and would offer no more.
        let _ = c.shutdown();
        assert_eq!(out, if i % 2 == 0 { "ar" } else { "br" }, "connection {i}");
    }
    s.stop();
}

/// Broken TLS from a client after the handshake: a record that does not decrypt is
/// nginx's "SSL_read() failed (SSL: ...)" line, and the session ends as a client's
/// end; a reset or a FIN without close_notify is the client's end, without a line
/// (ngx_ssl_handle_recv's "peer shutdown SSL cleanly"). Lines as nginx 1.22.1 wrote.
#[test]
fn broken_client_records_as_nginx() {
    let port = free_port();
    let up = backend(echo);
    let mut s = Sluice::start(&conf(port, "", &format!("proxy_pass 127.0.0.1:{up};")));
    let mut c = tls(port, None, |_| {});
    c.write_all(b"hello").expect("write");
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).expect("echo");
    c.get_mut().write_all(b"\x17\x03\x03\x00\x05garbage!").expect("raw write");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    wait_log(&s, 1);
    let mut c = tls(port, None, |_| {});
    c.write_all(b"abc").expect("write");
    let mut buf = [0u8; 3];
    c.read_exact(&mut buf).expect("echo");
    let raw = c.get_ref().try_clone().expect("clone");
    socket2::SockRef::from(&raw).set_linger(Some(Duration::ZERO)).expect("linger");
    drop(raw);
    drop(c);
    let log = wait_log(&s, 2);
    assert_eq!(log[0], "200 5 5 [TLSv1.2] [ECDHE-RSA-AES256-GCM-SHA384] [.] [-] [-] [NONE] [X25519]");
    assert_eq!(log[1], "200 3 3 [TLSv1.2] [ECDHE-RSA-AES256-GCM-SHA384] [.] [-] [-] [NONE] [X25519]");
    let lines = session_lines(&s);
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("failed")).collect();
    assert_eq!(
        errors,
        [&"*1 SSL_read() failed (SSL: error:1C80006C:Provider routines::invalid aad error:0A0C0103:SSL \
           routines::internal error) while proxying and reading from client, client: 127.0.0.1, server: \
           127.0.0.1:P, upstream: \"127.0.0.1:P\", bytes from/to client:5/5, bytes from/to upstream:5/5"
            .to_string()],
        "{lines:?}"
    );
    // Not one of the reasons nginx takes as a peer's doing: crit, as nginx logs it.
    assert!(
        s.error_log().lines().any(|l| l.contains("[crit]") && l.contains("SSL_read() failed")),
        "{}",
        s.error_log()
    );
    s.stop();
}

/// `server_name` (nginx 1.25.5's virtual servers) with TLS terminated: the SNI of the
/// hello picks the server before the handshake, so its certificate is the one
/// presented and its `return` answers; no SNI, or an unknown one, keeps the default.
#[test]
fn sni_picks_the_virtual_server() {
    let port = free_port();
    let d = files();
    let conf = format!(
        "events {{}}\nstream {{\n    ssl_certificate_key {d}/key.pem;\n    \
         server {{ listen 127.0.0.1:{port} ssl; server_name one.example; ssl_certificate {d}/cert.pem; \
         return \"one $server_name $ssl_server_name\\n\"; }}\n    \
         server {{ listen 127.0.0.1:{port} ssl; server_name *.two.example; ssl_certificate {d}/client.pem; \
         ssl_certificate_key {d}/client.key; return \"two $server_name $ssl_server_name\\n\"; }}\n}}\n",
        d = d.display()
    );
    let mut s = Sluice::start(&conf);
    for (sni, want, cn) in [
        (Some("one.example"), "one one.example one.example\n", "localhost"),
        (Some("a.two.example"), "two *.two.example a.two.example\n", "client.example"),
        (Some("other.example"), "one one.example other.example\n", "localhost"),
        (None, "one one.example \n", "localhost"),
    ] {
        let mut c = tls(port, sni, |_| {});
        let mut out = String::new();
        c.read_to_string(&mut out).ok();
        assert_eq!(out, want, "{sni:?}");
        assert_eq!(c.ssl().peer_certificate().map(|x| crate::common::cn(&x)).as_deref(), Some(cn), "{sni:?}");
    }
    s.stop();
}

/// The end of a TLS session as nginx's ngx_ssl_shutdown makes it: close_notify, then up
/// to 3 s for the client's before the socket closes (a client that answers at once gets
/// the FIN at once); a client that sends data instead gets nginx's crit line
/// "application data after close notify" (recorded from nginx 1.22.1).
#[test]
fn close_notify_wait_as_nginx() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "", "return ret;"));
    let fin_after = |answer: bool| {
        let mut c = tls(port, None, |_| {});
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read to close_notify");
        assert_eq!(out, "ret");
        let t = Instant::now();
        if answer {
            let _ = c.shutdown();
        }
        let mut raw = c.get_ref().try_clone().expect("clone");
        raw.set_read_timeout(Some(Duration::from_secs(8))).ok();
        let mut b = [0u8; 16];
        let n = raw.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "the end of the TCP stream");
        t.elapsed()
    };
    assert!(fin_after(true) < Duration::from_millis(1500));
    let waited = fin_after(false);
    assert!(waited >= Duration::from_millis(2500) && waited < Duration::from_secs(6), "{waited:?}");
    // Data where the close_notify was awaited.
    let mut c = tls(port, None, |_| {});
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read to close_notify");
    c.write_all(b"late").expect("write after close_notify");
    let raw = c.get_ref().try_clone().expect("clone");
    raw.set_read_timeout(Some(Duration::from_secs(8))).ok();
    let _ = (&raw).read(&mut [0u8; 16]);
    assert!(
        wait_for(Duration::from_secs(5), || session_lines(&s).iter().any(|l| l.starts_with(
            "*3 SSL_shutdown() failed (SSL: error:0A000123:SSL routines::application data after close notify) \
             while returning text, client: 127.0.0.1, server: 127.0.0.1:P"
        ))),
        "{}",
        s.error_log()
    );
    assert!(s.error_log().lines().any(|l| l.contains("[crit]") && l.contains("SSL_shutdown() failed")));
    s.stop();
}

/// `$ssl_*` read before the handshake (by `set`, in the preaccess phase) is kept, as
/// nginx caches it: empty for the rest of the session (nginx 1.22.1 answered "r=").
#[test]
fn ssl_variable_read_before_the_handshake_stays_empty() {
    let port = free_port();
    let mut s = Sluice::start(&conf(port, "set $x $ssl_protocol;", "return \"r=$ssl_protocol\\n\";"));
    let mut c = tls(port, None, |_| {});
    let mut out = String::new();
    c.read_to_string(&mut out).ok();
    assert_eq!(out, "r=\n");
    assert_eq!(wait_log(&s, 1), ["200 3 0 [-] [ECDHE-RSA-AES256-GCM-SHA384] [.] [-] [-] [NONE] [X25519]"]);
    s.stop();
}

/// `worker_shutdown_timeout` ends a proxied TLS session as nginx does (the connection
/// marked in error): no close_notify and no 3 s wait for the client's, so the worker
/// exits at the timeout.
#[test]
fn shutdown_timeout_ends_tls_sessions_at_once() {
    let port = free_port();
    let up = backend(echo);
    let conf = format!("worker_shutdown_timeout 300ms;\n{}", conf(port, "", &format!("proxy_pass 127.0.0.1:{up};")));
    let mut s = Sluice::start_master(1, &conf);
    let mut c = tls(port, None, |_| {});
    c.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    c.read_exact(&mut b).expect("echo");
    let t0 = Instant::now();
    assert_eq!(s.stop(), Some(0));
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(2500), "the worker waited {took:?} (a close_notify wait?)");
    assert!(s.error_log().contains("shutdown timeout while proxying connection"), "{}", s.error_log());
    let mut buf = [0u8; 16];
    match c.ssl_read(&mut buf) {
        Err(e) => assert_ne!(e.code(), openssl::ssl::ErrorCode::ZERO_RETURN, "no close_notify expected"),
        Ok(n) => panic!("{n} bytes after the shutdown timeout"),
    }
}

/// Health checks of a server with `proxy_ssl on` speak TLS, verified as its sessions
/// are: a backend without TLS, and one whose certificate is not for the name, are found
/// unhealthy; clients go to the one that passes (the TLS backend says its SNI name).
#[test]
fn health_checks_speak_tls_with_proxy_ssl() {
    let (p1, p2) = (free_port(), free_port());
    let good = tls_backend(tell);
    let plain = crate::common::sends_and_closes("plain\n");
    let cert = files().join("cert.pem");
    let conf = format!(
        "events {{}}\nstream {{\n    proxy_ssl on;\n    proxy_ssl_server_name on;\n    proxy_ssl_session_reuse off;\n    \
         upstream u {{ zone u 64k; server 127.0.0.1:{good}; server 127.0.0.1:{plain}; }}\n    \
         upstream v {{ zone v 64k; server 127.0.0.1:{good}; }}\n    \
         server {{ listen 127.0.0.1:{p1}; proxy_ssl_name localhost; proxy_pass u; health_check interval=200ms; }}\n    \
         server {{ listen 127.0.0.1:{p2}; proxy_ssl_verify on; proxy_ssl_trusted_certificate {c}; \
         proxy_ssl_name foo.example; proxy_pass v; health_check interval=200ms; }}\n}}\n",
        c = cert.display()
    );
    let mut s = Sluice::start(&conf);
    let plain_out =
        format!(" while SSL handshaking to upstream, health check \"\" of peer 127.0.0.1:{plain} in upstream \"u\"");
    let mismatch = format!(
        "upstream SSL certificate does not match \"foo.example\" while SSL handshaking to upstream, health check \"\" \
         of peer 127.0.0.1:{good} in upstream \"v\""
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            let log = s.error_log();
            log.contains(&format!("peer is unhealthy{plain_out}")) && log.contains(&format!("peer is unhealthy while SSL handshaking to upstream, health check \"\" of peer 127.0.0.1:{good} in upstream \"v\""))
        }),
        "{}",
        s.error_log()
    );
    let log = s.error_log();
    assert!(log.lines().any(|l| l.contains("[error]") && l.ends_with(&plain_out)), "{log}");
    assert!(log.lines().any(|l| l.contains("[error]") && l.ends_with(&mismatch)), "{log}");
    assert!(!log.contains(&format!("127.0.0.1:{good} in upstream \"u\"")), "the TLS peer passes: {log}");
    for _ in 0..4 {
        let mut out = String::new();
        connect(p1).read_to_string(&mut out).ok();
        assert_eq!(out, "[localhost] . TLSv1.2\n");
    }
    s.stop();
}

/// A `status_zone` on a TLS server counts its handshakes in nginx Plus's `ssl` object:
/// done, failed (a plain-text client), and refused by a protocol the server does not
/// offer (TLSv1.3 alone, where the default stops at TLSv1.2).
#[test]
fn status_zone_counts_tls_handshakes() {
    let (port, api) = (free_port(), free_port());
    let conf = conf(port, "status_zone tz;", "return ok;")
        .replace("\n}\n", &format!("\n    server {{ listen 127.0.0.1:{api}; api; }}\n}}\n"));
    let mut s = Sluice::start(&conf);
    let mut c = tls(port, None, |_| {});
    let mut out = String::new();
    c.read_to_string(&mut out).ok();
    assert_eq!(out, "ok");
    let mut plain = connect(port);
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let _ = plain.read_to_end(&mut Vec::new());
    let r = tls_result(port, None, |b| {
        b.set_min_proto_version(Some(openssl::ssl::SslVersion::TLS1_3)).expect("min");
    });
    assert!(r.is_err());
    wait_log(&s, 3);
    let mut c = connect(api);
    c.write_all(b"GET /api/9/stream/server_zones/tz HTTP/1.0\r\n\r\n").expect("request");
    let mut resp = String::new();
    c.read_to_string(&mut resp).ok();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    let ssl = &v["ssl"];
    assert_eq!(ssl["handshakes"], 1, "{v}");
    assert_eq!(ssl["handshakes_failed"], 2, "{v}");
    assert_eq!(ssl["no_common_protocol"], 1, "{v}");
    assert_eq!(v["sessions"]["total"], 3, "{v}");
    assert_eq!(v["sessions"]["5xx"], 2, "{v}");
    s.stop();
}

/// The shared session cache keeps sessions larger than one of its slots, up to nginx's
/// 4096 bytes: a session that carries the client's certificate resumes on both workers
/// (nginx resumes it; sluice kept none over 469 bytes before), and `ssl_session_timeout
/// 0` keeps nothing, as nginx's entry expires the second it is made.
#[test]
fn shared_cache_keeps_sessions_with_client_certificates() {
    let (p1, p2) = (free_port(), free_port());
    let f = files();
    let conf = format!(
        "events {{}}\nstream {{\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n    \
         ssl_session_cache shared:S:1m;\n    ssl_session_tickets off;\n    ssl_verify_client on;\n    \
         ssl_client_certificate {d}/ca.pem;\n    \
         server {{ listen 127.0.0.1:{p1} ssl; return \"$ssl_session_reused $ssl_client_verify\"; }}\n    \
         server {{ listen 127.0.0.1:{p2} ssl; ssl_session_timeout 0; return \"$ssl_session_reused\"; }}\n}}\n",
        d = f.display()
    );
    let mut s = Sluice::start_master(2, &conf);
    let b = tls12(|b| {
        b.set_certificate_file(f.join("client.pem"), openssl::ssl::SslFiletype::PEM).expect("cert");
        b.set_private_key_file(f.join("client.key"), openssl::ssl::SslFiletype::PEM).expect("key");
    });
    for (port, first, again) in [(p1, ". SUCCESS", "r SUCCESS"), (p2, ".", ".")] {
        let mut c = b.configure().expect("cfg").verify_hostname(false).connect("x", connect(port)).expect("first");
        let mut out = String::new();
        c.read_to_string(&mut out).ok();
        let _ = c.shutdown();
        assert_eq!(out, first);
        let sess = c.ssl().session().expect("session").to_owned();
        assert!(sess.to_der().expect("der").len() > 512, "the session carries the certificate");
        for i in 0..4 {
            let mut c = resume(&b, &sess, port);
            let mut out = String::new();
            c.read_to_string(&mut out).ok();
            let _ = c.shutdown();
            assert_eq!(out, again, "port {port}, connection {i}");
        }
    }
    s.stop();
}

/// With the upstream in a `zone`, its peers' TLS sessions are kept there, as nginx keeps
/// them: a session one worker made is resumed by the other (each kept its own before,
/// so the other worker's first connection was a full handshake).
#[test]
fn upstream_sessions_are_shared_through_the_zone() {
    let port = free_port();
    let up = tls_backend(tell);
    let conf = format!(
        "events {{}}\nstream {{\n    log_format t '$pid';\n    access_log %%PREFIX%%access.log t;\n    \
         upstream u {{ zone u 64k; server 127.0.0.1:{up}; }}\n    \
         server {{ listen 127.0.0.1:{port}; proxy_ssl on; proxy_pass u; }}\n}}\n"
    );
    let mut s = Sluice::start_master(2, &conf);
    let mut answers = Vec::new();
    // Until both workers have proxied (the kernel spreads the connections).
    for i in 0..60 {
        let mut c = connect(port);
        let mut out = String::new();
        c.read_to_string(&mut out).ok();
        answers.push(out);
        let pids = s.wait_lines("access.log", i + 1);
        let distinct: std::collections::HashSet<&String> = pids.iter().collect();
        if distinct.len() == 2 && i >= 3 {
            break;
        }
    }
    let pids = s.read("access.log");
    assert_eq!(pids.lines().collect::<std::collections::HashSet<_>>().len(), 2, "both workers proxied: {pids}");
    assert_eq!(answers[0], "[] . TLSv1.2\n");
    for (i, a) in answers.iter().enumerate().skip(1) {
        assert_eq!(a, "[] r TLSv1.2\n", "connection {i} resumes the first one's session: {answers:?}");
    }
    s.stop();
}

/// `proxy_ssl` to a backend that closes as soon as its handshake is done, while the
/// client's first bytes already wait: as in nginx (which posts the upstream's read and
/// reads the client only after its next epoll_wait), the upstream's end of file is
/// seen first, nothing is read from the client, and closing over its unread bytes
/// resets it. The backend corks its socket so that its last handshake flight and its
/// FIN arrive together (recorded from nginx 1.22.1 so: `200 0 0 0 0`, a reset client).
#[test]
fn upstream_closing_after_its_handshake_is_seen_before_the_client() {
    use std::os::fd::AsRawFd;
    /// The backend's socket, with the time of its last write (OpenSSL's last flight).
    struct Timed {
        s: std::net::TcpStream,
        last: Instant,
    }
    impl Read for Timed {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.s.read(b)
        }
    }
    impl Write for Timed {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.s.write(b)?;
            self.last = Instant::now();
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.s.flush()
        }
    }
    let port = free_port();
    let acceptor = acceptor_builder().build();
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = l.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let on: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_CORK,
                    &on as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "TCP_CORK");
            c.set_read_timeout(Some(Duration::from_secs(10))).ok();
            // Handshake done: the stream drops here, closing without close_notify. The
            // cork holds the last flight for at most 200 ms: a close later than that
            // (a busy machine) sends the flight and the FIN apart, and the attempt does
            // not count.
            let tight = match acceptor.accept(Timed { s: c, last: Instant::now() }) {
                Ok(st) => {
                    let last = st.get_ref().last;
                    drop(st);
                    last.elapsed() < Duration::from_millis(100)
                }
                Err(_) => false,
            };
            let _ = tx.send(tight);
        }
    });
    let conf = format!(
        "events {{}}\nstream {{\n    log_format t '$status $bytes_sent $bytes_received $upstream_bytes_sent \
         $upstream_bytes_received';\n    access_log %%PREFIX%%access.log t;\n    \
         server {{ listen 127.0.0.1:{port}; proxy_ssl on; proxy_ssl_session_reuse off;\n        \
         proxy_pass 127.0.0.1:{up}; }}\n}}\n"
    );
    let mut s = Sluice::start(&conf);
    // (A resumed session's handshake ends on sluice's side before the backend's, whose
    // FIN then comes later: only full handshakes, as recorded.)
    let (mut valid, mut attempts) = (0, 0);
    while valid < 2 && attempts < 20 {
        attempts += 1;
        let mut c = connect(port);
        c.write_all(b"hello\n").expect("write");
        let mut out = Vec::new();
        let r = c.read_to_end(&mut out);
        let tight = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false);
        let lines = wait_log(&s, attempts);
        if !tight {
            continue;
        }
        valid += 1;
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            r.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "{}\n{}",
            s.read("access.log"),
            s.error_log()
        );
        assert_eq!(lines.last().map(String::as_str), Some("200 0 0 0 0"), "{lines:?}");
    }
    assert_eq!(valid, 2, "{attempts} attempts, {valid} with the flight and the FIN together");
    let lines = session_lines(&s);
    let want = "upstream disconnected, bytes from/to client:0/0, bytes from/to upstream:0/0";
    assert!(lines.iter().any(|l| l.ends_with(want)), "{lines:?}");
    s.stop();
}

/// `ssl_session_cache builtin:N shared:NAME:SIZE` over a reload: a worker that exits
/// frees its SSL contexts, and OpenSSL's flush of the built-in cache takes those
/// sessions out of the shared one as well (nginx 1.22.1: `. r | reload | . .`); with
/// `shared` alone the sessions outlive the worker (`. r | reload | r r`).
#[test]
fn exiting_worker_takes_its_builtin_sessions_out_of_the_shared_cache() {
    let (p1, p2) = (free_port(), free_port());
    let f = files();
    let conf = format!(
        "events {{}}\nstream {{\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n    \
         ssl_session_tickets off;\n    \
         server {{ listen 127.0.0.1:{p1} ssl; ssl_session_cache builtin:1000 shared:B:1m; return $ssl_session_reused; }}\n    \
         server {{ listen 127.0.0.1:{p2} ssl; ssl_session_cache shared:S:1m; return $ssl_session_reused; }}\n}}\n",
        d = f.display()
    );
    let s = Sluice::start_master(1, &conf);
    let b = tls12(|_| {});
    let answer = |mut c: SslStream<TcpStream>| {
        let mut out = String::new();
        c.read_to_string(&mut out).ok();
        let _ = c.shutdown();
        out
    };
    let mut sessions = Vec::new();
    for port in [p1, p2] {
        let c = b.configure().expect("cfg").verify_hostname(false).connect("x", connect(port)).expect("first");
        let sess = c.ssl().session().expect("session").to_owned();
        assert_eq!(answer(c), ".");
        assert_eq!(answer(resume(&b, &sess, port)), "r", "port {port} before the reload");
        sessions.push((port, sess));
    }
    s.signal(libc::SIGHUP);
    let exited = |s: &Sluice| s.error_log().contains(" exited with code 0");
    assert!(wait_for(Duration::from_secs(10), || exited(&s)), "{}", s.error_log());
    for ((port, sess), want) in sessions.iter().zip([".", "r"]) {
        for _ in 0..2 {
            assert_eq!(answer(resume(&b, sess, *port)), want, "port {port} after the reload");
        }
    }
}

/// A session refused by `ssl_verify_client` is taken out of the session caches
/// (nginx's ngx_ssl_remove_cached_session): offered again, it gets a full handshake,
/// from the built-in cache as from the shared one. Recorded with nginx 1.22.1: `500 .`
/// three times on each server.
#[test]
fn sessions_refused_by_verify_client_do_not_resume() {
    let (p1, p2) = (free_port(), free_port());
    let f = files();
    let server = |port: u16, cache: &str| {
        format!(
            "server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; \
             ssl_verify_client on; ssl_client_certificate {d}/ca.pem; ssl_session_tickets off; \
             ssl_session_cache {cache}; return ok; }}",
            d = f.display()
        )
    };
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format t '$server_port $status $ssl_session_reused [$ssl_client_verify]';\n \
         access_log %%PREFIX%%access.log t;\n {}\n {}\n}}\n",
        server(p1, "builtin:100"),
        server(p2, "shared:S:1m")
    ));
    let b = tls12(|_| {});
    for port in [p1, p2] {
        let mut c = b.configure().expect("cfg").verify_hostname(false).connect("x", connect(port)).expect("handshake");
        let mut sess = c.ssl().session().expect("session").to_owned();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        for _ in 0..2 {
            let mut c = resume(&b, &sess, port);
            assert!(!c.ssl().session_reused(), "a refused session resumed on {port}");
            sess = c.ssl().session().expect("session").to_owned();
            let _ = c.read_to_end(&mut out);
        }
    }
    let log = wait_log(&s, 6);
    let want: Vec<String> = [p1, p1, p1, p2, p2, p2].iter().map(|p| format!("{p} 500 . [NONE]")).collect();
    assert_eq!(log, want);
}

/// `ssl_verify_client optional_no_ca` lets through only nginx 1.22.1's five
/// "optional" verify errors (18, 19, 20, 21, 27): a chain that ends at a trusted CA
/// which is not self-signed (2, "unable to get issuer certificate") is refused, a
/// self-signed client certificate (18) is not. Lines as nginx wrote them.
#[test]
fn optional_no_ca_refuses_unable_to_get_issuer() {
    let port = free_port();
    let f = files();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format t '$status [$ssl_client_verify] [$ssl_client_s_dn] [$ssl_client_i_dn]';\n \
         access_log %%PREFIX%%access.log t;\n server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem; \
         ssl_certificate_key {d}/key.pem; ssl_verify_client optional_no_ca; \
         ssl_client_certificate {d}/intermediate-ca.pem; ssl_verify_depth 3; return ok; }}\n}}\n",
        d = f.display()
    ));
    let mut answers = Vec::new();
    for (cert, key) in [("leaf-via-intermediate.pem", "leaf-via-intermediate.key"), ("cert.pem", "key.pem")] {
        let b = tls12(|b| {
            b.set_certificate_file(f.join(cert), openssl::ssl::SslFiletype::PEM).expect("cert");
            b.set_private_key_file(f.join(key), openssl::ssl::SslFiletype::PEM).expect("key");
        });
        let mut c = b.configure().expect("cfg").verify_hostname(false).connect("x", connect(port)).expect("handshake");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        answers.push(out);
    }
    assert_eq!(answers, ["", "ok"]);
    assert_eq!(
        wait_log(&s, 2),
        [
            "500 [FAILED:unable to get issuer certificate] [CN=leaf via intermediate] [CN=Test Intermediate]",
            "200 [FAILED:self-signed certificate] [CN=localhost] [CN=localhost]"
        ]
    );
    assert!(
        session_lines(&s).contains(
            &"*1 client SSL certificate verify error: (2:unable to get issuer certificate) while SSL handshaking, \
              client: 127.0.0.1, server: 127.0.0.1:P"
                .to_string()
        ),
        "{:?}",
        session_lines(&s)
    );
}

/// A TLS 1.2 upstream may renegotiate: nginx refuses renegotiation only on its server
/// side (ngx_ssl_create_connection), so a backend's HelloRequest is answered and the
/// session goes on (a client's, on `listen ... ssl`, is still refused per connection).
#[test]
fn proxy_ssl_upstream_may_renegotiate() {
    extern "C" {
        fn SSL_renegotiate(ssl: *mut openssl_sys::SSL) -> std::os::raw::c_int;
    }
    let mut b = acceptor_builder();
    b.set_max_proto_version(Some(SslVersion::TLS1_2)).expect("max");
    let acceptor = b.build();
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = l.local_addr().expect("addr").port();
    let backend = std::thread::spawn(move || {
        let (c, _) = l.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut s = acceptor.accept(c).expect("backend handshake");
        let mut hello = [0u8; 6];
        s.read_exact(&mut hello).expect("hello");
        let p = s.ssl() as *const openssl::ssl::SslRef as *mut openssl_sys::SSL;
        // SAFETY: a live SSL of this thread's stream.
        let ok = unsafe { SSL_renegotiate(p) == 1 && openssl_sys::SSL_do_handshake(p) == 1 };
        // The renegotiation completes while the next record is read.
        let mut after = [0u8; 6];
        let read = s.read_exact(&mut after).is_ok();
        let _ = s.write_all(b"from-server\n");
        let _ = s.shutdown();
        (ok, read && &after == b"after\n")
    });
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format t '$status $bytes_sent $bytes_received $upstream_bytes_sent \
         $upstream_bytes_received';\n access_log %%PREFIX%%access.log t;\n \
         server {{ listen 127.0.0.1:{port}; proxy_ssl on; proxy_pass 127.0.0.1:{up}; }}\n}}\n"
    ));
    let mut c = connect(port);
    c.write_all(b"hello\n").expect("write");
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(b"after\n").expect("write");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let (renegotiated, got_after) = backend.join().expect("backend");
    assert!(renegotiated && got_after, "renegotiation refused");
    assert_eq!(out, "from-server\n");
    assert_eq!(wait_log(&s, 1), ["200 12 12 12 12"]);
}

/// Errors OpenSSL leaves queued while verifying a client certificate whose signature
/// is forged are logged by the next call on the connection, as nginx's
/// ngx_ssl_clear_error does ("ignoring stale global SSL error", alert), between the
/// verify error and the close. Lines recorded from nginx 1.22.1.
#[test]
fn stale_errors_of_a_forged_client_certificate_are_logged() {
    let port = free_port();
    let f = files();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format t '$status [$ssl_client_verify] [$ssl_client_s_dn]';\n \
         access_log %%PREFIX%%access.log t;\n server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem; \
         ssl_certificate_key {d}/key.pem; ssl_verify_client on; ssl_client_certificate {d}/ca.pem; return ok; }}\n}}\n",
        d = f.display()
    ));
    let b = tls12(|b| {
        b.set_certificate_file(f.join("forged-client.pem"), openssl::ssl::SslFiletype::PEM).expect("cert");
        b.set_private_key_file(f.join("forged-client.key"), openssl::ssl::SslFiletype::PEM).expect("key");
    });
    let mut c = b.configure().expect("cfg").verify_hostname(false).connect("x", connect(port)).expect("handshake");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    assert_eq!(wait_log(&s, 1), ["500 [FAILED:certificate signature failure] [CN=forged client]"]);
    let lines = session_lines(&s);
    let at = ", client: 127.0.0.1, server: 127.0.0.1:P";
    assert_eq!(
        lines[1..],
        [
            format!(
                "*1 client SSL certificate verify error: (7:certificate signature failure) while SSL handshaking{at}"
            ),
            format!(
                "*1 ignoring stale global SSL error (SSL: error:0200008A:rsa routines::invalid padding \
                 error:02000072:rsa routines::padding check failed error:1C880004:Provider routines::RSA lib \
                 error:06880006:asn1 encoding routines::EVP lib) while SSL handshaking{at}"
            ),
        ]
    );
}

/// A listening socket whose accept queue is full: a connect to it hangs (no SYN-ACK)
/// until the connect timeout. Keep the returned sockets alive.
fn hanging_upstream() -> (u16, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    l.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().expect("addr").into()).expect("bind");
    l.listen(0).expect("listen");
    let addr = l.local_addr().expect("addr");
    let port = addr.as_socket().expect("inet").port();
    let mut keep = vec![l];
    for _ in 0..3 {
        let f = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        f.set_nonblocking(true).expect("nonblocking");
        let _ = f.connect(&addr);
        keep.push(f);
    }
    // The queue fills as the handshakes complete.
    std::thread::sleep(Duration::from_millis(200));
    (port, keep)
}

/// A TLS client's read event is watched from its handshake on, and is still ready
/// after it: nginx's proxy handler posts it, so while the upstream connects the client
/// is read (its bytes count in `$bytes_received`) and the action is "proxying
/// connection" — also with nothing sent. Lines recorded from nginx 1.22.1 (the bytes
/// were left unread before, and the close then failed on them with a [crit]
/// SSL_shutdown() line).
#[test]
fn tls_client_is_read_while_the_upstream_connects() {
    let (up, _keep) = hanging_upstream();
    let port = free_port();
    let s = Sluice::start(&conf(port, "proxy_connect_timeout 500ms;", &format!("proxy_pass 127.0.0.1:{up};")));
    for send in [&b""[..], b"hello\n"] {
        let mut c = tls(port, None, |_| {});
        c.write_all(send).expect("write");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert!(out.is_empty());
    }
    let log: Vec<String> = wait_log(&s, 2).iter().map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(log, ["502 0 0", "502 0 6"]);
    let lines: Vec<String> = session_lines(&s).into_iter().filter(|l| !l.contains(" connected to ")).collect();
    let want = |n: usize, received: usize| {
        format!(
            "*{n} upstream timed out (110: Connection timed out) while proxying connection, client: 127.0.0.1, \
             server: 127.0.0.1:P, upstream: \"127.0.0.1:P\", bytes from/to client:{received}/0, bytes from/to \
             upstream:0/0"
        )
    };
    // The first session's upstream connection took number 2.
    assert_eq!(lines, [want(1, 0), want(3, 6)]);
}

/// A TLS client that closes without a byte while `proxy_ssl` still shakes hands with a
/// slow backend: its end was read while the upstream was not ready (nginx's posted
/// read), so once the upstream is, the session ends from the client's side ("client
/// disconnected", as nginx 1.22.1 logs it; sluice said "upstream disconnected").
#[test]
fn tls_client_gone_during_a_slow_upstream_handshake_is_the_client_disconnecting() {
    let up = tls_backend_once(acceptor_builder().build(), Duration::from_millis(600), tls_echo);
    let port = free_port();
    let s = Sluice::start(&conf(port, "proxy_ssl on;", &format!("proxy_pass 127.0.0.1:{up};")));
    let c = tls(port, None, |_| {});
    drop(c);
    assert_eq!(wait_log(&s, 1)[0].split(' ').take(3).collect::<Vec<_>>(), ["200", "0", "0"]);
    let lines = session_lines(&s);
    assert!(
        lines.contains(&"*1 client disconnected, bytes from/to client:0/0, bytes from/to upstream:0/0".to_string()),
        "{lines:?}"
    );
}

/// A TLS read takes record after record until the buffer (here the rate's allowance) is
/// full, as nginx's ngx_ssl_recv: ten 300-byte records sent at once go upstream under
/// `proxy_upload_rate 1000` as 300, 700, 1000, 1000 (nginx 1.22.1 side by side), where
/// one SSL_read a time sent ten pieces of 300, each paced on its own (hunt16b F03).
#[test]
fn tls_reads_fill_the_buffer_across_records() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = l.local_addr().expect("addr").port();
    let backend = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let (mut sizes, mut total, mut buf) = (Vec::new(), 0, [0u8; 4096]);
        while total < 3000 {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sizes.push(n);
                    total += n;
                }
            }
        }
        sizes
    });
    let port = free_port();
    let _s = Sluice::start(&conf(port, "proxy_upload_rate 1000;", &format!("proxy_pass 127.0.0.1:{up};")));
    let mut c = tls(port, None, |_| {});
    // The upstream is connected by the time these records come.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        c.write_all(&[b'r'; 300]).expect("write a record");
    }
    let sizes = backend.join().expect("backend");
    assert_eq!(sizes.iter().sum::<usize>(), 3000, "{sizes:?}");
    assert!(sizes.len() <= 5 && sizes.iter().any(|&n| n >= 700), "paced per record: {sizes:?}");
}

/// A TLS session ends with close_notify and waits up to 3 s for the client's, unless
/// proxy_timeout's timer on the client's write event, still armed, comes first: nginx's
/// shutdown handler then closes quietly (here at 0.7 s, as nginx 1.22.1 closes; sluice
/// always waited the 3 s).
#[test]
fn close_notify_wait_ends_with_the_proxy_timeout_timer() {
    let up = backend(|mut c| {
        let mut b = [0u8; 6];
        let _ = c.read_exact(&mut b);
    });
    let port = free_port();
    let _s = Sluice::start(&conf(port, "proxy_timeout 700ms;", &format!("proxy_pass 127.0.0.1:{up};")));
    let mut c = tls(port, None, |_| {});
    c.write_all(b"hello\n").expect("write");
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    // The close_notify, not answered; then the socket's end.
    assert_eq!(c.ssl_read(&mut buf).map_err(|e| e.code()), Err(openssl::ssl::ErrorCode::ZERO_RETURN));
    let _ = c.get_mut().read(&mut buf);
    let waited = t0.elapsed();
    assert!(waited < Duration::from_millis(2000), "closed after {waited:?}, not at proxy_timeout");
}

/// A TLS client sending megabytes through sluice (`proxy_ssl on`) to a TLS backend that
/// reads 16 KB, waits `wait`, and closes with unread bytes and no lingering: a reset.
fn send_into_a_resetting_tls_upstream(wait: Duration) -> (Sluice, SslStream<TcpStream>) {
    let up = tls_backend_once(acceptor_builder().build(), Duration::ZERO, move |mut s| {
        let mut buf = vec![0u8; 16384];
        let _ = s.read_exact(&mut buf);
        std::thread::sleep(wait);
        let _ = socket2::SockRef::from(s.get_ref()).set_linger(Some(Duration::ZERO));
    });
    let port = free_port();
    let s = Sluice::start(&conf(
        port,
        "proxy_ssl on; ssl_protocols TLSv1.2 TLSv1.3;",
        &format!("proxy_pass 127.0.0.1:{up};"),
    ));
    let mut c = tls(port, None, |b| {
        b.set_min_proto_version(Some(SslVersion::TLS1_3)).expect("min");
    });
    c.get_ref().set_write_timeout(Some(Duration::from_secs(3))).ok();
    let chunk = vec![b'x'; 65536];
    for _ in 0..512 {
        if c.write_all(&chunk).is_err() {
            break;
        }
    }
    (s, c)
}

/// A TLS upstream that resets while sluice's sends to it wait for room: its read event
/// comes first and OpenSSL reports the reset with an empty error queue, a clean end, so
/// the session ends "upstream disconnected", and the client's close_notify meets its
/// data: nginx 1.22.1 side by side logs the same two lines (the shutdown's at crit).
#[test]
fn tls_upstream_reset_while_sends_wait_is_its_clean_end() {
    // Long enough for sluice's sends to fill the backend's socket and wait.
    let (s, c) = send_into_a_resetting_tls_upstream(Duration::from_millis(500));
    drop(c);
    wait_log(&s, 1);
    let lines = session_lines(&s);
    assert!(lines.iter().any(|l| l.starts_with("*1 upstream disconnected, bytes from/to client:")), "{lines:?}");
    let shutdown = "*1 SSL_shutdown() failed (SSL: error:0A000123:SSL routines::application data after close notify) \
                    while proxying connection, client: 127.0.0.1";
    assert!(lines.iter().any(|l| l.starts_with(shutdown)), "{lines:?}");
    assert!(s.error_log().contains("[crit]"), "{}", s.error_log());
}

/// A failed send to the upstream finalizes the session at once and leaves its action,
/// so what the close logs says "while proxying and sending to upstream", as nginx's
/// (sluice reset it to "proxying connection" first). A TLS backend that reads 16 KB and
/// closes makes the send fail; the client's unread bytes make the close's line.
#[test]
fn failed_upstream_send_keeps_its_action_for_the_close() {
    let (s, c) = send_into_a_resetting_tls_upstream(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(1000));
    drop(c);
    wait_log(&s, 1);
    let lines = session_lines(&s);
    let send_failed =
        lines.iter().any(|l| l.contains("failed") && l.contains("while proxying and sending to upstream"));
    let shutdown: Vec<&String> = lines.iter().filter(|l| l.contains("SSL_shutdown() failed")).collect();
    if send_failed {
        assert!(!shutdown.is_empty(), "{lines:?}");
        for l in shutdown {
            assert!(l.contains("while proxying and sending to upstream"), "{l}");
        }
    } else {
        // The reset can be read before a send meets it (nginx's race too): a failed
        // read, or, when the send waits for room, an end that OpenSSL reports with an
        // empty error queue, a clean "upstream disconnected" (nginx 1.22.1 side by side
        // with the backend closing 0.5 s after its 16 KB: that line, then the client's
        // `[crit] SSL_shutdown() failed ... while proxying connection`).
        assert!(
            lines
                .iter()
                .any(|l| l.contains("while proxying and reading from upstream")
                    || l.contains("*1 upstream disconnected")),
            "{lines:?}"
        );
    }
}

/// proxy_ssl to `proxy_pass unix:PATH` (written or from a variable) names the upstream
/// by the socket's path, as nginx's `u->ssl_name` (the group's host) does: it is the
/// SNI sent and the name checked (sluice said "unix"). And a peer made at run time
/// (`proxy_pass $v` naming no group) never resumes a session, as nginx's
/// ngx_stream_upstream_empty_set_session; a configured one does. Side by side with
/// nginx 1.22.1.
#[test]
fn proxy_ssl_names_and_sessions_of_implicit_and_runtime_peers() {
    let f = files();
    let dir = crate::common::TempDir::new("ssl-unix");
    let sock = dir.join("tls.sock");
    let (p, q, r, t, b) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let conf = format!(
        "events {{}}\nstream {{\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n    \
         proxy_ssl on;\n    proxy_ssl_server_name on;\n    \
         server {{ listen unix:{sock} ssl; return \"[$ssl_server_name]\"; }}\n    \
         server {{ listen 127.0.0.1:{b} ssl; listen 127.0.0.2:{b} ssl; return \"$ssl_session_reused\"; }}\n    \
         server {{ listen 127.0.0.1:{p}; proxy_pass unix:{sock}; }}\n    \
         server {{ listen 127.0.0.1:{q}; set $v unix:{sock}; proxy_pass $v; }}\n    \
         server {{ listen 127.0.0.1:{r}; set $v 127.0.0.1:{b}; proxy_pass $v; }}\n    \
         server {{ listen 127.0.0.1:{t}; proxy_pass 127.0.0.2:{b}; }}\n}}\n",
        d = f.display(),
        sock = sock.display()
    );
    // (`$v` finds no group: the configured peer is 127.0.0.2, not 127.0.0.1.)
    let mut s = Sluice::start(&conf);
    let ask = |port: u16| {
        let mut c = connect(port);
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut out = String::new();
        c.read_to_string(&mut out).ok();
        out
    };
    let want = format!("[{}]", sock.display());
    assert_eq!(ask(p), want);
    assert_eq!(ask(q), want);
    let runtime: Vec<String> = (0..3).map(|_| ask(r)).collect();
    assert_eq!(runtime, [".", ".", "."]);
    let configured: Vec<String> = (0..3).map(|_| ask(t)).collect();
    assert_eq!(configured, [".", "r", "r"]);
    s.stop();
}

/// A TLS connection that `pass` hands to a plain listener stays watched: its relay reads
/// every record the client sends, and a `return` ends with the client's close_notify
/// read at once (the review of the relay-start registration found both waiting: the
/// relay until proxy_timeout, the close for its 3 s and then a reset).
#[test]
fn tls_connection_passed_to_a_plain_listener_stays_watched() {
    let [to_relay, to_return, relay, ret] = [(); 4].map(|_| free_port());
    let up = backend(echo);
    let f = files();
    let tls_server = |port: u16, to: u16| {
        format!(
            "server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {c}; ssl_certificate_key {k}; \
             pass 127.0.0.1:{to}; }}\n",
            c = f.join("cert.pem").display(),
            k = f.join("key.pem").display(),
        )
    };
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n{}{}server {{ listen 127.0.0.1:{relay}; proxy_pass 127.0.0.1:{up}; }}\n\
         server {{ listen 127.0.0.1:{ret}; return \"hello\\n\"; }}\n}}\n",
        tls_server(to_relay, relay),
        tls_server(to_return, ret),
    ));
    let mut c = tls(to_relay, None, |_| {});
    c.get_ref().set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    for line in ["one\n", "two\n", "three\n"] {
        c.write_all(line.as_bytes()).expect("write");
        let mut got = vec![0u8; line.len()];
        c.read_exact(&mut got).expect("echo through the passed TLS connection");
        assert_eq!(got, line.as_bytes());
        // The next record comes after the relay has drained the socket.
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(c);
    let mut c = tls(to_return, None, |_| {});
    c.get_ref().set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read to the close_notify");
    assert_eq!(out, "hello\n");
    let started = Instant::now();
    let _ = c.shutdown();
    let mut rest = [0u8; 16];
    let end = c.get_mut().read(&mut rest);
    assert!(matches!(end, Ok(0)), "the connection ends cleanly, not with {end:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
    drop(s);
}

/// The shutdown timeout reaching a `proxy_ssl` upstream before its client (the upstream
/// in the lower connection slot) marks it in error first, as nginx does: the upstream
/// gets no close_notify, as a client in that case doesn't (nginx 1.22.1 side by side,
/// review of 00875b6).
#[test]
fn shutdown_timeout_met_at_a_tls_upstream_sends_it_no_close_notify() {
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let up = tls_backend_once(acceptor_builder().build(), Duration::ZERO, move |mut s| {
        let mut buf = [0u8; 64];
        let end = loop {
            match s.ssl_read(&mut buf) {
                Ok(_) => continue,
                Err(e) if e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => break "close_notify",
                Err(_) => break "no close_notify",
            }
        };
        let _ = tx.send(end);
    });
    let (p, q) = (free_port(), free_port());
    let conf = format!(
        "worker_shutdown_timeout 300ms;\nevents {{}}\nstream {{\n  log_format f '$server_port $status';\n  \
         access_log %%PREFIX%%a.log f;\n  server {{ listen 127.0.0.1:{p}; ssl_preread on; return x; }}\n  \
         server {{ listen 127.0.0.1:{q}; proxy_pass 127.0.0.1:{up}; proxy_ssl on; }}\n}}\n"
    );
    let mut s = Sluice::start_master(1, &conf);
    // Two sessions without upstreams, ended in turn: the next client takes the higher of
    // their slots, its upstream the lower.
    let x = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    let y = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    let clients = |s: &Sluice| s.error_log().matches("client 127.0.0.1:").count();
    assert!(wait_for(Duration::from_secs(10), || clients(&s) == 2), "{}", s.error_log());
    drop(x);
    assert!(wait_for(Duration::from_secs(10), || s.read("a.log").lines().count() == 1), "{}", s.error_log());
    drop(y);
    assert!(wait_for(Duration::from_secs(10), || s.read("a.log").lines().count() == 2), "{}", s.error_log());
    let z = TcpStream::connect(("127.0.0.1", q)).expect("connect");
    let connected = format!("connected to 127.0.0.1:{up}");
    assert!(wait_for(Duration::from_secs(10), || s.error_log().contains(&connected)), "{}", s.error_log());
    assert_eq!(s.stop(), Some(0));
    assert!(s.error_log().contains("shutdown timeout while proxying connection"), "{}", s.error_log());
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("no close_notify"), "{}", s.error_log());
    drop(z);
}
