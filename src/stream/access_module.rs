//! ngx_stream_access_module: `allow` and `deny` (ADDRESS | CIDR | `unix:` | `all`);
//! access phase. Rules are checked in order and the first that matches the client decides;
//! a denied session ends with 403 and "access forbidden by rule".

use std::net::IpAddr;

use crate::core::addr::Addr;
use crate::core::cidr::{self, Cidr};
use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfResult, Level};
use crate::stream::conf::ConfCx;
use crate::stream::module::{Directive, Module, Set};
use crate::stream::phase::{Flow, Phase, PhaseRegistry};
use crate::stream::session::{status, Cx, SessionCore};

pub struct Access;

#[derive(Debug, Clone, Copy)]
struct Rule {
    cidr: Cidr,
    deny: bool,
}

/// nginx keeps one list per address family; `all` goes into each of them.
#[derive(Default)]
pub struct AccessSrv {
    rules: Vec<Rule>,
    rules6: Vec<Rule>,
    rules_un: Vec<Rule>,
}

impl AccessSrv {
    fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.rules6.is_empty() && self.rules_un.is_empty()
    }

    fn push(&mut self, cmd: &Cmd, cx: &mut ConfCx) -> ConfResult {
        let deny = cmd.name == "deny";
        let v = cmd.arg(0);
        if v == "all" {
            self.rules.push(Rule { cidr: Cidr::V4 { addr: 0, mask: 0 }, deny });
            self.rules6.push(Rule { cidr: Cidr::V6 { addr: [0; 16], mask: [0; 16] }, deny });
            self.rules_un.push(Rule { cidr: Cidr::Unix, deny });
            return Ok(());
        }
        if v == "unix:" {
            self.rules_un.push(Rule { cidr: Cidr::Unix, deny });
            return Ok(());
        }
        let Some((c, low_bits)) = cidr::parse(v) else {
            return Err(cmd.invalid_parameter(v));
        };
        if low_bits {
            cx.warn(cmd, &format!("low address bits of {} are meaningless", v));
        }
        match c {
            Cidr::V4 { .. } => self.rules.push(Rule { cidr: c, deny }),
            Cidr::V6 { .. } => self.rules6.push(Rule { cidr: c, deny }),
            Cidr::Unix => self.rules_un.push(Rule { cidr: c, deny }),
        }
        Ok(())
    }
}

impl Module for Access {
    const NAME: &'static str = "stream_access";
    type Main = ();
    type Srv = AccessSrv;
    const DIRECTIVES: &'static [Directive<Self>] = &[
        Directive { name: "allow", ctx: Ctx::MAIN_SRV, args: Arity::Take(1), set: Set::<Self>::Srv(AccessSrv::push) },
        Directive { name: "deny", ctx: Ctx::MAIN_SRV, args: Arity::Take(1), set: Set::<Self>::Srv(AccessSrv::push) },
    ];

    fn merge_srv(p: &AccessSrv, c: &mut AccessSrv, _: &mut ConfCx) -> ConfResult {
        if c.is_empty() {
            c.rules = p.rules.clone();
            c.rules6 = p.rules6.clone();
            c.rules_un = p.rules_un.clone();
        }
        Ok(())
    }

    fn postconfiguration(p: &mut PhaseRegistry) {
        p.add(Phase::Access, access_handler);
    }
}

/// The first rule of `rules` that matches decides.
fn first_match(rules: &[Rule], m: impl Fn(&Cidr) -> bool) -> Option<bool> {
    rules.iter().find(|r| m(&r.cidr)).map(|r| r.deny)
}

fn access_handler(s: &mut SessionCore, _: &mut Cx<'_>) -> Flow {
    let srv = s.srv.clone();
    let c = &srv.confs.access;
    let verdict = match &s.remote {
        Addr::Inet(sa) => match sa.ip() {
            IpAddr::V4(ip) if !c.rules.is_empty() => first_match(&c.rules, |r| r.matches_v4(ip)),
            IpAddr::V6(ip) => match cidr::v4_mapped(&ip) {
                Some(v4) if !c.rules.is_empty() => first_match(&c.rules, |r| r.matches_v4(v4)),
                _ if !c.rules6.is_empty() => first_match(&c.rules6, |r| r.matches_v6(&ip)),
                _ => None,
            },
            IpAddr::V4(_) => None,
        },
        // nginx does not look at the path: the first unix rule decides.
        Addr::Unix(_) => c.rules_un.first().map(|r| r.deny),
    };
    match verdict {
        None => Flow::Declined,
        Some(false) => Flow::Next,
        Some(true) => {
            s.log(Level::Error, "access forbidden by rule", None);
            Flow::Finalize(status::FORBIDDEN)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_lists() {
        let mut a = AccessSrv::default();
        let r = |v: &str| Rule { cidr: cidr::parse(v).unwrap().0, deny: true };
        a.rules.push(r("10.0.0.0/8"));
        a.rules6.push(r("::1"));
        assert_eq!(first_match(&a.rules, |c| c.matches_v4("10.2.3.4".parse().unwrap())), Some(true));
        assert_eq!(first_match(&a.rules, |c| c.matches_v4("11.2.3.4".parse().unwrap())), None);
        assert_eq!(first_match(&a.rules6, |c| c.matches_v6(&"::1".parse().unwrap())), Some(true));
    }
}
