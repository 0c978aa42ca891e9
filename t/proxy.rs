//! The proxy module through the real binary, shaped like nginx-tests `stream_proxy*.t`:
//! relaying in both directions at once, `proxy_half_close`, failed connects (refused and
//! timed out), `proxy_timeout`, many concurrent sessions, unix sockets on both sides, and
//! `return` with variables. Log lines are matched against real nginx 1.22.1 recordings
//! (t/data/logs/).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::recorded::*;

/// A backend running `f` on each connection in its own thread (a closure, so it can
/// report back to the test over a channel).
fn backend_with<F: Fn(TcpStream) + Send + Sync + 'static>(f: F) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let port = l.local_addr().expect("addr").port();
    let f = Arc::new(f);
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let f = f.clone();
            std::thread::spawn(move || f(c));
        }
    });
    port
}

/// `n` pseudo-random bytes (xorshift64).
fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

#[test]
fn relay_5mib_both_ways_at_once() {
    const N: usize = 5 << 20;
    let up = Arc::new(payload(N, 0x9e37_79b9_7f4a_7c15));
    let down = Arc::new(payload(N, 0xc2b2_ae3d_27d4_eb4f));
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let down2 = down.clone();
    // The backend reads the client's 5 MiB while it writes its own 5 MiB, then closes.
    let b = backend_with(move |c| {
        c.set_read_timeout(Some(Duration::from_secs(20))).ok();
        c.set_write_timeout(Some(Duration::from_secs(20))).ok();
        let mut w = c.try_clone().expect("clone");
        let d = down2.clone();
        let writer = std::thread::spawn(move || w.write_all(&d).is_ok());
        let mut r = c;
        let mut got = Vec::with_capacity(N);
        let mut buf = vec![0u8; 65536];
        while got.len() < N {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let wrote = writer.join().unwrap_or(false);
        let _ = tx.lock().map(|t| t.send((got.len(), Sha256::digest(&got), wrote)));
    });
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format bytes '$bytes_received|$bytes_sent|$upstream_bytes_sent|\
         $upstream_bytes_received|$status';\n  server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; \
         access_log %%PREFIX%%bytes.log bytes; }}\n}}\n"
    ));
    let start = Instant::now();
    let c = connect(p);
    let cport = c.local_addr().expect("addr").port();
    c.set_read_timeout(Some(Duration::from_secs(20))).ok();
    c.set_write_timeout(Some(Duration::from_secs(20))).ok();
    let mut w = c.try_clone().expect("clone");
    let up2 = up.clone();
    let writer = std::thread::spawn(move || w.write_all(&up2).map_err(|e| e.to_string()));
    let mut r = c;
    let (got, err) = read_all(&mut r);
    let wrote = writer.join().expect("writer thread");
    let (blen, bsha, bwrote) = rx.recv_timeout(Duration::from_secs(30)).expect("backend result");
    assert!(err.is_none(), "client read error: {:?}", err);
    assert_eq!(wrote, Ok(()), "client write");
    assert!(bwrote, "backend write failed");
    assert_eq!(got.len(), N, "bytes received by the client");
    assert_eq!(Sha256::digest(&got), Sha256::digest(&down[..]), "backend→client payload differs");
    assert_eq!(blen, N, "bytes received by the backend");
    assert_eq!(bsha, Sha256::digest(&up[..]), "client→backend payload differs");
    assert!(start.elapsed() < Duration::from_secs(60));
    let lines = s.wait_lines("bytes.log", 1);
    assert_eq!(lines, vec![format!("{N}|{N}|{N}|{N}|200")]);
    let (_, lines) = session_lines(&s, "error.log", cport, 3);
    let want = format!("upstream disconnected, bytes from/to client:{N}/{N}, bytes from/to upstream:{N}/{N}");
    assert!(lines.last().is_some_and(|l| l.ends_with(&want)), "want a last line ending {:?}: {:?}", want, lines);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// nginx-tests stream_proxy_half_close.t, "half close client": the client shuts its write
/// side; the backend still gets the data and the end of file, and can answer.
#[test]
fn half_close_client_shuts_write() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let b = backend_with(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let (got, err) = read_all(&mut c);
        let eof = err.is_none();
        let _ = c.write_all(b"SEE:");
        let _ = c.write_all(&got);
        let _ = tx.lock().map(|t| t.send((got, eof)));
    });
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format st '$status|$bytes_received|$bytes_sent|$upstream_bytes_sent|\
         $upstream_bytes_received';\n  server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; \
         proxy_half_close on; access_log %%PREFIX%%a.log st; }}\n}}\n"
    ));
    let mut c = connect(p);
    let cport = c.local_addr().expect("addr").port();
    c.write_all(b"SEE-THIS").expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let (got, eof) = rx.recv_timeout(Duration::from_secs(10)).expect("the backend never saw the client's FIN");
    assert_eq!(got, b"SEE-THIS");
    assert!(eof, "the backend got a read error instead of the end of file");
    let (reply, err) = read_all(&mut c);
    assert!(err.is_none(), "client read: {:?}", err);
    assert_eq!(reply, b"SEE:SEE-THIS", "the answer after the client's half-close");
    assert_eq!(s.wait_lines("a.log", 1), vec!["200|8|12|8|12"]);
    // the upstream's end of file is the last event (ngx_stream_proxy_test_finalize)
    let (_, lines) = session_lines(&s, "error.log", cport, 3);
    let want = "upstream disconnected, bytes from/to client:8/12, bytes from/to upstream:12/8";
    assert!(lines.last().is_some_and(|l| l.ends_with(want)), "want a last line ending {:?}: {:?}", want, lines);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// nginx-tests stream_proxy_half_close.t, "half close upstream": the backend shuts its
/// write side; the client gets the end of file and can still send to the backend.
#[test]
fn half_close_backend_shuts_write() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let b = backend_with(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let _ = c.write_all(b"HELLO");
        let _ = c.shutdown(Shutdown::Write);
        let (got, err) = read_all(&mut c);
        let _ = tx.lock().map(|t| t.send((got, err.is_none())));
    });
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format st '$status|$bytes_received|$bytes_sent|$upstream_bytes_sent|\
         $upstream_bytes_received';\n  server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; \
         proxy_half_close on; access_log %%PREFIX%%a.log st; }}\n}}\n"
    ));
    let mut c = connect(p);
    let cport = c.local_addr().expect("addr").port();
    let mut hello = [0u8; 5];
    c.read_exact(&mut hello).expect("the backend's greeting");
    assert_eq!(&hello, b"HELLO");
    // The backend's FIN must reach the client while the session stays up.
    let mut one = [0u8; 1];
    match c.read(&mut one) {
        Ok(0) => {}
        other => panic!("expected the end of file passed on from the backend, got {:?}", other),
    }
    c.write_all(b"SEE").expect("write after the backend's half-close");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let (got, eof) = rx.recv_timeout(Duration::from_secs(10)).expect("backend result");
    assert_eq!(got, b"SEE", "what the backend got after its half-close");
    assert!(eof, "the backend got a read error instead of the end of file");
    assert_eq!(s.wait_lines("a.log", 1), vec!["200|3|5|3|5"]);
    let (_, lines) = session_lines(&s, "error.log", cport, 3);
    let want = "client disconnected, bytes from/to client:3/5, bytes from/to upstream:5/3";
    assert!(lines.last().is_some_and(|l| l.ends_with(want)), "want a last line ending {:?}: {:?}", want, lines);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// Without `proxy_half_close` (the default), the client's FIN ends the session: the
/// recorder's `client_close` session (4 bytes to an idle backend, then the client's end).
#[test]
fn half_close_off_client_fin_ends_session() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let b = backend_with(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut got = [0u8; 4];
        let ok = c.read_exact(&mut got).is_ok();
        let _ = tx.lock().map(|t| t.send(Some(got.to_vec()).filter(|_| ok)));
        let (rest, err) = read_all(&mut c);
        let _ = tx.lock().map(|t| t.send(Some(rest).filter(|_| err.is_none())));
    });
    let p = free_port();
    let mut s = Sluice::start(&conf_all(&format!("server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; }}")));
    let mut c = connect(p);
    let cport = c.local_addr().expect("addr").port();
    c.write_all(b"bye\n").expect("write");
    // Wait until the bytes reached the backend (the recorder slept 0.2 s instead).
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("backend got nothing");
    assert_eq!(first.as_deref(), Some(&b"bye\n"[..]));
    let t = Instant::now();
    c.shutdown(Shutdown::Write).expect("shutdown");
    let (reply, err) = read_all(&mut c);
    assert!(err.is_none(), "client read: {:?}", err);
    assert_eq!(reply, b"", "nothing comes back from the idle backend");
    assert!(t.elapsed() < Duration::from_secs(5), "the session outlived the client's FIN: {:?}", t.elapsed());
    let rest = rx.recv_timeout(Duration::from_secs(10)).expect("the backend's connection was not closed");
    assert_eq!(rest.as_deref(), Some(&b""[..]), "the backend sees the end of file and nothing more");
    let mut caps = Caps::new(&s).with("PORT_CLIENT_CLOSE", p).with("PORT_BACKEND_IDLE", b);
    check_recorded(&s, &mut caps, cport, ERROR_CLIENT_CLOSE, "client_close");
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// A backend that answers and closes at once (a short connection's server): the answer
/// reaches the client whole, with a clean end of file, at every size around the buffer
/// (the last bytes before the backend's FIN are held back to leave with the client's
/// FIN; holding them must never lose them), also when the client has sent more bytes
/// than the backend asked for.
#[test]
fn answer_then_close_arrives_whole_with_a_clean_end() {
    let b = backend_with(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut req = [0u8; 8];
        if c.read_exact(&mut req).is_err() {
            return;
        }
        let n = u64::from_le_bytes(req);
        let _ = c.write_all(&payload(n as usize, n));
        // FIN, then take what else the client sent (a close with unread bytes would
        // reset the connection, and a reset may drop the answer's tail, in nginx too).
        let _ = c.shutdown(Shutdown::Write);
        let _ = read_all(&mut c);
    });
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; }} }}\n"
    ));
    let sizes = [1usize, 100, 4095, 4096, 16383, 16384, 16385, 70000, 300000];
    for round in 0..40 {
        for &n in &sizes {
            let mut c = connect(p);
            c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut req = (n as u64).to_le_bytes().to_vec();
            if round % 2 == 1 {
                // More bytes after the request, which the backend never reads: in the
                // same write, so they are in before the answer ends (written later, they
                // could come in after sluice's last read, and a close with unread bytes
                // resets the connection — in nginx too).
                req.extend_from_slice(b"trailing bytes the backend ignores");
            }
            c.write_all(&req).expect("request");
            let (got, err) = read_all(&mut c);
            assert!(err.is_none(), "round {round}, {n} bytes: the client read failed: {err:?}");
            assert_eq!(got.len(), n, "round {round}: {n} bytes sent, {} arrived", got.len());
            assert!(got == payload(n, n as u64), "round {round}, {n} bytes: the bytes differ");
        }
    }
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// A backend that hands each connection it accepts to the test: its port, and the
/// connections.
fn accepting_backend() -> (u16, mpsc::Receiver<TcpStream>) {
    let (accepted_tx, accepted) = mpsc::channel::<TcpStream>();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let _ = accepted_tx.send(c);
        }
    });
    (b, accepted)
}

/// A client of the proxy on `p` and its upstream connection, relaying: the client's
/// first bytes have reached the upstream.
fn relaying(p: u16, accepted: &mpsc::Receiver<TcpStream>) -> (TcpStream, TcpStream) {
    let mut c = connect(p);
    let mut up = accepted.recv_timeout(Duration::from_secs(10)).expect("the upstream connection");
    c.write_all(b"hello").expect("write");
    let mut hello = [0u8; 5];
    up.read_exact(&mut hello).expect("the client's first bytes");
    (c, up)
}

/// The session ends (the upstream answered and closed) while bytes the client sent since
/// wait unread: as nginx's close, sluice's resets the client's connection, after the
/// answer (held back with MSG_MORE to leave with the FIN, it is pushed out first). The
/// proxy is stopped while the answer, the close and the client's bytes come in, so it
/// finds them in one batch, the upstream's first (side by side with nginx 1.22.1: the
/// client reads "resp", then ECONNRESET; sluice gave "resp" and a clean end of file).
#[test]
fn unread_client_bytes_at_the_end_reset_it_after_the_answer() {
    let (b, accepted) = accepting_backend();
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; }} }}\n"
    ));
    for round in 0..3 {
        let (mut c, mut up) = relaying(p, &accepted);
        s.signal(libc::SIGSTOP);
        up.write_all(b"resp").expect("answer");
        drop(up);
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(b"req").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        s.signal(libc::SIGCONT);
        let (got, err) = read_all(&mut c);
        assert_eq!(got, b"resp", "round {round}");
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::ConnectionReset), "round {round}");
    }
}

/// `proxy_half_close on`: the client's last bytes and its end of file go up as nginx
/// sends them, the bytes then a `shutdown` of their own (not held back to leave with
/// the FIN). So when the upstream has answered and closed meanwhile (the proxy stopped,
/// so that it finds the client's data and FIN first in one batch), the bytes draw its
/// reset and the shutdown fails: side by side with nginx 1.22.1, `shutdown() failed
/// (107: Transport endpoint is not connected)`, status 500, and the client gets no
/// answer (sluice relayed "resp" with status 200).
#[test]
fn half_close_after_the_upstream_closed_fails_as_nginx() {
    let (b, accepted) = accepting_backend();
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{ log_format st $status; access_log %%PREFIX%%a.log st; \
         server {{ listen 127.0.0.1:{p}; proxy_half_close on; proxy_pass 127.0.0.1:{b}; }} }}\n"
    ));
    let (mut c, mut up) = relaying(p, &accepted);
    s.signal(libc::SIGSTOP);
    c.write_all(b"req").expect("write");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    std::thread::sleep(Duration::from_millis(50));
    up.write_all(b"resp").expect("answer");
    drop(up);
    std::thread::sleep(Duration::from_millis(50));
    s.signal(libc::SIGCONT);
    let (got, _) = read_all(&mut c);
    assert_eq!(got, b"", "{}", s.error_log());
    assert_eq!(s.wait_lines("a.log", 1), ["500"]);
    let want = "shutdown() failed (107: Transport endpoint is not connected) while proxying connection";
    assert!(s.error_log().contains(want), "{}", s.error_log());
}

/// `proxy_download_rate` with a buffer smaller than the rate: as nginx's, one buffer is
/// read, then the delay it earned (`n * 1000 / rate` ms) passes before the next read, so
/// 3000 bytes at 1000 bytes/s through a 100-byte buffer take about 3 s, 100 bytes at a
/// time (sluice read the whole second's allowance at once and was done in 2 s).
#[test]
fn rate_paces_one_buffer_at_a_time() {
    let b = backend_with(|mut c| {
        let _ = c.write_all(&[b'd'; 3000]);
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = read_all(&mut c);
    });
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; proxy_download_rate 1000; proxy_buffer_size 100; \
         proxy_pass 127.0.0.1:{b}; }} }}\n"
    ));
    let mut c = connect(p);
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let t0 = Instant::now();
    let mut got = 0;
    let mut early = None;
    let mut buf = [0u8; 4096];
    while got < 3000 {
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0, "end of file after {got} bytes");
        got += n;
        if early.is_none() && t0.elapsed() >= Duration::from_millis(450) {
            early = Some(got);
        }
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(2500), "3000 bytes at 1000/s, 100 at a time, took only {took:?}");
    assert!(early.is_some_and(|e| e < 900), "bytes in the first half second: {early:?} (one buffer per 100 ms)");
    drop(c);
    assert_eq!(s.stop(), Some(0));
}

/// `timer_resolution`: the worker's clock moves and its timers fire only on the ticks
/// (nginx's SIGALRM interval timer). Under `proxy_download_rate 1m` each 16k read asks
/// a 15 ms delay that ends at the next tick: 200,000 bytes take about 12 ticks (nginx
/// 1.22.1 side by side: one 16k read per 100 ms), where without it they go at once;
/// and `proxy_timeout 130ms` ends an idle session at the second tick, 0.2 s.
#[test]
fn timer_resolution_moves_the_clock_on_its_ticks() {
    let b = backend_with(|mut c| {
        let _ = c.write_all(&[b'd'; 200_000]);
    });
    let idle = backend_with(|mut c| {
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = read_all(&mut c);
    });
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "timer_resolution 100ms;\nevents {{}}\nstream {{\n log_format t '$session_time';\n \
         server {{ listen 127.0.0.1:{p}; proxy_download_rate 1m; proxy_pass 127.0.0.1:{b}; }}\n \
         server {{ listen 127.0.0.1:{q}; proxy_timeout 130ms; proxy_pass 127.0.0.1:{idle}; \
         access_log %%PREFIX%%t.log t; }}\n}}\n"
    ));
    let mut c = connect(p);
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let t0 = Instant::now();
    let got = read_all(&mut c);
    let took = t0.elapsed();
    assert_eq!(got.0.len(), 200_000);
    assert!(took >= Duration::from_millis(800), "16k a tick: 200,000 bytes took only {took:?}");
    let mut c = connect(q);
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = read_all(&mut c);
    let t: f64 = s.wait_lines("t.log", 1)[0].parse().expect("$session_time");
    assert!(t >= 0.19, "proxy_timeout 130ms fired at {t}, not on a tick");
    assert!(!s.error_log().contains("SIGALRM"), "{}", s.error_log());
}

#[test]
fn connection_refused_is_502() {
    let closed = closed_port();
    let p = free_port();
    let mut s = Sluice::start(&conf_all(&format!("server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{closed}; }}")));
    let (cport, reply, took) = client(p, b"");
    assert_eq!(reply, b"");
    assert!(took < Duration::from_secs(5), "{:?}", took);
    let mut caps = Caps::new(&s).with("PORT_REFUSED", p).with("PORT_BACKEND_CLOSED", closed);
    let line = check_recorded(&s, &mut caps, cport, ERROR_REFUSED, "refused");
    assert_eq!(fields(&line)[16], "502");
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

#[test]
fn connect_timeout_is_502() {
    let full = full_backend();
    let p = free_port();
    let mut s = Sluice::start(&conf_all(&format!(
        "server {{ listen 127.0.0.1:{p}; proxy_connect_timeout 1s; proxy_pass 127.0.0.1:{}; }}",
        full.port
    )));
    let (cport, reply, took) = client(p, b"");
    assert_eq!(reply, b"");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "session took {:?}", took);
    let mut caps = Caps::new(&s).with("PORT_CONNECT_TIMEOUT", p).with("PORT_BACKEND_FULL", full.port);
    let line = check_recorded(&s, &mut caps, cport, ERROR_CONNECT_TIMEOUT, "connect_timeout");
    let f = fields(&line);
    assert_eq!(f[16], "502");
    // nginx: 1.000 for both ($session_time, $upstream_session_time)
    for i in [15, 22] {
        let v = seconds(f[i]);
        assert!((0.9..3.0).contains(&v), "field {} = {} (nginx: 1.000)", i, v);
    }
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

#[test]
fn proxy_timeout_ends_idle_session() {
    let b = backend(idle);
    let p = free_port();
    let mut s = Sluice::start(&conf_all(&format!(
        "server {{ listen 127.0.0.1:{p}; proxy_timeout 1s; proxy_pass 127.0.0.1:{b}; }}"
    )));
    let (cport, reply, took) = client(p, b"");
    assert_eq!(reply, b"");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "session took {:?}", took);
    let mut caps = Caps::new(&s).with("PORT_PROXY_TIMEOUT", p).with("PORT_BACKEND_IDLE", b);
    let line = check_recorded(&s, &mut caps, cport, ERROR_PROXY_TIMEOUT, "proxy_timeout");
    let f = fields(&line);
    assert_eq!(f[16], "200");
    // nginx: $session_time 1.001, $upstream_session_time 1.001
    for i in [15, 22] {
        let v = seconds(f[i]);
        assert!((0.9..3.0).contains(&v), "field {} = {} (nginx: 1.001)", i, v);
    }
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// `proxy_timeout` is the longest idle time, not the session's length: traffic in either
/// direction re-arms it (the pauses below are the traffic pattern under test).
#[test]
fn proxy_timeout_rearmed_by_traffic() {
    let b = backend(echo);
    let p = free_port();
    let mut s = Sluice::start(&conf_all(&format!(
        "server {{ listen 127.0.0.1:{p}; proxy_timeout 1s; proxy_pass 127.0.0.1:{b}; }}"
    )));
    let t = Instant::now();
    let mut c = connect(p);
    let cport = c.local_addr().expect("addr").port();
    for i in 0..5u8 {
        c.write_all(&[b'0' + i]).expect("write");
        let mut one = [0u8; 1];
        c.read_exact(&mut one).unwrap_or_else(|e| panic!("echo {} after {:?}: {}", i, t.elapsed(), e));
        assert_eq!(one[0], b'0' + i);
        std::thread::sleep(Duration::from_millis(400));
    }
    let active = t.elapsed();
    let (rest, err) = read_all(&mut c);
    assert!(err.is_none(), "{:?}", err);
    assert_eq!(rest, b"");
    let idle = t.elapsed() - active;
    assert!(active >= Duration::from_millis(1900), "{:?}", active);
    // the last echo was ~400 ms before `active`; the session ends ~1 s after it
    assert!(idle >= Duration::from_millis(300) && idle < Duration::from_secs(3), "idle end after {:?}", idle);
    let (_, lines) = session_lines(&s, "error.log", cport, 3);
    let want = "connection timed out (110: Connection timed out) while proxying connection";
    assert!(lines.last().is_some_and(|l| l.contains(want)), "{:?}", lines);
    let line = access_line(&s, "access.log", 1, &cport.to_string()).expect("access log line");
    let f = fields(&line);
    assert_eq!((f[13], f[14], f[16]), ("5", "5", "200"), "{}", line);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// A single-threaded echo backend on mio that counts how many connections it holds at
/// once; it stops when `stop` is set (or after a minute).
fn mio_echo(stop: Arc<AtomicBool>, peak: Arc<AtomicUsize>) -> u16 {
    use mio::net::TcpListener as MioListener;
    use mio::{Events, Interest, Poll, Token};
    let std_l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = std_l.local_addr().expect("addr").port();
    std_l.set_nonblocking(true).expect("nonblocking");
    let mut l = MioListener::from_std(std_l);
    std::thread::spawn(move || {
        let mut poll = Poll::new().expect("poll");
        poll.registry().register(&mut l, Token(usize::MAX), Interest::READABLE).expect("register");
        let mut conns: std::collections::HashMap<usize, (mio::net::TcpStream, Vec<u8>)> = Default::default();
        let mut next = 0usize;
        let mut events = Events::with_capacity(1024);
        let end = Instant::now() + Duration::from_secs(60);
        let mut buf = vec![0u8; 16384];
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            if poll.poll(&mut events, Some(Duration::from_millis(100))).is_err() {
                continue;
            }
            for ev in events.iter() {
                if ev.token() == Token(usize::MAX) {
                    while let Ok((mut c, _)) = l.accept() {
                        let t = next;
                        next += 1;
                        if poll.registry().register(&mut c, Token(t), Interest::READABLE | Interest::WRITABLE).is_ok() {
                            conns.insert(t, (c, Vec::new()));
                            peak.fetch_max(conns.len(), Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                let t = ev.token().0;
                let mut close = false;
                if let Some((c, pending)) = conns.get_mut(&t) {
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) => {
                                close = true;
                                break;
                            }
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => {
                                close = true;
                                break;
                            }
                        }
                    }
                    while !pending.is_empty() {
                        match c.write(pending) {
                            Ok(n) => {
                                pending.drain(..n);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => {
                                close = true;
                                break;
                            }
                        }
                    }
                }
                if close {
                    if let Some((mut c, _)) = conns.remove(&t) {
                        let _ = poll.registry().deregister(&mut c);
                    }
                }
            }
        }
    });
    port
}

#[test]
fn thousand_concurrent_sessions() {
    const N: usize = 1000;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let b = mio_echo(stop.clone(), peak.clone());
    let p = free_port();
    // nginx needs a client and an upstream connection per session: 2,000 plus listeners.
    let mut s = Sluice::start(&format!(
        "events {{ worker_connections 4096; }}\nstream {{\n  log_format c '$remote_port|$status|\
         $bytes_received|$bytes_sent';\n  server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; \
         access_log %%PREFIX%%c.log c; }}\n}}\n"
    ));
    let start = Instant::now();
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let c = connect(p);
        let msg = format!(
            "session {:04} {:016x}\n",
            i,
            payload(8, i as u64 + 1).iter().fold(0u64, |a, &x| a << 8 | x as u64)
        );
        clients.push((c, msg));
    }
    for (c, msg) in clients.iter_mut() {
        c.write_all(msg.as_bytes()).expect("write");
    }
    let mut ports = std::collections::HashMap::new();
    for (i, (c, msg)) in clients.iter_mut().enumerate() {
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap_or_else(|e| panic!("session {}: {}", i, e));
        assert_eq!(String::from_utf8_lossy(&got), msg.as_str(), "session {}", i);
        ports.insert(c.local_addr().expect("addr").port().to_string(), msg.len());
    }
    // Every client is still open, so every upstream connection must still be open too.
    assert_eq!(peak.load(Ordering::Relaxed), N, "connections the backend held at once");
    drop(clients);
    let lines = s.wait_lines("c.log", N);
    stop.store(true, Ordering::Relaxed);
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
    assert_eq!(lines.len(), N, "access log lines");
    for l in &lines {
        let f = fields(l);
        let len = ports.remove(f[0]).unwrap_or_else(|| panic!("unknown or repeated client port in {:?}", l));
        assert_eq!(&f[1..], &["200", &len.to_string(), &len.to_string()], "{}", l);
    }
    let log = s.error_log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("[error]")).take(5).collect();
    assert!(errors.is_empty(), "{:?}", errors);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// Connections that queue up while the worker cannot accept (it is stopped) all get
/// served once it runs again: with `multi_accept off` (nginx's default) one is accepted
/// per listener event and the level-triggered listener reports the rest; with `on`, a
/// burst is taken per event. An edge-triggered listener would strand all but the first.
#[test]
fn queued_connections_are_all_accepted_with_multi_accept_off_and_on() {
    const N: usize = 300;
    for multi in ["off", "on"] {
        let p = free_port();
        let mut s = Sluice::start(&format!(
            "events {{ worker_connections 1024; multi_accept {multi}; }}
             stream {{ server {{ listen 127.0.0.1:{p} backlog=1024; return \"$connection\\n\"; }} }}\n"
        ));
        s.signal(libc::SIGSTOP);
        let mut clients: Vec<TcpStream> = (0..N).map(|_| connect(p)).collect();
        s.signal(libc::SIGCONT);
        let mut seen = std::collections::HashSet::new();
        for (i, c) in clients.iter_mut().enumerate() {
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap_or_else(|e| panic!("multi_accept {multi}: client {i}: {e}"));
            let n: u64 = got.trim_end().parse().unwrap_or_else(|_| panic!("multi_accept {multi}: {got:?}"));
            assert!(seen.insert(n), "multi_accept {multi}: connection number {n} twice");
        }
        assert_eq!(seen.len(), N, "multi_accept {multi}");
        assert_eq!(s.stop(), Some(0));
        no_alerts(&s);
    }
}

/// The TCP ports process `pid` listens on (from its descriptors and /proc/net/tcp).
fn listening_ports(pid: i32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let listening = f.get(3) == Some(&"0A") && f.get(9).is_some_and(|i| inodes.iter().any(|x| x == i));
            let port = f.get(1)?.rsplit_once(':')?.1;
            listening.then(|| u16::from_str_radix(port, 16).ok()).flatten()
        })
        .collect()
}

/// `listen 127.0.0.1;` (no port) is port 0 in nginx 1.22's stream module: the kernel
/// picks a port, and the server answers there.
#[test]
fn listen_without_a_port_gets_one_from_the_kernel() {
    let s = Sluice::start("events {} stream { server { listen 127.0.0.1; return \"no port\"; } }");
    let ports = listening_ports(s.pid());
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(exchange(ports[0], b""), b"no port");
    drop(s);
}

/// `proxy_bind`: the upstream connection comes from the given address, with a port
/// when one is given (nginx's ngx_parse_addr_port), from a variable too. The backend
/// answers with the address it sees.
#[test]
fn proxy_bind_sets_the_local_address_and_port() {
    let b = backend_with(|mut c| {
        let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = c.write_all(peer.as_bytes());
    });
    let (p1, p2, p3, fixed) = (free_port(), free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ map $server_port $src {{ default 127.0.0.4; }} \
         server {{ listen 127.0.0.1:{p1}; proxy_bind 127.0.0.2; proxy_pass 127.0.0.1:{b}; }} \
         server {{ listen 127.0.0.1:{p2}; proxy_bind 127.0.0.3:{fixed}; proxy_pass 127.0.0.1:{b}; }} \
         server {{ listen 127.0.0.1:{p3}; proxy_bind $src; proxy_pass 127.0.0.1:{b}; }} }}"
    ));
    let seen = |p: u16| String::from_utf8_lossy(&exchange(p, b"")).into_owned();
    assert!(seen(p1).starts_with("127.0.0.2:"), "{}", s.error_log());
    assert_eq!(seen(p2), format!("127.0.0.3:{fixed}"), "{}", s.error_log());
    assert!(seen(p3).starts_with("127.0.0.4:"), "{}", s.error_log());
    drop(s);
}

/// `proxy_bind` failures as nginx 1.22.1 logs them (side by side): a value that is no
/// address (brackets alone included) is an error line before any upstream is chosen, and
/// the session goes on unbound; a bind() that fails is crit, the session ends with 500
/// and the attempt has no peer in `$upstream_addr`; a rate that is no size is logged
/// when the upstream connects, and means no limit.
#[test]
fn proxy_bind_and_rate_failures_as_nginx() {
    let b = backend_with(|mut c| {
        let _ = c.write_all(b"ok");
    });
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = busy.local_addr().expect("addr").port();
    let (p, q, r) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format u '$server_port $status \"$upstream_addr\"'; access_log %%PREFIX%%u.log u; \
         server {{ listen 127.0.0.1:{p}; set $b \"[::1]\"; proxy_bind $b; proxy_pass 127.0.0.1:{b}; }} \
         server {{ listen 127.0.0.1:{q}; proxy_bind 127.0.0.1:{taken}; proxy_pass 127.0.0.1:{b}; }} \
         server {{ listen 127.0.0.1:{r}; set $rate abc; proxy_download_rate $rate; proxy_pass 127.0.0.1:{b}; }} }}"
    ));
    assert_eq!(exchange(p, b""), b"ok");
    assert_eq!(exchange(q, b""), b"");
    assert_eq!(exchange(r, b""), b"ok");
    let mut lines = s.wait_lines("u.log", 3);
    lines.sort();
    let mut want =
        [format!("{p} 200 \"127.0.0.1:{b}\""), format!("{q} 500 \"\""), format!("{r} 200 \"127.0.0.1:{b}\"")];
    want.sort();
    assert_eq!(lines, want);
    let log = s.error_log();
    let tail = |port: u16| format!("client: 127.0.0.1, server: 127.0.0.1:{port}");
    assert!(
        log.contains(&format!(
            "[error] {pid}#{pid}: *1 invalid local address \"[::1]\", {}, bytes from/to client:0/0, bytes from/to upstream:0/0",
            tail(p),
            pid = s.pid()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "bind(127.0.0.1:{taken}) failed (98: Address already in use) while connecting to upstream, {}, upstream: \"127.0.0.1:{b}\"",
            tail(q)
        )) && log.contains("[crit]"),
        "{log}"
    );
    assert!(
        log.contains(&format!("[error] {pid}#{pid}: *", pid = s.pid()))
            && log.contains(&format!("invalid size \"abc\" while connecting to upstream, {}", tail(r))),
        "{log}"
    );
    drop(busy);
}

/// A PROXY header, data and FIN in one segment: the FIN's edge came while the header
/// was read, before relaying; the relay must still see the client's end and close at
/// once (proxy_half_close off), as nginx does, not wait for the backend. The backend
/// answers 300 ms after the data, so a missed FIN shows as its answer reaching the
/// client.
#[test]
fn fin_with_the_proxy_header_ends_the_session() {
    let b = backend_with(|mut c| {
        let mut got = [0u8; 5];
        if c.read_exact(&mut got).is_ok() {
            std::thread::sleep(Duration::from_millis(300));
            let _ = c.write_all(b"late\n");
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
        }
    });
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p} proxy_protocol; proxy_pass 127.0.0.1:{b}; }} }}"
    ));
    for i in 0..5 {
        // Accepted first; then, while sluice is stopped, header, data and FIN come, so
        // one event carries them all while the header is still awaited.
        let mut c = connect(p);
        let accepted = format!("client 127.0.0.1:{} connected", c.local_addr().expect("addr").port());
        assert!(wait_for(Duration::from_secs(5), || s.error_log().contains(&accepted)), "{}", s.error_log());
        assert!(wait_in_epoll(s.pid()));
        s.signal(libc::SIGSTOP);
        c.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 4321 80\r\nhello").expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
        std::thread::sleep(Duration::from_millis(20));
        s.signal(libc::SIGCONT);
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert_eq!(String::from_utf8_lossy(&got), "", "session {i}: the client got the backend's late answer");
    }
    let log = s.error_log();
    assert_eq!(log.matches("client disconnected").count(), 5, "{log}");
    assert!(!log.contains("upstream disconnected"), "{log}");
}

#[test]
fn proxy_pass_to_unix_socket() {
    let dir = TempDir::new("unixb");
    let path = dir.join("backend.sock");
    let l = UnixListener::bind(&path).expect("bind unix backend");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut buf = Vec::new();
                let mut b = [0u8; 100];
                while !buf.ends_with(b"\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let _ = c.write_all(b"pong\n");
            });
        }
    });
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format u '$remote_port|$status|$upstream_addr|$bytes_received|$bytes_sent|\
         $upstream_bytes_sent|$upstream_bytes_received';\n  server {{ listen 127.0.0.1:{p}; proxy_pass unix:{}; \
         access_log %%PREFIX%%u.log u; }}\n}}\n",
        path.display()
    ));
    let (cport, reply, _) = client(p, b"hello\n");
    assert_eq!(reply, b"pong\n");
    let line = access_line(&s, "u.log", 0, &cport.to_string()).expect("access log line");
    assert_eq!(line, format!("{cport}|200|unix:{}|6|5|6|5", path.display()));
    let (_, lines) = session_lines(&s, "error.log", cport, 3);
    assert!(
        lines.last().is_some_and(|l| l.ends_with("upstream disconnected, bytes from/to client:6/5, bytes from/to upstream:5/6")),
        "{:?}",
        lines
    );
    // nginx: the local address of an unnamed unix socket is "unix:" (getsockname)
    let want = format!("proxy unix: connected to unix:{}", path.display());
    assert!(lines.get(1).is_some_and(|l| l.ends_with(&want)), "want a second line ending {:?}: {:?}", want, lines);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

#[test]
fn listen_on_unix_socket() {
    let b = backend(pong);
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format u '$remote_addr|$server_addr|$status|$bytes_received|$bytes_sent|\
         $upstream_addr|$binary_remote_addr|$remote_port';\n  server {{ listen unix:%%PREFIX%%sluice.sock; \
         proxy_pass 127.0.0.1:{b}; access_log %%PREFIX%%u.log u; }}\n}}\n"
    ));
    let path = s.dir.join("sluice.sock");
    // Anyone may connect, as nginx makes it (0666): workers running as another user too.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("the socket file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "{mode:o}");
    let mut c = UnixStream::connect(&path).expect("connect to sluice's unix listener");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    c.write_all(b"hello\n").expect("write");
    let (reply, err) = read_all(&mut c);
    assert!(err.is_none(), "{:?}", err);
    assert_eq!(reply, b"pong\n");
    // nginx (ngx_sock_ntop): an unnamed unix client is "unix:", the listener "unix:PATH"
    // (ngx_connection_local_sockaddr keeps the listener's address for AF_UNIX).
    let want = format!(" client unix: connected to unix:{}", path.display());
    let lines = s.wait_lines("u.log", 1);
    assert!(s.error_log().lines().any(|l| l.ends_with(&want)), "no line ending {:?} in\n{}", want, s.error_log());
    // $binary_remote_addr of a unix client is its address text, as nginx's (so
    // limit_conn keyed on it counts unix clients); no port.
    assert_eq!(lines, vec![format!("unix:|unix:{}|200|6|5|127.0.0.1:{b}|unix:|", path.display())]);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// Socket paths are bytes: a `listen unix:` and a `proxy_pass unix:` path with a byte
/// that is not UTF-8 (0xFF) bind and connect to exactly that file, and the variables
/// and the error log carry the byte itself, as nginx 1.22.1's do (checked side by side).
#[test]
fn unix_paths_with_bytes_not_utf8() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new("bytes");
    let at = |name: &[u8]| [dir.path().as_os_str().as_bytes(), b"/", name].concat();
    let (listen, upstream, log) = (at(b"L\xff.sock"), at(b"B\xff.sock"), at(b"u.log"));
    let backend = UnixListener::bind(OsStr::from_bytes(&upstream)).expect("bind the backend");
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = backend.accept() {
            let _ = c.write_all(b"backend");
        }
    });
    let inc = [
        b"server { listen unix:".as_slice(),
        &listen,
        b"; proxy_pass unix:",
        &upstream,
        b"; access_log ",
        &log,
        b" u; }\n",
    ]
    .concat();
    std::fs::write(dir.join("inc.conf"), inc).expect("write inc.conf");
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format u '$remote_addr|$server_addr|$upstream_addr|$status';\n  \
         include {};\n}}\n",
        dir.join("inc.conf").display()
    ));
    let mut c = UnixStream::connect(OsStr::from_bytes(&listen)).expect("connect to the path as written");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let (reply, _) = read_all(&mut c);
    assert_eq!(reply, b"backend");
    let path = std::path::PathBuf::from(OsStr::from_bytes(&log));
    assert!(wait_for(Duration::from_secs(10), || std::fs::read(&path).is_ok_and(|l| l.ends_with(b"\n"))));
    // (The access log escapes the byte, as nginx's default escaping does.)
    let d = dir.path().display();
    let want = format!("unix:|unix:{d}/L\\xFF.sock|unix:{d}/B\\xFF.sock|200\n");
    assert_eq!(String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()), want);
    let error_log = std::fs::read(s.dir.join("error.log")).unwrap_or_default();
    let line = [b"proxy unix: connected to unix:".as_slice(), &upstream, b"\n"].concat();
    assert!(error_log.windows(line.len()).any(|w| w == line.as_slice()), "{}", String::from_utf8_lossy(&error_log));
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

#[test]
fn return_with_variables() {
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  server {{ listen 127.0.0.1:{p}; \
         return \"$remote_addr $remote_port $server_addr $server_port ${{protocol}}/$nginx_version \
         $connection $pid $hostname [$binary_remote_addr] $upstream_addr.\\n\"; }}\n}}\n"
    ));
    let (cport, reply, _) = client(p, b"");
    let mut want = format!("127.0.0.1 {cport} 127.0.0.1 {p} TCP/1.22.1 1 {} {} [", s.pid(), hostname()).into_bytes();
    want.extend_from_slice(&[127, 0, 0, 1]);
    // an unset variable is empty in a complex value
    want.extend_from_slice(b"] .\n");
    assert_eq!(String::from_utf8_lossy(&reply), String::from_utf8_lossy(&want));
    assert_eq!(reply, want);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// `return` gives a slow reader that keeps reading the whole text: the 5 s send timer
/// starts again each time the socket fills (ngx_stream_return_write_handler adds it on
/// every write event; side by side with nginx 1.22.1, 8 MB at ~640 KB/s: all of it,
/// where sluice cut the text 5 s after the socket first filled).
#[test]
fn return_to_a_slow_steady_reader_is_not_cut() {
    let p = free_port();
    let x = "x".repeat(4000);
    let b2 = "$b1".repeat(250);
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  map $server_port $b1 {{ default {x}; }}\n  map $server_port $b2 {{ default {b2}; }}\n\
         server {{ listen 127.0.0.1:{p} sndbuf=16k; return $b2$b2$b2$b2; }}\n}}\n"
    ));
    let want = 4 * 250 * 4000;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], p)).into()).expect("connect");
    let mut c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // ~640 KB/s: 32 KiB every 50 ms, about 6.5 s for the text, never 5 s without reading.
    let (mut got, mut buf) = (0, vec![0u8; 32 * 1024]);
    let start = Instant::now();
    loop {
        let mut chunk = 0;
        while chunk < buf.len() {
            match c.read(&mut buf[chunk..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => chunk += n,
            }
        }
        got += chunk;
        if chunk < buf.len() || start.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(start.elapsed() > Duration::from_secs(5), "the reader was not slow enough to test anything");
    assert_eq!(got, want, "{}", s.error_log());
    assert!(!s.error_log().contains("timed out"), "{}", s.error_log());
}

/// nginx's lines for a connect that failed with ECONNREFUSED in an upstream of several
/// servers, from ngx_stream_proxy_module.c/ngx_stream_upstream_round_robin.c 1.22.1 (the
/// `[error]` line has the recorded shape; the `[warn]` is max_fails=1 being reached).
const ERROR_REFUSED_THEN_DISABLED: &str = "%%TIME%% [info] %%PID%%#%%PID%%: *%%CONN%% client 127.0.0.1:%%CLIENT_PORT%% connected to 127.0.0.1:%%PORT_LISTEN%%
%%TIME%% [error] %%PID%%#%%PID%%: *%%CONN%% connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: 127.0.0.1:%%PORT_LISTEN%%, upstream: \"127.0.0.1:%%PORT_BACKEND_CLOSED%%\", bytes from/to client:0/0, bytes from/to upstream:0/0
%%TIME%% [warn] %%PID%%#%%PID%%: *%%CONN%% upstream server temporarily disabled while connecting to upstream, client: 127.0.0.1, server: 127.0.0.1:%%PORT_LISTEN%%, upstream: \"127.0.0.1:%%PORT_BACKEND_CLOSED%%\", bytes from/to client:0/0, bytes from/to upstream:0/0";

/// `proxy_next_upstream` over an `upstream {}` of two loopback servers, the first refusing:
/// the session goes on to the second, the variables list both attempts, and the failed
/// server is then skipped (max_fails=1, fail_timeout=10s); with `proxy_next_upstream off`
/// the session ends with 502 after the first attempt.
/// After a refused first peer, the next peer's greeting reaches the client at once: the
/// failed socket's hang-up must not carry over to the next connection (it made sluice
/// hold the greeting back, as if the peer's end of file were in, for ~200 ms).
#[test]
fn greeting_after_a_refused_peer_is_not_held_back() {
    let closed = closed_port();
    let greeter = backend_with(|mut c| {
        let _ = c.write_all(b"220 hello\n");
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = read_all(&mut c);
    });
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{ upstream u {{ server 127.0.0.1:{closed} max_fails=0; server 127.0.0.1:{greeter}; }} \
         server {{ listen 127.0.0.1:{p}; proxy_pass u; }} }}\n"
    ));
    let mut waits = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        let mut c = connect(p);
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 32];
        let n = c.read(&mut buf).expect("greeting");
        assert_eq!(&buf[..n], b"220 hello\n");
        waits.push(t.elapsed());
    }
    waits.sort();
    // Round robin: half of these went through the refused peer first.
    assert!(waits[3] < Duration::from_millis(100), "greetings held back: {waits:?}");
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn next_upstream_after_refused() {
    let closed = closed_port();
    let echo = backend(pong);
    let (on, off) = (free_port(), free_port());
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format u '$remote_port|$status|$upstream_addr|$upstream_bytes_sent|\
         $upstream_bytes_received|$upstream_connect_time|$upstream_first_byte_time|$upstream_session_time';\n  \
         access_log %%PREFIX%%u.log u;\n  \
         upstream u1 {{ server 127.0.0.1:{closed}; server 127.0.0.1:{echo}; }}\n  \
         upstream u2 {{ server 127.0.0.1:{closed}; server 127.0.0.1:{echo}; }}\n  \
         server {{ listen 127.0.0.1:{on}; proxy_pass u1; }}\n  \
         server {{ listen 127.0.0.1:{off}; proxy_pass u2; proxy_next_upstream off; }}\n}}\n"
    ));
    let (c1, r1, _) = client(on, b"hello\n");
    // nothing sent: closing a socket with unread bytes would reset the client
    let (c2, r2, _) = client(off, b"");
    let (c3, r3, _) = client(on, b"hello\n");
    assert_eq!((&r1[..], &r2[..], &r3[..]), (&b"pong\n"[..], &b""[..], &b"pong\n"[..]));

    let mut failed = Vec::new();
    let (cl, ec) = (format!("127.0.0.1:{closed}"), format!("127.0.0.1:{echo}"));
    // (client, status, upstream_addr, bytes sent, received, how many "-" times per field)
    let want = [
        (c1, "200", format!("{cl}, {ec}"), "0, 6", "0, 5", ["-, T", "-, T", "T, T"]),
        (c2, "502", cl.clone(), "0", "0", ["-", "-", "T"]),
        (c3, "200", ec.clone(), "6", "5", ["T", "T", "T"]),
    ];
    for (c, status, addr, sent, recv, times) in &want {
        let Some(line) = access_line(&s, "u.log", 0, &c.to_string()) else {
            failed.push(format!("no access log line for client {}", c));
            continue;
        };
        let f = fields(&line);
        let got_times: Vec<String> = f[5..8]
            .iter()
            .map(|v| {
                v.split(", ")
                    .map(|t| {
                        if t == "-" {
                            "-"
                        } else if t.parse::<f64>().is_ok() {
                            "T"
                        } else {
                            "?"
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        if (f[1], f[2], f[3], f[4]) != (*status, addr.as_str(), *sent, *recv) || got_times != times.to_vec() {
            failed
                .push(format!("client {}: want {}|{}|{}|{}|{:?}\n  got {}", c, status, addr, sent, recv, times, line));
        }
    }
    for (c, port, last) in
        [(c1, on, Some("upstream disconnected, bytes from/to client:6/5, bytes from/to upstream:5/6")), (c2, off, None)]
    {
        let mut caps =
            Caps::new(&s).with("PORT_LISTEN", port).with("PORT_BACKEND_CLOSED", closed).with("CLIENT_PORT", c);
        let n = if last.is_some() { 5 } else { 3 };
        let (_, lines) = session_lines(&s, "error.log", c, n);
        let head: Vec<String> = lines.iter().take(3).cloned().collect();
        if let Err(e) = match_file(ERROR_REFUSED_THEN_DISABLED, &head, &mut caps) {
            failed.push(format!("client {}: {}", c, e));
        }
        let tail_ok = match &last {
            Some(l) => {
                lines.len() == 5
                    && lines[3].contains(" proxy 127.0.0.1:")
                    && lines[3].ends_with(&format!(" connected to {ec}"))
                    && lines[4].ends_with(l)
            }
            None => lines.len() == 3,
        };
        if !tail_ok {
            failed.push(format!("client {}: unexpected lines after the failed attempt: {:#?}", c, lines));
        }
    }
    assert!(failed.is_empty(), "{}\n--- error.log:\n{}", failed.join("\n"), s.error_log());
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// The lines nginx 1.22.1 writes when a peer resets the connection while proxying
/// (ngx_unix_recv → ngx_connection_error: level info for the client connection,
/// `log_error = NGX_ERROR_INFO`; error for the upstream one, `NGX_ERROR_ERR`; then
/// ngx_stream_proxy_test_finalize's line). Not recorded: derived from the source, with
/// the recorded context shape.
fn reset_shape(level: &str, side: &str, last: &str) -> String {
    format!(
        "%%TIME%% [info] %%PID%%#%%PID%%: *%%CONN%% client 127.0.0.1:%%CLIENT_PORT%% connected to 127.0.0.1:%%PORT_LISTEN%%
%%TIME%% [info] %%PID%%#%%PID%%: *%%CONN%% proxy 127.0.0.1:%%UPSTREAM_LOCAL_PORT%% connected to 127.0.0.1:%%PORT_BACKEND%%
%%TIME%% [{level}] %%PID%%#%%PID%%: *%%CONN%% recv() failed (104: Connection reset by peer) while proxying and reading from {side}, client: 127.0.0.1, server: 127.0.0.1:%%PORT_LISTEN%%, upstream: \"127.0.0.1:%%PORT_BACKEND%%\", bytes from/to client:4/0, bytes from/to upstream:0/4
%%TIME%% [info] %%PID%%#%%PID%%: *%%CONN%% {last} disconnected, bytes from/to client:4/0, bytes from/to upstream:0/4"
    )
}

/// Close with a reset (SO_LINGER 0).
fn reset(c: TcpStream) {
    socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(c);
}

#[test]
fn client_reset_while_proxying() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let b = backend_with(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut got = [0u8; 4];
        let ok = c.read_exact(&mut got).is_ok();
        let _ = tx.lock().map(|t| t.send(ok.then_some(got)));
        let _ = read_all(&mut c);
        let _ = tx.lock().map(|t| t.send(None));
    });
    let p = free_port();
    let mut s = Sluice::start(&conf_all(&format!("server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; }}")));
    let mut c = connect(p);
    let cport = c.local_addr().expect("addr").port();
    c.write_all(b"bye\n").expect("write");
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("backend"), Some(*b"bye\n"));
    reset(c);
    rx.recv_timeout(Duration::from_secs(10)).expect("the upstream connection was not closed after the client's reset");
    let mut caps = Caps::new(&s).with("PORT_LISTEN", p).with("PORT_BACKEND", b).with("CLIENT_PORT", cport);
    let (_, lines) = session_lines(&s, "error.log", cport, 4);
    if let Err(e) = match_file(&reset_shape("info", "client", "client"), &lines, &mut caps) {
        panic!("{}", e);
    }
    let line = access_line(&s, "access.log", 1, &cport.to_string()).expect("access log line");
    assert_eq!(fields(&line)[16], "200", "{}", line);
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

#[test]
fn backend_reset_while_proxying() {
    let b = backend_with(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut got = [0u8; 4];
        if c.read_exact(&mut got).is_ok() {
            reset(c);
        }
    });
    let p = free_port();
    let mut s = Sluice::start(&conf_all(&format!("server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; }}")));
    let mut c = connect(p);
    let cport = c.local_addr().expect("addr").port();
    c.write_all(b"bye\n").expect("write");
    let (reply, err) = read_all(&mut c);
    assert_eq!(reply, b"");
    assert!(err.is_none(), "the client should see an orderly close, got {:?}", err);
    let mut caps = Caps::new(&s).with("PORT_LISTEN", p).with("PORT_BACKEND", b).with("CLIENT_PORT", cport);
    let (_, lines) = session_lines(&s, "error.log", cport, 4);
    if let Err(e) = match_file(&reset_shape("error", "upstream", "upstream"), &lines, &mut caps) {
        panic!("{}", e);
    }
    let line = access_line(&s, "access.log", 1, &cport.to_string()).expect("access log line");
    assert_eq!(fields(&line)[16], "200", "{}", line);
    // nginx takes the failed read as a zero-byte read: it is the first byte's time.
    let fbt = fields(&line)[21];
    assert!(fbt.len() == 5 && fbt.as_bytes()[1] == b'.', "$upstream_first_byte_time {fbt:?} in {line}");
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// A connect() that fails at once (a missing unix socket): nginx 1.22.1 logs it at crit
/// as "connect() to PEER failed", numbers the failed upstream connection, and goes on to
/// the next peer. Recorded by hand from nginx 1.22.1 with this configuration (lines with
/// time and pid cut): the second client is *3 because the first session's failed
/// upstream connection took *2.
#[test]
fn immediate_connect_failure_is_crit_and_tries_the_next_peer() {
    let dir = TempDir::new("unix-up");
    let here = dir.join("here.sock");
    let l = std::os::unix::net::UnixListener::bind(&here).expect("bind unix");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"HERE");
        }
    });
    let missing = dir.join("missing.sock");
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           log_format st '$status $upstream_addr';\n\
           access_log %%PREFIX%%st.log st;\n\
           server {{ listen 127.0.0.1:{p}; proxy_pass unix:{m}; }}\n\
           upstream u {{ server unix:{m}; server unix:{h}; }}\n\
           server {{ listen 127.0.0.1:{q}; proxy_pass u; }}\n\
         }}",
        m = missing.display(),
        h = here.display()
    ));
    let mut out = String::new();
    let mut c = connect(p);
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = c.read_to_string(&mut out);
    assert_eq!(out, "");
    let mut c = connect(q);
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = c.read_to_string(&mut out);
    assert_eq!(out, "HERE");
    let m = missing.display();
    let lines = s.wait_lines("st.log", 2);
    assert_eq!(lines, vec![format!("502 unix:{m}"), format!("200 unix:{m}, unix:{}", here.display())]);
    let log = s.error_log();
    for (n, port) in [(1, p), (3, q)] {
        let want = format!(
            "[crit] {pid}#{pid}: *{n} connect() to unix:{m} failed (2: No such file or directory) while connecting \
             to upstream, client: 127.0.0.1, server: 127.0.0.1:{port}, upstream: \"unix:{m}\", bytes from/to \
             client:0/0, bytes from/to upstream:0/0",
            pid = s.pid()
        );
        assert!(log.contains(&want), "want: {want}\n{log}");
    }
    assert!(!log.contains("[alert]"), "{log}");
}

/// A unix socket whose listen queue is full: Linux's connect() says EAGAIN, which nginx
/// takes as a refusal ([error], the peer failed, the next one tried, 502 without one),
/// not as a connect in progress (nginx 1.22.1 side by side, hunt16b F04).
#[test]
fn unix_upstream_with_a_full_listen_queue_is_refused() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir = TempDir::new("unix-full");
    let full = dir.join("full.sock");
    let l = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
    l.bind(&SockAddr::unix(&full).expect("addr")).expect("bind");
    l.listen(0).expect("listen");
    // Never accepted: connect until the queue takes no more.
    let mut queued = Vec::new();
    loop {
        let c = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
        c.set_nonblocking(true).expect("nonblocking");
        match c.connect(&SockAddr::unix(&full).expect("addr")) {
            Ok(()) => queued.push(c),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
            Err(e) => panic!("connect: {e}"),
        }
        assert!(queued.len() < 64, "the listen queue does not fill");
    }
    let here = backend_with(|mut c| {
        let _ = c.write_all(b"HERE");
    });
    let (p, q) = (free_port(), free_port());
    let f = full.display();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           log_format st '$status $upstream_addr';\n\
           access_log %%PREFIX%%st.log st;\n\
           upstream u {{ server unix:{f}; server 127.0.0.1:{here}; }}\n\
           server {{ listen 127.0.0.1:{p}; proxy_pass u; }}\n\
           server {{ listen 127.0.0.1:{q}; proxy_pass unix:{f}; }}\n\
         }}"
    ));
    let mut out = String::new();
    let mut c = connect(p);
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = c.read_to_string(&mut out);
    assert_eq!(out, "HERE");
    let mut c = connect(q);
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    out.clear();
    let _ = c.read_to_string(&mut out);
    assert_eq!(out, "");
    let lines = s.wait_lines("st.log", 2);
    assert_eq!(lines, vec![format!("200 unix:{f}, 127.0.0.1:{here}"), format!("502 unix:{f}")]);
    let log = s.error_log();
    // The second client is *4: the first session's two upstream connections took 2, 3.
    for (n, port) in [(1, p), (4, q)] {
        let want = format!(
            "[error] {pid}#{pid}: *{n} connect() to unix:{f} failed (11: Resource temporarily unavailable) while \
             connecting to upstream, client: 127.0.0.1, server: 127.0.0.1:{port}, upstream: \"unix:{f}\", bytes \
             from/to client:0/0, bytes from/to upstream:0/0",
            pid = s.pid()
        );
        assert!(log.contains(&want), "want: {want}\n{log}");
    }
    assert!(log.contains("upstream server temporarily disabled while connecting to upstream"), "{log}");
    assert!(!log.contains("[alert]"), "{log}");
    drop(queued);
}

/// Zero timeouts end the session before anything is read, as nginx 1.22.1 did side by
/// side (3 runs of 3): nginx reads a client only when epoll reports it readable, and a
/// 0 ms timer armed while a turn's events are handled expires at the end of that turn.
/// `proxy_timeout 0`: "connection timed out", 0 bytes either way, though the client
/// sent at once; `preread_timeout 0`: the session ends with 200 and no upstream;
/// `proxy_protocol_timeout 0`: "client timed out" though the header came at once.
#[test]
fn zero_timeouts_end_sessions_before_reading() {
    let b = backend(echo);
    let (p, q, r) = (free_port(), free_port(), free_port());
    let mut s = Sluice::start(&conf_all(&format!(
        "server {{ listen 127.0.0.1:{p}; proxy_timeout 0; proxy_pass 127.0.0.1:{b}; }}\n\
         server {{ listen 127.0.0.1:{q}; ssl_preread on; preread_timeout 0; proxy_pass 127.0.0.1:{b}; }}\n\
         server {{ listen 127.0.0.1:{r} proxy_protocol; proxy_protocol_timeout 0; return ok; }}"
    )));
    for port in [p, q, r] {
        let mut c = connect(port);
        let cport = c.local_addr().expect("addr").port();
        c.write_all(if port == r { b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhello" } else { b"hello" }).expect("write");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        // nginx closes with the client's bytes unread: a reset, or an end of file.
        let (reply, err) = read_all(&mut c);
        assert_eq!(reply, b"", "port {}", port);
        assert!(err.as_ref().is_none_or(|e| e.kind() == ErrorKind::ConnectionReset), "{:?}", err);
        let line = access_line(&s, "access.log", 1, &cport.to_string()).expect("access log line");
        let f = fields(&line);
        if port == p {
            assert_eq!((f[13], f[14], f[16], f[18], f[19]), ("0", "0", "200", "0", "0"), "{}", line);
            let (_, lines) = session_lines(&s, "error.log", cport, 3);
            let want = "connection timed out (110: Connection timed out) while proxying connection, client: \
                        127.0.0.1, server: 127.0.0.1:";
            assert!(lines.last().is_some_and(|l| l.contains(want)), "{:?}", lines);
            assert!(lines[2].ends_with("bytes from/to client:0/0, bytes from/to upstream:0/0"), "{:?}", lines);
        } else {
            assert_eq!((f[13], f[14], f[16], f[17]), ("0", "0", "200", "-"), "{}", line);
        }
        if port == r {
            assert_eq!(f[0], "127.0.0.1", "the header was not read: {}", line);
            let (_, lines) = session_lines(&s, "error.log", cport, 2);
            let want = "client timed out (110: Connection timed out) while reading PROXY protocol";
            assert!(lines.last().is_some_and(|l| l.contains(want)), "{:?}", lines);
        }
    }
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// A client that sends its data and closes its side at once is read to the end, and
/// (without half-close) the session ended, before anything the upstream echoed is
/// relayed, as nginx's read loop does even through a 1-byte `proxy_buffer_size`
/// (nginx 1.22.1 side by side, 3 runs of 3: nothing back, "client disconnected,
/// bytes from/to client:385/0, bytes from/to upstream:0/385").
#[test]
fn client_data_and_close_are_read_before_upstream_replies() {
    let b = backend(echo);
    let p = free_port();
    let s = Sluice::start(&conf_all(&format!(
        "server {{ listen 127.0.0.1:{p}; proxy_buffer_size 1; proxy_pass 127.0.0.1:{b}; }}"
    )));
    let mut c = connect(p);
    let cport = c.local_addr().expect("addr").port();
    c.write_all(&[b'y'; 385]).expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let (reply, _) = read_all(&mut c);
    assert_eq!(reply.len(), 0, "echoed before the client's end was read");
    let (_, lines) = session_lines(&s, "error.log", cport, 3);
    let want = "client disconnected, bytes from/to client:385/0, bytes from/to upstream:0/385";
    assert!(lines.last().is_some_and(|l| l.ends_with(want)), "{:?}", lines);
}

/// A buffer the machine cannot give (here 100 GB) ends that one session with nginx's
/// "malloc() failed" at emerg and 500, for `proxy_buffer_size` before the upstream is
/// connected, for `preread_buffer_size` at the first read; the worker lives on (a
/// failed allocation used to abort it). A large buffer that can be had is not touched
/// beyond what is read into it.
#[test]
fn buffers_that_cannot_be_allocated_end_one_session() {
    let (up, hi) = (backend(echo), sends_and_closes("hi"));
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format t '$server_port $status';\n access_log %%PREFIX%%access.log t;\n \
         server {{ listen 127.0.0.1:{p1}; proxy_buffer_size 102400m; proxy_pass 127.0.0.1:{up}; }}\n \
         server {{ listen 127.0.0.1:{p2}; ssl_preread on; preread_buffer_size 102400m; proxy_pass 127.0.0.1:{up}; }}\n \
         server {{ listen 127.0.0.1:{p3}; proxy_buffer_size 2000m; proxy_pass 127.0.0.1:{hi}; }}\n}}\n"
    ));
    for p in [p1, p2] {
        let mut c = crate::common::connect(p);
        let _ = c.write_all(b"hello\n");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert!(out.is_empty());
    }
    assert_eq!(exchange(p3, b""), b"hi");
    assert_eq!(s.wait_lines("access.log", 3), [format!("{p1} 500"), format!("{p2} 500"), format!("{p3} 200")]);
    let log = s.error_log();
    let emerg: Vec<&str> =
        log.lines().filter(|l| l.contains("[emerg]")).map(|l| l.split_once(" *").map_or(l, |x| x.1)).collect();
    assert_eq!(
        emerg,
        [
            format!(
                "1 malloc(107374182400) failed (12: Cannot allocate memory), client: 127.0.0.1, server: \
                 127.0.0.1:{p1}, bytes from/to client:0/0, bytes from/to upstream:0/0"
            ),
            format!(
                "2 malloc(107374182400) failed (12: Cannot allocate memory) while prereading client data, client: \
                 127.0.0.1, server: 127.0.0.1:{p2}"
            ),
        ]
    );
    // The 2000m buffer is allocated, not written: the worker stays small.
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
        .unwrap_or(u64::MAX);
    assert!(rss_kb < 200_000, "worker RSS {rss_kb} kB after a 2000m proxy_buffer_size");
}

/// `listen ... fastopen=` is an int in nginx: 2147483648 becomes -2147483648, which
/// the kernel refuses; the socket listens without it and the failure is an alert
/// (line recorded from nginx 1.22.1).
#[test]
fn listen_option_that_does_not_take_is_an_alert() {
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{ server {{ listen 127.0.0.1:{p} fastopen=2147483648 rcvbuf=4294967296; return ok; }} }}\n"
    ));
    assert_eq!(exchange(p, b""), b"ok");
    let want = format!("setsockopt(TCP_FASTOPEN, -2147483648) 127.0.0.1:{p} failed, ignored (22: Invalid argument)");
    let log = s.error_log();
    assert!(log.lines().any(|l| l.contains("[alert]") && l.ends_with(&want)), "{log}");
}
