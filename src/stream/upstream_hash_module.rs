//! ngx_stream_upstream_hash_module: `hash KEY [consistent]` in `upstream {}`.
//! The algorithms are in src/upstream/hash.rs.

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::upstream_module::set_method;
use crate::stream::variables::Complex;
use crate::upstream::{Method, UpstreamConf};

pub struct UpstreamHash;

fn hash(u: &mut UpstreamConf, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let key = Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?;
    set_method(u, cmd, cx, || match cmd.args.get(1).map(String::as_str) {
        None => Ok(Method::Hash { consistent: false }),
        Some("consistent") => Ok(Method::Hash { consistent: true }),
        Some(other) => Err(cmd.invalid_parameter(other)),
    })?;
    u.hash_key = Some(key);
    Ok(())
}

impl Module for UpstreamHash {
    const NAME: &'static str = "stream_upstream_hash";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] =
        &[Directive { name: "hash", ctx: Ctx::STREAM_UPS, args: Arity::Between(1, 2), set: Set::Ups(hash) }];
}
