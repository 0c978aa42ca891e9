//! Files the configuration writes lines to (nginx's `cycle->open_files` with
//! `ngx_stream_log_buf_t`): opened once, appended with one write(2) per line or per
//! buffer flush, optionally gzip-compressed per flush, reopened on USR1.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

thread_local! {
    /// The files of the configuration being read, in the order its `error_log` and
    /// `access_log` directives name them.
    static FILE_ORDER: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Note a file a directive names. nginx keeps error and access log files in one list
/// (`cycle->open_files`, through `ngx_conf_open_file`), and USR1 reopens them in its
/// order, which is the order of their emerg lines when reopening fails.
pub fn note_file(path: &str) {
    FILE_ORDER.with(|o| {
        let mut o = o.borrow_mut();
        if !o.iter().any(|p| p == path) {
            o.push(path.to_string());
        }
    });
}

/// The files noted so far, in order.
pub fn file_order() -> Vec<String> {
    FILE_ORDER.with(|o| o.borrow().clone())
}

/// The files noted since the last call (a configuration starts with an empty list).
pub fn take_file_order() -> Vec<String> {
    FILE_ORDER.with(|o| std::mem::take(&mut *o.borrow_mut()))
}

/// A file as the configuration asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub path: String,
    pub buffer: usize,
    pub gzip: Option<u32>,
    pub flush: Option<Duration>,
}

/// How the write(2) of a line or buffer fell short: `ngx_stream_log_write`'s two reports.
#[derive(Debug)]
pub enum WriteError {
    /// "failed", with the errno when there is one (a short write of a gzip member has
    /// none: nginx's ngx_stream_log_gzip returns -1 with errno 0).
    Failed(Option<io::Error>),
    /// "was incomplete: N of LEN": the one write(2) wrote less, and nothing retries.
    Incomplete(usize, usize),
}

impl WriteError {
    /// The alert's text and errno for a write to `path`.
    pub fn alert(&self, path: &str) -> (String, Option<&io::Error>) {
        match self {
            WriteError::Failed(e) => (format!("write() to \"{}\" failed", path), e.as_ref()),
            WriteError::Incomplete(n, len) => {
                (format!("write() to \"{}\" was incomplete: {} of {}", path, n, len), None)
            }
        }
    }

    /// ENOSPC: nginx skips the log for the rest of the second.
    pub fn disk_full(&self) -> bool {
        matches!(self, WriteError::Failed(Some(e)) if e.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// One write(2), as nginx's ngx_write_fd: a short one is reported, never continued.
pub fn write_once(f: &mut impl Write, data: &[u8]) -> Result<(), WriteError> {
    match f.write(data) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(n) => Err(WriteError::Incomplete(n, data.len())),
        Err(e) => Err(WriteError::Failed(Some(e))),
    }
}

pub struct LogFile {
    pub path: String,
    file: Option<File>,
    buf: Vec<u8>,
    /// `buffer=`: lines are kept until this much is pending (0: write each line).
    buf_size: usize,
    /// `gzip=`: compression level for each flushed buffer.
    gzip: Option<u32>,
    /// `flush=`: pending lines are written at most this long after the first.
    flush: Option<Duration>,
    flush_at: Option<Instant>,
}

/// Open `path` to append to it, created 0644 (nginx's NGX_FILE_DEFAULT_ACCESS).
pub fn open_append(path: &str) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o644).open(crate::core::conf::parser::os_path(path))
}

/// The file `path` names; "" is descriptor 2 (written as such, see `write_out`).
fn open(path: &str) -> io::Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    open_append(path).map(Some)
}

impl LogFile {
    pub fn open(path: &str) -> io::Result<LogFile> {
        Ok(LogFile::with_file(path, open(path)?))
    }

    /// A file already open (`None`: descriptor 2, for the name "").
    pub fn with_file(path: &str, file: Option<File>) -> LogFile {
        LogFile { path: path.to_string(), file, buf: Vec::new(), buf_size: 0, gzip: None, flush: None, flush_at: None }
    }

    /// Apply a writer's buffering; several `access_log` lines naming one file share the
    /// largest buffer, as nginx requires them to agree.
    pub fn configure(&mut self, buf_size: usize, gzip: Option<u32>, flush: Option<Duration>) {
        self.buf_size = self.buf_size.max(buf_size);
        if gzip.is_some() {
            self.gzip = gzip;
        }
        if flush.is_some() {
            self.flush = flush;
        }
    }

    /// Append one line (`ngx_stream_log_handler` with its buffer): a line that does not
    /// fit in what is left of the buffer first writes out what is pending — even nothing,
    /// which with gzip is an empty member, as nginx writes one — and a line larger than
    /// the whole buffer is written on its own. The error is the first write's that failed
    /// here; the line is kept or written whatever a flush before it did.
    pub fn write_line(&mut self, line: &[u8], now: Instant) -> Result<(), WriteError> {
        if self.buf_size == 0 {
            return self.write_out(line);
        }
        let mut result = Ok(());
        if self.buf.len() + line.len() > self.buf_size {
            result = self.write_pending();
        }
        if self.buf.len() + line.len() <= self.buf_size {
            if self.buf.is_empty() {
                // nginx (re)starts the flush timer with the first line of a buffer, with
                // ngx_add_timer: a pending deadline within NGX_TIMER_LAZY_DELAY of the
                // new one stays (the buffer a full one's write started is then written
                // at the first one's deadline).
                if let Some(d) = self.flush {
                    let at = now + d;
                    let near = |t: Instant| t.max(at) - t.min(at) < crate::core::timer::LAZY;
                    if !self.flush_at.is_some_and(near) {
                        self.flush_at = Some(at);
                    }
                }
            }
            self.buf.extend_from_slice(line);
            return result;
        }
        self.flush_at = None;
        result.and(self.write_out(line))
    }

    /// Write out the buffer as it is, and empty it.
    fn write_pending(&mut self) -> Result<(), WriteError> {
        let data = std::mem::take(&mut self.buf);
        let r = self.write_out(&data);
        self.buf = data;
        self.buf.clear();
        r
    }

    pub fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    pub fn flush_due(&self, now: Instant) -> bool {
        self.flush_at.is_some_and(|t| t <= now)
    }

    /// The flush timer, exit or USR1 (`ngx_stream_log_flush`): pending lines are written.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.flush_at = None;
        if self.buf.is_empty() {
            return Ok(());
        }
        self.write_pending()
    }

    fn write_out(&mut self, data: &[u8]) -> Result<(), WriteError> {
        let data = match self.gzip {
            None => std::borrow::Cow::Borrowed(data),
            Some(level) => std::borrow::Cow::Owned(gzip(data, level).map_err(|e| WriteError::Failed(Some(e)))?),
        };
        let written = match self.file.as_mut() {
            Some(f) => write_once(f, &data),
            None if self.path.is_empty() => {
                // SAFETY: descriptor 2 is not owned here; it is only written to.
                let mut fd2 =
                    std::mem::ManuallyDrop::new(unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(2) });
                write_once(&mut *fd2, &data)
            }
            None => Ok(()),
        };
        match written {
            Err(WriteError::Incomplete(..)) if self.gzip.is_some() => Err(WriteError::Failed(None)),
            r => r,
        }
    }

    /// USR1: reopen by name (the old file may have been renamed); the caller has
    /// written out the buffer.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open(&self.path)?;
        Ok(())
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// nginx's `ngx_stream_log_gzip`: each flushed buffer is one gzip member made by zlib's
/// deflate in one `Z_FINISH` call, with the window and memory levels nginx shrinks for
/// small buffers, so the file's bytes are the ones nginx writes.
fn gzip(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    use libz_sys as z;
    // zlib's MAX_WBITS and MAX_MEM_LEVEL - 1.
    let (mut wbits, mut memlevel) = (15, 8);
    while (data.len() as i64) < (1i64 << (wbits - 1)) - 262 {
        wbits -= 1;
        memlevel -= 1;
    }
    // deflateBound()'s conservative bound, plus the gzip wrapper's 18 bytes.
    let len = data.len();
    let size = len + ((len + 7) >> 3) + ((len + 63) >> 6) + 5 + 18;
    let mut out = vec![0u8; size];
    let failed = |call: &str, rc: i32| io::Error::other(format!("{}() failed: {}", call, rc));
    extern "C" fn alloc(_: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
        // SAFETY: calloc with the sizes zlib asks for; zlib checks for NULL.
        unsafe { libc::calloc(items as usize, size as usize) }
    }
    extern "C" fn free(_: z::voidpf, p: z::voidpf) {
        // SAFETY: `p` came from `alloc` above.
        unsafe { libc::free(p) }
    }
    // SAFETY: a z_stream zeroed and then given its allocator, as zlib requires; its
    // input and output point into `data` and `out`, which outlive the calls; every
    // successful deflateInit2 is ended.
    unsafe {
        let mut zs = z::z_stream {
            next_in: data.as_ptr() as *mut u8,
            avail_in: len as z::uInt,
            total_in: 0,
            next_out: out.as_mut_ptr(),
            avail_out: size as z::uInt,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc: alloc,
            zfree: free,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        };
        let rc = z::deflateInit2_(
            &mut zs,
            level as i32,
            z::Z_DEFLATED,
            wbits + 16,
            memlevel,
            z::Z_DEFAULT_STRATEGY,
            z::zlibVersion(),
            std::mem::size_of::<z::z_stream>() as i32,
        );
        if rc != z::Z_OK {
            return Err(failed("deflateInit2", rc));
        }
        let rc = z::deflate(&mut zs, z::Z_FINISH);
        let written = size - zs.avail_out as usize;
        z::deflateEnd(&mut zs);
        if rc != z::Z_STREAM_END {
            return Err(failed("deflate(Z_FINISH)", rc));
        }
        out.truncate(written);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_buffer_keeps_a_flush_deadline_less_than_300ms_away() {
        let path = std::env::temp_dir().join(format!("sluice-logfile-{}.log", std::process::id()));
        let path = path.display().to_string();
        let mut f = LogFile::open(&path).expect("open");
        f.configure(16, None, Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        f.write_line(b"0123456789\n", t0).expect("write");
        assert_eq!(f.flush_at(), Some(t0 + ms(1000)));
        // Does not fit: the first line is written, this one starts the next buffer.
        f.write_line(b"abcdefghij\n", t0 + ms(250)).expect("write");
        assert_eq!(f.flush_at(), Some(t0 + ms(1000)), "the deadline 250 ms away stays");
        f.write_line(b"klmnopqrst\n", t0 + ms(600)).expect("write");
        assert_eq!(f.flush_at(), Some(t0 + ms(1600)), "one 600 ms away moves");
        f.flush().expect("flush");
        assert_eq!(f.flush_at(), None);
        assert_eq!(std::fs::read(&path).expect("read"), b"0123456789\nabcdefghij\nklmnopqrst\n");
        let _ = std::fs::remove_file(&path);
    }

    /// A writer that takes at most `room` more bytes.
    struct Short {
        room: usize,
    }

    impl Write for Short {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(self.room);
            self.room -= n;
            if n == 0 && !b.is_empty() {
                return Err(io::Error::from_raw_os_error(libc::EFBIG));
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_write_and_a_short_one_is_incomplete() {
        let mut w = Short { room: 16 };
        let e = write_once(&mut w, &[b'x'; 51]).expect_err("short");
        assert!(matches!(e, WriteError::Incomplete(16, 51)), "{e:?}");
        let (msg, err) = e.alert("a.log");
        assert_eq!(msg, "write() to \"a.log\" was incomplete: 16 of 51");
        assert!(err.is_none());
        let e = write_once(&mut w, b"y").expect_err("full");
        assert!(!e.disk_full() && matches!(&e, WriteError::Failed(Some(_))), "{e:?}");
        assert!(write_once(&mut w, b"").is_ok());
    }
}
