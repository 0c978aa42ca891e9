//! What a directive table entry declares — contexts and arity — and nginx's checks of a
//! directive against them (`ngx_conf_handler`), shared by the core and stream tables.

use super::{Cmd, ConfResult};

/// The contexts a directive may appear in (nginx's `NGX_*_CONF` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx(pub u32);

impl Ctx {
    pub const MAIN: Ctx = Ctx(1);
    pub const EVENTS: Ctx = Ctx(2);
    pub const STREAM_MAIN: Ctx = Ctx(4);
    pub const STREAM_SRV: Ctx = Ctx(8);
    pub const STREAM_UPS: Ctx = Ctx(16);
    pub const MAIN_SRV: Ctx = Ctx(4 | 8);
    pub const ANY: Ctx = Ctx(!0);

    pub const fn or(self, o: Ctx) -> Ctx {
        Ctx(self.0 | o.0)
    }

    pub fn allows(self, here: Ctx) -> bool {
        self.0 & here.0 != 0
    }
}

/// How many arguments a directive takes, and whether it opens a `{ }` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    NoArgs,
    Take(u8),
    /// Any count in `a..=b`.
    Between(u8, u8),
    /// Exactly one argument, "on" or "off" (checked by the setter).
    Flag,
    OneOrMore,
    TwoOrMore,
    Any,
    /// A block directive taking `a..=b` arguments before the `{`.
    Block(u8, u8),
}

/// `ngx_conf_handler`'s checks, in its order: `;` versus `{`, then the argument count.
pub fn check(cmd: &Cmd, args: Arity) -> ConfResult {
    let is_block = matches!(args, Arity::Block(..));
    if !is_block && cmd.block.is_some() {
        return Err(cmd.err(format!("directive \"{}\" is not terminated by \";\"", cmd.name)));
    }
    if is_block && cmd.block.is_none() {
        return Err(cmd.err(format!("directive \"{}\" has no opening \"{{\"", cmd.name)));
    }
    let n = cmd.args.len();
    let ok = match args {
        Arity::NoArgs => n == 0,
        Arity::Take(k) => n == k as usize,
        Arity::Between(a, b) | Arity::Block(a, b) => n >= a as usize && n <= b as usize,
        Arity::Flag => n == 1,
        Arity::OneOrMore => n >= 1,
        Arity::TwoOrMore => n >= 2,
        Arity::Any => true,
    };
    if ok {
        Ok(())
    } else {
        Err(cmd.err(format!("invalid number of arguments in \"{}\" directive", cmd.name)))
    }
}

/// The error for a name that no table has, or that no table allows here.
pub fn not_found(cmd: &Cmd, known: bool) -> super::ConfError {
    if known {
        cmd.err(format!("\"{}\" directive is not allowed here", cmd.name))
    } else {
        // nginx prints the name as a C string ("%s"): up to a NUL byte.
        let name = cmd.name.split('\0').next().unwrap_or_default();
        cmd.err(format!("unknown directive \"{}\"", name))
    }
}
