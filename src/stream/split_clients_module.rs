//! ngx_stream_split_clients_module `split_clients KEY $var { PERCENT VALUE; ... }`.
//!
//! Not implemented yet: the module is listed so that its file is the only one to change.

use crate::stream::module::{Directive, Module};

pub struct SplitClients;

impl Module for SplitClients {
    const NAME: &'static str = "stream_split_clients";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];
}
