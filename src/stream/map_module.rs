//! ngx_stream_map_module: `map SOURCE $var { ... }` (exact keys, `default`, `hostnames`
//! wildcards, `~` / `~*` regexes with captures, `include`, `volatile`),
//! `map_hash_max_size`, `map_hash_bucket_size`. No phase: the variable is computed when
//! first used and kept for the session (unless `volatile`).

use std::collections::{HashMap, HashSet};

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value;
use crate::core::conf::{parser, Block, Cmd, ConfError, ConfResult, Level};
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
            if re.exec(s, val) {
                return Some(*v);
            }
        }
        None
    }
}

/// A compiled `~` pattern (`ngx_stream_regex_t`): nginx's PCRE, here the `regex` crate
/// on bytes without Unicode (as PCRE without UTF), with the named groups' variables.
pub struct StreamRegex {
    re: regex::bytes::Regex,
    /// Named groups: (group number, variable index).
    named: Vec<(usize, usize)>,
}

/// `ngx_stream_regex_compile`: compile, with PCRE2's messages for the common mistakes,
/// and declare a variable per named group.
pub fn regex_compile(pattern: &str, caseless: bool, cmd: &Cmd, vars: &mut Variables) -> ConfResult<StreamRegex> {
    // (`\Q...\E` text is made escapes first, as for the compile; an error's place is
    // the pattern's.)
    let (quoted, from) = pcre_quotes_mapped(pattern);
    if let Some((msg, at)) = pcre_syntax_error(&quoted) {
        let at = from.get(at).copied().unwrap_or(pattern.len());
        let rest = pattern.get(at..).unwrap_or("");
        return Err(if at >= pattern.len() {
            cmd.err(format!("pcre2_compile() failed: {} in \"{}\"", msg, pattern))
        } else {
            cmd.err(format!("pcre2_compile() failed: {} in \"{}\" at \"{}\"", msg, pattern, rest))
        });
    }
    let translated = pcre_escapes(&pcre_bytes(&quoted));
    // PCRE's \p{..} classes need Unicode tables; elsewhere bytes match as PCRE without UTF.
    let unicode = pattern.contains("\\p") || pattern.contains("\\P");
    let re = regex::bytes::RegexBuilder::new(&translated).case_insensitive(caseless).unicode(unicode).build().map_err(
        |e| {
            cmd.err(format!(
                "regex \"{}\" compilation failed: {} (sluice matches with the Rust regex syntax)",
                pattern,
                short_error(&e)
            ))
        },
    )?;
    let mut named = Vec::new();
    for (i, n) in re.capture_names().enumerate() {
        if let Some(n) = n {
            let idx = add_variable(cmd, vars, n, var_not_found, 0)?;
            vars.set_capture(idx);
            named.push((i, idx));
        }
    }
    Ok(StreamRegex { re, named })
}

/// Bytes above ASCII as PCRE without UTF sees them: each one on its own (`é+` is the
/// byte C3 and one or more A9, `[é]` either byte), written `\xNN` for the regex crate,
/// which reads its pattern as Unicode text. A backslash before such a byte only makes
/// it literal, as it already is.
fn pcre_bytes(pattern: &str) -> String {
    if pattern.is_ascii() {
        return pattern.to_string();
    }
    let bytes = crate::core::conf::parser::text_to_bytes(pattern);
    let mut out = String::with_capacity(bytes.len() * 2);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' && bytes.get(i + 1).is_some_and(|n| n.is_ascii()) {
            out.push('\\');
            out.push(char::from(bytes[i + 1]));
            i += 2;
            continue;
        }
        if b == b'\\' {
            i += 1;
            continue;
        }
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{:02X}", b));
        }
        i += 1;
    }
    out
}

/// PCRE's `\Q...\E` (everything between is literal), which the regex crate lacks.
#[cfg(test)]
fn pcre_quotes(pattern: &str) -> String {
    pcre_quotes_mapped(pattern).0
}

/// `pcre_quotes`, with where each byte of its text came from in `pattern` (one more
/// entry for the end), so that an error found in the text names the pattern's place.
fn pcre_quotes_mapped(pattern: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(pattern.len());
    let mut from = Vec::with_capacity(pattern.len() + 1);
    let push = |out: &mut String, from: &mut Vec<usize>, text: &str, at: usize| {
        out.push_str(text);
        from.resize(out.len(), at);
    };
    let mut i = 0;
    while let Some(k) = pattern[i..].find('\\') {
        for (j, c) in pattern[i..i + k].char_indices() {
            push(&mut out, &mut from, c.encode_utf8(&mut [0; 4]), i + j);
        }
        let at = i + k;
        let after = &pattern[at + 1..];
        match after.chars().next() {
            Some('Q') => {
                let quoted = &after[1..];
                let (lit, next) = match quoted.find("\\E") {
                    Some(e) => (&quoted[..e], at + 2 + e + 2),
                    None => (quoted, pattern.len()),
                };
                for (j, c) in lit.char_indices() {
                    // A digit as `\xNN`: after `\1` or `\x4` a bare one would join the escape.
                    let text = match c {
                        '0'..='9' => format!("\\x{:02X}", c as u32),
                        _ => regex::escape(c.encode_utf8(&mut [0; 4])),
                    };
                    push(&mut out, &mut from, &text, at + 2 + j);
                }
                i = next;
            }
            // An escape is kept as it is; `\cX` takes X whatever it is (a backslash too).
            Some(c) => {
                let x = if c == 'c' { after[1..].chars().next().map_or(0, char::len_utf8) } else { 0 };
                let end = at + 1 + c.len_utf8() + x;
                for (j, ch) in pattern[at..end].char_indices() {
                    push(&mut out, &mut from, ch.encode_utf8(&mut [0; 4]), at + j);
                }
                i = end;
            }
            None => {
                push(&mut out, &mut from, "\\", at);
                i = pattern.len();
            }
        }
    }
    for (j, c) in pattern[i..].char_indices() {
        push(&mut out, &mut from, c.encode_utf8(&mut [0; 4]), i + j);
    }
    from.push(pattern.len());
    (out, from)
}

/// PCRE's meanings where the regex crate reads the same text otherwise, or not at all
/// (`pattern` is ASCII here): a backslash before punctuation only makes it literal
/// (`\<` is no word boundary), a `{` that starts no quantifier is literal (`{,n}` too,
/// as in PCRE2 10.42), `(?#...)` is a comment, `(?'name'...)` a named group, a `[` in
/// a class is literal, `$` is also before a final newline, and PCRE's `\e \h \H \v \V \N \R \Z \cX \0oo \o{..} \x`.
fn pcre_escapes(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = String::with_capacity(p.len() + 16);
    // Two digits: with Unicode off, `\xC3` is the byte, `\x{C3}` the character.
    let hex = |out: &mut String, v: u32| match v {
        0..=0xff => out.push_str(&format!("\\x{:02X}", v)),
        _ => out.push_str(&format!("\\x{{{:X}}}", v)),
    };
    let multiline = p.split("(?").skip(1).any(|g| g.split([':', ')']).next().is_some_and(|f| f.contains('m')));
    let mut class = false;
    // In a class, what the last item was, for PCRE's reading of a `-`: a range starts
    // only at a single character, and a `-` after a range or a set such as `\d` is a
    // character. (Every `-` that is a character goes out as `\x2D`: regex-syntax would
    // read `--` as a set difference.)
    let mut item = Item::None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && i + 1 < b.len() {
            let e = b[i + 1];
            i += 2;
            if class && e != b'E' {
                let set =
                    matches!(e, b'd' | b'D' | b'w' | b'W' | b's' | b'S' | b'h' | b'H' | b'v' | b'V' | b'p' | b'P');
                item = item.then(!set);
            }
            match e {
                _ if e.is_ascii_punctuation() || e == b' ' => hex(&mut out, u32::from(e)),
                b'e' => hex(&mut out, 0x1b),
                b'b' if class => hex(&mut out, 0x08),
                // A \E with no \Q before it.
                b'E' => {}
                b'h' if class => out.push_str(r"\t \xA0"),
                b'h' => out.push_str(r"[\t \xA0]"),
                b'H' if !class => out.push_str(r"[^\t \xA0]"),
                b'v' if class => out.push_str(r"\n\x0B\f\r\x85"),
                b'v' => out.push_str(r"[\n\x0B\f\r\x85]"),
                b'V' if !class => out.push_str(r"[^\n\x0B\f\r\x85]"),
                b'N' if !class => out.push_str(r"[^\n]"),
                b'R' if !class => out.push_str(r"(?:\r\n|[\n\x0B\f\r\x85])"),
                b'Z' if !class => out.push_str(r"(?:\n?\z)"),
                b'c' if i < b.len() => {
                    hex(&mut out, u32::from(b[i].to_ascii_uppercase() ^ 0x40));
                    i += 1;
                }
                // In a class `\8` and `\9` are the digits.
                b'8' | b'9' if class => out.push(char::from(e)),
                // `\0` and up to two more octal digits; in a class any digit 1-7 starts
                // such an escape too (never a backreference): `[\101-\132]`; outside,
                // `\NN` from 10 up does when the pattern has fewer groups (`\101` is "A").
                b'0'..=b'7' if e == b'0' || class || octal_not_group(p, i - 1) => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match b.get(i) {
                            Some(d @ b'0'..=b'7') => v = v * 8 + u32::from(d - b'0'),
                            _ => break,
                        }
                        i += 1;
                    }
                    hex(&mut out, v);
                }
                // `\o{101}`, `\x{41}`.
                b'o' | b'x' if b.get(i) == Some(&b'{') => {
                    let end = b[i..].iter().position(|&d| d == b'}').map_or(b.len(), |k| i + k);
                    match u32::from_str_radix(&p[i + 1..end], if e == b'o' { 8 } else { 16 }) {
                        Ok(v) => hex(&mut out, v),
                        // Left for the regex crate to refuse.
                        Err(_) => out.push_str(&p[i - 2..end]),
                    }
                    i = (end + 1).min(b.len());
                }
                b'p' | b'P' if b.get(i) == Some(&b'{') => {
                    let end = b[i..].iter().position(|&d| d == b'}').map_or(b.len(), |k| i + k + 1);
                    out.push_str(&p[i - 2..end]);
                    i = end;
                }
                b'x' => {
                    let n = b[i..].iter().take(2).take_while(|d| d.is_ascii_hexdigit()).count();
                    hex(&mut out, u32::from_str_radix(&p[i..i + n], 16).unwrap_or(0));
                    i += n;
                }
                _ => {
                    out.push('\\');
                    out.push(char::from(e));
                }
            }
            continue;
        }
        if class {
            match c {
                b']' => {
                    class = false;
                    out.push(']');
                }
                b'-' if item == Item::Char && !matches!(b.get(i + 1), None | Some(b']')) => {
                    out.push('-');
                    item = Item::RangeTo;
                }
                b'-' => {
                    out.push_str(r"\x2D");
                    item = item.then(true);
                }
                // A POSIX class, found as the syntax check finds it.
                b'[' if b.get(i + 1) == Some(&b':') && posix_end(b, i + 1).is_some() => {
                    let end = posix_end(b, i + 1).map_or(i + 1, |e| e + 2);
                    out.push_str(&p[i..end]);
                    i = end;
                    item = Item::None;
                    continue;
                }
                b'[' | b'&' | b'~' => {
                    hex(&mut out, u32::from(c));
                    item = item.then(true);
                }
                _ => {
                    out.push(char::from(c));
                    item = item.then(true);
                }
            }
            i += 1;
            continue;
        }
        match c {
            b'[' => {
                class = true;
                out.push('[');
                i += 1;
                if b.get(i) == Some(&b'^') {
                    out.push('^');
                    i += 1;
                }
                item = Item::None;
                if b.get(i) == Some(&b']') {
                    out.push_str(r"\]");
                    item = Item::Char;
                    i += 1;
                }
                continue;
            }
            b'{' => match quantifier(&b[i..]) {
                Some((_, _, len)) => {
                    out.push_str(&p[i..i + len]);
                    i += len;
                    continue;
                }
                None => out.push_str(r"\{"),
            },
            // PCRE's `$` also matches before a final newline (unless multiline).
            b'$' if !multiline => out.push_str(r"(?:\n?\z)"),
            b'(' if p[i..].starts_with("(?#") => {
                i = b[i..].iter().position(|&d| d == b')').map_or(b.len(), |k| i + k + 1);
                continue;
            }
            b'(' if p[i..].starts_with("(?'") => {
                if let Some(k) = p[i + 3..].find('\'') {
                    out.push_str("(?<");
                    out.push_str(&p[i + 3..i + 3 + k]);
                    out.push('>');
                    i += 3 + k + 1;
                    continue;
                }
                out.push('(');
            }
            _ => out.push(char::from(c)),
        }
        i += 1;
    }
    out
}

/// The last item of a character class (see `pcre_escapes`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Item {
    /// The class's start, a finished range, or a set (`\d`, `[:alpha:]`).
    None,
    /// One character: a `-` after it starts a range.
    Char,
    /// A range's `-`: the next item ends it.
    RangeTo,
}

impl Item {
    /// The state after an item that is one character (`single`) or a set.
    fn then(self, single: bool) -> Item {
        if self == Item::RangeTo || !single {
            Item::None
        } else {
            Item::Char
        }
    }
}

fn var_not_found(_: &mut SessionCore, _: usize, _: &mut Vec<u8>) -> bool {
    false
}

/// The one-line reason of a `regex` error (its syntax errors quote the pattern).
fn short_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().last().unwrap_or("").to_string())
}

/// The errors PCRE2 reports for unbalanced groups and classes, misplaced quantifiers
/// and a trailing backslash: its message and offset (`pattern.len()` when at the end).
fn pcre_syntax_error(p: &str) -> Option<(&'static str, usize)> {
    let b = p.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // Whether the previous item can take a quantifier.
    let mut repeatable = false;
    // The first reference to a group the pattern does not have.
    let mut bad_reference = None;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\\' => {
                if i + 1 >= b.len() {
                    return Some(("\\ at end of pattern", b.len()));
                }
                if let Some(e) = escape_error(p, i, false) {
                    return Some(e);
                }
                match b[i + 1] {
                    // A `\E` without `\Q` is nothing (the caller made `\Q...\E` escapes).
                    b'E' => {
                        i += 2;
                        continue;
                    }
                    // `\cX`: X is taken whatever it is (`escape_error` checked it).
                    b'c' => {
                        i += 3;
                        repeatable = true;
                        continue;
                    }
                    _ => {}
                }
                if b[i + 1].is_ascii_digit() && b[i + 1] != b'0' && !octal_not_group(p, i + 1) {
                    let n = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                    // (PCRE2 checks references once the whole pattern is read: any other
                    // error comes first.)
                    if p[i + 1..i + 1 + n].parse().unwrap_or(usize::MAX) > capture_groups(p, b.len()) {
                        bad_reference.get_or_insert(i + n);
                    }
                }
                // An assertion takes no quantifier.
                repeatable = !matches!(b[i + 1], b'b' | b'B' | b'A' | b'Z' | b'z' | b'G');
                // `\x{..}`, `\o{..}`, `\p{..}`, `\pL`: the escape's own braces or letter.
                i = match (b[i + 1], b.get(i + 2)) {
                    (b'x' | b'o' | b'p' | b'P', Some(b'{')) => {
                        b[i + 2..].iter().position(|&d| d == b'}').map_or(b.len(), |k| i + 2 + k + 1)
                    }
                    (b'p' | b'P', Some(_)) => i + 3,
                    _ => i + 2,
                };
                continue;
            }
            b'[' => {
                if matches!(b.get(i + 1), Some(b':' | b'.' | b'=')) && b.len() - i > 3 && posix_end(b, i + 1).is_some()
                {
                    return Some(match b[i + 1] {
                        b':' => ("POSIX named classes are supported only within a class", i),
                        _ => (POSIX_COLLATING, i),
                    });
                }
                let mut j = i + 1;
                if b.get(j) == Some(&b'^') {
                    j += 1;
                }
                // The previous item: a character (a range may start at it), or a class
                // such as `\d` (none may).
                let mut prev: Option<Option<u32>> = None;
                if b.get(j) == Some(&b']') {
                    prev = Some(Some(u32::from(b']')));
                    j += 1;
                }
                loop {
                    match b.get(j) {
                        None => return Some(("missing terminating ] for character class", b.len())),
                        Some(b'[')
                            if matches!(b.get(j + 1), Some(b':' | b'.' | b'=')) && posix_end(b, j + 1).is_some() =>
                        {
                            // A POSIX class [:alpha:] ([:^alpha:] negated).
                            let end = posix_end(b, j + 1).unwrap_or(j);
                            if b[j + 1] != b':' {
                                return Some((POSIX_COLLATING, j));
                            }
                            let name = p[j + 2..end].strip_prefix('^').unwrap_or(&p[j + 2..end]);
                            if !POSIX_CLASSES.contains(&name) {
                                return Some(("unknown POSIX class name", j + 2));
                            }
                            j = end + 2;
                            prev = Some(None);
                        }
                        Some(b']') => break,
                        Some(b'\\') if b.get(j + 1) == Some(&b'E') => j += 2,
                        Some(b'-') if prev.is_some() && !matches!(b.get(j + 1), None | Some(b']')) => {
                            let Some(Some(start)) = prev else {
                                return Some(("invalid range in character class", j));
                            };
                            // (PCRE2 reports the offset after the end's first character,
                            // or the end's last character for one out of order.)
                            if b.get(j + 1) == Some(&b'[')
                                && matches!(b.get(j + 2), Some(b':' | b'.' | b'='))
                                && posix_end(b, j + 2).is_some()
                            {
                                return Some(("invalid range in character class", j + 2));
                            }
                            if let Some(e) = escape_error(p, j + 1, true) {
                                return Some(e);
                            }
                            let (end, next) = class_item(b, j + 1);
                            match end {
                                None => return Some(("invalid range in character class", j + 3)),
                                Some(end) if end < start => {
                                    return Some(("range out of order in character class", next - 1));
                                }
                                Some(_) => {}
                            }
                            j = next;
                            prev = None;
                        }
                        Some(_) => {
                            if let Some(e) = escape_error(p, j, true) {
                                return Some(e);
                            }
                            let (item, next) = class_item(b, j);
                            prev = Some(item);
                            j = next;
                        }
                    }
                }
                i = j + 1;
                repeatable = true;
                continue;
            }
            b'(' if p[i..].starts_with("(?#") => {
                match b[i..].iter().position(|&d| d == b')') {
                    Some(k) => i += k + 1,
                    None => return Some(("missing ) after (?# comment", b.len())),
                }
                continue;
            }
            b'(' => {
                depth += 1;
                repeatable = false;
                // Skip a group's "?:", "?<name>", "?P<name>", "?i" ... opening.
                if b.get(i + 1) == Some(&b'?') {
                    i += 2;
                    continue;
                }
            }
            b')' => {
                if depth == 0 {
                    return Some(("unmatched closing parenthesis", i));
                }
                depth -= 1;
                repeatable = true;
            }
            b'|' => repeatable = false,
            b'*' | b'+' | b'?' => {
                if !repeatable {
                    return Some(("quantifier does not follow a repeatable item", i));
                }
                // A lazy or possessive suffix (after anything that is nothing).
                let k = after_nothing(p, i + 1);
                if matches!(b.get(k), Some(b'?') | Some(b'+')) {
                    i = k;
                }
                repeatable = false;
            }
            b'{' => {
                if let Some((lo, hi, len)) = quantifier(&b[i..]) {
                    // (PCRE2 reads the numbers before it looks at what they repeat.)
                    if hi.is_some_and(|h| h < lo) {
                        return Some(("numbers out of order in {} quantifier", i + len - 1));
                    }
                    if !repeatable {
                        return Some(("quantifier does not follow a repeatable item", i + len - 1));
                    }
                    i += len;
                    let k = after_nothing(p, i);
                    if matches!(b.get(k), Some(b'?') | Some(b'+')) {
                        i = k + 1;
                    }
                    repeatable = false;
                    continue;
                }
                repeatable = true;
            }
            b'^' | b'$' => repeatable = false,
            _ => repeatable = true,
        }
        i += 1;
    }
    if depth > 0 {
        return Some(("missing closing parenthesis", b.len()));
    }
    bad_reference.map(|at| ("reference to non-existent subpattern", at))
}

const POSIX_COLLATING: &str = "POSIX collating elements are not supported";
const POSIX_CLASSES: [&str; 14] = [
    "alpha", "lower", "upper", "alnum", "ascii", "blank", "cntrl", "digit", "graph", "print", "punct", "space", "word",
    "xdigit",
];

/// PCRE2's `check_posix_syntax`: whether `[` then `b[k]` (`:`, `.` or `=`) opens a POSIX
/// item closed by the same character and `]` before any `]` or another such opening;
/// where its closing character is.
fn posix_end(b: &[u8], k: usize) -> Option<usize> {
    let t = b[k];
    let mut p = k + 1;
    while p + 1 < b.len() {
        if b[p] == b'\\' && matches!(b[p + 1], b']' | b'\\') {
            p += 1;
        } else if (b[p] == b'[' && b[p + 1] == t) || b[p] == b']' {
            return None;
        } else if b[p] == t && b[p + 1] == b']' {
            return Some(p);
        }
        p += 1;
    }
    None
}

/// PCRE2's errors for a character escape at `p[at]` (a backslash): a `\c` without a
/// printable ASCII character after it, or a value that does not fit a byte (an octal
/// escape over \377, a `\x{..}` or `\o{..}` over FF).
fn escape_error(p: &str, at: usize, class: bool) -> Option<(&'static str, usize)> {
    let b = p.as_bytes();
    if b.get(at) != Some(&b'\\') {
        return None;
    }
    if b.get(at + 1) == Some(&b'c') {
        return match b.get(at + 2) {
            None => Some(("\\c at end of pattern", b.len())),
            Some(0x20..=0x7e) => None,
            Some(_) => Some(("\\c must be followed by a printable ASCII character", at + 2)),
        };
    }
    let (Some(v), next) = class_item(b, at) else { return None };
    if v <= 0xff {
        return None;
    }
    match b.get(at + 1)? {
        b'x' | b'o' => Some(("character code point value in \\x{} or \\o{} is too large", next - 1)),
        b'1'..=b'7' if class || octal_not_group(p, at + 1) => {
            Some(("octal value is greater than \\377 in 8-bit non-UTF-8 mode", next))
        }
        _ => None,
    }
}

/// Whether the digits at `p[at..]` (after a backslash, outside a class) are an octal
/// escape to PCRE2 rather than a backreference: a number from 10 up, greater than the
/// count of capturing groups before it, starting with an octal digit.
fn octal_not_group(p: &str, at: usize) -> bool {
    let b = p.as_bytes();
    let n = b[at..].iter().take_while(|d| d.is_ascii_digit()).count();
    let num: usize = p[at..at + n].parse().unwrap_or(usize::MAX);
    num >= 10 && matches!(b[at], b'0'..=b'7') && num > capture_groups(p, at)
}

/// The capturing groups of a pattern before `until`: each `(` outside a class not
/// escaped, and not one of `(?` 's other forms than a named group (`(?#...)` comments
/// hold none).
fn capture_groups(p: &str, until: usize) -> usize {
    let b = p.as_bytes();
    let (mut n, mut class, mut i) = (0, false, 0);
    while i < until.min(b.len()) {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !class => {
                class = true;
                i += usize::from(b.get(i + 1) == Some(&b'^'));
                i += usize::from(b.get(i + 1) == Some(&b']'));
            }
            b']' if class => class = false,
            b'(' if !class && p[i..].starts_with("(?#") => {
                i = b[i..].iter().position(|&d| d == b')').map_or(b.len(), |k| i + k);
            }
            b'(' if !class => {
                let rest = &p[i + 1..];
                let named = rest.starts_with("?P<")
                    || rest.starts_with("?'")
                    || (rest.starts_with("?<") && !rest.starts_with("?<=") && !rest.starts_with("?<!"));
                n += usize::from(!rest.starts_with('?') || named);
            }
            _ => {}
        }
        i += 1;
    }
    n
}

/// The item of a character class at `b[j]` as PCRE2 reads it: the character it stands
/// for (None for a class such as `\d` or `\p{L}`), and where the next item begins.
fn class_item(b: &[u8], j: usize) -> (Option<u32>, usize) {
    let Some(&c) = b.get(j) else { return (None, j) };
    if c != b'\\' {
        return (Some(u32::from(c)), j + 1);
    }
    let Some(&e) = b.get(j + 1) else { return (None, j + 1) };
    let digits = |from: usize, radix: u32, max: usize| {
        let n = b[from.min(b.len())..].iter().take(max).take_while(|d| char::from(**d).is_digit(radix)).count();
        let v = std::str::from_utf8(&b[from..from + n]).ok().and_then(|t| u32::from_str_radix(t, radix).ok());
        (v.unwrap_or(0), from + n)
    };
    let braced = |radix: u32| {
        let end = b[j + 2..].iter().position(|&d| d == b'}').map_or(b.len(), |k| j + 2 + k);
        let v = std::str::from_utf8(&b[j + 3..end]).ok().and_then(|t| u32::from_str_radix(t, radix).ok());
        (v.unwrap_or(0), (end + 1).min(b.len()))
    };
    let (v, next) = match e {
        b'd' | b'D' | b'w' | b'W' | b's' | b'S' | b'h' | b'H' | b'v' | b'V' => return (None, j + 2),
        b'p' | b'P' if b.get(j + 2) == Some(&b'{') => return (None, braced(16).1),
        b'p' | b'P' => return (None, (j + 3).min(b.len())),
        b'x' | b'o' if b.get(j + 2) == Some(&b'{') => braced(if e == b'x' { 16 } else { 8 }),
        b'x' => digits(j + 2, 16, 2),
        b'0'..=b'7' => digits(j + 1, 8, 3),
        b'c' if j + 2 < b.len() => (u32::from(b[j + 2].to_ascii_uppercase() ^ 0x40), j + 3),
        b'n' => (0x0a, j + 2),
        b't' => (0x09, j + 2),
        b'r' => (0x0d, j + 2),
        b'f' => (0x0c, j + 2),
        b'e' => (0x1b, j + 2),
        b'a' => (0x07, j + 2),
        b'b' => (0x08, j + 2),
        _ => (u32::from(e), j + 2),
    };
    (Some(v), next)
}

/// Where `p[i..]` goes on after items that are nothing to PCRE2: lone `\E`s and
/// `(?#...)` comments (a quantifier's `?` or `+` suffix may come after them).
fn after_nothing(p: &str, mut i: usize) -> usize {
    loop {
        if p[i..].starts_with("\\E") {
            i += 2;
        } else if p[i..].starts_with("(?#") {
            match p[i..].find(')') {
                Some(k) => i += k + 1,
                None => return i,
            }
        } else {
            return i;
        }
    }
}

/// `{n}`, `{n,}`, `{n,m}` at the start of `b`: (n, m, length).
fn quantifier(b: &[u8]) -> Option<(u64, Option<u64>, usize)> {
    let end = b.iter().position(|&c| c == b'}')?;
    let inner = std::str::from_utf8(b.get(1..end)?).ok()?;
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match inner.split_once(',') {
        None => Some((num(inner)?, num(inner), end + 1)),
        Some((lo, "")) => Some((num(lo)?, None, end + 1)),
        Some((lo, hi)) => Some((num(lo)?, Some(num(hi)?), end + 1)),
    }
}

impl StreamRegex {
    /// Whether the pattern matches anywhere in `subject` (no captures kept).
    pub fn is_match(&self, subject: &[u8]) -> bool {
        self.re.is_match(subject)
    }

    /// `ngx_stream_regex_exec`: on a match the session's captures ($1..$9) become this
    /// match's, and the named groups' variables are set.
    pub fn exec(&self, s: &mut SessionCore, subject: &[u8]) -> bool {
        // Most regexes of a long list miss: a plain match test is much cheaper than
        // finding the groups, and allocates nothing.
        if !self.re.is_match(subject) {
            return false;
        }
        let mut locs = self.re.capture_locations();
        if self.re.captures_read(&mut locs, subject).is_none() {
            return false;
        }
        let groups: Vec<Option<(usize, usize)>> = (0..locs.len()).map(|i| locs.get(i)).collect();
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
        true
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
    fn pcre_quotes_become_escapes() {
        assert_eq!(pcre_quotes(r"^(a)\Q.b(c\E$"), r"^(a)\.b\(c$");
        assert_eq!(pcre_quotes(r"\Q*"), r"\*");
        assert_eq!(pcre_quotes(r"\d\.x\"), r"\d\.x\");
        assert_eq!(pcre_quotes(r"\1\Q8\E"), r"\1\x38");
        // `\cX` takes X, a backslash too: `\c\Q` is no quote.
        assert_eq!(pcre_quotes(r"\c\Q.\E"), r"\c\Q.\E");
        // Where each byte came from: `a\Q[\E]` is `a\[]`, its `]` from the pattern's 6.
        assert_eq!(pcre_quotes_mapped(r"a\Q[\E]"), (r"a\[]".to_string(), vec![0, 3, 3, 6, 7]));
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
        // Ranges from or to `-` (regex-syntax would read `--` as a set difference);
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
        assert_eq!(pcre_syntax_error("(abc"), Some(("missing closing parenthesis", 4)));
        assert_eq!(pcre_syntax_error("abc)"), Some(("unmatched closing parenthesis", 3)));
        assert_eq!(pcre_syntax_error("+abc"), Some(("quantifier does not follow a repeatable item", 0)));
        assert_eq!(pcre_syntax_error("a**"), Some(("quantifier does not follow a repeatable item", 2)));
        assert_eq!(pcre_syntax_error("[abc"), Some(("missing terminating ] for character class", 4)));
        assert_eq!(pcre_syntax_error("a{2,1}"), Some(("numbers out of order in {} quantifier", 5)));
        assert_eq!(pcre_syntax_error("a(?<n>b"), Some(("missing closing parenthesis", 7)));
        // Class ranges, with PCRE2's offsets (recorded from nginx 1.22.1 -t).
        let order = "range out of order in character class";
        assert_eq!(pcre_syntax_error("^[z-a]$"), Some((order, 4)));
        assert_eq!(pcre_syntax_error("^[x--]$"), Some((order, 4)));
        assert_eq!(pcre_syntax_error(r"[\x5a-\x41]"), Some((order, 9)));
        assert_eq!(pcre_syntax_error(r"[a-\]]"), Some((order, 4)));
        let invalid = "invalid range in character class";
        assert_eq!(pcre_syntax_error(r"[a-\d]"), Some((invalid, 5)));
        assert_eq!(pcre_syntax_error(r"[\d-z]"), Some((invalid, 3)));
        assert_eq!(pcre_syntax_error("[a-[:alpha:]]"), Some((invalid, 4)));
        // Escapes past a byte; backreferences to no group; POSIX items.
        assert_eq!(
            pcre_syntax_error(r"[\400]"),
            Some(("octal value is greater than \\377 in 8-bit non-UTF-8 mode", 5))
        );
        assert_eq!(pcre_syntax_error(r"\400"), Some(("octal value is greater than \\377 in 8-bit non-UTF-8 mode", 4)));
        let big = "character code point value in \\x{} or \\o{} is too large";
        assert_eq!(pcre_syntax_error(r"[a-\x{100}]"), Some((big, 9)));
        assert_eq!(pcre_syntax_error(r"\81"), Some(("reference to non-existent subpattern", 2)));
        assert_eq!(pcre_syntax_error("[.a.]"), Some(("POSIX collating elements are not supported", 0)));
        assert_eq!(pcre_syntax_error("[a[=b=]]"), Some(("POSIX collating elements are not supported", 2)));
        assert_eq!(pcre_syntax_error("[:alpha:]"), Some(("POSIX named classes are supported only within a class", 0)));
        assert_eq!(pcre_syntax_error("[[:foo:]]"), Some(("unknown POSIX class name", 3)));
        // Literal text, `\cX`, comments and braced escapes are not read as syntax; a
        // reference to no group is reported after every other error.
        assert_eq!(pcre_syntax_error(r"(\8"), Some(("missing closing parenthesis", 3)));
        assert_eq!(pcre_syntax_error(r"\E{2,1}"), Some(("numbers out of order in {} quantifier", 6)));
        assert_eq!(pcre_syntax_error("[a-[.a.]]"), Some((invalid, 4)));
        assert_eq!(pcre_syntax_error(r"\b{2}"), Some(("quantifier does not follow a repeatable item", 4)));
        // (`\Q...\E` text reaches the check as escapes, as regex_compile makes it.)
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
            assert_eq!(pcre_syntax_error(&pcre_quotes(ok)), None, "{ok}");
        }
        assert_eq!(pcre_syntax_error(r"a\c"), Some(("\\c at end of pattern", 3)));
        assert_eq!(pcre_syntax_error("\\c\u{e9}"), Some(("\\c must be followed by a printable ASCII character", 2)));
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
            assert_eq!(pcre_syntax_error(ok), None, "{ok}");
        }
        for ok in ["^127\\.(\\d+)$", "[]a]", "[^]]x", "a{2}b+?", "(?i)x|y*", "[[:alpha:]]+", "\\(", "a{,3}", "x{"] {
            assert_eq!(pcre_syntax_error(ok), None, "{ok}");
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
        let e = regex_compile("(?=a)b", false, &cmd(), &mut v).err().unwrap().to_string();
        assert!(e.starts_with("regex \"(?=a)b\" compilation failed: look-around"), "{e}");
        assert!(e.ends_with(" in t.conf:3"), "{e}");
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
        assert_eq!(pcre_bytes("a\\.b"), "a\\.b");
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
