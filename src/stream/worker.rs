//! The worker's reactor (`ngx_process_events_and_timers` + `ngx_stream_init_connection`):
//! one mio poll, a slab of sessions, deadline-ordered timers. Accepted connections run
//! through the phases; the content handler then owns the session until it finalizes.

use std::io;
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::core::addr::Addr;
use crate::core::conf::Level;
use crate::core::conn::{Conn, Listener, UdpClient};
use crate::core::mmsg::{self, RecvBatch};
use crate::core::process::Signals;
use crate::core::time;
use crate::core::timer::{TimerId, Timers};
use crate::stream::content::{ContentSession, Ready};
use crate::stream::cycle::Cycle;
use crate::stream::dgram_owners::DGRAM_BIT;
use crate::stream::health_check::HEALTH_BITS;
use crate::stream::phase::Flow;
use crate::stream::resolver::{Io, Outcome, Target, RESOLVER_BIT};
use crate::stream::runtime::WorkerState;
use crate::stream::session::{session_token, status, Cx, SessionCore, Side, LISTENER_BIT};

/// Accepts (with `multi_accept on`) or datagram reads per listener per wake-up: nginx
/// goes on until EAGAIN; a cap keeps a flood from starving the sessions already running.
const ACCEPTS_PER_WAKEUP: usize = 64;
/// The signal pipe's token: below the listener range, above any session token.
const SIGNAL_TOKEN: Token = Token(LISTENER_BIT - 1);
/// The `worker_shutdown_timeout` timer (no session's, resolver's or health check's token
/// has the listener bit).
const SHUTDOWN_TIMER: Token = Token(LISTENER_BIT);
/// Session slots kept while idle; beyond this the table is shrunk when it empties.
const IDLE_CAPACITY: usize = 1024;
/// The largest datagram (a UDP payload is at most 65,507 bytes over IPv4).
const UDP_MAX: usize = 65536;
/// Datagrams a UDP session may have queued; more are dropped (and counted).
const UDP_QUEUE_MAX: usize = 256;
/// A session id is `generation << KEY_BITS | slot` (tokens add the side bit).
const KEY_BITS: u32 = 31;
const KEY_MASK: usize = (1 << KEY_BITS) - 1;
/// 29 bits: a token (`id << 1 | side`) stays below the resolver's and the datagram
/// sockets' token bits.
const GEN_MASK: u32 = (1 << 29) - 1;

/// `ngx_stream_proxy_protocol_handler`: read the PROXY header before the phases run.
/// `Next` once read; `Again` to wait for it (under `proxy_protocol_timeout`).
fn read_proxy_protocol(s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
    use crate::stream::proxy_protocol::{read, Parsed, MAX_HEADER};
    s.action = Some("reading PROXY protocol");
    let t = s.srv.core().proxy_protocol_timeout.get();
    // nginx arms the timer at accept and reads the header once epoll reports the
    // client, with its hang-up if the client already closed its side (`pending_eof`:
    // the bytes after the header are then read to their end before the upstream
    // connects). A zero timeout expires at the end of the accept's turn, before that.
    if s.preread_timer.is_none() {
        cx.timers.set(&mut s.preread_timer, cx.now + t, session_token(s.key, Side::Client));
        return Flow::Again;
    }
    let mut buf = [0u8; MAX_HEADER];
    let max = s.cycle.proxy_protocol_max_header.min(MAX_HEADER);
    let n = match s.client.peek(&mut buf[..max]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flow::Again,
        Err(e) => {
            s.connection_error(Side::Client, &e, "recv() failed");
            return Flow::Finalize(status::OK);
        }
    };
    cx.timers.clear(&mut s.preread_timer);
    let (len, header) = match read(&buf[..n]) {
        Parsed::Header { len, header } => (len, header),
        Parsed::Invalid(msg) => {
            if let Some(m) = msg {
                s.log(Level::Error, &m, None);
            }
            return Flow::Finalize(status::BAD_REQUEST);
        }
    };
    // Take the header's bytes out of the socket; what follows is the client's data.
    let mut took = 0;
    while took < len {
        match std::io::Read::read(&mut s.client, &mut buf[took..len]) {
            Ok(0) | Err(_) => return Flow::Finalize(status::INTERNAL_SERVER_ERROR),
            Ok(k) => took += k,
        }
    }
    s.proxy_protocol = header;
    s.pp_pending = false;
    s.pp_read = true;
    s.action = Some("initializing session");
    Flow::Next
}

/// The session `id` names, if it is still that session (same slot, same generation).
/// Whether listener `idx` is watched with EPOLLEXCLUSIVE: only when the workers use
/// exclusive accept (several of them), and never on a reuseport socket, a worker's own.
fn watch_exclusive(cycle: &Cycle, exclusive_accept: bool, idx: usize) -> bool {
    exclusive_accept && !reuseport(cycle, idx)
}

/// Listener `idx` is this worker's own socket (`reuseport`).
fn reuseport(cycle: &Cycle, idx: usize) -> bool {
    cycle.listening.get(idx).is_some_and(|l| l.opts.reuseport)
}

/// One step of a TLS client's shutdown (`ngx_ssl_shutdown`): true when it is over (a
/// failure is logged), false while the client's close_notify is awaited.
fn tls_close_step(s: &mut SessionCore, timed_out: bool) -> bool {
    if let Some(stale) = s.client.tls_mut().and_then(|t| t.take_stale()) {
        s.log(Level::Alert, &stale, None);
    }
    let Some(t) = s.client.tls_mut() else { return true };
    match t.close_step(timed_out) {
        Ok(done) => done,
        Err(e) => {
            s.connection_error(Side::Client, &e, "SSL_shutdown() failed");
            true
        }
    }
}

fn lookup(sessions: &mut Slab<Session>, id: usize) -> Option<&mut Session> {
    sessions.get_mut(id & KEY_MASK).filter(|s| s.core.key == id)
}

#[allow(clippy::large_enum_variant)] // the proxy inline in the slot: see ContentSession
enum State {
    /// Running the phases before content (waiting here means waiting for preread).
    Phases,
    Content(ContentSession),
    /// Logged and done, its TLS shutdown waiting (up to 3 s) for the client's
    /// close_notify, as nginx's `ngx_ssl_shutdown` waits before the socket closes.
    Closing,
}

struct Session {
    core: SessionCore,
    state: State,
}

/// Why the worker's loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// TERM/INT: stop now.
    Terminate,
    /// QUIT: listeners closed and every session finished.
    Quit,
}

/// Whether this reactor is the whole server (`master_process off`) or one worker of a
/// master: nginx words signals differently for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Single,
    Worker,
}

pub struct Worker {
    role: Role,
    poll: Poll,
    cycle: Rc<Cycle>,
    listeners: Vec<Option<Listener>>,
    sessions: Slab<Session>,
    timers: Timers,
    rt: WorkerState,
    generation: u32,
    /// The datagram receive buffers (kept between reads, dropped when idle).
    udp_batch: Option<Box<RecvBatch>>,
    signals: Signals,
    quitting: bool,
    /// Stopped by WINCH (nginx's `ngx_debug_quit`): "aborting" after "exiting".
    debug_quit: bool,
    /// `worker_shutdown_timeout` after QUIT: sessions still running then are closed.
    /// nginx's ngx_shutdown_event: an ordinary timer, so a session timer due at the same
    /// moment but armed after the QUIT fires after it.
    shutdown_timer: Option<TimerId>,
    /// Accepting is paused (out of descriptors) until then, as nginx disables its
    /// accept events for 500 ms.
    accept_paused: Option<Instant>,
    /// 1, or `ACCEPTS_PER_WAKEUP` with `multi_accept on`.
    accepts_per_event: usize,
    /// Several workers share the listening sockets (EPOLLEXCLUSIVE): each moves itself
    /// to the back of a socket's wake-up queue now and then (nginx's
    /// `ngx_use_exclusive_accept` and `ngx_reorder_accept_events`).
    exclusive_accept: bool,
    /// Per listener, the accept events handled (nginx's listening connection's
    /// `requests`).
    accept_events: Vec<u64>,
    /// `accept_mutex on` with several workers: the shared lock word's zone, and whether
    /// this worker holds the mutex (and so watches the shared listening sockets).
    accept_mutex: Option<Rc<crate::core::shm::Shm>>,
    mutex_held: bool,
    /// nginx's `ngx_accept_disabled`: an eighth of worker_connections less the free
    /// connections before the last accept. While above zero, a worker with the accept
    /// mutex skips that many turns' trylock (and the exclusive-accept reorder runs on
    /// every accept event).
    accept_disabled: i64,
    /// Sessions accepted this turn whose phases start after its events and timers
    /// (nginx's ngx_stream_init_connection posts the session handler to
    /// ngx_posted_events whenever an accept mutex is in use).
    posted: Vec<usize>,
    /// A single process's command-line options, for HUP (see `on_signals`).
    reload_options: Option<crate::stream::conf::LoadOptions>,
}

impl Worker {
    /// A single process (master_process off) reads its configuration again on HUP.
    pub fn set_reload_options(&mut self, opts: crate::stream::conf::LoadOptions) {
        self.reload_options = Some(opts);
    }

    pub fn new(role: Role, cycle: Rc<Cycle>, listeners: Vec<Listener>, signals: Signals) -> io::Result<Worker> {
        let poll = Poll::new()?;
        // nginx's ngx_use_exclusive_accept: EPOLLEXCLUSIVE only with several workers
        // (and not on reuseport sockets, each a worker's own). With one worker, the old
        // and the new one after a reload are both woken, and the new one answers at once.
        // With `accept_mutex on` the workers take turns instead: a shared socket is
        // watched only by the worker holding the mutex (a reuseport one, its own, always).
        let accept_mutex = if role == Role::Worker { cycle.accept_mutex.clone() } else { None };
        let exclusive_accept = role == Role::Worker && cycle.core.worker_processes.get() > 1 && accept_mutex.is_none();
        let mut ls = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            if accept_mutex.is_none() || reuseport(&cycle, i) {
                l.register_accept(
                    poll.as_raw_fd(),
                    Token(LISTENER_BIT | i),
                    watch_exclusive(&cycle, exclusive_accept, i),
                )?;
            }
            if let (Listener::Udp(u), Some(Addr::Inet(a))) = (&l, cycle.listening.get(i).map(|x| &x.addr)) {
                if a.ip().is_unspecified() {
                    crate::core::conn::want_destination_addresses(u.as_raw_fd(), a);
                }
            }
            ls.push(Some(l));
        }
        poll.registry().register(&mut SourceFd(&signals.fd()), SIGNAL_TOKEN, Interest::READABLE)?;
        let mut rt = WorkerState::new(&cycle);
        rt.pipes = crate::core::splice::PipePool::with_limit(crate::core::splice::pipe_budget(rt.worker_connections));
        // nginx's listening sockets take the first connection slots, then a worker's
        // channel to its master.
        let channel = u32::from(role != Role::Single);
        rt.slots.start_at(ls.len() as u32 + channel);
        // The channel's slot counts against worker_connections, as in nginx.
        rt.conn_slots = rt.conn_slots.saturating_sub(channel as usize);
        // nginx's `multi_accept off` (the default): one connection per listener event.
        // The listener is level-triggered, so the rest come on the next turns, between
        // the events of sessions already running.
        let accepts_per_event = if cycle.core.multi_accept.get() { ACCEPTS_PER_WAKEUP } else { 1 };
        let accept_events = vec![0; ls.len()];
        Ok(Worker {
            role,
            poll,
            cycle,
            listeners: ls,
            sessions: Slab::with_capacity(1024),
            timers: Timers::default(),
            rt,
            generation: 0,
            udp_batch: None,
            signals,
            quitting: false,
            debug_quit: false,
            reload_options: None,
            shutdown_timer: None,
            accept_paused: None,
            accepts_per_event,
            exclusive_accept,
            accept_events,
            accept_mutex,
            mutex_held: false,
            accept_disabled: 0,
            posted: Vec::new(),
        })
    }

    /// `ngx_trylock_accept_mutex`: with the mutex, watch the shared listening sockets
    /// (if not already); without it, stop watching them (if this worker did).
    fn trylock_accept_mutex(&mut self) {
        let Some(word) = self.accept_mutex.as_ref().and_then(|m| m.lock_at(0)) else { return };
        let pid = crate::core::process::pid();
        let got = word.compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed).is_ok();
        if got == self.mutex_held {
            return;
        }
        self.mutex_held = got;
        let epfd = self.poll.as_raw_fd();
        for (i, l) in self.listeners.iter().enumerate() {
            match l {
                Some(l) if !reuseport(&self.cycle, i) => {
                    if got {
                        let _ = l.register_accept(epfd, Token(LISTENER_BIT | i), false);
                    } else {
                        l.deregister_raw(epfd);
                    }
                }
                _ => {}
            }
        }
    }

    /// The turn's connections are accepted: the mutex goes back (the sockets stay
    /// watched until another worker takes it), as nginx unlocks after its posted
    /// accept events. Only a lock this worker holds is let go (ngx_shmtx_unlock): one
    /// that stopped trying (shutting down) may have seen another take it since.
    fn unlock_accept_mutex(&mut self) {
        if let (true, Some(word)) = (self.mutex_held, self.accept_mutex.as_ref().and_then(|m| m.lock_at(0))) {
            let pid = crate::core::process::pid();
            let _ = word.compare_exchange(pid, 0, Ordering::Release, Ordering::Relaxed);
        }
    }

    pub fn run(&mut self) -> Exit {
        let mut events = Events::with_capacity(512);
        time::update();
        // `timer_resolution`: a SIGALRM tick wakes the loop, and only then does the
        // clock move (so timers fire on the ticks), as nginx's workers run with it.
        let resolution = self.cycle.core.timer_resolution.get();
        let coarse = !resolution.is_zero();
        let grid = coarse.then(|| (time::instant(), resolution));
        if coarse {
            if let Err(e) = crate::core::process::start_interval_timer(resolution) {
                crate::core::log::error(Level::Alert, "setitimer() failed", Some(&e));
            }
        }
        loop {
            // The clock is read once per turn, after epoll_wait (as nginx): the timeout is
            // computed from the turn's cached time, so a timer may fire late by the time
            // the turn took, never early.
            let now = time::instant();
            let mut timeout = self.timers.next_timeout(now);
            if let Some(f) = self.rt.next_flush() {
                let d = f.saturating_duration_since(now);
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            if let Some(f) = self.rt.next_resolve().filter(|_| !self.quitting) {
                let d = f.saturating_duration_since(now);
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            if let Some(f) = self.rt.health.next_due().filter(|_| !self.quitting) {
                let d = f.saturating_duration_since(now);
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            if let Some(at) = self.accept_paused {
                let d = at.saturating_duration_since(now);
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            let mut mutex_wait = None;
            if self.accept_mutex.is_some() && self.accept_paused.is_none() && !self.quitting {
                if self.accept_disabled > 0 {
                    // Near worker_connections: no try this turn, and no accept_mutex_delay
                    // wake-up; a lock held before stays held (its sockets stay watched)
                    // until it is let go after this turn's events.
                    self.accept_disabled -= 1;
                } else {
                    self.trylock_accept_mutex();
                }
                if !self.mutex_held && self.accept_disabled <= 0 {
                    // nginx's worker without the mutex tries again after accept_mutex_delay.
                    let d = self.cycle.core.accept_mutex_delay.get();
                    mutex_wait = Some(d);
                    timeout = Some(timeout.map_or(d, |t| t.min(d)));
                }
            }
            if coarse {
                // The ticks wake the loop for the timers.
                timeout = mutex_wait;
            }
            if !self.rt.requeued.is_empty() || !self.posted.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            // Before anything is logged: a signal's lines carry the time it came, as
            // nginx's signal handler (ngx_time_sigsafe_update) and its update after an
            // interrupted epoll_wait give them.
            // (With timer_resolution a signal moves the clock too, as nginx's handler
            // updates the log's time.)
            let signalled = || polled.is_err() || events.iter().any(|e| e.token() == SIGNAL_TOKEN);
            if !coarse || crate::core::process::take_alarm() || signalled() {
                time::update_on(grid);
            }
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    crate::core::log::error(Level::Alert, "epoll_wait() failed", Some(&e));
                } else if let Some(exit) = self.on_signals(Some(&e)) {
                    // A signal broke the wait: its handler's lines come first, as in nginx.
                    return self.exit(exit);
                }
            }
            let now = time::instant();
            for ev in events.iter() {
                let t = ev.token();
                if t == SIGNAL_TOKEN {
                    if let Some(exit) = self.on_signals(None) {
                        return self.exit(exit);
                    }
                } else if t.0 & LISTENER_BIT != 0 {
                    let idx = t.0 & !LISTENER_BIT;
                    if self.accept_paused.is_some() {
                        // Out of descriptors, every listener is off, UDP ones too: their
                        // events still in this batch go unread, as nginx's inactive ones.
                        continue;
                    }
                    if matches!(self.listeners.get(idx), Some(Some(l)) if l.is_udp()) {
                        self.datagrams(idx, now);
                    } else {
                        self.accept(idx, now);
                    }
                } else if t.0 & HEALTH_BITS == HEALTH_BITS {
                    let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                    self.rt.health.on_event(t.0, &mut io);
                } else if t.0 & RESOLVER_BIT != 0 {
                    let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                    self.rt.resolvers.on_event(t.0 & !RESOLVER_BIT, &mut io);
                } else if t.0 & DGRAM_BIT != 0 {
                    // A session's upstream datagram socket (nobody's while pooled).
                    if let Some(key) = self.rt.dgram_owners.owner(t.0 & !DGRAM_BIT) {
                        let ready = Ready::from_event(ev);
                        self.session_event(key, Side::Upstream, ready, now);
                    }
                } else {
                    let ready = Ready::from_event(ev);
                    let side = if t.0 & 1 == 0 { Side::Client } else { Side::Upstream };
                    self.session_event(t.0 >> 1, side, ready, now);
                }
            }
            self.unlock_accept_mutex();
            while let Some((id, t)) = self.timers.pop_expired(now) {
                if t == SHUTDOWN_TIMER {
                    self.shutdown_timer = None;
                    self.shutdown_timeout(now);
                } else if t.0 & HEALTH_BITS == HEALTH_BITS {
                    let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                    self.rt.health.on_timer(t.0, id, &mut io);
                } else if t.0 & RESOLVER_BIT != 0 {
                    let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                    self.rt.resolvers.on_timer(t.0 & !RESOLVER_BIT, id, &mut io);
                } else {
                    self.session_timer(t.0 >> 1, id, now);
                }
            }
            // Until none is left, as nginx's ngx_event_process_posted: a `pass` while
            // they run posts the session it hands over.
            // (Two buffers swapped, so a busy turn allocates nothing once they have grown.)
            let mut batch = std::mem::take(&mut self.posted);
            while !batch.is_empty() {
                for key in batch.drain(..) {
                    // (A UDP client's next datagram in the same batch may have run them.)
                    if lookup(&mut self.sessions, key).is_some_and(|s| matches!(s.state, State::Phases)) {
                        self.run_phases(key, now);
                    }
                }
                std::mem::swap(&mut batch, &mut self.posted);
            }
            // `server ... resolve` lookups that are due (not in a worker that is leaving).
            if !self.quitting && self.rt.next_resolve().is_some_and(|at| at <= now) {
                let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                self.rt.run_resolves(&mut io);
            }
            // Health checks that are due (not in a worker that is leaving).
            if !self.quitting && self.rt.health.next_due().is_some_and(|at| at <= now) {
                let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                self.rt.run_health_checks(&mut io);
            }
            // Answers (or timeouts) for sessions waiting on the resolver. Delivering one
            // can start another lookup that is answered from the cache at once.
            while !self.rt.resolvers.done.is_empty() {
                for d in std::mem::take(&mut self.rt.resolvers.done) {
                    match d.target {
                        Target::Session(key) => self.session_resolved(key, d.outcome, now),
                        Target::Upstream { group, server } => {
                            let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                            self.rt.upstream_resolved(group, server, d.outcome, d.valid, &mut io);
                        }
                        Target::Service { .. } => {
                            let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                            self.rt.service_resolved(d, &mut io);
                        }
                        Target::ServiceTarget { group, server, index } => {
                            let mut io = Io { registry: self.poll.registry(), timers: &mut self.timers, now };
                            self.rt.service_target_resolved(group, server, index, d.outcome, d.valid, &mut io);
                        }
                    }
                }
            }
            for (key, upstream_first) in std::mem::take(&mut self.rt.requeued) {
                let all = Ready { readable: true, writable: true, posted: true, ..Default::default() };
                // nginx posts the upstream's read event (ngx_post_event) when it is
                // ready, and reads a client it has just started to watch after the next
                // epoll_wait: an upstream that answered, or closed, while connecting
                // goes first.
                let order =
                    if upstream_first { [Side::Upstream, Side::Client] } else { [Side::Client, Side::Upstream] };
                for side in order {
                    self.session_event(key, side, all, now);
                }
            }
            self.rt.flush_due_files(now);
            if self.accept_paused.is_some_and(|at| at <= now) {
                self.resume_accept();
            }
            if self.sessions.is_empty() && self.sessions.capacity() > IDLE_CAPACITY {
                self.release_idle_memory();
            }
            // Sessions that wait with no timer do not hold the worker: nginx's leaves
            // them with an alert each ("open socket ... left").
            let untimed = |s: &mut Session| match &mut s.state {
                State::Content(c) => c.get().waits_without_timer(),
                _ => false,
            };
            if self.quitting && self.sessions.iter_mut().all(|(_, s)| untimed(s)) {
                if self.role == Role::Worker {
                    crate::core::log::error(Level::Notice, "exiting", None);
                    self.report_open_sockets();
                }
                return self.exit(Exit::Quit);
            }
        }
    }

    fn exit(&mut self, e: Exit) -> Exit {
        self.rt.flush_files();
        self.unlock_accept_mutex();
        if self.role == Role::Worker {
            // nginx's ngx_worker_process_exit destroys the cycle's pool, and so frees its
            // SSL contexts: OpenSSL drops each built-in session cache through the remove
            // callback, which takes those sessions out of a shared cache too (sessions
            // from before a reload no longer resume there).
            for srv in &self.cycle.servers {
                if let Some(ctx) = &srv.confs.ssl.ctx {
                    crate::core::ssl::flush_sessions(ctx);
                }
            }
        }
        e
    }

    /// Signals, as nginx logs and acts on them: first the "signal N received" lines (its
    /// signal handler's), then, if they broke epoll_wait, its info line, then what each
    /// one does. A worker's signals from its master stand for nginx's channel commands,
    /// which log no "signal" line (and interrupt nothing).
    fn on_signals(&mut self, interrupted: Option<&io::Error>) -> Option<Exit> {
        use crate::core::log::error;
        use crate::core::process::signal_notice;
        let single = self.role == Role::Single;
        // SAFETY: getppid has no preconditions.
        let master = if single { 0 } else { unsafe { libc::getppid() } };
        let mut todo = Vec::new();
        let mut logged = false;
        let daemonized = crate::core::process::daemonized();
        let usr2_ignored = single && crate::core::process::parent_unchanged();
        let ticks = !self.cycle.core.timer_resolution.get().is_zero();
        let mut caught = false;
        for (sig, from) in self.signals.drain() {
            caught = true;
            let action = match sig {
                // timer_resolution's tick (nginx's ngx_timer_signal_handler says nothing).
                libc::SIGALRM if ticks => continue,
                libc::SIGTERM | libc::SIGINT => ", exiting",
                libc::SIGQUIT => ", shutting down",
                libc::SIGUSR1 => ", reopening logs",
                libc::SIGHUP if single => ", reconfiguring",
                // A single process takes USR2 and WINCH as nginx's master does, and
                // then does nothing with them (nginx's single process cycle neither).
                libc::SIGUSR2 if single && !usr2_ignored => ", changing binary",
                libc::SIGWINCH if single && daemonized => ", stop accepting connections",
                libc::SIGWINCH if single => "",
                // A worker: WINCH when daemonized is a graceful stop (nginx's debug quit).
                libc::SIGWINCH if daemonized => ", shutting down",
                libc::SIGWINCH => "",
                libc::SIGHUP | libc::SIGUSR2 => ", ignoring",
                // nginx's worker ignores SIGIO, and logs SIGALRM without a word more; a
                // single process logs both as its master would.
                libc::SIGIO if !single => ", ignoring",
                libc::SIGIO | libc::SIGALRM => "",
                // nginx's handler reaps on SIGCHLD in any process: a worker has no child.
                libc::SIGCHLD if !single => "",
                _ => continue,
            };
            if single || from != master {
                error(Level::Notice, &signal_notice(sig, from, action), None);
                logged = true;
            }
            if sig == libc::SIGCHLD {
                let e = io::Error::from_raw_os_error(libc::ECHILD);
                error(Level::Info, "waitpid() failed", Some(&e));
            }
            if sig == libc::SIGUSR2 && usr2_ignored {
                error(Level::Crit, crate::core::process::USR2_IGNORED, None);
            }
            todo.push(sig);
        }
        // (A wait broken by no signal of ours, as after SIGSTOP and SIGCONT, is logged
        // too; one the master's signals or the timer tick broke is not.)
        if let (Some(e), true) = (interrupted, logged || !caught) {
            error(Level::Info, "epoll_wait() failed", Some(e));
        }
        // What the turn's signals asked for is done in nginx's cycle order, once each:
        // terminate (a single process: quit too) ends it, then quit, reconfigure (a
        // single process) and reopen.
        let has = |want: &[libc::c_int]| todo.iter().any(|s| want.contains(s));
        if has(&[libc::SIGTERM, libc::SIGINT]) || (single && has(&[libc::SIGQUIT])) {
            // nginx's single process ends at once on QUIT too (sessions are cut, not
            // logged); a worker says "exiting" (and what a graceful stop leaves).
            if !single {
                error(Level::Notice, "exiting", None);
                if self.quitting {
                    self.report_open_sockets();
                }
            }
            return Some(Exit::Terminate);
        }
        let debug_quit = !single && daemonized && has(&[libc::SIGWINCH]);
        if debug_quit || (!single && has(&[libc::SIGQUIT])) {
            self.debug_quit |= debug_quit;
            self.quit();
        }
        if single && has(&[libc::SIGHUP]) {
            // nginx's single process reads the configuration again (ngx_init_cycle), so
            // a broken one gets nginx's lines; a good one is not taken: sluice reloads
            // with a master process only.
            error(Level::Notice, "reconfiguring", None);
            let loaded = self.reload_options.as_ref().map(|o| crate::stream::conf::load_with(o, Some(&self.cycle)));
            match loaded {
                Some(Err(e)) => e.log(),
                _ => error(
                    Level::Warn,
                    "reconfiguring needs the master process (master_process on); configuration not reloaded",
                    None,
                ),
            }
        }
        if has(&[libc::SIGUSR1]) {
            error(Level::Notice, "reopening logs", None);
            let rt = &mut self.rt;
            crate::stream::conf::reopen_files(&self.cycle, |p| rt.reopen_file(p));
        }
        None
    }

    /// nginx's `ngx_worker_process_exit` for a worker stopped (TERM) while shutting down
    /// gracefully: an alert for each connection still open, in the order of nginx's
    /// connection array (`ConnSlots`), then "aborting".
    fn report_open_sockets(&mut self) {
        let mut open: Vec<(u32, u64, RawFd)> = Vec::new();
        for (_, sess) in self.sessions.iter_mut() {
            open.push((sess.core.conn_slot, sess.core.id, sess.core.client.fd_number()));
            if let State::Content(c) = &mut sess.state {
                open.extend(c.get().upstream_socket());
            }
        }
        // In slot order, as nginx walks its array.
        open.sort_unstable();
        for (slot, number, fd) in &open {
            let msg = format!("*{number} open socket #{fd} left in connection {slot}");
            crate::core::log::error(Level::Alert, &msg, None);
        }
        if !open.is_empty() || self.debug_quit {
            crate::core::log::error(Level::Alert, "aborting", None);
        }
    }

    /// Graceful stop: stop accepting, let sessions finish (bounded by
    /// `worker_shutdown_timeout`).
    fn quit(&mut self) {
        // Every turn with a QUIT says so, as nginx's worker cycle does; the shutdown
        // starts once.
        crate::core::log::error(Level::Notice, "gracefully shutting down", None);
        if self.role == Role::Worker {
            crate::core::proctitle::set("worker process is shutting down");
        }
        if self.quitting {
            return;
        }
        self.close_listeners();
        self.quitting = true;
        self.rt.exiting = true;
        let t = self.cycle.core.worker_shutdown_timeout.get();
        if !t.is_zero() {
            self.timers.set(&mut self.shutdown_timer, time::instant() + t, SHUTDOWN_TIMER);
        }
    }

    /// `ngx_close_listening_sockets`: each listening socket's connection slot is freed
    /// in turn (and counts as free under `worker_connections` again), so a connection
    /// made after the QUIT (the upstream of a session still in its phases) takes the
    /// last listener's slot, ahead of its client's in the walk of `shutdown_timeout`.
    fn close_listeners(&mut self) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Some(l) = l.take() {
                l.deregister_raw(self.poll.as_raw_fd());
                self.rt.slots.give(i as u32);
                // (ngx_free_connection: one more free connection under worker_connections.)
                self.rt.conn_slots += 1;
            }
        }
    }

    /// Room for one more session (a client and its upstream) under `worker_connections`.
    /// Stop taking connections for `accept_mutex_delay` (out of descriptors; nginx's
    /// timer when it runs without an accept mutex); they wait in the listen queue
    /// meanwhile.
    fn pause_accept(&mut self, idx: usize, now: Instant, err: &io::Error) {
        self.listen_log(idx, Level::Crit, "accept4() failed", Some(err));
        if self.accept_paused.is_none() {
            for l in self.listeners.iter().flatten() {
                l.deregister_raw(self.poll.as_raw_fd());
            }
        }
        self.accept_paused = Some(now + self.cycle.core.accept_mutex_delay.get());
    }

    fn resume_accept(&mut self) {
        self.accept_paused = None;
        for (i, l) in self.listeners.iter().enumerate() {
            let gated = self.accept_mutex.is_some() && !self.mutex_held && !reuseport(&self.cycle, i);
            if let (Some(l), false) = (l, gated) {
                let _ = l.register_accept(self.poll.as_raw_fd(), Token(LISTENER_BIT | i), self.exclusive(i));
            }
        }
    }

    fn accept(&mut self, idx: usize, now: Instant) {
        if self.accept_paused.is_some() {
            return;
        }
        for _ in 0..self.accepts_per_event {
            let Some(Some(l)) = self.listeners.get(idx) else { return };
            match l.accept() {
                Ok(_) if !self.rt.has_room() => {
                    // nginx's ngx_event_accept: no free connection for it, so the
                    // accepted socket is closed at once, and this event takes no more.
                    self.set_accept_disabled();
                    self.listen_log(idx, Level::Alert, &self.rt.not_enough(), None);
                    if let Some(g) = crate::core::stats::global() {
                        g.add(crate::core::stats::global::DROPPED, 1);
                    }
                    return;
                }
                Ok((conn, remote)) => {
                    self.set_accept_disabled();
                    self.init_session(idx, conn, remote, None, None, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED) | Some(libc::EPROTO)) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    // Out of descriptors: sessions already running go on; accepting
                    // waits (nginx disables accept events for 500 ms).
                    self.pause_accept(idx, now, &e);
                    return;
                }
                Err(e) => {
                    self.listen_log(idx, Level::Alert, "accept4() failed", Some(&e));
                    return;
                }
            }
        }
        // Level-triggered listeners report the rest on the next turn.
        self.reorder_accept_events(idx);
    }

    fn set_accept_disabled(&mut self) {
        let free = self.rt.conn_slots.saturating_sub(self.rt.conns_in_use()) as i64;
        self.accept_disabled = (self.rt.worker_connections / 8) as i64 - free;
    }

    /// A line of listener `idx` itself (nginx logs them to the listening socket's log,
    /// with no context).
    fn listen_log(&self, idx: usize, level: Level, msg: &str, err: Option<&io::Error>) {
        let srv = self.cycle.listening.get(idx).and_then(|l| l.log_server());
        match srv.and_then(|i| self.cycle.servers.get(i)) {
            Some(s) => s.error_log.write(level, None, msg, err, None),
            None => crate::core::log::error(level, msg, err),
        }
    }

    fn exclusive(&self, idx: usize) -> bool {
        watch_exclusive(&self.cycle, self.exclusive_accept, idx)
    }

    /// `ngx_reorder_accept_events`: EPOLLEXCLUSIVE wakes the worker that first added the
    /// socket, so on every 16th accept event (or every one while this worker runs short
    /// of connections) it adds the socket again and goes to the back of the queue: the
    /// workers take turns as nginx's do.
    fn reorder_accept_events(&mut self, idx: usize) {
        if !self.exclusive(idx) {
            return;
        }
        let Some(n) = self.accept_events.get_mut(idx) else { return };
        let turn = *n % 16 == 0;
        *n += 1;
        if !turn && self.accept_disabled <= 0 {
            return;
        }
        if let Some(Some(l)) = self.listeners.get(idx) {
            l.deregister_raw(self.poll.as_raw_fd());
            let _ = l.register_accept(self.poll.as_raw_fd(), Token(LISTENER_BIT | idx), true);
        }
    }

    /// `ngx_event_recvmsg`: read datagrams; each goes to the session of its client
    /// address, or starts one.
    fn datagrams(&mut self, idx: usize, now: Instant) {
        let Some(Some(Listener::Udp(sock))) = self.listeners.get(idx) else { return };
        let sock = sock.clone();
        let mut batch = self.udp_batch.take().unwrap_or_else(|| Box::new(RecvBatch::new(UDP_MAX)));
        // nginx's ngx_event_recvmsg reads one datagram per event unless `multi_accept`:
        // the listener is level-triggered, so the next one comes on a later turn, after
        // the events already in (an upstream's ICMP error, an answer ending a session)
        // have moved the balancer.
        let limit = self.accepts_per_event;
        let mut seen = 0;
        while seen < limit {
            let asked = mmsg::BATCH.min(limit - seen);
            let n = match batch.recv(sock.as_raw_fd(), asked) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.listen_log(idx, Level::Alert, "recvmsg() failed", Some(&e));
                    break;
                }
            };
            seen += n;
            for i in 0..n {
                if let Some((dgram, peer)) = batch.get(i) {
                    self.datagram(idx, &sock, dgram, peer, batch.local(i), now);
                }
            }
            // Fewer than asked: the socket is drained.
            if n < asked {
                break;
            }
        }
        self.udp_batch = Some(batch);
    }

    /// One client datagram: to the session of its address (and of the address it was
    /// sent to, on a wildcard socket), or a new session.
    fn datagram(
        &mut self,
        idx: usize,
        sock: &Rc<mio::net::UdpSocket>,
        dgram: &[u8],
        peer: SocketAddr,
        local: Option<std::net::IpAddr>,
        now: Instant,
    ) {
        if let Some(&id) = self.rt.udp_sessions.get(&(idx, peer, local)) {
            if let Some(sess) = lookup(&mut self.sessions, id) {
                // nginx reads a session's later datagrams into its proxy_buffer_size
                // buffer, which empties as they are sent: while nothing is sent (the
                // upstream is not ready yet) what does not fit is cut, then lost. The
                // count cap only bounds empty datagrams.
                let room = crate::stream::proxy_module::udp_room(&sess.core);
                if room == 0 || sess.core.udp_queue.len() >= UDP_QUEUE_MAX {
                    return;
                }
                let d = &dgram[..dgram.len().min(room)];
                sess.core.udp_queued += d.len();
                sess.core.udp_queue.push_back(d.to_vec());
                let ready = Ready { readable: true, ..Default::default() };
                self.session_event(id, Side::Client, ready, now);
                return;
            }
        }
        self.set_accept_disabled();
        if !self.rt.has_room() {
            // The datagram is dropped, as nginx's ngx_event_recvmsg drops it.
            self.listen_log(idx, Level::Alert, &self.rt.not_enough(), None);
            return;
        }
        let port = self.cycle.listening.get(idx).and_then(|l| l.addr.port()).unwrap_or(0);
        let local = local.map(|ip| SocketAddr::new(ip, port));
        let conn = Conn::Udp(UdpClient { sock: Rc::downgrade(sock), peer, local, listen_fd: sock.as_raw_fd() });
        self.init_session(idx, conn, Addr::Inet(peer), Some(dgram), None, now);
    }

    /// `ngx_stream_init_connection`: find the server, make the session, run the phases.
    /// `passed`: a connection handed over by `pass` (its local address and number).
    fn init_session(
        &mut self,
        idx: usize,
        mut conn: Conn,
        remote: Addr,
        first: Option<&[u8]>,
        passed: Option<(Addr, u64, u8)>,
        now: Instant,
    ) {
        let Some(ls) = self.cycle.listening.get(idx) else { return };
        let conn_is_udp = conn.is_udp();
        let local = match (&passed, &ls.addr) {
            (Some((a, _, _)), _) => a.clone(),
            (None, Addr::Inet(a)) if a.ip().is_unspecified() => conn.local_addr().unwrap_or_else(|| ls.addr.clone()),
            (None, a) => a.clone(),
        };
        let Some(addr_conf) = ls.addr_conf(&local) else { return };
        let (srv_idx, virtual_names) = (addr_conf.server, addr_conf.names.clone());
        // "connected to" names the address the client reached; "server:" in later
        // lines the socket (nginx's addr_conf->addr_text and listening->addr_text).
        let connected_to = addr_conf.text.clone();
        let Some(srv) = self.cycle.servers.get(srv_idx).cloned() else { return };
        let (id, passes) = match passed {
            Some((_, n, p)) => (n, p),
            None => (self.rt.next_connection(), 0),
        };
        let entry = self.sessions.vacant_entry();
        // The session's id carries a generation beside its slot, so that an event or a
        // timer of a finished session never reaches the next one in the same slot.
        self.generation = self.generation.wrapping_add(1) & GEN_MASK;
        let key = (self.generation as usize) << KEY_BITS | entry.key();
        // A PROXY header, a handshake or a preread waits for the client from the start,
        // and a TLS connection `pass` handed over is watched as it was (its relay and
        // its close_notify count on it); otherwise the client is watched once content
        // needs it (`watch_client`).
        let watch_now = !conn_is_udp
            && (addr_conf.proxy_protocol
                || addr_conf.ssl
                || conn.is_tls()
                || (srv.confs.ssl_preread.enabled.get() && self.cycle.phases.has_preread()));
        if watch_now {
            if let Err(e) = conn.register(
                self.poll.registry(),
                session_token(key, Side::Client),
                crate::stream::content::SOCKET_INTEREST,
            ) {
                crate::core::log::error(Level::Alert, "epoll_ctl() failed", Some(&e));
                return;
            }
        }
        if passed.is_none() {
            if let Some(g) = crate::core::stats::global() {
                g.add(crate::core::stats::global::ACCEPTED, 1);
                g.add(crate::core::stats::global::ACTIVE, 1);
            }
        }
        let core = SessionCore {
            id,
            key,
            debug_connection: crate::core::cidr::matches_same_family(&self.cycle.core.debug_connection, &remote),
            cycle: self.cycle.clone(),
            srv,
            client: conn,
            remote,
            local,
            listen_text: ls.text.clone(),
            start: now,
            status: 0,
            received: 0,
            sent: 0,
            upstream_states: Default::default(),
            action: Some("initializing session"),
            proxy_log: None,
            phase: 0,
            preread: Vec::new(),
            preread_timer: None,
            nodelay: ls.opts.nodelay,
            udp_queue: Default::default(),
            udp_queued: 0,
            udp_key: None,
            var_cache: Vec::new(),
            var_no_cacheable: Vec::new(),
            var_valid: Vec::new(),
            logging: false,
            var_depth: 0,
            var_cycle: false,
            realip_peer: None,
            client_hup: false,
            client_ready: passes > 0,
            client_corked: false,
            captures: Default::default(),
            limit_conn: Default::default(),
            pass_to: None,
            passes,
            virtual_names,
            limit_conn_status: 0,
            proxy_protocol: None,
            ctx: Vec::new(),
            status_zone: None,
            pp_pending: addr_conf.proxy_protocol && !conn_is_udp,
            ssl: addr_conf.ssl && !conn_is_udp,
            handshake_timer: false,
            client_registered: watch_now,
            pp_read: false,
            preread_ready: false,
            conn_slot: self.rt.slots.take(),
        };
        let mut core = core;
        if let (Some(d), Addr::Inet(peer)) = (first, &core.remote) {
            // The first datagram is received with the session (`ngx_stream_init_connection`
            // counts it), whether a proxy ever takes it or not.
            core.received += d.len() as u64;
            core.udp_queue.push_back(d.to_vec());
            let local = match &core.client {
                Conn::Udp(u) => u.local.map(|a| a.ip()),
                _ => None,
            };
            core.udp_key = Some((idx, *peer, local));
            self.rt.udp_sessions.insert((idx, *peer, local), key);
        }
        if core.log_enabled(Level::Info) {
            let udp = if core.client.is_udp() { "udp " } else { "" };
            core.log_bare(Level::Info, &format!("{}client {} connected to {}", udp, core.remote, connected_to));
        }
        entry.insert(Session { core, state: State::Phases });
        self.rt.conns += 1;
        if self.accept_mutex.is_some() {
            // So all of a turn's accepts come before their sessions take upstream
            // connections, as in nginx.
            self.posted.push(key);
        } else {
            self.run_phases(key, now);
        }
    }

    fn cx(&mut self, now: Instant) -> (Cx<'_>, &mut Slab<Session>, &Cycle) {
        (
            Cx { registry: self.poll.registry(), timers: &mut self.timers, now, rt: &mut self.rt },
            &mut self.sessions,
            &self.cycle,
        )
    }

    fn run_phases(&mut self, key: usize, now: Instant) {
        let (mut cx, sessions, _) = self.cx(now);
        let Some(sess) = lookup(sessions, key) else { return };
        if sess.core.pp_pending {
            match read_proxy_protocol(&mut sess.core, &mut cx) {
                Flow::Next => {}
                Flow::Finalize(st) => return self.finalize(key, st, now),
                _ => return,
            }
        }
        let cycle = sess.core.cycle.clone();
        let flow = match cycle.phases.run(&mut sess.core, &mut cx) {
            Flow::Next => {
                cx.timers.clear(&mut sess.core.preread_timer);
                sess.core.action = None;
                // ngx_stream_core_content_phase
                if sess.core.client.is_tcp() && sess.core.srv.core().tcp_nodelay() && !sess.core.nodelay {
                    if let Err(e) = sess.core.client.set_nodelay(true) {
                        sess.core.connection_error(Side::Client, &e, "setsockopt(TCP_NODELAY) failed");
                        self.finalize(key, status::INTERNAL_SERVER_ERROR, now);
                        return;
                    }
                }
                if let Some(z) = sess.core.srv.confs.api.zone_slot {
                    z.add(crate::core::stats::zone::PROCESSING, 1);
                    sess.core.status_zone = Some(z);
                }
                let mut content = (sess.core.srv.handler)(&mut sess.core);
                let f = content.get().start(&mut sess.core, &mut cx);
                sess.state = State::Content(content);
                if let Some(addr) = sess.core.pass_to.take() {
                    self.pass(key, addr, now);
                    return;
                }
                f
            }
            Flow::Again => {
                if sess.core.preread_timer.is_none() {
                    let t = sess.core.srv.core().preread_timeout;
                    cx.timers.set(&mut sess.core.preread_timer, now + t, session_token(key, Side::Client));
                }
                Flow::Again
            }
            f => f,
        };
        if let Flow::Finalize(st) = flow {
            self.finalize(key, st, now);
        }
    }

    fn session_event(&mut self, key: usize, side: Side, ready: Ready, now: Instant) {
        let (mut cx, sessions, _) = self.cx(now);
        let Some(sess) = lookup(sessions, key) else { return };
        let flow = match &mut sess.state {
            State::Phases => {
                if side == Side::Client && (ready.hup || ready.error) {
                    sess.core.client_hup = true;
                }
                if side == Side::Client && (ready.readable || ready.hup || ready.error) {
                    sess.core.client_ready = true;
                }
                let handshaking = sess.core.handshake_timer && ready.writable;
                if side == Side::Client && (ready.readable || ready.hup || ready.error || handshaking) {
                    self.run_phases(key, now);
                }
                return;
            }
            State::Content(c) => c.get().on_event(&mut sess.core, side, ready, &mut cx),
            State::Closing => {
                if side == Side::Client && tls_close_step(&mut sess.core, false) {
                    self.close_session(key, now);
                }
                return;
            }
        };
        if let Flow::Finalize(st) = flow {
            self.finalize(key, st, now);
        }
    }

    fn session_resolved(&mut self, key: usize, outcome: Outcome, now: Instant) {
        let (mut cx, sessions, _) = self.cx(now);
        let Some(sess) = lookup(sessions, key) else { return };
        let flow = match &mut sess.state {
            State::Phases | State::Closing => return,
            State::Content(c) => c.get().on_resolved(&mut sess.core, outcome, &mut cx),
        };
        if let Flow::Finalize(st) = flow {
            self.finalize(key, st, now);
        }
    }

    fn session_timer(&mut self, key: usize, id: TimerId, now: Instant) {
        let (mut cx, sessions, _) = self.cx(now);
        let Some(sess) = lookup(sessions, key) else { return };
        let flow = match &mut sess.state {
            State::Phases => {
                if sess.core.preread_timer == Some(id) && sess.core.pp_pending {
                    // ngx_stream_proxy_protocol_handler's timeout.
                    sess.core.preread_timer = None;
                    let e = io::Error::from_raw_os_error(libc::ETIMEDOUT);
                    sess.core.log(Level::Info, "client timed out", Some(&e));
                    self.finalize(key, status::OK, now);
                    return;
                }
                if sess.core.preread_timer == Some(id) && sess.core.handshake_timer {
                    // ssl_handshake_timeout: the session ends with 500, nothing logged
                    // (ngx_stream_ssl_handshake_handler).
                    sess.core.preread_timer = None;
                    sess.core.handshake_timer = false;
                    crate::stream::api_module::count_ssl(&sess.core, crate::stream::api_module::SslEvent::TimedOut);
                    self.finalize(key, status::INTERNAL_SERVER_ERROR, now);
                    return;
                }
                if sess.core.preread_timer == Some(id) {
                    // A preread timeout ends the session, as nginx 1.22.1 does (recorded:
                    // status 200, nothing sent).
                    sess.core.preread_timer = None;
                    self.finalize(key, status::OK, now);
                }
                return;
            }
            State::Content(c) => c.get().on_timeout(&mut sess.core, id, &mut cx),
            State::Closing => {
                if sess.core.preread_timer == Some(id) {
                    // No close_notify came in 3 s: close quietly (nginx's `c->timedout`).
                    sess.core.preread_timer = None;
                    tls_close_step(&mut sess.core, true);
                    self.close_session(key, now);
                }
                return;
            }
        };
        if let Flow::Finalize(st) = flow {
            self.finalize(key, st, now);
        }
    }

    /// Idle after a burst: give the session table's and the allocator's high-water memory
    /// back to the system.
    fn release_idle_memory(&mut self) {
        self.sessions.shrink_to_fit();
        self.rt.udp_sessions.shrink_to_fit();
        self.rt.dgram_owners.shrink_to_fit();
        self.udp_batch = None;
        // SAFETY: malloc_trim only returns free heap memory to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// `ngx_shutdown_timer_handler`: close every session still running.
    ///
    /// nginx walks its connection array in slot order, marks each connection closed and
    /// in error and calls its read handler: the content handlers end their sessions
    /// (`Content::on_shutdown_timeout`), a TLS connection then closes without
    /// close_notify, one waiting for the client's close_notify closes silently, and a
    /// session still in the phases (handshake, PROXY header, preread) does not look and
    /// runs on until its own timeout. An upstream connection in a lower slot than its
    /// client's is met first, by the upstream's own handler
    /// (`Content::on_upstream_shutdown_timeout`).
    fn shutdown_timeout(&mut self, now: Instant) {
        let mut walk: Vec<(u32, usize, Side)> = Vec::with_capacity(self.sessions.len());
        for (_, sess) in self.sessions.iter_mut() {
            walk.push((sess.core.conn_slot, sess.core.key, Side::Client));
            if let State::Content(c) = &mut sess.state {
                if let Some((slot, _, _)) = c.get().upstream_socket() {
                    walk.push((slot, sess.core.key, Side::Upstream));
                }
            }
        }
        walk.sort_unstable_by_key(|&(slot, _, _)| slot);
        for (slot, key, side) in walk {
            let (mut cx, sessions, _) = self.cx(now);
            let Some(sess) = lookup(sessions, key) else { continue };
            let ended = match (side, &mut sess.state) {
                (Side::Upstream, State::Content(c)) => {
                    // Still the connection that was in this slot (not ended, not
                    // replaced by a retry, which nginx's walk has passed by).
                    if c.get().upstream_socket().map(|(at, _, _)| at) != Some(slot) {
                        continue;
                    }
                    c.get().on_upstream_shutdown_timeout(&mut sess.core, &mut cx)
                }
                (Side::Upstream, _) => continue,
                (Side::Client, state) => {
                    if let Some(t) = sess.core.client.tls_mut() {
                        t.abandon();
                    }
                    match state {
                        State::Phases => Flow::Again,
                        State::Closing => {
                            self.close_session(key, now);
                            continue;
                        }
                        State::Content(c) => c.get().on_shutdown_timeout(&mut sess.core),
                    }
                }
            };
            if let Flow::Finalize(st) = ended {
                self.finalize(key, st, now);
            }
        }
    }

    /// `ngx_stream_pass_handler`'s hand-over: the connection leaves this session (which
    /// ends without a log line, as nginx's) and starts again on the listener of `addr`.
    fn pass(&mut self, key: usize, addr: Addr, now: Instant) {
        let found = self.cycle.listening.iter().position(|ls| {
            !ls.opts.udp
                && match (&ls.addr, &addr) {
                    (Addr::Inet(l), Addr::Inet(a)) if l.ip().is_unspecified() => {
                        l.is_ipv4() == a.is_ipv4() && l.port() == a.port()
                    }
                    (l, a) => l == a,
                }
        });
        let Some(idx) = found else {
            if let Some(sess) = lookup(&mut self.sessions, key) {
                sess.core.log(Level::Error, &format!("port not found for \"{}\"", addr), None);
            }
            self.finalize(key, status::OK, now);
            return;
        };
        let Some(sess) = self.sessions.try_remove(key & KEY_MASK) else { return };
        let Session { core, state } = sess;
        drop(state);
        let SessionCore { mut client, remote, id, mut limit_conn, passes, conn_slot, client_registered, .. } = core;
        // The connection itself goes over: its slot is the next one taken.
        self.rt.slots.give(conn_slot);
        // nginx keeps the first server's per-connection state (limit_conn counts) until
        // the connection closes; here it is released at the hand-over.
        limit_conn.release_all();
        if client_registered {
            let _ = client.deregister(self.poll.registry());
        }
        self.rt.conns = self.rt.conns.saturating_sub(1);
        self.init_session(idx, client, remote, None, Some((addr, id, passes.saturating_add(1))), now);
    }

    /// `ngx_stream_finalize_session`: status, content close, log phase, close.
    fn finalize(&mut self, key: usize, st: u16, now: Instant) {
        let (mut cx, sessions, _) = self.cx(now);
        let Some(sess) = lookup(sessions, key) else { return };
        if let State::Closing = sess.state {
            // Already logged: only the wait for the close_notify is cut short.
            return self.close_session(key, now);
        }
        sess.core.status = st;
        if sess.core.log_enabled(Level::Debug) {
            sess.core.log(Level::Debug, &format!("finalize stream session: {}", st), None);
        }
        let mut write_deadline = None;
        if let State::Content(c) = &mut sess.state {
            write_deadline = c.get().client_write_deadline();
            c.get().close(&mut sess.core, &mut cx);
        }
        cx.timers.clear(&mut sess.core.preread_timer);
        let cycle = sess.core.cycle.clone();
        // The log phase keeps the session's last action, as nginx's log context does
        // ("send() to syslog failed while returning text").
        cycle.phases.run_log(&mut sess.core, &mut cx);
        // ngx_stream_close_connection: a TLS session says close_notify first, and waits
        // for the client's (under the same action: nginx's line for a failure says "while
        // returning text" or "while proxying connection").
        if sess.core.client.is_tls() && !tls_close_step(&mut sess.core, false) {
            sess.state = State::Closing;
            let token = session_token(key, Side::Client);
            // 3 s for the client's close_notify, or less if proxy_timeout's timer on
            // the client's write event comes first: either ends it quietly.
            let at =
                write_deadline.map_or(now + Duration::from_millis(3000), |w| w.min(now + Duration::from_millis(3000)));
            cx.timers.set(&mut sess.core.preread_timer, at, token);
            return;
        }
        self.close_session(key, now);
    }

    /// `ngx_stream_close_connection` after the TLS shutdown: the session's descriptors,
    /// counts and slot are given back.
    fn close_session(&mut self, key: usize, now: Instant) {
        let (cx, sessions, _) = self.cx(now);
        let Some(sess) = lookup(sessions, key) else { return };
        cx.timers.clear(&mut sess.core.preread_timer);
        // Bytes held back with MSG_MORE leave with the end of file, or before the reset
        // of a close with unread bytes.
        if sess.core.client_corked {
            sess.core.client.end_corked();
        }
        sess.core.action = None;
        sess.core.limit_conn.release_all();
        cx.rt.conns = cx.rt.conns.saturating_sub(1);
        if let Some(g) = crate::core::stats::global() {
            g.sub(crate::core::stats::global::ACTIVE, 1);
        }
        cx.rt.slots.give(sess.core.conn_slot);
        cx.rt.udp_unbind(sess.core.udp_key, key);
        // Free the slot now: the client socket closes here (no epoll_ctl(DEL): closing
        // takes it out of the epoll set), and later sessions in this slot have other ids.
        self.sessions.try_remove(key & KEY_MASK);
        // An idle worker holds no pipes: its descriptors are back to nginx's.
        if self.sessions.is_empty() {
            self.rt.pipes.release_free();
        }
    }
}
