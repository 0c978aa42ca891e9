//! Connected upstream UDP sockets kept for the next session to the same peer.
//!
//! nginx opens, connects and closes an upstream socket for every UDP session. With
//! `proxy_responses` set (DNS: one query, one answer) a session lasts one query, so that is
//! `socket`, `connect` (a port bind and a route lookup), `epoll_ctl` and `close` per query.
//! Here a session that ended with exactly the responses it was waiting for leaves its
//! socket in this pool, and the next session to the same address takes it: one
//! `epoll_ctl` to point it at the new session and one `recv` that discards whatever arrived
//! in between (only a backend sending more answers than `proxy_responses` says sends
//! any). A socket that reports an error (an ICMP unreachable) is closed, not reused.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;

/// Sockets kept per worker, over all peers: enough for the sessions a busy worker ends
/// between two turns; the descriptors stay bounded.
pub const MAX_POOLED: usize = 256;

/// Datagrams discarded from a pooled socket before giving up on it.
const DRAIN_MAX: usize = 16;

#[derive(Default)]
pub struct UdpPool {
    by_peer: HashMap<SocketAddr, Vec<UdpSocket>>,
    len: usize,
}

impl UdpPool {
    /// Keep `sock` (connected to `peer`) for reuse; closed if the pool is full.
    pub fn put(&mut self, peer: SocketAddr, sock: UdpSocket) {
        if self.len >= MAX_POOLED {
            return;
        }
        self.by_peer.entry(peer).or_default().push(sock);
        self.len += 1;
    }

    /// A socket connected to `peer` with nothing queued on it, if one is pooled.
    pub fn take(&mut self, peer: &SocketAddr) -> Option<UdpSocket> {
        let socks = self.by_peer.get_mut(peer)?;
        while let Some(sock) = socks.pop() {
            self.len -= 1;
            if drained(&sock) {
                return Some(sock);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Close every pooled socket (the worker is idle or leaving).
    pub fn clear(&mut self) {
        self.by_peer = HashMap::new();
        self.len = 0;
    }
}

/// Discard queued datagrams; false if the socket failed or would not drain.
fn drained(sock: &UdpSocket) -> bool {
    // One byte is enough: a datagram read into a short buffer is consumed whole.
    let mut b = [0u8; 1];
    for _ in 0..DRAIN_MAX {
        match sock.recv(&mut b) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (std::net::UdpSocket, UdpSocket, SocketAddr) {
        let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = backend.local_addr().unwrap();
        let up = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        up.connect(addr).unwrap();
        (backend, up, addr)
    }

    #[test]
    fn reuse_discards_late_datagrams() {
        let (backend, up, addr) = pair();
        let local = up.local_addr().unwrap();
        let mut pool = UdpPool::default();
        pool.put(addr, up);
        backend.send_to(b"late answer", local).unwrap();
        backend.send_to(b"later answer", local).unwrap();
        // Loopback delivery is synchronous, so both are queued now.
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(pool.take(&other).is_none());
        let sock = pool.take(&addr).expect("the pooled socket");
        assert_eq!(sock.local_addr().unwrap(), local);
        let mut b = [0u8; 64];
        assert_eq!(sock.recv(&mut b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(pool.is_empty());
    }

    #[test]
    fn failed_socket_is_not_reused_and_pool_is_bounded() {
        // A connected socket to a closed port gets ECONNREFUSED after a send.
        let (backend, up, addr) = pair();
        drop(backend);
        up.send(b"q").unwrap();
        let mut pool = UdpPool::default();
        pool.put(addr, up);
        assert!(pool.take(&addr).is_none(), "an errored socket is closed");
        for _ in 0..MAX_POOLED + 10 {
            let (_b, up, addr) = pair();
            pool.put(addr, up);
        }
        assert_eq!(pool.len(), MAX_POOLED);
    }
}
