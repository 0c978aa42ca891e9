//! ngx_stream_upstream_zone_module: `zone NAME [SIZE]` in `upstream {}`. Accepted; with
//! several workers (master/worker processes) peer state will live in the zone.

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value;
use crate::stream::module::{Directive, Module, Set};

pub struct UpstreamZone;

impl Module for UpstreamZone {
    const NAME: &'static str = "stream_upstream_zone";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[Directive {
        name: "zone",
        ctx: Ctx::STREAM_UPS,
        args: Arity::Between(1, 2),
        set: Set::<Self>::Ups(|_, cmd, _| {
            if let Some(sz) = cmd.args.get(1) {
                value::parse_size(sz).ok_or_else(|| cmd.err(format!("invalid zone size \"{}\"", sz)))?;
            }
            Ok(())
        }),
    }];
}
