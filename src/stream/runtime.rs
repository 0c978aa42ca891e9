//! A worker's mutable state for one cycle: peer accounting per upstream group, the
//! files access logs write to, and sessions that used up their turn.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::core::addr::Addr;
use crate::core::logfile::LogFile;
use crate::core::shm::{monotonic_ms, Shm};
use crate::core::splice::PipePool;
use crate::core::stats::{self, Slot};
use crate::stream::cycle::{Cycle, Server};
use crate::stream::dgram_owners::DgramOwners;
use crate::stream::health_check::{Check, CheckTarget, HealthChecks};
use crate::stream::resolver::{self, Io, Resolvers, Target};
use crate::stream::upstream_hc_module::HealthCheck;
use crate::upstream::health::{self, HealthTable};
use crate::upstream::round_robin::RoundRobin;
use crate::upstream::zone::{self, Resolved, ResolvedTable, SharedPeers};
use crate::upstream::{new_balancer, Balancer, Outcome, PeerId, PeerPick, PeerSet, UpstreamConf, UpstreamServer};

struct Group {
    peers: PeerSet,
    balancer: Box<dyn Balancer>,
    /// The peers' state in a shared memory zone, when the upstream has `zone`.
    shared: Option<SharedPeers>,
    /// `server ... resolve` lines: their addresses come from the zone at run time.
    dynamic: Option<Dynamic>,
    /// Bumped each time the peer list is rebuilt (picks from before are mapped by name).
    epoch: u64,
    /// Per peer (primaries, then backups), its counters for the `api`, when kept.
    stats: Vec<Option<Slot>>,
    /// The `zone` the upstream is in.
    zone: Option<String>,
}

/// The counters of a group's peers, when statistics are kept (only upstreams in a
/// zone are shown, as nginx Plus shows them).
fn peer_slots(name: &str, peers: &PeerSet, zone: bool) -> Vec<Option<Slot>> {
    if !zone || !stats::enabled() {
        return Vec::new();
    }
    peers.primary.iter().chain(&peers.backup).map(|p| stats::peer_slot(name, &p.name)).collect()
}

impl Group {
    fn slot(&self, id: PeerId) -> Option<Slot> {
        let i = if id.backup { self.peers.primary.len() + id.index } else { id.index };
        self.stats.get(i).copied().flatten()
    }
}

/// The run-time part of an upstream with `server ... resolve` lines.
struct Dynamic {
    /// The upstream as configured (its resolvable lines without addresses).
    conf: UpstreamConf,
    /// Indexes in `conf.servers` of the resolvable lines.
    lines: Vec<usize>,
    table: ResolvedTable,
    /// The table generation the peers were built from.
    seen: u64,
    shm: Rc<Shm>,
    offset: usize,
    /// The configuration's number (`Zone::generation`).
    generation: u64,
    /// Per line: when to look at its lookup again.
    next: Vec<Instant>,
}

impl Dynamic {
    /// The upstream with each resolvable line replaced by its addresses now: one server
    /// per address, the line's parameters, an SRV record's weight unless the line set
    /// one, and records of a lower priority as backups.
    fn conf_with(&self, lists: &[Vec<Resolved>]) -> UpstreamConf {
        let mut conf = self.conf.clone();
        conf.servers.clear();
        for (i, s) in self.conf.servers.iter().enumerate() {
            match self.lines.iter().position(|&l| l == i) {
                None => conf.servers.push(s.clone()),
                Some(k) => {
                    for r in lists.get(k).into_iter().flatten() {
                        let mut one = s.clone();
                        let mut addr = r.addr;
                        // A name's addresses take the line's port (which a reload may
                        // have changed); SRV records bring their own.
                        if let Some(spec) = s.resolve.as_ref().filter(|r| r.service.is_none()) {
                            addr.set_port(spec.port);
                        }
                        one.addrs = vec![Addr::Inet(addr)];
                        one.resolve = None;
                        if s.weight == 1 {
                            one.weight = u64::from(r.weight);
                        }
                        one.backup = s.backup || (r.backup && self.conf.method.allows_backup());
                        conf.servers.push(one);
                    }
                }
            }
        }
        conf
    }
}

/// A `service=` line between its SRV answer and its targets' addresses.
struct ServiceLookup {
    records: Vec<resolver::Srv>,
    /// Per record: its target's lookup, when done.
    results: Vec<Option<resolver::Outcome>>,
    valid: Duration,
}

/// Give a rebuilt peer list the state of the peers it keeps (found by name and group).
fn carry_state(old: &PeerSet, new: &mut PeerSet) {
    for backup in [false, true] {
        let from = if backup { &old.backup } else { &old.primary };
        for p in new.group(backup).iter_mut() {
            if let Some(o) = from.iter().find(|o| o.name == p.name) {
                p.fails = o.fails;
                p.conns = o.conns;
                p.checked = o.checked;
                p.accessed = o.accessed;
                p.current_weight = o.current_weight;
                p.effective_weight = o.effective_weight.min(p.weight);
            }
        }
    }
}

/// The signature of an upstream's resolvable lines (see `ResolvedTable`).
fn lines_signature(u: &UpstreamConf, lines: &[usize]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(u.name.as_bytes());
    for &l in lines {
        if let Some(r) = &u.servers[l].resolve {
            // Not the port: a reload that changes only ports keeps the addresses, as
            // nginx copies resolved peers by name and service.
            h.update(r.host.as_bytes());
            h.update(&[0]);
            h.update(r.service.as_deref().unwrap_or("").as_bytes());
        }
    }
    (h.finalize() as u64) << 8 | lines.len() as u64
}

/// The `health_check`s of the servers that proxy to upstream `g`, in server order.
fn checks_of(cycle: &Cycle, g: usize) -> impl Iterator<Item = (&Rc<Server>, usize, &HealthCheck)> {
    cycle
        .servers
        .iter()
        .filter(move |s| s.confs.upstream_hc.group == Some(g))
        .flat_map(|s| s.confs.upstream_hc.checks.iter().enumerate().map(move |(k, hc)| (s, k, hc)))
}

/// Whether a server proxying to upstream `g` resumes upstream TLS sessions.
fn reuses_sessions(cycle: &Cycle, g: usize) -> bool {
    cycle.servers.iter().any(|s| {
        matches!(s.confs.proxy.pass, Some(crate::stream::proxy_module::Pass::Upstream(x)) if x == g)
            && s.confs.proxy_ssl.ctx.is_some()
            && s.confs.proxy_ssl.session_reuse()
    })
}

/// The places of `n` peers' sessions after a header at `head` of the zone: laid out
/// anew (emptied) when they are another configuration's.
fn session_places(shm: &Shm, lock: usize, head: usize, n: usize, generation: u64) -> Option<Vec<usize>> {
    let _g = crate::core::shm::SpinGuard::lock(shm.lock_at(lock)?);
    let b = shm.bytes(head, 8 + n * crate::core::ssl::SHARED_SESSION_SIZE)?;
    if b[..8] != generation.to_le_bytes() {
        b.fill(0);
        b[..8].copy_from_slice(&generation.to_le_bytes());
    }
    Some((0..n).map(|i| head + 8 + i * crate::core::ssl::SHARED_SESSION_SIZE).collect())
}

/// Group numbers from here on are sessions' own groups.
pub const SESSION_GROUP: usize = 1 << 40;

/// What a UDP session is found by (nginx's `ngx_lookup_udp_connection`): its listener,
/// the client's address and, on a wildcard socket, the address the client wrote to.
pub type UdpKey = (usize, std::net::SocketAddr, Option<std::net::IpAddr>);

pub struct WorkerState {
    groups: Vec<Group>,
    /// The `health_check`s of the configuration, with their probes in flight.
    pub health: HealthChecks,
    /// When the configuration was loaded here (wall-clock ms), for the `api`.
    pub loaded_ms: u64,
    /// A session's own group, made at run time by `proxy_pass $var` naming an address
    /// or a resolved host name (nginx's `ngx_stream_upstream_create_round_robin_peer`);
    /// numbered from `SESSION_GROUP`.
    session_groups: Slab<Group>,
    /// Host names being resolved, and the resolver cache.
    pub resolvers: Resolvers,
    /// `service=` lines whose SRV targets are being resolved, by (group, line).
    services: HashMap<(usize, usize), ServiceLookup>,
    /// Sessions that stopped before `WouldBlock` and must run again next turn, and
    /// whether their upstream goes first (it was readable when it connected).
    pub requeued: Vec<(usize, bool)>,
    /// Access log files, by `ConfCx::open_file` index.
    pub files: Vec<Option<LogFile>>,
    /// The copy path's buffer, shared by every session of the worker.
    pub scratch: Vec<u8>,
    /// The log phase's line and variable-value buffers, reused for every line.
    pub log_bufs: (Vec<u8>, Vec<u8>),
    /// For evaluating a value that is copied elsewhere at once (a `hash` key).
    pub eval_buf: Vec<u8>,
    pub pipes: PipePool,
    /// Open connections, client and upstream (what `worker_connections` limits).
    pub conns: usize,
    /// `worker_connections` less the listening sockets, which take one each in nginx.
    pub conn_slots: usize,
    /// Where each open connection sits in nginx's connection array: the number its
    /// "open socket ... left in connection N" alert names.
    pub slots: ConnSlots,
    pub worker_connections: usize,
    /// UDP sessions by listener, client address and destination (`UdpKey`).
    pub udp_sessions: HashMap<UdpKey, usize>,
    /// The sessions of the upstream datagram sockets (their epoll tokens).
    pub dgram_owners: DgramOwners,
    /// Buffers for reading upstream datagrams, several per call (made on first use).
    pub udp_batch: Option<Box<crate::core::mmsg::RecvBatch>>,
    /// The worker is shutting down gracefully (nginx's `ngx_exiting`): its listening
    /// sockets are closed, and a UDP session ends at its next event.
    pub exiting: bool,
}

impl WorkerState {
    /// Whether one more connection (a client's or an upstream one) fits in
    /// `worker_connections`.
    pub fn has_room(&self) -> bool {
        self.conns_in_use() < self.conn_slots
    }

    /// Connections that count against `worker_connections`: sessions' and upstream ones,
    /// the resolver's (nginx keeps one per DNS server open once used) and health checks'.
    pub fn conns_in_use(&self) -> usize {
        self.conns + self.resolvers.open_connections() + self.health.in_flight()
    }

    /// nginx's ngx_get_connection message when none is free (an alert, every time).
    pub fn not_enough(&self) -> String {
        format!("{} worker_connections are not enough", self.worker_connections)
    }

    /// Make the relay buffer at least `n` bytes (nginx's per-session
    /// `proxy_buffer_size` buffers, here one per worker). Zeroed by the allocator, so a
    /// large one costs memory only where bytes are read into it; `Err` is the size
    /// that could not be had (nginx's "malloc() failed").
    pub fn reserve_scratch(&mut self, n: usize) -> Result<(), usize> {
        if self.scratch.len() >= n {
            return Ok(());
        }
        self.scratch = crate::stream::relay::zeroed(n).ok_or(n)?;
        Ok(())
    }

    pub fn new(cycle: &Cycle) -> WorkerState {
        // Regions of each zone, in upstream order: the same layout in every worker.
        let mut used: HashMap<String, usize> = HashMap::new();
        let now = crate::core::time::instant();
        let mut health = HealthChecks::default();
        let mut shared_sessions = Vec::new();
        let groups = cycle
            .upstreams
            .iter()
            .enumerate()
            .map(|(gi, u)| {
                let peers = PeerSet::new(u);
                let balancer = new_balancer(u, &peers);
                let lines: Vec<usize> =
                    u.servers.iter().enumerate().filter(|(_, s)| s.resolve.is_some()).map(|(i, _)| i).collect();
                let mut dynamic = None;
                let shared = u.zone.as_ref().and_then(|name| {
                    let z = cycle.zones.iter().find(|z| z.name == *name)?;
                    let off = used.entry(name.clone()).or_insert(0);
                    let at = *off;
                    // Room for every address the resolvable lines may get, then their table.
                    let most = peers.primary.len() + peers.backup.len() + lines.len() * zone::MAX_RESOLVED;
                    let peers_size = zone::region_size(most).div_ceil(8) * 8;
                    let table_at = at + peers_size;
                    *off += peers_size + if lines.is_empty() { 0 } else { zone::table_size(lines.len()) };
                    let mut sp = SharedPeers::attach(z.shm.clone(), at, &peers, z.generation, now);
                    // Then a table per `health_check` naming the upstream, in server order.
                    let hashes: Vec<u32> = peers.primary.iter().chain(&peers.backup).map(|p| p.name_hash).collect();
                    for (srv, k, hc) in checks_of(cycle, gi) {
                        let table_at = (*off).div_ceil(8) * 8;
                        *off = table_at + health::table_size(most);
                        let sig = z.generation ^ (gi as u64) << 32 ^ (health.checks.len() as u64) << 48;
                        let table = HealthTable::attach(
                            z.shm.clone(),
                            at,
                            table_at,
                            &hashes,
                            most,
                            sig,
                            hc.mandatory,
                            hc.persistent,
                        );
                        match (table, sp.as_mut()) {
                            (Some(t), Some(sp)) => {
                                sp.health.push(t.clone());
                                health.checks.push(Check::new(srv.clone(), k, gi, t, Rc::from(u.name.as_str()), now));
                            }
                            _ => sp = None,
                        }
                    }
                    // Then, for an upstream `proxy_ssl` resumes sessions with, a place per
                    // peer for its session (where the zone has room: else each worker
                    // keeps its own, as without a zone).
                    if sp.is_some() && reuses_sessions(cycle, gi) {
                        let n = peers.primary.len() + peers.backup.len();
                        let head = (*off).div_ceil(8) * 8;
                        let size = 8 + n * crate::core::ssl::SHARED_SESSION_SIZE;
                        if head + size <= z.shm.len() {
                            *off = head + size;
                            if let Some(places) = session_places(&z.shm, at, head, n, z.generation) {
                                let ids = (0..peers.primary.len())
                                    .map(|index| PeerId { backup: false, index })
                                    .chain((0..peers.backup.len()).map(|index| PeerId { backup: true, index }));
                                let all = peers.primary.iter().chain(&peers.backup);
                                for ((p, id), offset) in all.zip(ids).zip(places) {
                                    let place =
                                        crate::core::ssl::SharedSession { shm: z.shm.clone(), lock: at, offset };
                                    let key = crate::stream::proxy_ssl::session_key(&u.name, id, &p.name);
                                    shared_sessions.push((key, place));
                                }
                            }
                        }
                    }
                    let table = (!lines.is_empty())
                        .then(|| {
                            let sig = lines_signature(u, &lines);
                            ResolvedTable::new(z.shm.clone(), at, table_at, lines.len(), sig)
                        })
                        .flatten();
                    if sp.is_none() || (!lines.is_empty() && table.is_none()) {
                        crate::core::log::error(
                            crate::core::conf::Level::Alert,
                            &format!("upstream zone \"{}\" is too small for upstream \"{}\"", name, u.name),
                            None,
                        );
                    }
                    if let Some(table) = table {
                        dynamic = Some(Dynamic {
                            conf: u.clone(),
                            next: vec![now; lines.len()],
                            lines: lines.clone(),
                            table,
                            seen: u64::MAX,
                            shm: z.shm.clone(),
                            offset: at,
                            generation: z.generation,
                        });
                    }
                    sp
                });
                let stats = peer_slots(&u.name, &peers, shared.is_some());
                Group { peers, balancer, shared, dynamic, epoch: 0, stats, zone: u.zone.clone() }
            })
            .collect();
        crate::core::ssl::share_client_sessions(shared_sessions);
        let files = cycle
            .open_files
            .iter()
            .map(|spec| {
                let file = match cycle.take_opened(&spec.path) {
                    Some(f) => Some(LogFile::with_file(&spec.path, Some(f))),
                    None => LogFile::open(&spec.path).ok(),
                };
                file.map(|mut f| {
                    f.configure(spec.buffer, spec.gzip, spec.flush);
                    f
                })
            })
            .collect();
        WorkerState {
            groups,
            health,
            loaded_ms: crate::stream::api_module::now_ms(),
            session_groups: Slab::new(),
            resolvers: Resolvers::default(),
            services: HashMap::new(),
            requeued: Vec::new(),
            files,
            scratch: Vec::new(),
            log_bufs: Default::default(),
            eval_buf: Vec::new(),
            pipes: PipePool::default(),
            conns: 0,
            conn_slots: cycle.core.worker_connections.get().saturating_sub(cycle.listening.len()),
            slots: ConnSlots::default(),
            worker_connections: cycle.core.worker_connections.get(),
            udp_sessions: HashMap::new(),
            dgram_owners: DgramOwners::default(),
            udp_batch: None,
            exiting: false,
        }
    }

    /// The next connection number (`$connection`; nginx counts every connection, in
    /// one sequence for all workers).
    pub fn next_connection(&mut self) -> u64 {
        crate::core::shm::next_connection()
    }

    /// Unbind a UDP session from its client address (`proxy_requests` reached, or the
    /// session ended): the client's next datagram starts a new session.
    pub fn udp_unbind(&mut self, k: Option<UdpKey>, id: usize) {
        if let Some(k) = k {
            if self.udp_sessions.get(&k) == Some(&id) {
                self.udp_sessions.remove(&k);
            }
        }
    }

    pub fn requeue(&mut self, key: usize) {
        self.requeue_with(key, false);
    }

    /// Requeue `key`, its upstream's event first when `upstream_first`.
    pub fn requeue_with(&mut self, key: usize, upstream_first: bool) {
        match self.requeued.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 |= upstream_first,
            None => self.requeued.push((key, upstream_first)),
        }
    }

    pub fn get_peer(
        &mut self,
        g: usize,
        pick: &mut PeerPick,
        key: Option<&[u8]>,
        now: Instant,
    ) -> Option<(Addr, Rc<str>)> {
        let group = self.group_mut(g)?;
        refresh(group, now);
        remap(group, pick);
        let (peers, balancer) = (&mut group.peers, &mut group.balancer);
        let id = match &group.shared {
            Some(sh) => sh.with(peers, now, |p| balancer.get(p, pick, key, now)),
            None => balancer.get(peers, pick, key, now),
        }?;
        if let Some(slot) = group.slot(id) {
            slot.add(stats::peer::CONNECTIONS, 1);
            slot.set(stats::peer::SELECTED, crate::stream::api_module::now_ms());
        }
        let p = group.peers.peer(id)?;
        if group.dynamic.is_some() {
            pick.epoch = group.epoch;
            pick.held = Some(p.name.clone());
        }
        Some((p.addr.clone(), p.name.clone()))
    }

    /// Release the session's peer; true when that failure took the peer out.
    pub fn free_peer(&mut self, g: usize, pick: &mut PeerPick, outcome: Outcome, now: Instant) -> bool {
        let Some(group) = self.group_mut(g) else { return false };
        refresh(group, now);
        remap(group, pick);
        let slot = pick.current.and_then(|id| group.slot(id));
        let disabled = match &group.shared {
            Some(sh) => sh.with(&mut group.peers, now, |p| p.release(pick, outcome, now)),
            None => group.peers.release(pick, outcome, now),
        };
        if let (Some(slot), Outcome::Failed) = (slot, outcome) {
            slot.add(stats::peer::FAILS, 1);
            if disabled {
                slot.add(stats::peer::UNAVAIL, 1);
            }
        }
        disabled
    }

    /// Count what a session did with its peer (bytes and times), before it is released.
    pub fn count_peer(&mut self, g: usize, pick: &PeerPick, sent: u64, received: u64, times: [Option<Duration>; 3]) {
        let Some(group) = self.group_mut(g) else { return };
        if group.stats.is_empty() || (group.dynamic.is_some() && pick.epoch != group.epoch) {
            return;
        }
        let Some(slot) = pick.current.and_then(|id| group.slot(id)) else { return };
        use stats::peer::*;
        slot.add(SENT, sent);
        slot.add(RECEIVED, received);
        let [connect, first_byte, response] = times;
        for (t, sum, count) in [
            (connect, CONNECT_TIME, CONNECT_COUNT),
            (first_byte, FIRST_BYTE_TIME, FIRST_BYTE_COUNT),
            (response, RESPONSE_TIME, RESPONSE_COUNT),
        ] {
            if let Some(t) = t {
                slot.add(sum, t.as_millis() as u64);
                slot.add(count, 1);
            }
        }
    }

    /// The upstreams in shared memory as the `api` shows them.
    pub fn upstream_report(&mut self, now: Instant) -> Vec<crate::stream::api_module::UpstreamReport> {
        use crate::stream::api_module::{PeerReport, UpstreamReport};
        use crate::upstream::health::State;
        let mut out = Vec::new();
        for group in &mut self.groups {
            let Some(zone) = group.zone.clone() else { continue };
            refresh(group, now);
            let Some(sh) = &group.shared else { continue };
            let peers = sh.with(&mut group.peers, now, |p| p.clone());
            let mut list = Vec::new();
            for (i, (p, backup)) in
                peers.primary.iter().map(|p| (p, false)).chain(peers.backup.iter().map(|p| (p, true))).enumerate()
            {
                let mut health = None;
                let mut hc_state = None;
                for t in &sh.health {
                    if let Some((st, s)) = t.stats(i, p.name_hash) {
                        let h: &mut crate::upstream::health::Stats = health.get_or_insert_with(Default::default);
                        h.checks += s.checks;
                        h.fails += s.fails;
                        h.unhealthy += s.unhealthy;
                        h.last_passed = s.last_passed.or(h.last_passed);
                        h.downtime = h.downtime.max(s.downtime);
                        h.downstart = match (h.downstart, s.downstart) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        hc_state = match (hc_state, st) {
                            (Some(State::Unhealthy), _) | (_, State::Unhealthy) => Some(State::Unhealthy),
                            (Some(State::Checking), _) | (_, State::Checking) => Some(State::Checking),
                            _ => Some(State::Up),
                        };
                    }
                }
                let state = if p.down {
                    "down"
                } else if hc_state == Some(State::Unhealthy) {
                    "unhealthy"
                } else if hc_state == Some(State::Checking) {
                    "checking"
                } else if p.is_failed(now) {
                    "unavail"
                } else {
                    "up"
                };
                list.push(PeerReport {
                    id: i,
                    server: p.name.to_string(),
                    name: p.server.to_string(),
                    backup,
                    weight: p.weight,
                    state,
                    active: p.conns,
                    max_conns: p.max_conns,
                    slot: group.stats.get(i).copied().flatten(),
                    health,
                });
            }
            out.push(UpstreamReport { name: peers.name.to_string(), zone, peers: list });
        }
        out
    }

    pub fn notify_connect(&mut self, g: usize, pick: &mut PeerPick) {
        if let Some(group) = self.group_mut(g) {
            let now = crate::core::time::instant();
            refresh(group, now);
            remap(group, pick);
            match &group.shared {
                Some(sh) => sh.with(&mut group.peers, now, |p| p.notify_connect(pick)),
                None => group.peers.notify_connect(pick),
            }
        }
    }

    pub fn group_name(&self, g: usize) -> Rc<str> {
        self.group(g).map(|x| x.peers.name.clone()).unwrap_or_else(|| Rc::from(""))
    }

    pub fn group_tries(&mut self, g: usize) -> usize {
        let now = crate::core::time::instant();
        let Some(group) = self.group_mut(g) else { return 0 };
        refresh(group, now);
        group.peers.tries()
    }

    /// Probe the peers whose health checks are due (and that no other worker took).
    pub fn run_health_checks(&mut self, io: &mut Io<'_>) {
        for c in 0..self.health.checks.len() {
            if !self.health.due(c, io.now) {
                continue;
            }
            let Some(group) = self.groups.get_mut(self.health.checks[c].group) else { continue };
            refresh(group, io.now);
            let targets: Vec<CheckTarget> = group
                .peers
                .primary
                .iter()
                .chain(&group.peers.backup)
                .enumerate()
                .filter(|(_, p)| !p.down)
                .map(|(index, p)| CheckTarget { index, addr: p.addr.clone(), name: p.name.clone(), hash: p.name_hash })
                .collect();
            self.health.tick(c, &targets, io);
        }
    }

    /// When the next `resolve` lookup of any upstream is due.
    pub fn next_resolve(&self) -> Option<Instant> {
        self.groups.iter().filter_map(|g| g.dynamic.as_ref()).flat_map(|d| d.next.iter().copied()).min()
    }

    /// Start the `resolve` lookups that are due and that no other worker has taken.
    pub fn run_resolves(&mut self, io: &mut Io<'_>) {
        let now = io.now;
        let now_ms = monotonic_ms();
        let mut answered = Vec::new();
        for (g, group) in self.groups.iter_mut().enumerate() {
            let Some(d) = group.dynamic.as_mut() else { continue };
            let (Some(conf), Some(timeout)) = (d.conf.resolver.clone(), d.conf.resolver_timeout) else { continue };
            for k in 0..d.lines.len() {
                if d.next[k] > now {
                    continue;
                }
                // Held for the lookup's time: if this worker dies meanwhile, another
                // takes over after it.
                let hold = timeout + Duration::from_secs(1);
                match d.table.claim(k, now_ms, hold.as_millis() as u64) {
                    Ok(()) => {
                        d.next[k] = now + hold;
                        let Some(spec) = &d.conf.servers[d.lines[k]].resolve else { continue };
                        let now_answer = match &spec.service {
                            Some(name) => {
                                let target = Target::Service { group: g, server: k };
                                self.resolvers.resolve_srv(&conf, name, target, timeout, io)
                            }
                            None => {
                                let target = Target::Upstream { group: g, server: k };
                                self.resolvers.resolve(&conf, &spec.host, target, timeout, io)
                            }
                        };
                        if let Some((outcome, valid)) = now_answer {
                            answered.push((g, k, outcome, valid));
                        }
                    }
                    Err(due) => {
                        let wait = Duration::from_millis(due.saturating_sub(now_ms).min(3_600_000));
                        d.next[k] = now + wait.max(Duration::from_millis(100));
                    }
                }
            }
        }
        for (g, k, outcome, valid) in answered {
            self.upstream_resolved(g, k, outcome, valid, io);
        }
    }

    /// A `resolve` line's lookup finished: store its addresses for every worker and
    /// say when to look again (the TTL or `valid=`, plus a second, as nginx). The new
    /// list replaces the old one in one step, so a changing answer never leaves a moment
    /// without peers; a lookup that failed (server failure, timeout) keeps the addresses
    /// the line had; "no such name" empties it, as nginx.
    pub fn upstream_resolved(
        &mut self,
        g: usize,
        k: usize,
        outcome: resolver::Outcome,
        valid: Duration,
        io: &mut Io<'_>,
    ) {
        let port = self
            .groups
            .get(g)
            .and_then(|x| x.dynamic.as_ref())
            .and_then(|d| d.conf.servers.get(*d.lines.get(k)?)?.resolve.as_ref().map(|r| r.port))
            .unwrap_or(0);
        let outcome = outcome.map(|addrs| {
            addrs.into_iter().map(|ip| Resolved { addr: SocketAddr::new(ip, port), weight: 1, backup: false }).collect()
        });
        self.store_line(g, k, outcome, valid, io);
    }

    /// Store a resolvable line's new addresses (or its failure) for every worker.
    fn store_line(
        &mut self,
        g: usize,
        k: usize,
        outcome: Result<Vec<Resolved>, i32>,
        valid: Duration,
        io: &mut Io<'_>,
    ) {
        let now_ms = monotonic_ms();
        let Some(group) = self.groups.get_mut(g) else { return };
        let Some(d) = group.dynamic.as_mut() else { return };
        let Some(spec) =
            d.conf.servers.get(d.lines.get(k).copied().unwrap_or(usize::MAX)).and_then(|s| s.resolve.clone())
        else {
            return;
        };
        let timeout = d.conf.resolver_timeout.unwrap_or(Duration::from_secs(30));
        let again = match outcome {
            Ok(list) => {
                let again = valid + Duration::from_secs(1);
                d.table.store(k, Some(&list), now_ms + again.as_millis() as u64);
                again
            }
            Err(code) => {
                let msg = match &spec.service {
                    Some(_) => format!(
                        "service {} of {} could not be resolved ({}: {})",
                        d.conf.servers[d.lines[k]].service_arg.as_deref().unwrap_or(""),
                        spec.host,
                        code,
                        resolver::strerror(code)
                    ),
                    None => format!(
                        "{} could not be resolved ({}: {})",
                        resolver::query_name(&spec.host),
                        code,
                        resolver::strerror(code)
                    ),
                };
                crate::core::log::error(crate::core::conf::Level::Error, &msg, None);
                if code == i32::from(crate::core::dns::NXDOMAIN) {
                    // The name has no addresses now (as nginx: its peers go).
                    let again = valid + Duration::from_secs(1);
                    d.table.store(k, Some(&[]), now_ms + again.as_millis() as u64);
                    again
                } else {
                    // A server failure or a timeout says nothing about the name: keep
                    // the addresses it had.
                    let again = timeout.max(Duration::from_secs(1));
                    d.table.store(k, None, now_ms + again.as_millis() as u64);
                    again
                }
            }
        };
        d.next[k] = io.now + again;
        refresh(group, io.now);
    }

    /// A `service=` line's SRV lookup finished: look up each record's target.
    pub fn service_resolved(&mut self, d: resolver::Done, io: &mut Io<'_>) {
        let Target::Service { group: g, server: k } = d.target else { return };
        if let Err(code) = d.outcome {
            self.store_line(g, k, Err(code), d.valid, io);
            return;
        }
        let Some(dy) = self.groups.get(g).and_then(|x| x.dynamic.as_ref()) else { return };
        let (Some(conf), Some(timeout)) = (dy.conf.resolver.clone(), dy.conf.resolver_timeout) else { return };
        let n = d.srv.len();
        self.services.insert((g, k), ServiceLookup { records: d.srv.clone(), results: vec![None; n], valid: d.valid });
        for (index, rec) in d.srv.iter().enumerate() {
            let target = Target::ServiceTarget { group: g, server: k, index };
            if let Some((outcome, valid)) = self.resolvers.resolve(&conf, &rec.3, target, timeout, io) {
                self.service_target_resolved(g, k, index, outcome, valid, io);
            }
        }
    }

    /// One SRV target's addresses: once every target is in, the line's peers are the
    /// targets' addresses with their records' ports and weights, the lowest priority
    /// first and the others as backups (as nginx).
    pub fn service_target_resolved(
        &mut self,
        g: usize,
        k: usize,
        index: usize,
        outcome: resolver::Outcome,
        valid: Duration,
        io: &mut Io<'_>,
    ) {
        let Some(sl) = self.services.get_mut(&(g, k)) else { return };
        if let Some(slot) = sl.results.get_mut(index) {
            *slot = Some(outcome);
        }
        sl.valid = sl.valid.min(valid);
        if sl.results.iter().any(Option::is_none) {
            return;
        }
        let Some(sl) = self.services.remove(&(g, k)) else { return };
        let server =
            self.groups.get(g).and_then(|x| x.dynamic.as_ref()).and_then(|d| d.conf.servers.get(*d.lines.get(k)?));
        let Some(server) = server.cloned() else { return };
        let host = server.resolve.as_ref().map(|r| r.host.clone()).unwrap_or_default();
        let lowest = sl.records.iter().map(|r| r.0).min().unwrap_or(0);
        let mut list = Vec::new();
        let mut failure = None;
        for (rec, res) in sl.records.iter().zip(&sl.results) {
            match res {
                Some(Ok(addrs)) => list.extend(addrs.iter().map(|ip| Resolved {
                    addr: SocketAddr::new(*ip, rec.2),
                    weight: u32::from(rec.1.max(1)),
                    backup: rec.0 > lowest,
                })),
                Some(Err(code)) => {
                    let msg = format!(
                        "{} could not be resolved ({}: {}) while resolving service {} of {}",
                        rec.3,
                        code,
                        resolver::strerror(*code),
                        server.service_arg.as_deref().unwrap_or(""),
                        host
                    );
                    crate::core::log::error(crate::core::conf::Level::Error, &msg, None);
                    let nx = i32::from(crate::core::dns::NXDOMAIN);
                    if failure.is_none() || *code == nx {
                        failure = Some(*code);
                    }
                }
                None => {}
            }
        }
        let outcome = match (list.is_empty(), failure) {
            (false, _) => Ok(list),
            (true, Some(code)) => Err(code),
            (true, None) => Err(i32::from(crate::core::dns::NXDOMAIN)),
        };
        self.store_line(g, k, outcome, sl.valid, io);
    }

    fn group(&self, g: usize) -> Option<&Group> {
        match g.checked_sub(SESSION_GROUP) {
            Some(i) => self.session_groups.get(i),
            None => self.groups.get(g),
        }
    }

    fn group_mut(&mut self, g: usize) -> Option<&mut Group> {
        match g.checked_sub(SESSION_GROUP) {
            Some(i) => self.session_groups.get_mut(i),
            None => self.groups.get_mut(g),
        }
    }

    /// A group of its own for one session: `addrs` as round-robin peers of weight 1,
    /// `max_fails=1 fail_timeout=10s`, one try each; `name` is the upstream's name.
    pub fn session_group(&mut self, name: &str, addrs: Vec<Addr>) -> usize {
        let conf = UpstreamConf {
            name: name.to_string(),
            servers: addrs
                .into_iter()
                .map(|a| match a {
                    // Its URL as written (`name` is the whole URL then).
                    Addr::Unix(_) => UpstreamServer::new(name.to_string(), vec![a]),
                    _ => UpstreamServer::new(a.to_string(), vec![a]),
                })
                .collect(),
            implicit: true,
            ..Default::default()
        };
        let peers = PeerSet::new(&conf);
        let group = Group {
            peers,
            balancer: Box::new(RoundRobin),
            shared: None,
            dynamic: None,
            epoch: 0,
            stats: Vec::new(),
            zone: None,
        };
        SESSION_GROUP + self.session_groups.insert(group)
    }

    /// The session is over: its own group goes.
    pub fn drop_session_group(&mut self, g: usize) {
        if let Some(i) = g.checked_sub(SESSION_GROUP) {
            self.session_groups.try_remove(i);
        }
    }

    pub fn next_flush(&self) -> Option<Instant> {
        self.files.iter().flatten().filter_map(|f| f.flush_at()).min()
    }

    pub fn flush_files(&mut self) {
        for f in self.files.iter_mut().flatten() {
            flush_file(f);
        }
    }

    pub fn flush_due_files(&mut self, now: Instant) {
        for f in self.files.iter_mut().flatten() {
            if f.flush_due(now) {
                flush_file(f);
            }
        }
    }

    /// USR1: open the access log `path` again (its buffer written out first); `None` if
    /// no access log writes to it. On failure the old file stays in use.
    pub fn reopen_file(&mut self, path: &str) -> Option<std::io::Result<()>> {
        let f = self.files.iter_mut().flatten().find(|f| f.path == path)?;
        flush_file(f);
        Some(f.reopen())
    }
}

/// `ngx_stream_log_flush`: a failed write is an alert, outside any session.
fn flush_file(f: &mut LogFile) {
    if let Err(e) = f.flush() {
        let (msg, err) = e.alert(&f.path);
        crate::core::log::error(crate::core::conf::Level::Alert, &msg, err);
    }
}

/// Rebuild a group's peers if the addresses of its `resolve` lines changed.
fn refresh(group: &mut Group, now: Instant) {
    let Some(d) = group.dynamic.as_mut() else { return };
    if d.table.generation() == d.seen {
        return;
    }
    let (gen, lists) = d.table.read();
    let conf = d.conf_with(&lists);
    let mut peers = PeerSet::new(&conf);
    carry_state(&group.peers, &mut peers);
    group.balancer = new_balancer(&conf, &peers);
    let health = group.shared.take().map(|s| s.health).unwrap_or_default();
    group.shared = SharedPeers::attach(d.shm.clone(), d.offset, &peers, d.generation, now);
    if let Some(s) = group.shared.as_mut() {
        s.health = health;
    }
    group.stats = peer_slots(&group.peers.name, &peers, group.shared.is_some());
    group.peers = peers;
    group.epoch += 1;
    d.seen = gen;
}

/// A pick made on an older peer list: find its peer again by name (gone: nothing to
/// release), and forget what it tried (the indexes changed).
fn remap(group: &Group, pick: &mut PeerPick) {
    if group.dynamic.is_none() || pick.epoch == group.epoch {
        return;
    }
    pick.epoch = group.epoch;
    pick.tried.clear();
    pick.in_backup = false;
    pick.current = pick.current.and_then(|id| {
        let name = pick.held.as_ref()?;
        let list = if id.backup { &group.peers.backup } else { &group.peers.primary };
        list.iter().position(|p| p.name == *name).map(|index| PeerId { backup: id.backup, index })
    });
}

/// nginx's connection array as its free list hands it out (`ngx_get_connection` pops the
/// head, `ngx_free_connection` pushes a freed slot back on it): the most recently freed
/// slot first, then slots never used, in order. The listening sockets and a worker's
/// channel to its master take the first ones.
#[derive(Default)]
pub struct ConnSlots {
    freed: Vec<u32>,
    next: u32,
}

impl ConnSlots {
    /// Slots taken before the first session: the listening sockets (and the channel).
    pub fn start_at(&mut self, n: u32) {
        self.next = n;
    }

    pub fn take(&mut self) -> u32 {
        self.freed.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub fn give(&mut self, slot: u32) {
        self.freed.push(slot);
    }
}
