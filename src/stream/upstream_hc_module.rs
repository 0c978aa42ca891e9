//! ngx_stream_upstream_hc_module, as nginx Plus documents it: `health_check [interval=T]
//! [jitter=T] [fails=N] [passes=N] [mandatory [persistent]] [match=NAME] [port=N] [udp]`
//! and `health_check_timeout` in a server that proxies to an upstream in shared memory,
//! and `match NAME { send STRING; expect STRING | ~ REGEX; }` blocks.
//!
//! This file is the configuration; the checks run in every worker
//! (stream/health_check.rs) and their verdicts live in the upstream's zone
//! (upstream/health.rs), where every balancer reads them.

use std::rc::Rc;
use std::time::Duration;

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::value::{self, Setting};
use crate::core::conf::{Cmd, ConfError, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::map_module::{regex_compile, StreamRegex};
use crate::stream::module::{Directive, Module, Set};
use crate::stream::proxy_module::Pass;
use crate::upstream::UpstreamConf;

pub struct UpstreamHc;

/// What a `match` block expects from the server.
pub enum Expect {
    /// The data must begin with these bytes.
    Literal(Vec<u8>),
    Regex(StreamRegex),
}

/// A `match NAME { ... }` block.
pub struct Match {
    pub name: String,
    pub send: Vec<u8>,
    pub expect: Option<Expect>,
}

/// One `health_check` directive of a server.
pub struct HealthCheck {
    pub interval: Duration,
    pub jitter: Duration,
    pub fails: u32,
    pub passes: u32,
    pub mandatory: bool,
    pub persistent: bool,
    pub match_name: Option<String>,
    pub matcher: Option<Rc<Match>>,
    pub port: Option<u16>,
    pub udp: bool,
    pub file: Rc<str>,
    pub line: u32,
}

#[derive(Default)]
pub struct HcMain {
    pub matches: Vec<Rc<Match>>,
}

#[derive(Default)]
pub struct HcSrv {
    pub checks: Vec<HealthCheck>,
    pub timeout: Setting<Duration>,
    /// The upstream the server proxies to (set once the stream block is read).
    pub group: Option<usize>,
}

/// The string nginx Plus sends in a UDP check without a `match` block.
pub const UDP_PROBE: &[u8] = b"nginx health check";

/// `\xNN` in `send` and `expect` strings is the byte 0xNN (the tokenizer has already
/// taken `\"`, `\\`, `\t`, `\r` and `\n`).
fn hex_literals(s: &str) -> Vec<u8> {
    let b = crate::core::conf::parser::text_to_bytes(s);
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let (Some(h), Some(l)) = (b.get(i + 2).and_then(|&c| hex(c)), b.get(i + 3).and_then(|&c| hex(c))) {
                out.push(h << 4 | l);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn health_check(c: &mut HcSrv, cmd: &Cmd, _: &mut ConfCx) -> ConfResult {
    let mut hc = HealthCheck {
        interval: Duration::from_secs(5),
        jitter: Duration::ZERO,
        fails: 1,
        passes: 1,
        mandatory: false,
        persistent: false,
        match_name: None,
        matcher: None,
        port: None,
        udp: false,
        file: cmd.file.clone(),
        line: cmd.line,
    };
    for a in &cmd.args {
        let bad = || cmd.err(format!("invalid parameter \"{}\"", a));
        let time = |v: &str| value::parse_time(v, false).map(Duration::from_millis).ok_or_else(bad);
        let count = |v: &str| {
            value::parse_number(v).filter(|n| *n > 0).map(|n| n.min(u64::from(u32::MAX)) as u32).ok_or_else(bad)
        };
        if let Some(v) = a.strip_prefix("interval=") {
            hc.interval = time(v)?;
            if hc.interval.is_zero() {
                return Err(bad());
            }
        } else if let Some(v) = a.strip_prefix("jitter=") {
            hc.jitter = time(v)?;
        } else if let Some(v) = a.strip_prefix("fails=") {
            hc.fails = count(v)?;
        } else if let Some(v) = a.strip_prefix("passes=") {
            hc.passes = count(v)?;
        } else if let Some(v) = a.strip_prefix("match=") {
            if v.is_empty() {
                return Err(bad());
            }
            hc.match_name = Some(v.to_string());
        } else if let Some(v) = a.strip_prefix("port=") {
            let p = value::parse_number(v).filter(|p| (1..=65535).contains(p)).ok_or_else(bad)?;
            hc.port = Some(p as u16);
        } else if a == "mandatory" {
            hc.mandatory = true;
        } else if a == "persistent" && hc.mandatory {
            hc.persistent = true;
        } else if a == "udp" {
            hc.udp = true;
        } else {
            return Err(bad());
        }
    }
    c.checks.push(hc);
    Ok(())
}

fn match_block(cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
    let name = cmd.arg(0).to_string();
    if cx.main.upstream_hc.matches.iter().any(|m| m.name == name) {
        return Err(cmd.err(format!("duplicate match \"{}\"", name)));
    }
    let mut m = Match { name, send: Vec::new(), expect: None };
    let (mut sent, mut expected) = (false, false);
    if let Some(block) = &cmd.block {
        for c in &block.cmds {
            let count = |ok: bool| {
                if ok {
                    Ok(())
                } else {
                    Err(c.err(format!("invalid number of arguments in \"{}\" directive", c.name)))
                }
            };
            if c.block.is_some() {
                return Err(c.err(format!("directive \"{}\" has no opening \"{{\"", c.name)));
            }
            match c.name.as_str() {
                "send" => {
                    count(c.args.len() == 1)?;
                    if sent {
                        return Err(c.duplicate());
                    }
                    sent = true;
                    m.send = hex_literals(c.arg(0));
                }
                "expect" => {
                    count(matches!(c.args.len(), 1 | 2))?;
                    if expected {
                        return Err(c.duplicate());
                    }
                    expected = true;
                    m.expect = Some(if c.args.len() == 2 {
                        let caseless = match c.arg(0) {
                            "~" => false,
                            "~*" => true,
                            other => return Err(c.err(format!("invalid parameter \"{}\"", other))),
                        };
                        Expect::Regex(regex_compile(c.arg(1), caseless, c, &mut cx.vars)?)
                    } else {
                        Expect::Literal(hex_literals(c.arg(0)))
                    });
                }
                other => return Err(c.err(format!("unknown directive \"{}\"", other))),
            }
        }
        if let Some(e) = &block.error {
            return Err(e.clone());
        }
    }
    cx.main.upstream_hc.matches.push(Rc::new(m));
    Ok(())
}

/// After the stream block: each server's checks get their `match` block and the upstream
/// they check, which must be in shared memory (its peers' verdicts live there).
pub fn bind(c: &mut HcSrv, pass: Option<&Pass>, upstreams: &[UpstreamConf], main: &HcMain) -> ConfResult {
    if c.checks.is_empty() {
        return Ok(());
    }
    for hc in &mut c.checks {
        let at = format!("{}:{}", hc.file, hc.line);
        if let Some(name) = &hc.match_name {
            let m = main.matches.iter().find(|m| m.name == *name);
            hc.matcher =
                Some(m.cloned().ok_or_else(|| ConfError::bare(format!("match \"{}\" not found in {}", name, at)))?);
        }
        let group = match pass {
            Some(Pass::Upstream(g)) => *g,
            _ => return Err(ConfError::bare(format!("health check requires an upstream in {}", at))),
        };
        let u = &upstreams[group];
        if u.zone.is_none() {
            return Err(ConfError::bare(format!(
                "health check requires upstream \"{}\" to be in shared memory in {}",
                u.name, at
            )));
        }
        c.group = Some(group);
    }
    Ok(())
}

impl Module for UpstreamHc {
    const NAME: &'static str = "stream_upstream_hc";
    type Main = HcMain;
    type Srv = HcSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive { name: "health_check", ctx: Ctx::STREAM_SRV, args: Arity::Any, set: Set::Srv(health_check) },
        Directive {
            name: "health_check_timeout",
            ctx: Ctx::MAIN_SRV,
            args: Arity::Take(1),
            set: Set::Srv(|c: &mut HcSrv, cmd, _| c.timeout.set_parsed(cmd, value::msec)),
        },
        Directive { name: "match", ctx: Ctx::STREAM_MAIN, args: Arity::Block(1, 1), set: Set::Main(match_block) },
    ];

    fn merge_srv(parent: &HcSrv, child: &mut HcSrv, _: &mut ConfCx) -> ConfResult {
        child.timeout.merge(&parent.timeout, Duration::from_secs(5));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_literals_become_bytes() {
        assert_eq!(hex_literals("\\x80a\\x0D\\x0a"), b"\x80a\r\n");
        assert_eq!(hex_literals("\\xZZ\\x1"), b"\\xZZ\\x1", "not two hex digits: as written");
        assert_eq!(hex_literals("GET / HTTP/1.0\r\n"), b"GET / HTTP/1.0\r\n");
    }
}
