//! `ngx_setproctitle`: the title `ps` shows for a process ("sluice: master process
//! ARGS", "sluice: worker process", "... is shutting down"), written over the memory the
//! kernel shows as the command line: the argument strings and, contiguous with them,
//! the environment's, which are first copied elsewhere (`ngx_init_setproctitle`).

use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The title's prefix (nginx writes "nginx: "; sluice names itself, as on stderr).
const PREFIX: &[u8] = b"sluice: ";

static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());
static ARGC: AtomicUsize = AtomicUsize::new(0);
/// The writable area: from argv[0] to the end of the last contiguous string.
static START: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());
static LEN: AtomicUsize = AtomicUsize::new(0);

/// Keep main's arguments: glibc passes them to the functions of `.init_array`, the only
/// way to the original argv memory (the binary registers this one there).
pub extern "C" fn capture(argc: c_int, argv: *mut *mut c_char, _envp: *mut *mut c_char) {
    ARGV.store(argv, Ordering::Relaxed);
    ARGC.store(usize::try_from(argc).unwrap_or(0), Ordering::Relaxed);
}

extern "C" {
    static mut environ: *mut *mut c_char;
}

/// `ngx_init_setproctitle`: move the environment strings that follow the arguments
/// to memory of their own, so that the whole area can take a title. Call once, before
/// any thread starts (it changes `environ`'s pointers) and after the arguments were read.
pub fn init() {
    let argv = ARGV.load(Ordering::Relaxed);
    let argc = ARGC.load(Ordering::Relaxed);
    if argv.is_null() || argc == 0 {
        return;
    }
    // SAFETY: argv holds argc valid C strings (from the kernel, via glibc) and environ a
    // null-terminated list of them; the copies are leaked on purpose (they live as long
    // as the process, as nginx's do).
    unsafe {
        let start = *argv;
        if start.is_null() {
            return;
        }
        let mut last = start;
        for i in 0..argc {
            let a = *argv.add(i);
            if a == last {
                last = a.add(CStr::from_ptr(a).to_bytes().len() + 1);
            }
        }
        let env = environ;
        if !env.is_null() {
            let mut i = 0;
            while !(*env.add(i)).is_null() {
                let e = *env.add(i);
                if e == last {
                    let bytes = CStr::from_ptr(e).to_bytes_with_nul();
                    last = e.add(bytes.len());
                    let copy: &'static mut [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
                    *env.add(i) = copy.as_mut_ptr().cast();
                }
                i += 1;
            }
        }
        START.store(start, Ordering::Relaxed);
        LEN.store(last.offset_from(start).max(1) as usize - 1, Ordering::Relaxed);
    }
}

/// `ngx_setproctitle`: "sluice: TITLE", cut to the area, the rest of it zeroed.
pub fn set(title: &str) {
    let start = START.load(Ordering::Relaxed);
    let len = LEN.load(Ordering::Relaxed);
    if start.is_null() || len == 0 {
        return;
    }
    let text: Vec<u8> = PREFIX.iter().chain(title.as_bytes()).copied().take(len).collect();
    // SAFETY: [start, start + len] is the area `init` measured (argument and moved
    // environment strings), which this process owns and nothing reads any longer.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), start.cast::<u8>(), text.len());
        std::ptr::write_bytes(start.cast::<u8>().add(text.len()), 0, len + 1 - text.len());
    }
}
