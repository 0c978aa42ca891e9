//! Stream variables (`ngx_stream_variables.c`) and complex values ("a $x ${y}z",
//! `ngx_stream_script.c`): modules register variables by name at configuration time,
//! values reference them by index, and a session evaluates them into a byte buffer.

use std::collections::HashMap;

use crate::core::conf::{Cmd, ConfError, ConfResult};
use crate::core::log::Level;
use crate::stream::session::SessionCore;

/// Append the value to `out`; `false` means "not found" (logged as `-`).
pub type VarGet = fn(&mut SessionCore, usize, &mut Vec<u8>) -> bool;

#[derive(Clone)]
pub struct VarDef {
    pub name: String,
    pub get: Option<VarGet>,
    /// Passed to `get` (an index into the owning module's tables).
    pub data: usize,
    /// A prefix variable (`$proxy_protocol_tlv_`): matches any name that starts with it.
    pub prefix: bool,
    /// The value is kept per session after the first evaluation (map, geo, set).
    pub cached: bool,
    /// A built-in nginx caches once evaluated (no `NGX_STREAM_VAR_NOCACHEABLE`) whose
    /// value moves during a session ($bytes_sent, ...): kept from an evaluation before
    /// the log phase, so a log line shows that early value as nginx's does. (Built-ins
    /// that never change within a session need no cache: the answer is the same.)
    pub cacheable: bool,
    /// Made by a directive (map, geo, split_clients, set, a regex's named capture):
    /// nginx's `NGX_STREAM_VAR_CHANGEABLE`.
    pub changeable: bool,
    /// A regex capture ($1..$9 or a named one): its value can change while a value
    /// that reads it is being built (see `Complex::eval`).
    pub capture: bool,
    /// A `volatile` map declared it: nginx's `NGX_STREAM_VAR_NOCACHEABLE`, which stays
    /// whatever declares the name again. Its value is kept like any other, but each value
    /// that reads it directly (and each log line) forgets it first (`Complex::flush`),
    /// as nginx flushes a complex value's variables before building it.
    pub volatile: bool,
    /// A built-in nginx marks `NGX_STREAM_VAR_NOCACHEABLE` ($status, $session_time,
    /// $msec, the times, $upstream_*, $limit_conn_status): each value that reads it
    /// flushes it, so it meets the depth limit again (see `eval_var`).
    pub nocacheable: bool,
}

/// The variable table of one configuration.
#[derive(Default, Clone)]
pub struct Variables {
    defs: Vec<VarDef>,
    by_name: HashMap<String, usize>,
    /// The variables referenced (not only declared); `defs` holds them in nginx's index order.
    uses: std::collections::HashSet<usize>,
}

impl Variables {
    /// Declare a variable (a module's built-in or one made by `map`, `geo`, `set`).
    /// A name declared twice by different modules keeps the first getter, as nginx's
    /// `NGX_STREAM_VAR_CHANGEABLE` variables do; `set` redeclares freely.
    pub fn define(&mut self, name: &str, get: VarGet, data: usize) -> usize {
        let idx = self.index_of(name);
        let d = &mut self.defs[idx];
        if d.get.is_none() {
            d.get = Some(get);
            d.data = data;
        }
        idx
    }

    /// A built-in of sluice's that nginx 1.22.1 lacks (`$server_name`): configurations
    /// written for nginx may make their own with `set`, `map`, `geo` or
    /// `split_clients`, which then take its place (nginx's changeable variables).
    pub fn define_extension(&mut self, name: &str, get: VarGet, data: usize) -> usize {
        let idx = self.define(name, get, data);
        self.defs[idx].changeable = true;
        idx
    }

    /// Declare a variable made by a directive (nginx's `NGX_STREAM_VAR_CHANGEABLE`):
    /// `None` if NAME is a built-in variable ("the duplicate ... variable"). A later
    /// declaration replaces the getter (and its caching), as in nginx; a `weak` one
    /// (`set`) only fills a missing getter.
    pub fn define_changeable(&mut self, name: &str, get: VarGet, data: usize, weak: bool) -> Option<usize> {
        let idx = self.index_of(name);
        let d = &mut self.defs[idx];
        if d.get.is_some() && !d.changeable {
            return None;
        }
        d.changeable = true;
        if !weak || d.get.is_none() {
            d.get = Some(get);
            d.data = data;
            d.cached = false;
            // (A built-in's own caching goes with its getter.)
            d.cacheable = false;
        }
        Some(idx)
    }

    /// A built-in a configuration may declare again (nginx's `NGX_STREAM_VAR_CHANGEABLE`
    /// on a module's variable, as the ssl module's are): `map`, `geo`,
    /// `split_clients` take its place, `set` gives it a value.
    pub fn set_changeable(&mut self, idx: usize) {
        if let Some(d) = self.defs.get_mut(idx) {
            d.changeable = true;
        }
    }

    /// `volatile`: evaluated afresh in each value that reads it (see `VarDef`), whatever
    /// declares the name later.
    pub fn set_volatile(&mut self, idx: usize) {
        if let Some(d) = self.defs.get_mut(idx) {
            d.volatile = true;
            d.cached = false;
        }
    }

    pub fn define_prefix(&mut self, name: &str, get: VarGet) {
        let idx = self.index_of(name);
        self.defs[idx].get = Some(get);
        self.defs[idx].prefix = true;
    }

    pub fn set_capture(&mut self, idx: usize) {
        if let Some(d) = self.defs.get_mut(idx) {
            d.capture = true;
        }
    }

    /// Whether any of `vars` can change while a value that reads it is being built: a
    /// capture, or a volatile variable that a nested value evaluates again (see
    /// `Complex::eval`).
    pub fn reads_changing(&self, mut vars: impl Iterator<Item = usize>) -> bool {
        vars.any(|i| self.defs.get(i).is_some_and(|d| d.capture || d.volatile))
    }

    pub fn set_cached(&mut self, idx: usize) {
        if let Some(d) = self.defs.get_mut(idx) {
            d.cached = !d.volatile;
        }
    }

    /// A built-in whose first value (before the log phase) is kept: see `VarDef`.
    /// A built-in nginx flushes in each value that reads it: see `VarDef::nocacheable`.
    pub fn define_nocacheable(&mut self, name: &str, get: VarGet, data: usize) -> usize {
        let idx = self.define(name, get, data);
        self.defs[idx].nocacheable = true;
        idx
    }

    pub fn define_cacheable(&mut self, name: &str, get: VarGet, data: usize) -> usize {
        let idx = self.define(name, get, data);
        self.defs[idx].cacheable = true;
        idx
    }

    pub fn is_defined(&self, name: &str) -> bool {
        self.by_name.get(&name.to_ascii_lowercase()).is_some_and(|&i| self.defs[i].get.is_some())
    }

    /// Variable names are case-insensitive and kept in lower case, as nginx's
    /// `ngx_stream_get_variable_index` (its "unknown" message shows them so).
    fn index_of(&mut self, name: &str) -> usize {
        let name = &name.to_ascii_lowercase();
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.defs.len();
        self.defs.push(VarDef {
            name: name.to_string(),
            get: None,
            data: 0,
            prefix: false,
            cached: false,
            cacheable: false,
            capture: false,
            changeable: false,
            volatile: false,
            nocacheable: false,
        });
        self.by_name.insert(name.to_string(), i);
        i
    }

    /// Reference a variable by name (it may be defined later in the file).
    pub fn reference(&mut self, name: &str) -> usize {
        let i = self.index_of(name);
        self.uses.insert(i);
        i
    }

    /// After the whole configuration is read: bind prefix variables, and refuse names
    /// nobody defined (`ngx_stream_variables_init_vars`).
    pub fn finish(&mut self) -> ConfResult {
        let prefixes: Vec<(String, VarGet)> =
            self.defs.iter().filter(|d| d.prefix).filter_map(|d| d.get.map(|g| (d.name.clone(), g))).collect();
        let mut unknown: Vec<usize> = Vec::new();
        for (i, d) in self.defs.iter_mut().enumerate() {
            if d.get.is_some() {
                continue;
            }
            if let Some((_, g)) = prefixes.iter().find(|(p, _)| d.name.starts_with(p.as_str())) {
                d.get = Some(*g);
                d.data = i;
                continue;
            }
            if self.uses.contains(&i) {
                unknown.push(i);
            }
        }
        // The first one referenced, as nginx walks its variables in index order.
        if let Some(&i) = unknown.first() {
            return Err(ConfError::bare(format!("unknown \"{}\" variable", self.defs[i].name)));
        }
        Ok(())
    }

    /// The names of the variables the configuration made (`map`, `geo`, `set`, ...).
    pub fn user_names(&self) -> impl Iterator<Item = &str> {
        self.defs.iter().filter(|d| d.changeable && d.get.is_some()).map(|d| d.name.as_str())
    }

    pub fn def(&self, i: usize) -> Option<&VarDef> {
        self.defs.get(i)
    }

    pub fn len(&self) -> usize {
        self.defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }
}

/// The internal name of capture `n` ($1..$9): not a name a configuration can write.
pub fn capture_name(n: usize) -> String {
    format!("${}", n)
}

/// Evaluate variable `idx` for session `s`, appending to `out`.
pub fn eval_var(s: &mut SessionCore, idx: usize, out: &mut Vec<u8>) -> bool {
    // Set below only when this very call stops at the depth limit.
    s.var_cycle = false;
    let cycle = s.cycle.clone();
    let Some(def) = cycle.vars.def(idx) else { return false };
    let Some(get) = def.get else { return false };
    // A value stored for this session (`set`, a regex's named capture, a cached
    // variable's first evaluation, "not found" included) wins over the getter.
    if let Some(Some(kept)) = s.var_cache.get(idx) {
        if let Some(v) = kept {
            out.extend_from_slice(v);
        }
        return kept.is_some();
    }
    // A variable whose value needs itself (`map $x $b { default "x$b"; }`) ends
    // after 100 evaluations one inside another, as nginx's; the innermost is not found.
    // Only the variables directives make (map, geo, split_clients, set) evaluate
    // others, but nginx asks a built-in's handler within the limit too whenever its
    // slot holds nothing: the session's first evaluation, or after a flush of a
    // no-cacheable one. ($1..$9 are no variables to nginx: never limited.)
    // (nginx flags some built-ins changeable, $ssl_* among them: what decides is
    // whether a module's own getter fills the slot, not the flag.)
    let builtin = !(def.cached || def.volatile);
    if builtin && (def.capture || s.var_valid.get(idx) == Some(&true)) {
        return eval_getter(s, idx, def, get, out);
    }
    if s.var_depth >= VAR_DEPTH {
        s.log(Level::Error, &format!("cycle while evaluating variable \"{}\"", def.name), None);
        s.var_cycle = true;
        return false;
    }
    s.var_depth += 1;
    let found = eval_getter(s, idx, def, get, out);
    s.var_depth -= 1;
    // A nested call's stop is not this call's.
    s.var_cycle = false;
    if builtin {
        s.set_var_valid(idx, def.nocacheable);
    }
    found
}

/// How deep variable evaluations may nest (nginx's `ngx_stream_variable_depth` starts
/// at 100).
const VAR_DEPTH: u8 = 100;

fn eval_getter(s: &mut SessionCore, idx: usize, def: &VarDef, get: VarGet, out: &mut Vec<u8>) -> bool {
    if def.cached || def.volatile || (def.cacheable && !s.logging) {
        let start = out.len();
        let found = get(s, def.data, out);
        let v = found.then(|| out[start..].to_vec());
        if def.volatile {
            s.cache_var_no_cacheable(idx, v);
        } else {
            s.cache_var(idx, v);
        }
        return found;
    }
    let data = if def.prefix { idx } else { def.data };
    get(s, data, out)
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(Vec<u8>),
    Var(usize),
}

/// A value with variables, compiled once (`ngx_stream_complex_value_t`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Complex {
    parts: Vec<Part>,
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl Complex {
    /// Compile `text` as written in `cmd`, with nginx's script errors.
    pub fn compile(text: &str, cmd: &Cmd, vars: &mut Variables) -> ConfResult<Complex> {
        Self::compile_inner(text, cmd, vars, true)
    }

    /// A log format: `$1` is the variable named "1" there, as in nginx's log module (it
    /// knows no captures), so it is unknown.
    pub fn compile_log(text: &str, cmd: &Cmd, vars: &mut Variables) -> ConfResult<Complex> {
        Self::compile_inner(text, cmd, vars, false)
    }

    fn compile_inner(text: &str, cmd: &Cmd, vars: &mut Variables, captures: bool) -> ConfResult<Complex> {
        // Bytes as written (a non-UTF-8 byte of the file comes out as itself).
        let raw = crate::core::conf::parser::text_to_bytes(text);
        let b = &raw[..];
        // Names are ASCII name characters, so these slices are text.
        let name_at = |r: std::ops::Range<usize>| std::str::from_utf8(&b[r]).unwrap_or("");
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'$' {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            i += 1;
            // `$1`..`$9` are one digit: "$1x" is capture 1, then "x" (nginx's scripts).
            if let Some(&d) = b.get(i).filter(|d| captures && (b'1'..=b'9').contains(*d)) {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var(vars.reference(&capture_name(usize::from(d - b'0')))));
                i += 1;
                continue;
            }
            let (name, next) = if b.get(i) == Some(&b'{') {
                let start = i + 1;
                // "${" at the very end: nginx's script compiler has no name to read.
                if start == b.len() {
                    return Err(cmd.err("invalid variable name"));
                }
                let mut j = start;
                while j < b.len() && b[j] != b'}' {
                    if !is_name_char(b[j]) {
                        break;
                    }
                    j += 1;
                }
                if b.get(j) != Some(&b'}') {
                    return Err(
                        cmd.err(format!("the closing bracket in \"{}\" variable is missing", name_at(start..j)))
                    );
                }
                (name_at(start..j), j + 1)
            } else {
                let start = i;
                let mut j = i;
                while j < b.len() && is_name_char(b[j]) {
                    j += 1;
                }
                (name_at(start..j), j)
            };
            if name.is_empty() {
                return Err(cmd.err("invalid variable name"));
            }
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(vars.reference(name)));
            i = next;
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Complex { parts })
    }

    /// `self` followed by `other` (a log format's arguments are compiled one by one, so a
    /// variable name ends where its argument does).
    pub fn append(&mut self, other: Complex) {
        for p in other.parts {
            match (self.parts.last_mut(), p) {
                (Some(Part::Lit(a)), Part::Lit(b)) => a.extend_from_slice(&b),
                (_, p) => self.parts.push(p),
            }
        }
    }

    pub fn literal(v: &[u8]) -> Complex {
        Complex { parts: vec![Part::Lit(v.to_vec())] }
    }

    /// The value when it has no variables.
    pub fn as_static(&self) -> Option<&[u8]> {
        match self.parts.as_slice() {
            [] => Some(b""),
            [Part::Lit(v)] => Some(v),
            _ => None,
        }
    }

    pub fn has_variables(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(_)))
    }

    /// Evaluate into `out` (not-found variables are empty, as in nginx scripts).
    ///
    /// nginx first forgets the values of the volatile variables the value reads
    /// (`flush`), then builds it in two passes, lengths and then bytes. The first
    /// evaluates each variable and keeps its value; the second copies what is kept then.
    /// That can differ from what the first saw: captures are the last regex match's,
    /// so a regex map evaluated in the first pass changes a capture read before it; and
    /// a nested value that reads a volatile variable evaluates it again, so a reference
    /// before that nested one shows its new value. So where a value reads a capture or
    /// a volatile variable it is built twice here too, the second time re-reading just
    /// those: a second pass longer than the first fails with nginx's (Debian 1.22.1's)
    /// alert, `false` and nothing in `out` (the caller ends the session with 500 where
    /// nginx does); a shorter one is what comes out.
    pub fn eval(&self, s: &mut SessionCore, out: &mut Vec<u8>) -> bool {
        self.flush(s);
        if !self.reads_changing(s) {
            self.eval_once(s, out);
            return true;
        }
        let start = out.len();
        let mut ends = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            match p {
                Part::Lit(v) => out.extend_from_slice(v),
                Part::Var(i) => {
                    eval_var(s, *i, out);
                }
            }
            ends.push(out.len() - start);
        }
        let first = out.split_off(start);
        let mut from = 0;
        for (p, &end) in self.parts.iter().zip(&ends) {
            match p {
                Part::Var(i) if s.cycle.vars.reads_changing(std::iter::once(*i)) => {
                    eval_var(s, *i, out);
                }
                _ => out.extend_from_slice(&first[from..end]),
            }
            from = end;
        }
        if out.len() - start > first.len() {
            out.truncate(start);
            s.log(Level::Alert, "no buffer space in script copy", None);
            return false;
        }
        true
    }

    /// Forget the kept values that volatile evaluations made of the variables this
    /// value reads, so that they are evaluated again
    /// (`ngx_stream_script_flush_complex_value`; a log line's
    /// `ngx_stream_script_flush_no_cacheable_variables`).
    pub fn flush(&self, s: &mut SessionCore) {
        for p in &self.parts {
            if let Part::Var(i) = p {
                s.flush_var(*i);
            }
        }
    }

    /// Whether this value reads a capture or a volatile variable (and so is built in
    /// two passes).
    pub fn reads_changing(&self, s: &SessionCore) -> bool {
        let vars = self.parts.iter().filter_map(|p| match p {
            Part::Var(i) => Some(*i),
            Part::Lit(_) => None,
        });
        s.cycle.vars.reads_changing(vars)
    }

    /// The only pass, standing for both of nginx's, so a variable that closes a cycle
    /// is reported a second time, as nginx asks it in each pass (a variable stopped at
    /// the limit is not kept).
    fn eval_once(&self, s: &mut SessionCore, out: &mut Vec<u8>) {
        for p in &self.parts {
            match p {
                Part::Lit(v) => out.extend_from_slice(v),
                Part::Var(i) => {
                    if !eval_var(s, *i, out) && s.var_cycle {
                        s.var_cycle = false;
                        if let Some(def) = s.cycle.vars.def(*i) {
                            let msg = format!("cycle while evaluating variable \"{}\"", def.name);
                            s.log(Level::Error, &msg, None);
                        }
                    }
                }
            }
        }
    }

    /// The parts: literal bytes, or a variable index (log formats write "-" for a
    /// variable that is not found and escape values, so they walk the parts themselves).
    pub fn parts(&self) -> impl Iterator<Item = PartRef<'_>> {
        self.parts.iter().map(|p| match p {
            Part::Lit(v) => PartRef::Lit(v),
            Part::Var(i) => PartRef::Var(*i),
        })
    }
}

pub enum PartRef<'a> {
    Lit(&'a [u8]),
    Var(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> Cmd {
        Cmd { name: "return".into(), args: vec![], block: None, file: std::rc::Rc::from("t.conf"), line: 3 }
    }

    #[test]
    fn compile_forms() {
        let mut v = Variables::default();
        let c = Complex::compile("a $x ${y}z", &cmd(), &mut v).unwrap();
        assert_eq!(c.parts.len(), 5);
        assert!(Complex::compile("plain", &cmd(), &mut v).unwrap().as_static().is_some());
        assert_eq!(
            Complex::compile("a$", &cmd(), &mut v).unwrap_err().to_string(),
            "invalid variable name in t.conf:3"
        );
        assert_eq!(
            Complex::compile("${ab", &cmd(), &mut v).unwrap_err().to_string(),
            "the closing bracket in \"ab\" variable is missing in t.conf:3"
        );
        let e = v.finish().unwrap_err();
        assert_eq!(e.to_string(), "unknown \"x\" variable");
    }
}
