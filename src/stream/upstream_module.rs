//! ngx_stream_upstream_module: `upstream NAME { server ADDRESS [weight=N] [max_fails=N]
//! [fail_timeout=T] [max_conns=N] [backup] [down]; zone NAME [SIZE]; }`.
//! The balancing methods' directives come with their balancers (src/upstream/).

use std::time::Duration;

use crate::core::addr::parse_url;
use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value;
use crate::core::conf::{Cmd, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::module::{BlockKind, Directive, Module, Set};
use crate::stream::session::{write_msec, SessionCore, UpstreamState};
use crate::stream::variables::Variables;
use crate::upstream::{Method, UpstreamConf, UpstreamServer};

pub struct Upstream;

/// `server ADDRESS [params]`: parameters are checked before the address, as nginx does.
fn server(u: &mut UpstreamConf, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    let url = cmd.arg(0);
    let mut s = UpstreamServer::new(url.to_string(), Vec::new());
    for a in &cmd.args[1..] {
        let bad = || cmd.err(format!("invalid parameter \"{}\"", a));
        if let Some(v) = a.strip_prefix("weight=") {
            s.weight = value::parse_number(v).filter(|w| *w > 0 && *w <= i32::MAX as u64).ok_or_else(bad)? as u32;
        } else if let Some(v) = a.strip_prefix("max_fails=") {
            s.max_fails = value::parse_number(v).filter(|w| *w <= i32::MAX as u64).ok_or_else(bad)? as u32;
        } else if let Some(v) = a.strip_prefix("max_conns=") {
            s.max_conns = value::parse_number(v).filter(|w| *w <= i32::MAX as u64).ok_or_else(bad)? as u32;
        } else if let Some(v) = a.strip_prefix("fail_timeout=") {
            s.fail_timeout = Duration::from_secs(value::parse_time(v, true).ok_or_else(bad)?);
        } else if a == "backup" {
            if !u.method.allows_backup() {
                return Err(cmd.err(format!("balancing method does not support parameter \"{}\"", a)));
            }
            s.backup = true;
        } else if a == "down" {
            s.down = true;
        } else {
            return Err(bad());
        }
    }
    let parsed = parse_url(url, false, true).map_err(|e| cmd.err(format!("{} in upstream \"{}\"", e, url)))?;
    if parsed.addrs.is_empty() {
        return Err(cmd.err(format!("no port in upstream \"{}\"", url)));
    }
    s.addrs = parsed.addrs;
    u.servers.push(s);
    Ok(())
}

/// Set an upstream's balancing method (`hash`, `least_conn`, `random`).
pub fn set_method(u: &mut UpstreamConf, cmd: &Cmd, cx: &ConfCx, m: Method) {
    if u.method_set {
        cx.warn(cmd, "load balancing method redefined");
    }
    u.method_set = true;
    u.method = m;
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
    ];

    fn variables(v: &mut Variables) {
        v.define("upstream_addr", var_upstream, 0);
        v.define("upstream_bytes_sent", var_upstream, 1);
        v.define("upstream_bytes_received", var_upstream, 2);
        v.define("upstream_connect_time", var_upstream, 3);
        v.define("upstream_first_byte_time", var_upstream, 4);
        v.define("upstream_session_time", var_upstream, 5);
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
            0 => out.extend_from_slice(st.peer.as_deref().unwrap_or("").as_bytes()),
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
