//! ngx_stream_set_module: `set $var VALUE` in `server {}`; preaccess phase, in the
//! order written. The value is kept for the session: later uses read it, whatever
//! module made the variable.

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::{Flow, Phase, PhaseRegistry};
use crate::stream::session::{Cx, SessionCore};
use crate::stream::variables::{Complex, VarGet};

pub struct Set_;

#[derive(Default)]
pub struct SetSrv {
    /// (variable index, value), in order.
    cmds: Vec<(usize, Complex)>,
}

fn set(c: &mut SetSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let arg = cmd.arg(0);
    let name = match arg.strip_prefix('$') {
        None => return Err(cmd.err(format!("invalid variable name \"{}\"", arg))),
        Some("") => return Err(cmd.err("invalid variable name \"$\"")),
        Some(n) => n,
    };
    // NGX_STREAM_VAR_WEAK: a variable that map, geo, ... make keeps their getter.
    let idx = cx
        .vars
        .define_changeable(name, var_empty as VarGet, 0, true)
        .ok_or_else(|| cmd.err(format!("the duplicate \"{}\" variable", name)))?;
    let value = Complex::compile(cmd.arg(1), cmd, &mut cx.vars)?;
    c.cmds.push((idx, value));
    Ok(())
}

impl Module for Set_ {
    const NAME: &'static str = "stream_set";
    type Main = ();
    type Srv = SetSrv;
    const DIRECTIVES: &'static [Directive<Self>] =
        &[Directive { name: "set", ctx: Ctx::STREAM_SRV, args: Arity::Take(2), set: Set::Srv(set) }];

    fn postconfiguration(p: &mut PhaseRegistry) {
        p.add(Phase::Preaccess, set_handler);
    }
}

/// A variable only `set` makes reads as empty where no `set` ran.
fn var_empty(_: &mut SessionCore, _: usize, _: &mut Vec<u8>) -> bool {
    true
}

fn set_handler(s: &mut SessionCore, _: &mut Cx<'_>) -> Flow {
    let srv = s.srv.clone();
    for (idx, value) in &srv.confs.set.cmds {
        let mut v = Vec::new();
        if !value.eval(s, &mut v) {
            return Flow::Finalize(crate::stream::session::status::INTERNAL_SERVER_ERROR);
        }
        s.cache_var(*idx, Some(v));
    }
    Flow::Declined
}
