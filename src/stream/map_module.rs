//! ngx_stream_map_module `map $src $var { ... }`, `map_hash_*`.
//!
//! Not implemented yet: the module is listed so that its file is the only one to change.

use crate::stream::module::{Directive, Module};

pub struct Map;

impl Module for Map {
    const NAME: &'static str = "stream_map";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];
}
