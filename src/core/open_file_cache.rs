//! nginx's open file cache (`ngx_open_file_cache.c`) as `open_log_file_cache` uses it:
//! descriptors of access log paths built from variables, kept open by name.
//!
//! What a user sees of it, and so what is kept here:
//! - a cached descriptor is used without looking at the name for `valid` seconds, so
//!   lines follow a renamed file (and USR1 does not touch the cache);
//! - after `valid`, the name is checked with stat(): the same file keeps its descriptor,
//!   another file is opened, and a name that is gone fails that line with nginx's crit
//!   `stat() "NAME" failed` and drops the entry;
//! - a file used fewer than `min_uses` times is closed after each use;
//! - at most `max` entries: a new one pushes out the least recently used, and each use
//!   closes up to two entries unused for more than `inactive` seconds.
//!
//! Times are whole seconds, as nginx's `ngx_time()`.

use crate::core::logfile::WriteError;
use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// `open_log_file_cache max=N [inactive=T] [min_uses=N] [valid=T]`.
pub struct OpenFileCache {
    max: usize,
    inactive: i64,
    min_uses: u32,
    valid: i64,
    files: RefCell<Vec<Cached>>,
}

struct Cached {
    name: String,
    /// `None`: not used often enough to be kept open.
    fd: Option<File>,
    uniq: (u64, u64),
    created: i64,
    accessed: i64,
    uses: u32,
}

/// Why a write did not happen: the call that failed (nginx's `of.failed`) and its error.
pub type Failed = (&'static str, io::Error);

fn open_log(name: &str) -> Result<(File, (u64, u64)), Failed> {
    let path = crate::core::conf::parser::os_path(name);
    let f = std::fs::OpenOptions::new().append(true).create(true).mode(0o644).open(path).map_err(|e| ("open()", e))?;
    let m = f.metadata().map_err(|e| ("fstat()", e))?;
    Ok((f, (m.dev(), m.ino())))
}

impl OpenFileCache {
    pub fn new(max: usize, inactive: i64, min_uses: u32, valid: i64) -> OpenFileCache {
        OpenFileCache { max, inactive, min_uses, valid, files: RefCell::new(Vec::new()) }
    }

    /// Append `line` to the file `name` at wall-clock second `now` (`ngx_open_cached_file`
    /// and the write; the session's end calls `release` for it).
    /// The outer error is the open or stat that failed (no write was made), the inner
    /// the write's own.
    pub fn write(&self, name: &str, line: &[u8], now: i64) -> Result<Result<(), WriteError>, Failed> {
        let mut files = self.files.borrow_mut();
        let r = match files.iter().position(|f| f.name == name) {
            Some(i) => Self::lookup(&mut files, i, self.valid, now),
            None => {
                let (fd, uniq) = open_log(name)?;
                if files.len() >= self.max {
                    expire(&mut files, true, self.inactive, now);
                }
                files.push(Cached { name: name.to_string(), fd: Some(fd), uniq, created: now, accessed: now, uses: 1 });
                Ok(files.len() - 1)
            }
        };
        // Found or made, the file is the most recently used (the end of the list,
        // nginx's head of its expire queue).
        let f = files.remove(r?);
        files.push(f);
        let written = match files.last_mut().and_then(|f| f.fd.as_mut()) {
            Some(fd) => crate::core::logfile::write_once(fd, line),
            None => Ok(()),
        };
        Ok(written)
    }

    /// The session that wrote to `name` ends (`ngx_open_file_cleanup`, one per use, the
    /// last use first): the file becomes the most recently used again, a file used too
    /// little is closed, and up to two idle ones go.
    pub fn release(&self, name: &str, now: i64) {
        let mut files = self.files.borrow_mut();
        if let Some(i) = files.iter().position(|f| f.name == name) {
            let mut f = files.remove(i);
            f.accessed = now;
            if f.uses < self.min_uses {
                f.fd = None;
            }
            files.push(f);
        }
        expire(&mut files, false, self.inactive, now);
    }

    /// A name already in the cache: its descriptor, checked against the name once
    /// `valid` has passed.
    fn lookup(files: &mut Vec<Cached>, i: usize, valid: i64, now: i64) -> Result<usize, Failed> {
        let f = &mut files[i];
        f.uses += 1;
        f.accessed = now;
        if f.fd.is_some() && now - f.created < valid {
            return Ok(i);
        }
        let fresh = match &f.fd {
            // Not kept open: open again.
            None => open_log(&f.name).map(Some),
            Some(_) => match std::fs::metadata(&f.name) {
                Ok(m) if (m.dev(), m.ino()) == f.uniq => Ok(None),
                Ok(_) => open_log(&f.name).map(Some),
                Err(e) => Err(("stat()", e)),
            },
        };
        match fresh {
            Ok(Some((fd, uniq))) => {
                f.fd = Some(fd);
                f.uniq = uniq;
            }
            Ok(None) => {}
            Err(e) => {
                files.remove(i);
                return Err(e);
            }
        }
        files[i].created = now;
        Ok(i)
    }
}

/// `ngx_expire_old_cached_files`: with `force` the least recently used entry goes
/// whatever its age; then up to two entries idle for more than `inactive` seconds.
/// `files` is in order of use, the least recent first (nginx's queue order, which
/// tells apart entries used within one second).
fn expire(files: &mut Vec<Cached>, force: bool, inactive: i64, now: i64) {
    for n in 0..3 {
        if n == 0 && !force {
            continue;
        }
        let Some(f) = files.first() else { return };
        if n != 0 && now - f.accessed <= inactive {
            return;
        }
        files.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session writing one line: the write, then its cleanup.
    fn log(c: &OpenFileCache, name: &str, line: &[u8], now: i64) -> Result<Result<(), WriteError>, Failed> {
        let r = c.write(name, line, now);
        c.release(name, now);
        r
    }

    /// A scratch directory, removed when the test ends, whether it passes or not.
    struct Dir(std::path::PathBuf);

    impl std::ops::Deref for Dir {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("sluice-ofc-{}-{}", tag, std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A full cache pushes out the least recently used entry, told apart within one
    /// second by the order of use (a, b, a: b goes, and a keeps its descriptor).
    #[test]
    fn the_least_recently_used_goes_within_one_second() {
        let d = dir("lru");
        let name = |n: &str| d.join(n).display().to_string();
        let c = OpenFileCache::new(2, 10, 1, 60);
        for n in ["a.log", "b.log", "a.log", "c.log"] {
            log(&c, &name(n), b"x\n", 100).unwrap().unwrap();
        }
        let names: Vec<String> = c.files.borrow().iter().map(|f| f.name.clone()).collect();
        assert_eq!(names, [name("a.log"), name("c.log")]);
    }

    /// A session writing two files releases them last first, as nginx runs its pool
    /// cleanups: after a session with a then b, a is the more recently used, and a full
    /// cache pushes b out (side by side with nginx 1.22.1, hunt s21/rvlog F01b).
    #[test]
    fn a_sessions_files_are_released_last_first() {
        let d = dir("release");
        let name = |n: &str| d.join(n).display().to_string();
        let c = OpenFileCache::new(2, 10, 1, 60);
        let (a, b) = (name("a.log"), name("b.log"));
        c.write(&a, b"x\n", 100).unwrap().unwrap();
        c.write(&b, b"x\n", 100).unwrap().unwrap();
        c.release(&b, 100);
        c.release(&a, 100);
        log(&c, &name("c.log"), b"x\n", 100).unwrap().unwrap();
        let names: Vec<String> = c.files.borrow().iter().map(|f| f.name.clone()).collect();
        assert_eq!(names, [a, name("c.log")]);
    }

    #[test]
    fn a_renamed_file_keeps_its_lines_until_valid_passes() {
        let d = dir("rename");
        let a = d.join("a.log").display().to_string();
        let c = OpenFileCache::new(10, 10, 1, 60);
        log(&c, &a, b"1\n", 100).unwrap().unwrap();
        std::fs::rename(&a, format!("{a}.1")).unwrap();
        log(&c, &a, b"2\n", 159).unwrap().unwrap();
        assert_eq!(std::fs::read(format!("{a}.1")).unwrap(), b"1\n2\n");
        assert!(!std::path::Path::new(&a).exists());
        // valid has passed: the name is gone, so stat() fails and the line is lost.
        let e = log(&c, &a, b"3\n", 160).unwrap_err();
        assert_eq!((e.0, e.1.raw_os_error()), ("stat()", Some(libc::ENOENT)));
        log(&c, &a, b"4\n", 160).unwrap().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"4\n");
    }

    #[test]
    fn max_and_min_uses() {
        let d = dir("max");
        let name = |n: u32| d.join(format!("{n}.log")).display().to_string();
        let c = OpenFileCache::new(2, 10, 2, 60);
        for n in 0..3 {
            log(&c, &name(n), b"x\n", 100).unwrap().unwrap();
        }
        // max 2: the least recently used went; used once of min_uses 2: not kept open.
        let files = c.files.borrow();
        assert_eq!(files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(), [name(1), name(2)]);
        assert!(files.iter().all(|f| f.fd.is_none()));
        drop(files);
        log(&c, &name(2), b"y\n", 101).unwrap().unwrap();
        assert!(c.files.borrow().iter().any(|f| f.name == name(2) && f.fd.is_some()));
    }
}
