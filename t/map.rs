//! `map` (ngx_stream_map_module), shaped like nginx's stream_map.t; plus the harness for
//! what was recorded from nginx 1.22.1 in `t/data/modules/` (see its `record.sh`): the
//! `nginx -t` output of each `errors/NAME.conf`, and `trace.txt`, the answers of one
//! configuration (map, geo, split_clients, set together) to 200 client addresses.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{exchange, free_port, run, Sluice, TempDir};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/modules")
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read case files") {
        let e = e.expect("dir entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy case file");
    }
}

/// `sluice -t` on `errors/NAME.conf` as the recorder ran nginx; stderr and the exit
/// status must be nginx's (`nginx: ` read as `sluice: `, `%%PREFIX%%` as the directory).
pub fn conf_case(name: &str) {
    let dir = data_dir().join("errors");
    let conf = std::fs::read_to_string(dir.join(format!("{name}.conf"))).expect("read case");
    let text = std::fs::read_to_string(dir.join(format!("{name}.expected"))).expect("read .expected");
    conf_case_text(name, &conf, &text);
}

/// A case as `conf_case` runs it, from its text and nginx's recorded answer (written
/// as an `.expected` file is).
pub fn conf_case_text(name: &str, conf: &str, text: &str) {
    let dir = data_dir().join("errors");
    let tmp = TempDir::new(&format!("mod-{name}"));
    std::fs::write(tmp.join("nginx.conf"), conf).expect("write case");
    let files = dir.join(format!("{name}.files"));
    if files.is_dir() {
        copy_dir(&files, tmp.path());
    }
    let d = tmp.path().display().to_string();
    let out = run(&["-t", "-p", &d, "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")], tmp.path());
    let mut lines: Vec<&str> = text.lines().collect();
    let code: i32 =
        lines.pop().and_then(|l| l.strip_prefix("exit=")).and_then(|c| c.parse().ok()).expect("exit=N last");
    let want: String = lines
        .iter()
        .map(|l| {
            let l = l.strip_prefix("nginx: ").map(|r| format!("sluice: {r}")).unwrap_or_else(|| l.to_string());
            format!("{}\n", l.replace("%%PREFIX%%", &d))
        })
        .collect();
    let got = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (got.as_ref(), out.status.code()),
        (want.as_str(), Some(code)),
        "case t/data/modules/errors/{name}.conf (left: sluice, right: nginx)"
    );
}

macro_rules! conf_cases {
    ($($name:ident),* $(,)?) => {
        pub const CASES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                crate::map::conf_case(stringify!($name));
            }
        )*
    };
}
pub(crate) use conf_cases;

mod conf {
    super::conf_cases! {
        map_args, map_bad_name, map_bad_wildcard, map_bad_wildcard_dots, map_builtin_var,
        map_dup_default, map_dup_key, map_empty_name, map_hash_after_map, map_hash_bucket,
        map_hash_bucket_ok, map_hash_invalid, map_hash_max_zero, map_hash_not_optimal,
        map_in_server, map_include_error, map_include_missing, map_nested_block, map_no_brace,
        map_one_param, map_params, map_regex_class, map_regex_order, map_regex_paren,
        map_regex_quantifier, map_regex_unmatched, map_source_brace, map_star_without_hostnames,
        map_unknown_var, map_valid, map_value_brace, map_wildcard_conflict, map_wildcard_conflict2,
        map_hash_wildcard_label, map_hash_wildcard_max_zero, map_hash_wildcard_bucket_too_large,
    }
}

/// More exact keys than 64 KiB buckets hold at `map_hash_max_size`: after its warning
/// nginx's ngx_hash_init builds at max_size, and fails (4,100 keys in one bucket;
/// recorded from nginx 1.22.1, generated here rather than kept as a 50 KB file).
#[test]
fn map_hash_keys_beyond_max_size() {
    let keys: String = (0..4100).map(|i| format!("        k{i} 1;\n")).collect();
    let conf =
        format!("events {{}}\nstream {{\n    map_hash_max_size 1;\n    map $remote_addr $x {{\n{keys}    }}\n}}\n");
    let nginx = "nginx: [warn] could not build optimal map_hash, you should increase either map_hash_max_size: 1 \
                 or map_hash_bucket_size: 64; ignoring map_hash_bucket_size\n\
                 nginx: [emerg] could not build map_hash, you should increase map_hash_max_size: 1\n\
                 nginx: configuration file %%PREFIX%%/nginx.conf test failed\nexit=1\n";
    conf_case_text("map_hash_keys_beyond_max_size", &conf, nginx);
}

/// The same for the variables hash: nginx's warning, then its error (3,000 `set`
/// variables under `variables_hash_max_size 1`; recorded from nginx 1.22.1).
#[test]
fn variables_hash_beyond_max_size_warns_first() {
    let sets: String = (0..3000).map(|i| format!("        set $variable_{i:04} 1;\n")).collect();
    let conf = format!(
        "events {{}}\nstream {{\n    variables_hash_max_size 1;\n    server {{\n        listen 127.0.0.1:8;\n{sets}        return x;\n    }}\n}}\n"
    );
    let nginx = "nginx: [warn] could not build optimal variables_hash, you should increase either \
                 variables_hash_max_size: 1 or variables_hash_bucket_size: 64; ignoring variables_hash_bucket_size\n\
                 nginx: [emerg] could not build variables_hash, you should increase variables_hash_max_size: 1\n\
                 nginx: configuration file %%PREFIX%%/nginx.conf test failed\nexit=1\n";
    conf_case_text("variables_hash_beyond_max_size_warns_first", &conf, nginx);
}

/// Every recorded case is run by one of the four files.
#[test]
fn every_recorded_case_is_tested() {
    let mut listed: Vec<&str> = conf::CASES.to_vec();
    listed.extend(crate::geo::CASES);
    listed.extend(crate::split_clients::CASES);
    listed.extend(crate::set::CASES);
    let mut missing = Vec::new();
    for e in std::fs::read_dir(data_dir().join("errors")).expect("errors dir").flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(case) = n.strip_suffix(".conf") {
            if !listed.contains(&case) {
                missing.push(case.to_string());
            }
            assert!(data_dir().join("errors").join(format!("{case}.expected")).exists(), "{case}: no .expected");
        }
    }
    assert!(missing.is_empty(), "cases not in any CASES list: {missing:?}");
}

/// The recorded trace: for each client, (nginx's line, sluice's line).
pub fn trace() -> &'static [(String, String)] {
    static T: OnceLock<Vec<(String, String)>> = OnceLock::new();
    T.get_or_init(|| {
        let port = free_port();
        let body = std::fs::read_to_string(data_dir().join("trace.conf")).expect("trace.conf");
        // The included files are read where they are (the recording copied them beside
        // nginx.conf, which names them relative to the configuration's directory).
        let body = body
            .replace("%%PORT%%", &port.to_string())
            .replace("trace-map.conf", &data_dir().join("trace-map.conf").display().to_string())
            .replace("trace-geo.conf", &data_dir().join("trace-geo.conf").display().to_string());
        let s = Sluice::start(&format!("events {{ worker_connections 64; }}\n{body}"));
        let want = std::fs::read_to_string(data_dir().join("trace.txt")).expect("trace.txt");
        let out = want
            .lines()
            .map(|line| {
                let addr: Ipv4Addr = line.split('|').next().and_then(|a| a.parse().ok()).expect("address first");
                (line.to_string(), from_address(addr, port))
            })
            .collect();
        drop(s);
        out
    })
}

/// Connect to 127.0.0.1:`port` from `addr` and read the answer.
fn from_address(addr: Ipv4Addr, port: u16) -> String {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::from((addr, 0)).into()).expect("bind a 127.x address");
    sock.connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)).into(), Duration::from_secs(10)).expect("connect");
    let mut c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.trim_end_matches('\n').to_string()
}

/// Columns `cols` of the trace (fields of "$remote_addr|$sc|$sc2|$m|$hn|$g|$gr|$g6|$gm|
/// $gra|$s|$chain|$sec") must be nginx's for every client.
pub fn check_trace(cols: &[usize]) {
    let mut bad = Vec::new();
    for (want, got) in trace() {
        let w: Vec<&str> = want.split('|').collect();
        let g: Vec<&str> = got.split('|').collect();
        if cols.iter().any(|&c| w.get(c) != g.get(c)) {
            bad.push(format!("  nginx:  {want}\n  sluice: {got}"));
        }
    }
    assert_eq!(trace().len(), 200);
    assert!(bad.is_empty(), "{} of 200 clients differ in columns {cols:?}:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn recorded_map_answers() {
    // $m (regexes, captures, named capture), $hn (hostnames over a regex-built name),
    // $chain (volatile, $1 of the last match), $sec (a named capture variable).
    check_trace(&[3, 4, 11, 12]);
}

#[test]
fn stream_map_t() {
    let p: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    map $server_port $x {{
        {p0}             literal;
        default          default;
        ~({p2})          $1;
        ~(?P<ncap>{p3})  $ncap;
    }}
    server {{
        listen  127.0.0.1:{p0};
        listen  127.0.0.1:{p1};
        listen  127.0.0.1:{p2};
        listen  127.0.0.1:{p3};
        return  $x;
    }}
    server {{
        listen  127.0.0.1:{p4};
        return  $x:${{x}};
    }}
}}
",
        p0 = p[0],
        p1 = p[1],
        p2 = p[2],
        p3 = p[3],
        p4 = p[4]
    ));
    assert_eq!(exchange(p[0], b""), b"literal", "literal");
    assert_eq!(exchange(p[1], b""), b"default", "default");
    assert_eq!(exchange(p[2], b""), p[2].to_string().as_bytes(), "capture");
    assert_eq!(exchange(p[3], b""), p[3].to_string().as_bytes(), "named capture");
    assert_eq!(exchange(p[4], b""), b"default:default", "braces");
    drop(s);
}

/// What nginx 1.22.1 answered for the same configuration (checked by hand with it):
/// `volatile` is evaluated again, a cached map keeps its first value; an empty source
/// matches no regex; "$1x" is capture 1 then "x"; exact keys ignore case.
#[test]
fn volatile_cache_empty_source_captures_case() {
    let (a, b) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    map $src $v {{ volatile; default \"v-$src\"; }}
    map $src $c {{ default \"c-$src\"; }}
    map \"\" $e {{ ~^$ matched; ~ any; default dflt; }}
    map $server_port $cap {{ ~^(\\d)(\\d+)$ \"$1x$2y\"; }}
    map $server_port $ci {{ FOO bar; default \"$server_port\"; }}
    map FoO $ci2 {{ foo lower; default no; }}
    server {{
        listen 127.0.0.1:{a};
        set $src one; set $a \"$v|$c\"; set $src two;
        return \"$a|$v|$c|$e|$cap|$ci|$ci2\";
    }}
    server {{ listen 127.0.0.1:{b}; return \"[$src][$v]\"; }}
}}
"
    ));
    let ps = a.to_string();
    let want = format!("v-one|c-one|v-two|c-one|dflt|{}x{}y|{a}|lower", &ps[..1], &ps[1..]);
    assert_eq!(String::from_utf8_lossy(&exchange(a, b"")), want);
    assert_eq!(exchange(b, b""), b"[][v-]");
    drop(s);
}

#[test]
fn hostnames_include_and_regex_order() {
    let p: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let names = [
        "www.example.com.",
        "example.com",
        "a.b.example.org",
        "example.org",
        "mail.example.net",
        "mail.example.net.uk",
        "other.test",
        "",
    ];
    let mut src = String::new();
    for (port, n) in p.iter().zip(names) {
        src.push_str(&format!("        {port} \"{n}\";\n"));
    }
    let mut servers = String::new();
    for port in &p {
        servers.push_str(&format!("    server {{ listen 127.0.0.1:{port}; return \"$h\"; }}\n"));
    }
    let tmp = TempDir::new("map-include");
    let more = tmp.join("more.conf");
    std::fs::write(&more, "example.org  org-exact;\n").expect("write more.conf");
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    map_hash_bucket_size 128;
    map $server_port $name {{
{src}    }}
    map $name $h {{
        hostnames;
        default            none;
        .example.com       dot-com;
        www.example.com    exact-www;
        *.example.org      star-org;
        mail.*             tail-mail;
        mail.example.*     tail-mail-example;
        include            {more};
        ~^other            regex-first;
        ~^oth              regex-second;
    }}
{servers}}}
",
        more = more.display()
    ));
    let got: Vec<String> = p.iter().map(|&port| String::from_utf8_lossy(&exchange(port, b"")).into_owned()).collect();
    assert_eq!(
        got,
        [
            "exact-www",
            "dot-com",
            "star-org",
            "org-exact",
            "tail-mail-example",
            "tail-mail-example",
            "regex-first",
            "none"
        ]
    );
    drop(s);
}

/// A variable whose value needs itself, directly or through another map, ends as
/// nginx 1.22.1's did side by side: 100 evaluations deep, the innermost not found, two
/// "cycle while evaluating variable" errors (nginx asks once per pass of its two-pass
/// complex values), and the value cached for the log. Before, the recursion overflowed
/// the stack and killed the worker. split_clients sets its value to "" before it reads
/// its key, so a key naming the variable reads "" (no error). A single-variable map
/// value ends empty.
#[test]
fn variable_cycles_end_as_nginx() {
    let (a, b, c, d) = (free_port(), free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    map $remote_port $x {{ default \"x$x\"; }}
    map $remote_port $p {{ default \"a$q\"; }}
    map $remote_port $q {{ default \"b$p\"; }}
    map $remote_port $self {{ default $self; }}
    split_clients \"$sp\" $sp {{ 50% \"one\"; * \"two\"; }}
    log_format f \"[$x]\";
    server {{ listen 127.0.0.1:{a}; return \"$x\"; access_log %%PREFIX%%cycle.log f; }}
    server {{ listen 127.0.0.1:{b}; return \"$p|$q\"; }}
    server {{ listen 127.0.0.1:{c}; return \"[$self]\"; }}
    server {{ listen 127.0.0.1:{d}; return \"$sp\"; }}
}}
"
    ));
    let x = "x".repeat(100);
    assert_eq!(String::from_utf8_lossy(&exchange(a, b"")), x);
    let ab = "ab".repeat(50);
    // $q is cached while $p is being made: one level less.
    assert_eq!(String::from_utf8_lossy(&exchange(b, b"")), format!("{ab}|{}b", "ba".repeat(49)));
    assert_eq!(exchange(c, b""), b"[]");
    // murmur2("") is 0: the first bucket.
    assert_eq!(exchange(d, b""), b"one");
    // The worker is still there.
    assert_eq!(String::from_utf8_lossy(&exchange(a, b"")), x);
    let cycles = |name: &str| {
        let want = format!("cycle while evaluating variable \"{name}\" while returning text, client: 127.0.0.1");
        s.error_log().lines().filter(|l| l.contains("[error]") && l.contains(&want)).count()
    };
    assert!(crate::common::wait_for(Duration::from_secs(5), || cycles("x") == 4), "{}", s.error_log());
    assert_eq!((cycles("p"), cycles("q"), cycles("self"), cycles("sp")), (2, 0, 2, 0), "{}", s.error_log());
    let log = std::fs::read_to_string(s.dir.join("cycle.log")).unwrap_or_default();
    assert!(log.lines().any(|l| l == format!("[{x}]")), "{log}");
}

/// A built-in read at the deepest level of such a cycle meets the limit too, as in
/// nginx, whenever its slot holds nothing: `$status` (no-cacheable: each value flushes
/// it) at every level, so the innermost one is not found and named in two more errors;
/// `$remote_addr` at the end of a chain of exactly 100 maps, on its first evaluation.
/// nginx 1.22.1 side by side (the s30 script hunt, D2): 400 bytes, and 2 + 2 errors.
#[test]
fn built_ins_meet_the_depth_limit_too() {
    let (a, b) = (free_port(), free_port());
    let chain: String = (0..100)
        .map(|k| {
            let source = if k < 99 { format!("$m{}", k + 1) } else { "$remote_addr".to_string() };
            format!("    map {source} $m{k} {{ default \"x\"; }}\n")
        })
        .collect();
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    map $remote_addr $v {{ default \"a$status$v\"; }}
{chain}    server {{ listen 127.0.0.1:{a}; return \"[$v]\\n\"; }}
    server {{ listen 127.0.0.1:{b}; return \"[$m0]\"; }}
}}
"
    ));
    let got = String::from_utf8_lossy(&exchange(a, b"")).into_owned();
    assert_eq!(got.len(), 400, "{got}");
    assert!(got.starts_with("[a000a000") && got.ends_with("a000a]\n"), "{got}");
    assert_eq!(exchange(b, b""), b"[x]");
    let cycles = |name: &str| {
        let want = format!("cycle while evaluating variable \"{name}\" while returning text, client: 127.0.0.1");
        s.error_log().lines().filter(|l| l.contains("[error]") && l.contains(&want)).count()
    };
    assert!(crate::common::wait_for(Duration::from_secs(5), || cycles("remote_addr") == 2), "{}", s.error_log());
    assert_eq!((cycles("status"), cycles("v")), (2, 2), "{}", s.error_log());
}

/// A built-in nginx flags changeable ($ssl_protocol) is limited only while its slot is
/// empty too: in a log line's cycle, nginx names only the map (the s30 review).
#[test]
fn a_changeable_built_in_is_limited_once_in_a_log_line_cycle() {
    let a = free_port();
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    log_format f '$v';
    map $remote_addr $v {{ default \"a$ssl_protocol$v\"; }}
    server {{ listen 127.0.0.1:{a}; return x; access_log cycle.log f; }}
}}
"
    ));
    assert_eq!(exchange(a, b""), b"x");
    assert_eq!(s.wait_lines("cycle.log", 1), ["a".repeat(100)]);
    let cycles = |name: &str| {
        let want = format!("cycle while evaluating variable \"{name}\"");
        s.error_log().lines().filter(|l| l.contains("[error]") && l.contains(&want)).count()
    };
    assert_eq!((cycles("v"), cycles("ssl_protocol")), (2, 0), "{}", s.error_log());
}

/// A value that reads a regex capture is built in two passes, as nginx builds every
/// value (lengths, then bytes; the Debian nginx 1.22.1 of t/data/cli/version-full.stderr,
/// built with OpenSSL 3.0.22, checks the second against the first, as later nginx does;
/// the older 1.22.1-9+deb12u7 build checks nothing and overflows its buffer): a
/// capture read before the regex map that sets it is empty in the first pass and not
/// in the second, so `return` and `set` end with 500 and "no buffer space in script
/// copy", and a log line is dropped with "no buffer space in log script copy"; a value
/// that shrinks in the second pass (two maps setting one capture name) comes out as the
/// second pass made it. All side by side with nginx (helper findings, prose area).
#[test]
fn values_reading_captures_are_built_in_two_passes() {
    let (a, b, c, d) = (free_port(), free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    log_format c '$first|$m1|$first';
    map $remote_addr $m1 {{ ~^(?<first>\\d+)\\.(\\d+) \"$first-$2-$1\"; default none; }}
    map $v $m4 {{ ~(?<cap>b+) \"$cap\"; }}
    map $v $x {{ ~^(?<c>.+)$ \"$c\"; }}
    map $w $y {{ ~^(?<c>.) \"$c\"; }}
    server {{ listen 127.0.0.1:{a}; access_log %%PREFIX%%c.log c; return \"ok\\n\"; }}
    server {{ listen 127.0.0.1:{b}; set $v bbb; return \"$cap$cap$m4$cap\"; }}
    server {{ listen 127.0.0.1:{c}; set $v LONGLONG; set $w s; return \"[$x|$c|$y|$c]\"; }}
    server {{ listen 127.0.0.1:{d}; set $v bbb; return \"$m4$cap\"; }}
}}
"
    ));
    assert_eq!(exchange(a, b""), b"ok\n");
    assert_eq!(exchange(b, b""), b"");
    assert_eq!(String::from_utf8_lossy(&exchange(c, b"")), "[LONGLONG|s|s|s]");
    // The map first: its capture is there in both passes.
    assert_eq!(exchange(d, b""), b"bbbbbb");
    let alerts = |what: &str| s.error_log().lines().filter(|l| l.contains("[alert]") && l.contains(what)).count();
    assert!(crate::common::wait_for(Duration::from_secs(5), || alerts(
        "no buffer space in log script copy while returning text"
    ) == 1));
    assert_eq!(alerts("no buffer space in script copy while returning text"), 1, "{}", s.error_log());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(s.dir.join("c.log")).unwrap_or_default(), "", "the line is dropped");
}

/// A log whose condition, line or path fails to build (a capture read before the map
/// that sets it): a failing `if=` or line ends the session's logging there, its later
/// access logs unwritten (ngx_stream_log_handler returns), and a failing path drops the
/// line (side by side with nginx 1.22.1; sluice wrote the later logs, and the line to
/// descriptor 2 or `open() ""`).
#[test]
fn a_log_that_fails_to_build_ends_the_sessions_logging() {
    let (e, f, g) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    log_format c '$first|$m1|$first';
    log_format p '$server_port';
    map $remote_addr $m1 {{ ~^(?<first>\\d+)\\. \"$first\"; }}
    map $remote_addr $m {{ ~^(\\d+)\\. \"M\"; }}
    server {{ listen 127.0.0.1:{e}; access_log %%PREFIX%%pre.log p; access_log %%PREFIX%%c.log c;
              access_log %%PREFIX%%after-line.log p; return ok; }}
    server {{ listen 127.0.0.1:{f}; access_log %%PREFIX%%pre.log p; access_log %%PREFIX%%if.log p if=$1$m;
              access_log %%PREFIX%%after-if.log p; return ok; }}
    server {{ listen 127.0.0.1:{g}; access_log %%PREFIX%%x$1$m.log p; access_log %%PREFIX%%after-path.log p; return ok; }}
}}
"
    ));
    for port in [e, f, g] {
        assert_eq!(exchange(port, b""), b"ok");
    }
    let pre = s.wait_lines("pre.log", 2);
    assert_eq!(pre, [e.to_string(), f.to_string()]);
    let after = s.wait_lines("after-path.log", 1);
    assert_eq!(after, [g.to_string()], "the log after a failing path is written");
    let alerts = |what: &str| s.error_log().lines().filter(|l| l.contains("[alert]") && l.contains(what)).count();
    assert!(crate::common::wait_for(Duration::from_secs(5), || alerts("no buffer space in log script copy") == 1));
    assert!(crate::common::wait_for(Duration::from_secs(5), || alerts("no buffer space in script copy") == 2));
    for name in ["c.log", "after-line.log", "if.log", "after-if.log"] {
        assert_eq!(std::fs::read_to_string(s.dir.join(name)).unwrap_or_default(), "", "{name}");
    }
    let log = s.error_log();
    assert!(!log.contains(&format!("\n{g}\n")) && !log.contains("open() \"\""), "{log}");
}

/// nginx's first pass keeps every variable's value for the second, a `volatile` map's
/// too: only the captures are read again. A volatile regex map is not run again in the
/// second pass, so the captures a later map set in the first pass stay (nginx 1.22.1
/// side by side: "~a|h|" and "1|x|56"; re-running it gave an alert and nothing, and
/// "1|x|").
#[test]
fn volatile_values_are_kept_between_the_two_passes() {
    let (a, b) = (free_port(), free_port());
    let _s = Sluice::start(&format!(
        "events {{}}
stream {{
    map $v $m2 {{ volatile; \"~^0\\.0\\.0\\.(1)$\" \"~a\"; }}
    map $w $h {{ \"~^5644$\" \"h\"; }}
    map $v $n2 {{ volatile; \"~^\" \"1\"; }}
    map $w $m0 {{ \"~^(56)44$\" \"x\"; }}
    server {{ listen 127.0.0.1:{a}; set $v 0.0.0.1; set $w 5644; return \"$m2|$h|$1\\n\"; }}
    server {{ listen 127.0.0.1:{b}; set $v 0.0.0.1; set $w 5644; return \"$n2|$m0|$1\\n\"; }}
}}
"
    ));
    assert_eq!(String::from_utf8_lossy(&exchange(a, b"")), "~a|h|\n");
    assert_eq!(String::from_utf8_lossy(&exchange(b, b"")), "1|x|56\n");
}

/// A volatile map is evaluated once per value that reads it (nginx flushes a value's
/// volatile variables before building it), and its kept value is what the second pass
/// copies: a second reference in the same value does not evaluate it again ("<a> W
/// <a>"), while a nested value that reads it (here `$w`'s, after `$w`'s regex moved the
/// captures) does, and the reference before shows that value too ("<b> <b>"). A log
/// line flushes once, the same way. nginx 1.22.1 side by side (the s30 regex hunt).
#[test]
fn a_volatile_map_is_evaluated_once_per_value_that_reads_it() {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let server = |port: u16, tail: &str| {
        format!("    server {{ listen 127.0.0.1:{port}; set $x a; set $y b; set $p $u; {tail} }}\n")
    };
    let s = Sluice::start(&format!(
        "events {{}}
stream {{
    map $x $v {{ volatile; default \"<$1>\"; }}
    map $y $w {{ ~^(b) \"$v\"; default d; }}
    map $y $w2 {{ ~^(b) \"W\"; default d; }}
    map $x $u {{ ~^(a) \"U\"; default d; }}
    log_format nested \"L $v $w\";
    log_format twice \"L $v $w2 $v\";
{}{}{}{}}}
",
        server(ports[0], "return \"$v $w\\n\";"),
        server(ports[1], "return \"$v $w2 $v\\n\";"),
        server(ports[2], "access_log nested.log nested; return x;"),
        server(ports[3], "access_log twice.log twice; return x;"),
    ));
    assert_eq!(String::from_utf8_lossy(&exchange(ports[0], b"")), "<b> <b>\n");
    assert_eq!(String::from_utf8_lossy(&exchange(ports[1], b"")), "<a> W <a>\n");
    exchange(ports[2], b"");
    exchange(ports[3], b"");
    assert_eq!(s.wait_lines("nested.log", 1), ["L <b> <b>"]);
    assert_eq!(s.wait_lines("twice.log", 1), ["L <a> W <a>"]);
}

/// A value `set` (or a named capture) stores into a variable a volatile map declares
/// stays for the session: nginx's flushes forget only what the map's own evaluation
/// made. nginx 1.22.1 side by side (the s30 script hunt, D1).
#[test]
fn a_value_set_into_a_volatile_variable_stays() {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    map $remote_addr $v {{ volatile; default "M"; }}
    map $y $r {{ ~^(?<n>b+) hit; default no; }}
    map $remote_addr $n {{ volatile; default "M"; }}
    geo $v $g {{ default d; 1.2.3.4 one; }}
    log_format f "L $v";
    server {{ listen 127.0.0.1:{}; set $v "S"; access_log set.log f; return "$v"; }}
    server {{ listen 127.0.0.1:{}; set $v "S$v"; return "$v|$v"; }}
    server {{ listen 127.0.0.1:{}; set $v 1.2.3.4; return "$g"; }}
    server {{ listen 127.0.0.1:{}; set $y bbb; set $p $r; return "$n"; }}
}}
"#,
        ports[0], ports[1], ports[2], ports[3]
    ));
    let answers: Vec<String> = ports.iter().map(|&p| String::from_utf8_lossy(&exchange(p, b"")).into_owned()).collect();
    assert_eq!(answers, ["S", "SM|SM", "one", "bbb"]);
    assert_eq!(s.wait_lines("set.log", 1), ["L S"]);
}

/// Map regexes mean what they mean to nginx's PCRE, where other engines read
/// the same text otherwise: `\<` is a literal (not a word start), a `{` that starts no
/// quantifier is literal (also `{,3}`), `(?#...)` is a comment, `[[` a literal bracket,
/// PCRE's `\e \cA \012 \o{101} \x4 \h \v \N \Z \R`, a stray `\E`, `[\b]`, `(?'name'...)`,
/// and `$` matching before a final newline. The answer is nginx 1.22.1's for the same
/// configuration (recorded by hand, Debian 1.22.1-9+deb12u7).
#[test]
fn map_regexes_mean_what_pcre_means() {
    let cases: &[(&str, &str)] = &[
        (r"^\<a\>$", "<a>"),
        (r"\<a", "xa"),
        (r"^a{$", "a{"),
        (r"^a{,3}$", "a{,3}"),
        (r"^a{,3}$", "aa"),
        (r"^a(?#note)b$", "ab"),
        (r"^[[a]+$", "[a["),
        (r"^[]x]+$", "]x"),
        (r"^[a&&b]+$", "&"),
        (r"^\e$", "\x1b"),
        (r"^\cA$", "\x01"),
        (r"^\012$", "\n"),
        (r"^\o{101}$", "A"),
        (r"^\x4$", "\x04"),
        (r"^a\hb$", "a\tb"),
        (r"^a\vb$", "a\x0bb"),
        (r"^a\Nb$", "axb"),
        (r"^a\Z", "a\n"),
        (r"^a\Z", "ab"),
        (r"^\Ea$", "a"),
        (r"[\b]", "\x08"),
        (r"^(?'h'[a-z]+)$", "abc"),
        (r"^a$", "a\n"),
        (r"^a$", "a\n\n"),
        (r"^a\R$", "a\r\n"),
        (r"^[\w-]+$", "a-b"),
    ];
    let nginx = "yes no yes yes no yes yes yes yes yes yes yes yes yes yes yes yes yes no yes yes yes yes no yes yes";
    check_map_regexes(cases, "yes", nginx);
}

/// What PCRE has beyond a plain engine, as nginx's PCRE2 reads it: look-ahead and
/// look-behind, backreferences, atomic groups and possessive quantifiers, `\Q..\E`,
/// recursion, conditionals, Unicode properties (on bytes: no UTF), inline flags, branch
/// reset, `\K`, and a repeated group that can match empty (its last, empty, match is
/// `$1`). The answers are nginx 1.22.1's for the same configuration (Debian
/// 1.22.1-9+deb12u7, recorded by hand).
#[test]
fn map_regexes_with_what_only_pcre_has() {
    let cases: &[(&str, &str)] = &[
        (r"^(?!www\.)[a-z]+\.com$", "www.com"),
        (r"^(?!www\.)[a-z]+\.com$", "mail.com"),
        (r"(?<=\.)com$", "a.com"),
        (r"(?<!\.)com$", "a.com"),
        (r"^(a+)-\1$", "aa-aa"),
        (r"^(a+)-\1$", "aa-a"),
        (r"^(?>a+)a$", "aaa"),
        (r"^a++b$", "aab"),
        (r"^\Q.*\E$", ".*"),
        (r"^\Q.*\E$", "ab"),
        (r"^(\((?:[^()]|(?1))*\))$", "(a(b)c)"),
        (r"^(a)?(?(1)b|c)$", "ab"),
        (r"^(a)?(?(1)b|c)$", "c"),
        (r"^\p{Lu}\p{Ll}+$", "Ab"),
        (r"^\p{L}$", "\u{e9}"),
        (r"^(?i:A)b$", "ab"),
        (r"^(?i:A)b$", "aB"),
        (r"^(a?)+$", "aa"),
        (r"^(?|(a)|(b))$", "b"),
        (r"^x\Ky$", "xy"),
    ];
    let nginx = "no y y no yaa no no y y no y(a(b)c) ya y y no y no y yb y";
    check_map_regexes(cases, r#""y$1""#, nginx);
}

/// A regex that backtracks without end stops at PCRE2's match limit: nginx logs the
/// failure at alert and the map takes its default, without trying the regexes after
/// it. (nginx 1.22.1 writes the pattern of that line from memory it has freed, as NUL
/// bytes; sluice writes the pattern.)
#[test]
fn a_match_that_fails_at_the_match_limit_is_an_alert_and_the_default() {
    let port = free_port();
    let subject = format!("{}!", "a".repeat(40));
    let s = Sluice::start(&format!(
        "events {{}}\nstream {{\n\
         map $s $m {{ \"~^(a+)+$\" limit; default d; }}\n\
         map $s $n {{ \"~^(a+)+$\" limit; \"~^a\" second; default d; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    set $s \"{subject}\";\n    return \"$m $n $1\";\n}}\n}}\n"
    ));
    assert_eq!(exchange(port, b""), b"d d ");
    let want = format!(
        "[alert] {pid}#{pid}: *1 pcre2_match() failed: -47 on \"{subject}\" using \"^(a+)+$\" while returning text, \
         client: 127.0.0.1, server: 127.0.0.1:{port}",
        pid = s.pid()
    );
    let lines = s.wait_lines("error.log", 2);
    let alerts: Vec<&String> = lines.iter().filter(|l| l.contains("[alert]")).collect();
    assert_eq!(alerts.len(), 2, "{lines:?}");
    for l in alerts {
        assert!(l.ends_with(&want), "{l}\nwant the end: {want}");
    }
}

/// `pcre_jit on` compiles the patterns to machine code, whose stack is PCRE2's 32 KiB
/// JIT stack: a long subject that the interpreter matches (off, the default) fails
/// there with -46, and the map takes its default (nginx 1.22.1, recorded by hand).
/// Where the library or the system allows no JIT (a build without it, or
/// MemoryDenyWriteExecute), sluice warns or logs it at startup, as nginx, and
/// interprets: then "on" answers as "off".
#[test]
fn pcre_jit_on_matches_with_the_jit_stack() {
    let a = "a".repeat(1000);
    let subject = "${a}".repeat(100) + "c";
    for jit in ["off", "on"] {
        let port = free_port();
        let s = Sluice::start(&format!(
            "pcre_jit {jit};\nevents {{}}\nstream {{\n\
             map $s $m {{ \"~^(a|ab)*c$\" match; default d; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    set $a \"{a}\";\n    set $s \"{subject}\";\n    return \"$m\";\n}}\n}}\n"
        ));
        let got = String::from_utf8_lossy(&exchange(port, b"")).into_owned();
        let log = s.error_log();
        let no_jit = log.contains("does not support JIT") || log.contains("pcre2_jit_compile() failed");
        let jitted = jit == "on" && !no_jit;
        assert_eq!(got, if jitted { "d" } else { "match" }, "pcre_jit {jit}: {log}");
        let failed =
            log.lines().filter(|l| l.contains("[alert]") && l.contains("pcre2_match() failed: -46 on \"aaa")).count();
        assert_eq!(failed, usize::from(jitted), "pcre_jit {jit}: {log}");
    }
}

/// A pattern the JIT refuses (`\C` in UTF mode) is logged at info once, by the process
/// that read the configuration, before the startup notices, whether or not it is ever
/// matched, and is interpreted (nginx 1.22.1's ngx_regex_module_init; nginx names the
/// pattern from memory it has freed, "", sluice names it).
#[test]
fn pcre_jit_logs_a_pattern_it_cannot_compile_at_startup() {
    let port = free_port();
    let s = Sluice::start_master(
        2,
        &format!(
            r#"pcre_jit on;
events {{}}
stream {{
    map $x $m {{ "~(*UTF)\\C" hit; default d; }}
    map $x $never {{ "~(*UTF)x\\C" hit; default d; }}
    server {{ listen 127.0.0.1:{port}; set $x abc; return "$m"; }}
}}
"#
        ),
    );
    assert_eq!(exchange(port, b""), b"hit");
    assert_eq!(exchange(port, b""), b"hit");
    let log = s.error_log();
    let lines: Vec<&str> = log.lines().collect();
    let failed: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("[info]") && lines[i].contains("pcre2_jit_compile() failed: "))
        .collect();
    let epoll = lines.iter().position(|l| l.contains("using the \"epoll\" event method"));
    if log.contains("does not support JIT") {
        return;
    }
    assert_eq!(failed.len(), 2, "{log}");
    assert!(lines[failed[0]].ends_with(r#"in "(*UTF)\C", ignored"#), "{log}");
    assert!(lines[failed[1]].ends_with(r#"in "(*UTF)x\C", ignored"#), "{log}");
    assert!(epoll.is_some_and(|e| failed[1] < e), "{log}");
}

/// One map per (pattern, subject) case, `"~PATTERN" VALUE; default no;`, over the
/// subject set with `set`; the answer, the maps' values joined by spaces, must be `nginx`.
fn check_map_regexes(cases: &[(&str, &str)], value: &str, nginx: &str) {
    let port = free_port();
    let mut conf = String::from("events {}\nstream {\n");
    for (i, (p, _)) in cases.iter().enumerate() {
        conf += &format!("    map $s{i} $m{i} {{ \"~{p}\" {value}; default no; }}\n");
    }
    conf += &format!("    server {{\n        listen 127.0.0.1:{port};\n");
    for (i, (_, s)) in cases.iter().enumerate() {
        conf += &format!("        set $s{i} \"{s}\";\n");
    }
    let answer: Vec<String> = (0..cases.len()).map(|i| format!("$m{i}")).collect();
    conf += &format!("        return \"{}\";\n    }}\n}}\n", answer.join(" "));
    let s = Sluice::start(&conf);
    let got = String::from_utf8(exchange(port, b"")).expect("ASCII");
    drop(s);
    for ((case, want), got) in cases.iter().zip(nginx.split(' ')).zip(got.split(' ')) {
        assert_eq!(got, want, "{case:?}");
    }
    assert_eq!(got, nginx);
}

/// Captures after a match as nginx keeps them: `$1` of a regex without groups is empty,
/// an unset group is empty, a group past the last set one is empty, and of duplicate
/// names (`(?J)`) the last in PCRE2's name table sets the variable even when its group
/// did not take part. A map whose regex fails at the match limit takes its default and
/// leaves the captures as they were. nginx 1.22.1 side by side (the s30 review).
#[test]
fn captures_and_named_groups_as_nginx_keeps_them() {
    let port = free_port();
    let _s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    map $s $a {{ ~^(x)(y) "A[$1|$2]"; default n; }}
    map $s $b {{ ~^x "B[$1|$2]"; default n; }}
    map $s $c {{ ~^(q)|(x)(y)? "C[$1|$2|$3]"; default n; }}
    map $s $d {{ "~(?J)^(?<n>x)|^(?<n>b)" "D[$n]"; default n; }}
    map $s $e {{ "~(?J)^(?<n>b)|^(?<n>x)" "E[$n]"; default n; }}
    map $s $f {{ "~^(?<zz>x)(?<aa>y)(?<mm>q)?" "F[$zz|$aa|$mm|$3]"; default n; }}
    map $s $g {{ "~^(x)" "G[$1]"; default n; }}
    map $t $h {{ "~^(a+)+$" "H"; default hd; }}
    map $s $i {{ "~^(x)" "I[$1]"; default n; }}
    server {{
        listen 127.0.0.1:{port};
        set $s xyz;
        set $t aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!;
        return "$a $b $c $d $e $f $g $h $i\n";
    }}
}}
"#
    ));
    let got = String::from_utf8_lossy(&exchange(port, b"")).into_owned();
    assert_eq!(got, "A[x|y] B[|] C[|x|y] D[] E[x] F[x|y||] G[x] hd I[x]\n");
}
