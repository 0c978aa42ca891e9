//! ngx_stream_upstream_least_conn_module: `least_conn` in `upstream {}`.
//! The algorithm is in src/upstream/least_conn.rs.

use crate::core::conf::directive::{Arity, Ctx};
use crate::stream::module::{Directive, Module, Set};
use crate::stream::upstream_module::set_method;
use crate::upstream::Method;

pub struct UpstreamLeastConn;

impl Module for UpstreamLeastConn {
    const NAME: &'static str = "stream_upstream_least_conn";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[Directive {
        name: "least_conn",
        ctx: Ctx::STREAM_UPS,
        args: Arity::NoArgs,
        set: Set::<Self>::Ups(|u, cmd, cx| set_method(u, cmd, cx, || Ok(Method::LeastConn))),
    }];
}
