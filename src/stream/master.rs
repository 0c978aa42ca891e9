//! The master process (`ngx_master_process_cycle`): owns the listening sockets, starts
//! `worker_processes` workers, and acts on signals — HUP reload (new workers with the new
//! configuration, old ones drain), QUIT graceful stop, TERM/INT fast stop, USR1 reopen
//! logs, USR2 binary upgrade with the listening sockets inherited through `NGINX`,
//! WINCH stop the workers (when daemonized). A worker that dies is started again.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::core::addr::Addr;
use crate::core::conf::Level;
use crate::core::conn::{open_listener, open_listeners, ListenOpts, Listener};
use crate::core::log::{self, error};
use crate::core::process::{self, signal_notice, ChildExit, Signals};
use crate::core::time;
use crate::stream::conf::{load_with, LoadOptions};
use crate::stream::cycle::Cycle;
use crate::stream::worker::{Role, Worker};

struct WorkerProc {
    pid: libc::pid_t,
    /// Which of the `reuseport` sockets this worker uses (kept by its replacement).
    slot: usize,
    /// Told to stop (an older configuration, QUIT, WINCH): not started again.
    exiting: bool,
}

pub struct Master {
    opts: LoadOptions,
    cycle: Rc<Cycle>,
    /// The open listening sockets, in `cycle.listening` order: one shared by every
    /// worker, or with `reuseport` one per worker (the kernel then keeps a client on one
    /// worker).
    listeners: Vec<Vec<Listener>>,
    workers: Vec<WorkerProc>,
    signals: Option<Signals>,
    pid_file: String,
    quitting: bool,
    /// TERM or INT: the workers are told to exit, then killed if they do not.
    terminating: Option<Escalation>,
    /// nginx's `ngx_noaccepting`: the workers were stopped by WINCH. Cleared by the HUP
    /// of a rollback, or when the new binary exits (then the workers start again); a
    /// plain reload leaves it, as nginx's does.
    noaccepting: bool,
    /// The new master of a binary upgrade, while it runs.
    new_binary: Option<libc::pid_t>,
    /// Children collected by `wait_children`, for `reap_children`.
    exited: Vec<(libc::pid_t, ChildExit, Option<WorkerProc>)>,
    /// What the turn's signals asked for, done in nginx's order once they are all in.
    pending: Pending,
    argv: Vec<std::ffi::OsString>,
}

/// nginx's timer while workers do not exit on TERM: SIGALRM after 50 ms, then after a
/// delay doubled each time; each alarm sends TERM again, or SIGKILL once the delay is
/// over a second (at 3.15 s).
struct Escalation {
    delay: u64,
    at: Instant,
}

/// The requests nginx's signal handler leaves for its master cycle (`ngx_reconfigure`,
/// `ngx_reopen`, `ngx_change_binary`, `ngx_noaccept`); that the master shuts down is
/// `quitting` and `terminating`, which stay.
#[derive(Default)]
struct Pending {
    /// TERM to the workers (again for every TERM or INT).
    terminate: bool,
    reconfigure: bool,
    reopen: bool,
    change_binary: bool,
    noaccept: bool,
    /// The new binary exited while the workers were stopped (nginx's `ngx_restart`).
    restart: bool,
}

fn exit_text(e: &ChildExit) -> (Level, String) {
    match e {
        ChildExit::Code(c) => (Level::Notice, format!("exited with code {}", c)),
        ChildExit::Signal(s, core) => {
            (Level::Alert, format!("exited on signal {}{}", s, if *core { " (core dumped)" } else { "" }))
        }
    }
}

impl Master {
    pub fn new(
        opts: LoadOptions,
        cycle: Rc<Cycle>,
        listeners: Vec<Listener>,
        signals: Signals,
        pid_file: String,
        argv: Vec<std::ffi::OsString>,
    ) -> Master {
        Master {
            opts,
            cycle,
            listeners: listeners.into_iter().map(|l| vec![l]).collect(),
            workers: Vec::new(),
            signals: Some(signals),
            pid_file,
            quitting: false,
            terminating: None,
            noaccepting: false,
            new_binary: None,
            exited: Vec::new(),
            pending: Pending::default(),
            argv,
        }
    }

    pub fn run(&mut self) -> i32 {
        // Mapped here, before any fork, so every worker (and every later one) shares it.
        crate::core::shm::connection_counter();
        let args: Vec<String> = self.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        crate::core::proctitle::set(&format!("master process {}", args.join(" ")));
        self.start_workers();
        let mut last_reap = Instant::now();
        loop {
            let wait = match &self.terminating {
                Some(t) => t.at.saturating_duration_since(Instant::now()).as_millis().clamp(1, 1000) as i32,
                None => 1000,
            };
            if let Some(s) = &self.signals {
                s.wait(wait);
            }
            time::update();
            let sigs = self.signals.as_ref().map(|s| s.drain()).unwrap_or_default();
            let quiet = sigs.is_empty();
            let mut child_exited = false;
            for (sig, from) in sigs {
                child_exited |= sig == libc::SIGCHLD;
                self.on_signal(sig, from);
                // Children are collected right after their SIGCHLD line, as nginx's
                // handler does (a collection before it could end the master without
                // that line).
                if sig == libc::SIGCHLD {
                    self.wait_children(true);
                }
            }
            // The safety net, should a signal ever be missed, collects only after a
            // second with no signal at all: a turn that handled QUIT must not reap a
            // worker whose SIGCHLD is still on its way.
            let missed = quiet && last_reap.elapsed() > Duration::from_secs(1);
            if missed {
                self.wait_children(false);
            }
            // The collected children are acted on once the turn's signals are in (the
            // QUIT's listeners close after this, as nginx's cycle reaps before it quits).
            let mut sigio = false;
            if child_exited || missed {
                sigio = self.reap_children();
                last_reap = Instant::now();
            }
            if (self.quitting || self.terminating.is_some()) && self.workers.is_empty() {
                break;
            }
            self.master_cycle();
            if sigio {
                // nginx's master gets SIGIO when it closes the channel of a reaped
                // worker while another worker still holds that channel's other end
                // (every worker holds those of the workers it lived beside): the
                // signal waits for its next sigsuspend, right after this turn.
                error(Level::Notice, &signal_notice(libc::SIGIO, 0, ""), None);
            }
        }
        // With a new binary running, the live pid file is its: remove ours (.oldbin).
        match self.new_binary {
            Some(_) => process::remove_pid(&format!("{}.oldbin", self.pid_file)),
            None => process::remove_pid(&self.pid_file),
        }
        error(Level::Notice, "exit", None);
        // ngx_master_process_exit closes the listening sockets after its "exit" line.
        let unlink = self.new_binary.is_none();
        self.close_listeners(unlink);
        0
    }

    fn worker_count(&self) -> usize {
        self.cycle.core.worker_processes.get().max(1)
    }

    /// A socket per worker for `reuseport` listeners (the first is the one opened at
    /// start or kept by a reload), one for the others.
    fn open_reuseport(&mut self) {
        let n = self.worker_count();
        for (i, ls) in self.cycle.listening.iter().enumerate() {
            let Some(socks) = self.listeners.get_mut(i) else { continue };
            if !ls.opts.reuseport {
                // A reload took `reuseport` away: the other workers' sockets close.
                socks.truncate(1);
                continue;
            }
            // A reload added `reuseport` to a socket it keeps: the kept one gets
            // SO_REUSEPORT before the others are opened next to it (nginx's
            // `add_reuseport`).
            if let Some(first) = socks.first() {
                let on = crate::core::conn::set_int_option(first.fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
                if let Err(e) = on {
                    let msg = format!("setsockopt(SO_REUSEPORT) {} failed, ignored", ls.addr);
                    error(Level::Alert, &msg, Some(&e));
                }
            }
            socks.truncate(n);
            while socks.len() < n {
                match open_listener(&ls.addr, &ls.opts) {
                    Ok(s) => socks.push(s),
                    Err(e) => {
                        error(Level::Alert, &format!("bind() to {} failed", ls.addr), Some(&e));
                        break;
                    }
                }
            }
        }
    }

    fn start_workers(&mut self) {
        error(Level::Notice, "start worker processes", None);
        self.open_reuseport();
        for slot in 0..self.worker_count() {
            self.spawn(slot);
        }
        // The workers have theirs; the master writes no access log.
        self.cycle.release_opened();
    }

    fn spawn(&mut self, slot: usize) {
        match process::fork() {
            Ok(0) => self.worker_main(slot),
            Ok(pid) => {
                error(Level::Notice, &format!("start worker process {}", pid), None);
                self.workers.push(WorkerProc { pid, slot, exiting: false });
            }
            Err(e) => error(Level::Alert, "fork() failed while spawning \"worker process\"", Some(&e)),
        }
    }

    /// The child side of `spawn`: become a worker and never return.
    fn worker_main(&mut self, slot: usize) -> ! {
        // The master's signal pipe is not the worker's.
        drop(self.signals.take());
        let code = (|| {
            let signals = match Signals::install() {
                Ok(s) => s,
                Err(e) => {
                    error(Level::Emerg, "pipe() failed", Some(&e));
                    return 2;
                }
            };
            let core = &self.cycle.core;
            // ngx_worker_process_init, in its order: priority, the limits, the user,
            // then the working directory.
            if core.worker_priority != 0 {
                // SAFETY: setpriority on this process.
                if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, core.worker_priority) } == -1 {
                    let e = std::io::Error::last_os_error();
                    error(Level::Alert, &format!("setpriority({}) failed", core.worker_priority), Some(&e));
                }
            }
            if core.worker_rlimit_nofile.is_set() {
                if let Err(e) = process::set_nofile(core.worker_rlimit_nofile.get()) {
                    let n = core.worker_rlimit_nofile.get();
                    error(Level::Alert, &format!("setrlimit(RLIMIT_NOFILE, {}) failed", n), Some(&e));
                }
            }
            if core.worker_rlimit_core.is_set() {
                let n = core.worker_rlimit_core.get();
                let rl = libc::rlimit { rlim_cur: n, rlim_max: n };
                // SAFETY: setrlimit with a filled struct.
                if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &rl) } == -1 {
                    let e = std::io::Error::last_os_error();
                    error(Level::Alert, &format!("setrlimit(RLIMIT_CORE, {}) failed", n), Some(&e));
                }
            }
            // This worker's socket of each listener (its own for `reuseport`).
            let listeners: Vec<Listener> = std::mem::take(&mut self.listeners)
                .into_iter()
                .filter_map(|mut socks| {
                    let i = if socks.len() > 1 { slot.min(socks.len() - 1) } else { 0 };
                    (i < socks.len()).then(|| socks.swap_remove(i))
                })
                .collect();
            crate::core::proctitle::set("worker process");
            let mut w = match Worker::new(Role::Worker, self.cycle.clone(), listeners, signals) {
                Ok(w) => w,
                Err(e) => {
                    error(Level::Emerg, "epoll_create() failed", Some(&e));
                    return 2;
                }
            };
            // Files are open; now give up root, as nginx's workers do (default "nobody").
            let (user, group) = match self.cycle.core.user.option() {
                Some((u, g)) => (u.clone(), g.clone()),
                None => ("nobody".to_string(), None),
            };
            if let Err(e) = process::drop_privileges(&user, group.as_deref(), self.cycle.core.transparent) {
                error(Level::Emerg, &e, None);
                return 2;
            }
            if let Some(cpus) = self.cycle.core.worker_cpus(slot) {
                process::set_affinity(&cpus);
            }
            let wd = &self.cycle.core.working_directory;
            if !wd.is_empty() {
                if let Err(e) = std::env::set_current_dir(wd) {
                    error(Level::Alert, &format!("chdir(\"{}\") failed", wd), Some(&e));
                    return 2;
                }
            }
            w.run();
            // "exit" before the sessions still open close: a fast exit leaves them to the
            // process's end, as nginx's ngx_worker_process_exit, so a client that sees its
            // connection end finds the line logged.
            crate::core::log::worker_exit_line();
            // The sockets close with the process (no drop): the master sees the exit as
            // soon as the connections end.
            std::process::exit(0)
        })();
        // A worker that cannot start exits with 2 at once (nginx's exit(2)), unannounced.
        std::process::exit(code)
    }

    /// Send `sig` to the first `n` workers (the older ones: new workers are pushed last).
    fn signal_workers(&mut self, sig: libc::c_int, mark_exiting: bool, n: usize) {
        for w in self.workers.iter_mut().take(n) {
            // nginx's ngx_signal_worker_processes: a worker already told to exit is
            // not told to shut down again.
            if w.exiting && sig == libc::SIGQUIT {
                continue;
            }
            if mark_exiting {
                w.exiting = true;
            }
            if let Err(e) = process::kill(w.pid, sig) {
                error(Level::Alert, &format!("kill({}, {}) failed", w.pid, sig), Some(&e));
            }
        }
        // A worker collected this turn but not yet reaped is not respawned after this
        // (nginx reaps first, respawning it, then tells the new one too).
        if mark_exiting {
            for w in self.exited.iter_mut().filter_map(|(_, _, w)| w.as_mut()) {
                w.exiting = true;
            }
        }
    }

    /// A signal's line and what it asks for (nginx's `ngx_signal_handler`); the work is
    /// done by `master_cycle`.
    fn on_signal(&mut self, sig: libc::c_int, from: i32) {
        let action = match sig {
            libc::SIGHUP => {
                self.pending.reconfigure = true;
                ", reconfiguring"
            }
            libc::SIGQUIT => {
                self.quitting = true;
                ", shutting down"
            }
            libc::SIGTERM | libc::SIGINT => {
                let at = Instant::now() + Duration::from_millis(50);
                self.terminating.get_or_insert(Escalation { delay: 50, at });
                self.pending.terminate = true;
                ", exiting"
            }
            libc::SIGUSR1 => {
                self.pending.reopen = true;
                ", reopening logs"
            }
            libc::SIGWINCH if process::daemonized() => {
                self.pending.noaccept = true;
                ", stop accepting connections"
            }
            // As nginx: not in a new binary while the old master runs (nor in a master
            // that was not daemonized: its parent is unchanged too), nor in an old master
            // whose new binary runs.
            libc::SIGUSR2 if self.new_binary.is_some_and(|p| p > 0) || process::parent_unchanged() => ", ignoring",
            libc::SIGUSR2 => {
                self.pending.change_binary = true;
                ", changing binary"
            }
            // SIGCHLD is acted on by the caller; SIGALRM and SIGIO from anyone are logged
            // and change nothing here (nginx's master uses them only for its own timers
            // and channels).
            _ => "",
        };
        error(Level::Notice, &signal_notice(sig, from, action), None);
        if action == ", ignoring" {
            error(Level::Crit, crate::core::process::USR2_IGNORED, None);
        }
    }

    /// The work the turn's signals asked for, in nginx's `ngx_master_process_cycle`
    /// order (the children were reaped first). A master that shuts down does nothing
    /// else: a HUP, USR1, USR2 or WINCH then is logged and left.
    fn master_cycle(&mut self) {
        if let Some(t) = &mut self.terminating {
            let mut sig = std::mem::take(&mut self.pending.terminate).then_some(libc::SIGTERM);
            if Instant::now() >= t.at {
                // The alarm nginx's master sets for itself, logged by its handler.
                error(Level::Notice, &signal_notice(libc::SIGALRM, 0, ""), None);
                sig = Some(if t.delay > 1000 { libc::SIGKILL } else { libc::SIGTERM });
                t.delay *= 2;
                t.at = Instant::now() + Duration::from_millis(t.delay);
            }
            if let Some(sig) = sig {
                self.signal_workers(sig, true, usize::MAX);
            }
            return;
        }
        if self.quitting {
            self.signal_workers(libc::SIGQUIT, true, usize::MAX);
            // Stop taking connections at once (ngx_close_listening_sockets): with the
            // workers' copies closed too, new clients are refused, not left queued.
            // After the turn's reap, so a new binary that exited just before the QUIT
            // (a rollback) no longer keeps the unix socket files, now this master's
            // alone to delete.
            if !self.listeners.is_empty() {
                let unlink = self.new_binary.is_none();
                self.close_listeners(unlink);
            }
            return;
        }
        if std::mem::take(&mut self.pending.reconfigure) {
            self.reload();
        }
        if std::mem::take(&mut self.pending.restart) {
            self.start_workers();
        }
        if std::mem::take(&mut self.pending.reopen) {
            error(Level::Notice, "reopening logs", None);
            self.reopen_logs();
            self.signal_workers(libc::SIGUSR1, false, usize::MAX);
        }
        if std::mem::take(&mut self.pending.change_binary) {
            error(Level::Notice, "changing binary", None);
            self.change_binary();
        }
        if std::mem::take(&mut self.pending.noaccept) {
            self.noaccepting = true;
            self.signal_workers(libc::SIGQUIT, true, usize::MAX);
        }
    }

    /// Collect the exited children and log their ends (nginx's SIGCHLD handler,
    /// `ngx_process_get_status`, right after the signal's line); `reap_children` acts on
    /// them once the turn's signals are all in.
    fn wait_children(&mut self, on_signal: bool) {
        let mut one = false;
        loop {
            let (pid, how) = match process::reap() {
                Ok(Some(child)) => child,
                Ok(None) => break,
                // A SIGCHLD with no child left at all (say, sent by hand after WINCH).
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                    if on_signal && !one {
                        error(Level::Info, "waitpid() failed", Some(&e));
                    }
                    break;
                }
                Err(e) => {
                    error(Level::Alert, "waitpid() failed", Some(&e));
                    break;
                }
            };
            one = true;
            // ngx_shmtx_force_unlock: a worker that died holding the accept mutex.
            if let Some(word) = self.cycle.accept_mutex.as_ref().and_then(|m| m.lock_at(0)) {
                let held = std::sync::atomic::Ordering::AcqRel;
                let _ = word.compare_exchange(pid as u32, 0, held, std::sync::atomic::Ordering::Relaxed);
            }
            let (level, text) = exit_text(&how);
            // Out of the list at once: the turn's other signals are not sent to it.
            let worker = self.workers.iter().position(|w| w.pid == pid).map(|i| self.workers.remove(i));
            let name = match () {
                _ if Some(pid) == self.new_binary => "new binary process",
                _ if worker.is_some() => "worker process",
                _ => "unknown process",
            };
            error(level, &format!("{} {} {}", name, pid, text), None);
            // Exit code 2 is a worker that cannot work (nginx's fatal code): not again.
            if worker.is_some() && matches!(how, ChildExit::Code(2)) {
                error(
                    Level::Alert,
                    &format!("worker process {} exited with fatal code 2 and cannot be respawned", pid),
                    None,
                );
            }
            self.exited.push((pid, how, worker));
        }
    }

    /// Act on the children `wait_children` collected (`ngx_reap_children`); true when a
    /// reaped worker leaves another worker of its time running (nginx's master then logs
    /// SIGIO, see `run`).
    fn reap_children(&mut self) -> bool {
        let before: Vec<libc::pid_t> = self.workers.iter().map(|w| w.pid).collect();
        let mut reaped_worker = false;
        for (pid, how, worker) in std::mem::take(&mut self.exited) {
            if Some(pid) == self.new_binary {
                self.new_binary = None;
                // The upgrade ended (rollback): this master's pid file is the live one again.
                let old = format!("{}.oldbin", self.pid_file);
                if let Err(e) = std::fs::rename(&old, &self.pid_file) {
                    let msg = format!(
                        "rename() {} back to {} failed after the new binary process \"{}\" exited",
                        old,
                        self.pid_file,
                        self.argv0()
                    );
                    error(Level::Alert, &msg, Some(&e));
                }
                // Our workers were stopped for the new binary (WINCH): they start again
                // once this turn's reconfiguration is done.
                if std::mem::take(&mut self.noaccepting) {
                    self.pending.restart = true;
                }
                continue;
            }
            let Some(w) = worker else { continue };
            reaped_worker = true;
            // A worker that died on its own is replaced, unless it cannot work.
            let stopping = self.quitting || self.terminating.is_some();
            if !w.exiting && !stopping && !matches!(how, ChildExit::Code(2)) {
                self.spawn(w.slot);
            }
        }
        reaped_worker && self.workers.iter().any(|w| before.contains(&w.pid))
    }

    /// HUP: read the configuration again; on success start new workers on it and let
    /// the old ones drain. On error, log it and keep serving with the old one.
    fn reload(&mut self) {
        // During a binary upgrade HUP means "take over again" (the rollback): start the
        // workers of the running configuration, read nothing.
        if self.new_binary.is_some() {
            self.noaccepting = false;
            self.start_workers();
            return;
        }
        error(Level::Notice, "reconfiguring", None);
        let cycle = match load_with(&self.opts, Some(&self.cycle)) {
            Ok(c) => c,
            Err(e) => {
                e.log();
                return;
            }
        };
        if let Some(w) = cycle.core.affinity_warning() {
            error(Level::Warn, w, None);
        }
        // (A new pid file name: the load moved the file, see `conf::after_parse`. Until
        // a reload succeeds, the old name is the one removed at exit, as in nginx: after
        // a failed one that moved the file, an alert.)
        let pid = cycle.core.pid.get();
        // Sockets are kept by address and type (TCP and UDP may share an address).
        let old_opts: Vec<((Addr, bool), ListenOpts)> =
            self.cycle.listening.iter().map(|l| ((l.addr.clone(), l.opts.udp), l.opts.clone())).collect();
        let mut old: Vec<((Addr, bool), Vec<Listener>)> = std::mem::take(&mut self.listeners)
            .into_iter()
            .zip(self.cycle.listening.iter().map(|l| (l.addr.clone(), l.opts.udp)))
            .map(|(l, a)| (a, l))
            .collect();
        // The kept sockets (a reuseport listener keeps its per-worker ones), then the new
        // addresses opened as nginx opens them.
        let mut kept: Vec<Option<Vec<Listener>>> = Vec::new();
        for l in &cycle.listening {
            let key = (l.addr.clone(), l.opts.udp);
            kept.push(old.iter().position(|(a, _)| *a == key).map(|i| old.remove(i).1));
        }
        let want: Vec<(&Addr, &ListenOpts)> =
            cycle.listening.iter().zip(&kept).filter(|(_, k)| k.is_none()).map(|(l, _)| (&l.addr, &l.opts)).collect();
        // ngx_init_cycle writes to the new configuration's log once its files are open:
        // a socket that cannot be opened is reported there (at its level).
        log::set_main(cycle.error_log.clone());
        let Some(mut opened) = open_listeners(&want, Vec::new()).map(|v| v.into_iter()) else {
            log::set_main(self.cycle.error_log.clone());
            // Keep the old configuration: put its sockets back in order.
            let mut all: Vec<((Addr, bool), Vec<Listener>)> = old
                .into_iter()
                .chain(cycle.listening.iter().zip(kept).filter_map(|(l, k)| Some(((l.addr.clone(), l.opts.udp), k?))))
                .collect();
            self.listeners = self
                .cycle
                .listening
                .iter()
                .filter_map(|x| {
                    let key = (x.addr.clone(), x.opts.udp);
                    all.iter().position(|(a, _)| *a == key).map(|i| all.remove(i).1)
                })
                .collect();
            return;
        };
        let next: Vec<((Addr, bool), Vec<Listener>)> = cycle
            .listening
            .iter()
            .zip(kept)
            .filter_map(|(l, k)| Some(((l.addr.clone(), l.opts.udp), k.or_else(|| opened.next().map(|s| vec![s]))?)))
            .collect();
        self.listeners = next.into_iter().map(|(_, l)| l).collect();
        self.pid_file = pid;
        self.cycle = Rc::new(cycle);
        log::set_main(self.cycle.error_log.clone());
        // The kept sockets take the new configuration's options (the new ones have them).
        for (l, socks) in self.cycle.listening.iter().zip(&self.listeners) {
            let key = (l.addr.clone(), l.opts.udp);
            if let Some((_, was)) = old_opts.iter().find(|(k, _)| *k == key) {
                for sock in socks {
                    crate::core::conn::reconfigure_listening(sock, &l.addr, was, &l.opts);
                }
            }
        }
        crate::stream::conf::redirect_stderr(&self.cycle);
        // nginx's event module says it again for every cycle it builds, once the
        // listening sockets are open, into the new cycle's log.
        error(Level::Notice, "using the \"epoll\" event method", None);
        if let Some(w) = self.cycle.core.nofile_warning() {
            error(Level::Warn, &w, None);
        }
        // Sockets the new configuration does not listen on close with the old workers
        // (ngx_init_cycle closes them after the modules' init, into the new log).
        for ((a, _), socks) in old {
            drop(socks);
            if let Addr::Unix(p) = &a {
                error(Level::Warn, &format!("deleting socket {}", crate::core::addr::path_text(p)), None);
                process::unlink_socket(p);
            }
        }
        // As nginx: the new workers first, a tenth of a second for them to start
        // accepting, then the old ones are told to quit.
        let old_workers = self.workers.len();
        self.start_workers();
        std::thread::sleep(Duration::from_millis(100));
        self.signal_workers(libc::SIGQUIT, true, old_workers);
    }

    /// USR1 in the master: reopen its logs, and create the access log files owned by
    /// the worker user so that workers (no longer root) can reopen them (as nginx's
    /// `ngx_reopen_files` does).
    fn reopen_logs(&mut self) {
        let user = self.cycle.core.user.option().map(|(u, _)| u.clone()).unwrap_or_else(|| "nobody".into());
        // One emerg line per file that cannot be opened, in nginx's order.
        for p in crate::stream::conf::reopen_order(&self.cycle) {
            match process::create_owned(&p, &user) {
                Err(e) => error(Level::Emerg, &format!("open() \"{}\" failed", p), Some(&e)),
                Ok(()) => {
                    for l in &self.cycle.error_logs {
                        let _ = l.reopen_path(&p);
                    }
                }
            }
        }
        // stderr follows the reopened error log (nginx's ngx_reopen_files ends so).
        crate::stream::conf::redirect_stderr(&self.cycle);
    }

    fn close_listeners(&mut self, unlink: bool) {
        for (l, ls) in std::mem::take(&mut self.listeners).into_iter().zip(self.cycle.listening.iter()) {
            if let (true, Addr::Unix(p)) = (unlink, &ls.addr) {
                process::delete_unix_socket(p);
            }
            drop(l);
        }
    }

    /// USR2: start the binary again with the listening sockets in `NGINX`, and rename
    /// the pid file to `.oldbin` (`ngx_exec_new_binary`).
    fn change_binary(&mut self) {
        // The first socket of each listener goes over; the new master opens the other
        // `reuseport` ones itself.
        let fds: Vec<i32> = self.listeners.iter().filter_map(|s| s.first()).map(|l| l.fd()).collect();
        let env: String = fds.iter().map(|f| format!("{};", f)).collect();
        // As nginx, the program is argv[0] as started (execve, no PATH search): after
        // the binary file was replaced, that is the new one.
        let exe = self.argv0();
        let old = format!("{}.oldbin", self.pid_file);
        // A failed attempt leaves nginx's "new binary" at -1: a later HUP restarts the
        // workers without reading the configuration, and the exit deletes .oldbin.
        if let Err(e) = std::fs::rename(&self.pid_file, &old) {
            let msg =
                format!("rename() {} to {} failed before executing new binary process \"{}\"", self.pid_file, old, exe);
            error(Level::Alert, &msg, Some(&e));
            self.new_binary = Some(-1);
            return;
        }
        match process::fork() {
            Ok(0) => {
                for &fd in &fds {
                    process::set_inheritable(fd, true);
                }
                let err = exec(&self.argv, &env);
                error(
                    Level::Alert,
                    &format!("execve() failed while executing new binary process \"{}\"", exe),
                    Some(&err),
                );
                std::process::exit(1);
            }
            Ok(pid) => {
                error(Level::Notice, &format!("start new binary process {}", pid), None);
                self.new_binary = Some(pid);
            }
            Err(e) => {
                error(Level::Alert, "fork() failed while spawning \"new binary process\"", Some(&e));
                if let Err(e) = std::fs::rename(&old, &self.pid_file) {
                    let msg = format!(
                        "rename() {} back to {} failed after an attempt to execute new binary process \"{}\"",
                        old, self.pid_file, exe
                    );
                    error(Level::Alert, &msg, Some(&e));
                }
                self.new_binary = Some(-1);
            }
        }
    }

    /// The program as it was started (nginx's `ngx_argv[0]`), as log text: its bytes
    /// are written as they are.
    fn argv0(&self) -> String {
        use std::os::unix::ffi::OsStrExt;
        self.argv.first().map(|a| crate::core::conf::parser::bytes_to_text(a.as_bytes())).unwrap_or_default()
    }
}

/// Run `argv` again, `argv[0]` as the program (its bytes as they are).
fn exec(argv: &[std::ffi::OsString], fds: &str) -> std::io::Error {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let exe = argv.first().cloned().unwrap_or_default();
    // execve(2) takes a name without a slash as a path (Command would search PATH).
    let path = if exe.as_bytes().contains(&b'/') {
        std::path::PathBuf::from(&exe)
    } else {
        std::path::Path::new(".").join(&exe)
    };
    let mut cmd = std::process::Command::new(path);
    cmd.arg0(&exe);
    cmd.args(argv.iter().skip(1)).env(crate::core::process::INHERITED_ENV, fds);
    cmd.exec()
}
