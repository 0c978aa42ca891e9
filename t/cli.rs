//! The command line against nginx 1.22.1's, recorded in `t/data/cli/` by
//! `t/data/record-cli.sh`: usage and version, `-t`/`-T`/`-q`, `-g` errors, option errors,
//! and `-s` (against a missing or bad pid file, and against a running sluice).
//!
//! Recorded cases run exactly as the recorder ran nginx (`OPTIONS -p DIR -c DIR/nginx.conf
//! -e DIR/error.log`, DIR as the working directory) minus the `load_module` that the
//! recorder put in `-g`. stderr must equal `NAME.stderr` with `nginx: ` line prefixes read
//! as `sluice: ` and `%%PREFIX%%` as DIR; stdout must equal `NAME.stdout` (or be empty).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::{console, exchange, free_port, run, wait_for, Sluice, TempDir};

const LOAD_MODULE: &str = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/cli")
}

/// A fresh DIR holding a copy of `cli/conf/CONF/` (if any).
fn setup(conf: Option<&str>) -> TempDir {
    let tmp = TempDir::new("cli");
    if let Some(c) = conf {
        for e in std::fs::read_dir(data_dir().join("conf").join(c)).expect("read cli/conf") {
            let e = e.expect("dir entry");
            std::fs::copy(e.path(), tmp.join(&e.file_name().to_string_lossy())).expect("copy conf");
        }
    }
    tmp
}

fn dir_of(tmp: &TempDir) -> String {
    tmp.path().display().to_string()
}

/// The recorder's `-p DIR -c DIR/nginx.conf -e DIR/error.log`.
fn std_args(dir: &str) -> Vec<String> {
    vec!["-p".into(), dir.into(), "-c".into(), format!("{dir}/nginx.conf"), "-e".into(), format!("{dir}/error.log")]
}

fn sluice(args: &[String], tmp: &TempDir) -> Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&a, tmp.path())
}

fn as_sluice(text: &str, dir: &str) -> String {
    let mut s = String::new();
    for l in text.lines() {
        let l = match l.strip_prefix("nginx: ") {
            Some(rest) => format!("sluice: {rest}"),
            None => l.to_string(),
        };
        s.push_str(&l.replace("%%PREFIX%%", dir));
        s.push('\n');
    }
    s
}

/// `NAME.stderr` (minus its `exit=N` line), N, and `NAME.stdout` (or ""), for DIR.
fn recorded(name: &str, dir: &str) -> (String, i32, String) {
    let text = std::fs::read_to_string(data_dir().join(format!("{name}.stderr"))).expect("read .stderr");
    let (body, last) = text.trim_end_matches('\n').rsplit_once('\n').unwrap_or(("", text.trim_end()));
    let code = last.strip_prefix("exit=").and_then(|c| c.parse().ok()).expect("last line exit=N");
    let stdout = std::fs::read_to_string(data_dir().join(format!("{name}.stdout"))).unwrap_or_default();
    let stderr = if body.is_empty() { String::new() } else { as_sluice(body, dir) };
    // .stdout is compared as bytes apart from the substitutions: keep its blank lines.
    (stderr, code, stdout.replace("%%PREFIX%%", dir))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Compare an invocation with the recording `name`; panics with a diff.
fn assert_recorded(name: &str, out: &Output, dir: &str) {
    let (stderr, code, stdout) = recorded(name, dir);
    let (e, o) = (text(&out.stderr), text(&out.stdout));
    if e == stderr && o == stdout && out.status.code() == Some(code) {
        return;
    }
    let mut m = format!("cli case {name}:\n");
    if e != stderr {
        m.push_str("stderr (- nginx, + sluice):\n");
        stderr.lines().for_each(|l| m.push_str(&format!("  - {l}\n")));
        e.lines().for_each(|l| m.push_str(&format!("  + {l}\n")));
    }
    if o != stdout {
        m.push_str(&format!("stdout:\n  - {stdout:?}\n  + {o:?}\n"));
    }
    if out.status.code() != Some(code) {
        m.push_str(&format!("exit: nginx {code}, sluice {:?}\n", out.status.code()));
    }
    panic!("{m}");
}

/// Run a recorded case: `before` + (std args if `std`) + `after`, in a DIR set up from
/// `conf`.
fn case(name: &str, conf: Option<&str>, before: &[&str], std: bool, after: &[&str]) {
    let tmp = setup(conf);
    let dir = dir_of(&tmp);
    let mut args: Vec<String> = before.iter().map(|s| s.replace("@DIR@", &dir)).collect();
    if std {
        args.extend(std_args(&dir));
    }
    args.extend(after.iter().map(|s| s.replace("@DIR@", &dir)));
    let out = sluice(&args, &tmp);
    assert_recorded(name, &out, &dir);
}

// ---- -h / -? / -v / -V -------------------------------------------------------------

fn stderr_of(args: &[&str]) -> (String, String, Option<i32>) {
    let tmp = setup(None);
    let out = run(args, tmp.path());
    (text(&out.stderr), text(&out.stdout), out.status.code())
}

/// An option line of the usage text without its "(default: ...)", which names
/// build-specific paths.
fn option_line(l: &str) -> String {
    match l.find(" (default: ") {
        Some(i) => l[..i].to_string(),
        None => l.to_string(),
    }
}

fn check_help(flag: &str) {
    let (v, _, _) = stderr_of(&["-v"]);
    let (h, out, code) = stderr_of(&[flag]);
    assert_eq!(code, Some(0), "{flag}: exit status; stderr:\n{h}");
    assert_eq!(out, "", "{flag}: nothing on stdout");
    // nginx -h prints the version first (help implies -v), as -v would.
    assert!(h.starts_with(&v), "{flag}: should start with the -v output\n-v:\n{v}\n{flag}:\n{h}");
    let nginx = std::fs::read_to_string(data_dir().join("help.stderr")).expect("help.stderr");
    let nginx: Vec<&str> = nginx.lines().skip(1).filter(|l| !l.starts_with("exit=")).collect();
    let ours: Vec<&str> = h[v.len()..].lines().collect();
    assert_eq!(ours.first().copied(), Some("Usage: sluice [-?hvVtTq] [-s signal] [-p prefix]"), "{flag}:\n{h}");
    assert_eq!(ours.get(1).map(|l| l.trim()), Some("[-e filename] [-c filename] [-g directives]"), "{flag}:\n{h}");
    let want: Vec<String> = nginx.iter().skip(2).map(|l| option_line(l)).collect();
    let got: Vec<String> = ours.iter().skip(2).map(|l| option_line(l)).collect();
    assert_eq!(got, want, "{flag}: the lines after Usage (blank, Options:, option lines, blank)");
}

#[test]
fn help_h() {
    check_help("-h");
}

#[test]
fn help_question_mark() {
    check_help("-?");
}

fn check_version(e: &str, out: &str, code: Option<i32>) {
    assert_eq!(code, Some(0), "stderr:\n{e}");
    assert_eq!(out, "", "nothing on stdout");
    assert!(e.lines().any(|l| l == "nginx version: nginx/1.22.1"), "needs `nginx version: nginx/1.22.1`:\n{e}");
    assert!(e.lines().any(|l| l.starts_with("sluice version: sluice/")), "needs `sluice version: sluice/...`:\n{e}");
}

#[test]
fn version_v() {
    let (e, out, code) = stderr_of(&["-v"]);
    check_version(&e, &out, code);
    assert_eq!(e.lines().count(), 2, "-v prints the two version lines only:\n{e}");
}

#[test]
fn version_full_big_v() {
    let (e, out, code) = stderr_of(&["-V"]);
    check_version(&e, &out, code);
    let (v, _, _) = stderr_of(&["-v"]);
    assert!(e.starts_with(&v), "-V starts with the -v lines:\n{e}");
    assert!(
        e.lines().any(|l| l.starts_with("configure arguments: --with-stream")),
        "needs `configure arguments: --with-stream ...`:\n{e}"
    );
    // nginx's test suite reads "http" from here and skips stream_map.t without it.
    assert!(!e.split_whitespace().any(|w| w == "--without-http"), "-V says --without-http:\n{e}");
    assert!(e.contains("--with-stream_ssl_preread_module"), "-V lists the optional stream modules:\n{e}");
}

/// `-hV`: the usage comes before the build lines, as nginx's ngx_show_version_info
/// prints them (side by side with nginx 1.22.1).
#[test]
fn help_with_build_lines() {
    let (e, _, code) = stderr_of(&["-hV"]);
    assert_eq!(code, Some(0));
    let usage = e.find("Usage: ").expect("usage");
    let built = e.find("built with ").expect("built with");
    assert!(usage < built && e.trim_end().lines().last().unwrap_or("").starts_with("configure arguments: "), "{e}");
}

// ---- -t / -T / -q ------------------------------------------------------------------

#[test]
fn test_ok() {
    case("test-ok", Some("valid"), &["-t"], true, &[]);
}

/// A relative -p stays relative in the messages, as nginx's (`nginx -t -p . -c x.conf` says
/// "./x.conf"; seen by hand), and an empty one means the current directory.
#[test]
fn relative_prefix_stays_relative() {
    let tmp = TempDir::new("cli-relprefix");
    std::fs::write(tmp.join("x.conf"), "events {}\nstream { server { listen 127.0.0.1:1; return x; } }\n")
        .expect("write");
    for (p, shown) in [(".", "./x.conf"), ("", "x.conf")] {
        let out = run(&["-t", "-p", p, "-c", "x.conf"], tmp.path());
        assert_eq!(out.status.code(), Some(0), "-p {p:?}");
        assert_eq!(
            text(&out.stderr),
            format!("sluice: the configuration file {shown} syntax is ok\nsluice: configuration file {shown} test is successful\n"),
            "-p {p:?}"
        );
    }
}

// The recorder's exact command line, load_module included: sluice accepts and ignores it.
#[test]
fn test_ok_with_load_module_in_g() {
    case("test-ok", Some("valid"), &["-t"], true, &["-g", LOAD_MODULE]);
}

#[test]
fn test_quiet() {
    case("test-quiet", Some("valid"), &["-t", "-q"], true, &[]);
}

// nginx groups single-letter options: -tq is -t -q.
#[test]
fn test_quiet_grouped() {
    case("test-quiet", Some("valid"), &["-tq"], true, &[]);
}

#[test]
fn test_dump() {
    case("test-dump", Some("valid"), &["-T"], true, &[]);
}

#[test]
fn test_dump_include_twice() {
    case("test-dump-include-twice", Some("include-twice"), &["-T"], true, &[]);
}

#[test]
fn test_dump_quiet() {
    case("test-dump-quiet", Some("valid"), &["-T", "-q"], true, &[]);
}

#[test]
fn test_quiet_error() {
    case("test-quiet-error", Some("invalid"), &["-t", "-q"], true, &[]);
}

#[test]
fn test_dump_error() {
    case("test-dump-error", Some("invalid"), &["-T"], true, &[]);
}

#[test]
fn test_missing_conf() {
    case(
        "test-missing-conf",
        None,
        &["-t", "-p", "@DIR@", "-c", "@DIR@/missing.conf", "-e", "@DIR@/error.log"],
        false,
        &[],
    );
}

// ---- -g ----------------------------------------------------------------------------

#[test]
fn g_missing_semicolon() {
    case("g-missing-semicolon", Some("valid"), &["-t"], true, &["-g", "daemon off"]);
}

#[test]
fn g_block() {
    case("g-block", Some("valid"), &["-t"], true, &["-g", "events {}"]);
}

#[test]
fn g_unknown() {
    case("g-unknown", Some("valid"), &["-t"], true, &["-g", "frobnicate on;"]);
}

// As recorded, after a load_module in the same -g.
#[test]
fn g_unknown_after_load_module() {
    case("g-unknown", Some("valid"), &["-t"], true, &["-g", &format!("{LOAD_MODULE} frobnicate on;")]);
}

#[test]
fn g_duplicate() {
    case("g-duplicate", Some("g-dup"), &["-t"], true, &["-g", "daemon off;"]);
}

// ---- option errors -----------------------------------------------------------------

#[test]
fn opt_invalid() {
    case("opt-invalid", None, &["-Z"], false, &[]);
}

#[test]
fn opt_p_missing_arg() {
    case("opt-p-missing-arg", None, &["-p"], false, &[]);
}

#[test]
fn opt_c_missing_arg() {
    case("opt-c-missing-arg", None, &["-t", "-c"], false, &[]);
}

#[test]
fn opt_e_missing_arg() {
    case("opt-e-missing-arg", None, &["-e"], false, &[]);
}

#[test]
fn opt_g_missing_arg() {
    case("opt-g-missing-arg", None, &["-g"], false, &[]);
}

#[test]
fn opt_s_missing_arg() {
    case("opt-s-missing-arg", None, &["-s"], false, &[]);
}

#[test]
fn opt_bad_signal() {
    case("opt-bad-signal", None, &["-s", "foo"], false, &[]);
}

#[test]
fn opt_not_dash() {
    case("opt-not-dash", None, &["foo"], false, &[]);
}

#[test]
fn opt_grouped_invalid() {
    case("opt-grouped-invalid", None, &["-vZ"], false, &[]);
}

// ---- -s ----------------------------------------------------------------------------

/// Arguments that are not UTF-8 are read as bytes and quoted as given, byte for byte
/// (an unknown option letter is a single byte, nginx's `%c`), instead of a panic.
#[test]
fn options_that_are_not_utf8() {
    use std::os::unix::ffi::OsStringExt;
    for (name, args) in [
        ("opt-invalid-byte", vec![b"-\xff".to_vec()]),
        ("opt-invalid-utf8", vec!["-é".as_bytes().to_vec()]),
        ("opt-bad-signal-bytes", vec![b"-s".to_vec(), b"\xffx".to_vec()]),
        ("opt-not-dash-bytes", vec![b"\xfe".to_vec()]),
    ] {
        let tmp = setup(None);
        let args: Vec<std::ffi::OsString> = args.into_iter().map(std::ffi::OsString::from_vec).collect();
        let out = run(&args, tmp.path());
        let rec = std::fs::read(data_dir().join(format!("{name}.stderr"))).expect("read .stderr");
        let want = [b"sluice".as_slice(), rec.strip_prefix(b"nginx").expect("nginx: prefix")].concat();
        let (body, code) = want.split_at(want.len() - b"exit=1\n".len());
        assert_eq!(code, b"exit=1\n", "{name}");
        assert_eq!(out.stderr, body, "{name}: {:?} against {:?}", text(&out.stderr), text(body));
        assert_eq!(out.status.code(), Some(1), "{name}");
    }
}

/// A `-g` byte that is not UTF-8 stays that byte: in the message (recorded), and in a
/// file name it names (an `error_log` there creates exactly that file).
#[test]
fn g_bytes_that_are_not_utf8() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let tmp = setup(Some("valid"));
    let dir = dir_of(&tmp);
    let mut args: Vec<std::ffi::OsString> = std_args(&dir).into_iter().map(Into::into).collect();
    args.insert(0, "-t".into());
    args.push("-g".into());
    args.push(std::ffi::OsString::from_vec(b"b\xe9gus;".to_vec()));
    let out = run(&args, tmp.path());
    let rec = std::fs::read(data_dir().join("g-unknown-bytes.stderr")).expect("read .stderr");
    let rec = String::from_utf8_lossy(&rec).replace("nginx: ", "sluice: ").replace("%%PREFIX%%", &dir);
    let (body, code) = rec.split_at(rec.len() - b"exit=1\n".len());
    assert_eq!(code, "exit=1\n");
    let needle = b"\"b\xe9gus\"";
    assert!(out.stderr.windows(needle.len()).any(|w| w == needle), "{:?}", text(&out.stderr));
    assert_eq!(text(&out.stderr), body);
    assert_eq!(out.status.code(), Some(1));
    let log = [tmp.path().as_os_str().as_bytes(), b"/\xe9.log"].concat();
    args.pop();
    args.push(std::ffi::OsString::from_vec([b"error_log ".as_slice(), &log, b";"].concat()));
    let out = run(&args, tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::path::Path::new(std::ffi::OsStr::from_bytes(&log)).exists(), "no file named with the byte 0xE9");
}

/// `-T` into a pipe whose reader is gone ends by SIGPIPE, as nginx's does (it dumps
/// before handling any signal; checked by hand), after the same messages.
#[test]
fn dump_into_a_closed_pipe_ends_by_sigpipe() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let tmp = setup(Some("valid"));
    let dir = dir_of(&tmp);
    let mut fds = [0; 2];
    // SAFETY: a new pipe; its read end is closed at once, its write end handed over.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let write_end = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) };
    let out = std::process::Command::new(crate::common::bin())
        .arg("-T")
        .args(std_args(&dir))
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?} {}", out.status, text(&out.stderr));
    assert!(text(&out.stderr).ends_with(" test is successful\n"), "{}", text(&out.stderr));
}

/// A configuration read from a pipe is empty: nginx reads a file up to the size fstat()
/// gives it, 0 for a pipe (`generate | nginx -t -c /dev/stdin`; checked by hand with
/// nginx 1.22.1, which says exactly this).
#[test]
fn conf_from_a_pipe_is_empty() {
    let tmp = setup(Some("valid"));
    let conf = std::fs::read(tmp.join("nginx.conf")).expect("nginx.conf");
    let mut child = std::process::Command::new(crate::common::bin())
        .args(["-t", "-p", &format!("{}/", dir_of(&tmp)), "-c", "/dev/stdin"])
        .current_dir(tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(&conf);
    }
    let out = child.wait_with_output().expect("wait");
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert_eq!(lines[0], "sluice: the configuration file /dev/stdin syntax is ok");
    assert!(lines[1].ends_with(": no \"events\" section in configuration") && lines[1].contains(" [emerg] "), "{err}");
    assert_eq!(lines[2], "sluice: configuration file /dev/stdin test failed");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn signal_missing_pid() {
    case("signal-missing-pid", Some("signal"), &["-s", "stop"], true, &[]);
}

// nginx prints the same for every signal name when the pid file is missing (checked by hand).
#[test]
fn signal_missing_pid_other_signals() {
    for sig in ["quit", "reopen", "reload"] {
        case("signal-missing-pid", Some("signal"), &["-s", sig], true, &[]);
    }
}

/// `-s` logs as nginx's ngx_signal_process: "signal process started" (notice), then the
/// failure, both in the `-e` log (the failure also on stderr, as checked above).
#[test]
fn signal_lines_in_the_log() {
    let tmp = setup(Some("signal"));
    let dir = dir_of(&tmp);
    let mut args = vec!["-s".to_string(), "stop".into()];
    args.extend(std_args(&dir));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(tmp.join("error.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().map(|l| l.get(20..).unwrap_or("")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].starts_with("[notice] ") && lines[0].ends_with(": signal process started"), "{log}");
    assert!(lines[1].starts_with("[error] ") && lines[1].contains(": open() \""), "{log}");
}

#[test]
fn signal_bad_pid() {
    case("signal-bad-pid", Some("signal-bad-pid"), &["-s", "stop"], true, &[]);
}

/// Whether `pid` has exited (gone, or a zombie not yet reaped by the harness).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')).unwrap_or(true),
    }
}

/// What `-s` prints on stderr without `-e`: its notice, as a full log line (Debian's
/// nginx 1.22.1 logs to stderr until the configuration is read, and `-s` never opens
/// the configuration's error logs; seen by hand).
fn assert_signal_started(stderr: &[u8], sig: &str) {
    let err = text(stderr);
    assert_eq!(console(stderr), "[notice] signal process started\n", "-s {sig}: stderr {err:?}");
    assert!(err.get(..20).is_some_and(|t| t.len() == 20 && t.as_bytes()[4] == b'/'), "-s {sig}: stderr {err:?}");
}

/// Start a sluice, send it `-s SIG` with the same -p/-c, and check that `-s` printed
/// only its notice and exited 0, and that the server exited 0 and removed its pid file.
fn signal_running(sig: &str) {
    let port = free_port();
    let mut s =
        Sluice::start(&format!("events {{}}\nstream {{ server {{ listen 127.0.0.1:{port}; return \"hi\\n\"; }} }}\n"));
    assert_eq!(exchange(port, b""), b"hi\n");
    let pid = s.pid();
    let prefix = s.dir.prefix();
    let out = run(&["-s", sig, "-p", &prefix, "-c", "sluice.conf"], s.dir.path());
    assert_signal_started(&out.stderr, sig);
    assert_eq!(text(&out.stdout), "", "-s {sig}: stdout");
    assert_eq!(out.status.code(), Some(0), "-s {sig}: exit status");
    assert!(
        wait_for(Duration::from_secs(10), || exited(pid)),
        "sluice still running after -s {sig}:\n{}",
        s.error_log()
    );
    assert!(!s.dir.join("sluice.pid").exists(), "pid file left behind after -s {sig}");
    assert_eq!(s.stop(), Some(0), "exit status after -s {sig}:\n{}", s.error_log());
    assert!(!s.error_log().contains("[alert]"), "{}", s.error_log());
}

#[test]
fn signal_stop_running() {
    signal_running("stop");
}

#[test]
fn signal_quit_running() {
    signal_running("quit");
}

// reopen: the server keeps running and serving.
#[test]
fn signal_reopen_running() {
    let port = free_port();
    let mut s =
        Sluice::start(&format!("events {{}}\nstream {{ server {{ listen 127.0.0.1:{port}; return \"hi\\n\"; }} }}\n"));
    let prefix = s.dir.prefix();
    let out = run(&["-s", "reopen", "-p", &prefix, "-c", "sluice.conf"], s.dir.path());
    assert_eq!(out.status.code(), Some(0), "-s reopen");
    assert_signal_started(&out.stderr, "reopen");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!exited(s.pid()), "sluice exited on -s reopen:\n{}", s.error_log());
    assert_eq!(exchange(port, b""), b"hi\n");
    assert_eq!(s.stop(), Some(0));
}

/// More `worker_connections` than descriptors a worker may open: nginx's
/// `ngx_event_module_init` warns in the cycle's error log (if its level takes warnings)
/// after "syntax is ok", and at every start and reload after "using the epoll event
/// method" (with nginx 1.22.1: `-t` and a start with `error_log stderr notice`).
#[test]
fn worker_connections_beyond_the_nofile_limit_warn() {
    let tmp = TempDir::new("nofile-warn");
    let port = free_port();
    let conf = format!(
        "error_log stderr notice;\nworker_rlimit_nofile 5000000;\nevents {{ worker_connections 10000000; }}\n\
         stream {{ server {{ listen 127.0.0.1:{port}; return x; }} }}\n"
    );
    std::fs::write(tmp.join("sluice.conf"), conf).expect("conf");
    let prefix = tmp.prefix();
    let out = run(&["-t", "-p", &prefix, "-c", "sluice.conf"], tmp.path());
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let at = |p: &str| lines.iter().position(|l| l.contains(p));
    let warn = "[warn] ";
    let w = at("10000000 worker_connections exceed open file resource limit: 5000000");
    assert!(w.is_some_and(|i| lines[i].contains(warn)), "{err}");
    assert!(at("syntax is ok") < w && w < at("test is successful"), "{err}");
    assert_eq!(lines.iter().filter(|l| l.contains("exceed open file")).count(), 1, "not echoed twice: {err}");

    // With the log at its default level (error) nothing is said.
    let quiet = format!(
        "worker_rlimit_nofile 5000000;\nevents {{ worker_connections 10000000; }}\n\
         stream {{ server {{ listen 127.0.0.1:{port}; return x; }} }}\n"
    );
    std::fs::write(tmp.join("quiet.conf"), quiet).expect("conf");
    let out = run(&["-t", "-p", &prefix, "-c", "quiet.conf", "-e", "e.log"], tmp.path());
    assert!(!text(&out.stderr).contains("exceed open file"), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
}

/// Command-line combinations as nginx 1.22.1 handles them (side by side): `-v` with
/// `-t` shows the version and still tests; `-t` with `-s` tests only (no signal, no pid
/// file); an `-e` that cannot be opened leaves the log on stderr in the log's own
/// format; `-e ""` is stderr; a signaller never opens the configuration's files, so an
/// unopenable `-e` does not stop `-s`; the pid file is read as nginx reads it; a
/// module loaded twice is refused.
#[test]
fn command_line_combinations_as_nginx() {
    let tmp = TempDir::new("cli-combos");
    let dir = dir_of(&tmp);
    let port = free_port();
    let conf = |extra: &str| {
        format!("{extra}pid {dir}/x.pid;\nevents {{}}\nstream {{ server {{ listen 127.0.0.1:{port}; return x; }} }}\n")
    };
    std::fs::write(tmp.join("good.conf"), conf("")).expect("conf");
    std::fs::write(tmp.join("bad.conf"), conf("frob;\n")).expect("conf");
    let args = |c: &str, more: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = more.iter().map(|s| s.to_string()).collect();
        v.extend(["-p".to_string(), format!("{dir}/"), "-c".to_string(), format!("{dir}/{c}")]);
        v
    };

    // -v -t: the version, then the test (which fails here).
    let out = sluice(&args("bad.conf", &["-v", "-t", "-e", "stderr"]), &tmp);
    let e = text(&out.stderr);
    assert!(e.starts_with("nginx version: nginx/"), "{e}");
    assert!(e.contains("unknown directive \"frob\""), "{e}");
    assert_eq!(out.status.code(), Some(1), "{e}");

    // -t -s stop: a test, no signal, no pid file made.
    let out = sluice(&args("good.conf", &["-t", "-s", "stop", "-e", "stderr"]), &tmp);
    let e = text(&out.stderr);
    assert!(e.contains("test is successful") && !e.contains("signal process"), "{e}");
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(!tmp.join("x.pid").exists(), "-t -s made the pid file");

    // An -e that cannot be opened: the alert, then log lines on stderr.
    let out = sluice(&args("bad.conf", &["-t", "-e", "/nonexistent/x/e.log"]), &tmp);
    let e = text(&out.stderr);
    let lines: Vec<&str> = e.lines().collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("sluice: [alert] could not open error log file")), "{e}");
    let emerg = lines.iter().find(|l| l.contains("unknown directive")).copied().unwrap_or("");
    assert!(emerg.contains(" [emerg] ") && emerg.starts_with("20") && !emerg.starts_with("sluice:"), "{e}");
    assert_eq!(out.status.code(), Some(1));

    // -e "" is stderr.
    let out = sluice(&args("good.conf", &["-t", "-e", ""]), &tmp);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // -s with an -e that cannot be opened still signals (a process of our own).
    let mut victim = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
    std::fs::write(tmp.join("x.pid"), format!("{}\n", victim.id())).expect("pid");
    let out = sluice(&args("good.conf", &["-s", "stop", "-e", "/nonexistent/x/e.log"]), &tmp);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let st = (0..200).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        victim.try_wait().ok().flatten()
    });
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(st.is_some(), "the signal was not sent: {}", text(&out.stderr));

    // The pid file as nginx reads it: digits only; a directory cannot be read.
    std::fs::write(tmp.join("x.pid"), "+123\n").expect("pid");
    let out = sluice(&args("good.conf", &["-s", "stop", "-e", "stderr"]), &tmp);
    assert!(text(&out.stderr).contains("invalid PID number \"+123\""), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(1));
    // Bytes that are not UTF-8 are quoted as they are (nginx's "%*s").
    std::fs::write(tmp.join("x.pid"), b"\xe9\xff12\n").expect("pid");
    let out = sluice(&args("good.conf", &["-s", "stop", "-e", "stderr"]), &tmp);
    let raw = b"invalid PID number \"\xe9\xff12\"";
    assert!(out.stderr.windows(raw.len()).any(|w| w == raw), "{}", text(&out.stderr));
    std::fs::remove_file(tmp.join("x.pid")).expect("rm");
    std::fs::create_dir(tmp.join("x.pid")).expect("mkdir");
    let out = sluice(&args("good.conf", &["-s", "stop", "-e", "stderr"]), &tmp);
    let e = text(&out.stderr);
    assert!(e.contains("[crit]") && e.contains("pread() \"") && e.contains("(21: Is a directory)"), "{e}");

    // The stream module loaded twice.
    std::fs::write(tmp.join("twice.conf"), conf(&format!("{LOAD_MODULE}\n{LOAD_MODULE}\n"))).expect("conf");
    let out = sluice(&args("twice.conf", &["-t", "-e", "stderr"]), &tmp);
    let e = text(&out.stderr);
    assert!(e.contains("module \"ngx_stream_module\" is already loaded in ") && e.contains("twice.conf:2"), "{e}");
}

/// `NGINX` (the binary-upgrade hand-over) is read before the configuration, into the
/// startup log, as nginx 1.22.1 did under -t side by side: its notice, an emerg for a
/// malformed list (two when a number is bad: nginx's loop and its check for an
/// unterminated number both report it), a crit for a descriptor that is no socket, and
/// once the configuration is read the emerg of closing it.
#[test]
fn inherited_sockets_variable_read_as_nginx() {
    let tmp = setup(Some("valid"));
    let dir = dir_of(&tmp);
    let out = std::process::Command::new(crate::common::bin())
        .args(["-t", "-p", &dir, "-c", &format!("{dir}/nginx.conf")])
        .env("NGINX", "987;x;")
        .output()
        .expect("run sluice");
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().map(|l| l.split_once("]").map_or(l, |(_, r)| r)).collect();
    let want = [
        " using inherited sockets from \"987;x;\"",
        " invalid socket number \"x;\" in NGINX environment variable, ignoring the rest of the variable",
        " invalid socket number \"x;\" in NGINX environment variable, ignoring",
        " getsockname() of the inherited socket #987 failed (9: Bad file descriptor)",
    ];
    let got: Vec<String> =
        lines.iter().take(4).map(|l| l.split_once(": ").map_or(*l, |(_, r)| r).to_string()).collect();
    let want: Vec<String> = want.iter().map(|w| w.trim_start().to_string()).collect();
    assert_eq!(got, want, "{err}");
    assert!(err.contains("[crit]") && err.matches("[emerg]").count() == 3, "{err}");
    let close = ": close() socket listening socket on  failed (9: Bad file descriptor)\n";
    let (ok, done) = (err.find("syntax is ok"), err.find("test is successful"));
    assert!(err.find(close).is_some_and(|at| ok < Some(at) && Some(at) < done), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// File names keep bytes that are not UTF-8 (a Latin-1 "é", 0xe9), as nginx opens the
/// bytes it was given: the prefix (`-p`), an `include`, the error and access logs, the
/// pid file, a certificate and its key. sluice turned them into other names (U+FFFD, or the UTF-8 of its stand-in
/// characters), so the include failed and the logs went elsewhere.
#[test]
fn file_names_keep_bytes_that_are_not_utf8() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let tmp = TempDir::new("latin1");
    let name = |base: &Path, tail: &[u8]| -> PathBuf {
        let mut b = base.as_os_str().as_bytes().to_vec();
        b.extend_from_slice(tail);
        PathBuf::from(std::ffi::OsString::from_vec(b))
    };
    let prefix = name(tmp.path(), b"/pr\xe9/");
    std::fs::create_dir(&prefix).expect("mkdir");
    let p = free_port();
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/conf_errors/ssl.files");
    std::fs::copy(files.join("cert.pem"), name(&prefix, b"c\xe9.pem")).expect("copy cert");
    std::fs::copy(files.join("key.pem"), name(&prefix, b"c\xe9.key")).expect("copy key");
    let inc = format!(
        "stream {{ log_format f x; server {{ listen 127.0.0.1:{p}; return ok; access_log acc\u{1}.log f; }}\n\
         server {{ listen 127.0.0.1:{} ssl; ssl_certificate c\u{1}.pem; ssl_certificate_key c\u{1}.key; return ok; }}\n\
         include g\u{1}*.conf; }}\n",
        free_port()
    );
    let latin1 = |s: String| -> Vec<u8> { s.bytes().map(|c| if c == 1 { 0xe9 } else { c }).collect() };
    std::fs::write(name(&prefix, b"inc\xe9.conf"), latin1(inc)).expect("write include");
    // A glob include, and a geo include within it.
    let q = free_port();
    let globbed = format!("geo $g {{ include geo\u{1}.conf; }}\nserver {{ listen 127.0.0.1:{q}; return $g; }}\n");
    std::fs::write(name(&prefix, b"g\xe9a.conf"), latin1(globbed)).expect("write globbed include");
    std::fs::write(name(&prefix, b"geo\xe9.conf"), b"default geo-ok;\n").expect("write geo include");
    let main = b"error_log err\xe9.log info;\ndaemon off;\nmaster_process off;\npid p\xe9.pid;\nevents {}\ninclude inc\xe9.conf;\n";
    std::fs::write(prefix.join("n.conf"), main).expect("write conf");
    let args = |t: bool| {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        if t {
            a.push("-t".into());
        }
        a.extend(["-p".into(), prefix.clone().into_os_string(), "-c".into(), "n.conf".into()]);
        a
    };
    let out = run(&args(true), tmp.path());
    let mut ok = b"sluice: the configuration file ".to_vec();
    ok.extend_from_slice(prefix.as_os_str().as_bytes());
    ok.extend_from_slice(b"n.conf syntax is ok\n");
    assert_eq!(out.status.code(), Some(0), "{}", console(&out.stderr));
    assert!(out.stderr.starts_with(&ok), "{:?}", String::from_utf8_lossy(&out.stderr));
    let child = std::process::Command::new(crate::common::bin())
        .args(args(false))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Ended however the test ends.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Guard(child);
    let served = wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
    let answer = if served { exchange(p, b"") } else { Vec::new() };
    let geo = if served { exchange(q, b"") } else { Vec::new() };
    let acc = name(&prefix, b"acc\xe9.log");
    let logged = wait_for(Duration::from_secs(10), || std::fs::read(&acc).is_ok_and(|b| b.ends_with(b"x\n")));
    let (err, pid) = (name(&prefix, b"err\xe9.log").exists(), name(&prefix, b"p\xe9.pid").exists());
    drop(child);
    assert_eq!(answer, b"ok");
    assert_eq!(geo, b"geo-ok");
    assert!(logged && err && pid, "access log {logged}, error log {err}, pid file {pid}");
}

/// CA files whose names are not UTF-8 load as nginx loads them (sluice aborted on a
/// panic in the openssl crate's `set_ca_file`), and a missing one is named with its own
/// bytes in OpenSSL's part of the message too (it had U+FFFD there).
#[test]
fn ca_file_names_keep_bytes_that_are_not_utf8() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let tmp = TempDir::new("latin1-ca");
    let dir = tmp.path();
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/conf_errors/ssl.files");
    let ca = PathBuf::from(std::ffi::OsString::from_vec([dir.as_os_str().as_bytes(), b"/ca\xe9.pem"].concat()));
    std::fs::copy(files.join("cert.pem"), &ca).expect("copy ca");
    let conf = |ca: &[u8]| -> Vec<u8> {
        let head = format!(
            "events {{}}\nstream {{\nssl_certificate {0}/cert.pem; ssl_certificate_key {0}/key.pem;\n",
            files.display()
        );
        let (a, b) = (free_port(), free_port());
        [
            head.as_bytes(),
            format!("server {{ listen 127.0.0.1:{a} ssl; return x; ssl_verify_client optional; ssl_client_certificate ").as_bytes(),
            ca,
            b"; ssl_trusted_certificate ",
            ca,
            format!("; }}\nserver {{ listen 127.0.0.1:{b}; proxy_pass 127.0.0.1:{a}; proxy_ssl on; proxy_ssl_verify on; proxy_ssl_trusted_certificate ").as_bytes(),
            ca,
            b"; }\n}\n",
        ]
        .concat()
    };
    let check = |ca: &[u8]| {
        std::fs::write(dir.join("n.conf"), conf(ca)).expect("write conf");
        let a: Vec<std::ffi::OsString> =
            vec!["-t".into(), "-p".into(), dir.as_os_str().into(), "-c".into(), "n.conf".into()];
        run(&a, dir)
    };
    let out = check(b"ca\xe9.pem");
    assert_eq!(out.status.code(), Some(0), "{}", console(&out.stderr));
    let out = check(b"no\xe9.pem");
    assert_eq!(out.status.code(), Some(1), "{}", console(&out.stderr));
    let missing = [dir.as_os_str().as_bytes(), b"/no\xe9.pem"].concat();
    let want = [
        b": SSL_CTX_load_verify_locations(\"".as_slice(),
        &missing,
        b"\") failed (SSL: error:80000002:system library::No such file or directory:calling fopen(",
        &missing,
        b", r)",
    ]
    .concat();
    assert!(out.stderr.windows(want.len()).any(|w| w == want), "{}", out.stderr.escape_ascii());
}

/// A configuration file right in "/" (`-c /x.conf`): nginx's ngx_process_options finds
/// no directory in it (it looks for a '/' after the first byte), so relative `include`s
/// and certificates are read from the prefix, not from "/" (side by side with nginx
/// 1.22.1: the included file's error names PREFIX/inc.conf). Needs "/" writable, as CI's
/// root has it.
#[test]
fn a_configuration_in_the_root_directory_includes_from_the_prefix() {
    let tmp = TempDir::new("root-conf");
    let id = format!("sluice-t-root-{}", std::process::id());
    let conf = std::path::PathBuf::from(format!("/{id}.conf"));
    std::fs::write(&conf, format!("events {{}}\nstream {{ include {id}-inc.conf; }}\n")).expect("write /x.conf");
    std::fs::write(tmp.join(&format!("{id}-inc.conf")), "bogus_in_prefix;\n").expect("write inc");
    let out = run(&["-t", "-p", &tmp.prefix(), "-c", &conf.display().to_string()], tmp.path());
    let _ = std::fs::remove_file(&conf);
    let err = text(&out.stderr);
    let want = format!("unknown directive \"bogus_in_prefix\" in {}{id}-inc.conf:1\n", tmp.prefix());
    assert!(err.contains(&want), "want {want:?} in\n{err}");
    assert_eq!(out.status.code(), Some(1));
}
