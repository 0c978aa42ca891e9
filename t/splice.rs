//! The zero-copy relay through the binary: bulk data both ways with SHA-256 equality,
//! a slow reader (backpressure), half-close, pipes in use during bulk transfer and
//! returned after, and a pipe pool that stays bounded over many connections.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::*;

/// Deterministic pseudo-random bytes (xorshift), `len` of them.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// A backend that reads everything the client sends (until it half-closes), answers
/// with the SHA-256 of it followed by `reply_len` bytes of its own, then closes.
fn sink_and_send(reply_len: usize) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let reply = data(7, reply_len);
                let mut w = c.try_clone().expect("clone");
                // Send while receiving, so both directions are busy at once.
                let sender = std::thread::spawn(move || {
                    let _ = w.write_all(&reply);
                });
                let mut got = Vec::new();
                let _ = c.read_to_end(&mut got);
                let _ = sender.join();
                let _ = c.write_all(&sha(&got));
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

fn proxy_conf(listen: u16, backend: u16, extra: &str) -> String {
    format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{listen}; proxy_pass 127.0.0.1:{backend}; \
         proxy_half_close on; {extra} }} }}"
    )
}

/// The pipes (beyond the signal pipe's two ends) a process holds.
fn pipes_of(pid: i32) -> usize {
    let fds =
        std::fs::read_dir(format!("/proc/{}/fd", pid)).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    let pipes = fds
        .iter()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("pipe:")))
        .count();
    pipes.saturating_sub(2)
}

#[test]
fn sixty_four_mib_both_ways_with_sha256() {
    const LEN: usize = 64 << 20;
    let backend = sink_and_send(LEN);
    let p = free_port();
    let _s = Sluice::start(&proxy_conf(p, backend, ""));
    let mut c = connect(p);
    c.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let up = data(3, LEN);
    let want_up = sha(&up);
    let mut w = c.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        w.write_all(&up).expect("send");
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("receive");
    sender.join().expect("sender");
    assert_eq!(got.len(), LEN + 32, "reply and digest");
    assert_eq!(sha(&got[..LEN]), sha(&data(7, LEN)), "backend to client intact");
    assert_eq!(&got[LEN..], &want_up[..], "client to backend intact");
}

#[test]
fn slow_reader_gets_everything_and_memory_stays_bounded() {
    const LEN: usize = 16 << 20;
    let backend = sink_and_send(LEN);
    let p = free_port();
    let s = Sluice::start(&proxy_conf(p, backend, ""));
    let mut c = connect(p);
    c.set_read_timeout(Some(Duration::from_secs(30))).ok();
    c.shutdown(Shutdown::Write).expect("half-close: nothing to send");
    // Read slowly: the proxy must stop reading from the backend instead of buffering.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut peak_rss = 0;
    let mut saw_pipe = false;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {}", e),
        }
        if got.len() % (1 << 20) < 65536 {
            std::thread::sleep(Duration::from_millis(20));
            peak_rss = peak_rss.max(rss_kib(s.pid()));
            saw_pipe |= pipes_of(s.pid()) > 0;
        }
    }
    assert_eq!(got.len(), LEN + 32);
    assert_eq!(sha(&got[..LEN]), sha(&data(7, LEN)));
    assert!(saw_pipe, "bulk transfer goes through a pipe (splice)");
    assert!(peak_rss < 64 * 1024, "proxy RSS stays small while the reader is slow: {} KiB", peak_rss);
}

fn rss_kib(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn half_close_each_way_on_the_splice_path() {
    // Upstream half-closes after a bulk reply; the client can still send afterwards.
    let backend = sink_and_send(1 << 20);
    let p = free_port();
    let _s = Sluice::start(&proxy_conf(p, backend, ""));
    let mut c = connect(p);
    let mut reply = vec![0u8; 1 << 20];
    c.read_exact(&mut reply).expect("bulk reply");
    assert_eq!(sha(&reply), sha(&data(7, 1 << 20)));
    // Client sends after the backend's half of the data; then half-closes.
    let msg = data(9, 300_000);
    c.write_all(&msg).expect("send after");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut digest = Vec::new();
    c.read_to_end(&mut digest).expect("digest");
    assert_eq!(digest, sha(&msg));
}

#[test]
fn pipe_pool_stays_bounded_over_ten_thousand_connections() {
    let backend = backend(|mut c: TcpStream| {
        // Answer 64 KiB (enough to fill a read and switch to splice), then close.
        let _ = c.write_all(&vec![b'x'; 64 * 1024]);
    });
    let p = free_port();
    let s = Sluice::start(&proxy_conf(p, backend, ""));
    let base = pipes_of(s.pid());
    let start = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..1250 {
                    let mut c = connect(p);
                    let mut got = Vec::new();
                    c.read_to_end(&mut got).expect("read");
                    assert_eq!(got.len(), 64 * 1024);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    assert!(start.elapsed() < Duration::from_secs(120));
    // Every session is over: no pipe is kept once nothing splices (nginx's worker holds
    // only its baseline descriptors then, and so must sluice's).
    let ok = wait_for(Duration::from_secs(5), || pipes_of(s.pid()) == base);
    assert!(ok, "pipe ends held after 10,000 connections: {}, before: {base}", pipes_of(s.pid()));
    let fds = std::fs::read_dir(format!("/proc/{}/fd", s.pid())).map(|d| d.count()).unwrap_or(0);
    assert!(fds < 64, "descriptors after the run: {}", fds);
}

fn fds_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", pid)).map(|d| d.count()).unwrap_or(0)
}

/// Pipes do not take the descriptors connections need: under an open file limit that
/// leaves nothing beyond `worker_connections`, pipes get a sixteenth of the free room (no
/// pipes under this one), the sessions copy, and every one of many concurrent downloads is
/// served, as by nginx (sluice's pipes took the descriptors, and later upstream sockets
/// failed with "socket() failed (24: Too many open files)"). After them, the worker
/// holds its baseline descriptors again.
#[test]
fn pipes_leave_connections_their_descriptors() {
    const CLIENTS: usize = 13;
    const LEN: usize = 4 << 20;
    let backend = backend(|mut c: TcpStream| {
        let _ = c.write_all(&data(3, LEN));
    });
    let p = free_port();
    let mut s = Sluice::start_master(1, &format!("worker_rlimit_nofile 40;\n{}", proxy_conf(p, backend, "")));
    let master = s.pid();
    assert!(wait_for(Duration::from_secs(10), || children_of(master).len() == 1), "no worker");
    let worker = children_of(master)[0];
    // The worker's descriptors once it waits for events: they change while it starts
    // (7 after the fork, a passing 9 while it reads /etc/passwd, then its epoll: 8), and
    // a loaded machine read them too early.
    assert!(wait_in_epoll(worker), "the worker never waits for events");
    let base = fds_of(worker);
    let need = base + 2 * CLIENTS + 2;
    assert!(need <= 40, "the test needs {need} descriptors of 40 for its sessions and a pipe");
    // every client connected and its download under way before any reads
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let c = connect(p);
            c.set_read_timeout(Some(Duration::from_secs(30))).ok();
            std::thread::sleep(Duration::from_millis(20));
            c
        })
        .collect();
    let want = sha(&data(3, LEN));
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(got.len() == LEN && sha(&got) == want, "client {i}: {} bytes\n{}", got.len(), s.error_log());
    }
    drop(clients);
    let ok = wait_for(Duration::from_secs(5), || fds_of(worker) == base);
    assert!(ok, "worker descriptors {} after the sessions, {} before", fds_of(worker), base);
    assert!(!s.error_log().contains("Too many open files"), "{}", s.error_log());
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn an_early_client_fin_is_not_lost() {
    // The client's data and FIN arrive while sluice is still connecting upstream (one
    // event with RDHUP, consumed before relaying starts): the end of file must still be
    // passed on, or the backend would wait forever.
    let backend = sink_and_send(0);
    let p = free_port();
    let _s = Sluice::start(&proxy_conf(p, backend, ""));
    for i in 0..50 {
        let mut c = connect(p);
        let msg = data(i, 100 + i as usize);
        c.write_all(&msg).expect("send");
        c.shutdown(Shutdown::Write).expect("half-close");
        let mut digest = Vec::new();
        c.read_to_end(&mut digest).expect("digest");
        assert_eq!(digest, sha(&msg), "round {}", i);
    }
}

/// A socket is read only once it is known to hold something, as nginx reads only a
/// socket whose `read->ready` is set: after the upstream connects (and a PROXY header
/// went out, or a preread phase read the client), neither the client (silent since) nor
/// the upstream is read on spec, and a short read after the peer's FIN is the end of
/// file. Under strace: a client that waits before sending "ping", a backend that
/// answers "pong" later and closes; not one recv finds EAGAIN (before: two per
/// connection, the client and the upstream read at once when the connect ended, and the
/// client again after a PROXY header was sent or a preread read it).
#[test]
fn sockets_are_read_only_when_they_raised_an_edge() {
    fn pong(mut c: TcpStream) {
        let mut got = Vec::new();
        let mut b = [0u8; 256];
        while !got.ends_with(b"ping") {
            match c.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let _ = c.write_all(b"pong");
    }
    let backend = backend(pong);
    let hello = sni_hello(b"a.test");
    for (extra, first) in [("", &[][..]), ("proxy_protocol on;", &[][..]), ("ssl_preread on;", &hello[..])] {
        let p = free_port();
        let s = Sluice::start(&format!(
            "events {{}} stream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{backend}; {extra} }} }}"
        ));
        let dir = TempDir::new("strace");
        let out = dir.join("trace");
        let mut strace = std::process::Command::new("strace")
            .args(["-qq", "-e", "trace=recvfrom,read", "-o"])
            .arg(&out)
            .args(["-p", &s.pid().to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("strace is needed (.ci/run installs it)");
        let traced = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
                .is_ok_and(|st| st.lines().any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0"))
        });
        assert!(traced, "strace did not attach");
        for _ in 0..3 {
            let mut c = connect(p);
            // (A preread phase reads the hello in one short read, which leaves the
            // client drained, as nginx's recv() clears read->ready.)
            c.write_all(first).expect("write");
            // Time for the proxy to connect upstream before the client says more.
            std::thread::sleep(Duration::from_millis(150));
            c.write_all(b"ping").expect("write");
            let mut got = Vec::new();
            c.read_to_end(&mut got).expect("read");
            assert_eq!(got, b"pong", "{extra}");
        }
        // SAFETY: a signal to the strace we started (it detaches and flushes on SIGINT).
        unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
        let _ = strace.wait();
        let trace = std::fs::read_to_string(&out).expect("trace");
        let recvs: Vec<&str> = trace.lines().filter(|l| l.starts_with("recvfrom(")).collect();
        assert!(recvs.iter().all(|l| !l.contains("EAGAIN")), "{extra}\n{trace}");
        // ping and pong each once (and the hello), and at most one more (the end of
        // file, when the backend's FIN came apart from its pong).
        let reads = if first.is_empty() { 2 } else { 3 };
        assert!((3 * reads..=3 * (reads + 1)).contains(&recvs.len()), "{extra}\n{trace}");
    }
}

/// `send(fd, b, MSG_OOB)`: `b` as TCP urgent data.
fn send_urgent(s: &TcpStream, b: &[u8]) {
    use std::os::fd::AsRawFd;
    // SAFETY: a send from a buffer we borrow, of its length.
    let n = unsafe { libc::send(s.as_raw_fd(), b.as_ptr().cast(), b.len(), libc::MSG_OOB) };
    assert_eq!(n, b.len() as isize, "send(MSG_OOB)");
}

/// A read stops short at a TCP urgent mark with bytes still queued after it, so a short
/// read after the peer's FIN is not its end of file when urgent data came (EPOLLPRI):
/// the bytes after the mark are relayed, both ways (the urgent byte itself is out of
/// band, not read, as nginx's recv() leaves it). A short read taken as the end lost "ef".
#[test]
fn bytes_after_an_urgent_mark_and_a_fin_are_relayed() {
    // Upstream to client: the backend sends "abc", urgent "d", "ef" and its FIN at once.
    fn urgent(mut c: TcpStream) {
        std::thread::sleep(Duration::from_millis(200));
        let _ = c.write_all(b"abc");
        send_urgent(&c, b"d");
        let _ = c.write_all(b"ef");
        let _ = c.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
    let backend = backend(urgent);
    let p = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{backend}; }} }}"
    ));
    let mut c = connect(p);
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("read");
    assert_eq!(got, b"abcef");

    // Client to upstream: the same from the client, the backend collecting.
    let (tx, rx) = std::sync::mpsc::channel();
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let _ = tx.send(got);
        }
    });
    let p = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{backend}; \
         proxy_half_close on; }} }}"
    ));
    let c = connect(p);
    // Connected upstream before anything is sent.
    std::thread::sleep(Duration::from_millis(200));
    (&c).write_all(b"abc").expect("write");
    send_urgent(&c, b"d");
    (&c).write_all(b"ef").expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("the backend's bytes");
    assert_eq!(got, b"abcef");
}

/// A client that stops reading holds the upstream back as nginx's does: bytes read from
/// the upstream and not yet sent never pass `proxy_buffer_size` (nginx reads only into
/// what is left of its one buffer; sluice's pipe took up to 256 KiB). Side by side with
/// nginx 1.22.1 (h1 hunt, c6): nginx held 1.8k–16k, sluice 21k–204k.
#[test]
fn a_reader_that_stops_holds_back_the_upstream_after_proxy_buffer_size() {
    held_when_the_client_stops_reading(4096, 0, "", 16384);
}

#[test]
fn a_reader_with_a_tiny_window_that_stops_holds_back_no_more() {
    // Segments of a few hundred bytes cost the proxy's send queue more memory than bytes:
    // a fill sized by its free memory alone would hold back tens of KiB more than nginx.
    held_when_the_client_stops_reading(1, 0, "", 16384);
    held_when_the_client_stops_reading(1, 1024, "", 16384);
}

#[test]
fn a_reader_that_stops_on_a_small_send_buffer_holds_back_no_more() {
    // A fixed send buffer of 64k and a 4k proxy buffer: the few segments queued when a
    // fill is sized say little of what the next ones cost (split to a tiny window).
    held_when_the_client_stops_reading(1, 0, " sndbuf=32768", 4096);
}

/// A backend floods a client that connects with receive buffer `rcvbuf` (and
/// TCP_WINDOW_CLAMP `clamp`, if not 0) and never reads, to a listener with `listen_opts`
/// and `proxy_buffer_size` `buffer`: when proxy_timeout ends the session, the proxy has
/// read at most `buffer` more than it has sent, as nginx.
fn held_when_the_client_stops_reading(rcvbuf: usize, clamp: u32, listen_opts: &str, buffer: u64) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = c.write_all(&vec![b'f'; 8 << 20]);
        }
    });
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format f '$bytes_sent $upstream_bytes_received'; \
         server {{ listen 127.0.0.1:{p}{listen_opts}; proxy_pass 127.0.0.1:{backend}; proxy_timeout 500ms; \
         proxy_buffer_size {buffer}; access_log %%PREFIX%%a.log f; }} }}"
    ));
    let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    c.set_recv_buffer_size(rcvbuf).expect("rcvbuf");
    if clamp > 0 {
        use std::os::unix::io::AsRawFd;
        let v = clamp as libc::c_int;
        // SAFETY: setsockopt reads one int from `v`.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_WINDOW_CLAMP,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "TCP_WINDOW_CLAMP");
    }
    c.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], p)).into()).expect("connect");
    let line = s.wait_lines("a.log", 1).pop().unwrap_or_default();
    let n: Vec<u64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
    assert_eq!(n.len(), 2, "{line}\n{}", s.error_log());
    // The client's window and the proxy's socket took the first bytes: the flood went
    // through the splice path (a read filled the buffer) for several fills before the stall.
    assert!(n[1] > 4 * buffer, "{line}");
    assert!(n[1] - n[0] <= buffer, "held {} bytes (rcvbuf {rcvbuf}, clamp {clamp}{listen_opts}): {line}", n[1] - n[0]);
    drop(c);
}
