//! ngx_stream_ssl_preread_module: `ssl_preread on|off`; preread phase. Reads the TLS
//! ClientHello without terminating TLS: `$ssl_preread_server_name`,
//! `$ssl_preread_alpn_protocols`, `$ssl_preread_protocol`.
//!
//! `parse` is a pure function over the bytes the client sent so far (the preread phase
//! peeks them anew each time), following nginx's state machine and its checks; it is
//! the part that sees hostile bytes, and it is fuzzed.

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value::{self, Setting};
use crate::core::conf::ConfResult;
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::{Flow, Phase, PhaseRegistry};
use crate::stream::server_names::validate_host;
use crate::stream::session::{Cx, SessionCore};
use crate::stream::variables::Variables;

pub struct SslPreread;

#[derive(Default)]
pub struct SslPrereadSrv {
    pub enabled: Setting<bool>,
}

/// What a ClientHello told (nginx's preread ctx).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    pub host: Option<Vec<u8>>,
    pub alpn: Option<Vec<u8>>,
    pub version: [u8; 2],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed; what was read so far (nginx fills its variables as it
    /// parses, so a session that ends here shows them).
    Again(Hello),
    /// Not a (parsable) TLS ClientHello: no variables.
    Declined,
    Done(Hello),
}

/// Reads the handshake bytes gathered so far, counting against the handshake's own
/// length as nginx does (`left`): a field running past it is a parse failure.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    left: usize,
}

enum Need<T> {
    Got(T),
    Again,
    Fail,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Need<&'a [u8]> {
        if self.left < n {
            return Need::Fail;
        }
        if self.b.len() - self.pos < n {
            return Need::Again;
        }
        let v = &self.b[self.pos..self.pos + n];
        self.pos += n;
        self.left -= n;
        Need::Got(v)
    }
}

macro_rules! need {
    ($r:expr, $n:expr, $h:expr) => {
        match $r.take($n) {
            Need::Got(v) => v,
            Need::Again => return Parsed::Again($h),
            Need::Fail => return Parsed::Declined,
        }
    };
}

fn u16be(v: &[u8]) -> usize {
    ((v[0] as usize) << 8) | v[1] as usize
}

/// `ngx_stream_ssl_preread_parse_record` over the handshake bytes of all records so far,
/// with the checks of Debian's nginx 1.22.1 (its CVE-2026-123640 patch, the oracle this
/// project records against): the extensions' total length must be exactly what is left
/// of the handshake, SNI and ALPN come at most once and their lengths must agree with
/// their lists, and supported_versions must hold a whole list of at least one version
/// (see there for the one place this stays with upstream nginx).
fn parse_hello(hs: &[u8]) -> Parsed {
    let mut h = Hello::default();
    if hs.len() < 4 {
        return Parsed::Again(h);
    }
    if hs[0] != 1 {
        return Parsed::Declined;
    }
    let left = (hs[1] as usize) << 16 | (hs[2] as usize) << 8 | hs[3] as usize;
    let mut r = Reader { b: hs, pos: 4, left };
    // The version is copied byte by byte, as nginx's state machine does.
    if r.left >= 2 && r.b.len() - r.pos == 1 {
        h.version = [r.b[r.pos], 0];
        return Parsed::Again(h);
    }
    let v = need!(r, 2, h);
    h.version = [v[0], v[1]];
    need!(r, 32, h);
    let sid = need!(r, 1, h)[0] as usize;
    need!(r, sid, h);
    let cs = u16be(need!(r, 2, h));
    need!(r, cs, h);
    let cm = need!(r, 1, h)[0] as usize;
    need!(r, cm, h);
    if r.left == 0 {
        return Parsed::Done(h);
    }
    let total = u16be(need!(r, 2, h));
    if total != r.left {
        // "extensions length error"
        return Parsed::Declined;
    }
    loop {
        if r.left == 0 {
            return Parsed::Done(h);
        }
        let eh = need!(r, 4, h);
        let (ty, elen) = (u16be(&eh[0..2]), u16be(&eh[2..4]));
        if ty == 0 {
            if h.host.is_some() {
                // "duplicate SNI"
                return Parsed::Declined;
            }
            let mut ext = u16be(need!(r, 2, h));
            if elen != 2 + ext {
                // "SNI format error"
                return Parsed::Declined;
            }
            let hh = need!(r, 3, h);
            if hh[0] != 0 {
                return Parsed::Declined;
            }
            let size = u16be(&hh[1..3]);
            if ext < 3 + size {
                return Parsed::Declined;
            }
            ext -= 3 + size;
            h.host = Some(need!(r, size, h).to_vec());
            need!(r, ext, h);
        } else if ty == 16 {
            if h.alpn.is_some() {
                // "duplicate ALPN"
                return Parsed::Declined;
            }
            let mut ext = u16be(need!(r, 2, h));
            if elen != 2 + ext {
                // "ALPN format error"
                return Parsed::Declined;
            }
            // Filled as it is read: a list cut short shows what came (with the comma
            // nginx puts before the next name).
            h.alpn = Some(Vec::new());
            loop {
                let size = need!(r, 1, h)[0] as usize;
                if size == 0 || ext < 1 + size {
                    return Parsed::Declined;
                }
                ext -= 1 + size;
                let name = need!(r, size, h);
                if let Some(a) = h.alpn.as_mut() {
                    a.extend_from_slice(name);
                }
                if ext == 0 {
                    break;
                }
                if let Some(a) = h.alpn.as_mut() {
                    a.push(b',');
                }
            }
        } else if ty == 43 {
            let n = need!(r, 1, h)[0] as usize;
            // Debian's "supported_versions format error" also refuses an extension
            // longer than its list; nginx-tests (stream_ssl_preread_protocol.t) sends
            // one and wants TLSv1.3 from it, and our yardstick does not go down: only a
            // list that overruns its extension, or holds no whole version, is refused.
            if elen < 1 + n || n < 2 {
                return Parsed::Declined;
            }
            h.version = [3, 4];
            need!(r, n, h);
        } else {
            need!(r, elen, h);
        }
    }
}

/// `ngx_stream_ssl_preread_handler`'s record loop on a whole buffer.
pub fn parse(buf: &[u8]) -> Parsed {
    Scanner::default().feed(buf)
}

/// The record loop kept across reads, as nginx keeps its parser's place: the records
/// already taken are not looked at again, and the handshake bytes are parsed again
/// only when a record added some (so many small or empty records cost each its own
/// bytes, not the whole buffer again).
#[derive(Default)]
pub struct Scanner {
    /// Bytes of the preread buffer taken as whole records.
    scanned: usize,
    /// The handshake messages of those records.
    hs: Vec<u8>,
    /// What `hs` parsed as (None: not parsed since it last grew).
    last: Option<Parsed>,
}

impl Scanner {
    /// The buffer so far (what an earlier call saw, and more).
    pub fn feed(&mut self, buf: &[u8]) -> Parsed {
        while let Some(r) = buf.get(self.scanned..).filter(|r| r.len() >= 5) {
            // A decision on the records before this one stands whatever follows.
            let v2 = r[0] & 0x80 != 0 && r[2] == 1 && (r[3] == 0 || r[3] == 3);
            if v2 || r[0] != 0x16 || r[1] != 3 {
                return match self.parsed() {
                    // A version 2 ClientHello: nginx sets only the version, and what an
                    // earlier record's part of a hello gave stays.
                    Parsed::Again(h) if v2 => Parsed::Done(Hello { version: [r[3], r[4]], ..h }),
                    Parsed::Again(_) => Parsed::Declined,
                    done => done,
                };
            }
            let len = u16be(&r[3..5]);
            if r.len() < len + 5 {
                break;
            }
            if len > 0 {
                self.hs.extend_from_slice(&r[5..5 + len]);
                self.last = None;
            }
            self.scanned += 5 + len;
        }
        self.parsed()
    }

    fn parsed(&mut self) -> Parsed {
        self.last.get_or_insert_with(|| parse_hello(&self.hs)).clone()
    }
}

impl Module for SslPreread {
    const NAME: &'static str = "stream_ssl_preread";
    type Main = ();
    type Srv = SslPrereadSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[Directive {
        name: "ssl_preread",
        ctx: Ctx::MAIN_SRV,
        args: Arity::Flag,
        set: Set::<Self>::Srv(|c, cmd, _| c.enabled.set_parsed(cmd, value::flag)),
    }];

    fn variables(v: &mut Variables) {
        v.define_cacheable("ssl_preread_protocol", var_preread, 0);
        v.define_cacheable("ssl_preread_server_name", var_preread, 1);
        v.define_cacheable("ssl_preread_alpn_protocols", var_preread, 2);
    }

    fn merge_srv(p: &SslPrereadSrv, c: &mut SslPrereadSrv, _: &mut ConfCx) -> ConfResult {
        c.enabled.merge(&p.enabled, false);
        Ok(())
    }

    fn postconfiguration(p: &mut PhaseRegistry) {
        p.add(Phase::Preread, preread_handler);
    }
}

fn preread_handler(s: &mut SessionCore, _: &mut Cx<'_>) -> Flow {
    if !s.srv.confs.ssl_preread.enabled.get() || s.client.is_udp() {
        return Flow::Declined;
    }
    // nginx makes its context once it has seen data and drops it when the bytes are
    // not TLS: the variables are empty while waiting, "not found" after a decline.
    if s.preread.is_empty() {
        return Flow::Again;
    }
    if s.ctx::<Scanner>().is_none() {
        s.set_ctx(Scanner::default());
    }
    // The scanner and the buffer are fields apart: fed in place, once made.
    let parsed = match s.ctx.iter_mut().find_map(|b| b.downcast_mut::<Scanner>()) {
        Some(scanner) => scanner.feed(&s.preread),
        None => parse(&s.preread),
    };
    match parsed {
        Parsed::Again(h) => {
            s.set_ctx(Some(h));
            Flow::Again
        }
        Parsed::Declined => {
            s.set_ctx(None::<Hello>);
            Flow::Declined
        }
        Parsed::Done(h) => {
            let found = h.host.as_ref().is_none_or(|host| find_virtual_server(s, host));
            s.set_ctx(Some(h));
            if !found {
                return Flow::Finalize(500);
            }
            Flow::Next
        }
    }
}

/// `ngx_stream_ssl_preread_servername`: the server named by the SNI host, among the
/// servers sharing the address, takes over the session (when the name is valid and
/// known; otherwise the session stays where it is). False when a `server_name` regex
/// failed to match: the session ends with 500, as nginx's.
pub(crate) fn find_virtual_server(s: &mut SessionCore, host: &[u8]) -> bool {
    let Some(names) = s.virtual_names.clone() else { return true };
    let Some(host) = validate_host(host) else { return true };
    match names.find(s, &host) {
        Ok(found) => {
            if let Some(srv) = found.and_then(|i| s.cycle.servers.get(i).cloned()) {
                s.srv = srv;
            }
            true
        }
        Err(_) => false,
    }
}

fn var_preread(s: &mut SessionCore, which: usize, out: &mut Vec<u8>) -> bool {
    let Some(Some(h)) = s.ctx::<Option<Hello>>() else {
        return false;
    };
    match which {
        0 => {
            let v: &[u8] = match h.version {
                [0, 2] => b"SSLv2",
                [3, 0] => b"SSLv3",
                [3, 1] => b"TLSv1",
                [3, 2] => b"TLSv1.1",
                [3, 3] => b"TLSv1.2",
                [3, 4] => b"TLSv1.3",
                _ => b"",
            };
            out.extend_from_slice(v);
        }
        1 => out.extend_from_slice(h.host.as_deref().unwrap_or_default()),
        _ => out.extend_from_slice(h.alpn.as_deref().unwrap_or_default()),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record with SNI `host`, ALPN `protos` and supported_versions.
    fn hello(host: &[u8], protos: &[&[u8]], tls13: bool) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut sni = vec![0, 0];
        let list_len = 3 + host.len();
        sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        sni.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
        sni.extend_from_slice(host);
        ext.extend_from_slice(&sni);
        if !protos.is_empty() {
            let mut l = Vec::new();
            for p in protos {
                l.push(p.len() as u8);
                l.extend_from_slice(p);
            }
            ext.extend_from_slice(&[0, 16]);
            ext.extend_from_slice(&((l.len() + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(l.len() as u16).to_be_bytes());
            ext.extend_from_slice(&l);
        }
        if tls13 {
            ext.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_alpn_version() {
        let r = hello(b"example.com", &[b"h2", b"http/1.1"], true);
        let want = Hello { host: Some(b"example.com".to_vec()), alpn: Some(b"h2,http/1.1".to_vec()), version: [3, 4] };
        assert_eq!(parse(&r), Parsed::Done(want));
        // Every prefix is "more, please", never a wrong answer.
        for n in 0..r.len() {
            assert_eq!(parse(&r[..n]), Parsed::Again(Hello::default()), "prefix {}", n);
        }
    }

    /// The hello split into records of `size` bytes with empty records between, fed a
    /// few bytes at a time to one scanner: at every step the answer is the whole-buffer
    /// loop's, and empty records do not parse the handshake again.
    #[test]
    fn scanner_across_reads_answers_as_the_whole_buffer() {
        let rec = hello(b"example.com", &[b"h2"], true);
        let hs = &rec[5..];
        for size in [1, 3, 40, hs.len()] {
            let mut buf = Vec::new();
            for piece in hs.chunks(size) {
                buf.extend_from_slice(&[0x16, 3, 1, 0, 0]);
                buf.extend_from_slice(&[0x16, 3, 1]);
                buf.extend_from_slice(&(piece.len() as u16).to_be_bytes());
                buf.extend_from_slice(piece);
            }
            buf.extend_from_slice(b"trailing bytes");
            let mut sc = Scanner::default();
            for n in (0..=buf.len()).step_by(7).chain([buf.len()]) {
                let got = sc.feed(&buf[..n]);
                assert_eq!(got, parse(&buf[..n]), "size {size}, {n} bytes");
                if matches!(got, Parsed::Done(_)) {
                    break;
                }
            }
            assert!(matches!(sc.feed(&buf), Parsed::Done(Hello { version: [3, 4], .. })));
        }
        let mut sc = Scanner::default();
        let mut buf = rec[..20].to_vec();
        buf[3..5].copy_from_slice(&15u16.to_be_bytes());
        assert!(matches!(sc.feed(&buf), Parsed::Again(_)));
        assert!(sc.last.is_some());
        buf.extend_from_slice(&[0x16, 3, 1, 0, 0]);
        assert!(matches!(sc.feed(&buf), Parsed::Again(_)));
        assert!(sc.last.is_some(), "an empty record parsed the handshake again");
        // A record that is not a handshake after a hello that is still short: declined.
        buf.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
        assert_eq!(sc.feed(&buf), Parsed::Declined);
    }

    fn hex(parts: &[&str]) -> Vec<u8> {
        let s: String = parts.concat();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Debian nginx 1.22.1's checks (recorded side by side: these ClientHellos leave
    /// every variable not found), and what a hello cut short shows (nginx fills its
    /// variables as it reads).
    #[test]
    fn debian_checks_and_partial_hellos() {
        let random = "11".repeat(32);
        for bad in [
            // The extensions' length is not what is left of the handshake.
            hex(&["1603010039010000350303", &random, "00000213010100000900000006000400000161"]),
            // Two SNI extensions.
            hex(&["16030100430100003f0303", &random, "0000021301010000140000000600040000016100000006000400000162"]),
            // An SNI extension longer than its list.
            hex(&["160301003d010000390303", &random, "00000213010100000e0000000700040000016100010000"]),
            // supported_versions with a one-byte list.
            hex(&["16030100350100003103031", &"1".repeat(63), "000002130101000006002b00020103"]),
        ] {
            assert_eq!(parse(&bad), Parsed::Declined, "{bad:02x?}");
        }
        // A supported_versions extension longer than its list (as nginx-tests'
        // stream_ssl_preread_protocol.t sends it): TLSv1.3, as upstream nginx says.
        let long_ext = hex(&[
            "16030100330100002f0303eb6357cdbaa6b8d853f1f6ac0fdf03178c0ae41824e76436823c1b273fbfde4b",
            "0000000000",
            "07002b0007027f1c",
        ]);
        assert!(matches!(parse(&long_ext), Parsed::Done(Hello { version: [3, 4], .. })), "{:?}", parse(&long_ext));
        let v = parse(&hex(&["1603010005010000fe03"]));
        assert_eq!(v, Parsed::Again(Hello { version: [3, 0], ..Hello::default() }));
        let cut = parse(&hex(&[
            "1603010042010000410303",
            &random,
            "00000213010100001600000006000400000161001000080006026832",
        ]));
        let want = Hello { host: Some(b"a".to_vec()), alpn: Some(b"h2,".to_vec()), version: [3, 3] };
        assert_eq!(cut, Parsed::Again(want));
    }

    #[test]
    fn split_across_records() {
        let r = hello(b"a.example", &[], false);
        let hs = &r[5..];
        let mut two = vec![0x16, 3, 1, 0, 10];
        two.extend_from_slice(&hs[..10]);
        two.extend_from_slice(&[0x16, 3, 1]);
        two.extend_from_slice(&((hs.len() - 10) as u16).to_be_bytes());
        two.extend_from_slice(&hs[10..]);
        match parse(&two) {
            Parsed::Done(h) => assert_eq!(h.host.as_deref(), Some(&b"a.example"[..])),
            other => panic!("{:?}", other),
        }
    }

    /// A version 2 ClientHello header after part of a hello: nginx sets the version
    /// and keeps the name it had read (side by side with nginx 1.22.1: "TLSv1.2 a.b").
    #[test]
    fn v2_header_after_part_of_a_hello_keeps_what_was_read() {
        let r = hello(b"a.b", &[b"h2"], false);
        let hs = &r[5..];
        let part = 60.min(hs.len() - 4);
        let mut buf = vec![0x16, 3, 1];
        buf.extend_from_slice(&(part as u16).to_be_bytes());
        buf.extend_from_slice(&hs[..part]);
        buf.extend_from_slice(&[0x80, 0x2e, 1, 3, 3]);
        let want = Hello { host: Some(b"a.b".to_vec()), alpn: None, version: [3, 3] };
        assert_eq!(parse(&buf), Parsed::Done(want));
        // Before any hello bytes, the version alone.
        assert_eq!(parse(&[0x80, 0x2e, 1, 3, 3]), Parsed::Done(Hello { version: [3, 3], ..Hello::default() }));
    }

    #[test]
    fn not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Declined);
        assert_eq!(parse(&[0x16, 2, 0, 0, 0]), Parsed::Declined);
        let mut r = hello(b"x", &[], false);
        r[5] = 2; // a ServerHello
        assert_eq!(parse(&r), Parsed::Declined);
    }
}
