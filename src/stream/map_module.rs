//! ngx_stream_map_module: `map SOURCE $var { ... }` (exact keys, `default`, `hostnames`
//! wildcards, `~` / `~*` regexes with captures, `include`, `volatile`),
//! `map_hash_max_size`, `map_hash_bucket_size`. No phase: the variable is computed when
//! first used and kept for the session (unless `volatile`).

use std::collections::{HashMap, HashSet};

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value;
use crate::core::conf::{parser, Block, Cmd, ConfError, ConfResult, Level};
use crate::core::regex::{Exec, Regex};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::session::{Captures, SessionCore};
use crate::stream::variables::{Complex, VarGet, Variables};

pub struct Map;

#[derive(Default)]
pub struct MapMain {
    maps: Vec<MapConf>,
    /// nginx's NGX_CONF_UNSET until a directive or the first `map` sets them.
    hash_max_size: Option<u64>,
    hash_bucket_size: Option<u64>,
}

/// One `map` block, ready for lookups.
struct MapConf {
    source: Complex,
    hostnames: bool,
    values: Vec<Complex>,
    default: Option<usize>,
    /// Lowercased exact keys.
    exact: HashMap<Vec<u8>, usize>,
    /// `*.example.com` (false) and `.example.com` (true, also matches the name itself),
    /// by the lowercased suffix "example.com".
    head: HashMap<Vec<u8>, (usize, bool)>,
    /// `www.example.*`, by the lowercased prefix "www.example".
    tail: HashMap<Vec<u8>, usize>,
    regexes: Vec<(StreamRegex, usize)>,
}

/// A map being read: the conflict checks of `ngx_hash_add_key` need more than lookups.
#[derive(Default)]
struct MapBuild {
    hostnames: bool,
    volatile: bool,
    values: Vec<Complex>,
    value_ids: HashMap<String, usize>,
    default: Option<usize>,
    exact: HashMap<Vec<u8>, usize>,
    /// Exact keys in order, for the hash sizing check.
    exact_keys: Vec<Vec<u8>>,
    /// Names taken in the exact hash: exact keys and the "example.com" of ".example.com".
    exact_names: HashSet<Vec<u8>>,
    head: HashMap<Vec<u8>, (usize, bool)>,
    tail: HashMap<Vec<u8>, usize>,
    regexes: Vec<(StreamRegex, usize)>,
}

impl Module for Map {
    const NAME: &'static str = "stream_map";
    type Main = MapMain;
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive { name: "map", ctx: Ctx::STREAM_MAIN, args: Arity::Block(2, 2), set: Set::Main(map_block) },
        Directive {
            name: "map_hash_max_size",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Take(1),
            set: Set::Main(|cmd, cx| set_num(&mut cx.main.map.hash_max_size, cmd)),
        },
        Directive {
            name: "map_hash_bucket_size",
            ctx: Ctx::STREAM_MAIN,
            args: Arity::Take(1),
            set: Set::Main(|cmd, cx| set_num(&mut cx.main.map.hash_bucket_size, cmd)),
        },
    ];
}

/// nginx's `ngx_cacheline_size` on x86-64 (and its `NGX_CPU_CACHE_LINE` default).
const CACHELINE: u64 = 64;

/// The name after `$`, with nginx's errors.
fn var_name<'a>(cmd: &Cmd, arg: &'a str) -> ConfResult<&'a str> {
    match arg.strip_prefix('$') {
        None => Err(cmd.err(format!("invalid variable name \"{}\"", arg))),
        Some("") => Err(cmd.err("invalid variable name \"$\"")),
        Some(name) => Ok(name),
    }
}

/// `ngx_stream_add_variable(..., NGX_STREAM_VAR_CHANGEABLE)` with its duplicate check.
fn add_variable(cmd: &Cmd, vars: &mut Variables, name: &str, get: VarGet, data: usize) -> ConfResult<usize> {
    vars.define_changeable(name, get, data, false)
        .ok_or_else(|| cmd.err(format!("the duplicate \"{}\" variable", name)))
}

/// `ngx_conf_set_num_slot`.
fn set_num(slot: &mut Option<u64>, cmd: &Cmd) -> ConfResult {
    if slot.is_some() {
        return Err(cmd.duplicate());
    }
    *slot = Some(value::number(cmd)?);
    Ok(())
}

fn map_block(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    // nginx fills the hash sizes in at the first `map`: a map_hash_* after it is a
    // duplicate.
    let mc = &mut cx.main.map;
    let max_size = *mc.hash_max_size.get_or_insert(2048);
    let bucket = match mc.hash_bucket_size {
        None => CACHELINE,
        Some(b) => b.div_ceil(CACHELINE).saturating_mul(CACHELINE),
    };
    mc.hash_bucket_size = Some(bucket);

    let source = Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?;
    let name = var_name(cmd, cmd.arg(1))?;
    let data = cx.main.map.maps.len();
    let var = add_variable(cmd, &mut cx.vars, name, var_map, data)?;

    let mut b = MapBuild::default();
    if let Some(inner) = &cmd.block {
        entries(cx, &mut b, inner, None)?;
    }
    if b.volatile {
        cx.vars.set_volatile(var);
    } else {
        cx.vars.set_cached(var);
    }
    if !b.exact_keys.is_empty() {
        check_hash("map_hash", &b.exact_keys, max_size, bucket)?;
    }
    // Then the wildcard hashes, "*.x" and ".x" first, "x.*" next, as nginx builds them.
    let heads = b.head.iter().map(|(k, &(_, with_name))| wildcard_key(k, true, with_name));
    let tails = b.tail.keys().map(|k| wildcard_key(k, false, false));
    for mut keys in [heads.collect::<Vec<_>>(), tails.collect()] {
        if !keys.is_empty() {
            keys.sort_by(|a, b| dns_cmp(a, b));
            let names: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            check_wildcard_hash(&names, max_size, bucket)?;
        }
    }
    cx.main.map.maps.push(MapConf {
        source,
        hostnames: b.hostnames,
        values: b.values,
        default: b.default,
        exact: b.exact,
        head: b.head,
        tail: b.tail,
        regexes: b.regexes,
    });
    Ok(())
}

/// `include`: the `include` line of the map's own file the entries came through (see
/// `entry`), none for the map's own lines.
fn entries(cx: &mut ConfCx, b: &mut MapBuild, block: &Block, include: Option<&Cmd>) -> ConfResult {
    for c in &block.cmds {
        entry(cx, b, c, include)?;
    }
    match &block.error {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

fn entry(cx: &mut ConfCx, b: &mut MapBuild, c: &Cmd, include: Option<&Cmd>) -> ConfResult {
    if c.block.is_some() {
        return Err(c.err("unexpected \"{\""));
    }
    let key = c.name.as_str();
    if c.args.is_empty() && key == "hostnames" {
        b.hostnames = true;
        return Ok(());
    }
    if c.args.is_empty() && key == "volatile" {
        b.volatile = true;
        return Ok(());
    }
    if c.args.len() != 1 {
        return Err(c.err("invalid number of the map parameters"));
    }
    let text = c.arg(0);
    if key == "include" {
        let outer = include.unwrap_or(c);
        return include_files(cx, c, text, |cx, blk| entries(cx, b, blk, Some(outer)));
    }
    // nginx compiles values and regexes with the parse state saved at the `map` line:
    // their errors name the map's file at its current line, an `include` line for
    // entries from an included file (its own messages below name the entry's line).
    let at = include.unwrap_or(c);
    let value = match b.value_ids.get(text) {
        Some(&i) => i,
        None => {
            let v = Complex::compile(text, at, &mut cx.vars)?;
            b.values.push(v);
            b.value_ids.insert(text.to_string(), b.values.len() - 1);
            b.values.len() - 1
        }
    };
    if key == "default" {
        if b.default.is_some() {
            return Err(c.err("duplicate default map parameter"));
        }
        b.default = Some(value);
        return Ok(());
    }
    if let Some(pattern) = key.strip_prefix('~') {
        let (pattern, caseless) = match pattern.strip_prefix('*') {
            Some(p) => (p, true),
            None => (pattern, false),
        };
        let re = regex_compile(pattern, caseless, at, &mut cx.vars)?;
        b.regexes.push((re, value));
        return Ok(());
    }
    let key = key.strip_prefix('\\').unwrap_or(key);
    match b.add_key(&crate::core::conf::parser::text_to_bytes(key), value) {
        Ok(()) => Ok(()),
        Err(AddKey::Invalid) => Err(c.err(format!("invalid hostname or wildcard \"{}\"", key))),
        Err(AddKey::Busy) => Err(c.err(format!("conflicting parameter \"{}\"", key.to_ascii_lowercase()))),
    }
}

/// `include FILE` inside a block read by its own handler (`ngx_conf_include`): a glob,
/// relative to the configuration's directory; each file is read as more entries.
fn include_files(
    cx: &mut ConfCx,
    c: &Cmd,
    name: &str,
    mut each: impl FnMut(&mut ConfCx, &Block) -> ConfResult,
) -> ConfResult {
    let pattern = cx.conf_full_name(name);
    let names = if pattern.contains(['*', '?', '[']) {
        crate::core::glob::glob(&pattern)
            .map_err(|e| c.err(format!("glob() \"{}\" failed {}", pattern, crate::core::conf::os_err(&e))))?
    } else {
        vec![pattern]
    };
    for n in names {
        let (file, blk) = parser::parse_file(&n, Some(c))?;
        cx.files.push(file);
        crate::stream::conf::nested_include(cx, c, |cx| each(cx, &blk))?;
    }
    Ok(())
}

enum AddKey {
    Invalid,
    Busy,
}

impl MapBuild {
    /// `ngx_hash_add_key`, with `NGX_HASH_WILDCARD_KEY` after `hostnames`.
    fn add_key(&mut self, key: &[u8], value: usize) -> Result<(), AddKey> {
        let lower = key.to_ascii_lowercase();
        if self.hostnames {
            let stars = key.iter().filter(|&&c| c == b'*').count();
            if stars > 1 || key.windows(2).any(|w| w == b"..") || key.contains(&0) {
                return Err(AddKey::Invalid);
            }
            if key.len() > 1 && key.first() == Some(&b'.') {
                let base = lower.get(1..).unwrap_or_default().to_vec();
                if !self.exact_names.insert(base.clone()) {
                    return Err(AddKey::Busy);
                }
                return self.add_head(base, value, true);
            }
            if key.len() > 2 {
                if key.starts_with(b"*.") {
                    let base = lower.get(2..).unwrap_or_default().to_vec();
                    return self.add_head(base, value, false);
                }
                if key.ends_with(b".*") {
                    let base = lower.get(..lower.len() - 2).unwrap_or_default().to_vec();
                    if self.tail.contains_key(&base) {
                        return Err(AddKey::Busy);
                    }
                    self.tail.insert(base, value);
                    return Ok(());
                }
            }
            if stars > 0 {
                return Err(AddKey::Invalid);
            }
        }
        if !self.exact_names.insert(lower.clone()) {
            return Err(AddKey::Busy);
        }
        self.exact_keys.push(lower.clone());
        self.exact.insert(lower, value);
        Ok(())
    }

    fn add_head(&mut self, base: Vec<u8>, value: usize, with_name: bool) -> Result<(), AddKey> {
        if self.head.contains_key(&base) {
            return Err(AddKey::Busy);
        }
        self.head.insert(base, (value, with_name));
        Ok(())
    }
}

/// nginx's `ngx_hash` step.
fn hash_step(k: u64, c: u8) -> u64 {
    k.wrapping_mul(31).wrapping_add(u64::from(c))
}

/// `NGX_HASH_ELT_SIZE`: a value pointer, a length and the key, pointer-aligned.
fn elt_size(key: &[u8]) -> u64 {
    8 + (key.len() as u64 + 2).div_ceil(8) * 8
}

/// The checks and the size search of `ngx_hash_init` for the exact keys: its errors
/// (without a position, as nginx logs them) and its "could not build optimal" warning.
fn check_hash(name: &str, keys: &[Vec<u8>], max_size: u64, bucket_size: u64) -> ConfResult {
    if max_size == 0 {
        return Err(ConfError::bare(format!(
            "could not build {n}, you should increase {n}_max_size: {}",
            max_size,
            n = name
        )));
    }
    if bucket_size > 65536 - CACHELINE {
        return Err(ConfError::bare(format!(
            "could not build {n}, too large {n}_bucket_size: {}",
            bucket_size as i64,
            n = name
        )));
    }
    if keys.iter().any(|k| bucket_size < elt_size(k) + 8) {
        return Err(ConfError::bare(format!(
            "could not build {n}, you should increase {n}_bucket_size: {}",
            bucket_size,
            n = name
        )));
    }
    crate::stream::variables_hash::test_alloc(max_size)?;
    let hashes: Vec<(u64, u64)> =
        keys.iter().map(|k| (k.iter().fold(0, |h, &c| hash_step(h, c)), elt_size(k))).collect();
    let nelts = keys.len() as u64;
    let usable = bucket_size - 8;
    let mut start = nelts / (usable / 16).max(1);
    if start == 0 {
        start = 1;
    }
    if max_size > 10000 && max_size / nelts < 100 {
        start = max_size - 1000;
    }
    // Buckets are counted in a map (`size` may be huge, the keys are few); past a
    // million sizes the answer is taken as nginx's eventual one, the warning.
    let mut test: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for size in (start..=max_size).take(1_000_000) {
        test.clear();
        let fits = hashes.iter().all(|&(h, len)| {
            let slot = test.entry(h % size).or_insert(0);
            *slot += len;
            *slot <= usable
        });
        if fits {
            return Ok(());
        }
    }
    crate::core::log::error(
        Level::Warn,
        &format!(
            "could not build optimal {n}, you should increase either {n}_max_size: {} or {n}_bucket_size: {}; \
             ignoring {n}_bucket_size",
            max_size,
            bucket_size,
            n = name
        ),
        None,
    );
    // Then built at max_size whatever the bucket size, as long as no bucket (a pointer,
    // then its elements) reaches 64 KiB.
    test.clear();
    let fits = hashes.iter().all(|&(h, len)| {
        let slot = test.entry(h % max_size).or_insert(8);
        *slot += len;
        *slot <= 65536 - CACHELINE
    });
    if !fits {
        return Err(ConfError::bare(format!(
            "could not build {n}, you should increase {n}_max_size: {}",
            max_size,
            n = name
        )));
    }
    Ok(())
}

/// nginx's converted wildcard keys (`ngx_hash_add_key`): "*.example.com" is
/// "com.example.", ".example.com" "com.example", "www.example.*" "www.example".
fn wildcard_key(base: &[u8], head: bool, with_name: bool) -> Vec<u8> {
    if !head {
        return base.to_vec();
    }
    let mut k: Vec<u8> = base.rsplit(|&c| c == b'.').collect::<Vec<_>>().join(&b'.');
    if !with_name {
        k.push(b'.');
    }
    k
}

/// `ngx_dns_strcmp`: bytes compared case-blind up to the first that differs, where a
/// '.' counts as a space (below the name characters) and the end of a name as 0.
fn dns_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let at = |s: &[u8], i: usize| s.get(i).map_or(0, |c| c.to_ascii_lowercase());
    let mut i = 0;
    loop {
        let (x, y) = (at(a, i), at(b, i));
        if x != y {
            let dot = |c: u8| if c == b'.' { b' ' } else { c };
            return dot(x).cmp(&dot(y));
        }
        if x == 0 {
            return std::cmp::Ordering::Equal;
        }
        i += 1;
    }
}

/// `ngx_hash_wildcard_init`'s checks over sorted converted keys: a hash per level of
/// labels, each checked as `ngx_hash_init` checks it, the deeper levels first (so their
/// warnings come first, and the first error met is nginx's).
fn check_wildcard_hash(names: &[&[u8]], max_size: u64, bucket: u64) -> ConfResult {
    let mut labels = Vec::new();
    let mut n = 0;
    while n < names.len() {
        let name = names[n];
        let (label, dot) = match name.iter().position(|&c| c == b'.') {
            Some(d) => (d, true),
            None => (name.len(), false),
        };
        labels.push(name[..label].to_vec());
        let len = label + usize::from(dot);
        let mut next: Vec<&[u8]> = Vec::new();
        if name.len() != len {
            next.push(&name[len..]);
        }
        let mut i = n + 1;
        while let Some(other) = names.get(i) {
            if other.len() < len || other[..len] != name[..len] {
                break;
            }
            if !dot && other.len() > len && other[len] != b'.' {
                break;
            }
            next.push(other.get(label + 1..).unwrap_or_default());
            i += 1;
        }
        if !next.is_empty() {
            check_wildcard_hash(&next, max_size, bucket)?;
        }
        n = i;
    }
    check_hash("map_hash", &labels, max_size, bucket)
}

/// The map variable (`ngx_stream_map_variable`).
fn var_map(s: &mut SessionCore, data: usize, out: &mut Vec<u8>) -> bool {
    let cycle = s.cycle.clone();
    let Some(m) = cycle.stream.map.maps.get(data) else { return false };
    let mut val = Vec::new();
    m.source.eval(s, &mut val);
    if m.hostnames && val.last() == Some(&b'.') {
        val.pop();
    }
    let found = m.find(s, &val).or(m.default);
    if let Some(v) = found.and_then(|i| m.values.get(i)) {
        v.eval(s, out);
    }
    true
}

impl MapConf {
    /// `ngx_stream_map_find`: exact (case-insensitive), wildcards, then regexes in order.
    fn find(&self, s: &mut SessionCore, val: &[u8]) -> Option<usize> {
        let low = val.to_ascii_lowercase();
        if let Some(&v) = self.exact.get(&low) {
            return Some(v);
        }
        if val.is_empty() {
            return None;
        }
        if !self.head.is_empty() {
            // The longest suffix wins; the name itself only for ".example.com".
            if let Some(&(v, true)) = self.head.get(&low) {
                return Some(v);
            }
            for (i, &c) in low.iter().enumerate() {
                if c == b'.' {
                    if let Some(&(v, _)) = low.get(i + 1..).and_then(|suffix| self.head.get(suffix)) {
                        return Some(v);
                    }
                }
            }
        }
        if !self.tail.is_empty() {
            // The longest prefix followed by a dot wins.
            for (i, &c) in low.iter().enumerate().rev() {
                if c == b'.' {
                    if let Some(&v) = low.get(..i).and_then(|prefix| self.tail.get(prefix)) {
                        return Some(v);
                    }
                }
            }
        }
        for (re, v) in &self.regexes {
            match re.exec(s, val) {
                Exec::Match => return Some(*v),
                Exec::NoMatch => continue,
                // nginx's map then takes its default.
                Exec::Failed(_) => return None,
            }
        }
        None
    }
}

/// A compiled `~` pattern (`ngx_stream_regex_t`): PCRE2, as nginx's, with the named
/// groups' variables.
pub struct StreamRegex {
    re: Regex,
    /// Named groups: (group number, variable index).
    named: Vec<(usize, usize)>,
}

/// `ngx_stream_regex_compile`: compile (an error is PCRE2's, in nginx's words) and
/// declare a variable per named group.
pub fn regex_compile(pattern: &str, caseless: bool, cmd: &Cmd, vars: &mut Variables) -> ConfResult<StreamRegex> {
    let re = Regex::compile(&parser::text_to_bytes(pattern), caseless).map_err(|e| cmd.err(e))?;
    let mut named = Vec::new();
    for (group, name) in re.names() {
        let idx = add_variable(cmd, vars, &parser::bytes_to_text(name), var_not_found, 0)?;
        vars.set_capture(idx);
        named.push((*group, idx));
    }
    Ok(StreamRegex { re, named })
}

fn var_not_found(_: &mut SessionCore, _: usize, _: &mut Vec<u8>) -> bool {
    false
}

impl StreamRegex {
    /// Whether the pattern matches anywhere in `subject` (no captures kept).
    pub fn is_match(&self, subject: &[u8]) -> bool {
        self.re.is_match(subject)
    }

    /// `ngx_stream_regex_exec`: on a match the session's captures ($1..$9) become this
    /// match's, and the named groups' variables are set. A failed match (PCRE2's match
    /// limit, say) is logged at alert, as nginx's.
    pub fn exec(&self, s: &mut SessionCore, subject: &[u8]) -> Exec {
        let mut groups = Vec::new();
        let r = self.re.exec(subject, Some(&mut groups));
        match r {
            Exec::Match => {}
            Exec::NoMatch => return r,
            Exec::Failed(rc) => {
                let msg = format!(
                    "pcre2_match() failed: {} on \"{}\" using \"{}\"",
                    rc,
                    parser::bytes_to_text(subject),
                    self.re.pattern()
                );
                s.log(Level::Alert, &msg, None);
                return r;
            }
        }
        for &(g, idx) in &self.named {
            let v = groups
                .get(g)
                .copied()
                .flatten()
                .and_then(|(a, b)| subject.get(a..b))
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            s.cache_var(idx, Some(v));
        }
        s.captures = Captures { subject: subject.to_vec(), groups };
        Exec::Match
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_keys_as_nginx_converts_and_sorts_them() {
        assert_eq!(wildcard_key(b"example.com", true, false), b"com.example.");
        assert_eq!(wildcard_key(b"example.com", true, true), b"com.example");
        assert_eq!(wildcard_key(b"www.example", false, false), b"www.example");
        let mut keys: Vec<&[u8]> = vec![b"com-x", b"com.a", b"com", b"Com.", b"co"];
        keys.sort_by(|a, b| dns_cmp(a, b));
        assert_eq!(keys, [&b"co"[..], b"com", b"Com.", b"com.a", b"com-x"]);
        // One label per level: a 47-byte label needs more than a 64-byte bucket.
        let long = [b"com.".as_slice(), &[b'a'; 47], b"."].concat();
        let e = check_wildcard_hash(&[&long], 2048, 64).unwrap_err().to_string();
        assert_eq!(e, "could not build map_hash, you should increase map_hash_bucket_size: 64");
        assert!(check_wildcard_hash(&[&long[..long.len() - 2]], 2048, 64).is_ok());
    }

    #[test]
    fn pcre_meanings_kept() {
        let mut v = Variables::default();
        let m = |p: &str, subject: &[u8]| {
            regex_compile(p, false, &cmd(), &mut Variables::default()).unwrap().re.is_match(subject)
        };
        assert!(m(r"^\<a\>$", b"<a>"), "a backslash before punctuation is a literal");
        assert!(m(r"^a{$", b"a{") && m(r"^a{,3}$", b"a{,3}") && m(r"^x{2}$", b"xx"));
        assert!(m(r"^a(?#note)b$", b"ab"));
        assert!(m(r"^[[a]+$", b"[a[") && m(r"^[]x]+$", b"]x") && m(r"^[a&&b]+$", b"&") && m(r"^[[:digit:]]+$", b"12"));
        assert!(m(r"^\e\cA\012\o{101}\x41\x{42}\x4$", b"\x1b\x01\nAAB\x04"));
        assert!(m(r"^a\hb\vc\Nd$", b"a\tb\x0bcxd") && !m(r"^\N$", b"\n"));
        assert!(m(r"^a\Z", b"a\n") && m(r"^a\Z", b"a") && !m(r"^a\Z", b"ab"));
        assert!(m(r"^\Ea\R$", b"a\r\n") && m(r"[\b]", b"\x08"));
        assert!(m(r"^\x{e9}$", b"\xe9") && m(r"^\p{N}[\p{L}]$", b"1a"));
        assert!(m(r"^a$", b"a\n") && !m(r"^a$", b"a\n\n") && !m(r"(?m)^a$b", b"a\nb") && m(r"(?m)^b$", b"a\nb"));
        // Ranges from or to `-` (`--` is no set difference, as it is in some engines);
        // octal escapes: in a class always, outside from 10 up past the group count.
        assert!(m(r"^[--a]+$", b"-.5_a") && !m(r"^[--a]$", b","));
        assert!(m(r"^[!--]+$", b"!\"&,-") && !m(r"^[!--]$", b".") && m(r"^[---]$", b"-"));
        assert!(m(r"^[\101-\132]+$", b"AZ") && m(r"^[\8]$", b"8") && m(r"^\101$", b"A") && m(r"^x\18$", b"x\x018"));
        assert!(m(r"^(((((((((a)))))))))\10$", b"a\x08"));
        // After a finished range a `-` is a character that may start another; a run of
        // dashes alternates (checked byte by byte against PCRE2 10.42).
        assert!(m(r"^[a-c--e]+$", b"b-.e") && !m(r"^[a-c--e]$", b","));
        assert!(m(r"^[------\x41]+$", b"-A") && !m(r"^[------\x41]$", b"0"));
        // Octal counts only the groups before it: `\11` ahead of 11 groups is a tab.
        assert!(m(r"^\11(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)$", b"\tabcdefghijk"));
        let named = regex_compile("(?'host'[a-z]+)", false, &cmd(), &mut v).unwrap();
        assert_eq!(named.named.len(), 1);
        assert!(v.is_defined("host"));
    }

    #[test]
    fn pcre_errors() {
        // nginx's text: PCRE2's message, the pattern, and what follows the place of
        // the error unless that is the end (offsets as PCRE2 10.42 gives them).
        fn expected(p: &str, msg: &str, at: usize) -> String {
            match &p[at..] {
                "" => format!("pcre2_compile() failed: {msg} in \"{p}\" in t.conf:3"),
                rest => format!("pcre2_compile() failed: {msg} in \"{p}\" at \"{rest}\" in t.conf:3"),
            }
        }
        fn compile_error(p: &str) -> String {
            match regex_compile(p, false, &cmd(), &mut Variables::default()) {
                Ok(_) => format!("{p:?} compiled"),
                Err(e) => e.to_string(),
            }
        }
        fn compiles(p: &str) -> bool {
            regex_compile(p, false, &cmd(), &mut Variables::default()).is_ok()
        }
        assert_eq!(compile_error("(abc"), expected("(abc", "missing closing parenthesis", 4));
        assert_eq!(compile_error("abc)"), expected("abc)", "unmatched closing parenthesis", 3));
        assert_eq!(compile_error("+abc"), expected("+abc", "quantifier does not follow a repeatable item", 0));
        assert_eq!(compile_error("a**"), expected("a**", "quantifier does not follow a repeatable item", 2));
        assert_eq!(compile_error("[abc"), expected("[abc", "missing terminating ] for character class", 4));
        assert_eq!(compile_error("a{2,1}"), expected("a{2,1}", "numbers out of order in {} quantifier", 5));
        assert_eq!(compile_error("a(?<n>b"), expected("a(?<n>b", "missing closing parenthesis", 7));
        // Class ranges, with PCRE2's offsets (recorded from nginx 1.22.1 -t).
        let order = "range out of order in character class";
        assert_eq!(compile_error("^[z-a]$"), expected("^[z-a]$", order, 4));
        assert_eq!(compile_error("^[x--]$"), expected("^[x--]$", order, 4));
        assert_eq!(compile_error(r"[\x5a-\x41]"), expected(r"[\x5a-\x41]", order, 9));
        assert_eq!(compile_error(r"[a-\]]"), expected(r"[a-\]]", order, 4));
        let invalid = "invalid range in character class";
        assert_eq!(compile_error(r"[a-\d]"), expected(r"[a-\d]", invalid, 5));
        assert_eq!(compile_error(r"[\d-z]"), expected(r"[\d-z]", invalid, 3));
        assert_eq!(compile_error("[a-[:alpha:]]"), expected("[a-[:alpha:]]", invalid, 4));
        // Escapes past a byte; backreferences to no group; POSIX items.
        assert_eq!(
            compile_error(r"[\400]"),
            expected(r"[\400]", "octal value is greater than \\377 in 8-bit non-UTF-8 mode", 5)
        );
        assert_eq!(
            compile_error(r"\400"),
            expected(r"\400", "octal value is greater than \\377 in 8-bit non-UTF-8 mode", 4)
        );
        let big = "character code point value in \\x{} or \\o{} is too large";
        assert_eq!(compile_error(r"[a-\x{100}]"), expected(r"[a-\x{100}]", big, 9));
        assert_eq!(compile_error(r"\81"), expected(r"\81", "reference to non-existent subpattern", 2));
        assert_eq!(compile_error("[.a.]"), expected("[.a.]", "POSIX collating elements are not supported", 0));
        assert_eq!(compile_error("[a[=b=]]"), expected("[a[=b=]]", "POSIX collating elements are not supported", 2));
        assert_eq!(
            compile_error("[:alpha:]"),
            expected("[:alpha:]", "POSIX named classes are supported only within a class", 0)
        );
        assert_eq!(compile_error("[[:foo:]]"), expected("[[:foo:]]", "unknown POSIX class name", 3));
        // Literal text, `\cX`, comments and braced escapes are not read as syntax; a
        // reference to no group is reported after every other error.
        assert_eq!(compile_error(r"(\8"), expected(r"(\8", "missing closing parenthesis", 3));
        assert_eq!(compile_error(r"\E{2,1}"), expected(r"\E{2,1}", "numbers out of order in {} quantifier", 6));
        assert_eq!(compile_error("[a-[.a.]]"), expected("[a-[.a.]]", invalid, 4));
        assert_eq!(compile_error(r"\b{2}"), expected(r"\b{2}", "quantifier does not follow a repeatable item", 4));
        for ok in [
            r"\Q\9\E",
            r"\Q[z-a]\E",
            r"\Q[:alpha:]\E",
            r"\Q\400\E",
            r"\c[:alpha:]",
            r"\c\400",
            "(?#[)x",
            r"\x{41}*",
            r"a?\E+",
            r"a{2}\Q\E+",
            "a?(?#x)+",
            r"[\Qa\E-\Qz\E]",
            r"[\Qa\E-\Q\E]",
        ] {
            assert!(compiles(ok), "{ok}");
        }
        assert_eq!(compile_error(r"a\c"), expected(r"a\c", "\\c at end of pattern", 3));
        assert_eq!(
            compile_error("\\c\u{e9}"),
            expected("\\c\u{e9}", "\\c must be followed by a printable ASCII character", 2)
        );
        for ok in [
            "[--a]",
            "[!--]",
            "[---]",
            "[]-a]",
            r"[\x{41}-\x{5a}]",
            r"[\101-\132]",
            "(a)\\1",
            "[.]",
            "[[.]]",
            "[a-c-e]",
        ] {
            assert!(compiles(ok), "{ok}");
        }
        for ok in ["^127\\.(\\d+)$", "[]a]", "[^]]x", "a{2}b+?", "(?i)x|y*", "[[:alpha:]]+", "\\(", "a{,3}", "x{"] {
            assert!(compiles(ok), "{ok}");
        }
    }

    /// Hostile patterns (any mix of the characters the PCRE readers treat specially,
    /// and one beyond ASCII) are refused or compiled, never a panic.
    #[test]
    fn pcre_readers_never_panic() {
        let alphabet: Vec<char> = r"[]\-^:.=x{}0179a(?)<>'P|*+$dpo,E Q".chars().chain(['\u{e9}']).collect();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = next() % 13;
            let pattern: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let _ = regex_compile(&pattern, next() & 1 == 0, &cmd(), &mut Variables::default());
        }
    }

    fn cmd() -> Cmd {
        Cmd { name: "~x".into(), args: vec![], block: None, file: std::rc::Rc::from("t.conf"), line: 3 }
    }

    #[test]
    fn bytes_without_unicode_like_pcre() {
        let mut v = Variables::default();
        let re = regex_compile("^caf\u{e9}.$", true, &cmd(), &mut v).unwrap().re;
        assert!(re.is_match(b"CAF\xc3\xa9\xff"));
        assert!(re.is_match(b"caf\xc3\xa9\xff"));
        assert!(!re.is_match(b"caf\xc3\xa9\n"));
        let d = regex_compile("\\d+", false, &cmd(), &mut v).unwrap().re;
        assert!(!d.is_match("\u{661}".as_bytes()));
        let named = regex_compile("(?P<a>x)(?<b>y)", false, &cmd(), &mut v).unwrap();
        assert_eq!(named.named.len(), 2);
        assert!(v.is_defined("a") && v.is_defined("b"));
        // What PCRE has and the Rust regex crate had not: look-around, backreferences.
        assert!(regex_compile("(?=a)a", false, &cmd(), &mut v).unwrap().re.is_match(b"a"));
        assert!(regex_compile(r"^(a)\1$", false, &cmd(), &mut v).unwrap().re.is_match(b"aa"));
        let e = regex_compile("(a", false, &cmd(), &mut v).err().unwrap().to_string();
        assert_eq!(e, "pcre2_compile() failed: missing closing parenthesis in \"(a\" in t.conf:3");
    }

    #[test]
    fn bytes_above_ascii_one_by_one_as_pcre_without_utf() {
        let mut v = Variables::default();
        // "é+" repeats only the last byte of é; "[é]" is either of its two bytes.
        let plus = regex_compile("^\u{e9}+$", false, &cmd(), &mut v).unwrap().re;
        assert!(plus.is_match(b"\xc3\xa9\xa9"));
        assert!(!plus.is_match("\u{e9}\u{e9}".as_bytes()));
        let class = regex_compile("^[\u{e9}]+$", false, &cmd(), &mut v).unwrap().re;
        assert!(class.is_match(b"\xa9\xc3\xc3"));
        let escaped = regex_compile("^\\\u{e9}$", false, &cmd(), &mut v).unwrap().re;
        assert!(escaped.is_match("\u{e9}".as_bytes()), "a backslash before a byte only makes it literal");
    }

    #[test]
    fn hash_sizes() {
        let keys: Vec<Vec<u8>> = vec![b"a".to_vec(); 1];
        assert!(check_hash("map_hash", &keys, 2048, 64).is_ok());
        let long = vec![vec![b'x'; 47]];
        assert_eq!(
            check_hash("map_hash", &long, 2048, 64).unwrap_err().to_string(),
            "could not build map_hash, you should increase map_hash_bucket_size: 64"
        );
        assert!(check_hash("map_hash", &[vec![b'x'; 46]], 2048, 64).is_ok());
    }

    #[test]
    fn wildcard_keys() {
        let mut b = MapBuild { hostnames: true, ..Default::default() };
        assert!(b.add_key(b".Example.com", 0).is_ok());
        assert!(matches!(b.add_key(b"example.com", 1), Err(AddKey::Busy)));
        assert!(matches!(b.add_key(b"*.example.com", 1), Err(AddKey::Busy)));
        assert!(matches!(b.add_key(b"a.*.com", 1), Err(AddKey::Invalid)));
        assert!(matches!(b.add_key(b"a..com", 1), Err(AddKey::Invalid)));
        assert!(matches!(b.add_key(b"*", 1), Err(AddKey::Invalid)));
        assert!(b.add_key(b"www.example.*", 2).is_ok());
        assert!(b.add_key(b"*.b.example.com", 3).is_ok());
        let m = MapConf {
            source: Complex::default(),
            hostnames: true,
            values: Vec::new(),
            default: None,
            exact: b.exact,
            head: b.head,
            tail: b.tail,
            regexes: Vec::new(),
        };
        assert_eq!(m.head.get(&b"example.com"[..]), Some(&(0, true)));
        assert_eq!(m.tail.get(&b"www.example"[..]), Some(&2));
    }
}
