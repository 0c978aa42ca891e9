//! Typed directive values: `Setting<T>` (nginx's UNSET as a type) and the value parsers of
//! `ngx_parse.c` / `ngx_conf_set_*_slot` (time, size, number, flag) with nginx's errors.

use std::time::Duration;

use super::{Cmd, ConfError, ConfResult};

/// A directive's value in one context: unset until a directive sets it; a second
/// `set` in the same context is nginx's `"x" directive is duplicate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting<T>(Option<T>);

impl<T> Default for Setting<T> {
    fn default() -> Self {
        Setting(None)
    }
}

impl<T: Clone> Setting<T> {
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Set from `cmd`; an already-set value makes `cmd` a duplicate.
    pub fn set(&mut self, cmd: &Cmd, v: T) -> ConfResult {
        if self.0.is_some() {
            return Err(cmd.duplicate());
        }
        self.0 = Some(v);
        Ok(())
    }

    /// Set from `cmd` by `parse`, as nginx's slot handlers: a duplicate is reported
    /// before the value is read.
    pub fn set_parsed(&mut self, cmd: &Cmd, parse: impl FnOnce(&Cmd) -> ConfResult<T>) -> ConfResult {
        if self.0.is_some() {
            return Err(cmd.duplicate());
        }
        self.0 = Some(parse(cmd)?);
        Ok(())
    }

    /// nginx's `ngx_conf_merge_*_value`: unset takes the parent's, else the default.
    pub fn merge(&mut self, parent: &Self, default: T) {
        if self.0.is_none() {
            self.0 = Some(parent.0.clone().unwrap_or(default));
        }
    }

    /// Inherit the parent's value if this one is unset, leaving it unset otherwise.
    pub fn inherit(&mut self, parent: &Self) {
        if self.0.is_none() {
            self.0 = parent.0.clone();
        }
    }

    pub fn option(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: Clone + Default> Setting<T> {
    /// The value after merge (a never-merged setting reads as `T::default()`).
    pub fn get(&self) -> T {
        self.0.clone().unwrap_or_default()
    }
}

/// `ngx_parse_time`: "1h 30m", "10s", "500ms"; a bare number is milliseconds when
/// `is_sec` is false and seconds when true. Returns milliseconds (or seconds).
pub fn parse_time(s: &str, is_sec: bool) -> Option<u64> {
    #[derive(PartialEq, PartialOrd, Clone, Copy)]
    enum Step {
        Start,
        Year,
        Month,
        Week,
        Day,
        Hour,
        Min,
        Sec,
        Msec,
        Last,
    }
    const MAX: u64 = i64::MAX as u64;
    let b = s.as_bytes();
    let mut step = if is_sec { Step::Start } else { Step::Month };
    let (mut value, mut total, mut valid) = (0u64, 0u64, false);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        if c.is_ascii_digit() {
            value = value.checked_mul(10)?.checked_add((c - b'0') as u64)?;
            if value > MAX {
                return None;
            }
            valid = true;
            continue;
        }
        let (next, mut scale): (Step, u64) = match c {
            b'y' if step <= Step::Start => (Step::Year, 365 * 86400),
            b'M' if step < Step::Month => (Step::Month, 30 * 86400),
            b'w' if step < Step::Week => (Step::Week, 7 * 86400),
            b'd' if step < Step::Day => (Step::Day, 86400),
            b'h' if step < Step::Hour => (Step::Hour, 3600),
            b'm' if b.get(i) == Some(&b's') => {
                if is_sec || step >= Step::Msec {
                    return None;
                }
                i += 1;
                (Step::Msec, 1)
            }
            b'm' if step < Step::Min => (Step::Min, 60),
            b's' if step < Step::Sec => (Step::Sec, 1),
            b' ' if step < Step::Sec => (Step::Last, 1),
            _ => return None,
        };
        step = next;
        if step != Step::Msec && !is_sec {
            scale *= 1000;
        }
        total = total.checked_add(value.checked_mul(scale)?)?;
        if total > MAX {
            return None;
        }
        value = 0;
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
    }
    if !valid {
        return None;
    }
    if !is_sec {
        value = value.checked_mul(1000)?;
    }
    let t = total.checked_add(value)?;
    (t <= MAX).then_some(t)
}

/// `ngx_parse_size`: "16k", "1m", "4096".
pub fn parse_size(s: &str) -> Option<usize> {
    let (digits, scale) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024usize),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n = parse_number(digits)? as usize;
    n.checked_mul(scale).filter(|v| *v <= isize::MAX as usize)
}

/// `ngx_parse_offset`: sizes that may also say "g".
pub fn parse_offset(s: &str) -> Option<u64> {
    let (digits, scale) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    parse_number(digits)?.checked_mul(scale).filter(|v| *v <= i64::MAX as u64)
}

/// `ngx_atoi`: decimal digits only, no sign, no overflow.
pub fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|v| *v <= i64::MAX as u64)
}

// Directive-level helpers: the value of a TAKE1 directive, with nginx's messages.

/// `ngx_conf_set_flag_slot`.
pub fn flag(cmd: &Cmd) -> ConfResult<bool> {
    match cmd.arg(0) {
        a if a.eq_ignore_ascii_case("on") => Ok(true),
        a if a.eq_ignore_ascii_case("off") => Ok(false),
        a => {
            Err(cmd.err(format!("invalid value \"{}\" in \"{}\" directive, it must be \"on\" or \"off\"", a, cmd.name)))
        }
    }
}

/// `ngx_conf_set_msec_slot`.
pub fn msec(cmd: &Cmd) -> ConfResult<Duration> {
    parse_time(cmd.arg(0), false).map(Duration::from_millis).ok_or_else(|| ConfError::directive(cmd, "invalid value"))
}

/// `ngx_conf_set_sec_slot`.
pub fn sec(cmd: &Cmd) -> ConfResult<Duration> {
    parse_time(cmd.arg(0), true).map(Duration::from_secs).ok_or_else(|| ConfError::directive(cmd, "invalid value"))
}

/// `ngx_conf_set_size_slot`.
pub fn size(cmd: &Cmd) -> ConfResult<usize> {
    parse_size(cmd.arg(0)).ok_or_else(|| ConfError::directive(cmd, "invalid value"))
}

/// `ngx_conf_set_off_slot`: a size that may also say "g".
pub fn offset(cmd: &Cmd) -> ConfResult<u64> {
    parse_offset(cmd.arg(0)).ok_or_else(|| ConfError::directive(cmd, "invalid value"))
}

/// `ngx_conf_set_num_slot`.
pub fn number(cmd: &Cmd) -> ConfResult<u64> {
    parse_number(cmd.arg(0)).ok_or_else(|| ConfError::directive(cmd, "invalid number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("10s", false), Some(10_000));
        assert_eq!(parse_time("500ms", false), Some(500));
        assert_eq!(parse_time("500", false), Some(500_000), "bare msec-slot numbers are seconds");
        assert_eq!(parse_time("1h 30m", false), Some(5_400_000));
        assert_eq!(parse_time("1m30s", true), Some(90));
        assert_eq!(parse_time("10", true), Some(10));
        assert_eq!(parse_time("1s1m", false), None);
        assert_eq!(parse_time("10x", false), None);
        assert_eq!(parse_time("", false), None);
        assert_eq!(parse_time("1y", false), None);
        assert_eq!(parse_time("1y", true), Some(365 * 86400));
        assert_eq!(parse_time("5ms", true), None);
    }

    #[test]
    fn sizes_and_numbers() {
        assert_eq!(parse_size("16k"), Some(16384));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("1Q"), None);
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_offset("2g"), Some(2 << 30));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("99999999999999999999"), None);
    }
}
