//! Active health checks at run time (nginx Plus's ngx_stream_upstream_hc_module): every
//! `interval`, each peer of a checked upstream gets a probe — a TCP connect, the `match`
//! block's `send` and `expect`, or for `udp` a datagram answered by no ICMP error — from
//! whichever worker claims it first in the upstream's zone. The verdicts go to the zone
//! (upstream/health.rs), where every worker's balancer reads them.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use slab::Slab;

use crate::core::addr::Addr;
use crate::core::conf::Level;
use crate::core::conn::Conn;
use crate::core::log::LogContext;
use crate::core::shm::monotonic_ms;
use crate::core::timer::TimerId;
use crate::stream::cycle::Server;
use crate::stream::dgram_owners::DGRAM_BIT;
use crate::stream::resolver::{Io, RESOLVER_BIT};
use crate::stream::upstream_hc_module::{Expect, HealthCheck, UDP_PROBE};
use crate::upstream::health::{Change, HealthTable};

/// The tokens of probe sockets and timers: both high bits, which no session, resolver
/// or datagram socket token has together.
pub const HEALTH_BITS: usize = RESOLVER_BIT | DGRAM_BIT;
const SLOT_BITS: u32 = 32;
const GEN_MASK: u32 = (1 << 20) - 1;

/// One `health_check` directive bound to its upstream group.
pub struct Check {
    server: Rc<Server>,
    /// Which of the server's `health_check`s.
    k: usize,
    pub group: usize,
    pub table: HealthTable,
    upstream: Rc<str>,
    /// When this worker looks for due peers again.
    next: Instant,
}

impl Check {
    pub fn new(
        server: Rc<Server>,
        k: usize,
        group: usize,
        table: HealthTable,
        upstream: Rc<str>,
        now: Instant,
    ) -> Check {
        Check { server, k, group, table, upstream, next: now }
    }

    fn conf(&self) -> &HealthCheck {
        &self.server.confs.upstream_hc.checks[self.k]
    }

    fn timeout(&self) -> Duration {
        self.server.confs.upstream_hc.timeout.get()
    }
}

/// A peer as a check sees it.
pub struct CheckTarget {
    pub index: usize,
    pub addr: Addr,
    pub name: Rc<str>,
    pub hash: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connecting,
    /// `proxy_ssl on`: the check speaks TLS, as the server's sessions do.
    Handshaking,
    Sending,
    Reading,
}

impl Step {
    fn action(self) -> &'static str {
        match self {
            Step::Connecting => "connecting to upstream",
            Step::Handshaking => "SSL handshaking to upstream",
            Step::Sending => "sending to upstream",
            Step::Reading => "reading from upstream",
        }
    }
}

struct Probe {
    check: usize,
    peer: usize,
    hash: u32,
    name: Rc<str>,
    sock: Conn,
    step: Step,
    buf: Vec<u8>,
    sent: usize,
    timer: Option<TimerId>,
    gen: u32,
}

/// How a probe ended.
enum Verdict {
    Pass,
    /// With the error line to log, if any (a response that does not match has none).
    Fail(Option<(String, Option<io::Error>)>),
}

/// The log context of a check's lines: " while ACTION, health check "" of peer NAME in
/// upstream "UPSTREAM"".
struct HcContext<'a> {
    action: &'a str,
    peer: &'a str,
    upstream: &'a str,
}

impl LogContext for HcContext<'_> {
    fn write_context(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            " while {}, health check \"\" of peer {} in upstream \"{}\"",
            self.action, self.peer, self.upstream
        );
    }
}

#[derive(Default)]
pub struct HealthChecks {
    pub checks: Vec<Check>,
    probes: Slab<Probe>,
    gen: u32,
}

impl HealthChecks {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Probes under way (each holds a connection, as nginx's checks do).
    pub fn in_flight(&self) -> usize {
        self.probes.len()
    }

    /// When this worker next looks for due peers.
    pub fn next_due(&self) -> Option<Instant> {
        self.checks.iter().map(|c| c.next).min()
    }

    /// Whether check `c` is due at `now`.
    pub fn due(&self, c: usize, now: Instant) -> bool {
        self.checks.get(c).is_some_and(|x| x.next <= now)
    }

    /// Probe the peers of check `c` that are due and that no other worker has taken;
    /// then look again when the next one is due (or an interval from now).
    pub fn tick(&mut self, c: usize, peers: &[CheckTarget], io: &mut Io<'_>) {
        let Some(check) = self.checks.get(c) else { return };
        let (interval, timeout) = (check.conf().interval, check.timeout());
        let hold = (interval + timeout).as_millis() as u64;
        let now_ms = monotonic_ms();
        let mut start = Vec::new();
        for p in peers {
            let busy = self.probes.iter().any(|(_, x)| x.check == c && x.peer == p.index);
            if !busy && check.table.claim(p.index, p.hash, now_ms, hold) {
                start.push(p);
            }
        }
        let next_ms = self.checks[c].table.next_due(&peers.iter().map(|p| p.index).collect::<Vec<_>>());
        let wait = next_ms.map_or(interval, |d| Duration::from_millis(d.saturating_sub(now_ms)));
        self.checks[c].next = io.now + wait.clamp(Duration::from_millis(1), interval);
        for p in start {
            self.start(c, p, io);
        }
    }

    fn start(&mut self, c: usize, p: &CheckTarget, io: &mut Io<'_>) {
        let check = &self.checks[c];
        let hc = check.conf();
        let mut addr = p.addr.clone();
        if let (Some(port), Addr::Inet(a)) = (hc.port, &mut addr) {
            a.set_port(port);
        }
        let sock = match (&addr, hc.udp) {
            (Addr::Inet(a), false) => mio::net::TcpStream::connect(*a).map(Conn::Tcp),
            (Addr::Inet(a), true) => udp_socket(*a).map(Conn::Dgram),
            (Addr::Unix(path), _) => mio::net::UnixStream::connect(path).map(Conn::Unix),
        };
        let gen = self.gen;
        self.gen = (self.gen + 1) & GEN_MASK;
        let mut sock = match sock {
            Ok(s) => s,
            Err(e) => {
                let v = Verdict::Fail(Some(("connect() failed".into(), Some(e))));
                self.record(c, p.index, p.hash, &p.name, Step::Connecting, v, io.now);
                return;
            }
        };
        let slot = self.probes.vacant_key();
        let token = Token(HEALTH_BITS | (gen as usize) << SLOT_BITS | slot);
        if let Err(e) = sock.register(io.registry, token, Interest::READABLE | Interest::WRITABLE) {
            let v = Verdict::Fail(Some(("epoll_ctl() failed".into(), Some(e))));
            self.record(c, p.index, p.hash, &p.name, Step::Connecting, v, io.now);
            return;
        }
        let mut probe = Probe {
            check: c,
            peer: p.index,
            hash: p.hash,
            name: p.name.clone(),
            sock,
            step: if hc.udp { Step::Sending } else { Step::Connecting },
            buf: Vec::new(),
            sent: 0,
            timer: None,
            gen,
        };
        io.timers.set(&mut probe.timer, io.now + check.timeout(), token);
        self.probes.insert(probe);
        self.advance(slot, None, io);
    }

    fn probe_of(&self, token: usize) -> Option<usize> {
        let slot = token & ((1 << SLOT_BITS) - 1);
        let gen = ((token & !HEALTH_BITS) >> SLOT_BITS) as u32;
        self.probes.get(slot).filter(|p| p.gen == gen).map(|_| slot)
    }

    /// A probe socket's event.
    pub fn on_event(&mut self, token: usize, io: &mut Io<'_>) {
        if let Some(slot) = self.probe_of(token) {
            self.advance(slot, Some(false), io);
        }
    }

    /// A probe's timer: the check took longer than `health_check_timeout`.
    pub fn on_timer(&mut self, token: usize, id: TimerId, io: &mut Io<'_>) {
        let Some(slot) = self.probe_of(token) else { return };
        if self.probes[slot].timer != Some(id) {
            return;
        }
        self.probes[slot].timer = None;
        self.advance(slot, Some(true), io);
    }

    /// Move a probe on as far as its socket allows; finish it when it has a verdict.
    /// `event`: None when it starts, else whether its timer (not its socket) fired.
    fn advance(&mut self, slot: usize, event: Option<bool>, io: &mut Io<'_>) {
        let v = {
            let p = &mut self.probes[slot];
            let check = &self.checks[p.check];
            step(p, check, event)
        };
        let Some(v) = v else { return };
        let mut p = self.probes.remove(slot);
        let _ = p.sock.deregister(io.registry);
        io.timers.clear(&mut p.timer);
        self.record(p.check, p.peer, p.hash, &p.name, p.step, v, io.now);
    }

    /// Store a verdict for every worker and log what it changed.
    #[allow(clippy::too_many_arguments)]
    fn record(&mut self, c: usize, peer: usize, hash: u32, name: &str, at: Step, v: Verdict, now: Instant) {
        let check = &mut self.checks[c];
        let hc = check.conf();
        let jitter = hc.jitter.as_millis() as u64;
        let jitter = if jitter > 0 { rand::random::<u64>() % jitter } else { 0 };
        let interval = hc.interval;
        let due = monotonic_ms() + interval.as_millis() as u64 + jitter;
        let (fails, passes) = (hc.fails, hc.passes);
        let log = check.server.error_log.clone();
        let mut ctx = HcContext { action: at.action(), peer: name, upstream: &check.upstream };
        let passed = matches!(v, Verdict::Pass);
        if let Verdict::Fail(Some((msg, err))) = &v {
            log.write(Level::Error, None, msg, err.as_ref(), Some(&ctx));
        } else if let Verdict::Fail(None) = &v {
            ctx.action = "checking response";
        }
        match check.table.store(peer, hash, passed, fails, passes, due) {
            Change::BecameUnhealthy => log.write(Level::Warn, None, "peer is unhealthy", None, Some(&ctx)),
            Change::BecameHealthy => log.write(Level::Notice, None, "peer is healthy", None, Some(&ctx)),
            Change::None => {}
        }
        check.next = check.next.min(now + interval);
    }
}

/// A connected UDP socket for a datagram check.
fn udp_socket(to: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let any: SocketAddr =
        if to.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let s = mio::net::UdpSocket::bind(any)?;
    s.connect(to)?;
    Ok(s)
}

/// One probe's progress: None while it waits on its socket, else its verdict.
fn step(p: &mut Probe, check: &Check, event: Option<bool>) -> Option<Verdict> {
    let hc = check.conf();
    let buffer = check.server.confs.proxy.buffer_size.get().max(1);
    let udp = p.sock.is_dgram();
    let m = hc.matcher.as_deref();
    let expect = m.and_then(|m| m.expect.as_ref());
    if event == Some(true) {
        // A datagram check without `expect` passes when no ICMP error came back.
        if udp && expect.is_none() {
            return Some(Verdict::Pass);
        }
        let e = io::Error::from_raw_os_error(libc::ETIMEDOUT);
        return Some(Verdict::Fail(Some(("upstream timed out".into(), Some(e)))));
    }
    if p.step == Step::Connecting {
        // The connect is over when the socket reports (writable, or an error).
        event?;
        match p.sock.take_error() {
            Ok(Some(e)) | Err(e) => return Some(Verdict::Fail(Some(("connect() failed".into(), Some(e))))),
            Ok(None) => {}
        }
        let ssl = &check.server.confs.proxy_ssl;
        if let Some(ctx) = ssl.ctx.as_ref() {
            let (_, sni) = crate::stream::proxy_ssl::static_ssl_name(ssl, &check.upstream);
            if let Err(msg) = p.sock.start_tls_client(ctx, sni.as_deref(), None, None) {
                return Some(Verdict::Fail(Some((msg, None))));
            }
            p.step = Step::Handshaking;
        } else if connect_only(hc) {
            // Its lines name the connect.
            return Some(Verdict::Pass);
        } else {
            p.step = Step::Sending;
        }
    }
    if p.step == Step::Handshaking {
        if let Some(v) = handshake(p, check) {
            return Some(v);
        }
        if p.step == Step::Handshaking {
            return None;
        }
        if connect_only(hc) {
            return Some(Verdict::Pass);
        }
    }
    if p.step == Step::Sending {
        let data: &[u8] = match m {
            Some(m) => &m.send,
            None if udp => UDP_PROBE,
            None => b"",
        };
        // A datagram goes whole, once; a stream's bytes as the socket takes them.
        while p.sent < data.len() || (udp && p.sent == 0) {
            match p.sock.write(&data[p.sent..]) {
                Ok(_) if udp => p.sent = data.len().max(1),
                Ok(n) => p.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(fail_io(e, if udp { "send() failed" } else { "writev() failed" })),
            }
        }
        if expect.is_none() && !udp {
            return Some(Verdict::Pass);
        }
        p.step = Step::Reading;
    }
    // Reading: the answer, up to `proxy_buffer_size` bytes (one datagram for UDP).
    // Read straight into the probe's buffer, so a datagram up to the buffer's size is
    // looked at whole.
    loop {
        let had = p.buf.len();
        p.buf.resize(buffer.max(had + 1), 0);
        let r = p.sock.read(&mut p.buf[had..]);
        p.buf.truncate(had + *r.as_ref().unwrap_or(&0));
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(fail_io(e, "recv() failed")),
        };
        if udp && expect.is_none() {
            // Any answer: the port is open.
            return Some(Verdict::Pass);
        }
        let Some(expect) = expect else { return Some(Verdict::Pass) };
        let full = p.buf.len() >= buffer || udp || n == 0;
        match expect {
            Expect::Literal(want) if p.buf.len() >= want.len() => {
                return Some(if p.buf.starts_with(want) { Verdict::Pass } else { Verdict::Fail(None) });
            }
            Expect::Regex(re) if re.is_match(&p.buf) => return Some(Verdict::Pass),
            _ if full => return Some(Verdict::Fail(None)),
            _ => {}
        }
    }
}

/// A TCP check with nothing to send or expect: connecting (and the TLS handshake) is all.
fn connect_only(hc: &HealthCheck) -> bool {
    !hc.udp && hc.matcher.as_deref().is_none_or(|m| m.send.is_empty() && m.expect.is_none())
}

/// An I/O failure's line: a TLS call's carries OpenSSL's text, as nginx logs it.
fn fail_io(e: io::Error, call: &str) -> Verdict {
    match crate::core::ssl::TlsError::of(&e) {
        Some(t) => {
            let os = t.os.as_ref().and_then(|o| o.raw_os_error()).map(io::Error::from_raw_os_error);
            Verdict::Fail(Some((t.text.clone(), os)))
        }
        None => Verdict::Fail(Some((call.into(), Some(e)))),
    }
}

/// The TLS handshake of a check (`proxy_ssl on`), verified as the proxy verifies its
/// upstreams; moves the probe to sending once it is done.
fn handshake(p: &mut Probe, check: &Check) -> Option<Verdict> {
    use crate::core::ssl::Handshake;
    let ssl = &check.server.confs.proxy_ssl;
    let t = p.sock.tls_mut()?;
    match t.handshake() {
        Handshake::Done => {
            if ssl.verify() {
                let rc = t.ssl().verify_result();
                if rc != openssl::x509::X509VerifyResult::OK {
                    let msg = format!("upstream SSL certificate verify error: ({}:{})", rc.as_raw(), rc.error_string());
                    return Some(Verdict::Fail(Some((msg, None))));
                }
                let (name, _) = crate::stream::proxy_ssl::static_ssl_name(ssl, &check.upstream);
                if !crate::core::ssl::check_host(t.ssl(), &name) {
                    let msg = format!("upstream SSL certificate does not match \"{}\"", name);
                    return Some(Verdict::Fail(Some((msg, None))));
                }
            }
            p.step = Step::Sending;
            None
        }
        Handshake::Again => None,
        Handshake::Certificate => Some(Verdict::Fail(None)),
        Handshake::Closed(os) => Some(Verdict::Fail(Some(("peer closed connection in SSL handshake".into(), os)))),
        Handshake::Failed(e) => Some(fail_io(e, "SSL_do_handshake() failed")),
    }
}
