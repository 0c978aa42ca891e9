//! The phase engine (`ngx_stream_core_*_phase` checkers): handlers registered per phase
//! run in order for every session until the content phase takes it over.

use crate::stream::session::{Cx, SessionCore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    PostAccept = 0,
    Preaccess,
    Access,
    Ssl,
    Preread,
    Content,
    Log,
}

const PHASES: usize = 7;

/// What a handler tells the engine (nginx's `NGX_OK / DECLINED / AGAIN / DONE / ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The phase is done: go on with the next phase.
    Next,
    /// Not this handler's business: go on with the next handler of the phase.
    Declined,
    /// Wait for more client bytes (preread) or another event.
    Again,
    /// The handler took the session over (its own events drive it now).
    Done,
    /// End the session with this status.
    Finalize(u16),
}

pub type PhaseHandler = fn(&mut SessionCore, &mut Cx<'_>) -> Flow;

#[derive(Default)]
pub struct PhaseRegistry {
    handlers: [Vec<PhaseHandler>; PHASES],
}

impl PhaseRegistry {
    pub fn add(&mut self, phase: Phase, h: PhaseHandler) {
        self.handlers[phase as usize].push(h);
    }
}

#[derive(Clone, Copy)]
struct Step {
    phase: Phase,
    handler: PhaseHandler,
    /// The index of the first handler of the next phase.
    next: usize,
}

/// The handlers of every phase before content, flattened, plus the log handlers.
#[derive(Default)]
pub struct PhaseEngine {
    steps: Vec<Step>,
    log: Vec<PhaseHandler>,
}

impl PhaseEngine {
    pub fn build(reg: PhaseRegistry) -> PhaseEngine {
        let mut steps = Vec::new();
        for (p, hs) in reg.handlers.iter().enumerate().take(Phase::Content as usize) {
            let phase = match p {
                0 => Phase::PostAccept,
                1 => Phase::Preaccess,
                2 => Phase::Access,
                3 => Phase::Ssl,
                _ => Phase::Preread,
            };
            // nginx runs handlers in reverse order of registration within a phase.
            let start = steps.len();
            for h in hs.iter().rev() {
                steps.push(Step { phase, handler: *h, next: 0 });
            }
            let end = steps.len();
            for s in &mut steps[start..end] {
                s.next = end;
            }
        }
        PhaseEngine { steps, log: reg.handlers[Phase::Log as usize].clone() }
    }

    /// Run the phases from `s.phase` on. `Flow::Next` means every phase before content
    /// has passed; `Again` leaves `s.phase` at the waiting handler.
    pub fn run(&self, s: &mut SessionCore, cx: &mut Cx<'_>) -> Flow {
        while let Some(step) = self.steps.get(s.phase) {
            let rc = if step.phase == Phase::Preread {
                crate::stream::session::preread_step(s, cx, step.handler)
            } else {
                (step.handler)(s, cx)
            };
            match rc {
                Flow::Next => s.phase = step.next,
                Flow::Declined => s.phase += 1,
                other => return other,
            }
        }
        Flow::Next
    }

    pub fn run_log(&self, s: &mut SessionCore, cx: &mut Cx<'_>) {
        s.logging = true;
        for h in &self.log {
            h(s, cx);
        }
    }

    /// Leave the current phase (a preread timeout ends the preread phase).
    pub fn skip_phase(&self, s: &mut SessionCore) {
        if let Some(step) = self.steps.get(s.phase) {
            s.phase = step.next;
        }
    }

    pub fn has_preread(&self) -> bool {
        self.steps.iter().any(|s| s.phase == Phase::Preread)
    }
}
