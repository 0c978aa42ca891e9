//! The stream subsystem: the module system, the phase engine, sessions and the worker,
//! and one file per stream module.

pub mod conf;
pub mod content;
pub mod cycle;
pub mod module;
pub mod phase;
pub mod runtime;
pub mod session;
pub mod variables;
pub mod worker;

pub mod core_module;
pub mod log_module;
pub mod proxy_module;
pub mod return_module;
pub mod upstream_module;

// The module list, in nginx's order. Adding a module: a file above and a line here.
crate::stream_modules! {
    core: core_module::StreamCore,
    log: log_module::Log,
    proxy: proxy_module::Proxy,
    upstream: upstream_module::Upstream,
    return_: return_module::Return,
}
