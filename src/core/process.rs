//! Process plumbing (`ngx_process.c`, `ngx_daemon.c`, `ngx_cycle.c`): signals delivered
//! through a self-pipe the reactor watches, the pid file, daemonizing, `-s SIGNAL`.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// The environment variable that hands listening sockets to a new binary ("3;4;"), as
/// nginx's.
pub const INHERITED_ENV: &str = "NGINX";

/// `ngx_add_inherited_sockets`' reading of `NGINX` ("3;4;"): each number ends with `;`
/// or `:`. A bad number ends the list with nginx's emerg messages (returned): two for a
/// bad number, as nginx's check for an unterminated one follows its loop's `break`,
/// one for a number without its terminator.
pub fn parse_inherited(v: &[u8]) -> (Vec<RawFd>, Vec<String>) {
    let atoi = |s: &[u8]| -> Option<RawFd> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let mut fds = Vec::new();
    let mut start = 0;
    for (i, &c) in v.iter().enumerate() {
        if c == b':' || c == b';' {
            let Some(fd) = atoi(&v[start..i]) else {
                let mut msgs = vec![invalid_number(&v[start..], " the rest of the variable")];
                if start != i {
                    msgs.push(invalid_number(&v[start..], ""));
                }
                return (fds, msgs);
            };
            fds.push(fd);
            start = i + 1;
        }
    }
    if start != v.len() {
        return (fds, vec![invalid_number(&v[start..], "")]);
    }
    (fds, Vec::new())
}

fn invalid_number(rest: &[u8], ignoring: &str) -> String {
    let rest = String::from_utf8_lossy(rest);
    format!("invalid socket number \"{rest}\" in {INHERITED_ENV} environment variable, ignoring{ignoring}")
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if sig == libc::SIGALRM {
        ALARM.store(true, Ordering::Relaxed);
    }
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let pid = if info.is_null() { 0 } else { unsafe { (*info).si_pid() } };
        let mut rec = [0u8; 5];
        rec[0] = sig as u8;
        rec[1..].copy_from_slice(&pid.to_le_bytes());
        // SAFETY: write(2) is async-signal-safe; a 5-byte write to a pipe is atomic, and
        // a full pipe just drops the record (the reader handles each signal kind once
        // per drain anyway).
        unsafe {
            libc::write(fd, rec.as_ptr().cast(), rec.len());
        }
    }
}

/// A SIGALRM came (nginx's `ngx_event_timer_alarm`): with `timer_resolution`, a worker's
/// clock moves only then.
static ALARM: AtomicBool = AtomicBool::new(false);

/// Whether a SIGALRM came since the last call.
pub fn take_alarm() -> bool {
    ALARM.swap(false, Ordering::Relaxed)
}

/// `timer_resolution` in a worker: a SIGALRM every `every` (setitimer, as nginx's
/// ngx_event_process_init).
pub fn start_interval_timer(every: std::time::Duration) -> io::Result<()> {
    let tv =
        libc::timeval { tv_sec: every.as_secs() as libc::time_t, tv_usec: every.subsec_micros() as libc::suseconds_t };
    let itv = libc::itimerval { it_interval: tv, it_value: tv };
    // SAFETY: setitimer reads the itimerval we pass.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &itv, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The signals nginx's master and workers act on.
pub const HANDLED: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
    libc::SIGALRM,
    libc::SIGIO,
];

/// The read end of the signal self-pipe.
pub struct Signals {
    fd: RawFd,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two descriptors we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
        for &sig in HANDLED {
            // SAFETY: installing a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        // SAFETY: ignoring SIGPIPE so that writes to closed sockets return EPIPE (and
        // SIGSYS, as nginx's signal table does: a stray one must not kill a master); an
        // empty signal mask, as nginx's processes run with (its master waits in
        // sigsuspend with an empty mask, its workers set it empty): a mask inherited
        // from whatever started us must not hold back SIGCHLD, SIGHUP or SIGQUIT.
        // SIGSEGV and SIGBUS get their default action back: Rust's stack-overflow
        // handler lets one sent by kill(2) pass unnoticed, where nginx's process dies of
        // it (and its master says so).
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::signal(libc::SIGSYS, libc::SIG_IGN);
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        }
        Ok(Signals { fd: fds[0] })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The signals received since the last call, each kind once, in arrival order,
    /// with the sending process (0 when unknown).
    pub fn drain(&self) -> Vec<(libc::c_int, i32)> {
        let mut out: Vec<(libc::c_int, i32)> = Vec::new();
        let mut buf = [0u8; 320];
        loop {
            // SAFETY: read into a buffer we own.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            for rec in buf[..n as usize].chunks_exact(5) {
                let sig = rec[0] as libc::c_int;
                let pid = i32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
                if !out.iter().any(|(s, _)| *s == sig) {
                    out.push((sig, pid));
                }
            }
        }
        out
    }

    /// Wait up to `ms` milliseconds for a signal to arrive (the master's sigsuspend).
    pub fn wait(&self, ms: i32) {
        let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one descriptor we own.
        unsafe {
            libc::poll(&mut pfd, 1, ms);
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let w = SIGNAL_PIPE.swap(-1, Ordering::Relaxed);
        // SAFETY: closing the pipe ends this process created.
        unsafe {
            libc::close(self.fd);
            if w >= 0 {
                libc::close(w);
            }
        }
    }
}

/// nginx's notice for a received signal: `signal 1 (SIGHUP) received from 42, reconfiguring`.
pub fn signal_notice(sig: libc::c_int, from: i32, action: &str) -> String {
    if from > 0 {
        format!("signal {} ({}) received from {}{}", sig, signal_name(sig), from, action)
    } else {
        format!("signal {} ({}) received{}", sig, signal_name(sig), action)
    }
}

/// The parent process at start, or after daemonizing the process that forked this one
/// (nginx's `ngx_parent`). A binary started by an upgrade has the old master for parent.
static PARENT: AtomicI32 = AtomicI32::new(0);

pub fn record_parent() {
    // SAFETY: getppid has no preconditions.
    PARENT.store(unsafe { libc::getppid() }, Ordering::Relaxed);
}

/// Whether the process that started this one is still its parent: a master that was not
/// daemonized, or a new binary whose old master still runs. nginx ignores USR2 then.
pub fn parent_unchanged() -> bool {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() == PARENT.load(Ordering::Relaxed) }
}

/// nginx's line when it ignores USR2 (a binary upgrade already under way, or none possible).
pub const USR2_IGNORED: &str =
    "the changing binary signal is ignored: you should shutdown or terminate before either old or new binary's process";

/// Detached from the terminal: daemonized, or started by a binary upgrade (nginx's
/// `ngx_daemonized`). WINCH stops accepting only then.
static DAEMONIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_daemonized(on: bool) {
    DAEMONIZED.store(on, Ordering::Relaxed);
}

pub fn daemonized() -> bool {
    DAEMONIZED.load(Ordering::Relaxed)
}

/// fork(2) with the handled signals blocked across it, as nginx's master keeps them
/// blocked: the child inherits the parent's handlers, which write to the parent's
/// signal pipe, so a signal arriving before the child installs its own (a TERM right
/// after "start worker process") would be lost and the worker would outlive its
/// master. The child's `Signals::install` (or the new binary's, after exec) unblocks
/// them and the pending ones reach it; the parent's mask is restored at once.
/// `ngx_pid`: this process's id, asked of the kernel once per process. glibc no longer
/// caches getpid(2), and every error log line (and `$pid`) would pay a syscall for it.
static PID: AtomicI32 = AtomicI32::new(0);

pub fn pid() -> u32 {
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached as u32;
    }
    // SAFETY: getpid(2) cannot fail.
    let pid = unsafe { libc::getpid() };
    PID.store(pid, Ordering::Relaxed);
    pid as u32
}

pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: sigset operations on local sets; the process is single-threaded when it
    // forks.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        for &sig in HANDLED {
            libc::sigaddset(&mut block, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        let pid = libc::fork();
        if pid == 0 {
            PID.store(0, Ordering::Relaxed);
        } else {
            let e = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(e);
            }
        }
        Ok(pid)
    }
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) on a pid we started.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How a child ended.
pub enum ChildExit {
    Code(i32),
    Signal(i32, bool),
}

/// Reap one exited child without blocking: `Ok(None)` when none has exited yet, the
/// error of waitpid() otherwise (ECHILD: no children at all).
pub fn reap() -> io::Result<Option<(libc::pid_t, ChildExit)>> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid with WNOHANG and a status we own.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return Ok(None);
        }
        if pid < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(Some(if libc::WIFSIGNALED(status) {
            (pid, ChildExit::Signal(libc::WTERMSIG(status), libc::WCOREDUMP(status)))
        } else {
            (pid, ChildExit::Code(libc::WEXITSTATUS(status)))
        }));
    }
}

/// `worker_rlimit_nofile`.
pub fn set_nofile(n: u64) -> io::Result<()> {
    let rl = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
    // SAFETY: setrlimit with a struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ngx_setaffinity`: a notice per CPU, then bind this process to them (an alert if
/// the kernel refuses, an empty mask say).
pub fn set_affinity(cpus: &[usize]) {
    use crate::core::conf::Level;
    use crate::core::log::error;
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        error(Level::Notice, &format!("sched_setaffinity(): using cpu #{}", cpu), None);
        // SAFETY: CPU numbers come from masks of at most 1024 (CPU_SETSIZE) places.
        unsafe { libc::CPU_SET(cpu.min(1023), &mut set) };
    }
    // SAFETY: this process, a set of the size given.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } == -1 {
        let e = io::Error::last_os_error();
        error(Level::Alert, "sched_setaffinity() failed", Some(&e));
    }
}

/// `user`: drop to that user and group when running as root (workers only).
/// Become `user` (and `group`) when running as root, as nginx's worker does. With
/// `keep_net_raw` (a `proxy_bind ... transparent` in the configuration) a worker that is
/// not root keeps CAP_NET_RAW, which IP_TRANSPARENT needs, as nginx's does.
pub fn drop_privileges(user: &str, group: Option<&str>, keep_net_raw: bool) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let cu = std::ffi::CString::new(user).map_err(|_| "bad user".to_string())?;
    // SAFETY: getpwnam/getgrnam return static records we only read here; setgid,
    // initgroups and setuid act on this process.
    unsafe {
        let pw = libc::getpwnam(cu.as_ptr());
        if pw.is_null() {
            return Err(format!("getpwnam(\"{}\") failed", user));
        }
        let mut gid = (*pw).pw_gid;
        if let Some(g) = group {
            let cg = std::ffi::CString::new(g).map_err(|_| "bad group".to_string())?;
            let gr = libc::getgrnam(cg.as_ptr());
            if gr.is_null() {
                return Err(format!("getgrnam(\"{}\") failed", g));
            }
            gid = (*gr).gr_gid;
        }
        if libc::setgid(gid) != 0 {
            return Err(format!("setgid({}) failed {}", gid, crate::core::conf::os_err(&io::Error::last_os_error())));
        }
        if libc::initgroups(cu.as_ptr(), gid) != 0 {
            return Err(format!("initgroups({}, {}) failed", user, gid));
        }
        let keep = keep_net_raw && (*pw).pw_uid != 0;
        if keep && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) == -1 {
            let e = io::Error::last_os_error();
            return Err(format!("prctl(PR_SET_KEEPCAPS, 1) failed {}", crate::core::conf::os_err(&e)));
        }
        if libc::setuid((*pw).pw_uid) != 0 {
            let e = io::Error::last_os_error();
            return Err(format!("setuid({}) failed {}", (*pw).pw_uid, crate::core::conf::os_err(&e)));
        }
        if keep {
            set_net_raw_capability()?;
        }
    }
    Ok(())
}

/// capset(2) to CAP_NET_RAW alone, effective and permitted (version 1 header, as nginx).
fn set_net_raw_capability() -> Result<(), String> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_1: u32 = 0x1998_0330;
    const CAP_NET_RAW: u32 = 13;
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_1, pid: 0 };
    let data = CapData { effective: 1 << CAP_NET_RAW, permitted: 1 << CAP_NET_RAW, inheritable: 0 };
    // SAFETY: capset with a header and one data record of the layout version 1 defines.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, &data as *const CapData) } == -1 {
        let e = io::Error::last_os_error();
        return Err(format!("capset() failed {}", crate::core::conf::os_err(&e)));
    }
    Ok(())
}

/// Create (or open) a log file for appending and, when running as root, give it to
/// `user`.
pub fn create_owned(path: &str, user: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().append(true).create(true).mode(0o644).open(path)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let cu = std::ffi::CString::new(user).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: getpwnam returns a static record read at once; fchown on our descriptor.
    unsafe {
        let pw = libc::getpwnam(cu.as_ptr());
        if !pw.is_null() && libc::fchown(std::os::unix::io::AsRawFd::as_raw_fd(&f), (*pw).pw_uid, u32::MAX) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // ngx_reopen_files: the owner must be able to read and write it.
    use std::os::unix::fs::PermissionsExt;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o600 != 0o600 {
        // (A failure is nginx's alert at most; the file is reopened either way.)
        let _ = f.set_permissions(std::fs::Permissions::from_mode((mode | 0o600) & 0o7777));
    }
    Ok(())
}

/// Let a descriptor survive exec (binary upgrade hands listening sockets over).
pub fn set_inheritable(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let f = if on { flags & !libc::FD_CLOEXEC } else { flags | libc::FD_CLOEXEC };
            libc::fcntl(fd, libc::F_SETFD, f);
        }
    }
}

/// The name nginx prints for a signal ("SIGQUIT").
pub fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGIO => "SIGIO",
        libc::SIGALRM => "SIGALRM",
        _ => "signal",
    }
}

pub fn write_pid(path: &str) -> io::Result<()> {
    std::fs::write(crate::core::conf::parser::os_path(path), format!("{}\n", pid()))
}

/// `ngx_delete_pidfile`: a pid file that cannot be deleted is an alert.
pub fn remove_pid(path: &str) {
    if let Err(e) = std::fs::remove_file(path) {
        crate::core::log::error(crate::core::conf::Level::Alert, &format!("unlink() \"{}\" failed", path), Some(&e));
    }
}

/// Unix socket files this process took over from an old binary (`ls->inherited`).
static INHERITED_UNIX: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

pub fn set_inherited_unix(path: &std::path::Path) {
    if let Ok(mut v) = INHERITED_UNIX.lock() {
        v.push(path.to_path_buf());
    }
}

/// `ngx_close_listening_sockets`' rule for a unix socket's file as a master (or single
/// process) closes it: a socket taken over from an old binary is left to that binary
/// while it still runs (its parent is unchanged), so that rolling an upgrade back keeps
/// the file the old master serves.
pub fn delete_unix_socket(path: &std::path::Path) {
    let inherited = INHERITED_UNIX.lock().is_ok_and(|v| v.iter().any(|p| p == path));
    if inherited && parent_unchanged() {
        return;
    }
    unlink_socket(path);
}

/// Delete a unix socket's file, with nginx's emerg line on failure.
pub fn unlink_socket(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        let msg = format!("unlink() {} failed", crate::core::addr::path_text(path));
        crate::core::log::error(crate::core::conf::Level::Emerg, &msg, Some(&e));
    }
}

/// `ngx_daemon`: fork, let the parent write the pid file and exit, start a new session,
/// stdin/stdout to /dev/null.
pub fn daemonize(keep_stderr: bool, pid_file: &str) -> io::Result<()> {
    // SAFETY: fork/setsid/dup2 on a single-threaded process before the reactor starts.
    unsafe {
        // The pid file is there before the daemon has its handlers (`Signals::install`):
        // a signal sent at once (HUP, USR2, whose default action ends a process) waits,
        // blocked, until they are in place, as nginx's handlers are set before it forks.
        let mut block: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        for &sig in HANDLED {
            libc::sigaddset(&mut block, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, std::ptr::null_mut());
        let pid = libc::getpid();
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {
                PARENT.store(pid, Ordering::Relaxed);
                PID.store(0, Ordering::Relaxed);
            }
            child => {
                // As Debian's nginx (the oracle), the process started by hand writes the
                // daemon's pid file before it exits, so the file is there when it
                // returns; if it cannot, it says why and exits 1 (the daemon runs on).
                PID.store(child, Ordering::Relaxed);
                let code = match write_pid(pid_file) {
                    Ok(()) => 0,
                    Err(e) => {
                        let msg = format!("open() \"{}\" failed", pid_file);
                        crate::core::log::error(crate::core::conf::Level::Emerg, &msg, Some(&e));
                        1
                    }
                };
                libc::_exit(code)
            }
        }
        if libc::setsid() == -1 {
            return Err(io::Error::last_os_error());
        }
        libc::umask(0);
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        libc::dup2(fd, 0);
        libc::dup2(fd, 1);
        if !keep_stderr {
            libc::dup2(fd, 2);
        }
        if fd > 2 {
            libc::close(fd);
        }
    }
    Ok(())
}

/// `-s SIGNAL`: read the pid file and signal the master, with nginx's messages.
pub fn send_signal(pid_path: &str, name: &str) -> Result<(), String> {
    let sig = match name {
        "stop" => libc::SIGTERM,
        "quit" => libc::SIGQUIT,
        "reopen" => libc::SIGUSR1,
        "reload" => libc::SIGHUP,
        _ => return Err(format!("invalid option: \"-s {}\"", name)),
    };
    // nginx's ngx_signal_process: open, read at most 22 bytes (the longest number and a
    // newline), drop the trailing newlines, and read digits only.
    let mut f = std::fs::File::open(crate::core::conf::parser::os_path(pid_path))
        .map_err(|e| format!("[error] open() \"{}\" failed {}", pid_path, crate::core::conf::os_err(&e)))?;
    let mut buf = [0u8; 22];
    let mut n = 0;
    while n < buf.len() {
        match io::Read::read(&mut f, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("[crit] pread() \"{}\" failed {}", pid_path, crate::core::conf::os_err(&e))),
        }
    }
    let mut t = &buf[..n];
    while let [rest @ .., b'\n' | b'\r'] = t {
        t = rest;
    }
    // (A pid of 0 or one that does not fit is refused: nginx would signal its own
    // process group, or a truncated number.)
    let pid: libc::pid_t = std::str::from_utf8(t)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            format!(
                "[error] invalid PID number \"{}\" in \"{}\"",
                crate::core::conf::parser::bytes_to_text(t),
                pid_path
            )
        })?;
    // SAFETY: kill(2) with a parsed pid and a valid signal number.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!("[alert] kill({}, {}) failed {}", pid, sig, crate::core::conf::os_err(&e)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_sockets_read_as_nginx() {
        // As nginx 1.22.1 printed them under -t.
        assert_eq!(parse_inherited(b"3;4:"), (vec![3, 4], vec![]));
        let (fds, msgs) = parse_inherited(b"3");
        assert!(fds.is_empty());
        assert_eq!(msgs, ["invalid socket number \"3\" in NGINX environment variable, ignoring"]);
        let (fds, msgs) = parse_inherited(b"5;x;");
        assert_eq!(fds, vec![5]);
        assert_eq!(
            msgs,
            [
                "invalid socket number \"x;\" in NGINX environment variable, ignoring the rest of the variable",
                "invalid socket number \"x;\" in NGINX environment variable, ignoring"
            ]
        );
        // An empty number: the loop's message alone.
        assert_eq!(parse_inherited(b"5;;").1.len(), 1);
        assert_eq!(parse_inherited(b"-1;").0, Vec::<RawFd>::new());
        assert_eq!(parse_inherited(b""), (Vec::new(), vec![]));
    }
}
