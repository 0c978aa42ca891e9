//! Where nginx's 4096-byte configuration buffer overflows (`NGX_CONF_BUFFER` in
//! `ngx_conf_read_token`).
//!
//! nginx reads a file through one buffer. When the buffer is used up, the bytes of the
//! token being read (from its start) move to the front and the rest is refilled; if
//! those bytes already fill the whole buffer, the token is "too long". The start it
//! measures from is the token's first byte (after the quote of a quoted one), and it
//! stays there until the next byte after the token has been read: a word ended by a
//! space, or a quoted word and the byte after its closing quote, count that byte too, a
//! `#` comment counts up to its newline, and a word ended by `;` or `{` does not. So a
//! 4095-byte word followed by a space is refused where the same word followed by `;`
//! is not, and only where the buffer happens to run out; this reproduces that
//! arithmetic byte by byte over the file.

/// nginx's `NGX_CONF_BUFFER`.
pub const CONF_BUFFER: usize = 4096;

/// The first place nginx finds a token too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// The offset the token is measured from (its first byte, after a quote).
    pub start: usize,
    /// The line the token began on.
    pub line: u32,
    /// The quote of a quoted token.
    pub quote: Option<u8>,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Run `ngx_conf_read_token`'s state machine over `text` as nginx reads a file, and
/// say where its buffer overflows first, if it does before the file ends. A syntax
/// error stops the scan (nginx stops there, and the tokenizer reports it).
pub fn first_overflow(text: &[u8]) -> Option<Overflow> {
    let len = text.len();
    let mut buf_end = len.min(CONF_BUFFER);
    let mut pos = 0;
    let mut line = 1u32;
    'token: loop {
        // ngx_conf_read_token starts afresh for every directive.
        let mut start = pos;
        let mut start_line = line;
        let (mut last_space, mut need_space, mut sharp, mut quoted) = (true, false, false, false);
        let (mut d_quoted, mut s_quoted, mut variable) = (false, false, false);
        let mut words = 0usize;
        loop {
            if pos >= buf_end {
                if pos >= len {
                    return None;
                }
                if pos - start == CONF_BUFFER {
                    let quote = if d_quoted {
                        Some(b'"')
                    } else if s_quoted {
                        Some(b'\'')
                    } else {
                        None
                    };
                    return Some(Overflow { start, line: start_line, quote });
                }
                buf_end = (start + CONF_BUFFER).min(len);
            }
            let ch = text[pos];
            pos += 1;
            if ch == b'\n' {
                line += 1;
                if sharp {
                    sharp = false;
                }
            }
            if sharp {
                continue;
            }
            if quoted {
                quoted = false;
                continue;
            }
            if need_space {
                if is_space(ch) {
                    last_space = true;
                    need_space = false;
                    continue;
                }
                if ch == b';' || ch == b'{' {
                    continue 'token;
                }
                if ch != b')' {
                    return None;
                }
                last_space = true;
                need_space = false;
            }
            if last_space {
                start = pos - 1;
                start_line = line;
                if is_space(ch) {
                    continue;
                }
                match ch {
                    b';' | b'{' | b'}' => {
                        if (ch == b'}') != (words == 0) {
                            return None;
                        }
                        continue 'token;
                    }
                    b'#' => sharp = true,
                    b'\\' => {
                        quoted = true;
                        last_space = false;
                    }
                    b'"' => {
                        start += 1;
                        d_quoted = true;
                        last_space = false;
                    }
                    b'\'' => {
                        start += 1;
                        s_quoted = true;
                        last_space = false;
                    }
                    b'$' => {
                        variable = true;
                        last_space = false;
                    }
                    _ => last_space = false,
                }
                continue;
            }
            if ch == b'{' && variable {
                continue;
            }
            variable = false;
            if ch == b'\\' {
                quoted = true;
                continue;
            }
            if ch == b'$' {
                variable = true;
                continue;
            }
            let found = if d_quoted {
                d_quoted = ch != b'"';
                need_space = !d_quoted;
                need_space
            } else if s_quoted {
                s_quoted = ch != b'\'';
                need_space = !s_quoted;
                need_space
            } else if is_space(ch) || ch == b';' || ch == b'{' {
                last_space = true;
                true
            } else {
                false
            };
            if found {
                words += 1;
                if ch == b';' || ch == b'{' {
                    continue 'token;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose token starts right at a buffer's start: `pad` bytes of spaces
    /// before, so the buffer runs out inside the token.
    fn with(token: &str, after: &str) -> Vec<u8> {
        let mut v = format!("return {token}{after}").into_bytes();
        v.extend_from_slice(&[b'\n'; 5000]);
        v.extend_from_slice(b"events {}\n");
        v
    }

    #[test]
    fn the_byte_after_a_word_counts() {
        let w4095 = "a".repeat(4095);
        assert!(first_overflow(&with(&w4095, " ;")).is_some(), "4095 and a space");
        assert_eq!(first_overflow(&with(&w4095, ";")), None, "4095 and a ;");
        let w4094 = "a".repeat(4094);
        assert_eq!(first_overflow(&with(&w4094, " ;")), None, "4094 and a space");
        let o = first_overflow(&with(&w4095, "\n;")).expect("too long");
        assert_eq!((o.start, o.line, o.quote), (7, 1, None));
    }

    #[test]
    fn quoted_words_count_their_closing_quote_and_the_next_byte() {
        let q = |n: usize, after: &str| with(&format!("\"{}\"", "q".repeat(n)), after);
        assert_eq!(first_overflow(&q(4094, ";")), None);
        assert_eq!(first_overflow(&q(4095, ";")).map(|o| o.quote), Some(None), "closed: not quoted any more");
        assert!(first_overflow(&q(4094, " ;")).is_some());
        assert_eq!(first_overflow(&q(4093, " ;")), None);
        let open = format!("return \"{}", "q".repeat(6000));
        assert_eq!(first_overflow(open.as_bytes()).map(|o| o.quote), Some(Some(b'"')));
    }

    #[test]
    fn small_files_and_long_comments() {
        assert_eq!(first_overflow(b"events {}\n"), None);
        // A comment is measured from its "#" until its newline is read (the newline
        // itself is read as a space between tokens).
        let comment = |n: usize| {
            let mut c = format!("#{}\n", "c".repeat(n)).into_bytes();
            c.extend_from_slice(&[b' '; 10]);
            c.extend_from_slice(b"events {}\n");
            c
        };
        assert_eq!(first_overflow(&comment(4094)), None);
        assert_eq!(first_overflow(&comment(4095)).map(|o| o.start), Some(0));
    }
}
