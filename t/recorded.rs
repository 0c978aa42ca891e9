//! What real nginx 1.22.1 logged (t/data/logs/, recorded by t/data/record-logs.sh) and
//! the recorder's backends, so the feature tests can replay its sessions against sluice
//! and match sluice's lines against the recorded shapes.
//!
//! A masked line becomes a matcher: every `%%NAME%%` placeholder matches the pattern
//! logs/README.md gives for it. Identity placeholders (ports, pids, `CONN`, ...) are
//! *bound*: the first match captures the value and every later occurrence must repeat it;
//! a test pre-binds the values it knows (its ports, sluice's pid, the host name). Time
//! and duration placeholders are free: each occurrence matches on its own.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;

pub const ACCESS_ALL: &str = include_str!("data/logs/access-all.log");
pub const ERROR_OK: &str = include_str!("data/logs/error-ok.log");
pub const ERROR_RETURN: &str = include_str!("data/logs/error-return.log");
pub const ERROR_REFUSED: &str = include_str!("data/logs/error-refused.log");
pub const ERROR_PROXY_TIMEOUT: &str = include_str!("data/logs/error-proxy_timeout.log");
pub const ERROR_CLIENT_CLOSE: &str = include_str!("data/logs/error-client_close.log");
pub const ERROR_CONNECT_TIMEOUT: &str = include_str!("data/logs/error-connect_timeout.log");
pub const ESCAPE: &str = include_str!("data/logs/escape.txt");

/// The recorder's log format `all`: every variable, `|`-separated, default escaping.
pub const FORMAT_ALL: &str = "log_format all '$remote_addr|$remote_port|$binary_remote_addr|$server_addr|\
$server_port|$protocol|$connection|$pid|$msec|$time_local|$time_iso8601|$hostname|$nginx_version|$bytes_sent|\
$bytes_received|$session_time|$status|$upstream_addr|$upstream_bytes_sent|$upstream_bytes_received|\
$upstream_connect_time|$upstream_first_byte_time|$upstream_session_time';";

/// The masked `access-all.log` line of one recorded session (`ok`, `return`, ...).
pub fn access_all(session: &str) -> &'static str {
    let head = format!("# session: {}", session);
    let mut lines = ACCESS_ALL.lines();
    while let Some(l) = lines.next() {
        if l == head {
            return lines.next().expect("a line after the session header");
        }
    }
    panic!("no session {} in access-all.log", session)
}

/// Bound placeholder values, shared by the lines of one session (error log and access log).
#[derive(Default, Clone, Debug)]
pub struct Caps(pub HashMap<String, String>);

impl Caps {
    /// The values every session of `s` shares: sluice's pid (`master_process off`, so the
    /// pid of the process we started) and this host's name.
    pub fn new(s: &Sluice) -> Caps {
        let mut c = Caps::default();
        c.bind("PID", s.pid());
        c.bind("HOSTNAME", hostname());
        c
    }

    pub fn bind(&mut self, name: &str, v: impl ToString) -> &mut Caps {
        self.0.insert(name.to_string(), v.to_string());
        self
    }

    pub fn with(mut self, name: &str, v: impl ToString) -> Caps {
        self.bind(name, v);
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(r, 0, "gethostname");
    let n = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Placeholders whose every occurrence is matched on its own (README's regex), never bound.
const FREE: &[&str] = &["TIME", "TIME_LOCAL", "TIME_ISO8601", "MSEC", "SECONDS", "OS", "RLIMIT"];

/// Match a fixed-shape template: `d` a digit, `U` an uppercase and `l` a lowercase
/// letter, `s` a sign, anything else itself.
fn template(t: &str, b: &[u8]) -> Option<usize> {
    if b.len() < t.len() {
        return None;
    }
    for (tc, &c) in t.bytes().zip(b) {
        let ok = match tc {
            b'd' => c.is_ascii_digit(),
            b'U' => c.is_ascii_uppercase(),
            b'l' => c.is_ascii_lowercase(),
            b's' => c == b'+' || c == b'-',
            x => x == c,
        };
        if !ok {
            return None;
        }
    }
    Some(t.len())
}

fn digits(b: &[u8]) -> Option<usize> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    (n > 0).then_some(n)
}

/// How many bytes of `b` the placeholder `name` matches (README's table).
fn pattern(name: &str, b: &[u8]) -> Option<usize> {
    match name {
        "TIME" => template("dddd/dd/dd dd:dd:dd", b),
        "TIME_LOCAL" => template("dd/Ull/dddd:dd:dd:dd sdddd", b),
        "TIME_ISO8601" => template("dddd-dd-ddTdd:dd:ddsdd:dd", b),
        "MSEC" | "SECONDS" => {
            let n = digits(b)?;
            template(".ddd", &b[n..]).map(|m| n + m)
        }
        "OS" => Some(b.iter().position(|&c| c == b'\n').unwrap_or(b.len())),
        "RLIMIT" => {
            let n = digits(b)?;
            let m = template(":", &b[n..])?;
            digits(&b[n + m..]).map(|k| n + m + k)
        }
        // identities that a test must bind first: no pattern would be honest
        "HOSTNAME" | "PREFIX" => None,
        _ => digits(b),
    }
}

/// Match one masked line against an actual one, binding identity placeholders in `caps`.
pub fn match_masked(masked: &str, line: &str, caps: &mut Caps) -> Result<(), String> {
    let fail = |at: usize, why: &str| {
        Err(format!(
            "{}\n  expected shape: {}\n  actual line:    {}\n  mismatch at byte {}: {:?}",
            why,
            masked,
            line,
            at,
            &line[at.min(line.len())..]
        ))
    };
    let b = line.as_bytes();
    let mut pos = 0;
    for (i, piece) in masked.split("%%").enumerate() {
        if i % 2 == 0 {
            if !b[pos..].starts_with(piece.as_bytes()) {
                return fail(pos, &format!("literal {:?} does not match", piece));
            }
            pos += piece.len();
            continue;
        }
        let free = FREE.contains(&piece);
        if let (false, Some(v)) = (free, caps.get(piece)) {
            if !b[pos..].starts_with(v.as_bytes()) {
                return fail(pos, &format!("%%{}%% must be {:?}", piece, v));
            }
            pos += v.len();
            continue;
        }
        let Some(n) = pattern(piece, &b[pos..]) else {
            return fail(pos, &format!("%%{}%% does not match its pattern", piece));
        };
        if !free {
            caps.bind(piece, &line[pos..pos + n]);
        }
        pos += n;
    }
    if pos != b.len() {
        return fail(pos, "trailing text");
    }
    Ok(())
}

/// Match every line of a recorded file (comment lines skipped) against `lines`, in order
/// and one for one.
pub fn match_file(masked_file: &str, lines: &[String], caps: &mut Caps) -> Result<(), String> {
    let shapes: Vec<&str> = masked_file.lines().filter(|l| !l.starts_with('#')).collect();
    if shapes.len() != lines.len() {
        return Err(format!(
            "expected {} lines shaped\n{}\ngot {} lines\n{}",
            shapes.len(),
            shapes.join("\n"),
            lines.len(),
            lines.join("\n")
        ));
    }
    for (m, l) in shapes.iter().zip(lines) {
        match_masked(m, l, caps)?;
    }
    Ok(())
}

/// The connection number of the session whose client connected from `client_port`,
/// found in its "client ... connected to" line.
pub fn conn_of(log: &str, client_port: u16) -> Option<String> {
    let needle = format!(" client 127.0.0.1:{} connected to ", client_port);
    let line = log.lines().find(|l| l.contains(&needle))?;
    let star = line.find(": *")? + 3;
    let n: String = line[star..].chars().take_while(char::is_ascii_digit).collect();
    (!n.is_empty()).then_some(n)
}

/// All error-log lines of the session with connection number `conn`.
pub fn conn_lines(log: &str, conn: &str) -> Vec<String> {
    let needle = format!(": *{} ", conn);
    log.lines().filter(|l| l.contains(&needle)).map(str::to_string).collect()
}

/// Wait (bounded) until the session of `client_port` has `n` lines in the file `name` of
/// sluice's prefix; return them and its connection number.
pub fn session_lines(s: &Sluice, name: &str, client_port: u16, n: usize) -> (String, Vec<String>) {
    let mut found = (String::new(), Vec::new());
    wait_for(Duration::from_secs(10), || {
        let log = s.read(name);
        if let Some(c) = conn_of(&log, client_port) {
            found = (c.clone(), conn_lines(&log, &c));
        }
        found.1.len() >= n
    });
    // a little longer would not add lines sluice should not write; re-read once anyway
    if !found.0.is_empty() {
        found.1 = conn_lines(&s.read(name), &found.0);
    }
    found
}

/// Wait (bounded) until an access-log file holds a line whose field `field` (0-based,
/// `|`-separated) is `value`; return that line.
pub fn access_line(s: &Sluice, name: &str, field: usize, value: &str) -> Option<String> {
    let find = || s.read(name).lines().find(|l| l.split('|').nth(field) == Some(value)).map(str::to_string);
    wait_for(Duration::from_secs(10), || find().is_some());
    find()
}

// -------------------------------------------------------------- sessions --

/// Read until end of file (or an error); the error, if any, is returned too.
pub fn read_all(s: &mut impl Read) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The recorder's client: connect, send, read until the peer closes. Returns the local
/// port, what was read and how long it took.
pub fn client(port: u16, send: &[u8]) -> (u16, Vec<u8>, Duration) {
    let t = Instant::now();
    let mut c = connect(port);
    let local = c.local_addr().expect("local addr").port();
    if !send.is_empty() {
        c.write_all(send).expect("write");
    }
    let (data, err) = read_all(&mut c);
    assert!(err.is_none(), "client read: {:?}", err);
    (local, data, t.elapsed())
}

/// A `stream {}` with the recorder's `all` log format and access log, and `servers`.
pub fn conf_all(servers: &str) -> String {
    format!("events {{}}\nstream {{\n{FORMAT_ALL}\naccess_log %%PREFIX%%access.log all;\n{servers}\n}}\n")
}

/// Match the session of `client_port` against a recorded error-log file and the recorded
/// access-log line of `session`; returns the access-log line.
pub fn check_recorded(s: &Sluice, caps: &mut Caps, client_port: u16, error_shape: &str, session: &str) -> String {
    caps.bind("CLIENT_PORT", client_port);
    let n = error_shape.lines().count();
    let (_, lines) = session_lines(s, "error.log", client_port, n);
    if let Err(e) = match_file(error_shape, &lines, caps) {
        panic!("error log of the {} session differs from nginx's:\n{}\n--- error.log:\n{}", session, e, s.error_log());
    }
    let line = access_line(s, "access.log", 1, &client_port.to_string())
        .unwrap_or_else(|| panic!("no access log line for the {} session:\n{}", session, s.read("access.log")));
    if let Err(e) = match_masked(access_all(session), &line, caps) {
        panic!("access log of the {} session differs from nginx's:\n{}", session, e);
    }
    line
}

pub fn seconds(v: &str) -> f64 {
    v.parse::<f64>().unwrap_or_else(|_| panic!("not seconds: {:?}", v))
}

pub fn no_alerts(s: &Sluice) {
    let log = s.error_log();
    for bad in ["[alert]", "[crit]", "[emerg]"] {
        assert!(!log.contains(bad), "{} in the error log:\n{}", bad, log);
    }
}

// ------------------------------------------------------------------ backends --

/// The recorder's `echo` backend: read one line, answer "pong\n", close.
pub fn pong(mut c: TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = Vec::new();
    let mut b = [0u8; 100];
    while !buf.ends_with(b"\n") {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    let _ = c.write_all(b"pong\n");
}

/// The recorder's `idle` backend: accept, never send, read until the peer closes.
pub fn idle(mut c: TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut b = [0u8; 100];
    while matches!(c.read(&mut b), Ok(n) if n > 0) {}
}

/// The recorder's `full` backend: a listener whose accept queue is full, so a new SYN is
/// dropped and a connect to it times out. Keep it alive while it is used.
pub struct FullBackend {
    pub port: u16,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

pub fn full_backend() -> FullBackend {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    l.listen(1).expect("listen");
    let addr = l.local_addr().expect("addr").as_socket().expect("inet");
    let mut fillers = Vec::new();
    // With backlog 1 the queue takes two connections; the first connect that cannot
    // complete proves the queue is full.
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(f) => fillers.push(f),
            Err(_) => return FullBackend { port: addr.port(), _listener: l, _fillers: fillers },
        }
    }
    panic!("the accept queue of the full backend never filled");
}

/// The recorder's `closed` backend: a port that was bound once and closed.
pub fn closed_port() -> u16 {
    free_port()
}

// ------------------------------------------------------------------- values --

/// nginx's default access-log escaping (logs/README.md), to build expected values.
pub fn escape_default(v: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    for &c in v {
        if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
            o.extend_from_slice(format!("\\x{:02X}", c).as_bytes());
        } else {
            o.push(c);
        }
    }
    o
}

/// One variant's exact line from escape.txt (`default`, `json`, `none`), with its newline.
pub fn escape_recorded(variant: &str) -> Vec<u8> {
    let head = format!("{} hex ", variant);
    let hex = ESCAPE.lines().find_map(|l| l.strip_prefix(head.as_str())).expect("variant in escape.txt");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

/// Split a line of a `|`-separated format into fields.
pub fn fields(line: &str) -> Vec<&str> {
    line.split('|').collect()
}

/// Seconds since the epoch of a `$time_iso8601` value (`2026-11-21T23:42:38+00:00`).
pub fn iso8601_epoch(v: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| v.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    let sign = if v.get(19..20)? == "-" { -1 } else { 1 };
    let off = sign * (n(20..22)? * 3600 + n(23..25)? * 60);
    // days from civil (Howard Hinnant)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + s - off)
}

/// `$time_local` (`21/Nov/2026:23:42:38 +0000`) rewritten as `$time_iso8601`.
pub fn time_local_as_iso(v: &str) -> Option<String> {
    const M: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mon = M.iter().position(|m| v.get(3..6) == Some(*m))? + 1;
    Some(format!(
        "{}-{:02}-{}T{}{}:{}",
        v.get(7..11)?,
        mon,
        v.get(0..2)?,
        v.get(12..20)?,
        v.get(21..24)?,
        v.get(24..26)?
    ))
}

/// Seconds since the epoch, now.
pub fn now_epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[test]
fn masked_matcher_self_check() {
    let mut c = Caps::default().with("PORT_OK", 8080);
    let m = "%%TIME%% [info] %%PID%%#%%PID%%: *%%CONN%% client 127.0.0.1:%%CLIENT_PORT%% connected to \
             127.0.0.1:%%PORT_OK%%";
    match_masked(m, "2026/11/21 23:42:38 [info] 77#77: *3 client 127.0.0.1:5555 connected to 127.0.0.1:8080", &mut c)
        .unwrap();
    assert_eq!(c.get("CONN"), Some("3"));
    assert_eq!(c.get("CLIENT_PORT"), Some("5555"));
    let mut c2 = Caps::default().with("PORT_OK", 8080);
    assert!(match_masked(
        m,
        "2026/11/21 23:42:38 [info] 77#78: *3 client 127.0.0.1:5 connected to 127.0.0.1:8080",
        &mut c2
    )
    .is_err());
    let mut c3 = Caps::default().with("PORT_OK", 8081);
    assert!(match_masked(
        m,
        "2026/11/21 23:42:38 [info] 77#77: *3 client 127.0.0.1:5 connected to 127.0.0.1:8080",
        &mut c3
    )
    .is_err());
    assert_eq!(iso8601_epoch("1970-01-02T00:00:01+00:00"), Some(86401));
    assert_eq!(iso8601_epoch("2026-11-21T23:44:09+00:00"), Some(1795304649));
    assert_eq!(time_local_as_iso("21/Nov/2026:23:42:38 +0000").as_deref(), Some("2026-11-21T23:42:38+00:00"));
    assert_eq!(escape_recorded("none").last(), Some(&b'\n'));
}
