//! Process plumbing (`ngx_process.c`, `ngx_daemon.c`, `ngx_cycle.c`): signals delivered
//! through a self-pipe the reactor watches, the pid file, daemonizing, `-s SIGNAL`.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe just drops the byte, and
        // the reader handles each signal kind once per drain anyway.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
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
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        // SAFETY: ignoring SIGPIPE so that writes to closed sockets return EPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        Ok(Signals { fd: fds[0] })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The signals received since the last call, each once, in arrival order.
    pub fn drain(&self) -> Vec<libc::c_int> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: read into a buffer we own.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            for &b in &buf[..n as usize] {
                let s = b as libc::c_int;
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out
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
        _ => "signal",
    }
}

pub fn write_pid(path: &str) -> io::Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
}

pub fn remove_pid(path: &str) {
    let _ = std::fs::remove_file(path);
}

/// `ngx_daemon`: fork, let the parent exit, start a new session, stdin/stdout to /dev/null.
pub fn daemonize(keep_stderr: bool) -> io::Result<()> {
    // SAFETY: fork/setsid/dup2 on a single-threaded process before the reactor starts.
    unsafe {
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
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
    let text = std::fs::read_to_string(pid_path)
        .map_err(|e| format!("[error] open() \"{}\" failed {}", pid_path, crate::core::conf::os_err(&e)))?;
    let t = text.trim_end_matches(['\n', '\r']);
    let pid: libc::pid_t = t
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("[error] invalid PID number \"{}\" in \"{}\"", t, pid_path))?;
    // SAFETY: kill(2) with a parsed pid and a valid signal number.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!("[alert] kill({}, {}) failed {}", pid, sig, crate::core::conf::os_err(&e)));
    }
    Ok(())
}
