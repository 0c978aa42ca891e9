//! A worker's mutable state for one cycle: peer accounting per upstream group, the
//! files access logs write to, and sessions that used up their turn.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use slab::Slab;

use crate::core::addr::Addr;
use crate::core::logfile::LogFile;
use crate::core::splice::PipePool;
use crate::stream::cycle::Cycle;
use crate::stream::resolver::Resolvers;
use crate::stream::udp_pool::UdpPool;
use crate::upstream::round_robin::RoundRobin;
use crate::upstream::zone::{self, SharedPeers};
use crate::upstream::{new_balancer, Balancer, Outcome, PeerPick, PeerSet, UpstreamConf, UpstreamServer};

struct Group {
    peers: PeerSet,
    balancer: Box<dyn Balancer>,
    /// The peers' state in a shared memory zone, when the upstream has `zone`.
    shared: Option<SharedPeers>,
}

/// Group numbers from here on are sessions' own groups.
pub const SESSION_GROUP: usize = 1 << 40;

pub struct WorkerState {
    groups: Vec<Group>,
    /// A session's own group, made at run time by `proxy_pass $var` naming an address
    /// or a resolved host name (nginx's `ngx_stream_upstream_create_round_robin_peer`);
    /// numbered from `SESSION_GROUP`.
    session_groups: Slab<Group>,
    /// Host names being resolved, and the resolver cache.
    pub resolvers: Resolvers,
    /// Sessions that stopped before `WouldBlock` and must run again next turn.
    pub requeued: Vec<usize>,
    /// Access log files, by `ConfCx::open_file` index.
    pub files: Vec<Option<LogFile>>,
    /// The copy path's buffer, shared by every session of the worker.
    pub scratch: Vec<u8>,
    pub pipes: PipePool,
    /// Open connections, client and upstream (what `worker_connections` limits).
    pub conns: usize,
    /// UDP sessions by (listener, client address).
    pub udp_sessions: HashMap<(usize, std::net::SocketAddr), usize>,
    /// Upstream UDP sockets left by finished sessions, for the next ones.
    pub udp_pool: UdpPool,
    next_conn: u64,
}

impl WorkerState {
    pub fn new(cycle: &Cycle) -> WorkerState {
        // Regions of each zone, in upstream order: the same layout in every worker.
        let mut used: HashMap<String, usize> = HashMap::new();
        let now = crate::core::time::instant();
        let groups = cycle
            .upstreams
            .iter()
            .map(|u| {
                let peers = PeerSet::new(u);
                let balancer = new_balancer(u, &peers);
                let shared = u.zone.as_ref().and_then(|name| {
                    let z = cycle.zones.iter().find(|z| z.name == *name)?;
                    let off = used.entry(name.clone()).or_insert(0);
                    let at = *off;
                    *off += zone::region_size(peers.primary.len() + peers.backup.len()).div_ceil(8) * 8;
                    let sp = SharedPeers::attach(z.shm.clone(), at, &peers, now);
                    if sp.is_none() {
                        crate::core::log::error(
                            crate::core::conf::Level::Alert,
                            &format!("upstream zone \"{}\" is too small for upstream \"{}\"", name, u.name),
                            None,
                        );
                    }
                    sp
                });
                Group { peers, balancer, shared }
            })
            .collect();
        let files = cycle
            .open_files
            .iter()
            .map(|spec| {
                LogFile::open(&spec.path).ok().map(|mut f| {
                    f.configure(spec.buffer, spec.gzip, spec.flush);
                    f
                })
            })
            .collect();
        WorkerState {
            groups,
            session_groups: Slab::new(),
            resolvers: Resolvers::default(),
            requeued: Vec::new(),
            files,
            scratch: Vec::new(),
            pipes: PipePool::default(),
            conns: 0,
            udp_sessions: HashMap::new(),
            udp_pool: UdpPool::default(),
            next_conn: 0,
        }
    }

    /// The next connection number (`$connection`; nginx counts every connection).
    pub fn next_connection(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    /// Unbind a UDP session from its client address (`proxy_requests` reached, or the
    /// session ended): the client's next datagram starts a new session.
    pub fn udp_unbind(&mut self, k: Option<(usize, std::net::SocketAddr)>, id: usize) {
        if let Some(k) = k {
            if self.udp_sessions.get(&k) == Some(&id) {
                self.udp_sessions.remove(&k);
            }
        }
    }

    pub fn requeue(&mut self, key: usize) {
        if !self.requeued.contains(&key) {
            self.requeued.push(key);
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
        let (peers, balancer) = (&mut group.peers, &mut group.balancer);
        let id = match &group.shared {
            Some(sh) => sh.with(peers, now, |p| balancer.get(p, pick, key, now)),
            None => balancer.get(peers, pick, key, now),
        }?;
        group.peers.peer(id).map(|p| (p.addr.clone(), p.name.clone()))
    }

    /// Release the session's peer; true when that failure took the peer out.
    pub fn free_peer(&mut self, g: usize, pick: &mut PeerPick, outcome: Outcome, now: Instant) -> bool {
        let Some(group) = self.group_mut(g) else { return false };
        match &group.shared {
            Some(sh) => sh.with(&mut group.peers, now, |p| p.release(pick, outcome, now)),
            None => group.peers.release(pick, outcome, now),
        }
    }

    pub fn notify_connect(&mut self, g: usize, pick: &PeerPick) {
        if let Some(group) = self.group_mut(g) {
            let now = crate::core::time::instant();
            match &group.shared {
                Some(sh) => sh.with(&mut group.peers, now, |p| p.notify_connect(pick)),
                None => group.peers.notify_connect(pick),
            }
        }
    }

    pub fn group_name(&self, g: usize) -> Rc<str> {
        self.group(g).map(|x| x.peers.name.clone()).unwrap_or_else(|| Rc::from(""))
    }

    pub fn group_tries(&self, g: usize) -> usize {
        self.group(g).map(|x| x.peers.tries()).unwrap_or(0)
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
            servers: addrs.into_iter().map(|a| UpstreamServer::new(a.to_string(), vec![a])).collect(),
            implicit: true,
            ..Default::default()
        };
        let peers = PeerSet::new(&conf);
        SESSION_GROUP + self.session_groups.insert(Group { peers, balancer: Box::new(RoundRobin), shared: None })
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
            let _ = f.flush();
        }
    }

    pub fn flush_due_files(&mut self, now: Instant) {
        for f in self.files.iter_mut().flatten() {
            if f.flush_due(now) {
                let _ = f.flush();
            }
        }
    }

    pub fn reopen_files(&mut self) {
        for f in self.files.iter_mut().flatten() {
            let _ = f.reopen();
        }
    }
}
