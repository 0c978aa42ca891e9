//! ngx_stream_realip_module: `set_real_ip_from` (CIDR, `unix:`, or a name resolving to
//! addresses), `$realip_remote_addr`, `$realip_remote_port`; post-accept phase. A client
//! connecting from a trusted address through `listen ... proxy_protocol` takes the
//! address and port of its PROXY protocol header as its own.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::core::addr::{resolve_host, Addr};
use crate::core::cidr::{self, Cidr};
use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::{Flow, Phase, PhaseRegistry};
use crate::stream::session::{Cx, SessionCore};
use crate::stream::variables::Variables;

pub struct StreamRealip;

#[derive(Default)]
pub struct RealipSrv {
    from: Vec<Cidr>,
}

fn set_real_ip_from(c: &mut RealipSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let v = cmd.arg(0);
    if v == "unix:" {
        c.from.push(Cidr::Unix);
        return Ok(());
    }
    if let Some((m, low_bits)) = cidr::parse(v) {
        if low_bits {
            cx.warn(cmd, &format!("low address bits of {} are meaningless", v));
        }
        c.from.push(m);
        return Ok(());
    }
    let addrs = resolve_host(v, 0).map_err(|e| cmd.err(format!("{} in set_real_ip_from \"{}\"", e, v)))?;
    for a in addrs {
        if let Addr::Inet(sa) = a {
            c.from.push(Cidr::host(sa.ip()));
        }
    }
    Ok(())
}

impl Module for StreamRealip {
    const NAME: &'static str = "stream_realip";
    type Main = ();
    type Srv = RealipSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[Directive {
        name: "set_real_ip_from",
        ctx: Ctx::MAIN_SRV,
        args: Arity::Take(1),
        set: Set::Srv(set_real_ip_from),
    }];

    fn variables(v: &mut Variables) {
        v.define("realip_remote_addr", var_realip_remote_addr, 0);
        v.define("realip_remote_port", var_realip_remote_port, 0);
    }

    fn merge_srv(p: &RealipSrv, c: &mut RealipSrv, _: &mut ConfCx) -> ConfResult {
        if c.from.is_empty() {
            c.from = p.from.clone();
        }
        Ok(())
    }

    fn postconfiguration(p: &mut PhaseRegistry) {
        p.add(Phase::PostAccept, realip_handler);
    }
}

/// `ngx_parse_addr` of a PROXY protocol address.
fn parse_ip(text: &str) -> Option<IpAddr> {
    crate::core::addr::parse_addr(text.as_bytes())
}

fn realip_handler(s: &mut SessionCore, _: &mut Cx<'_>) -> Flow {
    let srv = s.srv.clone();
    let from = &srv.confs.realip.from;
    if from.is_empty() {
        return Flow::Declined;
    }
    let Some(h) = &s.proxy_protocol else { return Flow::Declined };
    if !cidr::matches_any(from, &s.remote) {
        return Flow::Declined;
    }
    let Some(ip) = parse_ip(&h.src_addr) else { return Flow::Declined };
    // From here on the session's client is the one the header names (log lines,
    // $remote_addr, access rules, limit_conn keys); the socket's peer stays reachable
    // through $realip_remote_addr.
    // Kept, as nginx's realip context keeps it: the socket's peer may be gone by the
    // time a variable asks (a client that reset the connection).
    let peer = std::mem::replace(&mut s.remote, Addr::Inet(SocketAddr::new(ip, h.src_port)));
    s.realip_peer = Some(peer);
    Flow::Declined
}

/// The connection's own peer: what the client address was before realip replaced it.
fn connection_peer(s: &SessionCore) -> Addr {
    s.realip_peer.clone().unwrap_or_else(|| s.remote.clone())
}

fn var_realip_remote_addr(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    connection_peer(s).write_host(out);
    true
}

fn var_realip_remote_port(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    if let Some(p) = connection_peer(s).port().filter(|p| *p > 0) {
        let _ = write!(out, "{}", p);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_addresses() {
        assert_eq!(parse_ip("192.0.2.1"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(parse_ip("2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_ip("example.com"), None);
    }
}
