//! `set` (ngx_stream_set_module), shaped like nginx's stream_set.t; the configuration
//! messages recorded from nginx 1.22.1 (`t/data/modules/`).

use crate::common::{backend, connect, exchange, free_port, wait_for, Sluice};
use std::io::{Read, Write};
use std::time::Duration;

mod conf {
    crate::map::conf_cases! {
        set_args, set_bad_name, set_builtin, set_in_stream, set_valid, set_value_brace,
    }
}
pub use conf::CASES;

fn text(port: u16) -> String {
    String::from_utf8_lossy(&exchange(port, b"")).into_owned()
}

#[test]
fn recorded_set_answers() {
    // $s: set from two other variables in the preaccess phase.
    crate::map::check_trace(&[10]);
}

/// stream_set.t: a map value read by `set` before another `set` changes it; a variable
/// only `set` makes is empty where no `set` ran.
#[test]
fn stream_set_t() {
    let (a, b) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    map 0 $map_var {{
        default "original";
    }}
    server {{
        listen  127.0.0.1:{a};
        return  $map_var:$set_var;
        set $set_var $map_var;
        set $map_var "new";
    }}
    server {{
        listen  127.0.0.1:{b};
        return  $set_var;
    }}
}}
"#
    ));
    assert_eq!(text(a), "new:original", "set");
    assert_eq!(text(b), "", "uninitialized variable");
    drop(s);
}

/// Variable names are case-insensitive (nginx keeps them in lower case): a `set $V`
/// is read as `$v`, and built-ins answer in any case.
#[test]
fn variable_names_ignore_case() {
    let a = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ server {{ listen 127.0.0.1:{a}; set $Greeting hi; \
         return \"$greeting $REMOTE_ADDR $Server_Port\"; }} }}"
    ));
    assert_eq!(text(a), format!("hi 127.0.0.1 {a}"));
    drop(s);
}

/// Sets run in order, may read what an earlier one set and captures of a map's regex,
/// and a set in one server does not reach another.
#[test]
fn order_captures_and_servers() {
    let (a, b) = (free_port(), free_port());
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    map $server_port $digits {{
        ~^(\d)(\d)  "$2$1";
    }}
    server {{
        listen  127.0.0.1:{a};
        set $x "[$digits]";
        set $y "$x-$1-$2";
        set $x "${{x}}2";
        return  "$x|$y";
    }}
    server {{
        listen  127.0.0.1:{b};
        return  "$x|$y";
    }}
}}
"#
    ));
    let ps = a.to_string();
    let (d1, d2) = (&ps[0..1], &ps[1..2]);
    assert_eq!(text(a), format!("[{d2}{d1}]2|[{d2}{d1}]-{d1}-{d2}"));
    assert_eq!(text(b), "|");
    drop(s);
}

/// $bytes_sent and $bytes_received are cacheable in nginx: once evaluated (by `return`,
/// `set`, a map), the log shows that early value, not the final count. Seen side by side
/// with nginx 1.22.1: `return "sent=$bytes_sent..."` logs 0 bytes sent, and a session
/// that `set` $bytes_received before proxying "hello" logs 0 bytes received.
#[test]
fn bytes_variables_keep_their_first_value() {
    let (a, b) = (free_port(), free_port());
    // A backend that reads to the end and answers nothing.
    let up = backend(|mut c| {
        let _ = std::io::copy(&mut c, &mut std::io::sink());
    });
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format b '$server_port $bytes_sent $bytes_received $upstream_bytes_sent'; \
         access_log %%PREFIX%%b.log b; \
         server {{ listen 127.0.0.1:{a}; return \"sent=$bytes_sent recv=$bytes_received\\n\"; }} \
         server {{ listen 127.0.0.1:{b}; set $early $bytes_received; proxy_pass 127.0.0.1:{up}; }} }}"
    ));
    assert_eq!(text(a), "sent=0 recv=0\n");
    let mut c = connect(b);
    c.write_all(b"hello").expect("write");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert_eq!(rest, b"");
    assert!(wait_for(Duration::from_secs(5), || s.read("b.log").lines().count() == 2), "{}", s.read("b.log"));
    let log = s.read("b.log");
    assert!(log.contains(&format!("{a} 0 0 -\n")), "{log}");
    assert!(log.contains(&format!("{b} 0 0 5\n")), "{log}");
    drop(s);
}

/// The ssl module's variables are changeable, as nginx flags them: a `map` takes the
/// place of `$ssl_server_name` and `set` gives `$ssl_protocol` a value (sluice refused
/// both: "the duplicate variable"). A `volatile` map's variable stays volatile when a
/// later `map` declares it again (nginx's NOCACHEABLE flag stays): the log line
/// evaluates it afresh. Side by side with nginx 1.22.1: `from-map from-set v=s000`
/// answered, `200 s200 from-map from-set` logged.
#[test]
fn ssl_variables_are_changeable_and_volatile_stays() {
    let p = free_port();
    let s = Sluice::start(&format!(
        "events {{}} stream {{ log_format f '$status $v $ssl_server_name $ssl_protocol'; \
         map $remote_addr $ssl_server_name {{ default from-map; }} \
         map $status $v {{ volatile; default x; }} \
         map $status $v {{ default \"s$status\"; }} \
         server {{ listen 127.0.0.1:{p}; set $ssl_protocol from-set; access_log %%PREFIX%%f.log f; \
         return \"$ssl_server_name $ssl_protocol v=$v\\n\"; }} }}"
    ));
    assert_eq!(text(p), "from-map from-set v=s000\n");
    assert!(wait_for(Duration::from_secs(5), || !s.read("f.log").is_empty()));
    assert_eq!(s.read("f.log"), "200 s200 from-map from-set\n");
}
