//! ngx_stream_core_module: `server`, `listen`, `error_log`, `tcp_nodelay`,
//! `preread_buffer_size`, `preread_timeout`, `proxy_protocol_timeout`, `resolver`,
//! `resolver_timeout`, `variables_hash_*`; and the core variables ($remote_addr, ...).

use std::io::Write as _;
use std::rc::Rc;
use std::time::Duration;

use crate::core::addr::{parse_url, Addr};
use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value::{self, Setting};
use crate::core::conf::{Cmd, ConfError, ConfResult, Level};
use crate::core::conn::ListenOpts;
use crate::stream::conf::ConfCx;
use crate::stream::module::{BlockKind, Directive, Module, Set};
use crate::stream::resolver::ResolverConf;
use crate::stream::server_names::ServerName;
use crate::stream::session::{write_msec, SessionCore};
use crate::stream::variables::Variables;

pub struct StreamCore;

/// One `listen` directive's address with its parameters.
#[derive(Debug, Clone)]
pub struct ListenConf {
    pub addr: Addr,
    pub opts: ListenOpts,
    pub udp: bool,
    pub ssl: bool,
    pub proxy_protocol: bool,
    pub wildcard: bool,
    /// Socket options were given (nginx's `lsopt.set`): only one server may.
    pub set: bool,
    pub default_server: bool,
    pub file: Rc<str>,
    pub line: u32,
}

#[derive(Default)]
pub struct CoreSrv {
    pub listens: Vec<ListenConf>,
    pub tcp_nodelay: Setting<bool>,
    pub preread_buffer_size: usize,
    preread_buffer_size_s: Setting<usize>,
    pub preread_timeout: Duration,
    preread_timeout_s: Setting<Duration>,
    pub proxy_protocol_timeout: Setting<Duration>,
    pub resolver: Setting<Rc<ResolverConf>>,
    pub resolver_timeout: Setting<Duration>,
    /// `error_log` outputs of this level (empty: inherit).
    pub error_log: Vec<(String, Level)>,
    /// `server_name`: the names of this virtual server (none: the name "").
    pub server_names: Vec<ServerName>,
    /// `$server_name`: the first name ("" when none).
    pub server_name: String,
}

impl CoreSrv {
    pub fn tcp_nodelay(&self) -> bool {
        self.tcp_nodelay.get()
    }
}

/// A hash size (`ngx_conf_set_num_slot`): once per stream block ("is duplicate" before
/// the value is read), a number.
fn hash_size(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if cx.main_seen.contains(&cmd.name) {
        return Err(cmd.duplicate());
    }
    cx.main_seen.push(cmd.name.clone());
    let n = value::number(cmd)?;
    match cmd.name.as_str() {
        "variables_hash_max_size" => cx.variables_hash.0 = Some(n),
        "variables_hash_bucket_size" => cx.variables_hash.1 = Some(n),
        _ => {}
    }
    Ok(())
}

fn listen(c: &mut CoreSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let url = cmd.arg(0);
    let u =
        parse_url(url, true, true).map_err(|e| cmd.err(format!("{} in \"{}\" of the \"listen\" directive", e, url)))?;
    // No port is port 0 in nginx 1.22 (no default_port for stream): the kernel picks one.
    // ipv6only is on by default in nginx: [::]:port takes IPv6 only, beside 0.0.0.0:port.
    let mut opts = ListenOpts { ipv6only: true, ..ListenOpts::default() };
    let (mut udp, mut ssl, mut pp, mut backlog_set) = (false, false, false, false);
    let (mut keepalive_set, mut fastopen_set, mut deferred) = (false, false, false);
    let mut default_server = false;
    for a in &cmd.args[1..] {
        let a = a.as_str();
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (a, None),
        };
        match (k, v) {
            ("udp", None) => udp = true,
            ("bind", None) => opts.bind = true,
            ("ssl", None) => ssl = true,
            ("proxy_protocol", None) => pp = true,
            ("reuseport", None) => {
                opts.reuseport = true;
                opts.bind = true;
            }
            ("default_server", None) => default_server = true,
            ("deferred", None) => deferred = true,
            ("backlog", Some(v)) => {
                // ngx_atoi into an int, as nginx: digits only, truncated to 32 bits, and
                // neither 0 nor NGX_ERROR (-1) after that.
                let n = value::parse_number(v).map(|n| n as i32).filter(|n| *n != 0 && *n != -1);
                opts.backlog = Some(n.ok_or_else(|| cmd.err(format!("invalid backlog \"{}\"", a)))?);
                backlog_set = true;
                opts.bind = true;
            }
            // nginx keeps these in an int: truncated to 32 bits, and NGX_ERROR (-1)
            // after that is refused.
            ("rcvbuf", Some(v)) => {
                let n = value::parse_size(v).map(|n| n as i32).filter(|n| *n != -1);
                opts.rcvbuf = Some(n.ok_or_else(|| cmd.err(format!("invalid rcvbuf \"{}\"", a)))?);
                opts.bind = true;
            }
            ("sndbuf", Some(v)) => {
                let n = value::parse_size(v).map(|n| n as i32).filter(|n| *n != -1);
                opts.sndbuf = Some(n.ok_or_else(|| cmd.err(format!("invalid sndbuf \"{}\"", a)))?);
                opts.bind = true;
            }
            // nginx matches "ipv6only=o" first, then "n" or "ff" (so "=yes" is an invalid
            // parameter, "=oops" invalid flags).
            ("ipv6only", Some(v)) if v.starts_with('o') => {
                opts.ipv6only = match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(cmd.err(format!("invalid ipv6only flags \"{}\"", v))),
                };
                opts.bind = true;
            }
            ("fastopen", Some(v)) => {
                let n = value::parse_number(v).map(|n| n as i32).filter(|n| *n != -1);
                opts.fastopen = Some(n.ok_or_else(|| cmd.err(format!("invalid fastopen \"{}\"", a)))?);
                fastopen_set = true;
                opts.bind = true;
            }
            ("so_keepalive", Some(v)) => {
                keepalive_set = true;
                match v {
                    "on" => opts.so_keepalive = Some(true),
                    "off" => opts.so_keepalive = Some(false),
                    _ => {
                        let bad = || cmd.err(format!("invalid so_keepalive value: \"{}\"", v));
                        let parts: Vec<&str> = v.split(':').collect();
                        if parts.len() > 3 {
                            return Err(bad());
                        }
                        let get = |i: usize, secs: bool| -> Result<Option<u32>, crate::core::conf::ConfError> {
                            match parts.get(i).copied() {
                                None | Some("") => Ok(None),
                                Some(p) => {
                                    let n = if secs { value::parse_time(p, true) } else { value::parse_number(p) };
                                    // Kept in an int: NGX_ERROR (-1) once truncated is refused.
                                    n.map(|n| n as u32).filter(|&n| n != u32::MAX).map(Some).ok_or_else(bad)
                                }
                            }
                        };
                        // A zero is left unset, as nginx sets only what is not zero.
                        opts.keepidle = get(0, true)?.filter(|&n| n != 0);
                        opts.keepintvl = get(1, true)?.filter(|&n| n != 0);
                        opts.keepcnt = get(2, false)?.filter(|&n| n != 0);
                        // All three unset or zero is no setting at all (nginx's check).
                        if opts.keepidle.is_none() && opts.keepintvl.is_none() && opts.keepcnt.is_none() {
                            return Err(bad());
                        }
                        opts.so_keepalive = Some(true);
                    }
                }
                opts.bind = true;
            }
            _ => return Err(cmd.err(format!("the invalid \"{}\" parameter", a))),
        }
    }
    if udp {
        // nginx's checks, in its order.
        for (set, name) in [
            (backlog_set, "backlog"),
            (ssl, "ssl"),
            (keepalive_set, "so_keepalive"),
            (pp, "proxy_protocol"),
            (fastopen_set, "fastopen"),
            (deferred, "deferred"),
        ] {
            if set {
                return Err(ConfError::directive(cmd, &format!("\"{}\" parameter is incompatible with \"udp\"", name)));
            }
        }
        if u.is_unix() {
            return Err(cmd.err("\"udp\" on unix domain sockets is not supported by sluice"));
        }
        opts.udp = true;
    }
    let set = opts.bind || deferred;
    // Sets, not scans: a port range is one address per port.
    let mut own_addrs: std::collections::HashSet<(Addr, bool)> =
        c.listens.iter().map(|l| (l.addr.clone(), l.udp)).collect();
    let mut seen: std::collections::HashSet<&Addr> = std::collections::HashSet::new();
    for addr in &u.addrs {
        // A name resolving to one address twice counts once.
        if !seen.insert(addr) {
            continue;
        }
        let own = own_addrs.contains(&(addr.clone(), udp));
        let Some(prev) = cx.listen_addrs.get(&(addr.clone(), udp)) else { continue };
        if !cx.virtual_servers {
            // nginx before 1.25.5 (no `server_name` in stream): one server per address.
            return Err(cmd.err(format!("duplicate \"{}\" address and port pair", addr)));
        }
        // Virtual servers (nginx 1.25.5): an address may be shared by servers, each once,
        // with socket options and `default_server` given by one of them.
        if own {
            return Err(cmd.err(format!("a duplicate listen {}", addr)));
        }
        if set && prev.set {
            return Err(cmd.err(format!("duplicate listen options for {}", addr)));
        }
        if default_server && prev.default_server {
            return Err(cmd.err(format!("a duplicate default server for {}", addr)));
        }
    }
    for addr in u.addrs {
        if !own_addrs.insert((addr.clone(), udp)) {
            continue;
        }
        match cx.listen_addrs.get_mut(&(addr.clone(), udp)) {
            Some(l) => {
                l.set |= set;
                l.default_server |= default_server;
            }
            None => {
                let l = crate::stream::conf::ListenAddr { addr: addr.clone(), udp, set, default_server };
                cx.listen_addrs.insert((addr.clone(), udp), l);
            }
        }
        let wildcard = match &addr {
            Addr::Inet(sa) => sa.ip().is_unspecified(),
            Addr::Unix(_) => false,
        };
        c.listens.push(ListenConf {
            addr,
            opts: opts.clone(),
            udp,
            ssl,
            proxy_protocol: pp,
            wildcard,
            set,
            default_server,
            file: cmd.file.clone(),
            line: cmd.line,
        });
    }
    Ok(())
}

/// `server_name name ...`: exact names, "*.name" / ".name" / "name.*" wildcards,
/// "~regex" (caseless when it has an uppercase letter), `$hostname`.
fn server_name(c: &mut CoreSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    for v in &cmd.args {
        let b = v.as_bytes();
        let c0 = b.first().copied().unwrap_or(0);
        if (c0 == b'*' && (b.len() < 3 || b[1] != b'.')) || (c0 == b'.' && b.len() < 2) {
            return Err(cmd.err(format!("server name \"{}\" is invalid", v)));
        }
        if v.contains('/') {
            cx.warn(cmd, &format!("server name \"{}\" has suspicious symbols", v));
        }
        if v.eq_ignore_ascii_case("$hostname") {
            c.server_names.push(ServerName { name: crate::core::log::hostname(), regex: None });
            continue;
        }
        let Some(pattern) = v.strip_prefix('~') else {
            c.server_names.push(ServerName { name: v.to_ascii_lowercase(), regex: None });
            continue;
        };
        if pattern.is_empty() {
            return Err(cmd.err(format!("empty regex in server name \"{}\"", v)));
        }
        let caseless = pattern.bytes().any(|b| b.is_ascii_uppercase());
        let re = crate::stream::map_module::regex_compile(pattern, caseless, cmd, &mut cx.vars)?;
        c.server_names.push(ServerName { name: pattern.to_string(), regex: Some(Rc::new(re)) });
    }
    Ok(())
}

fn error_log(c: &mut CoreSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let e = crate::core::main_conf::parse_error_log(cmd, cx)?;
    c.error_log.push(e);
    Ok(())
}

fn resolver(c: &mut CoreSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.resolver.set_parsed(cmd, |cmd| ResolverConf::parse(&cmd.args).map(Rc::new).map_err(|e| cmd.err(e)))
}

impl Module for StreamCore {
    const NAME: &'static str = "stream_core";
    type Main = ();
    type Srv = CoreSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive {
            name: "server",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Block(0, 0),
            set: Set::Block(BlockKind::Server),
        },
        Directive { name: "listen", ctx: Ctx::STREAM_SRV, args: Arity::OneOrMore, set: Set::Srv(listen) },
        Directive { name: "server_name", ctx: Ctx::STREAM_SRV, args: Arity::OneOrMore, set: Set::Srv(server_name) },
        Directive { name: "error_log", ctx: Ctx::MAIN_SRV, args: Arity::OneOrMore, set: Set::Srv(error_log) },
        Directive {
            name: "tcp_nodelay",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Flag,
            set: Set::<Self>::Srv(|c, cmd, _| c.tcp_nodelay.set_parsed(cmd, value::flag)),
        },
        Directive {
            name: "preread_buffer_size",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.preread_buffer_size_s.set_parsed(cmd, value::size)),
        },
        Directive {
            name: "preread_timeout",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.preread_timeout_s.set_parsed(cmd, value::msec)),
        },
        Directive {
            name: "proxy_protocol_timeout",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.proxy_protocol_timeout.set_parsed(cmd, value::msec)),
        },
        Directive { name: "resolver", ctx: Ctx::MAIN_SRV, args: Arity::OneOrMore, set: Set::Srv(resolver) },
        Directive {
            name: "resolver_timeout",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::<Self>::Srv(|c, cmd, _| c.resolver_timeout.set_parsed(cmd, value::msec)),
        },
        // Sizes of nginx's hashes: sluice's lookups have no buckets to size.
        Directive {
            name: "server_names_hash_max_size",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Take(1),
            set: Set::Main(hash_size),
        },
        Directive {
            name: "server_names_hash_bucket_size",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Take(1),
            set: Set::Main(hash_size),
        },
        Directive {
            name: "variables_hash_max_size",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Take(1),
            set: Set::Main(hash_size),
        },
        Directive {
            name: "variables_hash_bucket_size",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Take(1),
            set: Set::Main(hash_size),
        },
    ];

    fn variables(v: &mut Variables) {
        v.define("binary_remote_addr", var_binary_remote_addr, 0);
        v.define("remote_addr", var_remote_addr, 0);
        v.define("remote_port", var_remote_port, 0);
        v.define("server_addr", var_server_addr, 0);
        v.define("server_port", var_server_port, 0);
        v.define_cacheable("bytes_sent", var_bytes, 0);
        v.define_cacheable("bytes_received", var_bytes, 1);
        v.define_nocacheable("session_time", var_session_time, 0);
        v.define_nocacheable("status", var_status, 0);
        v.define("connection", var_connection, 0);
        v.define("nginx_version", var_nginx_version, 0);
        v.define("hostname", var_hostname, 0);
        v.define_extension("server_name", var_server_name, 0);
        v.define("pid", var_pid, 0);
        v.define_nocacheable("msec", var_msec, 0);
        v.define_nocacheable("time_iso8601", var_time, 0);
        v.define_nocacheable("time_local", var_time, 1);
        v.define("protocol", var_protocol, 0);
        // $1..$9: the captures of the last regex match (map, server_name). Scripts
        // reach them by these names, which no `$name` can spell: `${1}` is a variable
        // named "1" to nginx, unknown (see `Complex::compile`).
        for n in 1..=9 {
            let i = v.define(&crate::stream::variables::capture_name(n), var_capture, n);
            v.set_capture(i);
        }
        // Core variables in nginx; not found without a PROXY protocol header.
        let pp =
            ["proxy_protocol_addr", "proxy_protocol_port", "proxy_protocol_server_addr", "proxy_protocol_server_port"];
        for (i, name) in pp.iter().enumerate() {
            v.define(name, var_proxy_protocol, i);
        }
        v.define_prefix("proxy_protocol_tlv_", var_proxy_protocol_tlv);
    }

    fn merge_srv(p: &CoreSrv, c: &mut CoreSrv, _: &mut ConfCx) -> ConfResult {
        c.tcp_nodelay.merge(&p.tcp_nodelay, true);
        c.preread_buffer_size_s.merge(&p.preread_buffer_size_s, 16384);
        c.preread_buffer_size = c.preread_buffer_size_s.get();
        c.preread_timeout_s.merge(&p.preread_timeout_s, Duration::from_secs(30));
        c.preread_timeout = c.preread_timeout_s.get();
        c.proxy_protocol_timeout.merge(&p.proxy_protocol_timeout, Duration::from_secs(30));
        c.resolver.inherit(&p.resolver);
        c.resolver_timeout.merge(&p.resolver_timeout, Duration::from_secs(30));
        if c.error_log.is_empty() {
            c.error_log = p.error_log.clone();
        }
        // `$server_name`: the first name, "~" kept on a regex, "." dropped from ".name".
        c.server_name = match c.server_names.first() {
            None => String::new(),
            Some(n) if n.regex.is_some() => format!("~{}", n.name),
            Some(n) => n.name.strip_prefix('.').unwrap_or(&n.name).to_string(),
        };
        Ok(())
    }
}

fn var_binary_remote_addr(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    match &s.remote {
        Addr::Inet(a) => match a.ip() {
            std::net::IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
            std::net::IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
        },
        // nginx gives a unix client's address text ("unix:"), so a limit keyed on it
        // still counts unix clients.
        Addr::Unix(_) => s.remote.write_host(out),
    }
    true
}

fn var_remote_addr(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    s.remote.write_host(out);
    true
}

/// Port 0 (a PROXY header's, say) is no port to nginx: empty.
fn var_remote_port(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    if let Some(p) = s.remote.port().filter(|&p| p != 0) {
        let _ = write!(out, "{}", p);
    }
    true
}

fn var_server_addr(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    s.local.write_host(out);
    true
}

fn var_server_port(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    if let Some(p) = s.local.port().filter(|&p| p != 0) {
        let _ = write!(out, "{}", p);
    }
    true
}

fn var_bytes(s: &mut SessionCore, which: usize, out: &mut Vec<u8>) -> bool {
    let _ = write!(out, "{}", if which == 0 { s.sent } else { s.received });
    true
}

fn var_session_time(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    write_msec(out, s.elapsed(crate::core::time::instant()));
    true
}

fn var_status(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    let _ = write!(out, "{:03}", s.status);
    true
}

fn var_connection(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    let _ = write!(out, "{}", s.id);
    true
}

fn var_nginx_version(_: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(crate::NGINX_VERSION.as_bytes());
    true
}

fn var_hostname(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(s.cycle.hostname.as_bytes());
    true
}

fn var_server_name(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(s.srv.core().server_name.as_bytes());
    true
}

fn var_pid(_: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    let _ = write!(out, "{}", crate::core::process::pid());
    true
}

fn var_msec(_: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    let (sec, ms) = crate::core::time::wall();
    let _ = write!(out, "{}.{:03}", sec, ms);
    true
}

fn var_time(_: &mut SessionCore, which: usize, out: &mut Vec<u8>) -> bool {
    if which == 0 {
        crate::core::time::time_iso8601(out)
    } else {
        crate::core::time::time_local(out)
    }
    true
}

fn var_capture(s: &mut SessionCore, n: usize, out: &mut Vec<u8>) -> bool {
    match s.captures.get(n) {
        Some(v) => {
            out.extend_from_slice(v);
            true
        }
        None => false,
    }
}

fn var_proxy_protocol(s: &mut SessionCore, which: usize, out: &mut Vec<u8>) -> bool {
    let Some(h) = &s.proxy_protocol else { return false };
    match which {
        0 => out.extend_from_slice(h.src_addr.as_bytes()),
        // nginx prints a port only when it is not 0.
        1 if h.src_port > 0 => {
            let _ = write!(out, "{}", h.src_port);
        }
        2 => out.extend_from_slice(h.dst_addr.as_bytes()),
        3 if h.dst_port > 0 => {
            let _ = write!(out, "{}", h.dst_port);
        }
        _ => {}
    }
    true
}

/// `$proxy_protocol_tlv_NAME`: `data` is the variable's index, its name tells the TLV.
fn var_proxy_protocol_tlv(s: &mut SessionCore, idx: usize, out: &mut Vec<u8>) -> bool {
    let cycle = s.cycle.clone();
    let Some(name) = cycle.vars.def(idx).and_then(|d| d.name.strip_prefix("proxy_protocol_tlv_")) else {
        return false;
    };
    let Some(h) = &s.proxy_protocol else { return false };
    match crate::stream::proxy_protocol::get_tlv(h, name) {
        Ok(Some(v)) => {
            out.extend_from_slice(&v);
            true
        }
        Ok(None) => false,
        Err(e) => {
            s.log(Level::Error, &e, None);
            false
        }
    }
}

fn var_protocol(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(if s.client.is_udp() { b"UDP" } else { b"TCP" });
    true
}
