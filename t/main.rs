//! Integration tests: the real binary, real sockets, loopback only. One module per
//! feature; `common` is the harness.

mod common;

mod smoke;

mod balancing;
mod cli;
mod conf_errors;
mod logs;
mod process;
mod proxy;
mod recorded;
mod splice;
mod upstream;
