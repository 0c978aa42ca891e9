//! ngx_stream_proxy_module: `proxy_pass`, `proxy_connect_timeout`, `proxy_timeout`,
//! `proxy_buffer_size`, `proxy_next_upstream*`, `proxy_half_close`,
//! `proxy_socket_keepalive`, `proxy_bind`, `proxy_upload_rate`, `proxy_download_rate`.
//! Content phase: pick a peer, connect without blocking, relay both ways.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UnixStream};

use crate::core::addr::{parse_url, Addr};
use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value::{self, Setting};
use crate::core::conf::{Cmd, ConfError, ConfResult, Level};
use crate::core::conn::Conn;
use crate::core::mmsg::{self, RecvBatch};
use crate::core::timer::TimerId;
use crate::stream::conf::{find_upstream, ConfCx};
use crate::stream::content::{Content, ContentSession, Ready};
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::Flow;
use crate::stream::relay::{Budget, Direction};
use crate::stream::resolver::{self, Io};
use crate::stream::session::{session_token, status, Cx, ProxyLog, SessionCore, Side, UpstreamState};
use crate::stream::variables::Complex;
use crate::upstream::{Outcome, PeerPick, UpstreamConf};

pub struct Proxy;

/// The largest datagram relayed (a UDP payload is at most 65,507 bytes).
const UDP_MAX: usize = 65536;

/// `proxy_responses` unset: nginx's NGX_MAX_INT32_VALUE.
const UNLIMITED: u64 = i32::MAX as u64;

/// Where `proxy_pass` sends sessions.
#[derive(Debug, Clone)]
pub enum Pass {
    /// An upstream group (explicit or the implicit one of an address), by index.
    Upstream(usize),
    /// A value with variables, resolved per session.
    Dynamic(Complex),
}

#[derive(Debug, Clone)]
pub enum Bind {
    Off,
    /// A local address, and `transparent` (IP_TRANSPARENT: any address, the client's
    /// own say, with the routing that takes the answers back).
    Addr(Complex, bool),
}

#[derive(Default)]
pub struct ProxySrv {
    pub pass: Option<Pass>,
    pub connect_timeout: Setting<Duration>,
    pub timeout: Setting<Duration>,
    pub buffer_size: Setting<usize>,
    pub next_upstream: Setting<bool>,
    pub next_upstream_tries: Setting<u64>,
    pub next_upstream_timeout: Setting<Duration>,
    pub half_close: Setting<bool>,
    pub socket_keepalive: Setting<bool>,
    pub bind: Setting<Bind>,
    pub upload_rate: Setting<Option<Complex>>,
    pub download_rate: Setting<Option<Complex>>,
    /// UDP: datagrams expected back per request (`proxy_responses`), unlimited by default.
    pub responses: Setting<u64>,
    /// UDP: client datagrams after which the client's binding to the session ends.
    pub requests: Setting<u64>,
    /// `proxy_protocol on|off|v2`: 0 off, 1 the text header, 2 the binary one.
    pub proxy_protocol: Setting<u8>,
}

/// `ngx_stream_upstream_add` for a `proxy_pass` address: the upstream of that name, or
/// a new implicit one (an `upstream {}` block later in the file may take it over;
/// otherwise it is resolved when the `stream {}` block ends).
fn upstream_add(cx: &mut ConfCx, url: &str, cmd: &Cmd) -> ConfResult<usize> {
    let u = parse_url(url, false, false).map_err(|e| cmd.err(format!("{} in upstream \"{}\"", e, url)))?;
    let unix = u.is_unix();
    // Looked up by nginx's host (see `UpstreamConf::host`): a unix socket's path.
    let host = if unix { crate::core::addr::strip_unix(url).unwrap_or(url) } else { &u.host };
    // (A unix socket's port 0: an `upstream PATH {}` block may not serve it.)
    let port = u.upstream_port();
    if let Some(i) = find_upstream(cx, host, port, false, cmd)? {
        return Ok(i);
    }
    let name = if u.port.is_some() || unix { url } else { &u.host };
    cx.upstreams.push(UpstreamConf {
        name: name.to_string(),
        servers: Vec::new(),
        implicit: true,
        port,
        file: Some(cmd.file.clone()),
        line: cmd.line,
        ..Default::default()
    });
    Ok(cx.upstreams.len() - 1)
}

fn proxy_pass(c: &mut ProxySrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if c.pass.is_some() {
        return Err(cmd.duplicate());
    }
    let v = Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?;
    c.pass =
        Some(if v.has_variables() { Pass::Dynamic(v) } else { Pass::Upstream(upstream_add(cx, cmd.arg(0), cmd)?) });
    cx.handler = Some(new_session);
    Ok(())
}

fn proxy_bind(c: &mut ProxySrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if c.bind.is_set() {
        return Err(cmd.duplicate());
    }
    let transparent = cmd.args.len() == 2;
    let b = if cmd.arg(0) == "off" && !transparent {
        Bind::Off
    } else {
        let v = Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?;
        if let Some(s) = v.as_static() {
            if crate::core::addr::parse_addr_port(&String::from_utf8_lossy(s)).is_none() {
                return Err(cmd.err(format!("invalid address \"{}\"", cmd.arg(0))));
            }
        }
        if transparent {
            if cmd.arg(1) != "transparent" {
                return Err(cmd.invalid_parameter(cmd.arg(1)));
            }
            cx.core.transparent = true;
        }
        Bind::Addr(v, transparent)
    };
    c.bind.set(cmd, b)
}

/// `proxy_downstream_buffer` / `proxy_upstream_buffer`: `proxy_buffer_size`, with
/// nginx's warning.
fn old_buffer(c: &mut ProxySrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    // nginx's ngx_conf_deprecated is the slot's post handler: it warns once the value
    // is taken (not for a duplicate or a bad value).
    c.buffer_size.set_parsed(cmd, value::size)?;
    cx.warn(
        cmd,
        &format!("the \"{}\" directive is deprecated, use the \"proxy_buffer_size\" directive instead", cmd.name),
    );
    Ok(())
}

/// `ngx_event_connect_set_transparent`: IP_TRANSPARENT (IPV6_TRANSPARENT), by the
/// family of the local address.
fn set_transparent(sock: &socket2::Socket, local: &SocketAddr) -> Result<(), (&'static str, io::Error)> {
    let (level, opt, what) = if local.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT, "setsockopt(IP_TRANSPARENT) failed")
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, "setsockopt(IPV6_TRANSPARENT) failed")
    };
    crate::core::conn::set_int_option(sock.as_raw_fd(), level, opt, 1).map_err(|e| (what, e))
}

fn rate(c: &mut Setting<Option<Complex>>, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    c.set_parsed(cmd, |cmd| {
        let v = Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?;
        if let Some(s) = v.as_static() {
            value::parse_size(&String::from_utf8_lossy(s)).ok_or_else(|| ConfError::directive(cmd, "invalid value"))?;
        }
        Ok(Some(v))
    })
}

impl Module for Proxy {
    const NAME: &'static str = "stream_proxy";
    type Main = ();
    type Srv = ProxySrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive { name: "proxy_pass", ctx: Ctx::STREAM_SRV, args: Arity::Take(1), set: Set::Srv(proxy_pass) },
        Directive {
            name: "proxy_connect_timeout",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.connect_timeout.set_parsed(cmd, value::msec)),
        },
        Directive {
            name: "proxy_timeout",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.timeout.set_parsed(cmd, value::msec)),
        },
        Directive {
            name: "proxy_buffer_size",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.buffer_size.set_parsed(cmd, value::size)),
        },
        // nginx 1.9's names for it, still read (ngx_conf_deprecated).
        Directive {
            name: "proxy_downstream_buffer",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::Srv(old_buffer),
        },
        Directive {
            name: "proxy_upstream_buffer",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::Srv(old_buffer),
        },
        Directive {
            name: "proxy_next_upstream",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Flag,
            set: Set::<Self>::Srv(|c, cmd, _| c.next_upstream.set_parsed(cmd, value::flag)),
        },
        Directive {
            name: "proxy_next_upstream_tries",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.next_upstream_tries.set_parsed(cmd, value::number)),
        },
        Directive {
            name: "proxy_next_upstream_timeout",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.next_upstream_timeout.set_parsed(cmd, value::msec)),
        },
        Directive {
            name: "proxy_half_close",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Flag,
            set: Set::<Self>::Srv(|c, cmd, _| c.half_close.set_parsed(cmd, value::flag)),
        },
        Directive {
            name: "proxy_socket_keepalive",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Flag,
            set: Set::<Self>::Srv(|c, cmd, _| c.socket_keepalive.set_parsed(cmd, value::flag)),
        },
        Directive { name: "proxy_bind", ctx: Ctx::MAIN_SRV, args: Arity::Between(1, 2), set: Set::Srv(proxy_bind) },
        Directive {
            name: "proxy_upload_rate",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, cx| rate(&mut c.upload_rate, cmd, cx)),
        },
        Directive {
            name: "proxy_protocol",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Flag,
            set: Set::<Self>::Srv(|c, cmd, _| {
                c.proxy_protocol.set_parsed(cmd, |cmd| {
                    Ok(match cmd.arg(0) {
                        "off" => 0,
                        "on" => 1,
                        // sluice's own addition: send a PROXY protocol v2 header. A wrong
                        // value gets nginx's flag message, which does not know "v2".
                        "v2" => 2,
                        _ => u8::from(value::flag(cmd)?),
                    })
                })
            }),
        },
        Directive {
            name: "proxy_responses",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.responses.set_parsed(cmd, value::number)),
        },
        Directive {
            name: "proxy_requests",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.requests.set_parsed(cmd, value::number)),
        },
        Directive {
            name: "proxy_download_rate",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, cx| rate(&mut c.download_rate, cmd, cx)),
        },
    ];

    fn merge_srv(p: &ProxySrv, c: &mut ProxySrv, _: &mut ConfCx) -> ConfResult {
        c.connect_timeout.merge(&p.connect_timeout, Duration::from_secs(60));
        c.timeout.merge(&p.timeout, Duration::from_secs(600));
        c.buffer_size.merge(&p.buffer_size, 16384);
        c.next_upstream.merge(&p.next_upstream, true);
        c.next_upstream_tries.merge(&p.next_upstream_tries, 0);
        c.next_upstream_timeout.merge(&p.next_upstream_timeout, Duration::ZERO);
        c.half_close.merge(&p.half_close, false);
        c.socket_keepalive.merge(&p.socket_keepalive, false);
        c.bind.merge(&p.bind, Bind::Off);
        c.upload_rate.merge(&p.upload_rate, None);
        c.download_rate.merge(&p.download_rate, None);
        c.responses.merge(&p.responses, UNLIMITED);
        c.requests.merge(&p.requests, 0);
        c.proxy_protocol.merge(&p.proxy_protocol, 0);
        Ok(())
    }
}

pub struct ProxySession {
    upstream: Option<Conn>,
    group: Option<usize>,
    pick: PeerPick,
    connected: bool,
    /// When the current connect attempt started (`u->start_time`).
    start: Instant,
    /// When the first attempt started (`peer.start_time`, for next_upstream_timeout).
    first_start: Instant,
    connect_timer: Option<TimerId>,
    timer: Option<TimerId>,
    /// Client to upstream, and upstream to client.
    down: Direction,
    up: Direction,
    half_closed: bool,
    /// `u->start_sec`: rate limits count from here.
    start_sec: i64,
    /// Bytes per second (0: unlimited), evaluated when the upstream connects.
    upload_rate: u64,
    download_rate: u64,
    /// A direction waiting out its rate limit (`read->delayed`), and its timer;
    /// index 0 is client to upstream, 1 upstream to client.
    delayed: [bool; 2],
    delay_timer: [Option<TimerId>; 2],
    /// The upstream's `hash` key, evaluated once per session.
    key: Option<HashKey>,
    /// A UDP session, and its datagram counts (nginx's `u->requests`, `u->responses`).
    udp: bool,
    requests: u64,
    responses: u64,
    /// The upstream reported an error (an ICMP unreachable, say): the peer failed.
    upstream_error: bool,
    /// UDP: the PROXY protocol header still to send, with the first datagram.
    udp_header: Option<Vec<u8>>,
    /// UDP: the upstream socket's slot among the datagram sockets (its epoll token).
    udp_slot: Option<usize>,
    /// `group` is this session's own (an address or a resolved name in a variable).
    own_group: bool,
    /// UDP: the datagrams after the first that were queued when the upstream was
    /// connected (see `process_udp`).
    early: usize,
    /// UDP: bytes of later datagrams already counted in `$bytes_received` while the
    /// upstream was not there yet (nginx counts a datagram as it reads it).
    early_counted: usize,
    /// The client's read event is watched while the upstream connects, as nginx's is
    /// when a PROXY header or a preread phase waited for it: client bytes and errors are
    /// taken then (`ngx_stream_proxy_process` with no upstream yet).
    client_watched: bool,
    /// A watched client was left ready by the phase that read it (nginx posts its read
    /// event): a TLS handshake, a PROXY header, a preread that filled its room.
    client_posted: bool,
    /// `proxy_bind`, evaluated once when the session begins (`ngx_stream_proxy_set_local`):
    /// the address, its text (for messages) and `transparent`.
    local: Option<(SocketAddr, String, bool)>,
    /// The host name and port being resolved.
    resolving: Option<(String, u16)>,
    /// The name being resolved has no `resolver_timeout` (0).
    resolving_untimed: bool,
    /// The upstream was readable when it connected (or finished its TLS handshake).
    upstream_ready: bool,
    /// The upstream connection's number (nginx's `c->number`).
    upstream_number: u64,
    /// Its slot in nginx's connection array (`ConnSlots`).
    upstream_slot: u32,
    /// `proxy_ssl`: the handshake with the upstream is under way.
    tls_handshaking: bool,
    /// The PROXY protocol header went out ahead of the upstream TLS handshake.
    pp_sent: bool,
    /// nginx's `pc->error`, set when the worker's shutdown timeout reaches the upstream
    /// before the client: a write to it ends the session (well, with no line) and its
    /// TLS closes without close_notify.
    upstream_shutdown_error: bool,
    /// UDP: the session's first datagram (counted as it came) was sent.
    udp_first_sent: bool,
    /// The name the upstream's certificate must match (`proxy_ssl_verify`).
    ssl_name: String,
}

/// Keys this long or shorter (any address with its port, most names) are kept in the
/// session itself.
const KEY_INLINE: usize = 64;

/// A session's `hash` key, inline when short, so the usual keys allocate nothing.
enum HashKey {
    Inline([u8; KEY_INLINE], u8),
    Heap(Box<[u8]>),
}

impl HashKey {
    fn new(v: &[u8]) -> HashKey {
        match v.len() {
            n if n <= KEY_INLINE => {
                let mut b = [0; KEY_INLINE];
                b[..n].copy_from_slice(v);
                HashKey::Inline(b, n as u8)
            }
            _ => HashKey::Heap(v.into()),
        }
    }

    fn get(&self) -> &[u8] {
        match self {
            HashKey::Inline(b, n) => &b[..*n as usize],
            HashKey::Heap(v) => v,
        }
    }
}

fn new_session(s: &mut SessionCore) -> ContentSession {
    let now = crate::core::time::instant();
    let mut down = Direction::default();
    // A hang-up seen before content (with a PROXY header or preread) is not signalled
    // again: read the client to its end.
    down.greedy = s.client_hup;
    ContentSession::Proxy(ProxySession {
        upstream: None,
        group: None,
        pick: PeerPick::default(),
        connected: false,
        start: now,
        first_start: now,
        connect_timer: None,
        timer: None,
        down,
        up: Direction::default(),
        half_closed: false,
        key: None,
        udp: false,
        requests: 0,
        responses: 0,
        upstream_error: false,
        udp_header: None,
        udp_slot: None,
        own_group: false,
        early: 0,
        early_counted: 0,
        client_watched: false,
        client_posted: false,
        upstream_number: 0,
        upstream_slot: 0,
        tls_handshaking: false,
        pp_sent: false,
        upstream_shutdown_error: false,
        udp_first_sent: false,
        ssl_name: String::new(),
        local: None,
        resolving: None,
        resolving_untimed: false,
        upstream_ready: false,
        start_sec: crate::core::time::wall().0,
        upload_rate: 0,
        download_rate: 0,
        delayed: [false; 2],
        delay_timer: [None; 2],
    })
}

/// `ngx_stream_complex_value_size`: a rate from its value, 0 (unlimited) when unset;
/// a value that is not a size is logged and means unlimited.
fn rate_value(s: &mut SessionCore, v: Option<&Option<Complex>>) -> u64 {
    let Some(Some(c)) = v else { return 0 };
    let mut out = Vec::new();
    c.eval(s, &mut out);
    let text = crate::core::conf::parser::bytes_to_text(&out);
    match value::parse_size(&text) {
        Some(n) => n as u64,
        None => {
            s.log(Level::Error, &format!("invalid size \"{}\"", text), None);
            0
        }
    }
}

/// UDP pacing (nginx's limit_rate check before a read): may a datagram be read now?
/// Arms the delay timer when the direction is over its rate.
fn gate(
    delayed: &mut bool,
    timer: &mut Option<TimerId>,
    rate: u64,
    received: u64,
    start_sec: i64,
    key: usize,
    cx: &mut Cx<'_>,
) -> bool {
    if rate == 0 {
        return true;
    }
    if *delayed {
        return false;
    }
    let allowed = rate as i64 * (crate::core::time::wall().0 - start_sec + 1) - received as i64;
    if allowed <= 0 {
        *delayed = true;
        let ms = (-allowed) as u64 * 1000 / rate + 1;
        cx.timers.set(timer, cx.now + Duration::from_millis(ms), session_token(key, Side::Client));
        return false;
    }
    true
}

/// After reading `n` bytes under a rate: wait the time they are worth.
fn paced(delayed: &mut bool, timer: &mut Option<TimerId>, rate: u64, n: usize, key: usize, cx: &mut Cx<'_>) {
    if rate == 0 {
        return;
    }
    let ms = n as u64 * 1000 / rate;
    if ms > 0 {
        *delayed = true;
        cx.timers.set(timer, cx.now + Duration::from_millis(ms), session_token(key, Side::Client));
    }
}

/// The upstream a value of `proxy_pass` names, as `ngx_stream_proxy_handler` searches:
/// the host (any case) and the port must both agree, and an `upstream {}` block has no
/// port, so "name" finds block "name" and "host:port" the group a `proxy_pass host:port`
/// made (a block called "ub:80" is found by nothing: its host would be "ub").
/// (`port` 0 for a unix socket, as to nginx: blocks and unix sockets' groups have port
/// 0, and a value without a port finds those.)
fn find_group(upstreams: &[UpstreamConf], host: &str, port: Option<u16>) -> Option<usize> {
    let fits = |u: &UpstreamConf| {
        let p = u.port.unwrap_or(0);
        (p == 0 && port.is_none()) || Some(p) == port
    };
    upstreams.iter().position(|u| fits(u) && u.host().eq_ignore_ascii_case(host))
}

/// nginx's ngx_stream_proxy_process on a UDP session of an exiting worker: the
/// listening socket the session answers through is closed, so the session ends (the
/// line has no context: nginx clears the log handler for it).
fn disconnected_on_shutdown(s: &mut SessionCore) -> Flow {
    s.log_bare(Level::Info, "disconnected on shutdown");
    Flow::Finalize(status::OK)
}

/// A datagram to the client failed: nginx's ngx_stream_proxy_process finalizes the
/// session at once, with no "udp done" line (its action is left as it failed).
const CLIENT_SEND_FAILED: Flow = Flow::Finalize(status::OK);

/// The PROXY protocol header `proxy_protocol` asks for, if any.
fn proxy_protocol_header(s: &SessionCore, udp: bool) -> Option<Vec<u8>> {
    match s.srv.confs.proxy.proxy_protocol.get() {
        1 => Some(crate::stream::proxy_protocol::write_v1(&s.remote, &s.local)),
        2 => Some(crate::stream::proxy_protocol::write_v2(&s.remote, &s.local, udp)),
        _ => None,
    }
}

/// Room left in a UDP session's buffer for its next datagram.
pub fn udp_room(s: &SessionCore) -> usize {
    conf(s).buffer_size.get().saturating_sub(s.udp_queued)
}

fn conf(s: &SessionCore) -> &ProxySrv {
    &s.srv.confs.proxy
}

impl ProxySession {
    /// nginx reads (and counts) a UDP session's later datagrams as they come, the
    /// upstream not there yet: those queued since the last count are counted now.
    fn count_early_datagrams(&mut self, s: &mut SessionCore) {
        s.received += s.udp_queued.saturating_sub(self.early_counted) as u64;
        self.early_counted = s.udp_queued;
    }

    /// The later datagrams of a UDP session read while its name was looked up: nginx
    /// counted them as they came and, past a failure, has them no more.
    fn drop_resolving_datagrams(&mut self, s: &mut SessionCore) {
        self.count_early_datagrams(s);
        s.udp_queue.truncate(1);
        s.udp_queued = 0;
        self.early_counted = 0;
    }

    /// `ngx_stream_proxy_set_local`: the `proxy_bind` value, before any upstream is
    /// chosen; a value that is no address is logged (outside any action) and ignored,
    /// an empty one means no binding.
    fn set_local(&mut self, s: &mut SessionCore) {
        let srv = s.srv.clone();
        let Some(Bind::Addr(v, transparent)) = srv.confs.proxy.bind.option() else { return };
        let mut out = Vec::new();
        v.eval(s, &mut out);
        let text = crate::core::conf::parser::bytes_to_text(&out);
        match crate::core::addr::parse_addr_port(&text) {
            Some(local) => self.local = Some((local, text, *transparent)),
            None if !text.is_empty() => {
                let action = s.action.take();
                s.log(Level::Error, &format!("invalid local address \"{}\"", text), None);
                s.action = action;
            }
            None => {}
        }
    }

    /// The client's read event before the upstream is connected, as nginx's
    /// `ngx_stream_proxy_process` runs it with no upstream: the client is read into the
    /// buffer, up to `proxy_buffer_size`, with no `proxy_upload_rate` yet (so bytes sent
    /// with a PROXY header are not paced, though they count in `$bytes_received`); a
    /// read error is logged as nginx logs it, and the session's action is "proxying
    /// connection" from then on (a failed connect says so).
    fn read_client_early(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) {
        let size = conf(s).buffer_size.get().max(1);
        let mut buf = std::mem::take(&mut cx.rt.scratch);
        loop {
            let room = size.saturating_sub(self.down.held_len());
            if room == 0 || self.down.eof {
                break;
            }
            buf.resize(room.max(buf.len()), 0);
            match s.client.read(&mut buf[..room]) {
                Ok(0) => {
                    // nginx's `read->eof`: once connected and the bytes are delivered,
                    // the session ends (without half-close) with no further read, even
                    // while proxy_upload_rate would hold the client's reads back.
                    self.down.eof = true;
                    break;
                }
                Ok(n) => {
                    self.down.push(&buf[..n]);
                    s.received += n as u64;
                    // A short read drains the socket, unless its end is known to be in
                    // (nginx's `pending_eof`): then the end of file is read too. TLS
                    // reads on until OpenSSL wants more (ngx_ssl_recv).
                    if n < room && !self.down.greedy && !s.client.is_tls() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.down.src_ready = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    s.action = Some("proxying and reading from client");
                    s.connection_error(Side::Client, &e, "recv() failed");
                    // The error is taken; the socket reads as at its end from now on.
                    self.down.greedy = true;
                    break;
                }
            }
        }
        cx.rt.scratch = buf;
        s.action = Some("proxying connection");
    }

    /// Which upstream group this session uses (`ngx_stream_proxy_handler`); a host name
    /// to resolve first comes back as `Err(None)`.
    fn choose_group(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Result<usize, Option<u16>> {
        let srv = s.srv.clone();
        match &srv.confs.proxy.pass {
            Some(Pass::Upstream(i)) => Ok(*i),
            Some(Pass::Dynamic(v)) => {
                let mut out = Vec::new();
                if !v.eval(s, &mut out) {
                    return Err(Some(status::INTERNAL_SERVER_ERROR));
                }
                // A client's bytes (an SNI name) go on as they came, UTF-8 or not.
                let name = crate::core::conf::parser::bytes_to_text(&out);
                match parse_url(&name, false, false) {
                    Ok(u) => {
                        // nginx's host: no port, a unix socket's path.
                        let host = crate::core::addr::strip_unix(&u.host).unwrap_or(&u.host);
                        // ngx_stream_proxy_handler looks for a configured upstream of
                        // that name first, an address literal too (`upstream 10.0.0.5 {}`,
                        // or the group another server's `proxy_pass 10.0.0.5:80` made).
                        if let Some(i) = find_group(&s.cycle.upstreams, host, u.upstream_port()) {
                            return Ok(i);
                        }
                        if u.addrs.is_empty() {
                            return self.resolve_name(s, cx, u);
                        }
                        self.own_group = true;
                        // (By its URL: a unix socket's peer is named as written.)
                        Ok(cx.rt.session_group(&u.host, u.addrs))
                    }
                    Err(e) => {
                        s.log(Level::Error, &format!("{} in upstream \"{}\"", e, name), None);
                        Err(Some(status::INTERNAL_SERVER_ERROR))
                    }
                }
            }
            None => Err(Some(status::INTERNAL_SERVER_ERROR)),
        }
    }

    /// A value of `proxy_pass` that names no upstream: it needs a port, then a resolver.
    fn resolve_name(
        &mut self,
        s: &mut SessionCore,
        cx: &mut Cx<'_>,
        u: crate::core::addr::ParsedUrl,
    ) -> Result<usize, Option<u16>> {
        let Some(port) = u.port else {
            s.log(Level::Error, &format!("no port in upstream \"{}\"", u.host), None);
            return Err(Some(status::INTERNAL_SERVER_ERROR));
        };
        let Some(conf) = s.srv.core().resolver.option().cloned() else {
            s.log(Level::Error, &format!("no resolver defined to resolve {}", u.host), None);
            return Err(Some(status::INTERNAL_SERVER_ERROR));
        };
        let timeout = s.srv.core().resolver_timeout.get();
        let mut io = Io { registry: cx.registry, timers: cx.timers, now: cx.now };
        self.resolving = Some((u.host.clone(), port));
        self.resolving_untimed = timeout.is_zero();
        let target = resolver::Target::Session(s.key);
        match cx.rt.resolvers.resolve(&conf, &u.host, target, timeout, &mut io) {
            Some((outcome, _)) => self.resolved(s, outcome, cx),
            None => Err(None),
        }
    }

    /// `ngx_stream_proxy_resolve_handler`: the name's addresses become the session's own
    /// group.
    fn resolved(
        &mut self,
        s: &mut SessionCore,
        outcome: resolver::Outcome,
        cx: &mut Cx<'_>,
    ) -> Result<usize, Option<u16>> {
        let Some((host, port)) = self.resolving.take() else { return Err(Some(status::INTERNAL_SERVER_ERROR)) };
        match outcome {
            Err(code) => {
                if s.client.is_udp() && s.udp_queue.len() > 1 {
                    // nginx's read handler is set before it resolves: a later datagram
                    // of the session is read into its buffer (and counted) while the
                    // name is looked up, and leaves the action that the failure is
                    // logged with.
                    self.drop_resolving_datagrams(s);
                    s.action = Some("proxying connection");
                }
                let name = resolver::query_name(&host);
                let msg = format!("{} could not be resolved ({}: {})", name, code, resolver::strerror(code));
                s.log(Level::Error, &msg, None);
                Err(Some(status::INTERNAL_SERVER_ERROR))
            }
            Ok(addrs) => {
                let addrs = addrs.into_iter().map(|ip| Addr::Inet(SocketAddr::new(ip, port))).collect();
                self.own_group = true;
                Ok(cx.rt.session_group(&host, addrs))
            }
        }
    }

    /// `ngx_stream_proxy_connect`: start a connection to the next peer.
    fn connect(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        s.action = Some("connecting to upstream");
        let now = cx.now;
        if let Some(st) = s.upstream_states.last_mut() {
            if st.response_time.is_none() {
                st.response_time = Some(now.saturating_duration_since(self.start));
            }
        }
        self.start = now;
        s.upstream_states.push(UpstreamState::default());
        let Some(group) = self.group else { return Flow::Finalize(status::INTERNAL_SERVER_ERROR) };
        let Some((peer_addr, peer_name)) =
            cx.rt.get_peer(group, &mut self.pick, self.key.as_ref().map(HashKey::get), now)
        else {
            let name = cx.rt.group_name(group);
            if let Some(st) = s.upstream_states.last_mut() {
                st.peer = Some(name.clone());
            }
            s.proxy_log.get_or_insert_with(ProxyLog::default).upstream = Some(name);
            s.log(Level::Error, "no live upstreams", None);
            return Flow::Finalize(status::BAD_GATEWAY);
        };
        let peer_name_text = peer_name.clone();
        if let Some(p) = s.proxy_log.as_mut() {
            p.upstream = Some(peer_name.clone());
            p.received = 0;
            p.sent = 0;
        }
        if !cx.rt.has_room() {
            // ngx_event_connect_peer: no free connection for the upstream socket. The
            // peer was picked (and is freed with the session, not failed); the attempt
            // has no peer name in $upstream_addr.
            s.log(Level::Alert, &cx.rt.not_enough(), None);
            return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
        }
        let sock = self.open_socket(s, &peer_addr);
        // $upstream_addr names the peer once the socket is made (`u->state->peer` is set
        // after ngx_event_connect_peer returns anything but an error).
        if sock.is_ok() {
            if let Some(st) = s.upstream_states.last_mut() {
                st.peer = Some(peer_name);
            }
        }
        let (mut sock, sa) = match sock {
            Ok(c) => c,
            Err(ConnectFatal(level, msg, e)) => {
                s.log(level, &msg, Some(&e));
                return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
            }
        };
        // nginx numbers upstream connections from the same counter as client ones, once
        // the socket is bound and before it is watched and connected (a failed bind
        // takes no number; with several workers the order shows in `$connection`).
        self.upstream_number = cx.rt.next_connection();
        // Datagram sockets are watched under tokens of their own.
        let r = match &mut sock {
            Conn::Dgram(d) => cx.rt.dgram_owners.register(cx.registry, d, s.key).map(|slot| self.udp_slot = Some(slot)),
            c => c.register(cx.registry, session_token(s.key, Side::Upstream), crate::stream::content::SOCKET_INTEREST),
        };
        if let Err(e) = r {
            if let Some(slot) = self.udp_slot.take() {
                cx.rt.dgram_owners.release(slot);
            }
            s.log(Level::Alert, "epoll_ctl() failed", Some(&e));
            return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
        }
        // connect() once the socket is watched, as ngx_event_connect_peer adds it to
        // epoll first: on loopback the connection is up before connect() returns, so
        // its "writable" is queued ahead of the listener's "readable" for the other
        // end, and a proxy to itself logs "proxy ... connected" before the inner
        // "client ... connected", as nginx does.
        // SAFETY: a valid socket descriptor and a sockaddr of the length given.
        let rc = unsafe { libc::connect(sock.fd(), sa.as_ptr().cast::<libc::sockaddr>(), sa.len()) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Only EINPROGRESS is a connect under way: Linux says EAGAIN for a unix
            // socket whose listen queue is full, a refusal to nginx.
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                if let Some(slot) = self.udp_slot.take() {
                    cx.rt.dgram_owners.release(slot);
                }
                let _ = sock.deregister(cx.registry);
                drop(sock);
                return self.refused(s, cx, e, &peer_name_text);
            }
        }
        self.upstream_slot = cx.rt.slots.take();
        cx.rt.conns += 1;
        self.upstream = Some(sock);
        self.connected = false;
        // A datagram socket is "connected" at once.
        if self.udp {
            return self.init_upstream(s, cx);
        }
        let t = conf(s).connect_timeout.get();
        cx.timers.set(&mut self.connect_timer, now + t, session_token(s.key, Side::Upstream));
        Flow::Again
    }

    /// ngx_event_connect_peer: a connect() that fails at once (its connection was
    /// numbered already): log it and try the next peer.
    fn refused(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>, e: io::Error, peer_name_text: &str) -> Flow {
        if s.client.is_udp() && s.udp_queue.len() > 1 {
            // The datagrams read while the name was looked up were counted then, and
            // ngx_stream_proxy_next_upstream drops them (`u->upstream_out = NULL`): the
            // next peer gets the first one only.
            self.requests += (s.udp_queue.len() - 1) as u64;
            self.drop_resolving_datagrams(s);
        }
        let ordinary = matches!(
            e.raw_os_error(),
            Some(
                libc::ECONNREFUSED
                    | libc::EAGAIN
                    | libc::ECONNRESET
                    | libc::ENETDOWN
                    | libc::ENETUNREACH
                    | libc::EHOSTDOWN
                    | libc::EHOSTUNREACH
            )
        );
        let level = if ordinary { Level::Error } else { Level::Crit };
        s.log(level, &format!("connect() to {} failed", peer_name_text), Some(&e));
        self.next_upstream(s, cx)
    }

    /// The upstream socket, made and bound but not yet connected (`connect` does that once
    /// the socket is watched), and the address to connect it to.
    fn open_socket(&self, s: &mut SessionCore, addr: &Addr) -> Result<(Conn, socket2::SockAddr), ConnectFatal> {
        use socket2::{Domain, SockAddr, Socket, Type};
        let fatal = |what: &str, e: io::Error| ConnectFatal(Level::Alert, what.to_string(), e);
        let (domain, sa) = match addr {
            Addr::Inet(a) => (if a.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 }, SockAddr::from(*a)),
            Addr::Unix(p) => (Domain::UNIX, SockAddr::unix(p).map_err(|e| fatal("socket() failed", e))?),
        };
        let ty = if self.udp { Type::DGRAM } else { Type::STREAM };
        let sock = Socket::new(domain, ty.nonblocking().cloexec(), None).map_err(|e| fatal("socket() failed", e))?;
        let srv = s.srv.clone();
        let pc = &srv.confs.proxy;
        if pc.socket_keepalive.get() {
            sock.set_keepalive(true).map_err(|e| fatal("setsockopt(SO_KEEPALIVE) failed", e))?;
        }
        if let Some((local, text, transparent)) = &self.local {
            if *transparent {
                set_transparent(&sock, local).map_err(|(what, e)| ConnectFatal(Level::Alert, what.to_string(), e))?;
            }
            if local.port() == 0 && !matches!(addr, Addr::Unix(_)) {
                // As nginx: the port is picked at connect, so one local address serves
                // as many upstream connections as there are 4-tuples.
                let no_port = libc::IP_BIND_ADDRESS_NO_PORT;
                let _ = crate::core::conn::set_int_option(sock.as_raw_fd(), libc::IPPROTO_IP, no_port, 1);
            }
            // nginx on Linux: datagram sessions may share a fixed local port.
            if self.udp && local.port() != 0 {
                sock.set_reuse_address(true)
                    .map_err(|e| ConnectFatal(Level::Alert, "setsockopt(SO_REUSEADDR) failed".to_string(), e))?;
            }
            // ngx_event_connect_peer: a failed bind is crit.
            sock.bind(&SockAddr::from(*local))
                .map_err(|e| ConnectFatal(Level::Crit, format!("bind({}) failed", text), e))?;
        }
        let conn = match addr {
            Addr::Inet(_) if self.udp => Conn::Dgram(mio::net::UdpSocket::from_std(sock.into())),
            Addr::Inet(_) => Conn::Tcp(TcpStream::from_std(sock.into())),
            Addr::Unix(_) => Conn::Unix(UnixStream::from_std(sock.into())),
        };
        Ok((conn, sa))
    }

    /// `ngx_stream_proxy_next_upstream`: count the failure and try another peer.
    fn next_upstream(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        if let Some(g) = self.group {
            if cx.rt.free_peer(g, &mut self.pick, Outcome::Failed, cx.now) {
                s.log(Level::Warn, "upstream server temporarily disabled", None);
            }
        }
        let pc = conf(s);
        let timeout = pc.next_upstream_timeout.get();
        if self.pick.tries == 0
            || !pc.next_upstream.get()
            || (!timeout.is_zero() && cx.now.saturating_duration_since(self.first_start) >= timeout)
        {
            return Flow::Finalize(status::BAD_GATEWAY);
        }
        self.close_upstream(s, cx, true);
        self.connect(s, cx)
    }

    /// Close the upstream connection. Before a retry its token is reused, so it leaves
    /// the epoll set first; at the end of the session closing is enough.
    fn close_upstream(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>, retry: bool) {
        cx.timers.clear(&mut self.connect_timer);
        self.tls_handshaking = false;
        // Every try sends its own PROXY header (ngx_stream_proxy_connect sets
        // u->proxy_protocol again for each peer).
        self.pp_sent = false;
        // (The next try is a connection of its own, not in error.)
        self.upstream_shutdown_error = false;
        if let Some(mut u) = self.upstream.take() {
            cx.rt.conns = cx.rt.conns.saturating_sub(1);
            cx.rt.slots.give(self.upstream_slot);
            if !retry {
                u.close_notify();
            }
            if retry {
                let _ = u.deregister(cx.registry);
                // A hang-up or readiness seen on the failed socket says nothing of the
                // next one.
                self.up.greedy = false;
                self.up.fin = false;
                self.upstream_ready = false;
            }
        }
        if let Some(slot) = self.udp_slot.take() {
            cx.rt.dgram_owners.release(slot);
        }
        if let (Some(st), Some(p)) = (s.upstream_states.last_mut(), s.proxy_log.as_mut()) {
            st.bytes_received = p.received;
            st.bytes_sent = p.sent;
            // nginx's log lines take "to upstream" from the upstream connection, which is
            // gone now: lines logged after this (the log phase's) say 0; "from upstream"
            // is the session's and stays.
            p.sent = 0;
        }
    }

    /// `proxy_ssl` (`ngx_stream_proxy_ssl_init_connection`): a PROXY header goes out
    /// first, at once, then the TLS handshake with the upstream starts.
    fn start_upstream_tls(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        let srv = s.srv.clone();
        let Some(ctx) = srv.confs.proxy_ssl.ctx.as_ref() else { return Flow::Finalize(status::INTERNAL_SERVER_ERROR) };
        let pp = proxy_protocol_header(s, false);
        let Some(u) = self.upstream.as_mut() else { return Flow::Finalize(status::INTERNAL_SERVER_ERROR) };
        if let Some(h) = pp.filter(|_| !self.pp_sent) {
            // ngx_stream_proxy_send_proxy_protocol: one send, whole or nothing.
            match u.write(&h) {
                Ok(n) if n == h.len() => {}
                Ok(_) => {
                    s.log(Level::Error, "could not send PROXY protocol header at once", None);
                    return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Not through yet (the worker's shutdown timeout took the socket as
                    // connected): nginx waits for it to be writable, under
                    // proxy_timeout, and its connect handler starts over.
                    let t = conf(s).timeout.get();
                    cx.timers.set(&mut self.connect_timer, cx.now + t, session_token(s.key, Side::Upstream));
                    return Flow::Again;
                }
                Err(e) => {
                    s.connection_error(Side::Upstream, &e, "send() failed");
                    return Flow::Finalize(status::OK);
                }
            }
            self.pp_sent = true;
            // nginx sends it with pc->send: it counts in $upstream_bytes_sent.
            if let Some(p) = s.proxy_log.as_mut() {
                p.sent += h.len() as u64;
            }
        }
        let group = self.group.unwrap_or(0);
        let host = cx.rt.group_name(group);
        let (name, sni) = crate::stream::proxy_ssl::ssl_name(s, &host);
        self.ssl_name = name;
        let peer = s.upstream_states.last().and_then(|st| st.peer.clone()).unwrap_or_else(|| Rc::from(""));
        let id = self.pick.current.unwrap_or(crate::upstream::PeerId { backup: false, index: 0 });
        let key = crate::stream::proxy_ssl::session_key(&host, id, &peer);
        // A group made for this session alone keeps no sessions (nginx's
        // ngx_stream_upstream_empty_set_session for a peer made at run time).
        let reuse = srv.confs.proxy_ssl.session_reuse() && !self.own_group;
        let session = if reuse { crate::core::ssl::client_session(&key) } else { None };
        let Some(u) = self.upstream.as_mut() else { return Flow::Finalize(status::INTERNAL_SERVER_ERROR) };
        if let Err(msg) = u.start_tls_client(ctx, sni.as_deref(), session.as_deref(), reuse.then_some(key)) {
            s.log(Level::Error, &msg, None);
            return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
        }
        // ngx_stream_proxy_ssl_certificate: a certificate named with variables.
        if let Some(pair) = crate::stream::proxy_ssl::certificate_names(s) {
            let pwds = srv.confs.proxy_ssl.passwords();
            let r = match self.upstream.as_mut().and_then(|u| u.tls_mut()) {
                Some(t) => t.set_certificates(&[pair], pwds),
                None => Ok(()),
            };
            if let Err(msg) = r {
                s.log(Level::Error, &msg, None);
                return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
            }
        }
        s.action = Some("SSL handshaking to upstream");
        self.tls_handshaking = true;
        self.upstream_handshake(s, cx)
    }

    /// `ngx_stream_proxy_ssl_handshake`: go on with the handshake; once done (and the
    /// certificate checked, with `proxy_ssl_verify`), relaying starts; a failure tries
    /// the next upstream.
    fn upstream_handshake(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        let Some(t) = self.upstream.as_mut().and_then(|u| u.tls_mut()) else {
            return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
        };
        match t.handshake() {
            crate::core::ssl::Handshake::Done => {
                if s.srv.confs.proxy_ssl.verify() {
                    let rc = t.ssl().verify_result();
                    if rc != openssl::x509::X509VerifyResult::OK {
                        let msg =
                            format!("upstream SSL certificate verify error: ({}:{})", rc.as_raw(), rc.error_string());
                        s.log(Level::Error, &msg, None);
                        return self.next_upstream(s, cx);
                    }
                    if !crate::core::ssl::check_host(t.ssl(), &self.ssl_name) {
                        let msg = format!("upstream SSL certificate does not match \"{}\"", self.ssl_name);
                        s.log(Level::Error, &msg, None);
                        return self.next_upstream(s, cx);
                    }
                }
                self.tls_handshaking = false;
                cx.timers.clear(&mut self.connect_timer);
                // (The handshake read from it: nginx's read event is still ready.)
                self.upstream_ready = true;
                self.init_upstream(s, cx)
            }
            crate::core::ssl::Handshake::Again => {
                if self.connect_timer.is_none() {
                    let t = conf(s).connect_timeout.get();
                    cx.timers.set(&mut self.connect_timer, cx.now + t, session_token(s.key, Side::Client));
                }
                Flow::Again
            }
            // A client context has no certificate callback.
            crate::core::ssl::Handshake::Certificate => self.next_upstream(s, cx),
            crate::core::ssl::Handshake::Closed(os) => {
                s.log(Level::Error, "peer closed connection in SSL handshake", os.as_ref());
                self.next_upstream(s, cx)
            }
            crate::core::ssl::Handshake::Failed(e) => {
                s.connection_error(Side::Upstream, &e, "SSL_do_handshake() failed");
                self.next_upstream(s, cx)
            }
        }
    }

    /// `ngx_stream_proxy_connect_handler`: the socket's pending error decides. None
    /// means connected, as nginx takes it, even while the handshake is still under
    /// way (the worker's shutdown timeout calls this before the connect is through).
    fn test_connect(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        let err = match self.upstream.as_ref().map(|u| u.take_error()) {
            Some(Ok(None)) => None,
            Some(Ok(Some(e))) | Some(Err(e)) => Some(e),
            None => return Flow::Again,
        };
        if let Some(e) = err {
            s.connection_error(Side::Upstream, &e, "connect() failed");
            return self.next_upstream(s, cx);
        }
        self.init_upstream(s, cx)
    }

    /// `ngx_stream_proxy_init_upstream`: the connection is up; start relaying.
    fn init_upstream(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        cx.timers.clear(&mut self.connect_timer);
        let Some(u) = self.upstream.as_ref() else { return Flow::Finalize(status::INTERNAL_SERVER_ERROR) };
        if u.is_tcp() && s.srv.core().tcp_nodelay() {
            if let Err(e) = u.set_nodelay(true) {
                s.connection_error(Side::Upstream, &e, "setsockopt(TCP_NODELAY) failed");
                return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
            }
        }
        if !self.udp && !u.is_tls() && s.srv.confs.proxy_ssl.ctx.is_some() {
            return self.start_upstream_tls(s, cx);
        }
        if s.log_enabled(Level::Info) {
            let local = u.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let peer = s.upstream_states.last().and_then(|st| st.peer.clone()).unwrap_or_else(|| Rc::from(""));
            let udp = if self.udp { "udp " } else { "" };
            s.log_bare(Level::Info, &format!("{}proxy {} connected to {}", udp, local, peer));
        }
        if let Some(st) = s.upstream_states.last_mut() {
            st.connect_time = Some(cx.now.saturating_duration_since(self.start));
        }
        let tcp = u.is_tcp() || matches!(u, Conn::Tls(t) if t.sock().is_tcp());
        if let (Some(g), true) = (self.group, tcp) {
            cx.rt.notify_connect(g, &mut self.pick);
        }
        let srv = s.srv.clone();
        // `proxy_protocol`: the header goes first, ahead of any relayed byte.
        let pp = proxy_protocol_header(s, self.udp);
        // Bytes the preread phase read go first (nginx sends its preread buffer without
        // counting it in $bytes_received).
        if !self.udp && !s.preread.is_empty() {
            let pre = std::mem::take(&mut s.preread);
            self.down.prepend(&pre);
        }
        if let Some(h) = pp.filter(|_| !self.pp_sent) {
            if self.udp {
                // nginx sends it in front of the first datagram.
                self.udp_header = Some(h);
            } else {
                self.down.prepend(&h);
            }
        }
        self.upload_rate = rate_value(s, srv.confs.proxy.upload_rate.option());
        self.download_rate = rate_value(s, srv.confs.proxy.download_rate.option());
        self.connected = true;
        if self.udp {
            self.count_early_datagrams(s);
            self.early = s.udp_queue.len().saturating_sub(1);
        }
        // A socket is read now only if it is known to hold something (nginx's
        // `read->ready`): the client if it raised an edge since the phase that read it
        // (here, as relaying events), or that phase left it ready, or `pass` handed it
        // over ready; the upstream if its connect event said so (it is watched from
        // before connect()). Anything either sends later raises an edge of its own, and
        // a read now would mostly find EAGAIN: one wasted recv per socket per short
        // connection.
        let client_ready = if self.client_watched { self.client_posted } else { s.client_ready };
        self.down.src_ready |= self.udp || s.client_hup || client_ready;
        self.up.src_ready = self.upstream_ready;
        s.action = Some("proxying connection");
        if self.udp {
            // nginx's first ngx_stream_proxy_process meets a worker that began to exit
            // while the name was looked up: nothing is sent.
            if cx.rt.exiting {
                return disconnected_on_shutdown(s);
            }
            // A datagram socket has nothing to read before its first send: an answer
            // raises an edge (the socket is watched before anything is sent).
            return self.process(s, cx, false, true);
        }
        // A client nginx has not read yet (no PROXY header, no preread) is watched only
        // from here (ngx_stream_proxy_process ends with ngx_handle_read_event), and so
        // it is here: what it already sent, or its end, is an event queued behind those
        // already ready (another session's connect is logged first), read after the
        // next epoll_wait. An upstream already readable is a posted event: it is read
        // at the end of this turn.
        // (A PROXY header, a preread phase or a TLS handshake had it watched already.)
        let watched = self.client_watched || s.client_hup;
        if !watched {
            // That first ngx_stream_proxy_process sends the PROXY header at once; the
            // client is not read (its read event is not ready yet).
            if self.down.held_len() > 0 {
                let ready = std::mem::replace(&mut self.down.src_ready, false);
                let flow = self.process(s, cx, false, true);
                self.down.src_ready = ready;
                if !matches!(flow, Flow::Again) {
                    return flow;
                }
            }
            if let Err(f) = s.watch_client(cx.registry) {
                return f;
            }
            if self.upstream_ready || client_ready {
                cx.rt.requeue_with(s.key, self.upstream_ready);
            }
            // nginx's first ngx_stream_proxy_process arms proxy_timeout before anything
            // is read, so `proxy_timeout 0` ends the session this turn with nothing
            // relayed (the turn's timers expire before its posted reads).
            let t = conf(s).timeout.get();
            cx.timers.rearm(&mut self.timer, cx.now + t, session_token(s.key, Side::Client));
            return Flow::Again;
        }
        // nginx's ngx_stream_proxy_process(s, 0, 1), then the upstream's posted read.
        match self.process(s, cx, false, true) {
            Flow::Again => self.process(s, cx, true, false),
            f => f,
        }
    }

    /// `ngx_stream_proxy_process`: move bytes one way, then see if the session is over.
    /// `do_write`: woken by the destination (its write event), so held bytes are sent
    /// first; a read event only reads (then sends what it read).
    fn process(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>, from_upstream: bool, do_write: bool) -> Flow {
        if !self.connected {
            return Flow::Again;
        }
        if self.udp {
            return self.process_udp(s, cx, from_upstream);
        }
        // ngx_stream_write_filter on an upstream in error (see `upstream_shutdown_error`): the
        // PROXY header or preread bytes queued for it end the session.
        if self.upstream_shutdown_error && !from_upstream && do_write && self.down.held_len() > 0 {
            return Flow::Finalize(status::OK);
        }
        let Some(upstream) = self.upstream.as_mut() else { return Flow::Finalize(status::INTERNAL_SERVER_ERROR) };
        let di = from_upstream as usize;
        let rate = if from_upstream { self.download_rate } else { self.upload_rate };
        let buffer = conf(s).buffer_size.get();
        let cork = !conf(s).half_close.get();
        let plog = s.proxy_log.get_or_insert_with(ProxyLog::default);
        let received = if from_upstream { plog.received } else { s.received };
        // nginx's pacing: at most `rate` bytes per second since the session started.
        let limit = if rate == 0 {
            None
        } else if self.delayed[di] {
            Some(0)
        } else {
            let allowed = rate as i64 * (crate::core::time::wall().0 - self.start_sec + 1) - received as i64;
            if allowed <= 0 {
                self.delayed[di] = true;
                let ms = (-allowed) as u64 * 1000 / rate + 1;
                cx.timers.set(
                    &mut self.delay_timer[di],
                    cx.now + Duration::from_millis(ms),
                    session_token(s.key, Side::Client),
                );
                Some(0)
            } else {
                Some(allowed as usize)
            }
        };
        // TLS bytes pass through OpenSSL: no splicing for a TLS client.
        let budget =
            Budget { buffer, limit, splice: rate == 0 && !s.client.is_tls() && !upstream.is_tls(), rate, cork };
        let (src, dst, d) = if from_upstream {
            (upstream, &mut s.client, &mut self.up)
        } else {
            (&mut s.client, upstream, &mut self.down)
        };
        let r = d.pump(src, dst, &mut cx.rt.scratch, &mut cx.rt.pipes, budget, do_write);
        if from_upstream {
            plog.received += r.read;
            s.sent += r.written;
            // A failed read counts too: nginx takes it as a zero-byte read at end of file.
            if r.read_returned || r.read_error.is_some() {
                if let Some(st) = s.upstream_states.last_mut() {
                    if st.first_byte_time.is_none() {
                        st.first_byte_time = Some(cx.now.saturating_duration_since(self.start));
                    }
                }
            }
        } else {
            s.received += r.read;
            plog.sent += r.written;
        }
        if rate > 0 && r.last_read > 0 {
            let ms = r.last_read * 1000 / rate;
            if ms > 0 {
                self.delayed[di] = true;
                cx.timers.set(
                    &mut self.delay_timer[di],
                    cx.now + Duration::from_millis(ms),
                    session_token(s.key, Side::Client),
                );
            }
        }
        let (src_side, dst_side) =
            if from_upstream { (Side::Upstream, Side::Client) } else { (Side::Client, Side::Upstream) };
        if let Some(e) = r.read_error {
            s.action = Some(if from_upstream {
                "proxying and reading from upstream"
            } else {
                "proxying and reading from client"
            });
            s.connection_error(src_side, &e, "recv() failed");
        }
        if let Some(e) = r.write_error {
            s.action =
                Some(if from_upstream { "proxying and sending to client" } else { "proxying and sending to upstream" });
            s.connection_error(dst_side, &e, "writev() failed");
            // nginx finalizes at once: the send action stays for what the close logs
            // (a TLS client's "SSL_shutdown() failed ... while proxying and sending").
            return Flow::Finalize(status::OK);
        }
        s.action = Some("proxying connection");
        if r.requeue {
            cx.rt.requeue(s.key);
        }
        if let Some(f) = self.test_finalize(s, from_upstream) {
            return f;
        }
        // Half close: pass the end of file on once everything before it is delivered.
        let pc = conf(s);
        let d = if from_upstream { &self.up } else { &self.down };
        if pc.half_close.get() && !self.half_closed && d.eof && !d.pending() {
            let dst = if from_upstream { Some(&s.client) } else { self.upstream.as_ref() };
            if let Some(dst) = dst {
                if let Err(e) = dst.shutdown_write() {
                    s.connection_error(Side::Client, &e, "shutdown() failed");
                    return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
                }
                self.half_closed = true;
            }
        }
        // proxy_timeout runs only while neither direction waits out a rate limit.
        if self.delayed[0] || self.delayed[1] {
            cx.timers.clear(&mut self.timer);
        } else {
            let t = pc.timeout.get();
            cx.timers.rearm(&mut self.timer, cx.now + t, session_token(s.key, Side::Client));
        }
        Flow::Again
    }

    /// The datagram relay: client datagrams go up one by one, upstream ones come back
    /// through the listening socket. Datagram boundaries are kept.
    fn process_udp(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>, from_upstream: bool) -> Flow {
        let Some(up) = self.upstream.as_mut() else { return Flow::Finalize(status::INTERNAL_SERVER_ERROR) };
        let buffer = conf(s).buffer_size.get();
        let plog = s.proxy_log.get_or_insert_with(ProxyLog::default);
        if from_upstream && self.upstream_error {
            // After a failed read nginx reads the upstream no more (`read->error`); a
            // pending error shows at the next send instead.
        } else if from_upstream && buffer == 0 {
            // `proxy_buffer_size 0`: nginx has no room to read an answer into, so it
            // never reads one (the session waits for proxy_timeout).
        } else if from_upstream && self.download_rate == 0 && matches!(s.client, Conn::Udp(_)) {
            if let Some((side, e, msg, action)) = self.answers_batched(s, cx) {
                s.action = Some(action);
                s.connection_error(side, &e, msg);
                if side == Side::Client {
                    return CLIENT_SEND_FAILED;
                }
                s.action = Some("proxying connection");
                self.upstream_read_failed(s, cx);
            }
        } else if from_upstream {
            // The shared buffer is lent out while the pacing helpers use the context.
            let mut buf = std::mem::take(&mut cx.rt.scratch);
            if buf.len() < UDP_MAX {
                buf.resize(UDP_MAX, 0);
            }
            let mut err = None;
            for _ in 0..64 {
                if !gate(
                    &mut self.delayed[1],
                    &mut self.delay_timer[1],
                    self.download_rate,
                    plog.received,
                    self.start_sec,
                    s.key,
                    cx,
                ) {
                    break;
                }
                // An answer longer than `proxy_buffer_size` is cut to it, as nginx's
                // recv() into its buffer cuts it.
                let size = buffer.clamp(1, UDP_MAX);
                match up.read(&mut buf[..size]) {
                    Ok(n) => {
                        if let Some(st) = s.upstream_states.last_mut() {
                            if st.first_byte_time.is_none() {
                                st.first_byte_time = Some(cx.now.saturating_duration_since(self.start));
                            }
                        }
                        self.responses += 1;
                        plog.received += n as u64;
                        paced(&mut self.delayed[1], &mut self.delay_timer[1], self.download_rate, n, s.key, cx);
                        match s.client.write(&buf[..n]) {
                            Ok(w) => s.sent += w as u64,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => {
                                err = Some((Side::Client, e, "sendmsg() failed", "proxying and sending to client"));
                                break;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // nginx counts the failed read as a (zero-byte) response.
                        self.responses += 1;
                        err = Some((Side::Upstream, e, "recv() failed", "proxying and reading from upstream"));
                        break;
                    }
                }
            }
            cx.rt.scratch = buf;
            if let Some((side, e, msg, action)) = err {
                s.action = Some(action);
                s.connection_error(side, &e, msg);
                if side == Side::Client {
                    return CLIENT_SEND_FAILED;
                }
                s.action = Some("proxying connection");
                self.upstream_read_failed(s, cx);
            }
        } else {
            loop {
                if s.udp_queue.is_empty() {
                    break;
                }
                // The session's first datagram goes out as nginx's preread buffer does,
                // neither gated nor paced; each later one is read under the rate, and
                // one that comes while reading is delayed is lost, as in nginx (its
                // datagram is only there while the read handler runs).
                let first = !self.udp_first_sent;
                // One that came before the upstream was connected (while its name was
                // resolved) was read by nginx then, with no rate yet: neither gated
                // nor paced, and an empty one is never sent (an empty buffer).
                let early = !first && self.early > 0;
                if early {
                    self.early -= 1;
                }
                if !first
                    && !early
                    && !gate(
                        &mut self.delayed[0],
                        &mut self.delay_timer[0],
                        self.upload_rate,
                        s.received,
                        self.start_sec,
                        s.key,
                        cx,
                    )
                {
                    s.udp_queue.clear();
                    s.udp_queued = 0;
                    break;
                }
                let Some(mut d) = s.udp_queue.pop_front() else { break };
                self.requests += 1;
                self.udp_first_sent = true;
                if !first {
                    s.udp_queued = s.udp_queued.saturating_sub(d.len());
                    // Read into the session's buffer: the rest of the datagram is lost
                    // (the first one is nginx's preread buffer, sent whole).
                    d.truncate(buffer);
                    // (The first was counted when the session began, an early one as
                    // it came.)
                    if !early {
                        s.received += d.len() as u64;
                    }
                    if early && d.is_empty() {
                        continue;
                    }
                    if !early {
                        paced(&mut self.delayed[0], &mut self.delay_timer[0], self.upload_rate, d.len(), s.key, cx);
                    }
                }
                if let Some(h) = self.udp_header.take() {
                    d.splice(0..0, h);
                }
                match up.write(&d) {
                    Ok(n) => plog.sent += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        // The action stays for the finalization, as nginx's: the failed
                        // peer's "upstream server temporarily disabled" is logged "while
                        // proxying and sending to upstream".
                        s.action = Some("proxying and sending to upstream");
                        s.connection_error(Side::Upstream, &e, "sendmsg() failed");
                        self.upstream_error = true;
                        return Flow::Finalize(status::OK);
                    }
                }
            }
        }
        if let Some(f) = self.test_finalize_udp(s, cx) {
            return f;
        }
        if self.delayed[0] || self.delayed[1] {
            cx.timers.clear(&mut self.timer);
        } else {
            let t = conf(s).timeout.get();
            cx.timers.rearm(&mut self.timer, cx.now + t, session_token(s.key, Side::Client));
        }
        Flow::Again
    }

    /// A UDP upstream read failed (an ICMP error, say), as nginx takes it: a zero-byte
    /// read at end of file, so it is the first byte's time, and the empty "answer" goes
    /// to the client as an empty datagram. The peer has failed, and is read no more.
    /// (A send to the client that fails here is logged; the session goes on.)
    fn upstream_read_failed(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) {
        self.upstream_error = true;
        if let Some(st) = s.upstream_states.last_mut() {
            if st.first_byte_time.is_none() {
                st.first_byte_time = Some(cx.now.saturating_duration_since(self.start));
            }
        }
        if let Err(e) = s.client.write(&[]) {
            if e.kind() != io::ErrorKind::WouldBlock {
                s.action = Some("proxying and sending to client");
                s.connection_error(Side::Client, &e, "sendmsg() failed");
                s.action = Some("proxying connection");
            }
        }
    }

    /// The upstream's answers back to the client, up to 16 per recvmmsg and per sendmmsg
    /// (there is no download rate to pace them). As nginx, every datagram queued by now
    /// is relayed, even past `proxy_responses`: the count is checked after the reads.
    fn answers_batched(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Option<UdpError> {
        let ufd = self.upstream.as_ref()?.fd();
        let Conn::Udp(client) = &s.client else { return None };
        let (cfd, peer, from) = (client.fd(), client.peer, client.local.map(|a| a.ip()));
        let size = conf(s).buffer_size.get();
        let mut batch = cx.rt.udp_batch.take().unwrap_or_else(|| Box::new(RecvBatch::new(UDP_MAX)));
        let mut err = None;
        let mut seen = 0;
        while seen < 64 {
            let n = match batch.recv(ufd, mmsg::BATCH) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // nginx counts the failed read as a (zero-byte) response.
                    self.responses += 1;
                    err = Some((Side::Upstream, e, "recv() failed", "proxying and reading from upstream"));
                    break;
                }
            };
            if n == 0 {
                break;
            }
            seen += n;
            if let Some(st) = s.upstream_states.last_mut() {
                if st.first_byte_time.is_none() {
                    st.first_byte_time = Some(cx.now.saturating_duration_since(self.start));
                }
            }
            let plog = s.proxy_log.get_or_insert_with(ProxyLog::default);
            let mut out: [&[u8]; mmsg::BATCH] = [&[]; mmsg::BATCH];
            for (i, o) in out.iter_mut().enumerate().take(n) {
                // Cut to `proxy_buffer_size`, as nginx's recv() into its buffer cuts it.
                let d = batch.data(i);
                *o = &d[..d.len().min(size)];
            }
            let bytes = |d: &[&[u8]]| d.iter().map(|d| d.len() as u64).sum::<u64>();
            // As nginx reads them one at a time: those after a failed send were not read.
            let (read, failed) = match mmsg::send_to_all(cfd, &peer, from, &out[..n]) {
                Ok(m) => {
                    s.sent += bytes(&out[..m]);
                    (n, None)
                }
                Err((m, e)) => {
                    s.sent += bytes(&out[..m]);
                    (m + 1, Some(e))
                }
            };
            self.responses += read as u64;
            plog.received += bytes(&out[..read]);
            if let Some(e) = failed {
                err = Some((Side::Client, e, "sendmsg() failed", "proxying and sending to client"));
                break;
            }
            // On until the socket is empty, as nginx's loop (recv, send, recv ...):
            // an answer that came while these were sent goes along too.
        }
        cx.rt.udp_batch = Some(batch);
        err
    }

    fn udp_counts(&self, s: &SessionCore) -> String {
        let p = s.proxy_log.clone().unwrap_or_default();
        format!(
            "packets from/to client:{}/{}, bytes from/to client:{}/{}, bytes from/to upstream:{}/{}",
            self.requests, self.responses, s.received, s.sent, p.received, p.sent
        )
    }

    /// `ngx_stream_proxy_test_finalize` for UDP: done once the expected responses came.
    fn test_finalize_udp(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Option<Flow> {
        let (requests, responses) = (conf(s).requests.get(), conf(s).responses.get());
        if requests != 0 && self.requests < requests {
            return None;
        }
        if requests != 0 {
            cx.rt.udp_unbind(s.udp_key, s.key);
        }
        if responses == UNLIMITED || self.responses < responses * self.requests {
            return None;
        }
        if s.log_enabled(Level::Info) {
            s.log_bare(Level::Info, &format!("udp done, {}", self.udp_counts(s)));
        }
        Some(Flow::Finalize(status::OK))
    }

    /// `ngx_stream_proxy_test_finalize` for TCP.
    fn test_finalize(&mut self, s: &mut SessionCore, from_upstream: bool) -> Option<Flow> {
        let (down, up) = (&self.down, &self.up);
        let (c_eof, u_eof) = (down.eof, up.eof);
        // Wait while both sides are open, or while bytes are still owed to a side that
        // has not closed (output to the client is `up`'s, to the upstream `down`'s).
        let both_open = !(c_eof || u_eof);
        let owed_client = !c_eof && up.pending();
        let owed_upstream = !u_eof && down.pending();
        if both_open || owed_client || owed_upstream {
            return None;
        }
        // With half-close the session lives until both ends are done.
        let all_done = c_eof && u_eof && !up.pending() && !down.pending();
        if conf(s).half_close.get() && !all_done {
            return None;
        }
        if s.log_enabled(Level::Info) {
            let p = s.proxy_log.clone().unwrap_or_default();
            s.log_bare(
                Level::Info,
                &format!(
                    "{} disconnected, bytes from/to client:{}/{}, bytes from/to upstream:{}/{}",
                    if from_upstream { "upstream" } else { "client" },
                    s.received,
                    s.sent,
                    p.received,
                    p.sent
                ),
            );
        }
        Some(Flow::Finalize(status::OK))
    }
}

impl ProxySession {
    /// The group is known: take the first peer (`ngx_stream_proxy_connect`).
    fn begin(&mut self, s: &mut SessionCore, group: usize, cx: &mut Cx<'_>) -> Flow {
        self.group = Some(group);
        let cycle = s.cycle.clone();
        if let Some(k) = cycle.upstreams.get(group).and_then(|u| u.hash_key.as_ref()) {
            let mut v = std::mem::take(&mut cx.rt.eval_buf);
            v.clear();
            k.eval(s, &mut v);
            self.key = Some(HashKey::new(&v));
            cx.rt.eval_buf = v;
        }
        let mut tries = cx.rt.group_tries(group);
        let limit = conf(s).next_upstream_tries.get() as usize;
        if limit != 0 && tries > limit {
            tries = limit;
        }
        self.pick.tries = tries;
        self.first_start = cx.now;
        self.connect(s, cx)
    }
}

/// A datagram relay error: the side, the error, nginx's message and the log action.
type UdpError = (Side, io::Error, &'static str, &'static str);

/// The upstream socket could not be made ready (nginx's NGX_ERROR from
/// `ngx_event_connect_peer`): the session ends with 500, the attempt has no peer.
struct ConnectFatal(Level, String, io::Error);

impl Content for ProxySession {
    fn start(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        s.proxy_log = Some(ProxyLog::default());
        self.udp = s.client.is_udp();
        // ngx_stream_proxy_handler allocates the client's buffer before anything else.
        if let Err(n) = cx.rt.reserve_scratch(conf(s).buffer_size.get().max(1)) {
            let e = io::Error::from_raw_os_error(libc::ENOMEM);
            s.log(Level::Emerg, &format!("malloc({n}) failed"), Some(&e));
            return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
        }
        self.set_local(s);
        // A TLS client's read event is watched since its handshake, and still ready
        // after it (OpenSSL read the last flight, not nginx's recv).
        let tls = s.client.is_tls();
        self.client_watched = !self.udp && (s.pp_read || !s.preread.is_empty() || tls);
        // nginx's proxy handler posts the client's read event when it is still ready: a
        // PROXY header is taken whole, while a preread phase's short read drains it
        // unless an end of file is pending (a read that filled its room leaves it ready).
        let posted = self.client_watched && (tls || s.preread.is_empty() || s.client_hup || s.preread_ready);
        self.client_posted = posted;
        let flow = match self.choose_group(s, cx) {
            Ok(g) => self.begin(s, g, cx),
            Err(Some(st)) => return Flow::Finalize(st),
            Err(None) => Flow::Again,
        };
        if posted && flow == Flow::Again && !self.connected {
            self.read_client_early(s, cx);
        }
        flow
    }

    fn on_resolved(&mut self, s: &mut SessionCore, outcome: resolver::Outcome, cx: &mut Cx<'_>) -> Flow {
        match self.resolved(s, outcome, cx) {
            Ok(g) => self.begin(s, g, cx),
            Err(st) => Flow::Finalize(st.unwrap_or(status::INTERNAL_SERVER_ERROR)),
        }
    }

    fn on_event(&mut self, s: &mut SessionCore, side: Side, ready: Ready, cx: &mut Cx<'_>) -> Flow {
        if self.udp && cx.rt.exiting {
            return disconnected_on_shutdown(s);
        }
        // Remember a hang-up on either socket even before relaying starts: the reads
        // from that socket must then go on to end of file.
        if ready.hup || ready.error {
            let d = match side {
                Side::Client => &mut self.down,
                Side::Upstream => &mut self.up,
            };
            d.greedy = true;
            // An error after the FIN (a reset) is still to be read, as nginx finds it.
            d.fin = ready.fin || (d.fin && !ready.error);
        }
        // The socket that fired may have bytes for the direction that reads it. (A
        // posted turn leaves the flags as the relay left them: a socket it found
        // drained is not read again for nothing.)
        if (ready.readable || ready.hup || ready.error) && !ready.posted {
            match side {
                Side::Client => self.down.src_ready = true,
                Side::Upstream => self.up.src_ready = true,
            }
        }
        if side == Side::Upstream && self.tls_handshaking {
            return self.upstream_handshake(s, cx);
        }
        if side == Side::Upstream && !self.connected {
            if !(ready.writable || ready.error || ready.hup) {
                return Flow::Again;
            }
            // Bytes or an end already in with the connect: nginx's read event is ready.
            self.upstream_ready = ready.readable || ready.hup;
            // A clean "writable" means connected; only an error needs SO_ERROR read.
            if ready.writable && !ready.error && !ready.hup {
                return self.init_upstream(s, cx);
            }
            return self.test_connect(s, cx);
        }
        if !self.connected {
            if side == Side::Client && self.client_watched && (ready.readable || ready.hup || ready.error) {
                self.read_client_early(s, cx);
            }
            if self.udp && side == Side::Client && s.udp_queue.len() > 1 {
                // nginx's read of a later datagram ends with this action.
                self.count_early_datagrams(s);
                s.action = Some("proxying connection");
            }
            // nginx reads each datagram as it comes, before the upstream too (while its
            // name is looked up), and once `proxy_requests` are in, the client's next
            // ones start another session (ngx_stream_proxy_test_finalize).
            let requests = conf(s).requests.get();
            if self.udp && side == Side::Client && requests != 0 && s.udp_queue.len() as u64 >= requests {
                cx.rt.udp_unbind(s.udp_key, s.key);
            }
            return Flow::Again;
        }
        // Client read and upstream write move bytes upstream; the others downstream.
        // (A read event, then a write event, as nginx's epoll module calls them.)
        let order: [(bool, bool, bool); 2] = match side {
            Side::Client => [(ready.readable || ready.hup || ready.error, false, false), (ready.writable, true, true)],
            Side::Upstream => {
                [(ready.readable || ready.hup || ready.error, true, false), (ready.writable, false, true)]
            }
        };
        for (wanted, from_upstream, do_write) in order {
            if wanted {
                match self.process(s, cx, from_upstream, do_write) {
                    Flow::Again => {}
                    f => return f,
                }
            }
        }
        Flow::Again
    }

    fn on_timeout(&mut self, s: &mut SessionCore, id: TimerId, cx: &mut Cx<'_>) -> Flow {
        if self.connect_timer == Some(id) && self.tls_handshaking {
            // nginx's handshake handler takes the timeout as a failed handshake: the
            // next upstream, without a line.
            self.connect_timer = None;
            return self.next_upstream(s, cx);
        }
        if self.connect_timer == Some(id) {
            self.connect_timer = None;
            let e = io::Error::from_raw_os_error(libc::ETIMEDOUT);
            s.log(Level::Error, "upstream timed out", Some(&e));
            return self.next_upstream(s, cx);
        }
        for di in 0..2 {
            if self.delay_timer[di] == Some(id) {
                self.delay_timer[di] = None;
                self.delayed[di] = false;
                // nginx goes on to ngx_stream_proxy_process when the delayed read event
                // is still ready: a UDP upstream's always is after a read (epoll), a
                // client's datagram never is once read.
                if self.udp && di == 1 && cx.rt.exiting {
                    return disconnected_on_shutdown(s);
                }
                return self.process(s, cx, di == 1, false);
            }
        }
        if self.timer == Some(id) && self.udp {
            self.timer = None;
            let responses = conf(s).responses.get();
            if responses == UNLIMITED || self.responses >= responses * self.requests {
                // The expected responses came: a timed-out UDP session ends well.
                if s.log_enabled(Level::Info) {
                    s.log_bare(Level::Info, &format!("udp timed out, {}", self.udp_counts(s)));
                }
                return Flow::Finalize(status::OK);
            }
            let e = io::Error::from_raw_os_error(libc::ETIMEDOUT);
            s.connection_error(Side::Upstream, &e, "upstream timed out");
            self.upstream_error = true;
            return Flow::Finalize(status::BAD_GATEWAY);
        }
        if self.timer == Some(id) {
            self.timer = None;
            let e = io::Error::from_raw_os_error(libc::ETIMEDOUT);
            s.connection_error(Side::Client, &e, "connection timed out");
            return Flow::Finalize(status::OK);
        }
        Flow::Again
    }

    /// The upstream's read handler, the upstream marked in error first (see
    /// `upstream_shutdown_error`): while connecting, nginx's connect handler tests the
    /// socket and (finding no error) goes on as connected, logging "proxy ...
    /// connected"; the client's turn then ends the session "while proxying
    /// connection". A TLS handshake to the upstream just goes on.
    fn on_upstream_shutdown_timeout(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        self.upstream_shutdown_error = true;
        if let Some(t) = self.upstream.as_mut().and_then(|u| u.tls_mut()) {
            t.abandon();
        }
        if self.tls_handshaking {
            return Flow::Again;
        }
        if !self.connected {
            return self.test_connect(s, cx);
        }
        self.on_shutdown_timeout(s)
    }

    fn upstream_socket(&self) -> Option<(u32, u64, RawFd)> {
        self.upstream.as_ref().map(|u| (self.upstream_slot, self.upstream_number, u.fd()))
    }

    fn waits_without_timer(&self) -> bool {
        self.resolving.is_some() && self.resolving_untimed
    }

    fn client_write_deadline(&self) -> Option<Instant> {
        self.timer.as_ref().map(|t| t.deadline())
    }

    fn close(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) {
        if self.udp && !self.connected {
            // Ended before the upstream was there (a shutdown, a failed connect()):
            // what nginx read meanwhile was counted.
            self.count_early_datagrams(s);
        }
        cx.timers.clear(&mut self.timer);
        if let Some(st) = s.upstream_states.last_mut() {
            if st.response_time.is_none() {
                st.response_time = Some(cx.now.saturating_duration_since(self.start));
            }
        }
        if let Some(g) = self.group {
            if self.pick.current.is_some() {
                if let (Some(st), Some(p)) = (s.upstream_states.last(), s.proxy_log.as_ref()) {
                    let times = [st.connect_time, st.first_byte_time, st.response_time];
                    cx.rt.count_peer(g, &self.pick, p.sent, p.received, times);
                }
                let outcome = if self.udp && self.upstream_error { Outcome::Failed } else { Outcome::Ok };
                if cx.rt.free_peer(g, &mut self.pick, outcome, cx.now) {
                    s.log(Level::Warn, "upstream server temporarily disabled", None);
                }
            }
        }
        for t in &mut self.delay_timer {
            cx.timers.clear(t);
        }
        if let (true, Some(g)) = (self.own_group, self.group) {
            cx.rt.drop_session_group(g);
        }
        // Bytes held back with MSG_MORE leave with the end of file, or before the reset
        // of a close with unread bytes (`Conn::end_corked`); the client's after the log
        // phase.
        s.client_corked = self.up.corked;
        if self.down.corked {
            if let Some(u) = &self.upstream {
                u.end_corked();
            }
        }
        self.close_upstream(s, cx, false);
        // Give the pipes back at once (closed if bytes are left in them).
        self.down.release(&mut cx.rt.pipes);
        self.up.release(&mut cx.rt.pipes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_short_and_long() {
        for n in [0, 1, KEY_INLINE - 1, KEY_INLINE, KEY_INLINE + 1, 1000] {
            let v: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let k = HashKey::new(&v);
            assert_eq!(k.get(), &v[..], "length {n}");
            assert_eq!(matches!(k, HashKey::Inline(..)), n <= KEY_INLINE, "length {n}");
        }
    }
}
