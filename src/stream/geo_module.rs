//! ngx_stream_geo_module: `geo [$src] $var { default V; CIDR V; delete CIDR; ranges;
//! A-B V; include FILE; }`. No phase: the variable is computed from the client address
//! (or from `$src`) when first used and kept for the session.
//!
//! CIDR mode is nginx's radix trees (longest prefix wins; IPv4 and IPv6 apart, an
//! IPv4-mapped IPv6 client looks in the IPv4 tree, a unix-domain client or an address
//! that does not parse looks up 255.255.255.255); `ranges` is nginx's table of sorted
//! ranges per /16, with the same add, split and delete rules and messages.
//! With `ranges`, `include FILE` first tries nginx's binary base `FILE.bin`; a block
//! whose only ranges are more than 100,000 in one included file writes that base.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use crate::core::addr::Addr;
use crate::core::addr::{inet6_addr, inet_addr, parse_addr};
use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{os_err, parser, Block, Cmd, ConfError, ConfResult};
use crate::core::log::{self, Level};
use crate::stream::conf::ConfCx;
use crate::stream::geo_binary;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::session::SessionCore;
use crate::stream::variables::{eval_var, VarGet};

pub struct Geo;

#[derive(Default)]
pub struct GeoMain {
    geos: Vec<GeoConf>,
}

struct GeoConf {
    /// The variable to read the address from (`geo $src $var`), else the client's.
    source: Option<usize>,
    /// The values; index 0 is nginx's empty "null value".
    values: Vec<Vec<u8>>,
    table: Table,
}

enum Table {
    Cidr { v4: Prefixes, v6: Prefixes },
    Ranges { low: HashMap<u16, Vec<Range>>, default: usize },
}

impl Module for Geo {
    const NAME: &'static str = "stream_geo";
    type Main = GeoMain;
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] =
        &[Directive { name: "geo", ctx: Ctx::STREAM_MAIN, args: Arity::Block(1, 2), set: Set::Main(geo_block) }];
}

/// Prefixes of one address family (keys are the top bits of a u128), longest match
/// first: what nginx's radix tree answers.
#[derive(Default)]
struct Prefixes {
    width: u32,
    /// By prefix length, longest first.
    by_len: BTreeMap<std::cmp::Reverse<u32>, HashMap<u128, usize>>,
}

impl Prefixes {
    fn new(width: u32) -> Prefixes {
        Prefixes { width, by_len: BTreeMap::new() }
    }

    fn key(&self, addr: u128, len: u32) -> u128 {
        if len == 0 {
            0
        } else {
            addr & (u128::MAX << (self.width - len.min(self.width)))
        }
    }

    /// All bits of an address of this family.
    fn mask(&self) -> u128 {
        u128::MAX >> (128 - self.width)
    }

    fn has_value(&self, key: u128, len: u32) -> bool {
        self.by_len.get(&std::cmp::Reverse(len)).is_some_and(|l| l.contains_key(&key))
    }

    /// `ngx_radix*tree_insert`: false (nginx's NGX_BUSY) if the prefix has a value.
    fn insert(&mut self, addr: u128, len: u32, value: usize) -> bool {
        let k = self.key(addr, len);
        let level = self.by_len.entry(std::cmp::Reverse(len)).or_default();
        if level.contains_key(&k) {
            return false;
        }
        level.insert(k, value);
        true
    }

    fn replace(&mut self, addr: u128, len: u32, value: usize) {
        let k = self.key(addr, len);
        self.by_len.entry(std::cmp::Reverse(len)).or_default().insert(k, value);
    }

    /// `ngx_radix*tree_delete`: false if the prefix has no value.
    fn delete(&mut self, addr: u128, len: u32) -> bool {
        let k = self.key(addr, len);
        self.by_len.get_mut(&std::cmp::Reverse(len)).and_then(|l| l.remove(&k)).is_some()
    }

    /// `ngx_radix*tree_find`: the value of the longest prefix holding `addr`.
    fn find(&self, addr: u128) -> Option<usize> {
        self.by_len.iter().find_map(|(std::cmp::Reverse(len), level)| level.get(&self.key(addr, *len)).copied())
    }
}

/// Which nodes of nginx's radix tree exist while a geo block is read: `delete` warns
/// when its node is missing, or has children but no value, and nginx's tree starts with
/// its first levels made (`ngx_radix_tree_create` preallocates 6 on 64-bit Linux), so
/// whether "no network to delete" is said depends on the tree's shape, not only on its
/// values. Nodes are implied by the networks inserted (each makes its path), less the
/// preallocated ones a delete has taken away.
struct Shape {
    /// Inserted networks still in the tree, as (key, prefix length).
    targets: BTreeSet<(u128, u32)>,
    /// Preallocated nodes removed by a delete.
    gone: HashSet<(u32, u128)>,
}

/// `ngx_radix_tree_create(pool, -1)` with 4 KiB pages and 32-byte nodes.
const PREALLOCATED: u32 = 6;

impl Shape {
    fn new() -> Shape {
        Shape { targets: BTreeSet::new(), gone: HashSet::new() }
    }

    fn insert(&mut self, p: &Prefixes, addr: u128, len: u32) {
        self.targets.insert((p.key(addr, len), len));
    }

    fn exists(&self, p: &Prefixes, key: u128, len: u32) -> bool {
        if len == 0 || (len <= PREALLOCATED && !self.gone.contains(&(len, key))) {
            return true;
        }
        let end = key | p.mask().checked_shr(len).unwrap_or(0);
        self.targets.range((key, len)..=(end, u32::MAX)).next().is_some()
    }

    fn has_child(&self, p: &Prefixes, key: u128, len: u32) -> bool {
        len < p.width && {
            let bit = 1u128 << (p.width - len - 1);
            self.exists(p, key, len + 1) || self.exists(p, key | bit, len + 1)
        }
    }

    fn remove(&mut self, key: u128, len: u32) {
        self.targets.remove(&(key, len));
        if len <= PREALLOCATED {
            self.gone.insert((len, key));
        }
    }

    /// `ngx_radix*tree_delete`: false (NGX_ERROR) if the node is missing, or has
    /// children and no value. A leaf goes, valued or not, and so do the ancestors it
    /// leaves without children or value.
    fn delete(&mut self, p: &mut Prefixes, addr: u128, len: u32) -> bool {
        let key = p.key(addr, len);
        if len == 0 {
            return p.delete(addr, len);
        }
        if !self.exists(p, key, len) {
            return false;
        }
        if self.has_child(p, key, len) {
            return p.delete(addr, len);
        }
        p.delete(addr, len);
        self.remove(key, len);
        for l in (1..len).rev() {
            let k = p.key(addr, l);
            if self.has_child(p, k, l) || p.has_value(k, l) {
                break;
            }
            self.remove(k, l);
        }
        true
    }
}

/// One range inside a /16: low 16 bits of the first and last address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u16,
    pub end: u16,
    pub value: usize,
}

/// A geo block being read (`ngx_stream_geo_conf_ctx_t`).
struct GeoBuild {
    values: Vec<Vec<u8>>,
    value_ids: HashMap<Vec<u8>, usize>,
    ranges: bool,
    /// CIDR mode has started (nginx's `ctx->tree`): `ranges` must come first.
    trees: bool,
    v4: Prefixes,
    v6: Prefixes,
    v4_shape: Shape,
    v6_shape: Shape,
    low: HashMap<u16, Vec<Range>>,
    range_default: Option<usize>,
    /// Range entries read, and whether the last of them came after the last include.
    entries: usize,
    outside_entries: bool,
    /// Text files included, and the last one's path (or the binary base's in use).
    includes: usize,
    include_name: String,
    /// No entries before an include: the block may still write a binary base.
    allow_binary_include: bool,
    /// The ranges came from a binary base.
    binary_include: bool,
}

impl GeoBuild {
    fn value(&mut self, v: &str) -> usize {
        self.value_bytes(v.as_bytes())
    }

    fn value_bytes(&mut self, v: &[u8]) -> usize {
        if let Some(&i) = self.value_ids.get(v) {
            return i;
        }
        self.values.push(v.to_vec());
        self.value_ids.insert(v.to_vec(), self.values.len() - 1);
        self.values.len() - 1
    }

    fn text(&self, i: usize) -> String {
        crate::core::conf::parser::bytes_to_text(self.values.get(i).map(Vec::as_slice).unwrap_or_default())
    }
}

/// The name after `$`, with nginx's errors.
fn var_name<'a>(cmd: &Cmd, arg: &'a str) -> ConfResult<&'a str> {
    match arg.strip_prefix('$') {
        None => Err(cmd.err(format!("invalid variable name \"{}\"", arg))),
        Some("") => Err(cmd.err("invalid variable name \"$\"")),
        Some(name) => Ok(name),
    }
}

fn geo_block(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let first = var_name(cmd, cmd.arg(0))?;
    let (source, name) = if cmd.args.len() == 2 {
        let src = cx.vars.reference(first);
        (Some(src), var_name(cmd, cmd.arg(1))?)
    } else {
        (None, first)
    };
    let data = cx.main.geo.geos.len();
    let var = cx
        .vars
        .define_changeable(name, var_geo as VarGet, data, false)
        .ok_or_else(|| cmd.err(format!("the duplicate \"{}\" variable", name)))?;

    let mut b = GeoBuild {
        // Index 0: nginx's null value, what a lookup finds when nothing matches.
        values: vec![Vec::new()],
        value_ids: HashMap::new(),
        ranges: false,
        trees: false,
        v4: Prefixes::new(32),
        v6: Prefixes::new(128),
        v4_shape: Shape::new(),
        v6_shape: Shape::new(),
        low: HashMap::new(),
        range_default: None,
        entries: 0,
        outside_entries: false,
        includes: 0,
        include_name: String::new(),
        allow_binary_include: true,
        binary_include: false,
    };
    if let Some(inner) = &cmd.block {
        entries(cx, &mut b, inner)?;
    }
    cx.vars.set_cached(var);
    let table = if b.ranges {
        b.low.retain(|_, r| !r.is_empty());
        if !b.binary_include && b.allow_binary_include && !b.outside_entries && b.entries > 100_000 && b.includes == 1 {
            create_binary_base(&b);
        }
        Table::Ranges { low: b.low, default: b.range_default.unwrap_or(0) }
    } else {
        // The null value under everything, unless a default is already there.
        b.v4.insert(0, 0, 0);
        b.v6.insert(0, 0, 0);
        Table::Cidr { v4: b.v4, v6: b.v6 }
    };
    cx.main.geo.geos.push(GeoConf { source, values: b.values, table });
    Ok(())
}

fn entries(cx: &mut ConfCx, b: &mut GeoBuild, block: &Block) -> ConfResult {
    for c in &block.cmds {
        entry(cx, b, c)?;
    }
    match &block.error {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

fn entry(cx: &mut ConfCx, b: &mut GeoBuild, c: &Cmd) -> ConfResult {
    if c.block.is_some() {
        return Err(c.err("unexpected \"{\""));
    }
    if c.args.is_empty() && c.name == "ranges" {
        if b.trees {
            return Err(c.err("the \"ranges\" directive must be the first directive inside \"geo\" block"));
        }
        b.ranges = true;
        return Ok(());
    }
    if c.args.len() != 1 {
        return Err(c.err("invalid number of the geo parameters"));
    }
    if c.name == "include" {
        // nginx 1.22.1 reads one file here (no glob), relative to the conf directory.
        let path = cx.conf_full_name(c.arg(0));
        if b.ranges && include_binary_base(cx, b, c, &path)? {
            return Ok(());
        }
        if b.outside_entries {
            b.allow_binary_include = false;
        }
        b.include_name = path;
        let (file, blk) = parser::parse_file(&b.include_name, Some(c))?;
        cx.files.push(file);
        crate::stream::conf::nested_include(cx, c, |cx| entries(cx, b, &blk))?;
        b.includes += 1;
        b.outside_entries = false;
        return Ok(());
    }
    if b.ranges {
        range_entry(cx, b, c)
    } else {
        cidr_entry(cx, b, c)
    }
}

fn cidr_entry(cx: &mut ConfCx, b: &mut GeoBuild, c: &Cmd) -> ConfResult {
    b.trees = true;
    let key = c.name.as_str();
    if key == "default" {
        let v = b.value(c.arg(0));
        cidr_add(cx, b, c, Family::V4, 0, 0, v, key);
        cidr_add(cx, b, c, Family::V6, 0, 0, v, key);
        return Ok(());
    }
    let (net, del) = if key == "delete" { (c.arg(0), true) } else { (key, false) };
    let (fam, addr, len) = if net == "255.255.255.255" {
        (Family::V4, u128::from(u32::MAX), 32)
    } else {
        match ptocidr(net) {
            None => return Err(c.err(format!("invalid network \"{}\"", net))),
            Some((fam, addr, len, low_bits)) => {
                if low_bits {
                    cx.warn(c, &format!("low address bits of {} are meaningless", net));
                }
                (fam, addr, len)
            }
        }
    };
    if del {
        let (tree, shape) = match fam {
            Family::V4 => (&mut b.v4, &mut b.v4_shape),
            Family::V6 => (&mut b.v6, &mut b.v6_shape),
        };
        if !shape.delete(tree, addr, len) {
            cx.warn(c, &format!("no network \"{}\" to delete", net));
        }
        return Ok(());
    }
    let v = b.value(c.arg(0));
    cidr_add(cx, b, c, fam, addr, len, v, net);
    Ok(())
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// `ngx_stream_geo_cidr_add`: a prefix already there gets the new value, with a warning
/// naming the value the address itself had.
#[allow(clippy::too_many_arguments)]
fn cidr_add(cx: &ConfCx, b: &mut GeoBuild, c: &Cmd, fam: Family, addr: u128, len: u32, v: usize, net: &str) {
    let (tree, shape) = match fam {
        Family::V4 => (&mut b.v4, &mut b.v4_shape),
        Family::V6 => (&mut b.v6, &mut b.v6_shape),
    };
    shape.insert(tree, addr, len);
    if tree.insert(addr, len, v) {
        return;
    }
    let old = tree.find(addr).unwrap_or(0);
    tree.replace(addr, len, v);
    let msg = format!("duplicate network \"{}\", value: \"{}\", old value: \"{}\"", net, b.text(v), b.text(old));
    cx.warn(c, &msg);
}

fn range_entry(cx: &mut ConfCx, b: &mut GeoBuild, c: &Cmd) -> ConfResult {
    let key = c.name.as_str();
    if key == "default" {
        if let Some(old) = b.range_default {
            let msg = format!("duplicate default geo range value: \"{}\", old value: \"{}\"", c.arg(0), b.text(old));
            cx.warn(c, &msg);
        }
        b.range_default = Some(b.value(c.arg(0)));
        return Ok(());
    }
    if b.binary_include {
        return Err(mixed_with_entries(c, &b.include_name));
    }
    b.entries += 1;
    b.outside_entries = true;
    let (net, del) = if key == "delete" { (c.arg(0), true) } else { (key, false) };
    let invalid = || c.err(format!("invalid range \"{}\"", net));
    let (a, z) = net.split_once('-').ok_or_else(invalid)?;
    let start = inet_addr(a.as_bytes()).ok_or_else(invalid)?;
    let end = inet_addr(z.as_bytes()).ok_or_else(invalid)?;
    if start > end {
        return Err(invalid());
    }
    if del {
        if delete_range(&mut b.low, start, end) {
            cx.warn(c, &format!("no address range \"{}\" to delete", net));
        }
        return Ok(());
    }
    let v = b.value(c.arg(0));
    add_range(cx, b, c, net, start, end, v)
}

fn mixed_with_entries(c: &Cmd, base: &str) -> ConfError {
    c.err(format!("binary geo range base \"{}\" cannot be mixed with usual entries", base))
}

/// `ngx_stream_geo_include_binary_base`: true if the ranges now come from `text`.bin;
/// false to read the text file instead (no base, or a stale, foreign or damaged one).
fn include_binary_base(cx: &ConfCx, b: &mut GeoBuild, c: &Cmd, text: &str) -> ConfResult<bool> {
    let bin = format!("{text}.bin");
    let crit = |msg: String| log::error(Level::Crit, &c.err(msg).to_string(), None);
    let mut file = match std::fs::File::open(parser::os_path(&bin)) {
        Ok(f) => f,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                crit(format!("open() \"{}\" failed {}", bin, os_err(&e)));
            }
            return Ok(false);
        }
    };
    if b.outside_entries {
        return Err(mixed_with_entries(c, &bin));
    }
    if b.binary_include {
        return Err(
            c.err(format!("second binary geo range base \"{}\" cannot be mixed with \"{}\"", bin, b.include_name))
        );
    }
    let mtime = match file.metadata() {
        Ok(m) => m.mtime(),
        Err(e) => {
            crit(format!("fstat() \"{}\" failed {}", bin, os_err(&e)));
            return Ok(false);
        }
    };
    match std::fs::metadata(parser::os_path(text)) {
        Ok(m) if mtime < m.mtime() => {
            cx.warn(c, &format!("stale binary geo range base \"{}\"", bin));
            return Ok(false);
        }
        Ok(_) => {}
        Err(e) => {
            crit(format!("stat() \"{}\" failed {}", text, os_err(&e)));
            return Ok(false);
        }
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.read_to_end(&mut bytes) {
        // ngx_read_file says it first, without a location.
        log::error(Level::Crit, &format!("pread() \"{}\" failed", bin), Some(&e));
        crit(format!("pread() \"{}\" failed {}", bin, os_err(&e)));
        return Ok(false);
    }
    let (values, low) = match geo_binary::decode(&bytes) {
        geo_binary::Base::Incompatible => {
            cx.warn(c, &format!("incompatible binary geo range base \"{}\"", bin));
            return Ok(false);
        }
        geo_binary::Base::CrcMismatch => {
            cx.warn(c, &format!("CRC32 mismatch in binary geo range base \"{}\"", bin));
            return Ok(false);
        }
        geo_binary::Base::Ranges { values, low } => (values, low),
    };
    log::error(Level::Notice, &c.err(format!("using binary geo range base \"{}\"", bin)).to_string(), None);
    let ids: Vec<usize> = values.iter().map(|v| b.value_bytes(v)).collect();
    // nginx takes the base's table as it is: ranges read before it are dropped.
    b.low = low
        .into_iter()
        .map(|(h, rs)| (h, rs.into_iter().map(|r| Range { value: ids[r.value], ..r }).collect()))
        .collect();
    b.include_name = bin;
    b.binary_include = true;
    Ok(true)
}

/// `ngx_stream_geo_create_binary_base`: failures are logged, the block is still good.
fn create_binary_base(b: &GeoBuild) {
    let bin = format!("{}.bin", b.include_name);
    log::error(Level::Notice, &format!("creating binary geo range base \"{}\"", bin), None);
    let mut highs: Vec<(u16, &[Range])> = b.low.iter().map(|(h, r)| (*h, r.as_slice())).collect();
    highs.sort_by_key(|(h, _)| *h);
    let base = geo_binary::encode(&b.values, &highs);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(parser::os_path(&bin));
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return log::error(Level::Crit, &format!("open() \"{}\" failed", bin), Some(&e)),
    };
    if let Err(e) = file.set_len(base.len() as u64) {
        return log::error(Level::Crit, &format!("ftruncate() \"{}\" failed", bin), Some(&e));
    }
    if let Err(e) = file.write_all(&base) {
        log::error(Level::Crit, &format!("mmap({}) \"{}\" failed", base.len(), bin), Some(&e));
    }
}

/// The /16 pieces of `start..=end`: (high 16 bits, first, last low 16 bits).
fn pieces(start: u32, end: u32) -> impl Iterator<Item = (u16, u16, u16)> {
    let (h0, h1) = (start >> 16, end >> 16);
    (h0..=h1).map(move |h| {
        let s = if h == h0 { start & 0xffff } else { 0 };
        let e = if h == h1 { end & 0xffff } else { 0xffff };
        (h as u16, s as u16, e as u16)
    })
}

/// `ngx_stream_geo_add_range`: per /16, add after, replace, split or shift a range the
/// new one lies in, or refuse an overlap.
fn add_range(cx: &ConfCx, b: &mut GeoBuild, c: &Cmd, net: &str, start: u32, end: u32, v: usize) -> ConfResult {
    for (h, s, e) in pieces(start, end) {
        let a = b.low.entry(h).or_default();
        let mut i = a.len();
        let mut done = false;
        while i > 0 {
            i -= 1;
            let r = a[i];
            if e < r.start {
                continue;
            }
            if s > r.end {
                a.insert(i + 1, Range { start: s, end: e, value: v });
            } else if s == r.start && e == r.end {
                let msg = format!(
                    "duplicate range \"{}\", value: \"{}\", old value: \"{}\"",
                    net,
                    crate::core::conf::parser::bytes_to_text(b.values.get(v).map(Vec::as_slice).unwrap_or_default()),
                    crate::core::conf::parser::bytes_to_text(
                        b.values.get(r.value).map(Vec::as_slice).unwrap_or_default()
                    )
                );
                cx.warn(c, &msg);
                a[i].value = v;
            } else if s > r.start && e < r.end {
                a[i].end = s - 1;
                a.insert(i + 1, Range { start: s, end: e, value: v });
                a.insert(i + 2, Range { start: e + 1, end: r.end, value: r.value });
            } else if s == r.start && e < r.end {
                a[i].start = e + 1;
                a.insert(i, Range { start: s, end: e, value: v });
            } else if s > r.start && e == r.end {
                a[i].end = s - 1;
                a.insert(i + 1, Range { start: s, end: e, value: v });
            } else {
                let hh = u32::from(h);
                return Err(c.err(format!(
                    "range \"{}\" overlaps \"{}.{}.{}.{}-{}.{}.{}.{}\"",
                    net,
                    hh >> 8,
                    hh & 0xff,
                    r.start >> 8,
                    r.start & 0xff,
                    hh >> 8,
                    hh & 0xff,
                    r.end >> 8,
                    r.end & 0xff
                )));
            }
            done = true;
            break;
        }
        if !done {
            a.insert(0, Range { start: s, end: e, value: v });
        }
    }
    Ok(())
}

/// `ngx_stream_geo_delete_range`: remove the exact pieces; true if one was missing.
fn delete_range(low: &mut HashMap<u16, Vec<Range>>, start: u32, end: u32) -> bool {
    let mut warn = false;
    for (h, s, e) in pieces(start, end) {
        match low.get_mut(&h) {
            Some(a) if !a.is_empty() => match a.iter().position(|r| r.start == s && r.end == e) {
                Some(i) => {
                    a.remove(i);
                }
                None => warn = true,
            },
            _ => warn = true,
        }
    }
    warn
}

/// `ngx_ptocidr`: (family, address, prefix length, low bits were set).
fn ptocidr(text: &str) -> Option<(Family, u128, u32, bool)> {
    let (host, bits) = match text.split_once('/') {
        Some((h, b)) => (h, Some(b)),
        None => (text, None),
    };
    let (fam, addr, width) = if let Some(a) = inet_addr(host.as_bytes()) {
        (Family::V4, u128::from(a), 32)
    } else if let Some(a) = inet6_addr(host.as_bytes()) {
        (Family::V6, u128::from_be_bytes(a), 128)
    } else {
        return None;
    };
    let Some(bits) = bits else { return Some((fam, addr, width, false)) };
    if bits.is_empty() || !bits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let len: u32 = bits.parse().ok().filter(|l| *l <= width)?;
    let mask = if len == 0 { 0 } else { (u128::MAX >> (128 - width)) & (u128::MAX << (width - len)) };
    Some((fam, addr & mask, len, addr & mask != addr))
}

/// The address a geo variable looks up: IPv4 (also from an IPv4-mapped IPv6 address),
/// IPv6, or 255.255.255.255 when there is none.
enum Lookup {
    V4(u32),
    V6(u128),
}

const INADDR_NONE: u32 = u32::MAX;

fn lookup_addr(s: &mut SessionCore, source: Option<usize>) -> Lookup {
    let ip = match source {
        None => match &s.remote {
            Addr::Inet(sa) => Some(sa.ip()),
            Addr::Unix(_) => None,
        },
        Some(idx) => {
            // nginx's ngx_stream_get_flushed_variable: a volatile source is evaluated again.
            s.flush_var(idx);
            let mut v = Vec::new();
            if eval_var(s, idx, &mut v) {
                parse_addr(&v)
            } else {
                None
            }
        }
    };
    match ip {
        Some(IpAddr::V4(a)) => Lookup::V4(u32::from(a)),
        Some(IpAddr::V6(a)) => match a.octets() {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b0, b1, b2, b3] => {
                Lookup::V4(u32::from_be_bytes([b0, b1, b2, b3]))
            }
            o => Lookup::V6(u128::from_be_bytes(o)),
        },
        None => Lookup::V4(INADDR_NONE),
    }
}

/// The geo variable (`ngx_stream_geo_cidr_variable` / `ngx_stream_geo_range_variable`).
fn var_geo(s: &mut SessionCore, data: usize, out: &mut Vec<u8>) -> bool {
    let cycle = s.cycle.clone();
    let Some(g) = cycle.stream.geo.geos.get(data) else { return false };
    let at = lookup_addr(s, g.source);
    let v = match &g.table {
        Table::Cidr { v4, v6 } => match at {
            Lookup::V4(a) => v4.find(u128::from(a)),
            Lookup::V6(a) => v6.find(a),
        },
        Table::Ranges { low, default } => {
            // Ranges are IPv4 only: an IPv6 address looks up 255.255.255.255.
            let a = match at {
                Lookup::V4(a) => a,
                Lookup::V6(_) => INADDR_NONE,
            };
            let n = (a & 0xffff) as u16;
            low.get(&((a >> 16) as u16))
                .and_then(|rs| rs.iter().find(|r| n >= r.start && n <= r.end))
                .map(|r| r.value)
                .or(Some(*default))
        }
    };
    if let Some(v) = v.and_then(|i| g.values.get(i)) {
        out.extend_from_slice(v);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(matches!(ptocidr("10.0.0.0/8"), Some((Family::V4, 0x0a00_0000, 8, false))));
        assert!(matches!(ptocidr("10.1.0.0/8"), Some((Family::V4, 0x0a00_0000, 8, true))));
        assert!(matches!(ptocidr("1.2.3.4"), Some((Family::V4, 0x0102_0304, 32, false))));
        assert!(ptocidr("1.2.3.4/33").is_none());
        assert!(ptocidr("1.2.3.4/").is_none());
        assert!(matches!(ptocidr("::/0"), Some((Family::V6, 0, 0, false))));
        assert!(matches!(ptocidr("2001:db8::1/32"), Some((Family::V6, _, 32, true))));
        assert!(ptocidr("::1/129").is_none());
    }

    #[test]
    fn longest_prefix() {
        let mut t = Prefixes::new(32);
        assert!(t.insert(0x0a00_0000, 8, 1));
        assert!(t.insert(0x0a01_0000, 16, 2));
        assert!(!t.insert(0x0a00_0000, 8, 3));
        assert_eq!(t.find(0x0a01_0203), Some(2));
        assert_eq!(t.find(0x0a02_0203), Some(1));
        assert_eq!(t.find(0x0b00_0000), None);
        assert!(t.delete(0x0a01_0000, 16));
        assert!(!t.delete(0x0a01_0000, 16));
        assert_eq!(t.find(0x0a01_0203), Some(1));
    }

    #[test]
    fn range_pieces() {
        let p: Vec<_> = pieces(0x0a0a_0300, 0x0a0b_02ff).collect();
        assert_eq!(p, vec![(0x0a0a, 0x0300, 0xffff), (0x0a0b, 0, 0x02ff)]);
    }
}
