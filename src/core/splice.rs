//! Zero-copy plumbing: pipes for splice(2) from a per-worker pool, and the splice calls.
//!
//! A pipe goes back to the pool only when it is empty; one with bytes left in it (a
//! session that ended mid-transfer) is closed instead, so no stale byte can ever reach
//! another session.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The pipe size asked for with F_SETPIPE_SZ (16 pages of 4 KiB is Linux's default): a
/// relay fills it with what the destination can take now, up to this, so bulk moves in
/// few large splices; and with `proxy_buffer_size` up to 256 KiB in one splice.
pub const PIPE_SIZE: usize = 256 * 1024;

/// Free pipes kept per worker; beyond this, returned pipes are closed.
pub const POOL_MAX: usize = 256;

pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes in the pipe.
    pub len: usize,
    /// The pipe's capacity.
    pub cap: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two descriptors, which we own from here on.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors from pipe2.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; failure just keeps the default size.
        let cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        let cap = if cap > 0 {
            cap as usize
        } else {
            // SAFETY: as above.
            let c = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if c > 0 {
                c as usize
            } else {
                65536
            }
        };
        Ok(Pipe { r, w, len: 0, cap })
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.cap
    }

    /// Move up to `max` bytes (and at most the pipe's free room) from `src` into the
    /// pipe. `Ok(0)` is end of file.
    pub fn fill_from(&mut self, src: RawFd, max: usize) -> io::Result<usize> {
        let n = splice(src, self.w.as_raw_fd(), max.min(self.cap - self.len))?;
        self.len += n;
        Ok(n)
    }

    /// Move what the pipe holds into `dst`.
    pub fn drain_to(&mut self, dst: RawFd) -> io::Result<usize> {
        let n = splice(self.r.as_raw_fd(), dst, self.len)?;
        self.len -= n.min(self.len);
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: splice between descriptors we own, no offsets.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How many more bytes a TCP socket's send queue surely takes before a send would block.
///
/// The kernel takes bytes while `sk_wmem_queued < sk_sndbuf` (`sk_stream_memory_free`),
/// both counted in memory, and each queued segment costs about a kilobyte more than its
/// bytes; segments are also split to the peer's window as they go out, each piece
/// costing as much again. So the free memory (SO_MEMINFO) is scaled by the bytes per unit
/// of memory of what is queued now (its bytes, SIOCOUTQ, over its memory), and halved:
/// a peer whose window is a few hundred bytes makes the next segments cost up to ~1.4
/// times what the queue's mix does. With nothing queued there is nothing to learn that
/// from, and a connection reset has its queue purged: 0 then, as when unknown. 0 also
/// when `net.ipv4.tcp_notsent_lowat` is set: the kernel then stops taking bytes at that
/// many unsent ones, whatever memory is free. Not seen: the host's TCP memory at its hard
/// limit (`tcp_mem`), where the kernel refuses memory that is free by this count.
pub fn send_room(fd: RawFd) -> usize {
    if notsent_lowat_set() {
        return 0;
    }
    // SK_MEMINFO_VARS is 9 in every kernel with SO_MEMINFO; later kernels may add more.
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len) };
    const SNDBUF: usize = 3;
    const WMEM_QUEUED: usize = 5;
    if rc != 0 || (len as usize) < (WMEM_QUEUED + 1) * 4 {
        return 0;
    }
    let (sndbuf, queued) = (info[SNDBUF] as u64, info[WMEM_QUEUED] as u64);
    if queued == 0 || queued >= sndbuf {
        return 0;
    }
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) } != 0 || outq <= 0 {
        return 0;
    }
    let bytes = (outq as u64).min(queued);
    usize::try_from((sndbuf - queued) * bytes / queued / 2).unwrap_or(usize::MAX)
}

/// Whether `net.ipv4.tcp_notsent_lowat` is set (its default, `u32::MAX`, is "no limit"),
/// read once per process; sluice sets no socket's own TCP_NOTSENT_LOWAT.
fn notsent_lowat_set() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_notsent_lowat")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|v| v < u64::from(u32::MAX))
    })
}

/// How many pipes a worker may hold, so that they do not take the descriptors its
/// connections need: nginx's worker uses at most `worker_connections` descriptors for
/// connections (client and upstream sockets, listeners), so pipes get what the open file
/// limit leaves beyond those and the descriptors already open (logs, epoll, listeners
/// again). When `worker_connections` may take (nearly) all of them, pipes still get a
/// sixteenth of the free descriptors: splicing stays on in such configurations, and
/// sessions that find the budget spent copy, as nginx's.
pub fn pipe_budget(worker_connections: usize) -> usize {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 0;
    }
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let free = usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX).saturating_sub(open);
    (free.saturating_sub(worker_connections) / 2).max(free / 32)
}

/// Whether an error from splice means "not possible for these descriptors" (fall back to
/// copying) rather than a connection error.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP))
}

/// The pipes a worker holds, in use and free. Free pipes are kept for the sessions to come
/// while the worker has sessions (`release_free` when its last one ends), so an idle
/// worker holds the descriptors nginx's would; and it holds at most `limit` pipes (see
/// `pipe_budget`).
pub struct PipePool {
    free: Vec<Pipe>,
    /// Pipes made so far and pipes in use, for tests and the benchmark.
    pub created: usize,
    pub in_use: usize,
    /// At most this many pipes, in use and free together.
    limit: usize,
}

impl Default for PipePool {
    fn default() -> PipePool {
        PipePool::with_limit(usize::MAX)
    }
}

impl PipePool {
    pub fn with_limit(limit: usize) -> PipePool {
        PipePool { free: Vec::new(), created: 0, in_use: 0, limit }
    }

    /// A pipe, from the pool or new; `EMFILE` when the limit is reached (the session
    /// copies instead).
    pub fn get(&mut self) -> io::Result<Pipe> {
        let p = match self.free.pop() {
            Some(p) => p,
            None if self.in_use >= self.limit => return Err(io::Error::from_raw_os_error(libc::EMFILE)),
            None => {
                self.created += 1;
                Pipe::new()?
            }
        };
        self.in_use += 1;
        Ok(p)
    }

    /// Take a pipe back: kept when empty and the pool has room, else closed.
    pub fn put(&mut self, p: Pipe) {
        self.in_use = self.in_use.saturating_sub(1);
        if p.len == 0 && self.free.len() < POOL_MAX {
            self.free.push(p);
        }
    }

    /// Close the free pipes (the worker's last session ended).
    pub fn release_free(&mut self) {
        self.free.clear();
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn splice_through_a_pooled_pipe() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        let (c, mut d) = UnixStream::pair().expect("pair");
        let mut pool = PipePool::default();
        let other = pool.get().expect("pipe");
        let mut p = pool.get().expect("pipe");
        a.write_all(b"hello").expect("write");
        b.set_nonblocking(true).expect("nb");
        let n = match p.fill_from(b.as_raw_fd(), usize::MAX) {
            Ok(n) => n,
            // Some kernels refuse splice from unix sockets: the relay falls back then.
            Err(e) if unsupported(&e) => return,
            Err(e) => panic!("{}", e),
        };
        assert_eq!(n, 5);
        assert_eq!(p.drain_to(c.as_raw_fd()).expect("drain"), 5);
        let mut buf = [0u8; 5];
        d.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        pool.put(p);
        assert_eq!((pool.created, pool.free_count(), pool.in_use), (2, 1, 1));
        let mut p = pool.get().expect("pipe");
        assert_eq!(pool.created, 2, "an empty pipe is reused");
        p.len = 1; // pretend bytes were left in it
        pool.put(p);
        assert_eq!(pool.free_count(), 0, "a pipe with bytes left is closed, not reused");
        pool.put(other);
        assert_eq!((pool.free_count(), pool.in_use), (1, 0));
        pool.release_free();
        assert_eq!((pool.free_count(), pool.in_use), (0, 0));
    }

    #[test]
    fn pool_stays_within_its_limit() {
        let mut pool = PipePool::with_limit(2);
        let a = pool.get().expect("pipe");
        let b = pool.get().expect("pipe");
        let e = pool.get().err().and_then(|e| e.raw_os_error());
        assert_eq!(e, Some(libc::EMFILE), "a third pipe is over the limit");
        pool.put(a);
        assert_eq!(pool.free_count(), 1);
        let a = pool.get().expect("the free pipe, within the limit");
        assert_eq!(pool.created, 2);
        pool.put(a);
        pool.put(b);
        assert_eq!((pool.free_count(), pool.in_use), (2, 0));
        assert_eq!(PipePool::with_limit(0).get().err().and_then(|e| e.raw_os_error()), Some(libc::EMFILE));
    }

    #[test]
    fn budget_leaves_worker_connections_their_descriptors() {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        let limit = usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX);
        if limit < 1 << 20 {
            let b = pipe_budget(0);
            assert!(b > 0 && b * 2 < limit, "{b} pipes for a limit of {limit}");
            // worker_connections may take them all: pipes get a sixteenth of the room
            let b = pipe_budget(limit);
            assert!(b * 16 <= limit && b * 32 + 1024 >= limit, "{b} pipes for a limit of {limit}");
            assert_eq!(pipe_budget(usize::MAX), b);
            let half = pipe_budget(limit / 2);
            assert!(half * 4 + 1024 >= limit && half * 4 <= limit, "{half} pipes for a limit of {limit}");
        }
    }

    #[test]
    fn send_room_is_what_the_send_queue_surely_takes() {
        assert_eq!(send_room(-1), 0, "unknown: no room");
        // On a host with the lowat sysctl set every room is 0 (and the relay splices
        // `proxy_buffer_size` at a time): the estimate below cannot be checked there.
        let lowat = notsent_lowat_set();
        // A peer with the default window (full-sized segments), and one with the
        // smallest receive buffer (tiny segments, each costing more memory than bytes).
        for rcvbuf in [None, Some(1)] {
            let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            if let Some(n) = rcvbuf {
                l.set_recv_buffer_size(n).expect("rcvbuf"); // inherited by the accepted socket
            }
            l.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
            l.listen(1).expect("listen");
            let to = l.local_addr().expect("addr").as_socket().expect("inet");
            let mut a = std::net::TcpStream::connect(to).expect("connect");
            let mut b: std::net::TcpStream = l.accept().expect("accept").0.into();
            assert_eq!(send_room(a.as_raw_fd()), 0, "nothing queued: nothing known");
            a.set_nonblocking(true).expect("nb");
            let chunk = [b'x'; 4096];
            // Writes `want` bytes at most, until the queue is full; what was taken.
            let fill = |a: &mut std::net::TcpStream, want: usize| {
                let mut sent = 0usize;
                while sent < want {
                    match a.write(&chunk[..chunk.len().min(want - sent)]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                sent
            };
            let sent = fill(&mut a, 1 << 30);
            assert!(sent < 1 << 30, "the send queue never filled");
            let full = send_room(a.as_raw_fd());
            assert!(full < 4096, "{full} bytes of room after a send would block ({sent} sent, {rcvbuf:?})");
            // The peer reads half: the queue has room again, and takes all it is said to.
            let mut buf = vec![0u8; sent / 2];
            b.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
            b.read_exact(&mut buf).expect("read");
            let room = send_room(a.as_raw_fd());
            if lowat {
                assert_eq!(room, 0, "tcp_notsent_lowat is set: no room");
                continue;
            }
            assert!(room > 0, "no room after the peer read {} of {sent} ({rcvbuf:?})", sent / 2);
            assert_eq!(fill(&mut a, room), room, "the queue took all of the {room} bytes said ({rcvbuf:?})");
        }
    }
}
