//! The metrics endpoint: `status_zone NAME` (nginx Plus's, in a stream server: the
//! server's sessions are counted under NAME) and `api` (nginx Plus's REST API, which
//! nginx serves from an http location; sluice has no http, so a stream server with
//! `api;` answers HTTP GET requests itself). The answers are nginx Plus's JSON for
//! `/api/9/nginx`, `/connections`, `/stream/server_zones` and `/stream/upstreams`, and
//! the same figures in the Prometheus text format at `/metrics`.
//!
//! The counters live in `core::stats` (shared by every worker); peers' states come
//! from the upstream zones.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfResult};
use crate::core::stats::{self, peer, zone, Kind, Slot};
use crate::core::timer::TimerId;
use crate::stream::conf::ConfCx;
use crate::stream::content::{Content, ContentSession, Ready};
use crate::stream::cycle::Cycle;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::{Flow, Phase, PhaseRegistry};
use crate::stream::session::{session_token, status, Cx, SessionCore, Side};

pub struct Api;

#[derive(Default)]
pub struct ApiMain {
    /// Some server has `api` or `status_zone`: statistics are kept.
    pub used: bool,
}

#[derive(Default)]
pub struct ApiSrv {
    pub zone: Option<String>,
    /// The zone's counters (set once the stream block is read).
    pub zone_slot: Option<Slot>,
    pub api: bool,
}

/// The API versions answered (nginx Plus R30's list).
const VERSIONS: &str = "[1,2,3,4,5,6,7,8,9]";
const HREF: &str = "https://nginx.org/en/docs/http/ngx_http_api_module.html";
/// The longest request head read.
const MAX_REQUEST: usize = 4096;
/// nginx's `client_header_timeout` and `send_timeout` defaults.
const TIMEOUT: Duration = Duration::from_secs(60);

fn status_zone(c: &mut ApiSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if c.zone.is_some() {
        return Err(cmd.duplicate());
    }
    c.zone = Some(cmd.arg(0).to_string());
    cx.main.api.used = true;
    Ok(())
}

fn api(c: &mut ApiSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    if c.api {
        return Err(cmd.duplicate());
    }
    for a in &cmd.args {
        // Accepted as nginx Plus's; sluice's API is read-only either way.
        if !matches!(a.as_str(), "write=on" | "write=off") {
            return Err(cmd.err(format!("invalid parameter \"{}\"", a)));
        }
    }
    c.api = true;
    cx.main.api.used = true;
    cx.handler = Some(new_session);
    Ok(())
}

/// After the stream block: map the counters (before any worker is forked) and give
/// each server its zone's slot.
pub fn bind(c: &mut ApiSrv, main: &ApiMain) {
    if !main.used {
        return;
    }
    stats::enable();
    if let Some(z) = &c.zone {
        c.zone_slot = stats::slot(Kind::ServerZone, z);
    }
}

/// How a client's TLS handshake went, for its server's zone (nginx Plus's `ssl` object).
pub enum SslEvent<'a> {
    Done {
        reused: bool,
    },
    /// Failed, with the error, whose text names the reason OpenSSL gave (None: the
    /// client closed).
    Failed(Option<&'a io::Error>),
    TimedOut,
    /// `ssl_verify_client` refused the certificate: its verify result (0: none sent).
    Refused(i32),
}

/// Count a client's TLS handshake in its server's zone.
pub fn count_ssl(s: &SessionCore, e: SslEvent<'_>) {
    let Some(z) = s.srv.confs.api.zone_slot else { return };
    match e {
        SslEvent::Done { reused } => {
            z.add(zone::SSL_HANDSHAKES, 1);
            if reused {
                z.add(zone::SSL_SESSION_REUSES, 1);
            }
        }
        SslEvent::Failed(e) => {
            z.add(zone::SSL_HANDSHAKES_FAILED, 1);
            let text = e.map(|e| e.to_string()).unwrap_or_default();
            if text.contains("no shared cipher") {
                z.add(zone::SSL_NO_COMMON_CIPHER, 1);
            } else if text.contains("unsupported protocol") || text.contains("version too low") {
                z.add(zone::SSL_NO_COMMON_PROTOCOL, 1);
            } else if text.contains("certificate") && text.contains("alert") {
                z.add(zone::SSL_PEER_REJECTED_CERT, 1);
            }
        }
        SslEvent::TimedOut => {
            z.add(zone::SSL_HANDSHAKES_FAILED, 1);
            z.add(zone::SSL_HANDSHAKE_TIMEOUT, 1);
        }
        SslEvent::Refused(rc) => z.add(
            match rc {
                0 => zone::SSL_NO_CERT,
                9 | 10 => zone::SSL_EXPIRED_CERT,
                23 => zone::SSL_REVOKED_CERT,
                _ => zone::SSL_OTHER,
            },
            1,
        ),
    }
}

/// The log phase: the session is counted in its server's zone.
fn log_handler(s: &mut SessionCore, _: &mut Cx<'_>) -> Flow {
    let Some(z) = s.srv.confs.api.zone_slot else { return Flow::Declined };
    if let Some(p) = s.status_zone.take() {
        p.sub(zone::PROCESSING, 1);
    }
    z.add(zone::CONNECTIONS, 1);
    let class = match s.status {
        200..=299 => Some(zone::SESSIONS_2XX),
        400..=499 => Some(zone::SESSIONS_4XX),
        500..=599 => Some(zone::SESSIONS_5XX),
        _ => None,
    };
    if let Some(c) = class {
        z.add(c, 1);
    }
    z.add(zone::SESSIONS_TOTAL, 1);
    z.add(zone::RECEIVED, s.received);
    z.add(zone::SENT, s.sent);
    Flow::Declined
}

impl Module for Api {
    const NAME: &'static str = "stream_api";
    type Main = ApiMain;
    type Srv = ApiSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive { name: "status_zone", ctx: Ctx::STREAM_SRV, args: Arity::Take(1), set: Set::Srv(status_zone) },
        Directive { name: "api", ctx: Ctx::STREAM_SRV, args: Arity::Between(0, 1), set: Set::Srv(api) },
    ];

    fn postconfiguration(p: &mut PhaseRegistry) {
        p.add(Phase::Log, log_handler);
    }
}

/// A peer as the API shows it.
pub struct PeerReport {
    pub id: usize,
    /// The address.
    pub server: String,
    /// The `server` line's name.
    pub name: String,
    pub backup: bool,
    pub weight: i64,
    /// "up", "down", "unavail", "checking" or "unhealthy".
    pub state: &'static str,
    pub active: u32,
    pub max_conns: u32,
    pub slot: Option<Slot>,
    /// Its health checks' counters (several checks: summed; the longest downtime).
    pub health: Option<crate::upstream::health::Stats>,
}

pub struct UpstreamReport {
    pub name: String,
    pub zone: String,
    pub peers: Vec<PeerReport>,
}

fn new_session(_: &mut SessionCore) -> ContentSession {
    ContentSession::Boxed(Box::new(ApiSession { head: Vec::new(), out: Vec::new(), pos: 0, timer: None }))
}

struct ApiSession {
    head: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    timer: Option<TimerId>,
}

impl ApiSession {
    fn read(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        if !self.out.is_empty() {
            return self.send(s, cx);
        }
        let mut buf = [0u8; 1024];
        loop {
            match s.client.read(&mut buf) {
                Ok(0) => return Flow::Finalize(status::OK),
                Ok(n) => {
                    s.received += n as u64;
                    self.head.extend_from_slice(&buf[..n]);
                    if let Some(end) = head_end(&self.head) {
                        let (cycle, local) = (s.cycle.clone(), s.local.host_text());
                        let (code, ctype, body) = answer(&self.head[..end], &cycle, &local, cx);
                        self.out = response(code, ctype, &body, head_method(&self.head) == b"HEAD");
                        return self.send(s, cx);
                    }
                    if self.head.len() > MAX_REQUEST {
                        let (code, ctype, body) = error(400, "request is too long", "RequestTooLong");
                        self.out = response(code, ctype, &body, false);
                        return self.send(s, cx);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.timer.is_none() {
                        cx.timers.set(&mut self.timer, cx.now + TIMEOUT, session_token(s.key, Side::Client));
                    }
                    return Flow::Again;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    s.connection_error(Side::Client, &e, "recv() failed");
                    return Flow::Finalize(status::OK);
                }
            }
        }
    }

    fn send(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        while self.pos < self.out.len() {
            match s.client.write(&self.out[self.pos..]) {
                Ok(n) => {
                    self.pos += n;
                    s.sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    cx.timers.set(&mut self.timer, cx.now + TIMEOUT, session_token(s.key, Side::Client));
                    return Flow::Again;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    s.connection_error(Side::Client, &e, "writev() failed");
                    return Flow::Finalize(status::OK);
                }
            }
        }
        Flow::Finalize(status::OK)
    }
}

impl Content for ApiSession {
    fn start(&mut self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        s.action = Some("answering an api request");
        if let Err(f) = s.watch_client(cx.registry) {
            return f;
        }
        self.read(s, cx)
    }

    fn on_event(&mut self, s: &mut SessionCore, side: Side, ready: Ready, cx: &mut Cx<'_>) -> Flow {
        if side != Side::Client {
            return Flow::Again;
        }
        if !self.out.is_empty() {
            return if ready.writable { self.send(s, cx) } else { Flow::Again };
        }
        if ready.readable || ready.hup || ready.error {
            return self.read(s, cx);
        }
        Flow::Again
    }

    fn on_timeout(&mut self, s: &mut SessionCore, _: TimerId, _: &mut Cx<'_>) -> Flow {
        self.timer = None;
        let e = io::Error::from_raw_os_error(libc::ETIMEDOUT);
        s.connection_error(Side::Client, &e, "client timed out");
        Flow::Finalize(status::OK)
    }

    fn close(&mut self, _: &mut SessionCore, cx: &mut Cx<'_>) {
        cx.timers.clear(&mut self.timer);
    }
}

/// Where the request head ends (after its empty line).
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn head_method(head: &[u8]) -> &[u8] {
    head.split(|&c| c == b' ').next().unwrap_or(b"")
}

fn error(code: u16, text: &str, code_name: &str) -> (u16, &'static str, String) {
    let mut id = String::new();
    for _ in 0..4 {
        let _ = write!(id, "{:08x}", rand::random::<u32>());
    }
    let body = format!(
        "{{\"error\":{{\"status\":{},\"text\":\"{}\",\"code\":\"{}\"}},\"request_id\":\"{}\",\"href\":\"{}\"}}",
        code, text, code_name, id, HREF
    );
    (code, "application/json", body)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    }
}

fn response(code: u16, ctype: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: sluice/{}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        code,
        reason(code),
        env!("CARGO_PKG_VERSION"),
        http_date(SystemTime::now()),
        ctype,
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// RFC 7231's date ("Mon, 23 Nov 2026 00:00:00 GMT").
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (y, mo, d, h, mi, s, wd) = civil(secs);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!("{}, {:02} {} {} {:02}:{:02}:{:02} GMT", DAYS[wd], d, MONTHS[mo as usize - 1], y, h, mi, s)
}

/// ISO 8601 with milliseconds, as nginx Plus writes its timestamps.
fn iso_time(ms: u64) -> String {
    let (y, mo, d, h, mi, s, _) = civil((ms / 1000) as i64);
    format!("{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", y, mo, d, h, mi, s, ms % 1000)
}

/// Seconds since the epoch as (year, month, day, hour, minute, second, days since a
/// Thursday).
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32, usize) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = days.rem_euclid(7) as usize;
    (y, m, d, (rem / 3600) as u32, (rem % 3600 / 60) as u32, (rem % 60) as u32, wd)
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The members of a JSON object (as this module writes them): (key with its quotes,
/// value), split at the top level's commas.
fn members(obj: &str) -> Vec<(&str, &str)> {
    let inner = obj.trim().strip_prefix('{').and_then(|o| o.strip_suffix('}')).unwrap_or("");
    let (mut out, mut depth, mut quoted, mut escaped, mut start) = (Vec::new(), 0i32, false, false, 0);
    let mut colon = None;
    for (i, c) in inner.char_indices() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ':' if depth == 0 && colon.is_none() => colon = Some(i),
            ',' if depth == 0 => {
                if let Some(k) = colon.take() {
                    out.push((&inner[start..k], &inner[k + 1..i]));
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if let Some(k) = colon {
        out.push((&inner[start..k], &inner[k + 1..]));
    }
    out
}

/// `body` with only `fields` kept in its object (or, for a collection, in each of its
/// objects).
fn only_fields(body: &str, fields: &[&str], collection: bool) -> String {
    let keep = |obj: &str| {
        let kept: Vec<String> = members(obj)
            .into_iter()
            .filter(|(k, _)| fields.iter().any(|f| k.trim_matches('"') == *f))
            .map(|(k, v)| format!("{}:{}", k, v))
            .collect();
        format!("{{{}}}", kept.join(","))
    };
    if !body.starts_with('{') {
        return body.to_string();
    }
    if !collection {
        return keep(body);
    }
    let each: Vec<String> = members(body).into_iter().map(|(k, v)| format!("{}:{}", k, keep(v))).collect();
    format!("{{{}}}", each.join(","))
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The answer to a request head: status, content type and body.
fn answer(head: &[u8], cycle: &Cycle, local: &str, cx: &mut Cx<'_>) -> (u16, &'static str, String) {
    let line = head.split(|&c| c == b'\n').next().unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if target.is_empty() {
        return error(400, "bad request", "BadRequest");
    }
    match method {
        "GET" | "HEAD" => {}
        // What a read-only nginx Plus API answers to its write methods.
        "POST" | "PATCH" | "DELETE" => return error(405, "method disabled", "MethodDisabled"),
        _ => return error(405, "method not supported", "MethodNotSupported"),
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // `fields=a,b`: only those fields of the objects asked for (nginx Plus's argument).
    let fields: Vec<&str> = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fields="))
        .map(|v| v.split(',').filter(|f| !f.is_empty()).collect())
        .unwrap_or_default();
    if path == "/metrics" {
        return (200, "text/plain; version=0.0.4", prometheus(cycle, cx));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["api"] => (200, "application/json", VERSIONS.to_string()),
        ["api", v, rest @ ..] => match v.parse::<u32>() {
            Ok(1..=9) => {
                let (code, ctype, body) = api_path(rest, cycle, local, cx);
                if code != 200 || fields.is_empty() {
                    return (code, ctype, body);
                }
                // Collections hold one object per name; the others are one object.
                let collection = matches!(rest, ["stream", "server_zones"] | ["stream", "upstreams"]);
                (code, ctype, only_fields(&body, &fields, collection))
            }
            _ => error(404, "unknown version", "UnknownVersion"),
        },
        _ => error(404, "path not found", "PathNotFound"),
    }
}

fn api_path(rest: &[&str], cycle: &Cycle, local: &str, cx: &mut Cx<'_>) -> (u16, &'static str, String) {
    let json = |b: String| (200, "application/json", b);
    match rest {
        [] => json("[\"nginx\",\"connections\",\"stream\"]".into()),
        ["nginx"] => json(nginx_info(local, cx)),
        ["connections"] => json(connections()),
        ["stream"] => json("[\"server_zones\",\"upstreams\"]".into()),
        ["stream", "server_zones"] => json(server_zones(cycle, None).unwrap_or_default()),
        ["stream", "server_zones", name] => match server_zones(cycle, Some(name)) {
            Some(b) => json(b),
            None => error(404, "server zone not found", "ServerZoneNotFound"),
        },
        ["stream", "upstreams"] => json(upstreams(cx, None, false).unwrap_or_default()),
        ["stream", "upstreams", name] => match upstreams(cx, Some(name), false) {
            Some(b) => json(b),
            None => error(404, "upstream not found", "UpstreamNotFound"),
        },
        ["stream", "upstreams", name, "peers"] => match upstreams(cx, Some(name), true) {
            Some(b) => json(b),
            None => error(404, "upstream not found", "UpstreamNotFound"),
        },
        _ => error(404, "path not found", "PathNotFound"),
    }
}

/// `local`: the address the request came to.
fn nginx_info(local: &str, cx: &Cx<'_>) -> String {
    let pid = std::process::id();
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    let load = cx.rt.loaded_ms;
    format!(
        "{{\"version\":\"1.22.1\",\"build\":\"sluice/{}\",\"address\":\"{}\",\"generation\":{},\
         \"load_timestamp\":\"{}\",\"timestamp\":\"{}\",\"pid\":{},\"ppid\":{}}}",
        env!("CARGO_PKG_VERSION"),
        local,
        stats::generation(),
        iso_time(load),
        iso_time(now_ms()),
        pid,
        ppid
    )
}

fn connections() -> String {
    let g = stats::global();
    let get = |i| g.map_or(0, |g| g.get(i));
    format!(
        "{{\"accepted\":{},\"dropped\":{},\"active\":{},\"idle\":0}}",
        get(stats::global::ACCEPTED),
        get(stats::global::DROPPED),
        get(stats::global::ACTIVE)
    )
}

/// The configuration's zones, in order, without repeats, and whether a server of the
/// zone terminates TLS.
fn zone_names(cycle: &Cycle) -> Vec<(String, Slot, bool)> {
    let mut out: Vec<(String, Slot, bool)> = Vec::new();
    for srv in &cycle.servers {
        if let (Some(name), Some(slot)) = (&srv.confs.api.zone, srv.confs.api.zone_slot) {
            let ssl = srv.confs.ssl.ctx.is_some();
            match out.iter_mut().find(|(n, _, _)| n == name) {
                Some(z) => z.2 |= ssl,
                None => out.push((name.clone(), slot, ssl)),
            }
        }
    }
    out
}

fn zone_json(out: &mut String, z: Slot, ssl: bool) {
    let _ = write!(
        out,
        "{{\"processing\":{},\"connections\":{},\"sessions\":{{\"2xx\":{},\"4xx\":{},\"5xx\":{},\"total\":{}}},\
         \"discarded\":{},\"received\":{},\"sent\":{}",
        z.get(zone::PROCESSING),
        z.get(zone::CONNECTIONS),
        z.get(zone::SESSIONS_2XX),
        z.get(zone::SESSIONS_4XX),
        z.get(zone::SESSIONS_5XX),
        z.get(zone::SESSIONS_TOTAL),
        z.get(zone::DISCARDED),
        z.get(zone::RECEIVED),
        z.get(zone::SENT)
    );
    if ssl {
        let _ = write!(
            out,
            ",\"ssl\":{{\"handshakes\":{},\"handshakes_failed\":{},\"session_reuses\":{},\"no_common_protocol\":{},\
             \"no_common_cipher\":{},\"handshake_timeout\":{},\"peer_rejected_cert\":{},\"verify_failures\":{{\
             \"no_cert\":{},\"expired_cert\":{},\"revoked_cert\":{},\"other\":{}}}}}",
            z.get(zone::SSL_HANDSHAKES),
            z.get(zone::SSL_HANDSHAKES_FAILED),
            z.get(zone::SSL_SESSION_REUSES),
            z.get(zone::SSL_NO_COMMON_PROTOCOL),
            z.get(zone::SSL_NO_COMMON_CIPHER),
            z.get(zone::SSL_HANDSHAKE_TIMEOUT),
            z.get(zone::SSL_PEER_REJECTED_CERT),
            z.get(zone::SSL_NO_CERT),
            z.get(zone::SSL_EXPIRED_CERT),
            z.get(zone::SSL_REVOKED_CERT),
            z.get(zone::SSL_OTHER)
        );
    }
    out.push('}');
}

fn server_zones(cycle: &Cycle, one: Option<&str>) -> Option<String> {
    let zones = zone_names(cycle);
    if let Some(name) = one {
        let (_, z, ssl) = zones.iter().find(|(n, _, _)| n == name)?;
        let mut out = String::new();
        zone_json(&mut out, *z, *ssl);
        return Some(out);
    }
    let mut out = String::from("{");
    for (i, (name, z, ssl)) in zones.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, name);
        out.push(':');
        zone_json(&mut out, *z, *ssl);
    }
    out.push('}');
    Some(out)
}

fn average(p: &PeerReport, sum: usize, count: usize) -> Option<u64> {
    let s = p.slot?;
    let n = s.get(count);
    (n > 0).then(|| s.get(sum) / n)
}

fn peer_json(out: &mut String, p: &PeerReport) {
    let _ = write!(out, "{{\"id\":{},\"server\":", p.id);
    json_str(out, &p.server);
    out.push_str(",\"name\":");
    json_str(out, &p.name);
    let _ = write!(
        out,
        ",\"backup\":{},\"weight\":{},\"state\":\"{}\",\"active\":{}",
        p.backup, p.weight, p.state, p.active
    );
    if p.max_conns > 0 {
        let _ = write!(out, ",\"max_conns\":{}", p.max_conns);
    }
    let c = |i: usize| p.slot.map_or(0, |s| s.get(i));
    let _ = write!(out, ",\"connections\":{}", c(peer::CONNECTIONS));
    for (name, sum, count) in [
        ("connect_time", peer::CONNECT_TIME, peer::CONNECT_COUNT),
        ("first_byte_time", peer::FIRST_BYTE_TIME, peer::FIRST_BYTE_COUNT),
        ("response_time", peer::RESPONSE_TIME, peer::RESPONSE_COUNT),
    ] {
        if let Some(v) = average(p, sum, count) {
            let _ = write!(out, ",\"{}\":{}", name, v);
        }
    }
    let _ = write!(
        out,
        ",\"sent\":{},\"received\":{},\"fails\":{},\"unavail\":{}",
        c(peer::SENT),
        c(peer::RECEIVED),
        c(peer::FAILS),
        c(peer::UNAVAIL)
    );
    let h = p.health.unwrap_or_default();
    let _ =
        write!(out, ",\"health_checks\":{{\"checks\":{},\"fails\":{},\"unhealthy\":{}", h.checks, h.fails, h.unhealthy);
    if let Some(l) = h.last_passed {
        let _ = write!(out, ",\"last_passed\":{}", l);
    }
    let _ = write!(out, "}},\"downtime\":{}", h.downtime);
    if let Some(d) = h.downstart {
        let _ = write!(out, ",\"downstart\":\"{}\"", iso_time(d));
    }
    let selected = c(peer::SELECTED);
    if selected > 0 {
        let _ = write!(out, ",\"selected\":\"{}\"", iso_time(selected));
    }
    out.push('}');
}

fn upstream_json(out: &mut String, u: &UpstreamReport, peers_only: bool) {
    if !peers_only {
        out.push_str("{\"peers\":");
    }
    out.push('[');
    for (i, p) in u.peers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        peer_json(out, p);
    }
    out.push(']');
    if !peers_only {
        out.push_str(",\"zombies\":0,\"zone\":");
        json_str(out, &u.zone);
        out.push('}');
    }
}

fn upstreams(cx: &mut Cx<'_>, one: Option<&str>, peers_only: bool) -> Option<String> {
    let all = cx.rt.upstream_report(cx.now);
    let mut out = String::new();
    if let Some(name) = one {
        let u = all.iter().find(|u| u.name == name)?;
        upstream_json(&mut out, u, peers_only);
        return Some(out);
    }
    out.push('{');
    for (i, u) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, &u.name);
        out.push(':');
        upstream_json(&mut out, u, false);
    }
    out.push('}');
    Some(out)
}

/// A Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The figures in the Prometheus text format, named as nginx-prometheus-exporter names
/// nginx Plus's.
fn prometheus(cycle: &Cycle, cx: &mut Cx<'_>) -> String {
    let mut out = String::new();
    let g = stats::global();
    let get = |i| g.map_or(0, |g| g.get(i));
    for (name, kind, v) in [
        ("nginxplus_connections_accepted", "counter", get(stats::global::ACCEPTED)),
        ("nginxplus_connections_dropped", "counter", get(stats::global::DROPPED)),
        ("nginxplus_connections_active", "gauge", get(stats::global::ACTIVE)),
        ("nginxplus_connections_idle", "gauge", 0),
    ] {
        let _ = writeln!(out, "# TYPE {} {}\n{} {}", name, kind, name, v);
    }
    let zones = zone_names(cycle);
    let zone_metrics: [(&str, &str, usize); 6] = [
        ("processing", "gauge", zone::PROCESSING),
        ("connections", "counter", zone::CONNECTIONS),
        ("discarded", "counter", zone::DISCARDED),
        ("received", "counter", zone::RECEIVED),
        ("sent", "counter", zone::SENT),
        ("sessions", "counter", 0),
    ];
    for (m, kind, i) in zone_metrics {
        let name = format!("nginxplus_stream_server_zone_{}", m);
        let _ = writeln!(out, "# TYPE {} {}", name, kind);
        for (z, slot, _) in &zones {
            if m == "sessions" {
                for (code, k) in [("2xx", zone::SESSIONS_2XX), ("4xx", zone::SESSIONS_4XX), ("5xx", zone::SESSIONS_5XX)]
                {
                    let _ = writeln!(out, "{}{{code=\"{}\",server_zone=\"{}\"}} {}", name, code, label(z), slot.get(k));
                }
            } else {
                let _ = writeln!(out, "{}{{server_zone=\"{}\"}} {}", name, label(z), slot.get(i));
            }
        }
    }
    let ups = cx.rt.upstream_report(cx.now);
    let peer_metrics: [(&str, &str, Option<usize>); 8] = [
        ("state", "gauge", None),
        ("active", "gauge", None),
        ("connections", "counter", Some(peer::CONNECTIONS)),
        ("sent", "counter", Some(peer::SENT)),
        ("received", "counter", Some(peer::RECEIVED)),
        ("fails", "counter", Some(peer::FAILS)),
        ("unavail", "counter", Some(peer::UNAVAIL)),
        ("health_checks_checks", "counter", None),
    ];
    for (m, kind, i) in peer_metrics {
        let name = format!("nginxplus_stream_upstream_server_{}", m);
        let _ = writeln!(out, "# TYPE {} {}", name, kind);
        for u in &ups {
            for p in &u.peers {
                let v = match (m, i) {
                    ("state", _) => state_number(p.state),
                    ("active", _) => u64::from(p.active),
                    ("health_checks_checks", _) => p.health.map_or(0, |h| h.checks),
                    (_, Some(i)) => p.slot.map_or(0, |s| s.get(i)),
                    _ => 0,
                };
                let _ =
                    writeln!(out, "{}{{server=\"{}\",upstream=\"{}\"}} {}", name, label(&p.server), label(&u.name), v);
            }
        }
    }
    out
}

/// nginx-prometheus-exporter's numbers for a peer's state.
fn state_number(s: &str) -> u64 {
    match s {
        "up" => 1,
        "draining" => 2,
        "down" => 3,
        "unavail" => 4,
        "checking" => 5,
        "unhealthy" => 6,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_as_http_and_iso_write_them() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_392_000); // 2026-11-23 00:00:00 UTC
        assert_eq!(http_date(t), "Mon, 23 Nov 2026 00:00:00 GMT");
        assert_eq!(iso_time(1_795_392_000_123), "2026-11-23T00:00:00.123Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn fields_keep_only_what_is_asked_for() {
        let one = r#"{"version":"1.22.1","build":"sluice/0.1.0","pid":7}"#;
        assert_eq!(only_fields(one, &["version", "pid"], false), r#"{"version":"1.22.1","pid":7}"#);
        let zones = r#"{"a,b":{"processing":0,"sessions":{"2xx":1,"total":1},"sent":5},"c":{"processing":1,"sent":0}}"#;
        assert_eq!(
            only_fields(zones, &["sessions", "sent"], true),
            r#"{"a,b":{"sessions":{"2xx":1,"total":1},"sent":5},"c":{"sent":0}}"#
        );
        assert_eq!(only_fields("[1,2]", &["x"], false), "[1,2]");
    }

    #[test]
    fn request_heads_end_at_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r\nx"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\nHost: a\r\n"), None);
    }
}
