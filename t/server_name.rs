//! `server_name` in stream servers (nginx 1.25.5): servers sharing a `listen` address,
//! chosen by the SNI host name that `ssl_preread` reads — exact names, "*.name",
//! ".name" and "name.*" wildcards (the longest wins), regexes in order (captures and
//! named groups), `default_server`, `$server_name` — and the configuration checks.
//! Without any `server_name`, a shared address stays nginx 1.22.1's error (recorded in
//! t/data/conf_errors).

use std::io::{Read, Write};

use crate::common::{connect, console, exchange, free_port, run, sni_hello as hello, Sluice, TempDir};

/// Send a hello with SNI `host` and read the answer until sluice closes.
fn ask(port: u16, host: &str) -> String {
    let mut c = connect(port);
    c.write_all(&hello(host.as_bytes())).expect("write hello");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn sni_picks_the_virtual_server() {
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    log_format names '$server_name|$ssl_preread_server_name';
    access_log %%PREFIX%%names.log names;
    server {{
        listen 127.0.0.1:{p};
        ssl_preread on;
        return "default|$server_name";
    }}
    server {{
        listen 127.0.0.1:{p};
        server_name example.com Other.Example.COM;
        return "exact|$server_name";
    }}
    server {{
        listen 127.0.0.1:{p};
        server_name *.example.org;
        return "head|$server_name";
    }}
    server {{
        listen 127.0.0.1:{p};
        server_name *.deep.example.org;
        return "deeper|$server_name";
    }}
    server {{
        listen 127.0.0.1:{p};
        server_name .dot.test;
        return "dot|$server_name";
    }}
    server {{
        listen 127.0.0.1:{p};
        server_name www.example.*;
        return "tail|$server_name";
    }}
    server {{
        listen 127.0.0.1:{p};
        server_name ~^(?<sub>[a-z]+)\.(re)\.test$ ~^CASE\.test$;
        return "regex|$server_name|$sub|$2";
    }}

    server {{
        listen 127.0.0.1:{q};
        ssl_preread on;
        return "first|$server_name";
    }}
    server {{
        listen 127.0.0.1:{q} default_server;
        server_name named.test;
        return "chosen-default|$server_name";
    }}
}}
"#
    ));
    let cases = [
        ("example.com", "exact|example.com"),
        // Lowercased, without a trailing dot or a port; any of the server's names.
        ("EXAMPLE.com.", "exact|example.com"),
        ("other.example.com", "exact|example.com"),
        ("a.example.org", "head|*.example.org"),
        ("a.b.example.org", "head|*.example.org"),
        // "*.name" does not match the name itself; the longest wildcard wins.
        ("example.org", "default|"),
        ("x.deep.example.org", "deeper|*.deep.example.org"),
        ("deep.example.org", "head|*.example.org"),
        // ".name" is both the name and "*.name"; $server_name drops the dot.
        ("dot.test", "dot|dot.test"),
        ("x.y.dot.test", "dot|dot.test"),
        ("www.example.net", "tail|www.example.*"),
        ("www.example.co.uk", "tail|www.example.*"),
        ("www.example", "default|"),
        // Regexes: captures and named groups for the chosen server's variables; an
        // uppercase letter makes a regex caseless.
        ("abc.re.test", "regex|~^(?<sub>[a-z]+)\\.(re)\\.test$|abc|re"),
        ("case.test", "regex|~^(?<sub>[a-z]+)\\.(re)\\.test$||"),
        // Unknown and invalid names stay with the default server.
        ("unknown.test", "default|"),
        ("a..example.com", "default|"),
        ("exa/mple.com", "default|"),
    ];
    let mut wrong = Vec::new();
    for (host, want) in cases {
        let got = ask(p, host);
        if got != want {
            wrong.push(format!("{host}: got {got:?}, want {want:?}"));
        }
    }
    // `default_server` makes the second server the default of its address.
    for (host, want) in [("named.test", "chosen-default|named.test"), ("other.test", "chosen-default|named.test")] {
        let got = ask(q, host);
        if got != want {
            wrong.push(format!("{host} on the second address: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The log phase runs in the chosen server: its $server_name.
    let lines = s.wait_lines("names.log", cases.len() + 2);
    assert_eq!(lines.first().map(String::as_str), Some("example.com|example.com"), "{lines:?}");
}

/// `sluice -t` on a stream block: (exit code, stderr).
fn test_conf(stream: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("server-name");
    let conf = format!("events {{}}\nstream {{\n{stream}}}\n");
    std::fs::write(dir.join("sluice.conf"), conf).expect("write conf");
    let out = run(&["-t", "-p", &dir.prefix(), "-c", "sluice.conf"], dir.path());
    (out.status.code(), console(&out.stderr))
}

#[test]
fn configuration_checks_as_nginx() {
    let srv = |body: &str| {
        format!("    server {{\n        listen 127.0.0.1:8000;\n        {body}\n        return x;\n    }}\n")
    };
    let refused = [
        (srv("server_name *;"), "[emerg] server name \"*\" is invalid in ", ":5"),
        (srv("server_name *x.com;"), "[emerg] server name \"*x.com\" is invalid in ", ":5"),
        (srv("server_name .;"), "[emerg] server name \".\" is invalid in ", ":5"),
        (srv("server_name ~;"), "[emerg] empty regex in server name \"~\" in ", ":5"),
        (srv("server_name a; listen 127.0.0.1:8000;"), "[emerg] a duplicate listen 127.0.0.1:8000 in ", ":5"),
        (
            format!("{}{}", srv("server_name a;"), srv("server_name a*b;")),
            "[emerg] invalid server name or wildcard \"a*b\" on 127.0.0.1:8000",
            "",
        ),
        (
            srv("listen 127.0.0.1:8001 default_server; server_name a; listen 127.0.0.1:8001 default_server;")
                .replace("listen 127.0.0.1:8000;\n", ""),
            "[emerg] a duplicate listen 127.0.0.1:8001 in ",
            ":4",
        ),
        (
            format!(
                "{}{}",
                srv("server_name a; listen 127.0.0.1:8001 default_server;"),
                srv("listen 127.0.0.1:8001 default_server;")
            ),
            "[emerg] a duplicate default server for 127.0.0.1:8001 in ",
            ":10",
        ),
        (
            format!(
                "{}{}",
                srv("server_name a; listen 127.0.0.1:8001 backlog=10;"),
                srv("listen 127.0.0.1:8001 rcvbuf=8k;")
            ),
            "[emerg] duplicate listen options for 127.0.0.1:8001 in ",
            ":10",
        ),
        // No server_name anywhere: nginx 1.22.1's one server per address.
        (format!("{}{}", srv(""), srv("")), "[emerg] duplicate \"127.0.0.1:8000\" address and port pair in ", ":9"),
    ];
    let mut wrong = Vec::new();
    for (stream, msg, at) in &refused {
        let (code, err) = test_conf(stream);
        let line = err.lines().find(|l| l.contains("[emerg]")).unwrap_or("");
        if code != Some(1) || !line.contains(msg) || !line.ends_with(at) {
            wrong.push(format!("{stream}\n  want {msg}...{at}, exit 1\n  got exit {code:?}: {err}"));
        }
    }
    // Accepted, with nginx's warnings.
    let warned = [
        (
            format!("{}{}{}", srv("server_name a;"), srv(""), srv("")),
            "[warn] conflicting server name \"\" on 127.0.0.1:8000, ignored",
        ),
        (srv("server_name a/b;"), "[warn] server name \"a/b\" has suspicious symbols in "),
        (
            format!("{}{}", srv("server_name a *.b.com;"), srv("server_name .b.com;")),
            "[warn] conflicting server name \".b.com\" on 127.0.0.1:8000, ignored",
        ),
    ];
    for (stream, msg) in &warned {
        let (code, err) = test_conf(stream);
        if code != Some(0) || !err.contains(msg) || !err.contains("test is successful") {
            wrong.push(format!("{stream}\n  want {msg} and success\n  got exit {code:?}: {err}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// Shaped like nginx-tests' stream_server_name.t (which needs TLS termination): names
/// in a row and over two directives, PCRE's `\Q...\E` and `\p{N}`, named captures,
/// uppercase hosts, the most specific wildcard at either end.
#[test]
fn stream_server_name_t_shape() {
    let p = free_port();
    let _s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    server_names_hash_bucket_size 64;
    server {{ listen 127.0.0.1:{p}; server_name localhost; ssl_preread on; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name www.example.com; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name ~^EXAMPLE\.COM$; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name ~^(?P<name>[a-z]+)\Q.example.com\E$; return $name; }}
    server {{ listen 127.0.0.1:{p}; server_name "~^(?P<name>www\p{{N}}+)\.example\.com$"; return $name; }}
    server {{ listen 127.0.0.1:{p}; server_name many.example.com many2.example.com; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name many3.example.com; server_name many4.example.com; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name *.wc.example.com; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name *.pref.wc.example.com; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name wc2.example.*; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name wc2.example.com.*; return $server_name; }}
    server {{ listen 127.0.0.1:{p}; server_name .dot.example.com; return $server_name; }}
}}
"#
    ));
    let cases = [
        ("xxx", "localhost"),
        ("www.example.com", "www.example.com"),
        ("WWW.EXAMPLE.COM", "www.example.com"),
        ("example.com", "~^EXAMPLE\\.COM$"),
        ("EXAMPLE.COM", "~^EXAMPLE\\.COM$"),
        ("blah.example.com", "blah"),
        ("BLAH.EXAMPLE.COM", "blah"),
        ("www01.example.com", "www01"),
        ("WWW01.EXAMPLE.COM", "www01"),
        ("many.example.com", "many.example.com"),
        ("many2.example.com", "many.example.com"),
        ("many3.example.com", "many3.example.com"),
        ("many4.example.com", "many3.example.com"),
        ("www.wc.example.com", "*.wc.example.com"),
        ("www.pref.wc.example.com", "*.pref.wc.example.com"),
        ("wc2.example.net", "wc2.example.*"),
        ("wc2.example.com.pref", "wc2.example.com.*"),
        ("dot.example.com", "dot.example.com"),
        ("www.dot.example.com", "dot.example.com"),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(host, want)| {
            let got = ask(p, host);
            (got != *want).then(|| format!("{host}: got {got:?}, want {want:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Servers kept in included files (conf.d style) may share an address by name too.
#[test]
fn server_names_in_included_files() {
    let p = free_port();
    let dir = TempDir::new("server-name-include");
    std::fs::create_dir_all(dir.join("conf.d")).expect("conf.d");
    for (file, body) in [
        ("a.conf", "ssl_preread on; return \"a|$server_name\";"),
        ("b.conf", "server_name b.test; return \"b|$server_name\";"),
    ] {
        let text = format!("server {{ listen 127.0.0.1:{p}; {body} }}\n");
        std::fs::write(dir.join("conf.d").join(file), text).expect("write include");
    }
    let s = Sluice::start(&format!("events {{}}\nstream {{\n    include {}conf.d/*.conf;\n}}\n", dir.prefix()));
    assert_eq!(ask(p, "b.test"), "b|b.test");
    assert_eq!(ask(p, "other.test"), "a|");
    drop(s);
}

/// nginx 1.22.1 has no `$server_name` in stream, so its configurations may make one:
/// theirs takes the place of sluice's (which refused them: "the duplicate
/// "server_name" variable"). Side by side with nginx 1.22.1.
#[test]
fn configurations_may_make_their_own_server_name_variable() {
    let (p, q) = (free_port(), free_port());
    let _s = Sluice::start(&format!(
        "events {{}} stream {{ map $server_port $server_name {{ {q} from-map; default other; }} \
         server {{ listen 127.0.0.1:{p}; set $server_name backend-a; return \"a=$server_name\"; }} \
         server {{ listen 127.0.0.1:{q}; return \"b=$server_name\"; }} }}"
    ));
    assert_eq!(exchange(p, b""), b"a=backend-a");
    assert_eq!(exchange(q, b""), b"b=from-map");
    for (def, want) in
        [("geo $server_name { default g; }", b"g"), ("split_clients $remote_addr $server_name { * s; }", b"s")]
    {
        let r = free_port();
        let _s = Sluice::start(&format!(
            "events {{}} stream {{ {def} server {{ listen 127.0.0.1:{r}; return \"$server_name\"; }} }}"
        ));
        assert_eq!(exchange(r, b""), want, "{def}");
    }
}

/// A `server_name` regex that fails to match (PCRE2's match limit) ends the session
/// with 500 after the alert, as nginx 1.25.5's ngx_stream_find_virtual_server fails
/// it: the default server does not take it, and the regexes after it are not tried.
#[test]
fn a_server_name_regex_that_fails_to_match_ends_the_session() {
    let p = free_port();
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    log_format st '$status';
    access_log %%PREFIX%%st.log st;
    server {{
        listen 127.0.0.1:{p};
        ssl_preread on;
        return "default";
    }}
    server {{
        listen 127.0.0.1:{p};
        server_name "~^(a+)+$" "~^a";
        return "regex";
    }}
}}
"#
    ));
    let host = format!("{}-", "a".repeat(40));
    assert_eq!(ask(p, &host), "");
    assert_eq!(s.wait_lines("st.log", 1), ["500"]);
    let log = s.error_log();
    assert!(
        log.contains("[alert]") && log.contains(&format!("pcre2_match() failed: -47 on \"{host}\" using \"^(a+)+$\"")),
        "{log}"
    );
    // A name the regexes match, or that none does, is served as before.
    assert_eq!(ask(p, "ab"), "regex");
    assert_eq!(ask(p, "b"), "default");
}
