//! `set` (ngx_stream_set_module), shaped like nginx's stream_set.t; the configuration
//! messages recorded from nginx 1.22.1 (`t/data/modules/`).

use crate::common::{exchange, free_port, Sluice};

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
