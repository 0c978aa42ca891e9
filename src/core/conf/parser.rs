//! The nginx configuration tokenizer (`ngx_conf_read_token`) on nom: words, quoted strings
//! with escapes, `#` comments, `;`, `{` and `}`, with nginx's error messages and line numbers.
//!
//! The result is a `Block` tree. `include` is not expanded here: it is a directive like any
//! other and the builder parses the named files when it meets it, so errors come out in the
//! same order as nginx's single-pass parse-and-apply.

use std::rc::Rc;

use nom::bytes::complete::{take_till, take_while};
use nom::IResult;
use nom::Parser;

use super::conf_buffer::{first_overflow, Overflow};
use super::{os_err, Block, Cmd, ConfError, ConfFile};

/// What a parse of one source is: a file, or the `-g` command-line directives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    File,
    Param,
}

struct Tokenizer<'a> {
    text: &'a [u8],
    pos: usize,
    line: u32,
    file: Rc<str>,
    source: Source,
    /// Set once an error has been stored, so every enclosing block stops too.
    failed: bool,
    /// Blocks open around the current token.
    depth: usize,
    /// Where nginx's reading buffer overflows in this file (a token too long).
    overflow: Option<Overflow>,
}

/// Blocks nest at most this deep. nginx reads directives as it parses, so a deep pile
/// of unknown blocks fails at the first; sluice reads the whole tree first, and without
/// a bound a hostile file would overflow the stack. The deepest real configuration
/// (stream, server, a map or geo inside) is 3.
const MAX_DEPTH: usize = 100;

enum Token {
    /// A directive's words, ended by `;` (false) or `{` (true).
    Directive(Vec<String>, bool),
    BlockDone,
    FileDone,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Spaces and comments between tokens. `#` starts a comment only at a token's start.
fn gap(i: &[u8]) -> IResult<&[u8], usize> {
    let mut rest = i;
    loop {
        let (r, _) = take_while(is_space).parse(rest)?;
        rest = r;
        if rest.first() == Some(&b'#') {
            let (r, _) = take_till(|c| c == b'\n').parse(rest)?;
            rest = r;
        } else {
            return Ok((rest, i.len() - rest.len()));
        }
    }
}

/// The raw bytes of an unquoted word: up to a space, `;` or `{` (but every `{` right
/// after a `$` stays in the word, as nginx's `variable` flag keeps them: `${{x`), with
/// `\` taking the next byte literally.
fn bare_word(i: &[u8]) -> IResult<&[u8], &[u8]> {
    let mut n = 0;
    let mut variable = false;
    while n < i.len() {
        let c = i[n];
        if c == b'{' && variable {
            n += 1;
            continue;
        }
        variable = c == b'$';
        if c == b'\\' {
            n = (n + 2).min(i.len());
            continue;
        }
        if is_space(c) || c == b';' || c == b'{' {
            break;
        }
        n += 1;
    }
    Ok((&i[n..], &i[..n]))
}

/// The raw bytes inside a quoted string up to the closing `quote` (not consumed);
/// `None` if the text ends first.
fn quoted_body(i: &[u8], quote: u8) -> Option<usize> {
    let mut n = 0;
    while n < i.len() {
        match i[n] {
            b'\\' => n += 2,
            c if c == quote => return Some(n),
            _ => n += 1,
        }
    }
    None
}

/// nginx's unescaping of a word: `\" \' \\` lose the backslash, `\t \r \n` become
/// control characters, any other backslash stays.
fn unescape(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            match raw[i + 1] {
                b'"' | b'\'' | b'\\' => {
                    out.push(raw[i + 1]);
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    bytes_to_text(&out)
}

/// Where a byte that is not part of valid UTF-8 goes in a configuration word: nginx keeps
/// words as bytes, so such a byte (a Latin-1 "é" in a `return` text, say) must come out
/// of `text_to_bytes` as it went in. Private-use code points U+10FF80..U+10FFFF stand for
/// bytes 0x80..0xFF.
const RAW_BYTE_BASE: u32 = 0x10FF00;

/// A file name from the configuration or the command line as the bytes it was written
/// with (nginx opens the bytes as given: a Latin-1 name is not turned into UTF-8).
pub fn os_path(name: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::path::PathBuf::from(std::ffi::OsString::from_vec(text_to_bytes(name).into_owned()))
}

/// A word as text: valid UTF-8 as it is, every other byte as its stand-in.
pub fn bytes_to_text(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    let raw = |s: &mut String, c: u8| s.push(char::from_u32(RAW_BYTE_BASE + u32::from(c)).unwrap_or('?'));
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_stand_in(c) {
                // A stand-in written as such goes as its bytes, to come back as itself.
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf).bytes().for_each(|b| raw(&mut s, b));
            } else {
                s.push(c);
            }
        }
        for &c in chunk.invalid() {
            raw(&mut s, c);
        }
    }
    s
}

fn is_stand_in(c: char) -> bool {
    (RAW_BYTE_BASE + 0x80..=RAW_BYTE_BASE + 0xff).contains(&u32::from(c))
}

/// The bytes a configuration word was written with (the inverse of `bytes_to_text`).
pub fn text_to_bytes(s: &str) -> std::borrow::Cow<'_, [u8]> {
    let raw = is_stand_in;
    // (Most text is ASCII: checked first, at once, for the log writer's every line.)
    if s.is_ascii() || !s.chars().any(raw) {
        return std::borrow::Cow::Borrowed(s.as_bytes());
    }
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        if raw(c) {
            out.push((u32::from(c) - RAW_BYTE_BASE) as u8);
        } else {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    std::borrow::Cow::Owned(out)
}

impl<'a> Tokenizer<'a> {
    fn advance(&mut self, n: usize) {
        let end = (self.pos + n).min(self.text.len());
        self.line += self.text[self.pos..end].iter().filter(|&&c| c == b'\n').count() as u32;
        self.pos = end;
    }

    fn err(&self, msg: impl Into<String>) -> ConfError {
        match self.source {
            Source::File => ConfError::at(msg, &self.file, self.line),
            Source::Param => ConfError::at(msg, &self.file, 0),
        }
    }

    fn eof_error(&self) -> ConfError {
        match self.source {
            Source::Param => self.err("unexpected end of parameter, expecting \";\""),
            Source::File => self.err("unexpected end of file, expecting \";\" or \"}\""),
        }
    }

    fn too_long(&self, start_line: u32, word: &[u8], quote: Option<u8>) -> ConfError {
        let mut e = match quote {
            Some(q) => {
                self.err(format!("too long parameter, probably missing terminating \"{}\" character", q as char))
            }
            None => {
                // The first ten bytes as they are (half a character too).
                let head = bytes_to_text(&word[..word.len().min(10)]);
                self.err(format!("too long parameter \"{}...\" started", head))
            }
        };
        if let Some((_, l)) = &mut e.at {
            if *l != 0 {
                *l = start_line;
            }
        }
        e
    }

    fn next_token(&mut self) -> Result<Token, ConfError> {
        let mut words: Vec<String> = Vec::new();
        loop {
            let (_, n) = gap(&self.text[self.pos..]).map_err(|_| self.eof_error())?;
            // A comment or the token that begins here is where nginx's buffer overflows.
            if let Some(o) = self.overflow.filter(|o| o.start <= self.pos + n + 1) {
                self.advance(o.start.saturating_sub(self.pos));
                return Err(self.too_long(o.line, &self.text[o.start.min(self.text.len())..], o.quote));
            }
            self.advance(n);
            let rest = &self.text[self.pos..];
            let Some(&c) = rest.first() else {
                if words.is_empty() {
                    return Ok(Token::FileDone);
                }
                return Err(self.eof_error());
            };
            match c {
                b';' | b'{' => {
                    self.advance(1);
                    if words.is_empty() {
                        return Err(self.err(format!("unexpected \"{}\"", c as char)));
                    }
                    return Ok(Token::Directive(words, c == b'{'));
                }
                b'}' if words.is_empty() => {
                    self.advance(1);
                    return Ok(Token::BlockDone);
                }
                b'}' => {
                    self.advance(1);
                    return Err(self.err("unexpected \"}\""));
                }
                b'"' | b'\'' => {
                    let body = &rest[1..];
                    let Some(len) = quoted_body(body, c) else {
                        self.advance(rest.len());
                        return Err(self.eof_error());
                    };
                    words.push(unescape(&body[..len]));
                    self.advance(len + 2);
                    // After a closing quote nginx wants a space, ";", "{" (or ")").
                    match self.text.get(self.pos) {
                        None => {}
                        Some(&d) if is_space(d) || d == b';' || d == b'{' => {}
                        // (A ")" is no space: it starts the next word, as in ngx_conf_read_token.)
                        Some(b')') => {}
                        Some(&d) => {
                            self.advance(1);
                            // One byte, as nginx's "%c" (a no-break space pasted after a
                            // quote shows as its first byte, 0xc2).
                            return Err(self.err(format!("unexpected \"{}\"", bytes_to_text(&[d]))));
                        }
                    }
                }
                _ => {
                    let (_, raw) = bare_word(rest).map_err(|_| self.eof_error())?;
                    words.push(unescape(raw));
                    self.advance(raw.len());
                }
            }
        }
    }

    fn block(&mut self, nested: bool) -> Block {
        let mut block = Block::default();
        loop {
            match self.next_token() {
                Err(e) => {
                    block.error = Some(e);
                    self.failed = true;
                    break;
                }
                Ok(Token::BlockDone) => {
                    if !nested {
                        block.error = Some(self.err("unexpected \"}\""));
                        self.failed = true;
                    }
                    break;
                }
                Ok(Token::FileDone) => {
                    if nested {
                        block.error = Some(self.err("unexpected end of file, expecting \"}\""));
                        self.failed = true;
                    }
                    break;
                }
                Ok(Token::Directive(mut words, opens_block)) => {
                    let name = words.remove(0);
                    // `-g` directives have no line: nginx says "in command line".
                    let line = if self.source == Source::Param { 0 } else { self.line };
                    let mut cmd = Cmd { name, args: words, block: None, file: self.file.clone(), line };
                    if opens_block {
                        if self.source == Source::Param {
                            block.error = Some(self.err("block directives are not supported in -g option"));
                            self.failed = true;
                            break;
                        }
                        if self.depth >= MAX_DEPTH {
                            block.error = Some(self.err(format!("blocks nested deeper than {}", MAX_DEPTH)));
                            self.failed = true;
                            block.cmds.push(cmd);
                            break;
                        }
                        self.depth += 1;
                        cmd.block = Some(self.block(true));
                        self.depth -= 1;
                    }
                    block.cmds.push(cmd);
                    if self.failed {
                        break;
                    }
                }
            }
        }
        block.end_line = self.line;
        block
    }
}

/// Parse configuration text that came from `file`.
pub fn parse_bytes(text: &[u8], file: Rc<str>) -> Block {
    let overflow = first_overflow(text);
    let mut t = Tokenizer { text, pos: 0, line: 1, file, source: Source::File, failed: false, depth: 0, overflow };
    t.block(false)
}

/// Parse the `-g` directives (errors say `in command line`).
pub fn parse_str(text: &str) -> Block {
    // The argument's bytes, those that are not UTF-8 too (`-g` came as such text).
    let bytes = text_to_bytes(text);
    let mut t = Tokenizer {
        text: &bytes,
        pos: 0,
        line: 1,
        file: Rc::from("command line"),
        source: Source::Param,
        failed: false,
        depth: 0,
        // nginx reads `-g` from memory, with no buffer to run out.
        overflow: None,
    };
    t.block(false)
}

/// Read and parse a file. An unreadable file is an error at `from` (the `include`
/// directive), or without a location for the main file.
pub fn parse_file(path: &str, from: Option<&Cmd>) -> Result<(ConfFile, Block), ConfError> {
    match read_conf(path) {
        Ok(text) => {
            let file: Rc<str> = Rc::from(path);
            let block = parse_bytes(&text, file.clone());
            Ok((ConfFile { path: file, text }, block))
        }
        // nginx opens a directory fine and fails reading it, at crit and with no place.
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(ConfError {
            level: crate::core::conf::Level::Crit,
            msg: format!("pread() \"{}\" failed {}", path, os_err(&e)),
            at: None,
        }),
        Err(e) => {
            let msg = format!("open() \"{}\" failed {}", path, os_err(&e));
            Err(match from {
                Some(cmd) => cmd.err(msg),
                None => ConfError::bare(msg),
            })
        }
    }
}

/// A configuration file's bytes, as many as fstat() gives it when opened: nginx reads
/// up to that size, so a pipe (`-c /dev/stdin` fed by one) is an empty configuration.
fn read_conf(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(os_path(path))?;
    let size = file.metadata()?.len();
    let mut text = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(size).read_to_end(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any bytes survive the trip through a word's text.
    #[test]
    fn words_keep_their_bytes() {
        for b in [&b"plain"[..], b"\xff\xc3\xa9\xe9", b"\xc3", b"a\xf4\x8f\xbf\xbfz", b"\x80\x00\xfe"] {
            assert_eq!(&*text_to_bytes(&bytes_to_text(b)), b);
        }
    }

    /// A hostile pile of blocks stops at MAX_DEPTH with an error, instead of
    /// overflowing the stack (the test thread's is 2 MiB).
    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let n = 100_000;
        let text = format!("{}{}", "a {".repeat(n), "}".repeat(n));
        let mut b = p(&text);
        let mut depth = 0;
        while let Some(inner) = b.cmds.pop().and_then(|c| c.block) {
            b = inner;
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH);
        assert!(b.error.is_some_and(|e| e.to_string().contains("nested deeper than 100")));
    }

    fn p(s: &str) -> Block {
        parse_bytes(s.as_bytes(), Rc::from("t.conf"))
    }

    fn err(s: &str) -> String {
        fn first(b: &Block) -> Option<String> {
            for c in &b.cmds {
                if let Some(e) = c.block.as_ref().and_then(first) {
                    return Some(e);
                }
            }
            b.error.as_ref().map(|e| e.to_string())
        }
        first(&p(s)).unwrap_or_default()
    }

    #[test]
    fn words_blocks_and_lines() {
        let b = p("a 1 2;\nstream {\n  server\n  { listen 80; }\n}\n");
        assert!(b.error.is_none());
        assert_eq!(b.cmds[0].name, "a");
        assert_eq!(b.cmds[0].args, vec!["1", "2"]);
        let s = &b.cmds[1];
        assert_eq!(s.line, 2);
        let srv = &s.block.as_ref().unwrap().cmds[0];
        assert_eq!(srv.line, 4, "a block directive is located at its `{{`");
        assert_eq!(srv.block.as_ref().unwrap().cmds[0].args, vec!["80"]);
    }

    #[test]
    fn quotes_escapes_comments() {
        let b = p("x \"a\\\"b\" 'c\\'d' \"t\\tn\" e\\;f #c;\n y${z}w g${v};");
        let c = &b.cmds[0];
        // `\;` keeps its backslash (nginx unescapes only quotes, `\\`, t, r, n).
        assert_eq!(c.args, vec!["a\"b", "c'd", "t\tn", "e\\;f", "y${z}w", "g${v}"]);
        let b = p("x y$z{ }");
        assert!(b.cmds[0].block.is_some(), "a brace not right after a dollar opens a block");
        // nginx's `variable` flag lasts over every brace that follows the dollar.
        let b = p("x a${{b ${{{c} $\\{d $v{ }");
        assert_eq!(b.cmds[0].args, vec!["a${{b", "${{{c}", "$\\{d", "$v"]);
        assert!(b.cmds[0].block.is_some(), "a name between dollar and brace ends the variable");
        let b = p("x a#b;");
        assert_eq!(b.cmds[0].args, vec!["a#b"]);
        let b = p("x \"\\d\";");
        assert_eq!(b.cmds[0].args, vec!["\\d"], "unknown escapes keep the backslash");
        // A ")" after a closing quote ends the word and starts the next one.
        let b = p("x 'a')b \"c\") ;");
        assert_eq!(b.cmds[0].args, vec!["a", ")b", "c", ")"]);
    }

    #[test]
    fn errors_like_nginx() {
        assert_eq!(err("a;\n}\n"), "unexpected \"}\" in t.conf:2");
        assert_eq!(err("a {\nb;\n"), "unexpected end of file, expecting \"}\" in t.conf:3");
        assert_eq!(err("a b"), "unexpected end of file, expecting \";\" or \"}\" in t.conf:1");
        assert_eq!(err(";"), "unexpected \";\" in t.conf:1");
        assert_eq!(err("a \"b\"c;"), "unexpected \"c\" in t.conf:1");
        assert_eq!(err("a \"b;\n\n"), "unexpected end of file, expecting \";\" or \"}\" in t.conf:3");
        assert_eq!(err("a b }"), "unexpected \"}\" in t.conf:1");
    }

    #[test]
    fn command_line_params() {
        let b = parse_str("pid /x; daemon off;");
        assert_eq!(b.cmds.len(), 2);
        let b = parse_str("pid /x");
        assert_eq!(b.error.unwrap().to_string(), "unexpected end of parameter, expecting \";\" in command line");
    }
}
