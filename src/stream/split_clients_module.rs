//! ngx_stream_split_clients_module: `split_clients KEY $var { PERCENT VALUE; ... * VALUE; }`.
//! No phase: the variable is computed when first used (MurmurHash2 of the key against
//! the cumulative percentages) and kept for the session.

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfError, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::session::SessionCore;
use crate::stream::variables::{Complex, VarGet};

pub struct SplitClients;

#[derive(Default)]
pub struct SplitClientsMain {
    splits: Vec<Split>,
}

struct Split {
    /// The variable it makes.
    var: usize,
    key: Complex,
    /// (upper bound of the hash, 0 for `*`; value), in order.
    parts: Vec<(u32, Vec<u8>)>,
}

impl Module for SplitClients {
    const NAME: &'static str = "stream_split_clients";
    type Main = SplitClientsMain;
    type Srv = ();
    const DIRECTIVES: &'static [Directive<Self>] = &[Directive {
        name: "split_clients",
        ctx: Ctx::STREAM_MAIN,
        args: Arity::Block(2, 2),
        set: Set::Main(split_clients_block),
    }];
}

fn split_clients_block(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let key = Complex::compile(cmd.arg(0), cmd, &mut cx.vars)?;
    let arg = cmd.arg(1);
    let name = match arg.strip_prefix('$') {
        None => return Err(cmd.err(format!("invalid variable name \"{}\"", arg))),
        Some("") => return Err(cmd.err("invalid variable name \"$\"")),
        Some(n) => n,
    };
    let data = cx.main.split_clients.splits.len();
    let var = cx
        .vars
        .define_changeable(name, var_split as VarGet, data, false)
        .ok_or_else(|| cmd.err(format!("the duplicate \"{}\" variable", name)))?;
    cx.vars.set_cached(var);

    // Percentages in hundredths, 0 for `*`.
    let mut parts: Vec<(u32, Vec<u8>)> = Vec::new();
    if let Some(inner) = &cmd.block {
        // nginx reads a line's value without checking that there is one: a line with
        // none takes what its argument array still holds from the statement before (the
        // first line: the split_clients directive's key, as written).
        let mut previous = cmd.args.first().cloned().unwrap_or_default();
        for c in &inner.cmds {
            if c.block.is_some() {
                return Err(c.err("unexpected \"{\""));
            }
            let value = c.args.first().cloned().unwrap_or_else(|| previous.clone());
            previous = value.clone();
            let percent = if c.name == "*" {
                0
            } else {
                match c.name.strip_suffix('%').and_then(|p| atofp(p.as_bytes(), 2)).filter(|&n| n != 0) {
                    // nginx keeps the low 32 bits.
                    Some(n) => n as u32,
                    None => return Err(c.err(format!("invalid percent value \"{}\"", c.name))),
                }
            };
            parts.push((percent, value.as_bytes().to_vec()));
        }
        if let Some(e) = &inner.error {
            return Err(e.clone());
        }
    }

    let end_line = cmd.block.as_ref().map_or(cmd.line, |b| b.end_line);
    let (mut sum, mut last) = (0u32, 0u32);
    for (p, _) in &mut parts {
        sum = if *p != 0 { sum.wrapping_add(*p) } else { 10000 };
        if sum > 10000 {
            return Err(ConfError::at("percent total is greater than 100%", &cmd.file, end_line));
        }
        if *p != 0 {
            last = last.wrapping_add((u64::from(*p) * 0xffff_ffff / 10000) as u32);
            *p = last;
        }
    }
    cx.main.split_clients.splits.push(Split { var, key, parts });
    Ok(())
}

/// `ngx_atofp`: a decimal with at most `point` digits after the dot, scaled by 10^point.
fn atofp(s: &[u8], mut point: u32) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let (mut value, mut dot) = (0u64, false);
    for &c in s {
        if point == 0 {
            return None;
        }
        if c == b'.' {
            if dot {
                return None;
            }
            dot = true;
            continue;
        }
        if !c.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(c - b'0')).filter(|v| *v <= i64::MAX as u64)?;
        if dot {
            point -= 1;
        }
    }
    for _ in 0..point {
        value = value.checked_mul(10).filter(|v| *v <= i64::MAX as u64)?;
    }
    Some(value)
}

/// `ngx_murmur_hash2`.
pub fn murmur_hash2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The split_clients variable (`ngx_stream_split_clients_variable`): no part matched
/// (percentages under 100% and no `*`) is the empty value.
fn var_split(s: &mut SessionCore, data: usize, out: &mut Vec<u8>) -> bool {
    let cycle = s.cycle.clone();
    let Some(sp) = cycle.stream.split_clients.splits.get(data) else { return false };
    // nginx sets the value to "" before it reads the key, so a key that names the
    // variable itself reads "" there instead of going round in a cycle.
    s.cache_var(sp.var, Some(Vec::new()));
    let mut key = Vec::new();
    sp.key.eval(s, &mut key);
    let hash = murmur_hash2(&key);
    if let Some((_, v)) = sp.parts.iter().find(|(p, _)| hash < *p || *p == 0) {
        out.extend_from_slice(v);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_like_ngx_atofp() {
        assert_eq!(atofp(b"51.2", 2), Some(5120));
        assert_eq!(atofp(b"0.5", 2), Some(50));
        assert_eq!(atofp(b"100", 2), Some(10000));
        assert_eq!(atofp(b"50.", 2), Some(5000));
        assert_eq!(atofp(b".5", 2), Some(50));
        assert_eq!(atofp(b"0.12", 2), Some(12));
        assert_eq!(atofp(b"0.125", 2), None);
        assert_eq!(atofp(b"1.2.3", 2), None);
        assert_eq!(atofp(b"1a", 2), None);
        assert_eq!(atofp(b"", 2), None);
    }

    #[test]
    fn murmur() {
        // Values of nginx's ngx_murmur_hash2.
        assert_eq!(murmur_hash2(b""), 0);
        assert_eq!(murmur_hash2(b"a"), 0x92685f5e);
        assert_eq!(murmur_hash2(b"abcd"), 0x26873021);
        assert_eq!(murmur_hash2(b"abcdefg"), 0xf9a1cef3);
        assert_eq!(murmur_hash2(b"127.0.0.1"), 0xb6131d91);
    }
}
