//! ngx_stream_upstream_module: `upstream NAME { server ADDRESS [weight=N] [max_fails=N]
//! [fail_timeout=T] [max_conns=N] [backup] [down]; zone NAME [SIZE]; }`.
//! The balancing methods' directives come with their balancers (src/upstream/).

use std::rc::Rc;
use std::time::Duration;

use crate::core::addr::parse_url;
use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value;
use crate::core::conf::{Cmd, ConfError, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::module::{BlockKind, Directive, Module, Set};
use crate::stream::resolver::ResolverConf;
use crate::stream::session::{write_msec, SessionCore, UpstreamState};
use crate::stream::variables::Variables;
use crate::upstream::{Method, ResolveSpec, UpstreamConf, UpstreamServer};

pub struct Upstream;

/// `server ADDRESS [params]`: parameters are checked before the address, as nginx does.
fn server(u: &mut UpstreamConf, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    let url = cmd.arg(0);
    let mut s = UpstreamServer::new(url.to_string(), Vec::new());
    let (mut resolve, mut service) = (false, None);
    for a in &cmd.args[1..] {
        let bad = || cmd.err(format!("invalid parameter \"{}\"", a));
        if let Some(v) = a.strip_prefix("weight=") {
            // nginx's ngx_atoi: any number from 1 to 2^63 - 1.
            s.weight = value::parse_number(v).filter(|w| (1..=i64::MAX as u64).contains(w)).ok_or_else(bad)?;
        } else if let Some(v) = a.strip_prefix("max_fails=") {
            s.max_fails = value::parse_number(v).ok_or_else(bad)?.min(u64::from(u32::MAX)) as u32;
        } else if let Some(v) = a.strip_prefix("max_conns=") {
            s.max_conns = value::parse_number(v).ok_or_else(bad)?.min(u64::from(u32::MAX)) as u32;
        } else if let Some(v) = a.strip_prefix("fail_timeout=") {
            s.fail_timeout = Duration::from_secs(value::parse_time(v, true).ok_or_else(bad)?);
        } else if a == "backup" {
            if !u.method.allows_backup() {
                return Err(cmd.err(format!("balancing method does not support parameter \"{}\"", a)));
            }
            s.backup = true;
        } else if a == "down" {
            s.down = true;
        } else if a == "resolve" {
            resolve = true;
        } else if let Some(v) = a.strip_prefix("service=") {
            if v.is_empty() {
                return Err(cmd.err("service is empty"));
            }
            service = Some(v.to_string());
            s.service_arg = Some(v.to_string());
        } else {
            return Err(bad());
        }
    }
    if service.is_some() && !resolve {
        return Err(cmd.err(format!("service upstream \"{}\" requires \"resolve\" parameter", url)));
    }
    let parsed = parse_url(url, false, !resolve).map_err(|e| cmd.err(format!("{} in upstream \"{}\"", e, url)))?;
    let unix = matches!(parsed.addrs.first(), Some(crate::core::addr::Addr::Unix(_)));
    if parsed.port.is_none() && service.is_none() && !unix {
        return Err(cmd.err(format!("no port in upstream \"{}\"", url)));
    }
    if service.is_some() && parsed.port.is_some() {
        return Err(cmd.err(format!("service upstream \"{}\" may not have port", url)));
    }
    if service.is_some() && parsed.literal {
        return Err(cmd.err(format!("service upstream \"{}\" requires domain name", url)));
    }
    if resolve && !parsed.literal {
        // Looked up at run time (an address needs no resolving: a static server).
        let service = service.map(|v| {
            if v.contains('.') {
                format!("{}.{}", v, parsed.host)
            } else {
                format!("_{}._tcp.{}", v, parsed.host)
            }
        });
        s.resolve = Some(ResolveSpec { host: parsed.host, port: parsed.port.unwrap_or(0), service });
    } else {
        s.addrs = parsed.addrs;
    }
    u.servers.push(s);
    Ok(())
}

/// `resolver` and `resolver_timeout` in an upstream: used by its `resolve` servers.
fn ups_resolver(u: &mut UpstreamConf, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    if u.resolver.is_some() {
        return Err(cmd.duplicate());
    }
    let conf = ResolverConf::parse(&cmd.args).map_err(|e| cmd.err(e))?;
    u.resolver = Some(Rc::new(conf));
    Ok(())
}

fn ups_resolver_timeout(u: &mut UpstreamConf, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    if u.resolver_timeout.is_some() {
        return Err(cmd.duplicate());
    }
    u.resolver_timeout = Some(value::msec(cmd)?);
    Ok(())
}

/// Resolve an implicit upstream that no `upstream {}` block took over
/// (`ngx_stream_upstream_init_round_robin` for an implicit group).
fn resolve_implicit(u: &mut UpstreamConf) -> ConfResult {
    let file = u.file.clone().unwrap_or_else(|| Rc::from(""));
    let at = |msg: String| ConfError::bare(format!("{} in {}:{}", msg, file, u.line));
    // nginx checks the port first, then resolves the host.
    let unresolved = parse_url(&u.name, false, false).map_err(|e| at(format!("{} in upstream \"{}\"", e, u.name)))?;
    let is_unix = crate::core::addr::strip_unix(&u.name).is_some();
    if unresolved.port.is_none() && !is_unix {
        return Err(at(format!("no port in upstream \"{}\"", unresolved.host)));
    }
    let parsed =
        parse_url(&u.name, false, true).map_err(|e| at(format!("{} in upstream \"{}\"", e, unresolved.host)))?;
    u.servers.push(UpstreamServer::new(u.name.clone(), parsed.addrs));
    Ok(())
}

/// After the stream block: an upstream with `resolve` servers needs a zone and a
/// resolver (its own or the stream block's), as nginx's `ngx_stream_upstream_init_round_robin`.
pub fn check_resolvable(
    u: &mut UpstreamConf,
    resolver: Option<&Rc<ResolverConf>>,
    timeout: Option<Duration>,
) -> Result<(), String> {
    if u.implicit || !u.servers.iter().any(|s| s.resolve.is_some()) {
        return Ok(());
    }
    let at = format!("{}:{}", u.file.as_deref().unwrap_or(""), u.line);
    if u.zone.is_none() {
        return Err(format!(
            "resolving names at run time requires upstream \"{}\" in {} to be in shared memory",
            u.name, at
        ));
    }
    if u.resolver.is_none() {
        u.resolver = resolver.cloned();
    }
    if u.resolver.is_none() {
        return Err(format!("no resolver defined to resolve names at run time in upstream \"{}\" in {}", u.name, at));
    }
    if u.resolver_timeout.is_none() {
        u.resolver_timeout = Some(timeout.unwrap_or(Duration::from_secs(30)));
    }
    Ok(())
}

/// Set an upstream's balancing method (`hash`, `least_conn`, `random`): nginx warns
/// when one was set before, ahead of reading the new one's parameters (after the
/// `hash` key), so the warning comes even when they are wrong.
pub fn set_method(u: &mut UpstreamConf, cmd: &Cmd, cx: &ConfCx, m: impl FnOnce() -> ConfResult<Method>) -> ConfResult {
    if u.method_set {
        cx.warn(cmd, "load balancing method redefined");
    }
    u.method = m()?;
    u.method_set = true;
    Ok(())
}

impl Module for Upstream {
    const NAME: &'static str = "stream_upstream";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive {
            name: "upstream",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Block(1, 1),
            set: Set::Block(BlockKind::Upstream),
        },
        Directive { name: "server", ctx: Ctx::STREAM_UPS, args: Arity::OneOrMore, set: Set::Ups(server) },
        Directive { name: "resolver", ctx: Ctx::STREAM_UPS, args: Arity::OneOrMore, set: Set::Ups(ups_resolver) },
        Directive {
            name: "resolver_timeout",
            ctx: Ctx::STREAM_UPS,
            args: Arity::Take(1),
            set: Set::Ups(ups_resolver_timeout),
        },
    ];

    /// `ngx_stream_upstream_init_main_conf`: each upstream's peers, in the order the
    /// upstreams were made (an implicit one's address resolved here).
    fn init_main(cx: &mut ConfCx) -> ConfResult {
        let (resolver, timeout) = cx.stream_resolver.clone();
        for u in &mut cx.upstreams {
            if u.implicit {
                if u.servers.is_empty() {
                    resolve_implicit(u)?;
                }
            } else {
                // ngx_stream_upstream_init_round_robin: backup servers alone are no servers.
                if !u.servers.is_empty() && u.servers.iter().all(|s| s.backup) {
                    let file = u.file.as_deref().unwrap_or("");
                    return Err(ConfError::bare(format!(
                        "no servers in upstream \"{}\" in {}:{}",
                        u.name, file, u.line
                    )));
                }
                check_resolvable(u, resolver.as_ref(), timeout).map_err(ConfError::bare)?;
            }
            crate::upstream::hash::check_ring_size(u).map_err(ConfError::bare)?;
        }
        Ok(())
    }

    fn variables(v: &mut Variables) {
        v.define_nocacheable("upstream_addr", var_upstream, 0);
        v.define_nocacheable("upstream_bytes_sent", var_upstream, 1);
        v.define_nocacheable("upstream_bytes_received", var_upstream, 2);
        v.define_nocacheable("upstream_connect_time", var_upstream, 3);
        v.define_nocacheable("upstream_first_byte_time", var_upstream, 4);
        v.define_nocacheable("upstream_session_time", var_upstream, 5);
    }
}

/// `$upstream_*`: one value per tried peer, joined by ", "; not found before any try.
fn var_upstream(s: &mut SessionCore, which: usize, out: &mut Vec<u8>) -> bool {
    use std::io::Write;
    if s.upstream_states.is_empty() {
        return false;
    }
    let time = |out: &mut Vec<u8>, t: Option<Duration>| match t {
        Some(d) => write_msec(out, d),
        None => out.push(b'-'),
    };
    for (i, st) in s.upstream_states.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        let st: &UpstreamState = st;
        match which {
            // (A unix path's bytes that are not UTF-8 are stand-ins in the name.)
            0 => out.extend_from_slice(&crate::core::conf::parser::text_to_bytes(st.peer.as_deref().unwrap_or(""))),
            1 => {
                let _ = write!(out, "{}", st.bytes_sent);
            }
            2 => {
                let _ = write!(out, "{}", st.bytes_received);
            }
            3 => time(out, st.connect_time),
            4 => time(out, st.first_byte_time),
            _ => time(out, st.response_time),
        }
    }
    true
}
