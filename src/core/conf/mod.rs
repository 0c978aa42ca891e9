//! Configuration text: the directive tree read from nginx-syntax files, the error type
//! every directive handler returns, and the typed value parsers (`value`).

pub mod conf_buffer;
pub mod directive;
pub mod parser;
pub mod value;

use std::fmt;
use std::rc::Rc;

pub use parser::{parse_file, parse_str};
pub use value::Setting;

/// One directive as written: `name arg arg { block }`, with where it was read.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Block>,
    pub file: Rc<str>,
    /// The line of the `;` or `{` that ended the directive (nginx reports that one).
    pub line: u32,
}

/// The directives of a file or of a `{ }` block, in order. A syntax error stops the
/// tokenizer; it is kept here, after the directives read before it, so that the
/// builder reports errors in the same order nginx (which parses and applies in one
/// pass) does.
#[derive(Debug, Clone, Default)]
pub struct Block {
    pub cmds: Vec<Cmd>,
    pub error: Option<ConfError>,
    /// The line of the closing `}` (or the end of the file).
    pub end_line: u32,
}

/// A configuration file as read, kept for `-T`.
#[derive(Debug, Clone)]
pub struct ConfFile {
    pub path: Rc<str>,
    pub text: Vec<u8>,
}

/// nginx's log levels, most severe first (the order of `ngx_log_levels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Stderr = 0,
    Emerg,
    Alert,
    Crit,
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Stderr => "",
            Level::Emerg => "emerg",
            Level::Alert => "alert",
            Level::Crit => "crit",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    pub fn from_name(s: &str) -> Option<Level> {
        Some(match s {
            "emerg" => Level::Emerg,
            "alert" => Level::Alert,
            "crit" => Level::Crit,
            "error" => Level::Error,
            "warn" => Level::Warn,
            "notice" => Level::Notice,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

/// A configuration error: the message and, when known, `FILE:LINE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    pub level: Level,
    pub msg: String,
    pub at: Option<(Rc<str>, u32)>,
}

impl ConfError {
    /// An error without a location (nginx's `ngx_log_error` at configuration time).
    pub fn bare(msg: impl Into<String>) -> ConfError {
        ConfError { level: Level::Emerg, msg: msg.into(), at: None }
    }

    pub fn at(msg: impl Into<String>, file: &Rc<str>, line: u32) -> ConfError {
        ConfError { level: Level::Emerg, msg: msg.into(), at: Some((file.clone(), line)) }
    }

    /// `"name" directive MSG`, as nginx words a string returned by a handler.
    pub fn directive(cmd: &Cmd, msg: &str) -> ConfError {
        ConfError::at(format!("\"{}\" directive {}", cmd.name, msg), &cmd.file, cmd.line)
    }
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            // Line 0 is the `-g` command line, which nginx names without a line.
            Some((file, 0)) => write!(f, "{} in {}", located_text(&self.msg), file),
            Some((file, line)) => write!(f, "{} in {}:{}", located_text(&self.msg), file, line),
            None => f.write_str(&self.msg),
        }
    }
}

/// A located message as `ngx_conf_log_error` prints it: formatted into its
/// `NGX_MAX_CONF_ERRSTR` (1024-byte) buffer, so a long one is cut there, mid-quote or
/// mid-character, before " in FILE:LINE".
fn located_text(msg: &str) -> std::borrow::Cow<'_, str> {
    const MAX_CONF_ERRSTR: usize = 1024;
    if msg.len() <= MAX_CONF_ERRSTR {
        // (Raw bytes' stand-ins are longer in text than as bytes: no cut is due.)
        return msg.into();
    }
    let mut bytes = parser::text_to_bytes(msg).into_owned();
    if bytes.len() <= MAX_CONF_ERRSTR {
        return msg.into();
    }
    bytes.truncate(MAX_CONF_ERRSTR);
    parser::bytes_to_text(&bytes).into()
}

pub type ConfResult<T = ()> = Result<T, ConfError>;

impl Cmd {
    /// An error located at this directive (`ngx_conf_log_error`).
    pub fn err(&self, msg: impl Into<String>) -> ConfError {
        ConfError::at(msg, &self.file, self.line)
    }

    /// `invalid value "X" in "name" directive` — nginx's most common rejection.
    pub fn invalid_value(&self, v: &str) -> ConfError {
        self.err(format!("invalid value \"{}\" in \"{}\" directive", v, self.name))
    }

    /// `invalid parameter "X"`.
    pub fn invalid_parameter(&self, v: &str) -> ConfError {
        self.err(format!("invalid parameter \"{}\"", v))
    }

    pub fn duplicate(&self) -> ConfError {
        ConfError::directive(self, "is duplicate")
    }

    pub fn arg(&self, i: usize) -> &str {
        self.args.get(i).map(String::as_str).unwrap_or("")
    }
}

/// nginx allocates some of what a configuration asks for while it reads it (an
/// access_log buffer, a hash's size table) and fails on a size its malloc refuses: the
/// same size is asked of this allocator (and given back at once), with nginx's message.
pub fn test_malloc(bytes: u64) -> Result<(), ConfError> {
    match usize::try_from(bytes).ok().filter(|&n| Vec::<u8>::new().try_reserve_exact(n).is_ok()) {
        Some(_) => Ok(()),
        None => Err(ConfError::bare(format!("malloc({bytes}) failed (12: Cannot allocate memory)"))),
    }
}

/// `strerror`-style text for an OS error, as nginx prints it: `(2: No such file or directory)`.
pub fn os_err(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("({}: {})", code, strerror(e)),
        None => format!("({})", e),
    }
}

/// The error's text alone, as strerror(3) gives it (std appends " (os error N)").
pub fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}
