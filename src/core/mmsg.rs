//! recvmmsg(2) and sendmmsg(2): several datagrams per system call. A UDP listener reads
//! its clients' datagrams with the first, a UDP session its upstream's answers; the
//! answers go back to the client with the second (nginx: one recvmsg or sendmsg each).

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per call.
pub const BATCH: usize = 16;

/// Room for one datagram's control messages: an IP_PKTINFO or IPV6_PKTINFO (32 or 40
/// bytes with their headers), aligned as cmsghdr needs.
type Control = [u64; 8];

/// Room for a batch: `BATCH` buffers of `size` bytes, their source addresses and, on a
/// wildcard socket with IP_PKTINFO on, the addresses they were sent to.
pub struct RecvBatch {
    size: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: [usize; BATCH],
    addr_lens: [libc::socklen_t; BATCH],
    controls: Box<[Control; BATCH]>,
    control_lens: [usize; BATCH],
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
            controls: Box::new([[0; 8]; BATCH]),
            control_lens: [0; BATCH],
        }
    }

    /// Read up to `max` (at most `BATCH`) datagrams from `fd` without blocking; how
    /// many came.
    pub fn recv(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let max = max.clamp(1, BATCH);
        let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.bufs[i * self.size..].as_mut_ptr().cast(),
            iov_len: self.size,
        });
        // SAFETY: mmsghdr is plain data; all-zero is a valid value (null pointers, 0 lengths).
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<Control>();
        }
        // SAFETY: every header points at a live iovec, buffer, address and control room of this batch,
        // each of the length given; the kernel writes at most those lengths.
        let n = unsafe {
            libc::recvmmsg(fd, hdrs.as_mut_ptr(), max as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = (h.msg_len as usize).min(self.size);
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
            self.control_lens[i] = h.msg_hdr.msg_controllen;
        }
        Ok(n)
    }

    /// The address datagram `i` was sent to, from its IP_PKTINFO or IPV6_PKTINFO (only a
    /// socket with that option on has one: nginx's wildcard UDP listeners).
    pub fn local(&self, i: usize) -> Option<IpAddr> {
        let control = self.controls.get(i)?;
        // SAFETY: msghdr is plain data; only its control fields are read by the CMSG
        // macros, and they describe the part of this datagram's control room the kernel
        // filled.
        unsafe {
            let mut m: libc::msghdr = MaybeUninit::zeroed().assume_init();
            m.msg_control = control.as_ptr() as *mut libc::c_void;
            m.msg_controllen = self.control_lens[i].min(std::mem::size_of::<Control>());
            let mut c = libc::CMSG_FIRSTHDR(&m);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                        let p: libc::in_pktinfo = std::ptr::read_unaligned(data.cast());
                        return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr))));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let p: libc::in6_pktinfo = std::ptr::read_unaligned(data.cast());
                        return Some(IpAddr::V6(Ipv6Addr::from(p.ipi6_addr.s6_addr)));
                    }
                    _ => c = libc::CMSG_NXTHDR(&m, c),
                }
            }
        }
        None
    }

    /// The bytes of datagram `i` of the last batch.
    pub fn data(&self, i: usize) -> &[u8] {
        self.bufs.get(i * self.size..i * self.size + self.lens.get(i).copied().unwrap_or(0)).unwrap_or(&[])
    }

    /// Datagram `i` of the last batch and its source, if that is an IP address.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let data = self.bufs.get(i * self.size..i * self.size + self.lens[i])?;
        Some((data, sockaddr(&self.addrs[i], self.addr_lens[i])?))
    }
}

/// The control message that sends a datagram from `from` (IP_PKTINFO's ipi_spec_dst, or
/// IPV6_PKTINFO): a wildcard socket answers from the address the client wrote to.
fn source_control(from: IpAddr) -> (Control, usize) {
    let mut control: Control = [0; 8];
    // SAFETY: the room is 64 bytes, aligned for cmsghdr, and holds one header with an
    // in_pktinfo or in6_pktinfo (CMSG_SPACE of either is at most 40 bytes).
    unsafe {
        let mut m: libc::msghdr = MaybeUninit::zeroed().assume_init();
        m.msg_control = control.as_mut_ptr().cast();
        m.msg_controllen = std::mem::size_of::<Control>();
        let c = libc::CMSG_FIRSTHDR(&m);
        let len = match from {
            IpAddr::V4(ip) => {
                let mut p: libc::in_pktinfo = MaybeUninit::zeroed().assume_init();
                p.ipi_spec_dst.s_addr = u32::from(ip).to_be();
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), p);
                libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32)
            }
            IpAddr::V6(ip) => {
                let mut p: libc::in6_pktinfo = MaybeUninit::zeroed().assume_init();
                p.ipi6_addr.s6_addr = ip.octets();
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = libc::IPV6_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in6_pktinfo>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), p);
                libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32)
            }
        };
        (control, len as usize)
    }
}

/// Send `msgs` to `to` on `fd` (a listening socket) without blocking, from address
/// `from` when given (a wildcard socket): how many went. A datagram the socket has no
/// room for is dropped with those after it, as single sends would drop them. An error
/// comes with the count of datagrams sent before it (sendmmsg reports it only when
/// the failing datagram leads a call, so a short count is tried again from there).
pub fn send_to_all(
    fd: RawFd,
    to: &SocketAddr,
    from: Option<IpAddr>,
    msgs: &[&[u8]],
) -> Result<usize, (usize, io::Error)> {
    let sa = socket2::SockAddr::from(*to);
    let mut control = from.map(source_control);
    let mut sent = 0;
    while sent < msgs.len() {
        let chunk = &msgs[sent..msgs.len().min(sent + BATCH)];
        let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: chunk.get(i).map_or(std::ptr::null_mut(), |m| m.as_ptr() as *mut libc::c_void),
            iov_len: chunk.get(i).map_or(0, |m| m.len()),
        });
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for (i, h) in hdrs.iter_mut().enumerate().take(chunk.len()) {
            h.msg_hdr.msg_name = sa.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = sa.len();
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if let Some((c, len)) = control.as_mut() {
                h.msg_hdr.msg_control = c.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = *len;
            }
        }
        // SAFETY: each of the first chunk.len() headers points at the destination address,
        // at one iovec over a live slice and at most at the source control message; the
        // kernel only reads them.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), chunk.len() as libc::c_uint, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(sent);
            }
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((sent, e));
        }
        if n == 0 {
            // (Not seen: sendmmsg fails rather than send nothing. No spinning on it.)
            return Ok(sent);
        }
        sent += n as usize;
    }
    Ok(sent)
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
        assert_eq!(batch.recv(r.as_raw_fd(), BATCH).unwrap(), BATCH);
        for i in 0..BATCH {
            let (d, from) = batch.get(i).unwrap();
            assert_eq!((d.len(), from), (i * 100, a.local_addr().unwrap()));
            assert!(d.iter().all(|&x| usize::from(x) == i));
        }
        assert_eq!(batch.recv(r.as_raw_fd(), BATCH).unwrap(), 4);
        assert_eq!(batch.get(3).unwrap().0.len(), 1900);
        assert_eq!(batch.recv(r.as_raw_fd(), BATCH).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // And back with sendmmsg: 20 datagrams, 16 and 4 per call.
        let msgs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 10]).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
        assert_eq!(send_to_all(r.as_raw_fd(), &a.local_addr().unwrap(), None, &refs).ok(), Some(20));
        let mut got = [0u8; 16];
        for i in 0..20u8 {
            let (n, from) = a.recv_from(&mut got).unwrap();
            assert_eq!((&got[..n], from), (&[i; 10][..], to));
        }
        if let Some(b) = b {
            let r6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
            b.send_to(b"six", r6.local_addr().unwrap()).unwrap();
            assert_eq!(batch.recv(r6.as_raw_fd(), BATCH).unwrap(), 1);
            assert_eq!(batch.get(0).unwrap(), (&b"six"[..], b.local_addr().unwrap()));
        }
    }
}
