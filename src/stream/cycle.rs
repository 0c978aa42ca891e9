//! `Cycle`: one loaded configuration, immutable once built (nginx's `ngx_cycle_t`). A
//! reload builds a new one; sessions keep the `Rc<Cycle>` they started with.

use std::rc::Rc;

use crate::core::addr::Addr;
use crate::core::conf::ConfFile;
use crate::core::conn::ListenOpts;
use crate::core::log::ErrorLog;
use crate::core::logfile::FileSpec;
use crate::core::main_conf::MainConf;
use crate::stream::core_module::CoreSrv;
use crate::stream::phase::PhaseEngine;
use crate::stream::server_names::VirtualNames;
use crate::stream::session::SessionCore;
use crate::stream::variables::Variables;
use crate::stream::{MainConfs, SrvConfs};
use crate::upstream::UpstreamConf;

/// Starts a session's content phase (set by `proxy_pass`, `return`, ...).
pub type ContentHandler = fn(&mut SessionCore) -> crate::stream::content::ContentSession;

/// One `server {}` with its merged configuration.
pub struct Server {
    pub confs: SrvConfs,
    pub error_log: Rc<ErrorLog>,
    pub handler: ContentHandler,
}

impl Server {
    pub fn core(&self) -> &CoreSrv {
        &self.confs.core
    }
}

/// A listening socket to open, and the servers it serves.
#[derive(Debug, Clone)]
pub struct Listening {
    pub addr: Addr,
    pub opts: ListenOpts,
    /// `addr` as nginx prints it in "server: ..." of log lines.
    pub text: Rc<str>,
    /// The addresses the socket serves: its own first, then on a wildcard socket the
    /// specific addresses of its port that did not ask for a socket of their own.
    pub addr_confs: Vec<AddrConf>,
}

/// One address a socket serves (nginx's `ngx_stream_addr_conf_t`).
#[derive(Debug, Clone)]
pub struct AddrConf {
    pub addr: Addr,
    /// The default server for connections to the address.
    pub server: usize,
    /// The servers sharing the address, by name (`server_name`).
    pub names: Option<Rc<VirtualNames>>,
    /// A PROXY protocol header comes first on connections to the address.
    pub proxy_protocol: bool,
    /// Connections to the address are TLS (`listen ... ssl`).
    pub ssl: bool,
    /// The address as "client ... connected to" names it.
    pub text: Rc<str>,
}

pub struct Cycle {
    pub core: MainConf,
    pub stream: MainConfs,
    pub servers: Vec<Rc<Server>>,
    pub listening: Vec<Listening>,
    pub phases: PhaseEngine,
    pub vars: Variables,
    pub upstreams: Vec<UpstreamConf>,
    pub files: Vec<ConfFile>,
    /// Files written by access logs.
    pub open_files: Vec<FileSpec>,
    /// Their descriptors, opened with the cycle as nginx's ngx_init_cycle opens them:
    /// before the standard error is redirected to the error log, so `/dev/stderr` is the
    /// one sluice started with. Each worker takes them (`take_opened`); the master lets
    /// its copies go once its workers are forked, and a respawned worker opens by name.
    pub opened: std::cell::RefCell<Vec<(String, std::fs::File)>>,
    /// Error and access log files in the order the configuration names them (USR1
    /// reopens them so).
    pub file_order: Vec<String>,
    pub error_log: Rc<ErrorLog>,
    /// Every distinct error log of the configuration (main and servers), for USR1.
    pub error_logs: Vec<Rc<ErrorLog>>,
    /// Shared memory zones (made before workers are forked).
    pub zones: Vec<crate::stream::conf::Zone>,
    /// `accept_mutex on` with several workers: its lock word (nginx's `ngx_accept_mutex`,
    /// made before the workers are forked).
    pub accept_mutex: Option<Rc<crate::core::shm::Shm>>,
    pub hostname: String,
    /// The most a PROXY protocol header may take (`proxy_protocol::max_header`).
    pub proxy_protocol_max_header: usize,
    pub conf_file: String,
    pub prefix: String,
}

impl Cycle {
    /// The descriptor opened with the cycle for the file `path`, if it is still here.
    pub fn take_opened(&self, path: &str) -> Option<std::fs::File> {
        let mut opened = self.opened.borrow_mut();
        let i = opened.iter().position(|(p, _)| p == path)?;
        Some(opened.swap_remove(i).1)
    }

    /// Close the descriptors opened with the cycle that no one took.
    pub fn release_opened(&self) {
        self.opened.borrow_mut().clear();
    }
}

impl Listening {
    /// The server whose error log takes the socket's own lines (accepting, reading
    /// datagrams): nginx's `ls->logp`, taken from the first address of the socket's
    /// sorted list, which for a wildcard socket serving others is the first of those.
    pub fn log_server(&self) -> Option<usize> {
        self.addr_confs.get(1).or_else(|| self.addr_confs.first()).map(|a| a.server)
    }

    /// The address configuration for a connection accepted on this socket with local
    /// address `local` (nginx looks it up by the local address on a wildcard socket).
    pub fn addr_conf(&self, local: &Addr) -> Option<&AddrConf> {
        self.addr_confs.iter().skip(1).find(|a| a.addr == *local).or_else(|| self.addr_confs.first())
    }
}
