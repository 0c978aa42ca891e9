//! ngx_stream_geo_module `geo [$src] $var { ... }` (CIDR and ranges).
//!
//! Not implemented yet: the module is listed so that its file is the only one to change.

use crate::stream::module::{Directive, Module};

pub struct Geo;

impl Module for Geo {
    const NAME: &'static str = "stream_geo";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];
}
