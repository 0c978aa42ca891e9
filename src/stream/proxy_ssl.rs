//! The proxy module's TLS to upstreams (`proxy_ssl` and its directives, nginx 1.22.1):
//! a client context per server, made at merge as `ngx_stream_proxy_set_ssl` makes it,
//! and the handshake after connect (`ngx_stream_proxy_ssl_init_connection`): the
//! server name, a session kept per peer to resume, the certificate check.

use std::rc::Rc;

use openssl::ssl::SslContext;

use crate::core::conf::value::{self, Setting};
use crate::core::conf::{Cmd, ConfError, ConfResult};
use crate::core::ssl::{self as tls, stack_text};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::session::SessionCore;
use crate::stream::ssl_module::{self as ssl_mod, protocol_bits, DEFAULT_PROTOCOLS};
use crate::stream::variables::Complex;

#[derive(Default)]
pub struct ProxySsl {
    enable: Setting<bool>,
    session_reuse: Setting<bool>,
    protocols: u32,
    ciphers: Setting<String>,
    name: Setting<Option<Complex>>,
    server_name: Setting<bool>,
    verify: Setting<bool>,
    verify_depth: Setting<u64>,
    trusted_certificate: Setting<String>,
    crl: Setting<String>,
    certificate: Setting<Option<(String, Option<Complex>)>>,
    certificate_key: Setting<Option<(String, Option<Complex>)>>,
    /// The certificate and key named with variables (evaluated per connection), and
    /// the directory relative names start from.
    cert_values: Option<(Complex, Complex)>,
    conf_prefix: String,
    passwords: Option<Rc<Vec<Vec<u8>>>>,
    conf_commands: Option<Vec<(String, String)>>,
    /// The client context, made at merge when `proxy_ssl on`.
    pub ctx: Option<SslContext>,
}

impl ProxySsl {
    pub fn passwords(&self) -> Option<&[Vec<u8>]> {
        self.passwords.as_deref().map(|v| &v[..])
    }

    pub fn session_reuse(&self) -> bool {
        self.session_reuse.get()
    }

    pub fn verify(&self) -> bool {
        self.verify.get()
    }
}

/// The proxy module's ssl directives, as a module of their own (their settings are
/// `SrvConfs::proxy_ssl`).
pub struct ProxySslModule;

const fn d(
    name: &'static str,
    args: crate::core::conf::directive::Arity,
    f: fn(&mut ProxySsl, &Cmd, &mut ConfCx) -> ConfResult,
) -> Directive<ProxySslModule> {
    Directive { name, ctx: crate::core::conf::directive::Ctx::MAIN_SRV, args, set: Set::Srv(f) }
}

impl Module for ProxySslModule {
    const NAME: &'static str = "stream_proxy_ssl";
    type Main = ();
    type Srv = ProxySsl;
    const DIRECTIVES: &'static [Directive<Self>] = {
        use crate::core::conf::directive::Arity::{Flag, OneOrMore, Take};
        &[
            d("proxy_ssl", Flag, |c, cmd, _| c.enable.set_parsed(cmd, value::flag)),
            d("proxy_ssl_session_reuse", Flag, |c, cmd, _| c.session_reuse.set_parsed(cmd, value::flag)),
            d("proxy_ssl_protocols", OneOrMore, |c, cmd, cx| protocol_bits(&mut c.protocols, cmd, cx)),
            d("proxy_ssl_ciphers", Take(1), |c, cmd, _| c.ciphers.set_parsed(cmd, |c| Ok(c.arg(0).to_string()))),
            d("proxy_ssl_name", Take(1), |c, cmd, cx| {
                c.name.set_parsed(cmd, |cmd| Ok(Some(Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?)))
            }),
            d("proxy_ssl_server_name", Flag, |c, cmd, _| c.server_name.set_parsed(cmd, value::flag)),
            d("proxy_ssl_verify", Flag, |c, cmd, _| c.verify.set_parsed(cmd, value::flag)),
            d("proxy_ssl_verify_depth", Take(1), |c, cmd, _| c.verify_depth.set_parsed(cmd, value::number)),
            d("proxy_ssl_trusted_certificate", Take(1), |c, cmd, _| {
                c.trusted_certificate.set_parsed(cmd, |c| Ok(c.arg(0).to_string()))
            }),
            d("proxy_ssl_crl", Take(1), |c, cmd, _| c.crl.set_parsed(cmd, |c| Ok(c.arg(0).to_string()))),
            d("proxy_ssl_certificate", Take(1), |c, cmd, cx| c.certificate.set_parsed(cmd, |cmd| name(cmd, cx))),
            d("proxy_ssl_certificate_key", Take(1), |c, cmd, cx| {
                c.certificate_key.set_parsed(cmd, |cmd| name(cmd, cx))
            }),
            d("proxy_ssl_password_file", Take(1), |c, cmd, cx| {
                if c.passwords.is_some() {
                    return Err(cmd.duplicate());
                }
                c.passwords = Some(ssl_mod::read_password_file(cmd, cx)?);
                Ok(())
            }),
            d("proxy_ssl_conf_command", Take(2), |c, cmd, _| {
                c.conf_commands.get_or_insert_with(Vec::new).push((cmd.arg(0).to_string(), cmd.arg(1).to_string()));
                Ok(())
            }),
        ]
    };

    fn merge_srv(p: &ProxySsl, c: &mut ProxySsl, cx: &mut ConfCx) -> ConfResult {
        merge(p, c, cx)
    }
}

fn name(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult<Option<(String, Option<Complex>)>> {
    ssl_mod::certificate_name(cmd, cx).map(Some)
}

/// The full names of a certificate and key named with variables, for this session;
/// none when the certificate's value is empty: then no client certificate is sent
/// (`ngx_stream_proxy_ssl_certificate`, the idiom of a map giving some upstreams one).
pub fn certificate_names(s: &mut SessionCore) -> Option<(String, String)> {
    let srv = s.srv.clone();
    let c = &srv.confs.proxy_ssl;
    let (cert, key) = c.cert_values.as_ref()?;
    let mut value = Vec::new();
    cert.eval(s, &mut value);
    if value.is_empty() {
        return None;
    }
    let cf = ssl_mod::full_certificate_name(&value, &c.conf_prefix);
    Some((cf, ssl_mod::certificate_path(s, key, &c.conf_prefix)))
}

/// The proxy module's merge of its ssl settings, and `ngx_stream_proxy_set_ssl`.
pub fn merge(p: &ProxySsl, c: &mut ProxySsl, cx: &ConfCx) -> ConfResult {
    c.conf_prefix = cx.conf_prefix.clone();
    c.enable.merge(&p.enable, false);
    c.session_reuse.merge(&p.session_reuse, true);
    if c.protocols == 0 {
        c.protocols = if p.protocols != 0 { p.protocols } else { DEFAULT_PROTOCOLS };
    }
    c.ciphers.merge(&p.ciphers, "DEFAULT".to_string());
    c.name.merge(&p.name, None);
    c.server_name.merge(&p.server_name, false);
    c.verify.merge(&p.verify, false);
    c.verify_depth.merge(&p.verify_depth, 1);
    c.trusted_certificate.merge(&p.trusted_certificate, String::new());
    c.crl.merge(&p.crl, String::new());
    c.certificate.merge(&p.certificate, None);
    c.certificate_key.merge(&p.certificate_key, None);
    if c.passwords.is_none() {
        c.passwords = p.passwords.clone();
    }
    if c.conf_commands.is_none() {
        c.conf_commands = p.conf_commands.clone();
    }
    if c.enable.get() {
        if let (Some((_, cv)), Some((_, kv))) = (c.certificate.get(), c.certificate_key.get()) {
            if cv.is_some() || kv.is_some() {
                let (ct, kt) = (c.certificate.get().unwrap_or_default(), c.certificate_key.get().unwrap_or_default());
                c.cert_values = Some((
                    cv.unwrap_or_else(|| Complex::literal(ct.0.as_bytes())),
                    kv.unwrap_or_else(|| Complex::literal(kt.0.as_bytes())),
                ));
            }
        }
        c.ctx = Some(set_ssl(c, cx).map_err(ConfError::bare)?);
    }
    Ok(())
}

/// `ngx_stream_proxy_set_ssl`.
fn set_ssl(c: &ProxySsl, cx: &ConfCx) -> Result<SslContext, String> {
    let mut b = ssl_mod::ssl_create(c.protocols)?;
    let ciphers = c.ciphers.get();
    if let Err(e) = b.set_cipher_list(&ciphers) {
        return Err(stack_text(&format!("SSL_CTX_set_cipher_list(\"{}\") failed", ciphers), &e));
    }
    if let Some((cert, _)) = c.certificate.get() {
        let Some((key, _)) = c.certificate_key.get() else {
            return Err(format!("no \"proxy_ssl_certificate_key\" is defined for certificate \"{}\"", cert));
        };
        // Named with variables: loaded per connection (`certificate_names`).
        if c.cert_values.is_none() {
            ssl_mod::use_certificate(&mut b, &cert, &key, c.passwords(), cx)?;
        }
    }
    if c.verify.get() {
        let trusted = c.trusted_certificate.get();
        if trusted.is_empty() {
            return Err("no proxy_ssl_trusted_certificate for proxy_ssl_verify".to_string());
        }
        // ngx_ssl_trusted_certificate: the verdict is read after the handshake.
        b.set_verify_callback(openssl::ssl::SslVerifyMode::NONE, |_, _| true);
        b.set_verify_depth(c.verify_depth.get() as u32);
        let path = cx.conf_full_name(&trusted);
        if !tls::load_verify_locations(&mut b, &path) {
            return Err(tls::queue_text(&format!("SSL_CTX_load_verify_locations(\"{}\") failed", path)));
        }
        tls::clear_errors();
        let crl = c.crl.get();
        if !crl.is_empty() {
            ssl_mod::load_crl(&mut b, &cx.conf_full_name(&crl))?;
        }
    }
    if c.session_reuse.get() {
        tls::keep_client_sessions(&mut b);
    }
    if let Some(cmds) = &c.conf_commands {
        ssl_mod::conf_commands(&mut b, cmds, cx)?;
    }
    Ok(b.build())
}

/// Where a peer's saved TLS session is kept: nginx keeps it in the peer itself, so two
/// `server` lines with one address (or a name and an address that agree) keep one each.
pub fn session_key(group: &str, id: crate::upstream::PeerId, peer: &str) -> String {
    format!("{}/{}{}/{}", group, if id.backup { 'b' } else { 'p' }, id.index, peer)
}

/// `ngx_stream_proxy_ssl_name`: the name to check the certificate against and, with
/// `proxy_ssl_server_name on`, to send as SNI (not an address literal). `host` is the
/// `proxy_pass` host (nginx's `u->ssl_name`); a port is stripped.
pub fn ssl_name(s: &mut SessionCore, host: &str) -> (String, Option<String>) {
    let srv = s.srv.clone();
    let c = &srv.confs.proxy_ssl;
    let name = match c.name.option().and_then(|n| n.as_ref()) {
        Some(v) => {
            let mut out = Vec::new();
            v.eval(s, &mut out);
            // A client's bytes (an SNI name) go on as they came, UTF-8 or not.
            crate::core::conf::parser::bytes_to_text(&out)
        }
        None => host.to_string(),
    };
    name_and_sni(c, name)
}

/// `ssl_name` outside a session (a health check): `proxy_ssl_name` when it has no
/// variables, else the upstream's name.
pub fn static_ssl_name(c: &ProxySsl, host: &str) -> (String, Option<String>) {
    let name = match c.name.option().and_then(|n| n.as_ref()).and_then(|v| v.as_static()) {
        Some(v) => crate::core::conf::parser::bytes_to_text(v),
        None => host.to_string(),
    };
    name_and_sni(c, name)
}

fn name_and_sni(c: &ProxySsl, mut name: String) -> (String, Option<String>) {
    let from = if name.starts_with('[') { name.find(']').unwrap_or(0) } else { 0 };
    if let Some(i) = name[from..].find(':') {
        name.truncate(from + i);
    }
    if !c.server_name.get() && !c.verify.get() {
        return (String::new(), None);
    }
    // RFC 6066 permits no address literal, and nginx takes for one what ngx_inet_addr
    // takes ("01.2.3.4" too).
    let bytes = crate::core::conf::parser::text_to_bytes(&name);
    if !c.server_name.get()
        || name.is_empty()
        || name.starts_with('[')
        || crate::core::addr::inet_addr(&bytes).is_some()
    {
        return (name, None);
    }
    (name.clone(), Some(name))
}
