//! The PROXY protocol (`listen ... proxy_protocol`, `proxy_protocol_timeout`,
//! `$proxy_protocol_*`, `proxy_protocol on|v2`), shaped like nginx-tests'
//! stream_proxy_protocol*.t and checked against real nginx 1.22.1: the sessions of
//! t/data/proxy_protocol/recorded.json (recorded by record.py in that directory, over
//! the same stream.conf) are replayed against sluice byte for byte, and what the client
//! reads, how the connection ends, the access-log line and the error-log lines must be
//! nginx's.
//!
//! nginx 1.22.1 has neither `$proxy_protocol_tlv_*` (1.23.2) nor `proxy_protocol v2`
//! (1.31.4): those are checked against nginx's source (`src/core/ngx_proxy_protocol.c`),
//! cited where it matters.
//!
//! The harness (`Bed`, `check_cases`) is shared with t/ssl_preread.rs.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{backend, free_port, wait_for, Sluice};
use crate::recorded::{match_masked, Caps};

// ------------------------------------------------------------ the recording --

pub const STREAM_CONF: &str = include_str!("data/proxy_protocol/stream.conf");
const RECORDED: &str = include_str!("data/proxy_protocol/recorded.json");

/// One recorded session (record.py's docstring describes the fields).
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub group: String,
    pub note: String,
    pub server: String,
    pub family: u8,
    pub send: Vec<Vec<u8>>,
    pub pause: Duration,
    pub half_close: bool,
    pub reply: String,
    pub end: String,
    pub seconds: f64,
    pub access: String,
    pub error: Vec<String>,
}

pub fn unhex(h: &str) -> Vec<u8> {
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex")).collect()
}

pub fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let v: Value = serde_json::from_str(RECORDED).expect("recorded.json");
        let s = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
        v["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| Case {
                name: s(c, "name"),
                group: s(c, "group"),
                note: s(c, "note"),
                server: s(c, "server"),
                family: c["family"].as_u64().unwrap_or(4) as u8,
                send: c["send"].as_array().expect("send").iter().map(|h| unhex(h.as_str().expect("hex"))).collect(),
                pause: Duration::from_millis(c["pause_ms"].as_u64().unwrap_or(100)),
                half_close: c["half_close"].as_bool().unwrap_or(false),
                reply: s(c, "reply"),
                end: s(c, "end"),
                seconds: c["seconds"].as_f64().expect("seconds"),
                access: s(c, "access"),
                error: c["error"]
                    .as_array()
                    .expect("error")
                    .iter()
                    .map(|e| e.as_str().expect("str").to_string())
                    .collect(),
            })
            .collect()
    })
}

pub fn case(name: &str) -> &'static Case {
    cases().iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {} in recorded.json", name))
}

/// record.py's escaping: printable ASCII except '%' as is, '\' as "\\", every other
/// byte as \xHH (lowercase).
pub fn escape(b: &[u8]) -> String {
    let mut o = String::new();
    for &c in b {
        match c {
            b'\\' => o.push_str("\\\\"),
            0x20..=0x7e if c != b'%' => o.push(c as char),
            _ => o.push_str(&format!("\\x{:02x}", c)),
        }
    }
    o
}

/// Error-log entries: a new one starts where a line starts with a timestamp (so an
/// entry that carries a raw CR/LF of the client's stays one entry), escaped.
pub fn error_entries(chunk: &[u8]) -> Vec<String> {
    let is_start = |b: &[u8]| {
        let t = b"dddd/dd/dd dd:dd:dd [";
        b.len() >= t.len() && t.iter().zip(b).all(|(&p, &c)| if p == b'd' { c.is_ascii_digit() } else { p == c })
    };
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..chunk.len() {
        if chunk[i] == b'\n' && (i + 1 == chunk.len() || is_start(&chunk[i + 1..])) {
            out.push(escape(&chunk[start..i]));
            start = i + 1;
        }
    }
    if start < chunk.len() {
        out.push(escape(&chunk[start..]));
    }
    out
}

// ---------------------------------------------------------------- the bed --

/// A backend that reads until the bytes end with "hello\n" (or 3 s pass), sends back
/// everything it read and closes: record.py's "mirror".
pub fn mirror(mut c: TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut got = Vec::new();
    let mut b = [0u8; 65536];
    while !got.ends_with(b"hello\n") {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    let _ = c.write_all(&got);
}

/// sluice running stream.conf (plus `extra` servers), with the mirror backend.
pub struct Bed {
    pub sluice: Sluice,
    pub ports: HashMap<String, u16>,
}

impl Bed {
    /// `extra_ports` are more names for `%%PORT_<NAME>%%` in `extra` (on 127.0.0.1;
    /// a name ending in "6" gets a port free on [::1]).
    pub fn start(extra: &str, extra_ports: &[&str]) -> Bed {
        // All ports held open until every one is picked, so no two are the same.
        let mut ports = HashMap::new();
        ports.insert("BACKEND_MIRROR".to_string(), backend(mirror));
        for n in ["PP", "PP_PROXY", "SEND4", "SEND_PP", "SEND_REALIP", "SP", "SP_SMALL", "SP_PP", "SP_PROXY", "SEND6"]
            .iter()
            .chain(extra_ports)
        {
            ports.insert(n.to_string(), free_port());
        }
        let stream = STREAM_CONF.rfind('}').expect("stream {} ends");
        let mut conf = format!("{}{}\n{}", &STREAM_CONF[..stream], extra, &STREAM_CONF[stream..]);
        for (n, p) in &ports {
            conf = conf.replace(&format!("%%PORT_{}%%", n), &p.to_string());
        }
        let sluice = Sluice::start(&conf);
        Bed { sluice, ports }
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    fn size(&self, name: &str) -> usize {
        std::fs::metadata(self.sluice.dir.join(name)).map(|m| m.len() as usize).unwrap_or(0)
    }

    fn bytes(&self, name: &str, from: usize) -> Vec<u8> {
        let b = std::fs::read(self.sluice.dir.join(name)).unwrap_or_default();
        b.get(from..).map(<[u8]>::to_vec).unwrap_or_default()
    }

    /// Run `send` as a client of `server` the way record.py does, and collect what the
    /// session left: the reply, how it ended, its access-log line and error-log bytes.
    pub fn session(&self, server: &str, family: u8, send: &[Vec<u8>], pause: Duration, half_close: bool) -> Outcome {
        let (e0, a0) = (self.size("error.log"), self.size("access.log"));
        let lines0 = self.bytes("access.log", 0).iter().filter(|&&c| c == b'\n').count();
        let t0 = Instant::now();
        let host = if family == 6 { "[::1]" } else { "127.0.0.1" };
        let mut s = TcpStream::connect(format!("{}:{}", host, self.port(server))).expect("connect");
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(15))).ok();
        s.set_write_timeout(Some(Duration::from_secs(15))).ok();
        let client_port = s.local_addr().expect("local").port();
        let reset = |e: &std::io::Error| matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe);
        let mut end = "eof".to_string();
        for (i, chunk) in send.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            if let Err(e) = s.write_all(chunk) {
                end = if reset(&e) { "reset".into() } else { format!("send: {}", e) };
                break;
            }
        }
        if half_close && end == "eof" {
            let _ = s.shutdown(Shutdown::Write);
        }
        let mut reply = Vec::new();
        let mut b = vec![0u8; 65536];
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    end = if reset(&e) { "reset".into() } else { format!("recv: {}", e) };
                    break;
                }
            }
        }
        drop(s);
        let seconds = t0.elapsed().as_secs_f64();
        // The session is over once its access-log line is there; its error lines come
        // before that line, give stragglers a moment anyway.
        let got_line = wait_for(Duration::from_secs(10), || {
            self.bytes("access.log", 0).iter().filter(|&&c| c == b'\n').count() > lines0
        });
        let mut last = self.size("error.log");
        let settle = Instant::now() + Duration::from_secs(2);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.size("error.log");
            if now == last || Instant::now() > settle {
                break;
            }
            last = now;
        }
        let access = got_line.then(|| {
            let b = self.bytes("access.log", a0);
            String::from_utf8_lossy(&b).trim_end_matches('\n').to_string()
        });
        Outcome { client_port, reply, end, seconds, access, error: self.bytes("error.log", e0) }
    }

    pub fn run(&self, c: &Case) -> Outcome {
        self.session(&c.server, c.family, &c.send, c.pause, c.half_close)
    }

    /// The placeholder values every line of a session with `client_port` shares.
    pub fn caps(&self, client_port: u16) -> Caps {
        let mut caps = Caps::default();
        caps.bind("PID", self.sluice.pid());
        caps.bind("CLIENT_PORT", client_port);
        caps.bind("PREFIX", self.sluice.dir.prefix());
        for (n, p) in &self.ports {
            caps.bind(&format!("PORT_{}", n), p);
        }
        caps
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub client_port: u16,
    pub reply: Vec<u8>,
    pub end: String,
    pub seconds: f64,
    pub access: Option<String>,
    pub error: Vec<u8>,
}

/// The `$ssl_preread_*` fields of the access-log line (format `pp` of stream.conf).
const PREREAD_FIELDS: std::ops::RangeInclusive<usize> = 10..=12;

/// Compare one session with nginx's; the differences, if any, in words. The
/// `$ssl_preread_*` fields of the access-log line are left to t/ssl_preread.rs unless
/// the case is one of its own.
pub fn compare(bed: &Bed, c: &Case, o: &Outcome) -> Vec<String> {
    compare_fields(bed, c, o, c.group == "ssl_preread")
}

/// Blank the `$ssl_preread_*` fields of an access-log line.
fn without_preread(line: &str) -> String {
    line.split('|')
        .enumerate()
        .map(|(i, f)| if PREREAD_FIELDS.contains(&i) { "*" } else { f })
        .collect::<Vec<_>>()
        .join("|")
}

/// `compare`, with or without the `$ssl_preread_*` fields.
pub fn compare_fields(bed: &Bed, c: &Case, o: &Outcome, preread_fields: bool) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut caps = bed.caps(o.client_port);
    let reply = escape(&o.reply);
    if let Err(e) = match_masked(&c.reply, &reply, &mut caps) {
        diffs.push(format!("reply differs: {}", e));
    }
    if o.end != c.end {
        diffs.push(format!("connection end: nginx {:?}, sluice {:?}", c.end, o.end));
    }
    // nginx answered at once or after a timeout: so must sluice (pauses included)
    if (o.seconds - c.seconds).abs() > 0.7 {
        diffs.push(format!("session took {:.2}s, nginx {:.2}s", o.seconds, c.seconds));
    }
    match &o.access {
        None => diffs.push("no access-log line".into()),
        Some(line) => {
            let (want, line) = if preread_fields {
                (c.access.clone(), line.clone())
            } else {
                (without_preread(&c.access), without_preread(line))
            };
            if let Err(e) = match_masked(&want, &line, &mut caps) {
                diffs.push(format!("access log differs: {}", e));
            }
        }
    }
    let got = error_entries(&o.error);
    let same_count = got.len() == c.error.len();
    let mut err_diff = !same_count;
    if same_count {
        for (want, line) in c.error.iter().zip(&got) {
            if let Err(e) = match_masked(want, line, &mut caps) {
                diffs.push(format!("error log differs: {}", e));
                err_diff = true;
            }
        }
    }
    if err_diff {
        diffs.push(format!(
            "error log: nginx\n      {}\n    sluice\n      {}",
            c.error.join("\n      "),
            got.join("\n      ")
        ));
    }
    diffs
}

/// A report line at most 400 characters long (a 5 KB header would bury the rest).
pub fn clip(s: &str) -> String {
    s.lines()
        .map(|l| match l.char_indices().nth(400) {
            Some((i, _)) => format!("{}... ({} bytes more)", &l[..i], l.len() - i),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replay the recorded sessions `names` one after the other and fail with every
/// difference from nginx.
pub fn check_cases(bed: &Bed, names: &[&str]) {
    let mut report = Vec::new();
    for name in names {
        let c = case(name);
        let mut diffs = compare(bed, c, &bed.run(c));
        // A session's length is wall-clock time, this process's backend threads
        // included: a busy machine can stretch one run; a timeout sluice waits for and
        // nginx does not (or the reverse) shows in every run.
        for _ in 0..2 {
            if diffs.is_empty() || !diffs.iter().all(|d| d.starts_with("session took")) {
                break;
            }
            diffs = compare(bed, c, &bed.run(c));
        }
        if !diffs.is_empty() {
            report.push(format!("case {} ({}):\n  {}", c.name, c.note, clip(&diffs.join("\n  "))));
        }
    }
    assert!(report.is_empty(), "sluice differs from nginx 1.22.1:\n{}", report.join("\n"));
}

/// Every recorded case of `group`, in recorded order.
pub fn group(group: &str) -> Vec<&'static str> {
    cases().iter().filter(|c| c.group == group).map(|c| c.name.as_str()).collect()
}

// ------------------------------------------------- replayed against nginx --

#[test]
fn v1_headers_as_nginx() {
    let names = group("v1");
    assert!(names.len() >= 8, "{:?}", names);
    let bed = Bed::start("", &[]);
    check_cases(&bed, &names);
}

#[test]
fn v1_broken_headers_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &group("v1_broken"));
}

#[test]
fn v2_headers_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &group("v2"));
}

#[test]
fn v2_broken_headers_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &group("v2_broken"));
}

/// Header size: nginx 1.22.1 peeks at most 107 bytes for a header, so a longer v1 line
/// is "broken header" and a v2 header with TLVs past that is "header is too large"
/// (checked side by side with nginx 1.22.1). 1.23.3 raised the read size to 4096 bytes
/// so that TLVs fit: a configuration that reads a `$proxy_protocol_tlv_*` variable
/// (1.23.2's, which 1.22.1 refuses) gets that size (nginx-tests
/// stream_proxy_protocol2_tlv.t needs it). Past 4096 bytes both reject.
#[test]
fn header_size_is_1_22_1s_unless_tlvs_are_read() {
    // A 144-byte v1 line (zero-padded ports, which nginx's parser takes) and a 231-byte
    // v2 header with a TLV.
    let v1 = format!("PROXY TCP4 192.0.2.1 192.0.2.2 {}1234 80\r\n", "0".repeat(99)).into_bytes();
    assert!(v1.len() > 107, "{}", v1.len());
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    let tlv_len = 231 - 16 - 12 - 3;
    v2.extend_from_slice(&((12 + 3 + tlv_len) as u16).to_be_bytes());
    v2.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2, 0x30, 0x39, 0, 80]);
    v2.push(0x05);
    v2.extend_from_slice(&(tlv_len as u16).to_be_bytes());
    v2.extend(std::iter::repeat_n(b'u', tlv_len));
    assert_eq!(v2.len(), 231);
    let mut big1 = b"PROXY TCP4 ".to_vec();
    big1.extend(std::iter::repeat_n(b'1', 5000));
    let mut big2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    big2.extend_from_slice(&(5000u16).to_be_bytes());
    big2.extend(std::iter::repeat_n(0u8, 5000));
    for reads_tlv in [false, true] {
        let p = crate::common::free_port();
        let answer = if reads_tlv { "ok:${proxy_protocol_tlv_0x05}" } else { "ok" };
        let s = Sluice::start(&format!(
            "events {{}} stream {{ log_format s '$status|$proxy_protocol_addr|$proxy_protocol_port'; \
             server {{ listen 127.0.0.1:{p} proxy_protocol; return \"{answer}\"; access_log %%PREFIX%%s.log s; }} }}"
        ));
        let send = |bytes: &[u8]| {
            let mut c = crate::common::connect(p);
            let _ = c.write_all(bytes);
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            out
        };
        let got_v1 = send(&v1);
        let got_v2 = send(&v2);
        let _ = send(&big1);
        let _ = send(&big2);
        let lines = s.wait_lines("s.log", 4);
        let log = s.error_log();
        if reads_tlv {
            assert_eq!(got_v1, b"ok:");
            assert_eq!(got_v2, format!("ok:{}", "u".repeat(tlv_len)).as_bytes());
            assert_eq!(lines[0], "200|192.0.2.1|1234");
            assert_eq!(lines[1], "200|192.0.2.1|12345");
        } else {
            assert_eq!((got_v1, got_v2), (Vec::new(), Vec::new()));
            assert_eq!(lines[0], "400|-|-");
            assert_eq!(lines[1], "400|-|-");
            let cut = String::from_utf8_lossy(&v1[..107]).to_string();
            assert!(log.contains(&format!("broken header: \"{cut}\" while reading PROXY protocol")), "{log}");
        }
        assert!(lines[2].starts_with("400|"), "{:?}", lines);
        assert!(lines[3].starts_with("400|"), "{:?}", lines);
        assert!(log.contains("broken header: \"PROXY TCP4 1111"), "{}", log);
        assert_eq!(
            log.matches("header is too large while reading PROXY protocol").count(),
            if reads_tlv { 1 } else { 2 },
            "{log}"
        );
    }
}

#[test]
fn proxy_protocol_timeout_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &group("timeout"));
}

/// `proxy_protocol on`: the v1 line nginx sends upstream, for IPv4 and IPv6 clients,
/// behind `listen ... proxy_protocol` (the connection's addresses) and with realip (the
/// header's client, nginx's own server address).
#[test]
fn header_sent_upstream_as_nginx() {
    let bed = Bed::start("", &[]);
    check_cases(&bed, &group("send"));
}

// ------------------------------------------------------- from nginx's source --

/// The CRC-32C table, from the reflected Castagnoli polynomial (RFC 3720 B.4).
fn crc32c_table() -> &'static [u32; 256] {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0x82f6_3b78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    })
}

/// CRC-32C as `ngx_crc32c_long`, table-driven: written apart from sluice's bitwise one.
fn crc32c(data: &[u8]) -> u32 {
    let t = crc32c_table();
    !data.iter().fold(!0u32, |c, &b| t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

#[test]
fn crc32c_is_nginx_castagnoli() {
    // the first entries of ngx_crc32c_table256 (src/core/ngx_crc32.c)
    assert_eq!(crc32c_table()[..4], [0x0000_0000, 0xf26b_8303, 0xe13b_70f7, 0x1350_f3f4]);
    // the check value of the CRC catalogue
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
}

/// `ngx_proxy_protocol_v2_write` for a plain TCP connection: signature, version 2 /
/// PROXY (0x21), family << 4 | STREAM, the length of what follows, the addresses and
/// ports in network order, then the CRC32c TLV (type 0x03, length 4) whose value is the
/// CRC-32C of the whole header computed with the value zeroed.
fn v2_expected(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    use std::net::IpAddr;
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let v6 = |a: IpAddr| match a {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12 + 7]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        // "promote to the highest address family present on either side"
        (s, d) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36 + 7]);
            h.extend_from_slice(&v6(s));
            h.extend_from_slice(&v6(d));
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(&[0x03, 0, 4, 0, 0, 0, 0]);
    let crc = crc32c(&h);
    let n = h.len();
    h[n - 4..].copy_from_slice(&crc.to_be_bytes());
    h
}

#[test]
fn v2_header_sent_upstream_as_nginx_source() {
    let extra = "
    server {
        listen 127.0.0.1:%%PORT_V2_4%%;
        proxy_protocol v2;
        proxy_pass 127.0.0.1:%%PORT_BACKEND_MIRROR%%;
    }
    server {
        listen [::1]:%%PORT_V2_6%%;
        proxy_protocol v2;
        proxy_pass 127.0.0.1:%%PORT_BACKEND_MIRROR%%;
    }
    server {
        listen 127.0.0.1:%%PORT_V2_REALIP%% proxy_protocol;
        set_real_ip_from 127.0.0.1;
        proxy_protocol v2;
        proxy_pass 127.0.0.1:%%PORT_BACKEND_MIRROR%%;
    }
    server {
        listen [::1]:%%PORT_V2_REALIP6%% proxy_protocol;
        set_real_ip_from ::1;
        proxy_protocol v2;
        proxy_pass 127.0.0.1:%%PORT_BACKEND_MIRROR%%;
    }
    # sluice's own v2 header, read back by sluice
    server {
        listen 127.0.0.1:%%PORT_V2_LOOP%%;
        proxy_protocol v2;
        proxy_pass 127.0.0.1:%%PORT_V2_READ%%;
    }
    server {
        listen 127.0.0.1:%%PORT_V2_READ%% proxy_protocol;
        return \"$proxy_protocol_addr|$proxy_protocol_port|$proxy_protocol_server_addr|$proxy_protocol_server_port|$proxy_protocol_tlv_0x03\";
    }";
    let bed = Bed::start(extra, &["V2_4", "V2_6", "V2_REALIP", "V2_REALIP6", "V2_LOOP", "V2_READ"]);
    let sa = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
    let mut report = Vec::new();
    let mut check = |what: &str, server: &str, family: u8, pre: &[u8], src: Option<&str>, dst: &str| {
        let mut send = pre.to_vec();
        send.extend_from_slice(b"hello\n");
        let o = bed.session(server, family, &[send], Duration::ZERO, false);
        let src = match src {
            Some(s) => sa(s),
            None => sa(&format!("{}:{}", if family == 6 { "[::1]" } else { "127.0.0.1" }, o.client_port)),
        };
        let dst = sa(&dst.replace("PORT", &bed.port(server).to_string()));
        let mut want = v2_expected(src, dst);
        want.extend_from_slice(b"hello\n");
        if o.reply != want {
            report.push(format!(
                "{}: the upstream got\n    {}\n  nginx's format gives\n    {}",
                what,
                escape(&o.reply),
                escape(&want)
            ));
        }
    };
    check("IPv4 client", "V2_4", 4, b"", None, "127.0.0.1:PORT");
    check("IPv6 client", "V2_6", 6, b"", None, "[::1]:PORT");
    check(
        "realip IPv4 client over IPv4",
        "V2_REALIP",
        4,
        b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\n",
        Some("192.0.2.1:5000"),
        "127.0.0.1:PORT",
    );
    check(
        "realip IPv6 client over IPv4 (dst promoted to ::ffff:127.0.0.1)",
        "V2_REALIP",
        4,
        b"PROXY TCP6 2001:db8::1 2001:db8::2 5000 443\r\n",
        Some("[2001:db8::1]:5000"),
        "127.0.0.1:PORT",
    );
    check(
        "realip IPv4 client over IPv6 (src promoted to ::ffff:192.0.2.1)",
        "V2_REALIP6",
        6,
        b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\n",
        Some("192.0.2.1:5000"),
        "[::1]:PORT",
    );
    // The header sluice writes, read by sluice: the addresses of the first hop and the
    // CRC32c TLV's value.
    let o = bed.session("V2_LOOP", 4, &[Vec::new()], Duration::ZERO, false);
    let src = sa(&format!("127.0.0.1:{}", o.client_port));
    let dst = sa(&format!("127.0.0.1:{}", bed.port("V2_LOOP")));
    let h = v2_expected(src, dst);
    let mut want = format!("127.0.0.1|{}|127.0.0.1|{}|", o.client_port, bed.port("V2_LOOP")).into_bytes();
    want.extend_from_slice(&h[h.len() - 4..]);
    if o.reply != want {
        report.push(format!("v2 read back: got {}, want {}", escape(&o.reply), escape(&want)));
    }
    assert!(report.is_empty(), "{}\n--- error.log:\n{}", report.join("\n"), bed.sluice.error_log());
}

fn v2_inet4(tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2]);
    h.extend_from_slice(&51000u16.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h.extend_from_slice(tlvs);
    h
}

fn tlv(t: u8, v: &[u8]) -> Vec<u8> {
    let mut o = vec![t];
    o.extend_from_slice(&(v.len() as u16).to_be_bytes());
    o.extend_from_slice(v);
    o
}

/// The line of the session of `client_port` in the access log `file` (lines start
/// with `$remote_port|`), waited for: a second access log is written after the first.
fn log_line(bed: &Bed, file: &str, client_port: u16) -> Option<String> {
    let find =
        || bed.sluice.read(file).lines().find(|l| l.starts_with(&format!("{}|", client_port))).map(str::to_string);
    wait_for(Duration::from_secs(5), || find().is_some());
    find()
}

const TLV_SERVERS: &str = "
    log_format tlv '$remote_port|$status|$proxy_protocol_tlv_alpn|$proxy_protocol_tlv_0x99|$proxy_protocol_tlv_ssl_verify';
    log_format tlv_err '$remote_port|$status';
    server {
        listen 127.0.0.1:%%PORT_TLV%% proxy_protocol;
        access_log %%PREFIX%%access.log pp;
        access_log %%PREFIX%%tlv.log tlv;
        return \"alpn=$proxy_protocol_tlv_alpn|authority=$proxy_protocol_tlv_authority|unique_id=$proxy_protocol_tlv_unique_id|netns=$proxy_protocol_tlv_netns|0xe0=$proxy_protocol_tlv_0xe0|0xE0=$proxy_protocol_tlv_0xE0|0x01=$proxy_protocol_tlv_0x01|0x0001=$proxy_protocol_tlv_0x0001|0x03=$proxy_protocol_tlv_0x03|0x99=$proxy_protocol_tlv_0x99|ssl_verify=$proxy_protocol_tlv_ssl_verify|addr=$proxy_protocol_addr\n\";
    }
    server {
        listen 127.0.0.1:%%PORT_TLV_SSL%% proxy_protocol;
        access_log %%PREFIX%%access.log pp;
        access_log %%PREFIX%%tlv.log tlv;
        return \"ssl_verify=$proxy_protocol_tlv_ssl_verify|ssl_version=$proxy_protocol_tlv_ssl_version|ssl_cn=$proxy_protocol_tlv_ssl_cn|ssl_cipher=$proxy_protocol_tlv_ssl_cipher|ssl_sig_alg=$proxy_protocol_tlv_ssl_sig_alg|ssl_key_alg=$proxy_protocol_tlv_ssl_key_alg|ssl_0x21=$proxy_protocol_tlv_ssl_0x21|ssl_0x99=$proxy_protocol_tlv_ssl_0x99|ssl=$proxy_protocol_tlv_ssl\n\";
    }
    server {
        listen 127.0.0.1:%%PORT_TLV_ALPN%% proxy_protocol;
        access_log %%PREFIX%%access.log pp;
        access_log %%PREFIX%%tlv-errors.log tlv_err;
        return \"$proxy_protocol_tlv_alpn\";
    }
    server {
        listen 127.0.0.1:%%PORT_TLV_SSL_VERSION%% proxy_protocol;
        access_log %%PREFIX%%access.log pp;
        access_log %%PREFIX%%tlv-errors.log tlv_err;
        return \"$proxy_protocol_tlv_ssl_version\";
    }
    server {
        listen 127.0.0.1:%%PORT_TLV_BOGUS%% proxy_protocol;
        access_log %%PREFIX%%access.log pp;
        access_log %%PREFIX%%tlv-errors.log tlv_err;
        return \"$proxy_protocol_tlv_bogus\";
    }
    server {
        listen 127.0.0.1:%%PORT_TLV_BADHEX%% proxy_protocol;
        access_log %%PREFIX%%access.log pp;
        access_log %%PREFIX%%tlv-errors.log tlv_err;
        return \"$proxy_protocol_tlv_0xzz\";
    }
    server {
        listen 127.0.0.1:%%PORT_TLV_HEX256%% proxy_protocol;
        access_log %%PREFIX%%access.log pp;
        access_log %%PREFIX%%tlv-errors.log tlv_err;
        return \"$proxy_protocol_tlv_0x100\";
    }
";

const TLV_PORTS: &[&str] = &["TLV", "TLV_SSL", "TLV_ALPN", "TLV_SSL_VERSION", "TLV_BOGUS", "TLV_BADHEX", "TLV_HEX256"];

/// `$proxy_protocol_tlv_NAME` (nginx 1.23.2, `ngx_proxy_protocol_get_tlv` and
/// `ngx_stream_variable_proxy_protocol_tlv`): a name from the table (alpn 0x01,
/// authority 0x02, unique_id 0x05, ssl 0x20, netns 0x30) or 0xHH (`ngx_hextoi`, any
/// case and length: "0x0001" is 1); `ssl_*` looks inside the SSL TLV (after its client byte and 4-byte verify):
/// version 0x21, cn 0x22, cipher 0x23, sig_alg 0x24, key_alg 0x25, and `ssl_verify` is
/// the verify field as an unsigned decimal. A TLV that is absent — or any TLV when the
/// header had none, or there was no header address — is "not found": empty in
/// `return`, "-" in the access log, nothing logged. nginx 1.22.1 cannot record this.
#[test]
fn tlv_variables_as_nginx_source() {
    let bed = Bed::start(TLV_SERVERS, TLV_PORTS);
    let mut report = Vec::new();
    let mut check = |what: &str, server: &str, send: Vec<u8>, want: &[u8], log: &str| {
        let errors0 = bed.sluice.error_log().matches("[error]").count();
        let o = bed.session(server, 4, &[send], Duration::ZERO, false);
        if o.reply != want {
            report.push(format!("{}: return gave\n    {}\n  want\n    {}", what, escape(&o.reply), escape(want)));
        }
        let line = log_line(&bed, "tlv.log", o.client_port);
        let want_log = format!("{}|{}", o.client_port, log);
        if line.as_deref() != Some(want_log.as_str()) {
            report.push(format!("{}: access log {:?}, want {:?}", what, line, want_log));
        }
        let errors = bed.sluice.error_log().matches("[error]").count() - errors0;
        if errors != 0 {
            report.push(format!("{}: {} error line(s) logged, want none", what, errors));
        }
    };

    let crc = tlv(0x03, &[0, 0, 0, 0]);
    let mut tlvs = [
        tlv(0x01, b"h2"),
        tlv(0x02, b"example.com"),
        tlv(0x05, b"\x00\x01id-42"),
        tlv(0x30, b"ns1"),
        tlv(0xe0, b"x"),
        tlv(0x04, b"\x00\x00"),
    ]
    .concat();
    // the bytes nginx 1.22.1 accepted in the v2_ipv4_tlvs case (address variables there)
    assert_eq!(v2_inet4(&tlvs), case("v2_ipv4_tlvs").send[0], "the recorded TLV header");
    check(
        "named and numbered TLVs",
        "TLV",
        v2_inet4(&tlvs),
        b"alpn=h2|authority=example.com|unique_id=\x00\x01id-42|netns=ns1|0xe0=x|0xE0=x|0x01=h2|0x0001=h2|0x03=|0x99=|ssl_verify=|addr=192.0.2.1\n",
        "200|h2|-|-",
    );
    tlvs.extend_from_slice(&crc);
    check(
        "a CRC32c TLV is a TLV like another",
        "TLV",
        v2_inet4(&tlvs),
        b"alpn=h2|authority=example.com|unique_id=\x00\x01id-42|netns=ns1|0xe0=x|0xE0=x|0x01=h2|0x0001=h2|0x03=\x00\x00\x00\x00|0x99=|ssl_verify=|addr=192.0.2.1\n",
        "200|h2|-|-",
    );
    check(
        "no TLVs",
        "TLV",
        v2_inet4(&[]),
        b"alpn=|authority=|unique_id=|netns=|0xe0=|0xE0=|0x01=|0x0001=|0x03=|0x99=|ssl_verify=|addr=192.0.2.1\n",
        "200|-|-|-",
    );
    check(
        "a v1 header",
        "TLV",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n".to_vec(),
        b"alpn=|authority=|unique_id=|netns=|0xe0=|0xE0=|0x01=|0x0001=|0x03=|0x99=|ssl_verify=|addr=192.0.2.1\n",
        "200|-|-|-",
    );
    check(
        "UNKNOWN",
        "TLV",
        b"PROXY UNKNOWN\r\n".to_vec(),
        b"alpn=|authority=|unique_id=|netns=|0xe0=|0xE0=|0x01=|0x0001=|0x03=|0x99=|ssl_verify=|addr=\n",
        "200|-|-|-",
    );

    let subs =
        [tlv(0x21, b"TLSv1.3"), tlv(0x22, b"alice"), tlv(0x23, b"AES128"), tlv(0x24, b"SHA256"), tlv(0x25, b"EC256")]
            .concat();
    let mut ssl = vec![0x07];
    ssl.extend_from_slice(&20u32.to_be_bytes());
    ssl.extend_from_slice(&subs);
    assert_eq!(v2_inet4(&tlv(0x20, &ssl)), case("v2_ipv4_ssl_tlvs").send[0], "the recorded SSL TLV header");
    let mut want = b"ssl_verify=20|ssl_version=TLSv1.3|ssl_cn=alice|ssl_cipher=AES128|ssl_sig_alg=SHA256|ssl_key_alg=EC256|ssl_0x21=TLSv1.3|ssl_0x99=|ssl=".to_vec();
    want.extend_from_slice(&ssl);
    want.push(b'\n');
    check("the SSL TLV", "TLV_SSL", v2_inet4(&tlv(0x20, &ssl)), &want, "200|-|-|20");
    // verify is unsigned 32-bit ("%uD")
    let mut ssl2 = vec![0x01, 0xff, 0xff, 0xff, 0xfe];
    ssl2.extend_from_slice(&tlv(0x22, b"bob"));
    let mut want =
        b"ssl_verify=4294967294|ssl_version=|ssl_cn=bob|ssl_cipher=|ssl_sig_alg=|ssl_key_alg=|ssl_0x21=|ssl_0x99=|ssl="
            .to_vec();
    want.extend_from_slice(&ssl2);
    want.push(b'\n');
    check("an SSL TLV with a large verify", "TLV_SSL", v2_inet4(&tlv(0x20, &ssl2)), &want, "200|-|-|4294967294");
    check(
        "no SSL TLV",
        "TLV_SSL",
        v2_inet4(&tlv(0x01, b"h2")),
        b"ssl_verify=|ssl_version=|ssl_cn=|ssl_cipher=|ssl_sig_alg=|ssl_key_alg=|ssl_0x21=|ssl_0x99=|ssl=\n",
        "200|h2|-|-",
    );
    assert!(report.is_empty(), "{}\n--- error.log:\n{}", report.join("\n"), bed.sluice.error_log());
}

/// The TLV lookups that fail (`ngx_proxy_protocol_get_tlv`, nginx 1.23.2+): TLV bytes
/// that run past the header log "broken PROXY protocol TLV" and fail the variable; an
/// SSL TLV shorter than its 5 fixed bytes fails it *without* a log line; an unknown
/// name logs `unknown PROXY protocol TLV "NAME"` and is not found; a bad hex number
/// logs `invalid PROXY protocol TLV "NAME"`, but "0x100" is a good number (256) that
/// no one-byte type matches: not found, nothing logged. A failed or not-found variable is empty
/// in `return` (`ngx_stream_script_copy_var_len_code`), which goes on with status 200;
/// the line is logged at `error`, in `ngx_stream_return_handler` after it set the
/// action "returning text".
#[test]
fn tlv_errors_as_nginx_source() {
    let bed = Bed::start(TLV_SERVERS, TLV_PORTS);
    let mut report = Vec::new();
    let mut check = |what: &str, server: &str, send: Vec<u8>, want: Option<&str>| {
        let o = bed.session(server, 4, &[send], Duration::ZERO, false);
        if !o.reply.is_empty() {
            report.push(format!("{}: return gave {}, want nothing", what, escape(&o.reply)));
        }
        let want_log = format!("{}|200", o.client_port);
        let line = log_line(&bed, "tlv-errors.log", o.client_port);
        if line.as_deref() != Some(want_log.as_str()) {
            report.push(format!("{}: access log {:?}, want {:?}", what, line, want_log));
        }
        let got: Vec<String> = error_entries(&o.error).into_iter().filter(|l| !l.contains(" connected to ")).collect();
        let want: Vec<String> = want
            .map(|m| {
                format!(
                    "%%TIME%% [error] %%PID%%#%%PID%%: *%%CONN%% {} while returning text, client: 127.0.0.1, server: 127.0.0.1:%%PORT_{}%%",
                    m, server
                )
            })
            .into_iter()
            .collect();
        let mut caps = bed.caps(o.client_port);
        let same = got.len() == want.len() && want.iter().zip(&got).all(|(w, g)| match_masked(w, g, &mut caps).is_ok());
        if !same {
            report.push(format!(
                "{}: error log\n    {}\n  want\n    {}",
                what,
                got.join("\n    "),
                want.join("\n    ")
            ));
        }
    };
    check(
        "a TLV longer than the header",
        "TLV_ALPN",
        v2_inet4(&[0x01, 0x00, 0x09, b'x']),
        Some("broken PROXY protocol TLV"),
    );
    check("a TLV cut in its own header", "TLV_ALPN", v2_inet4(&[0x01, 0x00]), Some("broken PROXY protocol TLV"));
    check("an SSL TLV shorter than 5 bytes", "TLV_SSL_VERSION", v2_inet4(&tlv(0x20, &[7, 0])), None);
    check(
        "an unknown TLV name",
        "TLV_BOGUS",
        v2_inet4(&tlv(0x01, b"h2")),
        Some("unknown PROXY protocol TLV \"bogus\""),
    );
    check(
        "a bad hex TLV number",
        "TLV_BADHEX",
        v2_inet4(&tlv(0x01, b"h2")),
        Some("invalid PROXY protocol TLV \"0xzz\""),
    );
    check("TLV number 0x100", "TLV_HEX256", v2_inet4(&tlv(0x01, b"h2")), None);
    assert!(report.is_empty(), "{}\n--- error.log:\n{}", report.join("\n"), bed.sluice.error_log());
}

/// The recording covers every group the tests replay (and the tests every group).
#[test]
fn recording_is_complete() {
    let mut groups: Vec<&str> = cases().iter().map(|c| c.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    assert_eq!(
        groups,
        ["oversized", "send", "ssl_preread", "timeout", "v1", "v1_broken", "v2", "v2_broken"],
        "groups in recorded.json"
    );
    let v: Value = serde_json::from_str(RECORDED).expect("json");
    assert_eq!(v["nginx"], "nginx version: nginx/1.22.1");
}

/// Bytes sent with the PROXY header are read before the upstream connects, where no
/// `proxy_upload_rate` applies yet, as nginx does (side by side with nginx 1.22.1: the
/// 3000 bytes of the header's segment reach the backend at once, the next 2000 are
/// paced after them, 1000 a second counted from the first 3000).
#[test]
fn bytes_with_the_header_are_not_paced() {
    let (tx, rx) = std::sync::mpsc::channel::<(Duration, usize)>();
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let t0 = Instant::now();
            let mut buf = [0u8; 8192];
            let mut total = 0;
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
                let _ = tx.send((t0.elapsed(), total));
            }
        }
    });
    let p = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p} proxy_protocol; proxy_pass 127.0.0.1:{b}; \
         proxy_upload_rate 1000; }} }}"
    ));
    let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    let mut first = b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n".to_vec();
    first.extend_from_slice(&[b'a'; 3000]);
    c.write_all(&first).expect("send");
    // The whole 3000 bytes arrive together, long before a paced second would pass.
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < 3000 && Instant::now() < deadline {
        if let Ok((t, total)) = rx.recv_timeout(Duration::from_secs(5)) {
            assert!(t < Duration::from_millis(700), "{total} bytes only after {t:?}: paced");
            got = total;
        }
    }
    assert_eq!(got, 3000);
}

/// On a PROXY protocol listener nginx reads the client once more after the header, before
/// the upstream connects (its read event is still ready), and from then on the session's
/// action is "proxying connection": so a refused first connect is logged "while proxying
/// connection" (side by side with nginx 1.22.1), unlike on a plain listener. The same
/// after a header without addresses (`PROXY UNKNOWN`, v2 `LOCAL`), and the bytes that
/// came with it are counted (nginx: "bytes from/to client:6/0").
#[test]
fn refused_connect_after_a_header_is_logged_while_proxying_connection() {
    let (p, dead) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p} proxy_protocol; proxy_pass 127.0.0.1:{dead}; }} }}"
    ));
    let v2_local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00hello\n";
    let headers: [&[u8]; 3] =
        [b"PROXY TCP4 192.0.2.1 198.51.100.2 4321 443\r\n", b"PROXY UNKNOWN\r\nhello\n", v2_local];
    for (i, h) in headers.into_iter().enumerate() {
        let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
        c.write_all(h).expect("send");
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut b = [0u8; 16];
        let _ = c.read(&mut b);
        let bytes = if i == 0 { 0 } else { 6 };
        let want = format!(
            "connect() failed (111: Connection refused) while proxying connection, client: 127.0.0.1, \
             server: 127.0.0.1:{p}, upstream: \"127.0.0.1:{dead}\", bytes from/to client:{bytes}/0, \
             bytes from/to upstream:0/0"
        );
        let n = i + 1;
        assert!(
            wait_for(Duration::from_secs(5), || s.error_log().matches("connect() failed").count() == n),
            "{}",
            s.error_log()
        );
        assert!(s.error_log().contains(&want), "header {i}: {}", s.error_log());
    }
}

/// A broken header is logged with the bytes the client sent, not UTF-8 replacements
/// (nginx 1.22.1 side by side: `broken header: "X\xff\r\n"`).
#[test]
fn broken_header_bytes_are_logged_as_sent() {
    let p = free_port();
    let s =
        Sluice::start(&format!("events {{}} stream {{ server {{ listen 127.0.0.1:{p} proxy_protocol; return x; }} }}"));
    let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    c.write_all(b"X\xff\r\n").expect("send");
    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = c.read(&mut [0u8; 16]);
    let want: &[u8] = b"broken header: \"X\xff\r\n\"";
    let log = || std::fs::read(s.dir.join("error.log")).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(5), || log().windows(want.len()).any(|w| w == want)),
        "{}",
        String::from_utf8_lossy(&log())
    );
}

/// IPv6 addresses are printed as nginx's ngx_inet6_ntop prints them, with an IPv4 tail
/// for ::a.b.c.d as well as ::ffff:a.b.c.d (side by side with nginx 1.22.1): from a v2
/// header, and as $remote_addr after realip.
#[test]
fn ipv6_addresses_printed_as_nginx() {
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format a '$server_port $proxy_protocol_addr $remote_addr'; \
         access_log %%PREFIX%%a.log a; \
         server {{ listen 127.0.0.1:{p} proxy_protocol; return x; }} \
         server {{ listen 127.0.0.1:{q} proxy_protocol; set_real_ip_from 127.0.0.1; return x; }} }}"
    ));
    let send = |port: u16, bytes: &[u8]| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(bytes).expect("send");
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
    };
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(&[0; 12]);
    v2.extend_from_slice(&[10, 0, 0, 1]);
    v2.extend_from_slice(&[0; 15]);
    v2.push(1);
    v2.extend_from_slice(&[0, 1, 0, 2]);
    send(p, &v2);
    let lines = s.wait_lines("a.log", 1);
    assert_eq!(lines, [format!("{p} ::10.0.0.1 127.0.0.1")]);
    send(q, b"PROXY TCP6 ::1.2.3.4 ::1 1 2\r\n");
    let lines = s.wait_lines("a.log", 2);
    assert_eq!(lines[1], format!("{q} ::1.2.3.4 ::1.2.3.4"));
}

/// A client that sent its PROXY header, its data and its end before sluice took it: as
/// nginx (its first read event carries the hang-up, `pending_eof`), the data is read to
/// its end while the upstream connects, so the session ends as soon as the data is
/// delivered, not after `proxy_upload_rate` would have let the end of file be read
/// (nginx 1.22.1 side by side: "client disconnected, bytes from/to client:2000/0"). The
/// worker is stopped while the client connects, so that all of it is there at once.
#[test]
fn client_end_with_the_header_ends_the_session_once_delivered() {
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = up.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        // An upstream that reads everything and answers nothing.
        for mut c in up.incoming().flatten() {
            std::thread::spawn(move || while c.read(&mut [0u8; 4096]).is_ok_and(|n| n > 0) {});
        }
    });
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p} proxy_protocol; proxy_upload_rate 100; \
         proxy_pass 127.0.0.1:{b}; }} }}"
    ));
    s.signal(libc::SIGSTOP);
    let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    let mut send = b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n".to_vec();
    send.extend_from_slice(&[b'y'; 2000]);
    c.write_all(&send).expect("send");
    c.shutdown(Shutdown::Write).expect("shutdown");
    s.signal(libc::SIGCONT);
    let t = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(t.elapsed() < Duration::from_secs(5), "the session waited {:?} for a paced end of file", t.elapsed());
    let want = "client disconnected, bytes from/to client:2000/0, bytes from/to upstream:0/2000";
    assert!(wait_for(Duration::from_secs(5), || s.error_log().contains(want)), "{}", s.error_log());
}

/// A wildcard socket serves the specific addresses of its port that have no socket of
/// their own, each with its own options: a PROXY header is expected on a connection to
/// the address that asked for it, and "connected to" names the address reached (side by
/// side with nginx 1.22.1; sluice took the flag and the text from the wildcard socket).
/// In a network namespace of the test's own.
#[test]
fn wildcard_socket_takes_each_address_options() {
    crate::common::private_network();
    let (p1, p2) = (crate::common::free_port(), crate::common::free_port());
    let s = crate::common::Sluice::start(&format!(
        "events {{}}
stream {{
    server {{ listen *:{p1}; return \"A $server_addr [$proxy_protocol_addr]\"; }}
    server {{ listen 127.0.0.2:{p1} proxy_protocol; return \"B $server_addr [$proxy_protocol_addr]\"; }}
    server {{ listen {p2} proxy_protocol; return \"C $server_addr [$proxy_protocol_addr]\"; }}
    server {{ listen 127.0.0.2:{p2}; return \"D $server_addr [$proxy_protocol_addr]\"; }}
}}
"
    ));
    let ask = |ip: &str, port: u16, header: bool| {
        let mut c = std::net::TcpStream::connect((ip, port)).expect("connect");
        c.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok();
        if header {
            c.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n").expect("write");
        }
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    assert_eq!(ask("127.0.0.1", p1, false), "A 127.0.0.1 []");
    assert_eq!(ask("127.0.0.2", p1, true), "B 127.0.0.2 [192.0.2.1]");
    assert_eq!(ask("127.0.0.1", p2, true), "C 127.0.0.1 [192.0.2.1]");
    assert_eq!(ask("127.0.0.2", p2, false), "D 127.0.0.2 []");
    let log = s.error_log();
    assert!(log.contains(&format!(" connected to 127.0.0.2:{p1}\n")), "{log}");
    assert!(log.contains(&format!(" connected to 0.0.0.0:{p1}\n")), "{log}");
}

/// `proxy_protocol on`: the header goes to the upstream as soon as it is connected, as
/// nginx's ngx_stream_proxy_init_upstream sends it, not when the client is first read.
/// Seen with an upstream that speaks first and closes (a banner, as mail and database
/// servers send): sluice relayed the banner and ended the session with the header never
/// sent (`$upstream_bytes_sent` 0, no error); nginx 1.22.1 sends it (44 bytes here), and
/// the upstream's reset after the banner is logged.
#[test]
fn header_goes_upstream_on_connect_before_a_banner_and_close() {
    let (p, b) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format f \"$upstream_bytes_sent $upstream_bytes_received $bytes_sent\";\n\
         server {{ listen 127.0.0.1:{b}; return \"220 banner\\n\"; }}\n\
         server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; proxy_protocol on; access_log %%PREFIX%%a.log f; }} }}"
    ));
    for _ in 0..3 {
        let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert_eq!(got, b"220 banner\n");
    }
    let lines = s.wait_lines("a.log", 3);
    assert_eq!(lines, ["44 11 11"; 3], "{}", s.error_log());
    let reset = "recv() failed (104: Connection reset by peer) while proxying and reading from upstream";
    assert_eq!(s.error_log().matches(reset).count(), 3, "{}", s.error_log());
}
