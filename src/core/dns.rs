//! DNS messages (RFC 1035): the queries the resolver sends, and a strict parser for the
//! answers, which arrive from the network and are treated as hostile.
//!
//! The parser never trusts a length or an offset: every read is bounds-checked, a
//! compression pointer must point before every place the name was read from so far (so
//! a name cannot loop), labels are at most 63 bytes and names 255, extended label types
//! are refused, and at most `MAX_RECORDS` records of a section are looked at.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
/// DNAME: nginx passes over it.
const TYPE_DNAME: u16 = 39;
const CLASS_IN: u16 = 1;

/// rcodes (nginx's `NGX_RESOLVE_*` are the same numbers).
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;

/// Labels and compression pointers read per name: nginx's `ngx_resolver_copy` gives up
/// after 128 (it sets no limit on a name's length: RFC 1035's 255 bytes is not checked).
const MAX_NAME_STEPS: usize = 128;
/// Records looked at per answer: far more than any real answer, and a bound on work.
pub const MAX_RECORDS: usize = 256;
/// CNAMEs followed inside one answer.
pub const MAX_CNAME_HOPS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The message ends before a field it announces.
    Short,
    /// Not a response, not a standard query, or not exactly one question.
    Header,
    /// A malformed name: a bad label type, a label or name too long, a pointer that
    /// does not point backwards.
    Name,
    /// A record's data does not fit its type.
    Rdata,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Short => "short DNS response",
            Error::Header => "invalid DNS response header",
            Error::Name => "invalid name in DNS response",
            Error::Rdata => "invalid record in DNS response",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    /// An A or AAAA record (by its type) whose data is not an address's length.
    BadAddress(u16),
    /// A record of another type, or of another class than IN.
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Lowercase, without the trailing dot; each byte of the wire form is one char
    /// (bytes above 0x7f become U+0080..U+00FF), so nothing is lost or merged.
    pub name: String,
    pub ttl: u32,
    /// The class (IN is 1): nginx refuses an answer with any other.
    pub class: u16,
    pub data: RData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    pub qname: String,
    pub qtype: u16,
    pub answers: Vec<Record>,
}

/// A standard query with recursion desired for `name` (its trailing dot already
/// dropped), or None where `ngx_resolver_create_name_query` declines: an empty name or
/// label (a second trailing dot), a label over 255 bytes. nginx does not hold labels to
/// 63 bytes: a longer one goes out as it is (and its answer is refused as one with a
/// compression pointer), so it does here. A name over 255 bytes is refused (nginx sends
/// it).
pub fn query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    if name.is_empty() {
        return None;
    }
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    // A name from a client goes out with its bytes as they came (UTF-8 or not).
    for label in crate::core::conf::parser::text_to_bytes(name).split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 255 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(q)
}

fn u16_at(m: &[u8], at: usize) -> Result<u16, Error> {
    m.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(Error::Short)
}

fn u32_at(m: &[u8], at: usize) -> Result<u32, Error> {
    m.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or(Error::Short)
}

/// The name at `at`, lowercased, and where the bytes after it (in place) begin.
fn read_name(m: &[u8], at: usize) -> Result<(String, usize), Error> {
    // The name's bytes, read as the asked name was written (UTF-8, other bytes as their
    // stand-ins), so that a name with other bytes than ASCII compares equal to the
    // question it answers.
    let mut out: Vec<u8> = Vec::new();
    let mut p = at;
    // Every pointer must go below the lowest offset read so far: no loops, and at most
    // one jump per two bytes of message.
    let mut lowest = at;
    let mut after = None;
    for _ in 0..MAX_NAME_STEPS {
        let b = *m.get(p).ok_or(Error::Short)?;
        match b & 0xc0 {
            0x00 if b == 0 => {
                return Ok((crate::core::conf::parser::bytes_to_text(&out), after.unwrap_or(p + 1)));
            }
            0x00 => {
                let len = b as usize;
                let label = m.get(p + 1..p + 1 + len).ok_or(Error::Short)?;
                // A dot inside a label would make it another name.
                if label.contains(&b'.') {
                    return Err(Error::Name);
                }
                if !out.is_empty() {
                    out.push(b'.');
                }
                out.extend(label.iter().map(u8::to_ascii_lowercase));
                p += 1 + len;
            }
            0xc0 => {
                let target = (u16_at(m, p)? & 0x3fff) as usize;
                if target >= lowest {
                    return Err(Error::Name);
                }
                after.get_or_insert(p + 2);
                lowest = target;
                p = target;
            }
            _ => return Err(Error::Name),
        }
    }
    Err(Error::Name)
}

/// Parse a response. Records of other classes are skipped; their data is not looked at.
pub fn parse(m: &[u8]) -> Result<Response, Error> {
    let id = u16_at(m, 0)?;
    let flags = u16_at(m, 2)?;
    let (qd, an) = (u16_at(m, 4)?, u16_at(m, 6)?);
    // QR set, opcode QUERY, one question.
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || qd != 1 {
        return Err(Error::Header);
    }
    let (qname, mut p) = read_name(m, 12)?;
    let qtype = u16_at(m, p)?;
    p += 4;
    let truncated = flags & 0x0200 != 0;
    let mut answers = Vec::new();
    if truncated {
        // A truncated answer is asked again over TCP before any record is read (nginx's
        // ngx_resolver_process_a): a datagram cut in the middle of a record is no error.
        return Ok(Response { id, rcode: (flags & 0x000f) as u8, truncated, qname, qtype, answers });
    }
    for _ in 0..(an as usize).min(MAX_RECORDS) {
        // An owner that is the root name itself refuses the whole answer (nginx's
        // ngx_resolver_process_a: a name of less than two bytes).
        if m.get(p) == Some(&0) {
            return Err(Error::Name);
        }
        let (name, q) = read_name(m, p)?;
        let rtype = u16_at(m, q)?;
        let class = u16_at(m, q + 2)?;
        // RFC 2181 8: a TTL with the top bit set is zero.
        let ttl = u32_at(m, q + 4)?;
        let ttl = if ttl & 0x8000_0000 != 0 { 0 } else { ttl };
        let len = u16_at(m, q + 8)? as usize;
        let start = q + 10;
        let rdata = m.get(start..start + len).ok_or(Error::Short)?;
        p = start + len;
        if class != CLASS_IN {
            answers.push(Record { name, ttl, class, data: RData::Other(rtype) });
            continue;
        }
        let data = match rtype {
            TYPE_A => match <[u8; 4]>::try_from(rdata) {
                Ok(b) => RData::A(Ipv4Addr::from(b)),
                Err(_) => RData::BadAddress(rtype),
            },
            TYPE_AAAA => match <[u8; 16]>::try_from(rdata) {
                Ok(b) => RData::Aaaa(Ipv6Addr::from(b)),
                Err(_) => RData::BadAddress(rtype),
            },
            TYPE_CNAME => {
                let (target, end) = read_name(m, start)?;
                if end > p {
                    return Err(Error::Rdata);
                }
                RData::Cname(target)
            }
            TYPE_SRV => {
                if len < 7 {
                    return Err(Error::Rdata);
                }
                let (target, end) = read_name(m, start + 6)?;
                if end > p {
                    return Err(Error::Rdata);
                }
                RData::Srv {
                    priority: u16_at(m, start)?,
                    weight: u16_at(m, start + 2)?,
                    port: u16_at(m, start + 4)?,
                    target,
                }
            }
            _ => RData::Other(rtype),
        };
        answers.push(Record { name, ttl, class, data });
    }
    Ok(Response { id, rcode: (flags & 0x000f) as u8, truncated, qname, qtype, answers })
}

/// What an answer says about a name's records of one kind, CNAMEs in it followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<T> {
    /// The records in answer order, and the smallest TTL on the way to them.
    Records(Vec<T>, u32),
    /// The chain ends at a name the answer has no records for: ask for that one.
    Cname(String, u32),
    /// Nothing for the name (NOERROR with no data, or an alias of itself).
    Nothing,
}

/// Follow `name` through the answer's CNAMEs (at most `MAX_CNAME_HOPS`) to the records
/// `pick` takes.
fn follow<T>(r: &Response, name: &str, pick: impl Fn(&RData) -> Option<T>) -> Found<T> {
    let first = name.to_ascii_lowercase();
    let mut cur = first.clone();
    let mut ttl = u32::MAX;
    for _ in 0..=MAX_CNAME_HOPS {
        let mut out = Vec::new();
        let mut cname = None;
        for rec in r.answers.iter().filter(|rec| rec.name == cur) {
            if let Some(v) = pick(&rec.data) {
                out.push(v);
                ttl = ttl.min(rec.ttl);
            } else if let (RData::Cname(t), None) = (&rec.data, &cname) {
                cname = Some((t.clone(), rec.ttl));
            }
        }
        if !out.is_empty() {
            return Found::Records(out, ttl);
        }
        match cname {
            Some((t, _)) if t == cur => return Found::Nothing,
            Some((t, t_ttl)) => {
                ttl = ttl.min(t_ttl);
                cur = t;
            }
            None if cur == first => return Found::Nothing,
            None => return Found::Cname(cur, ttl),
        }
    }
    Found::Nothing
}

/// What `ngx_resolver_process_a` makes of the answer to an A or AAAA query: every
/// record of the asked type, whatever its owner name, in answer order (else the last
/// CNAME, to ask for next), the smallest TTL of all records; records of other types
/// are noted in `unexpected` (nginx logs each and goes on). An `Err` is nginx's message
/// for an answer it refuses: the name stays unanswered.
pub fn addresses(r: &Response, qtype: u16, unexpected: &mut Vec<u16>) -> Result<Found<IpAddr>, String> {
    let (mut addrs, mut cname, mut ttl) = (Vec::new(), None, u32::MAX);
    for rec in &r.answers {
        if rec.class != CLASS_IN {
            return Err(format!("unexpected RR class {} in DNS response", rec.class));
        }
        ttl = ttl.min(rec.ttl);
        match &rec.data {
            RData::A(a) if qtype == TYPE_A => addrs.push(IpAddr::V4(*a)),
            RData::Aaaa(a) if qtype == TYPE_AAAA => addrs.push(IpAddr::V6(*a)),
            RData::A(_) => return Err("unexpected A record in DNS response".into()),
            RData::Aaaa(_) => return Err("unexpected AAAA record in DNS response".into()),
            RData::BadAddress(TYPE_A) if qtype == TYPE_A => return Err("invalid A record in DNS response".into()),
            RData::BadAddress(TYPE_A) => return Err("unexpected A record in DNS response".into()),
            RData::BadAddress(_) if qtype == TYPE_AAAA => return Err("invalid AAAA record in DNS response".into()),
            RData::BadAddress(_) => return Err("unexpected AAAA record in DNS response".into()),
            RData::Cname(t) => cname = Some(t.clone()),
            RData::Other(TYPE_DNAME) => {}
            RData::Other(t) => unexpected.push(*t),
            RData::Srv { .. } => unexpected.push(TYPE_SRV),
        }
    }
    Ok(match (addrs.is_empty(), cname) {
        (false, _) => Found::Records(addrs, ttl),
        (true, Some(c)) if c != r.qname => Found::Cname(c, ttl),
        _ => Found::Nothing,
    })
}

/// An SRV record: (priority, weight, port, target).
pub type Srv = (u16, u16, u16, String);

/// The SRV records of `name` in an answer.
pub fn services(r: &Response, name: &str) -> Found<Srv> {
    follow(r, name, |d| match d {
        RData::Srv { priority, weight, port, target } => Some((*priority, *weight, *port, target.clone())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `q` with the given answer records (already encoded).
    fn response(q: &[u8], rcode: u8, answers: &[Vec<u8>]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for a in answers {
            m.extend_from_slice(a);
        }
        m
    }

    fn rr(name: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut r = name.to_vec();
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    const AT_QNAME: [u8; 2] = [0xc0, 0x0c];

    /// A name with bytes beyond ASCII (an SNI name from a client, say) comes back as
    /// the same name it was asked as, so its answer is taken (nginx compares bytes).
    #[test]
    fn names_beyond_ascii_answer_their_question() {
        let q = query(7, "\u{e9}.Example", TYPE_A).unwrap();
        assert_eq!(&q[12..23], b"\x02\xc3\xa9\x07Example");
        let m = response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 60, &[127, 0, 0, 1])]);
        let r = parse(&m).expect("parses");
        assert_eq!(r.qname, "\u{e9}.example");
        assert_eq!(r.answers[0].name, "\u{e9}.example");
    }

    #[test]
    fn query_wire_form() {
        let q = query(0x1234, "a.Example.com", TYPE_A).unwrap();
        assert_eq!(
            q,
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x07Example\x03com\x00\x00\x01\x00\x01".to_vec()
        );
        assert!(query(1, "a..b", TYPE_A).is_none());
        // As ngx_resolver_create_name_query: the caller dropped one trailing dot, a second
        // is an empty label; a label up to 255 bytes goes out as it is.
        assert!(query(1, "a.b.", TYPE_A).is_none());
        assert!(query(1, "", TYPE_A).is_none());
        assert_eq!(query(1, &"x".repeat(64), TYPE_A).map(|q| q[12]), Some(64));
        assert!(query(1, &"x".repeat(256), TYPE_A).is_none());
        // nginx puts no limit on a name's length (RFC 1035's 255 bytes is not checked).
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(query(1, &long, TYPE_A).map(|q| q.len()), Some(12 + 261 + 4), "260 bytes on the wire");
    }

    #[test]
    fn addresses_in_order_with_cname_and_min_ttl() {
        let q = query(7, "www.example.com", TYPE_A).unwrap();
        // www -> CNAME web.example.com (pointer into the question for "example.com")
        let mut cname = vec![3, b'w', b'e', b'b', 0xc0, 16];
        let m = {
            let mut answers = vec![rr(&AT_QNAME, TYPE_CNAME, 300, &cname)];
            // the CNAME's rdata starts at: header+question (q.len()) + name 2 + 10
            let web_at = q.len() + 12;
            let web = [0xc0 | (web_at >> 8) as u8, web_at as u8];
            answers.push(rr(&web, TYPE_A, 60, &[127, 0, 0, 2]));
            answers.push(rr(&web, TYPE_A, 90, &[127, 0, 0, 1]));
            response(&q, 0, &answers)
        };
        let r = parse(&m).unwrap();
        assert_eq!((r.id, r.rcode, r.truncated, r.qtype), (7, 0, false, TYPE_A));
        assert_eq!(r.qname, "www.example.com");
        assert_eq!(r.answers[0].data, RData::Cname("web.example.com".into()));
        let want = vec![IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 1])];
        let mut other = Vec::new();
        assert_eq!(addresses(&r, TYPE_A, &mut other), Ok(Found::Records(want, 60)));
        // A records in the answer to an AAAA query: nginx refuses the answer.
        assert_eq!(addresses(&r, TYPE_AAAA, &mut other), Err("unexpected A record in DNS response".into()));
        assert!(other.is_empty());
        cname.clear();
    }

    #[test]
    fn nothing_nxdomain_truncated() {
        let q = query(9, "nx.example.com", TYPE_A).unwrap();
        let r = parse(&response(&q, NXDOMAIN, &[])).unwrap();
        assert_eq!(r.rcode, NXDOMAIN);
        assert_eq!(addresses(&r, TYPE_A, &mut Vec::new()), Ok(Found::Nothing));
        let mut m = response(&q, 0, &[]);
        m[2] |= 0x02;
        assert!(parse(&m).unwrap().truncated);
    }

    #[test]
    fn hostile_answers_are_refused() {
        let q = query(1, "a.example.com", TYPE_A).unwrap();
        // A pointer to itself, and a pointer forward.
        let mut m = response(&q, 0, &[]);
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        let at = m.len();
        m.extend_from_slice(&[0xc0 | (at >> 8) as u8, at as u8]);
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&m), Err(Error::Name));
        // Two names pointing at each other: the second pointer does not go lower.
        let mut m = response(&q, 0, &[]);
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        let a = m.len();
        m.extend_from_slice(&[1, b'x', 0xc0 | ((a + 4) >> 8) as u8, (a + 4) as u8]);
        m.extend_from_slice(&[1, b'y', 0xc0 | (a >> 8) as u8, a as u8]);
        assert!(parse(&m).is_err());
        // Truncated in the middle of a record; an A record with 3 bytes of data.
        let full = response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 1, &[1, 2, 3, 4])]);
        for cut in 12..full.len() {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
        // (The A record of 3 bytes is read, and refused as nginx refuses it.)
        let short_a = parse(&response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 1, &[1, 2, 3])])).unwrap();
        assert_eq!(addresses(&short_a, TYPE_A, &mut Vec::new()), Err("invalid A record in DNS response".into()));
        // A label with a dot in it; an extended label type; a query instead of a response.
        let mut m = q.clone();
        m[2] = 0x81;
        m[16] = b'.';
        assert_eq!(parse(&m), Err(Error::Name));
        let mut m = response(&q, 0, &[]);
        m[12] = 0x41;
        assert_eq!(parse(&m), Err(Error::Name));
        assert_eq!(parse(&q), Err(Error::Header));
        // A name longer than 255 bytes through pointers (five 63-byte labels, each
        // pointing at the one before, kept in the data of an unknown record type) is
        // read, as nginx's ngx_resolver_copy reads it.
        let mut m = response(&q, 0, &[]);
        m[6..8].copy_from_slice(&2u16.to_be_bytes());
        let data_at = m.len() + 12;
        let mut blobs = Vec::new();
        let mut prev: Option<usize> = None;
        let mut starts = Vec::new();
        for _ in 0..5 {
            let s = data_at + blobs.len();
            starts.push(s);
            blobs.push(63);
            blobs.extend_from_slice(&[b'a'; 63]);
            match prev {
                Some(p) => blobs.extend_from_slice(&[0xc0 | (p >> 8) as u8, p as u8]),
                None => blobs.push(0),
            }
            prev = Some(s);
        }
        m.extend_from_slice(&rr(&AT_QNAME, 99, 1, &blobs));
        let last = prev.unwrap();
        m.extend_from_slice(&rr(&[0xc0 | (last >> 8) as u8, last as u8], TYPE_A, 1, &[1, 2, 3, 4]));
        let r = parse(&m).expect("a 320-byte name");
        assert_eq!(r.answers[1].name, vec!["a".repeat(63); 5].join("."));
        assert_eq!(starts.len(), 5);
        // 128 labels and pointers are read per name at most (nginx: "compression
        // pointers loop in DNS response" past them).
        for (labels, ok) in [(127, true), (128, false)] {
            let mut m = response(&q, 0, &[]);
            m[6..8].copy_from_slice(&1u16.to_be_bytes());
            let owner: Vec<u8> = (0..labels).flat_map(|_| [1u8, b'a']).chain([0]).collect();
            m.extend_from_slice(&rr(&owner, TYPE_A, 1, &[1, 2, 3, 4]));
            assert_eq!(parse(&m).is_ok(), ok, "{labels} labels");
        }
    }

    #[test]
    fn cname_loops_and_chains() {
        let q = query(1, "a.example.com", TYPE_A).unwrap();
        // a -> a: nothing.
        let r = parse(&response(&q, 0, &[rr(&AT_QNAME, TYPE_CNAME, 5, &AT_QNAME)])).unwrap();
        assert_eq!(addresses(&r, TYPE_A, &mut Vec::new()), Ok(Found::Nothing));
        // A chain longer than MAX_CNAME_HOPS: c0 -> c1 -> ... each in the answer.
        let names: Vec<String> = (0..MAX_CNAME_HOPS + 3).map(|i| format!("c{i}")).collect();
        let mut answers = vec![rr(&AT_QNAME, TYPE_CNAME, 5, &[2, b'c', b'0', 0])];
        for w in names.windows(2) {
            let mut owner = vec![w[0].len() as u8];
            owner.extend_from_slice(w[0].as_bytes());
            owner.push(0);
            let mut target = vec![w[1].len() as u8];
            target.extend_from_slice(w[1].as_bytes());
            target.push(0);
            answers.push(rr(&owner, TYPE_CNAME, 5, &target));
        }
        let r = parse(&response(&q, 0, &answers)).unwrap();
        // nginx asks next for the target of the answer's last CNAME (its recursion limit
        // bounds the chain).
        let last = names.last().unwrap().clone();
        assert_eq!(addresses(&r, TYPE_A, &mut Vec::new()), Ok(Found::Cname(last, 5)));
    }

    #[test]
    fn srv_records() {
        let q = query(3, "_http._tcp.example.com", TYPE_SRV).unwrap();
        let mut rdata = vec![0, 10, 0, 5, 0x1f, 0x90];
        rdata.extend_from_slice(&[2, b'b', b'1', 0xc0, 23]);
        let r = parse(&response(&q, 0, &[rr(&AT_QNAME, TYPE_SRV, 30, &rdata)])).unwrap();
        assert_eq!(
            services(&r, "_http._tcp.example.com"),
            Found::Records(vec![(10, 5, 8080, "b1.example.com".to_string())], 30)
        );
        assert_eq!(services(&r, "other.example.com"), Found::Nothing);
    }
}
