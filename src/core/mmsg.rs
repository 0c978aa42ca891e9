//! recvmmsg(2): the datagrams waiting on a socket, several per system call. A UDP
//! listener reads its clients' datagrams with it (nginx reads one per recvmsg).

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per call.
pub const BATCH: usize = 16;

/// Room for a batch: `BATCH` buffers of `size` bytes and their source addresses.
pub struct RecvBatch {
    size: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: [usize; BATCH],
    addr_lens: [libc::socklen_t; BATCH],
}

impl RecvBatch {
    /// Buffers of `size` bytes (a datagram longer than that would be cut: give the
    /// largest datagram size). Pages are touched only as datagrams fill them.
    pub fn new(size: usize) -> RecvBatch {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let zero: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        RecvBatch {
            size,
            bufs: vec![0u8; size * BATCH],
            addrs: vec![zero; BATCH],
            lens: [0; BATCH],
            addr_lens: [0; BATCH],
        }
    }

    /// Read up to `BATCH` datagrams from `fd` without blocking; how many came.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: [libc::iovec; BATCH] =
            std::array::from_fn(|i| libc::iovec { iov_base: self.bufs[i * self.size..].as_mut_ptr().cast(), iov_len: self.size });
        // SAFETY: mmsghdr is plain data; all-zero is a valid value (null pointers, 0 lengths).
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live iovec, buffer and address of this batch,
        // each of the length given; the kernel writes at most those lengths.
        let n = unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = (h.msg_len as usize).min(self.size);
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Datagram `i` of the last batch and its source, if that is an IP address.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let data = self.bufs.get(i * self.size..i * self.size + self.lens[i])?;
        Some((data, sockaddr(&self.addrs[i], self.addr_lens[i])?))
    }
}

fn sockaddr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says this storage holds a sockaddr_in, and it is long enough.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says this storage holds a sockaddr_in6, and it is long enough.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn several_datagrams_per_call_with_their_sources() {
        let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = r.local_addr().unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("[::1]:0").ok();
        for i in 0..20u8 {
            a.send_to(&vec![i; usize::from(i) * 100], to).unwrap();
        }
        let mut batch = RecvBatch::new(65536);
        assert_eq!(batch.recv(r.as_raw_fd()).unwrap(), BATCH);
        for i in 0..BATCH {
            let (d, from) = batch.get(i).unwrap();
            assert_eq!((d.len(), from), (i * 100, a.local_addr().unwrap()));
            assert!(d.iter().all(|&x| usize::from(x) == i));
        }
        assert_eq!(batch.recv(r.as_raw_fd()).unwrap(), 4);
        assert_eq!(batch.get(3).unwrap().0.len(), 1900);
        assert_eq!(batch.recv(r.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        if let Some(b) = b {
            let r6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
            b.send_to(b"six", r6.local_addr().unwrap()).unwrap();
            assert_eq!(batch.recv(r6.as_raw_fd()).unwrap(), 1);
            assert_eq!(batch.get(0).unwrap(), (&b"six"[..], b.local_addr().unwrap()));
        }
    }
}
