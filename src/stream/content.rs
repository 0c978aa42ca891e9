//! The content phase's interface: a handler that owns the session once the phases before
//! it have passed (`proxy_pass`, `return`), driven by the session's events and timers.

use std::os::fd::RawFd;

use crate::core::timer::TimerId;
use crate::stream::phase::Flow;
use crate::stream::proxy_module::ProxySession;
use crate::stream::resolver::Outcome;
use crate::stream::session::{Cx, SessionCore, Side};

/// What a session's stream sockets are watched for: bytes and room, and urgent data
/// (EPOLLPRI), whose mark stops a read short of what the socket holds (see `Ready::fin`).
pub const SOCKET_INTEREST: mio::Interest =
    mio::Interest::READABLE.add(mio::Interest::WRITABLE).add(mio::Interest::PRIORITY);

/// What the reactor saw on one socket of the session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    pub error: bool,
    pub hup: bool,
    /// The peer's FIN is in, with no error and no urgent data (EPOLLRDHUP or EPOLLHUP
    /// without EPOLLERR or EPOLLPRI): every byte before it is already queued on the
    /// socket, so once a read comes back short the next one would find the end of file.
    /// (A read stops at the urgent mark with bytes still queued after it.)
    pub fin: bool,
    /// Not an event from epoll: a session requeued for the end of the turn (started
    /// relaying, or reached the per-wake-up cap), which knows which of its sockets
    /// still hold bytes; `readable` then says nothing new.
    pub posted: bool,
}

impl Ready {
    pub fn from_event(ev: &mio::event::Event) -> Ready {
        let hup = ev.is_read_closed() || ev.is_write_closed();
        Ready {
            readable: ev.is_readable(),
            writable: ev.is_writable(),
            error: ev.is_error(),
            hup,
            fin: ev.is_read_closed() && !ev.is_error() && !ev.is_priority(),
            posted: false,
        }
    }
}

pub trait Content {
    /// The content phase begins. `Flow::Finalize` ends the session; anything else waits
    /// for events.
    fn start(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow;
    fn on_event(&mut self, s: &mut SessionCore, side: Side, ready: Ready, cx: &mut Cx<'_>) -> Flow;
    fn on_timeout(&mut self, s: &mut SessionCore, id: TimerId, cx: &mut Cx<'_>) -> Flow;
    /// A host name the handler asked the resolver for has its answer.
    fn on_resolved(&mut self, _: &mut SessionCore, _: Outcome, _: &mut Cx<'_>) -> Flow {
        Flow::Again
    }
    /// The upstream connection's slot (`ConnSlots`), number and descriptor, while it
    /// is open.
    fn upstream_socket(&self) -> Option<(u32, u64, RawFd)> {
        None
    }
    /// Waiting with no timer of its own (a name resolved with `resolver_timeout 0`): a
    /// worker shutting down does not wait for it, as nginx's exits once only
    /// cancelable timers are left (`ngx_event_no_timers_left`).
    fn waits_without_timer(&self) -> bool {
        false
    }
    /// When nginx's timer on the client's write event (`proxy_timeout`, armed as bytes
    /// moved) would fire: still armed as the session ends, it also ends a TLS client's
    /// close_notify wait (`ngx_ssl_shutdown_handler` on a timed-out write event).
    fn client_write_deadline(&self) -> Option<std::time::Instant> {
        None
    }
    /// The worker's `worker_shutdown_timeout` ran out (`ngx_shutdown_timer_handler`):
    /// nginx marks the client closed and in error and calls its read handler. The
    /// proxy's (ngx_stream_proxy_process_connection) logs "shutdown timeout" and ends
    /// the session well.
    fn on_shutdown_timeout(&mut self, s: &mut SessionCore) -> Flow {
        s.log(crate::core::log::Level::Info, "shutdown timeout", None);
        Flow::Finalize(crate::stream::session::status::OK)
    }
    /// The same, met first on the upstream connection (its slot is lower than the
    /// client's): nginx calls the upstream's read handler, which for a connected
    /// proxy is the same check as the client's.
    fn on_upstream_shutdown_timeout(&mut self, s: &mut SessionCore, _: &mut Cx<'_>) -> Flow {
        self.on_shutdown_timeout(s)
    }
    /// Release what the handler holds (upstream socket, peer, timers) before the log phase.
    fn close(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>);
}

/// A session's content handler as the session holds it. The proxy, which nearly every
/// session runs, lives inline in the session's slab slot, so starting a session
/// allocates nothing; other handlers are boxed.
#[allow(clippy::large_enum_variant)] // inline is the point: no allocation per session
pub enum ContentSession {
    Proxy(ProxySession),
    Boxed(Box<dyn Content>),
}

impl ContentSession {
    pub fn get(&mut self) -> &mut dyn Content {
        match self {
            ContentSession::Proxy(p) => p,
            ContentSession::Boxed(b) => b.as_mut(),
        }
    }
}
