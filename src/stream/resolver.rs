//! The run-time DNS resolver (`ngx_resolver.c`) a worker uses for `proxy_pass` with a
//! host name in a variable: non-blocking, driven by the worker's reactor and timers.
//!
//! As nginx: A then AAAA (as `ipv4=`/`ipv6=` allow) go to one server, chosen round-robin
//! per new name; unanswered queries are sent again to the next server every 5 s until the
//! requests waiting for them time out (`resolver_timeout`); a truncated answer is asked
//! again over TCP; an rcode 2–5 fails the name, NOERROR without addresses in both
//! families is "Host not found"; a CNAME without addresses is followed with a new query;
//! answers are cached for their smallest TTL (or `valid=`), failures are not cached, and
//! a cached answer comes back rotated at a random place.
//!
//! As nginx, a resolver has one UDP socket per server, opened at the first query to it
//! and kept until an error closes it; an answer is matched to the name being asked by
//! its question's name and type, then its ident (an answer for a name no longer asked
//! is "unexpected DNS response"). An A or AAAA answer is read as
//! `ngx_resolver_process_a` reads it (`dns::addresses`): every address of the asked
//! type whatever its owner name, else the last CNAME's target, read only then; the
//! records of an SRV answer are those of the name asked (or of its CNAME chain).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::core::addr::parse_url;
use crate::core::conf::Level;
use crate::core::dns::{self, Found};
use crate::core::timer::{TimerId, Timers};

/// Tokens of resolver sockets and timers: this bit, and the name's slot (its TCP
/// stream and timer), or `SERVER_BIT` and a resolver's UDP socket to one server.
pub const RESOLVER_BIT: usize = 1 << (usize::BITS - 2);
// (Below `DGRAM_BIT`, which with `RESOLVER_BIT` marks health-check tokens.)
const SERVER_BIT: usize = 1 << (usize::BITS - 4);

fn server_token(r: usize, k: usize) -> Token {
    Token(RESOLVER_BIT | SERVER_BIT | (r << 16) | k)
}

const RESEND: Duration = Duration::from_secs(5);
/// New queries for CNAME targets, per request (nginx allows 50).
const MAX_RECURSION: u8 = 50;
/// Names kept in one resolver's cache.
const MAX_CACHED: usize = 10_000;
/// `NGX_RESOLVE_TIMEDOUT`.
pub const TIMEDOUT: i32 = libc::ETIMEDOUT;

/// The name as `ngx_resolve_name` leaves it: one trailing dot dropped, lower case (nginx
/// changes the caller's string in place, so its "could not be resolved" errors name it so).
pub fn query_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// `ngx_resolver_strerror`.
pub fn strerror(code: i32) -> &'static str {
    match code {
        1 => "Format error",
        2 => "Server failure",
        3 => "Host not found",
        4 => "Unimplemented",
        5 => "Operation refused",
        TIMEDOUT => "Operation timed out",
        _ => "Unknown error",
    }
}

/// A `resolver` directive's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConf {
    pub servers: Vec<SocketAddr>,
    pub valid: Option<Duration>,
    pub ipv4: bool,
    pub ipv6: bool,
}

impl ResolverConf {
    /// Parse the arguments as `ngx_resolver_create` does (its messages).
    pub fn parse(args: &[String]) -> Result<ResolverConf, String> {
        let mut c = ResolverConf { servers: Vec::new(), valid: None, ipv4: true, ipv6: true };
        let on_off = |a: &str, v: &str| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("invalid parameter: {}", a)),
        };
        for a in args {
            if let Some(v) = a.strip_prefix("valid=") {
                let t =
                    crate::core::conf::value::parse_time(v, true).ok_or_else(|| format!("invalid parameter: {}", a))?;
                // 0 is "not set" to nginx (`r->valid ? r->valid : ttl`): the TTL counts.
                c.valid = (t != 0).then(|| Duration::from_secs(t));
            } else if let Some(v) = a.strip_prefix("ipv4=") {
                c.ipv4 = on_off(a, v)?;
            } else if let Some(v) = a.strip_prefix("ipv6=") {
                c.ipv6 = on_off(a, v)?;
            } else {
                let u = parse_url(a, false, false).map_err(|e| format!("{} in resolver \"{}\"", e, a))?;
                let text = if u.port.is_none() { format!("{}:53", a) } else { a.clone() };
                let u = parse_url(&text, false, true).map_err(|e| format!("{} in resolver \"{}\"", e, a))?;
                for addr in u.addrs {
                    if let crate::core::addr::Addr::Inet(sa) = addr {
                        c.servers.push(sa);
                    }
                }
            }
        }
        if !c.ipv4 && !c.ipv6 {
            return Err("\"ipv4\" and \"ipv6\" cannot both be \"off\"".into());
        }
        if c.servers.is_empty() {
            return Err("no name servers defined".into());
        }
        Ok(c)
    }
}

/// What a request gets: addresses (IPv4 first, in answer order), or nginx's state code.
pub type Outcome = Result<Vec<IpAddr>, i32>;

/// Who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A session's `proxy_pass` (its key).
    Session(usize),
    /// A `server ... resolve` line (upstream group, index among its resolvable lines).
    Upstream { group: usize, server: usize },
    /// The SRV records of a `service=` line.
    Service { group: usize, server: usize },
    /// The addresses of target `index` of a `service=` line's SRV records.
    ServiceTarget { group: usize, server: usize, index: usize },
}

pub use crate::core::dns::Srv;

/// A finished request: the outcome, and for how long it holds (the answer's TTL or
/// `valid=`; for a failure `valid=` or 10 s, as nginx's `ctx->valid`).
#[derive(Debug, Clone)]
pub struct Done {
    pub target: Target,
    pub outcome: Outcome,
    pub valid: Duration,
    /// The records of an SRV lookup (its `outcome` is then `Ok` with no addresses).
    pub srv: Vec<Srv>,
}

/// One family's query of a name.
#[derive(Debug)]
enum Family {
    Off,
    Pending { id: u16, query: Vec<u8>, tcp: bool },
    Done(Vec<IpAddr>),
}

struct Waiter {
    target: Target,
    /// `resolver_timeout`; none for a timeout of 0 (nginx sets no timer then).
    deadline: Option<Instant>,
    depth: u8,
}

/// What reading a name's TCP connection gave.
enum TcpRead {
    Frame(Vec<u8>),
    /// Nothing more now (or this event's share is read).
    Wait,
    /// The server's end, or an error (logged).
    Closed,
}

/// A TCP exchange (answers that did not fit a datagram).
struct Tcp {
    stream: TcpStream,
    out: Vec<u8>,
    input: Vec<u8>,
}

/// A name being asked.
struct Node {
    resolver: usize,
    name: String,
    a: Family,
    aaaa: Family,
    /// An SRV lookup: this family only (`a` and `aaaa` are off).
    srv: Family,
    srv_records: Vec<Srv>,
    /// An rcode that failed the name (it wins over the other family's addresses).
    code: Option<u8>,
    /// The smallest TTL seen.
    ttl: u32,
    /// An alias the answers gave instead of addresses.
    cname: Option<String>,
    /// Both families answered, with nothing nginx can use (no address, and no alias or
    /// one it cannot read): nobody is told, the requests wait for their timeout.
    stalled: bool,
    server: usize,
    tcp: Option<Tcp>,
    waiters: Vec<Waiter>,
    resend_at: Instant,
    timer: Option<TimerId>,
}

impl Node {
    /// A query of this name under `ident` waits for its answer.
    fn asks(&self, ident: u16) -> bool {
        [&self.a, &self.aaaa, &self.srv].iter().any(|f| matches!(f, Family::Pending { id, .. } if *id == ident))
    }
}

struct Cached {
    addrs: Vec<IpAddr>,
    /// An alias answered with no addresses (nginx keeps the CNAME step too, for its TTL).
    cname: Option<String>,
    /// The last wall-clock second the answer may be used in (nginx's `rn->valid`:
    /// `ngx_time()` of the answer plus its TTL or `valid=`).
    valid_until: i64,
    /// Its place in the least-recently-used order (`lru`).
    used: u64,
}

/// nginx's `r->expire`: a cached name unused this long may go at the next lookup's end.
const IDLE_EXPIRE: i64 = 30;

impl Resolver {
    /// A cached name was used now: the newest in the order, kept 30 s more at least.
    fn touch(&mut self, name: &str, now_sec: i64) {
        let Some(c) = self.cache.get_mut(name) else { return };
        // (A name used before moves with its own string: a hit allocates nothing here.)
        let key = self.lru.remove(&c.used).map_or_else(|| name.to_string(), |(k, _)| k);
        self.uses += 1;
        c.used = self.uses;
        self.lru.insert(c.used, (key, now_sec + IDLE_EXPIRE));
    }

    fn forget(&mut self, name: &str) {
        if let Some(c) = self.cache.remove(name) {
            self.lru.remove(&c.used);
        }
    }

    /// `ngx_resolver_expire` at the end of each lookup (`ngx_resolve_name_done`): up to
    /// two of the least recently used names go, if unused for 30 s, however long their
    /// TTL (so a name used rarely is asked again sooner than its TTL says).
    fn expire_idle(&mut self, now_sec: i64) {
        for _ in 0..2 {
            let Some((&used, (name, expire))) = self.lru.iter().next() else { return };
            if now_sec <= *expire {
                return;
            }
            let name = name.clone();
            self.lru.remove(&used);
            self.cache.remove(&name);
        }
    }
}

/// A family's query of `name`, under a fresh ident (none for a name no query can carry).
fn pending(name: &str, qtype: u16) -> Option<Family> {
    let id = random_id();
    dns::query(id, name, qtype).map(|query| Family::Pending { id, query, tcp: false })
}

/// One `resolver` directive: nginx makes a resolver (cache, sockets) per directive, and
/// the levels that inherit it share it.
struct Resolver {
    conf: Rc<ResolverConf>,
    next_server: usize,
    cache: HashMap<String, Cached>,
    /// The cached names by last use, oldest first, with the second they may go after
    /// (nginx's name_expire_queue, and `rn->expire`).
    lru: std::collections::BTreeMap<u64, (String, i64)>,
    uses: u64,
    /// Per server: nginx's UDP connection to it (made at the first query, numbered
    /// then from the connection counter, closed by a failed send or read).
    udp: Vec<Option<UdpSocket>>,
    /// Per server: nginx's TCP connection to it is open. nginx keeps one and reuses it
    /// for every truncated answer until the server closes it; sluice asks over a stream
    /// of the name's own, and numbers it as nginx would number its one connection.
    tcp_open: Vec<bool>,
}

/// The context a resolver call needs from the worker.
pub struct Io<'a> {
    pub registry: &'a Registry,
    pub timers: &'a mut Timers,
    pub now: Instant,
}

#[derive(Default)]
pub struct Resolvers {
    list: Vec<Resolver>,
    nodes: Slab<Node>,
    /// Names being asked: (resolver, name, SRV or not) to the node.
    asking: HashMap<(usize, String, bool), usize>,
    /// Finished requests, for the worker to deliver.
    pub done: Vec<Done>,
}

fn random_id() -> u16 {
    rand::random()
}

impl Resolvers {
    /// nginx's resolver UDP connections open now (one per DNS server): each holds one of
    /// the worker's `worker_connections` from its first query until an error closes it.
    /// (Its TCP connection's life depends on when the server closes it, which sluice,
    /// asking over a stream per name, does not see: not counted.)
    pub fn open_connections(&self) -> usize {
        self.list.iter().map(|r| r.udp.iter().filter(|s| s.is_some()).count()).sum()
    }

    fn resolver(&mut self, conf: &Rc<ResolverConf>) -> usize {
        if let Some(i) = self.list.iter().position(|r| Rc::ptr_eq(&r.conf, conf)) {
            return i;
        }
        let udp = conf.servers.iter().map(|_| None).collect();
        let tcp_open = vec![false; conf.servers.len()];
        self.list.push(Resolver {
            conf: conf.clone(),
            next_server: 0,
            cache: HashMap::new(),
            lru: Default::default(),
            uses: 0,
            udp,
            tcp_open,
        });
        self.list.len() - 1
    }

    /// Resolve `name` for `target`: the outcome now (cache, or a name that cannot be
    /// asked) with how long it holds, or None and later an entry in `done`.
    pub fn resolve(
        &mut self,
        conf: &Rc<ResolverConf>,
        name: &str,
        target: Target,
        timeout: Duration,
        io: &mut Io<'_>,
    ) -> Option<(Outcome, Duration)> {
        self.start(conf, name, false, target, timeout, io)
    }

    /// Look up the SRV records of `name` for `target`, as `resolve` (the records come
    /// in `Done::srv`).
    pub fn resolve_srv(
        &mut self,
        conf: &Rc<ResolverConf>,
        name: &str,
        target: Target,
        timeout: Duration,
        io: &mut Io<'_>,
    ) -> Option<(Outcome, Duration)> {
        self.start(conf, name, true, target, timeout, io)
    }

    fn start(
        &mut self,
        conf: &Rc<ResolverConf>,
        name: &str,
        srv: bool,
        target: Target,
        timeout: Duration,
        io: &mut Io<'_>,
    ) -> Option<(Outcome, Duration)> {
        let r = self.resolver(conf);
        let name = query_name(name);
        let deadline = (!timeout.is_zero()).then(|| io.now + timeout);
        let done = self.request(r, name, srv, Waiter { target, deadline, depth: 0 }, io);
        if done.is_some() {
            self.list[r].expire_idle(crate::core::time::wall_secs_of(io.now));
        }
        done
    }

    fn failure_valid(&self, r: usize) -> Duration {
        self.list[r].conf.valid.unwrap_or(Duration::from_secs(10))
    }

    fn request(
        &mut self,
        r: usize,
        name: String,
        srv: bool,
        w: Waiter,
        io: &mut Io<'_>,
    ) -> Option<(Outcome, Duration)> {
        let now = io.now;
        let res = &mut self.list[r];
        let now_sec = crate::core::time::wall_secs_of(now);
        if let (false, Some(c)) = (srv, res.cache.get(&name)) {
            if c.valid_until >= now_sec {
                let left = Duration::from_secs((c.valid_until - now_sec) as u64);
                let answer = match c.cname.clone() {
                    Some(target) => Err(target),
                    None => Ok(rotated(&c.addrs)),
                };
                res.touch(&name, now_sec);
                return match answer {
                    Ok(addrs) => Some((Ok(addrs), left)),
                    Err(target) => self.follow(r, target, srv, w, io),
                };
            }
            res.forget(&name);
        }
        if let Some(&slot) = self.asking.get(&(r, name.clone(), srv)) {
            let servers = res.conf.servers.len();
            if let Some(n) = self.nodes.get_mut(slot) {
                // A name kept after its requests timed out is asked afresh for this one,
                // as ngx_resolve_name_locked does: new queries (new idents, so a late
                // answer to the old ones is a wrong ident) to the next server in turn.
                let again = n.waiters.is_empty();
                n.waiters.push(w);
                if again {
                    for (f, qtype) in
                        [(&mut n.a, dns::TYPE_A), (&mut n.aaaa, dns::TYPE_AAAA), (&mut n.srv, dns::TYPE_SRV)]
                    {
                        if !matches!(f, Family::Off) {
                            *f = pending(&name, qtype).unwrap_or(Family::Off);
                        }
                    }
                    (n.code, n.ttl, n.cname, n.stalled) = (None, u32::MAX, None, false);
                    n.srv_records.clear();
                    n.server = res.next_server % servers;
                    res.next_server = res.next_server.wrapping_add(1);
                    n.resend_at = now + RESEND;
                    self.send_or_next(slot, io);
                }
                self.schedule(slot, io);
                return None;
            }
        }
        let conf = res.conf.clone();
        let family = |on: bool, qtype: u16| if on { pending(&name, qtype) } else { Some(Family::Off) };
        let (Some(a), Some(aaaa), Some(srv_family)) = (
            family(conf.ipv4 && !srv, dns::TYPE_A),
            family(conf.ipv6 && !srv, dns::TYPE_AAAA),
            family(srv, dns::TYPE_SRV),
        ) else {
            // ngx_resolver_copy's NGX_DECLINED: an empty or over-long label.
            return Some((Err(i32::from(dns::NXDOMAIN)), self.failure_valid(r)));
        };
        let server = res.next_server % conf.servers.len();
        res.next_server = res.next_server.wrapping_add(1);
        let slot = self.nodes.insert(Node {
            resolver: r,
            name: name.clone(),
            a,
            aaaa,
            srv: srv_family,
            srv_records: Vec::new(),
            code: None,
            ttl: u32::MAX,
            cname: None,
            stalled: false,
            server,
            tcp: None,
            waiters: vec![w],
            resend_at: now + RESEND,
            timer: None,
        });
        self.asking.insert((r, name, srv), slot);
        self.send_or_next(slot, io);
        self.schedule(slot, io);
        None
    }

    /// Send a name's queries; ngx_resolve_name_locked: "immediately retry once on
    /// failure", with the next server.
    fn send_or_next(&mut self, slot: usize, io: &mut Io<'_>) {
        if self.send(slot, io) {
            if let Some(n) = self.nodes.get_mut(slot) {
                n.server = (n.server + 1) % self.list[n.resolver].conf.servers.len();
            }
            self.send(slot, io);
        }
    }

    /// Send the pending queries of a name to its current server over UDP (the
    /// resolver's socket to it, opened if none is), or over TCP for the families that
    /// were truncated; whether a UDP send failed.
    fn send(&mut self, slot: usize, io: &mut Io<'_>) -> bool {
        let Some(n) = self.nodes.get_mut(slot) else { return false };
        let r = n.resolver;
        let res = &mut self.list[r];
        let (k, server) = (n.server, res.conf.servers[n.server]);
        let has_udp = [&n.a, &n.aaaa, &n.srv].iter().any(|f| matches!(f, Family::Pending { tcp: false, .. }));
        let mut failed = false;
        if has_udp && res.udp[k].is_none() {
            // nginx's resolver connection to this server is made (and numbered) once.
            crate::core::shm::next_connection();
            let any: IpAddr =
                if server.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
            match UdpSocket::bind(SocketAddr::new(any, 0)).and_then(|s| s.connect(server).map(|()| s)) {
                Ok(mut sock) => {
                    if io.registry.register(&mut sock, server_token(r, k), Interest::READABLE).is_ok() {
                        res.udp[k] = Some(sock);
                    }
                }
                Err(e) => {
                    // ngx_udp_connect: at crit; the connection (numbered) is closed, so
                    // the next try opens and numbers another, and the name goes to the
                    // next server at once, as for a failed send.
                    log_server(Level::Crit, "connect() failed", &e, server);
                    failed = true;
                }
            }
        }
        if let (true, Some(sock)) = (has_udp, res.udp[k].as_ref()) {
            for f in [&n.a, &n.aaaa, &n.srv] {
                if let Family::Pending { query, tcp: false, .. } = f {
                    if let Err(e) = sock.send(query) {
                        log_server(Level::Error, "send() failed", &e, server);
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                // nginx closes the connection that failed: the next send makes (and
                // numbers) a new one.
                if let Some(mut sock) = res.udp[k].take() {
                    let _ = io.registry.deregister(&mut sock);
                }
            }
        }
        let tcp_queries: Vec<Vec<u8>> = [&n.a, &n.aaaa, &n.srv]
            .into_iter()
            .filter_map(|f| match f {
                Family::Pending { query, tcp: true, .. } => Some(query.clone()),
                _ => None,
            })
            .collect();
        if !tcp_queries.is_empty() {
            self.send_tcp(slot, tcp_queries, io);
        }
        failed
    }

    fn send_tcp(&mut self, slot: usize, queries: Vec<Vec<u8>>, io: &mut Io<'_>) {
        let Some(n) = self.nodes.get_mut(slot) else { return };
        let res = &mut self.list[n.resolver];
        let server = res.conf.servers[n.server];
        if n.tcp.is_none() {
            match TcpStream::connect(server) {
                Ok(mut stream) => {
                    // Numbered as nginx's connection to the server, when it opens it.
                    if !std::mem::replace(&mut res.tcp_open[n.server], true) {
                        crate::core::shm::next_connection();
                    }
                    let token = Token(RESOLVER_BIT | slot);
                    if io.registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_err() {
                        return;
                    }
                    n.tcp = Some(Tcp { stream, out: Vec::new(), input: Vec::new() });
                }
                Err(e) => {
                    log_server(Level::Error, "connect() failed", &e, server);
                    return;
                }
            }
        }
        if let Some(t) = n.tcp.as_mut() {
            for q in queries {
                t.out.extend_from_slice(&(q.len() as u16).to_be_bytes());
                t.out.extend_from_slice(&q);
            }
        }
        self.drive_tcp(slot, io);
    }

    /// Arm the name's timer for its next resend or the earliest waiter's deadline.
    fn schedule(&mut self, slot: usize, io: &mut Io<'_>) {
        let Some(n) = self.nodes.get_mut(slot) else { return };
        let first = n.waiters.iter().filter_map(|w| w.deadline).min().unwrap_or(n.resend_at);
        io.timers.set(&mut n.timer, first.min(n.resend_at), Token(RESOLVER_BIT | slot));
    }

    /// A resolver timer fired.
    pub fn on_timer(&mut self, slot: usize, id: TimerId, io: &mut Io<'_>) {
        let Some(n) = self.nodes.get_mut(slot) else { return };
        if n.timer != Some(id) {
            return;
        }
        n.timer = None;
        let now = io.now;
        let (late, waiting): (Vec<Waiter>, Vec<Waiter>) =
            n.waiters.drain(..).partition(|w| w.deadline.is_some_and(|d| d <= now));
        n.waiters = waiting;
        let valid = self.list[n.resolver].conf.valid.unwrap_or(Duration::from_secs(10));
        self.done.extend(late.into_iter().map(|w| Done {
            target: w.target,
            outcome: Err(TIMEDOUT),
            valid,
            srv: Vec::new(),
        }));
        // Nobody waits any more: nginx keeps the name until its next resend would be
        // due (ngx_resolver_resend then drops it), so an answer that comes late still
        // fills the cache for the next request.
        if n.waiters.is_empty() {
            if n.resend_at <= now {
                self.remove(slot, io);
            } else {
                let at = n.resend_at;
                io.timers.set(&mut n.timer, at, Token(RESOLVER_BIT | slot));
            }
            return;
        }
        if n.resend_at <= now {
            n.server = (n.server + 1) % self.list[n.resolver].conf.servers.len();
            n.resend_at = now + RESEND;
            if let Some(mut t) = n.tcp.take() {
                let _ = io.registry.deregister(&mut t.stream);
            }
            self.send(slot, io);
        }
        self.schedule(slot, io);
    }

    fn remove(&mut self, slot: usize, io: &mut Io<'_>) {
        if let Some(mut n) = self.nodes.try_remove(slot) {
            io.timers.clear(&mut n.timer);
            if let Some(mut t) = n.tcp.take() {
                let _ = io.registry.deregister(&mut t.stream);
            }
            let key = (n.resolver, n.name, !matches!(n.srv, Family::Off));
            if self.asking.get(&key) == Some(&slot) {
                self.asking.remove(&key);
            }
        }
    }

    /// A resolver socket is ready: a resolver's UDP socket to a server, or a name's
    /// TCP stream.
    pub fn on_event(&mut self, slot: usize, io: &mut Io<'_>) {
        if slot & SERVER_BIT != 0 {
            let (r, k) = ((slot & !SERVER_BIT) >> 16, slot & 0xffff);
            self.read_udp(r, k, io);
        } else {
            self.drive_tcp(slot, io);
        }
    }

    /// Read the answers on a resolver's socket to server `k` until it would block (it
    /// is edge-triggered; nginx's ngx_resolver_udp_read reads so too).
    fn read_udp(&mut self, r: usize, k: usize, io: &mut Io<'_>) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(res) = self.list.get_mut(r) else { return };
            let Some(sock) = res.udp.get(k).and_then(Option::as_ref) else { return };
            match sock.recv(&mut buf) {
                Ok(len) => {
                    let msg = buf[..len].to_vec();
                    self.udp_answer(r, &msg, io);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log_server(Level::Error, "recv() failed", &e, res.conf.servers[k]);
                    if let Some(mut sock) = res.udp[k].take() {
                        let _ = io.registry.deregister(&mut sock);
                    }
                    return;
                }
            }
        }
    }

    /// A datagram on a resolver's socket: to the name it answers, if that is being asked.
    fn udp_answer(&mut self, r: usize, msg: &[u8], io: &mut Io<'_>) {
        // A format error names the name whose query had its ident (nginx looks through
        // the names waiting for an answer).
        let name_of =
            |ident| self.nodes.iter().find_map(|(_, n)| (n.resolver == r && n.asks(ident)).then(|| n.name.clone()));
        let Some(resp) = checked(msg, false, name_of) else { return };
        let key = (r, resp.qname.clone(), resp.qtype == dns::TYPE_SRV);
        match self.asking.get(&key) {
            Some(&slot) => self.answer_parsed(slot, msg, resp, false, io),
            None => log_plain(&format!("unexpected DNS response for {}", resp.qname)),
        }
    }

    fn drive_tcp(&mut self, slot: usize, io: &mut Io<'_>) {
        let mut failed = false;
        {
            let Some(n) = self.nodes.get_mut(slot) else { return };
            let server = self.list[n.resolver].conf.servers[n.server];
            let Some(t) = n.tcp.as_mut() else { return };
            // A refused connect is found by nginx's read handler (epoll reports the error
            // to the read event first): its "recv() failed".
            if let Ok(Some(e)) = t.stream.take_error() {
                log_server(Level::Error, "recv() failed", &e, server);
                failed = true;
            }
            while !failed && !t.out.is_empty() {
                match t.stream.write(&t.out) {
                    Ok(w) => {
                        t.out.drain(..w);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log_server(Level::Error, "send() failed", &e, server);
                        failed = true;
                        break;
                    }
                }
            }
        }
        // Each frame is answered as it is read (nginx's ngx_resolver_tcp_read): memory
        // stays one frame, whatever a server sends. A server that never stops sending
        // gets a few MB per event, and its next bytes bring the next event.
        let mut budget: usize = 4 << 20;
        while !failed {
            match self.tcp_frame(slot, &mut budget) {
                TcpRead::Frame(f) => self.answer(slot, &f, true, io),
                TcpRead::Wait => return,
                TcpRead::Closed => failed = true,
            }
        }
        // nginx closes its connection on an error or the server's end.
        if let Some(n) = self.nodes.get_mut(slot) {
            self.list[n.resolver].tcp_open[n.server] = false;
            if let Some(mut t) = n.tcp.take() {
                let _ = io.registry.deregister(&mut t.stream);
            }
        }
    }

    /// The next whole frame of `slot`'s TCP connection, reading for it as needed.
    fn tcp_frame(&mut self, slot: usize, budget: &mut usize) -> TcpRead {
        let Some(n) = self.nodes.get_mut(slot) else { return TcpRead::Wait };
        let server = self.list[n.resolver].conf.servers[n.server];
        let Some(t) = n.tcp.as_mut() else { return TcpRead::Wait };
        let mut buf = [0u8; 4096];
        loop {
            // One frame is at most 2 + 65535 bytes; nothing legitimate is bigger.
            if t.input.len() >= 2 {
                let flen = u16::from_be_bytes([t.input[0], t.input[1]]) as usize;
                if t.input.len() >= 2 + flen {
                    let f = t.input[2..2 + flen].to_vec();
                    t.input.drain(..2 + flen);
                    return TcpRead::Frame(f);
                }
            }
            if *budget == 0 {
                return TcpRead::Wait;
            }
            match t.stream.read(&mut buf) {
                Ok(0) => return TcpRead::Closed,
                Ok(len) => {
                    t.input.extend_from_slice(&buf[..len]);
                    *budget = budget.saturating_sub(len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => {
                    return TcpRead::Wait
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log_server(Level::Error, "recv() failed", &e, server);
                    return TcpRead::Closed;
                }
            }
        }
    }

    /// One DNS message arrived on the TCP stream of the name in `slot`.
    fn answer(&mut self, slot: usize, msg: &[u8], over_tcp: bool, io: &mut Io<'_>) {
        let Some(n) = self.nodes.get(slot) else { return };
        if let Some(r) = checked(msg, over_tcp, |ident| n.asks(ident).then(|| n.name.clone())) {
            self.answer_parsed(slot, msg, r, over_tcp, io);
        }
    }

    /// An answer (its header and question checked) for the name in `slot`.
    fn answer_parsed(&mut self, slot: usize, msg: &[u8], r: dns::Response, over_tcp: bool, io: &mut Io<'_>) {
        let Some(n) = self.nodes.get_mut(slot) else { return };
        let family = match r.qtype {
            dns::TYPE_A => &mut n.a,
            dns::TYPE_AAAA => &mut n.aaaa,
            dns::TYPE_SRV => &mut n.srv,
            _ => return,
        };
        let Family::Pending { id, tcp, .. } = family else {
            log_plain(&format!("unexpected DNS response for {}", r.qname));
            return;
        };
        if r.qname != n.name {
            log_plain(&format!("unexpected DNS response for {}", r.qname));
            return;
        }
        if r.id != *id {
            log_plain(&format!("wrong ident {} in DNS response for {}, expect {}", r.id, r.qname, id));
            return;
        }
        if r.truncated && !over_tcp {
            *tcp = true;
            let query = match family {
                Family::Pending { query, .. } => query.clone(),
                _ => return,
            };
            self.send_tcp(slot, vec![query], io);
            return;
        }
        if (2..=5).contains(&r.rcode) {
            n.code = Some(r.rcode);
            *family = Family::Done(Vec::new());
        } else if n.code.is_some() {
            // The other family's error code ends the name: nginx reads none of this
            // answer's records (`if (code == 0 && rn->code) code = rn->code;`).
            *family = Family::Done(Vec::new());
        } else if r.qtype == dns::TYPE_SRV {
            match dns::services(msg, &r, &n.name) {
                Ok(Found::Records(recs, ttl)) => {
                    n.ttl = n.ttl.min(ttl);
                    n.srv_records = recs;
                }
                Ok(Found::Cname(target, ttl)) => {
                    n.ttl = n.ttl.min(ttl);
                    n.cname = Some(target);
                }
                Ok(Found::Nothing) => {}
                // A broken answer leaves the name asked (ngx_resolver_process_srv).
                Err(e) => {
                    log_plain(&e.to_string());
                    return;
                }
            }
            *family = Family::Done(Vec::new());
        } else if r.nan == 0 {
            // NOERROR with no records: the name's end if the other family has no
            // addresses either ("Host not found"; an alias an earlier answer gave is not
            // followed).
            *family = Family::Done(Vec::new());
        } else {
            let scan = dns::addresses(msg, &r);
            for t in &scan.unexpected {
                log_plain(&format!("unexpected RR type {t} in DNS response"));
            }
            n.ttl = n.ttl.min(scan.ttl);
            let found = match scan.outcome {
                Ok(found) => found,
                // nginx leaves the name unanswered: it is asked again, or times out.
                Err(e) => {
                    log_plain(&e);
                    return;
                }
            };
            let no_addrs = found.addrs.is_empty();
            *family = Family::Done(found.addrs);
            let other = if r.qtype == dns::TYPE_A { &n.aaaa } else { &n.a };
            let other_pending = matches!(other, Family::Pending { .. });
            let other_addrs = matches!(other, Family::Done(a) if !a.is_empty());
            if no_addrs && !other_addrs {
                // ngx_resolver_process_a follows an alias only from the answer that
                // ends the name, and reads its target only then.
                match found.cname_at {
                    Some(_) if other_pending => {}
                    Some(at) => match dns::copy_name(msg, at) {
                        Ok(target) => n.cname = Some(target),
                        Err(e) => {
                            log_plain(e);
                            n.stalled = true;
                        }
                    },
                    None => {
                        log_plain("no A or CNAME types in DNS response");
                        // Nobody is told: the requests wait for their timeout, and the
                        // name is not asked again meanwhile.
                        n.stalled = !other_pending;
                    }
                }
            }
        }
        self.finish_if_done(slot, io);
    }

    fn finish_if_done(&mut self, slot: usize, io: &mut Io<'_>) {
        let Some(n) = self.nodes.get(slot) else { return };
        if n.stalled {
            return;
        }
        if let Family::Pending { .. } = n.srv {
            return;
        }
        let addrs = match (&n.a, &n.aaaa) {
            (Family::Pending { .. }, _) | (_, Family::Pending { .. }) => return,
            (a, b) => {
                let mut v = Vec::new();
                for f in [a, b] {
                    if let Family::Done(x) = f {
                        v.extend_from_slice(x);
                    }
                }
                v
            }
        };
        let is_srv = !matches!(n.srv, Family::Off);
        let srv_records = n.srv_records.clone();
        let outcome = match n.code {
            Some(c) => Err(i32::from(c)),
            None if is_srv && !srv_records.is_empty() => Ok(Vec::new()),
            None if addrs.is_empty() => {
                // An alias and no addresses in either family: ask for the alias.
                if let Some(target) = n.cname.clone() {
                    if !is_srv {
                        let (r, name, ttl) = (n.resolver, n.name.clone(), n.ttl);
                        self.cache(r, name, Vec::new(), Some(target.clone()), ttl, io.now);
                    }
                    self.follow_cname(slot, target, io);
                    return;
                }
                Err(i32::from(dns::NXDOMAIN))
            }
            None => Ok(addrs),
        };
        let (r, name, ttl) = (n.resolver, n.name.clone(), n.ttl);
        // nginx keeps the waiting requests in a list it pushes onto: the last to come
        // is told first.
        let targets: Vec<Target> = n.waiters.iter().rev().map(|w| w.target).collect();
        if let (false, Ok(addrs)) = (is_srv, &outcome) {
            self.cache(r, name, addrs.clone(), None, ttl, io.now);
        }
        let valid = match &outcome {
            Ok(_) => self.list[r].conf.valid.unwrap_or(Duration::from_secs(u64::from(ttl))),
            Err(_) => self.failure_valid(r),
        };
        let now_sec = crate::core::time::wall_secs_of(io.now);
        for target in targets {
            self.done.push(Done { target, outcome: outcome.clone(), valid, srv: srv_records.clone() });
            self.list[r].expire_idle(now_sec);
        }
        self.remove(slot, io);
    }

    /// Keep an answer for its TTL (or `valid=`): addresses, or an alias without them.
    fn cache(&mut self, r: usize, name: String, addrs: Vec<IpAddr>, cname: Option<String>, ttl: u32, now: Instant) {
        let res = &mut self.list[r];
        let valid = res.conf.valid.unwrap_or(Duration::from_secs(u64::from(ttl)));
        let now_sec = crate::core::time::wall_secs_of(now);
        if res.cache.len() >= MAX_CACHED {
            res.cache.retain(|_, c| c.valid_until >= now_sec);
            if res.cache.len() >= MAX_CACHED {
                res.cache.clear();
            }
            let cache = &res.cache;
            res.lru.retain(|_, (n, _)| cache.contains_key(n));
        }
        let valid_until = now_sec.saturating_add(valid.as_secs() as i64);
        // (An answer replacing one still cached leaves no stale place in the order.)
        res.forget(&name);
        res.cache.insert(name.clone(), Cached { addrs, cname, valid_until, used: 0 });
        res.touch(&name, now_sec);
    }

    /// The name is an alias with no addresses here: ask for its target, for the same
    /// requests.
    fn follow_cname(&mut self, slot: usize, target: String, io: &mut Io<'_>) {
        let Some(n) = self.nodes.get_mut(slot) else { return };
        let r = n.resolver;
        let srv = !matches!(n.srv, Family::Off);
        let waiters = std::mem::take(&mut n.waiters);
        self.remove(slot, io);
        for w in waiters {
            let t = w.target;
            if let Some((outcome, valid)) = self.follow(r, target.clone(), srv, w, io) {
                self.done.push(Done { target: t, outcome, valid, srv: Vec::new() });
            }
        }
    }

    /// One step along an alias for a request (each allowed `MAX_RECURSION` such steps,
    /// through the cache or new queries, as nginx's `ctx->recursion`).
    fn follow(
        &mut self,
        r: usize,
        target: String,
        srv: bool,
        mut w: Waiter,
        io: &mut Io<'_>,
    ) -> Option<(Outcome, Duration)> {
        if w.depth >= MAX_RECURSION {
            return Some((Err(i32::from(dns::NXDOMAIN)), self.failure_valid(r)));
        }
        w.depth += 1;
        self.request(r, target, srv, w, io)
    }
}

/// `ngx_resolver_process_response`'s checks of a reply, in its order and with its
/// messages, before the records are read: the header, the error codes, the one
/// question (no compression, not empty), its class and type.
fn check_response(m: &[u8], over_tcp: bool, name_of: impl Fn(u16) -> Option<String>) -> Result<(), String> {
    const SHORT: &str = "short DNS response";
    if m.len() < 12 {
        return Err(SHORT.into());
    }
    let at = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]);
    let (ident, flags, nqs, nan) = (at(0), at(2), at(4), usize::from(at(6)));
    if flags & 0xf870 != 0x8000 || (flags & 0x0200 != 0 && over_tcp) {
        let proto = if over_tcp { "TCP" } else { "UDP" };
        return Err(format!("invalid {proto} DNS response {ident} fl:{flags:04X}"));
    }
    let code = (flags & 0xf) as u8;
    if code == dns::FORMERR || code > 5 {
        let text = format!("DNS error ({}: {}), query id:{}", code, strerror(i32::from(code)), ident);
        // A format error names the name whose query had this ident.
        return Err(match name_of(ident).filter(|_| code == dns::FORMERR) {
            Some(name) => format!("{text}, name:\"{name}\""),
            None => text,
        });
    }
    if nqs != 1 {
        return Err("invalid number of questions in DNS response".into());
    }
    let mut i = 12;
    loop {
        let Some(&len) = m.get(i) else { return Err(SHORT.into()) };
        if len & 0xc0 != 0 {
            return Err("unexpected compression pointer in DNS response".into());
        }
        if len == 0 {
            break;
        }
        i += 1 + usize::from(len);
    }
    if i == 12 {
        return Err("zero-length domain name in DNS response".into());
    }
    i += 1;
    if i + 4 + nan * 12 > m.len() {
        return Err(SHORT.into());
    }
    let (qtype, qclass) = (at(i), at(i + 2));
    if qclass != 1 {
        return Err(format!("unknown query class {qclass} in DNS response"));
    }
    if ![dns::TYPE_A, dns::TYPE_AAAA, dns::TYPE_SRV, 12].contains(&qtype) {
        return Err(format!("unknown query type {qtype} in DNS response"));
    }
    // PTR: nginx reads the name as an address (ngx_resolver_process_ptr); one that is
    // none is its error (this resolver asks no PTR questions: any other is dropped).
    if qtype == 12 {
        let qname = crate::core::conf::parser::bytes_to_text(&m[12..i]).to_ascii_lowercase();
        if !qname.ends_with("\x07in-addr\x04arpa\0") && !qname.ends_with("\x03ip6\x04arpa\0") {
            return Err("invalid in-addr.arpa or ip6.arpa name in DNS response".into());
        }
    }
    Ok(())
}

/// A reply whose header and question pass `check_response`, parsed; what fails is logged.
fn checked(m: &[u8], over_tcp: bool, name_of: impl Fn(u16) -> Option<String>) -> Option<dns::Response> {
    if let Err(e) = check_response(m, over_tcp, name_of) {
        log_plain(&e);
        return None;
    }
    dns::parse(m).map_err(|e| log_plain(&e.to_string())).ok()
}

/// A cached answer, as `ngx_resolver_export` hands it out with `rotate`: each family
/// starts at a random address, IPv4 then IPv6, and the whole list starts at a random
/// place (so the families mix).
fn rotated(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let n = addrs.len();
    if n < 2 {
        return addrs.to_vec();
    }
    let (mut v4, mut v6): (Vec<IpAddr>, Vec<IpAddr>) = addrs.iter().partition(|a| a.is_ipv4());
    for f in [&mut v4, &mut v6] {
        if f.len() > 1 {
            let k = rand::random::<u32>() as usize % f.len();
            f.rotate_left(k);
        }
    }
    let mut out = v4;
    out.extend(v6);
    out.rotate_right(rand::random::<u32>() as usize % n);
    out
}

/// A failure of the connection to a server: nginx's resolver connection log, whose
/// handler adds "while resolving, resolver: ADDR" after the error.
fn log_server(level: Level, msg: &str, e: &io::Error, server: SocketAddr) {
    let err = e.raw_os_error().map(|_| format!(" {}", crate::core::conf::os_err(e))).unwrap_or_default();
    crate::core::log::error(level, &format!("{msg}{err} while resolving, resolver: {server}"), None);
}

/// A reply nginx's resolver cannot use: its own log, without context.
fn log_plain(msg: &str) {
    crate::core::log::error(Level::Error, msg, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ngx_resolver_process_response's messages for replies it cannot use (side by
    /// side with nginx 1.22.1).
    #[test]
    fn reply_checks_as_nginx() {
        let q = dns::query(0x1234, "a.test", dns::TYPE_A).unwrap();
        let a_test = |ident: u16| (ident == 0x1234).then(|| "a.test".to_string());
        let reply = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut m = q.clone();
            m[2] = 0x81;
            m[3] = 0x80;
            f(&mut m);
            check_response(&m, false, a_test)
        };
        assert_eq!(reply(&|_| {}), Ok(()));
        assert_eq!(reply(&|m| m[2] = 0x01), Err("invalid UDP DNS response 4660 fl:0180".into()));
        assert_eq!(reply(&|m| m[3] = 0x89), Err("DNS error (9: Unknown error), query id:4660".into()));
        assert_eq!(reply(&|m| m[3] = 0x81), Err("DNS error (1: Format error), query id:4660, name:\"a.test\"".into()));
        assert_eq!(reply(&|m| m[5] = 2), Err("invalid number of questions in DNS response".into()));
        assert_eq!(reply(&|m| m[12] = 0xc0), Err("unexpected compression pointer in DNS response".into()));
        assert_eq!(reply(&|m| m[12] = 0), Err("zero-length domain name in DNS response".into()));
        let end = q.len();
        assert_eq!(reply(&|m| m[end - 1] = 3), Err("unknown query class 3 in DNS response".into()));
        assert_eq!(reply(&|m| m[end - 3] = 16), Err("unknown query type 16 in DNS response".into()));
        assert_eq!(reply(&|m| m.truncate(10)), Err("short DNS response".into()));
        // A PTR question that names no address (recorded from nginx 1.22.1).
        assert_eq!(reply(&|m| m[end - 3] = 12), Err("invalid in-addr.arpa or ip6.arpa name in DNS response".into()));
        let rev = dns::query(0x1234, "1.0.0.127.in-addr.arpa", 12).unwrap();
        let mut m = rev.clone();
        m[2] = 0x81;
        m[3] = 0x80;
        assert_eq!(check_response(&m, false, a_test), Ok(()));
    }

    #[test]
    fn conf_forms_and_errors() {
        let a = |v: &[&str]| ResolverConf::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let c = a(&["127.0.0.1", "[::1]:5353", "valid=30s", "ipv6=off"]).unwrap();
        assert_eq!(c.servers, vec!["127.0.0.1:53".parse().unwrap(), "[::1]:5353".parse().unwrap()]);
        assert_eq!((c.valid, c.ipv4, c.ipv6), (Some(Duration::from_secs(30)), true, false));
        assert_eq!(a(&["127.0.0.1", "valid=x"]).unwrap_err(), "invalid parameter: valid=x");
        assert_eq!(a(&["127.0.0.1", "ipv4=yes"]).unwrap_err(), "invalid parameter: ipv4=yes");
        assert_eq!(
            a(&["127.0.0.1", "ipv4=off", "ipv6=off"]).unwrap_err(),
            "\"ipv4\" and \"ipv6\" cannot both be \"off\""
        );
        assert_eq!(a(&["127.0.0.1:0"]).unwrap_err(), "invalid port in resolver \"127.0.0.1:0\"");
        assert_eq!(a(&["valid=1s"]).unwrap_err(), "no name servers defined");
    }

    /// As `ngx_resolver_export(rotate)`: a rotation of (IPv4 rotated, IPv6 rotated), so
    /// going round the list each family is one run in its own cyclic order, and either
    /// family may come first.
    #[test]
    fn rotation_is_nginx_export() {
        let addrs: Vec<IpAddr> =
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1", "::2"].iter().map(|a| a.parse().unwrap()).collect();
        let idx = |a: &IpAddr| addrs.iter().position(|x| x == a).unwrap();
        let mut first_v6 = 0;
        for _ in 0..200 {
            let r = rotated(&addrs);
            let mut sorted = r.clone();
            sorted.sort();
            assert_eq!(sorted, addrs);
            let n = r.len();
            // Going round: the family changes exactly twice (one run each).
            let changes = (0..n).filter(|&k| r[k].is_ipv4() != r[(k + 1) % n].is_ipv4()).count();
            assert_eq!(changes, 2, "{r:?}");
            // Within a run, the next address of the family follows the answer's order.
            for k in 0..n {
                let (a, b) = (&r[k], &r[(k + 1) % n]);
                if a.is_ipv4() && b.is_ipv4() {
                    assert_eq!(idx(b), (idx(a) + 1) % 3, "{r:?}");
                }
            }
            first_v6 += usize::from(r[0].is_ipv6());
        }
        assert!(first_v6 > 20 && first_v6 < 140, "{first_v6} of 200 started with IPv6");
    }
}
