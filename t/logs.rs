//! The stream log module and session logging through the real binary: every variable
//! against real nginx 1.22.1's recorded lines (t/data/logs/), escaping, `access_log off`,
//! several and inherited access logs, `buffer=`, `flush=`, `gzip`, `if=`, variables in
//! the path, and `error_log` per server.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::recorded::*;

/// A format whose first field is the client's port, for finding a session's line.
const FORMAT_P: &str = "log_format p '$remote_port|$status|$server_port|$bytes_sent';";

fn conf(stream: &str) -> String {
    format!("events {{}}\nstream {{\n{FORMAT_P}\n{stream}\n}}\n")
}

/// The recorder's sessions `ok`, `return` and `refused`, in its order, in one fresh
/// sluice with the recorder's configuration: every variable and the info-level error
/// log lines must have nginx's shapes, and the connection numbers nginx's values.
#[test]
fn all_variables_ok_return_refused() {
    let echo = backend(pong);
    let closed = closed_port();
    let (ok, ret, refused) = (free_port(), free_port(), free_port());
    let mut s = Sluice::start(&conf_all(&format!(
        "server {{ listen 127.0.0.1:{ok}; proxy_pass 127.0.0.1:{echo}; }}\n\
         server {{ listen 127.0.0.1:{ret}; return \"hi\\n\"; }}\n\
         server {{ listen 127.0.0.1:{refused}; proxy_pass 127.0.0.1:{closed}; }}"
    )));
    let before = now_epoch();
    let (c_ok, r_ok, _) = client(ok, b"hello\n");
    let (c_ret, r_ret, _) = client(ret, b"");
    let (c_ref, r_ref, _) = client(refused, b"");
    // one more session, to see which number follows the refused one
    let (c_next, _, _) = client(ret, b"");
    // client-replies.json
    assert_eq!(r_ok, b"pong\n");
    assert_eq!(r_ret, b"hi\n");
    assert_eq!(r_ref, b"");

    let base = Caps::new(&s)
        .with("PORT_OK", ok)
        .with("PORT_RETURN", ret)
        .with("PORT_REFUSED", refused)
        .with("PORT_BACKEND_ECHO", echo)
        .with("PORT_BACKEND_CLOSED", closed);
    let mut lines = Vec::new();
    let mut conns = Vec::new();
    for (cport, shape, session) in
        [(c_ok, ERROR_OK, "ok"), (c_ret, ERROR_RETURN, "return"), (c_ref, ERROR_REFUSED, "refused")]
    {
        let mut caps = base.clone();
        lines.push(check_recorded(&s, &mut caps, cport, shape, session));
        conns.push(caps.get("CONN").unwrap_or_default().to_string());
    }
    let next = access_line(&s, "access.log", 1, &c_next.to_string()).expect("line of the fourth session");
    conns.push(fields(&next)[6].to_string());
    let after = now_epoch();

    // nginx numbers accepted and upstream connections from one counter: ok *1 (its
    // upstream 2), return *3, refused *4 (the attempted upstream 5), then 6.
    assert_eq!(conns, ["1", "3", "4", "6"], "connection numbers ($connection, *N)");

    for l in &lines {
        let f = fields(l);
        let msec = seconds(f[8]);
        assert!(msec >= before - 1.0 && msec <= after + 1.0, "$msec {} not in [{}, {}]", msec, before, after);
        assert_eq!(time_local_as_iso(f[9]).as_deref(), Some(f[10]), "$time_local and $time_iso8601 differ");
        let iso = iso8601_epoch(f[10]).expect("iso8601") as f64;
        assert!((iso - msec).abs() < 2.0, "$time_iso8601 {} vs $msec {}", f[10], f[8]);
        for i in [15, 20, 21, 22] {
            if f[i] != "-" {
                assert!(seconds(f[i]) < 5.0, "field {} = {} in {}", i, f[i], l);
            }
        }
    }
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// escape.txt's lines without the map value: `$binary_remote_addr|$upstream_addr|
/// $upstream_connect_time` in a `return` session with each escaping.
#[test]
fn escape_default_json_none() {
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
         log_format esc_default '$binary_remote_addr|$upstream_addr|$upstream_connect_time';\n\
         log_format esc_json escape=json '{{\"bin\":\"$binary_remote_addr\",\"ups\":\"$upstream_addr\",\
         \"uct\":\"$upstream_connect_time\"}}';\n\
         log_format esc_none escape=none '$binary_remote_addr|$upstream_addr|$upstream_connect_time';\n\
         server {{ listen 127.0.0.1:{p}; return \"esc\\n\";\n\
           access_log %%PREFIX%%esc-default.log esc_default;\n\
           access_log %%PREFIX%%esc-json.log esc_json;\n\
           access_log %%PREFIX%%esc-none.log esc_none; }}\n}}\n"
    ));
    let (_, reply, _) = client(p, b"");
    assert_eq!(reply, b"esc\n");
    for v in ["default", "json", "none"] {
        let rec = escape_recorded(v);
        // drop the map value: up to the first '|' (default, none) or the "weird" member
        let want: Vec<u8> = if v == "json" {
            let at = rec.windows(6).position(|w| w == b"\"bin\":").expect("bin member");
            [&b"{"[..], &rec[at..]].concat()
        } else {
            let at = rec.iter().position(|&c| c == b'|').expect("|");
            rec[at + 1..].to_vec()
        };
        let file = format!("esc-{}.log", v);
        wait_for(Duration::from_secs(10), || s.read(&file).ends_with('\n'));
        let got = std::fs::read(s.dir.join(&file)).unwrap_or_default();
        assert_eq!(got.escape_ascii().to_string(), want.escape_ascii().to_string(), "escape={}", v);
    }
    assert_eq!(s.stop(), Some(0));
}

/// The recorded map value `a"b\c<TAB>d<01>e<7f>f<c3 a9>g`, without `map`: put it at the
/// end of a unix listener's path and log `$server_addr` (nginx: "unix:" + the path, from
/// ngx_connection_local_sockaddr/ngx_sock_ntop). The expected value part is escape.txt's.
#[test]
fn escape_recorded_value_via_unix_listen_path() {
    // the conf spelling of the recorder: \" \\ and \t are unescaped by the parser
    let conf_weird = "a\\\"b\\\\c\\td\u{1}e\u{7f}f\u{e9}g";
    let weird: &[u8] = b"a\"b\\c\td\x01e\x7ff\xc3\xa9g";
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
         log_format esc_default '$server_addr|$upstream_addr|$upstream_connect_time';\n\
         log_format esc_json escape=json '{{\"weird\":\"$server_addr\",\"ups\":\"$upstream_addr\",\
         \"uct\":\"$upstream_connect_time\"}}';\n\
         log_format esc_none escape=none '$server_addr|$upstream_addr|$upstream_connect_time';\n\
         server {{ listen \"unix:%%PREFIX%%{conf_weird}\"; return \"esc\\n\";\n\
           access_log %%PREFIX%%esc-default.log esc_default;\n\
           access_log %%PREFIX%%esc-json.log esc_json;\n\
           access_log %%PREFIX%%esc-none.log esc_none; }}\n}}\n"
    ));
    let prefix = s.dir.prefix();
    assert!(prefix.bytes().all(|c| c.is_ascii_alphanumeric() || b"/-_.".contains(&c)), "{}", prefix);
    let path = [prefix.as_bytes(), weird].concat();
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&path));
    let mut c = UnixStream::connect(&path).expect("connect to the unix listener");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).expect("read");
    assert_eq!(reply, b"esc\n");
    let head = format!("unix:{}", prefix);
    for v in ["default", "json", "none"] {
        let rec = escape_recorded(v);
        // the recorded line without $binary_remote_addr (a unix client has no IP
        // address), with "unix:PREFIX" put in front of the value
        let want = if v == "json" {
            let find = |w: &[u8]| rec.windows(w.len()).position(|x| x == w).expect("json member");
            let (bin, ups) = (find(b",\"bin\":"), find(b",\"ups\":"));
            let at = b"{\"weird\":\"".len();
            [&rec[..at], head.as_bytes(), &rec[at..bin], &rec[ups..]].concat()
        } else {
            let f: Vec<&[u8]> = rec.split(|&c| c == b'|').collect();
            assert_eq!(f.len(), 4, "{}", rec.escape_ascii());
            [head.as_bytes(), f[0], b"|", f[2], b"|", f[3]].concat()
        };
        let file = format!("esc-{}.log", v);
        wait_for(Duration::from_secs(10), || s.read(&file).ends_with('\n'));
        let got = std::fs::read(s.dir.join(&file)).unwrap_or_default();
        assert_eq!(got.escape_ascii().to_string(), want.escape_ascii().to_string(), "escape={}", v);
    }
    assert_eq!(s.stop(), Some(0));
}

/// The ssl module's variables exist (a configuration that logs them loads) and are not
/// found for a session without TLS, as nginx 1.22.1 gives them (seen side by side: `[][]`
/// from `return`, `-` in the log).
#[test]
fn ssl_variables_are_not_found_without_tls() {
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format f '$ssl_protocol|$ssl_cipher|$ssl_server_name|$ssl_client_verify|$status'; \
         server {{ listen 127.0.0.1:{p}; return '[$ssl_protocol][$ssl_session_reused]'; access_log %%PREFIX%%a.log f; }} }}"
    ));
    assert_eq!(exchange(p, b""), b"[][]");
    assert_eq!(s.wait_lines("a.log", 1), ["-|-|-|-|200"]);
}

/// `access_log off` in a server turns off the stream-level log for it only.
#[test]
fn access_log_off() {
    let (a, b) = (free_port(), free_port());
    let mut s = Sluice::start(&conf(&format!(
        "access_log %%PREFIX%%access.log p;\n\
         server {{ listen 127.0.0.1:{a}; return a; access_log off; }}\n\
         server {{ listen 127.0.0.1:{b}; return b; }}"
    )));
    let (ca, _, _) = client(a, b"");
    let (cb, _, _) = client(b, b"");
    // sessions end in order in one process: once b's line is there, a's would be too
    let lb = access_line(&s, "access.log", 0, &cb.to_string());
    assert_eq!(lb, Some(format!("{cb}|200|{b}|1")));
    let all = s.read("access.log");
    assert!(!all.contains(&format!("{ca}|")), "access_log off still logged:\n{}", all);
    assert_eq!(all.lines().count(), 1, "{}", all);
    assert_eq!(s.stop(), Some(0));
}

/// nginx logs a session before it closes the client, so a client that has read its end
/// of file finds its line in the access log. The backend's answer and end of file arrive
/// together, the case where sluice holds the last bytes back to send them with the end of
/// file (MSG_MORE): that end of file, too, must leave only after the log phase.
#[test]
fn session_is_logged_before_the_client_sees_its_end() {
    let up = backend(pong);
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{up}; access_log %%PREFIX%%access.log p; }}"
    )));
    for i in 0..300 {
        let (c, answer, _) = client(p, b"ping\n");
        assert_eq!(answer, b"pong\n");
        // no waiting: the line must already be there
        let log = s.read("access.log");
        let line = format!("{c}|200|{p}|5");
        assert!(log.lines().any(|l| l == line), "session {i}: not logged when the client saw its end:\n{log}");
    }
    assert_eq!(s.stop(), Some(0));
}

/// Two `access_log`s in one server both get a line, each in its own format.
#[test]
fn two_access_logs_in_one_server() {
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "log_format q 'Q $remote_port $protocol';\n\
         server {{ listen 127.0.0.1:{p}; return x; access_log %%PREFIX%%one.log p; \
         access_log %%PREFIX%%two.log q; }}"
    )));
    let (c, _, _) = client(p, b"");
    assert_eq!(s.wait_lines("one.log", 1), vec![format!("{c}|200|{p}|1")]);
    assert_eq!(s.wait_lines("two.log", 1), vec![format!("Q {c} TCP")]);
    assert_eq!(s.stop(), Some(0));
}

/// A server without `access_log` inherits the stream{} one; a server with its own does not
/// also write to the stream{} one.
#[test]
fn access_log_inherited_from_stream() {
    let (a, b) = (free_port(), free_port());
    let mut s = Sluice::start(&conf(&format!(
        "access_log %%PREFIX%%main.log p;\n\
         server {{ listen 127.0.0.1:{a}; return a; }}\n\
         server {{ listen 127.0.0.1:{b}; return b; access_log %%PREFIX%%own.log p; }}"
    )));
    let (cb, _, _) = client(b, b"");
    let (ca, _, _) = client(a, b"");
    assert_eq!(access_line(&s, "main.log", 0, &ca.to_string()), Some(format!("{ca}|200|{a}|1")));
    assert_eq!(s.wait_lines("own.log", 1), vec![format!("{cb}|200|{b}|1")]);
    let main = s.read("main.log");
    assert_eq!(main.lines().count(), 1, "the server with its own access_log also wrote main.log:\n{}", main);
    assert_eq!(s.stop(), Some(0));
}

/// `buffer=`: lines wait in memory until QUIT flushes them.
#[test]
fn buffer_flushed_on_quit() {
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p}; return x; access_log %%PREFIX%%buf.log p buffer=64k; \
         access_log %%PREFIX%%now.log p; }}"
    )));
    let (c1, _, _) = client(p, b"");
    let (c2, _, _) = client(p, b"");
    // the unbuffered log is written by the same log phase, after the buffered one
    assert_eq!(s.wait_lines("now.log", 2).len(), 2);
    assert_eq!(s.read("buf.log"), "", "a buffered line reached the file before the buffer was flushed");
    assert_eq!(s.stop(), Some(0));
    assert_eq!(s.read("buf.log"), format!("{c1}|200|{p}|1\n{c2}|200|{p}|1\n"), "buffer not flushed on QUIT");
}

/// `buffer=`: when the next line does not fit, the buffered ones are written first.
#[test]
fn buffer_flushed_when_full() {
    let p = free_port();
    let pad = "x".repeat(400);
    let mut s = Sluice::start(&conf(&format!(
        "log_format big '$remote_port|{pad}';\n\
         server {{ listen 127.0.0.1:{p}; return x; access_log %%PREFIX%%buf.log big buffer=1k; \
         access_log %%PREFIX%%now.log p; }}"
    )));
    let mut ports = Vec::new();
    for i in 1..=2 {
        ports.push(client(p, b"").0);
        assert_eq!(s.wait_lines("now.log", i).len(), i);
        assert_eq!(s.read("buf.log"), "", "written before 1k was filled ({} lines of ~406 bytes)", i);
    }
    // the third line (~406 bytes) does not fit in the ~212 bytes left: the two go out
    ports.push(client(p, b"").0);
    assert_eq!(s.wait_lines("now.log", 3).len(), 3);
    let want: Vec<String> = ports.iter().map(|c| format!("{c}|{pad}")).collect();
    assert_eq!(s.read("buf.log").lines().collect::<Vec<_>>(), &want[..2], "flush when the buffer is full");
    assert_eq!(s.stop(), Some(0));
    assert_eq!(s.read("buf.log").lines().collect::<Vec<_>>(), want, "the rest is flushed on QUIT");
}

/// `flush=1s`: a buffered line is written about a second later without any other event.
#[test]
fn flush_timer() {
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p}; return x; access_log %%PREFIX%%buf.log p buffer=64k flush=1s; \
         access_log %%PREFIX%%now.log p; }}"
    )));
    let (c, _, _) = client(p, b"");
    assert_eq!(s.wait_lines("now.log", 1).len(), 1);
    let t = Instant::now();
    assert_eq!(s.read("buf.log"), "", "flushed at once");
    let lines = s.wait_lines("buf.log", 1);
    let took = t.elapsed();
    assert_eq!(lines, vec![format!("{c}|200|{p}|1")], "not flushed by the flush= timer");
    assert!(took >= Duration::from_millis(500), "flushed after {:?}, flush=1s", took);
    assert_eq!(s.stop(), Some(0));
}

/// `gzip`: the file is gzip (one member per flush), the lines inside.
#[test]
fn gzip_log() {
    use flate2::read::MultiGzDecoder;
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p}; return x; access_log %%PREFIX%%gz.log p gzip; \
         access_log %%PREFIX%%gz9.log p gzip=9 buffer=4k; access_log %%PREFIX%%now.log p; }}"
    )));
    let (c1, _, _) = client(p, b"");
    let (c2, _, _) = client(p, b"");
    assert_eq!(s.wait_lines("now.log", 2).len(), 2);
    assert_eq!(s.stop(), Some(0));
    let want = format!("{c1}|200|{p}|1\n{c2}|200|{p}|1\n");
    for f in ["gz.log", "gz9.log"] {
        let raw = std::fs::read(s.dir.join(f)).unwrap_or_default();
        assert!(raw.starts_with(&[0x1f, 0x8b]), "{} is not gzip: {:?}", f, &raw[..raw.len().min(16)]);
        // The header's OS byte is Unix (3), as zlib writes it for nginx.
        assert_eq!(raw.get(9), Some(&3), "{}: {:?}", f, &raw[..raw.len().min(16)]);
        let mut text = String::new();
        MultiGzDecoder::new(&raw[..]).read_to_string(&mut text).unwrap_or_else(|e| panic!("{}: {}", f, e));
        assert_eq!(text, want, "{}", f);
    }
}

/// The gzip files' bytes are nginx's (t/data/record-gzip-logs.sh): zlib's deflate with
/// the window and memory levels nginx gives a buffer of that size, at levels 1 and 9.
#[test]
fn gzip_log_bytes_are_nginx_s() {
    let (p1, p2) = (free_port(), free_port());
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n log_format f 'line $status and some constant text to compress, again and again';\n \
         server {{ listen 127.0.0.1:{p1}; return x; access_log %%PREFIX%%gzip-level1.gz f gzip=1 buffer=64k; }}\n \
         server {{ listen 127.0.0.1:{p2}; return x; access_log %%PREFIX%%gzip-level9.gz f gzip=9 buffer=64k; }}\n}}\n"
    ));
    for _ in 0..7 {
        for p in [p1, p2] {
            assert_eq!(exchange(p, b""), b"x");
        }
    }
    assert_eq!(s.stop(), Some(0));
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/logs");
    for f in ["gzip-level1.gz", "gzip-level9.gz"] {
        let want = std::fs::read(data.join(f)).expect("recorded");
        assert_eq!(std::fs::read(s.dir.join(f)).unwrap_or_default(), want, "{}", f);
    }
}

/// `if=`: no line when the condition is empty (or "0").
#[test]
fn if_condition() {
    let echo = backend(pong);
    let (r, x) = (free_port(), free_port());
    let mut s = Sluice::start(&conf(&format!(
        "access_log %%PREFIX%%if.log p if=$upstream_addr;\n\
         access_log %%PREFIX%%all.log p;\n\
         server {{ listen 127.0.0.1:{r}; return x; }}\n\
         server {{ listen 127.0.0.1:{x}; proxy_pass 127.0.0.1:{echo}; }}"
    )));
    let (cr, _, _) = client(r, b"");
    let (cx, reply, _) = client(x, b"hello\n");
    assert_eq!(reply, b"pong\n");
    assert_eq!(s.wait_lines("all.log", 2).len(), 2);
    assert_eq!(s.wait_lines("if.log", 1), vec![format!("{cx}|200|{x}|5")]);
    let all = s.read("if.log");
    // (The whole first field: another port may end with the same digits.)
    let logged = all.lines().any(|l| l.starts_with(&format!("{cr}|")));
    assert!(!logged, "logged with an empty if= condition:\n{}", all);
    assert_eq!(s.stop(), Some(0));
}

/// A variable in the access_log path: the file is chosen per session.
#[test]
fn variable_in_path() {
    let (a, b) = (free_port(), free_port());
    let mut s = Sluice::start(&conf(&format!(
        "access_log %%PREFIX%%access-$server_port.log p;\n\
         server {{ listen 127.0.0.1:{a}; return a; }}\n\
         server {{ listen 127.0.0.1:{b}; return b; }}"
    )));
    let (ca, _, _) = client(a, b"");
    let (cb, _, _) = client(b, b"");
    let (ca2, _, _) = client(a, b"");
    assert_eq!(
        s.wait_lines(&format!("access-{a}.log"), 2),
        vec![format!("{ca}|200|{a}|1"), format!("{ca2}|200|{a}|1")]
    );
    assert_eq!(s.wait_lines(&format!("access-{b}.log"), 1), vec![format!("{cb}|200|{b}|1")]);
    assert_eq!(s.stop(), Some(0));
}

/// `error_log` in a server: that server's session lines go to its file, not the main one,
/// at that file's level.
#[test]
fn error_log_in_server() {
    let closed = closed_port();
    let echo = backend(pong);
    let (a, b, o, e) = (free_port(), free_port(), free_port(), free_port());
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{a}; error_log %%PREFIX%%srv.log info; proxy_pass 127.0.0.1:{closed}; }}\n\
         server {{ listen 127.0.0.1:{o}; error_log %%PREFIX%%ok.log info; proxy_pass 127.0.0.1:{echo}; }}\n\
         server {{ listen 127.0.0.1:{e}; error_log %%PREFIX%%err.log error; proxy_pass 127.0.0.1:{closed}; }}\n\
         server {{ listen 127.0.0.1:{b}; return b; }}"
    )));
    let (ca, _, _) = client(a, b"");
    let (co, _, _) = client(o, b"hello\n");
    let (ce, _, _) = client(e, b"");
    let (cb, _, _) = client(b, b"");
    // b's line in the main log shows the main log has caught up with a's session
    let (_, b_lines) = session_lines(&s, "error.log", cb, 1);
    assert_eq!(b_lines.len(), 1, "{}", s.error_log());
    let mut caps = Caps::new(&s).with("PORT_REFUSED", a).with("PORT_BACKEND_CLOSED", closed).with("CLIENT_PORT", ca);
    let (conn, lines) = session_lines(&s, "srv.log", ca, 2);
    if let Err(e) = match_file(ERROR_REFUSED, &lines, &mut caps) {
        panic!("srv.log:\n{}\n---\n{}", e, s.read("srv.log"));
    }
    let main = s.error_log();
    assert!(conn_lines(&main, &conn).is_empty(), "session *{} also in the main error log:\n{}", conn, main);
    assert!(conn_of(&s.read("srv.log"), cb).is_none(), "the other server's session went to srv.log");
    // a proxied session: the upstream connection's lines go to the server's log too
    let mut caps = Caps::new(&s).with("PORT_OK", o).with("PORT_BACKEND_ECHO", echo).with("CLIENT_PORT", co);
    let (conn, lines) = session_lines(&s, "ok.log", co, 3);
    if let Err(e) = match_file(ERROR_OK, &lines, &mut caps) {
        panic!("ok.log:\n{}\n---\n{}", e, s.read("ok.log"));
    }
    assert!(conn_lines(&main, &conn).is_empty(), "session *{} also in the main error log:\n{}", conn, main);
    // level error: only the [error] line, in err.log, and nothing in the main log
    let err = s.read("err.log");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" *")).collect();
    assert_eq!(lines.len(), 1, "err.log (level error):\n{}", err);
    assert!(lines[0].contains(" [error] ") && lines[0].contains(&format!("server: 127.0.0.1:{e}, ")), "{}", lines[0]);
    let conn = lines[0].split(": *").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default();
    assert!(conn_lines(&s.error_log(), conn).is_empty(), "session *{} in the main error log:\n{}", conn, s.error_log());
    let connected = format!(" client 127.0.0.1:{ce} connected to ");
    assert!(!err.contains(&connected) && !s.error_log().contains(&connected), "an info line below level error");
    assert_eq!(s.stop(), Some(0));
}

/// `access_log` parameters nginx 1.22.1 refuses (ngx_stream_log_set_log), checked with
/// `-t`: each must fail with exactly that `[emerg]` at that line.
#[test]
fn access_log_parameter_errors() {
    let cases: &[(&str, &str)] = &[
        // flush= needs a buffer (gzip would imply one; flush= does not)
        ("access_log a.log p flush=1s;", "no buffer is defined for access_log \"a.log\""),
        ("access_log a-$server_port.log p buffer=4k;", "buffered logs cannot have variables in name"),
        ("access_log a.log p buffer=0;", "invalid buffer size \"0\""),
        ("access_log a.log p flush=0;", "invalid flush time \"0\""),
        ("access_log a.log p gzip=10;", "invalid compression level \"10\""),
        (
            "access_log a.log p buffer=4k;\n        access_log a.log p buffer=8k;",
            "access_log \"a.log\" already defined with conflicting parameters",
        ),
    ];
    let mut failed = Vec::new();
    for (directive, msg) in cases {
        let dir = TempDir::new("logconf");
        let text = format!(
            "events {{}}\nstream {{\n    {FORMAT_P}\n    server {{\n        listen 127.0.0.1:{};\n        \
             return x;\n        {directive}\n    }}\n}}\n",
            free_port()
        );
        // the line of the directive nginx names: the last one written
        let line =
            text.lines().position(|l| l.contains("access_log")).expect("line") + 1 + directive.matches('\n').count();
        std::fs::write(dir.join("nginx.conf"), &text).expect("write conf");
        let p = dir.path().to_string_lossy().into_owned();
        let out = run(&["-t", "-p", &p, "-c", &format!("{p}/nginx.conf"), "-e", &format!("{p}/error.log")], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("[emerg] {} in {}/nginx.conf:{}", msg, p, line);
        if !stderr.lines().next().is_some_and(|l| l.ends_with(&want)) || out.status.code() != Some(1) {
            failed.push(format!(
                "{}\n  want exit 1 and a first line ending {:?}\n  got exit {:?}:\n{}",
                directive,
                want,
                out.status.code(),
                stderr
            ));
        }
    }
    assert!(failed.is_empty(), "{} of {} cases differ from nginx:\n{}", failed.len(), cases.len(), failed.join("\n"));
}

/// The address variables and session lines over IPv6 loopback (nginx's ngx_sock_ntop:
/// "[::1]:PORT" with a port, "::1" without; 16 bytes of `$binary_remote_addr`).
#[test]
fn ipv6_addresses() {
    let l = std::net::TcpListener::bind("[::1]:0").expect("bind [::1]");
    let b = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || pong(c));
        }
    });
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format v6 '$remote_addr|$remote_port|$binary_remote_addr|$server_addr|\
         $server_port|$upstream_addr|$status';\n  server {{ listen [::1]:{p}; proxy_pass [::1]:{b}; \
         access_log %%PREFIX%%v6.log v6; }}\n}}\n"
    ));
    let mut c = std::net::TcpStream::connect(("::1", p)).expect("connect [::1]");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let cport = c.local_addr().expect("addr").port();
    std::io::Write::write_all(&mut c, b"hello\n").expect("write");
    let (reply, err) = read_all(&mut c);
    assert!(err.is_none(), "{:?}", err);
    assert_eq!(reply, b"pong\n");
    let bin = format!("{}\\x01", "\\x00".repeat(15));
    assert_eq!(s.wait_lines("v6.log", 1), vec![format!("::1|{cport}|{bin}|::1|{p}|[::1]:{b}|200")]);
    let shape = ERROR_OK.replace("127.0.0.1:", "[::1]:");
    let mut caps = Caps::new(&s).with("PORT_OK", p).with("PORT_BACKEND_ECHO", b).with("CLIENT_PORT", cport);
    let needle = format!(" client [::1]:{cport} connected to ");
    wait_for(Duration::from_secs(10), || s.error_log().lines().filter(|l| l.contains(" *")).count() >= 3);
    let log = s.error_log();
    let conn = log
        .lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split(": *").nth(1))
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no {:?} line:\n{}", needle, log))
        .to_string();
    if let Err(e) = match_file(&shape, &conn_lines(&log, &conn), &mut caps) {
        panic!("{}", e);
    }
    assert_eq!(s.stop(), Some(0));
    no_alerts(&s);
}

/// `log_format` joins several strings into one format, with nothing between them.
#[test]
fn log_format_of_several_strings() {
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format m '$remote_port' '|' \"$status\" '|$protocol';\n  \
         server {{ listen 127.0.0.1:{p}; return x; access_log %%PREFIX%%m.log m; }}\n}}\n"
    ));
    let (c, _, _) = client(p, b"");
    assert_eq!(s.wait_lines("m.log", 1), vec![format!("{c}|200|TCP")]);
    assert_eq!(s.stop(), Some(0));
}

/// Each `log_format` argument is compiled on its own (recorded from nginx 1.22.1): a
/// variable name ends with its argument, and `escape=` after the first string is text.
#[test]
fn log_format_arguments_end_variable_names() {
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  log_format f '$a' 'b|' $a '$a' '-end';\n  log_format g '$status' escape=json;\n  \
         server {{ listen 127.0.0.1:{p}; set $a X; set $ab Y; return x; \
         access_log %%PREFIX%%f.log f; access_log %%PREFIX%%g.log g; }}\n}}\n"
    ));
    client(p, b"");
    assert_eq!(s.wait_lines("f.log", 1), ["Xb|XX-end"]);
    assert_eq!(s.wait_lines("g.log", 1), ["200escape=json"]);
    assert_eq!(s.stop(), Some(0));
}

/// A path with variables that cannot be opened: nginx's crit line for every session
/// (recorded from nginx 1.22.1), the session otherwise unharmed; the template gets the
/// prefix as text, and ".." in a value is followed.
#[test]
fn variable_path_that_cannot_be_opened() {
    let (p, q) = (free_port(), free_port());
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p}; return x; access_log %%PREFIX%%nodir/$server_port.log p; }}\n\
         server {{ listen 127.0.0.1:{q}; return y; set $v ../up/x; access_log logs/$v.log p; }}"
    )));
    for d in ["up", "logs"] {
        std::fs::create_dir_all(s.dir.join(d)).expect("mkdir");
    }
    for _ in 0..2 {
        assert_eq!(exchange(p, b""), b"x");
    }
    let (cq, _, _) = client(q, b"");
    let want = format!(
        "open() \"{}nodir/{p}.log\" failed (2: No such file or directory) while returning text, \
         client: 127.0.0.1, server: 127.0.0.1:{p}",
        s.dir.prefix()
    );
    wait_for(Duration::from_secs(5), || s.error_log().matches(&want).count() >= 2);
    let crit: Vec<_> = s.error_log().lines().filter(|l| l.contains("[crit]")).map(str::to_string).collect();
    assert_eq!(crit.len(), 2, "{crit:?}");
    assert!(crit.iter().all(|l| l.ends_with(&want)), "{crit:?}");
    assert_eq!(s.wait_lines("up/x.log", 1), [format!("{cq}|200|{q}|1")]);
    assert_eq!(s.stop(), Some(0));
}

/// The log phase's lines of a proxied session say 0 bytes to upstream: nginx takes that
/// count from the upstream connection, closed by then; "from upstream" stays (recorded
/// from nginx 1.22.1: `bytes from/to upstream:8/0` after `upstream disconnected, ...
/// 8/5`).
#[test]
fn log_phase_lines_of_a_proxied_session_count_nothing_to_upstream() {
    let b = backend(|mut c| {
        let mut buf = [0u8; 5];
        if c.read_exact(&mut buf).is_ok() {
            let _ = std::io::Write::write_all(&mut c, &[&b"re:"[..], &buf].concat());
        }
    });
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; access_log %%PREFIX%%nodir/$server_port.log p; }}"
    )));
    assert_eq!(exchange(p, b"hello"), b"re:hello");
    let tail = format!("upstream: \"127.0.0.1:{b}\", bytes from/to client:5/8, bytes from/to upstream:8/0");
    assert!(wait_for(Duration::from_secs(5), || s.error_log().contains(&tail)), "{}", s.error_log());
    let log = s.error_log();
    let crit = log.lines().find(|l| l.contains("[crit]")).expect("the open() line");
    assert!(crit.ends_with(&tail), "{crit}");
    assert!(log.contains("upstream disconnected, bytes from/to client:5/8, bytes from/to upstream:8/5"), "{log}");
    assert_eq!(s.stop(), Some(0));
}

/// A log that cannot be written (/dev/full): an alert in the session's context at most
/// once a minute per `access_log`, and the buffered log's alert at its flush, outside
/// any session (both recorded from nginx 1.22.1).
#[test]
fn access_log_write_failures_are_alerts() {
    let full = TempDir::new("full");
    std::os::unix::fs::symlink("/dev/full", full.join("buffered")).expect("symlink");
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p}; return x; access_log /dev/full p; \
         access_log {}buffered p buffer=4k flush=100ms; }}",
        full.prefix()
    )));
    for _ in 0..3 {
        assert_eq!(exchange(p, b""), b"x");
    }
    let buffered = format!(
        "[alert] {pid}#{pid}: write() to \"{}buffered\" failed (28: No space left on device)",
        full.prefix(),
        pid = s.pid()
    );
    wait_for(Duration::from_secs(5), || s.error_log().contains(&buffered));
    let log = s.error_log();
    let alerts: Vec<_> = log.lines().filter(|l| l.contains("[alert]")).map(|l| l.get(20..).unwrap_or("")).collect();
    assert_eq!(
        alerts,
        [
            format!(
                "[alert] {pid}#{pid}: *1 write() to \"/dev/full\" failed (28: No space left on device) while returning \
                 text, client: 127.0.0.1, server: 127.0.0.1:{p}",
                pid = s.pid()
            ),
            buffered.clone(),
        ],
        "{log}"
    );
    assert_eq!(s.stop(), Some(0));
}

/// An access log line is one write(2), as nginx's ngx_write_fd: a short one (the file
/// size limit reached mid-line, as a disk filling up) is reported as "was incomplete: N
/// of LEN" and not retried (a retry at the limit fails, and raises SIGXFSZ); with
/// `gzip` (buffered, so at exit), nginx's short write is "failed" with no errno (its gzip
/// writer returns -1 with errno 0). Side by side with nginx 1.22.1 under the same RLIMIT_FSIZE: the same lines.
#[test]
fn access_log_short_writes_are_incomplete() {
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "log_format f '$server_port $status 0123456789012345678901234567890123456789';\n\
         server {{ listen 127.0.0.1:{p}; return ok; access_log %%PREFIX%%a.log f; \
         access_log %%PREFIX%%z.log f gzip; }}"
    )));
    const LIMIT: u64 = 8192;
    std::fs::write(s.dir.join("a.log"), vec![b'.'; LIMIT as usize - 16]).expect("fill a.log");
    std::fs::write(s.dir.join("z.log"), vec![b'.'; LIMIT as usize - 10]).expect("fill z.log");
    let rl = libc::rlimit { rlim_cur: LIMIT, rlim_max: LIMIT };
    // SAFETY: prlimit(2) on the process this test started, with a struct we own.
    let r = unsafe { libc::prlimit(s.pid(), libc::RLIMIT_FSIZE, &rl, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    assert_eq!(exchange(p, b""), b"ok");
    let len = format!("{p} 200 0123456789012345678901234567890123456789\n").len();
    let (a, z) = (format!("{}a.log", s.dir.prefix()), format!("{}z.log", s.dir.prefix()));
    let alerts = |s: &Sluice| -> Vec<String> {
        let log = s.error_log();
        log.lines()
            .filter_map(|l| l.split_once("[alert] ").map(|x| x.1.split_once(' ').map_or("", |y| y.1).to_string()))
            .collect()
    };
    let incomplete = format!(
        "*1 write() to \"{a}\" was incomplete: 16 of {len} while returning text, client: 127.0.0.1, server: 127.0.0.1:{p}"
    );
    wait_for(Duration::from_secs(5), || !alerts(&s).is_empty());
    assert_eq!(alerts(&s), std::slice::from_ref(&incomplete), "{}", s.error_log());
    // `gzip` buffers (64k): the member is written at exit, and falls short there.
    assert_eq!(s.stop(), Some(0), "{}", s.error_log());
    assert_eq!(alerts(&s), [incomplete, format!("write() to \"{z}\" failed")], "{}", s.error_log());
}

/// An error log line is at most 2048 bytes with its newline (nginx's NGX_MAX_ERROR_STR):
/// the message is cut, and the context after it is lost (recorded from nginx 1.22.1).
#[test]
fn long_error_lines_are_cut_as_nginx() {
    let p = free_port();
    let host = "h".repeat(3000);
    let mut s = Sluice::start(&conf(&format!("server {{ listen 127.0.0.1:{p}; set $u {host}; proxy_pass $u:80; }}")));
    assert_eq!(exchange(p, b""), b"");
    wait_for(Duration::from_secs(5), || s.error_log().contains("no resolver defined"));
    let log = s.error_log();
    let line = log.lines().find(|l| l.contains("no resolver defined")).expect("the resolver line");
    assert_eq!(line.len(), 2047, "{line}");
    assert!(line.ends_with("hhhh") && !line.contains("client:"), "{line}");
    assert_eq!(s.stop(), Some(0));
}

/// Bytes of the configuration that are not UTF-8 (Latin-1 text, say) reach clients and
/// logs as they are written, as nginx keeps its words as bytes (recorded side by side).
#[test]
fn configuration_bytes_that_are_not_utf8_pass_through() {
    let raw = TempDir::new("latin1");
    let p = free_port();
    let mut text = b"log_format l 'L\xff\xc3\xa9[$x]';\n".to_vec();
    text.extend_from_slice(format!("server {{ listen 127.0.0.1:{p}; access_log {}l.log l; ", raw.prefix()).as_bytes());
    text.extend_from_slice(b"set $x \"\xe9\xc3\xa9\"; return \"R\xff\xc3\xa9$x\"; }\n");
    std::fs::write(raw.join("raw.conf"), &text).expect("write");
    let mut s = Sluice::start(&format!("events {{}}\nstream {{ include {}raw.conf; }}\n", raw.prefix()));
    assert_eq!(exchange(p, b""), b"R\xff\xc3\xa9\xe9\xc3\xa9");
    wait_for(Duration::from_secs(5), || std::fs::read(raw.join("l.log")).is_ok_and(|l| l.ends_with(b"\n")));
    assert_eq!(std::fs::read(raw.join("l.log")).unwrap_or_default(), b"L\xff\xc3\xa9[\\xE9\\xC3\\xA9]\n");
    assert_eq!(s.stop(), Some(0));
}

/// `open_log_file_cache`: a path with variables keeps its descriptor for `valid`, so
/// lines follow a renamed file even across USR1; with the cache off each line opens the
/// name (both recorded side by side with nginx 1.22.1).
#[test]
fn open_log_file_cache_keeps_descriptors() {
    let (a, b) = (free_port(), free_port());
    let mut s = Sluice::start(&conf(&format!(
        "open_log_file_cache max=10 valid=1m inactive=1m;\n\
         server {{ listen 127.0.0.1:{a}; set $v a; return x; access_log %%PREFIX%%$v.log p; }}\n\
         server {{ listen 127.0.0.1:{b}; set $v b; return x; access_log %%PREFIX%%$v.log p; open_log_file_cache off; }}"
    )));
    let (a1, _, _) = client(a, b"");
    let (b1, _, _) = client(b, b"");
    s.wait_lines("a.log", 1);
    s.wait_lines("b.log", 1);
    for f in ["a.log", "b.log"] {
        std::fs::rename(s.dir.join(f), s.dir.join(&format!("{f}.1"))).expect("rename");
    }
    let (a2, _, _) = client(a, b"");
    let (b2, _, _) = client(b, b"");
    s.signal(libc::SIGUSR1);
    wait_for(Duration::from_secs(5), || s.error_log().contains("reopening logs"));
    let (a3, _, _) = client(a, b"");
    assert_eq!(
        s.wait_lines("a.log.1", 3),
        [format!("{a1}|200|{a}|1"), format!("{a2}|200|{a}|1"), format!("{a3}|200|{a}|1")]
    );
    assert!(!s.dir.join("a.log").exists(), "a.log was opened again by name");
    assert_eq!(s.wait_lines("b.log.1", 1), [format!("{b1}|200|{b}|1")]);
    assert_eq!(s.wait_lines("b.log", 1), [format!("{b2}|200|{b}|1")]);
    assert_eq!(s.stop(), Some(0));
}

/// A UDP socket standing in for a syslog server, and its port (reads time out at 5 s).
fn syslog_sink() -> (std::net::UdpSocket, u16) {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("syslog sink");
    sink.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let port = sink.local_addr().expect("addr").port();
    (sink, port)
}

/// `error_log syslog:`: one datagram per line, `<PRI>Mon dd hh:mm:ss HOST TAG: LINE`
/// (nginx-tests stream_error_log.t), facility local7 by default, severity from the level.
#[test]
fn error_log_to_syslog() {
    let (sink, sport) = syslog_sink();
    let p = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{p}; return ok; \
         error_log syslog:server=127.0.0.1:{sport},tag=edge info; }} }}"
    ));
    assert_eq!(exchange(p, b""), b"ok");
    let mut buf = [0u8; 4096];
    let n = sink.recv(&mut buf).expect("a syslog datagram");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // <190> = local7 (23) * 8 + info (6).
    assert!(msg.starts_with("<190>"), "{msg}");
    let rest = &msg[5..];
    let month = &rest[..3];
    assert!(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].contains(&month));
    let host = sluice::core::log::hostname();
    assert!(rest[16..].starts_with(&format!("{host} edge: ")), "{msg}");
    assert!(msg.contains("[info]") && msg.contains("client 127.0.0.1:") && !msg.ends_with('\n'), "{msg}");
}

/// A main error log with no file in it (syslog only, or memory): nginx adds its default
/// one, at `error` (ngx_log_open_default), here the `-e` file; and the outputs of a log
/// take a line most verbose first (ngx_log_insert), whatever their order in the file.
/// Both recorded side by side with nginx 1.22.1.
#[test]
fn syslog_only_error_log_keeps_the_default_file_and_outputs_go_by_level() {
    let (sink, sport) = syslog_sink();
    let (p, dead) = (free_port(), free_port());
    let globals = format!(
        "daemon off;\nmaster_process off;\npid %%PREFIX%%sluice.pid;\n\
         error_log syslog:server=127.0.0.1:{sport},tag=first error;\n\
         error_log syslog:server=127.0.0.1:{sport},tag=second info;\n"
    );
    let s = Sluice::start_with_globals(
        &globals,
        &format!("events {{}} stream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{dead}; }} }}"),
        &["-e", "%%PREFIX%%ee.log"],
    );
    let _ = exchange(p, b"");
    let ee = || s.read("ee.log");
    assert!(wait_for(Duration::from_secs(5), || ee().contains("connect() failed")), "{}", ee());
    assert!(!ee().contains("[info]"), "the default log is at error: {}", ee());
    // The startup notices, then the session's: [info] to "second" only, then [error] to
    // "second" (info) before "first" (error).
    let mut tags = Vec::new();
    let mut buf = [0u8; 4096];
    while tags.len() < 3 {
        let n = sink.recv(&mut buf).expect("a syslog datagram");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("*1 ") {
            let tag = msg.split_whitespace().nth(4).unwrap_or("").to_string();
            let level = if msg.contains(" [info] ") { "[info]" } else { "[error]" };
            tags.push(format!("{tag} {level}"));
        }
    }
    assert_eq!(tags, ["second: [info]", "second: [error]", "first: [error]"]);
}

/// An error log's own syslog peer failing: a missing unix socket is nginx's `[alert]
/// connect() failed`, logged to the main log (the peer itself is busy meanwhile), for
/// every line it is given; and a line with a NUL byte reaches syslog cut there (nginx
/// copies it as a C string) while the file keeps it whole. Recorded side by side with
/// nginx 1.22.1.
#[test]
fn error_log_syslog_failures_are_logged_and_lines_end_at_a_nul() {
    let (sink, sport) = syslog_sink();
    let (p, q) = (free_port(), free_port());
    let dir = TempDir::new("no-sock");
    let missing = dir.join("missing.sock");
    let s = Sluice::start(&format!(
        "events {{}} stream {{ \
         server {{ listen 127.0.0.1:{p}; return x; error_log syslog:server=unix:{m} info; }} \
         server {{ listen 127.0.0.1:{q} proxy_protocol; return x; error_log syslog:server=127.0.0.1:{sport} error; error_log %%PREFIX%%srv.log error; }} }}",
        m = missing.display()
    ));
    assert_eq!(exchange(p, b""), b"x");
    let pid = s.pid();
    let want = format!("[alert] {pid}#{pid}: connect() failed (2: No such file or directory)");
    assert!(wait_for(Duration::from_secs(5), || s.error_log().contains(&want)), "{}", s.error_log());

    let _ = exchange(q, b"PROXY TCP4 1.2.3.4\x00zz 5.6.7.8 1 2\r\n");
    let mut buf = [0u8; 4096];
    let n = sink.recv(&mut buf).expect("a syslog datagram");
    assert!(buf[..n].ends_with(b"*2 broken header: \"PROXY TCP4 1.2.3.4"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let file = std::fs::read(s.dir.join("srv.log")).expect("srv.log");
    let whole: &[u8] = b"broken header: \"PROXY TCP4 1.2.3.4\x00zz 5.6.7.8 1 2";
    assert!(file.windows(whole.len()).any(|w| w == whole), "the file keeps the whole line");
}

/// `access_log syslog:`: a datagram per line, without its newline, at severity info
/// unless given; recorded side by side with nginx 1.22.1 for this configuration:
/// "<190>Nov 22 05:35:22 vm nginx: 127.0.0.1 200 x" and, with tag, severity, facility and
/// nohostname, "<140>Nov 22 05:35:22 sl: 127.0.0.1 200 x". Buffering is refused.
#[test]
fn access_log_to_syslog() {
    let (sink, sport) = syslog_sink();
    let p = free_port();
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ log_format f '$remote_addr $status x'; server {{ listen 127.0.0.1:{p}; return hi; \
         access_log syslog:server=127.0.0.1:{sport} f; \
         access_log syslog:server=127.0.0.1:{sport},tag=sl,severity=warn,facility=local1,nohostname f; }} }}"
    ));
    assert_eq!(exchange(p, b""), b"hi");
    let host = sluice::core::log::hostname();
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut buf = [0u8; 4096];
        let n = sink.recv(&mut buf).expect("a syslog datagram");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        // "<PRI>Mon dd hh:mm:ss " is 5 + 16 bytes long.
        got.push(format!("{}{}", &msg[..5], msg.get(21..).unwrap_or("")));
    }
    assert_eq!(got, [format!("<190>{host} nginx: 127.0.0.1 200 x"), "<140>sl: 127.0.0.1 200 x".to_string()]);

    let dir = TempDir::new("syslog-buffer");
    std::fs::write(
        dir.join("s.conf"),
        "events {} stream { log_format f x; access_log syslog:server=127.0.0.1:514 f buffer=4k; \
         server { listen 127.0.0.1:1; return x; } }\n",
    )
    .expect("write");
    let out = run(&["-t", "-p", &dir.prefix(), "-c", "s.conf"], dir.path());
    let err = console(&out.stderr);
    assert!(!out.status.success() && err.contains("[emerg] logs to syslog cannot be buffered in "), "{err}");
}

/// A syslog server that is not listening: the ICMP error fails the next send, and
/// nginx 1.22.1 logs it so (recorded side by side: the second of three sessions).
#[test]
fn access_log_to_a_closed_syslog_port() {
    let (p, dead) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format f x; server {{ listen 127.0.0.1:{p}; return hi; \
         access_log syslog:server=127.0.0.1:{dead} f; }} }}"
    ));
    for _ in 0..3 {
        assert_eq!(exchange(p, b""), b"hi");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = s.pid();
    let want = [
        format!("[error] {pid}#{pid}: send() failed (111: Connection refused)"),
        format!("[warn] {pid}#{pid}: *2 send() to syslog failed while returning text, client: 127.0.0.1, server: 127.0.0.1:{p}"),
    ];
    let got = || -> Vec<String> {
        s.error_log().lines().filter(|l| l.contains("send()")).map(|l| l.get(20..).unwrap_or("").to_string()).collect()
    };
    wait_for(Duration::from_secs(5), || got().len() >= 2);
    assert_eq!(got(), want, "{}", s.error_log());
}

/// Syslog servers as `ngx_parse_url` takes them: an IPv6 address in brackets and a unix
/// datagram socket (both delivered by nginx 1.22.1 side by side).
#[test]
fn syslog_to_ipv6_and_unix_sockets() {
    let six = std::net::UdpSocket::bind("[::1]:0").expect("::1 sink");
    six.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let sport = six.local_addr().expect("addr").port();
    let dir = TempDir::new("unix-syslog");
    let path = dir.join("log.sock");
    let unix = std::os::unix::net::UnixDatagram::bind(&path).expect("unix sink");
    unix.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let p = free_port();
    let mut s = Sluice::start(&format!(
        "events {{}} stream {{ log_format f 'A $status'; server {{ listen 127.0.0.1:{p}; return hi; \
         access_log syslog:server=[::1]:{sport},nohostname f; \
         access_log syslog:server=unix:{},tag=u,nohostname f; }} }}",
        path.display()
    ));
    assert_eq!(exchange(p, b""), b"hi");
    let mut buf = [0u8; 512];
    let n = six.recv(&mut buf).expect("a datagram on ::1");
    let a = String::from_utf8_lossy(&buf[..n]).into_owned();
    let n = unix.recv(&mut buf).expect("a datagram on the unix socket");
    let b = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(a.starts_with("<190>") && a.ends_with(" nginx: A 200"), "{a}");
    assert!(b.starts_with("<190>") && b.ends_with(" u: A 200"), "{b}");
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn syslog_parameters_as_nginx() {
    let dir = TempDir::new("syslog");
    for (param, want) in [
        ("facility=bogus", "unknown syslog facility \"bogus\""),
        ("tag=a-b", "syslog \"tag\" only allows alphanumeric characters and underscore"),
        ("what=1", "unknown syslog parameter \"what=1\""),
    ] {
        std::fs::write(dir.join("s.conf"), format!("error_log syslog:server=127.0.0.1:514,{param};\nevents {{}}\n"))
            .expect("write");
        let out = run(&["-t", "-p", &dir.prefix(), "-c", "s.conf"], dir.path());
        let err = console(&out.stderr);
        assert!(err.contains(&format!("[emerg] {} in {}s.conf:1", want, dir.prefix())), "{err}");
    }
}

/// The worker pids a master's log names ("start worker process N").
fn log_pids(log: &str) -> Vec<i32> {
    log.lines().filter_map(|l| l.split("start worker process ").nth(1)?.trim().parse().ok()).collect()
}

/// Start, then SIGTERM: the error log line for line as nginx 1.22.1's
/// (t/data/logs/lifecycle-*.log), but for the version notice, which names sluice as
/// well ("sluice/0.1.0 (nginx/1.22.1)" where nginx says "nginx/1.22.1").
fn lifecycle_as_recorded(recording: &str, workers: usize) {
    let shape =
        std::fs::read_to_string(format!("{}/t/data/logs/{recording}", env!("CARGO_MANIFEST_DIR"))).expect("recording");
    let want = shape.lines().filter(|l| !l.starts_with('#')).count();
    let conf = "events {} stream { server { listen 127.0.0.1; return x; } }";
    let s = if workers == 0 { Sluice::start(conf) } else { Sluice::start_master(workers, conf) };
    if workers > 0 {
        assert!(
            wait_for(Duration::from_secs(10), || s.error_log().contains("start worker process ")),
            "{}",
            s.error_log()
        );
    }
    // Every process waits for events: a signal to the single process interrupts that
    // wait (nginx's info line), and a worker has its handlers.
    let waiting = if workers == 0 { vec![s.pid()] } else { log_pids(&s.error_log()) };
    for pid in waiting {
        assert!(wait_in_epoll(pid), "{pid} never waits in epoll_wait");
    }
    s.signal(libc::SIGTERM);
    let lines = || -> Vec<String> {
        let version = format!("sluice/{} (nginx/1.22.1)", env!("CARGO_PKG_VERSION"));
        s.error_log().lines().map(|l| l.replace(&version, "nginx/1.22.1")).collect()
    };
    wait_for(Duration::from_secs(10), || {
        lines().len() >= want && lines().last().is_some_and(|l| l.ends_with(": exit"))
    });
    let mut caps = Caps::default().with("SENDER_PID", std::process::id());
    caps.bind(if workers == 0 { "PID" } else { "MASTER_PID" }, s.pid());
    if let Err(e) = match_file(&shape, &lines(), &mut caps) {
        panic!("{recording}: {e}");
    }
}

#[test]
fn lifecycle_single_process_as_nginx() {
    lifecycle_as_recorded("lifecycle-single.log", 0);
}

#[test]
fn lifecycle_master_and_worker_as_nginx() {
    lifecycle_as_recorded("lifecycle-master.log", 1);
}

/// A master with one worker through HUP, a SIGKILL of the new worker and QUIT, line for
/// line as nginx 1.22.1 (t/data/logs/lifecycle-reload.log, recorded by
/// t/data/record-lifecycle-reload.sh): the new worker starts before the old one is told
/// to quit, and the reap of the old one is followed by nginx's "signal 29 (SIGIO)" (the
/// new worker held the old one's channel); the killed worker had no such neighbour.
#[test]
fn lifecycle_reload_and_respawn_as_nginx() {
    let shape = std::fs::read_to_string(format!("{}/t/data/logs/lifecycle-reload.log", env!("CARGO_MANIFEST_DIR")))
        .expect("recording");
    let s = Sluice::start_master(1, "events {} stream { server { listen 127.0.0.1; return x; } }");
    let nth_worker = |n: usize| -> i32 {
        assert!(
            wait_for(Duration::from_secs(10), || log_pids(&s.error_log()).len() >= n),
            "no worker {n}\n{}",
            s.error_log()
        );
        let pid = log_pids(&s.error_log())[n - 1];
        assert!(wait_in_epoll(pid), "{pid} never waits in epoll_wait");
        pid
    };
    let signal = |pid: i32, sig: i32| {
        // SAFETY: signalling our own child or its worker.
        unsafe { libc::kill(pid, sig) };
    };
    nth_worker(1);
    s.signal(libc::SIGHUP);
    nth_worker(2);
    assert!(wait_for(Duration::from_secs(10), || s.error_log().contains("exited with code 0")));
    // As the recorder: time for a SIGIO line to show, then the same for the respawn.
    std::thread::sleep(Duration::from_secs(1));
    signal(nth_worker(2), libc::SIGKILL);
    nth_worker(3);
    std::thread::sleep(Duration::from_secs(1));
    s.signal(libc::SIGQUIT);
    let lines = || -> Vec<String> {
        let version = format!("sluice/{} (nginx/1.22.1)", env!("CARGO_PKG_VERSION"));
        s.error_log().lines().map(|l| l.replace(&version, "nginx/1.22.1")).collect()
    };
    wait_for(Duration::from_secs(10), || lines().iter().filter(|l| l.ends_with(": exit")).count() >= 3);
    let mut caps = Caps::default().with("SENDER_PID", std::process::id());
    caps.bind("MASTER_PID", s.pid());
    if let Err(e) = match_file(&shape, &lines(), &mut caps) {
        panic!("lifecycle-reload.log: {e}");
    }
}

/// USR1 as nginx 1.22.1 logs it (seen side by side): the master's signal line and its
/// "reopening logs", then the worker's "reopening logs" (the master tells it through
/// its channel in nginx: no signal line); a single process logs the signal line, the
/// interrupted epoll_wait at info, then "reopening logs".
#[test]
fn usr1_lines_as_nginx() {
    let conf = "events {} stream { server { listen 127.0.0.1; return x; } }";
    let me = std::process::id();
    let single = Sluice::start(conf);
    assert!(wait_in_epoll(single.pid()));
    single.signal(libc::SIGUSR1);
    let pid = single.pid();
    expect_last_lines(
        &single,
        &[
            format!("[notice] {pid}#{pid}: signal 10 (SIGUSR1) received from {me}, reopening logs"),
            format!("[info] {pid}#{pid}: epoll_wait() failed (4: Interrupted system call)"),
            format!("[notice] {pid}#{pid}: reopening logs"),
        ],
    );

    let m = Sluice::start_master(1, conf);
    assert!(wait_for(Duration::from_secs(10), || m.error_log().contains("start worker process ")));
    let worker = *log_pids(&m.error_log()).first().expect("worker pid");
    assert!(wait_in_epoll(worker), "the worker never waits for events");
    m.signal(libc::SIGUSR1);
    let master = m.pid();
    expect_last_lines(
        &m,
        &[
            format!("[notice] {master}#{master}: signal 10 (SIGUSR1) received from {me}, reopening logs"),
            format!("[notice] {master}#{master}: reopening logs"),
            format!("[notice] {worker}#{worker}: reopening logs"),
        ],
    );
}

/// Wait until the error log ends with `want` (lines without their timestamps).
fn expect_last_lines(s: &Sluice, want: &[String]) {
    let tail = || -> Vec<String> {
        let log = s.error_log();
        let lines: Vec<String> = log.lines().map(|l| l.get(20..).unwrap_or("").to_string()).collect();
        lines[lines.len().saturating_sub(want.len())..].to_vec()
    };
    wait_for(Duration::from_secs(5), || tail() == want);
    assert_eq!(tail(), want, "{}", s.error_log());
}

/// QUIT ends a single process at once, as nginx's `ngx_single_process_cycle` (only a
/// worker shuts down gracefully): an open session is cut and not logged.
#[test]
fn quit_ends_a_single_process_at_once() {
    let (b, p) = (
        backend(|mut c| {
            let mut buf = [0u8; 64];
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }),
        free_port(),
    );
    let mut s = Sluice::start(&format!(
        "events {{}} stream {{ log_format s '$status'; access_log %%PREFIX%%a.log s; \
         server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; }} }}"
    ));
    let mut c = connect(p);
    assert!(wait_for(Duration::from_secs(5), || s.error_log().contains("proxy 127.0.0.1:")), "{}", s.error_log());
    let pid = s.pid();
    let t = Instant::now();
    assert_eq!(s.stop(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(3), "QUIT waited {:?} for the session", t.elapsed());
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert_eq!(s.read("a.log"), "", "a cut session is not logged");
    let log = s.error_log();
    let last: Vec<&str> = log.lines().rev().take(3).map(|l| l.get(20..).unwrap_or("")).collect();
    assert!(last[0].ends_with(": exit") && !log.contains("gracefully shutting down"), "{log}");
    assert!(last[2].contains(&format!("{pid}#{pid}: signal 3 (SIGQUIT) received from")), "{log}");
}

/// A proxy to a listener of its own: "*1 proxy ... connected" comes before the inner
/// session's "*3 client ... connected", as nginx 1.22.1 logs it (side by side; the
/// upstream socket is watched before connect(), so on loopback its "writable" is queued
/// ahead of the listener's "readable"). Before, sluice logged the inner accept first.
#[test]
fn proxy_to_itself_logs_proxy_connected_first() {
    let (outer, inner) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    server {{ listen 127.0.0.1:{outer}; proxy_pass 127.0.0.1:{inner}; }}
    server {{ listen 127.0.0.1:{inner}; return SEE-THIS; }}
}}
"
    ));
    for _ in 0..5 {
        assert_eq!(exchange(outer, b""), b"SEE-THIS");
    }
    let lines = || -> Vec<String> {
        s.error_log().lines().filter(|l| l.contains(" connected to ")).map(|l| l.to_string()).collect()
    };
    assert!(wait_for(Duration::from_secs(5), || lines().len() == 15), "{}", s.error_log());
    for triple in lines().chunks(3) {
        let kinds: Vec<&str> =
            triple.iter().map(|l| if l.contains(" proxy 127.0.0.1:") { "proxy" } else { "client" }).collect();
        assert_eq!(kinds, ["client", "proxy", "client"], "{triple:#?}");
        assert!(triple[1].ends_with(&format!("connected to 127.0.0.1:{inner}")), "{triple:#?}");
    }
}

/// A signal's lines carry the time it came, not the time of the last event before it
/// (nginx updates its clock in the signal handler and after the interrupted
/// epoll_wait). Idle for over a second, then USR1: "reopening logs" must not be dated
/// before the signal.
#[test]
fn signal_lines_carry_the_time_the_signal_came() {
    let s =
        Sluice::start(&format!("events {{}}\nstream {{ server {{ listen 127.0.0.1:{}; return x; }} }}\n", free_port()));
    // Wait to a fresh second, then sleep past the next boundary with nothing to do.
    std::thread::sleep(Duration::from_millis(1100));
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    s.signal(libc::SIGUSR1);
    let line = || s.error_log().lines().find(|l| l.contains("reopening logs")).map(str::to_string);
    assert!(wait_for(Duration::from_secs(5), || line().is_some()), "{}", s.error_log());
    let l = line().unwrap_or_default();
    // "YYYY/MM/DD HH:MM:SS": compare with the local time of `before`.
    let stamp = &l[..19];
    let out = std::process::Command::new("date").args(["-d", &format!("@{before}"), "+%Y/%m/%d %H:%M:%S"]).output();
    let want = String::from_utf8_lossy(&out.expect("date").stdout).trim().to_string();
    assert!(stamp >= want.as_str(), "logged {stamp}, signal sent at {want}: {l}");
}

/// Main-level logs as nginx 1.22.1 wrote them side by side (found by running its own
/// stream_error_log.t with both): a worker's last line, "exit", goes to the first file log
/// of the level-sorted chain alone (`ngx_exit_log`), not to syslog or the other files; the
/// master's "exit" goes everywhere. And the startup notices logged before nginx installs
/// its first cycle (epoll, version, OS, getrlimit) carry an empty syslog host name.
#[test]
fn worker_exit_line_and_startup_syslog_host_as_nginx() {
    let (sink, sport) = syslog_sink();
    let port = free_port();
    let mut s = Sluice::start_master(
        1,
        &format!(
            "error_log %%PREFIX%%second.log notice;\nerror_log syslog:server=127.0.0.1:{sport} notice;\n\
             events {{}}\nstream {{ server {{ listen 127.0.0.1:{port}; return x; }} }}\n"
        ),
    );
    let master = s.pid();
    assert!(wait_for(Duration::from_secs(5), || s.error_log().contains("start worker process ")), "{}", s.error_log());
    // The worker serves (its signal handlers are in place) before the master is stopped.
    assert_eq!(exchange(port, b""), b"x");
    s.stop();
    let exits = |text: &str| -> Vec<bool> {
        text.lines().filter(|l| l.ends_with(": exit")).map(|l| l.contains(&format!(" {master}#{master}: "))).collect()
    };
    // error.log (info): the worker's exit, then the master's.
    assert_eq!(exits(&s.error_log()), [false, true], "{}", s.error_log());
    let second = std::fs::read_to_string(s.dir.join("second.log")).unwrap_or_default();
    assert_eq!(exits(&second), [true], "{second}");
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    sink.set_read_timeout(Some(Duration::from_millis(500))).ok();
    while let Ok(n) = sink.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let host = sluice::core::log::hostname();
    let startup = ["using the \"epoll\" event method", "(nginx/", "OS: ", "getrlimit(RLIMIT_NOFILE)"];
    for (l, what) in lines.iter().zip(startup) {
        assert!(l.contains(what) && l[5..].contains("  nginx: "), "{l}");
    }
    assert!(lines.len() > 4 && lines[4..].iter().all(|l| l.contains(&format!(" {host} nginx: "))), "{lines:#?}");
    assert_eq!(exits(&lines.join("\n")), [true], "{lines:#?}");
}

/// Sessions that start in one turn (connections queued while the worker was stopped,
/// `multi_accept on`): nginx reads a client only once its upstream is connected, after
/// the rest of that turn's events, so every "proxy connected" of the batch comes before
/// the first "client disconnected" (side by side with nginx 1.22.1). sluice read each
/// client at once and logged its end right after its own "proxy connected".
#[test]
fn sessions_of_one_turn_log_in_nginx_order() {
    let want = ["client", "client", "client", "proxy", "proxy", "proxy", "end", "end", "end"];
    sessions_started_together_log_in_nginx_order("multi_accept on;", want);
}

/// The same with `multi_accept off` (the default), where nginx accepts one client a
/// turn: each session's client, watched only from its relay's start, is read in the
/// turn after the next accept's, so each client's end comes after the next session's
/// "proxy connected" (side by side with nginx 1.22.1, rtime s9 m2_*/m3_*; sluice, which
/// watched each client from its accept, logged "*1 client disconnected" before "*2
/// proxy connected").
#[test]
fn sessions_accepted_one_a_turn_log_in_nginx_order() {
    let want = ["client", "client", "proxy", "client", "proxy", "end", "proxy", "end", "end"];
    sessions_started_together_log_in_nginx_order("", want);
}

/// Three clients send a byte and their end while the worker is stopped.
fn sessions_started_together_log_in_nginx_order(events: &str, want: [&str; 9]) {
    let echo = backend(crate::common::echo);
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{ {events} }}\nstream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{echo}; }} }}\n"
    ));
    let start = s.error_log().len();
    s.signal(libc::SIGSTOP);
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid())).unwrap_or_default();
        stat.rsplit(") ").next().is_some_and(|rest| rest.starts_with('T'))
    };
    assert!(wait_for(Duration::from_secs(5), stopped), "sluice did not stop");
    let clients: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", p)).expect("connect");
            std::io::Write::write_all(&mut c, b"x").expect("write");
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
            c
        })
        .collect();
    s.signal(libc::SIGCONT);
    let lines = || -> Vec<String> {
        s.error_log()[start..]
            .lines()
            .filter(|l| l.contains(" connected to ") || l.contains(" disconnected"))
            .map(|l| {
                if l.contains(" client 127") {
                    "client"
                } else if l.contains(" proxy ") {
                    "proxy"
                } else {
                    "end"
                }
            })
            .map(str::to_string)
            .collect()
    };
    assert!(wait_for(Duration::from_secs(10), || lines().len() == 9), "{}", s.error_log());
    assert_eq!(lines(), want, "{}", s.error_log());
    drop(clients);
}

/// A client that closed while its upstream connected is watched only from the relay's
/// start, as nginx adds it to epoll there: its end is queued behind events already
/// ready, such as another session's connect. Here *1's first connect (to a full listen
/// queue) times out while the worker is stopped and *2 arrives; after SIGCONT one turn
/// retries *1's connect and starts *2's, the next finishes *1's, and *2's connect
/// comes before *1's client end. nginx 1.22.1, side by side (tcpfz F01): "*1 proxy
/// connected", "*4 proxy connected", "*1 client disconnected"; sluice, which watched
/// every client from its accept, read *1's end in the turn *1 connected.
#[test]
fn client_watched_from_relay_start_logs_after_another_connect() {
    let full = full_backend();
    let echo = backend(crate::common::echo);
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
           upstream u {{ server 127.0.0.1:{}; server 127.0.0.1:{echo}; }}\n\
           server {{ listen 127.0.0.1:{p}; proxy_pass u; proxy_connect_timeout 300ms; }}\n\
         }}\n",
        full.port
    ));
    let start = s.error_log().len();
    let first = std::net::TcpStream::connect(("127.0.0.1", p)).expect("connect");
    drop(first);
    let accepted = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || s.error_log()[start..].contains("*1 client ")), "{}", s.error_log());
    s.signal(libc::SIGSTOP);
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid())).unwrap_or_default();
        stat.rsplit(") ").next().is_some_and(|rest| rest.starts_with('T'))
    };
    assert!(wait_for(Duration::from_secs(5), stopped), "sluice did not stop");
    // *1's 300 ms connect timer runs out while the worker is stopped.
    std::thread::sleep(Duration::from_millis(500).saturating_sub(accepted.elapsed()));
    let mut second = std::net::TcpStream::connect(("127.0.0.1", p)).expect("connect");
    std::io::Write::write_all(&mut second, b"x").expect("write");
    s.signal(libc::SIGCONT);
    let lines = || -> Vec<String> {
        s.error_log()[start..]
            .lines()
            .filter(|l| l.contains(" proxy 127") || l.contains("client disconnected"))
            .map(|l| {
                // (*2 and *3 number *1's upstream connections, as nginx counts them.)
                let id = match l.split_whitespace().find(|w| w.starts_with('*')) {
                    Some("*1") => "*1",
                    _ => "second",
                };
                let what = if l.contains(" proxy 127") { "proxy" } else { "end" };
                format!("{id} {what}")
            })
            .collect()
    };
    assert!(wait_for(Duration::from_secs(10), || lines().len() >= 3), "{}", s.error_log());
    assert_eq!(lines()[..3], ["*1 proxy", "second proxy", "*1 end"], "{}", s.error_log());
    drop(second);
    assert!(wait_for(Duration::from_secs(10), || lines().len() == 4), "{}", s.error_log());
}

/// A listening socket's own lines (a connection beyond worker_connections) go to the
/// error log of the server that owns the socket, here the stream block's, not the main
/// one (nginx's `ls->logp`; side by side with nginx 1.22.1, sluice wrote them to the
/// main error log).
#[test]
fn listener_lines_go_to_the_servers_error_log() {
    let p = crate::common::free_port();
    let s = crate::common::Sluice::start(&format!(
        "events {{ worker_connections 5; }}
stream {{
    error_log %%PREFIX%%es.log info;
    server {{ listen 127.0.0.1:{p}; ssl_preread on; preread_timeout 5s; proxy_pass 127.0.0.1:9; }}
}}
"
    ));
    // One slot is the listener's: four clients are held in preread, three more do not fit.
    let held: Vec<std::net::TcpStream> = (0..4).map(|_| crate::common::connect(p)).collect();
    assert!(crate::common::wait_for(std::time::Duration::from_secs(10), || s
        .read("es.log")
        .matches(" connected to ")
        .count()
        == 4));
    let extra: Vec<std::net::TcpStream> = (0..3).map(|_| crate::common::connect(p)).collect();
    let alert = ": 5 worker_connections are not enough\n";
    assert!(
        crate::common::wait_for(std::time::Duration::from_secs(10), || s.read("es.log").matches(alert).count() == 3),
        "{}",
        s.read("es.log")
    );
    assert!(!s.error_log().contains("worker_connections are not enough"), "{}", s.error_log());
    drop((held, extra));
}

/// An empty log name is descriptor 2 (nginx's ngx_conf_open_file), not a file: unlike
/// `stderr` it leaves descriptor 2 going to the main error log, so `access_log ""`
/// and a server's `error_log ""` both land in the main error log's file (side by side
/// with nginx 1.22.1; sluice refused the first and wrote the second to its own stderr).
#[test]
fn empty_log_names_write_to_descriptor_2() {
    let p = free_port();
    let s = Sluice::start_with_globals(
        "daemon off;\nmaster_process off;\npid %%PREFIX%%sluice.pid;\nerror_log %%PREFIX%%error.log notice;\n",
        &format!(
            "events {{}}\nstream {{\n log_format f 'ACCESS $remote_addr $status';\n \
             server {{ listen 127.0.0.1:{p}; return hi; access_log \"\" f; error_log \"\" info; }}\n}}\n"
        ),
        &[],
    );
    assert_eq!(exchange(p, b""), b"hi");
    assert!(
        wait_for(Duration::from_secs(5), || {
            let log = s.error_log();
            log.contains("\nACCESS 127.0.0.1 200\n") && log.contains(&format!("connected to 127.0.0.1:{p}"))
        }),
        "{}",
        s.error_log()
    );
}

/// A `[debug]` line has no context: nginx's ngx_log_error_core calls the handler that
/// adds "while ..., client: ..., server: ..." for every level but debug (nginx 1.22.1
/// with debug: `*1 finalize stream session: 200` and nothing after it).
#[test]
fn debug_lines_carry_no_context() {
    let p = free_port();
    let mut s = Sluice::start(&conf(&format!(
        "server {{ listen 127.0.0.1:{p}; error_log %%PREFIX%%dbg.log debug; return ok; }}"
    )));
    assert_eq!(exchange(p, b""), b"ok");
    let line =
        |s: &Sluice| s.read("dbg.log").lines().find(|l| l.contains("finalize stream session")).map(str::to_string);
    assert!(wait_for(Duration::from_secs(5), || line(&s).is_some()), "no debug line:\n{}", s.read("dbg.log"));
    let l = line(&s).unwrap_or_default();
    assert!(l.contains(" [debug] ") && l.ends_with(": *1 finalize stream session: 200"), "{l}");
    assert_eq!(s.stop(), Some(0));
}

/// An upstream connection is numbered before its connect(), as nginx's
/// ngx_event_connect_peer numbers it: with two workers, a server proxying to another
/// server of the same sluice always sees the inner session numbered two after the
/// outer one (nginx 1.22.1: 200 of 200); numbered after connect(), the other worker
/// could take the number in between (a third of the sessions said one after).
#[test]
fn upstream_connections_are_numbered_before_they_connect() {
    let (inner, outer) = (free_port(), free_port());
    let s = Sluice::start_master(
        2,
        &format!(
            "events {{}} stream {{ server {{ listen 127.0.0.1:{inner}; return \"$connection\"; }} \
             server {{ listen 127.0.0.1:{outer}; proxy_pass 127.0.0.1:{inner}; }} }}"
        ),
    );
    let mut gaps = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", outer)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut got = String::new();
        let _ = c.read_to_string(&mut got);
        let inner_number: u64 = got.parse().expect("a number");
        // The outer session's number: its "client ... connected to 127.0.0.1:OUTER" line.
        let log = s.error_log();
        let want = format!(" connected to 127.0.0.1:{outer}");
        let outer_number = log
            .lines()
            .filter(|l| l.ends_with(&want))
            .filter_map(|l| l.split(" *").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .filter(|&n| n < inner_number)
            .max()
            .expect("the outer session's line");
        *gaps.entry(inner_number - outer_number).or_insert(0) += 1;
    }
    assert_eq!(gaps.keys().copied().collect::<Vec<u64>>(), [2], "{gaps:?}");
}

/// `debug_connection`: a matching client's session lines go to every error log of its
/// server's chain, whatever their levels (nginx's debug build, as Debian's: the
/// connection's log level takes every line, and ngx_log_error_core writes a debug
/// connection's line to each log). Others' lines keep the levels. Side by side with
/// nginx 1.22.1: the same lines, apart from nginx's [debug] ones.
#[test]
fn debug_connection_lines_reach_every_log() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{ debug_connection 127.0.0.1; }}\nstream {{ \
         server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{dead}; \
         error_log %%PREFIX%%srv.log error; error_log %%PREFIX%%srv2.log crit; }} }}\n"
    ));
    let _ = exchange(p, b"");
    let want = |log: &str| {
        // (nginx writes its [debug] lines there too; sluice has a few of them.)
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" [debug] ")).collect();
        lines.len() == 2
            && lines[0].contains(" [info] ")
            && lines[0].contains(" client 127.0.0.1:")
            && lines[1].contains(" [error] ")
            && lines[1].contains("connect() failed (111: Connection refused) while connecting to upstream")
    };
    assert!(wait_for(Duration::from_secs(10), || want(&s.read("srv2.log"))), "srv2.log:\n{}", s.read("srv2.log"));
    assert!(want(&s.read("srv.log")), "srv.log:\n{}", s.read("srv.log"));
    drop(s);
    // A client that does not match: the levels hold.
    let s = Sluice::start(&format!(
        "events {{ debug_connection 127.0.0.2; }}\nstream {{ \
         server {{ listen 127.0.0.1:{q}; proxy_pass 127.0.0.1:{dead}; \
         error_log %%PREFIX%%srv.log error; error_log %%PREFIX%%srv2.log crit; }} }}\n"
    ));
    let _ = exchange(q, b"");
    assert!(
        wait_for(Duration::from_secs(10), || s.read("srv.log").contains("connect() failed")),
        "{}",
        s.read("srv.log")
    );
    assert_eq!(s.read("srv.log").lines().count(), 1, "{}", s.read("srv.log"));
    assert_eq!(s.read("srv2.log"), "");
}
