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

/// An IP address as nginx prints it (`ngx_sock_ntop`): IPv6 by `ngx_inet6_ntop`, which
/// writes an IPv4 tail not only for ::ffff:a.b.c.d but for ::a.b.c.d too.
pub struct NgxIp(pub IpAddr);

impl fmt::Display for NgxIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let IpAddr::V6(v6) = self.0 else { return write!(f, "{}", self.0) };
        let p = v6.octets();
        // The longest run of zero groups (the first of equal ones), if longer than one.
        let (mut zero, mut max, mut last, mut n) = (usize::MAX, 1usize, usize::MAX, 0usize);
        for i in (0..16).step_by(2) {
            if p[i] != 0 || p[i + 1] != 0 {
                if max < n {
                    zero = last;
                    max = n;
                }
                n = 0;
                continue;
            }
            if n == 0 {
                last = i;
            }
            n += 1;
        }
        if max < n {
            zero = last;
            max = n;
        }
        let mut end = 16;
        if zero == 0 {
            if (max == 5 && p[10] == 0xff && p[11] == 0xff) || max == 6 || (max == 7 && p[14] != 0 && p[15] != 1) {
                end = 12;
            }
            f.write_str(":")?;
        }
        let mut i = 0;
        while i < end {
            if i == zero {
                f.write_str(":")?;
                i += max * 2;
                continue;
            }
            write!(f, "{:x}", u16::from(p[i]) << 8 | u16::from(p[i + 1]))?;
            if i < 14 {
                f.write_str(":")?;
            }
            i += 2;
        }
        if end == 12 {
            write!(f, "{}.{}.{}.{}", p[12], p[13], p[14], p[15])?;
        }
        Ok(())
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Inet(SocketAddr::V4(a)) => write!(f, "{}:{}", a.ip(), a.port()),
            Addr::Inet(SocketAddr::V6(a)) => write!(f, "[{}]:{}", NgxIp(IpAddr::V6(*a.ip())), a.port()),
            Addr::Unix(p) => write!(f, "unix:{}", path_text(p)),
        }
    }
}

/// A socket path as configuration text: its bytes that are not UTF-8 as the parser's
/// stand-ins, which the log writers turn back into those bytes.
pub fn path_text(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    crate::core::conf::parser::bytes_to_text(p.as_os_str().as_bytes())
}

impl Addr {
    /// The address without the port, as `$remote_addr` / `$server_addr` print it: a unix
    /// socket is "unix:PATH" ("unix:" for an unnamed client socket).
    pub fn host_text(&self) -> String {
        let mut out = Vec::new();
        self.write_host(&mut out);
        crate::core::conf::parser::bytes_to_text(&out)
    }

    /// `host_text` appended to `out` (no allocation of its own).
    pub fn write_host(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = match self {
            Addr::Inet(a) => write!(out, "{}", NgxIp(a.ip())),
            Addr::Unix(p) => {
                use std::os::unix::ffi::OsStrExt;
                out.extend_from_slice(b"unix:");
                out.extend_from_slice(p.as_os_str().as_bytes());
                Ok(())
            }
        };
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Addr::Inet(a) => Some(a.port()),
            Addr::Unix(_) => None,
        }
    }
}

/// `ngx_inet_addr`: a dotted quad (empty parts count as 0, as nginx's do).
pub fn inet_addr(t: &[u8]) -> Option<u32> {
    let (mut addr, mut octet, mut dots) = (0u32, 0u32, 0u32);
    for &c in t {
        match c {
            b'0'..=b'9' => {
                octet = octet * 10 + u32::from(c - b'0');
                if octet > 255 {
                    return None;
                }
            }
            b'.' => {
                addr = addr.wrapping_shl(8).wrapping_add(octet);
                octet = 0;
                dots += 1;
            }
            _ => return None,
        }
    }
    if dots != 3 {
        return None;
    }
    let a = addr.wrapping_shl(8).wrapping_add(octet);
    // INADDR_NONE is nginx's failure value.
    (a != u32::MAX).then_some(a)
}

/// `ngx_inet6_addr`: nginx's own IPv6 reader (with an IPv4 tail, "::" once).
pub fn inet6_addr(t: &[u8]) -> Option<[u8; 16]> {
    if t.is_empty() {
        return None;
    }
    let mut out = [0u8; 16];
    let mut o = 0usize;
    let mut zero: Option<usize> = None;
    let mut digit: Option<usize> = None;
    let mut nibbles = 0u32;
    let mut word = 0u32;
    let mut n = 8u32;
    let mut p = usize::from(t.first() == Some(&b':'));
    let mut v4_tail = false;
    while p < t.len() {
        let c = t[p];
        p += 1;
        if c == b':' {
            if nibbles > 0 {
                digit = Some(p);
                *out.get_mut(o)? = (word >> 8) as u8;
                *out.get_mut(o + 1)? = (word & 0xff) as u8;
                o += 2;
                n -= 1;
                if n > 0 {
                    nibbles = 0;
                    word = 0;
                    continue;
                }
            } else if zero.is_none() {
                digit = Some(p);
                zero = Some(o);
                continue;
            }
            return None;
        }
        if c == b'.' && nibbles > 0 {
            let d = digit?;
            if n < 2 {
                return None;
            }
            let w = inet_addr(t.get(d..)?)?;
            *out.get_mut(o)? = (w >> 24) as u8;
            *out.get_mut(o + 1)? = (w >> 16) as u8;
            o += 2;
            n -= 1;
            word = w & 0xffff;
            v4_tail = true;
            break;
        }
        nibbles += 1;
        if nibbles > 4 {
            return None;
        }
        let x = match c {
            b'0'..=b'9' => c - b'0',
            _ => match c | 0x20 {
                l @ b'a'..=b'f' => l - b'a' + 10,
                _ => return None,
            },
        };
        word = word * 16 + u32::from(x);
    }
    if nibbles == 0 && zero.is_none() && !v4_tail {
        return None;
    }
    *out.get_mut(o)? = (word >> 8) as u8;
    *out.get_mut(o + 1)? = (word & 0xff) as u8;
    o += 2;
    n -= 1;
    if n > 0 {
        let z = zero?;
        // Move what follows "::" to the end and fill the gap with zeros.
        let shift = (n * 2) as usize;
        let tail: Vec<u8> = out.get(z..o)?.to_vec();
        for x in out.iter_mut().skip(z) {
            *x = 0;
        }
        out.get_mut(z + shift..o + shift)?.copy_from_slice(&tail);
        return Some(out);
    }
    if zero.is_none() {
        Some(out)
    } else {
        None
    }
}

/// `ngx_parse_addr`: nginx's IPv4, then IPv6, readers (a bare address: no brackets, no
/// port).
pub fn parse_addr(t: &[u8]) -> Option<IpAddr> {
    match inet_addr(t) {
        Some(a) => Some(IpAddr::from(a.to_be_bytes())),
        None => inet6_addr(t).map(IpAddr::from),
    }
}

/// `ngx_parse_addr_port`: an address (as `parse_addr`), or one with a port: "v4:port",
/// "[v6]:port". The port is 1..65535 (digits only); "[::1]" without a port is not one.
pub fn parse_addr_port(text: &str) -> Option<SocketAddr> {
    if let Some(ip) = parse_addr(text.as_bytes()) {
        return Some(SocketAddr::new(ip, 0));
    }
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (h, after) = rest.split_once(']')?;
            (h, after.strip_prefix(':')?)
        }
        None => text.split_once(':')?,
    };
    if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p >= 1)?;
    Some(SocketAddr::new(parse_addr(host.as_bytes())?, port))
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

impl ParsedUrl {
    pub fn is_unix(&self) -> bool {
        matches!(self.addrs.first(), Some(Addr::Unix(_)))
    }

    /// The port an upstream is found by (`ngx_stream_upstream_add`, the run-time search
    /// of ngx_stream_proxy_handler): a unix socket has port 0 to nginx, not "no port".
    pub fn upstream_port(&self) -> Option<u16> {
        if self.is_unix() {
            Some(0)
        } else {
            self.port
        }
    }
}

/// What nginx's `ngx_parse_url` reports in `u->err` (the caller wraps it in context).
pub type UrlError = &'static str;

/// `ngx_atoi` of a port: digits only (no sign), 1..=65535.
fn parse_port(s: &str) -> Result<u16, UrlError> {
    match atoi(s) {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err("invalid port"),
    }
}

/// nginx's `ngx_atoi`: digits only, at least one, and no more than fits its signed
/// 64 bits (a longer number is no number: "99999999999999999999" is a host name).
fn atoi(s: &str) -> Option<u64> {
    if !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().map(|n| n as u64)
}

/// The port after a host's colon. `listen` takes a range, "first-last" (nginx 1.15.10):
/// the first and last ports, equal for a single port.
fn parse_ports(s: &str, listen: bool) -> Result<(u16, u16), UrlError> {
    let Some((first, last)) = s.split_once('-').filter(|_| listen) else {
        let p = parse_port(s)?;
        return Ok((p, p));
    };
    let last = parse_port(last)?;
    let first = parse_port(first)?;
    if first > last {
        return Err("invalid port range");
    }
    Ok((first, last))
}

/// A `listen` address without a host, "port" or "first-last", as nginx's "test value
/// as port only": `None` when it is no port at all but a host name (a part that is
/// not a number); an error for a bad number.
fn port_only(url: &str) -> Option<Result<(u16, u16), UrlError>> {
    let (first, last) = match url.split_once('-') {
        Some((first, last)) => {
            // A second part that is no number makes the whole a host name.
            let n = atoi(last)?;
            (first, Some(n))
        }
        None => (url, None),
    };
    atoi(first)?;
    Some(match last {
        Some(n) if !(1..=65535).contains(&n) => Err("invalid port"),
        Some(n) => {
            parse_port(first).and_then(|f| if u64::from(f) > n { Err("invalid port range") } else { Ok((f, n as u16)) })
        }
        None => parse_port(first).map(|p| (p, p)),
    })
}

/// Every address of `base` at each port of `ports` (nginx's `ngx_inet_add_addr`:
/// address by address, and each at port after port).
fn with_ports(base: Vec<Addr>, (first, last): (u16, u16)) -> Vec<Addr> {
    let mut out = Vec::with_capacity(base.len() * usize::from(last - first + 1));
    for a in base {
        for p in first..=last {
            out.push(match &a {
                Addr::Inet(sa) => Addr::Inet(SocketAddr::new(sa.ip(), p)),
                other => other.clone(),
            });
        }
    }
    out
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
            _ if ai.ai_addr.is_null() => {}
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

/// The path of a `unix:` address (the prefix in any case, as ngx_parse_url takes it).
pub fn strip_unix(url: &str) -> Option<&str> {
    url.get(..5).filter(|p| p.eq_ignore_ascii_case("unix:")).map(|_| &url[5..])
}

/// Parse an address. With `listen`, a bare number is a port on the wildcard address,
/// `*` is the wildcard, and a missing port gives addresses with port 0 (nginx 1.22's
/// stream `listen` has no default port: the kernel picks one); `port` stays `None`
/// either way for the caller to judge. `resolve` false keeps host names unresolved
/// (addrs empty).
pub fn parse_url(url: &str, listen: bool, resolve: bool) -> Result<ParsedUrl, UrlError> {
    if let Some(path) = strip_unix(url) {
        if path.is_empty() {
            return Err("no path in the unix domain socket");
        }
        // The path's bytes, as the configuration had them (not UTF-8 ones too).
        let bytes = crate::core::conf::parser::text_to_bytes(path);
        // sun_path holds 108 bytes, its NUL included.
        if bytes.len() + 1 > 108 {
            return Err("too long path in the unix domain socket");
        }
        let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes);
        return Ok(ParsedUrl {
            host: url.to_string(),
            port: None,
            addrs: vec![Addr::Unix(PathBuf::from(path))],
            literal: true,
        });
    }
    if let Some(rest) = url.strip_prefix('[') {
        let Some(end) = rest.find(']') else { return Err("invalid host") };
        // ngx_parse_inet6_url: the port first, then the host; a path after the bracket
        // is no part of an address here, and anything else wrong is a bad port or
        // address ("[::1]:80?", "[::1/128]").
        let after = &rest[end + 1..];
        if after.contains('/') {
            return Err("invalid host");
        }
        let ports = match after.strip_prefix(':') {
            Some(p) => Some(parse_ports(p, listen)?),
            None if after.is_empty() => None,
            None => return Err("invalid host"),
        };
        if end == 0 {
            return Err("no host");
        }
        let ip = Ipv6Addr::from(inet6_addr(&rest.as_bytes()[..end]).ok_or("invalid IPv6 address")?);
        let addrs = match ports.or(listen.then_some((0, 0))) {
            Some(ps) => with_ports(vec![Addr::Inet(SocketAddr::new(IpAddr::V6(ip), 0))], ps),
            None => vec![],
        };
        // The host as written (nginx names and finds groups by it: "[0::1]" is not "[::1]").
        return Ok(ParsedUrl { host: format!("[{}]", &rest[..end]), port: ports.map(|p| p.0), addrs, literal: true });
    }
    // A path or arguments are no part of an address here (`ngx_parse_inet_url`).
    if url.contains(['/', '?']) {
        return Err("invalid host");
    }
    // The first colon starts the port, as in `ngx_parse_inet_url` (an IPv6 address goes
    // in brackets: "::1:80" is a bad port).
    let (host, ports) = match url.find(':') {
        Some(i) => (&url[..i], Some(parse_ports(&url[i + 1..], listen)?)),
        None => {
            if let Some(ps) = port_only(url).filter(|_| listen) {
                let ps = ps?;
                let a = Addr::Inet(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
                return Ok(ParsedUrl {
                    host: "*".into(),
                    port: Some(ps.0),
                    addrs: with_ports(vec![a], ps),
                    literal: true,
                });
            }
            (url, None)
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    let port = ports.map(|p| p.0);
    let wildcard = listen && host == "*";
    let ip: Option<IpAddr> = if wildcard {
        Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    } else {
        inet_addr(host.as_bytes()).map(|a| IpAddr::V4(a.into()))
    };
    let ports = ports.or(listen.then_some((0, 0)));
    if let Some(ip) = ip {
        let addrs = ports.map(|ps| with_ports(vec![Addr::Inet(SocketAddr::new(ip, 0))], ps)).unwrap_or_default();
        return Ok(ParsedUrl { host: host.to_string(), port, addrs, literal: true });
    }
    let addrs = match (resolve, ports) {
        (true, Some(ps)) => with_ports(resolve_host(host, 0)?, ps),
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
    fn ipv4_like_nginx() {
        assert_eq!(inet_addr(b"127.0.0.1"), Some(0x7f00_0001));
        assert_eq!(inet_addr(b"010.0.0.1"), Some(0x0a00_0001));
        assert_eq!(inet_addr(b"1..2.3"), Some(0x0100_0203));
        assert_eq!(inet_addr(b"1.2.3"), None);
        assert_eq!(inet_addr(b"1.2.3.4.5"), None);
        assert_eq!(inet_addr(b"1.2.3.256"), None);
        assert_eq!(inet_addr(b"255.255.255.255"), None);
    }

    #[test]
    fn ipv6_like_nginx() {
        let p = |s: &str| inet6_addr(s.as_bytes()).map(std::net::Ipv6Addr::from);
        for s in
            ["::1", "::", "2001:db8::", "2001:db8::1:2", "1:2:3:4:5:6:7:8", "::ffff:192.0.2.1", "fe80::1:2:3:4:5:6"]
        {
            assert_eq!(p(s), s.parse().ok(), "{s}");
        }
        assert_eq!(p(":1:2:3:4:5:6:7:8"), "1:2:3:4:5:6:7:8".parse().ok());
        for bad in ["", ":", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "g::", "1:2:3:4:5:6:7", "1.2.3.4"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    /// `ngx_inet6_ntop`'s forms, against what nginx 1.22.1 printed side by side.
    #[test]
    fn ipv6_text_as_nginx() {
        let t = |s: &str| NgxIp(s.parse().unwrap()).to_string();
        for (ip, want) in [
            ("::1", "::1"),
            ("::", "::"),
            ("::2", "::2"),
            ("::10.0.0.1", "::10.0.0.1"),
            ("::0.0.1.2", "::0.0.1.2"),
            ("::0.1.0.2", "::0.1.0.2"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::ffff:0.0.0.0", "::ffff:0.0.0.0"),
            ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7:0"),
            ("1::", "1::"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),
            ("fe80::1:2", "fe80::1:2"),
        ] {
            assert_eq!(t(ip), want, "{ip}");
        }
    }

    #[test]
    fn addr_port_forms() {
        let p = |s: &str| parse_addr_port(s).map(|a| a.to_string());
        assert_eq!(p("127.0.0.010"), Some("127.0.0.10:0".into()));
        assert_eq!(p("127.0.0.1:80"), Some("127.0.0.1:80".into()));
        assert_eq!(p("::1"), Some("[::1]:0".into()));
        assert_eq!(p("[::1]:80"), Some("[::1]:80".into()));
        for bad in ["[::1]", "127.0.0.1:0", "127.0.0.1:x", "[::1]80", "host", "::1:80x"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

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
