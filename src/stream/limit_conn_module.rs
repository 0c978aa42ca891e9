//! ngx_stream_limit_conn_module `limit_conn_zone`, `limit_conn`, `limit_conn_log_level`, `limit_conn_dry_run`, `$limit_conn_status`; preaccess phase.
//!
//! Not implemented yet: the module is listed so that its file is the only one to change.

use crate::stream::module::{Directive, Module};

pub struct LimitConn;

impl Module for LimitConn {
    const NAME: &'static str = "stream_limit_conn";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];
}
