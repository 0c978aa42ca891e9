//! The error log (`ngx_log_error_core`): nginx's line format, several outputs each with its
//! own level, and the startup echo of warnings to stderr as `sluice: [emerg] ...`.
//!
//! The process-wide log (the main `error_log`) is also the `log` crate's backend, so
//! infrastructure code can use `log::error!` and friends.

use crate::core::addr::Addr;
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::rc::Rc;

pub use crate::core::conf::Level;

/// The program name used in stderr messages, as nginx prints "nginx: ".
pub const PROGRAM: &str = "sluice";

enum Sink {
    Stderr,
    /// An empty name: descriptor 2, whatever it is by then (the main error log's file
    /// once standard error is redirected there), as nginx's `ngx_stderr` file.
    Fd2,
    /// `syslog:server=...`: one UDP datagram per line.
    Syslog(Syslog),
    /// Reopened in place on USR1, so every holder of the log sees the new file.
    File(RefCell<File>),
    /// `memory:SIZE`: nginx's cyclic buffer, read only with a debugger; nothing reads it
    /// here, so lines are dropped.
    Memory,
}

struct Output {
    path: String,
    level: Level,
    sink: Sink,
}

/// The first cycle is running (nginx's `ngx_cycle = cycle` in main, after the startup
/// notices): from then on syslog headers carry the host name.
static CYCLE_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_cycle_started() {
    CYCLE_STARTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

thread_local! {
    /// The log before the configuration's (stderr or the `-e` file): nginx's init
    /// cycle's, `ngx_cycle->log` until the first cycle runs.
    static STARTUP: RefCell<Option<Rc<ErrorLog>>> = const { RefCell::new(None) };
}

pub fn set_startup(log: Rc<ErrorLog>) {
    STARTUP.with(|s| *s.borrow_mut() = Some(log));
}

/// Drop the startup log, closing an `-e` file: nginx's main closes its built-in log once
/// stderr goes to the configuration's, so no worker holds it.
pub fn end_startup() {
    STARTUP.with(|s| s.borrow_mut().take());
}

/// A syslog peer's own failure, logged as nginx logs it: to `ngx_cycle->log`, the
/// startup log until the first cycle runs, then the main error log.
fn peer_error(level: Level, msg: &str, err: &io::Error) {
    let startup = STARTUP.with(|s| s.borrow().clone());
    match startup.filter(|_| !CYCLE_STARTED.load(std::sync::atomic::Ordering::Relaxed)) {
        Some(l) => l.write(level, None, msg, Some(err), None),
        None => error(level, msg, Some(err)),
    }
}

/// A syslog destination (`ngx_syslog_peer_t`): its socket is made at the first message
/// and made again after a failed one, as nginx's.
pub struct Syslog {
    server: Addr,
    sock: RefCell<Option<SyslogSocket>>,
    facility: u32,
    tag: String,
    hostname: Option<String>,
}

enum SyslogSocket {
    Inet(std::net::UdpSocket),
    Unix(std::os::unix::net::UnixDatagram),
}

impl Syslog {
    pub fn new(c: &SyslogConf) -> Syslog {
        let hostname = (!c.nohostname).then(hostname);
        Syslog {
            server: c.server.clone(),
            sock: RefCell::new(None),
            facility: c.facility,
            tag: c.tag.clone(),
            hostname,
        }
    }

    /// `ngx_syslog_init_peer`: a connected, non-blocking datagram socket; a failure is
    /// nginx's alert.
    fn connect(&self) -> Option<SyslogSocket> {
        let sock = match &self.server {
            Addr::Inet(sa) => {
                let bind = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                std::net::UdpSocket::bind(bind).map(SyslogSocket::Inet)
            }
            Addr::Unix(_) => std::os::unix::net::UnixDatagram::unbound().map(SyslogSocket::Unix),
        };
        let sock = match sock {
            Ok(s) => s,
            Err(e) => {
                peer_error(Level::Alert, "socket() failed", &e);
                return None;
            }
        };
        let connected = match (&sock, &self.server) {
            (SyslogSocket::Inet(u), Addr::Inet(sa)) => u.connect(sa).and_then(|_| u.set_nonblocking(true)),
            (SyslogSocket::Unix(u), Addr::Unix(p)) => u.connect(p).and_then(|_| u.set_nonblocking(true)),
            _ => Ok(()),
        };
        match connected {
            Ok(()) => Some(sock),
            Err(e) => {
                peer_error(Level::Alert, "connect() failed", &e);
                None
            }
        }
    }

    /// One message, `ngx_syslog_add_header` + `ngx_syslog_send`: "<PRI>TIME HOST TAG: "
    /// then `text`, in one datagram; `None` if it could not go now (it is dropped), and the
    /// failure logged here as nginx logs it (`ngx_connection_error` for the send: a
    /// server not listening shows at the next send); the caller adds its own line.
    pub fn send(&self, severity: u32, text: &[u8]) -> Option<usize> {
        // Busy: a failure being logged to this very destination (nginx's `peer->busy`).
        let Ok(mut sock) = self.sock.try_borrow_mut() else { return None };
        if sock.is_none() {
            *sock = self.connect();
        }
        let s = sock.as_ref()?;
        let mut head = format!("<{}>", self.facility * 8 + severity);
        crate::core::time::syslog_time(&mut head);
        if let Some(h) = &self.hostname {
            head.push(' ');
            // Until the first cycle is in place nginx's header names the empty host of
            // its init cycle (the startup notices: "using the epoll event method", the
            // version, OS and getrlimit lines, and anything before them).
            if CYCLE_STARTED.load(std::sync::atomic::Ordering::Relaxed) {
                head.push_str(h);
            }
        }
        head.push(' ');
        head.push_str(&self.tag);
        head.push_str(": ");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(text);
        let sent = match s {
            SyslogSocket::Inet(u) => u.send(&msg),
            SyslogSocket::Unix(u) => u.send(&msg),
        };
        match sent {
            Ok(n) => Some(n),
            // ngx_unix_send's NGX_AGAIN: no line of its own.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                *sock = None;
                // Still busy while its failure is logged (nginx's `peer->busy`): the line
                // goes to the log's other outputs only.
                peer_error(connection_error_level(&e), "send() failed", &e);
                None
            }
        }
    }
}

/// The errors `ngx_connection_error` counts as ordinary network trouble (logged at the
/// connection's own level, not at alert).
pub fn is_ordinary_connection_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNRESET
                | libc::EPIPE
                | libc::ENOTCONN
                | libc::ETIMEDOUT
                | libc::ECONNREFUSED
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | 0
        )
    )
}

/// `ngx_connection_error`'s level for a connection logged at alert (a syslog peer's).
fn connection_error_level(e: &io::Error) -> Level {
    if is_ordinary_connection_error(e) {
        Level::Error
    } else {
        Level::Alert
    }
}

/// What `syslog:` parameters say: server, facility, tag, nohostname (severity applies to
/// access logs only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConf {
    pub server: Addr,
    pub facility: u32,
    pub severity: Option<u32>,
    pub tag: String,
    pub nohostname: bool,
}

const FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "intern", "lpr", "news", "uucp", "clock", "authpriv", "ftp", "ntp",
    "audit", "alert", "cron", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
];
const SEVERITIES: &[&str] = &["emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"];

/// `ngx_syslog_process_conf`: parse what follows "syslog:", with nginx's messages.
pub fn parse_syslog(spec: &str) -> Result<SyslogConf, String> {
    let mut server = None;
    let (mut facility, mut severity, mut tag, mut nohostname) = (None, None, None, false);
    for p in spec.split(',') {
        if let Some(v) = p.strip_prefix("server=") {
            if server.is_some() {
                return Err("duplicate syslog \"server\"".into());
            }
            // ngx_parse_url with default port 514: an IPv4 or IPv6 address, a name, or
            // unix:PATH; the first address is used.
            let u = crate::core::addr::parse_url(v, false, true)
                .map_err(|e| format!("{} in syslog server \"{}\"", e, v))?;
            let u = match u.port {
                Some(_) => Ok(u),
                None if u.addrs.is_empty() => crate::core::addr::parse_url(&format!("{}:514", u.host), false, true),
                None => Ok(u),
            };
            match u.ok().and_then(|u| u.addrs.into_iter().next()) {
                Some(a) => server = Some(a),
                None => return Err(format!("host not found in syslog server \"{}\"", v)),
            }
        } else if let Some(v) = p.strip_prefix("facility=") {
            if facility.is_some() {
                return Err("duplicate syslog \"facility\"".into());
            }
            facility = Some(
                FACILITIES.iter().position(|f| *f == v).ok_or_else(|| format!("unknown syslog facility \"{}\"", v))?
                    as u32,
            );
        } else if let Some(v) = p.strip_prefix("severity=") {
            if severity.is_some() {
                return Err("duplicate syslog \"severity\"".into());
            }
            severity = Some(
                SEVERITIES.iter().position(|f| *f == v).ok_or_else(|| format!("unknown syslog severity \"{}\"", v))?
                    as u32,
            );
        } else if let Some(v) = p.strip_prefix("tag=") {
            if tag.is_some() {
                return Err("duplicate syslog \"tag\"".into());
            }
            if v.len() > 32 {
                return Err("syslog tag length exceeds 32".into());
            }
            if !v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                return Err("syslog \"tag\" only allows alphanumeric characters and underscore".into());
            }
            tag = Some(v.to_string());
        } else if p == "nohostname" {
            nohostname = true;
        } else {
            return Err(format!("unknown syslog parameter \"{}\"", p));
        }
    }
    let server = server.ok_or("no syslog server specified")?;
    Ok(SyslogConf {
        server,
        facility: facility.unwrap_or(23),
        severity,
        tag: tag.unwrap_or_else(|| "nginx".into()),
        nohostname,
    })
}

/// The host name syslog headers carry (lower case, as nginx's `cycle->hostname`).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let n = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).to_lowercase()
}

/// One `error_log` set: every output with its level. Immutable once opened; a reopen
/// (USR1) builds a new one.
pub struct ErrorLog {
    outputs: Vec<Output>,
    max: Level,
}

/// What a session adds to its lines: `" while ACTION, client: A, server: B"` plus a
/// module's tail (the proxy's upstream and byte counts).
pub trait LogContext {
    fn write_context(&self, out: &mut String);
}

thread_local! {
    static MAIN: RefCell<Option<Rc<ErrorLog>>> = const { RefCell::new(None) };
    static USE_STDERR: Cell<bool> = const { Cell::new(true) };
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

fn open_append(path: &str) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o644).open(crate::core::conf::parser::os_path(path))
}

impl ErrorLog {
    /// A log with no output (its warnings still reach stderr during startup).
    /// No file: warnings and worse still reach the console while it is used.
    pub fn none() -> ErrorLog {
        ErrorLog { outputs: Vec::new(), max: Level::Warn }
    }

    pub fn stderr(level: Level) -> ErrorLog {
        ErrorLog { outputs: vec![Output { path: "stderr".into(), level, sink: Sink::Stderr }], max: level }
    }

    /// Open every `(path, level)`; "stderr" is the standard error stream.
    pub fn open(specs: &[(String, Level)]) -> Result<ErrorLog, (String, io::Error)> {
        let mut outputs = Vec::new();
        for (path, level) in specs {
            let sink = if path == "stderr" {
                Sink::Stderr
            } else if path.is_empty() {
                Sink::Fd2
            } else if path.starts_with("memory:") {
                Sink::Memory
            } else if let Some(spec) = path.strip_prefix("syslog:") {
                let c = parse_syslog(spec).map_err(|m| (path.clone(), io::Error::other(m)))?;
                Sink::Syslog(Syslog::new(&c))
            } else {
                Sink::File(RefCell::new(open_append(path).map_err(|e| (path.clone(), e))?))
            };
            outputs.push(Output { path: path.clone(), level: *level, sink });
        }
        // nginx's ngx_log_insert keeps a log's outputs by level, the most verbose first
        // (in the order given among equals): a line goes to them in that order.
        outputs.sort_by_key(|o| std::cmp::Reverse(o.level));
        let max = outputs.iter().map(|o| o.level).max().unwrap_or(Level::Error);
        Ok(ErrorLog { outputs, max })
    }

    /// USR1: open the file `path` again by name where this log writes to it (the old
    /// one may have been renamed); `None` if it does not. On failure the old file stays
    /// in use.
    pub fn reopen_path(&self, path: &str) -> Option<io::Result<()>> {
        let mut result = None;
        for o in self.outputs.iter().filter(|o| o.path == path) {
            if let Sink::File(f) = &o.sink {
                let r = open_append(&o.path).map(|new| *f.borrow_mut() = new);
                result = Some(result.unwrap_or(Ok(())).and(r));
            }
        }
        result
    }

    pub fn enabled(&self, level: Level) -> bool {
        level <= self.max
    }

    pub fn writes_stderr(&self) -> bool {
        self.outputs.iter().any(|o| matches!(o.sink, Sink::Stderr))
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|o| o.path.as_str())
    }

    /// Write one line: `TIME [LEVEL] PID#0: *CONN MSG (ERRNO: TEXT)CONTEXT`.
    pub fn write(
        &self,
        level: Level,
        conn: Option<u64>,
        msg: &str,
        err: Option<&io::Error>,
        ctx: Option<&dyn LogContext>,
    ) {
        self.write_to(None, level, conn, msg, err, ctx, false)
    }

    /// A session's line; for a `debug_connection` client (`every`) to every output
    /// whatever its level, as nginx's ngx_log_error_core writes a debug connection's.
    pub fn write_session(
        &self,
        level: Level,
        conn: u64,
        msg: &str,
        err: Option<&io::Error>,
        ctx: Option<&dyn LogContext>,
        every: bool,
    ) {
        self.write_to(None, level, Some(conn), msg, err, ctx, every)
    }

    /// A worker's last line: nginx logs it through a copy of the first file log of its
    /// chain alone (`ngx_worker_process_exit`'s `ngx_exit_log`). The chain is sorted
    /// most verbose first, the earlier configured first among equals, and a file log
    /// is any but syslog and memory; so the line reaches one file (or stderr), if
    /// that one takes its level.
    pub fn write_exit_line(&self, level: Level, msg: &str) {
        if let Some(i) = self.first_file_log() {
            self.write_to(Some(i), level, None, msg, None, None, false);
        }
    }

    /// nginx's `ngx_log_get_file_log`: the first file (or stderr) output of the chain,
    /// which is sorted most verbose first, the earlier configured first among equals.
    fn first_file_log(&self) -> Option<usize> {
        let mut first: Option<(usize, Level)> = None;
        for (i, o) in self.outputs.iter().enumerate() {
            if matches!(o.sink, Sink::File(_) | Sink::Stderr) && first.is_none_or(|(_, l)| o.level > l) {
                first = Some((i, o.level));
            }
        }
        first.map(|(i, _)| i)
    }

    /// `ngx_log_redirect_stderr`: the standard error stream becomes the first log file,
    /// so what a process (or a binary it starts, as an upgrade) writes there is logged.
    pub fn redirect_stderr(&self) {
        let Some(Sink::File(f)) = self.first_file_log().and_then(|i| self.outputs.get(i)).map(|o| &o.sink) else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*f.borrow());
        // SAFETY: dup2 onto descriptor 2 of a file this log owns.
        if unsafe { libc::dup2(fd, 2) } == -1 {
            let e = io::Error::last_os_error();
            self.write(Level::Alert, None, "dup2(STDERR_FILENO) failed", Some(&e), None);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write_to(
        &self,
        only: Option<usize>,
        level: Level,
        conn: Option<u64>,
        msg: &str,
        err: Option<&io::Error>,
        ctx: Option<&dyn LogContext>,
        every: bool,
    ) {
        // During startup nginx echoes warnings and worse to the console as well, when the
        // log takes them at all (ngx_log_error tests the level before anything else).
        if !every && !self.enabled(level) {
            return;
        }
        let echo = USE_STDERR.with(Cell::get) && level <= Level::Warn;
        let mut spare = String::new();
        LINE.with(|cell| {
            let mut guard = cell.try_borrow_mut();
            // A line logged while one is being written (a syslog peer's failure, logged
            // to the main log as nginx logs it) takes a buffer of its own.
            let line: &mut String = match guard.as_deref_mut() {
                Ok(l) => l,
                Err(_) => &mut spare,
            };
            line.clear();
            crate::core::time::err_log_time(line);
            let pid = crate::core::process::pid();
            // nginx prints PID#TID; the main thread's TID is the PID.
            let _ = write!(line, " [{}] {}#{}: ", level.as_str(), pid, pid);
            if let Some(c) = conn {
                let _ = write!(line, "*{} ", c);
            }
            let body_start = line.len();
            line.push_str(msg);
            truncate_at(line, MAX_ERROR_STR);
            if let Some(e) = err {
                // ngx_log_errno: a message that leaves no room for the error code is cut
                // 50 bytes before the end and marked "...".
                if line.len() > MAX_ERROR_STR - 50 {
                    truncate_at(line, MAX_ERROR_STR - 50);
                    line.push_str("...");
                }
                line.push(' ');
                line.push_str(&crate::core::conf::os_err(e));
                truncate_at(line, MAX_ERROR_STR);
            }
            // ngx_log_error_core calls the context handler for every level but debug.
            if let (Some(ctx), false) = (ctx, level == Level::Debug) {
                ctx.write_context(line);
            }
            truncate_at(line, MAX_ERROR_STR - 1);
            line.push('\n');
            // Bytes that came in raw (a client's broken header, say) go out as they came.
            let raw = crate::core::conf::parser::text_to_bytes(line);
            let mut wrote_stderr = false;
            for (i, o) in self.outputs.iter().enumerate() {
                if (level > o.level && !every) || only.is_some_and(|only| only != i) {
                    continue;
                }
                let fd = match &o.sink {
                    Sink::Stderr | Sink::Fd2 => {
                        wrote_stderr = true;
                        2
                    }
                    Sink::File(f) => f.borrow().as_raw_fd(),
                    Sink::Memory => continue,
                    Sink::Syslog(s) => {
                        // The line without its newline, up to a NUL in it (nginx's
                        // ngx_syslog_writer copies it as a C string).
                        let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
                        let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
                        let _ = s.send((level as u32).saturating_sub(1), text);
                        continue;
                    }
                };
                write_all_fd(fd, &raw);
            }
            if echo && !wrote_stderr {
                let echo = format!("{}: [{}] {}", PROGRAM, level.as_str(), &line[body_start..]);
                write_all_fd(2, &crate::core::conf::parser::text_to_bytes(&echo));
            }
        });
    }
}

/// nginx's `NGX_MAX_ERROR_STR`: a line, its newline included, is at most this long.
const MAX_ERROR_STR: usize = 2048;

/// Cut `line` to at most `max` bytes (on a character boundary).
fn truncate_at(line: &mut String, max: usize) {
    if line.len() > max {
        let mut n = max;
        while !line.is_char_boundary(n) {
            n -= 1;
        }
        line.truncate(n);
    }
}

fn write_all_fd(fd: i32, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: writing a valid buffer to a descriptor we own (or stderr).
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        buf = &buf[n as usize..];
    }
}

/// Install `log` as the process's main error log.
pub fn set_main(log: Rc<ErrorLog>) {
    MAIN.with(|m| *m.borrow_mut() = Some(log));
}

pub fn main_log() -> Option<Rc<ErrorLog>> {
    MAIN.with(|m| m.borrow().clone())
}

/// Stop echoing warnings to stderr (nginx does so once it runs).
pub fn set_use_stderr(on: bool) {
    USE_STDERR.with(|u| u.set(on));
}

/// `write_exit_line` on the main log: a worker process's "exit".
pub fn worker_exit_line() {
    if let Some(l) = main_log() {
        l.write_exit_line(Level::Notice, "exit");
    }
}

/// Log to the main error log (before one is open: only the stderr echo).
pub fn error(level: Level, msg: &str, err: Option<&io::Error>) {
    match main_log() {
        Some(l) => l.write(level, None, msg, err, None),
        None => ErrorLog::none().write(level, None, msg, err, None),
    }
}

/// Print `sluice: MSG` on stderr (nginx's `ngx_log_stderr`).
pub fn stderr(msg: &str) {
    // A name with bytes that are not UTF-8 goes out as it came (see `text_to_bytes`).
    stderr_bytes(&crate::core::conf::parser::text_to_bytes(msg));
}

/// `stderr` for a message that quotes bytes which need not be UTF-8 (command-line
/// arguments), written as they are, as nginx does.
pub fn stderr_bytes(msg: &[u8]) {
    write_all_fd(2, &[format!("{}: ", PROGRAM).as_bytes(), msg, b"\n"].concat());
}

struct Backend;

impl log::Log for Backend {
    /// Only sluice's own records: dependencies (mio) log internals nginx never would.
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("sluice")
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => Level::Error,
            log::Level::Warn => Level::Warn,
            log::Level::Info => Level::Info,
            log::Level::Debug | log::Level::Trace => Level::Debug,
        };
        error(level, &r.args().to_string(), None);
    }

    fn flush(&self) {}
}

static BACKEND: Backend = Backend;

/// Route the `log` crate's macros to the main error log.
pub fn install_backend() {
    let _ = log::set_logger(&BACKEND);
    log::set_max_level(log::LevelFilter::Trace);
}
