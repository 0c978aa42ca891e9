//! A connected stream socket, TCP or unix-domain, with the few operations the relay
//! needs; and the listening sockets (`ngx_open_listening_sockets`).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};

use mio::event::Source;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};

use mio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::core::addr::Addr;

pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A connected datagram socket (a UDP session's upstream).
    Dgram(UdpSocket),
    /// The client side of a UDP session: datagrams go back through the listening socket
    /// (which the session shares); incoming ones are queued on the session by the worker.
    Udp(UdpClient),
    /// A client under TLS (`listen ... ssl`), over its TCP or unix-domain socket.
    Tls(Box<crate::core::ssl::TlsConn>),
}

pub struct UdpClient {
    /// The listening socket, owned by the worker's listener: closing that (on graceful
    /// shutdown) closes the socket even while sessions run, as nginx's does.
    pub sock: Weak<UdpSocket>,
    pub peer: SocketAddr,
    /// On a wildcard socket, the address the client wrote to (from IP_PKTINFO): the
    /// session's local address, and where its answers come from.
    pub local: Option<SocketAddr>,
    /// The listening socket's descriptor number, kept for nginx's "open socket #N left"
    /// alert (nginx's session connection keeps it after the listener is closed).
    pub listen_fd: RawFd,
}

impl UdpClient {
    /// The listening socket's descriptor, or -1 once the listener is closed (calls on
    /// it then fail with EBADF).
    pub fn fd(&self) -> RawFd {
        self.sock.upgrade().map_or(-1, |s| s.as_raw_fd())
    }

    fn closed() -> io::Error {
        io::Error::from_raw_os_error(libc::EBADF)
    }
}

impl Conn {
    pub fn fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Udp(u) => u.fd(),
            Conn::Dgram(d) => d.as_raw_fd(),
            Conn::Tls(t) => t.sock().fd(),
        }
    }

    /// The descriptor number as nginx's connection shows it (a UDP session's is its
    /// listening socket's, even once that is closed).
    pub fn fd_number(&self) -> RawFd {
        match self {
            Conn::Udp(u) => u.listen_fd,
            c => c.fd(),
        }
    }

    /// Write with `MSG_MORE`: the kernel holds the bytes back (a TCP socket's last
    /// segment waits) until the next write without it, or the end of file, which then
    /// goes out in the same segment. Other sockets write as usual.
    pub fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Conn::Tcp(s) = self else { return self.write(buf) };
        // SAFETY: send from a buffer we borrow, of the length we pass.
        let n =
            unsafe { libc::send(s.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_MORE | libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Shut the socket down for writing (under TLS too: nginx's half close shuts the
    /// socket, not the TLS session).
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
            Conn::Udp(_) | Conn::Dgram(_) => Ok(()),
            Conn::Tls(t) => t.sock().shutdown_write(),
        }
    }

    /// The end of a TCP socket whose last bytes were written with `MSG_MORE`: they leave
    /// with the FIN (`shutdown`), in one segment. But when the peer's bytes wait unread,
    /// the close that follows resets the connection, as nginx's close does, and a reset
    /// would drop held bytes: they are pushed out first (setting TCP_NODELAY pushes
    /// pending frames), so the peer gets them, then the reset, as from nginx.
    pub fn end_corked(&self) {
        let Conn::Tcp(s) = self else {
            let _ = self.shutdown_write();
            return;
        };
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, ours.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut unread) };
        if r == 0 && unread > 0 {
            let _ = s.set_nodelay(true);
        } else {
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Conn::Tcp(s) => s.take_error(),
            Conn::Unix(s) => s.take_error(),
            Conn::Udp(u) => u.sock.upgrade().ok_or_else(UdpClient::closed)?.take_error(),
            Conn::Dgram(d) => d.take_error(),
            Conn::Tls(t) => t.sock().take_error(),
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_nodelay(on),
            Conn::Tls(t) => t.sock().set_nodelay(on),
            Conn::Unix(_) | Conn::Udp(_) | Conn::Dgram(_) => Ok(()),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    pub fn tls_mut(&mut self) -> Option<&mut crate::core::ssl::TlsConn> {
        match self {
            Conn::Tls(t) => Some(t),
            _ => None,
        }
    }

    /// The connection, leaving in its place one with no socket (for a moment: the caller
    /// puts the connection back, wrapped).
    fn take(&mut self) -> Conn {
        let none =
            UdpClient { sock: Weak::new(), peer: SocketAddr::from(([0, 0, 0, 0], 0)), local: None, listen_fd: -1 };
        std::mem::replace(self, Conn::Udp(none))
    }

    /// Put the connection under TLS with `ctx` (server side); the handshake is the
    /// caller's next step.
    pub fn start_tls(&mut self, ctx: &openssl::ssl::SslContext) -> Result<(), String> {
        let plain = self.take();
        let t = crate::core::ssl::TlsConn::new(ctx, plain)?;
        *self = Conn::Tls(Box::new(t));
        Ok(())
    }

    /// Put an upstream connection under TLS (client side); see `TlsConn::client`.
    pub fn start_tls_client(
        &mut self,
        ctx: &openssl::ssl::SslContext,
        sni: Option<&str>,
        session: Option<&openssl::ssl::SslSessionRef>,
        peer: Option<String>,
    ) -> Result<(), String> {
        let plain = self.take();
        let t = crate::core::ssl::TlsConn::client(ctx, plain, sni, session, peer)?;
        *self = Conn::Tls(Box::new(t));
        Ok(())
    }

    /// Send a TLS close_notify (a no-op for other connections), before the socket closes.
    pub fn close_notify(&mut self) {
        if let Conn::Tls(t) = self {
            t.shutdown();
        }
    }

    pub fn is_udp(&self) -> bool {
        matches!(self, Conn::Udp(_))
    }

    /// A connected datagram socket (a UDP session's upstream, a UDP health check).
    pub fn is_dgram(&self) -> bool {
        matches!(self, Conn::Dgram(_))
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, Conn::Tcp(_))
    }

    pub fn local_addr(&self) -> Option<Addr> {
        match self {
            Conn::Tcp(s) => s.local_addr().ok().map(Addr::Inet),
            // An unbound unix socket's address prints as "unix:", as nginx's does.
            Conn::Unix(s) => Some(Addr::Unix(
                s.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.to_path_buf())).unwrap_or_default(),
            )),
            Conn::Udp(u) => u.local.or_else(|| u.sock.upgrade()?.local_addr().ok()).map(Addr::Inet),
            Conn::Dgram(d) => d.local_addr().ok().map(Addr::Inet),
            Conn::Tls(t) => t.sock().local_addr(),
        }
    }

    /// `recv(MSG_PEEK)`: look at what the client sent without taking it.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv into a buffer we own, of the length we pass.
        let n = unsafe { libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Watch the connection; a UDP client needs nothing (its listener is watched).
    pub fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.register(r, t, i),
            Conn::Unix(s) => s.register(r, t, i),
            Conn::Udp(_) => Ok(()),
            Conn::Dgram(d) => d.register(r, t, i),
            Conn::Tls(s) => s.sock_mut().register(r, t, i),
        }
    }

    pub fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.deregister(r),
            Conn::Unix(s) => s.deregister(r),
            Conn::Udp(_) => Ok(()),
            Conn::Dgram(d) => d.deregister(r),
            Conn::Tls(t) => t.sock_mut().deregister(r),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
            // A UDP session's datagrams are queued by the worker, not read here.
            Conn::Udp(_) => Err(io::ErrorKind::WouldBlock.into()),
            Conn::Dgram(d) => d.recv(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
            Conn::Udp(u) => {
                let sock = u.sock.upgrade().ok_or_else(UdpClient::closed)?;
                match u.local {
                    None => sock.send_to(buf, u.peer),
                    Some(from) => {
                        match crate::core::mmsg::send_to_all(sock.as_raw_fd(), &u.peer, Some(from.ip()), &[buf]) {
                            Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
                            Ok(_) => Ok(buf.len()),
                            Err((_, e)) => Err(e),
                        }
                    }
                }
            }
            Conn::Dgram(d) => d.send(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    /// Shared with the sessions it carries (they answer through it).
    Udp(Rc<UdpSocket>),
}

impl Listener {
    /// Accept one connection: the stream and the client's address.
    pub fn accept(&self) -> io::Result<(Conn, Addr)> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Conn::Tcp(s), Addr::Inet(a))),
            // A client that bound its socket to a path is "unix:PATH", an unnamed (or
            // abstract) one "unix:", as ngx_sock_ntop prints them.
            Listener::Unix(l) => l.accept().map(|(s, a)| {
                let path = a.as_pathname().map(|p| p.to_path_buf()).unwrap_or_default();
                (Conn::Unix(s), Addr::Unix(path))
            }),
            // Datagram listeners have no connections: the worker reads datagrams.
            Listener::Udp(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Udp(u) => u.as_raw_fd(),
        }
    }

    /// Watch for connections level-triggered; with `exclusive`, EPOLLEXCLUSIVE, so that
    /// of several workers sharing the socket one wakes per connection (no thundering
    /// herd). mio has no such option, so this goes to its epoll descriptor directly;
    /// events carry the token as mio's do.
    pub fn register_accept(&self, epfd: RawFd, t: Token, exclusive: bool) -> io::Result<()> {
        let flags = if exclusive { libc::EPOLLIN | libc::EPOLLEXCLUSIVE } else { libc::EPOLLIN };
        let mut ev = libc::epoll_event { events: flags as u32, u64: t.0 as u64 };
        // SAFETY: epoll_ctl on mio's epoll descriptor and a socket we own.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, self.fd(), &mut ev) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn deregister_raw(&self, epfd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as above.
        unsafe {
            libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, self.fd(), &mut ev);
        }
    }

    /// The local address of a listening descriptor, and whether it is a datagram
    /// socket (to match inherited sockets).
    pub fn addr_of(fd: RawFd) -> Option<(Addr, bool)> {
        use std::os::unix::io::BorrowedFd;
        // SAFETY: the descriptor is open for the duration of this call.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let r = socket2::SockRef::from(&b);
        let udp = r.r#type().ok() == Some(socket2::Type::DGRAM);
        let a = r.local_addr().ok()?;
        if let Some(sa) = a.as_socket() {
            return Some((Addr::Inet(sa), udp));
        }
        a.as_pathname().map(|p| (Addr::Unix(p.to_path_buf()), udp))
    }

    /// The listening socket adopted from an inherited descriptor (binary upgrade).
    pub fn is_udp(&self) -> bool {
        matches!(self, Listener::Udp(_))
    }

    pub fn from_fd(fd: RawFd, unix: bool, udp: bool) -> Listener {
        use std::os::unix::io::FromRawFd;
        // SAFETY: the descriptor was handed over by the old binary and is ours now.
        unsafe {
            if udp {
                Listener::Udp(Rc::new(UdpSocket::from_std(std::net::UdpSocket::from_raw_fd(fd))))
            } else if unix {
                Listener::Unix(UnixListener::from_std(std::os::unix::net::UnixListener::from_raw_fd(fd)))
            } else {
                Listener::Tcp(TcpListener::from_std(std::net::TcpListener::from_raw_fd(fd)))
            }
        }
    }
}

/// Socket options of a `listen` directive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenOpts {
    pub backlog: Option<i32>,
    pub rcvbuf: Option<i32>,
    pub sndbuf: Option<i32>,
    pub reuseport: bool,
    pub ipv6only: bool,
    pub so_keepalive: Option<bool>,
    pub keepidle: Option<u32>,
    pub keepintvl: Option<u32>,
    pub keepcnt: Option<u32>,
    pub fastopen: Option<i32>,
    pub bind: bool,
    /// Set TCP_NODELAY on the listening socket: Linux passes it on to accepted sockets,
    /// which saves a setsockopt per connection.
    pub nodelay: bool,
    /// `listen ... udp`.
    pub udp: bool,
}

/// A listening IP socket of `ty` with the options both kinds share: SO_REUSEADDR,
/// `reuseport`, `ipv6only=`, `rcvbuf=`, `sndbuf=`.
fn inet_socket(
    sa: &std::net::SocketAddr,
    ty: socket2::Type,
    proto: socket2::Protocol,
    opts: &ListenOpts,
) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Socket};
    let domain = if sa.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, ty.nonblocking().cloexec(), Some(proto))?;
    s.set_reuse_address(true)?;
    if opts.reuseport {
        s.set_reuse_port(true)?;
    }
    if sa.is_ipv6() {
        s.set_only_v6(opts.ipv6only)?;
    }
    configure_listening(std::os::unix::io::AsRawFd::as_raw_fd(&s), &Addr::Inet(*sa), opts);
    Ok(s)
}

/// nginx's ngx_configure_listening_sockets for one socket, run on every listening
/// socket of a configuration (those a reload keeps too): `rcvbuf=`, `sndbuf=`, then for
/// a stream socket `so_keepalive=` and `fastopen=`, whatever its family. An option that
/// does not take (a unix socket's TCP_KEEPIDLE, a value over the kernel's limit) is an
/// alert, and the socket goes on without it.
pub fn configure_listening(fd: RawFd, addr: &Addr, opts: &ListenOpts) {
    let set = |level: libc::c_int, opt: libc::c_int, v: i32, name: &str| {
        if let Err(e) = set_int_option(fd, level, opt, v) {
            let msg = format!("setsockopt({name}, {v}) {addr} failed, ignored");
            crate::core::log::error(crate::core::conf::Level::Alert, &msg, Some(&e));
        }
    };
    for (v, opt, name) in [(opts.rcvbuf, libc::SO_RCVBUF, "SO_RCVBUF"), (opts.sndbuf, libc::SO_SNDBUF, "SO_SNDBUF")] {
        if let Some(n) = v {
            set(libc::SOL_SOCKET, opt, n, name);
        }
    }
    if opts.udp {
        return;
    }
    if let Some(on) = opts.so_keepalive {
        set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, i32::from(on), "SO_KEEPALIVE");
    }
    let keep = [
        (opts.keepidle, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
        (opts.keepintvl, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
        (opts.keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
    ];
    for (v, opt, name) in keep {
        if let Some(v) = v.filter(|&v| v != 0) {
            set(libc::IPPROTO_TCP, opt, v as i32, name);
        }
    }
    if let Some(q) = opts.fastopen {
        set(libc::IPPROTO_TCP, libc::TCP_FASTOPEN, q, "TCP_FASTOPEN");
    }
}

/// A reload keeps a listening socket: its options are set again as the new
/// configuration has them, and a new `backlog=` (or its removal) takes effect with a
/// second listen(2), as nginx's `ls->listen` does.
pub fn reconfigure_listening(l: &Listener, addr: &Addr, old: &ListenOpts, new: &ListenOpts) {
    configure_listening(l.fd(), addr, new);
    let backlog = new.backlog.unwrap_or(DEFAULT_BACKLOG);
    if !new.udp && old.backlog.unwrap_or(DEFAULT_BACKLOG) != backlog {
        // SAFETY: listen(2) on a listening socket this process owns.
        if unsafe { libc::listen(l.fd(), backlog) } == -1 {
            let e = io::Error::last_os_error();
            let msg = format!("listen() to {addr}, backlog {backlog} failed, ignored");
            crate::core::log::error(crate::core::conf::Level::Alert, &msg, Some(&e));
        }
    }
}

fn open_udp(addr: &Addr, opts: &ListenOpts) -> io::Result<Listener> {
    use socket2::{Protocol, SockAddr, Type};
    let Addr::Inet(sa) = addr else { return Err(io::ErrorKind::Unsupported.into()) };
    let s = inet_socket(sa, Type::DGRAM, Protocol::UDP, opts)?;
    s.bind(&SockAddr::from(*sa))?;
    Ok(Listener::Udp(Rc::new(UdpSocket::from_std(s.into()))))
}

/// setsockopt(SO_REUSEPORT) refused (its errno) while opening a listening socket, which
/// nginx names so rather than as the bind() it did not reach.
#[derive(Debug)]
struct ReuseportFailed(i32);

impl std::fmt::Display for ReuseportFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        io::Error::from_raw_os_error(self.0).fmt(f)
    }
}

impl std::error::Error for ReuseportFailed {}

impl ReuseportFailed {
    fn wrap(e: io::Error) -> io::Error {
        io::Error::new(e.kind(), ReuseportFailed(e.raw_os_error().unwrap_or(0)))
    }

    /// The call that failed ("bind() to", or "setsockopt(SO_REUSEPORT)") and its error.
    fn unwrap(e: io::Error) -> (&'static str, io::Error) {
        match e.get_ref().and_then(|r| r.downcast_ref::<ReuseportFailed>()) {
            Some(r) => ("setsockopt(SO_REUSEPORT)", io::Error::from_raw_os_error(r.0)),
            None => ("bind() to", e),
        }
    }
}

/// nginx's `NGX_LISTEN_BACKLOG` on Linux.
pub const DEFAULT_BACKLOG: i32 = 511;

/// Open a listening socket with `opts` (`ngx_open_listening_sockets`).
/// What `nginx -t` does with a listening address: bind a socket to it and close it. An
/// address in use (a running server) is no error, and a unix socket that already exists
/// is left alone; one made here is removed again.
pub fn test_bind(addr: &Addr, opts: &ListenOpts) -> io::Result<()> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let ty = if opts.udp { Type::DGRAM } else { Type::STREAM };
    let r = match addr {
        Addr::Inet(sa) => {
            let s = Socket::new(Domain::for_address(*sa), ty, None)?;
            s.set_reuse_address(true)?;
            if sa.is_ipv6() {
                s.set_only_v6(opts.ipv6only)?;
            }
            s.bind(&SockAddr::from(*sa))
        }
        Addr::Unix(p) => {
            if p.exists() {
                return Ok(());
            }
            let s = Socket::new(Domain::UNIX, ty, None)?;
            let r = s.bind(&SockAddr::unix(p)?);
            if r.is_ok() {
                let _ = std::fs::remove_file(p);
            }
            r
        }
    };
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(()),
        r => r,
    }
}

/// nginx's ngx_open_listening_sockets: open every address still missing from `have`
/// (one slot per address of `want`). An address in use is tried again, up to five times
/// 500 ms apart ("try again to bind() after 500ms"), then "still could not bind()"; any
/// other error fails at once. Each failure is logged as nginx does.
pub fn open_listeners(want: &[(&Addr, &ListenOpts)], mut have: Vec<Option<Listener>>) -> Option<Vec<Listener>> {
    use crate::core::conf::Level;
    use crate::core::log::error;
    have.resize_with(want.len(), || None);
    for _ in 0..5 {
        let mut in_use = false;
        for ((addr, opts), slot) in want.iter().zip(have.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            match open_listener(addr, opts) {
                Ok(l) => *slot = Some(l),
                Err(e) => {
                    let (call, e) = ReuseportFailed::unwrap(e);
                    error(Level::Emerg, &format!("{call} {addr} failed"), Some(&e));
                    if e.raw_os_error() != Some(libc::EADDRINUSE) {
                        return None;
                    }
                    in_use = true;
                }
            }
        }
        if !in_use {
            return Some(have.into_iter().flatten().collect());
        }
        error(Level::Notice, "try again to bind() after 500ms", None);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    error(Level::Emerg, "still could not bind()", None);
    None
}

pub fn open_listener(addr: &Addr, opts: &ListenOpts) -> io::Result<Listener> {
    if opts.udp {
        return open_udp(addr, opts);
    }
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let backlog = opts.backlog.unwrap_or(DEFAULT_BACKLOG);
    match addr {
        Addr::Inet(sa) => {
            let s = inet_socket(sa, Type::STREAM, Protocol::TCP, opts)?;
            if opts.nodelay {
                s.set_tcp_nodelay(true)?;
            }
            s.bind(&SockAddr::from(*sa))?;
            s.listen(backlog)?;
            Ok(Listener::Tcp(TcpListener::from_std(s.into())))
        }
        Addr::Unix(path) => {
            let s = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
            if opts.reuseport {
                // Linux has no SO_REUSEPORT for unix sockets: nginx stops there.
                let fd = std::os::unix::io::AsRawFd::as_raw_fd(&s);
                set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(ReuseportFailed::wrap)?;
            }
            configure_listening(std::os::unix::io::AsRawFd::as_raw_fd(&s), addr, opts);
            s.bind(&SockAddr::unix(path)?)?;
            // Anyone may connect (nginx's ngx_open_listening_sockets makes it 0666), the
            // workers too when they run as another user.
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)) {
                let msg = format!("chmod() \"{}\" failed", crate::core::addr::path_text(path));
                crate::core::log::error(crate::core::log::Level::Emerg, &msg, Some(&e));
            }
            s.listen(backlog)?;
            Ok(Listener::Unix(UnixListener::from_std(s.into())))
        }
    }
}

/// On a wildcard UDP socket, have each datagram say which address it was sent to
/// (IP_PKTINFO, IPV6_RECVPKTINFO), as nginx's ngx_configure_listening_sockets does: the
/// session's local address, and the address its answers are sent from.
pub fn want_destination_addresses(fd: RawFd, addr: &SocketAddr) {
    let (level, opt, name) = match addr {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, "IP_PKTINFO"),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"),
    };
    if let Err(e) = set_int_option(fd, level, opt, 1) {
        let msg = format!("setsockopt({}) for {} failed, ignored", name, Addr::Inet(*addr));
        crate::core::log::error(crate::core::conf::Level::Alert, &msg, Some(&e));
    }
}

/// setsockopt(2) with an int value (the options socket2 has no call for).
pub fn set_int_option(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on a descriptor the caller owns, with an int option value.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
