//! Running one thread's bytecode until it exits, reaches a barrier or a warp collective,
//! or uses up its time slice. All per-thread state lives in [`Thread`] and the thread's
//! register frame, so a thread can stop anywhere and resume later.
//!
//! Faulty accesses never touch memory: an out-of-bounds or misaligned load yields 0 and a
//! faulty store is dropped, after a finding is recorded.

use kiln_codegen::ir::Intrinsic;

use super::check::{Accessor, Problem, Shadow};
use super::hopper::{HopperBlock, WgmmaThread};
use super::isa::{Access, Code, Instr, Loc, Reg, Special, POISON};
use super::memory::{Global, SharedBytes};
use super::report::{FindingKind, Findings, Who};
use super::value;

/// Where a thread is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
    Ready,
    /// Stopped at the `Barrier` at its `pc`.
    Barrier,
    /// Stopped at the `Warp` collective at its `pc`.
    Warp,
    /// Blocked in the `mbarrier_wait` at its `pc` (on `Thread::blocked_on`).
    MbarWait,
    Exited,
}

/// A `cp_async` issued but not yet complete: its 16 bytes, read at issue.
#[derive(Clone, Copy, Debug)]
struct Pending {
    group: u64,
    dst: u64,
    bytes: [u64; 2],
    pc: u32,
    /// The destination, for reports.
    mem: u16,
    elem: u64,
}

/// One thread of a block.
#[derive(Clone, Debug)]
pub(crate) struct Thread {
    pub pc: u32,
    pub state: State,
    pub tid: [u32; 3],
    /// `x + bx * (y + by * z)`.
    pub linear: u32,
    /// Instructions executed.
    pub steps: u64,
    pending: Vec<Pending>,
    /// `cp_async_commit`s so far (the group that new copies join).
    committed: u64,
    /// Warpgroup MMAs in flight.
    pub wgmma: WgmmaThread,
    /// The barrier address and parity of the `mbarrier_wait` the thread is blocked in.
    pub blocked_on: Option<(u32, u32)>,
}

impl Thread {
    pub(crate) fn new(tid: [u32; 3], linear: u32) -> Thread {
        Thread {
            pc: 0,
            state: State::Ready,
            tid,
            linear,
            steps: 0,
            pending: Vec::new(),
            committed: 0,
            wgmma: WgmmaThread::default(),
            blocked_on: None,
        }
    }

    /// Back to the start of the kernel (the thread's index stays).
    pub(crate) fn restart(&mut self) {
        self.pc = 0;
        self.state = State::Ready;
        self.steps = 0;
        self.pending.clear();
        self.committed = 0;
        self.wgmma = WgmmaThread::default();
        self.blocked_on = None;
    }
}

/// Why `run` returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Yield {
    Exit,
    Barrier,
    Warp,
    /// Blocked in an `mbarrier_wait` whose phase has not completed.
    MbarWait,
    /// The time slice is used up.
    Preempt,
}

/// What a thread sees of its block and launch while it runs.
pub(crate) struct Env<'a, 'g> {
    pub code: &'a Code,
    pub global: &'a Global<'g>,
    pub shared: &'a mut SharedBytes,
    /// Barriers and asynchronous-operation state of the block.
    pub hopper: &'a mut HopperBlock,
    /// `None` when the shadow-memory checks are off.
    pub shadow: Option<&'a mut Shadow>,
    pub findings: &'a mut Findings,
    pub block: [u32; 3],
    pub block_lin: u64,
    pub bdim: [u32; 3],
    pub gdim: [u32; 3],
    /// Barrier interval of the block (starts at 1).
    pub epoch: u32,
    /// `sync_warp` count of each warp.
    pub warp_epochs: &'a [u32],
}

/// Thread index (x, y, z) of linear index `l` in a block of `bdim`.
pub(crate) fn tid_of(l: u32, bdim: [u32; 3]) -> [u32; 3] {
    let (bx, by) = (bdim[0].max(1), bdim[1].max(1));
    [l % bx, (l / bx) % by, l / (bx * by)]
}

/// An index as the kernel wrote it (negative signed indices arrive sign-extended).
fn show_index(i: u64) -> String {
    if i > i64::MAX as u64 {
        (i as i64).to_string()
    } else {
        i.to_string()
    }
}

fn oob_kind(loc: Loc) -> FindingKind {
    match loc {
        Loc::Global(_) => FindingKind::GlobalOutOfBounds,
        Loc::Shared(_) => FindingKind::SharedOutOfBounds,
        Loc::Local(_) => FindingKind::LocalOutOfBounds,
    }
}

impl Env<'_, '_> {
    pub(crate) fn who(&self, t: &Thread) -> Who {
        Who {
            block: self.block,
            block_lin: self.block_lin,
            thread: t.tid,
            thread_lin: t.linear,
        }
    }

    pub(crate) fn mem_name(&self, mem: u16) -> &str {
        self.code
            .mems
            .get(mem as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }

    fn special(&self, t: &Thread, which: Special) -> u64 {
        let axis = |v: [u32; 3], a: u8| v.get(a as usize).copied().unwrap_or(0) as u64;
        match which {
            Special::ThreadIdx(a) => axis(t.tid, a),
            Special::BlockIdx(a) => axis(self.block, a),
            Special::BlockDim(a) => axis(self.bdim, a),
            Special::GridDim(a) => axis(self.gdim, a),
            Special::LaneId => (t.linear % 32) as u64,
            Special::WarpId => (t.linear / 32) as u64,
        }
    }

    /// The flat element index of an access of `span` elements, or `None` (reported) when
    /// it is out of bounds or, for 16-byte accesses, misaligned.
    pub(crate) fn element(
        &mut self,
        t: &Thread,
        regs: &[u64],
        at: &Access,
        pc: usize,
        span: u64,
    ) -> Option<u64> {
        let base = regs[at.base as usize];
        if base == POISON {
            return None;
        }
        let idx = regs[at.idx as usize];
        let code = self.code;
        let name = code
            .mems
            .get(at.mem as usize)
            .map(String::as_str)
            .unwrap_or("?");
        if idx >= at.len || at.len - idx < span {
            let len = at.len;
            let who = self.who(t);
            self.findings.report(oob_kind(at.loc), pc, who, || {
                if span == 1 {
                    format!(
                        "index {} is out of bounds for `{name}` of length {len}",
                        show_index(idx)
                    )
                } else {
                    format!(
                        "a 16-byte access at index {} overruns `{name}` of length {len}",
                        show_index(idx)
                    )
                }
            });
            return None;
        }
        let e = base + idx;
        let size = at.k.size() as u64;
        let byte = match at.loc {
            Loc::Shared(off) => Some(off as u64 + e * size),
            Loc::Global(_) => Some(e * size),
            Loc::Local(_) => None,
        };
        if let (true, Some(byte)) = (span > 1, byte) {
            if byte % 16 != 0 {
                let who = self.who(t);
                self.findings
                    .report(FindingKind::MisalignedAccess, pc, who, || {
                        format!(
                            "`{name}`[{e}] is at byte {} of its memory, not a multiple of 16",
                            if let Loc::Shared(off) = at.loc {
                                byte - off as u64
                            } else {
                                byte
                            }
                        )
                    });
                return None;
            }
        }
        Some(e)
    }

    /// Runs the shadow check of a shared access of `size` bytes at byte `off` (element
    /// `elem` of `mem`).
    #[allow(clippy::too_many_arguments)]
    fn check_shared(
        &mut self,
        t: &Thread,
        pc: usize,
        mem: u16,
        elem: u64,
        off: u64,
        size: u32,
        write: Option<bool>,
    ) {
        let Some(shadow) = self.shadow.as_deref_mut() else {
            return;
        };
        let warp = (t.linear / 32) as usize;
        let a = Accessor {
            tid: t.linear as u16,
            warp: warp as u16,
            epoch: self.epoch,
            wepoch: self.warp_epochs.get(warp).copied().unwrap_or(0),
            pc: pc as u32,
        };
        let problem = match write {
            None => shadow.read(off, size, a),
            Some(atomic) => shadow.write(off, size, a, atomic),
        };
        let Some(problem) = problem else {
            return;
        };
        let code = self.code;
        let name = self.mem_name(mem).to_string();
        let bdim = self.bdim;
        let who = self.who(t);
        match problem {
            Problem::Uninit => self.findings.report(FindingKind::UninitializedSharedRead, pc, who, || {
                format!("`{name}`[{elem}] is read before any thread of the block wrote it")
            }),
            Problem::Race {
                what,
                other,
                other_pc,
            } => self.findings.report(FindingKind::SharedRace, pc, who, || {
                let line = code.origin(other_pc as usize).line;
                let by = match other {
                    Some(o) => {
                        let [x, y, z] = tid_of(o as u32, bdim);
                        format!("thread ({x},{y},{z})")
                    }
                    None => "several threads".to_string(),
                };
                format!(
                    "{what} by {by} at line {line} in the same barrier interval, on `{name}`[{elem}] (no sync_threads between them)"
                )
            }),
        }
    }

    /// The Hopper checks of an ordinary access of `span` elements from element `e` of `at`:
    /// accumulators of in-flight `wgmma`s, shared memory they read or TMA loads fill.
    fn check_async(&mut self, t: &Thread, at: &Access, e: u64, span: u64, write: bool, pc: usize) {
        if !self.code.hopper {
            return;
        }
        match at.loc {
            Loc::Local(s) => {
                for i in 0..span {
                    self.check_acc(t, s as u64 + e + i, at, pc, write);
                }
            }
            Loc::Shared(off) => {
                let size = at.k.size();
                let o = off as u64 + e * size as u64;
                self.check_async_shared(t, at, e, o, size * span as u32, write, pc);
            }
            Loc::Global(_) => {}
        }
    }

    /// Loads `span` elements at `at` into `regs[dst..]` (zeros if the access is faulty).
    fn load_n(
        &mut self,
        t: &Thread,
        regs: &mut [u64],
        at: &Access,
        pc: usize,
        span: u64,
        dst: Reg,
    ) {
        let d = dst as usize;
        let Some(e) = self.element(t, regs, at, pc, span) else {
            regs[d..d + span as usize].fill(0);
            return;
        };
        let size = at.k.size();
        self.check_async(t, at, e, span, false, pc);
        if let Loc::Shared(off) = at.loc {
            let o = off as u64 + e * size as u64;
            self.check_shared(t, pc, at.mem, e, o, size * span as u32, None);
        }
        for i in 0..span {
            let byte = (e + i) * size as u64;
            regs[d + i as usize] = match at.loc {
                Loc::Global(b) => self.global.load(b, byte, size),
                Loc::Shared(off) => self.shared.load(off as u64 + byte, size),
                Loc::Local(s) => regs[s as usize + (e + i) as usize],
            };
        }
    }

    /// Stores `span` elements from `regs[src..]` at `at` (nothing if the access is faulty).
    fn store_n(
        &mut self,
        t: &Thread,
        regs: &mut [u64],
        at: &Access,
        pc: usize,
        span: u64,
        src: Reg,
    ) {
        let Some(e) = self.element(t, regs, at, pc, span) else {
            return;
        };
        let size = at.k.size();
        self.check_async(t, at, e, span, true, pc);
        if let Loc::Shared(off) = at.loc {
            let o = off as u64 + e * size as u64;
            self.check_shared(t, pc, at.mem, e, o, size * span as u32, Some(false));
        }
        for i in 0..span {
            let v = regs[src as usize + i as usize];
            let byte = (e + i) * size as u64;
            match at.loc {
                Loc::Global(b) => self.global.store(b, byte, size, v),
                Loc::Shared(off) => self.shared.store(off as u64 + byte, size, v),
                Loc::Local(s) => regs[s as usize + (e + i) as usize] = v,
            }
        }
    }

    /// An atomic read-modify-write; returns the old value.
    #[allow(clippy::too_many_arguments)]
    fn atomic(
        &mut self,
        t: &Thread,
        regs: &mut [u64],
        at: &Access,
        pc: usize,
        op: Intrinsic,
        a: u64,
        b: u64,
    ) -> u64 {
        let Some(e) = self.element(t, regs, at, pc, 1) else {
            return 0;
        };
        let k = at.k;
        let size = k.size();
        let f = |old: u64| value::atomic_apply(op, k, old, a, b);
        match at.loc {
            Loc::Global(buf) => self.global.rmw(buf, e * size as u64, size, &f),
            Loc::Shared(off) => {
                let o = off as u64 + e * size as u64;
                self.check_shared(t, pc, at.mem, e, o, size, Some(true));
                let old = self.shared.load(o, size);
                self.shared.store(o, size, f(old));
                old
            }
            Loc::Local(s) => {
                let slot = s as usize + e as usize;
                let old = regs[slot];
                regs[slot] = f(old);
                old
            }
        }
    }

    /// Issues a 16-byte global→shared copy: reads now, writes at the wait.
    fn cp_async(&mut self, t: &mut Thread, regs: &[u64], dst: &Access, src: &Access, pc: usize) {
        let n = 16 / dst.k.size() as u64;
        let (Some(se), Some(de)) = (
            self.element(t, regs, src, pc, n),
            self.element(t, regs, dst, pc, n),
        ) else {
            return;
        };
        let (Loc::Global(buf), Loc::Shared(off)) = (src.loc, dst.loc) else {
            return;
        };
        let size = dst.k.size() as u64;
        let from = se * size;
        t.pending.push(Pending {
            group: t.committed,
            dst: off as u64 + de * size,
            bytes: [
                self.global.load(buf, from, 8),
                self.global.load(buf, from + 8, 8),
            ],
            pc: pc as u32,
            mem: dst.mem,
            elem: de,
        });
    }

    /// Completes this thread's copies: all of them (`keep == None`) or all but those of the
    /// `keep` most recently committed groups (uncommitted copies stay pending).
    pub(crate) fn cp_complete(&mut self, t: &mut Thread, keep: Option<u32>) {
        let limit = match keep {
            None => u64::MAX,
            Some(n) => t.committed.saturating_sub(n as u64),
        };
        let mut pending = std::mem::take(&mut t.pending);
        pending.retain(|p| {
            if p.group >= limit {
                return true;
            }
            self.check_shared(t, p.pc as usize, p.mem, p.elem, p.dst, 16, Some(false));
            self.shared.store(p.dst, 8, p.bytes[0]);
            self.shared.store(p.dst + 8, 8, p.bytes[1]);
            false
        });
        t.pending = pending;
    }
}

/// Runs thread `t` for at most `budget` instructions.
pub(crate) fn run(env: &mut Env, t: &mut Thread, regs: &mut [u64], budget: u64) -> Yield {
    let code = env.code;
    let mut pc = t.pc as usize;
    let mut left = budget;
    macro_rules! r {
        ($x:expr) => {
            regs[*$x as usize]
        };
    }
    let y = loop {
        let Some(ins) = code.instrs.get(pc) else {
            break Yield::Exit;
        };
        if left == 0 {
            break Yield::Preempt;
        }
        left -= 1;
        match ins {
            Instr::Const { dst, bits } => r!(dst) = *bits,
            Instr::Mov { dst, src } => r!(dst) = r!(src),
            Instr::Copy { dst, src, n } => {
                let s = *src as usize;
                regs.copy_within(s..s + *n as usize, *dst as usize);
            }
            Instr::Fill { dst, src, n } => {
                let v = r!(src);
                let d = *dst as usize;
                regs[d..d + *n as usize].fill(v);
            }
            Instr::Un { f, dst, a } => r!(dst) = f(r!(a)),
            Instr::Bin { f, dst, a, b } => r!(dst) = f(r!(a), r!(b)),
            Instr::Ter { f, dst, a, b, c } => r!(dst) = f(r!(a), r!(b), r!(c)),
            Instr::Cast { from, to, dst, a } => r!(dst) = value::cast(*from, *to, r!(a)),
            Instr::IntDiv {
                f,
                kind,
                k,
                dst,
                a,
                b,
            } => {
                let (x, y) = (r!(a), r!(b));
                r!(dst) = if y == 0 {
                    let who = env.who(t);
                    env.findings
                        .report(FindingKind::DivisionByZero, pc, who, || {
                            format!("{} divided by zero", value::display(*k, x))
                        });
                    kind.by_zero(*k, x)
                } else {
                    f(x, y)
                };
            }
            Instr::Special { dst, which } => r!(dst) = env.special(t, *which),
            Instr::Jump { to } => {
                pc = *to as usize;
                continue;
            }
            Instr::Branch { cond, when, to } => {
                if (r!(cond) != 0) == *when {
                    pc = *to as usize;
                    continue;
                }
            }
            Instr::IndexStep {
                dst,
                base,
                idx,
                dim,
                stride,
                loc,
                mem,
            } => {
                let (b, i) = (r!(base), r!(idx));
                r!(dst) = if b == POISON {
                    POISON
                } else if i >= *dim {
                    let who = env.who(t);
                    let name = env.mem_name(*mem).to_string();
                    env.findings.report(oob_kind(*loc), pc, who, || {
                        format!(
                            "index {} is out of bounds for a dimension of length {dim} of `{name}`",
                            show_index(i)
                        )
                    });
                    POISON
                } else {
                    b.wrapping_add(i.wrapping_mul(*stride))
                };
            }
            Instr::Load { dst, at } => env.load_n(t, regs, at, pc, 1, *dst),
            Instr::Store { src, at } => env.store_n(t, regs, at, pc, 1, *src),
            Instr::VLoad { dst, at } => env.load_n(t, regs, at, pc, 16 / at.k.size() as u64, *dst),
            Instr::VStore { src, at } => {
                env.store_n(t, regs, at, pc, 16 / at.k.size() as u64, *src)
            }
            Instr::Atomic { op, dst, at, a, b } => {
                let (va, vb) = (r!(a), r!(b));
                r!(dst) = env.atomic(t, regs, at, pc, *op, va, vb);
            }
            Instr::CpAsync { dst, src } => env.cp_async(t, regs, dst, src, pc),
            Instr::CpCommit => t.committed += 1,
            Instr::CpWait { n } => env.cp_complete(t, Some(*n)),
            Instr::CpWaitAll => env.cp_complete(t, None),
            Instr::Barrier => break Yield::Barrier,
            Instr::Warp { .. } | Instr::Matrix { .. } => break Yield::Warp,
            Instr::Fence => env.global.fence(),
            Instr::SharedAddr { dst, at } => {
                r!(dst) = env.shared_addr(t, regs, at, pc).unwrap_or(POISON);
            }
            Instr::Hopper(op) => {
                if let Some(y) = env.hopper(t, regs, op, pc) {
                    break y;
                }
            }
            Instr::Exit => break Yield::Exit,
        }
        pc += 1;
    };
    t.steps += budget - left;
    t.pc = pc as u32;
    y
}
