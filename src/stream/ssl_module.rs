//! ngx_stream_ssl_module: TLS termination for `listen ... ssl`. Its directives build one
//! OpenSSL server context per server (as nginx's merge does, with its defaults and
//! errors); the ssl phase handshakes under `ssl_handshake_timeout`; `$ssl_*` variables
//! read the session. A session that is not TLS finds every `$ssl_*` variable "not found".

use std::rc::Rc;
use std::time::Duration;

use openssl::ssl::{
    AlpnError, SniError, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value::{self, Setting};
use crate::core::conf::{Cmd, ConfError, ConfResult};
use crate::core::ssl::{self as tls, ffi, queue_text, stack_text};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::{Flow, Phase, PhaseRegistry};
use crate::stream::session::{Cx, SessionCore};
use crate::stream::variables::{Complex, Variables};

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

const SSLV2: u32 = 0x02;
const SSLV3: u32 = 0x04;
const TLSV1: u32 = 0x08;
const TLSV1_1: u32 = 0x10;
const TLSV1_2: u32 = 0x20;
const TLSV1_3: u32 = 0x40;

const PROTOCOLS: &[(&str, u32)] = &[
    ("SSLv2", SSLV2),
    ("SSLv3", SSLV3),
    ("TLSv1", TLSV1),
    ("TLSv1.1", TLSV1_1),
    ("TLSv1.2", TLSV1_2),
    ("TLSv1.3", TLSV1_3),
];

/// `ssl_session_cache`'s built-in part (nginx's `builtin_session_cache`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Builtin {
    /// `off`: the server says it keeps no sessions.
    Off,
    /// `none` (the default): it pretends to keep them, and keeps none.
    None,
    /// `builtin` without a size: OpenSSL's default size.
    Default,
    /// `shared:` alone: no built-in cache.
    SharedOnly,
    Size(i64),
}

#[derive(Default)]
pub struct SslSrv {
    /// The last `listen ... ssl` of the server (file, line): a server with one needs a
    /// certificate.
    pub listen: Option<(Rc<str>, u32)>,
    handshake_timeout: Setting<Duration>,
    certificates: Option<Vec<String>>,
    certificate_keys: Option<Vec<String>>,
    /// Certificates named with variables: (certificate, key) to evaluate per handshake
    /// (nginx's `certificate_values`), and the directory relative names start from.
    pub cert_values: Option<Rc<Vec<(Complex, Complex)>>>,
    conf_prefix: String,
    passwords: Option<Rc<Vec<Vec<u8>>>>,
    dhparam: Setting<String>,
    ecdh_curve: Setting<String>,
    protocols: u32,
    ciphers: Setting<String>,
    verify: Setting<u8>,
    verify_depth: Setting<u64>,
    client_certificate: Setting<String>,
    trusted_certificate: Setting<String>,
    crl: Setting<String>,
    prefer_server_ciphers: Setting<bool>,
    builtin_session_cache: Option<Builtin>,
    shm_zone: Option<String>,
    session_tickets: Setting<bool>,
    /// `ssl_session_ticket_key` files as given, with where they were given.
    ticket_key_files: Option<Vec<String>>,
    session_timeout: Setting<Duration>,
    conf_commands: Option<Vec<(String, String)>>,
    alpn: Option<Vec<u8>>,
    /// The server's TLS context, made at merge for a server with `listen ... ssl`.
    pub ctx: Option<SslContext>,
}

impl SslSrv {
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout.get()
    }
}

fn set_str(s: &mut Setting<String>, cmd: &Cmd) -> ConfResult {
    s.set_parsed(cmd, |c| Ok(c.arg(0).to_string()))
}

fn handshake_timeout(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.handshake_timeout.set_parsed(cmd, value::msec)
}

// ngx_conf_set_str_array_slot: names as given; those with variables are compiled at
// merge, in servers with `listen ... ssl` only (`compile_certificates`).
fn certificate(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.certificates.get_or_insert_with(Vec::new).push(cmd.arg(0).to_string());
    Ok(())
}

fn certificate_key(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.certificate_keys.get_or_insert_with(Vec::new).push(cmd.arg(0).to_string());
    Ok(())
}

/// A certificate or key name as given, compiled too when it has variables
/// (`ngx_stream_set_complex_value_zero_slot`).
pub(crate) fn certificate_name(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult<(String, Option<Complex>)> {
    let v = cmd.arg(0);
    let value = if v.contains('$') { Some(Complex::compile(v, cmd, &mut cx.vars)?) } else { None };
    Ok((v.to_string(), value))
}

fn password_file(c: &mut SslSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if c.passwords.is_some() {
        return Err(cmd.duplicate());
    }
    c.passwords = Some(read_password_file(cmd, cx)?);
    Ok(())
}

/// `ngx_ssl_read_password_file`: one password a line, read now.
pub(crate) fn read_password_file(cmd: &Cmd, cx: &ConfCx) -> ConfResult<Rc<Vec<Vec<u8>>>> {
    use std::io::Read as _;
    let path = cx.conf_full_name(cmd.arg(0));
    let os = crate::core::conf::os_err;
    let mut f = std::fs::File::open(crate::core::conf::parser::os_path(&path))
        .map_err(|e| cmd.err(format!("open() \"{}\" failed {}", path, os(&e))))?;
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(|e| cmd.err(format!("read() \"{}\" failed {}", path, os(&e))))?;
    let mut list = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        // nginx reads through a 4 KB buffer: a line that fills it is refused.
        if line.len() >= 4096 {
            return Err(cmd.err(format!("too long line in \"{}\"", path)));
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            list.push(line.to_vec());
        }
    }
    // A file without any: one empty password.
    if list.is_empty() {
        list.push(Vec::new());
    }
    Ok(Rc::new(list))
}

fn dhparam(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    set_str(&mut c.dhparam, cmd)
}

fn ecdh_curve(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    set_str(&mut c.ecdh_curve, cmd)
}

fn protocols(c: &mut SslSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    protocol_bits(&mut c.protocols, cmd, cx)
}

/// `ngx_conf_set_bitmask_slot` over the protocol names: names add up, a repeated one is
/// a warning.
pub(crate) fn protocol_bits(bits: &mut u32, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    for a in &cmd.args {
        let Some(&(_, bit)) = PROTOCOLS.iter().find(|(n, _)| n.eq_ignore_ascii_case(a)) else {
            return Err(cmd.err(format!("invalid value \"{}\"", a)));
        };
        if *bits & bit != 0 {
            cx.warn(cmd, &format!("duplicate value \"{}\"", a));
        } else {
            *bits |= bit;
        }
    }
    Ok(())
}

/// nginx's default `ssl_protocols` / `proxy_ssl_protocols` (1.22.1): TLSv1 to TLSv1.2.
pub(crate) const DEFAULT_PROTOCOLS: u32 = TLSV1 | TLSV1_1 | TLSV1_2;

fn ciphers(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    set_str(&mut c.ciphers, cmd)
}

fn verify_client(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.verify.set_parsed(cmd, |cmd| {
        // ngx_conf_set_enum_slot: names in any case.
        let v = match cmd.arg(0).to_ascii_lowercase().as_str() {
            "off" => 0,
            "on" => 1,
            "optional" => 2,
            "optional_no_ca" => 3,
            _ => return Err(cmd.err(format!("invalid value \"{}\"", cmd.arg(0)))),
        };
        Ok(v)
    })
}

fn verify_depth(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.verify_depth.set_parsed(cmd, value::number)
}

fn client_certificate(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    set_str(&mut c.client_certificate, cmd)
}

fn trusted_certificate(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    set_str(&mut c.trusted_certificate, cmd)
}

fn crl(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    set_str(&mut c.crl, cmd)
}

fn prefer_server_ciphers(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.prefer_server_ciphers.set_parsed(cmd, value::flag)
}

/// `ngx_stream_ssl_session_cache`.
fn session_cache(c: &mut SslSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let invalid = |a: &str| cmd.err(format!("invalid session cache \"{}\"", a));
    for a in &cmd.args {
        match a.as_str() {
            "off" => c.builtin_session_cache = Some(Builtin::Off),
            "none" => c.builtin_session_cache = Some(Builtin::None),
            "builtin" => c.builtin_session_cache = Some(Builtin::Default),
            _ => {
                if let Some(n) = a.strip_prefix("builtin:").filter(|n| !n.is_empty()) {
                    let n = value::parse_number(n).ok_or_else(|| invalid(a))?;
                    c.builtin_session_cache = Some(Builtin::Size(n as i64));
                } else if let Some(rest) = a.strip_prefix("shared:").filter(|r| !r.is_empty()) {
                    let (name, size) = rest.split_once(':').unwrap_or((rest, ""));
                    if name.is_empty() {
                        return Err(invalid(a));
                    }
                    let n = value::parse_size(size).ok_or_else(|| invalid(a))?;
                    if n < 8 * 4096 {
                        return Err(cmd.err(format!("session cache \"{}\" is too small", a)));
                    }
                    cx.add_zone(name, Some(n), cmd, "stream_ssl")?;
                    c.shm_zone = Some(name.to_string());
                } else {
                    return Err(invalid(a));
                }
            }
        }
    }
    if c.shm_zone.is_some() && c.builtin_session_cache.is_none() {
        c.builtin_session_cache = Some(Builtin::SharedOnly);
    }
    Ok(())
}

fn session_tickets(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.session_tickets.set_parsed(cmd, value::flag)
}

fn session_ticket_key(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.ticket_key_files.get_or_insert_with(Vec::new).push(cmd.arg(0).to_string());
    Ok(())
}

/// `ngx_ssl_session_ticket_keys`: read each key file (48 or 80 bytes). nginx does it at
/// merge, so its errors name the end of the `stream` block (the text returned says so).
fn read_ticket_keys(files: &[String], cx: &ConfCx) -> Result<Vec<tls::TicketKey>, String> {
    use std::io::Read as _;
    let at = |msg: String| ConfError::at(msg, &cx.merge_at.0, cx.merge_at.1).to_string();
    let os = crate::core::conf::os_err;
    let mut keys = Vec::new();
    for name in files {
        let path = cx.conf_full_name(name);
        let mut f = std::fs::File::open(crate::core::conf::parser::os_path(&path))
            .map_err(|e| at(format!("open() \"{}\" failed {}", path, os(&e))))?;
        // A directory opens too; its size is not a key's.
        let size = f.metadata().map(|m| m.len()).map_err(|e| at(format!("fstat() \"{}\" failed {}", path, os(&e))))?;
        if size != 48 && size != 80 {
            return Err(at(format!("\"{}\" must be 48 or 80 bytes", path)));
        }
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(|e| at(format!("read() \"{}\" failed {}", path, os(&e))))?;
        keys.push(
            tls::TicketKey::from_file_bytes(&bytes)
                .ok_or_else(|| at(format!("\"{}\" must be 48 or 80 bytes", path)))?,
        );
    }
    Ok(keys)
}

fn session_timeout(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.session_timeout.set_parsed(cmd, value::sec)
}

fn conf_command(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    c.conf_commands.get_or_insert_with(Vec::new).push((cmd.arg(0).to_string(), cmd.arg(1).to_string()));
    Ok(())
}

/// `ngx_stream_ssl_alpn`: the protocols in wire format (length-prefixed).
fn alpn(c: &mut SslSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    if c.alpn.is_some() {
        return Err(cmd.duplicate());
    }
    let mut wire = Vec::new();
    for a in &cmd.args {
        if a.len() > 255 {
            return Err(ConfError::directive(cmd, "protocol too long"));
        }
        wire.push(a.len() as u8);
        wire.extend_from_slice(a.as_bytes());
    }
    c.alpn = Some(wire);
    Ok(())
}

const fn srv(
    name: &'static str,
    args: Arity,
    f: fn(&mut SslSrv, &Cmd, &mut ConfCx) -> ConfResult,
) -> Directive<StreamSsl> {
    Directive { name, ctx: Ctx::MAIN_SRV, args, set: Set::Srv(f) }
}

impl Module for StreamSsl {
    const NAME: &'static str = "stream_ssl";
    type Main = ();
    type Srv = SslSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[
        srv("ssl_handshake_timeout", Arity::Take(1), handshake_timeout),
        srv("ssl_certificate", Arity::Take(1), certificate),
        srv("ssl_certificate_key", Arity::Take(1), certificate_key),
        srv("ssl_password_file", Arity::Take(1), password_file),
        srv("ssl_dhparam", Arity::Take(1), dhparam),
        srv("ssl_ecdh_curve", Arity::Take(1), ecdh_curve),
        srv("ssl_protocols", Arity::OneOrMore, protocols),
        srv("ssl_ciphers", Arity::Take(1), ciphers),
        srv("ssl_verify_client", Arity::Take(1), verify_client),
        srv("ssl_verify_depth", Arity::Take(1), verify_depth),
        srv("ssl_client_certificate", Arity::Take(1), client_certificate),
        srv("ssl_trusted_certificate", Arity::Take(1), trusted_certificate),
        srv("ssl_prefer_server_ciphers", Arity::Flag, prefer_server_ciphers),
        srv("ssl_session_cache", Arity::Between(1, 2), session_cache),
        srv("ssl_session_tickets", Arity::Flag, session_tickets),
        srv("ssl_session_ticket_key", Arity::Take(1), session_ticket_key),
        srv("ssl_session_timeout", Arity::Take(1), session_timeout),
        srv("ssl_crl", Arity::Take(1), crl),
        srv("ssl_conf_command", Arity::Take(2), conf_command),
        srv("ssl_alpn", Arity::OneOrMore, alpn),
    ];

    fn variables(v: &mut Variables) {
        // Cached once read (nginx's flags have no NOCACHEABLE): a `set` or a limit_conn
        // key that reads one before the handshake keeps it empty for the session.
        // And changeable, as nginx flags them: a configuration may make its own.
        for (i, name) in VARIABLES.iter().enumerate() {
            let idx = v.define_cacheable(name, var_ssl, i);
            v.set_changeable(idx);
        }
    }

    fn merge_srv(p: &SslSrv, c: &mut SslSrv, cx: &mut ConfCx) -> ConfResult {
        c.handshake_timeout.merge(&p.handshake_timeout, Duration::from_secs(60));
        c.session_timeout.merge(&p.session_timeout, Duration::from_secs(300));
        c.prefer_server_ciphers.merge(&p.prefer_server_ciphers, false);
        if c.protocols == 0 {
            c.protocols = if p.protocols != 0 { p.protocols } else { DEFAULT_PROTOCOLS };
        }
        c.verify.merge(&p.verify, 0);
        c.verify_depth.merge(&p.verify_depth, 1);
        if c.certificates.is_none() {
            c.certificates = p.certificates.clone();
        }
        if c.certificate_keys.is_none() {
            c.certificate_keys = p.certificate_keys.clone();
        }
        if c.passwords.is_none() {
            c.passwords = p.passwords.clone();
        }
        c.dhparam.merge(&p.dhparam, String::new());
        c.client_certificate.merge(&p.client_certificate, String::new());
        c.trusted_certificate.merge(&p.trusted_certificate, String::new());
        c.crl.merge(&p.crl, String::new());
        if c.alpn.is_none() {
            c.alpn = p.alpn.clone();
        }
        c.ecdh_curve.merge(&p.ecdh_curve, "auto".to_string());
        c.ciphers.merge(&p.ciphers, "HIGH:!aNULL:!MD5".to_string());
        if c.conf_commands.is_none() {
            c.conf_commands = p.conf_commands.clone();
        }
        let Some((file, line)) = c.listen.clone() else { return Ok(()) };
        let Some(certs) = c.certificates.clone() else {
            return Err(ConfError::bare(format!(
                "no \"ssl_certificate\" is defined for the \"listen ... ssl\" directive in {}:{}",
                file, line
            )));
        };
        let Some(keys) = c.certificate_keys.clone() else {
            return Err(ConfError::bare(format!(
                "no \"ssl_certificate_key\" is defined for the \"listen ... ssl\" directive in {}:{}",
                file, line
            )));
        };
        if keys.len() < certs.len() {
            return Err(ConfError::bare(format!(
                "no \"ssl_certificate_key\" is defined for certificate \"{}\" and the \"listen ... ssl\" directive in {}:{}",
                certs.last().map_or("", |s| s.as_str()),
                file,
                line
            )));
        }
        if c.builtin_session_cache.is_none() {
            c.builtin_session_cache = Some(p.builtin_session_cache.unwrap_or(Builtin::None));
        }
        if c.shm_zone.is_none() {
            c.shm_zone = p.shm_zone.clone();
        }
        c.session_tickets.merge(&p.session_tickets, true);
        if c.ticket_key_files.is_none() {
            c.ticket_key_files = p.ticket_key_files.clone();
        }
        let (ctx, values) = build_context(c, &certs, &keys, cx).map_err(ConfError::bare)?;
        c.ctx = Some(ctx);
        if values.is_some() {
            c.cert_values = values;
            c.conf_prefix = cx.conf_prefix.clone();
        }
        Ok(())
    }

    fn postconfiguration(p: &mut PhaseRegistry) {
        p.add(Phase::Ssl, ssl_handler);
    }
}

/// `ngx_ssl_certificate`: the certificate, its chain and its key into the context
/// (names relative to the configuration's directory).
pub(crate) fn use_certificate(
    b: &mut SslContextBuilder,
    cert: &str,
    key: &str,
    pwds: Option<&[Vec<u8>]>,
    cx: &ConfCx,
) -> Result<[u8; 20], String> {
    let full = |n: &str| {
        if n.starts_with("data:") || n.starts_with("engine:") {
            n.to_string()
        } else {
            cx.conf_full_name(n)
        }
    };
    tls::use_certificate(tls::CertTarget::Ctx(b.as_ptr()), &full(cert), &full(key), pwds)
}

/// `ngx_ssl_create`: a context with nginx's options, bug workarounds and protocol
/// switches (`protocols` is a bit set of `PROTOCOLS`).
pub(crate) fn ssl_create(protocols: u32) -> Result<SslContextBuilder, String> {
    tls::clear_errors();
    let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(|e| stack_text("SSL_CTX_new() failed", &e))?;
    // ngx_ssl_create's options, bugs workarounds and protocol switches.
    b.set_options(SslOptions::SINGLE_DH_USE | SslOptions::DONT_INSERT_EMPTY_FRAGMENTS);
    b.clear_options(SslOptions::NO_SSLV2 | SslOptions::NO_SSLV3 | SslOptions::NO_TLSV1);
    let p = protocols;
    for (bit, opt) in [
        (SSLV2, SslOptions::NO_SSLV2),
        (SSLV3, SslOptions::NO_SSLV3),
        (TLSV1, SslOptions::NO_TLSV1),
        (TLSV1_1, SslOptions::NO_TLSV1_1),
        (TLSV1_2, SslOptions::NO_TLSV1_2),
        (TLSV1_3, SslOptions::NO_TLSV1_3),
    ] {
        b.clear_options(opt);
        if p & bit == 0 {
            b.set_options(opt);
        }
    }
    let _ = b.set_min_proto_version(None);
    let _ = b.set_max_proto_version(Some(SslVersion::TLS1_3));
    b.set_options(
        SslOptions::NO_COMPRESSION
            | SslOptions::from_bits_retain(1 << 24) // SSL_OP_NO_ANTI_REPLAY
            | SslOptions::IGNORE_UNEXPECTED_EOF,
    );
    b.set_mode(SslMode::RELEASE_BUFFERS | SslMode::NO_AUTO_CHAIN);
    // SAFETY: a live context.
    unsafe { ffi::SSL_CTX_set_read_ahead(b.as_ptr(), 1) };
    Ok(b)
}

/// nginx's merge from `ngx_ssl_create` on: the context for a server with
/// `listen ... ssl`, or nginx's error text.
type CertValues = Option<Rc<Vec<(Complex, Complex)>>>;

/// `ngx_stream_ssl_compile_certificates`: with a variable in any name, every pair is
/// compiled to be loaded per handshake. nginx compiles them at merge, so an error is
/// placed at the end of the `stream` block.
fn compile_certificates(certs: &[String], keys: &[String], cx: &mut ConfCx) -> Result<CertValues, String> {
    if !certs.iter().chain(keys).any(|n| n.contains('$')) {
        return Ok(None);
    }
    let (file, line) = cx.merge_at.clone();
    let mut compile = |name: &str, text: &String| {
        let cmd = Cmd { name: name.to_string(), args: vec![text.clone()], block: None, file: file.clone(), line };
        Complex::compile(text, &cmd, &mut cx.vars).map_err(|e| e.to_string())
    };
    let mut pairs = Vec::with_capacity(certs.len());
    for (c, k) in certs.iter().zip(keys) {
        pairs.push((compile("ssl_certificate", c)?, compile("ssl_certificate_key", k)?));
    }
    Ok(Some(Rc::new(pairs)))
}

fn build_context(
    c: &SslSrv,
    certs: &[String],
    keys: &[String],
    cx: &mut ConfCx,
) -> Result<(SslContext, CertValues), String> {
    let mut b = ssl_create(c.protocols)?;
    // ngx_stream_ssl_servername: SNI is accepted whatever the name.
    b.set_servername_callback(|_, _| Ok::<(), SniError>(()));
    if let Some(wire) = c.alpn.clone() {
        b.set_alpn_select_callback(move |_, client| select_alpn(&wire, client).ok_or(AlpnError::ALERT_FATAL));
    }
    let ciphers = c.ciphers.get();
    if let Err(e) = b.set_cipher_list(&ciphers) {
        return Err(stack_text(&format!("SSL_CTX_set_cipher_list(\"{}\") failed", ciphers), &e));
    }
    if c.prefer_server_ciphers.get() {
        b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
    }
    let values = compile_certificates(certs, keys, cx)?;
    let mut digests = Vec::new();
    if values.is_some() {
        // The certificates are the handshake's business (see `Handshake::Certificate`).
        tls::set_cert_callback(&mut b);
    } else {
        for (cert, key) in certs.iter().zip(keys) {
            digests.push(use_certificate(&mut b, cert, key, c.passwords.as_deref().map(|v| &v[..]), cx)?);
        }
    }
    let verify = c.verify.get();
    if verify != 0 {
        // ngx_ssl_client_certificate: the handshake goes on whatever the verdict (the
        // callback says yes); the ssl phase then reads it (SSL_get_verify_result).
        let ca = c.client_certificate.get();
        if ca.is_empty() && verify != 3 {
            return Err("no ssl_client_certificate for ssl_verify_client".to_string());
        }
        b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
        b.set_verify_depth(c.verify_depth.get() as u32);
        for (file, client_list) in [(ca, true), (c.trusted_certificate.get(), false)] {
            if file.is_empty() {
                continue;
            }
            let path = cx.conf_full_name(&file);
            if !tls::load_verify_locations(&mut b, &path) {
                return Err(queue_text(&format!("SSL_CTX_load_verify_locations(\"{}\") failed", path)));
            }
            tls::clear_errors();
            if client_list && !tls::load_client_ca_list(&mut b, &path) {
                return Err(queue_text(&format!("SSL_load_client_CA_file(\"{}\") failed", path)));
            }
        }
        let crl = c.crl.get();
        if !crl.is_empty() {
            load_crl(&mut b, &cx.conf_full_name(&crl))?;
        }
    }
    let dh = c.dhparam.get();
    if !dh.is_empty() {
        let path = cx.conf_full_name(&dh);
        let cpath = tls::cstring(&path);
        // SAFETY: reading DH parameters from a file BIO, freed before returning.
        unsafe {
            let bio = ffi::BIO_new_file(cpath.as_ptr(), c"r".as_ptr());
            if bio.is_null() {
                return Err(queue_text(&format!("BIO_new_file(\"{}\") failed", path)));
            }
            let d = ffi::PEM_read_bio_DHparams(bio, std::ptr::null_mut(), None, std::ptr::null_mut());
            ffi::BIO_free_all(bio);
            if d.is_null() {
                return Err(queue_text(&format!("PEM_read_bio_DHparams(\"{}\") failed", path)));
            }
            if ffi::SSL_CTX_set_tmp_dh(b.as_ptr(), d) != 1 {
                ffi::DH_free(d);
                return Err(queue_text(&format!("SSL_CTX_set_tmp_dh(\"{}\") failed", path)));
            }
            ffi::DH_free(d);
        }
    }
    let curve = c.ecdh_curve.get();
    if curve != "auto" {
        if let Err(e) = b.set_groups_list(&curve) {
            return Err(stack_text(&format!("SSL_CTX_set1_curves_list(\"{}\") failed", curve), &e));
        }
    }
    // ngx_ssl_session_cache.
    tls::set_session_timeout(&mut b, c.session_timeout.get().as_secs());
    let dynamic: &[String] = if values.is_some() { certs } else { &[] };
    tls::session_id_context(&mut b, &digests, dynamic)?;
    match c.builtin_session_cache.unwrap_or(Builtin::None) {
        Builtin::Off => {
            b.set_session_cache_mode(SslSessionCacheMode::OFF);
        }
        Builtin::None => {
            b.set_session_cache_mode(
                SslSessionCacheMode::SERVER
                    | SslSessionCacheMode::NO_AUTO_CLEAR
                    | SslSessionCacheMode::NO_INTERNAL_STORE,
            );
            b.set_session_cache_size(1);
        }
        other => {
            b.set_session_cache_mode(SslSessionCacheMode::SERVER);
            if let Builtin::Size(n) = other {
                b.set_session_cache_size(n.min(i32::MAX as i64) as i32);
            }
            if let Some(zone) = &c.shm_zone {
                crate::core::ssl_cache::install(&mut b, zone, other != Builtin::SharedOnly);
            }
        }
    }
    if !c.session_tickets.get() {
        b.set_options(SslOptions::NO_TICKET);
    }
    // ngx_ssl_session_ticket_keys: read here, after the rest, as nginx orders its checks.
    if let Some(files) = &c.ticket_key_files {
        tls::set_ticket_keys(&mut b, read_ticket_keys(files, cx)?)?;
    }
    if let Some(cmds) = &c.conf_commands {
        conf_commands(&mut b, cmds, cx)?;
    }
    Ok((b.build(), values))
}

/// `ngx_ssl_crl`: revocation lists checked for the whole chain.
pub(crate) fn load_crl(b: &mut SslContextBuilder, path: &str) -> Result<(), String> {
    let cpath = tls::cstring(path);
    // SAFETY: the context's own store; the lookup belongs to it.
    unsafe {
        let store = ffi::SSL_CTX_get_cert_store(b.as_ptr());
        if store.is_null() {
            return Err(queue_text("SSL_CTX_get_cert_store() failed"));
        }
        let lookup = ffi::X509_STORE_add_lookup(store, ffi::X509_LOOKUP_file());
        if lookup.is_null() {
            return Err(queue_text("X509_STORE_add_lookup() failed"));
        }
        // X509_LOOKUP_load_file(lookup, path, X509_FILETYPE_PEM)
        if ffi::X509_LOOKUP_ctrl(lookup, 1, cpath.as_ptr(), 1, std::ptr::null_mut()) == 0 {
            return Err(queue_text(&format!("X509_LOOKUP_load_file(\"{}\") failed", path)));
        }
        // X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL
        ffi::X509_STORE_set_flags(store, 0x4 | 0x8);
    }
    Ok(())
}

/// `SSL_select_next_proto` as nginx's ALPN callback uses it: the first of the server's
/// protocols the client offers (the client's copy of it).
fn select_alpn<'a>(server: &[u8], client: &'a [u8]) -> Option<&'a [u8]> {
    let offered = proto_list(client);
    proto_list(server).into_iter().find_map(|p| offered.iter().find(|c| **c == p).copied())
}

/// A wire-format protocol list (each name after its length byte).
fn proto_list(mut b: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    while let Some((&n, rest)) = b.split_first() {
        let n = n as usize;
        if rest.len() < n {
            break;
        }
        v.push(&rest[..n]);
        b = &rest[n..];
    }
    v
}

/// `ngx_ssl_conf_commands`.
pub(crate) fn conf_commands(b: &mut SslContextBuilder, cmds: &[(String, String)], cx: &ConfCx) -> Result<(), String> {
    // SAFETY: an SSL_CONF_CTX made, used on a live context and freed here.
    unsafe {
        let cctx = ffi::SSL_CONF_CTX_new();
        if cctx.is_null() {
            return Err(queue_text("SSL_CONF_CTX_new() failed"));
        }
        ffi::SSL_CONF_CTX_set_flags(
            cctx,
            ffi::SSL_CONF_FLAG_FILE
                | ffi::SSL_CONF_FLAG_SERVER
                | ffi::SSL_CONF_FLAG_CLIENT
                | ffi::SSL_CONF_FLAG_CERTIFICATE
                | ffi::SSL_CONF_FLAG_SHOW_ERRORS,
        );
        ffi::SSL_CONF_CTX_set_ssl_ctx(cctx, b.as_ptr());
        for (k, v) in cmds {
            let ck = tls::cstring(k);
            // A file or directory value is relative to the configuration's directory.
            let t = tls::ffi::SSL_CONF_cmd_value_type(cctx, ck.as_ptr());
            let v = if t == 2 || t == 3 { cx.conf_full_name(v) } else { v.clone() };
            let cv = tls::cstring(&v);
            if ffi::SSL_CONF_cmd(cctx, ck.as_ptr(), cv.as_ptr()) <= 0 {
                ffi::SSL_CONF_CTX_free(cctx);
                return Err(queue_text(&format!("SSL_CONF_cmd(\"{}\", \"{}\") failed", k, v)));
            }
        }
        if ffi::SSL_CONF_CTX_finish(cctx) != 1 {
            ffi::SSL_CONF_CTX_free(cctx);
            return Err(queue_text("SSL_CONF_finish() failed"));
        }
        ffi::SSL_CONF_CTX_free(cctx);
    }
    Ok(())
}

/// The ssl phase (`ngx_stream_ssl_handler`): handshake a `listen ... ssl` session.
fn ssl_handler(s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
    use crate::stream::api_module::{count_ssl, SslEvent};
    if !s.ssl {
        return Flow::Next;
    }
    let srv = s.srv.clone();
    s.action = Some("SSL handshaking");
    if !s.client.is_tls() {
        if s.client.is_tcp() && srv.core().tcp_nodelay() && !s.nodelay {
            if let Err(e) = s.client.set_nodelay(true) {
                s.connection_error(crate::stream::session::Side::Client, &e, "setsockopt(TCP_NODELAY) failed");
                return Flow::Finalize(500);
            }
            s.nodelay = true;
        }
        // Servers sharing the address by `server_name`: the hello's SNI picks one before
        // the handshake, and its context (certificates, protocols) makes it (nginx
        // 1.25.5 switches in its servername callback; later versions, as here, choose
        // from the ClientHello).
        if s.virtual_names.is_some() {
            match sni_from_hello(s, &mut cx.rt.scratch) {
                None => return handshake_wait(s, cx),
                Some(Some(host)) => {
                    if !crate::stream::ssl_preread_module::find_virtual_server(s, &host) {
                        return Flow::Finalize(500);
                    }
                }
                Some(None) => {}
            }
        }
        // A server without `listen ... ssl` of its own handshakes with the default's.
        let Some(ctx) = s.srv.confs.ssl.ctx.clone().or_else(|| srv.confs.ssl.ctx.clone()) else {
            return Flow::Finalize(500);
        };
        if let Err(msg) = s.client.start_tls(&ctx) {
            s.log(crate::core::conf::Level::Alert, &msg, None);
            return Flow::Finalize(500);
        }
    }
    let mut hs = match s.client.tls_mut() {
        Some(t) => t.handshake(),
        None => return Flow::Finalize(500),
    };
    if let tls::Handshake::Certificate = hs {
        load_certificates(s);
        hs = match s.client.tls_mut() {
            Some(t) => t.handshake(),
            None => return Flow::Finalize(500),
        };
    }
    match hs {
        tls::Handshake::Certificate => Flow::Finalize(500),
        tls::Handshake::Done => {
            cx.timers.clear(&mut s.preread_timer);
            s.handshake_timer = false;
            let reused = s.client.tls_mut().is_some_and(|t| t.ssl().session_reused());
            count_ssl(s, SslEvent::Done { reused });
            if let Some(f) = verify_client_cert(s) {
                return f;
            }
            Flow::Next
        }
        tls::Handshake::Again => handshake_wait(s, cx),
        tls::Handshake::Closed(os) => {
            count_ssl(s, SslEvent::Failed(None));
            s.log(crate::core::conf::Level::Info, "peer closed connection in SSL handshake", os.as_ref());
            Flow::Finalize(500)
        }
        tls::Handshake::Failed(e) => {
            count_ssl(s, SslEvent::Failed(Some(&e)));
            s.connection_error(crate::stream::session::Side::Client, &e, "SSL_do_handshake() failed");
            Flow::Finalize(500)
        }
    }
}

/// A certificate or key name with variables, evaluated for the session: "data:" and
/// absolute names as they are, others under the configuration's directory.
pub(crate) fn certificate_path(s: &mut SessionCore, v: &Complex, conf_prefix: &str) -> String {
    let mut out = Vec::new();
    v.eval(s, &mut out);
    full_certificate_name(&out, conf_prefix)
}

/// An evaluated certificate or key name, relative ones under the configuration's
/// directory (`data:` and `engine:` names as they are).
pub(crate) fn full_certificate_name(value: &[u8], conf_prefix: &str) -> String {
    // A client's bytes (`$ssl_server_name`) name the file as they came, UTF-8 or not.
    let name = crate::core::conf::parser::bytes_to_text(value);
    if name.starts_with("data:") || name.starts_with("engine:") || name.starts_with('/') {
        name
    } else {
        format!("{}{}", conf_prefix, name)
    }
}

/// `ngx_stream_ssl_certificate`: the names evaluated for this session (relative ones
/// under the configuration's directory) and loaded into its connection; a failure is
/// logged and fails the handshake.
fn load_certificates(s: &mut SessionCore) {
    let srv = s.srv.clone();
    let c = &srv.confs.ssl;
    let Some(values) = c.cert_values.clone() else { return };
    let mut pairs = Vec::with_capacity(values.len());
    for (cert, key) in values.iter() {
        let cf = certificate_path(s, cert, &c.conf_prefix);
        pairs.push((cf, certificate_path(s, key, &c.conf_prefix)));
    }
    let pwds = c.passwords.as_deref().map(|v| &v[..]);
    let r = match s.client.tls_mut() {
        Some(t) => t.set_certificates(&pairs, pwds),
        None => return,
    };
    if let Err(msg) = r {
        s.log(crate::core::conf::Level::Error, &msg, None);
    }
}

/// Wait for the client under `ssl_handshake_timeout` (armed once).
fn handshake_wait(s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
    if !s.handshake_timer {
        let at = cx.now + s.srv.confs.ssl.handshake_timeout();
        let token = crate::stream::session::session_token(s.key, crate::stream::session::Side::Client);
        cx.timers.set(&mut s.preread_timer, at, token);
        s.handshake_timer = true;
    }
    Flow::Again
}

/// The SNI host of the client's hello, read without taking it (MSG_PEEK): `None` while
/// more of it is to come, `Some(None)` for a hello without one (or input that is not a
/// hello, or a hello larger than looked at: the handshake then says what it is).
fn sni_from_hello(s: &mut SessionCore, buf: &mut Vec<u8>) -> Option<Option<Vec<u8>>> {
    use crate::stream::ssl_preread_module::{parse, Parsed};
    const LOOK: usize = 16 * 1024 + 5;
    // The worker's shared buffer: nothing allocated per wake-up.
    if buf.len() < LOOK {
        buf.resize(LOOK, 0);
    }
    let n = match s.client.peek(&mut buf[..LOOK]) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
        Err(_) => return Some(None),
    };
    if n == 0 {
        return Some(None);
    }
    match parse(&buf[..n]) {
        Parsed::Again(_) if n < LOOK => None,
        Parsed::Done(h) => Some(h.host),
        _ => Some(None),
    }
}

/// `ngx_ssl_remove_cached_session`: a refused client's session must not resume (from
/// the built-in cache, and through its remove callback from the shared one; a ticket
/// cannot be taken back).
fn remove_cached_session(ssl: &openssl::ssl::SslRef) {
    if let Some(sess) = ssl.session() {
        // SAFETY: the session is this connection's, made by this context.
        unsafe { ssl.ssl_context().remove_session(sess) };
    }
}

/// `ssl_verify_client` checks after the handshake.
fn verify_client_cert(s: &mut SessionCore) -> Option<Flow> {
    use crate::stream::api_module::{count_ssl, SslEvent};
    let verify = s.srv.confs.ssl.verify.get();
    if verify == 0 {
        return None;
    }
    let t = s.client.tls_mut()?;
    let rc = t.ssl().verify_result();
    // nginx 1.22.1's ngx_ssl_verify_error_optional: these five and no others.
    let optional_ok = |r: openssl::x509::X509VerifyResult| matches!(r.as_raw(), 18 | 19 | 20 | 21 | 27);
    if rc != openssl::x509::X509VerifyResult::OK && !(verify == 3 && optional_ok(rc)) {
        let msg = format!("client SSL certificate verify error: ({}:{})", rc.as_raw(), rc.error_string());
        remove_cached_session(t.ssl());
        count_ssl(s, SslEvent::Refused(rc.as_raw()));
        s.log(crate::core::conf::Level::Info, &msg, None);
        return Some(Flow::Finalize(500));
    }
    if verify == 1 && t.ssl().peer_certificate().is_none() {
        remove_cached_session(t.ssl());
        count_ssl(s, SslEvent::Refused(0));
        s.log(crate::core::conf::Level::Info, "client sent no required SSL certificate", None);
        return Some(Flow::Finalize(500));
    }
    None
}

/// `$ssl_*`: from the session's TLS connection; not found for a session without one
/// (or where the value is empty).
fn var_ssl(s: &mut SessionCore, idx: usize, out: &mut Vec<u8>) -> bool {
    let Some(t) = s.client.tls_mut() else { return false };
    let ssl = t.ssl();
    let name = VARIABLES.get(idx).copied().unwrap_or("");
    // What the client sent, as bytes: UTF-8 or not.
    let raw = match name {
        "ssl_server_name" => Some(tls::servername(ssl)),
        "ssl_alpn_protocol" => Some(ssl.selected_alpn_protocol().unwrap_or(b"")),
        _ => None,
    };
    if let Some(v) = raw {
        out.extend_from_slice(v);
        return !v.is_empty();
    }
    let v: String = match name {
        "ssl_protocol" => ssl.version_str().to_string(),
        "ssl_cipher" => ssl.current_cipher().map_or("(NONE)".to_string(), |c| c.name().to_string()),
        "ssl_ciphers" => tls::client_ciphers(ssl),
        "ssl_curve" => tls::shared_curve(ssl),
        "ssl_curves" => tls::client_curves(ssl),
        "ssl_session_id" => ssl.session().map_or(String::new(), |se| hex_lower(se.id())),
        "ssl_session_reused" => if ssl.session_reused() { "r" } else { "." }.to_string(),
        "ssl_client_verify" => client_verify(ssl),
        "ssl_client_s_dn" => ssl.peer_certificate().map_or(String::new(), |c| tls::rfc2253(c.subject_name())),
        "ssl_client_i_dn" => ssl.peer_certificate().map_or(String::new(), |c| tls::rfc2253(c.issuer_name())),
        "ssl_client_serial" => ssl.peer_certificate().map_or(String::new(), |c| tls::serial(&c)),
        "ssl_client_fingerprint" => ssl
            .peer_certificate()
            .and_then(|c| c.digest(openssl::hash::MessageDigest::sha1()).ok())
            .map_or(String::new(), |d| hex_lower(&d)),
        "ssl_client_raw_cert" => ssl
            .peer_certificate()
            .and_then(|c| c.to_pem().ok())
            .map_or(String::new(), |p| String::from_utf8_lossy(&p).into_owned()),
        "ssl_client_cert" => ssl.peer_certificate().and_then(|c| c.to_pem().ok()).map_or(String::new(), |p| {
            let pem = String::from_utf8_lossy(&p);
            let pem = pem.strip_suffix('\n').unwrap_or(&pem);
            pem.replace('\n', "\n\t")
        }),
        "ssl_client_escaped_cert" => {
            ssl.peer_certificate().and_then(|c| c.to_pem().ok()).map_or(String::new(), |p| escape_uri_component(&p))
        }
        "ssl_client_v_start" => ssl.peer_certificate().map_or(String::new(), |c| c.not_before().to_string()),
        "ssl_client_v_end" => ssl.peer_certificate().map_or(String::new(), |c| c.not_after().to_string()),
        "ssl_client_v_remain" => ssl.peer_certificate().map_or(String::new(), |c| {
            let now = openssl::asn1::Asn1Time::days_from_now(0).ok();
            now.and_then(|n| n.diff(c.not_after()).ok()).map_or(String::new(), |d| d.days.max(0).to_string())
        }),
        _ => String::new(),
    };
    if v.is_empty() {
        return false;
    }
    out.extend_from_slice(v.as_bytes());
    true
}

/// `ngx_ssl_get_client_verify`.
fn client_verify(ssl: &openssl::ssl::SslRef) -> String {
    let rc = ssl.verify_result();
    if rc != openssl::x509::X509VerifyResult::OK {
        return format!("FAILED:{}", rc.error_string());
    }
    if ssl.peer_certificate().is_some() {
        "SUCCESS".to_string()
    } else {
        "NONE".to_string()
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

/// `ngx_escape_uri(NGX_ESCAPE_URI_COMPONENT)` of a PEM certificate.
fn escape_uri_component(b: &[u8]) -> String {
    let mut out = String::new();
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{:02X}", c));
        }
    }
    out
}
