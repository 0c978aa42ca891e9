//! UDP proxying (`listen ... udp`) as nginx runs it, shaped like nginx-tests'
//! stream_udp_proxy.t, stream_udp_proxy_requests.t, stream_udp_upstream.t and
//! stream_udp_stream.t: a session per client address, datagram boundaries kept,
//! `proxy_responses`, `proxy_requests`, `proxy_timeout` (ending well or with 502),
//! balancing and `$upstream_addr`, `return` over UDP, an ICMP port unreachable failing
//! the peer, 60,000- and 65,507-byte datagrams, a flooding client, 100,000 clients
//! leaving no sessions behind, `reuseport` with several workers, and sessions that
//! outlive a reload.
//!
//! The backends are Rust UDP sockets served by one thread each (stopped on drop); the
//! clients are connected UDP sockets, so that only datagrams from sluice's listening
//! address reach them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------
// Backends.

/// The datagrams a backend sends back for one it received: each after a delay.
type Replies = Vec<(Duration, Vec<u8>)>;

/// A UDP backend on a free loopback port: one thread receives datagrams, asks the
/// closure for replies and sends them when they are due (to the datagram's sender).
struct UdpBackend {
    port: u16,
    received: Arc<AtomicUsize>,
    /// Datagrams sent back (on loopback a sent datagram is already queued at its
    /// destination when `send_to` returns).
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    fn start<F>(f: F) -> UdpBackend
    where
        F: FnMut(&[u8], SocketAddr) -> Replies + Send + 'static,
    {
        UdpBackend::start_gated(0, f)
    }

    /// As `start`, but nothing is sent before `gate` datagrams have come in.
    fn start_gated<F>(gate: usize, mut f: F) -> UdpBackend
    where
        F: FnMut(&[u8], SocketAddr) -> Replies + Send + 'static,
    {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("backend socket");
        // Bursts of thousands of datagrams must not be lost here (rmem_max caps it).
        let _ = s.set_recv_buffer_size(4 << 20);
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind backend");
        let sock: UdpSocket = s.into();
        let port = sock.local_addr().expect("backend addr").port();
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (rc, sc, st) = (received.clone(), sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut due: BTreeMap<(Instant, u64), (SocketAddr, Vec<u8>)> = BTreeMap::new();
            let mut seq = 0u64;
            while !st.load(Ordering::Relaxed) {
                let now = Instant::now();
                while let Some(e) = due.first_entry() {
                    if e.key().0 > now || rc.load(Ordering::Relaxed) < gate {
                        break;
                    }
                    let (peer, d) = e.remove();
                    let _ = sock.send_to(&d, peer);
                    sc.fetch_add(1, Ordering::Relaxed);
                }
                let wait =
                    due.keys().next().map_or(ms(50), |(t, _)| t.saturating_duration_since(now)).clamp(ms(1), ms(50));
                let _ = sock.set_read_timeout(Some(wait));
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    rc.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    for (d, data) in f(&buf[..n], peer) {
                        due.insert((now + d, seq), (peer, data));
                        seq += 1;
                    }
                }
            }
        });
        UdpBackend { port, received, sent, stop, thread: Some(thread) }
    }

    /// Echo each datagram back at once, prefixed with "PORT " (the port of the socket
    /// that sent it: sluice's upstream socket).
    fn tagging() -> UdpBackend {
        UdpBackend::start(|d, peer| vec![(Duration::ZERO, tagged(peer.port(), d))])
    }

    /// Never answer.
    fn silent() -> UdpBackend {
        UdpBackend::start(|_, _| Vec::new())
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tagged(port: u16, d: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", port).into_bytes();
    out.extend_from_slice(d);
    out
}

/// Split a tagged reply into the tag (the session's upstream port) and the payload.
fn untag(r: &[u8]) -> Option<(u16, Vec<u8>)> {
    let sp = r.iter().position(|&b| b == b' ')?;
    let port = std::str::from_utf8(&r[..sp]).ok()?.parse().ok()?;
    Some((port, r[sp + 1..].to_vec()))
}

// ---------------------------------------------------------------------------------
// Clients, logs, processes.

/// A client socket connected to sluice's `port`.
fn dgram(port: u16) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    s.connect(("127.0.0.1", port)).expect("connect client");
    s
}

/// The next datagram, or None after `t`.
fn recv(s: &UdpSocket, t: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(t)).ok()?;
    let mut b = vec![0u8; 70000];
    s.recv(&mut b).ok().map(|n| b[..n].to_vec())
}

/// Send one datagram, return the reply (or None after `t`).
fn io(s: &UdpSocket, d: &[u8], t: Duration) -> Option<Vec<u8>> {
    s.send(d).expect("send");
    recv(s, t)
}

fn cport(s: &UdpSocket) -> u16 {
    s.local_addr().expect("client addr").port()
}

fn conf(stream: &str) -> String {
    format!("events {{ worker_connections 4096; }}\nstream {{\n{stream}\n}}\n")
}

fn count(text: &str, pat: &str) -> usize {
    text.lines().filter(|l| l.contains(pat)).count()
}

fn lines_with<'a>(text: &'a str, pat: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(pat)).collect()
}

/// Wait until the error log has `n` lines containing `pat`; the log.
fn wait_log(s: &Sluice, pat: &str, n: usize, t: Duration) -> String {
    wait_for(t, || count(&s.error_log(), pat) >= n);
    s.error_log()
}

/// The end of the error log, for failure messages.
fn tail(s: &Sluice) -> String {
    let log = s.error_log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The access log lines whose first field is `first`.
fn access(s: &Sluice, file: &str, first: &str) -> Vec<String> {
    s.read(file).lines().filter(|l| l.split(' ').next() == Some(first)).map(str::to_string).collect()
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next().map(str::to_string));
    matches!(state.as_deref(), Some(s) if s != "Z" && s != "X")
}

fn live_children(pid: i32) -> Vec<i32> {
    let mut c: Vec<i32> = children_of(pid).into_iter().filter(|&p| alive(p)).collect();
    c.sort_unstable();
    c
}

/// A master and its workers (`Sluice::start_master`), killed master first: the harness
/// kills the workers first, and a master that sees a worker die starts another one,
/// which would outlive the test.
struct Master(Sluice);

impl Master {
    fn start(workers: usize, conf: &str) -> Master {
        Master(Sluice::start_master(workers, conf))
    }
}

impl std::ops::Deref for Master {
    type Target = Sluice;
    fn deref(&self) -> &Sluice {
        &self.0
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let workers = children_of(self.0.pid());
        self.0.signal(libc::SIGKILL);
        for w in workers {
            // SAFETY: signalling a worker of our own child process.
            unsafe {
                libc::kill(w, libc::SIGKILL);
            }
        }
    }
}

/// The pid in an error log line ("... [info] PID#PID: *N ...").
fn line_pid(l: &str) -> Option<i32> {
    l.split("] ").nth(1)?.split('#').next()?.parse().ok()
}

/// Datagrams the kernel dropped, system-wide: `RcvbufErrors` of /proc/net/snmp (a full
/// socket receive buffer) plus the per-CPU backlog drops of /proc/net/softnet_stat (a
/// loaded machine's loopback). Reported beside counts, to tell the kernel's drops from
/// sluice's.
fn kernel_udp_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let rows: Vec<Vec<&str>> =
        snmp.lines().filter(|l| l.starts_with("Udp:")).map(|l| l.split_whitespace().collect()).collect();
    let rcvbuf = match (rows.first(), rows.get(1)) {
        (Some(h), Some(v)) => {
            h.iter().position(|&x| x == "RcvbufErrors").and_then(|i| v.get(i)?.parse().ok()).unwrap_or(0)
        }
        _ => 0,
    };
    let softnet: u64 = std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum();
    rcvbuf + softnet
}

// ---------------------------------------------------------------------------------
// DNS-shaped datagrams.

/// A DNS query for `c###.example.com` A, with `id`.
fn dns_query(id: u16, i: usize) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in [format!("c{:03}", i % 1000).as_str(), "example", "com"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The answer to `q`: the question back, one A record 10.0.x.y from the name's
/// number, and `ttl` (the backend puts the session's upstream port there).
fn dns_answer(q: &[u8], ttl: u32) -> Option<Vec<u8>> {
    let n: u16 = std::str::from_utf8(q.get(14..17)?).ok()?.parse().ok()?;
    let mut a = q.get(..2)?.to_vec();
    a.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    a.extend_from_slice(q.get(12..)?);
    a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    a.extend_from_slice(&ttl.to_be_bytes());
    a.extend_from_slice(&[0, 4, 10, 0, (n >> 8) as u8, n as u8]);
    Some(a)
}

/// 200 clients send a DNS query each at the same moment (`proxy_responses 1`; the
/// backend answers after 200 ms, so that all 200 sessions run at once): each gets its
/// own answer, through its own upstream socket; one access-log line per session
/// (`$protocol` UDP, `$status` 200, the byte counts) and nginx's "udp done" line.
#[test]
fn udp_dns_200_concurrent_clients_each_get_their_own_answer() {
    let be = UdpBackend::start_gated(200, |q, peer| {
        dns_answer(q, u32::from(peer.port())).map(|a| vec![(Duration::ZERO, a)]).unwrap_or_default()
    });
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format u '$remote_port $protocol $status $bytes_received $bytes_sent $upstream_addr \
         $upstream_bytes_sent $upstream_bytes_received';\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_responses 1; proxy_timeout 5s; \
         access_log %%PREFIX%%u.log u; }}",
        b = be.port
    )));
    const N: usize = 200;
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let c = dgram(p);
                let q = dns_query(0x4000 + i as u16, i);
                barrier.wait();
                c.send(&q).expect("send query");
                (cport(&c), q, recv(&c, Duration::from_secs(10)))
            })
        })
        .collect();
    let results: Vec<(u16, Vec<u8>, Option<Vec<u8>>)> =
        threads.into_iter().map(|t| t.join().expect("client thread")).collect();
    let (qlen, alen) = (results[0].1.len(), dns_answer(&results[0].1, 0).map_or(0, |a| a.len()));

    let missing: Vec<usize> = (0..N).filter(|&i| results[i].2.is_none()).collect();
    assert!(missing.is_empty(), "{} of {N} clients got no answer: {:?}\n{}", missing.len(), missing, tail(&s));
    let mut ttls = HashSet::new();
    for (i, (_, q, a)) in results.iter().enumerate() {
        let a = a.as_deref().unwrap_or_default();
        let ttl = a.get(qlen + 6..qlen + 10).map_or(0, |t| u32::from_be_bytes([t[0], t[1], t[2], t[3]]));
        assert_eq!(Some(a.to_vec()), dns_answer(q, ttl), "client {i} got someone else's answer");
        ttls.insert(ttl);
    }
    assert_eq!(ttls.len(), N, "the {N} sessions did not each have their own upstream socket");
    assert_eq!(be.received(), N, "the backend did not get one query per client");

    let lines = s.wait_lines("u.log", N);
    assert_eq!(lines.len(), N, "one access-log line per session:\n{}", lines.join("\n"));
    for (port, _, _) in &results {
        let mine = access(&s, "u.log", &port.to_string());
        let want = format!("{port} UDP 200 {qlen} {alen} 127.0.0.1:{b} {qlen} {alen}", b = be.port);
        assert_eq!(mine, vec![want], "access-log line of client port {port}");
    }
    let log = wait_log(&s, "udp done", N, Duration::from_secs(5));
    let done = format!(
        "udp done, packets from/to client:1/1, bytes from/to client:{qlen}/{alen}, bytes from/to upstream:{alen}/{qlen}"
    );
    let done_lines = lines_with(&log, "udp done");
    assert_eq!(done_lines.len(), N, "one \"udp done\" line per session\n{}", tail(&s));
    for l in &done_lines {
        // nginx logs this line without the connection's context.
        assert!(l.contains("[info]") && l.ends_with(&done), "not nginx's \"udp done\" line: {l}");
    }
    for (port, _, _) in &results {
        let c = format!("udp client 127.0.0.1:{port} connected to 127.0.0.1:{p}");
        assert_eq!(count(&log, &c), 1, "{c}");
    }
    assert_eq!(count(&log, &format!("connected to 127.0.0.1:{}", be.port)), N, "\"udp proxy ... connected\" lines");
    assert_eq!(count(&log, "[error]") + count(&log, "[alert]") + count(&log, "[crit]"), 0, "{}", tail(&s));
}

/// `proxy_responses 1` (DNS, one query after another from new client ports): as nginx,
/// every session opens, connects and closes its own upstream socket, so a backend's
/// late duplicate answer, which comes while the next client's session runs, never
/// reaches that client (sluice once passed finished sessions' sockets on, and such an
/// answer went to the wrong client), and the backend sees each session from a port of
/// its own. A session that timed out closes its socket too.
#[test]
fn udp_every_session_has_its_own_upstream_socket() {
    // Every answer twice: at once, and again 100 ms later, while the next client asks.
    let be = UdpBackend::start(|q, peer| {
        dns_answer(q, u32::from(peer.port()))
            .map(|a| vec![(Duration::ZERO, a.clone()), (ms(100), a)])
            .unwrap_or_default()
    });
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let silent = UdpBackend::start(move |_, peer| {
        seen2.lock().expect("ports").push(peer.port());
        Vec::new()
    });
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_responses 1; proxy_timeout 5s; }}\n\
         server {{ listen 127.0.0.1:{q} udp; proxy_pass 127.0.0.1:{t}; proxy_responses 1; proxy_timeout 100ms; }}",
        b = be.port,
        t = silent.port,
    )));
    let mut upstream_ports = HashSet::new();
    let mut clients = Vec::new();
    for i in 0..20 {
        let c = dgram(p);
        let q = dns_query(0x100 + i as u16, i);
        let a = io(&c, &q, Duration::from_secs(3)).unwrap_or_else(|| panic!("query {i}: no answer\n{}", tail(&s)));
        let port = a.get(q.len() + 6..q.len() + 10).map_or(0, |t| u32::from_be_bytes([t[0], t[1], t[2], t[3]]));
        assert_eq!(Some(a), dns_answer(&q, port), "query {i}: not the answer to its own question");
        upstream_ports.insert(port);
        clients.push(c);
        // The next client asks at once, before this session's duplicate answer comes.
    }
    // A closed session's port may come back from the kernel's random pick for a later
    // one (about 0.7 % per run for one pair): sockets passed on would show a handful.
    assert!(upstream_ports.len() >= 18, "each session has its own upstream socket: {upstream_ports:?}");
    wait_for(Duration::from_secs(3), || be.sent() == 40);
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(recv(c, ms(20)), None, "client {i} got a second datagram (a duplicate answer)");
    }

    for i in 0..2 {
        let c = dgram(q);
        c.send(&dns_query(7, i)).expect("send");
        wait_log(&s, "upstream timed out", i + 1, Duration::from_secs(3));
    }
    let ports = seen.lock().expect("ports").clone();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_ne!(ports[0], ports[1], "a timed-out session's socket was reused");
    let log = wait_log(&s, "udp done", 20, Duration::from_secs(3));
    assert_eq!(count(&log, "udp done"), 20, "{}", tail(&s));
}

/// Datagrams pass through the session's `proxy_buffer_size` buffer, as nginx's: the
/// session's first datagram reaches the backend whole (nginx's preread buffer), later
/// ones and every answer are cut to the buffer, and the byte counts are of what was
/// relayed (side by side with nginx 1.22.1).
#[test]
fn udp_datagrams_are_cut_to_proxy_buffer_size() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    // Echo each datagram, and answer with 3000 bytes besides.
    let be = UdpBackend::start(move |d, _| {
        seen.lock().expect("sizes").push(d.len());
        vec![(Duration::ZERO, d.to_vec()), (ms(5), vec![b'b'; 3000])]
    });
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format u '$bytes_received $bytes_sent $upstream_bytes_sent $upstream_bytes_received';\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_buffer_size 100; proxy_timeout 2s; \
         access_log %%PREFIX%%u.log u; }}",
        b = be.port
    )));
    let c = dgram(p);
    let mut got = Vec::new();
    for n in [1472usize, 1472, 50, 0, 65507] {
        c.send(&vec![b'a'; n]).expect("send");
        for _ in 0..2 {
            got.push(recv(&c, Duration::from_secs(3)).map(|d| d.len()));
        }
    }
    assert_eq!(*sizes.lock().expect("sizes"), [1472, 100, 50, 0, 100], "what the backend got");
    let want: Vec<Option<usize>> = [100, 100, 100, 100, 50, 100, 0, 100, 100, 100].into_iter().map(Some).collect();
    assert_eq!(got, want, "what the client got (echo, then the 3000-byte answer, each cut to 100)");
    let log = wait_log(&s, "udp timed out", 1, Duration::from_secs(10));
    let line = lines_with(&log, "udp timed out").join("\n");
    assert!(
        line.ends_with("packets from/to client:5/10, bytes from/to client:1722/850, bytes from/to upstream:850/1722"),
        "{line}"
    );
    wait_for(Duration::from_secs(3), || !s.read("u.log").is_empty());
    assert_eq!(s.read("u.log").trim(), "1722 850 1722 850");
}

/// `proxy_buffer_size 0`: nginx has no room to read an answer into and never reads one,
/// so the session ends at proxy_timeout as an upstream that did not answer (side by side
/// with nginx 1.22.1: 502, nothing to the client; sluice sent it an empty datagram, 200).
#[test]
fn udp_proxy_buffer_size_0_reads_no_answer() {
    let be = UdpBackend::start(|_, _| vec![(Duration::ZERO, b"answer".to_vec())]);
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format u '$status $bytes_sent $bytes_received $upstream_bytes_received';\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_buffer_size 0; proxy_responses 1; \
         proxy_timeout 500ms; access_log %%PREFIX%%u.log u; }}",
        b = be.port
    )));
    let c = dgram(p);
    c.send(b"question").expect("send");
    assert_eq!(recv(&c, Duration::from_secs(2)), None, "no answer relayed");
    wait_for(Duration::from_secs(5), || !s.read("u.log").is_empty());
    assert_eq!(s.read("u.log").trim(), "502 0 8 0");
    assert_eq!(be.received(), 1);
    assert!(s.error_log().contains("upstream timed out (110: Connection timed out) while proxying connection"));
}

/// Answers that are already queued when sluice reads the first one are all relayed,
/// even past `proxy_responses`, as nginx reads its upstream socket empty before it
/// counts (seen side by side with nginx 1.22.1: `proxy_responses 2` and a backend that
/// sends N back to back, N = 2..6: the client gets all N). Sluice is stopped while the
/// backend answers, so the burst is queued whole when it reads.
#[test]
fn udp_answers_queued_past_proxy_responses_are_relayed() {
    let be = UdpBackend::start(|_, _| (1..=3).map(|k| (ms(500), format!("a{k}").into_bytes())).collect());
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_responses 1; proxy_timeout 5s; }}",
        b = be.port
    )));
    let c = dgram(p);
    c.send(b"q").expect("send");
    assert!(wait_for(Duration::from_secs(5), || be.received() == 1), "{}", tail(&s));
    s.signal(libc::SIGSTOP);
    let queued = wait_for(Duration::from_secs(5), || be.sent() == 3);
    s.signal(libc::SIGCONT);
    assert!(queued, "the backend did not answer");
    let got: Vec<Vec<u8>> = (0..4).map_while(|_| recv(&c, ms(300))).collect();
    assert_eq!(got, [b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()], "{}", tail(&s));
    let log = wait_log(&s, "udp done", 1, Duration::from_secs(3));
    assert!(
        log.contains("udp done, packets from/to client:1/3, bytes from/to client:1/6, bytes from/to upstream:6/1"),
        "{log}"
    );
}

/// `proxy_requests 2`: two datagrams make a session, the third from the same client
/// port starts a new one (nginx unbinds the address); the last, uneven session ends at
/// `proxy_timeout` with 200. With `proxy_responses` unset, a session unbound after two
/// requests still relays every answer to them (nginx-tests' "slow backend").
#[test]
fn udp_proxy_requests_rebinds_after_n_datagrams() {
    let be = UdpBackend::tagging();
    // Three answers per datagram: "PORT k".
    let three = UdpBackend::start(|_, peer| {
        (1..=3).map(|k| (Duration::ZERO, tagged(peer.port(), k.to_string().as_bytes()))).collect()
    });
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&conf(&format!(
        "log_format r '$remote_port $connection $status $bytes_received $bytes_sent';\n\
         proxy_timeout 1s;\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_requests 2; proxy_responses 1; \
         access_log %%PREFIX%%r.log r; }}\n\
         server {{ listen 127.0.0.1:{q} udp; proxy_pass 127.0.0.1:{t}; proxy_requests 2; \
         access_log %%PREFIX%%slow.log r; }}",
        b = be.port,
        t = three.port
    )));

    let c = dgram(p);
    let mut tags = Vec::new();
    for d in [b"a", b"b", b"c", b"d", b"e"] {
        let r = io(&c, d, Duration::from_secs(3));
        let (tag, body) = r.as_deref().and_then(untag).unwrap_or_else(|| panic!("no answer to {d:?}\n{}", tail(&s)));
        assert_eq!(body, d.to_vec());
        tags.push(tag);
    }
    // A client's next session comes from another upstream port, as under nginx, even
    // though each session ended with every answer in (a finished session's socket never
    // goes back to the client that used it last).
    assert_eq!(tags[0], tags[1], "requests 2: second datagram, binding saved");
    assert_ne!(tags[1], tags[2], "requests 2: third datagram, binding lost");
    assert_eq!(tags[2], tags[3], "requests 2: fourth datagram, binding saved");
    assert_ne!(tags[3], tags[4], "requests 2: fifth datagram, binding lost");
    assert_ne!(tags[0], tags[4], "three sessions, three upstream ports");

    // Five datagrams at once, three answers each: sessions of 2, 2 and 1 requests.
    let c2 = dgram(q);
    for _ in 0..5 {
        c2.send(b"x").expect("send");
    }
    let mut by_tag: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
    for i in 0..15 {
        let r = recv(&c2, Duration::from_secs(3)).unwrap_or_else(|| panic!("answer {i} of 15 missing\n{}", tail(&s)));
        let (tag, body) = untag(&r).expect("tagged answer");
        by_tag.entry(tag).or_default().push(body);
    }
    let mut sizes: Vec<usize> = by_tag.values().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![3, 6, 6], "answers per session (slow backend): {by_tag:?}");

    let port = cport(&c).to_string();
    wait_for(Duration::from_secs(5), || access(&s, "r.log", &port).len() >= 3);
    let lines = access(&s, "r.log", &port);
    assert_eq!(lines.len(), 3, "three sessions for five datagrams:\n{}", s.read("r.log"));
    let conns: HashSet<&str> = lines.iter().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(conns.len(), 3, "three $connection values:\n{}", lines.join("\n"));
    let tail_of = |l: &String| l.split(' ').skip(2).collect::<Vec<_>>().join(" ");
    let a = tagged(tags[0], b"a").len();
    let got: Vec<String> = lines.iter().map(tail_of).collect();
    assert_eq!(got, vec![format!("200 2 {}", 2 * a), format!("200 2 {}", 2 * a), format!("200 1 {a}")]);
    let log = wait_log(&s, "udp timed out", 1, Duration::from_secs(3));
    assert_eq!(count(&log, "udp done, packets from/to client:2/2, bytes from/to client:2/"), 2, "{}", tail(&s));
    assert_eq!(count(&log, "udp timed out, packets from/to client:1/1, bytes from/to client:1/"), 1, "{}", tail(&s));

    let port2 = cport(&c2).to_string();
    wait_for(Duration::from_secs(5), || access(&s, "slow.log", &port2).len() >= 3);
    let slow: Vec<String> =
        access(&s, "slow.log", &port2).iter().map(|l| l.split(' ').nth(2).unwrap_or("").to_string()).collect();
    assert_eq!(slow, vec!["200", "200", "200"], "uneven session status - slow backend:\n{}", s.read("slow.log"));
}

/// `proxy_responses` (nginx-tests' stream_udp_proxy.t): 0 ends the session right after
/// the request (the client gets nothing), 2 ends it after two answers, unset relays
/// every answer; each answer is its own datagram; zero-length datagrams both ways.
#[test]
fn udp_proxy_responses_and_datagram_boundaries() {
    // "N" is answered with N datagrams "1".."N"; an empty datagram with "zero", then
    // an empty one 200 ms later.
    let be = UdpBackend::start(|d, _| {
        if d.is_empty() {
            return vec![(Duration::ZERO, b"zero".to_vec()), (ms(200), Vec::new())];
        }
        let n: usize = std::str::from_utf8(d).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
        (1..=n).map(|k| (Duration::ZERO, k.to_string().into_bytes())).collect()
    });
    let (p0, p2, pu) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&conf(&format!(
        "log_format r '$remote_port $status $bytes_received $bytes_sent';\n\
         proxy_timeout 1s;\n\
         access_log %%PREFIX%%r.log r;\n\
         server {{ listen 127.0.0.1:{p0} udp; proxy_pass 127.0.0.1:{b}; proxy_responses 0; }}\n\
         server {{ listen 127.0.0.1:{p2} udp; proxy_pass 127.0.0.1:{b}; proxy_responses 2; }}\n\
         server {{ listen 127.0.0.1:{pu} udp; proxy_pass 127.0.0.1:{b}; }}",
        b = be.port
    )));

    let c = dgram(p0);
    assert_eq!(io(&c, b"1", ms(500)), None, "proxy_responses 0: no answer");
    assert_eq!(be.received(), 1, "proxy_responses 0: the request went upstream");
    let log = wait_log(&s, "packets from/to client:1/0", 1, Duration::from_secs(3));
    let l = lines_with(&log, "packets from/to client:1/0");
    assert_eq!(
        l.first().map(|l| l
            .contains("udp done, packets from/to client:1/0, bytes from/to client:1/0, bytes from/to upstream:0/1")),
        Some(true),
        "proxy_responses 0 ends the session at once:\n{}",
        tail(&s)
    );
    assert_eq!(access(&s, "r.log", &cport(&c).to_string()), vec![format!("{} 200 1 0", cport(&c))]);

    let c = dgram(p2);
    c.send(b"2").expect("send");
    assert_eq!(recv(&c, Duration::from_secs(3)).as_deref(), Some(&b"1"[..]), "proxy_responses 2: first");
    assert_eq!(recv(&c, Duration::from_secs(3)).as_deref(), Some(&b"2"[..]), "proxy_responses 2: second");
    let port = cport(&c).to_string();
    wait_for(Duration::from_secs(3), || !access(&s, "r.log", &port).is_empty());
    assert_eq!(access(&s, "r.log", &port), vec![format!("{port} 200 1 2")], "done after 2 answers, before the timeout");

    let c = dgram(pu);
    c.send(b"3").expect("send");
    for k in ["1", "2", "3"] {
        assert_eq!(recv(&c, Duration::from_secs(3)), Some(k.as_bytes().to_vec()), "proxy_responses unset: {k}");
    }

    // Zero-length payloads, twice from the same client: the first session ends after
    // its two answers, the second starts anew.
    let c = dgram(p2);
    for round in ["", " again"] {
        c.send(b"").expect("send empty");
        assert_eq!(recv(&c, Duration::from_secs(3)), Some(b"zero".to_vec()), "upstream read zero bytes{round}");
        assert_eq!(recv(&c, Duration::from_secs(3)), Some(Vec::new()), "upstream sent zero bytes{round}");
    }
    let port = cport(&c).to_string();
    wait_for(Duration::from_secs(3), || access(&s, "r.log", &port).len() >= 2);
    assert_eq!(access(&s, "r.log", &port), vec![format!("{port} 200 0 4"), format!("{port} 200 0 4")]);
}

/// `proxy_timeout`, both endings: with the expected answers in (or `proxy_responses`
/// unset) "udp timed out" at info and 200; without them "upstream timed out" at error
/// and 502. The timeout counts from the last datagram, not from the start.
#[test]
fn udp_proxy_timeout_ends_with_200_or_502() {
    let echo = UdpBackend::tagging();
    let silent = UdpBackend::silent();
    let (p1, p2, p3, p4) = (free_port(), free_port(), free_port(), free_port());
    let s = Sluice::start(&conf(&format!(
        "log_format t '$remote_port $server_port $status $session_time';\n\
         access_log %%PREFIX%%t.log t;\n\
         proxy_timeout 500ms;\n\
         server {{ listen 127.0.0.1:{p1} udp; proxy_pass 127.0.0.1:{sb}; proxy_responses 1; }}\n\
         server {{ listen 127.0.0.1:{p2} udp; proxy_pass 127.0.0.1:{eb}; }}\n\
         server {{ listen 127.0.0.1:{p3} udp; proxy_pass 127.0.0.1:{eb}; proxy_responses 2; }}\n\
         server {{ listen 127.0.0.1:{p4} udp; proxy_pass 127.0.0.1:{eb}; proxy_timeout 1s; }}",
        sb = silent.port,
        eb = echo.port
    )));

    let c1 = dgram(p1);
    assert_eq!(io(&c1, b"ping", ms(200)), None, "the silent backend answered?");
    let c2 = dgram(p2);
    let r2 = io(&c2, b"ping", Duration::from_secs(3)).unwrap_or_else(|| panic!("no answer\n{}", tail(&s)));
    let c3 = dgram(p3);
    assert!(io(&c3, b"ping", Duration::from_secs(3)).is_some(), "no answer\n{}", tail(&s));
    // Every 400 ms for 2 s: one session all along (proxy_timeout 1s from the last one).
    let c4 = dgram(p4);
    let mut tags4 = HashSet::new();
    for _ in 0..5 {
        let r = io(&c4, b"k", Duration::from_secs(3)).unwrap_or_else(|| panic!("no answer\n{}", tail(&s)));
        tags4.insert(untag(&r).map(|x| x.0));
        std::thread::sleep(ms(400));
    }
    assert_eq!(tags4.len(), 1, "a session active every 400 ms timed out (proxy_timeout 1s): {tags4:?}");

    let status = |c: &UdpSocket, port: u16| -> (String, f64) {
        let k = cport(c).to_string();
        wait_for(Duration::from_secs(5), || !access(&s, "t.log", &k).is_empty());
        let l = access(&s, "t.log", &k);
        let f: Vec<&str> = l.first().map(|l| l.split(' ').collect()).unwrap_or_default();
        assert_eq!(f.get(1).copied(), Some(port.to_string().as_str()), "log line of {k}: {l:?}\n{}", tail(&s));
        (f.get(2).unwrap_or(&"").to_string(), f.get(3).and_then(|t| t.parse().ok()).unwrap_or(-1.0))
    };
    let (st1, t1) = status(&c1, p1);
    let (st2, t2) = status(&c2, p2);
    let (st3, t3) = status(&c3, p3);
    let (st4, t4) = status(&c4, p4);
    assert_eq!(st1, "502", "no answer, proxy_responses 1");
    assert_eq!(st2, "200", "answered, proxy_responses unset");
    assert_eq!(st3, "502", "one answer of two, proxy_responses 2");
    assert_eq!(st4, "200", "kept alive");
    for (t, what) in [(t1, "silent"), (t2, "unset"), (t3, "2 of 1")] {
        assert!((0.45..3.0).contains(&t), "{what}: $session_time {t}, proxy_timeout 500ms");
    }
    assert!(t4 >= 2.5, "kept-alive session's $session_time {t4}: it must outlive 5 datagrams 400 ms apart + 1s");

    let log = s.error_log();
    let timed_out = lines_with(&log, "upstream timed out");
    let want = |p: u16| {
        format!(
            "upstream timed out (110: Connection timed out) while proxying connection, udp client: 127.0.0.1, \
             server: 127.0.0.1:{p}, upstream: \"127.0.0.1:"
        )
    };
    for p in [p1, p3] {
        let l: Vec<&&str> = timed_out.iter().filter(|l| l.contains(&format!("server: 127.0.0.1:{p},"))).collect();
        assert_eq!(l.len(), 1, "one \"upstream timed out\" for the server on {p}:\n{}", tail(&s));
        assert!(l[0].contains("[error]") && l[0].contains(&want(p)), "not nginx's line: {}", l[0]);
    }
    let alen = r2.len();
    let ok = lines_with(&log, "udp timed out");
    let line2 = format!(
        "udp timed out, packets from/to client:1/1, bytes from/to client:4/{alen}, bytes from/to upstream:{alen}/4"
    );
    assert!(
        ok.iter().any(|l| l.contains("[info]") && l.ends_with(&line2)),
        "no \"{line2}\" at info:\n{}",
        ok.join("\n")
    );
    assert!(ok.iter().any(|l| l.contains("udp timed out, packets from/to client:5/5")), "{}", ok.join("\n"));
    assert_eq!(timed_out.len(), 2, "{}", timed_out.join("\n"));
}

/// A 60,000-byte and a 65,507-byte datagram (the largest UDP payload over IPv4) go up
/// and come back whole through a buffer that holds them (`proxy_buffer_size 64k`; with
/// the default 16k the answer is cut, as nginx's: udp_datagrams_are_cut_to_proxy_buffer_size).
#[test]
fn udp_large_datagrams_relayed_whole() {
    let be = UdpBackend::start(|d, _| vec![(Duration::ZERO, d.iter().map(|b| b ^ 0xff).collect())]);
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format r '$remote_port $status $bytes_received $bytes_sent $upstream_bytes_sent \
         $upstream_bytes_received';\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_responses 1; proxy_timeout 2s; \
         proxy_buffer_size 64k; access_log %%PREFIX%%r.log r; }}",
        b = be.port
    )));
    for n in [60_000usize, 65_507] {
        let c = dgram(p);
        let d: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
        let r = io(&c, &d, Duration::from_secs(5)).unwrap_or_else(|| panic!("no answer to {n} bytes\n{}", tail(&s)));
        assert_eq!(r.len(), n, "the {n}-byte answer came back as {} bytes", r.len());
        assert!(r.iter().zip(&d).all(|(a, b)| *a == b ^ 0xff), "the {n}-byte datagram was changed on the way");
        let port = cport(&c).to_string();
        wait_for(Duration::from_secs(3), || !access(&s, "r.log", &port).is_empty());
        assert_eq!(access(&s, "r.log", &port), vec![format!("{port} 200 {n} {n} {n} {n}")]);
    }
    let log = s.error_log();
    for n in [60_000, 65_507] {
        let l = format!(
            "udp done, packets from/to client:1/1, bytes from/to client:{n}/{n}, bytes from/to upstream:{n}/{n}"
        );
        assert_eq!(count(&log, &l), 1, "{l}\n{}", tail(&s));
    }
}

/// Round robin over two peers as for TCP, with `$upstream_addr` naming the peer.
#[test]
fn udp_round_robin_and_upstream_addr() {
    let (a, b) = (UdpBackend::tagging(), UdpBackend::tagging());
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format r '$remote_port $status $upstream_addr';\n\
         upstream u {{ server 127.0.0.1:{pa}; server 127.0.0.1:{pb}; }}\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass u; proxy_responses 1; proxy_timeout 1s; \
         access_log %%PREFIX%%r.log r; }}",
        pa = a.port,
        pb = b.port
    )));
    for _ in 0..10 {
        let c = dgram(p);
        assert!(io(&c, b".", Duration::from_secs(3)).is_some(), "no answer\n{}", tail(&s));
        let port = cport(&c).to_string();
        wait_for(Duration::from_secs(3), || !access(&s, "r.log", &port).is_empty());
    }
    assert_eq!((a.received(), b.received()), (5, 5), "balanced");
    let log = s.read("r.log");
    assert_eq!(count(&log, &format!(" 200 127.0.0.1:{}", a.port)), 5, "{log}");
    assert_eq!(count(&log, &format!(" 200 127.0.0.1:{}", b.port)), 5, "{log}");
}

/// `return` over UDP: one datagram with the value, `$protocol` UDP.
#[test]
fn udp_return_answers_with_one_datagram() {
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format r '$remote_port $protocol $status $bytes_sent $bytes_received';\n\
         server {{ listen 127.0.0.1:{p} udp; return \"hi $protocol $remote_port\"; access_log %%PREFIX%%r.log r; }}"
    )));
    let c = dgram(p);
    let port = cport(&c);
    let want = format!("hi UDP {port}");
    assert_eq!(io(&c, b"x", Duration::from_secs(3)), Some(want.clone().into_bytes()), "{}", tail(&s));
    assert_eq!(recv(&c, ms(300)), None, "a second datagram from return");
    wait_for(Duration::from_secs(3), || !access(&s, "r.log", &port.to_string()).is_empty());
    // The datagram that began the session is received (nginx counts it at once).
    assert_eq!(access(&s, "r.log", &port.to_string()), vec![format!("{port} UDP 200 {} 1", want.len())]);
}

/// An ICMP port unreachable from the upstream fails the session as nginx does:
/// "recv() failed (111: Connection refused)" at error, an empty datagram for the client
/// (nginx 1.22 takes the failed read as a zero-byte read at end of file and relays it),
/// no next upstream for a datagram, and the peer counts a failure: with `max_fails=1`
/// every following session goes to the live peer.
#[test]
fn udp_icmp_unreachable_fails_the_peer() {
    let live = UdpBackend::tagging();
    let dead = free_port();
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format r '$remote_port $status $upstream_addr $bytes_received $bytes_sent';\n\
         upstream u {{ server 127.0.0.1:{dead} max_fails=1 fail_timeout=30s; server 127.0.0.1:{l}; }}\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass u; proxy_responses 1; proxy_timeout 1s; \
         access_log %%PREFIX%%r.log r; }}",
        l = live.port
    )));
    // Round robin starts with the first peer: the first session meets the dead one.
    let c = dgram(p);
    assert_eq!(io(&c, b".", ms(500)), Some(Vec::new()), "the dead peer's session: one empty datagram");
    assert_eq!(recv(&c, ms(300)), None, "a second datagram");
    let port = cport(&c).to_string();
    wait_for(Duration::from_secs(3), || !access(&s, "r.log", &port).is_empty());
    assert_eq!(
        access(&s, "r.log", &port),
        vec![format!("{port} 200 127.0.0.1:{dead} 1 0")],
        "the dead peer's session\n{}",
        tail(&s)
    );
    let log = s.error_log();
    let want = format!(
        "recv() failed (111: Connection refused) while proxying and reading from upstream, udp client: 127.0.0.1, \
         server: 127.0.0.1:{p}, upstream: \"127.0.0.1:{dead}\""
    );
    let l = lines_with(&log, "recv() failed");
    assert!(l.len() == 1 && l[0].contains("[error]") && l[0].contains(&want), "want [error] {want}\n{}", tail(&s));
    assert!(
        log.contains("udp done, packets from/to client:1/1, bytes from/to client:1/0, bytes from/to upstream:0/1"),
        "the failed read counts as the response (nginx)\n{}",
        tail(&s)
    );
    assert_eq!(count(&log, "upstream server temporarily disabled"), 1, "{}", tail(&s));

    for i in 0..10 {
        let c = dgram(p);
        let r = io(&c, b".", Duration::from_secs(3)).and_then(|r| untag(&r));
        assert!(r.is_some(), "session {i} after the failure got no answer\n{}", tail(&s));
    }
    assert_eq!(live.received(), 10, "all sessions after the failure went to the live peer");
    wait_for(Duration::from_secs(3), || count(&s.read("r.log"), &format!("127.0.0.1:{}", live.port)) >= 10);
    assert_eq!(count(&s.read("r.log"), &format!(" 200 127.0.0.1:{}", live.port)), 10, "{}", s.read("r.log"));
}

/// After a failed upstream read nginx reads that upstream no more: the next ICMP error
/// waits in the socket and fails the next send ("sendmsg() failed", status 200, what
/// was sent so far counted). Recorded side by side with nginx 1.22.1: three datagrams
/// 50 ms apart to a closed port end at the third, 4 of 6 bytes sent upstream, with an
/// empty datagram to the client and a first-byte time.
#[test]
fn udp_after_a_failed_read_the_next_send_fails() {
    let dead = free_port();
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format r '$remote_port $status $bytes_received $bytes_sent $upstream_bytes_sent \
         $upstream_bytes_received ${{upstream_first_byte_time}}s';\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{dead}; proxy_timeout 2s; \
         access_log %%PREFIX%%r.log r; }}"
    )));
    let c = dgram(p);
    send_after_a_failed_read(&s, &c);
    assert_eq!(recv(&c, ms(500)), Some(Vec::new()), "one empty datagram");
    assert_eq!(recv(&c, ms(200)), None, "a second datagram");
    let port = cport(&c).to_string();
    wait_for(Duration::from_secs(3), || !access(&s, "r.log", &port).is_empty());
    let line = access(&s, "r.log", &port);
    assert_eq!(line.len(), 1, "{line:?}");
    assert!(line[0].starts_with(&format!("{port} 200 6 0 4 0 0.")) && !line[0].ends_with("-s"), "{line:?}");
    let log = s.error_log();
    let want = format!(
        "sendmsg() failed (111: Connection refused) while proxying and sending to upstream, udp client: 127.0.0.1, \
         server: 127.0.0.1:{p}, upstream: \"127.0.0.1:{dead}\", bytes from/to client:6/0, bytes from/to upstream:0/4"
    );
    assert_eq!(count(&log, "recv() failed (111"), 1, "{}", tail(&s));
    assert!(lines_with(&log, &want).iter().any(|l| l.contains("[error]")), "want [error] {want}\n{}", tail(&s));
    assert!(!log.contains("udp timed out"), "{}", tail(&s));
}

/// c1, whose ICMP error must have been read (the failed recv, waited for in the log,
/// not for a fixed time) before c2 and c3 come.
fn send_after_a_failed_read(s: &Sluice, c: &UdpSocket) {
    c.send(b"c1").expect("send");
    assert!(
        wait_for(Duration::from_secs(5), || s.error_log().contains("recv() failed (111")),
        "no failed read\n{}",
        tail(s)
    );
    for d in [&b"c2"[..], b"c3"] {
        c.send(d).expect("send");
        std::thread::sleep(ms(50));
    }
}

/// The same in an upstream of two: the failed send ends the session with the peer
/// failed, and its warning keeps the send's action, as nginx's finalization does
/// (side by side: "upstream server temporarily disabled while proxying and sending to
/// upstream"; sluice said "while proxying connection").
#[test]
fn udp_failed_send_disables_the_peer_while_sending() {
    let dead = free_port();
    let live = UdpBackend::tagging();
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "upstream u {{ server 127.0.0.1:{dead}; server 127.0.0.1:{}; }}\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass u; proxy_timeout 2s; }}",
        live.port
    )));
    let c = dgram(p);
    send_after_a_failed_read(&s, &c);
    let want = format!(
        "[warn] {pid}#{pid}: *1 upstream server temporarily disabled while proxying and sending to upstream, \
         udp client: 127.0.0.1, server: 127.0.0.1:{p}, upstream: \"127.0.0.1:{dead}\"",
        pid = s.pid()
    );
    assert!(wait_for(Duration::from_secs(3), || s.error_log().contains(&want)), "want {want}\n{}", tail(&s));
}

/// One client floods 5,000 datagrams at a backend that never answers: sluice stays
/// responsive to other clients, its memory stays put, and the session's counts add
/// up. Whether any datagram is dropped from the session's queue ("N datagrams
/// dropped" at info) depends on sluice keeping up; the test reports, not forces, it.
#[test]
fn udp_flooding_client_is_bounded_and_others_are_served() {
    let silent = UdpBackend::silent();
    let echo = UdpBackend::tagging();
    let (pf, pe) = (free_port(), free_port());
    let s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{pf} udp; proxy_pass 127.0.0.1:{sb}; proxy_timeout 1s; }}\n\
         server {{ listen 127.0.0.1:{pe} udp; proxy_pass 127.0.0.1:{eb}; proxy_responses 1; proxy_timeout 1s; }}",
        sb = silent.port,
        eb = echo.port
    )));
    let pid = s.pid();
    // Warm up both servers, then take the baseline.
    assert!(io(&dgram(pe), b"warm", Duration::from_secs(3)).is_some(), "{}", tail(&s));
    let rss0 = rss_kib(pid);
    let drops0 = kernel_udp_drops();

    const FLOOD: usize = 5000;
    const SIZE: usize = 100;
    let flooder = dgram(pf);
    let fport = cport(&flooder);
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Mutex::new(rss0));
    let watcher = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let r = rss_kib(pid);
                if let Ok(mut p) = peak.lock() {
                    *p = (*p).max(r);
                }
                std::thread::sleep(ms(5));
            }
        })
    };
    let flood = std::thread::spawn(move || {
        let d = vec![b'f'; SIZE];
        for _ in 0..FLOOD {
            let _ = flooder.send(&d);
        }
    });
    // Probes while the flood runs.
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t0 = Instant::now();
        let r = io(&dgram(pe), b"probe", Duration::from_secs(2));
        assert!(r.is_some(), "probe {i} during the flood got no answer within 2s\n{}", tail(&s));
        worst = worst.max(t0.elapsed());
    }
    flood.join().expect("flood thread");
    let log = wait_log(&s, &format!("udp client 127.0.0.1:{fport} "), 1, Duration::from_secs(1));
    let fid = lines_with(&log, &format!("udp client 127.0.0.1:{fport} "))
        .first()
        .and_then(|l| l.split(" *").nth(1)?.split(' ').next().map(str::to_string))
        .unwrap_or_default();
    let log = wait_log(&s, &format!("*{fid} udp timed out"), 1, Duration::from_secs(5));
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let peak = *peak.lock().expect("peak");
    let ended = lines_with(&log, &format!("*{fid} udp timed out"));
    let dropped_lines = lines_with(&log, "datagrams dropped");
    let kernel = kernel_udp_drops().saturating_sub(drops0);
    let l = ended.first().unwrap_or_else(|| panic!("the flood session did not time out\n{}", tail(&s)));
    let nums = |key: &str| -> Vec<u64> {
        l.split(key)
            .nth(1)
            .and_then(|r| r.split(',').next())
            .map_or(Vec::new(), |v| v.split('/').filter_map(|x| x.parse().ok()).collect())
    };
    let (pk, bc, bu) =
        (nums("packets from/to client:"), nums("bytes from/to client:"), nums("bytes from/to upstream:"));
    let r = pk.first().copied().unwrap_or(0);
    let dropped: u64 =
        dropped_lines.iter().filter_map(|l| l.split("] ").nth(1)?.split(' ').nth(1)?.parse::<u64>().ok()).sum();
    eprintln!(
        "udp flood: {FLOOD} sent, {r} relayed by the session, {dropped} dropped by sluice ({} line(s)), \
         {} reached the backend, upstream bytes {bu:?}, kernel drops +{kernel}, probe worst {worst:?}, \
         RSS {rss0} -> peak {peak} KiB",
        dropped_lines.len(),
        silent.received()
    );
    assert!(r >= 1 && r + dropped <= FLOOD as u64, "packets {r} + dropped {dropped} of {FLOOD}\n{l}");
    assert_eq!(pk.get(1), Some(&0), "{l}");
    assert_eq!(bc, vec![r * SIZE as u64, 0], "bytes from/to client: {r} datagrams of {SIZE}\n{l}");
    assert!(bu.first() == Some(&0) && bu.get(1).is_some_and(|&b| b <= r * SIZE as u64), "{l}");
    assert!(silent.received() as u64 <= r, "the backend got more than the session sent");
    assert!(peak < rss0 + 32 * 1024, "RSS grew from {rss0} KiB to {peak} KiB under the flood");
    // nginx loses what does not fit its buffer silently.
    assert!(dropped_lines.is_empty(), "{dropped_lines:?}");
}

/// A client floods a session that `proxy_upload_rate` holds back. As in nginx (side by
/// side with 1.22.1), a datagram is read only when it arrives while reading is not
/// delayed: each one relayed pauses reading for the time its bytes are worth, and those
/// that come meanwhile are lost, silently, so nothing queues and memory stays flat; what
/// the session counts is exactly what reaches the backend. (sluice queued them, up to
/// 256, before; nginx never holds a datagram past its read handler.)
#[test]
fn udp_flood_under_upload_rate_reads_only_when_not_delayed() {
    let silent = UdpBackend::silent();
    let echo = UdpBackend::tagging();
    let (pf, pe) = (free_port(), free_port());
    // 2 MiB/s: a datagram of 16,000 bytes is worth 7 ms.
    let s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{pf} udp; proxy_pass 127.0.0.1:{sb}; proxy_timeout 1s; \
         proxy_upload_rate 2m; }}\n\
         server {{ listen 127.0.0.1:{pe} udp; proxy_pass 127.0.0.1:{eb}; proxy_responses 1; proxy_timeout 1s; }}",
        sb = silent.port,
        eb = echo.port
    )));
    let pid = s.pid();
    assert!(io(&dgram(pe), b"warm", Duration::from_secs(3)).is_some(), "{}", tail(&s));
    let rss0 = rss_kib(pid);
    const FLOOD: u64 = 3000;
    const SIZE: u64 = 16_000;
    let flooder = dgram(pf);
    let fport = cport(&flooder);
    let t0 = Instant::now();
    let d = vec![b'f'; SIZE as usize];
    let mut peak = rss0;
    // About 160 MB/s, 80 times the rate: ten datagrams (what the listener's default
    // receive buffer holds) a millisecond, so that the flood reaches sluice rather
    // than the kernel's drop counter.
    for i in 0..FLOOD {
        let _ = flooder.send(&d);
        if i % 10 == 9 {
            std::thread::sleep(ms(1));
        }
        if i % 50 == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    let flood_secs = t0.elapsed().as_secs_f64();
    let r = io(&dgram(pe), b"probe", Duration::from_secs(2));
    assert!(r.is_some(), "a probe right after the flood got no answer\n{}", tail(&s));
    // proxy_timeout ends the session.
    let mut fid = String::new();
    let ended = wait_for(Duration::from_secs(10), || {
        peak = peak.max(rss_kib(pid));
        let log = s.error_log();
        if fid.is_empty() {
            fid = lines_with(&log, &format!("udp client 127.0.0.1:{fport} "))
                .first()
                .and_then(|l| l.split(" *").nth(1)?.split(' ').next().map(str::to_string))
                .unwrap_or_default();
        }
        !fid.is_empty() && log.contains(&format!("*{fid} udp timed out"))
    });
    let log = s.error_log();
    assert!(ended, "the flooded session did not end\n{}", tail(&s));
    let done = lines_with(&log, &format!("*{fid} udp timed out"))[0].to_string();
    let r: u64 =
        done.split("packets from/to client:").nth(1).and_then(|x| x.split('/').next()?.parse().ok()).unwrap_or(0);
    eprintln!(
        "udp flood under rate: {FLOOD} sent in {flood_secs:.2}s, {r} relayed, {} reached the backend, \
         RSS {rss0} -> peak {peak} KiB",
        silent.received()
    );
    // The first datagram goes at once; every later one read pauses reading for its
    // 16,000 bytes at 2 MiB/s, 7 ms: no more than one per 7 ms gets through.
    let bound = 2 + (flood_secs * 1000.0 / 7.0) as u64;
    assert!(r >= 2 && r <= bound, "{r} datagrams relayed in {flood_secs:.2}s: want 2..={bound}\n{}", tail(&s));
    let dropped_lines: Vec<_> = lines_with(&log, "datagrams dropped");
    assert!(dropped_lines.is_empty(), "nginx drops them silently: {dropped_lines:?}");
    assert!(
        done.contains(&format!("bytes from/to client:{}/0", r * SIZE)),
        "every datagram counted went up whole: {done}"
    );
    assert_eq!(silent.received() as u64, r, "the backend got what the session counted");
    assert!(peak <= rss0 + 8 * 1024, "RSS {rss0} -> {peak} KiB under the flood: something queued");
}

/// 100,000 distinct client addresses (fresh sockets in chunks of 50, each chunk on its
/// own 127.1.x.y source address, two chunks in flight, at most about 2,000 sessions
/// open at once): 38 of every 50 send two
/// requests and read two answers, 12 are never answered and end at
/// `proxy_timeout` 1s with 502. Afterwards sluice holds as many descriptors as before,
/// its RSS is back near the baseline, every unanswered session logged its 502, and a
/// new client is served. Answers the kernel dropped (a loaded machine's loopback) are
/// told apart from sluice's by the kernel's counters.
#[test]
fn udp_100k_clients_leave_no_sessions_behind() {
    // "A": answered at once; "N": never.
    let be = UdpBackend::start(|d, peer| {
        if d.first() == Some(&b'A') {
            vec![(Duration::ZERO, tagged(peer.port(), d))]
        } else {
            Vec::new()
        }
    });
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{ worker_connections 40000; }}\nstream {{\n\
         log_format st $status;\n\
         server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_responses 1; proxy_timeout 1s; \
         error_log %%PREFIX%%c-error.log warn; access_log %%PREFIX%%c.log st buffer=64k flush=1s; }}\n}}\n",
        b = be.port
    ));
    // A session holds two connections (nginx counts the client's too) but one
    // descriptor: with `ulimit -n` 20000, up to ~20,000 sessions.
    let pid = s.pid();
    const CLIENTS: usize = 100_000;
    const CHUNK: usize = 50;
    const WINDOW: usize = 2;
    const OPEN_MAX: usize = 2000;
    let t0 = Instant::now();
    // The whole run is bounded: on a machine too slow for it the test fails, it does
    // not hang.
    let give_up = t0 + Duration::from_secs(70);
    struct Chunk {
        socks: Vec<(UdpSocket, bool)>,
        sent: Instant,
    }
    // (answered clients, unanswered clients, answers missing)
    let run = |chunks: std::ops::Range<usize>, net: u8| -> Result<(usize, usize, usize), String> {
        let (mut answered, mut unanswered, mut missing) = (0, 0, 0);
        let mut inflight: std::collections::VecDeque<Chunk> = Default::default();
        // Answers normally take milliseconds: a chunk waits at most 1 s for its own.
        let drain = |ch: Chunk, missing: &mut usize| {
            let until = ch.sent + Duration::from_secs(1);
            for (u, _) in ch.socks.iter().filter(|(_, a)| *a) {
                for _ in 0..2 {
                    if recv(u, until.saturating_duration_since(Instant::now()).max(ms(1))).is_none() {
                        *missing += 1;
                    }
                }
            }
        };
        for c in chunks.clone() {
            // A pool of about 2,000 clients: at most that many sessions open at once
            // (each holds one descriptor in sluice).
            wait_for(Duration::from_secs(5), || fds(pid) < OPEN_MAX);
            if Instant::now() > give_up {
                return Err(format!("only {} of {} chunks sent in 70 s", c - chunks.start, chunks.len()));
            }
            let ip = Ipv4Addr::new(127, net, (c / 250) as u8, (c % 250 + 1) as u8);
            let socks: Vec<(UdpSocket, bool)> = (0..CHUNK)
                .map(|k| {
                    let u = UdpSocket::bind((ip, 0)).expect("bind client");
                    u.connect(("127.0.0.1", p)).expect("connect");
                    (u, k % 4 != 3)
                })
                .collect();
            for (u, a) in &socks {
                if *a {
                    let _ = u.send(b"A1");
                    let _ = u.send(b"A2");
                    answered += 1;
                } else {
                    let _ = u.send(b"N");
                    unanswered += 1;
                }
            }
            inflight.push_back(Chunk { socks, sent: Instant::now() });
            if inflight.len() >= WINDOW {
                if let Some(ch) = inflight.pop_front() {
                    drain(ch, &mut missing);
                }
            }
        }
        while let Some(ch) = inflight.pop_front() {
            drain(ch, &mut missing);
        }
        Ok((answered, unanswered, missing))
    };
    // Warm-up (its own source net), then the baseline once those sessions ended.
    let k0 = kernel_udp_drops();
    let (_, w_un, w_missing) = run(0..4, 2).expect("warm-up");
    let ok = wait_for(Duration::from_secs(5), || count(&s.read("c.log"), "502") >= w_un);
    assert!(ok, "warm-up sessions did not end:\n{}", s.read("c-error.log"));
    std::thread::sleep(ms(200));
    let (fd0, rss0) = (fds(pid), rss_kib(pid));
    let k1 = kernel_udp_drops();

    let result = run(0..CLIENTS / CHUNK, 1);
    let send_secs = t0.elapsed().as_secs_f64();
    let peak_fds = fds(pid);
    // Every session ends within proxy_timeout of its last datagram.
    let ok = wait_for(Duration::from_secs(10), || fds(pid) <= fd0);
    let (fd1, rss1) = (fds(pid), rss_kib(pid));
    let kernel = kernel_udp_drops().saturating_sub(k1);
    let (answered, unanswered, missing) = result.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "udp 100k: {answered} answered + {unanswered} unanswered clients in {send_secs:.1}s, {missing} answers \
         missing, fds {fd0} -> {peak_fds} -> {fd1}, RSS {rss0} -> {rss1} KiB, kernel drops +{kernel}"
    );
    assert_eq!(answered + unanswered, CLIENTS);
    assert!(
        w_missing as u64 <= k1 - k0 && missing as u64 <= kernel,
        "{missing} answers missing ({w_missing} in the warm-up), more than the kernel dropped (+{kernel}): \
         sluice lost them"
    );
    assert!(ok, "sluice still holds {fd1} descriptors ({fd0} before): sessions left behind");
    assert!(rss1 < rss0 + 8 * 1024, "RSS {rss1} KiB after 100,000 clients, {rss0} KiB before");
    // Each unanswered client's session ends with 502. A datagram the kernel dropped
    // can take a session away (a lost "N") or add a 502 (a lost answer to an "A").
    let want = (w_un + unanswered) as u64;
    let slack = kernel_udp_drops().saturating_sub(k0);
    wait_for(Duration::from_secs(5), || count(&s.read("c.log"), "502") as u64 + slack >= want);
    let log = s.read("c.log");
    let got = count(&log, "502") as u64;
    assert!(got.abs_diff(want) <= slack, "{got} 502 lines for {want} unanswered clients (kernel drops +{slack})");
    assert_eq!(count(&log, "502") + count(&log, "200"), log.lines().count(), "only 200 and 502");

    let c = dgram(p);
    let r = io(&c, b"Aafter", Duration::from_secs(3)).and_then(|r| untag(&r));
    assert_eq!(r.map(|x| x.1), Some(b"Aafter".to_vec()), "a new client after the 100,000");
}

/// `reuseport` with two workers: each client's datagrams stay with one worker, so
/// each client keeps one session (one upstream socket) for all its datagrams.
#[test]
fn udp_reuseport_keeps_each_client_on_one_worker() {
    let be = UdpBackend::tagging();
    let p = free_port();
    let s = Master::start(
        2,
        &conf(&format!(
            "server {{ listen 127.0.0.1:{p} udp reuseport; proxy_pass 127.0.0.1:{b}; proxy_timeout 5s; }}",
            b = be.port
        )),
    );
    let master = s.pid();
    assert!(wait_for(Duration::from_secs(5), || live_children(master).len() == 2), "2 workers");
    const CLIENTS: usize = 40;
    const EACH: usize = 25;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                let c = dgram(p);
                let mut tags = Vec::new();
                for k in 0..EACH {
                    let r = io(&c, format!("{k}").as_bytes(), Duration::from_secs(3));
                    tags.push(r.as_deref().and_then(untag).map(|x| x.0));
                }
                (cport(&c), tags)
            })
        })
        .collect();
    let results: Vec<(u16, Vec<Option<u16>>)> = threads.into_iter().map(|t| t.join().expect("client")).collect();
    let log = s.error_log();
    let mut per_worker: HashMap<i32, usize> = HashMap::new();
    for l in lines_with(&log, "udp client 127.0.0.1:") {
        *per_worker.entry(line_pid(l).unwrap_or(0)).or_default() += 1;
    }
    eprintln!("udp reuseport: sessions per worker {per_worker:?}");
    let mut split = Vec::new();
    for (port, tags) in &results {
        assert!(tags.iter().all(Option::is_some), "client {port} missed answers: {tags:?}\n{}", tail(&s));
        let distinct: HashSet<_> = tags.iter().collect();
        let sessions = count(&log, &format!("udp client 127.0.0.1:{port} connected"));
        if distinct.len() != 1 || sessions != 1 {
            let pids: HashSet<Option<i32>> =
                lines_with(&log, &format!("udp client 127.0.0.1:{port} connected")).into_iter().map(line_pid).collect();
            split.push(format!(
                "client {port}: {} upstream sockets, {sessions} sessions, workers {pids:?}",
                distinct.len()
            ));
        }
    }
    assert!(split.is_empty(), "{} of {CLIENTS} clients were split across sessions:\n{}", split.len(), split.join("\n"));
}

/// A reload (HUP) while a UDP session runs: as nginx 1.22.1's (side by side), the old
/// worker closes its listening socket, through which the session answers, so the
/// session ends at its next event: the backend's next datagram is not relayed, the
/// session logs "disconnected on shutdown" (info, no context) and 200, and the old
/// worker exits without waiting for proxy_timeout. New clients go to the new workers.
#[test]
fn udp_session_ends_at_its_next_event_after_reload() {
    // Ten answers 200 ms apart for each datagram: "tick k PORT".
    let be = UdpBackend::start(|_, peer| {
        (0..40u64).map(|k| (ms(200 * k), format!("tick {k} {}", peer.port()).into_bytes())).collect()
    });
    let p = free_port();
    let s = Master::start(
        2,
        &conf(&format!(
            "log_format r '$remote_port $status $bytes_sent $pid';\n\
             server {{ listen 127.0.0.1:{p} udp reuseport; proxy_pass 127.0.0.1:{b}; proxy_timeout 10s; \
             access_log %%PREFIX%%r.log r; }}",
            b = be.port
        )),
    );
    let master = s.pid();
    assert!(wait_for(Duration::from_secs(5), || live_children(master).len() == 2), "2 workers\n{}", tail(&s));
    let old = live_children(master);

    let c = dgram(p);
    let first = io(&c, b"go", Duration::from_secs(3)).unwrap_or_else(|| panic!("no first tick\n{}", tail(&s)));
    let first = String::from_utf8_lossy(&first).to_string();
    assert!(first.starts_with("tick 0 "), "{first}");
    let t0 = Instant::now();

    s.signal(libc::SIGHUP);
    let reloaded =
        wait_for(Duration::from_secs(5), || live_children(master).iter().filter(|p| !old.contains(p)).count() == 2);
    assert!(reloaded, "no 2 new workers after HUP: {:?} (old {old:?})\n{}", live_children(master), tail(&s));
    // The new workers exist before the master's 100 ms pause and the old workers' QUIT:
    // until they have taken it they serve on. Wait for it, then drop what came before.
    let quitting = wait_for(Duration::from_secs(5), || {
        let log = s.error_log();
        old.iter().all(|w| log.contains(&format!("{w}#{w}: gracefully shutting down")))
    });
    assert!(quitting, "old workers {old:?} not told to quit\n{}", tail(&s));
    c.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 256];
    let mut before_quit = first.len();
    while let Ok(n) = c.recv(&mut b) {
        before_quit += n;
    }
    c.set_nonblocking(false).expect("blocking");
    let after = recv(&c, Duration::from_secs(1)).map(|r| String::from_utf8_lossy(&r).to_string());
    assert_eq!(after, None, "the old session went on answering after the reload\n{}", tail(&s));

    // The old workers are gone long before the session's 10 s proxy_timeout.
    let gone = wait_for(Duration::from_secs(5), || old.iter().all(|&p| !alive(p)));
    assert!(gone, "old workers {old:?} still running {:?} after the reload\n{}", t0.elapsed(), tail(&s));
    let log = s.error_log();
    let ended = lines_with(&log, "disconnected on shutdown");
    assert_eq!(ended.len(), 1, "one \"disconnected on shutdown\" line\n{}", tail(&s));
    assert!(ended[0].contains("[info] "), "{}", ended[0]);
    assert!(ended[0].ends_with("disconnected on shutdown"), "the line has no context: {}", ended[0]);
    assert!(old.contains(&line_pid(ended[0]).unwrap_or(0)), "logged by an old worker: {}", ended[0]);

    let port = cport(&c).to_string();
    wait_for(Duration::from_secs(3), || !access(&s, "r.log", &port).is_empty());
    let l = access(&s, "r.log", &port);
    let f: Vec<&str> = l.first().map(|l| l.split(' ').collect()).unwrap_or_default();
    assert_eq!(f.get(1).copied(), Some("200"), "access line {l:?}\n{}", tail(&s));
    assert_eq!(f.get(2).copied(), Some(before_quit.to_string().as_str()), "only the ticks before the QUIT sent: {l:?}");
    let pid: i32 = f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0);
    assert!(old.contains(&pid), "the session was logged by {pid}, not an old worker {old:?}");

    // A new client goes to a new worker.
    let c2 = dgram(p);
    let r2 = io(&c2, b"go", Duration::from_secs(3)).map(|r| String::from_utf8_lossy(&r).to_string());
    assert!(r2.as_deref().is_some_and(|r| r.starts_with("tick 0 ")), "new client after reload: {r2:?}");
}

/// `-s quit` (QUIT) while a UDP session runs: as nginx's, the listening socket is closed
/// in every process at once, so datagrams to it are refused (ICMP port unreachable, even
/// the session's own client's), and the session ends at its next event.
#[test]
fn udp_quit_closes_the_listening_socket_at_once() {
    // One answer, 600 ms after the datagram.
    let be = UdpBackend::start(|d, _| vec![(ms(600), d.to_vec())]);
    let p = free_port();
    let s = Master::start(
        1,
        &conf(&format!(
            "server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_timeout 10s; }}",
            b = be.port
        )),
    );
    let master = s.pid();
    assert!(wait_for(Duration::from_secs(5), || live_children(master).len() == 1), "a worker\n{}", tail(&s));
    let c = dgram(p);
    c.send(b"one").expect("send");
    wait_log(&s, "udp proxy 127.0.0.1:", 1, Duration::from_secs(3));
    s.signal(libc::SIGQUIT);
    wait_log(&s, "gracefully shutting down", 1, Duration::from_secs(3));
    let _ = c.send(b"two");
    c.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut buf = [0u8; 64];
    let got = c.recv(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a datagram after QUIT: {got:?} (want ECONNREFUSED: the listening socket is closed)\n{}",
        tail(&s)
    );
    let log = wait_log(&s, "disconnected on shutdown", 1, Duration::from_secs(3));
    assert_eq!(count(&log, "disconnected on shutdown"), 1, "{}", tail(&s));
    let st = wait_for(Duration::from_secs(5), || !alive(master));
    assert!(st, "the master did not exit after its last session\n{}", tail(&s));
}

/// QUIT while `proxy_download_rate` holds a UDP session's upstream back: when the delay
/// ends, nginx's read handler finds the exiting worker and ends the session
/// ("disconnected on shutdown") before reading the backend's second answer, which
/// sluice used to read and send through the closed listening socket ("sendmsg()
/// failed (9: Bad file descriptor)" at alert; side by side with nginx 1.22.1: one
/// answer relayed, $upstream_bytes_received 4).
#[test]
fn udp_quit_while_download_is_delayed_ends_at_the_delay() {
    let be = UdpBackend::start(|_, _| vec![(ms(0), b"r0:a".to_vec()), (ms(0), b"r1:a".to_vec())]);
    let p = free_port();
    let s = Master::start(
        1,
        &conf(&format!(
            "log_format f '$status|$bytes_sent|$bytes_received|$upstream_bytes_received';\n\
             server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{b}; proxy_timeout 3s; \
             proxy_download_rate 1; access_log %%PREFIX%%a.log f; }}",
            b = be.port
        )),
    );
    let c = dgram(p);
    let first = io(&c, b"a", Duration::from_secs(3)).map(|r| String::from_utf8_lossy(&r).to_string());
    assert_eq!(first.as_deref(), Some("r0:a"), "{}", tail(&s));
    s.signal(libc::SIGQUIT);
    // 4 bytes at 1 byte a second: the delay ends about 4 s after the first answer.
    assert_eq!(s.wait_lines("a.log", 1), ["200|4|1|4"], "{}", tail(&s));
    let log = s.error_log();
    assert_eq!(count(&log, "disconnected on shutdown"), 1, "{}", tail(&s));
    assert_eq!(count(&log, "sendmsg() failed"), 0, "{}", tail(&s));
    assert_eq!(count(&log, "udp timed out"), 0, "{}", tail(&s));
}

/// `proxy_upload_rate` on UDP: the datagram that begins a session goes out at once, as
/// nginx sends its preread buffer (sluice held it back, and lost it, before); one that
/// comes while reading is delayed is dropped, as nginx's datagram is only there while
/// its read handler runs (both side by side with nginx 1.22.1).
#[test]
fn udp_upload_rate_sends_the_first_datagram_and_drops_while_delayed() {
    let b = UdpBackend::tagging();
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{}; proxy_upload_rate 10; \
         proxy_responses 1; proxy_timeout 2s; }}",
        b.port
    )));
    let c = dgram(p);
    let r = io(&c, b"0123456789", Duration::from_secs(3)).expect("the first datagram's answer");
    assert_eq!(untag(&r).map(|(_, d)| d), Some(b"0123456789".to_vec()), "{}", tail(&s));
    let log = wait_log(&s, "udp done", 1, Duration::from_secs(3));
    assert!(
        log.contains("udp done, packets from/to client:1/1, bytes from/to client:10/16, bytes from/to upstream:16/10"),
        "{log}"
    );

    // proxy_requests 2: the second datagram comes while the first's 10 bytes are paced
    // (10 bytes a second): it is not relayed, and the session waits for it no more than
    // nginx's does.
    let q = free_port();
    let s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{q} udp; proxy_pass 127.0.0.1:{}; proxy_upload_rate 10; \
         proxy_requests 2; proxy_responses 1; proxy_timeout 30s; }}",
        b.port
    )));
    let before = b.received();
    let c = dgram(q);
    // 100 bytes at 10 a second: 10 s of pacing, however slow the answer comes back.
    assert!(io(&c, &[b'0'; 100], Duration::from_secs(3)).is_some(), "{}", tail(&s));
    c.send(b"abcdefghij").expect("send");
    assert_eq!(recv(&c, ms(500)), None, "the datagram sent while delayed was relayed");
    assert_eq!(b.received() - before, 1, "{}", tail(&s));
}

/// A UDP `return` too long for one datagram: nginx's alert names sendmsg() (as recorded
/// side by side), and the session is a 500.
#[test]
fn udp_return_too_long_is_a_sendmsg_alert() {
    let p = free_port();
    // A word is at most 4k: 18 times a 4000-byte variable.
    let (x, v18) = ("x".repeat(4000), "$v".repeat(18));
    let s = Sluice::start(&conf(&format!(
        "log_format r '$status'; \
         server {{ listen 127.0.0.1:{p} udp; set $v {x}; return {v18}; access_log %%PREFIX%%r.log r; }}"
    )));
    let c = dgram(p);
    c.send(b"q").expect("send");
    let log = wait_log(&s, "sendmsg() failed", 1, Duration::from_secs(3));
    assert!(
        log.contains("[alert]")
            && log.contains("sendmsg() failed (90: Message too long) while returning text, udp client: 127.0.0.1"),
        "{log}"
    );
    assert_eq!(s.wait_lines("r.log", 1), ["500"]);
}

/// A wildcard UDP listener (`listen PORT udp`) answers from the address each datagram
/// was sent to and knows it as `$server_addr`; the same client writing to two addresses
/// has two sessions; a specific address of the port without `bind` is served through the
/// wildcard socket by its own server (side by side with nginx 1.22.1, which uses
/// IP_PKTINFO; sluice answered from 127.0.0.1 and said 0.0.0.0). In a network namespace
/// of the test's own.
#[test]
fn wildcard_listener_answers_from_the_address_written_to() {
    private_network();
    let echo = UdpBackend::start(|d, _| vec![(Duration::ZERO, d.to_vec())]);
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format u '$server_addr $status $bytes_received';
         access_log %%PREFIX%%u.log u;
         server {{ listen {p} udp; proxy_timeout 300ms; proxy_pass 127.0.0.1:{e}; }}
         server {{ listen 127.0.0.2:{p} udp; return \"two $server_addr\"; }}",
        e = echo.port
    )));
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.set_read_timeout(Some(ms(5000))).ok();
    let ask = |to: &str, d: &[u8]| {
        c.send_to(d, (to, p)).expect("send");
        let mut b = [0u8; 64];
        let (n, from) = c.recv_from(&mut b).expect("an answer");
        (String::from_utf8_lossy(&b[..n]).into_owned(), from.to_string())
    };
    let at = |ip: &str| format!("{ip}:{p}");
    assert_eq!(ask("127.0.0.1", b"a"), ("a".into(), at("127.0.0.1")));
    assert_eq!(ask("127.0.0.5", b"bb"), ("bb".into(), at("127.0.0.5")));
    assert_eq!(ask("127.0.0.1", b"c"), ("c".into(), at("127.0.0.1")));
    assert_eq!(ask("127.0.0.2", b"d"), ("two 127.0.0.2".into(), at("127.0.0.2")));
    let mut lines = s.wait_lines("u.log", 3);
    lines.sort();
    assert_eq!(lines, ["127.0.0.1 200 2", "127.0.0.2 200 1", "127.0.0.5 200 2"]);
    let sockets = std::fs::read_to_string("/proc/thread-self/net/udp").unwrap_or_default();
    let hex_port = format!(":{:04X} ", p);
    assert_eq!(sockets.matches(&hex_port).count(), 1, "one socket for the port:\n{sockets}");
}

/// `proxy_bind ADDRESS:PORT` with a fixed port: datagram sessions share it, as nginx
/// sets SO_REUSEADDR on such a socket (on Linux). sluice failed the second live
/// session with "bind(...) failed (98: Address already in use)" and 500.
#[test]
fn udp_sessions_share_a_fixed_proxy_bind_port() {
    let b = UdpBackend::tagging();
    let (p, local) = (free_port(), free_port());
    let s = Sluice::start(&conf(&format!(
        "log_format f '$status $upstream_addr'; server {{ listen 127.0.0.1:{p} udp; proxy_pass 127.0.0.1:{}; \
         proxy_bind 127.0.0.1:{local}; proxy_timeout 1s; access_log %%PREFIX%%a.log f; }}",
        b.port
    )));
    let (c1, c2) = (dgram(p), dgram(p));
    assert_eq!(io(&c1, b"one", ms(5000)).and_then(|r| untag(&r)), Some((local, b"one".to_vec())));
    assert_eq!(io(&c2, b"two", ms(5000)).and_then(|r| untag(&r)), Some((local, b"two".to_vec())));
    let want = format!("200 127.0.0.1:{}", b.port);
    wait_for(ms(5000), || access(&s, "a.log", "200").len() == 2);
    assert_eq!(access(&s, "a.log", "200"), [want.clone(), want], "{}", tail(&s));
    assert!(!s.error_log().contains("bind("), "{}", tail(&s));
}

/// A datagram that cannot go to the client (65527 bytes from an IPv6 upstream do not
/// fit IPv4: EMSGSIZE) ends the session at once, as nginx finalizes it: the alert, no
/// "udp done" or "udp timed out" line, the answers after it not read (they counted in
/// `$upstream_bytes_received`, and the batch's later answers were dropped silently),
/// and the client's next datagram starts a new session. Side by side with nginx 1.22.1.
#[test]
fn udp_failed_send_to_client_ends_the_session() {
    let up = UdpSocket::bind("[::1]:0").expect("bind ::1");
    let port = up.local_addr().expect("addr").port();
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, st) = (peers.clone(), stop.clone());
    let t = std::thread::spawn(move || {
        up.set_read_timeout(Some(ms(50))).ok();
        let mut b = [0u8; 64];
        while !st.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = up.recv_from(&mut b) {
                seen.lock().unwrap().push(peer);
                for d in [&b"a"[..], &vec![b'x'; 65527], b"b"] {
                    let _ = up.send_to(d, peer);
                }
            }
        }
    });
    let p = free_port();
    let s = Sluice::start(&conf(&format!(
        "log_format f '$status $bytes_sent $upstream_bytes_received'; server {{ listen 127.0.0.1:{p} udp; \
         proxy_pass [::1]:{port}; proxy_buffer_size 64k; proxy_timeout 10s; access_log %%PREFIX%%a.log f; }}"
    )));
    let c = dgram(p);
    for q in [&b"q1"[..], b"q2"] {
        assert_eq!(io(&c, q, ms(5000)), Some(b"a".to_vec()));
        assert!(wait_for(ms(5000), || count(&s.error_log(), "sendmsg() failed (90: Message too long)")
            == (q == b"q2") as usize + 1));
    }
    assert_eq!(recv(&c, ms(300)), None, "the answer after the failed one is not relayed");
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    let peers = peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 2);
    assert_ne!(peers[0], peers[1], "one session per request");
    wait_for(ms(5000), || access(&s, "a.log", "200").len() == 2);
    assert_eq!(access(&s, "a.log", "200"), ["200 1 65528", "200 1 65528"], "{}", tail(&s));
    let log = s.error_log();
    let alert = format!(
        "sendmsg() failed (90: Message too long) while proxying and sending to client, udp client: 127.0.0.1, \
         server: 127.0.0.1:{p}, upstream: \"[::1]:{port}\", bytes from/to client:2/1, bytes from/to upstream:65528/2"
    );
    assert_eq!(log.lines().filter(|l| l.contains("[alert] ") && l.ends_with(&alert)).count(), 2, "{}", log);
    assert_eq!(count(&log, "udp done") + count(&log, "udp timed out"), 0, "{}", log);
}

/// Six clients' datagrams queued together (the worker is stopped while they come) to
/// a round-robin pair whose second server is a closed port. Returns how many sessions
/// went to the closed one.
fn burst_to_a_pair_with_a_closed_port(events: &str) -> usize {
    let echo = UdpBackend::tagging();
    let closed = free_port();
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{ {events} }}\nstream {{\n  log_format f '$upstream_addr';\n  access_log %%PREFIX%%a.log f;\n  \
         upstream u {{ server 127.0.0.1:{a}; server 127.0.0.1:{closed}; }}\n  \
         server {{ listen 127.0.0.1:{p} udp; proxy_pass u; proxy_responses 1; proxy_timeout 5s; }}\n}}\n",
        a = echo.port
    ));
    s.signal(libc::SIGSTOP);
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid())).unwrap_or_default();
        stat.rsplit(") ").next().is_some_and(|rest| rest.starts_with('T'))
    };
    assert!(wait_for(Duration::from_secs(5), stopped), "sluice did not stop");
    let clients: Vec<UdpSocket> = (0..6)
        .map(|i| {
            let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
            c.send_to(format!("b{i}").as_bytes(), ("127.0.0.1", p)).expect("send");
            c
        })
        .collect();
    s.signal(libc::SIGCONT);
    let lines = s.wait_lines("a.log", 6);
    assert_eq!(lines.len(), 6, "{lines:?}\n{}", s.error_log());
    let refused = s.error_log().matches("recv() failed (111: Connection refused)").count();
    let to_closed = lines.iter().filter(|l| l.ends_with(&format!(":{closed}"))).count();
    assert_eq!(refused, to_closed, "{lines:?}\n{}", s.error_log());
    drop(clients);
    to_closed
}

/// nginx reads one datagram per listener event unless `multi_accept` (ngx_event_recvmsg):
/// the upstream's ICMP error is in before the third datagram is balanced, so the closed
/// server is tried once and then skipped (max_fails=1). With `multi_accept on` the whole
/// burst is balanced first and round-robin sends every other datagram there (both side
/// by side with nginx 1.22.1; sluice read the burst at once either way).
#[test]
fn udp_burst_is_balanced_one_datagram_per_event_unless_multi_accept() {
    assert_eq!(burst_to_a_pair_with_a_closed_port(""), 1);
    assert_eq!(burst_to_a_pair_with_a_closed_port("multi_accept on;"), 3);
}

/// An event still queued for an upstream socket closed this turn is dropped, as nginx's
/// `instance` bit drops it, not given to the session whose socket took its slot since.
/// Two listeners proxy to a closed port; with the burst queued while the worker is
/// stopped, client 1's second datagram finds its session's socket refused and ends it,
/// client 3's first opens a session in the freed slot, and the old socket's ICMP event
/// is stale: the new session's own refusal then ends it at its second datagram (nginx
/// 1.22.1 side by side, h5 hunt: two sendmsg() failures and one recv(); sluice gave the
/// stale event to the new session, one and two).
#[test]
fn a_stale_event_of_a_closed_upstream_socket_reaches_no_one() {
    let dead = free_port();
    let (x, y) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  \
         server {{ listen 127.0.0.1:{x} udp; proxy_pass 127.0.0.1:{dead}; proxy_timeout 500ms; }}\n  \
         server {{ listen 127.0.0.1:{y} udp; proxy_pass 127.0.0.1:{dead}; proxy_timeout 500ms; }}\n}}\n"
    ));
    s.signal(libc::SIGSTOP);
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid())).unwrap_or_default();
        stat.rsplit(") ").next().is_some_and(|rest| rest.starts_with('T'))
    };
    assert!(wait_for(Duration::from_secs(5), stopped), "sluice did not stop");
    let c: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
    for (i, port, d) in [(0, x, "a1"), (1, y, "b2"), (0, x, "a1b"), (2, y, "d4"), (2, y, "d4b")] {
        c[i].send_to(d.as_bytes(), ("127.0.0.1", port)).expect("send");
    }
    s.signal(libc::SIGCONT);
    // Session 2 waits out proxy_timeout; the others end at their refusals.
    assert!(wait_for(Duration::from_secs(10), || s.error_log().contains("udp timed out")), "{}", s.error_log());
    let log = s.error_log();
    assert_eq!(log.matches("sendmsg() failed (111: Connection refused)").count(), 2, "{log}");
    assert_eq!(log.matches("recv() failed (111: Connection refused)").count(), 1, "{log}");
    drop(c);
}
