//! DNS messages (RFC 1035): the queries the resolver sends, and the answers, which
//! arrive from the network and are treated as hostile: every read is bounds-checked
//! and every loop bounded.
//!
//! An A or AAAA answer is read as nginx reads it (`addresses`, `copy_name`: what nginx
//! takes and drops, and its messages, are what clients and logs see). An SRV answer's
//! records are read strictly (`records`): a compression pointer must point before every
//! place the name was read from so far, labels are at most 63 bytes, extended label
//! types are refused, and at most `MAX_RECORDS` records are looked at.

use std::fmt;
use std::net::IpAddr;

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
    /// `copy_name`'s error, in nginx's words.
    Copy(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Short => "short DNS response",
            Error::Header => "invalid DNS response header",
            Error::Name => "invalid name in DNS response",
            Error::Rdata => "invalid record in DNS response",
            Error::Copy(e) => e,
        })
    }
}

/// What `records` reads of a record's data: what an SRV lookup uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    Cname(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    /// A record of another type, or of another class than IN.
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Lowercase, without the trailing dot; each byte of the wire form is one char
    /// (bytes above 0x7f become U+0080..U+00FF), so nothing is lost or merged.
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

/// A response's header and question; its records are read by `addresses` (A and AAAA,
/// as nginx reads them) or `records` (SRV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    pub qname: String,
    pub qtype: u16,
    /// Where the answer section begins, and how many records it has.
    pub ans: usize,
    pub nan: usize,
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

/// Read a response's header and question.
pub fn parse(m: &[u8]) -> Result<Response, Error> {
    let id = u16_at(m, 0)?;
    let flags = u16_at(m, 2)?;
    let (qd, an) = (u16_at(m, 4)?, u16_at(m, 6)?);
    // QR set, opcode QUERY, one question.
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || qd != 1 {
        return Err(Error::Header);
    }
    // The question's name: labels only (the caller checked it as nginx does), read as
    // nginx reads it (ngx_resolver_copy: 128 labels at most, a dot in a label kept).
    let mut p = 12;
    loop {
        let len = *m.get(p).ok_or(Error::Short)?;
        if len & 0xc0 != 0 {
            return Err(Error::Name);
        }
        p += 1 + usize::from(len);
        if len == 0 {
            break;
        }
    }
    let qname = copy_name(m, 12).map_err(Error::Copy)?;
    let qtype = u16_at(m, p)?;
    u16_at(m, p + 2)?;
    Ok(Response {
        id,
        rcode: (flags & 0x000f) as u8,
        truncated: flags & 0x0200 != 0,
        qname,
        qtype,
        ans: p + 4,
        nan: usize::from(an),
    })
}

/// Every record of the answer section, strictly read (owner names, data lengths and
/// names in the data checked); records of other classes are kept with their data
/// unread.
pub fn records(m: &[u8], r: &Response) -> Result<Vec<Record>, Error> {
    let mut p = r.ans;
    let mut answers = Vec::new();
    for _ in 0..r.nan.min(MAX_RECORDS) {
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
        m.get(start..start + len).ok_or(Error::Short)?;
        p = start + len;
        if class != CLASS_IN {
            answers.push(Record { name, ttl, data: RData::Other(rtype) });
            continue;
        }
        let data = match rtype {
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
        answers.push(Record { name, ttl, data });
    }
    Ok(answers)
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

/// Follow `name` through the CNAMEs of `answers` (at most `MAX_CNAME_HOPS`) to the
/// records `pick` takes.
fn follow<T>(answers: &[Record], name: &str, pick: impl Fn(&RData) -> Option<T>) -> Found<T> {
    let first = name.to_ascii_lowercase();
    let mut cur = first.clone();
    let mut ttl = u32::MAX;
    for _ in 0..=MAX_CNAME_HOPS {
        let mut out = Vec::new();
        let mut cname = None;
        for rec in answers.iter().filter(|rec| rec.name == cur) {
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

/// The records of an A or AAAA answer that nginx uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Every address of the asked type, whatever its owner name, in answer order.
    pub addrs: Vec<IpAddr>,
    /// Where the data of the answer's last CNAME begins: nginx reads that name
    /// (`copy_name`) only when no address came.
    pub cname_at: Option<usize>,
}

/// What `addresses` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Records of other types than address, alias and DNAME, in order: nginx logs each
    /// ("unexpected RR type N in DNS response") as it comes, before the outcome's error.
    pub unexpected: Vec<u16>,
    /// The smallest TTL read, even of an answer refused part way (nginx lowers its
    /// node's TTL record by record).
    pub ttl: u32,
    /// The records, or the message nginx logs when it drops the answer (the name stays
    /// asked).
    pub outcome: Result<Addresses, String>,
}

/// `ngx_resolver_process_a`'s reading of an A or AAAA answer (`r.rcode` 0), step for
/// step, since broken and hostile servers see the difference: owner names are stepped
/// over, never read (a byte with either top bit set is taken for a 2-byte pointer; a
/// name ending in a zero byte must be 2 bytes at least), a record's 10-byte header must
/// end before the message does (a record ending the message with no data is "short",
/// nginx's off-by-one), only an address's data is checked against the message end, and
/// no name is read here. Every read is bounds-checked.
pub fn addresses(m: &[u8], r: &Response) -> Scan {
    let mut scan = Scan { unexpected: Vec::new(), ttl: u32::MAX, outcome: Ok(Addresses::default()) };
    let mut found = Addresses::default();
    let short = || Err("short DNS response".to_string());
    let n = m.len();
    let mut i = r.ans;
    for _ in 0..r.nan {
        let start = i;
        let mut pointer = false;
        loop {
            let Some(&b) = m.get(i) else {
                scan.outcome = short();
                return scan;
            };
            if b & 0xc0 != 0 {
                i += 2;
                pointer = true;
                break;
            }
            i += 1;
            if b == 0 {
                break;
            }
            i += usize::from(b);
        }
        if !pointer && i - start < 2 {
            scan.outcome = Err("invalid name in DNS response".into());
            return scan;
        }
        if i + 10 >= n {
            scan.outcome = short();
            return scan;
        }
        let at = |k: usize| u16::from_be_bytes([m[i + k], m[i + k + 1]]);
        let (rtype, class, len) = (at(0), at(2), usize::from(at(8)));
        if class != CLASS_IN {
            scan.outcome = Err(format!("unexpected RR class {class} in DNS response"));
            return scan;
        }
        // A TTL with the top bit set is negative to nginx's int32_t: zero.
        let ttl = u32::from_be_bytes([m[i + 4], m[i + 5], m[i + 6], m[i + 7]]);
        scan.ttl = scan.ttl.min(if ttl & 0x8000_0000 != 0 { 0 } else { ttl });
        i += 10;
        let (kind, size) = match rtype {
            TYPE_A => ("A", 4),
            TYPE_AAAA => ("AAAA", 16),
            TYPE_CNAME => {
                found.cname_at = Some(i);
                ("", 0)
            }
            TYPE_DNAME => ("", 0),
            t => {
                scan.unexpected.push(t);
                ("", 0)
            }
        };
        if size > 0 {
            if rtype != r.qtype {
                scan.outcome = Err(format!("unexpected {kind} record in DNS response"));
                return scan;
            }
            if len != size {
                scan.outcome = Err(format!("invalid {kind} record in DNS response"));
                return scan;
            }
            let Some(data) = m.get(i..i + size) else {
                scan.outcome = short();
                return scan;
            };
            found.addrs.push(match <[u8; 4]>::try_from(data) {
                Ok(v4) => IpAddr::from(v4),
                Err(_) => IpAddr::from(<[u8; 16]>::try_from(data).unwrap_or_default()),
            });
        }
        i += len;
    }
    scan.outcome = Ok(found);
    scan
}

/// `ngx_resolver_copy`: the name at `at`, lowercased, as nginx reads a CNAME's data
/// when it follows it: compression pointers may point anywhere in the message, a
/// label may hold a dot, 128 labels and pointers at most; an error is nginx's message.
pub fn copy_name(m: &[u8], at: usize) -> Result<String, &'static str> {
    const OUT: &str = "name is out of DNS response";
    let mut name: Vec<u8> = Vec::new();
    let mut p = at;
    for _ in 0..MAX_NAME_STEPS {
        let Some(&b) = m.get(p) else { return Err(OUT) };
        p += 1;
        if b == 0 {
            return Ok(crate::core::conf::parser::bytes_to_text(&name));
        }
        if b & 0xc0 != 0 {
            if b & 0xc0 != 0xc0 {
                return Err("invalid label type in DNS response");
            }
            let Some(&low) = m.get(p) else { return Err(OUT) };
            p = (usize::from(b & 0x3f) << 8) + usize::from(low);
        } else {
            let label = m.get(p..p + usize::from(b)).ok_or(OUT)?;
            if !name.is_empty() {
                name.push(b'.');
            }
            name.extend(label.iter().map(u8::to_ascii_lowercase));
            p += usize::from(b);
        }
        if p >= m.len() {
            return Err(OUT);
        }
    }
    Err("compression pointers loop in DNS response")
}

/// An SRV record: (priority, weight, port, target).
pub type Srv = (u16, u16, u16, String);

/// The SRV records of `name` in an answer.
pub fn services(m: &[u8], r: &Response, name: &str) -> Result<Found<Srv>, Error> {
    Ok(follow(&records(m, r)?, name, |d| match d {
        RData::Srv { priority, weight, port, target } => Some((*priority, *weight, *port, target.clone())),
        _ => None,
    }))
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
        assert_eq!(records(&m, &r).expect("records")[0].name, "\u{e9}.example");
        assert_eq!(copy_name(&m, 12), Ok("\u{e9}.example".into()));
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

    fn addrs(m: &[u8]) -> Scan {
        addresses(m, &parse(m).expect("header and question"))
    }

    fn found(addrs: Vec<IpAddr>, cname_at: Option<usize>) -> Result<Addresses, String> {
        Ok(Addresses { addrs, cname_at })
    }

    #[test]
    fn addresses_in_order_with_cname_and_min_ttl() {
        let q = query(7, "www.example.com", TYPE_A).unwrap();
        // www -> CNAME web.example.com (a pointer into the question for "example.com"),
        // then two addresses under the alias's name.
        let cname = [3, b'w', b'e', b'b', 0xc0, 16];
        let web_at = q.len() + 12;
        let web = [0xc0 | (web_at >> 8) as u8, web_at as u8];
        let answers = [
            rr(&AT_QNAME, TYPE_CNAME, 300, &cname),
            rr(&web, TYPE_A, 60, &[127, 0, 0, 2]),
            rr(&web, TYPE_A, 90, &[127, 0, 0, 1]),
        ];
        let m = response(&q, 0, &answers);
        let r = parse(&m).unwrap();
        assert_eq!((r.id, r.rcode, r.truncated, r.qtype, r.nan), (7, 0, false, TYPE_A, 3));
        assert_eq!((r.qname.as_str(), r.ans), ("www.example.com", q.len()));
        let want = vec![IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 1])];
        let scan = addresses(&m, &r);
        assert_eq!(scan, Scan { unexpected: vec![], ttl: 60, outcome: found(want, Some(web_at)) });
        assert_eq!(copy_name(&m, web_at), Ok("web.example.com".into()));
        // A records in the answer to an AAAA query: nginx drops the answer.
        let aaaa = Response { qtype: TYPE_AAAA, ..r };
        assert_eq!(addresses(&m, &aaaa).outcome, Err("unexpected A record in DNS response".into()));
    }

    #[test]
    fn nothing_nxdomain_truncated() {
        let q = query(9, "nx.example.com", TYPE_A).unwrap();
        let m = response(&q, NXDOMAIN, &[]);
        let r = parse(&m).unwrap();
        assert_eq!((r.rcode, r.nan), (NXDOMAIN, 0));
        assert_eq!(addresses(&m, &r).outcome, found(vec![], None));
        let mut m = response(&q, 0, &[]);
        m[2] |= 0x02;
        assert!(parse(&m).unwrap().truncated);
    }

    /// ngx_resolver_process_a's reading, case by case (each checked side by side with
    /// nginx 1.22.1).
    #[test]
    fn addresses_are_read_as_nginx_reads_them() {
        let q = query(1, "a.example.com", TYPE_A).unwrap();
        let ip = [127, 0, 0, 3];
        let one = |owner: &[u8]| response(&q, 0, &[rr(owner, TYPE_A, 30, &ip)]);
        let three = vec![IpAddr::from(ip)];
        // Owner names are stepped over: a pointer to itself, or past the end, a label
        // type 01 or 10, a label with a dot: all taken.
        let at = q.len();
        for owner in [&[0xc0 | (at >> 8) as u8, at as u8][..], &[0xff, 0xff], &[0x41, 0], &[0x80, 0], b"\x03a.b\x00"] {
            assert_eq!(addrs(&one(owner)).outcome, found(three.clone(), None), "{owner:?}");
        }
        // The root name as owner is refused; so is a label running past the end.
        assert_eq!(addrs(&one(&[0])).outcome, Err("invalid name in DNS response".into()));
        let mut m = one(&AT_QNAME);
        m.truncate(at);
        m.extend_from_slice(&[9, b'a']);
        assert_eq!(addrs(&m).outcome, Err("short DNS response".into()));
        // A record whose header ends the message (no data) is "short" (nginx's
        // `i + sizeof(ngx_resolver_an_t) >= n`), one whose data runs past the end is not
        // (only an address's data is checked), and its type is logged.
        let last_empty = response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 30, &ip), rr(&AT_QNAME, 13, 30, &[])]);
        assert_eq!(addrs(&last_empty).outcome, Err("short DNS response".into()));
        let mut past = response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 30, &ip), rr(&AT_QNAME, 13, 30, &[1])]);
        let len_at = past.len() - 3;
        past[len_at..len_at + 2].copy_from_slice(&50u16.to_be_bytes());
        assert_eq!(addrs(&past), Scan { unexpected: vec![13], ttl: 30, outcome: found(three.clone(), None) });
        // An address of the wrong length, or cut by the end.
        let m = response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 30, &[1, 2, 3])]);
        assert_eq!(addrs(&m).outcome, Err("invalid A record in DNS response".into()));
        let mut m = one(&AT_QNAME);
        m.truncate(m.len() - 2);
        assert_eq!(addrs(&m).outcome, Err("short DNS response".into()));
        // Types logged in order up to the error; the TTLs read count (the failing record's too); another
        // class drops the answer; a negative TTL is 0; DNAME is passed over silently.
        let m =
            response(&q, 0, &[rr(&AT_QNAME, 16, 7, b"\x02hi"), rr(&AT_QNAME, 99, 9, &[]), rr(&AT_QNAME, 1, 5, &[1])]);
        assert_eq!(
            addrs(&m),
            Scan { unexpected: vec![16, 99], ttl: 5, outcome: Err("invalid A record in DNS response".into()) }
        );
        let mut m = response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 30, &ip), rr(&AT_QNAME, TYPE_A, 30, &ip)]);
        let class_at = m.len() - 12;
        m[class_at + 1] = 3;
        assert_eq!(addrs(&m).outcome, Err("unexpected RR class 3 in DNS response".into()));
        let m = response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 0x8000_0000, &ip), rr(&AT_QNAME, TYPE_DNAME, 9, &[0, 0])]);
        assert_eq!(addrs(&m), Scan { unexpected: vec![], ttl: 0, outcome: found(three.clone(), None) });
        // A CNAME's data is not read here: a broken one beside an address is no error,
        // and the last CNAME is the one nginx would follow.
        let m = response(&q, 0, &[rr(&AT_QNAME, TYPE_CNAME, 5, &[0xc0, 0xff]), rr(&AT_QNAME, TYPE_A, 30, &ip)]);
        assert_eq!(addrs(&m).outcome, found(three, Some(q.len() + 12)));
        let m = response(
            &q,
            0,
            &[rr(&AT_QNAME, TYPE_CNAME, 5, &[1, b'x', 0]), rr(&AT_QNAME, TYPE_CNAME, 5, &[1, b'y', 0])],
        );
        let at = q.len() + 15 + 12;
        assert_eq!(addrs(&m).outcome, found(vec![], Some(at)));
        assert_eq!(copy_name(&m, at), Ok("y".into()));
    }

    /// ngx_resolver_copy: where a CNAME's target may point, and its error messages.
    #[test]
    fn names_are_copied_as_nginx_copies_them() {
        let q = query(1, "a.example.com", TYPE_A).unwrap();
        let with = |rdata: &[u8]| response(&q, 0, &[rr(&AT_QNAME, TYPE_CNAME, 5, rdata)]);
        let at = q.len() + 12;
        assert_eq!(copy_name(&with(&[0x41, 0]), at), Err("invalid label type in DNS response"));
        assert_eq!(copy_name(&with(&[0x80, 0]), at), Err("invalid label type in DNS response"));
        assert_eq!(copy_name(&with(&[0xc0, 0xff]), at), Err("name is out of DNS response"));
        assert_eq!(copy_name(&with(&[0x32, b'a', b'b']), at), Err("name is out of DNS response"));
        let self_ptr = [0xc0 | (at >> 8) as u8, at as u8];
        assert_eq!(copy_name(&with(&self_ptr), at), Err("compression pointers loop in DNS response"));
        assert_eq!(copy_name(&with(&[0]), at), Ok(String::new()));
        assert_eq!(copy_name(&with(b"\x03Y.Z\x00"), at), Ok("y.z".into()));
        // A pointer forward, to a name kept in a later record's data.
        let fwd = at + 2 + 12;
        let m = response(
            &q,
            0,
            &[
                rr(&AT_QNAME, TYPE_CNAME, 5, &[0xc0 | (fwd >> 8) as u8, fwd as u8]),
                rr(&AT_QNAME, 16, 5, b"\x01y\x04TEST\x00"),
            ],
        );
        assert_eq!(copy_name(&m, at), Ok("y.test".into()));
        // A name longer than 255 bytes through pointers (five 63-byte labels, each
        // pointing at the one before) is read; 128 labels and pointers at most.
        let mut m = with(&[]);
        let mut prev: Option<usize> = None;
        for _ in 0..5 {
            let s = m.len();
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
            match prev {
                Some(p) => m.extend_from_slice(&[0xc0 | (p >> 8) as u8, p as u8]),
                None => m.push(0),
            }
            prev = Some(s);
        }
        assert_eq!(copy_name(&m, prev.unwrap()), Ok(vec!["a".repeat(63); 5].join(".")));
        for (labels, ok) in [(127, true), (128, false)] {
            let name: Vec<u8> = (0..labels).flat_map(|_| [1u8, b'a']).chain([0]).collect();
            assert_eq!(copy_name(&with(&name), at).is_ok(), ok, "{labels} labels");
        }
    }

    /// Random answers after a real question: read, never a panic.
    #[test]
    fn random_answers_never_panic() {
        let q = query(1, "a.example.com", TYPE_A).unwrap();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50_000 {
            let mut m = response(&q, 0, &[]);
            m[7] = (next() % 6) as u8;
            for _ in 0..next() % 48 {
                // Mostly small bytes and pointer bytes, so names and lengths are met.
                let b = next();
                m.push(if b & 3 == 0 { 0xc0 | (b >> 8) as u8 & 0x3f } else { (b >> 8) as u8 % 20 });
            }
            let Ok(r) = parse(&m) else { continue };
            let _ = addresses(&m, &r);
            let _ = records(&m, &r);
            for at in 0..m.len() + 2 {
                let _ = copy_name(&m, at);
            }
        }
    }

    /// The strict reading of an SRV answer's records.
    #[test]
    fn records_are_read_strictly() {
        let q = query(1, "a.example.com", TYPE_A).unwrap();
        let strict = |m: &[u8]| parse(m).and_then(|r| records(m, &r));
        // A pointer to itself, and a pointer forward.
        let mut m = response(&q, 0, &[]);
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        let at = m.len();
        m.extend_from_slice(&[0xc0 | (at >> 8) as u8, at as u8]);
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(strict(&m), Err(Error::Name));
        // Two names pointing at each other: the second pointer does not go lower.
        let mut m = response(&q, 0, &[]);
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        let a = m.len();
        m.extend_from_slice(&[1, b'x', 0xc0 | ((a + 4) >> 8) as u8, (a + 4) as u8]);
        m.extend_from_slice(&[1, b'y', 0xc0 | (a >> 8) as u8, a as u8]);
        assert!(strict(&m).is_err());
        // Truncated in the middle of a record.
        let full = response(&q, 0, &[rr(&AT_QNAME, TYPE_A, 1, &[1, 2, 3, 4])]);
        for cut in 12..full.len() {
            assert!(strict(&full[..cut]).is_err(), "cut at {cut}");
        }
        // A label with a dot in it (in the question: read as nginx reads it); an extended
        // label type; a query instead of a response; a question of 128 labels (nginx's
        // message).
        let mut m = response(&q, 0, &[]);
        m[16] = b'.';
        assert_eq!(parse(&m).map(|r| r.qname), Ok("a.e.ample.com".into()));
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&[3, b'x', b'.', b'y', 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(strict(&m), Err(Error::Name));
        let mut m = response(&q, 0, &[]);
        m[12] = 0x41;
        assert_eq!(parse(&m), Err(Error::Name));
        assert_eq!(parse(&q), Err(Error::Header));
        let long = vec!["b"; 128].join(".");
        let m = response(&query(1, &long, TYPE_A).unwrap(), 0, &[]);
        assert_eq!(parse(&m), Err(Error::Copy("compression pointers loop in DNS response")));
        let m = response(&query(1, &long[2..], TYPE_A).unwrap(), 0, &[]);
        assert!(parse(&m).is_ok());
    }

    #[test]
    fn srv_records() {
        let q = query(3, "_http._tcp.example.com", TYPE_SRV).unwrap();
        let mut rdata = vec![0, 10, 0, 5, 0x1f, 0x90];
        rdata.extend_from_slice(&[2, b'b', b'1', 0xc0, 23]);
        let m = response(&q, 0, &[rr(&AT_QNAME, TYPE_SRV, 30, &rdata)]);
        let r = parse(&m).unwrap();
        assert_eq!(
            services(&m, &r, "_http._tcp.example.com"),
            Ok(Found::Records(vec![(10, 5, 8080, "b1.example.com".to_string())], 30))
        );
        assert_eq!(services(&m, &r, "other.example.com"), Ok(Found::Nothing));
    }
}
