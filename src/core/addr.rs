//! Socket addresses as nginx writes and parses them (`ngx_parse_url`, `ngx_sock_ntop`):
//! `127.0.0.1:80`, `[::1]:80`, `*:80`, `80`, `host:80`, `unix:/path`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::PathBuf;

/// A TCP/UDP or unix-domain address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Inet(SocketAddr::V4(a)) => write!(f, "{}:{}", a.ip(), a.port()),
            Addr::Inet(SocketAddr::V6(a)) => write!(f, "[{}]:{}", a.ip(), a.port()),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Addr {
    /// The address without the port, as `$remote_addr` / `$server_addr` print it: a unix
    /// socket is "unix:PATH" ("unix:" for an unnamed client socket).
    pub fn host_text(&self) -> String {
        let mut out = Vec::new();
        self.write_host(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `host_text` appended to `out` (no allocation of its own).
    pub fn write_host(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = match self {
            Addr::Inet(a) => write!(out, "{}", a.ip()),
            Addr::Unix(p) => write!(out, "unix:{}", p.display()),
        };
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Addr::Inet(a) => Some(a.port()),
            Addr::Unix(_) => None,
        }
    }
}

/// The result of parsing a URL-ish address: the text as given and its addresses.
#[derive(Debug, Clone)]
pub struct ParsedUrl {
    pub host: String,
    pub port: Option<u16>,
    pub addrs: Vec<Addr>,
    /// The host is an IP literal or wildcard (no resolution happened).
    pub literal: bool,
}

/// What nginx's `ngx_parse_url` reports in `u->err` (the caller wraps it in context).
pub type UrlError = &'static str;

fn parse_port(s: &str, listen: bool) -> Result<u16, UrlError> {
    // ngx_atoi: digits only (no sign).
    if !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err("invalid port");
    }
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(0) if !listen => Err("invalid port"),
        _ => Err("invalid port"),
    }
}

/// Resolve `host` as nginx's `ngx_inet_resolve_host` does: getaddrinfo with AF_UNSPEC,
/// SOCK_STREAM and AI_ADDRCONFIG, every IPv4 and IPv6 answer kept in the resolver's
/// order, duplicates included (each is a peer of its own in nginx, so it weighs in
/// round-robin and in the hash).
pub fn resolve_host(host: &str, port: u16) -> Result<Vec<Addr>, UrlError> {
    let name = std::ffi::CString::new(host).map_err(|_| "host not found")?;
    // SAFETY: a zeroed addrinfo is a valid "no hints" value; fields are set below.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = libc::AI_ADDRCONFIG;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C string and hints; `res` is freed below.
    if unsafe { libc::getaddrinfo(name.as_ptr(), std::ptr::null(), &hints, &mut res) } != 0 {
        return Err("host not found");
    }
    let mut out = Vec::new();
    let mut rp = res;
    while !rp.is_null() {
        // SAFETY: `rp` walks the list getaddrinfo returned; each ai_addr is valid for
        // its family's sockaddr.
        let ai = unsafe { &*rp };
        match ai.ai_family {
            libc::AF_INET => {
                let sin = unsafe { &*(ai.ai_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                out.push(Addr::Inet(SocketAddr::new(IpAddr::V4(ip), port)));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ai.ai_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                out.push(Addr::Inet(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, sin6.sin6_scope_id))));
            }
            _ => {}
        }
        rp = ai.ai_next;
    }
    // SAFETY: `res` came from a successful getaddrinfo.
    unsafe { libc::freeaddrinfo(res) };
    if out.is_empty() {
        return Err("host not found");
    }
    Ok(out)
}

/// Parse an address. With `listen`, a bare number is a port on the wildcard address,
/// `*` is the wildcard, and a missing port gives addresses with port 0 (nginx 1.22's
/// stream `listen` has no default port: the kernel picks one); `port` stays `None`
/// either way for the caller to judge. `resolve` false keeps host names unresolved
/// (addrs empty).
pub fn parse_url(url: &str, listen: bool, resolve: bool) -> Result<ParsedUrl, UrlError> {
    if let Some(path) = url.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("no path in the unix domain socket");
        }
        return Ok(ParsedUrl {
            host: url.to_string(),
            port: None,
            addrs: vec![Addr::Unix(PathBuf::from(path))],
            literal: true,
        });
    }
    // A path or arguments are no part of an address here (`ngx_parse_inet_url`).
    if url.contains(['/', '?']) {
        return Err("invalid host");
    }
    if let Some(rest) = url.strip_prefix('[') {
        let Some(end) = rest.find(']') else { return Err("invalid host") };
        let ip: Ipv6Addr = rest[..end].parse().map_err(|_| "invalid IPv6 address")?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p, listen)?),
            None if after.is_empty() => None,
            None => return Err("invalid IPv6 address"),
        };
        let addrs = match port.or(listen.then_some(0)) {
            Some(p) => vec![Addr::Inet(SocketAddr::new(IpAddr::V6(ip), p))],
            None => vec![],
        };
        return Ok(ParsedUrl { host: format!("[{}]", ip), port, addrs, literal: true });
    }
    // The first colon starts the port, as in `ngx_parse_inet_url` (an IPv6 address goes
    // in brackets: "::1:80" is a bad port).
    let (host, port) = match url.find(':') {
        Some(i) => (&url[..i], Some(parse_port(&url[i + 1..], listen)?)),
        None => {
            if listen && !url.is_empty() && url.bytes().all(|c| c.is_ascii_digit()) {
                let p = parse_port(url, listen)?;
                let a = Addr::Inet(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p));
                return Ok(ParsedUrl { host: "*".into(), port: Some(p), addrs: vec![a], literal: true });
            }
            (url, None)
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    let wildcard = listen && host == "*";
    let ip: Option<IpAddr> =
        if wildcard { Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) } else { host.parse::<Ipv4Addr>().ok().map(IpAddr::V4) };
    if let Some(ip) = ip {
        let addrs = port.or(listen.then_some(0)).map(|p| vec![Addr::Inet(SocketAddr::new(ip, p))]).unwrap_or_default();
        return Ok(ParsedUrl { host: host.to_string(), port, addrs, literal: true });
    }
    let addrs = match (resolve, port.or(listen.then_some(0))) {
        (true, Some(p)) => resolve_host(host, p)?,
        (true, None) => {
            resolve_host(host, 0)?;
            vec![]
        }
        _ => vec![],
    };
    Ok(ParsedUrl { host: host.to_string(), port, addrs, literal: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        let u = parse_url("8080", true, true).unwrap();
        assert_eq!(u.addrs[0].to_string(), "0.0.0.0:8080");
        let u = parse_url("*:81", true, true).unwrap();
        assert_eq!(u.addrs[0].to_string(), "0.0.0.0:81");
        let u = parse_url("[::1]:82", true, true).unwrap();
        assert_eq!(u.addrs[0].to_string(), "[::1]:82");
        let u = parse_url("unix:/tmp/s.sock", true, true).unwrap();
        assert_eq!(u.addrs[0].to_string(), "unix:/tmp/s.sock");
        assert_eq!(parse_url("70000", true, true).unwrap_err(), "invalid port");
        assert_eq!(parse_url("127.0.0.1:abc", true, true).unwrap_err(), "invalid port");
        assert_eq!(parse_url("127.0.0.1:0", true, true).unwrap_err(), "invalid port");
    }

    #[test]
    fn upstream_forms() {
        let u = parse_url("127.0.0.1", false, true).unwrap();
        assert_eq!(u.port, None);
        let u = parse_url("localhost:80", false, true).unwrap();
        assert!(u.addrs.iter().any(|a| a.to_string() == "127.0.0.1:80"));
        // getaddrinfo's order, as nginx keeps it (glibc sorts ::1 before 127.0.0.1
        // where a name has both).
        let libc_order: Vec<String> =
            std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)).unwrap().map(|a| a.to_string()).collect();
        let ours: Vec<String> = u.addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(ours, libc_order);
        assert_eq!(parse_url("nonexistent.invalid:80", false, true).unwrap_err(), "host not found");
    }
}
