//! The stream module system (`ngx_stream_module_t` + `ngx_command_t`): each module is a
//! unit type with typed configurations and a directive table. `stream_modules!` in
//! `stream/mod.rs` turns the module list into the configuration structs, the directive
//! dispatch and the create/merge/postconfiguration calls.

use crate::core::conf::directive::{Arity, Ctx};
use crate::core::conf::{Cmd, ConfResult};
use crate::stream::conf::ConfCx;
use crate::stream::phase::PhaseRegistry;
use crate::stream::variables::Variables;
use crate::upstream::UpstreamConf;

pub trait Module: Sized + 'static {
    /// nginx's module name without the `ngx_` prefix ("stream_proxy").
    const NAME: &'static str;
    type Main: Default + 'static;
    type Srv: Default + 'static;
    const DIRECTIVES: &'static [Directive<Self>];

    /// Register the module's built-in variables (nginx's `preconfiguration`).
    fn variables(_v: &mut Variables) {}
    /// After the `stream {}` block is read (nginx's `init_main_conf`).
    fn init_main(_cx: &mut ConfCx) -> ConfResult {
        Ok(())
    }
    /// Fill a server's unset values from the `stream {}` level; defaults live here.
    fn merge_srv(_parent: &Self::Srv, _child: &mut Self::Srv, _cx: &mut ConfCx) -> ConfResult {
        Ok(())
    }
    fn postconfiguration(_p: &mut PhaseRegistry) {}
}

/// Blocks whose inside is made of directives: the builder reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Server,
    Upstream,
}

pub enum Set<M: Module> {
    /// Main-level state, reached through `cx.main`.
    Main(fn(&Cmd, &mut ConfCx) -> ConfResult),
    Srv(fn(&mut M::Srv, &Cmd, &mut ConfCx) -> ConfResult),
    Ups(fn(&mut UpstreamConf, &Cmd, &mut ConfCx) -> ConfResult),
    Block(BlockKind),
}

pub struct Directive<M: Module> {
    pub name: &'static str,
    pub ctx: Ctx,
    pub args: Arity,
    pub set: Set<M>,
}

/// Where a directive is being applied.
pub struct Target<'a, S> {
    pub ctx: Ctx,
    pub srv: Option<&'a mut S>,
    pub ups: Option<&'a mut UpstreamConf>,
}

/// What looking a directive up across the tables found.
pub enum Lookup {
    /// No table has the name.
    Unknown,
    /// Some table has it, for other contexts.
    NotHere,
    Applied(ConfResult),
    /// A directive block the builder reads.
    Block(BlockKind),
}

impl Lookup {
    /// Combine the answer of one more table into this one.
    pub fn or(self, other: impl FnOnce() -> Lookup) -> Lookup {
        match self {
            Lookup::Unknown => other(),
            Lookup::NotHere => match other() {
                Lookup::Unknown => Lookup::NotHere,
                x => x,
            },
            x => x,
        }
    }
}

/// Look `cmd` up in module `M`'s table and apply it if allowed in `t.ctx`.
pub fn apply<M: Module>(
    cmd: &Cmd,
    ctx: Ctx,
    srv: Option<&mut M::Srv>,
    ups: Option<&mut UpstreamConf>,
    cx: &mut ConfCx,
) -> Lookup {
    let mut found = false;
    for d in M::DIRECTIVES.iter().filter(|d| d.name == cmd.name) {
        found = true;
        if !d.ctx.allows(ctx) {
            continue;
        }
        if let Err(e) = crate::core::conf::directive::check(cmd, d.args) {
            return Lookup::Applied(Err(e));
        }
        return match &d.set {
            Set::Main(f) => Lookup::Applied(f(cmd, cx)),
            Set::Srv(f) => match srv {
                Some(s) => Lookup::Applied(f(s, cmd, cx)),
                None => continue,
            },
            Set::Ups(f) => match ups {
                Some(u) => Lookup::Applied(f(u, cmd, cx)),
                None => continue,
            },
            Set::Block(k) => Lookup::Block(*k),
        };
    }
    if found {
        Lookup::NotHere
    } else {
        Lookup::Unknown
    }
}

/// Declares the module list: the per-module configuration structs (`MainConfs`,
/// `SrvConfs`, one field per module) and the calls that walk every module in order.
#[macro_export]
macro_rules! stream_modules {
    ($($field:ident : $m:ty),* $(,)?) => {
        /// Every stream module's main configuration.
        #[derive(Default)]
        pub struct MainConfs { $(pub $field: <$m as $crate::stream::module::Module>::Main,)* }

        /// Every stream module's server configuration (one per `server {}`, plus the
        /// `stream {}` level that servers inherit from).
        #[derive(Default)]
        pub struct SrvConfs { $(pub $field: <$m as $crate::stream::module::Module>::Srv,)* }

        /// The names of the modules that have directives (for `-V`: a module listed
        /// before it is written does not count).
        pub const MODULE_NAMES: &[&str] = &[$(
            if <$m as $crate::stream::module::Module>::DIRECTIVES.is_empty() { "" }
            else { <$m as $crate::stream::module::Module>::NAME },
        )*];

        pub fn dispatch(
            cmd: &$crate::core::conf::Cmd,
            ctx: $crate::core::conf::directive::Ctx,
            mut srv: Option<&mut SrvConfs>,
            mut ups: Option<&mut $crate::upstream::UpstreamConf>,
            cx: &mut $crate::stream::conf::ConfCx,
        ) -> $crate::stream::module::Lookup {
            let mut l = $crate::stream::module::Lookup::Unknown;
            $(
                l = l.or(|| $crate::stream::module::apply::<$m>(
                    cmd, ctx, srv.as_deref_mut().map(|s| &mut s.$field), ups.as_deref_mut(), cx));
            )*
            l
        }

        pub fn variables(v: &mut $crate::stream::variables::Variables) {
            $( <$m as $crate::stream::module::Module>::variables(v); )*
        }

        /// Each module's `init_main` and its merge of a server's configuration, in
        /// module order, as nginx's stream block runs them: a module's init_main_conf,
        /// then its merge of every server, then the next module (so an earlier module's
        /// merge error wins over a later module's check, and a later module's error in
        /// the first server loses to an earlier module's in the last one).
        pub const STEPS: &[(
            fn(&mut $crate::stream::conf::ConfCx) -> $crate::core::conf::ConfResult,
            fn(&SrvConfs, &mut SrvConfs, &mut $crate::stream::conf::ConfCx) -> $crate::core::conf::ConfResult,
        )] = &[$(
            (
                <$m as $crate::stream::module::Module>::init_main,
                |parent, child, cx| <$m as $crate::stream::module::Module>::merge_srv(&parent.$field, &mut child.$field, cx),
            ),
        )*];

        pub fn postconfiguration(p: &mut $crate::stream::phase::PhaseRegistry) {
            $( <$m as $crate::stream::module::Module>::postconfiguration(p); )*
        }
    };
}
