//! Which session each upstream datagram socket belongs to.
//!
//! Every upstream datagram socket is watched under a token of its own (`DGRAM_BIT` and a
//! slot here that names the session using it): a UDP session's upstream socket is not
//! one of the session's two fixed tokens, so that its events find the session without
//! a lookup by address. As nginx, every session opens, connects and closes its own
//! socket: a backend's late or extra datagrams can then never reach another client, and
//! a backend sees each session come from a port of its own.

use std::io;

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use slab::Slab;

/// Tokens of upstream datagram sockets: this bit and the socket's slot.
pub const DGRAM_BIT: usize = 1 << (usize::BITS - 3);

#[derive(Default)]
pub struct DgramOwners {
    /// Per watched socket: the session key that owns it.
    owners: Slab<usize>,
}

impl DgramOwners {
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
        self.owners.get(slot).copied()
    }

    /// The socket in `slot` is closed (closing takes it out of the epoll set).
    pub fn release(&mut self, slot: usize) {
        self.owners.try_remove(slot);
    }

    /// Give back the memory of a busy past (the worker is idle).
    pub fn shrink_to_fit(&mut self) {
        self.owners.shrink_to_fit();
    }
}
