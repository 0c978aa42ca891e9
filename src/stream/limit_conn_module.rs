//! ngx_stream_limit_conn_module: `limit_conn_zone KEY zone=NAME:SIZE`, `limit_conn ZONE N`,
//! `limit_conn_log_level`, `limit_conn_dry_run`, `$limit_conn_status`; preaccess phase.
//!
//! The counts live in the zone's shared memory, so every worker sees them: a hash table
//! of entries (key, count) in fixed 64-byte chunks. Whether a new key fits is decided by
//! an account of the pages nginx's slab allocator would use for the same zone (core::slab),
//! so a zone holds the keys nginx's would; one that does not fit is refused as nginx
//! refuses it. A session's counts are released when it ends (a session cleanup).

use std::rc::Rc;

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value::{self, Setting};
use crate::core::conf::{Cmd, ConfResult, Level};
use crate::core::shm::{Shm, SpinGuard};
use crate::core::slab::{get_u32, put_u32, Slab};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::{Flow, Phase, PhaseRegistry};
use crate::stream::session::{status, Cx, SessionCore};
use crate::stream::variables::{Complex, Variables};

pub struct LimitConn;

pub const PASSED: u8 = 1;
pub const REJECTED: u8 = 2;
pub const REJECTED_DRY_RUN: u8 = 3;

/// nginx refuses zones smaller than 8 pages.
const MIN_ZONE: usize = 8 * 4096;
/// nginx keeps a key's length in one byte.
const MAX_KEY: usize = 255;

impl LimitConnMain {
    /// The key text of zone `name` (nginx compares it when a reload keeps the zone).
    pub fn zone_key(&self, name: &str) -> Option<&str> {
        self.zones.iter().find(|z| z.name == name).map(|z| z.key_text.as_str())
    }
}

/// A `limit_conn_zone`: its name, key, and index among the cycle's shared zones.
pub struct ZoneDef {
    name: String,
    key: Complex,
    key_text: String,
    shm: usize,
}

#[derive(Default)]
pub struct LimitConnMain {
    zones: Vec<ZoneDef>,
}

#[derive(Clone)]
struct Limit {
    name: String,
    conn: u32,
    /// Index in `LimitConnMain::zones`, found at merge (a zone may be declared after
    /// the `limit_conn` that uses it).
    zone: Option<usize>,
}

#[derive(Default)]
pub struct LimitConnSrv {
    limits: Vec<Limit>,
    log_level: Setting<Level>,
    dry_run: Setting<bool>,
}

fn limit_conn_zone(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let key_text = cmd.arg(0).to_string();
    let key = Complex::compile(&key_text, cmd, &mut cx.vars)?;
    let mut zone: Option<(String, usize)> = None;
    for a in cmd.args.iter().skip(1) {
        let Some(rest) = a.strip_prefix("zone=") else {
            return Err(cmd.invalid_parameter(a));
        };
        let Some((name, size)) = rest.split_once(':') else {
            return Err(cmd.err(format!("invalid zone size \"{}\"", a)));
        };
        let size = value::parse_size(size).ok_or_else(|| cmd.err(format!("invalid zone size \"{}\"", a)))?;
        if size < MIN_ZONE {
            return Err(cmd.err(format!("zone \"{}\" is too small", a)));
        }
        zone = Some((name.to_string(), size));
    }
    let (name, size) = match zone {
        Some((n, s)) if !n.is_empty() => (n, s),
        _ => return Err(cmd.err(format!("\"{}\" must have \"zone\" parameter", cmd.name))),
    };
    cx.add_zone(&name, Some(size), cmd, "limit_conn")?;
    if let Some(z) = cx.main.limit_conn.zones.iter().find(|z| z.name == name) {
        return Err(cmd.err(format!("{} \"{}\" is already bound to key \"{}\"", cmd.name, name, z.key_text)));
    }
    let shm = cx.zones.iter().position(|z| z.0 == name).unwrap_or(usize::MAX);
    cx.main.limit_conn.zones.push(ZoneDef { name, key, key_text, shm });
    Ok(())
}

fn limit_conn(c: &mut LimitConnSrv, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let name = cmd.arg(0);
    cx.add_zone(name, None, cmd, "limit_conn")?;
    if c.limits.iter().any(|l| l.name == name) {
        return Err(cmd.duplicate());
    }
    let n = cmd.arg(1);
    let conn = value::parse_number(n)
        .filter(|v| *v > 0)
        .ok_or_else(|| cmd.err(format!("invalid number of connections \"{}\"", n)))?;
    if conn > 65535 {
        return Err(cmd.err("connection limit must be less 65536"));
    }
    c.limits.push(Limit { name: name.to_string(), conn: conn as u32, zone: None });
    Ok(())
}

fn log_level(c: &mut LimitConnSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    if c.log_level.is_set() {
        return Err(cmd.duplicate());
    }
    let v = cmd.arg(0);
    let level = match v.to_ascii_lowercase().as_str() {
        "info" => Level::Info,
        "notice" => Level::Notice,
        "warn" => Level::Warn,
        "error" => Level::Error,
        _ => return Err(cmd.err(format!("invalid value \"{}\"", v))),
    };
    c.log_level.set(cmd, level)
}

impl Module for LimitConn {
    const NAME: &'static str = "stream_limit_conn";
    type Main = LimitConnMain;
    type Srv = LimitConnSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive {
            name: "limit_conn_zone",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Take(2),
            set: Set::Main(limit_conn_zone),
        },
        Directive { name: "limit_conn", ctx: Ctx::MAIN_SRV, args: Arity::Take(2), set: Set::Srv(limit_conn) },
        Directive { name: "limit_conn_log_level", ctx: Ctx::MAIN_SRV, args: Arity::Take(1), set: Set::Srv(log_level) },
        Directive {
            name: "limit_conn_dry_run",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Flag,
            set: Set::<Self>::Srv(|c, cmd, _| c.dry_run.set_parsed(cmd, value::flag)),
        },
    ];

    fn variables(v: &mut Variables) {
        v.define_nocacheable("limit_conn_status", var_limit_conn_status, 0);
    }

    fn merge_srv(p: &LimitConnSrv, c: &mut LimitConnSrv, cx: &mut ConfCx) -> ConfResult {
        if c.limits.is_empty() {
            c.limits = p.limits.clone();
        }
        for l in &mut c.limits {
            l.zone = cx.main.limit_conn.zones.iter().position(|z| z.name == l.name);
        }
        c.log_level.merge(&p.log_level, Level::Error);
        c.dry_run.merge(&p.dry_run, false);
        Ok(())
    }

    fn postconfiguration(p: &mut PhaseRegistry) {
        p.add(Phase::Preaccess, limit_conn_handler);
    }
}

fn var_limit_conn_status(s: &mut SessionCore, _: usize, out: &mut Vec<u8>) -> bool {
    let v: &[u8] = match s.limit_conn_status {
        PASSED => b"PASSED",
        REJECTED => b"REJECTED",
        REJECTED_DRY_RUN => b"REJECTED_DRY_RUN",
        _ => return false,
    };
    out.extend_from_slice(v);
    true
}

/// A count a session holds: released when the session ends.
struct Held {
    shm: Rc<Shm>,
    entry: u32,
}

impl Held {
    fn release(self) {
        Table::with(&self.shm, 0, |t| t.release(self.entry));
    }
}

/// The counts a session holds, given back when it ends (nginx's pool cleanup). The first
/// two are kept inline, so a session under one or two limits allocates nothing for them.
#[derive(Default)]
pub struct HeldCounts {
    first: [Option<Held>; 2],
    more: Vec<Held>,
}

impl HeldCounts {
    fn push(&mut self, h: Held) {
        match self.first.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(h),
            None => self.more.push(h),
        }
    }

    /// Give every count back.
    pub fn release_all(&mut self) {
        for h in self.first.iter_mut().filter_map(Option::take) {
            h.release();
        }
        for h in self.more.drain(..) {
            h.release();
        }
    }
}

fn limit_conn_handler(s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
    // The key is built in the worker's scratch value buffer: nothing is allocated.
    let mut key = std::mem::take(&mut cx.rt.eval_buf);
    let flow = check_limits(s, &mut key);
    cx.rt.eval_buf = key;
    flow
}

fn check_limits(s: &mut SessionCore, key: &mut Vec<u8>) -> Flow {
    let srv = s.srv.clone();
    let conf = &srv.confs.limit_conn;
    if conf.limits.is_empty() {
        return Flow::Declined;
    }
    let cycle = s.cycle.clone();
    let dry_run = conf.dry_run.get();
    for limit in &conf.limits {
        let Some(zone) = limit.zone.and_then(|i| cycle.stream.limit_conn.zones.get(i)) else { continue };
        let Some(shm) = cycle.zones.get(zone.shm).filter(|z| z.name == zone.name).map(|z| z.shm.clone()) else {
            continue;
        };
        key.clear();
        zone.key.eval(s, key);
        if key.is_empty() {
            continue;
        }
        if key.len() > MAX_KEY {
            let msg = format!(
                "the value of the \"{}\" key is more than 255 bytes: \"{}\"",
                zone.key_text,
                crate::core::conf::parser::bytes_to_text(key)
            );
            s.log(Level::Error, &msg, None);
            continue;
        }
        s.limit_conn_status = PASSED;
        let hash = crc32fast::hash(key);
        let got = Table::with(&shm, zone.name.len(), |t| t.acquire(hash, key, limit.conn)).unwrap_or(Acquire::Full);
        let entry = match got {
            Acquire::Held(e) => e,
            Acquire::Limited | Acquire::Full => {
                if matches!(got, Acquire::Full) {
                    let msg = format!("ngx_slab_alloc() failed: no memory in limit_conn_zone \"{}\"", zone.name);
                    crate::core::log::error(Level::Crit, &msg, None);
                } else {
                    let level = conf.log_level.option().copied().unwrap_or(Level::Error);
                    if s.log_enabled(level) {
                        let dry = if dry_run { ", dry run," } else { "" };
                        s.log(level, &format!("limiting connections{} by zone \"{}\"", dry, zone.name), None);
                    }
                }
                s.limit_conn.release_all();
                if dry_run {
                    s.limit_conn_status = REJECTED_DRY_RUN;
                    return Flow::Declined;
                }
                s.limit_conn_status = REJECTED;
                return Flow::Finalize(status::SERVICE_UNAVAILABLE);
            }
        };
        s.limit_conn.push(Held { shm, entry });
    }
    Flow::Declined
}

/// The zone's bytes as a hash table. Layout (after the lock word, little-endian u32s):
/// a header, `nbuckets` bucket heads, then `nchunks` chunks of 64 bytes. An entry is a
/// head chunk (next entry in its bucket, hash, count, key length, the first key bytes,
/// next chunk) followed by as many continuation chunks as its key needs. Links are
/// chunk index + 1 (0 ends a list). Unused chunks form a free list, plus a frontier of
/// chunks never used since the zone was made.
struct Table<'a> {
    b: &'a mut [u8],
    nbuckets: u32,
    nchunks: u32,
    /// nginx's page accounting for the same zone: what decides whether a key fits.
    slab: Slab<'a>,
}

/// `sizeof(ngx_stream_limit_conn_shctx_t)` and the `offsetof`s before a key's bytes.
const SHCTX: usize = 64;
const NODE: usize = 36;

/// `ngx_stream_limit_conn_init_zone`'s allocations: the zone's own state, then its log
/// text (`sizeof(" in limit_conn_zone \"\"")` with its NUL, and the name).
fn init_slab(slab: &mut Slab<'_>, name_len: usize) -> Option<()> {
    slab.init()?;
    slab.alloc(SHCTX)?;
    slab.alloc(22 + name_len)?;
    Some(())
}

/// Where the table starts in the zone: the lock word is at 0.
const REGION: usize = 8;
const MAGIC: u32 = 0x4c43_5a31;
const HDR: usize = 32;
const H_MAGIC: usize = 0;
const H_NBUCKETS: usize = 4;
const H_NCHUNKS: usize = 8;
const H_FRONTIER: usize = 12;
const H_FREE: usize = 16;
const CHUNK: usize = 64;
/// Head chunk fields.
const E_NEXT: usize = 0;
const E_HASH: usize = 4;
const E_CONN: usize = 8;
const E_LEN: usize = 12;
const E_KEY: usize = 16;
/// The last 4 bytes of every chunk link to the next chunk of the key.
const C_MORE: usize = CHUNK - 4;
const HEAD_KEY: usize = C_MORE - E_KEY;
const MORE_KEY: usize = C_MORE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acquire {
    /// The count was taken: the entry's chunk index.
    Held(u32),
    /// The key is at its limit.
    Limited,
    /// No room for a new key.
    Full,
}

/// Chunks an entry with a key of `len` bytes takes.
fn chunks_for(len: usize) -> usize {
    1 + len.saturating_sub(HEAD_KEY).div_ceil(MORE_KEY)
}

/// Buckets and chunks for a region of `len` bytes: a bucket per 8 to 16 chunks (the
/// table must hold at least as many keys as nginx's slab allocator would).
fn geometry(len: usize) -> (u32, u32) {
    let avail = len.saturating_sub(HDR);
    let mut nb = 1usize;
    while nb * 2 * (8 * CHUNK) <= avail {
        nb *= 2;
    }
    let start = (HDR + 4 * nb).div_ceil(CHUNK) * CHUNK;
    let nc = len.saturating_sub(start) / CHUNK;
    (nb as u32, nc.min(u32::MAX as usize - 1) as u32)
}

impl<'a> Table<'a> {
    /// Run `f` on the zone's table under the zone's lock; the table is laid out on first
    /// use (the zone starts zeroed).
    /// `name_len` is the zone name's length (for nginx's accounting, on first use).
    fn with<R>(shm: &Shm, name_len: usize, f: impl FnOnce(&mut Table<'_>) -> Option<R>) -> Option<R> {
        let lock = shm.lock_at(0)?;
        let _g = SpinGuard::lock(lock);
        let size = shm.len();
        let b = shm.bytes(REGION, size.checked_sub(REGION)?)?;
        let mut t = Table::open(b, size, name_len)?;
        f(&mut t)
    }

    /// The table in `b`, the bytes of a zone of `size`; nginx's page accounting at
    /// its end.
    fn open(b: &'a mut [u8], size: usize, name_len: usize) -> Option<Table<'a>> {
        let pages = crate::core::slab::pages(size);
        let at = b.len().checked_sub(Slab::len_for(pages))?;
        let (b, s) = b.split_at_mut(at);
        let mut slab = Slab::new(s, pages);
        let (nbuckets, nchunks) = geometry(b.len());
        if get_u32(b, H_MAGIC)? != MAGIC || get_u32(b, H_NBUCKETS)? != nbuckets || get_u32(b, H_NCHUNKS)? != nchunks {
            b.get_mut(..HDR + 4 * nbuckets as usize)?.fill(0);
            put_u32(b, H_MAGIC, MAGIC)?;
            put_u32(b, H_NBUCKETS, nbuckets)?;
            put_u32(b, H_NCHUNKS, nchunks)?;
            init_slab(&mut slab, name_len)?;
        }
        Some(Table { b, nbuckets, nchunks, slab })
    }

    fn bucket_at(&self, hash: u32) -> usize {
        HDR + 4 * (hash & (self.nbuckets - 1)) as usize
    }

    /// The byte offset of chunk `link` (a link is index + 1).
    fn chunk(&self, link: u32) -> Option<usize> {
        if link == 0 || link > self.nchunks {
            return None;
        }
        let start = (HDR + 4 * self.nbuckets as usize).div_ceil(CHUNK) * CHUNK;
        Some(start + (link as usize - 1) * CHUNK)
    }

    fn key_eq(&self, at: usize, key: &[u8]) -> Option<bool> {
        if (get_u32(self.b, at + E_LEN)? & 0xff) as usize != key.len() {
            return Some(false);
        }
        let n = key.len().min(HEAD_KEY);
        if self.b.get(at + E_KEY..at + E_KEY + n)? != &key[..n] {
            return Some(false);
        }
        let mut rest = &key[n..];
        let mut c = at;
        while !rest.is_empty() {
            c = self.chunk(get_u32(self.b, c + C_MORE)?)?;
            let n = rest.len().min(MORE_KEY);
            if self.b.get(c..c + n)? != &rest[..n] {
                return Some(false);
            }
            rest = &rest[n..];
        }
        Some(true)
    }

    fn find(&self, hash: u32, key: &[u8]) -> Option<u32> {
        let mut link = get_u32(self.b, self.bucket_at(hash))?;
        // A bound on the walk: the chain cannot be longer than the chunks.
        for _ in 0..=self.nchunks {
            let at = self.chunk(link)?;
            if get_u32(self.b, at + E_HASH)? == hash && self.key_eq(at, key)? {
                return Some(link);
            }
            link = get_u32(self.b, at + E_NEXT)?;
        }
        None
    }

    fn alloc(&mut self) -> Option<u32> {
        let free = get_u32(self.b, H_FREE)?;
        if free != 0 {
            let at = self.chunk(free)?;
            let next = get_u32(self.b, at)?;
            put_u32(self.b, H_FREE, next)?;
            return Some(free);
        }
        let frontier = get_u32(self.b, H_FRONTIER)?;
        if frontier >= self.nchunks {
            return None;
        }
        put_u32(self.b, H_FRONTIER, frontier + 1)?;
        Some(frontier + 1)
    }

    fn free(&mut self, link: u32) -> Option<()> {
        let at = self.chunk(link)?;
        let head = get_u32(self.b, H_FREE)?;
        put_u32(self.b, at, head)?;
        put_u32(self.b, H_FREE, link)
    }

    /// Take one count of `key`, unless it already has `limit`.
    fn acquire(&mut self, hash: u32, key: &[u8], limit: u32) -> Option<Acquire> {
        if let Some(link) = self.find(hash, key) {
            let at = self.chunk(link)?;
            let conn = get_u32(self.b, at + E_CONN)?;
            if conn >= limit {
                return Some(Acquire::Limited);
            }
            put_u32(self.b, at + E_CONN, conn + 1)?;
            return Some(Acquire::Held(link));
        }
        // Room as nginx's slab allocator would find it, then the table's chunks.
        let Some(page) = self.slab.alloc(NODE + key.len()) else { return Some(Acquire::Full) };
        // A key of at most MAX_KEY bytes takes at most this many chunks.
        let mut links = [0u32; 1 + (MAX_KEY - HEAD_KEY).div_ceil(MORE_KEY)];
        let n = chunks_for(key.len());
        for i in 0..n {
            match self.alloc() {
                Some(l) => *links.get_mut(i)? = l,
                None => {
                    for &l in &links[..i] {
                        self.free(l)?;
                    }
                    self.slab.free(page)?;
                    return Some(Acquire::Full);
                }
            }
        }
        let links = links.get(..n)?;
        let head = *links.first()?;
        let at = self.chunk(head)?;
        let bucket = self.bucket_at(hash);
        put_u32(self.b, at + E_NEXT, get_u32(self.b, bucket)?)?;
        put_u32(self.b, at + E_HASH, hash)?;
        put_u32(self.b, at + E_CONN, 1)?;
        // The key's length (at most 255), and the nginx page its node would be on.
        put_u32(self.b, at + E_LEN, key.len() as u32 | page << 8)?;
        let n = key.len().min(HEAD_KEY);
        self.b.get_mut(at + E_KEY..at + E_KEY + n)?.copy_from_slice(&key[..n]);
        let mut rest = &key[n..];
        let mut prev = at;
        for &l in links.iter().skip(1) {
            put_u32(self.b, prev + C_MORE, l)?;
            let c = self.chunk(l)?;
            let n = rest.len().min(MORE_KEY);
            self.b.get_mut(c..c + n)?.copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            prev = c;
        }
        put_u32(self.b, prev + C_MORE, 0)?;
        put_u32(self.b, bucket, head)?;
        Some(Acquire::Held(head))
    }

    /// Give back one count of the entry at `link`; the last one frees the entry.
    fn release(&mut self, link: u32) -> Option<()> {
        let at = self.chunk(link)?;
        let conn = get_u32(self.b, at + E_CONN)?;
        if conn > 1 {
            return put_u32(self.b, at + E_CONN, conn - 1);
        }
        // Unlink from its bucket.
        let hash = get_u32(self.b, at + E_HASH)?;
        let next = get_u32(self.b, at + E_NEXT)?;
        let mut prev_field = self.bucket_at(hash);
        let mut cur = get_u32(self.b, prev_field)?;
        let mut steps = 0;
        while cur != link {
            let c = self.chunk(cur)?;
            prev_field = c + E_NEXT;
            cur = get_u32(self.b, prev_field)?;
            steps += 1;
            if steps > self.nchunks {
                return None;
            }
        }
        put_u32(self.b, prev_field, next)?;
        let packed = get_u32(self.b, at + E_LEN)?;
        let len = (packed & 0xff) as usize;
        let mut l = link;
        for _ in 0..chunks_for(len) {
            let c = self.chunk(l)?;
            let more = get_u32(self.b, c + C_MORE)?;
            self.free(l)?;
            l = more;
        }
        self.slab.free(packed >> 8)
    }

    #[cfg(test)]
    fn used(&self) -> u32 {
        let mut n = get_u32(self.b, H_FRONTIER).unwrap_or(0);
        let mut l = get_u32(self.b, H_FREE).unwrap_or(0);
        while let Some(at) = self.chunk(l) {
            n -= 1;
            l = get_u32(self.b, at).unwrap_or(0);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(buf: &mut [u8]) -> Table<'_> {
        Table::open(buf, MIN_ZONE, 1).unwrap()
    }

    /// Distinct keys of `len` bytes that fit in a zone of `size` named with `name_len`
    /// bytes.
    fn capacity(size: usize, name_len: usize, len: usize) -> usize {
        let mut buf = vec![0u8; size - REGION];
        let mut t = Table::open(&mut buf, size, name_len).unwrap();
        let mut n = 0usize;
        loop {
            let mut k = vec![b'k'; len];
            k[..8].copy_from_slice(&(n as u64).to_le_bytes());
            match t.acquire(crc32fast::hash(&k), &k, 1).unwrap() {
                Acquire::Held(_) => n += 1,
                Acquire::Full => return n,
                Acquire::Limited => panic!("limited"),
            }
        }
    }

    #[test]
    fn holds_the_keys_nginx_slab_holds() {
        // Measured side by side with nginx 1.22.1 (32k and 64k zones).
        assert_eq!(crate::core::slab::pages(MIN_ZONE), 7);
        for (len, want) in [(9, 383), (59, 160), (129, 80), (209, 80), (254, 40)] {
            assert_eq!(capacity(MIN_ZONE, 1, len), want, "{len}-byte keys, 32k zone");
        }
        assert_eq!(capacity(MIN_ZONE, 20, 209), 96, "a long zone name shares the state's page");
        assert_eq!(capacity(MIN_ZONE, 3000, 209), 80, "a 3000-byte name takes a whole page (as nginx: 80)");
        assert_eq!(capacity(2 * MIN_ZONE, 1, 129), 208);
        assert_eq!(capacity(2 * MIN_ZONE, 1, 254), 104);
        // A big zone still holds what nginx's would (16k short keys in 1 MB).
        assert!(capacity(1 << 20, 1, 9) > 16_000);
    }

    #[test]
    fn freed_keys_give_their_room_back() {
        let mut buf = vec![0u8; MIN_ZONE - REGION];
        let mut t = Table::open(&mut buf, MIN_ZONE, 1).unwrap();
        let key = |i: u32| [i.to_le_bytes(), [7; 4]].concat();
        let held: Vec<u32> = (0..40)
            .map(|i| match t.acquire(crc32fast::hash(&key(i)), &key(i), 1) {
                Some(Acquire::Held(e)) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        for e in held {
            t.release(e).unwrap();
        }
        assert_eq!(t.used(), 0);
        assert_eq!(get_u32(t.slab.b, crate::core::slab::S_FREE), Some(5), "the pages the keys took are free again");
    }

    #[test]
    fn counts_and_limits() {
        let mut buf = vec![0u8; MIN_ZONE - REGION];
        let mut t = table(&mut buf);
        let k = b"\x7f\0\0\x01";
        let h = crc32fast::hash(k);
        let a = t.acquire(h, k, 2).unwrap();
        let b = t.acquire(h, k, 2).unwrap();
        assert_eq!(a, b);
        assert_eq!(t.acquire(h, k, 2), Some(Acquire::Limited));
        let other = b"\x7f\0\0\x02";
        assert!(matches!(t.acquire(crc32fast::hash(other), other, 2), Some(Acquire::Held(_))));
        let Acquire::Held(e) = a else { panic!() };
        t.release(e).unwrap();
        assert!(matches!(t.acquire(h, k, 2), Some(Acquire::Held(_))));
        t.release(e).unwrap();
        t.release(e).unwrap();
        assert_eq!(t.used(), 1);
    }

    #[test]
    fn long_keys_and_collisions() {
        let mut buf = vec![0u8; MIN_ZONE - REGION];
        let mut t = table(&mut buf);
        let long: Vec<u8> = (0..255u32).map(|i| i as u8).collect();
        let mut long2 = long.clone();
        long2[200] ^= 1;
        // The same hash for both: only the bytes tell them apart.
        let Some(Acquire::Held(a)) = t.acquire(7, &long, 1) else { panic!() };
        let Some(Acquire::Held(b)) = t.acquire(7, &long2, 1) else { panic!() };
        assert_ne!(a, b);
        assert_eq!(t.used() as usize, 2 * chunks_for(255));
        assert_eq!(t.acquire(7, &long, 1), Some(Acquire::Limited));
        t.release(a).unwrap();
        assert_eq!(t.find(7, &long), None);
        assert_eq!(t.find(7, &long2), Some(b));
        t.release(b).unwrap();
        assert_eq!(t.used(), 0);
    }

    #[test]
    fn full_zone_refuses_and_recovers() {
        let mut buf = vec![0u8; MIN_ZONE - REGION];
        let mut t = table(&mut buf);
        // 4-byte keys: 40-byte nodes in 64-byte chunks, as nginx's zone holds them.
        let n = 383u32;
        let mut held = Vec::new();
        for i in 0..n {
            let k = i.to_le_bytes();
            match t.acquire(crc32fast::hash(&k), &k, 1).unwrap() {
                Acquire::Held(e) => held.push(e),
                other => panic!("{:?} at {}", other, i),
            }
        }
        let k = u32::MAX.to_le_bytes();
        assert_eq!(t.acquire(crc32fast::hash(&k), &k, 1), Some(Acquire::Full));
        let long = [1u8; 200];
        let used = t.used();
        t.release(held[0]).unwrap();
        // One 64-byte chunk free: a long key (a 256-byte class) still does not fit, and
        // takes nothing.
        assert_eq!(t.acquire(1, &long, 1), Some(Acquire::Full));
        assert_eq!(t.used(), used - 1);
        for e in held.into_iter().skip(1) {
            t.release(e).unwrap();
        }
        assert_eq!(t.used(), 0);
        assert!(matches!(t.acquire(1, &long, 1), Some(Acquire::Held(_))));
    }

    #[test]
    fn geometry_fits() {
        for len in [MIN_ZONE - REGION, 1 << 20, 123_457] {
            let (nb, nc) = geometry(len);
            assert!(nb.is_power_of_two());
            let start = (HDR + 4 * nb as usize).div_ceil(CHUNK) * CHUNK;
            assert!(start + nc as usize * CHUNK <= len);
            assert!(nc > nb);
        }
        // A 1 MB zone holds about 16 thousand short keys (nginx: "about 16 thousand
        // 64-byte states").
        assert!(geometry(1 << 20).1 > 15_000);
    }
}
