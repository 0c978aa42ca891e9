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
    /// The default server for connections to `addr` itself.
    pub server: usize,
    /// The servers sharing `addr`, by name (`server_name`).
    pub names: Option<Rc<VirtualNames>>,
    /// Specific addresses served through this wildcard socket (no `bind`), by local
    /// address, with their default server and names: nginx's `ngx_stream_addr_conf_t`.
    pub by_local: Vec<(Addr, usize, Option<Rc<VirtualNames>>)>,
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
    /// Files written by access logs (opened by each worker).
    pub open_files: Vec<FileSpec>,
    /// Error and access log files in the order the configuration names them (USR1
    /// reopens them so).
    pub file_order: Vec<String>,
    pub error_log: Rc<ErrorLog>,
    /// Every distinct error log of the configuration (main and servers), for USR1.
    pub error_logs: Vec<Rc<ErrorLog>>,
    /// Shared memory zones (made before workers are forked).
    pub zones: Vec<crate::stream::conf::Zone>,
    pub hostname: String,
    pub conf_file: String,
    pub prefix: String,
}

impl Listening {
    /// The default server and the virtual server names for a connection accepted on this
    /// socket with local address `local`.
    pub fn server_for(&self, local: Option<&Addr>) -> (usize, Option<Rc<VirtualNames>>) {
        if let Some(l) = local {
            if let Some((_, s, names)) = self.by_local.iter().find(|(a, _, _)| a == l) {
                return (*s, names.clone());
            }
        }
        (self.server, self.names.clone())
    }
}
