//! Integration tests: the real binary, real sockets, loopback only. One module per
//! feature; `common` is the harness.

mod common;

/// Block SIGCHLD in the main thread before the harness starts, so every test thread
/// inherits the block. Why: a sluice child that exits sends the test process SIGCHLD;
/// ignored by default, it is still delivered to some thread that does not block it, and
/// if that thread sleeps in a read on a socket with SO_RCVTIMEO (as `common::connect`
/// sets) the kernel ends the read with EINTR instead of restarting it: a test then saw a
/// held connection as refused (seen in CI under load). Blocked, the signal just stays
/// pending; `Child::wait` does not need it, and std clears the mask in spawned children.
#[used]
#[link_section = ".init_array"]
static BLOCK_SIGCHLD: extern "C" fn() = {
    extern "C" fn block_sigchld() {
        // SAFETY: plain sigset manipulation on a local set, before any other thread runs.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
    }
    block_sigchld
};

mod smoke;

mod access;
mod api;
mod balancing;
mod cli;
mod conf_errors;
mod geo;
mod health_check;
mod limit_conn;
mod logs;
mod map;
mod pass;
mod process;
mod proxy;
mod proxy_protocol;
mod realip;
mod recorded;
mod resolver;
mod server_name;
mod set;
mod splice;
mod split_clients;
mod ssl;
mod ssl_preread;
mod udp;
mod upstream;
