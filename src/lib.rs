//! sluice: an L4 (TCP/UDP) proxy and load balancer that runs nginx `stream {}`
//! configurations. See DESIGN in the project's shared notes and README.md.

pub mod core;
pub mod stream;
pub mod upstream;

/// sluice's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The nginx release whose stream behaviour sluice follows (what `$nginx_version` and
/// `-V` report to tools that parse nginx's output).
pub const NGINX_VERSION: &str = "1.22.1";
