//! ngx_stream_log_module: `log_format NAME [escape=default|json|none] STRING ...` and
//! `access_log PATH FORMAT [buffer=SIZE] [gzip[=LEVEL]] [flush=TIME] [if=COND] | off`.
//! Log phase: one line per session per `access_log`.

use std::rc::Rc;
use std::time::Duration;

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value;
use crate::core::conf::{Cmd, ConfResult};
use crate::core::log::Level;
use crate::core::logfile::FileSpec;
use crate::core::logfile::WriteError;
use crate::core::open_file_cache::OpenFileCache;
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::{Flow, Phase, PhaseRegistry};
use crate::stream::session::{Cx, SessionCore};
use crate::stream::variables::{eval_var, Complex, PartRef, Variables};

pub struct Log;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Default,
    Json,
    None,
}

pub struct LogFormat {
    pub name: String,
    pub escape: Escape,
    pub parts: Complex,
}

#[derive(Default)]
pub struct LogMain {
    pub formats: Vec<Rc<LogFormat>>,
}

/// Where one `access_log` writes.
#[derive(Clone)]
pub enum Target {
    /// A file opened with the cycle, by index into the worker's files.
    File(usize),
    /// A path with variables: opened for each line.
    Dynamic(Complex),
    /// `syslog:...`: a datagram per line, at this severity (info unless given).
    Syslog(Rc<crate::core::log::Syslog>, u32),
}

#[derive(Clone)]
pub struct AccessLog {
    pub target: Target,
    pub format: Rc<LogFormat>,
    pub cond: Option<Complex>,
    /// Shared by the servers that inherit this `access_log`, as nginx shares its entry.
    pub state: Rc<WriteState>,
}

/// What one `access_log` remembers of its failed writes (`ngx_stream_log_t`'s
/// `error_log_time` and `disk_full_time`, in wall-clock seconds).
#[derive(Default)]
pub struct WriteState {
    /// When a failed write was last reported: at most one alert a minute.
    error_log_time: std::cell::Cell<i64>,
    /// When a write last found the disk full: no writes for the rest of that second.
    disk_full_time: std::cell::Cell<i64>,
}

impl WriteState {
    /// `ngx_stream_log_write`'s report of a failed write, in the session's context.
    fn failed(&self, s: &SessionCore, path: &str, e: &WriteError) {
        let now = crate::core::time::wall().0;
        if e.disk_full() {
            self.disk_full_time.set(now);
        }
        if now - self.error_log_time.get() > 59 {
            let (msg, err) = e.alert(path);
            s.log(Level::Alert, &msg, err);
            self.error_log_time.set(now);
        }
    }
}

#[derive(Default)]
pub struct LogSrv {
    /// `None`: no `access_log` at this level (inherit).
    pub logs: Option<Vec<AccessLog>>,
    /// `access_log off` at this level: nothing is logged here, whatever else is listed.
    pub off: bool,
    /// `open_log_file_cache` at this level: `None` unset (inherit), `Some(None)` off.
    /// Servers that inherit it share one cache, as in nginx.
    pub open_file_cache: Option<Option<Rc<OpenFileCache>>>,
}

/// One argument of a log format, checked as `ngx_stream_log_compile_format` checks it:
/// `$` must start a variable name, and a name ends with its argument.
fn compile_format_arg(text: &str, cmd: &Cmd, vars: &mut Variables) -> ConfResult<Complex> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let invalid = || cmd.err(format!("invalid parameter \"{}\"", &text[i..]));
        let mut j = i + 1;
        let bracket = b.get(j) == Some(&b'{');
        if bracket {
            j += 1;
        }
        if j >= b.len() {
            return Err(invalid());
        }
        let start = j;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
            j += 1;
        }
        let name = &text[start..j];
        if bracket {
            if b.get(j) != Some(&b'}') {
                return Err(cmd.err(format!("the closing bracket in \"{}\" variable is missing", name)));
            }
            j += 1;
        }
        if name.is_empty() {
            return Err(invalid());
        }
        i = j;
    }
    Complex::compile_log(text, cmd, vars)
}

fn log_format(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let name = cmd.arg(0).to_string();
    if cx.main.log.formats.iter().any(|f| f.name == name) {
        return Err(cmd.err(format!("duplicate \"log_format\" name \"{}\"", name)));
    }
    let mut rest = &cmd.args[1..];
    let mut escape = Escape::Default;
    if let Some(e) = rest.first().and_then(|a| a.strip_prefix("escape=")) {
        escape = match e {
            "default" => Escape::Default,
            "json" => Escape::Json,
            "none" => Escape::None,
            _ => return Err(cmd.err(format!("unknown log format escaping \"{}\"", e))),
        };
        rest = &rest[1..];
    }
    // (Arity::TwoOrMore has checked there is more than the name: an escape alone is an
    // empty format, as in nginx.)
    let mut parts = Complex::literal(b"");
    for arg in rest {
        parts.append(compile_format_arg(arg, cmd, &mut cx.vars)?);
    }
    cx.main.log.formats.push(Rc::new(LogFormat { name, escape, parts }));
    Ok(())
}

/// `open_log_file_cache max=N [inactive=T] [min_uses=N] [valid=T] | off`, checked as
/// nginx checks it.
fn open_log_file_cache(c: &mut LogSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    if c.open_file_cache.is_some() {
        return Err(cmd.duplicate());
    }
    let (mut max, mut inactive, mut min_uses, mut valid, mut off) = (0, 10, 1, 60, false);
    for a in &cmd.args {
        let ok = match a.split_once('=') {
            Some(("max", v)) => value::parse_number(v).map(|n| max = n).is_some(),
            Some(("min_uses", v)) => value::parse_number(v).map(|n| min_uses = n).is_some(),
            Some(("inactive", v)) => value::parse_time(v, true).map(|t| inactive = t).is_some(),
            Some(("valid", v)) => value::parse_time(v, true).map(|t| valid = t).is_some(),
            _ if a == "off" => {
                off = true;
                true
            }
            _ => false,
        };
        if !ok {
            return Err(cmd.err(format!("invalid \"open_log_file_cache\" parameter \"{}\"", a)));
        }
    }
    if off {
        c.open_file_cache = Some(None);
        return Ok(());
    }
    if max == 0 {
        return Err(cmd.err("\"open_log_file_cache\" must have \"max\" parameter"));
    }
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let cache = OpenFileCache::new(
        usize::try_from(max).unwrap_or(usize::MAX),
        clamp(inactive),
        u32::try_from(min_uses).unwrap_or(u32::MAX),
        clamp(valid),
    );
    c.open_file_cache = Some(Some(Rc::new(cache)));
    Ok(())
}

/// `ngx_stream_log_set_log`, with its checks in its order.
fn access_log(c: &mut LogSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if cmd.arg(0) == "off" {
        c.off = true;
        return match cmd.args.get(1) {
            None => Ok(()),
            Some(a) => Err(cmd.invalid_parameter(a)),
        };
    }
    let syslog = match cmd.arg(0).strip_prefix("syslog:") {
        Some(spec) => Some(crate::core::log::parse_syslog(spec).map_err(|m| cmd.err(m))?),
        None => None,
    };
    let path = match syslog {
        Some(_) => Complex::literal(b""),
        None => {
            let p = Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?;
            // A path with variables gets the prefix now, as text (`ngx_conf_full_name`
            // before the script is compiled): a value that is absolute still lands under it.
            match p.has_variables() {
                true => Complex::compile(&cx.full_name_of(cmd.arg(0)), cmd, &mut cx.vars)?,
                false => p,
            }
        }
    };
    if cmd.args.len() < 2 {
        return Err(cmd.err("log format is not specified"));
    }
    let format = cx
        .main
        .log
        .formats
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(cmd.arg(1)))
        .cloned()
        .ok_or_else(|| cmd.err(format!("unknown log format \"{}\"", cmd.arg(1))))?;
    let (mut buffer, mut gzip, mut flush, mut cond) = (0usize, None, None::<Duration>, None);
    for a in &cmd.args[2..] {
        if let Some(v) = a.strip_prefix("buffer=") {
            let size = value::parse_size(v).filter(|n| *n > 0);
            buffer = size.ok_or_else(|| cmd.err(format!("invalid buffer size \"{}\"", v)))?;
        } else if let Some(v) = a.strip_prefix("flush=") {
            let ms = value::parse_time(v, false).filter(|m| *m > 0);
            flush = Some(Duration::from_millis(ms.ok_or_else(|| cmd.err(format!("invalid flush time \"{}\"", v)))?));
        } else if a == "gzip" || a.starts_with("gzip=") {
            if buffer == 0 {
                buffer = 64 * 1024;
            }
            gzip = Some(match a.strip_prefix("gzip=") {
                None => 1,
                Some(v) => {
                    let l = value::parse_number(v).filter(|l| (1..=9).contains(l));
                    l.ok_or_else(|| cmd.err(format!("invalid compression level \"{}\"", v)))? as u32
                }
            });
        } else if let Some(v) = a.strip_prefix("if=") {
            cond = Some(Complex::compile(v, cmd, &mut cx.vars)?);
        } else {
            return Err(cmd.invalid_parameter(a));
        }
    }
    if flush.is_some() && buffer == 0 {
        // nginx's syslog parser wrote a NUL over each comma of the argument in place, and
        // prints it so.
        let arg = if syslog.is_some() { cmd.arg(0).replace(',', "\0") } else { cmd.arg(0).to_string() };
        return Err(cmd.err(format!("no buffer is defined for access_log \"{}\"", arg)));
    }
    if let Some(conf) = syslog {
        if buffer != 0 {
            return Err(cmd.err("logs to syslog cannot be buffered"));
        }
        let sink = crate::core::log::Syslog::new(&conf);
        // ngx_syslog_process_conf: access logs are "info" unless a severity is given.
        let target = Target::Syslog(Rc::new(sink), conf.severity.unwrap_or(6));
        c.logs.get_or_insert_with(Vec::new).push(AccessLog { target, format, cond, state: Default::default() });
        return Ok(());
    }
    let target = match path.as_static() {
        Some(p) => {
            // An empty name is descriptor 2 (ngx_conf_open_file).
            let full = if p.is_empty() {
                String::new()
            } else {
                cx.full_name_of(&crate::core::conf::parser::bytes_to_text(p))
            };
            let spec = FileSpec { path: full, buffer, gzip, flush };
            if let Some(old) = cx.shared_file(&spec.path).map(|i| &cx.open_files[i]).filter(|f| f.buffer != 0) {
                if buffer != 0 && (old.buffer != buffer || old.flush != flush || old.gzip != gzip) {
                    return Err(
                        cmd.err(format!("access_log \"{}\" already defined with conflicting parameters", cmd.arg(0)))
                    );
                }
            } else if buffer != 0 {
                // A file's first buffered log allocates its buffer now (ngx_pnalloc).
                crate::core::conf::test_malloc(buffer as u64)?;
            }
            Target::File(cx.open_file(spec))
        }
        None if buffer != 0 => return Err(cmd.err("buffered logs cannot have variables in name")),
        None => Target::Dynamic(path),
    };
    c.logs.get_or_insert_with(Vec::new).push(AccessLog { target, format, cond, state: Default::default() });
    Ok(())
}

impl Module for Log {
    const NAME: &'static str = "stream_log";
    type Main = LogMain;
    type Srv = LogSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive { name: "log_format", ctx: Ctx::STREAM_MAIN, args: Arity::TwoOrMore, set: Set::Main(log_format) },
        Directive { name: "access_log", ctx: Ctx::MAIN_SRV, args: Arity::OneOrMore, set: Set::Srv(access_log) },
        Directive {
            name: "open_log_file_cache",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Between(1, 4),
            set: Set::Srv(open_log_file_cache),
        },
    ];

    /// `ngx_stream_log_merge_conf`: a level with neither logs nor `off` inherits both.
    fn merge_srv(p: &LogSrv, c: &mut LogSrv, _: &mut ConfCx) -> ConfResult {
        if c.logs.is_none() && !c.off {
            c.logs = p.logs.clone();
            c.off = p.off;
        }
        if c.open_file_cache.is_none() {
            c.open_file_cache = p.open_file_cache.clone();
        }
        Ok(())
    }

    fn postconfiguration(p: &mut PhaseRegistry) {
        p.add(Phase::Log, log_handler);
    }
}

fn hex(out: &mut Vec<u8>, c: u8) {
    const H: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'\\', b'x', H[(c >> 4) as usize], H[(c & 15) as usize]]);
}

/// Escape `v` into `out` as nginx's access log does.
pub fn escape(e: Escape, v: &[u8], out: &mut Vec<u8>) {
    match e {
        Escape::None => out.extend_from_slice(v),
        Escape::Default => {
            for &c in v {
                if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
                    hex(out, c);
                } else {
                    out.push(c);
                }
            }
        }
        Escape::Json => {
            for &c in v {
                match c {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0x08 => out.extend_from_slice(b"\\b"),
                    0x0c => out.extend_from_slice(b"\\f"),
                    c if c < 0x20 => {
                        const H: &[u8; 16] = b"0123456789ABCDEF";
                        out.extend_from_slice(b"\\u00");
                        out.push(H[(c >> 4) as usize]);
                        out.push(H[(c & 15) as usize]);
                    }
                    c => out.push(c),
                }
            }
        }
    }
}

/// Build one line of `format` for `s` (without the newline), evaluating variables
/// into `val`.
pub fn format_line(s: &mut SessionCore, format: &LogFormat, out: &mut Vec<u8>, val: &mut Vec<u8>) {
    for part in format.parts.parts() {
        match part {
            PartRef::Lit(lit) => out.extend_from_slice(lit),
            PartRef::Var(v) => {
                format_var(s, format, v, out, val);
            }
        }
    }
}

/// One variable of a line, escaped (or "-" when not found in the default escaping).
fn format_var(s: &mut SessionCore, format: &LogFormat, v: usize, out: &mut Vec<u8>, val: &mut Vec<u8>) -> bool {
    val.clear();
    let found = eval_var(s, v, val);
    if found {
        escape(format.escape, val, out);
    } else if format.escape == Escape::Default {
        out.push(b'-');
    }
    found
}

/// The first of nginx's two passes over a line that reads a capture or a volatile
/// variable: `format_line`, noting where each part ends and whether it was found.
fn format_line_parts(
    s: &mut SessionCore,
    format: &LogFormat,
    out: &mut Vec<u8>,
    val: &mut Vec<u8>,
    parts: &mut Vec<(usize, bool)>,
) {
    for part in format.parts.parts() {
        let found = match part {
            PartRef::Lit(lit) => {
                out.extend_from_slice(lit);
                true
            }
            PartRef::Var(v) => format_var(s, format, v, out, val),
        };
        parts.push((out.len(), found));
    }
}

/// nginx's second pass (see `Complex::eval`): the captures and volatile variables are
/// read again, and what was not found (a variable a cycle stopped is asked again, as
/// nginx asks it); the rest is copied from the first pass's line.
fn reformat_line(
    s: &mut SessionCore,
    format: &LogFormat,
    first: &[u8],
    parts: &[(usize, bool)],
    out: &mut Vec<u8>,
    val: &mut Vec<u8>,
) {
    let mut from = 0;
    for (part, &(end, found)) in format.parts.parts().zip(parts) {
        match part {
            PartRef::Var(v) if !found || s.cycle.vars.reads_changing(std::iter::once(v)) => {
                format_var(s, format, v, out, val);
            }
            _ => out.extend_from_slice(first.get(from..end).unwrap_or_default()),
        }
        from = end;
    }
}

fn log_handler(s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
    let srv = s.srv.clone();
    if srv.confs.log.off {
        return Flow::Declined;
    }
    let Some(logs) = &srv.confs.log.logs else { return Flow::Declined };
    // The worker's buffers: no allocation per line once they have grown.
    let (mut line, mut val) = std::mem::take(&mut cx.rt.log_bufs);
    // The cached files this session wrote to, for their release at its end.
    let mut cached: Vec<String> = Vec::new();
    let cache = srv.confs.log.open_file_cache.as_ref().and_then(Option::as_ref);
    for l in logs {
        if let Some(c) = &l.cond {
            val.clear();
            // A condition that fails to evaluate ends the logging of the session: nginx's
            // ngx_stream_log_handler returns there, the later access logs unwritten.
            if !c.eval(s, &mut val) {
                break;
            }
            if val.is_empty() || val == b"0" {
                continue;
            }
        }
        if crate::core::time::wall().0 == l.state.disk_full_time.get() {
            continue;
        }
        line.clear();
        l.format.parts.flush(s);
        if l.format.parts.reads_changing(s) {
            // nginx's two passes (see `Complex::eval`): a line that grows in its second
            // is dropped with Debian 1.22.1's alert; a shorter one is written.
            let mut parts = Vec::new();
            format_line_parts(s, &l.format, &mut line, &mut val, &mut parts);
            let first = std::mem::take(&mut line);
            reformat_line(s, &l.format, &first, &parts, &mut line, &mut val);
            if line.len() > first.len() {
                s.log(Level::Alert, "no buffer space in log script copy", None);
                // (As a failing condition: the later access logs are not written.)
                break;
            }
        } else {
            format_line(s, &l.format, &mut line, &mut val);
        }
        line.push(b'\n');
        match &l.target {
            Target::File(i) => {
                if let Some(Some(f)) = cx.rt.files.get_mut(*i) {
                    if let Err(e) = f.write_line(&line, cx.now) {
                        l.state.failed(s, &f.path, &e);
                    }
                }
            }
            Target::Syslog(sink, severity) => {
                // The line without its newline, as nginx sends it.
                // ngx_syslog_send logs its own failure (no session context); the log's
                // line follows.
                if sink.send(*severity, &line[..line.len() - 1]).is_none() {
                    s.log(Level::Warn, "send() to syslog failed", None);
                }
            }
            Target::Dynamic(p) => {
                let mut path = Vec::new();
                // A path that fails to evaluate drops the line (ngx_stream_log_script_write
                // "simulates successful logging").
                if !p.eval(s, &mut path) {
                    continue;
                }
                // The name is a C string in nginx: it ends at a NUL a value brings.
                if let Some(n) = path.iter().position(|&c| c == 0) {
                    path.truncate(n);
                }
                let path = crate::core::conf::parser::bytes_to_text(&path);
                let written = match cache {
                    Some(cache) => cache.write(&path, &line, crate::core::time::wall().0),
                    None => crate::core::logfile::LogFile::open(&path)
                        .map_err(|e| ("open()", e))
                        .map(|mut f| f.write_line(&line, cx.now)),
                };
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => l.state.failed(s, &path, &e),
                    // ngx_stream_log_script_write: every time, at crit.
                    Err((call, e)) => {
                        s.log(Level::Crit, &format!("{call} \"{path}\" failed"), Some(&e));
                        continue;
                    }
                }
                // Opened through the cache: released at the session's end.
                if cache.is_some() {
                    cached.push(path);
                }
            }
        }
    }
    // nginx's pool cleanups at the session's end: the last registered first.
    if let Some(cache) = cache {
        let now = crate::core::time::wall().0;
        for path in cached.iter().rev() {
            cache.release(path, now);
        }
    }
    cx.rt.log_bufs = (line, val);
    Flow::Declined
}
