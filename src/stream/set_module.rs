//! ngx_stream_set_module `set $var VALUE`; preaccess phase.
//!
//! Not implemented yet: the module is listed so that its file is the only one to change.

use crate::stream::module::{Directive, Module};

pub struct Set_;

impl Module for Set_ {
    const NAME: &'static str = "stream_set";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];
}
