//! Address masks as nginx reads and matches them (`ngx_ptocidr`, `ngx_cidr_match`,
//! `ngx_inet_addr`): `192.168.1.0/24`, `::1`, `2001:db8::/32`, used by `allow`/`deny`
//! and `set_real_ip_from`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::core::addr::Addr;

/// One mask: an IPv4 or IPv6 network, or every unix-domain client (`unix:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { addr: u32, mask: u32 },
    V6 { addr: [u8; 16], mask: [u8; 16] },
    Unix,
}

/// `ngx_inet_addr` (leading zeros are decimal, empty parts 0; 255.255.255.255 is
/// nginx's INADDR_NONE, so no address).
pub fn parse_ipv4(s: &str) -> Option<u32> {
    crate::core::addr::inet_addr(s.as_bytes())
}

/// `ngx_atoi`: decimal digits only.
fn atoi(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `ngx_ptocidr`: the mask, and whether the address had bits set below the prefix
/// length (nginx then warns "low address bits of X are meaningless" and clears them).
/// `None` is nginx's `NGX_ERROR`.
pub fn parse(text: &str) -> Option<(Cidr, bool)> {
    let (host, bits) = match text.split_once('/') {
        Some((h, b)) => (h, Some(b)),
        None => (text, None),
    };
    if let Some(a) = parse_ipv4(host) {
        let Some(bits) = bits else { return Some((Cidr::V4 { addr: a, mask: u32::MAX }, false)) };
        let shift = atoi(bits).filter(|s| *s <= 32)?;
        let mask = if shift == 0 { 0 } else { u32::MAX << (32 - shift) };
        return Some((Cidr::V4 { addr: a & mask, mask }, a & mask != a));
    }
    let a = crate::core::addr::inet6_addr(host.as_bytes())?;
    let Some(bits) = bits else { return Some((Cidr::V6 { addr: a, mask: [0xff; 16] }, false)) };
    let mut shift = atoi(bits).filter(|s| *s <= 128)?;
    let (mut addr, mut mask, mut low) = (a, [0u8; 16], false);
    for (ad, m) in addr.iter_mut().zip(mask.iter_mut()) {
        let s = shift.min(8);
        shift -= s;
        *m = (0xffu16 << (8 - s)) as u8;
        if *ad & *m != *ad {
            low = true;
            *ad &= *m;
        }
    }
    Some((Cidr::V6 { addr, mask }, low))
}

impl Cidr {
    /// The mask matching exactly `ip` (a name resolved for `set_real_ip_from`).
    pub fn host(ip: IpAddr) -> Cidr {
        match ip {
            IpAddr::V4(v) => Cidr::V4 { addr: u32::from(v), mask: u32::MAX },
            IpAddr::V6(v) => Cidr::V6 { addr: v.octets(), mask: [0xff; 16] },
        }
    }

    pub fn matches_v4(&self, a: Ipv4Addr) -> bool {
        matches!(self, Cidr::V4 { addr, mask } if u32::from(a) & mask == *addr)
    }

    pub fn matches_v6(&self, a: &Ipv6Addr) -> bool {
        match self {
            Cidr::V6 { addr, mask } => a.octets().iter().zip(mask).zip(addr).all(|((b, m), x)| b & m == *x),
            _ => false,
        }
    }
}

/// The IPv4 address inside an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`), which nginx
/// matches against IPv4 masks.
pub fn v4_mapped(a: &Ipv6Addr) -> Option<Ipv4Addr> {
    match a.octets() {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b0, b1, b2, b3] => Some(Ipv4Addr::new(b0, b1, b2, b3)),
        _ => None,
    }
}

/// `ngx_cidr_match`: does any mask of `list` match the address?
pub fn matches_any(list: &[Cidr], a: &Addr) -> bool {
    match a {
        Addr::Unix(_) => list.contains(&Cidr::Unix),
        Addr::Inet(sa) => match sa.ip() {
            IpAddr::V4(v) => list.iter().any(|c| c.matches_v4(v)),
            IpAddr::V6(v) => match v4_mapped(&v) {
                Some(v4) => list.iter().any(|c| c.matches_v4(v4)),
                None => list.iter().any(|c| c.matches_v6(&v)),
            },
        },
    }
}

/// nginx's `debug_connection` test (ngx_debug_accepted_connection): as `matches_any`,
/// but a family matches only its own (an IPv4-mapped address is IPv6 there).
pub fn matches_same_family(list: &[Cidr], a: &Addr) -> bool {
    match a {
        Addr::Unix(_) => list.contains(&Cidr::Unix),
        Addr::Inet(sa) => match sa.ip() {
            IpAddr::V4(v) => list.iter().any(|c| c.matches_v4(v)),
            IpAddr::V6(v) => list.iter().any(|c| c.matches_v6(&v)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_like_nginx() {
        assert_eq!(parse_ipv4("127.0.0.1"), Some(0x7f00_0001));
        assert_eq!(parse_ipv4("010.0.0.1"), Some(0x0a00_0001));
        assert_eq!(parse_ipv4("1.2.3"), None);
        assert_eq!(parse_ipv4("1.2.3.4.5"), None);
        assert_eq!(parse_ipv4("1.2.3.256"), None);
        assert_eq!(parse_ipv4("1.2.3.x"), None);
    }

    #[test]
    fn masks() {
        assert_eq!(parse("10.0.0.0/8"), Some((Cidr::V4 { addr: 0x0a00_0000, mask: 0xff00_0000 }, false)));
        assert_eq!(parse("10.1.0.0/8"), Some((Cidr::V4 { addr: 0x0a00_0000, mask: 0xff00_0000 }, true)));
        assert_eq!(parse("1.2.3.4/0"), Some((Cidr::V4 { addr: 0, mask: 0 }, true)));
        assert_eq!(parse("1.2.3.4/33"), None);
        assert_eq!(parse("1.2.3.4/"), None);
        assert_eq!(parse("1.2.3.4/-1"), None);
        assert_eq!(parse("example.com"), None);
        let (c, low) = parse("2001:db8::1/32").unwrap();
        assert!(low);
        assert!(c.matches_v6(&"2001:db8:ffff::".parse().unwrap()));
        assert!(!c.matches_v6(&"2001:db9::".parse().unwrap()));
        assert_eq!(parse("::1/129"), None);
        let (all6, _) = parse("::/0").unwrap();
        assert!(all6.matches_v6(&"fe80::1".parse().unwrap()));
    }

    #[test]
    fn match_mapped_and_unix() {
        let list = [parse("127.0.0.0/8").unwrap().0];
        let mapped: Addr = Addr::Inet("[::ffff:127.0.0.5]:80".parse().unwrap());
        assert!(matches_any(&list, &mapped));
        assert!(!matches_any(&list, &Addr::Inet("[::1]:80".parse().unwrap())));
        assert!(!matches_any(&list, &Addr::Unix(Default::default())));
        assert!(matches_any(&[Cidr::Unix], &Addr::Unix(Default::default())));
    }
}
