//! One direction of a TCP relay (the byte-moving half of `ngx_stream_proxy_process`),
//! adaptive between two paths:
//!
//! - **copy**: read into the worker's shared scratch buffer and write straight on; only
//!   bytes the destination cannot take yet are kept, in a per-direction buffer. Small
//!   request/response traffic costs one read and one write per message.
//! - **splice**: once a read fills the buffer (bulk), bytes go socket → pipe → socket
//!   with splice(2) and never enter user space. After a few small reads with an empty
//!   pipe the direction returns to copying and gives the pipe back to the pool.
//!
//! An idle direction holds no buffer and no pipe. The copy path is also the fallback
//! when splice is refused for a socket pair, and the only path when bytes must be seen
//! or paced (rate limits; later TLS and UDP).

use std::io::{self, Read, Write};

use crate::core::conn::Conn;
use crate::core::splice::{self, Pipe, PipePool};

/// Reads per direction per wake-up: a busy connection yields to the others after this.
/// nginx's ngx_stream_proxy_process has no such cap: it reads until the source would
/// block, the destination does, or end of file, so a client that sends its data and
/// closes at once is read to the end (and the session ended, without half-close)
/// before anything the upstream answered meanwhile is relayed, even through a tiny
/// `proxy_buffer_size`. The cap is high enough for that and only bounds a pathological
/// producer and consumer that never block.
pub const READS_PER_WAKEUP: usize = 1024;

/// A splice read smaller than this counts as "small" traffic.
const SMALL: usize = 4096;
/// This many small splice reads in a row send the direction back to copying.
const SMALL_TO_COPY: u8 = 2;
/// A splice fill is sized by the destination's room (two more syscalls) only once this
/// many buffers' worth came in full fills in a row: messages of up to 64k at the default
/// buffer size move as before, with no syscall added, and bulk gets large fills.
const BULK_RUN: usize = 4;

#[derive(Default)]
pub struct Direction {
    /// Copied bytes `dst` has not taken yet.
    held: Vec<u8>,
    pos: usize,
    /// Bytes read since this direction last held nothing: as nginx's one buffer, which
    /// is read into until full and starts over only once all of it is sent, what is
    /// held never passes `proxy_buffer_size` (copy path).
    fill: usize,
    pipe: Option<Pipe>,
    /// `src` reached end of file (or failed).
    pub eof: bool,
    /// Splice failed for this socket pair: copy only.
    no_splice: bool,
    small: u8,
    /// Bytes spliced in by fills of at least `proxy_buffer_size` in a row: a flow is
    /// taken for bulk (and the destination's room asked for) only past `BULK_RUN` of them.
    run: usize,
    /// The source's end may already be in (EPOLLRDHUP/HUP/ERR was seen): read until
    /// EAGAIN or end of file. Otherwise a short read means the socket is drained for
    /// now; later bytes raise a new edge, so the EAGAIN read is saved.
    pub greedy: bool,
    /// The source's FIN is in and no error came with it (see `Ready::fin`): a short
    /// read has taken every byte before it, so the end of file is known without the
    /// read that would return 0.
    pub fin: bool,
    /// The source may have bytes (nginx's `read->ready`): set by a readable event,
    /// cleared when a read finds it drained. A pump woken by the destination becoming
    /// writable does not read a source that is known to be empty.
    pub src_ready: bool,
    /// The last bytes were written with `MSG_MORE` (their source's end of file was in
    /// already): the destination's end of file must follow by `shutdown`, which sends
    /// them together, before the socket is closed.
    pub corked: bool,
}

/// What one `pump` did.
#[derive(Debug, Default)]
pub struct Pumped {
    pub read: u64,
    pub written: u64,
    /// A read returned (data or end of file): nginx's first-byte moment.
    pub read_returned: bool,
    /// The read error (the direction is at end of file after it).
    pub read_error: Option<io::Error>,
    pub write_error: Option<io::Error>,
    /// Stopped at the per-wake-up cap with more to do.
    pub requeue: bool,
    /// The size of the last read (what a rate's delay is reckoned from).
    pub last_read: u64,
}

/// How a direction may move bytes now.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bytes per read in copy mode (`proxy_buffer_size`).
    pub buffer: usize,
    /// The most bytes that may still be read now (rate limit), if limited.
    pub limit: Option<usize>,
    /// Whether splice may be used (false: bytes must pass through user space).
    pub splice: bool,
    /// The direction's rate (bytes per second), 0 if none: as nginx's, a read that
    /// earns a delay (`n * 1000 / rate` ms, at least 1) is the last one until it passes.
    pub rate: u64,
    /// Whether the last bytes before an end of file may wait (`MSG_MORE`) for the FIN
    /// the session's close sends with them. Not under `proxy_half_close`: there the
    /// end of file is passed on by a `shutdown` of its own, after the bytes left as
    /// nginx's did (a peer that has closed resets at the bytes, and the shutdown fails).
    pub cork: bool,
}

impl Direction {
    /// Bytes read from `src` and not yet written to `dst`.
    pub fn pending(&self) -> bool {
        self.pos < self.held.len() || self.pipe.as_ref().is_some_and(|p| p.len > 0)
    }

    /// Put `bytes` in front of everything else this direction will deliver (the PROXY
    /// protocol header).
    pub fn prepend(&mut self, bytes: &[u8]) {
        let mut v = bytes.to_vec();
        v.extend_from_slice(&self.held[self.pos..]);
        self.held = v;
        self.pos = 0;
    }

    /// Add `bytes` after everything this direction holds (read before there was a
    /// destination).
    pub fn push(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
    }

    /// Bytes held in user space, not yet written.
    pub fn held_len(&self) -> usize {
        self.held.len() - self.pos
    }

    pub fn is_splicing(&self) -> bool {
        self.pipe.is_some()
    }

    /// Give the pipe back (closed if it still holds bytes) and drop held bytes.
    pub fn release(&mut self, pipes: &mut PipePool) {
        if let Some(p) = self.pipe.take() {
            pipes.put(p);
        }
        self.held = Vec::new();
        self.pos = 0;
        self.fill = 0;
    }

    /// Move bytes from `src` to `dst` until one of them would block, end of file, an
    /// error, or the per-wake-up cap. Without `do_write` (woken by `src`, not by `dst`)
    /// copied bytes held from before are sent only after a read, as nginx's read event
    /// handler does (`ngx_stream_proxy_process(.., do_write = 0)`).
    pub fn pump(
        &mut self,
        src: &mut Conn,
        dst: &mut Conn,
        scratch: &mut Vec<u8>,
        pipes: &mut PipePool,
        b: Budget,
        mut do_write: bool,
    ) -> Pumped {
        let mut out = Pumped::default();
        let mut reads = 0;
        let mut limit = b.limit;
        let mut drained = false;
        let mut paced = false;
        // `dst` is full: reads go on into what is left of the buffer, behind the held
        // bytes (nginx's ngx_stream_proxy_process reads while `b->end - b->last` > 0).
        let mut dst_full = false;
        // Held bytes go before the pipe's: with both, nothing waits for a read.
        do_write |= self.pipe.is_some();
        loop {
            // First deliver what is held, in order: copied bytes, then the pipe.
            if self.pos < self.held.len() && !dst_full && do_write {
                match dst.write(&self.held[self.pos..]) {
                    Ok(n) => {
                        self.pos += n;
                        out.written += n as u64;
                        if self.pos == self.held.len() {
                            self.held.clear();
                            self.pos = 0;
                            self.fill = 0;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.pipe.is_some() {
                            return out;
                        }
                        dst_full = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        out.write_error = Some(e);
                        return out;
                    }
                }
            }
            // The pipe's bytes come after the held ones: none move while those wait.
            if self.pos < self.held.len() && self.pipe.is_some() {
                return out;
            }
            if let Some(p) = self.pipe.as_mut() {
                if p.len > 0 {
                    match p.drain_to(dst.fd()) {
                        Ok(n) => {
                            out.written += n as u64;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                        Err(e) => {
                            out.write_error = Some(e);
                            return out;
                        }
                    }
                }
                // Empty pipe after small reads: back to copying.
                if self.small >= SMALL_TO_COPY || !b.splice {
                    self.small = 0;
                    if let Some(p) = self.pipe.take() {
                        pipes.put(p);
                    }
                }
            }
            let room = b.buffer.saturating_sub(self.fill);
            if self.eof || limit == Some(0) || drained || paced || !self.src_ready || (room == 0 && self.pipe.is_none())
            {
                if drained {
                    self.src_ready = false;
                }
                return out;
            }
            if reads == READS_PER_WAKEUP {
                out.requeue = true;
                return out;
            }
            reads += 1;
            if let Some(p) = self.pipe.as_mut() {
                // The pipe is empty here (its bytes go first, and a destination that
                // cannot take them ends the pump). What is in the pipe when `dst` stops
                // taking bytes is held back from it, and nginx holds at most its one
                // buffer: so each fill takes `proxy_buffer_size`, and once the flow runs
                // bulk (`BULK_RUN`) what `dst` surely takes now (`send_room`) more. A
                // peer that stops reading holds the other side back as soon as nginx's
                // does, and bulk still moves in large splices while the destination has
                // room (16k splices cost a sixth more CPU per byte). A destination reset
                // meanwhile loses up to one such fill, where nginx loses at most its
                // buffer (README, "Relaying").
                let bulk = self.run >= BULK_RUN * b.buffer;
                let room = if bulk && dst.is_tcp() { splice::send_room(dst.fd()) } else { 0 };
                match p.fill_from(src.fd(), b.buffer.saturating_add(room)) {
                    Ok(0) => {
                        out.read_returned = true;
                        self.eof = true;
                    }
                    Ok(n) => {
                        out.read_returned = true;
                        out.read += n as u64;
                        // A splice can stop short of what the socket holds (the pipe runs
                        // out of slots before bytes), so only EAGAIN says it is drained.
                        self.small = if n < SMALL { self.small.saturating_add(1) } else { 0 };
                        self.run = if n < b.buffer { 0 } else { self.run.saturating_add(n) };
                    }
                    // The pipe was empty, so this is the socket: nothing to read.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.src_ready = false;
                        return out;
                    }
                    Err(e) if splice::unsupported(&e) => {
                        self.no_splice = true;
                        if let Some(p) = self.pipe.take() {
                            pipes.put(p);
                        }
                    }
                    Err(e) => {
                        out.read_error = Some(e);
                        self.eof = true;
                    }
                }
                continue;
            }
            let max = limit.map_or(room, |l| l.min(room)).max(1);
            if scratch.len() < max {
                // (The proxy reserved its buffer size when it started; calloc'd.)
                *scratch = vec![0; max];
            }
            match src.read(&mut scratch[..max]) {
                Ok(0) => {
                    out.read_returned = true;
                    self.eof = true;
                }
                Ok(mut n) => {
                    out.read_returned = true;
                    out.read += n as u64;
                    out.last_read = n as u64;
                    paced = b.rate > 0 && n as u64 * 1000 / b.rate > 0;
                    if let Some(l) = limit.as_mut() {
                        *l -= n.min(*l);
                    }
                    if self.pos < self.held.len() {
                        // Behind what is held; sent with it next, if `dst` can take more.
                        self.held.extend_from_slice(&scratch[..n]);
                        self.fill += n;
                        do_write = true;
                        drained = !self.greedy && n < max && !src.is_tls();
                        continue;
                    }
                    // After the peer's hang-up a short read is followed by the read that
                    // finds the end of file: made before writing, it lets the last bytes
                    // and the end of file (which the session passes on at once) share a
                    // segment (MSG_MORE), where nginx sends two. Only a sure end of file
                    // corks.
                    let mut last = false;
                    if self.fin && n < max && b.limit.is_none() && src.is_tcp() {
                        self.eof = true;
                        last = true;
                    } else if self.greedy && n < max && b.limit.is_none() {
                        match src.read(&mut scratch[n..max]) {
                            Ok(0) => {
                                self.eof = true;
                                last = true;
                            }
                            Ok(k) => {
                                out.read += k as u64;
                                out.last_read = k as u64;
                                n += k;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.src_ready = false,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                out.read_error = Some(e);
                                self.eof = true;
                            }
                        }
                    }
                    // Only a TCP socket holds bytes back (MSG_MORE); elsewhere the write is
                    // plain and nothing waits for the end of file to leave.
                    let more = last && b.cork;
                    self.corked |= more && dst.is_tcp();
                    let wrote = if more { dst.write_more(&scratch[..n]) } else { dst.write(&scratch[..n]) };
                    let w = match wrote {
                        Ok(w) => w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => 0,
                        Err(e) => {
                            out.write_error = Some(e);
                            return out;
                        }
                    };
                    out.written += w as u64;
                    if w < n {
                        self.held.extend_from_slice(&scratch[w..n]);
                        self.fill = n;
                        dst_full = true;
                    }
                    // A short read drains a socket, but not TLS: OpenSSL may hold more
                    // records it read ahead, and no new event would announce them.
                    drained = !self.greedy && n < max && !src.is_tls();
                    // A full read is bulk traffic: splice from now on, if allowed.
                    if n == max && b.splice && b.limit.is_none() && !self.no_splice && b.buffer >= SMALL {
                        if let Ok(p) = pipes.get() {
                            self.small = 0;
                            self.pipe = Some(p);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.src_ready = false;
                    return out;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.read_error = Some(e);
                    self.eof = true;
                }
            }
        }
    }
}

/// `n` zero bytes from the allocator's zeroed memory (calloc: fresh pages are not
/// touched until used), or None when there is not that much (nginx's "malloc() failed"
/// ends one session; a failed Vec allocation would abort the worker).
pub fn zeroed(n: usize) -> Option<Vec<u8>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(n).ok()?;
    // SAFETY: a non-zero size; the pointer, if not null, owns `n` initialized (zero)
    // bytes allocated by the global allocator with the layout Vec<u8> uses.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        if p.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(p, n, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A copy-path direction between two unix socket pairs: (what feeds `src`, `src`,
    /// `dst`, what reads `dst`).
    fn pairs() -> (mio::net::UnixStream, Conn, Conn, mio::net::UnixStream) {
        let (feed, src) = mio::net::UnixStream::pair().expect("pair");
        let (dst, sink) = mio::net::UnixStream::pair().expect("pair");
        (feed, Conn::Unix(src), Conn::Unix(dst), sink)
    }

    fn budget(buffer: usize) -> Budget {
        Budget { buffer, limit: None, splice: false, rate: 0, cork: true }
    }

    /// Feed `feed` until its socket takes no more; the bytes written.
    fn flood(feed: &mut mio::net::UnixStream) -> usize {
        let chunk = [7u8; 4096];
        let mut n = 0;
        while let Ok(k) = feed.write(&chunk) {
            n += k;
        }
        n
    }

    /// As nginx's one buffer: with the destination full, reads go on into what is left
    /// of `proxy_buffer_size`, and start over only once all of it is sent; a read event
    /// with the buffer full sends nothing (ngx_stream_proxy_process with do_write 0).
    #[test]
    fn the_buffer_starts_over_only_once_all_of_it_is_sent() {
        let (mut feed, mut src, mut dst, mut sink) = pairs();
        let (mut scratch, mut pipes) = (Vec::new(), PipePool::with_limit(0));
        let mut d = Direction { src_ready: true, ..Default::default() };
        let mut blocked = 0;
        // Fill the destination first, so the relay's writes block.
        if let Conn::Unix(s) = &mut dst {
            blocked = flood(s);
        }
        assert!(blocked > 0);
        flood(&mut feed);
        let buffer = 8192;
        let r = d.pump(&mut src, &mut dst, &mut scratch, &mut pipes, budget(buffer), true);
        assert_eq!((r.read, r.written), (buffer as u64, 0), "read into the whole buffer while blocked");
        assert_eq!(d.held_len(), buffer);
        // Room in the destination for part of it: a read event (the buffer is full)
        // neither reads nor sends.
        let mut out = vec![0u8; 4096];
        let freed = sink.read(&mut out).expect("read sink");
        assert!(freed > 0);
        let r = d.pump(&mut src, &mut dst, &mut scratch, &mut pipes, budget(buffer), false);
        assert_eq!((r.read, r.written), (0, 0));
        // Drain the sink: the write event sends the buffer, then reads a new one.
        while sink.read(&mut out).is_ok_and(|n| n > 0) {}
        let r = d.pump(&mut src, &mut dst, &mut scratch, &mut pipes, budget(buffer), true);
        assert!(r.written >= buffer as u64, "{r:?}");
        assert!(r.read > 0, "{r:?}");
        assert!(d.held_len() <= buffer);
    }

    /// A TCP connection over loopback: (one end, the other), non-blocking.
    fn tcp_pair() -> (std::net::TcpStream, mio::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        b.set_nonblocking(true).expect("nonblocking");
        (a, mio::net::TcpStream::from_std(b))
    }

    /// With the FIN known to be in, a short read from TCP is the last one: the end of
    /// file is taken without the read that returns 0 (a short connection's third recv).
    /// The source here has not really ended, so a read would find EAGAIN, not the end.
    /// (Unix sockets are not trusted so: a read stops short at passed descriptors.)
    #[test]
    fn a_short_read_after_the_fin_is_the_end_of_file() {
        for fin in [false, true] {
            let (mut feed, src) = tcp_pair();
            feed.write_all(b"ok").expect("feed");
            // Both bytes in before the pump reads (loopback delivers within the write,
            // but a read must not race it).
            let mut peek = [0u8; 2];
            for _ in 0..1000 {
                if src.peek(&mut peek).is_ok_and(|n| n == 2) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let mut src = Conn::Tcp(src);
            let (_, _, mut dst, mut sink) = pairs();
            let (mut scratch, mut pipes) = (Vec::new(), PipePool::with_limit(0));
            let mut d = Direction { src_ready: true, greedy: true, fin, ..Default::default() };
            let r = d.pump(&mut src, &mut dst, &mut scratch, &mut pipes, budget(16384), false);
            assert_eq!((r.read, r.written, d.eof), (2, 2, fin), "fin {fin}");
            let mut got = [0u8; 8];
            assert_eq!(sink.read(&mut got).expect("sink"), 2);
        }
        // A unix source reads on to find its end.
        let (mut feed, mut src, mut dst, _sink) = pairs();
        let (mut scratch, mut pipes) = (Vec::new(), PipePool::with_limit(0));
        let mut d = Direction { src_ready: true, greedy: true, fin: true, ..Default::default() };
        feed.write_all(b"ok").expect("feed");
        let r = d.pump(&mut src, &mut dst, &mut scratch, &mut pipes, budget(16384), false);
        assert_eq!((r.read, d.eof), (2, false));
    }

    /// Bytes read behind held ones keep their order, copied or spliced.
    #[test]
    fn bytes_read_while_the_destination_is_full_keep_their_order() {
        keep_order(false);
        keep_order(true);
    }

    fn keep_order(splice: bool) {
        let (mut feed, mut src, mut dst, mut sink) = pairs();
        let (mut scratch, mut pipes) = (Vec::new(), PipePool::with_limit(4));
        let mut d = Direction { src_ready: true, ..Default::default() };
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut fed, mut got) = (0, Vec::new());
        let mut buf = vec![0u8; 3000];
        for turn in 0..10_000 {
            if fed < sent.len() {
                fed += feed.write(&sent[fed..]).unwrap_or(0);
            }
            d.src_ready = true;
            let b = Budget { splice, ..budget(5000) };
            d.pump(&mut src, &mut dst, &mut scratch, &mut pipes, b, turn % 2 == 0);
            // A slow reader: a little at a time.
            if let Ok(n) = sink.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            if got.len() == sent.len() {
                break;
            }
        }
        assert!(got == sent, "{} of {} bytes, in order: {}", got.len(), sent.len(), sent.starts_with(&got));
    }
}
