//! ngx_stream_upstream_zone_module: `zone NAME [SIZE]` in `upstream {}`. Accepted; with
//! several workers (master/worker processes) peer state will live in the zone.

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value;
use crate::core::conf::{Cmd, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::upstream::UpstreamConf;

pub struct UpstreamZone;

/// nginx refuses zones smaller than 8 pages.
const MIN_ZONE: usize = 8 * 4096;

fn zone(u: &mut UpstreamConf, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let name = cmd.arg(0).to_string();
    if name.is_empty() {
        return Err(cmd.err("invalid zone name \"\""));
    }
    // A second `zone` in one upstream replaces the first, as in nginx.
    let size = match cmd.args.get(1) {
        None => None,
        Some(sz) => {
            let n = value::parse_size(sz).ok_or_else(|| cmd.err(format!("invalid zone size \"{}\"", sz)))?;
            if n < MIN_ZONE {
                return Err(cmd.err(format!("zone \"{}\" is too small", name)));
            }
            Some(n)
        }
    };
    cx.add_zone(&name, size, cmd, "upstream")?;
    u.zone = Some(name);
    Ok(())
}

impl Module for UpstreamZone {
    const NAME: &'static str = "stream_upstream_zone";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] =
        &[Directive { name: "zone", ctx: Ctx::STREAM_UPS, args: Arity::Between(1, 2), set: Set::Ups(zone) }];
}
