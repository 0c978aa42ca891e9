//! ngx_stream_pass_module (nginx 1.25.5): `pass ADDRESS`; content phase. The accepted
//! connection is handed to the listening socket of ADDRESS in this configuration and
//! starts there as a new session of that socket's server (the worker does the
//! hand-over: see `Worker::pass`). nginx's "cannot pass connection with preread data"
//! cannot happen here: the preread phase only peeks and the PROXY protocol reader takes
//! no more than the header, so every byte the client sent is still in the socket for
//! the next server.

use crate::core::addr::{parse_url, Addr};
use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfError, ConfResult, Level};
use crate::core::timer::TimerId;
use crate::stream::conf::ConfCx;
use crate::stream::content::{Content, ContentSession, Ready};
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::Flow;
use crate::stream::session::{status, Cx, SessionCore, Side};
use crate::stream::variables::Complex;

pub struct Pass;

/// nginx stops a connection passed around more than this many times.
const MAX_PASSES: u8 = 10;

enum Target {
    Addr(Addr),
    Value(Complex),
}

#[derive(Default)]
pub struct PassSrv {
    target: Option<Target>,
}

/// `ngx_parse_url` with `no_resolve`: the address, or what to say about the text.
enum Url {
    Ok(Addr),
    Err(&'static str),
    NoAddresses,
    NoPort,
}

fn parse(url: &str) -> Url {
    let u = match parse_url(url, false, false) {
        Ok(u) => u,
        Err(e) => return Url::Err(e),
    };
    if !u.literal {
        // A name is not resolved here: nginx finds no address in it.
        return Url::NoAddresses;
    }
    match u.addrs.into_iter().next() {
        Some(a) => Url::Ok(a),
        None => Url::NoPort,
    }
}

fn set_pass(c: &mut PassSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if c.target.is_some() {
        return Err(cmd.duplicate());
    }
    cx.handler = Some(new_session);
    let url = cmd.arg(0);
    let v = Complex::compile(url, cmd, &mut cx.vars)?;
    if v.has_variables() {
        c.target = Some(Target::Value(v));
        return Ok(());
    }
    match parse(url) {
        Url::Ok(a) => c.target = Some(Target::Addr(a)),
        Url::Err(e) => return Err(cmd.err(format!("{} in \"{}\" of the \"pass\" directive", e, url))),
        Url::NoAddresses => return Err(ConfError::directive(cmd, "has no addresses")),
        Url::NoPort => return Err(ConfError::directive(cmd, "has no port")),
    }
    Ok(())
}

impl Module for Pass {
    const NAME: &'static str = "stream_pass";
    type Main = ();
    type Srv = PassSrv;
    const DIRECTIVES: &'static [Directive<Self>] =
        &[Directive { name: "pass", ctx: Ctx::STREAM_SRV, args: Arity::Take(1), set: Set::Srv(set_pass) }];
}

/// The content handler: it only names the address; the worker hands the connection
/// over right after `start` (or the session ends with 500).
struct PassSession;

fn new_session(_: &mut SessionCore) -> ContentSession {
    ContentSession::Boxed(Box::new(PassSession))
}

/// `ngx_stream_pass_handler` up to the listener lookup, which the worker does.
fn target(s: &mut SessionCore) -> Option<Addr> {
    if s.client.is_udp() {
        s.log(Level::Error, "cannot pass udp connection", None);
        return None;
    }
    let srv = s.srv.clone();
    let addr = match srv.confs.pass.target.as_ref()? {
        Target::Addr(a) => a.clone(),
        Target::Value(v) => {
            let mut out = Vec::new();
            v.eval(s, &mut out);
            let url = crate::core::conf::parser::bytes_to_text(&out);
            match parse(&url) {
                Url::Ok(a) => a,
                Url::Err(e) => {
                    s.log(Level::Error, &format!("{} in pass \"{}\"", e, url), None);
                    return None;
                }
                Url::NoAddresses => {
                    s.log(Level::Error, &format!("no addresses in pass \"{}\"", url), None);
                    return None;
                }
                Url::NoPort => {
                    s.log(Level::Error, &format!("no port in pass \"{}\"", url), None);
                    return None;
                }
            }
        }
    };
    if s.passes >= MAX_PASSES {
        s.log(Level::Error, "stream pass cycle", None);
        return None;
    }
    Some(addr)
}

impl Content for PassSession {
    fn start(&mut self, s: &mut SessionCore, _: &mut Cx<'_>) -> Flow {
        s.action = Some("passing connection to port");
        match target(s) {
            Some(a) => {
                s.pass_to = Some(a);
                Flow::Again
            }
            None => Flow::Finalize(status::INTERNAL_SERVER_ERROR),
        }
    }

    fn on_event(&mut self, _: &mut SessionCore, _: Side, _: Ready, _: &mut Cx<'_>) -> Flow {
        Flow::Again
    }

    fn on_timeout(&mut self, _: &mut SessionCore, _: TimerId, _: &mut Cx<'_>) -> Flow {
        Flow::Again
    }

    fn close(&mut self, _: &mut SessionCore, _: &mut Cx<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(matches!(parse("127.0.0.1:8080"), Url::Ok(Addr::Inet(_))));
        assert!(matches!(parse("[::1]:8080"), Url::Ok(Addr::Inet(_))));
        assert!(matches!(parse("unix:/tmp/x.sock"), Url::Ok(Addr::Unix(_))));
        assert!(matches!(parse("localhost:8080"), Url::NoAddresses));
        assert!(matches!(parse("8080"), Url::NoAddresses));
        assert!(matches!(parse("127.0.0.1"), Url::NoPort));
        assert!(matches!(parse("[::1]"), Url::NoPort));
        assert!(matches!(parse("127.0.0.1:0"), Url::Err("invalid port")));
        assert!(matches!(parse("127.0.0.1:99999"), Url::Err("invalid port")));
    }
}
