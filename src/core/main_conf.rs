//! The main (top-level) and `events {}` directives: nginx's core, errlog and events
//! modules. Stream directives live in `crate::stream`.

use std::time::Duration;

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value::{self, Setting};
use crate::core::conf::{Cmd, ConfError, ConfResult, Level};

/// What the main context configures for the process.
#[derive(Debug, Clone, Default)]
pub struct MainConf {
    pub daemon: Setting<bool>,
    pub master_process: Setting<bool>,
    pub worker_processes: Setting<usize>,
    pub pid: Setting<String>,
    pub user: Setting<(String, Option<String>)>,
    pub worker_rlimit_nofile: Setting<u64>,
    pub worker_shutdown_timeout: Setting<Duration>,
    /// `timer_resolution`: the workers' clock moves, and their timers fire, only on ticks
    /// this far apart (nginx's SIGALRM interval timer); 0, the default, is off.
    pub timer_resolution: Setting<Duration>,
    pub worker_connections: Setting<usize>,
    /// `multi_accept`: accept every pending connection per listener event (on), or one.
    pub multi_accept: Setting<bool>,
    /// `pcre_jit`: regexes are compiled to machine code (see `core::regex::set_jit`).
    pub pcre_jit: Setting<bool>,
    /// `accept_mutex`: the workers take turns to accept (off by default, as since nginx
    /// 1.11.3).
    pub accept_mutex: Setting<bool>,
    /// `accept_mutex_delay`: how long a worker without the accept mutex waits before it
    /// tries again, and how long accepting stops after accept4() runs out of descriptors
    /// (ngx_event_accept).
    pub accept_mutex_delay: Setting<Duration>,
    /// `use METHOD`: only epoll is built in.
    pub event_use: Setting<()>,
    /// A `proxy_bind ... transparent` is configured: workers keep CAP_NET_RAW (nginx's
    /// `ccf->transparent`).
    pub transparent: bool,
    /// `worker_cpu_affinity` was given: whether it says `auto`, and its number of
    /// arguments.
    pub cpu_affinity: Setting<(bool, usize)>,
    /// Its masks as CPU numbers (with `auto`, first every CPU online, then the mask
    /// given, if any).
    pub cpu_masks: Vec<Vec<usize>>,
    /// `worker_priority`: the workers' nice value (0: left alone).
    pub worker_priority: i32,
    /// `worker_rlimit_core`: the workers' core file size limit.
    pub worker_rlimit_core: Setting<u64>,
    /// `working_directory`: where workers chdir to (empty: left alone).
    pub working_directory: String,
    pub env: Vec<String>,
    /// `debug_connection`: clients whose sessions log every line to every error log of
    /// their chain, whatever its level (nginx's NGX_LOG_DEBUG_CONNECTION; sluice has no
    /// debug lines themselves).
    pub debug_connection: Vec<crate::core::cidr::Cidr>,
    /// `error_log` outputs in the main context, paths made absolute.
    pub error_log: Vec<(String, Level)>,
    /// Directives accepted for compatibility that were given (each once, as nginx's
    /// slots), and the `thread_pool` names.
    pub compat_seen: Vec<String>,
    /// Modules `load_module` named (they are built in; a second load is refused).
    pub modules: Vec<String>,
    pub thread_pools: Vec<String>,
}

impl MainConf {
    /// `ngx_core_module_init_conf`'s warning: masks that are neither one nor one per
    /// worker.
    pub fn affinity_warning(&self) -> Option<&'static str> {
        let (auto, n) = self.cpu_affinity.option().copied()?;
        (!auto && n != 1 && n != self.worker_processes.get()).then_some(
            "the number of \"worker_processes\" is not equal to the number of \"worker_cpu_affinity\" masks, \
             using last mask for remaining worker processes",
        )
    }

    /// The CPUs worker number `n` is bound to (`ngx_get_cpu_affinity`): its mask, or the
    /// last; with `auto`, the n-th CPU of the mask, round and round. None: left alone.
    pub fn worker_cpus(&self, n: usize) -> Option<Vec<usize>> {
        let (auto, _) = self.cpu_affinity.option().copied()?;
        let last = self.cpu_masks.last()?;
        if auto {
            return (!last.is_empty()).then(|| vec![last[n % last.len()]]);
        }
        Some(self.cpu_masks.get(n).unwrap_or(last).clone())
    }

    /// `ngx_event_module_init`'s warning, for every cycle (test, start, reload): more
    /// `worker_connections` than descriptors a worker may open.
    pub fn nofile_warning(&self) -> Option<String> {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return None;
        }
        let conns = self.worker_connections.get() as u64;
        let set = self.worker_rlimit_nofile.is_set().then(|| self.worker_rlimit_nofile.get());
        if conns <= rl.rlim_cur || set.is_some_and(|n| conns <= n) {
            return None;
        }
        let limit = set.unwrap_or(rl.rlim_cur);
        Some(format!("{} worker_connections exceed open file resource limit: {}", conns, limit))
    }
}

/// Resolves file names the way nginx does: absolute as is, else under the prefix.
pub trait Paths {
    fn full_name(&self, name: &str) -> String;
}

pub struct CoreDirective {
    pub name: &'static str,
    pub ctx: Ctx,
    pub args: Arity,
    pub set: fn(&mut MainConf, &Cmd, &dyn Paths) -> ConfResult,
}

/// A directive sluice accepts for compatibility: nginx's slot handler, which says
/// "is duplicate" for a second one before it reads the value, then checks the value
/// with `check`; the value is not used.
fn compat(c: &mut MainConf, cmd: &Cmd, check: fn(&Cmd) -> ConfResult) -> ConfResult {
    if c.compat_seen.contains(&cmd.name) {
        return Err(cmd.duplicate());
    }
    c.compat_seen.push(cmd.name.clone());
    check(cmd)
}

/// `pcre_jit on|off` (`ngx_regex_pcre_jit`): on, where the library cannot, warns and is off.
fn pcre_jit(c: &mut MainConf, cmd: &Cmd, _: &dyn Paths) -> ConfResult {
    if c.pcre_jit.is_set() {
        return Err(cmd.duplicate());
    }
    let on = value::flag(cmd)?;
    if on && !crate::core::regex::jit_supported() {
        let msg = cmd.err("PCRE2 library does not support JIT").to_string();
        crate::core::log::error(Level::Warn, &msg, None);
        return c.pcre_jit.set(cmd, false);
    }
    c.pcre_jit.set(cmd, on)
}

/// `thread_pool NAME threads=N [max_queue=N]` (nginx's file I/O threads, which sluice
/// does not need): checked as nginx's `ngx_thread_pool`.
fn thread_pool(c: &mut MainConf, cmd: &Cmd, _: &dyn Paths) -> ConfResult {
    let name = cmd.arg(0).to_string();
    if c.thread_pools.contains(&name) {
        return Err(cmd.err(format!("duplicate thread pool \"{}\"", name)));
    }
    let mut threads = None;
    for a in &cmd.args[1..] {
        if let Some(v) = a.strip_prefix("threads=") {
            match value::parse_number(v).filter(|n| *n > 0) {
                Some(n) => threads = Some(n),
                None => return Err(cmd.err(format!("invalid threads value \"{}\"", a))),
            }
        } else if let Some(v) = a.strip_prefix("max_queue=") {
            if value::parse_number(v).is_none() {
                return Err(cmd.err(format!("invalid max_queue value \"{}\"", a)));
            }
        }
    }
    if threads.is_none() {
        return Err(cmd.err(format!("\"{}\" must have \"threads\" parameter", cmd.name)));
    }
    c.thread_pools.push(name);
    Ok(())
}

/// `debug_connection`, as nginx's debug build (Debian's) reads it: `unix:`, an address
/// or CIDR, or a name that resolves (each of its addresses).
fn debug_connection(c: &mut MainConf, cmd: &Cmd, _: &dyn Paths) -> ConfResult {
    use crate::core::cidr::Cidr;
    let v = cmd.arg(0);
    if v == "unix:" {
        c.debug_connection.push(Cidr::Unix);
        return Ok(());
    }
    if let Some((cidr, low)) = crate::core::cidr::parse(v) {
        if low {
            let msg = cmd.err(format!("low address bits of {} are meaningless", v)).to_string();
            crate::core::log::error(Level::Warn, &msg, None);
        }
        c.debug_connection.push(cidr);
        return Ok(());
    }
    let addrs =
        crate::core::addr::resolve_host(v, 0).map_err(|e| cmd.err(format!("{} in debug_connection \"{}\"", e, v)))?;
    c.debug_connection.extend(addrs.iter().filter_map(|a| match a {
        crate::core::addr::Addr::Inet(sa) => Some(Cidr::host(sa.ip())),
        crate::core::addr::Addr::Unix(_) => None,
    }));
    Ok(())
}

/// nginx's `ngx_ncpu`: the CPUs online, whatever the process's affinity mask or cgroup
/// quota allow it (`worker_processes auto` under `taskset -c 1` or a container's CPU
/// limit still starts one worker per CPU online, as nginx 1.22.1 does).
fn ncpu() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

fn workers(c: &mut MainConf, cmd: &Cmd, _: &dyn Paths) -> ConfResult {
    // nginx's ngx_set_worker_processes says "is duplicate" before it reads the value.
    if c.worker_processes.is_set() {
        return Err(cmd.duplicate());
    }
    let n = if cmd.arg(0) == "auto" {
        ncpu()
    } else {
        value::parse_number(cmd.arg(0)).ok_or_else(|| ConfError::directive(cmd, "invalid value"))? as usize
    };
    c.worker_processes.set(cmd, n)
}

/// `worker_cpu_affinity [auto] MASK ...`: nginx's checks (`ngx_set_cpu_affinity`).
fn cpu_affinity(c: &mut MainConf, cmd: &Cmd, _: &dyn Paths) -> ConfResult {
    if c.cpu_affinity.is_set() {
        return Err(cmd.duplicate());
    }
    c.cpu_affinity.set(cmd, (cmd.arg(0) == "auto", cmd.args.len()))?;
    let masks = if cmd.arg(0) == "auto" {
        if cmd.args.len() > 2 {
            return Err(cmd.err(format!("invalid number of arguments in \"{}\" directive", cmd.name)));
        }
        &cmd.args[1..]
    } else {
        &cmd.args[..]
    };
    if cmd.arg(0) == "auto" {
        c.cpu_masks.push((0..ncpu().min(1024)).collect());
    }
    for m in masks {
        let m = crate::core::conf::parser::text_to_bytes(m);
        if m.len() > 1024 {
            return Err(cmd.err("\"worker_cpu_affinity\" supports up to 1024 CPUs only"));
        }
        // Read byte by byte from the last, as nginx does (a character of several bytes
        // is named by its last); spaces are skipped.
        if let Some(&b) = m.iter().rev().find(|b| !matches!(b, b' ' | b'0' | b'1')) {
            let ch = crate::core::conf::parser::bytes_to_text(&[b]);
            return Err(cmd.err(format!("invalid character \"{}\" in \"worker_cpu_affinity\"", ch)));
        }
        let bits = m.iter().rev().filter(|&&b| b != b' ');
        c.cpu_masks.push(bits.enumerate().filter(|&(_, &b)| b == b'1').map(|(i, _)| i).collect());
    }
    Ok(())
}

/// `error_log FILE [LEVEL ...]` (`ngx_log_set_log` / `ngx_log_set_levels`).
pub fn parse_error_log(cmd: &Cmd, paths: &dyn Paths) -> ConfResult<(String, Level)> {
    let name = cmd.arg(0);
    if let Some(spec) = name.strip_prefix("syslog:") {
        crate::core::log::parse_syslog(spec).map_err(|m| cmd.err(m))?;
    } else if let Some(size) = name.strip_prefix("memory:") {
        // nginx's debug build: room for one line of the longest kind, its header naming
        // this file (`MEMLOG SIZE FILE:LINE`) included.
        let needed = "MEMLOG  :\n".len() + 1 + cmd.file.len() + 20 + 20 + 2048;
        if crate::core::conf::value::parse_size(size).is_none_or(|n| n < needed) {
            return Err(cmd.err(format!("invalid buffer size \"{}\"", size)));
        }
    }
    let special = name == "stderr" || name.starts_with("syslog:") || name.starts_with("memory:");
    // An empty name is descriptor 2 (ngx_conf_open_file), kept as "": unlike
    // "stderr" it does not stop descriptor 2 going to the main error log.
    let path = if special || name.is_empty() { name.to_string() } else { paths.full_name(name) };
    if !special && !name.is_empty() {
        crate::core::logfile::note_file(&path);
    }
    // ngx_log_set_levels: one level, or any of the debug masks (which a level before
    // them refuses).
    const DEBUG_MASKS: [&str; 7] =
        ["debug_core", "debug_alloc", "debug_mutex", "debug_event", "debug_http", "debug_mail", "debug_stream"];
    let (mut level, mut masks) = (None, false);
    for a in cmd.args.iter().skip(1) {
        if let Some(l) = Level::from_name(a) {
            if level.is_some() || masks {
                return Err(cmd.err(format!("duplicate log level \"{}\"", a)));
            }
            level = Some(l);
        } else if DEBUG_MASKS.contains(&a.as_str()) && level.is_none() {
            masks = true;
        } else {
            return Err(cmd.err(format!("invalid log level \"{}\"", a)));
        }
    }
    Ok((path, if masks { Level::Debug } else { level.unwrap_or(Level::Error) }))
}

fn error_log(c: &mut MainConf, cmd: &Cmd, p: &dyn Paths) -> ConfResult {
    let e = parse_error_log(cmd, p)?;
    c.error_log.push(e);
    Ok(())
}

/// `user NAME [GROUP]`: both must exist (nginx checks with getpwnam/getgrnam); the
/// group is NAME when not given, as in nginx. Without root it is ignored, with nginx's
/// warning.
fn user(c: &mut MainConf, cmd: &Cmd, _: &dyn Paths) -> ConfResult {
    if c.user.is_set() {
        return Err(cmd.duplicate());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let msg = "the \"user\" directive makes sense only if the master process runs with super-user \
                   privileges, ignored";
        crate::core::log::error(Level::Warn, &cmd.err(msg).to_string(), None);
        return Ok(());
    }
    let group = Some(cmd.args.get(1).cloned().unwrap_or_else(|| cmd.arg(0).to_string()));
    let cname = std::ffi::CString::new(cmd.arg(0)).map_err(|_| cmd.invalid_value(cmd.arg(0)))?;
    // SAFETY: getpwnam with a valid C string; only the null-ness of the result is used.
    if unsafe { libc::getpwnam(cname.as_ptr()) }.is_null() {
        return Err(cmd.err(format!("getpwnam(\"{}\") failed", cmd.arg(0))));
    }
    if let Some(g) = &group {
        let cg = std::ffi::CString::new(g.as_str()).map_err(|_| cmd.invalid_value(g))?;
        // SAFETY: as above, for getgrnam.
        if unsafe { libc::getgrnam(cg.as_ptr()) }.is_null() {
            return Err(cmd.err(format!("getgrnam(\"{}\") failed", g)));
        }
    }
    c.user.set(cmd, (cmd.arg(0).to_string(), group))
}

/// `load_module`: sluice has its modules built in, so a module that exists is accepted
/// without a word (as nginx loads it silently); one that does not is nginx's dlopen error.
fn load_module(c: &mut MainConf, cmd: &Cmd, p: &dyn Paths) -> ConfResult {
    let path = p.full_name(cmd.arg(0));
    // glibc's dlopen: the file is opened and its header read; what fails there is
    // nginx's error (what follows, the ELF and symbol checks, sluice does not make).
    let opened = std::fs::File::open(crate::core::conf::parser::os_path(&path))
        .map_err(|e| ("cannot open shared object file", e));
    if let Err((what, e)) =
        opened.and_then(|mut f| std::io::Read::read(&mut f, &mut [0u8; 64]).map_err(|e| ("cannot read file data", e)))
    {
        let text = crate::core::conf::strerror(&e);
        return Err(cmd.err(format!("dlopen() \"{path}\" failed ({path}: {what}: {text})")));
    }
    // nginx's ngx_add_module refuses a module loaded before (in -g or the file); the
    // module is named as its file is (ngx_stream_module.so holds ngx_stream_module).
    let name = path.rsplit('/').next().unwrap_or("").trim_end_matches(".so").to_string();
    if c.modules.contains(&name) {
        return Err(cmd.err(format!("module \"{}\" is already loaded", name)));
    }
    c.modules.push(name);
    Ok(())
}

/// The directives of nginx's core, errlog and events modules that sluice knows.
/// `include` is handled by the configuration builder (it is allowed everywhere).
pub const DIRECTIVES: &[CoreDirective] = &[
    CoreDirective {
        name: "daemon",
        ctx: Ctx::MAIN,
        args: Arity::Flag,
        set: |c, cmd, _| c.daemon.set_parsed(cmd, value::flag),
    },
    CoreDirective {
        name: "master_process",
        ctx: Ctx::MAIN,
        args: Arity::Flag,
        set: |c, cmd, _| c.master_process.set_parsed(cmd, value::flag),
    },
    CoreDirective { name: "worker_processes", ctx: Ctx::MAIN, args: Arity::Take(1), set: workers },
    CoreDirective {
        name: "pid",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        // An empty name is the default (ngx_core_module_init_conf), given all the same.
        set: |c, cmd, p| c.pid.set(cmd, if cmd.arg(0).is_empty() { String::new() } else { p.full_name(cmd.arg(0)) }),
    },
    CoreDirective { name: "user", ctx: Ctx::MAIN, args: Arity::Between(1, 2), set: user },
    CoreDirective {
        name: "worker_rlimit_nofile",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| c.worker_rlimit_nofile.set_parsed(cmd, value::number),
    },
    CoreDirective {
        name: "worker_shutdown_timeout",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| c.worker_shutdown_timeout.set_parsed(cmd, value::msec),
    },
    CoreDirective {
        name: "env",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| {
            c.env.push(cmd.arg(0).to_string());
            Ok(())
        },
    },
    CoreDirective { name: "error_log", ctx: Ctx::MAIN, args: Arity::OneOrMore, set: error_log },
    CoreDirective { name: "load_module", ctx: Ctx::MAIN, args: Arity::Take(1), set: load_module },
    CoreDirective {
        name: "worker_connections",
        ctx: Ctx::EVENTS,
        args: Arity::Take(1),
        set: |c, cmd, _| {
            c.worker_connections.set_parsed(cmd, |cmd| {
                let a = cmd.arg(0);
                value::parse_number(a).map(|n| n as usize).ok_or_else(|| cmd.err(format!("invalid number \"{}\"", a)))
            })
        },
    },
    CoreDirective {
        name: "multi_accept",
        ctx: Ctx::EVENTS,
        args: Arity::Flag,
        set: |c, cmd, _| c.multi_accept.set_parsed(cmd, value::flag),
    },
    CoreDirective {
        name: "use",
        ctx: Ctx::EVENTS,
        args: Arity::Take(1),
        set: |c, cmd, _| {
            if c.event_use.is_set() {
                return Err(cmd.duplicate());
            }
            if cmd.arg(0) != "epoll" {
                return Err(cmd.err(format!("invalid event type \"{}\"", cmd.arg(0))));
            }
            c.event_use.set(cmd, ())
        },
    },
    CoreDirective {
        name: "accept_mutex",
        ctx: Ctx::EVENTS,
        args: Arity::Flag,
        set: |c, cmd, _| c.accept_mutex.set_parsed(cmd, value::flag),
    },
    CoreDirective {
        name: "accept_mutex_delay",
        ctx: Ctx::EVENTS,
        args: Arity::Take(1),
        set: |c, cmd, _| c.accept_mutex_delay.set_parsed(cmd, value::msec),
    },
    CoreDirective {
        name: "epoll_events",
        ctx: Ctx::EVENTS,
        args: Arity::Take(1),
        set: |c, cmd, _| compat(c, cmd, |cmd| value::number(cmd).map(drop)),
    },
    CoreDirective {
        name: "worker_aio_requests",
        ctx: Ctx::EVENTS,
        args: Arity::Take(1),
        set: |c, cmd, _| compat(c, cmd, |cmd| value::number(cmd).map(drop)),
    },
    CoreDirective { name: "debug_connection", ctx: Ctx::EVENTS, args: Arity::Take(1), set: debug_connection },
    CoreDirective { name: "pcre_jit", ctx: Ctx::MAIN, args: Arity::Flag, set: pcre_jit },
    CoreDirective {
        name: "ssl_engine",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| {
            compat(c, cmd, |cmd| crate::core::ssl::set_default_engine(cmd.arg(0)).map_err(ConfError::bare))
        },
    },
    CoreDirective {
        name: "lock_file",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| compat(c, cmd, |_| Ok(())),
    },
    CoreDirective {
        name: "timer_resolution",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| c.timer_resolution.set_parsed(cmd, value::msec),
    },
    CoreDirective {
        name: "worker_priority",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        // ngx_set_priority: an optional sign, then digits; a second one after a
        // non-zero value is a duplicate.
        set: |c, cmd, _| {
            if c.worker_priority != 0 {
                return Err(cmd.duplicate());
            }
            let a = cmd.arg(0);
            let digits = a.strip_prefix(['-', '+']).unwrap_or(a);
            // ngx_atoi's 64-bit number kept in nginx's `int`: the low 32 bits, where
            // NGX_ERROR (-1) is the refusal.
            let n = value::parse_number(digits)
                .map(|n| n as i32)
                .filter(|&n| n != -1)
                .ok_or_else(|| ConfError::directive(cmd, "invalid number"))?;
            c.worker_priority = if a.starts_with('-') { n.wrapping_neg() } else { n };
            Ok(())
        },
    },
    CoreDirective { name: "worker_cpu_affinity", ctx: Ctx::MAIN, args: Arity::OneOrMore, set: cpu_affinity },
    CoreDirective {
        name: "worker_rlimit_core",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| c.worker_rlimit_core.set_parsed(cmd, value::offset),
    },
    CoreDirective {
        name: "working_directory",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| {
            compat(c, cmd, |_| Ok(()))?;
            c.working_directory = cmd.arg(0).to_string();
            Ok(())
        },
    },
    CoreDirective {
        name: "debug_points",
        ctx: Ctx::MAIN,
        args: Arity::Take(1),
        set: |c, cmd, _| {
            // An enum slot: nginx compares with ngx_strcasecmp.
            compat(c, cmd, |cmd| match cmd.arg(0).to_ascii_lowercase().as_str() {
                "stop" | "abort" => Ok(()),
                _ => Err(cmd.err(format!("invalid value \"{}\"", cmd.arg(0)))),
            })
        },
    },
    // Threads are for nginx's file I/O, which sluice does not do.
    CoreDirective { name: "thread_pool", ctx: Ctx::MAIN, args: Arity::Between(2, 3), set: thread_pool },
];

impl MainConf {
    /// nginx's `ngx_core_module_init_conf` defaults.
    pub fn finish(&mut self, paths: &dyn Paths, default_pid: &str) {
        self.daemon.merge(&Setting::default(), true);
        self.master_process.merge(&Setting::default(), true);
        self.worker_processes.merge(&Setting::default(), 1);
        if self.pid.is_set() && self.pid.get().is_empty() {
            self.pid = Setting::default();
        }
        self.pid.merge(&Setting::default(), paths.full_name(default_pid));
        self.worker_connections.merge(&Setting::default(), 512);
        self.multi_accept.merge(&Setting::default(), false);
        self.pcre_jit.merge(&Setting::default(), false);
        self.accept_mutex_delay.merge(&Setting::default(), Duration::from_millis(500));
        self.timer_resolution.merge(&Setting::default(), Duration::ZERO);
        self.accept_mutex.merge(&Setting::default(), false);
    }
}
