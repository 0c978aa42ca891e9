//! `ngx_regex.c`: nginx's regular expressions, by the library nginx itself uses.
//!
//! nginx compiles `~` patterns with PCRE2 (no UTF mode, so a pattern and a subject are
//! bytes). Linking the same library, rather than imitating it with another engine,
//! makes every construct mean what it means to nginx (look-around, backreferences,
//! `\Q..\E`, possessive and atomic groups, the match limit) and every compile error
//! read as nginx's, word for word.
//!
//! The library is linked by its runtime name, `libpcre2-8.so.0`: it is part of every
//! Debian system (grep needs it), so building needs no development package.

use std::cell::RefCell;
use std::ffi::c_int;
use std::ptr::NonNull;

thread_local! {
    /// The patterns compiled since the last `study`, for `pcre_jit`: (code, pattern).
    /// A pattern dropped before then nulls its entry (`Drop`; a failed load drops
    /// them all, in O(1) each); the next load starts the list afresh.
    static STUDIES: RefCell<Vec<(*mut Code, String)>> = const { RefCell::new(Vec::new()) };
    /// One match data for every match, grown to the most groups asked for
    /// (`ngx_regex_match_data`): PCRE2 keeps its backtracking frames in it, 20 KiB and
    /// more, so one per pattern would cost that much per pattern.
    static MATCH_DATA: RefCell<Option<(NonNull<MatchData>, usize)>> = const { RefCell::new(None) };
}

/// `pcre2_code_8`, `pcre2_match_data_8`: opaque to us.
#[repr(C)]
struct Code {
    _private: [u8; 0],
}
#[repr(C)]
struct MatchData {
    _private: [u8; 0],
}

const PCRE2_CASELESS: u32 = 0x0000_0008;
const PCRE2_INFO_CAPTURECOUNT: u32 = 4;
const PCRE2_INFO_NAMECOUNT: u32 = 17;
const PCRE2_INFO_NAMEENTRYSIZE: u32 = 18;
const PCRE2_INFO_NAMETABLE: u32 = 19;
const PCRE2_JIT_COMPLETE: u32 = 0x0000_0001;
const PCRE2_ERROR_NOMATCH: c_int = -1;
const PCRE2_CONFIG_JIT: u32 = 1;
/// A capture that took no part in the match.
const PCRE2_UNSET: usize = usize::MAX;

#[link(name = "libpcre2-8.so.0", kind = "dylib", modifiers = "+verbatim")]
extern "C" {
    fn pcre2_compile_8(
        pattern: *const u8,
        length: usize,
        options: u32,
        errorcode: *mut c_int,
        erroroffset: *mut usize,
        ccontext: *mut std::ffi::c_void,
    ) -> *mut Code;
    fn pcre2_code_free_8(code: *mut Code);
    fn pcre2_get_error_message_8(errorcode: c_int, buffer: *mut u8, bufflen: usize) -> c_int;
    fn pcre2_pattern_info_8(code: *const Code, what: u32, where_: *mut std::ffi::c_void) -> c_int;
    fn pcre2_jit_compile_8(code: *mut Code, options: u32) -> c_int;
    fn pcre2_match_data_create_8(ovecsize: u32, gcontext: *mut std::ffi::c_void) -> *mut MatchData;
    fn pcre2_config_8(what: u32, where_: *mut std::ffi::c_void) -> c_int;
    fn pcre2_match_data_free_8(match_data: *mut MatchData);
    fn pcre2_match_8(
        code: *const Code,
        subject: *const u8,
        length: usize,
        startoffset: usize,
        options: u32,
        match_data: *mut MatchData,
        mcontext: *mut std::ffi::c_void,
    ) -> c_int;
    fn pcre2_get_ovector_pointer_8(match_data: *mut MatchData) -> *const usize;
    fn pcre2_get_ovector_count_8(match_data: *mut MatchData) -> u32;
}

/// A compiled pattern (`ngx_regex_t`).
pub struct Regex {
    /// The pattern as written, for the messages that name it.
    pattern: String,
    code: NonNull<Code>,
    /// Its entry in `STUDIES`.
    study: usize,
    captures: usize,
    /// Named groups in PCRE2's name table order: (group number, name).
    names: Vec<(usize, Vec<u8>)>,
}

/// What a match gave (`ngx_regex_exec`'s return).
#[derive(Debug, PartialEq, Eq)]
pub enum Exec {
    NoMatch,
    /// A match. The groups, when asked for, run from group 0 up to the highest that
    /// took part (PCRE2's return count); a group among them that did not is `None`.
    Match,
    /// A failure other than no match (the match limit, say): PCRE2's negative code.
    Failed(i32),
}

impl Regex {
    /// `ngx_regex_compile`: the error is nginx's `rc->err`, e.g.
    /// `pcre2_compile() failed: missing closing parenthesis in "(a"`.
    pub fn compile(pattern: &[u8], caseless: bool) -> Result<Regex, String> {
        let options = if caseless { PCRE2_CASELESS } else { 0 };
        let (mut errcode, mut erroff) = (0 as c_int, 0usize);
        // SAFETY: the pattern pointer and length describe a live slice; the out-params
        // are valid locals; a null compile context asks for the defaults.
        let code = unsafe {
            pcre2_compile_8(pattern.as_ptr(), pattern.len(), options, &mut errcode, &mut erroff, std::ptr::null_mut())
        };
        let Some(code) = NonNull::new(code) else {
            let msg = error_message(errcode);
            let text = crate::core::conf::parser::bytes_to_text(pattern);
            return Err(match pattern.get(erroff..).filter(|rest| !rest.is_empty()) {
                Some(rest) => {
                    // nginx prints the rest as a C string: it ends at a NUL.
                    let rest = rest.split(|&b| b == 0).next().unwrap_or(b"");
                    format!(
                        "pcre2_compile() failed: {} in \"{}\" at \"{}\"",
                        msg,
                        text,
                        crate::core::conf::parser::bytes_to_text(rest)
                    )
                }
                None => format!("pcre2_compile() failed: {} in \"{}\"", msg, text),
            });
        };
        let pattern = crate::core::conf::parser::bytes_to_text(pattern);
        let study = STUDIES.with(|l| {
            let mut l = l.borrow_mut();
            l.push((code.as_ptr(), pattern.clone()));
            l.len() - 1
        });
        let mut re = Regex { pattern, code, study, captures: 0, names: Vec::new() };
        re.captures = re.info_u32(PCRE2_INFO_CAPTURECOUNT) as usize;
        let count = re.info_u32(PCRE2_INFO_NAMECOUNT) as usize;
        if count > 0 {
            let size = re.info_u32(PCRE2_INFO_NAMEENTRYSIZE) as usize;
            let mut table: *const u8 = std::ptr::null();
            // SAFETY: NAMETABLE writes one pointer, into `table`.
            let rc = unsafe {
                pcre2_pattern_info_8(code.as_ptr(), PCRE2_INFO_NAMETABLE, (&mut table as *mut *const u8).cast())
            };
            if rc == 0 && !table.is_null() && size > 2 {
                // SAFETY: PCRE2 documents the table as `count` entries of `size` bytes,
                // living as long as the code.
                let table = unsafe { std::slice::from_raw_parts(table, count * size) };
                for entry in table.chunks_exact(size) {
                    let group = usize::from(entry[0]) << 8 | usize::from(entry[1]);
                    let name = &entry[2..];
                    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                    re.names.push((group, name[..end].to_vec()));
                }
            }
        }
        Ok(re)
    }

    fn info_u32(&self, what: u32) -> u32 {
        let mut v: u32 = 0;
        // SAFETY: the items asked for here are all uint32_t.
        let rc = unsafe { pcre2_pattern_info_8(self.code.as_ptr(), what, (&mut v as *mut u32).cast()) };
        if rc == 0 {
            v
        } else {
            0
        }
    }

    /// How many capturing groups the pattern has.
    pub fn captures(&self) -> usize {
        self.captures
    }

    /// The named groups, (group number, name), in PCRE2's name table order.
    pub fn names(&self) -> &[(usize, Vec<u8>)] {
        &self.names
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// `ngx_regex_exec`: match `subject`; on a match, when `groups` is given, it is
    /// filled with the groups' byte ranges as PCRE2 set them.
    pub fn exec(&self, subject: &[u8], groups: Option<&mut Vec<Option<(usize, usize)>>>) -> Exec {
        MATCH_DATA.with(|cell| {
            let mut slot = cell.borrow_mut();
            let pairs = self.captures + 1;
            let md = match *slot {
                Some((md, size)) if size >= pairs => md,
                _ => {
                    if let Some((old, _)) = slot.take() {
                        // SAFETY: created below by PCRE2, freed once, not in use.
                        unsafe { pcre2_match_data_free_8(old.as_ptr()) };
                    }
                    // SAFETY: a null general context asks for malloc.
                    let md = unsafe { pcre2_match_data_create_8(pairs as u32, std::ptr::null_mut()) };
                    let Some(md) = NonNull::new(md) else {
                        // PCRE2_ERROR_NOMEMORY, as nginx's ngx_regex_exec says then.
                        return Exec::Failed(-48);
                    };
                    *slot = Some((md, pairs));
                    md
                }
            };
            // SAFETY: the code and the match data are valid; the subject slice is live
            // for the call; the match data is borrowed from the cell for the call, and no
            // reference into it outlives this closure.
            let rc = unsafe {
                pcre2_match_8(
                    self.code.as_ptr(),
                    subject.as_ptr(),
                    subject.len(),
                    0,
                    0,
                    md.as_ptr(),
                    std::ptr::null_mut(),
                )
            };
            if rc == PCRE2_ERROR_NOMATCH {
                return Exec::NoMatch;
            }
            if rc < 0 {
                return Exec::Failed(rc);
            }
            if let Some(groups) = groups {
                groups.clear();
                // SAFETY: the ovector holds `count` pairs and stays valid until the next
                // match on this match data, which cannot start before this copy ends.
                let ov = unsafe {
                    let count = pcre2_get_ovector_count_8(md.as_ptr()) as usize;
                    std::slice::from_raw_parts(pcre2_get_ovector_pointer_8(md.as_ptr()), count * 2)
                };
                // rc 0 means the ovector was too small: it holds every group of this
                // pattern, so that cannot happen; take what it holds then.
                let set = if rc == 0 { ov.len() / 2 } else { (rc as usize).min(pairs) };
                for pair in ov.chunks_exact(2).take(set) {
                    groups.push(match (pair[0], pair[1]) {
                        (PCRE2_UNSET, _) | (_, PCRE2_UNSET) => None,
                        (a, b) if a <= b && b <= subject.len() => Some((a, b)),
                        _ => None,
                    });
                }
            }
            Exec::Match
        })
    }

    /// Whether the pattern matches anywhere in `subject`; a failed match is no match.
    pub fn is_match(&self, subject: &[u8]) -> bool {
        self.exec(subject, None) == Exec::Match
    }
}

impl Drop for Regex {
    fn drop(&mut self) {
        let code = self.code.as_ptr();
        STUDIES.with(|l| {
            if let Some(entry) = l.borrow_mut().get_mut(self.study).filter(|e| e.0 == code) {
                entry.0 = std::ptr::null_mut();
            }
        });
        // SAFETY: created by PCRE2 for this value, freed once, and no longer listed.
        unsafe { pcre2_code_free_8(code) };
    }
}

/// `pcre_jit on`: whether the library can compile patterns to machine code (nginx's
/// `ngx_regex_pcre_jit` warns "PCRE2 library does not support JIT" when not).
pub fn jit_supported() -> bool {
    let mut jit: u32 = 0;
    // SAFETY: PCRE2_CONFIG_JIT writes one uint32_t.
    let r = unsafe { pcre2_config_8(PCRE2_CONFIG_JIT, (&mut jit as *mut u32).cast()) };
    r == 0 && jit == 1
}

/// A new load starts: what a failed one left (dropped patterns' null entries) goes.
pub fn forget_studies() {
    STUDIES.with(|l| l.borrow_mut().clear());
}

/// `ngx_regex_module_init`, once a configuration is read: with `pcre_jit on`, every
/// pattern it compiled is compiled to machine code (in the process that read it, so
/// workers inherit the code); each failure is an info line on `log` and that pattern
/// is interpreted. Either way the list starts afresh for the next configuration.
pub fn study(jit: bool, log: &crate::core::log::ErrorLog) {
    let studies = STUDIES.with(|l| std::mem::take(&mut *l.borrow_mut()));
    if !jit {
        return;
    }
    for (code, pattern) in studies.into_iter().filter(|(c, _)| !c.is_null()) {
        // SAFETY: a listed pattern is alive (its Drop nulls its entry) and no
        // match runs while a configuration is read.
        let n = unsafe { pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE) };
        if n != 0 {
            let msg = format!("pcre2_jit_compile() failed: {} in \"{}\", ignored", n, pattern);
            log.write(crate::core::conf::Level::Info, None, &msg, None, None);
        }
    }
}

/// `pcre2_get_error_message` into nginx's 128-byte buffer.
fn error_message(code: c_int) -> String {
    let mut buf = [0u8; 128];
    // SAFETY: the buffer and its length match.
    let n = unsafe { pcre2_get_error_message_8(code, buf.as_mut_ptr(), buf.len()) };
    let len = if n >= 0 { n as usize } else { buf.iter().position(|&b| b == 0).unwrap_or(0) };
    String::from_utf8_lossy(&buf[..len.min(buf.len())]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(re: &Regex, s: &[u8]) -> Option<Vec<Option<(usize, usize)>>> {
        let mut g = Vec::new();
        (re.exec(s, Some(&mut g)) == Exec::Match).then_some(g)
    }

    #[test]
    fn compile_errors_are_nginx_texts() {
        let e = |p: &str| Regex::compile(p.as_bytes(), false).err().unwrap();
        assert_eq!(e("^(127"), "pcre2_compile() failed: missing closing parenthesis in \"^(127\"");
        assert_eq!(e("a)b"), "pcre2_compile() failed: unmatched closing parenthesis in \"a)b\" at \")b\"");
        assert_eq!(e("(a)\\2"), "pcre2_compile() failed: reference to non-existent subpattern in \"(a)\\2\" at \"2\"");
        // The rest after the error's place is printed as a C string: up to a NUL.
        let nul = Regex::compile(b"a)b\0c", false).err().unwrap();
        assert_eq!(nul, "pcre2_compile() failed: unmatched closing parenthesis in \"a)b\0c\" at \")b\"");
    }

    #[test]
    fn pcre_constructs_match_as_pcre_does() {
        let re = Regex::compile(br"^(?!www\.)(\w+)\.(?<tld>com|org)$", false).unwrap();
        assert_eq!(re.captures(), 2);
        assert_eq!(re.names(), &[(2, b"tld".to_vec())]);
        assert_eq!(groups(&re, b"mail.com"), Some(vec![Some((0, 8)), Some((0, 4)), Some((5, 8))]));
        assert_eq!(groups(&re, b"www.com"), None);
        // A backreference, and \Q..\E.
        assert!(Regex::compile(br"^(a+)-\1$", false).unwrap().is_match(b"aa-aa"));
        assert!(Regex::compile(br"^\Q.*\E$", false).unwrap().is_match(b".*"));
        // Caseless, and bytes above ASCII as bytes.
        assert!(Regex::compile(b"^ABC$", true).unwrap().is_match(b"abc"));
        assert!(Regex::compile(b"^\xc3.$", false).unwrap().is_match(b"\xc3\xa9"));
        // A group that took no part is unset, and later unset groups are not returned.
        let re = Regex::compile(b"(a)|(b)(c)?", false).unwrap();
        assert_eq!(groups(&re, b"a"), Some(vec![Some((0, 1)), Some((0, 1))]));
        assert_eq!(groups(&re, b"b"), Some(vec![Some((0, 1)), None, Some((0, 1))]));
    }

    #[test]
    fn catastrophic_backtracking_fails_at_the_match_limit() {
        let re = Regex::compile(b"^(a+)+$", false).unwrap();
        let subject = [b"a".repeat(40), b"!".to_vec()].concat();
        assert_eq!(re.exec(&subject, None), Exec::Failed(-47));
    }
}
