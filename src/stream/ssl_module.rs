//! ngx_stream_ssl_module: for now its variables only. sluice does not terminate TLS yet
//! (the ssl phase is where it will), so no session is a TLS one, and each `$ssl_*`
//! variable is "not found" (`-` in a log line), which is what nginx gives for a session
//! that is not TLS. Configurations that log them therefore load and log as under nginx.

use crate::stream::module::{Directive, Module};
use crate::stream::session::SessionCore;
use crate::stream::variables::Variables;

pub struct StreamSsl;

/// nginx 1.22.1's `ngx_stream_ssl_vars`.
pub const VARIABLES: &[&str] = &[
    "ssl_protocol",
    "ssl_cipher",
    "ssl_ciphers",
    "ssl_curve",
    "ssl_curves",
    "ssl_session_id",
    "ssl_session_reused",
    "ssl_server_name",
    "ssl_alpn_protocol",
    "ssl_client_cert",
    "ssl_client_raw_cert",
    "ssl_client_escaped_cert",
    "ssl_client_s_dn",
    "ssl_client_i_dn",
    "ssl_client_serial",
    "ssl_client_fingerprint",
    "ssl_client_verify",
    "ssl_client_v_start",
    "ssl_client_v_end",
    "ssl_client_v_remain",
];

/// A session without TLS: not found.
fn var_ssl(_: &mut SessionCore, _: usize, _: &mut Vec<u8>) -> bool {
    false
}

impl Module for StreamSsl {
    const NAME: &'static str = "stream_ssl";
    type Main = ();
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[];

    fn variables(v: &mut Variables) {
        for (i, name) in VARIABLES.iter().enumerate() {
            v.define(name, var_ssl, i);
        }
    }
}
