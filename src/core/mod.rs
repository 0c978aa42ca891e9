//! Infrastructure that names no feature module: configuration text, addresses, sockets,
//! timers, the clock, logs, processes.

pub mod addr;
pub mod cidr;
pub mod conf;
pub mod conn;
pub mod dns;
pub mod glob;
pub mod log;
pub mod logfile;
pub mod main_conf;
pub mod mmsg;
pub mod open_file_cache;
pub mod process;
pub mod proctitle;
pub mod regex;
pub mod shm;
pub mod slab;
pub mod splice;
pub mod ssl;
pub mod ssl_cache;
pub mod stats;
pub mod time;
pub mod timer;
