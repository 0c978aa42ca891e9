//! TLS through OpenSSL (nginx's `ngx_event_openssl.c`): the server context a
//! `listen ... ssl` server gets, nginx's error texts ("... (SSL: error:...)"), and a
//! client connection that handshakes, reads and writes without blocking.
//!
//! sluice links the system's OpenSSL, as nginx does, so a protocol list, a cipher string
//! or an error queue means here exactly what it means there.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::os::raw::{c_char, c_int, c_long, c_ulong, c_void};

use openssl::error::ErrorStack;
use openssl::ssl::{self, ErrorCode, Ssl, SslContext, SslStream};

use crate::core::conf::Level;
use crate::core::conn::Conn;

/// What openssl-sys does not declare.
#[allow(non_camel_case_types)]
pub mod ffi {
    pub use openssl_sys::*;
    use std::os::raw::{c_char, c_long, c_ulong, c_void};

    extern "C" {
        pub fn ERR_peek_error_data(data: *mut *const c_char, flags: *mut c_int) -> c_ulong;
        pub fn ERR_error_string_n(e: c_ulong, buf: *mut c_char, len: usize);
        pub fn BIO_new_file(name: *const c_char, mode: *const c_char) -> *mut BIO;
        pub fn PEM_read_bio_X509_AUX(bp: *mut BIO, x: *mut *mut X509, cb: *mut c_void, u: *mut c_void) -> *mut X509;
        pub fn SSL_CTX_set_timeout(ctx: *mut SSL_CTX, t: c_long) -> c_long;
        pub fn SSL_CTX_get_timeout(ctx: *const SSL_CTX) -> c_long;
        pub fn SSL_set_quiet_shutdown(ssl: *mut SSL, mode: c_int);
        pub fn SSL_set_options(ssl: *mut SSL, op: u64) -> u64;
        pub fn SSL_CIPHER_find(ssl: *mut SSL, ptr: *const u8) -> *const SSL_CIPHER;
        pub fn X509_NAME_print_ex(
            out: *mut BIO,
            nm: *const X509_NAME,
            indent: std::os::raw::c_int,
            flags: std::os::raw::c_ulong,
        ) -> std::os::raw::c_int;
        pub fn SSL_CTX_set_cert_cb(
            c: *mut SSL_CTX,
            cb: Option<unsafe extern "C" fn(*mut SSL, *mut c_void) -> std::os::raw::c_int>,
            arg: *mut c_void,
        );
        pub fn SSL_CTX_get_client_CA_list(ctx: *const SSL_CTX) -> *mut stack_st_X509_NAME;
        pub fn X509_NAME_digest(
            data: *const X509_NAME,
            t: *const EVP_MD,
            md: *mut u8,
            len: *mut std::os::raw::c_uint,
        ) -> std::os::raw::c_int;
        pub fn ENGINE_by_id(id: *const c_char) -> *mut c_void;
        pub fn ENGINE_load_private_key(
            e: *mut c_void,
            key_id: *const c_char,
            ui: *mut c_void,
            cb_data: *mut c_void,
        ) -> *mut EVP_PKEY;
        pub fn ENGINE_set_default(e: *mut c_void, flags: std::os::raw::c_uint) -> std::os::raw::c_int;
        pub fn ENGINE_free(e: *mut c_void) -> std::os::raw::c_int;
        pub fn i2a_ASN1_INTEGER(bp: *mut BIO, a: *const ASN1_INTEGER) -> std::os::raw::c_int;
        pub fn X509_check_host(
            x: *mut X509,
            chk: *const c_char,
            chklen: usize,
            flags: std::os::raw::c_uint,
            peername: *mut *mut c_char,
        ) -> std::os::raw::c_int;
        pub fn SSL_CONF_CTX_new() -> *mut c_void;
        pub fn SSL_CONF_CTX_free(cctx: *mut c_void);
        pub fn SSL_CONF_CTX_set_flags(cctx: *mut c_void, flags: u32) -> u32;
        pub fn SSL_CONF_CTX_set_ssl_ctx(cctx: *mut c_void, ctx: *mut SSL_CTX);
        pub fn SSL_CONF_cmd(cctx: *mut c_void, cmd: *const c_char, value: *const c_char) -> c_int;
        pub fn SSL_CONF_CTX_finish(cctx: *mut c_void) -> c_int;
        pub fn SSL_CONF_cmd_value_type(cctx: *mut c_void, cmd: *const c_char) -> c_int;
        pub fn SSL_ctrl(ssl: *mut SSL, cmd: c_int, larg: c_long, parg: *mut c_void) -> c_long;
        pub fn OBJ_nid2sn(n: c_int) -> *const c_char;
    }

    pub const ERR_TXT_STRING: c_int = 0x02;
    pub const SSL_CTRL_CHAIN: c_int = 88;
    pub const SSL_CTRL_GET_CURVES: c_int = 90;
    pub const SSL_CTRL_GET_RAW_CIPHERLIST: c_int = 110;
    pub const SSL_CTRL_GET_NEGOTIATED_GROUP: c_int = 134;
    pub const SSL_CONF_FLAG_FILE: u32 = 0x2;
    pub const SSL_CONF_FLAG_CLIENT: u32 = 0x4;
    pub const SSL_CONF_FLAG_SERVER: u32 = 0x8;
    pub const SSL_CONF_FLAG_SHOW_ERRORS: u32 = 0x10;
    pub const SSL_CONF_FLAG_CERTIFICATE: u32 = 0x20;
    pub const TLSEXT_NID_UNKNOWN: c_int = 0x1000000;
}

/// `ngx_ssl_error`'s text in its 1 KB buffer (`NGX_MAX_CONF_ERRSTR`): `msg`, then the
/// errors as " (SSL: e1 e2 ...)", each as `ERR_error_string_n` spells it with ":" and
/// its data when it carries text; what does not fit is cut where nginx cuts it.
fn error_text(msg: &str, errors: &[(c_ulong, Option<String>)]) -> String {
    const MAX: usize = 1024;
    let mut out: Vec<u8> = msg.as_bytes()[..msg.len().min(MAX - 1)].to_vec();
    // ngx_cpystrn(p, src, last - p): at most last - p - 1 bytes.
    let append = |out: &mut Vec<u8>, src: &[u8]| {
        let room = (MAX - out.len().min(MAX)).saturating_sub(1);
        out.extend_from_slice(&src[..src.len().min(room)]);
    };
    if !errors.is_empty() {
        append(&mut out, b" (SSL:");
        for (code, data) in errors {
            if out.len() >= MAX - 1 {
                continue;
            }
            out.push(b' ');
            let mut buf = [0 as c_char; 256];
            // SAFETY: the buffer and its length are ours; OpenSSL writes a NUL-terminated
            // string.
            unsafe { ffi::ERR_error_string_n(*code, buf.as_mut_ptr(), buf.len()) };
            // SAFETY: NUL-terminated above.
            let e = unsafe { CStr::from_ptr(buf.as_ptr()) };
            append(&mut out, e.to_bytes());
            if let Some(d) = data.as_deref().filter(|d| !d.is_empty()) {
                if out.len() < MAX {
                    out.push(b':');
                    append(&mut out, d.as_bytes());
                }
            }
        }
        if out.len() < MAX {
            out.push(b')');
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `ngx_ssl_error`'s text of OpenSSL's error queue, emptying it.
pub fn queue_text(msg: &str) -> String {
    let mut errors = Vec::new();
    loop {
        let mut data: *const c_char = std::ptr::null();
        let mut flags: c_int = 0;
        // SAFETY: out-pointers to locals; the data string lives until the error is popped.
        let code = unsafe { ffi::ERR_peek_error_data(&mut data, &mut flags) };
        if code == 0 {
            break;
        }
        let text = if !data.is_null() && flags & ffi::ERR_TXT_STRING != 0 {
            // SAFETY: OpenSSL's NUL-terminated data string, read before the pop below.
            // (A file name's bytes as written: raw bytes go as their stand-ins.)
            Some(crate::core::conf::parser::bytes_to_text(unsafe { CStr::from_ptr(data) }.to_bytes()))
        } else {
            None
        };
        errors.push((code, text));
        // SAFETY: pops the error just read.
        unsafe { ffi::ERR_get_error() };
    }
    error_text(msg, &errors)
}

/// `queue_text` for errors the openssl crate has already taken off the queue.
pub fn stack_text(msg: &str, stack: &ErrorStack) -> String {
    let errors: Vec<(c_ulong, Option<String>)> =
        stack.errors().iter().map(|e| (e.code() as c_ulong, e.data().map(str::to_string))).collect();
    error_text(msg, &errors)
}

/// Empty the error queue (nginx's `ngx_ssl_clear_error`, without its alert: sluice
/// takes every error off the queue where it happens).
pub fn clear_errors() {
    // SAFETY: no arguments.
    unsafe { ffi::ERR_clear_error() };
}

/// A failed TLS call on a connection, as `ngx_ssl_connection_error` logs it: the text
/// ("SSL_read() failed (SSL: ...)"), the system error if there was one, and whether it
/// is one of the errors a peer causes (logged at info for a client, not at crit).
#[derive(Debug)]
pub struct TlsError {
    pub text: String,
    pub os: Option<io::Error>,
    pub peer_caused: bool,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for TlsError {}

impl TlsError {
    /// The level `ngx_ssl_connection_error` picks for a client connection
    /// (`NGX_ERROR_INFO`) or an upstream one (`NGX_ERROR_ERR`).
    pub fn level(&self, client: bool) -> Level {
        match (self.peer_caused, client) {
            (true, true) => Level::Info,
            (true, false) => Level::Error,
            (false, _) => Level::Crit,
        }
    }

    /// The `TlsError` an io::Error carries, if any.
    pub fn of(e: &io::Error) -> Option<&TlsError> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>())
    }
}

/// OpenSSL's reasons (`SSL_R_*`) that nginx takes as a peer's doing: bad or foreign
/// handshakes and the alerts a peer sends. (Not 182, 253, 266: nginx lists them under
/// BoringSSL's names, which OpenSSL 3.0 does not define, so built with OpenSSL they are
/// not there, and OpenSSL's own 182, 253, 266 are logged at crit.)
const PEER_REASONS: &[c_int] = &[
    101, 103, 118, 129, 149, 151, 152, 155, 156, 159, 183, 187, 193, 213, 226, 227, 234, 235, 244, 245, 246, 252, 258,
    267, 281, 335, 336, 337, 338, 345, 373, 377, 396, 1000, 1010, 1020, 1021, 1022, 1030, 1040, 1041, 1042, 1043, 1044,
    1045, 1046, 1047, 1048, 1049, 1050, 1051, 1060, 1070, 1071, 1080, 1090, 1100,
];

/// Turn a failed call's `ssl::Error` into the io::Error the relay sees: `WouldBlock`
/// while OpenSSL waits for the socket, else a `TlsError` with nginx's text.
fn io_error(e: ssl::Error, call: &str) -> io::Error {
    match e.code() {
        ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => match e.io_error() {
            Some(io) if io.kind() != io::ErrorKind::WouldBlock => io::Error::new(io.kind(), io.to_string()),
            _ => io::ErrorKind::WouldBlock.into(),
        },
        ErrorCode::SYSCALL => {
            let os = e.io_error().and_then(|io| io.raw_os_error()).map(io::Error::from_raw_os_error);
            let peer_caused = os.as_ref().is_some_and(crate::core::log::is_ordinary_connection_error);
            let text = match e.ssl_error() {
                Some(stack) => stack_text(call, stack),
                None => call.to_string(),
            };
            io::Error::other(TlsError { text, os, peer_caused })
        }
        _ => {
            let (text, peer_caused) = match e.ssl_error() {
                Some(stack) => (
                    stack_text(call, stack),
                    stack.errors().first().is_some_and(|f| PEER_REASONS.contains(&f.reason_code())),
                ),
                None => (call.to_string(), false),
            };
            io::Error::other(TlsError { text, os: None, peer_caused })
        }
    }
}

/// How a handshake attempt ended.
pub enum Handshake {
    Done,
    /// OpenSSL waits for the socket.
    Again,
    /// The certificate is named with variables: the caller loads it
    /// (`TlsConn::set_certificates`) and goes on with the handshake.
    Certificate,
    /// The peer went away ("peer closed connection in SSL handshake"), with its system
    /// error if any.
    Closed(Option<io::Error>),
    Failed(io::Error),
}

/// A client connection under TLS (server side), over a TCP or unix-domain socket.
pub struct TlsConn {
    stream: SslStream<Conn>,
    handshaked: bool,
    /// Errors OpenSSL left queued by a handshake that succeeded (a signature check
    /// inside certificate verification): nginx's next call on the connection logs them
    /// (`ngx_ssl_clear_error`'s "ignoring stale global SSL error").
    stale: Option<String>,
    /// An error ended the connection: no close_notify is sent (nginx's `c->error`,
    /// `no_send_shutdown`).
    failed: bool,
    /// How a read that returned bytes first ended (the end, `Ok(0)`, or an error):
    /// the next read's answer (nginx's `c->ssl->last`).
    last: Option<io::Result<usize>>,
}

impl TlsConn {
    /// The server side of a client connection.
    pub fn new(ctx: &SslContext, sock: Conn) -> Result<TlsConn, String> {
        let mut ssl = Ssl::new(ctx).map_err(|e| stack_text("SSL_new() failed", &e))?;
        ssl.set_accept_state();
        // ngx_ssl_create_connection: renegotiation is refused on the server side only (an
        // upstream may renegotiate with us), whatever ssl_conf_command did to the context.
        // SAFETY: a live SSL of ours.
        let p = &*ssl as *const ssl::SslRef as *mut ffi::SSL;
        unsafe { ffi::SSL_set_options(p, ssl::SslOptions::NO_RENEGOTIATION.bits()) };
        Self::with(ssl, sock)
    }

    /// The client side of an upstream connection: `sni` to send, a `session` to resume,
    /// and `peer`, the key new sessions are kept under (see `CLIENT_SESSIONS`).
    pub fn client(
        ctx: &SslContext,
        sock: Conn,
        sni: Option<&str>,
        session: Option<&ssl::SslSessionRef>,
        peer: Option<String>,
    ) -> Result<TlsConn, String> {
        clear_errors();
        let mut ssl = Ssl::new(ctx).map_err(|e| stack_text("SSL_new() failed", &e))?;
        ssl.set_connect_state();
        if let Some(name) = sni {
            // nginx copies the name as a C string (ngx_cpystrn): its bytes as they came,
            // UTF-8 or not, up to a NUL.
            let bytes = crate::core::conf::parser::text_to_bytes(name);
            let cut = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            let c = CString::new(&bytes[..cut]).unwrap_or_default();
            // SAFETY: a live SSL and a NUL-terminated name, copied by OpenSSL.
            if unsafe {
                ffi::SSL_set_tlsext_host_name(&*ssl as *const ssl::SslRef as *mut ffi::SSL, c.as_ptr() as *mut c_char)
            } != 1
            {
                let e = openssl::error::ErrorStack::get();
                let shown = crate::core::conf::parser::bytes_to_text(&bytes[..cut]);
                return Err(stack_text(&format!("SSL_set_tlsext_host_name(\"{}\") failed", shown), &e));
            }
        }
        if let Some(sess) = session {
            // SAFETY: the session came from a connection of this same context.
            unsafe { ssl.set_session(sess) }.map_err(|e| stack_text("SSL_set_session() failed", &e))?;
        }
        if let (Some(key), Some(index)) = (peer, session_key_index()) {
            ssl.set_ex_data(index, key);
        }
        Self::with(ssl, sock)
    }

    fn with(ssl: Ssl, sock: Conn) -> Result<TlsConn, String> {
        clear_errors();
        // The relay retries a write from its own buffer, not the first one, and takes
        // what was written record by record (as a socket's partial writes).
        // SAFETY: SSL_set_mode on the SSL just made.
        unsafe {
            ffi::SSL_ctrl(
                &*ssl as *const ssl::SslRef as *mut ffi::SSL,
                ffi::SSL_CTRL_MODE,
                (ffi::SSL_MODE_ENABLE_PARTIAL_WRITE | ffi::SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER) as c_long,
                std::ptr::null_mut(),
            )
        };
        let stream = SslStream::new(ssl, sock).map_err(|e| stack_text("SSL_set_fd() failed", &e))?;
        Ok(TlsConn { stream, handshaked: false, failed: false, stale: None, last: None })
    }

    /// The socket under TLS.
    pub fn sock(&self) -> &Conn {
        self.stream.get_ref()
    }

    pub fn sock_mut(&mut self) -> &mut Conn {
        self.stream.get_mut()
    }

    pub fn ssl(&self) -> &ssl::SslRef {
        self.stream.ssl()
    }

    pub fn handshaked(&self) -> bool {
        self.handshaked
    }

    /// The stale errors of the handshake, once (to be logged at alert).
    pub fn take_stale(&mut self) -> Option<String> {
        self.stale.take()
    }

    /// `ngx_ssl_handshake`.
    pub fn handshake(&mut self) -> Handshake {
        clear_errors();
        match self.stream.do_handshake() {
            Ok(()) => {
                self.handshaked = true;
                let queued = ErrorStack::get();
                if !queued.errors().is_empty() {
                    self.stale = Some(stack_text("ignoring stale global SSL error", &queued));
                }
                Handshake::Done
            }
            Err(e) => {
                if e.code() == ErrorCode::from_raw(ffi::SSL_ERROR_WANT_X509_LOOKUP) {
                    return Handshake::Certificate;
                }
                if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE)
                    && e.io_error().is_none_or(|io| io.kind() == io::ErrorKind::WouldBlock)
                {
                    return Handshake::Again;
                }
                self.failed = true;
                let empty = e.ssl_error().is_none_or(|s| s.errors().is_empty());
                if e.code() == ErrorCode::ZERO_RETURN || (e.code() == ErrorCode::SYSCALL && empty) {
                    let os = e.io_error().and_then(|io| io.raw_os_error()).map(io::Error::from_raw_os_error);
                    return Handshake::Closed(os);
                }
                Handshake::Failed(io_error(e, "SSL_do_handshake() failed"))
            }
        }
    }

    /// Load the certificates for this connection (`ngx_stream_ssl_certificate`: names
    /// evaluated for this session, full paths); the handshake then goes on with them,
    /// or fails when one could not be loaded (nginx's error text is returned).
    pub fn set_certificates(&mut self, pairs: &[(String, String)], pwds: Option<&[Vec<u8>]>) -> Result<(), String> {
        let ssl = self.stream.ssl() as *const ssl::SslRef as *mut ffi::SSL;
        // Without a password file, no password (nginx's ngx_ssl_preserve_passwords with
        // none): an encrypted key fails at once instead of OpenSSL's default callback
        // asking on the terminal, which would block the worker.
        let pwds = Some(pwds.unwrap_or(&[]));
        let r = pairs.iter().try_for_each(|(c, k)| use_certificate(CertTarget::Ssl(ssl), c, k, pwds).map(|_| ()));
        // SAFETY: the slot holds a plain number, not a pointer.
        unsafe { ffi::SSL_set_ex_data(ssl, cert_state_index(), if r.is_ok() { 1 } else { 2 } as *mut c_void) };
        r
    }

    /// The connection is in error (nginx's `c->error`): it ends without close_notify.
    pub fn abandon(&mut self) {
        self.failed = true;
    }

    /// `ngx_ssl_recv`: bytes, 0 at the end (close_notify or the socket's end), or
    /// `WouldBlock`. As nginx's, it reads record after record until `buf` is full or
    /// nothing more has come (one SSL_read gives at most the rest of one record), so a
    /// rate limit paces what was read, not the peer's record sizes.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(last) = self.last.take() {
            return last;
        }
        clear_errors();
        let mut bytes = 0;
        loop {
            match self.read_record(&mut buf[bytes..]) {
                Ok(n) if n > 0 => {
                    bytes += n;
                    if bytes == buf.len() {
                        return Ok(bytes);
                    }
                }
                Err(e) if bytes > 0 && e.kind() == io::ErrorKind::WouldBlock => return Ok(bytes),
                end if bytes > 0 => {
                    self.last = Some(end);
                    return Ok(bytes);
                }
                r => return r,
            }
        }
    }

    /// One SSL_read.
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stream.ssl_read(buf) {
            Ok(n) => Ok(n),
            // ngx_ssl_handle_recv: a close_notify, or a failure that left OpenSSL's error
            // queue empty (an end of file, a reset), is the peer's end, silently ("peer
            // shutdown SSL cleanly"); no close_notify is sent back.
            Err(e)
                if e.code() == ErrorCode::ZERO_RETURN
                    || (!matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE)
                        && e.ssl_error().is_none_or(|st| st.errors().is_empty())) =>
            {
                self.failed = true;
                Ok(0)
            }
            Err(e) => {
                let err = io_error(e, "SSL_read() failed");
                self.failed |= err.kind() != io::ErrorKind::WouldBlock;
                Err(err)
            }
        }
    }

    /// `ngx_ssl_write`.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        clear_errors();
        match self.stream.ssl_write(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                // After the peer's close_notify OpenSSL says ZERO_RETURN where it means a
                // system error (nginx takes it so).
                let err = if e.code() == ErrorCode::ZERO_RETURN {
                    let os = e.io_error().and_then(|io| io.raw_os_error()).map(io::Error::from_raw_os_error);
                    let peer_caused = os.as_ref().is_some_and(crate::core::log::is_ordinary_connection_error);
                    io::Error::other(TlsError { text: "SSL_write() failed".to_string(), os, peer_caused })
                } else {
                    io_error(e, "SSL_write() failed")
                };
                self.failed |= err.kind() != io::ErrorKind::WouldBlock;
                Err(err)
            }
        }
    }

    /// `ngx_ssl_shutdown` for a client connection: send a close_notify after a completed
    /// handshake and read the client's; `Ok(false)` while it has not come (the caller
    /// waits for the socket, 3 s at most, then calls with `timed_out`). After an error,
    /// a timeout or the peer's own end, nothing more is sent.
    pub fn close_step(&mut self, timed_out: bool) -> io::Result<bool> {
        if !self.handshaked {
            return Ok(true);
        }
        if timed_out || self.failed {
            self.stream.set_shutdown(ssl::ShutdownState::SENT | ssl::ShutdownState::RECEIVED);
            return Ok(true);
        }
        clear_errors();
        for attempt in 0..2 {
            match self.stream.shutdown() {
                Ok(ssl::ShutdownResult::Received) => return Ok(true),
                // The close_notify went out: the second call reads the client's.
                Ok(ssl::ShutdownResult::Sent) if attempt == 0 => continue,
                Ok(ssl::ShutdownResult::Sent) => return Ok(true),
                Err(e) => {
                    if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) {
                        return Ok(false);
                    }
                    if e.code() == ErrorCode::ZERO_RETURN || e.ssl_error().is_none_or(|st| st.errors().is_empty()) {
                        return Ok(true);
                    }
                    self.failed = true;
                    return Err(io_error(e, "SSL_shutdown() failed"));
                }
            }
        }
        Ok(true)
    }

    /// `ngx_ssl_shutdown` with `no_wait_shutdown` (an upstream connection): send a
    /// close_notify after a completed handshake, without waiting for the peer's.
    pub fn shutdown(&mut self) {
        if !self.handshaked || self.failed {
            return;
        }
        let st = self.stream.get_shutdown() | ssl::ShutdownState::RECEIVED;
        self.stream.set_shutdown(st);
        clear_errors();
        let _ = self.stream.shutdown();
        clear_errors();
    }
}

impl Drop for TlsConn {
    /// A connection ends as nginx ends it, marked shut down both ways whatever was sent:
    /// OpenSSL would otherwise take the session of an unclean end as bad and drop it
    /// from its cache (and an upstream's kept session could not resume).
    fn drop(&mut self) {
        let st = ssl::ShutdownState::SENT | ssl::ShutdownState::RECEIVED;
        self.stream.set_shutdown(st);
    }
}

/// At most this many upstream peers keep a session in a worker.
const MAX_CLIENT_SESSIONS: usize = 4096;

thread_local! {
    /// Upstream TLS sessions to resume, per peer (nginx keeps one on each round-robin
    /// peer, `ngx_stream_upstream_save_round_robin_peer_session`); per worker.
    pub static CLIENT_SESSIONS: std::cell::RefCell<std::collections::HashMap<String, ssl::SslSession>> =
        Default::default();
}

/// The ex_data slot saying whether a connection's certificates (named with variables)
/// are loaded: 0 not yet, 1 loaded, 2 failed.
fn cert_state_index() -> c_int {
    static INDEX: std::sync::OnceLock<c_int> = std::sync::OnceLock::new();
    // SAFETY: registers a new ex_data index without callbacks.
    *INDEX.get_or_init(|| unsafe { ffi::SSL_get_ex_new_index(0, std::ptr::null_mut(), None, None, None) })
}

/// The certificate callback of a context whose certificates are named with variables:
/// suspend the handshake (`SSL_ERROR_WANT_X509_LOOKUP`) until the session loaded them.
unsafe extern "C" fn cert_cb(ssl: *mut ffi::SSL, _: *mut c_void) -> c_int {
    // SAFETY: reading our own slot of a live SSL.
    match unsafe { ffi::SSL_get_ex_data(ssl, cert_state_index()) } as usize {
        1 => 1,
        2 => 0,
        _ => -1,
    }
}

/// Certificates come per handshake (see `Handshake::Certificate`).
pub fn set_cert_callback(b: &mut openssl::ssl::SslContextBuilder) {
    cert_state_index();
    // SAFETY: installs a callback that only reads the SSL's ex_data.
    unsafe { ffi::SSL_CTX_set_cert_cb(b.as_ptr(), Some(cert_cb), std::ptr::null_mut()) };
}

/// A key of `ssl_session_ticket_key` (a 48- or 80-byte file): AES-128 or AES-256 in CBC
/// mode with HMAC-SHA256 (nginx's `ngx_ssl_session_ticket_key_t`).
#[derive(Clone)]
pub struct TicketKey {
    pub name: [u8; 16],
    pub aes: Vec<u8>,
    pub hmac: Vec<u8>,
}

impl TicketKey {
    /// The key of a file's bytes: name, AES and HMAC keys (48 bytes) or name, HMAC and
    /// AES keys (80 bytes), as nginx reads them.
    pub fn from_file_bytes(b: &[u8]) -> Option<TicketKey> {
        let mut name = [0u8; 16];
        name.copy_from_slice(b.get(..16)?);
        match b.len() {
            48 => Some(TicketKey { name, aes: b[16..32].to_vec(), hmac: b[32..48].to_vec() }),
            80 => Some(TicketKey { name, hmac: b[16..48].to_vec(), aes: b[48..80].to_vec() }),
            _ => None,
        }
    }

    fn cipher(&self) -> *const ffi::EVP_CIPHER {
        // SAFETY: OpenSSL's static cipher descriptions.
        unsafe {
            if self.aes.len() == 16 {
                ffi::EVP_aes_128_cbc()
            } else {
                ffi::EVP_aes_256_cbc()
            }
        }
    }
}

/// The context's ex_data slot for its ticket keys (None only if OpenSSL had no slot
/// to give, when ticket keys cannot be used).
fn ticket_keys_index() -> Option<openssl::ex_data::Index<openssl::ssl::SslContext, Vec<TicketKey>>> {
    type Idx = openssl::ex_data::Index<openssl::ssl::SslContext, Vec<TicketKey>>;
    static INDEX: std::sync::OnceLock<Option<Idx>> = std::sync::OnceLock::new();
    *INDEX.get_or_init(|| openssl::ssl::SslContext::new_ex_index().ok())
}

/// `ngx_ssl_session_ticket_key_callback`: tickets made with the first key, read with
/// any (renewed when the key was not the first, or under TLSv1.3).
unsafe extern "C" fn ticket_key_cb(
    ssl: *mut ffi::SSL,
    name: *mut u8,
    iv: *mut u8,
    ectx: *mut ffi::EVP_CIPHER_CTX,
    hctx: *mut ffi::HMAC_CTX,
    enc: c_int,
) -> c_int {
    // SAFETY: OpenSSL passes a live SSL, a 16-byte name, an IV buffer and the contexts to
    // set up; the keys belong to the SSL's context.
    unsafe {
        let ctx = ffi::SSL_get_SSL_CTX(ssl);
        let Some(index) = ticket_keys_index() else { return -1 };
        let keys = ffi::SSL_CTX_get_ex_data(ctx, index.as_raw()) as *const Vec<TicketKey>;
        let Some(keys) = keys.as_ref() else { return -1 };
        let Some(first) = keys.first() else { return -1 };
        if enc == 1 {
            let cipher = first.cipher();
            if ffi::RAND_bytes(iv, ffi::EVP_CIPHER_iv_length(cipher)) != 1
                || ffi::EVP_EncryptInit_ex(ectx, cipher, std::ptr::null_mut(), first.aes.as_ptr(), iv) != 1
                || ffi::HMAC_Init_ex(
                    hctx,
                    first.hmac.as_ptr().cast(),
                    first.hmac.len() as c_int,
                    ffi::EVP_sha256(),
                    std::ptr::null_mut(),
                ) != 1
            {
                clear_errors();
                return -1;
            }
            std::ptr::copy_nonoverlapping(first.name.as_ptr(), name, 16);
            return 1;
        }
        let wanted = std::slice::from_raw_parts(name, 16);
        let Some(i) = keys.iter().position(|k| k.name[..] == *wanted) else { return 0 };
        let k = &keys[i];
        if ffi::HMAC_Init_ex(
            hctx,
            k.hmac.as_ptr().cast(),
            k.hmac.len() as c_int,
            ffi::EVP_sha256(),
            std::ptr::null_mut(),
        ) != 1
            || ffi::EVP_DecryptInit_ex(ectx, k.cipher(), std::ptr::null_mut(), k.aes.as_ptr(), iv) != 1
        {
            clear_errors();
            return -1;
        }
        if ffi::SSL_version(ssl) == 0x0304 || i != 0 {
            return 2;
        }
        1
    }
}

/// `ssl_session_ticket_key`: tickets under these keys instead of the context's own.
pub fn set_ticket_keys(b: &mut openssl::ssl::SslContextBuilder, keys: Vec<TicketKey>) -> Result<(), String> {
    let index = ticket_keys_index().ok_or_else(|| queue_text("SSL_CTX_get_ex_new_index() failed"))?;
    b.set_ex_data(index, keys);
    type Cb = unsafe extern "C" fn(
        *mut ffi::SSL,
        *mut u8,
        *mut u8,
        *mut ffi::EVP_CIPHER_CTX,
        *mut ffi::HMAC_CTX,
        c_int,
    ) -> c_int;
    let cb: Cb = ticket_key_cb;
    // SAFETY: SSL_CTX_set_tlsext_ticket_key_cb, a callback of OpenSSL's expected type
    // passed as the generic function pointer the control call takes.
    unsafe {
        let fp: unsafe extern "C" fn() = std::mem::transmute::<Cb, unsafe extern "C" fn()>(cb);
        ffi::SSL_CTX_callback_ctrl__fixed_rust(b.as_ptr(), 72 /* SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB */, Some(fp));
    }
    Ok(())
}

/// The ex_data slot holding an upstream connection's session key.
fn session_key_index() -> Option<openssl::ex_data::Index<Ssl, String>> {
    static INDEX: std::sync::OnceLock<Option<openssl::ex_data::Index<Ssl, String>>> = std::sync::OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// `ngx_ssl_client_session_cache` + `ngx_ssl_new_client_session`: new sessions of an
/// upstream connection are kept for its peer.
pub fn keep_client_sessions(b: &mut openssl::ssl::SslContextBuilder) {
    b.set_session_cache_mode(ssl::SslSessionCacheMode::CLIENT | ssl::SslSessionCacheMode::NO_INTERNAL);
    b.set_new_session_callback(|ssl, session| {
        if let Some(key) = session_key_index().and_then(|i| ssl.ex_data(i)) {
            let key = key.clone();
            if shared_put(&key, &session) {
                return;
            }
            CLIENT_SESSIONS.with(|m| {
                let mut m = m.borrow_mut();
                // Peers of names resolved per session come and go: keep the map bounded.
                if m.len() >= MAX_CLIENT_SESSIONS && !m.contains_key(&key) {
                    m.clear();
                }
                m.insert(key, session);
            });
        }
    });
}

/// The session kept for `peer`, if any.
pub fn client_session(peer: &str) -> Option<ssl::SslSession> {
    if let Some(s) = shared_get(peer) {
        return s;
    }
    CLIENT_SESSIONS.with(|m| m.borrow().get(peer).cloned())
}

/// Where a peer's upstream session lives in its upstream's zone: nginx keeps it there
/// when the upstream has one (`ngx_stream_upstream_save_round_robin_peer_session`), so
/// a session one worker made is resumed by every worker.
pub struct SharedSession {
    pub shm: std::rc::Rc<crate::core::shm::Shm>,
    /// The upstream region's lock.
    pub lock: usize,
    pub offset: usize,
}

/// The bytes a peer's shared session takes: its length, then the DER form, up to
/// nginx's `NGX_SSL_MAX_SESSION_SIZE`.
pub const SHARED_SESSION_SIZE: usize = 8 + 4096;

thread_local! {
    /// Peers whose sessions live in their upstream's zone, by `CLIENT_SESSIONS`'s key.
    static SHARED_CLIENT_SESSIONS: std::cell::RefCell<std::collections::HashMap<String, SharedSession>> =
        Default::default();
}

/// This worker's configuration keeps its peers' sessions in these places (the old
/// configuration's are forgotten).
pub fn share_client_sessions(places: Vec<(String, SharedSession)>) {
    SHARED_CLIENT_SESSIONS.with(|m| *m.borrow_mut() = places.into_iter().collect());
}

/// The shared session of `key`: None if the peer has no place in a zone.
fn shared_get(key: &str) -> Option<Option<ssl::SslSession>> {
    SHARED_CLIENT_SESSIONS.with(|m| {
        let m = m.borrow();
        let p = m.get(key)?;
        let der = (|| {
            let _g = crate::core::shm::SpinGuard::lock(p.shm.lock_at(p.lock)?);
            let b = p.shm.bytes(p.offset, SHARED_SESSION_SIZE)?;
            let n = (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).min(SHARED_SESSION_SIZE - 8);
            (n > 0).then(|| b[8..8 + n].to_vec())
        })();
        Some(der.and_then(|d| ssl::SslSession::from_der(&d).ok()))
    })
}

/// Keep `session` in its peer's place in the zone; false if the peer has none.
fn shared_put(key: &str, session: &ssl::SslSessionRef) -> bool {
    SHARED_CLIENT_SESSIONS.with(|m| {
        let m = m.borrow();
        let Some(p) = m.get(key) else { return false };
        let Ok(der) = session.to_der() else { return true };
        if der.len() > SHARED_SESSION_SIZE - 8 {
            return true;
        }
        if let Some(lock) = p.shm.lock_at(p.lock) {
            let _g = crate::core::shm::SpinGuard::lock(lock);
            if let Some(b) = p.shm.bytes(p.offset, SHARED_SESSION_SIZE) {
                b[..4].copy_from_slice(&(der.len() as u32).to_le_bytes());
                b[8..8 + der.len()].copy_from_slice(&der);
            }
        }
        true
    })
}

/// What an OpenSSL printer writes into a memory BIO.
fn print_to_string(print: impl FnOnce(*mut ffi::BIO)) -> String {
    // SAFETY: a memory BIO made, written by `print`, read and freed here.
    unsafe {
        let bio = ffi::BIO_new(ffi::BIO_s_mem());
        if bio.is_null() {
            return String::new();
        }
        print(bio);
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = ffi::BIO_read(bio, buf.as_mut_ptr().cast(), buf.len() as c_int);
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        ffi::BIO_free_all(bio);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// `$ssl_client_s_dn` / `$ssl_client_i_dn`: the name as RFC 2253 prints it
/// (`X509_NAME_print_ex` with `XN_FLAG_RFC2253`).
pub fn rfc2253(name: &openssl::x509::X509NameRef) -> String {
    const XN_FLAG_RFC2253: std::os::raw::c_ulong = 0x317 | (1 << 16) | (1 << 20) | (1 << 24);
    let p = name as *const openssl::x509::X509NameRef as *mut ffi::X509_NAME;
    // SAFETY: printing a live name into the BIO.
    print_to_string(|bio| unsafe {
        ffi::X509_NAME_print_ex(bio, p, 0, XN_FLAG_RFC2253);
    })
}

/// `$ssl_client_serial`: `i2a_ASN1_INTEGER`'s hex.
pub fn serial(cert: &openssl::x509::X509Ref) -> String {
    let sn = cert.serial_number() as *const openssl::asn1::Asn1IntegerRef as *mut ffi::ASN1_INTEGER;
    // SAFETY: printing the certificate's own serial number into the BIO.
    print_to_string(|bio| unsafe {
        ffi::i2a_ASN1_INTEGER(bio, sn);
    })
}

/// `ngx_ssl_session_id_context`: SHA-1 over the module's name ("STREAM"), the
/// certificates' digests (the last loaded first), the names of certificates loaded per
/// handshake, and the client CA names: a session resumes only where all of these agree,
/// and agree with nginx's (a ticket made by nginx with the same key resumes here).
pub fn session_id_context(
    b: &mut openssl::ssl::SslContextBuilder,
    digests: &[[u8; 20]],
    dynamic_names: &[String],
) -> Result<(), String> {
    let mut sha = openssl::sha::Sha1::new();
    sha.update(b"STREAM");
    for d in digests.iter().rev() {
        sha.update(d);
    }
    for n in dynamic_names {
        sha.update(n.as_bytes());
    }
    // SAFETY: the builder's context's own CA name list, read only.
    unsafe {
        let list = ffi::SSL_CTX_get_client_CA_list(b.as_ptr());
        if !list.is_null() {
            let n = ffi::OPENSSL_sk_num(list.cast());
            for i in 0..n {
                let name = ffi::OPENSSL_sk_value(list.cast(), i) as *const ffi::X509_NAME;
                let mut buf = [0u8; 64];
                let mut len: std::os::raw::c_uint = 0;
                if ffi::X509_NAME_digest(name, ffi::EVP_sha1(), buf.as_mut_ptr(), &mut len) == 0 {
                    return Err(queue_text("X509_NAME_digest() failed"));
                }
                sha.update(&buf[..len as usize]);
            }
        }
    }
    b.set_session_id_context(&sha.finish()).map_err(|e| stack_text("SSL_CTX_set_session_id_context() failed", &e))
}

/// The SNI name the client sent, its bytes as they came (`SSL_get_servername`; the
/// openssl crate's `servername` gives none for a name that is not UTF-8).
pub fn servername(ssl: &ssl::SslRef) -> &[u8] {
    // SAFETY: a live SSL; the name, when there is one, is a C string owned by it, which
    // lives as long as the borrow of `ssl`.
    unsafe {
        let p = ffi::SSL_get_servername(ssl as *const ssl::SslRef as *mut ffi::SSL, ffi::TLSEXT_NAMETYPE_host_name);
        if p.is_null() {
            &[]
        } else {
            CStr::from_ptr(p).to_bytes()
        }
    }
}

/// `ngx_ssl_check_host`: the peer certificate is for `name`.
pub fn check_host(ssl: &ssl::SslRef, name: &str) -> bool {
    let Some(cert) = ssl.peer_certificate() else { return false };
    // The name's bytes as they came: one with a NUL in it matches nothing, as in nginx.
    let bytes = crate::core::conf::parser::text_to_bytes(name);
    let cname = CString::new(&*bytes).unwrap_or_default();
    let (ptr, len) =
        if bytes.is_empty() { (cname.as_ptr(), 0) } else { (bytes.as_ptr() as *const c_char, bytes.len()) };
    let c: &openssl::x509::X509Ref = &cert;
    // SAFETY: X509_check_host on a live certificate and `len` bytes of name (a length of
    // 0 reads the empty C string).
    unsafe {
        ffi::X509_check_host(c as *const openssl::x509::X509Ref as *mut ffi::X509, ptr, len, 0, std::ptr::null_mut())
            == 1
    }
}

/// The password callback (`ngx_ssl_password_callback`): the password tried now, or
/// none, so that an encrypted key without `ssl_password_file` fails instead of asking
/// on a terminal.
extern "C" fn password_cb(buf: *mut c_char, size: c_int, rwflag: c_int, u: *mut c_void) -> c_int {
    if rwflag != 0 || u.is_null() || size <= 0 {
        return 0;
    }
    // SAFETY: `u` points at the password slice passed to PEM_read_bio_PrivateKey below,
    // alive for the call.
    let pwd: &Vec<u8> = unsafe { &*(u as *const Vec<u8>) };
    let n = pwd.len().min(size as usize);
    if pwd.len() > size as usize {
        crate::core::log::error(Level::Error, &format!("password is truncated to {} bytes", size), None);
    }
    // SAFETY: `buf` has room for `size` bytes; n <= size.
    unsafe { std::ptr::copy_nonoverlapping(pwd.as_ptr(), buf.cast::<u8>(), n) };
    n as c_int
}

/// A BIO over `name`: the file (under the configuration prefix), or the text after
/// "data:".
fn open_bio(name: &str) -> Result<*mut ffi::BIO, &'static str> {
    if let Some(data) = name.strip_prefix("data:") {
        // SAFETY: BIO_new_mem_buf copies nothing: the configuration outlives the BIO's use
        // here (it is freed before this function's caller returns).
        let bio = unsafe { ffi::BIO_new_mem_buf(data.as_ptr().cast(), data.len() as c_int) };
        return if bio.is_null() { Err("BIO_new_mem_buf() failed") } else { Ok(bio) };
    }
    let path = cstring(name);
    // SAFETY: NUL-terminated path and mode.
    let bio = unsafe { ffi::BIO_new_file(path.as_ptr(), c"r".as_ptr()) };
    if bio.is_null() {
        Err("BIO_new_file() failed")
    } else {
        Ok(bio)
    }
}

/// Where a certificate goes: a context (configuration time) or one connection (a
/// certificate named with variables, at handshake time).
#[derive(Clone, Copy)]
pub enum CertTarget {
    Ctx(*mut ffi::SSL_CTX),
    Ssl(*mut ffi::SSL),
}

/// `ngx_ssl_certificate` / `ngx_ssl_connection_certificate`: a certificate, its chain
/// and its key (full names, or "data:" and the PEM text) into `target`, or nginx's
/// error text.
///
/// Returns the certificate's SHA-1 digest (the session id context is made of them).
pub fn use_certificate(
    target: CertTarget,
    cert: &str,
    key: &str,
    pwds: Option<&[Vec<u8>]>,
) -> Result<[u8; 20], String> {
    let mut digest = [0u8; 20];
    let prefix = match target {
        CertTarget::Ctx(_) => "SSL_CTX_",
        CertTarget::Ssl(_) => "SSL_",
    };
    let fail = |what: &str| queue_text(&format!("cannot load certificate \"{}\": {}", cert, what));
    let bio = open_bio(cert).map_err(fail)?;
    // SAFETY: reading PEM from a live BIO; every object made is freed or handed over.
    unsafe {
        let x509 = ffi::PEM_read_bio_X509_AUX(bio, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        if x509.is_null() {
            ffi::BIO_free_all(bio);
            return Err(fail("PEM_read_bio_X509_AUX() failed"));
        }
        let chain = ffi::OPENSSL_sk_new_null();
        loop {
            let x = ffi::PEM_read_bio_X509(bio, std::ptr::null_mut(), None, std::ptr::null_mut());
            if x.is_null() {
                let n = ffi::ERR_peek_last_error();
                if ffi::ERR_GET_LIB(n) == ffi::ERR_LIB_PEM && ffi::ERR_GET_REASON(n) == ffi::PEM_R_NO_START_LINE {
                    ffi::ERR_clear_error();
                    break;
                }
                ffi::BIO_free_all(bio);
                ffi::X509_free(x509);
                free_chain(chain);
                return Err(fail("PEM_read_bio_X509() failed"));
            }
            ffi::OPENSSL_sk_push(chain, x.cast());
        }
        ffi::BIO_free_all(bio);
        let used = match target {
            CertTarget::Ctx(ctx) => ffi::SSL_CTX_use_certificate(ctx, x509),
            CertTarget::Ssl(ssl) => ffi::SSL_use_certificate(ssl, x509),
        };
        if used == 0 {
            ffi::X509_free(x509);
            free_chain(chain);
            return Err(queue_text(&format!("{}use_certificate(\"{}\") failed", prefix, cert)));
        }
        let mut len: std::os::raw::c_uint = 0;
        ffi::X509_digest(x509, ffi::EVP_sha1(), digest.as_mut_ptr(), &mut len);
        ffi::X509_free(x509);
        let set = match target {
            CertTarget::Ctx(ctx) => ffi::SSL_CTX_ctrl(ctx, ffi::SSL_CTRL_CHAIN, 0, chain.cast()),
            CertTarget::Ssl(ssl) => ffi::SSL_ctrl(ssl, ffi::SSL_CTRL_CHAIN, 0, chain.cast()),
        };
        if set == 0 {
            free_chain(chain);
            return Err(queue_text(&format!("{}set0_chain(\"{}\") failed", prefix, cert)));
        }
    }
    let kfail = |what: &str| queue_text(&format!("cannot load certificate key \"{}\": {}", key, what));
    let pkey = if let Some(spec) = key.strip_prefix("engine:") {
        engine_key(spec).map_err(|what| {
            // nginx cuts the name at the engine's end for the lookup and restores it
            // only once the engine is found: its message names "engine:ID".
            let shown = match (what, spec.split_once(':')) {
                ("ENGINE_by_id() failed", Some((id, _))) => format!("engine:{}", id),
                _ => key.to_string(),
            };
            queue_text(&format!("cannot load certificate key \"{}\": {}", shown, what))
        })?
    } else {
        read_key(key, pwds).map_err(kfail)?
    };
    // SAFETY: the key read above, handed over or freed here.
    unsafe {
        let used = match target {
            CertTarget::Ctx(ctx) => ffi::SSL_CTX_use_PrivateKey(ctx, pkey),
            CertTarget::Ssl(ssl) => ffi::SSL_use_PrivateKey(ssl, pkey),
        };
        if used == 0 {
            ffi::EVP_PKEY_free(pkey);
            return Err(queue_text(&format!("{}use_PrivateKey(\"{}\") failed", prefix, key)));
        }
        ffi::EVP_PKEY_free(pkey);
    }
    Ok(digest)
}

/// "engine:ID:KEY": the key from an OpenSSL engine (`ENGINE_load_private_key`).
fn engine_key(spec: &str) -> Result<*mut ffi::EVP_PKEY, &'static str> {
    let Some((id, name)) = spec.split_once(':') else { return Err("invalid syntax") };
    let (cid, cname) = (cstring(id), cstring(name));
    // SAFETY: engine calls with NUL-terminated strings; the engine is freed here.
    unsafe {
        let e = ffi::ENGINE_by_id(cid.as_ptr());
        if e.is_null() {
            return Err("ENGINE_by_id() failed");
        }
        let k = ffi::ENGINE_load_private_key(e, cname.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut());
        ffi::ENGINE_free(e);
        if k.is_null() {
            return Err("ENGINE_load_private_key() failed");
        }
        Ok(k)
    }
}

/// `ssl_engine NAME` (ngx_openssl_engine): the engine OpenSSL uses by default.
pub fn set_default_engine(name: &str) -> Result<(), String> {
    let cname = cstring(name);
    // SAFETY: engine calls with a NUL-terminated name; the reference is freed here.
    unsafe {
        let e = ffi::ENGINE_by_id(cname.as_ptr());
        if e.is_null() {
            return Err(queue_text(&format!("ENGINE_by_id(\"{}\") failed", name)));
        }
        let ok = ffi::ENGINE_set_default(e, 0xFFFF /* ENGINE_METHOD_ALL */);
        if ok == 0 {
            ffi::ENGINE_free(e);
            return Err(queue_text(&format!("ENGINE_set_default(\"{}\", ENGINE_METHOD_ALL) failed", name)));
        }
        ffi::ENGINE_free(e);
    }
    Ok(())
}

/// A PEM private key from a file or "data:", tried with each password in turn; without
/// a password file OpenSSL asks on the terminal, as it does for nginx.
fn read_key(key: &str, pwds: Option<&[Vec<u8>]>) -> Result<*mut ffi::EVP_PKEY, &'static str> {
    let bio = open_bio(key)?;
    let none: &[Vec<u8>] = &[];
    let tries = pwds.unwrap_or(none);
    let cb: Option<unsafe extern "C" fn(*mut c_char, c_int, c_int, *mut c_void) -> c_int> =
        if pwds.is_some() { Some(password_cb) } else { None };
    // SAFETY: reading PEM from a live BIO, freed here; each password outlives its call.
    unsafe {
        let mut i = 0;
        let pkey = loop {
            let u = tries.get(i).map_or(std::ptr::null_mut(), |p| p as *const Vec<u8> as *mut c_void);
            let k = ffi::PEM_read_bio_PrivateKey(bio, std::ptr::null_mut(), cb, u);
            if !k.is_null() {
                break k;
            }
            i += 1;
            if i < tries.len() {
                ffi::ERR_clear_error();
                ffi::BIO_ctrl(bio, 1 /* BIO_CTRL_RESET */, 0, std::ptr::null_mut());
                continue;
            }
            ffi::BIO_free_all(bio);
            return Err("PEM_read_bio_PrivateKey() failed");
        };
        ffi::BIO_free_all(bio);
        Ok(pkey)
    }
}

/// Free a chain that was not handed to the context.
unsafe fn free_chain(chain: *mut ffi::OPENSSL_STACK) {
    // SAFETY: the caller's chain of X509s.
    unsafe {
        while ffi::OPENSSL_sk_num(chain.cast()) > 0 {
            let x = ffi::OPENSSL_sk_pop(chain);
            ffi::X509_free(x.cast());
        }
        ffi::OPENSSL_sk_free(chain);
    }
}

/// `$ssl_ciphers`: the ciphers the client offered, in its order, by name; one OpenSSL
/// does not know as "0x" and its bytes in hex (`SSL_get0_raw_cipherlist`).
pub fn client_ciphers(ssl: &ssl::SslRef) -> String {
    let p = ssl as *const ssl::SslRef as *mut ffi::SSL;
    let mut list: *mut u8 = std::ptr::null_mut();
    // SAFETY: SSL_get0_raw_cipherlist: the bytes per cipher, then the list the SSL owns.
    let (bytes, n) = unsafe {
        let bytes = ffi::SSL_ctrl(p, ffi::SSL_CTRL_GET_RAW_CIPHERLIST, 0, std::ptr::null_mut());
        let n = ffi::SSL_ctrl(p, ffi::SSL_CTRL_GET_RAW_CIPHERLIST, 0, (&mut list as *mut *mut u8).cast());
        (bytes, n)
    };
    if n <= 0 || bytes <= 0 || list.is_null() {
        return String::new();
    }
    let bytes = bytes as usize;
    // SAFETY: the list has n bytes.
    let raw = unsafe { std::slice::from_raw_parts(list, n as usize) };
    let mut out = Vec::new();
    for id in raw.chunks_exact(bytes) {
        // SAFETY: looks a cipher up by its wire bytes.
        let c = unsafe { ffi::SSL_CIPHER_find(p, id.as_ptr()) };
        // SAFETY: a known cipher's static name.
        let name = if c.is_null() { std::ptr::null() } else { unsafe { ffi::SSL_CIPHER_get_name(c) } };
        if name.is_null() {
            out.push(format!("0x{}", id.iter().map(|b| format!("{:02x}", b)).collect::<String>()));
        } else {
            // SAFETY: as above.
            out.push(unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned());
        }
    }
    out.join(":")
}

fn curve_name(nid: c_int) -> String {
    if nid & ffi::TLSEXT_NID_UNKNOWN != 0 {
        return format!("0x{:04x}", nid & 0xffff);
    }
    // SAFETY: OBJ_nid2sn returns a static string or NULL.
    let sn = unsafe { ffi::OBJ_nid2sn(nid) };
    if sn.is_null() {
        return String::new();
    }
    // SAFETY: as above.
    unsafe { CStr::from_ptr(sn) }.to_string_lossy().into_owned()
}

/// `$ssl_curves`: the client's supported groups.
pub fn client_curves(ssl: &ssl::SslRef) -> String {
    let p = ssl as *const ssl::SslRef as *mut ffi::SSL;
    // SAFETY: SSL_get1_curves with a null list returns the count.
    let n = unsafe { ffi::SSL_ctrl(p, ffi::SSL_CTRL_GET_CURVES, 0, std::ptr::null_mut()) };
    if n <= 0 {
        return String::new();
    }
    let mut nids = vec![0 as c_int; n as usize];
    // SAFETY: the list has room for n entries.
    unsafe { ffi::SSL_ctrl(p, ffi::SSL_CTRL_GET_CURVES, 0, nids.as_mut_ptr().cast()) };
    nids.iter().map(|&nid| curve_name(nid)).collect::<Vec<_>>().join(":")
}

/// `$ssl_curve`: the group agreed on (`SSL_get_negotiated_group`).
pub fn shared_curve(ssl: &ssl::SslRef) -> String {
    // OpenSSL 3.0 reads the session's group without checking that there is a session:
    // after a failed handshake there is none (nginx's worker dies on signal 11 there).
    if ssl.session().is_none() {
        return String::new();
    }
    let p = ssl as *const ssl::SslRef as *mut ffi::SSL;
    // SAFETY: a read-only control call on a live SSL with a session.
    let nid = unsafe { ffi::SSL_ctrl(p, ffi::SSL_CTRL_GET_NEGOTIATED_GROUP, 0, std::ptr::null_mut()) };
    if nid <= 0 {
        return String::new();
    }
    curve_name(nid as c_int)
}

/// Set the session timeout (`SSL_CTX_set_timeout`).
pub fn set_session_timeout(b: &mut openssl::ssl::SslContextBuilder, secs: u64) {
    // SAFETY: the builder's live context.
    unsafe { ffi::SSL_CTX_set_timeout(b.as_ptr(), secs.min(c_long::MAX as u64) as c_long) };
}

/// A path or value as a C string (configuration values hold no NUL: the reader
/// refuses them).
pub fn cstring(s: &str) -> CString {
    // A configuration word's bytes as written (a Latin-1 file name stays Latin-1).
    let mut b = crate::core::conf::parser::text_to_bytes(s).into_owned();
    b.retain(|&c| c != 0);
    CString::new(b).unwrap_or_default()
}

/// `SSL_CTX_load_verify_locations(ctx, path, NULL)` with the path's bytes as written (the
/// openssl crate's `set_ca_file` wants UTF-8 and panics on other names); an error is
/// left on OpenSSL's queue for `queue_text`.
pub fn load_verify_locations(b: &mut openssl::ssl::SslContextBuilder, path: &str) -> bool {
    let cpath = cstring(path);
    // SAFETY: the builder's live context and a NUL-terminated path.
    unsafe { ffi::SSL_CTX_load_verify_locations(b.as_ptr(), cpath.as_ptr(), std::ptr::null()) == 1 }
}

/// `SSL_load_client_CA_file(path)` then `SSL_CTX_set_client_CA_list`, the path's bytes as
/// written (see `load_verify_locations`); false with the error on OpenSSL's queue.
pub fn load_client_ca_list(b: &mut openssl::ssl::SslContextBuilder, path: &str) -> bool {
    let cpath = cstring(path);
    // SAFETY: a NUL-terminated path; the list, when there is one, goes to the context,
    // which frees it.
    unsafe {
        let names = ffi::SSL_load_client_CA_file(cpath.as_ptr());
        if names.is_null() {
            return false;
        }
        ffi::SSL_CTX_set_client_CA_list(b.as_ptr(), names);
    }
    true
}

/// Drop every session in `ctx`'s built-in cache through its remove callback
/// (`SSL_CTX_free`'s flush, without freeing: the context lives on with the cycle).
pub fn flush_sessions(ctx: &SslContext) {
    unsafe extern "C" {
        fn SSL_CTX_flush_sessions(ctx: *mut ffi::SSL_CTX, tm: c_long);
    }
    // An `SslContextRef` is the `SSL_CTX` pointer itself (foreign-types' opaque
    // reference), so its address is the pointer OpenSSL wants.
    let p = &**ctx as *const ssl::SslContextRef as *mut ffi::SSL_CTX;
    // SAFETY: a live context; time 0 removes every session, as SSL_CTX_free does.
    unsafe { SSL_CTX_flush_sessions(p, 0) }
}
