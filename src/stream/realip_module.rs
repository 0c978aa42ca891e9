//! ngx_stream_realip_module `set_real_ip_from`, `$realip_remote_addr`, `$realip_remote_port`; post-accept phase (takes effect with `listen ... proxy_protocol`).
//!
//! Not implemented yet: the module is listed so that its file is the only one to change.

use crate::stream::module::{Directive, Module};

pub struct StreamRealip;

impl Module for StreamRealip {
    const NAME: &'static str = "stream_realip";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];
}
