//! ngx_stream_upstream_random_module: `random [two [least_conn]]` in `upstream {}`.
//! The algorithm is in src/upstream/random.rs.

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::upstream_module::set_method;
use crate::upstream::{Method, UpstreamConf};

pub struct UpstreamRandom;

fn random(u: &mut UpstreamConf, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    set_method(u, cmd, cx, || {
        let two = match cmd.args.first().map(String::as_str) {
            None => false,
            Some("two") => true,
            Some(other) => return Err(cmd.invalid_parameter(other)),
        };
        if let Some(m) = cmd.args.get(1) {
            if m != "least_conn" {
                return Err(cmd.invalid_parameter(m));
            }
        }
        Ok(Method::Random { two })
    })
}

impl Module for UpstreamRandom {
    const NAME: &'static str = "stream_upstream_random";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] =
        &[Directive { name: "random", ctx: Ctx::STREAM_UPS, args: Arity::Between(0, 2), set: Set::Ups(random) }];
}
