//! The integration-test harness: start the real `sluice` binary with a configuration in a
//! temporary prefix, wait for it to be ready (the pid file is written after the
//! listeners are bound), talk to it over loopback, and stop it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The binary under test. Every test that starts it comes here first, so this is where
/// the descriptors whatever ran `cargo test` left open (a shell's, a CI runner's) are
/// marked close-on-exec: sluice would inherit them, and tests that count a worker's
/// descriptors or fill its limit would count them too.
pub fn bin() -> PathBuf {
    static INHERITED: std::sync::Once = std::sync::Once::new();
    INHERITED.call_once(|| {
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        for fd in fds.into_iter().filter(|&fd| fd > 2) {
            // SAFETY: fcntl on a descriptor number; one closed since the listing fails
            // with EBADF and is left alone.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    });
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed by `TempDir`'s drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("sluice-t-{}-{}-{}", tag, std::process::id(), n));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        // Whatever the umask: workers that run as another user reopen their logs here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    /// The directory as a string ending with '/', as nginx prefixes are written.
    pub fn prefix(&self) -> String {
        format!("{}/", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SLUICE_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Build a cycle from configuration `text` with sluice's own library, as the binary
/// would (the file goes into `dir`); panics with the configuration error.
pub fn load_cycle(dir: &TempDir, text: &str) -> sluice::stream::cycle::Cycle {
    use sluice::stream::conf::{load, LoadOptions};
    std::fs::write(dir.join("s.conf"), text).expect("write conf");
    let opts = LoadOptions {
        prefix: dir.prefix(),
        conf_file: dir.join("s.conf").display().to_string(),
        error_log: None,
        globals: String::new(),
        test: false,
        signaller: false,
    };
    load(&opts).unwrap_or_else(|e| panic!("{:?}", e.error))
}

/// A loopback port, free for TCP and UDP (and on ::1) a moment ago, that no other caller in this
/// process gets.
///
/// Why not bind(0) and release: the kernel gives ports of its ephemeral range to every
/// bind(0) of every test (backends, clients), so a port released here could go to
/// another test's backend before sluice binds it ("Address already in use", seen under
/// load). Ports are taken below that range, from a sequence with a per-process start so
/// that two test processes walk different ports.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|w| w.parse::<usize>().ok()))
        .unwrap_or(0);
    const FIRST: usize = 10000;
    if low > FIRST + 1000 {
        let span = low - FIRST;
        let start = std::process::id() as usize * 7919 % span;
        for _ in 0..span {
            let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
            let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("::1", port))
                    .map_or_else(|e| e.kind() != std::io::ErrorKind::AddrInUse, |_| true);
            if free {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Standard error with its two shapes of log message made alike, `[LEVEL] MSG`: the
/// full line that a startup log on stderr writes (`TIME [LEVEL] PID#TID: MSG`, nginx's
/// Debian build without `-e`) and the `sluice: [LEVEL] MSG` echo beside a `-e` file.
pub fn console(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut out = String::new();
    for line in text.lines() {
        let short = line.strip_prefix("sluice: ").filter(|l| l.starts_with('['));
        let full = line.get(20..).filter(|l| l.starts_with('[')).and_then(|l| {
            let (level, rest) = l.split_once("] ")?;
            let (pid, msg) = rest.split_once(": ")?;
            pid.split('#')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| format!("{level}] {msg}"))
        });
        out.push_str(short.map(str::to_string).or(full).as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Wait until process `pid` sleeps in epoll_wait (its event loop runs, and a signal now
/// interrupts that wait).
pub fn wait_in_epoll(pid: i32) -> bool {
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("epoll_wait"))
    })
}

/// Poll `f` until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Run the binary to completion (bounded), e.g. for `-t`.
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S], dir: &Path) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("sluice output")
}

/// A running sluice.
pub struct Sluice {
    pub dir: TempDir,
    child: Option<Child>,
}

/// The lines every test configuration starts with: foreground, one process, files in
/// the test's prefix.
pub fn globals(dir: &TempDir) -> String {
    format!("daemon off;\nmaster_process off;\npid {p}sluice.pid;\nerror_log {p}error.log info;\n", p = dir.prefix())
}

impl Sluice {
    /// Start with `conf` (the globals above are prepended; `%%PREFIX%%` is replaced).
    pub fn start(conf: &str) -> Sluice {
        Self::try_start(conf).expect("sluice did not start")
    }

    /// Start a master with `workers` worker processes (as root, workers stay root).
    pub fn start_master(workers: usize, conf: &str) -> Sluice {
        let g = move |dir: &TempDir| {
            format!(
                "daemon off;\nmaster_process on;\nworker_processes {w};\nuser root;\npid {p}sluice.pid;\n\
                 error_log {p}error.log info;\n",
                w = workers,
                p = dir.prefix()
            )
        };
        Self::start_inner(conf, &g, &[], &[]).expect("sluice did not start")
    }

    pub fn try_start(conf: &str) -> Result<Sluice, String> {
        Self::start_inner(conf, &globals, &[], &[])
    }

    /// Start with `globals` of the test's own (`%%PREFIX%%` replaced; they must name
    /// `pid %%PREFIX%%sluice.pid`) and more command-line arguments.
    pub fn start_with_globals(globals: &str, conf: &str, args: &[&str]) -> Sluice {
        let g = |dir: &TempDir| globals.replace("%%PREFIX%%", &dir.prefix());
        Self::start_inner(conf, &g, &[], args).expect("sluice did not start")
    }

    /// Start with `/etc/hosts` replaced by `hosts` for sluice alone: it runs in a mount
    /// namespace of its own (`unshare -m`, private propagation) with the file bind-mounted
    /// over the system's.
    pub fn start_with_hosts(conf: &str, hosts: &str) -> Sluice {
        let dir = TempDir::new("hosts");
        std::fs::write(dir.join("hosts"), hosts).expect("write hosts");
        let script = format!("mount --bind {} /etc/hosts && exec \"$0\" \"$@\"", dir.join("hosts").display());
        let wrap = ["unshare", "-m", "sh", "-c", script.as_str()];
        let s = Self::start_inner(conf, &globals, &wrap, &[]).expect("sluice did not start under unshare -m");
        drop(dir);
        s
    }

    fn start_inner(
        conf: &str,
        globals: &dyn Fn(&TempDir) -> String,
        wrap: &[&str],
        args: &[&str],
    ) -> Result<Sluice, String> {
        let dir = TempDir::new("run");
        let text = format!("{}{}", globals(&dir), conf.replace("%%PREFIX%%", &dir.prefix()));
        std::fs::write(dir.join("sluice.conf"), text).map_err(|e| e.to_string())?;
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .arg("-p")
            .arg(dir.prefix())
            .arg("-c")
            .arg("sluice.conf")
            .args(args.iter().map(|a| a.replace("%%PREFIX%%", &dir.prefix())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut s = Sluice { dir, child: Some(child) };
        let pid = s.dir.join("sluice.pid");
        // The file is created, then written: wait for its whole line.
        let written = |pid: &Path| std::fs::read(pid).is_ok_and(|b| b.ends_with(b"\n"));
        let ok = wait_for(Duration::from_secs(10), || {
            written(&pid) || matches!(s.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
        });
        if !ok || !written(&pid) {
            let mut err = String::new();
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
                if let Some(mut e) = c.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
            }
            return Err(format!("sluice did not start: {}\n{}", err, s.error_log()));
        }
        // The pid file comes before the startup notices ("using the "epoll" event
        // method" ... "getrlimit(RLIMIT_NOFILE)", as in nginx): wait for the last of
        // them, so a test that reads the log from an offset taken now sees only its own
        // lines.
        // (Only when the log is the usual error.log.)
        wait_for(Duration::from_secs(10), || {
            !s.dir.join("error.log").exists()
                || s.error_log().contains("getrlimit(RLIMIT_NOFILE)")
                || matches!(s.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
        });
        Ok(s)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Wait until the file `name` in the prefix has `n` lines.
    pub fn wait_lines(&self, name: &str, n: usize) -> Vec<String> {
        wait_for(Duration::from_secs(10), || self.read(name).lines().count() >= n);
        self.read(name).lines().map(str::to_string).collect()
    }

    /// Graceful stop (QUIT), bounded; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGQUIT);
        }
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The processes whose parent is `pid` (a master's workers).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", p)).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).and_then(|x| x.parse().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Stop the master first, so that it forks no worker (a respawn, a reload)
            // between the look at its children and its end; then kill it, then the
            // workers it leaves behind (a worker forked just before the look was once
            // left running).
            let pid = c.id() as i32;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            wait_for(Duration::from_secs(2), || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
                !matches!(state, Some("R" | "S" | "D"))
            });
            let workers = children_of(pid);
            let _ = c.kill();
            let _ = c.wait();
            for w in workers {
                // SAFETY: signalling a worker of our own child.
                unsafe {
                    libc::kill(w, libc::SIGKILL);
                }
            }
        }
    }
}

/// Connect to a loopback port with bounded timeouts.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    s
}

/// Send `data` and read everything until the peer closes. (No half-close: without
/// `proxy_half_close` nginx ends a session when the client's side ends.)
pub fn exchange(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    s.write_all(data).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A backend on a free port running `handle` for each connection, in threads, until
/// the test ends (the threads are detached; the port dies with the test process).
pub fn backend(handle: fn(TcpStream)) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || handle(c));
        }
    });
    port
}

/// A backend that sends `id` to each connection as it is accepted, then closes it.
pub fn sends_and_closes(id: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(id.as_bytes());
        }
    });
    port
}

/// A backend that echoes everything back until the client half-closes, then closes.
pub fn echo(mut c: TcpStream) {
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
}

/// Move the calling thread (the test's own: libtest runs each test on a thread of its
/// own) into a new network namespace with only its loopback interface, up: a test may
/// then bind wildcard addresses (`listen PORT`) and any 127.x address without touching
/// the machine's network. Sluice started from this thread inherits the namespace.
pub fn private_network() {
    // SAFETY: unshare(2) affects the calling thread only; the ioctls read and write an
    // ifreq of our own.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNET),
            0,
            "unshare(CLONE_NEWNET): {} (the tests run as root)",
            std::io::Error::last_os_error()
        );
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0, "SIOCGIFFLAGS");
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
        libc::close(fd);
    }
}

/// A certificate's subject common name.
pub fn cn(x: &openssl::x509::X509Ref) -> String {
    x.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

/// A ClientHello record carrying SNI `host` (TLS 1.2, one cipher, no other extension).
pub fn sni_hello(host: &[u8]) -> Vec<u8> {
    let list_len = 3 + host.len();
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list_len as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(host.len() as u16).to_be_bytes());
    ext.extend_from_slice(host);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}
