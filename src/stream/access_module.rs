//! ngx_stream_access_module `allow`, `deny`; access phase.
//!
//! Not implemented yet: the module is listed so that its file is the only one to change.

use crate::stream::module::{Directive, Module};

pub struct Access;

impl Module for Access {
    const NAME: &'static str = "stream_access";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];
}
