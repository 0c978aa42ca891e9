//! Master and worker processes as nginx runs them: HUP reload (new connections follow
//! the new configuration while sessions opened before it run to their end; a broken
//! configuration keeps the old one and logs `[emerg]`), 50 reloads under load, USR1
//! log reopening, the USR2 + WINCH + QUIT binary upgrade under load and its rollbacks,
//! a killed worker respawned, `-s quit` and `-s stop`, `worker_processes auto`, `user`,
//! `worker_rlimit_nofile`, `worker_shutdown_timeout`, `worker_connections`, and running
//! out of descriptors under a low `ulimit -n`.
//!
//! Every test owns a `Run`: its Drop SIGKILLs every process the test started — the
//! master (in the foreground or daemonized), its workers, a new-binary master and its
//! workers — found through the pid files and through the test's prefix, which is on the
//! command line of each of them, so a failing assert leaks nothing.

use std::collections::BTreeSet;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{bin, console, exchange, free_port, run as run_sluice, wait_for, wait_in_epoll, Sluice, TempDir};

const PID: &str = "sluice.pid";
const OLDBIN: &str = "sluice.pid.oldbin";
const SEC: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------
// Processes, seen through /proc.

/// `(state, ppid, utime + stime in clock ticks)` of a process.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    // (The command name may have bytes that are not UTF-8.)
    let s = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/stat")).ok()?).into_owned();
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((state, ppid, utime + stime))
}

/// Running (a zombie has ended; only its parent has not looked yet).
fn alive(pid: i32) -> bool {
    pid > 0 && matches!(stat(pid), Some((s, _, _)) if s != 'Z' && s != 'X')
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect())
        .unwrap_or_default()
}

/// The live children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&c| matches!(stat(c), Some((s, pp, _)) if pp == pid && s != 'Z' && s != 'X'))
        .collect()
}

/// The workers of a master: its children, less the new-binary master(s) in `not`.
fn workers_of(master: i32, not: &[i32]) -> Vec<i32> {
    let mut w: Vec<i32> = children(master).into_iter().filter(|p| !not.contains(p)).collect();
    w.sort_unstable();
    w
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Whether `pid` holds a descriptor open on a path under `prefix` (its error log): a
/// worker's title no longer names the prefix, and an orphaned one has no master to be
/// found under.
fn holds_file_under(pid: i32, prefix: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with(prefix)))
        })
        .unwrap_or(false)
}

fn cpu_secs(pid: i32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    stat(pid).map(|(_, _, t)| t as f64 / hz).unwrap_or(0.0)
}

/// The value of `key:` in /proc/PID/status (e.g. the real uid from "Uid").
fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(|r| r.trim().to_string()))
}

/// The soft "Max open files" limit of a process.
fn nofile_limit(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// How many of a process's descriptors are below `below` (what RLIMIT_NOFILE counts
/// against: a new descriptor takes the lowest free number under the limit).
fn fds_below(pid: i32, below: usize) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_str().and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n < below))
                .count()
        })
        .unwrap_or(0)
}

/// Set a running process's RLIMIT_NOFILE (prlimit(2); we are root).
fn set_nofile(pid: i32, n: usize) {
    let rl = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
    // SAFETY: prlimit(2) on a process this test started, with a struct we own.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &rl, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit({pid}): {}", io::Error::last_os_error());
}

fn signal(pid: i32, sig: i32) {
    // Never 0 or -1: those would signal a whole group or every process.
    assert!(pid > 1, "refusing to signal pid {pid}");
    // SAFETY: kill(2) to a sluice process this test started.
    unsafe {
        libc::kill(pid, sig);
    }
}

// ---------------------------------------------------------------------------------
// A sluice of this test, and the guard that ends it.

/// The main-context lines of a master-process configuration (`%%PREFIX%%` is the test's
/// directory).
fn head(daemon: bool, workers: &str) -> String {
    format!(
        "daemon {};\nmaster_process on;\nworker_processes {workers};\nuser root;\npid %%PREFIX%%sluice.pid;\n\
         error_log %%PREFIX%%error.log info;\n",
        if daemon { "on" } else { "off" }
    )
}

struct Run {
    dir: TempDir,
    child: Option<Child>,
}

impl Run {
    fn start(conf: &str) -> Run {
        Self::start_with(conf, None, &[], false)
    }

    /// `start`, with directories `dirs` made in the prefix first.
    fn start_in(conf: &str, dirs: &[&str]) -> Run {
        Self::start_with(conf, None, dirs, false)
    }

    /// Start `sluice -p PREFIX -c sluice.conf` (with RLIMIT_NOFILE `nofile`, if given;
    /// from a copy of the binary at `COPY` under PREFIX if `copy`) and wait for its pid
    /// file; with `daemon on`, also for the started process to exit, as the daemon's
    /// parent does.
    fn start_with(conf: &str, nofile: Option<u64>, dirs: &[&str], copy: bool) -> Run {
        let mut run = Run { dir: TempDir::new("process"), child: None };
        for d in dirs {
            std::fs::create_dir_all(run.path(d)).expect("mkdir");
        }
        run.write_conf(conf);
        let stderr = std::fs::File::create(run.path("stderr.txt")).expect("stderr file");
        let program = if copy {
            std::fs::create_dir_all(run.path("sbin")).expect("mkdir sbin");
            copy_binary(&run.copy());
            run.copy()
        } else {
            bin()
        };
        let mut cmd = Command::new(program);
        cmd.arg("-p").arg(run.prefix()).arg("-c").arg("sluice.conf");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(stderr));
        if let Some(n) = nofile {
            // SAFETY: only setrlimit(2), async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        run.child = Some(cmd.spawn().expect("spawn sluice"));
        let daemon = conf.contains("daemon on;");
        let started = wait_for(Duration::from_secs(10), || {
            let exited = matches!(run.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
            let pid_ok = run.read_pid(PID).is_some_and(alive);
            if daemon {
                pid_ok && exited
            } else {
                pid_ok || exited
            }
        });
        let pid = run.read_pid(PID);
        let own = run.child.as_ref().map(|c| c.id() as i32);
        let ok = started && pid.is_some_and(alive) && (daemon || pid == own);
        assert!(ok, "sluice did not start (pid file: {pid:?}, process {own:?})\n{}", run.ctx());
        run
    }

    fn prefix(&self) -> String {
        self.dir.prefix()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where `start_with(.., copy = true)` runs its copy of the binary from: a name with
    /// a byte that is not UTF-8, which nginx's execve of argv[0] keeps as it is.
    fn copy(&self) -> PathBuf {
        use std::os::unix::ffi::OsStringExt;
        self.path("sbin").join(std::ffi::OsString::from_vec(b"sluic\xe9".to_vec()))
    }

    fn write_conf(&self, conf: &str) {
        std::fs::write(self.path("sluice.conf"), conf.replace("%%PREFIX%%", &self.prefix())).expect("write conf");
    }

    fn read_pid(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.path(name)).ok()?.trim().parse().ok()
    }

    fn master(&self) -> i32 {
        self.read_pid(PID).unwrap_or_else(|| panic!("no pid file\n{}", self.ctx()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("error.log")).unwrap_or_default()
    }

    /// `sluice -p PREFIX -c sluice.conf ARGS` (e.g. `-s quit`), bounded.
    fn cli(&self, args: &[&str]) -> Output {
        let prefix = self.prefix();
        let mut all = vec!["-p", prefix.as_str(), "-c", "sluice.conf"];
        all.extend_from_slice(args);
        run_sluice(&all, self.dir.path())
    }

    /// Wait for the process this test spawned to exit (a foreground master).
    fn wait_child(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut st = None;
        wait_for(timeout, || {
            st = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            st.is_some()
        });
        st
    }

    /// Every live process of this test: named by a pid file, carrying the prefix on its
    /// command line or holding a file under it open, and all their descendants.
    fn processes(&self) -> BTreeSet<i32> {
        let prefix = self.prefix();
        let me = std::process::id() as i32;
        let mut set: BTreeSet<i32> = BTreeSet::new();
        for name in [PID, OLDBIN] {
            // A pid file may outlive its process; the pid is ours only if the process
            // still runs with our prefix.
            if let Some(p) = self.read_pid(name) {
                if p > 1 && cmdline(p).contains(&prefix) {
                    set.insert(p);
                }
            }
        }
        for p in all_pids() {
            if p != me && (cmdline(p).contains(&prefix) || holds_file_under(p, &prefix)) {
                set.insert(p);
            }
        }
        loop {
            let more: Vec<i32> = set.iter().flat_map(|&p| children(p)).filter(|c| !set.contains(c)).collect();
            if more.is_empty() {
                break;
            }
            set.extend(more);
        }
        set.retain(|&p| p != me && alive(p));
        set
    }

    /// What a failed assertion shows: pid files, processes, stderr, the log's tail.
    fn ctx(&self) -> String {
        let procs: Vec<String> =
            self.processes().iter().map(|&p| format!("{p} (ppid {})", stat(p).map(|s| s.1).unwrap_or(0))).collect();
        // Session lines ([info]) drown the process story: notices and worse only.
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" [info] ")).collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        format!(
            "--- pid files: {PID}={:?} {OLDBIN}={:?}; processes: [{}]\n--- stderr:\n{}--- error.log (last 80 lines above [info]):\n{}\n",
            std::fs::read_to_string(self.path(PID)).ok().map(|s| s.trim().to_string()),
            std::fs::read_to_string(self.path(OLDBIN)).ok().map(|s| s.trim().to_string()),
            procs.join(", "),
            std::fs::read_to_string(self.path("stderr.txt")).unwrap_or_default(),
            tail
        )
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Masters may fork replacements while we kill: stop them all first (a stopped
        // master forks nothing, and a worker it forked just before is found as its
        // child), then kill; repeat until nothing is left. (Killed first, a master's
        // newest worker was orphaned under a title without the prefix, and left
        // running.)
        for _ in 0..20 {
            let procs = self.processes();
            if procs.is_empty() {
                break;
            }
            for &p in &procs {
                signal(p, libc::SIGSTOP);
            }
            for p in self.processes().union(&procs) {
                signal(*p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Log lines of process `pid` containing `text`.
fn pid_lines(log: &str, pid: i32, text: &str) -> usize {
    let tag = format!(" {pid}#");
    log.lines().filter(|l| l.contains(&tag) && l.contains(text)).count()
}

fn count(log: &str, text: &str) -> usize {
    log.lines().filter(|l| l.contains(text)).count()
}

// ---------------------------------------------------------------------------------
// Backends and clients.

fn backend<F: Fn(TcpStream) + Send + Sync + 'static>(f: F) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let port = l.local_addr().expect("addr").port();
    let f = Arc::new(f);
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let f = f.clone();
            std::thread::spawn(move || f(c));
        }
    });
    port
}

/// A backend that greets each connection with `TAG\n`, then echoes until the end.
fn tagged(tag: &'static str) -> u16 {
    backend(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(60))).ok();
        c.set_write_timeout(Some(Duration::from_secs(30))).ok();
        if c.write_all(format!("{tag}\n").as_bytes()).is_err() {
            return;
        }
        let mut buf = [0u8; 65536];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// The byte at offset `i` of every stream the test sends or expects.
fn pat(i: usize) -> u8 {
    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u8
}

/// A backend that reads `N DELAY_MS\n` and sends N bytes of `pat` in 64 KiB pieces,
/// DELAY_MS apart, then closes: a long download.
fn source() -> u16 {
    backend(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(30))).ok();
        c.set_write_timeout(Some(Duration::from_secs(30))).ok();
        let Ok(line) = read_line(&mut c) else { return };
        let mut it = line.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
        let (n, delay) = (it.next().unwrap_or(0) as usize, it.next().unwrap_or(0));
        let mut chunk = vec![0u8; 65536];
        let mut off = 0;
        while off < n {
            let k = (n - off).min(chunk.len());
            for (i, b) in chunk[..k].iter_mut().enumerate() {
                *b = pat(off + i);
            }
            if c.write_all(&chunk[..k]).is_err() {
                return;
            }
            off += k;
            std::thread::sleep(Duration::from_millis(delay));
        }
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn dial(port: u16) -> io::Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// One line, read a byte at a time so that nothing after it is consumed.
fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            let got = String::from_utf8_lossy(&out).into_owned();
            return Err(io::Error::new(ErrorKind::UnexpectedEof, format!("closed (after {got:?})")));
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(b[0]);
        if out.len() > 4096 {
            return Err(io::Error::other("line too long"));
        }
    }
}

/// The tag of the `tagged` backend a new connection reaches.
fn greet(port: u16) -> io::Result<String> {
    read_line(&mut dial(port)?)
}

/// A short session to a `tagged` backend: the greeting, then `msg` there and back.
fn short_session(port: u16, msg: &str) -> io::Result<String> {
    let mut s = dial(port)?;
    let tag = read_line(&mut s)?;
    s.write_all(format!("{msg}\n").as_bytes())?;
    let back = read_line(&mut s)?;
    if back != msg {
        return Err(io::Error::other(format!("echo {back:?} for {msg:?}")));
    }
    Ok(tag)
}

/// Send `total` bytes through an echoing session, 16 KiB at a time, and check them back.
fn echo_check(s: &mut TcpStream, total: usize) -> io::Result<()> {
    let mut back = vec![0u8; 16384];
    let mut done = 0;
    while done < total {
        let k = (total - done).min(back.len());
        let chunk: Vec<u8> = (done..done + k).map(pat).collect();
        s.write_all(&chunk)?;
        s.read_exact(&mut back[..k])?;
        if back[..k] != chunk[..] {
            return Err(io::Error::other(format!("echoed bytes differ in {done}..{}", done + k)));
        }
        done += k;
    }
    Ok(())
}

/// A download of `n` bytes from `source`: all of them, in order, or why not.
fn download(port: u16, n: usize, delay_ms: u64) -> Result<(), String> {
    let mut s = dial(port).map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("{n} {delay_ms}\n").as_bytes()).map_err(|e| format!("request: {e}"))?;
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                if let Some(i) = (0..k).find(|&i| buf[i] != pat(got + i)) {
                    return Err(format!("corrupt byte at offset {}", got + i));
                }
                got += k;
            }
            Err(e) => return Err(format!("after {got} of {n} bytes: {e}")),
        }
    }
    if got != n {
        return Err(format!("truncated: {got} of {n} bytes"));
    }
    Ok(())
}

/// Client load: threads doing short sessions and long downloads until `finish`.
struct Load {
    stop: Arc<AtomicBool>,
    short_ok: Arc<AtomicUsize>,
    long_ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
    t0: Instant,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            short_ok: Arc::new(AtomicUsize::new(0)),
            long_ok: Arc::new(AtomicUsize::new(0)),
            failures: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
            t0: Instant::now(),
        }
    }

    /// `n` threads of back-to-back short sessions (a few ms apart, to spare ports).
    fn short(&mut self, port: u16, n: usize) {
        for t in 0..n {
            let (stop, ok, failures, t0) = (self.stop.clone(), self.short_ok.clone(), self.failures.clone(), self.t0);
            self.threads.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let msg = format!("t{t}-{i}");
                    match short_session(port, &msg) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let at = t0.elapsed().as_secs_f64();
                            failures.lock().expect("lock").push(format!("short {msg} at {at:.2}s: {e}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(4));
                }
            }));
        }
    }

    /// `n` threads of back-to-back downloads of `bytes` paced by `delay_ms`.
    fn long(&mut self, port: u16, n: usize, bytes: usize, delay_ms: u64) {
        for t in 0..n {
            let (stop, ok, failures, t0) = (self.stop.clone(), self.long_ok.clone(), self.failures.clone(), self.t0);
            self.threads.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let start = t0.elapsed().as_secs_f64();
                    match download(port, bytes, delay_ms) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let at = t0.elapsed().as_secs_f64();
                            failures
                                .lock()
                                .expect("lock")
                                .push(format!("download {t}-{i} ({start:.2}s..{at:.2}s): {e}"));
                        }
                    }
                }
            }));
        }
    }

    /// Wait for `n` more successful short sessions: the load really runs.
    fn progress(&self, n: usize) -> bool {
        let base = self.short_ok.load(Ordering::Relaxed);
        wait_for(Duration::from_secs(15), || self.short_ok.load(Ordering::Relaxed) >= base + n)
    }

    /// Stop, wait for the sessions under way to end; (short ok, long ok, failures).
    fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        let failures = std::mem::take(&mut *self.failures.lock().expect("lock"));
        (self.short_ok.load(Ordering::Relaxed), self.long_ok.load(Ordering::Relaxed), failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn proxy_conf(head: &str, port: u16, up: u16) -> String {
    format!("{head}events {{}}\nstream {{\n  server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{up}; }}\n}}\n")
}

// ---------------------------------------------------------------------------------
// Reload.

/// HUP (`-s reload`) sends new connections to the new configuration's upstream while a
/// session opened before it keeps relaying on its old worker, which exits after it.
#[test]
fn reload_moves_new_connections_while_old_session_keeps_relaying() {
    let (a, b) = (tagged("A"), tagged("B"));
    let p = free_port();
    let run = Run::start(&proxy_conf(&head(false, "2"), p, a));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "2 workers\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "A")), "not serving\n{}", run.ctx());
    let old = workers_of(master, &[]);

    let mut long = dial(p).expect("connect");
    assert_eq!(read_line(&mut long).expect("greeting"), "A");
    echo_check(&mut long, 64 << 10).expect("relay before the reload");

    run.write_conf(&proxy_conf(&head(false, "2"), p, b));
    let out = run.cli(&["-s", "reload"]);
    assert!(out.status.success(), "-s reload: {}\n{}", String::from_utf8_lossy(&out.stderr), run.ctx());
    assert!(
        wait_for(10 * SEC, || old.iter().all(|&w| pid_lines(&run.log(), w, "gracefully shutting down") > 0)),
        "the old workers were not told to stop accepting\n{}",
        run.ctx()
    );
    assert!(
        wait_for(10 * SEC, || workers_of(master, &[]).iter().filter(|w| !old.contains(w)).count() == 2),
        "no 2 new workers after the reload\n{}",
        run.ctx()
    );
    for i in 0..20 {
        let tag = greet(p);
        assert_eq!(tag.as_deref().ok(), Some("B"), "new connection {i} after the reload: {tag:?}\n{}", run.ctx());
    }

    echo_check(&mut long, 1 << 20).unwrap_or_else(|e| panic!("the old session stopped relaying: {e}\n{}", run.ctx()));
    assert!(old.iter().any(|&w| alive(w)), "the old worker exited with a session open\n{}", run.ctx());
    drop(long);
    assert!(
        wait_for(10 * SEC, || old.iter().all(|&w| !alive(w))),
        "old workers still run after their last session ended\n{}",
        run.ctx()
    );
    assert_eq!(workers_of(master, &[]).len(), 2, "{}", run.ctx());
}

/// Connection numbers (`$connection`, `*N`) are one sequence for all workers and go on
/// across a reload, as nginx's shared `ngx_connection_counter` (seen side by side with
/// nginx 1.22.1: the first session after a reload was *3, not *1).
#[test]
fn connection_numbers_are_shared_by_workers_and_survive_reload() {
    let p = free_port();
    let s = Sluice::start_master(
        2,
        &format!("events {{}} stream {{ server {{ listen 127.0.0.1:{p} reuseport; return \"$connection $pid\"; }} }}"),
    );
    // (number, worker pid) of one connection.
    let ask = || -> Option<(u64, String)> {
        let t = String::from_utf8(exchange(p, b"")).ok()?;
        let (n, pid) = t.split_once(' ')?;
        Some((n.parse().ok()?, pid.to_string()))
    };
    let mut seen = BTreeSet::new();
    let mut pids = BTreeSet::new();
    assert!(wait_for(10 * SEC, || ask().is_some()), "not serving\n{}", s.error_log());
    for _ in 0..60 {
        let (n, pid) = ask().expect("an answer");
        assert!(seen.insert(n), "connection number {n} given twice: {seen:?}");
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 2, "both workers answered (reuseport): {pids:?}");
    let before = *seen.last().expect("numbers");
    s.signal(libc::SIGHUP);
    assert!(
        wait_for(10 * SEC, || ask().is_some_and(|(_, pid)| !pids.contains(&pid))),
        "no new worker after the reload\n{}",
        s.error_log()
    );
    for _ in 0..20 {
        if let Some((n, pid)) = ask().filter(|(_, pid)| !pids.contains(pid)) {
            assert!(n > before, "a new worker numbered a connection {n}, not after {before}");
            assert!(seen.insert(n), "connection number {n} given twice (new worker {pid})");
        }
    }
}

/// An address in use at start is tried five times, 500 ms apart, as nginx's
/// ngx_open_listening_sockets does, with its lines (recorded side by side: the same log
/// lines, the same 2.5 s); then sluice exits 1. Any other bind error fails at once.
#[test]
fn bind_in_use_is_tried_five_times() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let dir = TempDir::new("bind-retry");
    std::fs::write(
        dir.join("s.conf"),
        format!(
            "daemon off; master_process off; pid %%PREFIX%%s.pid; error_log %%PREFIX%%e.log notice;\n\
             events {{}} stream {{ server {{ listen 127.0.0.1:{port}; return x; }} }}\n"
        )
        .replace("%%PREFIX%%", &dir.prefix()),
    )
    .expect("write");
    let t0 = Instant::now();
    let out = run_sluice(&["-p", &dir.prefix(), "-c", "s.conf"], dir.path());
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!((2400..5000).contains(&took.as_millis()), "took {took:?}");
    let failed = format!("[emerg] bind() to 127.0.0.1:{port} failed (98: Address already in use)");
    let log = std::fs::read_to_string(dir.join("e.log")).unwrap_or_default();
    let lines: Vec<String> = console(log.as_bytes()).lines().map(str::to_string).collect();
    let mut want = Vec::new();
    for _ in 0..5 {
        want.push(failed.clone());
        want.push("[notice] try again to bind() after 500ms".to_string());
    }
    want.push("[emerg] still could not bind()".to_string());
    assert_eq!(lines, want, "{log}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches(&format!("sluice: {failed}")).count(), 5, "{err}");
    assert!(err.ends_with("sluice: [emerg] still could not bind()\n"), "{err}");
    drop(busy);
}

/// Sockets are opened port by port, each port's addresses as nginx sorts them: those
/// that asked for a socket of their own (`bind`, or an option that implies it) first, the
/// wildcard last (recorded side by side: the "bind() failed" lines in nginx's order; sluice
/// went in configuration order). In a network namespace of the test's own.
#[test]
fn sockets_are_opened_in_nginx_order() {
    crate::common::private_network();
    let port = free_port();
    let busy: Vec<TcpListener> =
        ["127.0.0.1", "127.0.0.3", "0.0.0.0"].iter().filter_map(|ip| TcpListener::bind((*ip, port)).ok()).collect();
    assert_eq!(busy.len(), 2, "127.0.0.1 and .3 taken, the wildcard refused next to them");
    let dir = TempDir::new("bind-order");
    std::fs::write(
        dir.join("s.conf"),
        format!(
            "daemon off; master_process off; pid %%PREFIX%%s.pid; error_log %%PREFIX%%e.log notice;\n\
             events {{}} stream {{\n\
               server {{ listen 127.0.0.1:{port}; return a; }}\n\
               server {{ listen 127.0.0.3:{port} backlog=64; return b; }}\n\
             }}\n"
        )
        .replace("%%PREFIX%%", &dir.prefix()),
    )
    .expect("write");
    let out = run_sluice(&["-p", &dir.prefix(), "-c", "s.conf"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let first: Vec<&str> = err.lines().take(2).collect();
    assert_eq!(
        first,
        [
            format!("sluice: [emerg] bind() to 127.0.0.3:{port} failed (98: Address already in use)"),
            format!("sluice: [emerg] bind() to 127.0.0.1:{port} failed (98: Address already in use)"),
        ],
        "{err}"
    );
}

/// A reload whose configuration names another pid file moves it (nginx writes the new
/// one and removes the old); one that cannot be written fails the reload with nginx's
/// emerg line, and the old configuration serves on (matched side by side).
#[test]
fn reload_moves_the_pid_file() {
    let a = tagged("A");
    let p = free_port();
    let conf = proxy_conf(&head(false, "1"), p, a);
    let mut run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || greet(p).is_ok()), "not serving\n{}", run.ctx());
    let before = workers_of(master, &[]);
    run.write_conf(&conf.replace("sluice.pid;", "moved.pid;"));
    signal(master, libc::SIGHUP);
    assert!(
        wait_for(10 * SEC, || run.read_pid("moved.pid") == Some(master) && !run.path(PID).exists()),
        "the pid file did not move\n{}",
        run.ctx()
    );
    // The pid file moves before the new worker starts: wait for the replacement.
    let replaced = wait_for(10 * SEC, || {
        let w = workers_of(master, &[]);
        w.len() == 1 && !before.contains(&w[0])
    });
    assert!(replaced, "the old worker stays\n{}", run.ctx());
    let workers = workers_of(master, &[]);
    run.write_conf(&conf.replace("pid %%PREFIX%%sluice.pid;", "pid /nonexistent-sluice-dir/x.pid;"));
    signal(master, libc::SIGHUP);
    let want = "[emerg] ";
    let msg = "open() \"/nonexistent-sluice-dir/x.pid\" failed (2: No such file or directory)";
    assert!(
        wait_for(10 * SEC, || run.log().lines().any(|l| l.contains(want) && l.ends_with(msg))),
        "no emerg line\n{}",
        run.ctx()
    );
    assert_eq!(run.read_pid("moved.pid"), Some(master), "{}", run.ctx());
    assert_eq!(workers_of(master, &[]), workers, "{}", run.ctx());
    assert_eq!(greet(p).ok().as_deref(), Some("A"), "{}", run.ctx());
    // One that fails after the pid file was moved (a log file that cannot be opened)
    // leaves it moved, and the old name is the one removed at exit, as in nginx.
    let failing = conf.replace("sluice.pid;", "again.pid;").replace(
        "error_log %%PREFIX%%error.log",
        "error_log %%PREFIX%%error.log info; error_log %%PREFIX%%nodir/e.log",
    );
    run.write_conf(&failing);
    signal(master, libc::SIGHUP);
    let msg = format!("open() \"{}nodir/e.log\" failed (2: No such file or directory)", run.prefix());
    assert!(wait_for(10 * SEC, || run.log().contains(&msg)), "no emerg line\n{}", run.ctx());
    assert_eq!(run.read_pid("again.pid"), Some(master), "{}", run.ctx());
    assert!(!run.path("moved.pid").exists(), "{}", run.ctx());
    assert_eq!(workers_of(master, &[]), workers, "{}", run.ctx());
    signal(master, libc::SIGTERM);
    assert!(run.wait_child(10 * SEC).is_some(), "{}", run.ctx());
    let alert = format!(
        "[alert] {master}#{master}: unlink() \"{}moved.pid\" failed (2: No such file or directory)",
        run.prefix()
    );
    assert!(run.log().contains(&alert), "{}", run.ctx());
    assert_eq!(run.read_pid("again.pid"), Some(master), "the new pid file stays, as nginx's\n{}", run.ctx());
}

/// `access_log /dev/stderr` with the error log in a file: the file is opened with the
/// configuration, before the standard error is redirected to the error log, so the
/// access lines go to the standard error sluice started with (a container's log), as
/// nginx's; a reload opens it again with descriptor 2 redirected, so they go to the
/// error log from then on, as nginx's (side by side with nginx 1.22.1: the same).
#[test]
fn access_log_dev_stderr_is_the_starting_stderr_until_a_reload() {
    let p = free_port();
    let conf = |tag: &str| {
        format!(
            "{}events {{}}\nstream {{ log_format f '{tag} $status'; \
             server {{ listen 127.0.0.1:{p}; return \"$pid\\n\"; access_log /dev/stderr f; }} }}\n",
            head(false, "1")
        )
    };
    let run = Run::start(&conf("first"));
    let master = run.master();
    assert!(wait_for(10 * SEC, || served_by(p).is_some()), "not serving\n{}", run.ctx());
    let stderr = || std::fs::read_to_string(run.path("stderr.txt")).unwrap_or_default();
    assert!(wait_for(10 * SEC, || stderr().contains("first 200\n")), "not on stderr\n{}", run.ctx());
    assert!(!run.log().contains("first 200"), "{}", run.ctx());
    let old = workers_of(master, &[]);
    run.write_conf(&conf("second"));
    signal(master, libc::SIGHUP);
    let renewed = || workers_of(master, &[]).iter().all(|w| !old.contains(w));
    assert!(wait_for(10 * SEC, || renewed() && served_by(p).is_some()), "no new worker\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || run.log().contains("second 200\n")), "not in the error log\n{}", run.ctx());
    assert!(!stderr().contains("second 200"), "{}", run.ctx());
}

/// The listening socket of 127.0.0.1:`port` in process `pid`, as a descriptor of this
/// process (pidfd_getfd(2): the same socket, to read its options).
fn listener_of(pid: i32, port: u16) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let want = format!("0100007F:{port:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")).then(|| f.get(9).map(|s| s.to_string()))?
    })?;
    let link = format!("socket:[{inode}]");
    let fd: i32 = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten().find_map(|e| {
        (std::fs::read_link(e.path()).ok()?.to_str()? == link).then(|| e.file_name().to_str()?.parse().ok())?
    })?;
    // SAFETY: pidfd_open and pidfd_getfd with a pid and descriptor number read above; the
    // results are descriptors this process then owns.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if pidfd < 0 {
            return None;
        }
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        (got >= 0).then(|| std::os::fd::OwnedFd::from_raw_fd(got))
    }
}

fn rcvbuf_of(fd: &std::os::fd::OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int we own.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt: {}", io::Error::last_os_error());
    v
}

/// A reload that keeps a listening socket sets the new configuration's options on it,
/// as nginx's ngx_configure_listening_sockets does for every socket of the new cycle
/// (side by side with nginx 1.22.1: `rcvbuf=` and `backlog=` changed by a HUP took
/// effect on the kept socket in both; sluice kept the old ones until a restart).
#[test]
fn reload_applies_listen_options_to_kept_sockets() {
    let p = free_port();
    let conf = |rcvbuf: &str| {
        format!(
            "{}events {{}}\nstream {{ server {{ listen 127.0.0.1:{p} rcvbuf={rcvbuf}; return \"$pid\\n\"; }} }}\n",
            head(false, "1")
        )
    };
    let run = Run::start(&conf("16k"));
    let master = run.master();
    assert!(wait_for(10 * SEC, || served_by(p).is_some()), "not serving\n{}", run.ctx());
    let before = listener_of(master, p).expect("the listening socket");
    // The kernel doubles what it is given.
    assert_eq!(rcvbuf_of(&before), 32768, "{}", run.ctx());
    let old = workers_of(master, &[]);
    run.write_conf(&conf("32k"));
    signal(master, libc::SIGHUP);
    let renewed = || workers_of(master, &[]).iter().all(|w| !old.contains(w));
    assert!(wait_for(10 * SEC, || renewed() && !workers_of(master, &[]).is_empty()), "no new worker\n{}", run.ctx());
    let after = listener_of(master, p).expect("the listening socket");
    assert_eq!(rcvbuf_of(&after), 65536, "the kept socket keeps its old rcvbuf\n{}", run.ctx());
}

/// A reload that cannot open a new listening socket reports it in the new
/// configuration's error log, as nginx's ngx_init_cycle does (it writes there once the
/// new files are open), and the old configuration serves on. Side by side with nginx
/// 1.22.1: the bind() lines and "still could not bind()" in new.log, none in the old.
#[test]
fn failed_reload_reports_its_sockets_in_the_new_error_log() {
    let (p, taken) = (free_port(), TcpListener::bind("127.0.0.1:0").expect("bind"));
    let q = taken.local_addr().expect("addr").port();
    let base = head(false, "1");
    let run = Run::start(&format!(
        "{base}events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return \"$pid\\n\"; }} }}\n"
    ));
    let master = run.master();
    assert!(wait_for(10 * SEC, || served_by(p).is_some()), "not serving\n{}", run.ctx());
    let moved = base.replace("error_log %%PREFIX%%error.log info;", "error_log %%PREFIX%%new.log info;");
    run.write_conf(&format!(
        "{moved}events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return \"$pid\\n\"; }} \
         server {{ listen 127.0.0.1:{q}; return new; }} }}\n"
    ));
    signal(master, libc::SIGHUP);
    let new_log = || std::fs::read_to_string(run.path("new.log")).unwrap_or_default();
    assert!(
        wait_for(10 * SEC, || new_log().contains("still could not bind()")),
        "new.log:\n{}\n{}",
        new_log(),
        run.ctx()
    );
    let bind = format!("[emerg] {master}#{master}: bind() to 127.0.0.1:{q} failed (98: Address already in use)");
    assert_eq!(new_log().matches(&bind).count(), 5, "{}", new_log());
    assert!(!run.log().contains("could not bind"), "{}", run.ctx());
    assert!(served_by(p).is_some(), "the old configuration serves\n{}", run.ctx());
    drop(taken);
}

/// With one worker, the listening sockets are not watched with EPOLLEXCLUSIVE (nginx
/// uses it only with several workers): after a reload the old and the new worker are both
/// woken, so the new configuration answers at once, not only once the old worker stops
/// accepting 100 ms later (sluice's old worker, first in the exclusive queue, took the
/// connections until then; side by side: nginx's first new answer after 1.3 ms, sluice's
/// after 101 ms). The master is stopped (SIGSTOP) inside that pause, so both workers
/// accept for as long as the test needs, whatever the load: with an exclusive watch
/// only the old one would ever answer.
#[test]
fn one_worker_reload_answers_with_the_new_configuration_at_once() {
    let p = free_port();
    let conf = |v: &str| {
        format!("{}events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return \"{v}\\n\"; }} }}\n", head(false, "1"))
    };
    let run = Run::start(&conf("v0"));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let in_epoll =
        |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("epoll_wait"));
    let mut held = 0;
    for v in ["v1", "v2", "v3", "v4", "v5", "v6"] {
        if held == 2 {
            break;
        }
        let old = workers_of(master, &[]);
        let stopping = |log: &str| old.iter().any(|w| log.contains(&format!("{w}#{w}: gracefully shutting down")));
        run.write_conf(&conf(v));
        signal(master, libc::SIGHUP);
        // Catch the master between starting the new worker and telling the old to quit.
        wait_for(10 * SEC, || workers_of(master, &[]).len() == 2 || stopping(&run.log()));
        signal(master, libc::SIGSTOP);
        let both = workers_of(master, &[]);
        if both.len() == 2 && !stopping(&run.log()) {
            held += 1;
            let t0 = Instant::now();
            let mut answers = Vec::new();
            // Each connection finds both waiting in epoll_wait (a busy worker is passed
            // over even by an exclusive wake-up).
            while t0.elapsed() < 5 * SEC && answers.last().map(String::as_str) != Some(v) {
                if wait_for(10 * SEC, || both.iter().all(|&w| in_epoll(w))) {
                    answers.push(greet(p).unwrap_or_default());
                }
            }
            signal(master, libc::SIGCONT);
            assert_eq!(
                answers.last().map(String::as_str),
                Some(v),
                "with both workers accepting, {} answers came from the old configuration only\n{}",
                answers.len(),
                run.ctx()
            );
        } else {
            signal(master, libc::SIGCONT);
        }
        assert!(wait_for(10 * SEC, || greet(p).is_ok_and(|a| a == v)), "no {v} answer after the reload\n{}", run.ctx());
        assert!(wait_for(10 * SEC, || old.iter().all(|&w| !alive(w))), "old worker left\n{}", run.ctx());
    }
    assert!(held >= 1, "the master was never caught inside its pause\n{}", run.ctx());
    // The mechanism, which the answers above show only by chance (an exclusive wake-up
    // passes over a busy worker): no watch of the one worker is exclusive; with two
    // workers, the listening socket's are.
    let w = workers_of(master, &[]);
    assert_eq!(w.iter().map(|&w| exclusive_watches(w)).sum::<usize>(), 0, "{w:?}");
    run.write_conf(&conf("v9").replace("worker_processes 1;", "worker_processes 2;"));
    signal(master, libc::SIGHUP);
    assert!(
        wait_for(10 * SEC, || {
            let w = workers_of(master, &[]);
            w.len() == 2 && w.iter().all(|&w| exclusive_watches(w) == 1)
        }),
        "two workers, each watching the listener exclusively\n{}",
        run.ctx()
    );
}

/// How many of `pid`'s epoll watches are EPOLLEXCLUSIVE (`/proc/PID/fdinfo` of its
/// epoll descriptors: "tfd: N events: HEX ...").
fn exclusive_watches(pid: i32) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    fds.iter()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:[eventpoll]"))
        .map(|e| std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy())))
        .flat_map(|t| t.unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.starts_with("tfd:"))
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "events:").nth(1).map(str::to_string))
        .filter(|ev| u32::from_str_radix(ev, 16).is_ok_and(|e| e & 0x1000_0000 != 0))
        .count()
}

/// What a process's descriptors point at, with how many of each, for paths in `dir`.
fn open_files(pid: i32, dir: &str) -> BTreeSet<(String, usize)> {
    let mut n: std::collections::BTreeMap<String, usize> = Default::default();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        if let Ok(l) = std::fs::read_link(e.path()) {
            let l = l.to_string_lossy().into_owned();
            if let Some(name) = l.strip_prefix(dir) {
                *n.entry(name.trim_start_matches('/').to_string()).or_default() += 1;
            }
        }
    }
    n.into_iter().collect()
}

/// A reload closes the files only the old configuration had open, in the master and so
/// in every worker it starts after (nginx's ngx_init_cycle closes the old cycle's files):
/// the master kept the startup configuration, and its error logs, open for its life.
/// USR1 moves the master's stderr to the reopened error log, as nginx's ngx_reopen_files.
#[test]
fn reload_and_reopen_leave_no_old_log_open() {
    let p = free_port();
    let conf = |g: &str| {
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid %%PREFIX%%sluice.pid;\n\
             error_log %%PREFIX%%{g}.log info;\nevents {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; \
             error_log %%PREFIX%%srv_{g}.log info; return x; }} }}\n"
        )
    };
    let run = Run::start(&conf("gen0"));
    let master = run.master();
    let prefix = run.prefix();
    let dir = prefix.trim_end_matches('/');
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    for g in ["gen1", "gen2"] {
        let old = workers_of(master, &[]);
        run.write_conf(&conf(g));
        signal(master, libc::SIGHUP);
        let swapped = || {
            let w = workers_of(master, &[]);
            w.len() == 1 && w != old
        };
        assert!(wait_for(10 * SEC, swapped), "no new worker after the reload to {g}\n{}", run.ctx());
    }
    let worker = workers_of(master, &[])[0];
    let want: BTreeSet<(String, usize)> = [("gen2.log".to_string(), 2), ("srv_gen2.log".to_string(), 1)].into();
    // the master's stderr is the error log (2 descriptors), as nginx's
    assert!(
        wait_for(5 * SEC, || open_files(master, dir) == want && open_files(worker, dir) == want),
        "master {:?}, worker {:?}\n{}",
        open_files(master, dir),
        open_files(worker, dir),
        run.ctx()
    );
    std::fs::rename(run.path("gen2.log"), run.path("gen2.log.1")).expect("rename");
    signal(master, libc::SIGUSR1);
    let stderr_of =
        |pid: i32| std::fs::read_link(format!("/proc/{pid}/fd/2")).map(|l| l.to_string_lossy().into_owned());
    let new = format!("{dir}/gen2.log");
    assert!(
        wait_for(5 * SEC, || stderr_of(master).is_ok_and(|l| l == new)),
        "the master's stderr after USR1: {:?}\n{}",
        stderr_of(master),
        run.ctx()
    );
}

/// A reload with a broken configuration (an unknown directive; then a listen address
/// that cannot be bound) logs `[emerg]` and keeps the old workers serving the old one;
/// a good one afterwards is taken.
#[test]
fn reload_with_broken_config_keeps_old_one_and_logs_emerg() {
    let (a, b) = (tagged("A"), tagged("B"));
    let p = free_port();
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port();
    let run = Run::start(&proxy_conf(&head(false, "2"), p, a));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "2 workers\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "A")), "not serving\n{}", run.ctx());
    let before = workers_of(master, &[]);

    let broken = [
        (
            format!("{}bogus_directive on;\n", proxy_conf(&head(false, "2"), p, b)),
            "unknown directive \"bogus_directive\"",
        ),
        (
            proxy_conf(&head(false, "2"), p, b).replace(
                "\n}\n",
                &format!("\n  server {{ listen 127.0.0.1:{busy_port}; proxy_pass 127.0.0.1:{b}; }}\n}}\n"),
            ),
            "bind() to 127.0.0.1:",
        ),
    ];
    // nginx says which event method it uses once a new cycle has its sockets: a failed
    // reload does not say it.
    let methods = count(&run.log(), "using the \"epoll\" event method");
    for (n, (conf, want)) in broken.iter().enumerate() {
        let emergs = count(&run.log(), "[emerg]");
        run.write_conf(conf);
        signal(master, libc::SIGHUP);
        assert!(
            wait_for(10 * SEC, || run.log().lines().any(|l| l.contains("[emerg]") && l.contains(want))
                && count(&run.log(), "[emerg]") > emergs),
            "broken config {n}: no [emerg] line with {want:?}\n{}",
            run.ctx()
        );
        for i in 0..10 {
            let tag = greet(p);
            assert_eq!(tag.as_deref().ok(), Some("A"), "broken config {n}, connection {i}: {tag:?}\n{}", run.ctx());
        }
        assert_eq!(workers_of(master, &[]), before, "broken config {n} replaced the workers\n{}", run.ctx());
        assert!(alive(master));
        assert_eq!(count(&run.log(), "using the \"epoll\" event method"), methods, "{}", run.ctx());
    }
    drop(busy);

    run.write_conf(&proxy_conf(&head(false, "2"), p, b));
    signal(master, libc::SIGHUP);
    assert!(
        wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "B")),
        "a good config after broken ones was not taken\n{}",
        run.ctx()
    );
}

/// 50 reloads, alternating between two upstreams, while clients run short sessions and
/// long downloads without pause: not one connection fails, not one stream is cut.
#[test]
fn fifty_reloads_under_load_lose_nothing() {
    let (a, b, src) = (tagged("A"), tagged("B"), source());
    let (p, q) = (free_port(), free_port());
    let conf = |up: u16| {
        format!(
            "{}events {{}}\nstream {{\n  server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{up}; }}\n  \
             server {{ listen 127.0.0.1:{q}; proxy_pass 127.0.0.1:{src}; }}\n}}\n",
            head(false, "2")
        )
    };
    let run = Run::start(&conf(a));
    let master = run.master();
    assert!(wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "A")), "not serving\n{}", run.ctx());

    let mut load = Load::new();
    load.short(p, 3);
    load.long(q, 2, 4 << 20, 15);
    assert!(load.progress(20), "the load does not run\n{}", run.ctx());
    let t0 = Instant::now();
    for i in 1..=50 {
        run.write_conf(&conf(if i % 2 == 1 { b } else { a }));
        signal(master, libc::SIGHUP);
        assert!(
            wait_for(10 * SEC, || count(&run.log(), "start worker processes") > i),
            "reload {i} was not done\n{}",
            run.ctx()
        );
        // Let connections reach this generation before the next one.
        std::thread::sleep(Duration::from_millis(100));
    }
    let reload_secs = t0.elapsed().as_secs_f64();
    assert!(load.progress(20), "no progress after the reloads\n{}", run.ctx());
    let (short, long, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed or cut sessions (of {short} short and {long} long that worked) over 50 reloads in {reload_secs:.1}s:\n{}\n{}",
        failures.len(),
        failures.iter().take(30).cloned().collect::<Vec<_>>().join("\n"),
        run.ctx()
    );
    assert!(short >= 200 && long >= 4, "too little load ran: {short} short, {long} long sessions");
    // The last reload (50, even) went back to A.
    assert_eq!(greet(p).ok().as_deref(), Some("A"), "{}", run.ctx());
    assert!(
        wait_for(15 * SEC, || workers_of(master, &[]).len() == 2),
        "old workers still run after their sessions ended: {:?}\n{}",
        workers_of(master, &[]),
        run.ctx()
    );
    let log = run.log();
    let bad: Vec<&str> =
        log.lines().filter(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]")).collect();
    assert!(bad.is_empty(), "reloads logged:\n{}", bad.join("\n"));
}

/// `worker_shutdown_timeout` bounds how long an old worker drains after a reload: its
/// session is closed about then, and the worker exits.
#[test]
fn worker_shutdown_timeout_closes_old_sessions_after_reload() {
    let a = tagged("A");
    let p = free_port();
    let conf = proxy_conf(&format!("{}worker_shutdown_timeout 1s;\n", head(false, "2")), p, a);
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let old = workers_of(master, &[]);
    let mut long = dial(p).expect("connect");
    assert_eq!(read_line(&mut long).expect("greeting"), "A");

    let t0 = Instant::now();
    signal(master, libc::SIGHUP);
    assert!(
        wait_for(10 * SEC, || old.iter().all(|&w| pid_lines(&run.log(), w, "gracefully shutting down") > 0)),
        "the old workers were not told to stop\n{}",
        run.ctx()
    );
    echo_check(&mut long, 16 << 10).expect("relay while draining");
    let mut buf = [0u8; 16];
    let r = long.read(&mut buf);
    let closed_after = t0.elapsed();
    assert!(
        matches!(&r, Ok(0)) || r.as_ref().is_err_and(|e| !is_timeout(e)),
        "the session was not closed at worker_shutdown_timeout: {r:?} after {closed_after:?}\n{}",
        run.ctx()
    );
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_secs(5),
        "closed {closed_after:?} after the reload, worker_shutdown_timeout is 1s\n{}",
        run.ctx()
    );
    assert!(wait_for(5 * SEC, || old.iter().all(|&w| !alive(w))), "old workers still run\n{}", run.ctx());
}

/// `worker_shutdown_timeout` ends a `return` that a client does not read with 500 and
/// no line: nginx calls the session's read handler, the phase engine's, which runs the
/// content phase again, and its new send meets the connection in error (a proxied
/// session logs "shutdown timeout" and 200 instead; side by side with nginx 1.22.1).
#[test]
fn worker_shutdown_timeout_ends_a_blocked_return_with_500_and_no_line() {
    let p = free_port();
    let x = "x".repeat(1000);
    let y = "$x".repeat(1000);
    let conf = format!(
        "{}worker_shutdown_timeout 300ms;\nevents {{}}\nstream {{\n  log_format f '$status';\n  \
         map $server_port $x {{ default \"{x}\"; }}\n  map $server_port $y {{ default \"{y}\"; }}\n  \
         server {{ listen 127.0.0.1:{p} sndbuf=8k; return \"$y$y\"; access_log %%PREFIX%%a.log f; }}\n}}\n",
        head(false, "1")
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    // A client that reads nothing, with a small window, and a small send buffer: the 2 MB
    // answer blocks.
    let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    c.set_recv_buffer_size(4096).expect("rcvbuf");
    c.connect(&SocketAddr::from(([127, 0, 0, 1], p)).into()).expect("connect");
    assert!(wait_for(10 * SEC, || run.log().contains("client 127.0.0.1:")), "no session\n{}", run.ctx());
    signal(master, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(master)), "the master did not exit\n{}", run.ctx());
    let access = std::fs::read_to_string(run.path("a.log")).unwrap_or_default();
    assert_eq!(access, "500\n", "{}", run.ctx());
    assert!(!run.log().contains("shutdown timeout"), "{}", run.ctx());
    drop(c);
}

/// `worker_shutdown_timeout` walks the connections in nginx's slot order. An upstream
/// still connecting, in a lower slot than its client, is met first: nginx's connect
/// handler finds no error on the socket and goes on as connected ("proxy ... connected",
/// `$upstream_connect_time` set), then the client's turn ends the session "while
/// proxying connection" (nginx 1.22.1 side by side; sluice said "while connecting to
/// upstream" with no connect time).
#[test]
fn worker_shutdown_timeout_meets_a_connecting_upstream_in_a_lower_slot_first() {
    let (run, q, sp) = client_above_its_stuck_upstream(" $upstream_connect_time", "");
    let access = || std::fs::read_to_string(run.path("a.log")).unwrap_or_default();
    let log = run.log();
    let connected = log.find(&format!("connected to 127.0.0.1:{sp}")).unwrap_or(usize::MAX);
    let ended = log.find("shutdown timeout while proxying connection").unwrap_or(0);
    assert!(connected < ended, "{}", run.ctx());
    assert!(!log.contains("while connecting to upstream"), "{}", run.ctx());
    let last = access().lines().last().unwrap_or_default().to_string();
    let fields: Vec<&str> = last.split(' ').collect();
    assert_eq!(fields[..2], [q.to_string().as_str(), "200"], "{}", run.ctx());
    assert_ne!(fields.get(2).copied(), Some("-"), "{}", run.ctx());
}

/// A backend whose listen queue is full: later SYNs are dropped and connects to it hang
/// (its port, and what must live as long as the test).
fn stuck_backend() -> (u16, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let stuck = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    stuck.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    stuck.listen(0).expect("listen");
    let sp = stuck.local_addr().expect("addr").as_socket().expect("inet").port();
    let mut held = vec![stuck];
    for _ in 0..3 {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        c.set_nonblocking(true).expect("nonblocking");
        let _ = c.connect(&SocketAddr::from(([127, 0, 0, 1], sp)).into());
        held.push(c);
    }
    (sp, held)
}

/// A master with one worker and `worker_shutdown_timeout 300ms`: a client of the server
/// on port `q` (`proxy_pass` to a stuck backend, with `directives`) connected so that
/// its upstream takes a lower connection slot than its own, then QUIT, and the master
/// gone. The access log a.log has `$server_port $status` and then `extra`. Returns the
/// run, `q` and the backend's port.
fn client_above_its_stuck_upstream(extra: &str, directives: &str) -> (Run, u16, u16) {
    let (sp, stuck) = stuck_backend();
    let (p, q) = (free_port(), free_port());
    let server = format!("server {{ listen 127.0.0.1:{q}; proxy_pass 127.0.0.1:{sp}; {directives} }}");
    let conf = format!(
        "{}worker_shutdown_timeout 300ms;\nevents {{}}\nstream {{\n  \
         log_format f '$server_port $status{extra}';\n  access_log %%PREFIX%%a.log f;\n  \
         server {{ listen 127.0.0.1:{p}; ssl_preread on; return x; }}\n  {server}\n}}\n",
        head(false, "1")
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    // Two sessions without upstreams, ended in turn, leave the higher of their two slots
    // on top of the free list: the next client takes it, its upstream the lower one.
    let access = || std::fs::read_to_string(run.path("a.log")).unwrap_or_default();
    let connect = |port: u16| TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let x = connect(p);
    let y = connect(p);
    assert!(wait_for(10 * SEC, || run.log().matches("client 127.0.0.1:").count() == 2), "{}", run.ctx());
    drop(x);
    assert!(wait_for(10 * SEC, || access().lines().count() == 1), "{}", run.ctx());
    drop(y);
    assert!(wait_for(10 * SEC, || access().lines().count() == 2), "{}", run.ctx());
    let z = connect(q);
    assert!(wait_for(10 * SEC, || run.log().matches("client 127.0.0.1:").count() == 3), "{}", run.ctx());
    signal(master, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(master)), "the master did not exit\n{}", run.ctx());
    drop((z, stuck));
    (run, q, sp)
}

/// A master with one worker from `conf`; a client of port `p` (a server whose preread
/// waits) connected, then QUIT, and the worker gone into its graceful shutdown.
fn client_in_preread_at_quit(conf: &str, p: u16) -> (Run, i32, TcpStream) {
    let run = Run::start(conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let w = workers_of(master, &[])[0];
    let c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    assert!(wait_for(10 * SEC, || run.log().contains("client 127.0.0.1:")), "{}", run.ctx());
    signal(master, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || pid_lines(&run.log(), w, "gracefully shutting down") > 0), "{}", run.ctx());
    (run, master, c)
}

/// After the QUIT the listening sockets' slots are free again (ngx_close_listening_sockets),
/// so an upstream connected after it (its client was in preread) comes before its client
/// in the shutdown timeout's walk; taken as connected, its first write (the preread
/// bytes) meets it in error and the session ends well with no line (nginx 1.22.1 side by
/// side, review of 00875b6: "proxy ... connected", 200 with a connect time, no
/// "shutdown timeout").
#[test]
fn an_upstream_connected_after_quit_ends_silently_at_the_shutdown_timeout() {
    let (sp, stuck) = stuck_backend();
    let p = free_port();
    let conf = format!(
        "{}worker_shutdown_timeout 300ms;\nevents {{}}\nstream {{\n  \
         log_format f '$status $upstream_connect_time';\n  access_log %%PREFIX%%a.log f;\n  \
         server {{ listen 127.0.0.1:{p}; ssl_preread on; preread_timeout 30s; proxy_pass 127.0.0.1:{sp}; }}\n}}\n",
        head(false, "1")
    );
    let (run, master, mut c) = client_in_preread_at_quit(&conf, p);
    // Not TLS: preread ends and the upstream connects, after the QUIT.
    c.write_all(b"hello\n").expect("write");
    assert!(wait_for(10 * SEC, || !alive(master)), "the master did not exit\n{}", run.ctx());
    let log = run.log();
    assert!(log.contains(&format!("connected to 127.0.0.1:{sp}")), "{}", run.ctx());
    assert!(!log.contains("shutdown timeout"), "{}", run.ctx());
    let access = std::fs::read_to_string(run.path("a.log")).unwrap_or_default();
    assert!(access.starts_with("200 ") && !access.contains('-'), "{access}\n{}", run.ctx());
    drop((c, stuck));
}

/// A listening socket closed at QUIT frees its connection under `worker_connections`
/// (ngx_free_connection): with 3 (a listener, the channel, a client), the upstream of a
/// session still in preread at the QUIT connects afterwards, where before it there was
/// no room ("worker_connections are not enough", 500). nginx 1.22.1 side by side
/// (second review of this session's shutdown changes).
#[test]
fn a_listener_closed_at_quit_leaves_room_under_worker_connections() {
    let echo = crate::common::backend(crate::common::echo);
    let p = free_port();
    let conf = format!(
        "{}events {{ worker_connections 3; }}\nstream {{\n  \
         server {{ listen 127.0.0.1:{p}; ssl_preread on; preread_timeout 30s; proxy_pass 127.0.0.1:{echo}; }}\n}}\n",
        head(false, "1")
    );
    let (run, master, mut c) = client_in_preread_at_quit(&conf, p);
    c.write_all(b"hello").expect("write");
    c.set_read_timeout(Some(10 * SEC)).expect("timeout");
    let mut got = [0u8; 5];
    assert!(c.read_exact(&mut got).is_ok() && &got == b"hello", "{}", run.ctx());
    drop(c);
    assert!(!run.log().contains("worker_connections are not enough"), "{}", run.ctx());
    assert!(wait_for(10 * SEC, || !alive(master)), "the master did not exit\n{}", run.ctx());
}

/// `proxy_ssl` with `proxy_protocol`, the upstream still connecting when the shutdown
/// timeout meets it first: the header's send would block, and nginx waits for the
/// socket (ngx_stream_proxy_send_proxy_protocol's NGX_AGAIN), so the client's turn ends
/// the session "while connecting to upstream" with 200; sluice took it as a header that
/// could not go at once (500). Side by side with nginx 1.22.1 (review of 00875b6).
#[test]
fn a_proxy_protocol_header_that_would_block_waits_for_the_upstream() {
    let (run, q, _) = client_above_its_stuck_upstream("", "proxy_ssl on; proxy_protocol on;");
    let access = || std::fs::read_to_string(run.path("a.log")).unwrap_or_default();
    let log = run.log();
    assert!(log.contains("shutdown timeout while connecting to upstream"), "{}", run.ctx());
    assert!(!log.contains("PROXY protocol header"), "{}", run.ctx());
    assert_eq!(access().lines().last(), Some(format!("{q} 200").as_str()), "{}", run.ctx());
}

/// `worker_shutdown_timeout` is an ordinary timer, as nginx's ngx_shutdown_event: a
/// `proxy_timeout` re-armed after the QUIT in the same tick (`timer_resolution`) and due
/// at the same moment fires after it, so the session ends "shutdown timeout", not
/// "connection timed out" (nginx 1.22.1 side by side, h3 hunt; sluice ran the shutdown
/// after the turn's timers).
#[test]
fn worker_shutdown_timeout_fires_before_a_session_timer_armed_after_it() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = held.local_addr().expect("addr").port();
    let p = free_port();
    let conf = format!(
        "{}worker_shutdown_timeout 1s;\ntimer_resolution 500ms;\nevents {{}}\nstream {{\n  \
         server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{b}; proxy_timeout 1s; }}\n}}\n",
        head(false, "1")
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let w = workers_of(master, &[])[0];
    let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    c.write_all(b"a").expect("write");
    assert!(wait_for(10 * SEC, || run.log().contains("proxy 127.0.0.1:")), "{}", run.ctx());
    // Past the 300 ms a timer must move before nginx arms it again.
    std::thread::sleep(Duration::from_millis(600));
    signal(master, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || pid_lines(&run.log(), w, "gracefully shutting down") > 0), "{}", run.ctx());
    c.write_all(b"b").expect("write");
    assert!(wait_for(10 * SEC, || !alive(master)), "the master did not exit\n{}", run.ctx());
    let log = run.log();
    assert!(log.contains("shutdown timeout while proxying connection"), "{}", run.ctx());
    assert!(!log.contains("timed out"), "{}", run.ctx());
    drop((c, held));
}

// ---------------------------------------------------------------------------------
// Log reopening.

/// A worker that cannot open its logs again on USR1 says so as nginx does, one emerg
/// line per file (its old files stay in use), and serves on.
#[test]
fn usr1_reopen_failure_is_an_emerg_line_per_file() {
    use std::os::unix::fs::PermissionsExt;
    let p = free_port();
    let head = head(false, "1").replace("user root;", "user nobody nogroup;");
    let conf = format!(
        "{head}events {{}}\nstream {{ log_format f x; server {{ listen 127.0.0.1:{p}; return \"x\\n\"; \
         access_log %%PREFIX%%access.log f; }} }}\n"
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let w = workers_of(master, &[])[0];
    assert!(wait_for(10 * SEC, || greet(p).is_ok()), "not serving\n{}", run.ctx());
    // The worker (nobody) may not enter the prefix any more; the master (root) may.
    let dir = run.path("");
    let mode = std::fs::metadata(&dir).map(|m| m.permissions().mode()).unwrap_or(0o755);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    signal(master, libc::SIGUSR1);
    let failed =
        |name: &str| format!("[emerg] {w}#{w}: open() \"{}\" failed (13: Permission denied)", run.path(name).display());
    let done = wait_for(10 * SEC, || {
        let log = run.log();
        log.contains(&failed("access.log")) && log.contains(&failed("error.log"))
    });
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod back");
    assert!(done, "no emerg lines from worker {w}\n{}", run.ctx());
    let log = run.log();
    let (e, a) = (log.find(&failed("error.log")), log.find(&failed("access.log")));
    assert!(e < a && log.matches("[emerg]").count() == 2, "{}", run.ctx());
    assert_eq!(greet(p).ok().as_deref(), Some("x"), "{}", run.ctx());
}

/// USR1 reopens the log files in the order the configuration names them, error and
/// access logs alike (nginx's one `open_files` list), so their emerg lines come in that
/// order; an error log that fails does not keep the later files from being reopened
/// (nginx 1.22.1 side by side: a.log's line first when access_log comes first).
#[test]
fn usr1_reopens_files_in_configuration_order() {
    let p = free_port();
    let conf = format!(
        "{}events {{}}\nstream {{ log_format f x; server {{ listen 127.0.0.1:{p}; return \"x\\n\"; \
         access_log %%PREFIX%%sub/a.log f; error_log %%PREFIX%%sub2/e.log info; \
         access_log %%PREFIX%%z.log f; }} }}\n",
        head(false, "1").replace("master_process on;", "master_process off;")
    );
    let run = Run::start_in(&conf, &["sub", "sub2"]);
    let pid = run.master();
    assert!(wait_for(10 * SEC, || greet(p).is_ok()), "not serving\n{}", run.ctx());
    std::fs::remove_dir_all(run.path("sub")).expect("rm sub");
    std::fs::remove_dir_all(run.path("sub2")).expect("rm sub2");
    std::fs::rename(run.path("z.log"), run.path("z.log.1")).expect("rotate z.log");
    signal(pid, libc::SIGUSR1);
    let failed = |name: &str| {
        format!("[emerg] {pid}#{pid}: open() \"{}\" failed (2: No such file or directory)", run.path(name).display())
    };
    assert!(
        wait_for(10 * SEC, || run.log().contains(&failed("sub2/e.log")) && run.path("z.log").exists()),
        "{}",
        run.ctx()
    );
    let log = run.log();
    let (a, e) = (log.find(&failed("sub/a.log")), log.find(&failed("sub2/e.log")));
    assert!(a.is_some() && a < e && log.matches("[emerg]").count() == 2, "{}", run.ctx());
}

/// USR1 after the access and error logs were renamed: lines go on into the renamed files
/// until then, and into new files under the configured names after.
#[test]
fn usr1_reopens_renamed_logs() {
    let p = free_port();
    let conf = format!(
        "{}events {{}}\nstream {{\n  log_format port '$remote_port $status';\n  \
         server {{ listen 127.0.0.1:{p}; return \"x\\n\"; access_log %%PREFIX%%access.log port; }}\n}}\n",
        head(false, "2")
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let workers = workers_of(master, &[]);
    let read = |name: &str| std::fs::read_to_string(run.path(name)).unwrap_or_default();
    let visit = || -> u16 {
        let mut s = dial(p).expect("connect");
        let port = s.local_addr().expect("addr").port();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert_eq!(out, "x\n");
        port
    };
    let logged = |name: &str, port: u16| read(name).lines().any(|l| l == format!("{port} 200"));

    let first = visit();
    assert!(wait_for(10 * SEC, || logged("access.log", first)), "no access log line\n{}", run.ctx());
    std::fs::rename(run.path("access.log"), run.path("access.log.1")).expect("rename");
    std::fs::rename(run.path("error.log"), run.path("error.log.1")).expect("rename");
    let second = visit();
    assert!(
        wait_for(10 * SEC, || logged("access.log.1", second)),
        "before USR1 the line should go to the renamed file\naccess.log.1:\n{}",
        read("access.log.1")
    );

    signal(master, libc::SIGUSR1);
    assert!(
        wait_for(10 * SEC, || {
            let old = read("error.log.1");
            pid_lines(&old, master, "reopening logs") > 0
                && workers.iter().all(|&w| pid_lines(&old, w, "reopening logs") > 0)
                && run.path("access.log").exists()
                && run.path("error.log").exists()
        }),
        "USR1 did not reopen the logs of the master and both workers\nerror.log.1:\n{}\nerror.log exists: {}, \
         access.log exists: {}",
        read("error.log.1"),
        run.path("error.log").exists(),
        run.path("access.log").exists()
    );
    let before = read("access.log.1");
    for i in 0..10 {
        let port = visit();
        assert!(
            wait_for(10 * SEC, || logged("access.log", port)),
            "session {i} after USR1 is not in the new access.log\naccess.log:\n{}\naccess.log.1:\n{}",
            read("access.log"),
            read("access.log.1")
        );
    }
    assert_eq!(read("access.log.1"), before, "lines still went to the renamed access log after USR1");
    // The error log was reopened too: a new line lands in the new file.
    signal(master, libc::SIGHUP);
    assert!(
        wait_for(10 * SEC, || count(&read("error.log"), "reconfiguring") > 0),
        "the master still logs into the renamed error.log\nerror.log:\n{}",
        read("error.log")
    );

    // `-s reopen` is the same signal, from the command line; the reload above started
    // new workers, which have the new access.log open.
    assert!(
        wait_for(10 * SEC, || {
            let now = workers_of(master, &[]);
            now.len() == 2 && now.iter().all(|w| !workers.contains(w))
        }),
        "2 new workers after the reload\n{}",
        run.ctx()
    );
    let ws = workers_of(master, &[]);
    std::fs::rename(run.path("access.log"), run.path("access.log.2")).expect("rename");
    let out = run.cli(&["-s", "reopen"]);
    assert!(out.status.success(), "-s reopen: {}\n{}", String::from_utf8_lossy(&out.stderr), run.ctx());
    assert!(
        wait_for(10 * SEC, || run.path("access.log").exists()
            && ws.iter().all(|&w| pid_lines(&read("error.log"), w, "reopening logs") > 0)),
        "-s reopen did not reopen the access log\n{}",
        run.ctx()
    );
    let port = visit();
    assert!(
        wait_for(10 * SEC, || logged("access.log", port)),
        "after -s reopen the line is not in the new access.log\naccess.log.2:\n{}",
        read("access.log.2")
    );
}

// ---------------------------------------------------------------------------------
// Binary upgrade.

fn upgrade_conf(p: u16, up: u16, r: u16) -> String {
    format!(
        "{}events {{}}\nstream {{\n  server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{up}; }}\n  \
         server {{ listen 127.0.0.1:{r}; return \"$pid\\n\"; }}\n}}\n",
        head(true, "2")
    )
}

/// A configuration whose server at `port` answers with the pid of the worker.
fn return_pid_conf(daemon: bool, workers: &str, port: u16) -> String {
    format!(
        "{}events {{}}\nstream {{ server {{ listen 127.0.0.1:{port}; return \"$pid\\n\"; }} }}\n",
        head(daemon, workers)
    )
}

/// A daemon with 2 workers whose unix socket PREFIX/u.sock answers with the worker's pid.
fn unix_return_pid_conf() -> String {
    format!(
        "{}events {{}}\nstream {{\n  server {{ listen unix:%%PREFIX%%u.sock; return \"$pid\\n\"; }}\n}}\n",
        head(true, "2")
    )
}

/// A daemonized master with 2 workers serving `p`.
fn start_daemon(conf: &str, p: u16) -> (Run, i32, Vec<i32>) {
    let run = Run::start(conf);
    let old = run.master();
    assert!(wait_for(10 * SEC, || workers_of(old, &[]).len() == 2), "2 workers\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || greet(p).is_ok()), "not serving\n{}", run.ctx());
    let ws = workers_of(old, &[]);
    (run, old, ws)
}

/// USR2 to `old`: the pid file becomes `.oldbin`, a new master writes `sluice.pid` and
/// starts its 2 workers. Returns the new master.
fn usr2(run: &Run, old: i32) -> i32 {
    signal(old, libc::SIGUSR2);
    let up = wait_for(10 * SEC, || {
        let new = run.read_pid(PID);
        run.read_pid(OLDBIN) == Some(old) && new.is_some_and(|n| n != old && alive(n) && workers_of(n, &[]).len() == 2)
    });
    assert!(up, "after USR2: no new master with 2 workers, old pid in {OLDBIN}\n{}", run.ctx());
    run.master()
}

/// WINCH to the old master: its workers finish and exit, the master stays.
fn winch(run: &Run, old: i32, old_workers: &[i32], new: i32) {
    signal(old, libc::SIGWINCH);
    assert!(
        wait_for(10 * SEC, || old_workers.iter().all(|&w| !alive(w)) && workers_of(old, &[new]).is_empty()),
        "after WINCH the old master's workers still run: {:?}\n{}",
        workers_of(old, &[new]),
        run.ctx()
    );
    assert!(alive(old), "WINCH ended the old master\n{}", run.ctx());
}

/// Which process served a connection to the `return $pid` server.
fn served_by(r: u16) -> Option<i32> {
    read_line(&mut dial(r).ok()?).ok()?.trim().parse().ok()
}

/// nginx's `ngx_noaccepting` outlives a plain reload: after WINCH, a HUP reads the
/// configuration and starts workers, and when a later new binary exits the old master
/// starts its workers once more, beside the reload's (nginx 1.22.1 side by side: two
/// sets of workers). The stopped workers' flag is cleared only by the rollback.
#[test]
fn winch_outlives_a_plain_reload_until_the_new_binary_exits() {
    let r = free_port();
    let run = Run::start(&return_pid_conf(true, "2", r));
    let old = run.master();
    assert!(wait_for(10 * SEC, || workers_of(old, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let first = workers_of(old, &[]);
    winch(&run, old, &first, 0);
    signal(old, libc::SIGHUP);
    assert!(wait_for(10 * SEC, || workers_of(old, &[]).len() == 2), "HUP: 2 workers\n{}", run.ctx());
    let reloaded = workers_of(old, &[]);
    let new = usr2(&run, old);
    signal(new, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(new)), "the new binary did not quit\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || workers_of(old, &[]).len() == 4), "no second set of workers\n{}", run.ctx());
    assert!(reloaded.iter().all(|&w| alive(w)), "the reload's workers were stopped\n{}", run.ctx());
    assert_eq!(run.read_pid(PID), Some(old), "{}", run.ctx());
}

/// USR2, WINCH, QUIT to the old master under load: no connection fails, the new
/// master keeps `sluice.pid`, `.oldbin` goes, `-s quit` then stops the new master.
#[test]
fn upgrade_usr2_winch_quit_under_load() {
    let a = tagged("A");
    let (p, r) = (free_port(), free_port());
    let (run, old, old_workers) = start_daemon(&upgrade_conf(p, a, r), p);
    let mut load = Load::new();
    load.short(p, 3);
    assert!(load.progress(30), "the load does not run\n{}", run.ctx());

    let new = usr2(&run, old);
    let new_workers = workers_of(new, &[]);
    assert!(load.progress(30), "no progress with both masters\n{}", run.ctx());
    winch(&run, old, &old_workers, new);
    assert!(load.progress(30), "no progress after WINCH\n{}", run.ctx());
    for _ in 0..5 {
        let by = served_by(r);
        assert!(by.is_some_and(|w| new_workers.contains(&w)), "served by {by:?}, not the new workers\n{}", run.ctx());
    }
    signal(old, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(old)), "the old master did not exit on QUIT\n{}", run.ctx());
    assert!(load.progress(30), "no progress after the old master quit\n{}", run.ctx());
    let (short, _, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed connections (of {short}) during the upgrade:\n{}\n{}",
        failures.len(),
        failures.iter().take(30).cloned().collect::<Vec<_>>().join("\n"),
        run.ctx()
    );
    assert!(alive(new) && workers_of(new, &[]) == new_workers, "the new master or its workers changed\n{}", run.ctx());
    assert_eq!(run.read_pid(PID), Some(new), "sluice.pid after the old master quit\n{}", run.ctx());
    assert!(!run.path(OLDBIN).exists(), "{OLDBIN} left after the old master quit\n{}", run.ctx());

    let out = run.cli(&["-s", "quit"]);
    assert!(out.status.success(), "-s quit: {}\n{}", String::from_utf8_lossy(&out.stderr), run.ctx());
    assert!(
        wait_for(10 * SEC, || !alive(new) && new_workers.iter().all(|&w| !alive(w))),
        "-s quit did not stop the new master\n{}",
        run.ctx()
    );
    assert!(!run.path(PID).exists(), "pid file left\n{}", run.ctx());
}

/// The rollback: after USR2 and WINCH, HUP to the old master starts its workers again
/// without reading the configuration (here broken meanwhile); QUIT to the new master
/// then leaves the old one serving, with `sluice.pid` renamed back. All under load.
#[test]
fn upgrade_rollback_hup_old_quit_new_under_load() {
    let a = tagged("A");
    let (p, r) = (free_port(), free_port());
    let conf = upgrade_conf(p, a, r);
    let (run, old, old_workers) = start_daemon(&conf, p);
    let mut load = Load::new();
    load.short(p, 3);
    assert!(load.progress(30), "the load does not run\n{}", run.ctx());

    let new = usr2(&run, old);
    let new_workers = workers_of(new, &[]);
    winch(&run, old, &old_workers, new);
    assert!(load.progress(30), "no progress after WINCH\n{}", run.ctx());

    run.write_conf(&format!("{conf}bogus_directive on;\n"));
    let emergs = count(&run.log(), "[emerg]");
    signal(old, libc::SIGHUP);
    assert!(
        wait_for(10 * SEC, || workers_of(old, &[new]).len() == 2),
        "HUP to the old master did not start its workers again\n{}",
        run.ctx()
    );
    assert_eq!(count(&run.log(), "[emerg]"), emergs, "the rollback HUP read the configuration\n{}", run.ctx());
    run.write_conf(&conf);
    let back = workers_of(old, &[new]);
    assert!(load.progress(30), "no progress with both masters' workers\n{}", run.ctx());

    signal(new, libc::SIGQUIT);
    assert!(
        wait_for(10 * SEC, || !alive(new) && new_workers.iter().all(|&w| !alive(w))),
        "the new master did not exit on QUIT\n{}",
        run.ctx()
    );
    assert!(
        wait_for(10 * SEC, || run.read_pid(PID) == Some(old) && !run.path(OLDBIN).exists()),
        "the old master did not rename {OLDBIN} back to {PID}\n{}",
        run.ctx()
    );
    assert!(load.progress(30), "no progress after the rollback\n{}", run.ctx());
    let (short, _, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed connections (of {short}) during the rollback:\n{}\n{}",
        failures.len(),
        failures.iter().take(30).cloned().collect::<Vec<_>>().join("\n"),
        run.ctx()
    );
    for _ in 0..5 {
        let by = served_by(r);
        assert!(by.is_some_and(|w| back.contains(&w)), "served by {by:?}, not the old master's workers\n{}", run.ctx());
    }
    assert!(alive(old));
}

/// A unix socket's file through an upgrade, as nginx (ngx_close_listening_sockets, side
/// by side): a new binary that took the socket over leaves the file alone while the old
/// master that handed it over still runs, so a rollback (QUIT to the new master) keeps
/// the file the old master serves; the master that exits last deletes it.
#[test]
fn upgrade_rollback_keeps_a_unix_socket_file() {
    let conf = unix_return_pid_conf();
    let run = Run::start(&conf);
    let old = run.master();
    let sock = run.path("u.sock");
    let ask = |sock: &std::path::Path| -> Option<String> {
        let mut c = std::os::unix::net::UnixStream::connect(sock).ok()?;
        c.set_read_timeout(Some(5 * SEC)).ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        Some(s)
    };
    assert!(wait_for(10 * SEC, || ask(&sock).is_some()), "not serving\n{}", run.ctx());
    let old_workers = workers_of(old, &[]);
    let new = usr2(&run, old);
    winch(&run, old, &old_workers, new);
    signal(old, libc::SIGHUP);
    assert!(wait_for(10 * SEC, || workers_of(old, &[new]).len() == 2), "old workers\n{}", run.ctx());
    signal(new, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(new)), "the new master did not exit on QUIT\n{}", run.ctx());
    assert!(sock.exists(), "the new master deleted the socket file of the old one\n{}", run.ctx());
    let ws = workers_of(old, &[]);
    let by = ask(&sock).and_then(|s| s.trim().parse::<i32>().ok());
    assert!(by.is_some_and(|w| ws.contains(&w)), "served by {by:?}, not the old master's workers\n{}", run.ctx());
    signal(old, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(old)), "the old master did not exit on QUIT\n{}", run.ctx());
    assert!(!sock.exists(), "the last master left its socket file\n{}", run.ctx());
    assert_eq!(count(&run.log(), "[emerg]"), 0, "{}", run.ctx());
}

/// The same rollback with the new binary's exit and the QUIT to the old master handled
/// in one turn (the old master is stopped while both arrive): nginx's cycle reaps before
/// it quits, so the new binary is gone when the listeners close and the file goes with
/// them. sluice closed them on the QUIT first, still counting the new binary as alive,
/// and left the file (seen now and then under load in CI).
#[test]
fn rollback_quit_in_the_turn_of_the_new_binary_exit_deletes_the_socket_file() {
    let conf = unix_return_pid_conf();
    let run = Run::start(&conf);
    let old = run.master();
    let sock = run.path("u.sock");
    assert!(
        wait_for(10 * SEC, || std::os::unix::net::UnixStream::connect(&sock).is_ok()),
        "not serving\n{}",
        run.ctx()
    );
    let old_workers = workers_of(old, &[]);
    let new = usr2(&run, old);
    winch(&run, old, &old_workers, new);
    signal(old, libc::SIGSTOP);
    signal(new, libc::SIGQUIT);
    let exited = wait_for(10 * SEC, || !alive(new));
    signal(old, libc::SIGQUIT);
    signal(old, libc::SIGCONT);
    assert!(exited, "the new master did not exit on QUIT\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || !alive(old)), "the old master did not exit on QUIT\n{}", run.ctx());
    assert!(!sock.exists(), "the last master left its socket file\n{}", run.ctx());
    assert_eq!(count(&run.log(), "[emerg]"), 0, "{}", run.ctx());
}

/// HUP, USR1, USR2 and WINCH to a master that shuts down gracefully are logged and left,
/// as nginx's master cycle, which does nothing else once it quits (side by side with
/// nginx 1.22.1). sluice reloaded: its new workers were never told to quit, and the
/// master never exited.
#[test]
fn signals_during_a_graceful_shutdown_are_left_as_nginx() {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (p, u) = (free_port(), up.local_addr().expect("addr").port());
    let conf = format!(
        "{}events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{u}; }} }}\n",
        head(true, "1")
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let mut c = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    c.set_read_timeout(Some(10 * SEC)).expect("timeout");
    let (mut s, _) = up.accept().expect("accept");
    s.write_all(b"hi").expect("write");
    let mut b = [0u8; 2];
    c.read_exact(&mut b).expect("the session runs");
    let worker = workers_of(master, &[]);
    signal(master, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || run.log().contains("gracefully shutting down")), "no shutdown\n{}", run.ctx());
    for (sig, line) in [
        (libc::SIGHUP, "signal 1 (SIGHUP) received from"),
        (libc::SIGUSR1, "signal 10 (SIGUSR1) received from"),
        (libc::SIGWINCH, "signal 28 (SIGWINCH) received from"),
    ] {
        signal(master, sig);
        assert!(wait_for(10 * SEC, || run.log().contains(line)), "no \"{line}\"\n{}", run.ctx());
    }
    // The turn after the last signal is over once the master has answered a SIGIO.
    signal(master, libc::SIGIO);
    assert!(wait_for(10 * SEC, || run.log().contains("signal 29 (SIGIO)")), "{}", run.ctx());
    assert_eq!(workers_of(master, &[]), worker, "the shutting-down master started workers\n{}", run.ctx());
    for line in ["] reconfiguring", "] reopening logs", "start worker processes\n"] {
        let log = run.log();
        let after = &log[log.find("gracefully shutting down").unwrap_or(0)..];
        assert!(!after.contains(line), "\"{line}\" while shutting down\n{}", run.ctx());
    }
    drop((c, s));
    assert!(wait_for(10 * SEC, || !alive(master)), "the master did not exit after its last session\n{}", run.ctx());
}

/// A worker that dies in the turn of a HUP is reaped first, as in nginx's master cycle:
/// respawned, then told to quit with the old configuration's other workers, so the new
/// configuration runs its 2 workers (side by side with nginx 1.22.1: the same lines in
/// the same order). sluice's new worker of the dead one's was never told to quit.
#[test]
fn a_worker_dead_in_the_turn_of_a_reload_is_reaped_first() {
    let r = free_port();
    let conf = return_pid_conf(true, "2", r);
    let (run, master, before) = start_daemon(&conf, r);
    signal(master, libc::SIGSTOP);
    signal(before[0], libc::SIGKILL);
    let dead = wait_for(10 * SEC, || !alive(before[0]));
    signal(master, libc::SIGHUP);
    signal(master, libc::SIGCONT);
    assert!(dead, "the worker did not die\n{}", run.ctx());
    let settled = wait_for(10 * SEC, || {
        let now = workers_of(master, &[]);
        now.len() == 2 && now.iter().all(|w| !before.contains(w)) && count(&run.log(), "exited") == 3
    });
    assert!(settled, "not 2 new workers: {:?}\n{}", workers_of(master, &[]), run.ctx());
    let by_master = format!(" {master}#{master}: ");
    let log = run.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&by_master))
        .map(|l| l.split(&by_master).nth(1).unwrap_or(""))
        .skip_while(|l| !l.starts_with("signal 17") && !l.starts_with("signal 1 "))
        .map(|l| l.split(" received from ").next().unwrap_or(l))
        .collect();
    // The two signals' lines come in the kernel's delivery order, either way round.
    let dead_line = format!("worker process {} exited on signal 9", before[0]);
    let chld_first = ["signal 17 (SIGCHLD)", &dead_line, "signal 1 (SIGHUP)"];
    let hup_first = ["signal 1 (SIGHUP)", "signal 17 (SIGCHLD)", &dead_line];
    assert!(lines.len() > 4, "{}", run.ctx());
    assert!(lines[..3] == chld_first || lines[..3] == hup_first, "{:?}\n{}", &lines[..3], run.ctx());
    let respawn = lines[3].strip_prefix("start worker process ").and_then(|p| p.parse::<i32>().ok());
    assert!(respawn.is_some(), "no respawn before the reload: {:?}\n{}", lines[3], run.ctx());
    assert_eq!(lines[4], "reconfiguring", "{}", run.ctx());
    assert!(
        wait_for(10 * SEC, || respawn.is_some_and(|p| !alive(p))),
        "the respawned worker was not told to quit\n{}",
        run.ctx()
    );
}

/// A reload that drops a unix listener deletes its file with nginx's warn line; a file
/// gone by exit is an emerg line after "exit" (both recorded side by side).
#[test]
fn unix_socket_files_deleted_as_nginx() {
    let server = |name: &str| format!("  server {{ listen unix:%%PREFIX%%{name}.sock; return {name}; }}\n");
    let conf = |both: bool| {
        format!(
            "{}events {{}}\nstream {{\n{}{}}}\n",
            head(true, "1"),
            server("a"),
            if both { server("b") } else { String::new() }
        )
    };
    let run = Run::start(&conf(true));
    let master = run.master();
    let (a, b) = (run.path("a.sock"), run.path("b.sock"));
    assert!(wait_for(10 * SEC, || a.exists() && b.exists()), "no socket files\n{}", run.ctx());
    run.write_conf(&conf(false));
    signal(master, libc::SIGHUP);
    let warn = format!("[warn] {master}#{master}: deleting socket {}", b.display());
    assert!(wait_for(10 * SEC, || run.log().contains(&warn)), "no \"{warn}\"\n{}", run.ctx());
    assert!(!b.exists() && a.exists(), "{}", run.ctx());
    std::fs::remove_file(&a).expect("remove a.sock");
    signal(master, libc::SIGTERM);
    assert!(wait_for(10 * SEC, || !alive(master)), "still running\n{}", run.ctx());
    let log = run.log();
    let exit = format!("[notice] {master}#{master}: exit\n");
    let emerg = format!("[emerg] {master}#{master}: unlink() {} failed (2: No such file or directory)\n", a.display());
    let (x, e) = (log.rfind(&exit), log.find(&emerg));
    assert!(x.is_some() && e.is_some() && x < e, "want \"{emerg}\" after the master's exit\n{log}");
    assert_eq!(count(&log, "[emerg]"), 1, "{log}");
}

/// A reload that drops a unix listener and moves the error log: "deleting socket" is
/// logged into the new log after its epoll line, as ngx_init_cycle closes the old
/// sockets after the modules' init (nginx 1.22.1 side by side).
#[test]
fn deleting_socket_goes_to_the_reloads_new_log() {
    let conf = |both: bool| {
        let head = head(true, "1");
        let head = if both { head } else { head.replace("error.log info;", "e2.log info;") };
        let b = if both { "  server { listen unix:%%PREFIX%%b.sock; return b; }\n" } else { "" };
        format!("{head}events {{}}\nstream {{\n  server {{ listen unix:%%PREFIX%%a.sock; return a; }}\n{b}}}\n")
    };
    let run = Run::start(&conf(true));
    let master = run.master();
    let b = run.path("b.sock");
    assert!(wait_for(10 * SEC, || b.exists()), "no socket file\n{}", run.ctx());
    run.write_conf(&conf(false));
    signal(master, libc::SIGHUP);
    let e2 = || std::fs::read_to_string(run.path("e2.log")).unwrap_or_default();
    assert!(wait_for(10 * SEC, || e2().contains("start worker processes")), "no reload\n{}", run.ctx());
    let log = e2();
    let by_master = format!(" {master}#{master}: ");
    let lines: Vec<&str> = log.lines().filter_map(|l| l.split_once(&by_master).map(|(_, m)| m)).take(3).collect();
    let warn = format!("deleting socket {}", b.display());
    let want = ["using the \"epoll\" event method", &warn, "start worker processes"];
    assert_eq!(lines, want, "e2.log:\n{log}\n{}", run.ctx());
    assert!(!run.log().contains("deleting socket"), "{}", run.ctx());
    assert!(!b.exists(), "{}", run.ctx());
}

/// Copy the binary by a `cp` of its own: a file this (threaded) test process wrote
/// would be open for writing in any child another test forks until that child execs,
/// and an exec of the copy meanwhile fails with ETXTBSY ("Text file busy").
fn copy_binary(to: &std::path::Path) {
    let st = Command::new("cp").arg(bin()).arg(to).status().expect("cp");
    assert!(st.success(), "cp {} {}", bin().display(), to.display());
}

/// USR2 runs the program as it was started (nginx's argv[0]), so after the binary file
/// was replaced the usual way (a new file renamed over it) the upgrade starts the new
/// one. sluice ran /proc/self/exe, which then names a deleted file: execve() failed.
#[test]
fn usr2_runs_the_replaced_binary_file() {
    let r = free_port();
    let conf = return_pid_conf(true, "2", r);
    let run = Run::start_with(&conf, None, &[], true);
    let old = run.master();
    assert!(wait_for(10 * SEC, || workers_of(old, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let program = run.copy();
    copy_binary(&run.path("sbin/sluice.new"));
    std::fs::rename(run.path("sbin/sluice.new"), &program).expect("install");
    let new = usr2(&run, old);
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
    assert_eq!(exe, program.display().to_string(), "{}", run.ctx());
    assert!(!run.log().contains("execve() failed"), "{}", run.ctx());
}

/// A USR2 whose pid file cannot be renamed: nginx's alert, and its "new binary" left at
/// -1 (ngx_exec_new_binary returns NGX_INVALID_PID): a HUP then starts workers without
/// reading the configuration, and the exit deletes the .oldbin name (an alert here, it
/// is a directory) and leaves the pid file (nginx 1.22.1 side by side).
#[test]
fn usr2_with_a_pid_file_that_cannot_be_renamed_as_nginx() {
    let r = free_port();
    let conf = return_pid_conf(true, "1", r);
    let run = Run::start_in(&conf, &[OLDBIN]);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let first = workers_of(master, &[]);
    signal(master, libc::SIGUSR2);
    let (pid, oldbin) = (run.path(PID), run.path(OLDBIN));
    let alert = format!(
        "[alert] {master}#{master}: rename() {} to {} failed before executing new binary process \"{}\" (21: Is a directory)",
        pid.display(),
        oldbin.display(),
        bin().display()
    );
    assert!(wait_for(10 * SEC, || run.log().contains(&alert)), "no \"{alert}\"\n{}", run.ctx());
    signal(master, libc::SIGHUP);
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "HUP did not start workers\n{}", run.ctx());
    assert!(first.iter().all(|&w| alive(w)), "the first worker was told to quit\n{}", run.ctx());
    let log = run.log();
    assert!(!log[log.find(&alert).unwrap_or(0)..].contains("] reconfiguring"), "HUP read the configuration\n{log}");
    signal(master, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(master)), "still running\n{}", run.ctx());
    let unlink = format!("[alert] {master}#{master}: unlink() \"{}\" failed (21: Is a directory)\n", oldbin.display());
    assert!(run.log().contains(&unlink), "no \"{unlink}\"\n{}", run.ctx());
    assert!(pid.exists(), "{}", run.ctx());
}

/// A rollback whose pid file cannot be renamed back, and an exit whose pid file is gone:
/// nginx's alerts (ngx_reap_children, ngx_delete_pidfile).
#[test]
fn pid_files_that_cannot_be_renamed_back_or_deleted_as_nginx() {
    let r = free_port();
    let conf = return_pid_conf(true, "2", r);
    let run = Run::start(&conf);
    let old = run.master();
    assert!(wait_for(10 * SEC, || workers_of(old, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let new = usr2(&run, old);
    std::fs::remove_file(run.path(OLDBIN)).expect("rm oldbin");
    signal(new, libc::SIGQUIT);
    let back = format!(
        "[alert] {old}#{old}: rename() {} back to {} failed after the new binary process \"{}\" exited (2: No such file or directory)",
        run.path(OLDBIN).display(),
        run.path(PID).display(),
        bin().display()
    );
    assert!(wait_for(10 * SEC, || run.log().contains(&back)), "no \"{back}\"\n{}", run.ctx());
    signal(old, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(old)), "still running\n{}", run.ctx());
    let log = run.log();
    let unlink = format!(
        "[alert] {old}#{old}: unlink() \"{}\" failed (2: No such file or directory)\n",
        run.path(PID).display()
    );
    let exit = format!("[notice] {old}#{old}: exit\n");
    let (u, x) = (log.find(&unlink), log.find(&exit));
    assert!(u.is_some() && x.is_some() && u < x, "want \"{unlink}\" before the exit\n{log}");
}

/// SIGCHLD to a master with no child left (its workers stopped by WINCH): nginx's
/// waitpid() finds none and says so at info.
#[test]
fn sigchld_without_children_as_nginx() {
    let r = free_port();
    let conf = return_pid_conf(true, "1", r);
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let ws = workers_of(master, &[]);
    winch(&run, master, &ws, 0);
    // Reaped, not only exited: a SIGCHLD still pending for the worker would absorb ours.
    assert!(wait_for(10 * SEC, || ws.iter().all(|&w| stat(w).is_none())), "not reaped\n{}", run.ctx());
    signal(master, libc::SIGCHLD);
    let line = format!("[info] {master}#{master}: waitpid() failed (10: No child processes)");
    assert!(wait_for(10 * SEC, || run.log().contains(&line)), "no \"{line}\"\n{}", run.ctx());
    assert_eq!(count(&run.log(), "waitpid()"), 1, "{}", run.ctx());
}

/// Signals a worker gets in one turn are acted on in nginx's worker-cycle order, once
/// each: terminate, then quit, then reopen (the worker is stopped while they arrive).
/// QUIT with USR1: "gracefully shutting down" then "reopening logs"; INT with USR1:
/// "exiting" and no reopen (nginx 1.22.1 side by side). sluice acted in arrival order.
#[test]
fn a_workers_signals_of_one_turn_in_nginx_order() {
    let r = free_port();
    let conf = return_pid_conf(true, "1", r);
    let run = Run::start(&conf);
    let master = run.master();
    let worker_lines = |w: i32| -> Vec<String> {
        let by = format!(" {w}#{w}: ");
        let log = run.log();
        log.lines()
            .filter_map(|l| l.split_once(&by).map(|(_, m)| m.to_string()))
            .filter(|m| !m.starts_with("signal ") && !m.starts_with("epoll_wait()") && !m.starts_with('*'))
            .collect()
    };
    for (sigs, want) in [
        ([libc::SIGUSR1, libc::SIGQUIT], &["gracefully shutting down", "reopening logs", "exiting", "exit"][..]),
        ([libc::SIGUSR1, libc::SIGINT], &["exiting", "exit"][..]),
    ] {
        assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
        let w = workers_of(master, &[])[0];
        assert!(wait_for(10 * SEC, || served_by(r) == Some(w)), "not serving\n{}", run.ctx());
        signal(w, libc::SIGSTOP);
        for sig in sigs {
            signal(w, sig);
        }
        signal(w, libc::SIGCONT);
        assert!(wait_for(10 * SEC, || !alive(w)), "worker {w} did not exit\n{}", run.ctx());
        assert!(wait_for(10 * SEC, || worker_lines(w).len() >= want.len()), "{}", run.ctx());
        assert_eq!(worker_lines(w), want, "{sigs:?}\n{}", run.ctx());
    }
}

/// A worker that does not exit on TERM (stopped here): nginx's master sets itself an
/// alarm at 50 ms, doubles it each time, and kills the workers once it is over a second:
/// six SIGALRM lines, SIGKILL at 3.15 s (nginx 1.22.1 side by side). sluice killed at
/// 5 s without a line.
#[test]
fn term_escalates_to_sigkill_on_nginx_alarms() {
    let r = free_port();
    let conf = return_pid_conf(true, "1", r);
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let w = workers_of(master, &[])[0];
    signal(w, libc::SIGSTOP);
    let t0 = Instant::now();
    signal(master, libc::SIGTERM);
    assert!(wait_for(20 * SEC, || !alive(master)), "the master did not exit\n{}", run.ctx());
    let took = t0.elapsed();
    let log = run.log();
    let alarm = format!("[notice] {master}#{master}: signal 14 (SIGALRM) received");
    assert_eq!(count(&log, &alarm), 6, "{log}");
    assert!(log.contains(&format!("[alert] {master}#{master}: worker process {w} exited on signal 9\n")), "{log}");
    assert!(took >= Duration::from_millis(3100), "killed after {took:?}\n{log}");
}

/// Start `sluice -p PREFIX -c sluice.conf` with `conf` and wait (bounded) for the
/// command to return: (exit status, stderr). A daemon it leaves goes with the `Run`.
fn start_command(conf: &str) -> (Run, Option<i32>, String) {
    let run = Run { dir: TempDir::new("process"), child: None };
    run.write_conf(conf);
    let mut cmd = Command::new(bin());
    cmd.arg("-p").arg(run.prefix()).arg("-c").arg("sluice.conf");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sluice");
    // Polled without a pause, so the pid file is looked at as soon as the command returns.
    let t0 = Instant::now();
    let mut status = None;
    while status.is_none() && t0.elapsed() < 10 * SEC {
        status = child.try_wait().ok().flatten();
        std::thread::yield_now();
    }
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = child.wait();
    (run, status.and_then(|s| s.code()), err)
}

/// With `daemon on` the pid file is there, naming the running master, as soon as the
/// start command returns: Debian's nginx (the oracle) writes it in the process started
/// by hand, before that exits. sluice's daemon wrote it a moment later, and a script
/// that read it at once missed it about one time in three. A HUP sent at once reloads.
#[test]
fn a_daemons_pid_file_is_there_when_the_start_returns() {
    for _ in 0..10 {
        let r = free_port();
        let conf = format!(
            "{}events {{}}\nstream {{ server {{ listen 127.0.0.1:{r}; return \"$pid\\n\"; }} }}\n",
            head(true, "1")
        );
        let (run, code, err) = start_command(&conf);
        let pid = run.read_pid(PID);
        assert_eq!(code, Some(0), "{err}\n{}", run.ctx());
        assert!(pid.is_some_and(alive), "pid file {pid:?} right after the start\n{}", run.ctx());
        // A signal sent at once waits for the daemon's handlers (HUP's default action
        // would end it).
        let pid = pid.unwrap_or(0);
        signal(pid, libc::SIGHUP);
        assert!(wait_for(10 * SEC, || run.log().contains(": reconfiguring\n")), "no reload\n{}", run.ctx());
        assert!(alive(pid), "HUP right after the start ended the master\n{}", run.ctx());
        assert!(wait_for(10 * SEC, || workers_of(pid, &[]).len() == 1), "{}", run.ctx());
    }
}

/// A daemon's pid file that cannot be written: the start command says so on stderr and
/// exits 1, and the daemon runs on without one (Debian's nginx 1.22.1 side by side).
#[test]
fn a_daemons_pid_file_that_cannot_be_written_as_nginx() {
    let r = free_port();
    let conf = format!(
        "{}events {{}}\nstream {{ server {{ listen 127.0.0.1:{r}; return \"$pid\\n\"; }} }}\n",
        head(true, "1").replace("pid %%PREFIX%%sluice.pid;", "pid %%PREFIX%%nodir/x.pid;")
    );
    let (run, code, err) = start_command(&conf);
    let want = format!(
        "sluice: [emerg] open() \"{}\" failed (2: No such file or directory)\n",
        run.path("nodir/x.pid").display()
    );
    assert_eq!((code, err.as_str()), (Some(1), want.as_str()), "{}", run.ctx());
    assert!(wait_for(10 * SEC, || greet(r).is_ok()), "the daemon does not serve\n{}", run.ctx());
}

/// nginx's other rollback: when the new master exits while the old master's workers
/// are stopped (WINCH), the old master starts workers again by itself.
#[test]
fn upgrade_new_master_exit_restarts_old_workers() {
    let a = tagged("A");
    let (p, r) = (free_port(), free_port());
    let (run, old, old_workers) = start_daemon(&upgrade_conf(p, a, r), p);
    let new = usr2(&run, old);
    winch(&run, old, &old_workers, new);
    signal(new, libc::SIGTERM);
    assert!(wait_for(10 * SEC, || !alive(new)), "the new master did not exit on TERM\n{}", run.ctx());
    assert!(
        wait_for(10 * SEC, || workers_of(old, &[]).len() == 2),
        "the old master did not start workers when the new binary exited\n{}",
        run.ctx()
    );
    assert!(
        wait_for(10 * SEC, || run.read_pid(PID) == Some(old) && !run.path(OLDBIN).exists()),
        "{PID} was not renamed back\n{}",
        run.ctx()
    );
    let ws = workers_of(old, &[]);
    assert!(wait_for(10 * SEC, || served_by(r).is_some_and(|w| ws.contains(&w))), "not serving\n{}", run.ctx());
}

/// A binary upgrade whose configuration is now broken fails, and the error log says why:
/// the running master's standard error is its error log (nginx's
/// ngx_log_redirect_stderr), so the new binary's console lines land there (side by side
/// with nginx 1.22.1; sluice's went to /dev/null). The old master serves on.
#[test]
fn failed_upgrade_says_why_in_the_error_log() {
    let a = tagged("A");
    let (p, r) = (free_port(), free_port());
    let conf = upgrade_conf(p, a, r);
    let (run, old, _) = start_daemon(&conf, p);
    let broken = conf.replace("stream {", "stream {\nbogus;");
    assert_ne!(broken, conf);
    run.write_conf(&broken);
    signal(old, libc::SIGUSR2);
    assert!(
        wait_for(10 * SEC, || run.log().contains("exited with code 1")),
        "the new binary did not fail\n{}",
        run.ctx()
    );
    // The new binary's startup log is its standard error: the old master's error log.
    let log = run.log();
    assert!(log.lines().any(|l| l.contains("[emerg]") && l.contains(": unknown directive \"bogus\" in ")), "{log}");
    assert_eq!(run.read_pid(PID), Some(old), "{}", run.ctx());
    assert!(wait_for(10 * SEC, || greet(p).is_ok()), "not serving\n{}", run.ctx());
}

/// The titles `ps` shows, as nginx's (`sluice: ` where nginx writes `nginx: `): "master
/// process" and the command line, "worker process", and "worker process is shutting
/// down" for a worker that drains after a reload (side by side with nginx 1.22.1: sluice
/// left every process with its command line, so `pgrep -f 'worker process'` found none).
#[test]
fn process_titles_as_nginx() {
    let a = tagged("A");
    let (p, r) = (free_port(), free_port());
    let conf = upgrade_conf(p, a, r).replace("daemon on;", "daemon off;");
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let title = |pid: i32| {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text: String = String::from_utf8_lossy(&raw).replace('\0', " ");
        text.trim_end().to_string()
    };
    let m = title(master);
    assert!(m.starts_with("sluice: master process ") && m.contains(" -c ") && m.contains("sluice.conf"), "{m:?}");
    let old = workers_of(master, &[]);
    for &w in &old {
        assert!(wait_for(10 * SEC, || title(w) == "sluice: worker process"), "{:?}", title(w));
    }
    // A session held open keeps a worker draining after a reload.
    let mut held = dial(p).expect("connect");
    assert_eq!(read_line(&mut held).expect("greeting"), "A");
    signal(master, libc::SIGHUP);
    let drained = |w: &i32| title(*w) == "sluice: worker process is shutting down";
    assert!(wait_for(10 * SEC, || old.iter().any(drained)), "{:?}", old.iter().map(|&w| title(w)).collect::<Vec<_>>());
    drop(held);
}

/// USR2 as nginx takes it (its log recorded side by side): "changing binary" after the
/// signal line; ignored, with its crit line, by a new binary whose old master still runs,
/// by that old master, and by a master that was not daemonized (its parent is unchanged).
#[test]
fn usr2_is_ignored_where_nginx_ignores_it() {
    const IGNORED: &str = "[crit]";
    const WHY: &str = "the changing binary signal is ignored: you should shutdown or terminate before either old or \
                       new binary's process";
    let a = tagged("A");
    let (p, r) = (free_port(), free_port());
    let (run, old, _) = start_daemon(&upgrade_conf(p, a, r), p);
    let new = usr2(&run, old);
    let log = run.log();
    let at = log.find("SIGUSR2").map_or(0, |i| log[..i].rfind('\n').map_or(0, |n| n + 1));
    // the master's next line (a worker may log its sessions' ends in between)
    let by_master = format!(" {old}#{old}: ");
    let next: Vec<&str> = log[at..].lines().filter(|l| l.contains(&by_master)).take(2).collect();
    assert!(next.len() == 2 && next[1].ends_with(": changing binary"), "{next:?}\n{}", run.ctx());
    for pid in [new, old] {
        signal(pid, libc::SIGUSR2);
        assert!(
            wait_for(10 * SEC, || run.log().contains(&format!("{IGNORED} {pid}#{pid}: {WHY}"))),
            "USR2 to {pid} not ignored\n{}",
            run.ctx()
        );
    }
    let log = run.log();
    let (ignoring, crit) = (count(&log, "(SIGUSR2) received from "), count(&log, WHY));
    assert!(ignoring == 3 && crit == 2 && count(&log, ", ignoring") == 2, "{}", run.ctx());
    assert!(run.read_pid(OLDBIN) == Some(old) && run.read_pid(PID) == Some(new), "{}", run.ctx());
    signal(old, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || !alive(old)), "{}", run.ctx());

    // Not daemonized: the master's parent is the one that started it.
    let q = free_port();
    let fg = Run::start(&format!(
        "{}events {{}}\nstream {{ server {{ listen 127.0.0.1:{q}; return x; }} }}\n",
        head(false, "1")
    ));
    let master = fg.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", fg.ctx());
    signal(master, libc::SIGUSR2);
    assert!(
        wait_for(10 * SEC, || fg.log().contains(&format!("{IGNORED} {master}#{master}: {WHY}"))),
        "USR2 to a foreground master not ignored\n{}",
        fg.ctx()
    );
    assert!(!fg.path(OLDBIN).exists(), "{}", fg.ctx());
}

/// A single process takes USR2 and WINCH as nginx's does (side by side): USR2 ignored
/// with the crit line (its parent is unchanged), WINCH only logged (not daemonized); it
/// serves on.
#[test]
fn single_process_usr2_and_winch_as_nginx() {
    let p = free_port();
    let s = Sluice::start(&format!("events {{}} stream {{ server {{ listen 127.0.0.1:{p}; return x; }} }}"));
    let (pid, me) = (s.pid(), std::process::id());
    for sig in [libc::SIGUSR2, libc::SIGWINCH] {
        assert!(wait_in_epoll(pid));
        signal(pid, sig);
    }
    let want = [
        format!("[notice] {pid}#{pid}: signal 12 (SIGUSR2) received from {me}, ignoring"),
        format!("[crit] {pid}#{pid}: the changing binary signal is ignored: you should shutdown or terminate before either old or new binary's process"),
        format!("[notice] {pid}#{pid}: signal 28 (SIGWINCH) received from {me}"),
    ];
    let got = || -> Vec<String> {
        s.error_log()
            .lines()
            .filter(|l| !l.contains("epoll_wait"))
            .skip(4)
            .map(|l| l.get(20..).unwrap_or("").to_string())
            .collect()
    };
    wait_for(10 * SEC, || got().len() >= 3);
    assert_eq!(got(), want, "{}", s.error_log());
    assert_eq!(exchange(p, b""), b"x");
}

/// HUP to a single process (master_process off) reads the configuration again, as
/// nginx's single process cycle: a broken one gets nginx's lines and the process serves
/// on (nginx 1.22.1 side by side); a good one is not taken, with sluice's warning (nginx
/// 1.22.1 takes it half: its new listening sockets are never served).
#[test]
fn single_process_hup_reads_the_configuration() {
    let p = free_port();
    let conf = format!("events {{}} stream {{ server {{ listen 127.0.0.1:{p}; return x; }} }}\n");
    let s = Sluice::start(&conf);
    let (pid, me) = (s.pid(), std::process::id());
    let file = s.dir.join("sluice.conf");
    let good = std::fs::read_to_string(&file).expect("read conf");
    let lines = good.lines().count();
    std::fs::write(&file, format!("{good}garbage;\n")).expect("write conf");
    assert!(wait_in_epoll(pid));
    signal(pid, libc::SIGHUP);
    let emerg = format!("[emerg] {pid}#{pid}: unknown directive \"garbage\" in {}:{}", file.display(), lines + 1);
    assert!(wait_for(10 * SEC, || s.error_log().contains(&emerg)), "no {emerg:?}\n{}", s.error_log());
    let log = s.error_log();
    let tail: Vec<&str> =
        log.lines().filter(|l| !l.contains("epoll_wait")).map(|l| l.get(20..).unwrap_or("")).collect();
    let want = [
        format!("[notice] {pid}#{pid}: signal 1 (SIGHUP) received from {me}, reconfiguring"),
        format!("[notice] {pid}#{pid}: reconfiguring"),
        emerg.clone(),
    ];
    assert_eq!(tail[tail.len().saturating_sub(3)..], want, "{log}");
    assert_eq!(exchange(p, b""), b"x");
    std::fs::write(&file, &good).expect("write conf");
    assert!(wait_in_epoll(pid));
    signal(pid, libc::SIGHUP);
    let warn = "[warn] ";
    assert!(wait_for(10 * SEC, || s.error_log().contains(warn)), "{}", s.error_log());
    assert_eq!(exchange(p, b""), b"x");
}

/// WINCH sent to a worker of a daemonized master stops that worker gracefully, with
/// nginx's "aborting" alert (its ngx_debug_quit), and the master starts another.
#[test]
fn daemonized_worker_stops_on_winch_and_is_replaced() {
    let a = tagged("A");
    let (p, r) = (free_port(), free_port());
    let (run, master, ws) = start_daemon(&upgrade_conf(p, a, r), p);
    let w = ws[0];
    signal(w, libc::SIGWINCH);
    assert!(wait_for(10 * SEC, || !alive(w)), "worker {w} still runs\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "not replaced\n{}", run.ctx());
    let log = run.log();
    let mine: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!(" {w}#{w}: ")) && !l.contains("[info]"))
        .map(|l| l.get(20..).unwrap_or(""))
        .collect();
    let head = format!("[notice] {w}#{w}: signal 28 (SIGWINCH) received from ");
    assert!(mine.first().is_some_and(|l| l.starts_with(&head) && l.ends_with(", shutting down")), "{mine:?}");
    let rest: Vec<String> = mine.iter().skip(1).map(|l| l.to_string()).collect();
    let want: Vec<String> =
        ["[notice] {}: gracefully shutting down", "[notice] {}: exiting", "[alert] {}: aborting", "[notice] {}: exit"]
            .iter()
            .map(|f| f.replace("{}", &format!("{w}#{w}")))
            .collect();
    assert_eq!(rest, want, "{}", run.ctx());
    assert!(log.contains(&format!("worker process {w} exited with code 0")), "{}", run.ctx());
}

// ---------------------------------------------------------------------------------
// Workers.

/// A worker killed by a signal is replaced, with an `[alert]` naming it.
#[test]
fn killed_worker_is_respawned_with_alert() {
    let p = free_port();
    let conf = return_pid_conf(false, "2", p);
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let before = workers_of(master, &[]);
    let victim = before[0];
    signal(victim, libc::SIGKILL);
    assert!(
        wait_for(10 * SEC, || {
            let now = workers_of(master, &[]);
            now.len() == 2 && !now.contains(&victim)
        }),
        "worker {victim} was not replaced: {:?}\n{}",
        workers_of(master, &[]),
        run.ctx()
    );
    let alert = format!("worker process {victim} exited on signal 9");
    assert!(
        wait_for(5 * SEC, || run.log().lines().any(|l| l.contains("[alert]") && l.contains(&alert))),
        "no [alert] \"{alert}\"\n{}",
        run.ctx()
    );
    let now = workers_of(master, &[]);
    let fresh: Vec<i32> = now.iter().copied().filter(|w| !before.contains(w)).collect();
    assert_eq!(fresh.len(), 1, "{}", run.ctx());
    assert!(
        wait_for(10 * SEC, || served_by(p).is_some_and(|w| now.contains(&w))),
        "the workers do not serve after the respawn\n{}",
        run.ctx()
    );
    assert!(alive(before[1]), "the other worker was touched\n{}", run.ctx());
}

/// `proxy_bind ADDR transparent` sets IP_TRANSPARENT on the upstream socket, which needs
/// CAP_NET_RAW: a worker that is not root keeps that capability, as nginx's does (nginx
/// 1.22.1 side by side: `user nobody nogroup`, the backend sees the bound address).
#[test]
fn proxy_bind_transparent_keeps_net_raw_for_the_workers() {
    let peer = backend(|mut c| {
        let ip = c.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let _ = c.write_all(format!("{ip}\n").as_bytes());
    });
    let p = free_port();
    let head = head(false, "1").replace("user root;", "user nobody nogroup;");
    let conf = format!(
        "{head}events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{peer}; \
         proxy_bind 127.0.0.2 transparent; }} }}\n"
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let worker = workers_of(master, &[])[0];
    let uid = || {
        std::fs::read_to_string(format!("/proc/{worker}/status"))
            .ok()
            .and_then(|st| st.lines().find(|l| l.starts_with("Uid:")).map(str::to_string))
            .unwrap_or_default()
    };
    // A worker just forked is still root until it has set its user: wait for that.
    let not_root = || uid().split_whitespace().nth(1).is_some_and(|u| u != "0");
    assert!(wait_for(10 * SEC, not_root), "the worker is root: {:?}", uid());
    assert!(
        wait_for(10 * SEC, || greet(p).is_ok_and(|ip| ip == "127.0.0.2")),
        "the backend did not see 127.0.0.2: {:?}\n{}",
        greet(p),
        run.ctx()
    );
    assert!(!run.log().contains("IP_TRANSPARENT"), "{}", run.ctx());
}

/// `worker_processes auto` starts one worker per CPU; `user` sets the workers' user
/// (the master stays root); `worker_rlimit_nofile` sets their descriptor limit.
#[test]
fn worker_processes_auto_user_and_rlimit_nofile() {
    let p = free_port();
    let head = head(false, "auto").replace("user root;", "user nobody nogroup;");
    let conf =
        format!("{head}worker_rlimit_nofile 1000;\nevents {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return \"$pid\\n\"; }} }}\n");
    let run = Run::start(&conf);
    let master = run.master();
    // SAFETY: sysconf has no preconditions.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    assert!(
        wait_for(10 * SEC, || workers_of(master, &[]).len() == ncpu),
        "{} workers for {ncpu} CPUs\n{}",
        workers_of(master, &[]).len(),
        run.ctx()
    );
    let ws = workers_of(master, &[]);
    let uid = |pid: i32| status_field(pid, "Uid").and_then(|u| u.split_whitespace().next().map(str::to_string));
    assert_eq!(uid(master).as_deref(), Some("0"), "the master's uid");
    // A worker just forked is still root until it has set itself up: wait for that.
    let dropped = |w: i32| {
        status_field(w, "Uid").is_some_and(|u| u.split_whitespace().all(|x| x == "65534"))
            && nofile_limit(w) == Some(1000)
    };
    assert!(wait_for(10 * SEC, || ws.iter().all(|&w| dropped(w))), "{}", {
        let each: Vec<String> = ws
            .iter()
            .map(|&w| format!("worker {w}: uids {:?}, RLIMIT_NOFILE {:?}", status_field(w, "Uid"), nofile_limit(w)))
            .collect();
        each.join("\n")
    });
    assert!(wait_for(10 * SEC, || served_by(p).is_some_and(|w| ws.contains(&w))), "not serving\n{}", run.ctx());
}

/// `worker_processes auto` counts the CPUs online, as nginx 1.22.1's ngx_ncpu, not the
/// ones the process may run on: started under a one-CPU affinity mask (`taskset -c 0`, a
/// container's cpuset), sluice still starts a worker per CPU online (side by side with
/// nginx 1.22.1 under `taskset -c 1` on 2 CPUs: both 2 workers).
#[test]
fn worker_processes_auto_counts_cpus_online_whatever_the_affinity() {
    // SAFETY: sysconf has no preconditions.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let p = free_port();
    let conf =
        format!("{}events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return ok; }} }}\n", head(false, "auto"));
    // The child inherits this thread's mask: one CPU, then the old mask back.
    // SAFETY: sched_{get,set}affinity on this thread with sets we own.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut old) }, 0);
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let first = (0..1024).find(|&c| unsafe { libc::CPU_ISSET(c, &old) }).expect("a CPU");
    unsafe { libc::CPU_SET(first, &mut one) };
    assert_eq!(unsafe { libc::sched_setaffinity(0, size, &one) }, 0);
    let run = Run::start(&conf);
    assert_eq!(unsafe { libc::sched_setaffinity(0, size, &old) }, 0);
    let master = run.master();
    let allowed = status_field(master, "Cpus_allowed_list");
    assert_eq!(allowed.as_deref(), Some(first.to_string().as_str()), "the master's mask");
    assert!(
        wait_for(10 * SEC, || workers_of(master, &[]).len() == ncpu),
        "{} workers for {ncpu} CPUs online\n{}",
        workers_of(master, &[]).len(),
        run.ctx()
    );
}

/// A `worker_rlimit_nofile` the kernel refuses (over fs.nr_open) is a worker's alert
/// naming the value, as nginx's (side by side with nginx 1.22.1).
#[test]
fn worker_rlimit_nofile_refused_names_the_value() {
    let p = free_port();
    let conf = format!(
        "{}worker_rlimit_nofile 2000000;\nevents {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return ok; }} }}\n",
        head(false, "1")
    );
    let run = Run::start(&conf);
    let want = "setrlimit(RLIMIT_NOFILE, 2000000) failed (1: Operation not permitted)";
    assert!(wait_for(10 * SEC, || run.log().contains(want)), "{}", run.ctx());
}

/// Listening sockets of a port, TCP or UDP, in this process's network namespace.
fn sockets_on(proto: &str, port: u16) -> usize {
    let table = std::fs::read_to_string(format!("/proc/thread-self/net/{proto}")).unwrap_or_default();
    let local = format!(":{port:04X} ");
    // TCP: LISTEN (0A); UDP: every bound socket.
    table.lines().filter(|l| l.contains(&local) && (proto == "udp" || l.contains(" 0A "))).count()
}

/// A reload that adds `reuseport` keeps the socket, sets SO_REUSEPORT on it and opens one
/// more per worker next to it, with no alert; one that takes `reuseport` away closes the
/// extra sockets; TCP and UDP (side by side with nginx 1.22.1: 1 -> 2 -> 1 sockets and no
/// alert; sluice logged "bind() ... failed (98: Address already in use)" and, for UDP,
/// kept the extra sockets).
#[test]
fn reload_adds_and_removes_reuseport() {
    let (p, u) = (free_port(), free_port());
    let conf = |opt: &str| {
        format!(
            "{}events {{}}\nstream {{\n  server {{ listen 127.0.0.1:{p} {opt}; return \"ok\\n\"; }}\n  \
             server {{ listen 127.0.0.1:{u} udp {opt}; return ok; }}\n}}\n",
            head(false, "2")
        )
    };
    let run = Run::start(&conf(""));
    let master = run.master();
    assert!(wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "ok")), "not serving\n{}", run.ctx());
    for (i, (opt, n)) in [("reuseport", 2), ("", 1), ("reuseport", 2)].into_iter().enumerate() {
        run.write_conf(&conf(opt));
        signal(master, libc::SIGHUP);
        assert!(
            wait_for(10 * SEC, || count(&run.log(), "start worker processes") > i + 1),
            "reload {i} was not done\n{}",
            run.ctx()
        );
        assert!(
            wait_for(10 * SEC, || sockets_on("tcp", p) == n && sockets_on("udp", u) == n),
            "'{opt}': {} TCP and {} UDP sockets, want {n}\n{}",
            sockets_on("tcp", p),
            sockets_on("udp", u),
            run.ctx()
        );
        assert!(wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "ok")), "not serving\n{}", run.ctx());
    }
    let log = run.log();
    assert!(!log.contains("[alert]") && !log.contains("[emerg]"), "{log}");
}

// ---------------------------------------------------------------------------------
// -s quit, -s stop.

/// `-s quit`: the listeners close at once (new connections are refused), sessions
/// under way go on to their end, then everything exits and the pid file goes.
#[test]
fn s_quit_lets_sessions_finish_then_exits() {
    let a = tagged("A");
    let p = free_port();
    let mut run = Run::start(&proxy_conf(&head(false, "2"), p, a));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let ws = workers_of(master, &[]);
    let mut long = dial(p).expect("connect");
    assert_eq!(read_line(&mut long).expect("greeting"), "A");

    let out = run.cli(&["-s", "quit"]);
    assert!(out.status.success(), "-s quit: {}\n{}", String::from_utf8_lossy(&out.stderr), run.ctx());
    assert!(
        wait_for(10 * SEC, || ws.iter().all(|&w| pid_lines(&run.log(), w, "gracefully shutting down") > 0)),
        "the workers were not told to quit\n{}",
        run.ctx()
    );
    echo_check(&mut long, 256 << 10).unwrap_or_else(|e| panic!("the session stopped relaying after -s quit: {e}"));
    let mut problems = Vec::new();
    let refused = wait_for(5 * SEC, || matches!(dial(p), Err(e) if e.kind() == ErrorKind::ConnectionRefused));
    if !refused {
        problems.push("new connections are not refused after -s quit (the listening sockets stay open)".to_string());
    }
    echo_check(&mut long, 64 << 10).unwrap_or_else(|e| panic!("the session stopped relaying after -s quit: {e}"));
    assert!(alive(master), "the master exited with a session under way\n{}", run.ctx());
    drop(long);
    let st = run.wait_child(10 * SEC);
    assert!(
        st.is_some_and(|s| s.success()),
        "the master did not exit (0) after the last session: {st:?}\n{}",
        run.ctx()
    );
    assert!(ws.iter().all(|&w| !alive(w)), "workers left\n{}", run.ctx());
    assert!(!run.path(PID).exists(), "pid file left\n{}", run.ctx());
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), run.ctx());
}

/// A proxy to a greeting backend, master and one worker: (run, master, worker, port).
fn one_worker_proxy() -> (Run, i32, i32, u16) {
    let p = free_port();
    let run = Run::start(&proxy_conf(&head(false, "1"), p, tagged("A")));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "a worker\n{}", run.ctx());
    let w = workers_of(master, &[])[0];
    (run, master, w, p)
}

/// A session of that proxy, once its greeting is in.
fn greeted(p: u16) -> TcpStream {
    let mut c = dial(p).expect("connect");
    assert_eq!(read_line(&mut c).expect("greeting"), "A");
    c
}

/// QUIT, then TERM while the worker shuts down gracefully; the master must exit (0).
/// The worker's `[alert]` lines, without their "TIME [alert] PID#PID: " head.
fn quit_then_term(run: &mut Run, master: i32, w: i32) -> Vec<String> {
    signal(master, libc::SIGQUIT);
    assert!(wait_for(10 * SEC, || pid_lines(&run.log(), w, "gracefully shutting down") > 0), "{}", run.ctx());
    signal(master, libc::SIGTERM);
    let st = run.wait_child(10 * SEC);
    assert!(st.is_some_and(|s| s.success()), "the master did not exit (0) on TERM: {st:?}\n{}", run.ctx());
    let head = format!("{w}#{w}: ");
    run.log()
        .lines()
        .filter(|l| l.contains(&format!(" {head}")) && l.contains("[alert]"))
        .filter_map(|l| l.split(&head).nth(1).map(str::to_string))
        .collect()
}

/// The slots named in those alerts follow nginx's connection array, whose free list
/// hands out the most recently freed slot first (side by side with nginx 1.22.1, found
/// by running its stream_proxy_protocol.t with both): X and Y open, X ends (its
/// upstream's slot freed, then its client's), Z takes X's slots; the alerts come in slot
/// order, Z's before Y's.
#[test]
fn open_socket_alerts_name_nginx_connection_slots() {
    let (mut run, master, w, p) = one_worker_proxy();
    let x = greeted(p);
    let y = greeted(p);
    drop(x);
    assert!(wait_for(10 * SEC, || run.log().contains("*1 client disconnected")), "{}", run.ctx());
    let z = greeted(p);
    let alerts: Vec<(String, String)> = quit_then_term(&mut run, master, w)
        .iter()
        .filter(|l| l.contains(" open socket #"))
        .map(|l| {
            let number = l.split(' ').next().unwrap_or("").to_string();
            (number, l.rsplit(' ').next().unwrap_or("").to_string())
        })
        .collect();
    let want: Vec<(String, String)> = [("*5", "2"), ("*6", "3"), ("*3", "4"), ("*4", "5")]
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    assert_eq!(alerts, want, "\n{}", run.ctx());
    drop((y, z));
}

/// TERM while a worker shuts down gracefully (QUIT, sessions still open): as nginx's
/// `ngx_worker_process_exit` (side by side with 1.22.1), the worker names each open
/// connection, client and upstream in the order they were opened, in an alert
/// "*N open socket #FD left in connection I" (I counts on after the listening socket
/// and the channel to the master), then "aborting".
#[test]
fn term_during_graceful_shutdown_reports_open_sockets() {
    let (mut run, master, w, p) = one_worker_proxy();
    let one = greeted(p);
    let two = greeted(p);
    let lines = quit_then_term(&mut run, master, w);
    let log = run.log();
    assert_eq!(lines.len(), 5, "four open sockets and \"aborting\": {lines:?}\n{}", run.ctx());
    for (i, l) in lines[..4].iter().enumerate() {
        let (number, rest) = l.split_once(" open socket #").unwrap_or(("", ""));
        let slot = rest.rsplit(' ').next().unwrap_or("");
        assert_eq!(number, format!("*{}", i + 1), "{l}");
        assert!(rest.contains(" left in connection "), "{l}");
        assert_eq!(slot, (2 + i).to_string(), "listening socket 0, channel 1, then the sessions: {l}");
    }
    assert_eq!(lines[4], "aborting");
    let mine: Vec<&str> = log.lines().filter_map(|l| l.split(&format!("{w}#{w}: ")).nth(1)).collect();
    let at = |f: &dyn Fn(&str) -> bool| mine.iter().position(|l| f(l));
    let at = [
        at(&|l| l == "exiting"),
        at(&|l| l.contains(" open socket #")),
        at(&|l| l == "aborting"),
        at(&|l| l == "exit"),
    ];
    assert!(at.iter().all(Option::is_some) && at.windows(2).all(|x| x[0] < x[1]), "order {at:?}: {mine:?}");
    drop((one, two));
}

/// `-s stop`: master and workers exit at once, sessions under way are closed.
#[test]
fn s_stop_ends_everything_at_once() {
    let a = tagged("A");
    let p = free_port();
    let mut run = Run::start(&proxy_conf(&head(false, "2"), p, a));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 2), "2 workers\n{}", run.ctx());
    let ws = workers_of(master, &[]);
    let mut long = dial(p).expect("connect");
    assert_eq!(read_line(&mut long).expect("greeting"), "A");

    let t0 = Instant::now();
    let out = run.cli(&["-s", "stop"]);
    assert!(out.status.success(), "-s stop: {}\n{}", String::from_utf8_lossy(&out.stderr), run.ctx());
    let st = run.wait_child(5 * SEC);
    assert!(st.is_some_and(|s| s.success()), "the master did not exit (0) on -s stop: {st:?}\n{}", run.ctx());
    assert!(wait_for(2 * SEC, || ws.iter().all(|&w| !alive(w))), "workers left\n{}", run.ctx());
    long.set_read_timeout(Some(2 * SEC)).ok();
    let mut buf = [0u8; 16];
    let r = long.read(&mut buf);
    assert!(
        matches!(&r, Ok(0)) || r.as_ref().is_err_and(|e| !is_timeout(e)),
        "the session was not closed by -s stop: {r:?}"
    );
    assert!(t0.elapsed() < 3 * SEC, "-s stop took {:?}", t0.elapsed());
    assert!(!run.path(PID).exists(), "pid file left\n{}", run.ctx());
}

/// A fast exit (TERM) leaves the sessions still open to the process's end, as nginx
/// never closes them itself: by the time any client sees its connection end, the
/// process has logged "exit" (a worker's own line in master mode) and a single process
/// has removed its pid file. sluice closed every session first, then logged.
#[test]
fn fast_exit_logs_exit_before_sessions_end() {
    const N: usize = 100;
    for master in [false, true] {
        let a = tagged("A");
        let p = free_port();
        let head =
            if master { head(false, "1") } else { head(false, "1").replace("master_process on", "master_process off") };
        let mut run = Run::start(&proxy_conf(&head, p, a));
        let pid = run.master();
        let worker = if master {
            assert!(wait_for(10 * SEC, || workers_of(pid, &[]).len() == 1), "1 worker\n{}", run.ctx());
            workers_of(pid, &[])[0]
        } else {
            pid
        };
        let mut held: Vec<TcpStream> = (0..N).map(|_| greeted(p)).collect();
        signal(pid, libc::SIGTERM);
        let mut fds: Vec<libc::pollfd> = held
            .iter()
            .map(|c| libc::pollfd { fd: std::os::unix::io::AsRawFd::as_raw_fd(c), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: poll(2) over descriptors these streams own, alive for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5000) };
        // no waiting: both must be done when the first end is seen
        let log = run.log();
        let pid_file = run.path(PID).exists();
        assert!(n > 0, "no session ended on TERM\n{}", run.ctx());
        let exit = format!("[notice] {worker}#{worker}: exit");
        assert!(log.lines().any(|l| l.ends_with(&exit)), "{exit:?} not logged when a session ended\n{log}");
        assert!(master || !pid_file, "the pid file is still there when a session ended\n{}", run.ctx());
        for c in &mut held {
            c.set_read_timeout(Some(5 * SEC)).ok();
            let mut buf = [0u8; 16];
            assert!(!matches!(c.read(&mut buf), Ok(n) if n > 0), "data after TERM");
        }
        let st = run.wait_child(5 * SEC);
        assert!(st.is_some_and(|s| s.success()), "did not exit (0) on TERM: {st:?}\n{}", run.ctx());
    }
}

// ---------------------------------------------------------------------------------
// Limits.

/// At `worker_connections` (the listener takes one, each proxied session two) a client
/// beyond the limit is accepted and closed at once, with nginx's alert each time and no
/// session lines; an accepted client whose upstream connection does not fit ends with
/// 500 and the alert in its context. Sessions at the limit keep relaying, the worker
/// does not spin, and once they end new clients are served. (nginx 1.22.1 side by side:
/// the same lines and statuses, $upstream_addr empty for the attempt that did not fit.)
#[test]
fn worker_connections_limit_closes_clients_beyond_it() {
    let h = tagged("H");
    let (p, q) = (free_port(), free_port());
    // Two listeners and the worker's channel to its master take 3 of 8 (as in nginx,
    // side by side): 5 connections for sessions. `q` holds a silent client in preread.
    let conf = format!(
        "{}events {{ worker_connections 8; }}\nstream {{ log_format u '$status|$upstream_addr|$upstream_bytes_sent'; \
         server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{h}; access_log %%PREFIX%%u.log u; }} \
         server {{ listen 127.0.0.1:{q}; ssl_preread on; preread_timeout 30s; return x; }} }}\n",
        head(false, "1")
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let worker = workers_of(master, &[])[0];
    assert!(wait_for(10 * SEC, || greet(p).is_ok()), "not serving\n{}", run.ctx());
    // The probe's session gives its two connections back once it is logged.
    let probe_done =
        wait_for(10 * SEC, || std::fs::read_to_string(run.path("u.log")).is_ok_and(|t| t.lines().count() >= 1));
    assert!(probe_done, "the probe session did not end\n{}", run.ctx());
    let held_at = run.log().len();

    // Two sessions (4 connections), then a client that fits while its upstream
    // connection does not.
    let mut served = Vec::new();
    for i in 0..2 {
        let mut s = dial(p).unwrap_or_else(|e| panic!("client {i}: {e}"));
        s.set_read_timeout(Some(5 * SEC)).ok();
        assert_eq!(read_line(&mut s).ok().as_deref(), Some("H"), "client {i}\n{}", run.ctx());
        served.push(s);
    }
    let closed = |what: &str| {
        let mut s = dial(p).unwrap_or_else(|e| panic!("{what}: {e}"));
        s.set_read_timeout(Some(5 * SEC)).ok();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if !is_timeout(&e) => {}
            r => panic!("{what}: {r:?} (expected it closed at once)\n{}", run.ctx()),
        }
    };
    closed("the client whose upstream does not fit");
    let alert = "[alert]";
    let ctx_line = format!(
        "8 worker_connections are not enough while connecting to upstream, client: 127.0.0.1, server: 127.0.0.1:{p}, \
         upstream: \"127.0.0.1:{h}\", bytes from/to client:0/0, bytes from/to upstream:0/0"
    );
    assert!(
        wait_for(5 * SEC, || run.log()[held_at..].lines().any(|l| l.contains(alert) && l.contains(&ctx_line))),
        "no alert in the session's context\n{}",
        run.ctx()
    );
    let access = || std::fs::read_to_string(run.path("u.log")).unwrap_or_default();
    assert!(wait_for(5 * SEC, || access().lines().any(|l| l == "500||0")), "access log:\n{}", access());

    // A client held in preread takes the last connection; now a client itself does not
    // fit: closed without a session.
    let third = dial(q).expect("a client held in preread");
    assert!(
        wait_for(5 * SEC, || count(&run.log()[held_at..], &format!("connected to 127.0.0.1:{q}")) == 1),
        "the preread client was not taken\n{}",
        run.ctx()
    );
    for i in 0..3 {
        closed(&format!("client {i} beyond the limit"));
    }
    let log = run.log();
    let bare = log[held_at..]
        .lines()
        .filter(|l| l.contains("[alert]") && l.ends_with(": 8 worker_connections are not enough"))
        .count();
    assert!(bare >= 3, "{bare} bare alerts for 3 clients beyond the limit\n{}", run.ctx());

    let cpu0 = cpu_secs(worker);
    for s in &mut served {
        echo_check(s, 8 << 10).expect("a session at the limit stopped relaying");
    }
    std::thread::sleep(SEC);
    let cpu = cpu_secs(worker) - cpu0;
    assert!(cpu < 0.2, "the worker used {cpu:.2}s of CPU in 1s at its connection limit");

    drop((served, third));
    assert!(
        wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "H")),
        "not serving after the sessions ended\n{}",
        run.ctx()
    );
}

/// A single process proxying to a backend under a limit of 64 descriptors, warmed up
/// and settled: the run, its port and pid, and the limit to set so that sessions (two
/// descriptors each) fill it exactly and the next `accept4()` is what fails. With one
/// descriptor left over, the accept would succeed and the upstream `socket()` fail
/// instead (each such client closed with an `[alert]`, as in nginx).
fn fd_limited(events: &str) -> (Run, u16, i32, usize) {
    let h = tagged("H");
    let p = free_port();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid %%PREFIX%%sluice.pid;\nerror_log %%PREFIX%%error.log info;\n\
         events {{ {events} }}\nstream {{ server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{h}; }} }}\n"
    );
    let run = Run::start_with(&conf, Some(64), &[], false);
    let pid = run.master();
    assert_eq!(nofile_limit(pid), Some(64), "the limit did not apply");
    assert!(wait_for(10 * SEC, || short_session(p, "first").is_ok()), "not serving\n{}", run.ctx());
    // The warm-up session's descriptors close a moment after its client's.
    let mut last = fds_below(pid, 64);
    let settled = wait_for(5 * SEC, || {
        std::thread::sleep(Duration::from_millis(100));
        let n = fds_below(pid, 64);
        std::mem::replace(&mut last, n) == n
    });
    assert!(settled, "sluice's descriptors do not settle\n{}", run.ctx());
    let limit = if (64 - fds_below(pid, 64)).is_multiple_of(2) { 64 } else { 63 };
    (run, p, pid, limit)
}

/// The pause after accept4() runs out of descriptors lasts `accept_mutex_delay`, as
/// nginx's timer without an accept mutex (side by side: at 100ms nginx logged 22
/// failures over a 2 s hold where a fixed 500 ms pause gives 5).
#[test]
fn fd_exhaustion_pause_is_accept_mutex_delay() {
    let (run, p, pid, limit) = fd_limited("accept_mutex_delay 100ms;");
    set_nofile(pid, limit);
    let before = count(&run.log(), "accept4() failed (24: Too many open files)");
    let clients: Vec<TcpStream> = (0..100).map(|i| dial(p).unwrap_or_else(|e| panic!("connect {i}: {e}"))).collect();
    std::thread::sleep(2 * SEC);
    let emfile = count(&run.log(), "accept4() failed (24: Too many open files)") - before;
    drop(clients);
    // 100 ms pauses over 2 s: about 20 (a fixed 500 ms pause would give at most 5).
    assert!(emfile >= 10, "{emfile} accept4() EMFILE lines in 2 s with accept_mutex_delay 100ms\n{}", run.ctx());
}

/// Under `ulimit -n 64`, 100 clients: accept fails with EMFILE, sluice pauses accepting
/// for 500 ms (a line each time, as nginx), does not spin, the sessions it has keep relaying,
/// clients beyond the limit wait in the listen queue, and as sessions end the waiting
/// clients are taken and new connections work again.
#[test]
fn fd_exhaustion_pauses_accept_and_recovers() {
    let (run, p, pid, limit) = fd_limited("");
    let base = fds_below(pid, limit);
    set_nofile(pid, limit);
    assert_eq!(nofile_limit(pid), Some(limit as u64), "prlimit did not apply");
    let room = (limit - base) / 2;

    let t0 = Instant::now();
    let mut clients: Vec<TcpStream> =
        (0..100).map(|i| dial(p).unwrap_or_else(|e| panic!("connect {i}: {e}"))).collect();
    let deadline = Instant::now() + 3 * SEC;
    let (mut served, mut waiting, mut closed) = (Vec::new(), Vec::new(), Vec::new());
    for (i, c) in clients.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(20));
        c.set_read_timeout(Some(left)).ok();
        match read_line(c) {
            Ok(t) => {
                assert_eq!(t, "H");
                served.push(i);
            }
            Err(e) if is_timeout(&e) => waiting.push(i),
            Err(e) => closed.push(format!("client {i}: {e}")),
        }
    }
    let tally = format!(
        "{} served, {} waiting, {} closed ({base} descriptors in use idle, limit {limit}, room for {room} sessions)",
        served.len(),
        waiting.len(),
        closed.len()
    );
    assert!(served.len() >= 10 && !waiting.is_empty(), "{tally}\n{}", run.ctx());
    assert!(closed.is_empty(), "{tally}: clients beyond the limit were closed:\n{}\n{}", closed.join("\n"), run.ctx());

    let cpu0 = cpu_secs(pid);
    std::thread::sleep(2 * SEC);
    let cpu = cpu_secs(pid) - cpu0;
    assert!(alive(pid), "sluice died at the descriptor limit\n{}", run.ctx());
    // Checked at the end, so that a failure here still shows how the rest goes.
    let mut problems = Vec::new();
    if cpu >= 0.3 {
        problems.push(format!("sluice used {cpu:.2}s of CPU in 2s at the descriptor limit ({tally})"));
    }

    let log = run.log();
    let emfile = count(&log, "accept4() failed (24: Too many open files)");
    let secs = t0.elapsed().as_secs_f64();
    assert!(emfile >= 1, "no \"accept4() failed (24: Too many open files)\" line ({tally})\n{}", run.ctx());
    // nginx logs each failure and then disables accepting for accept_mutex_delay (500 ms).
    assert!(
        emfile as f64 <= 2.0 * secs + 1.0,
        "{emfile} accept4() EMFILE lines in {secs:.1}s (at most one per 500 ms pause)"
    );

    for &i in &served {
        let s = &mut clients[i];
        s.set_read_timeout(Some(5 * SEC)).ok();
        echo_check(s, 4 << 10)
            .unwrap_or_else(|e| panic!("established session {i} stopped relaying: {e} ({tally})\n{}", run.ctx()));
    }
    // Five sessions end: the first five waiting clients (the listen queue is FIFO) are
    // taken within the accept pause.
    for &i in &served[..5] {
        let _ = clients[i].shutdown(std::net::Shutdown::Both);
    }
    for &i in &waiting[..5.min(waiting.len())] {
        let s = &mut clients[i];
        s.set_read_timeout(Some(5 * SEC)).ok();
        match read_line(s) {
            Ok(t) if t == "H" => {
                echo_check(s, 4 << 10).unwrap_or_else(|e| panic!("client {i} taken from the queue: {e}"))
            }
            r => problems.push(format!("waiting client {i} was not served when 5 sessions ended: {r:?}")),
        }
    }
    drop(clients);
    assert!(
        wait_for(10 * SEC, || short_session(p, "after").is_ok()),
        "no recovery after the clients left\n{}",
        run.ctx()
    );
    for i in 0..20 {
        short_session(p, &format!("again{i}"))
            .unwrap_or_else(|e| panic!("session {i} after recovery: {e}\n{}", run.ctx()));
    }
    assert!(alive(pid));
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), run.ctx());
}

/// A reload starts an upstream zone's peer state afresh even when it keeps the zone, as
/// nginx copies the peers into the zone anew (side by side with nginx 1.22.1: A,B,A and
/// after an identical reload A,B,A again, not B,A,B).
#[test]
fn reload_starts_upstream_zone_state_afresh() {
    let (a, b) = (tagged("A"), tagged("B"));
    let p = free_port();
    let conf = format!(
        "{}events {{}}\nstream {{\n  upstream u {{ zone uz 64k; server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}\n  \
         server {{ listen 127.0.0.1:{p}; proxy_pass u; }}\n}}\n",
        head(false, "1")
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let three = || (0..3).map(|_| greet(p).unwrap_or_default()).collect::<Vec<_>>();
    assert_eq!(three(), ["A", "B", "A"], "{}", run.ctx());
    let old = workers_of(master, &[]);
    run.write_conf(&conf);
    signal(master, libc::SIGHUP);
    assert!(
        wait_for(10 * SEC, || !workers_of(master, &old).is_empty() && !old.iter().any(|w| alive(*w))),
        "{}",
        run.ctx()
    );
    assert_eq!(three(), ["A", "B", "A"], "{}", run.ctx());
}

/// A reload that keeps a `limit_conn_zone` (same name and size) must keep its key: else
/// nginx's emerg line, and the old configuration serves on, still limiting.
#[test]
fn reload_refuses_a_new_key_for_a_kept_limit_conn_zone() {
    let a = tagged("A");
    let p = free_port();
    let conf = |key: &str| {
        format!(
            "{}events {{}}\nstream {{\n  limit_conn_zone {key} zone=lc:1m;\n  \
             server {{ listen 127.0.0.1:{p}; limit_conn lc 1; proxy_pass 127.0.0.1:{a}; }}\n}}\n",
            head(false, "1")
        )
    };
    let run = Run::start(&conf("$binary_remote_addr"));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let before = workers_of(master, &[]);
    run.write_conf(&conf("$server_addr"));
    signal(master, libc::SIGHUP);
    let want = "[emerg] ";
    let line =
        "limit_conn_zone \"lc\" uses the \"$server_addr\" key while previously it used the \"$binary_remote_addr\" key";
    assert!(wait_for(10 * SEC, || run.log().lines().any(|l| l.contains(want) && l.ends_with(line))), "{}", run.ctx());
    assert_eq!(workers_of(master, &[]), before, "the workers were replaced\n{}", run.ctx());
    // Still the old limit: one session at a time from this client.
    let mut held = dial(p).expect("connect");
    assert_eq!(read_line(&mut held).ok().as_deref(), Some("A"));
    assert!(greet(p).is_err(), "a second session was not limited\n{}", run.ctx());
}

/// SIGIO and SIGALRM sent by anyone are logged, as nginx logs them, and change nothing
/// (the master's and the worker's lines as nginx 1.22.1 writes them side by side);
/// SIGSYS and SIGPIPE are ignored; a SIGSEGV kills a worker at once, and the master says so and starts another.
#[test]
fn stray_signals_as_nginx() {
    let a = tagged("A");
    let p = free_port();
    let run = Run::start(&proxy_conf(&head(false, "1"), p, a));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let worker = workers_of(master, &[])[0];
    let me = std::process::id();
    for (pid, sig, line) in [
        (master, libc::SIGIO, format!("[notice] {master}#{master}: signal 29 (SIGIO) received from {me}")),
        (master, libc::SIGALRM, format!("[notice] {master}#{master}: signal 14 (SIGALRM) received from {me}")),
        (worker, libc::SIGIO, format!("[notice] {worker}#{worker}: signal 29 (SIGIO) received from {me}, ignoring")),
        (worker, libc::SIGALRM, format!("[notice] {worker}#{worker}: signal 14 (SIGALRM) received from {me}")),
    ] {
        signal(pid, sig);
        assert!(wait_for(10 * SEC, || run.log().lines().any(|l| l.ends_with(&line))), "no {line:?}\n{}", run.ctx());
        assert!(alive(master) && alive(worker), "signal {sig} killed a process\n{}", run.ctx());
    }
    // SIGSYS and SIGPIPE are ignored outright, as in nginx's signal table: no line.
    for pid in [master, worker] {
        signal(pid, libc::SIGSYS);
        signal(pid, libc::SIGPIPE);
    }
    assert_eq!(greet(p).ok().as_deref(), Some("A"));
    assert!(alive(master) && alive(worker), "SIGSYS or SIGPIPE killed a process\n{}", run.ctx());
    assert!(!run.log().contains("(SIGSYS)") && !run.log().contains("(SIGPIPE)"), "{}", run.ctx());
    signal(worker, libc::SIGSEGV);
    let exited = format!("[alert] {master}#{master}: worker process {worker} exited on signal 11");
    assert!(wait_for(10 * SEC, || run.log().contains(&exited)), "{}", run.ctx());
    assert!(wait_for(10 * SEC, || workers_of(master, &[worker]).len() == 1), "no new worker\n{}", run.ctx());
    assert!(wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "A")), "{}", run.ctx());
}

/// USR1 in the master gives each log its worker user as owner and makes sure that owner
/// may read and write it, as nginx's ngx_reopen_files (side by side: 0444 becomes 0644).
#[test]
fn usr1_makes_logs_writable_for_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let p = free_port();
    let conf = format!(
        "{}events {{}}\nstream {{\n  log_format f x;\n  server {{ listen 127.0.0.1:{p}; return x; access_log %%PREFIX%%a.log f; }}\n}}\n",
        head(false, "1").replace("user root;", "user nobody nogroup;")
    );
    let run = Run::start(&conf);
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let path = run.path("a.log");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    signal(master, libc::SIGUSR1);
    let mode = || std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert!(wait_for(10 * SEC, || mode() == 0o644), "mode {:o}\n{}", mode(), run.ctx());
    assert!(!run.log().contains("Permission denied"), "{}", run.ctx());
}

/// `working_directory`, `worker_priority` and `worker_rlimit_core` apply to the workers
/// as in nginx; a working directory that cannot be entered stops the worker with exit
/// code 2, which the master does not respawn (nginx 1.22.1's lines, side by side).
#[test]
fn worker_directory_priority_and_core_limit() {
    let a = tagged("A");
    let p = free_port();
    let wd = TempDir::new("wd");
    let conf = |dir: &str| {
        format!(
            "{}working_directory {dir};\nworker_priority 5;\nworker_rlimit_core 1m;\n{}",
            head(false, "1"),
            proxy_conf("", p, a)
        )
    };
    let run = Run::start(&conf(wd.path().to_str().expect("path")));
    let master = run.master();
    assert!(wait_for(10 * SEC, || workers_of(master, &[]).len() == 1), "1 worker\n{}", run.ctx());
    let w = workers_of(master, &[])[0];
    assert!(
        wait_for(10 * SEC, || std::fs::read_link(format!("/proc/{w}/cwd")).is_ok_and(|c| c == wd.path())),
        "cwd {:?}\n{}",
        std::fs::read_link(format!("/proc/{w}/cwd")),
        run.ctx()
    );
    // /proc/PID/stat: the nice value is field 19 (after "pid (comm)", counted from 1).
    let stat = std::fs::read_to_string(format!("/proc/{w}/stat")).unwrap_or_default();
    let nice = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(16).map(str::to_string));
    assert_eq!(nice.as_deref(), Some("5"), "{stat}\n{}", run.ctx());
    let limits = std::fs::read_to_string(format!("/proc/{w}/limits")).unwrap_or_default();
    assert!(limits.lines().any(|l| l.starts_with("Max core file size") && l.contains("1048576")), "{limits}");

    run.write_conf(&conf("/nonexistent-sluice-dir"));
    signal(master, libc::SIGHUP);
    let fatal = "exited with fatal code 2 and cannot be respawned";
    assert!(wait_for(10 * SEC, || run.log().contains(fatal)), "{}", run.ctx());
    let log = run.log();
    assert!(
        log.contains("[alert]")
            && log.contains("chdir(\"/nonexistent-sluice-dir\") failed (2: No such file or directory)"),
        "{log}"
    );
}

/// Workers sharing a listening socket take turns as nginx's do (ngx_reorder_accept_events:
/// EPOLLEXCLUSIVE wakes the worker that added the socket first, and each adds it again on
/// its 1st, 17th, 33rd... accept). Recorded side by side with nginx 1.22.1 for 40
/// connections one after another: a b a×16 b×16 a×6 (sluice gave every one to one worker,
/// which also changed round-robin picks without a zone).
#[test]
fn workers_take_turns_at_accepting() {
    let p = free_port();
    let s = Sluice::start_master(
        2,
        &format!("events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return $pid; }} }}\n"),
    );
    let workers = || crate::common::children_of(s.pid());
    assert!(wait_for(Duration::from_secs(10), || workers().len() == 2), "two workers");
    let mut seen = Vec::new();
    for _ in 0..40 {
        // Both wait in epoll_wait, as they do between a test's connections: the kernel's
        // choice is then the order of the socket's wake-up queue alone.
        for w in workers() {
            assert!(wait_in_epoll(w), "worker {w} waits");
        }
        let mut c = crate::common::connect(p);
        let mut pid = String::new();
        c.read_to_string(&mut pid).expect("read");
        seen.push(pid);
    }
    let (a, b) = (seen[0].clone(), seen[1].clone());
    assert_ne!(a, b);
    let mut want = vec![a.clone(), b.clone()];
    want.extend(std::iter::repeat_n(a.clone(), 16));
    want.extend(std::iter::repeat_n(b, 16));
    want.extend(std::iter::repeat_n(a, 6));
    assert_eq!(seen, want);
}

/// `worker_cpu_affinity`: worker N takes its mask (nginx's `ngx_get_cpu_affinity`), says
/// so as nginx's does (`sched_setaffinity(): using cpu #N`), and runs there only.
#[test]
fn worker_cpu_affinity_binds_each_worker() {
    let p = free_port();
    let s = Sluice::start_master(
        2,
        &format!(
            "worker_cpu_affinity 01 10;\nevents {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return x; }} }}\n"
        ),
    );
    let bound = |s: &Sluice| s.error_log().matches("sched_setaffinity(): using cpu #").count();
    assert!(wait_for(Duration::from_secs(10), || bound(&s) == 2), "{}", s.error_log());
    let log = s.error_log();
    assert!(log.contains("sched_setaffinity(): using cpu #0") && log.contains("sched_setaffinity(): using cpu #1"));
    // The notice comes before the sched_setaffinity() call (as nginx's): poll.
    let cpus = || {
        let mut cpus: Vec<String> = children(s.pid())
            .into_iter()
            .map(|w| {
                let status = std::fs::read_to_string(format!("/proc/{w}/status")).unwrap_or_default();
                status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("").trim().to_string()
            })
            .collect();
        cpus.sort();
        cpus
    };
    assert!(wait_for(Duration::from_secs(10), || cpus() == ["0", "1"]), "{:?}\n{}", cpus(), s.error_log());
}

/// SIGCHLD sent to a worker: nginx's signal handler logs it and reaps, and a worker has
/// no child (side by side with nginx 1.22.1: these three lines).
#[test]
fn sigchld_to_a_worker_is_logged_as_nginx() {
    let p = free_port();
    let s =
        Sluice::start_master(1, &format!("events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return x; }} }}\n"));
    assert!(wait_for(Duration::from_secs(10), || children(s.pid()).len() == 1));
    let w = children(s.pid())[0];
    assert!(wait_for(Duration::from_secs(10), || wait_in_epoll(w)));
    // SAFETY: signalling our own child's worker.
    unsafe {
        libc::kill(w, libc::SIGCHLD);
    }
    let me = std::process::id();
    let want = [
        format!("[notice] {w}#{w}: signal 17 (SIGCHLD) received from {me}"),
        format!("[info] {w}#{w}: waitpid() failed (10: No child processes)"),
        format!("[info] {w}#{w}: epoll_wait() failed (4: Interrupted system call)"),
    ];
    let lines = || -> Vec<String> {
        s.error_log()
            .lines()
            .filter(|l| l.contains(&format!("{w}#{w}: ")))
            .map(|l| l.get(20..).unwrap_or("").to_string())
            .collect()
    };
    assert!(wait_for(Duration::from_secs(5), || lines().len() >= 3), "{}", s.error_log());
    assert_eq!(lines()[..3], want, "{}", s.error_log());
}

/// `accept_mutex on` with two workers: the worker holding the mutex takes the
/// connections that come one after another (nginx's ngx_trylock_accept_mutex; the other
/// tries again every accept_mutex_delay), so without a zone its own round-robin state
/// alternates the two peers, as nginx 1.22.1's did side by side (`1212...` from one
/// worker, where without the mutex both workers take connections). The holder lets the
/// mutex go after each turn, as nginx's does, so another worker may take it now and then.
#[test]
fn accept_mutex_keeps_sequential_connections_in_one_worker() {
    let (a, b) = (crate::common::sends_and_closes("1"), crate::common::sends_and_closes("2"));
    let p = free_port();
    let s = Sluice::start_master(
        2,
        &format!(
            "events {{ accept_mutex on; }}\nstream {{\n log_format w '$pid';\n access_log %%PREFIX%%a.log w;\n \
             upstream u {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}\n \
             server {{ listen 127.0.0.1:{p}; proxy_pass u; }}\n}}\n"
        ),
    );
    assert!(wait_for(Duration::from_secs(10), || children(s.pid()).len() == 2));
    let mut picks = String::new();
    for _ in 0..40 {
        picks.push_str(&String::from_utf8_lossy(&exchange(p, b"")));
    }
    let pids = s.wait_lines("a.log", 40);
    let mut count: std::collections::HashMap<&String, usize> = std::collections::HashMap::new();
    for pid in &pids {
        *count.entry(pid).or_default() += 1;
    }
    let (holder, most) = count.iter().max_by_key(|(_, n)| **n).map(|(p, n)| (*p, *n)).expect("a worker");
    assert!(most >= 36, "one worker takes (nearly) all: {count:?}");
    // That worker's own picks alternate.
    let mine: String = picks.chars().zip(&pids).filter(|(_, p)| *p == holder).map(|(c, _)| c).collect();
    let alternating = mine.as_bytes().windows(2).all(|w| w[0] != w[1]);
    assert!(alternating, "{mine}");
}

/// nginx's `ngx_accept_disabled`: a worker that holds the accept mutex but has less than
/// an eighth of worker_connections free skips trying it, so the other worker takes the
/// mutex and the connections that follow. Without it, the first worker kept the mutex
/// and dropped every connection past its limit ("worker_connections are not enough").
#[test]
fn accept_mutex_passes_to_another_worker_near_worker_connections() {
    let p = free_port();
    let s = Sluice::start_master(
        2,
        &format!(
            "events {{ worker_connections 16; accept_mutex on; accept_mutex_delay 100ms; }}\nstream {{\n \
             server {{ listen 127.0.0.1:{p}; ssl_preread on; preread_timeout 60s; return $pid; }}\n}}\n"
        ),
    );
    assert!(wait_for(Duration::from_secs(10), || children(s.pid()).len() == 2));
    // A ClientHello without extensions (record and handshake headers, version, 32 random
    // bytes, no session id, one cipher suite, null compression): its head is sent at
    // once, then the random a byte at a time, each a turn of the worker that holds it
    // (a "poke"), then the rest, which ends ssl_preread and answers the pid.
    let mut hello = vec![0x16, 3, 1, 0, 47, 1, 0, 0, 43, 3, 3];
    hello.extend([0x5a; 32]);
    hello.extend([0, 0, 2, 0x13, 1, 1, 0, 0, 0]);
    let (head, random, tail) = (&hello[..11], &hello[11..43], &hello[43..]);
    // Idle clients, one after another: each holds a connection in its worker while
    // ssl_preread waits for the rest of its ClientHello. 16 less the listening socket
    // and the channel to the master leaves 14 a worker; the worker that takes the first
    // ones closes what it cannot hold until the other worker has the mutex.
    let mut idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut c = crate::common::connect(p);
            let _ = c.write_all(head);
            std::thread::sleep(Duration::from_millis(150));
            c
        })
        .collect();
    // Then clients served at once, one at a time. A worker near its limit that still
    // watches the socket may take one and close it; its idle clients' pokes give it
    // the turns in which it stops trying, as nginx's ngx_accept_disabled counts down,
    // while the other worker takes the mutex.
    let mut served: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let (mut extras, mut poked) = (0, 0);
    for poke in random {
        if extras == 3 {
            break;
        }
        let mut c = crate::common::connect(p);
        let _ = c.write_all(b"not a TLS record");
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut pid = String::new();
        let _ = c.read_to_string(&mut pid);
        if !pid.is_empty() {
            *served.entry(pid).or_default() += 1;
            extras += 1;
            continue;
        }
        std::thread::sleep(Duration::from_millis(150));
        poked += 1;
        for c in &mut idle {
            let _ = c.write_all(&[*poke]);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(extras, 3, "clients past the first worker's limit were served: {served:?}");
    let mut held: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for mut c in idle {
        let _ = c.write_all(&[&random[poked..], tail].concat());
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut pid = String::new();
        let _ = c.read_to_string(&mut pid);
        if !pid.is_empty() {
            *held.entry(pid.clone()).or_default() += 1;
            *served.entry(pid).or_default() += 1;
        }
    }
    assert_eq!(served.len(), 2, "both workers served: {served:?}");
    assert!(held.values().all(|&n| n <= 14), "at most 14 idle clients a worker: {held:?}");
}

/// A wait that no signal of sluice's broke (the process was stopped and continued) is
/// logged as nginx 1.22.1 logs it: "[info] epoll_wait() failed (4: Interrupted system
/// call)"; the master's signals to a worker and timer ticks are not.
#[test]
fn stop_and_continue_logs_the_interrupted_wait() {
    let p = free_port();
    let s = Sluice::start(&format!("events {{}} stream {{ server {{ listen 127.0.0.1:{p}; return x; }} }}"));
    let line = "[info] ";
    let wanted = "epoll_wait() failed (4: Interrupted system call)";
    let logged = || s.error_log().lines().filter(|l| l.contains(line) && l.ends_with(wanted)).count();
    assert!(wait_in_epoll(s.pid()), "sluice never waited");
    assert_eq!(logged(), 0, "{}", s.error_log());
    s.signal(libc::SIGSTOP);
    assert!(wait_for(Duration::from_secs(5), || stat(s.pid()).is_some_and(|st| st.0 == 'T')));
    s.signal(libc::SIGCONT);
    assert!(wait_for(Duration::from_secs(5), || logged() == 1), "{}", s.error_log());
    assert_eq!(exchange(p, b""), b"x");
}

/// The `-e` file is the startup log only: once the configuration's error log takes over,
/// it is closed (nginx's main closes its built-in log), so neither the master nor a
/// worker holds it and it takes none of `worker_rlimit_nofile`'s descriptors.
#[test]
fn startup_log_closed_once_the_configuration_runs() {
    let p = crate::common::free_port();
    let s = Sluice::start_with_globals(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid %%PREFIX%%sluice.pid;\n\
         error_log %%PREFIX%%error.log info;\n",
        &format!("events {{}}\nstream {{ server {{ listen 127.0.0.1:{p}; return ok; }} }}\n"),
        &["-e", "%%PREFIX%%startup.log"],
    );
    assert_eq!(crate::common::exchange(p, b""), b"ok");
    let startup = s.dir.join("startup.log");
    assert!(startup.exists(), "the -e file is opened at startup");
    let holds = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == startup)))
            .unwrap_or(false)
    };
    let workers = crate::common::children_of(s.pid());
    assert_eq!(workers.len(), 1);
    assert!(!holds(s.pid()), "the master holds the -e file");
    assert!(!holds(workers[0]), "the worker holds the -e file");
}

/// With an accept mutex (two workers, `accept_mutex on`), a session's phases start after
/// the turn's accepts, as nginx's ngx_stream_init_connection posts them: a turn that
/// accepts a client on each of two listeners while one connection is left takes both,
/// and the second finds none ("16 worker_connections are not enough", at accept, no
/// context) before the first's upstream connect fails (500). Side by side with nginx
/// 1.22.1 on this configuration, both refused 9 of 30 clients at accept. The workers
/// are stopped while the clients connect, so the backlog holds them all at once.
#[test]
fn accept_mutex_sessions_start_after_the_turns_accepts() {
    let h = backend(|mut c| {
        let _ = c.write_all(b"hello\n");
        let mut b = [0u8; 64];
        while matches!(c.read(&mut b), Ok(n) if n > 0) {}
    });
    let (p, q) = (free_port(), free_port());
    let s = Sluice::start_master(
        2,
        &format!(
            "events {{ worker_connections 16; accept_mutex on; }}\nstream {{ \
             server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{h}; }} \
             server {{ listen 127.0.0.1:{q}; return ok; }} }}\n"
        ),
    );
    assert!(wait_for(10 * SEC, || crate::common::children_of(s.pid()).len() == 2), "2 workers");
    assert!(wait_for(10 * SEC, || greet(p).is_ok_and(|t| t == "hello")), "not serving");
    let workers = crate::common::children_of(s.pid());
    for &w in &workers {
        signal(w, libc::SIGSTOP);
    }
    let clients: Vec<TcpStream> =
        (0..30).map(|i| TcpStream::connect(("127.0.0.1", if i % 2 == 0 { p } else { q })).expect("connect")).collect();
    for &w in &workers {
        signal(w, libc::SIGCONT);
    }
    // Every client stays open until all are read: one closed early would give its
    // connection back and let a later one in.
    let mut answered = 0;
    let mut clients = clients;
    for c in clients.iter_mut() {
        c.set_read_timeout(Some(5 * SEC)).ok();
        let mut b = [0u8; 16];
        if matches!(c.read(&mut b), Ok(n) if n > 0) {
            answered += 1;
        }
    }
    let log = s.error_log();
    let at_accept =
        log.lines().filter(|l| l.contains("[alert]") && l.ends_with(": 16 worker_connections are not enough")).count();
    assert!(at_accept >= 1, "no client refused at accept ({answered} of 30 answered)\n{log}");
    assert!(answered < 30, "{log}");
}

/// Out of descriptors (accept4() failing with EMFILE), every listener is off until
/// accepting works again, UDP ones too, as nginx's ngx_disable_accept_events: a
/// datagram waits while TCP clients are still queued, and is answered once descriptors
/// are free (side by side with nginx 1.22.1: the same).
///
/// The TCP clients wait in `ssl_preread`, so each holds one descriptor and accept4() is
/// what runs out, whatever the worker's own count: with an upstream connection per
/// client, an odd number of free descriptors made socket() fail instead, each time.
#[test]
fn out_of_descriptors_udp_listeners_wait_too() {
    let back = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = back.local_addr().expect("addr").port();
    let (p, u) = (free_port(), free_port());
    let s = Sluice::start_master(
        1,
        &format!(
            "worker_rlimit_nofile 14;\nevents {{ worker_connections 100; }}\nstream {{ \
             server {{ listen 127.0.0.1:{p}; ssl_preread on; proxy_pass 127.0.0.1:{b}; }} \
             server {{ listen 127.0.0.1:{u} udp; return udp; }} }}\n"
        ),
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(5 * SEC)).ok();
    udp.send_to(b"q", ("127.0.0.1", u)).expect("send");
    let mut buf = [0u8; 16];
    assert_eq!(udp.recv(&mut buf).ok().map(|n| buf[..n].to_vec()), Some(b"udp".to_vec()), "serving UDP");
    let mut held = Vec::new();
    let failed = |s: &Sluice| s.error_log().contains("accept4() failed (24: Too many open files)");
    while !failed(&s) && held.len() < 12 {
        held.push(TcpStream::connect(("127.0.0.1", p)).expect("connect"));
        wait_for(SEC / 2, || failed(&s));
    }
    assert!(failed(&s), "descriptors never ran out\n{}", s.error_log());
    udp.set_read_timeout(Some(SEC)).ok();
    udp.send_to(b"q", ("127.0.0.1", u)).expect("send");
    assert!(udp.recv(&mut buf).is_err(), "a datagram was read while accepting was off\n{}", s.error_log());
    drop(held);
    udp.set_read_timeout(Some(10 * SEC)).ok();
    assert_eq!(udp.recv(&mut buf).ok().map(|n| buf[..n].to_vec()), Some(b"udp".to_vec()), "{}", s.error_log());
    drop(back);
}

/// With an accept mutex, a UDP session's phases wait for the end of the turn; a second
/// datagram of the client in the same batch starts them, and the posted start then
/// leaves the running session alone: one session, every datagram relayed once. (The
/// batch needs `multi_accept on`: without it each event reads one datagram, as nginx's,
/// and the mutex, released after every turn, may pass to the other worker between two
/// datagrams, making a second session there, as it may in nginx.)
#[test]
fn accept_mutex_udp_datagrams_of_one_batch_make_one_session() {
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let e = echo.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut b) {
            let _ = echo.send_to(&b[..n], from);
        }
    });
    let u = free_port();
    let s = Sluice::start_master(
        2,
        &format!(
            "events {{ accept_mutex on; multi_accept on; }}\nstream {{ log_format l '$status $bytes_received $bytes_sent'; \
             server {{ listen 127.0.0.1:{u} udp; proxy_timeout 1s; proxy_pass 127.0.0.1:{e}; \
             access_log %%PREFIX%%u.log l; }} }}\n"
        ),
    );
    assert!(wait_for(10 * SEC, || crate::common::children_of(s.pid()).len() == 2), "2 workers");
    let workers = crate::common::children_of(s.pid());
    let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
    c.set_read_timeout(Some(5 * SEC)).ok();
    for &w in &workers {
        signal(w, libc::SIGSTOP);
    }
    for i in 0..5 {
        c.send_to(format!("d{i}").as_bytes(), ("127.0.0.1", u)).expect("send");
    }
    for &w in &workers {
        signal(w, libc::SIGCONT);
    }
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    while got.len() < 5 {
        match c.recv(&mut b) {
            Ok(n) => got.push(String::from_utf8_lossy(&b[..n]).into_owned()),
            Err(_) => break,
        }
    }
    got.sort();
    assert_eq!(got, ["d0", "d1", "d2", "d3", "d4"], "{}", s.error_log());
    assert_eq!(s.wait_lines("u.log", 1), ["200 10 10"], "{}", s.error_log());
    std::thread::sleep(SEC / 2);
    assert_eq!(s.read("u.log").lines().count(), 1, "{}", s.read("u.log"));
}
