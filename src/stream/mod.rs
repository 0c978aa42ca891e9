//! The stream subsystem: the module system, the phase engine, sessions and the worker,
//! and one file per stream module.

pub mod conf;
pub mod content;
pub mod cycle;
pub mod dgram_owners;
pub mod health_check;
pub mod master;
pub mod module;
pub mod phase;
pub mod proxy_protocol;
pub mod relay;
pub mod resolver;
pub mod runtime;
pub mod server_names;
pub mod session;
pub mod variables;
pub mod variables_hash;
pub mod worker;

pub mod access_module;
pub mod api_module;
pub mod core_module;
pub mod geo_binary;
pub mod geo_module;
pub mod limit_conn_module;
pub mod log_module;
pub mod map_module;
pub mod nginx_directives;
pub mod pass_module;
pub mod proxy_module;
pub mod proxy_ssl;
pub mod realip_module;
pub mod return_module;
pub mod set_module;
pub mod split_clients_module;
pub mod ssl_module;
pub mod ssl_preread_module;
pub mod upstream_hash_module;
pub mod upstream_hc_module;
pub mod upstream_least_conn_module;
pub mod upstream_module;
pub mod upstream_random_module;
pub mod upstream_zone_module;

// The module list, in nginx's order. Adding a module: a file above and a line here.
crate::stream_modules! {
    core: core_module::StreamCore,
    log: log_module::Log,
    proxy: proxy_module::Proxy,
    proxy_ssl: proxy_ssl::ProxySslModule,
    upstream: upstream_module::Upstream,
    realip: realip_module::StreamRealip,
    limit_conn: limit_conn_module::LimitConn,
    access: access_module::Access,
    geo: geo_module::Geo,
    map: map_module::Map,
    split_clients: split_clients_module::SplitClients,
    return_: return_module::Return,
    set: set_module::Set_,
    upstream_hash: upstream_hash_module::UpstreamHash,
    upstream_least_conn: upstream_least_conn_module::UpstreamLeastConn,
    upstream_random: upstream_random_module::UpstreamRandom,
    upstream_zone: upstream_zone_module::UpstreamZone,
    upstream_hc: upstream_hc_module::UpstreamHc,
    ssl: ssl_module::StreamSsl,
    ssl_preread: ssl_preread_module::SslPreread,
    pass: pass_module::Pass,
    api: api_module::Api,
}
