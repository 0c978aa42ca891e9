//! The `sluice` command: nginx's command line (`-h -v -V -t -T -q -s -p -c -e -g`),
//! then one process that binds the listeners, writes the pid file and runs the worker.

use std::io::Write;
use std::rc::Rc;

use sluice::core::addr::Addr;
use sluice::core::conf::{os_err, Level};
use sluice::core::conn::Listener;
use sluice::core::log::{self, ErrorLog, PROGRAM};
use sluice::core::{conn, process, time};
use sluice::stream::conf::{load, LoadOptions};
use sluice::stream::master::Master;
use sluice::stream::worker::{Role, Worker};

/// The stream modules nginx builds by default, and those it builds on request: `-V`
/// says `--without-` for defaults sluice lacks and `--with-` for optional ones it has.
const NGINX_DEFAULT_MODULES: &[&str] = &[
    "stream_access",
    "stream_geo",
    "stream_limit_conn",
    "stream_map",
    "stream_pass",
    "stream_return",
    "stream_set",
    "stream_split_clients",
    "stream_upstream_hash",
    "stream_upstream_least_conn",
    "stream_upstream_random",
    "stream_upstream_zone",
];
const NGINX_OPTIONAL_MODULES: &[&str] = &["stream_realip", "stream_ssl", "stream_ssl_preread", "stream_geoip"];

#[derive(Default)]
struct Args {
    help: bool,
    version: bool,
    configure: bool,
    test: bool,
    dump: bool,
    quiet: bool,
    signal: Option<String>,
    prefix: Option<String>,
    conf: Option<String>,
    error_log: Option<String>,
    globals: Option<String>,
}

/// `ngx_get_options`: letters may be grouped (`-tq`); a value follows its letter or is
/// the next argument. Arguments are bytes, as nginx reads them: a message quotes the
/// bytes given (an unknown option letter is one byte, nginx's `%c`), and a value that is
/// not UTF-8 is taken lossily rather than refused.
fn parse_args(argv: &[Vec<u8>]) -> Result<Args, Vec<u8>> {
    let quoted = |before: &str, what: &[u8]| [format!("{}\"", before).as_bytes(), what, b"\""].concat();
    let mut a = Args::default();
    let mut i = 1;
    while i < argv.len() {
        let arg = &argv[i];
        let Some(flags) = arg.strip_prefix(b"-") else {
            return Err(quoted("invalid option: ", arg));
        };
        let mut j = 0;
        while j < flags.len() {
            let c = flags[j];
            j += 1;
            let mut value = |what: &str| -> Result<Vec<u8>, Vec<u8>> {
                let rest = &flags[j..];
                j = flags.len();
                if !rest.is_empty() {
                    return Ok(rest.to_vec());
                }
                i += 1;
                argv.get(i).cloned().ok_or_else(|| format!("option \"-{}\" requires {}", c as char, what).into_bytes())
            };
            // Bytes that are not UTF-8 (a Latin-1 prefix) are kept, as a configuration's.
            let text = |v: Vec<u8>| sluice::core::conf::parser::bytes_to_text(&v);
            match c {
                b'?' | b'h' => a.help = true,
                b'v' => a.version = true,
                b'V' => {
                    a.version = true;
                    a.configure = true
                }
                b't' => a.test = true,
                b'T' => {
                    a.test = true;
                    a.dump = true
                }
                b'q' => a.quiet = true,
                b'p' => a.prefix = Some(text(value("directory name")?)),
                b'c' => a.conf = Some(text(value("file name")?)),
                b'e' => a.error_log = Some(text(value("file name")?)),
                b'g' => a.globals = Some(text(value("parameter")?)),
                b's' => {
                    let s = value("parameter")?;
                    if !matches!(&s[..], b"stop" | b"quit" | b"reopen" | b"reload") {
                        return Err(quoted("invalid option: ", &[b"-s ", &s[..]].concat()));
                    }
                    a.signal = Some(text(s));
                }
                _ => return Err(quoted("invalid option: ", &[c])),
            }
        }
        i += 1;
    }
    Ok(a)
}

fn cwd_prefix() -> String {
    let d = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|_| ".".into());
    if d.ends_with('/') {
        d
    } else {
        d + "/"
    }
}

fn usage() -> String {
    format!(
        "Usage: {p} [-?hvVtTq] [-s signal] [-p prefix]\n\
         \x20            [-e filename] [-c filename] [-g directives]\n\n\
         Options:\n\
         \x20 -?,-h         : this help\n\
         \x20 -v            : show version and exit\n\
         \x20 -V            : show version and configure options then exit\n\
         \x20 -t            : test configuration and exit\n\
         \x20 -T            : test configuration, dump it and exit\n\
         \x20 -q            : suppress non-error messages during configuration testing\n\
         \x20 -s signal     : send signal to a master process: stop, quit, reopen, reload\n\
         \x20 -p prefix     : set prefix path (default: current directory)\n\
         \x20 -e filename   : set error log file (default: stderr)\n\
         \x20 -c filename   : set configuration file (default: conf/sluice.conf)\n\
         \x20 -g directives : set global directives out of configuration file\n\n",
        p = PROGRAM
    )
}

fn configure_arguments() -> String {
    let have = sluice::stream::MODULE_NAMES;
    // The stream modules sluice has, as nginx's configure arguments (nginx's test suite
    // reads them). No "--without-http": the suite gates some stream-only files (e.g.
    // stream_map.t) on "http"; files that really need an http{} backend then fail at
    // "unknown directive", which is the truth about sluice.
    let mut s = String::from("configure arguments: --with-stream");
    for m in NGINX_OPTIONAL_MODULES {
        if have.contains(m) {
            s.push_str(&format!(" --with-{}_module", m));
        }
    }
    for m in NGINX_DEFAULT_MODULES {
        if !have.contains(m) {
            s.push_str(&format!(" --without-{}_module", m));
        }
    }
    s
}

/// glibc calls the functions of `.init_array` with main's arguments: the process title
/// is written over their memory.
#[used]
#[link_section = ".init_array"]
static CAPTURE_ARGV: extern "C" fn(libc::c_int, *mut *mut libc::c_char, *mut *mut libc::c_char) =
    sluice::core::proctitle::capture;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    process::record_parent();
    time::update();
    log::install_backend();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    sluice::core::proctitle::init();
    let bytes: Vec<Vec<u8>> = argv.iter().map(|a| a.as_encoded_bytes().to_vec()).collect();
    let args = match parse_args(&bytes) {
        Ok(a) => a,
        Err(e) => {
            log::stderr_bytes(&e);
            return 1;
        }
    };
    let mut err = std::io::stderr();
    // nginx's -h shows the version too; tools read `nginx version:` from the first line.
    if args.version || args.help {
        let _ = writeln!(err, "nginx version: nginx/{}", sluice::NGINX_VERSION);
        let _ = writeln!(err, "{p} version: {p}/{}", sluice::VERSION, p = PROGRAM);
        // nginx's ngx_show_version_info: the usage, then the build lines.
        if args.help {
            let _ = err.write_all(usage().as_bytes());
        }
        if args.configure {
            // As nginx's -V (nginx's test suite reads these lines for its TLS files).
            let _ = writeln!(err, "built with {}", openssl::version::version());
            let _ = writeln!(err, "TLS SNI support enabled");
            let _ = writeln!(err, "{}", configure_arguments());
        }
    }
    // nginx shows the version, then tests the configuration if asked to.
    if (args.version || args.help) && !args.test {
        return 0;
    }

    // A relative -p stays relative, as nginx keeps it (its messages name "./conf/...");
    // sluice never changes directory, so the paths mean the same throughout.
    let mut prefix = args.prefix.clone().unwrap_or_else(cwd_prefix);
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let full = |p: &str| if p.starts_with('/') { p.to_string() } else { format!("{}{}", prefix, p) };
    let conf_file = full(args.conf.as_deref().unwrap_or("conf/sluice.conf"));
    // An empty name is stderr too (nginx's ngx_log_init).
    let error_log =
        args.error_log.as_deref().map(|e| if e == "stderr" || e.is_empty() { "stderr".to_string() } else { full(e) });
    let opts = LoadOptions {
        prefix: prefix.clone(),
        conf_file: conf_file.clone(),
        error_log: error_log.clone(),
        globals: args.globals.clone().unwrap_or_default(),
        test: args.test,
        signaller: args.signal.is_some(),
    };

    // Until the configuration names its error log, messages go to the `-e` file (full
    // lines) and warnings and worse also to stderr (short lines), as nginx's startup log;
    // without `-e`, to stderr itself, full lines at notice, as Debian's nginx (built with
    // --error-log-path=stderr) does.
    let startup = match &error_log {
        Some(path) => ErrorLog::open(&[(path.clone(), Level::Notice)]).unwrap_or_else(|(p, e)| {
            log::stderr(&format!("[alert] could not open error log file: open() \"{}\" failed {}", p, os_err(&e)));
            // nginx's ngx_log_init then writes its log to stderr.
            ErrorLog::stderr(Level::Notice)
        }),
        None => ErrorLog::stderr(Level::Notice),
    };
    let startup = Rc::new(startup);
    log::set_startup(startup.clone());
    log::set_main(startup);
    let inherited = inherited_sockets();
    let cycle = match load(&opts) {
        Ok(c) => c,
        Err(e) => {
            if args.test && e.after_syntax && !args.quiet {
                log::stderr(&format!("the configuration file {} syntax is ok", conf_file));
            }
            e.log();
            if args.test {
                log::stderr(&format!("configuration file {} test failed", conf_file));
            }
            return 1;
        }
    };

    // nginx's core module checks its settings once the file is read ("syntax is ok"
    // comes first under -t).
    if !args.test {
        if let Some(w) = cycle.core.affinity_warning() {
            log::error(Level::Warn, w, None);
        }
    }

    // `-s` logs into the startup log (stderr, or the `-e` file): nginx's signaller
    // never opens the configuration's error logs.
    // (With -t, nginx tests and signals nothing.)
    if let Some(sig) = args.signal.as_ref().filter(|_| !args.test) {
        // nginx's ngx_signal_process says so first (into the log, like any notice).
        log::error(Level::Notice, "signal process started", None);
        return match process::send_signal(cycle.core.pid.get().as_str(), sig) {
            Ok(()) => 0,
            Err(e) => {
                // "[level] text" goes to the log as nginx's does (and so to stderr too);
                // an option error only to stderr.
                let leveled = e.strip_prefix('[').and_then(|r| r.split_once("] "));
                match leveled.and_then(|(l, text)| Level::from_name(l).map(|l| (l, text))) {
                    Some((level, text)) => log::error(level, text, None),
                    None => log::stderr(&e),
                }
                1
            }
        };
    }

    if args.test {
        if !args.quiet {
            log::stderr(&format!("the configuration file {} syntax is ok", conf_file));
        }
        // Into the startup log still, as nginx's core module checks its settings.
        if let Some(w) = cycle.core.affinity_warning() {
            log::error(Level::Warn, w, None);
        }
    }

    // From here messages go to the configuration's error log (warnings and worse are
    // still echoed to stderr), as nginx's cycle log once ngx_init_cycle has opened it.
    log::set_main(cycle.error_log.clone());
    if args.test {
        // nginx -t binds the listening sockets too (an address in use is no error);
        // with -s its cycle stops before any of that.
        for l in cycle.listening.iter().filter(|_| !opts.signaller) {
            if let Err(e) = sluice::core::conn::test_bind(&l.addr, &l.opts) {
                log::error(Level::Emerg, &format!("bind() to {} failed", l.addr), Some(&e));
                log::stderr(&format!("configuration file {} test failed", conf_file));
                return 1;
            }
        }
        if let Some(w) = cycle.core.nofile_warning().filter(|_| !opts.signaller) {
            log::error(Level::Warn, &w, None);
        }
        close_unused(inherited);
        if !args.quiet {
            log::stderr(&format!("configuration file {} test is successful", conf_file));
        }
        if args.dump {
            // nginx dumps before it handles any signal: a reader gone (`-T | head`) ends
            // it by SIGPIPE, which a `set -o pipefail` script sees.
            // SAFETY: restoring a signal's default disposition.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            let mut out = std::io::stdout().lock();
            // A file included twice is dumped once (nginx keeps its dump by file name).
            let mut seen = std::collections::HashSet::new();
            for f in cycle.files.iter().filter(|f| seen.insert(f.path.clone())) {
                let name = sluice::core::conf::parser::text_to_bytes(&f.path);
                let _ = out.write_all(&[b"# configuration file ", &name[..], b":\n"].concat());
                let _ = out.write_all(&f.text);
                let _ = out.write_all(b"\n");
            }
        }
        return 0;
    }
    serve(cycle, opts, argv, inherited)
}

/// nginx's "close the unnecessary listening sockets" of the old cycle: the inherited
/// descriptors the configuration does not use, under -t too.
fn close_unused(inherited: Vec<Inherited>) {
    for (fd, addr) in inherited {
        // SAFETY: an inherited descriptor this configuration does not use.
        if unsafe { libc::close(fd) } == -1 {
            // nginx names the socket by its address text, empty for one it could not
            // read (a descriptor that was no socket).
            let e = std::io::Error::last_os_error();
            let text = addr.map(|(a, _)| a.to_string()).unwrap_or_default();
            log::error(Level::Emerg, &format!("close() socket listening socket on {} failed", text), Some(&e));
        }
    }
}

/// An inherited descriptor: a socket's address and type, or none (not a socket: nginx
/// keeps it as an ignored listening socket, and closes it once the configuration is read).
type Inherited = (i32, Option<(Addr, bool)>);

/// `ngx_add_inherited_sockets`, before the configuration is read, into the startup log:
/// a binary upgrade hands the listening sockets over in NGINX="fd;fd;". A descriptor
/// that is not a socket is kept aside with nginx's crit line.
fn inherited_sockets() -> Vec<Inherited> {
    use std::os::unix::ffi::OsStrExt;
    let Some(v) = std::env::var_os(process::INHERITED_ENV) else { return Vec::new() };
    let v = v.as_bytes();
    log::error(Level::Notice, &format!("using inherited sockets from \"{}\"", String::from_utf8_lossy(v)), None);
    let (fds, bad) = process::parse_inherited(v);
    for msg in bad {
        log::error(Level::Emerg, &msg, None);
    }
    let mut out = Vec::new();
    for fd in fds {
        let addr = Listener::addr_of(fd);
        if addr.is_none() {
            let e = std::io::Error::last_os_error();
            let msg = format!("getsockname() of the inherited socket #{} failed", fd);
            log::error(Level::Crit, &msg, Some(&e));
        }
        out.push((fd, addr));
    }
    out
}

fn serve(
    cycle: sluice::stream::cycle::Cycle,
    opts: LoadOptions,
    argv: Vec<std::ffi::OsString>,
    mut inherited: Vec<Inherited>,
) -> i32 {
    let cycle = Rc::new(cycle);
    log::set_main(cycle.error_log.clone());
    let mut have = Vec::new();
    for l in &cycle.listening {
        let key = Some((l.addr.clone(), l.opts.udp));
        have.push(inherited.iter().position(|(_, a)| *a == key).and_then(|i| {
            let (fd, (a, udp)) = match inherited.remove(i) {
                (fd, Some(a)) => (fd, a),
                (_, None) => return None,
            };
            if let Addr::Unix(p) = &a {
                process::set_inherited_unix(p);
            }
            process::set_inheritable(fd, false);
            Some(Listener::from_fd(fd, matches!(a, Addr::Unix(_)), udp))
        }));
    }
    let want: Vec<(&Addr, &conn::ListenOpts)> = cycle.listening.iter().map(|l| (&l.addr, &l.opts)).collect();
    let Some(listeners) = conn::open_listeners(&want, have) else { return 1 };
    close_unused(inherited);
    // The cycle's notices come from the process that read the configuration, before it
    // daemonizes (ngx_init_cycle, ngx_os_status).
    log::error(Level::Notice, "using the \"epoll\" event method", None);
    if let Some(w) = cycle.core.nofile_warning() {
        log::error(Level::Warn, &w, None);
    }
    log::error(Level::Notice, &format!("{}/{} (nginx/{})", PROGRAM, sluice::VERSION, sluice::NGINX_VERSION), None);
    if let Some(os) = os_name() {
        log::error(Level::Notice, &format!("OS: {}", os), None);
    }
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        log::error(Level::Notice, &format!("getrlimit(RLIMIT_NOFILE): {}:{}", rl.rlim_cur, rl.rlim_max), None);
    }
    log::set_cycle_started();
    // A binary started by an upgrade is already detached (its parent is the old master):
    // nginx does not daemonize it again.
    let upgraded = std::env::var_os(process::INHERITED_ENV).is_some();
    let pid_file = cycle.core.pid.get();
    let daemonizing = cycle.core.daemon.get() && !upgraded;
    if daemonizing {
        if let Err(e) = process::daemonize(cycle.error_log.writes_stderr(), &pid_file) {
            log::error(Level::Emerg, "daemon() failed", Some(&e));
            return 1;
        }
    }
    process::set_daemonized(cycle.core.daemon.get() || upgraded);
    let signals = match process::Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error(Level::Emerg, "pipe() failed", Some(&e));
            return 1;
        }
    };
    // A daemon's pid file was written by the process that started it (`daemonize`).
    if !daemonizing {
        if let Err(e) = process::write_pid(&pid_file) {
            log::error(Level::Emerg, &format!("open() \"{}\" failed", pid_file), Some(&e));
            return 1;
        }
    }
    sluice::stream::conf::redirect_stderr(&cycle);
    log::end_startup();
    log::set_use_stderr(false);
    if cycle.core.master_process.get() {
        // The master owns the cycle: a reload drops it, and with it the files only it
        // opened (nginx's ngx_init_cycle closes the old cycle's files).
        let mut m = Master::new(opts, cycle, listeners, signals, pid_file, argv);
        return m.run();
    }
    let worker = match Worker::new(Role::Single, cycle.clone(), listeners, signals) {
        Ok(mut w) => {
            w.set_reload_options(opts);
            w.run();
            Some(w)
        }
        Err(e) => {
            log::error(Level::Emerg, "epoll_create() failed", Some(&e));
            None
        }
    };
    // The sessions a fast exit leaves open close after the pid file and the "exit" line
    // go (with the worker, at the end), as nginx's sockets close only at its exit(): a
    // client that sees its connection end finds the process's exit done.
    let code = if worker.is_some() { 0 } else { 1 };
    process::remove_pid(&pid_file);
    log::error(Level::Notice, "exit", None);
    // ngx_master_process_exit (a single process's exit too): the unix sockets' files go
    // after the "exit" line.
    for l in &cycle.listening {
        if let sluice::core::addr::Addr::Unix(p) = &l.addr {
            process::delete_unix_socket(p);
        }
    }
    code
}

/// "Linux 6.1.0-18-amd64": uname's system name and release, as nginx's `ngx_os_status`.
fn os_name() -> Option<String> {
    // SAFETY: uname fills the zeroed struct we pass.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let text = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some(format!("{} {}", text(&u.sysname), text(&u.release)))
}
