//! A stream session (`ngx_stream_session_t`): the client connection, what the phases and
//! the content handler record about it, and how its error-log lines are worded.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::{Registry, Token};

use crate::core::addr::Addr;
use crate::core::conf::Level;
use crate::core::conn::Conn;
use crate::core::log::LogContext;
use crate::core::timer::{TimerId, Timers};
use crate::stream::cycle::{Cycle, Server};
use crate::stream::phase::{Flow, PhaseHandler};
use crate::stream::runtime::WorkerState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Upstream = 1,
}

/// Listeners use tokens with the top bit set; sessions use `key << 1 | side`.
pub const LISTENER_BIT: usize = 1 << (usize::BITS - 1);

pub fn session_token(key: usize, side: Side) -> Token {
    Token(key << 1 | side as usize)
}

/// nginx's stream statuses.
pub mod status {
    pub const OK: u16 = 200;
    pub const BAD_REQUEST: u16 = 400;
    pub const FORBIDDEN: u16 = 403;
    pub const INTERNAL_SERVER_ERROR: u16 = 500;
    pub const BAD_GATEWAY: u16 = 502;
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}

/// One upstream attempt (`ngx_stream_upstream_state_t`).
#[derive(Debug, Clone, Default)]
pub struct UpstreamState {
    pub peer: Option<Rc<str>>,
    pub connect_time: Option<Duration>,
    pub first_byte_time: Option<Duration>,
    pub response_time: Option<Duration>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A session's upstream attempts in order. The first is kept inline, so a session that
/// needs one try allocates nothing for them.
#[derive(Debug, Default)]
pub struct UpstreamStates {
    first: Option<UpstreamState>,
    more: Vec<UpstreamState>,
}

impl UpstreamStates {
    pub fn push(&mut self, st: UpstreamState) {
        if self.first.is_none() {
            self.first = Some(st);
        } else {
            self.more.push(st);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn last(&self) -> Option<&UpstreamState> {
        self.more.last().or(self.first.as_ref())
    }

    pub fn last_mut(&mut self) -> Option<&mut UpstreamState> {
        match self.more.last_mut() {
            Some(st) => Some(st),
            None => self.first.as_mut(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &UpstreamState> {
        self.first.iter().chain(&self.more)
    }
}

/// Capture groups of the last regex match: the subject and each group's range.
#[derive(Debug, Clone, Default)]
pub struct Captures {
    pub subject: Vec<u8>,
    pub groups: Vec<Option<(usize, usize)>>,
}

impl Captures {
    /// Group `n` (0 is the whole match).
    pub fn get(&self, n: usize) -> Option<&[u8]> {
        let (a, b) = (*self.groups.get(n)?)?;
        self.subject.get(a..b)
    }
}

/// The worker's state that handlers may use while handling one session's event.
pub struct Cx<'a> {
    pub registry: &'a Registry,
    pub timers: &'a mut Timers,
    pub now: Instant,
    pub rt: &'a mut WorkerState,
}

/// The tail the proxy adds to every line of its session (`ngx_stream_proxy_log_error`).
#[derive(Debug, Clone, Default)]
pub struct ProxyLog {
    pub upstream: Option<Rc<str>>,
    pub received: u64,
    pub sent: u64,
}

pub struct SessionCore {
    /// `$connection`.
    pub id: u64,
    pub key: usize,
    /// The client matches `debug_connection`: its lines go to every error log of the
    /// server's chain, whatever their levels.
    pub debug_connection: bool,
    pub cycle: Rc<Cycle>,
    pub srv: Rc<Server>,
    pub client: Conn,
    pub remote: Addr,
    pub local: Addr,
    /// The listening address as written in logs ("server: ...").
    pub listen_text: Rc<str>,
    pub start: Instant,
    pub status: u16,
    /// Bytes read from and written to the client.
    pub received: u64,
    pub sent: u64,
    pub upstream_states: UpstreamStates,
    /// What the session is doing, for "while ..." in the error log.
    pub action: Option<&'static str>,
    pub proxy_log: Option<ProxyLog>,
    /// Index of the next phase handler to run.
    pub phase: usize,
    /// The bytes the preread phase looked at (still in the socket: read with MSG_PEEK).
    pub preread: Vec<u8>,
    pub preread_timer: Option<TimerId>,
    /// TCP_NODELAY is already on (inherited from the listening socket).
    pub nodelay: bool,
    /// UDP: datagrams from the client not yet passed on.
    pub udp_queue: std::collections::VecDeque<Vec<u8>>,
    /// Bytes of the later datagrams in `udp_queue` (the first is the session's preread
    /// buffer, apart in nginx).
    pub udp_queued: usize,
    /// UDP: the (listener, client, destination) binding that routes datagrams to this
    /// session.
    pub udp_key: Option<crate::stream::runtime::UdpKey>,
    /// Kept values of variables (map, geo, set, cacheable built-ins), by variable
    /// index: `Some(None)` keeps "not found", as nginx keeps a cacheable variable's
    /// `not_found` (a `$ssl_preread_*` read before the preread phase stays not found).
    pub var_cache: Vec<Option<Option<Vec<u8>>>>,
    /// Which kept values a volatile variable's own evaluation made (nginx's slot
    /// `no_cacheable`): a flush forgets only those, so a value `set` or a named capture
    /// stored into a volatile variable stays for the session, as in nginx.
    pub var_no_cacheable: Vec<bool>,
    /// The built-ins whose nginx slot holds a value now (evaluated in this session, and
    /// not flushed since): only the others meet the depth limit (see `eval_var`).
    pub var_valid: Vec<bool>,
    /// The log phase runs (cacheable built-ins are no longer cached).
    pub logging: bool,
    /// The socket's peer, kept when realip replaced `remote` ($realip_remote_addr).
    pub realip_peer: Option<Addr>,
    /// The client connection's slot in nginx's connection array (`ConnSlots`).
    pub conn_slot: u32,
    /// How many variable evaluations are under way, one inside another (a map whose
    /// value names a variable, ...): nginx gives up at 100, `ngx_stream_variable_depth`.
    pub var_depth: u8,
    /// The last `eval_var` stopped at that limit itself: "cycle while evaluating".
    pub var_cycle: bool,
    /// The client's end (or an error) was signalled while the phases before content ran
    /// (reading a PROXY header, preread): that edge will not come again, so the relay
    /// must read the client to its end.
    pub client_hup: bool,
    /// The client raised a readable edge (or was handed over by `pass`) while the
    /// phases before content ran: the relay starts by reading it (nginx's
    /// `c->read->ready`). Without it the relay waits for the client's first edge.
    pub client_ready: bool,
    /// The last regex match ($1..$9), as nginx keeps `s->captures`.
    pub captures: Captures,
    /// The limit_conn counts the session holds, given back when it ends, after the log
    /// phase (nginx's pool cleanup).
    pub limit_conn: crate::stream::limit_conn_module::HeldCounts,
    /// Set by `pass`: hand the connection to the listener of this address.
    pub pass_to: Option<Addr>,
    /// How many times `pass` has handed this connection over (nginx allows 10).
    pub passes: u8,
    /// The servers sharing the address the client connected to, by name: where
    /// `find_virtual_server` looks.
    pub virtual_names: Option<Rc<crate::stream::server_names::VirtualNames>>,
    /// `$limit_conn_status` (nginx's `s->limit_conn_status`): 0 none, 1 PASSED,
    /// 2 REJECTED, 3 REJECTED_DRY_RUN.
    pub limit_conn_status: u8,
    /// The PROXY protocol header the client sent (`listen ... proxy_protocol`), and
    /// whether it is still to be read.
    pub proxy_protocol: Option<crate::stream::proxy_protocol::ProxyHeader>,
    pub pp_pending: bool,
    /// A PROXY header was taken, with addresses or without (`UNKNOWN`, v2 `LOCAL`):
    /// nginx's client read event is left ready after it, so the client is read at once.
    pub pp_read: bool,
    /// The preread phase's last read filled the room it asked for: nginx's read event
    /// stays ready after such a read, so the proxy reads the client at once.
    pub preread_ready: bool,
    /// The client's last bytes wait in its socket (written with `MSG_MORE`): they leave
    /// with the end of file sent after the log phase, as nginx closes the client only
    /// after logging (a client that sees its end of file finds the session logged).
    pub client_corked: bool,
    /// The connection came to a `listen ... ssl` address: the ssl phase handshakes.
    pub ssl: bool,
    /// `preread_timer` runs the ssl handshake's timeout.
    pub handshake_timer: bool,
    /// The client's socket is in epoll. nginx adds a connection only when something
    /// first waits on it (a PROXY header, a handshake, a preread, the relay): a client
    /// a proxy has not started to read raises no event while the upstream connects,
    /// and its first one is queued behind whatever was ready before (`watch_client`).
    pub client_registered: bool,
    /// Modules' per-session state, one value per type (nginx's module ctx).
    pub ctx: Vec<Box<dyn std::any::Any>>,
    /// The `status_zone` counting this session as processing (from its content phase
    /// on), given back in the log phase.
    pub status_zone: Option<crate::core::stats::Slot>,
}

impl LogContext for SessionCore {
    fn write_context(&self, out: &mut String) {
        use std::fmt::Write;
        if let Some(a) = self.action {
            let _ = write!(out, " while {}", a);
        }
        let udp = if self.client.is_udp() { "udp " } else { "" };
        let _ = write!(out, ", {}client: {}, server: {}", udp, self.remote.host_text(), self.listen_text);
        if let Some(p) = &self.proxy_log {
            if let Some(u) = &p.upstream {
                let _ = write!(out, ", upstream: \"{}\"", u);
            }
            let _ = write!(
                out,
                ", bytes from/to client:{}/{}, bytes from/to upstream:{}/{}",
                self.received, self.sent, p.received, p.sent
            );
        }
    }
}

impl SessionCore {
    /// Put the client's socket in epoll, once (nginx's first `ngx_handle_read_event`).
    /// Bytes or an end already there raise an event at once, after those already
    /// ready.
    /// `Err` is how the session ends when epoll refuses it.
    pub fn watch_client(&mut self, r: &Registry) -> Result<(), Flow> {
        if self.client_registered {
            return Ok(());
        }
        let token = session_token(self.key, Side::Client);
        if let Err(e) = self.client.register(r, token, crate::stream::content::SOCKET_INTEREST) {
            self.log(Level::Alert, "epoll_ctl() failed", Some(&e));
            return Err(Flow::Finalize(status::INTERNAL_SERVER_ERROR));
        }
        self.client_registered = true;
        Ok(())
    }

    /// A module's per-session state, if it set one.
    pub fn ctx<T: 'static>(&self) -> Option<&T> {
        self.ctx.iter().find_map(|b| b.downcast_ref::<T>())
    }

    pub fn set_ctx<T: 'static>(&mut self, v: T) {
        match self.ctx.iter_mut().find(|b| b.is::<T>()) {
            Some(b) => *b = Box::new(v),
            None => self.ctx.push(Box::new(v)),
        }
    }

    /// Keep variable `idx`'s value for the rest of the session (`None`: not found);
    /// `eval_var` answers from it before any getter.
    /// A flush of variable `idx` (`ngx_stream_script_flush_complex_value`): its kept
    /// value is forgotten if a volatile evaluation made it.
    pub fn flush_var(&mut self, idx: usize) {
        if self.var_no_cacheable.get(idx) == Some(&true) {
            self.var_no_cacheable[idx] = false;
            if let Some(slot) = self.var_cache.get_mut(idx) {
                *slot = None;
            }
            if let Some(v) = self.var_valid.get_mut(idx) {
                *v = false;
            }
        }
    }

    /// A built-in was evaluated: its nginx slot holds a value until a flush, if it is
    /// no-cacheable, or for the session.
    pub fn set_var_valid(&mut self, idx: usize, nocacheable: bool) {
        let n = self.slots_for(idx);
        if self.var_valid.len() < n {
            self.var_valid.resize(n, false);
        }
        self.var_valid[idx] = true;
        if nocacheable {
            if self.var_no_cacheable.len() < n {
                self.var_no_cacheable.resize(n, false);
            }
            self.var_no_cacheable[idx] = true;
        }
    }

    /// Keep the value a volatile variable's evaluation made, until the next flush.
    pub fn cache_var_no_cacheable(&mut self, idx: usize, v: Option<Vec<u8>>) {
        self.cache_var(idx, v);
        let n = self.slots_for(idx);
        if self.var_no_cacheable.len() < n {
            self.var_no_cacheable.resize(n, false);
        }
        self.var_no_cacheable[idx] = true;
    }

    /// How long a slot vector must be to hold `idx`: every variable of the
    /// configuration at once, so a session grows each vector once.
    fn slots_for(&self, idx: usize) -> usize {
        self.cycle.vars.len().max(idx + 1)
    }

    /// Keep variable `idx`'s value for the session (`set`, a named capture, a cached
    /// variable's evaluation).
    pub fn cache_var(&mut self, idx: usize, v: Option<Vec<u8>>) {
        if let Some(m) = self.var_no_cacheable.get_mut(idx) {
            *m = false;
        }
        let n = self.slots_for(idx);
        if self.var_cache.len() < n {
            self.var_cache.resize(n, None);
        }
        if let Some(slot) = self.var_cache.get_mut(idx) {
            *slot = Some(v);
        }
    }

    pub fn log_enabled(&self, level: Level) -> bool {
        self.debug_connection || self.srv.error_log.enabled(level)
    }

    /// A session line with its context (" while ..., client: ..., server: ...").
    pub fn log(&self, level: Level, msg: &str, err: Option<&io::Error>) {
        self.srv.error_log.write_session(level, self.id, msg, err, Some(self), self.debug_connection);
    }

    /// A session line without context (nginx clears the log handler for these).
    pub fn log_bare(&self, level: Level, msg: &str) {
        self.srv.error_log.write_session(level, self.id, msg, None, None, self.debug_connection);
    }

    /// `ngx_connection_error` for the client (`NGX_ERROR_INFO`) or the upstream
    /// (`NGX_ERROR_ERR`): ordinary network errors are logged at info or error, anything
    /// else at alert.
    pub fn connection_error(&self, side: Side, err: &io::Error, msg: &str) {
        // A TLS call's failure carries nginx's own text and level (ngx_ssl_connection_error).
        if let Some(t) = crate::core::ssl::TlsError::of(err) {
            self.log(t.level(side == Side::Client), &t.text, t.os.as_ref());
            return;
        }
        let ordinary = crate::core::log::is_ordinary_connection_error(err);
        let level = match (ordinary, side) {
            (true, Side::Client) => Level::Info,
            (true, Side::Upstream) => Level::Error,
            (false, _) => Level::Alert,
        };
        self.log(level, msg, Some(err));
    }

    /// `$session_time`-style elapsed time.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }
}

/// Write `d` as nginx's "%T.%03M" (seconds with milliseconds).
pub fn write_msec(out: &mut Vec<u8>, d: Duration) {
    use std::io::Write;
    let ms = d.as_millis();
    let _ = write!(out, "{}.{:03}", ms / 1000, ms % 1000);
}

/// The most one preread read asks for: nginx reads up to the buffer's end, but a
/// client rarely has more waiting, and zeroing a large buffer on every read would cost
/// its size each time.
const PREREAD_CHUNK: usize = 64 * 1024;

/// The preread checker (nginx 1.22.1's `ngx_stream_core_preread_phase`): read the
/// client's bytes into the preread buffer (they are forwarded before relaying starts)
/// and ask the handler; keep waiting while it says `Again` and the buffer has room.
pub fn preread_step(s: &mut SessionCore, cx: &mut Cx<'_>, h: PhaseHandler) -> Flow {
    s.action = Some("prereading client data");
    // A UDP session's preread data is its first datagram.
    if s.client.is_udp() {
        s.preread = s.udp_queue.front().cloned().unwrap_or_default();
        let rc = h(s, cx);
        s.preread.clear();
        return if rc == Flow::Again { Flow::Next } else { rc };
    }
    // The handler is asked first with what was read so far (nothing, at first), so a
    // handler with nothing to do declines before any byte is awaited.
    if s.preread_timer.is_none() {
        let rc = h(s, cx);
        if rc != Flow::Again {
            return rc;
        }
    }
    let size = s.srv.core().preread_buffer_size;
    // nginx reads a client only once epoll says it is readable (after a PROXY header it
    // still is), never at accept: the first read waits for the first event, and a zero
    // preread_timeout, which expires at the end of the accept's turn, ends the session
    // with nothing read.
    let mut wait_for_epoll = s.preread_timer.is_none() && !s.pp_read;
    loop {
        let have = s.preread.len();
        if have >= size {
            s.log(Level::Error, "preread buffer full", None);
            return Flow::Finalize(status::BAD_REQUEST);
        }
        if std::mem::take(&mut wait_for_epoll) {
            return Flow::Again;
        }
        // nginx allocates the whole buffer at the first read (and ends the session with
        // 500 if it cannot); here it is reserved, and only what a read may fill is
        // zeroed: a large preread_buffer_size costs what clients send, not its size.
        if have == 0 && s.preread.try_reserve_exact(size).is_err() {
            let e = io::Error::from_raw_os_error(libc::ENOMEM);
            s.log(Level::Emerg, &format!("malloc({size}) failed"), Some(&e));
            return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
        }
        let want = (size - have).min(PREREAD_CHUNK);
        s.preread.resize(have + want, 0);
        let r = std::io::Read::read(&mut s.client, &mut s.preread[have..]);
        match r {
            Ok(0) => {
                s.preread.truncate(have);
                // The client closed before the handler was satisfied.
                return Flow::Finalize(status::OK);
            }
            Ok(n) => {
                s.preread_ready = n == want;
                s.preread.truncate(have + n);
            }
            Err(e) => {
                s.preread.truncate(have);
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Flow::Again;
                }
                if e.kind() != io::ErrorKind::Interrupted {
                    s.connection_error(Side::Client, &e, "recv() failed");
                    return Flow::Finalize(status::OK);
                }
                continue;
            }
        }
        let rc = h(s, cx);
        if rc != Flow::Again {
            return rc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_states_keep_their_order() {
        let mut s = UpstreamStates::default();
        assert!(s.is_empty() && s.last().is_none());
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            s.push(UpstreamState { peer: Some(Rc::from(n)), ..Default::default() });
            s.last_mut().expect("last").bytes_sent = i as u64;
        }
        let got: Vec<(&str, u64)> = s.iter().map(|st| (st.peer.as_deref().unwrap_or(""), st.bytes_sent)).collect();
        assert_eq!(got, [("a", 0), ("b", 1), ("c", 2)]);
        assert_eq!(s.last().and_then(|st| st.peer.as_deref()), Some("c"));
    }
}
