//! Shared memory zones (`ngx_shm_alloc` + `ngx_shmtx`): an anonymous shared mapping made
//! by the process that reads the configuration (the master) before it forks workers, so
//! every worker sees the same bytes; and a spinlock living inside it.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

pub struct Shm {
    ptr: *mut u8,
    len: usize,
}

impl Shm {
    /// A zeroed shared mapping of `len` bytes.
    pub fn new(len: usize) -> io::Result<Shm> {
        // SAFETY: an anonymous shared mapping; the kernel zero-fills it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Shm { ptr: p.cast(), len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lock word at `offset` (4-byte aligned, inside the mapping).
    pub fn lock_at(&self, offset: usize) -> Option<&AtomicU32> {
        if !offset.is_multiple_of(4) || offset + 4 > self.len {
            return None;
        }
        // SAFETY: in bounds and aligned; AtomicU32 has u32's layout; the mapping lives
        // as long as `self`.
        Some(unsafe { &*(self.ptr.add(offset) as *const AtomicU32) })
    }

    /// The bytes `offset..offset + len`, if inside the mapping.
    ///
    /// Callers hold the zone's lock while they use them: other processes write the
    /// same bytes.
    #[allow(clippy::mut_from_ref)]
    pub fn bytes(&self, offset: usize, len: usize) -> Option<&mut [u8]> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: in bounds; exclusive use is guaranteed by the zone lock the caller
        // holds (and a worker is single-threaded).
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) })
    }
}

/// nginx's `ngx_connection_counter`: one sequence of connection numbers for every
/// worker, which goes on across reloads. The first call maps it; the master makes that
/// call before it forks, so its workers share the mapping.
pub fn connection_counter() -> &'static AtomicU64 {
    static COUNTER: OnceLock<usize> = OnceLock::new();
    let addr = *COUNTER.get_or_init(|| match Shm::new(8) {
        Ok(shm) => {
            let addr = shm.ptr as usize;
            // Mapped for the life of the process (and of its forked children).
            std::mem::forget(shm);
            addr
        }
        // Without shared memory each process counts on its own.
        Err(_) => Box::leak(Box::new(AtomicU64::new(0))) as *const AtomicU64 as usize,
    });
    // SAFETY: `addr` is a page-aligned shared mapping of 8 bytes, or a leaked AtomicU64;
    // either lives as long as the process.
    unsafe { &*(addr as *const AtomicU64) }
}

/// The next connection number (`$connection`, the `*N` of log lines): 1, 2, ...
pub fn next_connection() -> u64 {
    connection_counter().fetch_add(1, Ordering::Relaxed) + 1
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len.max(1));
        }
    }
}

/// Hold a spinlock word in shared memory; released on drop. The critical sections are a
/// few hundred nanoseconds (a balancer pick), so spinning with `sched_yield` suffices.
pub struct SpinGuard<'a>(&'a AtomicU32);

impl<'a> SpinGuard<'a> {
    pub fn lock(word: &'a AtomicU32) -> SpinGuard<'a> {
        let mut spins = 0u32;
        while word.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spins += 1;
            if spins.is_multiple_of(64) {
                // SAFETY: sched_yield has no preconditions.
                unsafe {
                    libc::sched_yield();
                }
            } else {
                std::hint::spin_loop();
            }
        }
        SpinGuard(word)
    }
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// The monotonic clock in milliseconds: the same in every process, unlike `Instant`.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_across_fork() {
        let shm = Shm::new(4096).expect("shm");
        let b = shm.bytes(8, 4).expect("bytes");
        b.copy_from_slice(&[1, 2, 3, 4]);
        // SAFETY: fork in a test; the child only writes to the mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if let Some(b) = shm.bytes(8, 4) {
                b[0] = 9;
            }
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut st = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert_eq!(shm.bytes(8, 4).expect("bytes"), &[9, 2, 3, 4]);
        let lock = shm.lock_at(0).expect("lock");
        drop(SpinGuard::lock(lock));
        let _g = SpinGuard::lock(lock);
    }
}
