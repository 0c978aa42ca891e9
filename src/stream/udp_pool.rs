//! Connected upstream UDP sockets kept for the next session to the same peer.
//!
//! nginx opens, connects and closes an upstream socket for every UDP session. With
//! `proxy_responses` set (DNS: one query, one answer) a session lasts one query, so that is
//! `socket`, `connect` (a port bind and a route lookup), `epoll_ctl` and `close` per query.
//! Here a session that ended with exactly the responses it was waiting for leaves its
//! socket in this pool, and the next session to the same address takes it with one `recv`
//! that discards whatever arrived in between (only a backend sending more answers than
//! `proxy_responses` says sends any). A socket that reports an error (an ICMP
//! unreachable) is closed, not reused. A socket never goes back to the client address
//! that last used it: a client's next session comes from another port, as under nginx
//! (a backend that tells a client's sessions apart by source port still can; nginx-tests'
//! stream_udp_proxy_requests.t checks exactly that).
//!
//! Every upstream datagram socket is watched under a token of its own (`DGRAM_BIT` and a
//! slot here that names the session using it), so passing a socket on is a change of
//! that slot's owner, not an `epoll_ctl`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use slab::Slab;

/// Tokens of upstream datagram sockets: this bit and the socket's slot.
pub const DGRAM_BIT: usize = 1 << (usize::BITS - 3);

/// The owner of a socket lying in the pool.
const NOBODY: usize = usize::MAX;

/// Sockets kept per worker, over all peers: enough for the sessions a busy worker ends
/// between two turns; the descriptors stay bounded.
pub const MAX_POOLED: usize = 256;

/// Datagrams discarded from a pooled socket before giving up on it.
const DRAIN_MAX: usize = 16;

#[derive(Default)]
pub struct UdpPool {
    /// Per backend: (socket, its slot, the client address that used it last).
    by_peer: HashMap<SocketAddr, Vec<(UdpSocket, usize, SocketAddr)>>,
    len: usize,
    /// Per watched socket: the session key that owns it (`NOBODY` while pooled).
    owners: Slab<usize>,
}

impl UdpPool {
    /// Watch a new upstream socket for the session `owner`; its slot.
    pub fn register(&mut self, r: &Registry, sock: &mut UdpSocket, owner: usize) -> io::Result<usize> {
        let slot = self.owners.insert(owner);
        if let Err(e) = r.register(sock, Token(DGRAM_BIT | slot), Interest::READABLE) {
            self.owners.remove(slot);
            return Err(e);
        }
        Ok(slot)
    }

    /// The session a socket's event is for.
    pub fn owner(&self, slot: usize) -> Option<usize> {
        self.owners.get(slot).copied().filter(|&o| o != NOBODY)
    }

    /// The socket in `slot` is closed (closing takes it out of the epoll set).
    pub fn release(&mut self, slot: usize) {
        self.owners.try_remove(slot);
    }

    /// Keep `sock` (connected to `peer`, watched in `slot`, last used for `client`) for
    /// reuse; closed if the pool is full.
    pub fn put(&mut self, peer: SocketAddr, sock: UdpSocket, slot: usize, client: SocketAddr) {
        if self.len >= MAX_POOLED {
            self.release(slot);
            return;
        }
        if let Some(o) = self.owners.get_mut(slot) {
            *o = NOBODY;
        }
        self.by_peer.entry(peer).or_default().push((sock, slot, client));
        self.len += 1;
    }

    /// A socket connected to `peer` that `client` did not use last, with nothing queued
    /// on it, now owned by `owner`, and its slot, if one is pooled.
    pub fn take(&mut self, peer: &SocketAddr, owner: usize, client: &SocketAddr) -> Option<(UdpSocket, usize)> {
        let socks = self.by_peer.get_mut(peer)?;
        while let Some(i) = socks.iter().rposition(|(_, _, c)| c != client) {
            let (sock, slot, _) = socks.swap_remove(i);
            self.len -= 1;
            if drained(&sock) {
                if let Some(o) = self.owners.get_mut(slot) {
                    *o = owner;
                }
                return Some((sock, slot));
            }
            self.owners.try_remove(slot);
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
        for (_, slot, _) in self.by_peer.drain().flat_map(|(_, v)| v) {
            self.owners.try_remove(slot);
        }
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
        let slot = pool.owners.insert(7);
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1000".parse().unwrap(), "127.0.0.1:1001".parse().unwrap());
        pool.put(addr, up, slot, a);
        assert_eq!(pool.owner(slot), None, "pooled: nobody's");
        assert!(pool.take(&addr, 8, &a).is_none(), "not back to the client that used it last");
        backend.send_to(b"late answer", local).unwrap();
        backend.send_to(b"later answer", local).unwrap();
        // Loopback delivery is synchronous, so both are queued now.
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(pool.take(&other, 8, &b).is_none());
        let (sock, got) = pool.take(&addr, 8, &b).expect("the pooled socket");
        assert_eq!((got, pool.owner(slot)), (slot, Some(8)));
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
        let slot = pool.owners.insert(1);
        let c: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let d: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        pool.put(addr, up, slot, c);
        assert!(pool.take(&addr, 2, &d).is_none(), "an errored socket is closed");
        assert!(pool.owners.is_empty(), "and its slot released");
        for i in 0..MAX_POOLED + 10 {
            let (_b, up, addr) = pair();
            let slot = pool.owners.insert(i);
            pool.put(addr, up, slot, c);
        }
        assert_eq!(pool.len(), MAX_POOLED);
        assert_eq!(pool.owners.len(), MAX_POOLED, "sockets beyond the bound are closed, slots released");
    }
}
