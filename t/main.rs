//! Integration tests: the real binary, real sockets, loopback only. One module per
//! feature; `common` is the harness.

mod common;

mod smoke;

mod access;
mod balancing;
mod cli;
mod conf_errors;
mod geo;
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
mod ssl_preread;
mod udp;
mod upstream;
