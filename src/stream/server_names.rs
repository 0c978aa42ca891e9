//! Virtual servers on one address (nginx 1.25.5's stream `server_name`): the names of
//! the servers sharing a `listen` address, and the lookup that picks one by the host name
//! a client sent (SNI, read by ssl_preread) — `ngx_stream_server_names` and
//! `ngx_stream_find_virtual_server`.
//!
//! Order of the lookup, as nginx's combined hash: the exact name, then the longest
//! wildcard starting with "*" (or "."), then the longest wildcard ending with "*", then
//! the regular expressions in the order they appear.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use crate::core::conf::{ConfError, Level};
use crate::core::regex::Exec;
use crate::stream::map_module::StreamRegex;
use crate::stream::session::SessionCore;

/// One name of a `server_name` directive.
#[derive(Clone)]
pub struct ServerName {
    /// Lowercased; without the "~" for a regex.
    pub name: String,
    pub regex: Option<Rc<StreamRegex>>,
}

/// The names of the servers sharing one address, by server index.
#[derive(Default)]
pub struct VirtualNames {
    exact: HashMap<Vec<u8>, usize>,
    /// "*.example.com" and ".example.com" by "example.com"; whether the bare name matches.
    head: Vec<(Vec<u8>, bool, usize)>,
    /// "www.example.*" by "www.example".
    tail: Vec<(Vec<u8>, usize)>,
    regex: Vec<(Rc<StreamRegex>, usize)>,
}

impl fmt::Debug for VirtualNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualNames")
            .field("exact", &self.exact.len())
            .field("head", &self.head.len())
            .field("tail", &self.tail.len())
            .field("regex", &self.regex.len())
            .finish()
    }
}

enum Key {
    Exact(Vec<u8>),
    /// ".example.com": the exact name and the head wildcard at once.
    Dot(Vec<u8>),
    Head(Vec<u8>),
    Tail(Vec<u8>),
}

/// `ngx_hash_add_key` with wildcards: None for a name it declines.
fn key(name: &str) -> Option<Key> {
    let b = name.as_bytes();
    if b.iter().filter(|&&c| c == b'*').count() > 1 || name.contains("..") || b.contains(&0) {
        return None;
    }
    if b.len() > 1 && b[0] == b'.' {
        return Some(Key::Dot(b[1..].to_vec()));
    }
    if b.len() > 2 {
        if b.starts_with(b"*.") {
            return Some(Key::Head(b[2..].to_vec()));
        }
        if b.ends_with(b".*") {
            return Some(Key::Tail(b[..b.len() - 2].to_vec()));
        }
    }
    if b.contains(&b'*') {
        return None;
    }
    Some(Key::Exact(b.to_vec()))
}

impl VirtualNames {
    /// The names of `servers` (index and names, in configuration order) on the address
    /// written `addr`. A name already taken is ignored with nginx's warning.
    pub fn build(servers: &[(usize, &[ServerName])], addr: &str) -> Result<VirtualNames, ConfError> {
        let mut v = VirtualNames::default();
        for &(si, names) in servers {
            for n in names {
                if let Some(re) = &n.regex {
                    v.regex.push((re.clone(), si));
                    continue;
                }
                let Some(k) = key(&n.name) else {
                    return Err(ConfError::bare(format!("invalid server name or wildcard \"{}\" on {}", n.name, addr)));
                };
                if !v.add(k, si) {
                    crate::core::log::error(
                        Level::Warn,
                        &format!("conflicting server name \"{}\" on {}, ignored", n.name, addr),
                        None,
                    );
                }
            }
        }
        Ok(v)
    }

    /// False when the name conflicts with one already added.
    fn add(&mut self, k: Key, si: usize) -> bool {
        match k {
            Key::Exact(n) => {
                if self.exact.contains_key(&n) {
                    return false;
                }
                self.exact.insert(n, si);
            }
            Key::Dot(n) => {
                if self.exact.contains_key(&n) || self.head.iter().any(|h| h.0 == n) {
                    return false;
                }
                self.exact.insert(n.clone(), si);
                self.head.push((n, true, si));
            }
            Key::Head(n) => {
                if self.head.iter().any(|h| h.0 == n) {
                    return false;
                }
                self.head.push((n, false, si));
            }
            Key::Tail(n) => {
                if self.tail.iter().any(|t| t.0 == n) {
                    return false;
                }
                self.tail.push((n, si));
            }
        }
        true
    }

    /// The server for `host` (already validated and lowercased); a regex match sets the
    /// session's captures. `Err` when a regex failed to match (logged at alert by the
    /// match): nginx's `ngx_stream_find_virtual_server` then fails the session.
    pub fn find(&self, s: &mut SessionCore, host: &[u8]) -> Result<Option<usize>, Exec> {
        if let Some(&si) = self.exact.get(host) {
            return Ok(Some(si));
        }
        let head = self
            .head
            .iter()
            .filter(|(k, _, _)| host.len() > k.len() && host.ends_with(k) && host[host.len() - k.len() - 1] == b'.')
            .max_by_key(|(k, _, _)| k.len());
        if let Some(&(_, _, si)) = head {
            return Ok(Some(si));
        }
        let tail = self
            .tail
            .iter()
            .filter(|(k, _)| host.len() > k.len() + 1 && host.starts_with(k) && host[k.len()] == b'.')
            .max_by_key(|(k, _)| k.len());
        if let Some(&(_, si)) = tail {
            return Ok(Some(si));
        }
        if host.is_empty() {
            return Ok(None);
        }
        for (re, si) in &self.regex {
            match re.exec(s, host) {
                Exec::Match => return Ok(Some(*si)),
                Exec::NoMatch => continue,
                failed @ Exec::Failed(_) => return Err(failed),
            }
        }
        Ok(None)
    }
}

/// `ngx_stream_validate_host`: the host name a client sent, lowercased, without a port
/// and a trailing dot; None when it is not a valid host name.
pub fn validate_host(host: &[u8]) -> Option<Vec<u8>> {
    #[derive(PartialEq)]
    enum St {
        Start,
        Host,
        IpLiteral,
        End,
        Port,
    }
    let mut st = St::Start;
    let mut dot_pos = usize::MAX;
    let mut host_len = host.len();
    let mut port: u32 = 0;
    let sub_delim = |c: u8| b"-_~!$&'()*+,;=".contains(&c);
    for (i, &c) in host.iter().enumerate() {
        if st == St::Start {
            if c == b'[' {
                st = St::IpLiteral;
                continue;
            }
            st = St::Host;
        }
        match st {
            St::Start => {}
            St::Host => match c {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'%' => {}
                b':' => {
                    host_len = i;
                    st = St::Port;
                }
                b'.' => {
                    if i > 0 && dot_pos == i - 1 {
                        return None;
                    }
                    dot_pos = i;
                }
                c if sub_delim(c) => {}
                _ => return None,
            },
            St::IpLiteral => match c {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b':' => {}
                b']' => {
                    host_len = i + 1;
                    st = St::End;
                }
                b'.' => {
                    if i > 0 && dot_pos == i - 1 {
                        return None;
                    }
                    dot_pos = i;
                }
                c if sub_delim(c) => {}
                _ => return None,
            },
            St::End => {
                if c != b':' {
                    return None;
                }
                st = St::Port;
            }
            St::Port => {
                if !c.is_ascii_digit() {
                    return None;
                }
                port = port * 10 + u32::from(c - b'0');
                if port > 65535 {
                    return None;
                }
            }
        }
    }
    if st == St::IpLiteral {
        return None;
    }
    if host_len > 0 && dot_pos == host_len - 1 {
        host_len -= 1;
    }
    if host_len == 0 {
        return None;
    }
    Some(host[..host_len].to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<ServerName> {
        list.iter().map(|n| ServerName { name: n.to_string(), regex: None }).collect()
    }

    #[test]
    fn host_validation_as_nginx() {
        assert_eq!(validate_host(b"Example.COM."), Some(b"example.com".to_vec()));
        assert_eq!(validate_host(b"example.com:443"), Some(b"example.com".to_vec()));
        assert_eq!(validate_host(b"[::1]:443"), Some(b"[::1]".to_vec()));
        assert_eq!(validate_host(b"a..b"), None);
        assert_eq!(validate_host(b"a/b"), None);
        assert_eq!(validate_host(b"."), None);
        assert_eq!(validate_host(b"[::1"), None);
        assert_eq!(validate_host(b"a:99999"), None);
        assert_eq!(validate_host(b""), None);
    }

    #[test]
    fn keys_as_ngx_hash_add_key() {
        assert!(matches!(key("*.example.com"), Some(Key::Head(_))));
        assert!(matches!(key(".example.com"), Some(Key::Dot(_))));
        assert!(matches!(key("www.example.*"), Some(Key::Tail(_))));
        assert!(matches!(key("example.com"), Some(Key::Exact(_))));
        assert!(matches!(key(""), Some(Key::Exact(_))));
        assert!(key("ex*ample.com").is_none());
        assert!(key("*.a.*").is_none());
        assert!(key("a..b").is_none());
    }

    #[test]
    fn conflicts() {
        let a = names(&["example.com", "*.example.com"]);
        let b = names(&[".example.com", "*.example.com", "www.*", "www.*"]);
        let mut v = VirtualNames::default();
        for (si, list) in [(0, &a), (1, &b)] {
            for n in list.iter() {
                let _ = v.add(key(&n.name).unwrap(), si);
            }
        }
        assert_eq!(v.exact.get(&b"example.com"[..]), Some(&0));
        assert_eq!(v.head.len(), 1);
        assert_eq!(v.head[0].2, 0);
        assert_eq!(v.tail, vec![(b"www".to_vec(), 1)]);
    }
}
