//! The run-time resolver through the binary, against a small DNS server inside the
//! test (UDP and TCP on loopback) whose answers the test changes while sluice runs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::*;

/// What the test DNS server answers for one name.
#[derive(Clone, Default)]
pub struct Zone {
    pub a: Vec<Ipv4Addr>,
    pub ttl: u32,
    pub cname: Option<String>,
    /// (priority, weight, port, target)
    pub srv: Vec<(u16, u16, u16, String)>,
    pub rcode: u8,
    /// Over UDP: only the header with TC set (the answer comes over TCP).
    pub truncate: bool,
    /// Never answer.
    pub silent: bool,
    /// Before the real answer, send one with a wrong ID and one whose owner name is a
    /// pointer to itself (its address 127.0.0.3).
    pub hostile: bool,
    /// Over UDP: answer this much later.
    pub delay: Duration,
    /// Over UDP: the whole answer with TC set, cut to this many bytes (0: not cut).
    pub cut: usize,
    /// To an A query: a TXT record (no address, no alias).
    pub txt: bool,
    /// To an A query: the address under the root name as owner.
    pub root_owner: bool,
    /// The alias (`cname`) only in answers to A queries (an AAAA query gets none).
    pub cname_a_only: bool,
    /// Over UDP: every answer sent twice.
    pub twice: bool,
    /// To an A query: records (type, data) after the others, as they are, under the
    /// question's name.
    pub extra: Vec<(u16, Vec<u8>)>,
    /// To an AAAA query: the same, alone.
    pub extra_aaaa: Vec<(u16, Vec<u8>)>,
    /// To an A query: this rcode instead of `rcode`.
    pub rcode_a: Option<u8>,
}

type Zones = Arc<Mutex<HashMap<String, Zone>>>;
type Log = Arc<Mutex<Vec<(String, u16, &'static str, Instant)>>>;

pub struct DnsServer {
    pub port: u16,
    zones: Zones,
    /// (name, qtype, "udp"|"tcp") of every query.
    log: Log,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Replies sent after a zone's `delay`.
    late_sent: Arc<std::sync::atomic::AtomicUsize>,
    /// The source port of every UDP query.
    ports: Arc<Mutex<Vec<u16>>>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        Self::start_with(true)
    }

    /// A server whose TCP port refuses connections.
    pub fn start_udp_only() -> DnsServer {
        Self::start_with(false)
    }

    fn start_with(tcp_port_open: bool) -> DnsServer {
        // A port free for both UDP and TCP (other tests take ports meanwhile).
        let (udp, tcp) = (0..50)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let port = udp.local_addr().ok()?.port();
                Some((udp, TcpListener::bind(("127.0.0.1", port)).ok()?))
            })
            .expect("a port free for UDP and TCP");
        let port = tcp.local_addr().expect("addr").port();
        tcp.set_nonblocking(true).expect("nonblocking");
        let tcp = tcp_port_open.then_some(tcp);
        udp.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let zones: Zones = Arc::default();
        let log: Log = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let late_sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ports: Arc<Mutex<Vec<u16>>> = Arc::default();
        let (z, l, st, late, pl) = (zones.clone(), log.clone(), stop.clone(), late_sent.clone(), ports.clone());
        let t1 = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = udp.recv_from(&mut buf) else { continue };
                pl.lock().expect("ports").push(peer.port());
                let delay = question(&buf[..n])
                    .and_then(|(name, _, _)| z.lock().expect("zones").get(&name).map(|z| z.delay))
                    .unwrap_or_default();
                let replies = answer(&buf[..n], &z, &l, false);
                match udp.try_clone() {
                    Ok(u) if !delay.is_zero() => {
                        let late = late.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(delay);
                            for reply in replies {
                                let _ = u.send_to(&reply, peer);
                            }
                            late.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                    _ => {
                        for reply in replies {
                            let _ = udp.send_to(&reply, peer);
                        }
                    }
                }
            }
        });
        let (z, l, st) = (zones.clone(), log.clone(), stop.clone());
        let t2 = std::thread::spawn(move || {
            let Some(tcp) = tcp else { return };
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((c, _)) => {
                        let (z, l) = (z.clone(), l.clone());
                        std::thread::spawn(move || serve_tcp(c, &z, &l));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        DnsServer { port, zones, log, stop, threads: vec![t1, t2], late_sent, ports }
    }

    /// Wait until the first `n` delayed replies are sent and every UDP socket they went
    /// to has read what came from this server (`/proc/net/udp`'s rx_queue is 0).
    pub fn wait_late_replies_read(&self, n: usize) -> bool {
        let from = format!(":{:04X} ", self.port);
        wait_for(Duration::from_secs(10), || {
            self.late_sent.load(Ordering::SeqCst) >= n
                && std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| {
                    // "sl local rem st tx_queue:rx_queue ...", sluice's resolver socket
                    // being connected to this server (and closed once its name has
                    // its answer).
                    let rx: Vec<String> = t
                        .lines()
                        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                        .filter(|f| f.get(2).is_some_and(|r| format!("{r} ").ends_with(&from)))
                        .map(|f| f.get(4).and_then(|q| q.split(':').nth(1)).unwrap_or("?").to_string())
                        .collect();
                    rx.iter().all(|q| q.trim_start_matches('0').is_empty())
                })
        })
    }

    pub fn source_ports(&self) -> Vec<u16> {
        self.ports.lock().expect("ports").clone()
    }

    pub fn set(&self, name: &str, z: Zone) {
        self.zones.lock().expect("zones").insert(name.to_string(), z);
    }

    /// Queries seen for `name` (any type), and over which transport.
    pub fn queries(&self, name: &str) -> Vec<(u16, &'static str)> {
        self.log.lock().expect("log").iter().filter(|(n, _, _, _)| n == name).map(|(_, t, p, _)| (*t, *p)).collect()
    }

    /// When the queries of type `qtype` for `name` arrived.
    pub fn times(&self, name: &str, qtype: u16) -> Vec<Instant> {
        self.log.lock().expect("log").iter().filter(|(n, t, _, _)| n == name && *t == qtype).map(|x| x.3).collect()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(mut c: TcpStream, z: &Zones, l: &Log) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut len = [0u8; 2];
    while c.read_exact(&mut len).is_ok() {
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        if c.read_exact(&mut q).is_err() {
            return;
        }
        for reply in answer(&q, z, l, true) {
            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            let _ = c.write_all(&out);
        }
    }
}

/// The name (lowercased labels joined) and type of a query, and where the question ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut p = 12;
    let mut labels = Vec::new();
    loop {
        let n = *q.get(p)? as usize;
        if n == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(p + 1..p + 1 + n)?).to_lowercase());
        p += 1 + n;
    }
    let qtype = u16::from_be_bytes([*q.get(p + 1)?, *q.get(p + 2)?]);
    Some((labels.join("."), qtype, p + 5))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in name.split('.').filter(|l| !l.is_empty()) {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

fn rr(out: &mut Vec<u8>, rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

fn answer(q: &[u8], zones: &Zones, log: &Log, tcp: bool) -> Vec<Vec<u8>> {
    let Some((name, qtype, end)) = question(q) else { return Vec::new() };
    log.lock().expect("log").push((name.clone(), qtype, if tcp { "tcp" } else { "udp" }, Instant::now()));
    let z = zones.lock().expect("zones").get(&name).cloned();
    let mut head = q[..end].to_vec();
    head[2] = 0x81;
    head[3] = 0x80;
    let Some(z) = z else {
        head[3] |= 3;
        return vec![head];
    };
    if z.silent {
        return Vec::new();
    }
    head[3] |= z.rcode_a.filter(|_| qtype == 1).unwrap_or(z.rcode);
    if z.truncate && !tcp {
        head[2] |= 0x02;
        return vec![head];
    }
    let mut body = Vec::new();
    let mut count = 0u16;
    if let Some(c) = z.cname.as_ref().filter(|_| qtype == 1 || !z.cname_a_only) {
        rr(&mut body, 5, z.ttl, &encode_name(c));
        count += 1;
    }
    if qtype == 1 {
        for a in &z.a {
            rr(&mut body, 1, z.ttl, &a.octets());
            count += 1;
        }
        if z.txt {
            rr(&mut body, 16, z.ttl, b"\x02hi");
            count += 1;
        }
        if z.root_owner {
            body.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
            count += 1;
        }
        for (rtype, data) in &z.extra {
            rr(&mut body, *rtype, z.ttl, data);
            count += 1;
        }
    }
    if qtype == 28 {
        for (rtype, data) in &z.extra_aaaa {
            rr(&mut body, *rtype, z.ttl, data);
            count += 1;
        }
    }
    if qtype == 33 {
        for (p, w, port, target) in &z.srv {
            let mut d = Vec::new();
            d.extend_from_slice(&p.to_be_bytes());
            d.extend_from_slice(&w.to_be_bytes());
            d.extend_from_slice(&port.to_be_bytes());
            d.extend_from_slice(&encode_name(target));
            rr(&mut body, 33, z.ttl, &d);
            count += 1;
        }
    }
    let mut m = head.clone();
    m[6..8].copy_from_slice(&count.to_be_bytes());
    m.extend_from_slice(&body);
    if z.cut > 0 && !tcp {
        m[2] |= 0x02;
        m.truncate(z.cut);
    }
    let mut out = Vec::new();
    if z.hostile {
        let mut wrong = m.clone();
        wrong[0] ^= 0xff;
        out.push(wrong);
        // One answer whose owner name is a pointer to itself.
        let mut looped = head.clone();
        looped[6..8].copy_from_slice(&1u16.to_be_bytes());
        let at = looped.len();
        looped.extend_from_slice(&[0xc0 | (at >> 8) as u8, at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 3]);
        out.push(looped);
    }
    if z.twice && !tcp {
        out.push(m.clone());
    }
    out.push(m);
    out
}

/// A TCP backend on `ip:port` that sends `id` and closes.
fn id_backend(ip: &str, port: u16, id: &'static str) -> Option<JoinHandle<()>> {
    let l = TcpListener::bind((ip, port)).ok()?;
    Some(std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(id.as_bytes());
        }
    }))
}

/// A port free on 127.0.0.2 and 127.0.0.3 at once, with id backends on both.
fn two_backends() -> u16 {
    for _ in 0..20 {
        let port = free_port();
        if let (Some(_), Some(_)) = (id_backend("127.0.0.2", port, "B2"), id_backend("127.0.0.3", port, "B3")) {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn ask(port: u16) -> String {
    let mut c = connect(port);
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// `proxy_pass` with a name in a variable follows the DNS: answers are cached for their
/// TTL (one query for two connections) or `valid=`, and a changed answer is used by new
/// connections without a reload.
#[test]
fn proxy_pass_variable_follows_dns_changes() {
    let dns = DnsServer::start();
    let be = two_backends();
    dns.set("app.test", Zone { a: vec![ip("127.0.0.2")], ttl: 3600, ..Zone::default() });
    dns.set("short.test", Zone { a: vec![ip("127.0.0.2")], ttl: 1, ..Zone::default() });
    let (p1, p2) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           map $server_port $name {{ {p1} app.test; default short.test; }}\n\
           server {{ listen 127.0.0.1:{p1}; resolver 127.0.0.1:{d} valid=1s ipv6=off; proxy_pass $name:{be}; }}\n\
           server {{ listen 127.0.0.1:{p2}; resolver 127.0.0.1:{d} ipv6=off; proxy_pass $name:{be}; }}\n\
         }}",
        d = dns.port
    ));
    assert_eq!(ask(p1), "B2", "{}", s.error_log());
    assert_eq!(ask(p1), "B2");
    assert_eq!(dns.queries("app.test"), vec![(1, "udp")], "the second connection was answered from the cache");
    assert_eq!(ask(p2), "B2");

    dns.set("app.test", Zone { a: vec![ip("127.0.0.3")], ttl: 3600, ..Zone::default() });
    dns.set("short.test", Zone { a: vec![ip("127.0.0.3")], ttl: 1, ..Zone::default() });
    assert!(wait_for(Duration::from_secs(5), || ask(p1) == "B3"), "valid=1s: the new address was not used");
    assert!(wait_for(Duration::from_secs(5), || ask(p2) == "B3"), "TTL 1: the new address was not used");
    let log = s.error_log();
    assert!(!log.contains("[error]") && !log.contains("[alert]"), "{log}");
}

/// Failures end the session with 500 and nginx's lines: "Host not found" for NXDOMAIN
/// and for an answer without addresses, the rcode's text for SERVFAIL, a timeout after
/// `resolver_timeout`, "no port", and a name nobody can resolve without `resolver`. A
/// name is asked, and named in the error, as ngx_resolve_name leaves it: lower case,
/// without its trailing dot (nginx 1.22.1 side by side).
#[test]
fn resolution_failures_are_500_with_nginx_lines() {
    let dns = DnsServer::start();
    dns.set("empty.test", Zone::default());
    dns.set("fail.test", Zone { rcode: 2, ..Zone::default() });
    dns.set("slow.test", Zone { silent: true, ..Zone::default() });
    let ports: Vec<u16> = (0..7).map(|_| free_port()).collect();
    let names = [
        "nx.test:80",
        "empty.test:80",
        "fail.test:80",
        "slow.test:80",
        "noport.test",
        "Mixed.Case.TEST.:80",
        "two.dots..:80",
    ];
    let map: String = ports.iter().zip(names).map(|(p, n)| format!("{p} {n}; ")).collect();
    let listens: String = ports.iter().map(|p| format!("listen 127.0.0.1:{p}; ")).collect();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           log_format st '$server_port $status';\n\
           access_log %%PREFIX%%a.log st;\n\
           resolver 127.0.0.1:{d};\n\
           resolver_timeout 300ms;\n\
           map $server_port $name {{ {map} }}\n\
           server {{ {listens} proxy_pass $name; }}\n\
         }}",
        d = dns.port,
    ));
    for &port in &ports {
        assert_eq!(ask(port), "", "port {port}");
    }
    let lines = s.wait_lines("a.log", 7);
    for port in &ports {
        assert!(lines.contains(&format!("{port} 500")), "{port}: {lines:?}");
    }
    let log = s.error_log();
    for want in [
        "nx.test could not be resolved (3: Host not found)",
        "empty.test could not be resolved (3: Host not found)",
        "fail.test could not be resolved (2: Server failure)",
        "slow.test could not be resolved (110: Operation timed out)",
        "no port in upstream \"noport.test\"",
        "mixed.case.test could not be resolved (3: Host not found)",
        // One dot dropped, the second an empty label: no query (nginx 1.22.1 side by side).
        "two.dots. could not be resolved (3: Host not found)",
    ] {
        assert_eq!(log.matches(want).count(), 1, "{want}\n{log}");
    }
    assert!(dns.queries("noport.test").is_empty(), "a name without a port is not resolved");
    assert!(dns.queries("two.dots").is_empty(), "a name with two trailing dots is not asked");
    assert_eq!(dns.queries("mixed.case.test").len(), 2, "asked in lower case, without the dot");
    // A, then AAAA (ipv6 is on by default).
    let mut types: Vec<u16> = dns.queries("nx.test").into_iter().map(|(t, _)| t).collect();
    types.sort_unstable();
    assert_eq!(types, vec![1, 28]);
}

/// A truncated answer is asked again over TCP; a CNAME without addresses is followed by
/// a query for its target; a reply with a wrong ID is ignored, and one whose owner name
/// is a compression-pointer loop is taken, as nginx takes it (it never reads owner
/// names: side by side with nginx 1.22.1).
#[test]
fn tcp_fallback_cname_and_hostile_replies() {
    let dns = DnsServer::start();
    let be = two_backends();
    dns.set("big.test", Zone { a: vec![ip("127.0.0.2")], ttl: 60, truncate: true, ..Zone::default() });
    dns.set("alias.test", Zone { cname: Some("real.test".into()), ttl: 60, ..Zone::default() });
    dns.set("real.test", Zone { a: vec![ip("127.0.0.3")], ttl: 60, ..Zone::default() });
    dns.set("evil.test", Zone { a: vec![ip("127.0.0.2")], ttl: 60, hostile: true, ..Zone::default() });
    let (p, q, r) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           map $server_port $name {{ {p} big.test; {q} alias.test; {r} evil.test; }}\n\
           server {{ listen 127.0.0.1:{p}; listen 127.0.0.1:{q}; listen 127.0.0.1:{r}; proxy_pass $name:{be}; }}\n\
         }}",
        d = dns.port,
    ));
    assert_eq!(ask(p), "B2", "{}", s.error_log());
    assert_eq!(dns.queries("big.test"), vec![(1, "udp"), (1, "tcp")]);
    assert_eq!(ask(q), "B3", "{}", s.error_log());
    assert_eq!(dns.queries("real.test"), vec![(1, "udp")]);
    // The answer whose owner name points at itself is taken (nginx never reads owner
    // names); the real one after it is then unexpected.
    assert_eq!(ask(r), "B3", "{}", s.error_log());
    let log = s.error_log();
    assert!(log.contains("wrong ident"), "{log}");
    assert!(!log.contains("invalid name in DNS response"), "{log}");
}

/// Broken answers as ngx_resolver_process_a reads them (side by side with nginx 1.22.1):
/// a CNAME's target is read only when it is followed (beside an address a broken one is
/// no error; alone it is nginx's own message, and the request waits for its timeout
/// with the name not asked again at the 5 s resend), a record whose header ends the
/// message is a "short DNS response", an answer to a name of 128 labels is refused as a
/// "compression pointers loop", and an error code in one family's answer fails the name
/// at once, the other family's records unread.
#[test]
fn broken_answers_are_read_as_nginx_reads_them() {
    let dns = DnsServer::start();
    let be = two_backends();
    let out_of_message = vec![(5, vec![0xc0, 0xff])];
    dns.set(
        "beside.test",
        Zone { a: vec![ip("127.0.0.3")], ttl: 60, extra: out_of_message.clone(), ..Zone::default() },
    );
    dns.set("alone.test", Zone { ttl: 60, extra: out_of_message, ..Zone::default() });
    dns.set("empty.test", Zone { a: vec![ip("127.0.0.2")], ttl: 60, extra: vec![(13, vec![])], ..Zone::default() });
    // 128 labels: nginx reads at most 128 labels and pointers in a name (the question's
    // too) and calls more a loop.
    let labels = vec!["b"; 128].join(".");
    dns.set(&labels, Zone { a: vec![ip("127.0.0.2")], ttl: 60, ..Zone::default() });
    // An error code in one family's answer ends the name, the other's records unread.
    let txt = vec![(16, b"\x02hi".to_vec())];
    dns.set("nx.test", Zone { rcode_a: Some(3), extra_aaaa: txt.clone(), ..Zone::default() });
    dns.set("fail.test", Zone { rcode_a: Some(2), extra_aaaa: txt, ..Zone::default() });
    let (p, q, r, l) = (free_port(), free_port(), free_port(), free_port());
    let (x, f) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           map $server_port $n {{ {p} beside.test; {q} alone.test; {r} empty.test; {l} {labels}; \
                                  {x} nx.test; {f} fail.test; }}\n\
           server {{ listen 127.0.0.1:{p}; listen 127.0.0.1:{r}; listen 127.0.0.1:{l}; resolver_timeout 1s; proxy_pass $n:{be}; }}\n\
           server {{ listen 127.0.0.1:{q}; resolver_timeout 6s; proxy_pass $n:{be}; }}\n\
           server {{ listen 127.0.0.1:{x}; listen 127.0.0.1:{f}; resolver 127.0.0.1:{d}; resolver_timeout 5s; \
                    proxy_pass $n:{be}; }}\n\
         }}",
        d = dns.port,
    ));
    for (port, want) in [
        (x, "nx.test could not be resolved (3: Host not found)"),
        (f, "fail.test could not be resolved (2: Server failure)"),
    ] {
        let started = Instant::now();
        assert_eq!(ask(port), "", "{}", s.error_log());
        assert!(started.elapsed() < Duration::from_secs(3), "{want}: at once, not at the timeout");
        assert!(s.error_log().contains(want), "{want}\n{}", s.error_log());
    }
    assert!(!s.error_log().contains("unexpected RR type 16"), "{}", s.error_log());
    assert_eq!(ask(p), "B3", "{}", s.error_log());
    let started = Instant::now();
    let mut c = connect(q);
    c.set_read_timeout(Some(Duration::from_secs(9))).expect("timeout");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert_eq!(out, "", "{}", s.error_log());
    assert!(started.elapsed() >= Duration::from_millis(5800), "waited for resolver_timeout");
    assert_eq!(dns.queries("alone.test"), vec![(1, "udp")], "not asked again at the resend");
    assert_eq!(ask(r), "", "{}", s.error_log());
    assert_eq!(ask(l), "", "{}", s.error_log());
    assert_eq!(dns.queries(&labels), vec![(1, "udp")]);
    let log = s.error_log();
    for want in [
        "[error] {pid}#{pid}: name is out of DNS response\n",
        "alone.test could not be resolved (110: Operation timed out)",
        "[error] {pid}#{pid}: short DNS response\n",
        "empty.test could not be resolved (110: Operation timed out)",
        "[error] {pid}#{pid}: compression pointers loop in DNS response\n",
        "b.b.b could not be resolved (110: Operation timed out)",
    ] {
        let want = want.replace("{pid}", &s.pid().to_string());
        assert!(log.contains(&want), "{want}\n{log}");
    }
    assert_eq!(log.matches("DNS response").count(), 3, "{log}");
}

#[test]
fn dns_server_harness_answers() {
    // The harness itself: an unknown name is NXDOMAIN, a known one has its records.
    let dns = DnsServer::start();
    dns.set("h.test", Zone { a: vec![ip("10.1.2.3")], ttl: 5, ..Zone::default() });
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let q = |name: &str| {
        let mut m = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&encode_name(name));
        m.extend_from_slice(&[0, 1, 0, 1]);
        m
    };
    let to: SocketAddr = ([127, 0, 0, 1], dns.port).into();
    c.send_to(&q("h.test"), to).expect("send");
    let mut b = [0u8; 512];
    let n = c.recv(&mut b).expect("answer");
    assert_eq!((b[3] & 0xf, u16::from_be_bytes([b[6], b[7]])), (0, 1));
    assert_eq!(&b[n - 4..n], &[10, 1, 2, 3]);
    c.send_to(&q("x.test"), to).expect("send");
    let _ = c.recv(&mut b).expect("answer");
    assert_eq!(b[3] & 0xf, 3);
}

/// `server NAME resolve` in an upstream (each with a `resolver` of its own, the stream
/// block's points nowhere): the peers follow the DNS without a reload;
/// `service=` takes ports and weights from the SRV records (weights 3 and 1: three
/// connections of every four to the first, with round-robin's exact order).
#[test]
fn upstream_resolve_and_service_follow_dns() {
    let dns = DnsServer::start();
    let be = two_backends();
    dns.set("app.test", Zone { a: vec![ip("127.0.0.2")], ttl: 1, ..Zone::default() });
    dns.set(
        "_svc._tcp.app.test",
        Zone { srv: vec![(1, 3, be, "t2.test".into()), (1, 1, be, "t3.test".into())], ttl: 3600, ..Zone::default() },
    );
    dns.set("t2.test", Zone { a: vec![ip("127.0.0.2")], ttl: 3600, ..Zone::default() });
    dns.set("t3.test", Zone { a: vec![ip("127.0.0.3")], ttl: 3600, ..Zone::default() });
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:1 ipv6=off;\n\
           upstream a {{ zone za 64k; resolver 127.0.0.1:{d} ipv6=off; server app.test:{be} resolve; }}\n\
           upstream srv {{ zone zs 64k; resolver 127.0.0.1:{d} ipv6=off; resolver_timeout 2s; \
                           server app.test service=svc resolve; }}\n\
           server {{ listen 127.0.0.1:{p}; proxy_pass a; }}\n\
           server {{ listen 127.0.0.1:{q}; proxy_pass srv; }}\n\
         }}",
        d = dns.port
    ));
    // The first lookups run as the worker starts.
    assert!(wait_for(Duration::from_secs(5), || ask(p) == "B2"), "{}", s.error_log());
    dns.set("app.test", Zone { a: vec![ip("127.0.0.3")], ttl: 1, ..Zone::default() });
    assert!(wait_for(Duration::from_secs(5), || ask(p) == "B3"), "the new address was not used\n{}", s.error_log());

    assert!(wait_for(Duration::from_secs(5), || !ask(q).is_empty()), "{}", s.error_log());
    let mut got = HashMap::new();
    for _ in 0..40 {
        *got.entry(ask(q)).or_insert(0) += 1;
    }
    assert_eq!((got.get("B2"), got.get("B3")), (Some(&30), Some(&10)), "{got:?}");
    assert_eq!(dns.queries("_svc._tcp.app.test"), vec![(33, "udp")]);
    // A connection that comes before the first answer finds no peers ("no live
    // upstreams", as nginx); nothing else may go wrong.
    let log = s.error_log();
    let bad =
        log.lines().filter(|l| (l.contains("[error]") && !l.contains("no live upstreams")) || l.contains("[alert]"));
    assert_eq!(bad.count(), 0, "{log}");
}

/// The nginx race: an A record that flips between two addresses every second, under 50
/// clients connecting all the time, never leaves the upstream without a peer: every
/// connection is served, and both addresses are used.
#[test]
fn upstream_resolve_flipping_answer_fails_no_connection() {
    let dns = DnsServer::start();
    let be = two_backends();
    dns.set("flip.test", Zone { a: vec![ip("127.0.0.2")], ttl: 0, ..Zone::default() });
    let p = free_port();
    let s = Sluice::start(&one_resolved_upstream(dns.port, "flip.test", be, p));
    assert!(wait_for(Duration::from_secs(5), || ask(p) == "B2"), "{}", s.error_log());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut seen) = (0, 0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match ask(p).as_str() {
                        "" => failed += 1,
                        id => {
                            ok += 1;
                            if !seen.contains(&id.to_string()) {
                                seen.push(id.to_string());
                            }
                        }
                    }
                }
                (ok, failed, seen)
            })
        })
        .collect();
    for flip in 0..4 {
        let a = if flip % 2 == 0 { "127.0.0.3" } else { "127.0.0.2" };
        dns.set("flip.test", Zone { a: vec![ip(a)], ttl: 0, ..Zone::default() });
        std::thread::sleep(Duration::from_millis(1100));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut seen) = (0, 0, std::collections::HashSet::new());
    for c in clients {
        let (o, f, s2) = c.join().expect("client");
        ok += o;
        failed += f;
        seen.extend(s2);
    }
    assert_eq!(failed, 0, "{failed} of {} connections failed\n{}", ok + failed, s.error_log());
    assert!(ok > 100, "only {ok} connections");
    assert!(seen.contains("B2") && seen.contains("B3"), "{seen:?}");
    assert!(dns.queries("flip.test").len() >= 3, "the name was not looked up again");
}

/// With two workers, the resolved peers are shared through the zone and one worker
/// asks for both: no two lookups of the name come together.
#[test]
fn upstream_resolve_is_shared_by_workers() {
    let dns = DnsServer::start();
    let be = two_backends();
    dns.set("shared.test", Zone { a: vec![ip("127.0.0.3")], ttl: 1, ..Zone::default() });
    let p = free_port();
    let mut s = Sluice::start_master(
        2,
        &format!(
            "events {{}}\nstream {{\n\
               resolver 127.0.0.1:{d} ipv6=off;\n\
               upstream u {{ zone z 64k; server shared.test:{be} resolve; }}\n\
               server {{ listen 127.0.0.1:{p}; proxy_pass u; }}\n\
             }}",
            d = dns.port
        ),
    );
    assert!(wait_for(Duration::from_secs(5), || ask(p) == "B3"), "{}", s.error_log());
    // Lookups are due every 2 s (TTL 1 + 1 s): wait for three of them.
    assert!(wait_for(Duration::from_secs(10), || dns.times("shared.test", 1).len() >= 4), "{}", s.error_log());
    for _ in 0..20 {
        assert_eq!(ask(p), "B3");
    }
    let t = dns.times("shared.test", 1);
    for w in t.windows(2) {
        assert!(w[1] - w[0] > Duration::from_millis(800), "two lookups {:?} apart: {t:?}", w[1] - w[0]);
    }
    s.stop();
}

/// nginx's configuration checks for `resolve` and `service=` (nginx >= 1.27.3; the
/// recorded 1.22.1 has neither).
#[test]
fn upstream_resolve_configuration_errors() {
    let cases: &[(&str, &str)] = &[
        ("upstream u { server a.test:80 resolve; }", "resolving names at run time requires upstream \"u\" in"),
        (
            "upstream u { zone z 64k; server a.test:80 resolve; }",
            "no resolver defined to resolve names at run time in upstream \"u\" in",
        ),
        (
            "upstream u { zone z 64k; server a.test service=http; }",
            "service upstream \"a.test\" requires \"resolve\" parameter",
        ),
        (
            "upstream u { zone z 64k; server a.test:80 service=http resolve; }",
            "service upstream \"a.test:80\" may not have port",
        ),
        (
            "upstream u { zone z 64k; server 127.0.0.1 service=http resolve; }",
            "service upstream \"127.0.0.1\" requires domain name",
        ),
        ("upstream u { zone z 64k; server a.test service= resolve; }", "service is empty"),
        ("upstream u { zone z 64k; server a.test resolve; }", "no port in upstream \"a.test\""),
        (
            "upstream u { zone z 64k; resolver 127.0.0.1; resolver 127.0.0.2; server a.test:80 resolve; }",
            "\"resolver\" directive is duplicate",
        ),
    ];
    for (ups, want) in cases {
        let dir = TempDir::new("resolve-conf");
        let conf = format!(
            "events {{}}\nstream {{\n{ups}\nserver {{ listen 127.0.0.1:{p}; proxy_pass u; }}\n}}\n",
            p = free_port()
        );
        std::fs::write(dir.join("c.conf"), conf).expect("write");
        let out = run(&["-t", "-p", &dir.prefix(), "-c", "c.conf"], dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{ups}: {err}");
    }
    let dir = TempDir::new("resolve-conf");
    let ok = "events {}\nstream {\nresolver 127.0.0.1;\nupstream u { zone z 64k; server a.test:80 resolve weight=2 max_fails=0; \
              server b.test service=_http._tcp resolve; server 127.0.0.1:81 resolve; }\nserver { listen 127.0.0.1:1; proxy_pass u; }\n}\n";
    std::fs::write(dir.join("c.conf"), ok).expect("write");
    let out = run(&["-t", "-p", &dir.prefix(), "-c", "c.conf"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A reload that keeps a `resolve` line keeps its addresses, even when the DNS server
/// is failing at that moment, and gives them the line's new port (as nginx copies
/// resolved peers by name: nginx-tests' stream_upstream_resolve_reload.t).
#[test]
fn upstream_resolve_reload_keeps_addresses_with_the_new_port() {
    let dns = DnsServer::start();
    let be = two_backends();
    let be2 = (0..20)
        .find_map(|_| {
            let p = free_port();
            id_backend("127.0.0.2", p, "N2").map(|_| p)
        })
        .expect("a second backend port");
    dns.set("re.test", Zone { a: vec![ip("127.0.0.2")], ttl: 1, ..Zone::default() });
    let p = free_port();
    let s = Sluice::start_master(
        1,
        &format!(
            "events {{}}\nstream {{\n\
               resolver 127.0.0.1:{d} ipv6=off valid=1s;\n\
               upstream u {{ zone z 64k; server re.test:{be} resolve; }}\n\
               server {{ listen 127.0.0.1:{p}; proxy_pass u; }}\n\
             }}",
            d = dns.port
        ),
    );
    assert!(wait_for(Duration::from_secs(5), || ask(p) == "B2"), "{}", s.error_log());
    dns.set("re.test", Zone { rcode: 2, ..Zone::default() });
    let conf = s.dir.join("sluice.conf");
    let text = std::fs::read_to_string(&conf).expect("conf");
    std::fs::write(&conf, text.replace(&format!("re.test:{be}"), &format!("re.test:{be2}"))).expect("write conf");
    s.signal(libc::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || ask(p) == "N2"),
        "the kept address with the new port\n{}",
        s.error_log()
    );
    // The next lookup fails too: the addresses stay.
    let failed = || s.error_log().contains("re.test could not be resolved (2: Server failure)");
    assert!(wait_for(Duration::from_secs(10), failed), "{}", s.error_log());
    assert_eq!(ask(p), "N2");
}

/// A peer that leaves the answer takes no new sessions, while a session already
/// relaying to it goes on to its end.
#[test]
fn upstream_resolve_running_session_outlives_its_peer() {
    let dns = DnsServer::start();
    // 127.0.0.2: an echo server; 127.0.0.3: says "B3".
    let (port, echo) = (0..20)
        .find_map(|_| {
            let p = free_port();
            let l = TcpListener::bind(("127.0.0.2", p)).ok()?;
            id_backend("127.0.0.3", p, "B3")?;
            Some((p, l))
        })
        .expect("a port free on 127.0.0.2 and 127.0.0.3");
    std::thread::spawn(move || {
        for mut c in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n @ 1..) = c.read(&mut b) {
                    let _ = c.write_all(&b[..n]);
                }
            });
        }
    });
    dns.set("move.test", Zone { a: vec![ip("127.0.0.2")], ttl: 1, ..Zone::default() });
    let p = free_port();
    let s = Sluice::start(&one_resolved_upstream(dns.port, "move.test", port, p));
    let echoes = |c: &mut TcpStream, m: &[u8]| {
        let mut b = vec![0u8; m.len()];
        c.write_all(m).is_ok() && c.read_exact(&mut b).is_ok() && b == m
    };
    let mut held = connect(p);
    held.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert!(
        wait_for(Duration::from_secs(5), || {
            if !echoes(&mut held, b"ping") {
                held = connect(p);
                let _ = held.set_read_timeout(Some(Duration::from_secs(5)));
                return false;
            }
            true
        }),
        "{}",
        s.error_log()
    );
    dns.set("move.test", Zone { a: vec![ip("127.0.0.3")], ttl: 1, ..Zone::default() });
    assert!(wait_for(Duration::from_secs(5), || ask(p) == "B3"), "{}", s.error_log());
    for _ in 0..10 {
        assert_eq!(ask(p), "B3", "a new session went to the peer that left");
    }
    assert!(echoes(&mut held, b"still here"), "the running session was cut\n{}", s.error_log());
}

/// A stream block whose one server proxies to `upstream u`, one `server NAME:PORT
/// resolve` line asking the test's DNS server.
fn one_resolved_upstream(dns: u16, name: &str, port: u16, listen: u16) -> String {
    format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:{dns} ipv6=off;\n\
           upstream u {{ zone z 64k; server {name}:{port} resolve; }}\n\
           server {{ listen 127.0.0.1:{listen}; proxy_pass u; }}\n\
         }}"
    )
}

/// Resolver instances, connection numbers and the cache as nginx's (side by side with
/// nginx 1.22.1): each `resolver` directive is a resolver of its own (its own cache, so
/// its own query); a resolver's connection to its server is numbered at its first query
/// and kept (so the sessions after it are *4, *6, ...); an answer holds to the end of
/// the second its TTL ends in (TTL 0: the same second is served from the cache); and
/// `resolver_timeout 0` waits for as long as the answer takes.
#[test]
fn resolver_instances_numbers_and_cache_seconds() {
    let dns = DnsServer::start();
    dns.set("a.test", Zone { a: vec![ip("127.0.0.1")], ttl: 0, ..Zone::default() });
    dns.set(
        "late.test",
        Zone { a: vec![ip("127.0.0.1")], ttl: 60, delay: Duration::from_millis(300), ..Zone::default() },
    );
    let be = free_port();
    let _b = id_backend("127.0.0.1", be, "B").expect("backend");
    let (p, q, r) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           log_format n '$server_port $connection $status';\n\
           access_log %%PREFIX%%a.log n;\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           server {{ listen 127.0.0.1:{p}; set $h a.test; proxy_pass $h:{be}; }}\n\
           server {{ listen 127.0.0.1:{q}; resolver 127.0.0.1:{d} ipv6=off; set $h a.test; proxy_pass $h:{be}; }}\n\
           server {{ listen 127.0.0.1:{r}; resolver_timeout 0; set $h late.test; proxy_pass $h:{be}; }}\n\
         }}",
        d = dns.port,
    ));
    // Both sessions of the first server within one wall-clock second.
    let start = loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
        if now.subsec_millis() < 100 {
            break now.as_secs();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(ask(p), "B");
    assert_eq!(ask(p), "B");
    let same_second =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() == start;
    assert_eq!(ask(q), "B");
    assert_eq!(ask(r), "B", "resolver_timeout 0 gave up\n{}", s.error_log());
    if same_second {
        assert_eq!(dns.queries("a.test").len(), 2, "one query per resolver instance");
    }
    // *1 session, *2 the resolver's connection, *3 upstream; *4 and *5; *6, *7 the
    // second resolver's connection, *8; *9, and no new connection for the first
    // resolver's server.
    let lines = s.wait_lines("a.log", 4);
    assert_eq!(lines, [format!("{p} 1 200"), format!("{p} 4 200"), format!("{q} 6 200"), format!("{r} 9 200")]);
}

/// A UDP client sending d1, d2, d3 to `port`, 50 ms apart (while a name is looked up).
fn three_datagrams(port: u16) -> std::net::UdpSocket {
    let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.connect(("127.0.0.1", port)).expect("connect");
    for d in [&b"d1"[..], b"d2", b"d3"] {
        c.send(d).expect("send");
        std::thread::sleep(Duration::from_millis(50));
    }
    c
}

/// A UDP session's later datagrams are read (and counted) while its name is looked up,
/// and the failure is logged "while proxying connection", as nginx's read handler is set
/// before it resolves (side by side with nginx 1.22.1: 500|0|6 and that suffix).
#[test]
fn udp_datagrams_during_resolution_are_counted() {
    let dns = DnsServer::start();
    dns.set("drop.test", Zone { silent: true, ..Zone::default() });
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           log_format st '$status|$bytes_sent|$bytes_received';\n\
           access_log %%PREFIX%%a.log st;\n\
           resolver 127.0.0.1:{d};\n\
           resolver_timeout 500ms;\n\
           server {{ listen 127.0.0.1:{port} udp; set $h drop.test; proxy_pass $h:9; }}\n\
         }}",
        d = dns.port,
    ));
    let _c = three_datagrams(port);
    assert_eq!(s.wait_lines("a.log", 1), vec!["500|0|6".to_string()]);
    let log = s.error_log();
    assert!(
        log.contains("drop.test could not be resolved (110: Operation timed out) while proxying connection, udp client: 127.0.0.1, server: 127.0.0.1:"),
        "{log}"
    );
}

/// The later datagrams read while a UDP session's name was looked up are counted then,
/// and dropped when the first address fails to connect at once (nginx's
/// ngx_stream_proxy_next_upstream): the next peer gets the first datagram only (side by
/// side with nginx 1.22.1: "200|4|6", "packets from/to client:3/1", the echo saw "d1").
#[test]
fn udp_datagrams_read_while_resolving_are_dropped_on_the_next_try() {
    let dns = DnsServer::start();
    let a = vec![ip("255.255.255.255"), ip("127.0.0.1")];
    dns.set("two.test", Zone { a, ttl: 60, delay: Duration::from_millis(300), ..Zone::default() });
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind echo");
    let echo_port = echo.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok((n, peer)) = echo.recv_from(&mut b) {
            seen2.lock().expect("seen").push(b[..n].to_vec());
            let _ = echo.send_to(&[b"R:", &b[..n]].concat(), peer);
        }
    });
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           log_format st '$status|$bytes_sent|$bytes_received';\n\
           access_log %%PREFIX%%a.log st;\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           server {{ listen 127.0.0.1:{port} udp; proxy_timeout 1s; set $h two.test; proxy_pass $h:{echo_port}; }}\n\
         }}",
        d = dns.port,
    ));
    let _c = three_datagrams(port);
    assert_eq!(s.wait_lines("a.log", 1), vec!["200|4|6".to_string()]);
    let log = s.error_log();
    assert!(log.contains("bytes from/to client:6/0"), "counted as they came\n{log}");
    assert!(log.contains("packets from/to client:3/1, bytes from/to client:6/4"), "{log}");
    assert_eq!(*seen.lock().expect("seen"), [b"d1".to_vec()]);
}

/// The datagrams read while a UDP session's name was looked up are counted then, even
/// those a failed send leaves unsent: the first goes out, the port's ICMP refusal fails
/// the second send (side by side with nginx 1.22.1: "200|0|6" and "bytes from/to
/// client:6/0, bytes from/to upstream:0/2").
#[test]
fn udp_datagrams_read_while_resolving_count_when_a_send_fails() {
    let dns = DnsServer::start();
    dns.set(
        "slow.test",
        Zone { a: vec![ip("127.0.0.1")], ttl: 60, delay: Duration::from_millis(300), ..Zone::default() },
    );
    let closed = free_port();
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           log_format st '$status|$bytes_sent|$bytes_received';\n\
           access_log %%PREFIX%%a.log st;\n\
           resolver 127.0.0.1:{d};\n\
           server {{ listen 127.0.0.1:{port} udp; proxy_timeout 1s; set $h slow.test; proxy_pass $h:{closed}; }}\n\
         }}",
        d = dns.port,
    ));
    let _c = three_datagrams(port);
    assert_eq!(s.wait_lines("a.log", 1), vec!["200|0|6".to_string()]);
    let log = s.error_log();
    assert!(
        log.contains(&format!(
            "sendmsg() failed (111: Connection refused) while proxying and sending to upstream, udp client: 127.0.0.1, \
             server: 127.0.0.1:{port}, upstream: \"127.0.0.1:{closed}\", bytes from/to client:6/0, bytes from/to upstream:0/2"
        )),
        "{log}"
    );
}

/// A UDP session whose name is answered after QUIT: nginx's first
/// ngx_stream_proxy_process meets the exiting worker, so the upstream is connected but
/// sent nothing and the session ends at once ("disconnected on shutdown", 200), not at
/// its proxy_timeout; the second datagram, read while the name was looked up, counts
/// (side by side with nginx 1.22.1: "udp proxy ... connected" then that line,
/// "200|6|0").
#[test]
fn udp_name_answered_after_quit_sends_nothing() {
    let dns = DnsServer::start();
    dns.set("slow.test", Zone { a: vec![ip("127.0.0.1")], ttl: 60, delay: Duration::from_secs(2), ..Zone::default() });
    let up = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
    let up_port = up.local_addr().expect("addr").port();
    up.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let port = free_port();
    let s = Sluice::start_master(
        1,
        &format!(
            "events {{}}\nstream {{\n\
               log_format st '$status|$bytes_received|$upstream_bytes_sent';\n\
               access_log %%PREFIX%%a.log st;\n\
               resolver 127.0.0.1:{d} ipv6=off;\n\
               server {{ listen 127.0.0.1:{port} udp; proxy_timeout 30s; set $h slow.test; proxy_pass $h:{up_port}; }}\n\
             }}",
            d = dns.port,
        ),
    );
    assert!(wait_for(Duration::from_secs(10), || children_of(s.pid()).len() == 1), "a worker");
    let worker = children_of(s.pid())[0];
    // Both datagrams wait in the socket as the worker wakes: one read, one session.
    // SAFETY: signalling our own child's child.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.send_to(b"one", ("127.0.0.1", port)).expect("send");
    c.send_to(b"two", ("127.0.0.1", port)).expect("send");
    // SAFETY: as above.
    unsafe { libc::kill(worker, libc::SIGCONT) };
    assert!(wait_for(Duration::from_secs(5), || s.error_log().contains("udp client 127.0.0.1:")), "{}", s.error_log());
    let t0 = Instant::now();
    s.signal(libc::SIGQUIT);
    assert_eq!(s.wait_lines("a.log", 1), vec!["200|6|0".to_string()], "{}", s.error_log());
    assert!(t0.elapsed() < Duration::from_secs(10), "ended at proxy_timeout, not at the answer");
    let log = s.error_log();
    let connected = log.find(&format!("connected to 127.0.0.1:{up_port}")).expect("udp proxy connected");
    let ended = log.find("disconnected on shutdown").unwrap_or_else(|| panic!("{log}"));
    assert!(connected < ended, "{log}");
    let mut b = [0u8; 16];
    assert!(up.recv(&mut b).is_err(), "the upstream got a datagram");
}

/// A resolver server whose UDP connect() fails (an IPv6 server on a host without an
/// IPv6 route; here the broadcast address, EACCES): nginx's ngx_udp_connect logs it at
/// crit, numbers a connection for every attempt, and the name goes to the next server
/// at once (side by side with nginx 1.22.1: both answered at once, sessions *1 and *5).
#[test]
fn a_failed_connect_moves_to_the_next_server_at_once() {
    let dns = DnsServer::start();
    let up = two_backends();
    for name in ["x.test", "y.test"] {
        dns.set(name, Zone { a: vec![ip("127.0.0.2")], ttl: 60, ..Zone::default() });
    }
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format st '$connection $status';\n access_log %%PREFIX%%a.log st;\n \
         resolver 255.255.255.255:{d} 127.0.0.1:{d} ipv6=off;\n resolver_timeout 2s;\n \
         server {{ listen 127.0.0.1:{p}; set $n x.test:{up}; proxy_pass $n; }}\n \
         server {{ listen 127.0.0.1:{q}; set $n y.test:{up}; proxy_pass $n; }}\n}}\n",
        d = dns.port
    ));
    let started = Instant::now();
    assert_eq!(ask(p), "B2");
    assert_eq!(s.wait_lines("a.log", 1), ["1 200"]);
    assert_eq!(ask(q), "B2");
    assert!(started.elapsed() < Duration::from_millis(1500), "no wait for a resend: {:?}", started.elapsed());
    assert_eq!(s.wait_lines("a.log", 2), ["1 200", "5 200"]);
    let log = s.error_log();
    assert!(
        log.lines().any(|l| l.contains("[crit] ")
            && l.contains(&format!(
                "connect() failed (13: Permission denied) while resolving, resolver: 255.255.255.255:{}",
                dns.port
            ))),
        "{log}"
    );
}

/// A name asked again after every request for it timed out, within the resend time, is
/// asked afresh of the next server (ngx_resolve_name_locked: new queries, the next
/// server in turn), not again of the silent one (side by side with nginx 1.22.1: 500,
/// then 200, one query to each server).
#[test]
fn a_name_asked_again_after_timeouts_goes_to_the_next_server() {
    let (silent, dns) = (DnsServer::start(), DnsServer::start());
    silent.set("x.test", Zone { silent: true, ..Zone::default() });
    let up = two_backends();
    dns.set("x.test", Zone { a: vec![ip("127.0.0.2")], ttl: 60, ..Zone::default() });
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format st '$status';\n access_log %%PREFIX%%a.log st;\n \
         resolver 127.0.0.1:{d1} 127.0.0.1:{d2} ipv6=off;\n resolver_timeout 500ms;\n \
         server {{ listen 127.0.0.1:{p}; set $n x.test:{up}; proxy_pass $n; }}\n}}\n",
        d1 = silent.port,
        d2 = dns.port
    ));
    assert_eq!(ask(p), "");
    assert_eq!(ask(p), "B2");
    assert_eq!(s.wait_lines("a.log", 2), ["500", "200"]);
    assert_eq!((silent.queries("x.test").len(), dns.queries("x.test").len()), (1, 1));
}

/// A cached name unused for 30 s goes when another lookup ends (nginx's
/// ngx_resolver_expire in ngx_resolve_name_done), whatever its TTL: it is asked again,
/// and a changed answer is used (side by side with nginx 1.22.1: 127.0.0.2 at first,
/// 127.0.0.3 after 32 s idle and a lookup of another name, on a TTL of 300 s).
#[test]
fn idle_cached_names_go_after_30_seconds() {
    let dns = DnsServer::start();
    let up = two_backends();
    for name in ["x.test", "y.test"] {
        dns.set(name, Zone { a: vec![ip("127.0.0.2")], ttl: 300, ..Zone::default() });
    }
    let (p, q) = (free_port(), free_port());
    let _s = Sluice::start(&format!(
        "events {{}}\nstream {{\n resolver 127.0.0.1:{d} ipv6=off;\n \
         server {{ listen 127.0.0.1:{p}; set $n x.test:{up}; proxy_pass $n; }}\n \
         server {{ listen 127.0.0.1:{q}; set $n y.test:{up}; proxy_pass $n; }}\n}}\n",
        d = dns.port
    ));
    assert_eq!(ask(p), "B2");
    dns.set("x.test", Zone { a: vec![ip("127.0.0.3")], ttl: 300, ..Zone::default() });
    // Within its 30 s the cached answer stands.
    assert_eq!(ask(p), "B2");
    // The idle time is the behaviour under test: nothing to wait on but the clock.
    std::thread::sleep(Duration::from_secs(32));
    assert_eq!(ask(q), "B2");
    assert_eq!(ask(p), "B3");
    assert_eq!(dns.queries("x.test").len(), 2, "asked again");
}

/// Answers nginx takes and sluice did not (side by side with nginx 1.22.1): a truncated
/// datagram cut in the middle of a record goes to TCP; an alias answered alone is cached
/// for its TTL like any answer; an alias chain may take 50 queries; `valid=0` is "not
/// set" (the TTL counts); a refused TCP fallback is nginx's "recv() failed"; a name
/// over 255 bytes is asked (nginx sets no limit).
#[test]
fn answers_as_nginx_takes_them() {
    let dns = DnsServer::start();
    let be = two_backends();
    let many = vec![ip("127.0.0.2"); 40];
    dns.set("cut.test", Zone { a: many, ttl: 60, cut: 512, ..Zone::default() });
    dns.set("calias.test", Zone { cname: Some("ctarget.test".into()), ttl: 60, ..Zone::default() });
    dns.set("ctarget.test", Zone { a: vec![ip("127.0.0.3")], ttl: 60, ..Zone::default() });
    for i in 0..20 {
        dns.set(&format!("h{i}.test"), Zone { cname: Some(format!("h{}.test", i + 1)), ttl: 60, ..Zone::default() });
    }
    dns.set("h20.test", Zone { a: vec![ip("127.0.0.2")], ttl: 60, ..Zone::default() });
    dns.set("v0.test", Zone { a: vec![ip("127.0.0.3")], ttl: 60, ..Zone::default() });
    let long_name = format!("{}.test", vec!["l".repeat(60); 5].join("."));
    dns.set(&long_name, Zone { a: vec![ip("127.0.0.2")], ttl: 60, ..Zone::default() });
    let refusing = DnsServer::start_udp_only();
    refusing.set("tc.test", Zone { a: vec![ip("127.0.0.2")], ttl: 60, truncate: true, ..Zone::default() });
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let [cut, alias, chain, v0, tc, long] = ports[..] else { unreachable!() };
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           resolver_timeout 5s;\n\
           map $server_port $name {{ {cut} cut.test; {alias} calias.test; {chain} h0.test; {long} {long_name}; }}\n\
           server {{ listen 127.0.0.1:{cut}; listen 127.0.0.1:{alias}; listen 127.0.0.1:{chain}; listen 127.0.0.1:{long}; proxy_pass $name:{be}; }}\n\
           server {{ listen 127.0.0.1:{v0}; resolver 127.0.0.1:{d} valid=0 ipv6=off; set $n v0.test; proxy_pass $n:{be}; }}\n\
           server {{ listen 127.0.0.1:{tc}; resolver 127.0.0.1:{r} ipv6=off; resolver_timeout 500ms; set $n tc.test; proxy_pass $n:{be}; }}\n\
         }}",
        d = dns.port,
        r = refusing.port,
    ));
    assert_eq!(ask(cut), "B2", "{}", s.error_log());
    assert_eq!(dns.queries("cut.test"), vec![(1, "udp"), (1, "tcp")]);
    assert_eq!((ask(alias), ask(alias)), ("B3".into(), "B3".into()), "{}", s.error_log());
    assert_eq!(dns.queries("calias.test").len(), 1, "the alias step is cached");
    assert_eq!(dns.queries("ctarget.test").len(), 1);
    assert_eq!(ask(chain), "B2", "{}", s.error_log());
    assert_eq!(ask(long), "B2", "a 306-byte name is asked and answered\n{}", s.error_log());
    assert_eq!((ask(v0), ask(v0)), ("B3".into(), "B3".into()));
    assert_eq!(dns.queries("v0.test").len(), 1, "valid=0 keeps the answer for its TTL");
    assert_eq!(ask(tc), "");
    let log = s.error_log();
    let refused =
        format!("recv() failed (111: Connection refused) while resolving, resolver: 127.0.0.1:{}", refusing.port);
    assert!(log.contains(&refused), "{log}");
    assert!(log.contains("tc.test could not be resolved (110: Operation timed out)"), "{log}");
    assert!(!log.contains("short DNS response"), "{log}");
}

/// The resolver has one socket per DNS server, as nginx: every query goes out from the
/// same source port, and an answer for a name no longer asked (a duplicate) is
/// "unexpected DNS response" (side by side with nginx 1.22.1).
#[test]
fn answers_for_names_not_asked_are_unexpected() {
    let dns = DnsServer::start();
    let be = two_backends();
    for n in ["one.test", "two.test"] {
        dns.set(n, Zone { a: vec![ip("127.0.0.2")], ttl: 60, twice: true, ..Zone::default() });
    }
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           map $server_port $name {{ {p} one.test; {q} two.test; }}\n\
           server {{ listen 127.0.0.1:{p}; listen 127.0.0.1:{q}; proxy_pass $name:{be}; }}\n\
         }}",
        d = dns.port,
    ));
    assert_eq!((ask(p), ask(q)), ("B2".into(), "B2".into()), "{}", s.error_log());
    for n in ["one.test", "two.test"] {
        let line = format!("[error] {pid}#{pid}: unexpected DNS response for {n}\n", pid = s.pid());
        wait_for(Duration::from_secs(10), || s.error_log().contains(&line));
        assert!(s.error_log().contains(&line), "{}", s.error_log());
    }
    let ports = dns.source_ports();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[0], ports[1], "both names asked from one socket");
}

/// An alias is followed only when the answer that ends the name has it: an A answer of
/// a bare CNAME and then an empty AAAA answer is "Host not found" (ngx_resolver_process_a
/// keeps no alias from the first answer; side by side with nginx 1.22.1: 500, no query
/// for the target), while aliases in both answers are followed.
#[test]
fn an_alias_in_the_first_answer_only_is_not_followed() {
    let dns = DnsServer::start();
    let be = two_backends();
    let alias = |a_only| Zone { cname: Some("target.test".into()), ttl: 60, cname_a_only: a_only, ..Zone::default() };
    dns.set("first.test", alias(true));
    dns.set("both.test", alias(false));
    dns.set("target.test", Zone { a: vec![ip("127.0.0.3")], ttl: 60, ..Zone::default() });
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:{d};\n\
           map $server_port $name {{ {p} first.test; {q} both.test; }}\n\
           server {{ listen 127.0.0.1:{p}; listen 127.0.0.1:{q}; proxy_pass $name:{be}; }}\n\
         }}",
        d = dns.port,
    ));
    assert_eq!(ask(p), "", "{}", s.error_log());
    assert_eq!(dns.queries("first.test"), vec![(1, "udp"), (28, "udp")]);
    assert!(dns.queries("target.test").is_empty());
    assert!(s.error_log().contains("first.test could not be resolved (3: Host not found)"), "{}", s.error_log());
    assert_eq!(ask(q), "B3", "{}", s.error_log());
    assert_eq!(dns.queries("target.test"), vec![(1, "udp"), (28, "udp")]);
}

/// Truncated answers asked again over TCP: nginx keeps its TCP connection to the server
/// open and reuses it, so only the first fallback takes a connection number (side by
/// side with nginx 1.22.1: sessions *1, *5, *7; sluice numbered each fallback: *1, *5, *8).
#[test]
fn tcp_fallbacks_share_one_connection_number() {
    let dns = DnsServer::start();
    let be = two_backends();
    for n in ["tc1.test", "tc2.test"] {
        dns.set(n, Zone { a: vec![ip("127.0.0.2")], ttl: 60, truncate: true, ..Zone::default() });
    }
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let [a, b, c] = ports[..] else { unreachable!() };
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           log_format n '$connection';\n\
           access_log %%PREFIX%%n.log n;\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           map $server_port $name {{ {a} tc1.test; {b} tc2.test; {c} tc1.test; }}\n\
           server {{ listen 127.0.0.1:{a}; listen 127.0.0.1:{b}; listen 127.0.0.1:{c}; proxy_pass $name:{be}; }}\n\
         }}",
        d = dns.port,
    ));
    for (i, p) in [a, b, c].into_iter().enumerate() {
        assert_eq!(ask(p), "B2", "{}", s.error_log());
        s.wait_lines("n.log", i + 1);
    }
    assert_eq!(dns.queries("tc2.test"), vec![(1, "udp"), (1, "tcp")]);
    assert_eq!(s.wait_lines("n.log", 3), ["1", "5", "7"]);
}

/// Holds a connection open after a greeting, until the peer closes.
fn greet_and_hold(mut c: TcpStream) {
    let _ = c.write_all(b"h\n");
    let mut b = [0u8; 64];
    while matches!(c.read(&mut b), Ok(n) if n > 0) {}
}

/// nginx keeps its resolver's UDP connection to a DNS server open once used, and it holds
/// one of the worker's `worker_connections`: at the limit, the client that still fits is
/// accepted and its upstream connection is the one refused ("... not enough while
/// connecting to upstream", with its context), one session sooner than without the
/// resolver (side by side with nginx 1.22.1: sluice held one session more).
#[test]
fn resolver_connection_takes_a_worker_connection() {
    let dns = DnsServer::start();
    dns.set("app.test", Zone { a: vec![ip("127.0.0.1")], ttl: 3600, ..Zone::default() });
    let hold = backend(greet_and_hold);
    let (a, b) = (free_port(), free_port());
    // 16 slots: 2 listeners, the resolver's connection, then 6 sessions of 2 and one
    // more client.
    let s = Sluice::start(&format!(
        "events {{ worker_connections 16; }}\nstream {{\n\
           log_format n '$status';\n\
           server {{ listen 127.0.0.1:{a}; resolver 127.0.0.1:{d} ipv6=off; set $h app.test; proxy_pass $h:{hold}; \
                     access_log %%PREFIX%%a.log n; }}\n\
           server {{ listen 127.0.0.1:{b}; proxy_pass 127.0.0.1:{hold}; }}\n\
         }}",
        d = dns.port,
    ));
    let greet = |port: u16| -> (TcpStream, Vec<u8>) {
        let mut c = connect(port);
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut got = vec![0u8; 2];
        let n = c.read(&mut got).unwrap_or(0);
        got.truncate(n);
        (c, got)
    };
    let (first, got) = greet(a);
    assert_eq!(got, b"h\n", "the resolved session");
    drop(first);
    // Its two connections are given back when sluice has seen the close (logged).
    s.wait_lines("a.log", 1);
    let mut held = Vec::new();
    for i in 0..6 {
        let (c, got) = greet(b);
        assert_eq!(got, b"h\n", "session {i}\n{}", s.error_log());
        held.push(c);
    }
    let (_last, got) = greet(b);
    assert!(got.is_empty(), "a seventh session fitted: {got:?}\n{}", s.error_log());
    let want = "[alert] ";
    let msg =
        "16 worker_connections are not enough while connecting to upstream, client: 127.0.0.1, server: 127.0.0.1:";
    assert!(
        wait_for(Duration::from_secs(5), || s.error_log().lines().any(|l| l.contains(want) && l.contains(msg))),
        "{}",
        s.error_log()
    );
}

/// `resolver_timeout 0` and a name nobody answers: a worker told to shut down does not
/// wait for the session (it has no timer, only the resolver's cancelable resend): as
/// nginx 1.22.1's, it exits at once with "exiting", an alert for the client's socket
/// and "aborting", and the client sees its connection end.
#[test]
fn shutdown_does_not_wait_for_an_untimed_resolution() {
    let dns = DnsServer::start();
    dns.set("never.test", Zone { silent: true, ..Zone::default() });
    let p = free_port();
    let mut s = Sluice::start_master(
        1,
        &format!(
            "events {{}}\nstream {{\n resolver 127.0.0.1:{d};\n resolver_timeout 0;\n \
             server {{ listen 127.0.0.1:{p}; set $t never.test:80; proxy_pass $t; }}\n}}\n",
            d = dns.port
        ),
    );
    let mut c = connect(p);
    assert!(wait_for(Duration::from_secs(5), || !dns.queries("never.test").is_empty()));
    let started = Instant::now();
    s.signal(libc::SIGQUIT);
    let mut buf = [0u8; 16];
    assert_eq!(c.read(&mut buf).ok(), Some(0), "the client's connection ends");
    assert!(started.elapsed() < Duration::from_secs(3), "at once, not after a resend");
    assert_eq!(s.stop(), Some(0));
    let log = s.error_log();
    let lines: Vec<&str> = log.lines().map(|l| l.get(20..).unwrap_or("")).collect();
    let at = lines.iter().position(|l| l.ends_with(": exiting")).expect("exiting");
    let slot = lines[at + 1].split(" left in connection ").nth(1).unwrap_or("");
    assert!(lines[at + 1].contains(": *1 open socket #") && slot == "2", "{log}");
    assert!(lines[at + 2].ends_with(": aborting") && lines[at + 3].ends_with(": exit"), "{log}");
}

/// Replies nginx 1.22.1 does not use (side by side): records but no address or alias
/// ("no A or CNAME types in DNS response": asked alone, with `ipv6=off`, the name waits
/// for its timeout), and an address under the root name ("invalid name in DNS
/// response": the reply is dropped and the name times out too).
#[test]
fn replies_without_usable_records_wait_for_the_timeout() {
    let dns = DnsServer::start();
    dns.set("txt.test", Zone { txt: true, ..Zone::default() });
    dns.set("root.test", Zone { root_owner: true, ..Zone::default() });
    let (p1, p2) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format st '$server_port $status';\n access_log %%PREFIX%%a.log st;\n \
         resolver 127.0.0.1:{d} ipv6=off;\n resolver_timeout 500ms;\n \
         server {{ listen 127.0.0.1:{p1}; set $t txt.test:80; proxy_pass $t; }}\n \
         server {{ listen 127.0.0.1:{p2}; set $n root.test:80; proxy_pass $n; }}\n}}\n",
        d = dns.port
    ));
    let started = Instant::now();
    assert_eq!(ask(p1), "");
    assert!(started.elapsed() >= Duration::from_millis(400), "waited for resolver_timeout");
    assert_eq!(ask(p2), "");
    let lines = s.wait_lines("a.log", 2);
    assert_eq!(lines, [format!("{p1} 500"), format!("{p2} 500")]);
    let log = s.error_log();
    for want in [
        "unexpected RR type 16 in DNS response",
        "no A or CNAME types in DNS response",
        "txt.test could not be resolved (110: Operation timed out)",
        "invalid name in DNS response",
        "root.test could not be resolved (110: Operation timed out)",
    ] {
        assert!(log.contains(want), "{want}\n{log}");
    }
}

/// A send to the first server that fails (its port unreachable: the second query's
/// send sees the ICMP error) is tried again at once with the next server, as nginx's
/// ngx_resolve_name_locked does ("immediately retry once on failure"), not after the
/// 5 s resend (recorded side by side with nginx 1.22.1: answered in 0.1 s).
#[test]
fn a_failed_send_moves_to_the_next_server_at_once() {
    let dns = DnsServer::start();
    let up = two_backends();
    dns.set("x.test", Zone { a: vec![ip("127.0.0.2")], ttl: 60, ..Zone::default() });
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n resolver 127.0.0.1:{dead_port} 127.0.0.1:{d};\n resolver_timeout 8s;\n \
         server {{ listen 127.0.0.1:{p}; set $n x.test:{up}; proxy_pass $n; }}\n}}\n",
        d = dns.port
    ));
    let started = Instant::now();
    assert_eq!(ask(p), "B2", "{}", s.error_log());
    assert!(started.elapsed() < Duration::from_secs(3), "answered before a resend: {:?}", started.elapsed());
    let want = format!("send() failed (111: Connection refused) while resolving, resolver: 127.0.0.1:{dead_port}");
    assert_eq!(s.error_log().matches(&want).count(), 1, "{}", s.error_log());
}

/// Answers that come late, as nginx 1.22.1 takes them (side by side): one after the
/// request's `resolver_timeout` still fills the cache (nginx keeps the name until its
/// resend would be due), so the next request is served with no query; and one to the
/// first send that comes after the 5 s resend is still taken (the resend goes out from
/// the same socket, with the same ID).
#[test]
fn late_answers_are_taken() {
    let dns = DnsServer::start();
    let up = two_backends();
    dns.set(
        "late.test",
        Zone { a: vec![ip("127.0.0.2")], ttl: 60, delay: Duration::from_millis(700), ..Zone::default() },
    );
    dns.set(
        "slow.test",
        Zone { a: vec![ip("127.0.0.3")], ttl: 60, delay: Duration::from_millis(5600), ..Zone::default() },
    );
    let (p1, p2) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format st '$server_port $status';\n access_log %%PREFIX%%a.log st;\n \
         resolver 127.0.0.1:{d} ipv6=off;\n \
         server {{ listen 127.0.0.1:{p1}; resolver_timeout 300ms; set $n late.test:{up}; proxy_pass $n; }}\n \
         server {{ listen 127.0.0.1:{p2}; resolver_timeout 10s; set $n slow.test:{up}; proxy_pass $n; }}\n}}\n",
        d = dns.port
    ));
    assert_eq!(ask(p1), "");
    assert!(s.error_log().contains("late.test could not be resolved (110: Operation timed out)"));
    // The answer arrives 0.7 s after the query: once sluice has read it, it is cached.
    assert!(dns.wait_late_replies_read(1), "the late answer was sent and read");
    assert_eq!(ask(p1), "B2");
    assert_eq!(dns.queries("late.test").len(), 1, "served from the cache");

    let started = Instant::now();
    let mut c = connect(p2);
    c.set_read_timeout(Some(Duration::from_secs(9))).expect("timeout");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert_eq!(out, "B3", "{}", s.error_log());
    assert!(started.elapsed() < Duration::from_secs(8), "the first answer, not the resend's");
    assert_eq!(dns.queries("slow.test").len(), 2, "asked, then asked again at 5 s");
    assert_eq!(s.wait_lines("a.log", 3), [format!("{p1} 500"), format!("{p1} 200"), format!("{p2} 200")]);
}

/// While a UDP session's name is looked up, its later datagrams wait in nginx's
/// proxy_buffer_size buffer: 30 datagrams of 1008 bytes with a 16k buffer are the
/// first, 16 whole and one cut to the 256 bytes left; the rest are lost, silently
/// (side by side with nginx 1.22.1: 18 packets and the same byte counts).
#[test]
fn udp_datagrams_wait_in_the_buffer_while_resolving() {
    let dns = DnsServer::start();
    dns.set(
        "slow.test",
        Zone { a: vec![ip("127.0.0.1")], ttl: 60, delay: Duration::from_millis(400), ..Zone::default() },
    );
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let bport = backend.local_addr().expect("addr").port();
    backend.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let port = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n resolver 127.0.0.1:{d};\n \
         server {{ listen 127.0.0.1:{port} udp; set $h slow.test; proxy_pass $h:{bport}; proxy_timeout 1s; }}\n}}",
        d = dns.port,
    ));
    let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.connect(("127.0.0.1", port)).expect("connect");
    for i in 0..30u8 {
        c.send(&[i; 1008]).expect("send");
    }
    let mut sizes = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = backend.recv(&mut buf) {
        sizes.push(n);
        backend.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    }
    let mut want = vec![1008; 17];
    want.push(256);
    assert_eq!(sizes, want);
    let done =
        "udp timed out, packets from/to client:18/0, bytes from/to client:17392/0, bytes from/to upstream:0/17392";
    assert!(wait_for(Duration::from_secs(5), || s.error_log().contains(done)), "{}", s.error_log());
    assert!(!s.error_log().contains("dropped"));
}

/// A DNS server that answers over TCP with an endless stream of frames: each frame is
/// taken as it is read (nginx's "invalid TCP DNS response" for each), so the worker's
/// memory stays flat and its other sessions are served meanwhile; the name times out.
/// (Frames used to be collected until the socket was empty, which a fast server never
/// lets happen: gigabytes, and a frozen worker.)
#[test]
fn tcp_dns_server_flooding_frames_is_read_in_constant_memory() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // A UDP port whose TCP twin is free too (as DnsServer finds one).
    let (udp, tcp) = (0..50)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            let port = udp.local_addr().ok()?.port();
            Some((udp, TcpListener::bind(("127.0.0.1", port)).ok()?))
        })
        .expect("a UDP and TCP port pair");
    let dport = udp.local_addr().expect("addr").port();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // UDP: every query comes back truncated, so it is asked again over TCP.
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        udp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let mut r = buf[..n].to_vec();
            r[2] |= 0x82; // QR, TC
            let _ = udp.send_to(&r, peer);
        }
    });
    let flooding = stop.clone();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = tcp.accept() {
            let mut frame = vec![0u8; 65537];
            frame[0] = 0xff;
            frame[1] = 0xff;
            // Three seconds at most: a worker that collects frames must not take the
            // machine's memory with it.
            let end = std::time::Instant::now() + Duration::from_secs(3);
            while !flooding.load(Ordering::Relaxed) && std::time::Instant::now() < end && c.write_all(&frame).is_ok() {}
        }
    });
    let (p, pong) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n resolver 127.0.0.1:{dport} ipv6=off;\n resolver_timeout 3s;\n \
         server {{ listen 127.0.0.1:{p}; set $b evil.test; proxy_pass $b:9; }}\n \
         server {{ listen 127.0.0.1:{pong}; return pong; }}\n}}\n"
    ));
    let rss = |pid: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
            .unwrap_or(0)
    };
    let rss0 = rss(s.pid());
    let client = std::thread::spawn(move || exchange(p, b""));
    assert!(
        wait_for(Duration::from_secs(5), || s.error_log().contains("invalid TCP DNS response")),
        "{}",
        s.error_log()
    );
    let mut peak = rss0;
    for _ in 0..10 {
        assert_eq!(exchange(pong, b""), b"pong", "another session waited on the flood");
        peak = peak.max(rss(s.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(client.join().expect("client").is_empty());
    assert!(peak < rss0 + 64 * 1024, "worker RSS {rss0} kB -> {peak} kB during the flood");
    assert!(s.error_log().contains("evil.test could not be resolved (110: Operation timed out)"));
}

/// A UDP session's datagrams that came while its name was looked up were read by nginx
/// then, before the upstream and its `proxy_upload_rate`: they all go (none is gated or
/// paced away), and an empty one is counted but never sent (an empty buffer). nginx
/// 1.22.1 side by side: the upstream got "r0" and "r3" of r0, "", "", r3, and with a
/// rate of 1 byte/s all of r0, r1, r2.
#[test]
fn udp_datagrams_queued_during_resolution_are_sent_as_nginx_read_them() {
    let dns = DnsServer::start();
    for name in ["slow1.test", "slow2.test"] {
        dns.set(
            name,
            Zone { a: vec![ip("127.0.0.1")], ttl: 3600, delay: Duration::from_millis(300), ..Zone::default() },
        );
    }
    let up = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
    let up_port = up.local_addr().expect("addr").port();
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           server {{ listen 127.0.0.1:{p} udp; set $h slow1.test; proxy_pass $h:{up_port}; proxy_timeout 1s; }}\n\
           server {{ listen 127.0.0.1:{q} udp; set $h slow2.test; proxy_pass $h:{up_port}; proxy_timeout 1s; \
                     proxy_upload_rate 1; }}\n\
         }}",
        d = dns.port
    ));
    up.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    let got = |n: usize| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut b = [0u8; 64];
        while out.len() < n {
            match up.recv(&mut b) {
                Ok(k) => out.push(b[..k].to_vec()),
                Err(_) => break,
            }
        }
        out
    };
    for (port, sent, want) in [
        (p, [&b"r0"[..], b"", b"", b"r3"], vec![b"r0".to_vec(), b"r3".to_vec()]),
        (q, [&b"r0"[..], b"r1", b"r2", b"r3"], vec![b"r0".to_vec(), b"r1".to_vec(), b"r2".to_vec(), b"r3".to_vec()]),
    ] {
        let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        c.connect(("127.0.0.1", port)).expect("connect");
        for d in sent {
            c.send(d).expect("send");
            std::thread::sleep(Duration::from_millis(20));
        }
        let n = want.len();
        assert_eq!(got(n + 1), want, "{}", s.error_log());
    }
    let log = s.error_log();
    assert!(
        log.contains("udp timed out, packets from/to client:4/0, bytes from/to client:4/0, bytes from/to upstream:0/4"),
        "{log}"
    );
}

/// `proxy_requests` counts the datagrams that come while the name is looked up, as
/// nginx reads each one as it comes: once the count is in, the client's next datagrams
/// start another session (nginx 1.22.1 side by side: r0..r3 with `proxy_requests 2`
/// made two sessions of two; sluice put all four in one).
#[test]
fn udp_proxy_requests_count_datagrams_during_resolution() {
    let dns = DnsServer::start();
    dns.set(
        "slow3.test",
        Zone { a: vec![ip("127.0.0.1")], ttl: 3600, delay: Duration::from_millis(300), ..Zone::default() },
    );
    let up = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
    let up_port = up.local_addr().expect("addr").port();
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           resolver 127.0.0.1:{d} ipv6=off;\n\
           server {{ listen 127.0.0.1:{p} udp; set $h slow3.test; proxy_pass $h:{up_port}; proxy_timeout 500ms; \
                     proxy_requests 2; }}\n\
         }}",
        d = dns.port
    ));
    let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.connect(("127.0.0.1", p)).expect("connect");
    for d in [&b"r0"[..], b"r1", b"r2", b"r3"] {
        c.send(d).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    up.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    let mut senders = std::collections::BTreeMap::<u16, Vec<Vec<u8>>>::new();
    let mut b = [0u8; 16];
    for _ in 0..4 {
        let Ok((n, from)) = up.recv_from(&mut b) else { break };
        senders.entry(from.port()).or_default().push(b[..n].to_vec());
    }
    let mut sessions: Vec<Vec<Vec<u8>>> = senders.into_values().collect();
    sessions.sort();
    assert_eq!(sessions, [[b"r0".to_vec(), b"r1".to_vec()], [b"r2".to_vec(), b"r3".to_vec()]], "{}", s.error_log());
    let done = "udp timed out, packets from/to client:2/0, bytes from/to client:4/0, bytes from/to upstream:0/4";
    assert!(wait_for(Duration::from_secs(5), || s.error_log().matches(done).count() == 2), "{}", s.error_log());
}
