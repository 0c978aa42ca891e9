//! `geo` (ngx_stream_geo_module), shaped like nginx's stream_geo.t, stream_geo_ipv6.t and
//! stream_geo_unix.t; the answers for 200 client addresses and the configuration
//! messages recorded from nginx 1.22.1 (`t/data/modules/`).

use crate::common::{exchange, free_port, Sluice, TempDir};

mod conf {
    crate::map::conf_cases! {
        geo_args, geo_bad_addr, geo_bad_cidr, geo_bad_cidr6, geo_bad_delete, geo_bad_name,
        geo_bad_range, geo_bad_range2, geo_bad_source, geo_builtin, geo_include_error,
        geo_include_missing, geo_nested_block, geo_one_param, geo_params, geo_range_overlap,
        geo_range_overlap2, geo_range_warnings, geo_ranges_not_first, geo_unknown_source,
        geo_valid, geo_warnings,
    }
}
pub use conf::CASES;

#[test]
fn recorded_geo_answers() {
    // $g (CIDR, delete, include), $gr (ranges: split, shift, delete), $g6 (IPv6 from a
    // variable), $gm (IPv4-mapped from a variable), $gra (ranges from $remote_addr).
    crate::map::check_trace(&[5, 6, 7, 8, 9]);
}

fn text(port: u16) -> String {
    String::from_utf8_lossy(&exchange(port, b"")).into_owned()
}

/// `NAME:VALUE` pairs of an answer.
fn pairs(s: &str) -> std::collections::HashMap<String, String> {
    s.split_whitespace().filter_map(|w| w.split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn stream_geo_t() {
    let tmp = TempDir::new("geo-inc");
    let (geo_conf, ranges_conf) = (tmp.join("geo.conf"), tmp.join("geo-ranges.conf"));
    std::fs::write(&geo_conf, "127.0.0.0/8  loopback;").expect("write");
    std::fs::write(&ranges_conf, "127.0.0.0-127.255.255.255  loopback;").expect("write");
    let p: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    geo $geo {{
        127.0.0.0/8   loopback;
        192.0.2.0/24  test;
        0.0.0.0/0     world;
    }}
    geo $geo_include {{
        include       {geo_conf};
        192.0.2.0/24  test;
        0.0.0.0/0     world;
    }}
    geo $geo_delete {{
        127.0.0.0/8   loopback;
        192.0.2.0/24  test;
        0.0.0.0/0     world;
        delete        127.0.0.0/8;
    }}
    geo $remote_addr $geo_from_addr {{
        127.0.0.0/8   loopback;
        192.0.2.0/24  test;
    }}
    map $server_port $var {{
        {p0}  "192.0.2.1";
        {p1}  "10.0.0.1";
        {p5}  "10.11.2.1";
        {p6}  "loopback";
        {p7}  "10.13.2.1";
    }}
    geo $var $geo_from_var {{
        default       default;
        127.0.0.0/8   loopback;
        192.0.2.0/24  test;
    }}
    geo $var $geo_var_ranges {{
        ranges;
        default                default;
        127.0.0.0-127.0.0.1    loopback;
        10.10.3.0-10.11.2.255  foo;
        10.12.3.0-10.13.2.255  foo2;
        delete                 10.10.3.0-10.11.2.255;
    }}
    geo $var $geo_world {{
        127.0.0.0/8   loopback;
        192.0.2.0/24  test;
        0.0.0.0/0     world;
    }}
    geo $geo_ranges {{
        ranges;
        default                    default;
        127.0.0.0-127.255.255.255  loopback;
        192.0.2.0-192.0.2.255      test;
    }}
    geo $geo_ranges_include {{
        ranges;
        default                default;
        include                {ranges_conf};
        192.0.2.0-192.0.2.255  test;
    }}
    geo $geo_ranges_delete {{
        ranges;
        default                default;
        127.0.0.0-127.0.0.255  test;
        127.0.0.1-127.0.0.1    loopback;
        delete                 127.0.0.0-127.0.0.0;
        delete                 127.0.0.2-127.0.0.255;
        delete                 127.0.0.1-127.0.0.1;
    }}
    geo $geo_ranges_delete_2 {{
        ranges;
        default              default;
        127.0.0.0-127.1.0.0  loopback;
        delete               127.0.0.0-127.1.0.0;
    }}
    geo $geo_before {{
        ranges;
        default                default;
        127.0.0.1-127.0.0.255  loopback;
        127.0.0.0-127.0.0.0    test;
    }}
    geo $geo_after {{
        ranges;
        default                default;
        127.0.0.0-127.0.0.1    loopback;
        127.0.0.2-127.0.0.255  test;
    }}
    geo $geo_insert {{
        ranges;
        default                default;
        127.0.0.0-127.0.0.255  test;
        127.0.0.1-127.0.0.2    test2;
        127.0.0.1-127.0.0.1    loopback;
    }}
    geo $geo_insert_before {{
        ranges;
        default                default;
        127.0.0.0-127.0.0.255  test;
        127.0.0.0-127.0.0.1    loopback;
    }}
    geo $geo_insert_after {{
        ranges;
        default                default;
        127.0.0.0-127.0.0.255  test;
        127.0.0.1-127.0.0.255  loopback;
    }}
    server {{
        listen  127.0.0.1:{p0};
        return  "geo:$geo geo_include:$geo_include geo_delete:$geo_delete geo_ranges:$geo_ranges
                 geo_ranges_include:$geo_ranges_include geo_before:$geo_before geo_after:$geo_after
                 geo_insert:$geo_insert geo_insert_before:$geo_insert_before
                 geo_insert_after:$geo_insert_after geo_from_addr:$geo_from_addr
                 geo_from_var:$geo_from_var";
    }}
    server {{ listen 127.0.0.1:{p1}; return $geo_from_var; }}
    server {{ listen 127.0.0.1:{p2}; return $geo_world; }}
    server {{ listen 127.0.0.1:{p3}; return $geo_ranges_delete; }}
    server {{ listen 127.0.0.1:{p4}; return $geo_ranges_delete_2; }}
    server {{ listen 127.0.0.1:{p5}; return $geo_var_ranges; }}
    server {{ listen 127.0.0.1:{p6}; return $geo_var_ranges; }}
    server {{ listen 127.0.0.1:{p7}; return $geo_var_ranges; }}
}}
"#,
        geo_conf = geo_conf.display(),
        ranges_conf = ranges_conf.display(),
        p0 = p[0],
        p1 = p[1],
        p2 = p[2],
        p3 = p[3],
        p4 = p[4],
        p5 = p[5],
        p6 = p[6],
        p7 = p[7],
    ));
    let d = pairs(&text(p[0]));
    for (k, v) in [
        ("geo", "loopback"),
        ("geo_include", "loopback"),
        ("geo_delete", "world"),
        ("geo_ranges", "loopback"),
        ("geo_ranges_include", "loopback"),
        ("geo_before", "loopback"),
        ("geo_after", "loopback"),
        ("geo_insert", "loopback"),
        ("geo_insert_before", "loopback"),
        ("geo_insert_after", "loopback"),
        ("geo_from_addr", "loopback"),
        ("geo_from_var", "test"),
    ] {
        assert_eq!(d.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(text(p[3]), "default", "geo ranges delete");
    assert_eq!(text(p[4]), "default", "geo ranges delete 2");
    assert_eq!(text(p[5]), "default", "geo delete range from variable");
    assert_eq!(text(p[1]), "default", "geo default");
    assert_eq!(text(p[2]), "world", "geo world");
    assert_eq!(text(p[6]), "default", "geo ranges default");
    assert_eq!(text(p[7]), "foo2", "geo ranges add");
    drop(s);
}

/// stream_geo_ipv6.t: a client on ::1, and IPv6 / IPv4-mapped addresses from a variable.
#[test]
fn stream_geo_ipv6_t() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback: skipped");
        return;
    }
    let (p0, p1, p6) = (free_port(), free_port(), free_port());
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    geo $geo {{
        ::1/128         loopback;
        2001:0db8::/32  test;
        ::/0            world;
    }}
    geo $geo_delete {{
        ::1/128         loopback;
        2001:0db8::/32  test;
        ::/0            world;
        delete          ::1/128;
    }}
    map $server_port $var {{
        {p6}  "::1";
        {p1}  "::ffff:192.0.2.1";
    }}
    geo $var $geo_var {{
        default    default;
        192.0.2.1  test;
    }}
    geo $var $geo_var_ranges {{
        ranges;
        default              default;
        127.0.0.1-127.0.0.2  loopback;
        192.0.2.0-192.0.2.1  test;
    }}
    server {{ listen 127.0.0.1:{p0}; proxy_pass [::1]:{p6}; }}
    server {{
        listen  [::1]:{p6};
        return  "geo:$geo geo_delete:$geo_delete geo_var:$geo_var geo_var_ranges:$geo_var_ranges";
    }}
    server {{ listen 127.0.0.1:{p1}; return "geo_var:$geo_var geo_var_ranges:$geo_var_ranges"; }}
}}
"#
    ));
    let d = pairs(&text(p0));
    assert_eq!(d.get("geo").map(String::as_str), Some("loopback"), "geo ipv6");
    assert_eq!(d.get("geo_delete").map(String::as_str), Some("world"), "geo ipv6 delete");
    assert_eq!(d.get("geo_var").map(String::as_str), Some("default"), "geo ipv6 from variable");
    assert_eq!(d.get("geo_var_ranges").map(String::as_str), Some("default"), "geo ipv6 from variable range");
    let d = pairs(&text(p1));
    assert_eq!(d.get("geo_var").map(String::as_str), Some("test"), "ipv4-mapped from variable");
    assert_eq!(d.get("geo_var_ranges").map(String::as_str), Some("test"), "ipv4-mapped from variable range");
    drop(s);
}

/// stream_geo_unix.t: a unix-domain client looks up 255.255.255.255, whether geo reads
/// the client address or `$remote_addr` ("unix:").
#[test]
fn stream_geo_unix_t() {
    let p = free_port();
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    geo $geo {{
        default                  default;
        255.255.255.255          none;
    }}
    geo $remote_addr $geora {{
        default                  default;
        255.255.255.255          none;
    }}
    geo $geor {{
        ranges;
        0.0.0.0-255.255.255.254  test;
        default                  none;
    }}
    geo $remote_addr $georra {{
        ranges;
        0.0.0.0-255.255.255.254  test;
        default                  none;
    }}
    server {{
        listen  unix:%%PREFIX%%unix.sock;
        return  "geo:$geo geora:$geora geor:$geor georra:$georra";
    }}
    server {{ listen 127.0.0.1:{p}; proxy_pass unix:%%PREFIX%%unix.sock; }}
}}
"#
    ));
    let d = pairs(&text(p));
    for k in ["geo", "geor", "geora", "georra"] {
        assert_eq!(d.get(k).map(String::as_str), Some("none"), "{k}");
    }
    drop(s);
}

/// Without a default, an address no network holds reads as empty; a source variable
/// that is not an address looks up 255.255.255.255; the value is kept for the session.
#[test]
fn no_default_bad_source_and_cache() {
    let p = free_port();
    let s = Sluice::start(&format!(
        r#"events {{}}
stream {{
    geo $g {{ 10.0.0.0/8 ten; }}
    map $server_port $bad {{ default "not-an-address"; }}
    geo $bad $gb {{ 255.255.255.255 none; default d; }}
    geo $src $gs {{ 10.0.0.0/8 ten; default other; }}
    server {{
        listen 127.0.0.1:{p};
        set $src 10.1.1.1;
        set $first $gs;
        set $src 192.0.2.1;
        return "[$g][$gb][$first][$gs]";
    }}
}}
"#
    ));
    assert_eq!(text(p), "[][none][ten][ten]");
    drop(s);
}

/// 100,001 ranges in one file: enough for nginx to keep them as a binary base.
fn big_ranges() -> String {
    let mut text = String::from("127.0.0.1-127.0.0.1 loopback;\n");
    for i in 0..100_000u32 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i * 4);
        let z = std::net::Ipv4Addr::from(0x0a00_0000 + i * 4 + 1);
        text.push_str(&format!("{a}-{z} v{};\n", i % 7919));
    }
    text
}

/// SHA-256 of the `base.conf.bin` nginx 1.22.1 wrote for `big_ranges()` (x86_64).
const NGINX_BASE_SHA256: &str = "c20c1c485d5b236d9dbc0b5131424e68242cebb1af84531302c44acbb4e5f50e";

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap_or_default();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `geo { ranges; include FILE; }` with more than 100,000 ranges writes nginx's binary
/// base FILE.bin (the same bytes), the next block including FILE reads it instead, a
/// damaged or stale base is said and rewritten, and entries beside a base are refused —
/// each with nginx's words (recorded side by side with nginx 1.22.1).
#[test]
fn ranges_include_writes_and_reads_nginx_binary_base() {
    use crate::common::{console, run};
    let tmp = TempDir::new("geo-bin");
    let dir = tmp.prefix();
    std::fs::write(tmp.join("base.conf"), big_ranges()).expect("write");
    let port = free_port();
    let conf = format!(
        "error_log stderr notice;\npid {dir}x.pid;\nevents {{}}\nstream {{\n\
         geo $a {{ ranges; include base.conf; }}\n\
         geo $x $b {{ ranges; default none; include base.conf; }}\n\
         server {{ listen 127.0.0.1:{port}; set $x 10.0.1.4; return \"$a $b\"; }}\n}}\n"
    );
    std::fs::write(tmp.join("conf"), &conf).expect("write");
    let t = || {
        let out = run(&["-t", "-p", &dir, "-c", "conf"], tmp.path());
        (out.status.code(), console(&out.stderr))
    };
    let bin = tmp.join("base.conf.bin");
    let created = format!("[notice] creating binary geo range base \"{dir}base.conf.bin\"\n");
    let used = |line: u32| format!("[notice] using binary geo range base \"{dir}base.conf.bin\" in {dir}conf:{line}\n");
    let ok = format!(
        "sluice: the configuration file {dir}conf syntax is ok\nsluice: configuration file {dir}conf test is successful\n"
    );

    assert_eq!(t(), (Some(0), format!("{created}{}{ok}", used(6))));
    assert_eq!(sha256_hex(&bin), NGINX_BASE_SHA256, "not nginx's binary base");
    assert_eq!(t(), (Some(0), format!("{}{}{ok}", used(5), used(6))));

    // Values from the text (the first block) and from the base (the second) alike.
    let served = conf.replace("error_log stderr notice;\n", "").replace(&format!("pid {dir}x.pid;\n"), "");
    let s = Sluice::start(&served.replace("include base.conf", &format!("include {dir}base.conf")));
    assert_eq!(text(port), "loopback v65");
    drop(s);

    // One flipped bit: the base is not used, and is written again.
    let mut bytes = std::fs::read(&bin).expect("read base");
    bytes[100] ^= 1;
    std::fs::write(&bin, bytes).expect("write base");
    let mismatch = format!("[warn] CRC32 mismatch in binary geo range base \"{dir}base.conf.bin\" in {dir}conf:5\n");
    assert_eq!(t(), (Some(0), format!("{mismatch}{created}{}{ok}", used(6))));
    assert_eq!(sha256_hex(&bin), NGINX_BASE_SHA256);

    // Older than its text: stale.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::options().write(true).open(&bin).and_then(|f| f.set_modified(old)).expect("set mtime");
    let stale = format!("[warn] stale binary geo range base \"{dir}base.conf.bin\" in {dir}conf:5\n");
    assert_eq!(t(), (Some(0), format!("{stale}{created}{}{ok}", used(6))));

    // Not a base at all.
    std::fs::write(&bin, b"GEORNG").expect("write base");
    let foreign = format!("[warn] incompatible binary geo range base \"{dir}base.conf.bin\" in {dir}conf:5\n");
    assert_eq!(t(), (Some(0), format!("{foreign}{created}{}{ok}", used(6))));

    // Entries before the include, or after it, cannot go with a base.
    for (geo, line) in
        [("10.255.0.1-10.255.0.2 x; include base.conf;", 5), ("include base.conf; 10.255.0.1-10.255.0.2 x;", 5)]
    {
        std::fs::write(tmp.join("conf"), conf.replace("ranges; include base.conf;", &format!("ranges; {geo}")))
            .expect("write");
        let (code, out) = t();
        assert_eq!(code, Some(1), "{out}");
        let mixed = format!(
            "[emerg] binary geo range base \"{dir}base.conf.bin\" cannot be mixed with usual entries in {dir}conf:{line}\n"
        );
        assert!(out.contains(&mixed), "{out}");
    }
}
