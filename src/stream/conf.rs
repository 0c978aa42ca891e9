//! The configuration builder (`ngx_init_cycle` + `ngx_conf_parse` + `ngx_stream_block`):
//! walks the directive tree in file order, applies each directive through the core and
//! stream module tables, reads `include`d files where they stand, and finishes with
//! merge, variables and the phase engine into a `Cycle`.

use std::collections::HashMap;
use std::rc::Rc;

use crate::core::addr::Addr;
use crate::core::conf::directive::{self, Arity, Ctx};
use crate::core::conf::{parser, Block, Cmd, ConfError, ConfFile, ConfResult, Level};
use crate::core::log::ErrorLog;
use crate::core::logfile::FileSpec;
use crate::core::main_conf::{self, MainConf, Paths};
use crate::stream::core_module::CoreSrv;
use crate::stream::cycle::{ContentHandler, Cycle, Listening, Server};
use crate::stream::module::{BlockKind, Lookup};
use crate::stream::phase::{PhaseEngine, PhaseRegistry};
use crate::stream::server_names::{ServerName, VirtualNames};
use crate::stream::variables::Variables;
use crate::stream::{self as modules, MainConfs, SrvConfs};
use crate::upstream::UpstreamConf;

/// Where the configuration comes from (the command line's `-p`, `-c`, `-e`, `-g`).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Ends with '/'.
    pub prefix: String,
    /// Absolute path of the main configuration file.
    pub conf_file: String,
    /// `-e`: the error log used until the configuration names one.
    pub error_log: Option<String>,
    /// `-g`: directives applied before the file.
    pub globals: String,
    /// `-t`/`-T`: check only (the pid file is opened, not written, as nginx does).
    pub test: bool,
    /// `-s`: only read and check the configuration, as nginx's signaller (its
    /// `ngx_init_cycle` stops before opening files, shared memory and sockets).
    pub signaller: bool,
}

/// What directive setters see while the configuration is read.
pub struct ConfCx {
    pub main: MainConfs,
    pub vars: Variables,
    pub upstreams: Vec<UpstreamConf>,
    /// The content handler of the server being read, set by `proxy_pass` / `return`.
    pub handler: Option<ContentHandler>,
    /// Every `listen` address so far, for nginx's duplicate checks.
    pub listen_addrs: HashMap<(Addr, bool), ListenAddr>,
    /// The stream block names servers (`server_name`): servers may share an address, as
    /// in nginx 1.25.5; without names, a shared address is an error, as before it.
    pub virtual_servers: bool,
    /// The sockets to open, made at the end of the stream block.
    listening: Vec<Listening>,
    pub core: MainConf,
    pub prefix: String,
    pub conf_prefix: String,
    pub files: Vec<ConfFile>,
    /// How deep in `include`s the reader is (a file that includes itself stops here).
    include_depth: usize,
    /// Stream-main directives given once so far that keep no value of their own.
    pub main_seen: Vec<String>,
    /// `variables_hash_max_size` and `variables_hash_bucket_size`, when given.
    pub variables_hash: (Option<u64>, Option<u64>),
    /// Files the configuration writes (access logs), opened when the cycle is built.
    pub open_files: Vec<FileSpec>,
    /// Shared memory zones declared: name, size (set by one declaration at least), and
    /// the module that owns it.
    pub zones: Vec<(String, Option<usize>, &'static str)>,
    servers: Vec<PendingServer>,
    ready: Vec<ReadyServer>,
    stream_seen: bool,
    /// The stream block's own `error_log` (opened even when every server has its own,
    /// as nginx opens every file it names).
    stream_error_log: Vec<(String, Level)>,
    events_seen: bool,
    /// Where nginx is while it merges (the `stream` block's closing brace): errors found
    /// at merge that nginx reports with a place name this one.
    pub merge_at: (Rc<str>, u32),
    /// The stream block's `resolver` and `resolver_timeout`, for the upstreams that
    /// resolve names at run time and have none of their own.
    pub stream_resolver: (Option<Rc<crate::stream::resolver::ResolverConf>>, Option<std::time::Duration>),
}

/// A `listen` address with what its servers said about it so far.
pub struct ListenAddr {
    pub addr: Addr,
    pub udp: bool,
    /// Socket options given.
    pub set: bool,
    pub default_server: bool,
}

struct PendingServer {
    confs: SrvConfs,
    handler: Option<ContentHandler>,
    file: Rc<str>,
    line: u32,
}

/// A server after merge, its content handler known.
struct ReadyServer {
    confs: SrvConfs,
    handler: ContentHandler,
}

impl Paths for ConfCx {
    fn full_name(&self, name: &str) -> String {
        full_name(&self.prefix, name)
    }
}

/// Paths under a prefix, for the core directive setters.
struct Prefix(String);

impl Paths for Prefix {
    fn full_name(&self, name: &str) -> String {
        full_name(&self.0, name)
    }
}

fn full_name(prefix: &str, name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{}{}", prefix, name)
    }
}

impl ConfCx {
    /// The file a log opened under `path` shares, if any. An empty name (descriptor 2)
    /// is never shared: each is a file of its own, with its own buffer
    /// (ngx_conf_open_file looks names up only when there is one).
    pub fn shared_file(&self, path: &str) -> Option<usize> {
        if path.is_empty() {
            return None;
        }
        self.open_files.iter().position(|f| f.path == path)
    }

    /// Register a file the cycle must open for writing; returns its index. Writers of
    /// one file share it, with the largest buffer any of them asks for.
    pub fn open_file(&mut self, spec: FileSpec) -> usize {
        crate::core::logfile::note_file(&spec.path);
        if let Some(i) = self.shared_file(&spec.path) {
            let f = &mut self.open_files[i];
            f.buffer = f.buffer.max(spec.buffer);
            f.gzip = f.gzip.or(spec.gzip);
            f.flush = f.flush.or(spec.flush);
            return i;
        }
        self.open_files.push(spec);
        self.open_files.len() - 1
    }

    /// Declare a shared memory zone (`ngx_shared_memory_add`): one name, one size, one
    /// owner (`tag`: "upstream", "limit_conn", ...).
    pub fn add_zone(&mut self, name: &str, size: Option<usize>, cmd: &Cmd, tag: &'static str) -> ConfResult {
        if let Some(z) = self.zones.iter_mut().find(|z| z.0 == name) {
            if z.2 != tag {
                return Err(
                    cmd.err(format!("the shared memory zone \"{}\" is already declared for a different use", name))
                );
            }
            match (z.1, size) {
                (Some(a), Some(b)) if a != b => {
                    return Err(cmd.err(format!(
                        "the size {} of shared memory zone \"{}\" conflicts with already declared size {}",
                        b, name, a
                    )))
                }
                (None, Some(b)) => z.1 = Some(b),
                _ => {}
            }
            return Ok(());
        }
        self.zones.push((name.to_string(), size, tag));
        Ok(())
    }

    /// A path under the prefix (log files, pid).
    pub fn full_name_of(&self, name: &str) -> String {
        full_name(&self.prefix, name)
    }

    /// A configuration warning (`ngx_conf_log_error(NGX_LOG_WARN, ...)`): logged, not fatal.
    pub fn warn(&self, cmd: &Cmd, msg: &str) {
        crate::core::log::error(Level::Warn, &cmd.err(msg).to_string(), None);
    }

    /// A path relative to the directory of the main configuration file (`include`).
    pub fn conf_full_name(&self, name: &str) -> String {
        full_name(&self.conf_prefix, name)
    }
}

/// nginx's main-context block directives, known here so that "not allowed here" and
/// argument checks apply to them like to any other.
const MAIN_BLOCKS: &[(&str, Arity)] = &[("events", Arity::Block(0, 0)), ("stream", Arity::Block(0, 0))];

enum Scope<'a> {
    Main,
    Events,
    Stream(&'a mut SrvConfs),
    Server(&'a mut SrvConfs),
    Upstream(&'a mut UpstreamConf),
}

impl Scope<'_> {
    fn ctx(&self) -> Ctx {
        match self {
            Scope::Main => Ctx::MAIN,
            Scope::Events => Ctx::EVENTS,
            Scope::Stream(_) => Ctx::STREAM_MAIN,
            Scope::Server(_) => Ctx::STREAM_SRV,
            Scope::Upstream(_) => Ctx::STREAM_UPS,
        }
    }
}

/// A configuration that failed: the error, and whether nginx would already have
/// printed "syntax is ok" (errors found after parsing, such as unopenable files).
#[derive(Debug)]
pub struct LoadError {
    pub error: ConfError,
    pub after_syntax: bool,
    /// A second line nginx logs after the first (a failed zone's munmap).
    pub then: Option<Box<ConfError>>,
    /// The core module's warning, logged before the error (see `MainConf::affinity_warning`).
    pub warning: Option<&'static str>,
}

impl LoadError {
    /// Log the failure (to the startup log, or the running one on reload).
    pub fn log(&self) {
        if let Some(w) = self.warning {
            crate::core::log::error(Level::Warn, w, None);
        }
        for e in std::iter::once(&self.error).chain(self.then.as_deref()) {
            crate::core::log::error(e.level, &e.to_string(), None);
        }
    }
}

impl From<ConfError> for LoadError {
    fn from(error: ConfError) -> Self {
        LoadError { error, after_syntax: false, then: None, warning: None }
    }
}

fn late(error: ConfError) -> LoadError {
    LoadError { error, after_syntax: true, then: None, warning: None }
}

/// ngx_shm_alloc's failure, then ngx_shm_free's on the MAP_FAILED pointer it kept
/// (both alerts, as nginx logs them).
fn mmap_failed(size: usize, e: &std::io::Error) -> LoadError {
    let alert = |msg: String| ConfError { level: Level::Alert, msg, at: None };
    LoadError {
        error: alert(format!("mmap(MAP_ANON|MAP_SHARED, {}) failed {}", size, crate::core::conf::os_err(e))),
        after_syntax: true,
        then: Some(Box::new(alert(format!("munmap(FFFFFFFFFFFFFFFF, {size}) failed (22: Invalid argument)")))),
        warning: None,
    }
}

/// Read and check a configuration; open its log files and resolve its addresses.
pub fn load(opts: &LoadOptions) -> Result<Cycle, LoadError> {
    load_with(opts, None)
}

/// A shared memory zone of a cycle.
pub struct Zone {
    pub name: String,
    pub size: usize,
    /// Its owner ("upstream", "limit_conn"): a zone is kept across a reload only for
    /// the same one, as nginx's `ngx_init_cycle` checks the tag.
    pub tag: &'static str,
    pub shm: Rc<crate::core::shm::Shm>,
    /// This configuration's own number: upstream peer state in a kept zone starts afresh
    /// with every reload, as nginx copies the peers into the zone anew.
    pub generation: u64,
}

/// `load`, keeping the shared memory zones of `old` whose name and size stay (a reload
/// keeps their state, as nginx's).
pub fn load_with(opts: &LoadOptions, old: Option<&Cycle>) -> Result<Cycle, LoadError> {
    // What a failed load noted is not this configuration's.
    crate::core::logfile::take_file_order();
    crate::core::regex::forget_studies();
    // ngx_process_options looks for the last '/' after the first byte: a file right in
    // "/" (`-c /x.conf`) keeps the prefix as its directory, as in nginx.
    let conf_prefix = match opts.conf_file.rfind('/').filter(|&i| i > 0) {
        Some(i) => opts.conf_file[..=i].to_string(),
        None => opts.prefix.clone(),
    };
    let mut vars = Variables::default();
    modules::variables(&mut vars);
    let mut cx = ConfCx {
        main: MainConfs::default(),
        vars,
        upstreams: Vec::new(),
        handler: None,
        listen_addrs: HashMap::new(),
        virtual_servers: false,
        listening: Vec::new(),
        core: MainConf::default(),
        prefix: opts.prefix.clone(),
        conf_prefix,
        files: Vec::new(),
        include_depth: 0,
        main_seen: Vec::new(),
        variables_hash: (None, None),
        open_files: Vec::new(),
        zones: Vec::new(),
        servers: Vec::new(),
        ready: Vec::new(),
        stream_seen: false,
        stream_error_log: Vec::new(),
        events_seen: false,
        merge_at: (Rc::from(""), 0),
        stream_resolver: (None, None),
    };
    if !opts.globals.is_empty() {
        let g = parser::parse_str(&opts.globals);
        block(&mut cx, &g, &mut Scope::Main)?;
    }
    let (file, root) = parser::parse_file(&opts.conf_file, None)?;
    cx.files.push(file);
    block(&mut cx, &root, &mut Scope::Main)?;
    // ngx_core_module_init_conf warns before any other module checks its settings: its
    // warning comes before whatever fails after the parse, too.
    let warning = cx.core.affinity_warning();
    after_parse(cx, opts, old).map_err(|e| LoadError { warning, ..e })
}

/// What nginx checks and sets up after the parse ("syntax is ok" has been printed by
/// then): the cycle, from the parsed configuration.
fn after_parse(mut cx: ConfCx, opts: &LoadOptions, old: Option<&Cycle>) -> Result<Cycle, LoadError> {
    if !cx.events_seen {
        return Err(late(ConfError::bare("no \"events\" section in configuration")));
    }
    let paths = Prefix(cx.prefix.clone());
    let pid_given = cx.core.pid.is_set() && !cx.core.pid.get().is_empty();
    cx.core.finish(&paths, "logs/sluice.pid");
    // ngx_event_init_conf: a connection for every listening socket and one more (a
    // reuseport socket counts once: nginx checks before making one per worker).
    let sockets = cx.listening.len();
    let conns = cx.core.worker_connections.get();
    if conns < sockets + 1 {
        return Err(late(ConfError::bare(format!(
            "{} worker_connections are not enough for {} listening sockets",
            conns, sockets
        ))));
    }
    if opts.test && pid_given && !opts.signaller {
        // nginx -t creates (or opens) the pid file, without truncating or writing it.
        // (Only a `pid` the configuration names: nginx's default is /run/nginx.pid,
        // which exists; sluice's default under the prefix often does not, yet.)
        let pid = cx.core.pid.get();
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(crate::core::conf::parser::os_path(&pid))
        {
            return Err(late(ConfError::bare(format!("open() \"{}\" failed {}", pid, crate::core::conf::os_err(&e)))));
        }
    }
    // A reload that names another pid file moves it here (ngx_init_cycle), before any
    // file or socket is opened: a reload that fails after this leaves it moved.
    if let (Some(old), false, false) = (old, opts.test, opts.signaller) {
        let (pid, old_pid) = (cx.core.pid.get(), old.core.pid.get());
        if pid != old_pid {
            if let Err(e) = crate::core::process::write_pid(&pid) {
                return Err(late(ConfError::bare(format!(
                    "open() \"{}\" failed {}",
                    pid,
                    crate::core::conf::os_err(&e)
                ))));
            }
            crate::core::process::remove_pid(&old_pid);
        }
    }
    // ngx_log_open_default: without an error log to a file (none at all, or only
    // syslog and memory ones) the default one is added, at `error`.
    let mut main_logs = cx.core.error_log.clone();
    if main_logs.iter().all(|(p, _)| p.starts_with("syslog:") || p.starts_with("memory:")) {
        let path = opts.error_log.clone().unwrap_or_else(|| "stderr".to_string());
        main_logs.push((path, Level::Error));
    }
    let mut logs: HashMap<Vec<(String, Level)>, Rc<ErrorLog>> = HashMap::new();
    let mut open_log = |specs: &Vec<(String, Level)>| -> Result<Rc<ErrorLog>, LoadError> {
        if let Some(l) = logs.get(specs) {
            return Ok(l.clone());
        }
        if opts.signaller {
            return Ok(Rc::new(ErrorLog::none()));
        }
        let l = Rc::new(ErrorLog::open(specs).map_err(|(path, e)| {
            late(ConfError::bare(format!("open() \"{}\" failed {}", path, crate::core::conf::os_err(&e))))
        })?);
        logs.insert(specs.clone(), l.clone());
        Ok(l)
    };
    // nginx opens error and access log files from one list, in the order the
    // configuration names them (ngx_init_cycle): the first that cannot be opened is
    // the one reported. (Every `open_file` is in that list.)
    // The access logs' descriptors are kept for the workers (see `Cycle::opened`).
    let mut opened = Vec::new();
    for p in crate::core::logfile::file_order().iter().filter(|p| !opts.signaller && !p.is_empty()) {
        match crate::core::logfile::open_append(p) {
            Ok(f) if !opts.test && cx.open_files.iter().any(|s| s.path == *p) => opened.push((p.clone(), f)),
            Ok(_) => {}
            Err(e) => {
                return Err(late(ConfError::bare(format!("open() \"{}\" failed {}", p, crate::core::conf::os_err(&e)))))
            }
        }
    }
    let error_log = open_log(&main_logs)?;
    if !cx.stream_error_log.is_empty() {
        open_log(&cx.stream_error_log.clone())?;
    }

    let mut servers = Vec::new();
    for p in std::mem::take(&mut cx.ready) {
        let specs = if p.confs.core.error_log.is_empty() { main_logs.clone() } else { p.confs.core.error_log.clone() };
        let log = open_log(&specs)?;
        servers.push(Rc::new(Server { confs: p.confs, error_log: log, handler: p.handler }));
    }
    let error_logs: Vec<Rc<ErrorLog>> = logs.values().cloned().collect();
    let mut zones = Vec::new();
    let generation = rand::random::<u64>();
    for (name, size, tag) in cx.zones.iter().filter(|_| !opts.signaller) {
        let Some(size) = *size else {
            return Err(late(ConfError::bare(format!("zero size shared memory zone \"{}\"", name))));
        };
        let kept = old.and_then(|c| c.zones.iter().find(|z| z.name == *name && z.size == size && z.tag == *tag));
        // ngx_stream_limit_conn_init_zone: a kept zone keeps its counts, so its key must
        // stay the same.
        if let (Some(_), Some(o)) = (kept, old) {
            let keys = (cx.main.limit_conn.zone_key(name), o.stream.limit_conn.zone_key(name));
            if let (Some(new), Some(was)) = keys {
                if new != was {
                    return Err(late(ConfError::bare(format!(
                        "limit_conn_zone \"{}\" uses the \"{}\" key while previously it used the \"{}\" key",
                        name, new, was
                    ))));
                }
            }
        }
        let shm = match kept {
            Some(z) => z.shm.clone(),
            None => Rc::new(crate::core::shm::Shm::new(size).map_err(|e| mmap_failed(size, &e))?),
        };
        if *tag == "stream_ssl" {
            crate::core::ssl_cache::register(name, &shm);
        }
        if *tag == "upstream" && !upstream_zone_fits(name, size, &cx.upstreams) {
            let msg = format!("ngx_slab_alloc() failed: no memory in upstream zone \"{}\"", name);
            return Err(late(ConfError { level: Level::Crit, msg, at: None }));
        }
        zones.push(Zone { name: name.clone(), size, tag, shm, generation });
    }
    // nginx's ngx_event_module_init: the accept mutex only with a master and workers.
    let core = &cx.core;
    let mutex = core.accept_mutex.get() && core.master_process.get() && core.worker_processes.get() > 1;
    let accept_mutex = if mutex && !opts.signaller {
        let shm = crate::core::shm::Shm::new(64).map_err(|e| mmap_failed(64, &e))?;
        Some(Rc::new(shm))
    } else {
        None
    };
    // ngx_regex_module_init: the patterns compiled to machine code now, in the process
    // that read them.
    crate::core::regex::study(cx.core.pcre_jit.get(), &error_log);
    let listening = std::mem::take(&mut cx.listening);
    let mut reg = PhaseRegistry::default();
    modules::postconfiguration(&mut reg);
    crate::core::stats::next_generation();
    let proxy_protocol_max_header = crate::stream::proxy_protocol::max_header(&cx.vars);
    Ok(Cycle {
        core: cx.core,
        stream: cx.main,
        servers,
        listening,
        phases: PhaseEngine::build(reg),
        vars: cx.vars,
        upstreams: cx.upstreams,
        files: cx.files,
        open_files: cx.open_files,
        opened: std::cell::RefCell::new(opened),
        file_order: crate::core::logfile::take_file_order(),
        error_log,
        error_logs,
        zones,
        accept_mutex,
        hostname: crate::core::log::hostname(),
        proxy_protocol_max_header,
        conf_file: opts.conf_file.clone(),
        prefix: opts.prefix.clone(),
    })
}

/// Whether the peers nginx copies into an upstream zone (`ngx_stream_upstream_init_zone`)
/// fit in its slab pool: its log text, then per upstream of the zone its peer lists
/// (`ngx_stream_upstream_rr_peers_t`, 80 bytes, and the upstream's name), and per peer
/// an `ngx_stream_upstream_rr_peer_t` (384 bytes with Debian's `--with-compat`), an
/// `ngx_sockaddr_t` (112), a name buffer (`NGX_SOCKADDR_STRLEN`, 113) and the server
/// line's name. A 32k zone holds 16 peers, a 64k one 63, as nginx's; one that does not
/// is refused as nginx refuses it (our own records are smaller and always fit then).
fn upstream_zone_fits(zone: &str, size: usize, upstreams: &[UpstreamConf]) -> bool {
    let mut sizes = vec![" in upstream zone \"\"".len() + 1 + zone.len()];
    for u in upstreams.iter().filter(|u| u.zone.as_deref() == Some(zone)) {
        sizes.extend([80, 16, u.name.len()]);
        for backup in [false, true] {
            let servers: Vec<_> = u.servers.iter().filter(|s| s.backup == backup).collect();
            if backup && servers.is_empty() {
                break;
            }
            if backup {
                sizes.push(80);
            }
            for s in servers {
                for _ in &s.addrs {
                    sizes.extend([384, 112, 113, s.name.len()]);
                }
            }
        }
    }
    crate::core::slab::fits(size, sizes)
}

/// The log files USR1 reopens, in nginx's order (`cycle->open_files`): as the
/// configuration names them, then the default error log nobody named.
pub fn reopen_order(cycle: &Cycle) -> Vec<String> {
    let mut order = cycle.file_order.clone();
    let all = cycle.error_logs.iter().flat_map(|l| l.paths()).chain(cycle.open_files.iter().map(|f| f.path.as_str()));
    for p in all {
        if !order.iter().any(|o| o == p) {
            order.push(p.to_string());
        }
    }
    order.retain(|p| !p.is_empty() && p != "stderr" && !p.starts_with("syslog:") && !p.starts_with("memory:"));
    order
}

/// `ngx_reopen_files`: every log file opened again by name, in `reopen_order`; a file
/// that cannot be opened is an emerg line (the old one stays in use) and the rest go on.
/// `access` reopens an access log file where this process writes one.
pub fn reopen_files(cycle: &Cycle, mut access: impl FnMut(&str) -> Option<std::io::Result<()>>) {
    for p in reopen_order(cycle) {
        let mut failed = None;
        for r in cycle.error_logs.iter().filter_map(|l| l.reopen_path(&p)).chain(access(&p)) {
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            let msg = format!("open() \"{}\" failed", p);
            crate::core::log::error(crate::core::conf::Level::Emerg, &msg, Some(&e));
        }
    }
    redirect_stderr(cycle);
}

/// `ngx_log_redirect_stderr` for a cycle: not when any error log is the standard error
/// stream (nginx's `cycle->log_use_stderr`).
pub fn redirect_stderr(cycle: &Cycle) {
    if !cycle.error_logs.iter().any(|l| l.writes_stderr()) {
        cycle.error_log.redirect_stderr();
    }
}

/// One address with the servers listening on it (nginx's `ngx_stream_conf_addr_t`).
struct ConfAddr<'a> {
    /// The `listen` that gave socket options (else the first).
    l: &'a crate::stream::core_module::ListenConf,
    servers: Vec<usize>,
    default: usize,
    proxy_protocol: bool,
    ssl: bool,
}

impl ConfAddr<'_> {
    fn addr_conf(&self, names: &Option<Rc<VirtualNames>>) -> crate::stream::cycle::AddrConf {
        crate::stream::cycle::AddrConf {
            addr: self.l.addr.clone(),
            server: self.default,
            names: names.clone(),
            proxy_protocol: self.proxy_protocol,
            ssl: self.ssl,
            text: Rc::from(self.l.addr.to_string().as_str()),
        }
    }

    /// The names of the servers sharing the address, when there is a choice to make (or a
    /// regex whose captures the default server's configuration may use).
    fn names(&self, servers: &[&CoreSrv]) -> Result<Option<Rc<VirtualNames>>, ConfError> {
        let regex = servers.get(self.default).is_some_and(|s| s.server_names.iter().any(|n| n.regex.is_some()));
        if self.servers.len() < 2 && !regex {
            return Ok(None);
        }
        // A server without `server_name` has the name "".
        let empty = [ServerName { name: String::new(), regex: None }];
        let list: Vec<(usize, &[ServerName])> = self
            .servers
            .iter()
            .filter_map(|&i| servers.get(i).map(|s| (i, &s.server_names[..])))
            .map(|(i, n)| (i, if n.is_empty() { &empty[..] } else { n }))
            .collect();
        let names = VirtualNames::build(&list, &self.l.addr.to_string())?;
        Ok(Some(Rc::new(names)))
    }
}

/// Group listen addresses into sockets: a wildcard socket on a port serves the specific
/// addresses on that port that did not ask for their own socket (`bind`).
fn listening(servers: &[&CoreSrv]) -> Result<Vec<Listening>, ConfError> {
    let mut addrs: Vec<ConfAddr<'_>> = Vec::new();
    let mut index: HashMap<(&Addr, bool), usize> = HashMap::new();
    for (si, s) in servers.iter().enumerate() {
        for l in &s.listens {
            match index.get(&(&l.addr, l.udp)).and_then(|&i| addrs.get_mut(i)) {
                Some(a) => {
                    a.servers.push(si);
                    if l.set {
                        a.l = l;
                    }
                    if l.default_server {
                        a.default = si;
                    }
                    a.proxy_protocol |= l.proxy_protocol;
                    a.ssl |= l.ssl;
                }
                None => {
                    index.insert((&l.addr, l.udp), addrs.len());
                    addrs.push(ConfAddr {
                        l,
                        servers: vec![si],
                        default: si,
                        proxy_protocol: l.proxy_protocol,
                        ssl: l.ssl,
                    })
                }
            }
        }
    }
    let names = addrs.iter().map(|a| a.names(servers)).collect::<Result<Vec<_>, _>>()?;
    // nginx's ports (family, port, TCP or UDP), in the order first seen; the addresses of
    // each sorted as ngx_stream_cmp_conf_addrs sorts them (stable): those that asked for
    // a socket of their own (`bind`) first, the wildcard last. Sockets are opened in
    // that order (it orders the "bind() failed" lines).
    let port_of = |l: &crate::stream::core_module::ListenConf| match &l.addr {
        Addr::Inet(sa) => (u8::from(sa.is_ipv4()) + 1, sa.port(), l.udp),
        Addr::Unix(_) => (0, 0, l.udp),
    };
    let mut ports: Vec<((u8, u16, bool), Vec<usize>)> = Vec::new();
    let mut port_index: HashMap<(u8, u16, bool), usize> = HashMap::new();
    for (i, a) in addrs.iter().enumerate() {
        let key = port_of(a.l);
        match port_index.get(&key).and_then(|&p| ports.get_mut(p)) {
            Some((_, v)) => v.push(i),
            None => {
                port_index.insert(key, ports.len());
                ports.push((key, vec![i]));
            }
        }
    }
    let mut out: Vec<Listening> = Vec::new();
    for (_, mut list) in ports {
        list.sort_by_key(|&i| match addrs[i].l {
            l if l.wildcard => 2,
            l if l.opts.bind => 0,
            _ => 1,
        });
        // A wildcard socket serves the port's other addresses that did not ask for a
        // socket of their own: a TCP connection's local address, or (IP_PKTINFO) the
        // address a datagram was sent to, picks the address configuration.
        let wildcard = list.last().copied().filter(|&i| addrs[i].l.wildcard);
        let mut served = Vec::new();
        for &i in &list {
            let (a, l) = (&addrs[i], addrs[i].l);
            if wildcard.is_some() && wildcard != Some(i) && !l.opts.bind {
                served.push(a.addr_conf(&names[i]));
                continue;
            }
            let conf = a.addr_conf(&names[i]);
            let (addr, opts, text) = (l.addr.clone(), l.opts.clone(), conf.text.clone());
            out.push(Listening { addr, opts, text, addr_confs: vec![conf] });
        }
        if let (Some(_), Some(w)) = (wildcard, out.last_mut()) {
            w.addr_confs.extend(served);
        }
    }
    // Accepted sockets inherit TCP_NODELAY from the listener when every server the
    // socket serves wants it.
    for ls in &mut out {
        let udp = ls.opts.udp;
        let mut served = ls.addr_confs.iter().filter_map(|x| index.get(&(&x.addr, udp)).and_then(|&i| addrs.get(i)));
        ls.opts.nodelay = served.all(|a| a.servers.iter().all(|&s| servers.get(s).is_some_and(|x| x.tcp_nodelay())));
    }
    Ok(out)
}

fn block(cx: &mut ConfCx, b: &Block, scope: &mut Scope<'_>) -> ConfResult {
    for cmd in &b.cmds {
        directive(cx, cmd, scope)?;
    }
    match &b.error {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

fn include(cx: &mut ConfCx, cmd: &Cmd, scope: &mut Scope<'_>) -> ConfResult {
    directive::check(cmd, Arity::Take(1))?;
    let pattern = cx.conf_full_name(cmd.arg(0));
    let names = if pattern.contains(['*', '?', '[']) {
        crate::core::glob::glob(&pattern)
            .map_err(|e| cmd.err(format!("glob() \"{}\" failed {}", pattern, crate::core::conf::os_err(&e))))?
    } else {
        vec![pattern]
    };
    for name in names {
        let (file, b) = parser::parse_file(&name, Some(cmd))?;
        cx.files.push(file);
        nested_include(cx, cmd, |cx| block(cx, &b, scope))?;
    }
    Ok(())
}

/// Read an included file's block with `read`, one level deeper: nginx has no limit
/// and crashes on a loop of includes (in a `map` or `geo` block too); sluice stops
/// with an error.
pub fn nested_include(cx: &mut ConfCx, cmd: &Cmd, read: impl FnOnce(&mut ConfCx) -> ConfResult) -> ConfResult {
    if cx.include_depth >= MAX_INCLUDE_DEPTH {
        return Err(cmd.err(format!("too many nested \"include\" directives (more than {})", MAX_INCLUDE_DEPTH)));
    }
    cx.include_depth += 1;
    let r = read(cx);
    cx.include_depth -= 1;
    r
}

/// Includes nested deeper than this are refused (a file including itself, directly or
/// through others).
const MAX_INCLUDE_DEPTH: usize = 64;

fn directive(cx: &mut ConfCx, cmd: &Cmd, scope: &mut Scope<'_>) -> ConfResult {
    if cmd.name == "include" {
        return include(cx, cmd, scope);
    }
    let ctx = scope.ctx();
    // (mail is no directive for nginx either: Debian's build has it as a module that is
    // not loaded.)
    if cmd.name == "http" && ctx.allows(Ctx::MAIN) {
        return Err(cmd
            .err(format!("\"{}\" directive is not supported: sluice runs stream {{}} configurations only", cmd.name)));
    }
    if cmd.name == "load_module" && ctx.allows(Ctx::MAIN) && (cx.events_seen || cx.stream_seen) {
        return Err(ConfError::directive(cmd, "is specified too late"));
    }
    // The core tables first (nginx's module order puts the core modules first).
    let mut found = if crate::stream::nginx_directives::ELSEWHERE.contains(&cmd.name.as_str()) {
        Lookup::NotHere
    } else {
        Lookup::Unknown
    };
    for d in main_conf::DIRECTIVES.iter().filter(|d| d.name == cmd.name) {
        if !d.ctx.allows(ctx) {
            found = Lookup::NotHere;
            continue;
        }
        directive::check(cmd, d.args)?;
        let paths = Prefix(cx.prefix.clone());
        return (d.set)(&mut cx.core, cmd, &paths);
    }
    for (name, args) in MAIN_BLOCKS {
        if *name != cmd.name {
            continue;
        }
        if ctx != Ctx::MAIN {
            found = Lookup::NotHere;
            break;
        }
        directive::check(cmd, *args)?;
        let Some(inner) = &cmd.block else { return Ok(()) };
        return match *name {
            "events" => {
                if cx.events_seen {
                    return Err(cmd.duplicate());
                }
                cx.events_seen = true;
                block(cx, inner, &mut Scope::Events)
            }
            _ => stream_block(cx, cmd, inner),
        };
    }
    let l = match scope {
        Scope::Main | Scope::Events => found.or(|| modules::dispatch(cmd, ctx, None, None, cx)),
        Scope::Stream(s) | Scope::Server(s) => found.or(|| modules::dispatch(cmd, ctx, Some(s), None, cx)),
        Scope::Upstream(u) => found.or(|| modules::dispatch(cmd, ctx, None, Some(u), cx)),
    };
    match l {
        Lookup::Unknown => Err(directive::not_found(cmd, false)),
        Lookup::NotHere => Err(directive::not_found(cmd, true)),
        Lookup::Applied(r) => r,
        Lookup::Block(BlockKind::Server) => server_block(cx, cmd),
        Lookup::Block(BlockKind::Upstream) => upstream_block(cx, cmd),
    }
}

fn stream_block(cx: &mut ConfCx, cmd: &Cmd, inner: &Block) -> ConfResult {
    if cx.stream_seen {
        return Err(cmd.duplicate());
    }
    cx.stream_seen = true;
    cx.virtual_servers = names_servers(cx, inner, false, 0);
    let mut top = SrvConfs::default();
    block(cx, inner, &mut Scope::Stream(&mut top))?;
    cx.stream_error_log = top.core.error_log.clone();
    // nginx merges the core module's server settings (where a server without a handler
    // is refused) before the upstream module checks its upstreams.
    if let Some(p) = cx.servers.iter().find(|p| p.handler.is_none()) {
        return Err(ConfError::bare(format!("no handler for server in {}:{}", p.file, p.line)));
    }
    cx.stream_resolver = (top.core.resolver.option().cloned(), top.core.resolver_timeout.option().copied());
    cx.merge_at = (cmd.file.clone(), inner.end_line);
    let mut servers = std::mem::take(&mut cx.servers);
    for (init_main, merge) in modules::STEPS {
        init_main(cx)?;
        for p in &mut servers {
            merge(&top, &mut p.confs, cx)?;
        }
    }
    for p in servers {
        let handler =
            p.handler.ok_or_else(|| ConfError::bare(format!("no handler for server in {}:{}", p.file, p.line)))?;
        cx.ready.push(ReadyServer { confs: p.confs, handler });
    }
    for r in &mut cx.ready {
        let c = &mut r.confs;
        crate::stream::api_module::bind(&mut c.api, &cx.main.api);
        crate::stream::upstream_hc_module::bind(
            &mut c.upstream_hc,
            c.proxy.pass.as_ref(),
            &cx.upstreams,
            &cx.main.upstream_hc,
        )?;
    }
    cx.vars.finish()?;
    check_variables_hash(cx)?;
    let cores: Vec<&CoreSrv> = cx.ready.iter().map(|r| &r.confs.core).collect();
    cx.listening = listening(&cores)?;
    Ok(())
}

/// nginx's verdict on the variables hash sizes (see `variables_hash`): an error, or a
/// warning logged here.
fn check_variables_hash(cx: &ConfCx) -> ConfResult {
    let (max, bucket) = cx.variables_hash;
    if let Some(w) = crate::stream::variables_hash::check(max, bucket, cx.vars.user_names())? {
        crate::core::log::error(Level::Warn, &w, None);
    }
    Ok(())
}

/// Whether a `server {}` of the stream block (`b`, or a server's block when `in_server`)
/// has a `server_name`, looking into included files. A look ahead: errors in the files
/// are left for the real reading to report.
fn names_servers(cx: &ConfCx, b: &Block, in_server: bool, depth: usize) -> bool {
    b.cmds.iter().any(|c| match c.name.as_str() {
        "server_name" => in_server,
        "server" if !in_server => c.block.as_ref().is_some_and(|inner| names_servers(cx, inner, true, depth)),
        "include" if depth < 16 && c.args.len() == 1 => {
            let pattern = cx.conf_full_name(c.arg(0));
            let names = if pattern.contains(['*', '?', '[']) {
                crate::core::glob::glob(&pattern).unwrap_or_default()
            } else {
                vec![pattern]
            };
            names.iter().any(|n| {
                parser::parse_file(n, Some(c)).is_ok_and(|(_, inc)| names_servers(cx, &inc, in_server, depth + 1))
            })
        }
        _ => false,
    })
}

fn server_block(cx: &mut ConfCx, cmd: &Cmd) -> ConfResult {
    let Some(inner) = &cmd.block else { return Ok(()) };
    let mut confs = SrvConfs::default();
    let saved = cx.handler.take();
    let r = block(cx, inner, &mut Scope::Server(&mut confs));
    let handler = std::mem::replace(&mut cx.handler, saved);
    r?;
    // `listen ... ssl` (nginx notes the last one's place for its certificate check).
    confs.ssl.listen = confs.core.listens.iter().rev().find(|l| l.ssl).map(|l| (l.file.clone(), l.line));
    if confs.core.listens.is_empty() {
        return Err(ConfError::bare(format!("no \"listen\" is defined for server in {}:{}", cmd.file, cmd.line)));
    }
    cx.servers.push(PendingServer { confs, handler, file: cmd.file.clone(), line: cmd.line });
    Ok(())
}

fn upstream_block(cx: &mut ConfCx, cmd: &Cmd) -> ConfResult {
    let Some(inner) = &cmd.block else { return Ok(()) };
    let name = cmd.arg(0).to_string();
    // A `proxy_pass NAME` earlier in the file made an implicit group: this block is it.
    let taken = find_upstream(cx, &name, None, true, cmd)?;
    let name = taken.map_or(name, |i| cx.upstreams[i].name.clone());
    let mut u = UpstreamConf { name, file: Some(cmd.file.clone()), line: cmd.line, ..Default::default() };
    block(cx, inner, &mut Scope::Upstream(&mut u))?;
    if u.servers.is_empty() {
        return Err(ConfError::at("no servers are inside upstream", &cmd.file, inner.end_line));
    }
    match taken {
        Some(i) => {
            // The group keeps the place it was first named at (ngx_stream_upstream_add
            // only changes its flags): later errors about it point at the proxy_pass.
            u.file = cx.upstreams[i].file.take();
            u.line = cx.upstreams[i].line;
            cx.upstreams[i] = u;
        }
        None => cx.upstreams.push(u),
    }
    Ok(())
}

/// The search of `ngx_stream_upstream_add`: the upstream named `host` (names compare
/// without case) with `port`. `create` is for an `upstream {}` block, which may take
/// over an implicit group made by a `proxy_pass` of its name without a port.
pub fn find_upstream(cx: &ConfCx, host: &str, port: Option<u16>, create: bool, cmd: &Cmd) -> ConfResult<Option<usize>> {
    for (i, u) in cx.upstreams.iter().enumerate() {
        if !u.host().eq_ignore_ascii_case(host) {
            continue;
        }
        if create && !u.implicit {
            return Err(cmd.err(format!("duplicate upstream \"{}\"", host)));
        }
        if let (false, Some(p)) = (u.implicit, port) {
            return Err(cmd.err(format!("upstream \"{}\" may not have port {}", host, p)));
        }
        if let (true, Some(p)) = (create, u.port) {
            let file = u.file.as_deref().unwrap_or("");
            return Err(ConfError::bare(format!(
                "upstream \"{}\" may not have port {} in {}:{}",
                host, p, file, u.line
            )));
        }
        if u.port == port {
            return Ok(Some(i));
        }
    }
    Ok(None)
}
