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

/// Tokens of upstream datagram sockets: this bit, a generation and the socket's slot.
pub const DGRAM_BIT: usize = 1 << (usize::BITS - 3);
/// Slot bits of a token (far more sockets than a worker's descriptors allow).
const SLOT_BITS: u32 = 28;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
/// Generation bits: between the slot's and `DGRAM_BIT`.
const GEN_MASK: usize = (1 << (usize::BITS - 3 - SLOT_BITS)) - 1;

#[derive(Default)]
pub struct DgramOwners {
    /// Per watched socket: the session key that owns it, and its token's id.
    owners: Slab<(usize, usize)>,
    /// Counts registrations: an event still queued for a socket closed this turn names
    /// the old generation and is dropped, as nginx's `instance` bit drops it, instead
    /// of reaching the session whose socket took the slot since.
    generation: usize,
}

impl DgramOwners {
    /// Watch a new upstream socket for the session `owner`; its slot.
    pub fn register(&mut self, r: &Registry, sock: &mut UdpSocket, owner: usize) -> io::Result<usize> {
        let entry = self.owners.vacant_entry();
        let slot = entry.key();
        if slot > SLOT_MASK {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        self.generation = (self.generation + 1) & GEN_MASK;
        let id = self.generation << SLOT_BITS | slot;
        r.register(sock, Token(DGRAM_BIT | id), Interest::READABLE)?;
        entry.insert((owner, id));
        Ok(slot)
    }

    /// The session an event is for (`id`: the token without `DGRAM_BIT`), if its
    /// socket is still the one in that slot.
    pub fn owner(&self, id: usize) -> Option<usize> {
        self.owners.get(id & SLOT_MASK).filter(|&&(_, at)| at == id).map(|&(owner, _)| owner)
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
