//! ngx_stream_return_module: `return VALUE` — send the value to the client and close.
//! Content phase.

use std::io::{self, Write};

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfResult};
use crate::core::timer::TimerId;
use crate::stream::conf::ConfCx;
use crate::stream::content::{Content, ContentSession, Ready};
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::Flow;
use crate::stream::session::{session_token, status, Cx, SessionCore, Side};
use crate::stream::variables::Complex;

pub struct Return;

#[derive(Default)]
pub struct ReturnSrv {
    pub text: Option<Complex>,
}

fn set_return(c: &mut ReturnSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if c.text.is_some() {
        return Err(cmd.duplicate());
    }
    c.text = Some(Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?);
    cx.handler = Some(new_session);
    Ok(())
}

impl Module for Return {
    const NAME: &'static str = "stream_return";
    type Main = ();
    type Srv = ReturnSrv;
    const DIRECTIVES: &'static [Directive<Self>] =
        &[Directive { name: "return", ctx: Ctx::STREAM_SRV, args: Arity::Take(1), set: Set::Srv(set_return) }];
}

/// nginx gives a `return` 5 seconds to drain to a slow client.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

struct ReturnSession {
    out: Vec<u8>,
    pos: usize,
    timer: Option<TimerId>,
}

fn new_session(_: &mut SessionCore) -> ContentSession {
    ContentSession::Boxed(Box::new(ReturnSession { out: Vec::new(), pos: 0, timer: None }))
}

impl ReturnSession {
    fn send(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        while self.pos < self.out.len() {
            match s.client.write(&self.out[self.pos..]) {
                Ok(n) => {
                    self.pos += n;
                    s.sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(f) = s.watch_client(cx.registry) {
                        return f;
                    }
                    // 5 s from now, each time the socket fills: a slow reader that keeps
                    // reading gets the whole text (ngx_stream_return_write_handler adds
                    // its timer again on every write event).
                    cx.timers.set(&mut self.timer, cx.now + SEND_TIMEOUT, session_token(s.key, Side::Client));
                    return Flow::Again;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let call = if s.client.is_udp() { "sendmsg() failed" } else { "writev() failed" };
                    s.connection_error(Side::Client, &e, call);
                    return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
                }
            }
        }
        Flow::Finalize(status::OK)
    }
}

impl Content for ReturnSession {
    fn start(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        s.action = Some("returning text");
        let srv = s.srv.clone();
        if let Some(t) = &srv.confs.return_.text {
            if !t.eval(s, &mut self.out) {
                return Flow::Finalize(status::INTERNAL_SERVER_ERROR);
            }
        }
        self.send(s, cx)
    }

    fn on_event(&mut self, s: &mut SessionCore, side: Side, ready: Ready, cx: &mut Cx<'_>) -> Flow {
        if side == Side::Client && ready.writable {
            return self.send(s, cx);
        }
        Flow::Again
    }

    fn on_timeout(&mut self, s: &mut SessionCore, _: TimerId, _: &mut Cx<'_>) -> Flow {
        self.timer = None;
        let e = io::Error::from_raw_os_error(libc::ETIMEDOUT);
        s.connection_error(Side::Client, &e, "connection timed out");
        Flow::Finalize(status::OK)
    }

    /// A return session's read handler is the phase engine's: it runs the content
    /// phase again, and the new send meets the connection in error (nginx's write
    /// filter): 500, and nothing logged.
    fn on_shutdown_timeout(&mut self, _: &mut SessionCore) -> Flow {
        Flow::Finalize(status::INTERNAL_SERVER_ERROR)
    }

    fn close(&mut self, _: &mut SessionCore, cx: &mut Cx<'_>) {
        cx.timers.clear(&mut self.timer);
    }
}
