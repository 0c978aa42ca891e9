//! ngx_stream_pass_module `pass ADDRESS` hands the connection to another listener; content phase.
//!
//! Not implemented yet: the module is listed so that its file is the only one to change.

use crate::stream::module::{Directive, Module};

pub struct Pass;

impl Module for Pass {
    const NAME: &'static str = "stream_pass";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];
}
